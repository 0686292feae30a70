"""Reading and writing datasets in the BOP format (numpy; metres inside).

BOP layout (https://bop.felk.cvut.cz, bop_toolkit ``docs/bop_datasets_format.md``)::

    <root>/camera.json                       optional, dataset-wide intrinsics and image size
    <root>/models/obj_{obj_id:06d}.ply       models in millimetres (models_eval/ likewise)
    <root>/models/models_info.json           diameter, extents, symmetries (millimetres)
    <root>/<split>/<scene_id:06d>/
        scene_camera.json                    per image: cam_K (row-major 3x3), depth_scale
        scene_gt.json                        per image: list of {cam_R_m2c, cam_t_m2c (mm), obj_id}
        scene_gt_info.json                   per image and instance: bboxes and pixel counts
        rgb/{im_id:06d}.png|jpg   depth/{im_id:06d}.png (uint16, depth_mm = value * depth_scale)
        mask/ and mask_visib/{im_id:06d}_{gt_idx:06d}.png   (0/255)

Units follow ``docs/conventions.md``: millimetres exist only in the files; every value this
module returns is in metres (translations, depth, diameters, extents, symmetry offsets), and
the writer converts back. Poses are ``T_cam_obj`` (BOP's ``cam_R_m2c``, ``cam_t_m2c``).

Ground-truth rotations in real BOP datasets are not exactly orthonormal (LM-O: up to 5e-3);
the reader replaces each by its nearest rotation (SVD) and rejects matrices further than
``ROTATION_TOLERANCE`` from one, or with a negative determinant.

Writer decisions:

* ``depth_scale`` defaults to 0.1 (depth PNG unit = 0.1 mm, as BOP's synthetic PBR sets):
  range 0.1 mm .. 6.5535 m in uint16. Non-finite or non-positive depth is written as 0 (no
  reading); positive depth is written as at least 1 unit (so it stays a reading) and at most
  65535 (clipped, with a warning naming the frame).
* Images are PNG by default (lossless; deterministic for the same OpenCV build); ``"jpg"`` is
  accepted for the RGB only (quality 95).
* The three JSON files are written by :meth:`BopSceneWriter.close`, one image per line, image
  ids in increasing order, fields in BOP's order: the same input gives the same bytes.
* ``scene_gt_info.json`` follows BOP's definitions (bop_toolkit ``calc_gt_info.py``):
  ``px_count_all`` counts the full silhouette, including any part outside the image (pass it
  explicitly when the silhouette leaves the image); ``px_count_visib`` counts ``mask_visib``;
  ``px_count_valid`` counts silhouette pixels inside the image with a depth reading (=
  ``px_count_all`` when the scene has no depth); ``visib_fract = px_count_visib /
  px_count_all`` (0 when the silhouette is empty); bboxes are ``[x, y, w, h]`` with ``w =
  x_max - x_min`` (BOP's ``calc_2d_bbox``), and both are ``[-1, -1, -1, -1]`` when
  ``px_count_visib == 0``.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import DatasetError, GeometryError, InputError

__all__ = [
    "ROTATION_TOLERANCE",
    "CameraParams",
    "GtInstance",
    "GtInfo",
    "ModelInfo",
    "BopScene",
    "BopDataset",
    "BopSceneWriter",
    "open_scene",
    "find_dataset_root",
    "read_models_info",
    "write_models_info",
    "write_model_ply",
    "compute_gt_info",
]

#: Largest accepted ``max|R R^T - I|`` for a ground-truth rotation (LM-O reaches 5e-3).
ROTATION_TOLERANCE = 1e-2

_MM_PER_M = 1000.0
_RGB_EXTS = (".png", ".jpg", ".jpeg")
_DEPTH_EXTS = (".png", ".tif", ".tiff")
_PNG_PARAMS = None  # set lazily (needs cv2)


# --------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class CameraParams:
    """Intrinsics of one image. ``depth_scale``: millimetres per depth-PNG unit (BOP's meaning:
    ``depth_mm = png_value * depth_scale``)."""

    K: np.ndarray  # [3, 3] float64
    depth_scale: float
    width: int
    height: int

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])


@dataclass(eq=False)
class GtInstance:
    """One annotated object instance: ``T_cam_obj`` with ``R`` orthonormalised, ``t`` metres."""

    obj_id: int
    R: np.ndarray  # [3, 3] float64, a rotation
    t: np.ndarray  # [3] float64, metres

    @property
    def T(self) -> np.ndarray:
        """4x4 ``T_cam_obj`` (metres)."""
        T = np.eye(4)
        T[:3, :3] = self.R
        T[:3, 3] = self.t
        return T


@dataclass(eq=False)
class GtInfo:
    """BOP's ``scene_gt_info.json`` entry for one instance (pixels; bboxes ``(x, y, w, h)``)."""

    bbox_obj: tuple[int, int, int, int]
    bbox_visib: tuple[int, int, int, int]
    px_count_all: int
    px_count_visib: int
    px_count_valid: int
    visib_fract: float

    def as_json(self) -> dict:
        return {
            "bbox_obj": [int(v) for v in self.bbox_obj],
            "bbox_visib": [int(v) for v in self.bbox_visib],
            "px_count_all": int(self.px_count_all),
            "px_count_valid": int(self.px_count_valid),
            "px_count_visib": int(self.px_count_visib),
            "visib_fract": float(self.visib_fract),
        }


