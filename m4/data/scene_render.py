"""Rendering a sampled scene: primary rays (z-buffer over entities), shadows, shading, joints.

Speed comes from two things: every entity is tested only against the rays inside its projected
bounding rectangle (a few hundred of the 4096 rays at 64x64), and all parts of an entity (the 15
joint spheres and 14 limb cylinders of a figure) are tested at once as a [rays, parts] array.
Shadow rays toward the (distant) light are pre-filtered per entity by its bounding sphere.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from m4.data import scene_geometry as geo
from m4.data.scene_geometry import Camera, Rays
from m4.data.scene_layout import (COLOR_RGB, FLOOR_RGB, WALL_RGB, WALL_Z, Entity, Light)

FLOOR_ID, WALL_ID = 0, 1  # instance ids; entity k has instance id 2 + k
SPECULAR = 0.22  # Blinn-Phong highlight on objects (not on the matte floor and wall)
JOINT_SLACK = 1.5  # in joint radii; see joint_visibility
# A shadow ray starts this far (metres) off its surface, along the normal.
SHADOW_OFFSET = 1e-4


@dataclasses.dataclass
class Frame:
    """Per-pixel result of casting the primary rays (row-major, [P] = [H*W])."""

    t: np.ndarray  # [P] float64 distance along the (unit) ray
    instance: np.ndarray  # [P] int16: FLOOR_ID, WALL_ID or 2 + entity index
    normal: tuple[np.ndarray, np.ndarray, np.ndarray]  # world-frame unit normal components [P]
    silhouette: np.ndarray  # [K] int: pixels each entity would cover on its own


def distance(e: Entity, rays: Rays) -> tuple[np.ndarray, np.ndarray | None]:
    """Nearest hit of `rays` [N] with entity e -> (t [N], +inf for a miss; which face or part
    was hit [N], what `intersect` needs for the normal)."""
    a = e.arrays
    if e.kind == "sphere":
        (cx, cy, cz), r = a["center"], a["radius"]
        return geo.spheres(rays, cx, cy, cz, r)[:, 0], None
    if e.kind == "box":
        (cx, cy, cz), (hx, hy, hz) = a["center"], a["half_extents"]
        t, face = geo.boxes(rays, cx, cy, cz, hx, hy, hz, a["cos"], a["sin"])
        return t[:, 0], face[:, 0]
    if e.kind == "cylinder":
        (cx, _, cz), r, h = a["base"], a["radius"], a["height"]
        t, top = geo.upright_cylinders(rays, cx, cz, r, h)
        return t[:, 0], top[:, 0]
    j, bs, bu = a["joints"], a["bone_start"], a["bone_axis"]
    t_joint = geo.spheres(rays, j[:, 0], j[:, 1], j[:, 2], a["joint_radii"])  # [N, J]
    t_bone = geo.open_cylinders(rays, bs[:, 0], bs[:, 1], bs[:, 2], bu[:, 0], bu[:, 1],
                                bu[:, 2], a["bone_length"], a["bone_radii"])  # [N, B]
    t_all = np.concatenate([t_joint, t_bone], axis=1)
    part = t_all.argmin(axis=1)  # joints 0..J-1, then bones
    return t_all[np.arange(len(part)), part], part


def intersect(e: Entity, rays: Rays) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Nearest hit of `rays` [N] with entity e -> (t [N], world normal (nx, ny, nz) [N]).

    Normals are computed for the hits only (most rays of a figure's rectangle miss it) and are
    zero elsewhere.
    """
    t, which = distance(e, rays)
    hit = np.flatnonzero(t < geo.INF)
    normal = tuple(np.zeros(len(t)) for _ in range(3))
    if len(hit):
        values = _normals(e, rays.subset(hit), t[hit], None if which is None else which[hit])
        for out, value in zip(normal, values):
            out[hit] = value
    return t, normal


