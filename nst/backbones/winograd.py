"""Winograd F(4x4, 3x3) convolution for the CPU.

A 3x3 "SAME" convolution computes each 4x4 output tile from a 6x6 input tile with 36
elementwise-multiplied channel GEMMs instead of 144 multiply-adds per channel pair, 4x fewer
multiplies (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, Sec. 4).
Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A, summed over input channels; the ⊙/sum is one batched GEMM
(36, tiles, C_in) x (36, C_in, C_out).

On XLA:CPU the GEMMs run about as fast per FLOP as its direct convolution, so layers with
>= 128 channels run faster; at 64 channels the memory-bound transforms eat much of the gain
(``nst-bench --conv-layers`` times each layer; docs/performance.md). The kernel
transform G g G^T depends only on the weights, so it is computed once per run
(:func:`transform_kernel`), never per step.

F(2x2, 3x3) (16 GEMMs from 4x4 tiles, 2.25x fewer multiplies) is the form for bfloat16 GEMM
operands: F(4x4, 3x3)'s larger transform coefficients amplify bf16 rounding about 6x (relative
error ~2% against ~0.3%; tests/test_winograd.py measures both).
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
# F(2x2, 3x3) with interpolation points 0, 1, -1, inf: Lavin & Gray 2016, Sec. 4.1.
BT2 = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G2 = np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]], np.float64)
AT2 = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
# Output tile size m -> (B^T, G, A^T); the input tile is m + 2.
ALGORITHMS = {4: (BT, G, AT), 2: (BT2, G2, AT2)}
M_OUT, TILE = 4, 6  # the default: output tile 4x4 from input tile 6x6


def transform_kernel(kernel: np.ndarray | jnp.ndarray, m: int = M_OUT) -> np.ndarray | jnp.ndarray:
    """``(3, 3, C_in, C_out)`` HWIO kernel -> ``(t*t, C_in, C_out)`` (``t = m + 2``): G g G^T per
    channel pair, stored column-transform-major (index ``t*j + i`` for row point i, column point
    j), the order :func:`input_transform` produces. One ``(t*t, 9)`` by ``(9, C_in*C_out)``
    product, in NumPy for a NumPy kernel (the per-run preparation needs no compile) and in JAX
    for a JAX one."""
    g = ALGORITHMS[m][1]
    gg = np.einsum("ik,jl->jikl", g, g).reshape((m + 2) ** 2, 9).astype(np.float32)
    u = gg @ kernel.astype(np.float32).reshape(9, -1)
    return u.reshape((m + 2) ** 2, *kernel.shape[2:])


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


def input_transform(x: jnp.ndarray, m: int = M_OUT) -> jnp.ndarray:
    """``(N, H, W, C)`` -> ``(t*t, N*th*tw, C)``: B^T d B of every t x t tile (``t = m + 2``,
    stride m) of the input padded by 1 (SAME), ``th = ceil(H/m)``, ``tw = ceil(W/m)``.

    Separable, as sums of strided views: each of the t rows of B^T combines t row views (most
    coefficients are 0 or +-1), then the same along columns. XLA fuses each pass, and a cast
    of the result, into one loop over the data; written as two small dots (fusion boundaries)
    the stacking, each dot and the cast were separate passes (docs/performance.md)."""
    n, h, w, c = x.shape
    tile = m + 2
    th, tw = -(-h // m), -(-w // m)
    bt = ALGORITHMS[m][0]
    xp = jnp.pad(x, ((0, 0), (1, m * th + 1 - h), (1, m * tw + 1 - w), (0, 0)))
    rows = [xp[:, a : a + m * th : m] for a in range(tile)]  # each (n, th, Wp, c)
    t = jnp.stack([_combine(bt[i], rows) for i in range(tile)])  # (i, n, th, Wp, c)
    cols = [t[:, :, :, b : b + m * tw : m] for b in range(tile)]  # each (i, n, th, tw, c)
    v = jnp.stack([_combine(bt[j], cols) for j in range(tile)])  # (j, i, n, th, tw, c)
    return v.reshape(tile * tile, n * th * tw, c)


def output_transform(mm: jnp.ndarray, n: int, h: int, w: int, m: int = M_OUT) -> jnp.ndarray:
    """``(t*t, N*th*tw, C)`` -> ``(N, H, W, C)``: A^T mm A per tile, tiles put back in place."""
    tile = m + 2
    at = ALGORITHMS[m][2]
    th, tw = -(-h // m), -(-w // m)
    c = mm.shape[-1]
    if m == 2:
        # Sums of views, written in the output's layout: one fused pass (A^T is 0/+-1 here).
        mm = mm.reshape(tile, tile, n, th, tw, c)  # (j, i, ...)
        s = [_combine(at[q], [mm[j] for j in range(tile)]) for q in range(m)]  # (i, n, th, tw, c)
        y = jnp.stack(
            [
                jnp.stack([_combine(at[p], [s[q][i] for i in range(tile)]) for q in range(m)], 3)
                for p in range(m)
            ],
            2,
        )  # (n, th, p, tw, q, c)
        return y.reshape(n, m * th, m * tw, c)[:, :h, :w]
    s = jnp.dot(jnp.asarray(at, mm.dtype), mm.reshape(tile, -1))  # over columns j
    s = s.reshape(m, tile, n, th, tw, c)  # (q, i, ...)
    y = jnp.stack([_combine(at[p], [s[:, i] for i in range(tile)]) for p in range(m)])
    y = y.transpose(2, 3, 0, 4, 1, 5)  # (p, q, n, th, tw, c) -> (n, th, p, tw, q, c)
    return y.reshape(n, m * th, m * tw, c)[:, :h, :w]


def conv3x3(x: jnp.ndarray, u: jnp.ndarray) -> jnp.ndarray:
    """3x3 stride-1 SAME convolution of ``x`` ``(N, H, W, C_in)`` with the transformed kernel
    ``u = transform_kernel(k, m)`` ``((m+2)^2, C_in, C_out)`` (m read from its shape); equals
    ``lax.conv_general_dilated(x, k)`` up to float rounding (relative error ~1e-5 in float32).

    A bfloat16 ``u`` with a float32 ``x`` is the mixed-precision form: the transforms run in
    float32, the channel GEMMs take bfloat16 operands and accumulate in float32 (the CPU's bf16
    matrix units), and the result is float32."""
    n, h, w, _ = x.shape
    m = {36: 4, 16: 2}[u.shape[0]]
    v = input_transform(x, m)
    if u.dtype == jnp.bfloat16 and v.dtype == jnp.float32:
        mm = lax.dot_general(
            v.astype(jnp.bfloat16),
            u,
            (((2,), (1,)), ((0,), (0,))),
            preferred_element_type=jnp.float32,
        )
    else:
        mm = lax.dot_general(v, u.astype(v.dtype), (((2,), (1,)), ((0,), (0,))))
    return output_transform(mm, n, h, w, m)


__all__ = ["conv3x3", "input_transform", "output_transform", "transform_kernel"]
