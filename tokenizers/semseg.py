"""Semantic-segmentation tokenizer: 64x64 uint8 class ids -> 8x8 tokens.

    m4 tokenizer train --config tokenizers/semseg.py --workdir runs/tok_semseg
Classes are embedded per pixel on the way in; the decoder predicts per-pixel class logits,
trained with cross-entropy (as the reference), weighted per class by 1/sqrt(frequency): thin,
rare classes (the figures' limbs) would otherwise be smoothed away. A smaller codebook suffices
for label maps.
"""

from m4.tokenizers.configs import image_config


def get_config(arg=None):
    config = image_config("semseg", arg)
    config.loss.kind = "ce"
    config.loss.class_weighting = "sqrt_inverse_frequency"
    if arg != "tiny":
        config.quantizer.codebook_size = 512
    return config
