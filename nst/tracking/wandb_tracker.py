"""Weights & Biases behind the :class:`~nst.tracking.MetricWriter` interface (``logger=wandb``).

Only this module imports wandb, and only when ``logger=wandb``. W&B is a convenience, never a
reason to lose a run: any failure (import, init, a log call, finish) prints one warning and the
run goes on with its local files.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nst.errors import ConfigError, one_line
from nst.files import atomic_write_bytes, cache_root
from nst.rundir import WANDB_RUN_FILE
from nst.tracking.base import MetricWriter, tracker_options

WANDB_ID_FILE = "wandb_run_id"


@dataclass
class WandbOptions:
    """``logger.wandb.*`` (nst/conf/logger/wandb.yaml)."""

    project: str = "nst"
    entity: str | None = None
    mode: str | None = None  # online | offline | disabled; None: online with WANDB_API_KEY
    tags: list[str] = field(default_factory=list)
    log_images: bool = True
    # Seconds wandb.init may take (no network, a slow server) before one warning and local files.
    init_timeout: float = 30.0


def check(options: dict[str, Any]) -> WandbOptions:
    """``logger.wandb.*`` as :class:`WandbOptions`; one-line ConfigError for unknown keys or
    a bad mode."""
    o = tracker_options(WandbOptions, "wandb", options)
    if o.mode not in (None, "online", "offline", "disabled"):
        raise ConfigError(f"logger.wandb.mode must be online, offline or disabled, got {o.mode!r}")
    return o


def create(options: dict[str, Any], ctx: Any) -> WandbWriter | None:
    """The ``wandb`` tracker factory (:func:`nst.tracking.register_tracker`). Without a run
    directory (the Python API's default) W&B keeps its files in the nst cache directory."""
    o = check(options)
    config = flatten(ctx.config)
    # The layer names the metrics use (layers.rectified reads conv4_2 as relu4_2).
    for key in [
        k for k in config if k.startswith(("layers.content_layers.", "layers.style_layers."))
    ]:
        del config[key]
    for kind, layers in ctx.layers.items():
        config.update({f"layers.{kind}.{name}": w for name, w in layers.items()})
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
        init_timeout=o.init_timeout,
    )
    if w is not None and id_file is not None:
        with contextlib.suppress(Exception):
            atomic_write_bytes(id_file, str(w.run.id).encode())
        with contextlib.suppress(Exception):
            record_run(w.run, run_dir)
    return w


create.check = check  # type: ignore[attr-defined]


def run_record(run: Any, run_dir: Path) -> dict[str, Any] | None:
    """What :data:`WANDB_RUN_FILE` holds for ``run``: ``id``, ``mode``, ``url`` (online) and
    ``sync_dir`` (offline). None for a disabled run, which has nothing to link to."""
    if getattr(run, "disabled", False):
        return None
    rec: dict[str, Any] = {"id": str(run.id), "mode": "online", "url": None, "sync_dir": None}
    if getattr(run, "offline", False):
        # run.url only warns offline; the sync directory is what gets uploaded later.
        rec["mode"] = "offline"
        sync = Path(run.settings.sync_dir).resolve()
        root = Path(run_dir).resolve()
        rec["sync_dir"] = str(sync.relative_to(root) if sync.is_relative_to(root) else sync)
    else:
        rec["url"] = run.url
    return rec


def record_run(run: Any, run_dir: Path) -> None:
    """Write :data:`WANDB_RUN_FILE` into the run directory (a resumed run rewrites it)."""
    rec = run_record(run, run_dir)
    if rec is not None:
        atomic_write_bytes(Path(run_dir) / WANDB_RUN_FILE, json.dumps(rec, indent=1).encode())


def default_mode(mode: str | None) -> str:
    """``logger.wandb.mode``, else ``WANDB_MODE``, else ``online`` for a logged-in user (an API key
    in ``WANDB_API_KEY`` or ``wandb login``'s entry in ~/.netrc), else ``offline`` (runs can be
    synced later)."""
    if mode:
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") or _netrc_login() else "offline"


def _netrc_login() -> bool:
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return bool(netrc.netrc(os.environ.get("NETRC")).authenticators(host or ""))
    except (OSError, netrc.NetrcParseError):
        return False


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
        self._rows: list[tuple[int, np.ndarray, dict[str, float]]] = []
        self._last: dict[str, float] = {}

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
        init_timeout: float = 30.0,
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
                settings=wandb.Settings(console="wrap", silent=True, init_timeout=init_timeout),
            )
            # One summary per number: the final/* values, not also the last logged row's.
            run.define_metric("*", summary="none")
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
        self._last = dict(scalars)
        self._guard(self.run.log, dict(scalars), step=int(step))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        if not self.log_images:
            return

        if "step" in images:  # a snapshot: also a row of the run's progress table
            self._rows.append((int(step), np.asarray(images["step"]), dict(self._last)))

        def log():
            # Snapshots go under "snapshot" (the local files' name for them is step_NNNNNN.png).
            imgs = {
                ("snapshot" if k == "step" else k): self._image(v, f"{k} @ {step}")
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

    def write_inputs(self, images: Mapping[str, np.ndarray]) -> None:
        if self.log_images:
            self._guard(
                lambda: self.run.log(
                    {f"input/{k}": self._image(v, k) for k, v in images.items()}, commit=False
                )
            )

    def _image(self, v: np.ndarray, caption: str) -> Any:
        return self._wandb.Image(np.clip(np.rint(v), 0, 255).astype(np.uint8), caption=caption)

    def write_result(self, step: int, image: np.ndarray) -> None:
        self.write_images(step, {"result": image})
        if self.log_images:  # the run's progress as one table: step, image, losses
            rows = [*self._rows, (step, image, self._last)]
            self._guard(self._log_table, rows)

    def _log_table(self, rows: list[tuple[int, np.ndarray, dict[str, float]]]) -> None:
        keys = ("total", "content", "style")
        table = self._wandb.Table(columns=["step", "image", *keys])
        for step, img, losses in rows:
            table.add_data(step, self._image(img, f"step {step}"), *(losses.get(k) for k in keys))
        self.run.log({"progress": table}, commit=False)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        self._guard(self.run.summary.update, dict(summary))

    def close(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self._guard(self.run.finish, exit_code=exit_code)
            self.run = None


def warn(msg: str) -> None:
    print(f"nst: warning: {msg}", file=sys.stderr, flush=True)
