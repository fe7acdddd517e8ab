"""What a built-in scene contains: the vocabulary (colours, sizes, kinds, joints) and the sampler.

A scene is a list of `Entity`s standing on the floor (objects and stick figures) plus a light.
`sample_layout(rng)` draws one from a numpy Generator; it never looks at the render resolution,
so the same (seed, index) describes the same scene at every resolution.

Placement rules (all in normalised image coordinates, so they hold at any resolution):
- footprints on the floor keep a gap (objects never intersect);
- every entity lies entirely inside the image;
- an entity's image rectangle may overlap the rectangle of an entity already placed by at most
  `MAX_RECT_OVERLAP` of the smaller one (no entity starts out hidden behind another).
`PLACEMENT_TRIES` candidate positions are drawn per entity; the first that keeps every rule is
taken, and if none does the entity is left out. The renderer then drops any entity that is still
less than half visible (see scenes.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from m4.data.scene_geometry import Camera

# ---------------------------------------------------------------------------------------------
# Vocabulary. Names are public (captions and scene descriptions use them); order is fixed.

# Saturated, well separated hues; they stay recognisable from the shadowed side (40% light).
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 45),
    "green": (45, 170, 65),
    "cyan": (40, 200, 215),
    "blue": (40, 80, 225),
    "purple": (150, 65, 205),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLOR_RGB)
SIZE_NAMES: tuple[str, ...] = ("small", "medium", "large")
OBJECT_KINDS: tuple[str, ...] = ("sphere", "box", "cylinder")
KIND_NAMES: tuple[str, ...] = OBJECT_KINDS + ("person",)

# Characteristic radius (metres) of an object of each size; a factor ~1.4 between sizes.
OBJECT_SCALE = {"small": 0.27, "medium": 0.37, "large": 0.5}
# Nominal standing height (metres) of a stick figure of each size.
FIGURE_HEIGHT = {"small": 1.15, "medium": 1.45, "large": 1.75}

JOINT_NAMES: tuple[str, ...] = (
    "head", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "pelvis",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
)
NUM_JOINTS = len(JOINT_NAMES)
_J = {name: i for i, name in enumerate(JOINT_NAMES)}
# Bones as (parent, child) joint index pairs, parents first (the order forward kinematics uses).
SKELETON: tuple[tuple[int, int], ...] = tuple((_J[a], _J[b]) for a, b in (
    ("neck", "head"), ("pelvis", "neck"),
    ("neck", "right_shoulder"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
    ("neck", "left_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("pelvis", "right_hip"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
    ("pelvis", "left_hip"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
))

# Body proportions in units of the nominal height, and part radii (chunky, so that a figure is
# still several pixels wide at 64x64).
_BODY = dict(torso=0.30, neck=0.12, shoulder_half=0.105, shoulder_drop=0.03, hip_half=0.065,
             upper_arm=0.165, forearm=0.16, thigh=0.245, shin=0.245)
_LIMB_R, _TORSO_R, _HEAD_R = 0.045, 0.075, 0.085
JOINT_RADIUS = tuple(_HEAD_R if n == "head" else _TORSO_R if n in ("neck", "pelvis") else _LIMB_R
                     for n in JOINT_NAMES)
BONE_RADIUS = tuple(_TORSO_R if (a, b) == (_J["pelvis"], _J["neck"]) else _LIMB_R
                    for a, b in SKELETON)

# ---------------------------------------------------------------------------------------------
# The stage. The camera is fixed; resolution only changes how finely it samples.

CAMERA_FOV_DEG = 60.0
CAMERA_HEIGHT = 1.6
CAMERA_PITCH_DEG = 23.0
WALL_Z = 7.5
Z_NEAR, Z_FAR = 2.1, 4.7  # where footprint centres may lie (metres from the camera's foot)
Z_SPLIT = 0.5 * (Z_NEAR + Z_FAR)  # "front" / "back" boundary of the captions
FOOTPRINT_GAP = 0.15  # metres between footprints
FRAME_MARGIN = 0.02  # entities stay this far (fraction of the image) from its borders
MAX_RECT_OVERLAP = 0.25
PLACEMENT_TRIES = 30

# Fixed surfaces: a pale, slightly warm floor with a faint checker (helps read depth) and a
# cool light-grey wall. Both differ clearly from every object colour.
FLOOR_RGB = ((172, 160, 146), (150, 139, 126))
WALL_RGB = (196, 202, 214)


@functools.lru_cache(maxsize=16)
def camera(resolution: int) -> Camera:
    """The fixed camera of every scene, sampling `resolution` x `resolution` pixels."""
    return Camera(resolution, CAMERA_FOV_DEG, CAMERA_HEIGHT, CAMERA_PITCH_DEG)


@dataclasses.dataclass(frozen=True)
class Entity:
    """One thing standing on the floor. `geometry` is kind-specific and JSON-ready:

    sphere:   center [3], radius
    box:      center [3], half_extents [3], yaw (radians about the vertical)
    cylinder: base [3] (centre of the bottom disc, on the floor), radius, height
    person:   joints [J][3], joint_radii [J], bone_radii [B] (bones = SKELETON), yaw, height
    """

    kind: str
    color: str
    size: str
    x: float  # footprint centre on the floor (world metres)
    z: float
    footprint: float  # footprint radius (metres)
    geometry: dict
    lo: tuple[float, float, float]  # world axis-aligned bounding box
    hi: tuple[float, float, float]

    @functools.cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """Geometry as float64 arrays shaped for the intersection routines ([K] per field)."""
        g = self.geometry
        if self.kind == "person":
            joints = np.asarray(g["joints"], np.float64)  # [J, 3]
            parent, child = (np.array(i) for i in zip(*SKELETON))
            axis = joints[child] - joints[parent]  # [B, 3]
            length = np.sqrt((axis * axis).sum(-1))
            return dict(joints=joints, joint_radii=np.asarray(g["joint_radii"]),
                        bone_start=joints[parent], bone_axis=axis / length[:, None],
                        bone_length=length, bone_radii=np.asarray(g["bone_radii"]))
        out = {k: np.asarray(v, np.float64) for k, v in g.items()}
        if self.kind == "box":
            out["cos"], out["sin"] = np.array(math.cos(g["yaw"])), np.array(math.sin(g["yaw"]))
        return out

    @property
    def center(self) -> tuple[float, float, float]:
        return tuple(0.5 * (a + b) for a, b in zip(self.lo, self.hi))

    @property
    def bounding_radius(self) -> float:
        return 0.5 * math.dist(self.lo, self.hi)


@dataclasses.dataclass(frozen=True)
class Light:
    """A distant light: unit `direction` points from the scene towards the light."""

    direction: tuple[float, float, float]
    ambient: float = 0.42
    diffuse: float = 0.58


# ---------------------------------------------------------------------------------------------
# Sampling.

def sample_layout(rng: np.random.Generator, min_objects: int, max_objects: int,
                  max_figures: int) -> tuple[list[Entity], Light]:
    """Draw the entities and the light of one scene. Entities come back in placement order."""
    n_objects = int(rng.integers(min_objects, max_objects + 1))
    n_figures = int(rng.integers(0, max_figures + 1))
    if n_objects + n_figures == 0:  # a scene always shows something
        n_objects, n_figures = (1, 0) if max_objects else (0, 1)
    # Distinct colours, so "the red box" always names one thing.
    colors = [COLOR_NAMES[i] for i in rng.permutation(len(COLOR_NAMES))[: n_objects + n_figures]]
    sizes = [SIZE_NAMES[i] for i in rng.integers(0, len(SIZE_NAMES), n_objects + n_figures)]
    kinds = ["person"] * n_figures + [OBJECT_KINDS[i] for i in
                                      rng.integers(0, len(OBJECT_KINDS), n_objects)]
    light = _sample_light(rng)

    cam = camera(1)  # resolution 1: projections come out in normalised image coordinates
    placed: list[Entity] = []
    rects: list[tuple[float, float, float, float]] = []
    # The biggest things first: they are the hardest to fit.
    order = sorted(range(len(kinds)), key=lambda i: (kinds[i] != "person",
                                                      -SIZE_NAMES.index(sizes[i]), i))
    tan_half_fov = math.tan(math.radians(CAMERA_FOV_DEG) / 2)
    for i in order:
        shape = _sample_shape(rng, kinds[i], sizes[i])  # size and pose: drawn once per entity
        # All candidate positions at once; the first one that satisfies every rule wins.
        zs = rng.uniform(Z_NEAR, Z_FAR, PLACEMENT_TRIES)
        half_width = zs * tan_half_fov - shape.footprint  # footprint inside the view
        xs = rng.uniform(-1.0, 1.0, PLACEMENT_TRIES) * half_width
        ok = half_width > 0
        for other in placed:
            ok &= np.hypot(xs - other.x, zs - other.z) >= (
                shape.footprint + other.footprint + FOOTPRINT_GAP)
        for k in np.flatnonzero(ok):
            x, z = float(xs[k]), float(zs[k])
            lo = (shape.lo[0] + x, shape.lo[1], shape.lo[2] + z)
            hi = (shape.hi[0] + x, shape.hi[1], shape.hi[2] + z)
            rect = cam.project_box(lo, hi)
            if _fits(rect, rects):
                placed.append(_build(kinds[i], colors[i], sizes[i], shape, x, z, lo, hi))
                rects.append(rect)
                break
    return placed, light


def _sample_light(rng: np.random.Generator) -> Light:
    # From above, from the camera's side (so shadows fall back onto the floor and wall, where
    # they are visible), from the left or the right.
    x, y, z = rng.uniform(-0.7, 0.7), rng.uniform(0.9, 1.6), rng.uniform(-0.9, -0.35)
    norm = math.sqrt(x * x + y * y + z * z)
    return Light((float(x / norm), float(y / norm), float(z / norm)))


@dataclasses.dataclass(frozen=True)
class _Shape:
    """An entity's size, proportions and pose before it is put somewhere: its bounds lo, hi
    are relative to the footprint centre (x, 0, z)."""

    footprint: float
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    params: dict


def _sample_shape(rng: np.random.Generator, kind: str, size: str) -> _Shape:
    if kind == "person":
        height = FIGURE_HEIGHT[size]
        joints = _figure_joints(rng) * height  # [J, 3] local frame, feet on the floor
        yaw = float(rng.uniform(-1.2, 1.2))
        cos, sin = math.cos(yaw), math.sin(yaw)
        x, z = joints[:, 0] * cos + joints[:, 2] * sin, joints[:, 2] * cos - joints[:, 0] * sin
        joints = np.stack([x, joints[:, 1], z], axis=1)
        radii = np.array(JOINT_RADIUS)[:, None] * height
        reach = float(np.sqrt(x * x + z * z).max()) + _TORSO_R * height
        lo = tuple(float(v) for v in (joints - radii).min(0))
        hi = tuple(float(v) for v in (joints + radii).max(0))
        return _Shape(reach, lo, hi, dict(joints=joints, yaw=yaw, height=height))
    s = OBJECT_SCALE[size]
    if kind == "sphere":
        return _Shape(s, (-s, 0.0, -s), (s, 2 * s, s), dict(radius=s))
    if kind == "box":
        hx, hy, hz = (float(v) for v in s * rng.uniform(0.78, 1.0, 3))
        yaw = float(rng.uniform(0, math.pi / 2))
        ex = abs(math.cos(yaw)) * hx + abs(math.sin(yaw)) * hz
        ez = abs(math.sin(yaw)) * hx + abs(math.cos(yaw)) * hz
        return _Shape(math.hypot(hx, hz), (-ex, 0.0, -ez), (ex, 2 * hy, ez),
                      dict(half=(hx, hy, hz), yaw=yaw))
    r = s * float(rng.uniform(0.8, 0.95))
    h = 2 * s * float(rng.uniform(0.95, 1.4))
    return _Shape(r, (-r, 0.0, -r), (r, h, r), dict(radius=r, height=h))


def _build(kind: str, color: str, size: str, shape: _Shape, x: float, z: float, lo, hi) -> Entity:
    p = shape.params
    if kind == "sphere":
        geometry = dict(center=[x, p["radius"], z], radius=p["radius"])
    elif kind == "box":
        hx, hy, hz = p["half"]
        geometry = dict(center=[x, hy, z], half_extents=[hx, hy, hz], yaw=p["yaw"])
    elif kind == "cylinder":
        geometry = dict(base=[x, 0.0, z], radius=p["radius"], height=p["height"])
    else:
        height = p["height"]
        geometry = dict(joints=(p["joints"] + np.array([x, 0.0, z])).tolist(),
                        joint_radii=[r * height for r in JOINT_RADIUS],
                        bone_radii=[r * height for r in BONE_RADIUS], yaw=p["yaw"],
                        height=height)
    return Entity(kind, color, size, x, z, shape.footprint, geometry, lo, hi)


def _fits(rect, rects: list) -> bool:
    """The image rectangle is inside the frame and overlaps no placed one by much."""
    u0, v0, u1, v1 = rect
    if u0 < FRAME_MARGIN or v0 < FRAME_MARGIN or u1 > 1 - FRAME_MARGIN or v1 > 1 - FRAME_MARGIN:
        return False
    area = (u1 - u0) * (v1 - v0)
    for a0, b0, a1, b1 in rects:
        overlap = max(0.0, min(u1, a1) - max(u0, a0)) * max(0.0, min(v1, b1) - max(v0, b0))
        if overlap > MAX_RECT_OVERLAP * min(area, (a1 - a0) * (b1 - b0)):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Stick figures: forward kinematics from random joint angles within comfortable limits.

# Joint angle limits (degrees), drawn uniformly: torso lean forward and sideways, head nod and
# tilt, then per side (right, left) shoulder abduction and flexion, elbow bend, hip abduction
# and flexion, knee bend.
_ANGLE_LIMITS = np.array(
    [(-8, 14), (-7, 7), (-15, 20), (-15, 15)]
    + [(8, 100), (-40, 120), (0, 125), (0, 22), (-25, 60), (0, 95)] * 2, np.float64)

Vec = tuple[float, float, float]


def _figure_joints(rng: np.random.Generator) -> np.ndarray:
    """Joint positions [J, 3] of a figure of height 1 facing the camera, feet on the floor.

    Local frame: the figure faces -z (towards the camera); its anatomical right is -x.
    Plain-float vector maths: numpy's per-call overhead dominates on 3-vectors.
    """
    angles = [math.radians(a) for a in
              rng.uniform(_ANGLE_LIMITS[:, 0], _ANGLE_LIMITS[:, 1]).tolist()]
    lean, side, nod, tilt = angles[:4]
    up, fwd, right = (0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)
    b = _BODY
    joints: list[Vec] = [(0.0, 0.0, 0.0)] * NUM_JOINTS  # the pelvis stays at the origin
    spine = _unit(_add(up, fwd, right, s=(math.cos(lean), math.sin(lean), math.sin(side))))
    neck = _add(spine, s=(b["torso"],))
    joints[_J["neck"]] = neck
    joints[_J["head"]] = _add(neck, _unit(_add(spine, fwd, right,
                                               s=(1.0, math.sin(nod), math.sin(tilt)))),
                              s=(1.0, b["neck"]))
    for k, (sign, prefix) in enumerate(((1.0, "right"), (-1.0, "left"))):
        abduct, flex, elbow_bend, hip_abduct, hip_flex, knee_bend = angles[4 + 6 * k:10 + 6 * k]
        side_axis = _add(right, s=(sign,))
        shoulder = _add(neck, side_axis, spine, s=(1.0, b["shoulder_half"], -b["shoulder_drop"]))
        # Arm: hang down, swing out sideways (abduction), then forwards/backwards (flexion).
        upper = _swing(_add(up, s=(-1.0,)), side_axis, fwd, abduct, flex)
        elbow = _add(shoulder, upper, s=(1.0, b["upper_arm"]))
        wrist = _add(elbow, _bend(upper, fwd, up, elbow_bend), s=(1.0, b["forearm"]))
        hip = _add(side_axis, s=(b["hip_half"],))
        thigh = _swing(_add(up, s=(-1.0,)), side_axis, fwd, hip_abduct, hip_flex)
        knee = _add(hip, thigh, s=(1.0, b["thigh"]))
        # The knee bends backwards: the shin turns away from `fwd`.
        ankle = _add(knee, _bend(thigh, _add(fwd, s=(-1.0,)), _add(up, s=(-1.0,)), knee_bend),
                     s=(1.0, b["shin"]))
        for name, point in (("shoulder", shoulder), ("elbow", elbow), ("wrist", wrist),
                            ("hip", hip), ("knee", knee), ("ankle", ankle)):
            joints[_J[f"{prefix}_{name}"]] = point
    out = np.array(joints)
    # Stand on the floor: the lowest part surface touches y = 0.
    out[:, 1] -= (out[:, 1] - np.array(JOINT_RADIUS)).min()
    return out


def _add(*vectors: Vec, s: tuple[float, ...]) -> Vec:
    """sum_i s[i] * vectors[i]."""
    x = y = z = 0.0
    for w, v in zip(s, vectors):
        x, y, z = x + w * v[0], y + w * v[1], z + w * v[2]
    return x, y, z


def _dot(a: Vec, b: Vec) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _unit(v: Vec) -> Vec:
    return _add(v, s=(1.0 / math.sqrt(_dot(v, v)),))


def _swing(rest: Vec, side: Vec, fwd: Vec, abduct: float, flex: float) -> Vec:
    """`rest` (a unit vector perpendicular to `side` and `fwd`) turned out towards `side` by
    `abduct`, then towards `fwd` by `flex`."""
    out = _add(rest, side, s=(math.cos(abduct), math.sin(abduct)))
    return _add(out, fwd, s=(math.cos(flex), math.sin(flex)))


def _bend(d: Vec, towards: Vec, fallback: Vec, angle: float) -> Vec:
    """Unit vector d turned by `angle` in the plane of d and `towards`."""
    w = _add(towards, d, s=(1.0, -_dot(towards, d)))
    norm = math.sqrt(_dot(w, w))
    w = _add(w, s=(1.0 / norm,)) if norm > 1e-6 else fallback
    return _add(d, w, s=(math.cos(angle), math.sin(angle)))
