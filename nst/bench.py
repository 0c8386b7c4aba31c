"""Benchmark suite for the style-transfer step (``scripts/bench.py``, ``nst-bench``).

    nst-bench --sizes 256 512 --backbone vgg16 --steps 10 --compare-torch --out bench.jsonl

Each configuration builds the real step of a run (content relu4_2, style relu1_1..relu5_1, Adam,
pixel clipping; random weights: timing does not depend on their values), compiles it ahead of
time, runs warm-up calls, then times ``--steps`` steps in calls of ``steps_per_call`` steps as a
run does. The configurations of one size (PyTorch's too) are timed in interleaved rounds, one
call of each per round (``--sequential``: each built, timed and released in turn), so that a
machine whose speed drifts cannot favour whichever ran in its faster phase. One JSON line per
measurement (``--out``) and a markdown table on stdout.

FLOPs are analytic: 2·k²·C_in·C_out·H·W per convolution up to the deepest layer, forward plus an
input-gradient backward of the same cost (no weight gradients are needed); Grams, losses and the
optimizer are left out (<1%). ``--compare-torch`` runs the identical step in PyTorch eager
(optional dependency) in the same process right after, as float32, channels_last and bfloat16
autocast (``--torch-variants``), and adds ``jax_over_torch`` against the fastest of them (and
``jax_over_torch_<variant>`` for each).
``--grid N`` times an N-job α/β grid run sequentially and batched (:mod:`nst.batch`), with a
roofline: the most any batching of the same arithmetic could gain on this device.
``--max-size`` finds, from XLA's compiled memory analysis, the largest size whose step fits a
memory budget, with and without ``remat``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from nst import hostmem
from nst.backbones import COMPUTE_DTYPES

# Peak dense FLOP/s of known accelerators (vendor datasheets, dense, no sparsity), for MFU.
PEAK_FLOPS = {
    ("h100", "bfloat16"): 989e12,  # NVIDIA H100 SXM5 datasheet
    ("h100", "float32"): 494e12,  # TF32 tensor cores (XLA's default precision for f32 convs)
    ("h200", "bfloat16"): 989e12,
    ("h200", "float32"): 494e12,
}


def hw_for(size: int) -> tuple[int, int]:
    """A 3:4 landscape frame with ``size`` px on the longest side (as a photo would be)."""
    return (size * 3 // 4, size)


def _direct_conv_flops(arch: str, last_layer: str, h: int, w: int) -> dict[str, int]:
    """FLOPs of one pass (2 per multiply-add) of each convolution up to ``last_layer`` on an
    ``h`` x ``w`` image, direct algorithm, by layer name."""
    from nst.backbones.vgg import conv_shapes, downsampling, layer_names

    names = layer_names(arch)
    stop = names.index(last_layer)
    out = {}
    for name, (kh, kw, cin, cout) in conv_shapes(arch).items():
        if names.index(name) > stop:
            break
        pools = downsampling(arch, name)
        out[name] = 2 * kh * kw * cin * cout * (h >> pools) * (w >> pools)
    return out


def conv_flops(arch: str, last_layer: str, h: int, w: int) -> int:
    """FLOPs of one step on an ``h`` x ``w`` image: every convolution up to ``last_layer``,
    forward and input-gradient backward (2 FLOPs per multiply-add, 2 passes)."""
    return 2 * sum(_direct_conv_flops(arch, last_layer, h, w).values())


# Winograd F(4x4, 3x3) multiplies per 4x4 output tile: 6*6 = 36 against 16*9 = 144 for the
# direct convolution (Lavin & Gray 2016, Sec. 4.2).
WINOGRAD_MULT_FRACTION = 36 / 144
# ... and F(2x2, 3x3), the bf16 form: 16 per 2x2 tile against 4*9.
WINOGRAD_FRACTION = {"winograd": WINOGRAD_MULT_FRACTION, "winograd_bf16": 16 / 36}


def floor_flops(
    arch: str,
    last_layer: str,
    h: int,
    w: int,
    conv: str = "auto",
    plan: Sequence[tuple[str, str, str]] | None = None,
) -> int:
    """The multiply-add FLOPs one step cannot avoid with the convolution algorithms it uses:
    :func:`conv_flops`, with each Winograd layer (per ``plan``, default
    :func:`nst.backbones.vgg.conv_plan`) counted at its GEMMs' share of the direct cost
    (F(4x4,3x3) 36/144, F(2x2,3x3) 16/36) and its transforms, Grams, pooling and the optimizer
    free."""
    import jax

    from nst.backbones.vgg import conv_plan

    if plan is None:
        plan = conv_plan(arch, conv, jax.default_backend())
    impls = {name: (fwd, bwd) for name, fwd, bwd in plan}
    total = 0.0
    for name, direct in _direct_conv_flops(arch, last_layer, h, w).items():
        for impl in impls[name]:  # forward, input gradient
            total += direct * WINOGRAD_FRACTION.get(impl, 1.0)
    return int(total)


def gemm_flops_per_s(n: int = 2048, calls: int = 7, dtype: str = "float32") -> float:
    """The best FLOP/s this device reaches on one large square matrix product (median of
    ``calls``): the rate no kernel of the step can beat, for a roofline."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    # bf16 operands accumulate in float32, as the bf16 convolution products do.
    f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32)).lower(a).compile()
    f(a).block_until_ready()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def _reset_peak_rss() -> None:
    # Free heap kept mapped for an earlier configuration (nst.hostmem) is not this one's.
    hostmem.trim()
    # Writing 5 to clear_refs resets the process's peak RSS (VmHWM) on Linux.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _device_peak(device: Any) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def device_kind() -> tuple[str, str]:
    """(backend, short device name) of JAX's default device, e.g. ("gpu", "h100")."""
    import jax

    d = jax.devices()[0]
    kind = getattr(d, "device_kind", "") or ""
    short = next((k for k in ("h100", "h200", "a100") if k in kind.lower()), kind.lower())
    return jax.default_backend(), short or platform.processor() or "cpu"


