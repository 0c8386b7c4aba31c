"""``RunSpec.from_config``: the one place a composed DictConfig is read.

Hydra composes the config against the schema (:mod:`nst.config`), which holds every default;
here the values the schema cannot check are validated (one-line :class:`ConfigError`) and the
whole config becomes plain, typed values. Nothing below this module reads a DictConfig.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from nst.backbones import COMPUTE_DTYPES, DTYPES, BackboneSpec, get_backbone
from nst.config import alpha_beta
from nst.errors import ConfigError
from nst.loss_spec import LossSpec
from nst.optim import OptimizerSpec, optimizer_spec


@dataclass(frozen=True)
class WeightsSpec:
    """Where the backbone's parameters come from (see :meth:`nst.backbones.Backbone.load`)."""

    source: str = "embedded"
    path: str | None = None
    url: str | None = None
    seed: int = 0
    # The paper's normalized network: every filter rescaled to mean activation 1 over these
    # images at this size (nst.backbones.normalize).
    normalized: bool = False
    normalize_images: tuple[str, ...] = ()
    normalize_size: int = 256


@dataclass(frozen=True)
class InitSpec:
    """The starting image (:func:`nst.run.make_init`)."""

    name: str = "content"
    distribution: str = "uniform"
    scale: float = 1.0
    mix: float = 1.0
    path: str | None = None


@dataclass
class RunSpec:
    """Everything one job needs, as plain values. ``content``/``styles``/masks are image specs
    (a path or ``sample:NAME``) or arrays handed in by the Python API."""

    content: Any
    styles: list[Any]
    style_blend: list[float] | None  # None: one style
    style_scale: float
    color: str
    content_mask: Any | None
    style_masks: list[Any | None] | None
    size: int
    steps: int
    seed: int
    save_every: int
    log_every: int
    steps_per_call: int
    checkpoint_every: int
    resume: bool
    max_pixels: int
    progress: bool
    early_stop_patience: int
    early_stop_min_delta: float
    eval_enabled: bool
    eval_every: int
    animation: bool
    output: str | None
    optimized_metric: str
    pyramid_levels: int
    pyramid_scale_factor: float
    pyramid_steps: list[int]  # one per level, coarse to fine
    backbone: BackboneSpec
    weights: WeightsSpec
    loss: LossSpec
    optimizer: OptimizerSpec
    init: InitSpec
    trackers: dict[str, dict[str, Any]]  # tracker name -> its options
    images_dir: str
    ab_ratio: float | None
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config, for summaries
    # The run on backbone.fallback, used when this backbone's weights cannot be had.
    fallback: RunSpec | None = None

    @property
    def alpha_beta(self) -> float | None:
        """The α/β a user means: the paper's ratio when ``loss.ab_ratio`` is set, else α/β."""
        return alpha_beta(self.loss.alpha, self.loss.beta, self.ab_ratio)

    @classmethod
    def from_config(cls, cfg: DictConfig, images: Mapping[str, Any] | None = None) -> RunSpec:
        """Validate ``cfg`` (composed against the schema) and turn it into plain values.
        ``images`` may replace ``content`` (an array or PIL image) and ``style`` (a list of
        them), as the Python API hands them in; they are validated like the config's."""
        return _from_config(cfg, dict(images or {}))


def name_of(v: Any) -> str:
    """Enum members (structured configs) and plain strings alike as their string value."""
    return str(getattr(v, "value", v))


def _container(node: Any) -> Any:
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return node


def _as_list(node: Any) -> list[Any]:
    node = _container(node)
    return list(node) if isinstance(node, list | tuple) else [node]


def _layer_weights(kind: str, mapping: Any, net: Any) -> dict[str, float]:
    out = {net.canonical(str(k)): float(v) for k, v in dict(_container(mapping)).items()}
    bad = {k: v for k, v in out.items() if not math.isfinite(v) or v < 0}
    if bad:
        raise ConfigError(
            f"layers.{kind}: weights must be finite and >= 0, got "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
        )
    # A zero weight drops the layer (a preset's layer can be switched off from the command line).
    return {k: v for k, v in out.items() if v > 0}


def effective_beta(alpha: float, beta: float, ab_ratio: float | None, ab_scale: float) -> float:
    """β from ``loss.beta``, or from the paper's ratio: β = α·ab_scale/ab_ratio when
    ``loss.ab_ratio`` is set (see nst/conf/impl/ for the calibrated ab_scale values)."""
    if ab_ratio is None:
        return float(beta)
    if not math.isfinite(ab_ratio) or ab_ratio <= 0:
        raise ConfigError(f"loss.ab_ratio (the paper's alpha/beta) must be > 0, got {ab_ratio}")
    return float(alpha) * float(ab_scale) / ab_ratio


