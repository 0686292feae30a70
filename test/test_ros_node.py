"""The pose node (gs2pose_node).

* start-up checks: the node as its own process, run now;
* the node's plumbing (sync, worker, outputs, stamps, TF gating, reset, bad inputs) in-process over
  a real DDS, with a test double standing in for the estimator (defined here only: the package has
  no fake tracker), run now;
* the full pipeline: the node process with the real tracker and the shipped printed_box model and
  Pose-Net weights, fed by the replay process of a generated scene, poses against ground truth.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ros_testing import pick_domain_id, require_rclpy, ros_env
from test_ros_replay import ros_context, start, stamp_ns, stop

pytestmark = pytest.mark.ros



def node_cmd(*params: str) -> list[str]:
    args = [sys.executable, "-m", "gs2pose_ros.ros.pose_node", "--ros-args"]
    for p in params:
        args += ["-p", p]
    return args


# ---- start-up --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing_model", ["model_path", "missing_model.ply", "does not exist"]),
        ("missing_weights", ["posenet_path", "missing_weights.safetensors", "does not exist"]),
        ("empty_model", ["model_path", "empty"]),
        ("model_is_dir", ["model_path", "is a directory"]),
        ("bad_device", ["device", "tpu", "auto, cpu, cuda"]),
        ("slop_out_of_range", ["sync_slop", "5.0"]),
        ("missing_tracker_config", ["tracker_config", "tracker.yaml", "does not exist"]),
        ("unknown_tracker_setting", ["no_such_setting"]),
        ("corrupt_model", None),  # files exist but are not a model: PoseTracker.from_files says so
    ],
)
def test_unusable_parameters_stop_the_node_with_one_line(tmp_path, case, expect):
    model = tmp_path / "model.ply"
    model.write_bytes(b"ply\n")
    weights = tmp_path / "posenet.safetensors"
    weights.write_bytes(b"x" * 16)
    p = {"model_path": str(model), "posenet_path": str(weights)}
    if case == "missing_model":
        p["model_path"] = str(tmp_path / "missing_model.ply")
    elif case == "missing_weights":
        p["posenet_path"] = str(tmp_path / "missing_weights.safetensors")
    elif case == "empty_model":
        (tmp_path / "empty.ply").write_bytes(b"")
        p["model_path"] = str(tmp_path / "empty.ply")
    elif case == "model_is_dir":
        p["model_path"] = str(tmp_path)
    elif case == "bad_device":
        p["device"] = "tpu"
    elif case == "slop_out_of_range":
        p["sync_slop"] = "5.0"
    elif case == "missing_tracker_config":
        p["tracker_config"] = str(tmp_path / "tracker.yaml")
    elif case == "unknown_tracker_setting":
        pytest.importorskip("gs2pose_ros.tracker")
        from gs2pose_ros.commands.demo import shipped_assets

        p["model_path"], p["posenet_path"] = (str(f) for f in shipped_assets("printed_box"))
        (tmp_path / "tracker.yaml").write_text("refiner:\n  no_such_setting: 1\n")
        p["tracker_config"] = str(tmp_path / "tracker.yaml")
    elif case == "corrupt_model":
        try:
            import gs2pose_ros.tracker  # noqa: F401
            expect = ["model.ply"]
        except ImportError:
            expect = ["issue 6"]
    env = ros_env(pick_domain_id())
    env["ROS_LOG_DIR"] = str(tmp_path / "log")
    proc = subprocess.run(node_cmd(*(f"{k}:={v}" for k, v in p.items())), env=env, capture_output=True, text=True,
                          timeout=30)
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, f"expected one line, got:\n{proc.stderr}{proc.stdout}"
    for word in expect:
        assert word in lines[0], lines[0]


# ---- the node's plumbing with a stand-in estimator ------------------------------------------------------
class StandInTracker:
    """Test double with PoseTracker's interface: the object sits at the depth image's median, and is
    "not found" in a black image. Records what it was given."""

    object_name = "printed_box"
    diameter = 0.1
    bbox_min = np.array([-0.04, -0.03, -0.02])
    bbox_max = np.array([0.04, 0.03, 0.02])
    device = "cpu"

    def __init__(self):
        self.frames, self.resets, self.overlays = [], 0, 0

    def _answer(self, frame):
        from gs2pose_ros.frame import PoseEstimate, TrackingState

        self.frames.append(frame)
        T = np.eye(4)
        z = float(np.median(frame.depth[frame.depth > 0])) if frame.depth is not None else 0.5
        T[:3, 3] = [0.01, -0.02, z]
        if frame.rgb.max() < 5:
            return PoseEstimate(T, 0.05, TrackingState.LOST, False, iterations=3)
        return PoseEstimate(T, 0.9, TrackingState.TRACKING, True, iterations=7)

    track = estimate = _answer

    def reset(self):
        self.resets += 1

    def render_overlay(self, frame, estimate):
        self.overlays += 1
        return np.full_like(frame.rgb, 200)


W, H = 80, 60
K = [60.0, 0.0, 40.0, 0.0, 60.0, 30.0, 0.0, 0.0, 1.0]


class Camera:
    """Publishes colour / depth / camera_info sets like a driver (reliable, so none is lost here)."""

    def __init__(self, node):
        from sensor_msgs.msg import CameraInfo, Image

        self.pub_image = node.create_publisher(Image, "/camera/color/image_raw", 10)
        self.pub_depth = node.create_publisher(Image, "/camera/aligned_depth_to_color/image_raw", 10)
        self.pub_info = node.create_publisher(CameraInfo, "/camera/color/camera_info", 10)
        self.n = 0

    def send(self, *, encoding="rgb8", depth_encoding="16UC1", depth_m=0.7, k=K, depth_size=(H, W), rgb_value=None,
             info=True, frame_id="camera_color_optical_frame"):
        from std_msgs.msg import Header

        from gs2pose_ros.ros import convert

        self.n += 1
        header = Header(frame_id=frame_id)
        header.stamp.sec, header.stamp.nanosec = 1000 + self.n, 123_000_000 + self.n
        rgb = np.random.default_rng(self.n).integers(20, 255, (H, W, 3), dtype=np.uint8)
        if rgb_value is not None:
            rgb[:] = rgb_value
        img = convert.rgb_to_image(rgb, header)
        img.encoding = encoding  # what the message claims
        depth = np.full(depth_size, depth_m, np.float64)
        dmsg = convert.metres_to_depth_image(depth, header, encoding=depth_encoding)
        cinfo = convert.K_to_camera_info(np.reshape(k, (3, 3)), W, H, header)
        cinfo.k = [float(v) for v in k]
        self.pub_image.publish(img)
        self.pub_depth.publish(dmsg)
        if info:
            self.pub_info.publish(cinfo)
        return header


@pytest.fixture
def live_node(monkeypatch, tmp_path):
    """(node, tracker, camera, outputs, spin_until, call_reset) in a domain of the test's own."""
    rclpy_mod = require_rclpy()
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from gs2pose_ros_msgs.msg import ObjectPoseEstimate
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_srvs.srv import Trigger
    from tf2_msgs.msg import TFMessage
    from visualization_msgs.msg import Marker

    from gs2pose_ros.ros.pose_node import PoseNode

    monkeypatch.setenv("ROS_LOG_DIR", str(tmp_path / "log"))
    domain = pick_domain_id()
    with ros_context(domain, monkeypatch) as (rclpy, test_node, spin_until):
        tracker = StandInTracker()
        node = PoseNode(
            tracker=tracker, context=test_node.context,
            parameter_overrides=[Parameter("warn_throttle_sec", value=0.0), Parameter("diagnostics_period", value=0.2)],
            cli_args=["--ros-args", "-r", "image:=/camera/color/image_raw",
                      "-r", "depth:=/camera/aligned_depth_to_color/image_raw",
                      "-r", "camera_info:=/camera/color/camera_info"],
        )
        executor = rclpy_mod.executors.SingleThreadedExecutor(context=test_node.context)
        executor.add_node(node)
        out = {k: [] for k in ("estimate", "pose", "tf", "debug", "marker", "diag")}
        test_node.create_subscription(ObjectPoseEstimate, "/gs2pose_node/estimate", out["estimate"].append, 50)
        test_node.create_subscription(PoseStamped, "/gs2pose_node/pose", out["pose"].append, 50)
        test_node.create_subscription(TFMessage, "/tf", out["tf"].append,
                                      QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        test_node.create_subscription(DiagnosticArray, "/diagnostics", out["diag"].append, 50)
        cam = Camera(test_node)
        client = test_node.create_client(Trigger, "/gs2pose_node/reset")

        def spin(cond, timeout):
            def step():
                executor.spin_once(timeout_sec=0.01)
                return cond()
            return spin_until(step, timeout)

        def subscribe_debug():
            test_node.create_subscription(Image, "/gs2pose_node/debug/image", out["debug"].append, 10)
            test_node.create_subscription(Marker, "/gs2pose_node/marker", out["marker"].append, 10)
            return spin(lambda: node._pub_debug.get_subscription_count() > 0
                        and node._pub_marker.get_subscription_count() > 0, 5.0)

        def call_reset():
            assert client.wait_for_service(timeout_sec=5.0)
            future = client.call_async(Trigger.Request())
            spin(future.done, 5.0)
            return future.result()

        # discovery: both directions
        assert spin(lambda: node._sub_image.get_publisher_count() > 0 and node._sub_info.get_publisher_count() > 0
                    and node._pub_estimate.get_subscription_count() > 0 and node._pub_tf.get_subscription_count() > 0,
                    10.0), "no discovery between the test and the node"
        try:
            yield node, tracker, cam, out, spin, call_reset, subscribe_debug
        finally:
            node.close()
            executor.shutdown(timeout_sec=1.0)
            node.destroy_node()


def _send_and_wait(cam, out, spin, n_est_before=None, **kw):
    n = len(out["estimate"]) if n_est_before is None else n_est_before
    header = cam.send(**kw)
    assert spin(lambda: len(out["estimate"]) > n, 10.0), f"no ~/estimate for {kw}"
    est = out["estimate"][-1]
    assert (est.header.stamp.sec, est.header.stamp.nanosec) == (header.stamp.sec, header.stamp.nanosec), \
        "~/estimate not stamped with the image's stamp"
    return header, est


def test_outputs_carry_the_image_stamp_and_frame_and_tf_only_while_confident(live_node):
    node, tracker, cam, out, spin, _, _ = live_node
    header, est = _send_and_wait(cam, out, spin, depth_m=0.8)
    assert est.pose_valid and est.state == est.STATE_TRACKING and est.object_id == "printed_box"
    assert est.reason == est.REASON_NONE
    assert est.header.frame_id == "camera_color_optical_frame"
    assert abs(est.pose.position.z - 0.8) < 1e-3 and abs(est.confidence - 0.9) < 1e-6 and est.iterations == 7
    assert 0 <= est.processing_latency < 5
    assert spin(lambda: out["pose"] and out["tf"], 5.0)
    pose, tf = out["pose"][-1], out["tf"][-1].transforms[0]
    for m in (pose, tf):
        assert m.header.frame_id == "camera_color_optical_frame"
        assert (m.header.stamp.sec, m.header.stamp.nanosec) == (header.stamp.sec, header.stamp.nanosec)
    assert tf.child_frame_id == "printed_box" and abs(tf.transform.translation.z - 0.8) < 1e-3
    assert abs(pose.pose.orientation.w - 1.0) < 1e-9
    # not found (black image): an estimate, but no pose and no TF
    n_pose, n_tf = len(out["pose"]), len(out["tf"])
    _, est = _send_and_wait(cam, out, spin, rgb_value=0)
    assert not est.pose_valid and est.state == est.STATE_LOST and est.reason == est.REASON_LOW_CONFIDENCE
    spin(lambda: False, 0.3)
    assert len(out["pose"]) == n_pose and len(out["tf"]) == n_tf
    # the input reached the estimator as the core expects it
    f = tracker.frames[0]
    assert f.rgb.shape == (H, W, 3) and f.depth.dtype == np.float32 and np.allclose(f.depth, 0.8)
    np.testing.assert_allclose(f.K.ravel(), K)


def test_bad_inputs_leave_the_node_alive(live_node):
    node, tracker, cam, out, spin, _, _ = live_node
    bad = [
        dict(encoding="yuv422"),  # wrong colour encoding
        dict(depth_encoding="32FC1", depth_size=(H // 2, W // 2)),  # colour/depth size mismatch
        dict(k=[0.0] * 9),  # K of zeros
        dict(depth_m=float("nan"), depth_encoding="32FC1"),  # all-NaN depth
        dict(depth_m=0.0),  # all-zero depth
    ]
    for kw in bad:
        n_frames = len(tracker.frames)
        _, est = _send_and_wait(cam, out, spin, **kw)
        assert not est.pose_valid and len(tracker.frames) == n_frames, kw
        assert est.reason == est.REASON_INPUT_REJECTED, kw
        _, est = _send_and_wait(cam, out, spin, depth_m=0.6)  # the next good frame is processed
        assert est.pose_valid, f"no recovery after {kw}"
    # missing camera_info: nothing to process, diagnostics say why; then recovery
    n = len(out["estimate"])
    for _ in range(3):
        cam.send(info=False)
    spin(lambda: False, 0.5)
    assert len(out["estimate"]) == n
    node._rt["input_timeout"] = 0.2
    assert spin(lambda: out["diag"] and "no complete input set" in out["diag"][-1].status[0].message, 5.0)
    node._rt["input_timeout"] = 3.0
    _, est = _send_and_wait(cam, out, spin)
    assert est.pose_valid
    # the estimator failing on a frame (Gs2PoseError) is survived as well
    from gs2pose_ros.errors import InputError

    def fail(frame):
        raise InputError("stand-in: no object model match")

    tracker.track = fail
    _, est = _send_and_wait(cam, out, spin)
    assert not est.pose_valid and est.reason == est.REASON_ESTIMATOR_ERROR
    del tracker.track
    _, est = _send_and_wait(cam, out, spin)
    assert est.pose_valid
    assert node._worker.is_alive()


def test_reset_service_debug_image_marker_and_diagnostics(live_node):
    from diagnostic_msgs.msg import DiagnosticStatus

    node, tracker, cam, out, spin, call_reset, subscribe_debug = live_node
    _send_and_wait(cam, out, spin)
    assert tracker.overlays == 0, "the overlay was rendered without a subscriber"
    res = call_reset()
    assert res.success and "re-initialises" in res.message
    _send_and_wait(cam, out, spin)
    assert tracker.resets == 1
    assert subscribe_debug()
    header, _ = _send_and_wait(cam, out, spin)
    assert spin(lambda: out["debug"] and out["marker"], 5.0)
    dbg, marker = out["debug"][-1], out["marker"][-1]
    assert tracker.overlays >= 1 and dbg.encoding == "rgb8" and (dbg.width, dbg.height) == (W, H)
    assert dbg.header.frame_id == header.frame_id and dbg.header.stamp.sec == header.stamp.sec
    assert marker.type == marker.CUBE and marker.header.frame_id == "printed_box"
    assert marker.header.stamp.sec == header.stamp.sec
    assert abs(marker.scale.x - 0.08) < 1e-9 and abs(marker.scale.y - 0.06) < 1e-9
    def diag_ok():
        if not out["diag"]:
            return False
        st = out["diag"][-1].status[0]
        return st.level == DiagnosticStatus.OK and int({kv.key: kv.value for kv in st.values}["frames_processed"]) >= 3

    assert spin(diag_ok, 5.0), [(d.status[0].level, d.status[0].message) for d in out["diag"][-3:]]
    values = {kv.key: kv.value for kv in out["diag"][-1].status[0].values}
    for key in ("rate_hz", "latency_median_ms", "sets_dropped_busy", "state", "frames_processed"):
        assert key in values
    assert out["diag"][-1].status[0].name == "gs2pose_node: pose tracking"
    assert values["state"] == "TRACKING" and values["not_valid_reason"] == "NONE"


def test_tracker_config_parameter_reaches_the_tracker(tmp_path):
    """The node's tracker_config file sets the tracker's and refiner's settings."""
    require_rclpy()
    pytest.importorskip("gs2pose_ros.tracker")
    from gs2pose_ros.commands.demo import shipped_assets
    from gs2pose_ros.ros.pose_node import load_tracker

    model, posenet = shipped_assets("printed_box")
    cfg = tmp_path / "tracker.yaml"
    cfg.write_text("recover_iterations: 7\nrefiner:\n  track_iterations: 5\n")
    values = {"model_path": str(model), "posenet_path": str(posenet), "device": "cpu"}
    default = load_tracker({**values, "tracker_config": ""})
    tuned = load_tracker({**values, "tracker_config": str(cfg)})
    assert (tuned.config.recover_iterations, tuned.refiner.config.track_iterations) == (7, 5)
    assert (default.config.recover_iterations, default.refiner.config.track_iterations) != (7, 5)


# ---- the full pipeline (needs the estimator) ---------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A generated scene plus the shipped model and Pose-Net weights."""
    from gs2pose_ros.commands.demo import shipped_assets

    # The model and Pose-Net weights shipped for the default object; overridable to test others.
    shipped_model, shipped_posenet = shipped_assets("printed_box")
    model = os.environ.get("GS2POSE_TEST_MODEL", str(shipped_model))
    posenet = os.environ.get("GS2POSE_TEST_POSENET", str(shipped_posenet))
    gs2pose = shutil.which("gs2pose") or str(Path(sys.executable).with_name("gs2pose"))
    out = tmp_path_factory.mktemp("synth")
    proc = subprocess.run([gs2pose, "synth", "--out", str(out), "--object", "printed_box", "--frames", "40",
                           "--seed", "3", "--width", "320", "--height", "240", "--ref-views", "0", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"gs2pose synth failed: {proc.stderr[-2000:]}"
    from gs2pose_ros.bop import BopScene

    scene = BopScene(out / "test" / "000000")
    return {"model": model, "posenet": posenet, "scene": scene, "root": out}


#: Fraction of published poses that must be within 0.1 d (issue 7's target).
PIPELINE_MIN_CORRECT = 0.95
#: Fewest poses the node must publish from the 40 frames at 5 Hz (idle: 24-30; the first detection
#: takes about 3 s on this 2-core CPU), so that the fraction above means something.
PIPELINE_MIN_POSES = 8


def start_pipeline_node(pipeline, env):
    """The node process with the real tracker on the pipeline's model, fed from the camera topics."""
    return start(node_cmd(f"model_path:={pipeline['model']}", f"posenet_path:={pipeline['posenet']}", "device:=cpu",
                          "qos_reliability:=reliable") + [
        "-r", "image:=/camera/color/image_raw", "-r", "depth:=/camera/aligned_depth_to_color/image_raw",
        "-r", "camera_info:=/camera/color/camera_info"], env)


def test_pipeline_poses_match_ground_truth(pipeline, monkeypatch):
    from geometry_msgs.msg import PoseStamped
    from gs2pose_ros_msgs.msg import ObjectPoseEstimate
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_srvs.srv import Trigger
    from tf2_msgs.msg import TFMessage

    from gs2pose_ros.metrics import add
    from gs2pose_ros.ros import convert

    scene = pipeline["scene"]
    obj_id = scene.obj_ids[0]
    info = scene.dataset().model_info(obj_id)
    diameter = info.diameter
    pts = np.asarray(scene.dataset().load_model(obj_id).vertices, dtype=np.float64)
    domain = pick_domain_id()
    env = ros_env(domain)
    node = start_pipeline_node(pipeline, env)
    replay = start([sys.executable, "-m", "gs2pose_ros.ros.replay", "--ros-args", "-p", f"scene_dir:={scene.path}",
                    "-p", "rate:=5.0", "-p", "publish_gt:=true", "-p", f"gt_obj_id:={obj_id}", "-p", "wait_for_subscribers:=1"],
                   env)
    try:
        with ros_context(domain, monkeypatch) as (_, test_node, spin_until):
            got = {"est": [], "pose": [], "tf": [], "gt": [], "img": []}
            test_node.create_subscription(ObjectPoseEstimate, "/gs2pose_node/estimate", got["est"].append, 100)
            test_node.create_subscription(PoseStamped, "/gs2pose_node/pose", got["pose"].append, 100)
            test_node.create_subscription(TFMessage, "/tf", got["tf"].append,
                                          QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
            test_node.create_subscription(PoseStamped, "/gs2pose_replay/gt_pose", got["gt"].append, 100)
            spin_until(lambda: replay.poll() is not None or node.poll() is not None, 60.0)
            spin_until(lambda: False, 3.0)
            client = test_node.create_client(Trigger, "/gs2pose_node/reset")
            assert client.wait_for_service(timeout_sec=5.0)
            fut = client.call_async(Trigger.Request())
            assert spin_until(fut.done, 5.0) and fut.result().success
    finally:
        rc_node, _, err_node = stop(node, timeout=45.0)
        stop(replay)
    assert rc_node == 0, err_node[-2000:]
    gt = {stamp_ns(m): convert.pose_to_matrix(m.pose) for m in got["gt"]}
    assert got["pose"], f"no pose published; node stderr: {err_node[-2000:]}"
    good = 0
    for m in got["pose"]:
        assert m.header.frame_id == "camera_color_optical_frame" and stamp_ns(m) in gt
        T, Tg = convert.pose_to_matrix(m.pose), gt[stamp_ns(m)]
        good += add(T[:3, :3], T[:3, 3], Tg[:3, :3], Tg[:3, 3], pts) < 0.1 * diameter
    print(f"pipeline: {good}/{len(got['pose'])} published poses within 0.1 d, {len(got['est'])} estimates")
    assert len(got["pose"]) >= PIPELINE_MIN_POSES, f"only {len(got['pose'])} poses published"
    assert good >= PIPELINE_MIN_CORRECT * len(got["pose"]), f"{good}/{len(got['pose'])} poses within 0.1 d"
    tfs = [t for msg in got["tf"] for t in msg.transforms]
    assert {stamp_ns(t) for t in tfs} == {stamp_ns(m) for m in got["pose"]}
    assert len(got["est"]) >= len(got["pose"])


def test_pipeline_bad_inputs_keep_the_node_answering(pipeline, monkeypatch, tmp_path):
    """The real estimator behind the node: a scene of bad frames between good ones."""
    from gs2pose_ros_msgs.msg import ObjectPoseEstimate

    scene = pipeline["scene"]
    domain = pick_domain_id()
    env = ros_env(domain)
    node = start_pipeline_node(pipeline, env)
    try:
        with ros_context(domain, monkeypatch) as (_, test_node, spin_until):
            est = []
            test_node.create_subscription(ObjectPoseEstimate, "/gs2pose_node/estimate", est.append, 100)
            cam = Camera(test_node)
            assert spin_until(lambda: cam.pub_image.get_subscription_count() > 0, 60.0)
            for kw in (dict(encoding="yuv422"), dict(k=[0.0] * 9), dict(depth_m=0.0), dict(rgb_value=0), dict()):
                n = len(est)
                cam.send(**kw)
                assert spin_until(lambda: len(est) > n, 60.0), f"node stopped answering after {kw}"
            assert node.poll() is None
    finally:
        rc, _, err = stop(node, timeout=45.0)
    assert rc == 0, err[-2000:]
    del scene
