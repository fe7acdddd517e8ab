"""Data formats: the folder format and the TFDS builder round-trip the scenes exactly, and bad
files fail with a message that names the file, the field, the expected and the found value."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from m4.data import folder, raw_checks, scenes, tfds_scenes
from m4.data.folder import FolderDataset, FolderError
from m4.data.raw_checks import RawDataError

CFG = scenes.SceneConfig(resolution=32)
SEED = 3


def assert_same_sample(got: dict, want: dict, modalities=scenes.MODALITIES) -> None:
    for name in modalities:
        if name == "caption":
            assert isinstance(got[name], str) and got[name] == want[name]
        else:
            assert got[name].dtype == want[name].dtype, name
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    if "poses" in modalities:
        assert got["num_figures"] == want["num_figures"]
        assert isinstance(got["num_figures"], int)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Scenes 10..15 of SEED, every modality, in the folder format."""
    root = tmp_path_factory.mktemp("export") / "scenes"
    ids = folder.export_scenes(root, 6, seed=SEED, start=10, config=CFG)
    return root, ids


@pytest.fixture
def damaged(exported, tmp_path):
    """A private copy of the exported folder, for tests that break files."""
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(exported[0], root)
    return root


# --------------------------------------------------------------------------------------------
# Folder format: round trips.

def test_folder_round_trip_is_exact(exported):
    root, ids = exported
    assert ids == [folder.scene_id(i) for i in range(10, 16)] == [f"000000{i}" for i in
                                                                   range(10, 16)]
    ds = FolderDataset(root)  # resolution comes from the scene_config.json export wrote
    assert ds.config == CFG
    assert ds.modalities == scenes.MODALITIES
    assert ds.ids == ids and len(ds) == 6
    for i, sample in enumerate(ds):
        want = scenes.render(SEED, 10 + i, CFG)
        assert_same_sample(sample, want)
        assert set(sample) == set(scenes.MODALITIES) | {"num_figures"}
    assert_same_sample(ds[-1], scenes.render(SEED, 15, CFG))
    with pytest.raises(IndexError):
        ds[6]
    assert_same_sample(ds.read("00000012"), scenes.render(SEED, 12, CFG))
    with pytest.raises(KeyError, match="no sample with id '12'"):
        ds.read("12")


def test_folder_files_are_plain_formats(exported):
    root, ids = exported
    want = scenes.render(SEED, 10, CFG)
    with Image.open(root / "rgb" / f"{ids[0]}.png") as im:
        assert im.mode == "RGB" and im.size == (32, 32)
    with Image.open(root / "semseg" / f"{ids[0]}.png") as im:
        assert im.mode == "L"
    assert (root / "caption" / f"{ids[0]}.txt").read_text() == want["caption"] + "\n"
    # Poses files hold only the rows of real figures: their count varies per sample.
    counts = set()
    for i, sid in enumerate(ids):
        poses = np.load(root / "poses" / f"{sid}.npy")
        n = scenes.render(SEED, 10 + i, CFG)["num_figures"]
        assert poses.shape == (n, scenes.NUM_JOINTS, 3)
        counts.add(n)
    assert len(counts) > 1, "test data should mix figure counts"


def test_folder_subset_of_modalities(exported, tmp_path):
    root, _ = exported
    only = FolderDataset(root, modalities=["caption", "rgb"])
    assert only.modalities == ("rgb", "caption")  # spec order
    sample = only[0]
    assert set(sample) == {"rgb", "caption"}
    assert_same_sample(sample, scenes.render(SEED, 10, CFG), ("rgb", "caption"))

    # A folder that holds only some modalities is discovered as such.
    partial = tmp_path / "partial"
    folder.export_scenes(partial, 2, seed=SEED, config=CFG, modalities=["depth", "poses"])
    ds = FolderDataset(partial)
    assert ds.modalities == ("depth", "poses")
    assert_same_sample(ds[1], scenes.render(SEED, 1, CFG), ("depth", "poses"))


