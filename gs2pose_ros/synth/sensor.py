"""Sensor models turning clean renders into RealSense-like colour and depth images.

Depth (metres, 0 = no reading), in this order:

1. axial noise: ``z + N(0, sigma(z))`` with ``sigma(z) = sigma_a + sigma_b z^2`` (stereo depth
   error grows with the square of the distance; the defaults give 0.9 mm at 0.5 m, 2 mm at 1 m);
2. dropout (set to 0): at depth discontinuities (a horizontal or vertical second difference of
   the clean depth above ``edge_jump + edge_jump_rel z``, or a neighbouring miss; probability
   ``edge_dropout``), on dark surfaces (albedo luminance
   below ``dark_threshold``, probability rising to ``dark_dropout`` at black), at grazing angles
   (|n.v| below ``grazing_cos``, probability rising to 1 at 90 degrees), random speckles
   (``speckle_dropout``), and outside ``[min_range, max_range]``;
3. quantisation to the depth PNG happens in the BOP writer (``depth_scale`` mm per unit).

Colour (float linear [0, 1] in, uint8 out): vignetting ``1 - vignetting * r^2`` (r = 1 at the
image corner), shot noise (Poisson with ``full_well`` electrons at white, i.e. variance ``c /
full_well``), Gaussian read noise ``read_sigma`` (in [0, 1] units), then clipping and rounding.
Masks and labels always come from the clean render, never from these images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gs2pose_ros.errors import ConfigError


@dataclass(frozen=True)
class DepthNoise:
    """Depth sensor model (metres). ``enabled=False`` gives the clean depth."""

    enabled: bool = True
    sigma_a: float = 0.0005  #: constant part of the axial noise sigma (m)
    sigma_b: float = 0.0015  #: quadratic part: sigma += sigma_b * z^2 (1/m)
    edge_jump: float = 0.01  #: a depth second difference above edge_jump + edge_jump_rel * z (m) ...
    edge_jump_rel: float = 0.02  #: ... marks a discontinuity
    edge_dropout: float = 0.6  #: probability of losing a discontinuity pixel
    dark_threshold: float = 0.08  #: albedo luminance below which depth starts dropping out
    dark_dropout: float = 0.9  #: dropout probability on a black surface
    grazing_cos: float = 0.17  #: |n.v| below this (about 80 degrees) starts dropping out
    speckle_dropout: float = 0.003  #: random missing pixels everywhere
    min_range: float = 0.1  #: no reading closer than this (m)
    max_range: float = 4.0  #: no reading beyond this (m)

    def __post_init__(self) -> None:
        for name in ("sigma_a", "sigma_b", "edge_jump", "dark_threshold", "grazing_cos", "min_range"):
            if getattr(self, name) < 0:
                raise ConfigError(f"depth noise {name} = {getattr(self, name)} must be >= 0")
        for name in ("edge_dropout", "dark_dropout", "speckle_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"depth noise {name} = {getattr(self, name)} must be a probability in [0, 1]")
        if self.max_range <= self.min_range:
            raise ConfigError(f"depth noise max_range {self.max_range} must exceed min_range {self.min_range}")

    def sigma(self, z: np.ndarray) -> np.ndarray:
        """Axial noise standard deviation (m) at depth ``z`` (m)."""
        return self.sigma_a + self.sigma_b * np.square(z)


@dataclass(frozen=True)
class ColorNoise:
    """Colour sensor model. ``enabled=False`` gives the clean (still vignetted) image."""

    enabled: bool = True
    read_sigma: float = 0.008  #: Gaussian read noise, in [0, 1] units (2 of 255)
    full_well: float = 2000.0  #: electrons at white: shot noise variance = c / full_well
    vignetting: float = 0.2  #: relative darkening at the image corners (0 = none)

    def __post_init__(self) -> None:
        if self.read_sigma < 0 or self.full_well <= 0 or not 0 <= self.vignetting < 1:
            raise ConfigError(
                f"colour noise: read_sigma {self.read_sigma} must be >= 0, full_well {self.full_well} > 0, "
                f"vignetting {self.vignetting} in [0, 1)"
            )


def _dilate3(m: np.ndarray) -> np.ndarray:
    out = m.copy()
    out[1:, :] |= m[:-1, :]
    out[:-1, :] |= m[1:, :]
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    return out


def depth_discontinuities(depth: np.ndarray, jump: float, jump_rel: float = 0.0) -> np.ndarray:
    """Bool [H, W]: valid pixels at a depth discontinuity: a second difference (horizontal or
    vertical, so slanted planes do not count) above ``jump + jump_rel * z``, or next to a miss."""
    d = np.asarray(depth, dtype=np.float64)
    valid = d > 0
    pad = np.pad(d, 1, mode="edge")
    pv = np.pad(valid, 1, mode="edge")
    c = pad[1:-1, 1:-1]
    thr = jump + jump_rel * d
    edge = np.zeros(d.shape, dtype=bool)
    for a, b, va, vb in ((pad[1:-1, :-2], pad[1:-1, 2:], pv[1:-1, :-2], pv[1:-1, 2:]),
                         (pad[:-2, 1:-1], pad[2:, 1:-1], pv[:-2, 1:-1], pv[2:, 1:-1])):
        edge |= np.abs(a + b - 2.0 * c) > thr
        edge |= ~va | ~vb
    return edge & valid


def apply_depth_noise(depth: np.ndarray, albedo: np.ndarray, cos_view: np.ndarray, model: DepthNoise,
                      rng: np.random.Generator) -> np.ndarray:
    """Noisy depth [H, W] float32 from the clean depth (m, 0 = miss), the albedo [H, W, 3] and
    |n.v| [H, W] of the hit surfaces. Draws from ``rng`` even when disabled parts are off, so
    the random stream does not depend on the data."""
    depth = np.asarray(depth, dtype=np.float64)
    H, W = depth.shape
    noise = rng.standard_normal((H, W), dtype=np.float32)
    u = rng.random((4, H, W), dtype=np.float32)
    if not model.enabled:
        return depth.astype(np.float32)
    valid = depth > 0
    out = np.where(valid, depth + noise * model.sigma(depth), 0.0)
    drop = depth_discontinuities(depth, model.edge_jump, model.edge_jump_rel) & (u[0] < model.edge_dropout)
    lum = albedo @ np.array([0.299, 0.587, 0.114])
    if model.dark_threshold > 0:
        p_dark = np.clip(1.0 - lum / model.dark_threshold, 0.0, 1.0) * model.dark_dropout
        drop |= u[1] < p_dark
    if model.grazing_cos > 0:
        p_graz = np.clip(1.0 - cos_view / model.grazing_cos, 0.0, 1.0)
        drop |= u[2] < p_graz
    drop |= u[3] < model.speckle_dropout
    drop |= (depth < model.min_range) | (depth > model.max_range)
    out[drop | ~valid] = 0.0
    return out.astype(np.float32)


def vignette(width: int, height: int, strength: float) -> np.ndarray:
    """Gain [H, W]: ``1 - strength * r^2``, r = distance to the centre / half-diagonal."""
    x = (np.arange(width) + 0.5 - width / 2) / (width / 2)
    y = (np.arange(height) + 0.5 - height / 2) / (height / 2)
    r2 = (x[None, :] ** 2 + y[:, None] ** 2) / 2.0
    return 1.0 - strength * r2


def apply_color_noise(color: np.ndarray, model: ColorNoise, rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB [H, W, 3] from a linear float image [H, W, 3]."""
    H, W = color.shape[:2]
    c = np.clip(color * vignette(W, H, model.vignetting)[:, :, None], 0.0, 1.0)
    noise = rng.standard_normal((2, H, W, 3), dtype=np.float32)
    if model.enabled:
        c = c + noise[0] * np.sqrt(c / model.full_well) + noise[1] * model.read_sigma
    return np.clip(np.round(c * 255.0), 0, 255).astype(np.uint8)
