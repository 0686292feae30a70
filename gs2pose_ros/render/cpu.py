"""Pure-PyTorch sparse rasteriser: only the Gaussian-pixel pairs inside each footprint.

Stages (all vectorised; their timings are in docs/benchmarks.md):

1. ``project`` (shared, differentiable): cull, EWA projection, conics, opacity-aware 3-sigma boxes.
2. ``_pairs`` (no grad): Gaussians sorted by depth. Each Gaussian's box is cut into rows
   ("spans"); on each row the pixels where ``alpha >= ALPHA_MIN`` form an interval, solved in
   closed form from the conic (a quadratic in the pixel offset) and widened by ``SPAN_SLACK`` px so
   it is a superset. Only those pixels are enumerated (two ``repeat_interleave``: Gaussian -> rows
   -> pixels), so pairs below the alpha threshold are never materialised; the exact per-pair test
   is repeated in stage 3. A stable sort by pixel id gives (pixel, depth) order.
3. ``_Composite`` (differentiable): alpha of each pair from the per-Gaussian 2D means, conics and
   opacities; transmittance by a segmented exclusive cumulative sum of ``log(1 - alpha)`` in
   float64 (float32 loses the small terms of long sums); pairs at/after each pixel's ``T_MIN`` stop
   are zeroed; ``w = alpha * T`` times the features is scatter-added into the image. The backward
   is written by hand (3DGS's back-to-front formulas, vectorised with a reversed segmented sum):
   faster and lighter than autograd through the gathers, cumsum and scatters
   (``composite="autograd"`` keeps the autograd version for checks and timing comparisons).

Plain torch, so it runs on any device, but it is meant for the CPU; it respects the caller's
``torch.set_num_threads``.
"""

from __future__ import annotations

import math

import torch

from gs2pose_ros.render._common import ALPHA_MAX, ALPHA_MIN, T_MIN, Projected

_LOG_T_MIN = math.log(T_MIN)
#: Widening of each row's closed-form alpha interval, px: makes the enumerated pairs a superset of
#: the pairs passing the exact float test (which stage 3 applies), whatever the rounding.
SPAN_SLACK = 1e-3


_ARANGE = {}


def _arange(n: int, device) -> torch.Tensor:
    """``torch.arange(n)`` (int64) as a view of a cached, growing buffer (large aranges are slow)."""
    buf = _ARANGE.get(device)
    if buf is None or buf.shape[0] < n:
        buf = torch.arange(max(n, 2 * (0 if buf is None else buf.shape[0]), 1 << 16), device=device)
        _ARANGE[device] = buf
    return buf[:n]


@torch.no_grad()
def _pairs(proj: Projected):
    """Enumerates and orders the candidate pairs (see the module docstring).

    Returns (order [M] depth order of the projected rows, gi [P] index into ``order``-sorted rows,
    pix [P] pixel id (v * W + u), first [P] index of the first pair of the same pixel), with pairs
    sorted by (pixel, depth).
    """
    W, H = proj.width, proj.height
    dev = proj.means2d.device
    order = torch.argsort(proj.depths.detach(), stable=True)
    f64 = torch.float64
    m2d = proj.means2d.detach().to(f64).index_select(0, order)
    con = proj.conics.detach().to(f64).index_select(0, order)
    opa = proj.opacities.detach().to(f64).index_select(0, order)
    ry = proj.radii[:, 1].to(f64).index_select(0, order)
    mx, my = m2d[:, 0], m2d[:, 1]
    a, b, c = con[:, 0], con[:, 1], con[:, 2]
    # rows of each Gaussian's box: centre v + 0.5 in [my - ry, my + ry]
    y0 = torch.clamp(torch.ceil(my - ry - 0.5), min=0)
    y1 = torch.clamp(torch.floor(my + ry - 0.5), max=H - 1)
    bh = torch.clamp_min(y1 - y0 + 1, 0).long()
    n_spans = int(bh.sum())
    sg = torch.repeat_interleave(bh, output_size=n_spans)
    hstart = torch.cumsum(bh, 0) - bh
    row = y0.index_select(0, sg) + (torch.arange(n_spans, device=dev) - hstart.index_select(0, sg))
    # on a row: alpha >= ALPHA_MIN <=> 0.5 a dx^2 + (b dy) dx + 0.5 c dy^2 <= ln(opacity / ALPHA_MIN)
    dy = my.index_select(0, sg) - (row + 0.5)
    A = a.index_select(0, sg)
    q1 = b.index_select(0, sg) * dy
    thr = torch.log(opa.index_select(0, sg) / ALPHA_MIN) - 0.5 * c.index_select(0, sg) * dy * dy
    disc = q1 * q1 + 2.0 * A * thr
    root = torch.sqrt(torch.clamp_min(disc, 0.0))
    dx_lo = (-q1 - root) / A
    dx_hi = (-q1 + root) / A
    mxs = mx.index_select(0, sg)
    # dx = mx - (u + 0.5) in [dx_lo, dx_hi]  <=>  u in [mx - dx_hi - 0.5, mx - dx_lo - 0.5]
    xs = torch.clamp(torch.ceil(mxs - dx_hi - 0.5 - SPAN_SLACK), min=0)
    xe = torch.clamp(torch.floor(mxs - dx_lo - 0.5 + SPAN_SLACK), max=W - 1)
    bw = torch.where(disc >= 0, torch.clamp_min(xe - xs + 1, 0), torch.zeros_like(xe)).long()
    n_pairs = int(bw.sum())
    ps = torch.repeat_interleave(bw, output_size=n_pairs)
    wstart = torch.cumsum(bw, 0) - bw
    span_pix0 = (row * W + xs).long() - wstart  # pixel id of the span's first pair, minus its offset
    pix = span_pix0.index_select(0, ps) + _arange(n_pairs, dev)
    gi = sg.index_select(0, ps)
    # (pixel, depth) order: pairs were generated in depth order; a stable sort by pixel keeps it.
    # torch's CPU stable sort of integers is a radix sort whose cost grows with the key's width.
    n_pix = H * W
    kdt = torch.int16 if n_pix <= 2**15 else (torch.int32 if n_pix <= 2**31 else torch.int64)
    pix_sorted, perm = torch.sort(pix.to(kdt), stable=True)
    pix = pix_sorted.long()
    gi = gi.index_select(0, perm)
    cnt = torch.bincount(pix, minlength=n_pix)
    end = torch.cumsum(cnt, 0)
    first = (end - cnt).index_select(0, pix)
    last = (end - 1).index_select(0, pix)
    return order, gi, pix, first, last


