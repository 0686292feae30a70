"""Gaussian models: ply/json files, activations, NOCS colours, spherical harmonics."""

import json
import math

import numpy as np
import pytest
import torch

from gs2pose_ros.errors import ModelFileError
from gs2pose_ros.gaussians import (SH_C0, GaussianModel, ObjectMetadata, eval_sh, metadata_path,
                                   nocs_colors, procedural_box_model, read_gaussian_ply,
                                   read_object_metadata, write_gaussian_ply)


def random_model(n=50, degree=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return GaussianModel(
        means=torch.randn(n, 3, generator=g) * 0.05,
        quats=torch.randn(n, 4, generator=g),
        log_scales=torch.randn(n, 3, generator=g) - 5,
        opacity_logits=torch.randn(n, generator=g),
        sh=torch.randn(n, k, 3, generator=g),
    )


def assert_same_model(a, b):
    for name, t in a.tensors().items():
        torch.testing.assert_close(getattr(b, name), t, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_round_trip(tmp_path, degree):
    m = random_model(degree=degree)
    path = write_gaussian_ply(m, tmp_path / "obj.ply")
    back = read_gaussian_ply(path)
    assert back.sh_degree == degree and back.num_gaussians == 50
    assert_same_model(m, back)  # float32 in, float32 out: bit exact


def test_ply_layout_is_the_reference_3dgs_one(tmp_path):
    from plyfile import PlyData

    m = random_model(n=7, degree=2)  # K = 9: 24 f_rest
    write_gaussian_ply(m, tmp_path / "m.ply")
    v = PlyData.read(str(tmp_path / "m.ply"))["vertex"]
    names = [p.name for p in v.properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:33] == [f"f_rest_{i}" for i in range(24)]
    assert names[33:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2",
                          "rot_3"]
    d = v.data
    # channel-major: all R coefficients (bands 1..8), then G, then B
    np.testing.assert_array_equal(d["f_rest_0"], m.sh[:, 1, 0].numpy())
    np.testing.assert_array_equal(d["f_rest_7"], m.sh[:, 8, 0].numpy())
    np.testing.assert_array_equal(d["f_rest_8"], m.sh[:, 1, 1].numpy())
    np.testing.assert_array_equal(d["f_rest_23"], m.sh[:, 8, 2].numpy())
    np.testing.assert_array_equal(d["rot_0"], m.quats[:, 0].numpy())  # w first
    np.testing.assert_array_equal(d["opacity"], m.opacity_logits.numpy())  # logit
    np.testing.assert_array_equal(d["scale_2"], m.log_scales[:, 2].numpy())  # log
    assert (d["nx"] == 0).all()


def test_reads_an_ascii_ply_with_extra_properties(tmp_path):
    from plyfile import PlyData, PlyElement

    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
             "scale_2", "rot_0", "rot_1", "rot_2", "rot_3", "extra"]
    arr = np.zeros(3, dtype=[(n, "f4") for n in names])
    arr["rot_0"] = 2.0  # un-normalised on purpose
    arr["x"] = [0.1, 0.2, 0.3]
    PlyData([PlyElement.describe(arr, "vertex")], text=True).write(str(tmp_path / "a.ply"))
    m = read_gaussian_ply(tmp_path / "a.ply")
    assert m.sh_degree == 0
    torch.testing.assert_close(m.means[:, 0], torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(m.unit_quats, torch.tensor([[1.0, 0, 0, 0]] * 3))


def test_activations():
    m = random_model(degree=1)
    torch.testing.assert_close(m.scales, torch.exp(m.log_scales))
    torch.testing.assert_close(m.opacities, torch.sigmoid(m.opacity_logits))
    torch.testing.assert_close(m.base_colors, 0.5 + SH_C0 * m.sh[:, 0])
    torch.testing.assert_close(m.unit_quats.norm(dim=1), torch.ones(50))
    p = GaussianModel.from_points(torch.zeros(2, 3), torch.tensor([[0.2, 0.4, 0.6]] * 2),
                                  scale=0.01, opacity=0.7)
    torch.testing.assert_close(p.base_colors, torch.tensor([[0.2, 0.4, 0.6]] * 2))
    torch.testing.assert_close(p.opacities, torch.full((2,), 0.7))
    torch.testing.assert_close(p.scales, torch.full((2, 3), 0.01))


def test_tensor_helpers():
    m = random_model()
    m2 = m.clone().requires_grad_("sh", "opacity_logits")
    assert m2.sh.requires_grad and m2.opacity_logits.requires_grad and not m2.means.requires_grad
    assert [id(t) for t in m2.parameters()] == [id(m2.opacity_logits), id(m2.sh)]
    assert m2.sh.data_ptr() != m.sh.data_ptr()
    d = m2.detach()
    assert not d.sh.requires_grad and d.sh.data_ptr() == m2.sh.data_ptr()
    assert m.to(dtype=torch.float64).means.dtype == torch.float64
    assert m.subset(m.means[:, 0] > 0).num_gaussians == int((m.means[:, 0] > 0).sum())
    with pytest.raises(ValueError, match="unknown field"):
        m.requires_grad_("colour")
    with pytest.raises(ValueError, match="sh"):
        GaussianModel(m.means, m.quats, m.log_scales, m.opacity_logits, torch.zeros(50, 5, 3))


def test_metadata_round_trip(tmp_path):
    m = procedural_box_model(500)
    meta = ObjectMetadata.from_model(m, "box", obj_id=7, symmetric=True, source="procedural",
                                     symmetries_continuous=[{"axis": [0, 0, 1],
                                                             "offset": [0, 0, 0]}])
    assert meta.diameter == pytest.approx(math.sqrt(0.08**2 + 0.06**2 + 0.05**2), rel=0.05)
    write_gaussian_ply(m, tmp_path / "box.ply", metadata=meta)
    assert metadata_path(tmp_path / "box.ply") == tmp_path / "box.json"
    back = read_object_metadata(tmp_path / "box.ply")
    assert back == meta and back.near_symmetry_axes is None  # not computed
    meta.near_symmetry_axes = [{"direction": [0.0, 0.0, 1.0], "point": [-0.016, 0.0, 0.0]}]
    write_gaussian_ply(m, tmp_path / "box.ply", metadata=meta)
    assert read_object_metadata(tmp_path / "box.ply") == meta
    assert json.loads((tmp_path / "box.json").read_text())["obj_id"] == 7
    assert "box_centre" not in back.to_dict()  # derived, not stored
    np.testing.assert_allclose(ObjectMetadata("b", bbox_min=[-1, 0, 2], bbox_max=[3, 2, 4]).box_centre, [1, 1, 3])


def test_bad_metadata_raises(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        read_object_metadata(tmp_path / "nothing.json")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="a.json"):
        read_object_metadata(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"name": "x", "evil": "__import__"}')
    with pytest.raises(ModelFileError, match="unknown metadata keys"):
        read_object_metadata(tmp_path / "b.json")
    (tmp_path / "c.json").write_text('{"name": "x", "near_symmetry_axes": [{"direction": [0, 1]}]}')
    with pytest.raises(ModelFileError, match="near_symmetry_axes"):
        read_object_metadata(tmp_path / "c.json")


# ------------------------------------------------------------------------------- malformed plys


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"nope\.ply.*not found"):
        read_gaussian_ply(tmp_path / "nope.ply")


def test_truncated_file(tmp_path):
    path = write_gaussian_ply(random_model(n=100, degree=1), tmp_path / "t.ply")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 500])
    with pytest.raises(ModelFileError, match=r"t\.ply.*truncated"):
        read_gaussian_ply(path)


