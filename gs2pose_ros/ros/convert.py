"""Messages <-> numpy at the node boundary (no cv_bridge).

Everything here follows docs/conventions.md and REP 118:

* colour: ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8`` -> ``[H, W, 3]`` uint8 RGB. The
  result is a *view* of the message buffer whenever the layout allows it (row padding given by
  ``step`` is skipped by strides, BGR and alpha by slicing); :meth:`Frame.validated` makes the one
  contiguous copy the core needs.
* depth: ``32FC1`` metres (NaN / inf / <= 0 = no reading) or ``16UC1`` millimetres (0 = no
  reading; ``mono16`` is read the same way, as some drivers label depth so) -> ``[H, W]`` float32
  metres, 0 = no reading. ``is_bigendian`` is honoured.
* ``sensor_msgs/CameraInfo`` -> K (3x3 float64), validated.
* ``T_cam_obj`` (4x4, metres) -> ``geometry_msgs`` Pose / PoseStamped / TransformStamped;
  quaternions go through :mod:`gs2pose_ros.lie` (``matrix_to_quat``, ``quat_wxyz_to_xyzw``), the
  only place where w, x, y, z becomes x, y, z, w.

Anything unusable raises :class:`~gs2pose_ros.errors.InputError` naming the topic and encoding.
"""

from __future__ import annotations

import array

import numpy as np

from gs2pose_ros.errors import GeometryError, InputError

__all__ = [
    "COLOR_ENCODINGS",
    "DEPTH_ENCODINGS",
    "stamp_to_ns",
    "stamp_to_sec",
    "image_to_rgb",
    "depth_to_metres",
    "camera_info_to_K",
    "check_info_matches",
    "rgb_to_image",
    "rgb_to_array_data",
    "metres_to_depth_image",
    "K_to_camera_info",
    "matrix_to_pose",
    "pose_to_matrix",
    "to_pose_stamped",
    "to_transform_stamped",
    "pose_to_transform_stamped",
]

#: colour encoding -> (channels, how to reach RGB)
COLOR_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
#: depth encoding -> (numpy dtype letter/size, metres per unit)
DEPTH_ENCODINGS = {"32FC1": ("f", 4, 1.0), "16UC1": ("u", 2, 1e-3), "mono16": ("u", 2, 1e-3)}


def stamp_to_ns(stamp) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds (exact; used as the sync key)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def stamp_to_sec(stamp) -> float:
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9


