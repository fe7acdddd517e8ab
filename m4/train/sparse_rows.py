"""Row gradients of the token-embedding tables, instead of dense [V, D] gradients.

A step looks up a few thousand rows of tables with tens of thousands (the encoder's and the
decoder's token embeddings, [V, D] over the global vocabulary). Autodiff hands back each table's
gradient as a fresh dense [V, D] array: zero-filled, scatter-added, then read by AdamW. On CPU
that was ~40 ms per table and step at 4M's vocabulary sizes, more when the zero fill first
touches fresh pages. Here the step reads the gradients of the looked-up rows instead (the
embedding adds a zero `delta` per row and differentiates w.r.t. it, `m4.model.adapters.
embed_rows`), and the optimizer applies them as sparse rows (`m4.train.optimizer`): moments
decayed in place, rows scatter-added. The numbers are AdamW's on the dense gradient (rows of
equal ids are summed first, as the dense scatter-add does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from m4.model.adapters import ROW_DELTA_KEYS, add_rows
from m4.train.optimizer import param_path

# The token tables the row deltas stand for, as parameter paths (module attribute names).
# `plan` reaches the tables through these same names, so a renamed attribute fails there
# instead of leaving a table's rows unapplied.
TABLE_PATHS = {ROW_DELTA_KEYS[0]: ("enc_embed", "token_emb"),
               ROW_DELTA_KEYS[1]: ("dec_embed", "token_emb")}


def plan(module, batch: dict) -> dict[str, jax.Array]:
    """{delta key: [B, N] table rows read} for each token table the module has."""
    out = {}
    for key, (embedding, table) in TABLE_PATHS.items():
        embed = getattr(module, embedding)
        if getattr(embed, table) is not None:
            out[key] = embed.row_index(batch)
    return out


def zero_deltas(index: dict[str, jax.Array], dim: int) -> dict[str, jax.Array]:
    return {k: jnp.zeros(i.shape + (dim,), jnp.float32) for k, i in index.items()}


def by_table(index: dict[str, jax.Array], delta_grads: dict[str, jax.Array]) -> dict:
    """{table path: (index [B, N], row gradients [B, N, D])}."""
    return {TABLE_PATHS[k]: (index[k], delta_grads[k]) for k in index}


def densify(grads, rows: dict):
    """The dense gradients (for optimizers without a sparse path): each table's row gradients
    scatter-added into its gradient."""
    def add(path, g):
        hit = rows.get(param_path(path))
        return g if hit is None else add_rows(g, *hit)
    return jax.tree_util.tree_map_with_path(add, grads)
