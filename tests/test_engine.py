"""The jitted step on a tiny random VGG: losses fall, α/β do not recompile, chunking agrees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nst.engine import (
    BackboneSpec,
    LossSpec,
    State,
    call_boundaries,
    compute_targets,
    make_loss_fn,
    make_model,
    make_update_fn,
    stylize,
    trim_params,
)
from nst.optim import OptimizerSpec, make_optimizer
from nst.tracking.base import MetricWriter
from tests.conftest import smooth_image

SMALL = LossSpec(
    content_layers={"relu2_2": 1.0},
    style_layers={"relu1_1": 0.5, "relu2_1": 0.5},
    alpha=1.0,
    beta=1e2,
)


# The loop, the optimizers and the metrics are under test here, not the convolution: XLA's
# compiles in a fraction of Winograd's time (the default path runs in test_cli, test_api and
# test_batch). Average pooling where two computations of one step are compared: on a smooth
# image a max-pool's near-ties turn last-bit differences into different winners.
XLA = BackboneSpec(conv="xla")
XLA_AVG = BackboneSpec(conv="xla", pooling="avg")


class Recorder(MetricWriter):
    def __init__(self):
        self.rows, self.images = [], []

    def write_scalars(self, step, scalars):
        self.rows.append((step, dict(scalars)))

    def write_images(self, step, images):
        self.images.append(step)


@pytest.fixture(scope="module")
def pair():
    return smooth_image(24, 32, 1), smooth_image(24, 32, 2)


@pytest.mark.parametrize(
    "opt",
    [
        OptimizerSpec(name="adam", lr=5.0),
        OptimizerSpec(name="lbfgs", lr=None),
        OptimizerSpec(name="sgd", lr=1.0, decay_every=5),
    ],
    ids=["adam", "lbfgs", "sgd"],
)
@pytest.mark.parametrize("init", ["content", "noise"])
def test_optimizers_reduce_loss(vgg16_params, pair, opt, init):
    content, style = pair
    start = (
        content
        if init == "content"
        else np.random.default_rng(0).uniform(0, 255, content.shape).astype(np.float32)
    )
    rec = Recorder()
    r = stylize(
        content,
        style,
        start,
        vgg16_params,
        backbone=XLA,
        loss=SMALL,
        optimizer=opt,
        steps=12,
        log_every=4,
        writer=rec,
        progress=False,
    )
    assert r.final_metrics["total"] < 0.9 * r.initial_metrics["total"]
    assert [s for s, _ in rec.rows] == [0, 4, 8, 12]
    assert r.image.shape == content.shape and r.image.min() >= 0 and r.image.max() <= 255


def test_metrics_match_loss_terms(vgg16_params, pair):
    content, style = pair
    rec = Recorder()
    stylize(
        content,
        style,
        content,
        vgg16_params,
        backbone=XLA,
        loss=SMALL,
        optimizer=OptimizerSpec(),
        steps=2,
        log_every=1,
        writer=rec,
        progress=False,
    )
    step0 = rec.rows[0][1]
    assert step0["content"] == pytest.approx(0.0, abs=1e-6)  # init=content: no content loss yet
    style_sum = 0.5 * step0["style/relu1_1"] + 0.5 * step0["style/relu2_1"]
    assert step0["style"] == pytest.approx(style_sum, rel=1e-5)
    assert step0["total"] == pytest.approx(SMALL.beta * style_sum, rel=1e-5)
    assert {"tv", "content/relu2_2", "sec_per_step"} <= set(step0)


def _setup(params, pair, loss=SMALL):
    content, style = pair
    model = make_model(XLA_AVG, loss)
    p = trim_params(model, params)
    targets = compute_targets(model, p, content, style, loss)
    tx = make_optimizer(OptimizerSpec())
    img = jnp.asarray(content)
    return model, p, targets, tx, State(img, tx.init(img), jnp.zeros((), jnp.int32))


def test_changing_weights_does_not_recompile(vgg16_params, pair):
    model, p, targets, tx, state = _setup(vgg16_params, pair)
    update = jax.jit(make_update_fn(make_loss_fn(model, SMALL), tx))
    _, m1 = update(state, p, targets, SMALL.weights())
    other = LossSpec(**{**SMALL.__dict__, "alpha": 3.0, "beta": 1e4, "tv": 0.5})
    _, m2 = update(state, p, targets, other.weights())
    assert update._cache_size() == 1
    assert float(m2["total"][0]) != pytest.approx(float(m1["total"][0]))


def test_scan_chunk_equals_single_steps(vgg16_params, pair):
    model, p, targets, tx, state = _setup(vgg16_params, pair)
    loss_fn = make_loss_fn(model, SMALL)
    w = SMALL.weights()
    one = jax.jit(make_update_fn(loss_fn, tx))
    three = jax.jit(make_update_fn(loss_fn, tx, steps_per_call=3))
    s1 = state
    totals = []
    for _ in range(3):
        s1, m = one(s1, p, targets, w)
        totals.append(float(m["total"][0]))
    s3, m3 = three(state, p, targets, w)
    assert int(s3.step) == 3 and m3["total"].shape == (3,)
    np.testing.assert_allclose(np.asarray(m3["total"]), totals, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(s3.image), np.asarray(s1.image), atol=1e-2)


def test_stylize_with_chunks_logs_every_step(vgg16_params, pair):
    content, style = pair
    rec = Recorder()
    stylize(
        content,
        style,
        content,
        vgg16_params,
        backbone=XLA,
        loss=SMALL,
        optimizer=OptimizerSpec(),
        steps=7,
        log_every=2,
        save_every=3,
        steps_per_call=4,
        writer=rec,
        progress=False,
    )
    assert [s for s, _ in rec.rows] == [0, 2, 4, 6, 7]
    assert rec.images == [3, 6]


def test_call_boundaries():
    assert call_boundaries(10, 1, 0) == list(range(1, 11))
    assert call_boundaries(10, 4, 0) == [4, 8, 10]
    assert call_boundaries(10, 4, 3) == [3, 4, 6, 8, 9, 10]
    assert call_boundaries(0, 4, 3) == []


def test_deterministic(vgg16_params, pair):
    content, style = pair
    kw = dict(backbone=XLA, loss=SMALL, optimizer=OptimizerSpec(), steps=3, progress=False)
    a = stylize(content, style, content, vgg16_params, **kw).image
    b = stylize(content, style, content, vgg16_params, **kw).image
    assert np.array_equal(a, b)


def test_divergence_guard_stops_with_last_finite_image(vgg16_params, pair):
    from nst.engine import Diverged

    content, style = pair
    start = np.random.default_rng(0).uniform(0, 255, content.shape).astype(np.float32)
    rec = Recorder()
    huge = LossSpec(**{**SMALL.__dict__, "alpha": 1e38})  # content term overflows float32
    with pytest.raises(Diverged) as e:
        stylize(
            content,
            style,
            start,
            vgg16_params,
            backbone=XLA,
            loss=huge,
            optimizer=OptimizerSpec(),
            steps=5,
            writer=rec,
            progress=False,
        )
    assert e.value.step == 0
    np.testing.assert_array_equal(e.value.image, start)  # nothing was lost or corrupted
    assert not np.isfinite(e.value.metrics["total"])
    assert rec.rows and rec.rows[-1][0] == 0


def test_early_stop_on_plateau(vgg16_params, pair):
    content, style = pair
    rec = Recorder()
    r = stylize(
        content,
        style,
        content,
        vgg16_params,
        backbone=XLA,
        loss=SMALL,
        optimizer=OptimizerSpec(lr=1e-6),
        steps=50,
        log_every=2,
        writer=rec,
        progress=False,
        early_stop_patience=2,
        early_stop_min_delta=1e-3,
    )
    assert r.steps < 50  # stopped on the plateau
    assert [s for s, _ in rec.rows][-1] == r.steps
    moving = stylize(
        content,
        style,
        content,
        vgg16_params,
        backbone=XLA,
        loss=SMALL,
        optimizer=OptimizerSpec(lr=5.0),
        steps=8,
        log_every=2,
        progress=False,
        early_stop_patience=2,
    )
    assert moving.steps == 8


@pytest.mark.parametrize("conv", ["xla", pytest.param("winograd", marks=pytest.mark.slow)])
def test_bfloat16_backbone_step_runs_close_to_float32(vgg16_params, pair, conv):
    """backbone.dtype=bfloat16: the network runs in bf16 (Winograd transforms included, whose
    constants must not promote it back to f32), the pixels and Adam state stay f32, and the loss
    is close to the f32 network's."""
    totals = {}
    for dtype in ("float32", "bfloat16"):
        model = make_model(BackboneSpec(dtype=dtype, conv=conv), SMALL)
        content, style = pair
        p = trim_params(model, vgg16_params)
        targets = compute_targets(model, p, content, style, SMALL)
        tx = make_optimizer(OptimizerSpec())
        img = jnp.asarray(smooth_image(24, 32, 3))
        state = State(img, tx.init(img), jnp.zeros((), jnp.int32))
        update = jax.jit(make_update_fn(make_loss_fn(model, SMALL), tx))
        new, m = update(state, p, targets, SMALL.weights())
        assert new.image.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(new.image)))
        assert not np.array_equal(np.asarray(new.image), np.asarray(img))
        totals[dtype] = float(m["total"][0])
    assert totals["bfloat16"] == pytest.approx(totals["float32"], rel=5e-2)


