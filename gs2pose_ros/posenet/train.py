"""Training Pose-Net from the object's Gaussian model alone (no real images, no CAD model).

Where the cost goes and how it is spent (measured on the 2-core development CPU, docs/posenet.md):
one CPU render of a ~5k-Gaussian model at 192x192 takes ~0.1-0.2 s, one training step of the CPU
network at batch 16 ~0.35 s. Rendering a fresh view for every sample would cost five times the
training step, so training draws from a *refreshed pool* of rendered views:

1. A **view** is a random pose (rotation uniform on SO(3), or around the reference views of a
   dataset with ``views_from``; apparent size 60-350 px under a random focal length; lateral offset
   up to ~0.4 z so the perspective of off-centre objects is seen) rendered once into a *canvas*
   (``canvas_scale`` x the input size, the object's diameter about one input size) with
   :func:`gs2pose_ros.render.render`: premultiplied RGB, alpha, premultiplied NOCS (the Gaussians
   coloured by :func:`~gs2pose_ros.gaussians.nocs_colors`) and normals from the rendered depth.
   Symmetric objects are rendered at a *canonical* symmetric-equivalent pose (the camera always at
   the same angle about a continuous symmetry axis; the discrete symmetry that brings the camera
   direction closest to a fixed direction), so equal images get equal NOCS targets.
2. A **sample** is cut from a view with 2D operations only, which are exact for a pinhole camera (a
   crop is a new K): a square crop around the silhouette's box, 1.05-1.6x its size with its centre
   jittered as a detector's would be, or (``context_fraction`` of the samples) 1.8-7x its size
   with the object anywhere in it, as in the full-frame pass that finds the object, or
   (``truncate_fraction``) 1.2-4x its size with one crop edge cutting through it (12-75 % of its
   extent across that edge kept), as when it enters or leaves the view. Then: Lambert
   shading with a random light, a specular blob, pasted on a random background (flat, gradient,
   value noise, stripes, plus clutter of random shapes), random occluders (the mask target excludes
   them), colour/contrast/saturation/gamma jitter, blur and noise.
3. The pool is refreshed during training (``refresh_per_iter`` new views per step, replacing random
   old ones), so the network sees ``pool_size + iterations * refresh_per_iter`` distinct views.
   Samples are made between steps, or (``workers``) by other processes reading the pool from
   shared memory while the network trains (:class:`SampleFeed`; same batches either way).
4. Optionally, **real views** (:func:`load_real_views`): the annotated real images the model was
   built from, whole frames with their own backgrounds, the NOCS targets rendered from the Gaussian
   model at the annotated pose. ``real_fraction`` of the samples are cut from them with the same
   crops, occluders and photometric jitter (no synthetic shading or background). Rendered views
   alone leave a gap to real images that the detection in real clutter did not cross
   (docs/posenet.md, LM-O); GS2Pose's own code trains on the dataset's real frames as well.

Loss: L1 on NOCS over the (visible) mask target, BCE on the mask, and BCE of the confidence head
against "this pixel's NOCS error is below 0.04" (computed from the prediction, detached).
Optimiser: Adam with a cosine learning-rate decay over the iterations or the time limit, whichever
ends first (the paper's SGD needs far more steps than a 20-minute CPU budget gives).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from gs2pose_ros.errors import ConfigError
from gs2pose_ros.gaussians import GaussianModel, ObjectMetadata, nocs_colors
from gs2pose_ros.posenet.network import PoseNet, PoseNetConfig

__all__ = ["TrainConfig", "ViewSampler", "ViewRenderer", "SampleMaker", "SampleFeed", "train_posenet",
           "canonical_pose", "posenet_loss", "random_rotation", "load_real_views"]


@dataclass
class TrainConfig:
    """Options of :func:`train_posenet` (the CLI's flags map onto these)."""

    iterations: int = 3000
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-5
    pool_size: int = 500
    refresh_per_iter: float = 0.5
    canvas_scale: float = 1.5
    context_fraction: float = 0.25
    truncate_fraction: float = 0.15
    occluder_prob: float = 0.5
    time_limit_s: Optional[float] = None
    seed: int = 0
    device: str = "cpu"
    log_every: int = 25
    val_size: int = 24
    snapshot_s: tuple = ()  # also save the weights when the elapsed time passes each of these (seconds)
    real_fraction: float = 0.5  # share of the samples cut from real views, when train_posenet gets any
    network: PoseNetConfig = field(default_factory=PoseNetConfig.cpu)
    init_from: Optional[str] = None  # Pose-Net weights to start from (fine-tuning); same network and NOCS box
    workers: int = 0  # processes making the samples while the network trains (0: made inline)

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"train-posenet: workers must be >= 0, got {self.workers}")
        if self.iterations <= 0 or self.batch <= 0 or self.pool_size < 2:
            raise ConfigError(f"train-posenet: iterations ({self.iterations}) and batch ({self.batch}) must be "
                              f"positive and pool_size ({self.pool_size}) at least 2")
        if not 0 <= self.refresh_per_iter <= 64:
            raise ConfigError(f"train-posenet: refresh_per_iter = {self.refresh_per_iter} must be in [0, 64]")
        if self.canvas_scale < 1.0:
            raise ConfigError(f"train-posenet: canvas_scale = {self.canvas_scale} must be >= 1")
        if not 0 <= self.real_fraction <= 1:
            raise ConfigError(f"train-posenet: real_fraction = {self.real_fraction} must be in [0, 1]")
        if not (0 <= self.context_fraction and 0 <= self.truncate_fraction
                and self.context_fraction + self.truncate_fraction <= 1):
            raise ConfigError(f"train-posenet: context_fraction ({self.context_fraction}) and truncate_fraction "
                              f"({self.truncate_fraction}) must be >= 0 and sum to at most 1")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["network"] = self.network.to_dict()
        return d


