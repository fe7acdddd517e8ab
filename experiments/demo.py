"""The demo's 4M: a tiny model on the built-in scenes' token shards (made by `m4 pretokenize`).

    m4 train --config experiments/demo.py --workdir runs/demo/model \
        --config.data.shards=runs/demo/tokens/train

`get_config("test")` shrinks everything for the test suite.
"""

from __future__ import annotations

from m4.train.defaults import train_config


def get_config(arg: str | None = None):
    c = train_config()
    c.data.shards = "runs/demo/tokens/train"
    c.masking.mixture = "demo"
    # Sized for the demo's budget (~15 minutes of training on 2 CPU cores): a 3+3-block model of
    # width 192 and 64 input / 64 target tokens per scene (a 64x64 scene is 6 x 64 image tokens
    # + 16 pose tokens + the caption; rgb -> X conditions on all 64 rgb tokens). Measured on this
    # data, cross-modal conditioning grows with the number of steps more than with width, so the
    # budget goes to steps.
    c.model.update(dim=192, encoder_depth=3, decoder_depth=3, num_heads=4)
    # Input-token embeddings start at std 1 (the reference: 0.02): measured on the demo's data,
    # the loss of semseg from rgb vs from another scene's rgb after 500 steps: 0.444 vs 0.540
    # (0.491 vs 0.497 with 0.02, i.e. inputs still ignored).
    c.model.input_token_init_std = 1.0
    c.masking.update(input_tokens=64, target_tokens=64)
    c.batch_size = 64
    # 1400 steps at ~0.8 s (batch 64, 2 quiet cores) keep the whole demo within 30 minutes:
    # measured stages preview 0.3 s, tokenizers 319 s, pretokenize 46 s, train 1500 steps
    # 1288 s, generations 33 s, eval 167 s = 30.9 min with 1500 steps.
    c.total_steps = 1400
    c.log_every = 25
    # lr = base_lr * batch / 256 = 1e-3: a short run of a small model wants a high rate.
    c.optimizer.update(base_lr=4e-3, warmup_steps=100, min_lr=1e-5, clip_grad_norm=1.0)
    c.checkpoint.update(every_steps=200, keep=2)
    # Unrolled blocks: at tiny size on CPU faster per step than the layer scan (the model's
    # default, kept for big models' compile time); see benchmarks/train_step.py.
    c.model.scan_layers = False

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
