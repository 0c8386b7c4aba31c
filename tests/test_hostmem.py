"""nst.hostmem: with the allocator tuned, XLA:CPU's per-execution scratch buffer is reused
instead of being mapped and page-faulted in again on every call (counted, not timed)."""

import os
import subprocess
import sys

import pytest

from nst import hostmem

# A jitted program whose temporaries (~100 MiB) come from a fresh allocation on every call;
# the probe prints the median number of minor page faults per call after warm-up.
PROBE = """
import resource, sys
from nst import hostmem
print("tuned", hostmem.tune_malloc())
import jax, jax.numpy as jnp
x = jnp.ones((8, 1024, 1024), jnp.float32)
f = jax.jit(lambda x: (jnp.sin(x) @ jnp.cos(x)).sum() + jnp.tanh(x @ x).sum())
for _ in range(10):
    f(x).block_until_ready()
per_call = []
for _ in range(15):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
# The median: now and then the heap still grows by one buffer (fragmentation), which faults
# that one call in; what the tuning removes is the fault-in on every call.
print("faults", sorted(per_call)[len(per_call) // 2])
"""


def _faults_per_call(env_extra: dict[str, str]) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k not in hostmem._USER_ENV}
    env.pop("LD_PRELOAD", None)
    env.update(env_extra)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = dict(line.split() for line in out.stdout.split("\n") if line)
    return lines["tuned"] == "True", int(lines["faults"])


@pytest.mark.slow  # ~31s on a Zen 3 core pair: kept out of the default suite, run by CI's slow step
@pytest.mark.skipif(hostmem._libc() is None, reason="glibc only")
def test_tuned_allocator_stops_per_call_page_faults():
    tuned, faults_tuned = _faults_per_call({"NST_MALLOC_TUNE": "1"})
    untuned, faults_untuned = _faults_per_call({"NST_MALLOC_TUNE": "0"})
    assert tuned and not untuned
    # Untuned: the ~100 MiB of temporaries fault in page by page on every call (4 KiB pages).
    assert faults_untuned > 10_000
    assert faults_tuned < faults_untuned / 10


def test_user_allocator_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("NST_MALLOC_TUNE", "1")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert hostmem.tune_malloc() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("NST_MALLOC_TUNE", "0")
    assert hostmem.tune_malloc() is False
