"""Compiled (numba) kernels of the CPU rasteriser: the whole per-pair work in two loops.

Why numba: the per-pair work (a pixel's alpha, its transmittance, the accumulation) is a short
chain of scalar operations over ~0.7M Gaussian-pixel pairs. Eager PyTorch runs each operation as
one pass over all pairs (a dozen passes for the alpha alone, plus a sort by pixel to get the
transmittance, plus gathers and scatters), and neither torch nor scipy offers a compiled per-pair
loop on the CPU. numba compiles these loops to machine code: each pair is evaluated once, in
registers, and only the pairs that contribute are stored.

The loops run in *generation order*: Gaussians by depth, each one's rows, each row's pixels.
Because every pixel then meets its Gaussians front to back, the transmittance is a running
per-pixel state ([H*W] float64, fits in cache): no sort by pixel is needed, a pixel that has
stopped (``T_MIN``) costs one load per later candidate, and the backward walks the same pairs in
reverse (back to front), keeping per pixel the sum of the later pairs' ``w dL/dw`` (3DGS's
back-to-front gradient). The per-pair rule is the one of ``cpu._pairs``/``cpu._alpha`` (same
closed-form row intervals widened by ``SPAN_SLACK``, same float operations in the model's dtype,
``sigma >= 0``, ``alpha >= ALPHA_MIN``, clamp to ``ALPHA_MAX``); the transmittance is a float64
running product of ``1 - alpha`` (that factor rounded in the model's dtype, as in the reference's
product; a product needs no log/exp per pair, and float64 keeps long products of factors close to
1 accurate), and a pixel stops where it would reach ``T_MIN`` (as ``cpu._transmittance``).

Single-threaded: the per-pixel state forbids running Gaussians in parallel (two Gaussians covering
one pixel must be met in depth order), and with 2 shared cores a second thread did not pay off for
the torch passes either (docs/benchmarks.md). ``cache=True``: compiled once per machine (per
dtype) into ``__pycache__``; later processes load the machine code (if that folder is not
writable, numba silently compiles in every process).

``AVAILABLE`` is False when numba cannot be imported; ``cpu`` then uses its pure-torch path.
"""

from __future__ import annotations

import math

import numpy as np

try:
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover - numba is in scripts/requirements.txt
    numba = None
    AVAILABLE = False


def _jit(fn):
    if numba is None:
        return fn
    return numba.njit(cache=True, nogil=True, error_model="numpy")(fn)


