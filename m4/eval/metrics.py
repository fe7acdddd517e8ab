"""Metrics of generated modalities against the exact ground truth of the built-in scenes.

One headline metric per target (`PRIMARY`: name, direction, unit) plus secondary ones:
  rgb       psnr (dB, per image on 0..255, averaged)
  depth     delta1 (fraction of pixels with max(d/d', d'/d) < 1.25); abs_rel (mean |d - d'| / d)
  normals   angular_error_deg (mean angle between unit normals, degrees)
  semseg    miou (over the classes present in the ground truth or the prediction, IoU pooled
            over the whole set); pixel_accuracy
  features  cosine (mean over cells with a non-zero true descriptor); cosine_centered
  poses     joint_error_px (mean pixel distance over the visible joints of matched figures, see
            `pose_metrics`); figure_precision, figure_recall, count_accuracy
  caption   attribute_f1 (`caption_score.score_captions`); precision, recall and components
The image-like metrics are the tokenizers' reconstruction metrics (`m4.tokenizers.evaluate`), so a
generated map and a tokenizer round trip are measured the same way.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from m4.eval.caption_score import score_captions
from m4.tokenizers import evaluate as tokenizer_metrics


@dataclasses.dataclass(frozen=True)
class Primary:
    """The headline metric of a target modality."""

    name: str
    higher_is_better: bool
    unit: str = ""


PRIMARY: dict[str, Primary] = {
    "rgb": Primary("psnr", True, "dB"),
    "depth": Primary("delta1", True),
    "normals": Primary("angular_error_deg", False, "deg"),
    "semseg": Primary("miou", True),
    "features": Primary("cosine", True),
    "poses": Primary("joint_error_px", False, "px"),
    "caption": Primary("attribute_f1", True),
}


class MetricError(ValueError):
    pass


def pose_metrics(truth: np.ndarray, pred: np.ndarray) -> dict:
    """Joint error with a person matching. truth, pred: float [B, F, J, 3] (x, y, visible); a
    figure is present when any of its values is non-zero (the tokenizers' convention).

    Per scene, the present true and predicted figures are matched one to one (as many pairs as
    the smaller count) minimising the summed cost, a pair's cost being the mean pixel distance
    over the true figure's visible joints (all joints if none is visible); F <= 3, so every
    assignment is tried. joint_error_px: mean distance over the visible true joints of all
    matched pairs (NaN if nothing was matched). Unmatched figures do not enter the error; they
    lower figure_recall (matched / true figures) or figure_precision (matched / predicted).
    visibility_accuracy: predicted visible flag == true flag, over the joints of matched pairs.
    """
    truth, pred = np.asarray(truth, np.float64), np.asarray(pred, np.float64)
    if truth.shape != pred.shape or truth.ndim != 4 or truth.shape[-1] != 3:
        raise MetricError(f"poses: expected truth and prediction [B, F, J, 3] of one shape, got "
                          f"{list(truth.shape)} and {list(pred.shape)}")
    errors: list[np.ndarray] = []
    vis_ok: list[np.ndarray] = []
    n_true = n_pred = n_matched = counts_ok = 0
    for t_scene, p_scene in zip(truth, pred):
        t_figs = [f for f in t_scene if np.any(f != 0)]
        p_figs = [f for f in p_scene if np.any(f != 0)]
        n_true, n_pred = n_true + len(t_figs), n_pred + len(p_figs)
        counts_ok += len(t_figs) == len(p_figs)
        if not t_figs or not p_figs:
            continue
        dist = np.array([[np.linalg.norm(t[:, :2] - p[:, :2], axis=-1) for p in p_figs]
                         for t in t_figs])                                     # [T, P, J]
        visible = np.array([t[:, 2] > 0.5 for t in t_figs])                    # [T, J]
        visible = np.where(visible.any(axis=1, keepdims=True), visible, True)
        cost = (dist * visible[:, None]).sum(-1) / visible.sum(-1)[:, None]    # [T, P]
        pairs = _best_assignment(cost)
        n_matched += len(pairs)
        for ti, pi in pairs:
            errors.append(dist[ti, pi][visible[ti]])
            vis_ok.append((t_figs[ti][:, 2] > 0.5) == (p_figs[pi][:, 2] > 0.5))
    err = np.concatenate(errors) if errors else np.zeros((0,))
    return {
        "joint_error_px": float(err.mean()) if err.size else float("nan"),
        "joint_error_px_median": float(np.median(err)) if err.size else float("nan"),
        "figure_recall": float(n_matched / n_true) if n_true else float("nan"),
        "figure_precision": float(n_matched / n_pred) if n_pred else float("nan"),
        "count_accuracy": float(counts_ok / len(truth)),
        "visibility_accuracy": float(np.concatenate(vis_ok).mean()) if vis_ok else float("nan"),
        "figures": int(n_true), "matched_joints": int(err.size),
    }


def _best_assignment(cost: np.ndarray) -> list[tuple[int, int]]:
    """Row-column pairs (min(T, P) of them) of least total cost, by trying every assignment."""
    t, p = cost.shape
    best, best_pairs = np.inf, []
    if t <= p:
        for cols in itertools.permutations(range(p), t):
            total = cost[np.arange(t), cols].sum()
            if total < best:
                best, best_pairs = total, list(zip(range(t), cols))
    else:
        for rows in itertools.permutations(range(t), p):
            total = cost[rows, np.arange(p)].sum()
            if total < best:
                best, best_pairs = total, list(zip(rows, range(p)))
    return best_pairs


def target_metrics(modality: str, truth: Any, pred: Any, tokenizer_spec=None) -> dict:
    """All metrics of one target over the evaluated set: truth and prediction stacked over scenes
    (captions: lists of str). `tokenizer_spec` (the target tokenizer's PreprocessSpec) gives the
    semseg class count and the features' training mean; the scenes' defaults otherwise."""
    if modality not in PRIMARY:
        raise MetricError(f"target {modality!r}: no metric (known: {sorted(PRIMARY)})")
    if modality == "caption":
        return score_captions(list(pred), list(truth))
    if modality == "poses":
        return pose_metrics(truth, pred)
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise MetricError(f"target {modality!r}: truth {list(truth.shape)} and prediction "
                          f"{list(pred.shape)} differ in shape")
    if modality == "rgb":
        return tokenizer_metrics.rgb_metrics(truth, pred)
    if modality == "depth":
        return tokenizer_metrics.depth_metrics(truth, pred)
    if modality == "normals":
        return tokenizer_metrics.normals_metrics(truth, pred)
    if modality == "semseg":
        from m4.data.scenes import CLASS_NAMES

        classes = getattr(tokenizer_spec, "num_classes", None) or len(CLASS_NAMES)
        return tokenizer_metrics.semseg_metrics(truth, pred, classes)
    mean = (getattr(tokenizer_spec, "norm_params", None) or {}).get("mean")
    return tokenizer_metrics.features_metrics(truth, pred, mean)


def primary_value(modality: str, metrics: dict) -> float:
    return float(metrics[PRIMARY[modality].name])


def is_better(modality: str, a: float, b: float) -> bool:
    """Whether value a of the target's primary metric is better than b."""
    return a > b if PRIMARY[modality].higher_is_better else a < b


__all__ = ["MetricError", "PRIMARY", "Primary", "is_better", "pose_metrics", "primary_value",
           "target_metrics"]

