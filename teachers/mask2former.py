"""Panoptic teacher: Mask2Former (COCO panoptic) through transformers, merged into contiguous class maps."""

from __future__ import annotations

from typing import Any

from shards.taxonomy import NUM_PANOPTIC_CLASSES, PANOPTIC_CLASSES, PANOPTIC_VOID
from teachers.base import Teacher, TeacherError, TeacherInput, TeacherSpec
from teachers.loading import (checkpoint_identity, from_pretrained_strict, hub_revision, integer, torch_dtype,
                              unit_interval)
from teachers.panoptic_ids import PANOPTIC_OUTPUTS
from teachers.preprocess import IMAGENET_MEAN, IMAGENET_STD, check_image, shortest_edge_resize

DEFAULT_CHECKPOINT = "facebook/mask2former-swin-large-coco-panoptic"
STRIDE = 32


class Mask2FormerTeacher(Teacher):
    """Mask2Former panoptic segmentation; the per-pixel class of Mask2Former's panoptic merge.

    The merge follows Mask2Former's ``panoptic_inference``: keep queries whose best class is not
    "no object" and scores above ``score_threshold``; each pixel goes to the query maximising
    score x mask probability, and stays void unless it also lies in that query's own mask (probability
    >= 0.5); a query that wins less than ``overlap_threshold`` of its own mask is dropped and its pixels
    become void.

    Args:
        checkpoint: hub id or a local ``save_pretrained`` folder of a 133-class COCO panoptic model.
        revision: hub revision to load (and fingerprint).
        min_size, max_size: Mask2Former's own test resize (detectron2's ResizeShortestEdge, PIL bilinear: shorter
            side to ``min_size``, longer at most ``max_size``; its COCO configs' 800 and 1333), the result padded
            at the bottom and right to a multiple of 32 (zeros after normalisation, as detectron2's ImageList).
        score_threshold: minimum query class probability (Mask2Former's object_mask_threshold).
        overlap_threshold: minimum visible fraction of a query's mask (Mask2Former's overlap_threshold).
        device, dtype, batch_size: see ``Teacher``.
    """

    name = "mask2former"
    spec = TeacherSpec(
        task="panoptic",
        description="Mask2Former COCO panoptic (transformers Mask2FormerForUniversalSegmentation, Swin-L)",
        input_size="Mask2Former's own test resize: shorter side -> min_size (800), longer at most max_size (1333), "
                   "PIL bilinear, ImageNet mean/std, padded bottom-right to a multiple of 32",
        outputs=PANOPTIC_OUTPUTS,
        units="class id",
    )

    def __init__(self, *, checkpoint: str = DEFAULT_CHECKPOINT, revision: str | None = None,
                 min_size: int = 800, max_size: int = 1333, score_threshold: float = 0.8,
                 overlap_threshold: float = 0.8, device: str = "cpu", dtype: str = "float32", batch_size: int = 4
                 ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        min_size, max_size = integer("min_size", min_size, STRIDE), integer("max_size", max_size, STRIDE)
        if max_size < min_size:
            raise TeacherError(f"teacher {self.name!r}: max_size {max_size} is below min_size {min_size}")
        from transformers import Mask2FormerForUniversalSegmentation

        self.checkpoint = checkpoint = self.resolve_checkpoint(checkpoint)
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.score_threshold = unit_interval("score_threshold", score_threshold)
        self.overlap_threshold = unit_interval("overlap_threshold", overlap_threshold)
        self.model = from_pretrained_strict(Mask2FormerForUniversalSegmentation, self.name, checkpoint, revision)
        if self.model.config.num_labels != NUM_PANOPTIC_CLASSES:
            raise TeacherError(f"teacher {self.name!r}: checkpoint {checkpoint!r} has {self.model.config.num_labels} "
                               f"classes; the store needs the {NUM_PANOPTIC_CLASSES} COCO panoptic classes")
        _check_label_order(self.name, checkpoint, self.model.config.id2label)
        self.model.to(device=device, dtype=torch_dtype(dtype)).eval()
        self._identity = {**checkpoint_identity(checkpoint, hub_revision(self.model, revision)),
                          "min_size": self.min_size, "max_size": self.max_size, "resize": "shortest edge, pad 32",
                          "score_threshold": self.score_threshold,
                          "overlap_threshold": self.overlap_threshold,
                          "merge": 2}  # 2: pixels outside the winning query's own mask are void

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        """As Mask2Former's own inference: each image at its test size (``shortest_edge_resize``), normalised and
        zero-padded at the bottom and right to a multiple of 32; the mask logits upsampled to the padded size,
        cropped to the image's, upsampled to its original size (``sem_seg_postprocess``). Images of one resized
        shape run as one batch, so an image's output does not depend on the others of the call."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        groups: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
        for i, inp in enumerate(inputs):
            check_image(inp.image)
            resized = shortest_edge_resize(inp.image, self.min_size, self.max_size)
            groups.setdefault(resized.shape[:2], []).append((i, resized))
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255
        results: list[dict[str, Any]] = [{} for _ in inputs]
        with torch.inference_mode():
            for (h, w), items in groups.items():
                x = torch.from_numpy(np.stack([r for _, r in items])).to(self.device).permute(0, 3, 1, 2).float()
                x = F.pad((x - mean) / std, (0, -w % STRIDE, 0, -h % STRIDE))  # zeros: detectron2's ImageList
                out = self.model(pixel_values=x.to(torch_dtype(self.dtype)))
                probs = out.class_queries_logits.float().softmax(-1)  # (B, Q, 134)
                scores, labels = probs.max(-1)  # (B, Q)
                keep = (labels != NUM_PANOPTIC_CLASSES) & (scores > self.score_threshold)
                for j, (i, _) in enumerate(items):
                    size = inputs[i].image.shape[:2]
                    masks = out.masks_queries_logits[j, keep[j]].float()  # (K, h'/4, w'/4) of the padded input
                    if masks.shape[0] == 0:
                        results[i] = {"classes": np.full(size, PANOPTIC_VOID, np.uint8)}
                        continue
                    masks = F.interpolate(masks[None], size=x.shape[-2:], mode="bilinear", align_corners=False)
                    masks = F.interpolate(masks[:, :, :h, :w], size=size, mode="bilinear", align_corners=False)[0]
                    results[i] = {"classes": self._merge(masks.sigmoid(), scores[j, keep[j]], labels[j, keep[j]])}
        return results

    def _merge(self, mask_probs: Any, scores: Any, labels: Any) -> Any:
        """Per-pixel class of the panoptic merge, (H, W) uint8 numpy (void where no valid segment)."""
        import torch

        q = len(scores)
        owner = (mask_probs * scores[:, None, None]).argmax(0)  # (H, W) query index
        own = mask_probs >= 0.5  # (Q, H, W) each query's own mask
        inside = own.gather(0, owner[None])[0]  # the pixel lies in the mask of the query that wins it
        area = torch.bincount(owner.flatten(), minlength=q)  # pixels each query wins
        painted = torch.bincount(owner[inside], minlength=q)  # ... that are also inside its own mask
        own_area = own.flatten(1).sum(1)
        valid = (area > 0) & (own_area > 0) & (painted > 0) & (area >= self.overlap_threshold * own_area)
        lut = torch.where(valid, labels, torch.full_like(labels, PANOPTIC_VOID)).to(torch.uint8)
        classes = torch.where(inside, lut[owner], torch.full_like(owner, PANOPTIC_VOID, dtype=torch.uint8))
        return classes.cpu().numpy()


def _check_label_order(teacher: str, checkpoint: str, id2label: dict[int, str] | None) -> None:
    """TeacherError when the model's class names are not the 133 COCO panoptic classes in the store's order (its
    class i is painted as the store's class i). Spelling may differ (case, spaces, a renamed class or two);
    a model whose names mostly differ orders or defines its classes otherwise. Default names (``LABEL_7``) say
    nothing and pass."""
    def norm(name: str) -> str:
        return "".join(ch for ch in str(name).lower() if ch.isalnum())

    names = {int(i): str(n) for i, n in (id2label or {}).items()}
    if not names or all(n.startswith("LABEL_") for n in names.values()):
        return
    differ = [c for c in PANOPTIC_CLASSES if norm(names.get(c.contiguous_id, "")) != norm(c.name)]
    if len(differ) > NUM_PANOPTIC_CLASSES // 3:
        c = differ[0]
        raise TeacherError(f"teacher {teacher!r}: checkpoint {checkpoint!r} names its classes otherwise than the "
                           f"COCO panoptic order the store uses ({len(differ)} of {NUM_PANOPTIC_CLASSES} differ; class "
                           f"{c.contiguous_id} is {names.get(c.contiguous_id)!r}, not {c.name!r})")


def save_tiny_checkpoint(out_dir: str, seed: int = 0) -> str:
    """Save a tiny random 133-class Mask2Former (Swin backbone) with ``save_pretrained``; returns the folder."""
    import torch
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    torch.manual_seed(seed)
    backbone = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
                          image_size=224, out_features=["stage1", "stage2", "stage3", "stage4"])
    id2label = {c.contiguous_id: c.name for c in PANOPTIC_CLASSES}
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=3,
                               num_attention_heads=2, dim_feedforward=64, num_queries=12,
                               id2label=id2label, label2id={v: k for k, v in id2label.items()})
    Mask2FormerForUniversalSegmentation(config).eval().save_pretrained(out_dir)
    return str(out_dir)
