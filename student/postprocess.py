"""Post-processing of student outputs: joint peaks, PAF grouping into people, depth refinement.

Everything here works on numpy arrays in the student's [-1, 1] output range (DESIGN 5.1) and on one image
at a time; no torch. Pose follows DESIGN 5.5: a PAF is a scalar band along each limb of
``shards.taxonomy.LIMBS`` ramping from -1 at the child joint to +1 at the parent (negated for limbs whose
sign is -1), with background -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from shards.geometry import Letterbox
from shards.taxonomy import JOINTS, LIMBS, Limb

#: Joints that no PAF limb reaches (eyes and ears): attached to the nearest nose afterwards.
_HEAD_JOINTS: tuple[int, ...] = tuple(
    j for j in range(len(JOINTS)) if all(j not in (limb.child, limb.parent) for limb in LIMBS))
_NOSE = JOINTS.index("nose")

# defaults shared with the device post-processing of student.fastpath
PEAK_RADIUS = 4  # suppression radius of find_peaks (an elliptic neighbourhood)
MAX_PEAKS = 20  # peaks kept per joint
PAF_SAMPLES = 10  # PAF samples along a candidate connection
PAF_TOLERANCE = 0.5  # a sample agrees within this of the expected ramp
DEPTH_SCALE = 240.0  # the normals stage's depth scale (DESIGN 5.2)
PAPER_ITERATIONS, PAPER_ALPHA = 35, 0.01  # the paper's depth refinement


# --- joints -------------------------------------------------------------------------------------------------

def find_peaks(heatmaps: np.ndarray, threshold: float = 0.5, radius: int = PEAK_RADIUS,
               max_peaks: int = MAX_PEAKS, valid: np.ndarray | None = None) -> list[np.ndarray]:
    """Local maxima of each joint heatmap after non-maximum suppression.

    Args:
        heatmaps: (J, H, W) heatmaps in [-1, 1] (peak +1 at a joint, background -1).
        threshold: minimum score, where score = (value + 1) / 2 in [0, 1].
        radius: suppression radius in pixels; of two peaks closer than this the weaker goes.
        max_peaks: at most this many peaks per joint (the strongest).
        valid: (H, W) bool, the image content of the letterbox (``Letterbox.valid_mask``); default all. Scores
            outside it count as 0: no peak lies there, none there suppresses one inside, and a peak's
            sub-pixel centroid stays within the content's pixels.

    Returns:
        Per joint a (K, 3) float array of (x, y, score), strongest first; x, y are continuous store
        coordinates (pixel i covers [i, i + 1), as in ``pose.json``), refined to sub-pixel precision by the
        score-weighted centroid of the 3x3 neighbourhood.
    """
    import cv2

    out = []
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    valid = None if valid is None else np.asarray(valid, bool)
    for hm in np.asarray(heatmaps, np.float32):
        score = (hm + 1.0) * 0.5
        if valid is not None:
            score = np.where(valid, score, np.float32(0.0))
        local_max = (score >= cv2.dilate(score, kernel)) & (score >= threshold)
        if valid is not None:
            local_max &= valid  # also at threshold 0
        ys, xs = np.nonzero(local_max)  # raster order
        order = np.argsort(-score[ys, xs], kind="stable")
        xs, ys = xs[order], ys[order]
        rows = [(*_centroid(score, xs[i], ys[i]), float(score[ys[i], xs[i]]))
                for i in keep_apart(xs, ys, radius, max_peaks)]
        out.append(np.asarray(rows, np.float64).reshape(-1, 3))
    return out


def keep_apart(xs: np.ndarray, ys: np.ndarray, radius: int, max_peaks: int) -> list[int]:
    """Positions of the maxima kept from candidates sorted strongest first: a plateau leaves several equal
    maxima, of which one (the first) stays; at most ``max_peaks``."""
    kept: list[int] = []
    xl, yl = np.asarray(xs).tolist(), np.asarray(ys).tolist()
    for i, (x, y) in enumerate(zip(xl, yl)):
        if all((x - xl[k]) ** 2 + (y - yl[k]) ** 2 >= radius * radius for k in kept):
            kept.append(i)
            if len(kept) == max_peaks:
                break
    return kept


def _centroid(score: np.ndarray, x: int, y: int) -> tuple[float, float]:
    """Continuous (x, y) of a peak: the 3x3 score-weighted centroid of pixel centres (i + 0.5)."""
    h, w = score.shape
    y0, y1, x0, x1 = max(0, y - 1), min(h, y + 2), max(0, x - 1), min(w, x + 2)
    patch = score[y0:y1, x0:x1].astype(np.float64)
    weights = patch - patch.min()
    total = weights.sum()
    if total <= 0:
        return x + 0.5, y + 0.5
    cx = (weights.sum(axis=0) * np.arange(x0, x1)).sum() / total
    cy = (weights.sum(axis=1) * np.arange(y0, y1)).sum() / total
    return float(cx) + 0.5, float(cy) + 0.5


# --- grouping -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Person:
    """One detected person: ``keypoints`` (17, 3) of (x, y, score) with score 0 (and x, y NaN) when missing."""

    keypoints: np.ndarray
    score: float

    def to_json(self, geometry: Letterbox | None = None) -> dict:
        """JSON form; with ``geometry``, coordinates in original-image pixels as COCO writes keypoints (pixel
        indices: x = 3 is the centre of pixel 3, half a pixel less than the continuous coordinates of the maps)."""
        kp = self.keypoints.copy()
        if geometry is not None:
            kp[:, :2] = geometry.to_original(kp[:, :2]) - 0.5
        return {"score": round(float(self.score), 4),
                "keypoints": [[None if np.isnan(x) else round(float(x), 2), None if np.isnan(y) else round(float(y), 2),
                               round(float(s), 4)] for x, y, s in kp]}


def paf_scores(paf: np.ndarray, limb: Limb, child: np.ndarray, parent: np.ndarray, samples: int = PAF_SAMPLES,
               tolerance: float = PAF_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """How well the PAF band of ``limb`` supports each child -> parent connection.

    Samples the PAF along each candidate segment and compares it with the expected ramp
    ``sign * (2 t - 1)`` (t = 0 at the child, 1 at the parent).

    Args:
        paf: (H, W) PAF of the limb in [-1, 1].
        limb: the limb (its sign).
        child: (C, 2) candidate child positions (x, y).
        parent: (P, 2) candidate parent positions.
        samples: points sampled along each segment.
        tolerance: a sample agrees when within this of the expected value.

    Returns:
        (score, agreement), each (C, P): score = mean of 1 - |value - expected| / 2 in [0, 1]; agreement =
        fraction of samples within ``tolerance``.
    """
    t = (np.arange(samples) + 0.5) / samples  # (T,)
    c, p = np.asarray(child, np.float64)[:, None, None, :], np.asarray(parent, np.float64)[None, :, None, :]
    pts = c + t[None, None, :, None] * (p - c)  # (C, P, T, 2)
    values = _bilinear(paf, pts.reshape(-1, 2)).reshape(pts.shape[:3])
    err = np.abs(values - limb.sign * (2.0 * t - 1.0))
    return np.mean(1.0 - err / 2.0, axis=2), np.mean(err <= tolerance, axis=2)


def _bilinear(image: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Sample (H, W) ``image`` at (N, 2) continuous coordinates (pixel centres at i + 0.5)."""
    h, w = image.shape
    x = np.clip(pts[:, 0] - 0.5, 0, w - 1)
    y = np.clip(pts[:, 1] - 0.5, 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(int), w - 2 if w > 1 else 0)
    y0 = np.minimum(np.floor(y).astype(int), h - 2 if h > 1 else 0)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def group_people(peaks: list[np.ndarray], pafs: np.ndarray, *, min_agreement: float = 0.8,
                 min_joints: int = 3, head_distance: float = 0.15) -> list[Person]:
    """Group joint peaks into people along the PAF limbs (greedy, strongest connections first).

    Args:
        peaks: per joint (K, 3) arrays of (x, y, score), as :func:`find_peaks` returns.
        pafs: (12, H, W) PAFs in [-1, 1], in ``LIMBS`` order.
        min_agreement: a connection needs this fraction of PAF samples to agree with the expected ramp.
        min_joints: people with fewer joints are dropped.
        head_distance: eyes and ears (no PAF reaches them) join the person with the nearest nose within this
            fraction of the map side.

    Returns:
        People sorted by descending score.
    """
    def support(li: int) -> tuple[np.ndarray, np.ndarray]:
        limb = LIMBS[li]
        return paf_scores(pafs[li], limb, peaks[limb.child][:, :2], peaks[limb.parent][:, :2])

    return group_with_support(peaks, support, max(pafs.shape[1:]), min_agreement=min_agreement,
                              min_joints=min_joints, head_distance=head_distance)


