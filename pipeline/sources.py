"""Image collections beside annotated COCO splits: any folder of images (``--images DIR``), with stable keys.

A folder's images get 12-digit ids from an id map written with the split, ``<split>/ids.json``, which only grows:
a file keeps its id for good, a new file gets the next free id (new files in path order), and a removed file's id
is never given again. Shards cut the images in id order, so added files land in the last shards; every shard
has a digest of what it holds (ids, paths, sizes, modification times), and a shard whose digest changed (new,
changed or removed files) is rebuilt in every column, the others are left alone.

The id map is the store's data: it is read as such (a capped read, every entry checked) and names files inside
the folder only; it never chooses which folder is read (``--images`` does).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

from shards.atomic import atomic_write_json
from shards.errors import StoreFault, parse_json
from shards.schema import FINGERPRINT_RE, KEY_DIGITS, SOURCE_IDS_NAME, shard_name
from shards.streams import read_bytes

from pipeline.coco import ImageRecord

#: the file types a folder source takes (case-insensitive), those OpenCV decodes
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
MAX_VIDEO_FRAMES = 10_000_000  # frames a video header may declare (about 4 days at 30 fps)
IDS_FORMAT = "ymap-ids/1"
MAX_ID = 10 ** KEY_DIGITS - 1


@dataclass
class FolderListing:
    """A folder's images: (path relative to it, POSIX; size; modification time in ns), sorted by path."""

    root: Path
    files: list[tuple[str, int, int]] = field(default_factory=list)
    frames: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # "video@frame" -> (video, frame, time)
    notes: list[str] = field(default_factory=list)  # what was left out, and why (said before the build starts)