@_jit
def forward(G, ry, feats, centres, consts, width, height, span_slack, alpha_min, t_min,
            pid, alpha, w, gptr, acc):
    """Pairs, transmittance and accumulation of one view, front to back.

    G [6, M] (mx, my, na, nb, nc, opacity) in depth order (see cpu._Composite), ry [M] box
    half-heights, feats [M, F], centres [max(W, H)] = ``u + 0.5`` in G's dtype, consts =
    (1, ALPHA_MIN, ALPHA_MAX) in G's dtype. Fills ``gptr`` [M + 1] (each Gaussian's first stored
    pair), ``pid`` (int32 pixel ids), ``alpha``, ``w`` (G's dtype; capacity ``pid.shape[0]``) with
    the contributing pairs (``w > 0``) in generation order, and adds ``w * (feats, 1)`` into ``acc``
    [H*W, F + 1] (float64, zeroed by the caller). Returns the number of contributing pairs: if it
    exceeds the capacity, only the first ones were stored (``acc`` and ``gptr`` are complete) and
    the caller runs it again with enough room. ``t_min``: T_MIN; ``alpha_min``: ALPHA_MIN (float64,
    for the row intervals).
    """
    m = G.shape[1]
    nf = feats.shape[1]
    cap = pid.shape[0]
    one, amin, amax = consts[0], consts[1], consts[2]
    trans = np.ones(width * height)  # transmittance in front of the next pair; 0 once stopped
    n = 0
    gptr[0] = 0
    for g in range(m):
        mx, my = G[0, g], G[1, g]
        na, nb, nc, opa = G[2, g], G[3, g], G[4, g], G[5, g]
        # -- float64 row intervals (as cpu._pairs)
        mxd, myd, nad, nbd, ncd = (np.float64(mx), np.float64(my), np.float64(na),
                                   np.float64(nb), np.float64(nc))
        ryd = np.float64(ry[g])
        y0 = max(math.ceil(myd - ryd - 0.5), 0)
        y1 = min(math.floor(myd + ryd - 0.5), height - 1)
        big_a = -2.0 * nad
        lthr = math.log(np.float64(opa) / alpha_min)  # L = log(opacity / ALPHA_MIN)
        a2, nb_neg, nc_neg = -na, -nb, -nc  # a/2, b, c/2 in G's dtype
        for row in range(y0, y1 + 1):
            dyd = (myd - 0.5) - row
            q1 = -nbd * dyd
            thr = lthr + (ncd * dyd) * dyd
            disc = q1 * q1 + 2.0 * big_a * thr
            if disc < 0.0:
                continue
            root = math.sqrt(disc)
            xs = max(math.ceil((mxd - 0.5 - span_slack) - (root - q1) / big_a), 0)
            xe = min(math.floor((mxd - 0.5 + span_slack) + (root + q1) / big_a), width - 1)
            # -- per pair in G's dtype: the float operations of cpu._sigma / cpu._alpha
            span_dy = my - centres[row]
            b_dy = nb_neg * span_dy
            c2_dy2 = (nc_neg * span_dy) * span_dy
            base = row * width
            for u in range(xs, xe + 1):
                p = base + u
                t = trans[p]
                if t == 0.0:  # the pixel has stopped
                    continue
                dx = mx - centres[u]
                sigma = c2_dy2 + (b_dy + a2 * dx) * dx
                if not sigma >= 0:  # (as written, NaN fails too, as in cpu._alpha's threshold)
                    continue
                a = opa / np.exp(sigma)
                if not a >= amin:
                    continue
                if a > amax:
                    a = amax
                incl = t * np.float64(one - a)
                if incl <= t_min:  # this pair would bring T to T_MIN or below: stop
                    trans[p] = 0.0
                    continue
                trans[p] = incl
                wd = a * t
                if n < cap:
                    pid[n] = p
                    alpha[n] = a
                    w[n] = wd
                n += 1
                for f in range(nf):
                    acc[p, f] += wd * feats[g, f]
                acc[p, nf] += wd
        gptr[g + 1] = n
    return n


@_jit
def backward(G, feats, gptr, pid, alpha, w, g_acc, cols, g_a, amax, centre_x, centre_y, d_G,
             d_feats):
    """Hand-written backward of :func:`forward`, back to front (3DGS's formulas).

    ``g_acc`` [H*W, F] / ``g_a`` [H*W]: dL/d(accumulated features) and dL/d(alpha image) (zeros
    where the loss does not use them; ``cols``: the columns of ``g_acc`` that are not all zero).
    With ``v = w dL/dw`` and ``after`` the sum of ``v`` over the pixel's later pairs,
    ``u = dL/d(-sigma) = v - after alpha / (1 - alpha)`` (0 where alpha is clamped). Fills
    ``d_G`` [6, M] (float64: dL/d(mx, my, na, nb, nc, opacity)) and ``d_feats`` [M, F] (float64,
    zeroed by the caller).
    """
    m = G.shape[1]
    after = np.zeros(g_a.shape[0])
    for g in range(m - 1, -1, -1):
        mx, my = np.float64(G[0, g]), np.float64(G[1, g])
        s0 = sx = sy = sxx = sxy = syy = 0.0
        for k in range(gptr[g], gptr[g + 1]):
            p = pid[k]
            wk = np.float64(w[k])
            dw = np.float64(g_a[p])
            for c in cols:
                gc = np.float64(g_acc[p, c])
                dw += np.float64(feats[g, c]) * gc
                d_feats[g, c] += wk * gc
            v = wk * dw
            ak = alpha[k]
            if ak >= amax:
                uk = 0.0
            else:
                akd = np.float64(ak)
                uk = v - after[p] * akd / (1.0 - akd)
            after[p] += v
            dx = mx - centre_x[p]
            dy = my - centre_y[p]
            s0 += uk
            sx += uk * dx
            sy += uk * dy
            sxx += uk * dx * dx
            sxy += uk * dx * dy
            syy += uk * dy * dy
        na, nb, nc = np.float64(G[2, g]), np.float64(G[3, g]), np.float64(G[4, g])
        d_G[0, g] = 2.0 * na * sx + nb * sy
        d_G[1, g] = 2.0 * nc * sy + nb * sx
        d_G[2, g] = sxx
        d_G[3, g] = sxy
        d_G[4, g] = syy
        d_G[5, g] = s0 / np.float64(G[5, g])
