"""Image and pose tokenizers: training (tiny configs), artifacts, encode/decode, input checks."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import m4.tokenizers as tokenizers
from m4.config import load_config
from m4.data import scenes
from m4.tokenizers import artifact
from m4.tokenizers.train import train
from m4.train.metrics import read_jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(modality: str, *overrides: str):
    return load_config(str(REPO / "tokenizers" / f"{modality}.py") + ":tiny", list(overrides))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("scene_cache"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):
    """One tiny trained tokenizer per modality, shared by the tests of this module."""
    out = {}

    def get(modality: str):
        if modality not in out:
            workdir = tmp_path_factory.mktemp(f"tok_{modality}")
            cfg = _config(modality, f"data.cache_dir={cache}")
            out[modality] = (train(cfg, workdir, progress=False), workdir)
        return out[modality]

    return get


def _scenes(n: int = 6, seed: int = 5):
    return scenes.render_batch(seed, range(n), scenes.SceneConfig(resolution=32, feature_patch=8))


# -------------------------------------------------------------------------------- training
@pytest.mark.parametrize("modality", ["rgb", "depth", "normals", "semseg", "features"])
def test_image_tokenizer_shapes_and_determinism(trained, modality):
    path, workdir = trained(modality)
    tok = tokenizers.load(path)
    x = _scenes()[modality]
    tokens = tok.encode(x)
    grid = (8, 8) if modality != "features" else (4, 4)   # tiny: 32 px / patch 4; HOG 4x4
    assert tokens.dtype == np.int32 and tokens.shape == (len(x), *grid)
    assert tokens.min() >= 0 and tokens.max() < tok.vocab_size
    np.testing.assert_array_equal(tokens, tok.encode(x))                  # deterministic
    np.testing.assert_array_equal(tokens[2:3], tok.encode(x[2:3]))      # batch-independent
    recon = tok.decode(tokens)
    assert recon.shape == x.shape and recon.dtype == tok.spec.dtype
    np.testing.assert_array_equal(recon, tok.decode(tokens))
    # A reloaded artifact computes the same function.
    np.testing.assert_array_equal(tokenizers.load(path).encode(x), tokens)
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert summary["steps"] == 6 and "codebook_usage" in summary["eval"]


def test_chunked_encode_matches_whole_batch(trained):
    path, _ = trained("rgb")
    tok = tokenizers.load(path)
    x = _scenes(7)["rgb"]
    whole = tok.encode(x)
    tok.chunk = 2                    # 4 chunks, the last one padded
    np.testing.assert_array_equal(tok.encode(x), whole)


def test_training_writes_metrics_and_resumes(trained, cache, tmp_path):
    cfg = _config("rgb", f"data.cache_dir={cache}", "train.num_steps=3",
                  "train.checkpoint_every=3")
    train(cfg, tmp_path, progress=False)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == [3]
    cfg = _config("rgb", f"data.cache_dir={cache}", "train.num_steps=5",
                  "train.checkpoint_every=100")
    train(cfg, tmp_path, progress=False)
    steps = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "train/loss" in r]
    assert steps == [2, 3, 4, 5]          # log_every=2 plus the last step of each run
    assert json.loads((tmp_path / "train_summary.json").read_text())["steps"] == 5
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_fsq_tokenizer_trains(cache, tmp_path):
    cfg = _config("rgb", f"data.cache_dir={cache}", "quantizer.kind=fsq",
                  "quantizer.levels=(4, 3, 3)", "train.num_steps=2")
    tok = tokenizers.load(train(cfg, tmp_path, progress=False))
    assert tok.vocab_size == 36
    assert tok.encode(_scenes(2)["rgb"]).max() < 36


# ------------------------------------------------------------------------------- artifacts
def test_artifact_files_hash_and_tamper_detection(trained, tmp_path):
    path, _ = trained("semseg")
    spec = json.loads((path / "spec.json").read_text())
    assert spec["num_classes"] == len(scenes.CLASS_NAMES) and spec["vocab_size"] == 32
    assert len(spec["content_hash"]) == 64
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in path.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    tokenizers.load(copy)
    data = bytearray((copy / "weights.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(artifact.ArtifactError, match="content hash mismatch"):
        tokenizers.load(copy)
    with pytest.raises(artifact.ArtifactError, match="not a tokenizer artifact"):
        tokenizers.load(tmp_path)


def test_features_spec_stores_training_statistics(trained):
    tok = tokenizers.load(trained("features")[0])
    params = tok.spec.norm_params
    assert len(params["mean"]) == len(params["std"]) == 9
    assert all(s > 0 for s in params["std"])


# ----------------------------------------------------------------------------- validation
def _message(tok, x) -> str:
    with pytest.raises(tokenizers.TokenizerInputError) as info:
        tok.encode(x)
    return str(info.value)


def test_input_validation_messages(trained):
    rgb = tokenizers.load(trained("rgb")[0])
    x = _scenes(2)["rgb"]
    msg = _message(rgb, x.astype(np.float32) / 255.0)
    assert "rgb tokenizer" in msg and "dtype" in msg and "float32" in msg and "uint8" in msg
    msg = _message(rgb, x[0])
    assert "single example" in msg and "[B, 32, 32, 3]" in msg
    msg = _message(rgb, np.zeros((2, 64, 64, 3), np.uint8))
    assert "[2, 64, 64, 3]" in msg and "resolution 32" in msg
    assert "range" not in _message(rgb, x[..., :2])

    semseg = tokenizers.load(trained("semseg")[0])
    labels = _scenes(2)["semseg"]
    msg = _message(semseg, labels.astype(np.float32) / 5.0)
    assert "class ids" in msg and "float32" in msg and "[0, 1]" in msg
    bad = labels.copy()
    bad[0, 0, 0] = 9
    msg = _message(semseg, bad)
    assert "class ids" in msg and "[0, 6)" in msg and "9" in msg

    depth = tokenizers.load(trained("depth")[0])
    d = _scenes(2)["depth"]
    msg = _message(depth, d * 1000.0)
    assert "values" in msg and "millimetres" in msg
    d_nan = d.copy()
    d_nan[0, 0, 0] = np.nan
    assert "NaN" in _message(depth, d_nan)

    normals = tokenizers.load(trained("normals")[0])
    n = _scenes(2)["normals"]
    assert "unit vectors" in _message(normals, (n + 1.0) / 2.0)


def test_decode_validation(trained):
    tok = tokenizers.load(trained("rgb")[0])
    with pytest.raises(tokenizers.TokenizerInputError, match=r"\[0, 32\).*\[40, 40\]"):
        tok.decode(np.full((1, 8, 8), 40))
    with pytest.raises(tokenizers.TokenizerInputError, match="shape"):
        tok.decode(np.zeros((1, 64), np.int32))
    with pytest.raises(tokenizers.TokenizerInputError, match="integer"):
        tok.decode(np.zeros((1, 8, 8), np.float32))


# ---------------------------------------------------------------------------------- poses
def test_poses_absent_figures_and_validation(trained):
    tok = tokenizers.load(trained("poses")[0])
    data = _scenes(8, seed=3)
    poses, count = data["poses"], data["num_figures"]
    tokens = tok.encode(poses)
    t = tok.config.model.tokens_per_figure
    assert tokens.shape == (8, poses.shape[1] * t) and tok.vocab_size == 17
    for i in range(8):
        for f in range(poses.shape[1]):
            slot = tokens[i, f * t:(f + 1) * t]
            assert (slot == 0).all() == (f >= count[i])            # 0 = absent, codes are >= 1
    recon = tok.decode(tokens)
    assert recon.shape == poses.shape
    present = np.any(recon != 0, axis=(-2, -1))
    np.testing.assert_array_equal(present, np.arange(poses.shape[1])[None] < count[:, None])
    assert set(np.unique(recon[..., 2])) <= {0.0, 1.0}
    bad = poses.copy()
    bad[..., 2] = 0.5
    bad[count == 0] = 0
    with pytest.raises(tokenizers.TokenizerInputError, match="visible"):
        tok.encode(bad)


# ------------------------------------------------------------------------------------ CLI
def test_cli_eval_prints_json_and_writes_png(trained, tmp_path, capsys):
    from m4.tokenizers import cli

    path, _ = trained("depth")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["eval", "--tokenizer", str(path), "--n", "4", "--no-progress",
                              "--png", str(tmp_path / "grid.png")])
    args.config_overrides = []
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("delta1", "abs_rel", "codebook_usage", "perplexity"):
        assert key in out
    assert (tmp_path / "grid.png").stat().st_size > 0


_DATA_PARALLEL = textwrap.dedent("""
    import sys, jax
    from m4.config import load_config
    from m4.tokenizers.train import train
    assert jax.device_count() == 2
    cfg = load_config(sys.argv[1] + ":tiny", ["train.num_steps=2", "data.cache_dir=" + sys.argv[3]])
    train(cfg, sys.argv[2], progress=False)
    print("OK")
