"""The interfaces the set-up builds (gs2pose_ros_msgs, tf2_msgs) over a real DDS between processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from ros_testing import pick_domain_id, require_rclpy, ros_env

pytestmark = pytest.mark.ros


def test_object_pose_estimate_definition():
    require_rclpy()
    from gs2pose_ros_msgs.msg import ObjectPoseEstimate

    msg = ObjectPoseEstimate()
    assert {ObjectPoseEstimate.STATE_INITIALIZING, ObjectPoseEstimate.STATE_TRACKING,
            ObjectPoseEstimate.STATE_LOST} == {0, 1, 2}
    from gs2pose_ros.frame import NotValidReason, TrackingState

    for state in TrackingState:  # the core's codes are the message's
        assert getattr(ObjectPoseEstimate, f"STATE_{state.name}") == state.value
    for reason in NotValidReason:
        assert getattr(ObjectPoseEstimate, f"REASON_{reason.name}") == reason.value
    assert len([c for c in dir(ObjectPoseEstimate) if c.startswith("REASON_")]) == len(NotValidReason)
    for field in ("header", "object_id", "pose", "pose_valid", "confidence", "state", "reason", "iterations",
                  "processing_latency"):
        assert hasattr(msg, field), field
    types = ObjectPoseEstimate.get_fields_and_field_types()
    assert types["iterations"] == "uint16" and types["confidence"] == "float"
    assert types["pose"] == "geometry_msgs/Pose" and types["header"] == "std_msgs/Header"


PUBLISHER = textwrap.dedent("""
    import sys, time, rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy
    from gs2pose_ros_msgs.msg import ObjectPoseEstimate
    from tf2_msgs.msg import TFMessage
    from geometry_msgs.msg import TransformStamped
    rclpy.init()
    node = rclpy.create_node('interface_test_publisher')
    est_pub = node.create_publisher(ObjectPoseEstimate, 'estimate', 10)
    tf_pub = node.create_publisher(TFMessage, '/tf', QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    deadline = time.monotonic() + 20.0
    i = 0
    while time.monotonic() < deadline:
        est = ObjectPoseEstimate(object_id='printed_box', confidence=0.75, state=ObjectPoseEstimate.STATE_TRACKING,
                                 iterations=i % 100, pose_valid=True)
        est.header.frame_id = 'camera_color_optical_frame'
        est.pose.position.z = 0.5
        est_pub.publish(est)
        tf = TransformStamped()
        tf.header.frame_id = 'camera_color_optical_frame'
        tf.child_frame_id = 'printed_box'
        tf.transform.rotation.w = 1.0
        tf_pub.publish(TFMessage(transforms=[tf]))
        rclpy.spin_once(node, timeout_sec=0.05)
        i += 1
    node.destroy_node()
    rclpy.shutdown()
""")


def test_estimate_and_tf_cross_a_real_dds_between_processes(monkeypatch):
    rclpy = require_rclpy()
    from gs2pose_ros_msgs.msg import ObjectPoseEstimate
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage

    domain = pick_domain_id()
    env = ros_env(domain)
    for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID"):
        monkeypatch.setenv(key, env[key])
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    try:
        node = rclpy.create_node("interface_test_listener", context=context)
        got_est, got_tf = [], []
        node.create_subscription(ObjectPoseEstimate, "estimate", got_est.append, 10)
        node.create_subscription(TFMessage, "/tf", got_tf.append,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        executor = rclpy.executors.SingleThreadedExecutor(context=context)
        executor.add_node(node)
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline and (len(got_est) < 3 or len(got_tf) < 3):
            executor.spin_once(timeout_sec=0.1)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
        publisher.kill()
        _, err = publisher.communicate(timeout=10)
    assert len(got_est) >= 3, f"no ObjectPoseEstimate received in domain {domain}; publisher stderr: {err[-2000:]}"
    assert got_est[0].object_id == "printed_box" and got_est[0].state == ObjectPoseEstimate.STATE_TRACKING
    assert abs(got_est[0].confidence - 0.75) < 1e-6
    assert len(got_tf) >= 3 and got_tf[0].transforms[0].child_frame_id == "printed_box"
