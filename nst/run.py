"""``run(spec, run_dir)``: one style-transfer job, from a :class:`~nst.spec.RunSpec` to files.

The CLI (:mod:`nst.app`) and the Python API (:func:`nst.stylize`) both come here after
:meth:`RunSpec.from_config`; everything below takes arrays and plain values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig

import nst
from nst import images, rundir
from nst.backbones import get_backbone
from nst.errors import (
    ConfigError,
    DivergedError,
    ImageError,
    NstError,
    RunInterrupted,
    WeightsError,
    one_line,
)
from nst.files import atomic_write_json, probe_writable
from nst.spec import RunSpec
from nst.tracking import JobInfo, MetricWriter, TrackerContext, make_writer

if TYPE_CHECKING:
    from nst.engine import Diverged


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
        return images.resize_to(images.load_image(path, max_pixels), hw)
    if kind == "noise":
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


def input_hws(
    spec: RunSpec, content_hw: tuple[int, int], style_hws: list[tuple[int, int]], size: int
) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The content's and the styles' height and width at ``size`` (as :func:`level_inputs`
    resizes them: the content's longest side to ``size``, each style's to that times
    ``style_scale``)."""
    content = images.longest_hw(content_hw, size)
    side = max(1, round(max(content) * spec.style_scale))
    return content, [images.longest_hw(hw, side) for hw in style_hws]


def check_memory(
    spec: RunSpec,
    original_hw: tuple[int, int],
    size: int,
    style_hws: list[tuple[int, int]] | None = None,
) -> None:
    """Refuse sizes whose estimated memory exceeds what the machine has available: the step on
    the content and the targets of each style (resized to the content's longest side, so a
    square style with a panorama is the larger image)."""
    hw, styles = input_hws(spec, original_hw, list(style_hws or []), size)
    backbone = get_backbone(spec.backbone.arch)
    need = backbone.step_bytes(spec.backbone, spec.loss, hw)
    have = available_memory()
    # 90% of what is available: the estimate is rough, and the OS and other processes need some.
    usable = f"the {0.9 * have / 2**30:.1f} GiB usable (90% of {have / 2**30:.1f} GiB available)"
    if need > 0.9 * have:
        striped = backbone.strip_blocks(spec.backbone, spec.loss)
        hint = "" if striped else " or backbone.remat=true (~4x the pixels in the same memory)"
        raise ConfigError(
            f"size={size} ({hw[1]}x{hw[0]} px) needs an estimated {need / 2**30:.1f} GiB, more than "
            f"{usable}; use a smaller size{hint}"
        )
    for k, shw in enumerate(styles):
        need = backbone.target_bytes(spec.backbone, spec.loss, shw)
        if need > 0.9 * have:
            raise ConfigError(
                f"size={size} resizes {_style_name(k, len(styles))} to {shw[1]}x{shw[0]} px (the "
                f"content's longest side times style_scale={spec.style_scale:g}), which needs an "
                f"estimated {need / 2**30:.1f} GiB, more than {usable}; use a smaller size or "
                "style_scale"
            )


def _style_name(k: int, n: int) -> str:
    return "the style image" if n == 1 else f"style image {k + 1}"


def size_problem(
    spec: RunSpec, content_hw: tuple[int, int], style_hws: list[tuple[int, int]], size: int
) -> str | None:
    """What is too small at ``size`` (every pyramid level's content and styles must keep the
    deepest layer they feed at least one position after its poolings), or None."""
    backbone = get_backbone(spec.backbone.arch)
    loss = spec.loss
    sizes = pyramid_sizes(size, spec.pyramid_levels, spec.pyramid_scale_factor)
    for level, s in enumerate(sizes):
        content, styles = input_hws(spec, content_hw, style_hws, s)
        where = f" at pyramid level {level} ({s} px)" if len(sizes) > 1 else ""
        named = [("content image", content, loss.layers)]
        named += [
            (_style_name(k, len(styles)), hw, loss.style_layers or loss.layers)
            for k, hw in enumerate(styles)
        ]
        for what, hw, layers in named:
            deepest = backbone.deepest_layer(layers)
            if min(backbone.layer_size(deepest, *hw)) < 1:
                return (
                    f"makes {what} {hw[1]}x{hw[0]} px{where}, its shorter side below "
                    f"{backbone.min_side(deepest)} px, the minimum for layer {deepest}"
                )
    return None


