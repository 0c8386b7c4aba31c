"""Normalized VGG (Gatys et al. 2016, Sec. 2): mean activation 1 per filter, same function."""

import jax.numpy as jnp
import numpy as np
import pytest

from nst.backbones import normalize
from nst.backbones.vgg import conv_layer_names
from nst.backbones.vgg_net import VGG
from tests.conftest import random_params, smooth_image


@pytest.fixture(scope="module")
def setup():
    params = random_params("vgg16", 3)
    batch = [smooth_image(40, 56, seed=s) for s in range(3)]
    means = normalize.mean_activations(params, "vgg16", "caffe", batch)
    return params, batch, means


def test_normalized_net_has_mean_activation_one_per_filter(setup):
    params, batch, means = setup
    new = normalize.normalize_params(params, "vgg16", means)
    after = normalize.mean_activations(new, "vgg16", "caffe", batch)
    for name in conv_layer_names("vgg16"):
        live = means[name] > normalize.MIN_MEAN
        assert live.mean() > 0.5, name  # the check below must cover most filters
        np.testing.assert_allclose(after[name][live], 1.0, rtol=1e-2, err_msg=name)
        assert np.median(np.abs(after[name][live] - 1)) < 1e-4, name
        # Dead filters are left as they were.
        np.testing.assert_allclose(after[name][~live], means[name][~live], atol=1e-6)


def test_normalized_features_are_the_original_divided_by_the_means(setup):
    params, batch, means = setup
    new = normalize.normalize_params(params, "vgg16", means)
    for pooling in ("max", "avg"):
        m = VGG(pooling=pooling)
        x = jnp.asarray(batch[0])[None]
        a, b = m.apply({"params": params}, x), m.apply({"params": new}, x)
        for name in ("relu1_1", "conv2_1", "relu3_2", "pool4", "relu5_1"):
            conv = "conv" + name[4:] if not name.startswith("pool") else f"conv{name[4]}_3"
            s = np.where(means[conv] > normalize.MIN_MEAN, means[conv], 1.0)
            np.testing.assert_allclose(
                b[name], a[name] / s, rtol=2e-3, atol=1e-4 * float(np.abs(a[name] / s).max())
            )


def test_normalized_params_caches_the_means(tmp_path, monkeypatch, setup):
    params, _, means = setup
    monkeypatch.setenv("NST_CACHE_DIR", str(tmp_path))
    specs = ["sample:chelsea", "sample:coffee"]
    p1, info = normalize.normalized_params(params, "vgg16", "caffe", specs, 64)
    assert info["cache"] and (tmp_path / info["cache"].split("/")[-1]).is_file()
    # A second call reads the cache (a different image set gives a different file).
    p2, info2 = normalize.normalized_params(params, "vgg16", "caffe", specs, 64)
    assert info2["cache"] == info["cache"]
    np.testing.assert_array_equal(p1["conv3_1"]["kernel"], p2["conv3_1"]["kernel"])
    _, info3 = normalize.normalized_params(params, "vgg16", "caffe", specs[:1], 64)
    assert info3["cache"] != info["cache"]
    with pytest.raises(ValueError, match="empty"):
        normalize.normalized_params(params, "vgg16", "caffe", [], 64)
