"""COCO 2017 reader: one ``ImageRecord`` per image id of a split, with persons, crowd regions, captions, panoptic.

A split is ``<root>/<split>/`` (images) plus ``<root>/annotations/{instances,person_keypoints,captions}_<split>.json``
and, optionally, ``panoptic_<split>.json`` with its PNG folder ``panoptic_<split>/``. Annotation files are
parsed with orjson and indexed with pycocotools; a missing or malformed file ends in one :class:`CocoError` naming
it.
"""

from __future__ import annotations

import contextlib
import gc
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED_KINDS = ("instances", "person_keypoints", "captions")
PERSON_CATEGORY_ID = 1
NUM_KEYPOINTS = 17


class CocoError(RuntimeError):
    """A COCO annotation file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class ImageRecord:
    """Everything the pipeline knows about one COCO image before any teacher runs.

    Attributes:
        image_id: COCO image id.
        file_name: file name inside the split's image folder.
        path: absolute path of the image file.
        width: width recorded in the annotations.
        height: height recorded in the annotations.
        persons: non-crowd people, each ``{"keypoints": 17 x [x, y, v], "bbox": [x, y, w, h]}``.
        crowd: crowd regions, each ``{"bbox": [...], "segmentation": RLE dict or list of polygons}``.
        captions: the human captions.
        panoptic: ``None`` or ``{"file": absolute PNG path, "segments_info": [...]}``.
        keypoints_annotated: the split has person keypoint annotations (an image without persons then has none);
            False for images only (unlabeled2017, folders, videos), where no persons says nothing.
    """

    image_id: int
    file_name: str
    path: str
    width: int
    height: int
    persons: list[dict[str, Any]] = field(default_factory=list)
    crowd: list[dict[str, Any]] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    panoptic: dict[str, Any] | None = None
    frame: int | None = None  # a video source's frame: ``path`` is the video, ``file_name`` "video@frame"
    time: float | None = None  # that frame's time in seconds
    keypoints_annotated: bool = False

    def to_record(self) -> dict[str, Any]:
        """JSON-able dict of the record (what ground-truth teachers receive as ``TeacherInput.record``)."""
        return {
            "image_id": self.image_id, "file_name": self.file_name, "path": self.path,
            "width": self.width, "height": self.height,
            "persons": [dict(p) for p in self.persons], "crowd": [dict(c) for c in self.crowd],
            "captions": list(self.captions),
            "panoptic": None if self.panoptic is None else dict(self.panoptic),
            "keypoints_annotated": self.keypoints_annotated,
            **({"frame": self.frame, "time": self.time} if self.frame is not None else {}),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "ImageRecord":
        """Rebuild a record from :meth:`to_record`'s dict."""
        return cls(**{k: record[k] for k in cls.__dataclass_fields__ if k in record})


def annotation_path(coco_root: str | Path, kind: str, split: str) -> Path:
    """Path of ``annotations/<kind>_<split>.json``."""
    return Path(coco_root) / "annotations" / f"{kind}_{split}.json"


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection inside: parsing a split's annotations makes millions of objects, and each
    automatic full collection scans all of them (on train2017 they took longer than the parsing)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise CocoError(f"COCO annotation file not found: {path}; unzip COCO's annotations_trainval2017.zip "
                        f"into {path.parent.parent} (it makes annotations/)")


