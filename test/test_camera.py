"""Tests of gs2pose_ros.camera: pixel-centre conventions, crops as new intrinsics, validation."""

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from gs2pose_ros.camera import PinholeCamera, backproject_depth, crop_box_around, crop_image, project
from gs2pose_ros.errors import GeometryError

CAM = PinholeCamera(fx=572.4, fy=573.6, cx=325.3, cy=242.0, width=640, height=480)  # LM-O-like


def _centroid(img: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid in continuous pixel coordinates (pixel centres at i + 0.5)."""
    h, w = img.shape
    v, u = np.mgrid[0:h, 0:w]
    m = img.sum()
    return np.array([((u + 0.5) * img).sum() / m, ((v + 0.5) * img).sum() / m])


def _blob(cam: PinholeCamera, uv: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blob centred at continuous (u, v)."""
    v, u = np.mgrid[0 : cam.height, 0 : cam.width]
    d2 = (u + 0.5 - uv[0]) ** 2 + (v + 0.5 - uv[1]) ** 2
    return np.exp(-0.5 * d2 / sigma**2)


# ---------------------------------------------------------------------------- PinholeCamera


def test_K_and_from_K_round_trip():
    K = CAM.K
    assert K.dtype == np.float64 and K.shape == (3, 3)
    assert PinholeCamera.from_K(K, 640, 480) == CAM
    assert PinholeCamera.from_K(torch.as_tensor(K), 640, 480) == CAM
    Kt = CAM.K_tensor(torch.float64)
    assert isinstance(Kt, torch.Tensor) and torch.equal(Kt, torch.as_tensor(K))
    assert CAM.K_tensor().dtype == torch.float32
    with pytest.raises(dataclasses.FrozenInstanceError):
        CAM.fx = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "K, match",
    [
        (np.zeros((3, 3)), "focal"),
        ([[500.0, 0, 320], [0, np.nan, 240], [0, 0, 1]], "NaN"),
        ([[500.0, 0, 320], [0, np.inf, 240], [0, 0, 1]], "NaN or inf"),
        ([[500.0, 0, 320], [0, -500.0, 240], [0, 0, 1]], "focal"),
        ([[500.0, 1.0, 320], [0, 500, 240], [0, 0, 1]], "skew"),
        ([[500.0, 0, 320], [0, 500, 240], [0, 0, 2]], "last row"),
        (np.eye(4), "shape"),
    ],
)
def test_from_K_rejects_bad_matrices(K, match):
    with pytest.raises(GeometryError, match=match):
        PinholeCamera.from_K(K, 640, 480)


def test_constructor_validates():
    with pytest.raises(GeometryError, match="width"):
        PinholeCamera(500, 500, 320, 240, 0, 480)
    with pytest.raises(GeometryError, match="height"):
        PinholeCamera(500, 500, 320, 240, 640, 480.5)
    with pytest.raises(GeometryError, match="cx"):
        PinholeCamera(500, 500, float("nan"), 240, 640, 480)


def test_crop_is_a_new_K():
    x0, y0, w, h, out = 201.25, 97.5, 150.0, 150.0, 256
    crop = CAM.crop(x0, y0, w, h, out, out)
    assert (crop.width, crop.height) == (out, out)
    s = out / w
    pts = torch.tensor([[0.05, -0.02, 0.8], [-0.01, 0.03, 1.2], [0.0, 0.0, 0.5]], dtype=torch.float64)
    uv = project(pts, CAM.K)
    uv_crop = project(pts, crop.K)
    expected = (uv - torch.tensor([x0, y0], dtype=torch.float64)) * s
    assert torch.allclose(uv_crop, expected, atol=1e-9)
    # Default output size = box size: a pure shift.
    shifted = CAM.crop(10, 20, 100, 50)
    assert (shifted.fx, shifted.cx, shifted.cy, shifted.size) == (CAM.fx, CAM.cx - 10, CAM.cy - 20, (100, 50))
    with pytest.raises(GeometryError, match="out_w"):
        CAM.crop(0, 0, 100.5, 100)
    with pytest.raises(GeometryError, match="positive"):
        CAM.crop(0, 0, 0, 100, 10, 10)


def test_scaled_matches_cv2_resize_geometry():
    half = CAM.scaled(0.5)
    assert half.size == (320, 240)
    assert np.isclose(half.fx, CAM.fx / 2) and np.isclose(half.cx, CAM.cx / 2)
    uv = np.array([300.7, 210.2])
    img = _blob(CAM, uv, sigma=4.0)
    small = cv2.resize(img, half.size, interpolation=cv2.INTER_AREA)
    assert np.allclose(_centroid(small), uv / 2, atol=1e-3)


