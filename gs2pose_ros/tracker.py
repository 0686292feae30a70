"""PoseTracker: one object's pose over an RGB-D stream (Pose-Net + GS-Refiner + a state machine).

States (:class:`~gs2pose_ros.frame.TrackingState`):

* ``INITIALIZING``: no pose yet. Every frame: coarse pose (Pose-Net) + full refinement, checked
  against its half-turns about the box axes and, when it does not verify, the coarse stage's next
  candidate (another full-frame component, an object-sized surface), and, when its coarse pose was
  unsure, weighed against another reading of the same object (a "detection"); a result with
  ``confidence >= accept_threshold`` starts ``TRACKING``.
* ``TRACKING``: each frame warm-starts from the previous pose moved by a constant-velocity
  prediction and runs the short refinement (``track_iterations``). A result below
  ``recover_below`` is refined again from itself (full ICP, ``recover_iterations`` steps: the warm
  start is kept); if that is still below ``recover_below`` a re-detection is tried beside it and it
  needs ``accept_threshold``. A confidence below ``valid_threshold`` marks the pose invalid for that
  frame and triggers an immediate re-detection attempt (coarse + full refinement) in the same frame
  (kept when it scores better); the last accepted pose stays the warm start; after ``lost_after``
  consecutive low frames the state becomes ``LOST``.
* ``LOST``: re-detects from scratch on every frame (no timer) until a confident pose is found,
  then ``TRACKING`` again with a fresh motion model and a fresh appearance copy. For
  ``resume_frames`` frames after the last accepted pose, a frame whose re-detection confirms
  nothing also refines that pose (an object back where it was last seen, cut by the image border).
  In both, a detection refused only as ambiguous about a near-symmetry axis (a mug with handle
  and logo out of sight) is followed from frame to frame at a tenth of a detection's cost, still
  not valid, for up to ``follow_ambiguous_frames`` frames or until the view prefers a turn
  about the axis; a detection then decides.

A tracking step whose clearly textured render's colour correlation (NCC) collapses by
``TRACK_NCC_COLLAPSE`` from the last accepted pose's is not valid whatever its confidence; a
confirmed re-detection in the same frame replaces it.

``pose_valid`` is True only when the confidence of this frame's pose is at least
``valid_threshold``; while the object is out of view the render covers no consistent depth, the
confidence is ~0 and the state goes to ``LOST``.

The coarse estimator is anything with ``estimate(frame, roi=None) -> obj`` where ``obj`` has
``T_cam_obj`` (4x4, metres), ``confidence`` and optionally ``mask`` ([H, W] bool): Pose-Net's
:class:`gs2pose_ros.posenet.coarse.CoarsePoseEstimator`, or a test double.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
import torch

from gs2pose_ros.camera import project
from gs2pose_ros.errors import ConfigError, InputError, ModelFileError
from gs2pose_ros.frame import Frame, NotValidReason, PoseEstimate, TrackingState
from gs2pose_ros.gaussians import GaussianModel, ObjectMetadata
from gs2pose_ros.mesh import near_symmetry_axes
from gs2pose_ros.refiner import (AppearanceState, GSRefiner, RefinerConfig, RefineResult, check_config_keys,
                                 texture_weight)

#: Cap on how far the constant-velocity prediction extrapolates the last inter-frame motion
#: (in multiples of it) after a long gap between processed frames.
MAX_PREDICTION_RATIO = 3.0
#: A detection may be re-scored without Pose-Net's mask only when at least this share of the mask
#: lies on the refined pose's silhouette (an incomplete mask, not one somewhere else).
MIN_MASK_ON_POSE = 0.5
#: Half-turned detections within this of the best confidence are ranked by their colour correlation.
FLIP_TIE = 0.1
#: ... and a detection whose depth inlier ratio reaches this is checked whatever its confidence.
FLIP_MIN_INLIERS = 0.6
#: A half-turn replaces the detection only with at least this NCC on a textured render (the right
#: half-turns of printed_box detections: 0.71-0.76).
FLIP_MIN_NCC = 0.4
#: ... and replaces a detection within ``FLIP_TIE`` of it only with an NCC at least this much higher
#: (right against half-turned printed_box detections: 0.60 vs 0.15-0.26, 0.58 vs 0.20; a mug's
#: turn about its axis with the handle hidden: 0.44 vs 0.36 for the right detection).
FLIP_NCC_MARGIN = 0.2
#: ... or with a confidence at least this much higher and a higher NCC: a turn that fits better
#: and correlates better (mug seed 13 frame 27: the detection 177 deg off at 0.906, NCC 0.65,
#: silhouette IoU 0.30; its right half-turn 0.986, NCC 0.78, IoU 0.92, kept out by the margin and
#: the detection confirmed). Re-refining one pose moves its confidence by about 0.01.
FLIP_DOMINANT_GAP = 0.05
#: A detection (no track to continue) of an object with less than this share of its silhouette in
#: the image and unoccluded is not confirmed: from a sliver at the border the texture and the
#: geometry cannot tell the pose from its half-turns (printed_box 14-15 % in view: 180 deg off at
#: 0.99 with the right half-turn at 0.97). A track keeps following such a sliver.
DETECT_MIN_SEEN = 0.2
#: ... unless, with depth, its clearly textured render (``DETECT_TEXTURED_STD``) correlates at
#: least this well and ``SLIVER_NCC_MARGIN`` better than each of its refined half-turns that is
#: another pose (the object's symmetries aside): the print then tells them apart (right slivers:
#: printed_box 0.58, 0.12 above its best half-turn; the can 0.95, 0.40 above its upside-down turns;
#: wrong poses of slivers measured: 0.195, 0.308, session 5's 0.40, and a half-turn at 0.46;
#: docs/tracking.md, session 8).
SLIVER_MIN_NCC = 0.55
SLIVER_NCC_MARGIN = 0.1
#: Under this share seen, a detection with a clearly textured render is also held unless its NCC
#: leads its refined half-turns' by ``SLIVER_NCC_MARGIN`` (the view's print must tell it from them,
#: as a sliver's): a toy 29 % seen (generated seed 14 frame 30, single frame) was confirmed at 0.983
#: 166 deg off, NCC 0.817 against its half-turn's 0.801; the right textured detections 20-50 % seen
#: of seeds 7-14 lead by 0.107-0.222 (docs/tracking.md, session 15).
DETECT_PARTIAL_SEEN = 0.5
#: A detection of a model with a near-symmetry axis (``mesh.near_symmetry_axes``) is re-scored
#: turned this far both ways about it; a turned score within ``AXIS_AMBIGUITY_TOL`` of the pose's
#: own means nothing in view fixes that rotation (mug, handle and logo facing away: turned 20 deg
#: 0.000-0.007 below the pose's score on 13 frames of two sequences; handle in view: 0.030 below
#: (seed-7 frame 55) to 0.99 below, one way or the other), unless the view tells the turn apart
#: (:func:`view_tells_turn`: the logo in view with the handle out of sight, or the handle's outline
#: and the print together).
AXIS_PROBE_DEG = 20.0
AXIS_AMBIGUITY_TOL = 0.015
#: ... the silhouette IoU lead over the turned pose that alone tells it apart; a smaller lead
#: counts in proportion, added to the NCC lead's share of ``FLIP_NCC_MARGIN`` (mug seed 12
#: frames 0-27, handle in view and right poses: turned 20 deg toward the handle, the score 0.008
#: below, NCC 0.16-0.20 and IoU 0.05-0.07 lower; wrong poses 13-60 deg off, handle hidden: the
#: turns' IoU within -0.04..+0.03, with their NCC as high or higher; session 13).
AXIS_IOU_MARGIN = 0.1
#: A confident detection of such a model is also scored turned about the axis in steps of
#: ``AXIS_SWEEP_STEP_DEG`` up to ``AXIS_SWEEP_MAX_DEG`` either way (beyond, the half-turns of
#: :meth:`PoseTracker._best_flip` take over); the turn furthest ahead of it
#: (:func:`_turn_preferred`) is refined and replaces it when still ahead (mug seed 7 frame 28:
#: detected 19 deg off, NCC 0.43; turned 15 deg, 0.75; the NCC peak about the axis is ~30 deg
#: wide, so a 30-deg step can miss it).
AXIS_SWEEP_STEP_DEG = 15.0
AXIS_SWEEP_MAX_DEG = 90.0
#: A detection with depth whose render is clearly textured (colour spread ``render_std`` at least
#: ``DETECT_TEXTURED_STD``) is confirmed only with an NCC of at least ``DETECT_MIN_NCC``: geometry
#: fits a box turned 90 deg at its border at 0.79 (seed-9 printed_box, NCC 0.195), where every
#: right pose of such a render measured so far correlates at 0.478 or more (802 confident frames
#: of the four built-in objects' generated sequences, session 7; docs/tracking.md).
DETECT_TEXTURED_STD = 0.15
DETECT_MIN_NCC = 0.35
#: A detection with depth of an object less than ``PARTIAL_IN_IMAGE`` inside the image is
#: confirmed only when at least ``PARTIAL_MIN_INLIERS`` of its depth agrees: a pose 39-60 deg off
#: of an object leaving the view fits a smaller piece of surface, and those measured fitted 0.68
#: and 0.69 (toy seed 11 frame 30, mug seed 13 frame 29, confidence 0.76 and 0.82, session 12),
#: right ones 0.853-1.0 (30 detections of objects 12-59 % in the image, sessions 12-13). Not a
#: floor for all detections: at 320x240 with a 3,000-Gaussian model a right pose in full view
#: fitted 0.72 (the ratio depends on the resolution and the model's density).
PARTIAL_IN_IMAGE = 0.5
PARTIAL_MIN_INLIERS = 0.78
#: Coarse candidates with a pose refined per detection, in the coarse stage's order, while none
#: reaches ``accept_threshold`` (each ~1 s on two CPU cores, half-turn check included).
DETECT_CANDIDATES = 2
#: ... and, when the accepted one's coarse pose was unsure, the first later candidate on the same
#: object (within ``RIVAL_MAX_DIST`` diameters) turned by more than ``RIVAL_MIN_DEG``: the network
#: read the mug two ways from two crops (generated seed 11, frame 59: 149 deg off at coarse
#: confidence 0.06, refined to 0.968 with NCC 0.36; the object's surface crop 5 deg off, refined
#: 0.987, NCC 0.67). It replaces the detection as a half-turn would (:func:`choose_half_turn`).
RIVAL_MAX_DIST = 0.5
RIVAL_MIN_DEG = 30.0
#: When none of the first ``DETECT_CANDIDATES`` reaches ``accept_threshold``, the later candidates
#: with a coarse confidence of at least ``DETECT_LATER_MIN_CONFIDENCE`` follow, the surest first
#: (up to ``DETECT_CANDIDATES`` more): the right one came fourth at 0.535 behind a distractor at
#: 0.705 and two at 0.0 (toy re-entering, generated seed 12 frame 51), fourth at 0.457 behind three
#: at 0.0 (seed 13 frame 52), third at 0.773 (seed 13 frame 14); in 600 frames (coarse stage alone:
#: toy seeds 7, 8, 11, 12, 13, printed_box 7, 11, 12, 13, mug 13) no later candidate reached 0.2
#: without a right one among the first two.
DETECT_LATER_MIN_CONFIDENCE = 0.25
#: A pose reported valid with less than this share of its silhouette seen (inside the image and
#: unoccluded), a clearly textured render (``DETECT_TEXTURED_STD``) and depth is searched for a
#: slide along an axis the geometry leaves free (:meth:`GSRefiner.slide_along_print`): with both
#: ends hidden the depth fits the box anywhere along its length (generated seed 12, frame 51: a
#: printed_box between a pole and the image border tracked 57 mm off at 0.992, 38 % seen).
SLIDE_MAX_SEEN = 0.75
#: ... a tracking step only when its NCC fell by this much from the last accepted pose's (that box:
#: 0.60 -> 0.31; the other steps that qualify on the generated sequences: at most 0.09 less, and
#: searching all of them took printed_box seed 7's step median from 59 to 112 ms), or after
#: :meth:`PoseTracker.seed` (no NCC to compare with). Detections are always searched.
SLIDE_NCC_DROP = 0.15
#: A pose resumed from the last accepted one (:meth:`PoseTracker._resume`) with a clearly
#: textured render is confirmed only with at least this NCC: the network did not find it, so the
#: print must (right resumes, generated seeds 7-13: 0.66-0.95; one 20 deg off at 0.919: 0.40).
RESUME_MIN_NCC = 0.55
#: A clearly textured tracking step whose NCC fell by this much from the last accepted pose's has
#: slid into a wrong fit the geometry accepts (toy, generated seed 12 frame 51: the object 60 mm
#: on in one frame, refined 36 deg off at 0.978 with NCC 0.88 -> 0.38): it is not valid, and a
#: re-detection confirmed beside it replaces it. Right textured steps of the 21 session-10
#: tracking runs fell by at most 0.18 (716 steps).
TRACK_NCC_COLLAPSE = 0.3

__all__ = ["TrackerConfig", "PoseTracker", "choose_half_turn", "rival_ncc", "view_tells_turn", "resolve_device",
           "load_object_model"]


@dataclass
class TrackerConfig:
    """Tracker settings; ``refiner`` holds :class:`RefinerConfig` fields (a dict in files)."""

    valid_threshold: float = 0.5  # pose_valid when confidence >= this
    accept_threshold: float = 0.6  # a (re-)detection must reach this to start tracking
    lost_after: int = 3  # consecutive low-confidence frames before LOST
    velocity_damping: float = 0.8  # fraction of the last inter-frame motion predicted
    redetect_on_low: bool = True  # try a re-detection in the same frame when confidence drops
    adapt_min_confidence: float = 0.8  # adapt appearance only while this confident
    # a tracking step that ends below this confidence has not converged (a larger motion than the
    # short step follows, the object re-entering the view): it is refined again from its result
    # with the full ICP and ``recover_iterations`` steps at the tracking rates (80 px crop) before a
    # low score sends it to a re-detection; 0 iterations turns this off
    recover_below: float = 0.9
    recover_iterations: int = 12
    # a detection that ends at valid_threshold / 2 or more, or fits the depth (FLIP_MIN_INLIERS), is
    # compared with its three half-turns about the object's box axes (a box upside down)
    try_flips: bool = True
    # a detection that scores as well turned AXIS_PROBE_DEG about a near-symmetry axis of the model
    # (a mug's body) does not start a track and is no valid estimate: the features that fix that
    # rotation are out of sight
    check_axis_ambiguity: bool = True
    # while LOST, when a re-detection finds nothing confirmed, the last accepted pose is refined as
    # a detection candidate of its own, for this many frames after it was accepted (0 turns this
    # off): an object comes back where it was last seen (the camera turning away and back) at the
    # image border, where the network puts no candidate on it (PoseTracker._resume)
    resume_frames: int = 30
    # a detection refused only as ambiguous about a near-symmetry axis (REASON_AMBIGUOUS_ROTATION:
    # a mug with handle and logo out of sight, right but for that turn) is followed from frame to
    # frame at a tenth of a detection's cost (a refinement and a sweep about the axis), for up to
    # this many frames before a detection runs again (0 turns this off): still reported as not
    # valid, and only a detection starts a track (PoseTracker._follow_ambiguous)
    follow_ambiguous_frames: int = 10
    num_threads: int = 0  # torch CPU threads (0 = leave torch's setting)
    refiner: dict = field(default_factory=dict)
    # keyword options of the coarse stage (CoarsePoseEstimator), e.g. {"locate_size": 320} for an
    # object that fills a few percent of the frame
    coarse: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "TrackerConfig":
        if not d:
            return cls()
        check_config_keys(cls, d, "tracker")
        cfg = cls(**d)
        if not (0.0 <= cfg.valid_threshold <= 1.0 and 0.0 <= cfg.accept_threshold <= 1.0):
            raise ConfigError("tracker thresholds must lie in [0, 1]")
        if cfg.lost_after < 1:
            raise ConfigError(f"tracker lost_after = {cfg.lost_after} must be >= 1")
        if cfg.resume_frames < 0:
            raise ConfigError(f"tracker resume_frames = {cfg.resume_frames} must be >= 0 (0: off)")
        if cfg.follow_ambiguous_frames < 0:
            raise ConfigError(f"tracker follow_ambiguous_frames = {cfg.follow_ambiguous_frames} must be >= 0 (0: off)")
        return cfg


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as given (checked)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device; use auto, cpu or cuda[:N]") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
    return dev


def load_object_model(model_path, device) -> tuple[GaussianModel, ObjectMetadata]:
    """Gaussian ply + its metadata JSON (``<model>.json``); metadata derived from the ply if absent."""
    from gs2pose_ros.gaussians import metadata_path, read_gaussian_ply, read_object_metadata

    path = Path(model_path)
    if not path.is_file():
        raise ModelFileError(f"{path}: Gaussian model file not found; build one with `gs2pose build-model`")
    model = read_gaussian_ply(path, device=device)
    mp = metadata_path(path)
    if mp.is_file():
        meta = read_object_metadata(mp)
    else:
        meta = ObjectMetadata.from_model(model, path.stem, source=str(path))
    if not meta.diameter > 0:
        meta.diameter = ObjectMetadata.from_model(model, meta.name).diameter
    return model, meta


def _load_coarse(posenet_path, model: GaussianModel, metadata: ObjectMetadata, device, options=None):
    """Pose-Net's coarse estimator for ``posenet_path`` (None -> no coarse stage); ``options``:
    keyword arguments of :class:`~gs2pose_ros.posenet.coarse.CoarsePoseEstimator`."""
    if posenet_path is None:
        return None
    path = Path(posenet_path)
    if not path.is_file():
        raise ModelFileError(f"{path}: Pose-Net weights not found; train them with gs2pose train-posenet")
    try:
        from gs2pose_ros.posenet.coarse import CoarsePoseEstimator
    except ImportError as exc:
        raise ModelFileError(f"{path}: the Pose-Net coarse stage is not available in this build ({exc})") from exc
    try:
        return CoarsePoseEstimator.from_file(path, model=model, device=device, **(options or {}))
    except TypeError as exc:
        raise ConfigError(f"tracker config 'coarse': {exc}; see CoarsePoseEstimator's arguments") from None


def in_view_confidence(r: RefineResult) -> float:
    """``r``'s confidence as if all of its silhouette were inside the image
    (``diagnostics["confidence_in_view"]``, :meth:`GSRefiner.refine`; the confidence itself
    without it): what poses of one object cut by the image border are compared by. The
    confidence scales down a pose with less than ``MIN_SEEN_FRACTION`` of it inside the image, so
    of two such poses it prefers the one that puts more of the object inside, right or not
    (printed_box re-entering, generated seed 7 frame 50: a pose 20 mm off, 19 % in the image,
    0.83, NCC 0.42; refined on, 5 mm off, 12 % in the image, 0.71 with depth inliers 0.75 -> 1.0,
    IoU 0.71 -> 0.97 and NCC 0.86, 0.99 in view; its half-turn, 13 % in the image, 0.93)."""
    return float(r.diagnostics.get("confidence_in_view", r.confidence))


def choose_half_turn(detection: RefineResult, turns: list) -> RefineResult:
    """The detection or one of its refined half-turns (:meth:`PoseTracker._best_flip`).

    A half-turn counts only with a textured render (``texture_weight`` >= 0.5) and an NCC of at
    least ``FLIP_MIN_NCC``: it is chosen for its texture (a garbage fit 2.4 m behind an out-of-view
    toy became a 0.69 "pose" as a half-turn with NCC 0.31). Among the candidates within
    ``FLIP_TIE`` of the best confidence the highest NCC wins, but a detection among them yields
    only to an NCC at least ``FLIP_NCC_MARGIN`` higher: on a near-symmetric view the NCC differs
    by noise (a mug with its handle behind a pole: the detection right at 0.99, NCC 0.36, its turn
    about the axis 0.91, NCC 0.44, 168 deg off), or to a turn better on both counts, by at least
    ``FLIP_DOMINANT_GAP`` in confidence and by any NCC. Confidences here are
    :func:`in_view_confidence`: the same as the confidence for an object inside the image.
    """
    def ncc(c):
        return c.diagnostics.get("ncc", 0.0)

    conf = in_view_confidence
    candidates = [detection] + [c for c in turns if ncc(c) >= FLIP_MIN_NCC and texture_weight(c.diagnostics) >= 0.5]
    top = max(conf(c) for c in candidates)
    tied = [c for c in candidates if conf(c) >= top - FLIP_TIE]
    if any(c is detection for c in tied):
        tied = [detection] + [c for c in tied if c is not detection and (
            ncc(c) >= ncc(detection) + FLIP_NCC_MARGIN
            or (conf(c) >= conf(detection) + FLIP_DOMINANT_GAP and ncc(c) > ncc(detection)))]
    return max(tied, key=lambda c: (ncc(c), conf(c)))


def fit_overrules_print(chosen: RefineResult, best_fit: RefineResult) -> bool:
    """Whether ``best_fit``, the best geometric fit among a detection and its half-turns, should
    stand over ``chosen`` (:func:`choose_half_turn`'s pick by the print) where the print cannot
    tell ``best_fit``'s rotation about a near-symmetry axis (:meth:`PoseTracker._best_flip`
    checks that): it fits better by at least ``FLIP_DOMINANT_GAP``, or the print won by less than
    ``FLIP_NCC_MARGIN`` (a tie). Mug seed 8 frame 1, handle and logo facing away: the detection
    28 deg off at 0.987 (depth inliers 0.95, NCC 0.32); its half-turn about the body's axis, 160
    deg off, showed the handle where the image had none: 0.908 (inliers 0.77), NCC 0.53, was
    picked, confirmed and tracked 140-178 deg off for 28 frames. A decisive print on a fit as
    good stands: seed 13 frame 58, right at 0.906 with NCC 0.81, its turn 175 deg off at 0.909,
    NCC 0.23."""
    ncc_win = chosen.diagnostics.get("ncc", 0.0) - best_fit.diagnostics.get("ncc", 0.0)
    return best_fit.confidence >= chosen.confidence + FLIP_DOMINANT_GAP or ncc_win < FLIP_NCC_MARGIN


def _view_lead(pose: dict, turned: dict) -> float:
    """How far the view prefers ``pose`` to ``turned`` (diagnostics of two poses), in units of
    what tells them apart (:func:`view_tells_turn`: 1 or more)."""
    lead = (pose.get("silhouette_iou", 0.0) - turned.get("silhouette_iou", 0.0)) / AXIS_IOU_MARGIN
    if texture_weight(pose) >= 0.5:
        lead += (pose.get("ncc", 0.0) - turned.get("ncc", 0.0)) / FLIP_NCC_MARGIN
    return lead


def _turn_preferred(turned: RefineResult, pose: RefineResult) -> bool:
    """Whether a pose ``turned`` about a near-symmetry axis is ahead of ``pose`` (both scored
    alike): it scores within ``AXIS_AMBIGUITY_TOL`` and the view tells it apart
    (:func:`view_tells_turn`), or it scores more than that above and the view does not prefer
    ``pose`` (mug seed 12 frame 0 detected 25 deg off toward the handle: 0.969, the truth 0.988
    with NCC and outline a little ahead; the refinement stays there)."""
    gap = turned.confidence - pose.confidence
    lead = _view_lead(turned.diagnostics, pose.diagnostics)
    return (gap >= -AXIS_AMBIGUITY_TOL and lead >= 1.0) or (gap > AXIS_AMBIGUITY_TOL and lead >= 0.0)


def _turn_preference(turned: RefineResult, pose: RefineResult) -> float:
    """How far ``turned`` is ahead of ``pose``: its view lead (:func:`_view_lead`) plus its
    score's lead in units of ``AXIS_AMBIGUITY_TOL``."""
    return _view_lead(turned.diagnostics, pose.diagnostics) + \
        (turned.confidence - pose.confidence) / AXIS_AMBIGUITY_TOL