def _load_json(path: Path) -> dict[str, Any]:
    import orjson  # about 2.5x faster than json on COCO's annotation files

    _require_file(path)
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as e:
        raise CocoError(f"COCO annotation file {path} cannot be read: {e}") from None
    except orjson.JSONDecodeError as e:  # also invalid UTF-8
        raise CocoError(f"COCO annotation file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CocoError(f"COCO annotation file {path} is malformed: no 'images' list")
    if not isinstance(data.get("annotations", []), list):
        raise CocoError(f"COCO annotation file {path} is malformed: 'annotations' is not a list")
    return data


def _index(data: dict[str, Any], path: Path):
    """Build pycocotools' index (quietly: it prints progress)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError) as e:
        raise CocoError(f"COCO annotation file {path} is malformed: {type(e).__name__} {e}") from None
    return coco


def _person(ann: dict[str, Any], path: Path) -> dict[str, Any]:
    kps = ann.get("keypoints") or [0] * (3 * NUM_KEYPOINTS)
    if len(kps) != 3 * NUM_KEYPOINTS:
        raise CocoError(f"COCO annotation file {path} is malformed: annotation {ann.get('id')} has "
                        f"{len(kps)} keypoint values, expected {3 * NUM_KEYPOINTS}")
    triples = [[float(x), float(y), int(v)] for x, y, v in zip(kps[0::3], kps[1::3], kps[2::3])]
    return {"keypoints": triples, "bbox": [float(v) for v in ann["bbox"]]}


def _add_images(images: dict[int, dict[str, Any]], data: dict[str, Any], path: Path) -> None:
    """Add the image entries of one annotation file to ``images`` (by id; the first file to list an id wins)."""
    for img in data["images"]:
        try:
            images.setdefault(int(img["id"]), img)
            int(img["width"]), int(img["height"]), str(img["file_name"])
        except (KeyError, TypeError, ValueError):
            raise CocoError(f"COCO annotation file {path} is malformed: image entry {img!r:.80} "
                            "needs id, file_name, width and height") from None


def _people(data: dict[str, Any], path: Path, images: dict[int, dict[str, Any]], dropped: list[dict[str, Any]]
            ) -> tuple[dict[int, list], dict[int, list]]:
    """Persons and crowd regions per image id of a person_keypoints file; an annotation whose box, keypoints or
    crowd segmentation is not well formed for its image is left out, with a line in ``dropped``."""
    persons: dict[int, list] = {}
    crowd: dict[int, list] = {}
    for image_id, anns in _index(data, path).imgToAnns.items():
        for ann in anns:
            try:
                if int(ann["category_id"]) != PERSON_CATEGORY_ID:
                    continue
                image = images.get(image_id, {})
                problem = annotation_problem(ann, int(image.get("width", 0)), int(image.get("height", 0)))
                if problem:
                    dropped.append({"image_id": int(image_id), "annotation_id": ann.get("id"),
                                    "file": path.name, "reason": problem})
                    continue
                if ann.get("iscrowd", 0):
                    crowd.setdefault(image_id, []).append({"bbox": [float(v) for v in ann["bbox"]],
                                                           "segmentation": ann["segmentation"]})
                else:
                    persons.setdefault(image_id, []).append(_person(ann, path))
            except (KeyError, TypeError, ValueError) as e:
                raise CocoError(f"COCO annotation file {path} is malformed: annotation "
                                f"{ann.get('id')}: {type(e).__name__} {e}") from None
    return persons, crowd


def _finite(values: Any, n: int | None = None) -> bool:
    return (isinstance(values, list) and (n is None or len(values) == n)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))


def annotation_problem(ann: dict[str, Any], width: int, height: int) -> str | None:
    """Why a person annotation cannot be used as it is (a box that is not 4 finite numbers with w, h >= 0;
    keypoints that are not 17 finite triples with visibility 0, 1 or 2; a crowd RLE whose size is not the image's
    or whose counts do not cover it exactly; polygons that are not lists of at least 3 finite points), or None.

    A crowd RLE covering less than its image would make pycocotools decode memory it never wrote (a build
    differing from run to run), more than it would be cut: both are refused here."""
    bbox = ann.get("bbox")
    if not (_finite(bbox, 4) and bbox[2] >= 0 and bbox[3] >= 0):
        return f"bbox {str(bbox)[:60]} is not 4 finite numbers [x, y, w >= 0, h >= 0]"
    if not ann.get("iscrowd", 0):
        kps = ann.get("keypoints")
        if kps is None or kps == []:
            return None
        if not (_finite(kps, 3 * NUM_KEYPOINTS) and all(v in (0, 1, 2) for v in kps[2::3])):
            return f"keypoints are not {NUM_KEYPOINTS} finite [x, y, v] triples with v in 0, 1, 2"
        return None
    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and size == [height, width]):
            return f"crowd RLE size {str(size)[:40]} is not the image's [height, width] [{height}, {width}]"
        try:
            runs = rle_counts(counts)
        except ValueError as e:
            return f"crowd RLE counts are malformed ({e})"
        if any(r < 0 for r in runs) or sum(runs) != height * width:
            return f"crowd RLE counts cover {sum(runs)} pixels, the image has {height * width}"
        return None
    if isinstance(seg, list) and seg and all(_finite(p) and len(p) >= 6 and len(p) % 2 == 0 for p in seg):
        return None
    return "crowd segmentation is neither an RLE nor a list of polygons of at least 3 finite points"


def rle_counts(counts: Any) -> list[int]:
    """The run lengths of a COCO RLE's ``counts``: a list of ints, or the compressed string of pycocotools'
    ``rleToString`` (6-bit groups, deltas from the run two before), decoded here with bounds checks."""
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            raise ValueError("counts hold a value that is not an integer")
        return counts
    if not isinstance(counts, (str, bytes)):
        raise ValueError(f"counts are {type(counts).__name__}, not a list or a string")
    s = counts.encode() if isinstance(counts, str) else counts
    runs: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("the string ends inside a number")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"byte {s[p]!r} at {p} is not an RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
            if k > 13:
                raise ValueError("a number longer than 64 bits")
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _captions(data: dict[str, Any], path: Path) -> dict[int, list[str]]:
    """The captions per image id of a captions file, in annotation id order."""
    captions: dict[int, list[str]] = {}
    for image_id, anns in _index(data, path).imgToAnns.items():
        for ann in sorted(anns, key=lambda a: a["id"]):
            if "caption" not in ann:
                raise CocoError(f"COCO annotation file {path} is malformed: annotation {ann.get('id')} has no "
                                "'caption'")
            captions.setdefault(image_id, []).append(str(ann["caption"]).strip())
    return captions


def load_split(coco_root: str | Path, split: str, dropped: list[dict[str, Any]] | None = None) -> list[ImageRecord]:
    """Read every image of a COCO split with its annotations.

    The annotation files are read one at a time, each dropped once what is used of it is taken (of
    ``instances``, only its image list: its annotations are not used).

    Args:
        coco_root: folder holding ``<split>/`` and ``annotations/``.
        split: e.g. ``"train2017"``.

        dropped: filled with one line per person annotation left out as malformed (``annotation_problem``):
            image id, annotation id, file and reason.

    Returns:
        One record per image id listed in any of the split's annotation files, sorted by id. Images
        without annotations are included with empty lists. A split with ``image_info_<split>.json`` and no
        captions file (COCO's unlabeled2017, test2017) gives its images without annotations.

    Raises:
        CocoError: a required annotation file is missing or malformed (the message names it).
    """
    root = Path(coco_root).resolve()
    image_dir = root / split
    images: dict[int, dict[str, Any]] = {}
    info = annotation_path(root, "image_info", split)
    if not annotation_path(root, "captions", split).exists() and info.exists():  # unlabeled2017, test2017
        with _gc_paused():
            data = _load_json(info)
            _add_images(images, data, info)
        return [ImageRecord(image_id=i, file_name=str(images[i]["file_name"]),
                            path=str(image_dir / images[i]["file_name"]), width=int(images[i]["width"]),
                            height=int(images[i]["height"])) for i in sorted(images)]
    with _gc_paused():
        paths = {kind: annotation_path(root, kind, split) for kind in REQUIRED_KINDS}
        for path in paths.values():  # a missing file fails before a minute of parsing the others
            _require_file(path)
        data = _load_json(paths["instances"])
        _add_images(images, data, paths["instances"])
        del data  # before the next file is parsed: one file's objects in memory at a time
        data = _load_json(paths["person_keypoints"])
        _add_images(images, data, paths["person_keypoints"])
        persons, crowd = _people(data, paths["person_keypoints"], images, [] if dropped is None else dropped)
        del data
        data = _load_json(paths["captions"])
        _add_images(images, data, paths["captions"])
        captions = _captions(data, paths["captions"])
        del data
        panoptic = _load_panoptic(root, split)
        return [
            ImageRecord(
                image_id=i, file_name=str(images[i]["file_name"]), path=str(image_dir / images[i]["file_name"]),
                width=int(images[i]["width"]), height=int(images[i]["height"]),
                persons=persons.get(i, []), crowd=crowd.get(i, []), captions=captions.get(i, []),
                panoptic=panoptic.get(i), keypoints_annotated=True,
            )
            for i in sorted(images)
        ]


def _load_panoptic(root: Path, split: str) -> dict[int, dict[str, Any]]:
    """Panoptic ground truth per image id, or nothing when the split has no panoptic json."""
    path = annotation_path(root, "panoptic", split)
    if not path.exists():
        return {}
    data = _load_json(path)
    png_dir = root / "annotations" / f"panoptic_{split}"
    out: dict[int, dict[str, Any]] = {}
    for ann in data.get("annotations", []):
        try:
            out[int(ann["image_id"])] = {"file": str(png_dir / ann["file_name"]),
                                         "segments_info": list(ann["segments_info"])}
        except (KeyError, TypeError, ValueError) as e:
            raise CocoError(f"COCO annotation file {path} is malformed: {type(e).__name__} {e}") from None
    return out
