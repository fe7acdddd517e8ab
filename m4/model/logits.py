"""Cross-entropy of each decoder row over its own modality's vocabulary only.

A target row of modality m is scored against rows [offset_m, offset_m + V_m) of the global
output table. Multiplying every row by the whole table and masking ("full") costs
rows x V_total; with 4M's vocabularies (16k + 8k + 4k + 30k ...) that is ~4x the useful work.

"chunked" does only the useful work with fixed shapes:
1. rows are laid out modality by modality into fixed-size chunks of C rows (a modality with n
   rows fills ceil(n / C) chunks, the last one padded), in a buffer of
   K = ceil(R / C) + M chunks, enough for any split of R rows over M modalities;
2. for each modality (a static Python loop) a `fori_loop` over that modality's chunks computes
   the chunk's logits against the modality's static slice of the table -> logsumexp - target
   logit, and whether the target has the largest logit;
3. results are gathered back to the rows.
No product transposes the [V, D] table: the logits h_c [C, D] . table_m [V_m, D]^T take the
table with its contracting dim last, a layout XLA's CPU kernels (YNNPACK) read directly; the
input gradient dlogits [C, V_m] . table_m is canonical; the table gradient dlogits^T . h_c
contracts the C rows of both. (Transposing table slices for canonical products cost ~0.3 CPU-s
per step at 4M's vocabulary sizes.)
A custom VJP recomputes each chunk's logits in the backward pass and accumulates the table
gradient in place, in one [V, D] loop carry (plain autodiff of the loop would add a full
[V, D] gradient per chunk).

With a mesh, rows are laid out per group of examples (`groups` = the number of batch shards), so
every data-parallel shard works on its own rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from m4.model.layers import after, dot2


def full_cross_entropy(h: jax.Array, targets: jax.Array, mod: jax.Array, valid: jax.Array,
                       table: jax.Array, offsets: tuple, sizes: tuple, dtype
                       ) -> tuple[jax.Array, jax.Array]:
    """Reference path: all logits [R, V], masked to each row's range. -> (nll [R], correct [R])."""
    logits = dot2(h, table, (1, 1), dtype)                             # [R, V] f32
    lo = jnp.asarray(offsets, jnp.int32)[mod][:, None]
    hi = lo + jnp.asarray(sizes, jnp.int32)[mod][:, None]
    gid = jnp.arange(table.shape[0], dtype=jnp.int32)[None, :]
    logits = jnp.where((gid >= lo) & (gid < hi), logits, -jnp.inf)
    target = lo[:, 0] + targets
    lse = jax.nn.logsumexp(logits, axis=-1)
    tl = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
    nll = jnp.where(valid, lse - tl, 0.0)
    correct = valid & (jnp.argmax(logits, axis=-1) == target)
    return nll, correct


def _chunk_layout(mod, valid, slot_of_mod: tuple, num_target: int, chunk: int, capacity: int):
    """Slot of every row in the chunk buffer; per target modality its first chunk and count."""
    rows = mod.shape[0]
    j = jnp.asarray(slot_of_mod, jnp.int32)[mod]                    # [R] target slot or -1
    ok = valid & (j >= 0)
    onehot = ((j[:, None] == jnp.arange(num_target)[None, :]) & ok[:, None]).astype(jnp.int32)
    counts = onehot.sum(axis=0)                                      # [T]
    nchunks = (counts + chunk - 1) // chunk
    start = jnp.cumsum(nchunks) - nchunks                            # [T] first chunk
    rank = jnp.sum(onehot * (jnp.cumsum(onehot, axis=0) - 1), axis=1)   # [R] rank in modality
    slot = jnp.where(ok, start[jnp.clip(j, 0)] * chunk + rank, capacity * chunk)
    src = jnp.full((capacity * chunk,), rows, jnp.int32).at[slot].set(
        jnp.arange(rows, dtype=jnp.int32), mode="drop")              # [K*C] row or dummy
    return slot, src, ok, start, nchunks


def _chunk_logits(h_pad, w, row0, chunk: int, dtype):
    """Logits of one chunk of rows against one modality's table rows:
    h_c [C, D] . w [V_m, D]^T -> ([C, V_m] f32, h_c)."""
    hc = jax.lax.dynamic_slice_in_dim(h_pad, row0, chunk, axis=0)             # [C, D]
    return dot2(hc, w, (1, 1), dtype), hc


def _chunk_forward(statics, h_pad, table, t_pad, start, nchunks):
    target_mods, offsets, sizes, chunk, dtype = statics
    total = h_pad.shape[0]
    nll = jnp.zeros((total,), jnp.float32)
    lse_all = jnp.zeros((total,), jnp.float32)
    correct = jnp.zeros((total,), jnp.bool_)
    for j, m in enumerate(target_mods):
        w = table[offsets[m]:offsets[m] + sizes[m]]                              # [V_m, D]

        def body(k, carry, j=j, w=w):
            nll, lse_all, correct = carry
            row0 = (start[j] + k) * chunk
            logits, _ = _chunk_logits(h_pad, w, row0, chunk, dtype)              # [C, V_m]
            tc = jax.lax.dynamic_slice_in_dim(t_pad, row0, chunk)
            top = jnp.max(logits, axis=1)                                        # [C]
            lse = top + jnp.log(jnp.sum(jnp.exp(logits - top[:, None]), axis=1))
            tl = jnp.take_along_axis(logits, tc[:, None], axis=1)[:, 0]
            # The target is the argmax iff its logit is the maximum (exact ties, where argmax
            # would pick the lower id, do not occur with float logits in practice). Saves an
            # argmax pass over the [C, V_m] logits.
            hit = tl >= top
            return (jax.lax.dynamic_update_slice(nll, lse - tl, (row0,)),
                    jax.lax.dynamic_update_slice(lse_all, lse, (row0,)),
                    jax.lax.dynamic_update_slice(correct, hit, (row0,)))

        nll, lse_all, correct = jax.lax.fori_loop(0, nchunks[j], body, (nll, lse_all, correct))
    return nll, correct, lse_all


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_ce(statics, h_pad, table, t_pad, start, nchunks):
    nll, correct, _ = _chunk_forward(statics, h_pad, table, t_pad, start, nchunks)
    return nll, correct


