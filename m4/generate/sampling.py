"""Token sampling inside jit: logit filters, per-example draws, MaskGIT selection, guidance.

Everything has static shapes; the knobs that change between calls (temperature, top_p, guidance
weights, how many tokens to commit) are traced values, so they never cause a recompile. top_k is
static (it sizes `lax.top_k`).

Randomness: each example has its own key and every draw is indexed by *position*, not by slot,
so an example's result depends only on its key and inputs, never on its batch neighbours or on how
slots are packed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from m4.generate.schedules import GREEDY_TEMPERATURE


def filter_logits(logits: jax.Array, top_k: int, top_p: jax.Array | None) -> jax.Array:
    """Top-k then top-p (nucleus) filtering on raw logits, as the reference: removed entries are
    -inf. top_p keeps the most likely tokens until their probability exceeds top_p (the token that
    crosses it included); top_p <= 0 keeps everything. [..., V] -> [..., V]."""
    neg = jnp.asarray(-jnp.inf, logits.dtype)
    if top_k > 0:
        k = min(int(top_k), logits.shape[-1])
        kth = jax.lax.top_k(logits, k)[0][..., -1:]                      # [..., 1]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p is not None:
        probs = jax.nn.softmax(logits, axis=-1)
        keep = probs >= nucleus_threshold(probs, top_p)
        logits = jnp.where(keep, logits, neg)
    return logits


def nucleus_threshold(probs: jax.Array, top_p: jax.Array) -> jax.Array:
    """The smallest probability the nucleus keeps. [..., V] -> [..., 1].

    The reference sorts the vocabulary; a sort of every row is slow on CPU, so this bisects on the
    bit pattern of the threshold instead (non-negative floats order like their int32 bits): the
    smallest t with mass(p > t) <= top_p, found exactly in 31 masked sums. Keeping p >= t keeps
    the sorted prefix whose mass before its last token is <= top_p, i.e. the reference's set."""
    def mass_above(bits):
        t = jax.lax.bitcast_convert_type(bits, jnp.float32)[..., None]
        return jnp.sum(jnp.where(probs > t, probs, 0.0), axis=-1)

    hi = jax.lax.bitcast_convert_type(jnp.max(probs, axis=-1), jnp.int32)   # mass above = 0
    lo = jnp.zeros_like(hi)

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        fits = mass_above(mid) <= top_p
        return jnp.where(fits, lo, mid + 1), jnp.where(fits, mid, hi)

    lo, hi = jax.lax.fori_loop(0, 31, halve, (lo, hi))
    threshold = jax.lax.bitcast_convert_type(hi, jnp.float32)[..., None]
    # top_p <= 0 (the reference's "off") or >= 1 keeps every token.
    return jnp.where((top_p > 0) & (top_p < 1), threshold, 0.0)


# Rows of the vocabulary per block of the two-level inverse CDF.
CDF_BLOCK = 128


