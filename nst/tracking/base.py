"""Metric writers (CLU-style): the engine reports through this interface and never imports a
tracking service. ``LocalWriter`` writes JSON lines and PNG snapshots into the run directory."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from nst.files import write_error
from nst.images import save_image

T = TypeVar("T")


class MetricWriter:
    """Interface: every method is optional to override; the base does nothing."""

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record scalar metrics of one logged step."""

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Record ``(H, W, 3)`` 0..255 images (snapshots) at ``step``."""

    def write_inputs(self, images: Mapping[str, np.ndarray]) -> None:
        """Record the run's inputs (``content``, ``style``: ``(H, W, 3)`` 0..255), once."""

    def write_result(self, step: int, image: np.ndarray) -> None:
        """Record the final image (run.py writes result.png itself; trackers log it)."""

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Record the final summary of the run."""

    def write_animation(self, name: str, path: Path) -> None:
        """Record an animated GIF the run wrote (``progress.gif`` with ``animation=true``)."""

    def close(self, exit_code: int = 0) -> None:
        """Flush and release resources; called once, also on failure (``exit_code`` != 0)."""


class MultiWriter(MetricWriter):
    """Fans every call out to several writers."""

    def __init__(self, writers: Sequence[MetricWriter]):
        self.writers = list(writers)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        for w in self.writers:
            w.write_images(step, images)

    def write_inputs(self, images: Mapping[str, np.ndarray]) -> None:
        for w in self.writers:
            w.write_inputs(images)

    def write_result(self, step: int, image: np.ndarray) -> None:
        for w in self.writers:
            w.write_result(step, image)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        for w in self.writers:
            w.write_summary(summary)

    def write_animation(self, name: str, path: Path) -> None:
        for w in self.writers:
            w.write_animation(name, path)

    def close(self, exit_code: int = 0) -> None:
        for w in self.writers:
            w.close(exit_code)


class MemoryWriter(MetricWriter):
    """Keeps the scalar rows in memory (``rows``): the Python API's metrics history."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.rows.append({"step": int(step), **{k: float(v) for k, v in scalars.items()}})


class LocalWriter(MetricWriter):
    """``metrics.jsonl`` (one JSON object per logged step) and ``snapshots/<name>_<step>.png``."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._f = self.metrics_path.open("a", encoding="utf-8")
        except OSError as e:
            raise write_error(self.metrics_path, e) from None

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        row = {"step": int(step), **{k: _json_float(v) for k, v in scalars.items()}}
        try:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()
        except OSError as e:
            raise write_error(self.metrics_path, e) from None

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        for name, img in images.items():
            save_image(img, self.run_dir / "snapshots" / f"{name}_{int(step):06d}.png")

    def close(self, exit_code: int = 0) -> None:
        with contextlib.suppress(OSError):  # a full disk may refuse the last flush too
            self._f.close()


def _json_float(v: float) -> float | str | None:
    """JSON has no NaN/Inf: keep them readable as strings instead of writing invalid JSON."""
    v = float(v)
    return v if math.isfinite(v) else str(v)


def tracker_options(cls: type[T], name: str, options: Mapping[str, Any]) -> T:
    """``logger.NAME.*`` as the tracker's options dataclass; one-line ConfigError naming unknown
    keys and the valid ones."""
    from nst.errors import ConfigError

    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) logger.{name}.{f', logger.{name}.'.join(unknown)}; "
            f"valid: {', '.join(sorted(known))}"
        )
    return cls(**options)
