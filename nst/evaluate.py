"""Evaluation metrics that mean the same thing in every run, whatever its own loss settings.

Every run's losses depend on its backbone, layers, normalization and weights, so two cells of a
grid cannot be compared by them. These metrics are computed on the final image (and every
``eval.every`` steps) with one fixed yardstick:

* ``eval/content``: relative feature error at relu4_2 of the embedded ImageNet VGG16,
  Σ(F−P)² / ΣP², with P the content image's features (at the result's size).
* ``eval/style``: relative per-position Gram error, averaged over relu1_1…relu5_1 with equal
  weights: Σ(G/M_x − A/M_s)² / Σ(A/M_s)², the style's Grams at the style image's own size (the
  paper's style loss with each Gram divided by its own number of positions). Several styles
  blend their Grams with the run's blend weights.
* ``eval/tradeoff``: ``eval/content + eval/style``, one number for a balanced result (what
  ``hparams_search=optuna_tradeoff`` minimizes).
* ``eval/ssim``: SSIM of the result to the content (scikit-image, on 0..255 RGB).
* ``eval/color``: Fréchet distance between Gaussian fits of the result's and the style's RGB
  distributions (pixel values in 0..1): ||μ−μ_s||² + tr(Σ + Σ_s − 2(Σ·Σ_s)^½).

An image evaluated against itself as content and style gives 0, 0, 1 and 0.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
KEYS = ("eval/content", "eval/style", "eval/tradeoff", "eval/ssim", "eval/color")


@functools.cache
def _network() -> tuple[Any, Any, Any]:
    """The fixed yardstick: embedded VGG16, max pooling, Caffe preprocessing; its prepared
    parameters and one jitted function returning the evaluation layers. Loaded once a process."""
    import jax

    from nst.backbones import BackboneSpec, get_backbone
    from nst.spec import WeightsSpec

    vgg16 = get_backbone("vgg16")
    params, info = vgg16.load(WeightsSpec(source="embedded"))
    layers = (CONTENT_LAYER, *STYLE_LAYERS)
    spec = BackboneSpec(arch="vgg16", preprocessing=info["preprocessing"], conv="xla")
    net = vgg16.network(spec, layers, None)
    prepared = net.prepare(params)

    @jax.jit
    def features(p, x):
        f = net.features(p, x[None])
        return {k: f[k][0] for k in layers}

    return net, prepared, features


def _per_position_gram(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float64).reshape(-1, f.shape[-1])
    return f.T @ f / len(f)


def frechet_rgb(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of Gaussian fits of two images' RGB values (0..255 in, 0..1 units)."""
    from scipy.linalg import sqrtm

    x = np.asarray(a, np.float64).reshape(-1, 3) / 255.0
    y = np.asarray(b, np.float64).reshape(-1, 3) / 255.0
    mx, my = x.mean(0), y.mean(0)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = sqrtm(cx @ cy)
    root = root.real if np.iscomplexobj(root) else root
    return float(max(0.0, np.sum((mx - my) ** 2) + np.trace(cx + cy - 2.0 * root)))


@dataclass
class Evaluator:
    """``evaluator(image) -> {eval/...: float}`` for one run's content and styles."""

    content: np.ndarray  # (H, W, 3) 0..255, the result's size
    content_features: np.ndarray
    style_grams: dict[str, np.ndarray]  # blended per-position Grams at each style's own size
    style_pixels: np.ndarray  # (N, 3) pooled style pixels (blend-weighted by repetition)

    def __call__(self, image: np.ndarray) -> dict[str, float]:
        from skimage.metrics import structural_similarity

        _, params, features = _network()
        image = np.asarray(image, np.float32)
        f = features(params, image)
        p = self.content_features
        x = np.asarray(f[CONTENT_LAYER], np.float64)
        content = float(np.sum((x - p) ** 2) / max(np.sum(p**2), 1e-30))
        errs = []
        for k in STYLE_LAYERS:
            a = self.style_grams[k]
            g = _per_position_gram(np.asarray(f[k]))
            errs.append(np.sum((g - a) ** 2) / max(np.sum(a**2), 1e-30))
        ssim = structural_similarity(
            np.clip(np.rint(image), 0, 255),
            np.clip(np.rint(self.content), 0, 255),
            channel_axis=-1,
            data_range=255.0,
        )
        style = float(np.mean(errs))
        return {
            "eval/content": content,
            "eval/style": style,
            "eval/tradeoff": content + style,
            "eval/ssim": float(ssim),
            "eval/color": frechet_rgb(image, self.style_pixels),
        }


def make_evaluator(
    content: np.ndarray, styles: Sequence[np.ndarray], blend: Sequence[float] | None = None
) -> Evaluator:
    """The evaluator for a run whose result has ``content``'s size; ``styles`` at the sizes
    the run uses them (0..255 RGB), blended with ``blend`` (default equal)."""
    _, params, features = _network()
    weights = list(blend) if blend is not None else [1.0 / len(styles)] * len(styles)
    grams: dict[str, np.ndarray] = {}
    for w, s in zip(weights, styles, strict=True):
        fs = features(params, np.asarray(s, np.float32))
        for k in STYLE_LAYERS:
            grams[k] = grams.get(k, 0.0) + w * _per_position_gram(np.asarray(fs[k]))
    pixels = [np.asarray(s, np.float64).reshape(-1, 3) for s in styles]
    if len(pixels) > 1:  # blend the colour distributions by the same weights
        n = min(len(p) for p in pixels)
        rng = np.random.default_rng(0)
        pixels = [
            p[rng.choice(len(p), max(1, round(n * w * len(pixels))))]
            for p, w in zip(pixels, weights, strict=True)
            if w > 0
        ]
    c = np.asarray(content, np.float32)
    return Evaluator(
        content=c,
        content_features=np.asarray(features(params, c)[CONTENT_LAYER], np.float64),
        style_grams=grams,
        style_pixels=np.concatenate(pixels),
    )
