"""Weights & Biases behind the :class:`~nst.tracking.MetricWriter` interface (``logger=wandb``).

Only this module imports wandb, and only when ``logger=wandb``. W&B is a convenience, never a
reason to lose a run: any failure (import, init, a log call, finish) prints one warning and the
run goes on with its local files.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from nst.errors import ConfigError, one_line
from nst.files import atomic_write_bytes, cache_root
from nst.tracking.base import MetricWriter

WANDB_ID_FILE = "wandb_run_id"


@dataclass
class WandbOptions:
    """``logger.wandb.*`` (nst/conf/logger/wandb.yaml)."""

    project: str = "nst"
    entity: str | None = None
    mode: str | None = None  # online | offline | disabled; None: online with WANDB_API_KEY
    tags: list[str] = field(default_factory=list)
    log_images: bool = True


def check(options: dict[str, Any]) -> WandbOptions:
    """``logger.wandb.*`` as :class:`WandbOptions`; one-line ConfigError for unknown keys or
    a bad mode."""
    known = {f.name for f in fields(WandbOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) logger.wandb.{', logger.wandb.'.join(unknown)}; "
            f"valid: {', '.join(sorted(known))}"
        )
    o = WandbOptions(**options)
    if o.mode not in (None, "online", "offline", "disabled"):
        raise ConfigError(f"logger.wandb.mode must be online, offline or disabled, got {o.mode!r}")
    return o


def create(options: dict[str, Any], ctx: Any) -> WandbWriter | None:
    """The ``wandb`` tracker factory (:func:`nst.tracking.register_tracker`). Without a run
    directory (the Python API's default) W&B keeps its files in the nst cache directory."""
    o = check(options)
    config = flatten(ctx.config)
    config.update(
        {g: c for g, c in ctx.job.choices.items() if g in ctx.config or g == "experiment"}
    )
    config["alpha_beta"] = ctx.alpha_beta
    config["loss.beta_effective"] = ctx.beta
    config["overrides"] = ",".join(ctx.job.overrides)
    run_dir = ctx.run_dir
    id_file = run_dir / WANDB_ID_FILE if run_dir is not None else None
    w = WandbWriter.create(
        run_dir=run_dir if run_dir is not None else cache_root() / "wandb",
        project=o.project,
        entity=o.entity,
        mode=o.mode,
        tags=list(o.tags),
        name=ctx.job.name,
        group=ctx.job.group,
        job_type=ctx.job.job_type,
        config=config,
        log_images=bool(o.log_images),
        run_id=id_file.read_text().strip() if ctx.resume and id_file and id_file.exists() else None,
    )
    if w is not None and id_file is not None:
        with contextlib.suppress(Exception):
            atomic_write_bytes(id_file, str(w.run.id).encode())
    return w


create.check = check  # type: ignore[attr-defined]


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

            Path(run_dir).mkdir(parents=True, exist_ok=True)
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
            warn(f"W&B logging disabled for this run ({one_line(e)}); local files are complete")
            return None
        return cls(run, wandb, log_images)

    def _guard(self, fn, *args, **kwargs) -> None:
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if not self._warned:
                warn(f"W&B logging failed ({one_line(e)}); continuing with local files only")
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

    def write_animation(self, name: str, path: Path) -> None:
        if self.log_images:
            self._guard(
                lambda: self.run.log(
                    {name: self._wandb.Video(str(path), format="gif")}, commit=False
                )
            )

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
