"""The coarse pose: Pose-Net's NOCS image -> correspondences -> a rigid pose, with a confidence.

Pipeline of :meth:`CoarsePoseEstimator.estimate` for one :class:`~gs2pose_ros.frame.Frame`:

1. **Finding the object** (no external detector): the whole image letterboxed to ``locate_size``
   (default: the network's input size; the network is fully convolutional), one pass, the mask's
   largest confident connected component -> a box in the frame. Then the precise pass on a
   square crop around that box (resampled to the input size; the crop is a new K), repeated
   ``refine_passes`` times around the refined mask; a mask that runs into the crop's border means
   the crop was too tight (a partial detection) and the next crop grows around it. While the
   most probable component gives no confident pose, with depth, the object-sized surfaces off the
   floor (:meth:`CoarsePoseEstimator._surfaces`: plane removal, then depth-connected clusters of
   the object's size) are candidates too, each on a tight crop whose mask stays on the surface;
   the most confident candidate wins. A region of interest from outside (``roi``) skips the
   full-frame pass.
2. **Correspondences**: pixels with mask probability > ``mask_threshold`` (``low_mask_threshold``
   where that leaves under 30 pixels, as the full-frame pass does for an empty mask) (and, with a confidence
   head, confidence > ``conf_threshold`` when enough remain) decode to object points
   ``bbox_min + nocs * (bbox_max - bbox_min)`` (:func:`decode_nocs`).
3. **Pose**: with depth, 3D-3D: the crop's depth back-projected through the crop's K. When the
   estimator has the Gaussian model (:class:`ModelGeometry`: its opaque centres, PCA normals, a
   ``scipy.spatial.cKDTree``): the ``hypotheses`` best *distinct* 3-point Kabsch-RANSAC poses
   (:func:`ransac_kabsch_hypotheses`, threshold ``inlier_threshold`` x diameter) plus the weighted
   least-squares fit of all correspondences, each refined by point-to-plane ICP of the observed
   points near it (dilated mask, within the object's radius of its centre) against the model
   surface, with the NOCS correspondences as weak point-to-point anchors for the directions the
   surface leaves free (:func:`icp_point_to_plane`); then the best pose turned by 180 degrees about
   each object axis (the near-symmetries that noisy NOCS confuse), refined likewise. Each refined
   pose is scored by :meth:`CoarsePoseEstimator.depth_check`: ``match`` (its z-buffered visible
   points that the depth confirms), ``violation`` (those the camera sees *through*), ``fit`` (mask
   points on the model surface), ``nocs`` (correspondences that agree) and ``colour`` (correlation of
   the model's colours with the image at the confirmed points); the product wins. When even the
   winner's confidence is under ``search_below`` (an under-trained network: good mask, meaningless
   NOCS), :meth:`CoarsePoseEstimator._search` tries a grid of orientations (:func:`rotation_grid`)
   behind the observed surface, ICP-refined and scored without the NOCS term. Without the model,
   the single best RANSAC pose (:func:`ransac_kabsch`). Without depth (or too few depth readings),
   2D-3D: ``cv2.solvePnPRansac`` (SQPnP minimal solver, then Levenberg-Marquardt refinement on the
   inliers, :func:`pnp_ransac`).
4. **Confidence** in [0, 1]. With the depth check: ``consistency x support x nocs x colour x
   unambiguous`` (``agreement`` = the first two), each a clipped ramp: consistency
   ``match / (match + violation)`` from 0.7 to 0.95, support ``match`` from 0 to 0.35, the agreeing
   NOCS fraction from 0 to 0.15, the colour correlation from 0.6 to 0.8 (1 where the visible part
   has no texture), and 1 unless another refined pose outside 15 degrees / 0.1 diameter scores more
   than half as well. Otherwise (RGB only, or no model): ``inlier_ratio * agreement``, where
   ``inlier_ratio`` is the fraction of mask pixels consistent with the pose (their decoded point
   reprojects within 5 % of the object's apparent diameter, at least ``reproj_px``) and
   ``agreement`` the IoU between the predicted mask and the model's silhouette rendered at the pose
   (when the estimator has the Gaussian model; else the fraction of the decoded points that project
   inside the predicted mask). A wrong pose agrees with few pixels and scores low.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import cv2
import numpy as np
import torch

from gs2pose_ros.errors import ConfigError, InputError
from gs2pose_ros.gaussians import GaussianModel, ObjectMetadata

__all__ = ["CoarsePose", "CoarsePoseEstimator", "decode_nocs", "kabsch", "ransac_kabsch", "ransac_kabsch_hypotheses",
           "ModelGeometry", "icp_point_to_plane", "rotation_grid", "pnp_ransac", "letterbox", "HALF_TURNS",
           "turned_about"]


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def decode_nocs(nocs, metadata: ObjectMetadata) -> np.ndarray:
    """NOCS values [..., 3] in [0, 1] -> object-frame points [..., 3] (metres) through the model's box."""
    bmin = np.asarray(metadata.bbox_min, dtype=np.float64)
    bmax = np.asarray(metadata.bbox_max, dtype=np.float64)
    return bmin + np.asarray(nocs, dtype=np.float64) * (bmax - bmin)


def kabsch(P: np.ndarray, Q: np.ndarray, weights: Optional[np.ndarray] = None):
    """Least-squares rigid transform with ``Q ~ R P + t`` (no scale), batched.

    P, Q: [..., N, 3]; weights [..., N] (optional) -> R [..., 3, 3] (proper rotations), t [..., 3].
    """
    P = np.asarray(P, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    w = np.ones(P.shape[:-1]) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)
    mp = (w[..., None] * P).sum(-2)
    mq = (w[..., None] * Q).sum(-2)
    H = np.einsum("...n,...ni,...nj->...ij", w, P - mp[..., None, :], Q - mq[..., None, :])
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.swapaxes(Vt, -1, -2) @ np.swapaxes(U, -1, -2)))
    D = np.zeros(H.shape)
    D[..., 0, 0] = 1
    D[..., 1, 1] = 1
    D[..., 2, 2] = np.where(d == 0, 1, d)
    R = np.swapaxes(Vt, -1, -2) @ D @ np.swapaxes(U, -1, -2)
    t = mq - np.einsum("...ij,...j->...i", R, mp)
    return R, t


def ransac_kabsch(P: np.ndarray, Q: np.ndarray, threshold: float, iterations: int = 256,
                  rng: Optional[np.random.Generator] = None, refine_rounds: int = 2):
    """Rigid ``Q ~ R P + t`` robust to outliers: RANSAC over minimal 3-point Kabsch fits.

    Hand-written rather than ``cv2.estimateAffine3D`` because that estimates a general 3D *affine*
    transform (12 parameters: shear and scale included) and does not enforce rigidity; a rigid
    fit with the known scale needs only 3 points per hypothesis and is better conditioned.
    Hypotheses are scored by their inlier count (residual below ``threshold``, metres), all at
    once (batched SVD); the best is refit on its inliers ``refine_rounds`` times (the first of
    :func:`ransac_kabsch_hypotheses`).

    Returns ``(R [3, 3], t [3], inliers [N] bool)``; ``R`` is None when fewer than 3 points are given.
    """
    best = ransac_kabsch_hypotheses(P, Q, threshold, iterations, rng, count=1, refine_rounds=refine_rounds)
    if not best:
        return None, None, np.zeros(len(P), bool)
    R, t, inliers, _ = best[0]
    return R, t, inliers


