"""The CUDA path end to end: refiner, tracker, Pose-Net inference and training on a GPU (gsplat).

Marked ``gpu`` and skipped without CUDA or gsplat. The renderer parity test (gsplat against the
CPU backend, values and gradients) lives in test_render.py; these check that the stages built on
it behave on the GPU as the CPU tests require of them on the CPU.
"""

import hashlib

import numpy as np
import pytest
import torch

from gs2pose_ros.frame import TrackingState
from gs2pose_ros.gaussians import write_gaussian_ply
from gs2pose_ros.refiner import GSRefiner, RefinerConfig

from tracking_data import OracleCoarse, make_sequence, occluded_box_pair, perturb

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def cuda_with_gsplat():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from gs2pose_ros.render import gsplat_backend

    if not gsplat_backend.available():
        pytest.skip("needs gsplat (pip install gsplat==1.5.3 packaging)")


@pytest.fixture(scope="module")
def box_seq():
    return occluded_box_pair()


def test_refiner_on_cuda_converges_from_15deg_3cm(box_seq):
    ev = box_seq.evaluator()
    ref = GSRefiner(box_seq.model.to("cuda"), box_seq.meta, RefinerConfig())
    rng = np.random.default_rng(3)
    T = box_seq.poses[0]
    for _ in range(3):
        ax, d = rng.normal(size=3), rng.normal(size=3)
        T0 = perturb(T, ax / np.linalg.norm(ax) * np.radians(15), d / np.linalg.norm(d) * 0.03)
        r = ref.refine(box_seq.frames[0], T0)
        e = ev.evaluate(r.T_cam_obj[:3, :3], r.T_cam_obj[:3, 3], T[:3, :3], T[:3, 3])
        assert e.re < 3.0 and e.te < 0.01, (e.re, e.te)
        assert r.confidence > 0.6


def test_refiner_on_cuda_scores_like_the_cpu(box_seq):
    """Right pose high, wrong poses low (as test_refiner requires on the CPU), and each confidence
    within 0.05 of the CPU backend's."""
    f, T = box_seq.frames[1], box_seq.poses[1]
    poses = [T,
             perturb(T, [0.0, 0.0, 0.0], [0.09, 0.0, 0.0]),  # beside it
             perturb(T, [1.2, 0.0, 0.0], [0.0, 0.0, 0.0]),  # 70 deg off
             perturb(T, [0.0, 0.0, 0.0], [0.0, 0.0, 0.25]),  # behind
             perturb(T, [0.0, 0.0, 0.0], [0.0, 0.02, 0.0])]  # 2 cm off (> 0.1 d)
    gpu = GSRefiner(box_seq.model.to("cuda"), box_seq.meta)
    cpu = GSRefiner(box_seq.model, box_seq.meta)
    on_gpu = [gpu.score(f, P).confidence for P in poses]
    on_cpu = [cpu.score(f, P).confidence for P in poses]
    assert on_gpu[0] > 0.8 and max(on_gpu[1:]) < 0.3, on_gpu
    np.testing.assert_allclose(on_gpu, on_cpu, atol=0.05)


def test_tracker_on_cuda_loses_the_object_out_of_view_and_keeps_the_model_file(tmp_path):
    seq = make_sequence("printed_box", 10, seed=21, width=320, height=240, occlusion=True,
                        light_change=True, leave_view=(3, 3), n_gaussians=3000)
    from gs2pose_ros.tracker import PoseTracker

    path = write_gaussian_ply(seq.model, tmp_path / "obj.ply", seq.meta)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    tr = PoseTracker.from_files(path, None, device="cuda")
    assert tr.device.type == "cuda"
    tr.coarse = OracleCoarse(seq, seed=1)
    ev = seq.evaluator()
    out = [tr.track(f) for f in seq.frames]
    for i, est in enumerate(out):
        if not seq.visible[i]:
            assert not est.pose_valid, f"confident pose at out-of-view frame {i}"
    for i in range(3):
        T = seq.poses[i]
        assert out[i].pose_valid, i
        assert ev.evaluate(out[i].T_cam_obj[:3, :3], out[i].T_cam_obj[:3, 3], T[:3, :3], T[:3, 3]).correct, i
    assert out[5].state == TrackingState.LOST
    back = next(i for i in range(6, 10) if out[i].state == TrackingState.TRACKING and out[i].pose_valid)
    assert back - 6 < 5
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_posenet_on_cuda_matches_cpu():
    from gs2pose_ros.posenet.network import PoseNet, PoseNetConfig

    torch.manual_seed(0)
    net = PoseNet(PoseNetConfig.cpu()).eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        a = net(x)
        b = net.to("cuda")(x.cuda())
    for k in ("nocs", "mask_logits", "conf_logits"):
        torch.testing.assert_close(b[k].cpu(), a[k], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("workers", [0, 2])
def test_posenet_training_on_cuda_decreases_the_loss(tmp_path, workers):
    """A short run of the real training loop on the GPU: views rendered with gsplat, network on CUDA,
    samples made inline or by worker processes (spawned beside a CUDA parent)."""
    from gs2pose_ros.posenet.network import PoseNetConfig
    from gs2pose_ros.posenet.train import TrainConfig, train_posenet

    seq_model = make_sequence("printed_box", 1, seed=5, width=160, height=120, n_gaussians=3000)
    cfg = TrainConfig(iterations=60, batch=8, lr=3e-3, pool_size=8, refresh_per_iter=0.0, val_size=8,
                      log_every=20, device="cuda", context_fraction=0.0, occluder_prob=0.0, seed=0, workers=workers,
                      network=PoseNetConfig(input_size=48, widths=(8, 16, 16, 16), blocks=(1, 1, 1, 1),
                                            aspp_channels=8, context_channels=8, decoder_widths=(16, 16, 8, 8),
                                            groups=4))
    net, hist = train_posenet(seq_model.model, seq_model.meta, cfg, out_path=tmp_path / "pn.safetensors",
                              progress=False)
    assert next(net.parameters()).device.type == "cuda"
    first, last = hist["val"][0], hist["final_val"]
    assert last["total"] < 0.9 * first["total"], (first, last)
