"""Scene composition for synthetic sequences: the cluttered room, the camera trajectory, the
moving occluder, the lighting schedule, and the per-frame rendering that turns them into
images and labels.

World frame: z up, the table top is the plane z = 0, the target rests on it at the origin
(its bounding-box centre above the origin). The camera orbits the target; everything but the
camera and the occluder is static, so the background is one Embree scene built once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from gs2pose_ros.synth.raycast import Body, Light, Surface, cast, pixel_rays, projected_bounds, shade

# --------------------------------------------------------------------------------------------
# Small geometry helpers (numpy, metres)
# --------------------------------------------------------------------------------------------


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """``R_world_cam`` [3, 3] of an optical-frame camera (x right, y down, z forward) at ``eye``
    looking at ``target`` with the image's up towards ``up`` (another up near the poles)."""
    z = np.asarray(target, float) - np.asarray(eye, float)
    z /= np.linalg.norm(z)
    up = np.asarray(up, float)
    if abs(float(z @ up)) > 0.99:
        up = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def rot_axis(axis: Sequence[float], angle: float) -> np.ndarray:
    """Rotation matrix about a unit ``axis`` by ``angle`` (Rodrigues)."""
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def pose(R: np.ndarray, t: Sequence[float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def inv_pose(T: np.ndarray) -> np.ndarray:
    R = T[:3, :3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


def rotation_angle(R: np.ndarray) -> float:
    return math.acos(max(-1.0, min(1.0, (float(np.trace(R)) - 1.0) / 2.0)))


# --------------------------------------------------------------------------------------------
# Procedural textures
# --------------------------------------------------------------------------------------------


def _rand_color(rng: np.random.Generator, sat=(0.4, 1.0), val=(0.35, 1.0)) -> np.ndarray:
    h = rng.random()
    s = rng.uniform(*sat)
    v = rng.uniform(*val)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def random_texture(rng: np.random.Generator) -> Callable:
    """A random procedural texture (stripes, checks, dots or blotches) of the surface point."""
    kind = int(rng.integers(4))
    c1, c2, c3 = _rand_color(rng), _rand_color(rng), _rand_color(rng)
    if kind == 0:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        period = rng.uniform(0.01, 0.035)
        duty = rng.uniform(0.3, 0.7)

        def fn(p, n):
            s = ((p @ axis) / period) % 1.0
            return np.where((s < duty)[:, None], c1, c2)
    elif kind == 1:
        cell = rng.uniform(0.008, 0.03)

        def fn(p, n):
            k = np.floor(p / cell).astype(np.int64).sum(1) % 2
            return np.where((k == 0)[:, None], c1, c2)
    elif kind == 2:
        cell = rng.uniform(0.012, 0.03)
        rad = cell * rng.uniform(0.2, 0.4)

        def fn(p, n):
            q = (p / cell) % 1.0 - 0.5
            return np.where((np.linalg.norm(q, axis=1) * cell < rad)[:, None], c1, c2)
    else:
        freqs = rng.normal(size=(3, 3)) * 40.0
        phases = rng.uniform(0, 2 * math.pi, 3)

        def fn(p, n):
            s = np.sin(p @ freqs.T + phases).sum(1)
            return np.where((s < -0.6)[:, None], c1, np.where((s < 0.6)[:, None], c2, c3))
    return fn


def _wood(rng: np.random.Generator) -> Callable:
    base = np.array([0.66, 0.48, 0.30]) * rng.uniform(0.85, 1.25) + rng.uniform(-0.05, 0.05, 3)
    f = rng.uniform(25, 45)
    plank = rng.uniform(0.12, 0.2)

    def fn(p, n):
        x, y = p[:, 0], p[:, 1]
        grain = np.sin(2 * math.pi * (x * f + 0.6 * np.sin(y * 9.0 + x * 2.0) + 0.25 * np.sin(y * 31.0)))
        c = base[None, :] * (0.82 + 0.12 * grain)[:, None]
        joint = (np.abs(((y / plank) % 1.0) - 0.5) > 0.49)
        c[joint] *= 0.45
        shade_k = 0.9 + 0.1 * np.sin(np.floor(y / plank) * 7.3)
        return np.clip(c * shade_k[:, None], 0, 1)

    return fn


def _wall(rng: np.random.Generator, n_posters: int = 5) -> Callable:
    base = np.array([0.82, 0.80, 0.74]) + rng.uniform(-0.1, 0.05, 3)
    stripe = rng.uniform(0.05, 0.12)
    posters = []
    for _ in range(n_posters):
        w, h = rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.8)
        u0, v0 = rng.uniform(-1.8, 1.8 - w), rng.uniform(-0.2, 1.5 - h)
        posters.append((u0, v0, w, h, _rand_color(rng), random_texture(rng)))

    def fn(p, n):
        # wall-plane coordinates: u along the wall (x or y, whichever varies), v = z
        u = np.where(np.abs(n[:, 0]) > 0.5, p[:, 1], p[:, 0])
        v = p[:, 2]
        c = np.tile(base, (len(p), 1)) * (0.93 + 0.07 * ((u / stripe) % 1.0 < 0.5))[:, None]
        for u0, v0, w, h, frame, tex in posters:
            m = (u >= u0) & (u <= u0 + w) & (v >= v0) & (v <= v0 + h)
            if m.any():
                inner = m & (u >= u0 + 0.03) & (u <= u0 + w - 0.03) & (v >= v0 + 0.03) & (v <= v0 + h - 0.03)
                c[m] = frame
                if inner.any():
                    c[inner] = tex(p[inner] * 0.2, n[inner])
        return c

    return fn


def _tiles(rng: np.random.Generator) -> Callable:
    c1, c2 = _rand_color(rng, (0.0, 0.3), (0.3, 0.7)), _rand_color(rng, (0.0, 0.3), (0.5, 0.9))
    size = rng.uniform(0.25, 0.45)

    def fn(p, n):
        q = p[:, :2] / size
        k = np.floor(q).astype(np.int64).sum(1) % 2
        c = np.where((k == 0)[:, None], c1, c2)
        grout = (np.abs((q % 1.0) - 0.5) > 0.48).any(1)
        c[grout] = 0.25
        return c

    return fn


# --------------------------------------------------------------------------------------------
# Meshes of simple shapes
# --------------------------------------------------------------------------------------------


def box_mesh(size: Sequence[float]):
    """Vertices/faces of an axis-aligned box centred at the origin, one quad per side (flat)."""
    import trimesh

    m = trimesh.creation.box(extents=size)
    return np.asarray(m.vertices), np.asarray(m.faces)


def quad_mesh(corner, e1, e2):
    c = np.asarray(corner, float)
    v = np.array([c, c + e1, c + e1 + e2, c + e2])
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def shape_mesh(kind: str, size: Sequence[float]):
    """A 'box', 'cylinder' (z axis), 'sphere' or 'cone' of extents ``size``, centred."""
    import trimesh

    sx, sy, sz = size
    if kind == "box":
        return box_mesh(size)
    if kind == "cylinder":
        m = trimesh.creation.cylinder(radius=0.5, height=1.0, sections=28)
    elif kind == "cone":
        m = trimesh.creation.cone(radius=0.5, height=1.0, sections=28)
        m.apply_translation([0, 0, -0.5])
    else:
        m = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    v = np.asarray(m.vertices) * np.array([sx, sy, sz])
    return v, np.asarray(m.faces)


# --------------------------------------------------------------------------------------------
# Scene layout
# --------------------------------------------------------------------------------------------


@dataclass
class Layout:
    """The static world: background body (room, table, distractors), the target pose on the
    table, and the occluder body (None without occlusion)."""

    background: Body
    T_world_obj: np.ndarray
    target_centre: np.ndarray  # world position of the target's bounding-box centre
    target_radius: float  # bounding-sphere radius around target_centre
    target_top: float  # highest z of the target
    occluder: Body | None
    occluder_size: np.ndarray
    distractors: int


def build_layout(obj, rng: np.random.Generator, n_distractors: int, camera_height: float | None) -> Layout:
    """Place the target on a textured table in a room, with ``n_distractors`` random shapes, and
    (when ``camera_height`` is given: the highest camera position above the table) an occluder
    tall enough to cross the line of sight from there."""
    yaw = rng.uniform(0, 2 * math.pi)
    T_world_obj = pose(rot_axis([0, 0, 1], yaw), [0.0, 0.0, -obj.bottom_z])
    verts_w = obj.vertices @ T_world_obj[:3, :3].T + T_world_obj[:3, 3]
    centre = 0.5 * (verts_w.min(0) + verts_w.max(0))
    radius = float(np.linalg.norm(verts_w - centre, axis=1).max())
    foot = float(np.linalg.norm(verts_w[:, :2] - centre[:2], axis=1).max())
    top = float(verts_w[:, 2].max())

    surfaces: list[Surface] = []
    # table: a slab 1.6 x 1.1 x 0.04 m, top at z = 0, slightly off-centre
    off = rng.uniform(-0.1, 0.1, 2)
    v, f = box_mesh([1.6, 1.1, 0.04])
    surfaces.append(Surface(v + [off[0], off[1], -0.02], f, color_fn=_wood(rng), specular=0.1, name="table"))
    # room: floor, ceiling, four walls
    R = 2.2
    floor_z, ceil_z = -0.75, 1.9
    v, f = quad_mesh([-R, -R, floor_z], np.array([2 * R, 0, 0]), np.array([0, 2 * R, 0]))
    surfaces.append(Surface(v, f, color_fn=_tiles(rng), name="floor"))
    v, f = quad_mesh([-R, -R, ceil_z], np.array([2 * R, 0, 0]), np.array([0, 2 * R, 0]))
    surfaces.append(Surface(v, f, color_fn=lambda p, n: np.full((len(p), 3), 0.9), name="ceiling"))
    h = np.array([0, 0, ceil_z - floor_z])
    for corner, e1 in (([-R, -R, floor_z], [2 * R, 0, 0]), ([-R, R, floor_z], [2 * R, 0, 0]),
                       ([-R, -R, floor_z], [0, 2 * R, 0]), ([R, -R, floor_z], [0, 2 * R, 0])):
        v, f = quad_mesh(corner, np.array(e1, float), h)
        surfaces.append(Surface(v, f, color_fn=_wall(rng), name="wall"))
    # distractors on the table, away from the target, low enough not to hide it from the
    # camera's elevated view (height <= 0.4 x distance from the target's footprint)
    placed: list[tuple[float, float, float]] = []
    kinds = ("box", "cylinder", "sphere", "cone")
    tries = 0
    while len(placed) < n_distractors and tries < 400:
        tries += 1
        kind = kinds[int(rng.integers(len(kinds)))]
        d = rng.uniform(foot + 0.1, foot + 0.42)
        a = rng.uniform(0, 2 * math.pi)
        fp = rng.uniform(0.03, 0.09)
        x, y = d * math.cos(a), d * math.sin(a)
        size = np.array([fp, fp * rng.uniform(0.6, 1.4), 0.0])
        rad = 0.5 * float(np.linalg.norm(size[:2]))
        gap = d - foot - rad
        hmax = min(0.14, 0.4 * gap)
        if hmax < 0.02 or any(math.hypot(x - px, y - py) < rad + pr + 0.02 for px, py, pr in placed):
            continue
        size[2] = rng.uniform(0.5, 1.0) * hmax
        v, f = shape_mesh(kind, size)
        T = pose(rot_axis([0, 0, 1], rng.uniform(0, 2 * math.pi)), [x, y, size[2] / 2])
        tex = random_texture(rng)
        s = Surface(v, f, color_fn=tex, smooth=kind in ("cylinder", "sphere", "cone"),
                    specular=float(rng.uniform(0, 0.4)), name=f"distractor_{kind}")
        surfaces.append(s.transformed(T))
        placed.append((x, y, rad))
    background = Body(surfaces, name="background")

    occluder = None
    occ_size = np.zeros(3)
    if camera_height is not None:
        w = max(0.03, 0.45 * foot)
        # standing at 45 % of the way to the camera, it must reach the sight line to the top
        height = top + 0.5 * max(camera_height - top, 0.0) + 0.02
        occ_size = np.array([w, w * rng.uniform(0.6, 1.0), max(0.08, height)])
        kind = "box" if rng.random() < 0.5 else "cylinder"
        v, f = shape_mesh(kind, occ_size)
        v = v + [0, 0, occ_size[2] / 2]  # body frame: origin at the middle of its base
        occluder = Body([Surface(v, f, color_fn=random_texture(rng), smooth=kind == "cylinder", specular=0.2,
                                 name="occluder")], name="occluder")
    return Layout(background, T_world_obj, centre, radius, top, occluder, occ_size, len(placed))


# --------------------------------------------------------------------------------------------
# Camera trajectory
# --------------------------------------------------------------------------------------------


@dataclass
class Trajectory:
    """A smooth camera path around the target, evaluated at any (fractional) frame time."""

    centre: np.ndarray
    fps: float
    speed: float  # m/s along the path
    arc_phi: np.ndarray  # dense azimuth samples ...
    arc_len: np.ndarray  # ... and the path length up to each
    path: Callable  # phi -> eye positions [N, 3]
    wander: Callable  # (t_sec, kappa) -> (look-at offsets [N, 3], roll [N])
    kappa: float = 0.0
    leave: Callable | None = None  # t_frames -> yaw away (rad), or None

    def eye(self, tf: np.ndarray) -> np.ndarray:
        s = np.asarray(tf, float) / self.fps * self.speed
        return self.path(np.interp(s, self.arc_len, self.arc_phi))

    def poses(self, tf, with_leave: bool = True, kappa: float | None = None) -> np.ndarray:
        """``T_world_cam`` [N, 4, 4] at frame times ``tf`` (floats)."""
        tf = np.atleast_1d(np.asarray(tf, float))
        eyes = self.eye(tf)
        off, roll = self.wander(tf / self.fps, self.kappa if kappa is None else kappa)
        yaw = self.leave(tf) if (with_leave and self.leave is not None) else np.zeros(len(tf))
        out = np.empty((len(tf), 4, 4))
        for i in range(len(tf)):
            R = look_at(eyes[i], self.centre + off[i]) @ rot_axis([0, 0, 1], roll[i]) @ rot_axis([0, 1, 0], yaw[i])
            out[i] = pose(R, eyes[i])
        return out


def mean_speeds(T_world_cam: np.ndarray, fps: float) -> tuple[float, float]:
    """Mean translation (m/s) and rotation (rad/s) speeds of a pose sequence."""
    if len(T_world_cam) < 2:
        return 0.0, 0.0
    dt = np.linalg.norm(np.diff(T_world_cam[:, :3, 3], axis=0), axis=1)
    da = [rotation_angle(T_world_cam[i, :3, :3].T @ T_world_cam[i + 1, :3, :3]) for i in range(len(T_world_cam) - 1)]
    return float(dt.mean() * fps), float(np.mean(da) * fps)


def build_trajectory(layout: Layout, rng: np.random.Generator, n_frames: int, fps: float, speed: float,
                     rot_speed: float, distance: float, half_fov: float) -> Trajectory:
    """An orbit around the target: azimuth advancing so the camera moves at ``speed`` (m/s),
    elevation and distance drifting smoothly; the gaze wanders around the target with some roll,
    its rate tuned (bisection) so the mean rotation speed is ``rot_speed`` (rad/s) where the
    orbit alone turns slower."""
    c = layout.target_centre
    elev0 = rng.uniform(math.radians(30), math.radians(45))
    d_elev = math.radians(rng.uniform(5, 12))
    k1, k2 = rng.uniform(1.5, 3.0), rng.uniform(1.0, 2.5)
    p1, p2 = rng.uniform(0, 2 * math.pi, 2)
    direction = 1.0 if rng.random() < 0.5 else -1.0
    phi0 = rng.uniform(0, 2 * math.pi)

    def path(phi):
        phi = np.asarray(phi, float)
        u = phi - phi0
        el = np.clip(elev0 + d_elev * np.sin(k1 * u + p1), math.radians(15), math.radians(70))
        r = distance * (1.0 + 0.12 * np.sin(k2 * u + p2))
        return np.stack([c[0] + r * np.cos(el) * np.cos(phi), c[1] + r * np.cos(el) * np.sin(phi),
                         c[2] + r * np.sin(el)], axis=1)

    total = speed * (n_frames + 2) / fps
    span = total / (distance * 0.5) + 0.5  # radians of azimuth enough for the path length
    phis = phi0 + direction * np.linspace(0, span, 20000)
    pts = path(phis)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])

    amp = 0.3 * half_fov * distance  # look-at wander amplitude (m)
    w = 2 * math.pi * rng.uniform(0.08, 0.16, 4)
    ph = rng.uniform(0, 2 * math.pi, 4)
    roll_amp = math.radians(rng.uniform(4, 10))

    def wander(ts, kappa):
        ts = np.asarray(ts, float)
        off = np.stack([amp * np.sin(kappa * w[0] * ts + ph[0]), amp * np.sin(kappa * w[1] * ts + ph[1]),
                        0.5 * amp * np.sin(kappa * w[2] * ts + ph[2])], axis=1)
        return off, roll_amp * np.sin(kappa * w[3] * ts + ph[3])

    traj = Trajectory(c, fps, speed, phis, arc, path, wander)
    tf = np.arange(max(n_frames, 2), dtype=float)
    lo, hi = 0.0, 40.0
    if mean_speeds(traj.poses(tf, False, lo), fps)[1] < rot_speed:
        for _ in range(30):
            mid = 0.5 * (lo + hi)
            if mean_speeds(traj.poses(tf, False, mid), fps)[1] < rot_speed:
                lo = mid
            else:
                hi = mid
    traj.kappa = lo
    return traj


