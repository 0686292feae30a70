"""ROS 2 side of gs2pose_ros: the pose node, the BOP camera replay and their helpers.

``convert`` and ``sync`` are plain numpy / Python (they only need the message classes, not a
running ROS), so they can be tested and benchmarked without DDS. ``pose_node`` and ``replay`` are
the executables (console scripts ``gs2pose_node`` and ``gs2pose_replay``); see docs/ros_node.md.
"""
