"""Evaluation metrics of DESIGN 6 (HDM at several thresholds and MSE per channel group, cosine per caption
slot), accumulated as sums on the device so that they can be all-reduced across ranks; plus image panels."""

from __future__ import annotations

import colorsys

import torch

from shards.taxonomy import CHANNEL_GROUPS, CHANNELS, GROUPS, NUM_TOKENS
from student.loss import POSE_GROUPS  # a crowd mask removes pixels from these, in metrics as in the loss

HDM_THRESHOLDS = (0.1, 0.3, 0.5, 0.8)
EMPTY_SLOT_MS = 0.003  # a caption slot whose target mean square is at most this is empty (DESIGN 5.4)


def hdm(pred: torch.Tensor, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """HDM@T: fraction of values with |y - y_hat| <= T, both maps taken from [-1, 1] to [0, 1].

    Args:
        pred: predicted maps in [-1, 1], any shape.
        target: target maps of the same shape.
        threshold: T on the [0, 1] scale.

    Returns:
        Scalar tensor in [0, 1].
    """
    return ((pred.float() - target.float()).abs() * 0.5 <= threshold).float().mean()


def token_cosine(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity per caption slot, summed over the batch: as the paper reports it (every sample counts;
    an empty target slot, all zeros, scores 0, as in the authors' metric) and over the non-empty target slots.

    Args:
        pred: (B, 8, 300) predicted tokens.
        target: (B, 8, 300) target GloVe vectors.

    Returns:
        (sums (2, 8): paper-style sum and non-empty sum per slot, counts (2, 8): samples and non-empty slots).
    """
    pred, target = pred.float(), target.float()
    valid = (target ** 2).mean(dim=-1) > EMPTY_SLOT_MS  # (B, 8)
    cos = torch.nn.functional.cosine_similarity(pred, target, dim=-1, eps=1e-8)  # (B, 8); 0 for a zero target
    sums = torch.stack([cos.sum(dim=0), (cos * valid).sum(dim=0)])
    counts = torch.stack([torch.full_like(sums[0], float(cos.shape[0])), valid.sum(dim=0).float()])
    return sums, counts


#: channel groups whose maps have a foreground (target > 0) worth an IoU: a map that stays on the background
#: scores 0 there, whatever its HDM
IOU_GROUPS = ("joints", "text", "groups")


def foreground_iou(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, intersection and union of the foregrounds (value > 0) of predicted and target maps.

    Args:
        pred, target: (B, C, H, W) maps in [-1, 1].
        keep: optional (B, 1 or C, H, W) 0/1 mask of the pixels that count.

    Returns:
        (intersection (C,), union (C,)) pixel counts.
    """
    p, t = pred > 0, target > 0
    if keep is not None:
        p, t = p & (keep > 0), t & (keep > 0)
    return (p & t).sum(dim=(0, 2, 3)).float(), (p | t).sum(dim=(0, 2, 3)).float()


def mean_iou(inter: list[float], union: list[float]) -> float:
    """Mean IoU over the channels whose union is not empty (NaN when every one is)."""
    ious = [i / u for i, u in zip(inter, union) if u > 0]
    return sum(ious) / len(ious) if ious else float("nan")


class MetricSums:
    """Running sums of the metrics over batches; ``sums`` is one float64 tensor (all-reduce it for DDP).

    Args:
        device: where the sums live (the model's device).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.groups = [g.name for g in CHANNEL_GROUPS]
        self.per_group = 2 + len(HDM_THRESHOLDS)  # squared error, count, hits at each threshold
        self.iou_channels = [CHANNELS[name].stop - CHANNELS[name].start for name in IOU_GROUPS]
        n = len(self.groups) * self.per_group + 4 * NUM_TOKENS + 2 * sum(self.iou_channels) + 2  # + loss, batches
        self.sums = torch.zeros(n, dtype=torch.float64, device=device)

    def update(self, maps: torch.Tensor, targets: torch.Tensor, tokens: torch.Tensor, glove: torch.Tensor,
               loss: torch.Tensor | None = None, pose_mask: torch.Tensor | None = None) -> None:
        """Add one batch: maps / targets (B, 44, H, W), tokens / glove (B, 8, 300), optional batch loss, and
        the optional (B, H, W) pose mask (0 on crowd regions): joints and PAFs count only its pixels."""
        maps, targets = maps.detach().float(), targets.float()
        rows = []
        for group in CHANNEL_GROUPS:
            diff = maps[:, group.slice] - targets[:, group.slice]
            keep = pose_mask[:, None].float().expand_as(diff) if pose_mask is not None \
                and group.name in POSE_GROUPS else torch.ones_like(diff)
            half = diff.abs() * 0.5
            rows.append(torch.stack([(diff ** 2 * keep).sum(), keep.sum()]
                                    + [((half <= t).float() * keep).sum() for t in HDM_THRESHOLDS]))
        cos_sums, cos_counts = token_cosine(tokens.detach(), glove)
        ious = []
        for name in IOU_GROUPS:
            s = CHANNELS[name].slice
            keep = pose_mask[:, None] if pose_mask is not None and name in POSE_GROUPS else None
            ious += list(foreground_iou(maps[:, s], targets[:, s], keep))
        extra = torch.stack([loss.detach().float() if loss is not None else maps.new_zeros(()),
                             maps.new_tensor(1.0 if loss is not None else 0.0)])
        self.sums += torch.cat([torch.cat(rows), cos_sums.flatten(), cos_counts.flatten(), *ious,
                                extra]).to(torch.float64)

    def compute(self) -> dict[str, float]:
        """``{"<group>/mse", "<group>/hdm@T", "<group>/iou" (joints, text, groups: mean over their channels),
        "tokens/cos<i>", "tokens/cos" (paper-style, every sample), "tokens/cos<i>_nonempty",
        "tokens/cos_nonempty", "loss"}`` as floats."""
        s = self.sums.cpu().tolist()
        out: dict[str, float] = {}
        for i, name in enumerate(self.groups):
            sse, n, *hits = s[i * self.per_group:(i + 1) * self.per_group]
            out[f"{name}/mse"] = sse / max(n, 1.0)
            for t, h in zip(HDM_THRESHOLDS, hits):
                out[f"{name}/hdm@{t}"] = h / max(n, 1.0)
        at = len(self.groups) * self.per_group
        cos, at = [s[at + k * NUM_TOKENS:at + (k + 1) * NUM_TOKENS] for k in range(4)], at + 4 * NUM_TOKENS
        for suffix, total, count in (("", cos[0], cos[2]), ("_nonempty", cos[1], cos[3])):
            for i in range(NUM_TOKENS):
                out[f"tokens/cos{i}{suffix}"] = total[i] / count[i] if count[i] else float("nan")
            out[f"tokens/cos{suffix}"] = sum(total) / sum(count) if sum(count) else float("nan")
        for name, c in zip(IOU_GROUPS, self.iou_channels):
            inter, union = s[at:at + c], s[at + c:at + 2 * c]
            out[f"{name}/iou"] = mean_iou(inter, union)
            at += 2 * c
        loss_sum, batches = s[-2:]
        if batches:
            out["loss"] = loss_sum / batches
        return out


def image_panel(images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, rows: int = 4) -> torch.Tensor:
    """A (3, rows*H, 9*W) float image in [0, 1] for TensorBoard: input, then target / prediction pairs of
    joints (max over channels), depth, normals and groups (coloured argmax).

    Args:
        images: (B, 3, H, W) uint8 inputs.
        maps: (B, 44, H, W) predictions in [-1, 1].
        targets: (B, 44, H, W) targets in [-1, 1].
        rows: number of samples shown.
    """
    n = min(rows, images.shape[0])
    palette = torch.tensor([[0.0, 0.0, 0.0]] + [colorsys.hsv_to_rgb(i / len(GROUPS), 0.8, 1.0)
                                               for i in range(len(GROUPS))], device=maps.device)

    def views(m: torch.Tensor) -> list[torch.Tensor]:
        m = m[:n].float()
        joints = m[:, CHANNELS["joints"].slice].amax(dim=1, keepdim=True).expand(-1, 3, -1, -1)
        depth = m[:, CHANNELS["depth"].slice].expand(-1, 3, -1, -1)
        normals = m[:, CHANNELS["normals"].slice]
        g = m[:, CHANNELS["groups"].slice]
        labels = torch.where(g.amax(dim=1) > 0, g.argmax(dim=1) + 1, 0)  # (n, H, W)
        groups = palette[labels].permute(0, 3, 1, 2)
        return [(joints + 1) / 2, (depth + 1) / 2, (normals + 1) / 2, groups]

    cols = [images[:n].float() / 255.0]
    for t, p in zip(views(targets), views(maps)):
        cols += [t, p]
    grid = torch.cat([torch.cat(list(c), dim=1) for c in cols], dim=2)  # (3, n*H, 9*W)
    return grid.clamp(0, 1).cpu()
