"""Soak benchmark of gs2pose_node: a 30 Hz camera replay, processing slower than that, for minutes.

Starts the replay (looping a BOP scene at --rate) and the node (real tracker, shipped printed_box
assets by default) as their own processes, in a DDS domain of their own with discovery kept on
this machine, and listens to ~/estimate. Reports, per minute: estimates received, the
image-stamp-to-estimate latency (median, p90, max: bounded if the node never builds a backlog),
the node's resident memory, and the replay frames the node dropped. Prints a markdown table.

    .venv/bin/python bench/bench_node_soak.py --scene demo_output/data/test/000000 --minutes 10
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main() -> int:
    from gs2pose_ros.commands.demo import shipped_assets

    model, posenet = shipped_assets("printed_box")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", required=True, help="BOP scene folder to replay (e.g. demo_output/data/test/000000)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=30.0, help="replay rate, Hz")
    parser.add_argument("--model", default=str(model))
    parser.add_argument("--posenet", default=str(posenet))
    args = parser.parse_args()

    domain = random.SystemRandom().randint(1, 101)
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": str(domain),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")})
    remaps = ["-r", "image:=/camera/color/image_raw", "-r", "depth:=/camera/aligned_depth_to_color/image_raw",
              "-r", "camera_info:=/camera/color/camera_info"]
    node = subprocess.Popen([sys.executable, "-m", "gs2pose_ros.ros.pose_node", "--ros-args",
                             "-p", f"model_path:={args.model}", "-p", f"posenet_path:={args.posenet}", *remaps],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    replay = subprocess.Popen([sys.executable, "-m", "gs2pose_ros.ros.replay", "--ros-args",
                               "-p", f"scene_dir:={args.scene}", "-p", f"rate:={args.rate}", "-p", "loop:=true",
                               "-p", "wait_for_subscribers:=1"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    import rclpy
    from gs2pose_ros_msgs.msg import ObjectPoseEstimate
    from sensor_msgs.msg import Image

    rclpy.init()
    listener = rclpy.create_node("soak_listener")
    estimates: list[tuple[float, float, bool]] = []  # (arrival, latency s, pose_valid)
    images = [0]

    def on_estimate(msg: ObjectPoseEstimate) -> None:
        now = time.time()
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        estimates.append((now, now - stamp, bool(msg.pose_valid)))

    listener.create_subscription(ObjectPoseEstimate, "/gs2pose_node/estimate", on_estimate, 100)
    listener.create_subscription(Image, "/camera/color/image_raw", lambda _m: images.__setitem__(0, images[0] + 1),
                                 rclpy.qos.qos_profile_sensor_data)
    rows = []
    start = time.time()
    try:
        minute_start, first_est, first_img = start, 0, 0
        while time.time() - start < args.minutes * 60.0:
            rclpy.spin_once(listener, timeout_sec=0.05)
            if node.poll() is not None:
                raise SystemExit(f"the node exited ({node.returncode}): {node.stderr.read()[-2000:]}")
            if time.time() - minute_start >= 60.0:
                window = estimates[first_est:]
                lat = np.array([w[1] for w in window]) * 1000.0
                rows.append((len(rows) + 1, len(window), images[0] - first_img,
                             np.median(lat) if len(lat) else float("nan"),
                             np.percentile(lat, 90) if len(lat) else float("nan"),
                             lat.max() if len(lat) else float("nan"),
                             sum(w[2] for w in window), rss_mib(node.pid)))
                print("minute %d: %d estimates, %d images, latency median %.0f ms p90 %.0f max %.0f, "
                      "%d valid, node RSS %.0f MiB" % rows[-1], flush=True)
                minute_start, first_est, first_img = time.time(), len(estimates), images[0]
    finally:
        for proc in (replay, node):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        listener.destroy_node()
        rclpy.try_shutdown()

    print(f"\nSoak: replay at {args.rate:g} Hz of {args.scene}, {args.minutes:g} min, node with "
          f"{Path(args.model).name} / {Path(args.posenet).name}\n")
    print("| minute | estimates | images published | latency median ms | p90 ms | max ms | valid poses | node RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %d | %d | %d | %.0f | %.0f | %.0f | %d | %.0f |" % r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
