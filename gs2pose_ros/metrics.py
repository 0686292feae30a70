"""Pose error metrics as bop_toolkit (``bop_toolkit_lib/pose_error.py``) defines them.

numpy, float64. Points, translations and diameters in metres (the caller converts from the BOP
millimetres); rotation errors in degrees.

- ADD (``add``): mean distance between model points under the estimated and the true pose.
- ADD-S (``adds``, bop_toolkit's ``adi``): for every point under the *true* pose, the distance to
  the nearest point under the *estimated* pose, averaged. Nearest neighbours come from a KD-tree
  (scipy ``cKDTree``), never all pairs.
- A pose is correct (the LM-O "ADD(-S) < 0.1 d" criterion) when the error is below
  ``k * diameter``.
- ADD up to a turn about an axis (``add_up_to_axis_turn``): ADD after the best turn of the
  estimate about an axis of the object; for an object with a near-symmetry axis (a mug) it tells
  a pose that is right but for the turn the view cannot fix (handle out of sight) from one whose
  position or axis is wrong. Not a BOP metric; the project's diagnostic.
- The BOP 2019 metrics (``vsd``, ``mssd``, ``mspd``, their recalls and the average recall AR,
  :class:`Bop19Evaluator`), with the settings of bop_toolkit's ``scripts/eval_bop19_pose.py``.
  VSD compares only the surface the camera sees, so a pose that is right but for a turn the view
  cannot fix counts as right there (and wrong under MSSD and MSPD, which use the whole model and
  the object's declared symmetries). Written here because bop_toolkit is not on PyPI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from gs2pose_ros.errors import GeometryError

__all__ = [
    "add",
    "adds",
    "add_up_to_axis_turn",
    "rotation_error_deg",
    "translation_error",
    "PoseErrors",
    "PoseErrorEvaluator",
    "confidence_auc",
    "symmetry_transformations",
    "mssd",
    "mspd",
    "vsd",
    "depth_to_distance",
    "recall",
    "Bop19Evaluator",
]


def _R(R, name: str) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3) or not np.isfinite(R).all():
        raise GeometryError(f"{name} must be a finite 3x3 rotation matrix, got shape {R.shape}")
    return R


def _vec3(t, name: str) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    if t.size != 3 or not np.isfinite(t).all():
        raise GeometryError(
            f"{name} must be a finite translation with 3 entries (shape (3,) or (3, 1)), "
            f"got shape {t.shape}"
        )
    return t.reshape(3)


def _points(points) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or p.shape[0] == 0:
        raise GeometryError(
            f"points must be a non-empty [N, 3] array of model points, got shape {p.shape}"
        )
    if not np.isfinite(p).all():
        raise GeometryError("points contains NaN or inf; pass finite model points")
    return p


def _transform(R: np.ndarray, t: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ R.T + t


def add(R_est, t_est, R_gt, t_gt, points) -> float:
    """ADD: mean distance between model points posed by the estimate and by the ground truth.

    R_*: [3, 3], t_*: [3] or [3, 1], points: [N, 3] (model frame) -> float (unit of t and points).

    Example:
        >>> add(np.eye(3), [0, 0, 0.5], np.eye(3), [0, 0, 0], np.zeros((10, 3)))
        0.5
    """
    p = _points(points)
    e = _transform(_R(R_est, "R_est"), _vec3(t_est, "t_est"), p)
    g = _transform(_R(R_gt, "R_gt"), _vec3(t_gt, "t_gt"), p)
    return float(np.linalg.norm(e - g, axis=1).mean())


def adds(R_est, t_est, R_gt, t_gt, points) -> float:
    """ADD-S (bop_toolkit ``adi``): mean over ground-truth-posed points of the distance to the
    nearest estimate-posed point.

    R_*: [3, 3], t_*: [3] or [3, 1], points: [N, 3] -> float. Builds a KD-tree per call; use
    :class:`PoseErrorEvaluator` to reuse one over many poses.

    Example:
        >>> pts = np.array([[1.0, 0, 0], [-1.0, 0, 0]])
        >>> Rz180 = np.diag([-1.0, -1.0, 1.0])
        >>> adds(Rz180, [0, 0, 0], np.eye(3), [0, 0, 0], pts)
        0.0
    """
    p = _points(points)
    e = _transform(_R(R_est, "R_est"), _vec3(t_est, "t_est"), p)
    g = _transform(_R(R_gt, "R_gt"), _vec3(t_gt, "t_gt"), p)
    d, _ = cKDTree(e).query(g, k=1)
    return float(d.mean())


def add_up_to_axis_turn(R_est, t_est, R_gt, t_gt, points, axis, step_deg: float = 5.0) -> tuple[float, float]:
    """The least ADD of the estimate turned about ``axis`` -> ``(ADD, turn in degrees)``.

    R_*: [3, 3], t_*: [3], points: [N, 3] (model frame), axis: ``(direction [3], point [3])`` in the
    model frame (``mesh.near_symmetry_axes``). The turn that best matches is searched every
    ``step_deg`` over the full circle, then to a twentieth of that around the best (ADD is smooth
    in the turn). Hand-written: a diagnostic of this project, not in bop_toolkit.

    Example:
        >>> pts = np.array([[0.05, 0, 0], [0, 0.05, 0], [0, 0, 0.1]])
        >>> Rz = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # 90 deg about z
        >>> e, deg = add_up_to_axis_turn(Rz, [0, 0, 0.5], np.eye(3), [0, 0, 0.5], pts, ([0, 0, 1], [0, 0, 0]))
        >>> round(e, 9), round(deg)
        (0.0, -90)
    """
    p = _points(points)
    R_e, t_e = _R(R_est, "R_est"), _vec3(t_est, "t_est")
    g = _transform(_R(R_gt, "R_gt"), _vec3(t_gt, "t_gt"), p)
    e = _vec3(axis[0], "axis direction")
    e = e / max(float(np.linalg.norm(e)), 1e-12)
    c = _vec3(axis[1], "axis point")
    K = np.array([[0.0, -e[2], e[1]], [e[2], 0.0, -e[0]], [-e[1], e[0], 0.0]])

    def err(deg: np.ndarray) -> np.ndarray:
        th = np.radians(deg)[:, None, None]
        R_turn = np.eye(3) + np.sin(th) * K + (1.0 - np.cos(th)) * (K @ K)  # Rodrigues, [M, 3, 3]
        q = np.einsum("mij,nj->mni", R_turn, p - c) + c  # the model turned about the axis
        return np.linalg.norm(q @ R_e.T + t_e - g, axis=-1).mean(axis=1)

    coarse = np.arange(-180.0, 180.0, step_deg)
    best = float(coarse[int(np.argmin(err(coarse)))])
    fine = best + np.linspace(-step_deg, step_deg, 41)
    errs = err(fine)
    k = int(np.argmin(errs))
    deg = (float(fine[k]) + 180.0) % 360.0 - 180.0
    return float(errs[k]), deg


def rotation_error_deg(R_est, R_gt) -> float:
    """Angle of ``R_est R_gt^-1`` in degrees, ``acos((trace - 1) / 2)`` with the cosine clipped.

    R_*: [3, 3] -> float in [0, 180].

    Example:
        >>> Rz90 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
        >>> round(rotation_error_deg(Rz90, np.eye(3)), 6)
        90.0
    """
    R_est, R_gt = _R(R_est, "R_est"), _R(R_gt, "R_gt")
    # inv rather than transpose, as bop_toolkit: identical for rotations, and the GT may be
    # slightly non-orthonormal.
    c = 0.5 * (np.trace(R_est @ np.linalg.inv(R_gt)) - 1.0)
    return math.degrees(math.acos(min(1.0, max(-1.0, float(c)))))


def translation_error(t_est, t_gt) -> float:
    """Euclidean distance between translations, in their unit.

    t_*: [3] or [3, 1] -> float.

    Example:
        >>> translation_error([0.0, 0.03, 0.04], [0.0, 0.0, 0.0])
        0.05
    """
    return float(np.linalg.norm(_vec3(t_gt, "t_gt") - _vec3(t_est, "t_est")))


@dataclass(frozen=True)
class PoseErrors:
    """Errors of one estimated pose. Distances in the unit of the points (metres), ``re`` in degrees.

    ``add_or_adds`` is ADD-S for a symmetric object and ADD otherwise; ``correct`` is
    ``add_or_adds < k * diameter`` for the ``k`` the evaluator was asked with.
    """

    add: float
    adds: float
    add_or_adds: float
    re: float
    te: float
    correct: bool


class PoseErrorEvaluator:
    """Scores poses of one object, building the KD-tree of its model points once.

    points: [N, 3] model points (e.g. mesh vertices) in metres, diameter in metres,
    symmetric: score with ADD-S instead of ADD.

    The tree holds the model-frame points: the nearest estimate-posed point to a ground-truth-posed
    point ``R_g x + t_g`` is the nearest model point to ``R_e^T (R_g x + t_g - t_e)``, so every
    query reuses it (same numbers as bop_toolkit's ``adi``, which rebuilds a tree per pose, as long
    as ``R_est`` is orthonormal; the ground truth may be slightly off).

    Example:
        >>> ev = PoseErrorEvaluator(np.random.rand(500, 3) * 0.1, diameter=0.17, symmetric=False)
        >>> err = ev.evaluate(np.eye(3), [0, 0, 0.5], np.eye(3), [0, 0, 0.51])
        >>> err.correct  # 1 cm < 0.1 * 17 cm
        True
    """

    def __init__(self, points, diameter: float, symmetric: bool = False) -> None:
        self.points = _points(points)
        if not (math.isfinite(diameter) and diameter > 0):
            raise GeometryError(
                f"PoseErrorEvaluator: diameter = {diameter} must be a positive number of metres "
                "(models_info.json gives millimetres: divide by 1000)"
            )
        self.diameter = float(diameter)
        self.symmetric = bool(symmetric)
        self._tree = cKDTree(self.points)

    def add(self, R_est, t_est, R_gt, t_gt) -> float:
        """ADD of one pose (see :func:`add`)."""
        return add(R_est, t_est, R_gt, t_gt, self.points)

    def adds(self, R_est, t_est, R_gt, t_gt) -> float:
        """ADD-S of one pose (see :func:`adds`), using the cached tree."""
        R_e, t_e = _R(R_est, "R_est"), _vec3(t_est, "t_est")
        g = _transform(_R(R_gt, "R_gt"), _vec3(t_gt, "t_gt"), self.points)
        # Rigid motions preserve distances: query in the estimate's model frame. (g - t) @ R
        # is R^T (g - t) for row vectors.
        d, _ = self._tree.query((g - t_e) @ R_e, k=1)
        return float(d.mean())

    def add_or_adds(self, R_est, t_est, R_gt, t_gt) -> float:
        """ADD-S for a symmetric object, ADD otherwise."""
        f = self.adds if self.symmetric else self.add
        return f(R_est, t_est, R_gt, t_gt)

    def is_correct(self, R_est, t_est, R_gt, t_gt, k: float = 0.1) -> bool:
        """Whether ``add_or_adds < k * diameter`` (the "ADD(-S) 0.1 d" criterion)."""
        return self.add_or_adds(R_est, t_est, R_gt, t_gt) < k * self.diameter

    def evaluate(self, R_est, t_est, R_gt, t_gt, k: float = 0.1) -> PoseErrors:
        """All errors of one pose at once.

        Example:
            >>> ev = PoseErrorEvaluator(np.eye(3), diameter=1.414)
            >>> ev.evaluate(np.eye(3), [0, 0, 0], np.eye(3), [0, 0, 0]).add
            0.0
        """
        e_add = self.add(R_est, t_est, R_gt, t_gt)
        e_adds = self.adds(R_est, t_est, R_gt, t_gt)
        main = e_adds if self.symmetric else e_add
        return PoseErrors(
            add=e_add,
            adds=e_adds,
            add_or_adds=main,
            re=rotation_error_deg(R_est, R_gt),
            te=translation_error(t_est, t_gt),
            correct=bool(main < k * self.diameter),
        )


def confidence_auc(right, wrong) -> float:
    """How well a confidence separates right from wrong poses: the probability that a random right
    pose scores higher than a random wrong one (ties count half; ROC AUC). NaN when either is empty.

    Example:
        >>> confidence_auc([0.9, 0.8], [0.1, 0.8])
        0.875
    """
    pos = np.asarray(right, dtype=np.float64).ravel()
    neg = np.asarray(wrong, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(np.mean(pos[:, None] > neg[None, :]) + 0.5 * np.mean(pos[:, None] == neg[None, :]))


# --------------------------------------------------------------------------------------------------
# BOP 2019: VSD, MSSD, MSPD and the average recall
# --------------------------------------------------------------------------------------------------

#: bop_toolkit's ``scripts/eval_bop19_pose.py``: VSD's visibility tolerance (metres; 15 mm for
#: every dataset but ITODD), its misalignment tolerances and correctness thresholds (fractions of
#: the diameter, and of the visible surface), MSSD's thresholds (fractions of the diameter), MSPD's
#: (pixels at a 640-pixel-wide image, scaled by ``width / 640``), the step of a continuous
#: symmetry's discretisation (fraction of the diameter the surface may move per step).
BOP19_VSD_DELTA = 0.015
BOP19_VSD_TAUS = tuple(round(0.05 * k, 2) for k in range(1, 11))
BOP19_VSD_THRESHOLDS = BOP19_VSD_TAUS
BOP19_MSSD_THRESHOLDS = BOP19_VSD_TAUS
BOP19_MSPD_THRESHOLDS_PX = tuple(float(5 * k) for k in range(1, 11))
BOP19_MAX_SYM_DISC_STEP = 0.01


def symmetry_transformations(symmetries_discrete=(), symmetries_continuous=(),
                             max_sym_disc_step: float = BOP19_MAX_SYM_DISC_STEP) -> list[tuple[np.ndarray, np.ndarray]]:
    """The object's symmetry transformations ``[(R [3, 3], t [3])]`` (model frame, metres), the
    identity first, as bop_toolkit's ``misc.get_symmetry_transformations``: every discrete one
    (4x4), each continuous one (``{"axis", "offset"}``) sampled every ``2 pi / ceil(pi /
    max_sym_disc_step)`` (a point at the diameter moves at most that fraction of it per step), and
    their compositions. (bop_toolkit's sweep starts one step past the identity; here it starts
    at it, so an exact pose scores 0.)

    Example:
        >>> syms = symmetry_transformations([], [{"axis": [0, 0, 1], "offset": [0, 0, 0]}])
        >>> len(syms)  # ceil(pi / 0.01) turns about z
        315
    """
    disc = [(np.eye(3), np.zeros(3))]
    for S in symmetries_discrete:
        S = np.asarray(S, dtype=np.float64).reshape(4, 4)
        disc.append((S[:3, :3], S[:3, 3]))
    cont = []
    for sym in symmetries_continuous:
        a = _vec3(sym["axis"], "symmetry axis")
        a = a / max(float(np.linalg.norm(a)), 1e-12)
        o = _vec3(sym.get("offset", (0.0, 0.0, 0.0)), "symmetry offset")
        n = int(math.ceil(math.pi / max_sym_disc_step))
        for R in Rotation.from_rotvec(np.outer(2.0 * np.pi * np.arange(n) / n, a)).as_matrix():
            cont.append((R, o - R @ o))  # about the axis through the offset
    if not cont:
        return disc
    return [(Rc @ Rd, Rc @ td + tc) for Rd, td in disc for Rc, tc in cont]


def _posed_under_symmetries(R_est, t_est, R_gt, t_gt, points, syms) -> tuple[np.ndarray, np.ndarray]:
    """The model points under the estimate [N, 3] and under the ground truth composed with each
    symmetry [S, N, 3] (None: the identity only): what MSSD and MSPD both measure."""
    p = _points(points)
    e = _transform(_R(R_est, "R_est"), _vec3(t_est, "t_est"), p)
    R_g, t_g = _R(R_gt, "R_gt"), _vec3(t_gt, "t_gt")
    syms = syms or [(np.eye(3), np.zeros(3))]
    Rs = np.stack([R_g @ R for R, _ in syms])               # [S, 3, 3]
    ts = np.stack([R_g @ t + t_g for _, t in syms])         # [S, 3]
    return e, np.einsum("sij,nj->sni", Rs, p) + ts[:, None, :]


def _least_largest_distance(e: np.ndarray, g: np.ndarray) -> float:
    """Over the symmetries, the least of the largest distance between ``e`` [N, D] and ``g[s]``
    ([S, N, D])."""
    return float(np.linalg.norm(g - e[None], axis=-1).max(axis=1).min())


def mssd(R_est, t_est, R_gt, t_gt, points, syms=None) -> float:
    """Maximum Symmetry-aware Surface Distance: over the symmetries, the least of the largest
    distance between a model point under the estimate and under the ground truth (composed with
    the symmetry). R_*: [3, 3], t_*: [3], points: [N, 3], syms: :func:`symmetry_transformations`
    (None: the identity only) -> float (unit of t and points).

    Example:
        >>> mssd(np.eye(3), [0, 0, 0.5], np.eye(3), [0, 0, 0.51], np.zeros((4, 3)))  # doctest: +ELLIPSIS
        0.0100...
    """
    return _least_largest_distance(*_posed_under_symmetries(R_est, t_est, R_gt, t_gt, points, syms))


def _project(K: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[..., 3] camera-frame points -> [..., 2] pixels (numpy; ``camera.project`` is torch)."""
    z = x[..., 2:3]
    z = np.where(np.abs(z) < 1e-12, 1e-12, z)
    return np.stack([K[0, 0] * x[..., 0] / z[..., 0] + K[0, 2], K[1, 1] * x[..., 1] / z[..., 0] + K[1, 2]], axis=-1)


