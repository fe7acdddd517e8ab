"""eval.png: the matrix as a heatmap (rows: input sets, columns: targets).

Each cell shows its target's primary metric (large) and one secondary metric (small), on a colour
from red (bad) through yellow to green (good). Colours come from `GOODNESS`: per metric a fixed
(worst, best) pair mapped to 0 and 1, so a lower-is-better metric (angular error, joint error) is
green when low, and colours compare across columns and runs (a per-column min-max would paint the
best of several bad cells green). Cells without a value (input == target) are grey; a metric that
is undefined (NaN, e.g. no figure to match) shows "n/a" on white.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# metric -> (worst, best); values beyond are clipped. Joint error scales with the resolution.
GOODNESS: dict[str, tuple[float, float]] = {
    "psnr": (17.0, 32.0),          # another scene's image scores ~17 dB, a flat mean colour ~19
    "delta1": (0.0, 1.0),
    "angular_error_deg": (60.0, 0.0),
    "miou": (0.0, 1.0),
    "cosine": (0.8, 1.0),          # HOG cells are non-negative: the mean descriptor scores 0.80
    "attribute_f1": (0.0, 1.0),
}
POSE_WORST_FRACTION = 0.25         # joint error of a quarter of the image side is as bad as it gets
# Column headers: shorter names than the JSON keys.
LABELS = {"angular_error_deg": "angle error", "joint_error_px": "joint error",
          "attribute_f1": "attribute F1", "delta1": "delta < 1.25", "miou": "mIoU",
          "psnr": "PSNR", "cosine": "cosine"}
# target -> (secondary metric, label, format)
SECONDARY: dict[str, tuple[str, str, str]] = {
    "depth": ("abs_rel", "abs rel", "{:.3f}"),
    "semseg": ("pixel_accuracy", "pix acc", "{:.3f}"),
    "caption": ("precision", "P", "{:.2f}"),
    "poses": ("figure_recall", "fig recall", "{:.2f}"),
    "features": ("cosine_centered", "centered", "{:.3f}"),
}

RED, YELLOW, GREEN = (np.array(c, np.float64) for c in
                      ((215, 48, 39), (254, 224, 139), (26, 152, 80)))
GREY = (200, 200, 200)


def goodness(metric: str, value: float, resolution: int = 64) -> float:
    """0 (worst) .. 1 (best) of a primary metric value."""
    if metric == "joint_error_px":
        worst, best = POSE_WORST_FRACTION * resolution, 0.0
    else:
        worst, best = GOODNESS.get(metric, (0.0, 1.0))
    return float(np.clip((value - worst) / (best - worst), 0.0, 1.0))


def colour(g: float) -> tuple[int, int, int]:
    """Red -> yellow -> green."""
    lo, hi, t = (RED, YELLOW, g / 0.5) if g < 0.5 else (YELLOW, GREEN, (g - 0.5) / 0.5)
    return tuple(int(round(v)) for v in lo + (hi - lo) * t)


def _format(metric: str, value: float) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if metric in ("psnr", "angular_error_deg", "joint_error_px"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def render_heatmap(result: dict, *, cell_w: int = 132, cell_h: int = 58) -> Image.Image:
    """The heatmap of an `evaluate_matrix` result."""
    rows, targets = result["rows"], result["targets"]
    primary = result["primary"]
    resolution = result["settings"]["scenes"]["config"]["resolution"]
    big, small, title_font = (ImageFont.load_default(size=s) for s in (18, 12, 15))
    label_w, header_h, top = 120, 58, 52
    baselines = result.get("baselines", {})
    footer_h = 22 * (1 + len(baselines))
    width = label_w + cell_w * len(targets) + 10
    height = top + header_h + cell_h * len(rows) + footer_h
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)

    s = result["settings"]
    steps = "default (8)" if s.get("steps") is None else s["steps"]
    temperature = "default" if s.get("temperature") is None else s["temperature"]
    draw.text((8, 6), "m4 eval: target (columns) generated from input (rows)",
              fill="black", font=title_font)
    draw.text((8, 28), f"{s['n']} held-out scenes at {resolution}x{resolution}, MaskGIT steps "
                       f"{steps}, temperature {temperature}, seed {s['seed']}; "
                       f"colour: red = bad .. green = good",
              fill=(80, 80, 80), font=small)
    for j, t in enumerate(targets):
        x = label_w + j * cell_w
        p = primary[t]
        unit = f" ({p['unit']})" if p.get("unit") else ""
        draw.text((x + 6, top + 4), t, fill="black", font=big)
        draw.text((x + 6, top + 26), f"{LABELS.get(p['name'], p['name'])}{unit}",
                  fill=(60, 60, 60), font=small)
        draw.text((x + 6, top + 38), "higher = better" if p["higher_is_better"]
                  else "lower = better", fill=(110, 110, 110), font=small)
    y0 = top + header_h
    for i, row in enumerate(rows):
        y = y0 + i * cell_h
        draw.text((8, y + cell_h // 2 - 10), row, fill="black", font=big)
        for j, t in enumerate(targets):
            x = label_w + j * cell_w
            box = (x + 1, y + 1, x + cell_w - 1, y + cell_h - 1)
            cell = result["cells"][row][t]
            if cell is None:
                draw.rectangle(box, fill=GREY)
                continue
            metric, value = primary[t]["name"], cell["value"]
            finite = value is not None and math.isfinite(value)
            fill = colour(goodness(metric, value, resolution)) if finite else (255, 255, 255)
            draw.rectangle(box, fill=fill, outline=(255, 255, 255))
            draw.text((x + 8, y + 8), _format(metric, value), fill="black", font=big)
            key, label, fmt = SECONDARY.get(t, ("", "", ""))
            second = cell["metrics"].get(key)
            if isinstance(second, (int, float)) and math.isfinite(second):
                draw.text((x + 8, y + 34), f"{label} {fmt.format(second)}", fill=(40, 40, 40),
                          font=small)
    y = y0 + cell_h * len(rows) + 6
    for name, b in baselines.items():
        draw.text((8, y), f"{name}: {b['metric']} {_format(b['metric'], b['caption'])} from the "
                          f"scene's caption vs {_format(b['metric'], b['shuffled_caption'])} "
                          f"from another scene's caption (caption-blind baseline)",
                  fill="black", font=small)
        y += 22
    return img


__all__ = ["GOODNESS", "colour", "goodness", "render_heatmap"]
