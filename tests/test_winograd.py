"""The fast convolution paths compute the same function: Winograd F(4x4,3x3) against a direct
NumPy correlation, the custom input-gradient against autodiff, the reshape max-pool against
reduce_window, and the planned network against the Flax module (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst.backbones import vgg, vgg_net, winograd
from nst.engine import BackboneSpec, LossSpec, features, make_model, trim_params
from tests.conftest import smooth_image


def numpy_conv_same(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """y[n,i,j,o] = sum_{a,b,c} xpad[n,i+a,j+b,c] k[a,b,c,o] (3x3, zero padding 1), float64."""
    n, h, w, _ = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros((n, h, w, k.shape[-1]))
    for a in range(3):
        for b in range(3):
            y += np.einsum("nhwc,co->nhwo", xp[:, a : a + h, b : b + w], k[a, b])
    return y


def _lax_conv(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize(
    "shape", [(1, 8, 8, 5, 7), (2, 7, 10, 3, 4), (1, 1, 3, 2, 2), (1, 13, 5, 16, 9)]
)
@pytest.mark.parametrize("m", [4, 2])
def test_winograd_equals_numpy_correlation(shape, m):
    n, h, w, c, o = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    k = rng.standard_normal((3, 3, c, o)).astype(np.float32)
    u = winograd.transform_kernel(jnp.asarray(k), m)
    got = np.asarray(winograd.conv3x3(jnp.asarray(x), u))
    ref = numpy_conv_same(x, k)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize(
    "impls",
    [
        ("xla", "xla"),
        ("winograd", "winograd"),
        ("xla", "winograd"),
        ("winograd_bf16", "winograd_bf16"),
        ("im2col_bf16", "im2col_bf16"),
        ("im2col_bf16", "winograd"),
        ("xla_bf16", "xla_bf16"),
    ],
)
def test_planned_conv_value_and_input_gradient(impls):
    """Value and input gradient of every implementation pair against float64 NumPy: float32
    forms to ~1e-5, bf16-operand forms to bf16 rounding (~0.3%; 1% allowed), float32 output."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 9, 14, 16)).astype(np.float32)
    k = (0.2 * rng.standard_normal((3, 3, 16, 12))).astype(np.float32)
    p = vgg_net.prepare_params(
        {"c": {"kernel": jnp.asarray(k), "bias": jnp.zeros(12)}}, [("c", *impls)]
    )["c"]
    cot = rng.standard_normal((2, 9, 14, 12)).astype(np.float32)
    y, vjp = jax.vjp(lambda x: vgg_net.conv3x3(x, p, impls), jnp.asarray(x))
    (g,) = vjp(jnp.asarray(cot))
    assert y.dtype == g.dtype == jnp.float32
    tol = [1e-2 if i.endswith("_bf16") else 1e-5 for i in impls]
    assert _rel(y, numpy_conv_same(x, k)) < tol[0]
    k_t = np.flip(k, (0, 1)).transpose(0, 1, 3, 2)  # the input gradient: the flipped kernel
    assert _rel(g, numpy_conv_same(cot, k_t)) < tol[1]


def test_bf16_winograd_uses_the_small_tile_for_accuracy():
    """bf16 operands in F(4x4,3x3) lose ~2% to rounding; F(2x2,3x3), the bf16 form, ~0.3%."""
    rng = np.random.default_rng(4)
    x = np.maximum(rng.standard_normal((1, 16, 20, 64)), 0).astype(np.float32)
    k = (0.05 * rng.standard_normal((3, 3, 64, 64))).astype(np.float32)
    ref = numpy_conv_same(x, k)
    errs = {
        m: _rel(
            jax.jit(winograd.conv3x3)(  # jitted: op-by-op dispatch took longer than compiling
                jnp.asarray(x), winograd.transform_kernel(jnp.asarray(k), m).astype(jnp.bfloat16)
            ),
            ref,
        )
        for m in (4, 2)
    }
    assert errs[2] < 6e-3 < errs[4], errs
    assert vgg_net.kernel_for("winograd_bf16", jnp.asarray(k)).shape == (16, 64, 64)


@pytest.mark.parametrize("hw", [(8, 6), (7, 9), (1, 5)])
def test_max_pool2_equals_reduce_window(hw):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, *hw, 3)).astype(np.float32))

    def ref(x):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    np.testing.assert_array_equal(vgg_net.max_pool2(x), ref(x))
    if hw[0] >= 2:  # no ties in random data: the gradients route to the same elements
        w = jnp.arange(ref(x).size, dtype=jnp.float32).reshape(ref(x).shape)
        g, g_ref = (
            jax.grad(lambda x, pool=pool: jnp.sum(pool(x) * w))(x)
            for pool in (vgg_net.max_pool2, ref)
        )
        np.testing.assert_array_equal(g, g_ref)