def _layout(msg, topic: str, what: str, bytes_per_pixel: int) -> np.ndarray:
    """The message buffer as a ``[H, step]`` uint8 view, after checking size, step and length."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    enc = msg.encoding
    if h <= 0 or w <= 0:
        raise InputError(f"{topic}: {what} image ({enc}) is empty ({w}x{h})")
    if step < w * bytes_per_pixel:
        raise InputError(
            f"{topic}: {what} image ({enc}, {w}x{h}) has step {step} < width * {bytes_per_pixel} bytes per pixel; "
            "the message is malformed"
        )
    buf = np.frombuffer(msg.data, dtype=np.uint8)  # no copy (array.array / bytes)
    if buf.size < step * h:
        raise InputError(
            f"{topic}: {what} image ({enc}, {w}x{h}, step {step}) holds {buf.size} bytes, expected {step * h}; "
            "the message is truncated"
        )
    return buf[: step * h].reshape(h, step)


def image_to_rgb(msg, topic: str = "image") -> np.ndarray:
    """``sensor_msgs/Image`` (colour) -> ``[H, W, 3]`` uint8 RGB, a view of ``msg.data`` where possible.

    The view is read-only and may be non-contiguous; it stays valid as long as ``msg`` lives.
    mono8 is broadcast to three channels (also a view).
    """
    enc = msg.encoding
    if enc not in COLOR_ENCODINGS:
        hint = " (that is a depth encoding: is the colour topic remapped to a depth topic?)" if enc in DEPTH_ENCODINGS else ""
        raise InputError(
            f"{topic}: colour image has encoding {enc!r}{hint}; supported: {', '.join(COLOR_ENCODINGS)}"
        )
    c = COLOR_ENCODINGS[enc]
    rows = _layout(msg, topic, "colour", c)
    h, w = rows.shape[0], int(msg.width)
    px = rows[:, : w * c].reshape(h, w, c)
    if enc == "rgb8":
        return px
    if enc == "bgr8":
        return px[:, :, ::-1]
    if enc == "rgba8":
        return px[:, :, :3]
    if enc == "bgra8":
        return px[:, :, 2::-1]
    return np.broadcast_to(px, (h, w, 3))  # mono8


def depth_to_metres(msg, topic: str = "depth") -> np.ndarray:
    """``sensor_msgs/Image`` (depth, REP 118) -> ``[H, W]`` float32 metres, 0 = no reading (a new array)."""
    enc = msg.encoding
    if enc not in DEPTH_ENCODINGS:
        hint = " (a colour encoding: is the depth topic remapped to a colour topic?)" if enc in COLOR_ENCODINGS else ""
        raise InputError(
            f"{topic}: depth image has encoding {enc!r}{hint}; supported: 32FC1 (metres, NaN = no reading), "
            "16UC1 (millimetres, 0 = no reading)"
        )
    kind, size, scale = DEPTH_ENCODINGS[enc]
    rows = _layout(msg, topic, "depth", size)
    h, w = rows.shape[0], int(msg.width)
    dtype = np.dtype(f"{'>' if msg.is_bigendian else '<'}{kind}{size}")
    raw = rows[:, : w * size].view(dtype)  # [H, W] view (row stride = step)
    if kind == "f":
        out = raw.astype(np.float32)  # the one copy (also fixes byte order and padding)
        bad = ~np.isfinite(out)
        bad |= out < 0
        out[bad] = 0.0
        return out
    out = raw.astype(np.float32)
    out *= np.float32(scale)
    return out


def camera_info_to_K(msg, topic: str = "camera_info") -> np.ndarray:
    """``sensor_msgs/CameraInfo`` -> K ``[3, 3]`` float64; InputError for an uncalibrated or odd K."""
    K = np.asarray(msg.k, dtype=np.float64)
    if K.shape != (9,):
        raise InputError(f"{topic}: camera_info K has {K.size} entries, expected 9")
    K = K.reshape(3, 3)
    if not np.all(np.isfinite(K)):
        raise InputError(f"{topic}: camera_info K contains NaN or inf: {K.tolist()}")
    if not np.any(K):
        raise InputError(
            f"{topic}: camera_info K is all zeros (an uncalibrated camera); calibrate the camera or "
            "publish its intrinsics"
        )
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise InputError(
            f"{topic}: camera_info K = {K.tolist()} is not a pinhole matrix (fx, fy > 0, last row 0 0 1)"
        )
    return K


def check_info_matches(info_msg, width: int, height: int, topic: str = "camera_info") -> None:
    """InputError when camera_info states a size (non-zero) different from the image's."""
    iw, ih = int(info_msg.width), int(info_msg.height)
    if iw and ih and (iw, ih) != (int(width), int(height)):
        raise InputError(
            f"{topic}: camera_info is for {iw}x{ih} images but the colour image is {width}x{height}; "
            "use the camera_info of the colour stream (binning / ROI is not supported)"
        )


def rgb_to_array_data(rgb: np.ndarray) -> array.array:
    """Bytes of a C-contiguous uint8 array as the ``array.array('B')`` a message field holds (one copy).

    Assigning ``bytes`` or a numpy array to a message's ``data`` makes rclpy check every element
    in Python (~10 ms per VGA image); an ``array.array`` is taken as it is.
    """
    data = array.array("B")
    data.frombytes(memoryview(np.ascontiguousarray(rgb)).cast("B"))
    return data


def _image_msg(pixels: np.ndarray, header, encoding: str, bytes_per_pixel: int):
    """``sensor_msgs/Image`` of ``pixels`` ([H, W] or [H, W, C], native byte order) with ``header``."""
    from sensor_msgs.msg import Image

    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(np.little_endian is False)
    msg.step = msg.width * bytes_per_pixel
    msg.data = rgb_to_array_data(np.ascontiguousarray(pixels).view(np.uint8))
    return msg


