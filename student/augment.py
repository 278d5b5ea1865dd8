"""Training augmentation of DESIGN 6, each with its own chance; geometry is applied identically to every target.

Pan & zoom warps the image, depth and normals bilinearly and the text and group label maps with nearest
sampling, and moves keypoints with the same affine map before any target is rendered.
All randomness comes from the ``numpy.random.Generator`` passed in, so a seed fixes the result.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, replace

import numpy as np

from student.targets import FLAT_NORMAL, StoreSample


@dataclass(frozen=True)
class AugmentConfig:
    """Chances and ranges of the augmentations (DESIGN 6)."""

    pan_zoom: float = 0.45
    zoom_max: float = 1.1
    pan_max: float = 0.15  # largest shift, as a fraction of the side
    min_joints_in_view: float = 0.3  # pan & zoom draws are retried until this share of joints stays in view
    pan_zoom_tries: int = 10
    color: float = 0.5  # brightness / contrast; half of the time the same for all channels, else per channel
    color_max: float = 0.2
    noise: float = 0.15  # additive Gaussian noise
    noise_sigma_max: float = 10.0
    burned: float = 0.5  # up to ``burned_max`` saturated pixels
    burned_max: int = 10
    noise_image: float = 0.01  # whole image replaced by random noise (person-free samples only)


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The generator of one sample's augmentation: a function of (seed, epoch, key) only, so it does not
    depend on the loader's worker count or order."""
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])


def augment(sample: StoreSample, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()) -> StoreSample:
    """Apply the augmentations of DESIGN 6 to one sample.

    Args:
        sample: the decoded sample (not modified).
        rng: its random generator (see :func:`sample_rng`).
        cfg: chances and ranges.

    Returns:
        The augmented sample.
    """
    given = sample.image
    labelled = sample.keypoints[..., 2] > 0
    if not labelled.any() and rng.random() < cfg.noise_image:
        return sample.emptied(rng.integers(0, 256, sample.image.shape, dtype=np.uint8))
    if rng.random() < cfg.pan_zoom:
        matrix = _draw_pan_zoom(sample, rng, cfg)
        if matrix is not None:
            sample = warp(sample, matrix)
    image = sample.image
    if rng.random() < cfg.color:
        image = _brightness_contrast(image, rng, cfg.color_max)
    if rng.random() < cfg.noise:
        image = _gaussian_noise(image, rng, rng.uniform(1.0, cfg.noise_sigma_max))
    if rng.random() < cfg.burned:
        if image is given:  # the earlier steps made a new image otherwise
            image = image.copy()
        n = int(rng.integers(1, cfg.burned_max + 1))
        image[rng.integers(0, image.shape[0], n), rng.integers(0, image.shape[1], n)] = 255
    return replace(sample, image=image)


