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


def _format(value: Any) -> str:
    """A Python value in Hydra's override grammar (strings quoted, lists and maps nested)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_format(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(_format(v) for v in value) + "]"
    raise ConfigError(f"cannot pass {type(value).__name__} as a config value")


def _overrides(kwargs: Mapping[str, Any], groups: set[str]) -> list[str]:
    """Keyword arguments as override strings: a config group takes an option name
    (``backbone="vgg19"``) or a map of its keys (``loss={"beta": 1e4}``); other keys take
    values (``size=64``)."""
    out = []
    for key, value in kwargs.items():
        if isinstance(value, Mapping) and not (key == "logger" or key.endswith("_layers")):
            out += [f"{key}.{k}={_format(v)}" for k, v in value.items()]
        elif key in groups and isinstance(value, str):
            out.append(f"{key}={value}")
        else:
            out.append(f"{key}={_format(value)}")
    return out


def _groups() -> set[str]:
    from nst.app import CONFIG_DIR

    return {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name != "__pycache__"}


def load_config(overrides: Sequence[str] = (), **kwargs: Any) -> DictConfig:
    """The composed config (``nst/conf/config.yaml`` plus command-line style ``overrides`` such
    as ``"loss.beta=1e4"`` or ``"layers=lewuathe2017"``, then ``kwargs`` as in :func:`stylize`).
    Mistakes fail here with Hydra's message, as on the command line."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from nst.app import CONFIG_DIR
    from nst.config import register_configs

    register_configs()
    args = [*overrides, *_overrides(kwargs, _groups())]
    gh = GlobalHydra.instance()
    if gh.is_initialized():
        gh.clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=args)
    return cfg


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

    cfg = config if config is not None else load_config(overrides, **kwargs)
    inputs = {"content": content, "style": style}
    arrays = {k: v for k, v in inputs.items() if v is not None and not _is_spec(v)}
    texts = {k: v for k, v in inputs.items() if v is not None and _is_spec(v)}
    if texts:
        cfg = OmegaConf.merge(cfg, {k: _spec_value(v) for k, v in texts.items()})
    spec = RunSpec.from_config(cfg)
    if "content" in arrays:
        spec.content = arrays["content"]
    if "style" in arrays:
        styles = arrays["style"]
        spec.styles = list(styles) if isinstance(styles, list | tuple) else [styles]
        if spec.style_blend is None and len(spec.styles) > 1:
            spec.style_blend = [1.0 / len(spec.styles)] * len(spec.styles)
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
