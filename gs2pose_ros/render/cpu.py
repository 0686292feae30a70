"""Sparse CPU rasteriser: only the Gaussian-pixel pairs inside each footprint.

Two implementations of the same rule (timings in docs/benchmarks.md, "Renderer"):

* Compiled kernels (``_kernels``, numba; the default for CPU tensors when numba imports):
  ``_Fused`` does stages 2 and 3 below in one front-to-back loop over the pairs in generation
  order (Gaussian by depth, row, column) with a per-pixel running transmittance, so no sort by
  pixel and no per-op passes; its backward is one back-to-front loop. Same closed-form row
  intervals and per-pair float operations as ``_pairs``; the transmittance is a float64 running
  product of ``1 - alpha`` (no log/exp per pair; float64 keeps long products accurate). Why numba:
  the per-pair chain is short scalar work, eager torch runs it as one full pass over all pairs per
  operation, and neither torch nor scipy has a compiled per-pair loop here. ~2.5x faster on the
  benchmark scene (all CPU stages included).
* Torch (below; ``USE_NUMBA = False``, numba missing, or tensors off the CPU): the stages as
  vectorised passes. ``composite="torch"`` picks it explicitly, ``composite="autograd"`` uses its
  pairs with an autograd composite; tests compare all of them.

Stages of the torch path:

1. ``project`` (shared, differentiable): cull, EWA projection, conics, opacity-aware 3-sigma boxes.
2. ``_pairs`` (no grad): enumerate, evaluate and order the candidate pairs.

   a. Gaussians sorted by depth. Each Gaussian's box is cut into rows ("spans"); on each row the
      pixels where ``alpha >= ALPHA_MIN`` form an interval, solved in closed form from the conic (a
      quadratic in the pixel offset) and widened by ``SPAN_SLACK`` px so it is a superset. Only
      those pixels are enumerated, in *generation order*: Gaussian (by depth), row, column. In that
      order every per-span value is a gather by a non-decreasing index and the pixel centre is the
      span's first one plus a running count, so the alpha of each candidate (with the reference's
      exact per-pair rule, ``_alpha``) costs about a dozen elementwise passes and no pixel-id
      arithmetic.
   b. (pixel, depth) order: the pairs in generation order are a CSR matrix [M, H*W] (rows =
      Gaussians by depth); the same matrix in CSC form is pixel order, depth order within a pixel.
      scipy's ``tocsc`` is that stable counting sort, one O(P) pass that also moves ``alpha`` and
      yields each pair's Gaussian: ~4x faster than torch's radix sort of int16 pixel ids plus the
      gathers that apply its permutation (kept as the fallback off the CPU).

3. ``_Composite`` (differentiable): transmittance by a segmented exclusive cumulative sum of
   ``log(1 - alpha)`` in float64 (float32 loses the small terms of long sums); the pairs at/after
   each pixel's ``T_MIN`` stop get ``T = 0``, and every pair with ``w = alpha T = 0`` is dropped
   (~30% of the benchmark's candidates) before anything else is done with them. The features and
   a column of ones (the alpha image) are accumulated by one CSR sparse x dense product (rows =
   pixels, columns = Gaussians, values ``w``) instead of a gather, a multiply and a scatter per
   feature. The backward is written by hand (3DGS's back-to-front formulas, vectorised with a
   reversed segmented sum) in pixel order; every per-Gaussian sum is a product of the transposed
   matrix (CSC, scipy on the CPU) with a dense per-pixel matrix: ``dL/dacc`` for the feature
   gradient, and the pixel moments ``(1, px, py, px^2, px py, py^2)`` for the mean, conic and
   opacity gradients, since the sums ``sum_k u_k dx_k^i dy_k^j`` over a Gaussian's pairs
   (``u = dL/d(-sigma)``, ``dx = mx - px``) expand into those moments (in float64, which keeps the
   expansion's cancellation harmless): one pass instead of six scatter-adds.
   ``composite="autograd"`` keeps an autograd version (pixel order, gathers and scatters, alpha
   recomputed from G) for checks and timing comparisons.

Measured and left out: culling saturated pairs before the sort with per-depth-chunk sums of
``log(1 - alpha)`` (at most 24% of the candidates with 64 chunks and exact sums, 3-6% with
span-level alpha bounds: most alphas are small, median 0.06, so pixels saturate through many faint
pairs; the scatter and compaction cost about what they save); torch's own CSC product (~30x
slower than scipy's here: it converts its input) and ``torch.sparse.sampled_addmm`` for
``dL/dw`` (~10x slower than two 1-D gathers and a multiply-add per feature).

Torch throughout, plus numpy/scipy (dependencies already) on the CPU for the counting sort, one
compaction and the transposed products. Off the CPU the same steps run with torch's sort and
sparse products (``USE_SCIPY = False`` runs them on the CPU too; a test compares the two). It
respects the caller's ``torch.set_num_threads``.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import scipy.sparse
import torch

from gs2pose_ros.render import _kernels
from gs2pose_ros.render._common import ALPHA_MAX, ALPHA_MIN, T_MIN, Projected

_LOG_T_MIN = math.log(T_MIN)
#: Widening of each row's closed-form alpha interval, px: makes the enumerated pairs a superset of
#: the pairs passing the exact float test (applied right after), whatever the rounding.
SPAN_SLACK = 1e-3
#: Use numpy/scipy for the counting sort and the transposed products of CPU tensors (tests turn it
#: off to check the torch path that other devices take against it).
USE_SCIPY = True
#: Use the compiled kernels (``_kernels``, numba) for CPU tensors when numba is importable (tests
#: turn it off to compare the torch path against them).
USE_NUMBA = True

_CACHE = {}


def _arange(n: int, device, dtype=torch.int64) -> torch.Tensor:
    """``torch.arange(n, dtype=dtype)`` as a view of a cached, growing buffer (large aranges are
    slow). Float buffers hold exact integers below 2**24 (float32): callers check."""
    key = ("arange", device, dtype)
    buf = _CACHE.get(key)
    if buf is None or buf.shape[0] < n:
        size = max(n, 2 * (0 if buf is None else buf.shape[0]), 1 << 16)
        buf = torch.arange(size, device=device, dtype=dtype)
        _CACHE[key] = buf
    return buf[:n]


def _pixel_moments(width: int, height: int, device) -> torch.Tensor:
    """[H*W, 6] float64 ``(1, px, py, px^2, px py, py^2)`` of the pixel centres (the last four
    image sizes are cached)."""
    key = ("moments", width, height, device)
    mom = _CACHE.get(key)
    if mom is None:
        sizes = [k for k in _CACHE if k[0] == "moments"]
        for k in sizes[:max(0, len(sizes) - 3)]:
            del _CACHE[k]
        py, px = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float64) + 0.5,
                                torch.arange(width, device=device, dtype=torch.float64) + 0.5,
                                indexing="ij")
        px, py = px.reshape(-1), py.reshape(-1)
        mom = torch.stack([torch.ones_like(px), px, py, px * px, px * py, py * py], dim=1)
        _CACHE[key] = mom
    return mom


def _pixel_centres(width: int, height: int):
    """-> ([H*W], [H*W]) float64 numpy arrays: the x and y of each pixel's centre (the last four
    image sizes are cached)."""
    key = ("centres", width, height)
    c = _CACHE.get(key)
    if c is None:
        sizes = [k for k in _CACHE if k[0] == "centres"]
        for k in sizes[:max(0, len(sizes) - 3)]:
            del _CACHE[k]
        mom = _pixel_moments(width, height, torch.device("cpu")).numpy()
        c = _CACHE[key] = (np.ascontiguousarray(mom[:, 1]), np.ascontiguousarray(mom[:, 2]))
    return c


def _scipy(t: torch.Tensor) -> bool:
    return USE_SCIPY and t.device.type == "cpu"


def _flatnonzero(mask: torch.Tensor) -> torch.Tensor:
    """int64 indices of the true entries of a 1-D bool tensor (numpy's on the CPU: ~15x faster
    than ``torch.nonzero``)."""
    if _scipy(mask):
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return torch.nonzero(mask).squeeze(1)


def _torch_sparse(layout_fn, ptr, idx, values, size):
    with warnings.catch_warnings():  # "Sparse CSR/CSC tensor support is in beta state" (once)
        warnings.simplefilter("ignore", UserWarning)
        return layout_fn(ptr, idx, values, size=size, check_invariants=False)


class Pairs(NamedTuple):
    """The candidate Gaussian-pixel pairs of one view in (pixel, depth) order (no grad).

    Gaussians are numbered by depth rank. ``alpha`` comes from the detached projection; it is the
    clamped alpha of each pair (0 where the reference skips it), before the ``T_MIN`` stop.
    """

    width: int
    height: int
    pix_ptr: torch.Tensor  # [H*W + 1] first pair of each pixel (int32 or int64, as gi)
    gi: torch.Tensor  # [P] Gaussian of each pair
    pix: torch.Tensor  # [P] pixel id v * W + u of each pair (non-decreasing)
    alpha: torch.Tensor  # [P]

    @property
    def n_pix(self) -> int:
        return self.width * self.height


def _index_dtype(*sizes: int):
    return torch.int32 if max(sizes) < 2**31 else torch.int64


def _empty_pairs(width: int, height: int, dtype, device) -> Pairs:
    i = torch.zeros(0, dtype=torch.int32, device=device)
    return Pairs(width, height, torch.zeros(width * height + 1, dtype=torch.int32, device=device),
                 i, i, torch.zeros(0, dtype=dtype, device=device))


def _sigma(dx, a2, b_dy, c2_dy2):
    """``sigma = a/2 dx^2 + b dx dy + c/2 dy^2``, given ``a2 = a/2``, ``b_dy = b dy`` and ``c2_dy2 =
    c/2 dy dy`` (per span in the fast path, per pair in the autograd one: the same float ops).
    Overwrites ``b_dy`` and ``c2_dy2`` (fresh gathers in both callers; autograd allows it)."""
    return c2_dy2.addcmul_(b_dy.addcmul_(a2, dx), dx)


def _float_info(dtype):
    """(largest float < ALPHA_MIN, largest float < 0) of ``dtype``."""
    np_t = np.float32 if dtype == torch.float32 else np.float64
    return (float(np.nextafter(np_t(ALPHA_MIN), np_t(0))), float(np.nextafter(np_t(0), np_t(-1))))


def _alpha(sigma, opacity, inplace: bool = False):
    """``min(opacity exp(-sigma), ALPHA_MAX)``, 0 where the reference skips the pair: ``sigma < 0``
    (rounding, on thin Gaussians) and ``alpha < ALPHA_MIN``. Branch-free, each in one pass:
    ``threshold(x, t, v)`` keeps ``x > t`` and puts ``v`` elsewhere, so a negative sigma becomes 80
    (exp(-80) ~ 1e-35 < ALPHA_MIN; finite, so no inf * 0 in the autograd version's backward), and
    ``t`` is the float just below ``ALPHA_MIN`` to keep ``alpha >= ALPHA_MIN``. ``opacity /
    exp(sigma)`` saves a negation over ``opacity * exp(-sigma)``. ``inplace`` (no autograd):
    overwrite ``sigma`` instead of allocating four more arrays."""
    below_min, below_zero = _float_info(sigma.dtype)
    if inplace:
        e = torch.nn.functional.threshold_(sigma, below_zero, 80.0).exp_()
        araw = torch.nn.functional.threshold_(torch.div(opacity, e, out=e), below_min, 0.0)
        return araw.clamp_max_(ALPHA_MAX)
    sigma = torch.nn.functional.threshold(sigma, below_zero, 80.0)
    araw = torch.nn.functional.threshold(opacity / torch.exp(sigma), below_min, 0.0)
    return torch.clamp_max(araw, ALPHA_MAX)


def _pixel_order(gauss_ptr, pix_gen, alpha, width: int, height: int) -> Pairs:
    """Stable counting sort of the pairs by pixel: generation order (a CSR matrix [M, H*W] with
    row pointers ``gauss_ptr``, column ``pix_gen`` and values ``alpha``) -> pixel order (CSC)."""
    n_pix, m, n = width * height, gauss_ptr.shape[0] - 1, alpha.shape[0]
    if _scipy(alpha):
        csc = scipy.sparse.csr_matrix((alpha.numpy(), pix_gen.numpy(), gauss_ptr.numpy()),
                                      shape=(m, n_pix)).tocsc()
        pix_ptr, gi = torch.from_numpy(csc.indptr), torch.from_numpy(csc.indices)
        alpha = torch.from_numpy(csc.data)
    else:  # torch's stable sort of integers is a radix sort: its cost grows with the key's width
        kdt = torch.int16 if n_pix <= 2**15 else torch.int32 if n_pix <= 2**31 else torch.int64
        pix_sorted, perm = torch.sort(pix_gen.to(kdt), stable=True)
        pix_ptr = torch.searchsorted(pix_sorted, torch.arange(n_pix + 1, device=alpha.device))
        gi = torch.repeat_interleave(torch.diff(gauss_ptr), output_size=n)
        gi, alpha, pix_ptr = gi.index_select(0, perm), alpha.index_select(0, perm), pix_ptr.to(gi)
    pix = torch.repeat_interleave(torch.diff(pix_ptr), output_size=n)  # [P] pixel id
    return Pairs(width, height, pix_ptr, gi, pix, alpha)


def _gaussian_sums(pairs: Pairs, values, dense, m: int) -> torch.Tensor:
    """[M, K]: for each Gaussian, the sum over its pairs k of ``values_k * dense[pixel_k]``
    (``dense`` [H*W, K]): the product of the transposed pixel-order matrix, a CSC [M, H*W]."""
    dense = dense.to(values.dtype).contiguous()
    if _scipy(values):
        csc = scipy.sparse.csc_matrix((values.numpy(), pairs.gi.numpy(), pairs.pix_ptr.numpy()),
                                      shape=(m, pairs.n_pix))
        return torch.from_numpy(np.asarray(csc @ dense.numpy()))
    s = _torch_sparse(torch.sparse_csc_tensor, pairs.pix_ptr, pairs.gi, values, (m, pairs.n_pix))
    return s @ dense


@torch.no_grad()
def _pairs(G: torch.Tensor, ry: torch.Tensor, width: int, height: int) -> Pairs:
    """Enumerates, evaluates and orders the candidate pairs (see the module docstring).

    G [6, M] = (mx, my, na, nb, nc, opacity) of the Gaussians in depth order (see _Composite);
    ry [M] their box half-heights, px.
    """
    W, H = width, height
    dev, dt = G.device, G.dtype
    m = G.shape[1]
    if m == 0:
        return _empty_pairs(W, H, dt, dev)
    idt = _index_dtype(W * H, m)
    # -- spans, float64: the closed-form intervals must be supersets whatever the rounding
    f64 = torch.float64
    mx, my, na, nb, nc, opa = G.to(f64).unbind(0)
    ryd = ry.to(f64)
    # rows of each Gaussian's box: centre v + 0.5 in [my - ry, my + ry]
    y0 = torch.clamp(torch.ceil(my - ryd - 0.5), min=0)
    y1 = torch.clamp(torch.floor(my + ryd - 0.5), max=H - 1)
    bh = torch.clamp_min(y1 - y0 + 1, 0).long()
    n_spans = int(bh.sum())
    sg = torch.repeat_interleave(bh, output_size=n_spans)
    # per-Gaussian terms first, then one gather each. On a row, with dx = mx - (u + 0.5):
    # alpha >= ALPHA_MIN <=> a/2 dx^2 + (b dy) dx + c/2 dy^2 <= ln(opacity / ALPHA_MIN) =: L, i.e.
    # dx in [(-q1 - root) / a, (-q1 + root) / a], q1 = b dy, root = sqrt(q1^2 + 2 a (L - c/2 dy^2))
    first = y0 - (torch.cumsum(bh, 0) - bh)  # row = first + span index
    row = first.index_select(0, sg) + _arange(n_spans, dev, f64)
    dy = (my - 0.5).index_select(0, sg) - row
    A = (-2.0 * na).index_select(0, sg)
    q1 = (-nb).index_select(0, sg) * dy
    thr = torch.addcmul(torch.log(opa / ALPHA_MIN).index_select(0, sg),
                        nc.index_select(0, sg) * dy, dy)  # L - c/2 dy^2
    disc = torch.addcmul(q1 * q1, A, thr, value=2.0)
    root = torch.sqrt(torch.clamp_min(disc, 0.0))
    # u in [mx - 0.5 - (root - q1) / a, mx - 0.5 + (root + q1) / a], widened by SPAN_SLACK
    xs = torch.clamp(torch.ceil((mx - 0.5 - SPAN_SLACK).index_select(0, sg) - (root - q1) / A),
                     min=0)
    xe = torch.clamp(torch.floor((mx - 0.5 + SPAN_SLACK).index_select(0, sg) + (root + q1) / A),
                     max=W - 1)
    bw = torch.clamp_min(xe - xs + 1, 0).masked_fill_(disc < 0, 0).long()
    n = int(bw.sum())
    if n == 0:
        return _empty_pairs(W, H, dt, dev)
    wstart = torch.cumsum(bw, 0) - bw

    # -- per span in the model's dtype: the per-pair float operations are the reference's
    Gs = G.index_select(1, sg)
    span_dy = Gs[1] - (row.to(dt) + 0.5)
    a2, b_dy, c2_dy2 = -Gs[2], -Gs[3] * span_dy, -Gs[4] * span_dy * span_dy  # G: -a/2, -b, -c/2
    # pixel centre u + 0.5 = (xs + 0.5 - wstart) + (pair index): exact while the float holds it
    xdt = dt if (dt == f64 or n < 2**22) else f64
    u0 = (xs + 0.5 - wstart.to(f64)).to(xdt)
    pix0 = ((row * W + xs).long() - wstart).to(idt)  # span's first pixel id, minus its offset

    # -- candidates in generation order (gathers by the non-decreasing span index)
    ps = torch.repeat_interleave(bw.to(_index_dtype(n)), output_size=n)  # int32: faster gathers
    px = u0.index_select(0, ps).add_(_arange(n, dev, xdt)).to(dt)
    dx = Gs[0].index_select(0, ps).sub_(px)
    sigma = _sigma(dx, a2.index_select(0, ps), b_dy.index_select(0, ps),
                   c2_dy2.index_select(0, ps))
    alpha = _alpha(sigma, Gs[5].index_select(0, ps), inplace=True)
    pix_gen = pix0.index_select(0, ps).add_(_arange(n, dev, idt))
    gauss_ptr = torch.zeros(m + 1, dtype=idt, device=dev)
    torch.cumsum(torch.zeros(m, dtype=torch.int64, device=dev).index_add_(0, sg, bw), 0,
                 out=gauss_ptr[1:])
    return _pixel_order(gauss_ptr, pix_gen, alpha, W, H)


def _transmittance(alpha, pix, pix_ptr):
    """-> T [P]: the transmittance in front of each pair, 0 at and after the pair where its pixel
    stops (the one whose inclusive transmittance would be <= ``T_MIN``).

    Pairs in (pixel, depth) order; ``pix_ptr`` [H*W + 1] are the pixels' first pairs. Only the
    cumulative sum of ``log(1 - alpha)`` (and its differences) is float64: one pair's term is
    accurate in float32 (``1 - alpha`` rounds as in the reference's product; ``log1p`` of a
    negative argument is ~5x slower here), a running sum over the whole image is not. The stop is
    a ``threshold`` to -inf (one branch-free pass; a compare and a masked fill with a mask this
    irregular cost several times more). Its in-place steps are ones autograd allows (the autograd
    composite uses it too).
    """
    la = torch.log(torch.rsub(alpha, 1.0))
    if la.shape[0] == 0:
        return la
    cs = torch.cumsum(la, 0, dtype=torch.float64)
    # running sum before each pixel's first pair (0 for the first pixels)
    prev = pix_ptr[:-1].long() - 1
    before = torch.where(prev >= 0, cs.index_select(0, prev.clamp_min(0)), 0.0)
    incl = cs.sub_(before.index_select(0, pix)).to(alpha.dtype)  # (in place: fewer allocations)
    return torch.nn.functional.threshold(incl, _LOG_T_MIN, -math.inf).sub_(la).exp_()


def _contributing(pairs: Pairs, T):
    """-> (pairs, w = alpha T) without the pairs where ``w = 0`` (at/after their pixel's stop, or
    below ``ALPHA_MIN``: ~30% of the benchmark's); the rest of the forward and the backward never
    see them. (``w >= T_MIN * ALPHA_MIN`` elsewhere, so it never underflows to 0.)"""
    w = pairs.alpha * T
    mask = w > 0
    keep = _flatnonzero(mask)
    if keep.shape[0] == w.shape[0]:
        return pairs, w
    # a pixel's kept pairs end where its last pair's running count of kept pairs says
    end = pairs.pix_ptr[1:].long() - 1
    kept = torch.cumsum(mask, 0, dtype=pairs.pix_ptr.dtype).index_select(0, end.clamp_min(0))
    pix_ptr = torch.nn.functional.pad(torch.where(end >= 0, kept, 0), (1, 0))
    pix = torch.repeat_interleave(torch.diff(pix_ptr), output_size=keep.shape[0])
    gi, alpha = pairs.gi.index_select(0, keep), pairs.alpha.index_select(0, keep)
    return pairs._replace(pix_ptr=pix_ptr, gi=gi, pix=pix, alpha=alpha), w.index_select(0, keep)


def _with_ones(feats):
    return torch.cat([feats, feats.new_ones(feats.shape[0], 1)], dim=1)


class _Composite(torch.autograd.Function):
    """(G [6, M], feats [M, F], pairs) -> (acc [HW, F], alpha [HW], num_pixels [M] int64).

    G = (mx, my, na, nb, nc, opacity) of the Gaussians in depth order, with (na, nb, nc) =
    -(a/2, b, c/2) for the conic [[a, b], [b, c]], so that -sigma = na dx^2 + nb dx dy + nc dy^2.
    ``pairs`` must come from ``_pairs(G.detach(), ...)``: its alphas are G's.
    """

    @staticmethod
    def forward(ctx, G, feats, pairs: Pairs):
        m, f = feats.shape
        pairs, w = _contributing(pairs, _transmittance(pairs.alpha, pairs.pix, pairs.pix_ptr))
        alpha = pairs.alpha
        if w.shape[0]:
            s = _torch_sparse(torch.sparse_csr_tensor, pairs.pix_ptr, pairs.gi, w,
                              (pairs.n_pix, m))
            out = s @ _with_ones(feats)  # [HW, F + 1]
        else:
            out = feats.new_zeros(pairs.n_pix, f + 1)
        num = torch.bincount(pairs.gi, minlength=m)
        ctx.mark_non_differentiable(num)
        ctx.pairs = pairs
        ctx.save_for_backward(G, feats, alpha, w)
        return out[:, :f].contiguous(), out[:, f].contiguous(), num

    @staticmethod
    def backward(ctx, g_acc, g_a, _g_num):
        G, feats, alpha, w = ctx.saved_tensors
        p: Pairs = ctx.pairs
        m = G.shape[1]
        if w.shape[0] == 0:
            return torch.zeros_like(G), torch.zeros_like(feats), None
        # dL/dw_k = feat_k . dL/dC_p + dL/dA_p; all-zero columns of dL/dC (outputs the loss does
        # not use, e.g. depth or NOCS) are skipped
        dw = g_a.index_select(0, p.pix) if g_a is not None else torch.zeros_like(w)
        if g_acc is not None:
            cols = [k for k in range(feats.shape[1]) if g_acc[:, k].any()]
            fT, gT = feats.t()[cols].contiguous(), g_acc.t()[cols].contiguous()  # 1-D gathers
            for fk, gk in zip(fT, gT):
                dw.addcmul_(fk.index_select(0, p.gi), gk.index_select(0, p.pix))
        d_feats = None
        if ctx.needs_input_grad[1]:
            d_feats = (torch.zeros_like(feats) if g_acc is None
                       else _gaussian_sums(p, w, g_acc, m))
        d_G = None
        if ctx.needs_input_grad[0]:
            # dL/dalpha_k = T_k dw_k - (later w_j dw_j of the pixel) / (1 - alpha_k);
            # the Gaussians need u = dL/d(-sigma) = dL/dalpha * opacity e = dL/dalpha * alpha below
            # the clamp (0 where clamped: no gradient), i.e. with v = w dw:
            # u_k = v_k - (later v of the pixel) * alpha_k / (1 - alpha_k)
            v = dw.mul_(w)
            cv = torch.cumsum(v, 0, dtype=torch.float64)
            last = cv.index_select(0, (p.pix_ptr[1:].long() - 1).clamp_min(0))
            after = last.index_select(0, p.pix).sub_(cv).to(w.dtype)
            odds = torch.rsub(alpha, 1.0)
            u = v.addcmul_(after, torch.div(alpha, odds, out=odds), value=-1.0)
            if float(G[5].max()) >= ALPHA_MAX:  # else no pair can be clamped
                u.masked_fill_(alpha >= ALPHA_MAX, 0.0)
            u = u.double()
            # sums over each Gaussian's pairs of u dx^i dy^j from the pixel moments (float64)
            m0, m_x, m_y, m_xx, m_xy, m_yy = _gaussian_sums(
                p, u, _pixel_moments(p.width, p.height, u.device), m).unbind(1)
            mx, my, na, nb, nc, o = G.to(torch.float64).unbind(0)
            s_x, s_y = mx * m0 - m_x, my * m0 - m_y  # sum u dx, sum u dy (dx = mx - px)
            s_xx = (mx * m0 - 2.0 * m_x) * mx + m_xx
            s_yy = (my * m0 - 2.0 * m_y) * my + m_yy
            s_xy = (mx * m0 - m_x) * my - mx * m_y + m_xy
            # -sigma = na dx^2 + nb dx dy + nc dy^2; dL/dopacity = sum dL/dalpha e = sum u / opacity
            d_G = torch.stack([2.0 * na * s_x + nb * s_y, 2.0 * nc * s_y + nb * s_x,
                               s_xx, s_xy, s_yy, m0 / o], dim=0).to(G.dtype)
        return d_G, d_feats, None


def _composite_autograd(G, feats, pairs: Pairs):
    """The same composite with autograd through gathers, cumsum and scatters, in pixel order, with
    alpha recomputed from G: an independent check of _pairs' alphas and of _Composite's backward."""
    gi, pix, W = pairs.gi, pairs.pix, pairs.width
    mx, my, na, nb, nc, o = (G[k].index_select(0, gi) for k in range(6))
    px = (pix % W).to(G.dtype) + 0.5
    py = torch.div(pix, W, rounding_mode="floor").to(G.dtype) + 0.5
    dx, dy = mx - px, my - py
    alpha = _alpha(_sigma(dx, -na, -nb * dy, -nc * dy * dy), o)
    T = _transmittance(alpha, pix, pairs.pix_ptr)
    w = alpha * T
    zero = w.new_zeros(pairs.n_pix)
    cols = [zero.index_add(0, pix, feats[:, k].index_select(0, gi) * w)
            for k in range(feats.shape[1])]
    kept = _contributing(pairs._replace(alpha=alpha.detach()), T.detach())[0]
    num = torch.bincount(kept.gi, minlength=G.shape[1])
    return torch.stack(cols, dim=1), zero.index_add(0, pix, w), num


class _Fused(torch.autograd.Function):
    """(G [6, M], feats [M, F], ry [M], width, height) -> (acc [HW, F], alpha [HW], num_pixels [M]
    int64): ``_pairs`` and ``_Composite`` in two compiled loops (``_kernels``, numba), CPU only.

    Same inputs, outputs and gradients as ``_Composite.apply(G, feats, _pairs(G.detach(), ry, W,
    H))``; the pairs never leave generation order (see ``_kernels``).
    """

    @staticmethod
    def forward(ctx, G, feats, ry, width: int, height: int):
        m, f = feats.shape
        dt = G.dtype
        npdt = np.float32 if dt == torch.float32 else np.float64
        Gn = G.detach().contiguous().numpy()
        fn = feats.detach().to(dt).contiguous().numpy()
        ryn = ry.detach().to(dt).contiguous().numpy()
        centres = np.arange(max(width, height), dtype=npdt) + npdt(0.5)
        consts = np.array([1.0, ALPHA_MIN, ALPHA_MAX], dtype=npdt)
        gptr = np.empty(m + 1, dtype=np.int64)
        cap = _FUSED_CAP[0]
        while True:
            pid = np.empty(cap, dtype=np.int32)
            alpha, w = np.empty(cap, dtype=npdt), np.empty(cap, dtype=npdt)
            acc = np.zeros((width * height, f + 1))
            n = _kernels.forward(Gn, ryn, fn, centres, consts, width, height, SPAN_SLACK,
                                 ALPHA_MIN, T_MIN, pid, alpha, w, gptr, acc)
            if n <= cap:
                break
            cap = _FUSED_CAP[0] = int(n * 1.25) + 1024
        ctx.fused = (gptr, pid[:n], alpha[:n], w[:n], width, height)
        ctx.save_for_backward(G, feats)
        out = torch.from_numpy(acc).to(feats.dtype)
        num = torch.from_numpy(np.diff(gptr))
        ctx.mark_non_differentiable(num)
        return out[:, :f].contiguous(), out[:, f].contiguous(), num

    @staticmethod
    def backward(ctx, g_acc, g_a, _g_num):
        G, feats = ctx.saved_tensors
        gptr, pid, alpha, w, width, height = ctx.fused
        m, f = feats.shape
        npdt = alpha.dtype
        n_pix = g_acc.shape[0] if g_acc is not None else g_a.shape[0]
        if g_acc is None:
            g_acc = torch.zeros(n_pix, f, dtype=feats.dtype)
        if g_a is None:
            g_a = torch.zeros(n_pix, dtype=feats.dtype)
        # all-zero columns of dL/dacc (outputs the loss does not use, e.g. depth or NOCS): skipped
        cols = np.flatnonzero(g_acc.detach().ne(0).any(dim=0).numpy()).astype(np.int64)
        cx, cy = _pixel_centres(width, height)
        d_G = np.empty((6, m))
        d_feats = np.zeros((m, f))
        _kernels.backward(G.detach().contiguous().numpy(), feats.detach().to(G.dtype).contiguous()
                          .numpy(), gptr, pid, alpha, w,
                          g_acc.detach().to(G.dtype).contiguous().numpy(), cols,
                          g_a.detach().to(G.dtype).contiguous().numpy(), npdt.type(ALPHA_MAX),
                          cx, cy, d_G, d_feats)
        return (torch.from_numpy(d_G).to(G.dtype), torch.from_numpy(d_feats).to(feats.dtype),
                None, None, None)


#: Capacity of the fused forward's pair buffers (grows to the largest view seen, plus 25%).
_FUSED_CAP = [1 << 18]


def _use_numba(t: torch.Tensor) -> bool:
    return USE_NUMBA and _kernels.AVAILABLE and t.device.type == "cpu"


def composite_inputs(proj: Projected):
    """-> (order [M], G [6, M], feats [M, F], ry [M]): the depth order of ``proj``'s rows and the
    inputs of the compositing step in that order (see _Composite; ``ry`` are the box half-heights,
    px, from which ``_pairs`` starts).

    Separate from :func:`rasterize_cpu` so the benchmark can time the stages one by one.
    """
    order = torch.argsort(proj.depths.detach(), stable=True)
    con = proj.conics
    G = torch.stack([proj.means2d[:, 0], proj.means2d[:, 1], -0.5 * con[:, 0], -con[:, 1],
                     -0.5 * con[:, 2], proj.opacities], dim=0).index_select(1, order)
    feats = proj.features.index_select(0, order)
    return order, G, feats, proj.radii[:, 1].index_select(0, order)


def rasterize_cpu(proj: Projected, composite: str = "function"):
    """-> (acc [H*W, F], alpha [H*W], num_pixels [M], num_pairs) for projected Gaussians.

    composite: "function" (hand-written backward, default: the compiled kernels when numba is
    importable and the tensors are on the CPU, else torch), "torch" (the torch ``_pairs`` +
    ``_Composite`` path, whatever numba) or "autograd" (torch pairs, autograd composite).
    """
    order, G, feats, ry = composite_inputs(proj)
    W, H = proj.width, proj.height
    if composite == "function" and _use_numba(G):
        acc, a_img, num = _Fused.apply(G, feats, ry, W, H)
    elif composite in ("function", "torch"):
        acc, a_img, num = _Composite.apply(G, feats, _pairs(G.detach(), ry, W, H))
    elif composite == "autograd":
        acc, a_img, num = _composite_autograd(G, feats, _pairs(G.detach(), ry, W, H))
    else:
        raise ValueError(f"rasterize_cpu: composite must be 'function', 'torch' or 'autograd', "
                         f"got {composite!r}")
    full = torch.zeros_like(num)
    full[order] = num
    return acc, a_img, full, int(num.sum())
