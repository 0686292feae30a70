"""The repository builds with colcon in a ROS 2 workspace, with the command the README gives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)

pytestmark = pytest.mark.slow


def test_colcon_builds_both_packages(tmp_path):
    colcon = shutil.which("colcon", path=str(VENV / "bin"))
    if colcon is None:
        pytest.skip("colcon is not installed in this environment: run `make setup`")
    workspace = tmp_path / "ws"
    (workspace / "src").mkdir(parents=True)
    (workspace / "src" / "gs2pose_ros").symlink_to(REPO)
    env = {
        **os.environ,
        # The ROS 2 wheels in the venv play the role of /opt/ros/<distro>.
        "AMENT_PREFIX_PATH": str(VENV),
        "CMAKE_PREFIX_PATH": str(VENV),
        "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '')}",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # The README's command, plus the build options this machine's wheels need.
    result = subprocess.run(
        [colcon, "build", "--base-paths", "src", "src/gs2pose_ros/msg",
         "--cmake-args", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    install = workspace / "install"
    share = install / "gs2pose_ros" / "share"
    assert (share / "ament_index" / "resource_index" / "packages" / "gs2pose_ros").is_file()
    assert (share / "gs2pose_ros" / "package.xml").is_file()
    assert (install / "gs2pose_ros" / "lib" / "gs2pose_ros" / "gs2pose").is_file()
    generated = list((install / "gs2pose_ros_msgs").rglob("_object_pose_estimate.py"))
    assert generated, "colcon did not generate the Python code of ObjectPoseEstimate"
