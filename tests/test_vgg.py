"""VGG: layer naming, truncation, pooling, preprocessing, against a direct NumPy forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst.backbones import vgg, vgg_net
from tests.conftest import random_params, smooth_image


def test_layer_names_and_counts():
    assert len(vgg.conv_layer_names("vgg16")) == 13
    assert len(vgg.conv_layer_names("vgg19")) == 16
    names = vgg.layer_names("vgg19")
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names[-1] == "pool5" and "conv5_4" in names
    counts = {a: sum(np.prod(s) + s[-1] for s in vgg.conv_shapes(a).values()) for a in vgg.BLOCKS}
    assert counts["vgg16"] == 14_714_688  # Keras VGG16 notop parameter count
    assert counts["vgg19"] == 20_024_384  # Keras VGG19 notop parameter count


def test_validate_layers_lists_valid_names():
    with pytest.raises(ValueError, match="conv5_4") as e:
        vgg.validate_layers("vgg16", ["conv4_2", "conv5_4"])
    assert "conv5_3" in str(e.value)
    vgg.validate_layers("vgg19", ["conv5_4", "relu1_1", "pool3"])


def np_conv_same(x, k, b):
    h, w, _ = x.shape
    xp = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    out = np.zeros((h, w, k.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += xp[dy : dy + h, dx : dx + w] @ k[dy, dx]
    return out + b


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_forward_matches_numpy(pooling):
    params = random_params("vgg16")
    x = smooth_image(12, 10)
    model = vgg_net.VGG("vgg16", pooling=pooling, preprocessing="caffe", last_layer="conv2_1")
    feats = model.apply(
        {"params": {k: params[k] for k in ("conv1_1", "conv1_2", "conv2_1")}}, x[None]
    )
    assert list(feats) == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1", "conv2_1"]
    h = x[..., ::-1].astype(np.float64) - vgg.CAFFE_MEAN_BGR
    h = np.maximum(np_conv_same(h, params["conv1_1"]["kernel"], params["conv1_1"]["bias"]), 0)
    c12 = np_conv_same(h, params["conv1_2"]["kernel"], params["conv1_2"]["bias"])
    np.testing.assert_allclose(feats["conv1_2"][0], c12, rtol=2e-4, atol=2e-2)
    r = np.maximum(c12, 0).reshape(6, 2, 5, 2, -1)
    pooled = r.max(axis=(1, 3)) if pooling == "max" else r.mean(axis=(1, 3))
    np.testing.assert_allclose(feats["pool1"][0], pooled, rtol=2e-4, atol=2e-2)


def test_truncation_creates_only_needed_params():
    model = vgg_net.VGG("vgg19", last_layer="relu3_1")
    p = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    assert sorted(p) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"]


def test_preprocessing():
    x = np.array([[[10.0, 20.0, 30.0]]], np.float32)
    np.testing.assert_allclose(
        vgg_net.preprocess(x, "caffe")[0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6
    )
    t = (x[0, 0] / 255 - vgg.TORCH_MEAN_RGB) / vgg.TORCH_STD_RGB
    np.testing.assert_allclose(vgg_net.preprocess(x, "torch")[0, 0], t, rtol=1e-6)


def test_downsampling_and_deepest():
    assert vgg.downsampling("vgg16", "conv4_2") == 3
    assert vgg.downsampling("vgg16", "conv1_1") == 0
    assert vgg.deepest_layer("vgg16", ["relu1_1", "conv4_2", "conv3_1"]) == "conv4_2"


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_apply_vgg_with_remat_is_the_same_function(vgg16_params, pooling):
    x = jnp.asarray(smooth_image(36, 44))[None]
    ref = vgg_net.VGG(pooling=pooling, last_layer="relu4_2").apply(
        {"params": {k: vgg16_params[k] for k in vgg.conv_layer_names("vgg16")[:9]}}, x
    )
    # jitted: op-by-op dispatch took longer than compiling
    for remat in (False, True):
        out = jax.jit(
            lambda p, x, remat=remat: vgg_net.apply_vgg(
                p, x, pooling=pooling, last_layer="relu4_2", remat=remat
            )
        )(vgg16_params, x)
        assert set(out) == set(ref)
        for k in ref:
            np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-4)

    def f(x, remat):
        feats = vgg_net.apply_vgg(
            vgg16_params, x, pooling=pooling, last_layer="relu4_2", remat=remat
        )
        return jnp.sum(feats["relu4_2"] ** 2) + jnp.sum(feats["relu1_1"])

    grad = jax.jit(jax.grad(f), static_argnums=1)
    g0, g1 = grad(x, False), grad(x, True)
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-3 * float(jnp.abs(g0).max()))
