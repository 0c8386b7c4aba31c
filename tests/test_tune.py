"""backbone.compute_dtype: the measured per-layer plan (auto), its cache, the float32 plan on CPUs
without bf16 units, and the quality of a bf16-compute run against float32 (parity)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nst.backbones import BackboneSpec, tune, vgg
from nst.engine import LossSpec, make_model

LOSS = LossSpec(content_layers={"relu2_2": 1.0}, style_layers={"relu1_1": 1.0, "relu3_1": 1.0})


def fake_timer(calls: list):
    """A deterministic clock: bf16 forms win on layers with >= 128 input channels, XLA below."""

    def time_conv(impl, shape, reps=5):
        calls.append((impl, shape))
        h, w, cin, cout = shape
        wide = cin >= 128
        return {
            "xla": 3.0,
            "winograd": 2.0,
            "winograd_bf16": 1.0 if wide else 4.0,
            "im2col_bf16": 5.0,
        }[impl]

    return time_conv


def network_timer(cost):
    """A fake ``time_networks``: each plan's seconds from ``cost(plan)``; records what it compared."""
    compared: list = []

    def time_networks(arch, plans, hw, last_layer, reps=5):
        compared.append([tuple(p) for p in plans])
        return [cost(tuple(p)) for p in plans]

    time_networks.compared = compared
    return time_networks


def bf16_share(plan) -> float:
    """The fraction of a plan's timed passes (all but the image layer's) in a bf16 form."""
    passes = [i for name, f, b in plan if name != "conv1_1" for i in (f, b)]
    return sum(i.endswith("_bf16") for i in passes) / len(passes)


def mixed_wins(plan) -> float:
    return 1.0 if 0 < bf16_share(plan) < 1 else 2.0


