"""SO(3) and SE(3) in PyTorch: batched, float32/float64, differentiable everywhere it matters.

Conventions (docs/conventions.md): poses are 4x4 ``T_a_b`` acting on column vectors, twists are
``xi = [rho | omega]`` of shape ``[..., 6]``, quaternions are ``w, x, y, z`` inside the core.

Every function takes torch tensors (numpy arrays are converted with ``torch.as_tensor``) and returns
torch tensors. Leading dimensions ``...`` broadcast where the docstring says so.

Why the care with small angles: the refiner evaluates ``se3_exp(xi)`` at ``xi = 0`` on every step and
back-propagates through it. Formulas like ``sin(t) / t`` are 0/0 there, and ``torch.where`` computes
gradients of *both* branches, so a NaN in the unused branch still poisons the gradient
(``0 * nan = nan``). Each branch below is therefore evaluated on an input that is safe for it: the
Taylor branch is a polynomial in ``theta**2`` (finite everywhere), and the closed-form branch sees
``theta**2`` replaced by 1 where it is not selected.
"""

from __future__ import annotations

import numpy as np
import torch

from gs2pose_ros.errors import GeometryError

__all__ = [
    "hat",
    "vee",
    "so3_exp",
    "so3_log",
    "se3_exp",
    "se3_log",
    "se3_inverse",
    "se3_compose",
    "se3_adjoint",
    "transform_points",
    "make_pose",
    "split_pose",
    "quat_to_matrix",
    "matrix_to_quat",
    "quat_wxyz_to_xyzw",
    "quat_xyzw_to_wxyz",
    "check_rotation",
    "orthonormalize",
]


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _t(x) -> torch.Tensor:
    """Converts numpy arrays / lists to a tensor (no copy where possible); integer input -> float."""
    x = torch.as_tensor(x)
    if not (x.is_floating_point() or x.is_complex()):
        x = x.to(torch.get_default_dtype())
    return x


def _check_last(x: torch.Tensor, shape: tuple[int, ...], name: str, fn: str) -> None:
    if tuple(x.shape[x.dim() - len(shape):]) != shape or x.dim() < len(shape):
        want = "[..., " + ", ".join(str(s) for s in shape) + "]"
        raise GeometryError(
            f"{fn}: {name} has shape {tuple(x.shape)}, expected {want}; reshape the input"
        )


def _small_theta2(dtype: torch.dtype) -> float:
    """Threshold on theta**2 below which the Taylor branches are used.

    Chosen so that the truncated series (four terms, error ~theta**8) is at machine precision
    while the closed forms above it have lost few digits to cancellation.
    """
    return 1e-4 if dtype == torch.float64 else 1e-2


def _eye(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device)


# ----------------------------------------------------------------------------------------------
# so(3)
# ----------------------------------------------------------------------------------------------


def hat(omega) -> torch.Tensor:
    """Skew-symmetric matrix of a 3-vector, ``hat(a) @ b == cross(a, b)``.

    omega: [..., 3] -> [..., 3, 3]

    Example:
        >>> a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 0.5, 2.0])
        >>> torch.allclose(hat(a) @ b, torch.linalg.cross(a, b))
        True
    """
    omega = _t(omega)
    _check_last(omega, (3,), "omega", "hat")
    x, y, z = omega.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(*omega.shape[:-1], 3, 3)


def vee(M) -> torch.Tensor:
    """Inverse of :func:`hat`: the 3-vector of the skew-symmetric part of ``M``.

    M: [..., 3, 3] -> [..., 3]. Taking the skew part (rather than reading three entries) makes
    ``vee`` well defined and smooth for any matrix, which :func:`so3_log` relies on.

    Example:
        >>> vee(hat(torch.tensor([1.0, 2.0, 3.0])))
        tensor([1., 2., 3.])
    """
    M = _t(M)
    _check_last(M, (3, 3), "M", "vee")
    return 0.5 * torch.stack(
        [M[..., 2, 1] - M[..., 1, 2], M[..., 0, 2] - M[..., 2, 0], M[..., 1, 0] - M[..., 0, 1]],
        dim=-1,
    )


