"""PyTorch ``.pth`` state dicts read without torch.

``torch.save`` writes either a zip (PyTorch >= 1.6: ``ARCHIVE/data.pkl`` plus one raw file per
storage under ``ARCHIVE/data/``) or the legacy stream (a magic number, protocol and system-info
pickles, the object pickle, the storage keys, then each storage's raw bytes). Both pickle the
object with tensors as calls to ``torch._utils._rebuild_tensor_v2`` on storages named by
persistent ids. The unpickler here allows exactly those names (the state dict's
``OrderedDict``, tensor and parameter rebuilding, typed storage classes) and refuses every other
global, so a file cannot run code while it is read. Tensors come back as NumPy arrays.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nst.errors import WeightsError

# torch storage class -> element dtype
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# torchvision names its files NAME-<first hex digits of the file's SHA-256>.pth.
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")


def _dtype(storage_type: Any) -> np.dtype:
    name = getattr(storage_type, "__name__", str(storage_type))
    dt = STORAGE_DTYPES.get(name)
    if dt is None:
        raise WeightsError(f"unsupported tensor storage {name} in a .pth file")
    if dt == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dt)


class _StorageType:
    """Stands in for ``torch.<X>Storage`` classes: only their names matter."""

    def __init__(self, name: str):
        self.__name__ = name


class _Storage:
    """A storage whose bytes are read on first use."""

    def __init__(self, dtype: np.dtype, read: Any):
        self.dtype, self._read, self._array = dtype, read, None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self._read(self.dtype)
        return self._array


@dataclass
class _Tensor:
    """A tensor as pickled: materialized once every storage's bytes are known (legacy files
    store them after the object)."""

    storage: _Storage
    offset: int
    size: tuple
    stride: tuple

    def array(self) -> np.ndarray:
        flat = self.storage.array
        if not self.size:
            return flat[self.offset].copy()
        span = sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if self.offset + 1 + span > flat.size:
            raise WeightsError("a tensor in the .pth file reaches past its storage (truncated?)")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=tuple(self.size),
            strides=tuple(s * flat.itemsize for s in self.stride),
        )
        return np.array(view)


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> Any:
    return _Tensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: Any, load_storage: Any):
        super().__init__(f)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise WeightsError(f"refusing to load {module}.{name} from a .pth file (not a state dict)")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise WeightsError(f"unexpected persistent id {pid!r} in a .pth file")
        _, storage_type, key, _location, numel, *_ = pid
        return self._load_storage(_dtype(storage_type), str(key), int(numel))


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise WeightsError(f"{path}: a zip without data.pkl is not a torch checkpoint")
        root = pkl[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}

        def load(dtype: np.dtype, key: str, numel: int) -> _Storage:
            if key not in storages:
                entry = f"{root}data/{key}"
                if entry not in names:
                    raise WeightsError(f"{path}: storage {key} is missing (truncated file?)")

                def read(dt: np.dtype, entry: str = entry) -> np.ndarray:
                    raw = z.read(entry)
                    if len(raw) < numel * dt.itemsize:
                        raise WeightsError(f"{path}: storage {key} is truncated")
                    return np.frombuffer(raw, dt, numel)

                storages[key] = _Storage(dtype, read)
            return storages[key]

        obj = _Unpickler(io.BytesIO(z.read(pkl[0])), load).load()
        return _materialize(obj)


def _read_legacy(path: Path) -> Any:
    data = path.read_bytes()
    f = io.BytesIO(data)
    storages: dict[str, tuple[np.dtype, int]] = {}
    pending: dict[str, _Storage] = {}

    def load(dtype: np.dtype, key: str, numel: int) -> _Storage:
        storages.setdefault(key, (dtype, numel))
        if key not in pending:

            def unread(dt: np.dtype, key: str = key) -> np.ndarray:
                raise WeightsError(f"{path}: storage {key} is missing (truncated file?)")

            pending[key] = _Storage(dtype, unread)
        return pending[key]

    def plain() -> Any:
        return _Unpickler(f, load).load()

    if plain() != LEGACY_MAGIC:
        raise WeightsError(f"{path}: not a torch checkpoint (neither a zip nor the legacy format)")
    plain()  # protocol version
    plain()  # system info
    obj = _Unpickler(f, load).load()
    keys = plain()
    for key in keys:
        (size,) = struct.unpack("<q", f.read(8))
        if key not in storages:
            raise WeightsError(f"{path}: storage {key} is not used by the object (corrupt file)")
        dtype, _ = storages[key]
        raw = f.read(size * dtype.itemsize)
        if len(raw) < size * dtype.itemsize:
            raise WeightsError(f"{path}: storage {key} is truncated")
        arr = np.frombuffer(raw, dtype, size)
        pending[key]._array = arr
    return _materialize(obj)


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.array()
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def check_hash_in_name(path: Path) -> str:
    """The file's SHA-256; a WeightsError when torchvision's name carries a prefix it lacks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    m = HASH_IN_NAME.search(path.name)
    if m and not digest.startswith(m.group(1)):
        raise WeightsError(
            f"{path}: SHA-256 {digest[: len(m.group(1))]}... does not match the {m.group(1)} in "
            "its name (a corrupt or different file); download it again"
        )
    return digest


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """``{name: array}`` from a torch ``.pth`` state dict (zip or legacy format), read with a
    restricted unpickler (no torch needed, no code run from the file)."""
    path = Path(path)
    try:
        obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, struct.error) as e:
        raise WeightsError(f"{path}: not a readable torch checkpoint ({e})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            out[str(k)] = v
    return out
