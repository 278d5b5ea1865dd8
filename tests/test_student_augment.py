"""Augmentation of DESIGN 6: identical geometry on image and every target, nearest label maps, seeded."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from shards.taxonomy import JOINTS
from student.augment import AugmentConfig, augment, pan_zoom_matrix, sample_rng, transform_points, warp
from student.targets import StoreSample, pack_targets

S = 96
MARKED = {"nose": 3, "left_wrist": 5, "right_ankle": 9}  # joint -> group label painted around it
ONLY = {  # every augmentation alone, at chance 1
    "pan_zoom": AugmentConfig(pan_zoom=1, color=0, noise=0, burned=0, noise_image=0),
    "color": AugmentConfig(pan_zoom=0, color=1, noise=0, burned=0, noise_image=0),
    "noise": AugmentConfig(pan_zoom=0, color=0, noise=1, burned=0, noise_image=0),
    "burned": AugmentConfig(pan_zoom=0, color=0, noise=0, burned=1, noise_image=0),
    "all": AugmentConfig(pan_zoom=1, color=1, noise=1, burned=1, noise_image=1),
    "default": AugmentConfig(),
}


def _marked_sample(seed: int) -> StoreSample:
    """A sample with three joints, each marked by a 3x3 white square in the image and a group label."""
    rng = np.random.default_rng(seed)
    image = np.zeros((S, S, 3), np.uint8)
    groups = np.zeros((S, S), np.uint8)
    kp = np.zeros((1, len(JOINTS), 3), np.float32)
    spots = [(20 + 25 * i + rng.uniform(0, 10), 20 + rng.uniform(0, 50)) for i in range(len(MARKED))]
    for (name, label), (x, y) in zip(MARKED.items(), spots):
        kp[0, JOINTS.index(name)] = (x, y, 2)
        c, r = int(x), int(y)
        image[r - 1:r + 2, c - 1:c + 2] = 255
        groups[r - 1:r + 2, c - 1:c + 2] = label
    return StoreSample(key=f"{seed:012d}", image=image, depth=np.zeros((S, S), np.uint16),
                       normals=np.full((S, S, 3), 128, np.uint8), text=np.zeros((S, S), np.uint8),
                       groups=groups, keypoints=kp)


@pytest.mark.parametrize("name", list(ONLY))
def test_heatmap_peak_lands_on_its_keypoint_after_every_augmentation(name: str) -> None:
    checked = 0
    for seed in range(12):
        sample = _marked_sample(seed)
        out = augment(sample, sample_rng(seed, 0, sample.key), ONLY[name])
        host = pack_targets(out, base_radius=8, paf_width=2)
        for joint, label in MARKED.items():
            j = JOINTS.index(joint)
            x, y, _ = out.keypoints[0, j]
            if not (0 <= x < S and 0 <= y < S):
                continue
            heat = host["pose"][j]
            peak = (int(y), int(x))
            assert heat[peak] == heat.max() > 0, (name, seed, joint)  # int8 ties allowed, but within 1 px:
            assert (np.abs(np.argwhere(heat == heat.max()) - peak) <= 1).all(), (name, seed, joint)
            assert out.groups[peak] == label  # the label map moved with the keypoint
            assert out.image[peak].max() > 100  # and so did the image
            checked += 1
    assert checked >= 24


def test_pan_zoom_really_moves_things() -> None:
    moved = 0
    for seed in range(12):
        sample = _marked_sample(seed)
        out = augment(sample, sample_rng(seed, 0, sample.key), ONLY["pan_zoom"])
        moved += not np.allclose(out.keypoints, sample.keypoints)
    assert moved >= 10


def test_label_maps_never_get_interpolated_values() -> None:
    rng = np.random.default_rng(0)
    groups = rng.choice(np.array([0, 2, 7], np.uint8), (S, S))
    text = rng.choice(np.array([0, 255], np.uint8), (S, S))
    crowd = rng.choice(np.array([0, 1], np.uint8), (S, S))
    sample = replace(_marked_sample(0), groups=groups, text=text, crowd=crowd)
    for zoom, sx, sy in ((1.07, 3.3, -5.6), (1.1, -10.25, 7.5), (1.013, 0.5, 0.5)):
        out = warp(sample, pan_zoom_matrix(S, zoom, sx, sy))
        assert set(np.unique(out.groups)) <= {0, 2, 7}
        assert set(np.unique(out.text)) <= {0, 255}
        assert set(np.unique(out.crowd)) <= {0, 1}
    # a pure integer shift moves every label exactly
    out = warp(sample, pan_zoom_matrix(S, 1.0, 5.0, -3.0))
    assert np.array_equal(out.groups[:-3, 5:], groups[3:, :-5])  # right 5, up 3
    assert not out.groups[-3:].any() and not out.groups[:, :5].any()


def test_keypoints_follow_the_affine_map_about_the_centre() -> None:
    m = pan_zoom_matrix(100, 1.1, 2.0, -4.0)
    pts = np.array([[50.0, 50.0], [0.0, 0.0]])
    assert np.allclose(transform_points(pts, m), [[52.0, 46.0], [-3.0, -9.0]])


def test_at_least_30_percent_of_joints_stay_in_view() -> None:
    cfg = AugmentConfig(pan_zoom=1, pan_max=0.9, color=0, noise=0, burned=0, noise_image=0)
    for seed in range(40):
        sample = _marked_sample(seed)
        out = augment(sample, sample_rng(seed, 0, sample.key), cfg)
        xy = out.keypoints[0][out.keypoints[0, :, 2] > 0][:, :2]
        assert ((xy >= 0) & (xy < S)).all(axis=1).mean() >= 0.3


def test_augmentation_is_deterministic_under_a_seed() -> None:
    sample = _marked_sample(3)
    a = augment(sample, sample_rng(7, 2, sample.key), ONLY["all"])
    b = augment(sample, sample_rng(7, 2, sample.key), ONLY["all"])
    c = augment(sample, sample_rng(7, 3, sample.key), ONLY["all"])
    assert np.array_equal(a.image, b.image) and np.array_equal(a.keypoints, b.keypoints)
    assert not np.array_equal(a.image, c.image)


def test_random_noise_image_only_for_person_free_samples() -> None:
    cfg = AugmentConfig(pan_zoom=0, color=0, noise=0, burned=0, noise_image=1.0)
    with_person = _marked_sample(1)
    assert np.array_equal(augment(with_person, sample_rng(0, 0, "k"), cfg).image, with_person.image)
    empty = replace(with_person, keypoints=np.zeros((0, len(JOINTS), 3), np.float32),
                    glove=np.ones((8, 300), np.float16), token_ids=(1, 2))
    out = augment(empty, sample_rng(0, 0, "k"), cfg)
    assert out.image.std() > 50  # uniform noise
    assert not out.groups.any() and not out.text.any() and not out.depth.any()
    assert not out.glove.any() and out.token_ids == ()


def test_photometric_changes_leave_targets_alone() -> None:
    sample = _marked_sample(2)
    cfg = AugmentConfig(pan_zoom=0, color=1, noise=1, burned=1, noise_image=0)
    out = augment(sample, sample_rng(0, 0, sample.key), cfg)
    assert not np.array_equal(out.image, sample.image)
    assert np.array_equal(out.groups, sample.groups) and np.array_equal(out.keypoints, sample.keypoints)


def test_gaussian_noise_has_the_asked_sigma_and_differs_per_draw() -> None:
    from student.augment import _gaussian_noise

    grey = np.full((256, 256, 3), 128, np.uint8)
    first = _gaussian_noise(grey, np.random.default_rng(1), 6.0).astype(np.float64) - 128
    again = _gaussian_noise(grey, np.random.default_rng(1), 6.0).astype(np.float64) - 128
    other = _gaussian_noise(grey, np.random.default_rng(2), 6.0).astype(np.float64) - 128
    assert np.array_equal(first, again)  # a function of the generator's state
    assert abs(first.mean()) < 0.1 and abs(first.std() - 6.0) < 0.1
    assert abs(np.corrcoef(first.ravel(), other.ravel())[0, 1]) < 0.02  # other draws: unrelated noise
    saturated = _gaussian_noise(np.full((8, 8, 3), 250, np.uint8), np.random.default_rng(0), 10.0)
    assert saturated.max() == 255 and saturated.dtype == np.uint8
