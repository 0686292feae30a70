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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

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
