"""Batched grid mode: jobs differing only in scalar weights / init run as one vmapped program
and give the same per-job results as sequential runs (engine and `nst -m hydra/launcher=batched`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst import batch
from nst.engine import BackboneSpec, Diverged, LossSpec, RunResult, stylize
from nst.optim import OptimizerSpec
from nst.tracking.base import MetricWriter
from tests.conftest import random_params, smooth_image
from tests.test_cli import nst
from tests.test_sweep import FAST


class Rows(MetricWriter):
    def __init__(self):
        self.rows = []

    def write_scalars(self, step, scalars):
        self.rows.append((step, dict(scalars)))


LAYERS = dict(content_layers={"relu2_2": 1.0}, style_layers={"relu1_1": 0.5, "relu2_1": 0.5})


@pytest.fixture(scope="module")
def problem():
    content, style = smooth_image(24, 32, 1), smooth_image(24, 32, 2)
    rng = np.random.default_rng(0)
    inits = [content.copy(), rng.uniform(0, 255, content.shape).astype(np.float32)]
    return content, style, inits, random_params("vgg16", 0)


def _request(problem, beta, init, writer, **kw):
    content, style, inits, params = problem
    return dict(
        content=content,
        style=style,
        init=inits[init],
        params=params,
        # Winograd (conv=auto on CPUs): its per-image GEMMs round the same batched or not; XLA's
        # convolution picks batch-size-dependent algorithms, so its results drift apart. Average
        # pooling: on a smooth image a max-pool's near-ties turn last-bit differences into
        # different winners, whatever the batching.
        backbone=BackboneSpec(pooling="avg"),
        loss=LossSpec(**LAYERS, beta=beta, tv=kw.pop("tv", 0.0)),
        optimizer=OptimizerSpec(lr=2.0),
        steps=6,
        log_every=2,
        writer=writer,
        progress=False,
        steps_per_call=1,
        **kw,
    )


@pytest.mark.long
def test_batched_results_equal_sequential_runs(problem):
    specs = [(1e2, 0, 0.0), (1e4, 0, 0.0), (1e3, 1, 1e-2)]  # alpha/beta, init and TV differ
    seq, seq_rows = [], []
    for beta, init, tv in specs:
        w = Rows()
        seq.append(stylize(**_request(problem, beta, init, w, tv=tv)))
        seq_rows.append(w.rows)
    writers = [Rows() for _ in specs]
    reqs = [_request(problem, b, i, w, tv=t) for (b, i, t), w in zip(specs, writers, strict=True)]
    assert batch.group_requests(dict(enumerate(reqs))) == [[0, 1, 2]]
    out = batch.stylize_batch(reqs)
    assert all(isinstance(r, RunResult) for r in out)
    for s, b, w, rows in zip(seq, out, writers, seq_rows, strict=True):
        assert b.steps == s.steps == 6
        np.testing.assert_allclose(b.image, s.image, atol=1e-2)
        for k in ("total", "content", "style", "tv"):
            np.testing.assert_allclose(b.final_metrics[k], s.final_metrics[k], rtol=1e-4)
        assert [st for st, _ in w.rows] == [st for st, _ in rows]  # the same log steps
        for (_, r1), (_, r2) in zip(w.rows, rows, strict=True):
            np.testing.assert_allclose(r1["total"], r2["total"], rtol=1e-4)
    # The jobs really differ (the test would pass trivially otherwise).
    assert abs(out[0].final_metrics["total"] - out[1].final_metrics["total"]) > 1.0


def test_batched_strips_equal_sequential_whole_image(problem):
    """remat's striped blocks under the grid's vmap give the plain sequential results."""
    from nst.engine import make_model

    strips = BackboneSpec(pooling="avg", remat=True, strip_rows=8)
    assert make_model(strips, LossSpec(**LAYERS)).strip_blocks == 1  # block 1 in 3 strips
    specs = [(1e2, 0), (1e4, 1)]
    seq = [stylize(**_request(problem, b, i, Rows())) for b, i in specs]
    reqs = [_request(problem, b, i, Rows()) for b, i in specs]
    for r in reqs:
        r["backbone"] = strips
    out = batch.stylize_batch(reqs)
    for s, b in zip(seq, out, strict=True):
        np.testing.assert_allclose(b.image, s.image, atol=1e-2)
        np.testing.assert_allclose(b.final_metrics["total"], s.final_metrics["total"], rtol=1e-4)


def test_a_diverging_job_does_not_stop_the_others(problem):
    writers = [Rows(), Rows()]
    reqs = [_request(problem, 1e3, 0, writers[0]), _request(problem, 1e38, 1, writers[1])]
    ok, bad = batch.stylize_batch(reqs)
    assert isinstance(ok, RunResult) and ok.steps == 6
    assert isinstance(bad, Diverged) and np.isfinite(bad.image).all()


def test_grouping_by_structure(problem):
    a = _request(problem, 1e2, 0, None)
    b = _request(problem, 1e3, 1, None)  # other weights and init: same program
    c = {**a, "loss": LossSpec(content_layers={"relu2_2": 1.0}, style_layers={"relu1_1": 1.0})}
    d = {**a, "steps": 7}
    e = {**a, "style": a["style"] + 1}  # other style image: other targets
    f = {**a, "early_stop_patience": 3}  # stops on its own: alone
    groups = batch.group_requests(dict(enumerate([a, b, c, d, e, f])))
    assert groups == [[0, 1], [2], [3], [4], [5]]


def _finals(sweep: Path) -> dict[str, dict]:
    out = {}
    for s in sorted(sweep.glob("*/summary.json")):
        d = json.loads(s.read_text())
        out[s.parent.name.split("_", 1)[1]] = d
    return out


@pytest.mark.slow  # two sweeps with W&B offline: run by CI's slow step
def test_batched_launcher_matches_the_basic_launcher(tmp_path):
    """4 jobs, 2 poolings x 2 betas: two programs of two images; same run dirs and numbers."""
    args = [
        "-m",
        *FAST,
        "loss.beta=1e2,1e4",
        "backbone.pooling=max,avg",  # another network: another program
        "logger=wandb",
        "logger.wandb.mode=offline",
    ]
    basic, batched = tmp_path / "basic", tmp_path / "batched"
    p1 = nst(*args, f"hydra.sweep.dir={basic}")
    assert p1.returncode == 0, p1.stderr
    p2 = nst(*args, "hydra/launcher=batched", f"hydra.sweep.dir={batched}")
    assert p2.returncode == 0, p2.stderr
    assert "as 2 program(s) of [2, 2] images" in p2.stderr + p2.stdout
    f1, f2 = _finals(basic), _finals(batched)
    assert sorted(f1) == sorted(f2) and len(f2) == 4
    for name in f1:
        assert f2[name]["status"] == "ok"
        np.testing.assert_allclose(
            f2[name]["final"]["total"], f1[name]["final"]["total"], rtol=1e-4
        )
    # Same files per job (result, metrics, config, W&B offline run) and the sweep report.
    for run in sorted(batched.glob("[0-9]*")):
        names = {p.name for p in run.iterdir()}
        assert {"result.png", "metrics.jsonl", "summary.json", ".hydra", "wandb"} <= names, names
        assert list((run / "wandb").glob("offline-run-*"))
    assert (batched / "contact_sheet.png").is_file() and (batched / "summary.csv").is_file()


@pytest.mark.slow  # 23 s: pyramid jobs through the batched launcher; kept out of the default suite
def test_batched_launcher_with_pyramid_jobs(tmp_path):
    """Jobs that optimize several times (pyramid levels) meet the others once, then go on alone."""
    sweep = tmp_path / "sweep"
    p = nst(
        "-m",
        *[a for a in FAST if not a.startswith("size=")],
        "size=64",
        "pyramid.levels=2",
        "loss.beta=1e2,1e4",
        "hydra/launcher=batched",
        f"hydra.sweep.dir={sweep}",
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    for s in sweep.glob("*/summary.json"):
        d = json.loads(s.read_text())
        assert d["status"] == "ok" and d["pyramid"] == [32, 64]
        # The last level really ran: a full-size result and metrics rows from both levels.
        assert max(Image.open(s.parent / "result.png").size) == 64
        levels = [json.loads(x)["level"] for x in (s.parent / "metrics.jsonl").open()]
        assert set(levels) == {0.0, 1.0}
    assert len(list(sweep.glob("*/summary.json"))) == 2


FORCE_TWO = "--xla_force_host_platform_device_count=2"  # two CPU devices in one process
_SHARDED = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
from nst import batch, engine
from tests.test_batch import Rows, _request, smooth_image, random_params

content, style = smooth_image(24, 32, 1), smooth_image(24, 32, 2)
rng = np.random.default_rng(0)
problem = (content, style, [content.copy(), rng.uniform(0, 255, content.shape).astype(np.float32)],
           random_params("vgg16", 0))
specs = [(1e2, 0), (1e4, 1)]
reqs, seqs = ([{**_request(problem, b, i, Rows()), "steps": 3} for b, i in specs] for _ in "ab")
prog = engine.build(reqs[0]["backbone"], reqs[0]["loss"], reqs[0]["optimizer"], reqs[0]["params"],
                    content, style, batch=2)
state = prog.init_state(np.stack([r["init"] for r in reqs]))
out = batch.stylize_batch(reqs)
seq = [engine.stylize(**r) for r in seqs]
print(json.dumps({
    "local_devices": jax.local_device_count(),
    "job_devices": len(prog.devices),
    "state_devices": len(state.image.sharding.device_set),
    "params_devices": len(jax.tree.leaves(prog.params)[0].sharding.device_set),
    "ran_on": [b.devices for b in out],
    "alone_on": [s.devices for s in seq],
    "image_diff": max(float(np.abs(b.image - s.image).max()) for b, s in zip(out, seq)),
    "total_rel": max(abs(b.final_metrics["total"] / s.final_metrics["total"] - 1)
                     for b, s in zip(out, seq)),
}))
"""