def _cv2():
    """OpenCV on one thread: augmentation runs in loader workers, where OpenCV's own threads only contend."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def pan_zoom_matrix(size: int, zoom: float, shift_x: float, shift_y: float) -> np.ndarray:
    """2x3 affine map of continuous pixel coordinates: zoom about the centre, then shift (pixels)."""
    c = size / 2.0
    return np.array([[zoom, 0.0, c - zoom * c + shift_x],
                     [0.0, zoom, c - zoom * c + shift_y]], np.float64)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine map to (..., 2) continuous pixel coordinates."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(sample: StoreSample, matrix: np.ndarray) -> StoreSample:
    """Warp every image-shaped member and every coordinate of a sample with one affine map.

    Continuous members (image, depth, normals) are sampled bilinearly, label maps (text, groups, crowd)
    with nearest sampling; pixels that come from outside get black / zero depth / flat normals / no label.
    """
    cv2 = _cv2()
    s = sample.size
    # OpenCV puts pixel centres at integers; our coordinates put them at i + 0.5
    cv_matrix = matrix.copy()
    cv_matrix[:, 2] += matrix[:, :2].sum(axis=1) * 0.5 - 0.5

    def apply(a: np.ndarray, nearest: bool, fill: tuple[int, ...] | int) -> np.ndarray:
        flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        return cv2.warpAffine(a, cv_matrix, (s, s), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)

    def apply_rgb(a: np.ndarray, fill: tuple[int, int, int]) -> np.ndarray:
        # OpenCV's bilinear warp has a vectorised path for 4 channels, not for 3: a padding channel
        # makes it about 2x faster with the very same values in the first three
        return cv2.cvtColor(apply(cv2.cvtColor(a, cv2.COLOR_RGB2RGBA), False, fill + (0,)), cv2.COLOR_RGBA2RGB)

    # one nearest warp for every label map; three channels, as OpenCV's 2-channel path rounds differently
    crowd = sample.text if sample.crowd is None else sample.crowd
    warped_labels = cv2.split(apply(cv2.merge([sample.text, sample.groups, crowd]), True, 0))
    keypoints = sample.keypoints.copy()
    keypoints[..., :2] = transform_points(keypoints[..., :2], matrix)
    return replace(
        sample,
        image=apply_rgb(sample.image, (0, 0, 0)),
        depth=apply(sample.depth, False, 0),
        normals=apply_rgb(sample.normals, FLAT_NORMAL),
        text=warped_labels[0],
        groups=warped_labels[1],
        keypoints=keypoints.astype(np.float32),
        crowd=None if sample.crowd is None else warped_labels[2],
    )


def _draw_pan_zoom(sample: StoreSample, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray | None:
    """A pan & zoom matrix that keeps at least ``min_joints_in_view`` of the labelled joints in view."""
    s = sample.size
    joints = sample.keypoints[sample.keypoints[..., 2] > 0][:, :2]
    for _ in range(cfg.pan_zoom_tries):
        zoom = rng.uniform(1.0, cfg.zoom_max)
        shift = rng.uniform(-cfg.pan_max * s, cfg.pan_max * s, size=2)
        matrix = pan_zoom_matrix(s, zoom, shift[0], shift[1])
        if not len(joints):
            return matrix
        moved = transform_points(joints, matrix)
        inside = ((moved >= 0) & (moved < s)).all(axis=1).mean()
        if inside >= cfg.min_joints_in_view:
            return matrix
    return None


def _brightness_contrast(image: np.ndarray, rng: np.random.Generator, limit: float) -> np.ndarray:
    cv2 = _cv2()
    n = 1 if rng.random() < 0.5 else 3  # one factor for all channels, or one per channel
    contrast = rng.uniform(1 - limit, 1 + limit, n)
    brightness = rng.uniform(-limit, limit, n) * 255
    levels = np.arange(256, dtype=np.float32)[:, None]
    table = np.clip(levels * contrast + brightness, 0, 255).astype(np.uint8)  # (256, n)
    return cv2.LUT(image, table.reshape(1, 256, n))  # a 1-channel table serves every channel (faster)


def _gaussian_noise(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Add N(0, sigma) noise, rounded and saturated to uint8.

    The noise is a window of a fixed bank of standard normal values at an offset drawn from ``rng``, scaled
    by ``sigma``: about 4x faster than drawing fresh values with OpenCV (and 10x numpy), and for a 256x256
    image one of about 2 million distinct windows.
    """
    cv2 = _cv2()
    bank = _noise_bank()
    n = image.size
    if n > bank.size:  # larger than any store image: fresh values
        noise = rng.standard_normal(image.shape, dtype=np.float32)
    else:
        start = int(rng.integers(0, bank.size - n + 1))
        noise = bank[start:start + n].reshape(image.shape)
    return cv2.add(image, np.multiply(noise, np.float32(sigma)), dtype=cv2.CV_8U)


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """2 M standard normal float32 values (8 MB), the same in every process."""
    bank = np.random.default_rng(20240611).standard_normal(1 << 21, dtype=np.float32)
    bank.setflags(write=False)
    return bank
