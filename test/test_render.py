"""Renderer: CPU backend vs the dense reference, finite differences, conventions, pose descent.

Tolerances are named; each comment says where the number comes from.
"""

import math

import pytest
import torch

from gs2pose_ros.gaussians import (GaussianModel, ObjectMetadata, nocs_colors,
                                   procedural_box_model)
from gs2pose_ros.lie import make_pose, se3_exp, so3_exp, so3_log
from gs2pose_ros.render import render
from gs2pose_ros.render import _common

# Forward images, float32: both backends sum the same terms in a different order (scatter-add vs a
# dense matmul) and get the transmittance differently (float64 log-sum vs cumprod): observed
# max |diff| ~5e-7 on values <= 1; 2e-5 leaves a wide margin while catching any missed pair
# (one pair at the alpha threshold moves a pixel by >= 1/255 * colour ~ 1e-3).
FWD_ATOL = 2e-5
# Depth is in metres (~0.3 here) and divided by alpha: relative float32 error.
DEPTH_RTOL = 1e-5
# Gradients, float32, relative to the largest |component| of the same gradient: the reference's
# cumprod backward and the CPU backend's hand-written backward differ by rounding of sums over
# ~100 pairs per pixel and divisions by (1 - alpha): observed <= 3e-6.
GRAD_RTOL = 1e-4
# Central finite differences in float64 with step FD_EPS (radians / metres): the render is only
# piecewise smooth (a pair appears when its alpha crosses 1/255), so the step must be small enough
# that no pair crosses: with 1e-6 one of ~2,600 pairs did (alpha moves ~1e-6 per 1e-6 of twist);
# with 1e-8 the expected number of crossings is ~0.005 and the test asserts none happened.
# Error: truncation O(eps^2) is nil; rounding ~1e-16 * |loss| (~1e3) / eps ~ 1e-5 absolute on
# gradients of ~1e3, so a relative 1e-6 agreement is what an exact gradient gives.
FD_EPS = 1e-8
FD_RTOL = 1e-6


def K_of(f, cx, cy):
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


