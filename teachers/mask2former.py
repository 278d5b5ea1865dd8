"""Panoptic teacher: Mask2Former (COCO panoptic) through transformers, merged into contiguous class maps."""

from __future__ import annotations

from typing import Any

from shards.taxonomy import NUM_PANOPTIC_CLASSES, PANOPTIC_CLASSES, PANOPTIC_VOID
from teachers.base import Teacher, TeacherError, TeacherInput, TeacherSpec
from teachers.loading import (checkpoint_identity, from_pretrained_strict, hub_revision, integer, torch_dtype,
                              unit_interval)
from teachers.panoptic_ids import PANOPTIC_OUTPUTS
from teachers.preprocess import IMAGENET_MEAN, IMAGENET_STD, letterbox_batch, unletterbox

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
        input_size: long side of the model input (1067 gives 4:3 images Mask2Former's 800-pixel test size).
        score_threshold: minimum query class probability (Mask2Former's object_mask_threshold).
        overlap_threshold: minimum visible fraction of a query's mask (Mask2Former's overlap_threshold).
        device, dtype, batch_size: see ``Teacher``.
    """

    name = "mask2former"
    spec = TeacherSpec(
        task="panoptic",
        description="Mask2Former COCO panoptic (transformers Mask2FormerForUniversalSegmentation, Swin-L)",
        input_size="long side -> input_size, letterboxed on a square canvas (multiple of 32), bilinear, "
                   "ImageNet mean/std",
        outputs=PANOPTIC_OUTPUTS,
        units="class id",
    )

    def __init__(self, *, checkpoint: str = DEFAULT_CHECKPOINT, revision: str | None = None,
                 input_size: int = 1067, score_threshold: float = 0.8, overlap_threshold: float = 0.8,
                 device: str = "cpu", dtype: str = "float32", batch_size: int = 4) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        input_size = integer("input_size", input_size, STRIDE)
        from transformers import Mask2FormerForUniversalSegmentation

        self.checkpoint = checkpoint = self.resolve_checkpoint(checkpoint)
        self.input_size = int(input_size)
        self.score_threshold = unit_interval("score_threshold", score_threshold)
        self.overlap_threshold = unit_interval("overlap_threshold", overlap_threshold)
        self.model = from_pretrained_strict(Mask2FormerForUniversalSegmentation, self.name, checkpoint, revision)
        if self.model.config.num_labels != NUM_PANOPTIC_CLASSES:
            raise TeacherError(f"teacher {self.name!r}: checkpoint {checkpoint!r} has {self.model.config.num_labels} "
                               f"classes; the store needs the {NUM_PANOPTIC_CLASSES} COCO panoptic classes")
        _check_label_order(self.name, checkpoint, self.model.config.id2label)
        self.model.to(device=device, dtype=torch_dtype(dtype)).eval()
        self._identity = {**checkpoint_identity(checkpoint, hub_revision(self.model, revision)),
                          "input_size": self.input_size, "score_threshold": self.score_threshold,
                          "overlap_threshold": self.overlap_threshold,
                          "merge": 2}  # 2: pixels outside the winning query's own mask are void

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            x, geo = letterbox_batch([i.image for i in inputs], self.input_size, canvas_multiple=STRIDE,
                                     device=self.device, dtype=torch_dtype(self.dtype), mean=IMAGENET_MEAN,
                                     std=IMAGENET_STD, mode="bilinear")
            out = self.model(pixel_values=x)
            probs = out.class_queries_logits.float().softmax(-1)  # (B, Q, 134)
            scores, labels = probs.max(-1)  # (B, Q)
            keep = (labels != NUM_PANOPTIC_CLASSES) & (scores > self.score_threshold)
            results = []
            for i in range(len(inputs)):
                k = keep[i]
                masks = out.masks_queries_logits[i, k]  # (K, h/4, w/4) over the canvas
                if masks.shape[0] == 0:
                    h, w = geo.original[i]
                    results.append({"classes": torch.full((h, w), PANOPTIC_VOID, dtype=torch.uint8).numpy()})
                    continue
                mask_probs = unletterbox(masks, geo, i, mode="bilinear").sigmoid()  # (K, H, W)
                results.append({"classes": self._merge(mask_probs, scores[i, k], labels[i, k])})
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
