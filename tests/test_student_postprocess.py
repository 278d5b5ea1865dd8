"""Post-processing of student outputs: peaks, PAF grouping, depth refinement."""

from __future__ import annotations

import numpy as np

from shards.taxonomy import JOINTS
from student.postprocess import (depth_normals, find_peaks, group_people, normal_error, paf_scores, refine_depth,
                                refine_depth_paper)
from student.targets import TargetSizes, render_heatmaps, render_pafs

# A standing person in a unit box (x, y), COCO-17 order.
_POSE = np.array([
    (0.50, 0.08), (0.55, 0.05), (0.45, 0.05), (0.60, 0.07), (0.40, 0.07),
    (0.70, 0.24), (0.30, 0.24), (0.82, 0.40), (0.18, 0.40), (0.88, 0.55), (0.12, 0.55),
    (0.62, 0.56), (0.38, 0.56), (0.64, 0.77), (0.36, 0.77), (0.65, 0.96), (0.35, 0.96),
])


def _person(x0: float, y0: float, w: float, h: float) -> np.ndarray:
    kp = np.ones((len(JOINTS), 3), np.float32)
    kp[:, 0] = x0 + _POSE[:, 0] * w
    kp[:, 1] = y0 + _POSE[:, 1] * h
    return kp


def _two_people(size: int = 256) -> np.ndarray:
    # non-integer positions, different sizes, one arm of each reaching towards the other
    return np.stack([_person(20.3, 30.7, 90.0, 200.0), _person(118.6, 52.2, 80.0, 170.0)])


