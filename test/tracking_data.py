"""Small synthetic RGB-D sequences for the refiner/tracker tests and benchmarks.

Independent of ``gs2pose synth`` (used when it exists): one built-in object ray cast with the
project's ray caster over a textured background plane, an optional occluding card, a light that
changes, a smooth trajectory, and a Gaussian model sampled from the object's coloured mesh (what
``reconstruct.build_model_from_mesh`` will produce, in small).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from gs2pose_ros.frame import Frame
from gs2pose_ros.gaussians import GaussianModel, ObjectMetadata
from gs2pose_ros.lie import se3_exp
from gs2pose_ros.synth.objects import make_object
from gs2pose_ros.synth.raycast import Body, Light, Surface, cast, pixel_rays, shade


def model_from_object(obj, n: int = 6000, seed: int = 0) -> tuple[GaussianModel, ObjectMetadata]:
    """Flat Gaussians sampled on the object's surface, coloured by its vertex colours."""
    rng = np.random.default_rng(seed)
    v, f, c = obj.vertices, obj.faces, obj.vertex_colors
    tri = v[f]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = 0.5 * np.linalg.norm(cross, axis=1)
    face = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w = np.stack([1 - s, s * (1 - r2), s * r2], 1)
    pts = (tri[face] * w[:, :, None]).sum(1)
    col = (c[f[face]] * w[:, :, None]).sum(1)
    nrm = cross[face] / np.maximum(np.linalg.norm(cross[face], axis=1, keepdims=True), 1e-20)
    spacing = math.sqrt(area.sum() / n)
    model = GaussianModel.from_points(pts, col, scale=0.7 * spacing, opacity=0.95)
    # flatten along the normal: rotation taking z to the normal
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, nrm)
    sn = np.linalg.norm(axis, axis=1, keepdims=True)
    ang = np.arctan2(sn[:, 0], nrm @ z)
    axis = np.where(sn > 1e-9, axis / np.maximum(sn, 1e-12), np.array([1.0, 0, 0]))
    q = np.concatenate([np.cos(ang / 2)[:, None], axis * np.sin(ang / 2)[:, None]], 1)
    model.quats = torch.as_tensor(q, dtype=torch.float32)
    ls = model.log_scales.clone()
    ls[:, 2] = math.log(0.25 * 0.7 * spacing)
    model.log_scales = ls
    sym = bool(obj.symmetries_continuous or obj.symmetries_discrete)
    meta = ObjectMetadata.from_model(model, obj.name, symmetric=sym,
                                     symmetries_continuous=list(obj.symmetries_continuous))
    return model, meta


