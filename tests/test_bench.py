"""Benchmark suite: analytic FLOPs, JSON lines + table from the real command (tiny sizes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nst import bench
from nst.backbones import tune
from nst.backbones.vgg import conv_plan, conv_shapes
from tests.conftest import REPO


def test_conv_flops_counts_forward_and_input_gradient():
    h, w = 48, 64
    fwd = 0
    for name, (kh, kw, cin, cout) in conv_shapes("vgg16").items():
        s = 2 ** (int(name[4]) - 1)
        fwd += 2 * kh * kw * cin * cout * (h // s) * (w // s)
        if name == "conv4_2":
            break
    assert bench.conv_flops("vgg16", "relu4_2", h, w) == 2 * fwd
    assert bench.conv_flops("vgg16", "relu5_1", h, w) > bench.conv_flops("vgg16", "relu4_2", h, w)
    # VGG16 forward to conv5_3 at 224 px: 15.5 GMACs (Simonyan & Zisserman's 15.5 GFLOPs count MACs)
    assert abs(bench.conv_flops("vgg16", "relu5_3", 224, 224) / 4 - 15.35e9) < 0.2e9


def test_floor_flops_counts_winograd_layers_at_a_quarter():
    h, w = 48, 64
    direct = bench.conv_flops("vgg16", "relu5_1", h, w)
    assert bench.floor_flops("vgg16", "relu5_1", h, w, conv="xla") == direct
    # auto on the CPU: block 1 direct, every later layer (>= 128 channels) Winograd, both passes.
    block1 = sum(
        2 * 2 * kh * kw * cin * cout * h * w
        for name, (kh, kw, cin, cout) in conv_shapes("vgg16").items()
        if name.startswith("conv1_")
    )
    expect = block1 + (direct - block1) / 4
    assert bench.floor_flops("vgg16", "relu5_1", h, w, conv="auto") == pytest.approx(expect, 1e-9)
    # bf16 products: F(2x2,3x3) Winograd at 16/36 for every layer but the image one (direct).
    conv1_1 = sum(
        2 * 2 * kh * kw * cin * cout * h * w
        for name, (kh, kw, cin, cout) in conv_shapes("vgg16").items()
        if name == "conv1_1"
    )
    plan = conv_plan("vgg16", "auto", "cpu", "bfloat16")
    bf16 = bench.floor_flops("vgg16", "relu5_1", h, w, plan=plan)
    assert bf16 == pytest.approx(conv1_1 + (direct - conv1_1) * 16 / 36, 1e-9)
    im2col = bench.floor_flops(
        "vgg16", "relu5_1", h, w, plan=conv_plan("vgg16", "xla", "cpu", "bfloat16")
    )
    assert im2col == direct  # the im2col form does the direct products


def test_conv_layers_times_every_form_of_each_layer():
    rows = bench.conv_layer_bench("vgg16", 32, steps=3, layers=["conv1_2", "conv3_1"])
    assert [(r["layer"], r["direction"]) for r in rows] == [
        ("conv1_2", "forward"),
        ("conv1_2", "input-gradient"),
        ("conv3_1", "forward"),
        ("conv3_1", "input-gradient"),
    ]
    backend = bench.device_kind()[0]
    forms = bench.conv_forms(backend)
    assert bench.conv_forms("cpu") == ("xla", "winograd", "winograd_bf16", "im2col_bf16")
    for r in rows:
        assert all(r[f"{f}_ms"] > 0 for f in forms)
        assert r["fastest"] == min(forms, key=lambda f: r[f"{f}_ms"])
    back = rows[3]  # conv3_1 at 24x32 / 4; its input gradient is a 256 -> 128 convolution
    assert (back["h"], back["w"], back["c_in"], back["c_out"]) == (6, 8, 256, 128)
    if backend == "cpu":
        assert rows[0]["float32_plan"] == "xla" and back["float32_plan"] == "winograd"
    table = bench.conv_table(rows)
    assert "| conv3_1 | input-gradient | 6x8 | 256->128 |" in table
    assert f"| {forms[-1]} ms |" in table and table.count("\n") == 1 + len(rows)


def test_configurations_are_timed_in_interleaved_rounds():
    order: list[str] = []
    prepared = [
        bench.Prepared({"name": n}, lambda n=n: order.append(n), k)
        for n, k in (("a", 1), ("b", 10), ("c", 1))
    ]
    times = bench.time_interleaved(prepared, [3, 2, 3])
    assert order == ["a", "b", "c", "a", "b", "c", "a", "c"]
    assert [len(t) for t in times] == [3, 2, 3] and all(x >= 0 for t in times for x in t)
    order.clear()
    bench.time_interleaved(prepared, [2, 1, 1], interleave=False)
    assert order == ["a", "a", "b", "c"]


def test_run_configs_builds_all_then_interleaves_or_builds_each_in_turn():
    log: list[str] = []

    def builder(name: str):
        def build():
            log.append(f"build {name}")
            row = {"name": name, "h": 1, "w": 1}
            return bench.Prepared(row, lambda: log.append(name), 1, (1e9, 1, "float32", "cpu"))

        return build

    rows = bench.run_configs([builder("a"), builder("b")], steps=5)
    assert log[:2] == ["build a", "build b"] and log[2:] == ["a", "b"] * 5
    assert [r["name"] for r in rows] == ["a", "b"] and all(r["steps"] == 5 for r in rows)
    assert all("_rate" not in r and r["flops_per_step"] == 1e9 for r in rows)
    log.clear()
    bench.run_configs([builder("a"), builder("b")], steps=5, interleave=False)
    assert log == ["build a", *["a"] * 5, "build b", *["b"] * 5]


def test_default_compute_dtypes_add_auto_only_where_bf16_units_exist():
    assert bench.default_compute_dtypes("cpu", ["avx512_bf16"]) == ["float32", "auto"]
    assert bench.default_compute_dtypes("cpu", []) == ["float32"]
    assert bench.default_compute_dtypes("gpu", ["amx_bf16"]) == ["float32"]


def test_verdict_is_fastest_nst_over_fastest_torch_per_size():
    def row(impl, ms, h=192, **kw):
        base = {"impl": impl, "backbone": "vgg16", "h": h, "w": 256, "step_s_median": ms / 1e3}
        return {**base, "batch": 0, **kw}

    rows = [
        row("jax", 180, conv="auto", compute_dtype="float32"),
        row("jax", 143, conv="auto", compute_dtype="auto", plan={"winograd_bf16": 18, "xla": 4}),
        row("torch", 329, torch_variant="f32"),
        row("torch", 180, torch_variant="bf16_autocast"),
        row("jax", 700, h=384, conv="auto", compute_dtype="float32"),  # no PyTorch at this size
    ]
    assert bench.verdict_lines(rows) == [
        "vgg16 192x256: fastest nst auto (auto, 18/22 bf16) 143 ms / fastest PyTorch "
        "bf16_autocast 180 ms = 0.79"
    ]


@pytest.mark.slow  # ~42s on a Zen 3 core pair: kept out of the default suite, run by CI's slow step
def test_bench_command_writes_json_lines_and_table(tmp_path):
    out = tmp_path / "bench.jsonl"
    args = ["--sizes", "64", "--steps", "3", "--warmup", "1", "--grid", "2", "--out", str(out)]
    args += ["--compute-dtype", "float32", "bfloat16"]
    torch = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode
    if torch == 0:
        args.append("--compare-torch")
    p = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    grid = [r for r in rows if r["impl"] == "grid"]
    assert len(grid) == 1 and grid[0]["jobs"] == 2 and grid[0]["batched"]["batch"] == 2
    assert grid[0]["batched_over_sequential_throughput"] > 0
    assert "grid vgg16 64 px, 2 jobs" in p.stdout and "no batching beats" in p.stdout
    g = grid[0]
    assert g["gemm_flops_per_s"] > 1e9 and g["floor_s_per_image_step"] > 0
    assert g["batched_throughput_ceiling"] == pytest.approx(
        g["sequential"]["step_s_median"] / g["floor_s_per_image_step"]
    )
    jax_rows = [r for r in rows if r["impl"] == "jax"]
    assert [x["compute_dtype"] for x in jax_rows] == ["float32", "bfloat16"]
    r, r16 = jax_rows
    convs = 11  # VGG16 up to relu5_1; two passes each (forward, input gradient)
    assert set(r["plan"]) <= {"xla", "winograd"} and sum(r["plan"].values()) == 2 * convs
    assert r16["plan"] == {"xla": 2, "winograd_bf16": 2 * (convs - 1)}
    assert "| auto (bfloat16) |" in p.stdout
    if r["backend"] == "cpu":
        assert "bf16 operands / f32 accumulation" in p.stdout and "roofline (" in p.stdout
    assert (r["h"], r["w"], r["dtype"]) == (48, 64, "float32")
    assert r["step_s_p10"] <= r["step_s_median"] <= r["step_s_p90"]
    assert r["flops_per_step"] == bench.conv_flops("vgg16", "relu5_1", 48, 64)
    assert r["compile_s"] > 0 and r["steps_per_s"] > 0 and r["peak_bytes"] > 0
    assert "| jax | vgg16 | 48x64 | float32 |" in p.stdout
    assert ("vgg16 48x64: fastest nst " in p.stdout) == (torch == 0)
    assert r["meta_cpu"] == tune.cpu_name() and r["meta_cpu_bf16"] == ",".join(tune.bf16_units())
    if torch == 0:  # every PyTorch variant, and the ratio against the fastest of them
        ts = {x["torch_variant"]: x for x in rows if x["impl"] == "torch"}
        assert set(ts) == {"f32", "channels_last", "bf16_autocast"}
        assert ts["bf16_autocast"]["dtype"] == "bfloat16"
        assert f"| {ts['bf16_autocast']['conv']} | 0.0 |" in p.stdout  # no compute-dtype suffix
        fastest = min(t["step_s_median"] for t in ts.values())
        assert r["jax_over_torch"] == pytest.approx(r["step_s_median"] / fastest)
        assert ts[r["torch_fastest"]]["step_s_median"] == fastest
        for v, t in ts.items():
            assert r[f"jax_over_torch_{v}"] == pytest.approx(
                r["step_s_median"] / t["step_s_median"]
            )


@pytest.mark.slow
@pytest.mark.long
def test_max_size_grows_with_remat():
    """`nst-bench --max-size`: with a budget where the plain step tops out at a few hundred px,
    remat's strips fit a strictly larger image (XLA's memory analysis of the compiled step)."""
    budget = int(0.75 * 2**30)
    plain = bench.max_size("vgg16", budget, remat=False, lo=128, hi=1024)
    remat = bench.max_size("vgg16", budget, remat=True, lo=128, hi=1024)
    assert 128 < plain < remat <= 1024
    assert plain % 64 == 0 and remat % 64 == 0


def _refused(capsys, *argv: str) -> str:
    """``nst-bench argv`` ends in argparse's usage and one error line, exit code 2."""
    with pytest.raises(SystemExit) as e:
        bench.main(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: nst-bench") and err.count("nst-bench: error:") == 1
    return err.splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sizes", "-5"], "argument --sizes: must be a positive integer, not -5"),
        (["--sizes", "0"], "argument --sizes: must be a positive integer, not 0"),
        (["--sizes", "x"], "argument --sizes: not an integer: 'x'"),
        (["--sizes", "16"], "16 px is a 12x16 frame, too small for vgg16 relu5_1"),
        (["--sizes", "21", "--backbone", "vgg19"], "use 22 or more"),
        (["--steps", "0"], "argument --steps: must be a positive integer, not 0"),
        (["--warmup", "-1"], "argument --warmup: must be 0 or more, not -1"),
        (["--steps-per-call", "-1"], "argument --steps-per-call: must be 0 or more, not -1"),
        (["--sizes", "32", "--grid", "-2"], "argument --grid: must be 0 (off) or at least 2 jobs"),
        (["--sizes", "32", "--grid", "1"], "argument --grid: must be 0 (off) or at least 2 jobs"),
        (["--max-size", "-1"], "argument --max-size: must be a finite number >= 0, not -1"),
        (["--max-size", "nan"], "argument --max-size: must be a finite number >= 0, not nan"),
        (["--sizes"], "nothing to do: --sizes is empty and --max-size is off"),
        (["--sizes", "--grid", "2"], "--grid runs at each of --sizes: give at least one size"),
        (
            ["--sizes", "--max-size", "1", "--conv-layers", "--compare-torch"],
            "--conv-layers, --compare-torch run at each of --sizes",
        ),
    ],
)
def test_bad_arguments_are_refused_before_any_jax_work(capsys, argv, message):
    assert message in _refused(capsys, *argv)