def view_tells_turn(pose: dict, turned: dict) -> bool:
    """Whether what is in view pins a rotation that the confidence leaves free (``pose``,
    ``turned``: the diagnostics of a pose and of that pose turned about a near-symmetry axis): the
    pose's silhouette IoU lead over the turn, as a share of ``AXIS_IOU_MARGIN``, plus, for a
    textured render (``texture_weight`` >= 0.5), its NCC lead as a share of ``FLIP_NCC_MARGIN``,
    reaches 1. A lead that is negative counts against.

    Scores saturate near 0.99 for both when the handle is out of sight; the logo may still show:
    mug seed 7 frames 28 and 51, right poses, NCC 0.72 and 0.57 against 0.39 and 0.32 turned
    20 deg; with handle and logo facing away (seed 8 frames 0-20) the turns correlate as well or
    better (0.31-0.42 against 0.35-0.42) and outline the same. With the handle in view (seed 12)
    the score still saturates (0.988 against 0.979), but outline and print together tell."""
    return _view_lead(pose, turned) >= 1.0


def _turned_about_axis(T_cam_obj: np.ndarray, axis: tuple, deg: float) -> np.ndarray:
    """``T_cam_obj`` [4, 4] with the object turned ``deg`` about ``axis`` = (direction [3],
    point [3]), both in the object frame (a near-symmetry axis of ``mesh.near_symmetry_axes``)."""
    from gs2pose_ros.posenet.coarse import turned_about  # (as _load_coarse: optional)

    e, c = axis
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = turned_about(T_cam_obj[:3, :3], T_cam_obj[:3, 3],
                                       cv2.Rodrigues(np.asarray(e) * math.radians(deg))[0], c)
    return T


