"""Stand-in student outputs for post-processing tests: a perfect student's maps of a synthetic scene with people."""

from __future__ import annotations

import numpy as np
import torch

from shards.taxonomy import CHANNELS, GLOVE_DIM
from student.targets import TargetSizes
from student.values import perfect_outputs, synthetic_scene

SIZE = 96


def scene(min_people: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A perfect student's maps and tokens for the first synthetic scene with ``min_people`` people, with smooth
    noise on the joint and PAF maps (so that every joint has about 70 local maxima above 0.1)."""
    import cv2

    maps, tokens = perfect_outputs(synthetic_scene(min_people, SIZE), *TargetSizes().at(None))
    pose = CHANNELS["joints"].start, CHANNELS["pafs"].stop
    noise = np.random.default_rng(0).normal(size=(SIZE, SIZE, pose[1] - pose[0])).astype(np.float32)
    maps[pose[0]:pose[1]] = np.clip(maps[pose[0]:pose[1]] + 1.5 * cv2.GaussianBlur(noise, (0, 0), 1.5)
                                    .transpose(2, 0, 1), -1, 1)
    tokens[:3] = np.random.default_rng(1).normal(size=(3, GLOVE_DIM)) * 0.3  # three filled slots, the rest empty
    tokens[3:] = 0
    return maps, tokens


class Fixed(torch.nn.Module):
    """A stand-in network whose outputs are given arrays, for every image."""

    def __init__(self, maps: np.ndarray, tokens: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("maps", torch.from_numpy(maps))
        self.register_buffer("tokens", torch.from_numpy(np.asarray(tokens, np.float32)))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        b = images.shape[0]
        return {"maps": self.maps.expand(b, -1, -1, -1), "tokens": self.tokens.expand(b, -1, -1)}


def photo() -> np.ndarray:
    """A 3:2 photo: letterboxed with borders, so that the valid mask matters."""
    from skimage import data

    return data.astronaut()[:, :340]
