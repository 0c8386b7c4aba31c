"""The run directory: what a run leaves there, and the rules that keep two runs from mixing.

* A run directory holds one run. A new run (``resume=false``) refuses a directory that already
  holds a run's files (:func:`check_fresh`); ``resume=true`` continues it, or starts it over when
  there is nothing to continue (no checkpoint, no finished result), clearing the old files first.
* A checkpoint (and a finished summary) records the run's **fingerprint**: a digest of the
  resolved config without the keys that do not shape the result (:data:`NOT_SHAPING`: logging,
  trackers, snapshots, evaluation, how long to run). ``resume=true`` with another fingerprint
  refuses with one line listing the differing keys, before anything in the directory changes.
* A corrupt checkpoint gets one line saying so and how to start over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nst.config import RUN_ONLY_KEYS
from nst.errors import ConfigError, NstError, one_line
from nst.files import atomic_write_bytes

# logger=wandb: where the job's W&B run can be seen (its URL, or offline the directory `wandb
# sync` uploads); the sweep report links it.
WANDB_RUN_FILE = "wandb_run.json"
# What a run writes (besides Hydra's .hydra/ and a tracker's own folder).
RUN_FILES = (
    "metrics.jsonl",
    "summary.json",
    "error.json",
    "result.png",
    "checkpoint.npz",
    "interrupted.png",
    "last_finite.png",
    "progress.gif",
    "wandb_run_id",
    WANDB_RUN_FILE,
    "snapshots",
)
# Config keys that never change the image a given checkpoint leads to.
NOT_SHAPING = (
    *RUN_ONLY_KEYS,
    "steps",
    "log_every",
    "save_every",
    "checkpoint_every",
    "steps_per_call",
    "early_stop",
    "eval",
    "animation",
    "max_pixels",
    "images_dir",
)


class CheckpointError(NstError):
    """The checkpoint cannot be read."""


def shaping_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that shapes the result. ``steps`` stays when a pyramid's
    coarse levels take it (their result depends on it)."""
    out = {k: v for k, v in config.items() if k not in NOT_SHAPING}
    pyramid = config.get("pyramid") or {}
    if int(pyramid.get("levels", 1) or 1) > 1 and pyramid.get("steps") is None:
        out["steps"] = config.get("steps")
    return out


def fingerprint(config: Mapping[str, Any]) -> str:
    text = json.dumps(shaping_config(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every result-shaping key whose value differs."""
    a, b = _flat(shaping_config(old)), _flat(shaping_config(new))
    return [
        f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]


def checkpoint_meta(config: Mapping[str, Any]) -> str:
    """What a checkpoint records about its run: the fingerprint and the shaping config."""
    return json.dumps({"fingerprint": fingerprint(config), "config": shaping_config(config)})


def read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The checkpoint's arrays and its run record; one line when it is corrupt or truncated."""
    hint = f"delete {path} to start over, or run without resume=true in another directory"
    try:
        from nst.engine import load_checkpoint

        if not zipfile.is_zipfile(path):  # np.load would advise allow_pickle: never the answer
            raise ValueError("not an .npz archive")
        arrays = load_checkpoint(path)
        if "meta" not in arrays:
            raise ValueError("no run record")
        meta = json.loads(str(arrays.pop("meta")) or "{}")
        if not isinstance(meta, dict) or not meta:
            raise ValueError("an empty run record")
        if int(arrays["step"]) < 0:
            raise ValueError(f"step {int(arrays['step'])}")
        leaves = sorted(k for k in arrays if k.startswith("leaf_"))
        if not leaves or leaves != [f"leaf_{i:04d}" for i in range(len(leaves))]:
            raise ValueError("missing state arrays")
        for k in leaves:
            a = arrays[k]
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise ValueError(f"non-finite values in {k}")
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        msg = f"checkpoint {path} is corrupt or truncated ({one_line(e)}); {hint}"
        raise CheckpointError(msg) from None
    return arrays, meta


def check_same_run(where: str, recorded: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Refuse to continue a run recorded with another result-shaping config (one line)."""
    if not recorded:
        return
    diff = differing_keys(recorded, config)
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ConfigError(
            f"resume=true: {where} was made with another config ({shown}); resume with the "
            "same settings, or start a new run in another directory"
        )


class RunDirBusy(ConfigError):
    """Another process holds the run directory (refused without writing anything there)."""


def lock(run_dir: Path) -> int | None:
    """An exclusive lock on ``run_dir`` for as long as the job runs (``unlock`` or the
    process's exit releases it): a second nst process on the same directory, such as two
    ``resume=true`` started at once, is refused in one line instead of mixing its files with the
    first's. None where nothing can be locked (no directory yet, not POSIX)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(run_dir, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirBusy(
            f"another nst process is running in {run_dir}; wait for it to end, or choose "
            "another directory"
        ) from None
    except OSError:  # a file system without locks
        os.close(fd)
        return None
    return fd


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def previous_files(run_dir: Path) -> list[str]:
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_fresh(run_dir: Path) -> None:
    """A new run refuses a directory that holds another run's files (one line)."""
    found = previous_files(run_dir)
    if found:
        raise ConfigError(
            f"{run_dir} already holds a run ({', '.join(found[:3])}); continue it with "
            "resume=true, or choose another directory (hydra.run.dir=..., output_dir=...)"
        )


def clear(run_dir: Path) -> None:
    """Remove an earlier run's files (a resume that has nothing to continue starts over)."""
    for name in RUN_FILES:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics rows of steps before ``step`` (a resumed run logs the rest again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] < step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a line cut by the crash: nothing after it is trustworthy
    atomic_write_bytes(path, "".join(f"{x}\n" for x in keep).encode())
