"""The any-to-any evaluation matrix: every target generated from each single input and from all
the other modalities together, scored against the exact ground truth of held-out scenes.

    result = evaluate_matrix(model, tokenizers, n=256, seed=0)
    result["cells"]["rgb"]["depth"]["value"]          # delta1 of rgb -> depth
    result["cells"][ALL_OTHERS]["caption"]["value"]   # attribute F1 of everything else -> caption

Scenes: `scenes.render(seed, VALIDATION_START + i)` for i < n, at the tokenizers' scene config
(the held-out split that training never sees).

Cost. Each batch is tokenized once (every modality, one tokenizer call each), then each cell is
one decoding run of its target conditioned on its inputs only: a cell's target is never
conditioned on another generated target (the sampler's chains would do exactly that, so cells are
separate runs on sub-states of the one tokenized batch). The cells of one target whose inputs have
the same number of tokens share one compilation. The last batch is padded to the batch size (no
recompilation), and example i always draws its randomness from fold_in(key(seed), i), whatever
the batch size.

Measured (the demo's trained 4M: dim 192, 3+3 blocks, 7 modalities at 64x64, n = 256, batch
64, quiet 2-core machine): 167 s for all 50 cells (first batch 83 s with the compilations). The
caption column is cheap since the sampler decodes sequences with a key/value cache (one decoder row
per token); before it, a random model's caption cells alone took ~545 CPU-s.

Baseline: caption -> semseg is also generated with the caption of another held-out scene (scene
i gets the caption of scene i + 1, cyclically), a caption-blind reference reported next to it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from m4.data import scenes
from m4.eval import metrics as metrics_lib
from m4.generate.api import Generator
from m4.generate.sampler import example_keys
from m4.generate.schedules import TargetSpec
from m4.generate.state import empty_sequence_target, unknown

ALL_OTHERS = "all others"
SHUFFLED_CAPTION = "caption (shuffled)"
# Image-like targets are decoded in one step at a near-argmax temperature (the reference's
# RGB -> X setting): the prediction each input supports best, and 8x cheaper than the sampler's
# 8 MaskGIT steps. The matrix is ~M^2 decoding runs, so the step count sets its cost.
DEFAULT_STEPS = 1
DEFAULT_TEMPERATURE = 0.01
# Captions are decoded greedily: an attribute is right or wrong, and sampling only adds errors.
# Measured on the demo's 4M (n = 256): rgb -> caption attribute F1 0.293 greedy vs 0.249 at the
# sampler's default 0.3; all others -> caption 0.444 vs 0.383.
DEFAULT_CAPTION_TEMPERATURE = 0.0
# Scenes per batch: n = 256 in two batches (fewer calls and compilations than small batches;
# ~3.3 GB peak memory at dim 256 with 7 modalities).
DEFAULT_BATCH_SIZE = 128
CAPTION_SLACK = 8


class EvalError(ValueError):
    """Settings or inputs the evaluation cannot use."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One generation of the matrix: `target` from `inputs` (row: how the matrix labels them)."""

    row: str
    target: str
    inputs: tuple[str, ...]
    shuffled_caption: bool = False


def plan_cells(inputs: Sequence[str], targets: Sequence[str], *,
               caption_baseline: bool = True) -> list[Cell]:
    """Single-input rows (input != target), the all-others row, and the caption -> semseg
    baseline with shuffled captions (when both exist)."""
    cells = [Cell(m, t, (m,)) for m in inputs for t in targets if t != m]
    for t in targets:
        others = tuple(m for m in inputs if m != t)
        if others:
            cells.append(Cell(ALL_OTHERS, t, others))
    if caption_baseline and "caption" in inputs and "semseg" in targets:
        cells.append(Cell(SHUFFLED_CAPTION, "semseg", ("caption",), shuffled_caption=True))
    return cells


