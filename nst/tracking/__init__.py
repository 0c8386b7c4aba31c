"""Trackers: where a run's metrics and images go besides its run directory.

The engine reports through :class:`MetricWriter` (CLU-style) and never imports a tracking
service. A tracker is a factory registered by name, ``factory(options, context) -> MetricWriter
| None``, chosen in the config by ``logger=NAME`` (several: ``logger=[a,b]``), whose YAML puts the
tracker's options under ``logger.NAME``. A new tracker is one module calling
:func:`register_tracker` plus one ``logger/NAME.yaml`` (or ``+logger.NAME={...}``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nst.errors import ConfigError
from nst.tracking.base import LocalWriter, MemoryWriter, MetricWriter, MultiWriter


@dataclass
class JobInfo:
    """What the launcher knows about the job, as plain values (built in nst/app.py)."""

    name: str | None = None  # from the overrides, e.g. "beta=1000,layers=gatys2016"
    group: str | None = None  # the sweep, shared by all jobs of one `nst -m`
    job_type: str = "default"  # the experiment's name
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)  # config group -> option
    num: int | None = None


@dataclass
class TrackerContext:
    """What a tracker factory gets besides its own options."""

    run_dir: Path | None  # None: the run writes no files (Python API without output_dir)
    job: JobInfo
    config: dict[str, Any]  # the resolved config
    alpha_beta: float | None  # nst.spec.alpha_beta: the paper's ratio when ab_ratio is set
    beta: float  # the β in effect
    resume: bool  # the run continues from a checkpoint
    # The layers the losses read, as the metrics name them: content_layers / style_layers.
    layers: dict[str, dict[str, float]] = field(default_factory=dict)


TrackerFactory = Callable[[dict[str, Any], TrackerContext], MetricWriter | None]

# Built-in trackers, imported only when chosen ("module:function").
_FACTORIES: dict[str, TrackerFactory | str] = {
    "wandb": "nst.tracking.wandb_tracker:create",
    "tensorboard": "nst.tracking.tensorboard_tracker:create",
}

# The W&B keys that lived directly under ``logger`` before trackers became a map.
LEGACY_KEYS = ("name", "project", "entity", "mode", "tags", "log_images")


def register_tracker(name: str, factory: TrackerFactory) -> None:
    """Make ``logger.NAME`` (options: a map) start ``factory`` for every run."""
    _FACTORIES[name] = factory


def tracker_names() -> list[str]:
    return sorted(_FACTORIES)


def check_trackers(trackers: Mapping[str, Any]) -> None:
    """One line naming the registered trackers when a chosen one is unknown, or what is wrong
    with a tracker's options (a factory's optional ``check(options)``), before the run starts."""
    unknown = sorted(set(trackers) - set(_FACTORIES))
    if unknown:
        raise ConfigError(
            f"unknown tracker(s) {', '.join(unknown)} under logger; registered: "
            f"{', '.join(tracker_names())} (nst.tracking.register_tracker adds one)"
        )
    for name, options in trackers.items():
        check = getattr(_factory(name), "check", None)
        if check is not None:
            check(dict(options))


def _factory(name: str) -> TrackerFactory:
    f = _FACTORIES[name]
    if isinstance(f, str):
        module, _, attr = f.partition(":")
        f = getattr(importlib.import_module(module), attr)
    return f


def make_writer(trackers: Mapping[str, dict[str, Any]], ctx: TrackerContext) -> MultiWriter:
    """Local files (when the run has a directory), then every chosen tracker (checked already by
    :func:`check_trackers` when the config was read). A factory that returns None (it warned and
    stepped aside) is left out."""
    writers: list[MetricWriter] = [LocalWriter(ctx.run_dir)] if ctx.run_dir is not None else []
    try:
        for name, options in trackers.items():
            w = _factory(name)(dict(options), ctx)
            if w is not None:
                writers.append(w)
    except BaseException:
        for w in writers:
            w.close(1)
        raise
    return MultiWriter(writers)


__all__ = [
    "JobInfo",
    "LocalWriter",
    "MemoryWriter",
    "MetricWriter",
    "MultiWriter",
    "TrackerContext",
    "check_trackers",
    "make_writer",
    "register_tracker",
    "tracker_names",
]