def _turned_apart(T_a: np.ndarray, T_b: np.ndarray, metadata: ObjectMetadata, deg: float) -> bool:
    """Whether two poses' rotations differ by more than ``deg`` up to the object's symmetries (a
    can turned about its axis is the same can)."""
    from gs2pose_ros.posenet.evaluate import symmetric_rotation_error_deg  # (as _load_coarse: optional)

    return symmetric_rotation_error_deg(T_a[:3, :3], T_b[:3, :3], metadata.symmetries_continuous,
                                        metadata.symmetries_discrete) > deg


def rival_ncc(chosen: RefineResult, candidates: list, metadata: ObjectMetadata) -> float:
    """The best NCC among ``candidates`` (refined poses) other than ``chosen`` that are another
    pose: more than 15 deg from it up to the object's symmetries (:func:`_turned_apart`). 0 when
    there is none. The sliver rule of :meth:`PoseTracker._detect` reads it."""
    return max((c.diagnostics.get("ncc", 0.0) for c in candidates
                if c is not chosen and _turned_apart(c.T_cam_obj, chosen.T_cam_obj, metadata, 15.0)), default=0.0)


class PoseTracker:
    """Estimates and tracks one object's ``T_cam_obj`` (see the module docstring).

    The API the ROS node uses: :meth:`from_files`, :meth:`track`, :meth:`estimate`, :meth:`reset`,
    :meth:`render_overlay`, and the attributes ``object_name``, ``diameter``, ``bbox_min``,
    ``bbox_max``, ``device``.
    """

    def __init__(self, model: GaussianModel, metadata: ObjectMetadata, coarse: Any = None,
                 config: Optional[TrackerConfig] = None, device="auto"):
        self.config = config if isinstance(config, TrackerConfig) else TrackerConfig.from_dict(config)
        if self.config.num_threads > 0:
            torch.set_num_threads(int(self.config.num_threads))
        self.device = resolve_device(device) if not isinstance(device, torch.device) else device
        self.model = model.detach().to(device=self.device)
        self.metadata = metadata
        self.refiner = GSRefiner(self.model, metadata, RefinerConfig.from_dict(self.config.refiner))
        self.coarse = coarse
        self.object_name = metadata.name
        self.diameter = float(self.refiner.diameter)
        self.bbox_min = np.asarray(self.refiner.bbox_min, dtype=np.float64)
        self.bbox_max = np.asarray(self.refiner.bbox_max, dtype=np.float64)
        self.appearance = AppearanceState(self.model)
        self._hull_points: Optional[np.ndarray] = None
        # mesh.near_symmetry_axes: stored in the metadata by build-model, else computed on first use
        self._near_axes: Optional[list] = metadata.near_axes
        self.reset()

    @classmethod
    def from_files(cls, model_path, posenet_path, config=None, device="auto") -> "PoseTracker":
        """Loads the Gaussian model (+ metadata JSON) and Pose-Net weights.

        config: None, a :class:`TrackerConfig`, a dict, or a path to a JSON/YAML file with the
        tracker settings (``refiner:`` nested).
        """
        dev = resolve_device(device)
        if isinstance(config, (str, Path)):
            config = _read_config_file(Path(config))
        if not isinstance(config, TrackerConfig):
            config = TrackerConfig.from_dict(config)
        model, meta = load_object_model(model_path, dev)
        coarse = _load_coarse(posenet_path, model, meta, dev, config.coarse)
        return cls(model, meta, coarse=coarse, config=config, device=dev)

    # -- state -------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the track: back to INITIALIZING, appearance copy and exposure restored."""
        self.state = TrackingState.INITIALIZING
        self._T_prev: Optional[np.ndarray] = None
        self._T_prev2: Optional[np.ndarray] = None
        self._stamp_prev = self._stamp_prev2 = 0.0  # Frame.stamp of _T_prev and _T_prev2
        self._frame_prev = 0  # frames_seen when _T_prev was accepted
        self._velocity_waits = False  # True from a resumed pose to the first tracking step after it
        self._ncc_prev: Optional[float] = None  # the NCC of _T_prev's render (None: no track)
        self._low = 0
        self._seeded = False
        # (pose [4, 4], appearance, frames followed) of a detection refused only as ambiguous about
        # a near-symmetry axis, followed by _follow_ambiguous; None when there is none
        self._ambiguous: Optional[tuple] = None
        self.appearance.reset()
        self.last_result: Optional[RefineResult] = None
        self.frames_seen = 0

    # -- stages ------------------------------------------------------------------------------------

    @property
    def _worth_a_second_look(self) -> float:
        """Half ``valid_threshold``: a detection scoring this much is worth more work (refined on,
        its half-turns checked), and the confidence an unconfirmed sliver is held at."""
        return 0.5 * self.config.valid_threshold

    def _detect(self, frame: Frame, stages: dict) -> tuple[Optional[RefineResult], int]:
        """Coarse pose + full refinement on a fresh appearance copy; (result, iterations)."""
        if self.coarse is None:
            raise ConfigError("PoseTracker: no coarse estimator (Pose-Net weights) was given, so the "
                              "object cannot be detected; pass posenet_path or seed() a pose")
        t0 = time.perf_counter()
        c = self.coarse.estimate(frame)
        stages["posenet"] = stages.get("posenet", 0.0) + time.perf_counter() - t0
        if c is None:
            return None, 0
        # the coarse stage's best candidate, then its next one with a pose (another component of
        # the full-frame pass, an object-sized surface) while none is confident: the coarse
        # confidence of a right pose of an object cut by the image border can be ~0 (toy
        # re-entering: 0.004 at 2 deg / 1 mm), and the first two may have no pose at all (the
        # toy re-entering by a pole, generated seed 11 frame 50: the surface's pose 69 deg off at
        # 0.02 came third), so the refined confidence decides
        candidates = [cand for cand in [c] + list(getattr(c, "alternatives", None) or [])
                      if getattr(cand, "T_cam_obj", None) is not None and np.all(np.isfinite(cand.T_cam_obj))]
        r, source, refined, iterations = self._refine_until_accepted(frame, candidates, c, None, None, stages)
        fairly_sure = sorted((cand for cand in candidates[refined:]
                              if getattr(cand, "confidence", 0.0) >= DETECT_LATER_MIN_CONFIDENCE),
                             key=lambda cand: -cand.confidence)
        # then the candidates behind those that the coarse stage is fairly sure of, the surest first
        r, source, _, more_iterations = self._refine_until_accepted(frame, fairly_sure, c, r, source, stages)
        iterations += more_iterations
        if (r is None or r.confidence < self.config.accept_threshold) and frame.depth is not None \
                and hasattr(self.coarse, "surface_estimates") and "surfaces" not in (getattr(c, "stages", None) or {}):
            # the coarse stage stopped at a confident candidate that the refinement refuted (the toy
            # beside a distractor the network put first at 0.595: generated seed 11, frame 6): the
            # object-sized surfaces it did not try
            t0 = time.perf_counter()
            more = [s for s in self.coarse.surface_estimates(frame) if s.T_cam_obj is not None]
            stages["posenet"] = stages.get("posenet", 0.0) + time.perf_counter() - t0
            r, source, _, more_iterations = self._refine_until_accepted(frame, more, c, r, source, stages)
            iterations += more_iterations
        if r is None:
            return None, 0
        rival = self._rival_on_the_same_object(source, candidates, refined) \
            if r.confidence >= self.config.accept_threshold else None
        if rival is not None:
            r2 = self._refine_detection(frame, rival, False, stages)
            iterations += r2.iterations
            r = choose_half_turn(r, [r2])
            r.diagnostics["second_opinion"] = 1.0
        r, slide_iterations = self._slid_along_print(frame, r, getattr(r, "_appearance", None), stages)
        iterations += slide_iterations
        r, turn_iterations = self._turned_along_print(frame, r, stages)
        iterations += turn_iterations
        self._hold_sliver(frame, r)
        return r, iterations

    def _appearance_of(self, r: RefineResult) -> AppearanceState:
        """The appearance copy ``r`` was refined with (a detection's own), else the track's."""
        return getattr(r, "_appearance", None) or self.appearance

    def _hold_sliver(self, frame: Frame, r: RefineResult) -> None:
        """A detection ``r`` seen under ``DETECT_MIN_SEEN`` is held at ``_worth_a_second_look``
        (not confirmed) unless its print tells it from its half-turns
        (:meth:`_texture_tells_half_turns`); one seen under ``DETECT_PARTIAL_SEEN`` with a clearly
        textured render, when its NCC does not lead its half-turns' by ``SLIVER_NCC_MARGIN``."""
        d = r.diagnostics
        seen = _seen(d)
        if r.confidence <= self._worth_a_second_look or seen >= DETECT_PARTIAL_SEEN:
            return
        if seen < DETECT_MIN_SEEN:
            if self._texture_tells_half_turns(frame, d):
                d["sliver_told_by_texture"] = float(d["ncc"])
                return
        elif not (self._clearly_textured(frame, d) and "half_turn_ncc" in d) or _print_leads_half_turns(d):
            return
        d["confidence_before_sliver_rule"] = float(r.confidence)
        r.confidence = self._worth_a_second_look

    def _resume(self, frame: Frame, stages: dict) -> Optional[RefineResult]:
        """While LOST, within ``resume_frames`` frames of the last accepted pose: that pose refined
        as a detection candidate (:meth:`_refine_candidate`; no motion prediction: the gap is
        long) and, when it reaches ``accept_threshold``, weighed against its half-turns
        (:meth:`_best_flip`); held unconfirmed when a clearly textured render correlates under
        ``RESUME_MIN_NCC``; the sliver rule applied (:meth:`_hold_sliver`). None when there is
        nothing to resume or a half-turn of it correlates better: the object turned while out of
        sight, which the last pose says nothing about (a printed_box back as a 12 % sliver whose
        half-turn correlated at 0.64 against 0.42, generated seed 7 frame 50).

        The network finds nothing on an object re-entering the view as a 12-30 % sliver at the
        border (generated seeds 7-13), where the last pose, 9-21 deg and 13-120 mm from the
        re-entry pose, refines to within 5 deg / 5 mm (docs/tracking.md, session 11)."""
        if self.state != TrackingState.LOST or self._T_prev is None \
                or self.frames_seen - self._frame_prev > self.config.resume_frames:
            return None
        # (its time counts in the "refine" and "flips" stages, as a detection candidate's)
        r = self._refine_candidate(frame, self._T_prev.copy(), None, stages)
        # the half-turns only for a pose that could be confirmed (a turned one is dropped anyway):
        # most lost frames are out of view, where this saves ~0.9 s of four refinements
        if r.confidence >= self.config.accept_threshold and self.config.try_flips \
                and not self._half_turns_cannot_win(r):
            r = self._best_flip(frame, r, stages)
            if "flipped_about" in r.diagnostics:
                return None
        d = r.diagnostics
        d["resumed_after_frames"] = float(self.frames_seen - self._frame_prev)
        if r.confidence > self._worth_a_second_look and self._clearly_textured(frame, d) \
                and d.get("ncc", 0.0) < RESUME_MIN_NCC:
            d["texture_not_seen"] = float(d.get("ncc", 0.0))
            r.confidence = min(r.confidence, self._worth_a_second_look)
        self._hold_sliver(frame, r)
        return r

    def _refine_until_accepted(self, frame: Frame, candidates: list, best, r: Optional[RefineResult], source,
                               stages: dict) -> tuple:
        """The first ``DETECT_CANDIDATES`` of ``candidates`` refined (:meth:`_refine_detection`;
        ``best``: the coarse stage's best) while the most confident result so far, ``r`` (from
        candidate ``source``), is under ``accept_threshold``. Returns ``(r, source, candidates
        refined, iterations)``."""
        refined = iterations = 0
        for cand in candidates[:DETECT_CANDIDATES]:
            if r is not None and r.confidence >= self.config.accept_threshold:
                break
            r2 = self._refine_detection(frame, cand, cand is best, stages)
            iterations += r2.iterations
            refined += 1
            if r is None or r2.confidence > r.confidence:
                r, source = r2, cand
        return r, source, refined, iterations

    def _refine_detection(self, frame: Frame, cand, best: bool, stages: dict) -> RefineResult:
        """One coarse candidate refined (:meth:`_refine_candidate`) and weighed against its
        half-turns (:meth:`_best_flip`) when it is plausible; ``best``: the coarse stage's best."""
        r = self._refine_candidate(frame, np.asarray(cand.T_cam_obj, dtype=np.float64),
                                   getattr(cand, "mask", None), stages)
        r.diagnostics["coarse_confidence"] = float(getattr(cand, "confidence", float("nan")))
        # each candidate's half-turns (printed_box seed 9 re-entering: the best candidate a
        # distractor, the alternative 179 deg turned at 0.47, its right half-turn 0.99); an
        # alternative's only when it scores by itself, not on its depth fit alone: one fitted
        # to a wall 2.5 m behind an out-of-view mug (0.004, depth inliers 0.67) had a
        # half-turn at 0.77
        if self._plausible(r, depth_fit=best) and self.config.try_flips and not self._half_turns_cannot_win(r):
            r = self._best_flip(frame, r, stages)
        return r

    def _rival_on_the_same_object(self, source, candidates: list, refined: int):
        """A coarse candidate not refined yet (after the first ``refined`` of ``candidates``) that
        puts the object where the unsure (coarse confidence under the coarse stage's
        ``candidate_confidence``) candidate ``source`` of an accepted detection does, within
        ``RIVAL_MAX_DIST`` diameters, turned by more than ``RIVAL_MIN_DEG``: a second opinion on the
        rotation (None if there is none)."""
        if getattr(source, "confidence", 1.0) >= getattr(self.coarse, "candidate_confidence", 0.5):
            return None
        T = source.T_cam_obj
        return next((cand for cand in candidates[refined:]
                     if np.linalg.norm(cand.T_cam_obj[:3, 3] - T[:3, 3]) < RIVAL_MAX_DIST * self.diameter
                     and _turned_apart(cand.T_cam_obj, T, self.metadata, RIVAL_MIN_DEG)), None)

    def _slid_along_print(self, frame: Frame, r: RefineResult, appearance: Optional[AppearanceState],
                          stages: dict) -> tuple[RefineResult, int]:
        """A valid, clearly textured pose ``r`` with depth, seen under ``SLIDE_MAX_SEEN``, moved
        along an axis the geometry leaves free to where the print correlates clearly better
        (:meth:`GSRefiner.slide_along_print`) and refined there (``recover_iterations`` steps at
        the tracking rates), when :func:`choose_half_turn` prefers it to ``r``.
        Returns ``(pose, refinement steps spent)``: ``(r, 0)`` when nothing was tried."""
        d = r.diagnostics
        if r.confidence < self.config.valid_threshold or _seen(d) >= SLIDE_MAX_SEEN \
                or not self._clearly_textured(frame, d):
            return r, 0
        t0 = time.perf_counter()
        spent = 0
        found = self.refiner.slide_along_print(frame, r.T_cam_obj, appearance)
        if found is not None:
            T_moved, info = found
            r2 = self.refiner.refine(frame, T_moved, iterations=self.config.recover_iterations,
                                     appearance=appearance, adapt=False,
                                     schedule=self.refiner.config.track_schedule)
            r2.diagnostics["slid_diameters"] = float(info["offset_diameters"])
            spent = r2.iterations
            if appearance is not None:
                r2._appearance = appearance  # type: ignore[attr-defined]
            if choose_half_turn(r, [r2]) is r2:
                r2.iterations += r.iterations
                r = r2
        stages["slide"] = stages.get("slide", 0.0) + time.perf_counter() - t0
        return r, spent

    def _ncc_collapsed(self, frame: Frame, r: RefineResult) -> bool:
        """Whether the tracking step ``r``, valid by its confidence, has a clearly textured render
        whose NCC fell by ``TRACK_NCC_COLLAPSE`` from the last accepted pose's (then marked
        ``ncc_fell_from``). A step below ``valid_threshold`` is not valid anyway (the object
        leaving the view), and its reason stays a low confidence."""
        d = r.diagnostics
        if self._ncc_prev is None or r.confidence < self.config.valid_threshold \
                or not self._clearly_textured(frame, d) \
                or d.get("ncc", 1.0) > self._ncc_prev - TRACK_NCC_COLLAPSE:
            return False
        d["ncc_fell_from"] = float(self._ncc_prev)
        return True

    def _plausible(self, r: RefineResult, depth_fit: bool = True) -> bool:
        """Whether a refined detection is worth its half-turn check (:meth:`_best_flip`): it scores
        half the valid threshold, or (``depth_fit``) it fits the depth (a half-turn's confidence
        may be gated down by its texture alone: printed_box frame 7, 169 deg, 0.03, inliers 0.81)."""
        return r.confidence >= self._worth_a_second_look or \
            (depth_fit and r.diagnostics.get("depth_inlier_ratio", 0.0) >= FLIP_MIN_INLIERS)

    @staticmethod
    def _half_turns_cannot_win(r: RefineResult) -> bool:
        """Whether :func:`choose_half_turn` keeps the detection ``r`` whatever its half-turns
        score, so :meth:`_best_flip` need not refine them (~0.9 s on two CPU cores): ``r`` is within
        ``FLIP_DOMINANT_GAP`` (< ``FLIP_TIE``) of the highest confidence there is (1) and a
        half-turn would need an NCC above 1 to beat its own by ``FLIP_NCC_MARGIN``. Not for a
        partial view (under ``DETECT_PARTIAL_SEEN`` seen), whose rule (:meth:`_hold_sliver`) reads
        the half-turns' NCC. (The best-fit check of :meth:`_best_flip` is skipped with them.)"""
        d = r.diagnostics
        return r.confidence > 1.0 - FLIP_DOMINANT_GAP and d.get("ncc", 0.0) > 1.0 - FLIP_NCC_MARGIN \
            and _seen(d) >= DETECT_PARTIAL_SEEN

    @staticmethod
    def _clearly_textured(frame: Frame, d: dict) -> bool:
        """Whether a detection's diagnostics ``d`` show a clearly textured render
        (``DETECT_TEXTURED_STD``) on a frame with depth: the texture rules' precondition."""
        return frame.depth is not None and d.get("render_std", 0.0) >= DETECT_TEXTURED_STD

    @classmethod
    def _texture_tells_half_turns(cls, frame: Frame, d: dict) -> bool:
        """Whether a detection's diagnostics ``d`` show a clearly textured render that correlates
        with the image (``SLIVER_MIN_NCC``) clearly better than its refined half-turns did
        (``half_turn_ncc``, from :meth:`_best_flip`)."""
        return cls._clearly_textured(frame, d) and d.get("ncc", 0.0) >= SLIVER_MIN_NCC and _print_leads_half_turns(d)

    def _refine_candidate(self, frame: Frame, T_c: np.ndarray, mask: Optional[np.ndarray],
                          stages: dict) -> RefineResult:
        """Full refinement of a candidate pose (Pose-Net's coarse pose or one of its alternatives)
        on a fresh appearance copy, continued when it stopped half-way; ``mask``: Pose-Net's."""
        app = AppearanceState(self.model)
        t0 = time.perf_counter()
        r = self.refiner.refine(frame, T_c, appearance=app, mask=mask, adapt=False)
        if self._worth_a_second_look <= r.confidence < self.config.recover_below \
                and self.config.recover_iterations > 0:
            # not converged yet (e.g. the 40 steps ran out half-way from a poor coarse pose): go on
            # from where it stopped, with a fresh ICP and crop around the refined pose
            r2 = self.refiner.refine(frame, r.T_cam_obj, iterations=self.config.recover_iterations,
                                     appearance=app, mask=mask, adapt=False)
            if r2.confidence > r.confidence or in_view_confidence(r2) > in_view_confidence(r):
                r2.iterations += r.iterations
                r = r2
        if mask is not None and frame.depth is not None and r.confidence < self.config.recover_below \
                and self._mask_on_pose(mask, r.T_cam_obj, frame.K) >= MIN_MASK_ON_POSE:
            # Pose-Net's mask can be far smaller than the object (an under-trained network): the
            # silhouette agreement then vetoes a right pose (printed_box: 0.19 with the mask, 0.99
            # without). With depth, score the refined pose as a tracking step is scored, without it,
            # but only where the mask lies on the pose: a mask on a wall, with the refinement's
            # pose fitted to that wall 2.4 m behind the mug, scored 0.9 without it (mug frame 29)
            s = self.refiner.score(frame, r.T_cam_obj, appearance=app)
            if s.confidence > r.confidence:
                r.diagnostics["confidence_with_posenet_mask"] = float(r.confidence)
                r.confidence = s.confidence
                r.diagnostics["confidence_in_view"] = s.diagnostics["confidence_in_view"]
        stages["refine"] = stages.get("refine", 0.0) + time.perf_counter() - t0
        r._appearance = app  # type: ignore[attr-defined]
        return r

    def _best_flip(self, frame: Frame, r: RefineResult, stages: dict) -> RefineResult:
        """A detection against its three half-turns about the object's box axes (through the box
        centre), each refined ``recover_iterations`` steps at the tracking rates.

        The choice (:func:`choose_half_turn`) weighs the colour correlation (NCC): on a box-like
        shape the half-turns fit the depth and silhouette equally well, so geometry saturates the
        confidence (a printed_box detection turned 180 deg scored 0.93-0.99, NCC 0.15-0.26, the
        true pose 0.99, NCC 0.60) and only the texture tells them apart. The coarse stage's own
        flip check scores depth and NOCS only."""
        from gs2pose_ros.posenet.coarse import HALF_TURNS, turned_about  # (as _load_coarse: optional)

        centre = self.refiner.box_centre
        turns = []
        for axis, F in zip(np.eye(3), HALF_TURNS):
            T_f = np.eye(4)
            T_f[:3, :3], T_f[:3, 3] = turned_about(r.T_cam_obj[:3, :3], r.T_cam_obj[:3, 3], F, centre)
            app = AppearanceState(self.model)
            t0 = time.perf_counter()
            rf = self.refiner.refine(frame, T_f, iterations=self.config.recover_iterations,
                                     appearance=app, adapt=False, schedule=self.refiner.config.track_schedule)
            stages["flips"] = stages.get("flips", 0.0) + time.perf_counter() - t0
            rf.iterations += r.iterations
            rf._appearance = app  # type: ignore[attr-defined]
            rf.diagnostics["flipped_about"] = axis.tolist()
            turns.append(rf)
        chosen = choose_half_turn(r, turns)
        best_fit = max([r] + turns, key=lambda c: c.confidence)
        if best_fit is not chosen and best_fit.confidence >= self.config.accept_threshold \
                and fit_overrules_print(chosen, best_fit) and self._ambiguous_about_axis(frame, best_fit, stages):
            # the print cannot even tell the better fit's rotation about a near-symmetry axis: the
            # turns' NCC then depends on that unseen rotation too, and the better fit stays,
            # marked ambiguous, so it is not confirmed
            best_fit.diagnostics["half_turn_not_told"] = float(chosen.diagnostics.get("ncc", 0.0))
            chosen = best_fit
        chosen.diagnostics["half_turn_ncc"] = rival_ncc(chosen, [r] + turns, self.metadata)
        return chosen

    def _confirmed(self, frame: Frame, r: RefineResult, stages: dict) -> bool:
        """Whether a detection may start a track (or be a valid single-frame estimate): it reaches
        ``accept_threshold``, a clearly textured render correlates with the image
        (``DETECT_MIN_NCC``), the depth of an object mostly out of the image agrees
        (``PARTIAL_MIN_INLIERS``) and it is not ambiguous about a near-symmetry axis. Only detections are
        checked: a track carries the rotation it started with (checking every tracking step
        cost the mug 65 ms per frame and flagged right poses leaving the view)."""
        if r.confidence < self.config.accept_threshold:
            return False
        d = r.diagnostics
        if self._clearly_textured(frame, d) and d.get("ncc", 1.0) < DETECT_MIN_NCC:
            d["texture_not_seen"] = float(d["ncc"])
            return False
        if frame.depth is not None and d.get("in_image_fraction", 1.0) < PARTIAL_IN_IMAGE \
                and d.get("depth_inlier_ratio", 1.0) < PARTIAL_MIN_INLIERS:
            d["partial_depth_not_fit"] = float(d["depth_inlier_ratio"])
            return False
        return not self._ambiguous_about_axis(frame, r, stages)

    def _axis_rules_apply(self) -> bool:
        """Whether the near-symmetry-axis rules run: configured on, and the object is not
        symmetric (scored with ADD-S, its turns are the same pose)."""
        return self.config.check_axis_ambiguity and not self.metadata.symmetric

    def _axes(self) -> list:
        """The model's near-symmetry axes ``[(direction [3], point [3])]`` (object frame): the
        metadata's, or searched once (``mesh.near_symmetry_axes``, 1-2 s) for a model without them."""
        if self._near_axes is None:
            means = self.model.means.detach().cpu().numpy().astype(np.float64)
            self._near_axes = near_symmetry_axes(means, self.diameter)
        return self._near_axes

    def _turned_along_print(self, frame: Frame, r: RefineResult, stages: dict) -> tuple[RefineResult, int]:
        """A detection ``r`` reaching ``accept_threshold``, turned about each near-symmetry axis of
        the model to where the view clearly prefers it: every ``AXIS_SWEEP_STEP_DEG`` up to
        ``AXIS_SWEEP_MAX_DEG`` either way, the turns are scored (:meth:`GSRefiner.score`, as the
        pose); the one furthest ahead (:func:`_turn_preferred`) is refined (``recover_iterations``
        at the tracking rates) and replaces ``r`` when it is still ahead of ``r``'s own score. The
        refinement's gradient does not turn a pose about such an axis where the score saturates;
        the print and the outline tell the turns apart. Returns ``(pose, refinement steps spent)``."""
        if r.confidence < self.config.accept_threshold or not self._axis_rules_apply() or not self._axes():
            return r, 0
        t0 = time.perf_counter()
        app = self._appearance_of(r)
        ref, best_T = self._preferred_turn(frame, r.T_cam_obj, app)
        spent = 0
        if best_T is not None:
            r2 = self.refiner.refine(frame, best_T, iterations=self.config.recover_iterations, appearance=app,
                                     adapt=False, schedule=self.refiner.config.track_schedule)
            spent = r2.iterations
            s2 = self.refiner.score(frame, r2.T_cam_obj, appearance=app)
            if _turn_preferred(s2, ref):
                r2.iterations += r.iterations
                r2._appearance = app  # type: ignore[attr-defined]
                r2.diagnostics["turned_along_print_from_ncc"] = float(ref.diagnostics.get("ncc", 0.0))
                for key in ("half_turn_ncc", "second_opinion"):
                    if key in r.diagnostics:
                        r2.diagnostics[key] = r.diagnostics[key]
                r = r2
        stages["axis_turn"] = stages.get("axis_turn", 0.0) + time.perf_counter() - t0
        return r, spent

    def _preferred_turn(self, frame: Frame, T_cam_obj: np.ndarray, app: AppearanceState) -> tuple:
        """The pose scored (:meth:`GSRefiner.score`) and turned about each near-symmetry axis every
        ``AXIS_SWEEP_STEP_DEG`` up to ``AXIS_SWEEP_MAX_DEG`` either way -> ``(the pose's score,
        the turned pose [4, 4] furthest ahead of it by _turn_preference among those it prefers
        (_turn_preferred), or None)``."""
        ref = self.refiner.score(frame, T_cam_obj, appearance=app)
        n = int(round(AXIS_SWEEP_MAX_DEG / AXIS_SWEEP_STEP_DEG))
        best, best_T = None, None
        for axis in self._axes():
            for k in range(1, n + 1):
                for sign in (-1.0, 1.0):
                    T_turn = _turned_about_axis(T_cam_obj, axis, sign * k * AXIS_SWEEP_STEP_DEG)
                    s = self.refiner.score(frame, T_turn, appearance=app)
                    if _turn_preferred(s, ref) and \
                            (best is None or _turn_preference(s, ref) > _turn_preference(best, ref)):
                        best, best_T = s, T_turn
        return ref, best_T

    def _ambiguous_about_axis(self, frame: Frame, result: RefineResult, stages: dict,
                              ref: Optional[RefineResult] = None) -> bool:
        """Whether ``result``'s pose scores as well turned ``AXIS_PROBE_DEG`` either way about a
        near-symmetry axis of the model and the view does not tell the turn apart
        (:func:`view_tells_turn`); then ``diagnostics["ambiguous_about_axis"]`` holds that
        score. ``ref``: the pose's score with its appearance when the caller has it (it is not
        scored again). Symmetric objects (scored with ADD-S) and models without such an axis:
        False."""
        if not self._axis_rules_apply():
            return False
        t0 = time.perf_counter()
        try:
            if not self._axes():
                return False
            app = self._appearance_of(result)
            # the pose and its turns scored alike (score: no Pose-Net mask, no refinement), not
            # against the detection's own confidence
            if ref is None:
                ref = self.refiner.score(frame, result.T_cam_obj, appearance=app)
            for axis in self._axes():
                for sign in (-1.0, 1.0):
                    s = self.refiner.score(frame, _turned_about_axis(result.T_cam_obj, axis, sign * AXIS_PROBE_DEG),
                                           appearance=app)
                    if s.confidence >= ref.confidence - AXIS_AMBIGUITY_TOL and \
                            not view_tells_turn(ref.diagnostics, s.diagnostics):
                        result.diagnostics["ambiguous_about_axis"] = float(s.confidence)
                        return True
            return False
        finally:
            stages["axis_check"] = stages.get("axis_check", 0.0) + time.perf_counter() - t0

    def _follow_ambiguous(self, frame: Frame, stages: dict) -> Optional[RefineResult]:
        """The pose of the last frame's detection, refused only as ambiguous about a near-symmetry
        axis, refined from where it was (``track_iterations`` at the tracking rates on its own
        appearance, no adaptation) and checked about the axis again: returned while it still
        reaches ``accept_threshold`` and is still ambiguous with no turn the view prefers, for up
        to ``follow_ambiguous_frames`` frames (then, or else, None: a detection runs this frame).
        A turn about the axis that the view prefers (:meth:`_preferred_turn`: a pose 40-60 deg
        off with the handle coming into view scores as well turned 20 deg, but not as well as
        turned toward the handle) ends it too. Never confirmed here: the detection that follows
        starts the track. A mug with handle and logo out of sight cost a
        detection per frame (1.3-1.6 s on two CPU cores, generated seed 8) for a pose right but for
        the turn about its axis (docs/tracking.md, session 14)."""
        held, self._ambiguous = self._ambiguous, None
        if held is None or held[2] >= self.config.follow_ambiguous_frames:
            return None
        T, app, followed = held
        t0 = time.perf_counter()
        r = self.refiner.refine(frame, T, tracking=True, appearance=app, adapt=False)
        stages["follow"] = time.perf_counter() - t0
        if r.confidence < self.config.accept_threshold:
            return None
        r._appearance = app  # type: ignore[attr-defined]
        t0 = time.perf_counter()
        ref, turn = self._preferred_turn(frame, r.T_cam_obj, app)
        stages["axis_turn"] = time.perf_counter() - t0
        if turn is not None or not self._ambiguous_about_axis(frame, r, stages, ref=ref):
            return None
        r.diagnostics["followed_ambiguous_frames"] = float(followed + 1)
        self._ambiguous = (r.T_cam_obj.copy(), app, followed + 1)
        return r

    def _detect_or_resume(self, frame: Frame, stages: dict) -> tuple[Optional[RefineResult], int]:
        """While INITIALIZING or LOST: a detection, confirmed or not, then (within
        ``resume_frames``) the last pose resumed when the detection is not confirmed; the better
        of the two is the result, a confirmed one starts a track. A result left ambiguous about a
        near-symmetry axis is kept for :meth:`_follow_ambiguous`. -> ``(result or None, iterations)``."""
        result, iters = None, 0
        if self.coarse is not None:
            result, iters = self._detect(frame, stages)
        if result is not None and self._confirmed(frame, result, stages):
            self._accept(result, new_track=True, stamp=frame.stamp)
        else:
            resumed = self._resume(frame, stages)
            if resumed is not None:
                iters += resumed.iterations
                if self._confirmed(frame, resumed, stages):
                    result = resumed
                    self._accept(resumed, new_track=True, stamp=frame.stamp, resumed=True)
                elif result is None or resumed.confidence > result.confidence:
                    result = resumed
        if self.state != TrackingState.TRACKING and result is not None \
                and "ambiguous_about_axis" in result.diagnostics and self.config.follow_ambiguous_frames > 0:
            self._ambiguous = (result.T_cam_obj.copy(), self._appearance_of(result), 0)
        return result, iters

    def _mask_on_pose(self, mask: np.ndarray, T_cam_obj: np.ndarray, K: np.ndarray) -> float:
        """Share of the ``[H, W]`` bool ``mask`` inside the convex hull of the model's projected
        Gaussian centres at ``T_cam_obj`` (0 when nothing projects in front of the camera)."""
        n_mask = int(np.count_nonzero(mask))
        if n_mask == 0:
            return 0.0
        if self._hull_points is None:
            pts = self.model.means.detach().cpu().numpy().astype(np.float64)
            if len(pts) > 2000:
                pts = pts[np.random.default_rng(0).choice(len(pts), 2000, replace=False)]
            self._hull_points = pts
        X = self._hull_points @ T_cam_obj[:3, :3].T + T_cam_obj[:3, 3]
        X = X[X[:, 2] > 1e-3]
        if len(X) < 3:
            return 0.0
        uv = project(X, K).numpy()
        H, W = mask.shape
        uv = np.clip(uv, -4 * max(H, W), 5 * max(H, W)).astype(np.float32)  # keeps cv2 in int range
        hull = cv2.convexHull(uv).round().astype(np.int32)
        footprint = np.zeros((H, W), np.uint8)
        cv2.fillConvexPoly(footprint, hull, 1)
        return float(np.count_nonzero(mask & footprint.astype(bool))) / n_mask

    def _recover(self, frame: Frame, result: RefineResult, stages: dict) -> RefineResult:
        """A tracking step that did not converge, refined again from its own result: the full
        ICP (15 steps of up to 1 cm / 3 deg) on the larger crop, then ``recover_iterations``
        render-and-compare steps at the small tracking rates (the coarse schedule's large steps let
        the pose wander about a symmetry axis: a mug with its handle out of view turned 22 deg).
        A fraction of a re-detection's cost, and it keeps the warm start."""
        t0 = time.perf_counter()
        r = self.refiner.refine(frame, result.T_cam_obj, iterations=self.config.recover_iterations,
                                appearance=self.appearance, adapt=False,
                                schedule=self.refiner.config.track_schedule)
        stages["recover"] = stages.get("recover", 0.0) + time.perf_counter() - t0
        r.diagnostics["recovered_from"] = float(result.confidence)
        return r

    def _predict(self, stamp: float) -> np.ndarray:
        """Constant-velocity prediction of the pose at ``stamp`` from the last two accepted poses.

        The motion between them is scaled by the ratio of the time gaps, so frames dropped by a
        busy caller (the node processes only the latest frame) do not distort the prediction.
        Stamps that do not increase fall back to one frame of motion per processed frame.
        """
        T1 = self._T_prev
        if self._T_prev2 is None or self.config.velocity_damping <= 0:
            return T1.copy()
        T2 = self._T_prev2
        ratio = 1.0
        gap_prev, gap_now = self._stamp_prev - self._stamp_prev2, stamp - self._stamp_prev
        if gap_prev > 0 and gap_now > 0:
            ratio = min(gap_now / gap_prev, MAX_PREDICTION_RATIO)
        # motion in the "centred" parametrisation: R <- dR R, t <- t + dt
        dR = T1[:3, :3] @ T2[:3, :3].T
        dt = T1[:3, 3] - T2[:3, 3]
        k = self.config.velocity_damping * ratio
        w = cv2.Rodrigues(dR)[0][:, 0] * k
        T = np.eye(4)
        T[:3, :3] = cv2.Rodrigues(w)[0] @ T1[:3, :3]
        T[:3, 3] = T1[:3, 3] + k * dt
        return T

    def _accept(self, r: RefineResult, new_track: bool, stamp: float, resumed: bool = False) -> None:
        """``r`` becomes the last accepted pose (``new_track``: a detection, or ``resumed`` from the
        last pose, starting a track with ``r``'s appearance copy)."""
        if new_track:
            app = getattr(r, "_appearance", None)
            if app is not None:
                self.appearance = app
            self._T_prev2 = None
            # the motion from a resumed pose to the first step measures the correction of that
            # pose (refined on a sliver) more than the object's motion: the constant-velocity
            # prediction then waits for two tracking steps (mug seed 13 frames 51-59: extrapolating
            # a 7-deg correction drifted the track to 23 deg about the body axis; with the wait
            # 0.2-0.7 deg from frame 54 on)
            self._velocity_waits = resumed
        elif self._velocity_waits:
            self._T_prev2 = None
            self._velocity_waits = False
        else:
            self._T_prev2, self._stamp_prev2 = self._T_prev, self._stamp_prev
        self._T_prev, self._stamp_prev = r.T_cam_obj.copy(), float(stamp)
        self._frame_prev = self.frames_seen
        self._ncc_prev = r.diagnostics.get("ncc")
        self._low = 0
        self.state = TrackingState.TRACKING

    def _low_frame(self, seeded: bool) -> None:
        """A tracking frame without an acceptable pose: the last accepted pose stays the warm
        start; ``lost_after`` such frames in a row -> LOST (a failed seed -> INITIALIZING)."""
        self._low += 1
        if seeded:
            self.state = TrackingState.INITIALIZING
        elif self._low >= self.config.lost_after:
            self.state = TrackingState.LOST

    def _check_frame(self, frame: Frame) -> Frame:
        if not isinstance(frame, Frame):
            raise InputError(f"PoseTracker: expected a gs2pose_ros.frame.Frame, got {type(frame).__name__}")
        return frame

    def seed(self, T_cam_obj) -> None:
        """Start tracking from a known pose (no coarse stage): the next :meth:`track` refines it."""
        self.reset()
        self._T_prev = np.asarray(T_cam_obj, dtype=np.float64).copy()
        self._seeded = True

    # -- public API --------------------------------------------------------------------------------

    def track(self, frame: Frame) -> PoseEstimate:
        """One tracking step (see the module docstring); updates the state."""
        frame = self._check_frame(frame)
        t_start = time.perf_counter()
        stages: dict = {}
        iters = 0
        cfg = self.config
        self.frames_seen += 1
        seeded = getattr(self, "_seeded", False)
        result: Optional[RefineResult] = None
        if self.state == TrackingState.TRACKING or seeded:
            T_pred = self._predict(frame.stamp)
            app = self.appearance
            adapt = (not seeded) and self.last_result is not None and \
                self.last_result.confidence >= cfg.adapt_min_confidence
            t0 = time.perf_counter()
            result = self.refiner.refine(frame, T_pred, tracking=not seeded, appearance=app, adapt=adapt)
            stages["refine"] = time.perf_counter() - t0
            iters += result.iterations
            recovered = False
            if not seeded and result.confidence < cfg.recover_below and cfg.recover_iterations > 0:
                recovered = True
                r2 = self._recover(frame, result, stages)
                iters += r2.iterations
                if r2.confidence > result.confidence:
                    result = r2
            self._seeded = False
            if self._ncc_prev is None or result.diagnostics.get("ncc", 0.0) < self._ncc_prev - SLIDE_NCC_DROP:
                result, slide_iterations = self._slid_along_print(frame, result, app, stages)
                iters += slide_iterations
            # a step that needed the recovery and is still short of converged is doubtful: it must
            # reach the detection threshold, and a re-detection is tried beside it (one recovered
            # mug pose at 0.53 was 22 mm off where the re-detection found it at 0.99)
            doubtful = recovered and result.confidence < cfg.recover_below
            # a step whose print stopped correlating is refuted whatever its confidence
            collapsed = self._ncc_collapsed(frame, result)
            can_detect = cfg.redetect_on_low and self.coarse is not None
            need = cfg.accept_threshold if doubtful else cfg.valid_threshold
            if collapsed or result.confidence < cfg.valid_threshold or (doubtful and can_detect):
                r2, it2 = self._detect(frame, stages) if can_detect else (None, 0)
                iters += it2
                if r2 is not None and (collapsed or r2.confidence > result.confidence) \
                        and self._confirmed(frame, r2, stages):
                    result = r2
                    self._accept(r2, new_track=True, stamp=frame.stamp)
                elif not collapsed and result.confidence >= need:  # the recovered track, still the better one
                    self._accept(result, new_track=seeded, stamp=frame.stamp)
                else:
                    self._low_frame(seeded)
            elif result.confidence >= need:
                self._accept(result, new_track=seeded, stamp=frame.stamp)
            else:
                self._low_frame(seeded)
        else:  # INITIALIZING or LOST: detect from scratch, then (LOST, for a while) the last pose
            result = self._follow_ambiguous(frame, stages)
            if result is not None:  # still right but for the turn the view cannot fix
                iters = result.iterations
            else:
                result, iters = self._detect_or_resume(frame, stages)
        self.last_result = result
        latency = time.perf_counter() - t_start
        if result is None:
            return PoseEstimate(np.eye(4), 0.0, self.state, False, iters, latency, stages,
                                reason=NotValidReason.NOT_FOUND)
        valid = self.state == TrackingState.TRACKING and self._low == 0 and \
            result.confidence >= cfg.valid_threshold
        return PoseEstimate(result.T_cam_obj.copy(), float(result.confidence), self.state, bool(valid),
                            iters, latency, stages, _numbers(result.diagnostics), _reason(result))

    def estimate(self, frame: Frame) -> PoseEstimate:
        """Single-frame estimate (coarse + full refinement), independent of the track state.

        Valid (state TRACKING, else INITIALIZING) at ``accept_threshold``, the confidence a
        detection needs to start a track; the tracker's own state is unchanged.
        """
        frame = self._check_frame(frame)
        t_start = time.perf_counter()
        stages: dict = {}
        r, iters = self._detect(frame, stages)
        if r is None:
            return PoseEstimate(np.eye(4), 0.0, TrackingState.INITIALIZING, False, iters,
                                time.perf_counter() - t_start, stages, reason=NotValidReason.NOT_FOUND)
        # a single frame is a detection: it must reach what a detection needs to start a track
        valid = self._confirmed(frame, r, stages)
        latency = time.perf_counter() - t_start
        return PoseEstimate(r.T_cam_obj.copy(), float(r.confidence),
                            TrackingState.TRACKING if valid else TrackingState.INITIALIZING, bool(valid),
                            iters, latency, stages, _numbers(r.diagnostics), _reason(r))

    def render_overlay(self, frame: Frame, estimate: PoseEstimate, max_side: int = 256) -> np.ndarray:
        """The frame with the model rendered at ``estimate`` (tinted green when valid, red when not),
        the projected 3D bounding box and a label (object, state, confidence, and why the pose is
        not valid); uint8 [H, W, 3]."""
        from gs2pose_ros.camera import PinholeCamera
        from gs2pose_ros.render import render

        img = frame.rgb.copy()
        T = np.asarray(estimate.T_cam_obj, dtype=np.float64)
        colour = np.array([40, 220, 60] if estimate.pose_valid else [230, 50, 40], dtype=np.float64)
        box = self.refiner.crop_for(frame, T)
        if box is not None and estimate.confidence > 0:
            x0, y0, w, h = box
            S = int(min(max_side, max(16, round(w))))
            cam = PinholeCamera.from_K(frame.K, frame.width, frame.height).crop(x0, y0, w, h, S, S)
            with torch.no_grad():
                out = render(self.appearance.model, torch.as_tensor(T, dtype=self.model.dtype),
                             torch.as_tensor(cam.K, dtype=self.model.dtype), S, S)
            col = out.color.clamp(0, 1).cpu().numpy()
            alpha = out.alpha.clamp(0, 1).cpu().numpy()
            # back to image pixels: the inverse crop warp
            s = S / w
            M = np.array([[s, 0, s * (0.5 - x0) - 0.5], [0, s, s * (0.5 - y0) - 0.5]])
            Minv = cv2.invertAffineTransform(M)
            col_f = cv2.warpAffine(col.astype(np.float32), Minv, (frame.width, frame.height), flags=cv2.INTER_LINEAR)
            a_f = cv2.warpAffine(alpha.astype(np.float32), Minv, (frame.width, frame.height), flags=cv2.INTER_LINEAR)
            tinted = 0.6 * col_f * 255 + 0.4 * colour
            a3 = (0.75 * a_f)[..., None]
            img = (img * (1 - a3) + tinted * a3).clip(0, 255).astype(np.uint8)
        c = self.refiner.corners @ T[:3, :3].T + T[:3, 3]
        if np.all(c[:, 2] > 0.01):
            uv = c[:, :2] / c[:, 2:3] * np.array([frame.K[0, 0], frame.K[1, 1]]) + frame.K[:2, 2] - 0.5
            pts = np.round(uv * 16).astype(np.int64)
            for i in range(8):
                for j in range(i + 1, 8):
                    if bin(i ^ j).count("1") == 1:
                        cv2.line(img, tuple(int(v) for v in pts[i]), tuple(int(v) for v in pts[j]),
                                 tuple(int(v) for v in colour), 1, cv2.LINE_AA, shift=4)
        label = f"{self.object_name} {estimate.state.name} conf {estimate.confidence:.2f}"
        if not estimate.pose_valid:
            label += f" ({estimate.reason.name.lower().replace('_', ' ')})"
        cv2.putText(img, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, tuple(int(v) for v in colour), 1, cv2.LINE_AA)
        return img