@dataclass(eq=False)
class ModelInfo:
    """``models_info.json`` entry in metres. ``symmetries_discrete``: 4x4 transforms (t in m);
    ``symmetries_continuous``: dicts with ``axis`` [3] (unit) and ``offset`` [3] (m)."""

    obj_id: int
    diameter: float
    min_xyz: np.ndarray  # [3]
    size_xyz: np.ndarray  # [3]
    symmetries_discrete: list = field(default_factory=list)
    symmetries_continuous: list = field(default_factory=list)

    @property
    def symmetric(self) -> bool:
        """True when the object has any symmetry (scored with ADD-S)."""
        return bool(self.symmetries_discrete) or bool(self.symmetries_continuous)

    def as_json(self) -> dict:
        """The ``models_info.json`` entry (millimetres), BOP's key order."""

        def mm(x: float) -> float:
            return round(float(x) * _MM_PER_M, 6) + 0.0  # + 0.0 turns -0.0 into 0.0

        out: dict[str, Any] = {"diameter": mm(self.diameter)}
        for i, ax in enumerate("xyz"):
            out[f"min_{ax}"] = mm(self.min_xyz[i])
        for i, ax in enumerate("xyz"):
            out[f"size_{ax}"] = mm(self.size_xyz[i])
        if self.symmetries_discrete:
            syms = []
            for S in self.symmetries_discrete:
                S = np.asarray(S, dtype=np.float64)
                vals = []
                for r in range(4):
                    for c in range(4):
                        v = S[r, c] * (_MM_PER_M if (c == 3 and r < 3) else 1.0)
                        vals.append(round(float(v), 9) + 0.0)
                syms.append(vals)
            out["symmetries_discrete"] = syms
        if self.symmetries_continuous:
            out["symmetries_continuous"] = [
                {
                    "axis": [round(float(v), 9) + 0.0 for v in np.asarray(s["axis"]).ravel()],
                    "offset": [mm(v) for v in np.asarray(s["offset"]).ravel()],
                }
                for s in self.symmetries_continuous
            ]
        return out


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _nearest_rotation(R: np.ndarray) -> np.ndarray:
    """Nearest rotation (Frobenius) by SVD, det fixed to +1. (Private numpy twin of
    ``gs2pose_ros.lie.orthonormalize``; kept here so this module needs no torch.)"""
    U, _, Vt = np.linalg.svd(R)
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt)) or 1.0
    return U @ D @ Vt


def _rotation_problem(R: np.ndarray, tol: float = ROTATION_TOLERANCE) -> str | None:
    """A sentence saying why ``R`` is not a rotation within ``tol``, or None if it is one."""
    if not np.all(np.isfinite(R)):
        return "it has non-finite entries"
    det = float(np.linalg.det(R))
    if det <= 0:
        return (
            f"its determinant is {det:.4g} (a rotation has +1; a reflection or a degenerate matrix)"
        )
    err = float(np.abs(R @ R.T - np.eye(3)).max())
    if err > tol:
        return f"max|R R^T - I| = {err:.3g} exceeds the tolerance {tol:g}"
    return None


def _load_json(path: Path, what: str, hint: str = "") -> Any:
    if not path.is_file():
        raise DatasetError(f"{path}: {what} is missing{'; ' + hint if hint else ''}")
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
            "the file may be truncated or hand-edited: restore or regenerate it"
        ) from None
    except (UnicodeDecodeError, OSError) as e:
        raise DatasetError(f"{path}: cannot read {what} ({e}); restore or regenerate it") from None


def _as_mapping(data: Any, path: Path, what: str) -> dict:
    if not isinstance(data, dict):
        raise DatasetError(
            f"{path}: {what} must be a JSON object keyed by image id, found {type(data).__name__}"
        )
    return data


def _im_id_key(key: str, path: Path) -> int:
    try:
        return int(key)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: key {key!r} is not an integer image id") from None


