"""GS-Refiner: render-and-compare pose refinement against one RGB-D frame.

Pipeline of :meth:`GSRefiner.refine` (all on a crop around the object's projection at the initial
pose, zoomed to ``config.crop_size`` pixels; the crop is just another K, docs/conventions.md):

1. Depth pre-alignment (RGB-D only): a few damped point-to-plane ICP steps between the observed
   depth points near the object and the model's Gaussian centres that the camera sees at the
   current pose (:meth:`GSRefiner.front_points`). Cheap (milliseconds), it removes
   most of a centimetre-scale translation error before the photometric loop starts.
2. Render-and-compare: the pose is updated by a twist ``xi = [rho | omega]`` through ``se3_exp``,
   applied in the frame at the object's origin with camera axes (``T <- A exp(xi) A^-1 T``, ``A`` the
   translation to the object origin; the adjoint of a camera-frame perturbation, see
   :func:`apply_twist`), folded into ``T`` and reset to zero after every Adam step. That frame keeps
   rotation and translation decoupled (a camera-frame rotation swings the object around the camera).
   ``config.perturbation = "alternate"`` alternates camera-frame and object-frame twists instead, as
   the GS2Pose code does. Learning rates follow a piecewise schedule; the loop stops early when the
   step ``|xi|`` is below ``config.stop_rho`` / ``config.stop_omega`` for ``config.patience`` steps.
3. Loss on the crop: 0.3 L1 + 0.7 (1 - SSIM) on the exposure-corrected render (``I' = exp(a) I + b``
   per channel, optimised too) composited over the observation, on the observed object mask only
   (with depth); a truncated Huber depth term where the observed depth is valid; a silhouette term
   between the render's alpha and a mask estimate (depth consistency with the current pose,
   intersected with an optional external mask, e.g. Pose-Net's), normalised by the union of the two. Pixels where the observation is clearly in front of the render (an occluder) are
   excluded from every term.
4. Selective appearance adaptation (optional): SH coefficients, opacities and rotations of a
   *per-track copy* of the model get small Adam steps; means and scales never change, and the
   model passed in is never modified (:class:`AppearanceState` holds the copy).
5. Confidence in [0, 1] from the final render: depth inlier ratio, silhouette IoU against the
   depth-consistent mask, and the photometric residual (see :func:`combine_confidence`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from gs2pose_ros.camera import (PinholeCamera, backproject_depth, crop_box_around, crop_image, fit_support_plane,
                                 on_plane)
from gs2pose_ros.mesh import pca_normals
from gs2pose_ros.errors import ConfigError, InputError
from gs2pose_ros.frame import Frame
from gs2pose_ros.gaussians import GaussianModel, ObjectMetadata
from gs2pose_ros.lie import make_pose, se3_exp
from gs2pose_ros.render import render

__all__ = ["RefinerConfig", "RefineResult", "AppearanceState", "GSRefiner", "apply_twist",
           "combine_confidence"]

APPEARANCE_FIELDS = ("sh", "opacity_logits", "quats")


def check_config_keys(cls, d: dict, what: str) -> None:
    """ConfigError naming every key of ``d`` that is not a field of the dataclass ``cls``."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {what} settings {unknown}; known: {sorted(names)}")


@dataclass
class RefinerConfig:
    """Refiner settings (lengths in metres, angles in radians, learning rates per Adam step).

    ``iterations``: render-and-compare steps from a coarse pose; ``track_iterations``: from a
    tracked (predicted) pose. Phases: ``schedule`` lists ``(fraction of the iterations, lr_rho,
    lr_omega)``; tracking uses ``track_schedule``.
    """

    crop_size: int = 80
    track_crop_size: int = 64
    crop_padding: float = 0.25
    iterations: int = 40
    track_iterations: int = 2
    schedule: tuple = ((0.35, 3e-3, 1.2e-2), (0.3, 1.5e-3, 6e-3), (0.2, 7e-4, 3e-3), (0.15, 3e-4, 1e-3))
    track_schedule: tuple = ((0.5, 3e-4, 1e-3), (0.5, 1.5e-4, 5e-4))
    perturbation: str = "centered"  # or "alternate" (camera / object frame)
    stop_rho: float = 1e-4
    stop_omega: float = 3e-4
    patience: int = 2
    # ICP pre-alignment
    icp_iterations: int = 15
    track_icp_iterations: int = 10
    icp_points: int = 1500
    remove_support_plane: bool = True  # leave a table/wall plane around the object out
    plane_tol: float = 0.006
    icp_mode: str = "plane"  # point-to-plane (normals by PCA of the Gaussian centres) or "point"
    # model -> data pairs too (point-to-point rows for the visible, unoccluded model points): the
    # observed -> model pairs alone cannot see a model that sticks out beyond the observed surface
    # (a box slid along its length with one end occluded: 1.5 mm/frame drift while tracking)
    icp_reverse_weight: float = 0.25
    icp_reverse_gap: float = 1.5  # pixel-grid steps (at the object's depth): closer model points are not paired
    # loss weights
    w_l1: float = 0.3
    w_ssim: float = 0.7
    w_depth: float = 1.0
    w_silhouette: float = 0.5
    depth_delta: float = 0.03  # x diameter, clamped to [3 mm, 2 cm]: Huber knee
    depth_trunc: float = 5.0  # truncate the Huber at this many knees
    occlusion_margin: float = 0.1  # x diameter (>= 1.5 cm): observed this much in front = occluder
    exposure: bool = True
    lr_exposure: float = 1e-2
    # appearance adaptation (per-track copy)
    adapt_appearance: bool = True
    lr_sh: float = 2e-3
    lr_opacity: float = 5e-3
    lr_quats: float = 1e-3
    # confidence
    inlier_tol: float = 0.04  # x diameter (>= 1 cm)
    min_pixels: int = 25
    background: float = 0.0
    final_render_in_tracking: bool = False

    def __post_init__(self) -> None:
        if not (16 <= int(self.crop_size) <= 512):
            raise ConfigError(f"refiner crop_size = {self.crop_size} must be within 16..512 pixels")
        if self.perturbation not in ("centered", "alternate"):
            raise ConfigError(f"refiner perturbation = {self.perturbation!r}; use 'centered' or 'alternate'")
        if int(self.iterations) < 0 or int(self.track_iterations) < 0:
            raise ConfigError("refiner iterations and track_iterations must be >= 0")

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "RefinerConfig":
        if not d:
            return cls()
        check_config_keys(cls, d, "refiner")
        d = {k: (tuple(tuple(p) for p in v) if k in ("schedule", "track_schedule") else v) for k, v in d.items()}
        return cls(**d)


@dataclass
class RefineResult:
    """What :meth:`GSRefiner.refine` returns.

    T_cam_obj [4, 4] float64 metres; confidence in [0, 1]; iterations: render-and-compare steps
    run; time: seconds; losses: total loss per step; terms: per-term loss history; diagnostics:
    confidence inputs (depth_inlier_ratio, silhouette_iou, photometric_l1, ssim, visible_fraction,
    rendered_pixels, ...); crop: (x0, y0, w, h) in the frame.
    """

    T_cam_obj: np.ndarray
    confidence: float
    iterations: int
    time: float
    losses: list = field(default_factory=list)
    terms: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)
    crop: tuple = (0.0, 0.0, 0.0, 0.0)
    stopped_early: bool = False


