"""Camera replay of a BOP scene (executable ``gs2pose_replay``): colour, depth and camera_info as a
RealSense-like driver publishes them, to drive the pose node without a camera.

Topics (relative, so a namespace applies; in the root namespace they are the pose node's default
remap targets):

* ``camera/color/image_raw`` (sensor_msgs/Image, rgb8)
* ``camera/aligned_depth_to_color/image_raw`` (16UC1 millimetres, 0 = none; or 32FC1 metres, NaN = none)
* ``camera/color/camera_info`` (sensor_msgs/CameraInfo: K, plumb_bob with zero distortion, P = [K | 0])
* ``~/gt_pose`` (geometry_msgs/PoseStamped, T_cam_obj of ``gt_obj_id``) when ``publish_gt`` is true

The three messages of a frame share one stamp (the clock's time when the frame is published) and
the frame_id ``frame_id`` (default ``camera_color_optical_frame``). Frames are published at
``rate`` Hz in image-id order; with ``loop`` the scene restarts (stamps keep increasing), without
it the program ends after the last frame (status 0) unless ``exit_at_end`` is false. The first
frame waits ``start_delay`` seconds and, with ``wait_for_subscribers`` N > 0, until every camera
topic has N subscribers (so that an evaluation loses no frame to discovery).
"""

from __future__ import annotations

import sys
import time

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from gs2pose_ros.errors import ConfigError
from gs2pose_ros.ros import convert

NODE_NAME = "gs2pose_replay"
IMAGE_TOPIC = "camera/color/image_raw"
DEPTH_TOPIC = "camera/aligned_depth_to_color/image_raw"
INFO_TOPIC = "camera/color/camera_info"


def _desc(text: str, read_only: bool = True, frange=None, irange=None, choices=None) -> ParameterDescriptor:
    d = ParameterDescriptor(description=text, read_only=read_only)
    if frange:
        d.floating_point_range = [FloatingPointRange(from_value=frange[0], to_value=frange[1], step=0.0)]
    if irange:
        d.integer_range = [IntegerRange(from_value=irange[0], to_value=irange[1], step=1)]
    if choices:
        d.additional_constraints = "one of: " + ", ".join(choices)
    return d


