"""The optimization engine: targets, the jitted loss-and-grad step and the step loop.

Everything here takes arrays and plain values (no DictConfig). The update follows big_vision's
pattern: ``update(state, params, targets, weights) -> (state, metrics)`` is a pure function, jitted
where it is called with the state donated; backbone params and loss weights are arguments, so
changing α/β (or per-layer weights) never recompiles. Metrics stay on the device until a log step.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from nst import losses
from nst.backbones import BackboneSpec, Network, get_backbone
from nst.files import atomic_write_bytes
from nst.loss_spec import LossSpec
from nst.optim import OptimizerSpec, make_optimizer
from nst.tracking.base import MetricWriter

PIXEL_MAX = 255.0

Params = Mapping[str, Mapping[str, Any]]
Metrics = dict[str, jnp.ndarray]


class State(NamedTuple):
    """Optimization state: the image being optimized (``(H, W, 3)``, 0..255), optimizer state and
    the number of updates applied so far."""

    image: jnp.ndarray
    opt_state: Any
    step: jnp.ndarray


def make_model(
    backbone: BackboneSpec, loss: LossSpec, hw: tuple[int, int] | None = None
) -> Network:
    """The registered backbone's network for the loss's layers (stops at the deepest); ``hw``,
    the optimized image's size, for backbones that plan their computation by size."""
    if hw is not None and backbone.step_hw is None:
        backbone = dataclasses.replace(backbone, step_hw=(int(hw[0]), int(hw[1])))
    return get_backbone(backbone.arch).network(backbone, loss.layers, loss)


def strip_blocks(backbone: BackboneSpec, loss: LossSpec) -> int:
    """How many leading blocks the backbone runs in row strips for this loss (remat)."""
    return get_backbone(backbone.arch).strip_blocks(backbone, loss)


def features(model: Network, params: Params, x: jnp.ndarray) -> dict[str, jnp.ndarray]:
    """``model``'s activations of ``x`` (``(N, H, W, 3)``), ``params`` from :func:`trim_params`."""
    return model.features(params, x)


def features_and_grams(
    model: Network, params: Params, x: jnp.ndarray
) -> tuple[dict[str, jnp.ndarray], dict[str, jnp.ndarray]]:
    """:func:`features`, some layers possibly as unnormalized Grams (Network protocol)."""
    return model.features_and_grams(params, x)


def trim_params(model: Network, params: Params) -> Any:
    """The parameters ``model`` uses, on the device, prepared once per run."""
    return model.prepare(params)


def style_statistics(feats: jnp.ndarray, loss: LossSpec) -> Any:
    """What the style loss matches for one layer: the Gram A_l, or (mean, covariance)."""
    if loss.style == "mean_cov":
        return losses.feature_stats(feats)
    return losses.gram(feats, loss.gram_norm)


