"""The built-in scenes: specs, determinism, and the geometric invariants checked independently.

The ray-cast render is checked against a sphere tracer written here from the signed distance
functions of the shapes described in sample["scene"] (a different algorithm from the analytic
intersections of m4.data.scene_geometry), and the planes against their closed-form depth.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from skimage.feature import hog

from m4.data import scene_captions, scenes
from m4.data.scene_features import hog_features
from m4.data.scene_layout import BONE_RADIUS, CAMERA_FOV_DEG, JOINT_RADIUS, WALL_Z
from m4.data.scene_render import JOINT_SLACK

SMALL = scenes.SceneConfig(resolution=32, feature_patch=4)


@pytest.fixture(scope="module")
def samples64():
    return [scenes.render(7, i) for i in range(24)]


# --------------------------------------------------------------------------------------------
# Specs and API.

def test_every_modality_matches_its_raw_spec(samples64):
    specs = scenes.raw_specs(scenes.SceneConfig())
    assert tuple(specs) == scenes.MODALITIES
    for s in samples64:
        for name in scenes.MODALITIES:
            specs[name].check(name, s[name])
        assert 0 <= s["num_figures"] <= scenes.SceneConfig().max_figures
        assert not s["poses"][s["num_figures"]:].any()
        json.dumps(s["scene"])  # JSON-ready


def test_raw_spec_check_names_modality_and_values():
    spec = scenes.raw_specs()["depth"]
    with pytest.raises(ValueError, match=r"depth: expected float32 \[64, 64\], got float64"):
        spec.check("depth", np.zeros((64, 64)))
    with pytest.raises(ValueError, match="semseg: expected class ids < 6, got 9"):
        scenes.raw_specs()["semseg"].check("semseg", np.full((64, 64), 9, np.uint8))


def test_dataset_has_variety(samples64):
    kinds = {o["kind"] for s in samples64 for o in s["scene"]["objects"]}
    colors = {o["color"] for s in samples64 for o in s["scene"]["objects"]}
    counts = {len(s["scene"]["objects"]) for s in samples64}
    assert kinds == set(scenes.KIND_NAMES)
    assert colors == set(scenes.COLOR_NAMES)
    assert len(counts) >= 3
    assert any(s["num_figures"] == 0 for s in samples64)
    assert any(s["num_figures"] == 2 for s in samples64)


@pytest.mark.parametrize("kwargs, message", [
    (dict(resolution=16), r"SceneConfig.resolution: expected 32 <= resolution <= 256, got 16"),
    (dict(resolution=300), r"resolution <= 256, got 300"),
    (dict(resolution=64.0), r"SceneConfig.resolution: expected int, got 64.0 \(float\)"),
    (dict(resolution=48, feature_patch=10), r"feature_patch: expected a divisor of resolution=48"),
    (dict(shadows=1), r"SceneConfig.shadows: expected bool, got 1"),
    (dict(max_figures=True), r"SceneConfig.max_figures: expected int, got True"),
    (dict(min_objects=3, max_objects=2), r"min_objects: expected 0 <= min_objects <= 2, got 3"),
    (dict(min_objects=0, max_objects=0, max_figures=0), r"max_objects \+ max_figures >= 1"),
    (dict(max_objects=5, max_figures=3), r"max_objects \+ max_figures <= 7"),
])
def test_config_validation_names_field_expected_and_received(kwargs, message):
    with pytest.raises(scenes.SceneConfigError, match=message):
        scenes.SceneConfig(**kwargs)


@pytest.mark.parametrize("seed, index", [(-1, 0), (0, -3), (0, 1.5), (True, 0), ("0", 0)])
def test_render_rejects_bad_keys(seed, index):
    with pytest.raises(ValueError, match="render: expected (seed|index) to be an int >= 0"):
        scenes.render(seed, index)


def test_render_rejects_a_config_of_the_wrong_type():
    with pytest.raises(TypeError, match="expected config to be a SceneConfig, got dict"):
        scenes.render(0, 0, {"resolution": 64})


@pytest.mark.parametrize("config", [SMALL, scenes.SceneConfig(resolution=128, feature_patch=16),
                                    scenes.SceneConfig(resolution=60, feature_patch=5)])
def test_other_resolutions_render_the_same_scene(config, samples64):
    base = samples64[3]
    s = scenes.render(7, 3, config)
    specs = scenes.raw_specs(config)
    for name in scenes.MODALITIES:
        specs[name].check(name, s[name])
    # The layout does not depend on the resolution: same objects, same words.
    assert s["caption"] == base["caption"]
    assert [o["geometry"] for o in s["scene"]["objects"]] == \
        [o["geometry"] for o in base["scene"]["objects"]]


def test_feature_configuration_sets_the_grid_and_channels():
    config = scenes.SceneConfig(feature_patch=4, feature_orientations=12)
    s = scenes.render(0, 0, config)
    assert s["features"].shape == (16, 16, 12) == scenes.raw_specs(config)["features"].shape
    assert scenes.feature_channels(config) == 12


# --------------------------------------------------------------------------------------------
# Determinism.

_DIGEST = """
import hashlib, json, sys
import numpy as np
from m4.data import scenes
def digest(s):
    h = hashlib.sha256()
    for key in sorted(s):
        v = s[key]
        h.update(key.encode())
        if isinstance(v, np.ndarray):
            h.update(str(v.dtype).encode() + str(v.shape).encode() + v.tobytes())
        else:
            h.update(json.dumps(v, sort_keys=True).encode())
    return h.hexdigest()