def ransac_kabsch_hypotheses(P: np.ndarray, Q: np.ndarray, threshold: float, iterations: int = 256,
                             rng: Optional[np.random.Generator] = None, count: int = 4,
                             min_angle_deg: float = 20.0, refine_rounds: int = 2, weights=None) -> list:
    """Like :func:`ransac_kabsch`, but the ``count`` best *distinct* hypotheses, best first.

    Every 3-point Kabsch hypothesis is scored by its (``weights``-weighted) inlier count; going down
    that ranking, a hypothesis is kept when its rotation differs by more than ``min_angle_deg`` from
    every kept one (so a second mode, e.g. a flipped pose of a near-symmetric object, survives to be
    checked against the depth), then refit on its inliers ``refine_rounds`` times. Returns a list of
    ``(R, t, inliers [N] bool, score)``.
    """
    P = np.asarray(P, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    n = len(P)
    if n < 3:
        return []
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    rng = rng or np.random.default_rng(0)
    idx = np.stack([rng.choice(n, 3, replace=False) for _ in range(iterations)]) if n < 64 else \
        rng.integers(0, n, size=(iterations, 3))
    Ps = P[idx]
    area = np.linalg.norm(np.cross(Ps[:, 1] - Ps[:, 0], Ps[:, 2] - Ps[:, 0]), axis=-1)
    idx = idx[area > 1e-10]
    if len(idx) == 0:
        return []
    R, t = kabsch(P[idx], Q[idx])
    scores = np.empty(len(idx))
    for s in range(0, len(idx), 64):
        res = np.linalg.norm(np.einsum("hij,nj->hni", R[s:s + 64], P) + t[s:s + 64, None] - Q[None], axis=-1)
        scores[s:s + 64] = ((res < threshold) * w).sum(1)
    order = np.argsort(-scores, kind="stable")
    kept = []
    cos_min = math.cos(math.radians(min_angle_deg))
    for h in order:
        Rh = R[h]
        if any((np.trace(Rh.T @ Rk) - 1.0) / 2.0 > cos_min for Rk, _, _, _ in kept):
            continue
        th = t[h]
        inl = np.linalg.norm(P @ Rh.T + th - Q, axis=-1) < threshold
        for _ in range(refine_rounds):
            if inl.sum() < 3:
                break
            Rh, th = kabsch(P[inl], Q[inl], w[inl])
            inl = np.linalg.norm(P @ Rh.T + th - Q, axis=-1) < threshold
        kept.append((Rh, th, inl, float((inl * w).sum())))
        if len(kept) >= count:
            break
    return kept


def visible_points(points_cam: np.ndarray, K: np.ndarray, tolerance: float, cell_px: float = 2.0) -> np.ndarray:
    """Which camera-frame points [N, 3] a camera with intrinsics K sees (not hidden by the others): a
    z-buffer of cells ``cell_px`` pixels wide, closed by a 3x3 minimum filter (a point cloud leaves
    holes between the front surface's points, through which back points would pass), ``tolerance``
    metres of slack. Returns [N] bool."""
    z = points_cam[:, 2]
    front = z > 1e-3
    out = np.zeros(len(points_cam), bool)
    if front.sum() == 0:
        return out
    zf = z[front]
    u = (K[0, 0] * points_cam[front, 0] / zf + K[0, 2]) / cell_px
    v = (K[1, 1] * points_cam[front, 1] / zf + K[1, 2]) / cell_px
    cu = np.floor(u - u.min()).astype(int) + 1
    cv = np.floor(v - v.min()).astype(int) + 1
    W, H = int(cu.max()) + 2, int(cv.max()) + 2
    if W * H > 4_000_000:  # degenerate (points at grazing depth): call everything visible
        out[front] = True
        return out
    cell = cv * W + cu
    zbuf = np.full(W * H, 1e6)
    np.minimum.at(zbuf, cell, zf)
    zbuf = cv2.erode(zbuf.reshape(H, W).astype(np.float32), np.ones((3, 3), np.uint8)).reshape(-1)
    out[front] = zf <= zbuf[cell] + tolerance
    return out


def rotation_grid(views: int = 30, in_plane: int = 6) -> np.ndarray:
    """``views x in_plane`` rotations (object -> camera) spread over SO(3): the camera looking at the
    object from ``views`` directions on a Fibonacci sphere, at ``in_plane`` roll angles each."""
    i = np.arange(views) + 0.5
    z = 1.0 - 2.0 * i / views
    phi = math.pi * (1.0 + math.sqrt(5.0)) * i
    d = np.stack([np.sqrt(1 - z * z) * np.cos(phi), np.sqrt(1 - z * z) * np.sin(phi), z], -1)
    out = []
    for dv in d:
        zc = -dv  # the camera's optical axis, in the object frame
        a = np.array([1.0, 0.0, 0.0]) if abs(zc[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        x0 = np.cross(a, zc)
        x0 /= np.linalg.norm(x0)
        y0 = np.cross(zc, x0)
        for k in range(in_plane):
            g = 2.0 * math.pi * k / in_plane
            xc = math.cos(g) * x0 + math.sin(g) * y0
            yc = np.cross(zc, xc)
            out.append(np.stack([xc, yc, zc]))  # rows: camera axes in the object frame
    return np.asarray(out)


#: The half-turns about the object's x, y and z axes (rotation matrices, object frame).
HALF_TURNS = (np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0]))


def turned_about(R: np.ndarray, t: np.ndarray, R_delta: np.ndarray, point) -> tuple:
    """The pose ``(R, t)`` (object -> camera) with the object turned by ``R_delta`` about ``point``
    (object frame, e.g. its box centre), which stays where it was: ``(R R_delta, R p + t - R R_delta p)``."""
    Rn = R @ R_delta
    return Rn, R @ point + t - Rn @ point


def _same_pose(R1, t1, R2, t2, max_deg: float, max_dist: float) -> bool:
    c = (np.trace(R1.T @ R2) - 1.0) / 2.0
    return c > math.cos(math.radians(max_deg)) and float(np.linalg.norm(t1 - t2)) < max_dist


def _rodrigues(omega: np.ndarray) -> np.ndarray:
    R, _ = cv2.Rodrigues(np.asarray(omega, dtype=np.float64).reshape(3, 1))
    return R


class ModelGeometry:
    """The object's surface as points + normals with a k-d tree (``scipy.spatial.cKDTree``), in the
    object frame: what ICP and the depth check need. Built from the Gaussian means (opaque ones)."""

    def __init__(self, points: np.ndarray, colors: Optional[np.ndarray] = None, normals: Optional[np.ndarray] = None,
                 max_points: int = 4000, neighbours: int = 10, seed: int = 0):
        from scipy.spatial import cKDTree

        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        cols = None if colors is None else np.asarray(colors, dtype=np.float64).reshape(-1, 3)
        nrm = None if normals is None else np.asarray(normals, dtype=np.float64).reshape(-1, 3)
        if len(pts) > max_points:
            keep = np.random.default_rng(seed).choice(len(pts), max_points, replace=False)
            pts = pts[keep]
            cols = None if cols is None else cols[keep]
            nrm = None if nrm is None else nrm[keep]
        self.points = pts
        self.colors = None if cols is None else np.clip(cols, 0.0, 1.0)  # RGB in [0, 1], or None
        self.tree = cKDTree(pts)
        if nrm is not None:
            self.normals = nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
            return
        # PCA over the nearest neighbours (wrong across thin walls, hence the Gaussians' own when flat)
        from gs2pose_ros.mesh import pca_normals

        nrm = pca_normals(pts, self.tree, neighbours)
        self.normals = nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)

    @classmethod
    def from_model(cls, model: GaussianModel, min_opacity: float = 0.3, **kw) -> "ModelGeometry":
        means = model.means.detach().cpu().double().numpy()
        op = torch.sigmoid(model.opacity_logits.detach().cpu().double()).numpy()
        keep = op >= min_opacity
        if keep.sum() < 50:
            keep = np.ones(len(means), bool)
        from gs2pose_ros.gaussians import sh_to_rgb

        cols = sh_to_rgb(model.sh[:, 0].detach().cpu().double()).numpy()
        nrm = None
        scales = model.log_scales.detach().cpu().double().exp().numpy()
        srt = np.sort(scales, axis=1)
        if np.median(srt[:, 0] / np.maximum(srt[:, 1], 1e-12)) < 0.5:
            # flat Gaussians (surface elements): the normal is the axis of the smallest scale
            from gs2pose_ros.lie import quat_to_matrix

            Rg = quat_to_matrix(model.unit_quats.detach().cpu().double()).numpy()
            nrm = Rg[np.arange(len(Rg)), :, np.argmin(scales, axis=1)]
            nrm = nrm[keep]
        return cls(means[keep], cols[keep], nrm, **kw)


