"""Transformer building blocks, computing exactly what the reference 4M blocks compute.

- LayerNorm with eps 1e-6 and an optional bias (the released models have none).
- Attention written out by hand: float32 scores scaled after the product, masked keys set to
  -finfo(float32).max (the reference's masked_fill value, so a row with no valid key is uniform,
  never NaN), float32 softmax.
- MLP: SwiGLU `fc2(silu(fc1 x) * fc3 x)` without biases, or fc2(gelu(fc1 x)) with biases (exact
  erf GELU, as torch.nn.GELU).
- Pre-norm encoder block; decoder block = self-attention, cross-attention, MLP.

Weights are stored in the layout the einsums read (in-features first); heads are contiguous
blocks of `head_dim` features, as the reference's reshape(B, N, 3, H, hd).
Every Param carries logical axis names in `out_sharding` (see m4/parallel.py).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4.parallel import constrain

NEG_INF = -float(np.finfo(np.float32).max)


class PositionTable(nnx.Variable):
    """A fixed (not trained) table, e.g. sin-cos positions; never seen by the optimizer."""


def param(value: jax.Array, names: tuple) -> nnx.Param:
    """A float32 parameter with logical axis names (sharding is applied later, by the caller)."""
    return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def fixed(value, names: tuple) -> PositionTable:
    return PositionTable(jnp.asarray(value, jnp.float32), out_sharding=tuple(names),
                         eager_sharding=False)


def uniform_init(key: jax.Array, shape: tuple, bound: float) -> jax.Array:
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def normal_init(key: jax.Array, shape: tuple, std: float = 0.02) -> jax.Array:
    return std * jax.random.normal(key, shape, jnp.float32)


def xavier_bound(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


# -- sin-cos tables (float32, the reference formulas) -------------------------------------------

def sincos_1d(length: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """[length, dim]: [sin(n w_k), cos(n w_k)], w_k = temperature^(-k / (dim/2))."""
    if dim % 2:
        raise ValueError(f"sincos_1d: dim must be even, got {dim}")
    half = dim // 2
    omega = np.arange(half, dtype=np.float32) / np.float32(half)
    omega = (1.0 / (np.float32(temperature) ** omega)).astype(np.float32)
    out = np.einsum("n,d->nd", np.arange(length, dtype=np.float32), omega).astype(np.float32)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1).astype(np.float32)


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """[h*w, dim] for a row-major grid (p = row*w + col):
    [sin(row w_k), cos(row w_k), sin(col w_k), cos(col w_k)], w_k = temperature^(-k / (dim/4)).

    Equal to the reference's table for square grids (all of its grids); for non-square grids the
    reference's flattening differs (it is only defined for its square token grids).
    """
    if dim % 4:
        raise ValueError(f"sincos_2d: dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    omega = np.arange(quarter, dtype=np.float32) / np.float32(quarter)
    omega = (1.0 / (np.float32(temperature) ** omega)).astype(np.float32)
    rows, cols = np.divmod(np.arange(h * w), w)
    out_r = np.einsum("n,d->nd", rows.astype(np.float32), omega).astype(np.float32)
    out_c = np.einsum("n,d->nd", cols.astype(np.float32), omega).astype(np.float32)
    return np.concatenate([np.sin(out_r), np.cos(out_r), np.sin(out_c), np.cos(out_c)],
                          axis=1).astype(np.float32)


# -- matmuls with a compute dtype ----------------------------------------------------------------

def dot(spec: str, x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """einsum with operands cast to the compute dtype and float32 accumulation/result."""
    return jnp.einsum(spec, x.astype(dtype), w.astype(dtype),
                      preferred_element_type=jnp.float32)


def _canonical_t(a: jax.Array) -> jax.Array:
    """The transpose of a 2D array, materialised so that a dot reading it contracts the last dim
    of its left operand (the layout the fast CPU kernels take).

    A plain `jnp.transpose` (even behind an optimization barrier, which XLA's CPU pipeline looks
    through) is folded back into the dot's dimension numbers, and a bfloat16 dot in the folded
    layout is then upcast to float32 operands: measured on a 2-core AMX Xeon, x^T . g of
    [1024, 384] and [1024, 1152] bf16 ran 3.3-3.7 ms that way vs 1.0 ms here (0.67 ms when x^T
    is given). Transposing a 3D view and merging two dims again is not a pattern the folding
    recognises, so the dot stays canonical and in bfloat16."""
    rows, cols = a.shape
    for split in (8, 4, 2):
        if rows % split == 0 and rows > split:
            return jnp.transpose(a.reshape(rows // split, split, cols), (2, 0, 1)).reshape(cols, rows)
        if cols % split == 0 and cols > split:
            return jnp.transpose(a.reshape(rows, cols // split, split), (1, 2, 0)).reshape(cols, rows)
    return jax.lax.optimization_barrier(jnp.transpose(a))


def after(tree, signal: jax.Array):
    """`tree` unchanged, but computed from `signal` as far as XLA can tell.

    Used in backward passes that recompute forward values: XLA would merge the recomputation
    with the forward's (common subexpressions, looking through optimization barriers on CPU) and
    keep the forward's arrays alive in between, defeating the recomputation. Adding
    0 * max(first two elements of the incoming gradient) makes every recomputed value new and
    orders it after the gradient arrives. (A NaN/Inf gradient turns the result non-finite, as
    the gradients are anyway.)"""
    # A reduction, not an element: XLA fuses a single element's computation into every consumer
    # and would recompute the gradient's producers for each element of `tree`.
    flat = jax.lax.stop_gradient(signal).reshape(-1)
    zero = 0.0 * jnp.max(flat[:2].astype(jnp.float32))
    return jax.tree.map(lambda a: a + zero.astype(a.dtype), tree)


def dot2(a: jax.Array, b: jax.Array, contract: tuple[int, int], dtype) -> jax.Array:
    """2D product contracting dim contract[0] of `a` with dim contract[1] of `b`, operands in
    the compute `dtype`, float32 result. The contracting dims are given as they are stored: the
    CPU kernels read (1, 1) and (0, 0) directly, so no operand is transposed first."""
    dims = (((contract[0],), (contract[1],)), ((), ()))
    return jax.lax.dot_general(a.astype(dtype), b.astype(dtype), dims,
                               preferred_element_type=jnp.float32)


def _matmul_grads(x: jax.Array | None, w: jax.Array, g: jax.Array, dtype,
                  x_t: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Gradients of y = x @ w: (g @ w^T [T, K], x^T @ g [K, N]), operands cast to `dtype`,
    float32 accumulation. x [T, K], w [K, N], g [T, N]. `x_t`: x^T [K, T] already materialised
    in a bfloat16 `dtype` (then `x` is not read)."""
    wc, gc = w.astype(dtype), g.astype(dtype)
    if dtype == jnp.float32:
        # float32: g . w^T (contracting the last dims of both) is read directly by the YNNPACK
        # kernels, and x^T . g (contracting the rows of both) runs as a plain dot about as fast
        # as the canonical one: materialising the transposes cost more than it saved.
        return dot2(gc, wc, (1, 1), dtype), dot2(x.astype(dtype), gc, (0, 0), dtype)
    # bfloat16 operands: only the canonical layout reaches the bf16 kernels (with float32
    # accumulation); other layouts are upcast to float32 operands, so transpose explicitly.
    if x_t is None:
        x_t = _canonical_t(x.astype(dtype))
    return (jnp.dot(gc, _canonical_t(wc), preferred_element_type=jnp.float32),
            jnp.dot(x_t, gc, preferred_element_type=jnp.float32))


