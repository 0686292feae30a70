"""CUDA backend: ``gsplat.rasterization`` (gsplat 1.5.3), with the conventions of the CPU backend.

The call is ``rasterization(means, quats, scales, opacities, features, viewmats=T_cam_obj[None],
Ks=K[None], width, height, near_plane, eps2d=0.3, sh_degree=None, packed=False,
backgrounds=[1, D], render_mode="RGB+ED", rasterize_mode="classic")``. The object frame plays
gsplat's world frame, so ``viewmats`` is exactly ``T_cam_obj`` and its gradient flows to the pose.

Colours are computed here (same :func:`gs2pose_ros.render._common.gaussian_colors` as the CPU
backend, view direction ``mean - camera centre`` in the object frame, ``clamp_min(SH + 0.5, 0)``,
as gsplat does) and passed as post-activation features, concatenated with the NOCS colours when
asked, so one rasterisation gives RGB, NOCS, alpha and expected depth. gsplat's depth channel gets
background 0; NOCS channels get background 0 and RGB gets ``background``, matching the CPU backend.

Requires CUDA tensors; gsplat compiles its kernels on first use (minutes). Not runnable on the
development machine (no CUDA): covered by the ``gpu``-marked parity test.
"""

from __future__ import annotations

import torch

from gs2pose_ros.gaussians import GaussianModel
from gs2pose_ros.render._common import EPS2D, FAR, NEAR, RenderOutput, gaussian_colors


def available() -> bool:
    """True when gsplat imports and CUDA is usable."""
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except Exception:  # ImportError, or a missing undeclared dependency such as `packaging`
        return False
    return True


def render_gsplat(model: GaussianModel, T: torch.Tensor, K: torch.Tensor, width: int, height: int,
                  *, background=None, nocs=None, colors=None, sh_degree=None, near: float = NEAR,
                  far: float = FAR, eps2d: float = EPS2D) -> RenderOutput:
    from gsplat import rasterization

    if model.device.type != "cuda":
        raise RuntimeError(f"render(backend='gsplat'): the model is on {model.device}; gsplat needs "
                           "CUDA tensors (model.to('cuda')), or use backend='cpu'")
    dev, dtype = model.device, model.dtype
    n = model.num_gaussians
    rgb = gaussian_colors(model, T, colors, sh_degree)
    feats = [rgb]
    if nocs is not None:
        nc = torch.as_tensor(nocs).to(device=dev, dtype=dtype)
        if tuple(nc.shape) != (n, 3):
            raise ValueError(f"render: nocs must be [N, 3] = [{n}, 3], got {tuple(nc.shape)}")
        feats.append(nc)
    feats = torch.cat(feats, dim=-1)  # [N, D]
    D = feats.shape[1]
    bg = torch.zeros(1, D, device=dev, dtype=dtype)
    if background is not None:
        b = torch.as_tensor(background).to(device=dev, dtype=dtype).reshape(-1).expand(3)
        bg = torch.cat([b[None], bg[:, 3:]], dim=1)
    out, alphas, meta = rasterization(
        model.means,
        model.quats,  # gsplat normalises them
        torch.exp(model.log_scales),
        torch.sigmoid(model.opacity_logits),
        feats,
        T[None],
        K[None],
        int(width),
        int(height),
        near_plane=float(near),
        far_plane=float(far),
        eps2d=float(eps2d),
        sh_degree=None,
        packed=False,
        backgrounds=bg,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    out = out[0]  # [H, W, D + 1]
    alpha = alphas[0, ..., 0]
    color = out[..., :3]
    nocs_img = out[..., 3:D] if nocs is not None else None
    depth = out[..., D]
    radii = meta["radii"][0]
    if radii.dim() == 1:  # older layout [N]
        radii = radii[:, None].expand(-1, 2)
    return RenderOutput(color=color, alpha=alpha, depth=depth, nocs=nocs_img,
                        radii=radii.to(torch.int32), means2d=meta["means2d"][0].detach(),
                        depths=meta["depths"][0].detach(), num_pixels=None, num_pairs=None,
                        backend="gsplat")
