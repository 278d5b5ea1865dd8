"""The ResNet backbone of DPText-DETR with detectron2's parameter names, written in plain PyTorch.

detectron2's ``build_resnet_backbone`` with FrozenBN, ``STRIDE_IN_1X1: False`` (stride on the 3x3 conv) and
outputs res3, res4, res5. Names (below ``backbone.0.backbone.``):

- ``stem.conv1.weight``, ``stem.conv1.norm.{weight,bias,running_mean,running_var}``
- ``res{2..5}.{i}.conv{1,2,3}.weight`` and ``.conv{1,2,3}.norm.*`` as above
- ``res{2..5}.0.shortcut.weight`` and ``.shortcut.norm.*`` (first block of each stage)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all stored as buffers (no num_batches_tracked)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels) - eps)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine map y = x * scale + shift per channel that the frozen statistics amount to."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_shift()
        return x * scale.to(x.dtype)[None, :, None, None] + shift.to(x.dtype)[None, :, None, None]


class ConvNorm(nn.Conv2d):
    """detectron2's ``Conv2d`` with a ``norm`` submodule: a bias-free convolution followed by FrozenBN.

    The frozen norm is folded into the convolution on the fly (weight * scale, bias = shift): one pass over
    the activations instead of three, with the checkpoint's parameters left as they are.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.norm = FrozenBatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.norm.scale_shift()
        weight = self.weight * scale.to(self.weight.dtype)[:, None, None, None]
        return F.conv2d(x, weight.to(x.dtype), shift.to(x.dtype), self.stride, self.padding)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 residual block; a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, bottleneck: int, stride: int) -> None:
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride) if cin != cout or stride != 1 else None
        self.conv1 = ConvNorm(cin, bottleneck, 1)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, stride=stride, padding=1)
        self.conv3 = ConvNorm(bottleneck, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        return F.relu_(out + (x if self.shortcut is None else self.shortcut(x)))


class BasicStem(nn.Module):
    """7x7 stride-2 convolution, ReLU, 3x3 stride-2 max pooling."""

    def __init__(self, cout: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, cout, 7, stride=2, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """ResNet returning the res3, res4 and res5 feature maps (strides 8, 16, 32).

    Args:
        blocks: blocks per stage res2..res5 ((3, 4, 6, 3) is ResNet-50).
        stem_channels: stem output channels (64).
        res2_channels: res2 output channels (256); doubles every stage.
        bottleneck_channels: res2 bottleneck channels (64); doubles every stage.
    """

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), stem_channels: int = 64, res2_channels: int = 256,
                 bottleneck_channels: int = 64) -> None:
        super().__init__()
        self.stem = BasicStem(stem_channels)
        cin = stem_channels
        self.out_channels: list[int] = []
        for s, n in enumerate(blocks):
            cout, mid = res2_channels * 2 ** s, bottleneck_channels * 2 ** s
            stage = [BottleneckBlock(cin if i == 0 else cout, cout, mid, (1 if s == 0 else 2) if i == 0 else 1)
                     for i in range(n)]
            self.add_module(f"res{s + 2}", nn.Sequential(*stage))
            self.out_channels.append(cout)
            cin = cout
        self.out_channels = self.out_channels[1:]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised RGB -> [res3, res4, res5] feature maps."""
        x = self.res2(self.stem(x))
        outs = []
        for name in ("res3", "res4", "res5"):
            x = getattr(self, name)(x)
            outs.append(x)
        return outs
