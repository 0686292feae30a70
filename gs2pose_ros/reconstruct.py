"""Building an object's 3D Gaussian model: from posed, masked reference views, or from a coloured mesh.

From views (:func:`build_model_from_scene`), the steps of GS2Pose's reconstruction stage, made to
fit a CPU and a tracking budget:

1. **Views.** Every annotated instance of the object in a BOP scene with a mask (``mask_visib``,
   else ``mask``) and at least ``min_visible_pixels`` visible pixels. Each view is cut to a square
   crop around the object's silhouette, resampled to ``crop_size`` pixels; the crop is just a new
   K (docs/conventions.md). With ``holdout_every = k`` every k-th view (by image id: views
   ``k-1, 2k-1, ...``) is held out of training and used for evaluation only.
2. **Initialisation.** Where the training views have depth: the depth inside the visible masks,
   back-projected to the object frame and voxel-downsampled to about ``init_gaussians`` points
   (colour = mean pixel colour in the voxel). Without depth: the visual hull, a voxel grid over the
   object's box (``models_info.json``, else a cube sized from the silhouettes) carved by the
   masks, its surface voxels (colour = mean colour of the pixels they project to). If carving
   leaves almost nothing (inconsistent poses or masks): random points on the box's surface.
3. **Optimisation.** Adam, one view per iteration, rendered at the crop with
   :func:`gs2pose_ros.render.render` over a random background colour (so colour and silhouette
   are both constrained). Loss = ``(1 - lambda_ssim) L1 + lambda_ssim (1 - SSIM)`` on colour,
   ``lambda_mask`` L1 between the rendered alpha and the silhouette, ``lambda_depth`` L1 on the
   depth (relative to the diameter) where the view has a depth reading inside the visible mask,
   and ``lambda_iso`` times GS2Pose's isotropy term (mean absolute deviation of each Gaussian's
   log-scales from their mean). Occluded parts of the silhouette (``mask`` minus ``mask_visib``,
   when both exist) and crop pixels outside the image are left out of the colour loss.
4. **Densification and pruning** (3DGS's adaptive density control, capped): every
   ``densify_every`` iterations in ``[densify_from, densify_until)``, Gaussians whose mean
   view-space positional gradient exceeds ``densify_grad_threshold`` are cloned (small ones) or
   split in two (large ones), the largest gradients first, never beyond ``max_gaussians``; then
   Gaussians with opacity below ``prune_opacity`` or larger than ``prune_scale`` diameters go.

Figures and commands: docs/reconstruction.md.

From a mesh (:func:`build_model_from_mesh`): flat Gaussians on area-uniform surface samples,
oriented by the face normals, coloured by the interpolated vertex colours (no optimisation).

Evaluation (:func:`evaluate_model_on_views`): masked PSNR and SSIM of renders against the views'
crops; see its docstring for the exact mask.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from gs2pose_ros.errors import ConfigError, DatasetError
from gs2pose_ros.gaussians import GaussianModel, ObjectMetadata, write_gaussian_ply
from gs2pose_ros.reconstruct_config import ReconstructionConfig

__all__ = [
    "ReconstructionConfig",
    "ReferenceView",
    "ReconstructionResult",
    "EvaluationResult",
    "load_reference_views",
    "resolve_reference_scene",
    "resolve_object_id",
    "initial_model",
    "build_model_from_scene",
    "build_model_from_mesh",
    "evaluate_model_on_views",
    "write_contact_sheet",
    "ssim_map",
]

#: Object names known without a dataset-side table (LM-O / LineMod ids).
KNOWN_OBJECT_NAMES = {
    "ape": 1, "benchvise": 2, "cam": 4, "can": 5, "cat": 6, "driller": 8, "duck": 9,
    "eggbox": 10, "glue": 11, "holepuncher": 12, "iron": 13, "lamp": 14, "phone": 15,
}
#: The synthetic generator's built-in objects (its datasets hold one object, obj_id 1).
SYNTH_OBJECT_NAMES = ("printed_box", "mug", "can", "toy")


# --------------------------------------------------------------------------------------------------
# Reference views
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class ReferenceView:
    """One object instance in one image, cropped. Tensors ``[S, S(, 3)]`` float32 on the CPU.

    ``rgb`` in [0, 1]; ``visib`` visible-silhouette coverage in [0, 1] (area-resampled);
    ``silhouette`` the alpha target (full silhouette where the scene has ``mask/``, else the
    visible one); ``colour_weight`` 1 where the colour is known (not occluded, inside the image);
    ``depth`` metres with 0 = unusable (no reading, or not inside the visible mask), or None.
    ``rgb_object``: the object's own colour contribution, premultiplied by its coverage: the image
    times the *full-resolution* visible mask, then resampled, so a crop pixel on the silhouette
    edge holds ``coverage x object colour`` and none of the image's background (None: use
    ``rgb * visib``, which counts the coverage twice where the image background is black).
    """

    im_id: int
    gt_idx: int
    T_cam_obj: np.ndarray  # [4, 4] float64
    K: np.ndarray  # [3, 3] float64, crop intrinsics
    K_full: np.ndarray  # [3, 3] intrinsics of the full image
    box: tuple  # (x0, y0, side, side) in the full image
    image_size: tuple  # (width, height) of the full image
    rgb: torch.Tensor
    visib: torch.Tensor
    silhouette: torch.Tensor
    colour_weight: torch.Tensor
    depth: Optional[torch.Tensor]
    rgb_object: Optional[torch.Tensor] = None

    @property
    def size(self) -> int:
        return int(self.rgb.shape[0])

    def object_colour(self) -> torch.Tensor:
        """``[S, S, 3]``: what the object alone contributes to each crop pixel, over black."""
        if self.rgb_object is not None:
            return self.rgb_object
        return self.rgb * self.visib[..., None]


def resolve_reference_scene(dataset):
    """The BOP scene holding reference views: ``dataset`` itself when it is a scene folder, the one
    scene of ``<dataset>/train`` (the synthetic generator's reference views), else the dataset's
    single scene (:func:`gs2pose_ros.bop.open_scene`)."""
    from gs2pose_ros.bop import BopScene, open_scene

    path = Path(dataset)
    if (path / "scene_camera.json").is_file():
        return BopScene(path)
    train = path / "train"
    if train.is_dir():
        scenes = sorted(p for p in train.iterdir() if (p / "scene_camera.json").is_file())
        if len(scenes) == 1:
            return BopScene(scenes[0])
        if len(scenes) > 1:
            raise DatasetError(f"{train}: holds {len(scenes)} scenes "
                               f"({', '.join(p.name for p in scenes[:6])}); give one scene folder")
    return open_scene(path)


def resolve_object_id(scene, obj) -> int:
    """An object id from an int, a digit string or a name (``ape``; a built-in synthetic object's
    name when the scene's dataset records it). DatasetError when unknown."""
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return int(obj)
    text = str(obj).strip()
    if text.isdigit():
        return int(text)
    names = _dataset_object_names(scene)
    if text in names:
        return names[text]
    present = scene.obj_ids if scene.has_gt else []
    if text in SYNTH_OBJECT_NAMES and len(present) == 1:
        return present[0]  # the generator's datasets hold one object and record no names
    if text in KNOWN_OBJECT_NAMES:
        return KNOWN_OBJECT_NAMES[text]
    present = scene.obj_ids if scene.has_gt else []
    raise DatasetError(f"{scene.path}: unknown object {text!r}; give an obj_id (the scene has "
                       f"{present}) or a known name ({', '.join(sorted(set(names) | set(KNOWN_OBJECT_NAMES)))})")


def _dataset_object_names(scene) -> dict:
    """``{name: obj_id}`` from an ``objects.json``/``models/names.json``-style file if present."""
    import json

    root = scene.dataset_root
    out = {}
    if root is None:
        return out
    for cand in (root / "models" / "names.json", root / "objects.json", root / "models" / "objects.json"):
        if cand.is_file():
            try:
                data = json.loads(cand.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                for k, v in data.items():
                    if isinstance(v, int):
                        out[str(k)] = v
                    elif isinstance(v, str) and str(k).isdigit():
                        out[v] = int(k)
    return out


def _box_of(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def _crop(image: np.ndarray, box, size: int, interpolation: int) -> np.ndarray:
    from gs2pose_ros.camera import crop_image

    x0, y0, side, _ = box
    return crop_image(image, x0, y0, side, side, size, size, interpolation=interpolation)


def load_reference_views(scene, obj_id: int, crop_size: int = 128, crop_padding: float = 0.15,
                         min_visible_pixels: int = 100, im_ids: Optional[Sequence[int]] = None,
                         progress: bool = False) -> list:
    """The object's :class:`ReferenceView` list, by image id; see the module docstring, step 1.

    DatasetError when the scene does not show the object, or has no masks for it.
    """
    import cv2

    from gs2pose_ros.camera import PinholeCamera, crop_box_around

    instances = scene.instances_of(obj_id)
    if not instances:
        raise DatasetError(f"{scene.path}: object {obj_id} is not annotated in scene_gt.json (the "
                           f"scene has objects {scene.obj_ids}); choose one of those")
    if im_ids is not None:
        wanted = set(int(i) for i in im_ids)
        instances = [(i, g) for i, g in instances if i in wanted]
    views = []
    any_mask = False
    iterator = instances
    if progress:
        from tqdm import tqdm

        iterator = tqdm(instances, desc="reading views", unit="view", leave=False)
    for im_id, gt_idx in iterator:
        visib = scene.mask_visib(im_id, gt_idx)
        full = scene.mask(im_id, gt_idx)
        if visib is None and full is None:
            continue
        any_mask = True
        if visib is None:
            visib = full
        if int(visib.sum()) < min_visible_pixels:
            continue
        H, W = visib.shape
        outline = full if full is not None and full.any() else visib
        x_min, y_min, x_max, y_max = _box_of(outline)
        bx0, by0, side, _ = crop_box_around(np.array([x_min, y_min, x_max, y_max]), (W, H),
                                            padding=crop_padding, min_size=16)
        # whole pixels, so an inside-the-image crop is a plain area resize
        bx0, by0 = math.floor(bx0), math.floor(by0)
        side = int(math.ceil(side))
        box = (float(bx0), float(by0), float(side), float(side))
        cam = scene.camera(im_id)
        K_crop = PinholeCamera.from_K(cam.K, W, H).crop(*box, crop_size, crop_size).K
        inter = cv2.INTER_AREA if side > crop_size else cv2.INTER_LINEAR
        image = scene.rgb(im_id).astype(np.float32) / 255.0
        rgb = _crop(image, box, crop_size, inter)
        rgb_obj = _crop(image * visib[..., None].astype(np.float32), box, crop_size, inter)
        vis_c = _crop(visib.astype(np.float32), box, crop_size, inter)
        inside = _crop(np.ones((H, W), np.float32), box, crop_size, cv2.INTER_NEAREST)
        if full is not None:
            sil = _crop(full.astype(np.float32), box, crop_size, inter)
            occluded = np.clip(sil - vis_c, 0.0, 1.0)
        else:
            sil = vis_c
            occluded = np.zeros_like(vis_c)
        weight = np.where(occluded > 0.02, 0.0, 1.0).astype(np.float32) * (inside > 0.5)
        depth_c = None
        depth = scene.depth(im_id)
        if depth is not None:
            # depth is used only well inside the visible mask (mixed pixels at edges are unreliable)
            inner = cv2.erode(visib.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            d = np.where(inner, depth, 0.0).astype(np.float32)
            depth_c = _crop(d, box, crop_size, cv2.INTER_NEAREST)
            if not (depth_c > 0).any():
                depth_c = None
        views.append(ReferenceView(
            im_id=int(im_id), gt_idx=int(gt_idx), T_cam_obj=scene.gt(im_id)[gt_idx].T,
            K=K_crop, K_full=np.asarray(cam.K, dtype=np.float64), box=box, image_size=(W, H),
            rgb=torch.from_numpy(np.ascontiguousarray(np.clip(rgb, 0, 1))),
            visib=torch.from_numpy(np.clip(vis_c, 0, 1)),
            silhouette=torch.from_numpy(np.clip(sil, 0, 1)),
            colour_weight=torch.from_numpy(np.ascontiguousarray(weight)),
            depth=None if depth_c is None else torch.from_numpy(np.ascontiguousarray(depth_c)),
            rgb_object=torch.from_numpy(np.ascontiguousarray(np.clip(rgb_obj, 0, 1))),
        ))
    if not any_mask:
        raise DatasetError(f"{scene.path}: no masks for object {obj_id} (neither mask_visib/ nor "
                           "mask/ has its {im_id:06d}_{gt_idx:06d}.png files); reconstruction "
                           "needs the object's silhouettes: add them (e.g. rendered from the "
                           "ground-truth poses) or use --mesh")
    if not views:
        raise DatasetError(f"{scene.path}: object {obj_id} has masks, but none with at least "
                           f"{min_visible_pixels} visible pixels; lower min_visible_pixels")
    return views


def split_views(views: Sequence[ReferenceView], holdout_every: int, max_views: int = 0):
    """(training views, held-out views): view ``i`` is held out when ``i % k == k - 1``."""
    if holdout_every:
        train = [v for i, v in enumerate(views) if i % holdout_every != holdout_every - 1]
        held = [v for i, v in enumerate(views) if i % holdout_every == holdout_every - 1]
    else:
        train, held = list(views), []
    if max_views and len(train) > max_views:
        pick = np.unique(np.round(np.linspace(0, len(train) - 1, max_views)).astype(int))
        train = [train[i] for i in pick]
    if not train:
        raise DatasetError(f"no training views left ({len(views)} views, holdout every "
                           f"{holdout_every}); use a smaller --holdout or more views")
    return train, held


# --------------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------------


def _object_box_from_info(info) -> tuple:
    lo = np.asarray(info.min_xyz, dtype=np.float64)
    return lo, lo + np.asarray(info.size_xyz, dtype=np.float64)


def _object_box_from_views(views: Sequence[ReferenceView]) -> tuple:
    """A generous cube around the object origin, sized from the silhouettes' extent in metres."""
    sizes = []
    for v in views:
        ys, xs = np.nonzero(v.silhouette.numpy() > 0.5)
        if len(xs) == 0:
            continue
        extent_px = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
        sizes.append(extent_px * v.T_cam_obj[2, 3] / v.K[0, 0])
    half = float(np.median(sizes)) if sizes else 0.2
    return np.full(3, -half), np.full(3, half)


def _points_from_depth(views: Sequence[ReferenceView]):
    pts, cols = [], []
    for v in views:
        if v.depth is None:
            continue
        d = v.depth.numpy()
        ys, xs = np.nonzero(d > 0)
        if len(xs) == 0:
            continue
        z = d[ys, xs].astype(np.float64)
        K = v.K
        x = (xs + 0.5 - K[0, 2]) / K[0, 0] * z
        y = (ys + 0.5 - K[1, 2]) / K[1, 1] * z
        pc = np.stack([x, y, z], 1)
        R, t = v.T_cam_obj[:3, :3], v.T_cam_obj[:3, 3]
        pts.append((pc - t) @ R)  # R^T (x - t), row vectors
        cols.append(v.rgb.numpy()[ys, xs])
    if not pts:
        return None, None
    return np.concatenate(pts), np.concatenate(cols)


def _voxel_downsample(pts: np.ndarray, cols: np.ndarray, target: int, start_voxel: float):
    """Mean point and colour per occupied voxel, the voxel grown until at most ``target`` remain."""
    voxel = start_voxel
    for _ in range(60):
        keys = np.floor(pts / voxel).astype(np.int64)
        _, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        inv = inv.reshape(-1)
        if len(counts) <= target:
            break
        voxel *= 1.15
    n = len(counts)
    p = np.zeros((n, 3))
    c = np.zeros((n, 3))
    np.add.at(p, inv, pts)
    np.add.at(c, inv, cols)
    return p / counts[:, None], c / counts[:, None], voxel


def _visual_hull(views: Sequence[ReferenceView], lo: np.ndarray, hi: np.ndarray, res: int):
    """Surface voxels of the carved grid (centres [M, 3]), their mean colours, and the voxel size."""
    import cv2

    ext = hi - lo
    voxel = float(ext.max()) / res
    n = np.maximum(np.ceil(ext / voxel).astype(int), 1)
    axes = [lo[i] + (np.arange(n[i]) + 0.5) * voxel for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    inside_votes = np.zeros(len(grid), np.int32)
    seen_votes = np.zeros(len(grid), np.int32)
    col_sum = np.zeros((len(grid), 3))
    col_n = np.zeros(len(grid))
    for v in views:
        S = v.size
        sil = (v.silhouette.numpy() > 0.3).astype(np.uint8)
        # tolerate small pose and mask errors: dilate by about a voxel's footprint, at least 2 px
        r = int(max(2, math.ceil(voxel * v.K[0, 0] / max(v.T_cam_obj[2, 3], 1e-6))))
        sil = cv2.dilate(sil, np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0
        vis = v.visib.numpy() > 0.5
        pc = grid @ v.T_cam_obj[:3, :3].T + v.T_cam_obj[:3, 3]
        z = pc[:, 2]
        ok = z > 1e-6
        zs = np.where(ok, z, 1.0)
        # a voxel is seen when it projects into the full image; the crop holds the whole
        # silhouette, so image pixels outside the crop are outside the silhouette
        uf = v.K_full[0, 0] * pc[:, 0] / zs + v.K_full[0, 2]
        vf = v.K_full[1, 1] * pc[:, 1] / zs + v.K_full[1, 2]
        W, H = v.image_size
        seen = ok & (uf >= 0) & (uf < W) & (vf >= 0) & (vf < H)
        u = np.floor(v.K[0, 0] * pc[:, 0] / zs + v.K[0, 2]).astype(np.int64)
        w = np.floor(v.K[1, 1] * pc[:, 1] / zs + v.K[1, 2]).astype(np.int64)
        incrop = seen & (u >= 0) & (u < S) & (w >= 0) & (w < S)
        wc, uc = np.clip(w, 0, S - 1), np.clip(u, 0, S - 1)
        seen_votes[seen] += 1
        hit = incrop & sil[wc, uc]
        inside_votes[hit] += 1
        ci = np.nonzero(incrop & vis[wc, uc])[0]
        u, w = uc, wc
        col_sum[ci] += v.rgb.numpy()[w[ci], u[ci]]
        col_n[ci] += 1
    # a voxel survives when it falls inside the silhouette in (almost) every view that sees it
    keep = (seen_votes > 0) & (inside_votes >= np.ceil(0.9 * seen_votes))
    occ = keep.reshape(*n)
    if not occ.any():
        return np.zeros((0, 3)), np.zeros((0, 3)), voxel
    pad = np.pad(occ, 1)
    interior = occ.copy()
    for ax in range(3):
        for s in (-1, 1):
            interior &= np.roll(pad, s, axis=ax)[1:-1, 1:-1, 1:-1]
    surf = (occ & ~interior).reshape(-1)
    colors = np.where(col_n[surf, None] > 0, col_sum[surf] / np.maximum(col_n[surf, None], 1), 0.5)
    return grid[surf], colors, voxel


def _box_surface_points(lo, hi, n: int, rng: np.random.Generator):
    ext = hi - lo
    areas = np.array([ext[1] * ext[2], ext[0] * ext[2], ext[0] * ext[1]])
    axis = rng.choice(3, size=n, p=areas / areas.sum())
    p = lo + rng.random((n, 3)) * ext
    side = rng.integers(0, 2, size=n)
    p[np.arange(n), axis] = np.where(side == 1, hi[axis], lo[axis])
    return p


def _knn_scale(pts: np.ndarray, k: int = 3) -> np.ndarray:
    """Mean distance to the k nearest neighbours (3DGS's initial scale)."""
    from scipy.spatial import cKDTree

    if len(pts) <= k:
        return np.full(len(pts), 1e-3)
    d, _ = cKDTree(pts).query(pts, k=k + 1)
    return np.maximum(d[:, 1:].mean(1), 1e-5)


def initial_model(views: Sequence[ReferenceView], config: ReconstructionConfig, box=None,
                  diameter: Optional[float] = None):
    """The initial :class:`GaussianModel` (module docstring, step 2) and how it was made
    (``"depth"``, ``"visual hull"`` or ``"bounding box"``)."""
    rng = np.random.default_rng(config.seed)
    lo, hi = box if box is not None else _object_box_from_views(views)
    diam = diameter or float(np.linalg.norm(hi - lo))
    pts, cols = _points_from_depth(views)
    source = "depth"
    if pts is None or len(pts) < 50:
        source = "visual hull"
        pts, cols, voxel = _visual_hull(views, lo, hi, config.hull_resolution)
        if len(pts) < 50:
            source = "bounding box"
            pts = _box_surface_points(lo, hi, config.init_gaussians, rng)
            cols = np.full((len(pts), 3), 0.5)
    if source != "bounding box" and len(pts) > config.init_gaussians:
        if source == "depth":
            pts, cols, _ = _voxel_downsample(pts, cols, config.init_gaussians, diam / 200.0)
        else:
            pick = rng.choice(len(pts), config.init_gaussians, replace=False)
            pts, cols = pts[pick], cols[pick]
    n = min(len(pts), config.max_gaussians)
    if n < len(pts):
        pick = rng.choice(len(pts), n, replace=False)
        pts, cols = pts[pick], cols[pick]
    scale = np.clip(config.init_scale * _knn_scale(pts), diam * 1e-4, diam * 0.05)
    model = GaussianModel.from_points(
        torch.as_tensor(pts, dtype=torch.float32), torch.as_tensor(np.clip(cols, 0, 1), dtype=torch.float32),
        scale=torch.as_tensor(scale, dtype=torch.float32), opacity=config.init_opacity,
        sh_degree=config.sh_degree)
    return model, source


# --------------------------------------------------------------------------------------------------
# Losses and image metrics
# --------------------------------------------------------------------------------------------------


def _gauss_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None):
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM [H, W] of two ``[H, W, 3]`` images in [0, 1] (Gaussian window, Wang et al.'s
    constants, channel mean, zero padding as in the 3DGS code). Differentiable."""
    x = a.permute(2, 0, 1)[None]
    y = b.permute(2, 0, 1)[None]
    g = _gauss_window(window, sigma, a.dtype, a.device)
    C = x.shape[1]
    kx = g.view(1, 1, 1, -1).expand(C, 1, 1, window)
    ky = g.view(1, 1, -1, 1).expand(C, 1, window, 1)
    pad = window // 2

    def blur(t):
        t = torch.nn.functional.conv2d(t, kx, padding=(0, pad), groups=C)
        return torch.nn.functional.conv2d(t, ky, padding=(pad, 0), groups=C)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s[0].mean(0)


# --------------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------------

_FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")


class _Trainer:
    """Adam over a GaussianModel's fields, with densification and pruning that keep Adam's moments."""

    def __init__(self, model: GaussianModel, config: ReconstructionConfig, diameter: float):
        self.config = config
        self.diameter = diameter
        self.model = model.detach().clone().requires_grad_()
        self._make_optimizer()
        n = self.model.num_gaussians
        self.grad_accum = torch.zeros(n, device=self.model.device)
        self.grad_count = torch.zeros(n, device=self.model.device)

    def _lrs(self) -> dict:
        c = self.config
        return {"means": c.lr_means * self.diameter, "quats": c.lr_quats, "log_scales": c.lr_scales,
                "opacity_logits": c.lr_opacity, "sh_dc": c.lr_sh}

    def _make_optimizer(self, old_state=None) -> None:
        lrs = self._lrs()
        m = self.model
        # the SH tensor is one leaf: the higher bands' smaller learning rate is applied by scaling
        # their update in step()
        groups = [{"params": [getattr(m, f)], "lr": lrs["sh_dc" if f == "sh" else f], "name": f}
                  for f in _FIELDS]
        self.opt = torch.optim.Adam(groups, lr=1e-3, eps=1e-15)
        if m.sh.shape[1] > 1:
            scale = torch.ones(1, m.sh.shape[1], 1, device=m.device)
            scale[:, 1:] = self.config.lr_sh_rest_factor
            # Adam is invariant to a gradient's scale, so scale the *update* instead: see step()
            self._sh_rest_scale = scale
        else:
            self._sh_rest_scale = None
        if old_state is not None:
            for group in self.opt.param_groups:
                p = group["params"][0]
                st = old_state.get(group["name"])
                if st is not None:
                    self.opt.state[p] = st

    def set_lrs(self, it: int, total: int) -> None:
        """The learning rates of step ``it``: the means' exponential decay over the whole
        schedule, the others' from ``lr_decay_from`` on (``ReconstructionConfig``)."""
        c = self.config
        frac = it / max(total - 1, 1)
        start = c.lr_decay_from
        late = 0.0 if frac <= start or start >= 1.0 else (frac - start) / (1.0 - start)
        base = self._lrs()
        for g in self.opt.param_groups:
            if g["name"] == "means":
                g["lr"] = c.lr_means * self.diameter * (c.lr_means_final ** frac)
            else:
                g["lr"] = base["sh_dc" if g["name"] == "sh" else g["name"]] * (c.lr_final ** late)

    def step(self) -> None:
        if self._sh_rest_scale is not None:
            before = self.model.sh.detach().clone()
            self.opt.step()
            with torch.no_grad():
                delta = self.model.sh - before
                self.model.sh.copy_(before + delta * self._sh_rest_scale)
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def accumulate_view_gradients(self, T: torch.Tensor, K: np.ndarray, visible: torch.Tensor,
                                  n_pixels: int) -> None:
        """View-space positional gradient per Gaussian: the camera-frame xy gradient of its mean
        times z / f, i.e. the loss gradient w.r.t. its projected centre in crop pixels (times the
        crop's pixel count, see ``densify_grad_threshold``)."""
        g = self.model.means.grad
        if g is None:
            return
        with torch.no_grad():
            R = T[:3, :3]
            gc = g @ R.T
            z = (self.model.means @ R[2] + T[2, 3]).clamp_min(1e-6)
            f = 0.5 * (float(K[0, 0]) + float(K[1, 1]))
            g2 = torch.linalg.norm(gc[:, :2], dim=1) * z / f * float(n_pixels)
            self.grad_accum += torch.where(visible, g2, torch.zeros_like(g2))
            self.grad_count += visible.to(self.grad_count.dtype)

    def _rebuild(self, keep: torch.Tensor, extra: Optional[dict]) -> None:
        """Keeps the rows ``keep`` (index), appends ``extra`` rows (field -> tensor), carries Adam's
        moments (zeros for new rows)."""
        m = self.model
        new_fields = {}
        states = {}
        for group in self.opt.param_groups:
            name = group["name"]
            p = group["params"][0]
            t = p.detach()[keep]
            add = None if extra is None else extra[name].to(t.dtype)
            if add is not None:
                t = torch.cat([t, add], 0)
            new_fields[name] = t
            st = self.opt.state.get(p)
            if st:
                nst = {"step": st["step"]}
                for key in ("exp_avg", "exp_avg_sq"):
                    v = st[key][keep]
                    if add is not None:
                        v = torch.cat([v, torch.zeros_like(add)], 0)
                    nst[key] = v
                states[name] = nst
        self.model = GaussianModel(**new_fields).requires_grad_()
        self._make_optimizer(old_state=states)
        n_new = self.model.num_gaussians
        acc = torch.zeros(n_new, device=m.device)
        cnt = torch.zeros(n_new, device=m.device)
        self.grad_accum, self.grad_count = acc, cnt

    @torch.no_grad()
    def densify_and_prune(self, densify: bool = True) -> tuple:
        """-> (cloned, split, pruned) counts."""
        c = self.config
        m = self.model
        n = m.num_gaussians
        cloned = split = 0
        keep = torch.arange(n, device=m.device)
        extra = None
        if densify:
            avg = self.grad_accum / self.grad_count.clamp_min(1)
            seen = avg[self.grad_count > 0]
            if seen.numel():
                q = torch.quantile(seen.float(), torch.tensor([0.5, 0.9, 0.99], device=seen.device))
                self.grad_quantiles = [round(float(x), 4) for x in q]
            cand = torch.nonzero(avg > c.densify_grad_threshold).squeeze(1)
            budget = c.max_gaussians - n
            if budget > 0 and cand.numel() > 0:
                if cand.numel() > budget:
                    cand = cand[torch.argsort(avg[cand], descending=True)[:budget]]
                smax = m.scales.max(dim=1).values
                big = smax[cand] > c.clone_max_scale * self.diameter
                clone_idx = cand[~big]
                split_idx = cand[big]
                parts = {f: [] for f in _FIELDS}
                if clone_idx.numel():
                    for f in _FIELDS:
                        parts[f].append(getattr(m, f).detach()[clone_idx])
                if split_idx.numel():
                    # two samples from each large Gaussian, scales / 1.6; the original is dropped
                    from gs2pose_ros.lie import quat_to_matrix

                    Rq = quat_to_matrix(m.quats.detach()[split_idx])
                    s = m.scales[split_idx]
                    for _ in range(2):
                        local = torch.randn_like(s) * s
                        parts["means"].append(m.means.detach()[split_idx] +
                                              (Rq @ local[:, :, None])[:, :, 0])
                        parts["quats"].append(m.quats.detach()[split_idx])
                        parts["log_scales"].append(m.log_scales.detach()[split_idx] - math.log(1.6))
                        parts["opacity_logits"].append(m.opacity_logits.detach()[split_idx])
                        parts["sh"].append(m.sh.detach()[split_idx])
                    drop = torch.zeros(n, dtype=torch.bool, device=m.device)
                    drop[split_idx] = True
                    keep = torch.nonzero(~drop).squeeze(1)
                    # the split adds one net Gaussian per candidate: stay within the cap
                extra = {f: torch.cat(v, 0) for f, v in parts.items()} if parts["means"] else None
                cloned, split = int(clone_idx.numel()), int(split_idx.numel())
        # prune
        op = torch.sigmoid(m.opacity_logits.detach())
        smax = torch.exp(m.log_scales.detach()).max(dim=1).values
        bad = (op < c.prune_opacity) | (smax > c.prune_scale * self.diameter) | \
            ~torch.isfinite(m.means.detach()).all(1)
        pruned = 0
        if extra is not None:
            eop = torch.sigmoid(extra["opacity_logits"])
            esm = torch.exp(extra["log_scales"]).max(dim=1).values
            ebad = (eop < c.prune_opacity) | (esm > c.prune_scale * self.diameter)
            if ebad.any():
                extra = {f: v[~ebad] for f, v in extra.items()}
        keep_mask = torch.zeros(n, dtype=torch.bool, device=m.device)
        keep_mask[keep] = True
        pruned = int((keep_mask & bad).sum())
        keep_mask &= ~bad
        if not keep_mask.any() and extra is None:
            keep_mask[torch.argmax(op)] = True  # never prune to an empty model
        self._rebuild(torch.nonzero(keep_mask).squeeze(1), extra)
        return cloned, split, pruned


def _half_view(v: ReferenceView) -> ReferenceView:
    """The view at half the crop size: 2x2 means (depth: mean of the valid readings), K halved
    (exact in continuous pixel coordinates). Cached on the view."""
    cached = getattr(v, "_half", None)
    if cached is not None:
        return cached
    pool = torch.nn.functional.avg_pool2d

    def half(t):
        return pool(t[None, None], 2)[0, 0]

    depth = None
    if v.depth is not None:
        valid = (v.depth > 0).float()
        cnt = half(valid)
        # a half-size pixel keeps depth only when all four readings exist (no edge mixing)
        depth = torch.where(cnt > 0.99, half(v.depth) / cnt.clamp_min(1e-6), torch.zeros_like(cnt))
    K = v.K.copy()
    K[:2] *= 0.5
    h = dataclasses.replace(
        v, K=K, rgb=pool(v.rgb.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0).contiguous(),
        rgb_object=pool(v.object_colour().permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0).contiguous(),
        visib=half(v.visib), silhouette=half(v.silhouette),
        colour_weight=(half(v.colour_weight) > 0.99).float(), depth=depth)
    v._half = h
    return h


def _view_tensors(v: ReferenceView, device):
    return (torch.as_tensor(v.T_cam_obj, dtype=torch.float32, device=device),
            torch.as_tensor(v.K, dtype=torch.float32, device=device))


def _train_loss(out, v: ReferenceView, bg: torch.Tensor, config: ReconstructionConfig,
                model: GaussianModel, diameter: float, device) -> torch.Tensor:
    visib = v.visib.to(device)[..., None]
    w = v.colour_weight.to(device)[..., None]
    target = v.object_colour().to(device) + bg * (1.0 - visib)
    pred = out.color
    # unknown pixels take the render's own value, so neither L1 nor SSIM sees them
    target = torch.where(w > 0, target, pred.detach())
    l1 = (pred - target).abs().mean()
    loss = (1.0 - config.lambda_ssim) * l1
    if config.lambda_ssim > 0:
        loss = loss + config.lambda_ssim * (1.0 - ssim_map(pred, target).mean())
    if config.lambda_mask > 0:
        inside = (v.colour_weight.to(device) > 0) | (v.silhouette.to(device) > 0)
        loss = loss + config.lambda_mask * ((out.alpha - v.silhouette.to(device)).abs() * inside).mean()
    if config.lambda_depth > 0 and v.depth is not None:
        d = v.depth.to(device)
        valid = (d > 0) & (out.alpha.detach() > 0.5)
        if valid.any():
            loss = loss + config.lambda_depth * (out.depth[valid] - d[valid]).abs().mean() / diameter
    if config.lambda_iso > 0:
        ls = model.log_scales
        loss = loss + config.lambda_iso * (ls - ls.mean(dim=1, keepdim=True)).abs().mean()
    return loss


@dataclass
class EvaluationResult:
    """Masked image metrics over views: means and one ``(im_id, psnr, ssim)`` per view."""

    psnr: float
    ssim: float
    per_view: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"psnr": self.psnr, "ssim": self.ssim,
                "per_view": [{"im_id": i, "psnr": p, "ssim": s} for i, p, s in self.per_view]}


@torch.no_grad()
def _render_view(model: GaussianModel, v: ReferenceView, background=0.0):
    from gs2pose_ros.render import render

    T, K = _view_tensors(v, model.device)
    return render(model, T, K, v.size, v.size, background=background)


@torch.no_grad()
def evaluate_model_on_views(model: GaussianModel, views: Sequence[ReferenceView]) -> EvaluationResult:
    """Masked PSNR (dB) and SSIM of ``model`` rendered over black at each view's crop.

    Pixels compared: the union of the visible silhouette (coverage > 0.5) and the rendered
    silhouette (alpha > 0.5), minus the pixels whose colour is unknown (occluded parts of the
    full silhouette, crop pixels outside the image). Reference = the object's own colour over
    black (``ReferenceView.object_colour``: the image masked by the visible silhouette at full
    resolution, then resampled to the crop). PSNR from the mean squared error over those pixels
    and the 3 channels (peak 1); SSIM is the mean of the SSIM map (11 px Gaussian window) over
    those pixels. Reported values are means over views. An empty ``views`` gives NaNs.
    """
    per = []
    for v in views:
        out = _render_view(model, v, 0.0)
        dev = out.color.device
        pred = out.color.clamp(0, 1)
        ref = v.object_colour().to(dev)
        region = ((v.visib.to(dev) > 0.5) | (out.alpha > 0.5)) & (v.colour_weight.to(dev) > 0)
        if not region.any():
            continue
        mse = float(((pred - ref) ** 2)[region].mean())
        psnr = 10.0 * math.log10(1.0 / max(mse, 1e-12))
        ssim = float(ssim_map(pred, ref)[region].mean())
        per.append((v.im_id, psnr, ssim))
    if not per:
        return EvaluationResult(float("nan"), float("nan"), [])
    return EvaluationResult(float(np.mean([p for _, p, _ in per])),
                            float(np.mean([s for _, _, s in per])), per)


def optimise_model(model: GaussianModel, views: Sequence[ReferenceView], config: ReconstructionConfig,
                   diameter: float, progress: bool = True,
                   callback: Optional[Callable[[int, GaussianModel], None]] = None) -> tuple:
    """Runs the optimisation (module docstring, steps 3 and 4). -> (model, stats dict)."""
    from gs2pose_ros.render import render

    device = torch.device(config.device)
    model = model.to(device)
    trainer = _Trainer(model, config, diameter)
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    total = config.iterations
    densify_until = int(config.densify_until * total)
    coarse_until = int(config.coarse_fraction * total)
    stats = {"cloned": 0, "split": 0, "pruned": 0, "final_loss": float("nan")}
    order = []
    bar = None
    if progress and total > 0:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="optimising", unit="it", dynamic_ncols=True)
    ema = None
    for it in range(total):
        if not order:
            order = list(rng.permutation(len(views)))
        v = views[order.pop()]
        if it < coarse_until and v.size % 2 == 0:
            v = _half_view(v)
        trainer.set_lrs(it, total)
        T, K = _view_tensors(v, device)
        if config.random_background:
            bg = torch.rand(3, generator=gen).to(device)
        else:
            bg = torch.zeros(3, device=device)
        m = trainer.model
        out = render(m, T, K, v.size, v.size, background=bg)
        loss = _train_loss(out, v, bg, config, m, diameter, device)
        loss.backward()
        trainer.accumulate_view_gradients(T, v.K, out.visible, v.size * v.size)
        trainer.step()
        lv = float(loss.detach())
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        it1 = it + 1
        if (config.densify_from <= it1 < densify_until and it1 % config.densify_every == 0) or \
                (it1 == total and total >= config.densify_from):
            densify = it1 < densify_until
            c_, s_, p_ = trainer.densify_and_prune(densify=densify)
            stats["cloned"] += c_
            stats["split"] += s_
            stats["pruned"] += p_
            stats["grad_quantiles_50_90_99"] = getattr(trainer, "grad_quantiles", None)
        if bar is not None:
            bar.update(1)
            if it1 % 10 == 0 or it1 == total:
                bar.set_postfix(loss=f"{ema:.4f}", gaussians=trainer.model.num_gaussians)
        if callback is not None:
            callback(it1, trainer.model)
    if bar is not None:
        bar.close()
    stats["final_loss"] = ema if ema is not None else float("nan")
    return trainer.model.detach(), stats


# --------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------


@dataclass
class ReconstructionResult:
    """What a build produced: the model, its metadata, and the figures of the summary."""

    model: GaussianModel
    metadata: ObjectMetadata
    init_source: str
    n_train_views: int
    n_heldout_views: int
    seconds: float
    train: EvaluationResult
    heldout: Optional[EvaluationResult]
    initial_heldout: Optional[EvaluationResult] = None
    stats: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)
    #: CPU time of the build (all of this process's threads), seconds.
    cpu_seconds: float = float("nan")

    def summary(self) -> str:
        def fmt(e: Optional[EvaluationResult]) -> str:
            if e is None or not e.per_view:
                return "n/a"
            return f"PSNR {e.psnr:.2f} dB, SSIM {e.ssim:.3f} ({len(e.per_view)} views)"

        lines = [
            f"object        {self.metadata.name} (obj_id {self.metadata.obj_id})",
            f"Gaussians     {self.model.num_gaussians} (SH degree {self.model.sh_degree}; "
            f"initialised from {self.init_source})",
            f"views         {self.n_train_views} training, {self.n_heldout_views} held out",
            f"time          {self.seconds:.1f} s wall, {self.cpu_seconds:.1f} s CPU "
            f"({torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() != 1 else ''})",
            f"train         {fmt(self.train)} (masked)",
            f"held out      {fmt(self.heldout)} (masked)",
        ]
        if self.initial_heldout is not None and self.initial_heldout.per_view:
            lines.append(f"  (initial    {fmt(self.initial_heldout)})")
        if self.stats:
            lines.append(f"density       cloned {self.stats.get('cloned', 0)}, split "
                         f"{self.stats.get('split', 0)}, pruned {self.stats.get('pruned', 0)}")
        for k, p in self.paths.items():
            lines.append(f"{k:<13} {p}")
        return "\n".join(lines)


def _metadata_for(model: GaussianModel, name: str, obj_id, info, source: str) -> ObjectMetadata:
    """Metadata: bbox of the Gaussians (robust: 0.2/99.8 percentiles, so a stray Gaussian does not
    stretch the NOCS box), the dataset's diameter and symmetries when known."""
    pts = model.means.detach().cpu().double().numpy()
    lo = np.percentile(pts, 0.2, axis=0) if len(pts) >= 100 else pts.min(0)
    hi = np.percentile(pts, 99.8, axis=0) if len(pts) >= 100 else pts.max(0)
    kwargs = dict(obj_id=None if obj_id is None else int(obj_id), source=source)
    if info is not None:
        kwargs["diameter"] = float(info.diameter)
        kwargs["symmetries_discrete"] = [np.asarray(S, dtype=np.float64).tolist()
                                         for S in info.symmetries_discrete]
        kwargs["symmetries_continuous"] = [
            {"axis": np.asarray(s["axis"], dtype=np.float64).ravel().tolist(),
             "offset": np.asarray(s["offset"], dtype=np.float64).ravel().tolist()}
            for s in info.symmetries_continuous]
        kwargs["symmetric"] = bool(info.symmetric)
    meta = ObjectMetadata.from_model(model, name, **kwargs)
    meta.bbox_min = [float(x) for x in lo]
    meta.bbox_max = [float(x) for x in hi]
    return meta


def _store_near_symmetry_axes(meta: ObjectMetadata, model: GaussianModel) -> None:
    """Fills ``meta.near_symmetry_axes`` (1-2 s here, once, instead of at the tracker's first
    detection); call when ``meta.diameter`` is final."""
    from gs2pose_ros.mesh import near_symmetry_axes

    pts = model.means.detach().cpu().double().numpy()
    meta.near_axes = near_symmetry_axes(pts, meta.diameter)


def _models_info_of(scene, obj_id: int):
    try:
        return scene.dataset().model_info(obj_id)
    except DatasetError:
        return None


def build_model_from_scene(dataset, obj, config: ReconstructionConfig = ReconstructionConfig(),
                           out_path=None, name: Optional[str] = None, progress: bool = True,
                           contact_sheet: bool = True) -> ReconstructionResult:
    """Builds the Gaussian model of object ``obj`` (id or name) from a BOP scene's posed, masked
    views (``dataset``: a scene folder, a generator output with ``train/<scene>``, or a dataset root
    with one scene). Writes ``out_path`` (ply), its metadata JSON and a contact sheet PNG when
    ``out_path`` is given. DatasetError for a scene without the object or without its masks."""
    t0 = time.perf_counter()
    c0 = time.process_time()
    torch.manual_seed(config.seed)
    scene = resolve_reference_scene(dataset)
    obj_id = resolve_object_id(scene, obj)
    views = load_reference_views(scene, obj_id, config.crop_size, config.crop_padding,
                                 config.min_visible_pixels, progress=progress)
    train, held = split_views(views, config.holdout_every, config.max_views)
    eval_held = held
    eval_train = train
    if config.eval_max_train_views and len(train) > config.eval_max_train_views:
        pick = np.unique(np.round(np.linspace(0, len(train) - 1, config.eval_max_train_views)).astype(int))
        eval_train = [train[i] for i in pick]
    if config.eval_size != config.crop_size:
        ids = {v.im_id for v in views}
        big = load_reference_views(scene, obj_id, config.eval_size, config.crop_padding,
                                   config.min_visible_pixels, im_ids=ids)
        by_key = {(v.im_id, v.gt_idx): v for v in big}
        eval_held = [by_key[(v.im_id, v.gt_idx)] for v in held if (v.im_id, v.gt_idx) in by_key]
        eval_train = [by_key[(v.im_id, v.gt_idx)] for v in eval_train if (v.im_id, v.gt_idx) in by_key]
    info = _models_info_of(scene, obj_id)
    box = _object_box_from_info(info) if info is not None else None
    model0, source = initial_model(train, config, box=box,
                                   diameter=None if info is None else float(info.diameter))
    if info is not None:
        diameter = float(info.diameter)
    else:
        diameter = float(ObjectMetadata.from_model(model0, "tmp").diameter) or 0.1
    init_eval = evaluate_model_on_views(model0, eval_held) if eval_held else None
    model, stats = optimise_model(model0, train, config, diameter, progress=progress)
    model = model.to("cpu")
    train_eval = evaluate_model_on_views(model, eval_train)
    held_eval = evaluate_model_on_views(model, eval_held) if eval_held else None
    obj_name = name or _name_for(scene, obj_id)
    meta = _metadata_for(model, obj_name, obj_id, info, f"reconstructed from {scene.path} "
                         f"({len(train)} views, {config.iterations} iterations, seed {config.seed})")
    _store_near_symmetry_axes(meta, model)
    seconds = time.perf_counter() - t0
    result = ReconstructionResult(model, meta, source, len(train), len(held), seconds, train_eval,
                                  held_eval, init_eval, stats,
                                  cpu_seconds=time.process_time() - c0)
    if out_path is not None:
        out_path = Path(out_path)
        write_gaussian_ply(model, out_path, metadata=meta)
        result.paths["model"] = str(out_path)
        result.paths["metadata"] = str(out_path.with_suffix(".json"))
        if contact_sheet:
            sheet_views = eval_held if eval_held else eval_train
            sheet = write_contact_sheet(model, sheet_views, contact_sheet_path(out_path))
            result.paths["contact sheet"] = str(sheet)
    return result


def contact_sheet_path(model_path) -> Path:
    """``<model>_contact.png`` beside the model ply."""
    p = Path(model_path)
    return p.with_name(p.stem + "_contact.png")


def _name_for(scene, obj_id: int) -> str:
    names = {v: k for k, v in _dataset_object_names(scene).items()}
    if obj_id in names:
        return names[obj_id]
    root = scene.dataset_root
    if root is not None and "lm" in root.name.lower():
        for k, v in KNOWN_OBJECT_NAMES.items():
            if v == obj_id:
                return k
    return f"obj_{obj_id:06d}"


def write_contact_sheet(model: GaussianModel, views: Sequence[ReferenceView], path,
                        max_views: int = 6) -> Path:
    """A PNG with, per view (evenly chosen, at most ``max_views``), a row: input crop (masked),
    render (over black), absolute error x3, labelled with the view's image id and PSNR."""
    import cv2

    if not views:
        raise ConfigError("write_contact_sheet: no views to show")
    pick = np.unique(np.round(np.linspace(0, len(views) - 1, min(max_views, len(views)))).astype(int))
    rows = []
    for i in pick:
        v = views[int(i)]
        out = _render_view(model, v, 0.0)
        pred = out.color.clamp(0, 1).cpu().numpy()
        inp = v.rgb.numpy()
        ref = v.object_colour().numpy()
        err = np.clip(np.abs(pred - ref) * 3.0, 0, 1)
        ev = evaluate_model_on_views(model, [v])
        tiles = [inp, pred, err]
        tiles = [(np.clip(t, 0, 1) * 255).astype(np.uint8) for t in tiles]
        row = np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in tiles], 1)
        label = f"im {v.im_id}  PSNR {ev.psnr:.1f} dB" if ev.per_view else f"im {v.im_id}"
        bar = np.full((18, row.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, label + "   (input | render | |error| x3)", (4, 13),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([bar, row], 0))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    sheet = np.concatenate(rows, 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet[:, :, ::-1]):
        raise ConfigError(f"{path}: could not write the contact sheet PNG")
    return path


def _mesh_colours_at(mesh, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
    from gs2pose_ros.mesh import _vertex_colors_of

    vc = _vertex_colors_of(mesh)
    if vc is None:
        return np.full((len(face), 3), 0.5)
    vc = vc[:, :3].astype(np.float64) / 255.0
    tri = np.asarray(mesh.faces)[face]
    return (bary[:, :, None] * vc[tri]).sum(1)


def build_model_from_mesh(mesh_path, units: str = "mm", n_gaussians: int = 20000, *,
                          sh_degree: int = 1, seed: int = 0, obj_id: Optional[int] = None,
                          name: Optional[str] = None, flatness: float = 0.1, opacity: float = 0.95,
                          coverage: float = 1.6,
                          out_path=None, models_info=None) -> ReconstructionResult:
    """A Gaussian model from a coloured triangle mesh (file in ``units``), no optimisation.

    ``n_gaussians`` area-uniform surface samples; each Gaussian is a flat disc in its face's
    plane (normal-axis scale ``flatness`` times the in-plane one), with an in-plane standard
    deviation ``coverage`` times the radius of a disc of the surface area per sample (random
    samples leave gaps; wider discs keep the back side from shining through), coloured by the barycentric
    interpolation of the vertex colours (0.5 grey without colours). Metadata: bbox of the means,
    diameter over the mesh vertices, symmetries from ``models_info`` (a ModelInfo) or the
    ``models_info.json`` beside the mesh when its name is ``obj_XXXXXX.ply``.
    """
    from gs2pose_ros.mesh import load_mesh, mesh_diameter

    if n_gaussians < 1:
        raise ConfigError(f"build_model_from_mesh: n_gaussians must be >= 1, got {n_gaussians}")
    if not 0 <= sh_degree <= 3:
        raise ConfigError(f"build_model_from_mesh: sh_degree must be in 0..3, got {sh_degree}")
    t0 = time.perf_counter()
    mesh_path = Path(mesh_path)
    mesh = load_mesh(mesh_path, units=units)
    v = np.asarray(mesh.vertices, dtype=np.float64)
    f = np.asarray(mesh.faces, dtype=np.int64)
    tri = v[f]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = 0.5 * np.linalg.norm(cross, axis=1)
    total = float(area.sum())
    if not total > 0:
        raise DatasetError(f"{mesh_path}: the mesh has zero surface area")
    rng = np.random.default_rng(seed)
    face = np.minimum(np.searchsorted(np.cumsum(area) / total, rng.random(n_gaussians), side="right"),
                      len(f) - 1)
    r1, r2 = rng.random(n_gaussians), rng.random(n_gaussians)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], 1)
    pts = (bary[:, :, None] * tri[face]).sum(1)
    normals = cross[face] / np.maximum(2 * area[face, None], 1e-300)
    colours = _mesh_colours_at(mesh, face, bary)
    # in-plane sigma: a disc of radius sigma has the surface area per sample; random samples leave
    # gaps, so the discs are made `coverage` times wider (the back side must not shine through)
    sigma = coverage * math.sqrt(total / n_gaussians / math.pi)
    # rotation taking the local z axis to the normal: q = (1 + n_z, -n_y, n_x, 0) normalised
    nz = normals[:, 2]
    q = np.stack([1 + nz, -normals[:, 1], normals[:, 0], np.zeros_like(nz)], 1)
    flip = nz < -1 + 1e-6
    q[flip] = [0.0, 1.0, 0.0, 0.0]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    model = GaussianModel.from_points(torch.as_tensor(pts, dtype=torch.float32),
                                      torch.as_tensor(np.clip(colours, 0, 1), dtype=torch.float32),
                                      scale=sigma, opacity=opacity, sh_degree=sh_degree)
    model.quats = torch.as_tensor(q, dtype=torch.float32)
    model.log_scales = torch.log(torch.tensor([sigma, sigma, sigma * flatness],
                                              dtype=torch.float32)).expand(n_gaussians, 3).clone()
    stem = mesh_path.stem
    if obj_id is None and stem.startswith("obj_") and stem[4:].isdigit():
        obj_id = int(stem[4:])
    if models_info is None and obj_id is not None and (mesh_path.parent / "models_info.json").is_file():
        from gs2pose_ros.bop import read_models_info

        models_info = read_models_info(mesh_path.parent / "models_info.json").get(int(obj_id))
    meta = _metadata_for(model, name or (f"obj_{obj_id:06d}" if obj_id is not None else stem), obj_id,
                         models_info, f"sampled from mesh {mesh_path} ({n_gaussians} Gaussians)")
    if models_info is None:
        meta.diameter = float(mesh_diameter(v))
    _store_near_symmetry_axes(meta, model)
    result = ReconstructionResult(model, meta, "mesh", 0, 0, time.perf_counter() - t0,
                                  EvaluationResult(float("nan"), float("nan")), None)
    if out_path is not None:
        out_path = Path(out_path)
        write_gaussian_ply(model, out_path, metadata=meta)
        result.paths["model"] = str(out_path)
        result.paths["metadata"] = str(out_path.with_suffix(".json"))
    return result
