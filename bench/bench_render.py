#!/usr/bin/env python3
"""Renderer benchmark: forward + backward (pose twist, colours, opacities) of a 128x128 crop.

Usage (from the repository root):
    .venv/bin/python bench/bench_render.py                  # CPU backend + dense reference
    .venv/bin/python bench/bench_render.py --threads 1      # one intra-op thread
    .venv/bin/python bench/bench_render.py --device cuda    # gsplat (needs CUDA)
    .venv/bin/python bench/bench_render.py --torch-path     # CPU backend without numba's kernels

Scene: gs2pose_ros.gaussians.procedural_box_model(N) (a textured 8x6x5 cm box, flat Gaussians)
0.3 m in front of the camera, K scaled so the box fills ~80% of the crop. One step = render at
se3_exp(xi) @ T0 with xi, sh and opacity_logits requiring grad, L1 loss against a target image
(plus the alpha sum), backward. Reports median/p90/min wall time over --reps after --warmup (and
the median process CPU time, see timed()) and, apart, the process's first step (numba compiles its
kernels or loads them from its cache there), the dense reference on the same scene with --ref-reps,
and a per-stage breakdown; prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from gs2pose_ros.gaussians import procedural_box_model  # noqa: E402
from gs2pose_ros.lie import make_pose, se3_exp, so3_exp  # noqa: E402
from gs2pose_ros.render import _common, cpu, render  # noqa: E402


def scene(n: int, size: int, device: str, first_step=None):
    """-> (model, K, T0, target). ``first_step(model, K, T0)`` (optional) runs before the target
    is rendered: the process's first render."""
    model = procedural_box_model(n).to(device=device)
    f = 420.0 * size / 128
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]], device=device)
    T0 = make_pose(so3_exp(torch.tensor([0.5, -0.6, 0.3])), torch.tensor([0.0, 0.0, 0.3]))
    T0 = T0.to(device)
    if first_step is not None:
        first_step(model, K, T0)
    target = render(model, se3_exp(torch.tensor([0.002, -0.001, 0.003, 0.02, -0.01, 0.015],
                                                device=device)) @ T0, K, size, size).color.detach()
    return model, K, T0, target


def _numba_version() -> str:
    import numba

    return numba.__version__


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step(model, K, T0, target, size, backend):
    xi = torch.zeros(6, device=K.device, requires_grad=True)
    m = model.clone().requires_grad_("sh", "opacity_logits")
    out = render(m, se3_exp(xi) @ T0, K, size, size, backend=backend)
    loss = (out.color - target).abs().mean() + out.alpha.mean()
    loss.backward()
    return out


def timed(fn, reps, warmup, device):
    """-> (wall ms, process CPU ms) of each run. On a shared machine the CPU time (all threads of
    this process) leaves out the waits for a core; with one thread it is close to the wall time of
    an idle machine (cache contention from the other jobs remains)."""
    for _ in range(warmup):
        fn()
    sync(device)
    ts, cs = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        ts.append((time.perf_counter() - t) * 1e3)
        cs.append((time.process_time() - c) * 1e3)
    return ts, cs


def stats(ts):
    s = sorted(ts)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return statistics.median(s), p90, s[0]


