"""The student's loader: joined store columns -> augmentation -> rendered compact targets -> DataLoader batches.

Host tensors stay uint8 / int8 / uint16 (float16 for the 8x300 GloVe tokens); :func:`to_device` copies them
with non-blocking transfers from pinned memory and converts them to float on the device.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

from shards.codecs import CodecError, decode_member
from shards.manifest import Manifest, StoreError, StoreFault
from shards.schema import COLUMNS, MANIFEST_NAME, VOCAB_NAME
from shards.reader import StoreReader, load_manifest_at
from student.augment import AugmentConfig, augment, sample_rng
from student.targets import PoseError, StoreSample, TargetSizes, allocate_batch, from_store, pack_targets
from student.values import device_targets

#: batch buffers each loader process reuses: the DataLoader's 2 prefetched, one being pinned, one in use
SLOTS_PER_WORKER = 4
# each made by the stage of its name
REQUIRED_COLUMNS = ("base", "pose", "depth", "normals", "text", "groups", "tokens")
#: members the student decodes (ext -> schema member); the rest (meta.json, depth.json, text.json) stay bytes
MEMBERS = {m.ext: m for c in REQUIRED_COLUMNS for m in COLUMNS[c].members
           if m.ext not in ("meta.json", "depth.json", "text.json")}


def exit_code(error: BaseException) -> int:
    """The exit code of a CLI that stops on ``error``: 1 for a damaged store (as ``shards`` exits), 2 for bad input."""
    return 1 if isinstance(error, StoreFault) else 2


def error_line(error: BaseException) -> str:
    """The message of ``error`` in one line; for an error a DataLoader worker raised (torch re-raises it with the
    worker's traceback as its message), the original message alone."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]  # "module.Type: message"
        return last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else type(error).__name__


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
        store_size: the store's S: an image member declaring another size is refused before it is decoded.
    """

    sizes: TargetSizes
    augment: AugmentConfig | None
    seed: int = 0
    multihot_vocab: int = 0
    epoch: int | None = 0
    store_size: int | None = None

    def __call__(self, raw: dict[str, Any]) -> StoreSample:
        """Decode the members the student uses (raw bytes from the reader) and augment."""
        decoded = {"__key__": raw["__key__"]}
        for ext, member in MEMBERS.items():
            try:
                decoded[ext] = decode_member(member, raw[ext], self.store_size)
            except CodecError as e:  # name the sample: `shards verify` then finds the shard's other faults
                raise _member_error(raw, ext, e) from None
        try:
            sample = from_store(decoded)
        except PoseError as e:  # decodes as JSON, but not the structure the pose stage writes
            raise _member_error(raw, "pose.json", e) from None
        if self.augment is not None:
            sample = augment(sample, sample_rng(self.seed, self.epoch or 0, sample.key), self.augment)
        return sample

    def pack(self, sample: StoreSample, out: dict[str, Any], index: int) -> None:
        """Render the sample's targets into row ``index`` of the batch buffers ``out``."""
        radius, width = self.sizes.at(self.epoch)
        pack_targets(sample, radius, width, self.multihot_vocab, out, index)


def _member_error(raw: dict[str, Any], ext: str, error: BaseException) -> StoreFault:
    """One line naming the shard, key and member of a sample the student cannot use (a damaged store)."""
    return StoreFault(f"shard {raw.get('__shard__', '?')} key {raw['__key__']} member {ext}: {error} "
                      "(run `shards verify`)")


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
        self.skip_batches = 0
        self.with_labels = False  # batches also carry each sample's keypoints and token ids (student eval)
        self.slots: torch.Tensor | None = None  # buffer flags of the current loader (see make_loader)

    @property
    def manifest(self) -> Manifest:
        return self.reader.manifest

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Call before each ``iter(loader)`` (workers receive a copy of the dataset at that moment).

        Args:
            epoch: reseeds the reader, the augmentation and the target sizes.
            skip_batches: batches of this epoch's stream already consumed (resuming inside an epoch). Whole
                rounds of the DataLoader's round robin over its W workers are skipped undecoded; the caller
                drops the remaining ``skip_batches % W`` batches itself (see :func:`skip_remainder`).
        """
        self.reader.set_epoch(epoch)
        self.skip_batches = skip_batches
        if self.transform.epoch is not None:
            self.transform.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        size, vocab = self.manifest.size, self.transform.multihot_vocab
        # inside a DataLoader worker the batch is born in shared memory: handing it over copies nothing
        info = torch.utils.data.get_worker_info()
        shared = info is not None
        workers = info.num_workers if info is not None else 1
        ring = _SlotRing(self.slots, info.id if info is not None else 0, lambda: _allocate(self.batch_size, size,
                                                                                           vocab, shared))
        skip = self.skip_batches // workers * self.batch_size  # whole rounds of the loader's round robin
        tensors, keys, extras = None, [], []
        for raw in self.reader:
            if skip:
                skip -= 1
                continue
            if tensors is None:
                slot, tensors = ring.acquire()
                arrays = {k: v.numpy() for k, v in tensors.items()}
            sample = self.transform(raw)
            self.transform.pack(sample, arrays, len(keys))
            keys.append(sample.key)
            if self.with_labels:
                extras.append((sample.keypoints, sample.token_ids))
            if len(keys) == self.batch_size:
                yield {**tensors, "key": keys, "slot": slot, **self._labels(extras)}
                tensors, keys, extras = None, [], []
        if keys:
            yield {**{k: v[:len(keys)] for k, v in tensors.items()}, "key": keys, "slot": slot, **self._labels(extras)}

    def _labels(self, extras: list[tuple[Any, tuple[int, ...]]]) -> dict[str, list]:
        """The per-sample labels of ``with_labels`` batches: ``keypoints`` ((P, 17, 3) arrays in store pixels)
        and ``token_ids`` (the caption's vocabulary ids)."""
        if not self.with_labels:
            return {}
        return {"keypoints": [e[0] for e in extras], "token_ids": [list(e[1]) for e in extras]}

    def release(self, batch: dict[str, Any]) -> None:
        """Hand a batch's buffers back to the process that filled them, for a later batch to reuse.

        Call it once per batch, when nothing reads the batch's host tensors any more (after their copy to
        the device has completed, or after the step that used them on the CPU). Batches never released
        cost only speed: their worker then fills new memory.
        """
        slot = batch.get("slot", -1)
        if self.slots is not None and 0 <= slot < self.slots.numel():
            self.slots.view(-1)[slot] = 0


class _SlotRing:
    """The reusable batch buffers of one loader process.

    Filling new memory costs more than the rendering itself (every page of a new shared-memory batch
    faults in: about 2 ms per 256x256 sample here), so each process keeps ``SLOTS_PER_WORKER`` batches and
    refills one only after the consumer released it (:meth:`StudentDataset.release`), which sets its flag
    in ``slots``, a (workers, SLOTS_PER_WORKER) uint8 tensor shared with the consumer (1 = in use). With no
    flags or no free slot it falls back to new memory.
    """

    def __init__(self, slots: torch.Tensor | None, worker: int, allocate: Any) -> None:
        self.flags = slots.numpy()[worker] if slots is not None and worker < slots.shape[0] else None
        self.offset = worker * SLOTS_PER_WORKER
        self.allocate = allocate
        self.buffers: dict[int, dict[str, torch.Tensor]] = {}

    def acquire(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(slot number for :meth:`StudentDataset.release`, or -1; batch tensors to fill)."""
        if self.flags is not None:
            for k in range(len(self.flags)):
                if self.flags[k] == 0:
                    self.flags[k] = 1
                    if k not in self.buffers:
                        self.buffers[k] = self.allocate()
                    return self.offset + k, self.buffers[k]
        return -1, self.allocate()


def _allocate(batch: int, size: int, vocab: int, shared: bool) -> dict[str, torch.Tensor]:
    """Uninitialised batch tensors with the layout of :func:`student.targets.allocate_batch`.

    Every batch is new memory, so its first writes fault pages in: numpy's arrays (advised as huge pages on
    Linux) fault about 3x faster than ``torch.empty``'s; shared tensors are born in shared memory, as in
    torch's ``default_collate`` (``share_memory_()`` would copy them there).
    """
    if not shared:
        return {name: torch.from_numpy(a) for name, a in allocate_batch(batch, size, vocab).items()}
    out = {}
    for name, like in allocate_batch(0, size, vocab).items():
        shape = (batch,) + like.shape[1:]
        storage = torch.UntypedStorage._new_shared(math.prod(shape) * like.itemsize)
        out[name] = torch.empty(0, dtype=torch.from_numpy(like).dtype).set_(storage, 0, shape)
    return out


def _splits_of(root: str | os.PathLike) -> list[str]:
    """The splits of a local store (folders holding a manifest.json); none for a remote or missing root."""
    path = Path(root)
    if not path.is_dir():
        return []
    return sorted(p.parent.name for p in path.glob(f"*/{MANIFEST_NAME}"))


def open_split(root: str | os.PathLike, split: str, *, train: bool, batch_size: int = 32, seed: int = 0,
               shuffle_buffer: int = 256,
               sizes: TargetSizes = TargetSizes(), augment: AugmentConfig | None = AugmentConfig(),
               multihot_vocab: int = 0, rank: int | None = None, world_size: int | None = None,
               one_pass: bool = True) -> StudentDataset:
    """The dataset of one split, with one-line errors for a missing split or column.

    Args:
        root: store root.
        split: e.g. ``"train2017"``.
        train: shuffled, augmented stream with epoch-dependent target sizes; else one ordered pass with the final
            sizes and no augmentation.
        batch_size: samples per batch.
        seed: seed of shuffling and augmentation.
        shuffle_buffer: samples in the shuffle buffer (training).
        sizes: target size schedule.
        augment: augmentation settings (training only; None disables).
        multihot_vocab: size of the multi-hot target (0 = none).
        rank, world_size: DDP position (default env RANK / WORLD_SIZE).
        one_pass: training epochs are one pass over the split (every sample at least once, each loader worker of
            every rank the same whole number of batches, padded from the epoch's start: see
            ``StoreReader(worker_batch=...)``); False: the endless resampled stream (draws with replacement).

    Raises:
        StoreError: the split does not exist or lacks a needed column.
    """
    try:
        manifest = load_manifest_at(root, split)
    except StoreError:
        splits = _splits_of(root)
        if not splits or split in splits:  # no store there at all, or the split's manifest is damaged
            raise
        raise StoreError(f"store {root} has no split {split!r} (it has {', '.join(splits)}); build it with "
                         f"`pipeline build-targets --split {split}`, or pick another with --train-split / "
                         "--val-split") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise StoreError(f"store {root} split {split} lacks column(s) {', '.join(missing)}; build them with "
                         f"`pipeline build-targets --split {split} --stages {','.join(missing)}`")
    reader = StoreReader(root, split, REQUIRED_COLUMNS, shuffle=train, seed=seed, shuffle_buffer=shuffle_buffer,
                         resampled=train and not one_pass, rank=rank, world_size=world_size, decode=False,
                         remainder="pad" if train else "uneven",  # evaluation: every sample once, none twice
                         worker_batch=batch_size if train and one_pass else 0)
    transform = SampleTransform(sizes, augment if train else None, seed, multihot_vocab, 0 if train else None,
                                store_size=manifest.size)
    return StudentDataset(reader, transform, batch_size)


def parse_mix(value: str) -> dict[str, float]:
    """``"train2017"`` -> {train2017: 1}; ``"train2017:3,unlabeled2017:1"`` -> each split with its weight.

    Raises:
        ValueError: a weight that is not a positive number, a split named twice, no split.
    """
    mix: dict[str, float] = {}
    for part in (p.strip() for p in value.split(",")):
        name, _, weight = part.partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            w = -1.0
        if not name or not (w > 0 and math.isfinite(w)):
            raise ValueError(f"--train-split {value!r}: give SPLIT or SPLIT:WEIGHT,SPLIT:WEIGHT,... with positive "
                             "weights")
        if name in mix:
            raise ValueError(f"--train-split {value!r}: split {name} is named twice")
        mix[name] = w
    return mix


class MixedReader:
    """The samples of several splits, each draw from split s with probability weight(s) / sum of the weights:
    every split's reader is an endless resampled stream, and a seeded draw (per epoch and loader worker) picks
    which one gives the next sample. Looks like a ``StoreReader`` to :class:`StudentDataset`.
    """

    def __init__(self, readers: dict[str, StoreReader], weights: dict[str, float], seed: int = 0) -> None:
        self.readers, self.weights, self.seed = readers, weights, seed
        self.epoch = 0
        first = next(iter(readers.values())).manifest
        self.manifest = Manifest(split="+".join(readers), size=first.size, shard_size=first.shard_size,
                                 shards=[e for r in readers.values() for e in r.manifest.shards])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for r in self.readers.values():
            r.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import random

        info = torch.utils.data.get_worker_info()
        rng = random.Random(f"mix:{self.seed}:{self.epoch}:{info.id if info is not None else 0}")
        names = list(self.readers)
        streams = {s: iter(r) for s, r in self.readers.items()}
        weights = [self.weights[s] for s in names]
        while True:
            split = rng.choices(names, weights)[0]
            yield {**next(streams[split]), "__split__": split}


def open_mixed(root: str | os.PathLike, mix: dict[str, float], *, batch_size: int = 32, seed: int = 0,
               shuffle_buffer: int = 256, sizes: TargetSizes = TargetSizes(),
               augment: AugmentConfig | None = AugmentConfig(), multihot_vocab: int = 0, rank: int | None = None,
               world_size: int | None = None) -> StudentDataset:
    """The training dataset of several splits of one store drawn as ``mix`` weighs them (see :class:`MixedReader`).

    Raises:
        StoreError: a split is missing or lacks a column, has no samples, or has another store size or another
            vocabulary than the first (their tokens would mean other words).
    """
    parts = {s: open_split(root, s, train=True, batch_size=batch_size, seed=seed, shuffle_buffer=shuffle_buffer,
                           sizes=sizes, augment=augment, multihot_vocab=multihot_vocab, rank=rank,
                           world_size=world_size, one_pass=False) for s in mix}
    first = next(iter(parts))
    vocab = {s: _vocab_bytes(root, s) for s in parts}
    for s, ds in parts.items():
        if ds.manifest.num_samples == 0:
            raise StoreError(f"split {s!r} of store {root} has no samples to draw")
        if ds.manifest.size != parts[first].manifest.size:
            raise StoreError(f"splits {first} and {s} of store {root} have {parts[first].manifest.size}- and "
                             f"{ds.manifest.size}-pixel samples; mixed splits must share the store size")
        if vocab[s] != vocab[first]:
            raise StoreError(f"splits {first} and {s} of store {root} have different vocab.json files: their tokens "
                             f"name other words; build {s} with --vocab-split {first}")
    reader = MixedReader({s: ds.reader for s, ds in parts.items()}, mix, seed)
    return StudentDataset(reader, parts[first].transform, batch_size)  # type: ignore[arg-type]


def _vocab_bytes(root: str | os.PathLike, split: str) -> bytes | None:
    from shards.streams import join, read_bytes

    try:
        return read_bytes(join(root, split, VOCAB_NAME))
    except OSError:
        return None


def skip_remainder(skip_batches: int, workers: int) -> int:
    """Batches a resumed loader still yields before the saved position (see ``StudentDataset.set_epoch``)."""
    return skip_batches % max(1, workers)


def make_loader(dataset: StudentDataset, workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over the dataset's batches (the dataset splits shards across workers itself).

    Consumers hand each batch back with ``dataset.release(batch)`` when done with it, so its buffers are
    reused (see :class:`_SlotRing`); the previous loader of the dataset must be finished with.
    """
    dataset.slots = torch.zeros((max(1, workers), SLOTS_PER_WORKER), dtype=torch.uint8)
    if workers:
        dataset.slots.share_memory_()
    return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=False, worker_init_fn=ignore_stop_signals if workers else None)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """In a loader worker: ignore SIGINT, SIGTERM and SIGUSR1. A signal sent to the whole process group (Ctrl-C in
    a terminal, ``timeout``, ``kill -- -PGID``) would otherwise end the workers first and turn the main process's
    clean stop into a "worker exited unexpectedly" error; the main process decides, and ends its workers itself
    (they also end when it dies: torch's workers watch their parent)."""
    for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    sys.excepthook = _quiet_when_the_parent_leaves


def _quiet_when_the_parent_leaves(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    """A loader worker's excepthook: the connection errors of its resource-sharing thread when the main process
    stops while a batch's shared memory is being handed over are the stop, not a fault; the rest is printed."""
    if issubclass(kind, (OSError, EOFError)):
        return
    sys.__excepthook__(kind, value, tb)


def close_loader(batches: Iterator[Any] | None) -> None:
    """End the worker processes of a DataLoader iterator now, as its ``__del__`` would.

    An exception raised out of a loop over the iterator keeps it alive in a reference cycle (through the
    traceback's frames) until the garbage collector runs, and the collector's shutdown of its workers then
    takes seconds per worker; call this in a ``finally`` around such loops. Single-process iterators have
    nothing to end.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> dict[str, torch.Tensor]:
    """Move a host batch to the device (non-blocking) and convert it to float there. ``channels_last``: the images
    keep the host's HWC order in memory (NCHW shape, channels-last strides), as a channels-last network takes them.

    Returns:
        ``images`` (B, 3, S, S) uint8, ``targets`` (B, 44, S, S) float32, ``pose_mask`` (B, S, S) float32,
        ``glove`` (B, 8, 300) float32 and, when present, ``multihot`` (B, V) float32.
    """
    moved = {k: (v.view(torch.int16) if v.dtype == torch.uint16 else v).to(device, non_blocking=True)
             for k, v in batch.items() if isinstance(v, torch.Tensor)}  # uint16 travels as its int16 bits
    # HWC on the host (as decoded: no per-sample transpose); CHW on the device, a cheap copy there
    images = moved["image"].permute(0, 3, 1, 2)
    out = {"images": images if channels_last else images.contiguous(), "targets": device_targets(moved),
           "pose_mask": moved["pose_mask"].float(), "glove": moved["glove"].float()}
    if "multihot" in moved:
        out["multihot"] = moved["multihot"].float()
    return out


class DeviceFeed:
    """Host batches to the device (:func:`to_device`). On CUDA with ``overlap``, a batch's copy and float
    conversion run on a side stream, so that the next batch can travel while the current step computes: ``send``
    it early, ``receive`` it when its step begins, before sending the one after it (the current stream then waits
    for everything sent so far). Elsewhere ``send`` is ``to_device`` and ``receive`` returns its argument."""

    def __init__(self, device: torch.device, channels_last: bool = False, overlap: bool = True) -> None:
        self.device = device
        self.channels_last = channels_last
        self.stream = torch.cuda.Stream(device) if overlap and device.type == "cuda" else None

    def send(self, host: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Start moving ``host`` to the device (pinned host memory makes the copy asynchronous)."""
        if self.stream is None:
            return to_device(host, self.device, self.channels_last)
        with torch.cuda.stream(self.stream):
            return to_device(host, self.device, self.channels_last)

    def receive(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch ``send`` gave, safe to use on the current stream."""
        if self.stream is None:
            return batch
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        for tensor in batch.values():
            tensor.record_stream(current)  # its memory (allocated on the side stream) is in use on this one
        return batch