def mspd(R_est, t_est, R_gt, t_gt, K, points, syms=None) -> float:
    """Maximum Symmetry-aware Projection Distance: as :func:`mssd` on the points' projections
    (pixels). K: [3, 3] intrinsics.

    Example:
        >>> K = np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
        >>> mspd(np.eye(3), [0.01, 0, 0.5], np.eye(3), [0, 0, 0.5], K, np.zeros((4, 3)))
        10.0
    """
    K = np.asarray(K, dtype=np.float64)
    e, g = _posed_under_symmetries(R_est, t_est, R_gt, t_gt, points, syms)
    return _least_largest_distance(_project(K, e), _project(K, g))


def depth_to_distance(depth, K) -> np.ndarray:
    """[H, W] depth (z) -> distance from the camera centre along each pixel's ray, as bop_toolkit's
    ``misc.depth_im_to_dist_im_fast`` (pixel ``(u, v)`` at ``u, v``); 0 stays 0 (no reading)."""
    depth = np.asarray(depth, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    h, w = depth.shape
    x = (np.arange(w) - K[0, 2]) / K[0, 0]
    y = (np.arange(h) - K[1, 2]) / K[1, 1]
    return depth * np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + 1.0)


def vsd(dist_est, dist_gt, dist_test, delta: float, taus) -> list[float]:
    """Visible Surface Discrepancy (BOP 2019: "bop19" visibility, step cost) per tolerance in
    ``taus``, from [H, W] distance images (:func:`depth_to_distance`; 0 = no surface / no reading)
    of the model under the estimate and the ground truth and of the test image.

    A model pixel is visible where it lies at most ``delta`` behind the test image or the test has
    no reading; the estimate's visible set also takes every ground-truth-visible pixel it covers.
    Error = (pixels of the union not in both + pixels of both whose distances differ by ``tau`` or
    more) / pixels of the union; 1 when the union is empty.

    Example:
        >>> d = np.zeros((4, 4)); d[1:3, 1:3] = 1.0
        >>> vsd(d, d, d, 0.015, [0.01])
        [0.0]
        >>> vsd(d + (d > 0) * 0.05, d, d, 0.015, [0.01, 0.1])  # 5 cm too far: wrong at 1 cm, right at 10
        [1.0, 0.0]
    """
    est, gt, test = (np.asarray(a, dtype=np.float64) for a in (dist_est, dist_gt, dist_test))
    visib_gt = (gt > 0) & ((gt - test <= delta) | (test == 0))
    visib_est = ((est > 0) & ((est - test <= delta) | (test == 0))) | (visib_gt & (est > 0))
    inter = visib_gt & visib_est
    union = int((visib_gt | visib_est).sum())
    if union == 0:
        return [1.0 for _ in taus]
    comp = union - int(inter.sum())
    d = np.abs(gt[inter] - est[inter])
    return [float((int((d >= tau).sum()) + comp) / union) for tau in taus]