def _background(width: int, height: int, seed: int) -> Surface:
    """A 2 x 1.5 m textured plane 1.1 m in front of the camera."""
    rng = np.random.default_rng(seed)
    tex = np.clip(rng.random((12, 16, 3)) * 0.7 + 0.15, 0, 1)
    import cv2

    tex = cv2.resize(tex.astype(np.float32), (256, 192), interpolation=cv2.INTER_CUBIC)
    tex += rng.normal(0, 0.03, tex.shape).astype(np.float32)
    v = np.array([[-1.0, -0.75, 1.1], [1.0, -0.75, 1.1], [1.0, 0.75, 1.1], [-1.0, 0.75, 1.1]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    return Surface(v, f, uv=uv, texture=np.clip(tex, 0, 1), name="background")


def _card() -> Surface:
    v = np.array([[-0.018, -0.12, 0.0], [0.018, -0.12, 0.0], [0.018, 0.12, 0.0], [-0.018, 0.12, 0.0]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    return Surface(v, f, vertex_colors=np.tile([[0.45, 0.42, 0.40]], (4, 1)), name="card")


@dataclass
class Sequence:
    name: str
    frames: list  # Frame
    poses: list  # T_cam_obj (np 4x4) ground truth
    visible: list  # bool: object visible in the image
    model: GaussianModel
    meta: ObjectMetadata
    points: np.ndarray  # model points for ADD, metres

    def evaluator(self):
        """ADD(-S) of this sequence's object (metrics.PoseErrorEvaluator)."""
        from gs2pose_ros.metrics import PoseErrorEvaluator

        return PoseErrorEvaluator(self.points, self.meta.diameter, self.meta.symmetric)


def trajectory(n: int, seed: int, speed: float = 1.0) -> list[np.ndarray]:
    """A smooth object trajectory about 0.5 m in front of the camera."""
    rng = np.random.default_rng(seed)
    ph = rng.random(6) * 2 * math.pi
    R0 = se3_exp(torch.tensor([0, 0, 0, *(rng.normal(0, 1.0, 3))], dtype=torch.float64)).numpy()[:3, :3]
    out = []
    for i in range(n):
        s = i * speed
        t = np.array([0.05 * math.sin(0.11 * s + ph[0]), 0.04 * math.sin(0.13 * s + ph[1]),
                      0.5 + 0.06 * math.sin(0.07 * s + ph[2])])
        w = np.array([0.6 * math.sin(0.05 * s + ph[3]), 0.5 * math.sin(0.06 * s + ph[4]),
                      0.35 * s * 0.03 + 0.3 * math.sin(0.04 * s + ph[5])])
        R = se3_exp(torch.tensor([0, 0, 0, *w], dtype=torch.float64)).numpy()[:3, :3] @ R0
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, t
        out.append(T)
    return out


def make_sequence(obj_name: str = "printed_box", n: int = 10, seed: int = 0, width: int = 320,
                  height: int = 240, occlusion: bool = False, light_change: bool = False,
                  leave_view: tuple[int, int] | None = None, speed: float = 1.0,
                  n_gaussians: int = 6000, depth_noise: float = 0.001,
                  x_offsets: dict[int, float] | None = None) -> Sequence:
    """Ray cast ``n`` frames of a moving built-in object (see module docstring); ``x_offsets``:
    metres added to the object's camera x in the given frames (e.g. to cut it by the image border)."""
    obj = make_object(obj_name)
    model, meta = model_from_object(obj, n_gaussians, seed)
    f = 600.0 * width / 640.0
    K = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    body = Body([obj.surface], obj_name)
    bg = Body([_background(width, height, seed + 1)], "bg")
    card = Body([_card()], "card")
    rays = pixel_rays(K, width, height)[0].reshape(-1, 3)
    rng = np.random.default_rng(seed + 2)
    poses = trajectory(n, seed, speed)
    frames, visible = [], []
    for i, T in enumerate(poses):
        T = T.copy()
        vis = True
        if leave_view is not None and leave_view[0] <= i < leave_view[0] + leave_view[1]:
            T[0, 3] += 1.0  # far to the side: out of view
            vis = False
        T[0, 3] += (x_offsets or {}).get(i, 0.0)
        poses[i] = T
        inst = [(bg, np.eye(4)), (body, T)]
        if occlusion:
            Tc = np.eye(4)
            # the card sweeps across the object, covering up to ~30 % of it
            Tc[:3, 3] = T[:3, 3] + np.array([0.08 * math.sin(0.15 * i) - 0.06, 0.0, -0.12])
            inst.append((card, Tc))
        ld = (0.3, -0.5, -1.0)
        amb, inten = 0.45, 0.6
        if light_change:
            amb = 0.45 + 0.15 * math.sin(0.2 * i)
            inten = 0.6 + 0.25 * math.sin(0.13 * i + 1)
            ld = (0.3 + 0.4 * math.sin(0.1 * i), -0.5, -1.0)
        hits = cast(inst, np.zeros(3), rays)
        sh = shade(inst, hits, rays, Light(ld, inten, amb, shadows=False), background=(0.5, 0.5, 0.5))
        rgb = np.clip(sh.color + rng.normal(0, 0.01, sh.color.shape), 0, 1)
        rgb = (rgb.reshape(height, width, 3) * 255 + 0.5).astype(np.uint8)
        depth = np.where(np.isfinite(hits.t), hits.t, 0).astype(np.float32)
        depth = depth + rng.normal(0, depth_noise, depth.shape).astype(np.float32) * (depth > 0)
        depth[(sh.cos_view < 0.15) & (hits.inst >= 0)] = 0
        frames.append(Frame.validated(rgb, K, depth.reshape(height, width), stamp=i / 30.0))
        visible.append(vis)
    return Sequence(obj_name, frames, poses, visible, model, meta, obj.vertices.copy())


@dataclass
class CoarseResult:
    T_cam_obj: np.ndarray
    confidence: float
    mask: np.ndarray | None = None


class OracleCoarse:
    """Stand-in for Pose-Net in tests and measurements (say so wherever its numbers are used):
    ground truth perturbed by ``rot_deg`` / ``trans_m`` (random axis) while the object is visible;
    a random pose in front of the camera (a false detection) while it is not. Frames are matched
    by their stamp (``i / 30`` in :func:`make_sequence`)."""

    def __init__(self, seq: Sequence, rot_deg: float = 15.0, trans_m: float = 0.03, seed: int = 0):
        self.seq = seq
        self.rot = math.radians(rot_deg)
        self.trans = trans_m
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def estimate(self, frame, roi=None):
        self.calls += 1
        i = int(round(frame.stamp * 30))
        ax = self.rng.normal(size=3)
        ax /= np.linalg.norm(ax)
        tr = self.rng.normal(size=3)
        tr /= np.linalg.norm(tr)
        if self.seq.visible[i]:
            T = perturb(self.seq.poses[i], ax * self.rot, tr * self.trans)
        else:
            T = np.eye(4)
            T[:3, :3] = se3_exp(torch.tensor([0, 0, 0, *(ax * 2.0)], dtype=torch.float64)).numpy()[:3, :3]
            T[:3, 3] = [self.rng.uniform(-0.1, 0.1), self.rng.uniform(-0.08, 0.08), self.rng.uniform(0.4, 0.7)]
        return CoarseResult(T, 0.5)


def perturb(T: np.ndarray, omega, rho) -> np.ndarray:
    """``T`` rotated by ``omega`` (rad, camera axes, about the object origin) and moved by ``rho``."""
    out = np.asarray(T, dtype=np.float64).copy()
    R = se3_exp(torch.tensor([0, 0, 0, *omega], dtype=torch.float64)).numpy()[:3, :3]
    out[:3, :3] = R @ out[:3, :3]
    out[:3, 3] += np.asarray(rho, dtype=np.float64)
    return out


def occluded_box_pair() -> Sequence:
    """The refiner tests' two 320x240 printed_box frames: an occluding card, the light changing."""
    torch.manual_seed(0)
    return make_sequence("printed_box", 2, seed=11, width=320, height=240, occlusion=True,
                         light_change=True, n_gaussians=3000)


def hide_both_ends(frame, T, keep: float = 0.03, gap: float = 0.1):
    """``frame`` with an occluder ``gap`` in front of everything beyond ``keep`` metres either way
    along the box's x axis as the image sees it (two wide poles): only the middle of the box shows
    and nothing in view fixes where along its length it is."""
    K = frame.K

    def project(p):
        q = T[:3, :3] @ p + T[:3, 3]
        return np.array([K[0, 0] * q[0] / q[2] + K[0, 2], K[1, 1] * q[1] / q[2] + K[1, 2]])

    lo, hi = project(np.array([-keep, 0.0, 0.0])), project(np.array([keep, 0.0, 0.0]))
    axis = (hi - lo) / np.linalg.norm(hi - lo)
    v, u = np.mgrid[0:frame.height, 0:frame.width]
    along = (np.stack([u + 0.5, v + 0.5], -1) - lo) @ axis
    hidden = (along < 0.0) | (along > np.linalg.norm(hi - lo))
    d, rgb = frame.depth.copy(), frame.rgb.copy()
    d[hidden] = float(T[2, 3]) - gap
    rgb[hidden] = 110
    return Frame.validated(rgb, K, d, stamp=frame.stamp)
