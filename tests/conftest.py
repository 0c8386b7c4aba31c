"""Shared fixtures: tiny images and random VGG weights so tests run in seconds on 2 CPU cores."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Test images are tiny: there the allocator tuning of nst/hostmem.py (one malloc arena) costs
# more compile time than the page faults it saves, so the suite and its CLI subprocesses run
# without it (tests/test_hostmem.py turns it on where it checks it).
os.environ.setdefault("NST_MALLOC_TUNE", "0")

# One persistent XLA compilation cache for the whole test session, fresh each session (so every
# program is still compiled once), shared by in-process tests and the CLI subprocesses, which
# inherit the environment: the many tests that run the same small configuration compile it once.
# Set before JAX is imported (it reads these at import).
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="nst-test-xla-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.2"

import numpy as np
import pytest

from nst.backbones import vgg

REPO = Path(__file__).resolve().parents[1]

# Tests that reproduce the paper read its images (tubingen.jpg, starry_night.jpg, ...) from the
# directory named by NST_PAPER_IMAGES (CI sets it) and are skipped where it is unset or not a
# directory.
PAPER_IMAGES = Path(os.environ["NST_PAPER_IMAGES"]) if os.environ.get("NST_PAPER_IMAGES") else None
needs_paper_images = pytest.mark.skipif(
    PAPER_IMAGES is None or not PAPER_IMAGES.is_dir(),
    reason="needs the paper's images: set NST_PAPER_IMAGES to their directory",
)


def pytest_collection_modifyitems(config, items):  # noqa: ARG001
    """Tests marked ``long`` first (stable otherwise): xdist hands tests out in this order, so
    the longest no longer start near the end with one worker left running them alone."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def random_params(arch: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        k: {
            "kernel": (rng.standard_normal(s) * np.sqrt(2.0 / (9 * s[2]))).astype(np.float32),
            "bias": (0.1 * rng.standard_normal(s[-1])).astype(np.float32),
        }
        for k, s in vgg.conv_shapes(arch).items()
    }


@pytest.fixture(scope="session")
def vgg16_params() -> dict:
    return random_params("vgg16")


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A structured (not white-noise) RGB image in 0..255."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    chans = [np.sin(2 * np.pi * (a * x + b * y) + p) for a, b, p in rng.uniform(0.5, 4, (3, 3))]
    return (127.5 + 120 * np.stack(chans, -1)).astype(np.float32)


@pytest.fixture
def write_png(tmp_path):
    from PIL import Image

    def _write(name: str, h: int = 48, w: int = 64, seed: int = 0) -> Path:
        p = tmp_path / name
        Image.fromarray(smooth_image(h, w, seed).astype(np.uint8)).save(p)
        return p

    return _write
