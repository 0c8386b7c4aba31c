"""Bad inputs and faults: exit code 2 (130/143 for signals), one stderr line, no traceback, and
the files left as the docs promise. One test per case of the reliability issue's table."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli import SMALL_LAYERS, TINY, nst

FAST = [a for a in TINY if not a.startswith(("steps=", "save_every="))] + ["save_every=0"]


def one_line_error(p: subprocess.CompletedProcess, code: int = 2) -> str:
    err = p.stderr.strip()
    assert p.returncode == code, (p.returncode, p.stderr)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("nst: error:") or err.startswith("nst: interrupted"), err
    return err


def snapshot(d: Path) -> dict[Path, bytes]:
    """Every file's bytes (Hydra's job log, app.log, is opened by every run and holds nothing)."""
    return {p: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != "app.log"}


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory, write_png_module):
    """A run directory stopped after a checkpoint at step 4 of 8 (the summary says
    interrupted), made once and copied per test."""
    import nst as api
    from nst.errors import RunInterrupted

    d = tmp_path_factory.mktemp("ckpt")
    c, s = write_png_module(d / "c.png", 30, 40, 1), write_png_module(d / "s.png", 40, 40, 2)
    args = [f"content={c}", f"style={s}", *FAST, "steps=8", "checkpoint_every=4"]
    run = d / "run"
    calls = {"n": 0}

    def stop_after_first_checkpoint():
        calls["n"] += 1
        return calls["n"] >= 4  # polled after every call; steps 1..4, checkpoint at 4

    from nst import run as nrun

    orig = nrun.stop_on_signals

    class Flag:
        signum = signal.SIGINT

        def is_set(self):
            return stop_after_first_checkpoint()

    import contextlib

    @contextlib.contextmanager
    def fake():
        yield Flag()

    nrun.stop_on_signals = fake
    try:
        with pytest.raises(RunInterrupted):
            api.stylize(overrides=args, output_dir=run)
    finally:
        nrun.stop_on_signals = orig
    assert (run / "checkpoint.npz").exists()
    (run / ".hydra").mkdir(exist_ok=True)
    (run / ".hydra" / "config.yaml").write_text("the run's own record\n")
    return run, args


@pytest.fixture(scope="module")
def write_png_module():
    import numpy as np
    from PIL import Image

    from tests.conftest import smooth_image

    def _write(path: Path, h: int, w: int, seed: int) -> Path:
        Image.fromarray(smooth_image(h, w, seed).astype(np.uint8)).save(path)
        return path

    return _write


@pytest.fixture
def stopped_run(checkpointed, tmp_path):
    src, args = checkpointed
    run = tmp_path / "run"
    shutil.copytree(src, run)
    return run, args


def test_steps_zero_writes_the_initial_image(tmp_path, write_png):
    c = write_png("c.png", 30, 40, 1)
    out = tmp_path / "run"
    p = nst(f"content={c}", f"style={c}", *FAST, "steps=0", f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == 0 and not summary["stopped_early"]
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [0]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["seed=-1", "init=noise"], "seed must be an integer in [0, 2**32), got -1"),
        (["backbone.seed=-1"], "backbone.seed must be an integer in [0, 2**32), got -1"),
        (["init.path=/nope.png"], "init.path=/nope.png is only read with init=file"),
        (["steps=-1"], "steps must be >= 0, got -1"),
    ],
    ids=["seed", "backbone-seed", "init-path-ignored", "negative-steps"],
)
def test_bad_values_before_anything_runs(tmp_path, args, needle):
    out = tmp_path / "run"
    err = one_line_error(nst(*FAST, *args, f"hydra.run.dir={out}"))
    assert needle in err
    assert not (out / "result.png").exists() and not (out / "summary.json").exists()


def test_resume_with_fewer_steps_than_the_checkpoint(stopped_run):
    run, args = stopped_run
    before = snapshot(run)
    err = one_line_error(nst(*args, "steps=2", f"hydra.run.dir={run}", "resume=true"))
    assert "checkpoint" in err and "at step 4, past steps=2" in err and "steps >= 4" in err
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "change, listed", [("size=48", "size: 40 -> 48"), ("loss.beta=10", "loss.beta: 1000.0 -> 10.0")]
)
def test_resume_with_another_config_refuses_and_changes_nothing(stopped_run, change, listed):
    run, args = stopped_run
    before = snapshot(run)
    err = one_line_error(nst(*args, change, f"hydra.run.dir={run}", "resume=true"))
    assert err.startswith("nst: error: resume=true:") and listed in err
    assert snapshot(run) == before  # .hydra/config.yaml included


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_says_how_to_start_over(stopped_run, damage):
    run, args = stopped_run
    ckpt = run / "checkpoint.npz"
    data = ckpt.read_bytes()
    ckpt.write_bytes(b"not a checkpoint" if damage == "garbage" else data[: len(data) // 2])
    err = one_line_error(nst(*args, f"hydra.run.dir={run}", "resume=true"))
    assert f"checkpoint {ckpt} is corrupt or truncated" in err and "to start over" in err
    assert "allow_pickle" not in err and not (run / "result.png").exists()


@pytest.mark.long
def test_resume_in_an_empty_directory_says_it_starts_fresh(tmp_path, write_png):
    c = write_png("c.png", 30, 40, 1)
    out = tmp_path / "run"
    p = nst(f"content={c}", f"style={c}", *FAST, "steps=2", f"hydra.run.dir={out}", "resume=true")
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == f"nst: nothing to resume in {out}: starting a new run"
    assert (out / "result.png").exists() and (out / ".hydra" / "config.yaml").exists()


def test_rerun_into_a_finished_directory_refuses_and_keeps_it(tmp_path, write_png):
    c = write_png("c.png", 30, 40, 1)
    out = tmp_path / "run"
    args = [f"content={c}", f"style={c}", *FAST, "steps=2", f"hydra.run.dir={out}"]
    assert nst(*args).returncode == 0
    before = snapshot(out)
    err = one_line_error(nst(*args))
    assert f"{out} already holds a run" in err and "resume=true" in err
    # a failing re-run (a bad image) leaves the finished run as it was too
    one_line_error(nst(*args, "style=/nope.png"))
    assert snapshot(out) == before and not (out / "error.json").exists()
    rows = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == sorted(set(rows))  # metrics.jsonl never holds two runs


def test_output_directory_under_proc(tmp_path):
    err = one_line_error(nst(*FAST, "hydra.run.dir=/proc/nst-run"))
    assert "cannot write /proc/nst-run" in err


def _mount_tmpfs(path: Path, opts: str) -> None:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True
    )
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.decode().strip()})")


@pytest.fixture
def mounts():
    made: list[Path] = []
    yield made
    for m in made:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


def test_default_outputs_in_a_read_only_working_directory(tmp_path, mounts):
    ro = tmp_path / "ro"
    _mount_tmpfs(ro, "ro,size=64k")
    mounts.append(ro)
    p = subprocess.run(
        [sys.executable, "-m", "nst.app", *FAST],
        cwd=ro,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    err = one_line_error(p)
    assert "cannot write outputs: Read-only file system" in err and "hydra.run.dir=DIR" in err


@pytest.mark.slow  # an end-to-end CLI case: CI's slow step runs it
def test_full_disk_at_start_and_at_the_first_checkpoint(tmp_path, write_png, mounts):
    c = write_png("c.png", 30, 40, 1)
    full = tmp_path / "full"
    _mount_tmpfs(full, "size=64k")
    mounts.append(full)
    fd = os.open(full / "filler", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError) as e:  # fill it up
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    assert e.value.errno == errno.ENOSPC
    err = one_line_error(nst(f"content={c}", f"style={c}", *FAST, f"hydra.run.dir={full}/run"))
    assert "No space left on device" in err and "resume=true" in err
    (full / "filler").unlink()
    # Room for the run's small files but not for its first checkpoint (Adam's state: 3 images).
    (full / "filler").write_bytes(b"\0" * (64 * 1024 - 36 * 1024))
    run = full / "run2"
    args = [f"content={c}", f"style={c}", *FAST, "steps=4", "checkpoint_every=2", "size=64"]
    err = one_line_error(nst(*args, f"hydra.run.dir={run}"))
    assert f"cannot write {run / 'checkpoint.npz'}: No space left on device" in err
    assert not (run / "result.png").exists() and not (run / "summary.json").exists()
    assert not list(run.glob(".checkpoint.npz.*"))  # no half-written file


def test_full_disk_at_the_result_keeps_the_checkpoint_for_resume(tmp_path, write_png, monkeypatch):
    """After the whole run, result.png cannot be written: one line; the last checkpoint stays,
    and resume=true finishes the run once there is space, byte-identical to a clean run."""
    import tempfile

    import nst as api
    from nst.errors import NstError

    c = write_png("c.png", 30, 40, 1)
    args = [f"content={c}", f"style={c}", *FAST, "steps=4", "checkpoint_every=2"]
    ref = api.stylize(overrides=args, output_dir=tmp_path / "ref")
    real = tempfile.mkstemp

    def full(*a, **k):
        if str(k.get("prefix", "")).startswith(".result.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr("nst.files.tempfile.mkstemp", full)
    run = tmp_path / "run"
    with pytest.raises(NstError, match=r"cannot write .*result.png: No space left on device"):
        api.stylize(overrides=args, output_dir=run)
    assert (run / "checkpoint.npz").exists() and not (run / "summary.json").exists()
    monkeypatch.setattr("nst.files.tempfile.mkstemp", real)
    again = api.stylize(overrides=[*args, "resume=true"], output_dir=run)
    assert (again.image == ref.image).all()


@pytest.mark.long
def test_non_ascii_path_without_quotes_works(tmp_path, write_png):
    c = write_png("bild_ü.png", 30, 40, 1)
    out = tmp_path / "run"
    p = nst(f"content={c}", f"style={c}", *FAST, "steps=0", f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stderr
    err = one_line_error(nst(f"content={c},{c}", *FAST, f"hydra.run.dir={tmp_path / 'x'}"))
    assert "must be quoted" in err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_set_up(tmp_path, write_png, sig, code):
    c = write_png("c.png", 30, 40, 1)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nst.app", f"content={c}", f"style={c}", *FAST, "steps=100000"]
        + [f"hydra.run.dir={out}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.time()
    while not (out / ".hydra").exists():  # Hydra has set the job up: nst's code is running
        assert proc.poll() is None and time.time() - t0 < 120, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    line = err.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line and "interrupted" in line, err
    assert not (out / "result.png").exists()


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda d: (d / "w.npz").write_bytes(b"garbage"), "not an .npz archive"),
        (lambda d: (d / "w.npz").write_bytes(b"PK\x03\x04broken"), "cannot read weights"),
    ],
    ids=["garbage", "broken-zip"],
)
def test_corrupt_weights_file_messages(tmp_path, make, needle):
    make(tmp_path)
    p = nst(
        *FAST,
        "backbone.weights=file",
        f"backbone.weights_path={tmp_path / 'w.npz'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    err = one_line_error(p)
    assert needle in err and "allow_pickle" not in err


def test_weights_errors_name_real_keys(tmp_path):
    err = one_line_error(nst(*FAST, "backbone.weights=torchvision", f"hydra.run.dir={tmp_path}/r"))
    assert "backbone.weights=torchvision needs backbone.weights_path=" in err
    assert "backbone.source" not in err


def test_image_too_small_says_which_size_works(tmp_path):
    full = [a for a in FAST if a not in SMALL_LAYERS]  # the default layers, down to relu5_1
    err = one_line_error(nst(*full, "size=8", f"hydra.run.dir={tmp_path}/r"))
    assert "use size=" in err and "or more" in err
    assert err.startswith("nst: error: size=8 makes content image 8x5 px, its shorter side below")
    size = int(err.split("use size=")[1].split()[0])
    # the size it names is the smallest that works (the same check, in-process)
    import nst as nst_api
    from nst.images import load_image
    from nst.run import size_problem
    from nst.spec import RunSpec

    spec = RunSpec.from_config(nst_api.load_config(["size=8"]))
    hws = [load_image(x).shape[:2] for x in ("sample:chelsea", *spec.styles)]  # the defaults
    assert size_problem(spec, hws[0], hws[1:], size) is None
    assert size_problem(spec, hws[0], hws[1:], size - 1) is not None


def test_size_hint_for_elongated_images_and_styles_names_a_size_that_works():
    """The hint is searched, not scaled from the rounded short side (which for a 4000x4
    image named a size that failed again), and names the style when the style is too small."""
    import nst as nst_api
    from nst.errors import ConfigError
    from nst.run import check_size, size_problem
    from nst.spec import RunSpec

    spec = RunSpec.from_config(nst_api.load_config([]))
    wide, square = (4, 4000), (300, 300)
    with pytest.raises(ConfigError) as e:
        check_size(spec, wide, [square], 512)
    msg = str(e.value)
    assert msg.startswith("size=512 makes content image 512x1 px") and "\n" not in msg
    size = int(msg.split("use size=")[1].split()[0])
    assert size_problem(spec, wide, [square], size) is None
    assert size_problem(spec, wide, [square], size - 1) is not None
    with pytest.raises(ConfigError, match=r"makes the style image 64x1 px.*relu5_1; use size="):
        check_size(spec, (300, 400), [wide], 64)
    with pytest.raises(ConfigError, match="makes style image 2 .* use size="):
        check_size(spec, (300, 400), [square, wide], 64)
    spec.pyramid_levels, spec.pyramid_scale_factor = 2, 2.0
    with pytest.raises(ConfigError, match=r"content image .* at pyramid level 0 \(16 px\)"):
        check_size(spec, (300, 400), [square], 32)


@pytest.mark.slow  # an end-to-end CLI case: CI's slow step runs it
def test_early_stop_from_the_command_line(tmp_path, write_png):
    """early_stop.patience=1 with a demanding min_delta ends the run at the first log row that
    does not improve by it: fewer steps than asked, a finished summary, the last row there."""
    c, s = write_png("c.png", 30, 40, 1), write_png("s.png", 40, 40, 2)
    out = tmp_path / "run"
    p = nst(
        f"content={c}",
        f"style={s}",
        *FAST,
        "steps=50",
        "log_every=1",
        "early_stop.patience=1",
        "early_stop.min_delta=0.9",
        f"hydra.run.dir={out}",
    )
    assert p.returncode == 0, p.stderr
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "ok" and 0 < summary["steps"] < 50 and summary["stopped_early"]
    assert "steps in" in p.stdout and ", stopped early on a plateau)" in p.stdout
    assert rows[-1]["step"] == summary["steps"]


@pytest.mark.parametrize("which", ["content", "style"])
def test_output_naming_an_input_image_is_refused_and_the_input_kept(tmp_path, write_png, which):
    c, s = write_png("c.png", 30, 40, 1), write_png("s.png", 40, 40, 2)
    before = {c: c.read_bytes(), s: s.read_bytes()}
    target = c if which == "content" else s
    out = tmp_path / "run"
    # The same file by another spelling of its path.
    alias = tmp_path / "." / target.name
    p = nst(f"content={c}", f"style={s}", *FAST, f"output={alias}", f"hydra.run.dir={out}")
    err = one_line_error(p)
    assert err == (
        f"nst: error: output={alias} is the {which} image: the result would overwrite it; "
        "name another file"
    )
    assert {k: k.read_bytes() for k in before} == before
    assert not (out / "result.png").exists() and not (out / "metrics.jsonl").exists()


def test_unwritable_output_is_refused_before_anything_runs(tmp_path, write_png):
    c = write_png("c.png", 30, 40, 1)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    out = tmp_path / "run"
    p = nst(f"content={c}", *FAST, f"output={blocker}/x.png", f"hydra.run.dir={out}")
    err = one_line_error(p)
    assert err.startswith(f"nst: error: cannot write {blocker}: ")
    assert not (out / "metrics.jsonl").exists() and not (out / "result.png").exists()
    assert blocker.read_text() == "not a directory"


def test_output_write_failure_at_the_end_keeps_the_result_in_the_run_directory(tmp_path):
    import numpy as np

    from nst import run as nrun
    from nst.errors import NstError

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(NstError) as e:
        nrun._save_output(np.zeros((4, 4, 3), np.float32), f"{blocker}/x.png", run_dir)
    assert str(e.value).startswith(f"cannot write {blocker}")
    assert str(e.value).endswith(f"; the result is kept in {run_dir / 'result.png'}")


def test_memory_check_counts_the_style_resized_to_the_content(monkeypatch):
    """A panorama content with a square style: the style becomes a size x size image, far
    larger than the content; its targets' memory is checked too (an OOM kill otherwise)."""
    import nst as nst_api
    from nst import run as nrun
    from nst.errors import ConfigError
    from nst.spec import RunSpec

    monkeypatch.setattr(nrun, "available_memory", lambda: 20 * 2**30)
    spec = RunSpec.from_config(nst_api.load_config([]))
    nrun.check_memory(spec, (200, 4000), 4000)  # the content alone fits
    with pytest.raises(ConfigError) as e:
        nrun.check_memory(spec, (200, 4000), 4000, [(500, 500)])
    assert str(e.value).startswith(
        "size=4000 resizes the style image to 4000x4000 px (the content's longest side times "
        "style_scale=1), which needs an estimated "
    )
    assert str(e.value).endswith("GiB available); use a smaller size or style_scale")
    assert "GiB usable (90% of " in str(e.value)
    nrun.check_memory(spec, (200, 4000), 4000, [(50, 1000)])  # a style of the same shape fits
    # With remat the targets are taken in strips too: a style of the content's shape fits
    # wherever the content's step does.
    spec = RunSpec.from_config(nst_api.load_config(["backbone.remat=true"]))
    nrun.check_memory(spec, (3000, 4000), 4096, [(3000, 4000)])