def _normals(e: Entity, rays: Rays, t: np.ndarray, which: np.ndarray | None):
    a = e.arrays
    px, py, pz = rays.ox + t * rays.dx, rays.oy + t * rays.dy, rays.oz + t * rays.dz
    if e.kind == "sphere":
        (cx, cy, cz), r = a["center"], a["radius"]
        return (px - cx) / r, (py - cy) / r, (pz - cz) / r
    if e.kind == "box":
        cos, sin = a["cos"], a["sin"]
        # The face's outward normal points against the ray along that face's axis.
        ldx, ldz = rays.dx * cos - rays.dz * sin, rays.dx * sin + rays.dz * cos
        s = -np.sign(np.choose(which, (ldx, rays.dy, ldz)))
        return (np.choose(which, (s * cos, 0.0, s * sin)), np.where(which == 1, s, 0.0),
                np.choose(which, (-s * sin, 0.0, s * cos)))
    if e.kind == "cylinder":
        (cx, _, cz), r = a["base"], a["radius"]
        return (np.where(which, 0.0, (px - cx) / r), which.astype(np.float64),
                np.where(which, 0.0, (pz - cz) / r))
    # A figure. Sphere part: normal from its centre; bone part: from the nearest axis point.
    j, bs, bu = a["joints"], a["bone_start"], a["bone_axis"]
    n_joints = len(j)
    is_joint = which < n_joints
    k = np.minimum(which, n_joints - 1)
    b = np.maximum(which - n_joints, 0)
    qx, qy, qz = px - bs[b, 0], py - bs[b, 1], pz - bs[b, 2]
    along = np.clip(qx * bu[b, 0] + qy * bu[b, 1] + qz * bu[b, 2], 0.0, a["bone_length"][b])
    nx = np.where(is_joint, px - j[k, 0], qx - along * bu[b, 0])
    ny = np.where(is_joint, py - j[k, 1], qy - along * bu[b, 1])
    nz = np.where(is_joint, pz - j[k, 2], qz - along * bu[b, 2])
    inv = 1.0 / np.sqrt(nx * nx + ny * ny + nz * nz)
    return nx * inv, ny * inv, nz * inv


def pixel_rect(cam: Camera, e: Entity) -> tuple[int, int, int, int]:
    """Rows r0:r1 and columns c0:c1 of the pixels whose centres may see entity e."""
    u0, v0, u1, v1 = cam.project_box(e.lo, e.hi)
    n = cam.resolution
    # Pixel j's centre is j + 0.5; one extra pixel each side absorbs rounding.
    c0, c1 = max(0, math.floor(u0 - 0.5) - 1), min(n, math.ceil(u1 - 0.5) + 2)
    r0, r1 = max(0, math.floor(v0 - 0.5) - 1), min(n, math.ceil(v1 - 0.5) + 2)
    return r0, r1, c0, c1


def cast(cam: Camera, entities: list[Entity]) -> Frame:
    """Primary rays through every pixel: nearest surface, its instance id and normal."""
    rays, _ = cam.rays()
    n = cam.resolution
    t_floor, t_wall = geo.plane_y(rays, 0.0), geo.plane_z(rays, WALL_Z)
    on_floor = t_floor <= t_wall
    t = np.where(on_floor, t_floor, t_wall).reshape(n, n)
    instance = np.where(on_floor, FLOOR_ID, WALL_ID).astype(np.int16).reshape(n, n)
    nx = np.zeros((n, n))
    ny = on_floor.astype(np.float64).reshape(n, n)  # floor (0, 1, 0); wall (0, 0, -1)
    nz = np.where(on_floor, 0.0, -1.0).reshape(n, n)
    grid = [a.reshape(n, n) for a in (rays.dx, rays.dy, rays.dz)]
    silhouette = np.zeros(len(entities), np.int64)
    for k, e in enumerate(entities):
        r0, r1, c0, c1 = pixel_rect(cam, e)
        if r0 >= r1 or c0 >= c1:
            continue
        sub = Rays(rays.ox, rays.oy, rays.oz, *(g[r0:r1, c0:c1].ravel() for g in grid))
        t_e, (ex, ey, ez) = intersect(e, sub)
        silhouette[k] = np.count_nonzero(t_e < geo.INF)
        shape = (r1 - r0, c1 - c0)
        closer = (t_e < t[r0:r1, c0:c1].ravel()).reshape(shape)
        for buffer, value in ((t, t_e), (nx, ex), (ny, ey), (nz, ez)):
            view = buffer[r0:r1, c0:c1]
            view[closer] = value.reshape(shape)[closer]
        instance[r0:r1, c0:c1][closer] = 2 + k
    return Frame(t.ravel(), instance.ravel(), (nx.ravel(), ny.ravel(), nz.ravel()), silhouette)


