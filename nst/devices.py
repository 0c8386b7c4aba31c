"""One accelerator per worker process: parallel launchers (``hydra/launcher=joblib``) run jobs in
several processes on one machine, and a JAX process otherwise claims every local device (and, on
GPUs, most of each one's memory). Each worker instead takes the lowest device no other worker of
the same sweep holds, for as long as it lives."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import IO, Any

# The lock file of the device this process took: kept open (and locked) until the process exits.
_held: dict[str, tuple[int, IO[str]]] = {}
_lock = threading.Lock()


def _nvidia_gpus() -> int:
    """GPUs the NVIDIA driver lists, counted without initializing JAX's backend."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([x for x in visible.split(",") if x.strip()])
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def claim_slot(n: int, key: str) -> int:
    """The index (``0 <= i < n``) of a device for this process: the lowest one whose lock no
    other process of the sweep ``key`` holds; with more workers than devices, shared in turn."""
    with _lock:
        if key in _held:
            return _held[key][0]
        try:
            import fcntl
        except ImportError:  # not POSIX: no locks, spread by process id
            return os.getpid() % n
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        folder = Path(tempfile.gettempdir()) / f"nst-devices-{digest}"
        for i in range(n):
            try:
                folder.mkdir(exist_ok=True)
                f = open(folder / f"{i}.lock", "w")  # noqa: SIM115 - held while the process lives
            except OSError:  # no usable temp directory: spread by process id
                return os.getpid() % n
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            _held[key] = (i, f)
            return i
        return os.getpid() % n


def use_one_device(key: str) -> str | None:
    """Restrict this worker process to one local device (see the module doc); ``key`` names the
    sweep, so workers of other sweeps do not count. Returns what it chose, or None with a single
    device. Before JAX's backend starts on an NVIDIA machine the other GPUs are hidden from it
    (``CUDA_VISIBLE_DEVICES``); otherwise the device becomes JAX's default device."""
    import jax

    try:
        from jax._src import xla_bridge
    except ImportError:  # a JAX without it: treat the backend as started (default device only)
        started = True
    else:
        check = getattr(xla_bridge, "backends_are_initialized", None)
        started = check() if check else bool(getattr(xla_bridge, "_backends", True))
    if not started:
        n = _nvidia_gpus()
        if n > 1:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [x.strip() for x in visible.split(",")] if visible else [str(i) for i in range(n)]
            chosen = ids[claim_slot(n, key)]
            os.environ["CUDA_VISIBLE_DEVICES"] = chosen
            return f"gpu {chosen}"
    devices = jax.local_devices()
    if len(devices) < 2:
        return None
    device: Any = devices[claim_slot(len(devices), key)]
    jax.config.update("jax_default_device", device)
    return f"{device.platform}:{device.id}"


def check_backend() -> None:
    """Start JAX's backend now: where the platform asked for (``JAX_PLATFORMS``) is not
    available, a one-line NstError instead of JAX's traceback (a bare AssertionError for cuda
    on a machine without it)."""
    import jax

    from nst.errors import NstError, first_line

    try:
        jax.devices()
    except (RuntimeError, AssertionError, ValueError) as e:
        # JAX 0.10 asserts, with no message, when no listed platform starts (JAX_PLATFORMS=cuda
        # without a visible NVIDIA GPU is skipped, leaving none).
        detail = (
            first_line(e) if str(e).strip() else f"no listed platform started ({type(e).__name__})"
        )
        asked = os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME")
        hint = (
            f" (JAX_PLATFORMS={asked}: unset it or install JAX for that platform)" if asked else ""
        )
        raise NstError(f"JAX cannot start its backend: {detail}{hint}") from None
