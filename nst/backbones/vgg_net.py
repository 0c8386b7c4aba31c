"""The VGG16/VGG19 network (Flax, plain JAX): named activations of RGB pixels in 0..255.

The network computes only up to the deepest requested layer, and preprocessing (channel order,
mean/std) is part of the forward pass, so callers always hand it RGB pixels in 0..255. Layer
tables, names and conv plans are in :mod:`nst.backbones.vgg`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from nst import losses
from nst.backbones.vgg import (
    CAFFE_MEAN_BGR,
    CONV_IMPLS,
    PREPROCESSING,
    TORCH_MEAN_RGB,
    TORCH_STD_RGB,
    block_of,
    conv_shapes,
    layer_names,
    strip_layout,
)


def preprocess(x: jnp.ndarray, mode: str) -> jnp.ndarray:
    """RGB 0..255 pixels (..., 3) -> the input the weights were trained on."""
    if mode == "caffe":
        return x[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, x.dtype)
    if mode == "torch":
        return (x / 255.0 - jnp.asarray(TORCH_MEAN_RGB, x.dtype)) / jnp.asarray(
            TORCH_STD_RGB, x.dtype
        )
    raise ValueError(f"unknown preprocessing {mode!r}; valid: {', '.join(PREPROCESSING)}")


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
    # With remat, the first strip_blocks blocks run over strips of ~strip_rows rows
    # (apply_vgg_striped, through nst.engine.features_and_grams); 0 = whole image.
    strip_blocks: int = 0
    strip_rows: int = 0

    # --- nst.backbones.Network ---------------------------------------------------------------
    def prepare(self, params: dict) -> dict:
        """Only the convolutions this truncated network uses, as device arrays, with what
        ``conv_plan`` needs precomputed (:func:`prepare_params`)."""
        import jax

        names = layer_names(self.arch)
        used = names[: names.index(self.last_layer or names[-1]) + 1]
        trimmed = {k: dict(params[k]) for k in used if k.startswith("conv")}
        return jax.device_put(
            prepare_params(trimmed, self.conv_plan) if self.conv_plan else trimmed
        )

    def features(self, params: dict, x: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Activations of ``x`` ``(N, H, W, 3)``: this module's function computed by
        :func:`apply_vgg`, each convolution as ``conv_plan`` says (``params`` from
        :meth:`prepare`), per-block rematerialized when ``remat``."""
        if not self.remat and not self.conv_plan:
            return self.apply({"params": params}, x)
        return apply_vgg(params, x, **self._kwargs())

    def features_and_grams(
        self, params: dict, x: jnp.ndarray
    ) -> tuple[dict[str, jnp.ndarray], dict[str, jnp.ndarray]]:
        """:meth:`features`, except that the layers of the first ``strip_blocks`` blocks come
        as unnormalized Grams ``(N, C, C)`` in the second dict, computed strip by strip
        (:func:`apply_vgg_striped`). No strips: no Grams."""
        if not self.strip_blocks:
            return self.features(params, x), {}
        return apply_vgg_striped(
            params,
            x,
            strip_blocks=self.strip_blocks,
            strip_rows=self.strip_rows,
            gram_layers=self.outputs or (),
            **self._kwargs(),
        )

    def _kwargs(self) -> dict:
        return {
            "arch": self.arch,
            "pooling": self.pooling,
            "preprocessing": self.preprocessing,
            "last_layer": self.last_layer,
            "dtype": self.dtype,
            "remat": self.remat,
            "outputs": self.outputs,
            "conv_plan": self.conv_plan,
        }

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


def kernel_for(impl: str, kernel: jnp.ndarray) -> jnp.ndarray:
    """The form of an HWIO ``kernel`` that :func:`conv_impl` takes for ``impl`` (precomputed once
    per run: a Winograd transform, a reshape, a cast)."""
    from nst.backbones import winograd

    if impl == "winograd":
        return winograd.transform_kernel(kernel)
    if impl == "winograd_bf16":  # F(2x2, 3x3): see nst.backbones.winograd on bf16 rounding
        return winograd.transform_kernel(kernel, 2).astype(jnp.bfloat16)
    if impl == "im2col_bf16":
        kh, kw, cin, cout = kernel.shape
        return kernel.reshape(kh, kw * cin, cout).astype(jnp.bfloat16)
    if impl == "xla_bf16":
        return kernel.astype(jnp.bfloat16)
    if impl == "xla":
        return kernel
    raise ValueError(f"unknown conv implementation {impl!r}; valid: {', '.join(CONV_IMPLS)}")


def im2col_conv(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """3x3 SAME convolution of float32 ``x`` ``(N, H, W, C)`` as three GEMMs with bfloat16
    operands and float32 accumulation; ``w`` is ``kernel_for("im2col_bf16", k)`` ``(3, 3C, O)``.

    Only the three column shifts are gathered (``(N, H+2, W, 3C)``, a third of a full im2col's
    memory); the row shifts are views of it, one GEMM each with K = 3C."""
    n, h, wd, c = x.shape
    xp = jnp.pad(x.astype(jnp.bfloat16), ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, :, j : j + wd] for j in range(3)], axis=-1)
    out = None
    for i in range(3):
        y = jnp.dot(cols[:, i : i + h], w[i], preferred_element_type=jnp.float32)
        out = y if out is None else out + y
    return out


