"""The Python API (nst.stylize, nst.load_config) and the extension seams: a backbone and a
tracker defined in this file alone, used by a real run."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import nst
from nst.backbones import Backbone, FunctionNetwork, Layer, register_backbone
from nst.errors import ConfigError, ImageError
from nst.tracking import MetricWriter, register_tracker
from tests.test_cli import SMALL_LAYERS

TINY = {"size": 32, "steps": 3, "log_every": 1, "save_every": 0, "progress": False}
NO_EVAL = {"eval": {"enabled": False}}
RANDOM = {"backbone": "random_vgg16"}


def test_stylize_returns_image_history_and_config_without_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = nst.stylize("sample:chelsea", "sample:ihc", overrides=SMALL_LAYERS, **TINY, **RANDOM)
    assert r.image.dtype == np.uint8 and r.image.shape == (21, 32, 3)
    assert [row["step"] for row in r.history] == [0, 1, 2, 3]
    assert r.history[-1]["total"] == pytest.approx(r.final["total"])
    assert r.config["size"] == 32 and r.config["backbone"]["weights"] == "random"
    assert r.output_dir is None and list(tmp_path.iterdir()) == []  # nothing written
    assert set(r.history[-1]) >= {"eval/content", "eval/style", "eval/ssim", "eval/color"}


def test_stylize_accepts_arrays_and_pil_and_writes_when_asked(tmp_path):
    rng = np.random.default_rng(0)
    content = rng.uniform(0, 1, (30, 40, 3))  # floats in 0..1
    style = Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    out = tmp_path / "run"
    r = nst.stylize(
        content,
        style,
        output_dir=out,
        overrides=SMALL_LAYERS,
        loss={"beta": 10.0},
        eval=NO_EVAL["eval"],
        **TINY,
        **RANDOM,
    )
    saved = np.asarray(Image.open(out / "result.png"))
    np.testing.assert_array_equal(saved, r.image)  # the result is what result.png holds
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["loss"]["beta"] == 10.0
    assert summary["content"]["path"] == "<ndarray>" and summary["style"]["path"] == "<Image>"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == len(r.history) == 4


def test_stylize_equals_the_cli_run_of_the_same_config(tmp_path):
    from tests.test_cli import nst as cli

    args = ["size=32", "steps=3", "save_every=0", "progress=false", "backbone=random_vgg16"]
    args += ["eval.enabled=false", *SMALL_LAYERS]
    p = cli(*args, f"hydra.run.dir={tmp_path / 'cli'}")
    assert p.returncode == 0, p.stderr
    r = nst.stylize(overrides=args)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "cli" / "result.png")), r.image)


def test_load_config_composes_groups_and_values():
    cfg = nst.load_config(["layers=lewuathe2017"], size=64, loss={"beta": 1e4}, backbone="vgg19")
    assert cfg.size == 64 and cfg.loss.beta == 1e4 and cfg.backbone.arch == "vgg19"
    assert "relu5_1" in cfg.layers.style_layers or "conv5_1" in cfg.layers.style_layers


def test_bad_input_is_one_line_error():
    with pytest.raises(ConfigError, match="size must be a positive"):
        nst.stylize(size=0, steps=1)
    with pytest.raises(
        ImageError, match=r"must be \(H, W\), \(H, W, 1\), \(H, W, 3\) or \(H, W, 4\)"
    ):
        nst.stylize(np.zeros((4, 4, 5)), "sample:ihc", **TINY, **RANDOM)


def _one_line(excinfo):
    text = str(excinfo.value)
    assert "\n" not in text and text == text.strip(), text
    return text


def test_output_dir_that_is_no_directory_is_refused_before_running(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"not a directory")
    for out, message in [
        (photo, r"output_dir .*photo.jpg is not a directory$"),
        (photo / "run", r"output_dir .*photo.jpg/run is not a directory \(.*photo.jpg is a file\)"),
        (5, r"output_dir must be a path \(str or os.PathLike\), got int"),
        (b"runs", "output_dir must be a path .*, got bytes"),
        ("", "output_dir is an empty string"),
    ]:
        with pytest.raises(ConfigError, match=message) as e:
            nst.stylize("sample:chelsea", "sample:ihc", output_dir=out, **TINY, **RANDOM)
        _one_line(e)
    assert list(tmp_path.iterdir()) == [photo] and photo.read_bytes() == b"not a directory"


def test_output_dir_holding_a_run_is_refused_and_left_alone(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match="already holds a run .*resume=true") as e:
        nst.stylize("sample:chelsea", "sample:ihc", output_dir=tmp_path, **TINY, **RANDOM)
    _one_line(e)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "summary.json"]
    assert (tmp_path / "summary.json").read_text() == "{}"
    with pytest.raises(ConfigError, match="resume=true needs output_dir"):
        nst.stylize(resume=True, **TINY, **RANDOM)


def test_content_and_style_left_out_come_from_the_config_but_none_is_an_error():
    # Left out: the config's content/style (the run then fails on size, before compiling).
    with pytest.raises(ConfigError, match="size must be a positive"):
        nst.stylize(size=0, overrides=["content=sample:coffee"])
    with pytest.raises(ImageError, match=r"^content is None: give a path, sample:NAME, a PIL"):
        nst.stylize(None, None, **TINY)
    with pytest.raises(ImageError, match="^style is None"):
        nst.stylize("sample:chelsea", None, **TINY)
    with pytest.raises(ImageError, match="^content is None"):
        nst.stylize(content=None, overrides=["content=sample:coffee"], **TINY)


@pytest.mark.parametrize(
    "content,style,message",
    [
        (5, "sample:ihc", r"content must be a path, sample:NAME, .* array, got int$"),
        (b"abc", "sample:ihc", r"got bytes; for a file's bytes, pass PIL.Image.open"),
        (["sample:ihc"], "sample:ihc", "content must be .*, got list; only style takes a list"),
        ("sample:chelsea", [], "style is an empty list"),
        ("sample:chelsea", ["sample:ihc", 3.5], r"style\[1\] must be a path, .*, got float"),
        ("", "sample:ihc", "content is an empty string"),
    ],
)
def test_content_or_style_of_the_wrong_type_says_what_it_takes(content, style, message):
    with pytest.raises(ImageError, match=message) as e:
        nst.stylize(content, style, **TINY, **RANDOM)
    _one_line(e)


def test_overrides_must_be_a_list_of_strings():
    expected = r"overrides must be a list of strings like \['loss.beta=1e4'\], got a str"
    with pytest.raises(ConfigError, match=expected):
        nst.stylize(overrides="loss.beta=1e4", **TINY)
    with pytest.raises(ConfigError, match=expected):
        nst.load_config("loss.beta=1e4")
    with pytest.raises(ConfigError, match="got a dict"):
        nst.load_config({"loss.beta": 1e4})
    with pytest.raises(ConfigError, match=r"overrides\[1\] must be a string .*, got int"):
        nst.load_config(["size=64", 5])
    assert nst.load_config(None, size=48).size == 48  # None: no overrides
    with pytest.raises(ConfigError, match="Key 'bogus' not in 'NSTConfig'"):
        nst.load_config(None, bogus=1)
    with pytest.raises(ConfigError, match="size must be a positive"):
        nst.stylize(overrides=None, size=0)


@pytest.mark.parametrize(
    "overrides,kwargs,message",
    [
        (["loss.beta"], {}, r"Error parsing override 'loss.beta'; missing EQUAL"),
        (["=3"], {}, r"override '=3' names no key: write KEY=VALUE"),
        ([""], {}, r"override '' names no key"),
        (["loss.betta=1"], {}, r"Could not override 'loss.betta'.*Key 'betta' not in 'LossConfig'"),
        (
            ["optimizer=adamm"],
            {},
            r"Could not find 'optimizer/adamm'.*options in 'optimizer': adam,",
        ),
        (["steps=many"], {}, r"steps=many \(Value 'many' of type 'str' could not be converted"),
        ([], {"backbone": "resnet"}, r"Could not find 'backbone/resnet'.*vgg16"),
        ([], {"size": "big"}, r"^size: Value 'big' of type 'str' could not be converted"),
    ],
)
def test_malformed_and_unknown_overrides_are_one_line_config_errors(overrides, kwargs, message):
    with pytest.raises(ConfigError, match=message) as e:
        nst.load_config(overrides, **kwargs)
    assert "Config search path" not in _one_line(e)


def test_keyword_arguments_win_over_overrides():
    cfg = nst.load_config(["size=64", "backbone=vgg16", "loss.beta=5"], size=48, backbone="vgg19")
    assert (cfg.size, cfg.backbone.arch, cfg.loss.beta) == (48, "vgg19", 5.0)


def test_numpy_scalars_are_plain_config_values():
    cfg = nst.load_config(
        size=np.int64(48),
        seed=np.array(3),
        progress=np.bool_(False),
        loss={"beta": np.float32(2.5)},
        layers={"style_layers": {"conv1_1": np.float64(1.0)}},
    )
    assert (cfg.size, cfg.seed, cfg.progress, cfg.loss.beta) == (48, 3, False, 2.5)
    assert cfg.layers.style_layers["conv1_1"] == 1.0
    with pytest.raises(ConfigError, match="size must be a positive"):
        nst.stylize(size=np.int32(0), steps=np.int64(1))


def test_config_takes_a_dict_merged_onto_the_defaults(monkeypatch):
    from nst.spec import RunSpec

    seen = []

    def capture(cfg, images=None):
        seen.append(cfg)
        raise ConfigError("captured")

    defaults = nst.load_config()
    given = {"size": 40, "loss": {"beta": 7.0}, "backbone": "vgg19"}
    with monkeypatch.context() as m:
        m.setattr(RunSpec, "from_config", staticmethod(capture))
        with pytest.raises(ConfigError, match="captured"):
            nst.stylize(config=given, seed=np.int64(4))
    cfg = seen[0]
    assert (cfg.size, cfg.seed, cfg.steps) == (40, 4, defaults.steps)  # not "Missing key steps"
    assert (cfg.loss.beta, cfg.loss.alpha, cfg.backbone.arch) == (7.0, defaults.loss.alpha, "vgg19")
    # A resolved config (what Result.config holds) goes back in as it came out.
    resolved = RunSpec.from_config(nst.load_config(size=40, loss={"beta": 7.0})).config
    with pytest.raises(ConfigError, match="size must be a positive"):
        nst.stylize(config=resolved, size=0)
    with pytest.raises(ConfigError, match="config must be a config from nst.load_config"):
        nst.stylize(config=5, **TINY)
    # Layer maps and other free-form maps given whole replace the defaults' (merged, the
    # default content layer would join keras_tutorial's and cs231n's fallback would not load).
    for exp in ("seeds/keras_tutorial", "seeds/cs231n", "gatys2016/fig3"):
        spec = RunSpec.from_config(nst.load_config([f"experiment={exp}"]))
        again = RunSpec.from_config(nst.api._as_config(spec.config))
        assert again.loss == spec.loss and again.config == spec.config, exp
    with pytest.raises(ConfigError, match="with config=..., pass overrides"):
        nst.stylize(config={"size": 40}, overrides=["steps=1"])


# --- Extension seams: registered from this file, no edit to nst/ --------------------------------


class TinyBackbone(Backbone):
    """Two 3x3 convolutions, the second after a 2x2 average pooling."""

    name = "tiny_test_net"

    def layers(self):
        return (Layer("feat1", 4, 0), Layer("pool", 4, 1), Layer("feat2", 6, 1))

    def load(self, weights):
        k1, k2 = jax.random.split(jax.random.PRNGKey(weights.seed))
        params = {
            "w1": 0.3 * jax.random.normal(k1, (3, 3, 3, 4)),
            "w2": 0.3 * jax.random.normal(k2, (3, 3, 4, 6)),
        }
        return params, {"preprocessing": "unit", "weights": "random-test"}

    def network(self, spec, outputs, loss):
        def conv(x, w):
            return jax.lax.conv_general_dilated(
                x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )

        def apply(p, x):
            f1 = jax.nn.relu(conv(x / 255.0, p["w1"]))
            n, h, w, c = f1.shape
            pool = f1[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
            pool = pool.mean(axis=(2, 4))
            return {"feat1": f1, "pool": pool, "feat2": jax.nn.relu(conv(pool, p["w2"]))}

        return FunctionNetwork(self.name, apply, tuple(outputs))


class Recorder(MetricWriter):
    def __init__(self, sink, options):
        self.sink, self.options = sink, options

    def write_scalars(self, step, scalars):
        self.sink.append(("scalars", step, dict(scalars)))

    def write_result(self, step, image):
        self.sink.append(("result", step, image.shape))

    def close(self, exit_code=0):
        self.sink.append(("close", exit_code, self.options))


def test_a_backbone_and_a_tracker_registered_from_a_test_file_run(tmp_path):
    register_backbone(TinyBackbone())
    events = []
    register_tracker("recorder_test", lambda options, ctx: Recorder(events, options))
    r = nst.stylize(
        "sample:chelsea",
        "sample:ihc",
        output_dir=tmp_path / "run",
        backbone={"arch": "tiny_test_net"},
        layers={"content_layers": {"feat2": 1.0}, "style_layers": {"feat1": 1.0, "feat2": 1.0}},
        overrides=["layers=custom", "+logger.recorder_test={tag: hello}", "layers.rectified=false"],
        **NO_EVAL,
        **TINY,
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["backbone"]["arch"] == "tiny_test_net"
    assert summary["backbone"]["preprocessing"] == "unit"
    assert set(r.final) >= {"content/feat2", "style/feat1", "style/feat2"}
    assert r.history[-1]["total"] < r.history[0]["total"]  # the optimizer works through it
    kinds = [e[0] for e in events]
    assert kinds.count("scalars") == 4 and "result" in kinds
    assert events[-1] == ("close", 0, {"tag": "hello"})


def test_unknown_backbone_and_tracker_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown backbone.arch 'nope'; registered: .*vgg16"):
        nst.stylize(backbone={"arch": "nope"}, **TINY)
    with pytest.raises(ConfigError, match="unknown tracker.*nope_tracker"):
        nst.stylize(overrides=["+logger.nope_tracker={}"], **TINY)
    with pytest.raises(ConfigError, match="logger.project is now logger.wandb.project"):
        nst.stylize(overrides=["+logger.project=x"], **TINY)


def test_any_optax_optimizer_by_name():
    r = nst.stylize(
        optimizer={"name": "adamw", "lr": 5.0, "kwargs": {"weight_decay": 0.0}},
        overrides=SMALL_LAYERS,
        **NO_EVAL,
        **TINY,
        **RANDOM,
    )
    assert r.config["optimizer"]["name"] == "adamw"
    assert r.history[-1]["total"] < r.history[0]["total"]
    with pytest.raises(ConfigError, match="neither adam, lbfgs, sgd nor an optax optimizer"):
        nst.stylize(optimizer={"name": "bogus"}, **TINY)
    with pytest.raises(ConfigError, match="optimizer.kwargs do not fit optax.adamw"):
        nst.stylize(optimizer={"name": "adamw", "kwargs": {"nonsense": 1}}, **TINY)


def test_features_match_between_jnp_and_flax_free_backbone():
    """The tiny backbone's FunctionNetwork returns only the requested layers."""
    net = TinyBackbone().network(None, ("feat2",), None)
    params, _ = TinyBackbone().load(type("W", (), {"seed": 0})())
    feats = net.features(net.prepare(params), jnp.zeros((1, 8, 8, 3)))
    assert list(feats) == ["feat2"] and feats["feat2"].shape == (1, 4, 4, 6)