def icp_point_to_plane(R: np.ndarray, t: np.ndarray, Q: np.ndarray, geometry: ModelGeometry,
                       start: float, end: float, iterations: int = 15, anchors=None, anchor_weight: float = 0.02,
                       anchor_gate: float = float("inf"), K: Optional[np.ndarray] = None, visibility_every: int = 4):
    """Refines ``Q ~ R P + t`` by point-to-plane ICP of the observed points ``Q`` [N, 3] (camera frame)
    against the model surface, with a correspondence gate shrinking geometrically from ``start`` to
    ``end`` metres (Tukey-like weights inside it). Returns ``(R, t, matched fraction at the end)``.

    anchors: optional ``(P_a [M, 3] object points, Q_a [M, 3] camera points)`` known correspondences
    (the decoded NOCS) added as point-to-point terms of weight ``anchor_weight`` each (Tukey weights
    inside ``anchor_gate`` metres): they hold the directions the surface leaves free (the rotation
    of a mug about its body's axis, where only the handle tells) without outweighing the depth.

    K: the camera's intrinsics; with it, the observed points are matched only to the model points
    visible at the current pose (:func:`visible_points`, refreshed every ``visibility_every``
    iterations), so that a thin wall's far side (the inside of a mug) does not attract them.
    """
    from scipy.spatial import cKDTree

    R = np.asarray(R, dtype=np.float64).copy()
    t = np.asarray(t, dtype=np.float64).copy()
    Q = np.asarray(Q, dtype=np.float64)
    frac = 0.0
    if len(Q) < 12:
        return R, t, frac
    tree, pts, nrms = geometry.tree, geometry.points, geometry.normals
    for it, gate in enumerate(np.geomspace(start, end, iterations)):
        if K is not None and it % max(visibility_every, 1) == 0:
            vis = visible_points(geometry.points @ R.T + t, K, end)
            if vis.sum() >= 12:
                pts, nrms = geometry.points[vis], geometry.normals[vis]
                tree = cKDTree(pts)
        qo = (Q - t) @ R
        d, idx = tree.query(qo, distance_upper_bound=gate)
        ok = np.isfinite(d)
        frac = float(ok.mean())
        if ok.sum() < 12:
            break
        q, p, nrm = qo[ok], pts[idx[ok]], nrms[idx[ok]]
        r = ((q - p) * nrm).sum(1)
        w = (1.0 - (d[ok] / gate) ** 2) ** 2
        J = np.concatenate([np.cross(q, nrm), nrm], 1)
        A = J.T @ (w[:, None] * J)
        b = -J.T @ (w * r)
        if anchors is not None and len(anchors[0]):
            qa = (anchors[1] - t) @ R
            ra = qa - anchors[0]  # [M, 3]
            da = np.linalg.norm(ra, axis=1)
            wa = anchor_weight * np.where(da < anchor_gate, (1.0 - (da / anchor_gate) ** 2) ** 2, 0.0)
            # d(q + omega x q + v)/d(omega, v) = [-[q]x, I]
            Ja = np.zeros((len(qa), 3, 6))
            Ja[:, 0, 1], Ja[:, 0, 2] = qa[:, 2], -qa[:, 1]
            Ja[:, 1, 0], Ja[:, 1, 2] = -qa[:, 2], qa[:, 0]
            Ja[:, 2, 0], Ja[:, 2, 1] = qa[:, 1], -qa[:, 0]
            Ja[:, :, 3:] = np.eye(3)
            Jf = Ja.reshape(-1, 6)
            w3 = np.repeat(wa, 3)
            A += Jf.T @ (w3[:, None] * Jf)
            b -= Jf.T @ (w3 * ra.reshape(-1))
        A += (1e-4 * np.trace(A) / 6.0 + 1e-12) * np.eye(6)
        x = np.linalg.solve(A, b)
        # the observed points move by D = (exp(omega), v) in the object frame: T_cam_obj <- T_cam_obj D^-1
        dR = _rodrigues(x[:3])
        R = R @ dR.T
        t = t - R @ x[3:]
    return R, t, frac


def pnp_ransac(P: np.ndarray, uv: np.ndarray, K: np.ndarray, reproj_px: float = 3.0, iterations: int = 200,
               confidence: float = 0.999):
    """Pose from 2D-3D correspondences: ``cv2.solvePnPRansac`` (SQPnP) + LM refinement on the inliers.

    P [N, 3] object points (metres), uv [N, 2] continuous pixel coordinates (centre of pixel (u, v)
    is (u + 0.5, v + 0.5)) in the image of ``K``. Returns ``(R, t, inliers [N] bool)``, R None on failure.
    """
    P = np.ascontiguousarray(P, dtype=np.float64).reshape(-1, 3)
    uv = np.ascontiguousarray(uv, dtype=np.float64).reshape(-1, 2)
    n = len(P)
    if n < 6:
        return None, None, np.zeros(n, bool)
    # OpenCV's projection x = fx X/Z + cx is the same continuous convention as ours (K unchanged).
    K = np.asarray(K, dtype=np.float64)
    try:
        ok, rvec, tvec, inl = cv2.solvePnPRansac(P, uv, K, None, iterationsCount=int(iterations),
                                                 reprojectionError=float(reproj_px), confidence=confidence,
                                                 flags=cv2.SOLVEPNP_SQPNP)
    except cv2.error:
        ok = False
    if not ok or inl is None or len(inl) < 4:
        return None, None, np.zeros(n, bool)
    mask = np.zeros(n, bool)
    mask[np.asarray(inl).reshape(-1)] = True
    try:
        rvec, tvec = cv2.solvePnPRefineLM(P[mask], uv[mask], K, None, rvec, tvec)
    except cv2.error:
        pass
    R, _ = cv2.Rodrigues(rvec)
    t = np.asarray(tvec, dtype=np.float64).reshape(3)
    if t[2] <= 0:
        return None, None, np.zeros(n, bool)
    proj = P @ R.T + t
    z = np.maximum(proj[:, 2], 1e-9)
    pred = np.stack([K[0, 0] * proj[:, 0] / z + K[0, 2], K[1, 1] * proj[:, 1] / z + K[1, 2]], -1)
    mask = (np.linalg.norm(pred - uv, axis=-1) < reproj_px) & (proj[:, 2] > 0)
    return R, t, mask


def letterbox(rgb: np.ndarray, size: int):
    """The whole image scaled to fit ``size x size`` (top-left aligned, mirrored padding).

    Returns ``(image [size, size, 3] uint8, scale)``; frame pixel ``u`` maps to ``u * scale``.
    """
    H, W = rgb.shape[:2]
    s = size / max(H, W)
    w, h = max(1, round(W * s)), max(1, round(H * s))
    small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    # mirrored padding: a flat grey band reads as a uniform object surface to the network
    out = cv2.copyMakeBorder(small, 0, size - h, 0, size - w, cv2.BORDER_REFLECT_101 if min(h, w) > 1
                             else cv2.BORDER_REPLICATE)
    return out[:size, :size], (w / W + h / H) / 2


# ----------------------------------------------------------------------------------------------
# The estimator
# ----------------------------------------------------------------------------------------------


def _pixel_bounds(vs: np.ndarray, us: np.ndarray) -> tuple:
    """Box ``(x0, y0, x1, y1)`` (float, exclusive end) around the pixels at rows ``vs``, columns ``us``."""
    return float(us.min()), float(vs.min()), float(us.max() + 1), float(vs.max() + 1)


@dataclass
class CoarsePose:
    """One coarse pose estimate.

    T_cam_obj: [4, 4] float64 (metres), or None when no pose could be computed.
    confidence: in [0, 1] (``inlier_ratio * agreement``, see the module docstring).
    inliers: number of correspondences consistent with the pose; correspondences: how many were used.
    roi: the crop ``(x0, y0, w, h)`` in frame pixels the precise pass used (None if the object was not found).
    mask: [H, W] bool predicted object mask in the frame (None if not found).
    method: "kabsch" (depth), "pnp" (RGB only) or "none".
    inlier_ratio, agreement: the two factors of the confidence.
    stages: seconds per stage.
    alternatives: the poses found for the other candidates (full-frame components, then
    object-sized surfaces; tried while none was confident), in that order; a caller that can
    verify poses (the refiner) checks them too.
    """

    T_cam_obj: Optional[np.ndarray]
    confidence: float
    inliers: int
    correspondences: int
    roi: Optional[tuple]
    mask: Optional[np.ndarray]
    method: str
    inlier_ratio: float = 0.0
    agreement: float = 0.0
    stages: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    alternatives: list = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.T_cam_obj is not None