def random_scene(n=80, seed=0, degree=1, dtype=torch.float32, max_opacity=0.95):
    """Gaussians around (0, 0, 0.5) in front of an identity-rotation camera, some near the edges."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([0.09, 0.07, 0.06])
    op = torch.rand(n, generator=g) * (max_opacity - 0.05) + 0.05
    m = GaussianModel(
        means=means,
        quats=torch.randn(n, 4, generator=g),
        log_scales=torch.log(torch.rand(n, 3, generator=g) * 0.006 + 0.0008),
        opacity_logits=torch.log(op / (1 - op)),
        sh=torch.randn(n, (degree + 1) ** 2, 3, generator=g) * 0.5,
    )
    return m.to(dtype=dtype)


T_SCENE = make_pose(so3_exp(torch.tensor([0.1, -0.2, 0.05])), torch.tensor([0.004, -0.003, 0.5]))
W_SMALL, H_SMALL = 40, 30  # non-square on purpose
K_SMALL = K_of(300.0, 21.3, 14.1)  # off-centre principal point


def render_with_grads(backend, model, T0, K, w, h, *, nocs_tensor=None, colors=None, bg=0.25,
                      weights_seed=1):
    """Renders with every input requiring grad and back-propagates a fixed random loss."""
    m = model.clone().requires_grad_()
    xi = torch.zeros(6, dtype=model.dtype, device=model.device, requires_grad=True)
    nocs = None if nocs_tensor is None else nocs_tensor.clone().requires_grad_()
    cols = None if colors is None else colors.clone().requires_grad_()
    out = render(m, se3_exp(xi) @ T0.to(model.dtype), K, w, h, background=bg, nocs=nocs,
                 colors=cols, backend=backend)
    g = torch.Generator().manual_seed(weights_seed)
    loss = (out.color * torch.rand(out.color.shape, generator=g).to(model.device, model.dtype)).sum()
    loss = loss + (out.alpha * torch.rand(out.alpha.shape, generator=g).to(model.device, model.dtype)).sum()
    loss = loss + (out.depth * torch.rand(out.depth.shape, generator=g).to(model.device, model.dtype)).sum()
    if out.nocs is not None:
        loss = loss + (out.nocs * torch.rand(out.nocs.shape, generator=g).to(model.device, model.dtype)).sum()
    loss.backward()
    grads = {name: t.grad for name, t in m.tensors().items()}
    grads["xi"] = xi.grad
    if nocs is not None:
        grads["nocs"] = nocs.grad
    if cols is not None:
        grads["colors"] = cols.grad
    return out, grads


def assert_grads_close(ga, gb, rtol=GRAD_RTOL):
    for name in gb:
        scale = float(gb[name].abs().max())
        assert scale > 0, f"{name}: zero reference gradient, the test scene is degenerate"
        err = float((ga[name] - gb[name]).abs().max())
        assert err <= rtol * scale, f"{name}: max |diff| {err:.3g} > {rtol} * {scale:.3g}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cpu_matches_reference(seed):
    model = random_scene(seed=seed)
    meta = ObjectMetadata.from_model(model, "rand")
    nocs = nocs_colors(model, meta).detach()
    a, ga = render_with_grads("cpu", model, T_SCENE, K_SMALL, W_SMALL, H_SMALL, nocs_tensor=nocs)
    b, gb = render_with_grads("reference", model, T_SCENE, K_SMALL, W_SMALL, H_SMALL,
                              nocs_tensor=nocs)
    assert a.backend == "cpu" and b.backend == "reference"
    assert float(a.alpha.detach().max()) > 0.9 and float((a.alpha > 0).float().mean()) > 0.5  # not empty
    torch.testing.assert_close(a.color, b.color, rtol=0, atol=FWD_ATOL)
    torch.testing.assert_close(a.alpha, b.alpha, rtol=0, atol=FWD_ATOL)
    torch.testing.assert_close(a.nocs, b.nocs, rtol=0, atol=FWD_ATOL)
    torch.testing.assert_close(a.depth, b.depth, rtol=DEPTH_RTOL, atol=FWD_ATOL)
    assert torch.equal(a.num_pixels, b.num_pixels) and a.num_pairs == b.num_pairs
    assert torch.equal(a.radii, b.radii)
    assert_grads_close(ga, gb)


def test_cpu_matches_reference_with_opaque_layers_and_colour_override():
    """Opacities up to 0.9999: exercises the 0.999 clamp and the T_MIN early stop."""
    model = random_scene(n=150, seed=5, degree=0, max_opacity=0.9999)
    colors = torch.rand(150, 3, generator=torch.Generator().manual_seed(3))
    a, ga = render_with_grads("cpu", model, T_SCENE, K_SMALL, W_SMALL, H_SMALL, colors=colors)
    b, gb = render_with_grads("reference", model, T_SCENE, K_SMALL, W_SMALL, H_SMALL,
                              colors=colors)
    torch.testing.assert_close(a.color, b.color, rtol=0, atol=FWD_ATOL)
    torch.testing.assert_close(a.alpha, b.alpha, rtol=0, atol=FWD_ATOL)
    assert torch.equal(a.num_pixels, b.num_pixels)
    gb.pop("sh")  # colours are overridden: no gradient reaches sh
    assert ga["sh"] is None or float(ga["sh"].abs().max()) == 0
    assert_grads_close(ga, gb)


def test_autograd_composite_matches_hand_written_backward():
    from gs2pose_ros.render import cpu

    model = random_scene(seed=4).requires_grad_()
    T, K = _common.check_inputs(model, T_SCENE, K_SMALL, W_SMALL, H_SMALL)
    results = []
    for mode in ("function", "autograd"):
        for t in model.tensors().values():
            t.grad = None
        proj = _common.project(model, T, K, W_SMALL, H_SMALL)
        acc, alpha, _, _ = cpu.rasterize_cpu(proj, composite=mode)
        g = torch.Generator().manual_seed(0)
        ((acc * torch.rand(acc.shape, generator=g)).sum() + (alpha * alpha).sum()).backward()
        results.append({k: t.grad.clone() for k, t in model.tensors().items()})
    assert_grads_close(results[0], results[1])


@pytest.mark.parametrize("use_scipy", [True, False])
def test_torch_path_matches_scipy_path(monkeypatch, use_scipy):
    """The CPU backend's three paths agree: compiled kernels (numba, the default where importable),
    torch with numpy/scipy (no numba), and torch alone (what other devices run)."""
    from gs2pose_ros.render import cpu

    model = random_scene(n=150, seed=5, degree=1, max_opacity=0.9999)  # also the 0.999 clamp
    a, ga = render_with_grads("cpu", model, T_SCENE, K_SMALL, W_SMALL, H_SMALL)
    monkeypatch.setattr(cpu, "USE_NUMBA", False)
    monkeypatch.setattr(cpu, "USE_SCIPY", use_scipy)
    b, gb = render_with_grads("cpu", model, T_SCENE, K_SMALL, W_SMALL, H_SMALL)
    torch.testing.assert_close(a.color, b.color, rtol=0, atol=FWD_ATOL)
    torch.testing.assert_close(a.alpha, b.alpha, rtol=0, atol=FWD_ATOL)
    torch.testing.assert_close(a.depth, b.depth, rtol=DEPTH_RTOL, atol=FWD_ATOL)
    assert torch.equal(a.num_pixels, b.num_pixels) and a.num_pairs == b.num_pairs
    assert_grads_close(ga, gb)


def test_compiled_kernels_grow_their_buffers(monkeypatch):
    """The fused forward stores its pairs in a preallocated buffer; a view with more pairs than it
    holds is rendered again with a larger one (same result as the torch path)."""
    from gs2pose_ros.render import _kernels, cpu

    if not _kernels.AVAILABLE:
        pytest.skip("numba is not importable: the CPU backend runs its torch path")
    model = random_scene(n=150, seed=6, degree=0)
    monkeypatch.setattr(cpu, "_FUSED_CAP", [16])
    a, ga = render_with_grads("cpu", model, T_SCENE, K_SMALL, W_SMALL, H_SMALL)
    assert cpu._FUSED_CAP[0] > a.num_pairs > 16
    monkeypatch.setattr(cpu, "USE_NUMBA", False)
    b, gb = render_with_grads("cpu", model, T_SCENE, K_SMALL, W_SMALL, H_SMALL)
    torch.testing.assert_close(a.color, b.color, rtol=0, atol=FWD_ATOL)
    assert torch.equal(a.num_pixels, b.num_pixels)
    assert_grads_close(ga, gb)


def test_pose_gradient_matches_finite_differences():
    model = random_scene(n=40, seed=7, degree=1, dtype=torch.float64, max_opacity=0.9)
    K = K_SMALL.double()
    g = torch.Generator().manual_seed(2)
    wc = torch.rand(H_SMALL, W_SMALL, 3, generator=g, dtype=torch.float64)
    wd = torch.rand(H_SMALL, W_SMALL, generator=g, dtype=torch.float64)

    def loss_of(xi):
        out = render(model, se3_exp(xi) @ T_SCENE.double(), K, W_SMALL, H_SMALL, backend="cpu",
                     background=0.5)
        return (out.color * wc).sum() + (out.depth * wd).sum(), out.num_pixels

    xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    loss, n0 = loss_of(xi)
    loss.backward()
    fd = torch.zeros(6, dtype=torch.float64)
    for i in range(6):
        e = torch.zeros(6, dtype=torch.float64)
        e[i] = FD_EPS
        lp, n_plus = loss_of(e)
        lm, n_minus = loss_of(-e)
        # the render is piecewise smooth: the set of contributing pairs must not change
        assert torch.equal(n_plus, n0) and torch.equal(n_minus, n0)
        fd[i] = (lp - lm).detach() / (2 * FD_EPS)
    torch.testing.assert_close(xi.grad, fd, rtol=FD_RTOL, atol=FD_RTOL * float(fd.abs().max()))


def test_projection_matches_gsplat_torch_reference():
    _torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    model = random_scene(n=200, seed=3, dtype=torch.float64)
    T, K = _common.check_inputs(model, T_SCENE, K_SMALL, W_SMALL, H_SMALL)
    proj = _common.project(model, T, K, W_SMALL, H_SMALL)
    covars, _ = _torch_impl._quat_scale_to_covar_preci(model.quats, model.scales, True, False)
    _, means2d, depths, conics, _ = _torch_impl._fully_fused_projection(
        model.means, covars, T[None], K[None], W_SMALL, H_SMALL, eps2d=_common.EPS2D)
    i = proj.index
    torch.testing.assert_close(proj.means2d, means2d[0, i])
    torch.testing.assert_close(proj.depths, depths[0, i])
    torch.testing.assert_close(proj.conics, conics[0, i])


def test_crop_is_a_new_K():
    """Rendering a crop with the crop's K equals cropping the full render (pixel-centre convention).

    Exact when every Gaussian centre lies inside the crop: gsplat's (and our) EWA Jacobian clamps
    x/z, y/z to 1.3x the *image's* field of view, so a Gaussian centred well outside a crop gets a
    different footprint in the crop than in the full image.
    """
    model = random_scene(seed=8, degree=0)
    K = K_of(300.0, 40.3, 30.1)
    full = render(model, T_SCENE, K, 80, 60)
    x0, y0, w, h = 8, 6, 64, 50
    m2d = full.means2d[full.visible]
    assert float(m2d[:, 0].min()) > x0 and float(m2d[:, 0].max()) < x0 + w
    assert float(m2d[:, 1].min()) > y0 and float(m2d[:, 1].max()) < y0 + h
    Kc = K.clone()
    Kc[0, 2] -= x0
    Kc[1, 2] -= y0
    crop = render(model, T_SCENE, Kc, w, h)
    torch.testing.assert_close(crop.color, full.color[y0:y0 + h, x0:x0 + w], rtol=0, atol=1e-6)
    torch.testing.assert_close(crop.alpha, full.alpha[y0:y0 + h, x0:x0 + w], rtol=0, atol=1e-6)
    # a 2x scaled crop is K' = 2 K (shifted): same image content at twice the resolution
    Ks = Kc.clone()
    Ks[:2] *= 2.0
    big = render(model, T_SCENE, Ks, 2 * w, 2 * h)
    assert float(big.alpha.mean()) == pytest.approx(float(crop.alpha.mean()), rel=0.05)


def test_pixel_centre_convention_and_depth():
    """A small Gaussian projecting to (10.5, 6.5) is centred on pixel (u=10, v=6)."""
    K = K_of(200.0, 16.0, 12.0)
    z = 0.4
    x = (10.5 - 16.0) * z / 200.0
    y = (6.5 - 12.0) * z / 200.0
    m = GaussianModel.from_points(torch.tensor([[x, y, z]]), torch.tensor([[1.0, 1.0, 1.0]]),
                                  scale=0.002, opacity=0.8)
    out = render(m, torch.eye(4), K, 32, 24)
    a = out.alpha
    v, u = divmod(int(torch.argmax(a)), 32)
    assert (u, v) == (10, 6)
    torch.testing.assert_close(a[6, 9], a[6, 11])
    torch.testing.assert_close(a[5, 10], a[7, 10])
    assert float(a[6, 10]) == pytest.approx(0.8, rel=1e-5)  # exp(0) at the exact centre
    torch.testing.assert_close(out.depth[a > 0], torch.full_like(out.depth[a > 0], z))
    assert float(out.depth[a == 0].abs().max()) == 0.0
    assert out.num_pixels.tolist() == [int((a > 0).sum())]


def test_background_and_empty_render():
    m = random_scene(seed=9, degree=0)
    out = render(m, T_SCENE, K_SMALL, W_SMALL, H_SMALL, background=[0.2, 0.4, 0.6])
    black = render(m, T_SCENE, K_SMALL, W_SMALL, H_SMALL)
    bg = torch.tensor([0.2, 0.4, 0.6])
    torch.testing.assert_close(out.color, black.color + (1 - black.alpha)[..., None] * bg)
    behind = make_pose(torch.eye(3), torch.tensor([0.0, 0.0, -1.0]))
    xi = torch.zeros(6, requires_grad=True)
    e = render(m, se3_exp(xi) @ behind, K_SMALL, W_SMALL, H_SMALL, background=1.0)
    assert float(e.alpha.detach().abs().max()) == 0 and float(e.depth.detach().abs().max()) == 0
    torch.testing.assert_close(e.color, torch.ones(H_SMALL, W_SMALL, 3))
    assert not e.visible.any() and e.num_pairs == 0
    e.color.sum().backward()  # no crash, zero gradient
    assert float(xi.grad.abs().max()) == 0


def test_bad_arguments():
    m = random_scene(n=5)
    with pytest.raises(ValueError, match="backend"):
        render(m, T_SCENE, K_SMALL, 8, 8, backend="vulkan")
    with pytest.raises(ValueError, match="T_cam_obj"):
        render(m, torch.eye(3), K_SMALL, 8, 8)
    with pytest.raises(ValueError, match="nocs"):
        render(m, T_SCENE, K_SMALL, 8, 8, nocs=torch.zeros(4, 3))
    assert render(m, T_SCENE, K_SMALL, 8, 8).backend == "cpu"  # auto on a CPU model


def _angle_deg(Ra, Rb):
    return math.degrees(float(so3_log(Ra @ Rb.transpose(-1, -2)).norm()))


@pytest.fixture
def one_thread():
    """Runs the test with one intra-op thread (restored afterwards).

    On this shared 2-core machine, two OpenMP threads that spin at every parallel region made each
    small render ~20x slower whenever other processes held a core (see docs/benchmarks.md).
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_gradient_descent_recovers_a_perturbed_pose(one_thread):
    """Adam on a twist from a 10 deg / 2 cm perturbation of a rendered textured box.

    Observed on an AMD EPYC VM (2026-11-26): 0.08 deg / 0.25 mm after 100 steps with the compiled
    kernels, 0.03 deg / 0.19 mm on the torch path, ~5 s on one core. At 60 steps Adam is still
    swinging about the optimum (there 2.5 mm on that VM, 0.4 mm on another CPU's rounding), so
    the check waits for the end of the schedule's swing.
    """
    model = procedural_box_model(3000, seed=1)
    w = h = 64
    K = K_of(210.0, 32.0, 32.0)
    T_gt = make_pose(so3_exp(torch.tensor([0.4, -0.5, 0.2])), torch.tensor([0.005, -0.004, 0.3]))
    target = render(model, T_gt, K, w, h, background=0.0).color
    axis = torch.nn.functional.normalize(torch.tensor([0.3, 1.0, -0.5]), dim=0)
    dR = so3_exp(axis * math.radians(10.0))
    dt = torch.nn.functional.normalize(torch.tensor([1.0, -0.6, 0.8]), dim=0) * 0.02
    # perturb about the object centre: R' = dR R, t' = t + dt
    T0 = make_pose(dR @ T_gt[:3, :3], T_gt[:3, 3] + dt)
    assert _angle_deg(T0[:3, :3], T_gt[:3, :3]) == pytest.approx(10.0, abs=1e-3)
    xi = torch.zeros(6, requires_grad=True)
    opt = torch.optim.Adam([xi], lr=0.01)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.98)
    for _ in range(100):
        opt.zero_grad()
        out = render(model, T0 @ se3_exp(xi), K, w, h, background=0.0)  # object-frame twist
        loss = (out.color - target).abs().mean()
        loss.backward()
        opt.step()
        sched.step()
    T = (T0 @ se3_exp(xi)).detach()
    rot_err = _angle_deg(T[:3, :3], T_gt[:3, :3])
    trans_err = float((T[:3, 3] - T_gt[:3, 3]).norm())
    assert rot_err < 1.0 and trans_err < 0.002, (rot_err, trans_err)


@pytest.mark.gpu
def test_gsplat_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("gsplat")
    model = random_scene(n=300, seed=11, degree=2)
    meta = ObjectMetadata.from_model(model, "rand")
    nocs = nocs_colors(model, meta).detach()
    W, H = 64, 48
    K = K_of(500.0, 30.2, 25.7)
    a, ga = render_with_grads("cpu", model, T_SCENE, K, W, H, nocs_tensor=nocs)
    b, gb = render_with_grads("gsplat", model.to("cuda"), T_SCENE.cuda(), K.cuda(), W, H,
                              nocs_tensor=nocs.cuda())
    assert b.backend == "gsplat"
    # float32 on two devices, different summation order and fast-math exp on the GPU
    for name in ("color", "alpha", "nocs"):
        torch.testing.assert_close(getattr(b, name).cpu(), getattr(a, name), rtol=0, atol=1e-4)
    torch.testing.assert_close(b.depth.cpu(), a.depth, rtol=1e-4, atol=1e-4)
    assert torch.equal(b.radii.cpu(), a.radii)
    assert_grads_close({k: v.cpu() for k, v in gb.items()}, ga, rtol=2e-3)