def leave_view_schedule(start: int, length: int, away: float, ramp: int) -> Callable:
    """Yaw (rad) over frame time: 0, a cosine ramp up over ``ramp`` frames ending at ``start``,
    ``away`` for frames ``[start, start + length)``, a ramp back down after."""
    s0, s1 = start - ramp, start + length - 1

    def yaw(tf):
        tf = np.asarray(tf, float)
        out = np.zeros_like(tf)
        up = (tf > s0) & (tf < start)
        out[up] = away * 0.5 * (1 - np.cos(math.pi * (tf[up] - s0) / ramp))
        out[(tf >= start) & (tf <= s1)] = away
        down = (tf > s1) & (tf < s1 + ramp)
        out[down] = away * 0.5 * (1 + np.cos(math.pi * (tf[down] - s1) / ramp))
        return out

    return yaw


# --------------------------------------------------------------------------------------------
# Lighting
# --------------------------------------------------------------------------------------------

_KELVIN = np.array([3000.0, 4000.0, 5000.0, 6500.0, 8000.0])
_TINT = np.array([[1.00, 0.71, 0.42], [1.00, 0.82, 0.64], [1.00, 0.89, 0.80], [1.00, 1.00, 1.00], [0.89, 0.93, 1.00]])


def temperature_tint(kelvin: float) -> np.ndarray:
    """Approximate RGB of a light of colour temperature ``kelvin`` (piecewise linear in mireds
    between blackbody colours), scaled to unit luminance."""
    mired = 1e6 / np.clip(kelvin, _KELVIN[0], _KELVIN[-1])
    m = 1e6 / _KELVIN
    rgb = np.array([np.interp(mired, m[::-1], _TINT[::-1, i]) for i in range(3)])
    return rgb / float(rgb @ np.array([0.299, 0.587, 0.114]))


