"""The built-in dataset: procedural 3D scenes with exact, aligned modalities.

    cfg = SceneConfig(resolution=64)
    sample = render(seed=0, index=17, config=cfg)      # same bytes in any process, on any run

A scene is a floor and a back wall, min_objects..max_objects objects (spheres, boxes, cylinders)
and 0..max_figures stick figures (capsules: spheres at the joints, cylinders along the bones),
each with a colour (unique in the scene), a size and a place on the floor, lit by a distant light
with shadows. Crowded scenes may not fit everything requested: with the defaults about one
entity in six finds no place and is left out (scene_layout.py), so scenes show 1..5 entities.
Everything is ray-cast (scene_render.py), so depth, normals and classes are exact per pixel (one
ray through each pixel centre, no anti-aliasing).

Modalities (the public keys; `raw_specs` describes each):
  rgb       uint8 [H, W, 3]   ambient + Lambert shading, shadows, a small highlight on objects
  depth     float32 [H, W]    z-depth in metres: distance along the camera's optical axis (not
                              along the ray), as depth sensors and most datasets report it
  normals   float32 [H, W, 3] unit surface normals in the camera frame (OpenCV: x right,
                              y down, z forward); each points against its pixel's ray
  semseg    uint8 [H, W]      class ids into CLASS_NAMES (floor, wall, one per object kind,
                              person); every pixel sees a surface, so there is no void class
  caption   str               what is where: see scene_captions.py for the exact grammar
  poses     float32 [max_figures, J, 3]  per figure (left to right) and joint (JOINT_NAMES):
                              (x, y) the joint centre projected to image coordinates (pixel
                              (i, j) covers [j, j+1) x [i, i+1)), and visible in {0, 1}: the
                              first surface on the ray to the joint is the body at the joint
                              (scene_render.joint_visibility), not a limb or thing in front.
                              Occluded joints keep their (x, y); placement keeps every joint
                              inside the image. Rows >= num_figures are zero.
  features  float32 [H/p, W/p, C] dense HOG, one descriptor per token cell (scene_features.py)
Extra keys: num_figures (int), instance (uint8 [H, W]: 0 floor, 1 wall, 2 + k for
scene["objects"][k]) and scene (a JSON-ready description used to score generated captions:
camera, light, and per object its kind, colour, size, side, depth, anchor position, pixel bbox,
visible pixels and exact geometry; figures lists the object index of each pose row).

Determinism: a scene is drawn from np.random.default_rng(SeedSequence([seed, index])) and
nothing else (no global state, no dependence on other samples of a batch). The layout never
depends on the resolution: the same (seed, index) is the same scene at 32 and at 256.

Visibility rule: placement avoids heavy occlusion (scene_layout.py); after that, an entity with
less than MIN_VISIBLE_FRACTION of its own silhouette visible, or fewer than MIN_VISIBLE_PIXELS
pixels, at the reference resolution (64x64) is removed from the scene and the scene re-cast.
At another resolution an entity that would still cover no pixel at all (possible only below 64)
is removed too. So every entity of scene["objects"] (and of the caption) is visible in semseg.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from m4.data import scene_captions
from m4.data.scene_captions import side_of
from m4.data.scene_features import hog_features
from m4.data.scene_layout import (CAMERA_FOV_DEG, CAMERA_HEIGHT, CAMERA_PITCH_DEG, COLOR_NAMES,
                                  COLOR_RGB, JOINT_NAMES, KIND_NAMES, NUM_JOINTS, SIZE_NAMES,
                                  SKELETON, WALL_Z, Z_SPLIT, Entity, camera, sample_layout)
from m4.data.scene_render import cast, joint_visibility, shade

__all__ = [
    "CLASS_NAMES", "COLOR_NAMES", "COLOR_RGB", "DEPTH_MAX", "JOINT_NAMES", "KIND_NAMES",
    "MODALITIES",
    "NUM_JOINTS", "SIZE_NAMES", "SKELETON", "RawSpec", "SceneConfig", "SceneConfigError",
    "feature_channels", "raw_specs", "render", "render_batch",
]

MODALITIES: tuple[str, ...] = ("rgb", "depth", "normals", "semseg", "caption", "poses", "features")
CLASS_NAMES: tuple[str, ...] = ("floor", "wall") + KIND_NAMES
REFERENCE_RESOLUTION = 64
MIN_VISIBLE_FRACTION = 0.5
MIN_VISIBLE_PIXELS = 12  # at the reference resolution
# An upper bound of every z-depth: the floor-wall junction is the farthest surface the room can
# show; rounded up to the centimetre so float32 rounding can never exceed it.
DEPTH_MAX = math.ceil(100 * (CAMERA_HEIGHT * math.sin(math.radians(CAMERA_PITCH_DEG))
                             + WALL_Z * math.cos(math.radians(CAMERA_PITCH_DEG)))) / 100


# The built-in validation split: scenes from this index on (same seed), so it never overlaps a
# training range and does not change when the training set grows. TFDS and pretokenize share it.
VALIDATION_START = 1_000_000_000


class SceneConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn and rendered. Every field is checked on construction."""

    resolution: int = 64  # H = W, 32..256
    feature_patch: int = 8  # p: the features are [H/p, W/p, C]; must divide the resolution
    feature_orientations: int = 9  # C: HOG orientation bins
    min_objects: int = 1  # objects (not figures) per scene, drawn uniformly in [min, max]
    max_objects: int = 4
    max_figures: int = 2  # figures per scene, drawn uniformly in [0, max_figures]
    shadows: bool = True

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = bool if f.type in (bool, "bool") else int
            if type(value) is not expected and not (
                    expected is int and isinstance(value, np.integer)):
                raise SceneConfigError(f"SceneConfig.{f.name}: expected {expected.__name__}, "
                                       f"got {value!r} ({type(value).__name__})")
            if expected is int:
                object.__setattr__(self, f.name, int(value))
        _in_range("resolution", self.resolution, 32, 256)
        _in_range("feature_patch", self.feature_patch, 2, self.resolution)
        if self.resolution % self.feature_patch:
            raise SceneConfigError(
                f"SceneConfig.feature_patch: expected a divisor of resolution={self.resolution}, "
                f"got {self.feature_patch}")
        _in_range("feature_orientations", self.feature_orientations, 2, 36)
        _in_range("max_objects", self.max_objects, 0, 5)
        _in_range("min_objects", self.min_objects, 0, self.max_objects)
        _in_range("max_figures", self.max_figures, 0, 3)
        if self.max_objects + self.max_figures == 0:
            raise SceneConfigError("SceneConfig: expected max_objects + max_figures >= 1, got 0")
        if self.max_objects + self.max_figures > len(COLOR_NAMES):
            raise SceneConfigError(
                f"SceneConfig: expected max_objects + max_figures <= {len(COLOR_NAMES)} (colours "
                f"are unique per scene), got {self.max_objects + self.max_figures}")


