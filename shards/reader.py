"""Joined streaming reader of a split: chosen columns read shard by shard in lockstep and joined by key.

The reader is a chain of small generator stages, as in webdataset: shard list (seeded shuffle, or endless
resampling) -> split by node (rank / world size) -> split by DataLoader worker -> open every chosen column
of a shard and join their samples by key -> buffered sample shuffle -> decode with ``shards.codecs``.
torch is never imported here: the DataLoader worker is detected only when torch is already loaded.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import os
import random
import sys
from contextlib import ExitStack
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

from shards.codecs import CodecError, decode_member
from shards.errors import parse_json
from shards.manifest import Manifest, StoreError, StoreFault
from shards.schema import COLUMN_RECORD_NAME, COLUMNS, FINGERPRINT_RE, MANIFEST_NAME
from shards.streams import HashingReader, TarError, iter_samples, join, open_stream, read_bytes, whole_samples
from shards.writer import ShardRecord, read_column_record

Raw = tuple[str, str, dict[str, bytes]]  # (shard, key, {ext: bytes}) of all chosen columns
Segment = tuple[str, int, int]  # (shard, first sample, end sample): the piece of a shard a rank reads
REMAINDERS = ("pad", "drop", "uneven")  # StoreReader's remainder: how ranks share an epoch's samples
DECODE_CHUNK_PIXELS = 64 * 256 * 256  # decode 64 samples of 256x256 (about 48 MB of arrays) at a time
DECODE_CHUNK_SAMPLES = 64  # and never more samples than this (small stores), so the first one comes soon


def load_manifest_at(root: str | os.PathLike, split: str) -> Manifest:
    """Read ``<root>/<split>/manifest.json`` from a local path, fsspec URL or ``pipe:`` command.

    Raises:
        StoreError: the manifest is missing, corrupt, malformed or of another store format.
    """
    location = join(root, split, MANIFEST_NAME)
    try:
        doc = parse_json(read_bytes(location))
    except (OSError, ValueError) as e:
        hint = f"; is {root} a store with split {split!r}?" if isinstance(e, (FileNotFoundError, ValueError)) else ""
        raise StoreError(f"{location}: cannot read the manifest ({e}){hint}") from None
    return Manifest.from_json(doc, location)


def active_column_records(root: str | os.PathLike, split: str, column: str, fingerprint: str
                          ) -> dict[str, ShardRecord]:
    """The shard records (``column.json``) of version ``fingerprint`` of ``column`` under a store root (a local
    path, fsspec URL or ``pipe:`` command).

    Raises:
        StoreFault: the record is missing, unreadable, malformed, or of another version.
    """
    try:
        return read_column_record(join(root, split, column, fingerprint, COLUMN_RECORD_NAME), fingerprint)
    except StoreFault as e:
        raise StoreFault(f"column {column!r}: {e}; run `shards verify`") from None


def node_and_worker(rank: int | None = None, world_size: int | None = None) -> tuple[int, int, int, int]:
    """``(rank, world_size, worker, num_workers)`` of the calling process.

    rank / world size default to the RANK / WORLD_SIZE environment variables, else 0 / 1; the worker
    comes from ``torch.utils.data.get_worker_info()`` when torch is loaded, else 0 / 1.
    """
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    worker, num_workers = 0, 1
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    if info is not None:
        worker, num_workers = info.id, info.num_workers
    return rank, world_size, worker, num_workers


class StoreReader:
    """Iterable over the joined samples of a split of the store.

    Args:
        root: the store root (local path, fsspec URL, or ``pipe:`` command template).
        split: split name, e.g. ``"train2017"``.
        columns: column names to read; ``None`` = every active column of the manifest.
        shuffle: shuffle shards (per epoch) and samples (through a buffer).
        seed: seed of every random choice; the same seed and epoch give the same order.
        shuffle_buffer: samples held for the sample shuffle.
        resampled: draw shards at random with replacement, forever (training); no node split needed.
        rank, world_size: this node's share of the samples (default env RANK / WORLD_SIZE, else 0 / 1).
        remainder: how an epoch's samples are shared by several ranks, which each get one contiguous run of the
            epoch's shard order (split inside shards where needed, so ranks outnumbering shards still get samples):
            ``"pad"`` (default) gives every rank ceil(N / ranks) samples, the last ranks taking again samples from
            the start of the epoch (as torch's DistributedSampler pads), so a collective per batch (DDP) never
            waits on a rank that ran out; ``"drop"`` gives every rank floor(N / ranks), leaving the rest out of
            that epoch; ``"uneven"`` gives every sample exactly once, ranks differing by at most one (evaluation
            without a collective per batch). With one rank all three read every sample once.
        worker_batch: when > 0, every DataLoader worker of every rank gets its own contiguous run of the epoch
            (shares as ``remainder`` says, over ranks x workers), the same number of samples for all, a multiple
            of ``worker_batch`` ("pad" rounds up, "drop" down): whole batches in a fixed round-robin, which a
            trainer's mid-epoch resume counts on. 0 (default): a rank's workers share its pieces of shards.
        decode: decode members with ``shards.codecs``; ``False`` yields raw bytes.
        versions: column -> fingerprint of a version to read instead of the active one (an older version kept
            until ``gc``, a new one not yet active); it must hold every shard of the manifest's plan.
        check: check every tar read to its end against its ``column.json`` record (size and sha256, hashed while
            it streams): a store changed after it was written (a flipped bit that still decodes, a replaced
            file) ends the iteration with a StoreFault once that shard has been read (its samples are yielded
            by then: a training run stops after at most one such shard per worker, instead of going on).

    Each sample is ``{"__key__": key, "__shard__": shard, ext: value, ...}`` with every member of the
    chosen columns. Without resampling, an epoch is one pass over the split's samples: each rank takes its run
    of them (see ``remainder``), and its DataLoader workers share that run's pieces of shards round-robin (a
    worker without a piece yields nothing).
    """

    def __init__(self, root: str | os.PathLike, split: str, columns: Sequence[str] | None = None, *,
                 shuffle: bool = False, seed: int = 0, shuffle_buffer: int = 256, resampled: bool = False,
                 rank: int | None = None, world_size: int | None = None, decode: bool = True,
                 check: bool = True, remainder: str = "pad", worker_batch: int = 0,
                 versions: Mapping[str, str] | None = None) -> None:
        if remainder not in REMAINDERS:
            raise ValueError(f"remainder {remainder!r}: use one of {', '.join(REMAINDERS)}")
        self.root = str(root)
        self.split = split
        self.manifest = load_manifest_at(root, split)
        active = self.manifest.columns
        chosen = list(active) if columns is None else list(dict.fromkeys(columns))
        for name in chosen:
            if name not in COLUMNS:
                raise StoreError(f"unknown column {name!r}; columns are: {', '.join(COLUMNS)}")
            if name not in active and name not in (versions or {}):
                raise StoreError(f"column {name!r} is not active in {join(root, split, MANIFEST_NAME)} "
                                 f"(active: {', '.join(active) or 'none'}); build it first")
        if not chosen:
            raise StoreError(f"{join(root, split, MANIFEST_NAME)}: no active column to read")
        self.columns = tuple(chosen)
        self.versions = {c: (versions or {}).get(c) or active[c] for c in chosen}
        for c, fp in (versions or {}).items():  # the manifest's own names are checked as it is read
            if not FINGERPRINT_RE.fullmatch(fp):
                raise StoreError(f"column {c!r}: {fp!r} is not a version fingerprint (64 hex digits)")
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.resampled = resampled
        self.rank = rank
        self.world_size = world_size
        self.decode = decode
        self.remainder = remainder
        self.worker_batch = worker_batch
        self.epoch = 0
        self._yielded = 0  # samples the current iteration has given out (its position, for state_dict)
        self._skip = 0  # samples the next iteration skips (load_state_dict)
        self._exts = {c: frozenset(COLUMNS[c].exts) for c in self.columns}
        self._decoders: dict[str, Callable[[bytes], Any]] = {  # images are checked against S before decoding
            m.ext: functools.partial(decode_member, m, size=self.manifest.size)
            for c in self.columns for m in COLUMNS[c].members}
        self.records = ({c: active_column_records(root, split, c, self.versions[c]) for c in self.columns} if check
                        else None)
        for c in (versions or {}):
            plan = {e.name: e.count for e in self.manifest.shards}
            got = {name: rec.count for name, rec in (self.records or {}).get(c, {}).items()}
            if self.records is not None and got != plan:
                raise StoreError(f"version {self.versions[c][:12]} of column {c!r} does not hold the split's "
                                 f"{len(plan)} shards as planned ({len(got)} recorded): another shard plan, or "
                                 "not finished")

    def set_epoch(self, epoch: int) -> None:
        """Reseed the shard and sample shuffles (and the resampling) for ``epoch``; a position loaded for another
        epoch is dropped."""
        if epoch != self.epoch:
            self._skip = 0
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """The position of this process's iteration: its epoch and the samples it has given out in it (the
        protocol of torchdata's ``StatefulDataLoader``, which calls it in each loader worker)."""
        return {"epoch": self.epoch, "samples": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from :meth:`state_dict`: the next iteration is of that epoch and skips the samples already given
        out (read and shuffled as before, so the rest come in the same order, but not decoded)."""
        if not (isinstance(state, dict) and all(isinstance(state.get(k), int) and not isinstance(state[k], bool)
                                                and state[k] >= 0 for k in ("epoch", "samples"))):
            raise ValueError(f"not a StoreReader position: {str(state)[:80]} (expected {{'epoch': E, 'samples': N}})")
        self.epoch, self._skip = state["epoch"], state["samples"]

    def shard_location(self, column: str, shard: str) -> str:
        """Where the tar of ``shard`` of the active version of ``column`` lives."""
        return join(self.root, self.split, column, self.versions[column], f"{shard}.tar")

    def read_shard(self, shard: str, opener: Callable[[str], BinaryIO] | None = None) -> Iterator[dict[str, Any]]:
        """Every sample of one shard in stored order (no splitting, no shuffling), decoded per ``decode``;
        ``opener`` opens each column's tar (``open_stream``, or a wrapper of it that also hashes the bytes)."""
        if shard not in self.manifest.shard_names:
            raise StoreError(f"no shard {shard!r} in split {self.split!r} "
                             f"({len(self.manifest.shards)} shards: {', '.join(self.manifest.shard_names[:3])}...)")
        stream = self._join_shard(shard, opener)
        return self._decode(stream) if self.decode else self._raw(stream)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world_size, worker, num_workers = node_and_worker(self.rank, self.world_size)
        stream: Iterable[Raw]
        if self.resampled:
            stream = self._join(self._resampled_shards(f"{self.seed}:{self.epoch}:{rank}:{worker}"))
        else:
            stream = self._join(self._shards(rank, world_size, worker, num_workers))
        if self.shuffle:
            stream = _buffer_shuffle(stream, self.shuffle_buffer,
                                     random.Random(f"{self.seed}:{self.epoch}:{rank}:{worker}:samples"))
        skip, self._skip = self._skip, 0
        if skip:  # resuming inside the epoch: the samples given out before are passed over undecoded
            stream = itertools.islice(stream, skip, None)
        return self._count(self._decode(stream) if self.decode else self._raw(stream), skip)

    def _count(self, samples: Iterator[dict[str, Any]], start: int) -> Iterator[dict[str, Any]]:
        self._yielded = start
        for sample in samples:
            self._yielded += 1
            yield sample

    def _shards(self, rank: int, world_size: int, worker: int, num_workers: int) -> list[Segment]:
        """This rank's and worker's pieces of shards for the epoch: ``(shard, first sample, end)``."""
        entries = list(self.manifest.shards)
        if self.shuffle:  # same seed on every node and worker: all agree on the order before splitting
            random.Random(f"{self.seed}:{self.epoch}:shards").shuffle(entries)
        shards = [(e.name, e.count) for e in entries]
        if self.worker_batch:
            return rank_segments(shards, rank * num_workers + worker, world_size * num_workers, self.remainder,
                                 self.worker_batch)
        return rank_segments(shards, rank, world_size, self.remainder)[worker::num_workers]

    def _resampled_shards(self, seed: str) -> Iterator[Segment]:
        """Whole shards drawn at random with replacement, forever."""
        whole = [(e.name, 0, e.count) for e in self.manifest.shards]
        if not whole:
            raise StoreError(f"{join(self.root, self.split, MANIFEST_NAME)}: the split has no shards")
        rng = random.Random(seed + ":resample")
        while True:
            yield rng.choice(whole)

    def _join(self, segments: Iterable[Segment]) -> Iterator[Raw]:
        for shard, start, stop in segments:
            yield from self._join_shard(shard, start=start, stop=stop)

    def _join_shard(self, shard: str, opener: Callable[[str], BinaryIO] | None = None, start: int = 0,
                    stop: int | None = None) -> Iterator[Raw]:
        """Read every chosen column of one shard in lockstep; keys must match sample by sample. With ``check`` and
        no ``opener`` of the caller's (export passes its own and checks the tars itself), each column's tar is
        hashed as it streams and checked at the shard's end. Only samples ``start`` to ``stop`` (exclusive) are
        yielded; the rest are parsed, not decoded, so the whole shard is still checked."""
        hashed: dict[str, HashingReader] = {}
        if opener is None and self.records is not None:
            for c in self.columns:
                if shard not in self.records[c]:
                    raise StoreFault(f"shard {shard} column {c!r}: no record in column.json (the shard was never "
                                     "finished); run `shards verify`")
            opener = HashingReader
        opener = opener or open_stream
        with ExitStack() as stack:
            columns = []
            for c in self.columns:
                location = self.shard_location(c, shard)
                try:
                    f = stack.enter_context(opener(location))
                except OSError as e:
                    raise StoreFault(f"shard {shard} column {c!r}: cannot open {location} ({e})") from None
                if opener is HashingReader:
                    hashed[c] = f
                columns.append((c, iter_samples(f), self._exts[c]))
            if hashed:  # on a fault the digest is not checked: close without reading the rest (a remote shard)
                stack.callback(lambda: [stream.close(drain=False) for stream in hashed.values()])
            n = 0
            while True:
                key, merged = self._next(shard, columns[0], n)
                for c, it, exts in columns[1:]:
                    other, members = self._next(shard, (c, it, exts), n)
                    if other != key:
                        raise StoreFault(f"shard {shard}: key mismatch at sample {n}, column {columns[0][0]!r} "
                                         f"has {key or 'no more samples'} but column {c!r} has "
                                         f"{other or 'no more samples'}")
                    merged.update(members)
                if key is None:
                    for c, stream in hashed.items():
                        stream.close()
                        check_read(f"shard {shard} column {c!r}", self.records[c][shard], stream)
                    return
                n += 1
                if start < n and (stop is None or n <= stop):
                    yield shard, key, merged

    @staticmethod
    def _next(shard: str, column: tuple[str, Iterator[tuple[str, dict[str, bytes]]], frozenset[str]],
              n: int) -> tuple[str | None, dict[str, bytes]]:
        """Next ``(key, members)`` of one column, or ``(None, {})`` at its end; damage is a StoreError."""
        name, it, exts = column
        try:
            key, members = next(it)
        except StopIteration:
            return None, {}
        except TarError as e:
            raise StoreFault(f"shard {shard} column {name!r}: {e} (after {whole_samples(e, n, exts)} whole "
                             "samples)") from None
        except OSError as e:
            raise StoreFault(f"shard {shard} column {name!r}: {e} (after {n} samples)") from None
        if members.keys() != exts:
            raise StoreFault(f"shard {shard} column {name!r} key {key}: members {sorted(members)}, "
                             f"expected {sorted(exts)}")
        return key, members

    def _decode(self, stream: Iterable[Raw]) -> Iterator[dict[str, Any]]:
        """Decode a chunk of samples at a time member kind by member kind: one codec's code, tables and
        buffers stay hot (about 10% faster than sample by sample); samples still come out in order."""
        decoders = self._decoders
        size = max(1, min(DECODE_CHUNK_SAMPLES, DECODE_CHUNK_PIXELS // max(1, self.manifest.size) ** 2))
        chunk: list[Raw] = []
        for raw in stream:
            chunk.append(raw)
            if len(chunk) == size:
                yield from _decode_chunk(chunk, decoders)
                chunk = []
        yield from _decode_chunk(chunk, decoders)

    @staticmethod
    def _raw(stream: Iterable[Raw]) -> Iterator[dict[str, Any]]:
        for shard, key, members in stream:
            yield {"__key__": key, "__shard__": shard, **members}


def rank_segments(shards: Sequence[tuple[str, int]], rank: int, world_size: int, remainder: str = "pad",
                  multiple: int = 1) -> list[Segment]:
    """Rank ``rank``'s contiguous run of an epoch's samples, as pieces ``(shard, first sample, end)`` of the shards
    in their epoch order (``shards``: names and sample counts); ``remainder`` as :class:`StoreReader` has it, each
    share a multiple of ``multiple`` (not for "uneven"). One rank gets every shard whole (when ``multiple`` is 1)."""
    total = sum(count for _, count in shards)
    if total == 0 or (world_size == 1 and (multiple == 1 or remainder == "uneven")):
        return [(name, 0, count) for name, count in shards if count or world_size == 1]
    if remainder == "uneven":
        quota, extra = divmod(total, world_size)
        begin, end = rank * quota + min(rank, extra), (rank + 1) * quota + min(rank + 1, extra)
    else:
        per = world_size * multiple
        quota = (total // per if remainder == "drop" else -(-total // per)) * multiple
        begin, end = rank * quota, (rank + 1) * quota
    starts = [0]
    for _, count in shards:
        starts.append(starts[-1] + count)
    segments: list[Segment] = []
    pos = begin
    while pos < end:  # past the last sample ("pad"), the run goes on from the epoch's first
        at = pos % total
        i = bisect.bisect_right(starts, at) - 1
        take = min(end - pos, starts[i + 1] - at)
        segments.append((shards[i][0], at - starts[i], at - starts[i] + take))
        pos += take
    return segments


def check_read(where: str, rec: ShardRecord, stream: HashingReader, consequence: str = "") -> None:
    """Raise a StoreFault unless ``stream``, read to its end, had the size and sha256 that ``rec`` records."""
    if stream.error is not None:
        raise StoreFault(f"{where}: cannot read {stream.location} ({stream.error}); run `shards verify`")
    if stream.bytes != rec.bytes or stream.sha256.hexdigest() != rec.sha256:
        what = (f"{stream.bytes} bytes, column.json says {rec.bytes}" if stream.bytes != rec.bytes
                else "sha256 differs from column.json: it changed after it was written")
        raise StoreFault(f"{where}: {stream.location} is damaged ({what}); {consequence + '; ' if consequence else ''}"
                         "run `shards verify` to locate the damage")


def _decode_chunk(chunk: list[Raw], decoders: dict[str, Callable[[bytes], Any]]) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = [{"__key__": key, "__shard__": shard} for shard, key, _ in chunk]
    for ext, decode in decoders.items():
        for sample, (shard, key, members) in zip(samples, chunk):
            try:
                sample[ext] = decode(members[ext])
            except CodecError as e:
                raise StoreFault(f"shard {shard} key {key} member {ext}: {e}") from None
    return samples


def _buffer_shuffle(stream: Iterable[Raw], size: int, rng: random.Random) -> Iterator[Raw]:
    """Shuffle through a buffer of ``size`` samples (webdataset's scheme): yield a random one per arrival."""
    buf: list[Raw] = []
    for item in stream:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf
