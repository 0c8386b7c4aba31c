"""SqueezeNet 1.1 (Iandola et al. 2016) in torchvision's layout, the network of the CS231n
style-transfer assignment.

``features`` is a sequence of 13 modules (torchvision.models.squeezenet1_1):
``0`` conv 3x3 stride 2 (64), ``1`` ReLU, ``2`` max-pool 3x3 stride 2 (ceil mode), ``3``, ``4``
Fire(16 squeeze, 64+64 expand), ``5`` max-pool, ``6``, ``7`` Fire(32, 128+128), ``8`` max-pool,
``9``, ``10`` Fire(48, 192+192), ``11``, ``12`` Fire(64, 256+256). A Fire module is a 1x1
squeeze convolution with ReLU, then 1x1 and 3x3 (padding 1) expand convolutions, each with ReLU,
concatenated. Layers are named ``features.N`` (the output of module N, as the assignment's
``extract_features`` returns them); plain ``N`` is accepted too.

Weights: torchvision's ``squeezenet1_1-b8a52dc0.pth`` (read without torch, its SHA-256 prefix
checked) or a ``.safetensors`` of the same state dict; downloaded into the nst cache on first
use; ``random`` for tests. Preprocessing: torchvision's (RGB in 0..1, ImageNet mean/std).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nst.backbones import Backbone, BackboneSpec, FunctionNetwork, Layer, register_backbone
from nst.backbones.weights import require_file
from nst.errors import ConfigError, WeightsError

URL = "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"
FILENAME = "squeezenet1_1-b8a52dc0.pth"
SOURCES = ("torchvision", "random", "file")

# module index -> (in, squeeze, expand) for Fire modules; "conv"/"relu"/"pool" otherwise
FIRES = {3: (64, 16, 64), 4: (128, 16, 64), 6: (128, 32, 128), 7: (256, 32, 128)}
FIRES |= {9: (256, 48, 192), 10: (384, 48, 192), 11: (384, 64, 256), 12: (512, 64, 256)}
POOLS = (2, 5, 8)


def param_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision's state-dict names and shapes (OIHW) of the feature extractor."""
    shapes: dict[str, tuple[int, ...]] = {
        "features.0.weight": (64, 3, 3, 3),
        "features.0.bias": (64,),
    }
    for i, (cin, sq, ex) in FIRES.items():
        shapes[f"features.{i}.squeeze.weight"] = (sq, cin, 1, 1)
        shapes[f"features.{i}.squeeze.bias"] = (sq,)
        shapes[f"features.{i}.expand1x1.weight"] = (ex, sq, 1, 1)
        shapes[f"features.{i}.expand1x1.bias"] = (ex,)
        shapes[f"features.{i}.expand3x3.weight"] = (ex, sq, 3, 3)
        shapes[f"features.{i}.expand3x3.bias"] = (ex,)
    return shapes


def _conv(x: Any, w: Any, b: Any, stride: int = 1, pad: int = 0) -> Any:
    import jax

    y = jax.lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        [(pad, pad), (pad, pad)],
        dimension_numbers=("NHWC", "OIHW", "NHWC"),
    )
    return y + b


def _max_pool_ceil(x: Any) -> Any:
    """3x3 stride-2 max pooling with PyTorch's ceil_mode=True: windows may overhang the bottom
    and right edge (padded with -inf), never start outside the input."""
    import jax
    import jax.numpy as jnp

    h, w = x.shape[1:3]
    oh, ow = -(-(h - 3) // 2) + 1, -(-(w - 3) // 2) + 1
    ph, pw = max(0, (oh - 1) * 2 + 3 - h), max(0, (ow - 1) * 2 + 3 - w)
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), [(0, 0), (0, ph), (0, pw), (0, 0)]
    )


def apply(params: dict[str, Any], x: Any, last: int = 12, preprocessing: str = "torch") -> dict:
    """Every ``features.N`` output up to ``last`` for RGB pixels ``x`` ``(N, H, W, 3)`` in 0..255."""
    import jax
    import jax.numpy as jnp

    from nst.backbones.vgg_net import preprocess

    x = preprocess(x, preprocessing)
    out: dict[str, Any] = {}
    p = params
    for i in range(last + 1):
        if i == 0:
            x = _conv(x, p["features.0.weight"], p["features.0.bias"], stride=2)
        elif i == 1:
            x = jax.nn.relu(x)
        elif i in POOLS:
            x = _max_pool_ceil(x)
        else:
            pre = f"features.{i}."
            s = jax.nn.relu(_conv(x, p[pre + "squeeze.weight"], p[pre + "squeeze.bias"]))
            e1 = jax.nn.relu(_conv(s, p[pre + "expand1x1.weight"], p[pre + "expand1x1.bias"]))
            e3 = jax.nn.relu(
                _conv(s, p[pre + "expand3x3.weight"], p[pre + "expand3x3.bias"], pad=1)
            )
            x = jnp.concatenate([e1, e3], axis=-1)
        out[f"features.{i}"] = x
    return out