""")


def test_data_parallel_training_on_two_devices(cache, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", _DATA_PARALLEL, str(REPO / "tokenizers" / "features.py"),
         str(tmp_path / "w"), cache], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "w" / "tokenizer" / "spec.json").exists()


def test_batch_not_divisible_by_devices_is_refused(cache, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3",
               JAX_PLATFORMS="cpu")
    code = _DATA_PARALLEL.replace("== 2", "== 3")
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "tokenizers" / "rgb.py"),
                             str(tmp_path / "w"), cache], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0 and "train.batch_size=8 must be a multiple" in result.stderr


def test_wall_time_budget_ends_training(cache, tmp_path):
    cfg = _config("features", f"data.cache_dir={cache}", "train.num_steps=100000",
                  "train.max_minutes=0.002")
    train(cfg, tmp_path, progress=False)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert 1 <= summary["steps"] < 100000


def test_learning_rate_schedule():
    from m4.tokenizers.train import _learning_rate

    tc = _config("rgb").train
    assert _learning_rate(tc, 0, 0.0) == pytest.approx(tc.lr / tc.warmup_steps)
    assert _learning_rate(tc, tc.warmup_steps, 0.0) == pytest.approx(tc.lr)
    assert _learning_rate(tc, 10**6, 1.0) == pytest.approx(tc.lr * tc.min_lr_ratio)
    mid = _learning_rate(tc, 10**6, 0.5)
    assert tc.lr * tc.min_lr_ratio < mid < tc.lr


def test_class_weights_favour_rare_classes():
    from m4.tokenizers.tasks import class_weights

    labels = np.zeros((1, 10, 10), np.uint8)
    labels[0, 0, :4] = 1
    w = class_weights(labels, 3, "sqrt_inverse_frequency")
    freq = np.asarray([0.96, 0.04, 0.0])
    assert w[1] > w[0] and w[2] == w.max()
    assert float((w * freq).sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="class_weighting"):
        class_weights(labels, 3, "inverse")


# -------------------------------------------------------------------------------- locality
@pytest.mark.parametrize("kernel,decoder_kernel,local_codes,local_decode",
                         [(1, 1, True, True), (1, 3, True, False), (3, 0, False, False)])
def test_local_tokenizer_codes_and_decodes_each_patch_alone(kernel, decoder_kernel, local_codes,
                                                            local_decode):
    """kernel_size 1 with one stage: a token depends on its own 8x8 patch only; a local decoder
    (decoder_kernel_size 1) decodes a code to its own patch only. 3x3 convolutions mix
    neighbours: the same probes see it (the test can fail)."""
    from flax import nnx
    from m4.tokenizers.vqvae import ImageVQ

    config = _config("rgb").model
    config.update(widths=(16,), space_to_depth=8, patch_size=8, kernel_size=kernel,
                  decoder_kernel_size=decoder_kernel, mid_blocks=1)
    quantizer = _config("rgb").quantizer
    # FSQ: no trained codebook needed for codes to respond to every input change.
    quantizer.update(kind="fsq", levels=(8, 8, 8))
    vq = ImageVQ(config, quantizer, channels=3, rngs=nnx.Rngs(0))
    for block in [*vq.encoder.mid, *vq.decoder.mid]:   # zero-init residuals: make them matter
        block.conv2.kernel[...] = 0.3 * jax.random.normal(jax.random.key(1),
                                                          block.conv2.kernel.shape)
    image = jax.random.uniform(jax.random.key(2), (1, 32, 32, 3), minval=-1.0, maxval=1.0)
    changed = image.at[0, 8:16, 8:16].set(-image[0, 8:16, 8:16])       # patch (1, 1) only
    z0, z1 = vq.encoder(image), vq.encoder(changed)
    moved = np.asarray(jnp.abs(z1 - z0).max(-1) > 1e-6)                  # [1, 4, 4]
    assert moved[0, 1, 1]
    assert (moved.sum() == 1) == local_codes, moved[0].astype(int)

    codes = vq.encode(image)
    other = codes.at[0, 2, 2].set((codes[0, 2, 2] + 7) % vq.codebook_size)
    diff = np.asarray(jnp.abs(vq.decode(other) - vq.decode(codes)).max(-1) > 1e-6)[0]
    assert diff[16:24, 16:24].any()
    outside = diff.copy()
    outside[16:24, 16:24] = False
    assert (not outside.any()) == local_decode


def test_kernel_sizes_default_and_checks():
    from m4.tokenizers.vqvae import kernel_sizes

    config = _config("rgb").model
    assert kernel_sizes(config) == (3, 3)
    config.update(kernel_size=1, decoder_kernel_size=0)
    assert kernel_sizes(config) == (1, 1)              # 0: the decoder follows the encoder
    config.decoder_kernel_size = 3
    assert kernel_sizes(config) == (1, 3)
    config.kernel_size = 2
    with pytest.raises(ValueError, match=r"model.kernel_size: expected an odd size >= 1, got 2"):
        kernel_sizes(config)
    config.update(kernel_size=1, decoder_kernel_size=-1)
    with pytest.raises(ValueError, match=r"model.decoder_kernel_size: expected an odd size"):
        kernel_sizes(config)
