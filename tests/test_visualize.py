"""Colouring helpers and the preview grid of m4.data.visualize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from m4.data import scenes, visualize

CONFIG = scenes.SceneConfig(resolution=32, feature_patch=4)


@pytest.fixture(scope="module")
def samples():
    return [scenes.render(4, i, CONFIG) for i in range(3)]


def test_colorize_depth_is_monotone_and_handles_bad_values():
    depth = np.linspace(1.0, 7.0, 50, dtype=np.float32).reshape(5, 10)
    rgb = colorize = visualize.colorize_depth(depth)
    assert colorize.shape == (5, 10, 3) and colorize.dtype == np.uint8
    brightness = rgb.astype(int).sum(-1).reshape(-1)
    assert brightness[0] > brightness[-1] + 300  # near is bright, far is dark
    fixed = visualize.colorize_depth(depth, vmin=0.0, vmax=14.0)
    assert fixed.astype(int).sum() > rgb.astype(int).sum()  # a wider range: all look nearer
    bad = depth.copy()
    bad[2, 3], bad[2, 4] = np.nan, np.inf  # not the extremes: the range stays the same
    out = visualize.colorize_depth(bad)
    assert (out[2, 3:5] == 0).all()
    keep = np.ones((5, 10), bool)
    keep[2, 3:5] = False
    assert (out[keep] == rgb[keep]).all()
    flat = visualize.colorize_depth(np.full((3, 3), 2.0))  # zero range: no division by zero
    assert (flat == flat[0, 0]).all()


def test_colorize_normals_uses_the_usual_colours():
    # Camera frame x right, y down, z forward: facing the viewer is (0, 0, -1) -> blue.
    n = np.array([[[0, 0, -1], [1, 0, 0], [0, -1, 0]]], np.float32)
    rgb = visualize.colorize_normals(n).astype(int)
    assert rgb[0, 0].tolist() == [128, 128, 255]
    assert rgb[0, 1].tolist() == [255, 128, 128]
    assert rgb[0, 2].tolist() == [128, 255, 128]


def test_semseg_palette_is_distinct_and_covers_unknown_ids():
    ids = np.arange(len(scenes.CLASS_NAMES), dtype=np.uint8)[None]
    rgb = visualize.colorize_semseg(ids)[0]
    assert len({tuple(c) for c in rgb}) == len(scenes.CLASS_NAMES)
    far = visualize.colorize_semseg(np.array([[0, 200]], np.uint8))
    assert far.shape == (1, 2, 3) and tuple(far[0, 1]) != tuple(far[0, 0])
    legend = visualize.semseg_legend()
    assert legend.width > 60 * len(scenes.CLASS_NAMES) and legend.height >= 14


def test_colorize_features_draws_only_where_there_are_gradients(samples):
    f = samples[0]["features"]
    img = visualize.colorize_features(f, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    cell = 64 // f.shape[0]
    for i in range(f.shape[0]):
        for j in range(f.shape[1]):
            drawn = img[i * cell + 1:(i + 1) * cell - 1, j * cell + 1:(j + 1) * cell - 1].any()
            assert drawn == bool(f[i, j].max() / f.max() > 0.05)
    assert not visualize.colorize_features(np.zeros((4, 4, 9)), 32).any()


def test_draw_poses_marks_visible_joints_and_skips_empty_rows(samples):
    base = np.zeros((32, 32, 3), np.uint8)
    poses = np.zeros((2, scenes.NUM_JOINTS, 3), np.float32)
    poses[0, :, 0] = np.linspace(4, 28, scenes.NUM_JOINTS)
    poses[0, :, 1] = 16
    poses[0, :, 2] = 1
    big = Image.fromarray(base).resize((128, 128), Image.NEAREST)
    img = np.asarray(visualize.draw_poses(big, poses, scale=4.0))
    assert img.shape == (128, 128, 3)
    assert not np.asarray(big).any()  # drawn on a copy
    for x in poses[0, :, 0]:
        assert img[64, int(x * 4)].any()
    assert not img[:40].any()  # nothing drawn away from the only figure
    # num_figures=0 draws nothing even if rows hold data.
    assert not np.asarray(visualize.draw_poses(base, poses, num_figures=0)).any()


def test_preview_grid_lays_out_every_modality(samples):
    tile = 48
    img = visualize.preview_grid(samples, CONFIG, tile=tile)
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    cols = len(visualize.COLUMNS)
    assert img.width >= cols * tile
    px = np.asarray(img)
    # Find the first row of tiles: every column's tile is non-white there.
    header = visualize.semseg_legend().height + 26
    row = px[header + tile // 2]
    for c in range(cols):
        x = 10 + c * (tile + 6) + tile // 2
        assert (row[x] != 255).any(), visualize.COLUMNS[c]
    # The rgb tile is the sample's image, upscaled without smoothing.
    rgb_tile = px[header:header + tile, 10:10 + tile]
    expected = np.asarray(Image.fromarray(samples[0]["rgb"]).resize((tile, tile), Image.NEAREST))
    np.testing.assert_array_equal(rgb_tile, expected)


def test_preview_grid_accepts_partial_samples(samples):
    partial = [{"rgb": samples[0]["rgb"], "caption": "only rgb here"},
               {"semseg": samples[1]["semseg"], "depth": samples[1]["depth"] * 3},
               {"poses": samples[2]["poses"], "caption": "poses without an image"}]
    img = visualize.preview_grid(partial, tile=40)
    assert img.height > 3 * 40
    px = np.asarray(img)
    none_tile = px[img.height // 2 - 60:, 10:50]  # some tiles say "none" on light grey
    assert (none_tile == 225).all(-1).any()
    with pytest.raises(ValueError, match="at least one sample"):
        visualize.preview_grid([])