def _numbers(value: Any, n: int, path: Path, where: str, name: str) -> np.ndarray:
    """``value`` as a float64 array of ``n`` finite numbers, else a DatasetError."""
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )
    if ok:
        arr = np.asarray(value, dtype=np.float64)
        if np.all(np.isfinite(arr)):
            return arr
    shown = json.dumps(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise DatasetError(
        f"{path}: {where}: {name} must be a list of {n} finite numbers, found {shown}"
    )


def _field(entry: Any, key: str, path: Path, where: str) -> Any:
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: {where}: expected a JSON object, found {type(entry).__name__}")
    if key not in entry:
        raise DatasetError(f"{path}: {where}: the field {key!r} is missing")
    return entry[key]


def _cv2():
    import cv2  # local import: keeps `import gs2pose_ros.bop` light

    return cv2


def _read_image(path: Path, flags: int, what: str) -> np.ndarray:
    cv2 = _cv2()
    if not path.is_file():
        raise DatasetError(f"{path}: {what} is missing")
    buf = np.fromfile(str(path), dtype=np.uint8)
    im = cv2.imdecode(buf, flags) if buf.size else None
    if im is None:
        raise DatasetError(
            f"{path}: cannot decode the {what} (truncated or not an image); restore it"
        )
    return im


def _image_size_of(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception as e:  # PIL raises several types for corrupt files
        raise DatasetError(
            f"{path}: cannot read the image header ({e}); restore the file"
        ) from None


def _calc_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """BOP's ``calc_2d_bbox`` on a mask: ``(x_min, y_min, x_max - x_min, y_max - y_min)``."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return (-1, -1, -1, -1)
    x0, y0 = int(xs.min()), int(ys.min())
    return (x0, y0, int(xs.max()) - x0, int(ys.max()) - y0)


def compute_gt_info(
    mask_visib: np.ndarray,
    mask: np.ndarray | None = None,
    depth: np.ndarray | None = None,
    px_count_all: int | None = None,
    bbox_obj: Sequence[int] | None = None,
) -> GtInfo:
    """BOP's ``scene_gt_info`` entry from masks (see the module docstring for the definitions).

    ``mask`` is the full silhouette inside the image; ``px_count_all`` / ``bbox_obj`` override
    the values computed from it (needed when the silhouette leaves the image). ``depth`` (metres,
    0 = no reading) makes ``px_count_valid`` the silhouette pixels with a reading; it needs
    ``mask``.
    """
    mask_visib = np.asarray(mask_visib, dtype=bool)
    n_visib = int(mask_visib.sum())
    if px_count_all is None:
        if mask is None:
            raise InputError("compute_gt_info: give the full silhouette `mask` or `px_count_all`")
        px_count_all = int(np.asarray(mask, dtype=bool).sum())
    px_count_all = int(px_count_all)
    if depth is not None:
        if mask is None:
            raise InputError(
                "compute_gt_info: px_count_valid with depth needs the full silhouette `mask`"
            )
        d = np.asarray(depth)
        px_count_valid = int(
            np.count_nonzero(np.asarray(mask, dtype=bool) & np.isfinite(d) & (d > 0))
        )
    else:
        px_count_valid = px_count_all
    if n_visib > 0:
        if bbox_obj is None:
            if mask is None:
                raise InputError("compute_gt_info: give the full silhouette `mask` or `bbox_obj`")
            bbox_obj = _calc_bbox(np.asarray(mask, dtype=bool))
        bbox_o = tuple(int(v) for v in bbox_obj)
        if len(bbox_o) != 4:
            raise InputError(f"compute_gt_info: bbox_obj must be (x, y, w, h), got {bbox_obj!r}")
        bbox_v = _calc_bbox(mask_visib)
    else:
        bbox_o = bbox_v = (-1, -1, -1, -1)
    visib_fract = n_visib / px_count_all if px_count_all > 0 else 0.0
    return GtInfo(bbox_o, bbox_v, px_count_all, n_visib, px_count_valid, float(visib_fract))


# --------------------------------------------------------------------------------------------
# models_info.json
# --------------------------------------------------------------------------------------------


def _parse_model_info(obj_id: int, entry: Any, path: Path) -> ModelInfo:
    where = f"object {obj_id}"
    diameter = _numbers([_field(entry, "diameter", path, where)], 1, path, where, "diameter")[0]
    if diameter <= 0:
        raise DatasetError(f"{path}: {where}: diameter must be positive, found {diameter:g}")
    mins = [_field(entry, f"min_{a}", path, where) for a in "xyz"]
    sizes = [_field(entry, f"size_{a}", path, where) for a in "xyz"]
    min_xyz = _numbers(mins, 3, path, where, "min_x/min_y/min_z") / _MM_PER_M
    size_xyz = _numbers(sizes, 3, path, where, "size_x/size_y/size_z") / _MM_PER_M
    discrete = []
    for k, s in enumerate(entry.get("symmetries_discrete", []) or []):
        S = _numbers(s, 16, path, f"{where}, symmetries_discrete[{k}]", "the transform").reshape(
            4, 4
        )
        problem = _rotation_problem(S[:3, :3])
        if problem is not None:
            raise DatasetError(
                f"{path}: {where}, symmetries_discrete[{k}]: not a rotation: {problem}"
            )
        S = S.copy()
        S[:3, :3] = _nearest_rotation(S[:3, :3])
        S[:3, 3] /= _MM_PER_M
        S[3] = (0.0, 0.0, 0.0, 1.0)
        discrete.append(S)
    continuous = []
    for k, s in enumerate(entry.get("symmetries_continuous", []) or []):
        w = f"{where}, symmetries_continuous[{k}]"
        axis = _numbers(_field(s, "axis", path, w), 3, path, w, "axis")
        offset = _numbers(_field(s, "offset", path, w), 3, path, w, "offset")
        norm = float(np.linalg.norm(axis))
        if norm == 0:
            raise DatasetError(f"{path}: {w}: the axis is zero")
        continuous.append({"axis": axis / norm, "offset": offset / _MM_PER_M})
    return ModelInfo(
        int(obj_id), float(diameter) / _MM_PER_M, min_xyz, size_xyz, discrete, continuous
    )


def read_models_info(path: str | Path) -> dict[int, ModelInfo]:
    """``models_info.json`` -> ``{obj_id: ModelInfo}`` in metres."""
    path = Path(path)
    data = _as_mapping(
        _load_json(
            path,
            "models_info.json",
            "a BOP models folder needs it (diameters, extents, symmetries)",
        ),
        path,
        "models_info.json",
    )
    out = {}
    for key in sorted(data, key=lambda k: _im_id_key(k, path)):
        obj_id = _im_id_key(key, path)
        out[obj_id] = _parse_model_info(obj_id, data[key], path)
    return out


def _dump_json_by_id(data: Mapping[int, Any]) -> str:
    """BOP-style JSON: one id per line, ids increasing; same input, same text."""
    lines = [f'  "{int(k)}": {json.dumps(data[k], allow_nan=False)}' for k in sorted(data)]
    return "{\n" + ",\n".join(lines) + "\n}\n" if lines else "{}\n"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        tmp.replace(path)
    except OSError as e:
        raise DatasetError(f"{path}: cannot write ({e})") from None


def write_models_info(
    models_dir: str | Path, infos: Mapping[int, ModelInfo] | Iterable[ModelInfo]
) -> Path:
    """Write ``models_dir/models_info.json`` (millimetres) from ModelInfos (metres)."""
    models_dir = Path(models_dir)
    items = list(infos.values()) if isinstance(infos, Mapping) else list(infos)
    data: dict[int, Any] = {}
    for info in items:
        if info.obj_id in data:
            raise InputError(f"write_models_info: obj_id {info.obj_id} given twice")
        data[info.obj_id] = info.as_json()
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / "models_info.json"
    _write_text(path, _dump_json_by_id(data))
    return path


def write_model_ply(models_dir: str | Path, obj_id: int, mesh) -> Path:
    """Write ``models_dir/obj_{obj_id:06d}.ply`` (binary, millimetres) from a mesh in metres."""
    from .mesh import write_mesh_ply

    path = Path(models_dir) / f"obj_{int(obj_id):06d}.ply"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mesh_ply(mesh, path, units="mm")
    return path


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


def find_dataset_root(scene_dir: str | Path) -> Path | None:
    """The dataset root of a scene (``<root>/<split>/<scene>``): two levels up, if it has a
    ``models/`` or ``models_eval/`` folder or a ``camera.json``; else None."""
    root = Path(scene_dir).resolve().parent.parent
    if (
        (root / "models").is_dir()
        or (root / "models_eval").is_dir()
        or (root / "camera.json").is_file()
    ):
        return root
    return None


class BopScene:
    """One BOP scene folder, read lazily (JSON files once, images on each call).

    ``scene_camera.json`` is required; ``scene_gt.json`` only when ground truth is asked for
    (:meth:`gt`, :meth:`instances_of`...); ``scene_gt_info.json`` only for :meth:`gt_info`.
    """

    def __init__(self, scene_dir: str | Path):
        self.path = Path(scene_dir)
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: the scene folder does not exist")
        if not (self.path / "scene_camera.json").is_file():
            raise DatasetError(
                f"{self.path}: scene_camera.json is missing; a BOP scene folder needs "
                "scene_camera.json (and rgb/, scene_gt.json for ground truth)"
            )
        self._cameras: dict[int, tuple[np.ndarray, float]] | None = None
        self._gt: dict[int, list[GtInstance]] | None = None
        self._gt_info: dict[int, list[GtInfo]] | None = None
        self._size: tuple[int, int, Path | None] | None = None

    def __repr__(self) -> str:
        return f"BopScene({str(self.path)!r})"

    # ---- identity ---------------------------------------------------------------------------
    @property
    def scene_id(self) -> int | None:
        """The integer folder name (``000002`` -> 2), or None if it is not a number."""
        try:
            return int(self.path.name)
        except ValueError:
            return None

    @property
    def dataset_root(self) -> Path | None:
        """See :func:`find_dataset_root`."""
        return find_dataset_root(self.path)

    def dataset(self, models: str = "models") -> "BopDataset":
        """The :class:`BopDataset` two levels up; DatasetError if there is none."""
        root = self.dataset_root
        if root is None:
            raise DatasetError(
                f"{self.path}: no dataset root two levels up ({self.path.resolve().parent.parent} "
                "has no models/ folder or camera.json); open the dataset with BopDataset(root)"
            )
        return BopDataset(root, models=models)

    # ---- scene_camera.json ------------------------------------------------------------------
    def _load_cameras(self) -> dict[int, tuple[np.ndarray, float]]:
        if self._cameras is None:
            path = self.path / "scene_camera.json"
            data = _as_mapping(_load_json(path, "scene_camera.json"), path, "scene_camera.json")
            cams = {}
            for key, entry in data.items():
                im_id = _im_id_key(key, path)
                where = f"image {im_id}"
                K = _numbers(_field(entry, "cam_K", path, where), 9, path, where, "cam_K").reshape(
                    3, 3
                )
                if K[0, 0] <= 0 or K[1, 1] <= 0:
                    raise DatasetError(f"{path}: {where}: cam_K has non-positive focal lengths")
                ds = entry.get("depth_scale", 1.0)
                ds = float(_numbers([ds], 1, path, where, "depth_scale")[0])
                if ds <= 0:
                    raise DatasetError(
                        f"{path}: {where}: depth_scale must be positive, found {ds:g}"
                    )
                cams[im_id] = (K, ds)
            self._cameras = dict(sorted(cams.items()))
        return self._cameras

    @property
    def im_ids(self) -> list[int]:
        """Image ids of the scene (keys of scene_camera.json), increasing."""
        return list(self._load_cameras())

    def __len__(self) -> int:
        return len(self._load_cameras())

    def _check_im_id(self, im_id: int) -> int:
        cams = self._load_cameras()
        im_id = int(im_id)
        if im_id not in cams:
            ids = list(cams)
            span = f"{len(ids)} ids from {ids[0]} to {ids[-1]}" if ids else "no images"
            raise DatasetError(f"{self.path}: image {im_id} is not in scene_camera.json ({span})")
        return im_id

    def _image_size(self) -> tuple[int, int, Path | None]:
        """(width, height, reference file) of the scene's images."""
        if self._size is None:
            ids = self.im_ids
            ref = None
            for im_id in ids[:1]:
                ref = self._find_file("rgb", im_id, _RGB_EXTS) or self._find_file(
                    "depth", im_id, _DEPTH_EXTS
                )
            if ref is not None:
                w, h = _image_size_of(ref)
                self._size = (w, h, ref)
            else:
                root = self.dataset_root
                cam_path = root / "camera.json" if root is not None else None
                if cam_path is None or not cam_path.is_file():
                    first = f"rgb/{ids[0]:06d}.png" if ids else "rgb/"
                    raise DatasetError(
                        f"{self.path}: cannot tell the image size: {first} is missing and there is "
                        "no camera.json two levels up; restore the images"
                    )
                cam = _as_mapping(_load_json(cam_path, "camera.json"), cam_path, "camera.json")
                w = int(
                    _numbers(
                        [_field(cam, "width", cam_path, "camera")], 1, cam_path, "camera", "width"
                    )[0]
                )
                h = int(
                    _numbers(
                        [_field(cam, "height", cam_path, "camera")], 1, cam_path, "camera", "height"
                    )[0]
                )
                self._size = (w, h, cam_path)
        return self._size

    def _check_size(self, im: np.ndarray, path: Path) -> None:
        w, h, ref = self._image_size()
        if im.shape[0] != h or im.shape[1] != w:
            raise DatasetError(
                f"{path}: image size {im.shape[1]}x{im.shape[0]} differs from the scene's "
                f"{w}x{h} (from {ref}); all images of a scene must have the same size"
            )

    def camera(self, im_id: int) -> CameraParams:
        """Intrinsics of image ``im_id`` (size from the scene's images, or camera.json)."""
        im_id = self._check_im_id(im_id)
        K, ds = self._load_cameras()[im_id]
        w, h, _ = self._image_size()
        return CameraParams(K.copy(), ds, w, h)

    # ---- scene_gt.json ----------------------------------------------------------------------
    @property
    def has_gt(self) -> bool:
        return (self.path / "scene_gt.json").is_file()

    def _load_gt(self) -> dict[int, list[GtInstance]]:
        if self._gt is None:
            path = self.path / "scene_gt.json"
            data = _as_mapping(
                _load_json(
                    path,
                    "scene_gt.json",
                    "a BOP scene needs it for ground-truth poses (cam_R_m2c, cam_t_m2c, obj_id "
                    "per instance); use a scene with annotations or do not ask for ground truth",
                ),
                path,
                "scene_gt.json",
            )
            out = {}
            for key, entries in data.items():
                im_id = _im_id_key(key, path)
                if not isinstance(entries, list):
                    raise DatasetError(
                        f"{path}: image {im_id}: expected a list of instances, found {type(entries).__name__}"
                    )
                insts = []
                for gt_idx, e in enumerate(entries):
                    where = f"image {im_id}, gt index {gt_idx}"
                    obj_id = _field(e, "obj_id", path, where)
                    if not isinstance(obj_id, int) or isinstance(obj_id, bool):
                        raise DatasetError(
                            f"{path}: {where}: obj_id must be an integer, found {obj_id!r}"
                        )
                    R = _numbers(
                        _field(e, "cam_R_m2c", path, where), 9, path, where, "cam_R_m2c"
                    ).reshape(3, 3)
                    t = _numbers(_field(e, "cam_t_m2c", path, where), 3, path, where, "cam_t_m2c")
                    problem = _rotation_problem(R)
                    if problem is not None:
                        raise DatasetError(
                            f"{path}: {where} (obj_id {obj_id}): cam_R_m2c is not a rotation: {problem}"
                        )
                    R, t = _nearest_rotation(R), t / _MM_PER_M
                    R.setflags(write=False)  # cached and shared: read-only
                    t.setflags(write=False)
                    insts.append(GtInstance(obj_id, R, t))
                out[im_id] = insts
            self._gt = out
        return self._gt

    def gt(self, im_id: int) -> list[GtInstance]:
        """Ground-truth instances of image ``im_id`` (an image absent from scene_gt.json: [])."""
        im_id = self._check_im_id(im_id)
        return list(self._load_gt().get(im_id, []))

    @property
    def obj_ids(self) -> list[int]:
        """Object ids annotated anywhere in the scene, increasing."""
        return sorted({g.obj_id for insts in self._load_gt().values() for g in insts})

    def instances_of(self, obj_id: int) -> list[tuple[int, int]]:
        """All ``(im_id, gt_idx)`` of object ``obj_id``, by image id then gt index."""
        gt = self._load_gt()
        return [
            (im_id, i)
            for im_id in self.im_ids
            for i, g in enumerate(gt.get(im_id, []))
            if g.obj_id == int(obj_id)
        ]

    def find_instances(self, im_id: int, obj_id: int) -> list[int]:
        """gt indices of object ``obj_id`` in image ``im_id``."""
        return [i for i, g in enumerate(self.gt(im_id)) if g.obj_id == int(obj_id)]

    def find_instance(self, im_id: int, obj_id: int) -> int | None:
        """gt index of the first instance of ``obj_id`` in image ``im_id``, or None."""
        found = self.find_instances(im_id, obj_id)
        return found[0] if found else None

    # ---- scene_gt_info.json -----------------------------------------------------------------
    @property
    def has_gt_info(self) -> bool:
        return (self.path / "scene_gt_info.json").is_file()

    def _load_gt_info(self) -> dict[int, list[GtInfo]]:
        if self._gt_info is None:
            path = self.path / "scene_gt_info.json"
            data = _as_mapping(
                _load_json(
                    path,
                    "scene_gt_info.json",
                    "compute it with bop_toolkit's calc_gt_info.py or write the scene with BopSceneWriter",
                ),
                path,
                "scene_gt_info.json",
            )
            out = {}
            for key, entries in data.items():
                im_id = _im_id_key(key, path)
                if not isinstance(entries, list):
                    raise DatasetError(
                        f"{path}: image {im_id}: expected a list, found {type(entries).__name__}"
                    )
                infos = []
                for k, e in enumerate(entries):
                    where = f"image {im_id}, gt index {k}"
                    bo = _numbers(_field(e, "bbox_obj", path, where), 4, path, where, "bbox_obj")
                    bv = _numbers(
                        _field(e, "bbox_visib", path, where), 4, path, where, "bbox_visib"
                    )
                    counts = [
                        _numbers([_field(e, n, path, where)], 1, path, where, n)[0]
                        for n in ("px_count_all", "px_count_visib", "px_count_valid", "visib_fract")
                    ]
                    infos.append(
                        GtInfo(
                            tuple(int(v) for v in bo),
                            tuple(int(v) for v in bv),
                            int(counts[0]),
                            int(counts[1]),
                            int(counts[2]),
                            float(counts[3]),
                        )
                    )
                out[im_id] = infos
            self._gt_info = out
        return self._gt_info

    def gt_info(self, im_id: int) -> list[GtInfo]:
        """``scene_gt_info.json`` entries of image ``im_id``, one per gt instance."""
        im_id = self._check_im_id(im_id)
        infos = list(self._load_gt_info().get(im_id, []))
        if self.has_gt:
            n_gt = len(self._load_gt().get(im_id, []))
            if n_gt != len(infos):
                raise DatasetError(
                    f"{self.path / 'scene_gt_info.json'}: image {im_id} has {len(infos)} entries but "
                    f"scene_gt.json has {n_gt} instances; regenerate scene_gt_info.json"
                )
        return infos

    # ---- images -----------------------------------------------------------------------------
    def _find_file(self, sub: str, im_id: int, exts: Sequence[str]) -> Path | None:
        for ext in exts:
            p = self.path / sub / f"{im_id:06d}{ext}"
            if p.is_file():
                return p
        return None

    def rgb_path(self, im_id: int) -> Path:
        im_id = self._check_im_id(im_id)
        p = self._find_file("rgb", im_id, _RGB_EXTS)
        if p is None:
            raise DatasetError(
                f"{self.path / 'rgb' / f'{im_id:06d}.png'}: the colour image is missing "
                f"(no .png or .jpg for image {im_id}); restore the scene's rgb/ folder"
            )
        return p

    def rgb(self, im_id: int) -> np.ndarray:
        """Colour image, uint8 ``[H, W, 3]``, RGB order."""
        cv2 = _cv2()
        path = self.rgb_path(im_id)
        im = _read_image(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, "colour image")
        self._check_size(im, path)
        return np.ascontiguousarray(im[:, :, ::-1])

    @property
    def has_depth(self) -> bool:
        d = self.path / "depth"
        return d.is_dir() and any(d.iterdir())

    def depth(self, im_id: int) -> np.ndarray | None:
        """Depth, float32 metres ``[H, W]`` with 0 = no reading; None if the scene has no depth/."""
        cv2 = _cv2()
        im_id = self._check_im_id(im_id)
        if not self.has_depth:
            return None
        path = self._find_file("depth", im_id, _DEPTH_EXTS)
        if path is None:
            raise DatasetError(
                f"{self.path / 'depth' / f'{im_id:06d}.png'}: the depth image is missing although "
                "the scene has a depth/ folder; restore it"
            )
        raw = _read_image(path, cv2.IMREAD_UNCHANGED, "depth image")
        if raw.ndim != 2:
            raise DatasetError(
                f"{path}: a depth image must have one channel, found shape {raw.shape}"
            )
        self._check_size(raw, path)
        _, ds = self._load_cameras()[im_id]
        d = raw.astype(np.float64) * (ds / _MM_PER_M)
        d[~np.isfinite(d) | (d < 0)] = 0.0
        return d.astype(np.float32)

    def validate(self) -> None:
        """Check the whole scene cheaply (JSON files, every rgb/depth file present with the
        scene's size, read from the headers); DatasetError on the first problem."""
        ids = self.im_ids
        if self.has_gt:
            path = self.path / "scene_gt.json"
            extra = sorted(set(self._load_gt()) - set(ids))
            if extra:
                raise DatasetError(f"{path}: images {extra[:5]} are not in scene_camera.json")
        if self.has_gt_info:
            for im_id in ids:
                self.gt_info(im_id)
        w, h, ref = self._image_size()
        depth = self.has_depth
        for im_id in ids:
            paths = [self.rgb_path(im_id)]
            if depth:
                p = self._find_file("depth", im_id, _DEPTH_EXTS)
                if p is None:
                    raise DatasetError(
                        f"{self.path / 'depth' / f'{im_id:06d}.png'}: the depth image is missing"
                    )
                paths.append(p)
            for p in paths:
                if _image_size_of(p) != (w, h):
                    ws, hs = _image_size_of(p)
                    raise DatasetError(
                        f"{p}: image size {ws}x{hs} differs from the scene's {w}x{h} (from {ref})"
                    )

    def _mask(self, sub: str, im_id: int, gt_idx: int) -> np.ndarray | None:
        cv2 = _cv2()
        im_id = self._check_im_id(im_id)
        path = self.path / sub / f"{im_id:06d}_{int(gt_idx):06d}.png"
        if not path.is_file():
            return None
        im = _read_image(path, cv2.IMREAD_GRAYSCALE, "mask")
        self._check_size(im, path)
        return im > 127

    def mask(self, im_id: int, gt_idx: int) -> np.ndarray | None:
        """Full silhouette (inside the image), bool ``[H, W]``; None when the file is absent."""
        return self._mask("mask", im_id, gt_idx)

    def mask_visib(self, im_id: int, gt_idx: int) -> np.ndarray | None:
        """Visible part of the silhouette, bool ``[H, W]``; None when the file is absent."""
        return self._mask("mask_visib", im_id, gt_idx)


class BopDataset:
    """A BOP dataset root: models (``models/``, or ``models_eval/`` with ``models="models_eval"``,
    or any folder name under the root) and scenes ``<split>/<scene_id:06d>``."""

    def __init__(self, root: str | Path, models: str = "models"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: the dataset folder does not exist")
        self.models_dir = self.root / models
        self._models_info: dict[int, ModelInfo] | None = None

    def __repr__(self) -> str:
        return f"BopDataset({str(self.root)!r}, models={self.models_dir.name!r})"

    def _check_models_dir(self) -> None:
        if not self.models_dir.is_dir():
            raise DatasetError(
                f"{self.models_dir}: the models folder is missing; a BOP dataset keeps its object "
                "models in models/ (or models_eval/)"
            )

    def models_info(self) -> dict[int, ModelInfo]:
        """``{obj_id: ModelInfo}`` (metres) from ``models_info.json``."""
        if self._models_info is None:
            self._check_models_dir()
            self._models_info = read_models_info(self.models_dir / "models_info.json")
        return dict(self._models_info)

    def model_info(self, obj_id: int) -> ModelInfo:
        infos = self.models_info()
        if int(obj_id) not in infos:
            raise DatasetError(
                f"{self.models_dir / 'models_info.json'}: no entry for obj_id {obj_id} "
                f"(has {sorted(infos)})"
            )
        return infos[int(obj_id)]

    def model_path(self, obj_id: int) -> Path:
        """``models_dir/obj_{obj_id:06d}.ply``; DatasetError if it does not exist."""
        self._check_models_dir()
        path = self.models_dir / f"obj_{int(obj_id):06d}.ply"
        if not path.is_file():
            raise DatasetError(f"{path}: the model of obj_id {obj_id} is missing")
        return path

    def load_model(self, obj_id: int):
        """The model as a ``trimesh.Trimesh`` in metres (see :func:`gs2pose_ros.mesh.load_mesh`)."""
        from .mesh import load_mesh

        return load_mesh(self.model_path(obj_id), units="mm")

    def camera(self) -> CameraParams:
        """Dataset-wide intrinsics from ``camera.json``."""
        path = self.root / "camera.json"
        cam = _as_mapping(_load_json(path, "camera.json"), path, "camera.json")
        vals = {
            n: float(_numbers([_field(cam, n, path, "camera")], 1, path, "camera", n)[0])
            for n in ("fx", "fy", "cx", "cy", "width", "height")
        }
        ds = float(_numbers([cam.get("depth_scale", 1.0)], 1, path, "camera", "depth_scale")[0])
        K = np.array(
            [[vals["fx"], 0, vals["cx"]], [0, vals["fy"], vals["cy"]], [0, 0, 1]], dtype=np.float64
        )
        return CameraParams(K, ds, int(vals["width"]), int(vals["height"]))

    def scene_ids(self, split: str) -> list[int]:
        """Scene ids found under ``<root>/<split>`` (folders with scene_camera.json)."""
        d = self.root / split
        if not d.is_dir():
            raise DatasetError(f"{d}: the split folder does not exist")
        return sorted(
            int(p.name)
            for p in d.iterdir()
            if p.name.isdigit() and (p / "scene_camera.json").is_file()
        )

    def scene(self, split: str, scene_id: int) -> BopScene:
        return BopScene(self.root / split / f"{int(scene_id):06d}")


def open_scene(path: str | Path) -> BopScene:
    """A scene from either a scene folder (with scene_camera.json), a split folder or a dataset
    root holding exactly one scene (e.g. ``lmo_scene2`` -> ``lmo_scene2/test/000002``)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: does not exist; give a BOP scene folder or dataset root")
    if (path / "scene_camera.json").is_file():
        return BopScene(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: not a folder; give a BOP scene folder or dataset root")
    found = sorted(
        {p.parent for p in path.glob("*/scene_camera.json")}
        | {p.parent for p in path.glob("*/*/scene_camera.json")}
    )
    if len(found) == 1:
        return BopScene(found[0])
    if not found:
        raise DatasetError(
            f"{path}: no BOP scene here (no scene_camera.json in it, one or two levels down); "
            "give a scene folder such as <root>/test/000002"
        )
    shown = ", ".join(str(p.relative_to(path)) for p in found[:6]) + (
        " ..." if len(found) > 6 else ""
    )
    raise DatasetError(f"{path}: holds {len(found)} scenes ({shown}); give one scene folder")


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def _as_bool_mask(m: Any, shape: tuple[int, int], what: str) -> np.ndarray:
    a = np.asarray(m)
    if a.shape != shape:
        raise InputError(f"{what}: expected shape {shape}, got {a.shape}")
    if a.dtype != bool:
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise InputError(f"{what}: expected a bool mask, got dtype {a.dtype}")
        a = a != 0
    return a


class BopSceneWriter:
    """Writes one BOP scene: images as frames are added, the JSON files on :meth:`close`.

    ``depth_scale``: millimetres per depth-PNG unit (default 0.1, see the module docstring).
    ``image_format``: ``"png"`` (default) or ``"jpg"`` for rgb/. An existing scene
    (scene_camera.json present) is refused unless ``overwrite=True``, which first removes
    its rgb/, depth/, mask/, mask_visib/ folders and JSON files. Use as a context manager
    (closes on exit, also after an exception, so the frames written so far form a scene).
    """

    def __init__(
        self,
        scene_dir: str | Path,
        depth_scale: float = 0.1,
        image_format: str = "png",
        overwrite: bool = False,
    ):
        self.path = Path(scene_dir)
        if not (
            isinstance(depth_scale, (int, float)) and math.isfinite(depth_scale) and depth_scale > 0
        ):
            raise InputError(
                f"BopSceneWriter: depth_scale must be a positive number of mm, got {depth_scale!r}"
            )
        self.depth_scale = float(depth_scale)
        fmt = image_format.lower().lstrip(".")
        if fmt == "jpeg":
            fmt = "jpg"
        if fmt not in ("png", "jpg"):
            raise InputError(
                f"BopSceneWriter: image_format must be 'png' or 'jpg', got {image_format!r}"
            )
        self.image_format = fmt
        if (self.path / "scene_camera.json").exists():
            if not overwrite:
                raise DatasetError(
                    f"{self.path}: already holds a scene (scene_camera.json); pass overwrite=True "
                    "or choose another folder"
                )
            for sub in ("rgb", "depth", "mask", "mask_visib"):
                if (self.path / sub).is_dir():
                    shutil.rmtree(self.path / sub)
            for name in ("scene_camera.json", "scene_gt.json", "scene_gt_info.json"):
                (self.path / name).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        self._camera: dict[int, dict] = {}
        self._gt: dict[int, list] = {}
        self._gt_info: dict[int, list] = {}
        self._with_info: bool | None = None
        self._with_depth: bool | None = None
        self._size: tuple[int, int] | None = None
        self._closed = False

    def __enter__(self) -> "BopSceneWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            try:
                self.close()
            except Exception:
                pass  # keep the original exception

    def _imwrite(self, path: Path, im: np.ndarray) -> None:
        cv2 = _cv2()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jpg":
            params = [cv2.IMWRITE_JPEG_QUALITY, 95]
        else:
            params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
        ok, buf = cv2.imencode(path.suffix, im, params)
        if not ok:
            raise DatasetError(f"{path}: cannot encode the image")
        try:
            buf.tofile(str(path))
        except OSError as e:
            raise DatasetError(f"{path}: cannot write ({e})") from None

    def _depth_to_png(self, depth: np.ndarray, im_id: int) -> np.ndarray:
        d = np.asarray(depth, dtype=np.float64)
        valid = np.isfinite(d) & (d > 0)
        units = np.zeros(d.shape, dtype=np.float64)
        units[valid] = np.round(d[valid] * _MM_PER_M / self.depth_scale)
        over = int(np.count_nonzero(units > 65535))
        if over:
            warnings.warn(
                f"BopSceneWriter {self.path}: image {im_id}: {over} depth pixels beyond "
                f"{65535 * self.depth_scale / _MM_PER_M:.4g} m were clipped (depth_scale "
                f"{self.depth_scale:g} mm); use a larger depth_scale",
                stacklevel=3,
            )
        units[valid] = np.clip(units[valid], 1, 65535)
        return units.astype(np.uint16)

    def add_frame(
        self,
        im_id: int,
        rgb: np.ndarray,
        K: np.ndarray,
        instances: Sequence[tuple[int, np.ndarray]] = (),
        depth: np.ndarray | None = None,
        masks: Sequence[np.ndarray] | None = None,
        masks_visib: Sequence[np.ndarray] | None = None,
        px_count_all: Sequence[int] | None = None,
        bbox_obj: Sequence[Sequence[int]] | None = None,
    ) -> None:
        """Add image ``im_id``: rgb uint8 ``[H, W, 3]``, K 3x3, ``instances`` = ``[(obj_id,
        T_cam_obj 4x4 metres)]``, depth ``[H, W]`` metres (0/NaN = no reading) or None, and per
        instance the full silhouette ``masks`` (inside the image) and ``masks_visib`` (bool
        ``[H, W]``). ``px_count_all`` / ``bbox_obj`` (per instance) override the values computed
        from ``masks``, for silhouettes that leave the image. scene_gt_info.json is written when
        every frame has ``masks_visib`` (and ``masks`` or ``px_count_all``/``bbox_obj``)."""
        if self._closed:
            raise InputError(f"BopSceneWriter {self.path}: add_frame after close()")
        if isinstance(im_id, bool) or not isinstance(im_id, (int, np.integer)) or int(im_id) < 0:
            raise InputError(f"add_frame: im_id must be a non-negative integer, got {im_id!r}")
        im_id = int(im_id)
        if im_id in self._camera:
            raise InputError(f"add_frame: image {im_id} was already added to {self.path}")
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InputError(
                f"add_frame (image {im_id}): rgb must be uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}"
            )
        H, W = rgb.shape[:2]
        if self._size is None:
            self._size = (H, W)
        elif self._size != (H, W):
            raise InputError(
                f"add_frame (image {im_id}): image size {W}x{H} differs from the scene's "
                f"{self._size[1]}x{self._size[0]}"
            )
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise GeometryError(
                f"add_frame (image {im_id}): K must be a finite 3x3 matrix with fx, fy > 0, got {K.tolist()}"
            )
        n = len(instances)
        gts = []
        for i, inst in enumerate(instances):
            try:
                obj_id, T = inst
            except (TypeError, ValueError):
                raise InputError(
                    f"add_frame (image {im_id}): instance {i} must be (obj_id, T_cam_obj)"
                ) from None
            T = np.asarray(T, dtype=np.float64)
            if isinstance(obj_id, bool) or not isinstance(obj_id, (int, np.integer)):
                raise InputError(
                    f"add_frame (image {im_id}): instance {i}: obj_id must be an integer, got {obj_id!r}"
                )
            if T.shape != (4, 4) or not np.all(np.isfinite(T)):
                raise GeometryError(
                    f"add_frame (image {im_id}): instance {i}: T_cam_obj must be a finite 4x4 matrix"
                )
            problem = _rotation_problem(T[:3, :3])
            if problem is not None:
                raise GeometryError(
                    f"add_frame (image {im_id}): instance {i}: T_cam_obj[:3, :3] is not a rotation: {problem}"
                )
            gts.append(
                {
                    "cam_R_m2c": [float(v) for v in T[:3, :3].ravel()],
                    "cam_t_m2c": [float(v) * _MM_PER_M for v in T[:3, 3]],
                    "obj_id": int(obj_id),
                }
            )

        def per_instance(seq, name):
            if seq is None:
                return None
            seq = list(seq)
            if len(seq) != n:
                raise InputError(
                    f"add_frame (image {im_id}): {name} has {len(seq)} entries for {n} instances"
                )
            return seq

        masks = per_instance(masks, "masks")
        masks_visib = per_instance(masks_visib, "masks_visib")
        px_count_all = per_instance(px_count_all, "px_count_all")
        bbox_obj = per_instance(bbox_obj, "bbox_obj")
        if masks is not None:
            masks = [
                _as_bool_mask(m, (H, W), f"add_frame (image {im_id}): masks[{i}]")
                for i, m in enumerate(masks)
            ]
        if masks_visib is not None:
            masks_visib = [
                _as_bool_mask(m, (H, W), f"add_frame (image {im_id}): masks_visib[{i}]")
                for i, m in enumerate(masks_visib)
            ]

        if depth is not None:
            depth = np.asarray(depth)
            if depth.shape != (H, W) or not (
                np.issubdtype(depth.dtype, np.floating) or np.issubdtype(depth.dtype, np.integer)
            ):
                raise InputError(
                    f"add_frame (image {im_id}): depth must be a numeric [H, W] = {(H, W)} array, got {depth.dtype} {depth.shape}"
                )
        with_depth = depth is not None
        if self._with_depth is None:
            self._with_depth = with_depth
        elif self._with_depth != with_depth:
            raise InputError(
                f"add_frame (image {im_id}): depth is {'given' if with_depth else 'missing'} but "
                f"was {'missing' if with_depth else 'given'} for earlier frames; a scene has depth for all or none"
            )
        with_info = masks_visib is not None and (
            masks is not None or (px_count_all is not None and bbox_obj is not None) or n == 0
        )
        if n == 0 and self._with_info is not None:
            with_info = self._with_info  # an empty frame fits either way
        if self._with_info is None and n > 0:
            self._with_info = with_info
        elif self._with_info is not None and self._with_info != with_info:
            raise InputError(
                f"add_frame (image {im_id}): masks_visib (with masks or px_count_all+bbox_obj) "
                f"{'given' if with_info else 'missing'} but {'missing' if with_info else 'given'} for "
                "earlier frames; scene_gt_info.json needs them for every frame or none"
            )
        infos = []
        if with_info and n > 0:
            for i in range(n):
                infos.append(
                    compute_gt_info(
                        masks_visib[i],
                        masks[i] if masks is not None else None,
                        depth if with_depth else None,
                        px_count_all[i] if px_count_all is not None else None,
                        bbox_obj[i] if bbox_obj is not None else None,
                    ).as_json()
                )

        # all checks passed: write the files
        ext = "png" if self.image_format == "png" else "jpg"
        self._imwrite(
            self.path / "rgb" / f"{im_id:06d}.{ext}", np.ascontiguousarray(rgb[:, :, ::-1])
        )
        if with_depth:
            self._imwrite(
                self.path / "depth" / f"{im_id:06d}.png", self._depth_to_png(depth, im_id)
            )
        for sub, ms in (("mask", masks), ("mask_visib", masks_visib)):
            for i, m in enumerate(ms or []):
                self._imwrite(
                    self.path / sub / f"{im_id:06d}_{i:06d}.png", m.astype(np.uint8) * 255
                )
        self._camera[im_id] = {
            "cam_K": [float(v) for v in K.ravel()],
            "depth_scale": self.depth_scale,
        }
        self._gt[im_id] = gts
        self._gt_info[im_id] = infos

    def close(self) -> None:
        """Write scene_camera.json, scene_gt.json and (when masks were given) scene_gt_info.json."""
        if self._closed:
            return
        self._closed = True
        _write_text(self.path / "scene_camera.json", _dump_json_by_id(self._camera))
        _write_text(self.path / "scene_gt.json", _dump_json_by_id(self._gt))
        if self._with_info or (self._with_info is None and self._camera):
            _write_text(self.path / "scene_gt_info.json", _dump_json_by_id(self._gt_info))
