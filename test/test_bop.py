"""gs2pose_ros.bop: reading the shared LM-O scene, writer round trip, bad input."""

import json
import shutil
import warnings

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from gs2pose_ros.bop import (
    BopDataset,
    BopScene,
    BopSceneWriter,
    ModelInfo,
    compute_gt_info,
    find_dataset_root,
    open_scene,
    read_models_info,
    write_model_ply,
    write_models_info,
)
from gs2pose_ros.errors import DatasetError, GeometryError, InputError

# --------------------------------------------------------------------------------------------
# The shared LM-O scene
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lmo(lmo_scene_dir):
    return open_scene(lmo_scene_dir)


@pytest.mark.shared_data
def test_lmo_open_and_camera(lmo, lmo_scene_dir):
    assert lmo.path.resolve() == (lmo_scene_dir / "test" / "000002").resolve()
    assert open_scene(lmo.path).path == lmo.path
    assert lmo.scene_id == 2
    assert len(lmo) == 200 and lmo.im_ids == sorted(lmo.im_ids)
    assert lmo.im_ids[0] == 3 and lmo.im_ids[-1] == 1212
    ds = lmo.dataset()
    assert ds.root.resolve() == lmo_scene_dir.resolve()
    cam_file = json.loads((lmo_scene_dir / "camera.json").read_text())
    cam_ds = ds.camera()
    for im_id in lmo.im_ids[::20]:
        cam = lmo.camera(im_id)
        assert (cam.width, cam.height) == (640, 480) == (cam_ds.width, cam_ds.height)
        np.testing.assert_allclose(cam.K, cam_ds.K)
        assert cam.fx == cam_file["fx"] and cam.cy == cam_file["cy"] and cam.K[2, 2] == 1.0
    assert not lmo.has_depth and lmo.depth(3) is None
    rgb = lmo.rgb(3)
    assert rgb.dtype == np.uint8 and rgb.shape == (480, 640, 3) and rgb.std() > 10
    lmo.validate()


@pytest.mark.shared_data
def test_lmo_ground_truth(lmo, lmo_scene_dir):
    raw = json.loads((lmo.path / "scene_gt.json").read_text())
    n = 0
    for im_id in lmo.im_ids:
        gts = lmo.gt(im_id)
        assert len(gts) == len(raw[str(im_id)])
        for g, r in zip(gts, raw[str(im_id)]):
            assert g.obj_id == r["obj_id"] and g.obj_id in (1, 6, 8)
            assert np.abs(g.R @ g.R.T - np.eye(3)).max() < 1e-12
            assert abs(np.linalg.det(g.R) - 1) < 1e-12
            # orthonormalisation moves R by at most the file's non-orthonormality (5e-3)
            assert np.abs(g.R - np.reshape(r["cam_R_m2c"], (3, 3))).max() < 6e-3
            assert 0.3 < g.t[2] < 1.5 and np.linalg.norm(g.t) < 1.5
            np.testing.assert_allclose(g.t * 1000, r["cam_t_m2c"])
            np.testing.assert_allclose(g.T[:3, :3], g.R)
            np.testing.assert_allclose(g.T[3], [0, 0, 0, 1])
            n += 1
    assert n == 583
    assert lmo.obj_ids == [1, 6, 8]
    assert len(lmo.instances_of(8)) == 200 and len(lmo.instances_of(1)) == 187
    im_id, gt_idx = lmo.instances_of(6)[0]
    assert lmo.gt(im_id)[gt_idx].obj_id == 6 and lmo.find_instance(im_id, 6) == gt_idx
    assert lmo.find_instance(im_id, 42) is None


@pytest.mark.shared_data
def test_lmo_masks_match_gt_info(lmo):
    for im_id in lmo.im_ids:
        infos = lmo.gt_info(im_id)
        assert len(infos) == len(lmo.gt(im_id))
        for k, info in enumerate(infos):
            mv = lmo.mask_visib(im_id, k)
            m = lmo.mask(im_id, k)
            assert mv.dtype == bool and mv.shape == (480, 640)
            assert int(mv.sum()) == info.px_count_visib
            assert not np.any(mv & ~m)
            assert int(m.sum()) <= info.px_count_all
            assert info.visib_fract == pytest.approx(info.px_count_visib / info.px_count_all)
            recomputed = compute_gt_info(
                mv, m, px_count_all=info.px_count_all, bbox_obj=info.bbox_obj
            )
            assert recomputed.bbox_visib == info.bbox_visib
    assert lmo.mask(3, 99) is None


