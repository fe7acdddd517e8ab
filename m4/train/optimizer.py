"""AdamW as the reference trains 4M, computed in one fused pass over the parameters.

- lr = base_lr * global_batch / 256, linear warmup from 0, then cosine to `min_lr`.
- betas (0.9, 0.95), eps 1e-8, weight decay 0.05, not applied to norms and biases (the reference
  decays everything else, embeddings, modality embeddings and the mask token included).
- Optional global-norm clipping (the reference: none for B, 3.0 for XL).
- Steps whose gradients hold a NaN/Inf are skipped: the parameters and moments stay as they were;
  `skipped_steps` counts them.

The numbers are those of `optax.apply_if_finite(optax.chain(clip_by_global_norm, adamw))`, and
the optimizer state is that chain's state, leaf for leaf (checkpoints of either load into the
other). What differs is how it runs: the optax chain materialises the clipped gradients, the Adam
direction, the decayed update and the scaled update as separate trees, and apply_if_finite puts
the whole update under a `lax.cond` whose branches copy every moment. On CPU, with 4M's large
vocabulary tables (~70% of the tiny model's parameters), that was ~0.8 CPU-s per step. Here each
parameter is read and written once: one elementwise function per leaf computes the new moments
and the new parameter, and a rejected step selects the old values inside that same pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    base_lr: float = 1e-4
    global_batch: int = 256
    warmup_steps: int = 0
    total_steps: int = 1000
    min_lr: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.05
    clip_grad_norm: float | None = None
    # A run of this many non-finite steps in a row is an error, not something to skip forever.
    max_consecutive_skips: int = 100

    @property
    def peak_lr(self) -> float:
        return self.base_lr * self.global_batch / 256


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    warmup = max(int(cfg.warmup_steps), 0)
    decay_steps = max(int(cfg.total_steps), warmup + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.peak_lr, warmup_steps=warmup,
        decay_steps=decay_steps, end_value=cfg.min_lr)


def param_path(path: Sequence) -> tuple[str, ...]:
    """A parameter's tree path as names, without nnx's trailing `.value`."""
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
        else:
            names.append(str(entry))
    return tuple(n for n in names if n not in ("value", "raw_value"))


def unique_rows(index: jax.Array, rows: jax.Array, num_rows: int) -> tuple[jax.Array, jax.Array]:
    """Rows of equal ids summed: (ids [n], sums [n, D]) with n = index.size fixed; unused slots
    carry id `num_rows` (out of range: scatters drop them, gathers fill them)."""
    flat = index.reshape(-1)
    values = rows.reshape(flat.shape[0], rows.shape[-1])
    order = jnp.argsort(flat)
    ids, values = flat[order], values[order]
    first = jnp.concatenate([jnp.ones((1,), bool), ids[1:] != ids[:-1]])
    slot = jnp.cumsum(first) - 1
    sums = jax.ops.segment_sum(values, slot, num_segments=flat.shape[0],
                               indices_are_sorted=True)
    uid = jnp.full(flat.shape, num_rows, flat.dtype).at[slot].set(ids)
    return uid, sums


def decay_mask(params) -> object:
    """True where weight decay applies: everything but norms and biases (by parameter path)."""
    def decays(path, _leaf) -> bool:
        # nnx.State paths end in the Variable's `.value`; the parameter's own name comes before.
        names = [n.lower() for n in param_path(path)]
        return not any("norm" in n for n in names) and not names[-1].endswith("bias")
    return jax.tree_util.tree_map_with_path(decays, params)


def optax_adamw(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """The same optimizer as an optax chain: defines the state layout, and is the reference the
    tests compare the fused update against."""
    chain = []
    if cfg.clip_grad_norm:
        chain.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
    chain.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.apply_if_finite(optax.chain(*chain), cfg.max_consecutive_skips)


@dataclasses.dataclass(frozen=True)
class FusedAdamW:
    """AdamW with optax's interface (`init`, `update`) and a fused `apply_gradients`.

    `update` returns optax-style updates (parameters += updates); `apply_gradients` returns the
    new parameters directly, and the gradient norm it computed on the way (the train step
    reports it), so nothing but the parameters and moments is written."""

    cfg: OptimizerConfig

    def init(self, params) -> Any:
        return optax_adamw(self.cfg).init(params)

    def update(self, grads, state, params=None) -> tuple[Any, Any]:
        if params is None:
            raise ValueError("FusedAdamW.update: params are required (weight decay reads them)")
        new_params, state, _ = self.apply_gradients(grads, state, params)
        updates = jax.tree.map(lambda n, p: n - p, new_params, params)
        return updates, state

    def apply_gradients(self, grads, state, params, rows: dict | None = None
                        ) -> tuple[Any, Any, jax.Array]:
        """-> (new params, new state, global gradient norm before clipping).

        rows: {parameter path: (index [...], row gradients [..., D])}: gradient rows to add to
        those [V, D] parameters' `grads` (m4.train.sparse_rows), applied without forming the
        dense sum; the result is the dense gradient's update."""
        cfg = self.cfg
        adam, masked, sched = _chain_states(state.inner_state, bool(cfg.clip_grad_norm))
        leaves = jax.tree.leaves(grads)
        paths = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(grads)[0]]
        sparse = {}
        for path, g in zip(paths, leaves):
            if rows and path in rows:
                index, r = rows[path]
                uid, sums = unique_rows(index, r.astype(jnp.float32), g.shape[0])
                # The dense gradient's rows there, for the cross term of the squares.
                dense = jnp.take(g.astype(jnp.float32), uid, axis=0, mode="fill", fill_value=0)
                sparse[path] = (uid, sums, dense)
        unknown = set(rows or ()) - set(sparse)
        if unknown:
            raise ValueError(f"apply_gradients: rows for {sorted(unknown)}, which are not "
                             f"parameters (known: {paths})")
        sumsq = sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves)
        # |g + s|^2 = |g|^2 + sum over the touched rows of (2 g_row s_row + s_row^2).
        sumsq = sumsq + sum(jnp.sum(s * (2 * d + s)) for _, s, d in sparse.values())
        grad_norm = jnp.sqrt(sumsq)
        # A NaN/Inf anywhere makes the sum of squares non-finite (so does a norm beyond float32,
        # ~1e19: a step that large is skipped too).
        finite = jnp.isfinite(sumsq)
        notfinite_count = jnp.where(finite, 0, optax.safe_increment(state.notfinite_count))
        accept = finite | (notfinite_count > cfg.max_consecutive_skips)

        count = optax.safe_increment(adam.count)
        lr = learning_rate_schedule(cfg)(sched.count)
        bc1 = (1 - cfg.b1 ** count).astype(jnp.float32)
        bc2 = (1 - cfg.b2 ** count).astype(jnp.float32)
        if cfg.clip_grad_norm:
            clip = jnp.where(grad_norm < cfg.clip_grad_norm, 1.0, cfg.clip_grad_norm / grad_norm)
        else:
            clip = jnp.float32(1.0)

        def one(p, g, mu, nu, decay, sparse_rows=None):
            g = g * clip.astype(g.dtype)
            mu2 = jnp.where(accept, (1 - cfg.b1) * g + cfg.b1 * mu, mu).astype(mu.dtype)
            # ((1 - b2) * g) * g, not (1 - b2) * (g * g): without clipping, g * g is the same
            # expression as the norm's square, and XLA would then materialise it for both users
            # (one more write and read of each gradient; ~18 ms per [V, D] table at tiny size).
            nu2 = jnp.where(accept, (1 - cfg.b2) * g * g + cfg.b2 * nu, nu).astype(nu.dtype)
            if sparse_rows is not None:
                # The touched rows' moments as if g had the rows added: mu gains (1-b1) s,
                # nu gains (1-b2) ((g + s)^2 - g^2) = (1-b2) s (2 g + s) (all clipped).
                uid, s, d = sparse_rows
                s, d = s * clip, d * clip
                keep = lambda x: jnp.where(accept, x, 0.0)
                mu2 = mu2.at[uid].add(keep((1 - cfg.b1) * s).astype(mu.dtype), mode="drop")
                nu2 = nu2.at[uid].add(keep((1 - cfg.b2) * s * (2 * d + s)).astype(nu.dtype),
                                      mode="drop")
            # The new moments are written in place of the old ones (the state is donated) and the
            # parameter update reads the new ones. Without the barrier XLA recomputes them inside
            # the parameter's fusion from the old moments, and must then copy every old moment
            # before overwriting it (2 extra passes over the state, ~2x slower on CPU).
            mu2, nu2 = jax.lax.optimization_barrier((mu2, nu2))
            u = (mu2 / bc1) / (jnp.sqrt(nu2 / bc2) + cfg.eps)
            if decay:
                u = u + cfg.weight_decay * p
            p2 = (p + (-lr) * u).astype(p.dtype)
            return jnp.where(accept, p2, p), mu2, nu2

        treedef = jax.tree.structure(params)
        out = [one(*args, sparse.get(path)) for path, *args in zip(
            paths, jax.tree.leaves(params), leaves, jax.tree.leaves(adam.mu),
            jax.tree.leaves(adam.nu), jax.tree.leaves(decay_mask(params)))]
        new_params, mu, nu = (jax.tree.unflatten(treedef, [o[i] for o in out]) for i in range(3))
        step_if = lambda new, old: jnp.where(accept, new, old)
        adam = adam._replace(count=step_if(count, adam.count), mu=mu, nu=nu)
        sched = sched._replace(count=step_if(optax.safe_increment(sched.count), sched.count))
        inner = _with_chain_states(state.inner_state, bool(cfg.clip_grad_norm),
                                   (adam, masked, sched))
        state = state._replace(
            notfinite_count=notfinite_count, last_finite=finite,
            total_notfinite=jnp.where(finite, state.total_notfinite,
                                      optax.safe_increment(state.total_notfinite)),
            inner_state=inner)
        return new_params, state, grad_norm


def _chain_states(inner, clipped: bool):
    """(ScaleByAdamState, MaskedState, ScaleByScheduleState) inside optax_adamw's state."""
    return inner[1] if clipped else inner[0]


def _with_chain_states(inner, clipped: bool, adamw_states):
    return (inner[0], adamw_states) if clipped else (adamw_states,)


def make_optimizer(cfg: OptimizerConfig) -> FusedAdamW:
    return FusedAdamW(cfg)


def skipped_steps(opt_state) -> jax.Array:
    """How many steps were skipped for non-finite gradients so far."""
    return opt_state.total_notfinite
