"""Batched grid mode: many jobs that differ only in scalar loss weights (α, β, TV, per-layer
weights) and/or their initial image, optimized together as ONE compiled program.

The single-job update (:func:`nst.engine.make_update_fn`) is vmapped over the optimization state
and the weights; the backbone params and the content/style targets are shared (``in_axes=None``),
so a batch of B images costs one forward/backward over an (B, H, W, 3) batch instead of B
separate programs, and each job's numbers are those of its own sequential run up to float
reassociation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nst.engine import Metrics, State, make_update_fn


def stack_weights(weights: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-job weight pytrees (``LossSpec.weights()``, same structure) -> one pytree of (B,)."""
    return jax.tree.map(lambda *xs: np.stack([np.float32(x) for x in xs]), *weights)


def init_state(tx: optax.GradientTransformation, images: jnp.ndarray) -> State:
    """Batched :class:`~nst.engine.State` for ``images`` ``(B, H, W, 3)`` (one buffer per leaf,
    so the state can be donated)."""
    images = jnp.asarray(images, jnp.float32)
    state = State(images, jax.vmap(tx.init)(images), jnp.zeros((images.shape[0],), jnp.int32))
    return jax.tree.map(lambda x: jnp.array(x, copy=True), state)


def make_batched_update_fn(
    loss_fn: Callable[..., tuple[jnp.ndarray, Metrics]],
    tx: optax.GradientTransformation,
    *,
    needs_value_fn: bool = False,
    steps_per_call: int = 1,
) -> Callable[..., tuple[State, Metrics]]:
    """``update(state, params, targets, weights)`` over a batch: ``state`` and ``weights`` carry
    a leading job axis B; metrics come back as ``(B, steps_per_call)``."""
    single = make_update_fn(
        loss_fn, tx, needs_value_fn=needs_value_fn, steps_per_call=steps_per_call
    )
    return jax.vmap(single, in_axes=(0, None, None, 0))
