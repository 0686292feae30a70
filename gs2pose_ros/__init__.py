"""gs2pose_ros: 6D object pose estimation and tracking with 3D Gaussian Splatting (GS2Pose).

The core (geometry, datasets, metrics, Gaussians, rendering, networks, refiner, tracker) never
imports ROS; only :mod:`gs2pose_ros.ros` does. Conventions are written once, in
``docs/conventions.md`` and :mod:`gs2pose_ros.lie`.
"""

__version__ = "0.1.0"
