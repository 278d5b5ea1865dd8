"""The training loss of DESIGN 6: the paper's seven gained MSE terms (crowd regions masked out of the pose
channels), plus the optional multi-hot head's BCE on its own gain."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from shards.taxonomy import CHANNEL_GROUPS
from student.recipe import PAPER_TERMS, Recipe

POSE_GROUPS = ("joints", "pafs")  # channel groups the crowd mask applies to
PAPER_GAINS = Recipe().gains()


def compute_loss(outputs: dict[str, torch.Tensor], targets: torch.Tensor, pose_mask: torch.Tensor,
                 glove: torch.Tensor, multihot: torch.Tensor | None = None,
                 gains: Mapping[str, float] = PAPER_GAINS, pose_foreground_weight: float = 1.0
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the loss terms; computed in float32 whatever the autocast dtype of the outputs.

    Args:
        outputs: the model's outputs (``maps`` (B, 44, H, W), ``tokens`` (B, 8, 300), optional ``multihot``).
        targets: (B, 44, H, W) float targets in [-1, 1].
        pose_mask: (B, H, W) 1 where the pose channels count, 0 in crowd regions.
        glove: (B, 8, 300) target token vectors.
        multihot: (B, V) 0/1 targets of the multi-hot head, used when the model has one.
        gains: weight of each term (``Recipe.gains()``).
        pose_foreground_weight: weight of joint and PAF pixels whose target is off the background (-1), relative
            to background pixels; 1 = the paper's plain mean.

    Returns:
        (total loss, {term: unweighted loss (detached)}); :func:`paper_loss` of the terms is the seven-term loss.
    """
    maps = outputs["maps"].float()
    parts: dict[str, torch.Tensor] = {}
    mask = pose_mask.float()[:, None]  # (B, 1, H, W)
    for group in CHANNEL_GROUPS:
        target = targets[:, group.slice]
        err = (maps[:, group.slice] - target) ** 2
        if group.name in POSE_GROUPS:
            weight = mask.expand_as(err)
            if pose_foreground_weight != 1.0:
                weight = weight * torch.where(target > -1.0 + 1e-3, pose_foreground_weight, 1.0)
            parts[group.name] = (err * weight).sum() / weight.sum().clamp(min=1.0)
        else:
            parts[group.name] = err.mean()
    parts["tokens"] = F.mse_loss(outputs["tokens"].float(), glove.float())
    if "multihot" in outputs and multihot is not None:
        probs = outputs["multihot"].float().clamp(1e-6, 1 - 1e-6)
        parts["multihot"] = F.binary_cross_entropy(probs, multihot.float())
    total = sum(gains[name] * value for name, value in parts.items())
    return total, {name: value.detach() for name, value in parts.items()}


def paper_loss(parts: Mapping[str, torch.Tensor], gains: Mapping[str, float] = PAPER_GAINS) -> torch.Tensor:
    """The paper's loss, sum of g_i * MSE_i over its seven terms (no multi-hot term): what validation, early
    stopping and ``best.pt`` go by."""
    return sum(gains[name] * parts[name] for name in PAPER_TERMS)
