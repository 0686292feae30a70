"""Triangle meshes (object models) via trimesh, in metres inside.

Files (BOP model plys) are in millimetres: :func:`load_mesh` and :func:`write_mesh_ply` convert
at the boundary (``units="mm"``, the default) as ``docs/conventions.md`` requires. Meshes are
loaded with ``process=False`` so vertex order, vertex colours, normals and texture coordinates
stay as in the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import ConfigError, DatasetError, InputError

__all__ = [
    "load_mesh",
    "mesh_diameter",
    "mesh_extents",
    "sample_surface_points",
    "write_mesh_ply",
    "model_info_from_mesh",
    "pca_normals",
    "MeshDepthRenderer",
]

_SCALE = {"mm": 1e-3, "m": 1.0}


def _scale_of(units: str) -> float:
    if units not in _SCALE:
        raise ConfigError(f"mesh units must be 'mm' or 'm', got {units!r}")
    return _SCALE[units]


def _ply_header_counts(path: Path) -> dict[str, int] | None:
    """Element counts declared in a ply header ({'vertex': n, 'face': m}), None if unparsable."""
    counts: dict[str, int] = {}
    try:
        with open(path, "rb") as f:
            if f.readline().strip() != b"ply":
                return None
            for _ in range(10000):
                line = f.readline()
                if not line:
                    return None
                parts = line.split()
                if parts[:1] == [b"end_header"]:
                    return counts
                if len(parts) == 3 and parts[0] == b"element":
                    counts[parts[1].decode("ascii", "replace")] = int(parts[2])
    except (OSError, ValueError):
        return None
    return None


def load_mesh(path: str | Path, units: str = "mm"):
    """Load a ply (ASCII or binary) or obj as a ``trimesh.Trimesh`` in metres.

    ``units``: the file's unit, ``"mm"`` (BOP models) or ``"m"``. Vertex colours, normals and
    textures are kept; vertex order is the file's. DatasetError for a missing, unreadable or
    truncated file, or one without vertices or faces.
    """
    import trimesh

    path = Path(path)
    scale = _scale_of(units)
    if not path.is_file():
        raise DatasetError(f"{path}: the mesh file does not exist")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as e:  # trimesh raises many types for corrupt files
        raise DatasetError(
            f"{path}: cannot read the mesh ({type(e).__name__}: {e}); the file may be truncated "
            "or not a mesh: restore or re-export it"
        ) from None
    if isinstance(loaded, trimesh.Scene):
        geoms = (
            [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)] if loaded.geometry else []
        )
        if not geoms:
            loaded = (
                trimesh.Trimesh() if not loaded.geometry else next(iter(loaded.geometry.values()))
            )
        elif len(geoms) == 1:
            loaded = geoms[0]
        else:
            loaded = trimesh.util.concatenate(geoms)
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))))
    if len(vertices) == 0:
        raise DatasetError(
            f"{path}: the {path.suffix.lstrip('.') or 'mesh'} has no vertices; re-export the model with its vertices and faces"
        )
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise DatasetError(
            f"{path}: the {path.suffix.lstrip('.') or 'mesh'} has {len(vertices)} vertices but no faces "
            "(a point cloud); re-export the model as a triangle mesh"
        )
    mesh = loaded
    if path.suffix.lower() == ".ply":
        declared = _ply_header_counts(path)
        if declared is not None:
            for name, got in (("vertex", len(mesh.vertices)), ("face", len(mesh.faces))):
                if name in declared and declared[name] != got:
                    raise DatasetError(
                        f"{path}: the header declares {declared[name]} {name} elements but "
                        f"{got} were read; the file is truncated or corrupt: restore it"
                    )
    if not np.all(np.isfinite(mesh.vertices)):
        raise DatasetError(f"{path}: some vertex coordinates are NaN or infinite")
    faces = np.asarray(mesh.faces)
    if faces.min() < 0 or faces.max() >= len(mesh.vertices):
        raise DatasetError(f"{path}: face indices out of range (0..{len(mesh.vertices) - 1})")
    if scale != 1.0:
        mesh.apply_scale(scale)
    mesh.metadata["file_path"] = str(path)
    mesh.metadata["file_units"] = units
    return mesh


def _vertices_of(x) -> np.ndarray:
    v = np.asarray(getattr(x, "vertices", x), dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise InputError(f"expected vertices [N, 3] (or a mesh), got shape {v.shape}")
    return v


def _max_pairwise_distance(p: np.ndarray, block_elems: int = 4_000_000) -> float:
    """Exact max pairwise distance of ``p`` [M, 3], in blocks of at most ``block_elems``."""
    m = len(p)
    if m < 2:
        return 0.0
    p = p - p.mean(axis=0)  # centring reduces cancellation in |a|^2 + |b|^2 - 2ab
    if m <= 2000:
        from scipy.spatial.distance import pdist

        return float(pdist(p).max())
    sq = np.einsum("ij,ij->i", p, p)
    best, best_pair = -1.0, (0, 0)
    rows = max(1, block_elems // m)
    for i0 in range(0, m, rows):
        i1 = min(m, i0 + rows)
        # pairs (i, j) with j >= i0 cover every unordered pair once
        d2 = sq[i0:i1, None] + sq[None, i0:] - 2.0 * (p[i0:i1] @ p[i0:].T)
        k = int(np.argmax(d2))
        val = float(d2.flat[k])
        if val > best:
            best, best_pair = val, (i0 + k // d2.shape[1], i0 + k % d2.shape[1])
    a, b = best_pair
    return float(np.linalg.norm(p[a] - p[b]))


def mesh_diameter(vertices) -> float:
    """Largest distance between two vertices (``[N, 3]`` or a mesh; same unit as given).

    Exact: the farthest pair lies on the convex hull, so only hull vertices are compared
    (falls back to all vertices for flat or degenerate sets).
    """
    v = _vertices_of(vertices)
    if len(v) < 2:
        return 0.0
    if not np.all(np.isfinite(v)):
        raise InputError("mesh_diameter: vertices contain NaN or infinite values")
    pts = v
    if len(v) > 4:
        from scipy.spatial import ConvexHull, QhullError

        try:
            pts = v[ConvexHull(v).vertices]
        except (QhullError, ValueError):
            pts = np.unique(v, axis=0)
    return _max_pairwise_distance(pts)


def mesh_extents(vertices) -> tuple[np.ndarray, np.ndarray]:
    """``(min_xyz, size_xyz)`` of the axis-aligned bounding box (``[N, 3]`` or a mesh)."""
    v = _vertices_of(vertices)
    if len(v) == 0:
        raise InputError("mesh_extents: no vertices")
    lo, hi = v.min(axis=0), v.max(axis=0)
    return lo, hi - lo


def sample_surface_points(mesh, n: int, seed: int = 0, return_normals: bool = False):
    """``n`` points uniformly on the surface (area-weighted), deterministic for a given seed.

    Returns ``[n, 3]`` float64 (and the face normals ``[n, 3]`` with ``return_normals``).
    """
    if int(n) < 0:
        raise InputError(f"sample_surface_points: n must be >= 0, got {n}")
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64)
    if len(f) == 0:
        raise InputError("sample_surface_points: the mesh has no faces")
    tri = v[f]  # [F, 3, 3]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = 0.5 * np.linalg.norm(cross, axis=1)
    total = float(area.sum())
    if not total > 0:
        raise InputError("sample_surface_points: the mesh has zero surface area")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(area) / total
    face = np.minimum(np.searchsorted(cdf, rng.random(int(n)), side="right"), len(f) - 1)
    r1, r2 = rng.random(int(n)), rng.random(int(n))
    s = np.sqrt(r1)
    a, b, c = (1.0 - s), s * (1.0 - r2), s * r2
    t = tri[face]
    pts = a[:, None] * t[:, 0] + b[:, None] * t[:, 1] + c[:, None] * t[:, 2]
    if not return_normals:
        return pts
    nrm = cross[face]
    nrm = nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-300)
    return pts, nrm


def _vertex_colors_of(mesh) -> np.ndarray | None:
    """RGBA uint8 per vertex, or None when the mesh has no colour. A texture is sampled at the
    vertices' uv (lossy)."""
    visual = getattr(mesh, "visual", None)
    if visual is None:
        return None
    kind = getattr(visual, "kind", None)
    if kind == "vertex":
        return np.asarray(visual.vertex_colors, dtype=np.uint8)
    if kind == "texture":
        try:
            return np.asarray(visual.to_color().vertex_colors, dtype=np.uint8)
        except Exception:
            return None
    if kind == "face":
        try:
            return np.asarray(visual.to_color().vertex_colors, dtype=np.uint8)  # pragma: no cover
        except Exception:
            return None
    return None