def group_with_support(peaks: list[np.ndarray], support: Callable[[int], tuple[np.ndarray, np.ndarray]],
                       size: int, *, min_agreement: float = 0.8, min_joints: int = 3,
                       head_distance: float = 0.15) -> list[Person]:
    """:func:`group_people` with the PAF support computed elsewhere (``student.fastpath`` does it on the device).

    Args:
        peaks: per joint (K, 3) arrays of (x, y, score).
        support: ``support(li)`` gives the (score, agreement) of :func:`paf_scores` for limb ``LIMBS[li]``, each
            (C, P) over the child's and the parent's peaks; called only for limbs with peaks at both ends.
        size: the larger side of the maps (``head_distance`` is a fraction of it).
    """
    num = len(JOINTS)
    people: list[np.ndarray] = []  # each (17,) int array of peak indices, -1 = missing
    for li, limb in enumerate(LIMBS):
        if not len(peaks[limb.child]) or not len(peaks[limb.parent]):
            continue
        score, agree = support(li)
        cands = [(score[ci, pi], ci, pi) for ci, pi in zip(*np.nonzero(agree >= min_agreement))]
        used_c, used_p = set(), set()
        for _, ci, pi in sorted(cands, key=lambda c: -c[0]):
            if ci in used_c or pi in used_p:
                continue
            used_c.add(ci)
            used_p.add(pi)
            _connect(people, num, (limb.child, ci), (limb.parent, pi))
    _attach_head(people, peaks, head_distance * size)
    out = []
    for idx in people:
        found = idx >= 0
        if found.sum() < min_joints:
            continue
        kp = np.full((num, 3), np.nan)
        kp[:, 2] = 0.0
        for j in np.nonzero(found)[0]:
            kp[j] = peaks[j][idx[j]]
        out.append(Person(kp, float(kp[:, 2].sum() / num)))
    return sorted(out, key=lambda p: -p.score)


