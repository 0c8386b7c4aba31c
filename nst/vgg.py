"""VGG16/VGG19 feature extractors (Flax) returning named activations.

Layers are named as in the Caffe/Keras models the paper and its successors use: ``conv{b}_{i}``
(convolution output), ``relu{b}_{i}`` (rectified output) and ``pool{b}`` for block ``b``.
The network computes only up to the deepest requested layer, and preprocessing (channel order,
mean/std) is part of the forward pass, so callers always hand it RGB pixels in 0..255.
"""

from __future__ import annotations

import functools
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
    # Per conv layer (name, forward impl, input-gradient impl), honoured by nst.engine.features
    # through apply_vgg with prepare_params'd params (see conv_plan); () = XLA's convolution.
    conv_plan: tuple[tuple[str, str, str], ...] = ()

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


CONV_IMPLS = ("xla", "winograd")
CONV_CHOICES = ("auto", *CONV_IMPLS)
# Winograd pays off on XLA:CPU once a convolution has >= 128 channels on one side (measured per
# layer and direction by `nst-bench --conv-layers`: 1.3-2.5x; 2x slower for 64 -> 64, where the
# memory-bound transforms cost more than the multiplies they save).
WINOGRAD_MIN_CHANNELS = 128


def conv_plan(arch: str, conv: str, backend: str) -> tuple[tuple[str, str, str], ...]:
    """How each convolution of ``arch`` runs: ``(name, forward, input-gradient)`` implementations.

    ``conv``: ``xla`` (XLA's convolution both ways), ``winograd`` (F(4x4, 3x3) both ways for
    every layer but the 3-channel first one) or ``auto``: Winograd on the CPU where a
    convolution has ``WINOGRAD_MIN_CHANNELS`` channels on one side (all but block 1), XLA
    elsewhere and on accelerators (cuDNN picks its own algorithms there)."""
    if conv not in CONV_CHOICES:
        raise ValueError(f"unknown conv implementation {conv!r}; valid: {', '.join(CONV_CHOICES)}")
    plan = []
    for name, (_, _, cin, cout) in conv_shapes(arch).items():
        if conv == "auto":
            wide = backend == "cpu" and max(cin, cout) >= WINOGRAD_MIN_CHANNELS
            fwd = bwd = "winograd" if wide else "xla"
        else:
            fwd = bwd = conv
        plan.append((name, "xla" if cin < 8 else fwd, "xla" if cin < 8 else bwd))
    return tuple(plan)


def flip_kernel(kernel: jnp.ndarray) -> jnp.ndarray:
    """The kernel whose SAME convolution is the input gradient of ``kernel``'s: spatially
    flipped, input and output channels swapped (HWIO)."""
    return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


def prepare_params(params: dict, plan: Sequence[tuple[str, str, str]]) -> dict:
    """Add, once per run, what each convolution of ``plan`` needs besides kernel and bias:
    ``fwd`` (Winograd-transformed kernel) and ``bwd`` (the input-gradient kernel, flipped, or
    its Winograd transform). Inside the step XLA would otherwise redo these transposes on every
    call (~10% of a 256 px step on the CPU), as the weights are arguments, not constants."""
    return _prepare_jit()(params, tuple(tuple(p) for p in plan))


@functools.cache
def _prepare_jit():
    import jax

    from nst import winograd

    def prepare(params: dict, plan: tuple) -> dict:
        out = {k: dict(v) for k, v in params.items()}
        for name, fwd, bwd in plan:
            if name not in out:
                continue
            k = jnp.asarray(out[name]["kernel"])
            if fwd == "winograd":
                out[name]["fwd"] = winograd.transform_kernel(k)
            kt = flip_kernel(k)
            out[name]["bwd"] = winograd.transform_kernel(kt) if bwd == "winograd" else kt
        return out

    # One program for all layers (eager ops would compile one small program per layer shape).
    return jax.jit(prepare, static_argnums=1)