def _print_leads_half_turns(d: dict) -> bool:
    """Whether a detection's NCC leads its refined half-turns' (``half_turn_ncc``, from
    :meth:`PoseTracker._best_flip`; False without it) by ``SLIVER_NCC_MARGIN``."""
    return "half_turn_ncc" in d and d.get("ncc", 0.0) >= d["half_turn_ncc"] + SLIVER_NCC_MARGIN


def _seen(d: dict) -> float:
    """Share of a pose's silhouette inside the image and unoccluded, from its diagnostics ``d``."""
    return d.get("in_image_fraction", 1.0) * d.get("visible_fraction", 1.0)


def _reason(result: RefineResult) -> NotValidReason:
    """Why ``result`` would not be valid, from the marks the detection rules leave in its
    diagnostics (:meth:`PoseTracker._confirmed`, the sliver rule, a resume's NCC floor, a
    tracking step whose NCC collapsed); LOW_CONFIDENCE otherwise. :class:`PoseEstimate` makes it
    NONE for a valid pose."""
    d = result.diagnostics
    if "texture_not_seen" in d or "ncc_fell_from" in d:
        return NotValidReason.TEXTURE_MISMATCH
    if "ambiguous_about_axis" in d:
        return NotValidReason.AMBIGUOUS_ROTATION
    if "confidence_before_sliver_rule" in d or "partial_depth_not_fit" in d:
        return NotValidReason.PARTLY_IN_VIEW
    return NotValidReason.LOW_CONFIDENCE


def _numbers(diagnostics: dict) -> dict:
    """The scalar entries of a refinement's diagnostics, as floats (what a report can hold)."""
    return {k: float(v) for k, v in diagnostics.items()
            if isinstance(v, (bool, int, float, np.floating, np.integer)) and math.isfinite(float(v))}


def _read_config_file(path: Path) -> dict:
    import json

    if not path.is_file():
        raise ConfigError(f"{path}: tracker config file not found")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError(f"{path}: reading YAML needs PyYAML; use a JSON config instead") from exc
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of tracker settings")
    return data
