"""The default training config that every experiment config starts from.

Experiment files (experiments/*.py) call `train_config()` and change what differs, so a field
added here reaches every experiment, and `--config.x=y` overrides find every field.
"""

from __future__ import annotations

import pathlib

import ml_collections

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / "experiments"


def train_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # `tokenizers`: when set, the shards' manifest must match these tokenizer artifacts.
    c.data = ml_collections.ConfigDict({"shards": "", "tokenizers": ""})
    c.modalities = None                  # None: every modality of the shards, in manifest order

    c.model = ml_collections.ConfigDict({
        "size": "tiny", "variant": "swiglu_nobias",
        # Any FourMConfig field may be set here; None keeps the preset's value.
        "dim": None, "encoder_depth": None, "decoder_depth": None, "num_heads": None,
        "dtype": None, "remat": None, "scan_layers": None, "logits": None,
        "share_modality_embeddings": None, "tie_logits": None, "input_token_init_std": None,
    })
    c.masking = ml_collections.ConfigDict({
        "mixture_file": str(EXPERIMENTS / "mixtures.py"), "mixture": "demo",
        "input_tokens": 128, "target_tokens": 128,
    })
    c.loss_type = "mod"
    c.batch_size = 256                   # global, over all processes
    c.total_steps = 1000
    c.log_every = 50
    c.optimizer = ml_collections.ConfigDict({
        # lr = base_lr * batch_size / 256, linear warmup, cosine to min_lr (REFERENCE_4M.md 8).
        "base_lr": 1e-4, "warmup_steps": 100, "min_lr": 0.0, "b1": 0.9, "b2": 0.95,
        "weight_decay": 0.05, "clip_grad_norm": 0.0,   # 0: no clipping
    })
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.checkpoint = ml_collections.ConfigDict({"every_steps": 1000, "keep": 3, "async_save": True})
    return c


def steps_for_tokens(tokens: float, batch_size: int, tokens_per_sample: int) -> int:
    """The reference counts training in tokens (input + target budget per sample)."""
    return max(1, round(tokens / (batch_size * tokens_per_sample)))


# The reference's pre-training schedule (REFERENCE_4M.md section 8), counted in tokens.
REFERENCE_TOTAL_TOKENS = 500e9
REFERENCE_WARMUP_TOKENS = 10e9
REFERENCE_SIZES = {"B": "base", "L": "large", "XL": "xl"}


def reference_recipe(size: str, recipes: dict, *, modalities, mixture: str, budget: int,
                     fsdp: dict[str, int], where: str, **model) -> ml_collections.ConfigDict:
    """A reference pre-training recipe: `recipes[size]` = (global batch, base lr, clip, remat);
    `budget` input and as many target tokens per sample; `fsdp[size]` (default 1) shards
    parameters; `model` sets further model fields (e.g. share_modality_embeddings)."""
    if size not in recipes:
        raise ValueError(f"{where}: size expected one of {list(recipes)}, got {size!r}")
    batch, base_lr, clip, remat = recipes[size]
    c = train_config()
    c.modalities = tuple(modalities)
    c.model.update(size=REFERENCE_SIZES[size], dtype="bfloat16", remat=remat, **model)
    c.masking.update(mixture=mixture, input_tokens=budget, target_tokens=budget)
    c.batch_size = batch
    c.total_steps = steps_for_tokens(REFERENCE_TOTAL_TOKENS, batch, 2 * budget)
    c.optimizer.update(base_lr=base_lr, min_lr=0.0, clip_grad_norm=clip,
                       warmup_steps=steps_for_tokens(REFERENCE_WARMUP_TOKENS, batch, 2 * budget))
    c.log_every = 100
    c.checkpoint.update(every_steps=5000, keep=3)
    c.mesh.update(data=-1, fsdp=fsdp.get(size, 1), tensor=1)
    return c
