"""AdamW as the reference trains 4M, as one optax transformation.

- lr = base_lr * global_batch / 256, linear warmup from 0, then cosine to `min_lr`.
- betas (0.9, 0.95), eps 1e-8, weight decay 0.05, not applied to norms and biases (the reference
  decays everything else, embeddings, modality embeddings and the mask token included).
- Optional global-norm clipping (the reference: none for B, 3.0 for XL).
- Steps whose gradients hold a NaN/Inf are skipped: the update is zero and the parameters and
  moments stay as they were; `skipped_steps` counts them (optax.apply_if_finite).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
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


def _path_names(path: Sequence) -> list[str]:
    names = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                names.append(str(getattr(entry, attr)))
                break
        else:
            names.append(str(entry))
    return names


def decay_mask(params) -> object:
    """True where weight decay applies: everything but norms and biases (by parameter path)."""
    def decays(path, _leaf) -> bool:
        # nnx.State paths end in the Variable's `.value`; the parameter's own name comes before.
        names = [n.lower() for n in _path_names(path) if n not in ("value", "raw_value")]
        return not any("norm" in n for n in names) and not names[-1].endswith("bias")
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    chain = []
    if cfg.clip_grad_norm:
        chain.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
    chain.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.apply_if_finite(optax.chain(*chain), cfg.max_consecutive_skips)


def skipped_steps(opt_state) -> jax.Array:
    """How many steps were skipped for non-finite gradients so far."""
    return opt_state.total_notfinite
