"""The shared loading path of the teachers: HF folders without config.json or tokenizer files, quiet transformers,
wrong ONNX models, parameter types, ``~`` paths, refused pickles, one-line messages with the teacher named once,
and the ``describe`` listing's parameters."""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil

import numpy as np
import pytest
import torch

from teachers import MissingExtraError, TeacherError, TeacherInput, create_teacher, describe, list_teachers
from teachers.tiny import save_tiny_checkpoint

HF = {"depth-anything-v2": {"input_size": 70}, "mask2former": {"min_size": 64, "max_size": 96},
      "vit-gpt2": {"max_length": 6}}
SMALL = {**HF, "dptext-detr": {"min_size": 64, "max_size": 96}, "visiongpt2": {"max_tokens": 4},
         "rapidocr": {"input_size": 64}, "detectron2-panoptic-fpn": {"min_size": 48, "max_size": 64}}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> str:
    """A folder of tiny checkpoints, one per model teacher (the ``~`` of the tilde test)."""
    return str(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def ckpt(home) -> dict[str, str]:
    return {name: save_tiny_checkpoint(name, os.path.join(home, name)) for name in SMALL if name in list_teachers()}


def _copy(src: str, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def _one_line(err: pytest.ExceptionInfo, name: str) -> str:
    """The message, checked to be one line that starts with "teacher '<name>': " and names the teacher once
    (the pipeline strips that prefix and puts its own)."""
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"teacher {name!r}: "), msg
    assert msg.count(repr(name)) == 1, msg
    return msg


def test_vit_gpt2_folder_without_its_tokenizer_is_refused(ckpt, tmp_path) -> None:
    folder = _copy(ckpt["vit-gpt2"], tmp_path / "no-tokenizer")
    os.remove(os.path.join(folder, "tokenizer.json"))  # tokenizer_config.json alone: a 1-token tokenizer
    with pytest.raises(TeacherError) as err:
        create_teacher("vit-gpt2", checkpoint=folder, **HF["vit-gpt2"])
    assert re.search(r"tokenizer .* has 1 tokens but the decoder has \d+", _one_line(err, "vit-gpt2"))


def test_a_padded_decoder_vocabulary_is_not_a_missing_tokenizer() -> None:
    from teachers.loading import check_vocabulary

    check_vocabulary("vit-gpt2", range(50257), "gpt2", 50304, slack=128)  # GPT-2 embeddings padded to 64s
    with pytest.raises(TeacherError, match="has 1 tokens but the decoder has 50304"):
        check_vocabulary("vit-gpt2", range(1), "gpt2", 50304, slack=128)


def test_visiongpt2_tokenizer_of_another_size_says_the_same(ckpt, tmp_path) -> None:
    from teachers.visiongpt2 import load_tokenizer

    tok = load_tokenizer(ckpt["visiongpt2"])
    tok.add_tokens(["<one-more>"])
    tok.save_pretrained(str(tmp_path / "tok"))
    with pytest.raises(TeacherError) as err:
        create_teacher("visiongpt2", checkpoint=ckpt["visiongpt2"], tokenizer=str(tmp_path / "tok"))
    assert f"has {len(tok)} tokens but the decoder has {len(tok) - 1}" in _one_line(err, "visiongpt2")


@pytest.mark.parametrize("name", sorted(HF))
def test_hf_folder_without_config_json_is_refused(name, ckpt, tmp_path) -> None:
    folder = _copy(ckpt[name], tmp_path / "no-config")
    os.remove(os.path.join(folder, "config.json"))  # transformers would build its default-size model
    with pytest.raises(TeacherError) as err:
        create_teacher(name, checkpoint=folder, **HF[name])
    assert f"{folder} has no config.json" in _one_line(err, name)
    with pytest.raises(TeacherError) as err:  # the weights file itself instead of its folder
        create_teacher(name, checkpoint=os.path.join(ckpt[name], "model.safetensors"), **HF[name])
    assert "is a file; pass the folder" in _one_line(err, name)


def test_mis_sized_weights_name_a_weight_not_a_transformers_flag(ckpt, tmp_path) -> None:
    import json

    folder = _copy(ckpt["depth-anything-v2"], tmp_path / "resized")
    config = json.loads((tmp_path / "resized" / "config.json").read_text())
    (tmp_path / "resized" / "config.json").write_text(json.dumps({**config, "fusion_hidden_size": 24}))
    with pytest.raises(TeacherError) as err:
        create_teacher("depth-anything-v2", checkpoint=folder, **HF["depth-anything-v2"])
    msg = _one_line(err, "depth-anything-v2")
    assert "missing or mis-shaped weights, e.g. " in msg and "ignore_mismatched_sizes" not in msg


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def transformers_log():
    """Every record transformers' loggers let through while the test runs (its default verbosity: warnings)."""
    from transformers.utils import logging as hf_logging

    records = _Records()
    root = logging.getLogger("transformers")
    root.addHandler(records)
    logging.Logger.warning_once.cache_clear()  # a warning given once earlier in this process is given again
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        yield records
    finally:
        root.removeHandler(records)
        hf_logging.set_verbosity(verbosity)


@pytest.mark.parametrize(("name", "other"), [("depth-anything-v2", "mask2former"), ("vit-gpt2", "depth-anything-v2")])
def test_a_wrong_model_is_our_one_line_and_nothing_else(name, other, ckpt, tmp_path, transformers_log,
                                                        capsys) -> None:
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    folder = _copy(ckpt[other], tmp_path / "other")
    config = os.path.join(folder, "config.json")
    os.remove(config)  # no model type to refuse it by before the weights load: transformers' own report
    shutil.copy(os.path.join(ckpt[name], "config.json"), config)
    with pytest.raises(TeacherError) as err:
        create_teacher(name, checkpoint=folder, **HF[name])
    _one_line(err, name)
    assert transformers_log.messages == []  # no LOAD REPORT, no warnings
    assert capsys.readouterr().err == ""  # no progress bar
    assert hf_logging.get_verbosity() == logging.WARNING and hf_logging.is_progress_bar_enabled() == bars


def test_vit_gpt2_loads_and_captions_a_batch_quietly(ckpt, transformers_log, capsys) -> None:
    teacher = create_teacher("vit-gpt2", checkpoint=ckpt["vit-gpt2"], **HF["vit-gpt2"])
    images = [np.full((30, 40, 3), v, np.uint8) for v in (0, 200)]
    outs = teacher([TeacherInput(im, i) for i, im in enumerate(images)])
    assert len(outs) == 2
    assert transformers_log.messages == []  # "The attention mask is not set ..." among others
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("model", ["PP-OCRv6_rec_small.onnx", "ch_ppocr_mobile_v2.0_cls_mobile.onnx"])
def test_rapidocr_refuses_an_onnx_model_that_is_not_a_detector(model) -> None:
    from teachers.rapidocr_text import packaged_model_path

    path = os.path.join(os.path.dirname(packaged_model_path()), model)
    if not os.path.isfile(path):
        pytest.skip(f"this rapidocr ships no {model}")
    with pytest.raises(TeacherError) as err:
        create_teacher("rapidocr", checkpoint=path)
    msg = _one_line(err, "rapidocr")
    assert "is not a text detection model" in msg and "(B, 3, H, W)" in msg


@pytest.mark.parametrize("params, needle", [
    ({"max_tokens": 5.5}, "max_tokens must be an integer >= 1, got 5.5"),
    ({"seed": "abc"}, "seed must be an integer >= 0, got 'abc'"),
    ({"seed": 2**64}, "seed must be an integer in 0..4294967295"),
    ({"sample": "no"}, "sample must be true or false, got 'no'"),
    ({"sample": 1}, "sample must be true or false, got 1"),
    ({"temperature": "hot"}, "temperature must be > 0, got 'hot'"),
])
def test_visiongpt2_parameter_types_are_checked_at_construction(params, needle, ckpt) -> None:
    with pytest.raises(TeacherError, match=re.escape(needle)):
        create_teacher("visiongpt2", checkpoint=ckpt["visiongpt2"], **params)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_a_checkpoint_under_the_home_folder_may_start_with_a_tilde(name, ckpt, home, monkeypatch) -> None:
    if name not in ckpt:
        pytest.skip(f"{name} is not registered")
    monkeypatch.setenv("HOME", home)
    tilde = "~/" + os.path.relpath(ckpt[name], home)
    teacher = create_teacher(name, checkpoint=tilde, **SMALL[name])
    assert teacher.fingerprint() == create_teacher(name, checkpoint=ckpt[name], **SMALL[name]).fingerprint()
    assert type(teacher).resolve_checkpoint(tilde) == ckpt[name]


class _RunsCode:
    def __init__(self, func, *args) -> None:
        self.call = (func, args)

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("func", [os.system, shutil.which], ids=["os.system", "shutil.which"])
def test_a_pickle_that_would_run_code_is_said_to_hold_code(func, ckpt, tmp_path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": _RunsCode(func, f"touch {marker}")}, path)
    for name in ("dptext-detr", "visiongpt2", "detectron2-panoptic-fpn"):
        if name not in ckpt:
            continue
        with pytest.raises(TeacherError) as err:
            create_teacher(name, checkpoint=str(path))
        assert "holds pickled Python objects beyond weights and plain data, which safe loading does not build" \
            in _one_line(err, name)
    assert not marker.exists()


def test_a_namespace_beside_the_weights_loads_and_numpy_data_is_refused(ckpt, tmp_path) -> None:
    # training scripts save their argparse arguments beside the weights: plain attributes, built safely; numpy
    # data is refused (numpy does not validate a dtype's pickled state: a crafted one reads bytes as pointers)
    import argparse

    state = torch.load(ckpt["dptext-detr"], weights_only=True)
    with_args = tmp_path / "args.pth"
    torch.save({**state, "args": argparse.Namespace(config="R_50_poly.yaml")}, with_args)
    assert create_teacher("dptext-detr", checkpoint=str(with_args)).fingerprint()
    with_numpy = tmp_path / "numpy.pth"
    torch.save({**state, "iteration": np.int64(90000)}, with_numpy)
    with pytest.raises(TeacherError) as err:
        create_teacher("dptext-detr", checkpoint=str(with_numpy))
    assert "holds pickled Python objects beyond weights and plain data" in _one_line(err, "dptext-detr")
    assert "numpy" in str(err.value)


@pytest.mark.parametrize("text", [
    "Weights only load failed. ...\nTrying to load unsupported GLOBAL posix.system whose module posix is blocked.",
    "Weights only load failed. ...\nUnsupported global: GLOBAL builtins.print was not an allowed global by default.",
    "weights only load failed\nUNSUPPORTED GLOBAL: GLOBAL x.y",
    "refusing to unpickle posix.system (only numpy arrays are allowed)",
])
def test_torch_refusal_messages_are_recognised_in_any_case(text) -> None:
    from teachers.loading import first_line

    assert first_line(pickle.UnpicklingError(text)).startswith("it holds pickled Python objects beyond weights")
    assert first_line(pickle.UnpicklingError("Weights only load failed.\nUnsupported operand 149")).startswith(
        "not a PyTorch weights file")


def test_dptext_detr_given_a_folder_asks_for_the_file(ckpt) -> None:
    folder = os.path.dirname(ckpt["dptext-detr"])
    with pytest.raises(TeacherError) as err:
        create_teacher("dptext-detr", checkpoint=folder)
    assert _one_line(err, "dptext-detr").endswith(f"{folder} is a folder; pass the .pth file")


def test_messages_name_the_teacher_once_in_the_prefix_the_pipeline_strips(ckpt, tmp_path, monkeypatch) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text('{"model_type": "depth_anything"}')  # no weights beside it
    with pytest.raises(TeacherError) as err:
        create_teacher("depth-anything-v2", checkpoint=str(junk))
    assert "cannot load checkpoint" in _one_line(err, "depth-anything-v2")
    with pytest.raises(TeacherError) as err:
        create_teacher("caption-gt", checkpoint="x.pth")
    _one_line(err, "caption-gt")
    for name in ("dptext-detr", "visiongpt2"):
        with pytest.raises(TeacherError) as err:
            create_teacher(name, checkpoint=ckpt[name], **SMALL[name])([TeacherInput(np.zeros((4, 4), np.uint8))])
        _one_line(err, name)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError) as err:
        create_teacher("rapidocr")
    _one_line(err, "rapidocr")


def test_describe_lists_only_what_a_build_can_set() -> None:
    blocks = {block.split("  [")[0]: block for block in re.split(r"\n(?=\S)", describe())}
    assert sorted(blocks) == list_teachers()
    for block in blocks.values():
        line = next(ln for ln in block.splitlines() if ln.startswith("    params:"))
        assert not re.search(r"\b(device|dtype|batch_size)=", line), line  # the pipeline sets them
        assert "checkpoint=None" not in line, line
    for name in ("panoptic-gt", "caption-gt"):
        assert "checkpoint" not in blocks[name]  # they take none
    assert "params:  checkpoint='" in blocks["visiongpt2"]  # its default weights, not None
