import json

import numpy as np
import pytest

from m4.config import load_config
from m4.train import loop
from m4.train.metrics import read_jsonl
from token_shards_fixture import write_token_shards


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    return write_token_shards(tmp_path_factory.mktemp("tokens"))


def _config(token_dir, **overrides):
    items = [f"data.shards={token_dir}"] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config("experiments/demo.py:test", items)


def _losses(workdir):
    return {r["step"]: r["loss"] for r in read_jsonl(workdir / "metrics.jsonl")}


def test_train_logs_checkpoints_and_compiles_once(token_dir, tmp_path):
    summary = loop.train(_config(token_dir), tmp_path, quiet=True)
    assert summary["step"] == 6
    assert summary["compilations"] == 1   # no recompilation across steps
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 7))
    for key in ("loss", "grad_norm", "learning_rate", "loss/rgb", "loss/depth", "loss/caption",
                "tokens_per_second", "skipped_steps"):
        assert key in records[-1], key
    assert all(np.isfinite(r["loss"]) for r in records)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == [3, 6]
    assert list((tmp_path / "tensorboard").iterdir())
    model_cfg = json.loads((tmp_path / loop.MODEL_CONFIG_FILE).read_text())
    assert [m["name"] for m in model_cfg["modalities"]] == ["rgb", "depth", "caption"]


def test_resume_after_interruption_is_exact(token_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    loop.train(_config(token_dir), straight, quiet=True)
    first = loop.train(_config(token_dir), resumed, quiet=True, stop_at=3)
    assert first["step"] == 3
    second = loop.train(_config(token_dir), resumed, quiet=True)
    assert second["step"] == 6
    want, got = _losses(straight), _losses(resumed)
    assert sorted(got) == list(range(1, 7))
    for step in range(1, 7):
        assert got[step] == want[step], (step, got[step], want[step])


def test_config_errors_name_the_field(token_dir, tmp_path):
    with pytest.raises(loop.TrainConfigError, match="config.modalities names \\['normals'\\]"):
        loop.train(_config(token_dir, modalities="('rgb', 'normals')"), tmp_path, quiet=True)
    with pytest.raises(loop.TrainConfigError, match="config.mesh .*1 devices are not a multiple of 2"):
        loop.train(_config(token_dir, **{"mesh.data": 2, "mesh.fsdp": -1}), tmp_path, quiet=True)


def test_trained_model_loads_and_saves_back(token_dir, tmp_path, monkeypatch):
    import jax
    from flax import nnx

    from m4.train import model_io

    loop.train(_config(token_dir, total_steps=2), tmp_path / "run", quiet=True)
    # A relative path, as `make demo` passes (runs/demo/model): orbax itself needs absolute ones.
    monkeypatch.chdir(tmp_path)
    model = model_io.load_model("run")
    assert [s.name for s in model.config.modalities] == ["rgb", "depth", "caption"]
    model_io.save_model(tmp_path / "saved", model, step=7)
    again = model_io.load_model(tmp_path / "saved")
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The loaded model runs, and computes what the trained state computes.
    import jax.numpy as jnp

    from m4.model.batch import random_batch
    batch = jax.tree.map(jnp.asarray, random_batch(model.config, 2, 8, 8, seed=1))
    np.testing.assert_allclose(np.asarray(model.loss(batch)[0]), np.asarray(again.loss(batch)[0]))
    assert np.isfinite(float(model.loss(batch)[0]))
    with pytest.raises(model_io.ModelLoadError, match="no checkpoint at step 3"):
        model_io.load_model(tmp_path / "saved", step=3)
    with pytest.raises(model_io.ModelLoadError, match="no model_config.json"):
        model_io.load_model(tmp_path)
