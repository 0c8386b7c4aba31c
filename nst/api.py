"""The Python API: ``nst.stylize`` and ``nst.load_config``.

The same config tree, schema and run as the ``nst`` command: ``load_config`` composes
``nst/conf/config.yaml`` with Hydra's compose API, ``stylize`` turns it into a
:class:`~nst.spec.RunSpec` and runs it. Files are written only when ``output_dir`` is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from nst.errors import ConfigError

__all__ = ["Result", "load_config", "stylize"]


@dataclass
class Result:
    """What :func:`stylize` returns."""

    image: np.ndarray  # (H, W, 3) uint8: the pixels result.png holds
    history: list[dict[str, float]]  # the metrics rows (step 0, every log_every, the last)
    config: dict[str, Any]  # the resolved config
    summary: dict[str, Any]  # what summary.json holds (also without output_dir)
    output_dir: Path | None  # the run directory, when one was asked for

    @property
    def final(self) -> dict[str, float]:
        """The final losses (total, content, style, tv, per layer)."""
        return self.summary["final"]


def _split(kwargs: Mapping[str, Any], groups: set[str]) -> tuple[list[str], dict[str, Any]]:
    """Keyword arguments as group choices (``backbone="vgg19"``: an override, so the group's
    option is composed) and values (``size=64``, ``loss={"beta": 1e4}``: merged into the
    composed config, typed and checked by the schema)."""
    choices, values = [], {}
    for key, value in kwargs.items():
        if key in groups and isinstance(value, str):
            choices.append(f"{key}={value}")
        else:
            values[key] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return choices, values


def _merge(cfg: DictConfig, values: Mapping[str, Any]) -> DictConfig:
    from omegaconf.errors import OmegaConfBaseException

    try:
        for key, value in values.items():
            if isinstance(value, Mapping) and key in cfg and isinstance(cfg[key], DictConfig):
                cfg = OmegaConf.merge(cfg, {key: dict(value)})
            else:
                cfg = OmegaConf.merge(cfg, {key: value})
    except OmegaConfBaseException as e:
        raise ConfigError(" ".join(str(e).split("\n")[0].split())) from None
    return cfg


def _groups() -> set[str]:
    from nst.app import CONFIG_DIR

    return {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name != "__pycache__"}


def load_config(overrides: Sequence[str] = (), **kwargs: Any) -> DictConfig:
    """The composed config (``nst/conf/config.yaml`` plus command-line style ``overrides`` such
    as ``"loss.beta=1e4"`` or ``"layers=lewuathe2017"``, then ``kwargs`` as in :func:`stylize`).
    Mistakes fail here with Hydra's message, as on the command line. A Hydra app calling this
    keeps its own Hydra state."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    from nst.app import CONFIG_DIR
    from nst.config import register_configs

    register_configs()
    choices, values = _split(kwargs, _groups())
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, *choices])
    finally:
        restore_gh_from_backup(backup)
    return _merge(cfg, values)


def stylize(
    content: Any = None,
    style: Any = None,
    *,
    overrides: Sequence[str] = (),
    output_dir: str | os.PathLike[str] | None = None,
    config: DictConfig | None = None,
    **kwargs: Any,
) -> Result:
    """Stylize ``content`` with ``style`` and return the :class:`Result`.

    ``content`` and ``style`` take a path, ``sample:NAME``, a PIL image or an array (``(H, W)``
    or ``(H, W, 3|4)``; integers in 0..255, floats in 0..1); ``style`` also a list of them
    (blended, see ``style_blend``). Everything else is the ``nst`` command's config: keyword
    arguments (``size=64, steps=5``, ``loss={"beta": 1e4}``, ``backbone="vgg19"``), command-line
    style ``overrides`` (``["layers=lewuathe2017"]``), or a ``config`` from :func:`load_config`.
    Nothing is written unless ``output_dir`` is given; then it receives what a CLI run directory
    holds (result.png, metrics.jsonl, summary.json, snapshots, checkpoints).
    """
    from nst.run import run
    from nst.spec import RunSpec
    from nst.tracking import MemoryWriter

    if config is None:
        cfg = load_config(overrides, **kwargs)
    elif overrides or any(k in _groups() and isinstance(v, str) for k, v in kwargs.items()):
        raise ConfigError("with config=..., pass overrides and group choices to load_config")
    else:
        cfg = _merge(config, kwargs)
    inputs = {"content": content, "style": style}
    arrays = {k: v for k, v in inputs.items() if v is not None and not _is_spec(v)}
    texts = {k: _spec_value(v) for k, v in inputs.items() if v is not None and _is_spec(v)}
    if texts:
        cfg = _merge(cfg, texts)
    if "style" in arrays and not isinstance(arrays["style"], list | tuple):
        arrays["style"] = [arrays["style"]]
    spec = RunSpec.from_config(cfg, images=arrays)
    memory = MemoryWriter()
    run_dir = Path(output_dir) if output_dir is not None else None
    summary = run(spec, run_dir, writers=[memory])
    image = summary.pop("image")
    return Result(
        image=image,
        history=memory.rows,
        config=spec.config,
        summary=summary,
        output_dir=run_dir,
    )


def _is_spec(v: Any) -> bool:
    """A path or ``sample:NAME`` (or a list of them): goes into the config as text."""
    if isinstance(v, list | tuple):
        return bool(v) and all(isinstance(x, str | os.PathLike) for x in v)
    return isinstance(v, str | os.PathLike)


def _spec_value(v: Any) -> Any:
    return [os.fspath(x) for x in v] if isinstance(v, list | tuple) else os.fspath(v)
