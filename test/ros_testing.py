"""Helpers for tests that start real ROS 2 processes (rclpy + Fast DDS from the venv).

Every such process keeps DDS discovery on this machine and gets a domain of its own, so
concurrent test runs on one machine never see each other.
"""

from __future__ import annotations

import os
import random

import pytest


def ros_env(domain_id: int) -> dict[str, str]:
    """A copy of the environment for a child process in ``domain_id``, discovery local only."""
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    return env


def pick_domain_id() -> int:
    """A domain id unlikely to be used by another test run on this machine (1..101)."""
    return random.SystemRandom().randint(1, 101)


def require_rclpy():
    """Skip the calling test with a reason when rclpy is not importable."""
    return pytest.importorskip("rclpy", reason="rclpy is not installed: run `make setup` (the ROS 2 wheels)")