def _in_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise SceneConfigError(f"SceneConfig.{name}: expected {lo} <= {name} <= {hi}, got {value}")


@dataclasses.dataclass(frozen=True)
class RawSpec:
    """What one raw modality looks like: dtype, shape, and its value range or class count."""

    dtype: str  # numpy dtype name, or "str" for text
    shape: tuple[int, ...]
    description: str
    value_range: tuple[float, float] | None = None  # inclusive bounds of every element
    num_classes: int | None = None  # integer ids in [0, num_classes)

    def check(self, modality: str, value: Any) -> None:
        """Raise ValueError naming the modality, the expected and the received value."""
        if self.dtype == "str":
            if not isinstance(value, str):
                raise ValueError(f"{modality}: expected str, got {type(value).__name__}")
            return
        arr = np.asarray(value)
        if arr.dtype != np.dtype(self.dtype) or arr.shape != self.shape:
            raise ValueError(f"{modality}: expected {self.dtype} {list(self.shape)}, got "
                             f"{arr.dtype} {list(arr.shape)}")
        if self.num_classes is not None and arr.size and arr.max() >= self.num_classes:
            raise ValueError(f"{modality}: expected class ids < {self.num_classes}, got "
                             f"{int(arr.max())}")
        if self.value_range is not None and arr.size:
            lo, hi = self.value_range
            if not (np.all(np.isfinite(arr)) and arr.min() >= lo and arr.max() <= hi):
                raise ValueError(f"{modality}: expected values in [{lo}, {hi}], got "
                                 f"[{arr.min()}, {arr.max()}]")