def recall(errors, thresholds) -> float:
    """BOP's recall of one metric: the mean over ``thresholds`` of the share of ``errors`` below
    it; ``errors`` [N] (inf or NaN = no pose: a miss) or [N, T] (VSD: one column per tolerance,
    each compared with every threshold). NaN for no errors.

    Example:
        >>> recall([0.01, 0.2, float("inf")], [0.05, 0.5])
        0.5
    """
    e = np.asarray(errors, dtype=np.float64)
    if e.size == 0:
        return float("nan")
    e = np.where(np.isfinite(e), e, np.inf)
    th = np.asarray(thresholds, dtype=np.float64)
    return float((e[..., None] < th).mean())


class Bop19Evaluator:
    """The BOP 2019 errors of poses of one object (:func:`vsd`, :func:`mssd`, :func:`mspd`) and
    their average recall.

    points: [N, 3] model points (metres), diameter (metres), syms: :func:`symmetry_transformations`,
    renderer: a ``mesh.MeshDepthRenderer`` of the model (None: no VSD, e.g. without test depth).

    Example::

        ev = Bop19Evaluator(points, diameter, symmetry_transformations(...), MeshDepthRenderer(v, f))
        e = ev.errors(T_est, T_gt, K, 640, depth)    # {"vsd": [10], "mssd": m, "mspd": px, "width": 640}
        Bop19Evaluator.average_recall([e, None, ...], diameter)   # {"ar", "ar_vsd", ...}; None: no pose
    """

    def __init__(self, points, diameter: float, syms=None, renderer=None) -> None:
        self.points = _points(points)
        self.diameter = float(diameter)
        self.syms = list(syms) if syms else [(np.eye(3), np.zeros(3))]
        self.renderer = renderer

    def errors(self, T_est, T_gt, K, width: int, depth=None) -> dict:
        """``{"mssd": metres, "mspd": pixels, "width": width}`` plus ``"vsd"`` (one error per
        ``BOP19_VSD_TAUS``) when there is a renderer and a test ``depth`` [H, W] (metres, 0 = no
        reading). ``width``: the image's, which scales MSPD's thresholds."""
        T_est, T_gt = np.asarray(T_est, dtype=np.float64), np.asarray(T_gt, dtype=np.float64)
        K = np.asarray(K, dtype=np.float64)
        # posed once for both (a continuous symmetry: 315 copies of the model)
        e, g = _posed_under_symmetries(T_est[:3, :3], T_est[:3, 3], T_gt[:3, :3], T_gt[:3, 3], self.points, self.syms)
        out = {"mssd": _least_largest_distance(e, g),
               "mspd": _least_largest_distance(_project(K, e), _project(K, g)), "width": int(width)}
        if self.renderer is not None and depth is not None:
            depth = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0, posinf=0.0)
            h, w = depth.shape
            d_est = depth_to_distance(self.renderer.render(T_est, K, w, h), K)
            d_gt = depth_to_distance(self.renderer.render(T_gt, K, w, h), K)
            taus = [tau * self.diameter for tau in BOP19_VSD_TAUS]
            out["vsd"] = vsd(d_est, d_gt, depth_to_distance(depth, K), BOP19_VSD_DELTA, taus)
        return out

    @staticmethod
    def average_recall(errors: list, diameter: float) -> dict:
        """``{"ar_mssd", "ar_mspd"}`` and, when every pose has VSD, ``"ar_vsd"`` and ``"ar"`` (their
        mean, BOP's score) over ``errors`` (dicts of :meth:`errors`; None = no pose, a miss)."""
        out = {}
        if not errors:
            return out
        inf = float("inf")
        out["ar_mssd"] = recall([e["mssd"] if e else inf for e in errors],
                                [t * diameter for t in BOP19_MSSD_THRESHOLDS])
        # MSPD's thresholds are for a 640-pixel-wide image: compare the error at that width
        out["ar_mspd"] = recall([e["mspd"] * 640.0 / e["width"] if e else inf for e in errors],
                                BOP19_MSPD_THRESHOLDS_PX)
        if any(e is not None for e in errors) and all(e is None or "vsd" in e for e in errors):
            out["ar_vsd"] = recall([e["vsd"] if e else [inf] * len(BOP19_VSD_TAUS) for e in errors],
                                   BOP19_VSD_THRESHOLDS)
            out["ar"] = (out["ar_vsd"] + out["ar_mssd"] + out["ar_mspd"]) / 3.0
        return out
        inf = float("inf")
        out["ar_mssd"] = recall([e["mssd"] if e else inf for e in errors],
                                [t * diameter for t in BOP19_MSSD_THRESHOLDS])
        out["ar_mspd"] = recall([e["mspd"] if e else inf for e in errors],
                                [t * width / 640.0 for t in BOP19_MSPD_THRESHOLDS_PX])
        if all(e is None or "vsd" in e for e in errors) and any(e is not None for e in errors):
            out["ar_vsd"] = recall([e["vsd"] if e else [inf] * len(BOP19_VSD_TAUS) for e in errors],
                                   BOP19_VSD_THRESHOLDS)
            out["ar"] = (out["ar_vsd"] + out["ar_mssd"] + out["ar_mspd"]) / 3.0
        return out