# Sizes beyond this are not suggested: no machine holds their step.
MAX_SUGGESTED_SIZE = 2**17


def check_size(
    spec: RunSpec, content_hw: tuple[int, int], style_hws: list[tuple[int, int]], size: int
) -> None:
    """One line naming the image that is too small at ``size`` and the smallest size that
    works (searched, so that very elongated images get a size that really does)."""
    problem = size_problem(spec, content_hw, style_hws, size)
    if problem is None:
        return

    def works(s: int) -> bool:
        return size_problem(spec, content_hw, style_hws, s) is None

    lo, hi = size, size + 1  # lo fails; find a working hi, then the smallest
    while hi <= MAX_SUGGESTED_SIZE and not works(hi):
        lo, hi = hi, hi * 2
    if hi > MAX_SUGGESTED_SIZE:
        raise ConfigError(
            f"size={size} {problem}; no size up to {MAX_SUGGESTED_SIZE} works: the image is too "
            "elongated"
        )
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if works(mid) else (mid, hi)
    raise ConfigError(f"size={size} {problem}; use size={hi} or more")


def _warn_unused_beta(spec: RunSpec) -> None:
    """``loss.ab_ratio`` (set by impl=paper/authors and the paper's figures) decides β; a
    ``loss.beta`` given besides it does nothing, which a sweep over it would not show."""
    from nst.config import LossConfig

    beta = (spec.config.get("loss") or {}).get("beta")
    if spec.ab_ratio is None or beta is None or float(beta) == LossConfig.beta:
        return
    print(
        f"nst: warning: loss.beta={float(beta):g} is not used: loss.ab_ratio={spec.ab_ratio:g} "
        f"sets beta = alpha * ab_scale / ab_ratio = {spec.loss.beta:g} (loss.ab_ratio=null to "
        "give beta yourself)",
        file=sys.stderr,
        flush=True,
    )


def check_output(spec: RunSpec) -> None:
    """``output=`` must not be one of the run's input images (the result would replace it) and
    its directory must be writable: a one-line error now, not after the optimization."""
    if spec.output is None:
        return
    out = Path(spec.output).expanduser()
    named = [("content", spec.content), *(("style", x) for x in spec.styles)]
    named += [("content_mask", spec.content_mask), ("init.path", spec.init.path)]
    named += [("style_mask", m) for m in spec.style_masks or []]
    for key, item in named:
        if not isinstance(item, str | os.PathLike) or str(item).startswith(images.SAMPLE_PREFIX):
            continue
        path = images.resolve_path(str(item))
        same = out.resolve() == path.resolve()
        if not same and out.exists() and path.exists():
            same = os.path.samefile(out, path)
        if same:
            raise ConfigError(
                f"output={spec.output} is the {key} image: the result would overwrite it; "
                "name another file"
            )
    probe_writable(out.parent)


class StopFlag(threading.Event):
    """Set by a signal; ``signum`` says which (SIGINT unless a handler recorded another)."""

    signum: int = signal.SIGINT


