"""The gs2pose_ros pose node (executable ``gs2pose_node``): RGB-D in, object pose out.

A thin shell around :class:`gs2pose_ros.tracker.PoseTracker`:

* subscribes to ``image``, ``depth`` and ``camera_info`` (remap them; sensor-data QoS unless
  ``qos_reliability:=reliable``), pairs them by stamp (:class:`~gs2pose_ros.ros.sync.StampSync`)
  and hands the newest complete set to one worker thread through a latest-only slot, so a slow
  estimator processes the newest frame and never a backlog;
* publishes ``~/estimate`` (gs2pose_ros_msgs/ObjectPoseEstimate) for every processed frame;
  ``~/pose`` (PoseStamped) and TF ``frame_id -> child_frame_id`` only while the pose is confident;
  ``~/debug/image`` (overlay) and ``~/marker`` (bounding box) only while someone subscribes;
  ``/diagnostics`` once per ``diagnostics_period``; ``~/reset`` (std_srvs/Trigger) re-initialises;
* every output carries the input colour image's stamp and frame_id;
* a bad frame (encoding, sizes, intrinsics, depth, no object...) is a throttled warning and a
  state on ~/estimate and /diagnostics; the next good frame is processed.

See docs/ros_node.md for topics, parameters and QoS.
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np

from gs2pose_ros.errors import ConfigError, Gs2PoseError, InputError
from gs2pose_ros.frame import Frame, NotValidReason, TrackingState
from gs2pose_ros.ros import convert, params
from gs2pose_ros.ros.sync import LatestSlot, StampSync

import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Pose, PoseStamped
from gs2pose_ros_msgs.msg import ObjectPoseEstimate
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import CameraInfo, Image
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker

NODE_NAME = "gs2pose_node"
TRACKER_MISSING = "gs2pose_ros.tracker is not available yet (issue 6)"

#: what tf2_ros.TransformBroadcaster uses for /tf
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
                    history=HistoryPolicy.KEEP_LAST)


#: Seconds close() waits for the frame in progress before giving up.
CLOSE_TIMEOUT_SEC = 30.0


def camera_qos(reliability: str, depth: int) -> QoSProfile:
    """Sensor-data QoS (best effort, keep last) or its reliable variant, for the camera topics."""
    rel = ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE
    return QoSProfile(depth=int(depth), reliability=rel, history=HistoryPolicy.KEEP_LAST,
                      durability=DurabilityPolicy.VOLATILE)


def load_tracker(values: dict):
    """``PoseTracker.from_files`` for the node's parameters (after :func:`params.validate`)."""
    try:
        from gs2pose_ros.tracker import PoseTracker
    except ModuleNotFoundError as e:
        if e.name in ("gs2pose_ros.tracker",):
            raise ConfigError(f"{TRACKER_MISSING}: the estimator is not installed") from None
        raise
    return PoseTracker.from_files(values["model_path"], values["posenet_path"],
                                  config=values["tracker_config"] or None, device=values["device"])