def _mm(x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    """x [T, K] @ w (any shape with K*N elements, read as [K, N]) -> [T, N] float32."""
    w2 = w.reshape(x.shape[1], -1)
    return jnp.dot(x.astype(dtype), w2.astype(dtype), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul(x: jax.Array, w: jax.Array, dtype) -> jax.Array:
    return _mm(x, w, dtype)


def _matmul_fwd(x, w, dtype):
    # The weight is saved in its stored shape and dtype: inside a layer scan, a residual that is
    # the scanned parameter slice itself is forwarded, while a reshaped or cast copy would be
    # stacked over the layers (~40 MB more at tiny size). The input is saved in the compute
    # dtype (a no-op in float32).
    return _mm(x, w, dtype), (x.astype(dtype), w)


def _matmul_bwd(dtype, residuals, g):
    x, w = residuals                                          # [T, K], w read as [K, N]
    dx, dw = _matmul_grads(x, w.reshape(x.shape[1], -1), g, dtype)
    # dx stays float32, the dtype of every activation of the model.
    return dx, dw.reshape(w.shape).astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def linear(x: jax.Array, w: jax.Array, dtype, contract: int = 1) -> jax.Array:
    """x [..., K1..Kc] @ w [K1..Kc, N...]: the first `contract` dims of w meet the last ones of x.

    Computed as one 2D matmul (custom VJP) whose three dots (forward, input and weight
    gradients) take operands in the compute dtype with float32 accumulation, each in a layout
    the CPU kernels run at full speed (see `_matmul_grads`). Plain autodiff of an einsum emits
    the weight gradient with several contracting dims (batch and length), a slow path, and
    would keep no dot in bfloat16 in the backward pass."""
    k_shape, n_shape = w.shape[:contract], w.shape[contract:]
    if x.shape[x.ndim - contract:] != k_shape:
        raise ValueError(f"linear: input {x.shape} does not end with the weight's input dims "
                         f"{k_shape}")
    lead = x.shape[:x.ndim - contract]
    k = int(np.prod(k_shape))
    y = _matmul(x.reshape(-1, k), w, jnp.dtype(dtype))
    return y.reshape(*lead, *n_shape)


# -- gated MLP: fc2(silu(fc1 x) * fc3 x) with a custom VJP ---------------------------------------

def _swiglu_hidden(h: jax.Array, g: jax.Array) -> jax.Array:
    return jax.nn.silu(h) * g


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _gated_mlp(x, w1, w3, w2, dtype):
    return _gated_mlp_fwd(x, w1, w3, w2, dtype)[0]


def _gated_mlp_fwd(x, w1, w3, w2, dtype):
    # Rows are the flattened (batch, length) positions, sharded like the batch.
    h = constrain(_mm(x, w1, dtype), ("batch", "mlp"))                     # [T, F] f32
    g = constrain(_mm(x, w3, dtype), ("batch", "mlp"))
    a = _swiglu_hidden(h, g).astype(dtype)
    # Saved: x and the two pre-activations. The gated product (the input of fc2) and the
    # sigmoid are recomputed in the backward pass: autodiff would keep three more [T, F] arrays
    # per block, the largest activations of the model. In bfloat16 the product is also saved,
    # transposed (half the bytes of one float32 [T, F] array): fc2's weight gradient reads it
    # as its canonical left operand, and a transpose fused with the recomputation in the
    # backward pass writes its [F, T] output with strided reads of three [T, F] inputs (measured
    # 7.8 ms vs 1.0 ms for the saved transpose at [1024, 1024] on 2 cores; ~11 ms per block in
    # the benchmark's bf16 step).
    saved_t = () if dtype == jnp.float32 else (_canonical_t(a),)
    return _mm(a, w2, dtype), (x.astype(dtype), w1, w3, w2, h, g, *saved_t)


def _gated_mlp_bwd(dtype, residuals, dy):
    x, w1, w3, w2, h, g, *saved_t = residuals                            # x [T, D], h/g [T, F]
    # Recompute from the incoming gradient: XLA can neither merge the recomputation with the
    # forward's nor schedule it early, either of which would keep [T, F] arrays of every block
    # alive from the forward until here (see `after`).
    h, g = after((h, g), dy)
    sig = jax.nn.sigmoid(h)
    silu = h * sig
    # [T, F], [F, D]; in bfloat16 from the saved transposed product.
    da, dw2 = (_matmul_grads(None, w2, dy, dtype, x_t=saved_t[0]) if saved_t
               else _matmul_grads(silu * g, w2, dy, dtype))
    dg = da * silu
    dh = da * g * (sig + silu * (1.0 - sig))                             # d silu / dh
    dx1, dw1 = _matmul_grads(x, w1, dh, dtype)
    dx3, dw3 = _matmul_grads(x, w3, dg, dtype)
    return dx1 + dx3, dw1, dw3, dw2


_gated_mlp.defvjp(_gated_mlp_fwd, _gated_mlp_bwd)


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float, use_bias: bool):
        self.eps = eps
        self.scale = param(jnp.ones((dim,), jnp.float32), ("embed",))
        self.bias = param(jnp.zeros((dim,), jnp.float32), ("embed",)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y


def _heads_first(a: jax.Array, dtype) -> jax.Array:
    """[B, N, H, hd] -> [B, H, N, hd] in the compute dtype."""
    return jnp.transpose(a, (0, 2, 1, 3)).astype(dtype)


def _bdot(a: jax.Array, b: jax.Array, contract: tuple[int, int], dtype) -> jax.Array:
    """Per (batch, head) product over [B, H, ., .] operands, float32 result."""
    dims = (((contract[0],), (contract[1],)), ((0, 1), (0, 1)))
    return jax.lax.dot_general(a.astype(dtype), b.astype(dtype), dims,
                               preferred_element_type=jnp.float32)


def _masked_scores(q, k, allowed, dtype):
    """[B, H, Nq, Nk] float32 scores, scaled after the product, masked keys at NEG_INF."""
    scale = q.shape[-1] ** -0.5
    kt = jnp.transpose(k, (0, 2, 3, 1))                                  # [B, H, hd, Nk]
    scores = _bdot(_heads_first(q, dtype), kt, (3, 2), dtype) * scale
    return jnp.where(allowed[:, None, :, :], scores, NEG_INF)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, allowed, dtype):
    return _attention_fwd(q, k, v, allowed, dtype)[0]


def _attention_fwd(q, k, v, allowed, dtype):
    scores = _masked_scores(q, k, allowed, dtype)
    top = jnp.max(scores, axis=-1, keepdims=True)
    unnormalized = jnp.exp(scores - top)
    total = jnp.sum(unnormalized, axis=-1, keepdims=True)
    probs = unnormalized / total                                         # = jax.nn.softmax
    out = jnp.transpose(_bdot(probs, _heads_first(v, dtype), (3, 2), dtype), (0, 2, 1, 3))
    # Saved: q, k, v, the output and the row max and sum [B, H, Nq, 1]; the [Nq, Nk]
    # probabilities are recomputed in the backward pass instead of being kept per block. (Not
    # one log-sum-exp: on a row without any valid key, max + log(sum) rounds to the max.)
    return out, (q, k, v, allowed, out, top, total)


def _attention_bwd(dtype, residuals, d_out):
    q, k, v, allowed, out, top, total = residuals
    # As in `_gated_mlp_bwd`: the recomputed probabilities wait for the incoming gradient (also
    # the row max and sum, which XLA would otherwise keep broadcast to [Nq, Nk] from the
    # forward).
    q, k, top, total = after((q, k, top, total), d_out)
    scale = q.shape[-1] ** -0.5
    probs = jnp.exp(_masked_scores(q, k, allowed, dtype) - top) / total   # [B, H, Nq, Nk]
    d_out_h = _heads_first(d_out, dtype)                                 # [B, H, Nq, hd]
    # Products written in the canonical layout (last dim of the left operand against the first
    # non-batch dim of the right one); XLA may fold the small transposes into the products.
    d_v = _bdot(jnp.transpose(probs, (0, 1, 3, 2)), d_out_h, (3, 2), dtype)   # [B, H, Nk, hd]
    d_probs = _bdot(d_out_h, jnp.transpose(v, (0, 2, 3, 1)), (3, 2), dtype)   # [B, H, Nq, Nk]
    # softmax backward: p * (dp - sum(dp * p)), with sum(dp * p) = sum(d_out * out) per row.
    row = jnp.transpose(jnp.sum(d_out * out, axis=-1), (0, 2, 1))[..., None]  # [B, H, Nq, 1]
    d_scores = jnp.where(allowed[:, None, :, :], probs * (d_probs - row), 0.0) * scale
    d_q = _bdot(d_scores, _heads_first(k, dtype), (3, 2), dtype)             # [B, H, Nq, hd]
    d_k = _bdot(jnp.transpose(d_scores, (0, 1, 3, 2)), _heads_first(q, dtype), (3, 2), dtype)
    back = lambda a, like: jnp.transpose(a, (0, 2, 1, 3)).astype(like.dtype)
    return back(d_q, q), back(d_k, k), back(d_v, v), None


_attention.defvjp(_attention_fwd, _attention_bwd)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, dtype) -> jax.Array:
    """Masked softmax attention.

    q [B, Nq, H, hd], k/v [B, Nk, H, hd], allowed bool [B, Nq or 1, Nk] (True = may attend).
    Returns [B, Nq, H, hd] float32. Products in the compute dtype with float32 accumulation;
    scores, softmax and their gradients in float32. Custom VJP: see `_attention_fwd`.
    """
    return _attention(q, k, v, allowed, jnp.dtype(dtype))


