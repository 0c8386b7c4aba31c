"""The real `nst` command in a subprocess: run-directory contract, acceptance runs, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PAPER_IMAGES, needs_paper_images

SMALL_LAYERS = [
    "layers=custom",
    "layers.content_layers={relu2_2: 1.0}",
    "layers.style_layers={relu1_1: 0.5, relu2_1: 0.5}",
]
TINY = [
    "backbone=random_vgg16",
    "size=40",
    "steps=4",
    "log_every=2",
    "save_every=2",
    "progress=false",
    # The fixed evaluation (~1.5 s a run) is tested where it is the subject.
    "eval.enabled=false",
    # Two blocks of VGG instead of four: a fraction of the compile; the full network is run
    # where it is the subject (the paper's layers, the defaults, the evaluation).
    *SMALL_LAYERS,
]
# TINY on the default layers (content relu4_2, style up to relu5_1): where they are the subject.
TINY_DEFAULT_LAYERS = [a for a in TINY if a not in SMALL_LAYERS]


def nst(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nst.app", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_clean_failure(p: subprocess.CompletedProcess, run_dir: Path, *needles: str) -> str:
    """Exit code 2, one stderr line starting with ``nst: error:`` holding every needle, no
    traceback, and no result claimed in ``run_dir``."""
    assert p.returncode == 2, (p.returncode, p.stderr)
    msg = p.stderr.strip()
    assert len(msg.splitlines()) == 1, msg  # one line, no traceback
    assert msg.startswith("nst: error:")
    for n in needles:
        assert n in msg, msg
    assert not (run_dir / "result.png").exists()
    assert not (run_dir / "summary.json").exists()
    return msg


def test_run_directory_contract(tmp_path, write_png):
    c, s = write_png("c.png", 30, 40, 1), write_png("s.png", 50, 50, 2)
    out = tmp_path / "run"
    p = nst(f"content={c}", f"style={s}", *TINY, f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stderr
    assert str(out / "result.png") in p.stdout
    assert Image.open(out / "result.png").size == (40, 30)  # longest side = size
    r = rows(out)
    assert [x["step"] for x in r] == [0, 2, 4]
    for key in (
        "total",
        "content",
        "style",
        "tv",
        "sec_per_step",
        "style/relu1_1",
        "content/relu2_2",
    ):
        assert key in r[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == 4
    assert summary["backbone"]["arch"] == "vgg16" and summary["content"]["hw"] == [30, 40]
    assert summary["final"]["total"] == pytest.approx(r[-1]["total"])
    assert summary["seed"] == 0 and summary["config"]["seed"] == 0
    assert {"nst", "jax", "flax", "optax", "numpy", "python", "backend"} <= set(summary["versions"])
    weights = summary["backbone"]
    assert weights["source"] == "random" and len(weights["params_digest"]) == 64
    assert (out / ".hydra" / "config.yaml").exists()
    assert sorted(x.name for x in (out / "snapshots").iterdir()) == ["step_000002.png"]


@pytest.mark.slow  # ~31s on a Zen 3 core pair: kept out of the default suite, run by CI's slow step
@needs_paper_images
def test_acceptance_tubingen_starry_night(tmp_path):
    """Issue acceptance 2: real VGG16, 128 px, 60 steps; style loss falls >= 10x."""
    out = tmp_path / "run"
    p = nst(
        f"content={PAPER_IMAGES / 'tubingen.jpg'}",
        f"style={PAPER_IMAGES / 'starry_night.jpg'}",
        "size=128",
        "steps=60",
        "progress=false",
        f"hydra.run.dir={out}",
    )
    assert p.returncode == 0, p.stderr
    r = rows(out)
    assert r[-1]["step"] == 60 and r[-1]["style"] * 10 <= r[0]["style"]
    assert max(Image.open(out / "result.png").size) == 128


@pytest.mark.parametrize(
    "variant, key, value",
    [
        pytest.param("optimizer=lbfgs", "optimizer.name", "lbfgs", marks=pytest.mark.slow),
        ("init=noise", "init.name", "noise"),
        pytest.param("backbone=random_vgg19", "backbone.arch", "vgg19", marks=pytest.mark.slow),
        ("loss.gram_norm=paper", "loss.gram_norm", "paper"),
        pytest.param("backbone.pooling=avg", "backbone.pooling", "avg", marks=pytest.mark.slow),
    ],
    ids=lambda v: v if isinstance(v, str) and "=" in v else "",
)
def test_variants_reduce_total_loss(write_png, variant, key, value):
    """Issue acceptance 3 (on random weights and tiny images, to stay fast; in-process through
    the same run as the CLI): the variant is in effect (the resolved config says so and the
    default's value differs) and the total loss falls."""
    import nst

    c, s = write_png("c.png", 32, 48, 1), write_png("s.png", 48, 48, 2)
    args = ["backbone=random_vgg16", "size=48", "steps=8", "progress=false", "log_every=4"]
    args += ["eval.enabled=false", *SMALL_LAYERS]
    r = nst.stylize(str(c), str(s), overrides=[*args, variant])
    section, name = key.split(".")
    assert r.config[section][name] == value
    assert nst.load_config(args)[section][name] != value
    assert r.history[-1]["total"] < r.history[0]["total"]


@pytest.mark.slow  # ~39s on a Zen 3 core pair: kept out of the default suite, run by CI's slow step
def test_same_seed_byte_identical_across_processes(tmp_path, write_png):
    """Issue acceptance 4 (noise init, so the seed matters)."""
    c, s = write_png("c.png", 32, 32, 1), write_png("s.png", 32, 32, 2)
    outs = [tmp_path / "a", tmp_path / "b", tmp_path / "other_seed"]
    for out, seed in zip(outs, [7, 7, 8], strict=True):
        p = nst(
            f"content={c}",
            f"style={s}",
            *TINY,
            "init=noise",
            f"seed={seed}",
            f"hydra.run.dir={out}",
        )
        assert p.returncode == 0, p.stderr
    data = [(o / "result.png").read_bytes() for o in outs]
    assert data[0] == data[1]
    assert data[0] != data[2]


def test_vgg19_offline_without_weights_is_one_line(tmp_path, write_png):
    """Issue acceptance 5: no network, no file -> one line naming URL, md5 and what to do."""
    c = write_png("c.png")
    out = tmp_path / "run"
    p = nst(
        f"content={c}",
        f"style={c}",
        "backbone=vgg19",
        "size=32",
        "steps=1",
        f"hydra.run.dir={out}",
        env={"NST_CACHE_DIR": str(tmp_path / "cache")},
    )
    msg = assert_clean_failure(
        p,
        out,
        "253f8cb515780f3b799900260a226db6",
        "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "weights_path",
    )
    assert "http" in msg


def _bad_inputs(tmp: Path, good: Path) -> dict[str, tuple[list[str], list[str], dict]]:
    """name -> (overrides, needles in the one-line message, extra env)."""
    from PIL import Image

    text = tmp / "notes.txt"
    text.write_text("not an image")
    empty = tmp / "empty.png"
    empty.write_bytes(b"")
    jpg = tmp / "t.jpg"
    Image.open(good).convert("RGB").save(jpg, quality=95)
    cut_jpg = tmp / "cut.jpg"
    cut_jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    cut_png = tmp / "cut.png"
    cut_png.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    afile = tmp / "afile"
    afile.write_text("x")
    bad_h5 = tmp / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
    bad_h5.write_bytes(b"not the weights")
    return {
        "missing-content": (
            ["content=/nonexistent/c.png"],
            ["/nonexistent/c.png", "no such file"],
            {},
        ),
        "missing-style": ([f"style={tmp / 'nope.jpg'}"], ["nope.jpg", "no such file"], {}),
        "directory": ([f"content={tmp}"], [str(tmp), "directory"], {}),
        "not-an-image": ([f"content={text}"], ["notes.txt", "not an image"], {}),
        "truncated-jpeg": ([f"content={cut_jpg}"], ["cut.jpg", "decode"], {}),
        "truncated-png": ([f"style={cut_png}"], ["cut.png", "decode"], {}),
        "zero-bytes": ([f"content={empty}"], ["empty.png", "0 bytes"], {}),
        "pixel-limit": (["max_pixels=100"], ["exceeds the limit of 100"], {}),
        "too-small": (["size=8"], ["minimum", "16"], {}),
        "size-zero": (["size=0"], ["size"], {}),
        "size-absurd": (["size=200000"], ["size=200000", "GiB", "available"], {}),
        "unknown-layer": (["layers.style_layers={conv9_1: 1.0}"], ["conv9_1", "conv5_3"], {}),
        "empty-layers": (["layers=custom"], ["empty"], {}),
        "negative-weight": (["loss.beta=-1"], ["loss.beta", "-1"], {}),
        "nan-weight": (["loss.alpha=nan"], ["loss.alpha", "nan"], {}),
        "nan-layer-weight": (["layers.style_layers.conv1_1=nan"], ["conv1_1=nan"], {}),
        "init-file-no-path": (["init=file"], ["init.path"], {}),
        "init-file-missing": (["init=file", "init.path=/nope/start.png"], ["/nope/start.png"], {}),
        "weights-checksum": (
            ["backbone=vgg19", f"backbone.weights_path={bad_h5}"],
            [bad_h5.name, "253f8cb515780f3b799900260a226db6"],
            {},
        ),
        "cache-dir-unusable": (["backbone=vgg16"], [str(afile)], {"NST_CACHE_DIR": str(afile)}),
    }


BAD_INPUTS = [
    "missing-content",
    "missing-style",
    "directory",
    "not-an-image",
    "truncated-jpeg",
    "truncated-png",
    "zero-bytes",
    "pixel-limit",
    "too-small",
    "size-zero",
    "size-absurd",
    "unknown-layer",
    "empty-layers",
    "negative-weight",
    "nan-weight",
    "nan-layer-weight",
    "init-file-no-path",
    "init-file-missing",
    "weights-checksum",
    "cache-dir-unusable",
]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_one_line(tmp_path, write_png, case):
    """Issue 5 acceptance 1: each bad input -> exit != 0, one line naming the problem, and no
    result.png / summary.json claiming success."""
    good = write_png("good.png")
    args, needles, env = _bad_inputs(tmp_path, good)[case]
    out = tmp_path / "run"
    # The size check and the empty layer set are about the default layers.
    base = TINY_DEFAULT_LAYERS if case in ("too-small", "empty-layers") else TINY
    p = nst(f"content={good}", f"style={good}", *base, *args, f"hydra.run.dir={out}", env=env)
    assert_clean_failure(p, out, *needles)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("optimizer=adamm", "Could not find 'optimizer/adamm'"),
        ("backbone=resnet", "Could not find 'backbone/resnet'"),
        ("init=zeros", "Could not find 'init/zeros'"),
    ],
)
def test_unknown_group_option_is_hydras_clear_message(tmp_path, override, needle):
    out = tmp_path / "run"
    p = nst(*TINY, override, f"hydra.run.dir={out}")
    assert p.returncode != 0 and needle in p.stderr and "Available options" in p.stderr
    assert not out.exists()


