"""The demo's 4M: a tiny model on the built-in scenes' token shards (made by `m4 pretokenize`).

    m4 train --config experiments/demo.py --workdir runs/demo/model \
        --config.data.shards=runs/demo/tokens/train

`get_config("test")` shrinks everything for the test suite.
"""

from __future__ import annotations

import pathlib

import ml_collections

HERE = pathlib.Path(__file__).resolve().parent


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # `tokenizers`: when set, the shards' manifest must match these tokenizer artifacts.
    c.data = ml_collections.ConfigDict({"shards": "runs/demo/tokens/train", "tokenizers": ""})
    c.modalities = None                  # None: every modality of the shards, in manifest order

    c.model = ml_collections.ConfigDict({
        "size": "tiny", "variant": "swiglu_nobias",
        # Any FourMConfig field may be set here; None keeps the preset's value.
        "dim": None, "encoder_depth": None, "decoder_depth": None, "num_heads": None,
        "dtype": None, "remat": None, "scan_layers": None, "logits": None,
    })
    c.masking = ml_collections.ConfigDict({
        "mixture_file": str(HERE / "mixtures.py"), "mixture": "demo",
        "input_tokens": 128, "target_tokens": 128,
    })
    c.loss_type = "mod"
    c.batch_size = 32
    c.total_steps = 2000
    c.log_every = 25
    c.optimizer = ml_collections.ConfigDict({
        "base_lr": 1e-3, "warmup_steps": 100, "min_lr": 1e-5, "b1": 0.9, "b2": 0.95,
        "weight_decay": 0.05, "clip_grad_norm": 1.0,
    })
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.checkpoint = ml_collections.ConfigDict({"every_steps": 250, "keep": 2, "async_save": True})

    if arg == "test":
        c.model.update(dim=32, encoder_depth=2, decoder_depth=2, num_heads=2)
        c.masking.update(input_tokens=12, target_tokens=12)
        c.batch_size = 8
        c.total_steps = 6
        c.log_every = 1
        c.optimizer.warmup_steps = 2
        c.checkpoint.every_steps = 3
    elif arg not in (None, ""):
        raise ValueError(f"experiments/demo.py: unknown variant {arg!r} (known: 'test')")
    return c
