"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch, on CPU and GPU alike.

The sampling uses ``F.grid_sample`` (bilinear, zero padding, ``align_corners=False``), which is what the
CUDA kernel of the official implementation computes; no compiled extension is needed. Parameter names
follow the official ``MSDeformAttn``: ``sampling_offsets``, ``attention_weights``, ``value_proj``,
``output_proj``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn(value: torch.Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor) -> torch.Tensor:
    """Attention-weighted sum of bilinear samples taken from several feature levels.

    Args:
        value: (N, S, M, D) values of all levels flattened level after level (S = sum of H_l * W_l),
            M heads of D channels.
        spatial_shapes: (H_l, W_l) of each of the L levels, in the order of ``value``.
        sampling_locations: (N, Q, M, L, P, 2) sampling points as (x, y) in [0, 1] of each level (0 and 1 are
            the outer edges of the border pixels).
        attention_weights: (N, Q, M, L, P) weights (softmax over L * P per head).

    Returns:
        (N, Q, M * D) the attended values.
    """
    n, _, m, d = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    sizes = [h * w for h, w in spatial_shapes]
    value_list = value.split(sizes, dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    # (N, Q, M, L, P) -> (L, N*M, 1, Q, P), contiguous per level for a fast multiply
    weights = attention_weights.permute(3, 0, 2, 1, 4).reshape(levels, n * m, 1, q, points)
    weights = weights.to(value.dtype).contiguous()
    out = value.new_zeros(n * m, d, q)
    for lvl, (h, w) in enumerate(spatial_shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        value_l = value_list[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Q, M, P, 2) -> (N*M, Q, P, 2)
        grid_l = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled = F.grid_sample(value_l, grid_l.to(value_l.dtype), mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (N*M, D, Q, P)
        # accumulate level by level: never holds the (N*M, D, Q, L*P) samples of all levels at once
        out += (sampled * weights[lvl]).sum(-1)
    return out.view(n, m * d, q).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module with the official parameter names.

    Args:
        d_model: channels of queries and values.
        n_levels: feature levels.
        n_heads: attention heads.
        n_points: sampling points per head and level.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: offsets start on a ring of directions around the reference."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes: list[tuple[int, int]], padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from each query around its reference point(s) in every level.

        Args:
            query: (N, Q, C).
            reference_points: (N, Q, L, 2) as (x, y) in [0, 1], or (N, Q, L, 4) boxes (cx, cy, w, h).
            input_flatten: (N, S, C) values of all levels.
            spatial_shapes: (H_l, W_l) per level.
            padding_mask: (N, S) True on padding.

        Returns:
            (N, Q, C).
        """
        n, q, _ = query.shape
        s = input_flatten.shape[1]
        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, q, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, q, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, q, self.n_heads, self.n_levels, self.n_points)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: (W_l, H_l) normalise them
            normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=offsets.dtype,
                                      device=offsets.device)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points must end in 2 or 4, got {tuple(reference_points.shape)}")
        # The sampling runs in float32 also under autocast, as the official kernel does: in half precision the
        # locations would be off by up to a tenth of a pixel on the finest level.
        exact = torch.promote_types(value.dtype, torch.float32)  # float32, or float64 for a double model
        with torch.autocast(device_type=value.device.type, enabled=False):
            out = ms_deform_attn(value.to(exact), spatial_shapes, locations.to(exact), weights.to(exact))
        return self.output_proj(out.to(value.dtype))
