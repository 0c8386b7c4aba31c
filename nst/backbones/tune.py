"""``backbone.compute_dtype=auto``: the conv plan that measures fastest on this machine at the
run's image size, from forms timed per convolution and direction.

Which form wins depends on the CPU more than on anything a rule could state: bf16 GEMMs run ~1.8x
the f32 rate with AVX512-BF16 and ~5x with AMX, while the transforms and gathers around them cost
the same, so the balance moves with the channel count and the size. Each candidate is compiled
alone at the layer's shape and timed (forward convolutions and input-gradient ones are both
convolutions: a layer's backward pass is timed as the flipped kernel's forward). Results are
cached per CPU model, JAX version, network and size (``$NST_CACHE_DIR/conv-plans.json``), so only
the first run at a size pays for it. Layers timed alone do not add up exactly to a network
(fusion, caches), so three whole networks' forward and input gradient are timed, the float32
plan, the per-layer choice and every layer in its bf16 form, and the fastest is kept if it beats
float32 by ``MARGIN``. Without bf16 units the float32 plan is used unmeasured: nothing can get
slower there.

Whole networks are compared in interleaved rounds, and every time is the fastest of its calls: on
a shared host the speed drifts by tens of percent over seconds, and interference only ever adds
time, so back-to-back medians can rank two plans by whichever ran in the slower phase.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

CACHE_FILE = "conv-plans.json"
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# Another plan replaces the float32 one only when it is this much faster as a whole network:
# closer than that is within the timing noise, and float32 products are the exact ones.
MARGIN = 0.03
# Part of the cache key: plans measured with earlier implementations of the forms are stale.
FORMS_VERSION = 2


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bf16_units(flags: Iterable[str] | None = None) -> list[str]:
    """The CPU's bf16 matrix features (``amx_bf16``, ``avx512_bf16``) present."""
    have = cpu_flags() if flags is None else set(flags)
    return [f for f in BF16_FLAGS if f in have]


def candidates(conv: str) -> tuple[str, ...]:
    """What ``backbone.conv`` allows each layer to run as, in float32 and bf16."""
    return {
        "auto": ("xla", "winograd", "winograd_bf16", "im2col_bf16"),
        "xla": ("xla", "im2col_bf16"),
        "winograd": ("winograd", "winograd_bf16"),
    }[conv]


def _fastest_interleaved(calls: Sequence[Callable[[], object]], reps: int) -> list[float]:
    """Seconds of the fastest of ``reps`` calls of each callable (each blocks until done),
    called in rounds of one call each: a drifting machine slows them alike."""
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(reps):
        for call, ts in zip(calls, times, strict=True):
            t0 = time.perf_counter()
            call()
            ts.append(time.perf_counter() - t0)
    return [min(ts) for ts in times]


def time_convs(
    impls: Sequence[str], shape: tuple[int, int, int, int], reps: int = 5
) -> dict[str, float]:
    """For each of ``impls``, seconds of the fastest of ``reps`` calls of one convolution of a
    ``(1, h, w, cin)`` input to ``cout`` channels (``shape = (h, w, cin, cout)``), each form
    compiled alone and warmed up, then timed in interleaved rounds."""
    import jax
    import jax.numpy as jnp

    from nst.backbones.vgg_net import conv_impl, kernel_for

    h, w, cin, cout = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (1, h, w, cin)), jnp.float32)
    k = rng.normal(0, 1 / np.sqrt(9 * cin), (3, 3, cin, cout)).astype(np.float32)
    calls = []
    for impl in impls:
        wt = jax.device_put(kernel_for(impl, k))
        fn = jax.jit(lambda a, b, impl=impl: conv_impl(impl, a, b)).lower(x, wt).compile()
        jax.block_until_ready(fn(x, wt))
        calls.append(lambda fn=fn, wt=wt: jax.block_until_ready(fn(x, wt)))
    return dict(zip(impls, _fastest_interleaved(calls, reps), strict=True))


def time_conv(impl: str, shape: tuple[int, int, int, int], reps: int = 5) -> float:
    """:func:`time_convs` of one form."""
    return time_convs([impl], shape, reps)[impl]


def time_networks(
    arch: str,
    plans: Sequence[Sequence[tuple[str, str, str]]],
    hw: tuple[int, int],
    last_layer: str,
    reps: int = 5,
) -> list[float]:
    """For each plan, seconds of the fastest of ``reps`` calls of the network's forward pass to
    ``last_layer`` and the input gradient of a loss on it, on one ``hw`` image (random weights:
    timing does not depend on their values). All plans are compiled and warmed up first, then
    timed in ``reps`` rounds of one call each, so a drifting machine slows them alike."""
    import jax
    import jax.numpy as jnp

    from nst.backbones.vgg_net import apply_vgg, prepare_params
    from nst.backbones.weights import random_params

    raw = jax.device_put(random_params(arch, 0))
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, *hw, 3)), jnp.float32)
    runs = []
    for plan in plans:
        # The weights are arguments, as in a run's step: captured, they would be compiled in as
        # constants (a copy per plan, and slower compiles).
        params = jax.device_put(prepare_params(raw, plan))

        def loss(x: jnp.ndarray, params: dict, plan=tuple(plan)) -> jnp.ndarray:
            feats = apply_vgg(params, x, arch=arch, last_layer=last_layer, conv_plan=plan)
            return jnp.mean(feats[last_layer] ** 2)

        fn = jax.jit(jax.grad(loss)).lower(x, params).compile()
        jax.block_until_ready(fn(x, params))
        runs.append(lambda fn=fn, params=params: jax.block_until_ready(fn(x, params)))
    return _fastest_interleaved(runs, reps)


