"""Differentiable rendering of a :class:`~gs2pose_ros.gaussians.GaussianModel` at a pose.

One public function, :func:`render`; the backends share the conventions documented in
``gs2pose_ros/render/_common.py`` (gsplat 1.5.3's classic 3DGS rasterisation):

* ``"gsplat"``: CUDA, via ``gsplat.rasterization`` (used automatically for CUDA models).
* ``"cpu"``: a sparse pure-PyTorch rasteriser (Gaussian-pixel pairs inside each footprint only).
* ``"reference"``: a dense one (every Gaussian at every pixel), for tests; small images only.

Example (refining a pose twist)::

    xi = torch.zeros(6, requires_grad=True)
    out = render(model, se3_exp(xi) @ T0, K_crop, 128, 128, background=0.0)
    loss = (out.color - target).abs().mean(); loss.backward()   # xi.grad
"""

from __future__ import annotations

from typing import Optional

import torch

from gs2pose_ros.gaussians import GaussianModel
from gs2pose_ros.render._common import (ALPHA_MAX, ALPHA_MIN, EPS2D, FAR, NEAR, T_MIN,
                                        RenderOutput, check_inputs, finish, project)

__all__ = ["render", "RenderOutput", "EPS2D", "ALPHA_MIN", "ALPHA_MAX", "T_MIN", "NEAR"]

_BACKENDS = ("auto", "cpu", "gsplat", "reference")


def render(model: GaussianModel, T_cam_obj, K, width: int, height: int, *,
           background=None, nocs: Optional[torch.Tensor] = None,
           colors: Optional[torch.Tensor] = None, sh_degree: Optional[int] = None,
           near: float = NEAR, far: float = FAR, eps2d: float = EPS2D,
           backend: str = "auto") -> RenderOutput:
    """Renders ``model`` seen from a camera with intrinsics ``K`` at pose ``T_cam_obj``.

    Args:
        model: Gaussians in the object frame (metres). Gradients flow to every field that requires
            grad.
        T_cam_obj: [4, 4] object-to-camera transform (docs/conventions.md); gradients flow to it,
            e.g. ``T = se3_exp(xi) @ T0``.
        K: [3, 3] pinhole intrinsics; for a crop pass the crop's K (``fx' = s fx``,
            ``cx' = s (cx - x0)``) and the crop's ``width`` x ``height``. (Exact for Gaussians
            centred inside the crop; like gsplat, the EWA Jacobian of a Gaussian centred beyond
            1.3x the image's field of view is clamped, so its footprint depends on the image size.)
        background: RGB background (scalar or 3 values in [0, 1]); None = black.
        nocs: optional [N, 3] per-Gaussian colours rendered into ``RenderOutput.nocs`` (over black),
            typically :func:`gs2pose_ros.gaussians.nocs_colors`.
        colors: optional [N, 3] RGB per Gaussian replacing the SH colours.
        sh_degree: use only the SH bands up to this degree (default: the model's).
        near, far: depth culling of the Gaussian centres, metres.
        eps2d: low-pass dilation of the 2D covariances, px^2 (keep 0.3 for gsplat parity).
        backend: "auto" (gsplat for CUDA models when importable, else cpu), "cpu", "gsplat",
            "reference".

    Returns:
        :class:`RenderOutput` (color, alpha, depth = alpha-normalised expected z and 0 where nothing
        contributes, nocs, per-Gaussian radii/means2d/depths/num_pixels).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"render: backend must be one of {_BACKENDS}, got {backend!r}")
    T, Kt = check_inputs(model, T_cam_obj, K, width, height)
    if backend == "auto":
        backend = "cpu"
        if model.device.type == "cuda":
            from gs2pose_ros.render import gsplat_backend

            if gsplat_backend.available():
                backend = "gsplat"
    if backend == "gsplat":
        from gs2pose_ros.render.gsplat_backend import render_gsplat

        return render_gsplat(model, T, Kt, width, height, background=background, nocs=nocs,
                             colors=colors, sh_degree=sh_degree, near=near, far=far, eps2d=eps2d)
    proj = project(model, T, Kt, width, height, colors=colors, nocs=nocs, sh_degree=sh_degree,
                   near=near, far=far, eps2d=eps2d)
    if backend == "reference":
        from gs2pose_ros.render.reference import rasterize_reference

        acc, a_img, num = rasterize_reference(proj)
        return finish(proj, acc, a_img, background, "reference", num_pixels=num,
                      num_pairs=int(num.sum()))
    from gs2pose_ros.render.cpu import rasterize_cpu

    acc, a_img, num, n_pairs = rasterize_cpu(proj)
    return finish(proj, acc, a_img, background, "cpu", num_pixels=num, num_pairs=n_pairs)
