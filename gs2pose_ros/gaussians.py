"""3D Gaussian object models: the tensor container, ply/json files, NOCS colours, spherical harmonics.

A model lives in the *object frame*, in metres (docs/conventions.md). Its tensors are the raw,
unconstrained parameters that 3DGS optimises, so a reconstruction or refinement loop can hand them
straight to an optimiser:

========================  ==========  ==========================================================
field                     shape       meaning (activation applied on use)
========================  ==========  ==========================================================
``means``                 [N, 3]      centres, metres
``quats``                 [N, 4]      rotations, ``w, x, y, z``, *not* normalised (normalised on use)
``log_scales``            [N, 3]      ``scales = exp(log_scales)``, metres (standard deviations)
``opacity_logits``        [N]         ``opacities = sigmoid(opacity_logits)``
``sh``                    [N, K, 3]   spherical-harmonics coefficients, ``K = (degree + 1)**2``;
                                      ``sh[:, 0]`` is 3DGS's ``f_dc``, colour = ``0.5 + C0 * f_dc``
                                      for a view-independent (degree 0) model
========================  ==========  ==========================================================

Files: the standard binary ply of the reference 3DGS code (``x y z nx ny nz f_dc_0..2 f_rest_*
opacity scale_0..2 rot_0..3``, ``rot_0`` = w, ``f_rest`` channel-major), plus the object's
:class:`ObjectMetadata` in a plain JSON file beside it (``<model>.json``). Reading never executes
code from a file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from gs2pose_ros.errors import ModelFileError

__all__ = [
    "GaussianModel",
    "ObjectMetadata",
    "read_gaussian_ply",
    "write_gaussian_ply",
    "metadata_path",
    "read_object_metadata",
    "write_object_metadata",
    "nocs_colors",
    "eval_sh",
    "sh_to_rgb",
    "rgb_to_sh",
    "SH_C0",
    "procedural_box_model",
]

#: Zeroth-order real SH basis constant, ``1 / (2 sqrt(pi))``.
SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
          0.5462742152960396)
_SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
          -0.4570457994644658, 1.445305721320277, -0.5900435899266435)

TENSOR_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")


def sh_to_rgb(f_dc):
    """Colour of a degree-0 SH coefficient: ``0.5 + C0 * f_dc`` (3DGS's convention)."""
    return 0.5 + SH_C0 * f_dc


def rgb_to_sh(rgb):
    """Inverse of :func:`sh_to_rgb`: the ``f_dc`` coefficient that renders as colour ``rgb``."""
    return (rgb - 0.5) / SH_C0


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


@dataclass
class GaussianModel:
    """A set of 3D Gaussians in the object frame (metres); raw parameters, see the module docstring.

    Every tensor field shares one device and dtype. The class is a plain container: it holds no
    optimiser state and does no rendering (see :func:`gs2pose_ros.render.render`).

    Example:
        >>> m = GaussianModel.from_points(torch.zeros(4, 3), colors=torch.full((4, 3), 0.5),
        ...                               scale=0.01)
        >>> m.num_gaussians, m.sh_degree, tuple(m.sh.shape)
        (4, 0, (4, 1, 3))
    """

    means: torch.Tensor
    quats: torch.Tensor
    log_scales: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0] if self.means.dim() == 2 else -1
        expected = {
            "means": (n, 3),
            "quats": (n, 4),
            "log_scales": (n, 3),
            "opacity_logits": (n,),
        }
        for name, shape in expected.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or n < 0:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"GaussianModel.{name}: expected shape {shape} (N from means "
                                 f"[N, 3]), got {got}")
        sh = self.sh
        if not isinstance(sh, torch.Tensor) or sh.dim() != 3 or sh.shape[0] != n or sh.shape[2] != 3:
            got = tuple(sh.shape) if isinstance(sh, torch.Tensor) else type(sh).__name__
            raise ValueError(f"GaussianModel.sh: expected shape [N, K, 3], got {got}")
        if _sh_degree_of(sh.shape[1]) is None:
            raise ValueError(f"GaussianModel.sh: K = {sh.shape[1]} is not (degree + 1)**2 for a "
                             "degree in 0..3 (K must be 1, 4, 9 or 16)")

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_points(cls, points, colors=None, *, scale: float = 0.005, opacity: float = 0.9,
                    sh_degree: int = 0, dtype=torch.float32, device=None) -> "GaussianModel":
        """Isotropic Gaussians at ``points`` [N, 3] (metres) with RGB ``colors`` [N, 3] in [0, 1].

        ``scale`` is the standard deviation in metres (a scalar or [N]), ``opacity`` in (0, 1).
        Higher SH bands start at zero.
        """
        pts = torch.as_tensor(points, dtype=dtype, device=device).reshape(-1, 3)
        n = pts.shape[0]
        if colors is None:
            colors = torch.full((n, 3), 0.5, dtype=dtype, device=pts.device)
        col = torch.as_tensor(colors, dtype=dtype, device=pts.device).reshape(n, 3)
        s = torch.as_tensor(scale, dtype=dtype, device=pts.device).reshape(-1)
        s = s.expand(n) if s.numel() == 1 else s.reshape(n)
        k = (sh_degree + 1) ** 2
        sh = torch.zeros(n, k, 3, dtype=dtype, device=pts.device)
        sh[:, 0] = rgb_to_sh(col)
        quats = torch.zeros(n, 4, dtype=dtype, device=pts.device)
        quats[:, 0] = 1.0
        op = float(min(max(opacity, 1e-6), 1 - 1e-6))
        return cls(
            means=pts.clone(),
            quats=quats,
            log_scales=torch.log(s)[:, None].repeat(1, 3).contiguous(),
            opacity_logits=torch.full((n,), math.log(op / (1 - op)), dtype=dtype, device=pts.device),
            sh=sh,
        )

    # -- activated views -------------------------------------------------------------------------

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return _sh_degree_of(self.sh.shape[1])

    @property
    def scales(self) -> torch.Tensor:
        """Standard deviations along the Gaussian's axes, metres: ``exp(log_scales)`` [N, 3]."""
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> torch.Tensor:
        """``sigmoid(opacity_logits)`` [N] in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    @property
    def unit_quats(self) -> torch.Tensor:
        """Normalised rotations [N, 4] (w, x, y, z)."""
        return torch.nn.functional.normalize(self.quats, dim=-1)

    @property
    def base_colors(self) -> torch.Tensor:
        """View-independent colour ``0.5 + C0 * sh[:, 0]`` [N, 3] (not clamped)."""
        return sh_to_rgb(self.sh[:, 0])

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    # -- tensor plumbing -------------------------------------------------------------------------

    def tensors(self) -> dict:
        """The raw parameters by field name (the same tensor objects, not copies)."""
        return {name: getattr(self, name) for name in TENSOR_FIELDS}

    def _map(self, fn) -> "GaussianModel":
        return GaussianModel(**{name: fn(t) for name, t in self.tensors().items()})

    def to(self, device=None, dtype=None) -> "GaussianModel":
        """A model on ``device`` and/or of floating ``dtype`` (fields already there are shared)."""
        return self._map(lambda t: t.to(device=device, dtype=dtype))

    def clone(self) -> "GaussianModel":
        """A deep copy (gradients still flow back to this model's tensors; see :meth:`detach`)."""
        return self._map(lambda t: t.clone())

    def detach(self) -> "GaussianModel":
        """A model sharing storage but cut from the autograd graph (``requires_grad`` False)."""
        return self._map(lambda t: t.detach())

    def requires_grad_(self, *names: str, requires_grad: bool = True) -> "GaussianModel":
        """Marks the named fields (default: all) as leaves that require grad; returns ``self``.

        Example: ``model.detach().clone().requires_grad_("sh", "opacity_logits")``; then
        ``torch.optim.Adam(model.parameters("sh", "opacity_logits"))``. A field that is not a leaf
        (the result of an operation) is detached first so it can become one.
        """
        for name in names or TENSOR_FIELDS:
            if name not in TENSOR_FIELDS:
                raise ValueError(f"GaussianModel.requires_grad_: unknown field {name!r}; "
                                 f"choose among {TENSOR_FIELDS}")
            t = getattr(self, name)
            if not t.is_leaf:
                t = t.detach()
                setattr(self, name, t)
            t.requires_grad_(requires_grad)
        return self

    def parameters(self, *names: str) -> list:
        """The named fields (default: those that require grad), e.g. for a torch optimiser."""
        if names:
            return [getattr(self, n) for n in names]
        return [t for t in self.tensors().values() if t.requires_grad]

    def subset(self, index) -> "GaussianModel":
        """The Gaussians selected by a boolean mask or index tensor (differentiable)."""
        return self._map(lambda t: t[index])

    def __len__(self) -> int:
        return self.num_gaussians


def _sh_degree_of(k: int) -> Optional[int]:
    for d in range(4):
        if (d + 1) ** 2 == k:
            return d
    return None


# --------------------------------------------------------------------------------------------------
# Object metadata (JSON beside the ply)
# --------------------------------------------------------------------------------------------------


@dataclass
class ObjectMetadata:
    """What the pipeline needs to know about an object beyond its Gaussians; metres throughout.

    ``bbox_min``/``bbox_max`` define the NOCS normalisation (:func:`nocs_colors`);
    ``symmetries_discrete`` are 4x4 ``T`` lists (translation in metres, unlike BOP's millimetres);
    ``symmetries_continuous`` are ``{"axis": [3], "offset": [3] (metres)}`` as in BOP. ``symmetric``
    is True when either list is non-empty or the object is otherwise scored with ADD-S.
    ``near_symmetry_axes`` are ``{"direction": [3], "point": [3] (metres)}`` about which most of the
    shape turns into itself (a mug's body: :func:`gs2pose_ros.mesh.near_symmetry_axes`), stored at
    build time; None when not computed (the tracker then computes them at its first detection).
    """

    name: str
    obj_id: Optional[int] = None
    bbox_min: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    bbox_max: list = field(default_factory=lambda: [0.0, 0.0, 0.0])
    diameter: float = 0.0
    symmetric: bool = False
    symmetries_discrete: list = field(default_factory=list)
    symmetries_continuous: list = field(default_factory=list)
    source: str = ""
    near_symmetry_axes: Optional[list] = None

    @classmethod
    def from_model(cls, model: GaussianModel, name: str, **kwargs) -> "ObjectMetadata":
        """Metadata with the bounding box and diameter of ``model.means`` (other fields: kwargs)."""
        pts = model.means.detach().to("cpu", torch.float64)
        if pts.shape[0] == 0:
            raise ValueError("ObjectMetadata.from_model: the model has no Gaussians")
        bmin = pts.min(0).values.tolist()
        bmax = pts.max(0).values.tolist()
        if "diameter" not in kwargs:
            kwargs["diameter"] = _max_pairwise_distance(pts)
        return cls(name=name, bbox_min=bmin, bbox_max=bmax, **kwargs)

    @property
    def box_centre(self) -> np.ndarray:
        """[3] float64 centre of the NOCS box (object frame, metres)."""
        return 0.5 * (np.asarray(self.bbox_min, dtype=np.float64) + np.asarray(self.bbox_max, dtype=np.float64))

    @property
    def near_axes(self) -> Optional[list]:
        """``near_symmetry_axes`` as :func:`gs2pose_ros.mesh.near_symmetry_axes` returns them:
        ``[(direction [3], point [3])]`` float64 arrays; None when not computed."""
        if self.near_symmetry_axes is None:
            return None
        return [(np.asarray(a["direction"], dtype=np.float64), np.asarray(a["point"], dtype=np.float64))
                for a in self.near_symmetry_axes]

    @near_axes.setter
    def near_axes(self, axes: Optional[list]) -> None:
        self.near_symmetry_axes = None if axes is None else [
            {"direction": [float(x) for x in e], "point": [float(x) for x in c]} for e, c in axes]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, source_path: str = "<dict>") -> "ObjectMetadata":
        if not isinstance(d, dict):
            raise ModelFileError(f"{source_path}: expected a JSON object with the object's "
                                 f"metadata, got {type(d).__name__}; rewrite it with "
                                 "write_object_metadata()")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ModelFileError(f"{source_path}: unknown metadata keys {unknown}; expected a "
                                 f"subset of {sorted(names)}")
        if "name" not in d:
            raise ModelFileError(f"{source_path}: the metadata lacks the required key 'name'")
        try:
            meta = cls(**d)
            meta.bbox_min = [float(v) for v in meta.bbox_min]
            meta.bbox_max = [float(v) for v in meta.bbox_max]
            meta.diameter = float(meta.diameter)
            meta.symmetric = bool(meta.symmetric)
            meta.obj_id = None if meta.obj_id is None else int(meta.obj_id)
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{source_path}: malformed metadata value ({exc}); fix the file "
                                 "or rewrite it with write_object_metadata()") from exc
        if len(meta.bbox_min) != 3 or len(meta.bbox_max) != 3:
            raise ModelFileError(f"{source_path}: bbox_min and bbox_max must each have 3 values")
        if meta.near_symmetry_axes is not None:
            try:
                meta.near_symmetry_axes = [{k: [float(x) for x in a[k]] for k in ("direction", "point")}
                                           for a in meta.near_symmetry_axes]
                ok = all(len(a["direction"]) == 3 and len(a["point"]) == 3 for a in meta.near_symmetry_axes)
            except (TypeError, KeyError, ValueError):
                ok = False
            if not ok:
                raise ModelFileError(f"{source_path}: near_symmetry_axes must be a list of "
                                     "{\"direction\": [3], \"point\": [3]}; delete the key to have it recomputed")
        return meta


