"""The training loss of DESIGN 6: per-group MSE with gains, crowd regions masked out of the pose channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shards.taxonomy import CHANNEL_GROUPS
from student.config import LossGains

POSE_GROUPS = ("joints", "pafs")  # channel groups the crowd mask applies to


def compute_loss(outputs: dict[str, torch.Tensor], targets: torch.Tensor, pose_mask: torch.Tensor,
                 glove: torch.Tensor, multihot: torch.Tensor | None = None,
                 gains: LossGains = LossGains()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the per-group losses; computed in float32 whatever the autocast dtype of the outputs.

    Args:
        outputs: the model's outputs (``maps`` (B, 44, H, W), ``tokens`` (B, 8, 300), optional ``multihot``).
        targets: (B, 44, H, W) float targets in [-1, 1].
        pose_mask: (B, H, W) 1 where the pose channels count, 0 in crowd regions.
        glove: (B, 8, 300) target token vectors.
        multihot: (B, V) 0/1 targets of the multi-hot head, used when the model has one.
        gains: weights of the parts.

    Returns:
        (total loss, {part: unweighted loss (detached)}).
    """
    maps = outputs["maps"].float()
    parts: dict[str, torch.Tensor] = {}
    mask = pose_mask.float()[:, None]  # (B, 1, H, W)
    for group in CHANNEL_GROUPS:
        err = (maps[:, group.slice] - targets[:, group.slice]) ** 2
        if group.name in POSE_GROUPS:
            parts[group.name] = (err * mask).sum() / (mask.sum() * err.shape[1]).clamp(min=1.0)
        else:
            parts[group.name] = err.mean()
    parts["tokens"] = F.mse_loss(outputs["tokens"].float(), glove.float())
    if "multihot" in outputs and multihot is not None:
        probs = outputs["multihot"].float().clamp(1e-6, 1 - 1e-6)
        parts["multihot"] = F.binary_cross_entropy(probs, multihot.float())
    total = sum(getattr(gains, name) * value for name, value in parts.items())
    return total, {name: value.detach() for name, value in parts.items()}