@pytest.mark.shared_data
def test_lmo_models(lmo_scene_dir):
    from gs2pose_ros.mesh import mesh_diameter, mesh_extents

    ds = BopDataset(lmo_scene_dir)
    infos = ds.models_info()
    assert sorted(infos) == [1, 6, 8]
    assert infos[1].diameter == pytest.approx(0.102099, abs=1e-9)
    assert infos[8].diameter == pytest.approx(0.261472, abs=1e-9)
    assert not infos[1].symmetric
    ape = ds.load_model(1)
    assert ape.visual.kind == "vertex"
    colours = np.asarray(ape.visual.vertex_colors)
    assert colours.shape == (len(ape.vertices), 4) and colours[:, :3].std() > 5
    assert mesh_diameter(ape) == pytest.approx(infos[1].diameter, abs=1e-5)
    lo, size = mesh_extents(ape)
    np.testing.assert_allclose(lo, infos[1].min_xyz, atol=1e-5)
    np.testing.assert_allclose(size, infos[1].size_xyz, atol=1e-5)
    ev = BopDataset(lmo_scene_dir, models="models_eval")
    assert ev.models_dir.name == "models_eval"
    assert ev.load_model(8).vertices.max() < 0.2  # metres
    with pytest.raises(DatasetError, match="obj_000042.ply"):
        ds.model_path(42)


# --------------------------------------------------------------------------------------------
# Writer round trip
# --------------------------------------------------------------------------------------------

H, W = 24, 32


def _frames(seed=0, n_frames=3, n_inst=2):
    rng = np.random.default_rng(seed)
    K = np.array([[40.0, 0, 16.2], [0, 41.0, 11.9], [0, 0, 1]])
    frames = []
    for f in range(n_frames):
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        depth = rng.uniform(0.3, 2.0, (H, W)).astype(np.float32)
        depth[rng.random((H, W)) < 0.1] = 0.0
        depth[0, 0] = np.nan
        insts, masks, visib = [], [], []
        for i in range(n_inst):
            T = np.eye(4)
            T[:3, :3] = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
            T[:3, 3] = rng.uniform(-0.2, 0.2, 3) + [0, 0, 1.0]
            insts.append((i + 1, T))
            m = rng.random((H, W)) < 0.4
            masks.append(m)
            visib.append(m & (rng.random((H, W)) < 0.7))
        frames.append(
            dict(
                im_id=5 * f + 1,
                rgb=rgb,
                K=K,
                instances=insts,
                depth=depth,
                masks=masks,
                masks_visib=visib,
            )
        )
    return frames


def _write(scene_dir, frames, **kw):
    with BopSceneWriter(scene_dir, **kw) as w:
        for fr in frames:
            w.add_frame(**fr)


def test_round_trip(tmp_path):
    frames = _frames()
    scene_dir = tmp_path / "ds" / "test" / "000007"
    _write(scene_dir, frames)
    scene = BopScene(scene_dir)
    assert scene.scene_id == 7 and scene.has_depth and scene.dataset_root is None
    assert scene.im_ids == [fr["im_id"] for fr in frames]
    q = 0.1 / 1000  # default depth_scale 0.1 mm, in metres
    for fr in frames:
        im_id = fr["im_id"]
        cam = scene.camera(im_id)
        np.testing.assert_array_equal(cam.K, fr["K"])
        assert (cam.width, cam.height, cam.depth_scale) == (W, H, 0.1)
        np.testing.assert_array_equal(scene.rgb(im_id), fr["rgb"])
        d = scene.depth(im_id)
        assert d.dtype == np.float32 and d.shape == (H, W)
        src = np.nan_to_num(fr["depth"], nan=0.0)
        np.testing.assert_array_equal(d == 0, src == 0)
        assert np.abs(d - src).max() <= q / 2 + 1e-6
        gts = scene.gt(im_id)
        infos = scene.gt_info(im_id)
        for k, ((obj_id, T), g, info) in enumerate(zip(fr["instances"], gts, infos)):
            assert g.obj_id == obj_id
            np.testing.assert_allclose(g.T, T, atol=1e-12)
            m, mv = scene.mask(im_id, k), scene.mask_visib(im_id, k)
            np.testing.assert_array_equal(m, fr["masks"][k])
            np.testing.assert_array_equal(mv, fr["masks_visib"][k])
            assert info.px_count_all == m.sum() and info.px_count_visib == mv.sum()
            assert info.px_count_valid == np.count_nonzero(m & (d > 0))
            assert info.visib_fract == pytest.approx(mv.sum() / m.sum())
            ys, xs = np.nonzero(mv)
            assert info.bbox_visib == (xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min())
    scene.validate()


