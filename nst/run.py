"""``run(cfg, run_dir)``: one style-transfer job from a composed config.

This is where DictConfig stops: the config is validated and turned into plain specs here, and
everything below (engine, losses, weights, images) takes arrays and plain values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

import nst
from nst import images, vgg
from nst.engine import BackboneSpec, Diverged, Interrupted, LossSpec, strip_blocks, stylize
from nst.errors import ConfigError, DivergedError, ImageError, NstError, RunInterrupted
from nst.files import atomic_write_bytes, atomic_write_json
from nst.optim import OptimizerSpec
from nst.writers import LocalWriter, MetricWriter, MultiWriter


def _name(v: Any) -> str:
    """Enum members (structured configs) and plain strings alike as their string value."""
    return str(getattr(v, "value", v))


def _weights(kind: str, mapping: Any) -> dict[str, float]:
    out = {str(k): float(v) for k, v in dict(mapping).items()}
    bad = {k: v for k, v in out.items() if not math.isfinite(v) or v < 0}
    if bad:
        raise ConfigError(
            f"layers.{kind}: weights must be finite and >= 0, got "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
        )
    # A zero weight drops the layer (a preset's layer can be switched off from the command line).
    return {k: v for k, v in out.items() if v > 0}


def rectify(layers: dict[str, float]) -> dict[str, float]:
    """conv{b}_{i} -> relu{b}_{i} (the rectified response of the same convolution)."""
    return {("relu" + k[4:] if k.startswith("conv") else k): v for k, v in layers.items()}


def authors_style_weights(arch: str, layers: dict[str, float]) -> dict[str, float]:
    """w_l = 1e3 / N_l**2 with N_l the layer's channel count, as in the authors' released code
    (leongatys/PytorchNeuralStyleTransfer: style_weights = [1e3/n**2 for n in [64,128,256,512,512]])."""
    out = {}
    for name in layers:
        n = vgg.channels(arch, name)
        out[name] = 1e3 / n**2
    return out


def effective_beta(loss_cfg: Any) -> float:
    """β from ``loss.beta``, or from the paper's ratio: β = α·ab_scale/ab_ratio when
    ``loss.ab_ratio`` is set (see nst/conf/impl/ for the calibrated ab_scale values)."""
    ratio = loss_cfg.get("ab_ratio")
    if ratio is None:
        return float(loss_cfg.beta)
    ratio = float(ratio)
    if not math.isfinite(ratio) or ratio <= 0:
        raise ConfigError(f"loss.ab_ratio (the paper's alpha/beta) must be > 0, got {ratio}")
    return float(loss_cfg.alpha) * float(loss_cfg.ab_scale) / ratio


def specs_from_config(cfg: DictConfig) -> tuple[BackboneSpec, LossSpec, OptimizerSpec]:
    """Validate the parts of ``cfg`` the schema cannot and build the engine's plain specs."""
    arch = _name(cfg.backbone.arch)
    content_layers = _weights("content_layers", cfg.layers.content_layers)
    style_layers = _weights("style_layers", cfg.layers.style_layers)
    if not content_layers and not style_layers:
        raise ConfigError(
            "layers: content_layers and style_layers are both empty; name at least one layer"
        )
    try:  # the names as the user wrote them
        vgg.validate_layers(arch, [*content_layers, *style_layers])
    except ValueError as e:
        raise ConfigError(f"layers: {e}") from None
    if cfg.layers.get("rectified", False):
        content_layers, style_layers = rectify(content_layers), rectify(style_layers)
    if _name(cfg.layers.get("style_weighting", "preset")) == "authors":
        style_layers = authors_style_weights(arch, style_layers)
    for key in ("alpha", "beta", "tv", "ab_scale"):
        v = float(cfg.loss[key])
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"loss.{key} must be finite and >= 0, got {v}")
    loss = LossSpec(
        content_layers=content_layers,
        style_layers=style_layers,
        alpha=float(cfg.loss.alpha),
        beta=effective_beta(cfg.loss),
        tv=float(cfg.loss.tv),
        gram_norm=_name(cfg.loss.gram_norm),
        content_norm=_name(cfg.loss.content_norm),
        style_loss=_name(cfg.loss.get("style", "gram")),
    )
    o = cfg.optimizer
    opt = OptimizerSpec(
        name=_name(o.name),
        lr=None if o.lr is None else float(o.lr),
        b1=float(o.b1),
        b2=float(o.b2),
        eps=float(o.eps),
        memory_size=int(o.memory_size),
        max_linesearch_steps=int(o.max_linesearch_steps),
        momentum=float(o.momentum),
        nesterov=bool(o.nesterov),
        decay_every=int(o.decay_every),
        decay_rate=float(o.decay_rate),
    )
    if opt.name != "lbfgs" and (opt.lr is None or not opt.lr > 0):
        raise ConfigError(f"optimizer.lr must be > 0 for {opt.name}, got {o.lr}")
    backbone = BackboneSpec(
        arch=arch,
        pooling=_name(cfg.backbone.pooling),
        dtype=cfg.backbone.dtype,
        remat=bool(cfg.backbone.get("remat", False)),
        strip_rows=_strip_rows(cfg.backbone.get("strip_rows", 128)),
        conv=_conv_choice(cfg.backbone.get("conv", "auto")),
    )
    return backbone, loss, opt


