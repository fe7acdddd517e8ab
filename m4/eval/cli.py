"""`m4 eval`: the any-to-any evaluation matrix of a trained model on held-out built-in scenes.

    m4 eval --checkpoint runs/demo/model --tokenizers runs/demo/tokenizers --n 256 \
        --out runs/demo/eval

--checkpoint: an `m4 train` workdir (model_config.json + checkpoints/); --step picks a checkpoint.
--tokenizers DIR: one tokenizer artifact per modality (DIR/<modality>); every evaluated modality
  of the model needs one. Scenes are rendered at the tokenizers' resolution (--resolution, when
  given, must agree).
Writes OUT/eval.json (settings, every cell's metrics, seconds) and OUT/eval.png (the heatmap), and
prints the table of primary metrics.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from m4.eval.matrix import (
    DEFAULT_BATCH_SIZE, DEFAULT_CAPTION_TEMPERATURE, DEFAULT_STEPS, DEFAULT_TEMPERATURE, EvalError,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="model directory (`m4 train` workdir)")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step (default: the latest)")
    parser.add_argument("--tokenizers", required=True,
                        help="directory with one tokenizer artifact per modality (DIR/<name>)")
    parser.add_argument("--n", type=int, required=True, help="held-out scenes to evaluate on")
    parser.add_argument("--out", required=True, help="output directory (eval.json, eval.png)")
    parser.add_argument("--seed", type=int, default=0,
                        help="dataset seed of the held-out scenes, also the sampling seed "
                             "(default 0)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"scenes per generation batch (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--resolution", type=int, default=None,
                        help="scene resolution (default: the tokenizers'; must agree with it)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"MaskGIT steps of image-like targets (default {DEFAULT_STEPS}; "
                             f"0: the sampler's default, 8)")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                        help=f"start temperature of image-like targets, decaying linearly over "
                             f"the steps (default {DEFAULT_TEMPERATURE}: nearly argmax)")
    parser.add_argument("--caption-temperature", type=float, default=DEFAULT_CAPTION_TEMPERATURE,
                        help=f"caption sampling temperature (default "
                             f"{DEFAULT_CAPTION_TEMPERATURE}: greedy)")
    parser.add_argument("--caption-max-tokens", type=int, default=None,
                        help="most caption tokens generated (default: the model's length + 1)")
    parser.add_argument("--modalities", default=None,
                        help="comma-separated modalities to evaluate (default: all the model has)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args) -> int:
    from m4.eval.matrix import evaluate_matrix
    from m4.eval.report import summary_table, write_report
    from m4.generate.cli import load_tokenizers
    from m4.train.model_io import load_model

    if args.n < 1:
        raise EvalError(f"--n: expected >= 1, got {args.n}")
    if args.steps < 0:
        raise EvalError(f"--steps: expected >= 0 (0: the sampler's default), got {args.steps}")
    start = time.perf_counter()
    model = load_model(pathlib.Path(args.checkpoint), step=args.step)
    names = [s.name for s in model.config.modalities]
    tokenizers = load_tokenizers(args.tokenizers, {}, names)
    load_s = time.perf_counter() - start
    modalities = None
    if args.modalities:
        modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    result = evaluate_matrix(
        model, tokenizers, n=args.n, seed=args.seed, batch_size=args.batch_size,
        steps=args.steps or None, temperature=args.temperature,
        caption_temperature=args.caption_temperature, caption_max_tokens=args.caption_max_tokens,
        modalities=modalities, resolution=args.resolution, progress=not args.no_progress)
    result["settings"]["checkpoint"] = str(args.checkpoint)
    result["settings"]["step"] = args.step
    result["settings"]["tokenizers"] = str(args.tokenizers)
    result["seconds"]["load"] = round(load_s, 2)
    paths = write_report(result, args.out)
    print(summary_table(result))
    print(f"evaluated {len(result['rows'])} input sets x {len(result['targets'])} targets on "
          f"{args.n} scenes in {result['seconds']['total']:.1f}s -> {paths['json']}, "
          f"{paths['png']}", file=sys.stderr)
    return 0