def _max_pairwise_distance(pts: torch.Tensor, chunk: int = 2048) -> float:
    best = 0.0
    for i in range(0, pts.shape[0], chunk):
        best = max(best, float(torch.cdist(pts[i:i + chunk], pts).max()))
    return best


def metadata_path(ply_path) -> Path:
    """The metadata file that belongs to a model ply: same name, ``.json`` suffix."""
    return Path(ply_path).with_suffix(".json")


def write_object_metadata(metadata: ObjectMetadata, path) -> Path:
    """Writes ``metadata`` as plain JSON to ``path`` (a ``.json``, or a ply whose ``.json`` is meant)."""
    path = Path(path)
    if path.suffix.lower() == ".ply":
        path = metadata_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(metadata.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_object_metadata(path) -> ObjectMetadata:
    """Reads the metadata JSON at ``path`` (or the ``.json`` beside a ``.ply``); ModelFileError if bad."""
    path = Path(path)
    if path.suffix.lower() == ".ply":
        path = metadata_path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: object metadata file not found; write it with "
                             "write_gaussian_ply(..., metadata=...) or write_object_metadata()")
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: not readable as JSON ({exc}); rewrite it with "
                             "write_object_metadata()") from exc
    return ObjectMetadata.from_dict(d, source_path=str(path))


