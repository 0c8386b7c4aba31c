"""Weights & Biases behind the :class:`~nst.writers.MetricWriter` interface.

Only this module imports wandb, and only when ``logger=wandb``. W&B is a convenience, never a
reason to lose a run: any failure (import, init, a log call, finish) prints one warning and the
run goes on with its local files.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nst.writers import MetricWriter


def default_mode(mode: str | None) -> str:
    """``online`` when an API key is configured, else ``offline`` (runs can be synced later)."""
    if mode:
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"beta": 1}}`` -> ``{"loss.beta": 1}`` so W&B can filter and group by any key."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


class WandbWriter(MetricWriter):
    """Logs scalars, images and the summary of one job to one W&B run."""

    def __init__(self, run: Any, wandb: Any, log_images: bool = True):
        self.run, self._wandb, self.log_images = run, wandb, log_images
        self._warned = False

    @classmethod
    def create(
        cls,
        *,
        run_dir: str | Path,
        project: str,
        entity: str | None,
        mode: str | None,
        tags: list[str],
        name: str | None,
        group: str | None,
        job_type: str | None,
        config: Mapping[str, Any],
        log_images: bool = True,
        run_id: str | None = None,
    ) -> WandbWriter | None:
        """Start a W&B run whose files live in ``run_dir/wandb``; None (after one warning) if
        wandb is missing or fails to start."""
        try:
            import wandb

            run = wandb.init(
                project=project,
                entity=entity,
                mode=default_mode(mode),
                dir=str(run_dir),
                name=name,
                group=group,
                job_type=job_type,
                tags=list(tags) or None,
                config=dict(config),
                id=run_id,
                resume="allow" if run_id else None,
                reinit="create_new",  # multirun: many jobs, one process
                settings=wandb.Settings(console="off", silent=True),
            )
        except Exception as e:  # noqa: BLE001 - any W&B failure must not fail the job
            warn(f"W&B logging disabled for this run ({_one_line(e)}); local files are complete")
            return None
        return cls(run, wandb, log_images)

    def _guard(self, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if not self._warned:
                warn(f"W&B logging failed ({_one_line(e)}); continuing with local files only")
                self._warned = True

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._guard(self.run.log, dict(scalars), step=int(step))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        if not self.log_images:
            return

        def log():
            imgs = {
                k: self._wandb.Image(
                    np.clip(np.rint(v), 0, 255).astype(np.uint8), caption=f"{k} @ {step}"
                )
                for k, v in images.items()
            }
            self.run.log(imgs, step=int(step))

        self._guard(log)

    def write_result(self, step: int, image: np.ndarray) -> None:
        self.write_images(step, {"result": image})

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        self._guard(self.run.summary.update, dict(summary))

    def close(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self._guard(self.run.finish, exit_code=exit_code)
            self.run = None


def warn(msg: str) -> None:
    print(f"nst: warning: {msg}", file=sys.stderr, flush=True)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: " + (" ".join(str(e).split()) or "no message")[:300]
