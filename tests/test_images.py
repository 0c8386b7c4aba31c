"""Tests for nst.images: reading every common PIL mode, sample images, errors, resizing, saving.

All inputs are written into tmp_path with PIL/numpy; expected values are computed by hand, not
by calling the code under test.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst import images
from nst.errors import ImageError, NstError, one_line
from nst.images import load_image, resize_longest, resize_to, save_image, to_uint8

PIL_LIMIT = Image.MAX_IMAGE_PIXELS


def _check_rgb(a: np.ndarray, hw: tuple[int, int]) -> None:
    assert isinstance(a, np.ndarray)
    assert a.dtype == np.float32
    assert a.shape == (*hw, 3)
    assert a.min() >= 0.0
    assert a.max() <= 255.0


def _save(im: Image.Image, path: Path, **kw) -> Path:
    im.save(path, **kw)
    return path


def _blocks(h: int = 16, w: int = 24) -> np.ndarray:
    """Three flat colour bands (red, green, blue) left to right: JPEG-friendly test pattern."""
    a = np.zeros((h, w, 3), np.uint8)
    third = w // 3
    a[:, :third] = (255, 0, 0)
    a[:, third : 2 * third] = (0, 255, 0)
    a[:, 2 * third :] = (0, 0, 255)
    return a


def _expect_error(path, *fragments: str, **kw) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    for frag in fragments:
        assert frag in msg
    return msg


def _png_header_only(path: Path, w: int, h: int, bit_depth: int = 1, color_type: int = 0) -> Path:
    """A PNG with a valid IHDR claiming ``w`` x ``h`` but no pixel data (tiny on disk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------- modes and formats


def test_rgb_png_exact(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (12, 17, 3), dtype=np.uint8)
    p = _save(Image.fromarray(a, "RGB"), tmp_path / "rgb.png")
    out = load_image(p)
    _check_rgb(out, (12, 17))
    np.testing.assert_array_equal(out, a.astype(np.float32))


def test_accepts_pathlike_and_str(tmp_path):
    """A str, a Path, any other os.PathLike, and a ~ path all read the same file."""
    import os

    a = _blocks()
    p = _save(Image.fromarray(a), tmp_path / "x.png")

    class Custom(os.PathLike):
        def __fspath__(self):
            return str(p)

    want = load_image(str(p))
    np.testing.assert_array_equal(want[..., 0], a[..., 0].astype(np.float32))
    for spec in (p, Custom()):
        np.testing.assert_array_equal(load_image(spec), want)
    home = os.environ.get("HOME")
    try:
        os.environ["HOME"] = str(tmp_path)
        np.testing.assert_array_equal(load_image("~/x.png"), want)
    finally:
        if home is not None:
            os.environ["HOME"] = home


def test_rgb_jpeg_approx(tmp_path):
    a = _blocks(16, 24)
    p = _save(Image.fromarray(a), tmp_path / "rgb.jpg", quality=95)
    out = load_image(p)
    _check_rgb(out, (16, 24))
    # Compare band centres (away from the chroma-subsampled edges).
    assert np.abs(out[8, 4] - (255, 0, 0)).max() < 20
    assert np.abs(out[8, 12] - (0, 255, 0)).max() < 20
    assert np.abs(out[8, 20] - (0, 0, 255)).max() < 20


def test_grayscale_replicated(tmp_path):
    g = np.arange(0, 240, dtype=np.uint8).reshape(12, 20)
    p = _save(Image.fromarray(g, "L"), tmp_path / "gray.png")
    out = load_image(p)
    _check_rgb(out, (12, 20))
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g.astype(np.float32))


def test_palette_without_transparency(tmp_path):
    im = Image.new("P", (4, 2))
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    im.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    p = _save(im, tmp_path / "pal.png")
    assert "transparency" not in Image.open(p).info
    out = load_image(p)
    _check_rgb(out, (2, 4))
    np.testing.assert_array_equal(out[0, 0], (10, 20, 30))
    np.testing.assert_array_equal(out[0, 1], (200, 100, 50))
    np.testing.assert_array_equal(out[1, 3], (10, 20, 30))


def test_palette_with_transparency_becomes_white(tmp_path):
    im = Image.new("P", (3, 1))
    im.putpalette([10, 20, 30, 0, 0, 0, 200, 100, 50] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2])
    p = _save(im, tmp_path / "pal_t.png", transparency=1)
    with Image.open(p) as check:
        assert check.mode == "P"
        assert check.info.get("transparency") == 1
    out = load_image(p)
    _check_rgb(out, (1, 3))
    np.testing.assert_array_equal(out[0, 0], (10, 20, 30))
    np.testing.assert_array_equal(out[0, 1], (255, 255, 255))  # transparent black -> white
    np.testing.assert_array_equal(out[0, 2], (200, 100, 50))


