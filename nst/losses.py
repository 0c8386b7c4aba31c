"""Functional losses of Gatys et al., "Image Style Transfer Using Convolutional Neural Networks"
(CVPR 2016), plus total variation.

Shapes: features are ``(..., H, W, C)`` (leading batch dims allowed, summed over); images are
``(..., H, W, 3)`` pixels. Every function returns a scalar. Two normalizations are offered because
the paper's absolute numbers are tied to its *normalized* VGG19 and to summed losses:

* ``"paper"``: content ½·Σ(F−P)² (eq. 1); style E_l = Σ(G/M_x − A/M_s)² / (4·N_l²) with the
  unnormalized Grams G = F·Fᵀ of the image (eq. 3) and A of the style, N_l filters, and M_x, M_s
  the positions (H·W) of the image's and the style's feature maps. When the two sizes are equal
  this is eq. 4, Σ(G−A)² / (4·N_l²·M_l²); when the style image has another size, dividing each
  Gram by its own M is what keeps the loss minimal at equal per-position statistics (dividing
  both by M_x², a literal reading of eq. 4, would pull the image towards M_s/M_x times the
  style's Gram).
* ``"mean"``: content mean((F−P)²); Gram G/(C·H·W) and style mean((G−A)²). Scale-free in the
  image size, so α/β transfer between sizes and layers.
* ``"authors"`` (style only): Gram G/(H·W) and mean((G−A)²), as in the authors' released code
  (leongatys/PytorchNeuralStyleTransfer: GramMatrix divides by h·w, GramMSELoss is an MSE). With
  their layer weights w_l = 1e3/N_l² this equals ``mean`` with w_l = 1e3 on every layer.
* ``"relative"``: the ``mean`` losses divided by the target's mean square, mean((G−A)²)/mean(A²)
  and mean((F−P)²)/mean(P²): a relative error per layer. Layers whose activations differ by
  orders of magnitude (the raw ImageNet VGG's deeper layers) then weigh alike under w_l = 1/N,
  which the paper gets from its normalized network instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NORMS = ("paper", "mean", "authors", "relative")


def gram(features: jnp.ndarray, norm: str = "mean") -> jnp.ndarray:
    """Gram matrix of ``(..., H, W, C)`` features -> ``(..., C, C)``.

    ``paper``: G_ij = Σ_k F_ik F_jk (eq. 3) divided by M = H·W (see the module docstring).
    ``mean``: divided by C·H·W. ``authors``: divided by H·W (the same as ``paper``).
    """
    *_, h, w, c = features.shape
    f = features.reshape(*features.shape[:-3], h * w, c)
    return normalize_gram(raw_gram(f), h * w, norm)


@jax.custom_vjp
def raw_gram(f: jnp.ndarray) -> jnp.ndarray:
    """Unnormalized Gram Σ_k F_ki F_kj of ``(..., K, C)`` features (K positions) -> ``(..., C, C)``.

    Its gradient is one product F·(g + gᵀ), ``(K, C)`` like F. Autodiff of the einsum gives two
    products, each laid out ``(C, K)``, then a transpose to add them to the NHWC gradient: on
    XLA:CPU that was ~10% of a 256 px step (relu1_1's Gram backward alone 20 ms of 280)."""
    return jnp.einsum("...ki,...kj->...ij", f, f)


def _raw_gram_fwd(f: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    return raw_gram(f), f


def _raw_gram_bwd(f: jnp.ndarray, g: jnp.ndarray) -> tuple[jnp.ndarray]:
    return (jnp.einsum("...ki,...ij->...kj", f, g + jnp.swapaxes(g, -1, -2)),)


raw_gram.defvjp(_raw_gram_fwd, _raw_gram_bwd)


def normalize_gram(raw_gram: jnp.ndarray, positions: int, norm: str = "mean") -> jnp.ndarray:
    """The Gram :func:`gram` returns, from the unnormalized Σ_k F_ik F_jk ``(..., C, C)`` over
    ``positions`` = H·W feature positions (what a Gram summed over image strips gives)."""
    c = raw_gram.shape[-1]
    positions = float(positions)  # C·H·W can exceed int32 for large images
    if norm in ("mean", "relative"):
        return raw_gram / (c * positions)
    if norm in ("paper", "authors"):
        return raw_gram / positions
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def content_loss(features: jnp.ndarray, target: jnp.ndarray, norm: str = "mean") -> jnp.ndarray:
    """Content loss between features F and target features P of the same shape.

    ``paper``: ½·Σ(F−P)² (eq. 1). ``mean``: mean((F−P)²). ``relative``: mean((F−P)²)/mean(P²).
    """
    d2 = jnp.square(features - target)
    if norm == "paper":
        return 0.5 * jnp.sum(d2)
    if norm in ("mean", "authors"):
        return jnp.mean(d2)
    if norm == "relative":
        return jnp.mean(d2) / (jnp.mean(jnp.square(target)) + 1e-12)
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def style_layer_loss(
    features: jnp.ndarray, target_gram: jnp.ndarray, norm: str = "mean"
) -> jnp.ndarray:
    """Style loss of one layer: features ``(..., H, W, C)`` against a Gram target ``(..., C, C)``.

    ``paper``: E_l = Σ(G/M_x − A/M_s)² / (4·N_l²) with N_l = C, M_x = H·W and the target
    ``A/M_s`` (:func:`gram` of the style's features); eq. 4 when the sizes are equal.
    ``mean``: mean((G−A)²) with Grams normalized by C·H·W; ``authors``: by H·W.
    ``relative``: the ``mean`` loss divided by mean(A²).
    """
    *_, h, w, c = features.shape
    f = features.reshape(*features.shape[:-3], h * w, c)
    return gram_style_loss(raw_gram(f), h * w, target_gram, norm)


def gram_style_loss(
    raw_gram: jnp.ndarray, positions: int, target_gram: jnp.ndarray, norm: str = "mean"
) -> jnp.ndarray:
    """:func:`style_layer_loss` from the unnormalized Gram ``(..., C, C)`` = Σ_k F_ik F_jk of
    ``positions`` = H·W feature positions (see :func:`normalize_gram`)."""
    c = raw_gram.shape[-1]
    d2 = jnp.square(normalize_gram(raw_gram, positions, norm) - target_gram)
    if norm == "paper":
        return jnp.sum(d2) / (4.0 * c**2)
    if norm == "relative":
        return jnp.mean(d2) / (jnp.mean(jnp.square(target_gram)) + 1e-30)
    return jnp.mean(d2)


def tv_loss(image: jnp.ndarray) -> jnp.ndarray:
    """Total variation of ``(..., H, W, C)`` pixels: Σ((x[i+1,j]−x[i,j])² + (x[i,j+1]−x[i,j])²)
    divided by the number of pixel values, so the weight does not depend on the image size."""
    dy = jnp.square(image[..., 1:, :, :] - image[..., :-1, :, :])
    dx = jnp.square(image[..., :, 1:, :] - image[..., :, :-1, :])
    return (jnp.sum(dy) + jnp.sum(dx)) / image.size


def feature_stats(features: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mean ``(..., C)`` and covariance ``(..., C, C)`` of ``(..., H, W, C)`` features over the
    H·W positions (covariance = centred Fᵀ·F / (H·W))."""
    *_, h, w, c = features.shape
    f = features.reshape(*features.shape[:-3], h * w, c)
    mu = jnp.mean(f, axis=-2)
    d = f - mu[..., None, :]
    return mu, raw_gram(d) / (h * w)


def mean_cov_loss(
    features: jnp.ndarray, target: tuple[jnp.ndarray, jnp.ndarray], norm: str = "mean"
) -> jnp.ndarray:
    """Style loss matching first and second moments (mean and covariance) instead of the
    uncentred Gram, the Gaussian view of style behind Wasserstein-2 style losses (e.g.
    crowsonkb/style-transfer-pytorch): mean((μ−μ_t)²) + mean((Σ−Σ_t)²); with ``relative`` each
    term is divided by its target's mean square."""
    mu, cov = feature_stats(features)
    mu_t, cov_t = target
    a = jnp.mean(jnp.square(mu - mu_t))
    b = jnp.mean(jnp.square(cov - cov_t))
    if norm == "relative":
        a = a / (jnp.mean(jnp.square(mu_t)) + 1e-30)
        b = b / (jnp.mean(jnp.square(cov_t)) + 1e-30)
    return a + b


def guided_gram(features: jnp.ndarray, guide: jnp.ndarray, norm: str = "mean") -> jnp.ndarray:
    """Guided Gram matrix (Gatys et al. 2017, "Controlling Perceptual Factors", Sec. 4.1): the
    Gram of features ``(..., H, W, C)`` weighted by a guidance channel ``(H, W)`` in 0..1, so only
    the guided region contributes. Normalized like :func:`gram` with the guidance mass Σg² in
    place of the position count H·W."""
    *_, h, w, c = features.shape
    f = (features * guide[..., None]).reshape(*features.shape[:-3], h * w, c)
    g = raw_gram(f)
    mass = jnp.sum(jnp.square(guide)) + 1e-8
    if norm in ("mean", "relative"):
        return g / (c * mass)
    if norm in ("paper", "authors"):
        return g / mass
    raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def guided_style_loss(
    features: jnp.ndarray, guide: jnp.ndarray, target_gram: jnp.ndarray, norm: str = "mean"
) -> jnp.ndarray:
    """:func:`style_layer_loss` with the image's Gram guided by ``guide`` (its region only)."""
    c = features.shape[-1]
    d2 = jnp.square(guided_gram(features, guide, norm) - target_gram)
    if norm == "paper":
        return jnp.sum(d2) / (4.0 * c**2)
    if norm == "relative":
        return jnp.mean(d2) / (jnp.mean(jnp.square(target_gram)) + 1e-30)
    return jnp.mean(d2)
