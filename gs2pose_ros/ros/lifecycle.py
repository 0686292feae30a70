"""The lifecycle every gs2pose_ros executable shares: one rclpy.init / shutdown, Ctrl-C ends it
cleanly (status 0), an unusable parameter or file ends it with one FATAL line (status 2)."""

from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from gs2pose_ros.errors import Gs2PoseError


def run_node(make_node: Callable[[], Node], spin: Callable[[Node], None], name: str, args=None) -> int:
    """Create the node with ``make_node``, run ``spin(node)``, clean up; return the exit status.

    ``name`` is the logger used when the node fails before it exists. A node with a ``close()``
    method (worker threads) has it called before it is destroyed.
    """
    rclpy.init(args=args)
    node = None
    status = 0
    try:
        node = make_node()
        spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Gs2PoseError as error:
        logger = node.get_logger() if node is not None else rclpy.logging.get_logger(name)
        logger.fatal(" ".join(str(error).split()))
        status = 2
    finally:
        if node is not None:
            if hasattr(node, "close"):
                node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return status