class CoarsePoseEstimator:
    """Pose-Net + geometry: ``estimate(frame, roi=None) -> CoarsePose``.

    posenet: a trained :class:`~gs2pose_ros.posenet.network.PoseNet`; metadata: its object's
    :class:`ObjectMetadata` (the NOCS box, the diameter); model: the object's Gaussian model
    (optional; used for the silhouette agreement of the confidence).

    Example:
        >>> est = CoarsePoseEstimator.from_file("posenet.safetensors", model=gaussians)  # doctest: +SKIP
        >>> pose = est.estimate(Frame.validated(rgb, K, depth))  # doctest: +SKIP
        >>> pose.T_cam_obj, pose.confidence  # doctest: +SKIP
    """

    def __init__(self, posenet, metadata: ObjectMetadata, model: Optional[GaussianModel] = None, *,
                 mask_threshold: float = 0.5, conf_threshold: float = 0.5, crop_padding: float = 0.35,
                 ransac_iterations: int = 300, inlier_threshold: float = 0.06, reproj_px: float = 3.0,
                 max_points: int = 3000, seed: int = 0, refine_passes: int = 2, use_depth: bool = True,
                 hypotheses: int = 4, icp: bool = True, icp_iterations: int = 15, icp_points: int = 1500,
                 depth_tolerance: float = 0.03, flips: bool = True, anchor_weight: float = 0.02,
                 search: bool = True, search_below: float = 0.5, search_views: int = 30, search_in_plane: int = 6,
                 low_mask_threshold: float = 0.3, candidates: int = 2, candidate_confidence: float = 0.5,
                 locate_size: Optional[int] = None, support_plane_tol: Optional[float] = 0.006,
                 surface_candidates: int = 3):
        self.net = posenet.eval()
        self.metadata = metadata
        self.model = model
        self.size = posenet.config.input_size
        # the full-frame pass's side: the network's input size by default; objects that fill a few
        # percent of the frame (LM-O's ape: 46 px of 640, 9 px at 128) need a larger pass
        self.locate_size = int(locate_size or self.size)
        if self.locate_size % 16 or not 16 <= self.locate_size <= 2048:
            raise ConfigError(f"coarse: locate_size = {locate_size} must be a multiple of 16 in [16, 2048]")
        self.device = next(posenet.parameters()).device
        self.mask_threshold = mask_threshold
        self.conf_threshold = conf_threshold
        self.crop_padding = crop_padding
        self.ransac_iterations = ransac_iterations
        self.inlier_threshold = inlier_threshold  # x diameter, for the 3D residuals
        self.reproj_px = reproj_px  # at the network's input resolution
        self.max_points = max_points
        self.refine_passes = refine_passes
        self.use_depth = use_depth
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._nocs_cols = None
        self.hypotheses = int(hypotheses)
        self.icp = bool(icp)
        self.icp_iterations = int(icp_iterations)
        self.icp_points = int(icp_points)
        self.flips = bool(flips)
        self.anchor_weight = float(anchor_weight)
        self.search = bool(search)
        self.low_mask_threshold = float(low_mask_threshold)
        self.candidates = int(candidates)  # full-frame components tried, while none is confident
        self.candidate_confidence = float(candidate_confidence)  # ... i.e. reaches this
        self.search_below = float(search_below)
        self._grid = rotation_grid(search_views, search_in_plane) if search else None
        self.depth_tolerance = float(depth_tolerance)  # x diameter: depth agreement / ICP's final gate
        # mask pixels within this (metres) of the supporting plane (table, floor) are not the
        # object; None keeps them (see _predict_crop)
        self.support_plane_tol = support_plane_tol
        # with depth, object-sized surfaces off the floor tried after the full-frame candidates
        # when none of those is confident (_surfaces); 0: none
        self.surface_candidates = int(surface_candidates)
        self._geometry = None

    @property
    def geometry(self) -> Optional[ModelGeometry]:
        """The model's surface points/normals/k-d tree for ICP and the depth check (None without a model)."""
        if self._geometry is None and self.model is not None:
            self._geometry = ModelGeometry.from_model(self.model)
        return self._geometry

    @classmethod
    def from_file(cls, path, model: Optional[GaussianModel] = None, device=None, **kwargs) -> "CoarsePoseEstimator":
        """Loads a Pose-Net saved by ``gs2pose train-posenet`` (see :func:`~gs2pose_ros.posenet.io.load_posenet`)."""
        from gs2pose_ros.posenet.io import load_posenet

        net, meta, _ = load_posenet(path, device=device)
        return cls(net, meta, model, **kwargs)

    # -- the network ----------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, crop_rgb: np.ndarray) -> dict:
        """One network pass on an ``[S, S, 3]`` uint8 crop (any side divisible by 16) -> numpy ``nocs``
        [S, S, 3], ``mask`` [S, S] (probability) and ``conf`` [S, S] (probability, ones without a
        confidence head)."""
        x = torch.from_numpy(np.ascontiguousarray(crop_rgb)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        out = self.net(x)
        res = {"nocs": out["nocs"][0].permute(1, 2, 0).float().cpu().numpy(),
               "mask": torch.sigmoid(out["mask_logits"][0, 0]).float().cpu().numpy()}
        res["conf"] = (torch.sigmoid(out["conf_logits"][0, 0]).float().cpu().numpy() if "conf_logits" in out
                       else np.ones_like(res["mask"]))
        return res

    def _mask_boxes(self, prob: np.ndarray, threshold: Optional[float] = None) -> list:
        """Boxes (x0, y0, x1, y1) of the connected components of ``prob > threshold``, the one
        with the largest summed probability first (components under 4 pixels left out)."""
        m = (prob > (self.mask_threshold if threshold is None else threshold)).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        if n <= 1:
            return []
        scores = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=n)[1:]
        boxes = []
        for k in np.argsort(-scores) + 1:
            if stats[k, cv2.CC_STAT_AREA] >= 4:
                x, y, w, h = stats[k, :4]
                boxes.append((float(x), float(y), float(x + w), float(y + h)))
        return boxes

    def _mask_box(self, prob: np.ndarray, threshold: Optional[float] = None):
        """Box (x0, y0, x1, y1) of the best connected component of ``prob > threshold`` (None if empty)."""
        boxes = self._mask_boxes(prob, threshold)
        return boxes[0] if boxes else None

    def locate_all(self, frame) -> list:
        """Candidate boxes ``(x0, y0, x1, y1)`` in frame pixels from a full-frame pass, the most
        probable first (empty if nothing is seen)."""
        return self._locate(frame)[0]

    def _locate(self, frame) -> tuple:
        """:meth:`locate_all`'s boxes, the pass's mask probability ``[S, S]`` and the frame ->
        pass scale."""
        img, s = letterbox(frame.rgb, self.locate_size)
        prob = self.predict(img)["mask"]
        prob[int(math.ceil(frame.height * s)):] = 0  # the padding is not the image
        prob[:, int(math.ceil(frame.width * s)):] = 0
        boxes = self._mask_boxes(prob)
        if not boxes or (boxes[0][2] - boxes[0][0]) * (boxes[0][3] - boxes[0][1]) < 16:
            # a weakly trained network (or a dim, half-hidden object) may stay under 0.5 in the
            # small full-frame view: look again at a lower threshold; the crop passes and the
            # confidence judge what it found
            boxes = self._mask_boxes(prob, self.low_mask_threshold) or boxes
        return [tuple(v / s for v in b) for b in boxes], prob, s

    def locate(self, frame) -> Optional[tuple]:
        """The object's box ``(x0, y0, x1, y1)`` in frame pixels from a full-frame pass (None if not seen)."""
        boxes = self.locate_all(frame)
        return boxes[0] if boxes else None

    def _crop(self, frame, box, padding=None):
        from gs2pose_ros.camera import PinholeCamera, crop_box_around, crop_image

        pad = self.crop_padding if padding is None else padding
        x0, y0, w, h = crop_box_around(np.asarray(box, dtype=np.float64), (frame.width, frame.height),
                                       padding=pad, min_size=16.0, shift_inside=True)
        S = self.size
        interp = cv2.INTER_AREA if w > 1.5 * S else cv2.INTER_LINEAR
        crop = crop_image(frame.rgb, x0, y0, w, h, S, S, interpolation=interp, border_value=127)
        K_crop = PinholeCamera.from_K(frame.K, frame.width, frame.height).crop(x0, y0, w, h, S, S).K
        return (x0, y0, w, h), crop, K_crop

    # -- the pose -------------------------------------------------------------------------------

    def estimate(self, frame, roi=None) -> CoarsePose:
        """The coarse pose of the object in ``frame`` (a :class:`~gs2pose_ros.frame.Frame`).

        roi: optional ``(x0, y0, w, h)`` box in frame pixels from an external detector or the
        tracker's last pose; None finds the object with the full-frame pass.
        """
        stages = {}
        t0 = time.perf_counter()
        # the same frame gives the same pose whatever came before (RANSAC's samples): a result
        # can be reproduced from that frame alone
        self.rng = np.random.default_rng(self.seed)
        if roi is not None:
            x, y, w, h = (float(v) for v in roi)
            if not (w > 0 and h > 0):
                raise InputError(f"estimate: roi {roi} must be (x0, y0, w, h) with w, h > 0 pixels")
            boxes = [(x, y, x + w, y + h)]
        else:
            boxes, prob, scale = self._locate(frame)
            boxes = boxes[:max(1, self.candidates)]
            stages["locate"] = time.perf_counter() - t0
        results = []
        for box in boxes:
            # the full-frame pass may put a distractor first (a toy cut by the image border was the
            # second component): the next candidate is tried while no pose is confident
            results.append(self._estimate_in(frame, box, roi is None, stages))
            if results[-1].confidence >= self.candidate_confidence:
                break
        if roi is None and (not results or results[0].confidence < self.candidate_confidence):
            # the most probable component is not the object (or not confidently): object-sized
            # surfaces too, even after a confident second component (one 26 cm off the box at
            # 0.62 while the box's surface gave 1.0, 0.2 deg: generated seed 11, frame 0)
            results += self.surface_estimates(frame, (prob, scale), stages)
        if not results:
            return CoarsePose(None, 0.0, 0, 0, None, None, "none", stages=stages)
        # the most probable component stays first unless another one is confident and it is not
        # (then the most confident one): ranking by the coarse confidence alone put a same-shaped
        # distractor (0.18) before the toy itself (toy frame 6), and the refiner then confirmed
        # the distractor at 0.95
        k = 0
        if results[0].confidence < self.candidate_confidence:
            confident = [i for i, r in enumerate(results) if r.confidence >= self.candidate_confidence]
            k = max(confident, key=lambda i: results[i].confidence, default=0)
        best = results[k]
        best.alternatives = results[:k] + results[k + 1:]
        best.stages = stages
        return best

    def surface_estimates(self, frame, located: Optional[tuple] = None, stages: Optional[dict] = None) -> list:
        """Coarse poses (:class:`CoarsePose`, ``details["surface_candidate"]``) of the object-sized
        surfaces (:meth:`_surfaces`), tried in order until one is confident; empty without depth.
        ``estimate`` calls it while the full-frame pass finds nothing confident; a caller that
        refuted a confident candidate (the tracker) may call it too. ``located``: the full-frame
        pass's ``(prob, scale)`` when already run; ``stages``: seconds per stage, added to
        (``surfaces``: finding them)."""
        stages = {} if stages is None else stages
        if located is None:  # a call of its own: reproducible from the frame alone, as estimate
            self.rng = np.random.default_rng(self.seed)
            _, prob, scale = self._locate(frame)
        else:
            prob, scale = located
        t0 = time.perf_counter()
        surfaces = self._surfaces(frame, prob, scale)
        stages["surfaces"] = stages.get("surfaces", 0.0) + time.perf_counter() - t0
        results = []
        for box, surface in surfaces:
            # a tight crop whose mask stays on the surface: the crop passes of a context crop
            # followed the pole beside the box
            results.append(self._estimate_in(frame, box, False, stages, keep=surface))
            results[-1].details["surface_candidate"] = True
            if results[-1].confidence >= self.candidate_confidence:
                break
        return results

    def _surfaces(self, frame, prob: np.ndarray, scale: float) -> list:
        """Up to ``surface_candidates`` object-sized surfaces off the floor
        (:func:`~gs2pose_ros.camera.object_sized_surfaces`, the floor from
        :func:`~gs2pose_ros.camera.fit_dominant_plane`), the one the full-frame pass's ``prob``
        rates highest (mean) first, as ``(box (x0, y0, x1, y1), [H, W] bool)`` in frame pixels.
        Empty without depth.

        The shipped printed_box network rated a checkered pole above the box beside it (generated
        seed 11: the box behind the pole, and the box at the image border by the pole, 70-90 %
        in view, in neither full-frame candidate, whose crops followed the pole)."""
        from gs2pose_ros.camera import fit_dominant_plane, object_sized_surfaces, on_plane

        if self.surface_candidates <= 0 or not self.use_depth or frame.depth is None \
                or self.support_plane_tol is None:
            return []
        plane = fit_dominant_plane(frame.depth, frame.K)
        if plane is None:
            return []
        flat = on_plane(frame.depth, frame.K, plane, self.support_plane_tol)
        surfaces = object_sized_surfaces(frame.depth, frame.K, float(self.metadata.diameter), flat)
        H, W = prob.shape
        rated = []
        for m in surfaces:
            vs, us = np.nonzero(m)
            rating = float(prob[np.minimum((vs * scale).astype(int), H - 1),
                                np.minimum((us * scale).astype(int), W - 1)].mean())
            rated.append((rating, _pixel_bounds(vs, us), m))
        rated.sort(key=lambda x: -x[0])  # (stable: equal ratings keep the largest first)
        return [(box, m) for _, box, m in rated[:self.surface_candidates]]

    def _estimate_in(self, frame, box, full_frame: bool, stages: dict, keep=None) -> CoarsePose:
        """Crop passes and the pose for one candidate box ``(x0, y0, x1, y1)`` (frame pixels);
        ``keep``: an optional ``[H, W]`` bool region of the frame the masks are confined to."""
        t1 = time.perf_counter()
        # the full-frame pass sees the object small and may only catch part of it: the first crop
        # keeps context around its box (as the training's context samples do); later ones are tight
        crop_box, crop, K_crop = self._crop(frame, box, padding=1.0 if full_frame else None)
        plane = None
        if self.support_plane_tol is not None and self.use_depth and frame.depth is not None:
            from gs2pose_ros.camera import fit_support_plane

            # from the first crop, whose outer ring is the object's surroundings (later crops are
            # tight: their ring can lie on the object)
            plane = fit_support_plane(frame.depth, frame.K, crop_box)
        pred = self._predict_crop(frame, crop_box, crop, K_crop, plane, keep)
        for _ in range(self.refine_passes):
            b = self._mask_box(pred["mask"])
            if b is None:
                break
            x0, y0, w, _ = crop_box
            s = w / self.size
            fb = (x0 + b[0] * s, y0 + b[1] * s, x0 + b[2] * s, y0 + b[3] * s)
            edge = 1.0
            if min(b[0], b[1]) <= edge or max(b[2], b[3]) >= self.size - edge:
                # the mask runs into the crop's border: the crop was too tight (a partial detection),
                # grow it around the visible part instead of zooming further in
                cx, cy, half = 0.5 * (fb[0] + fb[2]), 0.5 * (fb[1] + fb[3]), 0.75 * w
                fb = (cx - half, cy - half, cx + half, cy + half)
            elif max(fb[2] - fb[0], fb[3] - fb[1]) < 0.3 * w:
                # zooming in more than ~2.5x in one pass means the mask caught a detail, not the object
                break
            crop_box, crop, K_crop = self._crop(frame, fb)
            pred = self._predict_crop(frame, crop_box, crop, K_crop, plane, keep)
        support = None
        if plane is not None:
            crop_box, crop, K_crop, pred, support = self._grow_mask(frame, crop_box, crop, K_crop, pred, plane)
        stages["network"] = stages.get("network", 0.0) + time.perf_counter() - t1
        t2 = time.perf_counter()
        depth_crop = None
        if self.use_depth and frame.depth is not None:
            from gs2pose_ros.camera import crop_image

            x0, y0, w, h = crop_box
            depth_crop = crop_image(frame.depth, x0, y0, w, h, self.size, self.size,
                                    interpolation=cv2.INTER_NEAREST, border_value=0)
        # a surface candidate (keep) stands on Pose-Net's own correspondences: the orientation
        # search took up to 1.6 s on a wrong surface, and surfaces are tried where nothing was
        # found (out of view, mostly)
        result = self.pose_from_prediction(pred, K_crop, depth_crop, support=support,
                                           search=None if keep is None else False)
        stages["pose"] = stages.get("pose", 0.0) + time.perf_counter() - t2
        result.roi = crop_box
        result.mask = self._frame_mask(frame, crop_box, self._binary_mask(pred["mask"]))
        return result

    def _predict_crop(self, frame, crop_box, crop, K_crop, plane=None, keep=None):
        """``predict`` with the mask zeroed on the crop's parts outside the frame (padding),
        given the supporting ``plane`` (n, d), on the pixels whose depth lies on it (``K_crop``: the
        crop's intrinsics, as ``_crop`` returns them) and, given ``keep`` (``[H, W]`` bool, frame
        pixels), outside it."""
        pred = self.predict(crop)
        if plane is not None:
            self._drop_plane_pixels(frame, crop_box, K_crop, pred["mask"], plane)
        if keep is not None:
            from gs2pose_ros.camera import crop_image

            x0, y0, w, h = crop_box
            inside = crop_image(keep.astype(np.uint8), x0, y0, w, h, self.size, self.size,
                                interpolation=cv2.INTER_NEAREST, border_value=0)
            pred["mask"][inside == 0] = 0.0
        pred["rgb"] = crop
        x0, y0, w, h = crop_box
        S = self.size
        c0, c1 = int(math.floor(-x0 * S / w)), int(math.ceil((frame.width - x0) * S / w))
        r0, r1 = int(math.floor(-y0 * S / h)), int(math.ceil((frame.height - y0) * S / h))
        m = pred["mask"]
        if c0 > 0:
            m[:, :c0] = 0
        if r0 > 0:
            m[:r0] = 0
        if c1 < S:
            m[:, max(c1, 0):] = 0
        if r1 < S:
            m[max(r1, 0):] = 0
        return pred

    #: the supporting plane is left out of a mask only if that keeps at least this share of it
    #: (more on the plane means the "plane" is the object's own face, seen up close)
    MIN_KEPT_OFF_PLANE = 0.2

    def _drop_plane_pixels(self, frame, crop_box, K_crop: np.ndarray, mask: np.ndarray,
                           plane: np.ndarray) -> None:
        """Zeroes ``mask`` ([S, S] probabilities, in place) where the crop's depth lies on ``plane``.

        A network trained on renders composited over flat textures has never seen the object
        standing on a floor: longer-trained printed_box networks painted a blob of the wooden
        floor in front of the box, as large as the box, into the mask (`make demo`'s sequence),
        and those pixels' NOCS pulled the pose 21-180 deg off. With depth, the supporting plane is
        never the object."""
        from gs2pose_ros.camera import crop_image, on_plane

        x0, y0, w, h = crop_box
        S = mask.shape[0]
        depth = crop_image(frame.depth, x0, y0, w, h, S, S, interpolation=cv2.INTER_NEAREST, border_value=0)
        flat = on_plane(depth, K_crop, plane, self.support_plane_tol)
        inside = mask > self.low_mask_threshold
        n = int(inside.sum())
        if n and (inside & ~flat).sum() >= self.MIN_KEPT_OFF_PLANE * n:
            mask[flat] = 0.0

    #: the depth surface under the mask replaces it for the depth stage only when it is at least
    #: this much larger (the network caught a piece of the object, not its outline)
    GROW_MIN_RATIO = 1.5

    def _grow_mask(self, frame, crop_box, crop, K_crop, pred, plane):
        """The visible surface around Pose-Net's mask, from the depth
        (:func:`~gs2pose_ros.camera.depth_connected_region`, off the supporting ``plane``).

        Next to an occluder the shipped printed_box network masked 0.5-12 % of the box (generated
        seed 8, frames 9-16): the depth stage then fitted the model to a patch, and the flipped pose
        fitted the patch as well. When the surface is ``GROW_MIN_RATIO`` times the mask, it is the
        depth stage's support (crop pixels, ``[S, S]`` bool), and a crop that cuts it is replaced by
        one around it, predicted again. Returns ``(crop_box, crop, K_crop, pred, support or None)``."""
        from gs2pose_ros.camera import crop_image, depth_connected_region, on_plane

        seed = self._frame_mask(frame, crop_box, self._binary_mask(pred["mask"]))
        n_seed = int(seed.sum())
        if n_seed < 6:
            return crop_box, crop, K_crop, pred, None
        flat = on_plane(frame.depth, frame.K, plane, self.support_plane_tol)
        if (seed & ~flat).sum() < self.MIN_KEPT_OFF_PLANE * n_seed:
            return crop_box, crop, K_crop, pred, None  # the "plane" is the object's face (a tight roi)
        grown = depth_connected_region(frame.depth, frame.K, seed, exclude=flat,
                                       radius=float(self.metadata.diameter))
        if grown.sum() < self.GROW_MIN_RATIO * n_seed:
            return crop_box, crop, K_crop, pred, None
        box = _pixel_bounds(*np.nonzero(grown))
        x0, y0, w, h = crop_box
        if box[0] < x0 or box[1] < y0 or box[2] > x0 + w or box[3] > y0 + h:
            crop_box, crop, K_crop = self._crop(frame, box)
            pred = self._predict_crop(frame, crop_box, crop, K_crop, plane)
        x0, y0, w, h = crop_box
        support = crop_image(grown.astype(np.uint8), x0, y0, w, h, self.size, self.size,
                             interpolation=cv2.INTER_NEAREST, border_value=0) > 0
        return crop_box, crop, K_crop, pred, support

    def _binary_mask(self, prob: np.ndarray) -> np.ndarray:
        """``prob > mask_threshold``; a weak mask (under 30 pixels) is taken at
        ``low_mask_threshold`` instead (see :meth:`locate_all`)."""
        m = prob > self.mask_threshold
        return m if m.sum() >= 30 else prob > self.low_mask_threshold

    def _frame_mask(self, frame, crop_box, mask_crop):
        x0, y0, w, h = crop_box
        S = self.size
        # crop pixel index j (centre j + 0.5) -> frame continuous x0 + (j + 0.5) w / S -> frame index
        M = np.array([[w / S, 0, x0 + 0.5 * w / S - 0.5], [0, h / S, y0 + 0.5 * h / S - 0.5]])
        out = cv2.warpAffine(mask_crop.astype(np.uint8), M, (frame.width, frame.height),
                             flags=cv2.INTER_NEAREST, borderValue=0)
        return out.astype(bool)

    def pose_from_prediction(self, pred: dict, K_crop: np.ndarray, depth_crop: Optional[np.ndarray] = None,
                             support: Optional[np.ndarray] = None, search: Optional[bool] = None) -> CoarsePose:
        """Correspondences from one prediction (crop coordinates) -> pose + confidence.

        support: optional ``[S, S]`` bool, the object's visible surface where the mask caught only
        part of it (:meth:`_grow_mask`): the depth stage fits and checks the model against it.
        search: whether a low-confidence pose is searched for over orientations (:meth:`_search`);
        None: the estimator's ``search`` setting."""
        S = pred["mask"].shape[0]
        mask = self._binary_mask(pred["mask"])
        n_mask = int(mask.sum())
        if n_mask < 6:
            return CoarsePose(None, 0.0, 0, n_mask, None, None, "none")
        sel = mask & (pred["conf"] > self.conf_threshold)
        if sel.sum() < max(12, 0.2 * n_mask):
            sel = mask
        vs, us = np.nonzero(sel)
        if len(us) > self.max_points:
            k = self.rng.choice(len(us), self.max_points, replace=False)
            vs, us = vs[k], us[k]
        P = decode_nocs(pred["nocs"][vs, us], self.metadata)
        method = "none"
        R = t = None
        details = {}
        diam = self.metadata.diameter
        if depth_crop is not None:
            z = depth_crop[vs, us].astype(np.float64)
            good = z > 0
            if good.sum() >= max(12, 0.3 * len(z)):
                u = us[good] + 0.5
                v = vs[good] + 0.5
                Q = np.stack([(u - K_crop[0, 2]) / K_crop[0, 0] * z[good], (v - K_crop[1, 2]) / K_crop[1, 1] * z[good],
                              z[good]], -1)
                if self.icp and self.geometry is not None:
                    surface = mask if support is None else mask | support
                    R, t, details = self._pose_with_depth(P[good], Q, pred["conf"][vs[good], us[good]], surface,
                                                          K_crop, depth_crop, pred.get("rgb"),
                                                          self.search if search is None else search)
                else:
                    R, t, _ = ransac_kabsch(P[good], Q, self.inlier_threshold * diam, self.ransac_iterations,
                                            self.rng)
                method = "kabsch"
        if R is None:
            uv = np.stack([us + 0.5, vs + 0.5], -1)
            R, t, _ = pnp_ransac(P, uv, K_crop, self.reproj_px, self.ransac_iterations)
            method = "pnp" if R is not None else "none"
        if R is None:
            return CoarsePose(None, 0.0, 0, len(us), None, None, "none")
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = t
        # consistency over *all* mask pixels (reprojection of their decoded points)
        va, ua = np.nonzero(mask)
        Pa = decode_nocs(pred["nocs"][va, ua], self.metadata)
        pc = Pa @ R.T + t
        zc = np.maximum(pc[:, 2], 1e-9)
        proj = np.stack([K_crop[0, 0] * pc[:, 0] / zc + K_crop[0, 2], K_crop[1, 1] * pc[:, 1] / zc + K_crop[1, 2]], -1)
        err = np.linalg.norm(proj - np.stack([ua + 0.5, va + 0.5], -1), axis=-1)
        # "consistent" = reprojects within 5 % of the object's apparent diameter (scale invariant)
        diam_px = K_crop[0, 0] * diam / max(float(t[2]), 1e-6)
        tol = max(self.reproj_px, 0.05 * diam_px)
        consistent = (err < tol) & (pc[:, 2] > 0)
        inlier_ratio = float(consistent.mean())
        if "check" in details:
            agreement, conf = self._depth_confidence(details)
        else:
            agreement = self._agreement(T, K_crop, mask, proj)
            conf = float(np.clip(inlier_ratio * agreement, 0.0, 1.0))
        return CoarsePose(T, conf, int(consistent.sum()), len(us), None, None, method,
                          inlier_ratio=inlier_ratio, agreement=agreement, details=details)

    # -- with depth: hypotheses, ICP, depth check -------------------------------------------------

    def _pose_with_depth(self, P, Q, conf, mask, K_crop, depth_crop, rgb_crop=None, search: bool = True):
        """3D-3D correspondences -> the best of several RANSAC hypotheses, each refined by ICP against
        the depth and scored by :meth:`depth_check`. Returns ``(R, t, details)``."""
        diam = self.metadata.diameter
        geom = self.geometry
        hyps = ransac_kabsch_hypotheses(P, Q, self.inlier_threshold * diam, self.ransac_iterations, self.rng,
                                        count=self.hypotheses)
        if not hyps:
            return None, None, {}
        R_ls, t_ls = kabsch(P, Q, np.clip(conf, 0.05, 1.0))
        cands = [(Rh, th) for Rh, th, _, _ in hyps] + [(R_ls, t_ls)]
        S = mask.shape[0]
        z = depth_crop.astype(np.float64)
        v, u = np.mgrid[0:S, 0:S] + 0.5
        X = np.stack([(u - K_crop[0, 2]) / K_crop[0, 0] * z, (v - K_crop[1, 2]) / K_crop[1, 1] * z, z], -1)
        valid = z > 0
        region = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & valid
        Xr = X[region]
        Xm = X[mask & valid]
        centre = self.metadata.box_centre
        radius = 0.55 * float(np.linalg.norm(np.asarray(self.metadata.bbox_max) - self.metadata.bbox_min))
        tol = self.depth_tolerance * diam
        anchors = None
        if self.anchor_weight > 0:
            ka = self.rng.choice(len(P), min(len(P), self.icp_points), replace=False)
            anchors = (P[ka], Q[ka])
        best, out = None, []
        k, flipped = 0, False
        while True:
            if k == len(cands):
                if flipped or not self.flips or best is None:
                    break
                # the best pose turned by 180 degrees about each object axis through the box centre:
                # the usual ambiguity of a near-symmetric shape, which RANSAC on noisy NOCS may miss
                flipped = True
                cands.extend(turned_about(best["R"], best["t"], F, centre) for F in HALF_TURNS)
            Rh, th = cands[k]
            k += 1
            if not np.all(np.isfinite(Rh)) or not np.all(np.isfinite(th)):
                continue
            c = Rh @ centre + th
            Xs = Xr[np.linalg.norm(Xr - c, axis=1) < radius + 0.1 * diam]
            if len(Xs) > self.icp_points:
                Xs = Xs[self.rng.choice(len(Xs), self.icp_points, replace=False)]
            Ri, ti, _ = icp_point_to_plane(Rh, th, Xs, geom, 0.1 * diam, tol, self.icp_iterations, anchors=anchors,
                                           anchor_weight=self.anchor_weight,
                                           anchor_gate=2 * self.inlier_threshold * diam, K=K_crop)
            dup = next((o for o in out if _same_pose(o["R"], o["t"], Ri, ti, 2.0, 0.01 * diam)), None)
            if dup is not None:  # converged onto a pose already checked
                continue
            chk = self.depth_check(Ri, ti, K_crop, depth_crop, Xm, P, Q, rgb_crop)
            chk["hypothesis"] = k - 1
            chk["T_before"] = np.concatenate([Rh, th[:, None]], 1)
            chk["R"], chk["t"] = Ri, ti
            out.append(chk)
            if best is None or chk["score"] > best["score"]:
                best = chk
        if best is None:
            return None, None, {}
        details = {"hypotheses": out, "chosen": best["hypothesis"], "check": best}
        if search and self._depth_confidence(dict(details))[1] < self.search_below:
            found = self._search(Xr, Xm, K_crop, depth_crop, rgb_crop, P, Q, centre, radius, best)
            if found is not None:
                details = found
        return details["check"]["R"], details["check"]["t"], details

    @staticmethod
    def _score_colour(chk: dict) -> float:
        """The depth check's colour factor: its correlation, 0.75 (neutral) where the visible part
        had no texture to compare."""
        return 0.75 if math.isnan(chk["colour"]) else chk["colour"]

    @staticmethod
    def _geometric_score(chk: dict) -> float:
        """The depth check's score without the NOCS term (for poses the NOCS did not propose)."""
        return chk["match"] * (1.0 - chk["violation"]) * chk["fit"] * CoarsePoseEstimator._score_colour(chk)

    def _search(self, Xr, Xm, K_crop, depth_crop, rgb_crop, P, Q, centre, radius, nocs_best):
        """Fallback when the NOCS hypotheses explain the depth poorly (an under-trained network): a
        grid of orientations (:func:`rotation_grid`) placed behind the observed surface's centroid,
        each refined by a short ICP; the best few by ICP fit get the full ICP and the depth check
        (without the NOCS term: ``_geometric_score``); the winner replaces the NOCS pose when it
        explains the depth and the texture better. Returns the details dict, or None."""
        geom = self.geometry
        diam = self.metadata.diameter
        tol = self.depth_tolerance * diam
        if len(Xm) < 12:
            return None
        c_obs = np.median(Xm, axis=0)
        ray = c_obs / max(np.linalg.norm(c_obs), 1e-9)
        c_obj = c_obs + ray * 0.15 * diam  # the object's centre lies behind its visible surface
        Xs = Xr[np.linalg.norm(Xr - c_obj, axis=1) < radius + 0.1 * diam]
        if len(Xs) < 12:
            return None
        Xf = Xs[self.rng.choice(len(Xs), min(len(Xs), 300), replace=False)]
        coarse = []
        for Rg in self._grid:
            tg = c_obj - Rg @ centre
            Ri, ti, frac = icp_point_to_plane(Rg, tg, Xf, geom, 0.15 * diam, 2 * tol, 6)
            coarse.append((frac, Ri, ti))
        coarse.sort(key=lambda c: -c[0])
        Xi = Xs if len(Xs) <= self.icp_points else Xs[self.rng.choice(len(Xs), self.icp_points, replace=False)]
        cands = [dict(nocs_best)]
        for _, Rc, tc in coarse[:8]:
            Ri, ti, _ = icp_point_to_plane(Rc, tc, Xi, geom, 0.05 * diam, tol, 8, K=K_crop)
            if any(_same_pose(o["R"], o["t"], Ri, ti, 2.0, 0.01 * diam) for o in cands):
                continue
            chk = self.depth_check(Ri, ti, K_crop, depth_crop, Xm, P, Q, rgb_crop)
            chk["R"], chk["t"] = Ri, ti
            chk["T_before"] = np.concatenate([Rc, tc[:, None]], 1)
            chk["hypothesis"] = -1 - len(cands)
            cands.append(chk)
        for c in cands:
            c["score"] = self._geometric_score(c)
        win = max(cands, key=lambda c: c["score"])
        if win is cands[0]:
            return None
        # turns about the object's axes that the surface may not pin down (a mug about its body's axis
        # with the handle hidden): the texture then decides
        Xl = Xs if len(Xs) <= 500 else Xs[self.rng.choice(len(Xs), 500, replace=False)]
        base = win
        for axis in np.eye(3):
            for deg in (-24.0, -16.0, -8.0, 8.0, 16.0, 24.0):
                R0, t0 = turned_about(base["R"], base["t"], _rodrigues(axis * math.radians(deg)), centre)
                Ri, ti, _ = icp_point_to_plane(R0, t0, Xl, geom, 2 * tol, tol, 5, K=K_crop)
                chk = self.depth_check(Ri, ti, K_crop, depth_crop, Xm, P, Q, rgb_crop)
                chk["R"], chk["t"] = Ri, ti
                chk["T_before"] = np.concatenate([R0, t0[:, None]], 1)
                chk["hypothesis"] = -1 - len(cands)
                chk["score"] = self._geometric_score(chk)
                if chk["score"] > win["score"]:
                    cands.append(chk)
                    win = chk
        return {"hypotheses": cands, "chosen": win["hypothesis"], "check": win, "searched": True}

    def _equivalent(self, a: dict, b: dict, max_deg: float, max_dist: float) -> bool:
        """Whether two poses are the same up to the object's symmetries (metadata) within the bounds."""
        from gs2pose_ros.posenet.evaluate import symmetric_rotation_error_deg

        m = self.metadata
        if float(np.linalg.norm(a["t"] - b["t"])) >= max_dist:
            return False
        return symmetric_rotation_error_deg(a["R"], b["R"], m.symmetries_continuous, m.symmetries_discrete) < max_deg

    def _depth_confidence(self, details: dict) -> tuple:
        """``(agreement, confidence)`` of the chosen depth hypothesis (see the module docstring)."""
        chk = details["check"]
        diam = self.metadata.diameter
        cons = chk["match"] / max(chk["match"] + chk["violation"], 1e-9)
        a_cons = float(np.clip((cons - 0.7) / 0.25, 0.0, 1.0))
        a_support = float(np.clip(chk["match"] / 0.35, 0.0, 1.0))
        a_nocs = 1.0 if details.get("searched") else float(np.clip(chk["nocs"] / 0.15, 0.0, 1.0))
        a_colour = 1.0 if math.isnan(chk["colour"]) else float(np.clip((chk["colour"] - 0.6) / 0.2, 0.0, 1.0))
        # another pose, outside the success region of the chosen one, that explains the data about as
        # well (e.g. a flipped near-symmetric object) makes the choice a coin toss
        rival = max((o["score"] for o in details["hypotheses"] if not self._equivalent(o, chk, 15.0, 0.1 * diam)),
                    default=0.0)
        amb = rival / max(chk["score"], 1e-12)
        a_amb = float(np.clip(2.0 * (1.0 - amb), 0.0, 1.0))
        agreement = a_cons * a_support
        details["confidence_terms"] = {"consistency": a_cons, "support": a_support, "nocs": a_nocs,
                                       "colour": a_colour, "unambiguous": a_amb}
        return agreement, float(np.clip(agreement * a_nocs * a_colour * a_amb, 0.0, 1.0))

    def depth_check(self, R, t, K_crop, depth_crop, X_mask, P, Q, rgb_crop=None) -> dict:
        """How well the pose explains the depth: the model's visible points (z-buffered, half the crop
        resolution) against the observed depth at their pixels, the mask's observed points against the
        model surface, and the NOCS correspondences' residuals.

        Returns ``match`` (fraction of visible model points with a depth reading within the tolerance),
        ``violation`` (fraction seen *through*: the reading lies beyond the model surface), ``fit``
        (fraction of the mask's points within the tolerance of the model surface), ``nocs`` (fraction
        of correspondences within 2x the RANSAC threshold) and ``score``.
        """
        geom = self.geometry
        diam = self.metadata.diameter
        tol = self.depth_tolerance * diam
        S = depth_crop.shape[0]
        pc = geom.points @ R.T + t
        zc = pc[:, 2]
        front = zc > 1e-3
        u = K_crop[0, 0] * pc[:, 0] / np.maximum(zc, 1e-3) + K_crop[0, 2]
        v = K_crop[1, 1] * pc[:, 1] / np.maximum(zc, 1e-3) + K_crop[1, 2]
        inside = front & (u >= 0) & (u < S) & (v >= 0) & (v < S)
        res = {"match": 0.0, "violation": 1.0, "fit": 0.0, "nocs": 0.0, "colour": float("nan"), "visible": 0,
               "score": 0.0}
        if inside.sum() < 10:
            return res
        ui, vi, zi = u[inside].astype(int), v[inside].astype(int), zc[inside]
        vis = visible_points(pc, K_crop, tol)[inside]
        obs = depth_crop[vi, ui].astype(np.float64)
        have = vis & (obs > 0)
        n = max(int(have.sum()), 1)
        match = (np.abs(obs - zi) < tol) & have
        viol = (obs > zi + tol) & have
        res["visible"] = int(vis.sum())
        res["match"] = float(match.sum() / n)
        res["violation"] = float(viol.sum() / n)
        if len(X_mask):
            qo = (X_mask - t) @ R
            d, _ = geom.tree.query(qo, distance_upper_bound=tol)
            res["fit"] = float(np.isfinite(d).mean())
        if len(P):
            r = np.linalg.norm(P @ R.T + t - Q, axis=1)
            res["nocs"] = float((r < 2 * self.inlier_threshold * diam).mean())
        if rgb_crop is not None and geom.colors is not None and match.sum() >= 20:
            # texture check: the model's colours against the image at the depth-confirmed points,
            # as a correlation (invariant to the light's gain and offset); a flipped pose of a
            # near-symmetric shape puts the wrong print on the visible faces
            mc = geom.colors[np.nonzero(inside)[0][match]]
            oc = rgb_crop[vi[match], ui[match]].astype(np.float64) / 255.0
            mc = mc - mc.mean(0)
            oc = oc - oc.mean(0)
            den = math.sqrt(float((mc * mc).sum()) * float((oc * oc).sum()))
            if den > 1e-9 and float(mc.std(0).max()) > 0.03:  # the visible part has some texture
                res["colour"] = 0.5 * (1.0 + float((mc * oc).sum()) / den)
        res["score"] = res["match"] * (1.0 - res["violation"]) * res["fit"] * res["nocs"] * self._score_colour(res)
        return res

    def _agreement(self, T, K_crop, mask, proj) -> float:
        S = mask.shape[0]
        if self.model is not None:
            from gs2pose_ros.render import render

            with torch.no_grad():
                out = render(self.model, torch.as_tensor(T, dtype=self.model.dtype, device=self.model.device),
                             torch.as_tensor(K_crop, dtype=self.model.dtype, device=self.model.device), S, S)
            sil = out.alpha.float().cpu().numpy() > 0.5
            union = np.logical_or(sil, mask).sum()
            # the predicted mask is the *visible* part: score it against the silhouette with IoU,
            # but do not punish occlusion twice: use the fraction of the mask explained by the silhouette
            # times a mild IoU term
            explained = np.logical_and(sil, mask).sum() / max(mask.sum(), 1)
            iou = np.logical_and(sil, mask).sum() / max(union, 1)
            return float(explained * math.sqrt(iou))
        inside = (proj[:, 0] >= 0) & (proj[:, 0] < S) & (proj[:, 1] >= 0) & (proj[:, 1] < S)
        pi = np.clip(proj.astype(int), 0, S - 1)
        return float((inside & mask[pi[:, 1], pi[:, 0]]).mean())
