"""Input and output adapters: from batch slots to vectors, by modality kind.

One module per side of the model. Each slot carries (modality index, position row, id or
continuous vector); the adapter returns the content vector `x` and the embedding `emb`
(position + modality), as the reference adapters return `x` and `emb`:

- token kinds (image, sequence, vectors) in the encoder: x = token table[global id].
- pixels / embeddings in the encoder: x = a per-modality linear projection of `enc_pixels`.
- image / vectors in the decoder: x = the learned mask token.
- sequences in the decoder: x = decoder token table[global id of the previous token] (teacher
  forcing is done by the batch: `dec_ids_in` holds the previous target token).

Token tables are indexed by the global vocabulary (m4.modalities.Vocabulary): one [V, D] table per
side instead of the reference's per-modality tables (same numbers, concatenated), which shards
over 'vocab'. Position tables of all modalities are concatenated too: fixed sin-cos rows in a
`PositionTable` variable (not trained), learned rows in a Param.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m4.modalities import ModalitySpec
from m4.model.layers import (
    after, fixed, linear, normal_init, param, sincos_1d, sincos_2d, uniform_init,
    xavier_bound,
)
from m4.parallel import constrain


def position_rows(spec: ModalitySpec) -> int:
    return spec.length if spec.kind in ("image", "pixels") else spec.num_positions


def sincos_table(spec: ModalitySpec, dim: int) -> np.ndarray:
    if spec.kind in ("image", "pixels"):
        return sincos_2d(spec.grid[0], spec.grid[1], dim)
    return sincos_1d(spec.num_positions, dim)


class PositionTables(nnx.Module):
    """The position tables of the modalities of one side, concatenated: rows of modality m are
    `base[m] + [0, rows[m])` of concat(fixed, learned)."""

    def __init__(self, specs: tuple[ModalitySpec, ...], on_side: tuple[bool, ...], dim: int,
                 rngs: nnx.Rngs):
        fixed_parts, learned_rows = [], 0
        fixed_rows = 0
        layout = []   # (kind of table, offset inside it, rows)
        for spec, here in zip(specs, on_side):
            if not here:
                layout.append(None)
                continue
            rows = position_rows(spec)
            if spec.positions == "sincos":
                fixed_parts.append(sincos_table(spec, dim))
                layout.append(("fixed", fixed_rows, rows))
                fixed_rows += rows
            else:
                layout.append(("learned", learned_rows, rows))
                learned_rows += rows
        self.fixed = (fixed(np.concatenate(fixed_parts), (None, "embed"))
                      if fixed_parts else None)
        self.learned = (param(normal_init(rngs.params(), (learned_rows, dim)), (None, "embed"))
                        if learned_rows else None)
        base, nrows = [], []
        for entry in layout:
            if entry is None:
                base.append(0)
                nrows.append(1)
            else:
                kind, off, rows = entry
                base.append(off if kind == "fixed" else fixed_rows + off)
                nrows.append(rows)
        self.base = tuple(base)     # static: python tuples, never traced
        self.rows = tuple(nrows)
        self.layout = tuple(layout)

    def table(self) -> jax.Array:
        parts = [t[...] for t in (self.fixed, self.learned) if t is not None]
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)

    def lookup(self, mod: jax.Array, pos: jax.Array) -> jax.Array:
        """[B, N] modality index and position -> [B, N, D]. Positions past a modality's table
        clamp to its last row (a batch validator rejects them on the host)."""
        base = jnp.asarray(self.base, jnp.int32)[mod]
        rows = jnp.asarray(self.rows, jnp.int32)[mod]
        index = base + jnp.clip(pos, 0, rows - 1)
        return jnp.take(self.table(), index, axis=0)


@jax.custom_vjp
def lookup_rows(table: jax.Array, index: jax.Array) -> jax.Array:
    """table [V, D], index [...] int32 in [0, V) -> [..., D] (= jnp.take(table, index, axis=0)).

    The gradient is the usual scatter-add of the rows' gradients into a zero [V, D] table, with
    one difference: the zero table is made from the incoming gradient (`after`). Plain `take`
    uses one zero constant for every [V, D] gradient of the step (encoder and decoder tables,
    the output projection's), which XLA then copies once per table; made apart, each table's
    zeros are written once, in place, and only when its backward pass runs."""
    return jnp.take(table, index, axis=0)


def _lookup_rows_fwd(table, index):
    return jnp.take(table, index, axis=0), (index, jnp.zeros((0,) + table.shape, table.dtype))


def add_rows(table: jax.Array, index: jax.Array, rows: jax.Array) -> jax.Array:
    """table [V, D] with rows [..., D] added at index [...] (rows of equal ids both added): the
    gradient of a lookup, in the table's dtype."""
    return table.at[index.reshape(-1)].add(rows.reshape(-1, rows.shape[-1]).astype(table.dtype))


def _lookup_rows_bwd(residuals, g):
    index, like = residuals                                           # like: [0, V, D] (shape)
    zeros = after(jnp.zeros(like.shape[1:], jnp.float32), g)
    return add_rows(zeros, index, g).astype(like.dtype), None


lookup_rows.defvjp(_lookup_rows_fwd, _lookup_rows_bwd)


# Batch keys of the zero row offsets `embed_rows` adds (m4.train.sparse_rows puts them in the
# training step's batch to read the looked-up rows' gradients off them).
ROW_DELTA_KEYS = ("enc_row_delta", "dec_row_delta")


def embed_rows(table: jax.Array, index: jax.Array, delta: jax.Array | None) -> jax.Array:
    """The table's rows at `index`. With `delta` (zeros shaped like the result) the table gets
    no gradient here and the rows' gradient is delta's: the training step then updates the table
    from those rows alone (m4.train.sparse_rows), never forming a dense [V, D] gradient."""
    if delta is None:
        return lookup_rows(table, index)
    return jnp.take(jax.lax.stop_gradient(table), index, axis=0) + delta.astype(table.dtype)


def _token_index(offsets: tuple, sizes: tuple, mod: jax.Array, ids: jax.Array) -> jax.Array:
    offsets = jnp.asarray(offsets, jnp.int32)[mod]
    sizes = jnp.asarray(sizes, jnp.int32)[mod]
    return offsets + jnp.clip(ids, 0, jnp.maximum(sizes - 1, 0))


class ContinuousProjection(nnx.Module):
    """Linear map of continuous slots (pixel patches: no bias; embedding vectors: bias)."""

    def __init__(self, spec: ModalitySpec, dim: int, dtype, rngs: nnx.Rngs):
        self.in_dim = spec.patch_dim
        self.dtype = dtype
        self.kernel = param(uniform_init(rngs.params(), (spec.patch_dim, dim),
                                         xavier_bound(spec.patch_dim, dim)), (None, "embed"))
        self.bias = param(jnp.zeros((dim,)), ("embed",)) if spec.kind == "embeddings" else None

    def __call__(self, values: jax.Array) -> jax.Array:
        y = linear(values[..., :self.in_dim], self.kernel[...], self.dtype)
        if self.bias is not None:
            y = y + self.bias[...]
        return y


class EncoderEmbedding(nnx.Module):
    def __init__(self, config, rngs: nnx.Rngs):
        specs, dim = config.modalities, config.dim
        vocab = config.vocab
        # Static attributes are python tuples (hashable, never traced).
        self.vocab_offsets = tuple(map(int, vocab.offsets))
        self.vocab_sizes = tuple(map(int, vocab.sizes))
        self.dtype = jnp.dtype(config.dtype)
        on_side = tuple(s.input for s in specs)
        self.positions = PositionTables(specs, on_side, dim, rngs)
        self.token_emb = (param(normal_init(rngs.params(), (vocab.size, dim),
                                            config.input_token_init_std),
                                ("vocab", "embed")) if vocab.size else None)
        self.is_token = tuple(s.is_token for s in specs)
        self.continuous = tuple(i for i, s in enumerate(specs) if s.input and s.is_continuous)
        self.proj = nnx.List([ContinuousProjection(specs[i], dim, self.dtype, rngs)
                              for i in self.continuous])

    def row_index(self, batch: dict) -> jax.Array:
        """[B, N] row of the token table each encoder slot reads."""
        return _token_index(self.vocab_offsets, self.vocab_sizes, batch["enc_mod"],
                            batch["enc_ids"])

    def __call__(self, batch: dict, mod_emb: jax.Array) -> tuple[jax.Array, jax.Array]:
        mod, valid = batch["enc_mod"], batch["enc_valid"]                  # [B, N]
        emb = self.positions.lookup(mod, batch["enc_pos"]) + mod_emb[mod]   # [B, N, D]
        x = jnp.zeros_like(emb)
        if self.token_emb is not None:
            tokens = embed_rows(self.token_emb[...], self.row_index(batch),
                                batch.get(ROW_DELTA_KEYS[0]))
            x = jnp.where(jnp.asarray(self.is_token)[mod][..., None], tokens, x)
        for i, proj in zip(self.continuous, self.proj):
            x = jnp.where((mod == i)[..., None], proj(batch["enc_pixels"]), x)
        keep = valid[..., None]
        x = constrain(jnp.where(keep, x, 0.0), ("batch", "length", "embed"))
        emb = constrain(jnp.where(keep, emb, 0.0), ("batch", "length", "embed"))
        return x, emb


class DecoderEmbedding(nnx.Module):
    def __init__(self, config, rngs: nnx.Rngs):
        specs, dim = config.modalities, config.dim
        vocab = config.vocab
        self.vocab_offsets = tuple(map(int, vocab.offsets))
        self.vocab_sizes = tuple(map(int, vocab.sizes))
        self.tied = config.tie_logits
        on_side = tuple(s.target for s in specs)
        self.positions = PositionTables(specs, on_side, dim, rngs)
        self.mask_token = param(normal_init(rngs.params(), (dim,)), ("embed",))
        self.is_sequence = tuple(s.kind == "sequence" for s in specs)

        def xavier_rows():
            # The reference's to_logits is an nn.Linear(dim, V_m): xavier bound per modality.
            parts = [uniform_init(rngs.params(), (int(n), dim), xavier_bound(dim, int(n)))
                     for n in vocab.sizes if n]
            return jnp.concatenate(parts, axis=0)

        # Tied: the reference initialises the shared weight last as the Linear (xavier).
        table = xavier_rows() if self.tied else normal_init(rngs.params(), (vocab.size, dim))
        self.token_emb = param(table, ("vocab", "embed"))
        self.to_logits = None if self.tied else param(xavier_rows(), ("vocab", "embed"))

    def logits_table(self) -> jax.Array:
        """[V, D] output projection over the global vocabulary."""
        return (self.token_emb if self.tied else self.to_logits)[...]

    def row_index(self, batch: dict) -> jax.Array:
        """[B, N] row of the token table each decoder slot reads (teacher forcing)."""
        return _token_index(self.vocab_offsets, self.vocab_sizes, batch["dec_mod"],
                            batch["dec_ids_in"])

    def __call__(self, batch: dict, mod_emb: jax.Array) -> tuple[jax.Array, jax.Array]:
        mod = batch["dec_mod"]
        used = batch["dec_valid"] | batch["dec_attn_valid"]
        emb = self.positions.lookup(mod, batch["dec_pos"]) + mod_emb[mod]
        tokens = embed_rows(self.token_emb[...], self.row_index(batch),   # teacher forcing
                            batch.get(ROW_DELTA_KEYS[1]))
        is_seq = jnp.asarray(self.is_sequence)[mod][..., None]
        x = jnp.where(is_seq, tokens, self.mask_token[...])
        keep = used[..., None]
        x = constrain(jnp.where(keep, x, 0.0), ("batch", "length", "embed"))
        emb = constrain(jnp.where(keep, emb, 0.0), ("batch", "length", "embed"))
        return x, emb


def patchify(images: np.ndarray | jax.Array, patch: int, channels_first: bool = False):
    """Images -> patch vectors in the reference's (ph, pw, c) order, row-major over patches.

    [B, H, W, C] (or [B, C, H, W] with channels_first) -> [B, (H/p)*(W/p), p*p*C].
    """
    xp = jnp if isinstance(images, jax.Array) else np
    if channels_first:
        images = xp.transpose(images, (0, 2, 3, 1))
    b, h, w, c = images.shape
    if h % patch or w % patch:
        raise ValueError(f"patchify: image size {h}x{w} is not divisible by patch {patch}")
    x = images.reshape(b, h // patch, patch, w // patch, patch, c)
    x = xp.transpose(x, (0, 1, 3, 2, 4, 5))
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)
