"""`student predict`: run a trained student on images, folders and videos; write panels and JSON results."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from shards.geometry import Letterbox, letterbox_image
from shards.schema import VOCAB_NAME
from shards.taxonomy import CHANNELS, JOINTS
from shards.vocab import DEFAULT_DECODE_THRESHOLD, Vocabulary, decode_glove
from student import panels
from shards.images import RejectedImage, decode_image_bytes
from student.postprocess import Person, find_peaks, group_people, refine_depth, refine_depth_paper
from student.scoring import label_ids

REFINE_MODES = ("paper", "descent", "none")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")  # a GIF: its first frame
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
MAX_TILE = 1024  # a panel is 2 x 4 tiles: 2048 x 4096 pixels at most (an MPEG-4 frame must be < 8192 wide)


@dataclass
class Prediction:
    """Everything predicted for one image, in store geometry unless said otherwise."""

    image: np.ndarray  # (S, S, 3) uint8 letterboxed input
    geometry: Letterbox
    maps: np.ndarray | None  # (44, S, S) float32 in [-1, 1]; None: not copied back (FastPredictor(keep_maps=False))
    depth: np.ndarray  # (S, S) float32 in [0, 1], refined when refinement is on
    people: list[Person]
    words: list[tuple[str, float] | None] | None  # best word of each slot (None: empty slot); None: no vocabulary
    tokens: np.ndarray | None = None  # (8, 300) float32 token outputs
    labels: list[tuple[str, float]] | None = None  # multi-hot words above 0.25, best first; None: no such head
    word_threshold: float = DEFAULT_DECODE_THRESHOLD

    def kept_words(self) -> list[tuple[str, float] | None] | None:
        """The slot words whose similarity passes ``word_threshold`` (the others None)."""
        if self.words is None:
            return None
        return [w if w is not None and w[1] >= self.word_threshold else None for w in self.words]

    def to_json(self) -> dict:
        """People (keypoints in original-image pixels), the word of every non-empty slot with its score (``kept``:
        it passes the threshold) and the multi-hot labels above 0.25, for programs."""
        return {
            "size": list(self.geometry.orig_size),
            "joints": list(JOINTS),
            "people": [p.to_json(self.geometry) for p in self.people],
            "words": None if self.words is None else [
                None if w is None else {"word": w[0], "score": round(w[1], 4), "kept": w[1] >= self.word_threshold}
                for w in self.words],
            "labels": None if self.labels is None else [{"word": w, "score": round(p, 4)} for w, p in self.labels],
        }

    def panel(self, tile: int = 256) -> np.ndarray:
        """The (2 * tile, 4 * tile, 3) uint8 RGB panel of this prediction."""
        if self.maps is None:
            raise ValueError("this prediction kept no maps to draw (FastPredictor(keep_maps=False))")
        return panels.render_panel(self.image, self.maps, self.depth, self.people, self.kept_words(), tile,
                                   valid=self.geometry.valid_mask(), labels=self.labels)


class Predictor:
    """Letterbox -> student -> post-processing, for one image or a batch.

    Args:
        model: a ``YMapNet``.
        image_size: the model's input side S.
        vocab: caption vocabulary for decoding tokens, or None.
        device: torch device string.
        refine: depth refinement of DESIGN 5.2: ``paper`` (the paper's update rule), ``descent`` (a descent on
            the normal-consistency error) or ``none``.
        peak_threshold: minimum joint score (0..1).
        word_threshold: minimum cosine similarity of a decoded word.
    """

    def __init__(self, model: torch.nn.Module, image_size: int, vocab: Vocabulary | None = None,
                 device: str = "cpu", refine: str = "paper", peak_threshold: float = 0.5,
                 word_threshold: float = DEFAULT_DECODE_THRESHOLD) -> None:
        self.model = model.to(device).eval()
        self.size = image_size
        self.vocab = vocab
        self.device = device
        if refine not in REFINE_MODES:
            raise ValueError(f"refine must be one of {', '.join(REFINE_MODES)}, got {refine!r}")
        self.refine = refine
        self.peak_threshold = peak_threshold
        self.word_threshold = word_threshold

    def __call__(self, image: np.ndarray) -> Prediction:
        """Predict one (h, w, 3) uint8 RGB image."""
        return self.predict_batch([image])[0]

    @torch.no_grad()
    def predict_batch(self, images: list[np.ndarray]) -> list[Prediction]:
        """Predict a list of (h, w, 3) uint8 RGB images of any sizes."""
        boxes, boxed = self._letterbox(images)
        batch = torch.from_numpy(boxed).permute(0, 3, 1, 2).contiguous().to(self.device)
        out = self.model(batch)
        maps = out["maps"].float().cpu().numpy()  # (B, 44, S, S)
        tokens = out["tokens"].float().cpu().numpy()  # (B, 8, 300)
        hot = out["multihot"].float().cpu().numpy() if "multihot" in out else [None] * len(images)  # (B, V)
        return [self._post(im, box, m, t, h) for im, box, m, t, h in zip(boxed, boxes, maps, tokens, hot)]

    def _letterbox(self, images: list[np.ndarray]) -> tuple[list[Letterbox], np.ndarray]:
        """Each image's letterbox and the (B, S, S, 3) uint8 batch of letterboxed images."""
        boxes = [Letterbox.fit(im.shape[1], im.shape[0], self.size) for im in images]
        return boxes, np.stack([letterbox_image(im, box) for box, im in zip(boxes, images)])

    def _labels(self, probabilities: np.ndarray | None) -> list[tuple[str, float]] | None:
        """The multi-hot words above the paper's 0.25, most confident first (ids named ``#i`` without a vocabulary
        or past its end)."""
        if probabilities is None:
            return None
        ids = label_ids(probabilities)
        words = self.vocab.words if self.vocab is not None else []
        return sorted(((words[i] if i < len(words) else f"#{i}", float(probabilities[i])) for i in ids),
                      key=lambda wp: -wp[1])

    def _post(self, image: np.ndarray, box: Letterbox, maps: np.ndarray, tokens: np.ndarray,
              multihot: np.ndarray | None = None) -> Prediction:
        valid = box.valid_mask()  # joints are found on the image, never on the letterbox border
        peaks = find_peaks(maps[CHANNELS["joints"].slice], threshold=self.peak_threshold, valid=valid)
        people = group_people(peaks, maps[CHANNELS["pafs"].slice])
        depth = (maps[CHANNELS["depth"].start] + 1.0) * 0.5  # [-1, 1] -> [0, 1], larger = nearer
        if self.refine == "paper":
            depth = refine_depth_paper(depth, maps[CHANNELS["normals"].slice], valid=valid)
        elif self.refine == "descent":
            depth = refine_depth(depth, maps[CHANNELS["normals"].slice], valid=valid)
        words = None if self.vocab is None else decode_glove(tokens, self.vocab, -1.0)  # every non-empty slot
        return Prediction(image, box, maps, depth.astype(np.float32), people, words, tokens,
                          self._labels(multihot), self.word_threshold)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files to predict: images and videos as given, folders expanded (sorted, not recursive)."""
    out = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS)
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"input {name} does not exist")
    return out


def read_image(path: Path) -> np.ndarray:
    """Read an image file as (h, w, 3) uint8 RGB with the store's decoder (``shards.images``): EXIF orientation
    applied, grey to three channels, 16 bits to their high byte (rounded), alpha composited on black; a file the
    base stage would reject (truncated, undecodable) is a ValueError naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{path} is not a readable image ({e.strerror or e})") from None
    try:
        return decode_image_bytes(data, str(path))[0]
    except RejectedImage as e:
        raise ValueError(f"{path} is not a readable image ({e.reason}: {e.detail})") from None


