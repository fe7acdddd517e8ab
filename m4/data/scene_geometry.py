"""Exact ray casting for the built-in scenes: the camera and the primitives' intersections.

Everything here is vectorised numpy in float64 and uses only IEEE-exact element-wise operations
(+, -, *, /, sqrt), never BLAS, so a result depends on nothing but its inputs: not on the number
of threads, not on which other rays are cast in the same call.

Frames. The world is metric, y up, the floor is the plane y = 0, the back wall the plane
z = wall_z, and the camera stands at (0, height, 0) looking towards +z, pitched down. The camera
frame follows OpenCV: x right, y down, z forward (along the optical axis). Pixel (row i, col j)
covers [j, j+1) x [i, i+1) in image coordinates (x, y); its ray passes through its centre.

Rays are kept as separate component arrays (`Rays.dx` ...), not [N, 3] arrays: numpy reduces a
length-3 last axis slowly, while whole-array element-wise maths on components is fast.
Intersections return the ray parameter t of the nearest hit in front of the origin, or +inf.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

INF = np.inf
# Hits closer than this (metres) to a ray's origin are ignored, so a shadow ray that starts on a
# surface does not find that surface again.
T_MIN = 1e-6


@dataclasses.dataclass(frozen=True)
class Rays:
    """A bundle of N rays. Origins may be scalars (one shared origin) or [N] arrays."""

    ox: np.ndarray | float
    oy: np.ndarray | float
    oz: np.ndarray | float
    dx: np.ndarray  # [N] unit direction components
    dy: np.ndarray
    dz: np.ndarray

    def subset(self, index) -> "Rays":
        pick = lambda a: a[index] if isinstance(a, np.ndarray) else a  # noqa: E731
        return Rays(pick(self.ox), pick(self.oy), pick(self.oz),
                    self.dx[index], self.dy[index], self.dz[index])

    def column(self) -> "Rays":
        """The same rays shaped [N, 1], to broadcast against K primitives -> [N, K]."""
        col = lambda a: a[:, None] if isinstance(a, np.ndarray) else a  # noqa: E731
        return Rays(col(self.ox), col(self.oy), col(self.oz),
                    self.dx[:, None], self.dy[:, None], self.dz[:, None])


@dataclasses.dataclass(frozen=True)
class Camera:
    """Pinhole camera at (0, height, 0), looking along +z, pitched down by `pitch_deg`."""

    resolution: int
    fov_deg: float = 60.0
    height: float = 1.6
    pitch_deg: float = 20.0

    @functools.cached_property
    def focal(self) -> float:  # pixels
        return 0.5 * self.resolution / math.tan(math.radians(self.fov_deg) / 2)

    @functools.cached_property
    def axes(self) -> tuple[tuple[float, float, float], ...]:
        """The camera's x (right), y (down) and z (forward) axes in world coordinates."""
        s, c = math.sin(math.radians(self.pitch_deg)), math.cos(math.radians(self.pitch_deg))
        return (1.0, 0.0, 0.0), (0.0, -c, -s), (0.0, -s, c)

    @property
    def origin(self) -> tuple[float, float, float]:
        return 0.0, self.height, 0.0

    def to_camera(self, x, y, z):
        """World points -> camera-frame coordinates (metres)."""
        ox, oy, oz = self.origin
        px, py, pz = x - ox, y - oy, z - oz
        (ax, ay, az), (bx, by, bz), (cx, cy, cz) = self.axes
        return (px * ax + py * ay + pz * az, px * bx + py * by + pz * bz,
                px * cx + py * cy + pz * cz)

    def project(self, x, y, z):
        """World points -> (u, v, depth): image coordinates in pixels and z-depth in metres."""
        xc, yc, zc = self.to_camera(np.asarray(x, float), np.asarray(y, float),
                                    np.asarray(z, float))
        half = 0.5 * self.resolution
        return half + self.focal * xc / zc, half + self.focal * yc / zc, zc

    def project_box(self, lo, hi) -> tuple[float, float, float, float]:
        """Image rectangle (u0, v0, u1, v1) in pixels of a world box in front of the camera:
        the bounds of its 8 projected corners. Plain floats: this runs in sampling loops."""
        _, (_, by, bz), (_, cy, cz) = self.axes
        y0, y1 = lo[1] - self.height, hi[1] - self.height
        corners = ((y0, lo[2]), (y0, hi[2]), (y1, lo[2]), (y1, hi[2]))
        inv_z = [1.0 / (y * cy + z * cz) for y, z in corners]
        vs = [(y * by + z * bz) * i for (y, z), i in zip(corners, inv_z)]
        us = [lo[0] * i for i in inv_z] + [hi[0] * i for i in inv_z]
        f, half = self.focal, 0.5 * self.resolution
        return half + f * min(us), half + f * min(vs), half + f * max(us), half + f * max(vs)

    def rays(self) -> tuple[Rays, np.ndarray]:
        """One ray per pixel, row-major, and cos(angle to the optical axis) per ray: [H*W].

        With unit directions the hit parameter t is the distance along the ray, and the z-depth
        is t * cos_axis.
        """
        return _pixel_rays(self)


