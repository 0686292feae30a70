"""Settings of the reconstruction stage (:mod:`gs2pose_ros.reconstruct`), apart from it so that the
command line can show their defaults without importing torch."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gs2pose_ros.errors import ConfigError


@dataclass(frozen=True)
class ReconstructionConfig:
    """Settings of :func:`build_model_from_scene` (and :func:`build_model_from_mesh`).

    Lengths relative to the object are in units of its diameter ("diam."); learning rates of the
    means are in diameters per step. The defaults build a synthetic object's model in a few
    minutes on two CPU cores (docs/reconstruction.md).
    """

    #: Optimisation steps (one view each); 3000 cost ~210 s of one core on printed_box.
    iterations: int = 3000
    #: Side of the square training crops, pixels (tracking renders at similar sizes).
    crop_size: int = 128
    #: Side of the evaluation crops, pixels; 0 = ``crop_size``.
    eval_crop_size: int = 0
    #: Margin of a crop around the silhouette's bounding box, fraction of its longer side.
    crop_padding: float = 0.15
    #: Spherical-harmonics degree of the colours (0..3); small keeps rendering fast.
    sh_degree: int = 1
    #: Hard cap on the number of Gaussians (densification stops there).
    max_gaussians: int = 20000
    #: About how many Gaussians the initialisation makes.
    init_gaussians: int = 10000
    #: Initial scale: this fraction of the mean distance to the 3 nearest initial points.
    init_scale: float = 0.6
    #: Initial opacity.
    init_opacity: float = 0.7
    #: Training-view PSNR/SSIM of the summary uses at most this many views, evenly spread.
    eval_max_train_views: int = 12
    #: Hold out every k-th view for evaluation (0: train on all, evaluate on the training views).
    holdout_every: int = 0
    #: Use at most this many training views, evenly spread (0: all).
    max_views: int = 0
    #: Views with fewer visible object pixels (full resolution) are skipped.
    min_visible_pixels: int = 100
    #: Voxels per side of the visual-hull grid.
    hull_resolution: int = 64
    #: Adam learning rate of the means, diam. per step, decayed exponentially to
    #: ``lr_means * lr_means_final`` at the last iteration.
    lr_means: float = 2e-3
    lr_means_final: float = 0.05
    #: The other learning rates (SH, opacity, scales, quaternions) are constant until
    #: ``lr_decay_from`` x ``iterations``, then decay exponentially to ``lr_final`` times their
    #: value at the last iteration (1 = no decay): with one view per step, a constant rate leaves
    #: the colours jittering from view to view.
    lr_decay_from: float = 0.7
    lr_final: float = 0.1
    #: Adam learning rates of the SH DC term (the higher bands get 1/20 of it), opacity logits,
    #: log-scales and quaternions (3DGS's values, a little higher for the short schedule).
    lr_sh: float = 0.01
    lr_opacity: float = 0.05
    lr_scales: float = 0.01
    lr_quats: float = 0.002
    #: The higher SH bands learn at this fraction of ``lr_sh`` (3DGS: 1/20, too slow for a short
    #: schedule: 0.2 gave +2 dB held-out on printed_box with 2000 iterations, docs/reconstruction.md).
    lr_sh_rest_factor: float = 0.2
    #: Weight of (1 - SSIM) in the colour loss (GS2Pose / 3DGS: 0.2).
    lambda_ssim: float = 0.2
    #: Weight of the alpha-vs-silhouette L1.
    lambda_mask: float = 0.3
    #: Weight of the depth L1 (metres / diameter), where the view has depth.
    lambda_depth: float = 0.3
    #: Weight of the isotropy regulariser on the log-scales.
    lambda_iso: float = 0.01
    #: Densification schedule (iterations); ``densify_until`` as a fraction of ``iterations``.
    densify_from: int = 100
    densify_every: int = 100
    densify_until: float = 0.7
    #: Mean view-space positional gradient above which a Gaussian densifies: the gradient of the
    #: per-pixel mean loss w.r.t. its projected centre (crop pixels), times the crop's pixel count
    #: (so it does not depend on the crop size). 0.15 densified about the top 5 % early on; 0.1
    #: (with 3000 iterations) fills the 20000 cap on printed_box (docs/reconstruction.md).
    densify_grad_threshold: float = 0.1
    #: The first ``coarse_fraction`` of the iterations render at half the crop size (4x cheaper).
    coarse_fraction: float = 0.5
    #: Gaussians with a largest scale below this (diam.) are cloned, above it split.
    clone_max_scale: float = 0.01
    #: Pruning: opacity below this, or largest scale above ``prune_scale`` diam.
    prune_opacity: float = 0.01
    prune_scale: float = 0.1
    #: Composite renders and targets over a random colour each step (else black).
    random_background: bool = True
    #: Seed of every random choice (view order, backgrounds, samples).
    seed: int = 0
    #: Torch device ("cpu", "cuda", "cuda:1"...). CUDA uses the gsplat backend when installed.
    device: str = "cpu"

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"ReconstructionConfig: {msg}")

        need(self.iterations >= 0, f"iterations must be >= 0, got {self.iterations}")
        need(16 <= self.crop_size <= 1024, f"crop_size must be in 16..1024, got {self.crop_size}")
        need(self.eval_crop_size == 0 or 16 <= self.eval_crop_size <= 2048,
             f"eval_crop_size must be 0 or in 16..2048, got {self.eval_crop_size}")
        need(0 <= self.sh_degree <= 3, f"sh_degree must be in 0..3, got {self.sh_degree}")
        need(self.max_gaussians >= 1, f"max_gaussians must be >= 1, got {self.max_gaussians}")
        need(self.init_gaussians >= 1, f"init_gaussians must be >= 1, got {self.init_gaussians}")
        need(self.init_scale > 0, f"init_scale must be > 0, got {self.init_scale}")
        need(0 < self.init_opacity < 1, f"init_opacity must be in (0, 1), got {self.init_opacity}")
        need(self.eval_max_train_views >= 0, "eval_max_train_views must be >= 0")
        need(self.holdout_every == 0 or self.holdout_every >= 2,
             f"holdout_every must be 0 (none) or >= 2, got {self.holdout_every}")
        need(self.max_views >= 0, f"max_views must be >= 0, got {self.max_views}")
        need(8 <= self.hull_resolution <= 256,
             f"hull_resolution must be in 8..256, got {self.hull_resolution}")
        need(0.0 <= self.lambda_ssim <= 1.0, f"lambda_ssim must be in [0, 1], got {self.lambda_ssim}")
        for name in ("lambda_mask", "lambda_depth", "lambda_iso", "crop_padding", "lr_means",
                     "lr_sh", "lr_opacity", "lr_scales", "lr_quats", "densify_grad_threshold"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        need(0 < self.lr_means_final <= 1, f"lr_means_final must be in (0, 1]")
        need(0 < self.lr_final <= 1, f"lr_final must be in (0, 1], got {self.lr_final}")
        need(0.0 <= self.lr_decay_from <= 1.0, f"lr_decay_from must be in [0, 1]")
        need(self.densify_every >= 1, f"densify_every must be >= 1, got {self.densify_every}")
        need(0.0 <= self.densify_until <= 1.0, f"densify_until must be in [0, 1]")
        need(0.0 <= self.coarse_fraction <= 1.0, f"coarse_fraction must be in [0, 1]")
        import torch  # here, not at module level: `gs2pose --help` reads the defaults without torch

        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"ReconstructionConfig: device {self.device!r} is not a torch device "
                              f"({exc}); use 'cpu' or 'cuda'") from None

    def replace(self, **changes) -> "ReconstructionConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def eval_size(self) -> int:
        return self.eval_crop_size or self.crop_size
