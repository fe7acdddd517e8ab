"""The reference 4M-21 pre-training recipes (REFERENCE_4M.md section 8), sizes B, L and XL.

    m4 train --config experiments/fourm21.py:L --workdir gs://BUCKET/4m21_l \
        --config.data.shards=gs://BUCKET/tokens/4m21/train --distributed auto

256 input + 256 target tokens over the 4M-21 modalities with the 4M-21 mixture, global batch
4096, separate encoder/decoder modality embeddings, 500B tokens (10B warmup), bf16 compute with
fp32 master weights. The reference initialises 4M-21 from 4M-7 (use `m4 convert` + fine-tuning).
"""

from __future__ import annotations

from m4.train.defaults import steps_for_tokens, train_config

MODALITIES = (
    "rgb@224", "tok_rgb@224", "tok_depth@224", "tok_normal@224", "tok_semseg@224",
    "tok_clip@224", "tok_canny_edge@224", "tok_sam_edge@224", "tok_dinov2@224",
    "tok_dinov2_global", "tok_imagebind@224", "tok_imagebind_global", "caption", "det",
    "metadata", "color_palette", "human_poses", "sam_instance", "t5_caption",
)

RECIPES = {
    "B": (4096, 1e-4, 0.0, "none"),
    "L": (4096, 1e-4, 0.0, "full"),
    "XL": (4096, 2e-5, 3.0, "full"),
}
SIZES = {"B": "base", "L": "large", "XL": "xl"}


def get_config(arg: str = "B"):
    if arg not in RECIPES:
        raise ValueError(f"experiments/fourm21.py: size expected one of {list(RECIPES)}, got {arg!r}")
    batch, base_lr, clip, remat = RECIPES[arg]
    c = train_config()
    c.modalities = MODALITIES
    c.model.update(size=SIZES[arg], dtype="bfloat16", remat=remat,
                   share_modality_embeddings=False)
    c.masking.update(mixture="4m21", input_tokens=256, target_tokens=256)
    tokens_per_sample = 512
    c.batch_size = batch
    c.total_steps = steps_for_tokens(500e9, batch, tokens_per_sample)
    c.optimizer.update(base_lr=base_lr, warmup_steps=steps_for_tokens(10e9, batch, tokens_per_sample),
                       min_lr=0.0, clip_grad_norm=clip)
    c.log_every = 100
    c.checkpoint.update(every_steps=5000, keep=3)
    if arg in ("L", "XL"):
        c.mesh.update(data=-1, fsdp=8 if arg == "XL" else 4, tensor=1)
    return c