@functools.lru_cache(maxsize=16)
def _pixel_rays(camera: Camera) -> tuple[Rays, np.ndarray]:
    n = camera.resolution
    centres = (np.arange(n, dtype=np.float64) + 0.5 - 0.5 * n) / camera.focal
    a = np.tile(centres, n)  # x_cam / z_cam per pixel, row-major
    b = np.repeat(centres, n)  # y_cam / z_cam
    inv_len = 1.0 / np.sqrt(a * a + b * b + 1.0)
    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = camera.axes
    dx = (a * ax + b * bx + cx) * inv_len
    dy = (a * ay + b * by + cy) * inv_len
    dz = (a * az + b * bz + cz) * inv_len
    for arr in (dx, dy, dz, inv_len):
        arr.flags.writeable = False  # cached and shared: nobody may modify them
    ox, oy, oz = camera.origin
    return Rays(ox, oy, oz, dx, dy, dz), inv_len


def _nearest(t: np.ndarray, ok: np.ndarray) -> np.ndarray:
    return np.where(ok & (t > T_MIN), t, INF)


def plane_y(rays: Rays, level: float) -> np.ndarray:
    """Horizontal plane y = level, hit from above. -> t [N]"""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (level - rays.oy) / rays.dy
    return _nearest(t, rays.dy < 0)


def plane_z(rays: Rays, level: float) -> np.ndarray:
    """Vertical plane z = level, hit from the camera side. -> t [N]"""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (level - rays.oz) / rays.dz
    return _nearest(t, rays.dz > 0)


def spheres(rays: Rays, cx, cy, cz, radius) -> np.ndarray:
    """Spheres with centres (cx, cy, cz) [K] and radii [K]. -> t [N, K] (outer surface only)."""
    r = rays.column()
    px, py, pz = r.ox - cx, r.oy - cy, r.oz - cz
    b = px * r.dx + py * r.dy + pz * r.dz
    c = px * px + py * py + pz * pz - radius * radius
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    return _nearest(t, disc >= 0)


def open_cylinders(rays: Rays, ax, ay, az, ux, uy, uz, length, radius) -> np.ndarray:
    """Cylinder walls from point a along unit axis u for `length`, no caps. -> t [N, K]

    Used for limbs: their ends are covered by the joint spheres, which together make capsules.
    A cheap test against each cylinder's bounding sphere comes first; the exact test runs only
    on the (ray, cylinder) pairs that pass, a few percent of them for a figure's limbs.
    """
    r = rays.column()
    half = 0.5 * length
    qx, qy, qz = r.ox - (ax + half * ux), r.oy - (ay + half * uy), r.oz - (az + half * uz)
    b = qx * r.dx + qy * r.dy + qz * r.dz
    c = qx * qx + qy * qy + qz * qz - (half * half + radius * radius)
    rows, cols = np.nonzero(b * b >= c)  # [M] pairs whose line meets the bounding sphere
    t = np.full(b.shape, INF)
    if len(rows):
        pick = lambda v: v[rows] if isinstance(v, np.ndarray) else v  # noqa: E731
        t[rows, cols] = _cylinder_walls(
            pick(rays.ox), pick(rays.oy), pick(rays.oz), rays.dx[rows], rays.dy[rows],
            rays.dz[rows], ax[cols], ay[cols], az[cols], ux[cols], uy[cols], uz[cols],
            length[cols], radius[cols])
    return t


