"""SqueezeNet 1.1 in torchvision's layout and the torch-free .pth reader: a synthetic
``squeezenet1_1-<sha>.pth`` written here (torch's zip layout, no torch needed) loads through the
backbone, and its named activations equal a direct NumPy forward pass."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from nst.backbones import BackboneSpec, get_backbone
from nst.backbones import squeezenet as sq
from nst.backbones.torch_pickle import load_state_dict
from nst.errors import WeightsError
from nst.spec import WeightsSpec
from tests.conftest import smooth_image
from tests.torch_files import save_state_dict, save_torchvision_named

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def synthetic_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = {}
    for k, s in sq.param_shapes().items():
        fan_in = int(np.prod(s[1:])) if len(s) == 4 else 1
        state[k] = (
            rng.standard_normal(s) * (np.sqrt(2.0 / fan_in) if len(s) == 4 else 0.1)
        ).astype(np.float32)
    state["classifier.1.weight"] = rng.standard_normal((10, 512, 1, 1)).astype(np.float32)
    return state


def np_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1, pad: int = 0):
    """Direct correlation of (H, W, Cin) with an OIHW kernel, as torch.nn.Conv2d computes it."""
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    o, _, kh, kw = w.shape
    h = (x.shape[0] - kh) // stride + 1
    wd = (x.shape[1] - kw) // stride + 1
    out = np.zeros((h, wd, o))
    for i in range(kh):
        for j in range(kw):
            patch = x[i : i + stride * h : stride, j : j + stride * wd : stride]
            out += patch @ w[:, :, i, j].T
    return out + b


def np_pool(x: np.ndarray) -> np.ndarray:
    """3x3 stride-2 max pool with ceil_mode=True."""
    h, w = x.shape[:2]
    oh, ow = -(-(h - 3) // 2) + 1, -(-(w - 3) // 2) + 1
    out = np.full((oh, ow, x.shape[2]), -np.inf)
    for i in range(oh):
        for j in range(ow):
            out[i, j] = x[2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(0, 1))
    return out


def np_forward(state: dict[str, np.ndarray], img: np.ndarray) -> dict[str, np.ndarray]:
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    p = {k: v.astype(np.float64) for k, v in state.items()}
    x = (img.astype(np.float64) / 255.0 - MEAN) / STD
    out = {}
    for i in range(13):
        if i == 0:
            x = np_conv(x, p["features.0.weight"], p["features.0.bias"], stride=2)
        elif i == 1:
            x = relu(x)
        elif i in sq.POOLS:
            x = np_pool(x)
        else:
            f = f"features.{i}."
            s = relu(np_conv(x, p[f + "squeeze.weight"], p[f + "squeeze.bias"]))
            x = np.concatenate(
                [
                    relu(np_conv(s, p[f + "expand1x1.weight"], p[f + "expand1x1.bias"])),
                    relu(np_conv(s, p[f + "expand3x3.weight"], p[f + "expand3x3.bias"], pad=1)),
                ],
                axis=-1,
            )
        out[f"features.{i}"] = x
    return out


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("squeezenet")
    return save_torchvision_named(synthetic_state(), folder, "squeezenet1_1")


def test_synthetic_pth_loads_and_activations_match_numpy(pth):
    import jax.numpy as jnp

    backbone = get_backbone("squeezenet1_1")
    params, info = backbone.load(WeightsSpec(source="torchvision", path=str(pth)))
    assert info["preprocessing"] == "torch" and info["sha256"].startswith(pth.stem.split("-")[1])
    layers = ("features.1", "features.3", "features.5", "features.7", "features.12")
    net = backbone.network(BackboneSpec(arch="squeezenet1_1", preprocessing="torch"), layers, None)
    img = smooth_image(47, 61, 3)
    got = net.features(net.prepare(params), jnp.asarray(img)[None])
    want = np_forward(synthetic_state(), img)
    for k in layers:
        assert got[k].shape[1:] == want[k].shape, k
        assert got[k].shape[1:3] == backbone.layer_size(k, 47, 61), k
        scale = np.abs(want[k]).max()
        np.testing.assert_allclose(np.asarray(got[k][0]), want[k], atol=2e-4 * scale, err_msg=k)


def test_assignment_indices_are_layer_names(pth):
    import nst

    r = nst.stylize(
        "sample:chelsea",
        "sample:ihc",
        size=64,
        steps=2,
        progress=False,
        backbone={"arch": "squeezenet1_1", "weights": "torchvision", "weights_path": str(pth)},
        overrides=["layers=custom", "eval.enabled=false"],
        layers={"content_layers": {"3": 1.0}, "style_layers": {"1": 1.0, "4": 1.0}},
    )
    assert {"content/features.3", "style/features.1", "style/features.4"} <= set(r.final)


def test_hash_in_the_name_is_checked(pth, tmp_path):
    wrong = tmp_path / "squeezenet1_1-00000000.pth"
    wrong.write_bytes(pth.read_bytes())
    with pytest.raises(WeightsError, match="does not match the 00000000 in its name"):
        get_backbone("squeezenet1_1").load(WeightsSpec(source="torchvision", path=str(wrong)))


def test_pickles_that_run_code_are_refused(tmp_path):
    import zipfile

    evil = tmp_path / "evil.pth"

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Boom()}, protocol=2))
    with pytest.raises(WeightsError, match=r"refusing to load (__builtin__|builtins)\.print"):
        load_state_dict(evil)


def test_truncated_and_foreign_files_are_one_line_errors(pth, tmp_path):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(pth.read_bytes()[:4000])
    with pytest.raises(WeightsError):
        load_state_dict(cut)
    other = save_state_dict({"fc.weight": np.zeros((2, 2), np.float32)}, tmp_path / "o.pth")
    with pytest.raises(WeightsError, match="not a SqueezeNet 1.1 state dict"):
        sq.load_file(other)


def test_safetensors_holds_the_same_weights(tmp_path):
    from safetensors.numpy import save_file

    state = synthetic_state(1)
    save_file(state, str(tmp_path / "sq.safetensors"))
    got = sq.load_file(tmp_path / "sq.safetensors")
    for k, v in sq.param_shapes().items():
        assert got[k].shape == v
        np.testing.assert_array_equal(got[k], state[k])


def test_offline_without_weights_names_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("NST_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(WeightsError) as e:
        get_backbone("squeezenet1_1").load(
            WeightsSpec(source="torchvision", url="http://127.0.0.1:9/none.pth")
        )
    msg = str(e.value)
    assert "\n" not in msg and sq.URL in msg and str(tmp_path / "cache" / sq.FILENAME) in msg


def test_torchvision_vgg_pth_reads_like_the_safetensors(tmp_path, vgg16_params):
    """The same .pth reader serves torchvision's VGG files (backbone.weights=torchvision)."""
    from nst.backbones.vgg import conv_layer_names
    from nst.backbones.weights import resolve_params

    state = {}
    for n, name in enumerate(conv_layer_names("vgg16")):  # torchvision numbers ReLUs/pools too
        state[f"features.{3 * n}.weight"] = vgg16_params[name]["kernel"].transpose(3, 2, 0, 1)
        state[f"features.{3 * n}.bias"] = vgg16_params[name]["bias"]
    path = save_torchvision_named(state, tmp_path, "vgg16")
    params, info = resolve_params("vgg16", "torchvision", str(path), 0)
    assert info["preprocessing"] == "torch" and info["format"] == "torchvision"
    for k in vgg16_params:
        np.testing.assert_array_equal(params[k]["kernel"], vgg16_params[k]["kernel"])


def test_torch_save_files_read_the_same(tmp_path):
    torch = pytest.importorskip("torch")
    state = {k: torch.tensor(v) for k, v in synthetic_state(2).items()}
    torch.save(state, tmp_path / "zip.pth")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    ours = save_state_dict(synthetic_state(2), tmp_path / "ours.pth")
    back = torch.load(ours, weights_only=True)
    for name in ("zip.pth", "legacy.pth"):
        got = load_state_dict(tmp_path / name)
        for k, v in state.items():
            np.testing.assert_array_equal(got[k], v.numpy(), err_msg=f"{name}:{k}")
            np.testing.assert_array_equal(back[k].numpy(), v.numpy())
