"""Scenes of the demo dataset: real photos shipped by scikit-image and matplotlib with hand-made annotations,
and generated scenes of stick-figure people whose keypoints are exactly known.

A scene is pixels plus regions painted in order (later regions cover earlier ones): each region is a
COCO-panoptic class with a polygon or a mask, people carry their 17 keypoints, and five captions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from shards.taxonomy import JOINTS

Polygon = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Region:
    """One panoptic region; ``polygon`` or ``mask`` (bool (H, W)); ``keypoints`` (17, 3) for people."""

    category: str
    polygon: Polygon | None = None
    mask: np.ndarray | None = field(default=None, compare=False)
    keypoints: tuple[tuple[float, float, int], ...] | None = None
    iscrowd: bool = False


@dataclass(frozen=True)
class Scene:
    """An image (RGB uint8, as displayed) with its regions and captions."""

    name: str
    image: np.ndarray = field(compare=False)
    regions: tuple[Region, ...]
    captions: tuple[str, ...]


def _kp(**named: tuple[float, float, int]) -> tuple[tuple[float, float, int], ...]:
    """17 keypoints from named joints; joints not named are unlabeled (0, 0, 0)."""
    return tuple(tuple(named.get(j, (0.0, 0.0, 0))) for j in JOINTS)


def _full(w: int, h: int) -> Polygon:
    return ((0, 0), (w, 0), (w, h), (0, h))


def _shift(poly: Polygon, dx: float) -> Polygon:
    return tuple((x + dx, y) for x, y in poly)


# ---------------------------------------------------------------------------------------------- photos

def astronaut() -> Scene:
    import skimage.data

    kps = _kp(nose=(222, 128, 2), left_eye=(243, 106, 2), right_eye=(206, 106, 2), left_ear=(282, 118, 1),
              right_ear=(165, 118, 1), left_shoulder=(320, 250, 2), right_shoulder=(105, 255, 2),
              left_elbow=(350, 400, 1), right_elbow=(60, 400, 2), right_wrist=(165, 480, 2))
    return Scene("astronaut", skimage.data.astronaut(), (
        Region("wall-other-merged", _full(512, 512)),
        Region("banner", ((0, 0), (100, 0), (95, 230), (40, 330), (30, 512), (0, 512))),
        Region("airplane", ((395, 0), (430, 0), (445, 60), (450, 200), (470, 270), (360, 275), (380, 200),
                            (385, 60))),
        Region("person", ((150, 40), (180, 15), (260, 15), (300, 60), (300, 150), (355, 260), (370, 512),
                          (20, 512), (30, 330), (60, 250), (130, 225), (150, 150)), keypoints=kps),
    ), (
        "A smiling woman astronaut in an orange space suit poses in front of an American flag.",
        "An astronaut in an orange suit holding a helmet next to a model of the space shuttle.",
        "A female astronaut posing for an official portrait with a flag and a shuttle model.",
        "A woman wearing an orange flight suit smiles at the camera.",
        "Portrait of a smiling astronaut with short hair holding her helmet.",
    ))


def coffee() -> Scene:
    import skimage.data

    return Scene("coffee", skimage.data.coffee(), (  # the saucer stays void: COCO has no class for it
        Region("table-merged", ((0, 0), (600, 0), (600, 400), (0, 400))),
        Region("cup", ((175, 75), (200, 35), (260, 18), (330, 20), (385, 40), (410, 90), (400, 160), (385, 215),
                       (330, 245), (250, 250), (235, 300), (200, 300), (195, 240), (180, 180), (172, 120))),
        Region("spoon", ((400, 70), (422, 68), (415, 110), (395, 180), (385, 240), (400, 270), (402, 305),
                         (380, 322), (345, 320), (328, 295), (335, 262), (365, 245), (375, 215), (390, 160))),
    ), (
        "A cup of coffee on a red saucer with a spoon on a wooden table.",
        "An espresso cup filled with coffee sitting on a saucer.",
        "A red and white coffee cup with a silver spoon on a wooden table.",
        "Close up of a cup of espresso with crema on a wooden table.",
        "A small coffee cup and a spoon resting on a red plate.",
    ))


def chelsea() -> Scene:
    import skimage.data

    return Scene("chelsea", skimage.data.chelsea(), (
        Region("wall-other-merged", _full(451, 300)),
        Region("cat", ((0, 0), (400, 0), (395, 40), (360, 120), (370, 220), (380, 300), (0, 300))),
    ), (
        "A close up of a tabby cat with green eyes looking at the camera.",
        "The face of a brown striped cat with long white whiskers.",
        "A tabby cat staring straight ahead with big eyes.",
        "Close up photo of a cat face with green eyes and a pink nose.",
        "A striped kitten looks into the camera.",
    ))


def rocket() -> Scene:
    import skimage.data

    def light(x: float, y: float, r: float = 7) -> Polygon:
        return tuple((x + r * np.cos(a), y + r * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 12, endpoint=False))

    return Scene("rocket", skimage.data.rocket(), (  # the rocket itself stays void: COCO has no rocket class
        Region("sky-other-merged", _full(640, 427)),
        Region("tree-merged", ((0, 365), (640, 365), (640, 395), (0, 395))),
        Region("pavement-merged", ((0, 395), (640, 395), (640, 427), (0, 427))),
        Region("building-other-merged", ((0, 0), (90, 0), (75, 427), (0, 427))),
        Region("building-other-merged", ((555, 0), (615, 0), (640, 100), (640, 427), (575, 427))),
        Region("light", light(150, 378)),
        Region("light", light(362, 395)),
        Region("light", light(432, 394)),
    ), (
        "A rocket standing on the launch pad at dusk between tall towers.",
        "A white rocket on a launch pad with lights glowing at night.",
        "A space rocket is ready for launch under a dark blue sky.",
        "Launch towers and bright lights around a rocket at twilight.",
        "A tall rocket on its launch pad with metal towers around it.",
    ))


def motorcycle(side: str) -> Scene:
    """The left or right view of scikit-image's stereo pair (right = left shifted by the disparity)."""
    import skimage.data

    left, right, _ = skimage.data.stereo_motorcycle()
    near, far = (0.0, 0.0) if side == "left" else (-48.0, -19.0)  # median disparities of bike and shelf
    moto = ((95, 195), (150, 150), (350, 160), (460, 150), (500, 100), (560, 110), (580, 160), (600, 260),
            (640, 290), (680, 340), (685, 420), (650, 450), (590, 440), (540, 400), (480, 370), (340, 380),
            (340, 435), (320, 435), (310, 380), (270, 380), (230, 400), (160, 400), (125, 360), (118, 290),
            (100, 240))
    return Scene(f"motorcycle_{side}", left if side == "left" else right, (
        Region("floor-other-merged", _full(741, 500)),
        Region("wall-wood", ((0, 0), (741, 0), (741, 250), (0, 250))),
        Region("shelf", _shift(((340, 0), (720, 0), (720, 290), (340, 290)), far)),
        Region("cardboard", _shift(((525, 15), (590, 15), (590, 95), (525, 95)), far)),
        Region("cardboard", _shift(((612, 185), (685, 185), (685, 275), (612, 275)), far)),
        Region("bench", _shift(((45, 110), (280, 105), (290, 190), (270, 300), (60, 305), (45, 200)), far)),
        Region("bicycle", _shift(((0, 140), (40, 140), (45, 230), (0, 230)), far)),
        Region("motorcycle", _shift(moto, near)),
    ), (
        "A red motorcycle parked in a garage next to shelves full of boxes.",
        "A red and black motorbike on its kickstand in a workshop.",
        "A vintage red motorcycle parked inside a cluttered garage.",
        "A motorcycle with a black seat parked in front of a wooden bench.",
        "A shiny red motorcycle stands on a concrete floor in a storage room.",
    ))