class AppearanceState:
    """Per-track appearance: a copy of the model whose SH/opacity/rotations may adapt, plus the
    exposure ``(a, b)``. The loaded model is never written; :meth:`reset` restores the copy."""

    def __init__(self, model: GaussianModel):
        self._source = model
        self.reset()

    def reset(self) -> None:
        self.model = self._source.detach().clone()
        self.exposure_a = torch.zeros(3, dtype=self.model.dtype, device=self.model.device)
        self.exposure_b = torch.zeros(3, dtype=self.model.dtype, device=self.model.device)
        self.adapted_steps = 0


def apply_twist(T: torch.Tensor, xi: torch.Tensor, mode: str = "centered", step: int = 0) -> torch.Tensor:
    """``T`` perturbed by twist ``xi`` (differentiable in ``xi``).

    ``"centered"``: ``A exp(xi) A^-1 T`` with ``A`` the translation to the object origin in the
    camera, i.e. rotation about the object's origin with camera axes, translation in the camera
    frame. ``"alternate"``: camera frame (``exp(xi) T``) on even steps, object frame (``T exp(xi)``)
    on odd ones.
    """
    E = se3_exp(xi)
    if mode == "alternate":
        return E @ T if step % 2 == 0 else T @ E
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    t = T[:3, 3].detach()
    A = make_pose(eye, t)
    A_inv = make_pose(eye, -t)
    return A @ E @ A_inv @ T


# --------------------------------------------------------------------------------------------------
# image helpers
# --------------------------------------------------------------------------------------------------


