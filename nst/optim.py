"""Optax optimizers for pixel optimization, built from plain values."""

from __future__ import annotations

from dataclasses import dataclass

import optax

OPTIMIZERS = ("adam", "lbfgs", "sgd")


@dataclass(frozen=True)
class OptimizerSpec:
    """Plain-value description of an optimizer. Learning rates are in pixel units (0..255)."""

    name: str = "adam"
    lr: float | None = 5.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    # L-BFGS: history length and zoom line-search budget (optax.scale_by_zoom_linesearch).
    memory_size: int = 10
    max_linesearch_steps: int = 20
    # SGD: momentum and a step-decay schedule (multiply lr by decay_rate every decay_every steps).
    momentum: float = 0.9
    nesterov: bool = False
    decay_every: int = 0
    decay_rate: float = 0.5

    @property
    def needs_value_fn(self) -> bool:
        """optax.lbfgs' line search re-evaluates the loss, so its update takes ``value_fn``."""
        return self.name == "lbfgs"


def make_optimizer(spec: OptimizerSpec) -> optax.GradientTransformation:
    """The optax transformation for ``spec``."""
    if spec.name == "adam":
        return optax.adam(_lr(spec), b1=spec.b1, b2=spec.b2, eps=spec.eps)
    if spec.name == "sgd":
        lr: float | optax.Schedule = _lr(spec)
        if spec.decay_every > 0:
            lr = optax.exponential_decay(
                _lr(spec), spec.decay_every, spec.decay_rate, staircase=True
            )
        return optax.sgd(lr, momentum=spec.momentum or None, nesterov=spec.nesterov)
    if spec.name == "lbfgs":
        return optax.lbfgs(
            learning_rate=spec.lr,
            memory_size=spec.memory_size,
            linesearch=optax.scale_by_zoom_linesearch(
                max_linesearch_steps=spec.max_linesearch_steps
            ),
        )
    raise ValueError(f"unknown optimizer {spec.name!r}; valid: {', '.join(OPTIMIZERS)}")


def _lr(spec: OptimizerSpec) -> float:
    if spec.lr is None or spec.lr <= 0:
        raise ValueError(f"optimizer.lr must be > 0 for {spec.name}, got {spec.lr}")
    return float(spec.lr)