@contextlib.contextmanager
def stop_on_signals():
    """A :class:`StopFlag` set by SIGINT/SIGTERM while the block runs (the loop then checkpoints
    and stops); the previous handlers come back afterwards. Off the main thread signals cannot
    be caught."""
    stop = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):  # noqa: ARG001
        stop.signum = signum
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def run(
    spec: RunSpec | DictConfig,
    run_dir: str | Path | None,
    job: JobInfo | None = None,
    *,
    stylize_fn: Callable[..., Any] | None = None,
    writers: list[MetricWriter] | None = None,
) -> dict[str, Any]:
    """Run one job described by ``spec`` (a composed config is turned into one first, so its
    mistakes are recorded like any other failure), writing everything into ``run_dir`` (None: no files,
    the Python API's default); returns the summary, whose ``image`` key holds the final pixels
    (``(H, W, 3)`` uint8, as in result.png). ``stylize_fn`` replaces
    :func:`nst.engine.stylize` (the batched launcher's shared program); ``writers`` are extra
    metric writers (the API's in-memory history).

    On failure nothing claims success: no result.png/summary.json; ``error.json`` records the
    message (the sweep report shows it) and the exception propagates.
    """
    run_dir = None if run_dir is None else Path(run_dir)
    claim = {"claimed": False}
    held = None
    try:
        if not isinstance(spec, RunSpec):
            spec = RunSpec.from_config(spec)
        held = rundir.lock(run_dir) if run_dir is not None else None
        return _run(spec, run_dir, job or JobInfo(), stylize_fn, writers or [], claim)
    except BaseException as e:
        # error.json goes into a directory this run claimed, or one holding no other run: a
        # refused or failed start must not leave a record beside another run's files (nor
        # beside a running one's).
        busy = isinstance(e, rundir.RunDirBusy)
        if run_dir is None or busy or (not claim["claimed"] and rundir.previous_files(run_dir)):
            raise
        status = "interrupted" if isinstance(e, KeyboardInterrupt | RunInterrupted) else "failed"
        # An unwritable run directory may itself be the error being reported.
        record = {"status": status, "error": one_line(e), "type": type(e).__name__}
        if not isinstance(e, NstError):
            record["traceback"] = traceback.format_exc()
        with contextlib.suppress(OSError):
            atomic_write_json(run_dir / "error.json", record)
        raise
    finally:
        rundir.unlock(held)


