"""The Generator API and `m4 generate` on a tiny random model with real (untrained) tokenizer
artifacts: raw inputs in, decoded outputs, files and a grid out."""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import pytest
from flax import nnx
from PIL import Image

import m4.tokenizers as tokenizers_lib
from m4.config import load_config
from m4.data import scenes
from m4.generate import Generator, TargetSpec, Tokens, cli
from m4.generate.state import GenerationInputError
from m4.modalities import ModalitySpec
from m4.model import FourM, preset
from m4.tokenizers import artifact, tasks, text
from m4.tokenizers.spec import PreprocessSpec
from m4.train.model_io import save_model

REPO = pathlib.Path(__file__).resolve().parents[1]
CAPTION_LENGTH = 24
CAPTIONS = ["a red sphere on the left of a blue box", "two green cylinders near the wall",
            "a person in front of a yellow box", "a small blue sphere right of a red box"] * 20


def _image_artifact(root: pathlib.Path, modality: str) -> None:
    config = load_config(str(REPO / "tokenizers" / f"{modality}.py") + ":tiny")
    scene_cfg = scenes.SceneConfig(**config.data.scene)
    spec = tasks.ImageTask(config, scene_cfg, np.zeros((0,))).spec
    model = artifact.build_model(config, spec, nnx.Rngs(0))
    artifact.save_model_artifact(root / modality, config, spec, model)


def _text_artifact(root: pathlib.Path) -> None:
    config = load_config(str(REPO / "tokenizers" / "caption.py") + ":tiny")
    proto = text.train_sentencepiece(CAPTIONS, vocab_size=420, num_sentinels=100)
    spec = PreprocessSpec(
        modality="caption", kind="text", dtype="str", shape=(), normalization="text",
        resolution=32, vocab_size=0, token_shape=(CAPTION_LENGTH,),
        norm_params={"pad_id": 0, "unk_id": 1, "sos_id": 2, "eos_id": 3, "sentinel_start": 4,
                     "num_sentinels": 100})
    vocab = text.TextTokenizer(proto, spec).vocab_size
    import dataclasses

    artifact.save_text_artifact(root / "caption", config,
                                dataclasses.replace(spec, vocab_size=vocab), proto)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate_assets")
    for modality in ("rgb", "depth", "semseg"):
        _image_artifact(root / "tokenizers", modality)
    _text_artifact(root / "tokenizers")
    toks = {name: tokenizers_lib.load(root / "tokenizers" / name)
            for name in ("rgb", "depth", "semseg", "caption")}
    specs = [ModalitySpec(name, "image", vocab_size=toks[name].vocab_size,
                          grid=tuple(toks[name].token_shape))
             for name in ("rgb", "depth", "semseg")]
    specs.append(ModalitySpec("caption", "sequence", vocab_size=toks["caption"].vocab_size,
                              length=CAPTION_LENGTH))
    config = preset("tiny", specs, dim=32, num_heads=2, encoder_depth=2, decoder_depth=2)
    model = FourM(config, rngs=nnx.Rngs(0))
    save_model(root / "model", model)
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    return {"root": root, "tokenizers": toks, "model": model, "rgb": rgb}


@pytest.fixture(scope="module")
def generator(assets):
    return Generator(assets["model"], assets["tokenizers"], loop="fori")


def test_generate_from_raw_inputs(generator, assets):
    targets = [TargetSpec("depth", steps=3), TargetSpec("semseg", steps=2),
               TargetSpec("caption", max_tokens=8)]
    out = generator.generate({"rgb": assets["rgb"], "caption": "a red sphere [S_1]"}, targets)
    depth, semseg, caption = (out["outputs"][k] for k in ("depth", "semseg", "caption"))
    assert depth.shape == (32, 32) and np.issubdtype(depth.dtype, np.floating)
    assert semseg.shape == (32, 32) and semseg.dtype == np.uint8
    assert isinstance(caption, str) and caption.startswith("a red sphere")
    assert out["tokens"]["depth"].shape == (8, 8) and out["tokens"]["rgb"].shape == (8, 8)
    assert isinstance(out["complete"]["caption"], bool)
    # Same seed, same result.
    again = generator.generate({"rgb": assets["rgb"], "caption": "a red sphere [S_1]"}, targets)
    np.testing.assert_array_equal(again["tokens"]["semseg"], out["tokens"]["semseg"])
    assert again["outputs"]["caption"] == caption


def test_text_inputs_prompt_or_complete(generator):
    s = generator.sentinels
    prompt = generator.text_ids("caption", "a red sphere [S_1]")
    assert prompt[-1] == s.sentinel(1) and s.eos_id not in prompt.tolist()
    full = generator.text_ids("caption", "a red sphere")
    assert full[-1] == s.eos_id and not s.is_sentinel(full).any()
    np.testing.assert_array_equal(prompt[:-1], full[:-1])   # no stray space piece before [S_1]
    with pytest.raises(GenerationInputError, match="at most 24"):
        generator.text_ids("caption", " ".join(["sphere"] * 40))


def test_token_inputs_and_input_errors(generator, assets):
    ids = assets["tokenizers"]["rgb"].encode(assets["rgb"][None])[0]
    state = generator.encode_inputs([{"rgb": Tokens(ids)}])
    np.testing.assert_array_equal(state["rgb"].tokens[0], ids.reshape(-1))
    np.testing.assert_array_equal(generator.encode_inputs([{"rgb": ids}])["rgb"].tokens,
                                  state["rgb"].tokens)
    with pytest.raises(GenerationInputError, match=r"raw data \[32, 32, 3\]"):
        generator.encode_inputs([{"rgb": np.zeros((16, 16, 3), np.uint8)}])
    with pytest.raises(GenerationInputError, match="unknown modality"):
        generator.encode_inputs([{"normals": ids}])
    with pytest.raises(GenerationInputError, match="differ"):
        generator.encode_inputs([{"rgb": ids}, {"depth": ids}])
    with pytest.raises(GenerationInputError, match="also a complete input"):
        generator.generate({"rgb": ids, "depth": ids}, ["depth"])
    no_text = Generator(assets["model"], {}, generator.sentinels, loop="fori")
    with pytest.raises(GenerationInputError, match="text tokenizer"):
        no_text.encode_inputs([{"caption": "a red sphere"}])