def rgb_to_image(rgb: np.ndarray, header=None, encoding: str = "rgb8"):
    """``[H, W, 3]`` uint8 RGB -> ``sensor_msgs/Image`` (``rgb8``) with ``header`` (e.g. the input's)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"rgb_to_image: expected [H, W, 3] uint8 RGB, got {rgb.dtype} {rgb.shape}")
    return _image_msg(rgb, header, encoding, bytes_per_pixel=3)


def metres_to_depth_image(depth: np.ndarray, header=None, encoding: str = "16UC1"):
    """``[H, W]`` metres (0 / NaN = no reading) -> ``sensor_msgs/Image`` in ``16UC1`` (mm, 0 = none,
    rounded, clipped to 65.535 m) or ``32FC1`` (metres, NaN = none)."""
    d = np.asarray(depth, dtype=np.float64)
    if d.ndim != 2:
        raise InputError(f"metres_to_depth_image: expected [H, W] depth, got shape {d.shape}")
    valid = np.isfinite(d) & (d > 0)
    if encoding == "16UC1":
        out = np.zeros(d.shape, np.uint16)
        out[valid] = np.clip(np.round(d[valid] * 1000.0), 1, 65535).astype(np.uint16)
        bpp = 2
    elif encoding == "32FC1":
        out = np.full(d.shape, np.nan, np.float32)
        out[valid] = d[valid]
        bpp = 4
    else:
        raise InputError(f"metres_to_depth_image: encoding must be 16UC1 or 32FC1, got {encoding!r}")
    return _image_msg(out, header, encoding, bytes_per_pixel=bpp)


def K_to_camera_info(K: np.ndarray, width: int, height: int, header=None):
    """Pinhole K (no distortion) -> ``sensor_msgs/CameraInfo`` (plumb_bob with zero D, P = [K | 0])."""
    from sensor_msgs.msg import CameraInfo

    K = np.asarray(K, dtype=np.float64).reshape(3, 3)
    msg = CameraInfo()
    if header is not None:
        msg.header = header
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [float(v) for v in K.ravel()]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    P = np.zeros((3, 4))
    P[:, :3] = K
    msg.p = [float(v) for v in P.ravel()]
    return msg


def _check_T(T) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise GeometryError(f"pose: T_cam_obj must be a finite 4x4 matrix, got shape {T.shape}")
    return T


def _quat_xyzw(R: np.ndarray) -> np.ndarray:
    # the single conversion point of the project (gs2pose_ros.lie), in float64
    import torch

    from gs2pose_ros.lie import matrix_to_quat, quat_wxyz_to_xyzw

    q = quat_wxyz_to_xyzw(matrix_to_quat(torch.from_numpy(np.ascontiguousarray(R))))
    return q.numpy()


def matrix_to_pose(T):
    """4x4 ``T_cam_obj`` (metres) -> ``geometry_msgs/Pose`` (quaternion x, y, z, w)."""
    from geometry_msgs.msg import Pose

    T = _check_T(T)
    q = _quat_xyzw(T[:3, :3])
    msg = Pose()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in T[:3, 3])
    msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = (float(v) for v in q)
    return msg


def pose_to_matrix(pose) -> np.ndarray:
    """``geometry_msgs/Pose`` -> 4x4 (for tests and evaluation)."""
    import torch

    from gs2pose_ros.lie import quat_to_matrix, quat_xyzw_to_wxyz

    q = pose.orientation
    xyzw = torch.tensor([q.x, q.y, q.z, q.w], dtype=torch.float64)
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(quat_xyzw_to_wxyz(xyzw)).numpy()
    T[:3, 3] = [pose.position.x, pose.position.y, pose.position.z]
    return T


def to_pose_stamped(T, header):
    """4x4 ``T_cam_obj`` -> ``geometry_msgs/PoseStamped`` with ``header`` (the input image's)."""
    from geometry_msgs.msg import PoseStamped

    msg = PoseStamped()
    msg.header = header
    msg.pose = matrix_to_pose(T)
    return msg


def to_transform_stamped(T, header, child_frame_id: str):
    """4x4 ``T_cam_obj`` -> ``geometry_msgs/TransformStamped`` ``header.frame_id -> child_frame_id``."""
    return pose_to_transform_stamped(matrix_to_pose(T), header, child_frame_id)


def pose_to_transform_stamped(pose, header, child_frame_id: str):
    """``geometry_msgs/Pose`` (of the child in ``header.frame_id``) -> ``TransformStamped``."""
    from geometry_msgs.msg import TransformStamped

    msg = TransformStamped()
    msg.header = header
    msg.child_frame_id = child_frame_id
    msg.transform.translation.x = pose.position.x
    msg.transform.translation.y = pose.position.y
    msg.transform.translation.z = pose.position.z
    msg.transform.rotation = pose.orientation
    return msg