config = scenes.SceneConfig(resolution=48, feature_patch=6)
print(" ".join(digest(scenes.render(11, i, config)) for i in (0, 1, 2, 977)))
"""


def test_same_bytes_in_another_process():
    here = {}
    exec(compile(_DIGEST.replace("print(", "result = ("), "digest", "exec"), here)
    # Another process, with other thread-pool sizes and another hash seed.
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", _DIGEST], check=True, capture_output=True,
                         text=True, timeout=120, env=env, cwd=REPO_ROOT)
    assert out.stdout.split() == here["result"].split()


def test_batch_equals_single_renders_whatever_the_batch():
    batch = scenes.render_batch(5, [4, 9, 2], SMALL)
    alone = scenes.render(5, 9, SMALL)
    for key in ("rgb", "depth", "normals", "semseg", "poses", "features", "instance"):
        assert batch[key].shape[0] == 3
        np.testing.assert_array_equal(batch[key][1], alone[key])
    assert batch["caption"][1] == alone["caption"]
    assert batch["num_figures"].dtype == np.int32
    with pytest.raises(ValueError, match="at least one index"):
        scenes.render_batch(5, [], SMALL)


def test_different_keys_give_different_scenes():
    captions = {scenes.render(s, i, SMALL)["caption"] for s in range(3) for i in range(4)}
    assert len(captions) == 12


# --------------------------------------------------------------------------------------------
# Geometry, checked independently.

def _camera_rays(resolution: int, scene: dict):
    """Unit ray directions [P, 3] (world) and cos(angle to the optical axis), from first
    principles: pinhole with the given fov, pitched down about the x axis."""
    pitch = math.radians(scene["camera"]["pitch_deg"])
    focal = 0.5 * resolution / math.tan(math.radians(CAMERA_FOV_DEG) / 2)
    jj, ii = np.meshgrid(np.arange(resolution) + 0.5, np.arange(resolution) + 0.5)
    cam = np.stack([(jj - resolution / 2) / focal, (ii - resolution / 2) / focal,
                    np.ones_like(jj)], -1).reshape(-1, 3)  # x right, y down, z forward
    cam /= np.linalg.norm(cam, axis=-1, keepdims=True)
    # Rotate: camera y (down) and z (forward) into the world (y up), pitched down.
    s, c = math.sin(pitch), math.cos(pitch)
    world = np.stack([cam[:, 0], -c * cam[:, 1] - s * cam[:, 2], -s * cam[:, 1] + c * cam[:, 2]],
                     -1)
    return world, cam[:, 2]


def _sdf_entity(o: dict, p: np.ndarray) -> np.ndarray:
    g = o["geometry"]
    if o["kind"] == "sphere":
        return np.linalg.norm(p - g["center"], axis=-1) - g["radius"]
    if o["kind"] == "box":
        q = p - g["center"]
        cos, sin = math.cos(g["yaw"]), math.sin(g["yaw"])
        local = np.stack([q[:, 0] * cos - q[:, 2] * sin, q[:, 1],
                          q[:, 0] * sin + q[:, 2] * cos], -1)
        d = np.abs(local) - g["half_extents"]
        return np.linalg.norm(np.maximum(d, 0), axis=-1) + np.minimum(d.max(-1), 0)
    if o["kind"] == "cylinder":
        q = p - g["base"]
        radial = np.hypot(q[:, 0], q[:, 2]) - g["radius"]
        axial = np.abs(q[:, 1] - g["height"] / 2) - g["height"] / 2
        d = np.stack([radial, axial], -1)
        return np.linalg.norm(np.maximum(d, 0), axis=-1) + np.minimum(d.max(-1), 0)
    # A figure: capsules along the bones and spheres at the joints.
    joints = np.asarray(g["joints"])
    best = (np.linalg.norm(p[:, None] - joints[None], axis=-1) - g["joint_radii"]).min(-1)
    for (a, b), r in zip(scenes.SKELETON, g["bone_radii"]):
        ab = joints[b] - joints[a]
        h = np.clip(((p - joints[a]) @ ab) / (ab @ ab), 0, 1)
        best = np.minimum(best, np.linalg.norm(p - joints[a] - h[:, None] * ab, axis=-1) - r)
    return best


def _scene_sdfs(scene: dict, p: np.ndarray) -> list[np.ndarray]:
    """Signed distances of points [N, 3] to the floor, the wall and each object."""
    return [p[:, 1], WALL_Z - p[:, 2]] + [_sdf_entity(o, p) for o in scene["objects"]]


def _trace(scene: dict, origin: np.ndarray, dirs: np.ndarray):
    """Sphere tracing along unit rays [R, 3] -> (distance [R], converged [R])."""
    t = np.zeros(len(dirs))
    active = np.ones(len(dirs), bool)
    for _ in range(400):
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        d = np.min(_scene_sdfs(scene, origin + t[idx, None] * dirs[idx]), axis=0)
        t[idx] += np.maximum(d, 0)
        active[idx[d < 1e-7]] = False
    return t, ~active


def _sphere_trace(sample: dict, resolution: int):
    """-> (instance [P] or -1 where not converged, z-depth [P], world normal [P, 3])."""
    scene = sample["scene"]
    dirs, cos_axis = _camera_rays(resolution, scene)
    origin = np.asarray(scene["camera"]["position"])
    t, converged = _trace(scene, origin, dirs)
    p = origin + t[:, None] * dirs
    instance = np.argmin(np.abs(np.stack(_scene_sdfs(scene, p), -1)), axis=-1)
    # The normal is the gradient of the hit surface's distance (central differences).
    grad = np.zeros_like(p)
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = 1e-6
        plus = np.stack(_scene_sdfs(scene, p + step), -1)[np.arange(len(p)), instance]
        minus = np.stack(_scene_sdfs(scene, p - step), -1)[np.arange(len(p)), instance]
        grad[:, axis] = (plus - minus) / 2e-6
    grad /= np.linalg.norm(grad, axis=-1, keepdims=True)
    return np.where(converged, instance, -1), t * cos_axis, grad


def _boundary(instance: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another instance."""
    pad = np.pad(instance, 1, mode="edge")
    centre = pad[1:-1, 1:-1]
    return ((pad[:-2, 1:-1] != centre) | (pad[2:, 1:-1] != centre) | (pad[1:-1, :-2] != centre)
            | (pad[1:-1, 2:] != centre))


