"""The Gaussian models and Pose-Net weights shipped in ``gs2pose_ros/data/<object>/``, one set per
built-in object: they load, agree with each other, and the model is what its documented command
(``gs2pose build-model --mesh`` on the generator's mesh, 6000 Gaussians) makes."""

from __future__ import annotations

import pytest

from gs2pose_ros.commands.demo import shipped_assets
from gs2pose_ros.synth.objects import BUILTIN_OBJECTS


@pytest.mark.parametrize("obj", BUILTIN_OBJECTS)
def test_shipped_posenet_belongs_to_the_shipped_model(obj):
    """The network's NOCS box must be the model's: a different box scales every coarse pose."""
    from gs2pose_ros.gaussians import read_gaussian_ply, read_object_metadata
    from gs2pose_ros.posenet.network import PoseNetConfig
    from gs2pose_ros.posenet.io import load_posenet

    model_path, posenet_path = shipped_assets(obj)
    model = read_gaussian_ply(model_path)
    meta = read_object_metadata(model_path.with_suffix(".json"))
    net, net_meta, sidecar = load_posenet(posenet_path, device="cpu", check_sha=True)
    assert meta.name == net_meta.name == obj
    assert model.means.shape[0] == 6000
    assert net_meta.bbox_min == pytest.approx(meta.bbox_min, abs=1e-7)
    assert net_meta.bbox_max == pytest.approx(meta.bbox_max, abs=1e-7)
    assert net_meta.diameter == pytest.approx(meta.diameter, rel=1e-6)
    # the network the CPU runs at inference: the speed figures in the docs are for this size
    assert sidecar["config"] == PoseNetConfig.cpu().to_dict()


@pytest.mark.parametrize("obj", BUILTIN_OBJECTS)
def test_shipped_model_is_remade_byte_for_byte_from_the_generator_mesh(obj, tmp_path):
    from gs2pose_ros.reconstruct import build_model_from_mesh
    from gs2pose_ros.synth import OBJ_ID, write_object_model
    from gs2pose_ros.synth.objects import make_object

    # the mesh files exactly as `gs2pose synth` writes them (models/obj_000001.ply + models_info.json)
    write_object_model(tmp_path, make_object(obj, "mm"))
    out = tmp_path / "model.ply"
    build_model_from_mesh(tmp_path / f"obj_{OBJ_ID:06d}.ply", units="mm", n_gaussians=6000, name=obj, out_path=out)
    shipped_model, _ = shipped_assets(obj)
    assert out.read_bytes() == shipped_model.read_bytes()
