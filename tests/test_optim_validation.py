"""The ``optimizer`` group is validated when the config is read: a bad value is one ConfigError
line naming the key, never an optax/JAX traceback at trace time, and never silently accepted."""

from __future__ import annotations

import pytest

import nst
from nst.errors import ConfigError
from nst.optim import optimizer_spec
from nst.spec import RunSpec
from tests.test_cli import assert_clean_failure
from tests.test_cli import nst as run_nst


def refused(values: dict, match: str) -> str:
    """``optimizer_spec(values)`` raises a one-line ConfigError matching ``match``."""
    with pytest.raises(ConfigError, match=match) as err:
        optimizer_spec(values)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and len(msg) < 400, msg
    return msg


def refused_config(overrides: list[str], match: str) -> str:
    """The composed config (as the ``nst`` command reads it) is refused with one line."""
    cfg = nst.load_config(overrides)
    with pytest.raises(ConfigError, match=match) as err:
        RunSpec.from_config(cfg)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1, msg
    return msg


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ([], "adam"),
        (["optimizer=adam"], "adam"),
        (["optimizer=lbfgs"], "lbfgs"),
        (["optimizer=lbfgs", "optimizer.lr=1"], "lbfgs"),
        (["optimizer=sgd"], "sgd"),
        (["optimizer=sgd", "optimizer.momentum=0", "optimizer.decay_every=0"], "sgd"),
        (["optimizer.name=adamw", "+optimizer.kwargs={weight_decay: 1e-4}"], "adamw"),
        (
            ["optimizer.schedule=cosine", "+optimizer.schedule_kwargs={decay_steps: 300}"],
            "adam",
        ),
        (
            [
                "optimizer.schedule=piecewise",
                "+optimizer.schedule_kwargs={boundaries_and_scales: {180: 0.033}}",
            ],
            "adam",
        ),
    ],
)
def test_valid_optimizer_configs_pass(overrides, name):
    assert RunSpec.from_config(nst.load_config(overrides)).optimizer.name == name


@pytest.mark.parametrize("key", ["memory_size", "max_linesearch_steps"])
@pytest.mark.parametrize("value", [0, -3, 2.5])
def test_lbfgs_sizes_must_be_positive_integers(key, value):
    msg = refused({"name": "lbfgs", "lr": None, key: value}, f"optimizer.{key} must be an integer")
    assert ">= 1" in msg


def test_optax_kwargs_must_build_and_update():
    """The kwargs bind to optax.adamw's signature, but the value fails only when JAX runs it."""
    refused(
        {"name": "adamw", "kwargs": {"weight_decay": "abc"}},
        r"^optimizer.kwargs do not fit optax.adamw: ",
    )


@pytest.mark.parametrize(
    ("schedule", "kwargs", "match"),
    [
        ("piecewise", {"boundaries_and_scales": {"abc": 1}}, "invalid literal for int"),
        ("piecewise", {"boundaries_and_scales": 5}, "has no attribute"),
        ("piecewise", {"boundaries_and_scales": {10: -1}}, "non-negative"),
        ("cosine", {"decay_steps": 0}, "positive decay_steps"),
        ("exponential", {"transition_steps": 10, "decay_rate": float("nan")}, "at step 1 is nan"),
    ],
)
def test_schedule_kwargs_with_bad_values(schedule, kwargs, match):
    refused(
        {"schedule": schedule, "schedule_kwargs": kwargs},
        f"^optimizer.schedule_kwargs do not fit {schedule}: .*{match}",
    )


@pytest.mark.parametrize("lr", [-1, 0, float("nan"), float("inf")])
def test_lbfgs_lr_when_given_must_be_positive(lr):
    refused({"name": "lbfgs", "lr": lr}, r"optimizer.lr must be > 0 \(or null.*for lbfgs")


def test_lbfgs_lr_may_be_null_or_positive():
    assert optimizer_spec({"name": "lbfgs", "lr": None}).lr is None
    assert optimizer_spec({"name": "lbfgs", "lr": 1}).lr == 1.0


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"b1": 2}, r"optimizer.b1 must be in \[0, 1\), got 2.0"),
        ({"b1": -0.1}, r"optimizer.b1 must be in \[0, 1\)"),
        ({"b2": 1}, r"optimizer.b2 must be in \[0, 1\), got 1.0"),
        ({"eps": -1}, r"optimizer.eps must be >= 0, got -1.0"),
        ({"eps": float("inf")}, r"optimizer.eps must be >= 0, got inf"),
        ({"b1": "abc"}, r"optimizer.b1 must be a number, got 'abc'"),
        ({"name": "sgd", "lr": 1, "decay_rate": -1}, r"optimizer.decay_rate must be > 0"),
        ({"name": "sgd", "lr": 1, "decay_rate": float("nan")}, r"optimizer.decay_rate must be"),
        ({"name": "sgd", "lr": 1, "momentum": -1}, r"optimizer.momentum must be in \[0, 1\)"),
        ({"name": "sgd", "lr": 1, "momentum": 1}, r"optimizer.momentum must be in \[0, 1\)"),
        ({"name": "sgd", "lr": 1, "decay_every": -1}, r"optimizer.decay_every must be .* >= 0"),
        ({"name": "adam", "lr": -1}, r"optimizer.lr must be > 0 for adam"),
    ],
)
def test_builtin_keys_out_of_range(values, match):
    refused(values, match)


def test_builtin_ranges_through_the_composed_config():
    refused_config(["optimizer.b1=2"], r"^optimizer.b1 must be in \[0, 1\), got 2.0$")
    refused_config(["optimizer=sgd", "optimizer.decay_every=-1"], "^optimizer.decay_every")


def test_unknown_optimizer_key():
    """Hydra lets ``+optimizer.foo=1`` through the schema; the optimizer group refuses it."""
    msg = refused_config(["+optimizer.foo=1"], r"^unknown key optimizer.foo; valid: name, lr, ")
    assert "memory_size" in msg and "schedule_kwargs" in msg
    refused({"foo": 1, "bar": 2}, r"^unknown keys optimizer.bar, optimizer.foo; valid: ")


def test_cli_bad_optimizer_value_is_one_line(tmp_path):
    """The real command: exit 2, one ``nst: error: optimizer.memory_size ...`` line, no result
    (refused when the config is read, before anything compiles)."""
    out = tmp_path / "run"
    p = run_nst(
        "optimizer=lbfgs",
        "optimizer.memory_size=0",
        "progress=false",
        f"hydra.run.dir={out}",
        timeout=120,
    )
    msg = assert_clean_failure(p, out, "optimizer.memory_size")
    assert msg.startswith("nst: error: optimizer.memory_size must be an integer >= 1"), msg