def _loss(cfg: DictConfig, backbone: BackboneSpec) -> LossSpec:
    net = get_backbone(backbone.arch)
    content_layers = _layer_weights("content_layers", cfg.layers.content_layers, net)
    style_layers = _layer_weights("style_layers", cfg.layers.style_layers, net)
    if not content_layers and not style_layers:
        raise ConfigError(
            "layers: content_layers and style_layers are both empty; name at least one layer"
        )
    try:  # the names as the user wrote them
        net.validate_layers([*content_layers, *style_layers])
    except ValueError as e:
        raise ConfigError(f"layers: {e}") from None
    if cfg.layers.rectified:
        content_layers = {net.rectified(k): v for k, v in content_layers.items()}
        style_layers = {net.rectified(k): v for k, v in style_layers.items()}
    if name_of(cfg.layers.style_weighting) == "authors":
        # w_l = 1e3 / N_l**2 with N_l the layer's channel count, as in the authors' released
        # code (leongatys/PytorchNeuralStyleTransfer: [1e3/n**2 for n in [64,128,256,512,512]]).
        style_layers = {k: 1e3 / net.channels(k) ** 2 for k in style_layers}
    for key in ("alpha", "beta", "tv", "ab_scale"):
        v = float(cfg.loss[key])
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"loss.{key} must be finite and >= 0, got {v}")
    ratio = None if cfg.loss.ab_ratio is None else float(cfg.loss.ab_ratio)
    return LossSpec(
        content_layers=content_layers,
        style_layers=style_layers,
        alpha=float(cfg.loss.alpha),
        beta=effective_beta(cfg.loss.alpha, cfg.loss.beta, ratio, cfg.loss.ab_scale),
        tv=float(cfg.loss.tv),
        gram_norm=name_of(cfg.loss.gram_norm),
        content_norm=name_of(cfg.loss.content_norm),
        style=name_of(cfg.loss.style),
        balance=name_of(cfg.loss.balance),
    )


def _backbone(cfg: DictConfig) -> BackboneSpec:
    b = cfg.backbone
    arch = name_of(b.arch)
    get_backbone(arch)  # one line naming the registered backbones when unknown
    rows = b.strip_rows
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise ConfigError(f"backbone.strip_rows must be an integer >= 0, got {rows!r}")
    if str(b.dtype) not in DTYPES:
        raise ConfigError(f"backbone.dtype must be one of {', '.join(DTYPES)}, got {b.dtype!r}")
    return BackboneSpec(
        arch=arch,
        pooling=name_of(b.pooling),
        dtype=str(b.dtype),
        remat=bool(b.remat),
        strip_rows=rows,
        conv=str(b.conv),
        compute_dtype=_compute_dtype(b.compute_dtype, str(b.dtype)),
    )


def _compute_dtype(value: Any, dtype: str) -> str:
    v = str(value)
    if v not in COMPUTE_DTYPES:
        raise ConfigError(
            f"backbone.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {v!r}"
        )
    if v != "float32" and dtype != "float32":
        raise ConfigError(
            f"backbone.compute_dtype={v} needs backbone.dtype=float32 (got {dtype}): it sets the "
            "precision of the products inside a float32 network"
        )
    return v


def _seed(key: str, value: Any) -> int:
    v = int(value)
    if not 0 <= v < 2**32:
        raise ConfigError(f"{key} must be an integer in [0, 2**32), got {v}")
    return v


def _output(value: Any) -> str | None:
    from nst.images import WRITE_FORMATS

    if value is None:
        return None
    path = str(value)
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix not in WRITE_FORMATS:
        raise ConfigError(
            f"output={path}: name an image file ending in {', '.join(sorted(WRITE_FORMATS))}"
        )
    return path


def _non_negative(key: str, value: Any) -> int:
    v = int(value)
    if v < 0:
        raise ConfigError(f"{key} must be >= 0, got {v}")
    return v


def _finite_non_negative(key: str, value: Any) -> float:
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise ConfigError(f"{key} must be a finite number >= 0, got {v}")
    return v


