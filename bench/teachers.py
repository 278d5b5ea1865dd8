"""Benchmark of the model teachers: images/s of each teacher on random weights, batched, at COCO image sizes.

By default every teacher is built tiny (the tests' checkpoints) on the CPU; ``--full`` (implied by
``--device cuda``) builds each one at its published size with random weights (nothing is downloaded).
Next to each teacher the same run measures its preprocessing alone (letterbox on the device) as a
baseline, so the table shows how much of the time is the model. The last line is one JSON object.

    python bench/teachers.py [--device cpu|cuda] [--full] [--batch-size 4] [--batches 1] [--dtype float16]
        [--teachers depth-anything-v2,mask2former]

Adding a teacher is one ``Case`` entry in ``CASES``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# Run as a script, this file's folder comes first on sys.path; keep the project root importable instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from teachers import TeacherInput, create_teacher  # noqa: E402
from teachers.tiny import save_tiny_checkpoint  # noqa: E402


# ---- full-size random checkpoints (published architectures, random weights) --------------------------------

def _full_depth_anything(out: str) -> str:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                            patch_size=14, image_size=518, out_indices=[5, 12, 18, 24], reshape_hidden_states=False,
                            apply_layernorm=True)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=1024,
                                 neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256)
    DepthAnythingForDepthEstimation(config).save_pretrained(out)
    return out


def _full_mask2former(out: str) -> str:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    from shards.taxonomy import PANOPTIC_CLASSES

    backbone = SwinConfig(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12,
                          image_size=384, out_features=["stage1", "stage2", "stage3", "stage4"])
    id2label = {c.contiguous_id: c.name for c in PANOPTIC_CLASSES}
    config = Mask2FormerConfig(backbone_config=backbone, num_queries=200, id2label=id2label,
                               label2id={v: k for k, v in id2label.items()})
    Mask2FormerForUniversalSegmentation(config).save_pretrained(out)
    return out


def _full_detectron2(config_file: str) -> Callable[[str], str]:
    """A writer of the model-zoo model ``config_file`` at its published size, random weights."""
    def write(out: str) -> str:
        from teachers.detectron2_common import save_random

        return save_random(out, config_file, (), seed=0)
    return write


def _full_vitpose(out: str) -> str:
    """A bundle at the published sizes: ViTPose-B (simple decoder) and RT-DETR R50-vd (transformers' default
    RT-DETR configuration)."""
    from transformers import VitPoseBackboneConfig

    from teachers.vitpose import save_random_checkpoint

    backbone = VitPoseBackboneConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                                     image_size=[256, 192], patch_size=[16, 16], out_indices=[12])
    return save_random_checkpoint(out, backbone, {})


def _full_vit_gpt2(out: str) -> str:
    from transformers import (AutoTokenizer, GPT2Config, ViTConfig, VisionEncoderDecoderConfig,
                              VisionEncoderDecoderModel)

    save_tiny_checkpoint("vit-gpt2", out)  # tokenizer + image processor; the model is replaced below
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.add_tokens([f"<w{i}>" for i in range(50257 - len(tokenizer))])  # GPT-2's vocabulary size
    tokenizer.save_pretrained(out)
    eos = tokenizer.eos_token_id
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        ViTConfig(), GPT2Config(vocab_size=len(tokenizer), add_cross_attention=True, is_decoder=True,
                                bos_token_id=eos, eos_token_id=eos))
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = eos
    VisionEncoderDecoderModel(config=config).save_pretrained(out)
    return out


def _full_rapidocr(out: str) -> None:
    return None  # the detector shipped in the package is the full-size model


def _full_dptext_detr(out: str) -> str:
    from teachers.dptext_detr import save_random_checkpoint

    return save_random_checkpoint(out)  # released R-50 sizes


def _full_visiongpt2(out: str) -> str:
    from teachers.visiongpt2 import save_random_checkpoint
    from teachers.visiongpt2_model import VisionGPT2Config

    return save_random_checkpoint(out, VisionGPT2Config())  # ViT-B/16 + GPT-2 small, 50257-token tokenizer


@dataclass(frozen=True)
class Case:
    """One teacher of the benchmark: tiny and full-size construction."""

    name: str
    tiny_kwargs: dict[str, Any] = field(default_factory=dict)
    full: Callable[[str], str | None] | None = None  # writes a full-size random checkpoint, returns checkpoint=
    full_kwargs: dict[str, Any] = field(default_factory=dict)
    published: str = ""  # published speed, for reading the numbers


CASES: tuple[Case, ...] = (
    Case("vitpose", {}, _full_vitpose, {}, "RT-DETR R50: 108 fps on a T4 (TensorRT FP16); plus one crop per person"),
    Case("detectron2-keypoint-rcnn", {"min_size": 480, "max_size": 640},
         _full_detectron2("COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x.yaml"), {}, ""),
    Case("depth-anything-v2", {"input_size": 518}, _full_depth_anything, {},
         "Large: 13 ms/image on an A100 (518 px)"),
    Case("detectron2-panoptic-fpn", {"min_size": 480, "max_size": 640},
         _full_detectron2("COCO-PanopticSegmentation/panoptic_fpn_R_101_3x.yaml"), {},
         "R50: 53 ms/image on a V100 (800 px)"),
    Case("mask2former", {"min_size": 480, "max_size": 640}, _full_mask2former, {},
         "Swin-L: about 3 images/s on an A100"),
    Case("rapidocr", {"input_size": 640}, _full_rapidocr, {}, "about 0.5 s/image on this machine's CPU"),
    Case("vit-gpt2", {"num_beams": 4, "max_length": 16}, _full_vit_gpt2, {}, ""),
    Case("dptext-detr", {"min_size": 640}, _full_dptext_detr, {}, "official test size: shorter side 1000"),
    Case("visiongpt2", {"max_tokens": 16}, _full_visiongpt2, {}, "50 tokens, KV cache"),
)


def _images(n: int) -> list[np.ndarray]:
    """COCO-like 640-pixel versions of scikit-image's bundled photos (no download), cycled to ``n``."""
    import cv2
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    sized = [cv2.resize(p, (640, int(round(640 * p.shape[0] / p.shape[1])))) for p in photos]
    return [sized[i % len(sized)] for i in range(n)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _images_per_s(run: Callable[[], Any], n_images: int, device: str) -> float:
    run()  # warm-up (first-call allocations, kernel selection)
    _sync(device)
    start = time.perf_counter()
    run()
    _sync(device)
    return n_images / (time.perf_counter() - start)


def bench_case(case: Case, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    """Build one teacher, then time its preprocessing alone and the whole call on the same images."""
    from teachers.preprocess import letterbox_batch

    folder = os.path.join(workdir, case.name)
    if args.full:
        checkpoint, kwargs = case.full(folder) if case.full else None, dict(case.full_kwargs)
    else:
        checkpoint, kwargs = save_tiny_checkpoint(case.name, folder), dict(case.tiny_kwargs)
    if checkpoint is not None:
        kwargs["checkpoint"] = checkpoint
    teacher = create_teacher(case.name, device=args.device, dtype=args.dtype, batch_size=args.batch_size, **kwargs)
    images = _images(args.batch_size * args.batches)
    inputs = [TeacherInput(im, i) for i, im in enumerate(images)]
    size = getattr(teacher, "input_size", getattr(teacher, "max_size", 224))
    prep = _images_per_s(lambda: letterbox_batch(images, size, device=args.device), len(images), args.device)
    total = _images_per_s(lambda: teacher(inputs), len(images), args.device)
    return {"teacher": case.name, "size": "full" if args.full else "tiny", "images_per_s": round(total, 2),
            "preprocess_images_per_s": round(prep, 1), "model_share": round(1 - total / prep, 3),
            "published": case.published}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--full", action="store_true", help="published sizes with random weights")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=1, help="timed batches per teacher")
    parser.add_argument("--teachers", default="", help="comma-separated subset of: "
                        + ", ".join(c.name for c in CASES))
    args = parser.parse_args(argv)
    args.full = args.full or args.device.startswith("cuda")
    wanted = [t for t in args.teachers.split(",") if t]
    unknown = set(wanted) - {c.name for c in CASES}
    if unknown:
        parser.exit(2, f"unknown teacher(s) {sorted(unknown)}; choose from {[c.name for c in CASES]}\n")
    cases = [c for c in CASES if not wanted or c.name in wanted]

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for case in cases:
            rows.append(bench_case(case, args, workdir))
            r = rows[-1]
            print(f"{r['teacher']:<26} {r['size']:<5} {r['images_per_s']:>9.2f} img/s   "
                  f"preprocess {r['preprocess_images_per_s']:>8.1f} img/s   model share {r['model_share']:.0%}"
                  f"   ({r['published'] or '-'})", flush=True)
    print(json.dumps({"bench": "teachers", "device": args.device, "dtype": args.dtype, "batch_size": args.batch_size,
                      "full": args.full, "images_per_s": {r["teacher"]: r["images_per_s"] for r in rows},
                      "model_share": {r["teacher"]: r["model_share"] for r in rows}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
