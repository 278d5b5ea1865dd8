"""Depth teacher: Depth Anything V2 (relative or metric) through transformers, batched on a letterbox canvas."""

from __future__ import annotations

from typing import Any

from teachers.base import Teacher, TeacherInput, TeacherSpec
from teachers.loading import checkpoint_identity, from_pretrained_strict, hub_revision, integer, torch_dtype
from teachers.preprocess import IMAGENET_MEAN, IMAGENET_STD, letterbox_batch, unletterbox

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


class DepthAnythingTeacher(Teacher):
    """Depth Anything V2: relative inverse depth (larger = nearer) or metric depth in metres.

    Args:
        checkpoint: hub id, a short name of ``VARIANTS``, or a local ``save_pretrained`` folder.
        revision: hub revision to load (and fingerprint).
        input_size: long side of the model input; rounded to multiples of 14 (686 gives 4:3 images the
            published 518-pixel short side).
        device, dtype, batch_size: see ``Teacher``.
    """

    name = "depth-anything-v2"
    spec = TeacherSpec(
        task="depth",
        description="Depth Anything V2 (transformers DepthAnythingForDepthEstimation; Small/Base/Large, "
                    "relative or metric)",
        input_size="long side -> input_size (multiple of 14), letterboxed on a square canvas, bicubic, "
                   "ImageNet mean/std",
        outputs={"depth": "float32 (H, W) at the original resolution", "kind": "'relative' | 'metric'"},
        units="relative inverse depth (larger = nearer), or metres for metric checkpoints",
    )

    def __init__(self, *, checkpoint: str = DEFAULT_CHECKPOINT, revision: str | None = None,
                 input_size: int = 686, device: str = "cpu", dtype: str = "float32", batch_size: int = 8) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        input_size = integer("input_size", input_size, PATCH)
        self.checkpoint = self.resolve_checkpoint(checkpoint)
        self.input_size = int(input_size)
        from transformers import DepthAnythingForDepthEstimation

        self.model = from_pretrained_strict(DepthAnythingForDepthEstimation, self.name, self.checkpoint, revision)
        self.model.to(device=device, dtype=torch_dtype(dtype)).eval()
        self.kind = "metric" if self.model.config.depth_estimation_type == "metric" else "relative"
        self._identity = {**checkpoint_identity(self.checkpoint, hub_revision(self.model, revision)),
                          "input_size": self.input_size, "kind": self.kind}

    @classmethod
    def resolve_checkpoint(cls, checkpoint: str) -> str:
        """A short name of ``VARIANTS`` -> its hub id; a leading ``~`` expanded; anything else as it is."""
        if isinstance(checkpoint, str) and checkpoint in VARIANTS:
            return VARIANTS[checkpoint]
        return super().resolve_checkpoint(checkpoint)

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            x, geo = letterbox_batch([i.image for i in inputs], self.input_size, multiple=PATCH,
                                     device=self.device, dtype=torch_dtype(self.dtype), mean=IMAGENET_MEAN,
                                     std=IMAGENET_STD, mode="bicubic")
            depth = self.model(pixel_values=x).predicted_depth  # (B, canvas, canvas)
            if depth.shape[-2:] != x.shape[-2:]:
                depth = torch.nn.functional.interpolate(depth[:, None].float(), size=x.shape[-2:],
                                                        mode="bilinear", align_corners=False)[:, 0]
            outs = []
            for i in range(len(inputs)):
                d = unletterbox(depth[i:i + 1], geo, i, mode="bilinear")[0]  # (H, W)
                outs.append({"depth": d.float().clamp_(min=0).cpu().numpy(), "kind": self.kind})
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
