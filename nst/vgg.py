"""VGG16/VGG19 feature extractors (Flax) returning named activations.

Layers are named as in the Caffe/Keras models the paper and its successors use: ``conv{b}_{i}``
(convolution output), ``relu{b}_{i}`` (rectified output) and ``pool{b}`` for block ``b``.
The network computes only up to the deepest requested layer, and preprocessing (channel order,
mean/std) is part of the forward pass, so callers always hand it RGB pixels in 0..255.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# Convolutions per block: Simonyan & Zisserman 2015, Table 1 (configurations D and E).
BLOCKS: dict[str, tuple[int, ...]] = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)

# Per-weight-source preprocessing of RGB pixels in 0..255.
# caffe: Keras/Caffe ImageNet models take BGR, 0..255, minus the ImageNet BGR mean
#   (keras.applications.imagenet_utils, mode="caffe").
# torch: torchvision models take RGB in 0..1 normalized by the ImageNet mean/std
#   (torchvision.models VGG*_Weights.IMAGENET1K_V1 transforms).
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
TORCH_MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
TORCH_STD_RGB = np.array([0.229, 0.224, 0.225], np.float32)
PREPROCESSING = ("caffe", "torch")


def conv_layer_names(arch: str) -> list[str]:
    """The convolution names of ``arch`` in forward order (13 for vgg16, 16 for vgg19)."""
    _check_arch(arch)
    return [f"conv{b}_{i}" for b, n in enumerate(BLOCKS[arch], 1) for i in range(1, n + 1)]


def layer_names(arch: str) -> list[str]:
    """Every named activation of ``arch`` in forward order: conv, relu, ..., pool per block."""
    _check_arch(arch)
    names: list[str] = []
    for b, n in enumerate(BLOCKS[arch], 1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return names


def conv_shapes(arch: str) -> dict[str, tuple[int, int, int, int]]:
    """HWIO kernel shape of every convolution of ``arch``."""
    shapes = {}
    cin = 3
    for b, n in enumerate(BLOCKS[arch], 1):
        cout = CHANNELS[b - 1]
        for i in range(1, n + 1):
            shapes[f"conv{b}_{i}"] = (3, 3, cin, cout)
            cin = cout
    return shapes


def channels(arch: str, layer: str) -> int:
    """Channel count of any named activation (conv/relu/pool) of ``arch``."""
    validate_layers(arch, [layer])
    block = int(layer[4] if layer.startswith(("conv", "relu", "pool")) else layer)
    return CHANNELS[block - 1]


def activation_count(arch: str, last_layer: str, h: int, w: int) -> int:
    """Number of activation values one ``h`` x ``w`` image produces up to ``last_layer``."""
    total = 0
    for name in layer_names(arch):
        block = int(name[4])
        pools = block - 1 + (1 if name.startswith("pool") else 0)
        total += (h >> pools) * (w >> pools) * CHANNELS[block - 1]
        if name == last_layer:
            break
    return total


def deepest_layer(arch: str, names: Iterable[str]) -> str:
    """The requested layer that comes last in the forward pass."""
    order = {n: k for k, n in enumerate(layer_names(arch))}
    names = list(names)
    if not names:
        raise ValueError("no layers requested")
    return max(names, key=lambda n: order[n])


def downsampling(arch: str, layer: str) -> int:
    """How many 2x poolings lie before ``layer`` (its stride is 2**result)."""
    names = layer_names(arch)
    return sum(1 for n in names[: names.index(layer)] if n.startswith("pool"))


def preprocess(x: jnp.ndarray, mode: str) -> jnp.ndarray:
    """RGB 0..255 pixels (..., 3) -> the input the weights were trained on."""
    if mode == "caffe":
        return x[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, x.dtype)
    if mode == "torch":
        return (x / 255.0 - jnp.asarray(TORCH_MEAN_RGB, x.dtype)) / jnp.asarray(
            TORCH_STD_RGB, x.dtype
        )
    raise ValueError(f"unknown preprocessing {mode!r}; valid: {', '.join(PREPROCESSING)}")


def _check_arch(arch: str) -> None:
    if arch not in BLOCKS:
        raise ValueError(f"unknown VGG architecture {arch!r}; valid: {', '.join(BLOCKS)}")


class VGG(nn.Module):
    """VGG feature extractor.

    Input: ``(N, H, W, 3)`` RGB pixels in 0..255. Output: dict layer name -> ``(N, h, w, C)``
    activation for every layer up to and including ``last_layer`` (all layers when None).
    Parameters are ``{"conv1_1": {"kernel": (3, 3, Cin, Cout), "bias": (Cout,)}, ...}``.
    """

    arch: str = "vgg16"
    pooling: str = "max"  # the paper replaces max by average pooling (Gatys et al. 2016, Sec. 2)
    preprocessing: str = "caffe"
    last_layer: str | None = None
    dtype: jnp.dtype = jnp.float32
    remat: bool = False  # honoured by nst.engine.features (per-block jax.checkpoint)
    outputs: tuple[str, ...] | None = None  # the layers the loss reads (remat keeps only these)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> dict[str, jnp.ndarray]:
        if self.pooling not in ("max", "avg"):
            raise ValueError(f"unknown pooling {self.pooling!r}; valid: max, avg")
        x = preprocess(x, self.preprocessing).astype(self.dtype)
        shapes = conv_shapes(self.arch)
        feats: dict[str, jnp.ndarray] = {}
        for name in layer_names(self.arch):
            if name.startswith("conv"):
                x = nn.Conv(shapes[name][-1], (3, 3), padding="SAME", name=name, dtype=self.dtype)(
                    x
                )
            elif name.startswith("relu"):
                x = nn.relu(x)
            elif self.pooling == "max":
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            else:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            feats[name] = x
            if name == self.last_layer:
                break
        return feats


def validate_layers(arch: str, names: Sequence[str]) -> None:
    """Raise ValueError naming the valid layers when a name is not a layer of ``arch``."""
    valid = layer_names(arch)
    bad = [n for n in names if n not in valid]
    if bad:
        raise ValueError(
            f"unknown layer(s) {', '.join(map(repr, bad))} for {arch}; valid: {', '.join(valid)}"
        )


def apply_vgg(
    params: dict,
    x: jnp.ndarray,
    *,
    arch: str = "vgg16",
    pooling: str = "max",
    preprocessing: str = "caffe",
    last_layer: str | None = None,
    dtype: jnp.dtype = jnp.float32,
    remat: bool = False,
    outputs: Sequence[str] | None = None,
) -> dict[str, jnp.ndarray]:
    """The same function as :class:`VGG` (same params, same outputs) written with plain JAX ops,
    so that ``remat=True`` can wrap each block in :func:`jax.checkpoint`: the backward pass then
    keeps only the block outputs and recomputes the activations inside a block when it needs
    them, trading ~1/3 more compute for a peak memory of about one block's activations.
    ``outputs`` limits the returned layers (None: all); with remat only those and the block
    outputs are kept, which is what saves the memory."""
    import jax

    if pooling not in ("max", "avg"):
        raise ValueError(f"unknown pooling {pooling!r}; valid: max, avg")
    names = layer_names(arch)
    last = last_layer or names[-1]
    stop = names.index(last)
    x = preprocess(x, preprocessing).astype(dtype)

    keep = set(names if outputs is None else outputs)

    def block(p: dict, x: jnp.ndarray, layers: list[str]) -> dict[str, jnp.ndarray]:
        out = {}
        for name in layers:
            if name.startswith("conv"):
                k = jnp.asarray(p[name]["kernel"], dtype)
                x = jax.lax.conv_general_dilated(
                    x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
                ) + jnp.asarray(p[name]["bias"], dtype)
            elif name.startswith("relu"):
                x = jnp.maximum(x, 0)
            elif pooling == "max":
                x = jax.lax.reduce_window(
                    x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
                )
            else:
                x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
                x = x / 4
            if name in keep or name == layers[-1]:
                out[name] = x
        return out

    feats: dict[str, jnp.ndarray] = {}
    for b in range(1, len(BLOCKS[arch]) + 1):
        layers = [n for n in names[: stop + 1] if n[4] == str(b)]
        if not layers:
            break
        fn = jax.checkpoint(block, static_argnums=(2,)) if remat else block
        out = fn({n: params[n] for n in layers if n.startswith("conv")}, x, tuple(layers))
        x = out[layers[-1]]
        feats.update({k: v for k, v in out.items() if k in keep})
    return feats
