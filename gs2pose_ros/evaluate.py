"""``gs2pose eval``: run the estimator or the tracker over a BOP scene and score it.

Writes, next to ``--report report.json``: ``<report>.md`` (markdown summary), ``<report>_plots.png``
(error and confidence over time, state bands), ``<report>_overlay_*.png`` (a few frames with the
model drawn at the estimate), and ``<report>_bop.csv`` (BOP challenge results format:
``scene_id,im_id,obj_id,score,R,t,time`` with ``R`` the 9 row-major values and ``t`` in mm, both
space-separated, ``time`` seconds for the image; one line per valid pose).

Frames count as *visible* when the object's ``visib_fract`` (scene_gt_info.json) is at least
``--min-visib`` (default 0.1, BOP's threshold), or, without gt info, when it has a ground truth
that projects in front of the camera. ADD(-S)-0.1d is over visible frames; a frame without a valid
pose counts as a miss. Out-of-view frames are checked for confident (``pose_valid``) poses.
The same visible frames are scored with BOP 2019's average recall (AR, the mean of the VSD, MSSD
and MSPD recalls, ``metrics.Bop19Evaluator``; VSD only where the frames have depth), which the BOP
challenge ranks by and other trackers report.

``--init gt-perturbed`` replaces Pose-Net with the ground truth perturbed by 15 deg / 3 cm
(a random pose while the object is out of view): for measuring the refiner and tracker before a
trained Pose-Net exists. Reports made this way say so in their ``init`` field and summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from gs2pose_ros.errors import ConfigError, DatasetError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score single-frame estimation or tracking on a BOP dataset (ADD(-S), latency, BOP CSV)",
        description="Run the estimator (--mode estimate) or the tracker (--mode track) over the test "
                    "scenes of a BOP dataset and write a JSON report, a markdown summary, plots, "
                    "overlays and a BOP results CSV.",
    )
    p.add_argument("--dataset", required=True, help="BOP dataset root (models/, test/<scene>/)")
    p.add_argument("--object", required=True, help="object id (obj_id) to evaluate")
    p.add_argument("--model", required=True, help="Gaussian model ply (its metadata JSON beside it)")
    p.add_argument("--posenet", default=None, help="Pose-Net weights (required unless --init gt-perturbed)")
    p.add_argument("--mode", choices=("estimate", "track"), default="track")
    p.add_argument("--report", required=True, help="output report.json (other outputs beside it)")
    p.add_argument("--frames", default=None, metavar="A:B[:STEP]", help="image ids A..B-1 only (every STEP-th)")
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument("--scene", type=int, default=None, help="one scene id only (default: all)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--config", default=None, help="tracker config JSON/YAML")
    p.add_argument("--init", choices=("posenet", "gt-perturbed"), default="posenet",
                   help="coarse stage: Pose-Net, or ground truth perturbed by 15 deg / 3 cm (development)")
    p.add_argument("--min-visib", type=float, default=0.1, help="visible-fraction threshold")
    p.add_argument("--overlays", type=int, default=4, help="overlay images to write")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.set_defaults(func=run)


def _parse_frames(text: Optional[str]):
    if not text:
        return None
    try:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(text)
        a, b = parts[0], parts[1]
        step = int(parts[2]) if len(parts) == 3 and parts[2] else 1
        if step < 1:
            raise ValueError(text)
        return (int(a) if a else None, int(b) if b else None, step)
    except ValueError as exc:
        raise ConfigError(f"--frames {text!r}: expected A:B or A:B:STEP (image ids, B exclusive)") from exc


class PerturbedGroundTruth:
    """Development stand-in for Pose-Net: ground truth perturbed by ``rot_deg`` about a random axis
    (about the object origin) and ``trans_m`` in a random direction while the object is visible, a
    random pose in front of the camera (a false detection) while it is not. ``set_gt`` is called by
    the evaluation before each frame."""

    def __init__(self, rot_deg: float = 15.0, trans_m: float = 0.03, seed: int = 0):
        self.rot = math.radians(rot_deg)
        self.trans = trans_m
        self.rng = np.random.default_rng(seed)
        self.T_gt: Optional[np.ndarray] = None
        self.visible = False

    def set_gt(self, T_gt: Optional[np.ndarray], visible: bool) -> None:
        self.T_gt, self.visible = T_gt, visible

    def estimate(self, frame, roi=None):
        import cv2

        ax = self.rng.normal(size=3)
        ax /= np.linalg.norm(ax)
        d = self.rng.normal(size=3)
        d /= np.linalg.norm(d)
        T = np.eye(4)
        if self.visible and self.T_gt is not None:
            T[:3, :3] = cv2.Rodrigues(ax * self.rot)[0] @ self.T_gt[:3, :3]
            T[:3, 3] = self.T_gt[:3, 3] + d * self.trans
        else:
            T[:3, :3] = cv2.Rodrigues(ax * self.rng.uniform(0.5, 3.0))[0]
            T[:3, 3] = [self.rng.uniform(-0.1, 0.1), self.rng.uniform(-0.08, 0.08), self.rng.uniform(0.35, 0.8)]
        return _Coarse(T, 0.5)


@dataclass
class _Coarse:
    T_cam_obj: np.ndarray
    confidence: float
    mask: Optional[np.ndarray] = None


def write_bop_csv(path, rows) -> Path:
    """BOP results CSV. rows: dicts with scene_id, im_id, obj_id, score, R (3x3), t (metres), time."""
    path = Path(path)
    with open(path, "w", newline="") as fh:
        fh.write("scene_id,im_id,obj_id,score,R,t,time\n")
        for r in rows:
            R = " ".join(f"{v:.8f}" for v in np.asarray(r["R"], dtype=np.float64).reshape(9))
            t = " ".join(f"{v * 1000.0:.6f}" for v in np.asarray(r["t"], dtype=np.float64).reshape(3))
            fh.write(f"{int(r['scene_id'])},{int(r['im_id'])},{int(r['obj_id'])},{float(r['score']):.6f},"
                     f"{R},{t},{float(r['time']):.6f}\n")
    return path


def read_bop_csv(path) -> list[dict]:
    """Parses a BOP results CSV written by :func:`write_bop_csv` (t back in metres)."""
    out = []
    with open(path, newline="") as fh:
        rd = csv.DictReader(fh)
        if rd.fieldnames != ["scene_id", "im_id", "obj_id", "score", "R", "t", "time"]:
            raise DatasetError(f"{path}: header {rd.fieldnames} is not BOP's scene_id,im_id,obj_id,score,R,t,time")
        for row in rd:
            R = np.array([float(v) for v in row["R"].split()]).reshape(3, 3)
            t = np.array([float(v) for v in row["t"].split()]) / 1000.0
            out.append({"scene_id": int(row["scene_id"]), "im_id": int(row["im_id"]),
                        "obj_id": int(row["obj_id"]), "score": float(row["score"]), "R": R, "t": t,
                        "time": float(row["time"])})
    return out


def _percentiles(x) -> dict:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return {}
    return {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)),
            "p99": float(np.percentile(x, 99)), "max": float(x.max()), "n": int(x.size)}


def evaluate_sequence(tracker, frames, gts, visible, evaluator, mode: str, coarse_stub=None,
                      on_frame=None, axes=(), bop19=None) -> list[dict]:
    """Runs ``tracker`` over ``frames``; per-frame records (errors, state, confidence, latency).
    ``axes``: the object's near-symmetry axes (``mesh.near_symmetry_axes``, model frame): each
    visible frame's ADD after the best turn about them is recorded too (``add_up_to_axis_turn``).
    ``bop19``: a ``metrics.Bop19Evaluator``: each visible frame's VSD (with depth), MSSD and MSPD
    are recorded too (``"bop19"``)."""
    from gs2pose_ros.frame import TrackingState
    from gs2pose_ros.metrics import add_up_to_axis_turn

    recs = []
    prev_state = tracker.state
    for i, (frame, T_gt, vis) in enumerate(zip(frames, gts, visible)):
        if coarse_stub is not None:
            coarse_stub.set_gt(T_gt, vis)
        est = tracker.track(frame) if mode == "track" else tracker.estimate(frame)
        rec = {"i": i, "visible": bool(vis), "state": est.state.name, "pose_valid": bool(est.pose_valid),
               "reason": est.reason.name, "confidence": float(est.confidence), "latency": float(est.latency),
               "iterations": int(est.iterations), "stages": {k: float(v) for k, v in est.stages.items()},
               "tracking_step": bool(mode == "track" and prev_state == TrackingState.TRACKING
                                     and "posenet" not in est.stages),
               "T": np.asarray(est.T_cam_obj).tolist(), "diagnostics": dict(est.diagnostics)}
        if T_gt is not None and vis:
            e = evaluator.evaluate(est.T_cam_obj[:3, :3], est.T_cam_obj[:3, 3], T_gt[:3, :3], T_gt[:3, 3])
            rec.update({"add": e.add, "adds": e.adds, "add_or_adds": e.add_or_adds, "re_deg": e.re, "te": e.te,
                        "correct": bool(e.correct and est.pose_valid), "correct_any": bool(e.correct)})
            if axes:
                R_e, t_e = est.T_cam_obj[:3, :3], est.T_cam_obj[:3, 3]
                e_turn, deg = min(add_up_to_axis_turn(R_e, t_e, T_gt[:3, :3], T_gt[:3, 3], evaluator.points, a)
                                  for a in axes)
                rec.update({"add_up_to_axis_turn": e_turn, "axis_turn_deg": deg,
                            "correct_up_to_axis_turn": bool(e_turn < 0.1 * evaluator.diameter)})
            if bop19 is not None:
                rec["bop19"] = bop19.errors(est.T_cam_obj, T_gt, frame.K, frame.rgb.shape[1], frame.depth)
        recs.append(rec)
        prev_state = tracker.state
        if on_frame is not None:
            on_frame(i, frame, est, rec)
    return recs


#: Bands of the visible fraction (``visib_fract``) the summary scores separately: ``(label, from,
#: under)``; the last is the issue's "occlusion up to 30 %".
VISIBILITY_BANDS = (("under 30 %", 0.0, 0.3), ("30-70 %", 0.3, 0.7), ("70 % or more", 0.7, 1.01))


def summarise(recs: list[dict], diameter: float) -> dict:
    from gs2pose_ros.metrics import Bop19Evaluator, confidence_auc  # (scipy: not at import, `gs2pose --help` stays fast)

    vis = [r for r in recs if r["visible"]]
    out = [r for r in recs if not r["visible"]]
    s: dict = {"frames": len(recs), "visible_frames": len(vis), "out_of_view_frames": len(out)}
    if vis:
        s["add_s_0.1d"] = float(np.mean([r.get("correct", False) for r in vis]))
        s["add_s_0.1d_ignoring_validity"] = float(np.mean([r.get("correct_any", False) for r in vis]))
        s["pose_valid_rate_visible"] = float(np.mean([r["pose_valid"] for r in vis]))
        # what a user acting on pose_valid gets: how many valid poses were wrong, and whether the
        # confidence ranks right poses above wrong ones at all (frames with a pose)
        s["confident_wrong_visible_frames"] = int(sum(r["pose_valid"] and not r.get("correct_any", False)
                                                      for r in vis))
        n_valid = sum(bool(r["pose_valid"]) for r in vis)
        s["valid_pose_precision"] = (float(sum(bool(r.get("correct")) for r in vis)) / n_valid if n_valid
                                     else float("nan"))
        posed = [r for r in vis if "correct_any" in r]
        s["confidence_auc_visible"] = confidence_auc([r["confidence"] for r in posed if r["correct_any"]],
                                                     [r["confidence"] for r in posed if not r["correct_any"]])
        ok = [r for r in vis if r["pose_valid"] and "re_deg" in r]
        if ok:
            s["rotation_error_deg"] = _percentiles([r["re_deg"] for r in ok])
            s["translation_error_mm"] = _percentiles([r["te"] * 1000 for r in ok])
            s["add_s_over_diameter"] = _percentiles([r["add_or_adds"] / diameter for r in ok])
        # the test conditions are "occlusion up to 30 %": accuracy by how much of the
        # object is in view (BOP's visib_fract: occluders and the image border)
        bands = [(label, [r for r in vis if "visib_fract" in r and lo <= r["visib_fract"] < hi])
                 for label, lo, hi in VISIBILITY_BANDS]
        s["add_s_0.1d_by_visible_fraction"] = {
            label: {"frames": len(rs), "add_s_0.1d": float(np.mean([r.get("correct", False) for r in rs]))}
            for label, rs in bands if rs}
        # refused as ambiguous about a near-symmetry axis: right but for that turn, or wrong?
        amb = [r for r in vis if r.get("reason") == "AMBIGUOUS_ROTATION" and "correct_up_to_axis_turn" in r]
        if amb:
            s["ambiguous_rotation_frames"] = len(amb)
            s["ambiguous_right_up_to_axis_turn"] = int(sum(r["correct_up_to_axis_turn"] for r in amb))
        # BOP 2019's average recall: a frame without a valid pose is a miss, as in its results
        # files (which hold valid poses only); and over every pose, and the ambiguous ones (VSD
        # scores the visible surface only: a turn the view cannot fix is no error there)
        scored = [r for r in vis if "bop19" in r]
        if scored:
            s["bop19"] = Bop19Evaluator.average_recall([r["bop19"] if r["pose_valid"] else None for r in scored],
                                                       diameter)
            s["bop19_ignoring_validity"] = Bop19Evaluator.average_recall([r["bop19"] for r in scored], diameter)
            amb_scored = [r["bop19"] for r in amb if "bop19" in r]
            if amb_scored:
                s["ambiguous_bop19_ignoring_validity"] = Bop19Evaluator.average_recall(amb_scored, diameter)
    s["confident_out_of_view_frames"] = int(sum(r["pose_valid"] for r in out))
    s["latency_s"] = _percentiles([r["latency"] for r in recs])
    steps = [r["latency"] for r in recs if r.get("tracking_step")]
    if steps:
        s["tracking_step_latency_s"] = _percentiles(steps)
    # why the visible frames had no valid pose (PoseEstimate.reason)
    reasons = [r["reason"] for r in vis if not r["pose_valid"] and "reason" in r]
    s["not_valid_reasons_visible"] = {k: reasons.count(k) for k in sorted(set(reasons))}
    states = [r["state"] for r in recs]
    s["state_counts"] = {k: states.count(k) for k in sorted(set(states))}
    lost_events = sum(1 for a, b in zip(states, states[1:]) if a != "LOST" and b == "LOST")
    recovered = sum(1 for a, b in zip(states, states[1:]) if a == "LOST" and b == "TRACKING")
    s["lost_events"] = lost_events
    s["recovered_events"] = recovered
    # frames from re-entering the view until the first correct, valid pose
    rec_frames = []
    for k in range(1, len(recs)):
        if recs[k]["visible"] and not recs[k - 1]["visible"]:
            n = None
            for j in range(k, len(recs)):
                if not recs[j]["visible"]:
                    break
                if recs[j].get("correct"):
                    n = j - k + 1
                    break
            rec_frames.append(n)
    s["frames_to_recover_after_reentry"] = rec_frames
    return s


def _plot(recs: list[dict], diameter: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(recs))
    err = np.array([r.get("add_or_adds", np.nan) / diameter for r in recs])
    conf = np.array([r["confidence"] for r in recs])
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    colours = {"TRACKING": "#d8f3dc", "LOST": "#ffccd5", "INITIALIZING": "#fff3bf"}
    for ax in (a1, a2):
        for i, r in enumerate(recs):
            ax.axvspan(i - 0.5, i + 0.5, color=colours.get(r["state"], "white"), lw=0)
            if not r["visible"]:
                ax.axvspan(i - 0.5, i + 0.5, color="#adb5bd", alpha=0.5, lw=0)
    a1.plot(x, err, ".-", color="#1d3557", ms=3)
    a1.axhline(0.1, color="#e63946", ls="--", lw=1)
    a1.set_ylabel("ADD(-S) / diameter")
    a1.set_ylim(0, max(0.3, float(np.nanmax(err)) * 1.05) if np.isfinite(err).any() else 0.3)
    a1.set_title(title + "  (green TRACKING, red LOST, yellow INITIALIZING, grey out of view)", fontsize=9)
    a2.plot(x, conf, ".-", color="#2a9d8f", ms=3)
    a2.set_ylabel("confidence")
    a2.set_ylim(0, 1.02)
    a2.set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(report: dict) -> str:
    s = report["summary"]
    lines = [f"# gs2pose eval: {report['object_name']} ({report['mode']})", "",
             f"- dataset: `{report['dataset']}`, scenes {report['scenes']}, object {report['obj_id']}",
             f"- model: `{report['model']}`; coarse stage: **{report['init']}**; device {report['device']}",
             f"- frames: {s['frames']} ({s['visible_frames']} visible, {s['out_of_view_frames']} out of view)"]
    if "add_s_0.1d" in s:
        lines.append(f"- **ADD(-S)-0.1d: {100 * s['add_s_0.1d']:.1f} %** of visible frames "
                     f"(ignoring pose_valid: {100 * s['add_s_0.1d_ignoring_validity']:.1f} %)")
    if s.get("add_s_0.1d_by_visible_fraction"):
        lines.append("- by share of the object in view: " + "; ".join(
            f"{label}: {100 * b['add_s_0.1d']:.1f} % of {b['frames']}"
            for label, b in s["add_s_0.1d_by_visible_fraction"].items()))
    if "ambiguous_rotation_frames" in s:
        lines.append(f"- refused as ambiguous about a near-symmetry axis: {s['ambiguous_rotation_frames']} frames, "
                     f"{s['ambiguous_right_up_to_axis_turn']} of them right but for the turn about it"
                     + (f" (their VSD recall {s['ambiguous_bop19_ignoring_validity']['ar_vsd']:.3f}, "
                        f"MSSD {s['ambiguous_bop19_ignoring_validity']['ar_mssd']:.3f})"
                        if "ar_vsd" in s.get("ambiguous_bop19_ignoring_validity", {}) else ""))
    if s.get("bop19"):
        def ar(d):
            parts = [f"{k[3:].upper()} {d[k]:.3f}" for k in ("ar_vsd", "ar_mssd", "ar_mspd") if k in d]
            return (f"AR {d['ar']:.3f} (" if "ar" in d else "(no VSD without depth; ") + ", ".join(parts) + ")"
        lines.append(f"- BOP 2019 average recall, valid poses: {ar(s['bop19'])}; "
                     f"any pose: {ar(s['bop19_ignoring_validity'])}")
    for key, unit in (("rotation_error_deg", "deg"), ("translation_error_mm", "mm")):
        if key in s:
            v = s[key]
            lines.append(f"- {key.replace('_', ' ')}: median {v['p50']:.2f} {unit}, p90 {v['p90']:.2f}, max {v['max']:.2f}")
    lat = s["latency_s"]
    lines.append(f"- latency per frame: median {1000 * lat['p50']:.0f} ms, p90 {1000 * lat['p90']:.0f} ms, "
                 f"max {1000 * lat['max']:.0f} ms")
    if "tracking_step_latency_s" in s:
        t = s["tracking_step_latency_s"]
        lines.append(f"- tracking step: median {1000 * t['p50']:.0f} ms, p90 {1000 * t['p90']:.0f} ms (n = {t['n']})")
    lines.append(f"- states: {s['state_counts']}; lost {s['lost_events']}x, recovered {s['recovered_events']}x; "
                 f"frames to recover after re-entering the view: {s['frames_to_recover_after_reentry']}")
    lines.append(f"- confident poses while out of view: {s['confident_out_of_view_frames']}")
    if s.get("not_valid_reasons_visible"):
        lines.append(f"- in view without a valid pose, by reason: {s['not_valid_reasons_visible']}")
    if "confident_wrong_visible_frames" in s:
        auc, prec = s["confidence_auc_visible"], s["valid_pose_precision"]
        lines.append(f"- confident and wrong in view: {s['confident_wrong_visible_frames']} frames "
                     f"(valid poses correct: {'n/a' if math.isnan(prec) else f'{100 * prec:.1f} %'}; "
                     f"confidence AUC right vs wrong: "
                     f"{'n/a, no right or no wrong poses' if math.isnan(auc) else f'{auc:.3f}'})")
    lines.append("")
    return "\n".join(lines)


def run_evaluation(dataset: str, obj: str, model_path: str, posenet_path: Optional[str], mode: str,
                   report_path: str, frames: Optional[str] = None, device: str = "auto",
                   config=None, init: str = "posenet", split: str = "test", scene: Optional[int] = None,
                   min_visib: float = 0.1, overlays: int = 4, threads: int = 0) -> dict:
    """Library form of ``gs2pose eval`` (see the module docstring); returns the report dict."""
    import cv2
    import torch

    from gs2pose_ros.bop import BopDataset
    from gs2pose_ros.frame import Frame
    from gs2pose_ros.mesh import MeshDepthRenderer, near_symmetry_axes
    from gs2pose_ros.metrics import Bop19Evaluator, PoseErrorEvaluator, symmetry_transformations
    from gs2pose_ros.tracker import PoseTracker

    if threads > 0:
        torch.set_num_threads(int(threads))
    if mode not in ("estimate", "track"):
        raise ConfigError(f"mode {mode!r}: use estimate or track")
    try:
        obj_id = int(obj)
    except ValueError as exc:
        raise ConfigError(f"--object {obj!r}: give the dataset's integer obj_id") from exc
    ds = BopDataset(dataset)
    info = ds.model_info(obj_id)
    mesh = ds.load_model(obj_id)
    points = np.asarray(mesh.vertices, dtype=np.float64)
    if len(points) > 5000:
        points = points[np.random.default_rng(0).choice(len(points), 5000, replace=False)]
    evaluator = PoseErrorEvaluator(points, info.diameter, info.symmetric)
    # the axes a view may leave a turn about (a mug's body with the handle out of sight), found on
    # the ground-truth model (symmetric objects are scored with ADD-S: no turn to look for)
    axes = [] if info.symmetric else near_symmetry_axes(points, info.diameter)
    bop19 = Bop19Evaluator(points, info.diameter,
                           symmetry_transformations(info.symmetries_discrete, info.symmetries_continuous),
                           MeshDepthRenderer(mesh.vertices, mesh.faces))
    if init == "posenet" and not posenet_path:
        raise ConfigError("--posenet is required (or --init gt-perturbed for development runs)")
    stub = PerturbedGroundTruth() if init == "gt-perturbed" else None
    tracker = PoseTracker.from_files(model_path, posenet_path if stub is None else None, config=config, device=device)
    if stub is not None:
        tracker.coarse = stub
    fr = _parse_frames(frames)
    scene_ids = [scene] if scene is not None else ds.scene_ids(split)
    if not scene_ids:
        raise DatasetError(f"{dataset}: no scenes in split {split!r}")
    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    stem = report_path.with_suffix("")
    all_recs, csv_rows = [], []
    for sid in scene_ids:
        sc = ds.scene(split, sid)
        ids = [i for i in sc.im_ids if (fr is None or ((fr[0] is None or i >= fr[0]) and (fr[1] is None or i < fr[1])))]
        if fr is not None and fr[2] > 1:
            ids = ids[::fr[2]]
        tracker.reset()

        def frames_iter():
            for im_id in ids:
                cam = sc.camera(im_id)
                yield Frame.validated(sc.rgb(im_id), cam.K, sc.depth(im_id), stamp=float(im_id),
                                      source=f"{sc.path}/{im_id:06d}")

        gts, vis, fracs = [], [], []
        for im_id in ids:
            k = sc.find_instance(im_id, obj_id) if sc.has_gt else None
            T = sc.gt(im_id)[k].T if k is not None else None
            v = T is not None and T[2, 3] > 0
            fracs.append(float(sc.gt_info(im_id)[k].visib_fract) if k is not None and sc.has_gt_info else None)
            if v and fracs[-1] is not None:
                v = fracs[-1] >= min_visib
            elif v:  # no gt info: the object's origin must project into the image
                cam = sc.camera(im_id)
                u = cam.fx * T[0, 3] / T[2, 3] + cam.cx
                w = cam.fy * T[1, 3] / T[2, 3] + cam.cy
                v = 0 <= u < cam.width and 0 <= w < cam.height
            gts.append(T)
            vis.append(bool(v))
        want = set(np.linspace(0, len(ids) - 1, min(overlays, len(ids))).round().astype(int).tolist()) if overlays else set()

        def on_frame(i, frame, est, rec, _sid=sid, _ids=ids):
            rec["scene_id"], rec["im_id"] = _sid, _ids[i]
            if fracs[i] is not None:
                rec["visib_fract"] = fracs[i]
            if est.pose_valid:
                csv_rows.append({"scene_id": _sid, "im_id": _ids[i], "obj_id": obj_id, "score": est.confidence,
                                 "R": est.T_cam_obj[:3, :3], "t": est.T_cam_obj[:3, 3], "time": est.latency})
            if i in want:
                img = tracker.render_overlay(frame, est)
                p = Path(f"{stem}_overlay_{_sid:06d}_{_ids[i]:06d}.png")
                cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

        recs = evaluate_sequence(tracker, frames_iter(), gts, vis, evaluator, mode, stub, on_frame, axes, bop19)
        all_recs.extend(recs)
    summary = summarise(all_recs, info.diameter)
    report = {"dataset": str(dataset), "obj_id": obj_id, "object_name": tracker.object_name, "model": str(model_path),
              "posenet": posenet_path, "mode": mode, "init": ("Pose-Net" if stub is None else
                                                              "ground truth perturbed by 15 deg / 3 cm (no Pose-Net)"),
              "device": str(tracker.device), "scenes": scene_ids, "torch_threads": torch.get_num_threads(),
              "diameter": info.diameter, "symmetric": info.symmetric, "summary": summary, "frames": all_recs,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    report_path.write_text(json.dumps(report, indent=1))
    Path(f"{stem}.md").write_text(_markdown(report))
    _plot(all_recs, info.diameter, Path(f"{stem}_plots.png"), f"{tracker.object_name} {mode}")
    write_bop_csv(Path(f"{stem}_bop.csv"), csv_rows)
    return report


def run(args: argparse.Namespace) -> int:
    report = run_evaluation(args.dataset, args.object, args.model, args.posenet, args.mode, args.report,
                            frames=args.frames, device=args.device, config=args.config, init=args.init,
                            split=args.split, scene=args.scene, min_visib=args.min_visib,
                            overlays=args.overlays, threads=args.threads)
    print(_markdown(report))
    return 0