def test_rgba_composited_on_white(tmp_path):
    a = np.array(
        [[[255, 0, 0, 255], [0, 0, 0, 0], [255, 0, 0, 128], [0, 0, 255, 0]]],
        dtype=np.uint8,
    )
    p = _save(Image.fromarray(a, "RGBA"), tmp_path / "rgba.png")
    out = load_image(p)
    _check_rgb(out, (1, 4))
    np.testing.assert_array_equal(out[0, 0], (255, 0, 0))  # opaque: unchanged
    np.testing.assert_array_equal(out[0, 1], (255, 255, 255))  # alpha 0 black -> white
    np.testing.assert_array_equal(out[0, 3], (255, 255, 255))  # alpha 0 blue -> white
    # alpha 128 red over white: R = 255, G = B = 255 * (1 - 128/255) = 127.
    assert out[0, 2, 0] == 255
    assert abs(out[0, 2, 1] - 127) <= 1
    assert abs(out[0, 2, 2] - 127) <= 1


def test_la_composited_on_white(tmp_path):
    a = np.array([[[0, 255], [0, 0], [0, 128], [90, 255]]], dtype=np.uint8)
    p = _save(Image.fromarray(a, "LA"), tmp_path / "la.png")
    with Image.open(p) as check:
        assert check.mode == "LA"
    out = load_image(p)
    _check_rgb(out, (1, 4))
    np.testing.assert_array_equal(out[0, 0], (0, 0, 0))
    np.testing.assert_array_equal(out[0, 1], (255, 255, 255))
    assert np.abs(out[0, 2] - 127).max() <= 1
    np.testing.assert_array_equal(out[0, 3], (90, 90, 90))


def test_16bit_grayscale_png_scaled(tmp_path):
    a = np.array([[0, 65535, 32896, 257]], dtype=np.uint16)
    p = _save(Image.fromarray(a), tmp_path / "g16.png")
    with Image.open(p) as check:
        assert check.mode.startswith("I")  # really stored and read back as 16-bit
        assert np.asarray(check).max() == 65535
    out = load_image(p)
    _check_rgb(out, (1, 4))
    np.testing.assert_array_equal(out[0, 0], (0, 0, 0))
    np.testing.assert_array_equal(out[0, 1], (255, 255, 255))
    assert np.abs(out[0, 2] - 128).max() <= 1
    assert np.abs(out[0, 3] - 1).max() <= 1


def test_16bit_dark_png_not_mistaken_for_8bit(tmp_path):
    # A 16-bit file whose brightest pixel is 255 (of 65535) is almost black, not white.
    a = np.array([[0, 255]], dtype=np.uint16)
    p = _save(Image.fromarray(a), tmp_path / "dark16.png")
    out = load_image(p)
    assert out.max() <= 1.0


def test_cmyk_jpeg(tmp_path):
    a = np.zeros((16, 16, 4), np.uint8)
    a[:, 8:, 3] = 255  # right half: full black ink; left half: no ink (white paper)
    p = _save(Image.fromarray(a, "CMYK"), tmp_path / "cmyk.jpg", quality=95)
    with Image.open(p) as check:
        assert check.mode == "CMYK"
    out = load_image(p)
    _check_rgb(out, (16, 16))
    assert out[:, :4].min() > 235  # white stays white
    assert out[:, 12:].max() < 20  # black stays black


@pytest.mark.parametrize(
    ("orientation", "corner"),
    [
        (6, (0, -1)),  # rotate 90 deg clockwise: stored top-left -> top-right
        (8, (-1, 0)),  # rotate 90 deg counter-clockwise: stored top-left -> bottom-left
    ],
)
def test_exif_orientation_applied(tmp_path, orientation, corner):
    stored = np.full((20, 40, 3), 255, np.uint8)  # 40 wide, 20 tall as stored
    stored[:8, :8] = (255, 0, 0)  # marked top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = _save(Image.fromarray(stored), tmp_path / f"rot{orientation}.jpg", exif=exif, quality=95)
    with Image.open(p) as check:
        assert check.size == (40, 20)
        assert check.getexif()[0x0112] == orientation
    out = load_image(p)
    _check_rgb(out, (40, 20))  # displayed 20 wide, 40 tall
    corners = {
        (0, 0): out[:4, :4],
        (0, -1): out[:4, -4:],
        (-1, 0): out[-4:, :4],
        (-1, -1): out[-4:, -4:],
    }
    red = corners.pop(corner).reshape(-1, 3).mean(0)
    assert red[0] > 200
    assert red[1] < 60
    assert red[2] < 60
    for block in corners.values():  # the other three corners stay white
        assert block.min() > 200