# ------------------------------------------------------------------------------ checks
def scene_config_for(tokenizers: Mapping[str, Any], resolution: int | None) -> scenes.SceneConfig:
    """The scene config the (image-like) tokenizers were trained on; `resolution`, when given,
    must agree with it."""
    image = {m: t for m, t in tokenizers.items() if t.spec.kind != "text"}
    found = {m: int(t.spec.resolution) for m, t in image.items()}
    if len(set(found.values())) > 1:
        raise EvalError(f"tokenizers: they disagree on the scene resolution: {found}")
    if not image:
        return scenes.SceneConfig(resolution=resolution or scenes.REFERENCE_RESOLUTION)
    tok_res = next(iter(found.values()))
    if resolution is not None and resolution != tok_res:
        raise EvalError(f"resolution: the tokenizers take {tok_res}x{tok_res} scenes ({found}), "
                        f"got {resolution}")
    fields = {"resolution": tok_res}
    config = getattr(next(iter(image.values())), "config", None)
    try:
        fields.update(dict(config.data.scene))
    except (AttributeError, KeyError, TypeError):
        pass   # an artifact without its training config: the scenes' defaults at tok_res
    try:
        scene_config = scenes.SceneConfig(**fields)
    except (TypeError, ValueError) as e:
        raise EvalError(f"tokenizers: their scene config {fields} is not a SceneConfig: {e}") from e
    raw = scenes.raw_specs(scene_config)
    for m, t in image.items():
        if tuple(t.spec.shape) != raw[m].shape:
            raise EvalError(f"tokenizer {m!r}: takes raw {list(t.spec.shape)}, but the scenes "
                            f"({fields}) give {list(raw[m].shape)}")
    return scene_config


def _select(model, tokenizers: Mapping[str, Any], modalities: Sequence[str] | None):
    """(evaluated modality specs in model order, names of model modalities left out)."""
    by_name = {s.name: s for s in model.config.modalities}
    evaluable = [n for n, s in by_name.items() if n in scenes.MODALITIES and s.is_token]
    if modalities is None:
        chosen = evaluable
    else:
        chosen = list(dict.fromkeys(modalities))
        for name in chosen:
            if name not in by_name:
                raise EvalError(f"modalities: {name!r} is not a modality of the model (known: "
                                f"{list(by_name)})")
            if name not in evaluable:
                raise EvalError(f"modalities: {name!r} cannot be evaluated (built-in scene "
                                f"modalities with tokens: {evaluable})")
        chosen = [n for n in by_name if n in chosen]
    if not chosen:
        raise EvalError(f"modalities: the model has none of the built-in scene modalities "
                        f"{list(scenes.MODALITIES)} (it has {list(by_name)})")
    missing = [n for n in chosen if n not in tokenizers]
    if missing:
        raise EvalError(f"tokenizers: none for the model modalities {missing} (given: "
                        f"{sorted(tokenizers)}); raw inputs and outputs need them")
    for name in chosen:
        spec, tok = by_name[name], tokenizers[name]
        if int(spec.vocab_size) != int(tok.vocab_size):
            raise EvalError(f"tokenizer {name!r}: vocabulary {tok.vocab_size}, the model's "
                            f"{name!r} has {spec.vocab_size}; a different tokenizer?")
    # A pixel input of an evaluated modality is evaluated with it (the rgb row feeds rgb_pixels).
    left_out = [n for n in by_name if n not in chosen and by_name[n].source not in chosen]
    return [by_name[n] for n in chosen], left_out


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise EvalError(f"{name}: expected an int >= 1, got {value!r}")