def _chunked_ce_fwd(statics, h_pad, table, t_pad, start, nchunks):
    nll, correct, lse = _chunk_forward(statics, h_pad, table, t_pad, start, nchunks)
    return (nll, correct), (h_pad, table, t_pad, start, nchunks, lse)


def _chunked_ce_bwd(statics, residuals, cotangents):
    target_mods, offsets, sizes, chunk, dtype = statics
    h_pad, table, t_pad, start, nchunks, lse_all = residuals
    g_nll = cotangents[0]                                            # [K*C]
    # One gradient buffer for the whole table, updated in place chunk by chunk: rows of
    # modalities without targets in the batch stay zero, and nothing is concatenated at the end.
    # Zeros of its own (`after`): a zero constant shared with other [V, D] gradients would be
    # copied for each of them.
    dh, dtable = after((jnp.zeros(h_pad.shape, jnp.float32),
                        jnp.zeros(table.shape, jnp.float32)), g_nll)
    for j, m in enumerate(target_mods):
        lo, size = offsets[m], sizes[m]
        # The table slice taken once the gradient arrives: otherwise XLA shares the forward's
        # slice (a common subexpression) and keeps it alive in between.
        w = after(table[lo:lo + size], g_nll)                                    # [V_m, D]

        def body(k, carry, j=j, w=w, lo=lo, size=size):
            dh, dtable = carry
            row0 = (start[j] + k) * chunk
            logits, hc = _chunk_logits(h_pad, w, row0, chunk, dtype)             # [C, V_m]
            tc = jax.lax.dynamic_slice_in_dim(t_pad, row0, chunk)
            lse = jax.lax.dynamic_slice_in_dim(lse_all, row0, chunk)
            gc = jax.lax.dynamic_slice_in_dim(g_nll, row0, chunk)
            # d(lse - logit_t)/d logits = softmax - onehot(t), scaled by the row's cotangent.
            dlogits = jnp.exp(logits - lse[:, None]) * gc[:, None]
            dlogits = dlogits.at[jnp.arange(chunk), tc].add(-gc)                 # [C, V_m]
            dhc = dot2(dlogits, w, (1, 0), dtype)                                # [C, D]
            dw = (jax.lax.dynamic_slice_in_dim(dtable, lo, size)
                  + dot2(dlogits, hc, (0, 0), dtype))                            # [V_m, D]
            return (jax.lax.dynamic_update_slice_in_dim(dh, dhc, row0, axis=0),
                    jax.lax.dynamic_update_slice_in_dim(dtable, dw, lo, axis=0))

        dh, dtable = jax.lax.fori_loop(0, nchunks[j], body, (dh, dtable))
    return dh.astype(h_pad.dtype), dtable.astype(table.dtype), None, None, None


_chunked_ce.defvjp(_chunked_ce_fwd, _chunked_ce_bwd)


def chunked_cross_entropy(h: jax.Array, targets: jax.Array, mod: jax.Array, valid: jax.Array,
                          table: jax.Array, offsets: tuple, sizes: tuple,
                          target_mods: tuple, chunk: int, dtype, groups: int = 1
                          ) -> tuple[jax.Array, jax.Array]:
    """h [R, D], targets/mod [R] int32 (local ids, modality index), valid [R] bool,
    table [V, D]; target_mods: modality indices that can be targets. -> (nll [R], correct [R]).

    Rows of modalities outside `target_mods`, or not valid, get nll 0 and correct False.
    """
    rows, dim = h.shape
    if groups < 1 or rows % groups:
        groups = 1
    per_group = rows // groups
    chunk = int(min(chunk, -(-per_group // 8) * 8))      # no bigger than the rows, rounded to 8
    target_mods = tuple(int(m) for m in target_mods if sizes[m])
    capacity = -(-per_group // chunk) + len(target_mods)
    slot_of_mod = tuple(target_mods.index(m) if m in target_mods else -1
                        for m in range(len(sizes)))
    statics = (target_mods, tuple(map(int, offsets)), tuple(map(int, sizes)), chunk,
               jnp.dtype(dtype))

    def one_group(h, targets, mod, valid):
        slot, src, ok, start, nchunks = _chunk_layout(mod, valid, slot_of_mod, len(target_mods),
                                                      chunk, capacity)
        h_pad = jnp.concatenate([h, jnp.zeros((1, dim), h.dtype)])[src]         # [K*C, D]
        t_pad = jnp.concatenate([targets, jnp.zeros((1,), targets.dtype)])[src]
        nll_pad, correct_pad = _chunked_ce(statics, h_pad, table, t_pad, start, nchunks)
        at = jnp.clip(slot, 0, capacity * chunk - 1)
        return jnp.where(ok, nll_pad[at], 0.0), ok & correct_pad[at]

    if groups == 1:
        # No vmap of one group: its batch dimension of 1 would turn every product of the loss
        # into a batched one and every loop bound into a vector.
        return one_group(h, targets, mod, valid)
    split = lambda x: x.reshape(groups, per_group, *x.shape[1:])
    nll, correct = jax.vmap(one_group)(split(h), split(targets), split(mod), split(valid))
    return nll.reshape(rows), correct.reshape(rows)
