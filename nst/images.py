"""Reading, converting, resizing and writing images.

Everything inside nst works on float32 RGB arrays ``(H, W, 3)`` with values in 0..255. Reading
accepts anything PIL reads: EXIF orientation is applied; grayscale, palette, RGBA (composited on
white), CMYK and 16-bit images become 8-bit RGB. Problems raise :class:`~nst.errors.ImageError`
with one line naming the file and what is wrong.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nst.errors import ImageError, one_line
from nst.files import atomic_write_bytes

SAMPLE_PREFIX = "sample:"
# Default pixel-count limit; larger files are refused before decoding (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 100_000_000


def sample_names() -> list[str]:
    """Names usable as ``sample:NAME``: scikit-image's bundled sample photographs."""
    d = _sample_dir()
    return sorted(p.stem for p in d.iterdir() if p.suffix in (".png", ".jpg")) if d else []


def _sample_dir() -> Path | None:
    try:
        import skimage
    except ImportError:
        return None
    return Path(skimage.__file__).parent / "data"


def resolve_path(spec: str) -> Path:
    """Turn ``sample:NAME`` into the bundled file's path; anything else is a filesystem path."""
    if spec.startswith(SAMPLE_PREFIX):
        name = spec[len(SAMPLE_PREFIX) :]
        d = _sample_dir()
        if d is None:
            raise ImageError(f"{spec}: sample images need scikit-image (pip install scikit-image)")
        for ext in (".png", ".jpg"):
            if (d / f"{name}{ext}").is_file():
                return d / f"{name}{ext}"
        raise ImageError(f"unknown sample image {name!r}; valid: {', '.join(sample_names())}")
    return Path(spec).expanduser()


def load_image(spec: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file (or ``sample:NAME``) as float32 RGB ``(H, W, 3)`` in 0..255."""
    path = resolve_path(os.fspath(spec))
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, expected an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open_unguarded(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(
                        f"{path}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} "
                        "(raise max_pixels if you trust this file)"
                    )
                im.load()
                rgb = to_rgb(ImageOps.exif_transpose(im))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file PIL can read") from None
    except PermissionError as e:
        raise ImageError(f"{path}: cannot read the file ({e.strerror})") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as e:
        raise ImageError(f"{path}: cannot decode image ({one_line(e)})") from None
    return np.asarray(rgb, dtype=np.float32)


def load_any(image: object, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`load_image` for a path or ``sample:NAME``; also a PIL image, or an array
    ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``: integer arrays in 0..255 (uint16 in
    0..65535), float arrays in 0..1 when their maximum is at most 1, else in 0..255. Returns float32 RGB ``(H, W, 3)``."""
    if isinstance(image, str | os.PathLike):
        return load_image(image, max_pixels)
    if isinstance(image, Image.Image):
        w, h = image.size
        if w * h > max_pixels:
            raise ImageError(f"a {w}x{h} image exceeds the limit of {max_pixels} pixels")
        try:
            return np.asarray(to_rgb(ImageOps.exif_transpose(image)), np.float32)
        except (OSError, ValueError) as e:
            raise ImageError(f"the PIL image cannot be decoded ({one_line(e)})") from None
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4) or min(a.shape[:2]) < 1 or a.size == 0:
        raise ImageError(
            f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {a.shape}"
        )
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ImageError(f"an image array must hold numbers, got dtype {a.dtype}")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise ImageError(
            f"a {a.shape[1]}x{a.shape[0]} image exceeds the limit of {max_pixels} pixels"
        )
    dtype = a.dtype
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ImageError("an image array holds NaN or infinite values")
    if dtype == np.uint16:  # 16-bit pixels, as 16-bit files are read
        a = a * (255.0 / 65535.0)
    elif np.issubdtype(dtype, np.integer) and (a.min() < 0 or a.max() > 255):
        raise ImageError(
            f"an integer image array must hold 0..255 (uint16: 0..65535), got {dtype} values "
            f"{a.min():g}..{a.max():g}"
        )
    if np.issubdtype(dtype, np.floating) and a.max() <= 1.0:
        a = a * 255.0
    if a.shape[-1] == 4:  # composite on white, as files with alpha are
        alpha = a[..., 3:] / 255.0
        a = a[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.clip(a, 0.0, 255.0).astype(np.float32)


def _open_unguarded(path: Path) -> Image.Image:
    """``Image.open`` without PIL's own pixel limit, so ``max_pixels`` (checked by the caller
    right after the header is read) is the one that decides, with a clean :class:`ImageError`."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        return Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (alpha composited on white, 16-bit scaled down)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(a * 255.0 / peak), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        peak = 1.0 if a.max() <= 1.0 else 255.0
        im = Image.fromarray(np.clip(np.round(a * 255.0 / peak), 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "La", "RGBa", "PA"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return im.convert("RGB")


def longest_hw(hw: tuple[int, int], size: int) -> tuple[int, int]:
    """The height and width :func:`resize_longest` gives an ``hw`` image."""
    h, w = hw
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_longest(image: np.ndarray, size: int) -> np.ndarray:
    """Resize ``(H, W, 3)`` so its longest side is ``size`` px, keeping the aspect ratio."""
    return resize_to(image, longest_hw(image.shape[:2], size))


def resize_to(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W, 3)`` float pixels to exactly ``hw`` with a Lanczos filter (PIL)."""
    h, w = hw
    if image.shape[:2] == (h, w):
        return image.astype(np.float32)
    im = Image.fromarray(to_uint8(image))
    return np.asarray(im.resize((w, h), Image.Resampling.LANCZOS), dtype=np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip 0..255 floats to uint8."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# File name endings nst writes images as (the format follows the ending).
WRITE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write ``(H, W, 3)`` 0..255 pixels atomically (temp file + rename), as PNG unless the
    name ends in another of :data:`WRITE_FORMATS` (JPEG at quality 95)."""
    fmt = WRITE_FORMATS.get(Path(path).suffix.lower(), "PNG")
    buf = io.BytesIO()
    extra = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(to_uint8(image)).save(buf, format=fmt, **extra)
    return atomic_write_bytes(path, buf.getvalue())


def save_gif(frames: list[np.ndarray], path: str | os.PathLike, ms: int = 250) -> Path:
    """``frames`` (``(H, W, 3)`` 0..255; resized to the last one's size) as a looping GIF, the
    last frame held four times as long, written atomically."""
    size = frames[-1].shape[1], frames[-1].shape[0]
    ims = [Image.fromarray(to_uint8(f)).resize(size, Image.Resampling.LANCZOS) for f in frames]
    buf = io.BytesIO()
    durations = [ms] * (len(ims) - 1) + [4 * ms]
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=durations, loop=0)
    return atomic_write_bytes(path, buf.getvalue())
