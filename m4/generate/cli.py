"""`m4 generate`: any-to-any generation from a trained (or converted) model, to files and a grid.

    m4 generate --checkpoint runs/demo/model --tokenizers runs/demo/tokenizers \
        --input rgb=scene.png --input caption="a red sphere [S_1]" \
        --target depth --target semseg,steps=4,temp=0.5 --target caption --out runs/gen

--checkpoint: an `m4 train` workdir or an `m4 convert` output (model_config.json + checkpoints/).
--tokenizers DIR: one tokenizer artifact per modality, DIR/<modality> (or DIR/<modality>.json for
  the reference's WordPiece text tokenizer; or give each with --tokenizer name=PATH). Without a
  modality's tokenizer, its inputs must be token ids (.npy)
  and its outputs are tokens.
--input name=VALUE: a file (.png image or label map, .npy array, .txt text, .json array) or, for
  a text modality, the text itself. `[S_1]` in a text marks what to generate.
--target SPEC: `name[,key=value...]` (keys: scheme, steps, tokens, temp, temp_schedule, cfg,
  cfg_schedule, top_k, top_p, num_tokens, max_tokens), in the order they are generated; each
  target is conditioned on the inputs and on the targets before it.
Writes per sample i: <target>_<i>.png (+ .npy values, .txt texts), <target>_tokens_<i>.npy,
grid.png (one row per sample: inputs, then outputs) and generation.json (schedule, timings).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

TEXT_SUFFIXES = (".txt",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="model directory: an `m4 train` workdir or an `m4 convert` output")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step (default: the latest)")
    parser.add_argument("--tokenizers", default=None,
                        help="directory with one tokenizer artifact per modality (DIR/<name>)")
    parser.add_argument("--tokenizer", action="append", default=[], metavar="NAME=PATH",
                        help="the tokenizer artifact of one modality (repeatable)")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=VALUE",
                        help="an input modality: a file or, for text, the text (repeatable)")
    parser.add_argument("--target", action="append", default=[], metavar="SPEC",
                        help="a target: name[,key=value...] (repeatable, generated in order)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--samples", type=int, default=1,
                        help="samples per input, generated as one batch (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--cfg-grow", action="store_true",
                        help="each finished target joins the conditions guidance removes")
    parser.add_argument("--loop", choices=("fori", "unrolled", "auto"), default="fori",
                        help="decoding loop form: fori (one compilation per target, default), "
                             "unrolled (faster steps, much longer compilation), auto (unrolled "
                             "up to 8 steps)")
    parser.add_argument("--sentinels", choices=("auto", "reference"), default="auto",
                        help="text special ids: auto (from the text tokenizer or the training "
                             "shards' manifest) or reference (apple/ml-4m WordPiece ids)")
    parser.add_argument("--tile", type=int, default=128, help="grid tile size in pixels")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


class GenerateCliError(ValueError):
    pass


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise GenerateCliError(f"{flag} {item!r}: expected NAME=VALUE")
        if name in out:
            raise GenerateCliError(f"{flag}: {name!r} given twice")
        out[name] = value
    return out


def load_tokenizers(directory: str | None, explicit: dict[str, str], names) -> dict:
    from m4.tokenizers import load

    found = {}
    if directory is not None:
        root = pathlib.Path(directory)
        if not root.is_dir():
            raise GenerateCliError(f"--tokenizers {directory}: not a directory")
        for name in names:
            if (root / name).is_dir():
                found[name] = root / name
            elif (root / f"{name}.json").is_file():       # a reference WordPiece tokenizer
                found[name] = root / f"{name}.json"
    for name, path in explicit.items():
        if name not in names:
            raise GenerateCliError(f"--tokenizer {name}: not a modality of the model "
                                   f"(known: {list(names)})")
        found[name] = pathlib.Path(path)
    return {name: load(path) for name, path in found.items()}


def read_input(spec, value: str):
    """A file by suffix, or the text itself for a sequence modality."""
    path = pathlib.Path(value)
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix in (".png", ".jpg", ".jpeg", ".bmp"):
            from PIL import Image

            with Image.open(path) as img:
                if img.mode in ("L", "P", "I;16", "I"):
                    return np.asarray(img)
                return np.asarray(img.convert("RGB"))
        if suffix in TEXT_SUFFIXES:
            return path.read_text().strip()
        if suffix == ".json":
            return np.asarray(json.loads(path.read_text()))
        raise GenerateCliError(f"--input {spec.name}={value}: unsupported file type {suffix!r} "
                               f"(expected .png/.jpg, .npy, .txt or .json)")
    if spec.kind == "sequence":
        return value
    raise GenerateCliError(f"--input {spec.name}={value}: no such file (only text modalities "
                           f"take a literal value)")


def sentinels_for(args, tokenizers: dict, checkpoint: pathlib.Path):
    from m4.data.span_masking import SentinelSpec
    from m4.generate.api import sentinels_from_tokenizer

    if args.sentinels == "reference":
        return SentinelSpec.reference()
    for tok in tokenizers.values():
        if hasattr(tok, "special_ids"):
            return sentinels_from_tokenizer(tok)
    # An `m4 train` workdir: the shards it trained on record the text ids.
    train_config = checkpoint / "train_config.json"
    if train_config.is_file():
        try:
            shards = json.loads(train_config.read_text())["data"]["shards"]
            manifest = json.loads((pathlib.Path(shards) / "manifest.json").read_text())
            if manifest.get("text"):
                return SentinelSpec(**manifest["text"])
        except (KeyError, OSError, ValueError, TypeError):
            pass
    return None


def main(args) -> int:
    from m4.generate import render, schedules
    from m4.generate.api import Generator
    from m4.train.model_io import load_model

    if args.samples < 1:
        raise GenerateCliError(f"--samples: expected >= 1, got {args.samples}")
    if not args.target:
        raise GenerateCliError("--target: give at least one target modality")
    checkpoint = pathlib.Path(args.checkpoint)
    start = time.perf_counter()
    model = load_model(checkpoint, step=args.step)
    by_name = {s.name: s for s in model.config.modalities}
    tokenizers = load_tokenizers(args.tokenizers, _pairs(args.tokenizer, "--tokenizer"),
                                 list(by_name))
    load_s = time.perf_counter() - start
    raw_inputs = {}
    for name, value in _pairs(args.input, "--input").items():
        if name not in by_name:
            raise GenerateCliError(f"--input {name}: unknown modality (known: {list(by_name)})")
        raw_inputs[name] = read_input(by_name[name], value)
    targets = [schedules.parse_target(t) for t in args.target]
    generator = Generator(model, tokenizers, sentinels_for(args, tokenizers, checkpoint),
                          loop=args.loop)
    start = time.perf_counter()
    result = generator.generate_batch([raw_inputs] * args.samples, targets, seed=args.seed,
                                      grow_conditioning=args.cfg_grow,
                                      progress=not args.no_progress)
    generate_s = time.perf_counter() - start

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = write_outputs(out, generator, raw_inputs, result, render, args.tile)
    summary = {
        "checkpoint": str(checkpoint), "seed": args.seed, "samples": args.samples,
        "inputs": sorted(raw_inputs), "targets": [t.name for t in targets],
        "schedule": [step_dict(s) for s in result["schedule"]],
        "complete": {k: v.tolist() for k, v in result["complete"].items()},
        "load_s": round(load_s, 2), "generate_s": round(generate_s, 2), "files": files,
    }
    (out / "generation.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"generated {', '.join(summary['targets'])} x {args.samples} in {generate_s:.1f}s "
          f"(first call includes compilation) -> {out}/grid.png", file=sys.stderr)
    return 0


def step_dict(step) -> dict:
    return {"target": step.target, "scheme": step.scheme, "num_tokens": step.num_tokens,
            "temperature": step.temperature,
            "guidance": [[list(g), w] for g, w in step.guidance],
            "top_k": step.top_k, "top_p": step.top_p, "max_tokens": step.max_tokens}


def write_outputs(out: pathlib.Path, generator, raw_inputs: dict, result: dict, render,
                  tile_size: int) -> list[str]:
    files: list[str] = []
    kinds = {name: render.kind_of(generator.tokenizers.get(name)) for name in generator.by_name}
    targets = list(result["outputs"])
    samples = len(next(iter(result["tokens"].values()))) if result["tokens"] else 1
    rows, captions = [], []
    rgb_input = raw_inputs.get("rgb")
    for i in range(samples):
        row, texts = [], []
        for name, value in raw_inputs.items():
            if name in targets:
                continue
            kind = kinds[name] if not isinstance(value, str) else "text"
            if kind == "text":
                texts.append(f"{name} (input): {value}")
                continue
            if kind == "tokens" and name in result["tokens"]:
                value = result["tokens"][name][i]
            if generator.by_name[name].is_continuous:
                continue
            row.append((name, render.tile(kind, value, tile_size, rgb_input)))
        for name in targets:
            value = result["outputs"][name][i]
            tokens = result["tokens"][name][i]
            stem = f"{name.replace('/', '_')}_{i}"
            np.save(out / f"{name.replace('/', '_')}_tokens_{i}.npy", np.asarray(tokens, np.int64))
            files.append(f"{name.replace('/', '_')}_tokens_{i}.npy")
            kind = kinds[name]
            if isinstance(value, str):
                (out / f"{stem}.txt").write_text(value + "\n")
                files.append(f"{stem}.txt")
                texts.append(f"{name}: {value}")
                continue
            if kind not in ("tokens", "text"):
                np.save(out / f"{stem}.npy", np.asarray(value))
                files.append(f"{stem}.npy")
            background = rgb_input
            if background is None and "rgb" in result["outputs"]:
                background = result["outputs"]["rgb"][i]
            picture = render.tile(kind, value, max(tile_size, 64), background)
            picture.save(out / f"{stem}.png")
            files.append(f"{stem}.png")
            row.append((name, picture))
        rows.append(row or [("(none)", render.tile("text", "", tile_size))])
        captions.append("   ".join(texts))
    render.grid(rows, captions, tile_size).save(out / "grid.png")
    files.append("grid.png")
    return files