@dataclass(frozen=True)
class LightSchedule:
    """World-frame lighting over time: a directional light (azimuth, elevation, intensity) and
    ambient, with optional drifts."""

    azimuth0: float
    drift: bool
    temp_drift: bool
    phase: float
    shadows: bool

    def at(self, t_sec: float, R_cam_world: np.ndarray) -> Light:
        az = self.azimuth0 + (math.radians(8.0) * t_sec if self.drift else 0.0)
        el = math.radians(55.0) + (math.radians(15.0) * math.sin(2 * math.pi * t_sec / 9.0 + self.phase) if self.drift else 0.0)
        inten = 0.75 * (1.0 + (0.3 * math.sin(2 * math.pi * t_sec / 7.0 + 2 * self.phase) if self.drift else 0.0))
        amb = 0.4 + (0.06 * math.sin(2 * math.pi * t_sec / 11.0 + self.phase) if self.drift else 0.0)
        kelvin = 5200.0 + (1300.0 * math.sin(2 * math.pi * t_sec / 12.0 + 3 * self.phase) if self.temp_drift else 0.0)
        d_world = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        return Light(tuple(R_cam_world @ d_world), inten, amb, tuple(temperature_tint(kelvin)), self.shadows)


# --------------------------------------------------------------------------------------------
# Rendering one frame
# --------------------------------------------------------------------------------------------


