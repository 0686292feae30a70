"""gs2pose_ros.mesh: loading (units, colours, errors), diameter, extents, sampling, ply writing."""

import time

import numpy as np
import pytest
import trimesh
from scipy.spatial.distance import pdist

from gs2pose_ros.errors import ConfigError, DatasetError
from gs2pose_ros.mesh import (
    load_mesh,
    mesh_diameter,
    mesh_extents,
    model_info_from_mesh,
    near_symmetry_axes,
    sample_surface_points,
    write_mesh_ply,
)

ASCII_PLY = """ply
format ascii 1.0
element vertex 4
property float x
property float y
property float z
property uchar red
property uchar green
property uchar blue
property uchar alpha
element face 2
property list uchar int vertex_indices
end_header
0 0 0 255 0 0 255
100 0 0 0 255 0 255
0 50 0 0 0 255 255
0 0 20 9 8 7 255
3 0 1 2
3 0 1 3
"""

HEADER_ONLY = """ply
format ascii 1.0
element vertex 0
property float x
property float y
property float z
element face 0
property list uchar int vertex_indices
end_header
"""

POINTS_ONLY = """ply
format ascii 1.0
element vertex 3
property float x
property float y
property float z
end_header
0 0 0
1 0 0
0 1 0
"""


def _coloured_box():
    box = trimesh.creation.box(extents=(0.02, 0.04, 0.06))
    rng = np.random.default_rng(0)
    box.visual.vertex_colors = rng.integers(0, 256, (len(box.vertices), 4), dtype=np.uint8)
    return box


def test_load_ascii_ply_mm_to_m(tmp_path):
    path = tmp_path / "obj.ply"
    path.write_text(ASCII_PLY)
    mesh = load_mesh(path)
    np.testing.assert_allclose(mesh.vertices, [[0, 0, 0], [0.1, 0, 0], [0, 0.05, 0], [0, 0, 0.02]])
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 1, 3]])
    np.testing.assert_array_equal(
        mesh.visual.vertex_colors[:, :3], [[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 8, 7]]
    )
    np.testing.assert_allclose(load_mesh(path, units="m").vertices[1], [100, 0, 0])
    with pytest.raises(ConfigError, match="'cm'"):
        load_mesh(path, units="cm")


def test_write_binary_ply_round_trip(tmp_path):
    box = _coloured_box()
    path = write_mesh_ply(box, tmp_path / "box.ply")
    head = path.read_bytes()[:400]
    assert (
        head.startswith(b"ply\nformat binary_little_endian 1.0\n")
        and b"property uchar alpha" in head
    )
    back = load_mesh(path, units="mm")
    np.testing.assert_allclose(back.vertices, box.vertices, atol=1e-8)
    np.testing.assert_array_equal(back.faces, box.faces)
    np.testing.assert_array_equal(back.visual.vertex_colors, box.visual.vertex_colors)
    raw = load_mesh(path, units="m")
    assert raw.vertices.max() == pytest.approx(30.0)  # millimetres in the file
    assert write_mesh_ply(box, tmp_path / "again.ply").read_bytes() == path.read_bytes()
    plain = trimesh.creation.box(extents=(1, 1, 1))
    path2 = write_mesh_ply(plain, tmp_path / "plain.ply", units="m")
    assert b"red" not in path2.read_bytes()[:400]
    assert len(load_mesh(path2, units="m").vertices) == 8


def test_load_obj(tmp_path):
    path = tmp_path / "tri.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\n")
    mesh = load_mesh(path, units="m")
    assert mesh.vertices.shape == (4, 3) and mesh.faces.shape == (2, 3)
    np.testing.assert_allclose(mesh.vertices[3], [0, 0, 1])


