"""Striped evaluation of the first VGG blocks (remat's memory saver) computes the same loss:
strip layout covers every row, striped Grams and later activations equal the whole-image
network, and the loss and its gradient with strips equal those without."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst import engine, losses
from nst.backbones import vgg, vgg_net
from nst.backbones.weights import random_params
from nst.engine import BackboneSpec, LossSpec, compute_targets, make_loss_fn, make_model


@pytest.fixture(scope="module")
def params():
    return random_params("vgg16", 0)


@pytest.mark.parametrize("height", [1, 7, 8, 33, 100, 257])
@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize("rows", [8, 16, 128])
def test_strip_layout_covers_every_row(height, blocks, rows):
    t, n, halo = vgg.strip_layout("vgg16", blocks, height, rows)
    f = 2**blocks
    # convolutions at pooling level l each need 2**l more input rows on either side
    need = sum(c * 2**lvl for lvl, c in enumerate(vgg.BLOCKS["vgg16"][:blocks]))
    assert halo >= need and halo % f == 0 and halo - need < f
    assert n * t * f >= height  # every input row is some strip's own row
    assert (n - 1) * t * f < height  # and no strip is only padding
    assert t * f <= max(rows, f) or n == 1


def test_layer_size_floors_at_each_pool():
    assert vgg.layer_size("vgg16", "relu1_1", 97, 33) == (97, 33)
    assert vgg.layer_size("vgg16", "pool1", 97, 33) == (48, 16)
    assert vgg.layer_size("vgg16", "relu3_1", 97, 33) == (24, 8)
    assert vgg.layer_size("vgg19", "relu5_4", 97, 33) == (6, 2)


@pytest.mark.parametrize(
    ("hw", "rows", "blocks", "pooling"),
    [((70, 45), 16, 3, "max"), pytest.param((97, 33), 8, 2, "avg", marks=pytest.mark.slow)],
)
def test_striped_grams_and_features_equal_whole_image(params, hw, rows, blocks, pooling):
    plan = vgg.conv_plan("vgg16", "xla", "cpu")  # the strips are the subject, not Winograd
    p = vgg_net.prepare_params(params, plan)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 255, (2, *hw, 3)).astype(np.float32))
    outs = ("relu1_1", "relu2_1", "pool2", "relu3_1", "relu4_2")
    kw = dict(arch="vgg16", last_layer="relu4_2", outputs=outs, conv_plan=plan, pooling=pooling)
    # jitted: eager dispatch of the Winograd networks took twice as long as compiling them
    ref = jax.jit(functools.partial(vgg_net.apply_vgg, **kw))(p, x)
    striped_fn = functools.partial(
        vgg_net.apply_vgg_striped,
        strip_blocks=blocks,
        strip_rows=rows,
        gram_layers=outs,
        remat=True,
    )
    feats, grams = jax.jit(functools.partial(striped_fn, **kw))(p, x)
    assert vgg.strip_layout("vgg16", blocks, hw[0], rows)[1] > 2  # really several strips
    striped = [k for k in outs if int(k[4]) <= blocks]
    assert sorted(grams) == sorted(striped) and sorted(feats) == sorted(set(outs) - set(striped))
    for k, g in grams.items():
        f = np.asarray(ref[k], np.float64).reshape(2, -1, ref[k].shape[-1])
        want = np.einsum("nki,nkj->nij", f, f)  # Gram = F^T F over all positions, per image
        np.testing.assert_allclose(g, want, rtol=0, atol=1e-5 * np.abs(want).max())
    for k, v in feats.items():
        assert v.shape == ref[k].shape
        np.testing.assert_allclose(v, ref[k], rtol=0, atol=1e-4 * float(jnp.abs(ref[k]).max()))


def test_striped_blocks_give_only_grams(params):
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="relu2_2"):
        vgg_net.apply_vgg_striped(
            params, x, strip_blocks=2, strip_rows=8, gram_layers=["relu1_1"],
            outputs=["relu1_1", "relu2_2", "relu3_1"], last_layer="relu3_1",
        )  # fmt: skip


def test_strip_blocks_rule():
    loss = LossSpec()  # content relu4_2, style relu1_1..relu5_1
    remat = BackboneSpec(remat=True)
    assert engine.strip_blocks(remat, loss) == vgg.STRIP_BLOCKS_MAX == 3
    assert engine.strip_blocks(BackboneSpec(), loss) == 0  # no remat: whole image
    c22 = dataclasses.replace(loss, content_layers={"relu2_2": 1.0})
    assert engine.strip_blocks(remat, c22) == 1  # a content layer needs its whole activation
    assert engine.strip_blocks(remat, dataclasses.replace(loss, style="mean_cov")) == 0
    shallow = LossSpec(content_layers={"relu1_2": 1.0}, style_layers={"relu1_1": 1.0})
    assert engine.strip_blocks(remat, shallow) == 0
    assert engine.strip_blocks(dataclasses.replace(remat, strip_rows=0), loss) == 0


@pytest.mark.parametrize("norm", ["paper", "mean", "authors", "relative"])
def test_gram_style_loss_equals_style_layer_loss(norm):
    rng = np.random.default_rng(3)
    f = rng.standard_normal((1, 5, 7, 4)).astype(np.float32)
    target = rng.standard_normal((4, 4)).astype(np.float32)
    raw = np.einsum("nki,nkj->nij", f.reshape(1, 35, 4), f.reshape(1, 35, 4))
    got = losses.gram_style_loss(jnp.asarray(raw), 35, jnp.asarray(target), norm)
    want = losses.style_layer_loss(jnp.asarray(f), jnp.asarray(target), norm)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.long
def test_loss_and_gradient_with_strips_equal_whole_image(params):
    loss = LossSpec(tv=1e-3)
    rng = np.random.default_rng(0)
    h, w = 100, 76
    content = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    x = jnp.asarray(rng.uniform(0, 255, (h, w, 3)).astype(np.float32))
    # XLA's convolution both ways: strips then give the whole image's activations bit for bit.
    # With Winograd (conv=auto) they differ by float rounding, and a gradient is discontinuous
    # where a 2x2 max-pool window has a near-tie: on one CPU (AVX2, no AVX-512) a pool3 window
    # whose top two values were 4e-4 apart (of ~1000) picked the other pixel, which moved 4-11%
    # of the max gradient over its receptive field. Striped Winograd activations and Grams are
    # checked above, and the Winograd input gradient in test_winograd.py.
    out = {}
    for name, spec in [
        ("whole", BackboneSpec(conv="xla")),
        ("strips", BackboneSpec(remat=True, strip_rows=16, conv="xla")),
    ]:
        model = make_model(spec, loss)
        p = engine.trim_params(model, params)
        targets = compute_targets(model, p, content, [style], loss)
        fn = jax.jit(jax.value_and_grad(make_loss_fn(model, loss), has_aux=True))
        out[name] = fn(x, p, targets, loss.weights())
    assert make_model(BackboneSpec(remat=True, strip_rows=16), loss).strip_blocks == 3
    (lw, mw), gw = out["whole"]
    (ls, ms), gs = out["strips"]
    np.testing.assert_allclose(ls, lw, rtol=1e-5)
    for k in mw:
        np.testing.assert_allclose(ms[k], mw[k], rtol=1e-4, err_msg=k)
    np.testing.assert_allclose(gs, gw, rtol=0, atol=1e-4 * float(jnp.abs(gw).max()))


def test_memory_estimate_counts_one_strip(monkeypatch):
    """With strips, the run's memory check lets remat through at sizes it refuses without."""
    import dataclasses

    import nst
    from nst import run as nrun
    from nst.errors import ConfigError
    from nst.spec import RunSpec

    monkeypatch.setattr(nrun, "available_memory", lambda: 20 * 2**30)
    spec = RunSpec.from_config(nst.load_config(["backbone.remat=true"]))
    plain = dataclasses.replace(spec.backbone, remat=False)
    whole = vgg.VGG16.step_bytes(plain, spec.loss, (3072, 4096))
    striped = vgg.VGG16.step_bytes(spec.backbone, spec.loss, (3072, 4096))
    assert striped < 16 * 2**30 < 20 * 2**30 < whole
    nrun.check_memory(spec, (300, 400), 4096)
    spec.backbone = plain
    with pytest.raises(ConfigError, match="GiB.*backbone.remat=true"):
        nrun.check_memory(spec, (300, 400), 4096)