def compute_targets(
    model: Network,
    params: Params,
    content: np.ndarray,
    style: np.ndarray | Sequence[np.ndarray],
    loss: LossSpec,
    style_blend: Sequence[float] | None = None,
    content_mask: np.ndarray | None = None,
    style_masks: Sequence[np.ndarray | None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Content features P_l and style statistics A_l, computed once per run (``(H, W, 3)``
    inputs). Several style images (any sizes) blend their statistics with the weights
    ``style_blend`` (default equal): A_l = Σ_i b_i·A_l(style_i).

    With ``content_mask`` (``(H, W)`` in 0..1) style i is routed to a region instead (guided
    Grams, Gatys et al. 2017 Sec. 4.1): one style styles the bright region; two style the dark
    and the bright region. ``style_masks[i]`` limits the statistics of style i to part of it.
    Targets then also hold each region's guidance channel at every style layer's resolution."""
    styles = [style] if isinstance(style, np.ndarray | jnp.ndarray) else list(style)
    if content_mask is not None:
        return _guided_targets(model, params, content, styles, loss, content_mask, style_masks)
    blend = [1.0 / len(styles)] * len(styles) if style_blend is None else list(style_blend)
    if len(blend) != len(styles):
        raise ValueError(f"{len(styles)} style images but {len(blend)} blend weights")

    # Through features_and_grams: with remat the first blocks run in strips here too, so the
    # targets of a large image need no more memory than its steps.
    @jax.jit
    def content_targets(params, content):
        fc, _ = features_and_grams(model, params, content[None])
        return {k: fc[k] for k in loss.content_layers}

    @jax.jit
    def style_targets(params, style):
        fs, grams = features_and_grams(model, params, style[None])
        h, w = style.shape[:2]
        return {
            k: losses.normalize_gram(grams[k], _positions(model.arch, k, h, w), loss.gram_norm)
            if k in grams
            else style_statistics(fs[k], loss)
            for k in loss.style_layers
        }

    mixed = None
    for b, s in zip(blend, styles, strict=True):
        t = jax.tree.map(lambda x, b=b: jnp.float32(b) * x, style_targets(params, jnp.asarray(s)))
        mixed = t if mixed is None else jax.tree.map(jnp.add, mixed, t)
    return {"content": content_targets(params, jnp.asarray(content)), "style": mixed or {}}


def downsample_mask(mask: np.ndarray, pools: int) -> np.ndarray:
    """A ``(H, W)`` mask at the resolution after ``pools`` 2x2 VALID poolings (block means)."""
    m = np.asarray(mask, np.float32)
    for _ in range(pools):
        h, w = m.shape[0] // 2, m.shape[1] // 2
        m = m[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))
    return m


def _guided_targets(model, params, content, styles, loss, content_mask, style_masks):
    downsampling = get_backbone(model.arch).downsampling
    if len(styles) not in (1, 2):
        raise ValueError(f"a content mask routes 1 or 2 style images, got {len(styles)}")
    if loss.style != "gram":
        raise ValueError("masks work with loss.style=gram")
    cm = np.clip(np.asarray(content_mask, np.float32), 0.0, 1.0)
    regions = [cm] if len(styles) == 1 else [1.0 - cm, cm]
    masks = list(style_masks) if style_masks is not None else [None] * len(styles)
    feats = jax.jit(lambda p, x: features(model, p, x[None]))
    fc = feats(params, jnp.asarray(content))
    style_t, guide = {}, {}
    for k in loss.style_layers:
        pools = downsampling(k)
        guide[k] = jnp.stack([jnp.asarray(downsample_mask(r, pools)) for r in regions])
    for i, s in enumerate(styles):
        fs = feats(params, jnp.asarray(s))
        for k in loss.style_layers:
            sm = masks[i] if masks[i] is not None else np.ones(s.shape[:2], np.float32)
            g = losses.guided_gram(
                fs[k][0],
                jnp.asarray(downsample_mask(sm, downsampling(k))),
                loss.gram_norm,
            )
            style_t.setdefault(k, []).append(g)
    return {
        "content": {k: fc[k] for k in loss.content_layers},
        "style": {k: jnp.stack(v) for k, v in style_t.items()},
        "guide": guide,
    }


def make_loss_fn(model: Network, loss: LossSpec) -> Callable[..., tuple[jnp.ndarray, Metrics]]:
    """``loss_fn(image, params, targets, weights) -> (total, metrics)``.

    total = α·Σ_l wc_l·C_l + β·Σ_l ws_l·E_l + tv·TV (paper eq. 7 plus TV). ``metrics`` holds the
    total, the weighted content/style sums before α/β, TV, and every layer's unweighted loss.
    """
    content_layers = list(loss.content_layers)
    style_layers = list(loss.style_layers)

    def loss_fn(image, params, targets, weights):
        grams: dict[str, jnp.ndarray] = {}
        if "guide" in targets:  # guided Grams need whole activations
            feats = features(model, params, image[None])
        else:
            feats, grams = features_and_grams(model, params, image[None])
        c = {
            k: losses.content_loss(feats[k], targets["content"][k], loss.content_norm)
            for k in content_layers
        }
        if "guide" in targets:  # guided Grams: each style matched in its region only
            s = {
                k: sum(
                    losses.guided_style_loss(
                        feats[k][0], targets["guide"][k][r], targets["style"][k][r], loss.gram_norm
                    )
                    for r in range(targets["guide"][k].shape[0])
                )
                for k in style_layers
            }
        elif loss.style == "mean_cov":
            s = {
                k: losses.mean_cov_loss(feats[k], targets["style"][k], loss.gram_norm)
                for k in style_layers
            }
        else:
            h, w = image.shape[-3:-1]
            s = {
                k: losses.gram_style_loss(
                    grams[k], _positions(model.arch, k, h, w), targets["style"][k], loss.gram_norm
                )
                if k in grams
                else losses.style_layer_loss(feats[k], targets["style"][k], loss.gram_norm)
                for k in style_layers
            }
        content = sum((weights["content"][k] * v for k, v in c.items()), jnp.float32(0))
        style = sum((weights["style"][k] * v for k, v in s.items()), jnp.float32(0))
        tv = losses.tv_loss(image)
        total = weights["alpha"] * content + weights["beta"] * style + weights["tv"] * tv
        metrics = {"total": total, "content": content, "style": style, "tv": tv}
        metrics.update({f"content/{k}": v for k, v in c.items()})
        metrics.update({f"style/{k}": v for k, v in s.items()})
        return total, metrics

    return loss_fn


def _positions(arch: str, layer: str, h: int, w: int) -> int:
    lh, lw = get_backbone(arch).layer_size(layer, h, w)
    return lh * lw


def make_update_fn(
    loss_fn: Callable[..., tuple[jnp.ndarray, Metrics]],
    tx: optax.GradientTransformation,
    *,
    needs_value_fn: bool = False,
    steps_per_call: int = 1,
) -> Callable[..., tuple[State, Metrics]]:
    """``update(state, params, targets, weights) -> (state, metrics)`` running ``steps_per_call``
    steps. ``metrics[k]`` has shape ``(steps_per_call,)``: the loss terms *before* each update.
    Pixels are clipped to 0..255 after every update (a box constraint by projection)."""

    def one(state: State, params, targets, weights) -> tuple[State, Metrics]:
        (value, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(
            state.image, params, targets, weights
        )
        if needs_value_fn:
            updates, opt_state = tx.update(
                grad,
                state.opt_state,
                state.image,
                value=value,
                grad=grad,
                value_fn=lambda x: loss_fn(x, params, targets, weights)[0],
            )
        else:
            updates, opt_state = tx.update(grad, state.opt_state, state.image)
        image = jnp.clip(optax.apply_updates(state.image, updates), 0.0, PIXEL_MAX)
        # Divergence guard: a non-finite loss or update leaves the state as it was (the last
        # finite image) and flags the step, so the host can stop without losing the image.
        ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(image))
        new = State(image, opt_state, state.step + 1)
        state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        return state, {**metrics, "finite": ok}

    if steps_per_call == 1:

        def update(state, params, targets, weights):
            state, metrics = one(state, params, targets, weights)
            return state, jax.tree.map(lambda m: m[None], metrics)

        return update

    def update(state, params, targets, weights):
        def body(s, _):
            return one(s, params, targets, weights)

        return jax.lax.scan(body, state, None, length=steps_per_call)

    return update


def default_steps_per_call() -> int:
    """Steps per jitted call. On XLA:CPU a step inside lax.scan/fori_loop measured ~2.6x slower
    than separate jitted calls (docs/performance.md), and Python dispatch is negligible
    next to a ~0.5 s step, so CPU runs one step per call; accelerators amortize dispatch."""
    return 1 if jax.default_backend() == "cpu" else 10


def call_boundaries(
    steps: int, steps_per_call: int, save_every: int, checkpoint_every: int = 0
) -> list[int]:
    """Step counts at which jitted calls end: every ``steps_per_call`` steps, also at every
    snapshot and checkpoint step (so they need no extra sync, and a resumed run makes the same
    calls as an uninterrupted one) and at ``steps``."""
    ends = set(range(steps_per_call, steps, steps_per_call)) | {steps}
    for every in (save_every, checkpoint_every):
        if every > 0:
            ends |= set(range(every, steps, every))
    return sorted(e for e in ends if 0 < e <= steps)


def compile_calls(
    make_update: Callable[[int], Callable[..., Any]],
    args: tuple[Any, ...],
    ends: Sequence[int],
    start: int = 0,
    **jit_kwargs: Any,
) -> dict[int, Any]:
    """Ahead-of-time executables of ``make_update(n)`` (state donated) for every distinct call
    length n between ``start`` and the call ``ends`` (:func:`call_boundaries`), keyed by n, so
    compile time is reported apart from step time. ``jit_kwargs`` go to ``jax.jit`` (shardings)."""
    if not ends:  # steps=0 (or resumed at the end): nothing to run, the result is the start
        return {}
    lengths = sorted({b - a for a, b in zip([start, *ends[:-1]], ends, strict=True)})
    return {
        n: jax.jit(make_update(n), donate_argnums=0, **jit_kwargs).lower(*args).compile()
        for n in lengths
    }


def job_devices(batch: int, devices: Sequence[Any] | None = None) -> list[Any]:
    """The local devices a batch of ``batch`` jobs is split over: the most of them that divide
    the batch evenly (every device runs the same number of jobs; 6 jobs on 4 devices use 3)."""
    devices = list(jax.local_devices() if devices is None else devices)
    n = max(d for d in range(1, min(len(devices), batch) + 1) if batch % d == 0)
    return devices[:n]


def metric_order(loss: LossSpec) -> list[str]:
    """The metric names in the loss function's order (total, content, style, tv, then per
    layer); pytrees sort dict keys, logs should not."""
    order = ["total", "content", "style", "tv"]
    order += [f"content/{k}" for k in loss.content_layers]
    return order + [f"style/{k}" for k in loss.style_layers]


@dataclass
class Program:
    """Everything a run's step is compiled against, assembled once by :func:`build`: single runs,
    the batched launcher, ``nst-bench`` and the calibration tool all start here. With ``batch``
    the state and the weights carry a leading job axis of that length (the step is vmapped over
    them; the network, its parameters and the targets are shared)."""

    model: Network
    params: Any
    targets: dict[str, Any]
    loss: LossSpec
    optimizer: OptimizerSpec
    loss_fn: Callable[..., tuple[jnp.ndarray, Metrics]]
    tx: optax.GradientTransformation
    batch: int | None = None
    # With ``batch``: the devices the job axis is sharded over (:func:`job_devices`); the
    # network, its parameters and the targets are replicated on each.
    devices: tuple[Any, ...] = ()

    @property
    def sharded(self) -> bool:
        return self.batch is not None and len(self.devices) > 1

    def _shardings(self) -> tuple[Any, Any]:
        """(per-job, replicated) shardings over :attr:`devices` (``sharded`` programs only)."""
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        mesh = Mesh(np.asarray(self.devices), ("jobs",))
        return NamedSharding(mesh, PartitionSpec("jobs")), NamedSharding(mesh, PartitionSpec())

    def place(self, tree: Any, per_job: bool = True) -> Any:
        """``tree`` on the program's devices: split along the job axis (``per_job``) or
        replicated; on the default device where the program is not sharded."""
        if not self.sharded:
            return jax.device_put(tree)
        jobs, replicated = self._shardings()
        return jax.device_put(tree, jobs if per_job else replicated)

    def weights(self, losses: Sequence[LossSpec] | None = None) -> Any:
        """The loss weights as a jit argument (per job with ``batch``: ``losses`` or this one;
        a single run may pass ``[loss]`` to use another's weights)."""
        if self.batch is None:
            return jax.device_put((losses[0] if losses else self.loss).weights())
        each = [x.weights() for x in (losses or [self.loss] * self.batch)]
        return self.place(jax.tree.map(lambda *xs: np.stack([np.float32(x) for x in xs]), *each))

    def init_state(self, images: Any) -> State:
        """The state for ``images`` (``(H, W, 3)``, or ``(B, H, W, 3)`` with ``batch``), one
        buffer per leaf so it can be donated (optimizer inits may alias one zeros array)."""
        images = jnp.asarray(images, jnp.float32)
        init = self.tx.init if self.batch is None else jax.vmap(self.tx.init)
        step = jnp.zeros(() if self.batch is None else (self.batch,), jnp.int32)
        state = State(images, init(images), step)
        state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)
        return self.place(state) if self.sharded else state

    def update_fn(self, steps_per_call: int = 1) -> Callable[..., tuple[State, Metrics]]:
        """``update(state, params, targets, weights)`` (vmapped over jobs with ``batch``)."""
        single = make_update_fn(
            self.loss_fn,
            self.tx,
            needs_value_fn=self.optimizer.needs_value_fn,
            steps_per_call=steps_per_call,
        )
        return single if self.batch is None else jax.vmap(single, in_axes=(0, None, None, 0))

    def compile(
        self, state: State, weights: Any, ends: Sequence[int], start: int = 0
    ) -> tuple[dict[int, Any], Any, float]:
        """Ahead-of-time executables for the calls ending at ``ends`` (:func:`compile_calls`),
        the final-loss evaluator ``evaluate(state, params, targets, weights) -> metrics`` (it
        may consume ``state``), and the seconds compiling took (reported apart from steps)."""
        t0 = time.perf_counter()
        args = (state, self.params, self.targets, weights)
        kw: dict[str, Any] = {}
        if self.sharded:  # every leaf of the state, the weights and the metrics has a job axis
            jobs, rep = self._shardings()
            kw = {"in_shardings": (jobs, rep, rep, jobs), "out_shardings": jobs}
        compiled = compile_calls(self.update_fn, args, ends, start, **kw)
        if 1 in compiled:
            # A one-step call's metrics are the losses of the image it is given: one more step
            # (its update discarded) costs less than compiling the loss alone.
            one = compiled[1]

            def evaluate(st, *rest):
                return {k: v[..., 0] for k, v in one(st, *rest)[1].items() if k != "finite"}

        else:
            fn = self.loss_fn if self.batch is None else jax.vmap(self.loss_fn, (0, None, None, 0))
            loss = jax.jit(fn, **kw).lower(state.image, *args[1:]).compile()

            def evaluate(st, *rest):
                return loss(st.image, *rest)[1]

        return compiled, evaluate, time.perf_counter() - t0


def build(
    backbone: BackboneSpec,
    loss: LossSpec,
    optimizer: OptimizerSpec,
    params: Params,
    content: np.ndarray | None = None,
    style: np.ndarray | Sequence[np.ndarray] | None = None,
    *,
    style_blend: Sequence[float] | None = None,
    content_mask: np.ndarray | None = None,
    style_masks: Sequence[np.ndarray | None] | None = None,
    targets: dict[str, Any] | None = None,
    batch: int | None = None,
    devices: Sequence[Any] | None = None,
) -> Program:
    """The network for ``loss``'s layers, its prepared ``params``, the targets of ``content`` and
    ``style`` (:func:`compute_targets`; or ``targets`` given), the loss and the optimizer. A
    ``batch`` of jobs is sharded over ``devices`` (default: :func:`job_devices` of all local
    devices)."""
    model = make_model(backbone, loss, None if content is None else np.shape(content)[:2])
    prepared = trim_params(model, params)
    if targets is None:
        targets = compute_targets(
            model, prepared, content, style, loss, style_blend, content_mask, style_masks
        )
    prog = Program(
        model=model,
        params=prepared,
        targets=targets,
        loss=loss,
        optimizer=optimizer,
        loss_fn=make_loss_fn(model, loss),
        tx=make_optimizer(optimizer),
        batch=batch,
        devices=tuple(job_devices(batch, devices)) if batch is not None else (),
    )
    if prog.sharded:
        prog.params = prog.place(prog.params, per_job=False)
        prog.targets = prog.place(prog.targets, per_job=False)
    return prog


def save_checkpoint(path: str | Path, state: State, meta: str = "") -> Path:
    """The whole state (pixels, optimizer state leaves, step) as one .npz, written atomically,
    with ``meta`` (the run's JSON record of what the state belongs to) as a string array."""
    leaves = jax.tree.leaves(jax.device_get(state))
    buf = io.BytesIO()
    np.savez(
        buf,
        step=np.asarray(state.step),
        meta=np.asarray(meta),
        **{f"leaf_{i:04d}": np.asarray(x) for i, x in enumerate(leaves)},
    )
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a checkpoint written by :func:`save_checkpoint` (no pickles are read)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def restore_state(template: State, ckpt: Mapping[str, np.ndarray]) -> State:
    """Rebuild a :class:`State` shaped like ``template`` from checkpoint arrays (exact bits)."""
    from nst.rundir import CheckpointError

    leaves, treedef = jax.tree.flatten(template)
    hint = "delete the checkpoint to start over, or run without resume=true in another directory"
    if len(ckpt) < len(leaves) or any(f"leaf_{i:04d}" not in ckpt for i in range(len(leaves))):
        raise CheckpointError(f"the checkpoint holds fewer state arrays than this run; {hint}")
    saved = [ckpt[f"leaf_{i:04d}"] for i in range(len(leaves))]
    for i, (a, b) in enumerate(zip(leaves, saved, strict=True)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise CheckpointError(
                f"the checkpoint does not fit this run (state array {i} is {b.dtype}{b.shape}, "
                f"expected {a.dtype}{a.shape}); {hint}"
            )
    return jax.tree.unflatten(treedef, [jnp.array(x) for x in saved])


class Interrupted(Exception):
    """A signal asked the run to stop; a checkpoint was written at ``step``."""

    def __init__(self, step: int, image: np.ndarray):
        super().__init__(f"interrupted at step {step}")
        self.step, self.image = step, image


class Diverged(Exception):
    """The loss or the pixels became non-finite at ``step``; ``image`` is the last finite image
    (the one whose loss was evaluated at ``step``) and ``metrics`` that step's losses."""

    def __init__(self, step: int, image: np.ndarray, metrics: dict[str, float]):
        super().__init__(f"loss or pixels became non-finite at step {step}")
        self.step, self.image, self.metrics = step, image, metrics


def balance_scale(prog: Program, image: np.ndarray, seed: int = 0) -> float:
    """``loss.balance=grad``: the factor ||∇C|| / ||∇S|| (content and style terms, each with its
    layer weights, before α/β) by which the style term is scaled so that both pull on the pixels
    equally hard at the start; α/β then sets the balance from there, the same on every image
    pair. Measured at the initial image, half-mixed with seeded white noise: from the content
    image itself the content gradient is exactly zero."""
    rng = np.random.default_rng(seed)
    x = 0.5 * np.asarray(image, np.float32) + 0.5 * rng.uniform(0, PIXEL_MAX, np.shape(image))
    x = jnp.asarray(x, jnp.float32)

    def norm(alpha: float, beta: float) -> float:
        w = dataclasses.replace(prog.loss, alpha=alpha, beta=beta, tv=0.0).weights()
        g = jax.grad(lambda img: prog.loss_fn(img, prog.params, prog.targets, w)[0])(x)
        return float(jnp.linalg.norm(g))

    gc, gs = norm(1.0, 0.0), norm(0.0, 1.0)
    if not (gc > 0 and gs > 0 and np.isfinite(gc) and np.isfinite(gs)):
        return 1.0  # one term is absent (no content or style layers): nothing to balance
    return gc / gs


def balanced(loss: LossSpec, scale: float) -> LossSpec:
    """``loss`` with β multiplied by the balance ``scale``."""
    return dataclasses.replace(loss, beta=loss.beta * scale)


@dataclass
class RunResult:
    """What :func:`stylize` hands back: the final image and the numbers for summary.json."""

    image: np.ndarray
    final_metrics: dict[str, float]
    initial_metrics: dict[str, float]
    steps: int
    compile_s: float
    optimize_s: float
    sec_per_step: float
    balance_scale: float | None = None  # loss.balance=grad: the factor applied to β
    devices: list[str] = field(default_factory=list)  # where the image was optimized
    # How each convolution ran: (layer, forward, input gradient) (backbone.compute_dtype=auto
    # chooses per machine; empty for backbones without a plan).
    conv_plan: list[tuple[str, str, str]] = field(default_factory=list)


def stylize(
    content: np.ndarray,
    style: np.ndarray,
    init: np.ndarray,
    params: Params,
    *,
    backbone: BackboneSpec,
    loss: LossSpec,
    optimizer: OptimizerSpec,
    steps: int,
    log_every: int = 10,
    save_every: int = 0,
    steps_per_call: int = 0,
    writer: MetricWriter | None = None,
    progress: bool = True,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 0,
    checkpoint_meta: str = "",
    resume_state: Mapping[str, np.ndarray] | None = None,
    should_stop: Callable[[], bool] | None = None,
    early_stop_patience: int = 0,
    early_stop_min_delta: float = 1e-3,
    style_blend: Sequence[float] | None = None,
    content_mask: np.ndarray | None = None,
    style_masks: Sequence[np.ndarray | None] | None = None,
    image_metrics: Callable[[np.ndarray], dict[str, float]] | None = None,
    image_metrics_every: int = 0,
) -> RunResult:
    """Optimize ``init`` (``(H, W, 3)``, 0..255) so its features match ``content``'s and its Grams
    match ``style``'s. Logs rows at step 0, every ``log_every`` steps and at ``steps`` (the
    losses of the image after that many updates), snapshots every ``save_every`` steps.

    Every ``checkpoint_every`` steps the full state (pixels, optimizer state, step) is written
    atomically to ``checkpoint_path``; ``resume_state`` (from :func:`load_checkpoint`) continues
    from one, bit-identically on CPU. ``should_stop()`` is polled after every call (signal
    handlers set it): the state is checkpointed and :class:`Interrupted` raised.

    Early stopping (``early_stop_patience`` > 0): the run ends when the total loss has not fallen
    by a relative ``early_stop_min_delta`` over ``early_stop_patience`` consecutive log rows.

    ``image_metrics(image)`` (e.g. :mod:`nst.evaluate`) adds numbers to the final row and to the
    log rows every ``image_metrics_every`` steps; the learning rate of a scheduled optimizer is
    logged as ``lr``."""
    writer = writer or MetricWriter()
    prog = build(
        backbone,
        loss,
        optimizer,
        params,
        content,
        style,
        style_blend=style_blend,
        content_mask=content_mask,
        style_masks=style_masks,
    )
    scale = balance_scale(prog, init) if loss.balance == "grad" else None
    weights = prog.weights([balanced(loss, scale)] if scale is not None else None)
    k = steps_per_call or default_steps_per_call()
    state = prog.init_state(init)
    start = 0
    if resume_state is not None:
        state = restore_state(state, resume_state)
        start = int(resume_state["step"])
    ends = [e for e in call_boundaries(steps, k, save_every, checkpoint_every) if e > start]
    if progress:  # the silent part before the bar: say what it is
        print("nst: compiling the step ...", end="", file=sys.stderr, flush=True)
    compiled, evaluate, compile_s = prog.compile(state, weights, ends, start)
    if progress:
        print(f" {compile_s:.1f} s", file=sys.stderr, flush=True)

    (out,) = drive_calls(
        compiled,
        evaluate,
        state,
        (prog.params, prog.targets, weights),
        batched=False,
        writers=[writer],
        checkpoint_paths=[checkpoint_path],
        checkpoint_meta=[checkpoint_meta],
        order=metric_order(loss),
        steps=steps,
        ends=ends,
        start=start,
        log_every=log_every,
        save_every=save_every,
        checkpoint_every=checkpoint_every,
        should_stop=should_stop,
        early_stop_patience=early_stop_patience,
        early_stop_min_delta=early_stop_min_delta,
        progress=progress,
        desc="nst",
        compile_s=compile_s,
        step_metrics=learning_rate_fn(optimizer),
        image_metrics=[image_metrics],
        image_metrics_every=image_metrics_every,
    )
    if isinstance(out, Exception):
        raise out
    out.balance_scale = scale
    out.conv_plan = planned(prog)
    return out


def drive_calls(
    compiled: Mapping[int, Any],
    evaluate: Any,
    state: State,
    args: tuple[Any, Any, Any],
    *,
    batched: bool,
    writers: Sequence[MetricWriter],
    checkpoint_paths: Sequence[str | Path | None],
    checkpoint_meta: Sequence[str] = (),
    order: Sequence[str],
    steps: int,
    ends: Sequence[int],
    start: int = 0,
    log_every: int = 10,
    save_every: int = 0,
    checkpoint_every: int = 0,
    should_stop: Callable[[], bool] | None = None,
    early_stop_patience: int = 0,
    early_stop_min_delta: float = 1e-3,
    progress: bool = True,
    desc: str = "nst",
    compile_s: float = 0.0,
    step_metrics: Callable[[int], dict[str, float]] | None = None,
    image_metrics: Sequence[Callable[[np.ndarray], dict[str, float]] | None] = (),
    image_metrics_every: int = 0,
) -> list[RunResult | Diverged | Interrupted]:
    """The host side of one optimization, or of B jobs optimized as one batched program: runs
    the ahead-of-time executables ``compiled[n]`` (n steps each, see :func:`compile_calls`) up to
    each of ``ends``, and per job writes the log rows, snapshots and checkpoints, and detects
    divergence, interruption and (single runs only) a plateau. ``batched`` states and metrics
    carry a leading job axis of ``len(writers)``; ``evaluate(state, *args)`` gives the final
    losses. Returns each job's :class:`RunResult`, or its :class:`Diverged`/:class:`Interrupted`
    (a diverged job's slice is not logged, saved or checkpointed again; the others go on).
    ``step_metrics(step)`` adds to every row (the learning rate); ``image_metrics[j](image)`` to
    job j's final row and, every ``image_metrics_every`` steps, to its log rows."""
    b = len(writers)
    measures = list(image_metrics) + [None] * (b - len(image_metrics))
    if batched and early_stop_patience > 0:
        raise ValueError("batched jobs do not stop early (such jobs run alone)")

    def pick(x: Any, j: int) -> Any:
        return x[j] if batched else x

    def job_state(st: State, j: int) -> State:
        return jax.tree.map(lambda x: x[j], st) if batched else st

    out: list[Any] = [None] * b
    initial: list[dict[str, float]] = [{} for _ in range(b)]
    best, stale = [float("inf")] * b, [0] * b
    step_times: list[float] = []
    last_log_t, last_log_step = time.perf_counter(), start
    t_start = time.perf_counter()
    done = start
    params, targets, weights = args
    with tqdm(
        total=steps, initial=start, unit="step", desc=desc, disable=not progress, dynamic_ncols=True
    ) as bar:
        for end in ends:
            pre: dict[int, dict[str, float]] = {}
            every = image_metrics_every
            if every > 0 and done % every == 0 and done % log_every == 0 and any(measures):
                images = np.asarray(jax.device_get(state.image))  # before the call donates it
                pre = {
                    j: measures[j](pick(images, j))
                    for j in range(b)
                    if measures[j] is not None and out[j] is None
                }
            tc = time.perf_counter()
            state, metrics = compiled[end - done](state, params, targets, weights)
            # (k,) or (B, k) flags, and the bar's current loss: a tiny sync per call
            finite, totals = jax.device_get((metrics["finite"], metrics["total"]))
            finite = np.asarray(finite)
            if b == 1 and progress:
                bar.set_postfix(loss=f"{float(np.asarray(totals)[-1]):.4g}", refresh=False)
            step_times.append((time.perf_counter() - tc) / (end - done))
            host = None
            for j in range(b):
                if out[j] is None and not pick(finite, j).all():
                    host = host or jax.device_get(metrics)
                    bad = done + int(np.argmin(pick(finite, j)))
                    last = {n: float(pick(host[n], j)[bad - done]) for n in order}
                    writers[j].write_scalars(bad, {**last, "sec_per_step": step_times[-1]})
                    out[j] = Diverged(bad, np.asarray(jax.device_get(pick(state.image, j))), last)
            log_steps = [s for s in range(done, end) if s % log_every == 0]
            if log_steps:
                host = host or jax.device_get(metrics)
                now = time.perf_counter()
                sps = (now - last_log_t) / max(end - last_log_step, 1)
                for j in range(b):
                    if out[j] is not None:
                        continue
                    for s in log_steps:
                        row = {n: float(pick(host[n], j)[s - done]) for n in order}
                        row["sec_per_step"] = sps
                        if step_metrics is not None:
                            row.update(step_metrics(s))
                        if s == done and j in pre:
                            row.update(pre[j])
                        writers[j].write_scalars(s, row)
                        if s == 0:
                            initial[j] = row
                    if early_stop_patience > 0:
                        improved = row["total"] < best[j] * (1.0 - early_stop_min_delta)
                        best[j], stale[j] = (
                            (row["total"], 0) if improved else (best[j], stale[j] + 1)
                        )
                last_log_t, last_log_step = now, end
            bar.update(end - done)
            done = end
            live = [j for j in range(b) if out[j] is None]
            if save_every > 0 and done % save_every == 0 and done < steps and live:
                images = np.asarray(jax.device_get(state.image))
                for j in live:
                    writers[j].write_images(done, {"step": pick(images, j)})
            stop = should_stop is not None and should_stop() and done < steps
            if (checkpoint_every > 0 and done % checkpoint_every == 0 and done < steps) or stop:
                for j in live:
                    if checkpoint_paths[j] is not None:
                        meta = checkpoint_meta[j] if j < len(checkpoint_meta) else ""
                        save_checkpoint(checkpoint_paths[j], job_state(state, j), meta)
            if stop:
                images = np.asarray(jax.device_get(state.image))
                for j in live:
                    out[j] = Interrupted(done, pick(images, j))
                return out
            if not live:
                return out
            if early_stop_patience > 0 and all(stale[j] >= early_stop_patience for j in live):
                break  # plateau: the image after `done` steps is the result
    optimize_s = time.perf_counter() - t_start

    where = _job_devices(state.image, b if batched else None)
    images = np.asarray(jax.device_get(state.image))
    final = jax.device_get(evaluate(state, params, targets, weights))  # consumes the state
    sec = float(np.median(step_times)) if step_times else 0.0
    for j in range(b):
        if out[j] is not None:
            continue
        f = {n: float(pick(final[n], j)) for n in order}
        f["sec_per_step"] = sec
        if step_metrics is not None:
            f.update(step_metrics(done))
        if measures[j] is not None:
            f.update(measures[j](pick(images, j)))
        writers[j].write_scalars(done, f)
        out[j] = RunResult(
            image=pick(images, j),
            final_metrics=f,
            initial_metrics=initial[j] or f,
            steps=done,
            compile_s=compile_s,
            optimize_s=optimize_s,
            sec_per_step=sec,
            devices=where[j],
        )
    return out


def planned(prog: Program) -> list[tuple[str, str, str]]:
    """The convolutions ``prog``'s network runs, each as (layer, forward, input gradient)."""
    plan = getattr(prog.model, "conv_plan", ()) or ()
    return [tuple(p) for p in plan if p[0] in prog.params]  # type: ignore[misc]


def device_name(d: Any) -> str:
    """``cpu:0``, ``cuda:1``: the same across JAX versions (their ``str`` differs)."""
    return f"{d.platform}:{d.id}"


def _job_devices(image: jax.Array, batch: int | None) -> list[list[str]]:
    """Per job, the devices holding its image: its shard's for a job axis split over devices."""
    if batch is None:
        return [[device_name(d) for d in sorted(image.sharding.device_set, key=lambda d: d.id)]]
    out: list[set[Any]] = [set() for _ in range(batch)]
    for shard in image.addressable_shards:
        for j in range(batch)[shard.index[0]]:
            out[j].add(shard.device)
    return [[device_name(d) for d in sorted(s, key=lambda d: d.id)] for s in out]


def learning_rate_fn(optimizer: OptimizerSpec) -> Callable[[int], dict[str, float]] | None:
    """``step -> {"lr": rate}`` for optimizers with a schedule (None for a constant rate)."""
    from nst.optim import learning_rate

    if optimizer.name == "lbfgs":
        return None
    lr = learning_rate(optimizer)
    if not callable(lr):
        return None
    return lambda step: {"lr": float(lr(step))}