def pca_normals(points: np.ndarray, tree, k: int) -> np.ndarray:
    """Unit normals [N, 3] (sign arbitrary) of a point set [N, 3] on a surface: the direction of
    least spread of each point's ``k`` nearest neighbours (``tree``: a ``scipy.spatial.cKDTree`` of
    ``points``). Wrong across walls thinner than the neighbourhood."""
    k = int(min(k, len(points)))
    _, nn = tree.query(points, k=k)
    nb = points[nn.reshape(len(points), k)]
    c = nb - nb.mean(1, keepdims=True)
    _, vecs = np.linalg.eigh(np.einsum("nki,nkj->nij", c, c))
    return vecs[:, :, 0]  # smallest eigenvalue's eigenvector


def write_mesh_ply(mesh, path: str | Path, units: str = "mm") -> Path:
    """Write a binary little-endian ply: float x, y, z and nx, ny, nz, uchar red, green, blue,
    alpha (when the mesh has colour; a texture is baked to vertex colours), faces as
    ``uchar``-counted ``int`` lists. ``units``: the file's unit (mesh in metres). Vertex and
    face order are kept; same mesh, same bytes."""
    path = Path(path)
    scale = 1.0 / _scale_of(units)
    v = np.asarray(mesh.vertices, dtype=np.float64) * scale
    f = np.asarray(mesh.faces, dtype=np.int64)
    if len(v) == 0 or len(f) == 0:
        raise InputError(f"write_mesh_ply {path}: the mesh has no vertices or no faces")
    if f.shape[1] != 3:
        raise InputError(f"write_mesh_ply {path}: only triangle meshes are supported")
    normals = np.asarray(mesh.vertex_normals, dtype=np.float64)
    colors = _vertex_colors_of(mesh)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")]
    vert = np.zeros(len(v), dtype=np.dtype(fields))
    for i, ax in enumerate("xyz"):
        vert[ax] = v[:, i]
        vert["n" + ax] = normals[:, i]
    if colors is not None:
        if colors.shape[1] == 3:
            colors = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
        for i, ch in enumerate(("red", "green", "blue", "alpha")):
            vert[ch] = colors[:, i]
    face = np.zeros(len(f), dtype=np.dtype([("n", "u1"), ("idx", "<i4", (3,))]))
    face["n"] = 3
    face["idx"] = f
    header = [
        "ply",
        "format binary_little_endian 1.0",
        f"comment gs2pose_ros, units {units}",
        f"element vertex {len(v)}",
    ]
    type_names = {"<f4": "float", "u1": "uchar"}
    header += [f"property {type_names[t]} {name}" for name, t in fields]
    header += [f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "wb") as fh:
            fh.write(("\n".join(header) + "\n").encode("ascii"))
            fh.write(vert.tobytes())
            fh.write(face.tobytes())
    except OSError as e:
        raise DatasetError(f"{path}: cannot write the ply ({e})") from None
    return path


