"""The Python API: ``nst.stylize`` and ``nst.load_config``.

The same config tree, schema and run as the ``nst`` command: ``load_config`` composes
``nst/conf/config.yaml`` with Hydra's compose API, ``stylize`` turns it into a
:class:`~nst.spec.RunSpec` and runs it. Files are written only when ``output_dir`` is given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from nst.errors import ConfigError, ImageError, first_line, one_line

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
        value = _plain(value)
        if key in groups and isinstance(value, str):
            choices.append(f"{key}={value}")
        else:
            values[key] = value
    return choices, values


def _plain(value: Any) -> Any:
    """A keyword value as OmegaConf takes it: NumPy scalars and 0-d arrays as Python scalars,
    paths as text, also inside dicts and lists."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, DictConfig | ListConfig):
        return value
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _merge(cfg: DictConfig, values: Mapping[str, Any]) -> DictConfig:
    from omegaconf.errors import OmegaConfBaseException

    try:
        for key, value in values.items():
            if isinstance(value, Mapping) and key in cfg and isinstance(cfg[key], DictConfig):
                cfg = OmegaConf.merge(cfg, {key: dict(value)})
            else:
                cfg = OmegaConf.merge(cfg, {key: value})
    except OmegaConfBaseException as e:
        line = first_line(e)
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{key}: {line}" if key and key not in line else line) from None
    return cfg


def _overrides(overrides: Any) -> list[str]:
    """``overrides`` as a list of strings (None: none), each one ``KEY=VALUE`` or Hydra's
    ``+KEY=VALUE``/``~KEY``; anything else is a one-line :class:`ConfigError`."""
    if overrides is None:
        return []
    if isinstance(overrides, str | bytes | Mapping) or not isinstance(overrides, Iterable):
        raise ConfigError(
            "overrides must be a list of strings like ['loss.beta=1e4'], got a "
            + type(overrides).__name__
        )
    out = []
    for i, o in enumerate(overrides):
        if not isinstance(o, str):
            raise ConfigError(
                f"overrides[{i}] must be a string like 'loss.beta=1e4', got {type(o).__name__}"
            )
        if not o.strip() or ("=" in o and not o.split("=", 1)[0].lstrip("+~").strip()):
            raise ConfigError(f"override {o!r} names no key: write KEY=VALUE, e.g. 'loss.beta=1e4'")
        out.append(str(o))
    return out


def _hydra_message(e: BaseException) -> str:
    """Hydra's explanation of a composition mistake as one line: the options it lists joined
    by commas, the config search path left out, the underlying OmegaConf error's first line
    (``Key 'betta' not in 'LossConfig'``) added."""
    parts: list[str] = []
    listing = False
    for raw in str(e).split("\nConfig search path:")[0].splitlines():
        line = raw.strip()
        if not line:
            continue
        if listing and raw.startswith("\t"):  # an option under "Available options in 'x':"
            parts[-1] += ("" if parts[-1].endswith(":") else ",") + " " + line
            continue
        listing = line.startswith("Available options")
        parts.append(line)
    msg = parts[0] if parts else type(e).__name__
    for part in parts[1:]:
        msg += (" " if msg.endswith((".", ":")) else "; ") + part
    cause = first_line(e.__cause__) if e.__cause__ is not None else ""
    if cause and cause not in msg:
        msg += f" ({cause})"
    return one_line(msg)


def _groups() -> set[str]:
    from nst.app import CONFIG_DIR

    return {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name != "__pycache__"}