def test_paper_style_losses_with_a_differently_sized_style(vgg16_params):
    """loss=paper through the engine (targets and step): each layer's style loss equals
    Σ(G/M_x − A/M_s)² / (4N²) computed in float64 NumPy from the network's own features, with
    style images smaller and larger than the content (the paper's eq. 4 when they match). With a
    content mask of ones the guided Grams must give the same numbers."""
    loss = LossSpec(
        content_layers={"relu2_2": 1.0},
        style_layers={"relu1_1": 1.0, "relu2_1": 1.0, "relu3_1": 1.0},
        gram_norm="paper",
        content_norm="paper",
    )
    content, image = smooth_image(24, 32, 1), jnp.asarray(smooth_image(24, 32, 3))
    model = make_model(BackboneSpec(conv="xla"), loss)  # the loss is under test
    params = trim_params(model, vgg16_params)
    loss_fn = jax.jit(make_loss_fn(model, loss))
    features = jax.jit(model.features)
    fx = features(params, image[None])
    for style_hw in [(16, 20), (40, 28)]:
        style = smooth_image(*style_hw, 2)
        fs = features(params, jnp.asarray(style)[None])
        for mask in (None, np.ones((24, 32), np.float32)):
            targets = compute_targets(model, params, content, style, loss, content_mask=mask)
            _, metrics = loss_fn(image, params, targets, loss.weights())
            for k in loss.style_layers:
                x = np.asarray(fx[k][0], np.float64).reshape(-1, fx[k].shape[-1])
                s = np.asarray(fs[k][0], np.float64).reshape(-1, fs[k].shape[-1])
                n = x.shape[1]
                want = np.sum((x.T @ x / len(x) - s.T @ s / len(s)) ** 2) / (4 * n**2)
                got = float(metrics[f"style/{k}"])
                np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=f"{k} {style_hw} {mask}")