def test_load_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as e:
        load_mesh(tmp_path / "missing.ply")
    assert "missing.ply" in str(e.value)
    cases = {
        "empty.ply": (HEADER_ONLY, "the ply has no vertices"),
        "points.ply": (POINTS_ONLY, "has 3 vertices but no faces"),
        "garbage.ply": ("this is not a mesh\n", "cannot read the mesh"),
        "truncated.ply": (ASCII_PLY[: ASCII_PLY.index("3 0 1 2")], "truncated"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(DatasetError, match=message) as e:
            load_mesh(path)
        assert str(path) in str(e.value), name
    box = write_mesh_ply(_coloured_box(), tmp_path / "box.ply")
    data = box.read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[: len(data) - 40])
    with pytest.raises(DatasetError, match="cut.ply"):
        load_mesh(tmp_path / "cut.ply")


def test_diameter_exact():
    rng = np.random.default_rng(1)
    for pts in (rng.normal(size=(500, 3)), rng.uniform(size=(300, 3)) * [1, 2, 0.1]):
        assert mesh_diameter(pts) == pytest.approx(pdist(pts).max(), rel=1e-12)
    flat = np.c_[rng.normal(size=(50, 2)), np.zeros(50)]  # coplanar: no 3D hull
    assert mesh_diameter(flat) == pytest.approx(pdist(flat).max(), rel=1e-12)
    assert mesh_diameter(np.zeros((1, 3))) == 0.0
    assert mesh_diameter(np.array([[0, 0, 0], [3.0, 4, 0]])) == pytest.approx(5.0)
    # many hull vertices (points on a sphere): the blocked search, against brute force
    sphere = rng.normal(size=(3000, 3))
    sphere /= np.linalg.norm(sphere, axis=1, keepdims=True)
    assert mesh_diameter(sphere) == pytest.approx(pdist(sphere).max(), rel=1e-12)


def test_diameter_fast_for_100k_vertices():
    rng = np.random.default_rng(2)
    pts = rng.uniform(-0.05, 0.05, size=(100_000, 3))
    t0 = time.perf_counter()
    d = mesh_diameter(pts)
    assert time.perf_counter() - t0 < 3.0
    assert d <= np.sqrt(3) * 0.1 + 1e-12 and d > 0.16


def test_extents_sampling_and_model_info():
    box = _coloured_box()
    lo, size = mesh_extents(box)
    np.testing.assert_allclose(lo, [-0.01, -0.02, -0.03])
    np.testing.assert_allclose(size, [0.02, 0.04, 0.06])
    pts = sample_surface_points(box, 4000, seed=5)
    assert pts.shape == (4000, 3)
    np.testing.assert_array_equal(pts, sample_surface_points(box, 4000, seed=5))
    assert not np.array_equal(pts, sample_surface_points(box, 4000, seed=6))
    # every point on a face of the box, faces hit in proportion to their areas
    on_face = np.isclose(np.abs(pts), [0.01, 0.02, 0.03], atol=1e-12)
    assert np.all(on_face.any(axis=1)) and np.all(
        np.abs(pts) <= np.array([0.01, 0.02, 0.03]) + 1e-12
    )
    frac = on_face.mean(axis=0)  # areas: x faces 2*0.04*0.06, y 2*0.02*0.06, z 2*0.02*0.04
    np.testing.assert_allclose(frac / frac.sum(), np.array([24, 12, 8]) / 44, atol=0.03)
    pts2, normals = sample_surface_points(box, 10, seed=0, return_normals=True)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0)
    info = model_info_from_mesh(box, 7)
    assert info.obj_id == 7 and not info.symmetric
    assert info.diameter == pytest.approx(np.sqrt(0.02**2 + 0.04**2 + 0.06**2))
    S = np.diag([-1.0, -1.0, 1.0, 1.0])
    sym = model_info_from_mesh(
        box,
        7,
        symmetries_discrete=[S],
        symmetries_continuous=[{"axis": [0, 0, 3], "offset": [0, 0, 0]}],
    )
    assert sym.symmetric
    np.testing.assert_allclose(sym.symmetries_continuous[0]["axis"], [0, 0, 1])


@pytest.mark.shared_data
def test_lmo_meshes(lmo_scene_dir):
    for obj_id, diameter in ((1, 0.102099), (6, 0.154546), (8, 0.261472)):
        mesh = load_mesh(lmo_scene_dir / "models" / f"obj_{obj_id:06d}.ply")
        assert (
            mesh.visual.kind == "vertex" and np.asarray(mesh.visual.vertex_colors)[:, :3].std() > 5
        )
        assert mesh_diameter(mesh) == pytest.approx(diameter, abs=2e-5)
        assert np.abs(mesh.vertices).max() < 0.2


def test_near_symmetry_axes_of_the_built_in_objects():
    # the generator's meshes, origin at the bounding box centre: the mug's body axis (z) lies
    # 16 mm beside it (the handle widens the box), the can's goes through it; the printed box
    # (15 x 10 x 6 cm) and the toy (an irregular blob) turn into nothing like themselves
    from gs2pose_ros.synth.objects import make_object

    found = {}
    for name in ("mug", "can", "printed_box", "toy"):
        obj = make_object(name)
        pts = sample_surface_points(trimesh.Trimesh(obj.vertices, obj.faces), 4000, seed=0)
        found[name] = near_symmetry_axes(pts, mesh_diameter(obj.vertices))
    assert len(found["mug"]) == 1 and len(found["can"]) == 1
    (e, c), = found["mug"]
    assert np.allclose(e, [0, 0, 1]) and abs(c[0] + 0.0163) < 0.002 and abs(c[1]) < 0.002
    assert np.allclose(found["can"][0][0], [0, 0, 1]) and np.linalg.norm(found["can"][0][1][:2]) < 0.002
    assert found["printed_box"] == [] and found["toy"] == []
