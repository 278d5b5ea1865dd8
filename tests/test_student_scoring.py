"""Figures an all-background output cannot pass: people matching and PCK, word and label counts."""

from __future__ import annotations

import numpy as np
import pytest

from student.postprocess import Person
from student.scoring import LearningScores, match_people, person_size


def _truth(x0: float, labelled: int = 17) -> np.ndarray:
    kp = np.zeros((17, 3))
    kp[:, 0] = x0 + np.arange(17) * 2.0  # a person 32 pixels wide: PCK@0.1 allows 3.2 pixels
    kp[:, 1] = 50.0
    kp[:labelled, 2] = 2
    return kp


def _person(kp: np.ndarray, shift: float = 0.0, missing: tuple[int, ...] = ()) -> Person:
    out = np.concatenate([kp[:, :2] + shift, np.ones((17, 1))], axis=1)
    out[list(missing)] = [np.nan, np.nan, 0.0]
    return Person(out, 1.0)


def test_people_are_matched_one_to_one_and_joints_counted_within_a_tenth_of_their_size() -> None:
    a, b = _truth(10), _truth(100)
    assert person_size(a) == 32.0
    truth = np.stack([a, b])
    # a found with 3 joints missing; b's prediction off by 3 pixels (inside 3.2); a stray person matches nobody
    people = [_person(a, missing=(0, 1, 2)), _person(b, shift=3.0 / np.sqrt(2)), _person(_truth(300))]
    assert match_people(people, truth) == (14 + 17, 34, 2)
    assert match_people([_person(b, shift=4.0)], truth) == (0, 34, 0)  # 4 pixels off in x and y: no joint, no person
    assert match_people([], truth) == (0, 34, 0)
    assert match_people([_person(a)], _truth(10, labelled=5)[None]) == (5, 5, 1)  # unlabelled joints do not count


def test_learning_scores_rates() -> None:
    scores = LearningScores()
    scores.add_pose([_person(_truth(10))], _truth(10)[None])
    scores.add_pose([], _truth(10)[None])
    scores.add_words(["cat", None, "dog", "sky"], ["cat", "dog", "grass"])
    probabilities = np.zeros(10)
    probabilities[[1, 4]] = [0.9, 0.3]
    probabilities[7] = 0.2  # below the paper's 0.25
    scores.add_labels(probabilities, [1, 7, 2])
    out = scores.compute()
    assert out["pck@0.1"] == pytest.approx(0.5) and (out["people_found"], out["people_annotated"]) == (1, 2)
    assert out["word_recall@8"] == pytest.approx(2 / 3) and out["word_precision"] == pytest.approx(2 / 3)
    assert out["label_precision"] == pytest.approx(0.5) and out["label_recall"] == pytest.approx(1 / 3)
    assert "label_recall" not in LearningScores().compute()


def test_people_found_in_crowd_regions_are_not_counted() -> None:
    counted = np.ones((128, 128), np.uint8)
    counted[:, 90:] = 0  # a crowd region on the right (or a whole image a pose teacher refused)
    scores = LearningScores()
    inside = _person(_truth(100))  # its joints at x 100..132: in the crowd region
    scores.add_pose([_person(_truth(10)), inside], _truth(10)[None], counted)
    out = scores.compute()
    assert (out["people_predicted"], out["people_found"], out["pck@0.1"]) == (1, 1, 1.0)
    scores.add_pose([inside], np.zeros((0, 17, 3)), counted)  # nobody annotated: not a false person either
    assert scores.compute()["people_predicted"] == 1
    scores.add_pose([inside], np.zeros((0, 17, 3)))  # without the mask it counts
    assert scores.compute()["people_predicted"] == 2
