"""A small CPU ray caster for synthetic data: Embree (via ``embreex``) for the intersections,
numpy for the shading. Independent of the project's Gaussian renderer by design.

Model:

* A :class:`Surface` is a triangle mesh in its own frame with one material: per-vertex colours
  (barycentric interpolation), a UV texture (bilinear lookup), or a procedural colour function
  of the surface-frame point (crisp patterns on big planes without millions of triangles).
* A :class:`Body` is a rigid group of surfaces with one Embree scene, built once. Bodies move
  rigidly: each frame gives every body a pose ``T_cam_body`` and the rays are transformed into
  the body's frame, so nothing is rebuilt per frame. Rigid transforms keep direction lengths,
  so the hit distance ``t`` along a ray ``(x, y, 1)`` is the camera depth ``z`` in every frame.
* :meth:`RayCaster.cast` returns, per ray, the nearest hit over all instances: its depth, the
  instance index and the surface/triangle/barycentrics, from which masks (instance ids, never
  colours), albedo, normals and shading follow.

Pixel rays go through pixel centres ``(u + 0.5, v + 0.5)`` (docs/conventions.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from gs2pose_ros.errors import ConfigError

ColorFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``fn(points [N, 3] surface frame, normals [N, 3] surface frame) -> albedo [N, 3] in [0, 1]``."""

_MISS = np.float32(1e30)


