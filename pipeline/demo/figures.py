"""Generated demo scenes: stick-figure people drawn at exactly known keypoints on simple outdoor backgrounds."""

from __future__ import annotations

import numpy as np

from pipeline.demo.scenes import Region, Scene
from shards.taxonomy import JOINTS

#: Joint positions of a figure facing the camera, x from the body's centre line and y from the top of
#: the head, in units of the figure's height. The person's left is on the image's right.
_STAND = {
    "nose": (0.0, 0.085), "left_eye": (0.025, 0.065), "right_eye": (-0.025, 0.065),
    "left_ear": (0.055, 0.075), "right_ear": (-0.055, 0.075),
    "left_shoulder": (0.12, 0.2), "right_shoulder": (-0.12, 0.2),
    "left_elbow": (0.17, 0.37), "right_elbow": (-0.17, 0.37),
    "left_wrist": (0.2, 0.52), "right_wrist": (-0.2, 0.52),
    "left_hip": (0.08, 0.52), "right_hip": (-0.08, 0.52),
    "left_knee": (0.09, 0.75), "right_knee": (-0.09, 0.75),
    "left_ankle": (0.1, 0.97), "right_ankle": (-0.1, 0.97),
}
POSES = {
    "stand": _STAND,
    "wave": {**_STAND, "right_elbow": (-0.24, 0.2), "right_wrist": (-0.26, 0.03)},
    "arms_up": {**_STAND, "right_elbow": (-0.2, 0.1), "right_wrist": (-0.22, -0.05),
                "left_elbow": (0.2, 0.1), "left_wrist": (0.22, -0.05)},
    "walk": {**_STAND, "left_knee": (0.13, 0.74), "left_ankle": (0.21, 0.96), "right_knee": (-0.06, 0.75),
             "right_ankle": (-0.15, 0.97), "left_wrist": (0.1, 0.5), "right_wrist": (-0.27, 0.47)},
}
_BONES = (("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"), ("right_shoulder", "right_elbow"),
          ("right_elbow", "right_wrist"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
          ("right_hip", "right_knee"), ("right_knee", "right_ankle"))
_SHIFT = 4  # OpenCV fixed-point bits: figures are drawn with 1/16 pixel precision
SKIN = (224, 172, 105)


def figure_keypoints(cx: float, top: float, height: float, pose: str = "stand") -> np.ndarray:
    """(17, 2) image coordinates of a figure whose centre line is ``cx`` and head top ``top``."""
    rel = POSES[pose]
    return np.array([[cx + rel[j][0] * height, top + rel[j][1] * height] for j in JOINTS], np.float64)


def _fixed(p: np.ndarray) -> tuple[int, int]:
    """Continuous coordinates (pixel centre at i + 0.5) -> OpenCV fixed point."""
    return tuple(int(v) for v in np.rint((np.asarray(p) - 0.5) * (1 << _SHIFT)))


def draw_figure(image: np.ndarray, kps: np.ndarray, height: float, color: tuple[int, int, int]) -> np.ndarray:
    """Draw a stick figure in place; returns its (H, W) bool mask."""
    import cv2

    layer = np.zeros(image.shape[:2], np.uint8)
    j = {name: kps[i] for i, name in enumerate(JOINTS)}
    thick = max(2, int(round(height * 0.05)))
    torso = np.array([_fixed(j[n]) for n in ("left_shoulder", "right_shoulder", "right_hip", "left_hip")], np.int32)
    neck_top = (j["nose"] + (j["left_shoulder"] + j["right_shoulder"]) / 2) / 2
    head_c, head_r = (j["left_ear"] + j["right_ear"]) / 2, height * 0.075
    for target, value in ((image, color), (layer, 255)):
        cv2.fillPoly(target, [torso], value, cv2.LINE_AA if target is image else cv2.LINE_8, _SHIFT)
        for a, b in _BONES + (("left_shoulder", "right_shoulder"),):
            cv2.line(target, _fixed(j[a]), _fixed(j[b]), value, thick, cv2.LINE_8, _SHIFT)
        cv2.line(target, _fixed(neck_top), _fixed((j["left_shoulder"] + j["right_shoulder"]) / 2), value, thick,
                 cv2.LINE_8, _SHIFT)
        cv2.circle(target, _fixed(head_c), int(head_r * (1 << _SHIFT)), SKIN if target is image else 255, -1,
                   cv2.LINE_8, _SHIFT)
    for eye in ("left_eye", "right_eye"):
        cv2.circle(image, _fixed(j[eye]), max(1, int(height * 0.008)) << _SHIFT, (20, 20, 20), -1, cv2.LINE_8,
                   _SHIFT)
    cv2.circle(image, _fixed(j["nose"]), max(1, int(height * 0.006)) << _SHIFT, (150, 90, 60), -1, cv2.LINE_8,
               _SHIFT)
    return layer > 0


def _background(h: int, w: int, horizon: int, top_rgb, bottom_rgb, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    img[:horizon] = np.asarray(top_rgb, np.float32) * (1 - 0.35 * t) + 40 * t
    img[horizon:] = np.asarray(bottom_rgb, np.float32)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _people(image: np.ndarray, specs) -> list[Region]:
    regions = []
    for cx, top, height, pose, color in specs:
        kps = figure_keypoints(cx, top, height, pose)
        mask = draw_figure(image, kps, height, color)
        regions.append(Region("person", mask=mask, keypoints=tuple((float(x), float(y), 2) for x, y in kps)))
    return regions


def _poly_mask(shape: tuple[int, int], pts) -> np.ndarray:
    import cv2

    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.asarray(pts, np.int32)], 255)
    return mask > 0