def _so3_coeffs(theta2: torch.Tensor):
    """A = sin(t)/t, B = (1-cos t)/t^2, C = (t - sin t)/t^3 as functions of theta2 = t^2.

    theta2: [...] -> three tensors [...]. Finite values and gradients for every theta2 >= 0.
    """
    small = theta2 < _small_theta2(theta2.dtype)
    # Taylor branch: polynomial in theta2, finite (and differentiable) everywhere.
    t2 = theta2
    a_s = 1 - t2 / 6 * (1 - t2 / 20 * (1 - t2 / 42))
    b_s = 0.5 - t2 / 24 * (1 - t2 / 30 * (1 - t2 / 56))
    c_s = 1.0 / 6 - t2 / 120 * (1 - t2 / 42 * (1 - t2 / 72))
    # Closed-form branch on a safe theta2 (1 where the Taylor branch is used).
    t2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    t = torch.sqrt(t2_safe)
    s = torch.sin(t)
    a_l = s / t
    # 1 - cos t = 2 sin^2(t/2): no cancellation for small t.
    b_l = 2 * torch.sin(0.5 * t) ** 2 / t2_safe
    c_l = (t - s) / (t2_safe * t)
    return (
        torch.where(small, a_s, a_l),
        torch.where(small, b_s, b_l),
        torch.where(small, c_s, c_l),
    )


def so3_exp(omega) -> torch.Tensor:
    """Rotation matrix of a rotation vector (Rodrigues), ``R = exp(hat(omega))``.

    omega: [..., 3] (axis * angle, radians) -> R: [..., 3, 3]. Exact gradients at ``omega = 0``.

    Example:
        >>> R = so3_exp(torch.tensor([0.0, 0.0, torch.pi / 2]))  # 90 deg about z
        >>> torch.allclose(R @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
        True
    """
    omega = _t(omega)
    _check_last(omega, (3,), "omega", "so3_exp")
    a, b, _ = _so3_coeffs((omega * omega).sum(-1))
    W = hat(omega)
    return _eye(3, omega) + a[..., None, None] * W + b[..., None, None] * (W @ W)


def so3_log(R) -> torch.Tensor:
    """Rotation vector of a rotation matrix, the inverse of :func:`so3_exp` (angle in [0, pi]).

    R: [..., 3, 3] -> omega: [..., 3]. Accurate near the identity (with finite gradients there)
    and near a half turn, where the axis is read from the symmetric part of ``R``. At exactly pi
    the sign of the axis is arbitrary (both are valid logarithms).

    Example:
        >>> so3_log(so3_exp(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)))
        tensor([ 0.1000, -0.2000,  0.3000], dtype=torch.float64)
    """
    R = _t(R)
    _check_last(R, (3, 3), "R", "so3_log")
    s = vee(R)  # = sin(theta) * axis on SO(3)
    x2 = (s * s).sum(-1)  # sin^2(theta)
    cos_t = 0.5 * (R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1)

    small = (x2 < _small_theta2(R.dtype)) & (cos_t > 0)
    # Beyond 90 degrees the axis from the symmetric part is well conditioned (1 - cos >= 1), while
    # omega = theta / sin(theta) * s loses accuracy as sin(theta) -> 0.
    near_pi = cos_t <= 0
    generic = ~(small | near_pi)

    # Small angles: theta / sin(theta) = asin(x) / x as a series in x^2 = sin^2(theta).
    f_s = 1 + x2 / 6 + x2 * x2 * (3.0 / 40) + x2 * x2 * x2 * (5.0 / 112)
    om_small = f_s[..., None] * s

    # Generic: theta = atan2(sin, cos) on a safe sin (1 where not selected).
    sin_g = torch.sqrt(torch.where(generic, x2, torch.ones_like(x2)))
    theta_g = torch.atan2(sin_g, cos_t)
    om_generic = (theta_g / sin_g)[..., None] * s

    # Near pi: (R + R^T)/2 - cos I = (1 - cos) a a^T; normalise its largest-diagonal column.
    sym = 0.5 * (R + R.transpose(-1, -2))
    M = sym - cos_t[..., None, None] * _eye(3, R)
    safe_M = torch.zeros_like(M)
    safe_M[..., 0, 0] = 1.0
    M = torch.where(near_pi[..., None, None], M, safe_M)
    idx = torch.diagonal(M, dim1=-2, dim2=-1).argmax(-1)  # no gradient needed through argmax
    col = torch.gather(M, -1, idx[..., None, None].expand(*M.shape[:-1], 1)).squeeze(-1)
    axis = col / torch.linalg.vector_norm(col, dim=-1, keepdim=True)
    sign = torch.where((axis * s).sum(-1) < 0, -1.0, 1.0).to(R.dtype)
    # clamp_min keeps the sqrt gradient finite at exactly pi (where sin = 0).
    theta_p = torch.atan2(torch.sqrt(x2.clamp_min(torch.finfo(R.dtype).tiny)), cos_t)
    om_pi = (sign * theta_p)[..., None] * axis

    out = torch.where(small[..., None], om_small, om_generic)
    return torch.where(near_pi[..., None], om_pi, out)


