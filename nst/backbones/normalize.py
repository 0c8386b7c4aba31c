"""The *normalized* VGG of Gatys et al. (2016, Sec. 2): every filter rescaled so that its mean
rectified activation over a set of images and positions is 1.

Why it matters: the paper's α/β and its equal style-layer weights w_l = 1/N assume layers of
comparable magnitude. In the raw ImageNet VGG16 the mean activation grows by orders of magnitude
with depth, so the deeper layers' Gram losses swamp the shallow ones (and the content) at any
α/β. Rescaling a ReLU network channel-wise does not change what it computes up to those scales:
ReLU, max and average pooling are positively homogeneous, so with m_l the mean activation of
layer l (per output channel),

    W'_l[:, :, i, o] = W_l[:, :, i, o] · m_{l-1}[i] / m_l[o],     b'_l[o] = b_l[o] / m_l[o]

gives features F'_l = F_l / m_l exactly (m_0 = 1 for the pixels). Filters that never fire on the
image set (m = 0) keep their scale.

The means are measured on the network as trained (max pooling) and cached next to the weights,
keyed by the weights' digest, the image set and the size.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nst import images
from nst.backbones.vgg import conv_layer_names
from nst.backbones.vgg_net import VGG

log = logging.getLogger(__name__)

# Photographs bundled with scikit-image: natural images available offline on every machine.
DEFAULT_IMAGES: tuple[str, ...] = (
    "sample:astronaut",
    "sample:chelsea",
    "sample:coffee",
    "sample:rocket",
    "sample:motorcycle_left",
)
DEFAULT_SIZE = 256
MIN_MEAN = 1e-6  # below this a filter counts as dead on the image set and is not rescaled

Params = Mapping[str, Mapping[str, Any]]


def mean_activations(
    params: Params, arch: str, preprocessing: str, batch: Sequence[np.ndarray]
) -> dict[str, np.ndarray]:
    """Mean rectified activation of every filter of every convolution over ``batch`` (images
    ``(H, W, 3)``, 0..255, any sizes) and all positions, weighted by position count.

    Returns conv name -> ``(C,)`` float64 means, computed with max pooling (the trained net)."""
    model = VGG(arch=arch, pooling="max", preprocessing=preprocessing)
    names = conv_layer_names(arch)

    @jax.jit
    def sums(p, x):
        feats = model.apply({"params": p}, x[None])
        relu = {n: feats["relu" + n[4:]] for n in names}
        return {n: jnp.sum(f, axis=(0, 1, 2)) for n, f in relu.items()}, {
            n: f.shape[1] * f.shape[2] for n, f in relu.items()
        }

    total: dict[str, np.ndarray] = {n: np.zeros(params[n]["bias"].shape[0]) for n in names}
    count = dict.fromkeys(names, 0)
    p = jax.device_put({n: dict(params[n]) for n in names})
    for img in batch:
        s, c = sums(p, jnp.asarray(img, jnp.float32))
        for n in names:
            total[n] += np.asarray(s[n], np.float64)
            count[n] += int(c[n])
    return {n: total[n] / count[n] for n in names}


def normalize_params(
    params: Params, arch: str, means: Mapping[str, np.ndarray]
) -> dict[str, dict[str, np.ndarray]]:
    """Rescale every convolution so its mean activation becomes 1 (see the module docstring).

    ``means`` maps conv names to ``(C,)`` mean activations of the *original* network."""
    out: dict[str, dict[str, np.ndarray]] = {}
    prev = np.ones(3)
    for name in conv_layer_names(arch):
        m = np.asarray(means[name], np.float64)
        s = np.where(m > MIN_MEAN, m, 1.0)
        k = np.asarray(params[name]["kernel"], np.float64)
        b = np.asarray(params[name]["bias"], np.float64)
        out[name] = {
            "kernel": (k * prev[None, None, :, None] / s[None, None, None, :]).astype(np.float32),
            "bias": (b / s).astype(np.float32),
        }
        prev = s
    return out


def _cache_key(digest: str, preprocessing: str, specs: Sequence[str], size: int) -> str:
    blob = json.dumps([digest, preprocessing, list(specs), size]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def normalized_params(
    params: Params,
    arch: str,
    preprocessing: str,
    image_specs: Sequence[str] = DEFAULT_IMAGES,
    size: int = DEFAULT_SIZE,
    *,
    cache: bool = True,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """``params`` normalized on the images ``image_specs`` (paths or ``sample:NAME``) resized to
    ``size`` px on the longest side; the means are cached in the weights cache directory.

    Returns the new params and an info dict (image set, size, cache file, layer mean ranges)."""
    from nst.backbones.weights import atomic_save_npz, cache_dir, params_digest

    if not image_specs:
        raise ValueError("backbone.normalize_images is empty; name at least one image")
    if size < 32:
        raise ValueError(f"backbone.normalize_size must be >= 32 px, got {size}")
    key = _cache_key(params_digest(params, arch), preprocessing, image_specs, size)
    path = cache_dir() / f"{arch}_normalization_{key}.npz" if cache else None
    means: dict[str, np.ndarray] | None = None
    if path is not None and path.is_file():
        try:
            with np.load(path) as z:
                means = {n: z[n] for n in conv_layer_names(arch)}
        except Exception as err:  # corrupt cache: recompute
            log.warning("%s unreadable (%s); recomputing the normalization", path, err)
    if means is None:
        batch = [images.resize_longest(images.load_image(s), size) for s in image_specs]
        means = mean_activations(params, arch, preprocessing, batch)
        if path is not None:
            try:
                atomic_save_npz(path, means)
            except OSError as err:
                log.warning("cannot cache the normalization in %s: %s", path, err)
    info = {
        "images": list(image_specs),
        "size": size,
        "cache": str(path) if path is not None else None,
        "mean_activation": {n: [float(np.min(m)), float(np.max(m))] for n, m in means.items()},
    }
    return normalize_params(params, arch, means), info
