"""The demo's 4M: a tiny model on the built-in scenes' token shards (made by `m4 pretokenize`).

    m4 train --config experiments/demo.py --workdir runs/demo/model \
        --config.data.shards=runs/demo/tokens/train

`get_config("test")` shrinks everything for the test suite.
"""

from __future__ import annotations

from m4.precision import fast_compute_dtype
from m4.train.defaults import train_config


def get_config(arg: str | None = None):
    c = train_config()
    c.data.shards = "runs/demo/tokens/train"
    c.masking.mixture = "demo"
    # Sized for the demo's budget (~18 minutes of training on 2 CPU cores): a 3+3-block model of
    # width 192 and 64 input tokens per scene (a 64x64 scene is 6 x 64 image tokens + 64 rgb
    # pixel patches + 16 pose tokens + the caption; rgb -> X conditions on all 64 patches).
    # Measured on this data, cross-modal conditioning grows with the number of steps more than
    # with width, so the budget goes to steps.
    c.model.update(dim=192, encoder_depth=3, decoder_depth=3, num_heads=4)
    # Input-token embeddings start at std 1 (the reference: 0.02): measured on the demo's data,
    # the loss of semseg from rgb vs from another scene's rgb after 500 steps: 0.444 vs 0.540
    # (0.491 vs 0.497 with 0.02, i.e. inputs still ignored).
    c.model.input_token_init_std = 1.0
    # 128 target tokens: with RGB as pixel patches (`rgb_pixels`, see experiments/mixtures.py),
    # measured on the demo's data (256 held-out scenes; rgb -> semseg mIoU / rgb -> caption F1):
    # 64 targets x 1400 steps 0.590 / 0.487; 128 targets after 1000 of 1400 steps (about the same
    # wall time) 0.630 / 0.493, after all 1400 0.658 / 0.550. RGB tokens as input instead of
    # pixels: 0.49 / 0.29 whatever the steps, batch or mixture weights.
    c.masking.update(input_tokens=64, target_tokens=128)
    # Batch 32 x 2000 steps: at this size the step costs the same per token at batch 32 as at 64
    # (~12.3k tokens/s), and a short run gains more from twice the updates than from larger
    # batches. Measured on the demo's data (256 held-out scenes; rgb -> caption F1 / rgb ->
    # semseg mIoU / all others -> semseg, training seconds): batch 64 x 900 steps, peak lr 1.5e-3
    # 0.568 / 0.635 / 0.672, ~1030-1136 s; batch 32 x 1800, peak 1.1e-3 0.640 / 0.655 / 0.672,
    # 893 s; batch 16 x 3600, peak 7.8e-4 0.634 / 0.649 / 0.681, 968 s; batch 32 x 2000, peak
    # 1.5e-3 (below) 0.659 / 0.674 / 0.709, 1045 s (1126 s in a fresh-clone demo of 26.2 min).
    c.batch_size = 32
    # Compute dtype: bfloat16 operands (float32 master weights, accumulation, norms, softmax and
    # loss) where the CPU has bf16 dot instructions (AVX512-BF16 / AMX) or on an accelerator,
    # float32 elsewhere (m4.precision). Measured on a 2-core AMX Xeon, same data and settings:
    # 0.37 s/step vs 0.54 in float32, and the same figures after 2000 steps (rgb -> caption F1 /
    # rgb -> semseg / all others -> semseg / caption -> semseg: bf16 0.646 / 0.673 / 0.716 /
    # 0.539, float32 0.659 / 0.674 / 0.709 / 0.538). The faster step buys more steps in the same
    # budget: 2800 in bfloat16 (1036-1074 s) reached 0.713 / 0.695 / 0.725 / 0.554; float32 keeps
    # 2000 (1045-1126 s), the most its ~30-minute demo allows. (Overriding model.dtype does not
    # change the step count: set total_steps with it.)
    c.model.dtype = fast_compute_dtype()
    c.total_steps = 2800 if c.model.dtype == "bfloat16" else 2000
    c.log_every = 25
    # lr = base_lr * batch / 256 = 1.5e-3, decaying to 5e-4 only: a short run of a small model
    # wants a high rate to the end. Measured at batch 64 x 900 steps (256 held-out scenes;
    # rgb -> semseg mIoU / rgb -> caption F1): peak 1e-3 to 1e-5 0.531 / 0.330 (fresh-clone
    # demo); 1e-3 to 2.5e-4 0.589 / 0.396; 1.5e-3 to 5e-4 0.635 / 0.505; 2e-3 to 7e-4 0.645 /
    # 0.481 (final losses 2.088, 2.028, 2.026). At batch 32, 2000 steps at this peak beat 1800 at
    # 1.1e-3 (above; the two changes were not measured apart); a peak of 2e-3 (to 6.5e-4) did worse
    # at batch 32 x 2000: 0.676 / 0.598.
    c.optimizer.update(base_lr=1.2e-2, warmup_steps=200, min_lr=5e-4, clip_grad_norm=1.0)
    c.checkpoint.update(every_steps=200, keep=2)
    # Unrolled blocks: at tiny size on CPU faster per step than the layer scan (the model's
    # default, kept for big models' compile time); see benchmarks/train_step.py.
    c.model.scan_layers = False

    if arg == "test":
        # float32 on every machine: the tests compare steps across meshes and resumes within
        # float32 tolerances.
        c.model.update(dim=32, encoder_depth=2, decoder_depth=2, num_heads=2, dtype="float32")
        c.masking.update(input_tokens=12, target_tokens=12)
        c.batch_size = 8
        c.total_steps = 6
        c.log_every = 1
        c.optimizer.warmup_steps = 2
        c.checkpoint.every_steps = 3
    elif arg not in (None, ""):
        raise ValueError(f"experiments/demo.py: unknown variant {arg!r} (known: 'test')")
    return c
