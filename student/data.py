"""The student's loader: joined store columns -> augmentation -> rendered compact targets -> DataLoader batches.

Host tensors stay uint8 / int8 / uint16 (float16 for the 8x300 GloVe tokens); :func:`to_device` copies them
with non-blocking transfers from pinned memory and converts them to float on the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from shards.manifest import Manifest, StoreError
from shards.reader import StoreReader, load_manifest_at
from student.augment import AugmentConfig, augment, sample_rng
from student.targets import StoreSample, TargetSizes, allocate_batch, device_targets, from_store, pack_targets

REQUIRED_COLUMNS = ("base", "depth", "normals", "text", "groups", "tokens")
BUILD_HINT = {"base": "base", "depth": "depth", "normals": "depth", "text": "text", "groups": "panoptic",
              "tokens": "caption"}  # the pipeline stage that produces (or leads to) each column


@dataclass
class SampleTransform:
    """Decoded store sample -> augmented :class:`StoreSample` and the target sizes of the epoch (picklable,
    so it travels into DataLoader workers).

    Args:
        sizes: heatmap / PAF size schedule.
        augment: augmentation settings, or None for none (validation).
        seed: base seed of the augmentation.
        multihot_vocab: size of the multi-hot target (0 = none).
        epoch: the current epoch (sets target sizes and augmentation randomness); None = final sizes.
    """

    sizes: TargetSizes
    augment: AugmentConfig | None
    seed: int = 0
    multihot_vocab: int = 0
    epoch: int | None = 0

    def __call__(self, raw: dict[str, Any]) -> StoreSample:
        sample = from_store(raw)
        if self.augment is not None:
            sample = augment(sample, sample_rng(self.seed, self.epoch or 0, sample.key), self.augment)
        return sample

    def pack(self, sample: StoreSample, out: dict[str, np.ndarray], index: int) -> None:
        """Render the sample's targets into row ``index`` of the batch buffers ``out``."""
        radius, width = self.sizes.at(self.epoch)
        pack_targets(sample, radius, width, self.multihot_vocab, out, index)


class StudentDataset(IterableDataset):
    """The store reader followed by :class:`SampleTransform`, yielding whole batches (rendered in place into
    the batch buffers, so no collate copy); ``set_epoch`` reseeds both.

    Args:
        reader: the joined reader over ``REQUIRED_COLUMNS``.
        transform: the per-sample transform.
        batch_size: samples per batch; the last batch of a finite stream may be shorter.
    """

    def __init__(self, reader: StoreReader, transform: SampleTransform, batch_size: int) -> None:
        super().__init__()
        self.reader = reader
        self.transform = transform
        self.batch_size = batch_size

    @property
    def manifest(self) -> Manifest:
        return self.reader.manifest

    def set_epoch(self, epoch: int) -> None:
        """Call before each ``iter(loader)``: workers receive a copy of the dataset at that moment."""
        self.reader.set_epoch(epoch)
        if self.transform.epoch is not None:
            self.transform.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        size, vocab = self.manifest.size, self.transform.multihot_vocab
        buffers, keys = None, []
        for raw in self.reader:
            if buffers is None:
                buffers = allocate_batch(self.batch_size, size, vocab)
            sample = self.transform(raw)
            self.transform.pack(sample, buffers, len(keys))
            keys.append(sample.key)
            if len(keys) == self.batch_size:
                yield _as_batch(buffers, keys)
                buffers, keys = None, []
        if keys:
            yield _as_batch({k: v[:len(keys)] for k, v in buffers.items()}, keys)


def _as_batch(buffers: dict[str, np.ndarray], keys: list[str]) -> dict[str, Any]:
    return {**{k: torch.from_numpy(v) for k, v in buffers.items()}, "key": keys}


def open_split(root: str | os.PathLike, split: str, *, train: bool, batch_size: int = 32, seed: int = 0,
               shuffle_buffer: int = 256,
               sizes: TargetSizes = TargetSizes(), augment: AugmentConfig | None = AugmentConfig(),
               multihot_vocab: int = 0, rank: int | None = None, world_size: int | None = None) -> StudentDataset:
    """The dataset of one split, with one-line errors for a missing split or column.

    Args:
        root: store root.
        split: e.g. ``"train2017"``.
        train: endless resampled, shuffled, augmented stream with epoch-dependent target sizes; else one
            ordered pass with the final sizes and no augmentation.
        batch_size: samples per batch.
        seed: seed of shuffling and augmentation.
        shuffle_buffer: samples in the shuffle buffer (training).
        sizes: target size schedule.
        augment: augmentation settings (training only; None disables).
        multihot_vocab: size of the multi-hot target (0 = none).
        rank, world_size: DDP position (default env RANK / WORLD_SIZE).

    Raises:
        StoreError: the split does not exist or lacks a needed column.
    """
    manifest = load_manifest_at(root, split)
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise StoreError(f"store {root} split {split} lacks column(s) {', '.join(missing)}; build them with "
                         f"`pipeline build-targets --split {split} --stages "
                         f"{','.join(dict.fromkeys(BUILD_HINT[c] for c in missing))}`")
    reader = StoreReader(root, split, REQUIRED_COLUMNS, shuffle=train, seed=seed, shuffle_buffer=shuffle_buffer,
                         resampled=train, rank=rank, world_size=world_size)
    transform = SampleTransform(sizes, augment if train else None, seed, multihot_vocab, 0 if train else None)
    return StudentDataset(reader, transform, batch_size)


def make_loader(dataset: StudentDataset, workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over the dataset's batches (the dataset splits shards across workers itself)."""
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if workers else None)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """Move a host batch to the device (non-blocking) and convert it to float there.

    Returns:
        ``images`` (B, 3, S, S) uint8, ``targets`` (B, 44, S, S) float32, ``pose_mask`` (B, S, S) float32,
        ``glove`` (B, 8, 300) float32 and, when present, ``multihot`` (B, V) float32.
    """
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    out = {"images": moved["image"], "targets": device_targets(moved),
           "pose_mask": moved["pose_mask"].float(), "glove": moved["glove"].float()}
    if "multihot" in moved:
        out["multihot"] = moved["multihot"].float()
    return out