def _key(arch: str, conv: str, hw: tuple[int, int], last_layer: str, options: Sequence[str]) -> str:
    """What decides which form is fastest: the CPU (model, bf16 units, cores this process may
    use), the software (JAX, nst, XLA flags) and the problem (network, size, allowed forms)."""
    import jax

    import nst

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 0
    return "|".join(
        [
            cpu_name(),
            ",".join(bf16_units()),
            f"{cores} cores",
            f"jax {jax.__version__}",
            f"nst {nst.__version__} forms {FORMS_VERSION}",
            os.environ.get("XLA_FLAGS", ""),
            arch,
            conv,
            f"{hw[0]}x{hw[1]}",
            last_layer,
            ",".join(options),
        ]
    )


def _valid(entry: object, names: Sequence[str]) -> bool:
    """A cached plan that fits this network (a hand-edited or stale file is measured again)."""
    from nst.backbones.vgg import CONV_IMPLS

    return (
        isinstance(entry, list)
        and [p[0] if isinstance(p, list) and len(p) == 3 else None for p in entry] == list(names)
        and all(i in CONV_IMPLS for p in entry for i in p[1:])
    )


def tuned_plan(
    arch: str,
    conv: str,
    hw: tuple[int, int],
    last_layer: str,
    *,
    options: Sequence[str] | None = None,
    reps: int = 5,
    cache: Path | None = None,
) -> tuple[tuple[str, str, str], ...]:
    """The plan (:func:`nst.backbones.vgg.conv_plan`'s form) for an ``hw`` image up to
    ``last_layer``, measured here or read from ``cache`` (default: the nst cache directory; a
    file that cannot be written just is not): each convolution and direction is timed in every
    form of ``options`` (default: :func:`candidates` of ``conv``), then the fastest of three
    whole networks is kept, float32, each layer in its fastest form, every layer in its bf16
    form, unless it beats float32 by less than ``MARGIN``."""
    from nst.backbones.vgg import conv_plan, conv_shapes, downsampling, image_layer, layer_names

    options = tuple(options or candidates(conv))
    key = _key(arch, conv, hw, last_layer, options)
    if cache is None:
        from nst.files import cache_root

        cache = cache_root() / CACHE_FILE
    names = layer_names(arch)
    stop = names.index(last_layer)
    shapes = {}
    for name, (_, _, cin, cout) in conv_shapes(arch).items():
        if names.index(name) <= stop:
            s = 2 ** downsampling(arch, name)
            shapes[name] = (max(1, hw[0] // s), max(1, hw[1] // s), cin, cout)
    known = _read(cache)
    if _valid(known.get(key), list(shapes)):
        return tuple(tuple(p) for p in known[key])  # type: ignore[misc]

    print(
        f"nst: timing {len(options)} convolution forms per layer for this CPU at "
        f"{hw[0]}x{hw[1]} (once; cached in {cache})",
        file=sys.stderr,
        flush=True,
    )
    timed: dict[tuple[int, int, int, int], str] = {}

    def fastest(shape: tuple[int, int, int, int]) -> str:
        if shape not in timed:
            timed[shape] = min(options, key=lambda impl: time_conv(impl, shape, reps))
        return timed[shape]

    plan = []
    for name, (h, w, cin, cout) in shapes.items():
        if image_layer(cin):
            plan.append((name, "xla", "xla"))
        else:
            plan.append((name, fastest((h, w, cin, cout)), fastest((h, w, cout, cin))))
    # Layers timed alone miss what a network shares (caches, the halved traffic of bf16
    # operands between fusions), so three whole plans compete: float32, the per-layer choice,
    # and every layer in its bf16 form.
    base = tuple(p for p in conv_plan(arch, conv, "cpu") if p[0] in shapes)
    uniform = tuple(p for p in conv_plan(arch, conv, "cpu", "bfloat16") if p[0] in shapes)
    named = {base: "float32", tuple(plan): "per-layer"}
    if all(i in options for _, f, b in uniform for i in (f, b) if i != "xla"):
        named.setdefault(uniform, "all-bf16")
    plans = list(named)  # distinct, float32 first
    plan = list(base)
    timed = ""
    if len(plans) > 1:
        times = time_networks(arch, plans, hw, last_layer, reps)
        best = min(range(len(plans)), key=times.__getitem__)
        if times[best] < (1 - MARGIN) * times[0]:
            plan = list(plans[best])
        timed = ", ".join(f"{named[p]} {1e3 * t:.0f} ms" for p, t in zip(plans, times, strict=True))
        timed = f" ({timed})"
    passes = [i for _, f, b in plan for i in (f, b)]
    print(
        f"nst: conv plan at {hw[0]}x{hw[1]}: {named[tuple(plan)]}, "
        f"{sum(i.endswith('_bf16') for i in passes)} of {len(passes)} passes in bf16{timed}",
        file=sys.stderr,
        flush=True,
    )
    known = _read(cache)  # again: another process may have added its sizes meanwhile
    known[key] = [list(p) for p in plan]
    _write(cache, known)
    return tuple(plan)


def _read(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, list]) -> None:
    from nst.errors import NstError
    from nst.files import atomic_write_json

    # An unwritable cache only means measuring again next time.
    with contextlib.suppress(OSError, NstError):
        atomic_write_json(path, data)