def _optimized_metric(value: Any, evaluate: bool, loss: LossSpec, optimizer: OptimizerSpec) -> str:
    """The final metric a job returns to Hydra's sweeper: one the run will have (an unknown
    name would let an optimizing sweeper chase a fallback for every trial)."""
    from nst.evaluate import KEYS
    from nst.optim import learning_rate

    name = str(value or ("eval/style" if evaluate else "total"))
    known = ["total", "content", "style", "tv", "sec_per_step"]
    if optimizer.name != "lbfgs" and callable(learning_rate(optimizer)):
        known.append("lr")  # logged only when the rate changes (a schedule)
    known += [f"content/{k}" for k in loss.content_layers]
    known += [f"style/{k}" for k in loss.style_layers]
    if name in KEYS and not evaluate:
        raise ConfigError(f"optimized_metric={name} needs eval.enabled=true")
    if name not in known and name not in KEYS:
        raise ConfigError(
            f"optimized_metric={name} is not a final metric of this run; valid: "
            f"{', '.join(known + list(KEYS))}"
        )
    return name


def _pixels(key: str, value: Any) -> int:
    v = int(value)
    if v <= 0:
        raise ConfigError(f"{key} must be a positive number of pixels, got {v}")
    return v


def _styles(cfg: DictConfig, given: list[Any] | None) -> tuple[list[Any], list[float] | None]:
    styles = list(given) if given is not None else _as_list(cfg.style)
    if not styles:
        raise ConfigError("style: name at least one style image")
    if cfg.style_blend is None:
        return styles, None if len(styles) == 1 else [1.0 / len(styles)] * len(styles)
    weights = [float(w) for w in cfg.style_blend]
    if len(weights) != len(styles):
        raise ConfigError(
            f"style_blend has {len(weights)} weights for {len(styles)} style images; give one each"
        )
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"style_blend weights must be >= 0 and not all 0, got {weights}")
    return styles, weights


def _masks(cfg: DictConfig, n_styles: int, style_loss: str) -> tuple[Any, list[Any] | None]:
    cmask, smask = cfg.content_mask, _container(cfg.style_mask)
    if cmask is None:
        if smask is not None:
            raise ConfigError("style_mask needs content_mask (which region each style goes to)")
        return None, None
    if n_styles > 2:
        raise ConfigError(f"content_mask routes 1 or 2 style images, got {n_styles}")
    if cfg.style_blend is not None:
        raise ConfigError("style_blend and content_mask exclude each other (masks route styles)")
    if style_loss != "gram":
        raise ConfigError("content_mask works with loss.style=gram")
    if smask is None:
        return str(cmask), None
    masks = list(smask) if isinstance(smask, list | tuple) else [smask]
    if len(masks) != n_styles:
        raise ConfigError(f"style_mask has {len(masks)} entries for {n_styles} styles")
    return str(cmask), [None if m is None else str(m) for m in masks]


def _pyramid(cfg: DictConfig) -> tuple[int, float, list[int]]:
    levels, factor = int(cfg.pyramid.levels), float(cfg.pyramid.scale_factor)
    if levels < 1:
        raise ConfigError(f"pyramid.levels must be >= 1, got {levels}")
    if levels > 1 and not factor > 1:
        raise ConfigError(f"pyramid.scale_factor must be > 1, got {factor}")
    if cfg.pyramid.steps is None:
        return levels, factor, [int(cfg.steps)] * levels
    steps = [int(x) for x in cfg.pyramid.steps]
    if len(steps) != levels or any(x < 0 for x in steps):
        raise ConfigError(
            f"pyramid.steps must list {levels} step counts >= 0 (one per level), got {steps}"
        )
    return levels, factor, steps


def trackers_from_config(node: Any) -> dict[str, dict[str, Any]]:
    """``logger`` as tracker name -> options (``logger=[wandb,tensorboard]`` selects several)."""
    from nst.tracking import LEGACY_KEYS, check_trackers

    out: dict[str, dict[str, Any]] = {}
    for name, opts in (_container(node) or {}).items():
        if name == "name":
            raise ConfigError(
                "logger.name is gone: choose trackers with logger=NAME or logger=[A,B]"
            )
        if name in LEGACY_KEYS:
            raise ConfigError(f"logger.{name} is now logger.wandb.{name} (with logger=wandb)")
        if not isinstance(opts, Mapping):
            raise ConfigError(f"logger.{name} must hold the tracker's options, got {opts!r}")
        out[str(name)] = dict(opts)
    check_trackers(out)
    return out