def test_garbage_file(tmp_path):
    (tmp_path / "g.ply").write_bytes(b"\x00\x01 not a ply at all")
    with pytest.raises(ModelFileError, match=r"g\.ply"):
        read_gaussian_ply(tmp_path / "g.ply")


def test_missing_properties_are_named(tmp_path):
    from plyfile import PlyData, PlyElement

    arr = np.zeros(2, dtype=[(n, "f4") for n in ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2",
                                                 "opacity", "rot_0", "rot_1", "rot_2", "rot_3"]])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "m.ply"))
    with pytest.raises(ModelFileError, match=r"m\.ply.*'scale_0', 'scale_1', 'scale_2'"):
        read_gaussian_ply(tmp_path / "m.ply")


def test_nan_values(tmp_path):
    m = random_model(n=10)
    m.log_scales[4, 1] = float("nan")
    write_gaussian_ply(m, tmp_path / "n.ply")
    with pytest.raises(ModelFileError, match=r"n\.ply.*non-finite.*scale.*Gaussian 4"):
        read_gaussian_ply(tmp_path / "n.ply")


def test_impossible_f_rest_count(tmp_path):
    from plyfile import PlyData, PlyElement

    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(6)] + [
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    arr = np.ones(2, dtype=[(n, "f4") for n in names])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "r.ply"))
    with pytest.raises(ModelFileError, match=r"r\.ply.*6 f_rest"):
        read_gaussian_ply(tmp_path / "r.ply")


# ------------------------------------------------------------------------------------ colours


def test_nocs_colors():
    m = procedural_box_model(300)
    meta = ObjectMetadata.from_model(m, "box")
    c = nocs_colors(m, meta)
    assert c.shape == (300, 3)
    assert float(c.min()) >= 0.0 and float(c.max()) <= 1.0
    torch.testing.assert_close(c.min(0).values, torch.zeros(3))
    torch.testing.assert_close(c.max(0).values, torch.ones(3))
    i = int(torch.argmax(m.means[:, 0]))
    assert float(c[i, 0]) == pytest.approx(1.0)
    flat = ObjectMetadata("flat", bbox_min=[0, 0, 0], bbox_max=[1, 1, 0])
    assert (nocs_colors(m, flat)[:, 2] == 0.5).all()


def test_eval_sh_degree0_and_direction_independence():
    sh = torch.randn(20, 1, 3)
    torch.testing.assert_close(eval_sh(sh, torch.randn(20, 3)), SH_C0 * sh[:, 0])
    sh = torch.randn(20, 16, 3)
    d = torch.randn(20, 3)
    torch.testing.assert_close(eval_sh(sh, d), eval_sh(sh, 3.7 * d))  # only the direction counts
    torch.testing.assert_close(eval_sh(sh, d, 0), SH_C0 * sh[:, 0])


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_eval_sh_matches_gsplat_torch_reference(degree):
    _torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    g = torch.Generator().manual_seed(degree)
    sh = torch.randn(200, 16, 3, generator=g, dtype=torch.float64)
    d = torch.randn(200, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(eval_sh(sh, d, degree),
                               _torch_impl._spherical_harmonics(degree, d, sh))
