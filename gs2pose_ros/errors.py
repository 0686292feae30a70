"""The project's exception types.

Every message names the offending input (a file, a parameter, an array) and says what to do.
Callers that must keep running (the ROS node, long evaluations) catch :class:`Gs2PoseError`
per frame; anything else escaping is a bug.
"""


class Gs2PoseError(Exception):
    """Base class of every error gs2pose_ros raises on purpose."""


class DatasetError(Gs2PoseError):
    """A dataset file or folder is missing, unreadable or malformed (BOP scenes, meshes)."""


class ModelFileError(Gs2PoseError):
    """A Gaussian model, network weights or metadata file is missing, truncated or malformed."""


class GeometryError(Gs2PoseError, ValueError):
    """A geometric input is invalid: a non-rotation matrix, a singular intrinsics matrix..."""


class ConfigError(Gs2PoseError, ValueError):
    """A configuration value or command-line option is out of range or inconsistent."""


class InputError(Gs2PoseError, ValueError):
    """A frame given to the estimator is unusable (wrong size, encoding, all-invalid depth)."""