def test_folder_of_users_own_samples(tmp_path):
    """export_folder takes any raw samples with any ids; users' captions keep every character."""
    samples = [scenes.render(0, i, CFG) for i in range(3)]
    samples[1]["caption"] = "ünïcode line one\nline two \n"
    ids = ["cat", "dog", "zebra_2"]
    folder.export_folder(tmp_path / "mine", samples, config=CFG, ids=ids)
    ds = FolderDataset(tmp_path / "mine", CFG)
    assert ds.ids == ids
    for got, want in zip(ds, samples):
        assert_same_sample(got, want)


def test_caption_line_endings_from_editors(exported, damaged):
    sid = exported[1][0]
    (damaged / "caption" / f"{sid}.txt").write_bytes(b"a red box\r\n")
    assert FolderDataset(damaged)[0]["caption"] == "a red box"
    (damaged / "caption" / f"{sid}.txt").write_bytes(b"no newline at all")
    assert FolderDataset(damaged)[0]["caption"] == "no newline at all"


def test_hidden_files_are_ignored(damaged):
    (damaged / "rgb" / ".DS_Store").write_bytes(b"junk")
    (damaged / ".git").mkdir()
    assert len(FolderDataset(damaged)) == 6


# --------------------------------------------------------------------------------------------
# Folder format: bad layouts fail on open.

def test_missing_file_names_each_missing_file(exported, damaged):
    a, b = exported[1][1], exported[1][4]
    os.remove(damaged / "depth" / f"{a}.npy")
    os.remove(damaged / "depth" / f"{b}.npy")
    os.remove(damaged / "caption" / f"{a}.txt")
    with pytest.raises(FolderError) as e:
        FolderDataset(damaged)
    msg = str(e.value)
    assert "expected the same sample ids in every modality folder" in msg
    assert f"depth/: 2 missing: depth/{a}.npy, depth/{b}.npy" in msg
    assert f"caption/: 1 missing: caption/{a}.txt" in msg
    assert "rgb/" not in msg.split("found")[-1]


def test_extra_file_in_one_modality_is_reported(exported, damaged):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(damaged / "rgb" / "extra.png")
    with pytest.raises(FolderError) as e:
        FolderDataset(damaged)
    msg = str(e.value)
    for name, ext in (("depth", "npy"), ("semseg", "png"), ("caption", "txt"), ("poses", "npy")):
        assert f"{name}/: 1 missing: {name}/extra.{ext}" in msg


def test_long_lists_are_shortened(tmp_path):
    root = tmp_path / "many"
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    for i in range(13):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "rgb" / f"{i:02d}.png")
    with pytest.raises(FolderError, match=r"depth/: 13 missing: depth/00.npy, .*depth/09.npy "
                                          r"and 3 more"):
        FolderDataset(root, CFG)


def test_wrong_extension(exported, damaged):
    sid = exported[1][2]
    os.rename(damaged / "rgb" / f"{sid}.png", damaged / "rgb" / f"{sid}.jpg")
    with pytest.raises(FolderError) as e:
        FolderDataset(damaged)
    assert str(e.value) == (f"{damaged / 'rgb' / (sid + '.jpg')}: expected a .png file (rgb files "
                            f"are .png), found a .jpg file")


