"""Dense reference rasteriser: every Gaussian against every pixel. For tests only (O(N H W) memory).

Written for clarity, not speed: it shares the projection with the CPU backend
(:func:`gs2pose_ros.render._common.project`, itself checked against gsplat's PyTorch projection in
the tests) and implements the per-pixel rules of the module docstring of ``_common`` literally:
sort by depth, alpha of every Gaussian at every pixel centre, skip below ``ALPHA_MIN``, clamp to
``ALPHA_MAX``, exclusive ``cumprod`` of ``1 - alpha`` for the transmittance, stop at ``T_MIN``.
Autograd does every gradient.
"""

from __future__ import annotations

import torch

from gs2pose_ros.render._common import ALPHA_MAX, ALPHA_MIN, T_MIN, Projected


def rasterize_reference(proj: Projected):
    """-> (acc [H*W, F], alpha [H*W], num_pixels [M]) for projected Gaussians."""
    H, W = proj.height, proj.width
    dtype, dev = proj.means2d.dtype, proj.means2d.device
    order = torch.argsort(proj.depths.detach(), stable=True)
    m2d = proj.means2d[order]
    con = proj.conics[order]
    opa = proj.opacities[order]
    feat = proj.features[order]
    # pixel centres, row-major (pixel id = v * W + u)
    v, u = torch.meshgrid(torch.arange(H, device=dev, dtype=dtype),
                          torch.arange(W, device=dev, dtype=dtype), indexing="ij")
    pu = u.reshape(-1) + 0.5
    pv = v.reshape(-1) + 0.5
    dx = m2d[:, 0:1] - pu[None, :]  # [M, HW]
    dy = m2d[:, 1:2] - pv[None, :]
    sigma = 0.5 * (con[:, 0:1] * dx * dx + con[:, 2:3] * dy * dy) + con[:, 1:2] * dx * dy
    alpha = torch.clamp_max(opa[:, None] * torch.exp(-sigma), ALPHA_MAX)
    used = (sigma >= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(used, alpha, torch.zeros_like(alpha))
    # transmittance after each Gaussian (inclusive) and before it (exclusive), per pixel
    t_incl = torch.cumprod(1.0 - alpha, dim=0)
    t_excl = torch.cat([torch.ones_like(t_incl[:1]), t_incl[:-1]], dim=0)
    # the pixel stops at the first Gaussian that would bring T to T_MIN or below (exclusive); T is
    # non-increasing, so every later Gaussian of that pixel is dropped too
    alive = t_incl.detach() > T_MIN
    w = torch.where(alive & used, alpha * t_excl, torch.zeros_like(alpha))  # [M, HW]
    acc = w.transpose(0, 1) @ feat  # [HW, F]
    a_img = w.sum(0)
    num = torch.zeros(order.shape[0], dtype=torch.int64, device=dev)
    num[order] = (w.detach() > 0).sum(1)
    return acc, a_img, num
