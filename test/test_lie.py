"""Tests of gs2pose_ros.lie: round trips, agreement with scipy, and gradients at the zero twist."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch.autograd import gradcheck
from torch.autograd.functional import jacobian

from gs2pose_ros.errors import GeometryError
from gs2pose_ros.lie import (
    check_rotation,
    hat,
    make_pose,
    matrix_to_quat,
    orthonormalize,
    quat_to_matrix,
    quat_wxyz_to_xyzw,
    quat_xyzw_to_wxyz,
    se3_adjoint,
    se3_compose,
    se3_exp,
    se3_inverse,
    se3_log,
    so3_exp,
    so3_log,
    split_pose,
    transform_points,
    vee,
)

DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 2e-5, torch.float64: 1e-11}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _rotvecs(n, dtype, max_angle=math.pi - 1e-3, seed=0):
    """Random rotation vectors whose angles include tiny ones and ones close to pi."""
    g = _gen(seed)
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    angles = torch.rand(n, generator=g, dtype=torch.float64) * max_angle
    special = torch.tensor([0.0, 1e-8, 1e-6, 1e-4, 1e-2, 0.3, 1.0, 2.0, 3.0, math.pi - 1e-2, math.pi - 1e-3],
                           dtype=torch.float64)
    k = min(n, len(special))
    angles[:k] = special[:k]
    return (axis * angles[:, None]).to(dtype)


def _twists(n, dtype, seed=0):
    rho = torch.randn(n, 3, generator=_gen(seed + 1), dtype=torch.float64).to(dtype)
    return torch.cat([rho, _rotvecs(n, dtype, seed=seed)], dim=-1)


def _generators(dtype=torch.float64):
    G = torch.zeros(6, 4, 4, dtype=dtype)
    for k in range(3):
        G[k, k, 3] = 1.0
        G[3 + k, :3, :3] = hat(torch.eye(3, dtype=dtype)[k])
    return G


# ---------------------------------------------------------------------------- hat / vee


def test_hat_is_cross_product_and_vee_inverts_it():
    a = torch.randn(7, 3, dtype=torch.float64)
    b = torch.randn(7, 3, dtype=torch.float64)
    assert torch.allclose((hat(a) @ b[..., None])[..., 0], torch.linalg.cross(a, b))
    assert torch.allclose(vee(hat(a)), a)
    assert torch.allclose(hat(a), -hat(a).transpose(-1, -2))


# ---------------------------------------------------------------------------- SO(3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_so3_exp_matches_scipy(dtype):
    w = _rotvecs(200, dtype)
    R = so3_exp(w)
    assert R.dtype == dtype and R.shape == (200, 3, 3)
    ref = torch.as_tensor(Rotation.from_rotvec(w.double().numpy()).as_matrix())
    assert (R.double() - ref).abs().max() < TOL[dtype] * 10


@pytest.mark.parametrize("dtype", DTYPES)
def test_so3_log_exp_round_trip(dtype):
    w = _rotvecs(500, dtype)
    assert (so3_log(so3_exp(w)) - w).abs().max() < TOL[dtype] * 10


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "angle", [0.0, 1e-8, 1e-7, 1e-5, 1e-3, 0.05, 0.099, 0.101, math.pi / 2, 3.0, math.pi - 1e-6]
)
def test_so3_log_special_angles(dtype, angle):
    axis = torch.tensor([0.3, -0.5, 0.7], dtype=torch.float64)
    w = (axis / axis.norm() * angle).to(dtype)
    out = so3_log(so3_exp(w))
    assert torch.isfinite(out).all()
    if dtype == torch.float32 and angle > 3.0:
        # Close to pi a float32 matrix pins the angle down to ~sqrt(eps); compare rotations.
        assert (so3_exp(out) - so3_exp(w)).abs().max() < 1e-5
    else:
        assert (out - w).abs().max() < TOL[dtype] * 10


@pytest.mark.parametrize("axis", [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0], [-1.0, 2.0, 3.0]])
def test_so3_log_at_exactly_pi(axis):
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    R = torch.as_tensor(Rotation.from_rotvec((math.pi * a).numpy()).as_matrix())
    w = so3_log(R)
    # Either sign of the axis is a valid logarithm of a half turn.
    assert torch.allclose(w.norm(), torch.tensor(math.pi, dtype=torch.float64))
    assert torch.allclose(so3_exp(w), R, atol=1e-12)


def test_so3_log_accepts_numpy():
    R = Rotation.from_rotvec([0.1, 0.2, 0.3]).as_matrix()
    w = so3_log(R)
    assert isinstance(w, torch.Tensor)
    assert np.allclose(w.numpy(), [0.1, 0.2, 0.3])


# ---------------------------------------------------------------------------- SE(3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_se3_log_exp_round_trips(dtype):
    xi = _twists(300, dtype)
    T = se3_exp(xi)
    assert T.shape == (300, 4, 4) and T.dtype == dtype
    assert torch.equal(T[:, 3], torch.tensor([0, 0, 0, 1], dtype=dtype).expand(300, 4))
    assert (se3_log(T) - xi).abs().max() < TOL[dtype] * 50
    assert (se3_exp(se3_log(T)) - T).abs().max() < TOL[dtype] * 10


def test_se3_exp_pure_translation_and_rotation():
    xi = torch.tensor([0.1, -0.2, 0.3, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert torch.allclose(se3_exp(xi), make_pose(torch.eye(3, dtype=torch.float64), xi[:3]))
    w = torch.tensor([0.0, 0.0, 0.4], dtype=torch.float64)
    T = se3_exp(torch.cat([torch.zeros(3, dtype=torch.float64), w]))
    assert torch.allclose(T[:3, :3], so3_exp(w))
    assert torch.allclose(T[:3, 3], torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_inverse_and_compose(dtype):
    A = se3_exp(_twists(50, dtype, seed=1))
    B = se3_exp(_twists(50, dtype, seed=2))
    eye = torch.eye(4, dtype=dtype)
    tol = TOL[dtype] * 100
    assert (se3_compose(A, se3_inverse(A)) - eye).abs().max() < tol
    assert (se3_inverse(A) - torch.linalg.inv(A)).abs().max() < tol
    assert (se3_inverse(se3_compose(A, B)) - se3_compose(se3_inverse(B), se3_inverse(A))).abs().max() < tol
    # Broadcasting: one transform against a batch.
    assert se3_compose(A[0], B).shape == (50, 4, 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adjoint_moves_twists_across(dtype):
    X = se3_exp(_twists(40, dtype, seed=3))
    a = 0.5 * _twists(40, dtype, seed=4)
    lhs = X @ se3_exp(a) @ se3_inverse(X)
    rhs = se3_exp((se3_adjoint(X) @ a[..., None])[..., 0])
    assert (lhs - rhs).abs().max() < TOL[dtype] * 100
    # Adjoint is a homomorphism: Adj(AB) = Adj(A) Adj(B).
    Y = se3_exp(_twists(40, dtype, seed=5))
    assert (se3_adjoint(X @ Y) - se3_adjoint(X) @ se3_adjoint(Y)).abs().max() < TOL[dtype] * 100


def test_transform_points_and_pose_helpers():
    T = se3_exp(_twists(4, torch.float64))
    p = torch.randn(4, 10, 3, dtype=torch.float64)
    R, t = split_pose(T)
    ref = torch.einsum("bij,bnj->bni", R, p) + t[:, None]
    assert torch.allclose(transform_points(T, p), ref)
    assert torch.allclose(make_pose(R, t), T)
    # One pose, many point sets; numpy points.
    assert transform_points(T[0], p).shape == (4, 10, 3)
    assert isinstance(transform_points(T[0].numpy(), p[0].numpy()), torch.Tensor)
    with pytest.raises(GeometryError, match="points"):
        transform_points(T[0], torch.zeros(3, dtype=torch.float64))


# ---------------------------------------------------------------------------- gradients


_GRAD_POINTS = {
    "zero": torch.zeros(6, dtype=torch.float64),
    "tiny": torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 2.0], dtype=torch.float64) * 1e-8 / 3.0,
    "generic": torch.tensor([0.3, -0.2, 0.5, 0.4, -0.7, 0.9], dtype=torch.float64),
    "near_threshold": torch.tensor([0.1, 0.2, 0.3, 0.0, 0.01, 0.0], dtype=torch.float64),
    "large_angle": torch.tensor([0.1, 0.2, 0.3, 2.0, 1.5, -1.0], dtype=torch.float64),
}


@pytest.mark.parametrize("where", list(_GRAD_POINTS))
def test_gradcheck_exp_and_log(where):
    xi = _GRAD_POINTS[where].clone().requires_grad_(True)
    assert gradcheck(se3_exp, (xi,))
    assert gradcheck(so3_exp, (xi[3:].detach().clone().requires_grad_(True),))
    T = se3_exp(xi).detach().clone().requires_grad_(True)
    assert gradcheck(se3_log, (T,))
    R = T[:3, :3].detach().clone().requires_grad_(True)
    assert gradcheck(so3_log, (R,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_exp_jacobian_at_zero_is_the_generators(dtype):
    J = jacobian(se3_exp, torch.zeros(6, dtype=dtype))  # [4, 4, 6]
    assert torch.isfinite(J).all()
    assert torch.allclose(J.permute(2, 0, 1), _generators(dtype))
    Jr = jacobian(so3_exp, torch.zeros(3, dtype=dtype))
    assert torch.allclose(Jr.permute(2, 0, 1), _generators(dtype)[3:, :3, :3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_of_exp_has_identity_jacobian_at_zero(dtype):
    # What a refiner does: T(xi) = exp(xi) @ T0, loss through log; d log(exp(xi)) / d xi = I at 0.
    J = jacobian(lambda x: se3_log(se3_exp(x)), torch.zeros(6, dtype=dtype))
    assert torch.allclose(J, torch.eye(6, dtype=dtype), atol=1e-6)
    xi = torch.zeros(6, dtype=dtype, requires_grad=True)
    loss = (transform_points(se3_exp(xi), torch.randn(20, 3, dtype=dtype)) ** 2).sum()
    loss.backward()
    assert torch.isfinite(xi.grad).all()


def test_gradients_finite_at_identity_in_batch_with_large_angles():
    # The unselected branch of torch.where must not leak NaN into the gradient.
    xi = torch.cat([torch.zeros(1, 6), _twists(8, torch.float32)]).requires_grad_(True)
    se3_log(se3_exp(xi)).sum().backward()
    assert torch.isfinite(xi.grad).all()
    T = se3_exp(xi.detach()).requires_grad_(True)
    se3_log(T).sum().backward()
    assert torch.isfinite(T.grad).all()


# ---------------------------------------------------------------------------- quaternions


@pytest.mark.parametrize("dtype", DTYPES)
def test_quaternions_agree_with_scipy(dtype):
    w = _rotvecs(300, torch.float64)
    R = so3_exp(w).to(dtype)
    q = matrix_to_quat(R)
    assert q.shape == (300, 4) and q.dtype == dtype
    assert (q[:, 0] >= 0).all()
    ref = Rotation.from_rotvec(w.numpy()).as_quat()  # scipy is x, y, z, w
    ref = quat_xyzw_to_wxyz(torch.as_tensor(ref))
    ref = torch.where(ref[:, :1] < 0, -ref, ref)
    assert (q.double() - ref).abs().max() < TOL[dtype] * 10
    assert (quat_to_matrix(q) - R).abs().max() < TOL[dtype] * 10
    # And scipy reads our matrices from our quaternions.
    sc = Rotation.from_quat(quat_wxyz_to_xyzw(q).double().numpy()).as_matrix()
    assert np.abs(sc - R.double().numpy()).max() < TOL[dtype] * 10


def test_quaternion_half_turns_and_normalisation():
    for axis in np.eye(3):
        R = torch.as_tensor(Rotation.from_rotvec(math.pi * axis).as_matrix())
        assert torch.allclose(quat_to_matrix(matrix_to_quat(R)), R, atol=1e-12)
    q = torch.tensor([2.0, 0.0, 0.0, 0.0])
    assert torch.allclose(quat_to_matrix(q), torch.eye(3))
    with pytest.raises(GeometryError, match="q_wxyz"):
        quat_to_matrix(torch.zeros(4))


def test_quaternion_order_conversions():
    q = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.equal(quat_wxyz_to_xyzw(q), torch.tensor([[2.0, 3.0, 4.0, 1.0]]))
    assert torch.equal(quat_xyzw_to_wxyz(quat_wxyz_to_xyzw(q)), q)
    assert isinstance(quat_xyzw_to_wxyz(np.array([0.0, 0.0, 0.0, 1.0])), torch.Tensor)


def test_matrix_to_quat_gradcheck():
    R = so3_exp(torch.tensor([0.4, -1.2, 2.5], dtype=torch.float64)).requires_grad_(True)
    assert gradcheck(matrix_to_quat, (R,))
    q = torch.tensor([0.3, -0.1, 0.8, 0.2], dtype=torch.float64, requires_grad=True)
    assert gradcheck(quat_to_matrix, (q,))


# ---------------------------------------------------------------------------- validation


def test_check_rotation_accepts_rotations():
    R = so3_exp(_rotvecs(10, torch.float32))
    assert check_rotation(R, "R_batch") is not None
    check_rotation(np.eye(3), "R_np")


@pytest.mark.parametrize(
    "M, what",
    [
        (np.diag([1.0, 1.0, -1.0]), "reflection"),
        (np.eye(3) * 1.1, "scaled"),
        (np.ones((3, 3)), "singular"),
    ],
)
def test_check_rotation_raises_naming_the_input(M, what):
    with pytest.raises(GeometryError, match=r"cam_R_m2c is not a rotation matrix.*det = .*orthonormalize"):
        check_rotation(M, "cam_R_m2c")


def test_check_rotation_reports_batch_element_and_bad_shapes():
    R = so3_exp(_rotvecs(5, torch.float64)).clone()
    R[3, 0, 0] += 0.1
    with pytest.raises(GeometryError, match=r"R_est is not a rotation matrix \(batch element \[3\]\)"):
        check_rotation(R, "R_est")
    with pytest.raises(GeometryError, match="shape"):
        check_rotation(np.eye(4), "R_est")
    with pytest.raises(GeometryError, match="NaN"):
        check_rotation(np.full((3, 3), np.nan), "R_est")


def test_orthonormalize_fixes_perturbed_rotations():
    R = so3_exp(_rotvecs(20, torch.float64))
    noisy = R + 5e-3 * torch.randn(20, 3, 3, generator=_gen(7), dtype=torch.float64)
    with pytest.raises(GeometryError):
        check_rotation(noisy, "noisy")
    fixed = orthonormalize(noisy)
    check_rotation(fixed, "fixed", tol=1e-12)
    assert (fixed - R).abs().max() < 2e-2
    # A rotation is its own nearest rotation; a reflection is mapped to det +1.
    assert torch.allclose(orthonormalize(R), R, atol=1e-12)
    assert torch.linalg.det(orthonormalize(torch.diag(torch.tensor([1.0, 1.0, -1.0])))) > 0