def conv_impl(impl: str, x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """3x3 SAME convolution of ``x`` by ``impl``: ``w`` is the HWIO kernel for xla, its
    :func:`nst.winograd.transform_kernel` for winograd."""
    import jax

    if impl == "winograd":
        from nst import winograd

        return winograd.conv3x3(x, w)
    return jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _foldable(impl: str):
    """``conv_impl(impl, ·, ·)`` whose vmap over the image folds the mapped axis into N: one
    convolution over B*N images, as the sequential program does over N. (vmap's generic rules
    would batch the Winograd GEMMs and transforms with transposes: 1.4x slower per image.)"""
    import jax

    @jax.custom_batching.custom_vmap
    def conv(x, w):
        return conv_impl(impl, x, w)

    @conv.def_vmap
    def rule(axis_size, in_batched, x, w):
        x_batched, w_batched = in_batched
        if w_batched or not x_batched:  # not a case the engine produces: vmap the plain function
            return jax.vmap(
                functools.partial(conv_impl, impl),
                in_axes=(0 if x_batched else None, 0 if w_batched else None),
            )(x, w), True
        y = conv(x.reshape(-1, *x.shape[2:]), w)
        return y.reshape(axis_size, -1, *y.shape[1:]), True

    return conv


@functools.cache
def _make_conv():
    import jax

    impl_fns = {impl: _foldable(impl) for impl in CONV_IMPLS}

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def conv(x, w_fwd, w_bwd, impls):
        return impl_fns[impls[0]](x, w_fwd)

    def fwd(x, w_fwd, w_bwd, impls):
        return impl_fns[impls[0]](x, w_fwd), (w_fwd, w_bwd)

    def bwd(impls, res, g):
        # Only the input gradient: the weights are frozen (their cotangents are zeros that XLA
        # drops), and nothing of x needs keeping for the backward pass.
        w_fwd, w_bwd = res
        return impl_fns[impls[1]](g, w_bwd), jnp.zeros_like(w_fwd), jnp.zeros_like(w_bwd)

    conv.defvjp(fwd, bwd)
    return conv


def conv3x3(x: jnp.ndarray, p: dict, impls: tuple[str, str]) -> jnp.ndarray:
    """3x3 SAME convolution (no bias) of ``x`` ``(N, H, W, C_in)`` with the prepared params ``p``
    of one layer (:func:`prepare_params`), forward and input gradient by ``impls``."""
    w_fwd = p["fwd"] if impls[0] == "winograd" else p["kernel"]
    return _make_conv()(x, w_fwd, p["bwd"], tuple(impls))


def max_pool2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 stride-2 VALID max pooling of ``(N, H, W, C)`` as a reshape and a max: its gradient
    is an elementwise mask, where XLA:CPU lowers reduce_window's (select-and-scatter) into index
    tensors and a scatter that cost ~25% of a 256 px step."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


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
    conv_plan: Sequence[tuple[str, str, str]] = (),
) -> dict[str, jnp.ndarray]:
    """The same function as :class:`VGG` (same params, same outputs) written with plain JAX ops,
    so that ``remat=True`` can wrap each block in :func:`jax.checkpoint`: the backward pass then
    keeps only the block outputs and recomputes the activations inside a block when it needs
    them, trading ~1/3 more compute for a peak memory of about one block's activations.
    ``outputs`` limits the returned layers (None: all); with remat only those and the block
    outputs are kept, which is what saves the memory. With ``conv_plan`` (and params from
    :func:`prepare_params` with the same plan) each convolution runs as the plan says."""
    import jax

    if pooling not in ("max", "avg"):
        raise ValueError(f"unknown pooling {pooling!r}; valid: max, avg")
    names = layer_names(arch)
    last = last_layer or names[-1]
    stop = names.index(last)
    x = preprocess(x, preprocessing).astype(dtype)

    keep = set(names if outputs is None else outputs)
    impls = {name: (f, b) for name, f, b in conv_plan}

    def block(p: dict, x: jnp.ndarray, layers: list[str]) -> dict[str, jnp.ndarray]:
        out = {}
        for name in layers:
            if name.startswith("conv") and name in impls:
                x = conv3x3(x, p[name], impls[name]) + jnp.asarray(p[name]["bias"], dtype)
            elif name.startswith("conv"):
                k = jnp.asarray(p[name]["kernel"], dtype)
                x = conv_impl("xla", x, k) + jnp.asarray(p[name]["bias"], dtype)
            elif name.startswith("relu"):
                x = jnp.maximum(x, 0)
            elif pooling == "max":
                x = max_pool2(x)
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
