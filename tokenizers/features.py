"""Feature-map tokenizer: the 8x8x9 HOG map of a 64x64 scene -> 8x8 tokens (one per cell).

    m4 tokenizer train --config tokenizers/features.py --workdir runs/tok_features
Like the reference's CLIP/DINO tokenizers, the "patch" is one feature cell (patch_size 1), so
the network works at the token resolution only. Inputs are standardised per channel with
statistics measured on the training data and stored in the artifact. Loss: smooth-L1.
No flips: mirroring would also permute the orientation bins.
"""

from m4.tokenizers.configs import image_config


def get_config(arg=None):
    config = image_config("features", arg)
    config.data.flip = False
    config.loss.kind = "smooth_l1"
    config.loss.beta = 0.1
    config.model.update(patch_size=1, space_to_depth=1, widths=(256,), blocks_per_stage=2,
                        mid_blocks=0)
    if arg == "tiny":
        config.model.widths = (16,)
        config.model.blocks_per_stage = 1
    else:
        config.quantizer.codebook_size = 1024
    return config