def park() -> Scene:
    """Two people and a ball on a lawn under a tree."""
    import cv2

    h, w = 480, 640
    img = _background(h, w, 250, (110, 160, 225), (70, 150, 60), seed=1)
    trunk = ((520, 160), (545, 160), (548, 300), (517, 300))
    cv2.fillPoly(img, [np.asarray(trunk, np.int32)], (100, 70, 40))
    cv2.circle(img, (532, 140), 70, (40, 110, 40), -1)
    crown = np.zeros((h, w), np.uint8)
    cv2.circle(crown, (532, 140), 70, 255, -1)
    tree = (crown > 0) | _poly_mask((h, w), trunk)
    people = _people(img, ((200, 150, 280, "wave", (200, 40, 40)), (380, 170, 260, "stand", (40, 60, 180))))
    cv2.circle(img, (300, 440), 18, (240, 240, 240), -1)
    ball = np.zeros((h, w), np.uint8)
    cv2.circle(ball, (300, 440), 18, 255, -1)
    return Scene("park", img, (
        Region("sky-other-merged", ((0, 0), (w, 0), (w, 250), (0, 250))),
        Region("grass-merged", ((0, 250), (w, 250), (w, h), (0, h))),
        Region("tree-merged", mask=tree), *people, Region("sports ball", mask=ball > 0),
    ), (
        "Two people standing on the grass in a park with a ball.",
        "A man waves while a woman stands next to him on a lawn.",
        "Two cartoon figures play with a white ball in a green park.",
        "A couple of people on a grassy field near a tree.",
        "Two simple drawn people in a park with a soccer ball.",
    ))