def _run(
    spec: RunSpec,
    run_dir: Path | None,
    job: JobInfo,
    stylize: Callable[..., Any] | None,
    extra_writers: list[MetricWriter],
    claim: dict[str, bool],
) -> dict[str, Any]:
    t0 = time.perf_counter()
    started_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    ckpt_path = run_dir / "checkpoint.npz" if run_dir is not None else None
    resume_state = None
    check_output(spec)
    _warn_unused_beta(spec)
    if run_dir is not None:
        if spec.resume:
            resume_state, finished = _resume(spec, run_dir, ckpt_path)
            if finished is not None:
                return finished
        else:
            rundir.check_fresh(run_dir)
        claim["claimed"] = True
        for stale in ("error.json", "summary.json", "interrupted.png", "last_finite.png"):
            (run_dir / stale).unlink(missing_ok=True)

    # Trackers start first, so that a job failing on its inputs is recorded there too.
    ctx = TrackerContext(
        run_dir=run_dir,
        job=job,
        config=spec.config,
        alpha_beta=spec.alpha_beta,
        beta=spec.loss.beta,
        resume=resume_state is not None,
        layers={
            "content_layers": dict(spec.loss.content_layers),
            "style_layers": dict(spec.loss.style_layers),
        },
    )
    writer = make_writer(spec.trackers, ctx)
    writer.writers.extend(extra_writers)
    try:
        prepared = _prepare(spec)
    except BaseException as e:
        writer.write_summary({"status": "failed", "error": one_line(e)})
        writer.close(1)
        raise
    spec, init, params, winfo, backbone, content_raw, styles_raw, sizes, levels = prepared
    # The engine (and JAX) load only now: a run that fails on its inputs or config does not wait.
    from nst.devices import check_backend
    from nst.engine import Diverged, Interrupted
    from nst.engine import stylize as engine_stylize

    check_backend()

    stylize = stylize or engine_stylize
    if spec.progress:  # inputs and weights are fine: say what the silent part was, then compile
        print(
            f"nst: {backbone.arch} ({spec.weights.source} weights) ready in {winfo['load_s']:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    writer.write_inputs({"content": levels[-1].content_rgb, "style": styles_raw[0]})
    with stop_on_signals() as stop:
        exit_code = 1
        try:
            try:
                result, final_inputs = _optimize(
                    spec,
                    stylize,
                    init,
                    params,
                    backbone=backbone,
                    writer=writer,
                    ckpt_path=ckpt_path,
                    resume_state=resume_state,
                    should_stop=stop.is_set,
                    sizes=sizes,
                    levels=levels,
                    styles_raw=styles_raw,
                )
            except Diverged as d:
                raise _record_divergence(d, spec, run_dir, t0) from None
            except Interrupted as i:
                if run_dir is not None:
                    images.save_image(i.image, run_dir / "interrupted.png")
                if run_dir is not None and ckpt_path is not None and ckpt_path.exists():
                    msg = (
                        f"interrupted at step {i.step}; checkpoint and image saved in {run_dir}; "
                        "continue with the same command plus resume=true"
                    )
                elif run_dir is not None:  # a coarse pyramid level: checkpoints are the last's
                    msg = (
                        f"interrupted at step {i.step}, before the last pyramid level, which "
                        f"alone is checkpointed; image saved in {run_dir}; nothing to resume "
                        "(resume=true starts the run over)"
                    )
                else:
                    msg = f"interrupted at step {i.step} (no run directory: nothing was saved)"
                if run_dir is not None:
                    atomic_write_json(
                        run_dir / "summary.json",
                        {"status": "interrupted", "step": i.step, "error": msg},
                    )
                raise RunInterrupted(msg, int(stop.signum)) from None
            wall = time.perf_counter() - t0
            result_path = str(run_dir / "result.png") if run_dir is not None else None
            summary = {
                "status": "ok",
                "steps": result.steps,
                # early_stop ended the run on a plateau before its steps.
                "stopped_early": result.steps < spec.pyramid_steps[-1],
                "loss": {
                    "alpha": spec.loss.alpha,
                    "beta": spec.loss.beta,
                    "tv": spec.loss.tv,
                    "ab_ratio": spec.ab_ratio,
                    "balance": spec.loss.balance,
                    "balance_scale": result.balance_scale,
                },
                "final": result.final_metrics,
                "initial": result.initial_metrics,
                "wall_s": wall,
                "compile_s": result.compile_s,
                "optimize_s": result.optimize_s,
                "sec_per_step": result.sec_per_step,
                "steps_per_s": 1.0 / result.sec_per_step if result.sec_per_step > 0 else None,
                "devices": result.devices,
                "backbone": {
                    "arch": backbone.arch,
                    "pooling": backbone.pooling,
                    "preprocessing": backbone.preprocessing,
                    "conv": backbone.conv,
                    "compute_dtype": backbone.compute_dtype,
                    # As [layer, forward, input gradient]: what compute_dtype=auto chose here.
                    "conv_plan": [list(p) for p in result.conv_plan],
                    **winfo,
                },
                "content": {
                    "path": _describe(spec.content),
                    "original_hw": list(content_raw.shape[:2]),
                    "hw": list(final_inputs.content.shape[:2]),
                },
                "style": {
                    "path": _one_or_list([_describe(x) for x in spec.styles]),
                    "original_hw": _one_or_list([list(x.shape[:2]) for x in styles_raw]),
                    "hw": _one_or_list([list(x.shape[:2]) for x in final_inputs.styles]),
                    "blend": spec.style_blend,
                    "scale": spec.style_scale,
                },
                "color": spec.color,
                "pyramid": sizes,
                "result": result_path,
                "seed": spec.seed,
                "started_at": started_at,
                "finished_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "pid": os.getpid(),
                "job": {"name": job.name, "group": job.group, "overrides": job.overrides},
                "versions": _versions(),
                "config": spec.config,
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
            summary["optimized_metric"] = {
                "name": spec.optimized_metric,
                "value": result.final_metrics.get(spec.optimized_metric),
            }
            if run_dir is not None and spec.animation:
                gif = _write_animation(run_dir, init, result.image)
                writer.write_animation("progress", gif)
                summary["animation"] = str(gif)
            if run_dir is not None:
                images.save_image(result.image, run_dir / "result.png")
            if spec.output is not None:
                _save_output(result.image, spec.output, run_dir)
                summary["output"] = str(Path(spec.output).expanduser().resolve())
            if run_dir is not None:
                # summary.json last: a summary means the run is complete.
                atomic_write_json(run_dir / "summary.json", summary)
                ckpt_path.unlink(missing_ok=True)  # the result supersedes the checkpoint
            exit_code = 0
            if stop.is_set():  # a signal while the result was written: it is complete anyway
                summary["signal"] = int(stop.signum)
        except BaseException as e:
            status = {DivergedError: "diverged", RunInterrupted: "interrupted"}.get(
                type(e), "failed"
            )
            writer.write_summary({"status": status, "error": one_line(e)})
            raise
        finally:
            writer.close(exit_code)
    return {**summary, "image": images.to_uint8(result.image)}


def _save_output(image: np.ndarray, output: str, run_dir: Path | None) -> None:
    """``output=``'s copy of the result; when it cannot be written (checked writable at the
    start, but disks fill up), the line says where the result is kept."""
    try:
        images.save_image(image, Path(output).expanduser())
    except NstError as e:
        if run_dir is None:
            raise
        kept = run_dir / "result.png"
        raise type(e)(f"{one_line(e)}; the result is kept in {kept}") from None


def _write_animation(run_dir: Path, init: np.ndarray, result: np.ndarray) -> Path:
    """progress.gif: the initial image, the snapshots in step order, the result."""
    snaps = sorted((run_dir / "snapshots").glob("step_*.png"))
    frames = [init, *(images.load_image(p) for p in snaps), result]
    return images.save_gif(frames, run_dir / "progress.gif")


def _resume(
    spec: RunSpec, run_dir: Path, ckpt_path: Path
) -> tuple[dict[str, np.ndarray] | None, dict[str, Any] | None]:
    """``resume=true``: the checkpoint to continue from, or the finished run's summary (with its
    image), or neither (nothing to continue: the directory is cleared and the run starts over).
    A run recorded with another result-shaping config is refused before anything changes."""
    summary_path = run_dir / "summary.json"
    try:
        finished = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    except (OSError, ValueError):
        finished = {}
    if finished.get("status") == "ok" and (run_dir / "result.png").exists():
        rundir.check_same_run(
            f"the finished run in {run_dir}", finished.get("config") or {}, spec.config
        )
        done = (finished.get("config") or {}).get("steps")
        if isinstance(done, int) and spec.steps > done:
            raise ConfigError(
                f"resume=true: the run in {run_dir} finished its steps={done} and keeps no "
                f"checkpoint to continue to steps={spec.steps}; run it anew in another directory"
            )
        print(f"nst: {run_dir} already finished; nothing to resume", flush=True)
        image = images.to_uint8(images.load_image(run_dir / "result.png"))
        return None, {**finished, "image": image}
    if ckpt_path.exists():
        arrays, meta = rundir.read_checkpoint(ckpt_path)
        rundir.check_same_run(f"the checkpoint in {run_dir}", meta.get("config") or {}, spec.config)
        step, last = int(arrays["step"]), spec.pyramid_steps[-1]
        if step > last:
            raise ConfigError(
                f"resume=true: the checkpoint in {run_dir} is at step {step}, past steps={last}; "
                f"give steps >= {step} to continue it"
            )
        rundir.truncate_metrics(run_dir / "metrics.jsonl", step)
        print(f"nst: resuming {run_dir} from step {step}", flush=True)
        return arrays, None
    if rundir.previous_files(run_dir):
        print(
            f"nst: nothing to resume in {run_dir} (no checkpoint): starting the run over",
            file=sys.stderr,
            flush=True,
        )
        rundir.clear(run_dir)
    else:
        print(
            f"nst: nothing to resume in {run_dir}: starting a new run", file=sys.stderr, flush=True
        )
    return None, None


def _describe(image: Any) -> str:
    """An input as summary.json records it: the file's path, or what was handed in."""
    if isinstance(image, str | os.PathLike):
        return str(images.resolve_path(str(image)))
    return f"<{type(image).__name__}>"


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
    spec: RunSpec,
    stylize: Callable[..., Any],
    init: np.ndarray,
    params: Any,
    *,
    backbone: Any,
    writer: MetricWriter,
    ckpt_path: Path | None,
    resume_state: Any,
    should_stop: Callable[[], bool],
    sizes: list[int],
    levels: list[Inputs],
    styles_raw: list[np.ndarray],
) -> tuple[Any, Inputs]:
    """Run the optimization, coarse to fine when ``pyramid.levels`` > 1: each level starts from
    the previous level's result upsampled (the optimizer starts afresh: Adam's moments and
    L-BFGS' history belong to the old pixel grid). Snapshots and checkpoints happen in the last
    level (a resumed run recomputes the deterministic coarse levels). In luminance mode the
    result's luminance is put back together with the content's colours."""
    from nst import color

    result, lv = None, None
    offset = 0
    evaluator = _evaluator(spec, levels[-1], styles_raw) if spec.eval_enabled else None
    for k, (size_k, lv) in enumerate(zip(sizes, levels, strict=True)):
        last = k == len(sizes) - 1
        steps = spec.pyramid_steps[k]
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
            loss=spec.loss,
            optimizer=spec.optimizer,
            steps=steps,
            log_every=spec.log_every,
            save_every=spec.save_every if last else 0,
            steps_per_call=spec.steps_per_call,
            writer=w,
            progress=spec.progress,
            checkpoint_path=ckpt_path if last else None,
            checkpoint_every=spec.checkpoint_every if last and ckpt_path is not None else 0,
            checkpoint_meta=rundir.checkpoint_meta(spec.config),
            resume_state=resume_state if last else None,
            should_stop=should_stop,
            early_stop_patience=spec.early_stop_patience,
            early_stop_min_delta=spec.early_stop_min_delta,
            style_blend=spec.style_blend,
            content_mask=lv.content_mask,
            style_masks=lv.style_masks,
            image_metrics=evaluator if last and spec.color != "luminance" else None,
            image_metrics_every=spec.eval_every,
        )
    assert result is not None and lv is not None
    if spec.color == "luminance":
        result.image = color.recombine(result.image, lv.content_rgb)
        if evaluator is not None:  # the recombined colour image is the result to evaluate
            result.final_metrics.update(evaluator(result.image))
    return result, lv


