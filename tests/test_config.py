"""Configs compose (every group option, experiments), and mistakes fail at compose time."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from nst.app import CONFIG_DIR
from nst.config import register_configs
from nst.spec import RunSpec

register_configs()


def specs_from_config(cfg):
    spec = RunSpec.from_config(cfg)
    return spec.backbone, spec.loss, spec.optimizer


GROUPS = {
    "backbone": ["vgg16", "vgg19", "random_vgg16", "random_vgg19"],
    "layers": ["gatys2016", "gatys2016_upto3", "lewuathe2017", "keras_tutorial", "custom"],
    "loss": ["default", "paper"],
    "optimizer": ["adam", "lbfgs", "sgd"],
    "init": ["content", "noise", "style", "file"],
    "experiment": ["quick"],
    "logger": ["none", "wandb"],
}


@pytest.mark.parametrize("launcher", ["slurm", "joblib", "submitit_local"])
def test_launcher_configs_compose(launcher):
    cfg = _compose([f"hydra/launcher={launcher}"], hydra_cfg=True)
    target = cfg.hydra.launcher._target_
    assert ("Slurm" in target) if launcher == "slurm" else target
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1


def _compose(overrides=(), hydra_cfg=False):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)


def test_default_config_contract():
    cfg = _compose()
    for key in ("content", "style", "size", "steps", "seed", "save_every"):
        assert key in cfg
    assert OmegaConf.to_container(cfg.layers.content_layers) == {"conv4_2": 1.0}
    assert cfg.layers.rectified is True
    assert dict(specs_from_config(cfg)[1].content_layers) == {"relu4_2": 1.0}
    assert cfg.backbone.arch == "vgg16" and cfg.backbone.weights == "embedded"
    assert {"alpha", "beta", "tv", "gram_norm"} <= set(cfg.loss)
    backbone, loss, opt = specs_from_config(cfg)
    assert loss.alpha == 1.0 and opt.name == "adam" and backbone.arch == "vgg16"


def _subset(want, got, where=""):
    """Every value the option file sets is the value the composed config holds."""
    if isinstance(want, dict):
        for k, v in want.items():
            if k in ("defaults", "hydra"):
                continue
            assert k in got, f"{where}{k} missing"
            _subset(v, got[k], f"{where}{k}.")
    else:
        assert want == got, f"{where[:-1]}: {want!r} != {got!r}"


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes(group, option):
    """Selecting an option puts the values of its file into the config (at the group's key, or
    at the top for @package _global_ files), and the spec reads them."""
    from pathlib import Path

    cfg = _compose([f"{group}={option}"], hydra_cfg=True)
    assert cfg.hydra.runtime.choices[group] == option
    path = Path(CONFIG_DIR) / group / f"{option}.yaml"
    text = path.read_text()
    want = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    got = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    _subset(want, got if "@package _global_" in text else got[group])
    needs_spec = group in ("optimizer", "logger") or (group == "init" and option != "file")
    spec = RunSpec.from_config(_compose([f"{group}={option}"])) if needs_spec else None
    if group == "optimizer":
        assert spec.optimizer.name == option
    if group == "init" and spec is not None:
        assert spec.init.name == option
    if group == "logger":
        assert list(spec.trackers) == ([] if option == "none" else [option])


def test_gatys2016_preset_matches_paper():
    cfg = _compose(["layers=gatys2016"])
    assert dict(cfg.layers.content_layers) == {"conv4_2": 1.0}
    assert dict(cfg.layers.style_layers) == {f"conv{i}_1": 0.2 for i in range(1, 6)}
    lw = _compose(["layers=lewuathe2017"]).layers.style_layers
    assert list(lw.values()) == [0.5, 1.0, 1.5, 3.0, 4.0]


@pytest.mark.parametrize(
    "override,message",
    [
        ("loss.betta=1", "Key 'betta' not in 'LossConfig'"),
        ("optimizer=adamm", "Could not find 'optimizer/adamm'"),
        ("backbone=resnet", "Could not find 'backbone/resnet'"),
        (
            "loss.gram_norm=l1",
            "Invalid value 'l1', expected one of [paper, mean, authors, relative]",
        ),
        ("backbone.pooling=min", "Invalid value 'min', expected one of [max, avg]"),
        ("steps=many", "Value 'many' of type 'str' could not be converted to Integer"),
    ],
)
def test_mistakes_fail_at_compose_time(override, message):
    """Hydra's explanation of the mistake (not just the override echoed back)."""
    with pytest.raises(ConfigCompositionException) as e:
        _compose([override])
    text = f"{e.value}\n{e.value.__cause__ or ''}"
    assert message in text
    if "Could not find" in message:  # the available options are listed, the right one among them
        group = override.split("=")[0]
        assert "Available options" in text and GROUPS[group][0] in text


