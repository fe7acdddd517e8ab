import json
import os

import numpy as np
import pytest

from m4 import cli
from m4.data import augment, pipeline, scenes, shards
from m4.pretokenize import (PretokenizeError, Source, expected_manifest, find_tokenizers,
                            open_source, pretokenize)


@pytest.fixture(scope="module")
def toks(tiny_tokenizers):
    return find_tokenizers(tiny_tokenizers)


def _records(directory):
    out = {}
    for path in shards.check_complete(directory):
        for r in shards.read_records(path):
            out[r["index"]] = r
    return out


def test_records_hold_aligned_crops_that_match_direct_encoding(toks, tmp_path):
    source = open_source("scenes", n=6, seed=3, resolution=32)
    result = pretokenize(source, toks, tmp_path, crops=3, num_shards=2, seed=3, progress=False)
    assert result == {"written": 2, "skipped": 0, "shards": 2}
    manifest = shards.read_manifest(tmp_path)
    assert manifest["crops"] == 3 and manifest["num_records"] == 6
    assert manifest["modalities"]["rgb"]["spec"]["kind"] == "image"
    assert manifest["modalities"]["poses"]["spec"]["kind"] == "vectors"
    assert manifest["modalities"]["caption"]["spec"]["kind"] == "sequence"
    assert manifest["text"]["first_sentinel_id"] == toks["caption"].special_ids["sentinel_start"] + 1
    records = _records(tmp_path)
    assert sorted(records) == list(range(6))
    for index, record in records.items():
        raw = scenes.render(3, index, scenes.SceneConfig(resolution=32))
        assert record["caption"] == raw["caption"]
        np.testing.assert_array_equal(record["crops"][0], [0, 0, 32, 32, 0])   # crop 0: whole image
        for name in ("rgb", "depth", "semseg"):
            tokens = record["tokens"][name]
            assert tokens.shape == (3, int(np.prod(toks[name].token_shape)))
            direct = toks[name].encode(raw[name][None]).reshape(-1)
            np.testing.assert_array_equal(tokens[0], direct)
        assert record["tokens"]["poses"].shape[0] == 3
        # Crops are shared: crop k of every modality is the same region of the same scene.
        cropped = augment.apply_crop(raw, record["crops"][1], feature_patch=8,
                                     feature_orientations=9)
        np.testing.assert_array_equal(record["tokens"]["semseg"][1],
                                      toks["semseg"].encode(cropped["semseg"][None]).reshape(-1))
        text = toks["caption"].decode(np.concatenate([record["tokens"]["caption"][0], [3]])[None])
        assert text == [raw["caption"]]


class _Crashing:
    """A source that fails at one sample, as a killed worker would."""

    def __init__(self, base, fail_at):
        self.base, self.fail_at = base, fail_at

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise KeyboardInterrupt("worker killed")
        return self.base[i]


def test_interrupted_run_resumes_without_redoing_finished_shards(toks, tmp_path):
    clean = tmp_path / "clean"
    pretokenize(open_source("scenes", n=9, resolution=32), toks, clean, num_shards=3,
                progress=False)
    out = tmp_path / "resumed"
    base = open_source("scenes", n=9, resolution=32)
    crashing = Source(_Crashing(base.samples, fail_at=4), base.description, base.scene_config,
                      base.index_of)
    with pytest.raises(KeyboardInterrupt):
        pretokenize(crashing, toks, out, num_shards=3, progress=False)
    assert [p.name for p in shards.finished_shards(out)] == [shards.shard_name(0, 3)]
    assert not any(p.name.endswith(shards.PARTIAL_SUFFIX) for p in out.iterdir())
    first = out / shards.shard_name(0, 3)
    stamp = first.stat().st_mtime_ns
    result = pretokenize(base, toks, out, num_shards=3, progress=False)
    assert result == {"written": 2, "skipped": 1, "shards": 3}
    assert first.stat().st_mtime_ns == stamp
    a, b = _records(clean), _records(out)
    assert sorted(a) == sorted(b) == list(range(9))
    for i in a:
        for name in a[i]["tokens"]:
            np.testing.assert_array_equal(np.asarray(a[i]["tokens"][name]),
                                          np.asarray(b[i]["tokens"][name]))


def test_workers_write_disjoint_shards(toks, tmp_path):
    source = open_source("scenes", n=8, resolution=32)
    r0 = pretokenize(source, toks, tmp_path, num_shards=4, process_index=0, process_count=2,
                     progress=False)
    r1 = pretokenize(source, toks, tmp_path, num_shards=4, process_index=1, process_count=2,
                     progress=False)
    assert r0["written"] == r1["written"] == 2
    assert sorted(_records(tmp_path)) == list(range(8))


