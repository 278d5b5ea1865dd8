"""Drawing of one prediction as a panel image: input, normals, depth, skeletons, PAFs, groups + text, words."""

from __future__ import annotations

import numpy as np

from shards.taxonomy import CHANNELS, GROUPS, JOINTS, LIMBS

#: Extra bones drawn between joints that no PAF connects (head).
_HEAD_BONES: tuple[tuple[str, str], ...] = (
    ("nose", "left_eye"), ("nose", "right_eye"), ("left_eye", "left_ear"), ("right_eye", "right_ear"))
BONES: tuple[tuple[int, int], ...] = tuple((limb.child, limb.parent) for limb in LIMBS) + tuple(
    (JOINTS.index(a), JOINTS.index(b)) for a, b in _HEAD_BONES)
#: Overlay colour of each group (by name, so the channel order stays in shards.taxonomy).
_GROUP_PALETTE = {"Person": (230, 40, 60), "Vehicle": (40, 90, 230), "Animal": (160, 90, 30),
                  "Object": (250, 200, 40), "Furniture": (150, 60, 200), "Appliance": (0, 170, 170),
                  "Material": (230, 150, 110), "Obstacle": (140, 140, 140), "Building": (90, 60, 60),
                  "Nature": (60, 190, 60)}
GROUP_COLORS: np.ndarray = np.array([_GROUP_PALETTE[g] for g in GROUPS], np.uint8)
TEXT_COLOR = (0, 255, 255)
_PERSON_COLORS = ((255, 64, 64), (64, 160, 255), (64, 220, 64), (255, 160, 0), (200, 64, 255), (0, 220, 220))


def _cv2():
    import cv2

    return cv2