# ----------------------------------------------------------------------------------------------
# Poses
# ----------------------------------------------------------------------------------------------


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix uniform on SO(3) (normalised Gaussian quaternion)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    Kx = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * Kx + (1 - math.cos(angle)) * Kx @ Kx


def canonical_pose(T_cam_obj: np.ndarray, metadata: ObjectMetadata) -> np.ndarray:
    """A symmetric-equivalent pose chosen so that equal-looking views get equal NOCS targets.

    Continuous symmetry (axis ``a``, offset ``o``): rotate about the axis so that the camera centre,
    seen from the object, lies at angle 0 in the plane orthogonal to ``a``. Discrete symmetries:
    the one (or identity) that brings the camera direction closest to a fixed direction.
    Non-symmetric objects: the pose unchanged. ``T' = T @ S`` with ``S`` a symmetry of the object.
    """
    T = np.asarray(T_cam_obj, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]
    cam_obj = -R.T @ t  # camera centre in the object frame
    if metadata.symmetries_continuous:
        sym = metadata.symmetries_continuous[0]
        a = np.asarray(sym["axis"], dtype=np.float64)
        a /= np.linalg.norm(a)
        o = np.asarray(sym.get("offset", [0.0, 0.0, 0.0]), dtype=np.float64)
        v = cam_obj - o
        e1 = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(a, e1)
        phi = math.atan2(float(v @ e2), float(v @ e1))
        Rs = _axis_angle(a, phi)
        S = np.eye(4)
        S[:3, :3] = Rs
        S[:3, 3] = o - Rs @ o
        return T @ S
    if metadata.symmetries_discrete:
        ref = np.array([0.267, 0.535, 0.802])
        best, best_S = -2.0, np.eye(4)
        cands = [np.eye(4)] + [np.asarray(s, dtype=np.float64).reshape(4, 4) for s in metadata.symmetries_discrete]
        for S in cands:
            # camera centre in the frame of T @ S: S^-1 cam_obj
            c = S[:3, :3].T @ (cam_obj - S[:3, 3])
            score = float(c @ ref / max(np.linalg.norm(c), 1e-12))
            if score > best:
                best, best_S = score, S
        return T @ best_S
    return T


class ViewSampler:
    """Random camera poses for training views: ``sample(rng) -> (T_cam_obj, f, apparent_px)``.

    rotations: None for uniform on SO(3), else an array [M, 3, 3] of reference-view rotations that
    are perturbed (up to ``perturb_deg``) and rolled about the optical axis (up to ``roll_deg``).
    """

    def __init__(self, metadata: ObjectMetadata, rotations: Optional[np.ndarray] = None,
                 perturb_deg: float = 20.0, roll_deg: float = 45.0,
                 apparent_px=(60.0, 350.0), focal_px=(450.0, 1100.0), lateral=0.4):
        self.metadata = metadata
        self.rotations = None if rotations is None else np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        self.perturb = math.radians(perturb_deg)
        self.roll = math.radians(roll_deg)
        self.apparent_px = apparent_px
        self.focal_px = focal_px
        self.lateral = lateral
        self.centre = metadata.box_centre

    def sample(self, rng: np.random.Generator):
        if self.rotations is None or len(self.rotations) == 0:
            R = random_rotation(rng)
        else:
            R0 = self.rotations[rng.integers(len(self.rotations))]
            ax = rng.normal(size=3)
            Rp = _axis_angle(ax, rng.uniform(0, self.perturb))
            Rr = _axis_angle([0.0, 0.0, 1.0], rng.uniform(-self.roll, self.roll))
            R = Rr @ R0 @ Rp
        f = rng.uniform(*self.focal_px)
        app = math.exp(rng.uniform(math.log(self.apparent_px[0]), math.log(self.apparent_px[1])))
        z = f * self.metadata.diameter / app
        lx, ly = rng.uniform(-self.lateral, self.lateral, size=2)
        c_cam = np.array([lx * z, ly * z, z])  # where the box centre goes
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = c_cam - R @ self.centre
        return canonical_pose(T, self.metadata), f, app


# ----------------------------------------------------------------------------------------------
# Rendering views into canvases
# ----------------------------------------------------------------------------------------------


class ViewRenderer:
    """Renders training views of a Gaussian model into canvases (see the module docstring).

    ``render_view(T, f, apparent_px) -> float32 [C, C, 10]``: premultiplied RGB (3), alpha (1),
    premultiplied NOCS (3), camera-frame normals (3, zero off the object).
    """

    def __init__(self, model: GaussianModel, metadata: ObjectMetadata, canvas: int):
        self.model = model
        self.metadata = metadata
        self.canvas = int(canvas)
        self.nocs = nocs_colors(model, metadata).detach()
        self.centre = metadata.box_centre

    @torch.no_grad()
    def render_view(self, T: np.ndarray, f: float, apparent_px: float) -> np.ndarray:
        from gs2pose_ros.render import render

        C = self.canvas
        c_cam = T[:3, :3] @ self.centre + T[:3, 3]
        # a crop of a full frame is a new K: canvas pixels per full-frame pixel such that the
        # object's diameter spans C / 1.5 canvas pixels, centred on the box centre's projection
        s = (C / 1.5) / apparent_px
        fx = f * s
        cx = C / 2 - fx * c_cam[0] / c_cam[2]
        cy = C / 2 - fx * c_cam[1] / c_cam[2]
        K = np.array([[fx, 0, cx], [0, fx, cy], [0, 0, 1.0]])
        dev, dt = self.model.device, self.model.dtype
        out = render(self.model, torch.as_tensor(T, dtype=dt, device=dev), torch.as_tensor(K, dtype=dt, device=dev),
                     C, C, background=None, nocs=self.nocs)
        col = out.color.clamp(0, 1).float().cpu().numpy()
        alpha = out.alpha.float().cpu().numpy()
        nocs = out.nocs.clamp(0, 1).float().cpu().numpy()
        depth = out.depth.float().cpu().numpy()
        normals = _normals_from_depth(depth, alpha, K)
        return np.concatenate([col, alpha[..., None], nocs, normals], axis=-1).astype(np.float32)