class SelfAttention(nnx.Module):
    def __init__(self, dim: int, heads: int, *, qkv_bias: bool, proj_bias: bool, dtype,
                 rngs: nnx.Rngs):
        hd = dim // heads
        self.dtype = dtype
        # Bound of the reference init: xavier with the fan of q, k and v taken separately.
        self.qkv = param(uniform_init(rngs.params(), (dim, 3, heads, hd), xavier_bound(dim, dim)),
                         ("embed", None, "heads", "kv"))
        self.qkv_bias = (param(jnp.zeros((3, heads, hd)), (None, "heads", "kv"))
                         if qkv_bias else None)
        self.proj = param(uniform_init(rngs.params(), (heads, hd, dim), xavier_bound(dim, dim)),
                          ("heads", "kv", "embed"))
        self.proj_bias = param(jnp.zeros((dim,)), ("embed",)) if proj_bias else None

    def project(self, x: jax.Array) -> jax.Array:
        """[B, N, D] -> q, k, v stacked [B, N, 3, H, hd]."""
        qkv = linear(x, self.qkv[...], self.dtype)
        if self.qkv_bias is not None:
            qkv = qkv + self.qkv_bias[...]
        return constrain(qkv, ("batch", "length", None, "heads", "kv"))

    def output(self, out: jax.Array) -> jax.Array:
        """Attention result [B, N, H, hd] -> [B, N, D]."""
        y = linear(out, self.proj[...], self.dtype, contract=2)
        if self.proj_bias is not None:
            y = y + self.proj_bias[...]
        return y

    def __call__(self, x: jax.Array, allowed: jax.Array) -> jax.Array:
        qkv = self.project(x)
        return self.output(attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], allowed, self.dtype))


