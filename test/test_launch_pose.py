"""launch_testing test of launch/pose.launch.py (runs in a ROS 2 distribution: `colcon test`,
or `launch_test test/test_launch_pose.py`; skipped where launch_testing is absent).

Needs GS2POSE_TEST_MODEL, GS2POSE_TEST_POSENET (trained printed_box files) and
GS2POSE_TEST_SCENE (a BOP scene folder, e.g. `gs2pose synth --out D` -> D/test/000000).
"""

import os
import time
import unittest

import pytest

launch_testing = pytest.importorskip("launch_testing", reason="launch_testing comes with a ROS 2 distribution; not installed here")

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

import rclpy  # noqa: E402
from ament_index_python.packages import get_package_share_directory  # noqa: E402
from gs2pose_ros_msgs.msg import ObjectPoseEstimate  # noqa: E402


@pytest.mark.launch_test
def generate_test_description():
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    for var in ("GS2POSE_TEST_MODEL", "GS2POSE_TEST_POSENET", "GS2POSE_TEST_SCENE"):
        if not os.environ.get(var):
            pytest.skip(f"{var} is not set")
    pose_launch = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(get_package_share_directory("gs2pose_ros"), "launch",
                                                   "pose.launch.py")),
        launch_arguments={
            "model": os.environ["GS2POSE_TEST_MODEL"],
            "posenet": os.environ["GS2POSE_TEST_POSENET"],
            "replay": os.environ["GS2POSE_TEST_SCENE"],
            "device": "cpu",
        }.items(),
    )
    return launch.LaunchDescription([pose_launch, launch_testing.actions.ReadyToTest()])


class TestEstimates(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        rclpy.init()

    @classmethod
    def tearDownClass(cls):
        rclpy.shutdown()

    def test_estimates_are_published(self, proc_output):
        node = rclpy.create_node("test_pose_launch")
        got = []
        node.create_subscription(ObjectPoseEstimate, "/gs2pose_node/estimate", got.append, 10)
        try:
            deadline = time.monotonic() + 120.0
            while time.monotonic() < deadline and len(got) < 3:
                rclpy.spin_once(node, timeout_sec=0.1)
        finally:
            node.destroy_node()
        self.assertGreaterEqual(len(got), 3, "no ObjectPoseEstimate on /gs2pose_node/estimate")
        self.assertEqual(got[-1].header.frame_id, "camera_color_optical_frame")


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
