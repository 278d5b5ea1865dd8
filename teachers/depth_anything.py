"""Depth teacher: Depth Anything V2 (relative or metric) through transformers, with the published model's own input
geometry (``infer_image`` of the Depth Anything V2 repository): each image scaled so that its short side is
``input_size``, both sides multiples of 14, no padding; images of the same input shape share a batch. The long
side is capped (``max_long_side``, default 4 x ``input_size``): a 2000x20 strip would otherwise become a
518x51800 input, hundreds of times a photo's cost; past the cap the short side shrinks with it."""

from __future__ import annotations

import math
from typing import Any

from teachers.base import Teacher, TeacherInput, TeacherSpec
from teachers.loading import checkpoint_identity, from_pretrained_strict, hub_revision, integer, torch_dtype
from teachers.preprocess import IMAGENET_MEAN, IMAGENET_STD, check_image

DEFAULT_CHECKPOINT = "depth-anything/Depth-Anything-V2-Large-hf"
#: Short names of the published checkpoints (any hub id or local folder works too).
VARIANTS = {
    "small": "depth-anything/Depth-Anything-V2-Small-hf",
    "base": "depth-anything/Depth-Anything-V2-Base-hf",
    "large": "depth-anything/Depth-Anything-V2-Large-hf",
    **{f"metric-{scene}-{size}": f"depth-anything/Depth-Anything-V2-Metric-{scene.title()}-{size.title()}-hf"
       for scene in ("indoor", "outdoor") for size in ("small", "base", "large")},
}
PATCH = 14
LONG_SIDE_FACTOR = 4  # the default cap of the input's long side, in units of input_size (aspect ratios up to 4:1)


