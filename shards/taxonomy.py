"""Target taxonomy shared by every package: COCO panoptic classes, the 10 groups, joints, limbs, channel layout.

This module is the single source of truth for DESIGN sections 5.1 and 5.3. No other file hard-codes a
channel number or a class id: they ask this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class PanopticClass:
    """One of the 133 COCO-panoptic classes, in detectron2's ``COCO_CATEGORIES`` order."""

    contiguous_id: int  # 0..132, the value stored in panoptic.png
    coco_id: int  # category id in COCO's json files (1..200, with gaps)
    name: str
    isthing: bool
    group: str  # one of GROUPS
    color: tuple[int, int, int]


PANOPTIC_CLASSES: tuple[PanopticClass, ...] = (
    PanopticClass(0, 1, 'person', True, 'Person', (220, 20, 60)),
    PanopticClass(1, 2, 'bicycle', True, 'Vehicle', (119, 11, 32)),
    PanopticClass(2, 3, 'car', True, 'Vehicle', (0, 0, 142)),
    PanopticClass(3, 4, 'motorcycle', True, 'Vehicle', (0, 0, 230)),
    PanopticClass(4, 5, 'airplane', True, 'Vehicle', (106, 0, 228)),
    PanopticClass(5, 6, 'bus', True, 'Vehicle', (0, 60, 100)),
    PanopticClass(6, 7, 'train', True, 'Vehicle', (0, 80, 100)),
    PanopticClass(7, 8, 'truck', True, 'Vehicle', (0, 0, 70)),
    PanopticClass(8, 9, 'boat', True, 'Vehicle', (0, 0, 192)),
    PanopticClass(9, 10, 'traffic light', True, 'Obstacle', (250, 170, 30)),
    PanopticClass(10, 11, 'fire hydrant', True, 'Obstacle', (100, 170, 30)),
    PanopticClass(11, 13, 'stop sign', True, 'Obstacle', (220, 220, 0)),
    PanopticClass(12, 14, 'parking meter', True, 'Obstacle', (175, 116, 175)),
    PanopticClass(13, 15, 'bench', True, 'Furniture', (250, 0, 30)),
    PanopticClass(14, 16, 'bird', True, 'Animal', (165, 42, 42)),
    PanopticClass(15, 17, 'cat', True, 'Animal', (255, 77, 255)),
    PanopticClass(16, 18, 'dog', True, 'Animal', (0, 226, 252)),
    PanopticClass(17, 19, 'horse', True, 'Animal', (182, 182, 255)),
    PanopticClass(18, 20, 'sheep', True, 'Animal', (0, 82, 0)),
    PanopticClass(19, 21, 'cow', True, 'Animal', (120, 166, 157)),
    PanopticClass(20, 22, 'elephant', True, 'Animal', (110, 76, 0)),
    PanopticClass(21, 23, 'bear', True, 'Animal', (174, 57, 255)),
    PanopticClass(22, 24, 'zebra', True, 'Animal', (199, 100, 0)),
    PanopticClass(23, 25, 'giraffe', True, 'Animal', (72, 0, 118)),
    PanopticClass(24, 27, 'backpack', True, 'Object', (255, 179, 240)),
    PanopticClass(25, 28, 'umbrella', True, 'Object', (0, 125, 92)),
    PanopticClass(26, 31, 'handbag', True, 'Object', (209, 0, 151)),
    PanopticClass(27, 32, 'tie', True, 'Object', (188, 208, 182)),
    PanopticClass(28, 33, 'suitcase', True, 'Object', (0, 220, 176)),
    PanopticClass(29, 34, 'frisbee', True, 'Object', (255, 99, 164)),
    PanopticClass(30, 35, 'skis', True, 'Object', (92, 0, 73)),
    PanopticClass(31, 36, 'snowboard', True, 'Object', (133, 129, 255)),
    PanopticClass(32, 37, 'sports ball', True, 'Object', (78, 180, 255)),
    PanopticClass(33, 38, 'kite', True, 'Object', (0, 228, 0)),
    PanopticClass(34, 39, 'baseball bat', True, 'Object', (174, 255, 243)),
    PanopticClass(35, 40, 'baseball glove', True, 'Object', (45, 89, 255)),
    PanopticClass(36, 41, 'skateboard', True, 'Object', (134, 134, 103)),
    PanopticClass(37, 42, 'surfboard', True, 'Object', (145, 148, 174)),
    PanopticClass(38, 43, 'tennis racket', True, 'Object', (255, 208, 186)),
    PanopticClass(39, 44, 'bottle', True, 'Object', (197, 226, 255)),
    PanopticClass(40, 46, 'wine glass', True, 'Object', (171, 134, 1)),
    PanopticClass(41, 47, 'cup', True, 'Object', (109, 63, 54)),
    PanopticClass(42, 48, 'fork', True, 'Object', (207, 138, 255)),
    PanopticClass(43, 49, 'knife', True, 'Object', (151, 0, 95)),
    PanopticClass(44, 50, 'spoon', True, 'Object', (9, 80, 61)),
    PanopticClass(45, 51, 'bowl', True, 'Object', (84, 105, 51)),
    PanopticClass(46, 52, 'banana', True, 'Object', (74, 65, 105)),
    PanopticClass(47, 53, 'apple', True, 'Object', (166, 196, 102)),
    PanopticClass(48, 54, 'sandwich', True, 'Object', (208, 195, 210)),
    PanopticClass(49, 55, 'orange', True, 'Object', (255, 109, 65)),
    PanopticClass(50, 56, 'broccoli', True, 'Object', (0, 143, 149)),
    PanopticClass(51, 57, 'carrot', True, 'Object', (179, 0, 194)),
    PanopticClass(52, 58, 'hot dog', True, 'Object', (209, 99, 106)),
    PanopticClass(53, 59, 'pizza', True, 'Object', (5, 121, 0)),
    PanopticClass(54, 60, 'donut', True, 'Object', (227, 255, 205)),
    PanopticClass(55, 61, 'cake', True, 'Object', (147, 186, 208)),
    PanopticClass(56, 62, 'chair', True, 'Furniture', (153, 69, 1)),
    PanopticClass(57, 63, 'couch', True, 'Furniture', (3, 95, 161)),
    PanopticClass(58, 64, 'potted plant', True, 'Furniture', (163, 255, 0)),
    PanopticClass(59, 65, 'bed', True, 'Furniture', (119, 0, 170)),
    PanopticClass(60, 67, 'dining table', True, 'Furniture', (0, 182, 199)),
    PanopticClass(61, 70, 'toilet', True, 'Furniture', (0, 165, 120)),
    PanopticClass(62, 72, 'tv', True, 'Appliance', (183, 130, 88)),
    PanopticClass(63, 73, 'laptop', True, 'Appliance', (95, 32, 0)),
    PanopticClass(64, 74, 'mouse', True, 'Appliance', (130, 114, 135)),
    PanopticClass(65, 75, 'remote', True, 'Appliance', (110, 129, 133)),
    PanopticClass(66, 76, 'keyboard', True, 'Appliance', (166, 74, 118)),
    PanopticClass(67, 77, 'cell phone', True, 'Appliance', (219, 142, 185)),
    PanopticClass(68, 78, 'microwave', True, 'Appliance', (79, 210, 114)),
    PanopticClass(69, 79, 'oven', True, 'Appliance', (178, 90, 62)),
    PanopticClass(70, 80, 'toaster', True, 'Appliance', (65, 70, 15)),
    PanopticClass(71, 81, 'sink', True, 'Object', (127, 167, 115)),
    PanopticClass(72, 82, 'refrigerator', True, 'Appliance', (59, 105, 106)),
    PanopticClass(73, 84, 'book', True, 'Object', (142, 108, 45)),
    PanopticClass(74, 85, 'clock', True, 'Object', (196, 172, 0)),
    PanopticClass(75, 86, 'vase', True, 'Object', (95, 54, 80)),
    PanopticClass(76, 87, 'scissors', True, 'Object', (128, 76, 255)),
    PanopticClass(77, 88, 'teddy bear', True, 'Object', (201, 57, 1)),
    PanopticClass(78, 89, 'hair drier', True, 'Appliance', (246, 0, 122)),
    PanopticClass(79, 90, 'toothbrush', True, 'Appliance', (191, 162, 208)),
    PanopticClass(80, 92, 'banner', False, 'Object', (255, 255, 128)),
    PanopticClass(81, 93, 'blanket', False, 'Object', (147, 211, 203)),
    PanopticClass(82, 95, 'bridge', False, 'Building', (150, 100, 100)),
    PanopticClass(83, 100, 'cardboard', False, 'Obstacle', (168, 171, 172)),
    PanopticClass(84, 107, 'counter', False, 'Furniture', (146, 112, 198)),
    PanopticClass(85, 109, 'curtain', False, 'Material', (210, 170, 100)),
    PanopticClass(86, 112, 'door-stuff', False, 'Obstacle', (92, 136, 89)),
    PanopticClass(87, 118, 'floor-wood', False, 'Material', (218, 88, 184)),
    PanopticClass(88, 119, 'flower', False, 'Nature', (241, 129, 0)),
    PanopticClass(89, 122, 'fruit', False, 'Object', (217, 17, 255)),
    PanopticClass(90, 125, 'gravel', False, 'Nature', (124, 74, 181)),
    PanopticClass(91, 128, 'house', False, 'Building', (70, 70, 70)),
    PanopticClass(92, 130, 'light', False, 'Object', (255, 228, 255)),
    PanopticClass(93, 133, 'mirror-stuff', False, 'Furniture', (154, 208, 0)),
    PanopticClass(94, 138, 'net', False, 'Object', (193, 0, 92)),
    PanopticClass(95, 141, 'pillow', False, 'Object', (76, 91, 113)),
    PanopticClass(96, 144, 'platform', False, 'Building', (255, 180, 195)),
    PanopticClass(97, 145, 'playingfield', False, 'Building', (106, 154, 176)),
    PanopticClass(98, 147, 'railroad', False, 'Building', (230, 150, 140)),
    PanopticClass(99, 148, 'river', False, 'Nature', (60, 143, 255)),
    PanopticClass(100, 149, 'road', False, 'Building', (128, 64, 128)),
    PanopticClass(101, 151, 'roof', False, 'Building', (92, 82, 55)),
    PanopticClass(102, 154, 'sand', False, 'Nature', (254, 212, 124)),
    PanopticClass(103, 155, 'sea', False, 'Nature', (73, 77, 174)),
    PanopticClass(104, 156, 'shelf', False, 'Furniture', (255, 160, 98)),
    PanopticClass(105, 159, 'snow', False, 'Nature', (255, 255, 255)),
    PanopticClass(106, 161, 'stairs', False, 'Building', (104, 84, 109)),
    PanopticClass(107, 166, 'tent', False, 'Object', (169, 164, 131)),
    PanopticClass(108, 168, 'towel', False, 'Object', (225, 199, 255)),
    PanopticClass(109, 171, 'wall-brick', False, 'Obstacle', (137, 54, 74)),
    PanopticClass(110, 175, 'wall-stone', False, 'Obstacle', (135, 158, 223)),
    PanopticClass(111, 176, 'wall-tile', False, 'Obstacle', (7, 246, 231)),
    PanopticClass(112, 177, 'wall-wood', False, 'Obstacle', (107, 255, 200)),
    PanopticClass(113, 178, 'water-other', False, 'Nature', (58, 41, 149)),
    PanopticClass(114, 180, 'window-blind', False, 'Building', (183, 121, 142)),
    PanopticClass(115, 181, 'window-other', False, 'Building', (255, 73, 97)),
    PanopticClass(116, 184, 'tree-merged', False, 'Nature', (107, 142, 35)),
    PanopticClass(117, 185, 'fence-merged', False, 'Material', (190, 153, 153)),
    PanopticClass(118, 186, 'ceiling-merged', False, 'Material', (146, 139, 141)),
    PanopticClass(119, 187, 'sky-other-merged', False, 'Nature', (70, 130, 180)),
    PanopticClass(120, 188, 'cabinet-merged', False, 'Furniture', (134, 199, 156)),
    PanopticClass(121, 189, 'table-merged', False, 'Furniture', (209, 226, 140)),
    PanopticClass(122, 190, 'floor-other-merged', False, 'Material', (96, 36, 108)),
    PanopticClass(123, 191, 'pavement-merged', False, 'Building', (96, 96, 96)),
    PanopticClass(124, 192, 'mountain-merged', False, 'Nature', (64, 170, 64)),
    PanopticClass(125, 193, 'grass-merged', False, 'Nature', (152, 251, 152)),
    PanopticClass(126, 194, 'dirt-merged', False, 'Nature', (208, 229, 228)),
    PanopticClass(127, 195, 'paper-merged', False, 'Material', (206, 186, 171)),
    PanopticClass(128, 196, 'food-other-merged', False, 'Object', (152, 161, 64)),
    PanopticClass(129, 197, 'building-other-merged', False, 'Building', (116, 112, 0)),
    PanopticClass(130, 198, 'rock-merged', False, 'Nature', (0, 114, 143)),
    PanopticClass(131, 199, 'wall-other-merged', False, 'Obstacle', (102, 102, 156)),
    PanopticClass(132, 200, 'rug-merged', False, 'Material', (250, 141, 255)),
)
NUM_PANOPTIC_CLASSES = len(PANOPTIC_CLASSES)  # 133
PANOPTIC_VOID = 255  # panoptic.png value for unlabeled pixels