def _connect(people: list[np.ndarray], num: int, a: tuple[int, int], b: tuple[int, int]) -> None:
    owners = [k for k, idx in enumerate(people) if idx[a[0]] == a[1] or idx[b[0]] == b[1]]
    if not owners:
        idx = np.full(num, -1)
        idx[a[0]], idx[b[0]] = a[1], b[1]
        people.append(idx)
        return
    first = people[owners[0]]
    if len(owners) == 2:
        other = people[owners[1]]
        if np.any((first >= 0) & (other >= 0)):
            return  # the two partial people share a joint type: a contradictory link
        first[other >= 0] = other[other >= 0]
        del people[owners[1]]
    for joint, peak in (a, b):
        if first[joint] < 0:
            first[joint] = peak


def _attach_head(people: list[np.ndarray], peaks: list[np.ndarray], max_dist: float) -> None:
    noses = [(k, peaks[_NOSE][idx[_NOSE]][:2]) for k, idx in enumerate(people) if idx[_NOSE] >= 0]
    if not noses:
        return
    for j in _HEAD_JOINTS:
        pairs = sorted((float(np.hypot(*(peak[:2] - nose))), k, pi)
                       for pi, peak in enumerate(peaks[j]) for k, nose in noses)
        taken_people, taken_peaks = set(), set()
        for dist, k, pi in pairs:
            if dist > max_dist or k in taken_people or pi in taken_peaks:
                continue
            taken_people.add(k)
            taken_peaks.add(pi)
            people[k][j] = pi


