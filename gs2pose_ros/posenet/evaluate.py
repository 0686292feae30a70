"""Evaluating the coarse pose on a BOP scene (the generator's ``test/000000``, or LM-O).

Per frame: :meth:`CoarsePoseEstimator.estimate` on the full frame (no ground-truth box or mask), then
the errors against the ground truth: rotation error (symmetry-aware: for a continuous symmetry the
angle between the posed symmetry axes, for discrete ones the minimum over the symmetries), translation
error, ADD(-S). A frame is a *success* when ``re <= max_re_deg`` and ``te <= max_te_diam x diameter``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from gs2pose_ros.errors import DatasetError
from gs2pose_ros.metrics import confidence_auc

__all__ = ["FrameResult", "symmetric_rotation_error_deg", "evaluate_coarse", "summarize"]


def _angle_deg(R: np.ndarray) -> float:
    c = (np.trace(R) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(c, -1.0, 1.0))))


def symmetric_rotation_error_deg(R_est, R_gt, symmetries_continuous=(), symmetries_discrete=()) -> float:
    """Rotation error in degrees, up to the object's symmetries (metres in the symmetries' offsets).

    Continuous symmetry about axis ``a``: the angle between ``R_est a`` and ``R_gt a`` (any rotation
    about the axis is free). Discrete symmetries ``S``: ``min_S angle(R_est^T R_gt S_R)``, the identity
    included.
    """
    R_est = np.asarray(R_est, dtype=np.float64)
    R_gt = np.asarray(R_gt, dtype=np.float64)
    if symmetries_continuous:
        a = np.asarray(symmetries_continuous[0]["axis"], dtype=np.float64)
        a /= np.linalg.norm(a)
        c = float(np.clip((R_est @ a) @ (R_gt @ a), -1.0, 1.0))
        return math.degrees(math.acos(c))
    best = _angle_deg(R_est.T @ R_gt)
    for S in symmetries_discrete:
        S = np.asarray(S, dtype=np.float64).reshape(4, 4)
        best = min(best, _angle_deg(R_est.T @ R_gt @ S[:3, :3]))
    return best


@dataclass
class FrameResult:
    im_id: int
    found: bool
    re_deg: float
    te_m: float
    add: float
    confidence: float
    inlier_ratio: float
    agreement: float
    method: str
    seconds: float
    visib_fract: float = float("nan")

    def success(self, diameter: float, max_re_deg: float = 15.0, max_te_diam: float = 0.1) -> bool:
        return self.found and self.re_deg <= max_re_deg and self.te_m <= max_te_diam * diameter


def evaluate_coarse(estimator, scene_dir, obj_id: Optional[int] = None, frames: Optional[int] = None,
                    stride: int = 1, use_depth: bool = True, progress: bool = True, im_ids=None) -> list:
    """Runs the estimator on every ``stride``-th frame of a BOP scene; returns a list of FrameResult."""
    from gs2pose_ros.bop import BopScene, open_scene
    from gs2pose_ros.frame import Frame
    from gs2pose_ros.metrics import PoseErrorEvaluator

    scene_dir = Path(scene_dir)
    scene = BopScene(scene_dir) if (scene_dir / "scene_camera.json").is_file() else None
    if scene is None:
        test = scene_dir / "test"
        scenes = sorted(p for p in test.iterdir() if (p / "scene_camera.json").is_file()) if test.is_dir() else []
        scene = BopScene(scenes[0]) if len(scenes) == 1 else open_scene(scene_dir)
    meta = estimator.metadata
    if obj_id is None:
        obj_id = meta.obj_id
    if obj_id is None:
        ids = scene.obj_ids
        if len(ids) != 1:
            raise DatasetError(f"{scene.path}: holds objects {ids}; say which one (--obj)")
        obj_id = ids[0]
    points = None
    try:
        ds = scene.dataset()
        mesh = ds.load_model(obj_id)
        points = np.asarray(mesh.vertices, dtype=np.float64)
    except Exception:  # no models folder: fall back to the Gaussian means or the box corners
        pass
    if points is None:
        if estimator.model is not None:
            points = estimator.model.means.detach().cpu().double().numpy()
        else:
            lo, hi = np.asarray(meta.bbox_min), np.asarray(meta.bbox_max)
            points = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    if len(points) > 4000:
        points = points[np.random.default_rng(0).choice(len(points), 4000, replace=False)]
    ev = PoseErrorEvaluator(points, meta.diameter, symmetric=meta.symmetric)
    ids = list(im_ids) if im_ids is not None else [i for i, _ in scene.instances_of(obj_id)]
    ids = sorted(set(ids))[::stride]
    if frames is not None:
        ids = ids[:frames]
    gt_info = scene.has_gt_info if hasattr(scene, "has_gt_info") else False
    results = []
    it = ids
    if progress:
        from tqdm import tqdm
        it = tqdm(ids, desc="coarse pose", unit="frame")
    for im_id in it:
        gt_idx = scene.find_instance(im_id, obj_id)
        gt = scene.gt(im_id)[gt_idx]
        depth = scene.depth(im_id) if use_depth else None
        frame = Frame.validated(scene.rgb(im_id), scene.camera(im_id).K, depth, source=f"{scene.path} im {im_id}")
        t0 = time.perf_counter()
        pose = estimator.estimate(frame)
        dt = time.perf_counter() - t0
        vis = float("nan")
        if gt_info:
            try:
                vis = float(scene.gt_info(im_id)[gt_idx].visib_fract)
            except Exception:
                pass
        if pose.T_cam_obj is None:
            results.append(FrameResult(im_id, False, 180.0, float("inf"), float("inf"), 0.0, 0.0, 0.0, "none", dt, vis))
            continue
        R, t = pose.T_cam_obj[:3, :3], pose.T_cam_obj[:3, 3]
        re = symmetric_rotation_error_deg(R, gt.R, meta.symmetries_continuous, meta.symmetries_discrete)
        te = float(np.linalg.norm(t - gt.t))
        add = ev.add_or_adds(R, t, gt.R, gt.t)
        results.append(FrameResult(im_id, True, re, te, add, pose.confidence, pose.inlier_ratio, pose.agreement,
                                   pose.method, dt, vis))
    return results


def summarize(results: list, diameter: float, max_re_deg: float = 15.0, max_te_diam: float = 0.1) -> dict:
    """Success rate and error percentiles of :func:`evaluate_coarse`'s results."""
    n = len(results)
    if n == 0:
        return {"frames": 0}
    ok = np.array([r.success(diameter, max_re_deg, max_te_diam) for r in results])
    re = np.array([r.re_deg for r in results])
    te = np.array([r.te_m for r in results]) / diameter
    add = np.array([r.add for r in results]) / diameter
    conf = np.array([r.confidence for r in results])
    pct = lambda a: {**{f"p{q}": float(np.percentile(a, q)) for q in (10, 25, 50, 75, 90, 95)},  # noqa: E731
                     "max": float(np.max(a))}
    out = {
        "frames": n,
        "found": int(sum(r.found for r in results)),
        "success_rate": float(ok.mean()),
        "criterion": f"re <= {max_re_deg} deg and te <= {max_te_diam} x diameter",
        "add_0.1d": float((add < 0.1).mean()),
        "re_deg": pct(re),
        "te_over_diameter": pct(te),
        "mean_seconds": float(np.mean([r.seconds for r in results])),
        "confidence_success_mean": float(conf[ok].mean()) if ok.any() else float("nan"),
        "confidence_failure_mean": float(conf[~ok].mean()) if (~ok).any() else float("nan"),
        "confidence_success_p10": float(np.percentile(conf[ok], 10)) if ok.any() else float("nan"),
        "confidence_failure_max": float(conf[~ok].max()) if (~ok).any() else float("nan"),
        # probability that a random success scores higher than a random failure (ties count half)
        "confidence_auc": confidence_auc(conf[ok], conf[~ok]),
        "confidence_above": {str(th): {"successes": float((conf[ok] > th).mean()) if ok.any() else float("nan"),
                                       "failures": float((conf[~ok] > th).mean()) if (~ok).any() else float("nan")}
                             for th in (0.2, 0.3, 0.5)},
        "methods": {m: int(sum(r.method == m for r in results)) for m in sorted({r.method for r in results})},
    }
    return out


def results_table(results: list) -> list:
    return [asdict(r) for r in results]
