"""Store values <-> the student's [-1, 1] targets (DESIGN 5): the device-side assembly of a loader batch
into the (B, 44, H, W) float target, and the same mappings in numpy (references, and for reading predictions
back into store values).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from shards.taxonomy import CHANNELS, GROUPS, NUM_CHANNELS


def depth_to_target(depth: np.ndarray) -> np.ndarray:
    """uint16 depth (0..65535, larger = nearer) -> float32 in [-1, 1]."""
    return depth.astype(np.float32) / 32767.5 - 1.0


def target_to_depth(target: np.ndarray) -> np.ndarray:
    """[-1, 1] depth map -> uint16 store depth."""
    return np.clip(np.rint((np.asarray(target, np.float32) + 1.0) * 32767.5), 0, 65535).astype(np.uint16)


def normals_to_target(normals: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 normals -> (3, S, S) float32 in [-1, 1]."""
    return normals.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0


def target_to_normals(target: np.ndarray) -> np.ndarray:
    """(3, S, S) [-1, 1] normals -> (S, S, 3) uint8 store normals."""
    n = np.clip(np.rint((np.asarray(target, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(n.transpose(1, 2, 0))


def text_to_target(text: np.ndarray) -> np.ndarray:
    """uint8 text mask (0 / 255) -> float32 -1 / +1."""
    return np.where(text > 127, 1.0, -1.0).astype(np.float32)


def target_to_text(target: np.ndarray) -> np.ndarray:
    """[-1, 1] text map -> uint8 mask 0 / 255 (positive = text)."""
    return np.where(np.asarray(target) > 0, 255, 0).astype(np.uint8)


def groups_to_target(groups: np.ndarray) -> np.ndarray:
    """(S, S) uint8 group labels (0 = unlabeled, 1..10) -> (10, S, S) one-hot float32 in {-1, +1}."""
    values = np.arange(1, len(GROUPS) + 1, dtype=groups.dtype)[:, None, None]
    return np.where(groups[None] == values, 1.0, -1.0).astype(np.float32)


def target_to_groups(target: np.ndarray) -> np.ndarray:
    """(10, S, S) group maps -> (S, S) uint8 labels: argmax + 1 where the best map is positive, else 0."""
    target = np.asarray(target)
    best = target.argmax(axis=0)
    return np.where(target.max(axis=0) > 0, best + 1, 0).astype(np.uint8)


def device_targets(batch: Mapping[str, Any]) -> Any:
    """Assemble the float (B, 44, S, S) target in [-1, 1] from a collated host batch already on the device.

    Args:
        batch: tensors ``pose`` (B, 29, S, S) int8, ``depth`` (B, S, S) uint16 (or its bits as int16),
            ``normals`` (B, S, S, 3) uint8, ``text`` (B, S, S) uint8, ``groups`` (B, S, S) uint8.

    Returns:
        (B, 44, S, S) float32 tensor in channel order of ``shards.taxonomy.CHANNELS``.
    """
    import torch

    pose = batch["pose"]
    b, _, h, w = pose.shape
    out = torch.empty((b, NUM_CHANNELS, h, w), dtype=torch.float32, device=pose.device)
    out[:, CHANNELS["joints"].start:CHANNELS["pafs"].stop] = pose.float() / 127.0
    # uint16 tensors support few ops (fewer still on CUDA): read the bits as int16, widen, mask
    depth = batch["depth"]
    depth = (depth.view(torch.int16) if depth.dtype == torch.uint16 else depth).to(torch.int32) & 0xFFFF
    out[:, CHANNELS["depth"].slice] = (depth.float() / 32767.5 - 1.0)[:, None]
    out[:, CHANNELS["normals"].slice] = batch["normals"].permute(0, 3, 1, 2).float() / 127.5 - 1.0
    out[:, CHANNELS["text"].slice] = torch.where(batch["text"] > 127, 1.0, -1.0)[:, None]
    values = torch.arange(1, len(GROUPS) + 1, device=pose.device, dtype=batch["groups"].dtype)
    out[:, CHANNELS["groups"].slice] = torch.where(batch["groups"][:, None] == values[None, :, None, None],
                                                   1.0, -1.0)
    return out


def perfect_outputs(sample: Any, base_radius: float, paf_width: float) -> tuple[np.ndarray, np.ndarray]:
    """What a perfect student outputs for a store sample: its training targets.

    Args:
        sample: a ``student.targets.StoreSample``.
        base_radius, paf_width: target sizes (``TargetSizes.at``).

    Returns:
        (44, S, S) float32 maps in [-1, 1] (``pack_targets`` then :func:`device_targets`, as training renders
        them) and the (8, 300) float32 tokens.
    """
    import torch

    from student.targets import pack_targets

    packed = pack_targets(sample, base_radius, paf_width)
    batch = {k: torch.from_numpy(np.ascontiguousarray(v)[None]) for k, v in packed.items()}
    return device_targets(batch)[0].numpy(), np.asarray(sample.glove, np.float32)


def synthetic_scene(min_people: int, size: int, seed: int = 0, limit: int = 1000) -> Any:
    """The first sample of ``shards.synthetic`` (by id, below ``limit``) with at least ``min_people`` people, as a
    ``student.targets.StoreSample`` (its members decoded as the loader has them): a scene for
    :func:`perfect_outputs`."""
    from shards.synthetic import synthetic_sample
    from student.targets import from_store

    for image_id in range(limit):
        members = synthetic_sample(image_id, size, seed)
        sample = from_store({"__key__": str(image_id), **{k: v for m in members.values() for k, v in m.items()}})
        if len(sample.keypoints) >= min_people:
            return sample
    raise ValueError(f"no synthetic sample below id {limit} has {min_people} people")