def feature_channels(config: SceneConfig) -> int:
    return config.feature_orientations


def raw_specs(config: SceneConfig | None = None) -> dict[str, RawSpec]:
    """The single description of the raw data: {modality: RawSpec}."""
    c = config or SceneConfig()
    n, g = c.resolution, c.resolution // c.feature_patch
    return {
        "rgb": RawSpec("uint8", (n, n, 3), "shaded colour image", value_range=(0, 255)),
        "depth": RawSpec("float32", (n, n), "z-depth along the optical axis, metres",
                         value_range=(0.0, DEPTH_MAX)),
        "normals": RawSpec("float32", (n, n, 3),
                           "unit surface normals, camera frame (x right, y down, z forward)",
                           value_range=(-1.0, 1.0)),
        "semseg": RawSpec("uint8", (n, n), "class ids into CLASS_NAMES",
                          num_classes=len(CLASS_NAMES)),
        "caption": RawSpec("str", (), "what is where; grammar in m4.data.scene_captions"),
        "poses": RawSpec("float32", (c.max_figures, NUM_JOINTS, 3),
                         "per figure and joint: x, y (image coordinates, pixels), visible (0/1)",
                         value_range=(0.0, float(n))),
        "features": RawSpec("float32", (g, g, feature_channels(c)),
                            f"HOG, {c.feature_patch}x{c.feature_patch}-pixel cells, "
                            f"{c.feature_orientations} orientations, L2-normalised per cell",
                            value_range=(0.0, 1.0)),
    }