def _resize(image: np.ndarray, tile: int, nearest: bool = False) -> np.ndarray:
    cv2 = _cv2()
    if image.shape[0] == tile:
        return image
    return cv2.resize(image, (tile, tile), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def normals_rgb(maps: np.ndarray) -> np.ndarray:
    """(44, H, W) outputs -> (H, W, 3) uint8 picture of the normals (x, y, z -> R, G, B)."""
    n = maps[CHANNELS["normals"].slice]
    return np.clip((n.transpose(1, 2, 0) + 1.0) * 127.5, 0, 255).astype(np.uint8)


def depth_rgb(depth: np.ndarray) -> np.ndarray:
    """(H, W) depth in [0, 1] (larger = nearer) -> (H, W, 3) uint8 colour map (bright = near)."""
    cv2 = _cv2()
    gray = np.clip(depth * 255.0, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(gray, cv2.COLORMAP_INFERNO)[..., ::-1].copy()


def pafs_rgb(maps: np.ndarray) -> np.ndarray:
    """PAF bands (value above background -1) of all limbs, each limb in its own hue, on black."""
    cv2 = _cv2()
    pafs = maps[CHANNELS["pafs"].slice]  # (12, H, W)
    strength = np.clip((pafs + 1.0) * 0.5, 0, 1)  # 0 on background
    hues = (np.arange(len(LIMBS)) * 180 // len(LIMBS)).astype(np.uint8)
    palette = cv2.cvtColor(np.stack([hues, np.full_like(hues, 255), np.full_like(hues, 255)], 1)[None],
                           cv2.COLOR_HSV2RGB)[0].astype(np.float32)  # (12, 3)
    best = strength.argmax(0)
    return (palette[best] * strength.max(0)[..., None]).astype(np.uint8)


def joints_rgb(maps: np.ndarray) -> np.ndarray:
    """Maximum over the 17 joint heatmaps as a colour map."""
    cv2 = _cv2()
    hm = np.clip((maps[CHANNELS["joints"].slice].max(0) + 1.0) * 127.5, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(hm, cv2.COLORMAP_JET)[..., ::-1].copy()


def groups_overlay(image: np.ndarray, maps: np.ndarray, alpha: float = 0.55,
                   valid: np.ndarray | None = None) -> np.ndarray:
    """Colour each pixel by its strongest group (where its output is positive) and text in yellow; only
    inside ``valid`` (the letterbox content) when given."""
    groups = maps[CHANNELS["groups"].slice]  # (10, H, W)
    best = groups.argmax(0)
    on = groups.max(0) > 0.0
    colour = GROUP_COLORS[best].astype(np.float32)
    text = maps[CHANNELS["text"].start] > 0.0
    colour[text] = TEXT_COLOR
    on |= text
    if valid is not None:
        on &= valid
    out = image.astype(np.float32)
    out[on] = (1 - alpha) * out[on] + alpha * colour[on]
    return out.astype(np.uint8)


def draw_people(image: np.ndarray, people: list, scale: float = 1.0) -> np.ndarray:
    """Draw each person's joints and bones (continuous coordinates of the image before ``scale``)."""
    cv2 = _cv2()
    out = np.ascontiguousarray(image.copy())
    thick = max(1, int(round(2 * scale / 2)))
    for k, person in enumerate(people):
        colour = _PERSON_COLORS[k % len(_PERSON_COLORS)]
        kp = person.keypoints
        for a, b in BONES:
            if kp[a, 2] > 0 and kp[b, 2] > 0:
                pa = tuple(int(round(v)) for v in kp[a, :2] * scale)
                pb = tuple(int(round(v)) for v in kp[b, :2] * scale)
                cv2.line(out, pa, pb, colour, thick, cv2.LINE_AA)
        for x, y, s in kp:
            if s > 0:
                cv2.circle(out, (int(round(x * scale)), int(round(y * scale))), thick + 2,
                           (255, 255, 255), -1, cv2.LINE_AA)
    return out


def words_tile(words: list | None, tile: int, title: str = "caption tokens",
               labels: list[tuple[str, float]] | None = None) -> np.ndarray:
    """A tile listing the decoded word of each token slot with its confidence, the multi-hot head's labels
    above 0.25 (the paper's "Response Text", when the model has the head) and the group colours."""
    cv2 = _cv2()
    out = np.full((tile, tile, 3), 24, np.uint8)
    font = max(0.3, tile / 600)
    line = max(10, tile // 18)

    def put(text: str, x: int, y: int, colour: tuple[int, int, int] = (255, 255, 255)) -> None:
        cv2.putText(out, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font, colour, 1, cv2.LINE_AA)

    put(title, 8, line, (200, 200, 200))
    if words is None:
        put("(no vocabulary)", 8, 2 * line, (160, 160, 160))
    else:
        width = 10 if labels is not None else 24  # the right half holds the labels then
        for i, word in enumerate(words):
            put(f"{i + 1}: -" if word is None else f"{i + 1}: {word[0][:width]} {word[1]:.2f}", 8, (i + 2) * line)
    if labels is not None:
        put("response > 0.25", tile // 2, 2 * line, (200, 200, 200))
        for i, (word, p) in enumerate(labels[:7]):
            put(f"{word[:10]}:{p:.2f}", tile // 2, (i + 3) * line, (255, 230, 120))
    legend = list(zip(GROUPS, GROUP_COLORS.tolist())) + [("Text", TEXT_COLOR)]
    rows = (len(legend) + 1) // 2
    top = tile - rows * line - 4
    for k, (name, colour) in enumerate(legend):
        x, y = 8 + (k // rows) * (tile // 2), top + (k % rows) * line
        cv2.rectangle(out, (x, y), (x + line - 4, y + line - 4), tuple(int(c) for c in colour), -1)
        put(name, x + line, y + line - 5, (200, 200, 200))
    return out


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    cv2 = _cv2()
    out = np.ascontiguousarray(tile.copy())
    size = max(0.35, out.shape[0] / 640)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, 1)
    out[:h + base + 8, :w + 10] //= 3  # darken behind the label
    cv2.putText(out, text, (5, h + 4), cv2.FONT_HERSHEY_SIMPLEX, size, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def render_panel(image: np.ndarray, maps: np.ndarray, depth: np.ndarray, people: list, words: list | None,
                 tile: int = 256, valid: np.ndarray | None = None,
                 labels: list[tuple[str, float]] | None = None) -> np.ndarray:
    """Compose the 2 x 4 panel of one prediction.

    Args:
        image: (S, S, 3) uint8 letterboxed RGB input.
        maps: (44, S, S) student outputs in [-1, 1].
        depth: (S, S) depth in [0, 1] (refined or raw).
        people: :class:`student.postprocess.Person` list in store pixels.
        words: decoded token slots ``[(word, score) | None]``, or None without a vocabulary.
        tile: side of each tile in pixels.
        valid: (S, S) bool image content of the letterbox; the output tiles are black outside it (the
            network's outputs on the padding mean nothing).
        labels: the multi-hot head's ``(word, probability)`` above 0.25, or None for a model without it.

    Returns:
        (2 * tile, 4 * tile, 3) uint8 RGB panel.
    """
    scale = tile / image.shape[0]
    rgb = _resize(image, tile)

    def content(picture: np.ndarray) -> np.ndarray:
        return picture if valid is None else picture * valid[..., None].astype(np.uint8)

    tiles = [
        _label(rgb, "input"),
        _label(_resize(content(normals_rgb(maps)), tile), "normals"),
        _label(_resize(content(depth_rgb(depth)), tile), "depth (bright = near)"),
        _label(draw_people(rgb // 2 + 32, people, scale), f"pose: {len(people)} people"),
        _label(_resize(content(joints_rgb(maps)), tile), "joint heatmaps"),
        _label(_resize(content(pafs_rgb(maps)), tile), "PAFs"),
        _label(_resize(groups_overlay(image, maps, valid=valid), tile, nearest=True), "groups + text"),
        words_tile(words, tile, labels=labels),
    ]
    return np.concatenate([np.concatenate(tiles[:4], 1), np.concatenate(tiles[4:], 1)], 0)