@dataclass(eq=False)
class Surface:
    """A triangle mesh (metres, its own frame) with one material.

    Exactly one of ``vertex_colors`` ([V, 3] float in [0, 1]), ``uv`` + ``texture`` ([V, 2] with
    v up, [h, w, 3] float in [0, 1]) or ``color_fn`` gives the albedo. ``smooth``: shade with
    interpolated vertex normals (else the flat face normal). ``specular``: Blinn-Phong weight.
    """

    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: np.ndarray | None = None
    uv: np.ndarray | None = None
    texture: np.ndarray | None = None
    color_fn: ColorFn | None = None
    smooth: bool = False
    specular: float = 0.0
    name: str = ""
    face_normals: np.ndarray = field(init=False, repr=False)
    vertex_normals: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float64)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3 or self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ConfigError(f"Surface {self.name!r}: vertices must be [V, 3] and faces [F, 3]")
        n_mat = sum(x is not None for x in (self.vertex_colors, self.texture, self.color_fn))
        if n_mat != 1:
            raise ConfigError(f"Surface {self.name!r}: give exactly one of vertex_colors, uv+texture, color_fn")
        if self.texture is not None and self.uv is None:
            raise ConfigError(f"Surface {self.name!r}: a texture needs per-vertex uv")
        if self.vertex_colors is not None:
            self.vertex_colors = np.asarray(self.vertex_colors, dtype=np.float32)[:, :3]
        if self.texture is not None:
            self.texture = np.asarray(self.texture, dtype=np.float32)[:, :, :3]
            self.uv = np.asarray(self.uv, dtype=np.float64)
        tri = self.vertices[self.faces]
        fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        area2 = np.linalg.norm(fn, axis=1, keepdims=True)
        self.face_normals = fn / np.maximum(area2, 1e-20)
        vn = np.zeros_like(self.vertices)
        for k in range(3):  # area-weighted vertex normals
            np.add.at(vn, self.faces[:, k], fn)
        self.vertex_normals = vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-20)

    def transformed(self, T: np.ndarray) -> "Surface":
        """A copy with vertices mapped by the 4x4 ``T``; a procedural colour still sees the
        original frame."""
        T = np.asarray(T, dtype=np.float64)
        fn = self.color_fn
        if fn is not None:
            Ti = np.linalg.inv(T)

            def fn(p, n, _f=self.color_fn, _Ti=Ti):
                return _f(p @ _Ti[:3, :3].T + _Ti[:3, 3], n @ _Ti[:3, :3].T)

        return Surface(self.vertices @ T[:3, :3].T + T[:3, 3], self.faces, self.vertex_colors, self.uv,
                       self.texture, fn, self.smooth, self.specular, self.name)

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])

    def albedo(self, prim: np.ndarray, bu: np.ndarray, bv: np.ndarray) -> np.ndarray:
        """Albedo [N, 3] at hits given as triangle ids and Embree barycentrics
        (hit = (1-u-v) v0 + u v1 + v v2)."""
        w = np.stack([1.0 - bu - bv, bu, bv], axis=1)[:, :, None]  # [N, 3, 1]
        f = self.faces[prim]
        if self.vertex_colors is not None:
            return np.clip((self.vertex_colors[f] * w).sum(1), 0.0, 1.0)
        if self.texture is not None:
            uv = (self.uv[f] * w).sum(1)
            return bilinear(self.texture, uv)
        p = (self.vertices[f] * w).sum(1)
        return np.clip(np.asarray(self.color_fn(p, self.face_normals[prim]), dtype=np.float64), 0.0, 1.0)

    def normals(self, prim: np.ndarray, bu: np.ndarray, bv: np.ndarray) -> np.ndarray:
        """Shading normals [N, 3] in the surface frame."""
        if not self.smooth:
            return self.face_normals[prim]
        w = np.stack([1.0 - bu - bv, bu, bv], axis=1)[:, :, None]
        n = (self.vertex_normals[self.faces[prim]] * w).sum(1)
        return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``image`` [h, w, C] at texture coordinates ``uv`` [N, 2] (u right,
    v up, wrapping), as OBJ/trimesh define them."""
    h, w = image.shape[:2]
    x = (uv[:, 0] % 1.0) * w - 0.5
    y = (1.0 - (uv[:, 1] % 1.0)) * h - 0.5
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = (x - x0)[:, None]
    fy = (y - y0)[:, None]
    x0 = x0.astype(np.int64) % w
    y0 = y0.astype(np.int64) % h
    x1 = (x0 + 1) % w
    y1 = (y0 + 1) % h
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bot = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bot * fy


class Body:
    """A rigid group of surfaces (given in the body frame) with one Embree scene built once."""

    def __init__(self, surfaces: Sequence[Surface], name: str = ""):
        from embreex import rtcore_scene as rtcs
        from embreex.mesh_construction import TriangleMesh

        self.surfaces = list(surfaces)
        if not self.surfaces:
            raise ConfigError(f"Body {name!r}: needs at least one surface")
        self.name = name
        self._scene = rtcs.EmbreeScene()
        for s in self.surfaces:  # geomID = index in self.surfaces
            TriangleMesh(self._scene, s.vertices.astype(np.float32), s.faces.astype(np.int32))
        allv = np.concatenate([s.vertices for s in self.surfaces])
        self.bounds = np.stack([allv.min(0), allv.max(0)])
        self.n_faces = sum(s.n_faces for s in self.surfaces)

    def corners(self) -> np.ndarray:
        """The 8 corners [8, 3] of the body-frame bounding box."""
        lo, hi = self.bounds
        return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])

    def intersect(self, origins: np.ndarray, dirs: np.ndarray) -> dict:
        """Embree first hits for rays in the body frame (float32 [N, 3] each)."""
        return self._scene.run(np.ascontiguousarray(origins, dtype=np.float32),
                               np.ascontiguousarray(dirs, dtype=np.float32), output=1)

    def occluded(self, origins: np.ndarray, dirs: np.ndarray, tfar: float) -> np.ndarray:
        """Bool [N]: something of this body lies along the ray within ``(0, tfar)``."""
        dists = np.full(len(origins), tfar, dtype=np.float32)
        res = self._scene.run(np.ascontiguousarray(origins, dtype=np.float32),
                              np.ascontiguousarray(dirs, dtype=np.float32), dists=dists, query="OCCLUDED")
        return np.asarray(res) != -1


@dataclass
class Hits:
    """Nearest hits of N rays: ``t`` (camera depth for rays with d_z = 1; inf = miss),
    ``inst`` (index into the instance list, -1 = miss), ``geom`` (surface index in the body),
    ``prim`` (triangle), ``u``, ``v`` (Embree barycentrics)."""

    t: np.ndarray
    inst: np.ndarray
    geom: np.ndarray
    prim: np.ndarray
    u: np.ndarray
    v: np.ndarray
    first_t: np.ndarray | None = None  #: hit depth of instance 0 alone (inf = miss)

    @staticmethod
    def empty(n: int) -> "Hits":
        return Hits(np.full(n, np.inf), np.full(n, -1, np.int32), np.full(n, -1, np.int32),
                    np.full(n, -1, np.int32), np.zeros(n, np.float32), np.zeros(n, np.float32))


Instance = tuple  # (Body, T_cam_body 4x4)


def _to_body(T_cam_body: np.ndarray, origins_cam: np.ndarray, dirs_cam: np.ndarray):
    """Rays into the body frame: ``x_body = R^T (x_cam - t)``; a single origin [3] stays one
    point (broadcast, not copied)."""
    R = T_cam_body[:3, :3]
    t = T_cam_body[:3, 3]
    o = (np.asarray(origins_cam, dtype=np.float64) - t) @ R
    if o.ndim == 1:
        o = np.broadcast_to(o.astype(np.float32), dirs_cam.shape)
    return o, dirs_cam @ R


def cast(instances: Sequence[Instance], origins: np.ndarray, dirs: np.ndarray) -> Hits:
    """Nearest hits of camera-frame rays (``origins`` [N, 3] or one point [3]) over all
    ``(body, T_cam_body)`` instances."""
    n = len(dirs)
    hits = Hits.empty(n)
    if n == 0:
        return hits
    for k, (body, T) in enumerate(instances):
        ob, db = _to_body(np.asarray(T, dtype=np.float64), origins, dirs)
        r = body.intersect(ob, db)
        prim = r["primID"]
        tk = np.where(prim >= 0, r["tfar"], np.inf)
        closer = tk < hits.t
        if k == 0:
            hits.t = tk.astype(np.float64)
            hits.first_t = hits.t.copy()
            hits.inst[prim >= 0] = 0
            hits.geom, hits.prim, hits.u, hits.v = r["geomID"], prim, r["u"], r["v"]
        elif closer.any():
            hits.t[closer] = tk[closer]
            hits.inst[closer] = k
            hits.geom[closer] = r["geomID"][closer]
            hits.prim[closer] = prim[closer]
            hits.u[closer] = r["u"][closer]
            hits.v[closer] = r["v"][closer]
    return hits


def projected_bounds(body: Body, T_cam_body: np.ndarray, K: np.ndarray, x_range: tuple[int, int],
                     y_range: tuple[int, int], near: float = 1e-3) -> tuple[int, int, int, int]:
    """Pixels ``[x0, x1) x [y0, y1)`` that the body's projected bounding box can cover, clipped
    to ``x_range`` x ``y_range`` (the pixel centres past ``ceil`` of the box's extent miss it):
    ``(x0, x1, y0, y1)``; empty (all 0) when the box lies behind ``near``, the whole ranges when it
    straddles it (its projection is unbounded)."""
    c = body.corners() @ np.asarray(T_cam_body, dtype=np.float64)[:3, :3].T + np.asarray(T_cam_body)[:3, 3]
    if np.all(c[:, 2] > near):
        u = K[0, 0] * c[:, 0] / c[:, 2] + K[0, 2]
        v = K[1, 1] * c[:, 1] / c[:, 2] + K[1, 2]
        return (max(x_range[0], int(np.floor(u.min()))), min(x_range[1], int(np.ceil(u.max()))),
                max(y_range[0], int(np.floor(v.min()))), min(y_range[1], int(np.ceil(v.max()))))
    if np.all(c[:, 2] <= near):
        return 0, 0, 0, 0
    return x_range[0], x_range[1], y_range[0], y_range[1]


def pixel_rays(K: np.ndarray, width: int, height: int, x0: int = 0, y0: int = 0,
               offsets: Sequence[tuple[float, float]] = ((0.5, 0.5),)) -> np.ndarray:
    """Camera-frame ray directions ``(x, y, 1)`` [len(offsets), h, w, 3] through the points
    ``(u + ou, v + ov)`` of the pixels ``u in [x0, x0 + width)``, ``v in [y0, y0 + height)``."""
    K = np.asarray(K, dtype=np.float64)
    us = np.arange(x0, x0 + width, dtype=np.float64)
    vs = np.arange(y0, y0 + height, dtype=np.float64)
    out = np.empty((len(offsets), height, width, 3))
    for i, (ou, ov) in enumerate(offsets):
        out[i, :, :, 0] = ((us + ou - K[0, 2]) / K[0, 0])[None, :]
        out[i, :, :, 1] = ((vs + ov - K[1, 2]) / K[1, 1])[:, None]
        out[i, :, :, 2] = 1.0
    return out


@dataclass(frozen=True)
class Light:
    """Shading for one frame: ``ambient`` and a directional light of ``intensity`` coming from
    ``direction`` (unit vector towards the light, camera frame), all tinted by ``color``."""

    direction: tuple[float, float, float]
    intensity: float = 0.7
    ambient: float = 0.35
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shadows: bool = True


@dataclass
class Shaded:
    """Per-ray shading results: colour [N, 3] (linear, may exceed 1), albedo [N, 3], and the
    |cos| between the geometric normal and the ray (for the sensor's grazing-angle dropout)."""

    color: np.ndarray
    albedo: np.ndarray
    cos_view: np.ndarray


def shade(instances: Sequence[Instance], hits: Hits, dirs: np.ndarray, light: Light,
          background: Sequence[float] = (0.0, 0.0, 0.0)) -> Shaded:
    """Lambert + weak Blinn-Phong shading of the hits (camera frame), with optional hard
    shadows from the directional light (shadow rays against every instance)."""
    n = len(dirs)
    color = np.empty((n, 3))
    color[:] = np.asarray(background, dtype=np.float64)
    albedo = np.zeros((n, 3))
    cos_view = np.zeros(n)
    hit = hits.inst >= 0
    if not hit.any():
        return Shaded(color, albedo, cos_view)
    idx = np.nonzero(hit)[0]
    normals = np.zeros((len(idx), 3))
    geo_n = np.zeros((len(idx), 3))
    spec_w = np.zeros(len(idx))
    key = hits.inst[idx].astype(np.int64) * 65536 + hits.geom[idx]
    order = np.argsort(key, kind="stable")
    idx = idx[order]
    key = key[order]
    starts = np.flatnonzero(np.diff(key)) + 1
    bounds = np.concatenate([[0], starts, [len(key)]])
    alb = np.empty((len(idx), 3))
    for a, b in zip(bounds[:-1], bounds[1:]):
        kv = int(key[a])
        ii = idx[a:b]
        body, T = instances[kv // 65536]
        surf = body.surfaces[kv % 65536]
        R = np.asarray(T, dtype=np.float64)[:3, :3]
        prim, bu, bv = hits.prim[ii], hits.u[ii].astype(np.float64), hits.v[ii].astype(np.float64)
        alb[a:b] = surf.albedo(prim, bu, bv)
        normals[a:b] = surf.normals(prim, bu, bv) @ R.T
        geo_n[a:b] = surf.face_normals[prim] @ R.T
        spec_w[a:b] = surf.specular
    albedo[idx] = alb
    d = dirs[idx] / np.linalg.norm(dirs[idx], axis=1, keepdims=True)
    # face the normals towards the viewer (meshes may have either winding, planes two sides)
    flip = np.sum(geo_n * d, axis=1) > 0
    geo_n[flip] *= -1
    normals[np.sum(normals * d, axis=1) > 0] *= -1
    cos_view[idx] = np.abs(np.sum(geo_n * d, axis=1))
    L = np.asarray(light.direction, dtype=np.float64)
    L = L / np.linalg.norm(L)
    ndl = np.clip(normals @ L, 0.0, None)
    lit = ndl > 0
    if light.shadows and lit.any():
        pts = hits.t[idx][:, None] * dirs[idx]
        li = np.nonzero(lit)[0]
        origin = pts[li] + geo_n[li] * 1e-4 + L * 1e-4
        blocked = np.zeros(len(li), dtype=bool)
        for body, T in instances:
            todo = ~blocked
            if not todo.any():
                break
            ob, db = _to_body(np.asarray(T, dtype=np.float64), origin[todo], np.broadcast_to(L, (int(todo.sum()), 3)))
            blocked[np.nonzero(todo)[0][body.occluded(ob, db, 1e3)]] = True
        ndl[li[blocked]] = 0.0
    h = L - d
    h /= np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
    spec = spec_w * np.clip(np.sum(normals * h, axis=1), 0.0, None) ** 40 * (ndl > 0)
    tint = np.asarray(light.color, dtype=np.float64)
    c = albedo[idx] * (light.ambient + light.intensity * ndl)[:, None] + (light.intensity * spec)[:, None]
    color[idx] = c * tint
    return Shaded(color, albedo, cos_view)