def _pair_terms(Gt, gi, pxc, pyc):
    """Per-pair offsets, exp(-sigma) and raw alpha.

    Gt [6, M] = (mx, my, na, nb, nc, opacity) with (na, nb, nc) = -(a/2, b, c/2) for the conic
    [[a, b], [b, c]], so that -sigma = na dx^2 + nb dx dy + nc dy^2. Every gather and scatter in
    this module is one-dimensional: on the CPU, ``index_select``/``index_add_`` of 1-D tensors are
    several times faster than the same on rows of a narrow 2-D tensor.
    """
    mx, my, na, nb, nc, o = (Gt[k].index_select(0, gi) for k in range(6))
    dx = mx - pxc
    dy = my - pyc
    nsig = torch.addcmul(torch.addcmul(na * dx * dx, nc * dy, dy), nb * dx, dy)
    e = torch.exp(nsig)
    return dx, dy, e, o * e


def _alpha_T(araw, first):
    """Masked, clamped alpha and exclusive transmittance per pair (pairs sorted by pixel, depth).

    Only the cumulative sum (and the differences of its values) is float64: ``log(1 - alpha)`` of
    one pair is accurate in float32, a sum over the whole image is not.
    """
    alpha = torch.clamp_max(araw, ALPHA_MAX).masked_fill_(araw < ALPHA_MIN, 0.0)
    la = torch.log1p(-alpha)
    excl = torch.cumsum(la.double(), 0).sub_(la)
    lT = excl.sub_(excl.index_select(0, first)).to(la.dtype)
    # the pixel stops at the pair whose inclusive T would be <= T_MIN (then a suffix of the pixel)
    alpha.masked_fill_((lT + la) <= _LOG_T_MIN, 0.0)
    return alpha, torch.exp(lT)


def _scatter_columns(cols, index, n):
    out = cols[0].new_zeros(len(cols), n)
    for k, c in enumerate(cols):
        out[k].index_add_(0, index, c)
    return out


