"""`m4 demo`: the end-to-end main job on the built-in dataset, as resumable stages.

Each stage writes its outputs into the work directory and then a marker
`DIR/stages/<name>.done`; a re-run skips finished stages, and a stage interrupted midway resumes
from its own checkpoints (or starts over if it has none). Stages run in order:

  preview      a PNG grid of every modality of a few built-in scenes (DIR/preview.png)

Later stages (tokenizers, pretokenize, train, generate, eval) are appended as they land.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    description: str
    run: Callable[[pathlib.Path, argparse.Namespace], dict]


def _preview(workdir: pathlib.Path, args: argparse.Namespace) -> dict:
    from m4.data import scenes, visualize

    config = scenes.SceneConfig(resolution=args.resolution)
    samples = [scenes.render(args.seed, i, config) for i in range(args.preview_n)]
    out = workdir / "preview.png"
    visualize.preview_grid(samples, config).save(out)
    return {"preview": str(out)}


STAGES: tuple[Stage, ...] = (
    Stage("preview", "render built-in scenes and write preview.png", _preview),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, type=pathlib.Path,
                        help="where every stage writes its outputs; re-running resumes")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--resolution", type=int, default=64, help="scene resolution (default 64)")
    parser.add_argument("--preview-n", type=int, default=6, help="scenes in preview.png")
    parser.add_argument("--restart", action="store_true",
                        help="forget finished stages and run everything again")


def main(args: argparse.Namespace) -> int:
    workdir: pathlib.Path = args.workdir
    marks = workdir / "stages"
    marks.mkdir(parents=True, exist_ok=True)
    for i, stage in enumerate(STAGES, 1):
        mark = marks / f"{stage.name}.done"
        if args.restart:
            mark.unlink(missing_ok=True)
        prefix = f"[{i}/{len(STAGES)}] {stage.name}"
        if mark.exists():
            print(f"{prefix}: done already ({mark}), skipping", flush=True)
            continue
        print(f"{prefix}: {stage.description}", flush=True)
        start = time.perf_counter()
        outputs = stage.run(workdir, args)
        seconds = time.perf_counter() - start
        # The marker is written last and atomically, so an interrupted stage is never "done".
        tmp = mark.with_suffix(".tmp")
        tmp.write_text(json.dumps({"seconds": round(seconds, 2), **outputs}, indent=1))
        tmp.replace(mark)
        print(f"{prefix}: finished in {seconds:.1f}s: {outputs}", flush=True)
    print(f"demo complete: outputs in {workdir}", flush=True)
    return 0
