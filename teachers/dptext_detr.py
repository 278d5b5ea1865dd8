"""DPText-DETR text-detection teacher: official detectron2-style checkpoints on a plain-PyTorch port.

Loads ``model_final.pth``-style files (``{"model": state_dict}`` or a bare state dict, keys under
``dptext_detr.``; the parameter names are listed in ``teachers.dptext_detr_model``) with strict key and
shape matching, resizes like detectron2's test-time ``ResizeShortestEdge``, and returns per image the
16-point polygons in original pixels with their scores (mean point logit, sigmoid, kept at >= threshold).
A checkpoint may carry a ``"config"`` dict of ``DPTextConfig`` fields (the tiny test models do); without
one the released R-50 sizes apply. Those sizes are bounded (``dptext_detr_model.LIMITS``) and must describe
exactly the checkpoint's tensors, checked on a meta-device model before the real one is built.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from teachers.base import Teacher, TeacherError, TeacherInput, TeacherSpec, model_cache, sha256_of_path
from teachers.dptext_detr_model import LIMITS, DPTextConfig, DPTextDETR
from teachers.loading import sized_config, unit_interval
from teachers.preprocess import shortest_edge_resize
from teachers.strict_load import check_fits, load_strict, read_checkpoint, safetensors_layout, tensor_layout

TEACHER = "dptext-detr"
PREFIX = "dptext_detr."
PIXEL_MEAN = (123.675, 116.280, 103.530)  # RGB, 0..255
PIXEL_STD = (58.395, 57.120, 57.375)


def _config(fields: Any, source: str) -> DPTextConfig:
    """The ``DPTextConfig`` of a checkpoint's ``"config"`` dict, each size bounded (``LIMITS``) and consistent;
    anything else is one TeacherError naming the file and the field."""
    cfg = sized_config(DPTextConfig, fields, LIMITS, teacher=TEACHER, source=source)
    where = f"teacher {TEACHER!r}: {source}: config"
    if cfg.d_model % cfg.n_heads:
        raise TeacherError(f"{where} field 'd_model' {cfg.d_model} is not divisible by 'n_heads' {cfg.n_heads}")
    if cfg.d_model % 32:
        raise TeacherError(f"{where} field 'd_model' {cfg.d_model} is not a multiple of 32 (GroupNorm's groups)")
    if cfg.num_ctrl_points % 2:
        raise TeacherError(f"{where} field 'num_ctrl_points' {cfg.num_ctrl_points} is odd (half per polygon side)")
    return cfg


def load_dptext_detr(checkpoint: str | os.PathLike) -> tuple[DPTextDETR, DPTextConfig]:
    """Build the model for a checkpoint file and load it strictly.

    The sizes a checkpoint declares are data: they are bounded (``LIMITS``), and the model they describe is built
    on the meta device and compared with the checkpoint's tensors (``check_fits``) before the real model is built,
    so a small file cannot make this allocate a large model. A ``.safetensors`` file (the released sizes) is
    compared from its header, before its tensors are read.

    Args:
        checkpoint: ``.pth`` (``{"model": ...}`` or bare state dict) or ``.safetensors`` file.

    Returns:
        The model in eval mode on the CPU and its configuration.
    """
    source = os.path.expanduser(str(checkpoint))
    safetensors = source.endswith(".safetensors")
    if safetensors:  # the released sizes, compared from the header before any tensor is read
        check_fits(lambda: DPTextDETR(DPTextConfig()), safetensors_layout(source, TEACHER), prefix=PREFIX,
                   source=source, teacher=TEACHER)
    obj = read_checkpoint(checkpoint, TEACHER)
    state = obj.get("model", obj)
    if not isinstance(state, dict):
        raise TeacherError(f"teacher 'dptext-detr': checkpoint {checkpoint}: 'model' is not a state dict")
    fields = obj.get("config", {}) if "model" in obj else {}
    cfg = _config(fields, source)
    if not safetensors:
        check_fits(lambda: DPTextDETR(cfg), tensor_layout(state), prefix=PREFIX, source=source, teacher=TEACHER)
    model = DPTextDETR(cfg)
    load_strict(model, state, prefix=PREFIX, source=str(checkpoint), teacher=TEACHER)
    return model.eval(), cfg


def save_random_checkpoint(out_dir: str | os.PathLike, cfg: DPTextConfig | None = None, seed: int = 0) -> str:
    """Write a random DPText-DETR in the official checkpoint layout (plus its ``"config"``); returns the path.

    Args:
        out_dir: folder to write ``dptext_detr_random.pth`` into (created if needed).
        cfg: model sizes; default the released ones.
        seed: torch seed of the random weights.

    Returns:
        The path to pass as ``checkpoint=``.
    """
    torch.manual_seed(seed)
    cfg = cfg or DPTextConfig()
    model = DPTextDETR(cfg)
    for name, buf in model.named_buffers():  # non-trivial frozen statistics so a wrong load shows
        if name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
        elif name.endswith("running_mean"):
            buf.normal_(0.0, 0.1)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(str(out_dir), "dptext_detr_random.pth")
    state = {PREFIX + k: v for k, v in model.state_dict().items()}
    torch.save({"model": state, "config": asdict(cfg), "iteration": 0}, path)
    return path


def save_tiny_checkpoint(out_dir: str | os.PathLike, seed: int = 0) -> str:
    """Write a tiny random DPText-DETR (``DPTextConfig.tiny()``) for tests; returns the ``checkpoint=`` path."""
    return save_random_checkpoint(out_dir, DPTextConfig.tiny(), seed)


class DPTextDETRTeacher(Teacher):
    """DPText-DETR scene-text detector.

    Args:
        checkpoint: the official weights file (TotalText / CTW1500 / pretrain ``.pth``).
        threshold: minimum score of a kept polygon (the official test threshold is 0.4).
        min_size: test-time shorter side (official 1000).
        max_size: test-time longer-side cap (official 1800).
        device, dtype, batch_size: see ``Teacher``.
    """

    name = "dptext-detr"
    spec = TeacherSpec(
        task="text",
        description="DPText-DETR (ResNet-50, deformable transformer, 16-point polygons), plain-PyTorch port",
        input_size="shorter side 1000, longer side <= 1800 (detectron2 ResizeShortestEdge)",
        outputs={"polygons": "list of float32 (16, 2) (x, y) in original pixels", "scores": "list of float 0..1"},
        units="pixels",
    )

    def __init__(self, *, checkpoint: str | None = None, threshold: float = 0.4, min_size: int = 1000,
                 max_size: int = 1800, device: str = "cpu", dtype: str = "float32", batch_size: int = 4) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        threshold = unit_interval("threshold", threshold)
        if min_size < 32 or max_size < min_size:
            raise TeacherError(f"need 32 <= min_size <= max_size, got {min_size}, {max_size}")
        self.checkpoint = os.path.expanduser(self.resolve_checkpoint(checkpoint) or self.default_checkpoint())
        if checkpoint is None and not os.path.isfile(self.checkpoint):
            raise TeacherError(f"teacher 'dptext-detr': no checkpoint given and {self.checkpoint} does not exist; "
                               "download a model_final.pth from github.com/ymy-k/DPText-DETR and pass checkpoint= "
                               "(pipeline: --text-checkpoint)")
        self.threshold, self.min_size, self.max_size = threshold, min_size, max_size
        self.model, self.cfg = load_dptext_detr(self.checkpoint)
        self.model.to(device)
        self._weights_sha = sha256_of_path(self.checkpoint)

    @classmethod
    def default_checkpoint(cls) -> str:
        """``<model cache>/dptext-detr/totaltext_final.pth``: the model cache is ``$YMAP_DISTILL_CACHE``, else
        ``~/.cache/ymap-distill``."""
        return model_cache("dptext-detr", "totaltext_final.pth")

    def identity(self) -> dict[str, Any]:
        # half precision: the deformable sampling now runs in float32, a change of output it names (float32 kept)
        half = {} if self.dtype == "float32" else {"deformable_sampling": "float32"}
        return {"weights_sha256": self._weights_sha, "threshold": self.threshold, "min_size": self.min_size,
                "max_size": self.max_size, "config": asdict(self.cfg), **half}

    def _resize(self, img: np.ndarray) -> np.ndarray:
        """One RGB uint8 image at the test size (PIL bilinear, as detectron2's ResizeTransform)."""
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise TeacherError(f"teacher 'dptext-detr': needs (H, W, 3) uint8 RGB images, got {img.dtype} "
                               f"{img.shape}")
        return shortest_edge_resize(img, self.min_size, self.max_size)

    def _tensor(self, resized: list[np.ndarray]) -> torch.Tensor:
        """Same-size resized images -> normalised (B, 3, H, W) on the device."""
        batch = torch.from_numpy(np.stack(resized)).to(self.device).permute(0, 3, 1, 2).float()
        mean = torch.tensor(PIXEL_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(PIXEL_STD, device=self.device).view(1, 3, 1, 1)
        return (batch - mean) / std

    @torch.inference_mode()
    def predict(self, inputs: list[TeacherInput]) -> list[dict[str, Any]]:
        """Images of the same test size share a model call; no padding, so an image's polygons never depend
        on the rest of its batch (as in the official batch-1 evaluation)."""
        resized = [self._resize(inp.image) for inp in inputs]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(resized):
            groups.setdefault(r.shape[:2], []).append(i)
        out: list[dict[str, Any]] = [{} for _ in inputs]
        autocast = (torch.autocast("cuda", dtype=getattr(torch, self.dtype)) if self.dtype != "float32"
                    else contextlib.nullcontext())
        for (h, w), idx in groups.items():
            batch = self._tensor([resized[i] for i in idx])
            mask = torch.zeros(len(idx), h, w, dtype=torch.bool, device=self.device)
            with autocast:
                logits, points = self.model(batch, mask)
            scores = logits.float().mean(-1).sigmoid().cpu().numpy()  # (B, Q)
            points = points.float().cpu().numpy()  # (B, Q, P, 2) in [0, 1] of the image
            for i, sc, pts in zip(idx, scores, points):
                keep = sc >= self.threshold
                img = inputs[i].image
                size = np.array([img.shape[1], img.shape[0]], dtype=np.float32)
                out[i] = {"polygons": [(p * size).astype(np.float32) for p in pts[keep]],
                          "scores": [float(v) for v in sc[keep]]}
        return out