# --- depth --------------------------------------------------------------------------------------------------

def _sobel(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    return (cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE),
            cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE))


def depth_normals(depth: np.ndarray, scale: float = 240.0) -> np.ndarray:
    """Normals of DESIGN 5.2 from a depth map in [0, 1]: (3, H, W) in [-1, 1]."""
    gx, gy = _sobel(np.asarray(depth, np.float32) * np.float32(scale))
    m = np.sqrt(gx * gx + gy * gy + 1.0) + 1e-8
    return np.stack([gx / m, gy / m, 1.0 / m])


def normal_error(depth: np.ndarray, normals: np.ndarray, mask: np.ndarray | None = None,
                 scale: float = 240.0) -> float:
    """Normal-consistency error: mean over ``mask`` of |N - normals(depth)|^2.

    Args:
        depth: (H, W) depth in [0, 1] (larger = nearer).
        normals: (3, H, W) target normals in [-1, 1].
        mask: (H, W) bool, pixels that count (default all).
        scale: the normals stage's depth scale (DESIGN 5.2).
    """
    sq = np.sum((np.asarray(normals, np.float32) - depth_normals(depth, scale)) ** 2, axis=0)
    return float(sq[mask].mean() if mask is not None else sq.mean()) if sq.size else 0.0


#: far pixels the paper's refinement skips: the authors' threshold, 20 on their 0..240 depth scale
PAPER_FAR = 20.0 / 240.0


def refine_depth_paper(depth: np.ndarray, normals: np.ndarray, *, iterations: int = PAPER_ITERATIONS,
                       alpha: float = PAPER_ALPHA, far: float = PAPER_FAR, scale: float = DEPTH_SCALE,
                       valid: np.ndarray | None = None) -> np.ndarray:
    """The paper's iterative depth refinement (its section III; the authors' ``improve_depthmap``), as written.

    With D the depth scaled to [0, scale] (the normals stage's scale, so that the gradients' normals compare
    with N), each iteration computes G = Sobel(D), M = |(Gx, Gy, 1)|, delta = N - (Gx, Gy, 1) / M and updates
    D <- D + alpha * (delta_x * Gx + delta_y * Gy + delta_z). Far pixels (depth < ``far``) and pixels outside
    ``valid`` are masked: they stay as they are (and still feed their neighbours' gradients).

    Note that the update of a pixel depends on its neighbours' values only (Sobel weighs the centre 0) and is
    never positive for unit normals (delta . (G, 1) = M (N . n - 1)), so it does not remove independent noise;
    :func:`refine_depth` is a descent on the normal-consistency error instead.

    Args:
        depth: (H, W) depth in [0, 1], larger = nearer.
        normals: (3, H, W) normals in [-1, 1].
        iterations: number of updates (35 in the paper).
        alpha: step (0.01 in the paper).
        far: depth below which pixels are masked.
        scale: the normals stage's depth scale (DESIGN 5.2).
        valid: (H, W) bool, pixels of the image (not the letterbox border); default all.

    Returns:
        (H, W) float32 refined depth in [0, 1].
    """
    original = np.asarray(depth, np.float32)
    mask = original >= far
    if valid is not None:
        mask &= valid
    n = np.asarray(normals, np.float32)
    d = original * np.float32(scale)
    for _ in range(iterations):
        gx, gy = _sobel(d)
        m = np.sqrt(gx * gx + gy * gy + 1.0)
        step = alpha * ((n[0] - gx / m) * gx + (n[1] - gy / m) * gy + (n[2] - 1.0 / m))
        d = np.where(mask, d + step, d)
    return np.where(mask, np.clip(d / np.float32(scale), 0.0, 1.0), original).astype(np.float32)


