"""Launch the gs2pose_ros pose node (and optionally rviz2 and the BOP camera replay).

    ros2 launch gs2pose_ros pose.launch.py model:=/path/model.ply posenet:=/path/posenet.safetensors
    ros2 launch gs2pose_ros pose.launch.py model:=... posenet:=... replay:=/data/lmo/test/000002 rviz:=true

Arguments left empty keep the value of params_file (config/gs2pose.yaml by default).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

SHARE = get_package_share_directory("gs2pose_ros")

ARGUMENTS = [
    ("model", "", "Gaussian model file of the object (parameter model_path)"),
    ("posenet", "", "Pose-Net weights file (parameter posenet_path)"),
    ("params_file", os.path.join(SHARE, "config", "gs2pose.yaml"), "node parameters (YAML)"),
    ("namespace", "", "namespace of the node (and of the replay)"),
    ("image", "/camera/color/image_raw", "colour topic (rgb8/bgr8/...)"),
    ("depth", "/camera/aligned_depth_to_color/image_raw", "depth topic registered to colour (16UC1 mm or 32FC1 m)"),
    ("camera_info", "/camera/color/camera_info", "camera_info of the colour stream"),
    ("object_name", "", "object name and TF child frame; empty = the model's name"),
    ("device", "", "auto | cpu | cuda; empty = params_file's"),
    ("use_depth", "", "true | false (RGB-only); empty = params_file's"),
    ("rviz", "false", "start rviz2 with config/gs2pose.rviz"),
    ("replay", "", "a BOP scene folder to replay as the camera (gs2pose_replay); empty = a real camera"),
    ("replay_rate", "10.0", "replay frames per second"),
    ("log_level", "info", "log level of the node"),
]


def _nodes(context):
    arg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    overrides = {}
    if arg["model"]:
        overrides["model_path"] = arg["model"]
    if arg["posenet"]:
        overrides["posenet_path"] = arg["posenet"]
    if arg["object_name"]:
        overrides["object_name"] = arg["object_name"]
    if arg["device"]:
        overrides["device"] = arg["device"]
    if arg["use_depth"]:
        overrides["use_depth"] = arg["use_depth"].lower() in ("true", "1", "yes")
    actions = [
        Node(
            package="gs2pose_ros",
            executable="gs2pose_node",
            name="gs2pose_node",
            namespace=arg["namespace"],
            parameters=[arg["params_file"], overrides],
            remappings=[("image", arg["image"]), ("depth", arg["depth"]), ("camera_info", arg["camera_info"])],
            arguments=["--ros-args", "--log-level", arg["log_level"]],
            output="screen",
            emulate_tty=True,
        )
    ]
    if arg["replay"]:
        actions.append(
            Node(
                package="gs2pose_ros",
                executable="gs2pose_replay",
                name="gs2pose_replay",
                namespace=arg["namespace"],
                parameters=[{"scene_dir": arg["replay"], "rate": float(arg["replay_rate"]), "loop": True,
                             "publish_gt": True, "wait_for_subscribers": 1}],
                # the replay publishes camera/...; point it at the node's inputs
                remappings=[("camera/color/image_raw", arg["image"]),
                            ("camera/aligned_depth_to_color/image_raw", arg["depth"]),
                            ("camera/color/camera_info", arg["camera_info"])],
                output="screen",
            )
        )
    return actions


def generate_launch_description():
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", os.path.join(SHARE, "config", "gs2pose.rviz")],
        condition=IfCondition(LaunchConfiguration("rviz")),
        output="log",
    )
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=doc) for name, default, doc in ARGUMENTS]
        + [OpaqueFunction(function=_nodes), rviz]
    )
