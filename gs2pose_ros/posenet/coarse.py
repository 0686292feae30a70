"""The coarse pose: Pose-Net's NOCS image -> correspondences -> a rigid pose, with a confidence.

Pipeline of :meth:`CoarsePoseEstimator.estimate` for one :class:`~gs2pose_ros.frame.Frame`:

1. **Finding the object** (no external detector): the whole image letterboxed to the network's input
   size, one pass, the mask's largest confident connected component -> a box in the frame. Then the
   precise pass on a square crop around that box (resampled to the input size; the crop is a new K),
   repeated ``refine_passes`` times around the refined mask; a mask that runs into the crop's
   border means the crop was too tight (a partial detection) and the next crop grows around it. A region of interest from outside (``roi``) skips the
   full-frame pass.
2. **Correspondences**: pixels with mask probability > ``mask_threshold`` (and, with a confidence
   head, confidence > ``conf_threshold`` when enough remain) decode to object points
   ``bbox_min + nocs * (bbox_max - bbox_min)`` (:func:`decode_nocs`).
3. **Pose**: with depth, 3D-3D: the crop's depth back-projected through the crop's K, then Kabsch
   (rotation + translation, scale known = 1) inside RANSAC (:func:`ransac_kabsch`). Without depth
   (or too few depth readings), 2D-3D: ``cv2.solvePnPRansac`` (SQPnP minimal solver, then
   Levenberg-Marquardt refinement on the inliers, :func:`pnp_ransac`).
4. **Confidence** in [0, 1]: ``inlier_ratio * agreement``, where ``inlier_ratio`` is the fraction of
   mask pixels consistent with the pose (all of them, not just RANSAC's sample pool: their decoded
   point reprojects within 5 % of the object's apparent diameter, at least ``reproj_px``) and
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

from gs2pose_ros.errors import InputError
from gs2pose_ros.gaussians import GaussianModel, ObjectMetadata

__all__ = ["CoarsePose", "CoarsePoseEstimator", "decode_nocs", "kabsch", "ransac_kabsch", "pnp_ransac",
           "letterbox"]


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
    once (batched SVD); the best is refit on its inliers ``refine_rounds`` times.

    Returns ``(R [3, 3], t [3], inliers [N] bool)``; ``R`` is None when fewer than 3 points are given.
    """
    P = np.asarray(P, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    n = len(P)
    if n < 3:
        return None, None, np.zeros(n, bool)
    rng = rng or np.random.default_rng(0)
    idx = np.stack([rng.choice(n, 3, replace=False) for _ in range(iterations)]) if n < 64 else \
        rng.integers(0, n, size=(iterations, 3))
    # drop degenerate samples (repeated or nearly collinear points)
    Ps = P[idx]
    area = np.linalg.norm(np.cross(Ps[:, 1] - Ps[:, 0], Ps[:, 2] - Ps[:, 0]), axis=-1)
    ok = area > 1e-10
    if not ok.any():
        return None, None, np.zeros(n, bool)
    idx = idx[ok]
    R, t = kabsch(P[idx], Q[idx])
    # score in chunks to bound memory (hyp x N)
    best_count, best = -1, 0
    for s in range(0, len(idx), 64):
        res = np.linalg.norm(np.einsum("hij,nj->hni", R[s:s + 64], P) + t[s:s + 64, None] - Q[None], axis=-1)
        cnt = (res < threshold).sum(1)
        k = int(np.argmax(cnt))
        if cnt[k] > best_count:
            best_count, best = int(cnt[k]), s + k
    Rb, tb = R[best], t[best]
    inl = np.linalg.norm(P @ Rb.T + tb - Q, axis=-1) < threshold
    for _ in range(refine_rounds):
        if inl.sum() < 3:
            break
        Rb, tb = kabsch(P[inl], Q[inl])
        inl = np.linalg.norm(P @ Rb.T + tb - Q, axis=-1) < threshold
    return Rb, tb, inl


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
                 max_points: int = 3000, seed: int = 0, refine_passes: int = 2, use_depth: bool = True):
        self.net = posenet.eval()
        self.metadata = metadata
        self.model = model
        self.size = posenet.config.input_size
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
        self.rng = np.random.default_rng(seed)
        self._nocs_cols = None

    @classmethod
    def from_file(cls, path, model: Optional[GaussianModel] = None, device=None, **kwargs) -> "CoarsePoseEstimator":
        """Loads a Pose-Net saved by ``gs2pose train-posenet`` (see :func:`~gs2pose_ros.posenet.io.load_posenet`)."""
        from gs2pose_ros.posenet.io import load_posenet

        net, meta, _ = load_posenet(path, device=device)
        return cls(net, meta, model, **kwargs)

    # -- the network ----------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, crop_rgb: np.ndarray) -> dict:
        """One network pass on an ``[S, S, 3]`` uint8 crop -> numpy ``nocs`` [S, S, 3], ``mask`` [S, S]
        (probability) and ``conf`` [S, S] (probability, ones without a confidence head)."""
        x = torch.from_numpy(np.ascontiguousarray(crop_rgb)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        out = self.net(x)
        res = {"nocs": out["nocs"][0].permute(1, 2, 0).float().cpu().numpy(),
               "mask": torch.sigmoid(out["mask_logits"][0, 0]).float().cpu().numpy()}
        res["conf"] = (torch.sigmoid(out["conf_logits"][0, 0]).float().cpu().numpy() if "conf_logits" in out
                       else np.ones_like(res["mask"]))
        return res

    def _mask_box(self, prob: np.ndarray):
        """Box (x0, y0, x1, y1) of the best connected component of ``prob > threshold`` (None if empty)."""
        m = (prob > self.mask_threshold).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        if n <= 1:
            return None
        scores = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=n)[1:]
        k = int(np.argmax(scores)) + 1
        if stats[k, cv2.CC_STAT_AREA] < 4:
            return None
        x, y, w, h = stats[k, :4]
        return float(x), float(y), float(x + w), float(y + h)

    def locate(self, frame) -> Optional[tuple]:
        """The object's box ``(x0, y0, x1, y1)`` in frame pixels from a full-frame pass (None if not seen)."""
        img, s = letterbox(frame.rgb, self.size)
        prob = self.predict(img)["mask"]
        prob[int(math.ceil(frame.height * s)):] = 0  # the padding is not the image
        prob[:, int(math.ceil(frame.width * s)):] = 0
        box = self._mask_box(prob)
        if box is None:
            return None
        return tuple(v / s for v in box)

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
        if roi is not None:
            x, y, w, h = (float(v) for v in roi)
            if not (w > 0 and h > 0):
                raise InputError(f"estimate: roi {roi} must be (x0, y0, w, h) with w, h > 0 pixels")
            box = (x, y, x + w, y + h)
        else:
            box = self.locate(frame)
            stages["locate"] = time.perf_counter() - t0
            if box is None:
                return CoarsePose(None, 0.0, 0, 0, None, None, "none", stages=stages)
        t1 = time.perf_counter()
        # the full-frame pass sees the object small and may only catch part of it: the first crop
        # keeps context around its box (as the training's context samples do); later ones are tight
        crop_box, crop, K_crop = self._crop(frame, box, padding=1.0 if roi is None else None)
        pred = self._predict_crop(frame, crop_box, crop)
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
            pred = self._predict_crop(frame, crop_box, crop)
        stages["network"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        depth_crop = None
        if self.use_depth and frame.depth is not None:
            from gs2pose_ros.camera import crop_image

            x0, y0, w, h = crop_box
            depth_crop = crop_image(frame.depth, x0, y0, w, h, self.size, self.size,
                                    interpolation=cv2.INTER_NEAREST, border_value=0)
        result = self.pose_from_prediction(pred, K_crop, depth_crop)
        stages["pose"] = time.perf_counter() - t2
        result.roi = crop_box
        result.mask = self._frame_mask(frame, crop_box, pred["mask"] > self.mask_threshold)
        result.stages = stages
        return result

    def _predict_crop(self, frame, crop_box, crop):
        """``predict`` with the mask zeroed on the crop's parts outside the frame (padding)."""
        pred = self.predict(crop)
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

    def _frame_mask(self, frame, crop_box, mask_crop):
        x0, y0, w, h = crop_box
        S = self.size
        # crop pixel index j (centre j + 0.5) -> frame continuous x0 + (j + 0.5) w / S -> frame index
        M = np.array([[w / S, 0, x0 + 0.5 * w / S - 0.5], [0, h / S, y0 + 0.5 * h / S - 0.5]])
        out = cv2.warpAffine(mask_crop.astype(np.uint8), M, (frame.width, frame.height),
                             flags=cv2.INTER_NEAREST, borderValue=0)
        return out.astype(bool)

    def pose_from_prediction(self, pred: dict, K_crop: np.ndarray, depth_crop: Optional[np.ndarray] = None
                             ) -> CoarsePose:
        """Correspondences from one prediction (crop coordinates) -> pose + confidence."""
        S = pred["mask"].shape[0]
        mask = pred["mask"] > self.mask_threshold
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
        diam = self.metadata.diameter
        if depth_crop is not None:
            z = depth_crop[vs, us].astype(np.float64)
            good = z > 0
            if good.sum() >= max(12, 0.3 * len(z)):
                u = us[good] + 0.5
                v = vs[good] + 0.5
                Q = np.stack([(u - K_crop[0, 2]) / K_crop[0, 0] * z[good], (v - K_crop[1, 2]) / K_crop[1, 1] * z[good],
                              z[good]], -1)
                R, t, _ = ransac_kabsch(P[good], Q, self.inlier_threshold * diam, self.ransac_iterations, self.rng)
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
        agreement = self._agreement(T, K_crop, mask, proj)
        conf = float(np.clip(inlier_ratio * agreement, 0.0, 1.0))
        return CoarsePose(T, conf, int(consistent.sum()), len(us), None, None, method,
                          inlier_ratio=inlier_ratio, agreement=agreement)

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
