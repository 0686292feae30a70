"""Target objects for synthetic data: four built-in procedural objects and coloured mesh files.

Built-in objects are fixed (independent of the seed), in metres, origin at the centre of their
bounding box, z up when standing on a table, coloured per vertex (a fine tessellation, about
2.5 mm, carries the printed patterns), so the rendered images and the exported model ply show
exactly the same surface:

* ``printed_box``  15 x 10 x 6 cm box, each face printed differently (logo, text-like lines,
  blocks, barcode, diagonal stripes): no symmetry.
* ``mug``          body of revolution with a wall, a bottom and a handle, a logo and a half-turn
  band on the body: no symmetry.
* ``can``          cylinder with horizontal colour bands only: continuous symmetry about z
  (``symmetries_continuous: axis [0, 0, 1], offset [0, 0, 0]``, as BOP flags such objects).
* ``toy``          irregular blob with distinct colour patches and two dark dots: no symmetry.

Mesh files (``.ply``/``.obj``/...) keep their own frame (BOP poses refer to it); ``units``
says what their coordinates are in (``mm`` for BOP models). Vertex colours are interpolated; a
UV texture is looked up per hit when rendering and baked to the vertices for the exported ply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gs2pose_ros.errors import ConfigError, DatasetError
from gs2pose_ros.synth.raycast import Surface

BUILTIN_OBJECTS = ("printed_box", "mug", "can", "toy")


@dataclass(eq=False)
class SynthObject:
    """A target object: ``surface`` for rendering (metres, object frame), the per-vertex
    coloured ``vertices``/``faces``/``vertex_colors`` written to the model ply, and BOP
    symmetries (metres; continuous ones as dicts with ``axis``, ``offset``)."""

    name: str
    surface: Surface
    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: np.ndarray  # [V, 3] float in [0, 1]
    symmetries_continuous: list = field(default_factory=list)
    symmetries_discrete: list = field(default_factory=list)

    @property
    def extents(self) -> np.ndarray:
        return self.vertices.max(0) - self.vertices.min(0)

    @property
    def bottom_z(self) -> float:
        """Lowest z of the object: it rests on a table at this height below its origin."""
        return float(self.vertices[:, 2].min())

    def to_trimesh(self):
        """The export mesh (metres) with uint8 RGBA vertex colours."""
        import trimesh

        rgba = np.concatenate([np.round(self.vertex_colors * 255), np.full((len(self.vertices), 1), 255)], 1)
        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=rgba.astype(np.uint8), process=False)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def _grid(origin, e1, e2, n1: int, n2: int):
    """A planar grid of (n1 x n2) quads: vertices origin + a e1 + b e2, a, b in [0, 1]."""
    a = np.linspace(0.0, 1.0, n1 + 1)
    b = np.linspace(0.0, 1.0, n2 + 1)
    A, B = np.meshgrid(a, b, indexing="ij")
    v = np.asarray(origin) + A.reshape(-1, 1) * np.asarray(e1) + B.reshape(-1, 1) * np.asarray(e2)
    i, j = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
    p00 = (i * (n2 + 1) + j).ravel()
    p10 = p00 + (n2 + 1)
    f = np.concatenate([np.stack([p00, p10, p10 + 1], 1), np.stack([p00, p10 + 1, p00 + 1], 1)])
    return v, f, np.stack([A.ravel(), B.ravel()], 1)


def _revolve(r: np.ndarray, z: np.ndarray, nseg: int):
    """Surface of revolution about z of the profile (r[i], z[i]); r == 0 points become one
    vertex (a fan), so no degenerate triangles."""
    verts = []
    rings = []  # per profile point: array of vertex ids (length nseg, or 1 for the axis)
    ang = np.arange(nseg) * (2 * math.pi / nseg)
    n = 0
    for ri, zi in zip(r, z):
        if ri <= 0:
            verts.append(np.array([[0.0, 0.0, zi]]))
            rings.append(np.array([n]))
            n += 1
        else:
            verts.append(np.stack([ri * np.cos(ang), ri * np.sin(ang), np.full(nseg, zi)], 1))
            rings.append(np.arange(n, n + nseg))
            n += nseg
    faces = []
    k = np.arange(nseg)
    k1 = (k + 1) % nseg
    for a, b in zip(rings[:-1], rings[1:]):
        if len(a) == 1 and len(b) == 1:
            continue
        if len(a) == 1:
            faces.append(np.stack([np.full(nseg, a[0]), b[k], b[k1]], 1))
        elif len(b) == 1:
            faces.append(np.stack([a[k], b[0] + 0 * k, a[k1]], 1))
        else:
            faces.append(np.stack([a[k], b[k], b[k1]], 1))
            faces.append(np.stack([a[k], b[k1], a[k1]], 1))
    return np.concatenate(verts), np.concatenate(faces)


def _merge(parts):
    """Concatenate (vertices, faces, colours) parts into one mesh."""
    vs, fs, cs = [], [], []
    n = 0
    for v, f, c in parts:
        vs.append(v)
        fs.append(f + n)
        cs.append(c)
        n += len(v)
    return np.concatenate(vs), np.concatenate(fs), np.concatenate(cs)


def _centre(v: np.ndarray) -> np.ndarray:
    return v - 0.5 * (v.min(0) + v.max(0))


def _hex(c: str) -> np.ndarray:
    c = c.lstrip("#")
    return np.array([int(c[i:i + 2], 16) / 255.0 for i in (0, 2, 4)])


class _Painter:
    """Paints 2-D shapes (in metres of a face/unrolled surface) in order over a base colour."""

    def __init__(self, base: str):
        self.base = _hex(base)
        self.ops: list = []

    def rect(self, x0, y0, x1, y1, col):
        self.ops.append(("rect", (x0, y0, x1, y1), _hex(col)))
        return self

    def circle(self, cx, cy, r, col):
        self.ops.append(("circle", (cx, cy, r), _hex(col)))
        return self

    def triangle(self, p0, p1, p2, col):
        self.ops.append(("tri", (np.array(p0), np.array(p1), np.array(p2)), _hex(col)))
        return self

    def stripes(self, x0, y0, x1, y1, period, width, col, diagonal=True):
        self.ops.append(("stripes", (x0, y0, x1, y1, period, width, diagonal), _hex(col)))
        return self

    def text(self, x0, y0, x1, line_h, n_lines, col, seed, gap=0.004):
        """Rows of dashes of random lengths, like lines of printed text."""
        rng = np.random.default_rng(seed)
        for li in range(n_lines):
            y = y0 + li * line_h * 1.9
            x = x0
            while x < x1:
                w = float(rng.uniform(0.006, 0.022))
                self.rect(x, y, min(x + w, x1), y + line_h, col)
                x += w + gap
        return self

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.tile(self.base, (len(x), 1))
        for kind, p, col in self.ops:
            if kind == "rect":
                m = (x >= p[0]) & (x <= p[2]) & (y >= p[1]) & (y <= p[3])
            elif kind == "circle":
                m = (x - p[0]) ** 2 + (y - p[1]) ** 2 <= p[2] ** 2
            elif kind == "tri":
                a, b, c = p

                def side(u, v):
                    return (v[0] - u[0]) * (y - u[1]) - (v[1] - u[1]) * (x - u[0])

                s1, s2, s3 = side(a, b), side(b, c), side(c, a)
                m = ((s1 >= 0) & (s2 >= 0) & (s3 >= 0)) | ((s1 <= 0) & (s2 <= 0) & (s3 <= 0))
            else:
                x0, y0, x1, y1, period, width, diag = p
                s = (x + y) if diag else x
                m = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1) & ((s % period) < width)
            out[m] = col
        return out


# --------------------------------------------------------------------------------------------
# Built-in objects
# --------------------------------------------------------------------------------------------

_STEP = 0.0025  # vertex spacing of the printed surfaces (m)


def printed_box() -> SynthObject:
    sx, sy, sz = 0.15, 0.10, 0.06
    hx, hy, hz = sx / 2, sy / 2, sz / 2
    top = (_Painter("f2e6c4").circle(0.035, 0.05, 0.024, "d62828").triangle((0.022, 0.040), (0.048, 0.040), (0.035, 0.064), "ffffff")
           .text(0.068, 0.070, 0.140, 0.006, 3, "1d3557", seed=1).rect(0.100, 0.012, 0.138, 0.040, "2a9d8f"))
    bottom = _Painter("fafafa").rect(0.015, 0.015, 0.030, 0.030, "f4a261")
    rng = np.random.default_rng(7)
    x = 0.05
    while x < 0.13:  # barcode
        w = float(rng.choice([0.0025, 0.005, 0.0075]))
        bottom.rect(x, 0.03, x + w, 0.075, "111111")
        x += w + float(rng.choice([0.0025, 0.005]))
    px = (_Painter("1f4e9c").rect(0.0, 0.0, 0.045, 0.028, "ffd166").text(0.052, 0.010, 0.095, 0.005, 4, "ffffff", seed=2))
    nx = _Painter("e76f51")
    for i, col in enumerate(["264653", "e9c46a", "ffffff", "2a9d8f", "8d0801", "ffffff"]):
        cx, cy = 0.012 + (i % 3) * 0.03, 0.012 + (i // 3) * 0.026
        nx.rect(cx, cy, cx + 0.02, cy + 0.017, col)
    py = (_Painter("2d6a4f").rect(0.0, 0.020, 0.15, 0.036, "ffffff").text(0.010, 0.024, 0.140, 0.006, 1, "222222", seed=3)
          .circle(0.125, 0.010, 0.007, "ffd166").text(0.010, 0.044, 0.09, 0.004, 2, "d8f3dc", seed=4))
    ny = (_Painter("6a4c93").stripes(0.0, 0.0, 0.075, 0.06, 0.014, 0.006, "ffca3a")
          .text(0.085, 0.012, 0.145, 0.006, 4, "ffffff", seed=5))
    faces_spec = [  # origin, e1, e2 (the painter's x along e1, y along e2), painter
        ((-hx, -hy, hz), (sx, 0, 0), (0, sy, 0), top),
        ((-hx, hy, -hz), (sx, 0, 0), (0, -sy, 0), bottom),
        ((hx, -hy, -hz), (0, sy, 0), (0, 0, sz), px),
        ((-hx, hy, -hz), (0, -sy, 0), (0, 0, sz), nx),
        ((hx, hy, -hz), (-sx, 0, 0), (0, 0, sz), py),
        ((-hx, -hy, -hz), (sx, 0, 0), (0, 0, sz), ny),
    ]
    parts = []
    for origin, e1, e2, paint in faces_spec:
        l1, l2 = np.linalg.norm(e1), np.linalg.norm(e2)
        v, f, ab = _grid(origin, e1, e2, int(round(l1 / _STEP)), int(round(l2 / _STEP)))
        parts.append((v, f, paint(ab[:, 0] * l1, ab[:, 1] * l2)))
    v, f, c = _merge(parts)
    return _finish("printed_box", v, f, c, smooth=False, specular=0.15)


def mug() -> SynthObject:
    h, r_top, r_bot, wall, base = 0.095, 0.041, 0.038, 0.004, 0.007
    nseg = 160
    zs = np.linspace(-h / 2, h / 2, int(h / 0.002) + 1)
    r_out = r_bot + (r_top - r_bot) * (zs + h / 2) / h
    body = _Painter("f1faee")
    circ = 2 * math.pi * r_top
    # logo on the side facing -y, a half-turn band near the top, text under the logo
    lx = 0.75 * circ
    body.circle(lx, 0.052, 0.020, "e63946").triangle((lx - 0.013, 0.044), (lx + 0.013, 0.044), (lx, 0.066), "1d3557")
    body.rect(0.0, 0.080, 0.5 * circ, 0.090, "457b9d").rect(0.0, 0.072, 0.5 * circ, 0.075, "a8dadc")
    body.text(lx - 0.03, 0.016, lx + 0.03, 0.005, 2, "1d3557", seed=11)
    body.rect(0.15 * circ, 0.02, 0.15 * circ + 0.012, 0.06, "f4a261")

    def body_colour(v):
        ang = np.mod(np.arctan2(v[:, 1], v[:, 0]), 2 * math.pi)
        return body(ang * r_top, v[:, 2] + h / 2)

    v1, f1 = _revolve(np.concatenate([[0.0], r_out]), np.concatenate([[-h / 2], zs]), nseg)  # bottom + outer wall
    c1 = body_colour(v1)
    c1[v1[:, 2] <= -h / 2 + 1e-9] = _hex("c9c9c9")
    zi = np.linspace(h / 2, -h / 2 + base, 24)
    r_in = r_bot - wall + (r_top - r_bot) * (zi + h / 2) / h
    v2, f2 = _revolve(np.concatenate([[r_top], r_in, [0.0]]), np.concatenate([[h / 2], zi, [-h / 2 + base]]), 96)
    c2 = np.tile(_hex("e8e1d5"), (len(v2), 1))
    c2[v2[:, 2] < -h / 2 + base + 1e-6] = _hex("6f4e37")  # a coffee stain at the bottom
    # handle: a tube along a half ellipse in the xz-plane, on the +x side
    n_path, n_tube, tube = 40, 14, 0.0065
    s = np.linspace(-0.5 * math.pi, 0.5 * math.pi, n_path)
    centre = np.stack([r_top - 0.004 + 0.030 * np.cos(s), np.zeros_like(s), 0.032 * np.sin(s)], 1)
    tang = np.stack([-0.030 * np.sin(s), np.zeros_like(s), 0.032 * np.cos(s)], 1)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    nrm = np.cross(tang, [0.0, 1.0, 0.0])
    bin_ = np.tile([0.0, 1.0, 0.0], (n_path, 1))
    phi = np.arange(n_tube) * 2 * math.pi / n_tube
    v3 = (centre[:, None, :] + tube * (np.cos(phi)[None, :, None] * nrm[:, None, :] + np.sin(phi)[None, :, None] * bin_[:, None, :] * 0.8)).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(n_path - 1), np.arange(n_tube), indexing="ij")
    a = (i * n_tube + j).ravel()
    b = (i * n_tube + (j + 1) % n_tube).ravel()
    f3 = np.concatenate([np.stack([a, a + n_tube, b + n_tube], 1), np.stack([a, b + n_tube, b], 1)])
    c3 = np.tile(_hex("1d3557"), (len(v3), 1))
    v, f, c = _merge([(v1, f1, c1), (v2, f2, c2), (v3, f3, c3)])
    return _finish("mug", v, f, c, smooth=True, specular=0.3)


def can() -> SynthObject:
    h, r = 0.115, 0.033
    bands = [(0.0, 0.008, "b0b0b0"), (0.008, 0.040, "c1121f"), (0.040, 0.046, "fdf0d5"), (0.046, 0.080, "c1121f"),
             (0.080, 0.094, "ffb703"), (0.094, 0.107, "003049"), (0.107, 0.115, "b0b0b0")]
    zs = np.linspace(-h / 2, h / 2, int(h / 0.0015) + 1)
    prof_r = np.concatenate([[0.0, 0.4 * r, 0.8 * r, r - 0.002], np.full(len(zs), r), [r - 0.002, 0.8 * r, 0.4 * r, 0.0]])
    prof_z = np.concatenate([np.full(4, -h / 2), zs, np.full(4, h / 2)])
    v, f = _revolve(prof_r, prof_z, 96)
    zz = v[:, 2] + h / 2
    c = np.tile(_hex("b0b0b0"), (len(v), 1))
    for z0, z1, col in bands:
        c[(zz >= z0 - 1e-9) & (zz <= z1 + 1e-9)] = _hex(col)
    rr = np.hypot(v[:, 0], v[:, 1])
    cap = np.abs(np.abs(v[:, 2]) - h / 2) < 1e-9
    c[cap] = _hex("d9d9d9")
    c[cap & (rr > 0.3 * r) & (rr < 0.5 * r)] = _hex("8d99ae")  # a ring on the caps (still symmetric)
    obj = _finish("can", v, f, c, smooth=True, specular=0.5)
    obj.symmetries_continuous = [{"axis": np.array([0.0, 0.0, 1.0]), "offset": np.zeros(3)}]
    return obj


def toy() -> SynthObject:
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=5)
    d = np.asarray(sphere.vertices)
    rng = np.random.default_rng(1234)
    centres = rng.normal(size=(9, 3))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    amp = np.array([0.35, 0.3, 0.25, -0.15, 0.3, 0.2, -0.12, 0.25, 0.18])
    width = rng.uniform(0.08, 0.25, size=9)
    radius = 1.0 + (amp[None, :] * np.exp(-(1.0 - d @ centres.T) / width[None, :])).sum(1)
    v = d * radius[:, None] * np.array([1.0, 0.78, 0.66])
    v = _centre(v)
    v *= 0.12 / np.max(v.max(0) - v.min(0))
    palette = np.array([_hex(x) for x in ["e63946", "2a9d8f", "ffb703", "8338ec", "3a86ff", "fb5607", "06d6a0"]])
    seeds = rng.normal(size=(len(palette), 3))
    seeds /= np.linalg.norm(seeds, axis=1, keepdims=True)
    c = palette[np.argmax(d @ seeds.T, axis=1)]
    for k in (0, 1):  # two dark dots next to the largest bump
        eye = centres[0] + 0.25 * (k * 2 - 1) * np.cross(centres[0], [0.0, 0.0, 1.0])
        eye /= np.linalg.norm(eye)
        c[d @ eye > math.cos(0.12)] = _hex("111111")
    return _finish("toy", v, np.asarray(sphere.faces), c, smooth=True, specular=0.25)


def _finish(name, v, f, c, smooth, specular) -> SynthObject:
    v = _centre(np.asarray(v, dtype=np.float64))
    c = np.clip(np.asarray(c, dtype=np.float64), 0, 1)
    # the surface uses the 8-bit colours of the ply so images and model agree exactly
    c = np.round(c * 255) / 255
    surf = Surface(v, f, vertex_colors=c, smooth=smooth, specular=specular, name=name)
    return SynthObject(name, surf, v, np.asarray(f, dtype=np.int64), c)


_BUILDERS = {"printed_box": printed_box, "mug": mug, "can": can, "toy": toy}


# --------------------------------------------------------------------------------------------
# Mesh files
# --------------------------------------------------------------------------------------------


def load_mesh_object(path: str | Path, units: str = "mm") -> SynthObject:
    """A coloured mesh file as a target object (its own frame kept; ``units`` "mm" or "m")."""
    from gs2pose_ros.mesh import load_mesh

    path = Path(path)
    if units not in ("mm", "m"):
        raise ConfigError(f"object units {units!r}: use 'mm' (BOP models) or 'm'")
    if not path.is_file():
        raise DatasetError(
            f"{path}: mesh file not found; give a built-in object ({', '.join(BUILTIN_OBJECTS)}) or a .ply/.obj path"
        )
    m = load_mesh(path, units=units)  # metres, colours/uv kept
    v = np.asarray(m.vertices, dtype=np.float64)
    f = np.asarray(m.faces, dtype=np.int64)
    ext = float(np.max(v.max(0) - v.min(0)))
    if not (0.005 <= ext <= 2.0):
        raise ConfigError(
            f"{path}: the model is {ext:g} m across with units={units!r}; "
            "set the units option to match the file (mm for BOP models, m otherwise)"
        )
    name = path.stem
    visual = m.visual
    uv = getattr(visual, "uv", None)
    image = None
    if visual.kind == "texture" and uv is not None:
        mat = visual.material
        img = getattr(mat, "image", None) or getattr(mat, "baseColorTexture", None)
        if img is not None:
            image = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if image is not None:
        uv = np.asarray(uv, dtype=np.float64)
        from gs2pose_ros.synth.raycast import bilinear

        vc = bilinear(image, uv)
        surf = Surface(v, f, uv=uv, texture=image, smooth=True, specular=0.1, name=name)
    else:
        if visual.kind in ("vertex", "face"):
            vc = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
        elif visual.kind == "texture":  # a material colour without an image
            vc = np.tile(np.asarray(visual.material.main_color[:3], dtype=np.float64) / 255.0, (len(v), 1))
        else:
            raise DatasetError(
                f"{path}: the mesh has no colours (neither vertex colours nor a UV texture); "
                "the synthetic images need a coloured model"
            )
        surf = Surface(v, f, vertex_colors=vc, smooth=True, specular=0.1, name=name)
    return SynthObject(name, surf, v, f, np.clip(vc, 0, 1))


def make_object(name_or_path: str, units: str = "mm") -> SynthObject:
    """A built-in object by name, or a mesh file by path."""
    if name_or_path in _BUILDERS:
        return _BUILDERS[name_or_path]()
    p = Path(name_or_path)
    if p.suffix.lower() in (".ply", ".obj", ".off", ".stl", ".glb", ".gltf") or p.exists():
        return load_mesh_object(p, units)
    raise ConfigError(
        f"object {name_or_path!r}: not a built-in object ({', '.join(BUILTIN_OBJECTS)}) nor a mesh file path"
    )