def video_frames(path: Path) -> tuple[float, Iterator[np.ndarray]]:
    """Frames per second and an iterator of (h, w, 3) uint8 RGB frames of a video file."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"{path} is not a readable video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0

    def frames() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    return
                yield bgr[..., ::-1].copy()
        finally:
            cap.release()

    return fps, frames()


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG."""
    import cv2

    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"could not write {path}")


def save_maps(path: Path, pred: Prediction) -> None:
    """Write a prediction's 44 maps (float32, [-1, 1]), its depth after refinement and its 8 token vectors as
    ``.npz`` (no pickled objects: ``np.load(path)`` reads it)."""
    np.savez_compressed(path, maps=pred.maps.astype(np.float32), depth=pred.depth.astype(np.float32),
                        tokens=np.zeros((0, 0), np.float32) if pred.tokens is None else pred.tokens.astype(np.float32))


def describe_input(path: Path) -> dict:
    """The ``input`` (path) and ``coco_id`` (the file name's number, as COCO names its images; else null) of a
    JSON entry."""
    return {"input": str(path), "coco_id": int(path.stem) if path.stem.isdigit() else None}


def predict_video(predictor: Predictor, path: Path, target: Path | None, tile: int,
                  maps_stem: Path | None = None) -> tuple[Path | None, list[dict]]:
    """Predict every frame of a video; write its panels to the MP4 ``target`` (None: no panels) and, with
    ``maps_stem``, each frame's maps to ``<maps_stem>.frameNNNNNN.npz``; return the MP4 and per-frame JSON."""
    import cv2

    fps, frames = video_frames(path)
    writer, results = None, []
    try:
        for index, frame in enumerate(frames):
            pred = predictor(frame)
            if maps_stem is not None:
                save_maps(maps_stem.with_name(f"{maps_stem.name}.frame{index:06d}.npz"), pred)
            results.append({"frame": index, "time_s": round(index / fps, 4), **pred.to_json()})
            if target is None:
                continue
            panel = pred.panel(tile)
            if writer is None:
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (panel.shape[1], panel.shape[0]))
                if not writer.isOpened():  # an unwritable folder, a too-long name, no MPEG-4 encoder
                    raise OSError(f"could not write {target}")
            writer.write(np.ascontiguousarray(panel[..., ::-1]))
    finally:
        frames.close()  # releases the capture now, also when the writer failed
        if writer is not None:
            writer.release()
    if not results:
        raise ValueError(f"{path} has no readable frames")
    if target is not None and (not target.is_file() or target.stat().st_size == 0):
        raise OSError(f"could not write {target}")
    return target, results