def test_unknown_and_missing_folders(exported, damaged, tmp_path):
    (damaged / "scene").mkdir()
    with pytest.raises(FolderError, match=r"expected only modality folders \['rgb', .*found also "
                                          r"\['scene'\]"):
        FolderDataset(damaged)
    # Asking for a subset leaves other folders alone ...
    assert FolderDataset(damaged, modalities=["rgb"]).modalities == ("rgb",)
    # ... but a requested modality without a folder is an error, as is an unknown name.
    partial = tmp_path / "partial"
    folder.export_scenes(partial, 1, config=CFG, modalities=["rgb"])
    with pytest.raises(FolderError, match=r"found none for \['depth'\]"):
        FolderDataset(partial, modalities=["rgb", "depth"])
    with pytest.raises(FolderError, match=r"expected names from .* found \['lidar'\]"):
        FolderDataset(partial, modalities=["lidar"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FolderError, match="expected at least one modality folder"):
        FolderDataset(tmp_path / "empty")
    with pytest.raises(FolderError, match="expected a folder, found nothing"):
        FolderDataset(tmp_path / "nope")


def test_config_must_agree_with_scene_config_json(exported):
    with pytest.raises(FolderError, match=r"scene_config.json: config: expected "
                                          r"SceneConfig\(resolution=64.*found SceneConfig\("
                                          r"resolution=32"):
        FolderDataset(exported[0], scenes.SceneConfig(resolution=64))


# --------------------------------------------------------------------------------------------
# Folder format: bad files fail on read, naming the file, the field, expected and found.

def _break(root, sid, modality, value):
    spec = scenes.raw_specs(CFG)[modality]
    path = root / modality / (sid + folder.file_extension(spec))
    if path.suffix == ".npy":
        np.save(path, value)
    elif path.suffix == ".png":
        Image.fromarray(value).save(path)
    else:
        path.write_bytes(value)
    return path


@pytest.mark.parametrize("modality, value, expected", [
    ("depth", np.ones((32, 32), np.float64),
     "depth: expected float32 [32, 32], got float64 [32, 32]"),
    ("normals", np.zeros((32, 32), np.float32),
     "normals: expected float32 [32, 32, 3], got float32 [32, 32]"),
    ("features", np.full((4, 4, 9), 2.0, np.float32),
     "features: expected values in [0.0, 1.0], got [2.0, 2.0]"),
    ("depth", np.full((32, 32), np.nan, np.float32),
     "depth: expected finite values, found 1024 NaN/Inf values"),
    ("semseg", np.full((32, 32), 99, np.uint8),
     f"semseg: expected class ids < {len(scenes.CLASS_NAMES)}, got 99"),
    ("rgb", np.zeros((32, 32, 4), np.uint8),
     "rgb: expected uint8 [32, 32, 3], got uint8 [32, 32, 4]"),
    ("rgb", np.zeros((16, 16, 3), np.uint8),
     "rgb: expected uint8 [32, 32, 3], got uint8 [16, 16, 3]"),
    ("semseg", np.zeros((32, 32), np.uint16),
     "semseg: expected uint8 [32, 32], got uint16 [32, 32]"),
    ("poses", np.zeros((3, scenes.NUM_JOINTS, 3), np.float32),
     "poses: expected at most max_figures=2 figures, found 3"),
    ("poses", np.zeros((1, 14, 3), np.float32),
     f"poses: expected shape [num_figures <= 2, {scenes.NUM_JOINTS}, 3], found [1, 14, 3]"),
    ("poses", np.zeros((1, scenes.NUM_JOINTS, 3), np.float64),
     "poses: expected dtype float32, found float64"),
    ("poses", np.full((1, scenes.NUM_JOINTS, 3), -5.0, np.float32),
     "poses: expected values in [0.0, 32.0], got [-5.0, 0.0]"),  # 0: the padding row
    ("caption", b"caf\xe9 au lait", "caption: expected UTF-8 text, found byte 0xe9 at offset 3"),
    ("depth", np.array([{"a": 1}], dtype=object),
     "depth: expected a readable .npy array file, found ValueError"),
])
def test_bad_file_errors_name_file_field_expected_found(exported, damaged, modality, value,
                                                        expected):
    sid = exported[1][3]
    path = _break(damaged, sid, modality, value)
    ds = FolderDataset(damaged)  # opening only checks the layout
    ds[0]  # other samples are fine
    with pytest.raises(RawDataError) as e:
        ds[3]
    assert str(e.value).startswith(f"{path}: {expected}"), str(e.value)


def test_non_png_and_corrupt_png(exported, damaged):
    sid = exported[1][0]
    path = damaged / "rgb" / f"{sid}.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path, format="JPEG")
    with pytest.raises(RawDataError, match=r"rgb: expected a PNG file, found a JPEG file"):
        FolderDataset(damaged)[0]
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(RawDataError, match=r"\.png: rgb: expected a readable PNG file, found"):
        FolderDataset(damaged)[0]


def test_palette_png_gives_class_ids(exported, damaged):
    """Segmentation datasets store class ids as palette PNGs: the indices are the ids."""
    sid = exported[1][0]
    ids = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32) % len(scenes.CLASS_NAMES)
    image = Image.fromarray(ids, mode="L").convert("P")
    image.putpalette([c for i in range(256) for c in (i * 7 % 256, i * 3 % 256, i)])
    image.save(damaged / "semseg" / f"{sid}.png")
    np.testing.assert_array_equal(FolderDataset(damaged)[0]["semseg"], ids)