def load_config(overrides: Sequence[str] | None = (), **kwargs: Any) -> DictConfig:
    """The composed config (``nst/conf/config.yaml`` plus command-line style ``overrides`` such
    as ``"loss.beta=1e4"`` or ``"layers=lewuathe2017"``, then ``kwargs`` as in :func:`stylize`,
    which win over ``overrides``). Mistakes fail here as a one-line :class:`ConfigError`
    carrying Hydra's message. A Hydra app calling this keeps its own Hydra state."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.initialize import get_gh_backup, restore_gh_from_backup
    from omegaconf.errors import OmegaConfBaseException

    from nst.app import CONFIG_DIR
    from nst.config import register_configs

    overrides = _overrides(overrides)
    register_configs()
    choices, values = _split(kwargs, _groups())
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, *choices])
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(_hydra_message(e)) from None
    finally:
        restore_gh_from_backup(backup)
    return _merge(cfg, values)


class _FromConfig:
    """The default of ``content`` and ``style``: the config's (``content=...`` in overrides,
    ``config`` or ``nst/conf/config.yaml``). An explicit ``None`` is a mistake."""

    def __repr__(self) -> str:
        return "<from config>"


_FROM_CONFIG: Any = _FromConfig()


def stylize(
    content: Any = _FROM_CONFIG,
    style: Any = _FROM_CONFIG,
    *,
    overrides: Sequence[str] | None = (),
    output_dir: str | os.PathLike[str] | None = None,
    config: DictConfig | Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Result:
    """Stylize ``content`` with ``style`` and return the :class:`Result`.

    ``content`` and ``style`` take a path, ``sample:NAME``, a PIL image or an array (``(H, W)``
    or ``(H, W, 3|4)``; integers in 0..255, floats in 0..1); ``style`` also a list of them
    (blended, see ``style_blend``). Left out, they are the config's ``content``/``style``;
    given, they win over it. Everything else is the ``nst`` command's config: keyword
    arguments (``size=64, steps=5``, ``loss={"beta": 1e4}``, ``backbone="vgg19"``), command-line
    style ``overrides`` (``["layers=lewuathe2017"]``; keyword arguments win over them), or a
    ``config`` from :func:`load_config` (a plain dict, such as a :attr:`Result.config`, is read
    as ``load_config(**config)``). Nothing is written unless ``output_dir`` is given; then it
    receives what a CLI run directory holds (result.png, metrics.jsonl, summary.json,
    snapshots, checkpoints), and, as on the command line, a directory holding a run is refused
    unless ``resume=True``.
    """
    from nst.run import run
    from nst.spec import RunSpec
    from nst.tracking import MemoryWriter

    inputs = {k: v for k, v in (("content", content), ("style", style)) if v is not _FROM_CONFIG}
    for key, value in inputs.items():
        _check_image(key, value, many=key == "style")
    overrides = _overrides(overrides)
    run_dir = _output_dir(output_dir)
    if config is None:
        cfg = load_config(overrides, **kwargs)
    elif overrides or any(k in _groups() and isinstance(v, str) for k, v in kwargs.items()):
        raise ConfigError("with config=..., pass overrides and group choices to load_config")
    else:
        cfg = _merge(_as_config(config), {k: _plain(v) for k, v in kwargs.items()})
    arrays = {k: v for k, v in inputs.items() if not _is_spec(v)}
    texts = {k: _spec_value(v) for k, v in inputs.items() if _is_spec(v)}
    if texts:
        cfg = _merge(cfg, texts)
    if "style" in arrays and not isinstance(arrays["style"], list | tuple):
        arrays["style"] = [arrays["style"]]
    spec = RunSpec.from_config(cfg, images=arrays)
    if spec.resume and run_dir is None:
        raise ConfigError("resume=true needs output_dir: the run directory to continue")
    memory = MemoryWriter()
    summary = run(spec, run_dir, writers=[memory])
    image = summary.pop("image")
    return Result(
        image=image,
        history=memory.rows,
        config=spec.config,
        summary=summary,
        output_dir=run_dir,
    )


def _check_image(name: str, value: Any, many: bool) -> None:
    """``content``/``style`` is something :func:`nst.images.load_any` takes (``style`` also a
    non-empty list of them), else a one-line :class:`ImageError` naming what it got."""
    from PIL import Image

    what = "a path, sample:NAME, a PIL image or an (H, W[, C]) array"
    if value is None:
        raise ImageError(f"{name} is None: give {what}, or leave it out for the config's")
    if many and isinstance(value, list | tuple):
        if not value:
            raise ImageError(f"{name} is an empty {type(value).__name__}: give at least one image")
        for i, v in enumerate(value):
            _check_image(f"{name}[{i}]", v, many=False)
        return
    if isinstance(value, str) and not value.strip():
        raise ImageError(f"{name} is an empty string: give {what}")
    if isinstance(value, str | os.PathLike | Image.Image | np.ndarray) or hasattr(
        value, "__array__"
    ):
        return
    hint = ""
    if isinstance(value, bytes | bytearray):
        hint = "; for a file's bytes, pass PIL.Image.open(io.BytesIO(data))"
    elif isinstance(value, list | tuple):
        hint = "; only style takes a list" if name == "content" else "; a list holds images"
    raise ImageError(f"{name} must be {what}, got {type(value).__name__}{hint}")


def _output_dir(output_dir: Any) -> Path | None:
    """``output_dir`` as a path, refused (one line, before anything runs or is written) when it
    is not a path or names a file."""
    if output_dir is None:
        return None
    text = os.fspath(output_dir) if isinstance(output_dir, str | os.PathLike) else None
    if not isinstance(text, str):
        got = type(output_dir if text is None else text).__name__
        raise ConfigError(f"output_dir must be a path (str or os.PathLike), got {got}")
    if not text.strip():
        raise ConfigError("output_dir is an empty string: give a directory (or None: no files)")
    path = Path(text)
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            if p.is_dir():
                break
            where = "" if p == path else f" ({p} is a file)"
            raise ConfigError(f"output_dir {path} is not a directory{where}")
    return path


def _as_config(config: Any) -> DictConfig:
    """``config=``: a config from :func:`load_config` as it is; a plain dict (or an untyped
    DictConfig, such as a run's .hydra/config.yaml) merged onto the defaults like keyword
    arguments."""
    from omegaconf.errors import OmegaConfBaseException

    from nst.config import NSTConfig

    if isinstance(config, DictConfig) and OmegaConf.get_type(config) is NSTConfig:
        return config
    if not isinstance(config, Mapping):
        raise ConfigError(
            "config must be a config from nst.load_config(...) or a dict of config keys, got "
            + type(config).__name__
        )
    try:
        data = (
            OmegaConf.to_container(config, resolve=True)
            if isinstance(config, DictConfig)
            else config
        )
    except OmegaConfBaseException as e:
        raise ConfigError(f"config: {first_line(e)}") from None
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"config keys must be strings, got {bad[0]!r}")
    # Group choices and plain values as keyword arguments; sections key by key, so that a map
    # given whole (layers.style_layers, logger) replaces the default's instead of merging with
    # it: a Result.config then comes back as the same run.
    cfg = load_config(**{k: v for k, v in data.items() if not isinstance(v, Mapping)})
    try:
        for key, value in data.items():
            if isinstance(value, Mapping):
                _assign(cfg, key, _plain(value))
    except OmegaConfBaseException as e:
        line = first_line(e)
        raise ConfigError(f"config: {line}") from None
    return cfg


def _assign(cfg: DictConfig, path: str, value: Any) -> None:
    """Set ``path`` in ``cfg`` to ``value``: a config section (a schema dataclass) key by key,
    anything else (a scalar, a list, a free-form map) whole."""
    node = OmegaConf.select(cfg, path, throw_on_missing=False)
    section = isinstance(node, DictConfig) and OmegaConf.get_type(node) not in (dict, None)
    if isinstance(value, Mapping) and section:
        for key, v in value.items():
            _assign(cfg, f"{path}.{key}", v)
    else:
        OmegaConf.update(cfg, path, value, merge=False)


def _is_spec(v: Any) -> bool:
    """A path or ``sample:NAME`` (or a list of them): goes into the config as text."""
    if isinstance(v, list | tuple):
        return bool(v) and all(isinstance(x, str | os.PathLike) for x in v)
    return isinstance(v, str | os.PathLike)


def _spec_value(v: Any) -> Any:
    return [str(os.fspath(x)) for x in v] if isinstance(v, list | tuple) else str(os.fspath(v))