@pytest.mark.parametrize("config, indices", [(SMALL, range(8)),
                                             (scenes.SceneConfig(), range(3))])
def test_semseg_and_depth_agree_with_an_independent_sphere_tracer(config, indices):
    n = config.resolution
    for index in indices:
        s = scenes.render(21, index, config)
        traced, depth, normal = _sphere_trace(s, n)
        rendered = s["instance"].reshape(-1).astype(np.int64)
        converged = traced >= 0
        assert converged.mean() > 0.97
        disagree = converged & (traced != rendered)
        # Only a ray that grazes a silhouette may be classified differently by the tracer.
        assert not (disagree & ~_boundary(s["instance"]).reshape(-1)).any(), index
        assert disagree.sum() <= 0.02 * n * n
        agree = converged & ~disagree
        np.testing.assert_allclose(s["depth"].reshape(-1)[agree], depth[agree], rtol=0, atol=2e-3)
        # Normals, away from silhouettes (where box edges make the gradient ill-defined).
        inner = agree & ~_boundary(s["instance"]).reshape(-1)
        pitch = math.radians(s["scene"]["camera"]["pitch_deg"])
        sin, cos = math.sin(pitch), math.cos(pitch)
        camera_frame = np.stack([normal[:, 0], -cos * normal[:, 1] - sin * normal[:, 2],
                                 -sin * normal[:, 1] + cos * normal[:, 2]], -1)
        np.testing.assert_allclose(s["normals"].reshape(-1, 3)[inner], camera_frame[inner],
                                   atol=2e-3)
        # Semantic classes are the instances' classes.
        kinds = ["floor", "wall"] + [o["kind"] for o in s["scene"]["objects"]]
        classes = np.array([scenes.CLASS_NAMES.index(k) for k in kinds])
        np.testing.assert_array_equal(s["semseg"], classes[s["instance"]])


