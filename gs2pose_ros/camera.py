"""Pinhole camera in continuous pixel coordinates (docs/conventions.md, "Images and intrinsics").

Pixel ``(u, v)`` covers ``[u, u+1) x [v, v+1)``, its centre is ``(u + 0.5, v + 0.5)``, and a camera
point projects to ``(fx x/z + cx, fy y/z + cy)``. In these coordinates a crop starting at
``(x0, y0)`` and scaled by ``s`` is exactly the intrinsics ``fx' = s fx, cx' = s (cx - x0)``:
the refiner and Pose-Net crop around the object and zoom by swapping K, nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from gs2pose_ros.errors import GeometryError

__all__ = [
    "PinholeCamera",
    "project",
    "backproject_depth",
    "crop_box_around",
    "crop_image",
]


@dataclass(frozen=True)
class PinholeCamera:
    """Skew-free pinhole intrinsics plus the image size they belong to.

    ``fx, fy, cx, cy`` in pixels (continuous coordinates), ``width, height`` in pixels.

    Example:
        >>> cam = PinholeCamera(500.0, 500.0, 320.0, 240.0, 640, 480)
        >>> crop_cam = cam.crop(200, 100, 128, 128, out_w=256, out_h=256)  # 2x zoom
        >>> crop_cam.fx, crop_cam.cx
        (1000.0, 240.0)
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        vals = {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}
        for k, v in vals.items():
            if not math.isfinite(float(v)):
                raise GeometryError(f"PinholeCamera: {k} = {v} is not finite; pass finite intrinsics")
        if self.fx <= 0 or self.fy <= 0:
            raise GeometryError(
                f"PinholeCamera: focal lengths must be positive, got fx = {self.fx}, fy = {self.fy}; "
                "pass K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0 in pixels"
            )
        for k in ("width", "height"):
            v = getattr(self, k)
            if isinstance(v, bool) or int(v) != v or v <= 0:
                raise GeometryError(f"PinholeCamera: {k} = {v} must be a positive integer (pixels)")
        # Normalise types so that equality and hashing behave (np.float64(1) vs 1.0, np.int64 vs int).
        for k in ("fx", "fy", "cx", "cy"):
            object.__setattr__(self, k, float(getattr(self, k)))
        for k in ("width", "height"):
            object.__setattr__(self, k, int(getattr(self, k)))

    @classmethod
    def from_K(cls, K, width: int, height: int) -> "PinholeCamera":
        """Builds a camera from a 3x3 intrinsics matrix (numpy, list or tensor), validating it.

        Raises GeometryError if K is not 3x3, not finite, has fx or fy <= 0, non-zero skew or a
        last row other than ``[0, 0, 1]``.

        Example:
            >>> cam = PinholeCamera.from_K([[500, 0, 320], [0, 500, 240], [0, 0, 1]], 640, 480)
        """
        if isinstance(K, torch.Tensor):
            K = K.detach().cpu().numpy()
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise GeometryError(f"intrinsics K has shape {K.shape}, expected (3, 3)")
        if not np.isfinite(K).all():
            raise GeometryError(f"intrinsics K contains NaN or inf: {K.tolist()}; pass a finite K")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise GeometryError(
                f"intrinsics K has non-positive focal lengths fx = {K[0, 0]}, fy = {K[1, 1]}; "
                "check that K is filled in (an all-zero K means the camera info was not set)"
            )
        if K[0, 1] != 0 or K[1, 0] != 0:
            raise GeometryError(
                f"intrinsics K has skew / off-diagonal terms K[0,1] = {K[0, 1]}, K[1,0] = {K[1, 0]}; "
                "only skew-free pinhole cameras are supported"
            )
        if not np.array_equal(K[2], [0.0, 0.0, 1.0]):
            raise GeometryError(
                f"intrinsics K has last row {K[2].tolist()}, expected [0, 0, 1]; "
                "pass the camera matrix, not a projection matrix or a scaled K"
            )
        return cls(K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height)

    @property
    def K(self) -> np.ndarray:
        """The 3x3 intrinsics matrix, float64 (a fresh array each call)."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    def K_tensor(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """The 3x3 intrinsics matrix as a tensor."""
        return torch.as_tensor(self.K, dtype=dtype, device=device)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, the order cv2 uses."""
        return self.width, self.height

    def crop(
        self,
        x0: float,
        y0: float,
        w: float,
        h: float,
        out_w: int | None = None,
        out_h: int | None = None,
    ) -> "PinholeCamera":
        """Camera of the crop ``[x0, x0+w) x [y0, y0+h)`` resampled to ``out_w x out_h`` pixels.

        The box is in continuous pixel coordinates, may be fractional and may extend past the
        image (the image is then padded, see :func:`crop_image`). Scales are ``out_w / w`` and
        ``out_h / h``; ``out_w``/``out_h`` default to ``w``/``h`` (which must then be integers).

        Example:
            >>> PinholeCamera(500, 500, 320, 240, 640, 480).crop(100, 50, 200, 200, 100, 100).cx
            110.0
        """
        if not (w > 0 and h > 0):
            raise GeometryError(f"crop: box size w = {w}, h = {h} must be positive")
        out_w = _as_pixels(w if out_w is None else out_w, "out_w")
        out_h = _as_pixels(h if out_h is None else out_h, "out_h")
        sx, sy = out_w / w, out_h / h
        return PinholeCamera(
            self.fx * sx, self.fy * sy, (self.cx - x0) * sx, (self.cy - y0) * sy, out_w, out_h
        )

    def scaled(self, s: float) -> "PinholeCamera":
        """Camera of the whole image resized by ``s`` to ``round(width s) x round(height s)``.

        The per-axis scale is exactly ``new_size / old_size`` (what ``cv2.resize`` to that size
        does), so it can differ from ``s`` by under half a pixel over the image.

        Example:
            >>> PinholeCamera(500, 500, 320, 240, 640, 480).scaled(0.5).size
            (320, 240)
        """
        if not s > 0:
            raise GeometryError(f"scaled: scale s = {s} must be positive")
        out_w = max(1, round(self.width * s))
        out_h = max(1, round(self.height * s))
        return self.crop(0, 0, self.width, self.height, out_w, out_h)