def test_alpha_beta_override_reaches_spec():
    cfg = _compose(["loss.alpha=2", "loss.beta=1e4", "loss.tv=0.5", "optimizer=lbfgs"])
    _, loss, opt = specs_from_config(cfg)
    assert (loss.alpha, loss.beta, loss.tv) == (2.0, 1e4, 0.5)
    assert opt.name == "lbfgs" and opt.lr is None


def test_layer_maps_accept_new_names_and_zero_drops():
    cfg = _compose(["layers.style_layers={conv5_1: 0, conv3_2: 0.3}"])
    _, loss, _ = specs_from_config(cfg)
    assert "relu5_1" not in loss.style_layers and loss.style_layers["relu3_2"] == 0.3
    cfg = _compose(
        [
            "layers=custom",
            "layers.content_layers={conv4_2: 1}",
            "layers.style_layers={conv1_1: 1}",
            "layers.rectified=false",
        ]
    )
    _, loss, _ = specs_from_config(cfg)
    assert dict(loss.content_layers) == {"conv4_2": 1.0}
    assert dict(loss.style_layers) == {"conv1_1": 1.0}


def test_impl_switch_paper_vs_authors():

    paper = _compose(["impl=paper"])
    backbone, loss, opt = specs_from_config(paper)
    assert backbone.pooling == "avg" and opt.name == "lbfgs" and paper.init.name.value == "noise"
    assert set(loss.style_layers) == {f"conv{i}_1" for i in range(1, 6)}
    assert loss.gram_norm == "paper" and loss.content_norm == "paper"
    assert loss.beta == pytest.approx(paper.loss.ab_scale / 1e-3)
    authors = _compose(["impl=authors"])
    backbone, loss, opt = specs_from_config(authors)
    assert backbone.pooling == "max" and authors.init.name.value == "content"
    assert dict(loss.content_layers) == {"relu4_2": 1.0}
    assert loss.style_layers["relu1_1"] == pytest.approx(1e3 / 64**2)
    assert loss.style_layers["relu5_1"] == pytest.approx(1e3 / 512**2)
    assert loss.gram_norm == "authors" and authors.steps == 500 and authors.size == 512
    # command-line choices win over the impl's
    assert specs_from_config(_compose(["impl=paper", "optimizer=adam"]))[2].name == "adam"
    assert specs_from_config(_compose(["loss.ab_ratio=1e-2"]))[1].beta == pytest.approx(100.0)


@pytest.mark.parametrize(
    "name", ["fig1_content", "fig1_style", "fig3", "fig4_grid", "fig5_content_layer", "fig6_init"]
)
def test_paper_experiments_compose(name):
    cfg = _compose([f"experiment=gatys2016/{name}", "images_dir=/imgs"], hydra_cfg=True)
    assert cfg.figure.name == f"gatys2016/{name}"
    assert str(cfg.content).startswith("/imgs/")
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.hydra.sweeper.params


def test_conv_choice_reaches_spec_and_bad_values_fail():
    from nst.errors import ConfigError

    assert specs_from_config(_compose())[0].conv == "auto"
    assert specs_from_config(_compose(["backbone.conv=xla"]))[0].conv == "xla"
    with pytest.raises(ConfigError, match="backbone.conv must be one of auto, xla, winograd"):
        specs_from_config(_compose(["backbone.conv=fft"]))