@dataclass
class FrameLabels:
    """Clean per-pixel results of one frame (before the sensor model)."""

    color: np.ndarray  # [H, W, 3] float
    depth: np.ndarray  # [H, W] float, 0 = miss
    albedo: np.ndarray  # [H, W, 3]
    cos_view: np.ndarray  # [H, W]
    mask: np.ndarray  # [H, W] bool: target silhouette alone
    mask_visib: np.ndarray  # [H, W] bool: target is the nearest surface
    px_count_all: int
    bbox_obj: tuple[int, int, int, int]


class FrameRenderer:
    """Renders frames of a fixed camera (K, size) with ``supersample`` x ``supersample`` colour
    rays per pixel; depth and masks come from the pixel-centre rays."""

    #: the full silhouette is counted on a canvas this many image sizes wide/high around the image
    CANVAS = 3

    def __init__(self, K: np.ndarray, width: int, height: int, supersample: int = 1):
        self.K = np.asarray(K, float)
        self.W, self.H = int(width), int(height)
        self.ss = int(supersample)
        self.centre = pixel_rays(self.K, self.W, self.H)[0].reshape(-1, 3)
        if self.ss > 1:
            offs = [((i + 0.5) / self.ss, (j + 0.5) / self.ss) for j in range(self.ss) for i in range(self.ss)]
            self.sub = pixel_rays(self.K, self.W, self.H, offsets=offs).reshape(len(offs), -1, 3)
        else:
            self.sub = None

    def _colour(self, instances, light, background) -> np.ndarray:
        if self.sub is None:
            hits = cast(instances, np.zeros(3), self.centre)
            return shade(instances, hits, self.centre, light, background).color
        acc = np.zeros((len(self.centre), 3))
        for d in self.sub:
            acc += shade(instances, cast(instances, np.zeros(3), d), d, light, background).color
        return acc / len(self.sub)

    def full_silhouette(self, target, T_cam_target, in_image: np.ndarray) -> tuple[int, tuple[int, int, int, int]]:
        """Pixel count and bbox ``(x, y, w, h)`` of the target's silhouette including any part
        outside the image (cast on the part of an enlarged canvas that the target can reach)."""
        W, H = self.W, self.H
        ys, xs = np.nonzero(in_image)
        lo_x, lo_y, hi_x, hi_y = -W * (self.CANVAS - 1) // 2, -H * (self.CANVAS - 1) // 2, W * (self.CANVAS + 1) // 2, H * (self.CANVAS + 1) // 2
        x0, x1, y0, y1 = projected_bounds(target, T_cam_target, self.K, (lo_x, hi_x), (lo_y, hi_y))
        if x1 <= x0 or y1 <= y0 or (x0 >= 0 and y0 >= 0 and x1 <= W and y1 <= H):
            n = int(xs.size)
            if n == 0:
                return 0, (-1, -1, -1, -1)
            return n, (int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min()))
        # cast the canvas region outside the image, in row bands to bound memory
        ext_x, ext_y = [xs], [ys]
        band = max(1, 400_000 // max(1, x1 - x0))
        for yb in range(y0, y1, band):
            hb = min(band, y1 - yb)
            d = pixel_rays(self.K, x1 - x0, hb, x0, yb)[0]
            uu = np.arange(x0, x1)[None, :].repeat(hb, 0)
            vv = np.arange(yb, yb + hb)[:, None].repeat(x1 - x0, 1)
            outside = (uu < 0) | (uu >= W) | (vv < 0) | (vv >= H)
            if not outside.any():
                continue
            hits = cast([(target, T_cam_target)], np.zeros(3), d[outside])
            got = hits.inst >= 0
            ext_x.append(uu[outside][got])
            ext_y.append(vv[outside][got])
        ax, ay = np.concatenate(ext_x), np.concatenate(ext_y)
        if ax.size == 0:
            return 0, (-1, -1, -1, -1)
        return int(ax.size), (int(ax.min()), int(ay.min()), int(ax.max() - ax.min()), int(ay.max() - ay.min()))

    def render(self, target: Body, T_cam_target: np.ndarray, others: Sequence[tuple], light: Light,
               background=(0.0, 0.0, 0.0), blur_instances: Sequence[Sequence[tuple]] = ()) -> FrameLabels:
        """One frame: ``target`` at ``T_cam_target``, ``others`` = [(body, T_cam_body)]. With
        ``blur_instances`` (instance lists at sub-frame times) the colour is their average."""
        H, W = self.H, self.W
        instances = [(target, T_cam_target)] + list(others)
        d = self.centre
        hits = cast(instances, np.zeros(3), d)
        sh = shade(instances, hits, d, light, background)
        mask = np.isfinite(hits.first_t).reshape(H, W)  # the target alone
        mask_visib = (hits.inst == 0).reshape(H, W)
        depth = np.where(hits.inst >= 0, hits.t, 0.0).reshape(H, W)
        if blur_instances:
            color = np.zeros((len(d), 3))
            for inst in blur_instances:
                color += self._colour(inst, light, background)
            color /= len(blur_instances)
        elif self.sub is not None:
            color = self._colour(instances, light, background)
        else:
            color = sh.color
        n_all, bbox = self.full_silhouette(target, T_cam_target, mask)
        return FrameLabels(color.reshape(H, W, 3), depth, sh.albedo.reshape(H, W, 3), sh.cos_view.reshape(H, W),
                           mask, mask_visib, n_all, bbox)


def place_occluder(layout: Layout, eye: np.ndarray, want_occ: float, side: float,
                   visible_fraction: Callable[[np.ndarray], float], base_fraction: float,
                   max_occ: float, fraction: float = 0.45) -> np.ndarray:
    """``T_world_occluder``: standing on the table between the camera at ``eye`` and the target,
    shifted sideways (``side`` = +1 or -1) so that the target's visible fraction drops by about
    ``want_occ`` from ``base_fraction`` (its value without the occluder), but never below
    ``base_fraction - max_occ`` as measured by ``visible_fraction(T_world_occluder)`` (ray
    casting). Bisection on the sideways offset; at rest (``want_occ`` 0) it stands just beside
    the line of sight."""
    c = layout.target_centre
    u = np.array([eye[0] - c[0], eye[1] - c[1], 0.0])
    D = float(np.linalg.norm(u))
    u /= max(D, 1e-9)
    perp = np.array([-u[1], u[0], 0.0])
    half_w = 0.5 * float(np.linalg.norm(layout.occluder_size[:2]))
    foot = layout.target_radius
    dist = max(fraction * D, foot + half_w + 0.015)
    s_max = foot + half_w + 0.02
    R = np.stack([perp, -u, [0.0, 0.0, 1.0]], axis=1)

    def T_at(s):
        return pose(R, np.array([c[0], c[1], 0.0]) + dist * u + side * s * perp)

    if want_occ <= 0 or base_fraction <= 0:
        return T_at(s_max)
    goal = base_fraction - want_occ
    lo, hi = 0.0, s_max  # visible fraction grows with the offset
    if visible_fraction(T_at(lo)) >= goal:
        return T_at(lo)
    for _ in range(10):
        mid = 0.5 * (lo + hi)
        if visible_fraction(T_at(mid)) < goal:
            lo = mid
        else:
            hi = mid
    if visible_fraction(T_at(hi)) < base_fraction - max_occ - 1e-9:
        return T_at(s_max)
    return T_at(hi)


def occlusion_profile(n_frames: int, fps: float, max_occ: float, rng: np.random.Generator) -> np.ndarray:
    """Wanted occlusion per frame: smooth episodes rising to ``max_occ`` (about 1.3 s long,
    every 3 s), none in between."""
    period = 3.0 * fps
    phase = rng.uniform(0, 2 * math.pi)
    t = np.arange(n_frames)
    return max_occ * np.clip(np.sin(2 * math.pi * t / period + phase) * 1.25 - 0.25, 0.0, 1.0)