def inverse_cdf(probs: jax.Array, uniform: jax.Array) -> jax.Array:
    """The first id whose cumulative probability reaches u * total, never an id of probability 0.

    Two levels (block masses, then one block) instead of a cumsum over the whole vocabulary,
    which XLA runs slowly on CPU. probs [..., V] >= 0 (need not sum to 1), uniform [...] in
    (0, 1] -> ids [...]."""
    v = probs.shape[-1]
    blocks = -(-v // CDF_BLOCK)
    padded = jnp.pad(probs, [(0, 0)] * (probs.ndim - 1) + [(0, blocks * CDF_BLOCK - v)])
    padded = padded.reshape(probs.shape[:-1] + (blocks, CDF_BLOCK))
    block_cdf = jnp.cumsum(padded.sum(-1), axis=-1)                       # [..., nb]
    goal = uniform * block_cdf[..., -1]
    block = jnp.minimum(jnp.sum(block_cdf < goal[..., None], axis=-1), blocks - 1)
    before = jnp.where(block > 0, jnp.take_along_axis(
        block_cdf, jnp.maximum(block - 1, 0)[..., None], -1)[..., 0], 0.0)
    inner = jnp.take_along_axis(padded, block[..., None, None], -2)[..., 0, :]   # [..., blk]
    inner_cdf = jnp.cumsum(inner, axis=-1)
    pick = jnp.sum(inner_cdf < (goal - before)[..., None], axis=-1)
    # Rounding can overshoot the block's last token of non-zero probability: stay on it.
    last = CDF_BLOCK - 1 - jnp.argmax(jnp.flip(inner > 0, -1), axis=-1)
    return (block * CDF_BLOCK + jnp.minimum(pick, last)).astype(jnp.int32)


def sample(logits: jax.Array, temperature: jax.Array, uniform: jax.Array, top_k: int,
           top_p: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """One token per row and its confidence.

    logits [..., V] float32, temperature scalar, uniform [...] in (0, 1].
    Returns (ids [...] int32, confidence [...] float32): with |temperature| below
    GREEDY_TEMPERATURE the argmax and its probability at temperature 1 (the reference gives every
    greedy token confidence 1, which reduces MaskGIT to index order; the probability is a real
    ranking); otherwise an inverse-CDF draw from softmax(filter(logits) / t) and the probability
    the draw had. One uniform per row instead of a Gumbel vector per row keeps the cost of the
    randomness independent of the vocabulary size.
    """
    logits = logits.astype(jnp.float32)

    def greedy(_):
        ids = jnp.argmax(logits, axis=-1)
        top = jnp.take_along_axis(logits, ids[..., None], -1)
        confidence = 1.0 / jnp.sum(jnp.exp(logits - top), axis=-1)
        return ids.astype(jnp.int32), confidence

    def draw(_):
        filtered = filter_logits(logits, top_k, top_p)
        # Shift before dividing: the best token is exactly exp(0) = 1 even for tiny
        # temperatures, where softmax(x / t) can overflow into 0 / 0.
        weights = jnp.exp((filtered - jnp.max(filtered, axis=-1, keepdims=True)) / temperature)
        # The draw needs no normalised copy of the [..., V] weights (a pass over the logits'
        # size less): only the drawn token's probability is divided by the total.
        ids = inverse_cdf(weights, uniform)
        picked = jnp.take_along_axis(weights, ids[..., None], -1)[..., 0]
        return ids, picked / jnp.sum(weights, axis=-1)

    return jax.lax.cond(jnp.abs(temperature) < GREEDY_TEMPERATURE, greedy, draw, None)


def example_uniforms(keys: jax.Array, step: jax.Array | int, length: int) -> jax.Array:
    """One uniform in (0, 1] per (example, position) for draw number `step`.
    keys [B] typed PRNG keys -> [B, length] float32."""
    def one(key):
        return 1.0 - jax.random.uniform(jax.random.fold_in(key, step), (length,), jnp.float32)
    return jax.vmap(one)(keys)


def top_confidence(confidence: jax.Array, candidate: jax.Array, count: jax.Array | int
                   ) -> jax.Array:
    """MaskGIT selection: per example, the `count` candidates of highest confidence.

    Ranks come from a stable sort (equal confidences: lower slot first), so exactly
    min(count, candidates) slots are chosen even with ties. [B, N] -> [B, N] bool."""
    # A NaN confidence must not push a candidate behind the non-candidates.
    score = jnp.where(candidate, jnp.nan_to_num(confidence, nan=0.0), -jnp.inf)
    order = jnp.argsort(-score, axis=-1, stable=True)                    # [B, N] best first
    rank = jnp.argsort(order, axis=-1, stable=True)                      # [B, N] rank of each slot
    return (rank < count) & candidate


def combine_guidance(logits: jax.Array, coefficients: jax.Array) -> jax.Array:
    """Guidance as a weighted sum of the passes' logits.

    logits [P, B, ...] (pass 0 unconditional, pass i condition group i), coefficients [P]
    (1 - sum w, w_1, ..., w_n): l_u + sum_i w_i (l_i - l_u)."""
    return jnp.einsum("p,p...->...", coefficients.astype(logits.dtype), logits)


def guidance_coefficients(weights) -> list[float]:
    """Pass coefficients [1 - sum w, w_1, ..., w_n] of guidance weights [w_1, ..., w_n]."""
    weights = [float(w) for w in weights]
    return [1.0 - sum(weights)] + weights
