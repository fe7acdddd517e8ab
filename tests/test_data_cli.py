"""`m4 data preview | tfds | export`, run in-process through m4.cli.main (and once as a process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from m4.cli import main
from m4.data import scenes, tfds_scenes
from m4.data.folder import FolderDataset


def test_help_as_a_process():
    out = subprocess.run([sys.executable, "-m", "m4.cli", "data", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for sub in ("preview", "tfds", "export", "--config.<field>=<value>"):
        assert sub in out.stdout


@pytest.mark.parametrize("sub, options", [
    ("preview", ["--n", "--out", "--start", "--folder", "--seed", "--resolution", "--tile"]),
    ("tfds", ["--out", "--train", "--val", "--seed", "--resolution"]),
    ("export", ["--n", "--out", "--start", "--modalities", "--seed", "--resolution"]),
])
def test_every_subcommand_has_help(capsys, sub, options):
    with pytest.raises(SystemExit) as e:
        main(["data", sub, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: m4 data {sub}")
    for option in options:
        assert option in text


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data"])
    assert e.value.code == 2
    assert "required: <subcommand>" in capsys.readouterr().err


def test_preview_writes_a_grid(tmp_path, capsys):
    out = tmp_path / "sub" / "grid.png"
    assert main(["data", "preview", "--n", "3", "--out", str(out), "--resolution", "32",
                 "--tile", "40", "--start", "5", "--seed", "2"]) == 0
    assert "scenes 5..7 of seed 2" in capsys.readouterr().out
    with Image.open(out) as im:
        grid = np.asarray(im.convert("RGB"))
    # Six tiles per row, three rows: the grid is wider than 6 tiles and taller than 3.
    assert grid.shape[1] > 6 * 40 and grid.shape[0] > 3 * 40
    assert grid.std() > 10  # not a blank image


def test_export_then_read_and_preview_the_folder(tmp_path, capsys):
    root = tmp_path / "mine"
    assert main(["data", "export", "--n", "3", "--out", str(root), "--resolution", "32",
                 "--start", "4", "--seed", "1", "--config.max_figures=3"]) == 0
    assert "wrote 3 samples (00000004 .. 00000006)" in capsys.readouterr().out
    assert json.loads((root / "scene_config.json").read_text())["max_figures"] == 3
    ds = FolderDataset(root)
    config = scenes.SceneConfig(resolution=32, max_figures=3)
    assert ds.config == config and ds.ids == ["00000004", "00000005", "00000006"]
    np.testing.assert_array_equal(ds[2]["poses"], scenes.render(1, 6, config)["poses"])

    grid = tmp_path / "folder.png"
    assert main(["data", "preview", "--folder", str(root), "--n", "5", "--out", str(grid),
                 "--tile", "40"]) == 0
    assert f"3 samples of {root}" in capsys.readouterr().out
    assert grid.is_file()


def test_export_a_subset_of_modalities(tmp_path):
    root = tmp_path / "two"
    assert main(["data", "export", "--n", "2", "--out", str(root), "--resolution", "32",
                 "--modalities", "rgb, caption"]) == 0
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["caption", "rgb"]
    assert FolderDataset(root).modalities == ("rgb", "caption")


@pytest.mark.parametrize("argv, message", [
    (["export", "--n", "1", "--config.max_figurs=3"],
     "config override 'max_figurs': no field 'max_figurs' (known: feature_orientations"),
    (["export", "--n", "1", "--resolution", "20"],
     "SceneConfig.resolution: expected 32 <= resolution <= 256, got 20"),
    (["export", "--n", "1", "--modalities", "rgb,lidar"],
     "modalities: expected names from ['rgb', 'depth'"),
    (["preview", "--folder", "/nonexistent/folder"],
     "/nonexistent/folder: expected a folder, found nothing"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, argv, message):
    if "--out" not in argv and argv[0] == "export":
        argv = [*argv, "--out", str(tmp_path / "x")]
    if argv[0] == "preview":
        argv = [*argv, "--out", str(tmp_path / "x.png")]
    assert main(["data", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"m4 data {argv[0]}: error: ")
    assert message in err
    assert "Traceback" not in err


def test_export_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["data", "export", "--n", "1", "--out", str(tmp_path), "--resolution", "32"]) == 2
    assert "expected a new or empty folder, found a non-empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_tfds_builds_a_readable_dataset(tmp_path, capsys):
    import tensorflow_datasets as tfds

    assert main(["data", "tfds", "--out", str(tmp_path), "--train", "3", "--val", "2",
                 "--resolution", "32", "--seed", "4"]) == 0
    name = "r32_seed4_train3_val2"
    assert f"built m4_scenes/{name}" in capsys.readouterr().out
    source = tfds.data_source(f"m4_scenes/{name}", data_dir=os.fspath(tmp_path))
    assert len(source["train"]) == 3 and len(source["validation"]) == 2
    assert main(["data", "tfds", "--out", str(tmp_path), "--train", "3", "--val", "2",
                 "--resolution", "32", "--seed", "4"]) == 0
    assert f"found already built m4_scenes/{name}" in capsys.readouterr().out
    record = source["validation"][1]
    assert record["index"] == tfds_scenes.VALIDATION_START + 1
    np.testing.assert_array_equal(
        record["rgb"], scenes.render(4, tfds_scenes.VALIDATION_START + 1,
                                     scenes.SceneConfig(resolution=32))["rgb"])
