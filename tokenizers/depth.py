"""Depth tokenizer: 64x64 float32 metres -> 8x8 tokens.

    m4 tokenizer train --config tokenizers/depth.py --workdir runs/tok_depth
Normalisation: [0, DEPTH_MAX] metres mapped linearly to [-1, 1] (the spec stores the range).
Loss: smooth-L1 (as the reference).
"""

from m4.tokenizers.configs import image_config


def get_config(arg=None):
    config = image_config("depth", arg)
    config.loss.kind = "smooth_l1"
    config.loss.beta = 0.05
    if arg != "tiny":
        config.quantizer.codebook_size = 1024
    return config