def test_mismatched_tokenizers_are_refused(toks, tmp_path):
    pretokenize(open_source("scenes", n=4, resolution=32), toks, tmp_path, num_shards=1,
                progress=False)
    expected = expected_manifest(toks)
    expected["modalities"]["rgb"]["tokenizer_hash"] = "0" * 64
    with pytest.raises(shards.ShardError, match="modality 'rgb' field 'tokenizer_hash'"):
        pipeline.token_dataset(tmp_path, seed=0, expected_manifest=expected)
    # Shards of another run cannot be mixed into the same directory.
    with pytest.raises(PretokenizeError, match="already holds shards made differently"):
        pretokenize(open_source("scenes", n=4, resolution=32), toks, tmp_path, crops=2,
                    num_shards=1, progress=False)


def test_cli_pretokenizes_an_exported_folder(tiny_tokenizers, tmp_path, capsys):
    from m4.data import folder

    folder.export_scenes(tmp_path / "raw", 5, config=scenes.SceneConfig(resolution=32))
    rc = cli.main(["pretokenize", "--data", f"folder:{tmp_path / 'raw'}", "--tokenizers",
                   str(tiny_tokenizers), "--out", str(tmp_path / "tok"), "--shards", "2",
                   "--modalities", "rgb", "caption"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["written"] == 2
    manifest = shards.read_manifest(tmp_path / "tok")
    assert list(manifest["modalities"]) == ["rgb", "caption"]
    rc = cli.main(["pretokenize", "--data", "nowhere:x", "--tokenizers", str(tiny_tokenizers),
                   "--out", str(tmp_path / "bad")])
    assert rc == 2 and "expected scenes, tfds:" in capsys.readouterr().out


def test_training_reads_pretokenized_shards_and_checks_their_tokenizers(toks, tiny_tokenizers,
                                                                        tmp_path):
    from m4.config import load_config
    from m4.train import loop

    pretokenize(open_source("scenes", n=8, resolution=32), toks, tmp_path / "tok", crops=2,
                num_shards=2, progress=False)
    config = load_config("experiments/demo.py:test", [
        f"data.shards={tmp_path / 'tok'}", f"data.tokenizers={tiny_tokenizers}",
        "total_steps=2"])
    summary = loop.train(config, tmp_path / "run", quiet=True)
    assert summary["step"] == 2 and np.isfinite(summary["metrics"]["loss"])
    # Replace one tokenizer by an artifact with other weights: the shards no longer match.
    other = tmp_path / "other_tokenizers"
    other.mkdir()
    for name in os.listdir(tiny_tokenizers):
        os.symlink(tiny_tokenizers / name, other / name)
    from m4.config import load_config as _load
    from m4.tokenizers.train import train as train_tokenizer

    (other / "rgb").unlink()
    rgb = train_tokenizer(_load("tokenizers/rgb.py:tiny", ["train.seed=7"]), tmp_path / "rgb7",
                          progress=False)
    os.symlink(rgb, other / "rgb")
    config.data.tokenizers = str(other)
    with pytest.raises(shards.ShardError, match="'rgb' field 'tokenizer_hash'"):
        loop.train(config, tmp_path / "run2", quiet=True)


def test_pixel_inputs_store_the_crops_patches_beside_the_tokens(toks, tmp_path):
    from m4.model.adapters import patchify
    from m4.pretokenize import pixel_spec

    source = open_source("scenes", n=4, seed=5, resolution=32)
    pretokenize(source, toks, tmp_path, crops=2, num_shards=1, seed=5, pixel_inputs=("rgb",),
                progress=False)
    manifest = shards.read_manifest(tmp_path)
    spec = pixel_spec(toks["rgb"])
    assert manifest["modalities"]["rgb_pixels"]["spec"] == spec.to_dict()
    assert spec.grid == tuple(toks["rgb"].token_shape) and spec.patch_dim == spec.patch_size ** 2 * 3
    for index, record in _records(tmp_path).items():
        raw = scenes.render(5, index, scenes.SceneConfig(resolution=32))
        stored = record["tokens"]["rgb_pixels"]
        assert stored.dtype == np.uint8 and stored.shape == (2, spec.length, spec.patch_dim)
        np.testing.assert_array_equal(stored[0], patchify(raw["rgb"][None], spec.patch_size)[0])
        cropped = augment.apply_crop(raw, record["crops"][1], feature_patch=8,
                                     feature_orientations=9)
        np.testing.assert_array_equal(stored[1], patchify(cropped["rgb"][None],
                                                          spec.patch_size)[0])
    with pytest.raises(PretokenizeError, match="need an image tokenizer"):
        expected_manifest(toks, pixel_inputs=("caption",))
    with pytest.raises(PretokenizeError, match="no tokenizer for 'normals'"):
        expected_manifest({"rgb": toks["rgb"]}, pixel_inputs=("normals",))
