"""``gs2pose info``: what this installation can do (devices, renderer backends, ROS pieces)."""

from __future__ import annotations

import argparse
import importlib
import os


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="report versions, devices and which optional pieces (CUDA, gsplat, ROS) are usable",
        description="Report versions, the compute device, and which optional pieces are usable here.",
    )
    parser.set_defaults(func=run)


def _probe(module: str) -> str:
    """Import ``module`` and return its version, or why it cannot be used."""
    try:
        mod = importlib.import_module(module)
    except Exception as error:  # any import failure means "not usable here"; report why
        return f"not usable ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    return str(getattr(mod, "__version__", "present"))


def collect() -> dict[str, str]:
    """The facts `gs2pose info` prints, as a name -> value mapping."""
    import torch

    from gs2pose_ros import __version__

    facts = {
        "gs2pose_ros": __version__,
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "CUDA": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
    }
    facts["gsplat"] = _probe("gsplat")
    facts["renderer backend (auto)"] = (
        "gsplat (CUDA)" if torch.cuda.is_available() and not facts["gsplat"].startswith("not") else "cpu (PyTorch)"
    )
    for module in ("numpy", "scipy", "cv2", "trimesh", "embreex"):
        facts[module] = _probe(module)
    facts["rclpy"] = _probe("rclpy")
    facts["gs2pose_ros_msgs"] = _probe("gs2pose_ros_msgs.msg")
    facts["tf2_msgs"] = _probe("tf2_msgs.msg")
    facts["ROS_DOMAIN_ID"] = os.environ.get("ROS_DOMAIN_ID", "(unset: 0)")
    facts["ROS_AUTOMATIC_DISCOVERY_RANGE"] = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "(unset: SUBNET)")
    return facts


def run(args: argparse.Namespace) -> int:
    facts = collect()
    width = max(len(name) for name in facts)
    for name, value in facts.items():
        print(f"{name:<{width}}  {value}")
    return 0
