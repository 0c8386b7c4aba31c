"""Colour control (Gatys, Ecker, Bethge, Hertzmann, Shechtman, "Controlling Perceptual Factors in
Neural Style Transfer", CVPR 2017, Sec. 5).

* luminance-only transfer: optimize on the luminance channel (content and style as grey images,
  the style's luminance matched to the content's mean and standard deviation), then put the
  result's luminance together with the content's chroma (YIQ).
* colour histogram matching: before the transfer, map the style's pixel colours linearly so that
  their mean and covariance equal the content's, x' = A(x − μ_s) + μ_c with A = Σ_c^½ Σ_s^-½.

All functions take and return float RGB ``(H, W, 3)`` in 0..255.
"""

from __future__ import annotations

import numpy as np

# NTSC YIQ (FCC 1953 primaries), rows Y, I, Q; the transfer happens on Y.
RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)


def rgb_to_yiq(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64) @ RGB_TO_YIQ.T


def yiq_to_rgb(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64) @ YIQ_TO_RGB.T


def luminance(x: np.ndarray) -> np.ndarray:
    """Y of ``x`` as a grey RGB image (Y in all three channels)."""
    y = rgb_to_yiq(x)[..., 0]
    return np.repeat(y[..., None], 3, axis=-1).astype(np.float32)


def luminance_pair(content: np.ndarray, style: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grey content and style for luminance-only transfer; the style's luminance is shifted and
    scaled to the content's mean and standard deviation (Gatys et al. 2017, Sec. 5.1)."""
    yc, ys = luminance(content)[..., 0], luminance(style)[..., 0]
    ys = (ys - ys.mean()) / max(float(ys.std()), 1e-6) * yc.std() + yc.mean()
    ys = np.clip(ys, 0.0, 255.0)
    return luminance(content), np.repeat(ys[..., None], 3, axis=-1).astype(np.float32)


def recombine(result: np.ndarray, content: np.ndarray) -> np.ndarray:
    """The result's luminance with the content's chroma (I, Q), back to RGB, clipped to 0..255."""
    y = rgb_to_yiq(result)[..., :1]
    iq = rgb_to_yiq(content)[..., 1:]
    return np.clip(yiq_to_rgb(np.concatenate([y, iq], axis=-1)), 0.0, 255.0).astype(np.float32)


def _sqrtm(c: np.ndarray, inverse: bool = False) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    w = np.clip(w, 1e-8, None)
    return (v * (w ** (-0.5 if inverse else 0.5))) @ v.T


def match_histogram(style: np.ndarray, content: np.ndarray) -> np.ndarray:
    """``style`` with its pixel colours mapped to the content's mean and covariance (Sec. 5.2)."""
    s = np.asarray(style, np.float64).reshape(-1, 3)
    c = np.asarray(content, np.float64).reshape(-1, 3)
    mu_s, mu_c = s.mean(0), c.mean(0)
    a = _sqrtm(np.cov(c, rowvar=False)) @ _sqrtm(np.cov(s, rowvar=False), inverse=True)
    out = (s - mu_s) @ a.T + mu_c
    return np.clip(out, 0.0, 255.0).reshape(style.shape).astype(np.float32)