# ---------------------------------------------------------------------------- project / backproject


def test_project_backproject_round_trip_hits_pixel_centres():
    g = torch.Generator().manual_seed(0)
    H, W = 48, 64
    cam = PinholeCamera(60.0, 62.0, 31.3, 23.9, W, H)
    depth = 0.3 + torch.rand(H, W, generator=g, dtype=torch.float64)
    depth[0, 0] = 0.0
    depth[5, 7] = float("nan")
    depth[9, 9] = -1.0
    pts, valid = backproject_depth(depth, cam.K)
    assert pts.shape == (H, W, 3) and valid.shape == (H, W) and valid.dtype == torch.bool
    assert not valid[0, 0] and not valid[5, 7] and not valid[9, 9] and valid.sum() == H * W - 3
    assert torch.isfinite(pts).all() and (pts[~valid] == 0).all()
    assert torch.allclose(pts[..., 2][valid], depth[valid])
    uv = project(pts.reshape(-1, 3), cam.K).reshape(H, W, 2)
    ar = lambda n: torch.arange(n, dtype=torch.float64)  # noqa: E731
    v, u = torch.meshgrid(ar(H), ar(W), indexing="ij")
    centres = torch.stack([u + 0.5, v + 0.5], dim=-1)
    assert torch.allclose(uv[valid], centres[valid], atol=1e-9)


def test_backproject_numpy_float32_and_batched():
    depth = np.ones((2, 4, 5), np.float32)
    K = np.stack([CAM.K, CAM.scaled(2.0).K]).astype(np.float32)
    pts, valid = backproject_depth(depth, K)
    assert pts.shape == (2, 4, 5, 3) and pts.dtype == torch.float32 and valid.all()
    # Pixel (u=3, v=2) of the 2x camera: centre (3.5, 2.5).
    want = [(3.5 - 2 * CAM.cx) / (2 * CAM.fx), (2.5 - 2 * CAM.cy) / (2 * CAM.fy), 1.0]
    assert torch.allclose(pts[1, 2, 3], torch.tensor(want))