def breakdown(model, K, T0, target, size, reps):
    """Manual timers per stage of the CPU backend (medians, ms); mirrors cpu.rasterize_cpu (the
    compiled kernels, or the torch path with --torch-path)."""
    fused = cpu._use_numba(model.means)
    if fused:
        names = ["project (fwd)", "depth order, G",
                 "fused fwd (numba): pairs, transmittance, accumulation", "finish + loss",
                 "fused bwd (numba)", "projection + SH + twist bwd"]
    else:
        names = ["project (fwd)", "pairs: spans, alpha, counting sort by pixel",
                 "composite fwd: transmittance, drop stopped pairs, CSR product", "finish + loss",
                 "composite bwd (hand-written, CSC products)", "projection + SH + twist bwd"]
    acc = {k: [] for k in names}
    for _ in range(reps):
        xi = torch.zeros(6, requires_grad=True)
        m = model.clone().requires_grad_("sh", "opacity_logits")
        t0 = time.perf_counter()
        T, Kt = _common.check_inputs(m, se3_exp(xi) @ T0, K, size, size)
        proj = _common.project(m, T, Kt, size, size)
        t1 = time.perf_counter()
        _, Gt, feats, ry = cpu.composite_inputs(proj)  # see cpu._Composite
        if fused:
            t2 = time.perf_counter()
            a, al, _ = cpu._Fused.apply(Gt, feats, ry, size, size)
        else:
            pairs = cpu._pairs(Gt.detach(), ry, size, size)
            t2 = time.perf_counter()
            a, al, _ = cpu._Composite.apply(Gt, feats, pairs)
        t3 = time.perf_counter()
        out = _common.finish(proj, a, al, None, "cpu")
        loss = (out.color - target).abs().mean() + out.alpha.mean()
        g_acc, g_al = torch.autograd.grad(loss, [a, al], retain_graph=True)
        t4 = time.perf_counter()
        g_Gt, g_feats = torch.autograd.grad([a, al], [Gt, feats], [g_acc, g_al])
        t5 = time.perf_counter()
        torch.autograd.backward([Gt, feats], [g_Gt, g_feats])
        t6 = time.perf_counter()
        for k, t in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            acc[k].append(t)
    return {k: 1e3 * statistics.median(v) for k, v in acc.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="number of Gaussians")
    ap.add_argument("--size", type=int, default=128, help="crop size, px")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--ref-reps", type=int, default=3, help="dense reference repetitions (0: skip)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: "
                    "leave torch's setting)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--torch-path", action="store_true", help="CPU backend without the compiled "
                    "kernels (cpu.USE_NUMBA = False), for comparisons")
    args = ap.parse_args(argv)
    if args.torch_path:
        cpu.USE_NUMBA = False
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    backend = "gsplat" if dev == "cuda" else "cpu"
    first = []

    def first_step(model, K, T0):  # the process's first render + backward: numba's compilation
        t = time.perf_counter()   # (or the load of its cache) included
        zeros = torch.zeros(args.size, args.size, 3, device=dev)
        step(model, K, T0, zeros, args.size, backend)
        sync(dev)
        first.append((time.perf_counter() - t) * 1e3)

    load0 = os.getloadavg()
    model, K, T0, target = scene(args.n, args.size, dev, first_step)
    out = step(model, K, T0, target, args.size, backend)
    ts, cs = timed(lambda: step(model, K, T0, target, args.size, backend), args.reps, args.warmup,
                   dev)
    med, p90, mn = stats(ts)
    rows = [(f"{backend} fwd+bwd", med, p90, mn, statistics.median(cs), args.reps)]
    ref = None
    if args.ref_reps and dev == "cpu":
        rts, rcs = timed(lambda: step(model, K, T0, target, args.size, "reference"),
                         args.ref_reps, 0, dev)
        ref = stats(rts)
        rows.append(("dense reference fwd+bwd", *ref, statistics.median(rcs), args.ref_reps))
    bd = breakdown(model, K, T0, target, args.size, max(5, args.reps // 3)) if dev == "cpu" else {}
    load1 = os.getloadavg()
    print(f"# Renderer benchmark: {args.n} Gaussians, {args.size}x{args.size} px, device {dev}")
    print(f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"- load average before/after: {load0[0]:.2f} / {load1[0]:.2f}")
    if dev == "cpu":
        path = (f"compiled kernels (numba {_numba_version()})" if cpu._use_numba(model.means)
                else "torch")
        print(f"- CPU path: {path}; first step "
              f"{first[0]:.0f} ms (compilation or cache load included; not in the table below)")
    if out.num_pairs is not None:
        print(f"- contributing Gaussian-pixel pairs: {out.num_pairs}, mean alpha "
              f"{float(out.alpha.detach().mean()):.2f}")
    print()
    print("| what | median ms | p90 ms | min ms | median CPU ms | runs |")
    print("|---|---|---|---|---|---|")
    for name, a, b, c, d, n in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {c:.1f} | {d:.1f} | {n} |")
    if ref:
        print(f"\nspeed-up of the CPU backend over the dense reference (medians): "
              f"{ref[0] / med:.0f}x")
    if bd:
        print("\n| stage (CPU backend, medians) | ms |")
        print("|---|---|")
        for k, v in bd.items():
            print(f"| {k} | {v:.1f} |")


if __name__ == "__main__":
    main()
