"""What flows into and out of the estimator: one RGB-D frame, one pose estimate, the tracker state.

These types are the contract between the core (Pose-Net, GS-Refiner, tracker) and its callers
(the ``gs2pose`` CLI, the evaluation, the ROS node). They hold numpy arrays in the project's
conventions (docs/conventions.md): RGB uint8, depth float32 metres with 0 = no reading,
``T_cam_obj`` in metres. :meth:`Frame.validated` turns whatever a caller assembled into a frame
the core can rely on, or raises :class:`InputError` saying what is wrong.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from gs2pose_ros.errors import InputError


class TrackingState(enum.IntEnum):
    """Tracker states; the values equal ObjectPoseEstimate's STATE_* constants."""

    INITIALIZING = 0  # no pose yet: searching the image for the object
    TRACKING = 1  # confident pose, refined from the previous frame
    LOST = 2  # confidence stayed low for several frames: re-detecting from scratch


class NotValidReason(enum.IntEnum):
    """Why an estimate's pose is not valid (NONE when it is); the values equal
    ObjectPoseEstimate's REASON_* constants."""

    NONE = 0  # the pose is valid
    NOT_FOUND = 1  # no candidate pose: nothing in the image looked like the object
    LOW_CONFIDENCE = 2  # the rendered model does not agree well enough with the frame
    PARTLY_IN_VIEW = 3  # a detection of an object mostly outside the image or hidden (a sliver)
    AMBIGUOUS_ROTATION = 4  # the pose scores as well turned about a near-symmetry axis of the object
    TEXTURE_MISMATCH = 5  # the shape fits but the model's print does not correlate with the image
    INPUT_REJECTED = 6  # (node) the frame could not be used: see the node's log
    ESTIMATOR_ERROR = 7  # (node) the estimator raised on this frame: see the node's log


@dataclass(frozen=True)
class Frame:
    """One registered RGB-D (or RGB-only) frame.

    Attributes:
        rgb: [H, W, 3] uint8, RGB order.
        K: [3, 3] float64 pinhole intrinsics of ``rgb`` (continuous pixel coordinates).
        depth: [H, W] float32 metres registered to ``rgb``, 0 = no reading; None for RGB-only.
        stamp: seconds, the caller's time stamp (carried through unchanged).
    """

    rgb: np.ndarray
    K: np.ndarray
    depth: np.ndarray | None = None
    stamp: float = 0.0

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @classmethod
    def validated(cls, rgb, K, depth=None, stamp: float = 0.0, source: str = "frame") -> "Frame":
        """Check and normalise a frame; ``source`` names it in error messages.

        Accepts grey [H, W] or [H, W, 1] images (replicated to RGB) and RGBA (alpha dropped);
        depth with NaN or inf (set to 0 = no reading). Raises InputError for anything else.
        """
        rgb = np.asarray(rgb)
        if rgb.ndim == 2:
            rgb = rgb[..., None]
        if rgb.ndim != 3 or rgb.shape[2] not in (1, 3, 4) or rgb.shape[0] < 8 or rgb.shape[1] < 8:
            raise InputError(f"{source}: colour image has shape {rgb.shape}; expected [H, W, 3] RGB (H, W >= 8)")
        if rgb.dtype != np.uint8:
            raise InputError(f"{source}: colour image has dtype {rgb.dtype}; expected uint8 (0-255)")
        if rgb.shape[2] == 1:
            rgb = np.repeat(rgb, 3, axis=2)
        elif rgb.shape[2] == 4:
            rgb = rgb[..., :3]
        rgb = np.ascontiguousarray(rgb)

        K = np.asarray(K, dtype=np.float64)
        if K.shape == (9,):
            K = K.reshape(3, 3)
        if K.shape != (3, 3) or not np.all(np.isfinite(K)):
            raise InputError(f"{source}: intrinsics K must be a finite 3x3 matrix, got {K.tolist()}")
        if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0.0, 0.0, 1.0]):
            raise InputError(
                f"{source}: intrinsics K = {K.tolist()} is not a pinhole matrix (fx, fy > 0, last row 0 0 1); "
                "check the camera_info / scene_camera.json"
            )

        if depth is not None:
            depth = np.asarray(depth)
            if depth.ndim == 3 and depth.shape[2] == 1:
                depth = depth[..., 0]
            if depth.shape != rgb.shape[:2]:
                raise InputError(
                    f"{source}: depth is {depth.shape[1]}x{depth.shape[0]} but colour is {rgb.shape[1]}x{rgb.shape[0]}; "
                    "register depth to the colour camera (aligned depth) first"
                )
            depth = depth.astype(np.float32, copy=True)
            depth[~np.isfinite(depth) | (depth < 0)] = 0.0
        return cls(rgb=rgb, K=K, depth=depth, stamp=float(stamp))

    @property
    def has_valid_depth(self) -> bool:
        """True when depth exists and has at least one reading."""
        return self.depth is not None and bool(np.any(self.depth > 0))


@dataclass(frozen=True)
class PoseEstimate:
    """The estimator's answer for one frame.

    Attributes:
        T_cam_obj: [4, 4] float64, metres; meaningful only when ``pose_valid``.
        confidence: in [0, 1]; how well the rendered model agrees with the frame.
        state: the tracker state after this frame.
        pose_valid: whether ``T_cam_obj`` is confident enough to act on (publish, grasp).
        iterations: refinement iterations spent on this frame.
        latency: seconds spent by the estimator on this frame.
        stages: seconds per stage (e.g. {"posenet": ..., "refine": ...}), for profiling.
        diagnostics: the final refinement's numbers behind the confidence (depth_inlier_ratio,
            silhouette_iou, ncc, in_image_fraction, ...; see ``RefineResult``), for evaluation.
        reason: why the pose is not valid (:class:`NotValidReason`); None means NONE for a valid
            pose and LOW_CONFIDENCE for another.
    """

    T_cam_obj: np.ndarray
    confidence: float
    state: TrackingState
    pose_valid: bool
    iterations: int = 0
    latency: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, float] = field(default_factory=dict)
    reason: Optional[NotValidReason] = None

    def __post_init__(self):
        if self.pose_valid:
            reason = NotValidReason.NONE
        elif self.reason is None or self.reason == NotValidReason.NONE:
            reason = NotValidReason.LOW_CONFIDENCE
        else:
            reason = NotValidReason(self.reason)
        object.__setattr__(self, "reason", reason)  # (frozen)