def input_shape(height: int, width: int, input_size: int = 518, max_long_side: int | None = None
                ) -> tuple[int, int]:
    """The model input (h, w) of an image: Depth Anything V2's ``Resize(keep_aspect_ratio=True,
    resize_method="lower_bound", ensure_multiple_of=14)``: scaled so that both sides are at least ``input_size``,
    each side then rounded to the nearest multiple of 14, or up to one where rounding would go below
    ``input_size``. When the long side would exceed ``max_long_side`` (default ``LONG_SIDE_FACTOR x
    input_size``) the image is scaled to that long side instead, each side a multiple of 14 (at least 14)."""
    scale = max(input_size / height, input_size / width)
    cap = LONG_SIDE_FACTOR * input_size if max_long_side is None else max_long_side

    def side(x: float) -> int:
        y = round(x / PATCH) * PATCH  # half to even, as numpy's round upstream
        return y if y >= input_size else math.ceil(x / PATCH) * PATCH

    shape = side(scale * height), side(scale * width)
    if max(shape) <= cap:
        return shape
    fit = cap / max(height, width)  # an extreme aspect ratio: the long side to the cap, the short one follows
    return max(PATCH, int(fit * height // PATCH) * PATCH), max(PATCH, int(fit * width // PATCH) * PATCH)


class DepthAnythingTeacher(Teacher):
    """Depth Anything V2: relative inverse depth (larger = nearer) or metric depth in metres.

    Args:
        checkpoint: hub id, a short name of ``VARIANTS``, or a local ``save_pretrained`` folder.
        revision: hub revision to load (and fingerprint).
        input_size: the short side of the model input (the published 518); both sides are multiples of 14.
        max_long_side: the cap of the input's long side (default 4 x input_size), bounding an image's cost.
        device, dtype, batch_size: see ``Teacher``.
    """

    name = "depth-anything-v2"
    spec = TeacherSpec(
        task="depth",
        description="Depth Anything V2 (transformers DepthAnythingForDepthEstimation; Small/Base/Large, "
                    "relative or metric)",
        input_size="short side -> input_size (default 518), both sides multiples of 14, bicubic, no padding, "
                   "ImageNet mean/std (the published model's own preprocessing); long side at most max_long_side "
                   "(default 4 x input_size)",
        outputs={"depth": "float32 (H, W) at the original resolution", "kind": "'relative' | 'metric'"},
        units="relative inverse depth (larger = nearer), or metres for metric checkpoints",
    )

    def __init__(self, *, checkpoint: str = DEFAULT_CHECKPOINT, revision: str | None = None,
                 input_size: int = 518, max_long_side: int | None = None, device: str = "cpu",
                 dtype: str = "float32", batch_size: int = 8) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        input_size = integer("input_size", input_size, PATCH)
        self.checkpoint = self.resolve_checkpoint(checkpoint)
        self.input_size = int(input_size)
        self.max_long_side = int(integer("max_long_side", max_long_side, self.input_size) if max_long_side is not None
                                 else LONG_SIDE_FACTOR * self.input_size)
        from transformers import DepthAnythingForDepthEstimation

        self.model = from_pretrained_strict(DepthAnythingForDepthEstimation, self.name, self.checkpoint, revision)
        self.model.to(device=device, dtype=torch_dtype(dtype)).eval()
        self.kind = "metric" if self.model.config.depth_estimation_type == "metric" else "relative"
        self._identity = {**checkpoint_identity(self.checkpoint, hub_revision(self.model, revision)),
                          "input_size": self.input_size, "resize": "short side, multiples of 14",
                          "max_long_side": self.max_long_side, "kind": self.kind}

    @classmethod
    def resolve_checkpoint(cls, checkpoint: str) -> str:
        """A short name of ``VARIANTS`` -> its hub id; a leading ``~`` expanded; anything else as it is."""
        if isinstance(checkpoint, str) and checkpoint in VARIANTS:
            return VARIANTS[checkpoint]
        return super().resolve_checkpoint(checkpoint)

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        """Per image, as the published ``infer_image``: RGB / 255 resized bicubically to ``input_shape``, ImageNet
        mean/std; the model's depth resized bilinearly (corners aligned) to the image's own size. Images of one
        input shape run as one batch, so an image's depth does not depend on the other images of the call."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        groups: dict[tuple[int, int], list[int]] = {}
        for i, inp in enumerate(inputs):
            check_image(inp.image)
            groups.setdefault(input_shape(*inp.image.shape[:2], self.input_size, self.max_long_side), []).append(i)
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        outs: list[dict[str, Any]] = [{}] * len(inputs)
        with torch.inference_mode():
            for shape, idx in groups.items():
                rows = []
                for i in idx:  # read-only (Ray's object store) or strided arrays are copied: torch wants neither
                    image = inputs[i].image
                    x = torch.from_numpy(np.ascontiguousarray(image) if image.flags.writeable else np.array(image))
                    x = x.to(self.device).permute(2, 0, 1)[None].float() / 255
                    rows.append(F.interpolate(x, size=shape, mode="bicubic", align_corners=False))
                pixels = ((torch.cat(rows) - mean) / std).to(torch_dtype(self.dtype))
                depth = self.model(pixel_values=pixels).predicted_depth.float()  # (B, h, w)
                for j, i in enumerate(idx):
                    d = F.interpolate(depth[j][None, None], size=inputs[i].image.shape[:2], mode="bilinear",
                                      align_corners=True)[0, 0]
                    outs[i] = {"depth": d.clamp_(min=0).cpu().numpy(), "kind": self.kind}
        return outs


def save_tiny_checkpoint(out_dir: str, seed: int = 0, metric: bool = False) -> str:
    """Save a tiny random Depth Anything V2 with ``save_pretrained`` into ``out_dir``; returns the folder."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=PATCH, image_size=518, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False, apply_layernorm=True)
    config = DepthAnythingConfig(backbone_config=backbone, patch_size=PATCH, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                                 depth_estimation_type="metric" if metric else "relative",
                                 max_depth=20 if metric else 1)
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(out_dir)
    return str(out_dir)