def test_tuned_plan_picks_the_fastest_form_per_direction_and_caches(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(tune, "time_conv", fake_timer(calls))
    networks = network_timer(mixed_wins)
    monkeypatch.setattr(tune, "time_networks", networks)
    cache = tmp_path / "plans.json"
    plan = tune.tuned_plan("vgg16", "auto", (40, 56), "relu3_1", cache=cache)
    got = {n: (f, b) for n, f, b in plan}
    assert list(got) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"]
    assert got["conv1_1"] == ("xla", "xla")  # the image layer is never timed
    assert got["conv1_2"] == ("winograd", "winograd")  # 64 -> 64: f32 Winograd is fastest
    # conv2_1 is 64 -> 128: forward reads 64 channels (f32 wins), its input gradient 128 (bf16)
    assert got["conv2_1"] == ("winograd", "winograd_bf16")
    assert got["conv3_1"] == ("winograd_bf16", "winograd_bf16")
    # Three whole networks competed: float32 first, the per-layer choice, every layer in bf16.
    ((base, layerwise, uniform),) = networks.compared
    assert not vgg.uses_bf16(base) and layerwise == plan and bf16_share(uniform) == 1
    # Each distinct (size, channels) is timed once per candidate; shapes are per layer's size.
    assert len(calls) == len(set(calls))
    assert ("xla", (20, 28, 64, 128)) in calls and ("xla", (10, 14, 128, 256)) in calls
    err = capsys.readouterr().err
    assert "timing 4 convolution forms per layer" in err
    # What it chose, and the whole-network times it chose by (the fake clock's seconds).
    bf16_passes = sum(i.endswith("_bf16") for _, f, b in plan for i in (f, b))
    assert f"conv plan at 40x56: per-layer, {bf16_passes} of 10 passes in bf16 (" in err
    assert "float32 2000 ms, per-layer 1000 ms, all-bf16 2000 ms)" in err
    # Cached: the second call measures nothing and says nothing.
    monkeypatch.setattr(tune, "time_conv", lambda *a, **k: pytest.fail("measured again"))
    assert tune.tuned_plan("vgg16", "auto", (40, 56), "relu3_1", cache=cache) == plan
    assert capsys.readouterr().err == ""
    (key,) = json.loads(cache.read_text())
    assert "40x56" in key and "vgg16" in key and "relu3_1" in key and "cores" in key
    # A stale or edited entry (a layer missing, an unknown form) is measured again.
    data = json.loads(cache.read_text())
    data[key] = data[key][:-1]
    cache.write_text(json.dumps(data))
    monkeypatch.setattr(tune, "time_conv", fake_timer([]))
    assert tune.tuned_plan("vgg16", "auto", (40, 56), "relu3_1", cache=cache) == plan
    # backbone.conv limits the candidates.
    calls.clear()
    monkeypatch.setattr(tune, "time_conv", fake_timer(calls))
    xla_only = tune.tuned_plan("vgg16", "xla", (40, 56), "relu3_1", cache=cache)
    assert {i for _, f, b in xla_only for i in (f, b)} <= {"xla", "im2col_bf16"}
    assert {impl for impl, _ in calls} == {"xla", "im2col_bf16"}


def test_a_plan_slower_as_a_whole_network_falls_back_to_float32(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "time_conv", fake_timer([]))
    monkeypatch.setattr(tune, "time_networks", network_timer(lambda p: 1 + bf16_share(p)))
    plan = tune.tuned_plan("vgg16", "auto", (40, 56), "relu3_1", cache=tmp_path / "p.json")
    used = [name for name, _, _ in plan]
    assert used[-1] == "conv3_1"
    assert plan == tuple(p for p in vgg.conv_plan("vgg16", "auto", "cpu") if p[0] in used)
    assert not vgg.uses_bf16(plan)


def test_every_layer_in_bf16_wins_when_fastest_as_a_whole(tmp_path, monkeypatch):
    """Per layer, float32 Winograd wins block 1 here; as a network, all-bf16 is fastest."""
    monkeypatch.setattr(tune, "time_conv", fake_timer([]))
    monkeypatch.setattr(tune, "time_networks", network_timer(lambda p: 2 - bf16_share(p)))
    plan = tune.tuned_plan("vgg16", "auto", (40, 56), "relu3_1", cache=tmp_path / "p.json")
    forced = vgg.conv_plan("vgg16", "auto", "cpu", "bfloat16")
    assert plan == forced[: len(plan)]
    assert dict((n, f) for n, f, _ in plan)["conv1_2"] == "winograd_bf16"


def test_a_bf16_plan_within_the_margin_keeps_float32(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "time_conv", fake_timer([]))
    almost = 1 - tune.MARGIN / 2
    monkeypatch.setattr(
        tune, "time_networks", network_timer(lambda p: almost if vgg.uses_bf16(p) else 1.0)
    )
    plan = tune.tuned_plan("vgg16", "auto", (40, 56), "relu3_1", cache=tmp_path / "p.json")
    assert not vgg.uses_bf16(plan)


def test_time_networks_runs_each_planned_network():
    plans = [
        vgg.conv_plan("vgg16", "auto", "cpu"),
        vgg.conv_plan("vgg16", "auto", "cpu", "bfloat16"),
    ]
    times = tune.time_networks("vgg16", plans, (16, 24), "relu2_1", reps=2)
    assert len(times) == 2 and all(0 < t < 10 for t in times)


def test_unwritable_cache_still_gives_a_plan(tmp_path, monkeypatch):
    monkeypatch.setattr(tune, "time_conv", fake_timer([]))
    monkeypatch.setattr(tune, "time_networks", network_timer(mixed_wins))
    blocker = tmp_path / "file"
    blocker.write_text("")
    plan = tune.tuned_plan("vgg16", "auto", (16, 16), "relu2_1", cache=blocker / "plans.json")
    assert dict((n, f) for n, f, _ in plan)["conv2_1"] == "winograd"


def test_time_conv_measures_a_real_convolution():
    for impl in vgg.CONV_IMPLS:
        t = tune.time_conv(impl, (6, 8, 16, 16), reps=2)
        assert 0 < t < 10


def test_auto_is_float32_without_bf16_units_or_size(monkeypatch):
    """On CPUs without bf16 matrix units compute_dtype=auto measures nothing and runs the
    float32 plan (nothing gets slower there); so does a network built without an image size."""
    monkeypatch.setattr(tune, "time_conv", lambda *a, **k: pytest.fail("measured"))
    f32 = make_model(BackboneSpec(), LOSS).conv_plan
    monkeypatch.setattr(tune, "cpu_flags", lambda: {"avx2", "fma"})
    assert tune.bf16_units() == []
    assert make_model(BackboneSpec(compute_dtype="auto"), LOSS, (32, 32)).conv_plan == f32
    monkeypatch.setattr(tune, "cpu_flags", lambda: {"avx512f", "avx512_bf16", "amx_bf16"})
    assert tune.bf16_units() == ["amx_bf16", "avx512_bf16"]
    assert make_model(BackboneSpec(compute_dtype="auto"), LOSS).conv_plan == f32


def test_auto_with_bf16_units_uses_the_measured_plan(tmp_path, monkeypatch):
    monkeypatch.setenv("NST_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tune, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(tune, "time_conv", fake_timer([]))
    monkeypatch.setattr(tune, "time_networks", network_timer(mixed_wins))
    model = make_model(BackboneSpec(compute_dtype="auto"), LOSS, (32, 48))
    assert dict((n, f) for n, f, _ in model.conv_plan)["conv3_1"] == "winograd_bf16"
    assert (tmp_path / tune.CACHE_FILE).is_file()
    forced = make_model(BackboneSpec(compute_dtype="bfloat16"), LOSS, (32, 48))
    assert vgg.uses_bf16(forced.conv_plan)


def test_squeezenet_refuses_bf16_compute():
    from nst.api import load_config
    from nst.errors import ConfigError
    from nst.spec import RunSpec

    cfg = load_config(["experiment=seeds/cs231n", "backbone.compute_dtype=bfloat16"])
    with pytest.raises(ConfigError, match="compute_dtype=bfloat16 is for VGG backbones"):
        RunSpec.from_config(cfg)
    # auto means float32 where there is nothing to choose from
    auto = load_config(["experiment=seeds/cs231n", "backbone.compute_dtype=auto"])
    assert RunSpec.from_config(auto).backbone.compute_dtype == "auto"


@pytest.mark.long
def test_bf16_compute_run_matches_float32_quality():
    """Parity at a small size: the embedded VGG16 on the default pair, float32 against bf16
    products (forced, so it runs on any CPU). The final style and content losses agree within 2%
    (docs/performance.md has the 256 px / 300 step measurement) and the images closely."""
    import nst

    kw = dict(size=48, steps=50, progress=False, eval={"enabled": False})
    f32 = nst.stylize(**kw)
    bf16 = nst.stylize(**kw, backbone={"compute_dtype": "bfloat16"})
    for k in ("style", "content"):
        a, b = f32.final[k], bf16.final[k]
        assert abs(b - a) <= 0.02 * a, (k, a, b)
    # The images: a few levels of 255 apart on average, where stylization moves the pixels
    # ~35 from the photo at this size (docs/performance.md); a mean over the image, not a max.
    diff = np.abs(f32.image.astype(np.float64) - bf16.image).mean()
    assert diff < 8.0, diff