@pytest.mark.parametrize("flag", [[], ["-m"]])
def test_an_empty_run_or_sweep_dir_is_refused(tmp_path, flag):
    key = "hydra.sweep.dir" if flag else "hydra.run.dir"
    p = subprocess.run(
        [sys.executable, "-m", "nst.app", *flag, *FAST, f"{key}="],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    err = one_line_error(p)
    assert err.startswith(f"nst: error: {key} is empty: name a directory")
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory


def test_an_unavailable_jax_platform_is_one_line():
    code = "from nst.devices import check_backend; check_backend()"
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cuda", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("nst.errors.NstError: JAX cannot start its backend: no listed platform")
    assert last.endswith("(JAX_PLATFORMS=cuda: unset it or install JAX for that platform)")


def test_a_mask_of_another_aspect_ratio_is_stretched_with_a_warning(capsys):
    import numpy as np

    from nst import run as nrun

    wide = np.zeros((20, 100, 3), np.float32)
    nrun._check_mask_aspect(wide, (30, 40), "content_mask")
    out = nrun._fit_mask(wide, (30, 40))
    assert out.shape == (30, 40)
    assert capsys.readouterr().err == (
        "nst: warning: content_mask is 100x20 px, stretched to the 40x30 px image it masks "
        "(another aspect ratio: its regions move)\n"
    )
    nrun._check_mask_aspect(np.zeros((31, 40, 3), np.float32), (30, 40), "content_mask")
    assert capsys.readouterr().err == ""  # within 5%: no warning


def test_resume_refuses_a_sweep_directory_started_with_other_overrides(tmp_path):
    """A resumed sweep must name the same job directories: other swept values, or a changed
    steps (part of each job's directory name), would mix two sweeps in one directory."""
    from omegaconf import OmegaConf

    from nst.app import check_output_dirs

    sweep = tmp_path / "sweep"
    (sweep / "0_loss.beta=100.0").mkdir(parents=True)
    (sweep / "0_loss.beta=100.0" / "summary.json").write_text("{}")
    task = ["size=32", "loss.beta=1e2,1e3", "progress=false", "~loss.ab_ratio"]
    OmegaConf.save({"hydra": {"overrides": {"task": task}}}, sweep / "multirun.yaml")
    same = ["-m", "progress=true", "loss.beta=100.0,1000.0", "size=32", f"hydra.sweep.dir={sweep}"]
    same += ["~loss.ab_ratio", "hydra/launcher=batched"]  # Hydra's groups are not in the record
    assert check_output_dirs([*same, "resume=true"]) is None  # run-only keys may change
    other = ["-m", "size=32", "loss.beta=5,6", "~loss.ab_ratio", f"hydra.sweep.dir={sweep}"]
    other.append("resume=true")
    assert check_output_dirs(other) == (
        f"resume=true: {sweep} holds another sweep (loss.beta: 100.0,1000.0 -> 5,6); resume "
        "it with the overrides it was started with, or choose another hydra.sweep.dir"
    )
    longer = ["-m", "size=32", "steps=9", "loss.beta=1e2,1e3", "~loss.ab_ratio"]
    longer.append(f"hydra.sweep.dir={sweep}")
    assert "(steps: - -> 9)" in check_output_dirs([*longer, "resume=true"])
    # Without resume=true the directory holding a run is refused as before.
    assert "already holds a run" in check_output_dirs(same)


def _checkpoint(tmp_path, **change):
    """A checkpoint as save_checkpoint writes it (meta, step, leaves), with ``change`` applied
    (a value None drops the array)."""
    import numpy as np

    arrays = {
        "step": np.asarray(3),
        "meta": np.asarray('{"config": {"size": 32}}'),
        "leaf_0000": np.zeros((4, 5, 3), np.float32),
        "leaf_0001": np.zeros((4, 5, 3), np.float32),
        "leaf_0002": np.asarray(3),
    }
    for k, v in change.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    path = tmp_path / "checkpoint.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"leaf_0001": None}, "missing state arrays"),
        ({"meta": None}, "no run record"),
        ({"meta": "{}"}, "an empty run record"),
        ({"step": -5}, "step -5"),
        ({"leaf_0000": np.full((4, 5, 3), np.nan, np.float32)}, "non-finite values in leaf_0000"),
    ],
)
def test_a_damaged_checkpoint_is_named_corrupt_before_anything_changes(tmp_path, change, reason):
    from nst.rundir import CheckpointError, read_checkpoint

    path = _checkpoint(
        tmp_path, **{k: np.asarray(v) if v is not None else None for k, v in change.items()}
    )
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(e.value).startswith(f"checkpoint {path} is corrupt or truncated ({reason}")
    arrays, meta = read_checkpoint(_checkpoint(tmp_path))
    assert meta == {"config": {"size": 32}} and int(arrays["step"]) == 3


