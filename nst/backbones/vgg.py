"""VGG16/VGG19: the layer tables, names and conv plans, and the :class:`VGGBackbone`.

Layers are named as in the Caffe/Keras models the paper and its successors use: ``conv{b}_{i}``
(convolution output), ``relu{b}_{i}`` (rectified output) and ``pool{b}`` for block ``b``.
This module imports neither JAX nor Flax, so configs and inputs are checked (and fail) before
they load; the network itself is :mod:`nst.backbones.vgg_net`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nst.backbones import COMPUTE_DTYPES, CONV_CHOICES, Backbone, BackboneSpec, Layer

if TYPE_CHECKING:
    from nst.backbones.vgg_net import VGG

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


def block_of(name: str) -> int:
    """The block (1-5) of a layer name ``conv{b}_{i}``, ``relu{b}_{i}`` or ``pool{b}``: the one
    place VGG layer names are parsed."""
    return int(name[4])


def channels(arch: str, layer: str) -> int:
    """Channel count of any named activation (conv/relu/pool) of ``arch``."""
    return _backbone(arch).channels(layer)


def activation_count(arch: str, last_layer: str, h: int, w: int) -> int:
    """Number of activation values one ``h`` x ``w`` image produces up to ``last_layer``."""
    return _backbone(arch).activation_count(last_layer, h, w)


def deepest_layer(arch: str, names: Iterable[str]) -> str:
    """The requested layer that comes last in the forward pass."""
    return _backbone(arch).deepest_layer(names)


def downsampling(arch: str, layer: str) -> int:
    """How many 2x poolings lie before ``layer`` (its stride is 2**result)."""
    return _backbone(arch).downsampling(layer)


def _check_arch(arch: str) -> None:
    if arch not in BLOCKS:
        raise ValueError(f"unknown VGG architecture {arch!r}; valid: {', '.join(BLOCKS)}")


def validate_layers(arch: str, names: Sequence[str]) -> None:
    """Raise ValueError naming the valid layers when a name is not a layer of ``arch``."""
    _backbone(arch).validate_layers(names)


# How one 3x3 convolution runs. The *_bf16 forms take bfloat16 operands and accumulate in
# float32 (the CPU's bf16 matrix units: AVX512-BF16, AMX; tensor cores); activations, Grams,
# losses, the optimizer and the image stay float32 (backbone.compute_dtype).
CONV_IMPLS = ("xla", "winograd", "winograd_bf16", "im2col_bf16", "xla_bf16")
# The float32 plan runs Winograd where a convolution has >= 128 channels on one side, where it
# pays on every CPU measured; block 1's 64-channel layers keep XLA's convolution until the fused
# transforms' gain there is measured beyond one CPU (docs/performance.md, `nst-bench
# --conv-layers`), as a changed float32 plan must not be slower anywhere.
WINOGRAD_MIN_CHANNELS = 128


def conv_plan(
    arch: str, conv: str, backend: str, compute_dtype: str = "float32"
) -> tuple[tuple[str, str, str], ...]:
    """How each convolution of ``arch`` runs: ``(name, forward, input-gradient)`` implementations.

    ``conv``: ``xla`` (XLA's convolution both ways), ``winograd`` (F(4x4, 3x3) both ways for
    every layer but the 3-channel first one) or ``auto``: Winograd on the CPU where a
    convolution has ``WINOGRAD_MIN_CHANNELS`` channels on one side (all but block 1), XLA
    elsewhere and on accelerators (cuDNN picks its own algorithms there).
    ``compute_dtype=bfloat16`` turns every product but the first layer's into its bf16 form:
    on the CPU F(2x2, 3x3) Winograd's GEMMs (``auto`` and ``winograd``: block 1's 64-channel
    layers too, whose transforms cost less than bf16 saves there) or, with ``conv=xla``,
    :func:`im2col_conv`; on accelerators XLA's convolution with bf16 operands. ``auto`` is
    measured per layer (:mod:`nst.backbones.tune`) and is float32 here, without sizes."""
    if conv not in CONV_CHOICES:
        raise ValueError(f"unknown conv implementation {conv!r}; valid: {', '.join(CONV_CHOICES)}")
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"unknown compute dtype {compute_dtype!r}; valid: {', '.join(COMPUTE_DTYPES)}"
        )
    bf16 = compute_dtype == "bfloat16"
    plan = []
    for name, (_, _, cin, cout) in conv_shapes(arch).items():
        if conv == "auto":
            wide = backend == "cpu" and max(cin, cout) >= WINOGRAD_MIN_CHANNELS
            impl = "winograd" if wide else "xla"
        else:
            impl = conv
        if bf16 and backend != "cpu":
            impl = "xla_bf16"
        elif bf16:
            impl = "im2col_bf16" if conv == "xla" else "winograd_bf16"
        impl = "xla" if image_layer(cin) else impl
        plan.append((name, impl, impl))
    return tuple(plan)


def image_layer(cin: int) -> bool:
    """The first convolution (3 input channels) always runs as XLA's, in float32: its input is
    the image itself, and its few channels leave nothing for another form to gain."""
    return cin < 8


def uses_bf16(plan: Sequence[tuple[str, str, str]]) -> bool:
    """Whether any product of ``plan`` takes bfloat16 operands."""
    return any(i.endswith("_bf16") for _, f, b in plan for i in (f, b))


def layer_size(arch: str, layer: str, height: int, width: int) -> tuple[int, int]:
    """Height and width of ``layer``'s activation for an input of ``height`` x ``width``: each
    2x2 VALID pooling up to and including it floors both in half."""
    return _backbone(arch).layer_size(layer, height, width)


def strip_layout(arch: str, blocks: int, height: int, rows: int) -> tuple[int, int, int]:
    """How :func:`apply_vgg_striped` cuts an image of ``height`` rows for its first ``blocks``
    blocks: ``(t, n, halo)`` = output rows per strip after the blocks' ``blocks`` poolings,
    number of strips, and the extra input rows each strip reads on either side.

    Each 3x3 convolution at pooling level l widens the rows a strip depends on by 2**l input
    rows per side; the halo is that sum, rounded up to a multiple of 2**blocks so that every
    strip starts on a pooling boundary. ``n`` strips of ``t * 2**blocks`` input rows (at most
    about ``rows``, evened out) cover ceil(height / 2**blocks) output rows, hence every input row."""
    f = 2**blocks
    need = sum(n * 2**level for level, n in enumerate(BLOCKS[arch][:blocks]))
    halo = -(-need // f) * f
    out_rows = -(-height // f)
    n = -(-out_rows // max(1, rows // f))
    t = -(-out_rows // n)  # balanced: the last strip is not mostly padding
    return t, n, halo


# Blocks 1-3 hold ~80% of VGG16's activations, and the peak of a step is in the backward pass of
# the largest block: striping 1-3 leaves block 4 (1/64 of the pixels) as the peak (XLA's memory
# analysis, docs/performance.md).
STRIP_BLOCKS_MAX = 3


class VGGBackbone(Backbone):
    """VGG16/VGG19 (Simonyan & Zisserman 2015) with Caffe/Keras layer names."""

    def __init__(self, arch: str):
        self.name = arch

    @functools.cache  # noqa: B019 - two module-level instances
    def layers(self) -> tuple[Layer, ...]:
        out = []
        for name in layer_names(self.name):
            b = block_of(name)
            pools = b - 1 + (1 if name.startswith("pool") else 0)
            out.append(Layer(name, CHANNELS[b - 1], pools))
        return tuple(out)

    def check(self, spec: BackboneSpec, weights: Any) -> None:
        from nst.backbones.weights import check_source
        from nst.errors import ConfigError

        if spec.conv not in CONV_CHOICES:
            raise ConfigError(
                f"backbone.conv must be one of {', '.join(CONV_CHOICES)}, got {spec.conv!r}"
            )
        if spec.pooling not in ("max", "avg"):
            raise ConfigError(f"backbone.pooling must be max or avg, got {spec.pooling!r}")
        check_source(self.name, weights.source, weights.path)

    def rectified(self, name: str) -> str:
        """conv{b}_{i} -> relu{b}_{i}: the authors' Caffe code runs ReLUs in place."""
        return "relu" + name[4:] if name.startswith("conv") else name

    def load(self, weights: Any) -> tuple[dict, dict[str, Any]]:
        from nst.backbones.weights import resolve_params

        params, info = resolve_params(
            self.name, weights.source, weights.path, weights.seed, url=weights.url
        )
        if weights.normalized:
            from nst.backbones.normalize import normalized_params
            from nst.errors import ConfigError

            try:
                params, ninfo = normalized_params(
                    params,
                    self.name,
                    info["preprocessing"],
                    list(weights.normalize_images),
                    weights.normalize_size,
                )
            except ValueError as e:
                raise ConfigError(str(e)) from None
            info = {**info, "normalized": ninfo}
        return params, info

    def network(self, spec: BackboneSpec, outputs: Sequence[str], loss: Any) -> VGG:
        """A VGG that stops at the deepest of ``outputs``."""
        import jax
        import jax.numpy as jnp

        from nst.backbones.vgg_net import VGG

        return VGG(
            arch=self.name,
            pooling=spec.pooling,
            preprocessing=spec.preprocessing,
            last_layer=self.deepest_layer(outputs),
            dtype=jnp.dtype(spec.dtype),
            remat=spec.remat,
            outputs=tuple(outputs),
            conv_plan=self.plan(spec, self.deepest_layer(outputs), jax.default_backend()),
            strip_blocks=self.strip_blocks(spec, loss),
            strip_rows=spec.strip_rows,
        )

    def plan(self, spec: BackboneSpec, last_layer: str, backend: str) -> tuple:
        """The conv plan for ``spec``: :func:`conv_plan`, or with ``compute_dtype=auto`` on a
        CPU with bf16 units and a known image size, the measured one (:mod:`.tune`)."""
        if spec.compute_dtype == "auto" and backend == "cpu" and spec.step_hw is not None:
            from nst.backbones import tune

            if tune.bf16_units():
                return tune.tuned_plan(self.name, spec.conv, spec.step_hw, last_layer)
        dtype = "float32" if spec.compute_dtype == "auto" else spec.compute_dtype
        return conv_plan(self.name, spec.conv, backend, dtype)

    def strip_blocks(self, spec: BackboneSpec, loss: Any) -> int:
        """With remat, the leading blocks (up to STRIP_BLOCKS_MAX) whose layers the loss reads
        only through Gram matrices (a Gram sums over rows; a content layer or mean/covariance
        statistics would need the whole activation)."""
        if not spec.remat or loss.style != "gram" or spec.strip_rows <= 0:
            return 0
        names = self.layer_names()
        deepest = names.index(self.deepest_layer(loss.layers))
        blocks = 0
        for b in range(1, STRIP_BLOCKS_MAX + 1):
            if any(block_of(n) <= b for n in loss.content_layers) or deepest < names.index(
                f"pool{b}"
            ):
                break
            blocks = b
        return blocks

    def step_bytes(self, spec: BackboneSpec, loss: Any, hw: tuple[int, int]) -> int:
        """The base estimate, with the striped blocks' activations counted for one strip."""
        return super().step_bytes(spec, loss, hw) - int(
            4 * 2.25 * self._strip_saving(spec, loss, hw)
        )

    def target_bytes(self, spec: BackboneSpec, loss: Any, hw: tuple[int, int]) -> int:
        """The base estimate; with remat the targets are taken in strips too."""
        return super().target_bytes(spec, loss, hw) - 4 * self._strip_saving(spec, loss, hw)

    def _strip_saving(self, spec: BackboneSpec, loss: Any, hw: tuple[int, int]) -> int:
        """Activation values the striped blocks do not hold at once (0 without strips)."""
        blocks = self.strip_blocks(spec, loss)
        if not blocks:
            return 0
        h, w = hw
        t, _, halo = strip_layout(self.name, blocks, h, spec.strip_rows)
        strip_h = min(h, t * 2**blocks) + 2 * halo
        last = f"pool{blocks}"
        return self.activation_count(last, h, w) - self.activation_count(last, strip_h, w)


VGG16 = VGGBackbone("vgg16")
VGG19 = VGGBackbone("vgg19")
BACKBONES = {"vgg16": VGG16, "vgg19": VGG19}


def _backbone(arch: str) -> VGGBackbone:
    _check_arch(arch)
    return BACKBONES[arch]
