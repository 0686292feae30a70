"""What every backend shares: the constants, the output type, the projection, the features.

The conventions are gsplat 1.5.3's "classic" 3DGS rasterisation (read from its CUDA sources), so a
CPU render and a CUDA render of the same model and pose agree to float32 rounding:

* Projection: ``x_cam = R_cam_obj x_obj + t_cam_obj``; pixel ``(fx x/z + cx, fy y/z + cy)`` in
  continuous coordinates where pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)``.
* EWA: ``Sigma_2d = J R Sigma_obj R^T J^T + EPS2D * I`` with the perspective Jacobian ``J`` evaluated
  at the mean, whose ``x/z`` and ``y/z`` are clamped to 1.3x the field of view (gsplat's ``lim``).
* Culling: centre depth ``z <= near`` or ``z >= far``, opacity below ``ALPHA_MIN``, a footprint
  (opacity-aware 3-sigma box) entirely outside the image.
* Per pixel: ``alpha = min(ALPHA_MAX, opacity * exp(-0.5 d^T Sigma_2d^-1 d))``, ``d = mean_2d - centre``;
  contributions with ``alpha < ALPHA_MIN`` are skipped; front-to-back by the Gaussian centre's z;
  ``w_i = alpha_i prod_{j<i} (1 - alpha_j)``; a pixel stops (exclusively) at the Gaussian that would
  bring its transmittance to ``T_MIN`` or below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from gs2pose_ros.gaussians import GaussianModel, eval_sh
from gs2pose_ros.lie import quat_to_matrix

#: Low-pass dilation added to the 2D covariance, px^2 (gsplat's ``eps2d`` default, 3DGS's 0.3).
EPS2D = 0.3
#: Contributions with a smaller alpha are skipped (gsplat's ALPHA_THRESHOLD, 1/255).
ALPHA_MIN = 1.0 / 255.0
#: Alpha is clamped to this (gsplat 1.5.3 clamps to 0.999; the 3DGS paper's code uses 0.99).
ALPHA_MAX = 0.999
#: A pixel stops compositing at the Gaussian that would bring its transmittance to this or below.
T_MIN = 1e-4
#: Cap on the footprint half-size in standard deviations (gsplat's 3.33; never binding because the
#: opacity-aware extent sqrt(2 ln(255 opacity)) is at most 3.329).
EXTEND_MAX = 3.33
#: Default near plane, metres (gsplat's default ``near_plane``).
NEAR = 0.01
#: Default far plane, metres.
FAR = 1e10


@dataclass
class RenderOutput:
    """A rendered view. Images are ``[H, W(, C)]`` tensors on the model's device and dtype.

    color:  [H, W, 3] RGB composited over ``background``: ``sum_i w_i c_i + (1 - alpha) * bg``.
    alpha:  [H, W] accumulated opacity ``sum_i w_i`` in [0, 1).
    depth:  [H, W] expected z of the Gaussian centres, metres: ``sum_i w_i z_i / max(alpha, 1e-10)``
            (gsplat's "ED"); exactly 0 where no Gaussian contributes. Mask with ``alpha`` before
            using it: at faint edges it is an average over very few, faint Gaussians.
    nocs:   [H, W, 3] ``sum_i w_i nocs_i`` (composited over black, *not* alpha-normalised), or None.
    radii:  [N, 2] int32 half-size of each Gaussian's pixel box, 0 for culled Gaussians.
    means2d:[N, 2] projected centres (pixels, detached; 0 for Gaussians culled by depth).
    depths: [N] camera-frame z of each centre (detached).
    num_pixels: [N] int64 number of pixels each Gaussian contributed to (None for gsplat).
    num_pairs: total Gaussian-pixel contributions (None for gsplat).
    backend: "cpu", "reference" or "gsplat".
    """

    color: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    nocs: Optional[torch.Tensor]
    radii: torch.Tensor
    means2d: torch.Tensor
    depths: torch.Tensor
    num_pixels: Optional[torch.Tensor]
    num_pairs: Optional[int]
    backend: str

    @property
    def visible(self) -> torch.Tensor:
        """[N] bool: Gaussians that were not culled (non-zero radius)."""
        return (self.radii > 0).any(dim=-1)


@dataclass
class Projected:
    """The not-culled Gaussians, projected (differentiable w.r.t. the model and the pose).

    ``index`` maps rows back to model rows; rows are in the model's order (not depth-sorted).
    ``features`` is [M, F]: RGB (3), camera z (1), then NOCS (3) if requested.
    """

    index: torch.Tensor  # [M] long
    means2d: torch.Tensor  # [M, 2]
    conics: torch.Tensor  # [M, 3] (a, b, c) of Sigma_2d^-1 = [[a, b], [b, c]]
    opacities: torch.Tensor  # [M]
    depths: torch.Tensor  # [M] (differentiable; also features[:, 3])
    features: torch.Tensor  # [M, F]
    radii: torch.Tensor  # [M, 2] int64, > 0
    n_total: int
    width: int
    height: int


def check_inputs(model: GaussianModel, T_cam_obj, K, width: int, height: int):
    """Validates and converts the pose and intrinsics to the model's dtype/device."""
    if not isinstance(model, GaussianModel):
        raise TypeError(f"render: model must be a GaussianModel, got {type(model).__name__}")
    T = torch.as_tensor(T_cam_obj)
    K = torch.as_tensor(K)
    if tuple(T.shape) != (4, 4):
        raise ValueError(f"render: T_cam_obj must be [4, 4], got {tuple(T.shape)}")
    if tuple(K.shape) != (3, 3):
        raise ValueError(f"render: K must be [3, 3], got {tuple(K.shape)}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"render: width and height must be positive, got {width}x{height}")
    T = T.to(device=model.device, dtype=model.dtype)
    K = K.to(device=model.device, dtype=model.dtype)
    return T, K


def gaussian_colors(model: GaussianModel, T_cam_obj: torch.Tensor, colors=None, sh_degree=None,
                    index=None) -> torch.Tensor:
    """RGB per Gaussian [M, 3]: ``colors`` if given, else ``clamp_min(SH(view dir) + 0.5, 0)``.

    The view direction is ``mean - camera centre`` in the object frame (as gsplat's, which uses the
    world frame; here the object frame *is* the world frame). Degree 0 skips the direction.
    """
    if colors is not None:
        c = torch.as_tensor(colors).to(device=model.device, dtype=model.dtype)
        if tuple(c.shape) != (model.num_gaussians, 3):
            raise ValueError(f"render: colors must be [N, 3] = [{model.num_gaussians}, 3], got "
                             f"{tuple(c.shape)}")
        return c if index is None else c[index]
    sh = model.sh if index is None else model.sh[index]
    degree = model.sh_degree if sh_degree is None else int(sh_degree)
    if degree == 0:
        rgb = eval_sh(sh, None, 0)  # type: ignore[arg-type]
    else:
        R, t = T_cam_obj[:3, :3], T_cam_obj[:3, 3]
        cam_center = -(R.transpose(0, 1) @ t)
        means = model.means if index is None else model.means[index]
        rgb = eval_sh(sh, means - cam_center, degree)
    return torch.clamp_min(rgb + 0.5, 0.0)


def project(model: GaussianModel, T: torch.Tensor, K: torch.Tensor, width: int, height: int, *,
            colors=None, nocs=None, sh_degree=None, near: float = NEAR, far: float = FAR,
            eps2d: float = EPS2D) -> Projected:
    """Culls and projects the Gaussians (EWA with gsplat's clamped Jacobian); see module docstring."""
    R, t = T[:3, :3], T[:3, 3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    n = model.num_gaussians
    with torch.no_grad():
        z_all = model.means.detach() @ R.detach()[2] + t.detach()[2]
        idx = torch.nonzero((z_all > near) & (z_all < far)).squeeze(1)
    means = model.means[idx]
    mc = means @ R.transpose(0, 1) + t
    x, y, z = mc.unbind(-1)
    rz = 1.0 / z
    # gsplat's clamp of the Jacobian's x/z, y/z to 1.3x the field of view (detached limits)
    with torch.no_grad():
        tan_fovx = 0.5 * width / fx
        tan_fovy = 0.5 * height / fy
        lim_x_pos = float((width - cx) / fx + 0.3 * tan_fovx)
        lim_x_neg = float(cx / fx + 0.3 * tan_fovx)
        lim_y_pos = float((height - cy) / fy + 0.3 * tan_fovy)
        lim_y_neg = float(cy / fy + 0.3 * tan_fovy)
    tx = z * torch.clamp(x * rz, -lim_x_neg, lim_x_pos)
    ty = z * torch.clamp(y * rz, -lim_y_neg, lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack([fx * rz, zero, -fx * tx * rz * rz,
                     zero, fy * rz, -fy * ty * rz * rz], dim=-1).reshape(-1, 2, 3)
    Rq = quat_to_matrix(model.quats[idx])  # normalises
    M = Rq * torch.exp(model.log_scales[idx])[:, None, :]  # R_q S
    JRM = J @ (R @ M)  # [M, 2, 3]
    cov = JRM @ JRM.transpose(1, 2)
    a = cov[:, 0, 0] + eps2d
    b = cov[:, 0, 1]
    c = cov[:, 1, 1] + eps2d
    det = a * c - b * b
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)
    opac = torch.sigmoid(model.opacity_logits[idx])
    with torch.no_grad():
        ok = (det > 0) & (opac >= ALPHA_MIN)
        extend = torch.clamp(torch.sqrt(2.0 * torch.log(torch.clamp_min(opac, ALPHA_MIN) / ALPHA_MIN)),
                             max=EXTEND_MAX)
        rx = torch.ceil(extend * torch.sqrt(torch.clamp_min(a, 0)))
        ry = torch.ceil(extend * torch.sqrt(torch.clamp_min(c, 0)))
        mx, my = means2d[:, 0], means2d[:, 1]
        ok &= ~((mx + rx <= 0) | (mx - rx >= width) | (my + ry <= 0) | (my - ry >= height))
        ok &= (rx > 0) | (ry > 0)
        keep = torch.nonzero(ok).squeeze(1)
    det = det[keep]
    conics = torch.stack([c[keep] / det, -b[keep] / det, a[keep] / det], dim=-1)
    zk = z[keep]
    gidx = idx[keep]
    feats = [gaussian_colors(model, T, colors, sh_degree, gidx), zk[:, None]]
    if nocs is not None:
        nc = torch.as_tensor(nocs).to(device=model.device, dtype=model.dtype)
        if tuple(nc.shape) != (n, 3):
            raise ValueError(f"render: nocs must be [N, 3] = [{n}, 3] (see nocs_colors), got "
                             f"{tuple(nc.shape)}")
        feats.append(nc[gidx])
    return Projected(
        index=gidx,
        means2d=means2d[keep],
        conics=conics,
        opacities=opac[keep],
        depths=zk,
        features=torch.cat(feats, dim=-1),
        radii=torch.stack([rx[keep], ry[keep]], dim=-1).long(),
        n_total=n,
        width=int(width),
        height=int(height),
    )


def finish(proj: Projected, acc: torch.Tensor, alpha: torch.Tensor, background, backend: str,
           num_pixels=None, num_pairs=None) -> RenderOutput:
    """Turns accumulated features [H*W, F] and alpha [H*W] into a :class:`RenderOutput`."""
    H, W = proj.height, proj.width
    acc = acc.reshape(H, W, -1)
    alpha = alpha.reshape(H, W)
    color = acc[..., :3]
    if background is not None:
        bg = torch.as_tensor(background).to(device=acc.device, dtype=acc.dtype)
        if bg.numel() not in (1, 3):
            raise ValueError(f"render: background must be a scalar or 3 values, got shape "
                             f"{tuple(bg.shape)}")
        bg = bg.reshape(-1).expand(3)
        color = color + (1.0 - alpha)[..., None] * bg
    depth = acc[..., 3] / torch.clamp_min(alpha, 1e-10)
    nocs = acc[..., 4:7] if acc.shape[-1] > 4 else None
    n = proj.n_total
    dev = acc.device
    radii = torch.zeros(n, 2, dtype=torch.int32, device=dev)
    radii[proj.index] = proj.radii.to(torch.int32)
    means2d = torch.zeros(n, 2, dtype=acc.dtype, device=dev)
    means2d[proj.index] = proj.means2d.detach()
    depths = torch.zeros(n, dtype=acc.dtype, device=dev)
    depths[proj.index] = proj.depths.detach()
    if num_pixels is not None:
        full = torch.zeros(n, dtype=torch.int64, device=dev)
        full[proj.index] = num_pixels
        num_pixels = full
    return RenderOutput(color=color, alpha=alpha, depth=depth, nocs=nocs, radii=radii,
                        means2d=means2d, depths=depths, num_pixels=num_pixels,
                        num_pairs=num_pairs, backend=backend)
