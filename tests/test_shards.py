import numpy as np
import pytest

from m4.data import pipeline, shards


def _records(n, crops=3):
    rng = np.random.default_rng(0)
    return [{"id": f"s{i:03d}",
             "tokens": {"rgb": rng.integers(0, 1024, (crops, 64)).astype(np.int16),
                        "caption": np.full((crops, 5), i, np.int32)},
             "caption": f"scene {i}"} for i in range(n)]


def _write(directory, records, num_shards=2):
    for s in range(num_shards):
        with shards.ShardWriter(directory / shards.shard_name(s, num_shards)) as w:
            for r in records[s::num_shards]:
                w.write(r)
    shards.write_manifest(directory, {"modalities": {"rgb": {"vocab_size": 1024, "shape": [64]}}})


def test_record_round_trip_is_exact():
    record = _records(1)[0]
    back = shards.decode_record(shards.encode_record(record))
    assert back["id"] == record["id"] and back["caption"] == record["caption"]
    for name, arr in record["tokens"].items():
        assert back["tokens"][name].dtype == arr.dtype
        np.testing.assert_array_equal(back["tokens"][name], arr)


def test_interrupted_shard_is_not_finished(tmp_path):
    path = tmp_path / shards.shard_name(0, 1)
    with pytest.raises(RuntimeError):
        with shards.ShardWriter(path) as w:
            w.write(_records(1)[0])
            raise RuntimeError("crash")
    assert not path.exists() and shards.finished_shards(tmp_path) == []
    with pytest.raises(shards.ShardError, match="no finished shards"):
        shards.check_complete(tmp_path)


def test_missing_shard_is_named(tmp_path):
    with shards.ShardWriter(tmp_path / shards.shard_name(0, 2)) as w:
        w.write(_records(1)[0])
    with pytest.raises(shards.ShardError, match="shard-00001-of-00002"):
        shards.check_complete(tmp_path)


def test_pipeline_reads_every_record_once_per_epoch_across_processes(tmp_path):
    records = _records(10)
    _write(tmp_path, records)
    seen = []
    for p in range(2):
        ds = pipeline.token_dataset(tmp_path, seed=3, process_index=p, process_count=2, num_epochs=1)
        seen += [s["id"] for s in ds]
    assert sorted(seen) == sorted(r["id"] for r in records)


def test_crop_is_shared_across_modalities_and_deterministic(tmp_path):
    records = _records(6)
    _write(tmp_path, records)
    by_id = {r["id"]: r for r in records}
    a = list(pipeline.token_dataset(tmp_path, seed=5, num_epochs=1))
    b = list(pipeline.token_dataset(tmp_path, seed=5, num_epochs=1))
    for x, y in zip(a, b):
        assert x["id"] == y["id"] and x["crop"] == y["crop"]
        np.testing.assert_array_equal(x["rgb"], by_id[x["id"]]["tokens"]["rgb"][x["crop"]])
        np.testing.assert_array_equal(x["caption"], by_id[x["id"]]["tokens"]["caption"][x["crop"]])


def test_iterator_state_resumes_exactly(tmp_path):
    _write(tmp_path, _records(8))
    ds = pipeline.token_dataset(tmp_path, seed=1)  # repeats forever
    it = iter(ds.to_iter_dataset())
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(7)]
    it2 = iter(pipeline.token_dataset(tmp_path, seed=1).to_iter_dataset())
    it2.set_state(state)
    for want in expected:
        got = next(it2)
        assert got["id"] == want["id"] and got["crop"] == want["crop"]


def test_manifest_mismatch_is_refused(tmp_path):
    _write(tmp_path, _records(4))
    with pytest.raises(shards.ShardError, match="'vocab_size'.*1024.*2048"):
        pipeline.token_dataset(tmp_path, seed=0,
                               expected_manifest={"modalities": {"rgb": {"vocab_size": 2048}}})
    with pytest.raises(shards.ShardError, match="lack modalities"):
        pipeline.token_dataset(tmp_path, seed=0,
                               expected_manifest={"modalities": {"depth": {"vocab_size": 8}}})