# --------------------------------------------------------------------------------------------
# Folder format: export refuses bad input before writing it.

def test_export_checks_samples_and_target(tmp_path, exported):
    bad = scenes.render(0, 0, CFG)
    bad["depth"] = bad["depth"].astype(np.float64)
    with pytest.raises(RawDataError, match=r"sample '00000000': depth: expected float32 \[32, "
                                           r"32\], got float64"):
        folder.export_folder(tmp_path / "a", [bad], config=CFG)
    assert not any((tmp_path / "a" / "depth").iterdir())
    with pytest.raises(FolderError, match="expected a new or empty folder, found a non-empty"):
        folder.export_scenes(exported[0], 1, config=CFG)
    good = scenes.render(0, 0, CFG)
    with pytest.raises(FolderError, match=r"expected unique ids, found 'x' twice"):
        folder.export_folder(tmp_path / "b", [good, good], config=CFG, ids=["x", "x"])
    with pytest.raises(FolderError, match=r"expected a non-empty file name .* found '../x'"):
        folder.export_folder(tmp_path / "c", [good], config=CFG, ids=["../x"])
    with pytest.raises(FolderError, match=r"n: expected an int >= 1, found 0"):
        folder.export_scenes(tmp_path / "d", 0, config=CFG)


# --------------------------------------------------------------------------------------------
# Shared checks.

def test_check_sample_rules():
    specs = scenes.raw_specs(CFG)
    sample = scenes.render(1, 2, CFG)
    checked = raw_checks.check_sample(sample, specs, where="here")
    assert set(checked) == set(scenes.MODALITIES) | {"num_figures"}
    with pytest.raises(RawDataError, match=r"^here: semseg: expected a value, found none"):
        raw_checks.check_sample({k: v for k, v in sample.items() if k != "semseg"}, specs,
                                where="here")
    with pytest.raises(RawDataError, match=r"^here: rgb: expected a numpy array \(uint8 "
                                           r"\[32, 32, 3\]\), found list"):
        raw_checks.check_sample({**sample, "rgb": sample["rgb"].tolist()}, specs, where="here")
    poses = np.full_like(sample["poses"], 1.0)
    with pytest.raises(RawDataError, match=r"poses: expected rows 0.. all zero \(num_figures=0\)"):
        raw_checks.check_sample({**sample, "poses": poses, "num_figures": 0}, specs,
                                where="here")
    with pytest.raises(RawDataError, match=r"num_figures: expected 0..2 \(max_figures\), found 5"):
        raw_checks.check_sample({**sample, "num_figures": 5}, specs, where="here")


# --------------------------------------------------------------------------------------------
# TFDS.

def test_tensorflow_is_not_installed():
    # The TFDS builder must work without TensorFlow; this environment proves it only if TF is
    # really absent.
    assert importlib.util.find_spec("tensorflow") is None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    config = tfds_scenes.make_config(resolution=32, num_train=5, num_validation=3, seed=SEED)
    tfds_scenes.build(data_dir, config)
    return data_dir, config


def test_tfds_config_names_spell_the_sizes():
    c = tfds_scenes.make_config(resolution=32, num_train=5, num_validation=3, seed=2)
    assert c.name == "r32_seed2_train5_val3"
    other = tfds_scenes.make_config(scene=scenes.SceneConfig(resolution=32, max_figures=3),
                                    num_train=5, num_validation=3, seed=2)
    assert other.name.startswith("r32_seed2_train5_val3_") and other.name != c.name
    with pytest.raises(tfds_scenes.TfdsScenesError, match=r"num_train: expected an int >= 0, "
                                                          r"found -1"):
        tfds_scenes.make_config(num_train=-1)
    # The predefined config, asked for by an equal copy, is accepted (tfds compares identity).
    default = tfds_scenes.M4Scenes.BUILDER_CONFIGS[0]
    builder = tfds_scenes.M4Scenes(data_dir="/nonexistent", config=tfds_scenes.make_config())
    assert builder.builder_config is default
    with pytest.raises(tfds_scenes.TfdsScenesError, match=r"expected 'array_record'"):
        tfds_scenes.M4Scenes(file_format="tfrecord")