def test_floor_and_wall_depth_match_the_analytic_planes(samples64):
    for s in samples64[:6]:
        dirs, cos_axis = _camera_rays(64, s["scene"])
        height = s["scene"]["camera"]["position"][1]
        with np.errstate(divide="ignore"):
            floor_depth = height / -dirs[:, 1] * cos_axis
        wall_depth = WALL_Z / dirs[:, 2] * cos_axis
        semseg, depth = s["semseg"].reshape(-1), s["depth"].reshape(-1)
        on_floor, on_wall = semseg == 0, semseg == 1
        assert on_floor.sum() > 500 and on_wall.sum() > 300
        np.testing.assert_allclose(depth[on_floor], floor_depth[on_floor], rtol=2e-6)
        np.testing.assert_allclose(depth[on_wall], wall_depth[on_wall], rtol=2e-6)
        assert depth.max() <= scenes.DEPTH_MAX + 1e-5


def test_normals_are_unit_and_planes_face_their_way(samples64):
    pitch = math.radians(samples64[0]["scene"]["camera"]["pitch_deg"])
    # World up (floor) and world -z (wall) in the camera frame (x right, y down, z forward).
    floor_n = np.array([0, -math.cos(pitch), -math.sin(pitch)])
    wall_n = np.array([0, math.sin(pitch), -math.cos(pitch)])
    for s in samples64[:6]:
        n = s["normals"].reshape(-1, 3)
        np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
        semseg = s["semseg"].reshape(-1)
        np.testing.assert_allclose(n[semseg == 0], np.broadcast_to(floor_n, n[semseg == 0].shape),
                                   atol=1e-6)
        np.testing.assert_allclose(n[semseg == 1], np.broadcast_to(wall_n, n[semseg == 1].shape),
                                   atol=1e-6)
        # Every visible surface faces its pixel's ray (camera frame, from first principles).
        focal = 32 / math.tan(math.radians(CAMERA_FOV_DEG) / 2)
        jj, ii = np.meshgrid(np.arange(64) + 0.5 - 32, np.arange(64) + 0.5 - 32)
        rays = np.stack([jj / focal, ii / focal, np.ones_like(jj)], -1).reshape(-1, 3)
        assert ((n * rays).sum(-1) < 1e-6).all()