def test_balance_grad_equalizes_the_terms_gradients(vgg16_params, pair):
    """loss.balance=grad: β is scaled by ||∇C||/||∇S|| at the (noise-mixed) initial image, so
    with α = β = 1 both terms pull equally hard there; the run records the factor."""
    import dataclasses

    from nst.engine import balance_scale, balanced, build

    content, style = pair
    loss = dataclasses.replace(SMALL, alpha=1.0, beta=1.0, balance="grad")
    prog = build(XLA, loss, OptimizerSpec(), vgg16_params, content, style)
    scale = balance_scale(prog, content)
    x = 0.5 * content + 0.5 * np.random.default_rng(0).uniform(0, 255, content.shape)
    x = jnp.asarray(x, jnp.float32)

    def grad_norm(spec):
        w = spec.weights()
        return float(
            jnp.linalg.norm(jax.grad(lambda i: prog.loss_fn(i, prog.params, prog.targets, w)[0])(x))
        )

    both = balanced(loss, scale)
    gc = grad_norm(dataclasses.replace(both, beta=0.0))
    gs = grad_norm(dataclasses.replace(both, alpha=0.0))
    assert scale > 0 and gc == pytest.approx(gs, rel=1e-4)
    r = stylize(
        content,
        style,
        content,
        vgg16_params,
        backbone=XLA,
        loss=loss,
        optimizer=OptimizerSpec(),
        steps=2,
        progress=False,
    )
    assert r.balance_scale == pytest.approx(scale, rel=1e-6)