def test_compute_dtype_reaches_spec_and_bad_values_fail():
    from nst.errors import ConfigError

    assert specs_from_config(_compose())[0].compute_dtype == "float32"
    for v in ("bfloat16", "auto"):
        assert specs_from_config(_compose([f"backbone.compute_dtype={v}"]))[0].compute_dtype == v
    with pytest.raises(
        ConfigError,
        match="backbone.compute_dtype must be one of float32, bfloat16, auto, got 'fp8'",
    ):
        specs_from_config(_compose(["backbone.compute_dtype=fp8"]))
    with pytest.raises(ConfigError, match="compute_dtype=auto needs backbone.dtype=float32"):
        specs_from_config(_compose(["backbone.compute_dtype=auto", "backbone.dtype=bfloat16"]))


def test_remat_and_strip_rows_reach_spec_and_bad_values_fail():
    from nst.errors import ConfigError

    backbone = specs_from_config(_compose(["backbone.remat=true", "backbone.strip_rows=64"]))[0]
    assert backbone.remat and backbone.strip_rows == 64
    assert specs_from_config(_compose())[0].strip_rows == 128
    with pytest.raises(ConfigError, match="strip_rows must be an integer >= 0"):
        specs_from_config(_compose(["backbone.strip_rows=-8"]))


@pytest.mark.parametrize(
    "override, message",
    [
        ("backbone.dtype=bogus", "backbone.dtype must be one of float32, bfloat16, got 'bogus'"),
        ("backbone.dtype=int8", "backbone.dtype must be one of float32, bfloat16, got 'int8'"),
        ("init.scale=nan", "init.scale must be a finite number >= 0, got nan"),
        ("init.scale=-1", "init.scale must be a finite number >= 0, got -1.0"),
        ("init.scale=inf", "init.scale must be a finite number >= 0, got inf"),
        ("log_every=-1", "log_every must be >= 0, got -1"),
        ("save_every=-1", "save_every must be >= 0, got -1"),
        ("checkpoint_every=-2", "checkpoint_every must be >= 0, got -2"),
        ("steps_per_call=-1", "steps_per_call must be >= 0, got -1"),
        ("early_stop.patience=-1", "early_stop.patience must be >= 0, got -1"),
        ("early_stop.min_delta=nan", "early_stop.min_delta must be a finite number >= 0, got nan"),
        ("max_pixels=0", "max_pixels must be a positive number of pixels, got 0"),
        ("max_pixels=-1", "max_pixels must be a positive number of pixels, got -1"),
        ("content=", "content is empty: name an image file or sample:NAME"),
        ("style=[sample:ihc,' ']", "style is empty: name an image file or sample:NAME"),
    ],
)
def test_values_the_schema_cannot_check_fail_in_one_line(override, message):
    from nst.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        RunSpec.from_config(_compose([override]))
    assert str(e.value) == message


def test_optimized_metric_must_be_a_final_metric_of_the_run():
    from nst.errors import ConfigError

    spec = RunSpec.from_config(_compose(["optimized_metric=style/relu3_1", "eval.enabled=false"]))
    assert spec.optimized_metric == "style/relu3_1"
    assert RunSpec.from_config(_compose(["eval.enabled=true"])).optimized_metric == "eval/style"
    assert RunSpec.from_config(_compose(["eval.enabled=false"])).optimized_metric == "total"
    with pytest.raises(
        ConfigError, match="^optimized_metric=eval/tradeoff needs eval.enabled=true$"
    ):
        RunSpec.from_config(_compose(["optimized_metric=eval/tradeoff", "eval.enabled=false"]))
    with pytest.raises(ConfigError) as e:
        RunSpec.from_config(_compose(["optimized_metric=bogus"]))
    assert str(e.value).startswith("optimized_metric=bogus is not a final metric of this run; ")
    assert "content/relu4_2" in str(e.value) and "eval/tradeoff" in str(e.value)
