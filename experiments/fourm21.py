"""The reference 4M-21 pre-training recipes (REFERENCE_4M.md section 8), sizes B, L and XL.

    m4 train --config experiments/fourm21.py:L --workdir gs://BUCKET/4m21_l \
        --config.data.shards=gs://BUCKET/tokens/4m21/train --distributed auto

256 input + 256 target tokens over the 4M-21 modalities with the 4M-21 mixture, global batch
4096, separate encoder/decoder modality embeddings, 500B tokens (10B warmup), bf16 compute with
fp32 master weights. The reference initialises 4M-21 from 4M-7 (use `m4 convert` + fine-tuning).
"""

from __future__ import annotations

from m4.train.defaults import reference_recipe

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


def get_config(arg: str = "B"):
    return reference_recipe(arg, RECIPES, modalities=MODALITIES, mixture="4m21", budget=256,
                            fsdp={"L": 4, "XL": 8}, where="experiments/fourm21.py",
                            share_modality_embeddings=False)