def grace_hopper() -> Scene:
    import matplotlib
    from PIL import Image

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    with Image.open(path) as img:
        image = np.asarray(img.convert("RGB"))
    kps = _kp(nose=(262, 245, 2), left_eye=(305, 195, 2), right_eye=(222, 195, 2), left_ear=(352, 220, 1),
              right_ear=(168, 225, 1), left_shoulder=(440, 390, 2), right_shoulder=(75, 395, 2))
    return Scene("grace_hopper", image, (
        Region("wall-other-merged", _full(512, 600)),
        Region("banner", ((0, 0), (150, 0), (150, 330), (130, 360), (30, 380), (0, 420))),
        Region("person", ((150, 80), (190, 40), (260, 25), (340, 45), (370, 110), (370, 200), (345, 300),
                          (420, 350), (490, 390), (512, 450), (512, 600), (10, 600), (20, 420), (60, 360),
                          (170, 320), (165, 230), (150, 170)), keypoints=kps),
        Region("tie", ((245, 420), (285, 420), (290, 470), (270, 500), (245, 470))),
    ), (
        "An old woman in a navy uniform and cap poses in front of a flag.",
        "Portrait of an elderly woman wearing glasses and a military hat.",
        "A woman in a dark uniform with medals and a white collar.",
        "An older lady in a navy officer uniform smiles slightly for the camera.",
        "A woman wearing glasses and a uniform stands before an American flag.",
    ))