def flip_kernel(kernel: np.ndarray | jnp.ndarray) -> np.ndarray | jnp.ndarray:
    """The kernel whose SAME convolution is the input gradient of ``kernel``'s: spatially
    flipped, input and output channels swapped (HWIO)."""
    return kernel[::-1, ::-1].transpose(0, 1, 3, 2)


def prepare_params(params: dict, plan: Sequence[tuple[str, str, str]]) -> dict:
    """Add, once per run, what each convolution of ``plan`` needs besides the bias: ``fwd``
    (the kernel in its implementation's form, :func:`kernel_for`, replacing ``kernel``) and
    ``bwd`` (the input-gradient kernel, flipped, in its form). Inside the step XLA would
    otherwise redo these transposes on every call (~10% of a 256 px step on the CPU), as the
    weights are arguments, not constants. Computed on the host in NumPy: compiling the same
    work as a program took several times longer than doing it."""
    out = {k: dict(v) for k, v in params.items()}
    for name, fwd, bwd in plan:
        if name not in out:
            continue
        k = np.asarray(out[name]["kernel"], np.float32)
        out[name]["bwd"] = kernel_for(bwd, np.ascontiguousarray(flip_kernel(k)))
        if fwd != "xla":  # the step never reads the kernel itself: don't carry it
            out[name]["fwd"] = kernel_for(fwd, k)
            del out[name]["kernel"]
    return out