class _Composite(torch.autograd.Function):
    """(Gt [6, M], featsT [F, M]) -> (accT [F, HW], alpha [HW], used [P] bool); see _pair_terms."""

    @staticmethod
    def forward(ctx, Gt, featsT, gi, pix, first, last, pxc, pyc, n_pix):
        dx, dy, e, araw = _pair_terms(Gt, gi, pxc, pyc)
        alpha, T = _alpha_T(araw, first)
        w = alpha * T
        used = alpha > 0
        ctx.mark_non_differentiable(used)
        # keep only the contributing pairs from here on (pairs after a pixel's T_MIN stop are often
        # a third of the candidates); `last` is recomputed for the compacted order
        keep = torch.nonzero(used).squeeze(1)
        if keep.shape[0] < used.shape[0]:
            gi, pix, dx, dy, e, araw, alpha, T, w = (
                t.index_select(0, keep) for t in (gi, pix, dx, dy, e, araw, alpha, T, w))
            cnt = torch.bincount(pix, minlength=n_pix)
            last = (torch.cumsum(cnt, 0) - 1).index_select(0, pix)
        fg = [f.index_select(0, gi) for f in featsT]
        accT = _scatter_columns([f * w for f in fg], pix, n_pix)
        a_img = w.new_zeros(n_pix).index_add_(0, pix, w)
        ctx.save_for_backward(Gt, featsT, gi, pix, last, dx, dy, e, araw, alpha, T, w, *fg)
        return accT, a_img, used

    @staticmethod
    def backward(ctx, g_acc, g_a, _g_used):
        Gt, featsT, gi, pix, last, dx, dy, e, araw, alpha, T, w, *fg = ctx.saved_tensors
        m = Gt.shape[1]
        # dL/dw_k = feat_k . dL/dC_p + dL/dA_p
        gp = [g.index_select(0, pix) for g in g_acc] if g_acc is not None else None
        dw = g_a.index_select(0, pix) if g_a is not None else torch.zeros_like(w)
        if gp is not None:
            for f, g in zip(fg, gp):
                dw.addcmul_(f, g)
        d_feats = None
        if ctx.needs_input_grad[1]:
            if gp is None:
                d_feats = torch.zeros_like(featsT)
            else:
                d_feats = _scatter_columns([g.mul_(w) for g in gp], gi, m)
        d_Gt = None
        if ctx.needs_input_grad[0]:
            # dL/dalpha_k = T_k dw_k - (sum over the pixel's later pairs j of w_j dw_j) / (1 - alpha_k)
            v = w * dw
            cv = torch.cumsum(v.double(), 0)
            after = (cv.index_select(0, last) - cv).to(v.dtype)
            d_alpha = (T * dw).sub_(after.div_(1.0 - alpha))
            d_alpha.masked_fill_(araw >= ALPHA_MAX, 0.0)  # clamped: no gradient
            d_o = d_alpha * e
            d_ns = d_alpha.mul_(araw)  # d(-sigma)
            q = d_ns * dx
            r = d_ns * dy
            s_x, s_y, s_xy = _scatter_columns([q, r, r * dx], gi, m)
            s_xx, s_yy, s_o = _scatter_columns([q.mul_(dx), r.mul_(dy), d_o], gi, m)
            # -sigma = na dx^2 + nb dx dy + nc dy^2 with dx = mx - px, dy = my - py
            na, nb, nc = Gt[2], Gt[3], Gt[4]
            d_Gt = torch.stack([2.0 * na * s_x + nb * s_y, 2.0 * nc * s_y + nb * s_x,
                                s_xx, s_xy, s_yy, s_o], dim=0)
        return d_Gt, d_feats, None, None, None, None, None, None, None


def _composite_autograd(Gt, featsT, gi, pix, first, last, pxc, pyc, n_pix):
    _, _, _, araw = _pair_terms(Gt, gi, pxc, pyc)
    alpha, T = _alpha_T(araw, first)
    w = alpha * T
    cols = [f.index_select(0, gi) * w for f in featsT] + [w]
    accT = torch.stack([torch.zeros(n_pix, dtype=w.dtype, device=w.device).index_add(0, pix, c)
                        for c in cols])
    return accT[:-1], accT[-1], (alpha > 0).detach()


def composite_inputs(proj: Projected):
    """-> (order [M], args): the Gaussian-pixel pairs of ``proj`` and the argument tuple of the
    compositing step, ``(Gt [6, M], featsT [F, M], gi, pix, first, last, pxc, pyc, n_pix)``.

    Separate from :func:`rasterize_cpu` so the benchmark can time the stages one by one.
    """
    W, H = proj.width, proj.height
    order, gi, pix, first, last = _pairs(proj)
    dtype, dev = proj.means2d.dtype, proj.means2d.device
    with torch.no_grad():
        u = torch.arange(W, device=dev, dtype=dtype) + 0.5
        v = torch.arange(H, device=dev, dtype=dtype) + 0.5
        pxc = u.repeat(H).index_select(0, pix)
        pyc = v.repeat_interleave(W).index_select(0, pix)
    con = proj.conics
    Gt = torch.stack([proj.means2d[:, 0], proj.means2d[:, 1], -0.5 * con[:, 0], -con[:, 1],
                      -0.5 * con[:, 2], proj.opacities], dim=0).index_select(1, order)
    featsT = proj.features.t().index_select(1, order)
    return order, (Gt, featsT, gi, pix, first, last, pxc, pyc, H * W)


def rasterize_cpu(proj: Projected, composite: str = "function"):
    """-> (acc [H*W, F], alpha [H*W], num_pixels [M], num_pairs) for projected Gaussians.

    composite: "function" (hand-written backward, default) or "autograd".
    """
    order, args = composite_inputs(proj)
    dtype, dev = proj.means2d.dtype, proj.means2d.device
    if composite == "function":
        accT, a_img, used = _Composite.apply(*args)
    elif composite == "autograd":
        accT, a_img, used = _composite_autograd(*args)
    else:
        raise ValueError(f"rasterize_cpu: composite must be 'function' or 'autograd', got "
                         f"{composite!r}")
    acc = accT.t()
    m = order.shape[0]
    num = torch.zeros(m, dtype=torch.int64, device=dev)
    gi = args[2]  # Gaussian (in depth order) of each pair
    num[order] = torch.bincount(gi, weights=used.to(dtype), minlength=m).round().long()
    return acc, a_img, num, int(used.sum())
