"""Write PyTorch ``.pth`` state dicts without torch, byte for byte in torch.save's zip layout
(``ARCHIVE/data.pkl`` with tensors pickled as ``torch._utils._rebuild_tensor_v2`` calls on
persistent storages, ``ARCHIVE/data/<key>`` raw little-endian bytes, ``ARCHIVE/version``)."""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


class _Global:
    """A module-level name to pickle as GLOBAL without importing it (torch is absent)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle requires a callable reduce function
        raise TypeError("a stand-in for pickling only")


class _Tensor:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, np.ascontiguousarray(array)


class _Pickler(pickle._Pickler):  # the pure-Python pickler lets save_global be replaced
    def save_global(self, obj, name=None):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[_Global] = save_global

    def persistent_id(self, obj):
        if isinstance(obj, tuple) and len(obj) == 5 and obj[0] == "storage":
            return obj
        return None

    def reducer_override(self, obj):
        if isinstance(obj, _Tensor):
            a = obj.array
            storage = ("storage", _Global("torch", _STORAGE[a.dtype]), obj.key, "cpu", a.size)
            stride = tuple(s // a.itemsize for s in a.strides)
            rebuild = _Global("torch._utils", "_rebuild_tensor_v2")
            return rebuild, (storage, 0, a.shape, stride, False, OrderedDict())
        return NotImplemented


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    p = _Pickler(buf, protocol=2)
    p.dispatch_table = {}
    p.dump(obj)
    return buf.getvalue()


def save_state_dict(state: dict[str, np.ndarray], path: Path, archive: str = "archive") -> Path:
    tensors = OrderedDict((k, _Tensor(str(i), v)) for i, (k, v) in enumerate(state.items()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", _dumps(tensors))
        for t in tensors.values():
            z.writestr(
                f"{archive}/data/{t.key}", t.array.astype(t.array.dtype.newbyteorder("<")).tobytes()
            )
        z.writestr(f"{archive}/version", "3\n")
    return path


def save_torchvision_named(state: dict[str, np.ndarray], folder: Path, stem: str) -> Path:
    """Saved as torchvision names its files: ``STEM-<first 8 hex of the SHA-256>.pth``."""
    tmp = save_state_dict(state, folder / f"{stem}.tmp")
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    return tmp.rename(folder / f"{stem}-{digest}.pth")