def test_same_input_same_bytes(tmp_path):
    _write(tmp_path / "a", _frames(seed=3))
    _write(tmp_path / "b", _frames(seed=3))
    files_a = sorted(
        p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file()
    )
    files_b = sorted(
        p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file()
    )
    assert (
        files_a == files_b and len(files_a) == 3 + 3 * 6
    )  # 3 JSON; rgb, depth, 2 masks, 2 masks_visib per frame
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    text = (tmp_path / "a" / "scene_gt.json").read_text()
    assert text.startswith('{\n  "1": [{"cam_R_m2c": ') and text.endswith("]\n}\n")


def test_writer_without_depth_masks_and_outside_silhouette(tmp_path):
    fr = _frames(n_frames=1, n_inst=1)[0]
    m = fr["masks"][0]
    scene_dir = tmp_path / "s"
    with BopSceneWriter(scene_dir, image_format="jpg") as w:
        # the silhouette leaves the image: counts and bbox given by the caller
        w.add_frame(
            fr["im_id"],
            fr["rgb"],
            fr["K"],
            fr["instances"],
            masks_visib=[m],
            px_count_all=[int(m.sum()) + 50],
            bbox_obj=[(-5, 0, 40, 23)],
        )
        w.add_frame(2, fr["rgb"], fr["K"], [])  # a frame without objects
    scene = BopScene(scene_dir)
    assert not scene.has_depth and scene.depth(fr["im_id"]) is None
    assert (scene_dir / "rgb" / f"{fr['im_id']:06d}.jpg").is_file()
    assert np.abs(scene.rgb(fr["im_id"]).astype(int) - fr["rgb"]).mean() < 60  # lossy
    info = scene.gt_info(fr["im_id"])[0]
    assert info.px_count_all == m.sum() + 50 == info.px_count_valid
    assert info.bbox_obj == (-5, 0, 40, 23)
    assert scene.mask(fr["im_id"], 0) is None
    assert scene.gt(2) == [] and scene.gt_info(2) == []


def test_writer_depth_encoding(tmp_path):
    fr = _frames(n_frames=1, n_inst=0)[0]
    depth = np.full((H, W), 1.0, np.float32)
    depth[0, :3] = [1e-6, -1.0, np.inf]
    depth[1, 0] = 10.0  # beyond 6.5535 m at 0.1 mm units
    with pytest.warns(UserWarning, match="clipped"):
        with BopSceneWriter(tmp_path / "s") as w:
            w.add_frame(0, fr["rgb"], fr["K"], depth=depth)
    d = BopScene(tmp_path / "s").depth(0)
    assert d[0, 0] == pytest.approx(1e-4)  # a tiny reading stays a reading
    assert d[0, 1] == 0 and d[0, 2] == 0
    assert d[1, 0] == pytest.approx(6.5535)
    assert d[2, 2] == pytest.approx(1.0)
    # a coarser scale (1 mm) keeps 10 m
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with BopSceneWriter(tmp_path / "t", depth_scale=1.0) as w:
            w.add_frame(0, fr["rgb"], fr["K"], depth=depth)
    assert BopScene(tmp_path / "t").depth(0)[1, 0] == pytest.approx(10.0)


