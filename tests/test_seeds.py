"""Every seed write-up's setup as an experiment: each runs offline at a tiny size, falling back
to the embedded VGG16 with one line where its own network's weights are absent."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import nst

SEEDS = [
    "seeds/cs231n",
    "seeds/cs231n_texture",
    "seeds/cs231n_inversion",
    "seeds/keras_tutorial",
    "seeds/lewuathe2017",
    "seeds/gatys2016_notes",
]
# Refused at once: tests never wait on a real download.
OFFLINE = "backbone.url=http://127.0.0.1:9/weights"


def _run(experiment, tmp_path):
    out = tmp_path / "run"
    p = nst(
        f"experiment={experiment}",
        "size=64",
        "steps=5",
        "progress=false",
        OFFLINE,
        f"hydra.run.dir={out}",
        env={"NST_CACHE_DIR": str(tmp_path / "cache")} if "gatys" not in experiment else None,
    )
    return p, out


@pytest.mark.parametrize(
    "experiment",
    [pytest.param(e, marks=pytest.mark.slow) for e in SEEDS],  # CI's slow step runs all six
)
def test_seed_experiment_runs_offline(experiment, tmp_path):
    p, out = _run(experiment, tmp_path)
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    warnings = [x for x in p.stderr.splitlines() if x.startswith("nst: warning:")]
    if (
        experiment == "seeds/gatys2016_notes"
    ):  # the embedded VGG16 itself: nothing to fall back from
        assert warnings == [] and summary["backbone"]["arch"] == "vgg16"
        assert summary["loss"]["ab_ratio"] == 1e-4
        return
    assert len(warnings) == 1, p.stderr
    assert "running on vgg16 (embedded weights) instead (backbone.fallback)" in warnings[0]
    assert summary["backbone"]["arch"] == "vgg16" and "fallback_from" in summary["backbone"]
    assert summary["config"]["backbone"]["arch"] == "vgg16"  # what ran is what is recorded
    if experiment.startswith("seeds/cs231n"):
        assert "squeezenet1_1-b8a52dc0.pth" in warnings[0]
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert all("lr" in r for r in rows)  # the schedule is logged
    if experiment == "seeds/lewuathe2017":
        assert (out / "progress.gif").exists()


@pytest.mark.slow  # four 96 px runs of 80 steps on the embedded VGG16
@pytest.mark.long
def test_eval_metrics_trace_the_alpha_beta_trade_off():
    """Along an α/β sweep the fixed evaluation moves monotonically: more style weight, larger
    content error and smaller style error (the trend of the paper's Fig. 4 rows)."""
    import nst

    evals = []
    for beta in (1e0, 1e1, 1e2, 1e3):  # past ~1e3 the style error saturates at this size
        r = nst.stylize(
            "sample:chelsea", "sample:ihc", size=96, steps=80, progress=False, loss={"beta": beta}
        )
        evals.append((r.final["eval/content"], r.final["eval/style"]))
    content, style = zip(*evals, strict=True)
    assert list(content) == sorted(content) and content[0] < content[-1], evals
    assert list(style) == sorted(style, reverse=True) and style[0] > style[-1], evals