def _inputs(size: int, batch: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = hw_for(size)
    rng = np.random.default_rng(0)
    content = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    init = rng.uniform(0, 255, (batch, h, w, 3)).astype(np.float32)
    return content, style, init


def _summary(times: Sequence[float]) -> dict[str, float]:
    t = sorted(times)
    q = lambda p: t[min(len(t) - 1, int(round(p * (len(t) - 1))))]  # noqa: E731
    return {
        "step_s_median": statistics.median(t),
        "step_s_p10": q(0.1),
        "step_s_p90": q(0.9),
        "step_s_min": t[0],
    }


class Prepared(NamedTuple):
    """One configuration ready to time: its row so far, one call (blocking until done), how
    many steps a call runs, and what :func:`_rates` needs besides the times (FLOPs per step,
    images per step, the products' dtype, the device)."""

    row: dict[str, Any]
    call: Callable[[], None]
    steps_per_call: int
    rate: tuple[int, int, str, str] = (0, 1, "float32", "cpu")


def time_interleaved(
    prepared: Sequence[Prepared], calls: Sequence[int], *, interleave: bool = True
) -> list[list[float]]:
    """Seconds per step of ``calls[i]`` calls of each configuration. Interleaved (default): in
    rounds of one call of each configuration that still has calls to make, so that a machine
    whose speed drifts over seconds (shared hosts do, by tens of percent) slows every
    configuration alike and their ratios stay honest; otherwise one after the other."""
    times: list[list[float]] = [[] for _ in prepared]

    def one(i: int) -> None:
        t = time.perf_counter()
        prepared[i].call()
        times[i].append((time.perf_counter() - t) / prepared[i].steps_per_call)

    if interleave:
        for r in range(max(calls, default=0)):
            for i, n in enumerate(calls):
                if r < n:
                    one(i)
    else:
        for i, n in enumerate(calls):
            for _ in range(n):
                one(i)
    return times


def finish(p: Prepared, times: Sequence[float]) -> dict[str, Any]:
    """The row of a timed configuration: medians, spread, rates."""
    row = {**p.row, "steps": len(times) * p.steps_per_call, **_summary(times)}
    row.update(_rates(row, *p.rate))
    return row


def calls_for(steps: int, steps_per_call: int) -> int:
    # At least 5 timed calls, so the spread means something also when calls hold 10 steps.
    return max(5, -(-steps // steps_per_call))


def run_configs(
    builders: Sequence[Callable[[], Prepared]], steps: int, *, interleave: bool = True
) -> list[dict[str, Any]]:
    """Rows of the configurations ``builders`` make, ``steps`` steps each: all built and warmed
    up, then timed in interleaved rounds (:func:`time_interleaved`); or, without ``interleave``,
    each built, timed and released before the next is built."""
    if not interleave:
        rows = []
        for build in builders:
            p = build()
            (times,) = time_interleaved([p], [calls_for(steps, p.steps_per_call)])
            rows.append(finish(p, times))
            del p
        return rows
    prepared = [build() for build in builders]
    times = time_interleaved(prepared, [calls_for(steps, p.steps_per_call) for p in prepared])
    return [finish(p, t) for p, t in zip(prepared, times, strict=True)]


def prepare_jax(
    arch: str,
    size: int,
    *,
    dtype: str = "float32",
    warmup: int = 2,
    remat: bool = False,
    steps_per_call: int = 0,
    batch: int = 0,
    conv: str = "auto",
    compute_dtype: str = "float32",
) -> Prepared:
    """Build, compile and warm up the jitted step of one configuration. ``batch`` > 0: the
    batched grid step (``batch`` images with their own α/β in one program, :mod:`nst.batch`).
    ``compute_dtype`` as ``backbone.compute_dtype`` (``auto`` measures its plan first, outside
    the timings)."""
    import jax

    from nst.backbones import BackboneSpec
    from nst.backbones.vgg import deepest_layer
    from nst.backbones.weights import random_params
    from nst.engine import LossSpec, build, default_steps_per_call
    from nst.optim import OptimizerSpec

    backend, dev = device_kind()
    k = steps_per_call or default_steps_per_call()
    content, style, inits = _inputs(size, max(batch, 1))
    backbone = BackboneSpec(
        arch=arch, dtype=dtype, remat=remat, conv=conv, compute_dtype=compute_dtype
    )
    loss = LossSpec()
    prog = build(
        backbone, loss, OptimizerSpec(), random_params(arch, 0), content, style, batch=batch or None
    )
    params, targets, weights = prog.params, prog.targets, prog.weights()
    box = [prog.init_state(inits if batch else inits[0])]
    update = prog.update_fn(k)
    _reset_peak_rss()
    t0 = time.perf_counter()
    compiled = jax.jit(update, donate_argnums=0).lower(box[0], params, targets, weights).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()

    def call() -> None:
        box[0], _m = compiled(box[0], params, targets, weights)
        jax.block_until_ready(box[0].image)

    for _ in range(warmup):
        call()
    h, w = hw_for(size)
    images_per_step = max(batch, 1)
    flops = conv_flops(arch, deepest_layer(arch, loss.layers), h, w) * images_per_step
    # MFU against the peak of the precision the products run in.
    peak_dtype = "bfloat16" if dtype == "bfloat16" or compute_dtype == "bfloat16" else "float32"
    row: dict[str, Any] = {
        "impl": "jax",
        "backbone": arch,
        "size": size,
        "h": h,
        "w": w,
        "dtype": dtype,
        "remat": remat,
        "conv": conv,
        "compute_dtype": compute_dtype,
        # How many convolution passes (forward, input gradient) ran in each form.
        "plan": _plan_counts(prog.model, prog.params),
        # 0: the unbatched single-image program (the table shows "-"); N: the batched one.
        "batch": batch,
        "backend": backend,
        "device": dev,
        "steps_per_call": k,
        "compile_s": compile_s,
    }
    if mem is not None:
        row["xla_temp_bytes"] = int(mem.temp_size_in_bytes)
        row["xla_total_bytes"] = int(
            mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        )
    if backend == "cpu":
        # The process's peak by the end of this configuration's warm-up (configurations built
        # before it for the same interleaved timing are still loaded).
        row["peak_bytes"] = _peak_rss()
    else:
        # The allocator's peak only grows over the process (one H100 run read 32 GiB for every
        # size), so the step's own need comes from XLA's memory analysis of the executable.
        row["device_peak_bytes"] = _device_peak(jax.devices()[0])
        row["peak_bytes"] = row.get("xla_total_bytes")
    return Prepared(row, call, k, (flops, images_per_step, peak_dtype, dev))


def bench_jax(arch: str, size: int, *, steps: int = 10, **kw: Any) -> dict[str, Any]:
    """Time the jitted step of one configuration (:func:`prepare_jax`'s keywords)."""
    return run_configs([lambda: prepare_jax(arch, size, **kw)], steps)[0]


def _plan_counts(model: Any, params: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, fwd, bwd in getattr(model, "conv_plan", ()) or ():
        if name not in params:
            continue  # beyond the deepest layer the loss reads
        for impl in (fwd, bwd):
            counts[impl] = counts.get(impl, 0) + 1
    return counts


def _rates(row: dict, flops: int, images: int, dtype: str, dev: str) -> dict[str, Any]:
    med = row["step_s_median"]
    out: dict[str, Any] = {
        "steps_per_s": 1.0 / med,
        "mpix_steps_per_s": images * row["h"] * row["w"] / 1e6 / med,
        "flops_per_step": flops,
        "flops_per_s": flops / med,
    }
    peak = PEAK_FLOPS.get((dev, dtype))
    out["mfu"] = flops / med / peak if peak else None
    return out


TORCH_VARIANTS = ("f32", "channels_last", "bf16_autocast")


def prepare_torch(
    arch: str,
    size: int,
    *,
    warmup: int = 2,
    device: str = "cpu",
    variant: str = "f32",
) -> Prepared:
    """The identical step in PyTorch eager: same random weights, Caffe preprocessing, relu4_2
    content + relu{1..5}_1 style with Gram/(C·H·W) and mean squared errors, β=1e3, Adam lr 5,
    clamp to 0..255. ``variant``: ``f32``; ``channels_last`` (NHWC tensors, what oneDNN/cuDNN
    prefer); ``bf16_autocast`` (``torch.autocast`` to bfloat16 for the network; Grams, losses,
    Adam and the image in float32), the configuration a PyTorch user with bf16 units picks.
    On CUDA cuDNN autotuning and channels_last are always on."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from nst.backbones.vgg import CAFFE_MEAN_BGR, conv_shapes, layer_names
    from nst.backbones.weights import random_params

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    if variant not in TORCH_VARIANTS:
        raise ValueError(f"unknown torch variant {variant!r}; valid: {', '.join(TORCH_VARIANTS)}")
    last_fmt = cuda or variant != "f32"
    fmt = torch.channels_last if last_fmt else torch.contiguous_format

    def autocast():
        if variant != "bf16_autocast":
            return contextlib.nullcontext()
        return torch.autocast(dev.type, dtype=torch.bfloat16)

    params = random_params(arch, 0)
    names = layer_names(arch)
    last = names.index("relu5_1")
    w = {
        n: (
            torch.from_numpy(np.ascontiguousarray(params[n]["kernel"].transpose(3, 2, 0, 1)))
            .to(dev)
            .contiguous(memory_format=fmt),
            torch.from_numpy(np.asarray(params[n]["bias"])).to(dev),
        )
        for n in conv_shapes(arch)
    }
    mean = torch.tensor(CAFFE_MEAN_BGR, device=dev).view(1, 3, 1, 1)
    style_layers = [f"relu{b}_1" for b in range(1, 6)]

    def feats(x):  # x: (1, 3, H, W) RGB 0..255
        x = x.flip(1) - mean
        out = {}
        for n in names[: last + 1]:
            if n.startswith("conv"):
                x = F.conv2d(x, *w[n], padding=1)
            elif n.startswith("relu"):
                x = F.relu(x)
            else:
                x = F.max_pool2d(x, 2)
            out[n] = x
        return out

    def gram(f):
        _, c, h, ww = f.shape
        f = f.float().reshape(c, h * ww)  # Grams in float32, also under autocast
        return f @ f.t() / (c * h * ww)

    content, style, inits = _inputs(size)
    to = lambda a: (  # noqa: E731
        torch.from_numpy(a.transpose(2, 0, 1)[None].copy()).to(dev).contiguous(memory_format=fmt)
    )
    with torch.no_grad():
        p = feats(to(content))["relu4_2"]
        fs = feats(to(style))
        targets = {n: gram(fs[n]) for n in style_layers}
    img = to(inits[0]).requires_grad_(True)
    opt = torch.optim.Adam([img], lr=5.0)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            f = feats(img)
        c = torch.mean((f["relu4_2"].float() - p) ** 2)
        s = sum(0.2 * torch.mean((gram(f[n]) - targets[n]) ** 2) for n in style_layers)
        (c + 1e3 * s).backward()
        opt.step()
        with torch.no_grad():
            img.clamp_(0, 255)

    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def call() -> None:
        step()
        sync()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    for _ in range(warmup):
        call()
    h, ww = hw_for(size)
    dtype = "bfloat16" if variant == "bf16_autocast" else "float32"
    dev_name = device_kind()[1] if cuda else "cpu"
    row = {
        "impl": "torch",
        "torch_variant": variant,
        "backbone": arch,
        "size": size,
        "h": h,
        "w": ww,
        "dtype": dtype,
        "remat": False,
        "conv": f"{'cudnn' if cuda else 'onednn'} {variant}",
        "batch": 0,
        "backend": dev.type,
        "device": dev_name,
        "steps_per_call": 1,
        "compile_s": 0.0,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else _peak_rss(),
    }
    return Prepared(row, call, 1, (conv_flops(arch, "relu5_1", h, ww), 1, dtype, dev_name))


def bench_torch(arch: str, size: int, *, steps: int = 10, **kw: Any) -> dict[str, Any]:
    """Time the PyTorch step of one configuration (:func:`prepare_torch`'s keywords)."""
    return run_configs([lambda: prepare_torch(arch, size, **kw)], steps)[0]


# Where ``--max-size``'s search starts: the smallest size it reports.
MAX_SIZE_FROM = 256


def max_size(
    arch: str, budget_bytes: int, *, remat: bool, lo: int = MAX_SIZE_FROM, hi: int = 8192
) -> int:
    """Largest size (multiple of 64 px, longest side, 3:4) whose compiled step needs at most
    ``budget_bytes`` according to XLA's memory analysis (temporaries + arguments + outputs);
    0 when not even ``lo`` fits."""
    import jax

    from nst.backbones import BackboneSpec
    from nst.backbones.weights import random_params
    from nst.engine import LossSpec, State, build
    from nst.optim import OptimizerSpec

    loss = LossSpec()
    raw = random_params(arch, 0)
    # The step is lowered on abstract images and targets per size, never run.
    prog = build(BackboneSpec(arch=arch, remat=remat), loss, OptimizerSpec(), raw, targets={})
    model, tx, update, params = prog.model, prog.tx, prog.update_fn(), prog.params

    def need(size: int) -> int:
        h, w = hw_for(size)
        sds = jax.ShapeDtypeStruct
        img = sds((h, w, 3), np.float32)
        state = jax.eval_shape(lambda x: State(x, tx.init(x), np.int32(0)), img)
        p = jax.tree.map(lambda a: sds(a.shape, np.float32), params)
        feats = jax.eval_shape(lambda p, x: model.apply({"params": p}, x[None]), raw, img)
        targets = {
            "content": {k: feats[k] for k in loss.content_layers},
            "style": {k: sds((feats[k].shape[-1],) * 2, np.float32) for k in loss.style_layers},
        }
        weights = jax.tree.map(lambda a: sds((), np.float32), loss.weights())
        m = jax.jit(update, donate_argnums=0).lower(state, p, targets, weights).compile()
        a = m.memory_analysis()
        return int(a.temp_size_in_bytes + a.argument_size_in_bytes + a.output_size_in_bytes)

    first = lo_ok = lo
    while lo < hi:  # binary search on multiples of 64
        mid = (lo + hi + 64) // 128 * 64
        if mid <= lo:
            break
        if need(mid) <= budget_bytes:
            lo = lo_ok = mid
        else:
            hi = mid - 64
    # Nothing above ``lo`` fitted: ``lo`` itself was never measured.
    if lo_ok == first and need(first) > budget_bytes:
        return 0
    return lo_ok


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of benchmark rows (batch ``-``: the unbatched single-image program, the
    rows' ``"batch": 0``)."""
    head = (
        "| impl | backbone | size (HxW) | dtype | remat | batch | device | conv (compute) | compile s "
        "| step ms (p10-p90) | steps/s | MPix·steps/s | GFLOP/step | TFLOP/s | MFU | peak MiB "
        "| jax/torch |"
    )
    lines = [head, "|" + "---|" * 17]
    for r in rows:
        mfu = f"{100 * r['mfu']:.0f}%" if r.get("mfu") else "-"
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") else "-"
        ratio = f"{r['jax_over_torch']:.2f}" if r.get("jax_over_torch") else "-"
        lines.append(
            f"| {r['impl']} | {r['backbone']} | {r['h']}x{r['w']} | {r['dtype']} | "
            f"{'yes' if r['remat'] else 'no'} | {r['batch'] or '-'} | "
            f"{r['backend']}:{r['device']} | {_conv_label(r)} | {r['compile_s']:.1f} | {1e3 * r['step_s_median']:.1f} "
            f"({1e3 * r['step_s_p10']:.1f}-{1e3 * r['step_s_p90']:.1f}) | "
            f"{r['steps_per_s']:.2f} | {r['mpix_steps_per_s']:.3f} | "
            f"{r['flops_per_step'] / 1e9:.1f} | {r['flops_per_s'] / 1e12:.3f} | {mfu} | {peak} "
            f"| {ratio} |"
        )
    return "\n".join(lines)


def default_compute_dtypes(backend: str, bf16_units: Sequence[str]) -> list[str]:
    """What ``nst-bench`` times without ``--compute-dtype``: the float32 plan, and where the CPU
    has bf16 units the measured one (``auto``; elsewhere it is the float32 plan again)."""
    return ["float32", "auto"] if backend == "cpu" and bf16_units else ["float32"]


def verdict_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per network and size timed against PyTorch: the fastest nst configuration over the
    fastest PyTorch one, the comparison a user choosing between them makes."""
    lines = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("impl") in ("jax", "torch") and not r.get("batch"):
            groups.setdefault((r["backbone"], r["h"], r["w"]), []).append(r)
    for (arch, h, w), rs in groups.items():
        nst_rows = [r for r in rs if r["impl"] == "jax"]
        torch_rows = [r for r in rs if r["impl"] == "torch"]
        if not nst_rows or not torch_rows:
            continue
        a = min(nst_rows, key=lambda r: r["step_s_median"])
        t = min(torch_rows, key=lambda r: r["step_s_median"])
        lines.append(
            f"{arch} {h}x{w}: fastest nst {_conv_label(a)} {1e3 * a['step_s_median']:.0f} ms / "
            f"fastest PyTorch {t['torch_variant']} {1e3 * t['step_s_median']:.0f} ms = "
            f"{a['step_s_median'] / t['step_s_median']:.2f}"
        )
    return lines


def roofline_line() -> str:
    """The CPU's matrix rates, measured now: float32 and bf16 operands with float32 accumulation
    (what the bf16 convolution products run at), and which bf16 units the CPU has."""
    from nst.backbones import tune

    f32 = gemm_flops_per_s(dtype="float32")
    bf16 = gemm_flops_per_s(dtype="bfloat16")
    units = ", ".join(tune.bf16_units()) or "no bf16 units"
    return (
        f"roofline ({tune.cpu_name()}, {units}): 2048^2 GEMM float32 {f32 / 1e9:.0f} GFLOP/s, "
        f"bf16 operands / f32 accumulation {bf16 / 1e9:.0f} GFLOP/s ({bf16 / f32:.2f}x)"
    )


def _conv_label(r: dict[str, Any]) -> str:
    if r.get("impl") == "torch" or "conv" not in r:  # PyTorch rows: oneDNN/cuDNN and the variant
        return r.get("conv", r.get("torch_variant", "-"))
    plan = r.get("plan") or {}
    bf16 = sum(n for impl, n in plan.items() if impl.endswith("_bf16"))
    compute = r.get("compute_dtype", "float32")
    mix = f", {bf16}/{sum(plan.values())} bf16" if compute == "auto" and plan else ""
    return f"{r['conv']} ({compute}{mix})"


def conv_forms(backend: str) -> tuple[str, ...]:
    """The convolution forms ``--conv-layers`` times: on the CPU the float32 ones and their bf16
    forms (what ``compute_dtype=auto`` chooses between), elsewhere XLA's in both precisions."""
    if backend == "cpu":
        return ("xla", "winograd", "winograd_bf16", "im2col_bf16")
    return ("xla", "xla_bf16")


def conv_layer_bench(
    arch: str, size: int, steps: int = 10, layers: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Every convolution of ``arch`` (or of ``layers``) at its resolution for a ``size`` px
    image, forward and input-gradient (a C_out -> C_in convolution), in each of
    :func:`conv_forms`, each compiled alone and timed in interleaved rounds (fastest of ``steps``
    calls): the measurements behind :data:`nst.backbones.vgg.WINOGRAD_MIN_CHANNELS` and the
    forms ``compute_dtype=auto`` picks from."""
    from nst.backbones import tune, vgg

    backend, dev = device_kind()
    h, w = hw_for(size)
    plan = {n: (f, b) for n, f, b in vgg.conv_plan(arch, "auto", backend)}
    forms = conv_forms(backend)
    rows = []
    for name, (_, _, cin, cout) in vgg.conv_shapes(arch).items():
        if layers is not None and name not in layers:
            continue
        s = 2 ** vgg.downsampling(arch, name)
        for direction, (ci, co) in (("forward", (cin, cout)), ("input-gradient", (cout, cin))):
            row: dict[str, Any] = {
                "impl": "conv",
                "backbone": arch,
                "size": size,
                "layer": name,
                "direction": direction,
                "h": h // s,
                "w": w // s,
                "c_in": ci,
                "c_out": co,
                "flops": 2 * 9 * ci * co * (h // s) * (w // s),
                "float32_plan": plan[name][0 if direction == "forward" else 1],
            }
            for impl, t in tune.time_convs(forms, (h // s, w // s, ci, co), max(steps, 3)).items():
                row[f"{impl}_ms"] = 1e3 * t
            row["fastest"] = min(forms, key=lambda i: row[f"{i}_ms"])
            if "winograd" in forms:
                row["winograd_speedup"] = row["xla_ms"] / row["winograd_ms"]
            rows.append(row)
    return rows


def conv_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`conv_layer_bench` rows."""
    forms = [k[: -len("_ms")] for k in rows[0] if k.endswith("_ms")] if rows else []
    lines = [
        "| layer | direction | HxW | C_in->C_out | "
        + " | ".join(f"{f} ms" for f in forms)
        + " | fastest | float32 plan |",
        "|" + "---|" * (6 + len(forms)),
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['direction']} | {r['h']}x{r['w']} | {r['c_in']}->{r['c_out']} | "
            + " | ".join(f"{r[f + '_ms']:.2f}" for f in forms)
            + f" | {r['fastest']} | {r['float32_plan']} |"
        )
    return "\n".join(lines)


def grid_bench(
    arch: str, size: int, jobs: int, steps: int, warmup: int, *, interleave: bool = True
) -> dict[str, Any]:
    """A ``jobs``-job α/β grid: the sequential per-job step time x jobs vs one batched step.

    With it a roofline for batching: every job has its own image, so a batch of B does B times
    one image's arithmetic. If all of it ran at this device's large-GEMM rate and everything
    else were free, one image-step would take ``floor_s_per_image_step``; no batching of the
    same algorithms can beat ``sequential step / floor`` (``batched_throughput_ceiling``)."""
    from nst.backbones.vgg import deepest_layer
    from nst.loss_spec import LossSpec

    seq, bat = run_configs(
        [
            lambda: prepare_jax(arch, size, warmup=warmup),
            lambda: prepare_jax(arch, size, warmup=warmup, batch=jobs),
        ],
        steps,
        interleave=interleave,
    )
    h, w = hw_for(size)
    floor = floor_flops(arch, deepest_layer(arch, LossSpec().layers), h, w)
    gemm = gemm_flops_per_s()
    return {
        "floor_flops_per_image_step": floor,
        "gemm_flops_per_s": gemm,
        "floor_s_per_image_step": floor / gemm,
        "batched_throughput_ceiling": seq["step_s_median"] / (floor / gemm),
        "impl": "grid",
        "backbone": arch,
        "size": size,
        "jobs": jobs,
        "sequential_s_per_grid_step": seq["step_s_median"] * jobs,
        "batched_s_per_grid_step": bat["step_s_median"],
        "batched_over_sequential_throughput": seq["step_s_median"] * jobs / bat["step_s_median"],
        "sequential": seq,
        "batched": bat,
    }


def _int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    """argparse ``type``: an integer >= 1."""
    n = _int_arg(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {n}")
    return n


def non_negative_int(text: str) -> int:
    """argparse ``type``: an integer >= 0."""
    n = _int_arg(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {n}")
    return n


def grid_jobs(text: str) -> int:
    """argparse ``type`` of ``--grid``: 0 (off) or a grid of at least 2 jobs."""
    n = _int_arg(text)
    if n != 0 and n < 2:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or at least 2 jobs, not {n}")
    return n


def non_negative_float(text: str) -> float:
    """argparse ``type``: a finite number >= 0."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(x) or x < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text}")
    return x


def min_size(arch: str) -> tuple[int, str]:
    """The smallest ``--sizes`` value whose frame (:func:`hw_for`) leaves the deepest layer the
    loss reads at least one position after its poolings (``nst`` refuses smaller images), and
    that layer."""
    from nst.backbones import get_backbone
    from nst.loss_spec import LossSpec

    backbone = get_backbone(arch)
    deepest = backbone.deepest_layer(LossSpec().layers)
    size = 1
    while min(backbone.layer_size(deepest, *hw_for(size))) < 1:
        size += 1
    return size, deepest


def check_out(path: Path) -> str | None:
    """Why JSON lines cannot be appended to ``path``, or None: checked by opening it for
    appending (what the run does later; file permissions alone miss read-only file systems and
    /proc), and removing it again if that created it."""
    if path.is_dir():
        return f"--out {path} is a directory; give a file to append JSON lines to"
    if not path.parent.is_dir():
        return f"--out {path}: directory {path.parent} does not exist"
    existed = path.exists()
    try:
        with path.open("a"):
            pass
    except OSError as e:
        return f"--out {path} cannot be appended to: {e.strerror or e}"
    if not existed:
        path.unlink(missing_ok=True)
    return None


def _check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Errors argparse's ``type=`` cannot see (they involve several arguments or the file
    system), as ``ap.error``: before any JAX work."""
    per_size = [
        flag
        for flag, on in (
            ("--grid", args.grid),
            ("--conv-layers", args.conv_layers),
            ("--compare-torch", args.compare_torch),
        )
        if on
    ]
    if not args.sizes:
        if per_size:
            verb = "runs" if len(per_size) == 1 else "run"
            ap.error(f"{', '.join(per_size)} {verb} at each of --sizes: give at least one size")
        if not args.max_size:
            ap.error("nothing to do: --sizes is empty and --max-size is off")
    for arch in args.backbone:
        smallest, layer = min_size(arch)
        for size in args.sizes:
            if size < smallest:
                h, w = hw_for(size)
                ap.error(
                    f"argument --sizes: {size} px is a {h}x{w} frame, too small for {arch} "
                    f"{layer} (the deepest layer the loss reads); use {smallest} or more"
                )
    if args.out is not None and (problem := check_out(args.out)):
        ap.error(problem)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nst-bench", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes",
        type=positive_int,
        nargs="*",
        default=[128, 256, 512, 1024],
        help="longest sides to time, px (3:4 frames; --grid and --conv-layers use them too; "
        "none: only --max-size runs)",
    )
    ap.add_argument("--backbone", nargs="+", default=["vgg16"], choices=["vgg16", "vgg19"])
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    ap.add_argument(
        "--steps",
        type=positive_int,
        default=10,
        help="timed steps per configuration, in whole calls of --steps-per-call and at least 5 "
        "calls (the JSON's steps is the number timed); 10 or more calls keep p10/p90 off the "
        "fastest and slowest call",
    )
    ap.add_argument(
        "--warmup", type=non_negative_int, default=2, help="untimed calls after compiling"
    )
    ap.add_argument(
        "--steps-per-call",
        type=non_negative_int,
        default=0,
        help="steps per jitted call (0: the engine's default, 1 on CPU, 10 elsewhere)",
    )
    ap.add_argument("--remat", choices=["no", "yes", "both"], default="no")
    ap.add_argument(
        "--conv",
        nargs="+",
        default=["auto"],
        choices=["auto", "xla", "winograd"],
        help="convolution implementations to time (backbone.conv)",
    )
    ap.add_argument(
        "--compute-dtype",
        nargs="+",
        default=None,
        choices=list(COMPUTE_DTYPES),
        help="precision of the convolution products to time (backbone.compute_dtype; default: "
        "float32, and auto too on a CPU with bf16 units)",
    )
    ap.add_argument(
        "--conv-layers",
        action="store_true",
        help="also time every convolution alone, forward and input-gradient, in each form "
        "(CPU: xla, winograd and their bf16 forms)",
    )
    ap.add_argument("--compare-torch", action="store_true", help="also time PyTorch eager")
    ap.add_argument(
        "--torch-variants",
        nargs="+",
        default=list(TORCH_VARIANTS),
        choices=TORCH_VARIANTS,
        help="PyTorch configurations to time; jax_over_torch is against the fastest",
    )
    ap.add_argument(
        "--sequential",
        action="store_true",
        help="build, time and release one configuration after the other (default: all of a size "
        "built first, then timed in interleaved rounds, one call of each per round, so that "
        "drift of the machine's speed hits all alike; peak MiB then includes those built before)",
    )
    ap.add_argument(
        "--grid",
        type=grid_jobs,
        default=0,
        help="also time an N-job batched grid at each size (N >= 2; 0: off)",
    )
    ap.add_argument(
        "--max-size",
        type=non_negative_float,
        default=0,
        help="budget GiB: largest size that fits (0: off)",
    )
    ap.add_argument("--out", type=Path, help="append JSON lines here")
    args = ap.parse_args(argv)
    _check_args(ap, args)

    # As `nst` does: time the step the way real runs execute it. Before JAX starts its threads,
    # after the checks (a refused command leaves the calling process's allocator alone).
    hostmem.tune_malloc()
    import jax

    from nst.backbones import tune
    from nst.devices import check_backend
    from nst.errors import NstError

    try:
        check_backend()  # the backends start here: JAX_PLATFORMS may name a missing device
    except NstError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    backend, dev = device_kind()
    flags = tune.cpu_flags()
    meta = {
        "jax": jax.__version__,
        "backend": backend,
        "device": dev,
        "host": platform.node(),
        # Which CPU: results move with it more than with anything else on this list.
        "cpu": tune.cpu_name(),
        "cpu_isa": next((f for f in ("avx512f", "avx2") if f in flags), "other"),
        "cpu_bf16": ",".join(tune.bf16_units(flags)),
        "cpus": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    rows: list[dict[str, Any]] = []
    out = args.out.open("a") if args.out else None

    def emit(row: dict[str, Any]) -> None:
        row = {**row, **{f"meta_{k}": v for k, v in meta.items()}}
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}), flush=True)

    remats = {"no": [False], "yes": [True], "both": [False, True]}[args.remat]
    computes = args.compute_dtype or default_compute_dtypes(backend, tune.bf16_units(flags))
    torch_device = "cuda" if backend == "gpu" else "cpu"
    for arch in args.backbone:
        for size in args.sizes:
            builders: list[Callable[[], Prepared]] = [
                functools.partial(
                    prepare_jax,
                    arch,
                    size,
                    dtype=dtype,
                    warmup=args.warmup,
                    remat=remat,
                    steps_per_call=args.steps_per_call,
                    conv=conv,
                    compute_dtype=compute,
                )
                for dtype in args.dtype
                for remat in remats
                for conv in args.conv
                for compute in computes
            ]
            n_jax = len(builders)
            if args.compare_torch:
                builders += [
                    functools.partial(
                        prepare_torch,
                        arch,
                        size,
                        warmup=args.warmup,
                        device=torch_device,
                        variant=v,
                    )
                    for v in args.torch_variants
                ]
            done = run_configs(builders, args.steps, interleave=not args.sequential)
            jax_rows, torch_rows = done[:n_jax], done[n_jax:]
            if torch_rows:
                fastest = min(torch_rows, key=lambda t: t["step_s_median"])
                for r in jax_rows:
                    # Against the fastest PyTorch configuration, and each one by name.
                    r["jax_over_torch"] = r["step_s_median"] / fastest["step_s_median"]
                    r["torch_fastest"] = fastest["torch_variant"]
                    for t in torch_rows:
                        r[f"jax_over_torch_{t['torch_variant']}"] = (
                            r["step_s_median"] / t["step_s_median"]
                        )
            rows += done
            for r in done:
                emit(r)
    grid_rows = []
    if args.grid:
        for arch in args.backbone:
            for size in args.sizes:
                g = grid_bench(
                    arch, size, args.grid, args.steps, args.warmup, interleave=not args.sequential
                )
                grid_rows.append(g)
                emit(g)
    conv_rows = []
    if args.conv_layers:
        for arch in args.backbone:
            for size in args.sizes:
                for r in conv_layer_bench(arch, size, args.steps):
                    conv_rows.append(r)
                    emit(r)
    size_rows = []
    if args.max_size:
        budget = int(args.max_size * 2**30)
        for arch in args.backbone:
            for remat in (False, True):
                s = max_size(arch, budget, remat=remat)
                h, w = hw_for(s)
                r = {
                    "impl": "max_size",
                    "backbone": arch,
                    "remat": remat,
                    "budget_gib": args.max_size,
                    "size": s,
                    "h": h,
                    "w": w,
                    "pixels": h * w,
                }
                if remat:
                    base = size_rows[-1]["pixels"]
                    r["remat_pixel_gain"] = r["pixels"] / base if base else None
                size_rows.append(r)
                emit(r)
    if out:
        out.close()

    print()
    print(table(rows))
    verdicts = verdict_lines(rows)
    if verdicts:
        print("\n" + "\n".join(verdicts))
    if rows and backend == "cpu":
        print("\n" + roofline_line())
    if conv_rows:
        print()
        print(conv_table(conv_rows))
    for g in grid_rows:
        print(
            f"\ngrid {g['backbone']} {g['size']} px, {g['jobs']} jobs: sequential "
            f"{g['sequential_s_per_grid_step']:.2f} s vs batched {g['batched_s_per_grid_step']:.2f} s "
            f"per grid step -> {g['batched_over_sequential_throughput']:.2f}x throughput; "
            f"roofline: {g['floor_flops_per_image_step'] / 1e9:.1f} GFLOP per image-step at "
            f"{g['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s (large GEMM) = "
            f"{g['floor_s_per_image_step'] * 1e3:.0f} ms, so no batching beats "
            f"{g['batched_throughput_ceiling']:.2f}x"
        )
    for r in size_rows:
        if not r["size"]:
            print(
                f"\nno {r['backbone']} step fits within {r['budget_gib']} GiB, "
                f"remat={r['remat']}: even {MAX_SIZE_FROM} px needs more"
            )
            continue
        gain = r.get("remat_pixel_gain")
        print(
            f"\nlargest {r['backbone']} step within {r['budget_gib']} GiB, remat={r['remat']}: "
            f"{r['h']}x{r['w']} ({r['pixels'] / 1e6:.2f} MPix)"
            + (f", {gain:.2f}x the pixels of remat=False" if gain else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
