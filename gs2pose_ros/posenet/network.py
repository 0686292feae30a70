"""Pose-Net: a small U-Net that maps an RGB crop to a NOCS image, an object mask and a confidence.

The architecture follows the ingredients of GS2Pose's Pose-Net (docs: /work/shared/docs/method.md,
"Details seen in the public GS2Pose code"), written from scratch in plain PyTorch and scaled down so
that it trains on a CPU:

* a residual encoder (basic blocks, GroupNorm so that batch size 1 at inference and small training
  batches behave alike) producing features at 1/2, 1/4, 1/8 and 1/16 of the input;
* on the early (1/4) features a small ASPP (1x1, 3x3 dilation 2, 3x3 dilation 4) followed by
  *parallel* polarized self-attention (channel-only and spatial-only branches, summed);
* on the deep (1/16) features pooling context: a pyramid pooling module (bins 1, 2, 4) and strip
  pooling (1xW and Hx1 averages), fused by a 1x1 convolution;
* a decoder of transposed convolutions with skip connections back to full resolution;
* heads: NOCS (3 channels, sigmoid, in [0, 1]), mask (1 logit) and, optionally, a per-pixel
  confidence (1 logit, trained to predict whether the pixel's NOCS is accurate).

The sizes live in :class:`PoseNetConfig` (frozen; saved as JSON beside the weights, see
:mod:`gs2pose_ros.posenet.io`). ``PoseNetConfig.cpu()`` is the CPU-friendly default (128 px input,
narrow widths); ``PoseNetConfig.gpu()`` the CUDA default (256 px, wider).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gs2pose_ros.errors import ConfigError

__all__ = ["PoseNetConfig", "PoseNet", "PolarizedSelfAttention", "SmallASPP", "PoolingContext"]


@dataclass(frozen=True)
class PoseNetConfig:
    """Sizes of a :class:`PoseNet`.

    input_size: side of the square input crop, pixels (a multiple of 16).
    widths: channels at 1/2, 1/4, 1/8 and 1/16 of the input (4 values).
    blocks: residual blocks per encoder stage (4 values).
    aspp_channels: channels of each ASPP branch on the 1/4 features.
    context_channels: channels of the pooling-context branches on the 1/16 features.
    decoder_widths: channels of the decoder at 1/8, 1/4, 1/2 and full resolution (4 values).
    confidence_head: predict a per-pixel confidence logit as well.
    groups: GroupNorm groups (every width must be divisible by it).
    output_stride: 1 = heads at full resolution (the last decoder stage runs), 2 = heads on the 1/2
        decoder features, upsampled bilinearly (about half the compute; the CPU default).
    """

    input_size: int = 128
    widths: tuple = (16, 32, 64, 96)
    blocks: tuple = (1, 1, 2, 1)
    aspp_channels: int = 16
    context_channels: int = 32
    decoder_widths: tuple = (64, 32, 24, 16)
    confidence_head: bool = True
    groups: int = 8
    output_stride: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        object.__setattr__(self, "decoder_widths", tuple(int(w) for w in self.decoder_widths))
        if self.output_stride not in (1, 2):
            raise ConfigError(f"PoseNetConfig.output_stride = {self.output_stride}: must be 1 or 2")
        if self.input_size <= 0 or self.input_size % 16:
            raise ConfigError(f"PoseNetConfig.input_size = {self.input_size}: must be a positive multiple of 16")
        for name in ("widths", "blocks", "decoder_widths"):
            v = getattr(self, name)
            if len(v) != 4 or min(v) <= 0:
                raise ConfigError(f"PoseNetConfig.{name} = {v}: expected 4 positive integers")
        chans = list(self.widths) + list(self.decoder_widths) + [self.aspp_channels, self.context_channels]
        bad = [c for c in chans if c % self.groups]
        if bad:
            raise ConfigError(f"PoseNetConfig: channel counts {bad} are not divisible by groups = {self.groups}")

    @classmethod
    def cpu(cls) -> "PoseNetConfig":
        """The CPU-friendly default: 128 px input, narrow widths, heads at 1/2 resolution (0.56 M parameters)."""
        return cls()

    @classmethod
    def gpu(cls) -> "PoseNetConfig":
        """The CUDA default: 256 px input, wider features, full-resolution heads (4.3 M parameters)."""
        return cls(input_size=256, widths=(32, 64, 128, 256), blocks=(2, 2, 3, 2), aspp_channels=32,
                   context_channels=64, decoder_widths=(128, 64, 48, 32), confidence_head=True, groups=16,
                   output_stride=1)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "PoseNetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"PoseNetConfig: unknown keys {unknown}; expected a subset of {sorted(names)}")
        return cls(**d)


def _norm(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, c), c)


class ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 8):
        pad = dilation * (k // 2)
        super().__init__(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False),
                         _norm(cout, groups), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """Basic residual block (two 3x3 convolutions); a strided 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(cout, groups)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(cout, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.n1(self.conv1(x)), inplace=True)
        y = self.n2(self.conv2(y))
        return F.relu(y + (x if self.proj is None else self.proj(x)), inplace=True)


