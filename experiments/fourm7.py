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

from m4.train.defaults import reference_recipe

MODALITIES = ("rgb@224", "tok_rgb@224", "tok_depth@224", "tok_normal@224", "tok_semseg@224",
              "tok_clip@224", "caption", "det")

# size -> (global batch, base lr, gradient clip (0 = none), remat)
RECIPES = {
    "B": (8192, 1e-4, 0.0, "none"),
    "L": (8192, 1e-4, 0.0, "none"),       # the reference clips at 10000: effectively never
    "XL": (8192, 2e-5, 3.0, "full"),
}


def get_config(arg: str = "B"):
    return reference_recipe(arg, RECIPES, modalities=MODALITIES, mixture="4m7", budget=128,
                            fsdp={"XL": 8}, where="experiments/fourm7.py")
