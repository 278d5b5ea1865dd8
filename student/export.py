"""`student export`: write a trained student as ONNX (dynamic batch) and check it against PyTorch with onnxruntime;
a model with the multi-hot head exports its label probabilities as a third output."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

OPSET = 17  # LayerNormalization is a native operator from opset 17 on
OUTPUTS = ("maps", "tokens")  # + "multihot" when the model has that head


def output_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The ONNX outputs of a student: maps, tokens and, with the multi-hot head, multihot."""
    return OUTPUTS + (("multihot",) if getattr(model, "multihot", None) is not None else ())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``student export``."""
    parser.add_argument("--checkpoint", required=True, help="student checkpoint to export")
    parser.add_argument("--onnx", required=True, help="output .onnx file")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    parser.add_argument("--check-batch", type=int, default=2,
                        help="batch size of the random input used to compare onnxruntime with PyTorch "
                             "(default 2; 0 skips)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="largest allowed |onnx - torch| difference (default 1e-4)")


def export_onnx(model: torch.nn.Module, image_size: int, path: str | Path, opset: int = OPSET) -> Path:
    """Export ``model`` (uint8 (B, 3, S, S) -> maps, tokens[, multihot]) to ONNX with a dynamic batch axis.

    Args:
        model: a student ``YMapNet``; put in eval mode here.
        image_size: input side S.
        path: output file.
        opset: ONNX opset version.

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = output_names(model)
    wrapped = _TupleOutputs(model.eval(), names)
    dummy = torch.zeros((1, 3, image_size, image_size), dtype=torch.uint8)
    dynamic = {name: {0: "batch"} for name in ("images",) + names}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its own deprecation
        torch.onnx.export(wrapped, (dummy,), str(path), input_names=["images"], output_names=list(names),
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    return path


def compare_onnx(model: torch.nn.Module, path: str | Path, image_size: int, batch: int = 2,
                 seed: int = 0) -> dict[str, float]:
    """Run PyTorch and onnxruntime on the same random uint8 batch.

    Returns:
        Largest absolute difference per output name.
    """
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, 3, image_size, image_size), dtype=np.uint8)
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(images))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    got = dict(zip(names, session.run(names, {"images": images})))
    return {name: float(np.abs(got[name] - expected[name].float().numpy()).max()) for name in names}


class _TupleOutputs(torch.nn.Module):
    """Wraps the model so ONNX sees a tuple of the named outputs."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...] = OUTPUTS):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images)
        return tuple(out[name] for name in self.names)


def _opset_range() -> tuple[int, int]:
    """Opsets the installed torch's TorchScript exporter accepts (its own constants, else a safe guess)."""
    try:
        from torch.onnx import _constants as c

        return c.ONNX_MIN_OPSET, getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", c.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        return 7, OPSET


def run(args: argparse.Namespace) -> int:
    """Export, then check onnxruntime against PyTorch; exit code 1 when they disagree."""
    from student.checkpoint import CheckpointError, load_checkpoint

    if args.check_batch < 0 or not args.atol >= 0:  # ``not >=`` also refuses NaN
        print(f"student export: error: --check-batch must be >= 0 and --atol >= 0, got {args.check_batch} and "
              f"{args.atol}", file=sys.stderr)
        return 2
    try:
        model, cfg, _ = load_checkpoint(args.checkpoint, map_location="cpu")
    except CheckpointError as e:
        print(f"student export: error: {e}", file=sys.stderr)
        return 2
    low, high = _opset_range()
    if not low <= args.opset <= high:
        print(f"student export: error: --opset {args.opset} is outside what this torch exports ({low}..{high}); "
              f"the default is {OPSET}", file=sys.stderr)
        return 2
    try:
        path = export_onnx(model, cfg.image_size, args.onnx, args.opset)
    except OSError:
        raise  # the `student` command reports it in one line
    except Exception as e:  # noqa: BLE001 -- the exporter raises many types; its first line names the problem
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(f"student export: error: ONNX export at --opset {args.opset} failed ({first}); "
              f"the default --opset {OPSET} works", file=sys.stderr)
        return 2
    print(f"wrote {path} (opset {args.opset}, input images uint8 (batch, 3, {cfg.image_size}, {cfg.image_size}))")
    if args.check_batch == 0:
        return 0
    diffs = compare_onnx(model, path, cfg.image_size, args.check_batch)
    worst = max(diffs.values())
    print("onnxruntime vs PyTorch, max |diff|: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    if worst > args.atol:
        print(f"student export: error: ONNX output differs from PyTorch by {worst:.2e} > {args.atol:.0e}",
              file=sys.stderr)
        return 1
    return 0