def test_a_checkpoint_of_another_shape_does_not_fit_in_one_line():
    import jax.numpy as jnp

    from nst.engine import restore_state
    from nst.rundir import CheckpointError

    template = {"image": jnp.zeros((4, 5, 3)), "step": jnp.asarray(0)}
    with pytest.raises(
        CheckpointError, match=r"^the checkpoint does not fit this run \(state array"
    ):
        restore_state(
            template, {"leaf_0000": np.zeros((4, 6, 3), np.float32), "leaf_0001": np.asarray(0)}
        )
    with pytest.raises(CheckpointError, match="fewer state arrays than this run"):
        restore_state(template, {"leaf_0000": np.zeros((4, 5, 3), np.float32)})


def test_masks_that_leave_a_style_nowhere_warn(capsys):
    from nst import run as nrun

    black, white = np.zeros((6, 8)), np.ones((6, 8))
    nrun._warn_empty_regions(black, [None], 1)
    assert capsys.readouterr().err == (
        "nst: warning: content_mask has no bright part, so style image 1 applies nowhere\n"
    )
    nrun._warn_empty_regions(white, [None, black], 2)
    assert capsys.readouterr().err == (
        "nst: warning: content_mask has no dark part, so style image 1 applies nowhere\n"
        "nst: warning: style_mask 2 is black everywhere, so style image 2 gives no statistics\n"
    )
    half = np.concatenate([black[:3], white[3:]])
    nrun._warn_empty_regions(half, [None, None], 2)
    assert capsys.readouterr().err == ""