def _cylinder_walls(ox, oy, oz, dx, dy, dz, ax, ay, az, ux, uy, uz, length, radius):
    """The exact open-cylinder test, element-wise over matching 1-D arrays. -> t [M]"""
    px, py, pz = ox - ax, oy - ay, oz - az
    d_u = dx * ux + dy * uy + dz * uz
    p_u = px * ux + py * uy + pz * uz
    a = 1.0 - d_u * d_u
    b = (dx * px + dy * py + dz * pz) - p_u * d_u
    c = (px * px + py * py + pz * pz) - p_u * p_u - radius * radius
    disc = b * b - a * c
    ok = (disc >= 0) & (a > 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / np.where(ok, a, 1.0)
    along = p_u + t * d_u
    return _nearest(t, ok & (along >= 0) & (along <= length))


def upright_cylinders(rays: Rays, cx, cz, radius, height) -> tuple[np.ndarray, np.ndarray]:
    """Vertical cylinders standing on the floor (base at y = 0, top cap at y = height).

    -> (t [N, K], top [N, K] bool: the hit is on the top cap).
    """
    r = rays.column()
    px, pz = r.ox - cx, r.oz - cz
    a = r.dx * r.dx + r.dz * r.dz
    b = px * r.dx + pz * r.dz
    c = px * px + pz * pz - radius * radius
    disc = b * b - a * c
    ok = (disc >= 0) & (a > 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / np.where(ok, a, 1.0)
        t_top = (height - r.oy) / r.dy
    y_side = r.oy + t_side * r.dy
    t_side = _nearest(t_side, ok & (y_side >= 0) & (y_side <= height))
    qx, qz = px + t_top * r.dx, pz + t_top * r.dz
    t_top = _nearest(t_top, (r.dy < 0) & (qx * qx + qz * qz <= radius * radius))
    top = t_top < t_side
    return np.where(top, t_top, t_side), top


def boxes(rays: Rays, cx, cy, cz, hx, hy, hz, cos, sin) -> tuple[np.ndarray, np.ndarray]:
    """Boxes with centre c and half extents h, turned about the vertical by an angle given by
    its cosine and sine (computed once, by the caller).

    The box's local x axis is (cos, 0, -sin) and its z axis (sin, 0, cos) in world
    coordinates. -> (t [N, K], face [N, K] int8: local axis 0/1/2 of the face hit).
    """
    r = rays.column()
    px, py, pz = r.ox - cx, r.oy - cy, r.oz - cz
    # Rays in each box's frame (the slab test needs axis-aligned boxes).
    lox, loz = px * cos - pz * sin, px * sin + pz * cos
    ldx, ldz = r.dx * cos - r.dz * sin, r.dx * sin + r.dz * cos
    near, far, face = None, None, None
    for axis, (o, d, h) in enumerate(((lox, ldx, hx), (py, r.dy, hy), (loz, ldz, hz))):
        # A direction component of exactly 0 would divide 0 by 0; a tiny one keeps the slab
        # test exact for any ray that is not parallel to within 1e-300.
        inv = 1.0 / np.where(d == 0, 1e-300, d)
        t1, t2 = (-h - o) * inv, (h - o) * inv
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        if near is None:
            near, far, face = lo, hi, np.zeros(lo.shape, np.int8)
        else:
            face = np.where(lo > near, np.int8(axis), face)
            near, far = np.maximum(near, lo), np.minimum(far, hi)
    return _nearest(near, near <= far), face