def test_very_wide_image(tmp_path):
    a = np.zeros((10, 2000, 3), np.uint8)
    a[:, :, 0] = (np.arange(2000) % 256).astype(np.uint8)
    a[:, :, 2] = 77
    p = _save(Image.fromarray(a), tmp_path / "wide.png")
    out = load_image(p)
    _check_rgb(out, (10, 2000))
    np.testing.assert_array_equal(out, a.astype(np.float32))


# --------------------------------------------------------------------------- sample images


@pytest.mark.parametrize("name", ["chelsea", "ihc"])
def test_sample_images_load(name):
    assert name in images.sample_names()
    path = images.resolve_path(f"sample:{name}")
    assert path.is_file()
    assert path.stem == name
    out = load_image(f"sample:{name}")
    assert out.dtype == np.float32
    assert out.ndim == 3
    assert out.shape[2] == 3
    assert min(out.shape[:2]) >= 100
    assert 0 <= out.min() < out.max() <= 255


def test_unknown_sample_lists_valid_names():
    with pytest.raises(ImageError) as info:
        load_image("sample:nope")
    msg = str(info.value)
    assert "\n" not in msg
    assert "nope" in msg
    assert "chelsea" in msg
    assert "ihc" in msg


def test_image_error_is_nst_error():
    assert issubclass(ImageError, NstError)


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nothere.png", "no such file")


def test_directory(tmp_path):
    d = tmp_path / "adir"
    d.mkdir()
    _expect_error(d, "directory")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    _expect_error(p, "empty")


def test_text_file(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\nsecond line\n")
    _expect_error(p, "not an image")


def _truncate_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_truncated_png(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # noise: does not compress away
    p = _truncate_half(_save(Image.fromarray(a), tmp_path / "cut.png"))
    _expect_error(p)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    p = _truncate_half(_save(Image.fromarray(a), tmp_path / "cut.jpg", quality=95))
    _expect_error(p)


def test_decoder_messages_are_flattened_to_one_line():
    # PIL/decoder messages can span lines; load_image folds them into its one-line error.
    assert one_line(OSError("broken\n  data\tat byte 7")) == "broken data at byte 7"
    assert one_line(ValueError("")) == "ValueError"


def test_over_max_pixels(tmp_path):
    p = _save(Image.fromarray(_blocks(20, 30)), tmp_path / "big.png")
    _expect_error(p, "600", "599", max_pixels=599)
    assert load_image(p, max_pixels=600).shape == (20, 30, 3)  # the limit itself is allowed


def test_over_max_pixels_message_has_count_and_limit(tmp_path):
    p = _save(Image.fromarray(_blocks(20, 30)), tmp_path / "big.png")
    msg = _expect_error(p, max_pixels=100)
    assert "600 pixels" in msg
    assert "limit of 100" in msg


def test_decompression_bomb_header_refused_cleanly(tmp_path):
    # 20000 x 10000 = 2e8 pixels: beyond PIL's own hard limit (~1.8e8) and our default 1e8.
    p = _png_header_only(tmp_path / "bomb.png", 20000, 10000)
    msg = _expect_error(p)
    assert "200000000" in msg
    assert str(images.DEFAULT_MAX_PIXELS) in msg


def test_pil_soft_limit_does_not_override_max_pixels(tmp_path):
    # 1.2e8 pixels is over PIL's warning threshold (~8.9e7); our explicit limit must be reported.
    p = _png_header_only(tmp_path / "bomb.png", 12000, 10000)
    msg = _expect_error(p, max_pixels=1_000_000)
    assert "120000000" in msg
    assert "limit of 1000000 " in msg


def test_max_pixels_above_pil_threshold_is_honoured(tmp_path):
    # 9e7 pixels: over PIL's own warning threshold (~8.9e7) but under our default 1e8, so the
    # file gets past the size check and fails only because it has no pixel data.
    p = _png_header_only(tmp_path / "big_ok.png", 10000, 9000)
    msg = _expect_error(p, "cannot decode")
    assert "exceeds" not in msg
    assert "89478485" not in msg
    # And PIL's global limit is left as it was.
    assert Image.MAX_IMAGE_PIXELS == PIL_LIMIT


# --------------------------------------------------------------------------- resize / convert / save


@pytest.mark.parametrize(
    ("hw", "size"),
    [((48, 64), 32), ((64, 48), 32), ((30, 30), 50), ((17, 101), 40), ((101, 17), 40)],
)
def test_resize_longest(hw, size):
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 255, (*hw, 3)).astype(np.float32)
    out = resize_longest(a, size)
    assert out.dtype == np.float32
    assert out.ndim == 3
    assert out.shape[2] == 3
    assert max(out.shape[:2]) == size
    h, w = hw
    oh, ow = out.shape[:2]
    # Aspect kept within rounding of the short side.
    if h >= w:
        assert abs(ow - w * size / h) <= 0.5
    else:
        assert abs(oh - h * size / w) <= 0.5


def test_resize_longest_very_wide_keeps_at_least_one_pixel():
    a = np.full((10, 2000, 3), 100.0, np.float32)
    out = resize_longest(a, 100)
    assert out.shape == (1, 100, 3)


def test_resize_to_exact_shape():
    rng = np.random.default_rng(4)
    a = rng.uniform(0, 255, (40, 60, 3)).astype(np.float32)
    out = resize_to(a, (23, 71))
    assert out.shape == (23, 71, 3)
    assert out.dtype == np.float32
    assert out.min() >= 0
    assert out.max() <= 255


def test_resize_to_preserves_flat_colour():
    a = np.zeros((40, 60, 3), np.float32)
    a[...] = (10, 200, 90)
    out = resize_to(a, (13, 17))
    np.testing.assert_allclose(out, np.broadcast_to([10, 200, 90], (13, 17, 3)), atol=1)


def test_resize_to_same_shape_is_float32_copy_of_values():
    a = np.arange(2 * 3 * 3, dtype=np.float64).reshape(2, 3, 3)
    out = resize_to(a, (2, 3))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, a)