#: The 10 segmentation groups of DESIGN 5.3; groups.png stores index + 1 (0 = unlabeled).
GROUPS: tuple[str, ...] = (
    "Person", "Vehicle", "Animal", "Object", "Furniture",
    "Appliance", "Material", "Obstacle", "Building", "Nature",
)
GROUP_UNLABELED = 0

THING_CLASSES: tuple[PanopticClass, ...] = tuple(c for c in PANOPTIC_CLASSES if c.isthing)  # 80
STUFF_CLASSES: tuple[PanopticClass, ...] = tuple(c for c in PANOPTIC_CLASSES if not c.isthing)  # 53
CLASS_BY_COCO_ID: Mapping[int, PanopticClass] = MappingProxyType({c.coco_id: c for c in PANOPTIC_CLASSES})
CLASS_BY_NAME: Mapping[str, PanopticClass] = MappingProxyType({c.name: c for c in PANOPTIC_CLASSES})


def group_value(class_name: str) -> int:
    """Return the groups.png value (1..10) of a panoptic class name."""
    return GROUPS.index(CLASS_BY_NAME[class_name].group) + 1


#: COCO-17 keypoints in COCO order (DESIGN 5.1 channels 0-16).
JOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
#: Horizontal flip partner of each joint (for augmentation).
JOINT_FLIP: tuple[int, ...] = tuple(
    JOINTS.index(j.replace("left_", "right_")) if j.startswith("left_")
    else JOINTS.index(j.replace("right_", "left_")) if j.startswith("right_") else i
    for i, j in enumerate(JOINTS)
)
#: Heatmap radius offset per joint added to the schedule's base radius (DESIGN 5.5).
JOINT_RADIUS_OFFSET: tuple[int, ...] = tuple(
    -1 if j in ("nose", "left_eye", "right_eye")
    else 2 if j.endswith(("elbow", "knee"))
    else 4 if j.endswith(("wrist", "ankle"))
    else 0
    for j in JOINTS
)


