"""Metric writers: local JSON lines, fan-out, and W&B (real offline runs; failures never fatal)."""

import json
from pathlib import Path

import numpy as np
import pytest

from nst.tracking.base import LocalWriter, MetricWriter, MultiWriter
from nst.tracking.wandb_tracker import WandbWriter, default_mode, flatten, run_record


class Recorder(MetricWriter):
    def __init__(self):
        self.calls = []

    def write_scalars(self, step, scalars):
        self.calls.append(("scalars", step, dict(scalars)))

    def write_images(self, step, images):
        self.calls.append(("images", step, sorted(images)))

    def write_summary(self, summary):
        self.calls.append(("summary", dict(summary)))

    def close(self, exit_code=0):
        self.calls.append(("close", exit_code))


def test_local_writer(tmp_path):
    w = LocalWriter(tmp_path)
    w.write_scalars(0, {"total": 2.0, "style": float("nan")})
    w.write_scalars(10, {"total": 1.0})
    w.write_images(10, {"step": np.full((4, 5, 3), 200.0)})
    w.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 0, "total": 2.0, "style": "nan"}, {"step": 10, "total": 1.0}]
    assert (tmp_path / "snapshots" / "step_000010.png").exists()


def test_multi_writer_fans_out():
    a, b = Recorder(), Recorder()
    m = MultiWriter([a, b])
    m.write_scalars(3, {"x": 1.0})
    m.write_images(3, {"img": np.zeros((2, 2, 3))})
    m.write_summary({"s": 1})
    m.close(1)
    assert (
        a.calls
        == b.calls
        == [("scalars", 3, {"x": 1.0}), ("images", 3, ["img"]), ("summary", {"s": 1}), ("close", 1)]
    )


def test_flatten_and_mode(monkeypatch):
    assert flatten({"loss": {"beta": 1, "alpha": 2}, "size": 3, "empty": {}}) == {
        "loss.beta": 1,
        "loss.alpha": 2,
        "size": 3,
        "empty": {},
    }
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent/netrc")
    assert default_mode(None) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert default_mode(None) == "online"
    assert default_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B's own variable is honoured
    assert default_mode(None) == "disabled" and default_mode("offline") == "offline"


def test_wandb_login_in_netrc_means_online(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert default_mode(None) == "online"


def _create(tmp_path, **kw):
    args = dict(
        run_dir=tmp_path,
        project="nst-test",
        entity=None,
        mode="offline",
        tags=["t"],
        name="beta=10",
        group="g1",
        job_type="default",
        config={"loss.beta": 10.0},
    )
    args.update(kw)
    return WandbWriter.create(**args)


def test_wandb_offline_run_records_history(tmp_path):
    w = _create(tmp_path)
    assert w is not None
    w.write_scalars(0, {"total": 5.0})
    w.write_scalars(10, {"total": 1.0})
    w.write_result(10, np.full((8, 8, 3), 99.0))
    w.write_summary({"final/total": 1.0})
    w.close(0)
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    media = list((tmp_path / "wandb").glob("offline-run-*/files/media/images/*.png"))
    assert media


def test_wandb_init_failure_warns_once_and_returns_none(tmp_path, monkeypatch, capsys):
    import wandb

    def boom(**kw):
        raise RuntimeError("no\nnetwork")

    monkeypatch.setattr(wandb, "init", boom)
    assert _create(tmp_path) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "W&B logging disabled" in err[0] and "no network" in err[0]


def test_wandb_log_failure_warns_once(capsys):
    class BrokenRun:
        summary = {}

        def log(self, *a, **k):
            raise OSError("disk full")

        def finish(self, **k):
            raise OSError("disk full")

    w = WandbWriter(BrokenRun(), wandb=None)
    for step in range(3):
        w.write_scalars(step, {"total": 1.0})
    w.close(0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk full" in err[0]


def test_wandb_missing_package(tmp_path, monkeypatch, capsys):
    """Without the wandb package a run still gets its local files, and one warning line."""
    import builtins

    from nst.tracking import JobInfo, LocalWriter, TrackerContext, make_writer

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    ctx = TrackerContext(tmp_path, JobInfo(), {"loss": {}}, None, 1.0, False)
    writer = make_writer({"wandb": {"mode": "offline"}}, ctx)
    assert [type(w) for w in writer.writers] == [LocalWriter]
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "W&B logging disabled" in err[0] and "No module named 'wandb'" in err[0]
    )
    writer.write_scalars(0, {"total": 1.0})
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_text().strip() == '{"step": 0, "total": 1.0}'


def test_wandb_offline_run_records_the_directory_to_sync(tmp_path, monkeypatch):
    """logger=wandb offline: wandb_run.json names the run and the directory `wandb sync`
    uploads, relative to the run directory; no URL (there is none until it is synced)."""
    from nst.tracking import JobInfo, TrackerContext, make_writer

    monkeypatch.chdir(tmp_path)  # a relative run directory, as Hydra's default outputs/ is
    ctx = TrackerContext(Path("run"), JobInfo(), {"loss": {}}, None, 1.0, False)
    writer = make_writer({"wandb": {"mode": "offline"}}, ctx)
    writer.close()
    rec = json.loads((tmp_path / "run" / "wandb_run.json").read_text())
    run_id = (tmp_path / "run" / "wandb_run_id").read_text()
    assert rec == {
        "id": run_id,
        "mode": "offline",
        "url": None,
        "sync_dir": rec["sync_dir"],
    }
    sync = Path(rec["sync_dir"])
    assert sync.parent == Path("wandb") and sync.name.startswith("offline-run-")
    assert sync.name.endswith(f"-{run_id}") and (tmp_path / "run" / sync).is_dir()


def test_wandb_run_record_online_and_disabled(tmp_path):
    """Online runs record their URL; a disabled run has nothing to link to."""
    from types import SimpleNamespace

    online = SimpleNamespace(id="abc123", offline=False, url="https://wandb.ai/me/nst/runs/abc123")
    assert run_record(online, tmp_path) == {
        "id": "abc123",
        "mode": "online",
        "url": "https://wandb.ai/me/nst/runs/abc123",
        "sync_dir": None,
    }
    assert run_record(SimpleNamespace(id="x", disabled=True), tmp_path) is None
    outside = SimpleNamespace(
        id="y", offline=True, settings=SimpleNamespace(sync_dir=str(tmp_path / "elsewhere"))
    )
    assert run_record(outside, tmp_path / "run")["sync_dir"] == str(tmp_path / "elsewhere")


@pytest.mark.parametrize("exit_code", [0, 1])
def test_close_is_idempotent(tmp_path, exit_code):
    w = _create(tmp_path)
    w.close(exit_code)
    w.close(exit_code)
    assert w.run is None


def test_tensorboard_tracker_event_files_read_back(tmp_path, write_png):
    """logger=[tensorboard] next to the local files: TensorBoard's own reader finds every
    logged scalar at its step and the snapshot and result images."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.test_cli import TINY, nst

    c = write_png("c.png", 30, 40, 1)
    out = tmp_path / "run"
    p = nst(f"content={c}", f"style={c}", *TINY, "logger=[tensorboard]", f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stderr
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tags = acc.Tags()
    assert {"total", "style", "content/relu2_2"} <= set(tags["scalars"])
    totals = acc.Scalars("total")
    assert [e.step for e in totals] == [r["step"] for r in rows]
    assert [e.value for e in totals] == pytest.approx([r["total"] for r in rows], rel=1e-6)
    assert {"step", "result"} <= set(tags["images"])
    assert acc.Images("result")[-1].width == 40
