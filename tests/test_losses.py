"""Losses against direct NumPy formulas (Gatys et al. 2016, eqs. 1, 3, 4)."""

import numpy as np
import pytest

from nst import losses

RNG = np.random.default_rng(0)


def feats(h=5, w=7, c=4):
    return RNG.standard_normal((1, h, w, c)).astype(np.float32)


def np_gram(f):
    F = f.reshape(-1, f.shape[-1]).T  # (C, M): rows are filters, as in the paper
    return F @ F.T


def test_gram_paper_and_mean():
    f = feats()
    g = np_gram(f[0].astype(np.float64))
    m = f.shape[1] * f.shape[2]
    np.testing.assert_allclose(losses.gram(f, "paper")[0], g / m, rtol=1e-5)  # per position
    np.testing.assert_allclose(losses.gram(f, "mean")[0], g / f[0].size, rtol=1e-5)


def test_content_loss():
    f, p = feats(), feats()
    d = f.astype(np.float64) - p
    np.testing.assert_allclose(losses.content_loss(f, p, "paper"), 0.5 * np.sum(d**2), rtol=1e-5)
    np.testing.assert_allclose(losses.content_loss(f, p, "mean"), np.mean(d**2), rtol=1e-5)


def test_style_layer_loss_paper_eq4():
    f, s = feats(), feats()
    n, m = f.shape[-1], f.shape[1] * f.shape[2]
    a = np_gram(s[0].astype(np.float64))
    expected = np.sum((np_gram(f[0].astype(np.float64)) - a) ** 2) / (4 * n**2 * m**2)
    np.testing.assert_allclose(
        losses.style_layer_loss(f, losses.gram(s, "paper"), "paper"), expected, rtol=1e-5
    )


@pytest.mark.parametrize("style_hw", [(5, 7), (3, 9), (11, 6), (16, 16)])
def test_style_layer_loss_paper_with_a_differently_sized_style(style_hw):
    """E_l = Σ(G/M_x − A/M_s)² / (4N²): each Gram divided by its own number of positions, which
    is eq. 4 when the sizes match; zero when the image has the style's per-position Gram."""
    f, s = feats(6, 8), feats(*style_hw)
    f64, s64 = f[0].astype(np.float64), s[0].astype(np.float64)
    n, mx, ms = f.shape[-1], 6 * 8, style_hw[0] * style_hw[1]
    expected = np.sum((np_gram(f64) / mx - np_gram(s64) / ms) ** 2) / (4 * n**2)
    got = float(losses.style_layer_loss(f, losses.gram(s, "paper"), "paper"))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    tiled = np.tile(s, (1, 2, 3, 1))  # the style's statistics at 6x its positions
    assert float(losses.style_layer_loss(tiled, losses.gram(s, "paper"), "paper")) == pytest.approx(
        0, abs=1e-9 * expected
    )


def test_style_layer_loss_mean():
    f, s = feats(), feats()
    k = f[0].size
    a = np_gram(s[0].astype(np.float64)) / k
    expected = np.mean((np_gram(f[0].astype(np.float64)) / k - a) ** 2)
    np.testing.assert_allclose(
        losses.style_layer_loss(f, losses.gram(s, "mean"), "mean"), expected, rtol=1e-5
    )


def test_style_loss_zero_at_target_and_size_independent_mean():
    f = feats(8, 8, 3)
    assert float(losses.style_layer_loss(f, losses.gram(f, "mean"), "mean")) == pytest.approx(
        0, abs=1e-10
    )
    tiled = np.tile(f, (1, 2, 2, 1))  # same statistics, 4x the positions
    np.testing.assert_allclose(losses.gram(tiled, "mean"), losses.gram(f, "mean"), rtol=1e-5)


