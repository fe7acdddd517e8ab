"""RGB tokenizer: 64x64x3 uint8 -> 8x8 tokens from a 1024-code cosine VQ codebook.

    m4 tokenizer train --config tokenizers/rgb.py --workdir runs/tok_rgb
    m4 tokenizer train --config tokenizers/rgb.py:tiny --workdir /tmp/tok_rgb   # seconds
Loss: MSE on pixels in [-1, 1] (as the reference).
"""

from m4.tokenizers.configs import image_config


def get_config(arg=None):
    config = image_config("rgb", arg)
    if arg != "tiny":
        config.quantizer.codebook_size = 1024
        config.loss.kind = "mse"
    return config