def _as_pixels(v, name: str) -> int:
    if int(v) != v or v <= 0:
        raise GeometryError(f"{name} = {v} must be a positive integer number of pixels")
    return int(v)


def project(points, K, eps: float = 1e-6) -> torch.Tensor:
    """Projects camera-frame points to continuous pixel coordinates ``(u, v)``.

    points: [..., N, 3] (metres), K: [..., 3, 3] (batch dims broadcast) -> uv: [..., N, 2].
    Differentiable. ``z`` is clamped to ``eps`` so that points at or behind the camera give large
    finite values instead of inf/NaN: mask them with ``points[..., 2] > 0``.

    Example:
        >>> K = torch.tensor([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]])
        >>> project(torch.tensor([[0.1, 0.0, 1.0]]), K)
        tensor([[370., 240.]])
    """
    points = torch.as_tensor(points)
    if not points.is_floating_point():
        points = points.to(torch.get_default_dtype())
    K = torch.as_tensor(K, dtype=points.dtype, device=points.device)
    if points.dim() < 2 or points.shape[-1] != 3:
        raise GeometryError(f"project: points has shape {tuple(points.shape)}, expected [..., N, 3]")
    if K.dim() < 2 or tuple(K.shape[-2:]) != (3, 3):
        raise GeometryError(f"project: K has shape {tuple(K.shape)}, expected [..., 3, 3]")
    p = points @ K.transpose(-1, -2)
    z = points[..., 2:3].clamp_min(eps)
    return p[..., :2] / z


