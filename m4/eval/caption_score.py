"""Caption attribute accuracy: does a generated caption name the right objects, in the right places?

Both captions are read with `m4.data.scene_captions.parse`. A ground-truth caption of a built-in
scene lists every visible entity exactly once ("a SIZE COLOR KIND at the DEPTH SIDE"), so its
parse is the exact ground truth; a generated caption yields one *mention* per entity phrase that
follows the grammar (text that does not is skipped, never an error).

Definition (micro-averaged over all objects and mentions of the evaluated set):
- A mention is *correct* when an as yet unmatched ground-truth object of the same scene has the
  same colour, kind, depth word (front/back) and side word (left/center/right). Size is not
  required (it is reported separately). Colours are unique within a scene, so a mention can match
  at most one object; a repeated mention of an object counts as correct once, the repeats as wrong.
- recall    = correct mentions / ground-truth objects
- precision = correct mentions / all mentions (hallucinated or misdescribed objects lower it)
- attribute_f1 = 2 * precision * recall / (precision + recall) (0 when both are 0): the headline
  "caption attribute accuracy".
Components reported with it, for diagnosis:
- color_recall: fraction of ground-truth objects whose colour is mentioned at all;
- kind_accuracy, depth_accuracy, side_accuracy, size_accuracy: over the ground-truth objects whose
  colour is mentioned, the fraction whose (first) mention with that colour has the right word;
- hallucination_rate: fraction of mentions whose colour is not in the scene;
- count_accuracy: fraction of scenes with exactly as many mentions as objects;
- exact: fraction of scenes described perfectly (every object correct, no other mention);
- parsed: fraction of generated captions with at least one mention;
- relation_recall / relation_precision: relations ("the red sphere is left of the blue box") of
  the ground truth found in / of the generation present in the ground truth.
"""

from __future__ import annotations

from typing import Sequence

from m4.data.scene_captions import parse

MATCH_FIELDS = ("color", "kind", "depth", "side")
ATTRIBUTES = ("kind", "depth", "side", "size")


def _f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _ratio(num: int, den: int) -> float:
    # An empty denominator means nothing could go wrong (e.g. no mentions: precision is vacuous
    # but recall is then 0, so F1 is still 0).
    return float(num / den) if den else 0.0


def score_captions(generated: Sequence[str], truth: Sequence[str]) -> dict:
    """Scores generated captions against the ground-truth captions of the same scenes (one each,
    aligned). Returns attribute_f1 (headline), precision, recall and the components above."""
    if len(generated) != len(truth):
        raise ValueError(f"score_captions: {len(generated)} generated captions for "
                         f"{len(truth)} ground-truth captions; expected one per scene")
    if not truth:
        raise ValueError("score_captions: expected at least one caption, got none")
    objects = mentions = correct = 0
    color_found = 0
    attr_right = dict.fromkeys(ATTRIBUTES, 0)
    hallucinated = count_ok = exact = parsed = 0
    rel_truth = rel_gen = rel_hit = 0
    for gen_text, true_text in zip(generated, truth):
        if not isinstance(gen_text, str) or not isinstance(true_text, str):
            raise ValueError(f"score_captions: expected str captions, got "
                             f"{type(gen_text).__name__} and {type(true_text).__name__}")
        gt, gen = parse(true_text), parse(gen_text)
        gt_objects, gen_objects = gt["objects"], gen["objects"]
        objects += len(gt_objects)
        mentions += len(gen_objects)
        parsed += bool(gen_objects)
        count_ok += len(gen_objects) == len(gt_objects)

        unmatched = [tuple(o[f] for f in MATCH_FIELDS) for o in gt_objects]
        hits = 0
        for mention in gen_objects:
            key = tuple(mention[f] for f in MATCH_FIELDS)
            if key in unmatched:
                unmatched.remove(key)
                hits += 1
        correct += hits
        exact += hits == len(gt_objects) == len(gen_objects)

        colors = {o["color"] for o in gt_objects}
        hallucinated += sum(m["color"] not in colors for m in gen_objects)
        first_by_color: dict[str, dict] = {}
        for mention in gen_objects:
            first_by_color.setdefault(mention["color"], mention)
        for obj in gt_objects:
            mention = first_by_color.get(obj["color"])
            if mention is None:
                continue
            color_found += 1
            for attr in ATTRIBUTES:
                attr_right[attr] += mention[attr] == obj[attr]

        true_rel, gen_rel = set(gt["relations"]), set(gen["relations"])
        rel_truth += len(true_rel)
        rel_gen += len(gen_rel)
        rel_hit += len(true_rel & gen_rel)

    n = len(truth)
    precision, recall = _ratio(correct, mentions), _ratio(correct, objects)
    out = {"attribute_f1": _f1(precision, recall), "precision": precision, "recall": recall,
           "color_recall": _ratio(color_found, objects)}
    out.update({f"{attr}_accuracy": _ratio(attr_right[attr], color_found)
                for attr in ATTRIBUTES})
    out.update({
        "hallucination_rate": _ratio(hallucinated, mentions),
        "count_accuracy": count_ok / n, "exact": exact / n, "parsed": parsed / n,
        "relation_recall": _ratio(rel_hit, rel_truth),
        "relation_precision": _ratio(rel_hit, rel_gen),
        "objects": objects, "mentions": mentions,
    })
    return out


__all__ = ["score_captions"]
