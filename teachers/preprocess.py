"""Tensor preprocessing shared by the model teachers: letterbox a list of images into one batch and back.

Every image is resized (aspect kept) so that its long side is ``long_side`` and pasted top-left into a
fixed ``canvas`` x ``canvas`` tensor. The canvas depends only on the teacher's parameters, never on
the other images of the batch, so an image's prediction does not change with batch composition or
batch size (which the fingerprint does not include).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from teachers.base import TeacherError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one letterboxed batch: the canvas side and each image's original and resized size."""

    canvas: int
    original: tuple[tuple[int, int], ...]  # (H, W) per image
    resized: tuple[tuple[int, int], ...]  # (h, w) per image, pasted at the top-left of the canvas


def check_image(image: np.ndarray) -> None:
    """Raise TeacherError unless ``image`` is a non-empty (H, W, 3) uint8 RGB array."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            and image.shape[0] > 0 and image.shape[1] > 0):
        what = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise TeacherError(f"teachers take (H, W, 3) uint8 RGB images, got {what}")


def shortest_edge_shape(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge: shorter side to ``min_size``, longer side at most ``max_size`` (the test
    resize of DPText-DETR and Mask2Former, as their own code rounds it)."""
    scale = min_size / min(h, w)
    nh, nw = (min_size, scale * w) if h < w else (scale * h, min_size)
    if max(nh, nw) > max_size:
        s = max_size / max(nh, nw)
        nh, nw = nh * s, nw * s
    return int(nh + 0.5), int(nw + 0.5)


def shortest_edge_resize(img: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """One RGB uint8 image at :func:`shortest_edge_shape` (PIL bilinear, as detectron2's ResizeTransform)."""
    from PIL import Image

    nh, nw = shortest_edge_shape(img.shape[0], img.shape[1], min_size, max_size)
    return np.array(Image.fromarray(np.ascontiguousarray(img)).resize((nw, nh), Image.BILINEAR))


def resized_size(height: int, width: int, long_side: int, multiple: int = 1) -> tuple[int, int]:
    """Size of an image whose long side is scaled to ``long_side``, each side rounded to ``multiple``."""
    scale = long_side / max(height, width)
    return tuple(max(multiple, int(round(s * scale / multiple)) * multiple)  # type: ignore[return-value]
                 for s in (height, width))


def canvas_size(long_side: int, multiple: int = 1) -> int:
    """Side of the square canvas that holds any image resized by ``resized_size``."""
    return int(math.ceil(long_side / multiple) * multiple)


def letterbox_batch(images: Sequence[np.ndarray], long_side: int, *, multiple: int = 1,
                    canvas_multiple: int | None = None, device: Any = "cpu",
                    dtype: Any = None, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    scale: float = 1 / 255, mode: str = "bilinear", channels: str = "RGB") -> tuple[Any, Letterbox]:
    """Resize, normalise and pad RGB uint8 images into one (B, 3, canvas, canvas) tensor on ``device``.

    Args:
        images: (H, W, 3) uint8 RGB arrays of any sizes.
        long_side: target length of each image's long side.
        multiple: each resized side is rounded to a multiple of this (patch size).
        canvas_multiple: the canvas side is a multiple of this (backbone stride; default ``multiple``).
        device: torch device of the batch (the resize runs there).
        dtype: torch dtype of the batch (default float32).
        mean: per-channel mean subtracted after ``scale``.
        std: per-channel std divided by after the mean.
        scale: factor applied to the 0..255 pixel values first.
        mode: interpolation ("bilinear" or "bicubic", antialiased).
        channels: "RGB" or "BGR" channel order of the batch.

    Returns:
        (batch, geometry); padding is 0 after normalisation.
    """
    import torch
    import torch.nn.functional as F

    canvas = canvas_size(long_side, canvas_multiple or multiple)
    batch = torch.zeros((len(images), 3, canvas, canvas), device=device, dtype=torch.float32)
    mean_t = torch.tensor(mean, device=device, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, device=device, dtype=torch.float32).view(3, 1, 1)
    original, resized = [], []
    for i, img in enumerate(images):
        check_image(img)
        h0, w0 = img.shape[:2]
        h, w = resized_size(h0, w0, long_side, multiple)
        if not img.flags.writeable:  # arrays shared by Ray's object store are read-only; torch wants writable
            img = img.copy()
        x = torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
        if channels == "BGR":
            x = x.flip(1)
        if (h, w) != (h0, w0):
            x = F.interpolate(x, size=(h, w), mode=mode, align_corners=False, antialias=True).clamp_(0, 255)
        batch[i, :, :h, :w] = (x[0] * scale - mean_t) / std_t
        original.append((int(h0), int(w0)))
        resized.append((h, w))
    if dtype is not None:
        batch = batch.to(dtype)
    return batch, Letterbox(canvas, tuple(original), tuple(resized))


def resize_batch(images: Sequence[np.ndarray], size: tuple[int, int], *, device: Any = "cpu", dtype: Any = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 scale: float = 1 / 255, mode: str = "bilinear") -> Any:
    """Resize every RGB uint8 image to ``size`` (H, W), aspect not kept, normalise, stack to (B, 3, H, W)."""
    import torch
    import torch.nn.functional as F

    mean_t = torch.tensor(mean, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device, dtype=torch.float32).view(1, 3, 1, 1)
    rows = []
    for img in images:
        check_image(img)
        if not img.flags.writeable:  # arrays shared by Ray's object store are read-only; torch wants writable
            img = img.copy()
        x = torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True).clamp_(0, 255)
        rows.append(x)
    batch = (torch.cat(rows) * scale - mean_t) / std_t
    return batch.to(dtype) if dtype is not None else batch