def refine_depth(depth: np.ndarray, normals: np.ndarray, *, iterations: int = 35, alpha: float = 0.01,
                 far: float = 0.05, scale: float = 240.0, valid: np.ndarray | None = None) -> np.ndarray:
    """Iterative depth refinement from predicted normals as a descent (``student predict --refine descent``).

    With D the depth scaled to [0, scale], G = Sobel(D), M = |(Gx, Gy, 1)| and
    delta = N - (Gx, Gy, 1) / M, each iteration moves D down the gradient of the normal-consistency error
    sum |delta|^2 (its derivative through n = G / M and the Sobel operator), the largest step being
    ``alpha`` of the depth range; a step that would not lower the error is halved (so a depth map already
    consistent with N is returned unchanged). Far pixels (depth < ``far``) and pixels outside ``valid`` stay
    fixed and do not count.

    Args:
        depth: (H, W) depth in [0, 1], larger = nearer.
        normals: (3, H, W) normals in [-1, 1].
        iterations: number of updates (35 in the paper).
        alpha: largest per-pixel step per iteration, as a fraction of the depth range.
        far: depth below which pixels are masked (far areas have unreliable normals).
        scale: the normals stage's depth scale.
        valid: (H, W) bool, pixels of the image (not the letterbox border); default all.

    Returns:
        (H, W) float32 refined depth in [0, 1].
    """
    target = np.asarray(normals, np.float32)
    d = np.asarray(depth, np.float32) * np.float32(scale)
    mask = np.asarray(depth) >= far
    if valid is not None:
        mask &= valid
    if not mask.any():
        return np.asarray(depth, np.float32).copy()
    step = alpha * scale
    w = mask.astype(np.float32)
    error, terms = _consistency(d, target, w)
    for _ in range(iterations):
        grad = _error_gradient(terms, w)
        peak = float(np.abs(grad).max())
        if peak == 0.0:
            break
        while step > 1e-6 * scale:
            trial = d - (step / peak) * grad
            trial_error, trial_terms = _consistency(trial, target, w)
            if trial_error < error:
                break
            step *= 0.5
        else:
            break
        d, error, terms = trial, trial_error, trial_terms
    original = np.asarray(depth, np.float32)
    return np.where(mask, np.clip(d / np.float32(scale), 0.0, 1.0), original)


def _consistency(d: np.ndarray, target: np.ndarray, w: np.ndarray) -> tuple[float, tuple[np.ndarray, ...]]:
    """Masked error sum |delta|^2 of depth ``d`` and the terms its gradient needs (Gx, Gy, M, delta)."""
    gx, gy = _sobel(d)
    m = np.sqrt(gx * gx + gy * gy + 1.0)
    dx, dy, dz = target[0] - gx / m, target[1] - gy / m, target[2] - 1.0 / m  # delta of DESIGN 5.2
    return float(((dx * dx + dy * dy + dz * dz) * w).sum()), (gx, gy, m, dx, dy, dz)


def _error_gradient(terms: tuple[np.ndarray, ...], w: np.ndarray) -> np.ndarray:
    """d error / d D through n = (Gx, Gy, 1) / M and the Sobel operator; zero off the mask."""
    gx, gy, m, dx, dy, dz = terms
    dot = (dx * gx + dy * gy + dz) / m ** 3
    ex = -2.0 * w * (dx / m - dot * gx)  # d error / d Gx
    ey = -2.0 * w * (dy / m - dot * gy)
    # Sobel is anti-symmetric, so its adjoint is minus itself (with a zero border).
    return -(_sobel_zero(ex, 1, 0) + _sobel_zero(ey, 0, 1)) * w


def _sobel_zero(a: np.ndarray, dx: int, dy: int) -> np.ndarray:
    import cv2

    return cv2.Sobel(a, cv2.CV_32F, dx, dy, ksize=3, borderType=cv2.BORDER_CONSTANT)