class SqueezeNet11(Backbone):
    name = "squeezenet1_1"

    @functools.cache  # noqa: B019 - one module-level instance
    def layers(self) -> tuple[Layer, ...]:
        out, pools, channels = [], 0, 3
        for i in range(13):
            if i in (0,) or i in POOLS:
                pools += 1
            if i == 0:
                channels = 64
            elif i in FIRES:
                channels = 2 * FIRES[i][2]
            out.append(Layer(f"features.{i}", channels, pools))
        return tuple(out)

    def canonical(self, name: str) -> str:
        """``3`` (the assignment's feature index) -> ``features.3``."""
        return f"features.{name}" if re.fullmatch(r"\d+", str(name)) else str(name)

    def layer_size(self, name: str, height: int, width: int) -> tuple[int, int]:
        """Exact sizes: the first conv is VALID with stride 2, the pools 3x3/2 in ceil mode."""
        k = int(self.layer(name).name.split(".")[1])
        height, width = (height - 3) // 2 + 1, (width - 3) // 2 + 1
        for pool in POOLS:
            if pool <= k:
                height, width = -(-(height - 3) // 2) + 1, -(-(width - 3) // 2) + 1
        return height, width

    def check(self, spec: BackboneSpec, weights: Any) -> None:
        if weights.source not in SOURCES:
            raise ConfigError(
                f"backbone.weights={weights.source!r} is not available for {self.name}; "
                f"valid: {', '.join(SOURCES)}"
            )
        if weights.source == "file" and not weights.path:
            raise ConfigError("backbone.weights=file needs backbone.weights_path=FILE")
        if spec.compute_dtype == "bfloat16":  # auto: float32, nothing to measure here
            raise ConfigError(
                f"backbone.compute_dtype={spec.compute_dtype} is for VGG backbones; "
                f"{self.name} computes in float32"
            )

    def load(self, weights: Any) -> tuple[dict, dict[str, Any]]:
        if weights.source == "random":
            return random_params(weights.seed), {
                "source": "random",
                "preprocessing": "torch",
                "path": None,
            }
        path = Path(weights.path).expanduser() if weights.path else None
        if path is None:
            from nst.files import cache_dir

            path = cache_dir(WeightsError) / FILENAME
            if not path.is_file():
                _download(weights.url or URL, path)
        params = load_file(path)
        from nst.backbones.torch_pickle import check_hash_in_name

        return params, {
            "source": weights.source,
            "format": path.suffix.lstrip("."),
            "path": str(path),
            "sha256": check_hash_in_name(path),
            "preprocessing": "torch",
        }

    def network(self, spec: BackboneSpec, outputs: Sequence[str], loss: Any) -> FunctionNetwork:
        last = max(int(self.canonical(n).split(".")[1]) for n in outputs)
        fn = functools.partial(apply, last=last, preprocessing=spec.preprocessing)
        return FunctionNetwork(self.name, fn, tuple(outputs))


def _download(url: str, dest: Path) -> None:
    """Fetch torchvision's file; offline, one line naming the URL and where to put it."""
    from nst import files

    def write(out: Any) -> None:
        files.download(url, out.write)

    try:
        files.atomic_write(dest, write)
    except (files.DownloadError, OSError) as e:
        raise WeightsError(
            f"{e}; download {URL} (torchvision's SqueezeNet 1.1) and put it at {dest} "
            "or pass backbone.weights_path=FILE"
        ) from None


def load_file(path: Path) -> dict[str, np.ndarray]:
    """A state dict (``.pth``/``.pt`` or ``.safetensors``) checked against torchvision's names
    and shapes; classifier tensors are ignored."""
    require_file(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from nst.backbones.weights import read_safetensors

        state = read_safetensors(path)
    elif suffix in (".pth", ".pt"):
        from nst.backbones.torch_pickle import load_state_dict

        state = load_state_dict(path)
    else:
        raise WeightsError(f"{path}: SqueezeNet weights must be a .pth or .safetensors file")
    shapes = param_shapes()
    missing = [k for k in shapes if k not in state]
    if missing:
        raise WeightsError(
            f"{path}: not a SqueezeNet 1.1 state dict (missing {', '.join(missing[:3])}...)"
        )
    bad = [k for k, s in shapes.items() if tuple(state[k].shape) != s]
    if bad:
        k = bad[0]
        raise WeightsError(f"{path}: {k} has shape {tuple(state[k].shape)}, expected {shapes[k]}")
    out = {k: np.asarray(state[k], np.float32) for k in shapes}
    if not all(np.isfinite(v).all() for v in out.values()):
        raise WeightsError(f"{path}: contains NaN or infinite values")
    return out


def random_params(seed: int) -> dict[str, np.ndarray]:
    """He-normal weights and zero biases in torchvision's layout (tests, timing)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in param_shapes().items():
        if k.endswith("weight"):
            std = np.sqrt(2.0 / (s[1] * s[2] * s[3]))
            out[k] = (rng.standard_normal(s) * std).astype(np.float32)
        else:
            out[k] = np.zeros(s, np.float32)
    return out


SQUEEZENET = register_backbone(SqueezeNet11())
