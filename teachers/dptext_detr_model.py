"""DPText-DETR (ResNet + deformable transformer with polygon point queries) in plain PyTorch.

Released configuration: EPQM (explicit point query modelling) and EFSA (enhanced factorised self-attention)
on, 16 control points, 100 queries, 4 feature levels. Official parameter names (prefix ``dptext_detr.`` in a
checkpoint; ``N`` = decoder or encoder layer, ``K`` = 0..dec_layers-1):

- ``backbone.0.backbone.{stem,res2,res3,res4,res5}.*``: the ResNet (``teachers.dptext_detr_backbone``)
- ``input_proj.{0..3}.{0,1}.{weight,bias}``: 1x1 (3x3 stride 2 for level 3) conv, GroupNorm(32)
- ``ctrl_point_embed.weight``: (16, 256) point content queries
- ``ctrl_point_class.K.{weight,bias}``, ``ctrl_point_coord.K.layers.{0,1,2}.{weight,bias}``: shared heads
- ``bbox_class.{weight,bias}``, ``bbox_coord.layers.{0,1,2}.{weight,bias}``: encoder proposal heads
- ``transformer.level_embed``; ``transformer.enc_output.*``, ``transformer.enc_output_norm.*``
- ``transformer.bbox_class_embed.*``, ``transformer.bbox_embed.layers.*``: aliases of bbox_class/bbox_coord
- ``transformer.encoder.layers.N.self_attn.{sampling_offsets,attention_weights,value_proj,output_proj}.*``
- ``transformer.encoder.layers.N.{norm1,linear1,linear2,norm2}.*``
- ``transformer.decoder.layers.N.attn_cross.*`` (as self_attn), ``.norm_cross.*``
- ``transformer.decoder.layers.N.attn_{intra,inter}.{in_proj_weight,in_proj_bias,out_proj.weight,out_proj.bias}``
- ``transformer.decoder.layers.N.circonv.conv.*``, ``.circonv.norm.{weight,bias,running_mean,running_var,
  num_batches_tracked}``
- ``transformer.decoder.layers.N.{norm_intra,norm_fuse,mlp_fuse,norm_inter,linear1,linear2,norm3}.*``
- ``transformer.decoder.ref_point_head.layers.{0,1}.*``; ``transformer.decoder.ctrl_point_coord.K.*`` (alias)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from teachers.deformable_attention import MSDeformAttn
from teachers.dptext_detr_backbone import ResNet


#: The bounds of each size a checkpoint's ``"config"`` may ask for, ``(least, most)`` or ``(least, most, length)``:
#: a few times the largest published configuration (the released R-50 model: d_model 256, 8 heads, 6 + 6 layers,
#: feed-forward 1024, 100 queries, 16 control points, 4 sampling points, 4 levels; deeper ResNets have up to 36
#: blocks in a stage, ResNeXt bottlenecks up to 256 channels). A config is data read from a checkpoint; these keep
#: it from asking for unbounded memory or time before its tensors are compared with the model.
LIMITS: dict[str, tuple[int, ...]] = {
    "d_model": (32, 2048), "n_heads": (1, 64), "enc_layers": (1, 24), "dec_layers": (1, 24),
    "dim_feedforward": (1, 8192), "num_queries": (1, 1000), "num_ctrl_points": (4, 64), "enc_n_points": (1, 32),
    "dec_n_points": (1, 32), "num_feature_levels": (4, 4), "resnet_blocks": (1, 64, 4), "stem_channels": (1, 512),
    "res2_channels": (1, 2048), "bottleneck_channels": (1, 1024),
}


@dataclass(frozen=True)
class DPTextConfig:
    """Sizes of DPText-DETR; the defaults are the released R-50 polygon models."""

    d_model: int = 256
    n_heads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 1024
    num_queries: int = 100
    num_ctrl_points: int = 16
    enc_n_points: int = 4
    dec_n_points: int = 4
    num_feature_levels: int = 4
    resnet_blocks: tuple[int, ...] = (3, 4, 6, 3)
    stem_channels: int = 64
    res2_channels: int = 256
    bottleneck_channels: int = 64

    @classmethod
    def tiny(cls) -> "DPTextConfig":
        """A few-layer configuration for tests (same structure, every name present)."""
        return cls(d_model=64, n_heads=4, enc_layers=2, dec_layers=2, dim_feedforward=64, num_queries=8,
                   resnet_blocks=(1, 1, 1, 1), stem_channels=8, res2_channels=32, bottleneck_channels=8)


class MLP(nn.Module):
    """Linear layers with ReLU between them (names ``layers.i``)."""

    def __init__(self, din: int, dhidden: int, dout: int, num_layers: int) -> None:
        super().__init__()
        dims = [din] + [dhidden] * (num_layers - 1) + [dout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """logit(x) with x clamped to [eps, 1 - eps], as in the official code."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_embed(coords: torch.Tensor, num_feats: int) -> torch.Tensor:
    """(..., ) coordinates already scaled -> (..., num_feats) interleaved sin/cos, temperature 10000."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="trunc") / num_feats)
    pos = coords[..., None].float() / dim_t
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def mask_position_embedding(mask: torch.Tensor, num_feats: int) -> torch.Tensor:
    """Normalised 2D sine embedding of the valid area: (B, H, W) padding mask -> (B, 2 * num_feats, H, W)."""
    not_mask = ~mask
    y = not_mask.cumsum(1, dtype=torch.float32)
    x = not_mask.cumsum(2, dtype=torch.float32)
    y = (y - 0.5) / (y[:, -1:, :] + 1e-6) * 2 * math.pi
    x = (x - 0.5) / (x[:, :, -1:] + 1e-6) * 2 * math.pi
    return torch.cat((sine_embed(y, num_feats), sine_embed(x, num_feats)), dim=-1).permute(0, 3, 1, 2)


class EncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a ReLU feed-forward block (post-norm)."""

    def __init__(self, cfg: DPTextConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.self_attn = MSDeformAttn(d, cfg.num_feature_levels, cfg.n_heads, cfg.enc_n_points)
        self.norm1 = nn.LayerNorm(d)
        self.linear1 = nn.Linear(d, cfg.dim_feedforward)
        self.linear2 = nn.Linear(cfg.dim_feedforward, d)
        self.norm2 = nn.LayerNorm(d)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                shapes: list[tuple[int, int]], padding_mask: torch.Tensor) -> torch.Tensor:
        src = self.norm1(src + self.self_attn(src + pos, reference_points, src, shapes, padding_mask))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class CirConv(nn.Module):
    """Circular 1D convolution along the polygon's points, BatchNorm, ReLU."""

    def __init__(self, d_model: int, n_adj: int = 4) -> None:
        super().__init__()
        self.n_adj = n_adj
        self.conv = nn.Conv1d(d_model, d_model, kernel_size=2 * n_adj + 1)
        self.norm = nn.BatchNorm1d(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # (B, Q, P, C)
        x = x.flatten(0, 1).transpose(1, 2)  # (B*Q, C, P)
        x = torch.cat([x[..., -self.n_adj:], x, x[..., :self.n_adj]], dim=2)
        return F.relu(self.norm(self.conv(x))).transpose(1, 2).reshape(shape)


class DecoderLayer(nn.Module):
    """EFSA: intra-polygon attention + circular conv, inter-polygon attention, deformable cross-attention, FFN."""

    def __init__(self, cfg: DPTextConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.attn_cross = MSDeformAttn(d, cfg.num_feature_levels, cfg.n_heads, cfg.dec_n_points)
        self.norm_cross = nn.LayerNorm(d)
        self.attn_intra = nn.MultiheadAttention(d, cfg.n_heads)
        self.circonv = CirConv(d)
        self.norm_fuse = nn.LayerNorm(d)
        self.mlp_fuse = nn.Linear(d, d)
        self.norm_intra = nn.LayerNorm(d)
        self.attn_inter = nn.MultiheadAttention(d, cfg.n_heads)
        self.norm_inter = nn.LayerNorm(d)
        self.linear1 = nn.Linear(d, cfg.dim_feedforward)
        self.linear2 = nn.Linear(cfg.dim_feedforward, d)
        self.norm3 = nn.LayerNorm(d)

    @staticmethod
    def _attend(attn: nn.MultiheadAttention, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Self-attention along dim 2 of (B, X, T, C), X folded into the batch (sequence-first MHA)."""
        out = attn(q.flatten(0, 1).transpose(0, 1), q.flatten(0, 1).transpose(0, 1),
                   v.flatten(0, 1).transpose(0, 1), need_weights=False)[0]
        return out.transpose(0, 1).reshape(q.shape)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, reference_points: torch.Tensor,
                src: torch.Tensor, shapes: list[tuple[int, int]], padding_mask: torch.Tensor) -> torch.Tensor:
        # tgt, query_pos: (B, Q, P, C); reference_points: (B, Q, P, L, 2)
        shortcut = tgt
        intra = self._attend(self.attn_intra, tgt + query_pos, tgt)  # among the points of one polygon
        tgt = shortcut + self.norm_intra(intra + self.circonv(shortcut + query_pos))
        tgt = tgt + self.norm_fuse(self.mlp_fuse(tgt))
        inter = tgt.transpose(1, 2)  # (B, P, Q, C): the same point index across polygons
        inter = self.norm_inter(inter + self._attend(self.attn_inter, inter, inter)).transpose(1, 2)
        cross = self.attn_cross((inter + query_pos).flatten(1, 2), reference_points.flatten(1, 2), src, shapes,
                                padding_mask).reshape(inter.shape)
        tgt = self.norm_cross(inter + cross)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class Decoder(nn.Module):
    """Decoder layers with explicit point positions refined after every layer."""

    def __init__(self, cfg: DPTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.ref_point_head = MLP(cfg.d_model, cfg.d_model, cfg.d_model, 2)
        self.ctrl_point_coord: nn.ModuleList | None = None  # set by DPTextDETR (shared with its heads)

    def forward(self, tgt: torch.Tensor, reference_points: torch.Tensor, src: torch.Tensor,
                shapes: list[tuple[int, int]], valid_ratios: torch.Tensor,
                padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the last layer's output (B, Q, P, C) and the refined points (B, Q, P, 2) in [0, 1]."""
        d_half = tgt.shape[-1] // 2
        for lid, layer in enumerate(self.layers):
            ref_input = reference_points[:, :, :, None] * valid_ratios[:, None, None]  # (B, Q, P, L, 2)
            pts = ref_input[:, :, :, 0] * 2 * math.pi
            query_pos = torch.cat((sine_embed(pts[..., 0], d_half), sine_embed(pts[..., 1], d_half)), dim=-1)
            query_pos = self.ref_point_head(query_pos.to(tgt.dtype))
            tgt = layer(tgt, query_pos, ref_input, src, shapes, padding_mask)
            reference_points = (self.ctrl_point_coord[lid](tgt) + inverse_sigmoid(reference_points)).sigmoid()
        return tgt, reference_points


class DeformableTransformer(nn.Module):
    """Encoder, two-stage proposals from the encoder memory, then the point-query decoder."""

    def __init__(self, cfg: DPTextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.decoder = Decoder(cfg)
        self.level_embed = nn.Parameter(torch.randn(cfg.num_feature_levels, cfg.d_model))
        self.enc_output = nn.Linear(cfg.d_model, cfg.d_model)
        self.enc_output_norm = nn.LayerNorm(cfg.d_model)
        self.bbox_class_embed: nn.Linear | None = None  # set by DPTextDETR
        self.bbox_embed: MLP | None = None

    @staticmethod
    def _encoder_reference_points(shapes: list[tuple[int, int]], valid_ratios: torch.Tensor) -> torch.Tensor:
        refs = []
        for lvl, (h, w) in enumerate(shapes):
            ry, rx = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, device=valid_ratios.device),
                                    torch.linspace(0.5, w - 0.5, w, device=valid_ratios.device), indexing="ij")
            ry = ry.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            rx = rx.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            refs.append(torch.stack((rx, ry), -1))
        return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]  # (B, S, L, 2)

    def _proposals(self, memory: torch.Tensor, mask: torch.Tensor,
                   shapes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One box proposal per memory position (logit space) and the projected memory."""
        n = memory.shape[0]
        proposals, start = [], 0
        for lvl, (h, w) in enumerate(shapes):
            m = mask[:, start:start + h * w].view(n, h, w)
            valid_h, valid_w = (~m[:, :, 0]).sum(1), (~m[:, 0, :]).sum(1)
            gy, gx = torch.meshgrid(torch.linspace(0, h - 1, h, device=memory.device),
                                    torch.linspace(0, w - 1, w, device=memory.device), indexing="ij")
            grid = torch.stack([gx, gy], -1)
            scale = torch.stack([valid_w, valid_h], 1).view(n, 1, 1, 2)
            grid = (grid[None].expand(n, -1, -1, -1) + 0.5) / scale
            wh = torch.full_like(grid, 0.05 * 2.0 ** lvl)
            proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
            start += h * w
        props = torch.cat(proposals, 1)
        valid = ((props > 0.01) & (props < 0.99)).all(-1, keepdim=True)
        props = torch.log(props / (1 - props))
        props = props.masked_fill(mask[..., None], float("inf")).masked_fill(~valid, float("inf"))
        out = memory.masked_fill(mask[..., None], 0.0).masked_fill(~valid, 0.0)
        return self.enc_output_norm(self.enc_output(out)), props

    def forward(self, srcs: list[torch.Tensor], masks: list[torch.Tensor], pos_embeds: list[torch.Tensor],
                query_embed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature levels (B, C, H_l, W_l) + masks + position embeddings -> decoder output and points."""
        shapes = [(s.shape[2], s.shape[3]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask = torch.cat([m.flatten(1) for m in masks], 1)
        pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                         for lvl, p in enumerate(pos_embeds)], 1)
        valid_ratios = torch.stack([torch.stack([(~m[:, 0, :]).sum(1).float() / m.shape[2],
                                                 (~m[:, :, 0]).sum(1).float() / m.shape[1]], -1)
                                    for m in masks], 1)  # (B, L, 2) as (w, h)
        ref = self._encoder_reference_points(shapes, valid_ratios)
        memory = src
        for layer in self.encoder.layers:
            memory = layer(memory, pos, ref, shapes, mask)
        out_memory, props = self._proposals(memory, mask, shapes)
        enc_class = self.bbox_class_embed(out_memory)  # (B, S, 1)
        enc_coord = self.bbox_embed(out_memory) + props  # (B, S, 4) logits
        topk = torch.topk(enc_class[..., 0], self.cfg.num_queries, dim=1)[1]
        boxes = torch.gather(enc_coord, 1, topk[..., None].expand(-1, -1, 4)).float().sigmoid()  # (B, Q, 4)
        reference_points = self._points_from_boxes(boxes)
        tgt = query_embed[None].expand(src.shape[0], -1, -1, -1)
        return self.decoder(tgt, reference_points, memory, shapes, valid_ratios.to(memory.dtype), mask)

    def _points_from_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Prior points: P/2 evenly spaced on the top edge of each (cx, cy, w, h) box, then back on the bottom."""
        half = self.cfg.num_ctrl_points // 2
        cx, cy, w, h = boxes.unbind(-1)
        steps = torch.arange(half, device=boxes.device, dtype=boxes.dtype) / (half - 1)
        xs = (cx - w / 2)[..., None] + w[..., None] * steps  # (B, Q, half)
        x = torch.cat([xs, xs.flip(-1)], -1)
        y = torch.cat([(cy - h / 2)[..., None].expand_as(xs), (cy + h / 2)[..., None].expand_as(xs)], -1)
        return torch.stack([x, y], -1).clamp(0, 1)  # (B, Q, P, 2)


class DPTextDETR(nn.Module):
    """The whole detector: normalised (B, 3, H, W) images + padding mask -> point logits and coordinates.

    Args:
        cfg: model sizes.
    """

    def __init__(self, cfg: DPTextConfig) -> None:
        super().__init__()
        if cfg.num_feature_levels != 4:
            raise ValueError("DPText-DETR's released models use 4 feature levels")
        self.cfg = cfg
        d = cfg.d_model
        resnet = ResNet(cfg.resnet_blocks, cfg.stem_channels, cfg.res2_channels, cfg.bottleneck_channels)
        self.backbone = nn.ModuleList([nn.Module()])
        self.backbone[0].backbone = resnet
        chans = resnet.out_channels
        proj = [nn.Sequential(nn.Conv2d(c, d, 1), nn.GroupNorm(32, d)) for c in chans]
        proj.append(nn.Sequential(nn.Conv2d(chans[-1], d, 3, stride=2, padding=1), nn.GroupNorm(32, d)))
        self.input_proj = nn.ModuleList(proj)
        self.ctrl_point_embed = nn.Embedding(cfg.num_ctrl_points, d)
        self.transformer = DeformableTransformer(cfg)
        point_class, point_coord = nn.Linear(d, 1), MLP(d, d, 2, 3)
        # One head module repeated per decoder layer: the state dict lists it under every index.
        self.ctrl_point_class = nn.ModuleList([point_class] * cfg.dec_layers)
        self.ctrl_point_coord = nn.ModuleList([point_coord] * cfg.dec_layers)
        self.bbox_coord = MLP(d, d, 4, 3)
        self.bbox_class = nn.Linear(d, 1)
        self.transformer.decoder.ctrl_point_coord = self.ctrl_point_coord
        self.transformer.bbox_class_embed = self.bbox_class
        self.transformer.bbox_embed = self.bbox_coord

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Detect text polygons.

        Args:
            images: (B, 3, H, W) RGB normalised with the ImageNet mean/std on 0..255.
            mask: (B, H, W) True on padding.

        Returns:
            logits (B, Q, P) per control point, points (B, Q, P, 2) as (x, y) in [0, 1] of the unpadded image.
        """
        feats = self.backbone[0].backbone(images)
        srcs, masks = [], []
        for lvl, feat in enumerate(feats):
            srcs.append(self.input_proj[lvl](feat))
            masks.append(self._level_mask(mask, feat.shape[-2:], 8 * 2 ** lvl))
        srcs.append(self.input_proj[3](feats[-1]))
        masks.append(F.interpolate(masks[0][None].float(), size=srcs[-1].shape[-2:])[0].bool())
        half = self.cfg.d_model // 2
        pos = [mask_position_embedding(m, half).to(s.dtype) for s, m in zip(srcs, masks)]
        query = self.ctrl_point_embed.weight[None].repeat(self.cfg.num_queries, 1, 1)  # (Q, P, C)
        hs, points = self.transformer(srcs, masks, pos, query)
        return self.ctrl_point_class[-1](hs)[..., 0], points

    @staticmethod
    def _level_mask(mask: torch.Tensor, size: torch.Size, stride: int) -> torch.Tensor:
        """Padding mask of one level: valid where the image covers ceil(h / stride) x ceil(w / stride)."""
        valid_h = (~mask[:, :, 0]).sum(1)
        valid_w = (~mask[:, 0, :]).sum(1)
        rows = torch.arange(size[0], device=mask.device)[None, :, None] < torch.ceil(valid_h / stride)[:, None, None]
        cols = torch.arange(size[1], device=mask.device)[None, None, :] < torch.ceil(valid_w / stride)[:, None, None]
        return ~(rows & cols)