# --------------------------------------------------------------------------------------------------
# ply files
# --------------------------------------------------------------------------------------------------

_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


def _ply_field_names(k: int) -> list:
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (k - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def write_gaussian_ply(model: GaussianModel, path, metadata: Optional[ObjectMetadata] = None) -> Path:
    """Writes ``model`` as a binary little-endian 3DGS ply (float32), and ``metadata`` as ``<path>.json``.

    ``f_rest_*`` is channel-major as in the reference 3DGS code: coefficient ``j >= 1`` of channel
    ``c`` is ``f_rest_{c * (K - 1) + j - 1}``. Normals are written as zeros. Returns the ply path.
    """
    from plyfile import PlyData, PlyElement

    path = Path(path)
    n, k = model.num_gaussians, model.sh.shape[1]
    t = {name: v.detach().to("cpu", torch.float32).numpy() for name, v in model.tensors().items()}
    cols = [t["means"], np.zeros((n, 3), np.float32), t["sh"][:, 0, :]]
    if k > 1:
        # [N, K-1, 3] -> [N, 3, K-1] -> channel-major flat
        cols.append(np.ascontiguousarray(t["sh"][:, 1:, :].transpose(0, 2, 1)).reshape(n, -1))
    cols += [t["opacity_logits"][:, None], t["log_scales"], t["quats"]]
    data = np.concatenate(cols, axis=1).astype(np.float32)
    names = _ply_field_names(k)
    assert data.shape[1] == len(names)
    arr = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        arr[name] = data[:, i]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    PlyData([PlyElement.describe(arr, "vertex")], byte_order="<").write(str(tmp))
    os.replace(tmp, path)
    if metadata is not None:
        write_object_metadata(metadata, metadata_path(path))
    return path


def read_gaussian_ply(path, *, dtype=torch.float32, device=None) -> GaussianModel:
    """Reads a 3DGS ply (binary or ascii) into a :class:`GaussianModel`; ModelFileError if unusable.

    The SH degree is inferred from the number of ``f_rest_*`` properties (0, 9, 24 or 45 for
    degrees 0..3). Errors name the file: missing file, truncated/corrupt data, missing properties
    (listed), non-finite values, an ``f_rest`` count that matches no degree.
    """
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: Gaussian model file not found; check the path or build the "
                             "model first (reconstruction command)")
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"]
        data = vertex.data
        props = [p.name for p in vertex.properties]
    except KeyError as exc:
        raise ModelFileError(f"{path}: the ply has no 'vertex' element; it is not a Gaussian "
                             "model ply") from exc
    except Exception as exc:  # plyfile raises PlyParseError, ValueError, EOFError, struct errors...
        raise ModelFileError(f"{path}: not a readable ply file, or truncated ({type(exc).__name__}: "
                             f"{exc}); re-export or rebuild the model") from exc
    if len(data) != vertex.count:
        raise ModelFileError(f"{path}: truncated: header announces {vertex.count} Gaussians, "
                             f"read {len(data)}; re-export or rebuild the model")
    missing = [p for p in _REQUIRED if p not in props]
    if missing:
        raise ModelFileError(f"{path}: missing Gaussian properties {missing}; a 3DGS ply needs "
                             f"{list(_REQUIRED)} (+ f_rest_* for SH degree > 0)")
    rest = [p for p in props if p.startswith("f_rest_")]
    n_rest = len(rest)
    if n_rest % 3 != 0 or _sh_degree_of(n_rest // 3 + 1) is None:
        raise ModelFileError(f"{path}: {n_rest} f_rest_* properties match no SH degree (expected "
                             "0, 9, 24 or 45 for degrees 0..3)")
    expected_rest = [f"f_rest_{i}" for i in range(n_rest)]
    if sorted(rest) != sorted(expected_rest):
        raise ModelFileError(f"{path}: f_rest_* properties are not numbered 0..{n_rest - 1}")
    k = n_rest // 3 + 1
    n = len(data)

    def cols(names: Sequence[str]) -> np.ndarray:
        if not names:
            return np.zeros((n, 0), np.float64)
        return np.stack([np.asarray(data[nm], dtype=np.float64) for nm in names], axis=1)

    means = cols(["x", "y", "z"])
    f_dc = cols(["f_dc_0", "f_dc_1", "f_dc_2"])
    f_rest = cols(expected_rest)
    opacity = cols(["opacity"])[:, 0]
    log_scales = cols(["scale_0", "scale_1", "scale_2"])
    quats = cols(["rot_0", "rot_1", "rot_2", "rot_3"])
    for name, a in (("x/y/z", means), ("f_dc", f_dc), ("f_rest", f_rest), ("opacity", opacity),
                    ("scale", log_scales), ("rot", quats)):
        bad = ~np.isfinite(a)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise ModelFileError(f"{path}: {int(bad.sum())} non-finite (NaN/inf) {name} values, "
                                 f"first at Gaussian {int(rows[0])}; the model is corrupt, rebuild it")
    qn = np.linalg.norm(quats, axis=1)
    if (qn == 0).any():
        raise ModelFileError(f"{path}: {int((qn == 0).sum())} Gaussians have an all-zero rotation "
                             f"(rot_0..3), first at {int(np.nonzero(qn == 0)[0][0])}")
    sh = np.empty((n, k, 3), np.float64)
    sh[:, 0, :] = f_dc
    if k > 1:
        sh[:, 1:, :] = f_rest.reshape(n, 3, k - 1).transpose(0, 2, 1)

    def tt(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

    return GaussianModel(means=tt(means), quats=tt(quats), log_scales=tt(log_scales),
                         opacity_logits=tt(opacity), sh=tt(sh))


# --------------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------------


def nocs_colors(model: GaussianModel, metadata: ObjectMetadata) -> torch.Tensor:
    """Normalised object coordinates as colours: ``(mean - bbox_min) / (bbox_max - bbox_min)`` [N, 3].

    Differentiable in ``model.means``; values lie in [0, 1] for Gaussians inside the box (not
    clamped, so Gaussians outside the box give values outside [0, 1]). A degenerate (flat) box axis
    maps to 0.5.
    """
    bmin = torch.as_tensor(metadata.bbox_min, dtype=model.dtype, device=model.device)
    bmax = torch.as_tensor(metadata.bbox_max, dtype=model.dtype, device=model.device)
    ext = bmax - bmin
    flat = ext <= 0
    out = (model.means - bmin) / torch.where(flat, torch.ones_like(ext), ext)
    return torch.where(flat, torch.full_like(out, 0.5), out)


def eval_sh(sh: torch.Tensor, dirs: torch.Tensor, degree: Optional[int] = None) -> torch.Tensor:
    """Evaluates real spherical harmonics: ``sum_k Y_k(dir) * sh[..., k, :]`` -> [..., 3].

    sh: [..., K, 3] coefficients with K = (d + 1)**2, d in 0..3; dirs: [..., 3] view directions
    (normalised here; in the object frame they are ``mean - camera centre``); ``degree`` uses only
    the first ``(degree + 1)**2`` bands (default: all). Constants and sign convention are those of
    the reference 3DGS code, so colour = ``clamp_min(eval_sh(...) + 0.5, 0)`` as gsplat renders.

    Written in plain torch because gsplat's ``spherical_harmonics`` launches a CUDA kernel and has
    no CPU path here (its ``_torch_impl`` version is used only by the tests as a cross-check).
    """
    k = sh.shape[-2]
    d_max = _sh_degree_of(k)
    if d_max is None:
        raise ValueError(f"eval_sh: K = {k} is not (degree + 1)**2 for degree 0..3")
    degree = d_max if degree is None else int(degree)
    if not 0 <= degree <= d_max:
        raise ValueError(f"eval_sh: degree {degree} outside 0..{d_max} for K = {k}")
    res = SH_C0 * sh[..., 0, :]
    if degree == 0:
        return res
    d = torch.nn.functional.normalize(dirs, dim=-1)
    x, y, z = d[..., 0:1], d[..., 1:2], d[..., 2:3]
    res = res - _SH_C1 * y * sh[..., 1, :] + _SH_C1 * z * sh[..., 2, :] - _SH_C1 * x * sh[..., 3, :]
    if degree == 1:
        return res
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    res = (res
           + _SH_C2[0] * xy * sh[..., 4, :]
           + _SH_C2[1] * yz * sh[..., 5, :]
           + _SH_C2[2] * (2.0 * zz - xx - yy) * sh[..., 6, :]
           + _SH_C2[3] * xz * sh[..., 7, :]
           + _SH_C2[4] * (xx - yy) * sh[..., 8, :])
    if degree == 2:
        return res
    res = (res
           + _SH_C3[0] * y * (3.0 * xx - yy) * sh[..., 9, :]
           + _SH_C3[1] * xy * z * sh[..., 10, :]
           + _SH_C3[2] * y * (4.0 * zz - xx - yy) * sh[..., 11, :]
           + _SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[..., 12, :]
           + _SH_C3[4] * x * (4.0 * zz - xx - yy) * sh[..., 13, :]
           + _SH_C3[5] * z * (xx - yy) * sh[..., 14, :]
           + _SH_C3[6] * x * (xx - 3.0 * yy) * sh[..., 15, :])
    return res


def procedural_box_model(n: int = 5000, size=(0.08, 0.06, 0.05), *, seed: int = 0,
                         opacity: float = 0.9, sh_degree: int = 0, checker: float = 0.01,
                         dtype=torch.float32) -> GaussianModel:
    """A synthetic textured box: ``n`` flat Gaussians on the surface of a box centred at the origin.

    Each face has its own base colour modulated by a checkerboard of ``checker`` metres, so images
    have gradients in every direction (useful for pose-refinement tests and benchmarks). Gaussians
    are uniform by area, disc-shaped (thin along the face normal) and sized to overlap their
    neighbours. Deterministic for a given ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    half = torch.tensor(size, dtype=torch.float64) / 2
    a, b, c = (2 * half).tolist()
    areas = torch.tensor([b * c, b * c, a * c, a * c, a * b, a * b], dtype=torch.float64)
    face = torch.multinomial(areas / areas.sum(), n, replacement=True, generator=g)
    axis = face // 2  # normal axis 0, 1, 2
    sign = (face % 2) * 2 - 1  # -1, +1
    uv = torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1
    pts = uv * half
    pts[torch.arange(n), axis] = sign.double() * half[axis]
    base = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.2, 0.3, 0.9],
                         [0.9, 0.8, 0.2], [0.8, 0.3, 0.8], [0.2, 0.8, 0.8]], dtype=torch.float64)
    cell = torch.floor(pts / checker).long().sum(1) % 2
    col = base[face] * (0.55 + 0.45 * cell[:, None].double())
    spacing = math.sqrt(float(areas.sum()) * 2 / n)
    scales = torch.full((n, 3), 0.6 * spacing, dtype=torch.float64)
    scales[torch.arange(n), axis] = 0.1 * spacing
    model = GaussianModel.from_points(pts, col, scale=0.01, opacity=opacity, sh_degree=sh_degree,
                                      dtype=torch.float64)
    model.log_scales = torch.log(scales)
    return model.to(dtype=dtype)
