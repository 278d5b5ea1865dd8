"""`student export`: ONNX with a dynamic batch that matches PyTorch (onnxruntime)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from student import export
from student.checkpoint import save_checkpoint
from student.config import ModelConfig
from student.model import YMapNet

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    cfg = ModelConfig.tiny()
    model = YMapNet(cfg)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode folding is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, cfg)
    return str(path)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    onnx_path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert export.run(_parse(["--checkpoint", tiny_checkpoint, "--onnx", str(onnx_path)])) == 0
    return str(onnx_path)


def test_onnx_matches_pytorch_for_several_batch_sizes(tiny_checkpoint: str, exported: str) -> None:
    from student.checkpoint import load_checkpoint

    onnx_path = exported
    model, cfg, _ = load_checkpoint(tiny_checkpoint)
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    assert inp.name == "images" and inp.type == "tensor(uint8)" and not isinstance(inp.shape[0], int)
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        images = rng.integers(0, 256, (batch, 3, cfg.image_size, cfg.image_size), dtype=np.uint8)
        maps, tokens = session.run(["maps", "tokens"], {"images": images})
        with torch.no_grad():
            expected = model(torch.from_numpy(images))
        assert maps.shape == (batch, 44, cfg.image_size, cfg.image_size) and tokens.shape == (batch, 8, 300)
        assert np.abs(maps - expected["maps"].numpy()).max() <= 1e-4
        assert np.abs(tokens - expected["tokens"].numpy()).max() <= 1e-4


def test_compare_reports_a_broken_export(exported: str) -> None:
    cfg = ModelConfig.tiny()
    other = YMapNet(cfg).eval()  # different random weights
    diffs = export.compare_onnx(other, exported, cfg.image_size)
    assert max(diffs.values()) > 1e-3


def test_missing_checkpoint_is_a_usage_error(tmp_path) -> None:
    assert export.run(_parse(["--checkpoint", str(tmp_path / "nope.pt"), "--onnx", str(tmp_path / "m.onnx")])) == 2


@pytest.mark.parametrize("flags", [["--atol", "-1"], ["--check-batch", "-1"], ["--atol", "nan"]])
def test_impossible_check_settings_are_usage_errors(tiny_checkpoint: str, tmp_path, flags) -> None:
    onnx = tmp_path / "m.onnx"
    assert export.run(_parse(["--checkpoint", tiny_checkpoint, "--onnx", str(onnx), *flags])) == 2
    assert not onnx.exists()  # refused before exporting


def test_a_model_with_the_multihot_head_exports_its_labels(tmp_path) -> None:
    from dataclasses import replace

    from student.config import ModelConfig
    from student.export import compare_onnx, export_onnx
    from student.model import YMapNet

    torch.manual_seed(0)
    model = YMapNet(replace(ModelConfig.tiny(32), multihot_vocab=12)).eval()
    path = export_onnx(model, 32, tmp_path / "head.onnx")
    diffs = compare_onnx(model, path, 32, batch=2)
    assert set(diffs) == {"maps", "tokens", "multihot"} and max(diffs.values()) < 1e-4


def test_the_fast_paths_model_exports_what_the_eager_model_computes(tiny_checkpoint: str, tmp_path) -> None:
    """The model after ``FastPredictor`` ran it (channels-last, bf16 autocast) exports the eager model's outputs."""
    from skimage import data

    from student.checkpoint import load_checkpoint
    from student.export import export_onnx
    from student.fastpath import FastPredictor

    eager, cfg, _ = load_checkpoint(tiny_checkpoint)
    model, _, _ = load_checkpoint(tiny_checkpoint)
    fast = FastPredictor(model, cfg.image_size, amp="bf16", channels_last=True)
    fast(data.astronaut())
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    path = export_onnx(fast.model, cfg.image_size, tmp_path / "fast.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(4).integers(0, 256, (2, 3, cfg.image_size, cfg.image_size), dtype=np.uint8)
    maps, tokens = session.run(["maps", "tokens"], {"images": images})
    with torch.no_grad():
        expected = eager.eval()(torch.from_numpy(images))
    assert np.abs(maps - expected["maps"].numpy()).max() <= 1e-4
    assert np.abs(tokens - expected["tokens"].numpy()).max() <= 1e-4
