"""``backbone.compute_dtype=auto``: for each convolution and direction, the implementation that
measures fastest on this machine at the run's image size.

Which form wins depends on the CPU more than on anything a rule could state: bf16 GEMMs run ~1.8x
the f32 rate with AVX512-BF16 and ~5x with AMX, while the transforms and gathers around them cost
the same, so the balance moves with the channel count and the size. Each candidate is compiled
alone at the layer's shape and timed (forward convolutions and input-gradient ones are both
convolutions: a layer's backward pass is timed as the flipped kernel's forward). Results are
cached per CPU model, JAX version, network and size (``$NST_CACHE_DIR/conv-plans.json``), so only
the first run at a size pays for it. Without bf16 units the float32 plan is used unmeasured:
nothing can get slower there.
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

CACHE_FILE = "conv-plans.json"
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


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


def time_conv(impl: str, shape: tuple[int, int, int, int], reps: int = 5) -> float:
    """Median seconds of one ``impl`` convolution of a ``(1, h, w, cin)`` input to ``cout``
    channels (``shape = (h, w, cin, cout)``), compiled alone, after one warm-up call."""
    import jax
    import jax.numpy as jnp

    from nst.backbones.vgg import conv_impl, kernel_for

    h, w, cin, cout = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 1, (1, h, w, cin)), jnp.float32)
    k = kernel_for(impl, jnp.asarray(rng.normal(0, 0.05, (3, 3, cin, cout)), jnp.float32))
    fn = jax.jit(lambda a, b: conv_impl(impl, a, b)).lower(x, k).compile()
    jax.block_until_ready(fn(x, k))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x, k))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _key(arch: str, conv: str, hw: tuple[int, int], last_layer: str, options: Sequence[str]) -> str:
    import jax

    return "|".join(
        [
            cpu_name(),
            ",".join(bf16_units()),
            f"jax {jax.__version__}",
            arch,
            conv,
            f"{hw[0]}x{hw[1]}",
            last_layer,
            ",".join(options),
        ]
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
    """The plan (:func:`nst.backbones.vgg.conv_plan`'s form) whose every convolution and
    direction up to ``last_layer`` runs as the fastest of ``options`` (default:
    :func:`candidates` of ``conv``) at an ``hw`` image, measured here or read from ``cache``
    (default: the nst cache directory; a file that cannot be written just is not)."""
    from nst.backbones.vgg import conv_shapes, downsampling, layer_names

    options = tuple(options or candidates(conv))
    key = _key(arch, conv, hw, last_layer, options)
    if cache is None:
        from nst.files import cache_root

        cache = cache_root() / CACHE_FILE
    known = _read(cache)
    if key in known:
        return tuple(tuple(p) for p in known[key])  # type: ignore[misc]

    names = layer_names(arch)
    stop = names.index(last_layer)
    shapes = {}
    for name, (_, _, cin, cout) in conv_shapes(arch).items():
        if names.index(name) <= stop:
            s = 2 ** downsampling(arch, name)
            shapes[name] = (max(1, hw[0] // s), max(1, hw[1] // s), cin, cout)
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
        if cin < 8:  # the first layer runs on the image as XLA's convolution (conv_plan)
            plan.append((name, "xla", "xla"))
        else:
            plan.append((name, fastest((h, w, cin, cout)), fastest((h, w, cout, cin))))
    known[key] = plan
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
