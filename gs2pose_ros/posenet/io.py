"""Pose-Net weight files: safetensors weights plus a plain JSON sidecar; nothing is unpickled.

Layout for ``--out DIR/posenet.safetensors`` (any suffix works; the weights are always safetensors):

* ``DIR/posenet.safetensors``: the network's ``state_dict`` (float32 tensors).
* ``DIR/posenet.json``: ``{"format": "gs2pose-posenet", "version": 1, "config": PoseNetConfig,
  "object": ObjectMetadata, "weights_sha256": ..., "training": {...}}``.

:func:`load_posenet` checks everything it can (file presence, JSON, format tag, config, checksum,
tensor names and shapes) and raises :class:`ModelFileError` naming the file and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from gs2pose_ros.errors import ConfigError, ModelFileError
from gs2pose_ros.gaussians import ObjectMetadata
from gs2pose_ros.posenet.network import PoseNet, PoseNetConfig

__all__ = ["FORMAT", "VERSION", "sidecar_path", "save_posenet", "load_posenet"]

FORMAT = "gs2pose-posenet"
VERSION = 1
_RETRAIN = "retrain it with `gs2pose train-posenet --model MODEL.ply --out FILE`"


def sidecar_path(weights_path) -> Path:
    """The JSON that belongs to a weights file: same name, ``.json`` suffix."""
    return Path(weights_path).with_suffix(".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_posenet(net: PoseNet, metadata: ObjectMetadata, path, training: dict | None = None) -> Path:
    """Writes the weights (safetensors) to ``path`` and the JSON sidecar beside it; returns ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
    os.replace(tmp, path)
    side = {
        "format": FORMAT,
        "version": VERSION,
        "weights_file": path.name,
        "weights_sha256": _sha256(path),
        "config": net.config.to_dict(),
        "object": metadata.to_dict(),
        "training": training or {},
    }
    jpath = sidecar_path(path)
    tmp = jpath.with_name(jpath.name + ".tmp")
    tmp.write_text(json.dumps(side, indent=2) + "\n")
    os.replace(tmp, jpath)
    return path


def load_posenet(path, device=None, check_sha: bool = True) -> tuple[PoseNet, ObjectMetadata, dict]:
    """Reads a Pose-Net written by :func:`save_posenet` -> ``(net in eval mode, metadata, sidecar dict)``.

    Raises ModelFileError (naming the file) when a file is missing, unreadable, truncated, written by
    something else, or when the weights do not match the configuration or the checksum.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    jpath = sidecar_path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: Pose-Net weights not found; check the path or {_RETRAIN}")
    if not jpath.is_file():
        raise ModelFileError(f"{jpath}: the Pose-Net's JSON sidecar (configuration + object metadata) is "
                             f"missing next to {path.name}; copy it along with the weights or {_RETRAIN}")
    try:
        side = json.loads(jpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{jpath}: not readable as JSON ({exc}); {_RETRAIN}") from exc
    if not isinstance(side, dict) or side.get("format") != FORMAT:
        raise ModelFileError(f"{jpath}: not a Pose-Net sidecar (expected \"format\": \"{FORMAT}\"); "
                             f"pass the weights written by gs2pose train-posenet")
    if side.get("version") != VERSION:
        raise ModelFileError(f"{jpath}: Pose-Net file version {side.get('version')!r}, this code reads "
                             f"version {VERSION}; {_RETRAIN}")
    try:
        config = PoseNetConfig.from_dict(side["config"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise ModelFileError(f"{jpath}: bad or missing network configuration ({exc}); {_RETRAIN}") from exc
    try:
        metadata = ObjectMetadata.from_dict(side["object"], source_path=f"{jpath}:object")
    except KeyError as exc:
        raise ModelFileError(f"{jpath}: no object metadata; {_RETRAIN}") from exc
    if check_sha and side.get("weights_sha256") and side["weights_sha256"] != _sha256(path):
        raise ModelFileError(f"{path}: the weights do not match the checksum recorded in {jpath.name} "
                             f"(a different or modified weights file); use the pair written together, or {_RETRAIN}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: not a readable safetensors file, or truncated ({exc}); {_RETRAIN}") from exc
    net = PoseNet(config)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelFileError(f"{path}: tensors do not match the configuration in {jpath.name} "
                             f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                             f"{unexpected[:3]}{'...' if len(unexpected) > 3 else ''}); {_RETRAIN}")
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ModelFileError(f"{path}: tensor {k} has shape {tuple(state[k].shape)}, the configuration in "
                             f"{jpath.name} needs {tuple(expected[k].shape)} ({len(bad)} mismatches); {_RETRAIN}")
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        raise ModelFileError(f"{path}: non-finite values in {nonfinite[:3]} (training diverged?); {_RETRAIN}")
    net.load_state_dict(state)
    net.eval()
    if device is not None:
        net.to(device)
    return net, metadata, side