@dataclass(frozen=True)
class Limb:
    """A PAF limb, child -> parent; ``sign`` is +1, or -1 for left limbs and limbs that end at the nose."""

    child: int
    parent: int
    sign: int

    @property
    def name(self) -> str:
        return f"{JOINTS[self.child]}->{JOINTS[self.parent]}"


def _limb(child: str, parent: str) -> Limb:
    negate = child.startswith("left_") or parent == "nose"
    return Limb(JOINTS.index(child), JOINTS.index(parent), -1 if negate else 1)


#: The 12 PAF limbs in channel order (DESIGN 5.1 channels 17-28).
LIMBS: tuple[Limb, ...] = (
    _limb("right_wrist", "right_elbow"), _limb("right_elbow", "right_shoulder"), _limb("right_shoulder", "nose"),
    _limb("right_ankle", "right_knee"), _limb("right_knee", "right_hip"), _limb("right_hip", "nose"),
    _limb("left_ankle", "left_knee"), _limb("left_knee", "left_hip"), _limb("left_hip", "nose"),
    _limb("left_wrist", "left_elbow"), _limb("left_elbow", "left_shoulder"), _limb("left_shoulder", "nose"),
)


@dataclass(frozen=True)
class ChannelGroup:
    """A contiguous run of student output channels."""

    name: str  # joints | pafs | depth | normals | text | groups
    start: int
    names: tuple[str, ...]

    @property
    def stop(self) -> int:
        return self.start + len(self.names)

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


def _layout() -> tuple[ChannelGroup, ...]:
    parts = (
        ("joints", JOINTS),
        ("pafs", tuple(limb.name for limb in LIMBS)),
        ("depth", ("depth",)),
        ("normals", ("normal_x", "normal_y", "normal_z")),
        ("text", ("text",)),
        ("groups", GROUPS),
    )
    out, start = [], 0
    for name, names in parts:
        out.append(ChannelGroup(name, start, tuple(names)))
        start += len(names)
    return tuple(out)


#: Student output channel layout (DESIGN 5.1): 44 channels.
CHANNEL_GROUPS: tuple[ChannelGroup, ...] = _layout()
CHANNELS: Mapping[str, ChannelGroup] = MappingProxyType({g.name: g for g in CHANNEL_GROUPS})
NUM_CHANNELS: int = CHANNEL_GROUPS[-1].stop  # 44
#: Caption token outputs of the student (DESIGN 5.4).
NUM_TOKENS = 8
GLOVE_DIM = 300
MAX_TOKEN_IDS = 32
VOCAB_SIZE = 2048
