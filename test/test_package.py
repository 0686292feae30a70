"""The package as a user meets it: install layout, console script, ROS-free core, set-up."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

import gs2pose_ros

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _core_modules() -> list[str]:
    """Every module of the package except the ROS adapter subpackage."""
    names = []
    for info in pkgutil.walk_packages(gs2pose_ros.__path__, prefix="gs2pose_ros."):
        if info.name == "gs2pose_ros.ros" or info.name.startswith("gs2pose_ros.ros."):
            continue
        names.append(info.name)
    return names


def test_core_imports_without_ros_in_a_fresh_interpreter():
    modules = _core_modules()
    assert "gs2pose_ros.cli" in modules
    # A fresh interpreter in which any attempt to import ROS raises: the core must not try.
    code = f"""
import importlib, sys
class BlockRos:
    def find_spec(self, name, path=None, target=None):
        root = name.split('.')[0]
        if root in ('rclpy', 'rosidl_runtime_py', 'ament_index_python') or root.endswith('_msgs') or root.endswith('_srvs'):
            raise ImportError('ROS import attempted: ' + name)
        return None
sys.meta_path.insert(0, BlockRos())
for name in {modules!r}:
    importlib.import_module(name)
print('imported', len({modules!r}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"imported {len(modules)}" in result.stdout


def test_console_script_help_lists_subcommands():
    result = subprocess.run([str(VENV_BIN / "gs2pose"), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: gs2pose" in result.stdout
    for command in ("info", "synth", "demo"):
        assert command in result.stdout


def test_the_command_line_parser_needs_no_torch():
    """`gs2pose --help` and every subcommand's help stay fast: building the parser imports no heavy
    library (torch alone took ~1.1 s of a 1.7 s `--help`)."""
    code = ("import sys; from gs2pose_ros.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'trimesh', 'cv2', 'scipy', 'matplotlib') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_info_reports_devices_and_ros_pieces():
    result = subprocess.run([str(VENV_BIN / "gs2pose"), "info"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch" in result.stdout and "renderer backend" in result.stdout
    assert "gs2pose_ros_msgs" in result.stdout


def test_package_xml_declares_the_named_dependencies():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "gs2pose_ros"
    assert root.find("export/build_type").text == "ament_python"
    declared = {el.text for el in root if el.tag.endswith("depend")}
    for dep in ("rclpy", "sensor_msgs", "geometry_msgs", "std_srvs", "tf2_ros", "tf2_msgs", "cv_bridge",
                "tf_transformations", "launch_testing", "gs2pose_ros_msgs", "python3-numpy"):
        assert dep in declared, f"package.xml does not declare {dep}"
    msg_root = ET.parse(REPO / "msg" / "package.xml").getroot()
    assert msg_root.findtext("name") == "gs2pose_ros_msgs"
    assert msg_root.find("export/build_type").text == "ament_cmake"
    assert msg_root.findtext("member_of_group") == "rosidl_interface_packages"


def test_wheel_carries_the_ament_index_marker_and_share_files(tmp_path):
    """`pip install .` must land the files ament_index_python and `ros2 launch` look for."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("gs2pose_ros-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    data = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
    assert "share/ament_index/resource_index/packages/gs2pose_ros" in data
    assert "share/gs2pose_ros/package.xml" in data
    assert any(n.endswith("entry_points.txt") for n in names)
    assert not any("/test/" in n or n.startswith("test/") for n in names)


def test_ament_index_finds_the_installed_packages():
    from ament_index_python.packages import get_package_share_directory

    share = Path(get_package_share_directory("gs2pose_ros"))
    assert (share / "package.xml").is_file()
    assert Path(get_package_share_directory("gs2pose_ros_msgs")).is_dir()


def test_setup_is_idempotent_and_quick_the_second_time():
    """A second set-up run re-executes no step (each step prints a line when it runs)."""
    result = subprocess.run(["bash", str(REPO / "scripts" / "setup_venv.sh")], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[setup]" not in result.stdout, result.stdout


@pytest.mark.parametrize("module", ["gs2pose_ros.errors", "gs2pose_ros.cli"])
def test_modules_have_docstrings(module):
    __import__(module)
    assert sys.modules[module].__doc__
