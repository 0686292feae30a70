"""The BOP camera replay (gs2pose_replay) as its own process, observed by a subscriber in the test."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ros_testing import pick_domain_id, require_rclpy, ros_env

pytestmark = pytest.mark.ros

N_FRAMES = 6
W, H = 64, 48
K = np.array([[80.0, 0, 32.0], [0, 80.0, 24.0], [0, 0, 1]])


def write_scene(path: Path, n: int = N_FRAMES) -> Path:
    """A small BOP scene: frame i has pixel (0, 0) = i in every channel, depth ramps, one GT pose."""
    from gs2pose_ros.bop import BopSceneWriter

    rng = np.random.default_rng(3)
    with BopSceneWriter(path) as w:
        for i in range(n):
            rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            rgb[0, 0] = i
            depth = np.linspace(0.4, 1.9, H * W).reshape(H, W) + 0.01 * i
            depth[:4, :] = 0.0  # no reading
            T = np.eye(4)
            T[:3, 3] = [0.01 * i, -0.02, 0.6 + 0.01 * i]
            w.add_frame(i, rgb, K, instances=[(1, T)], depth=depth)
    return path


def im_id_of(image_msg) -> int:
    return int(np.frombuffer(image_msg.data, np.uint8)[0])


def start(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen, timeout: float = 10.0, interrupt: bool = True) -> tuple[int, str, str]:
    """SIGINT (unless ``interrupt`` is false: wait for it to end), then collect; killed after ``timeout``."""
    if interrupt and proc.poll() is None:
        proc.send_signal(2)  # SIGINT, as Ctrl-C / ros2 launch
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=5)
    return proc.returncode, out, err


def replay_cmd(scene: Path, *params: str) -> list[str]:
    args = [sys.executable, "-m", "gs2pose_ros.ros.replay", "--ros-args", "-p", f"scene_dir:={scene}"]
    for p in params:
        args += ["-p", p]
    return args


@contextlib.contextmanager
def ros_context(domain: int, monkeypatch):
    """An rclpy context of the test's own in ``domain`` with local discovery; yields (rclpy, node, spin)."""
    rclpy = require_rclpy()
    env = ros_env(domain)
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID"):
        monkeypatch.setenv(key, env[key])
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node(f"test_listener_{domain}", context=context)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def spin_until(cond, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            executor.spin_once(timeout_sec=0.05)
        return bool(cond())

    try:
        yield rclpy, node, spin_until
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.shutdown(context=context)


def camera_subscriptions(node, reliable: bool = True):
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
    got = {"image": [], "depth": [], "info": [], "gt": []}
    node.create_subscription(Image, "/camera/color/image_raw", got["image"].append, qos)
    node.create_subscription(Image, "/camera/aligned_depth_to_color/image_raw", got["depth"].append, qos)
    node.create_subscription(CameraInfo, "/camera/color/camera_info", got["info"].append, qos)
    node.create_subscription(PoseStamped, "/gs2pose_replay/gt_pose", got["gt"].append, 50)
    return got


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_replay_publishes_the_scene_with_shared_stamps_and_loops(tmp_path, monkeypatch):
    from gs2pose_ros.bop import BopScene
    from gs2pose_ros.ros import convert

    scene_dir = write_scene(tmp_path / "000001")
    scene = BopScene(scene_dir)
    domain = pick_domain_id()
    rate = 20.0
    # the process first: a participant that joins later is found sooner than one that was there first
    proc = start(replay_cmd(scene_dir, f"rate:={rate}", "loop:=true", "publish_gt:=true", "start_delay:=1.0"),
                 ros_env(domain))
    try:
        with ros_context(domain, monkeypatch) as (_, node, spin_until):
            got = camera_subscriptions(node)
            ok = spin_until(lambda: len(got["info"]) >= 2 * N_FRAMES + 3 or proc.poll() is not None, 20.0)
    finally:
        rc, _, err = stop(proc)
    assert ok and len(got["image"]) >= 2 * N_FRAMES, f"too few frames (rc {rc}); replay stderr: {err[-2000:]}"
    assert rc == 0, f"replay did not end cleanly on SIGINT: {rc}; {err[-2000:]}"

    by_stamp = {k: {stamp_ns(m): m for m in v} for k, v in got.items()}
    common = sorted(set(by_stamp["image"]) & set(by_stamp["depth"]) & set(by_stamp["info"]))
    assert len(common) >= 2 * N_FRAMES - 2, "colour, depth and camera_info of a frame must share one stamp"
    assert len(set(by_stamp["gt"]) & set(common)) >= len(common) - 2, "ground truth shares the frame's stamp"
    ids = []
    for t in common:
        img, dep, info = by_stamp["image"][t], by_stamp["depth"][t], by_stamp["info"][t]
        for m in (img, dep, info):
            assert m.header.frame_id == "camera_color_optical_frame"
        assert (img.encoding, dep.encoding) == ("rgb8", "16UC1")
        assert (img.width, img.height, info.width, info.height) == (W, H, W, H)
        im_id = im_id_of(img)
        ids.append(im_id)
        np.testing.assert_array_equal(convert.image_to_rgb(img), scene.rgb(im_id))
        np.testing.assert_allclose(convert.camera_info_to_K(info), K)
        d = convert.depth_to_metres(dep)
        want = scene.depth(im_id)
        assert np.all((d == 0) == (want == 0))
        assert np.max(np.abs(d - want)) <= 0.0005 + 1e-6  # 16UC1: 1 mm steps, rounded
        if t in by_stamp["gt"]:
            np.testing.assert_allclose(convert.pose_to_matrix(by_stamp["gt"][t].pose), scene.gt(im_id)[0].T, atol=1e-9)
    # in order, looping: 0 1 2 3 4 5 0 1 ...
    assert all(b == (a + 1) % N_FRAMES for a, b in zip(ids, ids[1:])), ids
    assert any(b < a for a, b in zip(ids, ids[1:])), f"no loop seen: {ids}"
    dts = np.diff([t * 1e-9 for t in common])
    assert np.all(dts > 0)
    assert 0.7 / rate < np.median(dts) < 1.4 / rate, f"median period {np.median(dts):.3f} s for {rate} Hz"


def test_replay_32fc1_ends_after_the_last_frame(tmp_path, monkeypatch):
    from gs2pose_ros.bop import BopScene
    from gs2pose_ros.ros import convert

    scene_dir = write_scene(tmp_path / "scene", n=4)
    scene = BopScene(scene_dir)
    domain = pick_domain_id()
    proc = start(replay_cmd(scene_dir, "rate:=10.0", "depth_encoding:=32FC1", "wait_for_subscribers:=1"), ros_env(domain))
    try:
        with ros_context(domain, monkeypatch) as (_, node, spin_until):
            got = camera_subscriptions(node)
            spin_until(lambda: proc.poll() is not None, 20.0)
            spin_until(lambda: False, 0.3)
    finally:
        rc, _, err = stop(proc)
    assert rc == 0, err[-2000:]
    assert "replay finished after 4 frames" in err
    assert len(got["depth"]) == 4, f"every frame once: got { {k: len(v) for k, v in got.items()} }; {err[-1500:]}"
    for m in got["depth"]:
        assert m.encoding == "32FC1"
        raw = np.frombuffer(m.data, np.float32).reshape(H, W)
        want = scene.depth(im_id_of(next(i for i in got["image"] if stamp_ns(i) == stamp_ns(m))))
        assert np.all(np.isnan(raw) == (want == 0))
        np.testing.assert_allclose(convert.depth_to_metres(m), want, atol=1e-6)


def test_replay_bad_scene_stops_with_one_line(tmp_path):
    domain = pick_domain_id()
    proc = start(replay_cmd(tmp_path / "missing"), ros_env(domain))
    rc, out, err = stop(proc, timeout=20, interrupt=False)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert "missing" in lines[0] and "does not exist" in lines[0]