def test_visibility_rule_rarely_removes_anything(samples64):
    # Placement already avoids heavy occlusion; were the rule to remove many entities, the
    # geometry would be suspect (a wrongly cast shape looks hidden, and would silently vanish).
    dropped = sum(s["scene"]["dropped"] for s in samples64)
    total = sum(len(s["scene"]["objects"]) for s in samples64)
    assert total >= 2 * len(samples64) and dropped <= 0.05 * total


def test_objects_stand_on_the_floor_without_touching_each_other(samples64):
    for s in samples64:
        objs = s["scene"]["objects"]
        for i, a in enumerate(objs):
            for b in objs[i + 1:]:
                gap = math.dist(a["position"][::2], b["position"][::2])
                assert gap > a["footprint_radius"] + b["footprint_radius"]


# --------------------------------------------------------------------------------------------
# Captions and poses.

def test_caption_describes_exactly_the_visible_objects(samples64):
    for s in samples64:
        parsed = scene_captions.parse(s["caption"])
        objs = s["scene"]["objects"]
        fields = ("size", "color", "kind", "depth", "side")
        assert [tuple(p[f] for f in fields) for p in parsed["objects"]] == \
            [tuple(o[f] for f in fields) for o in objs]
        assert len(parsed["relations"]) == max(1, len(objs) - 1)
        for o in objs:  # every object named is visible in semseg, with its class
            mask = s["instance"] == o["instance_id"]
            assert mask.sum() >= 1
            assert (s["semseg"][mask] == scenes.CLASS_NAMES.index(o["kind"])).all()
        # And nothing in the image is left out of the caption.
        assert set(np.unique(s["instance"])) <= {0, 1} | {o["instance_id"] for o in objs}


def test_caption_relations_and_positions_are_true(samples64):
    for s in samples64:
        objs = s["scene"]["objects"]
        by_name = {(o["color"], o["kind"]): o for o in objs}
        for c1, k1, rel, c2, k2 in scene_captions.parse(s["caption"])["relations"]:
            a = by_name[(c1, k1)]
            if c2 == "wall":
                assert rel == "in front of" and len(objs) == 1
                continue
            b = by_name[(c2, k2)]
            assert {"left of": a["u"] < b["u"], "in front of": a["z"] < b["z"],
                    "behind": a["z"] > b["z"]}[rel]
        for o in objs:
            x0, _, x1, _ = o["bbox"]
            centre = (x0 + x1) / 2 / 64
            # The coarse side is about the object's anchor; its pixels are not far from it.
            assert abs(centre - o["u"]) < 0.2


def test_caption_grammar_round_trip_and_tolerance():
    objs = [dict(size="small", color="red", kind="box", depth="front", side="left", u=0.1, z=3),
            dict(size="large", color="blue", kind="person", depth="back", side="left", u=0.15,
                 z=4)]
    text = scene_captions.describe(objs)
    assert text == ("a small red box at the front left and a large blue person at the back "
                    "left. the red box is in front of the blue person.")
    parsed = scene_captions.parse("junk " + text + " a huge pink thing at the top")
    assert [p["color"] for p in parsed["objects"]] == ["red", "blue"]
    assert parsed["relations"] == [("red", "box", "in front of", "blue", "person")]
    assert scene_captions.parse("the red sphere is in front of the wall.")["relations"] == \
        [("red", "sphere", "in front of", "wall", None)]
    with pytest.raises(ValueError, match="at least one object"):
        scene_captions.describe([])


