"""Tokenizer quality: metrics per modality, codebook statistics, and a picture.

Metrics (originals vs decode(encode(originals)), in raw units):
  rgb       psnr (dB, per image on 0..255, averaged)
  depth     abs_rel (mean |d - d'| / d), delta1 (fraction with max(d/d', d'/d) < 1.25)
  normals   angular_error_deg (mean angle between unit normals)
  semseg    miou (mean over classes present in either map of the IoU over the whole set),
            pixel_accuracy
  features  cosine (mean cosine similarity over cells with a non-zero original descriptor),
            zero_cell_norm (mean decoded norm where the original cell is exactly zero)
  poses     joint_error_px (mean over joints of figures present in both), presence_accuracy,
            visibility_accuracy
  caption   roundtrip_exact (fraction decoded exactly), tokens_max / tokens_mean
and, for quantized tokenizers, codebook_usage (fraction of codes used by the set) and
perplexity (exp of the entropy of code frequencies).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from m4.data import visualize


# ---------------------------------------------------------------------------------- metrics
def codebook_stats(codes: np.ndarray, codebook_size: int) -> dict:
    counts = np.bincount(np.asarray(codes).reshape(-1), minlength=codebook_size)
    probs = counts / max(counts.sum(), 1)
    nz = probs[probs > 0]
    return {"codebook_usage": float((counts > 0).mean()),
            "perplexity": float(np.exp(-(nz * np.log(nz)).sum())),
            "codebook_size": int(codebook_size)}


def rgb_metrics(orig: np.ndarray, recon: np.ndarray) -> dict:
    diff = orig.astype(np.float64) - recon.astype(np.float64)
    mse = np.maximum((diff ** 2).mean(axis=(1, 2, 3)), 1e-10)
    return {"psnr": float(np.mean(10 * np.log10(255.0 ** 2 / mse)))}


def depth_metrics(orig: np.ndarray, recon: np.ndarray) -> dict:
    d, p = orig.astype(np.float64), np.maximum(recon.astype(np.float64), 1e-6)
    valid = d > 0
    d, p = d[valid], p[valid]
    ratio = np.maximum(d / p, p / d)
    return {"abs_rel": float(np.mean(np.abs(d - p) / d)), "delta1": float(np.mean(ratio < 1.25))}


def normals_metrics(orig: np.ndarray, recon: np.ndarray) -> dict:
    a = orig / np.maximum(np.linalg.norm(orig, axis=-1, keepdims=True), 1e-9)
    b = recon / np.maximum(np.linalg.norm(recon, axis=-1, keepdims=True), 1e-9)
    cos = np.clip((a * b).sum(-1), -1.0, 1.0)
    return {"angular_error_deg": float(np.degrees(np.arccos(cos)).mean())}


def semseg_metrics(orig: np.ndarray, recon: np.ndarray, num_classes: int) -> dict:
    o, r = orig.reshape(-1).astype(np.int64), recon.reshape(-1).astype(np.int64)
    confusion = np.bincount(o * num_classes + r, minlength=num_classes ** 2)
    confusion = confusion.reshape(num_classes, num_classes)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    iou = inter[present] / union[present]
    return {"miou": float(iou.mean()), "pixel_accuracy": float(inter.sum() / confusion.sum()),
            "iou_per_class": [round(float(x), 4) if p else None
                              for x, p in zip(np.where(present, inter / np.maximum(union, 1), 0),
                                              present)]}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1),
                                        1e-9)


def features_metrics(orig: np.ndarray, recon: np.ndarray, mean=None) -> dict:
    """`cosine` is over raw descriptors; as HOG values are non-negative even unrelated cells
    score well on it, so `cosine_centered` (descriptors minus the training mean) is reported
    too, a stricter measure of the same agreement."""
    o = orig.reshape(-1, orig.shape[-1]).astype(np.float64)
    r = recon.reshape(-1, recon.shape[-1]).astype(np.float64)
    live = np.linalg.norm(o, axis=-1) > 0
    out = {"cosine": float(_cosine(o[live], r[live]).mean()) if live.any() else float("nan"),
           "zero_cell_norm": float(np.linalg.norm(r[~live], axis=-1).mean())
           if (~live).any() else 0.0,
           "mse": float(((o - r) ** 2).mean())}
    if mean is not None:
        m = np.asarray(mean, np.float64)
        out["cosine_centered"] = float(_cosine(o - m, r - m).mean())
    return out


def pose_metrics(orig: np.ndarray, recon: np.ndarray) -> dict:
    present_o = np.any(orig != 0, axis=(-2, -1))                    # [B, F]
    present_r = np.any(recon != 0, axis=(-2, -1))
    both = present_o & present_r
    err = np.linalg.norm(orig[..., :2] - recon[..., :2], axis=-1)   # [B, F, J]
    vis_ok = (orig[..., 2] > 0.5) == (recon[..., 2] > 0.5)
    return {"joint_error_px": float(err[both].mean()) if both.any() else float("nan"),
            "joint_error_px_max": float(err[both].max()) if both.any() else float("nan"),
            "presence_accuracy": float((present_o == present_r).mean()),
            "visibility_accuracy": float(vis_ok[both].mean()) if both.any() else float("nan"),
            "figures": int(present_o.sum())}


def caption_metrics(texts: Sequence[str], decoded: Sequence[str], tokens: np.ndarray) -> dict:
    lengths = (np.asarray(tokens) != 0).sum(-1)
    return {"roundtrip_exact": float(np.mean([a == b for a, b in zip(texts, decoded)])),
            "tokens_max": int(lengths.max()), "tokens_mean": float(lengths.mean())}


def modality_metrics(spec, orig, recon) -> dict:
    """The quality metrics of one modality, from raw originals and raw reconstructions."""
    m = spec.modality
    if spec.normalization == "rgb_uint8":
        return rgb_metrics(orig, recon)
    if spec.normalization == "linear_range":
        return depth_metrics(orig, recon)
    if spec.normalization == "unit_vectors":
        return normals_metrics(orig, recon)
    if spec.normalization == "class_ids":
        return semseg_metrics(orig, recon, spec.num_classes)
    if spec.normalization == "standardize":
        return features_metrics(orig, recon, spec.norm_params.get("mean"))
    if spec.normalization == "pose_pixels":
        return pose_metrics(orig, recon)
    raise ValueError(f"no metrics for modality {m!r} ({spec.normalization})")


# The headline number of each modality and whether larger is better (benchmarks, summaries).
HEADLINE = {"rgb": ("psnr", True), "depth": ("delta1", True),
            "normals": ("angular_error_deg", False), "semseg": ("miou", True),
            "features": ("cosine", True), "poses": ("joint_error_px", False),
            "caption": ("roundtrip_exact", True)}


# ------------------------------------------------------------------------------------ pictures
def _tile(spec, value: np.ndarray, tile: int, rgb: np.ndarray | None) -> Image.Image:
    n = spec.normalization
    if n == "rgb_uint8":
        img = np.asarray(value, np.uint8)
    elif n == "linear_range":
        img = visualize.colorize_depth(value, *spec.value_range)
    elif n == "unit_vectors":
        img = visualize.colorize_normals(value)
    elif n == "class_ids":
        img = visualize.colorize_semseg(value)
    elif n == "standardize":
        return Image.fromarray(visualize.colorize_features(value, tile))
    elif n == "pose_pixels":
        base = (np.asarray(rgb, np.float64) * 0.5).astype(np.uint8) if rgb is not None else \
            np.zeros((spec.resolution, spec.resolution, 3), np.uint8)
        scale = tile / spec.resolution
        up = Image.fromarray(base).resize((tile, tile), Image.NEAREST)
        return visualize.draw_poses(up, value, scale=scale)
    else:
        raise ValueError(f"no picture for {spec.modality!r}")
    return Image.fromarray(img).resize((tile, tile), Image.NEAREST)


def comparison_grid(spec, originals, reconstructions, *, rgb=None, tile: int = 128,
                    columns: int = 8) -> Image.Image:
    """Pairs of rows: originals above their reconstructions, `columns` examples per row."""
    n = len(originals)
    rows = math.ceil(n / columns)
    gap = 4
    img = Image.new("RGB", (columns * (tile + gap) + gap, rows * 2 * (tile + gap) + gap),
                    "white")
    for i in range(n):
        r, c = divmod(i, columns)
        x = gap + c * (tile + gap)
        y = gap + r * 2 * (tile + gap)
        base = None if rgb is None else rgb[i]
        img.paste(_tile(spec, originals[i], tile, base), (x, y))
        img.paste(_tile(spec, reconstructions[i], tile, base), (x, y + tile + gap))
    return img


def text_grid(texts: Sequence[str], decoded: Sequence[str], width: int = 900) -> Image.Image:
    """Captions and their round trips, one pair per block, mismatches in red."""
    import textwrap

    font = ImageFont.load_default()
    lines: list[tuple[str, str]] = []
    for a, b in zip(texts, decoded):
        for w in textwrap.wrap("orig: " + a, 140):
            lines.append((w, "black"))
        for w in textwrap.wrap("back: " + b, 140):
            lines.append((w, "darkgreen" if a == b else "red"))
        lines.append(("", "black"))
    img = Image.new("RGB", (width, 12 * len(lines) + 10), "white")
    draw = ImageDraw.Draw(img)
    for k, (line, color) in enumerate(lines):
        draw.text((5, 5 + 12 * k), line, fill=color, font=font)
    return img


# --------------------------------------------------------------------------- whole artifact
def evaluate_tokenizer(tokenizer, n: int, *, seed: int | None = None, cache_dir=None,
                       show: int = 16, progress: bool = True) -> tuple[dict, Image.Image]:
    """Renders `n` held-out scenes (default seed: the config's eval seed), encodes and decodes
    them with `tokenizer`; returns (metrics, picture of originals over reconstructions)."""
    import time

    from m4.tokenizers import data as data_lib

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    config = tokenizer.config
    scene_cfg = data_lib.scene_config(config.data.scene)
    seed = config.data.eval_seed if seed is None else seed
    if seed == config.data.train_seed:
        raise ValueError(f"--seed {seed} is the training seed; evaluate on held-out scenes")
    scenes_data = data_lib.load_scenes(seed, n, scene_cfg, cache_dir, progress=progress)
    spec = tokenizer.spec
    out: dict = {"modality": spec.modality, "n": n, "seed": seed,
                 "vocab_size": spec.vocab_size, "content_hash": spec.content_hash}
    t0 = time.perf_counter()
    if spec.kind == "text":
        texts = scenes_data["caption"]
        tokens = tokenizer.encode(texts)
        decoded = tokenizer.decode(tokens)
        out.update(caption_metrics(texts, decoded, tokens))
        out["seconds"] = round(time.perf_counter() - t0, 3)
        return out, text_grid(texts[:show], decoded[:show])
    raw = np.asarray(scenes_data[spec.modality])
    tokens = tokenizer.encode(raw)
    recon = tokenizer.decode(tokens)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out.update(modality_metrics(spec, raw, recon))
    if spec.kind == "poses":
        codes = tokens[tokens > 0] - 1   # id 0 marks absent figures, not a code
        out.update(codebook_stats(codes, spec.vocab_size - 1))
    else:
        out.update(codebook_stats(tokens, spec.vocab_size))
    picture = comparison_grid(spec, raw[:show], recon[:show],
                              rgb=np.asarray(scenes_data["rgb"][:show]))
    return out, picture