def test_tfds_round_trip_through_data_source(built):
    import tensorflow_datasets as tfds

    data_dir, config = built
    source = tfds.data_source(f"m4_scenes/{config.name}", data_dir=os.fspath(data_dir))
    assert len(source["train"]) == 5 and len(source["validation"]) == 3
    for split, first in (("train", 0), ("validation", tfds_scenes.VALIDATION_START)):
        for i in range(len(source[split])):
            record = source[split][i]
            index = first + i  # records are in index order
            assert record["index"] == index
            want = scenes.render(SEED, index, CFG)
            assert record["caption"].decode() == want["caption"]
            assert json.loads(record["scene"]) == json.loads(json.dumps(want["scene"]))
            record = {**record, "caption": want["caption"]}
            assert_same_sample(record, want)


def test_tfds_open_split_gives_checked_raw_samples(built):
    data_dir, config = built
    split = tfds_scenes.open_split(data_dir, config.name, "validation")
    assert split.scene_config == CFG  # read back from the dataset's metadata
    assert len(split) == 3
    for i, sample in enumerate(split):
        want = scenes.render(SEED, tfds_scenes.VALIDATION_START + i, CFG)
        assert_same_sample(sample, want)
        assert sample["index"] == tfds_scenes.VALIDATION_START + i
        assert sample["scene"]["index"] == sample["index"]
    train = tfds_scenes.open_split(data_dir, config.name, "train")
    train_indices = {s["index"] for s in train}
    assert train_indices == set(range(5))
    assert not train_indices & {s["index"] for s in split}
    with pytest.raises(IndexError):
        train[5]


def test_tfds_empty_split_is_left_out(tmp_path):
    import tensorflow_datasets as tfds

    config = tfds_scenes.make_config(resolution=32, num_train=1, num_validation=0)
    tfds_scenes.build(tmp_path, config)
    source = tfds.data_source(f"m4_scenes/{config.name}", data_dir=os.fspath(tmp_path))
    assert list(source) == ["train"] and len(source["train"]) == 1
    with pytest.raises(tfds_scenes.TfdsScenesError, match=r"split: expected one of the built "
                                                          r"splits \['train'\], found 'valid"):
        tfds_scenes.open_split(tmp_path, config.name, "validation")


def test_tfds_bad_requests(built, tmp_path):
    data_dir, config = built
    with pytest.raises(tfds_scenes.TfdsScenesError, match=r"split: expected one of \('train', "
                                                          r"'validation'\), found 'test'"):
        tfds_scenes.open_split(data_dir, config.name, "test")
    with pytest.raises(tfds_scenes.TfdsScenesError, match=r"m4_scenes/r32_seed0_train1_val1 in "
                                                          r".*: expected a built dataset"):
        tfds_scenes.open_split(tmp_path, "r32_seed0_train1_val1", "train")
    default = tfds_scenes.M4Scenes.BUILDER_CONFIGS[0].name
    with pytest.raises(tfds_scenes.TfdsScenesError, match=rf"m4_scenes/{default} in .*: "
                                                          r"expected a built dataset, found none"):
        tfds_scenes.open_split(tmp_path, default, "train")


def test_tfds_reads_without_m4_or_tensorflow(built):
    """Anyone with tfds can read the files: a fresh process that never imports m4."""
    data_dir, config = built
    code = (
        "import sys, tensorflow_datasets as tfds\n"
        f"s = tfds.data_source('m4_scenes/{config.name}', data_dir={os.fspath(data_dir)!r})\n"
        "r = s['validation'][2]\n"
        "print(len(s['train']), r['index'], r['rgb'].shape, r['semseg'].dtype, r['poses'].shape)\n"
        "assert 'tensorflow' not in sys.modules and 'm4' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", str(tfds_scenes.VALIDATION_START + 2), "(32,", "32,", "3)",
                                  "uint8", "(2,", f"{scenes.NUM_JOINTS},", "3)"]