def test_project_broadcasts_and_is_differentiable():
    pts = torch.tensor([[[0.1, 0.2, 1.0], [0.0, 0.0, 2.0]]], dtype=torch.float64).expand(3, 2, 3)
    cams = [CAM, CAM.scaled(0.5), CAM.crop(10, 10, 64, 64)]
    K = torch.stack([c.K_tensor(torch.float64) for c in cams])
    uv = project(pts, K)
    assert uv.shape == (3, 2, 2)
    assert torch.allclose(uv[0, 1], torch.tensor([CAM.cx, CAM.cy], dtype=torch.float64))
    x = torch.tensor([[0.1, -0.2, 0.9]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: project(p, CAM.K), (x,))
    # Points on the camera plane stay finite.
    assert torch.isfinite(project(torch.tensor([[0.1, 0.0, 0.0]]), CAM.K)).all()


# ---------------------------------------------------------------------------- crops


@pytest.mark.parametrize(
    "box, out",
    [
        ((100, 60, 200, 200), 128),  # integer box inside: cv2.resize path, shrinking
        ((100, 60, 64, 64), 256),  # integer box inside, zooming in
        ((100.25, 60.75, 150.5, 150.5), 128),  # fractional box: warpAffine path
        ((-40.0, 300.0, 256.0, 256.0), 128),  # box partly outside the image: warpAffine + padding
    ],
)
def test_crop_image_agrees_with_crop_camera(box, out):
    x0, y0, w, h = box
    crop_cam = CAM.crop(x0, y0, w, h, out, out)
    # 1) A linear ramp holding each pixel centre's continuous u (v): exact under linear/area
    #    resampling away from the box border.
    v, u = np.mgrid[0 : CAM.height, 0 : CAM.width].astype(np.float64)
    ramp = np.stack([u + 0.5, v + 0.5], axis=-1)
    interp = cv2.INTER_AREA if w > out else cv2.INTER_LINEAR
    got = crop_image(ramp, x0, y0, w, h, out, out, interpolation=interp, border_value=-1)
    assert got.shape == (out, out, 2) and got.dtype == np.float64
    j, i = np.mgrid[0:out, 0:out].astype(np.float64)
    want = np.stack([x0 + (i + 0.5) * w / out, y0 + (j + 0.5) * h / out], axis=-1)
    inside = (want[..., 0] > 1) & (want[..., 0] < CAM.width - 1)
    inside &= (want[..., 1] > 1) & (want[..., 1] < CAM.height - 1)
    inner = inside.copy()
    inner[:2], inner[-2:], inner[:, :2], inner[:, -2:] = False, False, False, False
    err = got[inner] - want[inner]
    if interp == cv2.INTER_AREA:
        # OpenCV's area filter at a fractional ratio wobbles per pixel, but without bias.
        assert np.abs(err).max() < 0.1 and np.abs(err.mean(axis=0)).max() < 1e-3
    else:
        # cv2.resize is exact; warpAffine rounds sample positions to 1/32 pixel (INTER_BITS).
        assert np.abs(err).max() <= 1 / 32 + 1e-9
    outside = (want[..., 0] < -1) | (want[..., 1] > CAM.height + 1)
    if outside.any():
        assert (got[outside] == -1).all()
    # 2) A projected point: its blob's centroid lands where the crop camera projects it.
    p = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    p[0, :2] = torch.tensor([(x0 + 0.45 * w - CAM.cx) / CAM.fx, (y0 + 0.55 * h - CAM.cy) / CAM.fy])
    uv = project(p, CAM.K)[0].numpy()
    blob = crop_image(_blob(CAM, uv, sigma=0.04 * w), x0, y0, w, h, out, out, interpolation=interp)
    uv_crop = project(p, crop_cam.K)[0].numpy()
    assert np.allclose(_centroid(blob), uv_crop, atol=0.02 * out / w + 1e-3)


def test_crop_image_masks_and_channels():
    mask = np.zeros((480, 640), bool)
    mask[100:200, 300:400] = True
    m = crop_image(mask, 290.5, 90.5, 120, 120, 60, 60)
    assert m.dtype == np.bool_ and m.shape == (60, 60)
    assert 0.65 < m.mean() < 0.75  # 100^2 / 120^2 = 0.69
    rgb = np.full((480, 640, 3), 200, np.uint8)
    c = crop_image(rgb, 600, 0, 100, 100, 50, 50)  # right half outside
    assert c.dtype == np.uint8 and c.shape == (50, 50, 3)
    assert (c[:, :15] == 200).all() and (c[:, 25:] == 0).all()
    one = crop_image(np.ones((480, 640, 1), np.float32), 0, 0, 64, 64, 32, 32)
    assert one.shape == (32, 32, 1)
    with pytest.raises(GeometryError, match="numpy"):
        crop_image(torch.zeros(4, 4), 0, 0, 2, 2, 2, 2)


def test_crop_box_around():
    uv = np.array([[100.0, 100.0], [140.0, 120.0], [120.0, 110.0]])
    x0, y0, w, h = crop_box_around(uv, (640, 480), padding=0.5)
    assert w == h == 60.0
    assert (x0, y0) == (90.0, 80.0)  # centred on (120, 110)
    # Same from a bbox and from a tensor.
    assert crop_box_around(np.array([100.0, 100.0, 140.0, 120.0]), (640, 480), padding=0.5) == (x0, y0, w, h)
    assert crop_box_around(torch.as_tensor(uv), (640, 480), padding=0.5) == (x0, y0, w, h)
    # Near the border: shifted inside, not shrunk.
    x0, y0, w, h = crop_box_around(np.array([600.0, 2.0, 639.0, 40.0]), (640, 480), padding=0.2)
    assert w == h and x0 + w == 640.0 and y0 == 0.0 and w >= 39 * 1.2 - 1e-9
    # Without shifting it stays centred (and crop_image pads).
    box = np.array([600.0, 2.0, 639.0, 40.0])
    x0, _, w, _ = crop_box_around(box, (640, 480), padding=0.2, shift_inside=False)
    assert np.isclose(x0 + w / 2, 619.5)
    # Tiny objects get min_size; huge ones are capped at the image's longer side.
    assert crop_box_around(np.array([10.0, 10.0, 11.0, 11.0]), (640, 480), min_size=32)[2] == 32
    assert crop_box_around(np.array([-500.0, -500.0, 1500.0, 900.0]), (640, 480))[2] == 640
    with pytest.raises(GeometryError, match="behind the camera"):
        crop_box_around(np.array([[np.inf, 0.0], [1.0, 1.0]]), (640, 480))
    with pytest.raises(GeometryError, match=r"\[N, 2\]"):
        crop_box_around(np.zeros((0, 2)), (640, 480))


def test_depth_connected_region_stops_at_depth_steps_and_the_plane():
    """The surface a seed lies on: cut from an occluder in front of it and the background behind it
    by their depth steps, from the table by ``exclude``, and from a second object across the table;
    a slanted surface (steps of a few millimetres per pixel) stays one region."""
    from gs2pose_ros.camera import depth_connected_region

    H, W = 120, 160
    K = np.array([[150.0, 0, W / 2], [0, 150.0, H / 2], [0, 0, 1]])
    v, u = np.mgrid[0:H, 0:W]
    depth = np.full((H, W), 1.2, np.float32)  # the wall behind
    table = v >= 60
    depth[table] = 0.9
    obj = (v >= 30) & (v < 90) & (u >= 40) & (u < 90)
    depth[obj] = 0.8 + 0.003 * (u[obj] - 40)  # slanted: 3 mm per pixel
    other = (v >= 70) & (v < 90) & (u >= 120) & (u < 140)
    depth[other] = 0.8
    occluder = (u >= 60) & (u < 66) & (v < 70)  # the object stays connected below it
    depth[occluder] = 0.5
    depth[5, 5] = 0  # a missing reading
    seed = np.zeros((H, W), bool)
    seed[40:44, 45:49] = True
    region = depth_connected_region(depth, K, seed, exclude=table & ~obj & ~other)
    visible = obj & ~occluder
    assert not (region & ~visible).any()
    # everything visible of the object but a pixel along the depth steps, on both sides of the occluder
    inner = cv2.erode(visible.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert region[inner].all()
    # where the slanted surface meets the table at its depth, only ``exclude`` keeps the table out
    assert (depth_connected_region(depth, K, seed) & table & ~obj).any()
    # the radius (metres from the seed's median point) bounds it
    near = depth_connected_region(depth, K, seed, exclude=table & ~obj & ~other, radius=0.05)
    assert near.sum() < region.sum() and not (near & ~visible).any()
    assert not depth_connected_region(depth, K, np.zeros((H, W), bool)).any()


def test_object_sized_surfaces_on_the_dominant_plane():
    """Plane removal, then clusters: of a block, a pole, a small blob and speckle standing off a
    tilted floor, only the block is object-sized; the floor is the dominant plane."""
    from gs2pose_ros.camera import fit_dominant_plane, object_sized_surfaces, on_plane

    H, W = 240, 320
    K = np.array([[300.0, 0, W / 2], [0, 300.0, H / 2], [0, 0, 1]])
    v, u = np.mgrid[0:H, 0:W]
    normal, d = np.array([0.0, 0.8, 0.6]), 0.8  # the floor, n . X = d, far at the top of the image
    depth = (d / (normal[1] * (v + 0.5 - K[1, 2]) / K[1, 1] + normal[2])).astype(np.float32)
    block = (u >= 100) & (u < 130) & (v >= 150) & (v < 180)  # ~11 cm across at 1.1 m
    pole = (u >= 200) & (u < 206) & (v >= 10) & (v < 220)  # well over half a metre long
    blob = (u >= 40) & (u < 44) & (v >= 200) & (v < 204)
    for m in (block, pole, blob):
        depth[m] -= 0.06
    rng = np.random.default_rng(0)
    depth[rng.integers(0, H, 20), rng.integers(0, W, 20)] -= 0.03  # speckle
    depth[0, :5] = 0  # missing readings
    plane = fit_dominant_plane(depth, K)
    assert plane is not None
    n = plane[:3] * np.sign(plane[3])
    assert np.allclose(n, normal, atol=1e-3) and abs(abs(plane[3]) - d) < 1e-3
    flat = on_plane(depth, K, plane, 0.006)
    surfaces = object_sized_surfaces(depth, K, 0.15, flat)
    assert len(surfaces) == 1
    inner = cv2.erode(block.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert surfaces[0][inner].all() and not (surfaces[0] & ~block).any()
    # the same block is too small for an object of 1 m, too large for one of 5 cm
    assert object_sized_surfaces(depth, K, 1.0, flat) == [] and object_sized_surfaces(depth, K, 0.05, flat) == []
    assert fit_dominant_plane(rng.uniform(0.5, 3.0, (H, W)).astype(np.float32), K) is None  # no plane