def model_info_from_mesh(
    mesh,
    obj_id: int,
    symmetries_discrete: Iterable[np.ndarray] = (),
    symmetries_continuous: Sequence[dict] = (),
):
    """A :class:`gs2pose_ros.bop.ModelInfo` (metres) from a mesh in metres: diameter over the
    vertices (as BOP), bounding box; symmetries as given (4x4 with t in m; dicts with ``axis``
    and ``offset`` in m)."""
    from .bop import ModelInfo, _rotation_problem

    v = _vertices_of(mesh)
    lo, size = mesh_extents(v)
    discrete = []
    for k, S in enumerate(symmetries_discrete):
        S = np.asarray(S, dtype=np.float64)
        if S.shape != (4, 4) or _rotation_problem(S[:3, :3], 1e-6) is not None:
            raise InputError(
                f"model_info_from_mesh: symmetries_discrete[{k}] must be a 4x4 rigid transform"
            )
        discrete.append(S.copy())
    continuous = []
    for k, s in enumerate(symmetries_continuous):
        try:
            axis = np.asarray(s["axis"], dtype=np.float64).reshape(3)
            offset = np.asarray(s.get("offset", np.zeros(3)), dtype=np.float64).reshape(3)
        except (KeyError, TypeError, ValueError):
            raise InputError(
                f"model_info_from_mesh: symmetries_continuous[{k}] must be a dict with axis [3] and offset [3]"
            ) from None
        norm = float(np.linalg.norm(axis))
        if not norm > 0:
            raise InputError(f"model_info_from_mesh: symmetries_continuous[{k}]: zero axis")
        continuous.append({"axis": axis / norm, "offset": offset})
    return ModelInfo(int(obj_id), mesh_diameter(v), lo, size, discrete, continuous)


