"""Training targets (DESIGN 5): store samples, heatmap / PAF rendering, packing for the loader.

Every channel index comes from ``shards.taxonomy``. On the host a sample's targets stay compact (int8 rendered
pose maps, uint16 depth, uint8 normals / text / group labels); ``student.values.device_targets`` assembles
the float (B, 44, H, W) target on the device, one-hot groups included.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from shards.pose import describe, pose_problem
from shards.taxonomy import GLOVE_DIM, JOINT_RADIUS_OFFSET, JOINTS, LIMBS, NUM_TOKENS

REFERENCE_SIZE = 256  # target sizes of DESIGN 5.5 are in pixels of a 256-pixel store
SUBPIXEL = 16  # joint blobs are centred to 1/16 pixel
FLAT_NORMAL = (128, 128, 255)  # normals.png value of n = (0, 0, 1)


@dataclass(frozen=True)
class TargetSizes:
    """Heatmap radius and PAF width as a function of the epoch (DESIGN 5.5).

    ``radius`` and ``width`` are (start, final); both shrink by one every ``step_epochs`` epochs until final.
    """

    radius: tuple[int, int] = (23, 8)
    width: tuple[int, int] = (6, 2)
    step_epochs: int = 20

    @classmethod
    def fixed(cls, radius: int, width: int) -> "TargetSizes":
        """These sizes at every epoch (scoring a checkpoint)."""
        return cls((radius, radius), (width, width))

    def at(self, epoch: int | None) -> tuple[int, int]:
        """(heatmap base radius, PAF width) at ``epoch``; ``None`` = the final sizes (validation)."""
        if epoch is None:
            return self.radius[1], self.width[1]
        steps = max(0, epoch) // max(1, self.step_epochs)
        return max(self.radius[1], self.radius[0] - steps), max(self.width[1], self.width[0] - steps)


@dataclass
class StoreSample:
    """One decoded store sample in store geometry (S x S), the unit augmentation works on.

    ``keypoints`` is (P, 17, 3) float32 (x, y, v) in continuous store pixels (pixel i covers [i, i+1));
    ``crowd`` is the (S, S) uint8 mask of crowd regions (1 = crowd), excluded from the pose loss.
    """

    key: str
    image: np.ndarray  # (S, S, 3) uint8 RGB
    depth: np.ndarray  # (S, S) uint16
    normals: np.ndarray  # (S, S, 3) uint8
    text: np.ndarray  # (S, S) uint8 0 / 255
    groups: np.ndarray  # (S, S) uint8 0..10
    keypoints: np.ndarray  # (P, 17, 3) float32
    crowd: np.ndarray | None = None  # (S, S) uint8, None = no crowd region
    glove: np.ndarray = field(default_factory=lambda: np.zeros((NUM_TOKENS, GLOVE_DIM), np.float16))
    token_ids: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return self.image.shape[0]

    def emptied(self, image: np.ndarray) -> "StoreSample":
        """This sample with another image and background targets everywhere (for the random-noise image)."""
        s = self.size
        return replace(self, image=image, depth=np.zeros((s, s), np.uint16),
                       normals=np.broadcast_to(np.array(FLAT_NORMAL, np.uint8), (s, s, 3)).copy(),
                       text=np.zeros((s, s), np.uint8), groups=np.zeros((s, s), np.uint8),
                       keypoints=np.zeros((0, len(JOINTS), 3), np.float32), crowd=None,
                       glove=np.zeros_like(self.glove), token_ids=())


class PoseError(ValueError):
    """A ``pose.json`` without the structure the pose stage writes; the message says what is wrong in it."""


def from_store(sample: Mapping[str, Any]) -> StoreSample:
    """Build a :class:`StoreSample` from a decoded reader sample (members of base, depth, normals, text,
    groups and tokens).

    Raises:
        PoseError: its ``pose.json`` is malformed (see :func:`pose_keypoints` and :func:`crowd_mask`).
    """
    pose = sample["pose.json"]
    keypoints = pose_keypoints(pose)
    return StoreSample(
        key=str(sample["__key__"]), image=sample["jpg"], depth=sample["depth.png"], normals=sample["normals.png"],
        text=sample["text.png"], groups=sample["groups.png"], keypoints=keypoints,
        crowd=crowd_mask(pose, sample["jpg"].shape[0]) if pose["crowd"] else None,
        glove=np.asarray(sample["glove.npy"], np.float16),
        token_ids=tuple(int(i) for i in sample["tokens.json"].get("ids", [])))


def pose_keypoints(pose: Mapping[str, Any]) -> np.ndarray:
    """(P, 17, 3) float32 keypoints of the persons of a ``pose.json`` dict (``shards.pose`` describes it).

    Raises:
        PoseError: ``pose`` is not of that structure (``{}`` included: the writer never leaves a key out).
    """
    problem = pose_problem(pose)
    if problem:
        raise PoseError(problem)
    out = np.zeros((len(pose["persons"]), len(JOINTS), 3), np.float32)
    for i, person in enumerate(pose["persons"]):
        out[i] = np.asarray(person["keypoints"], np.float32).reshape(len(JOINTS), 3)
    return out


def crowd_mask(pose: Mapping[str, Any], size: int) -> np.ndarray:
    """(S, S) uint8 mask of the crowd regions of a ``pose.json`` dict: 1 inside a crowd region, else 0.

    A region's ``segmentation`` (store-size RLE dict or polygons ``[x0, y0, x1, y1, ...]`` in continuous
    store pixels) is used when present, else its ``bbox``.

    Raises:
        PoseError: a region is malformed (names it: ``crowd[i]``).
    """
    mask = np.zeros((size, size), np.uint8)
    for i, region in enumerate(pose.get("crowd", [])):
        try:
            _draw_crowd(mask, region, size)
        except PoseError as e:
            raise PoseError(f"crowd[{i}] {e}") from None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise PoseError(f"crowd[{i}] is malformed ({type(e).__name__}: {e})") from None
    return mask


def _draw_crowd(mask: np.ndarray, region: Mapping[str, Any], size: int) -> None:
    """Set the pixels of one crowd region of ``crowd_mask`` to 1."""
    import cv2

    if not isinstance(region, Mapping):
        raise PoseError(f"is {describe(region)}, expected an object with bbox or segmentation")
    seg = region.get("segmentation")
    if isinstance(seg, dict):
        from pycocotools import mask as mask_utils

        rle = {"size": list(seg["size"]), "counts": seg["counts"]}
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode()
        decoded = mask_utils.decode(rle)
        if decoded.shape != mask.shape:
            raise PoseError(f"has an RLE of size {decoded.shape} in a {size}-pixel store")
        mask |= decoded.astype(np.uint8)
    elif seg:
        polys = [np.asarray(p, np.float32).reshape(-1, 2) for p in seg if len(p) >= 6]
        # fillPoly takes integer vertices with pixel centres at integers (ours are at i + 0.5) and
        # fills the boundary too: the region grows by at most one pixel, harmless for an ignore mask
        cv2.fillPoly(mask, [np.round(p - 0.5).astype(np.int32) for p in polys], 1)
    else:  # pixels whose centre lies in the box
        x, y, w, h = (float(v) for v in region["bbox"])
        c0, c1 = max(0, math.ceil(x - 0.5)), max(0, math.ceil(x + w - 0.5))
        r0, r1 = max(0, math.ceil(y - 0.5)), max(0, math.ceil(y + h - 0.5))
        mask[r0:r1, c0:c1] = 1


def _scaled(value: float, size: int) -> float:
    return value * size / REFERENCE_SIZE


def render_heatmaps(keypoints: np.ndarray, size: int, base_radius: float) -> np.ndarray:
    """Joint heatmaps: a Gaussian blob (sigma = radius / 3, cut at the radius) per labelled joint, max-blended.

    Args:
        keypoints: (P, 17, 3) (x, y, v) in continuous store pixels; joints with v > 0 are drawn.
        size: store side S.
        base_radius: the schedule's base radius in 256-pixel units; the per-joint offset of
            ``shards.taxonomy.JOINT_RADIUS_OFFSET`` is added, and the sum scaled to ``size``.

    Returns:
        (17, S, S) float32 in [-1, 1]: +1 at a joint's pixel, -1 on the background.
    """
    maps = np.full((len(JOINTS), size, size), -1.0, np.float32)
    draw_heatmaps(maps, keypoints, base_radius, 1.0)
    return maps


def render_pafs(keypoints: np.ndarray, size: int, width: float) -> np.ndarray:
    """Part affinity fields: per limb of ``shards.taxonomy.LIMBS``, a band along child -> parent.

    Inside the band (distance to the segment <= width / 2, at least one pixel) the value ramps linearly from
    -1 at the child to +1 at the parent, multiplied by the limb's sign (-1 for left limbs and limbs that end
    at the nose); the background is -1; people are max-blended.

    Args:
        keypoints: (P, 17, 3) keypoints; a limb is drawn when both its joints have v > 0.
        size: store side S.
        width: band width in 256-pixel units, scaled to ``size``.

    Returns:
        (12, S, S) float32 in [-1, 1].
    """
    maps = np.full((len(LIMBS), size, size), -1.0, np.float32)
    draw_pafs(maps, keypoints, width, 1.0)
    return maps


def draw_heatmaps(maps: np.ndarray, keypoints: np.ndarray, base_radius: float, unit: float) -> None:
    """Max-blend the joint blobs of :func:`render_heatmaps` into ``maps`` (17, S, S), whose value ``unit``
    stands for 1.0 (1.0 for float maps, 127 for int8 maps already filled with ``-unit``).

    A blob is centred at the joint to 1/16 pixel, so blobs come from a small cache of templates.
    """
    size, dtype = maps.shape[-1], maps.dtype.str
    radii = [max(1.0, _scaled(base_radius + offset, size)) for offset in JOINT_RADIUS_OFFSET]
    for person in np.asarray(keypoints).tolist():  # Python floats: fast scalar arithmetic, same values
        for j, (x, y, v) in enumerate(person):
            if v <= 0:
                continue
            cx, cy = math.floor(x), math.floor(y)
            blob = _blob(radii[j], round((x - cx) * SUBPIXEL), round((y - cy) * SUBPIXEL), unit, dtype)
            half = blob.shape[0] // 2
            x0, x1 = max(0, cx - half), min(size, cx + half + 1)
            y0, y1 = max(0, cy - half), min(size, cy + half + 1)
            if x0 >= x1 or y0 >= y1:
                continue
            window = maps[j, y0:y1, x0:x1]
            np.maximum(window, blob[y0 - cy + half:y1 - cy + half, x0 - cx + half:x1 - cx + half], out=window)


@functools.lru_cache(maxsize=4096)
def _blob(radius: float, qx: int, qy: int, unit: float, dtype: str) -> np.ndarray:
    """A (2R+1)^2 blob for a joint at (qx, qy) / SUBPIXEL inside the centre pixel: Gaussian with sigma =
    radius / 3, cut at the radius, mapped to [-unit, unit] in ``dtype`` (read-only, cached)."""
    half = int(radius) + 1
    offsets = np.arange(-half, half + 1, dtype=np.float64) + 0.5  # pixel centres relative to the pixel's corner
    dx2 = (offsets - qx / SUBPIXEL) ** 2
    dy2 = (offsets - qy / SUBPIXEL) ** 2
    k = -4.5 / (radius * radius)
    blob = np.outer(np.exp(dy2 * k), np.exp(dx2 * k))  # separable Gaussian
    blob[dy2[:, None] + dx2[None, :] > radius * radius] = 0.0
    values = (blob * 2.0 - 1.0) * unit
    out = (np.rint(values) if np.dtype(dtype).kind == "i" else values).astype(dtype)
    out.setflags(write=False)
    return out


def draw_pafs(maps: np.ndarray, keypoints: np.ndarray, width: float, unit: float) -> None:
    """Max-blend the limb bands of :func:`render_pafs` into ``maps`` (12, S, S) (``unit`` as in
    :func:`draw_heatmaps`).

    Limbs are computed together (a few numpy calls for many small limbs, not a few per limb), in windows of
    one common size: a window larger than its limb's box is harmless, as only pixels inside the band are
    written. Groups of limbs hold at most ``PAF_GROUP_PIXELS`` window pixels.
    """
    size = maps.shape[-1]
    half = max(1.0, _scaled(width, size) / 2)
    limbs = []  # (window area, channel, sign, a, b - a, |b - a|^2, x0, y0, h, w)
    for person in keypoints:
        for k, limb in enumerate(LIMBS):
            a, b = person[limb.child], person[limb.parent]
            if a[2] <= 0 or b[2] <= 0:
                continue
            ab = b[:2] - a[:2]
            length2 = float(ab @ ab)
            if length2 < 1e-6:
                continue
            x0 = max(0, int(min(a[0], b[0]) - half))
            x1 = min(size, int(max(a[0], b[0]) + half) + 1)
            y0 = max(0, int(min(a[1], b[1]) - half))
            y1 = min(size, int(max(a[1], b[1]) + half) + 1)
            if x0 < x1 and y0 < y1:
                limbs.append(((y1 - y0) * (x1 - x0), k, limb.sign, a[:2], ab, length2, x0, y0, y1 - y0, x1 - x0))
    limbs.sort(key=lambda limb: limb[0])  # similar sizes share a group
    i = 0
    while i < len(limbs):
        j, h, w = i + 1, limbs[i][8], limbs[i][9]
        while j < len(limbs) and (j + 1 - i) * max(h, limbs[j][8]) * max(w, limbs[j][9]) <= PAF_GROUP_PIXELS:
            h, w, j = max(h, limbs[j][8]), max(w, limbs[j][9]), j + 1
        _draw_limbs(maps, limbs[i:j], h, w, half, unit)
        i = j


PAF_GROUP_PIXELS = 1 << 16


def _draw_limbs(maps: np.ndarray, limbs: list[tuple], h: int, w: int, half: float, unit: float) -> None:
    """Draw a group of limbs of :func:`draw_pafs` in (h, w) windows (elementwise the same float32 arithmetic
    as one limb at a time: (p - a) . ab / |ab|^2 clipped to [0, 1] is t, the band is |p - a - t ab| <= half)."""
    size = maps.shape[-1]
    centres = np.arange(size, dtype=np.float32) + 0.5
    y0 = np.array([min(limb[7], size - h) for limb in limbs])  # windows kept inside the map
    x0 = np.array([min(limb[6], size - w) for limb in limbs])
    a = np.array([limb[3] for limb in limbs], np.float32)
    ab = np.array([limb[4] for limb in limbs], np.float32)
    abx, aby = ab[:, 0, None, None], ab[:, 1, None, None]  # (n, 1, 1)
    px = centres[x0[:, None] + np.arange(w)][:, None, :] - a[:, 0, None, None]  # (n, 1, w)
    py = centres[y0[:, None] + np.arange(h)][:, :, None] - a[:, 1, None, None]  # (n, h, 1)
    t = np.add(px * abx, py * aby)  # (n, h, w), then in place: fewer passes, no temporaries
    t /= np.array([limb[5] for limb in limbs], np.float32)[:, None, None]
    np.clip(t, 0.0, 1.0, out=t)
    dx = t * abx
    np.subtract(px, dx, out=dx)
    dx *= dx
    dy = t * aby
    np.subtract(py, dy, out=dy)
    dy *= dy
    dx += dy  # squared distance to the segment
    band = dx <= half * half
    t *= 2.0
    t -= 1.0
    t *= np.array([limb[2] * unit for limb in limbs], np.float32)[:, None, None]  # the signed ramp, scaled
    if maps.dtype.kind == "i":
        np.rint(t, out=t)
    values = t.astype(maps.dtype)
    for n, limb in enumerate(limbs):  # outside the band the background (-unit) stays as it is
        window = maps[limb[1], y0[n]:y0[n] + h, x0[n]:x0[n] + w]
        np.maximum(window, values[n], out=window, where=band[n])


def allocate_batch(batch: int, size: int, multihot_vocab: int = 0) -> dict[str, np.ndarray]:
    """Empty host buffers of a batch in the loader's compact format (see :func:`pack_targets`).

    They are views of one allocation, which numpy advises as huge pages when large (Linux): a new batch's
    first writes then fault a few 2 MB pages instead of thousands of 4 KB ones.
    """
    layout = {
        "image": ((batch, size, size, 3), np.uint8),  # HWC as decoded: the device makes it CHW
        "pose": ((batch, len(JOINTS) + len(LIMBS), size, size), np.int8),
        "pose_mask": ((batch, size, size), np.uint8),
        "depth": ((batch, size, size), np.uint16),
        "normals": ((batch, size, size, 3), np.uint8),
        "text": ((batch, size, size), np.uint8),
        "groups": ((batch, size, size), np.uint8),
        "glove": ((batch, NUM_TOKENS, GLOVE_DIM), np.float16),
    }
    if multihot_vocab:
        layout["multihot"] = ((batch, multihot_vocab), np.uint8)
    spans, total = {}, 0
    for name, (shape, dtype) in layout.items():
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        spans[name] = (total, total + nbytes)
        total += -(-nbytes // 64) * 64  # buffers start at multiples of 64 bytes into the block
    block = np.empty(total, np.uint8)
    return {name: block[a:b].view(dtype).reshape(shape) for (name, (shape, dtype)), (a, b)
            in zip(layout.items(), spans.values())}


def pack_targets(sample: StoreSample, base_radius: float, paf_width: float, multihot_vocab: int = 0,
                 out: dict[str, np.ndarray] | None = None, index: int = 0) -> dict[str, np.ndarray]:
    """Render and pack one sample's targets into the compact host format of the loader.

    Args:
        sample: the (augmented) sample.
        base_radius: heatmap base radius (see :class:`TargetSizes`).
        paf_width: PAF band width.
        multihot_vocab: vocabulary size of the multi-hot target (the sample's first 8 words, as its 8 tokens: at
            most 8 active labels, as the paper's); 0 = no multi-hot target.
        out: batch buffers from :func:`allocate_batch` to write into (rendering happens in place, so a
            batch needs no further copy); None = return one sample's arrays.
        index: the sample's row in ``out``.

    Returns:
        ``image`` (S, S, 3) uint8, ``pose`` (29, S, S) int8 (joints then PAFs), ``pose_mask`` (S, S) uint8,
        ``depth`` (S, S) uint16, ``normals`` (S, S, 3) uint8, ``text`` (S, S) uint8, ``groups`` (S, S)
        uint8 labels, ``glove`` (8, 300) float16 and, when asked, ``multihot`` (V,) uint8; with ``out``
        these are its rows and ``out`` itself is returned.
    """
    single = out is None
    if single:
        out, index = allocate_batch(1, sample.size, multihot_vocab), 0
    pose = out["pose"][index]
    pose.fill(-127)
    draw_heatmaps(pose[:len(JOINTS)], sample.keypoints, base_radius, 127.0)
    draw_pafs(pose[len(JOINTS):], sample.keypoints, paf_width, 127.0)
    out["image"][index] = sample.image
    if sample.crowd is None:
        out["pose_mask"][index] = 1
    else:
        np.subtract(1, sample.crowd, out=out["pose_mask"][index])
    out["depth"][index] = sample.depth
    out["normals"][index] = sample.normals
    out["text"][index] = sample.text
    out["groups"][index] = sample.groups
    out["glove"][index] = sample.glove
    if multihot_vocab:
        hot = out["multihot"][index]
        hot.fill(0)
        hot[[i for i in sample.token_ids[:NUM_TOKENS] if 0 <= i < multihot_vocab]] = 1  # the 8 words the tokens hold
    return {k: v[0] for k, v in out.items()} if single else out
