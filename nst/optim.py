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

from nst.errors import ConfigError, first_line

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
    known = [f.name for f in fields(OptimizerSpec)]
    unknown = sorted(str(k) for k in values if k not in known)
    if unknown:
        keys = ", ".join(f"optimizer.{k}" for k in unknown)
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {keys}; valid: {', '.join(known)}"
        )
    spec = OptimizerSpec(**values)
    spec.name = str(getattr(spec.name, "value", spec.name))
    spec.kwargs = dict(spec.kwargs or {})
    spec.schedule_kwargs = dict(spec.schedule_kwargs or {})
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
    _check_values(spec)
    if spec.name == "lbfgs" and spec.schedule not in (None, "", "constant"):
        raise ConfigError("optimizer.schedule does not apply to lbfgs (its line search sets steps)")
    if spec.name != "lbfgs":
        _check_schedule(spec)  # a bad schedule fails here, before anything compiles
    if spec.name not in BUILTIN:
        _check_builds(spec)
    return spec


def _check_values(spec: OptimizerSpec) -> None:
    """Range checks of the builtin optimizers' keys (always: unused ones keep their defaults)."""
    if spec.lr is not None or spec.name != "lbfgs":
        lr = None if spec.lr is None else _float("lr", spec.lr)
        if lr is None or not (math.isfinite(lr) and lr > 0):
            either = " (or null: the line search sets the step)" if spec.name == "lbfgs" else ""
            raise ConfigError(f"optimizer.lr must be > 0{either} for {spec.name}, got {spec.lr}")
        spec.lr = lr
    for key in ("b1", "b2"):
        setattr(spec, key, _float(key, getattr(spec, key), lambda x: 0 <= x < 1, "in [0, 1)"))
    spec.eps = _float("eps", spec.eps, lambda x: math.isfinite(x) and x >= 0, ">= 0")
    if spec.momentum is not None:  # None (like 0): no momentum
        spec.momentum = _float("momentum", spec.momentum, lambda x: 0 <= x < 1, "in [0, 1)")
    spec.decay_rate = _float("decay_rate", spec.decay_rate, lambda x: math.isfinite(x) and x > 0)
    spec.memory_size = _int("memory_size", spec.memory_size, 1)
    spec.max_linesearch_steps = _int("max_linesearch_steps", spec.max_linesearch_steps, 1)
    spec.decay_every = _int("decay_every", spec.decay_every, 0, " (0: no decay)")


def _float(key: str, value: Any, ok: Any = None, valid: str = "> 0") -> float:
    if isinstance(value, bool):
        raise ConfigError(f"optimizer.{key} must be a number, got {value}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"optimizer.{key} must be a number, got {value!r}") from None
    if ok is not None and not ok(x):
        raise ConfigError(f"optimizer.{key} must be {valid}, got {x}")
    return x


def _int(key: str, value: Any, minimum: int, note: str = "") -> int:
    x = _float(key, value)
    if not (math.isfinite(x) and x.is_integer() and x >= minimum):
        raise ConfigError(f"optimizer.{key} must be an integer >= {minimum}{note}, got {value}")
    return int(x)


def _check_schedule(spec: OptimizerSpec) -> None:
    """Build the learning rate and, for a schedule, evaluate it at steps 0 and 1."""
    lr = learning_rate(spec)
    if not callable(lr):
        return
    from nst.devices import check_backend

    check_backend()  # evaluating the schedule starts JAX: its own failure is not the config's
    if spec.name == "sgd" and spec.decay_every > 0:
        what = "optimizer.decay_every/decay_rate"
    else:
        what = f"optimizer.schedule_kwargs do not fit {spec.schedule}"
    for step in (0, 1):  # a bad decay rate shows from step 1 (nan ** 0 is 1)
        try:
            rate = float(lr(step))
        except Exception as e:  # noqa: BLE001 - any failure is the config's: one line
            raise ConfigError(f"{what}: {first_line(e, 200)}") from None
        if not (math.isfinite(rate) and rate >= 0):
            raise ConfigError(f"{what}: the learning rate at step {step} is {rate}")


def _check_builds(spec: OptimizerSpec) -> None:
    """An optimizer taken from optax by name must build, init and update a tiny float32 array:
    a kwarg of the wrong kind (``weight_decay: abc``) otherwise fails only when JAX traces it."""
    import warnings

    import jax
    import jax.numpy as jnp

    from nst.devices import check_backend

    check_backend()  # the trial step starts JAX: its own failure is not the config's
    what = f"optimizer.kwargs do not fit optax.{spec.name}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tx = make_optimizer(spec)
            params = jnp.zeros(3, jnp.float32)
            updates, _ = tx.update(jnp.ones(3, jnp.float32), tx.init(params), params)
            finite = all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree_util.tree_leaves(updates))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure is the config's: one line
        raise ConfigError(f"{what}: {first_line(e, 200)}") from None
    if not finite:
        raise ConfigError(f"{what}: a first step on a tiny array gives non-finite updates")


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
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - bad values (ValueError, TypeError, ...): one line
        raise ConfigError(
            f"optimizer.schedule_kwargs do not fit {spec.schedule}: {first_line(e, 200)}"
        ) from None


def _lr(spec: OptimizerSpec) -> float:
    if spec.lr is None or spec.lr <= 0:
        raise ValueError(f"optimizer.lr must be > 0 for {spec.name}, got {spec.lr}")
    return float(spec.lr)
