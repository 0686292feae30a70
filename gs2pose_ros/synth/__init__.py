"""Synthetic RGB-D sequences in BOP format, rendered by an independent CPU ray caster
(Embree via ``embreex``, shading in numpy): never the project's Gaussian renderer.

Public entry::

    from gs2pose_ros.synth import SynthConfig, generate
    result = generate(SynthConfig(out="/tmp/synth", object="printed_box", frames=100, seed=0))
    result.test_scene  # Path of <out>/test/000000

See docs/synthetic_data.md for the choices, the options, the noise model and the file layout.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gs2pose_ros.errors import ConfigError
from gs2pose_ros.synth.objects import BUILTIN_OBJECTS
from gs2pose_ros.synth.sensor import ColorNoise, DepthNoise

__all__ = ["SynthConfig", "SynthResult", "generate", "write_object_model", "BUILTIN_OBJECTS", "DepthNoise", "ColorNoise", "OBJ_ID"]

#: obj_id of the target in the generated dataset (models/obj_000001.ply).
OBJ_ID = 1

#: The default camera: a 640x480 RealSense-class colour camera (D435-like), depth registered to it.
DEFAULT_WIDTH, DEFAULT_HEIGHT, DEFAULT_F = 640, 480, 615.0


@dataclass(frozen=True)
class SynthConfig:
    """Everything :func:`generate` needs. Defaults make the documented default scene; the CLI
    maps its flags onto these fields in one place (``gs2pose_ros.synth.cli``)."""

    out: str  #: dataset root to write (models/, train/000000, test/000000)
    object: str = "printed_box"  #: built-in name (printed_box, mug, can, toy) or a .ply/.obj path
    units: str = "mm"  #: units of a mesh file's coordinates ("mm" for BOP models, or "m")
    frames: int = 100  #: test-sequence length
    seed: int = 0  #: same seed and options -> same bytes
    ref_views: int = 60  #: reference views of the object alone (train/000000); 0 = none
    ref_hemisphere: bool = False  #: reference views from the upper hemisphere only
    width: int = DEFAULT_WIDTH  #: image width; K is scaled from the 640x480 default unless fx.. given
    height: int = DEFAULT_HEIGHT
    fx: float | None = None  #: intrinsics override (pixels); None = default scaled to the size
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    fps: float = 30.0
    speed: float = 10.0  #: camera path speed, cm/s
    rot_speed: float = 20.0  #: mean camera rotation speed, deg/s (the orbit itself may exceed it)
    distance: float | None = None  #: mean camera-target distance, m; None = fit the object (~1/3 of the width)
    occlusion: float = 0.3  #: an occluder hides up to this fraction of the target, in episodes; 0 = no occluder
    leave_view: tuple[int, int] | None = None  #: (START, LEN): target fully out of view in frames [START, START+LEN)
    distractors: int = 6  #: random shapes on the table
    light_drift: bool = True  #: the directional light turns and changes intensity over the sequence
    temperature_drift: bool = True  #: the light's colour temperature drifts (3900..6500 K)
    shadows: bool = True  #: hard shadows of the directional light in the test sequence
    supersample: int = 1  #: colour rays per pixel = supersample^2 (depth, masks: pixel centre)
    motion_blur: int = 0  #: sub-frame renders averaged for the colour image (0 or 1 = off)
    exposure: float = 0.5  #: shutter time as a fraction of the frame interval (motion blur)
    depth_noise: DepthNoise = field(default_factory=DepthNoise)
    color_noise: ColorNoise = field(default_factory=ColorNoise)
    depth_scale: float = 1.0  #: mm per depth-PNG unit (1 mm, as a RealSense z16 stream)
    overwrite: bool = False  #: replace models/, train/000000, test/000000 if present
    progress: bool = True  #: tqdm progress bars

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(isinstance(self.frames, int) and self.frames >= 1, f"frames = {self.frames!r}: give at least 1 test frame")
        need(isinstance(self.ref_views, int) and self.ref_views >= 0, f"ref_views = {self.ref_views!r}: must be >= 0")
        need(16 <= self.width <= 8192 and 16 <= self.height <= 8192,
             f"image size {self.width}x{self.height}: width and height must be within 16..8192 pixels")
        for name in ("fx", "fy"):
            v = getattr(self, name)
            need(v is None or (math.isfinite(v) and v > 0), f"{name} = {v!r}: a focal length must be a positive number of pixels")
        need(self.fps > 0, f"fps = {self.fps}: must be positive")
        need(0 <= self.speed <= 500, f"speed = {self.speed} cm/s: must be within 0..500")
        need(0 <= self.rot_speed <= 720, f"rot_speed = {self.rot_speed} deg/s: must be within 0..720")
        need(self.distance is None or 0.1 <= self.distance <= 5.0, f"distance = {self.distance} m: must be within 0.1..5")
        need(0.0 <= self.occlusion <= 0.95, f"occlusion = {self.occlusion}: a fraction within 0..0.95")
        need(0 <= self.distractors <= 40, f"distractors = {self.distractors}: must be within 0..40")
        need(1 <= self.supersample <= 4, f"supersample = {self.supersample}: must be 1..4")
        need(0 <= self.motion_blur <= 16, f"motion_blur = {self.motion_blur}: sub-frames must be 0..16")
        need(0 < self.exposure <= 1, f"exposure = {self.exposure}: a fraction of the frame interval in (0, 1]")
        need(self.depth_scale > 0, f"depth_scale = {self.depth_scale}: must be a positive number of mm")
        need(self.units in ("mm", "m"), f"units = {self.units!r}: use 'mm' (BOP models) or 'm'")
        if self.leave_view is not None:
            s, n = self.leave_view
            need(1 <= s and n >= 1 and s + n <= self.frames,
                 f"leave_view = {s}:{n}: needs START >= 1, LEN >= 1 and START + LEN <= frames ({self.frames})")

    def intrinsics(self) -> np.ndarray:
        """K of the colour (and registered depth) camera: the default scaled to width x height,
        with any fx/fy/cx/cy given replacing the scaled values."""
        sx, sy = self.width / DEFAULT_WIDTH, self.height / DEFAULT_HEIGHT
        fx = self.fx if self.fx is not None else DEFAULT_F * sx
        fy = self.fy if self.fy is not None else DEFAULT_F * sy
        cx = self.cx if self.cx is not None else self.width / 2.0
        cy = self.cy if self.cy is not None else self.height / 2.0
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclass
class SynthResult:
    """Paths written by :func:`generate` and a few measured numbers."""

    root: Path
    models_dir: Path
    train_scene: Path | None
    test_scene: Path
    seconds: float
    stats: dict
    summary: str


def _prepare_out(root: Path, overwrite: bool) -> None:
    parts = [root / "models", root / "train" / "000000", root / "test" / "000000"]
    present = [p for p in parts if p.exists()]
    if present and not overwrite:
        raise ConfigError(
            f"{root}: already holds {', '.join(str(p.relative_to(root)) for p in present)}; "
            "pass overwrite (--overwrite) or choose another --out folder"
        )
    for p in present:
        shutil.rmtree(p)
    root.mkdir(parents=True, exist_ok=True)


def _half_fov(K: np.ndarray, W: int, H: int) -> tuple[float, float]:
    return math.atan(min(K[0, 2], W - K[0, 2]) / K[0, 0]), math.atan(min(K[1, 2], H - K[1, 2]) / K[1, 1])


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, leave=False)


#: Lighting of the reference views (train/000000): ambient plus one directional light whose
#: direction (unit vector towards the light) is fixed in the *object* frame (z up: from above,
#: front-left). No shadows. The test sequence has its own drifting world-frame light.
REF_LIGHT_DIRECTION_OBJ = (0.35, -0.45, 0.82)
REF_LIGHT_INTENSITY = 0.45
REF_LIGHT_AMBIENT = 0.6


def _render_reference(obj, config: SynthConfig, K, W, H, rng, scene_dir: Path) -> dict:
    from gs2pose_ros.bop import BopSceneWriter
    from gs2pose_ros.synth.raycast import Body, Light
    from gs2pose_ros.synth.scene import FrameRenderer, inv_pose, look_at, pose
    from gs2pose_ros.synth.sensor import apply_color_noise, apply_depth_noise

    body = Body([obj.surface], name=obj.name)
    c = 0.5 * (obj.vertices.min(0) + obj.vertices.max(0))
    radius = float(np.linalg.norm(obj.vertices - c, axis=1).max())
    d_fit = radius / math.sin(0.9 * min(_half_fov(K, W, H)))
    n = config.ref_views
    # Fibonacci sphere (or hemisphere z >= 0) directions, three distances in turn
    k = np.arange(n) + 0.5
    z = 1.0 - k / n if config.ref_hemisphere else 1.0 - 2.0 * k / n
    ang = k * math.pi * (3.0 - math.sqrt(5.0))
    rxy = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    dirs = np.stack([rxy * np.cos(ang), rxy * np.sin(ang), z], axis=1)
    scales = (1.0, 1.25, 1.6)
    renderer = FrameRenderer(K, W, H, config.supersample)
    # The light is fixed in the object frame (like a static object scanned under fixed room
    # lights), so a surface point looks the same from every view up to the weak highlight and the
    # camera's vignetting and noise; docs/synthetic_data.md ("Reference views").
    L_obj = np.asarray(REF_LIGHT_DIRECTION_OBJ, dtype=np.float64)
    L_obj = L_obj / np.linalg.norm(L_obj)
    with BopSceneWriter(scene_dir, depth_scale=config.depth_scale) as writer, _bar(n, "reference views", config.progress) as bar:
        for i in range(n):
            eye = c + dirs[i] * d_fit * scales[i % len(scales)]
            T_cam_obj = inv_pose(pose(look_at(eye, c), eye))
            light = Light(direction=tuple(T_cam_obj[:3, :3] @ L_obj), intensity=REF_LIGHT_INTENSITY,
                          ambient=REF_LIGHT_AMBIENT, shadows=False)
            lab = renderer.render(body, T_cam_obj, [], light)
            depth = apply_depth_noise(lab.depth, lab.albedo, lab.cos_view, config.depth_noise, rng)
            rgb = apply_color_noise(lab.color, config.color_noise, rng)
            writer.add_frame(i, rgb, K, [(OBJ_ID, T_cam_obj)], depth, [lab.mask], [lab.mask_visib],
                             [lab.px_count_all], [lab.bbox_obj])
            bar.update()
    return {"ref_distance_m": (d_fit * scales[0], d_fit * scales[-1])}


def _render_test(obj, config: SynthConfig, K, W, H, rngs, scene_dir: Path) -> dict:
    from gs2pose_ros.bop import BopSceneWriter
    from gs2pose_ros.synth.raycast import Body, cast
    from gs2pose_ros.synth.scene import (FrameRenderer, build_layout, build_trajectory, inv_pose,
                                         leave_view_schedule, LightSchedule, mean_speeds, occlusion_profile,
                                         place_occluder)
    from gs2pose_ros.synth.sensor import apply_color_noise, apply_depth_noise

    rng_layout, rng_traj, rng_sensor = rngs
    N, fps = config.frames, config.fps
    hfx, hfy = _half_fov(K, W, H)
    half_fov = min(hfx, hfy)
    diameter = float(np.linalg.norm(obj.extents))
    distance = config.distance or float(np.clip(diameter * K[0, 0] / (0.35 * W), 0.25, 1.5))
    # highest camera: 1.12 x distance at 57 deg elevation (see build_trajectory) above the centre
    cam_h = distance * 1.12 * math.sin(math.radians(57.0)) + 0.5 * float(obj.extents[2])
    layout = build_layout(obj, rng_layout, config.distractors, cam_h if config.occlusion > 0 else None)
    target = Body([obj.surface], name=obj.name)
    traj = build_trajectory(layout, rng_traj, N, fps, config.speed / 100.0, math.radians(config.rot_speed),
                            distance, half_fov)
    side = 1.0 if rng_traj.random() < 0.5 else -1.0
    occ_want = occlusion_profile(N, fps, config.occlusion, rng_traj) if layout.occluder is not None else np.zeros(N)
    lights = LightSchedule(float(rng_traj.uniform(0, 2 * math.pi)), config.light_drift, config.temperature_drift,
                           float(rng_traj.uniform(0, 2 * math.pi)), config.shadows)
    leave = np.zeros(N, dtype=bool)
    if config.leave_view is not None:
        start, length = config.leave_view
        ang_r = math.asin(min(1.0, layout.target_radius / (0.85 * distance)))
        away = hfx + ang_r + 0.45 * half_fov + math.radians(8.0)
        # a quick turn (0.4 s; ~230 deg/s peak at the defaults) so the target is out of view
        # for about LEN frames, not much longer
        ramp = int(max(3, min(round(0.4 * fps), start)))
        traj.leave = leave_view_schedule(start, length, away * side, ramp)
        leave[start:start + length] = True
    poses = traj.poses(np.arange(N, dtype=float))
    v_mean, w_mean = mean_speeds(poses, fps)
    renderer = FrameRenderer(K, W, H, config.supersample)
    blur_n = config.motion_blur if config.motion_blur > 1 else 0
    visib = np.zeros(N)
    dist_obj = np.zeros(N)
    with BopSceneWriter(scene_dir, depth_scale=config.depth_scale) as writer, _bar(N, "test sequence", config.progress) as bar:
        for i in range(N):
            T_world_cam = poses[i]
            T_cam_world = inv_pose(T_world_cam)
            T_cam_obj = T_cam_world @ layout.T_world_obj
            light = lights.at(i / fps, T_cam_world[:3, :3])
            others = [(layout.background, T_cam_world)]
            T_world_occ = None
            if layout.occluder is not None:
                want = 0.0 if leave[i] else float(occ_want[i])
                vf, base = None, 0.0
                if want > 0:
                    d = renderer.centre
                    ht = cast([(target, T_cam_obj)], np.zeros(3), d)
                    hb = cast(others, np.zeros(3), d)
                    vis0 = (ht.inst >= 0) & (ht.t < hb.t)
                    n_all, _ = renderer.full_silhouette(target, T_cam_obj, (ht.inst >= 0).reshape(H, W))
                    idx = np.nonzero(vis0)[0]
                    dsub, tt = d[idx], ht.t[idx]
                    base = idx.size / n_all if n_all else 0.0

                    def vf(T_wo, dsub=dsub, tt=tt, n_all=n_all, T_cam_world=T_cam_world):
                        h = cast([(layout.occluder, T_cam_world @ T_wo)], np.zeros(3), dsub)
                        return (len(tt) - int(np.count_nonzero(h.t < tt))) / n_all

                T_world_occ = place_occluder(layout, T_world_cam[:3, 3], want, side, vf, base, config.occlusion)
                others.append((layout.occluder, T_cam_world @ T_world_occ))
            blur = []
            if blur_n:
                ts = i + config.exposure * ((np.arange(blur_n) + 0.5) / blur_n - 0.5)
                for Twc in traj.poses(ts):
                    Tcw = inv_pose(Twc)
                    inst = [(target, Tcw @ layout.T_world_obj), (layout.background, Tcw)]
                    if T_world_occ is not None:
                        inst.append((layout.occluder, Tcw @ T_world_occ))
                    blur.append(inst)
            lab = renderer.render(target, T_cam_obj, others, light, blur_instances=blur)
            depth = apply_depth_noise(lab.depth, lab.albedo, lab.cos_view, config.depth_noise, rng_sensor)
            rgb = apply_color_noise(lab.color, config.color_noise, rng_sensor)
            writer.add_frame(i, rgb, K, [(OBJ_ID, T_cam_obj)], depth, [lab.mask], [lab.mask_visib],
                             [lab.px_count_all], [lab.bbox_obj])
            visib[i] = lab.mask_visib.sum() / lab.px_count_all if lab.px_count_all else 0.0
            dist_obj[i] = float(np.linalg.norm(T_cam_obj[:3, 3]))
            bar.update()
    return {
        "speed_cm_s": v_mean * 100.0,
        "rot_speed_deg_s": math.degrees(w_mean),
        "visib_fract_mean": float(visib.mean()),
        "visib_fract_min_in_view": float(visib[~leave].min()) if (~leave).any() else 0.0,
        "frames_out_of_view": int(np.count_nonzero(visib == 0)),
        "frames_occluded": int(np.count_nonzero((occ_want > 0) & ~leave)),
        "distance_m": (float(dist_obj.min()), float(dist_obj.max())),
        "distractors": layout.distractors,
        "triangles": layout.background.n_faces + target.n_faces
        + (layout.occluder.n_faces if layout.occluder is not None else 0),
    }


def write_object_model(models_dir, obj):
    """Write ``models_dir/obj_000001.ply`` (millimetres, vertex colours) and ``models_info.json``
    for the generated object ``obj`` (a ``SynthObject``), as every generated dataset holds them;
    returns the object's ``ModelInfo``. ``build-model --mesh`` on that ply makes the shipped
    Gaussian models (``gs2pose_ros/data/``)."""
    from gs2pose_ros.bop import write_model_ply, write_models_info
    from gs2pose_ros.mesh import model_info_from_mesh

    mesh = obj.to_trimesh()
    write_model_ply(models_dir, OBJ_ID, mesh)
    info = model_info_from_mesh(mesh, OBJ_ID, symmetries_continuous=obj.symmetries_continuous)
    write_models_info(models_dir, [info])
    return info


def generate(config: SynthConfig) -> SynthResult:
    """Write the BOP dataset described by ``config``: ``models/`` (obj_000001.ply in mm with
    vertex colours, models_info.json), ``train/000000`` (reference views, unless
    ``ref_views == 0``) and ``test/000000`` (the sequence). Same config -> same bytes."""
    from gs2pose_ros.synth.objects import make_object

    t0 = time.perf_counter()
    obj = make_object(config.object, config.units)
    root = Path(config.out)
    _prepare_out(root, config.overwrite)
    seqs = np.random.SeedSequence(config.seed).spawn(4)
    rng_layout, rng_traj, rng_ref, rng_test = (np.random.default_rng(s) for s in seqs)
    K = config.intrinsics()
    W, H = config.width, config.height

    models_dir = root / "models"
    info = write_object_model(models_dir, obj)

    stats: dict = {"object": obj.name, "diameter_mm": info.diameter * 1000.0, "model_triangles": len(obj.faces)}
    train_scene = None
    if config.ref_views > 0:
        train_scene = root / "train" / "000000"
        stats.update(_render_reference(obj, config, K, W, H, rng_ref, train_scene))
    test_scene = root / "test" / "000000"
    stats.update(_render_test(obj, config, K, W, H, (rng_layout, rng_traj, rng_test), test_scene))
    seconds = time.perf_counter() - t0
    stats["seconds"] = seconds
    sym = "continuous symmetry about z" if obj.symmetries_continuous else "no symmetry"
    summary = (
        f"Wrote a synthetic BOP dataset to {root} in {seconds:.1f} s (seed {config.seed}): object "
        f"'{obj.name}' as models/obj_{OBJ_ID:06d}.ply ({len(obj.faces)} triangles, diameter "
        f"{stats['diameter_mm']:.1f} mm, {sym}); {config.ref_views} reference views in train/000000 and "
        f"{config.frames} test frames in test/000000 at {W}x{H} (fx {K[0, 0]:.1f}, {config.fps:g} fps). "
        f"Camera {stats['distance_m'][0]:.2f}-{stats['distance_m'][1]:.2f} m from the target, moving "
        f"{stats['speed_cm_s']:.1f} cm/s and turning {stats['rot_speed_deg_s']:.1f} deg/s on average; "
        f"{stats['distractors']} distractors; target visible fraction mean {stats['visib_fract_mean']:.2f}, "
        f"min in view {stats['visib_fract_min_in_view']:.2f}; {stats['frames_occluded']} frames with an "
        f"occluder episode (up to {config.occlusion:.0%}); {stats['frames_out_of_view']} frames with the "
        f"target out of view. Depth in mm x {config.depth_scale:g}, noise sigma(z) = "
        f"{config.depth_noise.sigma_a * 1000:.2f} mm + {config.depth_noise.sigma_b * 1000:.2f} mm/m^2 z^2."
    )
    return SynthResult(root, models_dir, train_scene, test_scene, seconds, stats, summary)
