"""`m4 demo` end to end at test size (`--recipe tiny`): every stage, then a resume that skips all.

The full recipe is the README's main job (~30 min); the tiny one runs the same code paths.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from PIL import Image


STAGES = ("preview", "tokenizers", "pretokenize", "train", "generations", "eval")


def _demo(workdir: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
    """Runs the demo as `make demo` does: a workdir relative to the current directory."""
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "m4.cli", "demo", "--workdir", workdir.name,
                           "--recipe", "tiny", "--quiet", *extra],
                          cwd=workdir.parent, env=env, capture_output=True, text=True,
                          timeout=900)


def test_tiny_demo_runs_every_stage_then_resumes(tmp_path):
    workdir = tmp_path / "demo"
    first = _demo(workdir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for name in STAGES:
        assert (workdir / "stages" / f"{name}.done").exists(), name
    for name in ("preview.png", "generations.png", "eval.png"):
        with Image.open(workdir / name) as img:
            assert img.size[0] > 100 and img.size[1] > 100, name
    report = json.loads((workdir / "eval.json").read_text())
    assert report["settings"]["n"] == 4
    marker = json.loads((workdir / "stages" / "eval.done").read_text())
    assert "rgb->depth" in marker["headline"]
    assert (workdir / "model" / "model_config.json").exists()
    for modality in ("rgb", "depth", "normals", "semseg", "features", "caption", "poses"):
        assert (workdir / "tokenizers" / modality / "tokenizer" / "spec.json").exists(), modality

    again = _demo(workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done already") == len(STAGES)


def test_demo_refuses_a_workdir_of_another_recipe(tmp_path):
    workdir = tmp_path / "demo"
    (workdir / "stages").mkdir(parents=True)
    (workdir / "stages" / "recipe.json").write_text(json.dumps({"recipe": "full"}))
    out = _demo(workdir, "--only", "preview")
    assert out.returncode != 0
    assert "--recipe full, not tiny" in out.stderr


def test_full_recipe_tokenizer_configs(tmp_path):
    """The README demo's tokenizer configs: every modality's own override is a real field (a typo
    fails here instead of being skipped), and rgb / semseg get the local encoder."""
    import dataclasses

    import pytest

    from m4.demo.recipe import FULL, MODALITIES
    from m4.demo.stages import tokenizer_config

    configs = {name: tokenizer_config(name, FULL, tmp_path) for name in MODALITIES}
    for name in ("rgb", "semseg"):
        model = configs[name].model
        assert (model.kernel_size, model.decoder_kernel_size, model.space_to_depth,
                tuple(model.widths)) == (1, 3, 8, (128,)), name
    assert configs["depth"].model.kernel_size == 3
    bad = dataclasses.replace(FULL, tokenizer_overrides={"rgb": {"model.kernel_sise": 1}})
    with pytest.raises(KeyError, match=r"tokenizer_overrides\['rgb'\]: 'model.kernel_sise'"):
        tokenizer_config("rgb", bad, tmp_path)
