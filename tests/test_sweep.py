"""Sweeps through the real `nst -m`: W&B offline runs grouped per sweep, the local report,
launchers (joblib, submitit local), and jobs that fail without stopping the sweep."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from nst.report import find_jobs, grid_layout, swept_keys
from tests.test_cli import SMALL_LAYERS, nst

FAST = [
    "size=40",
    "steps=4",
    "log_every=2",
    "save_every=2",
    "backbone=random_vgg16",
    "progress=false",
    # The fixed evaluation (~1.5 s a run) is tested where it is the subject.
    "eval.enabled=false",
    # Two blocks of VGG instead of four: a fraction of the compile; the full network is run
    # where it is the subject (the paper's layers, the defaults, the evaluation).
    *SMALL_LAYERS,
]


def _wandb_records(run_dir: Path) -> list[dict]:
    out = subprocess.run(
        ["wandb", "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # ~37s on a Zen 3 core pair: kept out of the default suite, run by CI's slow step
def test_wandb_offline_sweep_acceptance(tmp_path):
    """Issue acceptance 1 (steps shortened): 4 offline W&B runs in one group, 2x2 sheet, report."""
    sweep = tmp_path / "sweep"
    p = nst(
        "-m",
        "size=64",
        "steps=10",
        "backbone=random_vgg16",
        "loss.beta=1e2,1e4",
        "layers=gatys2016,lewuathe2017",
        "logger=wandb",
        "logger.wandb.mode=offline",
        f"hydra.sweep.dir={sweep}",
        "progress=false",
    )
    assert p.returncode == 0, p.stderr
    run_dirs = sorted(sweep.glob("*/wandb/offline-run-*"))
    assert len(run_dirs) == 4
    groups, names = set(), set()
    for rd in run_dirs:
        recs = _wandb_records(rd)
        run = next(r["run"] for r in recs if r.get("type") == "run")
        groups.add(run["run_group"])
        names.add(run["display_name"])
        cfg = json.loads(json.dumps(run["config"]))
        text = json.dumps(cfg)
        assert '"loss.beta"' in text and '"layers"' in text and '"alpha_beta"' in text
        # the layer names the metrics use, not the config's conv names read after their ReLU
        assert '"layers.content_layers.relu4_2"' in text and "content_layers.conv4_2" not in text
        steps = [r["history"]["item"]["_step"] for r in recs if r.get("type") == "history"]
        assert steps == [0, 10]
        logged = {
            k.split(".")[0]
            for r in recs
            if r.get("type") == "history"
            for k in r["history"]["item"]
        }
        assert {"input/content", "input/style", "result", "progress"} <= logged  # inputs, table
        summary = {k for r in recs if r.get("type") == "summary" for k in r["summary"]["update"]}
        assert "final/total" in summary and "total" not in summary  # no duplicate keys
    assert len(groups) == 1
    assert names == {
        f"beta={b},layers={layer}"
        for b in ("100.0", "10000.0")
        for layer in ("gatys2016", "lewuathe2017")
    }
    jobs = find_jobs(sweep)
    lay = grid_layout(jobs, swept_keys(jobs))
    assert (lay["row_key"], lay["col_key"]) == ("loss.beta", "layers")
    assert len(lay["rows"]) == 2 and len(lay["cols"]) == 2
    assert (sweep / "contact_sheet.png").exists() and (sweep / "report.html").exists()
    # Each job's row says how to upload its offline run, from the sweep directory.
    page = (sweep / "report.html").read_text(encoding="utf-8")
    assert sorted(re.findall(r"<code>wandb sync ([^<]+)</code>", page)) == [
        str(rd.relative_to(sweep)) for rd in run_dirs
    ]
    rows = _csv(sweep / "summary.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert {r["alpha_beta"] for r in rows} == {"0.01", "0.0001"}


@pytest.mark.slow  # a CLI run of its own; tests/test_writers.py covers the logic
def test_wandb_init_failure_keeps_local_outputs(tmp_path, monkeypatch):
    """Issue acceptance 2: online mode without an API key fails at init -> one warning."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    out = tmp_path / "run"
    p = nst(
        *FAST,
        "logger=wandb",
        "logger.wandb.mode=online",
        f"hydra.run.dir={out}",
        env={"WANDB_API_KEY": "", "WANDB_CONFIG_DIR": str(tmp_path / "wbcfg")},
    )
    assert p.returncode == 0, p.stderr
    warnings = [x for x in p.stderr.splitlines() if "warning" in x.lower() and "W&B" in x]
    assert len(warnings) == 1, p.stderr
    assert (out / "result.png").exists() and (out / "summary.json").exists()