def find_vocabulary(args: argparse.Namespace) -> Vocabulary | None:
    """The vocabulary of ``--vocab``, else of ``--shards`` (its ``--split``), else None: never a file that the
    checkpoint names (a checkpoint describes its training; it does not choose what this command reads).

    Raises:
        FileNotFoundError, ValueError: the file named by the flags is missing or malformed.
    """
    if args.vocab:
        return Vocabulary.load(args.vocab)
    if args.shards:
        named = Path(args.shards) / args.split / VOCAB_NAME
        if not named.is_file():
            raise FileNotFoundError(f"--shards {args.shards}: no {named}; build the {args.split} split there "
                                    f"or pass --vocab vocab.json")
        return Vocabulary.load(named)
    return None


def vocabulary_hint(extra: dict) -> str:
    """Where the checkpoint says its vocabulary was (its training store), as a suggestion to print, or ""."""
    train = extra.get("train_cfg") or {}
    if not (isinstance(train, dict) and isinstance(train.get("shards"), str)):
        return ""
    split = str(train.get("train_split", "train2017")).split(",")[0].split(":")[0]  # of a mix, the first
    return (f"; it was trained on the store {train['shards'][:200]!r}, split {split[:64]!r}: pass --shards with "
            "that store (and --split) if it is yours")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``student predict``."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, video files")
    parser.add_argument("--checkpoint", required=True, help="student checkpoint")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument("--json", action="store_true",
                        help="also write <name>.json: the input and its COCO id, people, every slot's word with its "
                             "score, multi-hot labels")
    parser.add_argument("--no-panel", action="store_true", help="write no panel pictures or videos")
    parser.add_argument("--save-maps", action="store_true",
                        help="also write <name>.maps.npz: the 44 maps, the refined depth and the 8 tokens "
                             "(videos: one file per frame)")
    parser.add_argument("--vocab", help="vocab.json for decoding caption tokens (default: that of --shards; "
                                        "without either, words are not decoded)")
    parser.add_argument("--shards", help="store whose <split>/vocab.json to use")
    parser.add_argument("--split", default="train2017", help="split of --shards holding vocab.json "
                                                             "(default: train2017)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--refine", choices=REFINE_MODES, default="paper",
                        help="depth refinement from the predicted normals: the paper's update rule (default, 35 "
                             "steps of 0.01, far areas masked), a descent on the normal error, or none")
    parser.add_argument("--no-refine", dest="refine", action="store_const", const="none",
                        help="skip the depth refinement (--refine none)")
    parser.add_argument("--fast", action="store_true",
                        help="the fast path (student.fastpath): post-processing on the model's device in "
                             "fixed-shape steps, the network channels-last, on CUDA replayed as CUDA graphs; the "
                             "same results to float tolerance (--refine paper or none)")
    parser.add_argument("--amp", choices=("none", "bf16"), default="none",
                        help="bf16: autocast the network (implies --fast; default none: FP32, the paper's precision)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the fast path's step (implies --fast; minutes for the paper network)")
    parser.add_argument("--tile", type=int, default=256,
                        help=f"side of each panel tile in pixels, 16..{MAX_TILE} (default: 256)")
    parser.add_argument("--joint-threshold", type=float, default=0.5,
                        help="minimum joint peak score 0..1 (default: 0.5)")
    parser.add_argument("--word-threshold", type=float, default=DEFAULT_DECODE_THRESHOLD,
                        help=f"minimum cosine similarity -1..1 of a decoded word (default: {DEFAULT_DECODE_THRESHOLD})")