def street() -> Scene:
    """A walker, a car, a stop sign and a distant crowd in front of buildings."""
    import cv2

    h, w = 427, 640
    img = _background(h, w, 300, (150, 180, 220), (90, 90, 95), seed=2)
    building = ((0, 60), (250, 60), (250, 300), (0, 300))
    cv2.fillPoly(img, [np.asarray(building, np.int32)], (150, 120, 100))
    for x in range(20, 240, 55):
        for y in range(90, 270, 60):
            cv2.rectangle(img, (x, y), (x + 30, y + 35), (60, 80, 110), -1)
    crowd_mask = np.zeros((h, w), np.bool_)
    crowd_img_specs = [(270 + 14 * i, 262 + (i % 2) * 3, 40, "stand", (60 + 20 * i, 60, 90)) for i in range(8)]
    for cx, top, hh, pose, color in crowd_img_specs:
        crowd_mask |= draw_figure(img, figure_keypoints(cx, top, hh, pose), hh, color)
    car = ((400, 300), (430, 255), (540, 255), (575, 300), (610, 305), (610, 355), (380, 355), (380, 305))
    cv2.fillPoly(img, [np.asarray(car, np.int32)], (30, 60, 170))
    for cx in (430, 565):
        cv2.circle(img, (cx, 358), 22, (20, 20, 20), -1)
    car_mask = _poly_mask((h, w), car)
    for cx in (430, 565):
        wheel = np.zeros((h, w), np.uint8)
        cv2.circle(wheel, (cx, 358), 22, 255, -1)
        car_mask |= wheel > 0
    octagon = np.array([(600 + 26 * np.cos(a), 120 + 26 * np.sin(a)) for a in np.arange(8) * np.pi / 4 + np.pi / 8])
    cv2.line(img, (600, 140), (600, 300), (120, 120, 120), 5)
    cv2.fillPoly(img, [octagon.astype(np.int32)], (200, 20, 20))
    cv2.putText(img, "STOP", (581, 127), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 2)
    people = _people(img, ((320, 150, 240, "walk", (230, 160, 30)),))
    return Scene("street", img, (
        Region("sky-other-merged", ((0, 0), (w, 0), (w, 300), (0, 300))),
        Region("road", ((0, 300), (w, 300), (w, h), (0, h))),
        Region("building-other-merged", building),
        Region("person", mask=crowd_mask, iscrowd=True),
        Region("car", mask=car_mask),
        Region("stop sign", tuple(map(tuple, octagon))),
        *people,
    ), (
        "A person walks down a city street past a blue car and a stop sign.",
        "A pedestrian crossing the road in front of a brick building.",
        "A blue car parked on the street near a red stop sign.",
        "A crowd of people waits by a building while a man walks across the street.",
        "A city scene with a building, a car and people walking.",
    ))


def beach() -> Scene:
    """A person with raised arms flying a kite on a beach (portrait format)."""
    import cv2

    h, w = 560, 420
    img = _background(h, w, 300, (120, 170, 235), (225, 200, 140), seed=3)
    sea = ((0, 300), (w, 300), (w, 360), (0, 360))
    cv2.fillPoly(img, [np.asarray(sea, np.int32)], (40, 90, 160))
    kite = ((300, 40), (340, 80), (300, 140), (260, 80))
    cv2.fillPoly(img, [np.asarray(kite, np.int32)], (230, 40, 160))
    people = _people(img, ((180, 230, 300, "arms_up", (250, 120, 20)),))
    return Scene("beach", img, (
        Region("sky-other-merged", ((0, 0), (w, 0), (w, 300), (0, 300))),
        Region("sea", sea),
        Region("sand", ((0, 360), (w, 360), (w, h), (0, h))),
        Region("kite", kite),
        *people,
    ), (
        "A person on the beach raises both arms while a pink kite flies above.",
        "A man standing on the sand by the sea flying a kite.",
        "Someone cheers on a sandy beach with the ocean behind.",
        "A pink kite in the blue sky over a beach and a person.",
        "A person with arms up stands on a beach near the water.",
    ))


def snow() -> Scene:
    """Three people on a snowy slope below mountains."""
    import cv2

    h, w = 480, 640
    img = _background(h, w, 200, (100, 150, 230), (235, 240, 250), seed=4)
    mountain = ((0, 200), (120, 90), (260, 170), (380, 60), (520, 160), (640, 110), (640, 220), (0, 220))
    cv2.fillPoly(img, [np.asarray(mountain, np.int32)], (110, 110, 130))
    people = _people(img, ((150, 200, 230, "stand", (200, 30, 30)), (330, 180, 250, "wave", (30, 30, 30)),
                           (500, 210, 220, "walk", (30, 140, 60))))
    return Scene("snow", img, (
        Region("sky-other-merged", ((0, 0), (w, 0), (w, 220), (0, 220))),
        Region("mountain-merged", mountain),
        Region("snow", ((0, 220), (w, 220), (w, h), (0, h))),
        *people,
    ), (
        "Three people standing in the snow in front of mountains.",
        "A group of three people on a snowy hill under a blue sky.",
        "People wave on a snow covered slope with mountains behind them.",
        "Three friends in winter clothes standing in the snow.",
        "A man waves to the camera while two people stand in the snow.",
    ))
