"""PoseTracker: tracking accuracy, LOST / recovery, the loaded model file never changes, eval CSV."""

import hashlib

from pathlib import Path

import numpy as np
import pytest
import torch

from gs2pose_ros.frame import NotValidReason, PoseEstimate, TrackingState
from gs2pose_ros.gaussians import write_gaussian_ply
from gs2pose_ros.tracker import PoseTracker, TrackerConfig, _reason

from tracking_data import OracleCoarse, make_sequence

FAST = {"refiner": {"iterations": 15, "crop_size": 64, "track_crop_size": 56, "track_iterations": 2}}


@pytest.fixture(scope="module")
def seq_leave():
    # frames 0-2 visible, 3-5 out of view, 6-9 visible again
    return make_sequence("printed_box", 10, seed=21, width=320, height=240, occlusion=True,
                         light_change=True, leave_view=(3, 3), n_gaussians=3000)


def _err(seq, i, est):
    T = seq.poses[i]
    return seq.evaluator().evaluate(est.T_cam_obj[:3, :3], est.T_cam_obj[:3, 3], T[:3, :3], T[:3, 3])


@pytest.mark.slow  # every lost frame runs a full re-detection: ~5 min wall on the shared 2-core CPU
def test_tracker_lost_while_out_of_view_and_recovers(seq_leave):
    coarse = OracleCoarse(seq_leave, seed=1)
    tr = PoseTracker(seq_leave.model, seq_leave.meta, coarse=coarse, config=FAST, device="cpu")
    assert tr.state == TrackingState.INITIALIZING
    out = []
    for i, f in enumerate(seq_leave.frames):
        est = tr.track(f)
        assert isinstance(est, PoseEstimate) and 0.0 <= est.confidence <= 1.0
        out.append(est)
        if seq_leave.visible[i]:
            continue
        assert not est.pose_valid, f"confident pose at out-of-view frame {i}"
        assert est.reason in (NotValidReason.NOT_FOUND, NotValidReason.LOW_CONFIDENCE), (i, est.reason)
    # before leaving: tracked within 0.1 d
    for i in range(3):
        assert out[i].state == TrackingState.TRACKING and out[i].pose_valid
        assert out[i].reason == NotValidReason.NONE
        assert _err(seq_leave, i, out[i]).correct
    assert out[5].state == TrackingState.LOST  # 3 low frames -> LOST
    # back in view at frame 6: tracking again within 5 frames, and correct from then on
    back = next(i for i in range(6, 10) if out[i].state == TrackingState.TRACKING and out[i].pose_valid)
    assert back - 6 < 5
    for i in range(back, 10):
        assert out[i].pose_valid and _err(seq_leave, i, out[i]).correct, i


