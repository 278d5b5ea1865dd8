"""The teacher registry: names, unknown-name errors, specs, the describe() listing and tiny-checkpoint dispatch."""

from __future__ import annotations

import pytest

from teachers import TeacherError, create_teacher, describe, list_teachers, teacher_class
from teachers.base import TASKS
from teachers.tiny import save_tiny_checkpoint

C_TEACHERS = {"depth-anything-v2": "depth", "panoptic-gt": "panoptic", "caption-gt": "caption"}


def test_registry_holds_the_teachers_with_their_tasks() -> None:
    names = list_teachers()
    assert names == sorted(names)
    for name, task in C_TEACHERS.items():
        assert name in names
        cls = teacher_class(name)
        assert cls.name == name and cls.spec.task == task
    for task in TASKS:
        assert all(teacher_class(n).spec.task == task for n in list_teachers(task))
    assert set(list_teachers("depth")) >= {"depth-anything-v2"}


def test_unknown_teacher_lists_valid_names() -> None:
    with pytest.raises(TeacherError) as err:
        create_teacher("no-such-teacher")
    msg = str(err.value)
    assert "no-such-teacher" in msg and "\n" not in msg
    assert all(name in msg for name in list_teachers())


def test_describe_renders_every_teacher_spec() -> None:
    text = describe()
    for name in list_teachers():
        spec = teacher_class(name).spec
        assert f"{name}  [{spec.task}]" in text
        assert all(f"output:  {key}:" in text for key in spec.outputs)
    assert "params:  checkpoint='depth-anything/Depth-Anything-V2-Large-hf'" in text
    assert describe("caption").count("[caption]") == len(list_teachers("caption"))


def test_tiny_checkpoint_is_none_for_ground_truth(tmp_path) -> None:
    assert save_tiny_checkpoint("caption-gt", tmp_path / "gt") is None
    with pytest.raises(TeacherError, match="unknown teacher"):
        save_tiny_checkpoint("nope", tmp_path)


def test_bad_common_arguments_are_one_clear_error() -> None:
    with pytest.raises(TeacherError, match="batch_size"):
        create_teacher("caption-gt", batch_size=0)
    with pytest.raises(TeacherError, match="CUDA"):  # a model teacher; ground truth takes any dtype
        create_teacher("visiongpt2", dtype="float16")


def test_checkpoint_identity_hub_id_versus_local_weights(tmp_path) -> None:
    from teachers.loading import checkpoint_identity

    assert checkpoint_identity("org/model", "abc123") == {"model_id": "org/model", "revision": "abc123"}
    assert checkpoint_identity("org/model")["revision"] == "unpinned"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"1234")
    first = checkpoint_identity(str(folder))
    (folder / "weights.bin").write_bytes(b"1235")
    assert set(first) == {"weights_sha256"} and checkpoint_identity(str(folder)) != first


@pytest.mark.parametrize("name", ["depth-anything-v2", "mask2former", "vit-gpt2", "detectron2-panoptic-fpn"])
def test_missing_local_checkpoint_fails_at_once_without_a_hub_lookup(name: str, tmp_path) -> None:
    missing = str(tmp_path / "no" / "such" / "model")  # not a hub id: must not be looked up (and retried) there
    with pytest.raises(TeacherError, match="is no such file or folder"):
        create_teacher(name, checkpoint=missing)


def test_default_checkpoints_and_the_model_cache_folder(tmp_path, monkeypatch) -> None:
    import os

    from teachers.registry import teacher_class

    monkeypatch.setenv("YMAP_DISTILL_CACHE", str(tmp_path))
    assert teacher_class("dptext-detr").default_checkpoint() == os.path.join(str(tmp_path), "dptext-detr",
                                                                             "totaltext_final.pth")
    assert teacher_class("visiongpt2").default_checkpoint() == os.path.join(str(tmp_path), "visiongpt2",
                                                                            "captioner.pt")
    assert teacher_class("depth-anything-v2").default_checkpoint() == "depth-anything/Depth-Anything-V2-Large-hf"
    assert teacher_class("caption-gt").default_checkpoint() is None
    with pytest.raises(Exception, match=str(tmp_path)):  # the message names where it looked
        teacher_class("visiongpt2")()