def render(seed: int, index: int, config: SceneConfig | None = None) -> dict[str, Any]:
    """Render scene `index` of dataset `seed`. Deterministic in (seed, index, config)."""
    config = config or SceneConfig()
    if not isinstance(config, SceneConfig):
        raise TypeError(f"render: expected config to be a SceneConfig, got {type(config).__name__}")
    for name, value in (("seed", seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"render: expected {name} to be an int >= 0, got {value!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    entities, light = sample_layout(rng, config.min_objects, config.max_objects,
                                    config.max_figures)
    entities.sort(key=_anchor_u)  # left to right: instance ids, captions and poses follow it
    n = config.resolution
    cam = camera(n)
    placed = len(entities)
    entities, frame = _drop_hidden(entities, n)
    if not entities:  # placement keeps the nearest entity whole, so this means a geometry bug
        raise RuntimeError(f"render: scene (seed={seed}, index={index}) has nothing visible")
    if frame is None:
        frame = cast(cam, entities)
    visible = np.bincount(frame.instance, minlength=2 + len(entities))[2:]
    if not visible.all():  # only possible below the reference resolution
        entities = [e for e, v in zip(entities, visible) if v]
        frame = cast(cam, entities)
        visible = visible[visible > 0]

    _, cos_axis = cam.rays()
    depth = (frame.t * cos_axis).astype(np.float32).reshape(n, n)
    ax, ay, az = cam.axes
    wx, wy, wz = frame.normal
    normals = np.stack([wx * a[0] + wy * a[1] + wz * a[2] for a in (ax, ay, az)], axis=-1)
    class_of_instance = np.array([0, 1] + [CLASS_NAMES.index(e.kind) for e in entities], np.uint8)
    rgb = shade(frame, cam, entities, light, config.shadows)

    figures = [e for e in entities if e.kind == "person"]
    poses = np.zeros((config.max_figures, NUM_JOINTS, 3), np.float32)
    for f, e in enumerate(figures):
        j = e.arrays["joints"]
        u, v, _ = cam.project(j[:, 0], j[:, 1], j[:, 2])
        poses[f] = np.stack([u, v, joint_visibility(cam, entities, e)], axis=-1)

    instance = frame.instance.reshape(n, n)
    scene = _describe(seed, index, cam, entities, light, instance, visible, frame.silhouette)
    scene["dropped"] = placed - len(entities)  # removed by the visibility rule
    return {
        "rgb": rgb,
        "depth": depth,
        "normals": normals.astype(np.float32).reshape(n, n, 3),
        "semseg": class_of_instance[instance],
        "caption": scene_captions.describe(scene["objects"]),
        "poses": poses,
        "features": hog_features(rgb, config.feature_patch, config.feature_orientations),
        "num_figures": len(figures),
        "instance": instance.astype(np.uint8),
        "scene": scene,
    }


def render_batch(seed: int, indices: Sequence[int], config: SceneConfig | None = None
                 ) -> dict[str, Any]:
    """render() for each index, stacked: arrays get a leading [B] axis; caption and scene are
    lists; num_figures is int32 [B]. Sample i equals render(seed, indices[i], config)."""
    samples = [render(seed, int(i), config) for i in indices]
    if not samples:
        raise ValueError("render_batch: expected at least one index, got none")
    out: dict[str, Any] = {}
    for key, first in samples[0].items():
        values = [s[key] for s in samples]
        if isinstance(first, np.ndarray):
            out[key] = np.stack(values)
        elif key == "num_figures":
            out[key] = np.array(values, np.int32)
        else:
            out[key] = values
    return out


def _anchor(e: Entity) -> tuple[float, float, float]:
    """The point that stands for an entity's position: its footprint centre at mid-height."""
    return e.x, 0.5 * (e.lo[1] + e.hi[1]), e.z


def _anchor_u(e: Entity) -> float:
    u, _, _ = camera(1).project(*_anchor(e))
    return float(u)


def _drop_hidden(entities: list[Entity], resolution: int):
    """Remove entities that are not visible enough at the reference resolution.

    -> (kept entities, the reference Frame if it is also the final one, else None)."""
    if not entities:
        return entities, None
    frame = cast(camera(REFERENCE_RESOLUTION), entities)
    visible = np.bincount(frame.instance, minlength=2 + len(entities))[2:]
    keep = (visible >= MIN_VISIBLE_FRACTION * frame.silhouette) & (visible >= MIN_VISIBLE_PIXELS)
    if not keep.all():
        return [e for e, k in zip(entities, keep) if k], None
    return entities, frame if resolution == REFERENCE_RESOLUTION else None


def _describe(seed, index, cam, entities, light, instance, visible, silhouette) -> dict:
    objects, figures = [], []
    for k, e in enumerate(entities):
        rows, cols = np.nonzero(instance == 2 + k)
        u = _anchor_u(e)
        obj = {
            "instance_id": 2 + k,
            "kind": e.kind,
            "class_id": CLASS_NAMES.index(e.kind),
            "color": e.color,
            "rgb": list(COLOR_RGB[e.color]),
            "size": e.size,
            "side": side_of(u),
            "depth": "front" if e.z < Z_SPLIT else "back",
            "u": u,
            "z": e.z,
            "position": list(_anchor(e)),
            "footprint_radius": e.footprint,
            "bbox": [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1],
            "visible_pixels": int(visible[k]),
            "visible_fraction": float(visible[k] / max(int(silhouette[k]), 1)),
            "geometry": e.geometry,
            "figure_index": None,
        }
        if e.kind == "person":
            obj["figure_index"] = len(figures)
            figures.append(k)
        objects.append(obj)
    return {
        "seed": int(seed),
        "index": int(index),
        "resolution": cam.resolution,
        "camera": {"position": list(cam.origin), "fov_deg": CAMERA_FOV_DEG,
                   "pitch_deg": CAMERA_PITCH_DEG, "focal_px": cam.focal, "wall_z": WALL_Z},
        "light": {"direction": list(light.direction), "ambient": light.ambient,
                  "diffuse": light.diffuse},
        "objects": objects,
        "figures": figures,
    }