def test_conv_plan_rules():
    plan = {n: (f, b) for n, f, b in vgg.conv_plan("vgg16", "auto", "cpu")}
    assert plan["conv1_1"] == plan["conv1_2"] == ("xla", "xla")  # 3 and 64 channels
    assert plan["conv2_1"] == plan["conv5_3"] == ("winograd", "winograd")
    gpu = vgg.conv_plan("vgg19", "auto", "gpu")
    assert {(f, b) for _, f, b in gpu} == {("xla", "xla")}
    forced = {n: (f, b) for n, f, b in vgg.conv_plan("vgg16", "winograd", "gpu")}
    assert forced["conv1_1"] == ("xla", "xla") and forced["conv1_2"] == ("winograd", "winograd")
    with pytest.raises(ValueError, match="valid: auto, xla, winograd"):
        vgg.conv_plan("vgg16", "fft", "cpu")
    # bf16 products everywhere but the 3-channel first layer: F(2x2) Winograd's, block 1's
    # 64-channel layers included; with conv=xla the direct (im2col) form.
    bf16 = {n: (f, b) for n, f, b in vgg.conv_plan("vgg16", "auto", "cpu", "bfloat16")}
    assert bf16["conv1_1"] == ("xla", "xla") and bf16["conv1_2"] == ("winograd_bf16",) * 2
    assert bf16["conv2_1"] == bf16["conv5_3"] == ("winograd_bf16",) * 2
    assert vgg.conv_plan("vgg16", "winograd", "cpu", "bfloat16") == vgg.conv_plan(
        "vgg16", "auto", "cpu", "bfloat16"
    )
    direct = {n: (f, b) for n, f, b in vgg.conv_plan("vgg16", "xla", "cpu", "bfloat16")}
    assert direct["conv1_1"] == ("xla", "xla")
    assert direct["conv1_2"] == direct["conv5_3"] == ("im2col_bf16",) * 2
    # On accelerators XLA's convolution (cuDNN) stays, with bf16 operands.
    gpu16 = {n: (f, b) for n, f, b in vgg.conv_plan("vgg16", "auto", "gpu", "bfloat16")}
    assert gpu16["conv1_1"] == ("xla", "xla") and gpu16["conv5_1"] == ("xla_bf16",) * 2
    assert vgg.uses_bf16(tuple(vgg.conv_plan("vgg16", "xla", "cpu", "bfloat16")))
    assert not vgg.uses_bf16(vgg.conv_plan("vgg16", "auto", "cpu", "auto"))  # unmeasured: f32


@pytest.mark.slow  # ~50 s to compile each on a Zen 3 core pair: run by CI's slow step
@pytest.mark.parametrize("conv", ["auto", "winograd"])
def test_planned_network_equals_flax_module(vgg16_params, conv):
    """Features and the input gradient of a loss through every layer match the Flax VGG. Average
    pooling: Winograd and XLA round differently, and a max-pool window whose top two values are
    that close routes the gradient to either pixel depending on the CPU (the max-pool gradient
    itself is checked against reduce_window in test_max_pool2_equals_reduce_window)."""
    loss = LossSpec(content_layers={"relu4_2": 1.0}, style_layers={"relu1_1": 1.0, "relu5_1": 1.0})
    x = jnp.asarray(smooth_image(40, 52))[None]
    ref_model = make_model(BackboneSpec(conv="xla", pooling="avg"), loss).clone(conv_plan=())
    model = make_model(BackboneSpec(conv=conv, pooling="avg"), loss)
    assert any(f == "winograd" for _, f, _ in model.conv_plan)
    p_ref, p = trim_params(ref_model, vgg16_params), trim_params(model, vgg16_params)

    def f(m, p, x):
        feats = features(m, p, x)
        return sum(jnp.mean(feats[k] ** 2) for k in loss.layers), feats

    (v_ref, f_ref), g_ref = jax.value_and_grad(f, argnums=2, has_aux=True)(ref_model, p_ref, x)
    (v, f_got), g = jax.value_and_grad(f, argnums=2, has_aux=True)(model, p, x)
    for k in loss.layers:
        np.testing.assert_allclose(f_got[k], f_ref[k], rtol=1e-4, atol=1e-4 * float(f_ref[k].max()))
    assert float(v) == pytest.approx(float(v_ref), rel=1e-4)
    np.testing.assert_allclose(g, g_ref, atol=1e-3 * float(jnp.abs(g_ref).max()))


@pytest.mark.parametrize("form", ["winograd", "winograd_bf16"])
def test_vmapped_conv_folds_the_batch_and_matches_per_image(form):
    """Under vmap (the batched grid) each image gets exactly its own convolution and gradient."""
    rng = np.random.default_rng(3)
    xs = jnp.asarray(rng.standard_normal((3, 1, 10, 12, 8)).astype(np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, 8, 128)).astype(np.float32))
    impls = (form, form)
    p = vgg_net.prepare_params({"c": {"kernel": k, "bias": jnp.zeros(128)}}, [("c", *impls)])["c"]

    def f(x):
        return jnp.sum(jnp.sin(vgg_net.conv3x3(x, p, impls)))

    # jitted: op-by-op dispatch took longer than compiling
    v, g = jax.jit(jax.vmap(jax.value_and_grad(f)))(xs)
    single = jax.jit(jax.value_and_grad(f))
    for i in range(3):
        vi, gi = single(xs[i])
        # Folding changes the GEMMs' shapes, hence their rounding (~1e-5 of the largest
        # gradient); another image's data would be off by the order of the gradient itself.
        assert float(v[i]) == pytest.approx(float(vi), rel=1e-5)
        np.testing.assert_allclose(g[i], gi, atol=1e-4 * float(jnp.abs(gi).max()))
