"""Pixel-patch inputs: how raw uint8 images become the float patches a `pixels` modality reads.

Token shards store pixel patches as uint8 (4x smaller than float32, and exact); the masker and
the generation API turn them into model inputs with `normalize`, so training and generation can
never disagree on the scaling. RGB uses the ImageNet mean/std as the reference's `rgb@224` input
does (a converted reference model reads m4's pixel inputs as it read its own); other channel
counts are scaled to [-1, 1].
"""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32)


class PixelError(ValueError):
    pass


def normalize(values: np.ndarray, channels: int, *, where: str = "pixels") -> np.ndarray:
    """uint8 values whose last axis interleaves `channels` (an image [..., C] or patches
    [..., p*p*C] in (ph, pw, c) order) -> float32 model inputs of the same shape."""
    values = np.asarray(values)
    if values.dtype != np.uint8:
        raise PixelError(f"{where}: expected uint8 pixel values, got dtype {values.dtype}")
    if channels < 1 or values.shape[-1] % channels:
        raise PixelError(f"{where}: last axis {values.shape[-1]} is not a multiple of "
                         f"{channels} channels")
    x = values.astype(np.float32).reshape(*values.shape[:-1], -1, channels) / 255.0
    if channels == 3:
        x = (x - IMAGENET_MEAN) / IMAGENET_STD
    else:
        x = x * 2.0 - 1.0
    return x.reshape(values.shape)


def channels_of(spec) -> int:
    """Channels of a `pixels` spec (patch_dim / patch_size^2; 3 when patch_size is unknown)."""
    return spec.channels if spec.patch_size else 3