def test_out_must_be_a_file_that_can_be_appended_to(capsys, tmp_path):
    err = _refused(capsys, "--sizes", "32", "--out", str(tmp_path))
    assert f"--out {tmp_path} is a directory" in err
    missing = tmp_path / "no" / "bench.jsonl"
    err = _refused(capsys, "--sizes", "32", "--out", str(missing))
    assert f"directory {missing.parent} does not exist" in err
    (tmp_path / "file").write_text("")
    err = _refused(capsys, "--sizes", "32", "--out", str(tmp_path / "file" / "bench.jsonl"))
    assert "does not exist" in err
    if Path("/proc/self").is_dir():  # writable by mode for root, yet no file can be made there
        assert "--out /proc/x.jsonl cannot be appended to" in _refused(
            capsys, "--sizes", "32", "--out", "/proc/x.jsonl"
        )
    # The probe leaves nothing behind and keeps what is there.
    new, old = tmp_path / "new.jsonl", tmp_path / "old.jsonl"
    old.write_text("{}\n")
    assert bench.check_out(new) is None and not new.exists()
    assert bench.check_out(old) is None and old.read_text() == "{}\n"


def test_unavailable_jax_backend_is_one_line(capsys, monkeypatch):
    def no_backend():
        raise AssertionError  # what JAX 0.10 raises for JAX_PLATFORMS=cuda without a GPU

    import jax

    monkeypatch.setattr(jax, "devices", no_backend)
    monkeypatch.setattr(bench.hostmem, "tune_malloc", lambda: False)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    with pytest.raises(SystemExit) as e:
        bench.main(["--sizes", "32"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "nst-bench: error: JAX cannot start its backend: no listed platform started "
        "(AssertionError) (JAX_PLATFORMS=cuda: unset it or install JAX for that platform)\n"
    )


def test_unavailable_jax_backend_from_the_command(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "nosuchplatform"}
    out = tmp_path / "bench.jsonl"
    p = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--sizes", "32", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.startswith(
        "nst-bench: error: JAX cannot start its backend: Unable to initialize backend "
        "'nosuchplatform'"
    )
    assert (
        p.stderr.endswith(
            "(JAX_PLATFORMS=nosuchplatform: unset it or install JAX for that platform)\n"
        )
        and p.stderr.count("\n") == 1
    )
    assert not out.exists()  # the --out probe created nothing


def test_table_shows_an_unbatched_row_as_batch_dash():
    row = {
        "impl": "jax",
        "backbone": "vgg16",
        "h": 24,
        "w": 32,
        "dtype": "float32",
        "remat": False,
        "batch": 0,  # the JSON's unbatched program (verdict_lines reads it so)
        "backend": "cpu",
        "device": "cpu",
        "conv": "auto",
        "compute_dtype": "float32",
        "compile_s": 1.0,
        "step_s_median": 0.02,
        "step_s_p10": 0.01,
        "step_s_p90": 0.03,
        "steps_per_s": 50.0,
        "mpix_steps_per_s": 0.04,
        "flops_per_step": 1e9,
        "flops_per_s": 5e10,
    }
    assert "| float32 | no | - | cpu:cpu |" in bench.table([row])
    assert "| float32 | no | 4 | cpu:cpu |" in bench.table([{**row, "batch": 4}])


@pytest.mark.slow  # two small compiles, ~15 s
def test_max_size_is_zero_when_not_even_the_smallest_size_fits():
    assert bench.max_size("vgg16", 1, remat=False, lo=64, hi=128) == 0
