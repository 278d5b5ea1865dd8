"""Depth Anything V2 specifics: metric checkpoints, variant names, the letterbox geometry."""

from __future__ import annotations

import numpy as np
import pytest

from teachers import TeacherError, TeacherInput, create_teacher
from teachers.depth_anything import VARIANTS, save_tiny_checkpoint
from teachers.preprocess import canvas_size, resized_size


def test_metric_checkpoint_gives_metric_kind(tmp_path) -> None:
    ckpt = save_tiny_checkpoint(str(tmp_path / "metric"), metric=True)
    teacher = create_teacher("depth-anything-v2", checkpoint=ckpt, input_size=70)
    (out,) = teacher([TeacherInput(np.full((50, 90, 3), 128, np.uint8))])
    assert out["kind"] == "metric" and out["depth"].shape == (50, 90) and out["depth"].dtype == np.float32
    relative = create_teacher("depth-anything-v2", checkpoint=save_tiny_checkpoint(str(tmp_path / "rel")),
                              input_size=70)
    assert relative.kind == "relative" and relative.fingerprint() != teacher.fingerprint()


def test_variant_names() -> None:
    assert VARIANTS["small"] == "depth-anything/Depth-Anything-V2-Small-hf"
    assert VARIANTS["metric-outdoor-large"] == "depth-anything/Depth-Anything-V2-Metric-Outdoor-Large-hf"
    assert len(VARIANTS) == 9


def test_input_size_is_checked() -> None:
    with pytest.raises(TeacherError, match="input_size"):
        create_teacher("depth-anything-v2", checkpoint="unused", input_size=10)


def test_letterbox_geometry_matches_the_published_preprocessing() -> None:
    # a 640x480 COCO image gets Depth Anything's 518-pixel short side at the default long side 686
    assert resized_size(480, 640, 686, 14) == (518, 686)
    assert canvas_size(686, 14) == 686
    assert resized_size(427, 640, 1067) == (712, 1067) and canvas_size(1067, 32) == 1088