def opencv_error_line(error: BaseException) -> str:
    """The useful part of a ``cv2.error`` in one line (its message holds the OpenCV source location and a
    trailing newline): ``(-4:Insufficient memory) Failed to allocate ...``."""
    text = " ".join(str(error).split())
    return text.split(" error: ", 1)[1] if " error: " in text else text


def run(args: argparse.Namespace) -> int:
    """Predict every input; exit code 2 on a missing checkpoint or input, 1 when an input failed."""
    import cv2

    from student.checkpoint import CheckpointError, load_checkpoint

    if args.tile < 16:
        print(f"student predict: error: --tile must be >= 16, got {args.tile}", file=sys.stderr)
        return 2
    if args.tile > MAX_TILE:  # the panel is 2 x 4 tiles: a huge tile cannot even be allocated
        print(f"student predict: error: --tile must be <= {MAX_TILE}, got {args.tile}", file=sys.stderr)
        return 2
    for flag, value, low in (("--joint-threshold", args.joint_threshold, 0.0),
                             ("--word-threshold", args.word_threshold, -1.0)):
        if not low <= value <= 1.0:  # also refuses NaN
            print(f"student predict: error: {flag} must be in {low:g}..1, got {value}", file=sys.stderr)
            return 2
    fast = args.fast or args.amp != "none" or args.compile
    if fast and args.refine == "descent":
        print("student predict: error: the fast path (--fast, --amp, --compile) refines depth with --refine paper "
              "or none, not descent", file=sys.stderr)
        return 2
    try:
        inputs = expand_inputs(args.inputs)
        model, cfg, extra = load_checkpoint(args.checkpoint, map_location=args.device)
        vocab = find_vocabulary(args)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        print(f"student predict: error: {e}", file=sys.stderr)
        return 2
    if not inputs:
        print("student predict: error: no images or videos among the inputs", file=sys.stderr)
        return 2
    if vocab is None:
        print("note: no vocabulary given (--vocab vocab.json or --shards STORE); caption words are not decoded"
              + vocabulary_hint(extra), file=sys.stderr)
    if fast:
        from student.fastpath import FastPredictor

        predictor: Predictor = FastPredictor(
            model, cfg.image_size, vocab, args.device, args.refine, args.joint_threshold, args.word_threshold,
            amp=args.amp, channels_last=True, compile=args.compile,
            cuda_graph=torch.device(args.device).type == "cuda", keep_maps=args.save_maps or not args.no_panel)
    else:
        predictor = Predictor(model, cfg.image_size, vocab, args.device, args.refine, args.joint_threshold,
                              args.word_threshold)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed, used = 0, set()
    for path in inputs:
        name = path.stem
        while name in used:  # two inputs with the same name in different folders
            name += "_"
        used.add(name)
        try:
            maps_stem = out_dir / f"{name}.maps" if args.save_maps else None
            if path.suffix.lower() in VIDEO_EXTS:
                target, result = predict_video(predictor, path, None if args.no_panel else
                                               out_dir / f"{name}.panel.mp4", args.tile, maps_stem)
                doc: dict = {**describe_input(path), "frames": result}
            else:
                pred = predictor(read_image(path))
                target = None if args.no_panel else out_dir / f"{name}.panel.png"
                if target is not None:
                    write_png(target, pred.panel(args.tile))
                if maps_stem is not None:
                    save_maps(Path(f"{maps_stem}.npz"), pred)
                doc = {**describe_input(path), **pred.to_json()}
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        except cv2.error as e:  # e.g. an image too large to allocate: this input fails, the next ones run
            print(f"error: {path}: OpenCV: {opencv_error_line(e)}", file=sys.stderr)
            failed += 1
            continue
        except MemoryError:
            print(f"error: {path}: out of memory", file=sys.stderr)
            failed += 1
            continue
        except OSError as e:  # its output could not be written (a full disk, a name too long): the next ones run
            print(f"error: {path}: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            try:
                (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=1))
            except OSError as e:
                print(f"error: {path}: could not write {out_dir / f'{name}.json'} ({e.strerror or e})",
                      file=sys.stderr)
                failed += 1
                continue
        maps_note = None if maps_stem is None else (f"{maps_stem}.frame*.npz" if "frames" in doc else
                                                     f"{maps_stem}.npz")
        written = [str(t) for t in (target, out_dir / f"{name}.json" if args.json else None, maps_note) if t]
        print(f"{path} -> {', '.join(written) if written else '(nothing written)'}")
    return 1 if failed else 0
