"""Pictures of the modalities: colouring helpers and a preview grid of samples.

Used by `m4 data preview` and by the generation grids, so every helper accepts what a model may
produce as well as the renderer's exact data (any depth range, any class id, missing keys).
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from m4.data.scenes import CLASS_NAMES, DEPTH_MAX, SKELETON

# One colour per class of CLASS_NAMES (floor, wall, sphere, box, cylinder, person): muted for
# the background classes, saturated and far apart for the things.
SEMSEG_PALETTE: tuple[tuple[int, int, int], ...] = (
    (120, 96, 72), (178, 178, 196), (228, 72, 72), (64, 140, 235), (70, 190, 90), (245, 200, 40))
# Skeleton colours per figure row.
FIGURE_COLORS = ((255, 64, 160), (0, 230, 255), (255, 255, 255), (255, 150, 0))
# Depth colour map anchors (near = bright yellow, far = dark blue), interpolated linearly.
_DEPTH_ANCHORS = np.array([(253, 231, 37), (94, 201, 98), (33, 145, 140), (59, 82, 139),
                           (68, 1, 84)], np.float64)
COLUMNS = ("rgb", "depth", "normals", "semseg", "poses", "features")


def colorize_depth(depth: np.ndarray, vmin: float | None = None,
                   vmax: float | None = None) -> np.ndarray:
    """float [H, W] -> uint8 [H, W, 3]; near is bright, far is dark. Default range: the image's
    own finite min and max; non-finite values are black."""
    d = np.asarray(depth, np.float64)
    finite = np.isfinite(d)
    lo = float(d[finite].min()) if vmin is None and finite.any() else (vmin or 0.0)
    hi = float(d[finite].max()) if vmax is None and finite.any() else (vmax or 1.0)
    x = np.clip((np.where(finite, d, lo) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    pos = x * (len(_DEPTH_ANCHORS) - 1)
    i = np.minimum(pos.astype(np.int64), len(_DEPTH_ANCHORS) - 2)
    w = (pos - i)[..., None]
    rgb = _DEPTH_ANCHORS[i] * (1 - w) + _DEPTH_ANCHORS[i + 1] * w
    return np.where(finite[..., None], rgb + 0.5, 0).astype(np.uint8)


def colorize_normals(normals: np.ndarray) -> np.ndarray:
    """Camera-frame normals (x right, y down, z forward) [H, W, 3] -> uint8 [H, W, 3].

    Shown in the usual normal-map colours (red = right, green = up, blue = towards the viewer),
    i.e. (x, -y, -z) mapped from [-1, 1] to [0, 255]."""
    n = np.nan_to_num(np.asarray(normals, np.float64)) * np.array([1.0, -1.0, -1.0])
    return (np.clip((n + 1.0) * 127.5, 0, 255) + 0.5).astype(np.uint8)


def semseg_color(class_id: int) -> tuple[int, int, int]:
    if 0 <= class_id < len(SEMSEG_PALETTE):
        return SEMSEG_PALETTE[class_id]
    # Ids beyond the palette (other datasets, model outputs) get a fixed scrambled colour.
    h = (class_id * 2654435761) & 0xFFFFFF
    return (h >> 16) & 255, (h >> 8) & 255, h & 255


def colorize_semseg(semseg: np.ndarray) -> np.ndarray:
    """Class ids [H, W] -> uint8 [H, W, 3] through SEMSEG_PALETTE."""
    ids = np.asarray(semseg).astype(np.int64)
    table = np.array([semseg_color(c) for c in range(max(int(ids.max(initial=0)) + 1,
                                                          len(SEMSEG_PALETTE)))], np.uint8)
    return table[np.clip(ids, 0, None)]


def semseg_legend(class_names: Sequence[str] = CLASS_NAMES, font_size: int = 14) -> Image.Image:
    """A one-line legend: a colour swatch and the name of every class."""
    font = _font(font_size)
    pad, swatch = 6, font_size
    widths = [swatch + 4 + _text_width(font, name) + 3 * pad for name in class_names]
    img = Image.new("RGB", (sum(widths) + pad, font_size + 2 * pad), "white")
    draw = ImageDraw.Draw(img)
    x = pad
    for i, (name, w) in enumerate(zip(class_names, widths)):
        draw.rectangle([x, pad, x + swatch, pad + swatch], fill=semseg_color(i), outline="black")
        draw.text((x + swatch + 4, pad), name, fill="black", font=font)
        x += w
    return img


def colorize_features(features: np.ndarray, tile: int) -> np.ndarray:
    """An orientation-histogram map [h, w, C] (C bins over 0..180 degrees, as scene features)
    -> uint8 [tile, tile, 3]: per cell, one line along each orientation's edge direction, as
    bright as its bin (scaled so the strongest bin of the map is white)."""
    f = np.nan_to_num(np.asarray(features, np.float64))
    h, w, c = f.shape
    img = Image.new("RGB", (tile, tile), "black")
    draw = ImageDraw.Draw(img)
    peak = max(float(f.max()), 1e-9)
    cell_h, cell_w = tile / h, tile / w
    half = 0.45 * min(cell_h, cell_w)
    for b in np.argsort(f.reshape(-1), kind="stable"):  # weakest first: strongest on top
        value = f.reshape(-1)[b] / peak
        if value <= 0.05:
            continue
        i, j, k = np.unravel_index(b, f.shape)
        # Bin k is the gradient direction; the edge runs perpendicular to it.
        angle = math.pi * (k + 0.5) / c + math.pi / 2
        cy, cx = (i + 0.5) * cell_h, (j + 0.5) * cell_w
        dx, dy = half * math.cos(angle), -half * math.sin(angle)
        level = int(255 * value)
        draw.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=(level, level, level), width=2)
    return np.asarray(img)


def draw_poses(image: np.ndarray | Image.Image, poses: np.ndarray, num_figures: int | None = None,
               scale: float = 1.0, skeleton: Sequence[tuple[int, int]] = SKELETON) -> Image.Image:
    """Skeletons drawn on (a copy of) `image`. poses [F, J, 3] = (x, y, visible) in pixel
    coordinates of the original resolution; `scale` maps them onto `image` (pass an image
    enlarged `scale` times, so that thin figures stay readable). Rows >= num_figures (default:
    rows that are not all zero) are skipped. Visible joints are filled dots, occluded ones
    hollow; a bone is solid when both its joints are visible, thin and grey otherwise."""
    img = image.copy() if isinstance(image, Image.Image) else Image.fromarray(image)
    img = img.convert("RGB")
    draw = ImageDraw.Draw(img)
    poses = np.asarray(poses, np.float64)
    count = num_figures if num_figures is not None else int(np.any(poses != 0, (1, 2)).sum())
    width = max(1, round(scale * 0.6))
    radius = max(1.5, 0.55 * scale)
    for f in range(min(count, len(poses))):
        color = FIGURE_COLORS[f % len(FIGURE_COLORS)]
        xy = poses[f, :, :2] * scale
        vis = poses[f, :, 2] > 0.5
        for a, b in skeleton:
            both = vis[a] and vis[b]
            draw.line([*xy[a], *xy[b]], fill=color if both else (90, 90, 90),
                      width=width + 1 if both else 1)
        for (x, y), v in zip(xy, vis):
            box = [x - radius, y - radius, x + radius, y + radius]
            draw.ellipse(box, fill=color if v else None, outline="black" if v else color)
    return img


def preview_grid(samples: list[dict[str, Any]], config: Any = None, tile: int = 160,
                 depth_range: tuple[float, float] | None = (1.0, DEPTH_MAX)) -> Image.Image:
    """Every modality of each sample in a row (rgb, depth, normals, semseg, poses over rgb,
    features), the caption under the row, column titles and the class legend on top.

    A missing modality shows as an empty grey tile, so partial (generated) samples work too.
    `config` (a SceneConfig) is accepted for symmetry with the other data tools; the layout
    only needs the samples. depth_range=None colours each depth map by its own range.
    """
    del config  # every size below comes from the samples themselves
    if not samples:
        raise ValueError("preview_grid: expected at least one sample, got none")
    font, small = _font(15), _font(13)
    gap, margin = 6, 10
    width = 2 * margin + len(COLUMNS) * tile + (len(COLUMNS) - 1) * gap
    chars = max(20, int((width - 2 * margin) / (0.56 * 13)))
    captions = [textwrap.wrap(str(s.get("caption", "(no caption)")), chars) or [""]
                for s in samples]
    legend = semseg_legend()
    header = legend.height + 26
    line_h = 16
    row_heights = [tile + 8 + line_h * len(c) + 14 for c in captions]
    img = Image.new("RGB", (max(width, legend.width + 2 * margin),
                            header + sum(row_heights) + margin), "white")
    draw = ImageDraw.Draw(img)
    img.paste(legend, (margin, 2))
    for c, name in enumerate(COLUMNS):
        x = margin + c * (tile + gap)
        draw.text((x + (tile - _text_width(font, name)) // 2, legend.height + 6), name,
                  fill="black", font=font)
    y = header
    for sample, lines, row_h in zip(samples, captions, row_heights):
        for c, name in enumerate(COLUMNS):
            x = margin + c * (tile + gap)
            img.paste(_tile(sample, name, tile, depth_range), (x, y))
        for k, line in enumerate(lines):
            draw.text((margin, y + tile + 6 + k * line_h), line, fill=(20, 20, 20), font=small)
        draw.line([margin, y + row_h - 5, img.width - margin, y + row_h - 5], fill=(210, 210, 210))
        y += row_h
    return img


def _tile(sample: dict, name: str, tile: int, depth_range) -> Image.Image:
    def up(rgb: np.ndarray) -> Image.Image:
        return Image.fromarray(rgb).resize((tile, tile), Image.NEAREST)

    if sample.get(name) is None:
        blank = Image.new("RGB", (tile, tile), (225, 225, 225))
        ImageDraw.Draw(blank).text((tile // 2 - 18, tile // 2 - 8), "none", fill=(120, 120, 120),
                                   font=_font(14))
        return blank
    if name == "poses":
        # Over a dimmed copy of the rgb, so the skeleton colours stand out; without an rgb
        # (e.g. generated poses), over black of the size of the other image modalities.
        if sample.get("rgb") is not None:
            base = (np.asarray(sample["rgb"], np.float64) * 0.55).astype(np.uint8)
        else:
            size = next((np.shape(sample[k])[0] for k in ("depth", "semseg", "normals")
                         if sample.get(k) is not None), 64)
            base = np.zeros((size, size, 3), np.uint8)
        return draw_poses(up(base), sample["poses"], sample.get("num_figures"),
                          scale=tile / base.shape[1])
    value = np.asarray(sample[name])
    if name == "rgb":
        return up(value.astype(np.uint8))
    if name == "depth":
        lo, hi = depth_range if depth_range is not None else (None, None)
        return up(colorize_depth(value, lo, hi))
    if name == "normals":
        return up(colorize_normals(value))
    if name == "semseg":
        return up(colorize_semseg(value))
    return Image.fromarray(colorize_features(value, tile))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(font: ImageFont.ImageFont, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)