def list_images(root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> FolderListing:
    """Every file of ``extensions`` under ``root`` (recursive; symlinks and hidden entries are not followed or
    taken)."""
    root = Path(root)
    out = FolderListing(root)
    odd: list[str] = []

    def walk(folder: str, rel: str) -> Iterator[tuple[str, int, int]]:
        with os.scandir(folder) as entries:
            for e in sorted(entries, key=lambda e: e.name):
                if e.name.startswith("."):
                    continue
                name = f"{rel}{e.name}"
                if e.is_dir(follow_symlinks=False):
                    yield from walk(e.path, name + "/")
                elif e.name.lower().endswith(extensions):
                    if not _plain_relative(name):  # a name the id map could not hold (not UTF-8, "\\", "c:")
                        odd.append(name.encode("utf-8", "backslashreplace").decode())
                        continue
                    st = e.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        yield name, st.st_size, st.st_mtime_ns

    out.files = sorted(walk(str(root), ""))
    if odd:
        out.notes.append(f"{len(odd)} file(s) left out: their names are not plain UTF-8 paths (first: {odd[0][:100]})")
    return out


def list_video_frames(root: str | os.PathLike, frame_step: int = 0, fps: float = 0.0) -> FolderListing:
    """The sampled frames of every video under ``root`` (a folder, searched as ``list_images`` does, or one
    video file): every ``frame_step``-th frame, or ``fps`` frames per second of the video's own rate (default:
    one per second). Each frame is an entry ``"<video>@<frame, 7 digits>"`` with the video's size and mtime."""
    import cv2

    root = Path(root)
    if root.is_file():
        videos = FolderListing(root.parent)
        st = root.stat()
        videos.files = [(root.name, st.st_size, st.st_mtime_ns)]
    else:
        videos = list_images(root, VIDEO_EXTENSIONS)
    out = FolderListing(videos.root, notes=list(videos.notes))
    unread = []
    for name, size, mtime in videos.files:
        cap = cv2.VideoCapture(str(videos.root / name))
        try:
            count, rate = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        finally:
            cap.release()
        if not (0 < count <= MAX_VIDEO_FRAMES and 0 < rate <= 1000):  # unreadable, or a header not to be believed
            unread.append(name)
            continue
        step = frame_step if frame_step > 0 else max(1, round(rate / (fps if fps > 0 else 1.0)))
        for frame in range(0, count, step):
            key = f"{name}@{frame:07d}"
            out.files.append((key, size, mtime))
            out.frames[key] = (name, frame, round(frame / rate, 6))
    if unread:
        out.notes.append(f"{len(unread)} video(s) left out: OpenCV reads no frame count and rate from them, or a "
                         f"count over {MAX_VIDEO_FRAMES} (first: {unread[0]})")
    return out


class _VideoReader:
    """The frames of one video at a time, read forward (a shard's frames come in order); one per process."""

    path: str | None = None
    cap: Any = None
    pos = 0


def release_video() -> None:
    """Close the video ``read_video_frame`` holds open (end of a unit)."""
    if _VideoReader.cap is not None:
        _VideoReader.cap.release()
    _VideoReader.cap, _VideoReader.path, _VideoReader.pos = None, None, 0


def read_video_frame(path: str, frame: int, max_pixels: int) -> Any:
    """Frame ``frame`` of the video at ``path`` as RGB uint8.

    Raises:
        RejectedImage: the video cannot be opened, holds no such frame, or its frames exceed ``max_pixels``.
    """
    import cv2

    from shards.images import RejectedImage

    r = _VideoReader
    if r.path != path or frame < r.pos:
        if r.cap is not None:
            r.cap.release()
        r.cap, r.path, r.pos = cv2.VideoCapture(path), path, 0
        if not r.cap.isOpened():
            r.path = None
            raise RejectedImage("undecodable", f"{path}: not a video OpenCV can read")
        w, h = int(r.cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(r.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if w * h > max_pixels:
            r.path = None
            raise RejectedImage("too-large", f"{path}: {w}x{h} frames are over {max_pixels} pixels")
        if frame > 0:
            r.cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
            r.pos = int(r.cap.get(cv2.CAP_PROP_POS_FRAMES))
    while r.pos < frame:  # forward to it
        if not r.cap.grab():
            break
        r.pos += 1
    ok, bgr = r.cap.read() if r.pos == frame else (False, None)
    if not ok or bgr is None:
        r.path = None
        raise RejectedImage("truncated", f"{path}: no frame {frame}")
    r.pos = frame + 1
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass
class IdMap:
    """The split's id map: file -> id, the next free id, and the digest of every shard as last planned."""

    ids: dict[str, int] = field(default_factory=dict)
    next_id: int = 1
    shards: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": IDS_FORMAT, "next": self.next_id, "ids": self.ids, "shards": self.shards}


def read_id_map(split_path: Path) -> IdMap:
    """The split's ``ids.json``, checked entry by entry; an empty map when there is none.

    Raises:
        StoreFault: the file is unreadable or malformed (one line; removing it renumbers the folder).
    """
    path = split_path / SOURCE_IDS_NAME
    if not path.exists():
        return IdMap()
    where = f"{path}: "
    fix = "; remove it to number the folder's images anew (the split is then rebuilt)"
    try:
        doc = parse_json(read_bytes(str(path)))
    except (OSError, ValueError) as e:
        raise StoreFault(f"{where}cannot read the id map ({e}){fix}") from None
    if not isinstance(doc, dict) or doc.get("format") != IDS_FORMAT:
        raise StoreFault(f"{where}not an id map of format {IDS_FORMAT}{fix}")
    ids, nxt, shards = doc.get("ids"), doc.get("next"), doc.get("shards", {})
    if not isinstance(ids, dict) or not isinstance(nxt, int) or not isinstance(shards, dict):
        raise StoreFault(f"{where}'ids' must be an object, 'next' an integer, 'shards' an object{fix}")
    seen: set[int] = set()
    for name, i in ids.items():
        if not _plain_relative(name):
            raise StoreFault(f"{where}{name[:100]!r} is not a path inside the folder{fix}")
        if not isinstance(i, int) or isinstance(i, bool) or not 1 <= i < nxt or i in seen:
            raise StoreFault(f"{where}{name[:100]!r} has id {i!r}: ids are distinct integers from 1 below "
                             f"'next'{fix}")
        seen.add(i)
    if not 1 <= nxt <= MAX_ID + 1:
        raise StoreFault(f"{where}'next' {nxt} is out of range{fix}")
    if not all(isinstance(k, str) and isinstance(v, str) and FINGERPRINT_RE.fullmatch(v) for k, v in shards.items()):
        raise StoreFault(f"{where}'shards' must map shard names to sha256 digests{fix}")
    return IdMap(dict(ids), nxt, dict(shards))


def _plain_relative(name: Any) -> bool:
    """A relative POSIX path inside a folder, valid UTF-8, without "..", "\\" or a drive: what the id map holds."""
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # an undecodable file name (os.fsdecode's surrogates)
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and "." not in p.parts and not re.match(r"^[A-Za-z]:", name)


@dataclass
class FolderPlan:
    """What a folder source gives the build: its records (by id), the id map to write, what changed."""

    records: list[ImageRecord]
    id_map: IdMap
    signatures: dict[int, str]  # id -> "path\tsize\tmtime" (a shard's digest covers its images')
    added: list[str]
    removed: list[str]
    notes: list[str] = field(default_factory=list)


def cut_by_id(split: str, records: Sequence[ImageRecord], next_id: int, shard_size: int
              ) -> tuple[list[str], dict[str, list[ImageRecord]]]:
    """Shard k holds the ids k * shard_size + 1 .. (k + 1) * shard_size: a removed file changes its own shard only
    and new files (the next ids) only the last ones; the number of shards never shrinks, as ids are never given
    back (a shard whose files are all gone is empty)."""
    count = max(1, -(-(next_id - 1) // shard_size))
    names = [shard_name(split, k) for k in range(count)]
    by_shard: dict[str, list[ImageRecord]] = {name: [] for name in names}
    for r in records:
        by_shard[names[(r.image_id - 1) // shard_size]].append(r)
    return names, by_shard


def plan_folder(listing: FolderListing, old: IdMap) -> FolderPlan:
    """Number the listing's files with ``old``'s ids (new files get the next free ids, in path order)."""
    ids = dict(old.ids)
    nxt = old.next_id
    present = set()
    added = []
    for name, _, _ in listing.files:
        present.add(name)
        if name not in ids:
            if nxt > MAX_ID:
                raise StoreFault(f"the id map of {listing.root} has used every {KEY_DIGITS}-digit id")
            ids[name] = nxt
            nxt += 1
            added.append(name)
    removed = sorted(n for n in old.ids if n not in present)
    root = listing.root.resolve()
    records, signatures = [], {}
    for name, size, mtime in listing.files:
        i = ids[name]
        if name in listing.frames:
            video, frame, time = listing.frames[name]
            records.append(ImageRecord(image_id=i, file_name=name, path=str(root / video), width=0, height=0,
                                       frame=frame, time=time))
        else:
            records.append(ImageRecord(image_id=i, file_name=name, path=str(root / name), width=0, height=0))
        signatures[i] = f"{name}\t{size}\t{mtime}"
    records.sort(key=lambda r: r.image_id)
    return FolderPlan(records, IdMap(ids, nxt, dict(old.shards)), signatures, added, removed, list(listing.notes))


def shard_digests(by_shard: dict[str, Sequence[ImageRecord]], signatures: dict[int, str]) -> dict[str, str]:
    """sha256 of each shard's images (id and signature, in order): it changes when a file is added to the shard,
    removed from it, or changed (size or modification time)."""
    out = {}
    for shard, recs in by_shard.items():
        h = hashlib.sha256()
        for r in recs:
            h.update(f"{r.image_id}\t{signatures[r.image_id]}\n".encode())
        out[shard] = h.hexdigest()
    return out


def forget_shards(split_path: Path, shards: set[str]) -> int:
    """Drop the records of ``shards`` from every version of every column of the split (their contents changed):
    they are no longer done anywhere, so the build writes them again. Returns the records dropped."""
    from shards.writer import ColumnWriter

    dropped = 0
    if not shards or not split_path.is_dir():
        return 0
    for record in sorted(split_path.glob("*/*/column.json")):
        column, fp = record.parent.parent.name, record.parent.name
        if not FINGERPRINT_RE.fullmatch(fp) or record.is_symlink():
            continue
        try:
            dropped += ColumnWriter(split_path, column, fp).forget(shards)
        except KeyError:  # not a column of this store format
            continue
    return dropped


def write_id_map(split_path: Path, id_map: IdMap) -> None:
    split_path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(split_path / SOURCE_IDS_NAME, id_map.to_json())
