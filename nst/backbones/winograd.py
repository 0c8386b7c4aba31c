"""Winograd F(4x4, 3x3) convolution for the CPU.

A 3x3 "SAME" convolution computes each 4x4 output tile from a 6x6 input tile with 36
elementwise-multiplied channel GEMMs instead of 144 multiply-adds per channel pair, 4x fewer
multiplies (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, Sec. 4).
Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A, summed over input channels; the ⊙/sum is one batched GEMM
(36, tiles, C_in) x (36, C_in, C_out).

On XLA:CPU the GEMMs run about as fast per FLOP as its direct convolution, so layers with
>= 128 channels run 1.3-2.5x faster; at 64 -> 64 channels the transforms (memory-bound) cost
more than the multiplies they save (``nst-bench --conv-layers`` times each layer). The kernel
transform G g G^T depends only on the weights, so it is computed once per run
(:func:`transform_kernel`), never per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

# F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2, inf: Lavin & Gray 2016, Sec. 4.2.
BT = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    np.float64,
)
G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    np.float64,
)
AT = np.array(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    np.float64,
)
M_OUT, TILE = 4, 6  # output tile 4x4 from input tile 6x6


def transform_kernel(kernel: jnp.ndarray) -> jnp.ndarray:
    """``(3, 3, C_in, C_out)`` HWIO kernel -> ``(36, C_in, C_out)``: G g G^T per channel pair,
    stored column-transform-major (index ``6*j + i`` for row point i, column point j), the order
    :func:`input_transform` produces."""
    g = jnp.asarray(G, jnp.float32)
    u = jnp.einsum("ik,klco,jl->jico", g, kernel.astype(jnp.float32), g)
    return u.reshape(TILE * TILE, *u.shape[2:])


def _combine(coefs: Sequence[float], xs: Sequence[jnp.ndarray]) -> jnp.ndarray:
    """sum_i coefs[i] * xs[i], skipping zeros and multiplying by +-1 for free."""
    out = None
    for c, x in zip(coefs, xs, strict=True):
        if c == 0:
            continue
        # A Python float is weakly typed: x keeps its dtype (a NumPy scalar would promote bf16).
        t = x if c == 1 else -x if c == -1 else x * float(c)
        out = t if out is None else out + t
    assert out is not None
    return out


def input_transform(x: jnp.ndarray) -> jnp.ndarray:
    """``(N, H, W, C)`` -> ``(36, N*th*tw, C)``: B^T d B of every 6x6 tile (stride 4) of the
    input padded by 1 (SAME), ``th = ceil(H/4)``, ``tw = ceil(W/4)``.

    Separable: 6 strided row views stacked and multiplied by B^T (one small GEMM), then the same
    along columns. Written as two dots rather than 36 unrolled sums, it compiles ~5x faster and
    runs as fast (a 6-row operand keeps every stacked axis leading, so nothing is transposed)."""
    n, h, w, c = x.shape
    th, tw = -(-h // M_OUT), -(-w // M_OUT)
    bt = jnp.asarray(BT, x.dtype)
    xp = jnp.pad(x, ((0, 0), (1, M_OUT * th + 1 - h), (1, M_OUT * tw + 1 - w), (0, 0)))
    rows = jnp.stack([xp[:, a : a + M_OUT * th : M_OUT] for a in range(TILE)])  # (a,n,th,Wp,c)
    t = jnp.tensordot(bt, rows, 1)  # (i, n, th, Wp, c)
    cols = jnp.stack([t[:, :, :, b : b + M_OUT * tw : M_OUT] for b in range(TILE)])
    v = jnp.tensordot(bt, cols, 1)  # (j, i, n, th, tw, c)
    return v.reshape(TILE * TILE, n * th * tw, c)


def output_transform(m: jnp.ndarray, n: int, h: int, w: int) -> jnp.ndarray:
    """``(36, N*th*tw, C)`` -> ``(N, H, W, C)``: A^T m A per tile, tiles put back in place."""
    th, tw = -(-h // M_OUT), -(-w // M_OUT)
    c = m.shape[-1]
    s = jnp.dot(jnp.asarray(AT, m.dtype), m.reshape(TILE, -1))  # over columns j
    s = s.reshape(M_OUT, TILE, n, th, tw, c)  # (q, i, ...)
    y = jnp.stack([_combine(AT[p], [s[:, i] for i in range(TILE)]) for p in range(M_OUT)])
    y = y.transpose(2, 3, 0, 4, 1, 5)  # (p, q, n, th, tw, c) -> (n, th, p, tw, q, c)
    return y.reshape(n, M_OUT * th, M_OUT * tw, c)[:, :h, :w]


def conv3x3(x: jnp.ndarray, u: jnp.ndarray) -> jnp.ndarray:
    """3x3 stride-1 SAME convolution of ``x`` ``(N, H, W, C_in)`` with the transformed kernel
    ``u = transform_kernel(k)`` ``(36, C_in, C_out)``; equals ``lax.conv_general_dilated(x, k)``
    up to float rounding (relative error ~1e-5 in float32)."""
    n, h, w, _ = x.shape
    v = input_transform(x)
    m = lax.dot_general(v, u.astype(v.dtype), (((2,), (1,)), ((0,), (0,))))
    return output_transform(m, n, h, w)


__all__ = ["conv3x3", "input_transform", "output_transform", "transform_kernel"]