def _evaluator(spec: RunSpec, last: Inputs, styles_raw: list[np.ndarray]) -> Any:
    """The fixed evaluation (nst.evaluate) against the colour content at the result's size and
    the styles at the size the run uses them."""
    from nst.evaluate import make_evaluator

    hw = last.content_rgb.shape[:2]
    _, style_hws = input_hws(spec, hw, [s.shape[:2] for s in styles_raw], max(hw))
    styles = [images.resize_to(s, shw) for s, shw in zip(styles_raw, style_hws, strict=True)]
    return make_evaluator(last.content_rgb, styles, spec.style_blend)


def pyramid_sizes(size: int, levels: int, factor: float) -> list[int]:
    """Longest sides of the coarse-to-fine levels, ending at ``size``."""
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
    spec: RunSpec,
    content_raw: np.ndarray,
    styles_raw: list[np.ndarray],
    size: int,
    masks: tuple[np.ndarray | None, list[np.ndarray | None] | None] = (None, None),
) -> Inputs:
    """Content resized to ``size`` and the styles to the content's longest side times
    ``style_scale`` (the paper resizes the style to the content: scale 1), the masks
    (:func:`load_masks`) fitted to them, then the colour mode."""
    from nst import color

    content_hw, style_hws = input_hws(
        spec, content_raw.shape[:2], [s.shape[:2] for s in styles_raw], size
    )
    content = images.resize_to(content_raw, content_hw)
    styles = [images.resize_to(s, hw) for s, hw in zip(styles_raw, style_hws, strict=True)]
    cmask_raw, smasks_raw = masks
    cmask = None if cmask_raw is None else _fit_mask(cmask_raw, content_hw)
    smasks = None
    if cmask_raw is not None:
        smasks = [
            None if m is None else _fit_mask(m, hw)
            for m, hw in zip(smasks_raw or [None] * len(styles), style_hws, strict=True)
        ]
    if spec.color == "histogram":
        styles = [color.match_histogram(s, content) for s in styles]
        return Inputs(content, styles, content, cmask, smasks)
    if spec.color == "luminance":
        grey = [color.luminance_pair(content, s) for s in styles]
        return Inputs(grey[0][0], [g[1] for g in grey], content, cmask, smasks)
    return Inputs(content, styles, content, cmask, smasks)