class CrossAttention(nnx.Module):
    def __init__(self, dim: int, heads: int, *, qkv_bias: bool, proj_bias: bool, dtype,
                 rngs: nnx.Rngs):
        hd = dim // heads
        self.dtype = dtype
        self.q = param(uniform_init(rngs.params(), (dim, heads, hd), xavier_bound(dim, dim)),
                       ("embed", "heads", "kv"))
        self.kv = param(uniform_init(rngs.params(), (dim, 2, heads, hd), xavier_bound(dim, dim)),
                        ("embed", None, "heads", "kv"))
        self.q_bias = param(jnp.zeros((heads, hd)), ("heads", "kv")) if qkv_bias else None
        self.kv_bias = param(jnp.zeros((2, heads, hd)), (None, "heads", "kv")) if qkv_bias else None
        self.proj = param(uniform_init(rngs.params(), (heads, hd, dim), xavier_bound(dim, dim)),
                          ("heads", "kv", "embed"))
        self.proj_bias = param(jnp.zeros((dim,)), ("embed",)) if proj_bias else None

    def project_query(self, x: jax.Array) -> jax.Array:
        """[B, N, D] -> q [B, N, H, hd]."""
        q = linear(x, self.q[...], self.dtype)
        if self.q_bias is not None:
            q = q + self.q_bias[...]
        return constrain(q, ("batch", "length", "heads", "kv"))

    def project_context(self, context: jax.Array) -> jax.Array:
        """[B, Nc, D] -> k, v stacked [B, Nc, 2, H, hd]."""
        kv = linear(context, self.kv[...], self.dtype)
        if self.kv_bias is not None:
            kv = kv + self.kv_bias[...]
        return constrain(kv, ("batch", "length", None, "heads", "kv"))

    output = SelfAttention.output

    def __call__(self, x: jax.Array, context: jax.Array, allowed: jax.Array) -> jax.Array:
        q, kv = self.project_query(x), self.project_context(context)
        return self.output(attend(q, kv[:, :, 0], kv[:, :, 1], allowed, self.dtype))