# ----------------------------------------------------------------------------------------------
# SE(3)
# ----------------------------------------------------------------------------------------------


def make_pose(R, t) -> torch.Tensor:
    """4x4 homogeneous transform from a rotation and a translation.

    R: [..., 3, 3], t: [..., 3] (batch dims broadcast) -> T: [..., 4, 4]

    Example:
        >>> make_pose(torch.eye(3), torch.tensor([0.0, 0.0, 1.0]))[:3, 3]
        tensor([0., 0., 1.])
    """
    R, t = _t(R), _t(t)
    _check_last(R, (3, 3), "R", "make_pose")
    _check_last(t, (3,), "t", "make_pose")
    dtype = torch.promote_types(R.dtype, t.dtype)
    R, t = R.to(dtype), t.to(device=R.device, dtype=dtype)
    batch = torch.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    top = torch.cat([R.expand(*batch, 3, 3), t.expand(*batch, 3)[..., None]], dim=-1)
    bottom = torch.zeros(*batch, 1, 4, dtype=dtype, device=R.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def split_pose(T) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation and translation of a 4x4 transform.

    T: [..., 4, 4] -> (R: [..., 3, 3], t: [..., 3]) (views into T)

    Example:
        >>> R, t = split_pose(torch.eye(4))
    """
    T = _t(T)
    _check_last(T, (4, 4), "T", "split_pose")
    return T[..., :3, :3], T[..., :3, 3]


def se3_exp(xi) -> torch.Tensor:
    """SE(3) exponential of a twist ``xi = [rho | omega]``.

    xi: [..., 6] -> T: [..., 4, 4] with ``R = so3_exp(omega)``, ``t = V(omega) @ rho``.
    Exact gradients at ``xi = 0``: ``d T / d xi_k`` there is the k-th generator.

    Example:
        >>> T = se3_exp(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0]))  # pure translation along x
        >>> T[:3, 3]
        tensor([1., 0., 0.])
    """
    xi = _t(xi)
    _check_last(xi, (6,), "xi", "se3_exp")
    rho, omega = xi[..., :3], xi[..., 3:]
    a, b, c = _so3_coeffs((omega * omega).sum(-1))
    W = hat(omega)
    W2 = W @ W
    eye = _eye(3, xi)
    R = eye + a[..., None, None] * W + b[..., None, None] * W2
    V = eye + b[..., None, None] * W + c[..., None, None] * W2
    return make_pose(R, (V @ rho[..., None])[..., 0])


def se3_log(T) -> torch.Tensor:
    """SE(3) logarithm, the inverse of :func:`se3_exp`.

    T: [..., 4, 4] -> xi: [..., 6] = [rho | omega], rotation angle in [0, pi].

    Example:
        >>> xi = torch.tensor([0.1, 0.2, 0.3, 0.01, -0.02, 0.5], dtype=torch.float64)
        >>> torch.allclose(se3_log(se3_exp(xi)), xi)
        True
    """
    T = _t(T)
    _check_last(T, (4, 4), "T", "se3_log")
    R, t = T[..., :3, :3], T[..., :3, 3]
    omega = so3_log(R)
    theta2 = (omega * omega).sum(-1)
    # V^-1 = I - W/2 + D W^2 with D = (1 - (t/2) cot(t/2)) / t^2, finite up to and at t = pi.
    small = theta2 < _small_theta2(T.dtype)
    d_s = 1.0 / 12 + theta2 / 720 + theta2 * theta2 / 30240 + theta2 * theta2 * theta2 / 1209600
    t2_safe = torch.where(small, torch.ones_like(theta2), theta2)
    half = 0.5 * torch.sqrt(t2_safe)
    d_l = (1 - half * torch.cos(half) / torch.sin(half)) / t2_safe
    d = torch.where(small, d_s, d_l)
    W = hat(omega)
    V_inv = _eye(3, T) - 0.5 * W + d[..., None, None] * (W @ W)
    rho = (V_inv @ t[..., None])[..., 0]
    return torch.cat([rho, omega], dim=-1)


def se3_inverse(T) -> torch.Tensor:
    """Inverse of a rigid transform, ``[R^T, -R^T t]`` (exact, no matrix inversion).

    T: [..., 4, 4] -> [..., 4, 4]

    Example:
        >>> T = se3_exp(torch.rand(6))
        >>> torch.allclose(se3_inverse(T) @ T, torch.eye(4), atol=1e-6)
        True
    """
    R, t = split_pose(T)
    Rt = R.transpose(-1, -2)
    return make_pose(Rt, -(Rt @ t[..., None])[..., 0])


def se3_compose(A, B) -> torch.Tensor:
    """Composition ``A @ B`` of transforms (``T_a_c = T_a_b @ T_b_c``), batch dims broadcast.

    A: [..., 4, 4], B: [..., 4, 4] -> [..., 4, 4]

    Example:
        >>> se3_compose(torch.eye(4), torch.eye(4).expand(5, 4, 4)).shape
        torch.Size([5, 4, 4])
    """
    A, B = _t(A), _t(B)
    _check_last(A, (4, 4), "A", "se3_compose")
    _check_last(B, (4, 4), "B", "se3_compose")
    return A @ B


def se3_adjoint(T) -> torch.Tensor:
    """Adjoint of a transform for twists ordered ``[rho | omega]``: ``[[R, hat(t) R], [0, R]]``.

    T: [..., 4, 4] -> [..., 6, 6], so that ``T @ se3_exp(xi) == se3_exp(Adj(T) @ xi) @ T``.

    Example:
        >>> se3_adjoint(torch.eye(4)).shape
        torch.Size([6, 6])
    """
    R, t = split_pose(T)
    top = torch.cat([R, hat(t) @ R], dim=-1)
    bottom = torch.cat([torch.zeros_like(R), R], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def transform_points(T, points) -> torch.Tensor:
    """Applies transforms to point sets, ``p' = R p + t``.

    T: [..., 4, 4], points: [..., N, 3] (batch dims broadcast) -> [..., N, 3]

    Example:
        >>> transform_points(make_pose(torch.eye(3), torch.tensor([0.0, 0.0, 1.0])), torch.zeros(2, 3))
        tensor([[0., 0., 1.],
                [0., 0., 1.]])
    """
    R, t = split_pose(T)
    points = _t(points)
    _check_last(points, (3,), "points", "transform_points")
    if points.dim() < 2:
        raise GeometryError(
            f"transform_points: points has shape {tuple(points.shape)}, expected [..., N, 3]; "
            "use points[None] for a single point"
        )
    return points @ R.transpose(-1, -2) + t[..., None, :]


# ----------------------------------------------------------------------------------------------
# quaternions (w, x, y, z)
# ----------------------------------------------------------------------------------------------


def quat_to_matrix(q_wxyz) -> torch.Tensor:
    """Rotation matrix of a quaternion in ``w, x, y, z`` order; the quaternion is normalised first.

    q_wxyz: [..., 4] -> R: [..., 3, 3]. Raises GeometryError for a zero or non-finite quaternion.

    Example:
        >>> quat_to_matrix(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
    """
    q = _t(q_wxyz)
    _check_last(q, (4,), "q_wxyz", "quat_to_matrix")
    norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    if not bool(torch.isfinite(norm).all() and (norm > 0).all()):
        raise GeometryError(
            "quat_to_matrix: q_wxyz contains a zero or non-finite quaternion; "
            "pass unit (or at least non-zero, finite) quaternions in w, x, y, z order"
        )
    w, x, y, z = (q / norm).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(*q.shape[:-1], 3, 3)


def matrix_to_quat(R) -> torch.Tensor:
    """Unit quaternion (``w, x, y, z``, with ``w >= 0``) of a rotation matrix.

    R: [..., 3, 3] -> [..., 4]. Uses whichever of w, x, y, z is largest as the pivot
    (Shepperd's method) so that the result is accurate for every rotation; differentiable.

    Example:
        >>> matrix_to_quat(torch.eye(3))
        tensor([1., 0., 0., 0.])
    """
    R = _t(R)
    _check_last(R, (3, 3), "R", "matrix_to_quat")
    r = R.reshape(*R.shape[:-2], 9)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = r.unbind(-1)
    # 4 w^2, 4 x^2, 4 y^2, 4 z^2 on SO(3); they sum to 4, so the largest is >= 1.
    v = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22],
        dim=-1,
    )
    # Row i is 4 q_i * q; dividing by 2 sqrt(v_i) = 4 |q_i| gives +-q.
    cands = torch.stack(
        [
            torch.stack([v[..., 0], m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, v[..., 1], m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, v[..., 2], m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, v[..., 3]], dim=-1),
        ],
        dim=-2,
    )
    # Unselected rows may have v_i <= 0: the clamp keeps their sqrt (and its gradient) finite.
    cands = cands / (2 * torch.sqrt(v.clamp_min(0.1)))[..., None]
    idx = v.argmax(-1)
    q = torch.gather(cands, -2, idx[..., None, None].expand(*cands.shape[:-2], 1, 4)).squeeze(-2)
    q = torch.where(q[..., :1] < 0, -q, q)
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)


def quat_wxyz_to_xyzw(q):
    """Reorders ``w, x, y, z`` (core, 3DGS) to ``x, y, z, w`` (ROS messages, scipy).

    q: [..., 4] -> [..., 4]. The only place this conversion lives.

    Example:
        >>> quat_wxyz_to_xyzw(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        tensor([2., 3., 4., 1.])
    """
    q = _t(q)
    _check_last(q, (4,), "q", "quat_wxyz_to_xyzw")
    return torch.cat([q[..., 1:], q[..., :1]], dim=-1)


def quat_xyzw_to_wxyz(q):
    """Reorders ``x, y, z, w`` (ROS messages, scipy) to ``w, x, y, z`` (core, 3DGS).

    q: [..., 4] -> [..., 4]

    Example:
        >>> quat_xyzw_to_wxyz(torch.tensor([2.0, 3.0, 4.0, 1.0]))
        tensor([1., 2., 3., 4.])
    """
    q = _t(q)
    _check_last(q, (4,), "q", "quat_xyzw_to_wxyz")
    return torch.cat([q[..., 3:], q[..., :3]], dim=-1)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def check_rotation(R, name: str, tol: float = 1e-4) -> torch.Tensor:
    """Raises GeometryError unless every matrix in ``R`` is a rotation (orthonormal, det +1).

    R: [..., 3, 3]; ``name`` is how the message refers to the input (e.g. "scene_gt.json cam_R_m2c").
    ``tol`` bounds ``max |R R^T - I|``; the default suits float32. Returns ``R`` as a tensor.

    Example:
        >>> R = check_rotation(np.eye(3), "R_init")
    """
    R = _t(R)
    if R.dim() < 2 or tuple(R.shape[-2:]) != (3, 3):
        raise GeometryError(
            f"{name} has shape {tuple(R.shape)}, expected [..., 3, 3]; pass 3x3 rotation matrices"
        )
    if not bool(torch.isfinite(R).all()):
        raise GeometryError(f"{name} contains NaN or inf; pass a finite rotation matrix")
    Rd = R.detach().to(torch.float64)
    orth = (Rd @ Rd.transpose(-1, -2) - torch.eye(3, dtype=torch.float64, device=R.device)).abs()
    orth_err = orth.amax(dim=(-2, -1))
    det = torch.linalg.det(Rd)
    bad = (orth_err > tol) | (det <= 0)
    if bool(bad.any()):
        # Report the worst offender.
        i = int(torch.argmax(torch.where(bad, orth_err + (det <= 0), -1.0).reshape(-1)))
        e, d = float(orth_err.reshape(-1)[i]), float(det.reshape(-1)[i])
        index = [int(j) for j in np.unravel_index(i, tuple(bad.shape))]
        where = f" (batch element {index})" if bad.dim() else ""
        raise GeometryError(
            f"{name} is not a rotation matrix{where}: |R R^T - I| = {e:.3g}, det = {d:.6g}; "
            f"pass an orthonormal matrix with det +1 (or call orthonormalize)"
        )
    return R


def orthonormalize(R) -> torch.Tensor:
    """Nearest rotation matrix (Frobenius norm) via SVD: ``U diag(1, 1, det(U V^T)) V^T``.

    R: [..., 3, 3] -> [..., 3, 3]. Meant for cleaning up data (BOP ground truth is off by up to
    5e-3); not for back-propagation (SVD gradients are unstable for near-rotations, whose singular
    values are all ~1).

    Example:
        >>> R = orthonormalize(torch.eye(3) + 1e-3 * torch.randn(3, 3))
    """
    R = _t(R)
    _check_last(R, (3, 3), "R", "orthonormalize")
    if not bool(torch.isfinite(R).all()):
        raise GeometryError("orthonormalize: R contains NaN or inf; pass a finite 3x3 matrix")
    U, _, Vh = torch.linalg.svd(R)
    # Flip the last singular direction where U V^T would be a reflection.
    d = torch.sign(torch.linalg.det(U @ Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    S = torch.ones(*R.shape[:-1], dtype=R.dtype, device=R.device)
    S[..., 2] = d
    return (U * S[..., None, :]) @ Vh
