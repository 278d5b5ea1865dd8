"""Depth Anything V2 specifics: metric checkpoints, variant names, the published model's input geometry."""

from __future__ import annotations

import numpy as np
import pytest

from teachers import TeacherError, TeacherInput, create_teacher
from teachers.depth_anything import VARIANTS, input_shape, save_tiny_checkpoint
from teachers.preprocess import IMAGENET_MEAN, IMAGENET_STD, canvas_size, resized_size


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


@pytest.mark.parametrize(("hw", "expected"), [
    ((480, 640), (518, 686)), ((640, 480), (686, 518)), ((427, 640), (518, 770)), ((640, 640), (518, 518)),
    ((1080, 1920), (518, 924)),  # downscaled: the short side still becomes 518
    ((20, 30), (518, 784)),  # 777 is 55.5 patches: rounded half to even, as numpy rounds
])
def test_input_shape_is_the_published_lower_bound_resize(hw, expected) -> None:
    assert input_shape(*hw) == expected
    small = input_shape(*hw, input_size=70)
    assert min(small) >= 70 and small[0] % 14 == small[1] % 14 == 0


def test_an_extreme_aspect_ratio_costs_at_most_a_few_photos(tmp_path) -> None:
    photo = input_shape(480, 640)
    strip = input_shape(20, 2000)  # uncapped: 518 x 51800, a hundred photos' pixels
    assert max(strip) <= 4 * 518 and strip[0] % 14 == strip[1] % 14 == 0 and strip == (14, 2072)
    assert strip[0] * strip[1] <= 4 * photo[0] * photo[1]
    assert input_shape(480, 1920) == (518, 2072)  # 4:1 is still the published geometry
    assert input_shape(480, 2400, max_long_side=1036) == (196, 1036)
    teacher = create_teacher("depth-anything-v2", checkpoint=save_tiny_checkpoint(str(tmp_path / "m")),
                             input_size=70)
    seen = []
    teacher.model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["pixel_values"].shape),
                                            with_kwargs=True)
    (out,) = teacher([TeacherInput(np.zeros((20, 2000, 3), np.uint8))])
    assert seen == [(1, 3, 14, 280)] and out["depth"].shape == (20, 2000)  # long side 4 x 70
    assert teacher.identity()["max_long_side"] == 280


@pytest.mark.parametrize("hw", [(50, 90), (300, 200)])  # upscaled to (70, 126); downscaled to (105, 70)
def test_model_input_is_the_published_bicubic_resize_without_padding(hw, tmp_path) -> None:
    import cv2

    teacher = create_teacher("depth-anything-v2", checkpoint=save_tiny_checkpoint(str(tmp_path / "m")),
                             input_size=70)
    seen = []
    teacher.model.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["pixel_values"].clone()),
                                            with_kwargs=True)
    image = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    (out,) = teacher([TeacherInput(image)])
    h, w = input_shape(*hw, input_size=70)
    assert seen[0].shape == (1, 3, h, w) and out["depth"].shape == hw
    # upstream: cv2.INTER_CUBIC on RGB / 255 (float), then ImageNet mean/std; compared away from the border,
    # where OpenCV and torch extend the image differently
    expected = (cv2.resize(image / 255.0, (w, h), interpolation=cv2.INTER_CUBIC) - IMAGENET_MEAN) / IMAGENET_STD
    got = seen[0][0].permute(1, 2, 0).double().numpy()
    np.testing.assert_allclose(got[3:-3, 3:-3], expected[3:-3, 3:-3], atol=2e-4)


def test_canvas_geometry_of_the_letterboxed_teachers() -> None:
    # the letterboxing teachers (RapidOCR) put every image of a batch on one square canvas (teachers.preprocess)
    assert resized_size(427, 640, 1067) == (712, 1067) and canvas_size(1067, 32) == 1088