def near_symmetry_axes(points: np.ndarray, diameter: float, angle_deg: float = 90.0, quantile: float = 0.8,
                       tolerance: float = 0.03, max_points: int = 1500) -> list[tuple[np.ndarray, np.ndarray]]:
    """Axes about which most of an object's shape turns into itself: ``[(direction [3], point [3])]``
    in the object frame, candidates the three frame axes.

    An axis counts when, after turning the ``[N, 3]`` points ``angle_deg`` about it, the
    ``quantile`` of their nearest-neighbour distances to the unturned points stays under
    ``tolerance * diameter``: a mug's body counts with its handle (a fifth of the points or less)
    not matching. The axis position in the plane across it is searched (Nelder-Mead from five
    starts): a mug's body axis lies 16 mm beside the centre of its bounding box, which includes
    the handle. Hand-written: no library finds approximate rotational symmetries of a point set.
    """
    import cv2
    from scipy.optimize import minimize
    from scipy.spatial import cKDTree

    full = np.asarray(points, dtype=np.float64)
    tree = cKDTree(full)  # all points: a sparser reference would inflate the distances
    P = full[np.random.default_rng(0).choice(len(full), max_points, replace=False)] if len(full) > max_points else full
    centre = 0.5 * (full.min(0) + full.max(0))
    step = 0.1 * float(diameter)
    axes = []
    for k in range(3):
        e = np.eye(3)[k]
        u, v = np.eye(3)[(k + 1) % 3], np.eye(3)[(k + 2) % 3]
        R = cv2.Rodrigues(e * np.radians(angle_deg))[0]

        def spread(offset):
            c = centre + offset[0] * u + offset[1] * v
            return float(np.quantile(tree.query((P - c) @ R.T + c)[0], quantile))

        starts = ([0.0, 0.0], [step, 0.0], [-step, 0.0], [0.0, step], [0.0, -step])
        best = min((minimize(spread, x0, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-5})
                    for x0 in starts), key=lambda r: r.fun)
        if best.fun < tolerance * diameter:
            axes.append((e, centre + best.x[0] * u + best.x[1] * v))
    return axes


class MeshDepthRenderer:
    """Depth of a triangle mesh at a pose, for VSD (:func:`gs2pose_ros.metrics.vsd`).

    Ray casts with the generator's Embree caster (``synth.raycast``): one ray per pixel centre,
    only over the bounding box of the projected mesh (clipped to the image), so a small object in a
    large frame costs little. The Embree scene is built once per mesh.

    Example::

        r = MeshDepthRenderer(mesh.vertices, mesh.faces)        # metres, model frame
        depth = r.render(T_cam_obj, K, 640, 480)                # [480, 640] float64, 0 = no surface
    """

    def __init__(self, vertices, faces):
        from gs2pose_ros.synth.raycast import Body, Surface

        v = np.asarray(vertices, dtype=np.float64)
        f = np.asarray(faces, dtype=np.int64)
        self._body = Body([Surface(v, f, vertex_colors=np.zeros_like(v))], name="model")

    def render(self, T_cam_obj, K, width: int, height: int) -> np.ndarray:
        """[height, width] camera depth (z, metres) of the nearest surface, 0 where there is none."""
        from gs2pose_ros.synth.raycast import cast, pixel_rays, projected_bounds

        T = np.asarray(T_cam_obj, dtype=np.float64)
        K = np.asarray(K, dtype=np.float64)
        depth = np.zeros((height, width))
        # the box's projection bounds the mesh's: cast over that rectangle only
        x0, x1, y0, y1 = projected_bounds(self._body, T, K, (0, width), (0, height))
        if x1 <= x0 or y1 <= y0:
            return depth
        dirs = pixel_rays(K, x1 - x0, y1 - y0, x0, y0)[0].reshape(-1, 3)
        hits = cast([(self._body, T)], np.zeros(3), dirs)
        t = np.where(np.isfinite(hits.t), hits.t, 0.0)
        depth[y0:y1, x0:x1] = t.reshape(y1 - y0, x1 - x0)
        return depth