def _fallback(cfg: DictConfig, images: dict[str, Any]) -> RunSpec | None:
    fb = cfg.backbone.fallback
    if fb.arch is None:
        return None
    alt = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    alt.backbone.arch, alt.backbone.weights, alt.backbone.weights_path = fb.arch, fb.weights, None
    alt.backbone.fallback = {"arch": None}
    for key in ("content_layers", "style_layers"):
        if fb[key] is not None:
            alt.layers[key] = _container(fb[key])
    try:
        return _from_config(alt, images)
    except ConfigError as e:
        raise ConfigError(f"backbone.fallback: {e}") from None


def _from_config(cfg: DictConfig, images: dict[str, Any]) -> RunSpec:
    size = _pixels("size", cfg.size)
    _non_negative("steps", cfg.steps)
    backbone = _backbone(cfg)
    loss = _loss(cfg, backbone)
    optimizer = optimizer_spec(_container(cfg.optimizer))
    styles, blend = _styles(cfg, images.get("style"))
    content = images.get("content", str(cfg.content))
    for key, item in [("content", content), *(("style", x) for x in styles)]:
        if isinstance(item, str) and not item.strip():
            raise ConfigError(f"{key} is empty: name an image file or sample:NAME")
    cmask, smasks = _masks(cfg, len(styles), loss.style)
    scale = float(cfg.style_scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ConfigError(f"style_scale must be > 0, got {scale}")
    levels, factor, level_steps = _pyramid(cfg)
    init = InitSpec(
        name=name_of(cfg.init.name),
        distribution=name_of(cfg.init.distribution),
        scale=_finite_non_negative("init.scale", cfg.init.scale),
        mix=float(cfg.init.mix),
        path=None if cfg.init.path is None else str(cfg.init.path),
    )
    if init.name == "noise" and not 0.0 <= init.mix <= 1.0:  # NaN fails too
        raise ConfigError(f"init.mix must be in [0, 1], got {init.mix}")
    if init.name == "file" and not init.path:
        raise ConfigError("init=file needs init.path=FILE")
    if init.path and init.name != "file":
        raise ConfigError(
            f"init.path={init.path} is only read with init=file (init={init.name}); "
            "add init=file or drop init.path"
        )
    b = cfg.backbone
    weights = WeightsSpec(
        source=name_of(b.weights),
        path=None if b.weights_path is None else str(b.weights_path),
        url=None if b.url is None else str(b.url),
        seed=_seed("backbone.seed", b.seed),
        normalized=bool(b.normalized),
        normalize_images=tuple(str(s) for s in b.normalize_images),
        normalize_size=int(b.normalize_size),
    )
    get_backbone(backbone.arch).check(backbone, weights)
    config = _container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    for key, given in (("content", images.get("content")), ("style", images.get("style"))):
        if given is not None:  # what summary.json and trackers record for handed-in images
            described = [f"<{type(x).__name__}>" for x in _as_list(given)]
            config[key] = described[0] if key == "content" else described
    return RunSpec(
        content=content,
        styles=styles,
        style_blend=blend,
        style_scale=scale,
        color=name_of(cfg.color),
        content_mask=cmask,
        style_masks=smasks,
        size=size,
        steps=int(cfg.steps),
        seed=_seed("seed", cfg.seed),
        save_every=_non_negative("save_every", cfg.save_every),
        log_every=max(1, _non_negative("log_every", cfg.log_every)),
        steps_per_call=_non_negative("steps_per_call", cfg.steps_per_call),
        checkpoint_every=_non_negative("checkpoint_every", cfg.checkpoint_every),
        resume=bool(cfg.resume),
        max_pixels=_pixels("max_pixels", cfg.max_pixels),
        progress=bool(cfg.progress),
        early_stop_patience=_non_negative("early_stop.patience", cfg.early_stop.patience),
        early_stop_min_delta=_finite_non_negative("early_stop.min_delta", cfg.early_stop.min_delta),
        eval_enabled=bool(cfg.eval.enabled),
        eval_every=_non_negative("eval.every", cfg.eval.every),
        animation=bool(cfg.animation),
        output=_output(cfg.output),
        optimized_metric=_optimized_metric(
            cfg.optimized_metric, bool(cfg.eval.enabled), loss, optimizer
        ),
        pyramid_levels=levels,
        pyramid_scale_factor=factor,
        pyramid_steps=level_steps,
        backbone=backbone,
        weights=weights,
        loss=loss,
        optimizer=optimizer,
        init=init,
        trackers=trackers_from_config(cfg.logger),
        images_dir=str(cfg.images_dir),
        ab_ratio=None if cfg.loss.ab_ratio is None else float(cfg.loss.ab_ratio),
        config=config,
        fallback=_fallback(cfg, images),
    )