class ReplayNode(Node):
    """Publishes the frames of one BOP scene; Gs2PoseError (one line) for a bad scene or parameter."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        dp = self.declare_parameter
        dp("scene_dir", "", _desc("BOP scene folder (scene_camera.json, rgb/, depth/, scene_gt.json)"))
        dp("rate", 10.0, _desc("frames per second", frange=(0.01, 1000.0)))
        dp("loop", False, _desc("restart at the first frame after the last"))
        dp("exit_at_end", True, _desc("end the program after the last frame (without loop)"))
        dp("depth_encoding", "16UC1", _desc("16UC1 (mm) or 32FC1 (m)", choices=("16UC1", "32FC1")))
        dp("frame_id", "camera_color_optical_frame", _desc("frame_id of the three messages"))
        dp("publish_depth", True, _desc("publish depth (when the scene has it)"))
        dp("publish_gt", False, _desc("publish the ground-truth T_cam_obj on ~/gt_pose"))
        dp("gt_obj_id", -1, _desc("object id for ~/gt_pose; -1 = the frame's first instance", irange=(-1, 1_000_000)))
        dp("qos_reliability", "reliable", _desc("reliable or best_effort", choices=("reliable", "best_effort")))
        dp("start_delay", 0.0, _desc("seconds to wait before the first frame (for subscribers to connect)",
                                     frange=(0.0, 60.0)))
        dp("wait_for_subscribers", 0, _desc("start only once every camera topic has this many subscribers",
                                            irange=(0, 1000)))
        dp("cache", True, _desc("keep the frames' messages in memory after the first pass (for loop)"))
        get = lambda n: self.get_parameter(n).value  # noqa: E731

        if not get("scene_dir"):
            raise ConfigError("parameter scene_dir is empty: give the BOP scene folder (-p scene_dir:=DIR)")
        enc = get("depth_encoding")
        if enc not in ("16UC1", "32FC1"):
            raise ConfigError(f"parameter depth_encoding = {enc!r} is not one of 16UC1, 32FC1")
        rel = get("qos_reliability")
        if rel not in ("reliable", "best_effort"):
            raise ConfigError(f"parameter qos_reliability = {rel!r} is not one of reliable, best_effort")
        from gs2pose_ros.bop import BopScene

        self.scene = BopScene(get("scene_dir"))
        self.im_ids = self.scene.im_ids
        if not self.im_ids:
            raise ConfigError(f"{self.scene.path}: the scene has no images")
        self.depth_encoding = enc
        self.frame_id = get("frame_id")
        self.loop = bool(get("loop"))
        self.exit_at_end = bool(get("exit_at_end"))
        self.with_depth = bool(get("publish_depth")) and self.scene.has_depth
        self.publish_gt = bool(get("publish_gt"))
        self.gt_obj_id = int(get("gt_obj_id"))
        self.use_cache = bool(get("cache"))
        self.wait_subs = int(get("wait_for_subscribers"))
        self._cache: dict[int, tuple] = {}
        self.finished = False
        self.published = 0

        qos = QoSProfile(depth=5, history=HistoryPolicy.KEEP_LAST,
                         reliability=ReliabilityPolicy.RELIABLE if rel == "reliable" else ReliabilityPolicy.BEST_EFFORT)
        self.pub_image = self.create_publisher(Image, IMAGE_TOPIC, qos)
        self.pub_depth = self.create_publisher(Image, DEPTH_TOPIC, qos) if self.with_depth else None
        self.pub_info = self.create_publisher(CameraInfo, INFO_TOPIC, qos)
        self.pub_gt = self.create_publisher(PoseStamped, "~/gt_pose", 10) if self.publish_gt else None
        self._index = 0
        self._t0 = time.monotonic() + float(get("start_delay"))
        self.timer = self.create_timer(1.0 / float(get("rate")), self._tick)
        self.get_logger().info(
            f"replaying {len(self.im_ids)} frames of {self.scene.path} at {get('rate'):g} Hz"
            f"{' (looping)' if self.loop else ''}: {self.pub_image.topic_name}"
            + (f", {self.pub_depth.topic_name} ({enc})" if self.pub_depth else ", no depth")
            + f", {self.pub_info.topic_name}")

    def _messages(self, im_id: int) -> tuple:
        """(image, depth or None, camera_info, T_cam_obj or None) without header stamps."""
        if im_id in self._cache:
            return self._cache[im_id]
        cam = self.scene.camera(im_id)
        rgb = self.scene.rgb(im_id)
        image = convert.rgb_to_image(rgb)
        depth = None
        if self.with_depth:
            d = self.scene.depth(im_id)
            depth = convert.metres_to_depth_image(d, encoding=self.depth_encoding) if d is not None else None
        info = convert.K_to_camera_info(cam.K, cam.width, cam.height)
        T = None
        if self.publish_gt and self.scene.has_gt:
            for inst in self.scene.gt(im_id):
                if self.gt_obj_id < 0 or inst.obj_id == self.gt_obj_id:
                    T = inst.T
                    break
        out = (image, depth, info, T)
        if self.use_cache:
            self._cache[im_id] = out
        return out

    def _tick(self) -> None:
        if self.finished or time.monotonic() < self._t0:
            return
        if self.wait_subs and self.published == 0:
            pubs = [p for p in (self.pub_image, self.pub_depth, self.pub_info) if p is not None]
            if min(p.get_subscription_count() for p in pubs) < self.wait_subs:
                return
        if self._index >= len(self.im_ids):
            if not self.loop:
                self.finished = True
                self.get_logger().info(f"replay finished after {self.published} frames")
                return
            self._index = 0
        im_id = self.im_ids[self._index]
        self._index += 1
        image, depth, info, T = self._messages(im_id)
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)
        image.header = header
        info.header = header
        self.pub_image.publish(image)
        if depth is not None:
            depth.header = header
            self.pub_depth.publish(depth)
        self.pub_info.publish(info)
        if self.pub_gt is not None and T is not None:
            self.pub_gt.publish(convert.to_pose_stamped(T, header))
        self.published += 1


def _spin_until_finished(node: "ReplayNode") -> None:
    while rclpy.ok() and not (node.finished and node.exit_at_end):
        rclpy.spin_once(node, timeout_sec=0.1)


def main(args=None) -> int:
    """Entry point of ``gs2pose_replay``: status 0 at the end or on Ctrl-C, 2 for a bad scene/parameter."""
    from gs2pose_ros.ros.lifecycle import run_node

    return run_node(ReplayNode, _spin_until_finished, NODE_NAME, args)


if __name__ == "__main__":
    sys.exit(main())
