"""The pose node's parameters: one table of descriptors, defaults from config/gs2pose.yaml, checks.

Every parameter is declared with a ``ParameterDescriptor`` (description, range, read-only where a
change at runtime would need a restart anyway). Their defaults live in ``config/gs2pose.yaml``
(the file ``pose.launch.py`` passes as ``params_file``); :func:`load_defaults` reads them from the
installed share folder (``share/gs2pose_ros/config``) or, in a source tree, from ``config/``.
:func:`validate` checks the values once at start-up and raises one :class:`ConfigError` or
:class:`ModelFileError` whose message is a single line naming the parameter or file and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gs2pose_ros.errors import ConfigError, ModelFileError

__all__ = ["ParamSpec", "SPECS", "CHOICES", "defaults_file", "load_defaults", "declare_all", "read_all",
           "validate", "check_choice"]

PACKAGE = "gs2pose_ros"


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: type
    description: str
    read_only: bool = True
    range: tuple[float, float] | None = None  # inclusive, for int / float
    choices: tuple[str, ...] | None = None  # for strings


SPECS: tuple[ParamSpec, ...] = (
    ParamSpec("model_path", str, "Gaussian model file of the object (required)"),
    ParamSpec("posenet_path", str, "Pose-Net weights file (required)"),
    ParamSpec("tracker_config", str, "Tracker/refiner settings file (YAML or JSON, see docs/tracking.md); "
              "empty = the built-in defaults"),
    ParamSpec("object_name", str, "Object name in ~/estimate's object_id; empty = the model's own name"),
    ParamSpec("child_frame_id", str, "TF child frame (and marker frame) of the object; empty = object_name"),
    ParamSpec("device", str, "Where the estimator runs", choices=("auto", "cpu", "cuda")),
    ParamSpec("use_depth", bool, "Subscribe to depth and use it; false = RGB-only mode"),
    ParamSpec("qos_reliability", str, "Reliability of the camera subscriptions (best_effort = sensor-data QoS)",
              choices=("best_effort", "reliable")),
    ParamSpec("qos_depth", int, "History depth of the camera subscriptions", range=(1, 100)),
    ParamSpec("sync_queue_size", int, "Messages kept per stream for pairing by stamp", range=(1, 100)),
    ParamSpec("sync_slop", float, "Largest stamp difference (s) between colour, depth and camera_info of a set",
              read_only=False, range=(0.0, 1.0)),
    ParamSpec("tracking_mode", str, "track: warm start from the previous pose; estimate: every frame alone",
              read_only=False, choices=("track", "estimate")),
    ParamSpec("publish_tf", bool, "Broadcast header.frame_id -> child_frame_id on /tf while the pose is confident",
              read_only=False),
    ParamSpec("publish_marker", bool, "Publish the bounding-box marker on ~/marker (only while subscribed)",
              read_only=False),
    ParamSpec("warn_throttle_sec", float, "Seconds between repeated warnings of one kind", range=(0.0, 3600.0)),
    ParamSpec("input_timeout", float, "Seconds without a complete input set before warning about the inputs",
              read_only=False, range=(0.1, 3600.0)),
    ParamSpec("diagnostics_period", float, "Seconds between /diagnostics messages", range=(0.1, 60.0)),
)

CHOICES = {s.name: s.choices for s in SPECS if s.choices}


def defaults_file() -> Path:
    """config/gs2pose.yaml: the installed share folder's, else the source tree's."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / "config" / "gs2pose.yaml")
    except Exception:  # not in an ament index (plain pip install / source tree)
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "config" / "gs2pose.yaml")
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(
        "config/gs2pose.yaml (the parameter defaults) was not found in "
        + " or ".join(str(p.parent) for p in candidates)
        + "; reinstall gs2pose_ros (colcon build / scripts/setup_venv.sh)"
    )


def load_defaults(path: str | Path | None = None) -> dict[str, Any]:
    """The ``/**: ros__parameters`` mapping of the defaults file, checked against :data:`SPECS`."""
    path = Path(path) if path is not None else defaults_file()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        params = data["/**"]["ros__parameters"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: cannot read the parameter defaults ({type(e).__name__}: {e})") from None
    names = {s.name for s in SPECS}
    missing = sorted(names - set(params))
    unknown = sorted(set(params) - names)
    if missing or unknown:
        raise ConfigError(f"{path}: parameters missing {missing} / unknown {unknown}; the file does not match the node")
    out = {}
    for s in SPECS:
        v = params[s.name]
        if s.type is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, s.type) or (s.type is int and isinstance(v, bool)):
            raise ConfigError(f"{path}: {s.name} = {v!r} should be a {s.type.__name__}")
        out[s.name] = v
    return out


def descriptor(spec: ParamSpec):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    types = {str: ParameterType.PARAMETER_STRING, bool: ParameterType.PARAMETER_BOOL,
             int: ParameterType.PARAMETER_INTEGER, float: ParameterType.PARAMETER_DOUBLE}
    d = ParameterDescriptor(name=spec.name, type=types[spec.type], description=spec.description,
                            read_only=spec.read_only)
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.range is not None:
        lo, hi = spec.range
        if spec.type is int:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return d


def declare_all(node, defaults: dict[str, Any] | None = None) -> None:
    """Declare every parameter of :data:`SPECS` on ``node`` (overrides from --ros-args / params files
    apply). A value outside its range, or of the wrong type, raises ConfigError naming it."""
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    defaults = load_defaults() if defaults is None else defaults
    for spec in SPECS:
        try:
            node.declare_parameter(spec.name, defaults[spec.name], descriptor(spec))
        except (InvalidParameterValueException, InvalidParameterTypeException) as e:
            raise ConfigError(f"parameter {spec.name}: {_first_line(e)} ({spec.description})") from None


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split())


def read_all(node) -> dict[str, Any]:
    return {s.name: node.get_parameter(s.name).value for s in SPECS}


def check_choice(name: str, value: Any) -> str | None:
    """None if ``value`` is allowed for the choice parameter ``name``, else the reason."""
    choices = CHOICES.get(name)
    if choices and value not in choices:
        return f"parameter {name} = {value!r} is not one of {', '.join(choices)}"
    return None


def _check_file(param: str, path: str, what: str) -> None:
    if not path:
        raise ConfigError(f"parameter {param} is empty: give the {what} (--ros-args -p {param}:=/path/to/file)")
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileError(f"{param}: {p}: {what} does not exist")
    if p.is_dir():
        raise ModelFileError(f"{param}: {p}: {what} is a directory, expected a file")
    if not os.access(p, os.R_OK):
        raise ModelFileError(f"{param}: {p}: {what} is not readable (permission denied)")
    if p.stat().st_size == 0:
        raise ModelFileError(f"{param}: {p}: {what} is empty (0 bytes)")


def validate(values: dict[str, Any]) -> None:
    """Start-up checks; raises one ConfigError / ModelFileError with a single-line message."""
    for name in CHOICES:
        problem = check_choice(name, values[name])
        if problem:
            raise ConfigError(problem)
    _check_file("model_path", values["model_path"], "Gaussian model file")
    _check_file("posenet_path", values["posenet_path"], "Pose-Net weights file")
    if values["tracker_config"]:
        _check_file("tracker_config", values["tracker_config"], "tracker config file")
