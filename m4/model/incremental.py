"""Token-by-token decoding of a causal sequence target with a key/value cache.

The decoder of a sequence target (caption, serialised detections) is causal: row r reads token r
and its output depends on tokens 0..r only. Re-running the decoder over all rows for every new
token (what `FourM.decode` would do) costs O(R) rows per token; with a cache of each layer's
self-attention keys and values, and the cross-attention keys and values of the (fixed) encoder
context computed once, each token costs one row. The result equals `FourM.decode` row by row
(tests/test_model_incremental.py checks it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from m4.model.fourm import FourM
from m4.model.layers import unstacked


class SequenceCache(NamedTuple):
    context_kv: tuple[jax.Array, ...]        # per layer [B, Nc, 2, H, hd]
    self_kv: tuple[tuple[jax.Array, jax.Array], ...]   # per layer (k, v), each [B, R, H, hd]
    cross_allowed: jax.Array                 # [B, 1, Nc]


def start(model: FourM, enc_out: jax.Array, enc_emb: jax.Array, enc_valid: jax.Array,
          rows: int) -> SequenceCache:
    """An empty cache for `rows` decoder rows over an encoded condition [B, Nc, D]."""
    context = model.decoder_context(enc_out, enc_emb)
    blocks = unstacked(model.decoder)
    context_kv = tuple(block.context_keys(context) for block in blocks)
    b, _, _, heads, hd = context_kv[0].shape
    empty = jnp.zeros((b, rows, heads, hd), context_kv[0].dtype)
    return SequenceCache(context_kv, tuple((empty, empty) for _ in blocks),
                         enc_valid[:, None, :])


def step(model: FourM, cache: SequenceCache, ids: jax.Array, index: jax.Array, modality: int,
         position: jax.Array) -> tuple[jax.Array, SequenceCache]:
    """Row `index` of the target `modality`: reads token `ids` [B] at sequence `position`
    (a scalar or [B]).

    Returns (decoder output after decoder_norm [B, D], cache with this row's keys/values)."""
    b = ids.shape[0]
    one = jnp.ones((b, 1), bool)
    row = {"dec_mod": jnp.full((b, 1), modality, jnp.int32),
           "dec_pos": jnp.broadcast_to(jnp.reshape(position, (-1, 1)), (b, 1)).astype(jnp.int32),
           "dec_ids_in": ids[:, None].astype(jnp.int32), "dec_valid": one, "dec_attn_valid": one}
    x, emb = model.embed_targets(row)
    y = x + emb                                                              # [B, 1, D]
    self_kv = []
    for block, kv, layer_cache in zip(unstacked(model.decoder), cache.context_kv, cache.self_kv):
        y, layer_cache = block.step(y, layer_cache, index, kv, cache.cross_allowed)
        self_kv.append(layer_cache)
    return model.decoder_norm(y)[:, 0], cache._replace(self_kv=tuple(self_kv))
