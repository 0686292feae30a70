"""The pose node's own overhead per 640x480 RGB-D frame, without the estimator.

Times, per frame, what gs2pose_node does around PoseTracker.track():

1. deserialise: the three incoming messages (colour rgb8, depth 16UC1, camera_info) from their
   CDR bytes to Python objects, as rclpy does for a subscription callback;
2. sync: StampSync.add for the three (the subscription callbacks' work);
3. hand-off: LatestSlot.put + get (the worker's wake-up latency is not included);
4. convert: PoseNode.frame_from (message -> numpy, validation, Frame.validated);
5. outputs: PoseNode.publish_outputs for a confident pose (~/estimate, ~/pose, /tf; the debug
   image and marker are off, as they are without subscribers), with a subscriber on each topic.

The estimator is a stand-in defined here that returns a fixed pose at once. Prints a table and,
with --write, replaces the "ROS node overhead" section of docs/benchmarks.md.

    .venv/bin/python bench/bench_node_overhead.py --frames 300 --write
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import time
from pathlib import Path

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 101)))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
W, H = 640, 480


class StandIn:
    object_name, device, diameter = "printed_box", "cpu", 0.1
    bbox_min, bbox_max = np.full(3, -0.05), np.full(3, 0.05)

    def __init__(self):
        from gs2pose_ros.frame import PoseEstimate, TrackingState

        T = np.eye(4)
        T[:3, 3] = [0.02, -0.01, 0.6]
        self.answer = PoseEstimate(T, 0.9, TrackingState.TRACKING, True, iterations=10)

    def track(self, frame):
        return self.answer

    estimate = track

    def reset(self):
        pass

    def render_overlay(self, frame, estimate):
        return frame.rgb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = ap.parse_args()

    import rclpy
    from geometry_msgs.msg import PoseStamped
    from gs2pose_ros_msgs.msg import ObjectPoseEstimate
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header
    from tf2_msgs.msg import TFMessage

    from gs2pose_ros.ros import convert
    from gs2pose_ros.ros.pose_node import TF_QOS, PoseNode
    from gs2pose_ros.ros.sync import LatestSlot, StampSync

    rclpy.init()
    node = PoseNode(tracker=StandIn())
    sink = rclpy.create_node("bench_sink")
    for typ, topic, qos in ((ObjectPoseEstimate, "/gs2pose_node/estimate", 10), (PoseStamped, "/gs2pose_node/pose", 10),
                            (TFMessage, "/tf", TF_QOS)):
        sink.create_subscription(typ, topic, lambda m: None, qos)
    time.sleep(1.0)  # discovery

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = rng.uniform(0.3, 2.0, (H, W))
    K = np.array([[615.0, 0, 320], [0, 615.0, 240], [0, 0, 1]])
    raw = (serialize_message(convert.rgb_to_image(rgb)), serialize_message(convert.metres_to_depth_image(depth)),
           serialize_message(convert.K_to_camera_info(K, W, H)))
    sync, slot = StampSync(slop=0.02), LatestSlot()
    stages = {k: [] for k in ("deserialise", "sync", "hand-off", "convert", "outputs", "total")}
    n_warm = 20
    for i in range(args.frames + n_warm):
        stamp_ns = 1_700_000_000_000_000_000 + i * 33_333_333
        header = Header(frame_id="camera_color_optical_frame")
        header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        t0 = time.perf_counter()
        img = deserialize_message(raw[0], Image)
        dep = deserialize_message(raw[1], Image)
        info = deserialize_message(raw[2], CameraInfo)
        img.header = dep.header = info.header = header
        t1 = time.perf_counter()
        sync.add_image(stamp_ns, img)
        sync.add_depth(stamp_ns, dep)
        synced = sync.add_info(stamp_ns, info)
        t2 = time.perf_counter()
        slot.put(synced)
        synced = slot.get(timeout=1.0)
        t3 = time.perf_counter()
        frame = node.frame_from(synced)
        t4 = time.perf_counter()
        node.publish_outputs(img.header, frame, node.tracker.track(frame), synced.arrival)
        t5 = time.perf_counter()
        if i >= n_warm:
            for k, v in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0)):
                stages[k].append(v * 1e3)
    node.close()
    node.destroy_node()
    sink.destroy_node()
    rclpy.shutdown()

    rows = [(k, float(np.median(v)), float(np.percentile(v, 90))) for k, v in stages.items()]
    table = ["| stage | median (ms) | p90 (ms) |", "|---|---|---|"]
    table += [f"| {k} | {med:.3f} | {p90:.3f} |" for k, med, p90 in rows]
    cpu = platform.processor() or platform.machine()
    text = "\n".join([
        "## ROS node overhead",
        "",
        f"gs2pose_node's own work per {W}x{H} RGB-D frame (rgb8 + 16UC1 + camera_info), without the estimator",
        f"(bench/bench_node_overhead.py, {args.frames} frames after {n_warm} warm-up; {os.cpu_count()} cores, {cpu},",
        f"Python {platform.python_version()}, rclpy + Fast DDS wheels). 'outputs' publishes ~/estimate, ~/pose and",
        "/tf to a subscriber in the same process (no debug image or marker: those run only when subscribed).",
        "",
        *table,
        "",
        "Not included: DDS transport of the incoming images between processes, the worker thread's wake-up,",
        "and the debug overlay (rendered by the estimator, only while ~/debug/image has subscribers).",
        "",
    ])
    print(text)
    if args.write:
        path = ROOT / "docs" / "benchmarks.md"
        old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
        pattern = re.compile(r"^## ROS node overhead\n.*?(?=^## |\Z)", re.S | re.M)
        new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
        path.write_text(new, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