def _normals_from_depth(depth: np.ndarray, alpha: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame unit normals (facing the camera) from a depth image by central differences."""
    H, W = depth.shape
    u = np.arange(W) + 0.5
    v = np.arange(H) + 0.5
    x = (u[None, :] - K[0, 2]) / K[0, 0] * depth
    y = (v[:, None] - K[1, 2]) / K[1, 1] * depth
    P = np.stack([x, y, depth], -1)
    dx = np.zeros_like(P)
    dy = np.zeros_like(P)
    dx[:, 1:-1] = P[:, 2:] - P[:, :-2]
    dy[1:-1] = P[2:] - P[:-2]
    n = np.cross(dx, dy)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    n[n[..., 2] > 0] *= -1
    n[alpha < 0.3] = 0
    return n


@torch.no_grad()
def load_real_views(scene, obj_id: int, model: GaussianModel, metadata: ObjectMetadata,
                    min_visible_pixels: int = 100, progress: bool = False) -> tuple:
    """The object's annotated real images as training views -> ``(views, stats)``.

    scene: a :class:`~gs2pose_ros.bop.BopScene` with masks (``mask_visib/`` or ``mask/``) of
    ``obj_id``. Each view is float16 ``[H, W, 10]`` in :meth:`ViewRenderer.render_view`'s layout
    with the whole real image in place of a premultiplied render: RGB (3); the training mask (1):
    the annotated visible mask where the model's silhouette at the annotated pose covers it too;
    NOCS times that mask (3), rendered from the Gaussian model at the (canonical) annotated pose so
    that real and synthetic targets are the same function of the pose; zeros (3, no normals: the
    real image keeps its own shading). ``stats``: views used, skipped, and the median share of the
    annotated mask the model covers (low values mean the model and the annotation disagree).
    Raises DatasetError when no instance has a usable mask.
    """
    from gs2pose_ros.errors import DatasetError
    from gs2pose_ros.render import render

    nocs_cols = nocs_colors(model, metadata).detach()
    dev, dt = model.device, model.dtype
    views, agreement, skipped = [], [], 0
    instances = scene.instances_of(obj_id)
    if progress:
        from tqdm import tqdm

        instances = tqdm(instances, desc="reading real views", unit="view", leave=False)
    for im_id, gt_idx in instances:
        visib = scene.mask_visib(im_id, gt_idx)
        if visib is None:
            visib = scene.mask(im_id, gt_idx)
        if visib is None or int(visib.sum()) < min_visible_pixels:
            skipped += 1
            continue
        H, W = visib.shape
        ys, xs = np.nonzero(visib)
        pad = 8
        x0, y0 = max(int(xs.min()) - pad, 0), max(int(ys.min()) - pad, 0)
        x1, y1 = min(int(xs.max()) + 1 + pad, W), min(int(ys.max()) + 1 + pad, H)
        # render only the window around the object: an integer shift of the principal point
        K = np.array(scene.camera(im_id).K, dtype=np.float64).copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        T = canonical_pose(scene.gt(im_id)[gt_idx].T, metadata)
        out = render(model, torch.as_tensor(T, dtype=dt, device=dev), torch.as_tensor(K, dtype=dt, device=dev),
                     x1 - x0, y1 - y0, background=None, nocs=nocs_cols)
        alpha = out.alpha.float().cpu().numpy()
        nocs = out.nocs.float().cpu().numpy() / np.maximum(alpha, 1e-3)[..., None]
        mask = np.zeros((H, W), bool)
        mask[y0:y1, x0:x1] = visib[y0:y1, x0:x1] & (alpha > 0.5)
        agreement.append(mask.sum() / max(int(visib.sum()), 1))
        view = np.zeros((H, W, 10), np.float16)
        view[..., :3] = scene.rgb(im_id).astype(np.float32) / 255.0
        view[..., 3] = mask
        view[y0:y1, x0:x1, 4:7] = np.clip(nocs, 0, 1) * mask[y0:y1, x0:x1, None]
        views.append(view)
    if not views:
        raise DatasetError(f"{scene.path}: no annotated view of object {obj_id} with a mask of at least "
                           f"{min_visible_pixels} visible pixels to train on; check mask_visib/ or drop "
                           "--real-views")
    stats = {"views": len(views), "skipped": skipped,
             "model_covers_mask_median": float(np.median(agreement))}
    return views, stats


# ----------------------------------------------------------------------------------------------
# Samples: crop, shade, paste, occlude, jitter
# ----------------------------------------------------------------------------------------------


def _rand_color(rng) -> np.ndarray:
    return rng.uniform(0, 1, size=3).astype(np.float32)


def _value_noise(rng, S: int) -> np.ndarray:
    """Multi-octave value noise in [0, 1], [S, S]."""
    out = np.zeros((S, S), np.float32)
    amp, total = 1.0, 0.0
    for cells in (2, 4, 8, 16, 32)[: rng.integers(2, 6)]:
        g = rng.random((cells + 1, cells + 1)).astype(np.float32)
        out += amp * cv2.resize(g, (S, S), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= rng.uniform(0.4, 0.7)
    out /= total
    return np.clip((out - out.min()) / max(float(out.max() - out.min()), 1e-6), 0, 1)


def _texture(rng, S: int) -> np.ndarray:
    """A random texture [S, S, 3] in [0, 1]."""
    kind = rng.integers(5)
    c1, c2 = _rand_color(rng), _rand_color(rng)
    if kind == 0:
        img = np.broadcast_to(c1, (S, S, 3)).copy()
    elif kind == 1:
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S
        w = np.clip(0.5 + (np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)), 0, 1)[..., None]
        img = c1 * (1 - w) + c2 * w
    elif kind == 2:
        w = _value_noise(rng, S)[..., None]
        img = c1 * (1 - w) + c2 * w
    elif kind == 3:
        a = rng.uniform(0, math.pi)
        period = rng.uniform(4, 40)
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
        w = ((np.cos(a) * xx + np.sin(a) * yy) % period < period / 2).astype(np.float32)[..., None]
        img = c1 * (1 - w) + c2 * w
    else:
        img = rng.random((S, S, 3)).astype(np.float32)
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 3))
    return img.astype(np.float32)


def _shape_mask(rng, S: int, cx: float, cy: float, size: float) -> np.ndarray:
    """A random filled shape (ellipse, rectangle or polygon) as a float mask [S, S]."""
    m = np.zeros((S, S), np.uint8)
    kind = rng.integers(3)
    sh = 4  # cv2 sub-pixel shift bits
    if kind == 0:
        axes = (int(size * rng.uniform(0.3, 0.6) * 16), int(size * rng.uniform(0.2, 0.6) * 16))
        cv2.ellipse(m, (int(cx * 16), int(cy * 16)), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1,
                    cv2.LINE_AA, sh)
    else:
        n = 4 if kind == 1 else int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * math.pi, n)) if kind == 2 else \
            rng.uniform(0, 2 * math.pi) + np.arange(4) * math.pi / 2
        rad = size * (rng.uniform(0.25, 0.6, n) if kind == 2 else np.full(n, rng.uniform(0.3, 0.6)))
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang) * (rng.uniform(0.4, 1) if kind == 1 else 1)], 1)
        cv2.fillPoly(m, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, sh)
    return m.astype(np.float32) / 255.0


def _background(rng, S: int) -> np.ndarray:
    img = _texture(rng, S)
    if rng.random() < 0.8:
        for _ in range(int(rng.integers(1, 14))):
            m = _shape_mask(rng, S, rng.uniform(0, S), rng.uniform(0, S), rng.uniform(0.1, 0.7) * S)[..., None]
            tex = _texture(rng, S) if rng.random() < 0.4 else _rand_color(rng)
            img = img * (1 - m) + tex * m
    if rng.random() < 0.3:
        img = img + rng.normal(0, rng.uniform(0.01, 0.06), img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


class SampleMaker:
    """Turns rendered canvases into augmented training samples (numpy, float32).

    ``make(view [C, C, 10], rng) -> (image [S, S, 3], nocs [S, S, 3], mask [S, S] bool)``.
    """

    def __init__(self, input_size: int, context_fraction: float = 0.25, occluder_prob: float = 0.5,
                 augment: bool = True, truncate_fraction: float = 0.0):
        self.S = int(input_size)
        self.context_fraction = context_fraction
        self.truncate_fraction = truncate_fraction
        self.occluder_prob = occluder_prob
        self.augment = augment

    def crop_box(self, alpha: np.ndarray, rng) -> tuple:
        ys, xs = np.nonzero(alpha > 0.5)
        if len(xs) == 0:
            C = alpha.shape[0]
            return 0.0, 0.0, float(C), float(C)
        x_min, x_max, y_min, y_max = xs.min(), xs.max() + 1.0, ys.min(), ys.max() + 1.0
        bw, bh = x_max - x_min, y_max - y_min
        big = max(bw, bh)
        cx, cy = 0.5 * (x_min + x_max), 0.5 * (y_min + y_max)
        u = rng.random()
        if u < self.truncate_fraction:
            # the object cut by the image border (entering or leaving the view): the crop's edge
            # runs through it, 12-75 % of its extent across that edge inside, as the full-frame
            # pass and a crop shifted inside the frame see it. Without these samples Pose-Net
            # found nothing, or a distractor, once the object was 20-67 % cut off (docs/tracking.md)
            side = big * math.exp(rng.uniform(math.log(1.2), math.log(4.0)))
            keep = rng.uniform(0.12, 0.75)
            edge = int(rng.integers(4))  # the crop edge that cuts: left, right, top, bottom
            if edge in (0, 1):
                x0 = x_max - keep * bw if edge == 0 else x_min + keep * bw - side
                y0 = cy - side / 2 + rng.uniform(-0.5, 0.5) * max(side - bh, 0.0)
            else:
                y0 = y_max - keep * bh if edge == 2 else y_min + keep * bh - side
                x0 = cx - side / 2 + rng.uniform(-0.5, 0.5) * max(side - bw, 0.0)
            return x0, y0, side, side
        if u < self.truncate_fraction + self.context_fraction:
            side = big * math.exp(rng.uniform(math.log(1.8), math.log(7.0)))
            room_x, room_y = max(side - bw, 0) / 2, max(side - bh, 0) / 2
            cx += rng.uniform(-room_x, room_x)
            cy += rng.uniform(-room_y, room_y)
        else:
            side = big * rng.uniform(1.05, 1.6)
            cx += rng.uniform(-0.12, 0.12) * side
            cy += rng.uniform(-0.12, 0.12) * side
        return cx - side / 2, cy - side / 2, side, side

    def make(self, view: np.ndarray, rng: np.random.Generator, real: bool = False):
        """One sample from a rendered canvas, or (``real``) from a :func:`load_real_views` frame."""
        from gs2pose_ros.camera import crop_image

        S = self.S
        x0, y0, w, h = self.crop_box(view[..., 3], rng)
        # convert only the window the crop reads (a real view is a whole float16 frame)
        H, W = view.shape[:2]
        wx0, wy0 = min(max(int(math.floor(x0)) - 2, 0), W), min(max(int(math.floor(y0)) - 2, 0), H)
        wx1, wy1 = max(min(int(math.ceil(x0 + w)) + 2, W), wx0), max(min(int(math.ceil(y0 + h)) + 2, H), wy0)
        window = view[wy0:wy1, wx0:wx1].astype(np.float32)
        if window.size == 0:
            window = np.zeros((1, 1, view.shape[2]), np.float32)
            wx0 = wy0 = -10 ** 6  # the crop lies outside the view: all border
        x0, y0 = x0 - wx0, y0 - wy0
        interp = cv2.INTER_AREA if w > 1.5 * S else cv2.INTER_LINEAR
        # outside a real frame the crop pass sees grey padding; a render's premultiplied colour is 0 there
        parts = [crop_image(np.ascontiguousarray(window[..., i:j]), x0, y0, w, h, S, S, interpolation=interp,
                            border_value=0.5 if (real and i == 0) else 0)
                 for i, j in ((0, 3), (3, 4), (4, 7), (7, 10))]
        col_p, alpha, nocs_p, normals = parts
        alpha = np.clip(alpha.reshape(S, S), 0, 1)
        mask = alpha > 0.5
        nocs = np.where(mask[..., None], nocs_p / np.maximum(alpha, 1e-3)[..., None], 0.0)
        nocs = np.clip(nocs, 0, 1).astype(np.float32)
        if not self.augment:
            img = col_p if real else col_p + (1 - alpha[..., None]) * 0.5
            return np.clip(img, 0, 1).astype(np.float32), nocs, mask
        # lighting (renders only; a real image keeps its own): Lambert with a random light (mostly
        # from the camera side) + a specular blob
        if not real and rng.random() < 0.8:
            L = rng.normal(size=3)
            L[2] = -abs(L[2]) - rng.uniform(0.2, 1.0)  # towards the camera (camera looks along +z)
            L /= np.linalg.norm(L)
            ndl = np.clip(normals @ L, 0, None)
            amb = rng.uniform(0.3, 0.8)
            shade = amb + rng.uniform(0.6, 1.1) * (1 - amb) * ndl
            shade = np.where(np.linalg.norm(normals, axis=-1) > 0.5, shade, 1.0)
            col_p = col_p * shade[..., None].astype(np.float32)
            if rng.random() < 0.3:
                hx = np.ones(3, np.float32) * rng.uniform(0.1, 0.5)
                ys, xs = np.nonzero(mask)
                if len(xs):
                    k = rng.integers(len(xs))
                    yy, xx = np.mgrid[0:S, 0:S]
                    r = rng.uniform(2, 0.15 * S)
                    blob = np.exp(-((xx - xs[k]) ** 2 + (yy - ys[k]) ** 2) / (2 * r * r)).astype(np.float32)
                    col_p = col_p + (blob * alpha)[..., None] * hx
            tint = rng.uniform(0.85, 1.15, size=3).astype(np.float32)
            col_p = col_p * tint
        img = col_p if real else col_p + (1 - alpha[..., None]) * _background(rng, S)
        # occluders
        if rng.random() < self.occluder_prob and mask.any():
            ys, xs = np.nonzero(mask)
            size = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
            for _ in range(int(rng.integers(1, 3))):
                k = rng.integers(len(xs))
                cx = xs[k] + rng.normal(0, 0.3 * size)
                cy = ys[k] + rng.normal(0, 0.3 * size)
                m = _shape_mask(rng, S, cx, cy, size * rng.uniform(0.3, 0.9))
                tex = _texture(rng, S) if rng.random() < 0.6 else _rand_color(rng)
                img = img * (1 - m[..., None]) + tex * m[..., None]
                mask = mask & (m < 0.5)
            nocs = np.where(mask[..., None], nocs, 0.0).astype(np.float32)
        # photometric jitter
        img = img * rng.uniform(0.65, 1.35)
        mean = img.mean()
        img = (img - mean) * rng.uniform(0.7, 1.3) + mean
        grey = img.mean(-1, keepdims=True)
        img = grey + (img - grey) * rng.uniform(0.6, 1.4)
        img = img * rng.uniform(0.9, 1.1, size=3)
        img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
        if rng.random() < 0.35:
            img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.3, 1.3))
        if rng.random() < 0.6:
            img = img + rng.normal(0, rng.uniform(0.003, 0.03), img.shape)
        return np.clip(img, 0, 1).astype(np.float32), nocs, mask


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------


def _initial_network(path, network: PoseNetConfig, metadata: ObjectMetadata) -> PoseNet:
    """The Pose-Net at ``path`` to fine-tune; ConfigError unless it has ``network``'s configuration
    and ``metadata``'s NOCS box (its NOCS targets would otherwise mean other object coordinates)."""
    from gs2pose_ros.posenet.io import load_posenet

    net, meta, _ = load_posenet(path)
    if net.config != network:
        raise ConfigError(f"train-posenet: {path} is a {net.config.to_dict()} network, the training asks for "
                          f"{network.to_dict()}; leave --network out to train the network of --init-from")
    box, own = np.r_[meta.bbox_min, meta.bbox_max], np.r_[metadata.bbox_min, metadata.bbox_max]
    if not np.allclose(box, own, atol=1e-4):
        raise ConfigError(f"train-posenet: {path} was trained for the NOCS box {meta.bbox_min} .. {meta.bbox_max} "
                          f"(m), the model's is {metadata.bbox_min} .. {metadata.bbox_max}; its NOCS would mean "
                          "other object coordinates: train from scratch (no --init-from)")
    return net.train()


def posenet_loss(out: dict, nocs_t: torch.Tensor, mask_t: torch.Tensor, conf_tol: float = 0.04):
    """-> (total, {"nocs": L1 on the mask, "mask": BCE, "conf": BCE of the confidence head}).

    nocs_t [B, 3, S, S] in [0, 1], mask_t [B, 1, S, S] float {0, 1}.
    """
    m = mask_t
    err = (out["nocs"] - nocs_t).abs()
    l_nocs = (err.sum(1, keepdim=True) * m).sum() / (3 * m.sum()).clamp_min(1.0)
    l_mask = F.binary_cross_entropy_with_logits(out["mask_logits"], m)
    total = 2.0 * l_nocs + l_mask
    parts = {"nocs": float(l_nocs.detach()), "mask": float(l_mask.detach())}
    if "conf_logits" in out:
        good = (err.detach().amax(1, keepdim=True) < conf_tol).float()
        lc = F.binary_cross_entropy_with_logits(out["conf_logits"], good, reduction="none")
        l_conf = (lc * m).sum() / m.sum().clamp_min(1.0)
        total = total + 0.2 * l_conf
        parts["conf"] = float(l_conf.detach())
    parts["total"] = float(total.detach())
    return total, parts


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


#: Batches requested ahead of the one the network trains on (the workers make them meanwhile).
PREFETCH_BATCHES = 2


class SampleFeed:
    """Training batches cut from the view pool (and the real views), made inline (``workers=0``)
    or by ``workers`` processes while the network trains on the previous batch.

    What each sample is cut from (a pool slot or a real view) and its own seed are drawn here, in
    batch order, ``PREFETCH_BATCHES`` ahead: a seed gives the same batches whatever the number of
    workers. The pool is one float16 array ``[pool_size, C, C, 10]``, in shared memory when there
    are workers; :meth:`put_view` only replaces a slot that no requested batch reads. Why: making
    a sample is numpy and OpenCV on one thread (0.12 s per batch of 16 at 128 px, 0.55 s at 256 px),
    on a GPU most of a training step (docs/benchmarks.md, "GPU").
    """

    def __init__(self, maker: "SampleMaker", pool_size: int, view_shape: tuple, real_views: Optional[list],
                 workers: int = 0):
        from collections import deque

        self.maker, self.real_views = maker, list(real_views or [])
        shape = (int(pool_size), *view_shape)
        self._blocks: list = []  # shared-memory blocks this feed created (and unlinks)
        self._procs = None
        self._queue: deque = deque()  # (requests, pending result or None), oldest first
        if workers > 0:
            import multiprocessing as mp

            self.pool, pool_spec = self._shared(shape)
            real_spec = self.real_views  # sent to each worker once, unless they share one shape:
            if self.real_views and all(v.shape == self.real_views[0].shape for v in self.real_views):
                stacked, real_spec = self._shared((len(self.real_views), *self.real_views[0].shape))
                stacked[:] = np.stack(self.real_views)  # (whole float16 frames: 6 MB each at 640x480)
                self.real_views = stacked
            # spawn, not fork: the trainer holds torch (and maybe CUDA) threads a fork would copy
            self._procs = mp.get_context("spawn").Pool(
                workers, initializer=_feed_worker_start, initargs=(pool_spec, real_spec, maker))
        else:
            self.pool = np.zeros(shape, np.float16)

    def _shared(self, shape: tuple) -> tuple[np.ndarray, tuple]:
        """A float16 array in a new shared-memory block -> (array, (block name, shape))."""
        from multiprocessing import shared_memory

        block = shared_memory.SharedMemory(create=True, size=max(1, int(np.prod(shape)) * 2))
        self._blocks.append(block)
        return np.ndarray(shape, np.float16, buffer=block.buf), (block.name, shape)

    def _in_flight(self) -> set:
        return {i for requests, _ in self._queue for kind, i, _ in requests if kind == "pool"}

    def put_view(self, view: np.ndarray, rng: np.random.Generator) -> int:
        """Puts a new view into a random slot that no requested batch reads; -> the slot."""
        busy = self._in_flight()
        while True:
            slot = int(rng.integers(len(self.pool)))
            if slot not in busy:
                self.pool[slot] = view
                return slot

    def request(self, rng: np.random.Generator, batch: int, real_fraction: float) -> None:
        """Queues the next batch: per sample its source and seed (the workers start on it)."""
        requests = []
        for _ in range(batch):
            if len(self.real_views) and rng.random() < real_fraction:
                requests.append(("real", int(rng.integers(len(self.real_views))), int(rng.integers(2 ** 63))))
            else:
                requests.append(("pool", int(rng.integers(len(self.pool))), int(rng.integers(2 ** 63))))
        pending = None
        if self._procs is not None:
            pending = self._procs.map_async(_feed_make, requests, chunksize=max(1, batch // 8))
        self._queue.append((requests, pending))

    def take(self) -> tuple[list, int]:
        """The oldest requested batch -> (samples, how many of them are cut from real views)."""
        requests, pending = self._queue.popleft()
        if pending is not None:
            samples = pending.get()
        else:
            samples = [_make_sample(self.maker, self.pool, self.real_views, r) for r in requests]
        return samples, sum(kind == "real" for kind, _, _ in requests)

    def close(self) -> None:
        if self._procs is not None:
            self._procs.terminate()
            self._procs.join()
            self._procs = None
        if self._blocks:
            self.pool = self.real_views = None  # (views into the blocks)
            for block in self._blocks:
                block.close()
                block.unlink()
            self._blocks = []


def _make_sample(maker, pool, real_views, request):
    kind, index, seed = request
    view = real_views[index] if kind == "real" else pool[index]
    return maker.make(view, np.random.default_rng(seed), real=kind == "real")


_WORKER: dict = {}  # a feed worker's state (its own process)


def _feed_worker_start(pool_spec: tuple, real_spec, maker) -> None:
    """A feed worker's set-up: the pool (and the real views, when they were shared) attached."""
    from multiprocessing import shared_memory

    cv2.setNumThreads(1)
    torch.set_num_threads(1)

    def attach(spec):
        name, shape = spec
        # (a spawned worker shares the trainer's resource tracker: attaching registers the block
        # again, which it ignores, and the trainer's unlink unregisters it once)
        block = shared_memory.SharedMemory(name=name)
        _WORKER.setdefault("blocks", []).append(block)
        return np.ndarray(shape, np.float16, buffer=block.buf)

    real = attach(real_spec) if isinstance(real_spec, tuple) else real_spec
    _WORKER.update(pool=attach(pool_spec), maker=maker, real=real)


def _feed_make(request):
    return _make_sample(_WORKER["maker"], _WORKER["pool"], _WORKER["real"], request)


def _to_batch(samples, device):
    imgs = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2)
    nocs = torch.from_numpy(np.stack([s[1] for s in samples])).permute(0, 3, 1, 2)
    mask = torch.from_numpy(np.stack([s[2] for s in samples]).astype(np.float32))[:, None]
    return imgs.to(device), nocs.to(device), mask.to(device)


def train_posenet(model: GaussianModel, metadata: ObjectMetadata, config: TrainConfig,
                  out_path=None, rotations: Optional[np.ndarray] = None, progress: bool = True,
                  callback: Optional[Callable[[int, dict], None]] = None,
                  real_views: Optional[list] = None) -> tuple[PoseNet, dict]:
    """Trains a Pose-Net for ``model``; saves it (and plots) to ``out_path`` when given.

    real_views: optional frames from :func:`load_real_views`; ``config.real_fraction`` of the
    training samples are cut from them (the validation set stays rendered).

    Returns ``(net in eval mode, history)``; history holds per-log-step iteration, seconds and
    losses (train and validation), the number of rendered views and the timings of each part.
    """
    from gs2pose_ros.posenet.io import save_posenet

    if metadata.diameter <= 0:
        raise ConfigError(f"train-posenet: object metadata of {metadata.name!r} has diameter "
                          f"{metadata.diameter}; rebuild the model's metadata")
    cfg = config
    dev = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    S = cfg.network.input_size
    C = int(round(S * cfg.canvas_scale))
    model = model.detach().to(dev)
    sampler = ViewSampler(metadata, rotations)
    renderer = ViewRenderer(model, metadata, C)
    maker = SampleMaker(S, cfg.context_fraction, cfg.occluder_prob, truncate_fraction=cfg.truncate_fraction)
    t_start = time.time()
    timings = {"render": 0.0, "samples": 0.0, "step": 0.0}

    def new_view():
        t0 = time.time()
        v = renderer.render_view(*sampler.sample(rng))
        timings["render"] += time.time() - t0
        return v.astype(np.float16)

    # fixed validation samples (own views, not in the pool)
    vrng = np.random.default_rng(cfg.seed + 1000)
    val_views = [renderer.render_view(*sampler.sample(vrng)) for _ in range(cfg.val_size)]
    val = [maker.make(v, vrng) for v in val_views]
    del val_views
    val_batch = _to_batch(val, dev)

    net = (_initial_network(cfg.init_from, cfg.network, metadata) if cfg.init_from else PoseNet(cfg.network)).to(dev)
    first = new_view()
    feed = SampleFeed(maker, cfg.pool_size, first.shape, real_views, cfg.workers)
    bar = None
    try:
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=cfg.pool_size, desc="rendering the view pool", unit="view", leave=False)
        for i in range(cfg.pool_size):
            feed.pool[i] = first if i == 0 else new_view()
            if bar is not None:
                bar.update(1)
        for _ in range(PREFETCH_BATCHES):
            feed.request(rng, cfg.batch, cfg.real_fraction)
    except BaseException:
        feed.close()
        raise
    finally:
        if bar is not None:
            bar.close()
    n_views = cfg.pool_size + cfg.val_size
    n_real = 0

    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history = {"iteration": [], "seconds": [], "train": [], "val": [], "lr": []}
    t_train = time.time()
    run_avg: dict = {}
    refresh_acc = 0.0
    it = 0
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.iterations, desc="training Pose-Net", unit="it")
    stopped = "iterations"
    snapshots = sorted(float(x) for x in cfg.snapshot_s)
    history["snapshots"] = []
    try:
        for it in range(1, cfg.iterations + 1):
            elapsed = time.time() - t_start
            if cfg.time_limit_s is not None and elapsed > cfg.time_limit_s:
                stopped = "time limit"
                it -= 1
                break
            prog = it / cfg.iterations
            if cfg.time_limit_s is not None:
                prog = max(prog, elapsed / cfg.time_limit_s)
            warm = min(1.0, it / max(1, min(50, cfg.iterations // 10)))
            lr = cfg.lr * warm * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * min(prog, 1.0))))
            for g in opt.param_groups:
                g["lr"] = lr
            refresh_acc += cfg.refresh_per_iter
            while refresh_acc >= 1.0:
                feed.put_view(new_view(), rng)
                n_views += 1
                refresh_acc -= 1.0
            t0 = time.time()  # with workers: the wait for a batch they made meanwhile
            samples, real_count = feed.take()
            feed.request(rng, cfg.batch, cfg.real_fraction)
            n_real += real_count
            batch = _to_batch(samples, dev)
            timings["samples"] += time.time() - t0
            t0 = time.time()
            net.train()
            out = net(batch[0])
            loss, parts = posenet_loss(out, batch[1], batch[2])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            timings["step"] += time.time() - t0
            for k, v in parts.items():
                run_avg[k] = v if k not in run_avg else 0.9 * run_avg[k] + 0.1 * v
            if snapshots and out_path is not None and time.time() - t_start >= snapshots[0]:
                mark = snapshots.pop(0)
                snap = Path(out_path).with_suffix("")
                snap = snap.parent / f"{snap.name}_t{mark / 60:g}min{Path(out_path).suffix}"
                save_posenet(net.eval(), metadata, snap, training={"snapshot_at_s": mark, "iterations_done": it,
                                                                    "config": cfg.to_dict()})
                history["snapshots"].append({"path": str(snap), "seconds": time.time() - t_start, "iteration": it})
            if it % cfg.log_every == 0 or it == 1:
                net.eval()
                with torch.no_grad():
                    _, vparts = posenet_loss(net(val_batch[0]), val_batch[1], val_batch[2])
                history["iteration"].append(it)
                history["seconds"].append(time.time() - t_start)
                history["train"].append(dict(run_avg))
                history["val"].append(vparts)
                history["lr"].append(lr)
                if callback is not None:
                    callback(it, vparts)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{run_avg['total']:.3f}", nocs=f"{run_avg['nocs']:.3f}", lr=f"{lr:.1e}")
    except KeyboardInterrupt:
        stopped = "interrupted"
        if out_path is None:
            raise
    finally:
        if bar is not None:
            bar.close()
        feed.close()
    net.eval()
    with torch.no_grad():
        _, vparts = posenet_loss(net(val_batch[0]), val_batch[1], val_batch[2])
    history["final_val"] = vparts
    history["iterations_done"] = it
    history["stopped_by"] = stopped
    history["views_rendered"] = n_views
    history["real_views"] = len(real_views or [])
    history["real_samples"] = n_real
    history["seconds_total"] = time.time() - t_start
    history["seconds_training"] = time.time() - t_train
    history["timings"] = timings
    history["torch_threads"] = torch.get_num_threads()
    history["workers"] = cfg.workers
    history["device"] = str(dev)
    if out_path is not None:
        out_path = Path(out_path)
        training = {"config": cfg.to_dict(), "model_gaussians": model.num_gaussians,
                    **{k: history[k] for k in ("final_val", "iterations_done", "stopped_by", "views_rendered",
                                                "real_views", "real_samples", "seconds_total", "timings", "torch_threads",
                                                "workers", "device")}}
        save_posenet(net, metadata, out_path, training=training)
        stem = out_path.with_suffix("")
        (stem.parent / (stem.name + "_history.json")).write_text(json.dumps(history, indent=1) + "\n")
        try:
            plot_history(history, stem.parent / (stem.name + "_loss.png"))
            sample_sheet(net, val, stem.parent / (stem.name + "_samples.png"))
        except Exception as exc:  # plotting is a convenience; never lose the weights over it
            print(f"train-posenet: warning: could not write the plots ({type(exc).__name__}: {exc})")
    return net, history


