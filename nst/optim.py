"""Optax optimizers for pixel optimization, chosen by name.

``adam``, ``sgd`` (with a step-decay schedule) and ``lbfgs`` (zoom line search) have their own
keys; any other optax optimizer is taken by name with ``kwargs`` (``optimizer.name=adamw
optimizer.lr=5 '+optimizer.kwargs={weight_decay: 1e-4}'``). Learning rates are in pixel units
(0..255). This dataclass is also the config schema of the ``optimizer`` group.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, fields
from typing import Any

from nst.errors import ConfigError

BUILTIN = ("adam", "lbfgs", "sgd")


@dataclass
class OptimizerSpec:
    """Plain-value description of an optimizer."""

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
    # Keyword arguments of any other optax optimizer (optax.<name>(learning_rate=lr, **kwargs)).
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Learning-rate schedule (not for lbfgs, whose line search sets the step): constant,
    # piecewise (schedule_kwargs.boundaries_and_scales {step: factor}), exponential
    # (transition_steps, decay_rate[, staircase]), cosine (decay_steps[, alpha]), or any optax
    # schedule taking init_value. The rate is logged per step as ``lr``.
    schedule: str = "constant"
    schedule_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_value_fn(self) -> bool:
        """optax.lbfgs' line search re-evaluates the loss, so its update takes ``value_fn``."""
        return self.name == "lbfgs"


def optimizer_spec(values: dict[str, Any]) -> OptimizerSpec:
    """Validated :class:`OptimizerSpec` from the ``optimizer`` config (one-line ConfigError)."""
    known = {f.name for f in fields(OptimizerSpec)}
    spec = OptimizerSpec(**{k: v for k, v in values.items() if k in known})
    spec.name = str(getattr(spec.name, "value", spec.name))
    spec.kwargs = dict(spec.kwargs or {})
    if spec.name not in BUILTIN and not _optax_optimizer(spec.name):
        raise ConfigError(
            f"optimizer.name={spec.name!r} is neither {', '.join(BUILTIN)} nor an optax optimizer "
            "(e.g. adamw, rmsprop, adabelief, lion)"
        )
    if spec.name not in BUILTIN:
        try:
            inspect.signature(_optax_optimizer(spec.name)).bind(learning_rate=1.0, **spec.kwargs)
        except TypeError as e:
            raise ConfigError(f"optimizer.kwargs do not fit optax.{spec.name}: {e}") from None
    elif spec.kwargs:
        raise ConfigError(
            f"optimizer.kwargs are for optax optimizers by name; {spec.name} has its own keys"
        )
    if spec.name != "lbfgs" and (spec.lr is None or not (math.isfinite(spec.lr) and spec.lr > 0)):
        raise ConfigError(f"optimizer.lr must be > 0 for {spec.name}, got {spec.lr}")
    spec.schedule_kwargs = dict(spec.schedule_kwargs or {})
    if spec.name == "lbfgs" and spec.schedule not in (None, "", "constant"):
        raise ConfigError("optimizer.schedule does not apply to lbfgs (its line search sets steps)")
    if spec.name != "lbfgs":
        learning_rate(spec)  # a bad schedule fails here, before anything compiles
    return spec


def _optax_optimizer(name: str) -> Any:
    import optax

    fn = getattr(optax, name, None)
    if not callable(fn) or name.startswith("_"):
        return None
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    return fn if "learning_rate" in params else None


def make_optimizer(spec: OptimizerSpec) -> Any:
    """The optax transformation for ``spec``."""
    import optax  # here, not at import: the config schema (nst.config) uses OptimizerSpec

    if spec.name == "adam":
        return optax.adam(learning_rate(spec), b1=spec.b1, b2=spec.b2, eps=spec.eps)
    if spec.name == "sgd":
        lr = learning_rate(spec)
        return optax.sgd(lr, momentum=spec.momentum or None, nesterov=spec.nesterov)
    if spec.name == "lbfgs":
        return optax.lbfgs(
            learning_rate=spec.lr,
            memory_size=spec.memory_size,
            linesearch=optax.scale_by_zoom_linesearch(
                max_linesearch_steps=spec.max_linesearch_steps
            ),
        )
    fn = _optax_optimizer(spec.name)
    if fn is None:
        raise ValueError(f"unknown optimizer {spec.name!r}; valid: {', '.join(BUILTIN)} or optax's")
    try:
        return fn(learning_rate=learning_rate(spec), **spec.kwargs)
    except TypeError as e:
        raise ConfigError(f"optimizer.kwargs do not fit optax.{spec.name}: {e}") from None


def learning_rate(spec: OptimizerSpec) -> Any:
    """The learning rate of ``spec``: a float, or an optax schedule (step -> rate) when
    ``schedule`` is set (or SGD's ``decay_every``)."""
    lr = _lr(spec)
    constant = spec.schedule in (None, "", "constant")
    if constant and not (spec.name == "sgd" and spec.decay_every > 0):
        return lr  # without optax: the default config is checked before JAX loads
    import optax

    if spec.name == "sgd" and spec.decay_every > 0:
        return optax.exponential_decay(lr, spec.decay_every, spec.decay_rate, staircase=True)
    kwargs = dict(spec.schedule_kwargs or {})
    try:
        if spec.schedule == "piecewise":
            scales = {int(k): float(v) for k, v in kwargs.pop("boundaries_and_scales", {}).items()}
            return optax.piecewise_constant_schedule(lr, scales, **kwargs)
        if spec.schedule == "exponential":
            return optax.exponential_decay(lr, **kwargs)
        if spec.schedule == "cosine":
            return optax.cosine_decay_schedule(lr, **kwargs)
        fn = getattr(optax, spec.schedule, None)
        if not callable(fn):
            raise ConfigError(
                f"optimizer.schedule={spec.schedule!r} is not constant, piecewise, exponential, "
                "cosine or an optax schedule"
            )
        return fn(init_value=lr, **kwargs)
    except TypeError as e:
        raise ConfigError(f"optimizer.schedule_kwargs do not fit {spec.schedule}: {e}") from None


def _lr(spec: OptimizerSpec) -> float:
    if spec.lr is None or spec.lr <= 0:
        raise ValueError(f"optimizer.lr must be > 0 for {spec.name}, got {spec.lr}")
    return float(spec.lr)
