"""ament_python package: installs with `colcon build` in a ROS 2 workspace and with `pip install .`."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "gs2pose_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["data/**/*"]},
    include_package_data=True,
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    python_requires=">=3.10",
    install_requires=[
        "numpy>=1.26",
        "scipy>=1.11",
        "opencv-python-headless>=4.9",
        "safetensors>=0.4",
        "torch>=2.2",
        "trimesh>=4.0",
        "embreex>=2.17",
        "pillow>=10",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "pyyaml>=6",
    ],
    extras_require={"cuda": ["gsplat==1.5.3", "packaging"]},
    zip_safe=False,
    maintainer="gs2pose_ros maintainers",
    maintainer_email="maintainers@gs2pose-ros.dev",
    description="6D object pose estimation and tracking with 3D Gaussian Splatting (GS2Pose) for ROS 2.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "gs2pose = gs2pose_ros.cli:main",
            "gs2pose_node = gs2pose_ros.ros.pose_node:main",
            "gs2pose_replay = gs2pose_ros.ros.replay:main",
        ],
    },
)
