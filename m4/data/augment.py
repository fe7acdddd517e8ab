"""Aligned crops of raw samples, applied identically to every modality.

As the reference's pre-tokenization (REFERENCE_4M.md 4.3): K crop settings per sample, the first
the whole image, the others random resized crops (scale (0.8, 1), aspect ratio (3/4, 4/3)),
each resized back to the full resolution. Settings are rows (top, left, height, width, flip) in
pixels, drawn from (seed, sample index) only, so a sample gets the same crops in any process.

Horizontal flips are off by default for the built-in scenes: their captions state left/right
positions and list objects left to right, so a mirrored image would contradict its caption.

Per modality: rgb and normals are resampled bilinearly (normals re-normalised), depth and semseg
by nearest neighbour (interpolating depth across an object edge would invent surfaces that do not
exist; classes cannot be interpolated), features recomputed from the cropped RGB (they are a
function of it), pose joints mapped through the same transform (a joint that leaves the crop
becomes invisible and is clamped to the image). The caption is unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from m4.data.scene_features import hog_features
from m4.data.scene_layout import JOINT_NAMES

# A mirrored figure's left arm is where its right arm was: swap the joint rows on flips.
_MIRROR = np.asarray([JOINT_NAMES.index(n.replace("left_", "#").replace("right_", "left_")
                                        .replace("#", "right_")) for n in JOINT_NAMES])

CROP_FIELDS = ("top", "left", "height", "width", "flip")


def crop_settings(seed: int, index: int, resolution: int, crops: int, *,
                  scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), flip_prob: float = 0.0) -> np.ndarray:
    """float64 [crops, 5] rows (top, left, height, width, flip); row 0 is the identity."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0x43524F50]))
    rows = [(0.0, 0.0, float(resolution), float(resolution), 0.0)]
    area = resolution * resolution
    for _ in range(crops - 1):
        for _attempt in range(10):
            target = area * rng.uniform(*scale)
            aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
            w = math.sqrt(target * aspect)
            h = math.sqrt(target / aspect)
            if w <= resolution and h <= resolution:
                break
        else:
            h = w = float(resolution)
        top = rng.uniform(0, resolution - h)
        left = rng.uniform(0, resolution - w)
        flip = float(rng.uniform() < flip_prob)
        rows.append((top, left, h, w, flip))
    return np.asarray(rows, np.float64)


def _resample(channel: np.ndarray, box, size: int, method) -> np.ndarray:
    img = Image.fromarray(channel.astype(np.float32), mode="F")
    return np.asarray(img.resize((size, size), method, box=box), np.float32)


def apply_crop(sample: dict[str, Any], setting: np.ndarray, *, feature_patch: int | None = None,
               feature_orientations: int | None = None) -> dict[str, Any]:
    """One crop of a raw sample (keys of `scenes.render`); unknown keys pass through."""
    top, left, h, w, flip = (float(v) for v in setting)
    identity = top == 0 and left == 0 and flip == 0 and "rgb" in sample and \
        h == sample["rgb"].shape[0] and w == sample["rgb"].shape[1]
    if identity:
        return dict(sample)
    out = dict(sample)
    box = (left, top, left + w, top + h)

    def spatial(arr: np.ndarray, method) -> np.ndarray:
        size = arr.shape[0]
        chans = arr[..., None] if arr.ndim == 2 else arr
        res = np.stack([_resample(chans[..., c], box, size, method)
                        for c in range(chans.shape[-1])], -1)
        res = res[..., 0] if arr.ndim == 2 else res
        return res[:, ::-1] if flip else res

    if "rgb" in sample:
        out["rgb"] = np.clip(np.rint(spatial(sample["rgb"], Image.BILINEAR)), 0, 255).astype(np.uint8)
    if "depth" in sample:
        out["depth"] = spatial(sample["depth"], Image.NEAREST).astype(np.float32)
    if "semseg" in sample:
        out["semseg"] = spatial(sample["semseg"], Image.NEAREST).astype(sample["semseg"].dtype)
    if "normals" in sample:
        n = spatial(sample["normals"], Image.BILINEAR)
        if flip:
            n[..., 0] = -n[..., 0]   # mirrored surfaces face the other way along x
        n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
        out["normals"] = n.astype(np.float32)
    if "features" in sample:
        if feature_patch is None or "rgb" not in out:
            raise ValueError("apply_crop: features need the rgb of the crop and feature_patch / "
                             "feature_orientations to recompute them")
        out["features"] = hog_features(out["rgb"], feature_patch, feature_orientations)
    if "poses" in sample:
        out["poses"] = _crop_poses(sample["poses"], top, left, h, w, flip,
                                   size=sample["rgb"].shape[0] if "rgb" in sample else None)
    return out


def _crop_poses(poses: np.ndarray, top, left, h, w, flip, size) -> np.ndarray:
    poses = np.array(poses, np.float32, copy=True)      # [F, J, 3] (x, y, visible)
    if size is None:
        raise ValueError("apply_crop: poses need rgb in the sample to know the image size")
    x = (poses[..., 0] - left) * size / w
    y = (poses[..., 1] - top) * size / h
    if flip:
        x = size - x
        x, y, poses = x[:, _MIRROR], y[:, _MIRROR], poses[:, _MIRROR]
    inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    present = np.any(poses != 0, axis=-1)               # padded rows stay all zero
    poses[..., 0] = np.where(present, np.clip(x, 0, size), 0)
    poses[..., 1] = np.where(present, np.clip(y, 0, size), 0)
    poses[..., 2] = np.where(inside, poses[..., 2], 0)
    return poses