def test_beta_beside_ab_ratio_warns_that_it_is_unused(capsys):
    import nst as nst_api
    from nst import run as nrun
    from nst.spec import RunSpec

    nrun._warn_unused_beta(RunSpec.from_config(nst_api.load_config(["impl=paper", "loss.beta=10"])))
    err = capsys.readouterr().err
    assert err.startswith("nst: warning: loss.beta=10 is not used: loss.ab_ratio=0.001 sets beta")
    nrun._warn_unused_beta(RunSpec.from_config(nst_api.load_config(["impl=paper"])))
    nrun._warn_unused_beta(RunSpec.from_config(nst_api.load_config(["loss.beta=10"])))
    assert capsys.readouterr().err == ""


def test_a_second_process_on_a_busy_run_directory_is_refused_and_writes_nothing(tmp_path):
    """Two runs started at once on one directory (resume=true lets both past the fresh-directory
    check) must not mix their files: the one that finds the directory locked stops in one line."""
    from nst import rundir

    run = tmp_path / "run"
    run.mkdir()
    held = rundir.lock(run)  # as a running nst process holds it
    try:
        assert held is not None
        p = nst(*FAST, f"hydra.run.dir={run}", "resume=true")
        err = one_line_error(p)
        assert err == (
            f"nst: error: another nst process is running in {run}; wait for it to end, or choose "
            "another directory"
        )
        assert not (run / "error.json").exists() and not (run / "metrics.jsonl").exists()
    finally:
        rundir.unlock(held)
    again = rundir.lock(run)  # released: the next run may take it
    assert again is not None
    rundir.unlock(again)