def _fit_mask(raw: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A mask image (``(H, W, 3)``, 0..255) as ``hw`` floats in 0..1 (grey level / 255)."""
    return images.resize_to(raw, hw).mean(axis=-1) / 255.0


def _check_mask_aspect(raw: np.ndarray, hw: tuple[int, int], key: str) -> None:
    """A warning when stretching a mask to the ``hw`` image it masks changes its aspect ratio
    by more than 5% (its regions would move)."""
    mh, mw = raw.shape[:2]
    if abs(math.log((mw / mh) / (hw[1] / hw[0]))) > math.log(1.05):
        print(
            f"nst: warning: {key} is {mw}x{mh} px, stretched to the {hw[1]}x{hw[0]} px image it "
            "masks (another aspect ratio: its regions move)",
            file=sys.stderr,
            flush=True,
        )


def load_masks(
    spec: RunSpec, content_hw: tuple[int, int], style_hws: list[tuple[int, int]]
) -> tuple[np.ndarray | None, list[np.ndarray | None] | None]:
    """The mask images, read once for every pyramid level, and their warnings, said once
    (``content_hw``/``style_hws``: the images they mask, at any size)."""
    if spec.content_mask is None:
        return None, None
    smasks: list[np.ndarray | None] = [None] * len(style_hws)
    if spec.style_masks is not None:
        smasks = [
            None if m is None else images.load_any(m, spec.max_pixels) for m in spec.style_masks
        ]
    cmask = images.load_any(spec.content_mask, spec.max_pixels)
    _check_mask_aspect(cmask, content_hw, "content_mask")
    for m, hw in zip(smasks, style_hws, strict=True):
        if m is not None:
            _check_mask_aspect(m, hw, "style_mask")
    grey = [None if m is None else m.mean(axis=-1) / 255.0 for m in smasks]
    _warn_empty_regions(cmask.mean(axis=-1) / 255.0, grey, len(style_hws))
    return cmask, smasks


# A mask region holding no pixel above this grey level (of 1) is empty.
EMPTY_MASK = 1.5 / 255


def _warn_empty_regions(cmask: np.ndarray, smasks: list[np.ndarray | None], n_styles: int) -> None:
    """One warning per style that a mask leaves no pixels: it runs, but that style does
    nothing (the content mask: one style paints its bright part, two styles the dark and the
    bright part; a style mask: the style's statistics come from its bright part)."""
    regions = [("bright", cmask)] if n_styles == 1 else [("dark", 1 - cmask), ("bright", cmask)]
    problems = [
        f"content_mask has no {part} part, so style image {k + 1} applies nowhere"
        for k, (part, region) in enumerate(regions)
        if region.max() < EMPTY_MASK
    ]
    problems += [
        f"style_mask {k + 1} is black everywhere, so style image {k + 1} gives no statistics"
        for k, m in enumerate(smasks)
        if m is not None and m.max() < EMPTY_MASK
    ]
    for problem in problems:
        print(f"nst: warning: {problem}", file=sys.stderr, flush=True)


def _load_backbone(spec: RunSpec) -> tuple[RunSpec, Any, dict[str, Any]]:
    """The backbone's weights, or the fallback run's when they cannot be had (one line)."""
    t0 = time.perf_counter()
    try:
        params, info = get_backbone(spec.backbone.arch).load(spec.weights)
    except WeightsError as e:
        if spec.fallback is None:
            raise
        fb = spec.fallback
        print(
            f"nst: warning: {one_line(e)} -- running on {fb.backbone.arch} ({fb.weights.source} weights) "
            "instead (backbone.fallback)",
            file=sys.stderr,
            flush=True,
        )
        spec = dataclasses.replace(fb, fallback=None)
        params, info = get_backbone(spec.backbone.arch).load(spec.weights)
        info = {**info, "fallback_from": str(e)}
    return spec, params, {**info, "load_s": round(time.perf_counter() - t0, 3)}


def _prepare(spec: RunSpec) -> tuple:
    """Images (checked), the weights (or the fallback's), the levels' inputs (checked) and the
    initial image."""
    _check_paper_images(spec)
    content_raw = images.load_any(spec.content, spec.max_pixels)
    styles_raw = [images.load_any(s, spec.max_pixels) for s in spec.styles]
    spec, params, winfo = _load_backbone(spec)
    style_hws = [s.shape[:2] for s in styles_raw]
    check_size(spec, content_raw.shape[:2], style_hws, spec.size)
    check_memory(spec, content_raw.shape[:2], spec.size, style_hws)
    sizes = pyramid_sizes(spec.size, spec.pyramid_levels, spec.pyramid_scale_factor)
    masks = load_masks(spec, content_raw.shape[:2], style_hws)
    # Every level's inputs once (resizing, colour mode, masks), before any work.
    levels = [level_inputs(spec, content_raw, styles_raw, s, masks) for s in sizes]
    first = levels[0]
    i = spec.init
    init = make_init(
        i.name,
        first.content,
        first.styles[0],
        seed=spec.seed,
        distribution=i.distribution,
        scale=i.scale,
        mix=i.mix,
        path=i.path,
        max_pixels=spec.max_pixels,
    )
    backbone = dataclasses.replace(spec.backbone, preprocessing=winfo["preprocessing"])
    return spec, init, params, winfo, backbone, content_raw, styles_raw, sizes, levels


def _record_divergence(
    d: Diverged, spec: RunSpec, run_dir: Path | None, t0: float
) -> DivergedError:
    """Keep the last finite image and a summary that says diverged (never ok); no result.png."""
    where = "not saved (no run directory)"
    if run_dir is not None:
        images.save_image(d.image, run_dir / "last_finite.png")
        where = str(run_dir / "last_finite.png")
    msg = (
        f"diverged at step {d.step}: the loss or the pixels became non-finite; the last finite "
        f"image is {where} (lower optimizer.lr or the loss weights)"
    )
    if run_dir is not None:
        atomic_write_json(
            run_dir / "summary.json",
            {
                "status": "diverged",
                "step": d.step,
                "error": msg,
                "last": d.metrics,
                "wall_s": time.perf_counter() - t0,
                "seed": spec.seed,
                "versions": _versions(),
                "config": spec.config,
            },
        )
    return DivergedError(msg)


def _check_paper_images(spec: RunSpec) -> None:
    """Paper images missing from images_dir: say how to fetch them (one line), not just 'no file'."""
    from nst.paper_images import missing_images_message

    images_dir = Path(spec.images_dir).expanduser()
    missing = []
    for item in (spec.content, *spec.styles):
        if not isinstance(item, str):
            continue
        p = Path(item).expanduser()
        if p.parent == images_dir and not p.exists():
            missing.append(p.name)
    if missing:
        raise ImageError(missing_images_message(images_dir, dict.fromkeys(missing)))


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