@pytest.mark.long
def test_batched_jobs_are_sharded_over_local_devices(tmp_path):
    """Two (forced) host devices: the job axis is split over both, parameters are replicated,
    and every job's result equals its sequential run."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "XLA_FLAGS": FORCE_TWO, "JAX_PLATFORMS": "cpu"}
    p = subprocess.run(
        [sys.executable, "-c", _SHARDED, str(root)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["local_devices"] == 2 and r["job_devices"] == 2
    assert r["state_devices"] == 2 and r["params_devices"] == 2
    assert r["ran_on"] == [["cpu:0"], ["cpu:1"]] and r["alone_on"] == [["cpu:0"], ["cpu:0"]]
    assert r["image_diff"] < 1e-2 and r["total_rel"] < 1e-4


def test_jobs_split_evenly_over_devices():
    from nst.engine import job_devices

    devs = ["d0", "d1", "d2", "d3"]
    assert job_devices(8, devs) == devs
    assert job_devices(6, devs) == devs[:3]  # 2 jobs each, not 2/2/1/1
    assert job_devices(3, devs[:2]) == ["d0"]
    assert job_devices(1, devs) == ["d0"]


@pytest.mark.slow  # two worker processes start JAX and compile: ~40 s on 2 cores
def test_joblib_workers_take_one_device_each(tmp_path):
    """With two local devices, each joblib worker optimizes on its own one, and the results are
    those of the same jobs run one after the other."""
    args = ["-m", *FAST, "init=noise", "seed=0,1"]
    two = {"XLA_FLAGS": FORCE_TWO, "JAX_PLATFORMS": "cpu"}
    par, seq = tmp_path / "joblib", tmp_path / "basic"
    p = nst(
        *args, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={par}", env=two
    )
    assert p.returncode == 0, p.stderr[-3000:]
    p = nst(*args, f"hydra.sweep.dir={seq}", env=two)
    assert p.returncode == 0, p.stderr[-3000:]
    f1, f2 = _finals(seq), _finals(par)
    assert sorted(f1) == sorted(f2) and len(f2) == 2
    assert sorted(d["devices"][0] for d in f2.values()) == ["cpu:0", "cpu:1"]
    assert all(d["devices"] == ["cpu:0"] for d in f1.values())  # one process: its default
    for name in f1:
        a = np.asarray(Image.open(f1[name]["result"]), np.int16)
        b = np.asarray(Image.open(f2[name]["result"]), np.int16)
        assert np.abs(a - b).max() <= 1, name
        np.testing.assert_allclose(
            f2[name]["final"]["total"], f1[name]["final"]["total"], rtol=1e-4
        )


def test_each_worker_claims_its_own_device(tmp_path, monkeypatch):
    """The lowest device no other process of the sweep holds; shared in turn when all are
    taken; by process id when the temp directory is unusable."""
    import os
    import subprocess
    import sys

    from nst import devices

    monkeypatch.setattr(devices, "_held", {})
    monkeypatch.setattr(devices.tempfile, "gettempdir", lambda: str(tmp_path))
    assert devices.claim_slot(2, "sweep-a") == 0
    assert devices.claim_slot(2, "sweep-a") == 0  # this process keeps its device
    other = (
        "import sys, tempfile; tempfile.gettempdir = lambda: sys.argv[1];"
        "from nst import devices; print(devices.claim_slot(2, 'sweep-a'),"
        " devices.claim_slot(2, 'sweep-b'))"
    )
    p = subprocess.run([sys.executable, "-c", other, str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["1", "0"]  # device 0 is held here; another sweep starts over
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setattr(devices.tempfile, "gettempdir", lambda: str(blocked))
    assert devices.claim_slot(3, "sweep-c") == os.getpid() % 3
