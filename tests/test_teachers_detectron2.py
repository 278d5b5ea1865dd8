"""Detectron2 Panoptic FPN checkpoint formats: model-zoo .pkl read safely, hostile pickles and misfits refused."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from skimage import data

from teachers import TeacherError, TeacherInput, create_teacher
from teachers.tiny import save_tiny_checkpoint

NAME = "detectron2-panoptic-fpn"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return save_tiny_checkpoint(NAME, tmp_path_factory.mktemp("d2") / "pth")


def _pkl_folder(tiny: str, dest, payload: object) -> str:
    os.makedirs(dest)
    shutil.copy(os.path.join(tiny, "config.yaml"), dest)
    with open(os.path.join(dest, "model_final.pkl"), "wb") as f:
        pickle.dump(payload, f)
    return str(dest)


def test_model_zoo_pkl_gives_the_same_predictions_as_pth(tiny, tmp_path) -> None:
    state = torch.load(os.path.join(tiny, "model_final.pth"), weights_only=True)["model"]
    zoo = {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Detectron2 Model Zoo"}
    pkl = _pkl_folder(tiny, tmp_path / "pkl", zoo)
    image = [TeacherInput(data.chelsea()[::2, ::2].copy())]
    a = create_teacher(NAME, checkpoint=tiny, min_size=64, max_size=96)(image)[0]["classes"]
    b = create_teacher(NAME, checkpoint=pkl, min_size=64, max_size=96)(image)[0]["classes"]
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) > 1


class _Hostile:
    def __reduce__(self):
        return (os.system, ("touch HACKED",))


def test_hostile_pickle_is_refused_without_running_it(tiny, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    pkl = _pkl_folder(tiny, tmp_path / "evil", {"model": {"x": _Hostile()}, "__author__": "x"})
    with pytest.raises(TeacherError, match=r"holds pickled Python objects beyond weights and plain data, which "
                                          r"safe loading does not build: \w+\.sys"):
        create_teacher(NAME, checkpoint=pkl)
    assert not (tmp_path / "HACKED").exists()


def test_a_config_that_builds_objects_is_refused_without_running_it(tiny, tmp_path) -> None:
    dest = tmp_path / "evil"
    os.makedirs(dest)
    shutil.copy(os.path.join(tiny, "model_final.pth"), dest)
    marker = tmp_path / "HACKED"
    config = open(os.path.join(tiny, "config.yaml")).read()
    (dest / "config.yaml").write_text(f"X: !!python/object/apply:os.system ['touch {marker}']\n" + config)
    with pytest.raises(TeacherError, match="is not plain YAML data"):
        create_teacher(NAME, checkpoint=str(dest))
    with pytest.raises(TeacherError, match="is not plain YAML data"):
        create_teacher(NAME, checkpoint=os.path.join(tiny, "model_final.pth"), config_file=str(dest / "config.yaml"))
    assert not marker.exists()


def test_checkpoint_that_does_not_fit_the_config(tiny, tmp_path) -> None:
    state = torch.load(os.path.join(tiny, "model_final.pth"), weights_only=True)["model"]
    dest = tmp_path / "partial"
    os.makedirs(dest)
    shutil.copy(os.path.join(tiny, "config.yaml"), dest)
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("sem_seg_head")}},
               dest / "model_final.pth")
    with pytest.raises(TeacherError, match="missing or mis-shaped weights"):
        create_teacher(NAME, checkpoint=str(dest))


def test_folder_without_config_is_one_clear_error(tmp_path) -> None:
    (tmp_path / "model_final.pth").write_bytes(b"")
    with pytest.raises(TeacherError, match="config.yaml"):
        create_teacher(NAME, checkpoint=str(tmp_path))


def test_config_overrides_change_the_fingerprint(tiny) -> None:
    base = create_teacher(NAME, checkpoint=tiny, min_size=64, max_size=96)
    other = create_teacher(NAME, checkpoint=tiny, min_size=64, max_size=96,
                           opts=("MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH", "0.3"))
    assert base.fingerprint() != other.fingerprint()


def test_the_device_is_not_part_of_the_fingerprint(tiny) -> None:
    assert (create_teacher(NAME, checkpoint=tiny, min_size=64, max_size=96, device="cpu").fingerprint()
            == create_teacher(NAME, checkpoint=tiny, min_size=64, max_size=96, device="cpu:0").fingerprint())


@pytest.mark.parametrize("protocol", [2, 5])
def test_numpy_pickles_of_every_protocol_load(tiny, tmp_path, protocol) -> None:
    from teachers.detectron2_panoptic import read_weights

    blobs = {"conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "name": "caffe2"}
    path = tmp_path / f"p{protocol}.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=protocol))
    loaded = read_weights(str(path))["model"]
    np.testing.assert_array_equal(loaded["conv.weight"], blobs["conv.weight"])


def test_predictions_are_detectron2s_own_inference(tiny) -> None:
    """The teacher runs the model's forward step by step (for half precision); on float32 its output equals the
    model's own forward on DefaultPredictor's input (ResizeShortestEdge of the config's test sizes, BGR)."""
    from detectron2.data import transforms as T

    from teachers.panoptic_ids import contiguous_from_detectron2

    teacher = create_teacher(NAME, checkpoint=tiny)  # the tiny config's test sizes: 128 / 192
    assert (teacher.min_size, teacher.max_size) == (128, 192)
    photos = [data.chelsea(), data.astronaut()[::3, ::2].copy(), data.coffee()]  # landscape, portrait, landscape
    ours = teacher([TeacherInput(p) for p in photos])
    for photo, got in zip(photos, ours):
        bgr = np.ascontiguousarray(photo[:, :, ::-1])
        resized = T.ResizeShortestEdge([128, 128], 192).get_transform(bgr).apply_image(bgr)
        with torch.inference_mode():
            seg, info = teacher.model([{"image": torch.as_tensor(resized.transpose(2, 0, 1).astype("float32")),
                                        "height": photo.shape[0], "width": photo.shape[1]}])[0]["panoptic_seg"]
        expected = contiguous_from_detectron2(seg, info)
        assert got["classes"].shape == expected.shape == photo.shape[:2]
        # images of one resized shape share a batch: the convolutions then sum in another order, and a pixel whose
        # classes tie to float rounding may flip (1 of 240,000 here with oneDNN); anything more is a real difference
        assert np.mean(got["classes"] != expected) <= 1e-4, np.mean(got["classes"] != expected)