# -------------------------------------------------------------------------------- matrix
def evaluate_matrix(model, tokenizers: Mapping[str, Any], *, n: int, seed: int = 0,
                    batch_size: int = DEFAULT_BATCH_SIZE, steps: int | None = DEFAULT_STEPS,
                    temperature: float | None = DEFAULT_TEMPERATURE,
                    caption_temperature: float | None = DEFAULT_CAPTION_TEMPERATURE,
                    caption_max_tokens: int | None = None,
                    modalities: Sequence[str] | None = None, resolution: int | None = None,
                    sentinels=None, progress: bool = True) -> dict:
    """The matrix of `model` (a FourM) with `tokenizers` ({modality: artifact}) on `n` held-out
    scenes of dataset `seed`; the sampling keys derive from `seed` too.

    steps: MaskGIT steps of image-like targets (None: the sampler's default, 8); temperature:
    their start temperature (decaying linearly over the steps; None: the sampler's 1.0);
    caption_temperature: the autoregressive caption's (default 0: greedy; None: the
    sampler's 0.3);
    caption_max_tokens: most tokens it generates (None: the longest ground-truth caption of the
    set + CAPTION_SLACK, see `_caption_budget`).
    modalities: evaluate only these (default: every built-in scene modality of the model).
    Returns a JSON-ready dict (NaN where a metric is undefined): settings, rows, targets,
    primary, cells[row][target] ({inputs, value, metrics, seconds}, None where input == target),
    baselines, seconds.
    """
    start_all = time.perf_counter()
    _positive_int("n", n)
    _positive_int("batch_size", batch_size)
    _positive_int("steps", steps, allow_none=True)
    _positive_int("caption_max_tokens", caption_max_tokens, allow_none=True)
    specs, left_out = _select(model, tokenizers, modalities)
    names = [s.name for s in specs]
    used = {m: tokenizers[m] for m in names}
    scene_config = scene_config_for(used, resolution)
    # One decoding step is cheapest unrolled (the encoder then holds only the known tokens);
    # several steps compile far faster as one fori loop.
    generator = Generator(model, used, sentinels, loop="unrolled" if steps == 1 else "fori")
    by_name = {s.name: s for s in specs}
    # Rows are raw modalities: rgb feeds its pixel patches when the model has them (rgb_pixels,
    # as the reference's RGB -> X), its tokens otherwise (Generator.input_modality).
    inputs = [s.name for s in specs if s.input or s.name in generator.pixel_inputs]
    targets = [s.name for s in specs if s.target]
    if not targets:
        raise EvalError(f"modalities: none of {names} is a target of the model")
    cells = plan_cells(inputs, targets)
    if "caption" in names and generator.sentinels is None:
        raise EvalError("tokenizers: the caption modality needs a text tokenizer with sentinels")

    t0 = time.perf_counter()
    samples, truth = _held_out_scenes(seed, n, scene_config, names, progress)
    render_s = time.perf_counter() - t0
    if caption_max_tokens is None and "caption" in targets:
        caption_max_tokens = _caption_budget(generator, truth["caption"], by_name["caption"])
    schedules = {cell: generator.schedule(_fed(generator, cell.inputs), [_target_spec(
        by_name[cell.target], steps, temperature, caption_temperature, caption_max_tokens)])
        for cell in cells}
    b = min(batch_size, n)
    runs = _run_cells(generator, cells, schedules, samples, inputs, seed=seed, batch_size=b,
                      progress=progress)
    t0 = time.perf_counter()
    table, baselines = _score_cells(cells, runs, truth, used, inputs + [ALL_OTHERS], targets)
    metrics_s = time.perf_counter() - t0

    config = model.config
    return {
        "settings": {
            "n": n, "seed": seed, "batch_size": b, "steps": steps, "temperature": temperature,
            "caption_temperature": caption_temperature,
            "caption_max_tokens": caption_max_tokens,
            "scenes": {"seed": seed, "first_index": scenes.VALIDATION_START, "count": n,
                       "config": dataclasses.asdict(scene_config)},
            "modalities": names, "not_evaluated": left_out,
            "model": {"dim": config.dim, "encoder_depth": config.encoder_depth,
                      "decoder_depth": config.decoder_depth, "num_heads": config.num_heads},
            "schedules": {f"{c.row} -> {c.target}": [_step_dict(s) for s in schedules[c]]
                          for c in cells if c.row == ALL_OTHERS},
        },
        "rows": inputs + [ALL_OTHERS],
        "targets": targets,
        "primary": {t: dataclasses.asdict(metrics_lib.PRIMARY[t]) for t in targets},
        "cells": table,
        "baselines": baselines,
        "seconds": {"render": round(render_s, 2), "encode": round(runs["encode_s"], 2),
                    "generate": round(sum(runs["seconds"].values()), 2),
                    "generate_first_batch": round(sum(runs["first_batch_s"].values()), 2),
                    "metrics": round(metrics_s, 2),
                    "total": round(time.perf_counter() - start_all, 2)},
    }


def _held_out_scenes(seed: int, n: int, scene_config: scenes.SceneConfig, names: list[str],
                     progress: bool) -> tuple[list[dict], dict]:
    """(scenes, ground truth {modality: stacked arrays, captions as a list})."""
    samples = [scenes.render(seed, scenes.VALIDATION_START + i, scene_config)
               for i in tqdm(range(n), desc="render held-out scenes", unit="scene",
                             disable=not progress)]
    truth = {m: ([s[m] for s in samples] if m == "caption" else np.stack([s[m] for s in samples]))
             for m in names}
    return samples, truth