def _rendered(keypoints: np.ndarray, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    radius, width = TargetSizes().at(None)
    return render_heatmaps(keypoints, size, radius), render_pafs(keypoints, size, width)


def test_grouping_recovers_two_rendered_people_within_one_pixel() -> None:
    truth = _two_people()
    heatmaps, pafs = _rendered(truth)
    people = group_people(find_peaks(heatmaps), pafs)
    assert len(people) == 2
    found = sorted((p.keypoints for p in people), key=lambda kp: np.nanmean(kp[:, 0]))
    for kp, expected in zip(found, truth):
        assert np.all(kp[:, 2] > 0.9), "every joint is found with a near-peak score"
        err = np.hypot(*(kp[:, :2] - expected[:, :2]).T)
        assert err.max() <= 1.0, f"joint errors {np.round(err, 2)}"


def test_grouping_with_missing_joints_and_a_lone_peak() -> None:
    truth = _two_people()
    truth[1, JOINTS.index("left_ankle"), 2] = 0  # not labelled: no blob, no PAF for its limb
    heatmaps, pafs = _rendered(truth)
    stray = render_heatmaps(np.array([[[230.5, 20.5, 1.0]] * len(JOINTS)], np.float32), 256, 8)
    heatmaps = np.maximum(heatmaps, stray)  # a peak of every joint far from both people, with no PAF
    people = group_people(find_peaks(heatmaps), pafs)
    assert len(people) == 2  # the stray peaks connect to nothing (fewer than min_joints)
    counts = sorted(int((p.keypoints[:, 2] > 0).sum()) for p in people)
    assert counts == [16, 17]


def test_peaks_nms_keeps_one_peak_per_blob() -> None:
    heatmaps, _ = _rendered(_two_people())
    peaks = find_peaks(heatmaps)
    assert [len(p) for p in peaks] == [2] * len(JOINTS)
    assert find_peaks(np.full((1, 32, 32), -1.0, np.float32))[0].shape == (0, 3)


def test_paf_score_prefers_the_true_connection_and_respects_sign() -> None:
    truth = _two_people()
    _, pafs = _rendered(truth)
    from shards.taxonomy import LIMBS

    for k, limb in enumerate(LIMBS):
        child, parent = truth[:, limb.child, :2], truth[:, limb.parent, :2]
        score, agree = paf_scores(pafs[k], limb, child, parent)
        assert np.all(np.diag(agree) >= 0.9), limb.name
        assert np.all(agree[[0, 1], [1, 0]] < 0.8), limb.name  # cross-person links are rejected
        flipped = type(limb)(limb.child, limb.parent, -limb.sign)
        _, agree_flipped = paf_scores(pafs[k], flipped, child, parent)
        assert np.all(np.diag(agree_flipped) < 0.8), f"{limb.name}: the sign matters"


def _surface(size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    d = 0.5 * xx + 0.3 * yy + 20.0 * np.exp(-((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / 200.0)
    return (0.1 + 0.8 * d / d.max()).astype(np.float32)


def test_refinement_lowers_normal_error_of_noisy_depth() -> None:
    clean = _surface()
    normals = depth_normals(clean)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 0.01, clean.shape), 0, 1).astype(np.float32)
    before = normal_error(noisy, normals)
    after = normal_error(refine_depth(noisy, normals), normals)
    assert after < 0.2 * before, (before, after)


def test_refinement_leaves_consistent_depth_unchanged() -> None:
    clean = _surface()
    refined = refine_depth(clean, depth_normals(clean))
    np.testing.assert_allclose(refined, clean, atol=1e-6)


def test_paper_refinement_is_the_published_update() -> None:
    import cv2

    clean = _surface()
    normals = np.stack([depth_normals(clean)[0] * 0.5, depth_normals(clean)[1], depth_normals(clean)[2]])
    out = refine_depth_paper(clean, normals, iterations=1, far=0.0)
    d = clean * 240.0
    gx = cv2.Sobel(d, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(d, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    m = np.sqrt(gx * gx + gy * gy + 1)
    expected = (d + 0.01 * ((normals[0] - gx / m) * gx + (normals[1] - gy / m) * gy + (normals[2] - 1 / m))) / 240
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.abs(out - clean).max() > 1e-5  # the halved x normals moved it
    # 35 steps of 0.01 by default; a depth consistent with its normals stays (its update is 0)
    np.testing.assert_allclose(refine_depth_paper(clean, depth_normals(clean)), clean, atol=2e-4)


def test_paper_refinement_keeps_far_and_border_pixels_fixed() -> None:
    clean = _surface()
    normals = depth_normals(clean)[::-1].copy()  # inconsistent normals: every pixel wants to move
    depth = clean.copy()
    depth[:, :10] = 0.05  # far: below the authors' threshold (20 of 240)
    valid = np.ones_like(clean, bool)
    valid[-8:] = False
    refined = refine_depth_paper(depth, normals, valid=valid)
    np.testing.assert_array_equal(refined[:, :10], depth[:, :10])
    np.testing.assert_array_equal(refined[-8:], depth[-8:])
    assert (np.abs(refined - depth)[:-8, 10:] > 0).mean() > 0.9


def test_refinement_keeps_far_and_border_pixels_fixed() -> None:
    clean = _surface()
    normals = depth_normals(clean)
    noisy = np.clip(clean + np.random.default_rng(1).normal(0, 0.01, clean.shape), 0, 1).astype(np.float32)
    noisy[:, :10] = 0.02  # far: below the mask threshold
    valid = np.ones_like(clean, bool)
    valid[-8:] = False  # letterbox border
    refined = refine_depth(noisy, normals, far=0.05, valid=valid)
    np.testing.assert_array_equal(refined[:, :10], noisy[:, :10])
    np.testing.assert_array_equal(refined[-8:], noisy[-8:])
    assert np.abs(refined - noisy)[:-8, 10:].max() > 0


def test_peaks_stay_on_the_image_content_of_the_letterbox() -> None:
    """With ``valid`` no peak lies on the border, none there suppresses one inside, and a peak on the content's
    edge keeps its centroid inside (the border's scores count as 0)."""
    size = 32
    valid = np.zeros((size, size), bool)
    valid[:, 10:22] = True  # content columns 10..21, continuous x in [10, 22)
    kp = np.zeros((2, len(JOINTS), 3), np.float32)
    kp[0, 0] = (4.5, 16.5, 2)  # nose on the left bar
    kp[1, 0] = (10.5, 8.5, 2)  # another nose on the content's first column
    kp[1, 5] = (7.5, 20.5, 2)  # a shoulder on the bar, strong enough to suppress its neighbours without the mask
    maps = render_heatmaps(kp, size, 8)
    maps[5, 20, 11] = 0.9  # a weaker shoulder peak inside, 4 pixels from the one on the bar
    plain = find_peaks(maps, threshold=0.5)
    assert len(plain[0]) == 2 and plain[5].shape[0] == 1 and plain[5][0, 0] < 10  # the bar wins without the mask
    masked = find_peaks(maps, threshold=0.5, valid=valid)
    assert masked[0].shape == (1, 3) and 10.0 <= masked[0][0, 0] <= 11.0 and masked[0][0, 1] == 8.5
    assert masked[5].shape == (1, 3) and 10.0 <= masked[5][0, 0] < 22.0
    for joint in find_peaks(maps, threshold=0.0, valid=valid):  # threshold 0: the zeroed border is no peak
        assert ((joint[:, 0] >= 10.0) & (joint[:, 0] <= 22.0)).all()
