"""`m4 tokenizer train|eval`: train a tokenizer from a config, or measure a trained one.

    m4 tokenizer train --config tokenizers/rgb.py --workdir runs/tok_rgb [--config.train.lr=3e-4]
    m4 tokenizer eval --tokenizer runs/tok_rgb --n 1000      # JSON on stdout + a PNG
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="<train|eval>")
    train = sub.add_parser("train", help="train a tokenizer (resumes from its workdir)")
    train.add_argument("--config", required=True,
                       help="config file, e.g. tokenizers/rgb.py (or tokenizers/rgb.py:tiny); "
                            "override fields with --config.x=y")
    train.add_argument("--workdir", required=True,
                       help="checkpoints, metrics and the artifact (<workdir>/tokenizer)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev = sub.add_parser("eval", help="reconstruction quality and codebook usage on held-out "
                                     "scenes")
    ev.add_argument("--tokenizer", required=True, help="artifact dir (or the training workdir)")
    ev.add_argument("--n", type=int, default=256, help="number of held-out scenes")
    ev.add_argument("--seed", type=int, default=None,
                    help="scene seed (default: the eval seed of the tokenizer's config)")
    ev.add_argument("--png", default=None,
                    help="picture of originals above reconstructions (default: "
                         "<tokenizer>/eval_<n>.png)")
    ev.add_argument("--show", type=int, default=16, help="examples in the picture")
    ev.add_argument("--cache-dir", default=None, help="cache the rendered scenes here")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    command = getattr(args, "tokenizer_command", None)
    if command not in ("train", "eval"):
        print("usage: m4 tokenizer <train|eval> ... (see m4 tokenizer --help)", file=sys.stderr)
        return 2
    try:
        return _train(args) if command == "train" else _eval(args)
    except ValueError as e:
        # Bad configs, artifacts, checkpoints or inputs: every such error in m4 is a ValueError
        # whose message names the field, the expected and the received value.
        print(f"m4 tokenizer {command}: error: {e}", file=sys.stderr)
        return 2


def _train(args) -> int:
    from m4.config import load_config
    from m4.tokenizers.train import train

    config = load_config(args.config, args.config_overrides)
    out = train(config, args.workdir, progress=not args.no_progress)
    print(f"tokenizer artifact: {out}")
    return 0


def _eval(args) -> int:
    from m4.tokenizers import load
    from m4.tokenizers.evaluate import evaluate_tokenizer

    if args.config_overrides:
        print("m4 tokenizer eval: --config.* overrides do not apply here", file=sys.stderr)
        return 2
    tokenizer = load(args.tokenizer)
    metrics, picture = evaluate_tokenizer(tokenizer, args.n, seed=args.seed,
                                          cache_dir=args.cache_dir, show=args.show,
                                          progress=not args.no_progress)
    png = pathlib.Path(args.png or pathlib.Path(tokenizer.path) / f"eval_{args.n}.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    picture.save(png)
    metrics["png"] = str(png)
    print(json.dumps(metrics, indent=2))
    return 0