class PoseNode(Node):
    """The pose node. ``tracker``: an object with PoseTracker's interface; None = load it from the
    ``model_path`` / ``posenet_path`` parameters (the normal case). Raises Gs2PoseError (one-line
    message) when a parameter or file is unusable."""

    def __init__(self, tracker=None, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        params.declare_all(self)
        p = params.read_all(self)
        for name in params.CHOICES:
            problem = params.check_choice(name, p[name])
            if problem:
                raise ConfigError(problem)
        if tracker is None:
            params.validate(p)
            tracker = load_tracker(p)
        self.tracker = tracker
        self.use_depth = bool(p["use_depth"])
        self.object_name = p["object_name"] or str(tracker.object_name)
        self.child_frame_id = p["child_frame_id"] or self.object_name
        self._throttle = float(p["warn_throttle_sec"])
        self._rt = {k: p[k] for k in ("sync_slop", "tracking_mode", "publish_tf", "publish_marker", "input_timeout")}
        self.add_on_set_parameters_callback(self._on_set_parameters)

        # -- inputs -------------------------------------------------------------------------------
        self._sync = StampSync(slop=p["sync_slop"], queue_size=p["sync_queue_size"], use_depth=self.use_depth)
        self._sync_resets = 0
        self._slot = LatestSlot()
        qos = camera_qos(p["qos_reliability"], p["qos_depth"])
        self._sub_image = self.create_subscription(Image, "image", self._on_image, qos)
        self._sub_depth = (self.create_subscription(Image, "depth", self._on_depth, qos) if self.use_depth else None)
        self._sub_info = self.create_subscription(CameraInfo, "camera_info", self._on_info, qos)

        # -- outputs (created once) ----------------------------------------------------------------
        self._pub_pose = self.create_publisher(PoseStamped, "~/pose", 10)
        self._pub_estimate = self.create_publisher(ObjectPoseEstimate, "~/estimate", 10)
        self._pub_tf = self.create_publisher(TFMessage, "/tf", TF_QOS)
        self._pub_debug = self.create_publisher(Image, "~/debug/image", QoSProfile(depth=2))
        self._pub_marker = self.create_publisher(Marker, "~/marker", 10)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._srv_reset = self.create_service(Trigger, "~/reset", self._on_reset)

        # -- state shared with the worker ---------------------------------------------------------
        self._lock = threading.Lock()  # guards the statistics below
        self._reset_requested = threading.Event()
        self._state = TrackingState.INITIALIZING
        self._confidence = 0.0
        self._pose_valid = False
        self._reason = NotValidReason.NOT_FOUND
        self._marker_shown = False
        self._processed = 0
        self._times = collections.deque(maxlen=300)  # (monotonic end, latency s)
        self._problem: tuple[float, str, str] | None = None  # (monotonic, kind, message)
        self._last_set_time = time.monotonic()
        self._start_time = self._last_set_time
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="gs2pose_worker", daemon=True)
        self._worker.start()
        self._diag_timer = self.create_timer(float(p["diagnostics_period"]), self._on_diagnostics)
        self.get_logger().info(
            f"tracking {self.object_name!r} on {tracker.device}: colour {self._sub_image.topic_name}"
            + (f", depth {self._sub_depth.topic_name}" if self._sub_depth else " (RGB only)")
            + f", camera_info {self._sub_info.topic_name} ({p['qos_reliability']}); TF child frame "
            f"{self.child_frame_id!r}"
        )

    # ---- parameters ------------------------------------------------------------------------------
    def _on_set_parameters(self, changes) -> SetParametersResult:
        updates = {}
        for change in changes:
            problem = params.check_choice(change.name, change.value)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
            if change.name in self._rt:
                updates[change.name] = change.value
        self._rt.update(updates)
        if "sync_slop" in updates:
            self._sync.slop = float(updates["sync_slop"])
        return SetParametersResult(successful=True)

    # ---- input callbacks (executor thread) ---------------------------------------------------------
    def _offer(self, synced) -> None:
        if self._sync.stats.resets != self._sync_resets:  # time jumped back (bag / replay restarted)
            self._sync_resets = self._sync.stats.resets
            self._slot.clear_order()
        if synced is not None:
            self._last_set_time = time.monotonic()
            self._slot.put(synced)

    def _on_image(self, msg: Image) -> None:
        self._offer(self._sync.add_image(convert.stamp_to_ns(msg.header.stamp), msg))

    def _on_depth(self, msg: Image) -> None:
        self._offer(self._sync.add_depth(convert.stamp_to_ns(msg.header.stamp), msg))

    def _on_info(self, msg: CameraInfo) -> None:
        self._offer(self._sync.add_info(convert.stamp_to_ns(msg.header.stamp), msg))

    def _on_reset(self, request, response):
        self._reset_requested.set()
        response.success = True
        response.message = f"tracking of {self.object_name!r} re-initialises from the next frame"
        self.get_logger().info(response.message)
        return response

    # ---- worker ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            synced = self._slot.get(timeout=0.2)
            if synced is None:
                continue
            try:
                self.process(synced)
            except Exception as e:  # publishing after shutdown, or a bug: never kill the worker
                if self._stop.is_set() or not rclpy.ok(context=self.context):
                    return
                self._note_problem("error", f"{type(e).__name__}: {e}")
                self.get_logger().error(f"unexpected error on a frame: {type(e).__name__}: {e}",
                                        throttle_duration_sec=self._throttle)

    def frame_from(self, synced) -> Frame:
        """The core's Frame for a synced set; InputError naming the topic for anything unusable."""
        img, info = synced.image.msg, synced.info.msg
        image_topic = self._sub_image.topic_name
        rgb = convert.image_to_rgb(img, image_topic)
        K = convert.camera_info_to_K(info, self._sub_info.topic_name)
        convert.check_info_matches(info, img.width, img.height, self._sub_info.topic_name)
        depth = None
        if synced.depth is not None:
            dmsg = synced.depth.msg
            depth_topic = self._sub_depth.topic_name
            depth = convert.depth_to_metres(dmsg, depth_topic)
            if dmsg.header.frame_id and img.header.frame_id and dmsg.header.frame_id != img.header.frame_id:
                self.get_logger().warning(
                    f"{depth_topic}: depth frame_id {dmsg.header.frame_id!r} differs from the colour image's "
                    f"{img.header.frame_id!r}; depth must be registered (aligned) to the colour camera",
                    throttle_duration_sec=self._throttle)
        frame = Frame.validated(rgb, K, depth, convert.stamp_to_sec(img.header.stamp), source=image_topic)
        if self.use_depth and not frame.has_valid_depth:
            raise InputError(f"{self._sub_depth.topic_name}: the depth image has no valid reading (all 0 or NaN); "
                             "is the depth camera covered or out of range?")
        return frame

    def process(self, synced) -> ObjectPoseEstimate:
        """Convert, estimate and publish one synced set; returns the ~/estimate message."""
        header = synced.image.msg.header
        try:
            frame = self.frame_from(synced)
        except Gs2PoseError as e:
            self._note_problem("input", str(e))
            self.get_logger().warning(f"frame skipped: {e}", throttle_duration_sec=self._throttle)
            return self._publish_no_estimate(header, synced.arrival, NotValidReason.INPUT_REJECTED)
        if self._reset_requested.is_set():
            self._reset_requested.clear()
            self.tracker.reset()
        try:
            if self._rt["tracking_mode"] == "estimate":
                estimate = self.tracker.estimate(frame)
            else:
                estimate = self.tracker.track(frame)
        except Gs2PoseError as e:
            self._note_problem("estimator", str(e))
            self.get_logger().warning(f"estimation failed on this frame: {e}", throttle_duration_sec=self._throttle)
            return self._publish_no_estimate(header, synced.arrival, NotValidReason.ESTIMATOR_ERROR)
        if not estimate.pose_valid:
            why = NotValidReason(estimate.reason).name.lower()
            self._note_problem("not_found", f"{self.object_name} not found with confidence "
                               f"({estimate.confidence:.2f}, state {TrackingState(estimate.state).name}, {why})")
            self.get_logger().warning(
                f"{self.object_name!r} not found confidently in this frame (confidence {estimate.confidence:.2f}, "
                f"state {TrackingState(estimate.state).name}, reason {why})", throttle_duration_sec=self._throttle)
        return self.publish_outputs(header, frame, estimate, synced.arrival)

    # ---- outputs ---------------------------------------------------------------------------------
    def build_estimate(self, header, estimate, arrival: float) -> ObjectPoseEstimate:
        msg = ObjectPoseEstimate()
        msg.header = header
        msg.object_id = self.object_name
        T = np.asarray(estimate.T_cam_obj, dtype=np.float64)
        if T.shape == (4, 4) and np.all(np.isfinite(T)):
            msg.pose = convert.matrix_to_pose(T)
        else:
            msg.pose.orientation.w = 1.0
        msg.pose_valid = bool(estimate.pose_valid)
        msg.confidence = float(np.clip(estimate.confidence, 0.0, 1.0))
        msg.state = int(estimate.state)
        msg.reason = int(estimate.reason)
        msg.iterations = int(np.clip(estimate.iterations, 0, 65535))
        msg.processing_latency = float(time.monotonic() - arrival)
        return msg

    def publish_outputs(self, header, frame: Frame, estimate, arrival: float) -> ObjectPoseEstimate:
        """Publish everything for one processed frame (stamp and frame_id of ``header``)."""
        est_msg = self.build_estimate(header, estimate, arrival)
        confident = est_msg.pose_valid
        if confident:
            self._pub_pose.publish(PoseStamped(header=header, pose=est_msg.pose))
            if self._rt["publish_tf"]:
                tf = convert.pose_to_transform_stamped(est_msg.pose, header, self.child_frame_id)
                self._pub_tf.publish(TFMessage(transforms=[tf]))
        self._publish_marker(header, confident)
        if self._pub_debug.get_subscription_count() > 0:
            overlay = self.tracker.render_overlay(frame, estimate)
            self._pub_debug.publish(convert.rgb_to_image(np.asarray(overlay, dtype=np.uint8), header))
        est_msg.processing_latency = float(time.monotonic() - arrival)
        self._pub_estimate.publish(est_msg)
        self._record(estimate.state, est_msg.confidence, confident, est_msg.processing_latency, est_msg.reason)
        return est_msg

    def _publish_no_estimate(self, header, arrival: float, reason: NotValidReason) -> ObjectPoseEstimate:
        msg = ObjectPoseEstimate()
        msg.header = header
        msg.object_id = self.object_name
        msg.pose.orientation.w = 1.0
        msg.pose_valid = False
        msg.reason = int(reason)
        msg.confidence = 0.0
        msg.state = int(self._state)
        msg.processing_latency = float(time.monotonic() - arrival)
        self._publish_marker(header, False)
        self._pub_estimate.publish(msg)
        self._record(self._state, 0.0, False, msg.processing_latency, msg.reason)
        return msg

    def _publish_marker(self, header, confident: bool) -> None:
        if not self._rt["publish_marker"] or self._pub_marker.get_subscription_count() == 0:
            return
        if not confident and not self._marker_shown:
            return
        m = Marker()
        m.header.stamp = header.stamp
        m.header.frame_id = self.child_frame_id
        m.ns = self.object_name
        m.id = 0
        if confident:
            lo = np.asarray(self.tracker.bbox_min, dtype=np.float64)
            hi = np.asarray(self.tracker.bbox_max, dtype=np.float64)
            centre, size = (lo + hi) / 2.0, np.maximum(hi - lo, 1e-4)
            m.type, m.action = Marker.CUBE, Marker.ADD
            m.pose = Pose()
            m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in centre)
            m.pose.orientation.w = 1.0
            m.scale.x, m.scale.y, m.scale.z = (float(v) for v in size)
            m.color.r, m.color.g, m.color.b, m.color.a = 0.1, 0.9, 0.2, 0.5
        else:
            m.action = Marker.DELETE
        self._pub_marker.publish(m)
        self._marker_shown = confident

    # ---- statistics and diagnostics --------------------------------------------------------------
    def _note_problem(self, kind: str, message: str) -> None:
        with self._lock:
            self._problem = (time.monotonic(), kind, message)

    def _record(self, state, confidence: float, valid: bool, latency: float, reason: int) -> None:
        with self._lock:
            self._state = TrackingState(int(state))
            self._confidence = float(confidence)
            self._pose_valid = bool(valid)
            self._reason = NotValidReason(int(reason))
            self._processed += 1
            self._times.append((time.monotonic(), float(latency)))

    def diagnostics(self) -> DiagnosticStatus:
        """The node's DiagnosticStatus now (also used by the tests)."""
        now = time.monotonic()
        window = 5.0
        with self._lock:
            recent = [(t, lat) for t, lat in self._times if now - t <= window]
            state, conf, valid, reason, processed, problem = (self._state, self._confidence, self._pose_valid,
                                                              self._reason, self._processed, self._problem)
        span = min(window, now - self._start_time)
        rate = len(recent) / span if span > 0 else 0.0
        lats = sorted(lat for _, lat in recent)
        sync = self._sync.stats
        since_input = now - self._last_set_time
        period = max(float(self._diag_timer.timer_period_ns) * 1e-9, 1.0)
        level, message = DiagnosticStatus.OK, f"{state.name.lower()}"
        if since_input > self._rt["input_timeout"]:
            r = sync.received
            level = DiagnosticStatus.WARN
            message = (f"no complete input set for {since_input:.1f} s (received image {r['image']}, depth "
                       f"{r['depth'] if self.use_depth else 'unused'}, camera_info {r['camera_info']})")
        elif problem is not None and now - problem[0] <= max(period, 2.0):
            level = DiagnosticStatus.ERROR if problem[1] == "error" else DiagnosticStatus.WARN
            message = f"{state.name.lower()}; {problem[1]}: {problem[2]}"
        elif state != TrackingState.TRACKING:
            level = DiagnosticStatus.WARN
        values = {
            "state": state.name,
            "pose_valid": str(valid),
            "not_valid_reason": reason.name,
            "confidence": f"{conf:.3f}",
            "rate_hz": f"{rate:.2f}",
            "latency_median_ms": f"{1e3 * lats[len(lats) // 2]:.1f}" if lats else "n/a",
            "latency_max_ms": f"{1e3 * lats[-1]:.1f}" if lats else "n/a",
            "frames_processed": str(processed),
            "sets_dropped_busy": str(self._slot.dropped),
            "colour_unmatched": str(sync.unmatched),
            "received_image": str(sync.received["image"]),
            "received_depth": str(sync.received["depth"]),
            "received_camera_info": str(sync.received["camera_info"]),
            "last_problem": f"{problem[1]}: {problem[2]}" if problem else "",
            "object": self.object_name,
            "device": str(self.tracker.device),
        }
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: pose tracking", message=message,
                                  hardware_id=str(self.tracker.device))
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        return status

    def _on_diagnostics(self) -> None:
        status = self.diagnostics()
        since_input = time.monotonic() - self._last_set_time
        if since_input > self._rt["input_timeout"]:
            self.get_logger().warning(
                f"{status.message} on {self._sub_image.topic_name}"
                + (f", {self._sub_depth.topic_name}" if self._sub_depth else "")
                + f", {self._sub_info.topic_name}; check the remaps, the QoS (qos_reliability) and that the "
                f"stamps agree within sync_slop = {self._rt['sync_slop']} s", throttle_duration_sec=self._throttle)
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()  # diagnostics describe the node, not one image
        arr.status = [status]
        self._pub_diag.publish(arr)

    # ---- life cycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker, waiting for the frame in progress (up to CLOSE_TIMEOUT_SEC)."""
        self._stop.set()
        self._slot.close()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            # A re-detection on a busy CPU can take several seconds. Destroying the node and
            # shutting rclpy down while the worker is still inside torch aborts the process
            # ("terminate called without an active exception"), so wait for it to finish.
            self._worker.join(timeout=CLOSE_TIMEOUT_SEC)
            if self._worker.is_alive():
                self.get_logger().error(f"the worker is still busy after {CLOSE_TIMEOUT_SEC:.0f} s; exiting anyway")


def main(args=None) -> int:
    """Entry point of ``gs2pose_node`` (see :func:`gs2pose_ros.ros.lifecycle.run_node`)."""
    from gs2pose_ros.ros.lifecycle import run_node

    return run_node(PoseNode, rclpy.spin, NODE_NAME, args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