def test_writer_rejects_bad_input(tmp_path):
    fr = _frames(n_frames=1, n_inst=1)[0]
    w = BopSceneWriter(tmp_path / "s")
    bad_T = fr["instances"][0][1].copy()
    bad_T[:3, :3] *= 1.1
    with pytest.raises(GeometryError, match="not a rotation"):
        w.add_frame(0, fr["rgb"], fr["K"], [(1, bad_T)])
    with pytest.raises(InputError, match="uint8"):
        w.add_frame(0, fr["rgb"].astype(np.float32), fr["K"])
    with pytest.raises(InputError, match="masks_visib has 2 entries"):
        w.add_frame(0, fr["rgb"], fr["K"], fr["instances"], masks_visib=fr["masks_visib"] * 2)
    w.add_frame(
        0,
        fr["rgb"],
        fr["K"],
        fr["instances"],
        depth=fr["depth"],
        masks=fr["masks"],
        masks_visib=fr["masks_visib"],
    )
    with pytest.raises(InputError, match="already added"):
        w.add_frame(0, fr["rgb"], fr["K"])
    with pytest.raises(InputError, match="depth is missing"):
        w.add_frame(
            1, fr["rgb"], fr["K"], fr["instances"], masks=fr["masks"], masks_visib=fr["masks_visib"]
        )
    with pytest.raises(InputError, match="size"):
        w.add_frame(1, fr["rgb"][:10], fr["K"])
    w.close()
    with pytest.raises(DatasetError, match="already holds a scene"):
        BopSceneWriter(tmp_path / "s")
    BopSceneWriter(tmp_path / "s", overwrite=True).close()
    assert BopScene(tmp_path / "s").im_ids == [] and not (tmp_path / "s" / "rgb").exists()


def test_models_round_trip(tmp_path):
    import trimesh

    box = trimesh.creation.box(extents=(0.02, 0.04, 0.06))
    box.visual.vertex_colors = np.tile([10, 200, 30, 255], (len(box.vertices), 1)).astype(np.uint8)
    S = np.eye(4)
    S[:3, :3] = Rotation.from_euler("z", 180, degrees=True).as_matrix()
    S[:3, 3] = [0.001, 0, 0]
    infos = {
        3: ModelInfo(
            3, 0.0748331, np.array([-0.01, -0.02, -0.03]), np.array([0.02, 0.04, 0.06]), [S], []
        ),
        1: ModelInfo(
            1,
            0.1,
            np.zeros(3),
            np.full(3, 0.05),
            [],
            [{"axis": np.array([0, 0, 2.0]), "offset": np.array([0, 0.001, 0])}],
        ),
    }
    root = tmp_path / "ds"
    path = write_models_info(root / "models", infos)
    write_model_ply(root / "models", 3, box)
    data = json.loads(path.read_text())
    assert list(data) == ["1", "3"] and data["3"]["diameter"] == pytest.approx(74.8331)
    assert data["3"]["symmetries_discrete"][0][3] == pytest.approx(1.0)  # mm in the file
    back = read_models_info(path)
    assert back[3].symmetric and back[1].symmetric
    np.testing.assert_allclose(back[3].symmetries_discrete[0], S, atol=1e-9)
    np.testing.assert_allclose(back[1].symmetries_continuous[0]["axis"], [0, 0, 1])
    np.testing.assert_allclose(back[1].symmetries_continuous[0]["offset"], [0, 0.001, 0])
    np.testing.assert_allclose(back[3].min_xyz, infos[3].min_xyz)
    assert back[3].diameter == pytest.approx(infos[3].diameter)
    mesh = BopDataset(root).load_model(3)
    np.testing.assert_allclose(mesh.vertices, box.vertices, atol=1e-7)
    np.testing.assert_array_equal(mesh.visual.vertex_colors, box.visual.vertex_colors)
    assert write_models_info(tmp_path / "again", infos).read_bytes() == path.read_bytes()


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small_scene(tmp_path):
    scene_dir = tmp_path / "ds" / "test" / "000001"
    _write(scene_dir, _frames(n_frames=2, n_inst=2))
    return scene_dir


def test_missing_scene_gt(small_scene):
    (small_scene / "scene_gt.json").unlink()
    scene = BopScene(small_scene)
    assert scene.im_ids == [1, 6] and not scene.has_gt  # unlabelled scenes still read
    assert scene.rgb(1).shape == (H, W, 3)
    with pytest.raises(
        DatasetError, match=r"scene_gt\.json: scene_gt\.json is missing; a BOP scene needs"
    ) as e:
        scene.gt(1)
    assert str(small_scene) in str(e.value)


def test_missing_scene_camera(small_scene):
    (small_scene / "scene_camera.json").unlink()
    with pytest.raises(DatasetError, match="scene_camera.json is missing"):
        BopScene(small_scene)