def _gauss_window(size: int = 7, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim_map(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM [H, W] of two [H, W, 3] images in [0, 1] (channel mean)."""
    x = x.permute(2, 0, 1)[None]
    y = y.permute(2, 0, 1)[None]
    pad = window.shape[-1] // 2
    mu_x = F.conv2d(x, window, padding=pad, groups=3)
    mu_y = F.conv2d(y, window, padding=pad, groups=3)
    sxx = F.conv2d(x * x, window, padding=pad, groups=3) - mu_x ** 2
    syy = F.conv2d(y * y, window, padding=pad, groups=3) - mu_y ** 2
    sxy = F.conv2d(x * y, window, padding=pad, groups=3) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s[0].mean(0)


def _masked_ncc(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> float:
    """Zero-mean normalised cross-correlation of two [H, W, 3] images over mask ``m`` (all channels
    pooled, each channel centred separately): invariant to per-channel gain and offset."""
    n = int(m.sum())
    if n < 10:
        return 0.0
    a, b = x[m], y[m]
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = float(torch.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum()) / den if den > 1e-12 else 0.0


def _erode(m: torch.Tensor, r: int = 1) -> torch.Tensor:
    """[H, W] bool mask eroded by a (2r+1)^2 square: drops the silhouette's edge pixels, where a
    render that is a pixel too large (Gaussian footprints) shows the background."""
    x = (~m).to(torch.float32)[None, None]
    return ~(F.max_pool2d(x, 2 * r + 1, 1, r)[0, 0] > 0)


def _dilate(m: torch.Tensor, r: int = 1) -> torch.Tensor:
    """[H, W] bool mask dilated by a (2r+1)^2 square."""
    return F.max_pool2d(m.to(torch.float32)[None, None], 2 * r + 1, 1, r)[0, 0] > 0


def _ring_behind(rmask: torch.Tensor, zr: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor,
                 tol: float) -> tuple:
    """How far the render stands out of its surroundings -> ``(ring pixels, share behind)``.

    The ring is the valid-depth pixels 2-3 pixels outside the silhouette ``rmask`` [H, W]; a ring
    pixel is *behind* when its depth exceeds the render's mean depth within 3 pixels (its nearby
    edge) by more than ``tol``. Hand-written: a few pooling ops on the crop, no library does it."""
    ring = _dilate(rmask, 3) & ~_dilate(rmask, 1) & valid
    m = rmask.to(zr.dtype)[None, None]
    z_sum = F.avg_pool2d((zr * rmask.to(zr.dtype))[None, None], 7, 1, 3)[0, 0]
    n = F.avg_pool2d(m, 7, 1, 3)[0, 0]
    edge_depth = z_sum / n.clamp_min(1e-6)
    n_ring = int(ring.sum())
    behind = int((ring & (depth > edge_depth + tol)).sum())
    return n_ring, behind / max(n_ring, 1)


def _silhouette_term(alpha: torch.Tensor, observed: torch.Tensor, region: torch.Tensor,
                     rmask: torch.Tensor) -> torch.Tensor:
    """Squared difference between the render's ``alpha`` [H, W] and the ``observed`` bool mask over
    the bool ``region``, normalised by the union of the rendered (``rmask``) and observed masks
    there, so that its pull does not shrink with the crop's background area."""
    with torch.no_grad():
        n_union = float(((rmask | observed) & region).sum())
    return (((alpha - observed.to(alpha.dtype)) ** 2) * region.to(alpha.dtype)).sum() / max(n_union, 1.0)


def _tolerant_iou(r_m: torch.Tensor, o_m: torch.Tensor) -> tuple:
    """IoU of the rendered and observed bool masks forgiving a one-pixel boundary -> ``(iou,
    edge_r)``, ``edge_r`` the rendered, unobserved pixels next to the observed mask. A disagreement
    next to the other mask is a mixed pixel or the Gaussians' footprint (a render is about a pixel
    too large), not evidence against the pose; without the tolerance the ring of edge pixels
    dominated small visible parts (a mug 2/3 behind an occluder: inlier ratio 0.74 at the true pose)."""
    edge_r = r_m & ~o_m & _dilate(o_m)
    edge_o = o_m & ~r_m & _dilate(r_m)
    union = int((r_m | o_m).sum()) - int(edge_r.sum()) - int(edge_o.sum())
    return int((r_m & o_m).sum()) / max(union, 1), edge_r


def _masked_std(x: torch.Tensor, m: torch.Tensor) -> float:
    """Mean over channels of the standard deviation of [H, W, 3] ``x`` over mask ``m`` (0 if < 10 px)."""
    if int(m.sum()) < 10:
        return 0.0
    return float(x[m].std(0).mean())


#: Colour standard deviation (in [0, 1] units, rendered, non-occluded, eroded) below which the
#: render carries no texture for NCC to correlate (a plain mug bottom: 0.01-0.035; textured views
#: of the built-in objects: 0.08-0.3).
TEXTURE_STD = (0.03, 0.07)
#: Observed colour standard deviation over the same pixels: at most the first value is "uniform
#: too" (consistent with a plain render), from the second on it is not.
UNIFORM_STD = (0.08, 0.15)


#: Observed over rendered colour standard deviation (same pixels) at which a textured render's NCC
#: stops counting (first value) and counts fully (second). NCC is gain-invariant, so sensor noise on
#: a plain wall correlated at 0.27 with a textured mug render 3 m behind it (ratio 0.06, confidence
#: 0.9); right poses of the generated sequences have 0.34-0.47 under their light drift.
CONTRAST_RATIO = (0.08, 0.2)
#: Share of the raw score taken from a textured render whose texture is not seen: a plain
#: observation (CONTRAST_RATIO) or an NCC under NCC_FULL (right poses of the generated sequences:
#: 0.26-0.87).
TEXTURE_GATE = 0.4
NCC_FULL = 0.2
#: Share of a plain render inside the image under which its raw score is scaled down.
PLAIN_MIN_IN_IMAGE = 0.4
#: NCC over which a faintly textured render (``render_std`` between the ``TEXTURE_STD`` bounds)
#: counts as textured for that rule (first value: not at all, second: fully): the right pose of a
#: toy leaving the view, 25 % in the image, render_std 0.043, correlated at 0.59 and scored 0.49
#: under the rule; the plain patch fitted to a pole that the rule is for, at 0.118.
FAINT_TEXTURE_NCC = (0.35, 0.55)
#: Fraction of the silhouette seen (inside the image and not occluded) below which the confidence
#: is scaled down proportionally (BOP counts an object with visib_fract < 0.1 as not visible).
MIN_SEEN_FRACTION = 0.15
#: Share of the valid-depth ring just outside the silhouette (:func:`_ring_behind`) that lies
#: clearly behind the object's edge (by the inlier tolerance, or half the model box's thinnest side
#: if less: a thin object lying flat), under which the confidence is scaled down proportionally
#: (from ``RING_MIN_PIXELS`` ring pixels on): an object stands out of its surroundings somewhere,
#: a pose fitted into a surface does not (a toy fitted to a checkered mat 2.2 m away, out of view:
#: 0.00, confidence 0.83; the ground-truth poses of the generated sequences, 1,374 scores of the
#: four objects on 80 and 64 px crops, seeds 7-12: 0.139 or more, the least at the border behind a
#: pole).
RING_BEHIND_MIN = 0.08
RING_MIN_PIXELS = 20
#: Slide search (:meth:`GSRefiner.slide_along_print`): the pose is moved along each of the object's
#: box axes, each way in steps of ``SLIDE_STEP`` out to ``SLIDE_RANGE`` diameters, while the moves
#: score within ``SLIDE_CONF_TOL`` of the pose: there the geometry does not pin it (both ends of the
#: object hidden: a printed_box between a pole and the image border, moved 0.3 d along its length,
#: scored 0.987-0.996, the pose itself 0.996; moved 0.05-0.1 d across, 0.0-0.9). The move whose
#: render correlates best with the image is returned when its NCC beats the pose's by
#: ``SLIDE_NCC_MARGIN`` (that box 40 mm off: NCC 0.38; moved 0.2 d along its length, 3.7 mm off: 0.71).
SLIDE_STEP = 0.05
SLIDE_RANGE = 0.3
SLIDE_CONF_TOL = 0.03
SLIDE_NCC_MARGIN = 0.15
#: Without depth: pixels by which the object's apparent size changes when it moves 0.1 diameter
#: along the viewing ray (``fx * 0.1 d^2 / z^2``), under which a pose cannot be confirmed to the
#: ADD(-S)-0.1d criterion from the image (mask and silhouette edges are uncertain by about a pixel
#: each side). LM-O's ape at 1 m: 0.6 px; of its RGB-only poses reported valid, 24 % were right.
RGB_MIN_DEPTH_PX = 2.0
#: ICP passes after the first, each from where the last stopped when that moved the box centre by
#: more than ``ICP_REPEAT_MOVE`` diameters (the first margin of a pass is 0.1 d).
ICP_EXTRA_PASSES = 2
ICP_REPEAT_MOVE = 0.05


def contrast_agreement(d: dict) -> float:
    """1 when the observation over the render has at least ``CONTRAST_RATIO[1]`` of the render's
    colour spread, 0 at ``CONTRAST_RATIO[0]`` or less (linear between); 1 without the statistics."""
    if "render_std" not in d:
        return 1.0
    c_lo, c_hi = CONTRAST_RATIO
    ratio = d.get("observed_std", 0.0) / max(d["render_std"], 1e-6)
    return float(np.clip((ratio - c_lo) / (c_hi - c_lo), 0.0, 1.0))


def texture_weight(d: dict) -> float:
    """How textured the visible render is: 0 below ``TEXTURE_STD[0]``, 1 above ``TEXTURE_STD[1]``."""
    lo, hi = TEXTURE_STD
    return float(np.clip((d.get("render_std", hi) - lo) / (hi - lo), 0.0, 1.0))


def seen_texture_weight(d: dict) -> float:
    """:func:`texture_weight`, raised for a faint texture that clearly correlates with the image
    (``FAINT_TEXTURE_NCC``, on at least ``TEXTURE_STD[0]`` of colour spread and with the contrast
    of :func:`contrast_agreement`): how far the view is confirmed by its print, not its shape alone."""
    w = texture_weight(d)
    if d.get("render_std", 0.0) < TEXTURE_STD[0]:
        return w  # NCC of a plain render is noise
    lo, hi = FAINT_TEXTURE_NCC
    told = float(np.clip((d.get("ncc", 0.0) - lo) / (hi - lo), 0.0, 1.0)) * contrast_agreement(d)
    return max(w, told)


def photometric_evidence(d: dict) -> float:
    """Colour evidence in [0, 1] for the confidence.

    A textured render: ``min(1, max(NCC, 0) / 0.35)``, scaled down when the observation is far
    plainer than the render (``CONTRAST_RATIO``: the correlation is then with noise). NCC says
    nothing when the visible part of the render is plain (its only variance is noise and the silhouette's edge): then the evidence is
    whether the observation over the same pixels is plain too. The two are blended by the render's
    colour spread (``TEXTURE_STD``).
    """
    ncc_part = min(1.0, max(d.get("ncc", 0.0), 0.0) / 0.35)
    if "render_std" not in d:
        return ncc_part
    ncc_part *= contrast_agreement(d)
    w_tex = texture_weight(d)
    u_lo, u_hi = UNIFORM_STD
    plain_part = float(np.clip((u_hi - d.get("observed_std", 1.0)) / (u_hi - u_lo), 0.0, 1.0))
    return w_tex * ncc_part + (1.0 - w_tex) * plain_part


def combine_confidence(d: dict, has_depth: bool) -> float:
    """Confidence in [0, 1] from the diagnostics of a final render.

    With depth: ``raw = 0.4 inlier + 0.35 IoU + 0.25 photo`` (depth inlier ratio, silhouette IoU
    against the depth-consistent mask, colour evidence of :func:`photometric_evidence`), times a
    visibility factor ``min(1, visible_fraction / 0.4)`` (an object hidden by more than 60 % cannot
    be confirmed) and ``min(1, seen / MIN_SEEN_FRACTION)`` with ``seen`` the share of the
    silhouette inside the image and unoccluded, times down to ``1 - TEXTURE_GATE`` for a textured
    render whose texture is not seen (a plain observation, :func:`contrast_agreement`, or NCC under
    ``NCC_FULL``) and, for a plain render (:func:`seen_texture_weight`), by
    ``min(1, in_image / PLAIN_MIN_IN_IMAGE)``, and by ``min(1, behind / RING_BEHIND_MIN)`` with
    ``behind`` the share of the ring around the silhouette that lies behind its edge, mapped by
    a logistic centred on 0.72 (slope 20):
    the raw score that separated right from wrong poses on generated data (docs/tracking.md).
    Geometry alone cannot reject a pose flipped onto a geometric symmetry of the shape; the colour
    term does, as far as the texture allows. Without depth: SSIM and NCC only, times
    ``min(1, depth_resolution_px / RGB_MIN_DEPTH_PX)`` (a distance the image cannot resolve to 0.1 d
    is not confirmed). Zero when the render covers fewer than
    ``min_pixels`` pixels (object not in view).
    """
    if not d.get("rendered_pixels", 0) or d.get("too_small", False):
        return 0.0
    photo = photometric_evidence(d)
    if has_depth and d.get("depth_pixels", 0) > 0:
        raw = 0.4 * d["depth_inlier_ratio"] + 0.35 * d["silhouette_iou"] + 0.25 * photo
        raw *= min(1.0, d["visible_fraction"] / 0.4)
        # and BOP's sense of visible (occlusion and the image border): below ~10 % of the object
        # in view nothing can be confirmed (an object leaving the view stayed "valid" at 9.9 %)
        raw *= min(1.0, d.get("in_image_fraction", 1.0) * d["visible_fraction"] / MIN_SEEN_FRACTION)
        # a textured model seen as a plain patch, or whose texture does not correlate with the
        # image, is not confirmed however well the geometry fits: geometry alone gives ~0.6-0.75
        # (a printed_box fitted to the table 29 cm from where it was, out of view: spread ratio
        # 0.11, NCC 0.03, 0.6; a mug turned 147 deg about its axis: NCC 0.08, 0.76)
        if "ncc" in d:  # (diagnostics without colour statistics: no gate)
            texture_agreement = min(contrast_agreement(d), float(np.clip(d["ncc"] / NCC_FULL, 0.0, 1.0)))
            raw *= 1.0 - TEXTURE_GATE * texture_weight(d) * (1.0 - texture_agreement)
        # a plain visible part is confirmed by its shape alone, and a small plain patch of a
        # curved shape fits many surfaces (a toy's plain back, 26 % in the image, fitted to a
        # pole of similar colour out of view: 0.94): plain views need more of the object inside
        # the image. Only the image border counts here: an occluder's depth in front of the
        # render is evidence too (a plain mug 60-67 % behind a card is right and must stay valid)
        # (a faint print that clearly correlates counts as print: seen_texture_weight)
        in_image = d.get("in_image_fraction", 1.0)
        raw *= 1.0 - (1.0 - seen_texture_weight(d)) * (1.0 - min(1.0, in_image / PLAIN_MIN_IN_IMAGE))
        # nowhere behind the pose's edge does the scene recede: a pose fitted into a surface
        if d.get("ring_pixels", 0) >= RING_MIN_PIXELS:
            raw *= min(1.0, d["ring_behind_fraction"] / RING_BEHIND_MIN)
    else:
        raw = 0.5 * photo + 0.5 * float(np.clip(d.get("ssim", 0.0), 0.0, 1.0))
        # the image alone cannot tell the distance to within 0.1 d when that moves the silhouette's
        # edges by less than about a pixel: such a pose is not confirmed, however well it matches
        raw *= min(1.0, d.get("depth_resolution_px", RGB_MIN_DEPTH_PX) / RGB_MIN_DEPTH_PX)
    return float(1.0 / (1.0 + math.exp(-(raw - 0.72) * 20.0)))


# --------------------------------------------------------------------------------------------------
# the refiner
# --------------------------------------------------------------------------------------------------


class GSRefiner:
    """Render-and-compare refinement of ``T_cam_obj`` for one object (see the module docstring).

    Example::

        refiner = GSRefiner(model, metadata)
        result = refiner.refine(frame, T_init)          # from a coarse pose
        result = refiner.refine(frame, T_pred, tracking=True, appearance=state)  # per-track
    """

    def __init__(self, model: GaussianModel, metadata: ObjectMetadata, config: Optional[RefinerConfig] = None):
        self.config = config or RefinerConfig()
        self.model = model.detach()
        self.metadata = metadata
        self.device = self.model.device
        self.dtype = self.model.dtype
        self.diameter = float(metadata.diameter) if metadata.diameter > 0 else float(
            torch.linalg.norm(self.model.means.max(0).values - self.model.means.min(0).values))
        means = self.model.means.detach().cpu().double().numpy()
        self._points = means
        self._tree = cKDTree(means)
        self._normals = pca_normals(means, self._tree, k=12)
        # typical distance between neighbouring centres (for the visibility z-buffer of the ICP)
        self._spacing = float(np.median(self._tree.query(means, k=2)[0][:, 1])) if len(means) > 1 else 0.003
        lo = np.asarray(metadata.bbox_min, dtype=np.float64)
        hi = np.asarray(metadata.bbox_max, dtype=np.float64)
        if not np.all(hi > lo):
            lo, hi = means.min(0), means.max(0)
        self.bbox_min, self.bbox_max = lo, hi
        self.box_centre = 0.5 * (np.asarray(lo, dtype=np.float64) + np.asarray(hi, dtype=np.float64))
        self.corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        # a thin object lying flat stands out of its table by its thickness only (_ring_behind)
        self._half_thinnest_side = 0.5 * float(np.min(hi - lo))
        self._window = _gauss_window(7, 1.5, self.dtype, self.device)

    # -- crop ------------------------------------------------------------------------------------

    def crop_for(self, frame: Frame, T: np.ndarray) -> Optional[tuple]:
        """Square crop ``(x0, y0, w, h)`` around the projection of the model's box at ``T``; None
        when the box is behind the camera or the crop outside the image."""
        box = self._crop_around(frame, [T])
        if box is None:
            return None
        x0, y0, w, h = box
        if x0 + w <= 0 or y0 + h <= 0 or x0 >= frame.width or y0 >= frame.height:
            return None
        return x0, y0, w, h

    def _crop_around(self, frame: Frame, poses: list) -> Optional[tuple]:
        """Square crop ``(x0, y0, w, h)`` (``config.crop_padding``) around the projections of the
        model's box at every pose of ``poses``; None when a box is behind the camera."""
        pc = np.concatenate([self.corners @ T[:3, :3].T + T[:3, 3] for T in poses])
        if np.any(pc[:, 2] <= 0.02):
            return None
        uv = pc[:, :2] / pc[:, 2:3] * np.array([frame.K[0, 0], frame.K[1, 1]]) + frame.K[:2, 2]
        return crop_box_around(uv, (frame.width, frame.height), padding=self.config.crop_padding,
                               min_size=16.0, shift_inside=False)

    def _prepare(self, frame: Frame, box: tuple, mask: Optional[np.ndarray], S: int,
                 plane: Optional[np.ndarray] = None):
        x0, y0, w, h = box
        cam = PinholeCamera.from_K(frame.K, frame.width, frame.height).crop(x0, y0, w, h, S, S)
        interp = cv2.INTER_AREA if w >= 2 * S else cv2.INTER_LINEAR
        rgb = crop_image(frame.rgb, x0, y0, w, h, S, S, interpolation=interp)
        obs = torch.as_tensor(rgb, dtype=self.dtype, device=self.device) / 255.0
        # inside-image indicator (padding outside carries no information)
        inside = crop_image(np.ones(frame.rgb.shape[:2], np.uint8), x0, y0, w, h, S, S,
                            interpolation=cv2.INTER_NEAREST) > 0
        depth = None
        if frame.depth is not None:
            d = crop_image(frame.depth, x0, y0, w, h, S, S, interpolation=cv2.INTER_NEAREST)
            depth = torch.as_tensor(d, dtype=self.dtype, device=self.device)
        ext_mask = None
        if plane is not None and depth is not None:
            ext_mask = torch.as_tensor(~on_plane(d, cam.K, plane, self.config.plane_tol), device=self.device)
        if mask is not None:
            m = torch.as_tensor(crop_image(np.asarray(mask).astype(bool), x0, y0, w, h, S, S), device=self.device)
            ext_mask = m if ext_mask is None else (ext_mask & m)
        K = torch.as_tensor(cam.K, dtype=self.dtype, device=self.device)
        return K, obs, depth, torch.as_tensor(inside, device=self.device), ext_mask

    def support_plane(self, frame: Frame, box: tuple) -> Optional[np.ndarray]:
        """A dominant plane (a table, a wall) in the outer ring of the crop box, as ``(n, d)`` with
        ``n . x = d`` (camera frame, metres), or None. Points on it are left out of the ICP and of
        the observed object mask: the object stands on it, it is not part of it."""
        if frame.depth is None or not self.config.remove_support_plane:
            return None
        return fit_support_plane(frame.depth, frame.K, box)

    def slide_along_print(self, frame: Frame, T_cam_obj, appearance: Optional[AppearanceState] = None
                          ) -> Optional[tuple]:
        """A move of ``T_cam_obj`` along a box axis that the geometry leaves free and the print
        pins (see ``SLIDE_STEP``) -> ``(T_moved, info)``, or None (no free axis, no better
        correlating move, no depth, a pose scoring under 0.5 on the search's crop). ``info``: the
        axis, the move in diameters, the NCC before and after. Every candidate is scored on one
        crop covering all of them (a render each, no ICP or support-plane fit per candidate:
        ~10 ms each at the default crop on two CPU cores)."""
        if frame.depth is None:
            return None
        T0 = np.asarray(T_cam_obj, dtype=np.float64)
        R = T0[:3, :3]

        def moved(axis: int, offset: float) -> np.ndarray:
            T = T0.copy()
            T[:3, 3] += offset * self.diameter * R[:, axis]
            return T

        box = self._crop_around(frame, [T0] + [moved(k, sign * SLIDE_RANGE) for k in range(3)
                                               for sign in (-1.0, 1.0)])
        if box is None:
            return None
        S = int(self.config.crop_size)
        K, obs, depth, inside, ext_mask = self._prepare(frame, box, None, S, self.support_plane(frame, box))
        model, a, b = self._appearance_inputs(appearance)

        def score(T: np.ndarray) -> tuple:
            T_t = torch.as_tensor(T, dtype=self.dtype, device=self.device)
            diag = self._evaluate(model, T_t, K, S, obs, depth, inside, ext_mask, a, b)
            return combine_confidence(diag, True), diag.get("ncc", 0.0)

        conf0, ncc0 = score(T0)
        if conf0 < 0.5:
            return None  # only a confirmed pose: the walk below stops where the confidence drops
        best = None
        for k in range(3):
            for sign in (-1.0, 1.0):
                for i in range(1, int(round(SLIDE_RANGE / SLIDE_STEP)) + 1):
                    offset = sign * i * SLIDE_STEP
                    conf, ncc = score(moved(k, offset))
                    if conf < conf0 - SLIDE_CONF_TOL:
                        break  # the geometry pins the pose this way (from here on)
                    if best is None or ncc > best[2]:
                        best = (k, offset, ncc)
        if best is None or best[2] < ncc0 + SLIDE_NCC_MARGIN:
            return None
        k, offset, ncc = best
        return moved(k, offset), {"axis": k, "offset_diameters": offset, "ncc_before": ncc0, "ncc_after": ncc}

    # -- ICP ---------------------------------------------------------------------------------------

    def icp(self, frame: Frame, T: np.ndarray, box: tuple, iterations: int,
            plane: Optional[np.ndarray] = None) -> tuple[np.ndarray, dict]:
        """Trimmed point-to-point ICP of observed depth points (inside ``box``) to the model."""
        info = {"icp_pairs": 0, "icp_rmse": float("nan")}
        if frame.depth is None or iterations <= 0:
            return T, info
        x0, y0, w, h = box
        H, W = frame.depth.shape
        u0, v0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
        u1, v1 = min(int(math.ceil(x0 + w)), W), min(int(math.ceil(y0 + h)), H)
        if u1 - u0 < 2 or v1 - v0 < 2:
            return T, info
        n_pix = (u1 - u0) * (v1 - v0)
        step = max(1, int(math.sqrt(n_pix / (self.config.icp_points * 2.0))))
        dsub = frame.depth[v0:v1:step, u0:u1:step]
        vv, uu = np.nonzero(dsub > 0)
        if len(vv) < 10:
            return T, info
        z = dsub[vv, uu].astype(np.float64)
        u = u0 + uu * step + 0.5
        v = v0 + vv * step + 0.5
        K = frame.K
        P = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1)
        if plane is not None:
            P = P[np.abs(P @ plane[:3] - plane[3]) > self.config.plane_tol]
            if len(P) < 10:
                return T, info
        diam = self.diameter
        T = T.copy()
        lo, hi = self.bbox_min, self.bbox_max
        front = tree = None
        # model -> data rows only where the model is farther from the data than their sampling
        # (``icp_reverse_gap`` grid steps at the object's depth): nearest-neighbour pairs on a regular pixel grid
        # have a tangential residual of up to about half its spacing that does not average out (a
        # bias); a model part sticking out is farther
        gap = max(self.config.icp_reverse_gap * step * max(float(T[2, 3]), 0.05) / float(K[0, 0]), 0.002)
        for it in range(iterations):
            frac = it / max(iterations - 1, 1)
            margin = diam * (0.1 * (1 - frac) + 0.04 * frac)
            R, t = T[:3, :3], T[:3, 3]
            if it % 5 == 0:  # the model points the camera sees at this pose
                front = self.front_points(T, K)
                if len(front) < 10:
                    break
                tree = cKDTree(self._points[front])
            Q = (P - t) @ R  # object frame
            inb = np.all((Q > lo - margin) & (Q < hi + margin), axis=1)
            if inb.sum() < 10:
                break
            dist, idx = tree.query(Q[inb], k=1)
            idx = front[idx]
            keep = dist < max(margin, 0.004)
            # ten pairs on fewer than ten model points constrain nothing (ten observed points all
            # nearest to one model point made the normal equations singular: a half-turn of a seed-9
            # printed_box detection)
            if keep.sum() < 10 or len(np.unique(idx[keep])) < 10:
                break
            src = self._points[idx[keep]]  # model points (object frame)
            dst = P[inb][keep]  # observed points (camera frame)
            T_old = T
            if self.config.icp_mode == "plane":
                nrm, n_fwd = self._normals[idx[keep]], len(src)
                rev = self._reverse_pairs(frame, T, front, P[inb], gap, max(margin, 0.004)) \
                    if self.config.icp_reverse_weight > 0 else None
                if rev is not None:
                    rs, rd = rev
                    # point-to-point as three point-to-plane rows along the camera axes
                    ax = R.T  # columns: camera axes in the object frame
                    src = np.concatenate([src] + [rs] * 3)
                    dst = np.concatenate([dst] + [rd] * 3)
                    nrm = np.concatenate([nrm] + [np.broadcast_to(ax[:, k], rs.shape) for k in range(3)])
                T = self._icp_plane_step(T, src, nrm, dst, n_fwd, float(self.config.icp_reverse_weight))
            else:
                cs, cd = src.mean(0), dst.mean(0)
                Hm = (src - cs).T @ (dst - cd)
                U, _, Vt = np.linalg.svd(Hm)
                Dm = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T))])
                Rn = Vt.T @ Dm @ U.T
                T = np.eye(4)
                T[:3, :3], T[:3, 3] = Rn, cd - Rn @ cs
            info = {"icp_pairs": int(keep.sum()), "icp_rmse": float(np.sqrt(np.mean(dist[keep] ** 2))),
                    "icp_iterations": it + 1}
            moved = np.linalg.norm(T[:3, 3] - T_old[:3, 3])
            turned = np.linalg.norm(cv2.Rodrigues(T[:3, :3] @ T_old[:3, :3].T)[0])
            if it >= 2 and moved < 5e-5 and turned < 2e-4:
                break
        return T, info

    def _reverse_pairs(self, frame: Frame, T: np.ndarray, front: np.ndarray, P: np.ndarray,
                       min_dist: float, max_dist: float):
        """Model -> data pairs: the visible model points (``front``) whose pixel holds a valid depth
        not in front of them by more than the occlusion tolerance (an occluder hides them: no
        evidence), each with its nearest observed point (``P``: those in the object's box, camera
        frame), kept when that lies between ``min_dist`` and ``max_dist`` away. Returns ``(model
        points [object frame], observed points [camera frame])`` or None."""
        front = front[:: max(1, len(front) // 600)]  # a sparse set is enough (cost)
        q = self._points[front] @ T[:3, :3].T + T[:3, 3]
        K = frame.K
        H, W = frame.depth.shape
        z = q[:, 2]
        ok = z > 0.02
        u = np.floor(q[:, 0] / np.maximum(z, 1e-6) * K[0, 0] + K[0, 2]).astype(np.int64)
        v = np.floor(q[:, 1] / np.maximum(z, 1e-6) * K[1, 1] + K[1, 2]).astype(np.int64)
        ok &= (u >= 0) & (u < W) & (v >= 0) & (v < H)
        d = np.zeros(len(q))
        d[ok] = frame.depth[v[ok], u[ok]]
        tol = max(0.02 * self.diameter, 0.004)
        ok &= (d > 0) & (d > z - tol)
        if ok.sum() < 10:
            return None
        dist, j = cKDTree(P).query(q[ok], k=1)
        near = (dist < max_dist) & (dist > min_dist)
        if near.sum() < 3:
            return None
        return self._points[front[ok][near]], P[j[near]]

    def front_points(self, T: np.ndarray, K: np.ndarray) -> np.ndarray:
        """Indices of the model points (Gaussian centres) the camera sees at pose ``T``: a z-buffer
        on cells of four median point spacings, keeping the points within ``max(3 mm, spacing)`` of
        their cell's nearest one.

        The depth points observed are the front surface only. Matched against every centre, they
        also found the back and inner surfaces: a mug's outer bottom locked onto its inner floor
        7 mm above, a steady 7-8 mm bias of every tracked frame."""
        pc = self._points @ T[:3, :3].T + T[:3, 3]
        z = pc[:, 2]
        ok = z > 0.02
        idx = np.nonzero(ok)[0]
        if len(idx) == 0:
            return idx
        z = z[ok]
        u = pc[ok, 0] / z * K[0, 0]
        v = pc[ok, 1] / z * K[1, 1]
        # cells of four median neighbour distances: random samples leave holes in a surface at two
        # (the mug's inner floor showed through its bottom, 76 of 180 points) but none at four
        cell = max(1.0, 4.0 * float(K[0, 0]) * self._spacing / float(np.median(z)))
        cu = np.floor((u - u.min()) / cell).astype(np.int64)
        cv_ = np.floor((v - v.min()) / cell).astype(np.int64)
        key = cv_ * (int(cu.max()) + 1) + cu
        zmin = np.full(int(key.max()) + 1, np.inf)
        np.minimum.at(zmin, key, z)
        return idx[z <= zmin[key] + max(0.003, self._spacing)]

    @staticmethod
    def _icp_plane_step(T: np.ndarray, src: np.ndarray, nrm: np.ndarray, dst: np.ndarray,
                        n_fwd: Optional[int] = None, rev_weight: float = 0.25,
                        rev_knee: float = 0.003) -> np.ndarray:
        """One Gauss-Newton step of point-to-plane ICP (Huber-weighted), linearised about ``T``
        with the rotation about the centroid of the posed model points. Rows from ``n_fwd`` on are
        model -> data rows: weight ``rev_weight``, Huber knee at least ``rev_knee`` (a model part
        sticking out beyond the observed surface by millimetres is their signal, not an outlier);
        the Huber scale and the damping come from the first ``n_fwd`` rows."""
        R, t = T[:3, :3], T[:3, 3]
        q = src @ R.T + t  # posed model points
        n = nrm @ R.T
        c = q.mean(0)
        r = ((q - dst) * n).sum(1)
        J = np.concatenate([n, np.cross(q - c, n)], 1)  # d r / d [dt, dw]
        nf = len(r) if n_fwd is None else int(n_fwd)
        s = max(1.4826 * np.median(np.abs(r[:nf])), 1e-4)
        knee = np.full(len(r), 2.0 * s)
        knee[nf:] = 2.0 * max(s, rev_knee)
        w = np.minimum(1.0, knee / np.maximum(np.abs(r), 1e-12))
        w[nf:] *= rev_weight
        # damped (Levenberg-Marquardt style) so that directions the shape does not constrain (a
        # rotation about a near-symmetry axis, a slide along a plane) barely move
        rad2 = max(float(np.mean(((q - c) ** 2).sum(1))), 1e-6)  # > 0: A stays positive definite
        lam = 0.02 * float(w[:nf].sum())
        A = (J * w[:, None]).T @ J + np.diag([lam] * 3 + [lam * rad2] * 3)
        x = -np.linalg.solve(A, (J * w[:, None]).T @ r)
        # trust region: at most 1 cm and 3 degrees per step
        x[:3] *= min(1.0, 0.01 / max(np.linalg.norm(x[:3]), 1e-12))
        x[3:] *= min(1.0, math.radians(3.0) / max(np.linalg.norm(x[3:]), 1e-12))
        dt, dw = x[:3], x[3:]
        dR = cv2.Rodrigues(dw)[0]
        Tn = np.eye(4)
        Tn[:3, :3] = dR @ R
        Tn[:3, 3] = dR @ (t - c) + c + dt
        return Tn

    # -- losses --------------------------------------------------------------------------------------

    def _observed_mask(self, depth, valid, rmask, zr, ext_mask, T_pose: torch.Tensor, K: torch.Tensor):
        """Observed object mask at ``T_pose``: valid depth points inside the object's box (grown by
        the inlier tolerance) and, where the render covers the pixel, depth-consistent with it;
        intersected with ``ext_mask`` (off the support plane, Pose-Net's mask)."""
        tol = max(self.config.inlier_tol * self.diameter, 0.01)
        P = backproject_depth(depth, K)[0] - T_pose[:3, 3]  # invalid pixels: left out by ``valid`` below
        Q = P @ T_pose[:3, :3]  # object frame
        lo = torch.as_tensor(self.bbox_min, dtype=depth.dtype, device=depth.device) - tol
        hi = torch.as_tensor(self.bbox_max, dtype=depth.dtype, device=depth.device) + tol
        # inside the box: excludes the background and most of a supporting table, unlike a depth band
        band = valid & torch.all((Q > lo) & (Q < hi), dim=-1)
        # inside the render, consistency is per pixel
        band = torch.where(rmask, valid & ((depth - zr).abs() < 3 * tol), band)
        return band if ext_mask is None else (band & ext_mask)

    def _appearance_inputs(self, appearance: Optional[AppearanceState]) -> tuple:
        """``(model, exposure_a, exposure_b)`` to render with: the per-track copy and its exposure
        (detached), or the loaded model and no exposure correction (zeros [3])."""
        if appearance is None:
            zeros = torch.zeros(3, dtype=self.dtype, device=self.device)
            return self.model, zeros, zeros.clone()
        return appearance.model, appearance.exposure_a.detach(), appearance.exposure_b.detach()

    def _evaluate(self, model, T: torch.Tensor, K: torch.Tensor, S: int, obs, depth, inside, ext_mask,
                  a, b) -> dict:
        """Diagnostics of one forward render at ``T`` [4, 4] on a crop prepared by :meth:`_prepare`
        (``K``, size ``S``): :meth:`_terms` without gradients."""
        with torch.no_grad():
            out = render(model, T, K, S, S, background=None)
            return self._terms(out, obs, depth, inside, ext_mask, a, b, T, K)[1]

    def _terms(self, out, obs, depth, inside, ext_mask, a, b, T_pose: torch.Tensor, K: torch.Tensor):
        """Loss terms and the masks/diagnostics used for the confidence.

        Every term leaves out the occluded pixels (observation clearly in front of the render): a
        term that counted them as perfect matches would reward hiding the model behind an occluder.
        With depth, the photometric terms are restricted to the observed object mask, so that they
        align the texture *on* the object; where the render spills onto the background, only the
        silhouette term (normalised by the union of the two masks, so that its pull does not
        shrink with the crop's background area) acts. Without that, on a weakly textured surface
        (a mug's bottom seen face-on) the photometric gradient, which Adam's normalised steps turn
        into full-size moves, dragged the pose off the object (docs/tracking.md, "known failure").
        """
        cfg = self.config
        diam = self.diameter
        alpha = out.alpha
        color = torch.exp(a) * out.color + b * alpha[..., None]
        obs_mask = None
        with torch.no_grad():
            rmask = alpha > 0.5
            occluded = torch.zeros_like(rmask)
            valid = torch.zeros_like(rmask)
            zr = out.depth.detach()
            if depth is not None:
                valid = (depth > 0) & inside
                occ_margin = max(cfg.occlusion_margin * diam, 0.015)
                occluded = valid & rmask & (depth < zr - occ_margin)
                obs_mask = self._observed_mask(depth, valid, rmask, zr, ext_mask, T_pose, K)
            use = ~occluded
            m_photo = use & inside
            if obs_mask is not None:
                m_photo = m_photo & obs_mask
        comp = color + (1.0 - alpha)[..., None] * obs
        comp = torch.where(use[..., None], comp, obs)
        terms = {}
        m_col = (alpha.detach() > 0.95) & m_photo
        n_col = int(m_col.sum())
        l1 = (comp - obs).abs().sum(-1)
        terms["l1"] = (l1 * m_col).sum() / max(n_col, 1) / 3.0
        ssim = ssim_map(comp.clamp(0, 1), obs, self._window)
        m_ssim = (alpha.detach() > 0.05) & m_photo
        terms["ssim"] = ((1.0 - ssim) * m_ssim).sum() / max(int(m_ssim.sum()), 1)
        diag = {"rendered_pixels": int(rmask.sum()), "too_small": int(rmask.sum()) < cfg.min_pixels}
        with torch.no_grad():
            # share of the silhouette inside the image (the crop keeps the whole projected box)
            diag["in_image_fraction"] = int((rmask & inside).sum()) / max(int(rmask.sum()), 1)
            diag["photometric_l1"] = float(terms["l1"])
            diag["ssim"] = float((ssim * m_ssim).sum() / max(int(m_ssim.sum()), 1)) if int(m_ssim.sum()) else 0.0
            # colour evidence for the confidence: over the rendered, non-occluded pixels (not only
            # the observed mask: a wrong pose must not pick its own favourable pixels)
            m_conf = (alpha.detach() > 0.95) & use & inside
            diag["ncc"] = _masked_ncc(out.color.detach(), obs, m_conf)
            core = _erode(m_conf)
            diag["render_std"], diag["observed_std"] = _masked_std(out.color.detach(), core), _masked_std(obs, core)
        if depth is not None:
            delta = min(max(cfg.depth_delta * diam, 0.003), 0.02)
            dm = rmask & valid & use
            r = (out.depth - depth) / delta
            ra = r.abs()
            hub = torch.where(ra < 1, 0.5 * r * r, ra - 0.5)
            hub = torch.clamp(hub, max=cfg.depth_trunc - 0.5)
            terms["depth"] = (hub * dm).sum() / max(int(dm.sum()), 1)
            terms["silhouette"] = _silhouette_term(alpha, obs_mask, valid & use, rmask)
            with torch.no_grad():
                tol = max(cfg.inlier_tol * diam, 0.01)
                n_valid_r = int((rmask & valid).sum())
                n_occ = int(occluded.sum())
                inl = rmask & valid & use & ((depth - zr).abs() < tol)
                # the one-pixel boundary tolerance of the IoU also spares the inlier ratio's edge ring
                diag["silhouette_iou"], edge_r = _tolerant_iou(rmask & use & valid, obs_mask & use)
                n_edge = int((edge_r & ~inl).sum())
                diag["depth_pixels"] = n_valid_r
                diag["occluded_pixels"] = n_occ
                diag["visible_fraction"] = (n_valid_r - n_occ) / max(n_valid_r, 1)
                diag["depth_inlier_ratio"] = int(inl.sum()) / max(n_valid_r - n_occ - n_edge, 1)
                diag["depth_residual_mm"] = float(((depth - zr).abs()[inl]).mean() * 1000) if int(inl.sum()) else float("nan")
                # how far the pose stands out of its surroundings (a pose fitted into a surface does not)
                diag["ring_pixels"], diag["ring_behind_fraction"] = _ring_behind(
                    rmask, zr, depth, valid, min(tol, self._half_thinnest_side))
        elif ext_mask is not None:
            # RGB only: Pose-Net's mask is the one evidence of the object's extent. The photometric
            # terms see only the pixels the render covers and barely constrain the distance (a
            # generated frame, from 3 cm too far: 21 mm left with this term, 39 mm without)
            terms["silhouette"] = _silhouette_term(alpha, ext_mask, inside, rmask)
            with torch.no_grad():
                diag["silhouette_iou"], _ = _tolerant_iou(rmask & inside, ext_mask & inside)
        return terms, diag

    def _loss(self, terms: dict) -> torch.Tensor:
        cfg = self.config
        w = {"l1": cfg.w_l1, "ssim": cfg.w_ssim, "depth": cfg.w_depth, "silhouette": cfg.w_silhouette}
        return sum(w[k] * v for k, v in terms.items())

    def score(self, frame: Frame, T_cam_obj, appearance: Optional[AppearanceState] = None,
              mask: Optional[np.ndarray] = None) -> RefineResult:
        """Confidence and diagnostics of ``T_cam_obj`` as it is (no ICP, no optimisation)."""
        return self.refine(frame, T_cam_obj, iterations=0, appearance=appearance, mask=mask, adapt=False, icp=False)

    # -- main entry ----------------------------------------------------------------------------------

    def refine(self, frame: Frame, T_init, iterations: Optional[int] = None, *, tracking: bool = False,
               appearance: Optional[AppearanceState] = None, mask: Optional[np.ndarray] = None,
               adapt: Optional[bool] = None, icp: bool = True, schedule: Optional[tuple] = None) -> RefineResult:
        """Refines ``T_init`` ([4, 4] metres) against ``frame``.

        iterations: render-and-compare steps (default ``config.iterations``, or
        ``config.track_iterations`` with ``tracking``). appearance: the per-track
        :class:`AppearanceState` to render with and adapt (default: the loaded model, no adaptation).
        mask: optional [H, W] bool object mask (e.g. Pose-Net's), intersected with the depth mask.
        adapt: adapt the appearance this call (default ``config.adapt_appearance`` when an
        appearance state is given). icp: run the depth pre-alignment. schedule: the learning-rate
        phases to use instead of ``config.schedule`` / ``config.track_schedule``.
        """
        t_start = time.perf_counter()
        cfg = self.config
        T0 = np.asarray(T_init, dtype=np.float64)
        if T0.shape != (4, 4) or not np.all(np.isfinite(T0)):
            raise InputError(f"refine: T_init must be a finite 4x4 matrix, got shape {T0.shape}")
        n_it = int(iterations if iterations is not None else (cfg.track_iterations if tracking else cfg.iterations))
        box = self.crop_for(frame, T0)
        if box is None:
            return RefineResult(T0.copy(), 0.0, 0, time.perf_counter() - t_start,
                                diagnostics={"rendered_pixels": 0, "reason": "pose out of view"})
        n_icp = (cfg.track_icp_iterations if tracking else cfg.icp_iterations) if icp else 0
        plane = self.support_plane(frame, box)
        T_np, icp_info = self.icp(frame, T0, box, n_icp, plane)
        T_start = T0
        passes, icp_steps = int(n_icp > 0), icp_info.get("icp_iterations", 0)
        for _ in range(ICP_EXTRA_PASSES):
            # one pass reaches about its first margin (0.1 d) beyond the crop around its start: a
            # pose still moving at its end gets another pass from there, on a crop around it
            # (printed_box re-entering the view, 57 mm between frames: 21 mm left after one pass)
            moved = np.linalg.norm((T_np[:3, :3] - T_start[:3, :3]) @ self.box_centre + T_np[:3, 3] - T_start[:3, 3]) \
                if icp_info.get("icp_pairs", 0) else 0.0
            box_next = self.crop_for(frame, T_np) if moved > ICP_REPEAT_MOVE * self.diameter else None
            if box_next is None:
                break
            T_start, box = T_np, box_next
            T_np, icp_info = self.icp(frame, T_np, box, n_icp, plane)
            passes, icp_steps = passes + 1, icp_steps + icp_info.get("icp_iterations", 0)
        # pairs and rmse describe the last pass (the final alignment); passes and steps all of them
        icp_info = {**icp_info, "icp_passes": passes, "icp_iterations": icp_steps}
        # re-centre the crop after a large ICP move
        box2 = self.crop_for(frame, T_np)
        if box2 is not None:
            box = box2
        S = int(cfg.track_crop_size if tracking else cfg.crop_size)
        K, obs, depth, inside, ext_mask = self._prepare(frame, box, mask, S, plane)
        model, a0, b0 = self._appearance_inputs(appearance)
        do_adapt = (cfg.adapt_appearance if adapt is None else adapt) and appearance is not None and n_it > 0
        if do_adapt:
            model.requires_grad_(*APPEARANCE_FIELDS)
        a = a0.clone().requires_grad_(cfg.exposure)
        b = b0.clone().requires_grad_(cfg.exposure)
        T = torch.as_tensor(T_np, dtype=self.dtype, device=self.device)
        xi = torch.zeros(6, dtype=self.dtype, device=self.device, requires_grad=True)
        sched = schedule if schedule is not None else (cfg.track_schedule if tracking else cfg.schedule)
        groups = [{"params": [xi], "lr": 1.0}]
        if cfg.exposure:
            groups.append({"params": [a, b], "lr": cfg.lr_exposure})
        if do_adapt:
            groups += [{"params": [model.sh], "lr": cfg.lr_sh},
                       {"params": [model.opacity_logits], "lr": cfg.lr_opacity},
                       {"params": [model.quats], "lr": cfg.lr_quats}]
        opt = torch.optim.Adam(groups, lr=1.0, betas=(0.9, 0.99))
        # per-coordinate learning rates for the twist via gradient scaling (Adam is scale-invariant,
        # so the step is scaled after the update instead)
        bounds = np.cumsum([p[0] for p in sched])
        losses: list = []
        term_hist: dict = {}
        quiet = 0
        stopped = False
        diag: dict = {}
        it_done = 0
        for it in range(n_it):
            ph = int(np.searchsorted(bounds, (it + 0.5) / max(n_it, 1)))
            ph = min(ph, len(sched) - 1)
            lr_rho, lr_omega = sched[ph][1], sched[ph][2]
            opt.zero_grad(set_to_none=True)
            T_cur = apply_twist(T, xi, cfg.perturbation, it)
            out = render(model, T_cur, K, S, S, background=None)
            terms, diag = self._terms(out, obs, depth, inside, ext_mask, a, b, T_cur.detach(), K)
            if diag["too_small"]:
                break
            loss = self._loss(terms)
            lv = float(loss.detach())
            losses.append(lv)
            for k, v in terms.items():
                term_hist.setdefault(k, []).append(float(v.detach()))
            loss.backward()
            # Adam on xi with unit lr gives a normalised step; scale per component
            g = xi.grad
            if g is None or not torch.all(torch.isfinite(g)):
                break
            opt.step()
            with torch.no_grad():
                step = xi.detach().clone()
                step[:3] *= lr_rho
                step[3:] *= lr_omega
                T = apply_twist(T, step, cfg.perturbation, it).detach()
                xi.zero_()
                a.clamp_(-1.0, 1.0)
                b.clamp_(-0.5, 0.5)
            it_done = it + 1
            if float(step[:3].norm()) < cfg.stop_rho and float(step[3:].norm()) < cfg.stop_omega:
                quiet += 1
                if quiet >= cfg.patience:
                    stopped = True
                    break
            else:
                quiet = 0
        if do_adapt:
            model.requires_grad_(*APPEARANCE_FIELDS, requires_grad=False)
            appearance.adapted_steps += it_done
        if appearance is not None and cfg.exposure:
            appearance.exposure_a = a.detach().clone()
            appearance.exposure_b = b.detach().clone()
        # final evaluation at the returned pose (one forward render); tracking reuses the last
        # step's render (its pose differs from the returned one by that last, small step)
        if not (tracking and it_done > 0 and not cfg.final_render_in_tracking) or not diag:
            diag = self._evaluate(model, T, K, S, obs, depth, inside, ext_mask, a.detach(), b.detach())
        diag.update(icp_info)
        diag["support_plane"] = plane is not None
        T_out = T.detach().cpu().double().numpy()
        z = float((T_out[:3, :3] @ self.box_centre + T_out[:3, 3])[2])
        diag["depth_resolution_px"] = float(frame.K[0, 0]) * 0.1 * self.diameter ** 2 / max(z, 1e-6) ** 2
        has_depth = depth is not None and bool((depth > 0).any())
        conf = combine_confidence(diag, has_depth)
        # what the fit says were all of the silhouette inside the image: the tracker compares two
        # poses of an object cut by the border with it (the confidence favours the one that puts
        # more of the object inside the image, right or not)
        diag["confidence_in_view"] = combine_confidence({**diag, "in_image_fraction": 1.0}, has_depth)
        diag["confidence_raw_inputs"] = True
        return RefineResult(
            T_cam_obj=T_out,
            confidence=conf,
            iterations=it_done,
            time=time.perf_counter() - t_start,
            losses=losses,
            terms=term_hist,
            diagnostics=diag,
            crop=tuple(float(v) for v in box),
            stopped_early=stopped,
        )
