"""Quantizers: latent vectors -> discrete codes -> vectors again.

Two kinds, chosen in a tokenizer's config (`quantizer.kind`):

- `VectorQuantizer` ("vq"): the reference's cosine-similarity codebook. Latents and codes are
  l2-normalised and the code is the argmax of their dot product. The codebook is *not* trained by
  gradients: it follows an exponential moving average (EMA) of the latents assigned to each code.
  Codes whose EMA usage falls below a threshold ("dead" codes) are restarted from random latents of
  the current batch, which keeps the whole codebook in use. A commitment loss pulls the encoder
  towards its codes; the straight-through estimator carries the decoder's gradient to the encoder.
- `FSQ` ("fsq"): finite scalar quantization (Mentzer et al. 2023). Each latent channel is bounded
  and rounded to one of `levels[i]` values; the code is the mixed-radix number of the rounded
  channels. No codebook, no auxiliary loss, no collapse by construction.

Both return a `QuantizerOutput` and expose `codebook_size`, `input_dim`, `encode` (latents ->
indices) and `lookup` (indices -> quantized vectors, what the decoder consumes).

The EMA statistics are `CodebookStat` variables, a Variable type of their own, so the optimizer
(which only sees `nnx.Param`) leaves them alone and they are checkpointed with the model.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class CodebookStat(nnx.Variable):
    """Non-trainable quantizer state (EMA codebook statistics)."""


class QuantizerOutput(NamedTuple):
    quantized: jax.Array  # [..., D] float, straight-through in training
    indices: jax.Array    # [...] int32
    loss: jax.Array       # [] float, auxiliary loss (commitment); 0 for FSQ
    metrics: dict         # {name: [] float} batch statistics for logging


def _l2norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def usage_metrics(indices: jax.Array, codebook_size: int) -> dict:
    """Fraction of codes used and perplexity (exp of the code entropy) over `indices`."""
    counts = jnp.bincount(indices.reshape(-1), length=codebook_size).astype(jnp.float32)
    probs = counts / jnp.maximum(counts.sum(), 1.0)
    entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.maximum(probs, 1e-12)), 0.0))
    return {"usage": jnp.mean(counts > 0), "perplexity": jnp.exp(entropy)}


class VectorQuantizer(nnx.Module):
    """Cosine-similarity codebook with EMA updates and dead-code restarts.

    Args:
      dim: latent (and code) dimension.
      codebook_size: number of codes K.
      decay: EMA decay of the code statistics (reference: 0.99).
      commitment_weight: weight of ||z - sg(code)||^2 (reference: 1.0).
      dead_code_coef: a code is dead when its EMA count < (latents per batch / K) / coef
        (reference: 32). The threshold scales with the batch, so it needs no retuning.
      eps: Laplace smoothing of the counts.
    """

    def __init__(self, dim: int, codebook_size: int, *, decay: float = 0.99,
                 commitment_weight: float = 1.0, dead_code_coef: float = 32.0,
                 eps: float = 1e-5, rngs: nnx.Rngs):
        if codebook_size < 2:
            raise ValueError(f"quantizer.codebook_size must be >= 2, got {codebook_size}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.input_dim = dim
        self.decay = decay
        self.commitment_weight = commitment_weight
        self.dead_code_coef = dead_code_coef
        self.eps = eps
        codes = _l2norm(jax.random.normal(rngs.params(), (codebook_size, dim), jnp.float32))
        self.codebook = CodebookStat(codes)                        # [K, D] unit rows
        self.embed_sum = CodebookStat(jnp.array(codes, copy=True))  # [K, D] EMA of assigned sums
        # Counts start at zero: every code is "dead" on the first training step and is restarted
        # from a latent of that batch, a data-dependent initialisation for free.
        self.cluster_size = CodebookStat(jnp.zeros((codebook_size,), jnp.float32))  # [K]

    def encode(self, z: jax.Array) -> jax.Array:
        """[..., D] latents -> [...] int32 code indices."""
        sims = _l2norm(z) @ self.codebook.get_value().T                  # [..., K]
        return jnp.argmax(sims, axis=-1).astype(jnp.int32)

    def lookup(self, indices: jax.Array) -> jax.Array:
        """[...] int32 -> [..., D] code vectors."""
        return jnp.take(self.codebook.get_value(), indices, axis=0)

    def __call__(self, z: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> QuantizerOutput:
        z_norm = _l2norm(z)                                         # [..., D]
        indices = self.encode(z)                                    # [...]
        codes = self.lookup(indices)                                # [..., D]
        commit = jnp.mean(jnp.sum((z_norm - jax.lax.stop_gradient(codes)) ** 2, axis=-1))
        metrics = usage_metrics(indices, self.codebook_size)
        if train:
            if rng is None:
                raise ValueError("VectorQuantizer: train=True needs `rng` for dead-code restarts")
            metrics["dead_codes"] = self._ema_update(
                jax.lax.stop_gradient(z_norm.reshape(-1, self.dim)), indices.reshape(-1), rng)
        # Straight-through: forward uses the code, backward passes the gradient to z_norm.
        quantized = z_norm + jax.lax.stop_gradient(codes - z_norm)
        metrics["commitment"] = commit
        return QuantizerOutput(quantized, indices, self.commitment_weight * commit, metrics)

    def _ema_update(self, latents: jax.Array, indices: jax.Array, rng: jax.Array) -> jax.Array:
        """EMA of counts and sums per code, then restart dead codes. Returns the dead count."""
        n, k = latents.shape[0], self.codebook_size
        onehot = jax.nn.one_hot(indices, k, dtype=jnp.float32)          # [N, K]
        counts = onehot.sum(0)                                           # [K]
        sums = onehot.T @ latents                                        # [K, D]
        cluster_size = self.decay * self.cluster_size.get_value() + (1 - self.decay) * counts
        embed_sum = self.decay * self.embed_sum.get_value() + (1 - self.decay) * sums
        # Laplace smoothing keeps the division finite for codes that were never used.
        total = cluster_size.sum()
        smoothed = (cluster_size + self.eps) / (total + k * self.eps) * total
        codebook = _l2norm(embed_sum / jnp.maximum(smoothed, self.eps)[:, None])

        threshold = (n / k) / self.dead_code_coef
        dead = cluster_size < threshold                                  # [K]
        samples = latents[jax.random.randint(rng, (k,), 0, n)]           # [K, D] batch_random
        codebook = jnp.where(dead[:, None], samples, codebook)
        embed_sum = jnp.where(dead[:, None], samples * threshold, embed_sum)
        cluster_size = jnp.where(dead, threshold, cluster_size)

        self.codebook.set_value(codebook)
        self.embed_sum.set_value(embed_sum)
        self.cluster_size.set_value(cluster_size)
        return dead.sum().astype(jnp.float32)


class FSQ(nnx.Module):
    """Finite scalar quantization with `levels` values per channel.

    codebook_size = prod(levels); the latent dimension is len(levels). Quantized values lie in
    [-1, 1]. Odd levels are symmetric around 0; even levels are offset by half a step, so both
    round to exactly `levels[i]` distinct values.
    """

    def __init__(self, levels: Sequence[int]):
        levels = tuple(int(l) for l in levels)
        if not levels or min(levels) < 2:
            raise ValueError(f"quantizer.levels must be a non-empty list of ints >= 2, "
                             f"got {list(levels)}")
        self.levels = levels
        self.input_dim = len(levels)
        self.codebook_size = math.prod(levels)
        # Mixed-radix weights of the digits (Python ints: constants folded into the graph).
        self.basis = tuple(math.prod(levels[:i]) for i in range(len(levels)))

    @property
    def _levels(self) -> jax.Array:
        return jnp.asarray(self.levels, jnp.float32)

    @property
    def _basis(self) -> jax.Array:
        return jnp.asarray(self.basis, jnp.int32)

    def _bound(self, z: jax.Array) -> jax.Array:
        """Squash each channel into (-L/2, L/2) so that rounding yields exactly L values."""
        eps = 1e-3
        half = (self._levels - 1) * (1 + eps) / 2
        offset = jnp.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = jnp.arctanh(offset / half)
        return jnp.tanh(z + shift) * half - offset

    def _round(self, z: jax.Array) -> jax.Array:
        """Bounded, rounded and rescaled to [-1, 1], with a straight-through gradient."""
        bounded = self._bound(z)
        rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
        half_width = jnp.floor(self._levels / 2)
        return rounded / half_width

    def _to_indices(self, q: jax.Array) -> jax.Array:
        half_width = jnp.floor(self._levels / 2)
        digits = jnp.round(q * half_width + half_width).astype(jnp.int32)   # 0..L-1
        return jnp.sum(digits * self._basis, axis=-1).astype(jnp.int32)

    def encode(self, z: jax.Array) -> jax.Array:
        return self._to_indices(self._round(z))

    def lookup(self, indices: jax.Array) -> jax.Array:
        levels = jnp.asarray(self.levels, jnp.int32)
        digits = (indices[..., None] // self._basis) % levels               # [..., d]
        half_width = jnp.floor(self._levels / 2)
        return (digits.astype(jnp.float32) - half_width) / half_width

    def __call__(self, z: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> QuantizerOutput:
        del train, rng  # FSQ has no state to update
        q = self._round(z)
        indices = self._to_indices(q)
        metrics = usage_metrics(indices, self.codebook_size)
        return QuantizerOutput(q, indices, jnp.zeros((), jnp.float32), metrics)


def build_quantizer(config, *, rngs: nnx.Rngs) -> VectorQuantizer | FSQ:
    """From a config block: kind ('vq'|'fsq'), codebook_size, latent_dim, levels, ..."""
    kind = config.kind
    if kind == "vq":
        return VectorQuantizer(
            config.latent_dim, config.codebook_size,
            decay=config.get("decay", 0.99),
            commitment_weight=config.get("commitment_weight", 1.0),
            dead_code_coef=config.get("dead_code_coef", 32.0),
            rngs=rngs)
    if kind == "fsq":
        return FSQ(config.levels)
    raise ValueError(f"quantizer.kind must be 'vq' or 'fsq', got {kind!r}")
