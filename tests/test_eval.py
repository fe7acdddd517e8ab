"""`m4 eval`: metrics on hand-made cases with known values, the caption score on hand-written
captions, and the whole matrix (CLI, JSON, PNG) on a tiny random model with the tiny tokenizers."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
from flax import nnx
from PIL import Image

import m4.tokenizers as tokenizers_lib
from conftest import TINY_TOKENIZER_MODALITIES
from m4.eval import (
    ALL_OTHERS, EvalError, PRIMARY, cli, evaluate_matrix, pose_metrics, score_captions,
    target_metrics,
)
from m4.eval.heatmap import GREEN, RED, colour, goodness
from m4.eval.matrix import SHUFFLED_CAPTION, plan_cells
from m4.model import FourM, preset
from m4.pretokenize import modality_spec
from m4.train.model_io import save_model


# ------------------------------------------------------------------------------ metrics
def test_depth_normals_rgb_features_known_values():
    depth = np.full((2, 4, 4), 2.0, np.float32)
    assert target_metrics("depth", depth, depth) == {"abs_rel": 0.0, "delta1": 1.0}
    far = target_metrics("depth", depth, depth * 1.5)       # ratio 1.5 > 1.25 everywhere
    assert far["delta1"] == 0.0 and far["abs_rel"] == pytest.approx(0.5)

    up = np.zeros((1, 3, 3, 3), np.float32)
    up[..., 2] = 1.0
    side = np.zeros_like(up)
    side[..., 0] = 1.0
    assert target_metrics("normals", up, up)["angular_error_deg"] == pytest.approx(0.0, abs=1e-3)
    assert target_metrics("normals", up, side)["angular_error_deg"] == pytest.approx(90.0)

    rgb = np.full((2, 4, 4, 3), 100, np.uint8)
    assert target_metrics("rgb", rgb, rgb + 1)["psnr"] == pytest.approx(
        10 * math.log10(255.0 ** 2))                          # mse 1

    feats = np.random.default_rng(0).random((2, 2, 2, 9)).astype(np.float32)
    assert target_metrics("features", feats, feats)["cosine"] == pytest.approx(1.0)
    assert target_metrics("features", feats, 3 * feats)["cosine"] == pytest.approx(1.0)


def test_semseg_miou_over_present_classes():
    truth = np.array([[[0, 0, 1, 1]]], np.uint8)
    assert target_metrics("semseg", truth, truth)["miou"] == 1.0
    pred = np.array([[[0, 1, 1, 1]]], np.uint8)
    # class 0: 1 / 2; class 1: 2 / 3; absent classes do not count.
    assert target_metrics("semseg", truth, pred)["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="differ in shape"):
        target_metrics("semseg", truth, pred[..., :3])


def _figure(x0: float, y0: float, joints: int = 15) -> np.ndarray:
    fig = np.zeros((joints, 3), np.float32)
    fig[:, 0] = x0 + np.arange(joints)
    fig[:, 1] = y0
    fig[:, 2] = 1.0
    return fig


def test_pose_metrics_match_figures_and_use_visible_joints():
    truth = np.zeros((1, 2, 15, 3), np.float32)
    truth[0, 0], truth[0, 1] = _figure(2, 5), _figure(20, 30)
    exact = pose_metrics(truth, truth)
    assert exact["joint_error_px"] == 0.0 and exact["figure_recall"] == 1.0

    swapped = truth[:, ::-1].copy()            # the same people, listed in the other order
    assert pose_metrics(truth, swapped)["joint_error_px"] == 0.0

    shifted = truth.copy()
    shifted[..., 0] += 3.0
    shifted[..., 1] += 4.0                     # every joint 5 px away
    assert pose_metrics(truth, shifted)["joint_error_px"] == pytest.approx(5.0)

    hidden = truth.copy()
    hidden[0, 0, 0, 2] = 0.0                   # an occluded joint: its error is not counted
    wrong = hidden.copy()
    wrong[0, 0, 0, :2] += 40.0
    assert pose_metrics(hidden, wrong)["joint_error_px"] == 0.0

    one = truth.copy()
    one[0, 1] = 0.0                            # only one true figure; two predicted
    extra = pose_metrics(one, truth)
    assert extra["figure_precision"] == 0.5 and extra["figure_recall"] == 1.0
    assert extra["joint_error_px"] == 0.0 and extra["count_accuracy"] == 0.0
    missing = pose_metrics(truth, one)
    assert missing["figure_recall"] == 0.5 and missing["figure_precision"] == 1.0

    empty = pose_metrics(np.zeros_like(truth), truth)
    assert math.isnan(empty["joint_error_px"])


def test_primary_metrics_have_directions_and_colours():
    assert PRIMARY["depth"].higher_is_better and not PRIMARY["poses"].higher_is_better
    assert not PRIMARY["normals"].higher_is_better
    assert goodness("angular_error_deg", 0.0) == 1.0 and goodness("angular_error_deg", 90.0) == 0.0
    assert goodness("delta1", 1.0) == 1.0
    assert goodness("joint_error_px", 0.0, 64) == 1.0
    assert goodness("joint_error_px", 16.0, 64) == 0.0
    assert colour(1.0) == tuple(GREEN.astype(int)) and colour(0.0) == tuple(RED.astype(int))
    with pytest.raises(ValueError, match="no metric"):
        target_metrics("audio", [], [])


# ------------------------------------------------------------------------------- captions
TRUTH = ("a large red sphere at the front left and a small blue box at the back center. "
         "the red sphere is left of the blue box.")


def test_caption_score_perfect_wrong_colour_and_hallucination():
    perfect = score_captions([TRUTH], [TRUTH])
    assert perfect["attribute_f1"] == 1.0 and perfect["exact"] == 1.0
    assert perfect["relation_recall"] == 1.0 and perfect["hallucination_rate"] == 0.0

    wrong_colour = TRUTH.replace("red sphere", "green sphere")
    s = score_captions([wrong_colour], [TRUTH])
    assert s["precision"] == 0.5 and s["recall"] == 0.5 and s["attribute_f1"] == 0.5
    assert s["hallucination_rate"] == 0.5 and s["color_recall"] == 0.5

    extra = TRUTH.replace(" and a small blue box", ", a small blue box") \
        .replace("back center.", "back center and a small yellow cylinder at the back right.")
    s = score_captions([extra], [TRUTH])
    assert s["recall"] == 1.0 and s["precision"] == pytest.approx(2 / 3)
    assert s["attribute_f1"] == pytest.approx(0.8) and s["count_accuracy"] == 0.0

    wrong_side = TRUTH.replace("front left", "front right")
    s = score_captions([wrong_side], [TRUTH])
    assert s["attribute_f1"] == 0.5 and s["side_accuracy"] == 0.5 and s["kind_accuracy"] == 1.0

    repeated = "a large red sphere at the front left and a large red sphere at the front left."
    s = score_captions([repeated], [TRUTH])
    assert s["precision"] == 0.5 and s["recall"] == 0.5

    nonsense = score_captions(["the the the"], [TRUTH])
    assert nonsense["attribute_f1"] == 0.0 and nonsense["parsed"] == 0.0
    # Micro average over scenes: 2 + 2 objects, 3 of them right.
    assert score_captions([TRUTH, wrong_colour], [TRUTH, TRUTH])["recall"] == 0.75
    with pytest.raises(ValueError, match="one per scene"):
        score_captions([TRUTH], [TRUTH, TRUTH])


def test_plan_cells():
    cells = plan_cells(["rgb", "caption", "semseg"], ["rgb", "semseg"])
    rows = {(c.row, c.target) for c in cells}
    assert ("rgb", "rgb") not in rows and ("caption", "semseg") in rows
    assert (ALL_OTHERS, "semseg") in rows and (SHUFFLED_CAPTION, "semseg") in rows
    others = {c.target: c.inputs for c in cells if c.row == ALL_OTHERS}
    assert others == {"rgb": ("caption", "semseg"), "semseg": ("rgb", "caption")}
    assert len(cells) == 2 * 3 - 2 + 2 + 1


# ------------------------------------------------------------------------------- matrix
@pytest.fixture(scope="module")
def tiny(tiny_tokenizers, tmp_path_factory):
    toks = {m: tokenizers_lib.load(tiny_tokenizers / m) for m in TINY_TOKENIZER_MODALITIES}
    specs = [modality_spec(toks[m]) for m in TINY_TOKENIZER_MODALITIES]
    config = preset("tiny", specs, dim=32, num_heads=2, encoder_depth=1, decoder_depth=1)
    model = FourM(config, rngs=nnx.Rngs(0))
    model_dir = save_model(tmp_path_factory.mktemp("eval_model") / "model", model)
    return {"tokenizers": toks, "tokenizers_dir": tiny_tokenizers, "model": model,
            "model_dir": model_dir}


def test_matrix_end_to_end_through_the_cli(tiny, tmp_path):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    # Temperature 1: a random model's near-argmax poses may well be "nobody" (no joint error).
    args = parser.parse_args([
        "--checkpoint", str(tiny["model_dir"]), "--tokenizers", str(tiny["tokenizers_dir"]),
        "--n", "4", "--out", str(tmp_path), "--no-progress", "--caption-max-tokens", "16",
        "--temperature", "1.0"])
    assert cli.main(args) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    names = list(TINY_TOKENIZER_MODALITIES)
    assert result["targets"] == names and result["rows"] == names + [ALL_OTHERS]
    assert result["settings"]["n"] == 4 and result["settings"]["batch_size"] == 4
    for row in result["rows"]:
        for target in result["targets"]:
            cell = result["cells"][row][target]
            if row == target:
                assert cell is None
                continue
            assert math.isfinite(cell["value"]), (row, target, cell)
            assert cell["value"] == cell["metrics"][result["primary"][target]["name"]]
            assert cell["seconds"] >= 0
    assert result["cells"][ALL_OTHERS]["depth"]["inputs"] == ["rgb", "semseg", "poses",
                                                              "caption"]
    base = result["baselines"]["caption->semseg"]
    assert base["caption"] == result["cells"]["caption"]["semseg"]["value"]
    assert math.isfinite(base["shuffled_caption"])
    assert set(result["seconds"]) >= {"render", "generate", "metrics", "total", "load"}
    with Image.open(tmp_path / "eval.png") as img:
        assert img.size[0] > 600 and img.size[1] > 400


def test_matrix_errors(tiny):
    model, toks = tiny["model"], tiny["tokenizers"]
    with pytest.raises(EvalError, match="n: expected an int >= 1"):
        evaluate_matrix(model, toks, n=0)
    with pytest.raises(EvalError, match="'normals' is not a modality of the model"):
        evaluate_matrix(model, toks, n=1, modalities=["rgb", "normals"])
    with pytest.raises(EvalError, match=r"none for the model modalities \['depth'\]"):
        evaluate_matrix(model, {k: v for k, v in toks.items() if k != "depth"}, n=1)
    with pytest.raises(EvalError, match="tokenizers take 32x32 scenes.*got 64"):
        evaluate_matrix(model, toks, n=1, resolution=64)
    with pytest.raises(EvalError, match="batch_size"):
        evaluate_matrix(model, toks, n=1, batch_size=0)


def test_matrix_subset_padding_and_batch_size(tiny):
    kwargs = dict(n=3, modalities=["rgb", "depth"], progress=False)
    a = evaluate_matrix(tiny["model"], tiny["tokenizers"], batch_size=3, **kwargs)
    b = evaluate_matrix(tiny["model"], tiny["tokenizers"], batch_size=2, **kwargs)  # padded
    assert a["rows"] == ["rgb", "depth", ALL_OTHERS] and a["targets"] == ["rgb", "depth"]
    assert a["settings"]["not_evaluated"] == ["semseg", "poses", "caption"]
    # Example i draws from fold_in(key(seed), i): the batch size changes nothing.
    for row, target in (("rgb", "depth"), ("depth", "rgb"), (ALL_OTHERS, "rgb")):
        assert a["cells"][row][target]["metrics"] == pytest.approx(
            b["cells"][row][target]["metrics"])


def test_rgb_rows_feed_the_pixel_patches_of_a_model_that_has_them(tiny):
    from m4.eval.matrix import _fed
    from m4.generate import Generator
    from m4.pretokenize import pixel_spec

    toks = tiny["tokenizers"]
    specs = [modality_spec(toks[m]) for m in TINY_TOKENIZER_MODALITIES] + [pixel_spec(toks["rgb"])]
    model = FourM(preset("tiny", specs, dim=32, num_heads=2, encoder_depth=1, decoder_depth=1),
                  rngs=nnx.Rngs(0))
    assert _fed(Generator(model, toks), ["rgb", "depth"]) == ["rgb_pixels", "depth"]
    result = evaluate_matrix(model, toks, n=2, modalities=["rgb", "depth"], progress=False)
    assert result["rows"] == ["rgb", "depth", ALL_OTHERS]
    assert result["settings"]["not_evaluated"] == ["semseg", "poses", "caption"]
    assert math.isfinite(result["cells"]["rgb"]["depth"]["value"])
    assert result["cells"][ALL_OTHERS]["rgb"]["inputs"] == ["depth"]
