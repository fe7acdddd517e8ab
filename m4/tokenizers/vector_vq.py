"""Tokenizers for small vectors and sets of them: here, the joints of each figure (poses).

Each figure's joints (x, y, visible) go through a residual MLP to `tokens_per_figure` latents,
which are quantized independently (one shared codebook); the decoder MLP maps the quantized
latents back to joint coordinates and visibility logits.

Token layout of one example: [max_figures * tokens_per_figure] int32, figure f owning
positions [f * T, (f + 1) * T). Id 0 is reserved: ABSENT_ID, "no figure in this slot" (all T
tokens of an absent figure are 0); code c of the quantizer is id c + 1, so
vocab_size = codebook_size + 1. A figure slot is absent when its raw row is all zeros (the
scenes contract: rows >= num_figures are zero; a real figure always has joints inside the image).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from m4.tokenizers.quantizers import QuantizerOutput, build_quantizer

ABSENT_ID = 0


class MLPBlock(nnx.Module):
    """Pre-LayerNorm residual MLP block (expansion 2)."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.fc1 = nnx.Linear(width, 2 * width, rngs=rngs)
        self.fc2 = nnx.Linear(2 * width, width, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.fc2(nnx.gelu(self.fc1(self.norm(x))))


class MLP(nnx.Module):
    def __init__(self, in_dim: int, width: int, depth: int, out_dim: int, *, rngs: nnx.Rngs):
        self.proj_in = nnx.Linear(in_dim, width, rngs=rngs)
        self.blocks = nnx.List([MLPBlock(width, rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.proj_out = nnx.Linear(width, out_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.proj_in(x)
        for block in self.blocks:
            h = block(h)
        return self.proj_out(self.norm(h))


def figure_present(raw_poses: jax.Array) -> jax.Array:
    """[..., F, J, 3] raw poses -> [..., F] bool: the slot holds a figure (row not all zero)."""
    return jnp.any(raw_poses != 0, axis=(-2, -1))


class PoseVQ(nnx.Module):
    """Per-figure MLP autoencoder with a quantized bottleneck of `tokens_per_figure` codes."""

    def __init__(self, model, quantizer, *, num_joints: int, rngs: nnx.Rngs):
        self.num_joints = num_joints
        self.tokens_per_figure = model.tokens_per_figure
        self.quantizer = build_quantizer(quantizer, rngs=rngs)
        dim = self.quantizer.input_dim
        self.encoder = MLP(3 * num_joints, model.width, model.depth,
                           self.tokens_per_figure * dim, rngs=rngs)
        self.decoder = MLP(self.tokens_per_figure * dim, model.width, model.depth,
                           3 * num_joints, rngs=rngs)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def _latents(self, x: jax.Array) -> jax.Array:
        """[..., J, 3] normalised joints -> [..., T, D]."""
        z = self.encoder(x.reshape(*x.shape[:-2], 3 * self.num_joints))
        return z.reshape(*x.shape[:-2], self.tokens_per_figure, self.quantizer.input_dim)

    def _decode_latents(self, q: jax.Array) -> jax.Array:
        """[..., T, D] -> [..., J, 3]: (x, y) normalised coordinates and a visibility logit."""
        out = self.decoder(q.reshape(*q.shape[:-2], -1))
        return out.reshape(*q.shape[:-2], self.num_joints, 3)

    def __call__(self, x: jax.Array, *, train: bool = False,
                 rng: jax.Array | None = None) -> tuple[jax.Array, QuantizerOutput]:
        """Normalised figures [N, J, 3] (present ones only) -> (output [N, J, 3], quantizer)."""
        qout = self.quantizer(self._latents(x), train=train, rng=rng)
        return self._decode_latents(qout.quantized), qout

    def encode(self, x: jax.Array, present: jax.Array) -> jax.Array:
        """[B, F, J, 3] normalised, [B, F] bool -> [B, F * T] int32 ids (ABSENT_ID if absent)."""
        codes = self.quantizer.encode(self._latents(x)) + 1            # [B, F, T]
        codes = jnp.where(present[..., None], codes, ABSENT_ID)
        return codes.reshape(codes.shape[0], -1).astype(jnp.int32)

    def decode(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, F * T] ids -> (output [B, F, J, 3], present [B, F] bool).

        A figure is present when its first token is not ABSENT_ID; codes are read modulo the
        codebook so that any id sequence decodes to something."""
        b = tokens.shape[0]
        ids = tokens.reshape(b, -1, self.tokens_per_figure)             # [B, F, T]
        present = ids[..., 0] != ABSENT_ID
        codes = jnp.clip(ids - 1, 0, self.codebook_size - 1)
        return self._decode_latents(self.quantizer.lookup(codes)), present


def pose_loss(output: jax.Array, target: jax.Array, *, visibility_weight: float = 0.1,
              beta: float = 0.02) -> tuple[jax.Array, dict]:
    """Smooth-L1 on normalised coordinates (all joints: occluded ones keep their position) plus
    binary cross-entropy on visibility. Inputs [N, J, 3]."""
    diff = jnp.abs(output[..., :2] - target[..., :2])
    coord = jnp.mean(jnp.where(diff < beta, 0.5 * diff ** 2 / beta, diff - 0.5 * beta))
    logits, visible = output[..., 2], target[..., 2]
    bce = jnp.mean(jnp.maximum(logits, 0) - logits * visible + jnp.log1p(jnp.exp(-jnp.abs(logits))))
    return coord + visibility_weight * bce, {"coord_loss": coord, "visibility_bce": bce}