def _run_cells(generator: Generator, cells: list[Cell], schedules: dict, samples: list[dict],
               inputs: list[str], *, seed: int, batch_size: int, progress: bool) -> dict:
    """Generates every cell, batch by batch: {"preds": {cell: decoded per scene}, "seconds":
    {cell: s}, "first_batch_s": {cell: s} (compilations included), "encode_s": s}."""
    n, b = len(samples), batch_size
    preds: dict[Cell, list] = {cell: [] for cell in cells}
    seconds = dict.fromkeys(cells, 0.0)
    first_batch = dict.fromkeys(cells, 0.0)
    encode_s = 0.0
    bar = tqdm(total=math.ceil(n / b) * len(cells), desc="eval matrix", unit="cell",
               disable=not progress)
    for first in range(0, n, b):
        count = min(b, n - first)
        # Pad the last batch with copies of its last scene: same shapes, no recompilation.
        idx = [first + min(j, count - 1) for j in range(b)]
        t0 = time.perf_counter()
        state = generator.encode_inputs([{m: samples[i][m] for m in inputs} for i in idx])
        shuffled = None
        if any(cell.shuffled_caption for cell in cells):
            shuffled = generator.encode_inputs(
                [{"caption": samples[(i + 1) % n]["caption"]} for i in idx])["caption"]
        encode_s += time.perf_counter() - t0
        keys = example_keys(seed, b, first_index=first)
        for cell in cells:
            bar.set_postfix_str(f"{cell.row} -> {cell.target}")
            t0 = time.perf_counter()
            sub = {m: state[m] for m in _fed(generator, cell.inputs)}
            if cell.shuffled_caption:
                sub["caption"] = shuffled
            spec = generator.by_name[cell.target]
            sub[cell.target] = (empty_sequence_target(spec, b, generator.sentinels)
                                if spec.kind == "sequence" else unknown(spec, b))
            out, info = generator.sampler.generate(sub, schedules[cell], keys)
            preds[cell].extend(generator.decode(cell.target, out, info)[:count])
            seconds[cell] += time.perf_counter() - t0
            if first == 0:
                first_batch[cell] = seconds[cell]
            bar.update(1)
    bar.close()
    return {"preds": preds, "seconds": seconds, "first_batch_s": first_batch,
            "encode_s": encode_s}


def _fed(generator: Generator, inputs: Sequence[str]) -> list[str]:
    """The model modalities raw inputs feed (rgb -> rgb_pixels when the model has them)."""
    return [generator.input_modality(m) for m in inputs]


def _score_cells(cells: list[Cell], runs: dict, truth: dict, tokenizers: Mapping[str, Any],
                 rows: list[str], targets: list[str]) -> tuple[dict, dict]:
    """(cells[row][target] table, baselines) from the generated predictions."""
    table: dict[str, dict] = {row: {t: None for t in targets} for row in rows}
    scored: dict[Cell, dict] = {}
    for cell in cells:
        pred = runs["preds"][cell]
        pred = pred if cell.target == "caption" else np.stack(pred)
        values = metrics_lib.target_metrics(cell.target, truth[cell.target], pred,
                                            tokenizers[cell.target].spec)
        scored[cell] = {"inputs": list(cell.inputs),
                        "value": metrics_lib.primary_value(cell.target, values),
                        "metrics": values, "seconds": round(runs["seconds"][cell], 3),
                        "seconds_first_batch": round(runs["first_batch_s"][cell], 3)}
        if not cell.shuffled_caption:
            table[cell.row][cell.target] = scored[cell]
    baselines = {}
    for cell in cells:
        if cell.shuffled_caption:
            own, other = table["caption"]["semseg"], scored[cell]
            baselines["caption->semseg"] = {
                "metric": metrics_lib.PRIMARY["semseg"].name,
                "caption": own["value"], "shuffled_caption": other["value"],
                "difference": own["value"] - other["value"],
                "shuffled_metrics": other["metrics"], "seconds": other["seconds"],
                "description": "semseg from the scene's own caption vs from the caption of "
                               "another held-out scene (i gets i + 1's): a caption-blind baseline",
            }
    return table, baselines


def _caption_budget(generator: Generator, captions: Sequence[str], spec) -> int:
    """Most tokens a generated caption may take: the longest ground-truth caption of the set
    plus CAPTION_SLACK, at most the model's length + 1. The autoregressive loop runs until every
    caption of a batch has ended, so one runaway sample would otherwise cost the whole batch the
    full length; a caption that long is wrong anyway (it is scored on what it says so far)."""
    longest = max(len(generator.text_ids(spec.name, c)) for c in captions)
    return min(spec.length + 1, longest + CAPTION_SLACK)


def _target_spec(spec, steps, temperature, caption_temperature, caption_max_tokens) -> TargetSpec:
    if spec.kind == "sequence":
        return TargetSpec(spec.name, temperature=caption_temperature, max_tokens=caption_max_tokens)
    if not spec.input:
        steps = 1   # a target the encoder cannot read back is decoded in one step
    return TargetSpec(spec.name, steps=None if steps is None else min(steps, spec.length),
                      temperature=temperature)


def _step_dict(step) -> dict:
    return {"scheme": step.scheme, "num_tokens": step.num_tokens,
            "temperature": round(step.temperature, 4), "max_tokens": step.max_tokens}


__all__ = ["ALL_OTHERS", "Cell", "DEFAULT_BATCH_SIZE", "DEFAULT_STEPS", "DEFAULT_TEMPERATURE",
           "EvalError", "SHUFFLED_CAPTION", "evaluate_matrix", "plan_cells", "scene_config_for"]
