"""Target rendering and store <-> [-1, 1] conversions of the student (DESIGN 5)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from shards.taxonomy import CHANNELS, GROUPS, JOINT_RADIUS_OFFSET, JOINTS, LIMBS, NUM_CHANNELS
from student import targets as T
from student import values as V


def _person(points: dict[str, tuple[float, float]]) -> np.ndarray:
    kp = np.zeros((1, len(JOINTS), 3), np.float32)
    for name, (x, y) in points.items():
        kp[0, JOINTS.index(name)] = (x, y, 2)
    return kp


def test_heatmap_peak_is_the_keypoint_pixel_and_background_is_minus_one() -> None:
    kp = _person({"nose": (20.3, 30.7), "left_wrist": (100.5, 12.2), "right_ankle": (0.2, 127.9)})
    maps = T.render_heatmaps(kp, 128, base_radius=8)
    assert maps.shape == (17, 128, 128) and maps.dtype == np.float32
    for name, (x, y) in (("nose", (20.3, 30.7)), ("left_wrist", (100.5, 12.2)), ("right_ankle", (0.2, 127.9))):
        j = JOINTS.index(name)
        assert np.unravel_index(maps[j].argmax(), maps[j].shape) == (int(y), int(x))
        assert maps[j].max() > 0.5
    assert (maps[JOINTS.index("left_eye")] == -1).all()  # unlabelled joint: background only
    assert maps.min() == -1.0


def test_heatmap_radius_follows_schedule_and_joint_offset() -> None:
    kp = _person({"nose": (128.5, 128.5), "left_wrist": (60.5, 60.5)})
    maps = T.render_heatmaps(kp, 256, base_radius=10)
    for name in ("nose", "left_wrist"):
        j = JOINTS.index(name)
        r = 10 + JOINT_RADIUS_OFFSET[j]
        row = maps[j, int(kp[0, j, 1])]
        assert (row > -1).sum() == 2 * r + 1  # the blob spans exactly the radius on each side
    sizes = T.TargetSizes((23, 8), (6, 2), 20)
    assert sizes.at(0) == (23, 6) and sizes.at(19) == (23, 6) and sizes.at(20) == (22, 5)
    assert sizes.at(1000) == (8, 2) and sizes.at(None) == (8, 2)


def test_heatmaps_max_blend_across_people() -> None:
    kp = np.concatenate([_person({"nose": (10.5, 10.5)}), _person({"nose": (14.5, 10.5)})])
    maps = T.render_heatmaps(kp, 32, base_radius=8)
    single = T.render_heatmaps(kp[:1], 32, base_radius=8)
    assert np.allclose(maps[0], np.maximum(single[0], T.render_heatmaps(kp[1:], 32, base_radius=8)[0]))


@pytest.mark.parametrize("limb_index", range(len(LIMBS)))
def test_paf_sign_and_direction(limb_index: int) -> None:
    limb = LIMBS[limb_index]
    child, parent = (40.5, 100.5), (200.5, 60.5)
    kp = _person({JOINTS[limb.child]: child, JOINTS[limb.parent]: parent})
    pafs = T.render_pafs(kp, 256, width=4)
    field = pafs[limb_index]
    # along the limb from child to parent the value ramps from -sign to +sign
    ts = np.linspace(0.05, 0.95, 10)
    values = [field[int(child[1] + t * (parent[1] - child[1])), int(child[0] + t * (parent[0] - child[0]))]
              for t in ts]
    expected = limb.sign * (2 * ts - 1)
    assert np.allclose(values, expected, atol=0.05)
    assert np.all(np.diff(values) * limb.sign > 0)
    assert limb.sign == (-1 if JOINTS[limb.child].startswith("left_") or JOINTS[limb.parent] == "nose" else 1)
    assert field[5, 250] == -1.0  # background
    others = np.delete(pafs, limb_index, axis=0)
    assert (others == -1).all()  # only this limb has both joints labelled


def test_paf_needs_both_joints() -> None:
    kp = _person({"right_wrist": (10.5, 10.5)})
    assert (T.render_pafs(kp, 64, 4) == -1).all()


def test_store_conversions_round_trip() -> None:
    rng = np.random.default_rng(0)
    depth = rng.integers(0, 65536, (16, 16), dtype=np.uint16)
    d = V.depth_to_target(depth)
    assert d.min() >= -1 and d.max() <= 1 and np.array_equal(V.target_to_depth(d), depth)
    normals = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    n = V.normals_to_target(normals)
    assert n.shape == (3, 16, 16) and np.array_equal(V.target_to_normals(n), normals)
    text = np.where(rng.random((16, 16)) < 0.3, 255, 0).astype(np.uint8)
    assert set(np.unique(V.text_to_target(text))) <= {-1.0, 1.0}
    assert np.array_equal(V.target_to_text(V.text_to_target(text)), text)
    groups = rng.integers(0, len(GROUPS) + 1, (16, 16), dtype=np.uint8)
    onehot = V.groups_to_target(groups)
    assert onehot.shape == (len(GROUPS), 16, 16)
    assert ((onehot == 1).sum(axis=0) == (groups > 0)).all()  # one-hot, unlabeled = all -1
    assert np.array_equal(V.target_to_groups(onehot), groups)


def test_crowd_mask_from_polygons_bbox_and_rle() -> None:
    from pycocotools import mask as mask_utils

    rle_mask = np.zeros((32, 32), np.uint8)
    rle_mask[20:24, 2:6] = 1
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    pose = {"persons": [], "crowd": [
        {"bbox": [0, 0, 4, 4]},
        {"bbox": [10, 10, 8, 8], "segmentation": [[10, 10, 18, 10, 18, 18, 10, 18]]},
        {"bbox": [2, 20, 4, 4], "segmentation": {"size": [32, 32], "counts": rle["counts"].decode()}},
    ]}
    mask = T.crowd_mask(pose, 32)
    assert mask[1, 1] == 1 and mask[12, 12] == 1 and mask[21, 3] == 1
    assert mask[30, 30] == 0 and mask[8, 8] == 0
    # a box covers the pixels whose centre is inside
    assert mask[0:4, 0:4].all() and mask[0:5, 4].sum() == 0 and mask[4, 0:5].sum() == 0
    assert 16 + 64 + 16 <= mask.sum() <= 16 + 81 + 16  # polygon: at most one pixel more
    assert mask[20:24, 2:6].all()


def test_pack_and_device_targets_match_numpy_conversions() -> None:
    rng = np.random.default_rng(1)
    s = 32
    kp = _person({"right_wrist": (5.5, 5.5), "right_elbow": (20.5, 12.5), "nose": (16.5, 16.5)})
    sample = T.StoreSample(
        key="000000000001", image=rng.integers(0, 256, (s, s, 3), dtype=np.uint8),
        depth=rng.integers(0, 65536, (s, s), dtype=np.uint16), normals=rng.integers(0, 256, (s, s, 3), np.uint8),
        text=np.where(rng.random((s, s)) < 0.2, 255, 0).astype(np.uint8),
        groups=rng.integers(0, 11, (s, s), dtype=np.uint8), keypoints=kp,
        crowd=np.pad(np.ones((4, 4), np.uint8), ((0, s - 4), (0, s - 4))), token_ids=(3, 1, 7))
    host = T.pack_targets(sample, 8, 4, multihot_vocab=10)
    assert host["pose"].dtype == np.int8 and host["depth"].dtype == np.uint16 and host["image"].dtype == np.uint8
    assert host["pose_mask"].sum() == s * s - 16 and host["pose_mask"][0, 0] == 0
    assert host["multihot"].tolist() == [0, 1, 0, 1, 0, 0, 0, 1, 0, 0]
    many = T.pack_targets(replace(sample, token_ids=tuple(range(12))), 8, 4, multihot_vocab=16)
    assert many["multihot"].tolist() == [1] * 8 + [0] * 8  # the 8 words of the tokens, as the paper: at most 8
    batch = {k: torch.from_numpy(v)[None] for k, v in host.items()}
    full = V.device_targets(batch)[0].numpy()
    as_bits = V.device_targets({**batch, "depth": batch["depth"].view(torch.int16)})[0].numpy()
    assert np.array_equal(full, as_bits)  # how to_device ships uint16 depth
    assert full.shape == (NUM_CHANNELS, s, s)
    j, p = CHANNELS["joints"].slice, CHANNELS["pafs"].slice
    assert np.abs(full[j] - T.render_heatmaps(kp, s, 8)).max() <= 0.5 / 127 + 1e-6
    assert np.abs(full[p] - T.render_pafs(kp, s, 4)).max() <= 0.5 / 127 + 1e-6
    assert np.allclose(full[CHANNELS["depth"].slice][0], V.depth_to_target(sample.depth), atol=1e-6)
    assert np.allclose(full[CHANNELS["normals"].slice], V.normals_to_target(sample.normals), atol=1e-6)
    assert np.array_equal(full[CHANNELS["text"].slice][0], V.text_to_target(sample.text))
    assert np.array_equal(full[CHANNELS["groups"].slice], V.groups_to_target(sample.groups))


def test_pose_json_structure_is_checked() -> None:
    triples = [[float(j), 2.0 * j, 2] for j in range(len(JOINTS))]
    flat = [v for t in triples for v in t]  # COCO's flat list of 51 numbers is read too
    got = T.pose_keypoints({"persons": [{"keypoints": triples}, {"keypoints": flat}], "crowd": []})
    assert got.shape == (2, len(JOINTS), 3) and np.array_equal(got[0], got[1]) and got[0, 3].tolist() == [3, 6, 2]
    assert T.pose_keypoints({"persons": [], "crowd": []}).shape == (0, len(JOINTS), 3)
    for pose, problem in (
            ({}, "lacks 'persons' and 'crowd' (the pose stage writes both)"),
            ({"persons": []}, "lacks 'crowd'"),
            ([], "holds a JSON list, expected an object with persons and crowd"),
            ({"persons": {}, "crowd": []}, "its persons and crowd must be lists"),
            ({"persons": [[1, 2, 3]], "crowd": []},
             "persons[0] is a list of 3 item(s), expected an object with keypoints"),
            ({"persons": [{"keypoints": triples[:1]}], "crowd": []},
             "persons[0] needs keypoints of 17 [x, y, v] triples, got a list of 1 item(s)"),
            ({"persons": [{"keypoints": triples}, {}], "crowd": []},
             "persons[1] needs keypoints of 17 [x, y, v] triples, got nothing"),
            ({"persons": [{"keypoints": [[1, 2]] * 17}], "crowd": []}, "persons[0] needs keypoints of 17"),
            ({"persons": [{"keypoints": [["a", 2, 3]] * 17}], "crowd": []},
             "persons[0] has keypoints that are not finite numbers"),
            ({"persons": [], "crowd": [{"bbox": [0, 0, 4, 4]}, {}]},
             "crowd[1] needs a bbox of 4 numbers when it has no segmentation")):
        with pytest.raises(T.PoseError) as info:
            T.pose_keypoints(pose)
        assert str(info.value).startswith(problem), (pose, str(info.value))
    for crowd, problem in (([7], "crowd[0] is an int, expected an object with bbox or segmentation"),
                           ([{"bbox": [0, 0, 4, 4]}, {"bbox": None}], "crowd[1] is malformed (TypeError: "),
                           ([{"segmentation": {"size": [8, 8], "counts": "0"}}],
                            "crowd[0] has an RLE of size (8, 8) in a 32-pixel store")):
        with pytest.raises(T.PoseError) as info:
            T.crowd_mask({"persons": [], "crowd": crowd}, 32)
        assert str(info.value).startswith(problem), (crowd, str(info.value))
