"""Pictures of generated modalities: one tile per value, and a grid of tiles per example.

How a value is drawn comes from its tokenizer's preprocessing spec (`normalization`), so any
modality name works: rgb_uint8 -> the image, linear_range -> a depth colour map, unit_vectors ->
normal colours, class_ids -> class colours, standardize -> an orientation/feature map,
pose_pixels -> skeletons (over the example's rgb when there is one). Without a tokenizer the
token grid itself is drawn (one colour per id).
"""

from __future__ import annotations

import textwrap
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from m4.data import visualize

KINDS_BY_NORMALIZATION = {
    "rgb_uint8": "rgb", "linear_range": "depth", "unit_vectors": "normals",
    "class_ids": "semseg", "standardize": "features", "pose_pixels": "poses", "text": "text",
}


def kind_of(tokenizer) -> str:
    """How to draw a modality: from its tokenizer's spec, 'tokens' without one."""
    spec = getattr(tokenizer, "spec", None)
    if spec is None:
        return "tokens"
    return KINDS_BY_NORMALIZATION.get(spec.normalization, "tokens")


def tile(kind: str, value: Any, size: int, background: np.ndarray | None = None) -> Image.Image:
    """One square picture of a value. `background`: the rgb image poses are drawn on."""
    def up(rgb: np.ndarray) -> Image.Image:
        return Image.fromarray(rgb).resize((size, size), Image.NEAREST)

    value = np.asarray(value) if kind != "text" else value
    if kind == "rgb":
        return up(np.asarray(value, np.uint8))
    if kind == "depth":
        return up(visualize.colorize_depth(value))
    if kind == "normals":
        return up(visualize.colorize_normals(value))
    if kind == "semseg":
        return up(visualize.colorize_semseg(value))
    if kind == "features":
        return Image.fromarray(visualize.colorize_features(value, size))
    if kind == "poses":
        if background is None:
            res = max(1, int(np.ceil(np.max(value[..., :2], initial=1.0))))
            background = np.zeros((res, res, 3), np.uint8)
        dimmed = (np.asarray(background, np.float64) * 0.55).astype(np.uint8)
        return visualize.draw_poses(dimmed, value, scale=size / dimmed.shape[1]).resize(
            (size, size), Image.NEAREST)
    if kind == "tokens" and value.ndim == 2:
        return up(visualize.colorize_semseg(value))
    # Sequences or 1-D tokens: the text (or ids) on a white tile.
    img = Image.new("RGB", (size, size), "white")
    text = value if isinstance(value, str) else " ".join(map(str, np.asarray(value).ravel()))
    draw = ImageDraw.Draw(img)
    for k, line in enumerate(textwrap.wrap(text, max(8, size // 7))[: size // 14]):
        draw.text((4, 4 + 14 * k), line, fill="black", font=visualize._font(12))
    return img


def grid(rows: Sequence[Sequence[tuple[str, Image.Image]]], captions: Sequence[str] = (),
         size: int = 128) -> Image.Image:
    """Rows of titled tiles (inputs, then outputs), a text line under each row."""
    if not rows:
        raise ValueError("grid: expected at least one row")
    font, small = visualize._font(14), visualize._font(12)
    gap, margin, title_h, line_h = 6, 8, 18, 14
    columns = max(len(r) for r in rows)
    width = 2 * margin + columns * size + (columns - 1) * gap
    chars = max(20, int((width - 2 * margin) / 6.5))
    wrapped = [textwrap.wrap(captions[i], chars) if i < len(captions) else []
               for i in range(len(rows))]
    heights = [title_h + size + 6 + line_h * len(w) + 8 for w in wrapped]
    img = Image.new("RGB", (width, 2 * margin + sum(heights)), "white")
    draw = ImageDraw.Draw(img)
    y = margin
    for row, lines, h in zip(rows, wrapped, heights):
        for c, (title, picture) in enumerate(row):
            x = margin + c * (size + gap)
            draw.text((x, y), title[:24], fill="black", font=font)
            img.paste(picture.resize((size, size), Image.NEAREST), (x, y + title_h))
        for k, line in enumerate(lines):
            draw.text((margin, y + title_h + size + 4 + k * line_h), line, fill=(20, 20, 20),
                      font=small)
        y += h
    return img
