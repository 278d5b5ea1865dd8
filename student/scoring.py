"""Figures of what a student has learned that an all-background output cannot pass: people found and joint
PCK after skeleton grouping, caption word recall, multi-hot label precision and recall.

(HDM, the paper's map metric, is about 0.97 for a map that stays on the background everywhere: joints and groups
cover a few percent of the pixels.) Everything works on one sample at a time, in store geometry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from shards.taxonomy import NUM_TOKENS
from student.postprocess import Person

PCK_THRESHOLD = 0.1  # a joint is correct within this fraction of its person's box size
LABEL_THRESHOLD = 0.25  # the paper's "Response Text": labels with confidence > 25%


def person_size(keypoints: np.ndarray) -> float:
    """Box size of an annotated person: the larger side of the box around its labelled joints (at least 1 pixel).

    Args:
        keypoints: (17, 3) (x, y, v) in store pixels; joints with v > 0 are labelled.
    """
    xy = keypoints[keypoints[:, 2] > 0, :2]
    if len(xy) == 0:
        return 1.0
    return max(1.0, float(np.max(xy.max(axis=0) - xy.min(axis=0))))


def annotated_people(truth: np.ndarray) -> list[np.ndarray]:
    """The (17, 3) keypoints of the persons of ``truth`` (P, 17, 3) that have at least one labelled joint."""
    return [t for t in np.asarray(truth, np.float64).reshape(-1, 17, 3) if (t[:, 2] > 0).any()]


def label_ids(probabilities: np.ndarray) -> np.ndarray:
    """Ids of the multi-hot labels the head gives (probability above the paper's 0.25)."""
    return np.nonzero(np.asarray(probabilities) > LABEL_THRESHOLD)[0]


def match_people(people: Sequence[Person], truth: np.ndarray, threshold: float = PCK_THRESHOLD
                 ) -> tuple[int, int, int]:
    """Match predicted people to annotated ones (one to one, most correct joints first) and count joints.

    Args:
        people: predicted people (keypoints (17, 3) of x, y, score; NaN where missing).
        truth: (P, 17, 3) annotated keypoints (x, y, v) in the same pixels.
        threshold: PCK threshold as a fraction of :func:`person_size`.

    Returns:
        (correct joints, labelled joints, people found): a labelled joint is correct when its matched
        prediction has that joint within ``threshold`` x the person's size; a person is found when its match
        has at least one correct joint.
    """
    annotated = annotated_people(truth)
    labelled = int(sum((t[:, 2] > 0).sum() for t in annotated))
    if not annotated or not people:
        return 0, labelled, 0
    correct = np.zeros((len(annotated), len(people)), int)
    for a, t in enumerate(annotated):
        limit = threshold * person_size(t)
        for p, person in enumerate(people):
            d = np.hypot(*(person.keypoints[:, :2] - t[:, :2]).T)
            correct[a, p] = int(np.sum((t[:, 2] > 0) & np.isfinite(d) & (d <= limit)))
    total, found, used_a, used_p = 0, 0, set(), set()
    for a, p in sorted(np.ndindex(correct.shape), key=lambda ap: -correct[ap]):
        if a in used_a or p in used_p or correct[a, p] == 0:
            continue
        used_a.add(a)
        used_p.add(p)
        total += int(correct[a, p])
        found += 1
    return total, labelled, found


def label_counts(predicted: set[int], truth: Sequence[int]) -> tuple[int, int, int]:
    """(true positives, predicted labels, true labels) of one sample's word or label sets."""
    true = set(truth)
    return len(predicted & true), len(predicted), len(true)


def _mostly_ignored(person: Person, counted: np.ndarray) -> bool:
    """Whether most of the person's found joints lie where ``counted`` is 0."""
    xy = person.keypoints[:, :2]
    xy = xy[np.isfinite(xy).all(1)]
    if not len(xy):
        return False
    h, w = counted.shape
    cols, rows = np.clip(xy.astype(int), 0, [w - 1, h - 1]).T  # continuous coordinates: pixel = floor
    return int((counted[rows, cols] == 0).sum()) * 2 > len(xy)


@dataclass
class LearningScores:
    """Running counts of the figures of this module over samples; :meth:`compute` gives the rates."""

    correct_joints: int = 0
    labelled_joints: int = 0
    people_found: int = 0
    people_annotated: int = 0
    people_predicted: int = 0
    words: list[int] = field(default_factory=lambda: [0, 0, 0])  # hits, predicted, true
    labels: list[int] = field(default_factory=lambda: [0, 0, 0])
    has_labels: bool = False

    def add_pose(self, people: Sequence[Person], truth: np.ndarray, counted: np.ndarray | None = None) -> None:
        """One sample's predicted people against its annotated keypoints (P, 17, 3). With ``counted`` (the (S, S)
        pose mask: 0 in crowd regions, which the pose loss ignores too), a person found mostly in a crowd region is
        neither a prediction nor a match, as COCO's evaluation ignores detections in crowd regions."""
        if counted is not None:
            people = [p for p in people if not _mostly_ignored(p, counted)]
        correct, labelled, found = match_people(people, truth)
        self.correct_joints += correct
        self.labelled_joints += labelled
        self.people_found += found
        self.people_annotated += len(annotated_people(truth))
        self.people_predicted += len(people)

    def add_words(self, words: Sequence[str | None], truth: Sequence[str]) -> None:
        """One sample's decoded caption words (None for an empty slot) against its first 8 caption words."""
        counts = label_counts({w for w in words if w}, list(truth)[:NUM_TOKENS])
        self.words = [a + b for a, b in zip(self.words, counts)]

    def add_labels(self, probabilities: np.ndarray, truth: Sequence[int]) -> None:
        """One sample's multi-hot probabilities (V,) against its first 8 vocabulary ids."""
        self.has_labels = True
        counts = label_counts(set(label_ids(probabilities).tolist()), list(truth)[:NUM_TOKENS])
        self.labels = [a + b for a, b in zip(self.labels, counts)]

    def compute(self) -> dict[str, float | int | None]:
        """``pck@0.1``, people counts, ``word_recall@8`` and, with a multi-hot head, label precision / recall
        (None where there is nothing to divide by)."""
        def rate(a: int, b: int) -> float | None:
            return round(a / b, 6) if b else None

        out: dict[str, float | int | None] = {
            "pck@0.1": rate(self.correct_joints, self.labelled_joints), "people_found": self.people_found,
            "people_annotated": self.people_annotated, "people_predicted": self.people_predicted,
            "word_recall@8": rate(self.words[0], self.words[2]), "word_precision": rate(self.words[0], self.words[1])}
        if self.has_labels:
            out["label_precision"] = rate(self.labels[0], self.labels[1])
            out["label_recall"] = rate(self.labels[0], self.labels[2])
        return out