def conv_impl(impl: str, x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
    """3x3 SAME convolution of ``x`` by ``impl`` with ``w = kernel_for(impl, kernel)``."""
    import jax

    if impl in ("winograd", "winograd_bf16"):
        from nst.backbones import winograd

        return winograd.conv3x3(x, w)
    if impl == "im2col_bf16":
        return im2col_conv(x, w)
    if impl == "xla_bf16":
        return jax.lax.conv_general_dilated(
            x.astype(jnp.bfloat16),
            w,
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=jnp.float32,
        )
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
    w_fwd = p["kernel"] if impls[0] == "xla" else p["fwd"]
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

    if pooling not in ("max", "avg"):
        raise ValueError(f"unknown pooling {pooling!r}; valid: max, avg")
    names = layer_names(arch)
    last = last_layer or names[-1]
    stop = names.index(last)
    x = preprocess(x, preprocessing).astype(dtype)

    keep = frozenset(names if outputs is None else outputs)
    block = functools.partial(_block, dtype=dtype, pooling=pooling, plan=_plan_dict(conv_plan))
    return _later_blocks(params, x, 1, names[: stop + 1], keep, block, remat)


def _later_blocks(
    params: dict,
    x: jnp.ndarray,
    first: int,
    layers: Sequence[str],
    keep: frozenset[str],
    block: Callable[..., dict[str, jnp.ndarray]],
    remat: bool,
) -> dict[str, jnp.ndarray]:
    """Blocks ``first``.. of ``layers`` one after the other, each checkpointed when ``remat``."""
    import jax

    feats: dict[str, jnp.ndarray] = {}
    fn = jax.checkpoint(block, static_argnums=(2, 3)) if remat else block
    for b in range(first, 10):
        in_block = tuple(n for n in layers if block_of(n) == b)
        if not in_block:
            break
        out = fn({n: params[n] for n in in_block if n.startswith("conv")}, x, in_block, keep)
        x = out[in_block[-1]]
        feats.update({k: v for k, v in out.items() if k in keep})
    return feats


def _plan_dict(conv_plan: Sequence[tuple[str, str, str]]) -> dict[str, tuple[str, str]]:
    return {name: (f, b) for name, f, b in conv_plan}


def _block(
    p: dict,
    x: jnp.ndarray,
    layers: tuple[str, ...],
    keep: frozenset[str] | set[str],
    *,
    dtype: jnp.dtype,
    pooling: str,
    plan: dict[str, tuple[str, str]],
    row_mask: Callable[[jnp.ndarray, int], jnp.ndarray] | None = None,
) -> dict[str, jnp.ndarray]:
    """Run ``layers`` (consecutive, one block or more) on ``x``; returns the activations named in
    ``keep`` and the last one. ``row_mask(x, level)``, if given, zeroes the rows of a strip that
    lie outside the image before each convolution (see :func:`apply_vgg_striped`)."""
    import jax

    out = {}
    level = 0
    for name in layers:
        if name.startswith("conv"):
            if row_mask is not None:
                x = row_mask(x, level)
            if name in plan:
                x = conv3x3(x, p[name], plan[name])
            else:
                x = conv_impl("xla", x, jnp.asarray(p[name]["kernel"], dtype))
            x = x + jnp.asarray(p[name]["bias"], dtype)
        elif name.startswith("relu"):
            x = jnp.maximum(x, 0)
        elif pooling == "max":
            x = max_pool2(x)
            level += 1
        else:
            x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            x = x / 4
            level += 1
        if name in keep or name == layers[-1]:
            out[name] = x
    return out


def apply_vgg_striped(
    params: dict,
    x: jnp.ndarray,
    *,
    strip_blocks: int,
    strip_rows: int,
    gram_layers: Sequence[str],
    arch: str = "vgg16",
    pooling: str = "max",
    preprocessing: str = "caffe",
    last_layer: str | None = None,
    dtype: jnp.dtype = jnp.float32,
    remat: bool = False,
    outputs: Sequence[str] | None = None,
    conv_plan: Sequence[tuple[str, str, str]] = (),
) -> tuple[dict[str, jnp.ndarray], dict[str, jnp.ndarray]]:
    """:func:`apply_vgg` whose first ``strip_blocks`` blocks run over horizontal strips of about
    ``strip_rows`` rows, one at a time (``lax.map`` of a ``jax.checkpoint``ed strip): the
    backward pass recomputes one strip at a time, so no full-resolution 64-channel activation
    is ever held, which is what bounds the memory of a large image (block 1's activations are
    2x block 2's, 4x block 3's). Layers of those blocks cannot be returned whole; instead, for each of
    ``gram_layers`` in them, the unnormalized Gram ``(N, C, C)`` = Σ over positions F·Fᵀ comes
    back in the second dict (a sum over rows, so strips add up). Later blocks run as in
    :func:`apply_vgg`; the first dict holds their activations named in ``outputs``.

    A strip reads ``halo`` rows beyond its own on both sides (:func:`strip_layout`) and is
    convolved with SAME padding; the rows wrongly padded at a strip's edge never reach its own
    rows. Rows outside the image are zeroed before each convolution, which is SAME padding of
    the whole image. Equals :func:`apply_vgg` up to float rounding (tests/test_strips.py)."""
    import jax

    if pooling not in ("max", "avg"):
        raise ValueError(f"unknown pooling {pooling!r}; valid: max, avg")
    names = layer_names(arch)
    stop = names.index(last_layer or names[-1])
    striped = [n for n in names[: stop + 1] if block_of(n) <= strip_blocks]
    if not striped or striped[-1] != f"pool{strip_blocks}":
        raise ValueError(
            f"strip_blocks={strip_blocks} needs the network to reach pool{strip_blocks}"
        )
    keep = frozenset(names if outputs is None else outputs)
    bad = sorted(keep.intersection(striped) - set(gram_layers))
    if bad:
        raise ValueError(f"layer(s) {', '.join(bad)} of striped blocks can only give Grams")
    x = preprocess(x, preprocessing).astype(dtype)
    n_img, h, w, _ = x.shape
    t, n, halo = strip_layout(arch, strip_blocks, h, strip_rows)
    f = 2**strip_blocks
    span = t * f
    xp = jnp.pad(x, ((0, 0), (halo, n * span + halo - h), (0, 0), (0, 0)))
    strips = jnp.stack([xp[:, i * span : i * span + span + 2 * halo] for i in range(n)])
    heights = [h]
    for _ in range(strip_blocks):
        heights.append(heights[-1] // 2)
    grams_wanted = tuple(g for g in gram_layers if g in striped)
    block = functools.partial(_block, dtype=dtype, pooling=pooling, plan=_plan_dict(conv_plan))

    def one_strip(p: dict, xs: jnp.ndarray, i: jnp.ndarray):
        start = i * span - halo  # global input row of the strip's first row

        def row_mask(a: jnp.ndarray, level: int) -> jnp.ndarray:
            rows = start // 2**level + jnp.arange(a.shape[1])
            ok = (rows >= 0) & (rows < heights[level])
            return jnp.where(ok[None, :, None, None], a, jnp.zeros((), a.dtype))

        out = block(p, xs, tuple(striped), frozenset(grams_wanted), row_mask=row_mask)
        grams = {}
        for g in grams_wanted:
            level = sum(1 for s in striped[: striped.index(g) + 1] if s.startswith("pool"))
            own = row_mask(out[g], level)[:, halo // 2**level : (halo + span) // 2**level]
            own = own.reshape(n_img, -1, own.shape[-1])
            grams[g] = losses.raw_gram(own)
        last = out[striped[-1]][:, halo // f : halo // f + t]
        return last, grams

    body = jax.checkpoint(one_strip)
    p_striped = {k: params[k] for k in striped if k.startswith("conv")}
    ys, grams = jax.lax.map(lambda a: body(p_striped, a[0], a[1]), (strips, jnp.arange(n)))
    # (n, N, t, W', C) -> (N, n*t, W', C), cut to the pooled height of the whole image
    y = ys.transpose(1, 0, 2, 3, 4).reshape(n_img, n * t, *ys.shape[3:])[:, : heights[-1]]
    grams = {k: v.sum(0) for k, v in grams.items()}

    return _later_blocks(params, y, strip_blocks + 1, names[: stop + 1], keep, block, remat), grams
