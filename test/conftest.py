"""Shared pytest fixtures.

``lmo_scene_dir``: the LM-O scene 2 dataset root (BOP layout), ``../shared/data/lmo_scene2`` from
the repository root, or ``$GS2POSE_SHARED_DATA/lmo_scene2``; tests using it are skipped when it
is absent.
"""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    env = os.environ.get("GS2POSE_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def lmo_scene_dir() -> Path:
    path = shared_data_dir() / "lmo_scene2"
    if not (path / "test" / "000002" / "scene_camera.json").is_file():
        pytest.skip(
            f"LM-O scene 2 not found at {path} (set GS2POSE_SHARED_DATA to the folder holding lmo_scene2)"
        )
    return path