@pytest.mark.slow  # a CLI sweep of its own; the unit tests cover the logic
def test_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    sweep = tmp_path / "sweep"
    p = nst(
        "-m",
        *FAST,
        "steps=12",
        "loss.beta=1e2,1e3",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
    )
    assert p.returncode == 0, p.stderr
    summaries = [json.loads(s.read_text()) for s in sorted(sweep.glob("*/summary.json"))]
    assert len(summaries) == 2 and len({s["pid"] for s in summaries}) == 2
    spans = [
        (datetime.fromisoformat(s["started_at"]), datetime.fromisoformat(s["finished_at"]))
        for s in summaries
    ]
    assert max(a for a, _ in spans) < min(b for _, b in spans), "jobs did not overlap"
    assert len(_csv(sweep / "summary.csv")) == 2


@pytest.mark.slow  # submitit's own process per job: ~25 s
def test_submitit_local_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    p = nst(
        "-m",
        *FAST,
        "loss.beta=1e2,1e3",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={sweep}",
    )
    assert p.returncode == 0, p.stderr
    assert len(list(sweep.glob("*/result.png"))) == 2
    assert len(_csv(sweep / "summary.csv")) == 2


@pytest.mark.slow  # an end-to-end CLI case: CI's slow step runs it
def test_failed_job_is_reported_and_others_run(tmp_path, write_png):
    good = write_png("good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:60])  # a truncated PNG
    sweep = tmp_path / "sweep"
    p = nst(
        "-m",
        *FAST,
        f"content={good},{bad},{good}",
        "loss.beta=1e2",
        f"hydra.sweep.dir={sweep}",
        f"style={good}",
        "logger=wandb",
        "logger.wandb.mode=offline",
    )
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    assert "1 of 3 jobs failed" in p.stderr and "bad.png" in p.stderr.splitlines()[-1]
    rows = _csv(sweep / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "bad.png" in rows[1]["error"]
    failed_run = next((sweep).glob("1_*/wandb/offline-run-*"))  # the failure is in W&B too
    out = subprocess.run(
        ["wandb", "leet", "inspect", "--summary", "--json", str(failed_run)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    state = json.loads(out.stdout)
    assert state["exit_code"] == 1 and state["summary"]["status"] == "failed"
    report = (sweep / "report.html").read_text()
    assert 'class="bad"' in report and "bad.png: cannot decode image" in report


@pytest.mark.parametrize("sweep_cfg,n", [("alpha_beta", 4), ("init_seeds", 4)])
def test_sweep_configs_compose(sweep_cfg, n):
    from hydra import compose, initialize_config_dir

    from nst.app import CONFIG_DIR
    from nst.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[f"sweep={sweep_cfg}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert sum(len(str(v).split(",")) for v in params.values()) == n
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


@pytest.mark.slow  # ~21s on a Zen 3 core pair: kept out of the default suite, run by CI's slow step
def test_sweep_resume_skips_finished_and_resumes_unfinished(tmp_path, write_png):
    """Issue 5: re-running a sweep with resume=true reuses its job directories."""
    good = write_png("good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    sweep = tmp_path / "sweep"
    args = ["-m", *FAST, f"content={good},{bad}", f"style={good}", f"hydra.sweep.dir={sweep}"]
    assert nst(*args).returncode != 0
    finished = next(sweep.glob("0_*/summary.json"))
    stamp = finished.stat().st_mtime_ns
    bad.write_bytes(good.read_bytes())  # the user fixes the bad image
    p = nst(*args, "resume=true")
    assert p.returncode == 0, p.stderr
    assert "already finished" in p.stdout
    assert finished.stat().st_mtime_ns == stamp  # not run again
    assert len(list(sweep.iterdir())) == len(set(sweep.iterdir()))
    rows = _csv(sweep / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_sigterm_stops_the_whole_sweep(tmp_path, write_png):
    import signal
    import sys
    import time

    good = write_png("good.png")
    sweep = tmp_path / "sweep"
    args = [
        *FAST,
        "steps=400",
        "checkpoint_every=2",
        "log_every=1",
        f"content={good}",
        f"style={good}",
        "loss.beta=1e2,1e3",
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nst.app", "-m", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.time()
    while not list(sweep.glob("0_*/checkpoint.npz")):
        assert proc.poll() is None and time.time() - t0 < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "interrupted at step" in err
    assert not list(sweep.glob("1_*"))  # the second job never started
    assert json.loads(next(sweep.glob("0_*/summary.json")).read_text())["status"] == "interrupted"
    rows = _csv(sweep / "summary.csv")  # the report, written as the sweep stopped
    assert [r["status"] for r in rows] == ["interrupted"]


@pytest.mark.slow  # an end-to-end CLI case: CI's slow step runs it
def test_alpha_beta_sweep_reports_eval_metrics_tradeoff_and_animation(tmp_path):
    """A 4-job α/β sweep: every job's fixed evaluation metrics in summary.csv, the trade-off
    plot in report.html and tradeoff.svg, and progress.gif with animation=true."""
    sweep = tmp_path / "sweep"
    p = nst(
        "-m",
        *[a for a in FAST if not a.startswith("eval.")],
        "loss.beta=1e1,1e2,1e3,1e4",
        "animation=true",
        f"hydra.sweep.dir={sweep}",
    )
    assert p.returncode == 0, p.stderr
    rows = _csv(sweep / "summary.csv")
    assert len(rows) == 4
    for r in rows:
        for k in ("eval_content", "eval_style", "eval_ssim", "eval_color"):
            assert r[k] != "" and float(r[k]) >= 0, (k, r)
        assert 0 < float(r["eval_ssim"]) <= 1
        gif = Image.open(sweep / r["dir"] / "progress.gif")
        # init, the snapshot at step 2 (save_every=2 of steps=4), the result
        assert gif.n_frames == 3 and gif.size == Image.open(sweep / r["dir"] / "result.png").size
        summary = json.loads((sweep / r["dir"] / "summary.json").read_text())
        assert summary["final"]["eval/style"] == pytest.approx(float(r["eval_style"]))
        last = json.loads((sweep / r["dir"] / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["eval/content"] == pytest.approx(float(r["eval_content"]))
    html_text = (sweep / "report.html").read_text()
    assert "Pareto front" in html_text and html_text.count("<circle") == 4
    assert (sweep / "tradeoff.svg").read_text().startswith("<svg")
    assert 'href="' + rows[0]["dir"] + '/progress.gif"' in html_text


def _optuna(tmp_path, *extra):
    """An Optuna sweep of tiny 2-step jobs minimizing the total loss: (process, sweep dir)."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    args = ["hparams_search=optuna_tradeoff", *FAST, "steps=2", "optimized_metric=total"]
    return nst(*args, *extra, f"hydra.sweep.dir={sweep}"), sweep


@pytest.mark.slow  # the Optuna import and three jobs: ~25 s
def test_optuna_sweep_optimizes_the_returned_metric(tmp_path):
    """hparams_search with the Optuna sweeper: every job returns its optimized_metric, three
    trials complete and optimization_results.yaml names the best β."""
    import yaml

    p, sweep = _optuna(tmp_path, "hydra.sweeper.n_trials=3")
    assert p.returncode == 0, p.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert "loss.beta" in best["best_params"] and best["best_value"] > 0
    totals = [
        json.loads((d / "summary.json").read_text())["final"]["total"]
        for d in sorted(sweep.iterdir())
        if (d / "summary.json").exists()
    ]
    assert len(totals) == 3 and best["best_value"] == pytest.approx(min(totals))


@pytest.mark.slow  # the Optuna import and two jobs refused on their config: ~10 s
def test_a_failed_optuna_trial_does_not_stop_the_study(tmp_path):
    """A trial that fails returns the worst value (inf when minimizing): Optuna's Hydra sweeper
    stopped the whole study with a traceback on None. Both trials run and are recorded."""
    import yaml

    # init.scale=-1 is refused when the config is read, in every trial.
    p, sweep = _optuna(tmp_path, "hydra.sweeper.n_trials=2", "init.scale=choice(-1.0)")
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    failed = sorted(d.name[0] for d in sweep.iterdir() if (d / "error.json").exists())
    assert failed == ["0", "1"]  # the second trial ran after the first failed
    assert "nst: 2 of 2 jobs failed:" in p.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == float("inf")


def _hydra_cfg(sweep: Path):
    """What the report callback reads of the config Hydra hands it."""
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    return OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(sweep)}}})


def test_report_callback_unwritable_report_ends_the_sweep_with_one_line(tmp_path, capsys):
    """The report written by `nst -m` (nst.report.ReportCallback, on fabricated jobs): written
    after each job and at the end; a failed or damaged job lists the failures and exits 1; a
    report that cannot be written is one line `nst: error: ...` at the end, exit 2 (after the
    failures, if any), and nothing after each job."""
    from nst.report import ReportCallback
    from tests.test_report import make_job

    cb = ReportCallback()
    (tmp_path / "empty").mkdir()  # jobs that record no .hydra/: a warning, the sweep's exit stays
    cb.on_multirun_end(_hydra_cfg(tmp_path / "empty"))
    assert capsys.readouterr().err == (
        f"nst: warning: sweep report not written (SweepDirError: {tmp_path}/empty: no job "
        "directories (with .hydra/overrides.yaml) found)\n"
    )

    sweep = tmp_path / "sweep"
    make_job(sweep, 0, {"loss.beta": "100"})
    cfg = _hydra_cfg(sweep)
    cb.on_job_end(cfg)
    cb.on_multirun_end(cfg)  # all finished: no exit
    out = capsys.readouterr()
    assert out.err == "" and out.out.startswith(f"nst: sweep report: {sweep}/contact_sheet.png")
    assert _csv(sweep / "summary.csv")[0]["status"] == "ok"

    bad = make_job(sweep, 1, {"loss.beta": "1000"})
    (bad / "summary.json").write_text("null")
    with pytest.raises(SystemExit) as e:
        cb.on_multirun_end(cfg)
    assert e.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "nst: 1 of 2 jobs failed:",
        f"  {bad.name}: damaged: summary.json unreadable (not a JSON object but null)",
    ]
    assert [r["status"] for r in _csv(sweep / "summary.csv")] == ["ok", "damaged"]

    (sweep / "summary.csv").unlink()
    (sweep / "summary.csv").mkdir()  # the report cannot be written
    cb.on_job_end(cfg)  # said once, at the end
    assert capsys.readouterr() == ("", "")
    with pytest.raises(SystemExit) as e:
        cb.on_multirun_end(cfg)
    assert e.value.code == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.splitlines() == [
        "nst: 1 of 2 jobs failed:",
        f"  {bad.name}: damaged: summary.json unreadable (not a JSON object but null)",
        f"nst: error: sweep report not written: cannot write {sweep}/summary.csv: Is a directory",
    ]
    shutil.rmtree(bad)
    with pytest.raises(SystemExit) as e:
        cb.on_multirun_end(cfg)
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        f"nst: error: sweep report not written: cannot write {sweep}/summary.csv: Is a directory\n"
    )