def test_visible_joints_lie_on_their_figure(samples64):
    checked = 0
    for s in samples64:
        objs = s["scene"]["objects"]
        for f, k in enumerate(s["scene"]["figures"]):
            mask = np.pad(s["instance"] == objs[k]["instance_id"], 1)
            for x, y, visible in s["poses"][f]:
                assert 0 <= x < 64 and 0 <= y < 64  # placement keeps figures in the image
                if visible:
                    i, j = int(y) + 1, int(x) + 1  # +1: the padding
                    assert mask[i - 1:i + 2, j - 1:j + 2].any(), (s["scene"]["index"], f, x, y)
                    checked += 1
    assert checked > 50


def test_joint_visibility_agrees_with_tracing():
    occluded = 0
    for index in range(30):
        s = scenes.render(3, index, SMALL)
        scene = s["scene"]
        origin = np.asarray(scene["camera"]["position"])
        for f, k in enumerate(scene["figures"]):
            g = scene["objects"][k]["geometry"]
            joints, radii = np.asarray(g["joints"]), np.asarray(g["joint_radii"])
            dist = np.linalg.norm(joints - origin, axis=-1)
            hit, _ = _trace(scene, origin, (joints - origin) / dist[:, None])
            # Visible: nothing in front of the joint's sphere, beyond the renderer's documented
            # slack; ambiguous within 0.2 radius of that line.
            margin = hit - (dist - (1 + JOINT_SLACK) * radii)
            clear = np.abs(margin) > 0.2 * radii
            np.testing.assert_array_equal(s["poses"][f, clear, 2], (margin > 0)[clear])
            occluded += int((s["poses"][f, :, 2] == 0).sum())
    assert occluded >= 10  # occlusion happens and is reported


def test_joint_and_bone_radii_make_capsules():
    # The figure is the union of capsules only if every joint sphere covers its bones' ends.
    for (a, b), r in zip(scenes.SKELETON, BONE_RADIUS):
        assert JOINT_RADIUS[a] >= r and JOINT_RADIUS[b] >= r


# --------------------------------------------------------------------------------------------
# Features.

@pytest.mark.parametrize("resolution, patch, orientations", [(64, 8, 9), (60, 5, 9), (32, 4, 12)])
def test_features_are_skimage_hog(resolution, patch, orientations):
    config = scenes.SceneConfig(resolution=resolution, feature_patch=patch,
                                feature_orientations=orientations)
    s = scenes.render(2, 5, config)
    ref = hog(s["rgb"], orientations=orientations, pixels_per_cell=(patch, patch),
              cells_per_block=(1, 1), block_norm="L2", feature_vector=False, channel_axis=-1)
    g = resolution // patch
    np.testing.assert_allclose(s["features"], ref.reshape(g, g, orientations), atol=1e-6)
    noise = np.random.default_rng(0).integers(0, 256, (resolution, resolution, 3), np.uint8)
    ref = hog(noise, orientations=orientations, pixels_per_cell=(patch, patch),
              cells_per_block=(1, 1), block_norm="L2", feature_vector=False, channel_axis=-1)
    np.testing.assert_allclose(hog_features(noise, patch, orientations),
                               ref.reshape(g, g, orientations), atol=1e-6)


def test_features_are_zero_exactly_where_the_image_is_flat(samples64):
    for s in samples64[:6]:
        rgb = np.pad(s["rgb"].astype(np.int64), ((1, 1), (1, 1), (0, 0)), mode="edge")
        for i in range(8):
            for j in range(8):
                # The cell and the pixels around it (central differences reach one pixel out).
                window = rgb[8 * i:8 * i + 10, 8 * j:8 * j + 10].reshape(-1, 3)
                norm = np.linalg.norm(s["features"][i, j])
                if (window == window[0]).all():
                    assert norm == 0
                else:
                    assert norm == 0 or abs(norm - 1) < 1e-4
