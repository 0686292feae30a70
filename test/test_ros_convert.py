"""gs2pose_ros.ros.convert: messages <-> numpy (no ROS graph needed, only the message classes)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gs2pose_ros.errors import GeometryError, InputError

pytest.importorskip("sensor_msgs.msg", reason="the ROS 2 message wheels are not installed: run scripts/setup_venv.sh")

from geometry_msgs.msg import Pose  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from gs2pose_ros.ros import convert  # noqa: E402

RNG = np.random.default_rng(7)
H, W = 9, 11


def image_msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """An Image whose rows are ``pixels`` bytes followed by ``pad`` garbage bytes."""
    h, w = pixels.shape[:2]
    raw = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"), copy=False)
    rows = raw.reshape(h, -1).view(np.uint8)
    rows = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1])
    msg.data = convert.rgb_to_array_data(rows)
    return msg


RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize(
    "encoding, pixels",
    [
        ("rgb8", RGB),
        ("bgr8", RGB[:, :, ::-1]),
        ("rgba8", np.dstack([RGB, np.full((H, W), 9, np.uint8)])),
        ("bgra8", np.dstack([RGB[:, :, ::-1], np.full((H, W), 9, np.uint8)])),
    ],
)
def test_colour_encodings_give_rgb(encoding, pixels, pad):
    msg = image_msg(np.ascontiguousarray(pixels), encoding, pad=pad)
    out = convert.image_to_rgb(msg, "/cam/image")
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)


def test_mono8_is_replicated():
    grey = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    out = convert.image_to_rgb(image_msg(grey, "mono8", pad=2))
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_colour_is_a_view_of_the_message_buffer(encoding):
    c = convert.COLOR_ENCODINGS[encoding]
    msg = image_msg(RNG.integers(0, 256, (H, W, c), dtype=np.uint8).squeeze(), encoding, pad=4)
    out = convert.image_to_rgb(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8)), "a needless copy was made"


def test_colour_result_feeds_frame_validated():
    from gs2pose_ros.frame import Frame

    msg = image_msg(np.ascontiguousarray(RGB[:, :, ::-1]), "bgr8", pad=1)
    frame = Frame.validated(convert.image_to_rgb(msg), np.array([[5.0, 0, 3], [0, 5, 2], [0, 0, 1]]))
    np.testing.assert_array_equal(frame.rgb, RGB)
    assert frame.rgb.flags.c_contiguous


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 6])
def test_depth_32fc1_metres_nan_to_zero(bigendian, pad):
    d = RNG.uniform(0.2, 2.0, (H, W)).astype(np.float32)
    d[0, 0], d[1, 2], d[2, 3], d[3, 3] = np.nan, np.inf, -1.0, 0.0
    out = convert.depth_to_metres(image_msg(d, "32FC1", pad=pad, bigendian=bigendian))
    want = d.copy()
    want[0, 0] = want[1, 2] = want[2, 3] = 0.0
    assert out.dtype == np.float32 and out.shape == (H, W)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_depth_16uc1_millimetres(encoding, bigendian):
    mm = RNG.integers(0, 8000, (H, W)).astype(np.uint16)
    mm[0, :] = 0
    out = convert.depth_to_metres(image_msg(mm, encoding, pad=2, bigendian=bigendian))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, mm.astype(np.float32) / 1000.0, rtol=1e-6)
    assert np.all(out[0] == 0)


def test_depth_is_a_new_array_not_touching_the_message():
    d = np.full((H, W), np.nan, np.float32)
    msg = image_msg(d, "32FC1")
    out = convert.depth_to_metres(msg)
    assert np.all(out == 0) and np.isnan(np.frombuffer(msg.data, np.float32)).all()


@pytest.mark.parametrize(
    "fn, encoding, expect",
    [
        (convert.image_to_rgb, "yuv422", "'yuv422'"),
        (convert.image_to_rgb, "16UC1", "depth encoding"),
        (convert.depth_to_metres, "rgb8", "colour encoding"),
        (convert.depth_to_metres, "8UC1", "'8UC1'"),
    ],
)
def test_unsupported_encodings_name_topic_and_encoding(fn, encoding, expect):
    msg = image_msg(np.zeros((H, W * 4), np.uint8), encoding)
    msg.width = W
    with pytest.raises(InputError) as e:
        fn(msg, "/my/topic")
    assert "/my/topic" in str(e.value) and expect in str(e.value)


def test_truncated_and_malformed_images():
    msg = image_msg(RGB, "rgb8")
    msg.data = msg.data[:-5]
    with pytest.raises(InputError, match="truncated"):
        convert.image_to_rgb(msg, "/c")
    msg = image_msg(RGB, "rgb8")
    msg.step = W * 3 - 1
    with pytest.raises(InputError, match="step"):
        convert.image_to_rgb(msg, "/c")
    with pytest.raises(InputError, match="empty"):
        convert.image_to_rgb(Image(encoding="rgb8"), "/c")


def info_msg(k) -> CameraInfo:
    return CameraInfo(width=W, height=H, k=[float(v) for v in np.ravel(k)])


def test_camera_info_to_K():
    K = np.array([[500.0, 0, 320], [0, 510, 240], [0, 0, 1]])
    np.testing.assert_array_equal(convert.camera_info_to_K(info_msg(K)), K)


@pytest.mark.parametrize(
    "k, expect",
    [
        (np.zeros(9), "all zeros"),
        ([500, 0, 320, 0, -5, 240, 0, 0, 1], "pinhole"),
        ([500, 0, 320, 0, 500, 240, 0, 0, 0], "pinhole"),
        ([math.nan, 0, 320, 0, 500, 240, 0, 0, 1], "NaN"),
    ],
)
def test_bad_camera_info(k, expect):
    with pytest.raises(InputError, match=expect) as e:
        convert.camera_info_to_K(info_msg(k), "/cam/camera_info")
    assert "/cam/camera_info" in str(e.value)


def test_camera_info_size_must_match_image():
    info = info_msg(np.eye(3))
    convert.check_info_matches(info, W, H)
    convert.check_info_matches(CameraInfo(), W, H)  # size not stated: accepted
    with pytest.raises(InputError, match="11x9"):
        convert.check_info_matches(info, 2 * W, 2 * H, "/ci")


def test_rgb_to_image_round_trip():
    header = Header(frame_id="cam")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = convert.rgb_to_image(RGB[:, ::-1], header)  # non-contiguous input
    assert (msg.encoding, msg.width, msg.height, msg.step) == ("rgb8", W, H, W * 3)
    assert msg.header.frame_id == "cam" and msg.header.stamp.nanosec == 345
    np.testing.assert_array_equal(convert.image_to_rgb(msg), RGB[:, ::-1])
    with pytest.raises(InputError):
        convert.rgb_to_image(np.zeros((H, W), np.uint8))


@pytest.mark.parametrize("encoding, tol", [("16UC1", 0.0005), ("32FC1", 3e-7)])
def test_depth_image_round_trip(encoding, tol):
    d = RNG.uniform(0.3, 3.0, (H, W))
    d[0, 0] = 0.0
    d[1, 1] = np.nan
    out = convert.depth_to_metres(convert.metres_to_depth_image(d, encoding=encoding))
    want = np.nan_to_num(d, nan=0.0)
    assert np.max(np.abs(out - want)) <= tol and out[0, 0] == 0 and out[1, 1] == 0


def test_K_to_camera_info_round_trip():
    K = np.array([[600.0, 0, 330], [0, 601, 245], [0, 0, 1]])
    info = convert.K_to_camera_info(K, 640, 480)
    np.testing.assert_array_equal(convert.camera_info_to_K(info), K)
    assert list(info.p)[3] == 0.0 and list(info.p)[:3] == [600.0, 0.0, 330.0] and info.distortion_model == "plumb_bob"


def random_pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, rng.uniform(-0.5, 0.5, 3) + [0, 0, 1]
    return T, q


@pytest.mark.parametrize("seed", range(5))
def test_pose_messages_use_xyzw_and_metres(seed):
    T, q_wxyz = random_pose(seed)
    pose = convert.matrix_to_pose(T)
    q = np.array([pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w])
    sign = 1.0 if np.dot(q, np.roll(q_wxyz, -1)) > 0 else -1.0
    np.testing.assert_allclose(q, sign * np.roll(q_wxyz, -1), atol=1e-12)  # x, y, z, w
    np.testing.assert_allclose([pose.position.x, pose.position.y, pose.position.z], T[:3, 3])
    np.testing.assert_allclose(convert.pose_to_matrix(pose), T, atol=1e-12)


def test_stamped_pose_and_transform_keep_header():
    T, _ = random_pose(11)
    header = Header(frame_id="camera_color_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 1700000000, 123456789
    ps = convert.to_pose_stamped(T, header)
    tf = convert.to_transform_stamped(T, header, "printed_box")
    for msg in (ps, tf):
        assert msg.header.frame_id == "camera_color_optical_frame"
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1700000000, 123456789)
    assert tf.child_frame_id == "printed_box"
    t, r = tf.transform.translation, tf.transform.rotation
    p = Pose()
    p.position.x, p.position.y, p.position.z = t.x, t.y, t.z
    p.orientation = r
    np.testing.assert_allclose(convert.pose_to_matrix(p), T, atol=1e-12)
    assert convert.stamp_to_ns(header.stamp) == 1700000000123456789


def test_bad_pose_matrix():
    with pytest.raises(GeometryError):
        convert.matrix_to_pose(np.full((4, 4), np.nan))
    with pytest.raises(GeometryError):
        convert.matrix_to_pose(np.eye(3))