def test_truncated_json(small_scene):
    path = small_scene / "scene_gt.json"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DatasetError, match="not valid JSON") as e:
        BopScene(small_scene).gt(1)
    assert str(path) in str(e.value)


def _edit_gt(scene_dir, fn):
    path = scene_dir / "scene_gt.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


def test_wrong_shape_entry(small_scene):
    path = _edit_gt(small_scene, lambda d: d["6"][1].update(cam_R_m2c=d["6"][1]["cam_R_m2c"][:8]))
    with pytest.raises(
        DatasetError, match=r"image 6, gt index 1: cam_R_m2c must be a list of 9"
    ) as e:
        BopScene(small_scene).gt(1)
    assert str(path) in str(e.value)
    _edit_gt(small_scene, lambda d: d["1"][0].pop("cam_t_m2c"))  # image 1 is parsed first
    with pytest.raises(DatasetError, match="image 1, gt index 0: the field 'cam_t_m2c' is missing"):
        BopScene(small_scene).gt(1)


@pytest.mark.parametrize("factor", [1.05, -1.0])
def test_non_rotation(small_scene, factor):
    def scale(d):
        d["1"][1]["cam_R_m2c"] = [v * factor for v in d["1"][1]["cam_R_m2c"]]

    path = _edit_gt(small_scene, scale)
    with pytest.raises(
        DatasetError, match=r"image 1, gt index 1 \(obj_id 2\): cam_R_m2c is not a rotation"
    ) as e:
        BopScene(small_scene).gt(6)
    assert str(path) in str(e.value)


def test_slightly_non_orthonormal_is_fixed(small_scene):
    def perturb(d):
        d["1"][0]["cam_R_m2c"][0] += 4e-3

    _edit_gt(small_scene, perturb)
    R = BopScene(small_scene).gt(1)[0].R
    assert np.abs(R @ R.T - np.eye(3)).max() < 1e-12 and np.linalg.det(R) > 0


def test_missing_and_bad_images(small_scene):
    (small_scene / "rgb" / "000006.png").unlink()
    scene = BopScene(small_scene)
    with pytest.raises(DatasetError, match=r"rgb/000006\.png: the colour image is missing") as e:
        scene.rgb(6)
    assert str(small_scene) in str(e.value)
    with pytest.raises(DatasetError, match="000006.png"):
        scene.validate()
    with pytest.raises(DatasetError, match="image 99 is not in scene_camera.json"):
        scene.rgb(99)
    # a mask of another size than the images
    import cv2

    cv2.imwrite(
        str(small_scene / "mask_visib" / "000001_000000.png"), np.zeros((H, W + 1), np.uint8)
    )
    with pytest.raises(
        DatasetError, match=r"000001_000000\.png: image size 33x24 differs from the scene's 32x24"
    ):
        scene.mask_visib(1, 0)
    (small_scene / "depth" / "000001.png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(DatasetError, match=r"depth/000001\.png: cannot decode"):
        scene.depth(1)


def test_gt_info_count_mismatch(small_scene):
    path = small_scene / "scene_gt_info.json"
    data = json.loads(path.read_text())
    data["1"] = data["1"][:1]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="image 1 has 1 entries but scene_gt.json has 2"):
        BopScene(small_scene).gt_info(1)


def test_open_scene_finds_or_refuses(small_scene, tmp_path):
    root = small_scene.parent.parent
    assert open_scene(root).path == small_scene
    assert open_scene(root / "test").path == small_scene
    assert find_dataset_root(small_scene) is None  # no models/ nor camera.json yet
    (root / "models").mkdir()
    assert find_dataset_root(small_scene) == root.resolve()
    with pytest.raises(DatasetError, match="models_info.json is missing"):
        BopScene(small_scene).dataset().models_info()
    shutil.copytree(small_scene, root / "test" / "000002")
    with pytest.raises(DatasetError, match=r"holds 2 scenes \(test/000001, test/000002\)"):
        open_scene(root)
    with pytest.raises(DatasetError, match="no BOP scene here"):
        open_scene(tmp_path / "ds" / "models")
    with pytest.raises(DatasetError, match="does not exist"):
        open_scene(tmp_path / "nowhere")