def test_appearance_adaptation_never_touches_model_file(tmp_path, seq_leave):
    path = write_gaussian_ply(seq_leave.model, tmp_path / "obj.ply", seq_leave.meta)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    meta_digest = hashlib.sha256(path.with_suffix(".json").read_bytes()).hexdigest()
    tr = PoseTracker.from_files(path, None, config=dict(FAST, adapt_min_confidence=0.0), device="cpu")
    loaded = {k: v.clone() for k, v in tr.model.tensors().items()}
    assert tr.object_name == seq_leave.meta.name and tr.diameter > 0 and tr.device.type == "cpu"
    assert np.all(tr.bbox_max > tr.bbox_min)
    tr.coarse = OracleCoarse(seq_leave, seed=2)
    for f in seq_leave.frames[:2]:
        tr.track(f)
    assert tr.appearance.adapted_steps > 0  # the per-track copy did adapt
    adapted = tr.appearance.model
    assert not torch.equal(adapted.sh, loaded["sh"])
    assert torch.equal(adapted.means, loaded["means"]) and torch.equal(adapted.log_scales, loaded["log_scales"])
    for k, v in tr.model.tensors().items():
        assert torch.equal(v, loaded[k]), k
    tr.reset()
    assert torch.equal(tr.appearance.model.sh, loaded["sh"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert hashlib.sha256(path.with_suffix(".json").read_bytes()).hexdigest() == meta_digest


def test_render_overlay_and_estimate(seq_leave):
    tr = PoseTracker(seq_leave.model, seq_leave.meta, coarse=OracleCoarse(seq_leave, seed=3), config=FAST,
                     device="cpu")
    f = seq_leave.frames[0]
    est = tr.estimate(f)
    assert est.pose_valid and _err(seq_leave, 0, est).correct
    assert tr.state == TrackingState.INITIALIZING  # estimate() leaves the track alone
    img = tr.render_overlay(f, est)
    assert img.shape == f.rgb.shape and img.dtype == np.uint8
    assert np.abs(img.astype(int) - f.rgb.astype(int)).sum() > 0
    # an invalid pose's label says why (the node's debug image in rviz2)
    labels = [tr.render_overlay(f, PoseEstimate(est.T_cam_obj, 0.3, TrackingState.LOST, False, reason=r))[:24]
              for r in (NotValidReason.LOW_CONFIDENCE, NotValidReason.PARTLY_IN_VIEW)]
    assert np.abs(labels[0].astype(int) - labels[1].astype(int)).sum() > 0


def test_large_motion_is_recovered_from_the_warm_start(seq_leave, monkeypatch):
    """A motion the short tracking step cannot follow (2.5 cm, as when a busy node skips frames;
    its ICP cut to one step and one pass here so that it cannot) is recovered from the warm start,
    without a re-detection."""
    from tracking_data import perturb

    monkeypatch.setattr("gs2pose_ros.refiner.ICP_EXTRA_PASSES", 0)
    coarse = OracleCoarse(seq_leave, seed=6)
    cfg = dict(FAST, refiner=dict(FAST["refiner"], track_icp_iterations=1))
    tr = PoseTracker(seq_leave.model, seq_leave.meta, coarse=coarse, config=cfg, device="cpu")
    assert tr.track(seq_leave.frames[0]).pose_valid
    calls = coarse.calls
    tr._T_prev = perturb(tr._T_prev, [0.0, 0.0, 0.0], [0.018, -0.012, 0.012])  # 2.5 cm off
    est = tr.track(seq_leave.frames[1])
    assert "recover" in est.stages and coarse.calls == calls, est.stages
    e = _err(seq_leave, 1, est)
    assert est.state == TrackingState.TRACKING and est.pose_valid and e.correct
    assert e.te < 0.005, e.te  # without the recovery: 9.6 mm at confidence 0.87


class _FirstFrameOnlyCoarse(OracleCoarse):
    """A network that finds the object on the first frame only (as Pose-Net misses an object
    re-entering the view as a sliver at the image border)."""

    def estimate(self, frame, roi=None):
        return super().estimate(frame, roi) if frame.stamp == 0.0 else None


@pytest.mark.parametrize("resume_frames", [30, 0])
def test_a_lost_track_resumes_where_the_object_was_last_seen(seq_leave, resume_frames):
    """Lost while out of view (frames 3-5), the track comes back on the first frame in view
    from its last pose, which the network does not find; not with the resume turned off."""
    tr = PoseTracker(seq_leave.model, seq_leave.meta, coarse=_FirstFrameOnlyCoarse(seq_leave, seed=7),
                     config=dict(FAST, resume_frames=resume_frames), device="cpu")
    out = [tr.track(f) for f in seq_leave.frames[:8]]
    assert all(e.pose_valid for e in out[:3]) and out[5].state == TrackingState.LOST
    assert not any(e.pose_valid for e in out[3:6])
    if resume_frames == 0:
        assert not any(e.pose_valid for e in out[6:])
        return
    for i in (6, 7):
        assert out[i].state == TrackingState.TRACKING and out[i].pose_valid, (i, out[i].confidence)
        assert _err(seq_leave, i, out[i]).correct, i
    assert out[6].diagnostics["resumed_after_frames"] == 4.0  # accepted at frame 2 (1-based 3), now 7


@pytest.mark.parametrize("refuted_by", ["ncc_floor", "half_turn"])
def test_a_resume_is_refuted_by_poor_print_or_a_better_half_turn(seq_leave, monkeypatch, refuted_by):
    """The resume of the test above, with the NCC floor out of reach, or with a half-turn of the
    resumed pose winning: not valid on the frame it came back."""
    if refuted_by == "ncc_floor":
        monkeypatch.setattr("gs2pose_ros.tracker.RESUME_MIN_NCC", 1.01)
    else:
        best_flip = PoseTracker._best_flip

        def a_half_turn_wins_while_lost(self, frame, r, stages):
            chosen = best_flip(self, frame, r, stages)
            if self.state == TrackingState.LOST:
                chosen.diagnostics["flipped_about"] = [1.0, 0.0, 0.0]
            return chosen

        monkeypatch.setattr(PoseTracker, "_best_flip", a_half_turn_wins_while_lost)
    tr = PoseTracker(seq_leave.model, seq_leave.meta, coarse=_FirstFrameOnlyCoarse(seq_leave, seed=7),
                     config=FAST, device="cpu")
    out = [tr.track(f) for f in seq_leave.frames[:7]]
    assert out[5].state == TrackingState.LOST and not out[6].pose_valid, out[6].confidence
    if refuted_by == "ncc_floor":
        assert out[6].reason == NotValidReason.TEXTURE_MISMATCH and "resumed_after_frames" in out[6].diagnostics


def test_the_motion_model_waits_for_two_steps_after_a_resumed_pose():
    """The correction of a resumed pose is not extrapolated as motion; a detection's first step
    and the steps after a resume's first are (constant velocity)."""
    from types import SimpleNamespace

    from tracking_data import perturb

    seq = make_sequence("printed_box", 1, seed=3, width=64, height=48, n_gaussians=500)
    T0 = seq.poses[0]
    T1, T2 = perturb(T0, [0.0, 0.0, 0.1], [0.01, 0, 0]), perturb(T0, [0.0, 0.0, 0.2], [0.02, 0, 0])
    poses = [SimpleNamespace(T_cam_obj=T, diagnostics={"ncc": 0.5}) for T in (T0, T1, T2)]
    for resumed in (False, True):
        tr = PoseTracker(seq.model, seq.meta, config=FAST, device="cpu")
        tr._accept(poses[0], new_track=True, stamp=0.0, resumed=resumed)
        tr._accept(poses[1], new_track=False, stamp=1.0)
        moved = not np.allclose(tr._predict(2.0), T1)
        assert moved != resumed, resumed  # after a resume: the first step is not extrapolated
        tr._accept(poses[2], new_track=False, stamp=2.0)
        assert not np.allclose(tr._predict(3.0), T2)  # two steps: it is


def test_a_tracking_step_whose_print_stopped_correlating_is_refuted(seq_leave):
    """A step whose NCC fell by TRACK_NCC_COLLAPSE from the last accepted pose's is not valid,
    whatever its confidence; with a network, a confirmed re-detection replaces it."""
    from gs2pose_ros.tracker import TRACK_NCC_COLLAPSE

    for coarse in (None, OracleCoarse(seq_leave, seed=8)):
        tr = PoseTracker(seq_leave.model, seq_leave.meta, coarse=coarse, config=FAST, device="cpu")
        tr.seed(seq_leave.poses[0])
        steps = [tr.track(f) for f in seq_leave.frames[:2]]
        assert all(e.pose_valid for e in steps) and steps[1].diagnostics["render_std"] >= 0.15
        # as if the print had correlated this much better one frame ago
        tr._ncc_prev = steps[1].diagnostics["ncc"] + TRACK_NCC_COLLAPSE + 0.05
        est = tr.track(seq_leave.frames[2])
        if coarse is None:
            assert est.confidence >= 0.9 and not est.pose_valid, est.confidence  # the geometry fits
            assert est.reason == NotValidReason.TEXTURE_MISMATCH and "ncc_fell_from" in est.diagnostics
        else:
            assert est.pose_valid and "posenet" in est.stages and "ncc_fell_from" not in est.diagnostics
            assert _err(seq_leave, 2, est).correct


def test_config_rejects_unknown_keys():
    from gs2pose_ros.errors import ConfigError

    with pytest.raises(ConfigError):
        TrackerConfig.from_dict({"no_such_setting": 1})


def test_coarse_options_reach_the_coarse_stage():
    """The tracker config's ``coarse`` options configure Pose-Net's estimator; a bad one is a ConfigError."""
    from gs2pose_ros.errors import ConfigError

    data = Path(__file__).resolve().parent.parent / "gs2pose_ros" / "data" / "printed_box"
    model, posenet = data / "model.ply", data / "posenet.safetensors"
    tr = PoseTracker.from_files(model, posenet, config={"coarse": {"locate_size": 256}}, device="cpu")
    assert tr.coarse.locate_size == 256 and tr.config.coarse == {"locate_size": 256}
    assert PoseTracker.from_files(model, posenet, device="cpu").coarse.locate_size == tr.coarse.size
    for bad in ({"locate_size": 100}, {"no_such_option": 1}):
        with pytest.raises(ConfigError):
            PoseTracker.from_files(model, posenet, config={"coarse": bad}, device="cpu")


def test_a_detection_finds_the_box_beside_the_pole_the_network_prefers(tmp_path):
    """The shipped printed_box network rates a checkered pole above the box standing behind it,
    70 % in view (generated seed 11, frame 0): neither full-frame candidate is the box (coarse
    poses 108 deg / 25 cm and 18 deg / 26 cm off). The box's own surface off the floor is a
    candidate too (``CoarsePoseEstimator._surfaces``)."""
    from gs2pose_ros.bop import BopDataset
    from gs2pose_ros.frame import Frame
    from gs2pose_ros.synth import SynthConfig, generate

    generate(SynthConfig(out=str(tmp_path / "seed11"), object="printed_box", frames=1, seed=11, ref_views=0))
    scene = BopDataset(tmp_path / "seed11").scene("test", 0)
    gt = scene.gt(0)[0]
    frame = Frame.validated(scene.rgb(0), scene.camera(0).K, scene.depth(0))
    data = Path(__file__).resolve().parent.parent / "gs2pose_ros" / "data" / "printed_box"
    tr = PoseTracker.from_files(data / "model.ply", data / "posenet.safetensors", device="cpu")
    est = tr.estimate(frame)
    R, t = est.T_cam_obj[:3, :3], est.T_cam_obj[:3, 3]
    rot_deg = np.degrees(np.arccos(np.clip((np.trace(R.T @ gt.R) - 1) / 2, -1, 1)))
    assert est.pose_valid and rot_deg < 5.0 and np.linalg.norm(t - gt.t) < 0.1 * tr.diameter, (est.confidence, rot_deg)
    tr.coarse.surface_candidates = 0  # the network's candidates alone
    coarse = tr.coarse.estimate(frame)
    assert all(np.linalg.norm(c.T_cam_obj[:3, 3] - gt.t) > 0.2 for c in [coarse] + coarse.alternatives
               if c.T_cam_obj is not None)


@pytest.mark.slow
# Was a known failure (xfail): the refinement pulled the pose off the mug (photometric terms over
# occluded and background pixels), the ICP matched the outer bottom to the inner floor (7 mm bias)
# and plain, partly occluded views scored below 0.5; see docs/tracking.md, "The mug failure".
def test_tracking_sequence_stays_within_01d():
    seq = make_sequence("mug", 15, seed=4, width=320, height=240, occlusion=True, light_change=True,
                        n_gaussians=4000)
    tr = PoseTracker(seq.model, seq.meta, coarse=OracleCoarse(seq, seed=4), device="cpu")
    for i, f in enumerate(seq.frames):
        est = tr.track(f)
        assert est.pose_valid and _err(seq, i, est).correct, i


def test_eval_writes_valid_bop_csv(tmp_path):
    from gs2pose_ros.bop import BopSceneWriter, ModelInfo, write_model_ply, write_models_info
    from gs2pose_ros.evaluate import read_bop_csv, run_evaluation
    from gs2pose_ros.synth.objects import make_object

    seq = make_sequence("printed_box", 2, seed=5, width=320, height=240, n_gaussians=3000)
    root = tmp_path / "ds"
    obj = make_object("printed_box")
    write_model_ply(root / "models", 1, obj.to_trimesh())
    lo, hi = obj.vertices.min(0), obj.vertices.max(0)
    write_models_info(root / "models", [ModelInfo(1, seq.meta.diameter, lo, hi - lo)])
    with BopSceneWriter(root / "test" / "000000") as w:
        for i, f in enumerate(seq.frames):
            w.add_frame(i, f.rgb, f.K, [(1, seq.poses[i])], depth=f.depth)
    write_gaussian_ply(seq.model, tmp_path / "model.ply", seq.meta)
    report = run_evaluation(str(root), "1", str(tmp_path / "model.ply"), None, "track",
                            str(tmp_path / "out" / "report.json"), init="gt-perturbed", overlays=1,
                            config=FAST)
    s = report["summary"]
    assert s["frames"] == 2 and s["add_s_0.1d"] == 1.0
    # BOP 2019's average recall beside ADD (the frames have depth: VSD too); tracked to a few mm on
    # a 0.2 m box, right at most of the thresholds
    assert set(s["bop19"]) == {"ar", "ar_vsd", "ar_mssd", "ar_mspd"} and s["bop19"]["ar"] > 0.7
    assert all(len(rec["bop19"]["vsd"]) == 10 for rec in report["frames"])
    assert "BOP 2019 average recall" in (tmp_path / "out" / "report.md").read_text()
    for rec in report["frames"]:  # the numbers behind each confidence, for calibration studies
        d = rec["diagnostics"]
        assert 0.9 <= d["depth_inlier_ratio"] <= 1.0 and 0.0 < d["silhouette_iou"] <= 1.0 and "ncc" in d
    csv_path = tmp_path / "out" / "report_bop.csv"
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "scene_id,im_id,obj_id,score,R,t,time"
    rows = read_bop_csv(csv_path)
    assert [r["im_id"] for r in rows] == [0, 1]
    for r in rows:
        assert r["scene_id"] == 0 and r["obj_id"] == 1 and 0 <= r["score"] <= 1 and r["time"] > 0
        assert np.allclose(r["R"] @ r["R"].T, np.eye(3), atol=1e-6)
        assert np.linalg.norm(r["t"] - seq.poses[r["im_id"]][:3, 3]) < 0.02  # t written in mm, read back in m
        assert len(lines[1].split(",")[4].split()) == 9 and len(lines[1].split(",")[5].split()) == 3
    for suffix in ("report.md", "report_plots.png"):
        assert (tmp_path / "out" / suffix).is_file()
    assert list((tmp_path / "out").glob("report_overlay_*.png"))


def test_summary_counts_confident_wrong_poses():
    """The eval summary says what acting on pose_valid gives: valid-but-wrong frames in view, the
    share of valid poses that are right, and how well the confidence ranks right above wrong."""
    from gs2pose_ros.evaluate import summarise

    def rec(conf, valid, right, visible=True, reason="LOW_CONFIDENCE"):
        return {"visible": visible, "pose_valid": valid, "confidence": conf, "correct_any": right,
                "correct": right and valid, "re_deg": 1.0, "te": 0.001, "add_or_adds": 0.001,
                "latency": 0.1, "state": "TRACKING" if valid else "INITIALIZING",
                "reason": "NONE" if valid else reason}

    recs = [rec(0.9, True, True), rec(0.95, True, False), rec(0.8, True, True), rec(0.2, False, False),
            rec(0.3, False, True, reason="PARTLY_IN_VIEW"), rec(0.99, True, False, visible=False)]
    s = summarise(recs, 0.1)
    assert s["confident_wrong_visible_frames"] == 1 and s["confident_out_of_view_frames"] == 1
    assert s["not_valid_reasons_visible"] == {"LOW_CONFIDENCE": 1, "PARTLY_IN_VIEW": 1}
    assert s["valid_pose_precision"] == pytest.approx(2 / 3)
    # right (0.9, 0.8, 0.3) vs wrong (0.95, 0.2): 3 of 6 pairs ranked right (each right one above 0.2 only)
    assert s["confidence_auc_visible"] == pytest.approx(3 / 6)


def test_summary_scores_by_share_in_view_and_checks_ambiguous_frames():
    """Accuracy per band of BOP's visib_fract (the issue's conditions: occlusion up to 30 %), and
    of the frames refused as ambiguous about a near-symmetry axis, how many were right but for the
    turn about it (records without a visib_fract or the axis check are left out of those)."""
    from gs2pose_ros.evaluate import summarise

    def rec(visib, right, reason="NONE", up_to_turn=None):
        r = {"visible": True, "pose_valid": reason == "NONE", "confidence": 0.9, "correct_any": right,
             "correct": right and reason == "NONE", "latency": 0.1, "state": "TRACKING", "reason": reason}
        if visib is not None:
            r["visib_fract"] = visib
        if up_to_turn is not None:
            r["correct_up_to_axis_turn"] = up_to_turn
        return r

    recs = [rec(0.15, False, "LOW_CONFIDENCE"), rec(0.5, True), rec(0.95, True), rec(0.7, True),
            rec(0.8, False, "AMBIGUOUS_ROTATION", up_to_turn=True),
            rec(1.0, False, "AMBIGUOUS_ROTATION", up_to_turn=False), rec(None, True)]
    s = summarise(recs, 0.1)
    bands = s["add_s_0.1d_by_visible_fraction"]
    assert bands["under 30 %"] == {"frames": 1, "add_s_0.1d": 0.0}
    assert bands["30-70 %"] == {"frames": 1, "add_s_0.1d": 1.0}
    assert bands["70 % or more"] == {"frames": 4, "add_s_0.1d": 0.5}
    assert s["ambiguous_rotation_frames"] == 2 and s["ambiguous_right_up_to_axis_turn"] == 1
    assert "ambiguous_rotation_frames" not in summarise(recs[:4], 0.1)
    # BOP 2019's recall: a frame without a valid pose is a miss, unless validity is ignored; the
    # ambiguous frames are scored apart (here the first is right under VSD, the second not)
    for r, e in zip(recs, (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)):
        r["bop19"] = {"mssd": e, "mspd": 100.0 * e, "width": 640, "vsd": [e] * 10}
    s = summarise(recs, 0.1)
    assert s["bop19"]["ar_mssd"] == pytest.approx(4 / 7) and s["bop19_ignoring_validity"]["ar_mssd"] == pytest.approx(5 / 7)
    assert s["ambiguous_bop19_ignoring_validity"]["ar_vsd"] == pytest.approx(0.5)


def test_slide_along_the_box_is_corrected_while_an_occluder_covers_one_end():
    """Issue 7 (seed-3 pipeline scene): while an occluder covered one end of the box, a slide
    along the box's length was invisible to the tracking ICP and the pose drifted ~1.5 mm per
    frame to 20 mm at confidence 0.92-0.97 (no recovery). Here the track goes on from a pose 12 mm
    slid along that axis (the drifted state) while a card covers the other end and moves in; it
    must come back at once (before the fix: 11, 11, 9, 8, 5 mm at confidence 0.92-0.95)."""
    from test_refiner import occlude_end

    seq = make_sequence("printed_box", 6, seed=11, width=320, height=240, n_gaussians=3000)
    tr = PoseTracker(seq.model, seq.meta, config={}, device="cpu")
    tr.seed(seq.poses[0])
    assert tr.track(occlude_end(seq.frames[0], seq.poses[0], -0.035)).pose_valid
    # the drifted state: the last accepted pose 12 mm slid along the box, no velocity
    T0 = seq.poses[0].copy()
    T0[:3, 3] += T0[:3, :3] @ np.array([0.012, 0.0, 0.0])
    tr._T_prev, tr._T_prev2 = T0, None
    errs = []
    for i in range(1, len(seq.frames)):
        T = seq.poses[i]
        est = tr.track(occlude_end(seq.frames[i], T, -0.025 + 0.005 * i))  # the card moves in
        errs.append(np.linalg.norm(est.T_cam_obj[:3, 3] - T[:3, 3]))
        assert est.pose_valid
    assert max(errs) < 0.004, np.round(np.array(errs) * 1000, 1)


@pytest.mark.parametrize("slid", [-0.03, -0.04])
def test_a_track_slid_along_a_box_with_both_ends_hidden_comes_back(slid):
    """Both ends of the box hidden (generated seed 12, frame 51: a pole and the image border): the
    step's ICP and depth fit the box anywhere along its length, and the track went on 57 mm off at
    0.99. The slide search moves it to where the print correlates and the step refines it there."""
    from tracking_data import hide_both_ends

    seq = make_sequence("printed_box", 3, seed=11, width=320, height=240, n_gaussians=3000)
    tr = PoseTracker(seq.model, seq.meta, config={}, device="cpu")
    T = seq.poses[0]
    T0 = T.copy()
    T0[:3, 3] += slid * T[:3, 0]
    tr.seed(T0)
    est = tr.track(hide_both_ends(seq.frames[0], T, keep=0.045))
    assert est.pose_valid and "slide" in est.stages
    assert np.linalg.norm(est.T_cam_obj[:3, 3] - T[:3, 3]) < 0.006, (est.T_cam_obj[:3, 3] - T[:3, 3], est.diagnostics)


def test_a_tracking_step_is_searched_for_a_slide_when_its_print_fell_away():
    """In a running track the slide search runs when the step's NCC fell ``SLIDE_NCC_DROP`` below
    the last accepted pose's (printed_box seed 12 frame 51: 0.60 -> 0.31), not on every partly
    hidden step (that doubled the step's median on occluded sequences)."""
    from tracking_data import hide_both_ends

    seq = make_sequence("printed_box", 3, seed=11, width=320, height=240, n_gaussians=3000)
    T = seq.poses[0]
    hidden = hide_both_ends(seq.frames[0], T, keep=0.045)
    T0 = T.copy()
    T0[:3, 3] -= 0.035 * T[:3, 0]
    for ncc_prev, searched in ((0.55, True), (0.3, False)):
        tr = PoseTracker(seq.model, seq.meta, config={}, device="cpu")
        tr.seed(T)
        assert tr.track(hidden).pose_valid
        tr._T_prev, tr._T_prev2, tr._ncc_prev = T0, None, ncc_prev  # the track slid, its print was ncc_prev
        est = tr.track(hidden)
        err = np.linalg.norm(est.T_cam_obj[:3, 3] - T[:3, 3])
        assert ("slide" in est.stages) == searched and (err < 0.006) == searched, (ncc_prev, err, est.stages)


class _TinyMaskCoarse:
    """The ground-truth pose with a Pose-Net-like mask that covers only a 5x5 px patch of the object
    (an under-trained network's mask), as on the demo's printed_box frame 7."""

    def __init__(self, seq):
        self.seq = seq

    def estimate(self, frame, roi=None):
        from tracking_data import CoarseResult

        i = int(round(frame.stamp * 30))
        T = self.seq.poses[i]
        u, v = (frame.K @ T[:3, 3])[:2] / T[2, 3]
        mask = np.zeros(frame.rgb.shape[:2], bool)
        mask[int(v) - 2:int(v) + 3, int(u) - 2:int(u) + 3] = True
        return CoarseResult(T.copy(), 0.9, mask)


def test_a_tiny_posenet_mask_does_not_veto_a_right_detection(seq_leave):
    tr = PoseTracker(seq_leave.model, seq_leave.meta, coarse=_TinyMaskCoarse(seq_leave), config=FAST, device="cpu")
    est = tr.estimate(seq_leave.frames[0])
    assert est.pose_valid and _err(seq_leave, 0, est).correct


class _MaskElsewhereCoarse(_TinyMaskCoarse):
    """The ground-truth pose with a Pose-Net-like mask on a patch 120 px away from the object."""

    def estimate(self, frame, roi=None):
        c = super().estimate(frame, roi)
        H, W = c.mask.shape
        v, u = (int(x.mean()) for x in np.nonzero(c.mask))
        c.mask[:] = False
        u2 = u - 120 if u >= W // 2 else u + 120
        c.mask[max(v - 10, 0):v + 10, max(u2 - 10, 0):u2 + 10] = True
        return c


def test_a_posenet_mask_off_the_pose_keeps_its_veto(seq_leave):
    # the re-scoring without Pose-Net's mask is for an incomplete mask on the object; a mask
    # somewhere else means the pose and the network disagree (mug frame 29 of the generated
    # sequence: the mask on a wall, the refined pose 2.4 m behind the mug, 0.9 without the mask)
    tr = PoseTracker(seq_leave.model, seq_leave.meta, coarse=_MaskElsewhereCoarse(seq_leave), config=FAST,
                     device="cpu")
    f = seq_leave.frames[0]
    est = tr.estimate(f)
    assert not est.pose_valid, est.confidence
    assert tr._mask_on_pose(_MaskElsewhereCoarse(seq_leave).estimate(f).mask, seq_leave.poses[0], f.K) == 0.0
    assert tr._mask_on_pose(_TinyMaskCoarse(seq_leave).estimate(f).mask, seq_leave.poses[0], f.K) == 1.0


class _DistractorFirstCoarse(_TinyMaskCoarse):
    """Pose-Net's full-frame pass putting a distractor first: its pose 25 cm to the side (on the
    table), the ground truth only among the alternatives, as for the toy re-entering the view."""

    def estimate(self, frame, roi=None):
        from tracking_data import CoarseResult

        right = super().estimate(frame, roi)
        right.mask = None
        T = right.T_cam_obj.copy()
        T[0, 3] += 0.25 if T[0, 3] < 0 else -0.25
        first = CoarseResult(T, 0.05, None)
        first.alternatives = [CoarseResult(right.T_cam_obj, 0.01, None)]
        return first


def test_a_detection_checks_the_second_candidate_when_the_first_fails(seq_leave):
    tr = PoseTracker(seq_leave.model, seq_leave.meta, coarse=_DistractorFirstCoarse(seq_leave), config=FAST,
                     device="cpu")
    est = tr.estimate(seq_leave.frames[0])
    assert est.pose_valid and _err(seq_leave, 0, est).correct


class _HalfTurnCoarse(_TinyMaskCoarse):
    """The ground truth turned 180 deg about the box's z axis through its centre: the same
    silhouette and depth, only the texture tells (a coarse pose flipped onto the box's symmetry);
    ``axis`` (object frame) and ``shift`` (metres, camera frame) vary the turn and add an offset."""

    def __init__(self, seq, axis=(0.0, 0.0, 1.0), shift=(0.0, 0.0, 0.0)):
        super().__init__(seq)
        self.axis, self.shift = np.asarray(axis, float), np.asarray(shift, float)

    def estimate(self, frame, roi=None):
        import cv2

        c = super().estimate(frame, roi)
        centre = self.seq.meta.box_centre
        F = np.eye(4)
        F[:3, :3] = cv2.Rodrigues(np.pi * self.axis)[0]
        F[:3, 3] = centre - F[:3, :3] @ centre
        c.T_cam_obj, c.mask = c.T_cam_obj @ F, None
        c.T_cam_obj[:3, 3] += self.shift
        return c


class _SecondCandidateCoarse:
    """A full-frame pass whose best candidate has no pose (``T_cam_obj`` None: printed_box seed 7
    re-entering) or a distractor's, and ``second`` (another stand-in) among the alternatives."""

    def __init__(self, second, first_pose: bool):
        self.second, self.first_pose = second, first_pose

    def estimate(self, frame, roi=None):
        from tracking_data import CoarseResult

        alt = self.second.estimate(frame, roi)
        T = None
        if self.first_pose:
            T = alt.T_cam_obj.copy()
            T[0, 3] += 0.25 if T[0, 3] < 0 else -0.25
        first = CoarseResult(T, 0.0, None)
        first.alternatives = [alt]
        return first


@pytest.mark.parametrize("first_pose", [False, True])
def test_the_second_candidate_is_refined_and_turned_back_like_the_first(seq_leave, first_pose):
    """The alternative is a detection too: tried when the best candidate has no pose, and checked
    against its half-turns (printed_box seed 9 re-entering: the alternative 179 deg turned at 0.47,
    its right half-turn 0.99)."""
    coarse = _SecondCandidateCoarse(_HalfTurnCoarse(seq_leave), first_pose)
    est = PoseTracker(seq_leave.model, seq_leave.meta, coarse=coarse, config=FAST, device="cpu").estimate(
        seq_leave.frames[0])
    err = _err(seq_leave, 0, est)
    assert est.pose_valid and err.correct and err.re < 3.0, (est.confidence, err)


class _TwoReadingsCoarse(_TinyMaskCoarse):
    """Pose-Net reading the object two ways from two crops (the mug, generated seed 11, frame 59:
    149 deg off from one, 5 deg from the other, both at coarse confidence ~0): the unsure best
    candidate half-turned onto the box's symmetry, a distractor 25 cm away, then the truth."""

    def estimate(self, frame, roi=None):
        from tracking_data import CoarseResult

        right = super().estimate(frame, roi)
        turned = _HalfTurnCoarse(self.seq).estimate(frame, roi).T_cam_obj
        distractor = right.T_cam_obj.copy()
        distractor[0, 3] += 0.25 if distractor[0, 3] < 0 else -0.25
        first = CoarseResult(turned, 0.05, None)
        first.alternatives = [CoarseResult(distractor, 0.0, None), CoarseResult(right.T_cam_obj, 0.0, None)]
        return first


def test_an_unsure_detection_gets_a_second_opinion_on_the_same_object(seq_leave, monkeypatch):
    """An accepted detection from an unsure coarse pose is weighed against a later candidate on
    the same object that reads the rotation otherwise (``RIVAL_MAX_DIST``, ``RIVAL_MIN_DEG``)."""
    import gs2pose_ros.tracker as tracker_module

    config = dict(FAST, try_flips=False)  # the half-turn check would find this turn as well
    est = PoseTracker(seq_leave.model, seq_leave.meta, coarse=_TwoReadingsCoarse(seq_leave), config=config,
                      device="cpu").estimate(seq_leave.frames[0])
    err = _err(seq_leave, 0, est)
    assert est.pose_valid and err.correct and err.re < 3.0, (est.confidence, err)
    monkeypatch.setattr(tracker_module, "RIVAL_MIN_DEG", 181.0)  # no second opinion: the turned pose
    est = PoseTracker(seq_leave.model, seq_leave.meta, coarse=_TwoReadingsCoarse(seq_leave), config=config,
                      device="cpu").estimate(seq_leave.frames[0])
    assert not _err(seq_leave, 0, est).correct, est.confidence


class _ConfidentDistractorCoarse(_DistractorFirstCoarse):
    """A full-frame pass whose one candidate is a distractor it is confident about (the toy beside
    a distractor the network put first at 0.595: generated seed 11, frame 6), so it tries no
    surfaces."""

    def estimate(self, frame, roi=None):
        first = super().estimate(frame, roi)
        self.truth = first.alternatives[0]
        first.confidence, first.alternatives = 0.9, []
        return first


class _SurfacesWhenAskedCoarse(_ConfidentDistractorCoarse):
    """... with the object's own surface when asked (``surface_estimates``)."""

    def surface_estimates(self, frame):
        return [self.truth]


def test_a_refuted_confident_candidate_sends_the_detection_to_the_surfaces(seq_leave):
    for coarse, found in ((_SurfacesWhenAskedCoarse(seq_leave), True), (_ConfidentDistractorCoarse(seq_leave), False)):
        est = PoseTracker(seq_leave.model, seq_leave.meta, coarse=coarse, config=FAST, device="cpu").estimate(
            seq_leave.frames[0])
        assert (est.pose_valid and _err(seq_leave, 0, est).correct) == found, (type(coarse), est.confidence)


class _ConfidentLaterCoarse(_DistractorFirstCoarse):
    """A confident distractor first, two unsure distractors, then the truth (the toy re-entering,
    generated seed 12 frame 51: 0.705 for a distractor, 0.0 and 0.0, then 0.535 at 0.3 deg; seed 13
    frame 52 alike with the truth at 0.457); ``truth_confidence`` varies the last."""

    def __init__(self, seq, truth_confidence: float):
        super().__init__(seq)
        self.truth_confidence = truth_confidence

    def estimate(self, frame, roi=None):
        from tracking_data import CoarseResult

        first = super().estimate(frame, roi)
        truth = first.alternatives[0]
        truth.confidence = self.truth_confidence
        far = [first.T_cam_obj.copy() for _ in range(2)]
        far[0][1, 3] += 0.2
        far[1][1, 3] -= 0.2
        first.confidence = 0.7
        first.alternatives = [CoarseResult(T, 0.0, None) for T in far] + [truth]
        return first


def test_a_fairly_sure_candidate_behind_the_first_two_is_refined(seq_leave):
    for truth_confidence, found in ((0.535, True), (0.3, True), (0.2, False)):
        coarse = _ConfidentLaterCoarse(seq_leave, truth_confidence)
        est = PoseTracker(seq_leave.model, seq_leave.meta, coarse=coarse, config=FAST, device="cpu").estimate(
            seq_leave.frames[0])
        assert (est.pose_valid and _err(seq_leave, 0, est).correct) == found, (truth_confidence, est.confidence)


def test_a_detection_on_the_box_symmetry_is_turned_back(seq_leave):
    # without the half-turn check this flipped pose refines to a valid 0.81 at 180 deg
    tr = PoseTracker(seq_leave.model, seq_leave.meta, coarse=_HalfTurnCoarse(seq_leave), config=FAST, device="cpu")
    est = tr.estimate(seq_leave.frames[0])
    assert est.pose_valid and _err(seq_leave, 0, est).correct and _err(seq_leave, 0, est).re < 3.0


def _cut_by_border(x_offset):
    # one frame of the box pushed towards the left image border (-0.2 m: about a third of its
    # silhouette in the image, -0.23 m: 14 %)
    return make_sequence("printed_box", 1, seed=21, width=320, height=240, n_gaussians=3000,
                         x_offsets={0: x_offset})


def test_a_half_turned_detection_cut_by_the_border_is_turned_back():
    # turned 180 deg and 4.6 cm off: one ICP pass per refinement left the half-turn check a pose
    # 180 deg off at 0.98 (refiner.ICP_EXTRA_PASSES = 0); the passes that go on from where the
    # last one stopped bring the right half-turn home
    seq = _cut_by_border(-0.2)
    coarse = _HalfTurnCoarse(seq, axis=(1.0, 0.0, 0.0), shift=(0.02, -0.01, 0.04))
    est = PoseTracker(seq.model, seq.meta, coarse=coarse, config=FAST, device="cpu").estimate(seq.frames[0])
    err = _err(seq, 0, est)
    assert est.pose_valid and err.correct and err.re < 3.0, (est.confidence, err)


def test_a_detection_from_a_sliver_at_the_border_is_not_confirmed():
    # 14 % of the box in the image: its half-turn fits as well as the truth (0.99 at 180 deg
    # without the rule); a track may follow such a sliver, a detection is not confirmed. Weighed
    # as if in view (session 14), the detection 179 deg off, that turn and the truth tie at
    # 0.98-1.0 and the print does not tell them apart by FLIP_NCC_MARGIN (0.69, 0.59, 0.79): the
    # detection stays, at its own confidence (0.25, 10 % in the image), and is not valid either
    # way; before, the turn (0.99) was chosen and held back by the sliver rule
    seq = _cut_by_border(-0.23)
    coarse = _HalfTurnCoarse(seq, axis=(0.0, 1.0, 0.0), shift=(0.0, 0.0, 0.03))
    est = PoseTracker(seq.model, seq.meta, coarse=coarse, config=FAST, device="cpu").estimate(seq.frames[0])
    assert not est.pose_valid and est.confidence <= 0.25, est.confidence
    assert est.reason in (NotValidReason.PARTLY_IN_VIEW, NotValidReason.LOW_CONFIDENCE)


def _turn_result(confidence, ncc, render_std=0.2):
    from gs2pose_ros.refiner import RefineResult

    return RefineResult(np.eye(4), confidence, 12, 0.0, diagnostics={"ncc": ncc, "render_std": render_std})


def test_a_half_turn_replaces_a_detection_only_on_clearly_better_texture():
    from gs2pose_ros.tracker import choose_half_turn

    # the mug with its handle behind a pole: the right detection and its turn about the axis,
    # 168 deg off, converge alike; an NCC 0.08 higher is noise, not evidence
    det, turn = _turn_result(0.991, 0.362), _turn_result(0.905, 0.441)
    assert choose_half_turn(det, [turn]) is det
    # printed_box: the detection flipped onto the box's symmetry, the right turn's texture agrees
    det, turn = _turn_result(0.964, 0.198), _turn_result(0.995, 0.58)
    assert choose_half_turn(det, [turn, _turn_result(0.25, 0.11)]) is turn
    # a turn far more confident than the detection needs no texture margin, only FLIP_MIN_NCC
    det = _turn_result(0.3, 0.5)
    assert choose_half_turn(det, [_turn_result(0.95, 0.45)]).confidence == 0.95
    assert choose_half_turn(det, [_turn_result(0.95, 0.3)]) is det  # too little texture agreement
    assert choose_half_turn(det, [_turn_result(0.95, 0.9, render_std=0.0)]) is det  # plain render
    # mug seed 13 frame 27: the detection 177 deg off, its right turn better in fit and print alike
    det, turn = _turn_result(0.906, 0.652), _turn_result(0.986, 0.775)
    assert choose_half_turn(det, [turn]) is turn
    assert choose_half_turn(det, [_turn_result(0.94, 0.775)]) is det  # within re-refinement noise
    assert choose_half_turn(det, [_turn_result(0.986, 0.64)]) is det  # a better fit, worse print


def test_half_turns_of_an_object_cut_by_the_border_are_weighed_as_if_in_view():
    """Printed_box seed 7 frame 50, re-entering as a 12 % sliver: the right pose (NCC 0.81) scored
    0.676 and its half-turns 0.913 and 0.932 (NCC 0.46 and 0.61) only because they put 1-2 % more
    of the box inside the image (the confidence scales down under 15 % seen); as if in view all
    three fit at 0.996, and the print picks the right one. Without the in-view confidences the
    turn 179 deg off was chosen."""
    from gs2pose_ros.refiner import RefineResult
    from gs2pose_ros.tracker import choose_half_turn, in_view_confidence

    def pose(conf, ncc, in_view=None):
        d = {"ncc": ncc, "render_std": 0.2}
        if in_view is not None:
            d["confidence_in_view"] = in_view
        return RefineResult(np.eye(4), conf, 12, 0.0, diagnostics=d)

    det = pose(0.676, 0.812, 0.996)
    turns = [pose(0.913, 0.464, 0.996), pose(0.932, 0.614, 0.996), pose(0.121, 0.135, 0.515)]
    assert choose_half_turn(det, turns) is det
    assert in_view_confidence(det) == 0.996 and in_view_confidence(_turn_result(0.5, 0.3)) == 0.5
    for r in [det] + turns:
        del r.diagnostics["confidence_in_view"]
    assert choose_half_turn(det, turns) is turns[1]


def test_a_better_fit_overrules_the_print_only_against_a_marginal_or_tied_print():
    from gs2pose_ros.tracker import fit_overrules_print

    # mug seed 8 frame 1: the print's pick (the turn showing a handle the image lacks) fits worse by 0.08
    assert fit_overrules_print(_turn_result(0.908, 0.532), _turn_result(0.987, 0.324))
    # frame 0, the turn as the detection: fits alike (0.016), the print ahead by 0.08 only: a tie
    assert fit_overrules_print(_turn_result(0.912, 0.528), _turn_result(0.928, 0.45))
    # seed 13 frame 58: a decisive print (0.81 against 0.23) on a fit as good stands
    assert not fit_overrules_print(_turn_result(0.906, 0.81), _turn_result(0.909, 0.23))


def test_half_turns_are_skipped_only_where_they_cannot_win():
    """``_half_turns_cannot_win`` spares the half-turn check only where :func:`choose_half_turn`
    keeps the detection whatever the half-turns score."""
    from gs2pose_ros.tracker import choose_half_turn

    rng = np.random.default_rng(0)
    turns = [_turn_result(c, n, s) for c, n, s in zip(rng.uniform(0, 1, 400), rng.uniform(-1, 1, 400),
                                                       rng.choice([0.0, 0.05, 0.2], 400))]
    turns += [_turn_result(1.0, 1.0), _turn_result(0.999, 0.999)]
    skipped = 0
    for c in (0.5, 0.85, 0.9, 0.95, 0.999):
        for n in (0.5, 0.79, 0.8, 0.81, 0.95):
            det = _turn_result(c, n)
            if PoseTracker._half_turns_cannot_win(det):
                skipped += 1
                assert all(choose_half_turn(det, [t]) is det for t in turns), (c, n)
            else:  # just outside the bounds a half-turn can win
                assert c <= 0.95 or n <= 0.8
    assert skipped == 1 * 2
    # a sliver's half-turns are always checked: its rule reads their NCC
    sliver = _turn_result(0.99, 0.95)
    sliver.diagnostics["in_image_fraction"] = 0.15
    assert not PoseTracker._half_turns_cannot_win(sliver)
    det = _turn_result(0.89, 0.95)
    assert choose_half_turn(det, [_turn_result(1.0, 0.5)]) is not det
    det = _turn_result(0.99, 0.8)
    assert choose_half_turn(det, [_turn_result(0.99, 1.0)]) is not det


class _TruthCoarse:
    """Pose-Net stand-in returning the ground-truth pose of a one-frame generated scene."""

    def __init__(self, T):
        self.T = T

    def estimate(self, frame, roi=None):
        from tracking_data import CoarseResult

        return CoarseResult(self.T.copy(), 0.9, None)


def _one_mug_frame(tmp_path, seed):
    """Frame 0 of the generator's 640x480 mug scene ``seed`` -> (frame, ground truth)."""
    from gs2pose_ros.bop import BopScene
    from gs2pose_ros.frame import Frame
    from gs2pose_ros.synth import SynthConfig, generate

    generate(SynthConfig(out=str(tmp_path / str(seed)), object="mug", frames=1, seed=seed, ref_views=0,
                         progress=False))
    scene = BopScene(tmp_path / str(seed) / "test" / "000000")
    return Frame.validated(scene.rgb(0), scene.camera(0).K, scene.depth(0)), scene.gt(0)[0]


@pytest.mark.parametrize("seed, handle_in_view", [(8, False), (7, True)])
def test_a_mug_detected_with_handle_and_logo_facing_away_is_not_confirmed(tmp_path, seed, handle_in_view,
                                                                             monkeypatch):
    """Frame 0 of the generator's 640x480 mug scenes: seed 8 shows only the band (handle and logo
    face away, as through the first half of its sequence, tracked 59-78 deg off about the axis at
    0.99 before this check), seed 7 the handle. The true pose scores the same turned 20 deg about
    the body's axis in the first: nothing in view fixes that rotation, so the detection is not
    confirmed (no valid estimate, no track started)."""
    from gs2pose_ros.synth.objects import make_object
    from tracking_data import model_from_object

    frame, gt = _one_mug_frame(tmp_path, seed)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = gt.R, gt.t
    model, meta = model_from_object(make_object("mug"), 6000, 0)
    tr = PoseTracker(model, meta, coarse=_TruthCoarse(T), config={"try_flips": False}, device="cpu")
    est = tr.estimate(frame)
    assert est.confidence > 0.9 and np.abs(est.T_cam_obj[:3, 3] - gt.t).max() < 0.01  # right, and fits
    assert est.pose_valid == handle_in_view
    assert est.reason == (NotValidReason.NONE if handle_in_view else NotValidReason.AMBIGUOUS_ROTATION)
    assert (tr.track(frame).state == TrackingState.TRACKING) == handle_in_view
    # the axes stored in the model's metadata (build-model writes them) are used as they are
    import dataclasses

    import gs2pose_ros.tracker as tracker_module

    stored = dataclasses.replace(meta)
    stored.near_axes = tr._near_axes
    monkeypatch.setattr(tracker_module, "near_symmetry_axes", lambda *a, **k: pytest.fail("axes searched again"))
    tr2 = PoseTracker(model, stored, coarse=_TruthCoarse(T), config={"try_flips": False}, device="cpu")
    assert tr2.estimate(frame).pose_valid == handle_in_view


class _CountingTruthCoarse(_TruthCoarse):
    """:class:`_TruthCoarse` that counts its calls (each one a detection)."""

    calls = 0

    def estimate(self, frame, roi=None):
        self.calls += 1
        return super().estimate(frame, roi)


def test_a_mug_ambiguous_about_its_axis_is_followed_without_detections(tmp_path, monkeypatch):
    """Seed 8 frame 0 (handle and logo facing away) tracked frame after frame: the detection is
    refused as ambiguous, and the next frames follow its pose without a detection (~0.3 s instead
    of ~1.5 s), still not valid, reason AMBIGUOUS_ROTATION, the position right; after
    ``follow_ambiguous_frames`` frames a detection runs again. Seed 12's frame shows the handle:
    a pose held there 40 deg off about the axis still scores as well turned 20 deg, but the view
    prefers it turned toward the handle, so it is not followed and the detection starts the track
    (without that sweep it would have been followed)."""
    import cv2

    import gs2pose_ros.tracker as tracker_module
    from gs2pose_ros.posenet.coarse import turned_about
    from gs2pose_ros.synth.objects import make_object
    from tracking_data import model_from_object

    model, meta = model_from_object(make_object("mug"), 6000, 0)
    frame, gt = _one_mug_frame(tmp_path, 8)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = gt.R, gt.t
    coarse = _CountingTruthCoarse(T)
    tr = PoseTracker(model, meta, coarse=coarse, config={"try_flips": False, "follow_ambiguous_frames": 2},
                     device="cpu")
    reasons, calls = [], []
    for _ in range(4):
        est = tr.track(frame)
        reasons.append(est.reason)
        calls.append(coarse.calls)
        assert not est.pose_valid and np.abs(est.T_cam_obj[:3, 3] - gt.t).max() < 0.01
        if "followed_ambiguous_frames" in est.diagnostics:
            assert "posenet" not in est.stages and "follow" in est.stages
    assert reasons == [NotValidReason.AMBIGUOUS_ROTATION] * 4
    assert calls == [1, 1, 1, 2]  # detected, followed twice, detected again

    frame, gt = _one_mug_frame(tmp_path, 12)
    T[:3, :3], T[:3, 3] = gt.R, gt.t

    def held_40_deg_off(sweep: bool):
        tr = PoseTracker(model, meta, coarse=_CountingTruthCoarse(T), config={"try_flips": False}, device="cpu")
        (e, c), = tr._axes()
        T_off = np.eye(4)
        T_off[:3, :3], T_off[:3, 3] = turned_about(gt.R, gt.t, cv2.Rodrigues(e * np.radians(-40.0))[0], c)
        tr._ambiguous = (T_off, tr.appearance, 0)
        if not sweep:
            monkeypatch.setattr(tracker_module, "AXIS_SWEEP_MAX_DEG", 0.0)
        return tr, tr.track(frame)

    tr, est = held_40_deg_off(sweep=True)
    assert tr.coarse.calls == 1 and est.pose_valid and tr.state == TrackingState.TRACKING
    tr, est = held_40_deg_off(sweep=False)
    assert tr.coarse.calls == 0 and est.reason == NotValidReason.AMBIGUOUS_ROTATION and "follow" in est.stages


@pytest.mark.parametrize("seed, turned_deg, handle_in_view", [(12, -40.0, True), (12, 25.0, True), (8, -40.0, False)])
def test_a_detection_turned_about_the_mug_axis_is_turned_back_where_the_view_tells(tmp_path, monkeypatch, seed,
                                                                                   turned_deg, handle_in_view):
    """Frame 0 of the generator's mug scenes, the coarse pose the truth turned about the body's
    axis. Seed 12 shows the handle: the refinement alone stays where it starts (the score
    saturates turned away from the handle; toward it, its gradient is flat) and the pose is not
    confirmed; the turns scored about the axis find the truth, refined there and confirmed.
    Seed 8 shows neither handle nor logo: whatever the sweep finds stays ambiguous."""
    import cv2

    import gs2pose_ros.tracker as tracker_module
    from gs2pose_ros.posenet.coarse import turned_about
    from gs2pose_ros.synth.objects import make_object
    from tracking_data import model_from_object

    frame, gt = _one_mug_frame(tmp_path, seed)
    model, meta = model_from_object(make_object("mug"), 6000, 0)

    def estimate():
        tr = PoseTracker(model, meta, coarse=_TruthCoarse(np.eye(4)), config={"try_flips": False}, device="cpu")
        (e, c), = tr._axes()
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = turned_about(gt.R, gt.t, cv2.Rodrigues(e * np.radians(turned_deg))[0], c)
        tr.coarse = _TruthCoarse(T)
        est = tr.estimate(frame)
        dR = est.T_cam_obj[:3, :3].T @ gt.R
        return est, np.degrees(np.arccos(np.clip((np.trace(dR) - 1) / 2, -1, 1)))

    est, err_deg = estimate()
    assert est.pose_valid == handle_in_view
    if handle_in_view:
        assert err_deg < 3.0 and "turned_along_print_from_ncc" in est.diagnostics
    else:
        assert est.reason == NotValidReason.AMBIGUOUS_ROTATION
    monkeypatch.setattr(tracker_module, "AXIS_SWEEP_MAX_DEG", 0.0)  # no turns tried: left where it was
    est, err_deg = estimate()
    assert not est.pose_valid and est.reason == NotValidReason.AMBIGUOUS_ROTATION and err_deg > 20.0


@pytest.mark.parametrize("detected", ["true pose", "turned about the body axis"])
def test_the_print_does_not_pick_a_half_turn_about_an_axis_it_cannot_tell(tmp_path, detected):
    """Mug seed 8 frame 0 (handle and logo facing away), half-turns tried: the true pose and its
    half-turn about the body's axis, which shows the handle where the image has none (a worse
    depth fit, but a higher NCC), whichever of them the coarse stage gives. The print cannot tell
    the true pose's rotation about that axis, so it cannot pick the turn either: no valid pose
    (the turn was confirmed before; a network trained on the GPU detected seed 8 frame 1 that way
    and tracked the mug 140-178 deg off for 28 frames)."""
    from gs2pose_ros.posenet.coarse import HALF_TURNS, turned_about
    from gs2pose_ros.synth.objects import make_object
    from tracking_data import model_from_object

    frame, gt = _one_mug_frame(tmp_path, 8)
    model, meta = model_from_object(make_object("mug"), 6000, 0)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = gt.R, gt.t
    if detected != "true pose":
        centre = 0.5 * (np.asarray(meta.bbox_min) + np.asarray(meta.bbox_max))
        T[:3, :3], T[:3, 3] = turned_about(gt.R, gt.t, HALF_TURNS[2], centre)  # about the box's z: the body axis
    tr = PoseTracker(model, meta, coarse=_TruthCoarse(T), device="cpu")
    est = tr.estimate(frame)
    assert not est.pose_valid and est.reason == NotValidReason.AMBIGUOUS_ROTATION
    # the pose reported is the better fit: the true one (up to the unseen turn about the axis)
    axis_cam = gt.R @ np.array([0.0, 0.0, 1.0])
    assert np.degrees(np.arccos(np.clip(axis_cam @ est.T_cam_obj[:3, 2], -1, 1))) < 10.0
    assert est.confidence > 0.9 and np.abs(est.T_cam_obj[:3, 3] - gt.t).max() < 0.02
    assert tr.track(frame).state != TrackingState.TRACKING


def _box_tracker_and_frames():
    """A tracker of a box with no near-symmetry axis (its model: four Gaussians, enough for the
    rules that read only diagnostics) and a tiny frame with depth and one without."""
    from gs2pose_ros.frame import Frame
    from gs2pose_ros.gaussians import GaussianModel, ObjectMetadata

    meta = ObjectMetadata(name="box", obj_id=1, bbox_min=[-0.05, -0.04, -0.03], bbox_max=[0.05, 0.04, 0.03],
                          diameter=0.14, near_symmetry_axes=[])
    model = GaussianModel.from_points(torch.zeros(4, 3), torch.full((4, 3), 0.5))
    tr = PoseTracker(model, meta, device="cpu")
    K = np.array([[100.0, 0, 16], [0, 100, 12], [0, 0, 1]])
    rgbd = Frame.validated(np.zeros((24, 32, 3), np.uint8), K, np.full((24, 32), 0.5, np.float32))
    rgb = Frame.validated(np.zeros((24, 32, 3), np.uint8), K)
    return tr, rgbd, rgb


def test_a_textured_detection_whose_texture_does_not_correlate_is_not_confirmed():
    """The seed-9 printed_box box entering the view, detected turned 90 deg: depth and silhouette
    fit it at 0.79 (NCC 0.195); right poses of such a textured render correlated at 0.478 or more.
    A plain render (no texture to see) and a frame without depth keep the confidence rule alone."""
    tr, rgbd, rgb = _box_tracker_and_frames()
    assert tr._confirmed(rgbd, _turn_result(0.99, 0.60, render_std=0.23), {})
    wrong = _turn_result(0.786, 0.195, render_std=0.23)
    assert not tr._confirmed(rgbd, wrong, {}) and wrong.diagnostics["texture_not_seen"] == pytest.approx(0.195)
    assert _reason(wrong) == NotValidReason.TEXTURE_MISMATCH
    assert tr._confirmed(rgbd, _turn_result(0.98, 0.2, render_std=0.1), {})  # the mug's plain side
    assert tr._confirmed(rgb, _turn_result(0.786, 0.195, render_std=0.23), {})
    assert not tr._confirmed(rgbd, _turn_result(0.5, 0.6, render_std=0.23), {})  # under accept_threshold


def test_a_detection_of_an_object_leaving_the_view_must_fit_its_depth():
    """Measured: the toy leaving the image (31 % in it), detected 39 deg off at 0.76 with 68 % of
    its depth agreeing; right detections of objects 12-59 % in the image agreed on 85 % or more.
    In full view the floor does not apply (a sparse model at a low resolution fits less)."""
    tr, rgbd, rgb = _box_tracker_and_frames()

    def detection(in_image, inliers):
        r = _turn_result(0.76, 0.62, render_std=0.21)
        r.diagnostics.update(in_image_fraction=in_image, depth_inlier_ratio=inliers)
        return r

    wrong = detection(0.31, 0.683)  # toy seed 11 frame 30
    assert not tr._confirmed(rgbd, wrong, {}) and _reason(wrong) == NotValidReason.PARTLY_IN_VIEW
    assert tr._confirmed(rgbd, detection(0.30, 0.853), {})  # mug seed 13 frame 51, right
    assert tr._confirmed(rgbd, detection(0.95, 0.72), {})  # in view: the confidence decides
    assert tr._confirmed(rgb, detection(0.31, 0.0), {})  # no depth to agree


def test_a_partly_seen_textured_detection_must_be_told_from_its_half_turns():
    """Generated toy seed 14 frame 30 (single frame; never run before session 15): 29 % of the toy
    seen, confirmed at 0.983 166 deg off, NCC 0.817 against its best half-turn's 0.801. Under
    DETECT_PARTIAL_SEEN a clearly textured detection is held (not valid, PARTLY_IN_VIEW) unless its
    print leads its half-turns by SLIVER_NCC_MARGIN, as a sliver's must; the right textured
    detections 20-50 % seen of seeds 7-14 lead by 0.107-0.222 (toy seed 14 frame 49: 0.900
    against 0.788). A plainer render, a view seen more, or no half-turns tried: the rule is silent."""
    tr, rgbd, rgb = _box_tracker_and_frames()

    def held(frame, **d):
        r = _turn_result(0.983, 0.817, render_std=0.236)
        r.diagnostics.update(in_image_fraction=0.419, visible_fraction=0.703, half_turn_ncc=0.801)
        r.diagnostics.update(d)
        tr._hold_sliver(frame, r)
        return not tr._confirmed(frame, r, {}) and _reason(r) == NotValidReason.PARTLY_IN_VIEW

    assert held(rgbd)
    assert not held(rgbd, ncc=0.900, half_turn_ncc=0.788)
    assert not held(rgbd, render_std=0.12)  # not clearly textured: its print cannot judge
    assert not held(rgbd, in_image_fraction=0.75)  # 53 % seen
    assert not held(rgb)  # without depth the texture rules do not apply
    r = _turn_result(0.983, 0.817, render_std=0.236)  # no half-turns tried
    r.diagnostics.update(in_image_fraction=0.419, visible_fraction=0.703)
    tr._hold_sliver(rgbd, r)
    assert r.confidence == 0.983
    # and such a view's half-turns are always tried, however high its confidence and NCC
    r.diagnostics["ncc"] = 0.95
    assert not PoseTracker._half_turns_cannot_win(r)
    r.diagnostics["in_image_fraction"] = 0.75
    assert PoseTracker._half_turns_cannot_win(r)


def test_an_estimate_says_why_its_pose_is_not_valid():
    """``PoseEstimate.reason``: NONE exactly when the pose is valid; an invalid one without a
    reason is a low confidence (the ROS message carries the same codes)."""
    T = np.eye(4)
    assert PoseEstimate(T, 0.9, TrackingState.TRACKING, True, reason=NotValidReason.LOW_CONFIDENCE).reason == \
        NotValidReason.NONE
    assert PoseEstimate(T, 0.1, TrackingState.LOST, False).reason == NotValidReason.LOW_CONFIDENCE
    assert PoseEstimate(T, 0.0, TrackingState.LOST, False, reason=1).reason == NotValidReason.NOT_FOUND
    low = _turn_result(0.3, 0.5)
    assert _reason(low) == NotValidReason.LOW_CONFIDENCE
    low.diagnostics["confidence_before_sliver_rule"] = 0.99
    assert _reason(low) == NotValidReason.PARTLY_IN_VIEW


def test_a_sliver_whose_print_tells_it_from_its_half_turns_is_confirmed():
    """The sliver rule yields only to texture: with depth, a clearly textured render correlating at
    SLIVER_MIN_NCC and SLIVER_NCC_MARGIN above every refined half-turn that is another pose (the
    printed_box re-entering: 0.58 against 0.46). Wrong poses of slivers measured: 0.195-0.46."""
    from gs2pose_ros.frame import Frame

    K = np.array([[100.0, 0, 16], [0, 100, 12], [0, 0, 1]])
    rgbd = Frame.validated(np.zeros((24, 32, 3), np.uint8), K, np.full((24, 32), 0.5, np.float32))
    rgb = Frame.validated(np.zeros((24, 32, 3), np.uint8), K)
    tells = PoseTracker._texture_tells_half_turns
    right = {"ncc": 0.581, "render_std": 0.154, "half_turn_ncc": 0.461}
    assert tells(rgbd, right) and not tells(rgb, right)
    assert not tells(rgbd, {**right, "half_turn_ncc": 0.5})  # a turn nearly as good: a coin toss
    assert not tells(rgbd, {**right, "ncc": 0.308})  # the wrong seed-9 sliver
    assert not tells(rgbd, {**right, "ncc": 0.52, "half_turn_ncc": 0.2})  # under SLIVER_MIN_NCC
    assert not tells(rgbd, {**right, "render_std": 0.141})  # too plain a view to judge by its print
    assert not tells(rgbd, {"ncc": 0.9, "render_std": 0.3})  # no half-turns were tried


def test_the_rival_of_a_sliver_is_another_pose_not_a_symmetric_copy():
    """A can's half-turn about its axis is the can itself: not a rival for the sliver rule; a
    box's half-turn is (its NCC is the one to beat)."""
    import cv2

    from gs2pose_ros.gaussians import ObjectMetadata
    from gs2pose_ros.refiner import RefineResult
    from gs2pose_ros.tracker import rival_ncc

    def result(R, ncc):
        T = np.eye(4)
        T[:3, :3] = R
        return RefineResult(T, 0.99, 12, 0.0, diagnostics={"ncc": ncc})

    box = dict(name="o", obj_id=1, bbox_min=[-0.03, -0.03, -0.05], bbox_max=[0.03, 0.03, 0.05], diameter=0.12)
    can = ObjectMetadata(**box, symmetric=True, symmetries_continuous=[{"axis": [0, 0, 1], "offset": [0, 0, 0]}])
    plain = ObjectMetadata(**box)
    chosen = result(np.eye(3), 0.95)
    about_axis = result(cv2.Rodrigues(np.array([0.0, 0.0, np.pi]))[0], 0.93)
    upside_down = result(cv2.Rodrigues(np.array([np.pi, 0.0, 0.0]))[0], 0.40)
    cands = [chosen, about_axis, upside_down]
    assert rival_ncc(chosen, cands, can) == pytest.approx(0.40)
    assert rival_ncc(chosen, cands, plain) == pytest.approx(0.93)
    assert rival_ncc(chosen, [chosen], plain) == 0.0


def test_an_alternative_that_fits_only_the_depth_is_not_turned_about(seq_leave, monkeypatch):
    """The best candidate's half-turns are tried on its depth fit alone, an alternative's only
    when it scores by itself: an alternative fitted to a wall 2.5 m behind an out-of-view mug
    (0.004, depth inliers 0.67) had a half-turn at 0.77, a confident pose out of view."""
    from gs2pose_ros.refiner import RefineResult

    coarse = _SecondCandidateCoarse(_TinyMaskCoarse(seq_leave), first_pose=True)
    tr = PoseTracker(seq_leave.model, seq_leave.meta, coarse=coarse, config=FAST, device="cpu")
    turned = []
    monkeypatch.setattr(tr, "_refine_candidate", lambda frame, T, mask, stages: RefineResult(
        T, 0.004, 40, 0.0, diagnostics={"depth_inlier_ratio": 0.67}))
    monkeypatch.setattr(tr, "_best_flip", lambda frame, r, stages: turned.append(r) or r)
    est = tr.estimate(seq_leave.frames[0])
    assert len(turned) == 1 and not est.pose_valid  # the best candidate's only


def test_the_view_can_pin_a_rotation_about_a_near_symmetry_axis():
    """A mug with its handle out of sight scores the same turned 20 deg about its axis, but where
    the logo shows, the right pose correlates far better than its turns (measured: seed 7 frames 28
    and 51); with handle and logo facing away (seed 8 frames 0, 10, 20) the turns correlate as
    well and outline the same: still ambiguous. With the handle in view (seed 12 frame 0) neither
    the outline nor the print alone tells the turn toward it, both together do. A plain render's
    correlation says nothing; its outline still counts."""
    from gs2pose_ros.tracker import view_tells_turn

    def d(ncc, std, iou=0.95):
        return {"ncc": ncc, "render_std": std, "silhouette_iou": iou}

    assert view_tells_turn(d(0.720, 0.233), d(0.387, 0.23))  # seed 7 frame 28
    assert view_tells_turn(d(0.573, 0.142), d(0.322, 0.14))  # seed 7 frame 51
    for pose, turned in [(0.347, 0.411), (0.380, 0.375), (0.419, 0.422), (0.347, 0.306)]:  # seed 8
        assert not view_tells_turn(d(pose, 0.1), d(turned, 0.1))
    # seed 8 frames 6 and 3, poses 30 and 34 deg off: a turn outlines a little worse, correlates far better
    assert not view_tells_turn(d(0.32, 0.109, 0.97), d(0.55, 0.109, 0.94))
    assert not view_tells_turn(d(0.26, 0.108, 0.96), d(0.51, 0.108, 0.94))
    # seed 12 frame 0, the right pose: outline 0.055 and NCC 0.17 ahead; each alone is not enough
    assert view_tells_turn(d(0.80, 0.197, 0.914), d(0.63, 0.197, 0.859))
    assert not view_tells_turn(d(0.80, 0.197, 0.914), d(0.80, 0.197, 0.859))
    assert not view_tells_turn(d(0.80, 0.197, 0.914), d(0.63, 0.197, 0.914))
    assert not view_tells_turn(d(0.9, 0.01), d(0.1, 0.01))  # plain render, same outline
    assert view_tells_turn(d(0.1, 0.01, 0.95), d(0.9, 0.01, 0.80))  # plain render, the outline tells
