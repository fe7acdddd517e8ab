"""`m4 demo`: the end-to-end main job on the built-in dataset, as resumable stages.

    m4 demo --workdir runs/demo          # README's first command (via `make demo`)

Stages, in order (what each writes: m4/demo/stages.py; how much of each: m4/demo/recipe.py):

  preview      a PNG grid of every modality of a few built-in scenes (DIR/preview.png)
  tokenizers   train one tokenizer per modality, time-boxed (or reuse those in DIR/tokenizers)
  pretokenize  render and tokenize the training scenes into token shards (DIR/tokens/train)
  train        train the demo's 4M (experiments/demo.py) into DIR/model
  generations  any-to-any generations on held-out scenes (DIR/generations.png)
  eval         the evaluation matrix on held-out scenes (DIR/eval.json, DIR/eval.png)

Each finished stage writes a marker `DIR/stages/<name>.done`; a re-run skips finished stages, and
a stage interrupted midway resumes from its own checkpoints. `--recipe tiny` runs the same
pipeline at test size in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
from collections.abc import Callable

from m4.demo import recipe as recipes, stages


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[pathlib.Path, recipes.Recipe, argparse.Namespace], dict]


STAGES: tuple[Stage, ...] = (
    Stage("preview", "render built-in scenes and write preview.png", stages.preview),
    Stage("tokenizers", "train a tokenizer per modality", stages.tokenizers),
    Stage("pretokenize", "render and tokenize the training scenes", stages.pretokenize),
    Stage("train", "train the 4M", stages.train_model),
    Stage("generations", "generate any-to-any on held-out scenes", stages.generations),
    Stage("eval", "evaluate every input -> target on held-out scenes", stages.evaluate),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, type=pathlib.Path,
                        help="where every stage writes its outputs; re-running resumes")
    parser.add_argument("--recipe", choices=sorted(recipes.RECIPES), default="full",
                        help="full: README's demo (64x64, ~30 min on 2 cores); tiny: seconds")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--preview-n", type=int, default=6, help="scenes in preview.png")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in STAGES], default=None,
                        help="run only these stages (their inputs must exist)")
    parser.add_argument("--restart", action="store_true",
                        help="forget finished stages and run them again (tokenizers and the "
                             "model still resume from their checkpoints; delete DIR to start over)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    workdir: pathlib.Path = args.workdir
    recipe = recipes.RECIPES[args.recipe]
    marks = workdir / "stages"
    marks.mkdir(parents=True, exist_ok=True)
    _check_recipe(workdir, args.recipe)
    selected = [s for s in STAGES if args.only is None or s.name in args.only]
    total = time.perf_counter()
    for i, stage in enumerate(selected, 1):
        mark = marks / f"{stage.name}.done"
        if args.restart:
            mark.unlink(missing_ok=True)
        prefix = f"[{i}/{len(selected)}] {stage.name}"
        if mark.exists():
            print(f"{prefix}: done already ({mark}), skipping", flush=True)
            continue
        print(f"{prefix}: {stage.description}", flush=True)
        start = time.perf_counter()
        outputs = stage.run(workdir, recipe, args)
        seconds = time.perf_counter() - start
        # The marker is written last and atomically, so an interrupted stage is never "done".
        tmp = mark.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seconds": round(seconds, 2), **outputs}, indent=1))
        tmp.replace(mark)
        print(f"{prefix}: finished in {seconds:.1f}s", flush=True)
    minutes = (time.perf_counter() - total) / 60
    print(f"demo complete in {minutes:.1f} min: outputs in {workdir}", flush=True)
    return 0


def _check_recipe(workdir: pathlib.Path, name: str) -> None:
    """A work directory belongs to one recipe: mixing would reuse tokenizers of another size."""
    path = workdir / "stages" / "recipe.json"
    if path.exists():
        have = json.loads(path.read_text()).get("recipe")
        if have != name:
            raise SystemExit(f"m4 demo: {workdir} was made with --recipe {have}, not {name}; "
                             f"use another --workdir")
    else:
        path.write_text(json.dumps({"recipe": name}) + "\n")