def test_output_dir_not_writable(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    p = nst(*TINY, f"hydra.run.dir={blocker}/run")
    assert p.returncode == 2 and p.stderr.strip() == (
        f"nst: error: output directory {blocker}/run cannot be created: {blocker} is not a directory"
    )


def test_missing_paper_images_say_how_to_fetch(tmp_path):
    out = tmp_path / "sweep"
    p = nst(
        "experiment=gatys2016/fig5_content_layer",
        f"images_dir={tmp_path / 'none'}",
        "size=32",
        "steps=1",
        f"hydra.sweep.dir={out}",
        "progress=false",
    )
    assert p.returncode != 0
    assert "python -m nst.paper_images" in p.stderr and "tubingen.jpg" in p.stderr
    assert not list(out.glob("*/result.png"))


# The real entry point in a fresh interpreter, reporting its exit code and what it imported.
_IMPORTS_PROBE = """
import sys
sys.argv = ["nst", *sys.argv[1:]]
from nst.app import main
try:
    main()
    code = 0
except SystemExit as e:
    code = e.code
print(code, *sorted(m for m in ("flax", "jax", "optax") if m in sys.modules))
"""


def test_input_and_config_errors_fail_before_jax_loads(tmp_path, write_png):
    """A run refused on its inputs answers at once: the embedded weights are read and the image
    checked against the default layers, but nothing imports JAX, Flax or Optax (seconds)."""
    good = write_png("good.png")
    out = tmp_path / "run"
    args = [f"content={good}", f"style={good}", "size=8", "progress=false"]
    p = subprocess.run(
        [sys.executable, "-c", _IMPORTS_PROBE, *args, f"hydra.run.dir={out}"],
        capture_output=True,
        text=True,
    )
    assert p.stdout.split() == ["2"], (p.stdout, p.stderr)
    assert p.stderr.startswith("nst: error: size=8 makes content image 8x6 px"), p.stderr
    assert json.loads((out / "error.json").read_text())["type"] == "ConfigError"


def test_debug_shows_traceback(tmp_path):
    p = nst("content=/nonexistent.png", *TINY, "debug=true", f"hydra.run.dir={tmp_path}")
    assert p.returncode != 0 and "Traceback" in p.stderr


@pytest.mark.long
def test_user_image_modes(tmp_path):
    """Grayscale and RGBA user images run end to end as RGB."""
    g = tmp_path / "g.png"
    Image.fromarray((np.arange(40 * 40) % 251).reshape(40, 40).astype(np.uint8), "L").save(g)
    a = tmp_path / "a.png"
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(a)
    out = tmp_path / "run"
    p = nst(f"content={g}", f"style={a}", *TINY, f"hydra.run.dir={out}")
    assert p.returncode == 0, p.stderr
    assert np.asarray(Image.open(out / "result.png")).shape == (40, 40, 3)


@pytest.mark.slow  # an end-to-end CLI case: CI's slow step runs it
def test_divergence_guard_keeps_last_finite_image(tmp_path, write_png):
    """Issue 5 acceptance 4: a NaN/inf loss stops the job cleanly with status diverged."""
    c = write_png("c.png")
    out = tmp_path / "run"
    p = nst(
        f"content={c}",
        f"style={c}",
        *TINY,
        "loss.alpha=1e38",
        "init=noise",
        "logger=wandb",
        "logger.wandb.mode=offline",
        f"hydra.run.dir={out}",
    )
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "diverged at step" in p.stderr
    from tests.test_sweep import _wandb_records

    (wb,) = (out / "wandb").glob("offline-run-*")
    records = _wandb_records(wb)
    exits = [r["exit"]["exit_code"] for r in records if r.get("type") == "exit"]
    assert exits and exits[-1] != 0  # the W&B run is marked failed
    summary_text = json.dumps([r for r in records if r.get("type") == "summary"])
    assert '"status": "diverged"' in summary_text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["step"] >= 0
    assert not (out / "result.png").exists()
    img = np.asarray(Image.open(out / "last_finite.png"))
    assert img.ndim == 3 and img.shape[2] == 3


def _wait_for_step(path: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    import time

    from nst.engine import load_checkpoint

    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists():
            try:
                if int(load_checkpoint(path)["step"]) >= step:
                    return
            except Exception:  # noqa: BLE001 - being replaced right now; look again
                pass
        assert proc.poll() is None, "run ended before the checkpoint"
        time.sleep(0.05)
    raise TimeoutError(step)


# A reference run, a killed run, a refused and a finished resume each: run by CI's slow step;
# the default suite covers resume through test_reliability.py.
@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigkill", "sigterm"])
def test_killed_run_resumes_byte_identical(tmp_path, write_png, how):
    """Kill after the second checkpoint; resume=true with a changed loss.beta refuses, listing
    the key and changing nothing; the same command resumes to a result byte-identical to an
    uninterrupted run's."""
    import signal

    c, s = write_png("c.png", 40, 48, 1), write_png("s.png", 48, 48, 2)
    args = [
        f"content={c}",
        f"style={s}",
        "backbone=random_vgg16",
        "size=40",
        "steps=60",
        "log_every=1",
        "save_every=0",
        "checkpoint_every=4",
        "progress=false",
        "init=noise",
        "eval.enabled=false",
        *SMALL_LAYERS,  # checkpoint and resume are the subject, not the network's depth
    ]
    import nst as api

    if how == "sigterm":  # and the W&B run continues as the same run
        args += ["logger=wandb", "logger.wandb.mode=offline"]
    ref = tmp_path / "ref"  # in-process: the same run as the CLI's (tests/test_api.py)
    api.stylize(overrides=args, output_dir=ref)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nst.app", *args, f"hydra.run.dir={run}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_step(run / "checkpoint.npz", 8, proc)
    if how == "sigkill":
        proc.send_signal(signal.SIGSTOP)  # frozen at once: the kill lands mid-run on any CPU
        proc.send_signal(signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert not (run / "result.png").exists()
    if how == "sigterm":
        assert proc.returncode == 143 and err.strip().startswith("nst: error: interrupted at step")
        assert len(err.strip().splitlines()) == 1
        assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
        assert json.loads((run / "error.json").read_text())["status"] == "interrupted"
        assert (run / "interrupted.png").exists()

    def files():
        return {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}

    before = files()
    refused = nst(*args, "loss.beta=10", f"hydra.run.dir={run}", "resume=true")
    msg = refused.stderr.strip()
    assert refused.returncode == 2 and len(msg.splitlines()) == 1, refused.stderr
    assert msg.startswith("nst: error: resume=true:") and "loss.beta: 1000.0 -> 10.0" in msg
    assert files() == before  # nothing in the run directory changed
    p = nst(*args, f"hydra.run.dir={run}", "resume=true")
    assert p.returncode == 0, p.stderr
    assert "resuming" in p.stdout
    assert (run / "result.png").read_bytes() == (ref / "result.png").read_bytes()
    steps = [r["step"] for r in rows(run)]
    assert steps == sorted(set(steps)) and steps == [r["step"] for r in rows(ref)]
    assert not (run / "checkpoint.npz").exists()
    if how == "sigterm":
        again = nst(*args, f"hydra.run.dir={run}", "resume=true")
        assert again.returncode == 0 and "already finished" in again.stdout
        longer = [a for a in args if a != "steps=60"] + ["steps=80"]
        before = files()
        more = nst(*longer, f"hydra.run.dir={run}", "resume=true")
        assert more.returncode == 2 and more.stderr.strip() == (
            f"nst: error: resume=true: the run in {run} finished its steps=60 and keeps no "
            "checkpoint to continue to steps=80; run it anew in another directory"
        )
        assert files() == before
        ids = {d.name.rsplit("-", 1)[-1] for d in (run / "wandb").glob("offline-run-*")}
        assert ids == {(run / "wandb_run_id").read_text().strip()}  # one W&B run, resumed


def test_compile_cache_dir_choice(tmp_path):
    """nst keeps compiled programs under its cache unless told otherwise."""
    code = "from nst.app import enable_compile_cache as e; print(e())"

    def ask(**env):
        base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "NST_"))}
        p = subprocess.run(
            [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True
        )
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()

    assert ask(NST_CACHE_DIR=str(tmp_path)) == str(tmp_path / "xla")
    assert ask(NST_CACHE_DIR=str(tmp_path), JAX_COMPILATION_CACHE_DIR="/x/y") == "/x/y"
    assert ask(NST_CACHE_DIR=str(tmp_path), NST_COMPILE_CACHE="0") == "None"


@pytest.mark.long
def test_version_help_output_file_and_modes(tmp_path, write_png):
    """nst --version is nst's; --help is nst's page (no internal groups); output=FILE also
    writes the image there in the format its ending names; files follow the umask."""
    v = nst("--version")
    assert v.returncode == 0 and v.stdout.strip().startswith("nst ")
    h = nst("--help")
    assert h.returncode == 0 and "Main groups" in h.stdout and "Examples:" in h.stdout
    assert "init_case" not in h.stdout and "powered by Hydra" not in h.stdout
    assert 'Tab completion:   eval "$(nst -sc install=bash)"' in h.stdout
    c = write_png("c.png", 30, 40, 1)
    out, jpg = tmp_path / "run", tmp_path / "final.jpg"
    old = os.umask(0o022)
    try:
        p = nst(f"content={c}", f"style={c}", *TINY, f"output={jpg}", f"hydra.run.dir={out}")
    finally:
        os.umask(old)
    assert p.returncode == 0, p.stderr
    assert Image.open(jpg).format == "JPEG" and Image.open(jpg).size == (40, 30)
    assert json.loads((out / "summary.json").read_text())["output"] == str(jpg)
    for name in ("result.png", "summary.json", "metrics.jsonl", "snapshots/step_000002.png"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name
    bad = nst(
        f"content={c}", f"style={c}", *TINY, "output=final.txt", f"hydra.run.dir={tmp_path}/b"
    )
    assert bad.returncode == 2 and "output=final.txt: name an image file ending in" in bad.stderr


def test_help_page_is_filled_as_hydra_fills_it_or_left_to_hydra(tmp_path):
    """nst prints its --help page itself (Hydra's route lists every group first: seconds) while
    the page uses only its own references; a Hydra placeholder sends it back to Hydra."""
    from nst.app import help_page

    page = help_page()
    assert page.startswith("nst - neural style transfer") and "Docs: README.md" in page
    assert "${hydra" not in page and "$$" not in page
    assert 'eval "$(nst -sc install=bash)"' in page  # $$ in the YAML is a literal $
    own = tmp_path / "own.yaml"
    own.write_text(
        "header: H\nfooter: F\ntemplate: |-\n  ${hydra.help.header} costs $$5\n  ${hydra.help.footer}\n"
    )
    assert help_page(own) == "H costs $5\nF"
    hydras = tmp_path / "hydras.yaml"
    hydras.write_text(
        "header: H\nfooter: F\ntemplate: |-\n  ${hydra.help.header}\n  $APP_CONFIG_GROUPS\n"
    )
    assert help_page(hydras) is None


@pytest.mark.slow  # two uncached compiles
def test_clean_run_is_quiet_and_reruns_use_the_compile_cache(tmp_path, write_png):
    """Without the test suite's cache variables: a run prints nothing on stderr (no JAX
    filelock warning), fills nst's compile cache, and a rerun compiles nothing new."""
    c = write_png("c.png", 30, 40, 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "NST_"))}
    env["NST_CACHE_DIR"] = str(tmp_path / "cache")
    # JAX caches only programs that took >= 1 s to compile; one near that line would be cached
    # by one run and not the other. Every program, so the rerun's set is exact.
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    args = [sys.executable, "-m", "nst.app", f"content={c}", f"style={c}", *TINY]

    def entries() -> set[str]:
        d = tmp_path / "cache" / "xla"
        return (
            {p.name for p in d.iterdir() if not p.name.endswith("-atime")} if d.exists() else set()
        )

    first = subprocess.run(
        [*args, f"hydra.run.dir={tmp_path / 'a'}"], env=env, capture_output=True, text=True
    )
    assert first.returncode == 0 and first.stderr == "", first.stderr
    cached = entries()
    assert cached, "the first run left nothing in the compile cache"
    again = subprocess.run(
        [*args, f"hydra.run.dir={tmp_path / 'b'}"], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert entries() == cached  # every program came from the cache