class Mlp(nnx.Module):
    def __init__(self, dim: int, hidden: int, *, kind: str, use_bias: bool, dtype,
                 rngs: nnx.Rngs):
        self.kind = kind
        self.dtype = dtype
        bound = xavier_bound(dim, hidden)
        self.fc1 = param(uniform_init(rngs.params(), (dim, hidden), bound), ("embed", "mlp"))
        self.fc2 = param(uniform_init(rngs.params(), (hidden, dim), bound), ("mlp", "embed"))
        self.fc3 = (param(uniform_init(rngs.params(), (dim, hidden), bound), ("embed", "mlp"))
                    if kind == "swiglu" else None)
        self.fc1_bias = param(jnp.zeros((hidden,)), ("mlp",)) if use_bias else None
        self.fc2_bias = param(jnp.zeros((dim,)), ("embed",)) if use_bias else None
        self.fc3_bias = (param(jnp.zeros((hidden,)), ("mlp",))
                         if use_bias and kind == "swiglu" else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kind == "swiglu" and self.fc1_bias is None:
            # The released variant: one custom VJP for the whole MLP (see `_gated_mlp_fwd`).
            lead = x.shape[:-1]
            y = _gated_mlp(x.reshape(-1, x.shape[-1]), self.fc1[...], self.fc3[...],
                           self.fc2[...], jnp.dtype(self.dtype))
            return y.reshape(*lead, y.shape[-1])
        h = linear(x, self.fc1[...], self.dtype)
        if self.fc1_bias is not None:
            h = h + self.fc1_bias[...]
        if self.kind == "swiglu":
            g = linear(x, self.fc3[...], self.dtype)
            if self.fc3_bias is not None:
                g = g + self.fc3_bias[...]
            h = _swiglu_hidden(h, g)
        else:
            h = jax.nn.gelu(h, approximate=False)
        h = constrain(h, ("batch", "length", "mlp"))
        y = linear(h, self.fc2[...], self.dtype)
        if self.fc2_bias is not None:
            y = y + self.fc2_bias[...]
        return y


def _block_kwargs(config):
    return dict(qkv_bias=config.qkv_bias, proj_bias=config.proj_bias,
                dtype=jnp.dtype(config.dtype))


class EncoderBlock(nnx.Module):
    """x += attn(norm1 x); x += mlp(norm2 x)."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        d, eps, nb = config.dim, config.norm_eps, config.norm_bias
        self.norm1 = LayerNorm(d, eps=eps, use_bias=nb)
        self.attn = SelfAttention(d, config.num_heads, **_block_kwargs(config), rngs=rngs)
        self.norm2 = LayerNorm(d, eps=eps, use_bias=nb)
        self.mlp = Mlp(d, config.mlp_hidden, kind=config.mlp, use_bias=config.mlp_bias,
                       dtype=jnp.dtype(config.dtype), rngs=rngs)

    def __call__(self, x: jax.Array, allowed: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x), allowed)
        x = x + self.mlp(self.norm2(x))
        return constrain(x, ("batch", "length", "embed"))


class DecoderBlock(nnx.Module):
    """y += self_attn(norm1 y); y += cross_attn(query_norm y, context_norm c); y += mlp(norm2 y)."""

    def __init__(self, config, *, rngs: nnx.Rngs):
        d, eps, nb = config.dim, config.norm_eps, config.norm_bias
        self.norm1 = LayerNorm(d, eps=eps, use_bias=nb)
        self.self_attn = SelfAttention(d, config.num_heads, **_block_kwargs(config), rngs=rngs)
        self.query_norm = LayerNorm(d, eps=eps, use_bias=nb)
        self.context_norm = LayerNorm(d, eps=eps, use_bias=nb)
        self.cross_attn = CrossAttention(d, config.num_heads, **_block_kwargs(config), rngs=rngs)
        self.norm2 = LayerNorm(d, eps=eps, use_bias=nb)
        self.mlp = Mlp(d, config.mlp_hidden, kind=config.mlp, use_bias=config.mlp_bias,
                       dtype=jnp.dtype(config.dtype), rngs=rngs)

    def __call__(self, y: jax.Array, context: jax.Array, self_allowed: jax.Array,
                 cross_allowed: jax.Array) -> jax.Array:
        y = y + self.self_attn(self.norm1(y), self_allowed)
        y = y + self.cross_attn(self.query_norm(y), self.context_norm(context), cross_allowed)
        y = y + self.mlp(self.norm2(y))
        return constrain(y, ("batch", "length", "embed"))

    def context_keys(self, context: jax.Array) -> jax.Array:
        """The cross-attention keys and values of `context` [B, Nc, 2, H, hd]: fixed while a
        sequence is decoded token by token, so computed once (`m4.model.incremental`)."""
        return self.cross_attn.project_context(self.context_norm(context))

    def step(self, y: jax.Array, cache: tuple[jax.Array, jax.Array], index: jax.Array,
             context_kv: jax.Array, cross_allowed: jax.Array):
        """One causal-sequence row through the block with a key/value cache.

        y [B, 1, D] is row `index`; cache (k, v) each [B, R, H, hd] holds rows < index and gets
        this row's. Equal to row `index` of `__call__` over rows 0..R-1 with the causal mask.
        Returns (y [B, 1, D], cache)."""
        qkv = self.self_attn.project(self.norm1(y))                          # [B, 1, 3, H, hd]
        k = jax.lax.dynamic_update_slice_in_dim(cache[0], qkv[:, :, 1], index, axis=1)
        v = jax.lax.dynamic_update_slice_in_dim(cache[1], qkv[:, :, 2], index, axis=1)
        upto = (jnp.arange(k.shape[1]) <= index)[None, None, :]              # [1, 1, R]
        y = y + self.self_attn.output(attend(qkv[:, :, 0], k, v, upto, self.self_attn.dtype))
        q = self.cross_attn.project_query(self.query_norm(y))
        y = y + self.cross_attn.output(attend(q, context_kv[:, :, 0], context_kv[:, :, 1],
                                              cross_allowed, self.cross_attn.dtype))
        y = y + self.mlp(self.norm2(y))
        return y, (k, v)


def stacked(make_block, depth: int, rngs: nnx.Rngs):
    """`depth` blocks whose parameters are stacked on a leading 'layers' axis."""

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(r):
        return make_block(r)

    return make(rngs)


def unstacked(blocks) -> list:
    """The blocks of a stack as separate modules (under jit the per-layer slices are free views
    of the stacked weights), for loops that need per-layer state such as a key/value cache."""
    graphdef, state = nnx.split(blocks)
    depth = jax.tree.leaves(state)[0].shape[0]
    return [nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], state)) for i in range(depth)]


def run_stacked(blocks, x: jax.Array, consts: tuple, *, scan: bool, remat: str) -> jax.Array:
    """Applies stacked blocks in order: a lax.scan over the 'layers' axis (unrolled unless
    `scan`), each block optionally rematerialised."""
    graphdef, state = nnx.split(blocks)
    depth = jax.tree.leaves(state)[0].shape[0]

    def body(carry, layer_state):
        block = nnx.merge(graphdef, layer_state)
        return block(carry, *consts), None

    if remat == "full":
        body = jax.checkpoint(body, prevent_cse=False)
    elif remat == "dots":
        body = jax.checkpoint(body, prevent_cse=False,
                              policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    x, _ = jax.lax.scan(body, x, state, unroll=1 if scan else depth)
    return x