def _strip_rows(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"backbone.strip_rows must be an integer >= 0, got {value!r}")
    return value


def _conv_choice(value: Any) -> str:
    from nst.vgg import CONV_CHOICES

    if str(value) not in CONV_CHOICES:
        raise ConfigError(f"backbone.conv must be one of {', '.join(CONV_CHOICES)}, got {value!r}")
    return str(value)


def make_init(
    kind: str,
    content: np.ndarray,
    style: np.ndarray,
    *,
    seed: int,
    distribution: str = "uniform",
    scale: float = 1.0,
    mix: float = 1.0,
    path: str | None = None,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """The starting image, ``content``'s shape, 0..255 float32.

    noise: mid-grey plus ``scale``·127.5 times U(-1, 1) or N(0, 1) noise, seeded by ``seed``, then
    ``(1 - mix)·content + mix·noise`` (mix = 1 is the paper's white-noise init)."""
    hw = content.shape[:2]
    if kind == "content":
        return content.copy()
    if kind == "style":
        return images.resize_to(style, hw)
    if kind == "file":
        if not path:
            raise ConfigError("init=file needs init.path=FILE")
        return images.resize_to(images.load_image(path, max_pixels), hw)
    if kind == "noise":
        if not 0.0 <= mix <= 1.0:
            raise ConfigError(f"init.mix must be in [0, 1], got {mix}")
        rng = np.random.default_rng(seed)
        if distribution == "uniform":
            z = rng.uniform(-1.0, 1.0, content.shape)
        else:
            z = rng.standard_normal(content.shape)
        noise = np.clip(127.5 + scale * 127.5 * z, 0.0, 255.0)
        return ((1.0 - mix) * content + mix * noise).astype(np.float32)
    raise ConfigError(f"unknown init {kind!r}; valid: content, noise, style, file")


def available_memory() -> int:
    """Bytes the OS reports available (MemAvailable), or total physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimate_memory(
    arch: str, layers: list[str], hw: tuple[int, int], strip_blocks: int = 0, strip_rows: int = 0
) -> int:
    """Rough peak bytes of one float32 step on an ``hw`` image: 2.25 float32 buffers per
    activation up to the deepest layer (XLA:CPU's compiled memory analysis of the VGG16 step
    measured 1.76-1.82 at 384x512 and 768x1024; 25% margin), the image-sized buffers (pixels,
    gradient, optimizer moments) and ~1 GiB for the process, weights and targets. With the first
    ``strip_blocks`` blocks run in strips (remat), their activations count for one strip only."""
    h, w = hw
    acts = vgg.activation_count(arch, vgg.deepest_layer(arch, layers), h, w)
    if strip_blocks:
        t, _, halo = vgg.strip_layout(arch, strip_blocks, h, strip_rows)
        strip_h = min(h, t * 2**strip_blocks) + 2 * halo
        last = f"pool{strip_blocks}"
        acts += vgg.activation_count(arch, last, strip_h, w) - vgg.activation_count(
            arch, last, h, w
        )
    return int(4 * (2.25 * acts + 8 * h * w * 3)) + 2**30


def check_memory(
    arch: str,
    layers: list[str],
    original_hw: tuple[int, int],
    size: int,
    strip_blocks: int = 0,
    strip_rows: int = 0,
) -> None:
    """Refuse sizes whose estimated memory exceeds what the machine has available."""
    scale = size / max(original_hw)
    hw = (max(1, round(original_hw[0] * scale)), max(1, round(original_hw[1] * scale)))
    need = estimate_memory(arch, layers, hw, strip_blocks, strip_rows)
    have = available_memory()
    if need > 0.9 * have:
        hint = "" if strip_blocks else " or backbone.remat=true (~4x the pixels in the same memory)"
        raise ConfigError(
            f"size={size} ({hw[1]}x{hw[0]} px) needs an estimated {need / 2**30:.1f} GiB, more than "
            f"the {have / 2**30:.1f} GiB available; use a smaller size{hint}"
        )


def check_size(arch: str, layers: list[str], hw: tuple[int, int], size: int) -> None:
    """The deepest layer must keep at least one position after its poolings."""
    need = 2 ** vgg.downsampling(arch, vgg.deepest_layer(arch, layers))
    if min(hw) < need:
        raise ConfigError(
            f"size={size} gives a {hw[1]}x{hw[0]} image whose shorter side is below {need} px, "
            f"the minimum for layer {vgg.deepest_layer(arch, layers)}; use a larger size"
        )


@dataclass
class JobInfo:
    """What Hydra knows about the job, as plain values (built in nst/app.py)."""

    name: str | None = None  # from the overrides, e.g. "beta=1000,layers=gatys2016"
    group: str | None = None  # the sweep, shared by all jobs of one `nst -m`
    job_type: str = "default"  # the experiment's name
    overrides: list[str] = field(default_factory=list)
    choices: dict[str, str] = field(default_factory=dict)  # config group -> option
    num: int | None = None


WANDB_ID_FILE = "wandb_run_id"


def make_writer(cfg: DictConfig, run_dir: Path, job: JobInfo, resume: bool = False) -> MetricWriter:
    """Local files always; W&B in addition with ``logger=wandb`` (the core never imports it)."""
    writers: list[MetricWriter] = [LocalWriter(run_dir)]
    if _name(cfg.logger.name) == "wandb":
        from nst.wandb_writer import WandbWriter, flatten

        resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        config = flatten(resolved)
        config.update({g: c for g, c in job.choices.items() if g in resolved or g == "experiment"})
        beta = effective_beta(cfg.loss)
        config["alpha_beta"] = float(cfg.loss.alpha) / beta if beta else float("inf")
        config["loss.beta_effective"] = beta
        config["overrides"] = ",".join(job.overrides)
        lg = cfg.logger
        w = WandbWriter.create(
            run_dir=run_dir,
            project=lg.project,
            entity=lg.entity,
            mode=None if lg.mode is None else _name(lg.mode),
            tags=list(lg.tags),
            name=job.name,
            group=job.group,
            job_type=job.job_type,
            config=config,
            log_images=bool(lg.log_images),
            run_id=_read_text(run_dir / WANDB_ID_FILE) if resume else None,
        )
        if w is not None:
            writers.append(w)
            with contextlib.suppress(Exception):
                atomic_write_bytes(run_dir / WANDB_ID_FILE, str(w.run.id).encode())
    return MultiWriter(writers)


@contextlib.contextmanager
def stop_on_signals():
    """An Event set by SIGINT/SIGTERM while the block runs (the loop then checkpoints and stops);
    the previous handlers come back afterwards. Off the main thread signals cannot be caught."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):  # noqa: ARG001
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _read_text(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics rows of steps before ``step`` (a resumed run logs the rest again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] < step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a line cut by the crash: nothing after it is trustworthy
    atomic_write_bytes(path, "".join(f"{x}\n" for x in keep).encode())


def run(
    cfg: DictConfig,
    run_dir: str | Path,
    job: JobInfo | None = None,
    *,
    stylize_fn: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Run one job described by ``cfg``, writing everything into ``run_dir``; returns the summary.
    ``stylize_fn`` replaces :func:`nst.engine.stylize` (the batched launcher's shared program).

    On failure nothing claims success: no result.png/summary.json; ``error.json`` records the
    message (the sweep report shows it) and the exception propagates.
    """
    run_dir = Path(run_dir)
    try:
        return _run(cfg, run_dir, job or JobInfo(), stylize_fn or stylize)
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        msg = " ".join(str(e).split()) or type(e).__name__
        # An unwritable run directory may itself be the error being reported.
        record = {"status": status, "error": msg, "type": type(e).__name__}
        if not isinstance(e, NstError):
            record["traceback"] = traceback.format_exc()
        with contextlib.suppress(OSError):
            atomic_write_json(run_dir / "error.json", record)
        raise


def _run(
    cfg: DictConfig, run_dir: Path, job: JobInfo, stylize: Callable[..., Any]
) -> dict[str, Any]:

    t0 = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    size = int(cfg.size)
    if size <= 0:
        raise ConfigError(f"size must be a positive number of pixels, got {size}")
    if int(cfg.steps) < 0:
        raise ConfigError(f"steps must be >= 0, got {cfg.steps}")
    backbone, loss, opt = specs_from_config(cfg)
    resume = bool(cfg.get("resume", False))
    ckpt_path = run_dir / "checkpoint.npz"
    resume_state = None
    if resume:
        done = run_dir / "summary.json"
        if done.exists() and json.loads(done.read_text()).get("status") == "ok":
            print(f"nst: {run_dir} already finished; nothing to resume", flush=True)
            return json.loads(done.read_text())
        if ckpt_path.exists():
            from nst.engine import load_checkpoint

            resume_state = load_checkpoint(ckpt_path)
            truncate_metrics(run_dir / "metrics.jsonl", int(resume_state["step"]))
            print(f"nst: resuming {run_dir} from step {int(resume_state['step'])}", flush=True)
    for stale in ("error.json", "summary.json", "interrupted.png", "last_finite.png"):
        (run_dir / stale).unlink(missing_ok=True)

    # Trackers start first, so that a job failing on its inputs is recorded there too.
    writer = make_writer(cfg, run_dir, job, resume=resume_state is not None)
    try:
        prepared = _prepare(cfg, backbone, loss, size)
    except BaseException as e:
        writer.write_summary({"status": "failed", "error": _one_line(e)})
        writer.close(1)
        raise
    init, params, winfo, backbone, content_raw, styles_raw, sizes, levels = prepared
    specs, blend = style_specs(cfg)
    with stop_on_signals() as stop:
        exit_code = 1
        try:
            try:
                result, final_inputs = _optimize(
                    cfg,
                    stylize,
                    init,
                    params,
                    backbone=backbone,
                    loss=loss,
                    opt=opt,
                    writer=writer,
                    ckpt_path=ckpt_path,
                    resume_state=resume_state,
                    should_stop=stop.is_set,
                    sizes=sizes,
                    levels=levels,
                )
            except Diverged as d:
                raise _record_divergence(d, cfg, run_dir, t0) from None
            except Interrupted as i:
                images.save_image(i.image, run_dir / "interrupted.png")
                msg = (
                    f"interrupted at step {i.step}; checkpoint and image saved in {run_dir}; "
                    "continue with the same command plus resume=true"
                )
                atomic_write_json(
                    run_dir / "summary.json",
                    {"status": "interrupted", "step": i.step, "error": msg},
                )
                raise RunInterrupted(msg) from None
            wall = time.perf_counter() - t0
            summary = {
                "status": "ok",
                "steps": result.steps,
                "loss": {
                    "alpha": loss.alpha,
                    "beta": loss.beta,
                    "tv": loss.tv,
                    "ab_ratio": cfg.loss.get("ab_ratio"),
                },
                "final": result.final_metrics,
                "initial": result.initial_metrics,
                "wall_s": wall,
                "compile_s": result.compile_s,
                "optimize_s": result.optimize_s,
                "sec_per_step": result.sec_per_step,
                "steps_per_s": 1.0 / result.sec_per_step if result.sec_per_step > 0 else None,
                "backbone": {
                    "arch": backbone.arch,
                    "pooling": backbone.pooling,
                    "preprocessing": backbone.preprocessing,
                    **winfo,
                },
                "content": {
                    "path": str(images.resolve_path(cfg.content)),
                    "original_hw": list(content_raw.shape[:2]),
                    "hw": list(final_inputs.content.shape[:2]),
                },
                "style": {
                    "path": _one_or_list([str(images.resolve_path(x)) for x in specs]),
                    "original_hw": _one_or_list([list(x.shape[:2]) for x in styles_raw]),
                    "hw": _one_or_list([list(x.shape[:2]) for x in final_inputs.styles]),
                    "blend": blend,
                    "scale": float(cfg.get("style_scale", 1.0)),
                },
                "color": _name(cfg.get("color", "none")),
                "pyramid": sizes,
                "result": str(run_dir / "result.png"),
                "seed": int(cfg.seed),
                "started_at": started_at,
                "finished_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "pid": os.getpid(),
                "job": {"name": job.name, "group": job.group, "overrides": job.overrides},
                "versions": _versions(),
                "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
            }
            writer.write_result(result.steps, result.image)
            writer.write_summary(
                {
                    **{f"final/{k}": v for k, v in result.final_metrics.items()},
                    "wall_s": wall,
                    "steps": result.steps,
                    "steps_per_s": summary["steps_per_s"],
                    "compile_s": result.compile_s,
                }
            )
            # result.png, then summary.json last: a summary means the run is complete.
            images.save_image(result.image, run_dir / "result.png")
            atomic_write_json(run_dir / "summary.json", summary)
            ckpt_path.unlink(missing_ok=True)  # finished: the result supersedes the checkpoint
            exit_code = 0
        except BaseException as e:
            status = {DivergedError: "diverged", RunInterrupted: "interrupted"}.get(
                type(e), "failed"
            )
            writer.write_summary({"status": status, "error": _one_line(e)})
            raise
        finally:
            writer.close(exit_code)
    return summary


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _one_or_list(xs: list) -> Any:
    return xs[0] if len(xs) == 1 else xs


class LevelWriter(MetricWriter):
    """Logs one pyramid level into the run's writer: steps offset past the earlier levels and
    every row tagged with the level and its size."""

    def __init__(self, inner: MetricWriter, level: int, size: int, offset: int):
        self.inner, self.level, self.size, self.offset = inner, level, size, offset

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        tags = {"level": float(self.level), "level_size": float(self.size)}
        self.inner.write_scalars(self.offset + step, {**scalars, **tags})

    def write_images(self, step: int, imgs: dict[str, np.ndarray]) -> None:
        self.inner.write_images(self.offset + step, imgs)


def _optimize(
    cfg: DictConfig,
    stylize: Callable[..., Any],
    init: np.ndarray,
    params: Any,
    *,
    backbone: BackboneSpec,
    loss: LossSpec,
    opt: OptimizerSpec,
    writer: MetricWriter,
    ckpt_path: Path,
    resume_state: Any,
    should_stop: Callable[[], bool],
    sizes: list[int],
    levels: list[Inputs],
) -> tuple[Any, Inputs]:
    """Run the optimization, coarse to fine when ``pyramid.levels`` > 1: each level starts from
    the previous level's result upsampled (the optimizer starts afresh: Adam's moments and
    L-BFGS' history belong to the old pixel grid). Snapshots and checkpoints happen in the last
    level (a resumed run recomputes the deterministic coarse levels). In luminance mode the
    result's luminance is put back together with the content's colours."""
    from nst import color

    _, blend = style_specs(cfg)
    per_level = level_steps(cfg, len(sizes))
    result, lv = None, None
    offset = 0
    for k, (size_k, lv) in enumerate(zip(sizes, levels, strict=True)):
        last = k == len(sizes) - 1
        steps = per_level[k]
        if result is not None:
            init = images.resize_to(result.image, lv.content.shape[:2])
        w = writer if len(sizes) == 1 else LevelWriter(writer, k, size_k, offset)
        offset += steps + 1
        result = stylize(
            lv.content,
            lv.styles[0] if len(lv.styles) == 1 else lv.styles,
            init,
            params,
            backbone=backbone,
            loss=loss,
            optimizer=opt,
            steps=steps,
            log_every=max(1, int(cfg.log_every)),
            save_every=int(cfg.save_every) if last else 0,
            steps_per_call=int(cfg.steps_per_call),
            writer=w,
            progress=bool(cfg.progress),
            checkpoint_path=ckpt_path if last else None,
            checkpoint_every=int(cfg.get("checkpoint_every", 0)) if last else 0,
            resume_state=resume_state if last else None,
            should_stop=should_stop,
            early_stop_patience=int(cfg.early_stop.patience),
            early_stop_min_delta=float(cfg.early_stop.min_delta),
            style_blend=blend,
            content_mask=lv.content_mask,
            style_masks=lv.style_masks,
        )
    assert result is not None and lv is not None
    if _name(cfg.get("color", "none")) == "luminance":
        result.image = color.recombine(result.image, lv.content_rgb)
    return result, lv


def style_specs(cfg: DictConfig) -> tuple[list[str], list[float] | None]:
    """``style`` as a list of image specs and ``style_blend`` as weights (None: one style)."""
    raw = cfg.style
    specs = [str(x) for x in raw] if isinstance(raw, list | tuple | ListConfig) else [str(raw)]
    if not specs:
        raise ConfigError("style: name at least one style image")
    blend = cfg.get("style_blend")
    if blend is None:
        return specs, None if len(specs) == 1 else [1.0 / len(specs)] * len(specs)
    weights = [float(w) for w in blend]
    if len(weights) != len(specs):
        raise ConfigError(
            f"style_blend has {len(weights)} weights for {len(specs)} style images; give one each"
        )
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"style_blend weights must be >= 0 and not all 0, got {weights}")
    return specs, weights


def level_steps(cfg: DictConfig, levels: int) -> list[int]:
    """Steps of each pyramid level: ``pyramid.steps`` or ``steps`` at every level."""
    given = cfg.pyramid.get("steps")
    if given is None:
        return [int(cfg.steps)] * levels
    steps = [int(x) for x in given]
    if len(steps) != levels or any(x < 0 for x in steps):
        raise ConfigError(
            f"pyramid.steps must list {levels} step counts >= 0 (one per level), got {steps}"
        )
    return steps


def pyramid_sizes(size: int, levels: int, factor: float) -> list[int]:
    """Longest sides of the coarse-to-fine levels, ending at ``size``."""
    if levels < 1:
        raise ConfigError(f"pyramid.levels must be >= 1, got {levels}")
    if levels > 1 and not factor > 1:
        raise ConfigError(f"pyramid.scale_factor must be > 1, got {factor}")
    return [max(1, round(size / factor**k)) for k in range(levels - 1, -1, -1)]


@dataclass
class Inputs:
    """One level's optimization inputs: what the engine sees (``content``/``styles``, grey in
    luminance mode) and the colour content to recombine with (``content_rgb``)."""

    content: np.ndarray
    styles: list[np.ndarray]
    content_rgb: np.ndarray
    content_mask: np.ndarray | None = None
    style_masks: list[np.ndarray | None] | None = None


def level_inputs(
    cfg: DictConfig, content_raw: np.ndarray, styles_raw: list[np.ndarray], size: int
) -> Inputs:
    """Content resized to ``size`` and the styles to the content's longest side times
    ``style_scale`` (the paper resizes the style to the content: scale 1), then the colour mode."""
    from nst import color

    scale = float(cfg.get("style_scale", 1.0))
    if not math.isfinite(scale) or scale <= 0:
        raise ConfigError(f"style_scale must be > 0, got {scale}")
    content = images.resize_longest(content_raw, size)
    side = max(1, round(max(content.shape[:2]) * scale))
    styles = [images.resize_longest(s, side) for s in styles_raw]
    cmask, smasks = _masks(cfg, content, styles)
    mode = _name(cfg.get("color", "none"))
    if mode == "histogram":
        styles = [color.match_histogram(s, content) for s in styles]
        return Inputs(content, styles, content, cmask, smasks)
    if mode == "luminance":
        grey = [color.luminance_pair(content, s) for s in styles]
        return Inputs(grey[0][0], [g[1] for g in grey], content, cmask, smasks)
    return Inputs(content, styles, content, cmask, smasks)


def _mask(spec: str, hw: tuple[int, int]) -> np.ndarray:
    """A mask image as ``hw`` floats in 0..1 (grey level / 255)."""
    img = images.load_image(spec)
    return images.resize_to(img, hw).mean(axis=-1) / 255.0


def _masks(
    cfg: DictConfig, content: np.ndarray, styles: list[np.ndarray]
) -> tuple[np.ndarray | None, list[np.ndarray | None] | None]:
    cspec, sspec = cfg.get("content_mask"), cfg.get("style_mask")
    if cspec is None:
        if sspec is not None:
            raise ConfigError("style_mask needs content_mask (which region each style goes to)")
        return None, None
    if len(styles) > 2:
        raise ConfigError(f"content_mask routes 1 or 2 style images, got {len(styles)}")
    if cfg.get("style_blend") is not None:
        raise ConfigError("style_blend and content_mask exclude each other (masks route styles)")
    if _name(cfg.loss.get("style", "gram")) != "gram":
        raise ConfigError("content_mask works with loss.style=gram")
    smasks: list[np.ndarray | None] = [None] * len(styles)
    if sspec is not None:
        specs = list(sspec) if isinstance(sspec, list | tuple | ListConfig) else [sspec]
        if len(specs) != len(styles):
            raise ConfigError(f"style_mask has {len(specs)} entries for {len(styles)} styles")
        smasks = [
            None if m is None else _mask(str(m), s.shape[:2])
            for m, s in zip(specs, styles, strict=True)
        ]
    return _mask(str(cspec), content.shape[:2]), smasks


def _prepare(cfg: DictConfig, backbone: BackboneSpec, loss: LossSpec, size: int) -> tuple:
    """Images (checked), the coarsest level's inputs and initial image, and the weights."""
    from nst.weights import resolve_params  # heavy (onnx, h5py): import only when running

    max_pixels = int(cfg.max_pixels)
    _check_paper_images(cfg)
    specs, _ = style_specs(cfg)
    content_raw = images.load_image(cfg.content, max_pixels)
    styles_raw = [images.load_image(s, max_pixels) for s in specs]
    strips = strip_blocks(backbone, loss)
    check_memory(
        backbone.arch, loss.layers, content_raw.shape[:2], size, strips, backbone.strip_rows
    )
    sizes = pyramid_sizes(size, int(cfg.pyramid.levels), float(cfg.pyramid.scale_factor))
    level_steps(cfg, len(sizes))  # fail early on a bad list
    # Every level's inputs once (resizing, colour mode, masks), checked before any work.
    levels = [level_inputs(cfg, content_raw, styles_raw, s) for s in sizes]
    for s, lv in zip(sizes, levels, strict=True):
        check_size(backbone.arch, loss.layers, lv.content.shape[:2], s)
        for st in lv.styles:
            check_size(backbone.arch, loss.style_layers or loss.layers, st.shape[:2], s)
    first = levels[0]
    init = make_init(
        _name(cfg.init.name),
        first.content,
        first.styles[0],
        seed=int(cfg.seed),
        distribution=_name(cfg.init.distribution),
        scale=float(cfg.init.scale),
        mix=float(cfg.init.mix),
        path=cfg.init.path,
        max_pixels=max_pixels,
    )

    params, winfo = resolve_params(
        backbone.arch,
        _name(cfg.backbone.weights),
        cfg.backbone.weights_path,
        int(cfg.backbone.seed),
        url=cfg.backbone.url,
    )
    if bool(cfg.backbone.get("normalized", False)):
        from nst.normalize import normalized_params

        try:
            params, ninfo = normalized_params(
                params,
                backbone.arch,
                winfo["preprocessing"],
                [str(s) for s in cfg.backbone.normalize_images],
                int(cfg.backbone.normalize_size),
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
        winfo = {**winfo, "normalized": ninfo}
    backbone = dataclasses.replace(backbone, preprocessing=winfo["preprocessing"])
    return init, params, winfo, backbone, content_raw, styles_raw, sizes, levels


def _record_divergence(d: Diverged, cfg: DictConfig, run_dir: Path, t0: float) -> DivergedError:
    """Keep the last finite image and a summary that says diverged (never ok); no result.png."""
    images.save_image(d.image, run_dir / "last_finite.png")
    msg = (
        f"diverged at step {d.step}: the loss or the pixels became non-finite; the last finite "
        f"image is {run_dir / 'last_finite.png'} (lower optimizer.lr or the loss weights)"
    )
    atomic_write_json(
        run_dir / "summary.json",
        {
            "status": "diverged",
            "step": d.step,
            "error": msg,
            "last": d.metrics,
            "wall_s": time.perf_counter() - t0,
            "seed": int(cfg.seed),
            "versions": _versions(),
            "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        },
    )
    return DivergedError(msg)


def _check_paper_images(cfg: DictConfig) -> None:
    """Paper images missing from images_dir: say how to fetch them (one line), not just 'no file'."""
    from nst.paper_images import missing_images_message

    images_dir = Path(str(cfg.get("images_dir", ""))).expanduser()
    missing = []
    for spec in (cfg.content, cfg.style):
        p = Path(str(spec)).expanduser()
        if p.parent == images_dir and not p.exists():
            missing.append(p.name)
    if missing:
        raise ImageError(missing_images_message(images_dir, missing))


def _versions() -> dict[str, str]:
    import flax
    import jax
    import optax

    return {
        "nst": nst.__version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
    }
