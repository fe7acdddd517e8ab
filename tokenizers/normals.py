"""Surface-normals tokenizer: 64x64x3 unit vectors -> 8x8 tokens.

    m4 tokenizer train --config tokenizers/normals.py --workdir runs/tok_normals
Loss: MSE on the vectors (as the reference); decoded vectors are renormalised to unit length.
"""

from m4.tokenizers.configs import image_config


def get_config(arg=None):
    config = image_config("normals", arg)
    config.loss.kind = "mse"
    if arg != "tiny":
        config.quantizer.codebook_size = 1024
    return config