def cameraman() -> Scene:
    import skimage.data

    gray = skimage.data.camera()
    kps = _kp(nose=(252, 160, 2), right_eye=(238, 145, 2), right_ear=(190, 137, 2), right_shoulder=(140, 160, 2),
              right_elbow=(160, 260, 2), left_elbow=(270, 265, 1), right_wrist=(220, 220, 2),
              left_wrist=(305, 195, 2), right_hip=(110, 410, 1))
    return Scene("cameraman", np.repeat(gray[:, :, None], 3, axis=2), (
        Region("sky-other-merged", ((0, 0), (512, 0), (512, 230), (0, 230))),
        Region("grass-merged", ((0, 230), (512, 230), (512, 512), (0, 512))),
        Region("building-other-merged", ((330, 150), (512, 150), (512, 235), (330, 235))),
        Region("person", ((0, 200), (60, 160), (130, 110), (165, 75), (210, 65), (255, 90), (265, 140),
                          (330, 170), (330, 215), (290, 240), (250, 300), (150, 360), (150, 512), (0, 512)),
               keypoints=kps),
    ), (
        "A black and white photo of a man looking through a camera on a tripod.",
        "A man in a dark coat takes a picture with a camera in a field.",
        "A photographer standing on the grass with his camera on a tripod.",
        "A man with black gloves looks into an old camera outdoors.",
        "A cameraman films on a grassy field with buildings in the distance.",
    ))


def page() -> Scene:
    import skimage.data

    gray = skimage.data.page()
    return Scene("page", np.repeat(gray[:, :, None], 3, axis=2), (Region("paper-merged", _full(384, 191)),), (
        "A printed page of text about region based segmentation.",
        "A scanned page of a book with a heading and a paragraph of text.",
        "Black text printed on a white sheet of paper.",
        "A page of a document with a line of computer code.",
        "A photo of a printed page with a title and words.",
    ))


def handwriting() -> Scene:
    import skimage.data

    gray = skimage.data.text()
    return Scene("handwriting", np.repeat(gray[:, :, None], 3, axis=2), (Region("paper-merged", _full(448, 172)),), (
        "Handwritten math symbols on a sheet of lined paper.",
        "A close up of handwriting with numbers and letters on paper.",
        "Equations written with a pen on a piece of paper.",
        "A sheet of paper with handwritten formulas.",
        "Black ink letters written on a white page.",
    ))


def flipped(scene: Scene) -> Scene:
    """Mirror a scene left-right (keypoints swap sides, as a flipped person's joints do)."""
    from shards.taxonomy import JOINT_FLIP

    w = scene.image.shape[1]
    regions = []
    for r in scene.regions:
        kps = None
        if r.keypoints is not None:
            kps = tuple((w - r.keypoints[j][0], r.keypoints[j][1], r.keypoints[j][2]) if r.keypoints[j][2] else
                        (0.0, 0.0, 0) for j in JOINT_FLIP)
        poly = None if r.polygon is None else tuple((w - x, y) for x, y in r.polygon)
        mask = None if r.mask is None else r.mask[:, ::-1].copy()
        regions.append(Region(r.category, poly, mask, kps, r.iscrowd))
    return Scene(scene.name + "_flipped", np.ascontiguousarray(scene.image[:, ::-1]), tuple(regions), scene.captions)
