"""The demo's stages: each reads what earlier stages wrote into the work directory.

Layout of DIR:
  preview.png               built-in scenes, every modality
  scene_cache/              rendered training scenes, shared by the tokenizers
  tokenizers/<modality>/    tokenizer training workdirs (artifact in tokenizer/)
  tokens/train/             token shards for the 4M
  model/                    the 4M's training workdir (checkpoints, metrics)
  generations.png           any-to-any generations on held-out scenes
  eval.json, eval.png       the evaluation matrix

Every stage can be interrupted: tokenizers and the 4M resume from their own checkpoints,
pretokenizing skips finished shards, and figures are written atomically.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from m4.demo.recipe import EXPERIMENTS, MODALITIES, TOKENIZER_CONFIGS, Recipe


def preview(workdir: pathlib.Path, recipe: Recipe, args: argparse.Namespace) -> dict:
    from m4.data import scenes, visualize

    config = scenes.SceneConfig(resolution=recipe.resolution)
    samples = [scenes.render(args.seed, i, config) for i in range(args.preview_n)]
    out = workdir / "preview.png"
    _save_png(visualize.preview_grid(samples, config), out)
    return {"preview": str(out)}


def tokenizer_config(name: str, recipe: Recipe, cache_dir: pathlib.Path):
    """The demo's config of one tokenizer: the shipped file, the recipe's overrides, its budget."""
    from m4.config import load_config

    path = TOKENIZER_CONFIGS / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer config {path} is missing (m4 must be installed from "
                                f"its source tree, e.g. `pip install -e .`)")
    spec = f"{path}:{recipe.tokenizer_arg}" if recipe.tokenizer_arg else str(path)
    config = load_config(spec)
    config.data.cache_dir = str(cache_dir)
    own = recipe.tokenizer_overrides.get(name, {})
    for key, value in {**recipe.tokenizer_overrides.get("*", {}), **own}.items():
        section, _, field = key.partition(".")
        if section in config and field in config[section]:
            config[section][field] = value
        elif key in own:   # "*" fits only some tokenizers; a modality's own key must exist
            raise KeyError(f"recipe tokenizer_overrides[{name!r}]: {key!r} is not a field of "
                           f"{path.name}'s config")
    if recipe.tokenizer_max_minutes and "train" in config:
        config.train.max_minutes = recipe.tokenizer_max_minutes
    return config


def tokenizers(workdir: pathlib.Path, recipe: Recipe, args: argparse.Namespace) -> dict:
    from m4.tokenizers.train import ARTIFACT_DIR, train

    out = {}
    for name in MODALITIES:
        run_dir = workdir / "tokenizers" / name
        artifact = run_dir / ARTIFACT_DIR
        if (artifact / "spec.json").exists():
            print(f"  tokenizer {name}: reusing {artifact}", flush=True)
        else:
            print(f"  tokenizer {name}: training", flush=True)
            train(tokenizer_config(name, recipe, workdir / "scene_cache"), run_dir,
                  progress=not args.quiet)
        out[name] = str(artifact)
    return out


def pretokenize(workdir: pathlib.Path, recipe: Recipe, args: argparse.Namespace) -> dict:
    from m4 import pretokenize as pt

    toks = pt.find_tokenizers(workdir / "tokenizers")
    source = pt.open_source("scenes", split="train", n=recipe.train_scenes, seed=args.seed,
                            resolution=recipe.resolution)
    out = workdir / "tokens" / "train"
    counts = pt.pretokenize(source, toks, out, num_shards=min(8, recipe.train_scenes),
                            seed=args.seed, pixel_inputs=recipe.pixel_inputs,
                            progress=not args.quiet)
    return {"tokens": str(out), **counts}


def train_model(workdir: pathlib.Path, recipe: Recipe, args: argparse.Namespace) -> dict:
    from m4.config import load_config
    from m4.train.loop import train

    file, _, arg = recipe.model_config.partition(":")
    spec = str(EXPERIMENTS / file) + (f":{arg}" if arg else "")
    config = load_config(spec, list(args.config_overrides or ()))
    config.data.shards = str(workdir / "tokens" / "train")
    config.data.tokenizers = str(workdir / "tokenizers")
    summary = train(config, workdir / "model", quiet=args.quiet)
    return {"model": str(workdir / "model"), "step": summary.get("step"),
            "loss": (summary.get("metrics") or {}).get("loss")}


def generations(workdir: pathlib.Path, recipe: Recipe, args: argparse.Namespace) -> dict:
    from m4.demo import figures

    out = workdir / "generations.png"
    picture = figures.generations(*_model_and_tokenizers(workdir), n=recipe.generation_scenes,
                                  resolution=recipe.resolution, seed=args.seed)
    _save_png(picture, out)
    return {"generations": str(out)}


def evaluate(workdir: pathlib.Path, recipe: Recipe, args: argparse.Namespace) -> dict:
    from m4 import eval as eval_lib

    model, toks = _model_and_tokenizers(workdir)
    report = eval_lib.evaluate_matrix(model, toks, n=recipe.eval_scenes, seed=args.seed,
                                      batch_size=recipe.eval_batch, resolution=recipe.resolution,
                                      modalities=recipe.eval_modalities, progress=not args.quiet)
    paths = eval_lib.write_report(report, workdir)
    print(eval_lib.summary_table(report), flush=True)
    return {k: str(v) for k, v in paths.items()} | {"headline": headline(report)}


# The demo's quality bar (issue 6), read from the matrix: (input row, target).
HEADLINE_CELLS = (("rgb", "depth"), ("rgb", "semseg"), ("rgb", "caption"), ("caption", "semseg"))


def headline(report: dict) -> dict:
    """The cells the demo is judged by, plus caption -> semseg's caption-blind baseline."""
    out = {}
    for row, target in HEADLINE_CELLS:
        cell = report["cells"].get(row, {}).get(target)
        if cell is not None:
            out[f"{row}->{target}"] = {"metric": report["primary"][target]["name"],
                                       "value": cell["value"]}
    base = report.get("baselines", {}).get("caption->semseg")
    if base:
        out["caption->semseg shuffled-caption baseline"] = base["shuffled_caption"]
    return out


def _model_and_tokenizers(workdir: pathlib.Path):
    from m4.pretokenize import find_tokenizers
    from m4.train.model_io import load_model

    model = load_model(workdir / "model")
    toks = find_tokenizers(workdir / "tokenizers")
    return model, {s.name: toks[s.name] for s in model.config.modalities if s.name in toks}


def _save_png(picture, path: pathlib.Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    picture.save(tmp, format="PNG")
    tmp.replace(path)


def read_marker(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())
