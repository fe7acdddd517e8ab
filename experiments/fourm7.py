"""The reference 4M-7 pre-training recipes (REFERENCE_4M.md section 8), sizes B, L and XL.

    m4 train --config experiments/fourm7.py:B --workdir gs://BUCKET/4m7_b \
        --config.data.shards=gs://BUCKET/tokens/cc12m/train --distributed auto

Only the data path changes per user. Modalities: the 4M-7 set (RGB pixels + tokens of RGB,
depth, normals, semseg, CLIP, caption, detections), 128 input + 128 target tokens, the 4M-7
all2all + rgb2all mixture, AdamW (0.9, 0.95), wd 0.05, lr = base_lr * batch / 256, 10B warmup
tokens and 500B tokens in total (cosine to 0), bf16 compute with fp32 master weights.
Mesh: data parallel for B and L; XL shards parameters and optimizer state over `fsdp`
(the reference: FSDP with activation checkpointing).
"""

from __future__ import annotations

from m4.train.defaults import steps_for_tokens, train_config

MODALITIES = ("rgb@224", "tok_rgb@224", "tok_depth@224", "tok_normal@224", "tok_semseg@224",
              "tok_clip@224", "caption", "det")

# size -> (global batch, base lr, gradient clip (0 = none), remat)
RECIPES = {
    "B": (8192, 1e-4, 0.0, "none"),
    "L": (8192, 1e-4, 0.0, "none"),       # the reference clips at 10000: effectively never
    "XL": (8192, 2e-5, 3.0, "full"),
}
SIZES = {"B": "base", "L": "large", "XL": "xl"}


def get_config(arg: str = "B"):
    if arg not in RECIPES:
        raise ValueError(f"experiments/fourm7.py: size expected one of {list(RECIPES)}, got {arg!r}")
    batch, base_lr, clip, remat = RECIPES[arg]
    c = train_config()
    c.modalities = MODALITIES
    c.model.update(size=SIZES[arg], dtype="bfloat16", remat=remat)
    c.masking.update(mixture="4m7", input_tokens=128, target_tokens=128)
    tokens_per_sample = 256
    c.batch_size = batch
    c.total_steps = steps_for_tokens(500e9, batch, tokens_per_sample)
    c.optimizer.update(base_lr=base_lr, warmup_steps=steps_for_tokens(10e9, batch, tokens_per_sample),
                       min_lr=0.0, clip_grad_norm=clip)
    c.log_every = 100
    c.checkpoint.update(every_steps=5000, keep=3)
    if arg == "XL":
        c.mesh.update(data=-1, fsdp=8, tensor=1)
    return c