def shadowed(frame: Frame, rays: Rays, entities: list[Entity], light: Light,
             facing: np.ndarray) -> np.ndarray:
    """[P] bool: the light is blocked. Only pixels with `facing` (n . l > 0) are tested."""
    lx, ly, lz = light.direction
    idx = np.flatnonzero(facing)
    nx, ny, nz = (c[idx] for c in frame.normal)
    t = frame.t[idx]
    ox = rays.ox + t * rays.dx[idx] + SHADOW_OFFSET * nx
    oy = rays.oy + t * rays.dy[idx] + SHADOW_OFFSET * ny
    oz = rays.oz + t * rays.dz[idx] + SHADOW_OFFSET * nz
    inst = frame.instance[idx]
    blocked = np.zeros(len(idx), bool)
    for k, e in enumerate(entities):
        # Ray o + s l passes within R of the bounding centre c, ahead of the origin.
        (cx, cy, cz), radius = e.center, e.bounding_radius
        qx, qy, qz = cx - ox, cy - oy, cz - oz
        s = qx * lx + qy * ly + qz * lz
        near = (s > -radius) & (qx * qx + qy * qy + qz * qz - s * s < radius * radius) & ~blocked
        if e.kind != "person":
            near &= inst != 2 + k  # a convex object cannot shadow its own lit side
        cand = np.flatnonzero(near)
        if len(cand) == 0:
            continue
        one = np.ones(len(cand))
        sub = Rays(ox[cand], oy[cand], oz[cand], lx * one, ly * one, lz * one)
        hit, _ = distance(e, sub)
        blocked[cand[hit < geo.INF]] = True
    out = np.zeros(len(frame.t), bool)
    out[idx] = blocked
    return out


def shade(frame: Frame, cam: Camera, entities: list[Entity], light: Light,
          shadows: bool) -> np.ndarray:
    """Lambert + ambient shading (+ a small highlight on objects) -> rgb uint8 [H, W, 3]."""
    rays, _ = cam.rays()
    n = cam.resolution
    nx, ny, nz = frame.normal
    lx, ly, lz = light.direction
    lambert = np.maximum(nx * lx + ny * ly + nz * lz, 0.0)
    lit = ~shadowed(frame, rays, entities, light, lambert > 0) if shadows else np.ones(n * n, bool)

    # Albedo by instance; the floor gets a 1 m checker from the hit point.
    px = rays.ox + frame.t * rays.dx
    pz = rays.oz + frame.t * rays.dz
    table = np.array([FLOOR_RGB[0], WALL_RGB] + [COLOR_RGB[e.color] for e in entities],
                     np.float64) / 255.0
    albedo = table[frame.instance]  # [P, 3]
    on_floor = frame.instance == FLOOR_ID
    tile_parity = (np.floor(px).astype(np.int64) + np.floor(pz).astype(np.int64)) % 2
    dark_tile = on_floor & (tile_parity == 1)
    albedo[dark_tile] = np.array(FLOOR_RGB[1]) / 255.0

    light_amount = light.ambient + light.diffuse * lambert * lit  # [P]
    # Blinn-Phong: half vector between the light and the direction back to the camera.
    hx, hy, hz = lx - rays.dx, ly - rays.dy, lz - rays.dz
    inv = 1.0 / np.sqrt(hx * hx + hy * hy + hz * hz)
    spec = np.maximum((nx * hx + ny * hy + nz * hz) * inv, 0.0)
    for _ in range(5):  # cos^32 by squaring (np.power may differ between CPU instruction sets)
        spec = spec * spec
    spec = np.where((frame.instance > WALL_ID) & lit & (lambert > 0), SPECULAR * spec, 0.0)
    rgb = albedo * light_amount[:, None] + spec[:, None]
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).reshape(n, n, 3)


def joint_visibility(cam: Camera, entities: list[Entity], figure: Entity) -> np.ndarray:
    """[J] bool: the first surface on the ray from the camera to each joint's centre is the
    joint's own surroundings (within JOINT_SLACK radii in front of its sphere), and the joint
    projects inside the image."""
    a = figure.arrays
    ox, oy, oz = cam.origin
    jx, jy, jz = (a["joints"][:, i] for i in range(3))
    qx, qy, qz = jx - ox, jy - oy, jz - oz
    dist = np.sqrt(qx * qx + qy * qy + qz * qz)
    rays = Rays(ox, oy, oz, qx / dist, qy / dist, qz / dist)
    nearest = np.full(len(dist), geo.INF)
    for e in entities:
        nearest = np.minimum(nearest, distance(e, rays)[0])
    # The first surface may lie up to JOINT_SLACK radii in front of the joint's sphere: where a
    # limb leaves a joint towards the camera, its wall covers the sphere's front, yet what is
    # seen is still the body right at the joint. A limb pointing at the camera (within ~24
    # degrees), another body part or another entity farther in front hides the joint.
    unoccluded = nearest >= dist - (1.0 + JOINT_SLACK) * a["joint_radii"]
    u, v, _ = cam.project(jx, jy, jz)
    n = cam.resolution
    return unoccluded & (u >= 0) & (u < n) & (v >= 0) & (v < n)