def test_without_tokenizers_outputs_are_tokens(assets):
    gen = Generator(assets["model"], loop="fori")
    ids = np.arange(64).reshape(8, 8) % 32
    out = gen.generate({"rgb": ids}, [TargetSpec("depth", steps=3)], seed=3)
    assert out["outputs"]["depth"].shape == (8, 8)
    np.testing.assert_array_equal(out["outputs"]["depth"], out["tokens"]["depth"])
    with pytest.raises(GenerationInputError, match="sentinels"):
        gen.generate({"rgb": ids}, ["caption"])
    # Unconditional: no inputs at all, two samples.
    free = gen.generate_batch([{}, {}], [TargetSpec("depth", steps=3)])
    assert free["tokens"]["depth"].shape == (2, 8, 8)
    assert list(free["tokens"]) == ["depth"]


def test_cli_writes_files_and_grid(assets, tmp_path):
    root = assets["root"]
    Image.fromarray(assets["rgb"]).save(tmp_path / "scene.png")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args([
        "--checkpoint", str(root / "model"), "--tokenizers", str(root / "tokenizers"),
        "--input", f"rgb={tmp_path / 'scene.png'}", "--input", "caption=a red sphere [S_1]",
        "--target", "depth,steps=3", "--target", "caption,max_tokens=8",
        "--out", str(out), "--samples", "2", "--loop", "fori", "--no-progress"])
    assert cli.main(args) == 0
    for i in range(2):
        for name in (f"depth_{i}.png", f"depth_{i}.npy", f"depth_tokens_{i}.npy",
                     f"caption_{i}.txt", f"caption_tokens_{i}.npy"):
            assert (out / name).is_file(), name
        assert np.load(out / f"depth_{i}.npy").shape == (32, 32)
        assert (out / f"caption_{i}.txt").read_text().startswith("a red sphere")
    summary = json.loads((out / "generation.json").read_text())
    assert summary["targets"] == ["depth", "caption"] and summary["samples"] == 2
    assert sum(s["num_tokens"] or 0 for s in summary["schedule"]) == 64
    with Image.open(out / "grid.png") as grid:
        assert grid.width > 128 * 2 and grid.height > 2 * 128
    # Two samples of one input draw differently (different example keys).
    assert (np.load(out / "depth_tokens_0.npy") != np.load(out / "depth_tokens_1.npy")).any()


def test_cli_errors(assets, tmp_path):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    base = ["--checkpoint", str(assets["root"] / "model"), "--out", str(tmp_path)]
    with pytest.raises(cli.GenerateCliError, match="no such file"):
        cli.main(parser.parse_args(base + ["--input", "rgb=missing.png", "--target", "depth"]))
    with pytest.raises(cli.GenerateCliError, match="unknown modality"):
        cli.main(parser.parse_args(base + ["--input", "normals=x.png", "--target", "depth"]))
    with pytest.raises(cli.GenerateCliError, match="at least one target"):
        cli.main(parser.parse_args(base))


def test_raw_rgb_feeds_the_pixel_patches_when_the_model_has_them(assets):
    from m4.data import pixels
    from m4.model.adapters import patchify
    from m4.pretokenize import pixel_spec

    toks = assets["tokenizers"]
    patches = pixel_spec(toks["rgb"])
    assert (patches.name, patches.source, patches.input, patches.target) == (
        "rgb_pixels", "rgb", True, False)
    specs = list(assets["model"].config.modalities) + [patches]
    model = FourM(preset("tiny", specs, dim=32, num_heads=2, encoder_depth=2, decoder_depth=2),
                  rngs=nnx.Rngs(1))
    gen = Generator(model, toks, loop="fori")
    image = assets["rgb"]
    assert gen.input_modality("rgb", image) == "rgb_pixels"
    state = gen.encode_inputs([{"rgb": image}])
    assert list(state) == ["rgb_pixels"]
    want = pixels.normalize(patchify(image[None], patches.patch_size)[0], 3)
    np.testing.assert_allclose(state["rgb_pixels"].values[0], want, rtol=1e-6)
    # Normalised floats (an image or its patches) are taken as they are.
    float_image = pixels.normalize(image, 3)
    np.testing.assert_allclose(gen.encode_inputs([{"rgb": float_image}])["rgb_pixels"].values[0],
                               want, rtol=1e-6)
    # Token ids still feed the rgb tokens; a batch may not mix the two.
    ids = toks["rgb"].encode(image[None])[0]
    assert list(gen.encode_inputs([{"rgb": Tokens(ids)}])) == ["rgb"]
    with pytest.raises(GenerationInputError, match="mixes token ids and raw data"):
        gen.encode_inputs([{"rgb": image}, {"rgb": Tokens(ids)}])
    with pytest.raises(GenerationInputError, match="already gives"):
        gen.encode_inputs([{"rgb": image, "rgb_pixels": want}])
    # RGB -> depth reads the patches: another image changes the prediction.
    other = np.ascontiguousarray(255 - image)
    a = gen.generate({"rgb": image}, [TargetSpec("depth", steps=1)])["tokens"]["depth"]
    b = gen.generate({"rgb": other}, [TargetSpec("depth", steps=1)])["tokens"]["depth"]
    assert (a != b).any()