def test_to_uint8_rounds_and_clips():
    a = np.array([-50.0, -0.4, 0.4, 0.6, 1.5, 2.5, 127.49, 127.5, 254.6, 255.0, 300.0, 1e9])
    out = to_uint8(a)
    assert out.dtype == np.uint8
    # np.rint rounds halves to even: 1.5 -> 2, 2.5 -> 2, 127.5 -> 128.
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 2, 2, 127, 128, 255, 255, 255, 255])


def test_save_image_roundtrip_lossless(tmp_path):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (21, 34, 3)).astype(np.float32)
    dest = tmp_path / "out" / "result.png"  # parent does not exist yet
    returned = save_image(a, dest)
    assert Path(returned) == dest
    assert dest.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = load_image(dest)
    _check_rgb(back, (21, 34))
    np.testing.assert_array_equal(back, a)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["result.png"]  # no temp files left


def test_save_image_rounds_and_clips(tmp_path):
    a = np.array([[[-10.0, 0.6, 300.0], [127.4, 127.6, 255.0]]], dtype=np.float32)
    dest = save_image(a, tmp_path / "clip.png")
    with Image.open(dest) as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), [[[0, 1, 255], [127, 128, 255]]])


def test_save_image_overwrites_atomically(tmp_path):
    dest = tmp_path / "result.png"
    save_image(np.zeros((4, 4, 3), np.float32), dest)
    save_image(np.full((4, 4, 3), 200.0, np.float32), dest)
    np.testing.assert_array_equal(load_image(dest), np.full((4, 4, 3), 200.0, np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["result.png"]


def test_save_image_bytes_are_a_plain_png(tmp_path):
    a = _blocks(6, 9).astype(np.float32)
    dest = save_image(a, tmp_path / "b.png")
    with Image.open(io.BytesIO(dest.read_bytes())) as im:
        assert im.format == "PNG"
        assert im.size == (9, 6)


def test_integer_arrays_beyond_8_bits():
    from nst.errors import ImageError
    from nst.images import load_any

    wide = load_any(np.array([[0, 65535, 32896]], dtype=np.uint16))
    np.testing.assert_allclose(wide[0, :, 0], [0, 255, 128], atol=0.01)
    with pytest.raises(
        ImageError, match=r"^an integer image array must hold 0..255 .*int32 values 0..1000$"
    ):
        load_any(np.array([[0, 1000]], dtype=np.int32))
    with pytest.raises(ImageError, match=r"int64 values -3..5$"):
        load_any(np.array([[-3, 5]], dtype=np.int64))
    np.testing.assert_array_equal(load_any(np.array([[7, 255]], np.int64))[0, :, 1], [7, 255])