class SmallASPP(nn.Module):
    """Atrous spatial pyramid pooling with three branches: 1x1, 3x3 rate 2, 3x3 rate 4; 1x1 fusion."""

    def __init__(self, cin: int, branch: int, cout: int, groups: int):
        super().__init__()
        self.b1 = ConvNormAct(cin, branch, 1, groups=groups)
        self.b2 = ConvNormAct(cin, branch, 3, dilation=2, groups=groups)
        self.b4 = ConvNormAct(cin, branch, 3, dilation=4, groups=groups)
        self.fuse = ConvNormAct(3 * branch, cout, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.b1(x), self.b2(x), self.b4(x)], dim=1))


class PolarizedSelfAttention(nn.Module):
    """Polarized self-attention, parallel layout: ``x * A_channel(x) + x * A_spatial(x)``.

    Channel-only branch: a 1-channel query softmax-normalised over the pixels pools a C/2 value map
    into one vector, expanded back to C channels (LayerNorm, sigmoid) -> a weight per channel.
    Spatial-only branch: a globally pooled C/2 query, softmax over channels, is dotted with the C/2
    value map at every pixel (sigmoid) -> a weight per pixel. Both keep high internal resolution
    (no spatial pooling of the values in the channel branch, no channel squeeze below C/2).
    """

    def __init__(self, c: int):
        super().__init__()
        h = max(c // 2, 1)
        self.ch_v = nn.Conv2d(c, h, 1)
        self.ch_q = nn.Conv2d(c, 1, 1)
        self.ch_up = nn.Conv2d(h, c, 1)
        self.ch_ln = nn.LayerNorm(c)
        self.sp_v = nn.Conv2d(c, h, 1)
        self.sp_q = nn.Conv2d(c, h, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        # channel-only
        v = self.ch_v(x).flatten(2)  # [B, C/2, HW]
        q = torch.softmax(self.ch_q(x).flatten(2), dim=-1)  # [B, 1, HW]
        z = torch.bmm(v, q.transpose(1, 2)).unsqueeze(-1)  # [B, C/2, 1, 1]
        wc = torch.sigmoid(self.ch_ln(self.ch_up(z).flatten(1))).view(b, c, 1, 1)
        # spatial-only
        qs = torch.softmax(self.sp_q(x).mean(dim=(2, 3)), dim=-1).unsqueeze(1)  # [B, 1, C/2]
        vs = self.sp_v(x).flatten(2)  # [B, C/2, HW]
        ws = torch.sigmoid(torch.bmm(qs, vs)).view(b, 1, hh, ww)
        return x * wc + x * ws


class PoolingContext(nn.Module):
    """Pyramid pooling (bins 1, 2, 4) and strip pooling (1xW, Hx1) on deep features, fused by 1x1."""

    def __init__(self, c: int, cc: int, groups: int, bins=(1, 2, 4)):
        super().__init__()
        self.bins = tuple(bins)
        self.ppm = nn.ModuleList([ConvNormAct(c, cc, 1, groups=groups) for _ in self.bins])
        self.strip_h = nn.Sequential(nn.Conv2d(c, cc, (1, 3), padding=(0, 1), bias=False), _norm(cc, groups))
        self.strip_v = nn.Sequential(nn.Conv2d(c, cc, (3, 1), padding=(1, 0), bias=False), _norm(cc, groups))
        self.strip_fuse = ConvNormAct(cc, cc, 3, groups=groups)
        self.fuse = ConvNormAct(c + cc * (len(self.bins) + 1), c, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        feats = [x]
        for b, conv in zip(self.bins, self.ppm):
            y = conv(F.adaptive_avg_pool2d(x, b))
            feats.append(F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False))
        sh = self.strip_h(F.adaptive_avg_pool2d(x, (1, w))).expand(-1, -1, h, w)  # one value per column
        sv = self.strip_v(F.adaptive_avg_pool2d(x, (h, 1))).expand(-1, -1, h, w)  # one value per row
        feats.append(self.strip_fuse(F.relu(sh + sv)))
        return self.fuse(torch.cat(feats, dim=1))


class UpBlock(nn.Module):
    """Transposed-convolution x2 upsampling, concatenation with the skip, two 3x3 convolutions."""

    def __init__(self, cin: int, cskip: int, cout: int, groups: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.conv = nn.Sequential(ConvNormAct(cout + cskip, cout, 3, groups=groups),
                                  ConvNormAct(cout, cout, 3, groups=groups))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class PoseNet(nn.Module):
    """RGB crop ``[B, 3, S, S]`` in [0, 1] -> dict of ``nocs`` [B, 3, S, S] in [0, 1],
    ``mask_logits`` [B, 1, S, S] and (if configured) ``conf_logits`` [B, 1, S, S].

    The input is normalised inside (per-channel mean/std of natural images), so callers pass plain
    [0, 1] RGB.

    Example:
        >>> net = PoseNet(PoseNetConfig.cpu()).eval()
        >>> out = net(torch.rand(1, 3, 128, 128))
        >>> tuple(out["nocs"].shape), tuple(out["mask_logits"].shape)
        ((1, 3, 128, 128), (1, 1, 128, 128))
    """

    def __init__(self, config: PoseNetConfig | None = None):
        super().__init__()
        cfg = config or PoseNetConfig.cpu()
        self.config = cfg
        g = cfg.groups
        w1, w2, w3, w4 = cfg.widths
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.stem = ConvNormAct(3, w1, 3, stride=2, groups=g)  # 1/2
        self.enc1 = nn.Sequential(*[ResBlock(w1, w1, 1, g) for _ in range(cfg.blocks[0])])  # 1/2
        self.enc2 = nn.Sequential(ResBlock(w1, w2, 2, g), *[ResBlock(w2, w2, 1, g) for _ in range(cfg.blocks[1] - 1)])
        self.enc3 = nn.Sequential(ResBlock(w2, w3, 2, g), *[ResBlock(w3, w3, 1, g) for _ in range(cfg.blocks[2] - 1)])
        self.enc4 = nn.Sequential(ResBlock(w3, w4, 2, g), *[ResBlock(w4, w4, 1, g) for _ in range(cfg.blocks[3] - 1)])
        self.aspp = SmallASPP(w2, cfg.aspp_channels, w2, g)
        self.psa = PolarizedSelfAttention(w2)
        self.context = PoolingContext(w4, cfg.context_channels, g)
        d1, d2, d3, d4 = cfg.decoder_widths
        self.up1 = UpBlock(w4, w3, d1, g)  # 1/8
        self.up2 = UpBlock(d1, w2, d2, g)  # 1/4
        self.up3 = UpBlock(d2, w1, d3, g)  # 1/2
        dh = d4
        if cfg.output_stride == 1:
            self.up4 = UpBlock(d3, 0, d4, g)  # 1/1
        else:
            self.up4 = None
            dh = d3
        self.head_nocs = nn.Conv2d(dh, 3, 1)
        self.head_mask = nn.Conv2d(dh, 1, 1)
        self.head_conf = nn.Conv2d(dh, 1, 1) if cfg.confidence_head else None

    def forward(self, x: torch.Tensor) -> dict:
        s = self.config.input_size
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"PoseNet: expected input [B, 3, H, W] with H, W multiples of 16 "
                             f"(trained at {s}x{s}), got {tuple(x.shape)}")
        x = (x - self.mean) / self.std
        f1 = self.enc1(self.stem(x))  # 1/2
        f2 = self.enc2(f1)  # 1/4 (early features)
        f2 = self.psa(self.aspp(f2)) + f2
        f3 = self.enc3(f2)  # 1/8
        f4 = self.context(self.enc4(f3))  # 1/16 (deep features)
        y = self.up1(f4, f3)
        y = self.up2(y, f2)
        y = self.up3(y, f1)
        heads = [self.head_nocs, self.head_mask] + ([self.head_conf] if self.head_conf is not None else [])
        if self.up4 is not None:
            z = torch.cat([h(self.up4(y, None)) for h in heads], dim=1)
        else:
            z = torch.cat([h(y) for h in heads], dim=1)
            z = F.interpolate(z, size=x.shape[-2:], mode="bilinear", align_corners=False)
        out = {"nocs": torch.sigmoid(z[:, :3]), "mask_logits": z[:, 3:4]}
        if self.head_conf is not None:
            out["conf_logits"] = z[:, 4:5]
        return out