def backproject_depth(depth, K) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-frame points of every pixel centre of a depth image.

    depth: [..., H, W] metres (0, negative or non-finite = no reading), K: [..., 3, 3] ->
    points: [..., H, W, 3] (zeros where invalid), valid: [..., H, W] bool. Numpy or torch in,
    torch out. Pixel ``(u, v)`` is cast through its centre ``(u + 0.5, v + 0.5)``.

    Example:
        >>> pts, valid = backproject_depth(torch.ones(480, 640), torch.tensor(
        ...     [[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]))
        >>> pts[240, 320]  # the pixel whose centre is (320.5, 240.5)
        tensor([0.0010, 0.0010, 1.0000])
    """
    depth = torch.as_tensor(depth)
    if not depth.is_floating_point():
        depth = depth.to(torch.get_default_dtype())
    if depth.dim() < 2:
        raise GeometryError(
            f"backproject_depth: depth has shape {tuple(depth.shape)}, expected [..., H, W]"
        )
    K = torch.as_tensor(K, dtype=depth.dtype, device=depth.device)
    if K.dim() < 2 or tuple(K.shape[-2:]) != (3, 3):
        raise GeometryError(f"backproject_depth: K has shape {tuple(K.shape)}, expected [..., 3, 3]")
    H, W = depth.shape[-2:]
    valid = torch.isfinite(depth) & (depth > 0)
    z = torch.where(valid, depth, torch.zeros_like(depth))
    u = torch.arange(W, dtype=depth.dtype, device=depth.device) + 0.5
    v = torch.arange(H, dtype=depth.dtype, device=depth.device) + 0.5
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    x = (u - cx) / fx * z
    y = (v[:, None] - cy) / fy * z
    return torch.stack(torch.broadcast_tensors(x, y, z), dim=-1), valid


def crop_box_around(
    uv_or_bbox,
    image_size: tuple[int, int],
    padding: float = 0.2,
    min_size: float = 16.0,
    shift_inside: bool = True,
) -> tuple[float, float, float, float]:
    """Square crop box around a projected object, in continuous pixel coordinates.

    uv_or_bbox: projected points [N, 2] (e.g. ``project`` of the model's points or bounding-box
    corners) or a box ``(x_min, y_min, x_max, y_max)`` of shape [4]; image_size: ``(width, height)``.
    The side is ``max(box w, box h) * (1 + padding)``, at least ``min_size`` and at most
    ``max(width, height)``. With ``shift_inside`` the box is moved (not shrunk) to lie inside the
    image along every axis where it fits, else it stays centred on the object and
    :func:`crop_image` pads. Returns ``(x0, y0, w, h)`` with ``w == h``, ready for
    :meth:`PinholeCamera.crop` and :func:`crop_image`.

    Example:
        >>> crop_box_around(np.array([100.0, 100.0, 140.0, 120.0]), (640, 480), padding=0.0)
        (100.0, 90.0, 40.0, 40.0)
    """
    a = uv_or_bbox
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    if a.shape == (4,):
        x_min, y_min, x_max, y_max = a
    elif a.ndim == 2 and a.shape[1] == 2 and a.shape[0] > 0:
        x_min, y_min = a.min(axis=0)
        x_max, y_max = a.max(axis=0)
    else:
        raise GeometryError(
            f"crop_box_around: got shape {a.shape}; pass projected points [N, 2] (N > 0) "
            "or a box (x_min, y_min, x_max, y_max)"
        )
    if not np.isfinite([x_min, y_min, x_max, y_max]).all() or x_max < x_min or y_max < y_min:
        raise GeometryError(
            f"crop_box_around: box ({x_min}, {y_min}, {x_max}, {y_max}) is not finite or inverted; "
            "mask out points behind the camera before projecting"
        )
    width, height = image_size
    side = max(x_max - x_min, y_max - y_min) * (1.0 + padding)
    side = float(min(max(side, min_size), max(width, height)))
    cx, cy = 0.5 * (x_min + x_max), 0.5 * (y_min + y_max)
    x0, y0 = cx - 0.5 * side, cy - 0.5 * side
    if shift_inside:
        if side <= width:
            x0 = min(max(x0, 0.0), width - side)
        if side <= height:
            y0 = min(max(y0, 0.0), height - side)
    return float(x0), float(y0), side, side


def crop_image(
    image: np.ndarray,
    x0: float,
    y0: float,
    w: float,
    h: float,
    out_w: int,
    out_h: int,
    interpolation: int = cv2.INTER_LINEAR,
    border_value: float = 0,
) -> np.ndarray:
    """Resamples the box ``[x0, x0+w) x [y0, y0+h)`` of an image to ``out_w x out_h`` pixels.

    image: [H, W] or [H, W, C] numpy (uint8, float32, float64 or bool) -> [out_h, out_w(, C)],
    same dtype. Pixel-centre exact and consistent with ``PinholeCamera.crop(x0, y0, w, h, out_w,
    out_h)``: content at continuous ``(u, v)`` lands at ``((u - x0) out_w / w, (v - y0) out_h / h)``.
    Parts of the box outside the image are filled with ``border_value``. Boolean masks always use
    nearest-neighbour sampling. An integer box inside the image goes through ``cv2.resize`` (so
    ``cv2.INTER_AREA`` anti-aliases when shrinking); any other box through ``cv2.warpAffine``.
    Precision is OpenCV's: warpAffine rounds sample positions to 1/32 source pixel, and INTER_AREA
    at a fractional ratio is off per pixel by up to ~0.08 source pixel (without bias).

    Example:
        >>> img = np.zeros((480, 640, 3), np.uint8)
        >>> crop_image(img, 100.5, 50, 200, 200, 128, 128).shape
        (128, 128, 3)
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise GeometryError(
            f"crop_image: image must be a numpy array [H, W] or [H, W, C], got "
            f"{type(image).__name__} {getattr(image, 'shape', '')}"
        )
    if not (w > 0 and h > 0):
        raise GeometryError(f"crop_image: box size w = {w}, h = {h} must be positive")
    out_w, out_h = _as_pixels(out_w, "out_w"), _as_pixels(out_h, "out_h")
    is_bool = image.dtype == np.bool_
    src = image.view(np.uint8) if is_bool else image
    if is_bool:
        interpolation = cv2.INTER_NEAREST
    H, W = image.shape[:2]
    sx, sy = out_w / w, out_h / h

    whole = all(float(v).is_integer() for v in (x0, y0, w, h))
    if whole and x0 >= 0 and y0 >= 0 and x0 + w <= W and y0 + h <= H:
        # cv2.resize maps dst centre to src centre ((i + 0.5) / s - 0.5): our convention.
        x0i, y0i, wi, hi = int(x0), int(y0), int(w), int(h)
        out = cv2.resize(
            np.ascontiguousarray(src[y0i : y0i + hi, x0i : x0i + wi]),
            (out_w, out_h),
            interpolation=interpolation,
        )
    else:
        # warpAffine works in pixel-index coordinates (centres at integers): with continuous
        # u = i + 0.5, u' = s (u - x0) becomes i' = s i + s (0.5 - x0) - 0.5.
        M = np.array(
            [[sx, 0.0, sx * (0.5 - x0) - 0.5], [0.0, sy, sy * (0.5 - y0) - 0.5]], dtype=np.float64
        )
        channels = 1 if src.ndim == 2 else src.shape[2]
        out = cv2.warpAffine(
            np.ascontiguousarray(src),
            M,
            (out_w, out_h),
            flags=interpolation,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(border_value,) * min(max(channels, 1), 4),
        )
    if image.ndim == 3 and out.ndim == 2:  # cv2 drops a trailing channel axis of size 1
        out = out[:, :, None]
    return out.astype(np.bool_) if is_bool else out


def fit_support_plane(depth: np.ndarray, K: np.ndarray, box, inlier_tol: float = 0.004,
                      min_share: float = 0.4) -> "np.ndarray | None":
    """A dominant plane (a table, a wall) in the outer ring of the box ``(x0, y0, w, h)`` (frame
    pixels) of the depth image ``[H, W]`` (metres, 0 = missing): ``[4]`` as ``(n, d)`` with
    ``n . x = d`` (camera frame, metres), or None when under ``min_share`` of the ring's points
    lie within ``inlier_tol`` of one plane. The object stands on it, it is not part of it: the
    refiner and the coarse stage leave its pixels out.

    Hand-written: RANSAC over 96 ring points (64 three-point hypotheses at once) and a least-squares
    refit; OpenCV and SciPy have no plane RANSAC, and Open3D is not a dependency."""
    x0, y0, w, h = box
    H, W = depth.shape
    n = 24
    ts = (np.arange(n) + 0.5) / n
    ring = np.concatenate([np.stack([x0 + ts * w, np.full(n, y0 + 0.04 * h)], 1),
                           np.stack([x0 + ts * w, np.full(n, y0 + 0.96 * h)], 1),
                           np.stack([np.full(n, x0 + 0.04 * w), y0 + ts * h], 1),
                           np.stack([np.full(n, x0 + 0.96 * w), y0 + ts * h], 1)])
    return _plane_through(depth, K, ring, inlier_tol, min_share)


def fit_dominant_plane(depth: np.ndarray, K: np.ndarray, inlier_tol: float = 0.004,
                       min_share: float = 0.3, grid: int = 24) -> "np.ndarray | None":
    """The plane most of the depth image ``[H, W]`` lies on (the floor or table the objects stand
    on, when the camera looks down at it), from a ``grid`` x ``grid`` sample of the whole image:
    ``[4]`` ``(n, d)`` as :func:`fit_support_plane` returns it, or None when under ``min_share``
    of the samples lie within ``inlier_tol`` of one plane."""
    H, W = depth.shape
    ts = (np.arange(grid) + 0.5) / grid
    uv = np.stack(np.meshgrid(ts * W, ts * H), -1).reshape(-1, 2)
    return _plane_through(depth, K, uv, inlier_tol, min_share)


def _plane_through(depth: np.ndarray, K: np.ndarray, uv: np.ndarray, inlier_tol: float,
                   min_share: float) -> "np.ndarray | None":
    """RANSAC plane (64 three-point hypotheses at once, least-squares refit on the inliers)
    through the depth image's points at the pixel positions ``uv`` [N, 2]; see
    :func:`fit_support_plane`."""
    H, W = depth.shape
    u = np.floor(uv[:, 0]).astype(int)
    v = np.floor(uv[:, 1]).astype(int)
    ok = (u >= 0) & (u < W) & (v >= 0) & (v < H)
    u, v = u[ok], v[ok]
    z = depth[v, u].astype(np.float64)
    u, v, z = u[z > 0], v[z > 0], z[z > 0]
    if len(z) < 20:
        return None
    P = np.stack([(u + 0.5 - K[0, 2]) / K[0, 0] * z, (v + 0.5 - K[1, 2]) / K[1, 1] * z, z], 1)
    rng = np.random.default_rng(0)
    tri = P[rng.integers(0, len(P), size=(64, 3))]
    nv = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    nn = np.linalg.norm(nv, axis=1)
    good = nn > 1e-9
    if not good.any():
        return None
    nv = nv[good] / nn[good, None]
    d = np.einsum("hk,hk->h", nv, tri[good, 0])
    counts = (np.abs(P @ nv.T - d) < inlier_tol).sum(0)
    k = int(np.argmax(counts))
    if counts[k] < min_share * len(P):
        return None
    inl = np.abs(P @ nv[k] - d[k]) < inlier_tol
    c = P[inl].mean(0)  # least-squares refit on the inliers
    _, _, vt = np.linalg.svd(P[inl] - c)
    normal = vt[2]
    return np.concatenate([normal, [float(normal @ c)]])


def on_plane(depth: np.ndarray, K: np.ndarray, plane: np.ndarray, tol: float) -> np.ndarray:
    """``[H, W]`` bool: pixels of ``depth`` (metres, 0 = missing; intrinsics ``K`` of that image, a
    crop's included) whose back-projected point lies within ``tol`` metres of ``plane`` (n, d)."""
    H, W = depth.shape
    uu = (np.arange(W) + 0.5 - K[0, 2]) / K[0, 0]
    vv = (np.arange(H) + 0.5 - K[1, 2]) / K[1, 1]
    dist = (plane[0] * uu[None, :] + plane[1] * vv[:, None] + plane[2]) * depth - plane[3]
    return (np.abs(dist) < tol) & (depth > 0)


def depth_connected_region(depth: np.ndarray, K: np.ndarray, seed: np.ndarray, exclude: "np.ndarray | None" = None,
                           radius: "float | None" = None, min_step: float = 0.008,
                           relative_step: float = 0.015, min_share: float = 0.1) -> np.ndarray:
    """``[H, W]`` bool: the surface of ``depth`` (metres, 0 = missing; intrinsics ``K``) that the
    ``[H, W]`` bool ``seed`` lies on: the 4-connected components of the pixels with depth, outside
    ``exclude`` and within ``radius`` metres of the seed's median 3D point, cut at depth steps over
    ``max(min_step, relative_step * z)`` between neighbours, that hold at least ``min_share`` of the
    seed's pixels in that set.

    The visible part of an object that a mask caught only a piece of: an occluder in front of it
    and the background behind it are cut off by their depth steps, the table it stands on by
    ``exclude`` (:func:`on_plane`). The components are OpenCV's; the depth steps are marked on both
    of their sides, so the region loses a pixel along its outline."""
    H, W = depth.shape
    z = depth.astype(np.float64)
    ok = z > 0
    if exclude is not None:
        ok &= ~exclude
    if not (seed & ok).any():
        return np.zeros((H, W), bool)
    ok &= ~_depth_steps(z, min_step, relative_step)
    if radius is not None:
        if not (seed & ok).any():
            return np.zeros((H, W), bool)
        points = backproject_depth(z, K)[0].numpy()
        c = np.median(points[seed & ok], axis=0)
        ok &= ((points - c) ** 2).sum(-1) < radius * radius
    n, labels = cv2.connectedComponents(ok.astype(np.uint8), connectivity=4)
    counts = np.bincount(labels[seed & ok], minlength=n)
    counts[0] = 0  # the background label
    keep = counts >= max(1.0, min_share * counts.sum())
    return keep[labels]


def _depth_steps(z: np.ndarray, min_step: float, relative_step: float) -> np.ndarray:
    """``[H, W]`` bool: both pixels of every 4-neighbour pair of the depth image ``z`` (metres)
    that differ by more than ``max(min_step, relative_step * z)`` (the smaller pixel's bound)."""
    step = np.maximum(min_step, relative_step * z)
    jump_x = np.abs(np.diff(z, axis=1)) > np.minimum(step[:, 1:], step[:, :-1])
    jump_y = np.abs(np.diff(z, axis=0)) > np.minimum(step[1:], step[:-1])
    out = np.zeros(z.shape, bool)
    out[:, 1:] |= jump_x
    out[:, :-1] |= jump_x
    out[1:] |= jump_y
    out[:-1] |= jump_y
    return out


def object_sized_surfaces(depth: np.ndarray, K: np.ndarray, diameter: float, exclude: np.ndarray,
                          extent: tuple = (0.25, 1.3), min_pixels: int = 64, min_step: float = 0.008,
                          relative_step: float = 0.015) -> list:
    """The surfaces of the depth image ``[H, W]`` (metres, 0 = missing; intrinsics ``K``) that
    could be an object of ``diameter`` metres standing on a plane: the 4-connected components of
    the pixels with depth outside ``exclude`` (the plane, :func:`on_plane`), cut at depth steps as
    :func:`depth_connected_region` cuts them, of at least ``min_pixels`` pixels, whose points'
    extent (the diagonal of their 2-98 percentile box, which flying pixels at the outlines do not
    stretch) lies within ``extent`` x ``diameter``: a pole or a wall is longer, sensor speckle on
    the floor smaller. Returns a list of ``[H, W]`` bool masks, largest first.

    The classic tabletop segmentation (plane removal, then clusters), here on the organised depth
    image with OpenCV's connected components: a detector-free way to find object candidates that
    a network's full-frame pass missed next to a more salient distractor."""
    z = depth.astype(np.float64)
    ok = (z > 0) & ~exclude & ~_depth_steps(z, min_step, relative_step)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(ok.astype(np.uint8), connectivity=4)
    big = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= min_pixels]
    if not big:
        return []
    points = backproject_depth(z, K)[0].numpy()
    out = []
    for k in sorted(big, key=lambda k: -stats[k, cv2.CC_STAT_AREA]):
        m = labels == k
        lo, hi = np.percentile(points[m], [2.0, 98.0], axis=0)
        if extent[0] * diameter <= float(np.linalg.norm(hi - lo)) <= extent[1] * diameter:
            out.append(m)
    return out

