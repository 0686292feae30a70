"""The ``gs2pose`` command-line program.

Each subcommand lives beside the stage it drives, in a module that exposes
``add_parser(subparsers)``; the parser it registers sets ``func`` to the function that runs it.
Those modules import heavy libraries (torch, trimesh) inside the run functions, so
``gs2pose --help`` stays fast. Errors of the project's own types end the program with one line
and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gs2pose_ros import __version__
from gs2pose_ros.errors import Gs2PoseError

# Modules that register subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "gs2pose_ros.commands.info",
    "gs2pose_ros.synth.cli",
    "gs2pose_ros.commands.build_model",
    "gs2pose_ros.posenet.cli",
    "gs2pose_ros.evaluate",
    "gs2pose_ros.commands.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gs2pose",
        description="6D object pose estimation and tracking with 3D Gaussian Splatting (GS2Pose).",
    )
    parser.add_argument("--version", action="version", version=f"gs2pose_ros {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except Gs2PoseError as error:
        print(f"gs2pose {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gs2pose {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