def plot_history(history: dict, path) -> None:
    """Loss curves (train running average and validation) against minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mins = np.asarray(history["seconds"]) / 60
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key in zip(axes, ("nocs", "mask")):
        ax.plot(mins, [d[key] for d in history["train"]], label="train (running avg)")
        ax.plot(mins, [d[key] for d in history["val"]], label="validation")
        ax.set_xlabel("minutes (incl. rendering the pool)")
        ax.set_ylabel({"nocs": "NOCS L1 on mask", "mask": "mask BCE"}[key])
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Pose-Net training ({history.get('device', '?')}, {history.get('torch_threads', '?')} threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@torch.no_grad()
def sample_sheet(net: PoseNet, samples, path, rows: int = 6) -> None:
    """A grid: input, predicted NOCS (masked), target NOCS, predicted mask, target mask."""
    dev = next(net.parameters()).device
    samples = samples[:rows]
    imgs, nocs_t, mask_t = _to_batch(samples, dev)
    out = net.eval()(imgs)
    pm = torch.sigmoid(out["mask_logits"])
    cols = [imgs, out["nocs"] * (pm > 0.5), nocs_t, pm.expand(-1, 3, -1, -1), mask_t.expand(-1, 3, -1, -1)]
    grid = torch.cat([torch.cat(list(c), dim=2) for c in zip(*cols)], dim=1)  # rows x cols
    img = (grid.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
