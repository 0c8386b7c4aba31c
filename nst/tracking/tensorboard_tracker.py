"""TensorBoard behind the :class:`~nst.tracking.MetricWriter` interface (``logger=tensorboard``).

Scalars and images go to event files in ``RUN_DIR/tensorboard`` (``logger.tensorboard.dir``
overrides it), readable by ``tensorboard --logdir``. Written with the ``tensorboard`` package's
own event-file writer and protos (no TensorFlow, no torch); only this module imports it, and only
when chosen. Like every tracker, a failure prints one warning and the run goes on.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nst.errors import one_line
from nst.tracking.base import MetricWriter, tracker_options


@dataclass
class TensorBoardOptions:
    """``logger.tensorboard.*`` (nst/conf/logger/tensorboard.yaml)."""

    dir: str | None = None  # None: RUN_DIR/tensorboard
    log_images: bool = True
    flush_secs: int = 10


def check(options: dict[str, Any]) -> TensorBoardOptions:
    return tracker_options(TensorBoardOptions, "tensorboard", options)


def _warn(msg: str) -> None:
    print(f"nst: warning: {msg}", file=sys.stderr, flush=True)


def create(options: dict[str, Any], ctx: Any) -> TensorBoardWriter | None:
    """The ``tensorboard`` tracker factory; None (after one warning) when it cannot start."""
    o = check(options)
    if o.dir is not None:
        logdir = Path(o.dir).expanduser()
        if ctx.job.name:  # a sweep's jobs side by side under one --logdir
            logdir = logdir / ctx.job.name.replace("/", "_")
    elif ctx.run_dir is not None:
        logdir = Path(ctx.run_dir) / "tensorboard"
    else:
        _warn("TensorBoard logging needs a run directory or logger.tensorboard.dir; skipped")
        return None
    try:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        logdir.mkdir(parents=True, exist_ok=True)
        writer = EventFileWriter(str(logdir), flush_secs=o.flush_secs)
    except Exception as e:  # noqa: BLE001 - a tracker never fails the run
        _warn(
            f"TensorBoard logging disabled for this run ({one_line(e)}); local files are complete"
        )
        return None
    return TensorBoardWriter(writer, o.log_images)


create.check = check  # type: ignore[attr-defined]


class TensorBoardWriter(MetricWriter):
    def __init__(self, writer: Any, log_images: bool = True):
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._w, self.log_images = writer, log_images
        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._warned = False

    def _add(self, step: int, values: list[Any]) -> None:
        try:
            import time

            summary = self._summary(value=values)
            self._w.add_event(self._event(wall_time=time.time(), step=int(step), summary=summary))
        except Exception as e:  # noqa: BLE001
            if not self._warned:
                _warn(f"TensorBoard logging failed ({one_line(e)}); continuing without it")
                self._warned = True

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        values = [
            self._summary.Value(tag=k, simple_value=float(v))
            for k, v in scalars.items()
            if np.isfinite(v)
        ]
        self._add(step, values)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        if not self.log_images:
            return
        from PIL import Image

        values = []
        for k, v in images.items():
            img = np.clip(np.rint(v), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            encoded = self._summary.Image(
                height=img.shape[0],
                width=img.shape[1],
                colorspace=3,
                encoded_image_string=buf.getvalue(),
            )
            values.append(self._summary.Value(tag=k, image=encoded))
        self._add(step, values)

    def write_inputs(self, images: Mapping[str, np.ndarray]) -> None:
        self.write_images(0, {f"input/{k}": v for k, v in images.items()})

    def write_result(self, step: int, image: np.ndarray) -> None:
        self.write_images(step, {"result": image})

    def close(self, exit_code: int = 0) -> None:
        with contextlib.suppress(Exception):  # a tracker never fails the run
            self._w.close()