def test_tv_loss():
    x = RNG.uniform(0, 255, (6, 9, 3)).astype(np.float32)
    xd = x.astype(np.float64)
    expected = (np.sum((xd[1:] - xd[:-1]) ** 2) + np.sum((xd[:, 1:] - xd[:, :-1]) ** 2)) / x.size
    np.testing.assert_allclose(losses.tv_loss(x), expected, rtol=1e-5)
    assert float(losses.tv_loss(np.full((4, 4, 3), 7.0, np.float32))) == 0.0


def test_unknown_norm():
    with pytest.raises(ValueError, match="paper, mean"):
        losses.gram(feats(), "l2")


def test_relative_norms_divide_by_the_targets_mean_square():
    f, s = feats(), feats()
    a = np_gram(s[0].astype(np.float64)) / s[0].size
    g = np_gram(f[0].astype(np.float64)) / f[0].size
    expected = np.mean((g - a) ** 2) / np.mean(a**2)
    got = losses.style_layer_loss(f, losses.gram(s, "relative"), "relative")
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    d = f.astype(np.float64) - s
    np.testing.assert_allclose(
        losses.content_loss(f, s, "relative"),
        np.mean(d**2) / np.mean(s.astype(np.float64) ** 2),
        rtol=1e-5,
    )
    # Scale-free: multiplying features and target by the same factor changes nothing.
    np.testing.assert_allclose(
        losses.style_layer_loss(30 * f, losses.gram(30 * s, "relative"), "relative"), got, rtol=1e-4
    )


def test_raw_gram_gradient_is_f_times_symmetrized_cotangent():
    """raw_gram's hand-written backward F·(g + gᵀ) against the NumPy formula and against autodiff
    of the plain einsum, with a leading batch dim and under vmap (the batched grid)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    f = rng.standard_normal((2, 50, 7)).astype(np.float32)
    g = rng.standard_normal((2, 7, 7)).astype(np.float32)  # not symmetric, on purpose
    np.testing.assert_allclose(losses.raw_gram(f), np.einsum("nki,nkj->nij", f, f), rtol=1e-5)

    def plain(x):
        return jnp.einsum("...ki,...kj->...ij", x, x)

    _, vjp = jax.vjp(losses.raw_gram, jnp.asarray(f))
    (got,) = vjp(jnp.asarray(g))
    want = np.einsum("nki,nij->nkj", f, g + g.transpose(0, 2, 1))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        got, jax.vjp(plain, jnp.asarray(f))[1](jnp.asarray(g))[0], rtol=1e-4, atol=1e-5
    )

    def loss(fn, x):
        return jnp.sum(jnp.sin(fn(x)))

    by_vmap = jax.vmap(jax.grad(lambda x: loss(losses.raw_gram, x)))(jnp.asarray(f))
    by_autodiff = jax.vmap(jax.grad(lambda x: loss(plain, x)))(jnp.asarray(f))
    np.testing.assert_allclose(by_vmap, by_autodiff, rtol=1e-4, atol=1e-5)


def test_evaluation_of_an_image_against_itself():
    """The fixed evaluation: an image as its own content and style scores 0, 0, SSIM 1 and
    colour distance 0; a different image scores more on each."""
    from nst.evaluate import make_evaluator
    from tests.conftest import smooth_image

    img, other = smooth_image(40, 56, 1), smooth_image(40, 56, 2)
    same = make_evaluator(img, [img])(img)
    assert same["eval/content"] == pytest.approx(0, abs=1e-9)
    assert same["eval/style"] == pytest.approx(0, abs=1e-9)
    assert same["eval/ssim"] == pytest.approx(1.0) and same["eval/color"] == pytest.approx(
        0, abs=1e-6
    )
    assert same["eval/tradeoff"] == pytest.approx(same["eval/content"] + same["eval/style"])
    diff = make_evaluator(img, [img])(other)
    assert diff["eval/content"] > 0.01 and diff["eval/style"] > 0.01
    assert diff["eval/ssim"] < 0.9 and diff["eval/color"] > 0
