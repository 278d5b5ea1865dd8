"""Speed of the ported teachers (DPText-DETR, VisionGPT2) at full size with random weights, batch 1.

Each teacher is saved in its official checkpoint format, loaded through the teacher's real loading path and
run one real photo per call. Baselines measured in the same run: VisionGPT2 without the KV cache (the
official loop recomputes the whole prefix every step), and the deformable-attention core against the
pure-PyTorch one of ``transformers`` at the encoder size of a 1000x1333 input.

    .venv/bin/python bench/teachers_ports.py [--images 1] [--min-size 1000] [--max-tokens 50] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from skimage import data

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from teachers import TeacherInput, create_teacher  # noqa: E402
from teachers.deformable_attention import ms_deform_attn  # noqa: E402
from teachers.dptext_detr import PREFIX  # noqa: E402
from teachers.dptext_detr_model import DPTextConfig, DPTextDETR  # noqa: E402
from teachers.visiongpt2_model import VisionGPT2, VisionGPT2Config  # noqa: E402

TARGET_KV_SPEEDUP = 2.0  # cached generation must beat the recompute-everything loop at least this much
TARGET_ATTN_VS_TRANSFORMERS = 0.8  # our attention core at least 0.8x the speed of transformers' one


def _full_dptext(out: str) -> str:
    torch.manual_seed(0)
    path = os.path.join(out, "dptext_detr_full.pth")
    state = {PREFIX + k: v for k, v in DPTextDETR(DPTextConfig()).state_dict().items()}
    torch.save({"model": state}, path)
    return path


def _full_visiongpt2(out: str) -> tuple[str, str]:
    """captioner.pt of the released sizes plus a GPT-2-shaped tokenizer (50257 ids, end token last)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2TokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({f"tok{i}": i for i in range(len(vocab), 50256)})
    vocab["<|endoftext|>"] = 50256
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tok_dir = os.path.join(out, "gpt2_tokenizer")
    GPT2TokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                      unk_token="<|endoftext|>").save_pretrained(tok_dir)
    torch.manual_seed(0)
    path = os.path.join(out, "captioner.pt")
    torch.save(VisionGPT2(VisionGPT2Config()).state_dict(), path)
    return path, tok_dir


def _rate(teacher, photos: list[np.ndarray]) -> float:
    """Images per second, one image per call, after one warm-up call."""
    teacher([TeacherInput(photos[0])])
    start = time.perf_counter()
    for img in photos:
        teacher([TeacherInput(img)])
    return len(photos) / (time.perf_counter() - start)


def _attention_rates(device: str, repeats: int = 2) -> tuple[float, float]:
    """Calls per second of our core and transformers' pure-PyTorch core on 1000x1333-input encoder sizes."""
    from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

    shapes = [(125, 167), (63, 84), (32, 42), (16, 21)]
    s = sum(h * w for h, w in shapes)
    g = torch.Generator().manual_seed(0)
    value = torch.randn(1, s, 8, 32, generator=g).to(device)
    loc = torch.rand(1, s, 8, 4, 4, 2, generator=g).to(device)
    w = torch.rand(1, s, 8, 4, 4, generator=g).to(device)
    shape_t = torch.tensor(shapes, device=device)
    start_idx = torch.cat([shape_t.new_zeros(1), shape_t.prod(1).cumsum(0)[:-1]])
    ref = MultiScaleDeformableAttention()

    def ours() -> torch.Tensor:
        return ms_deform_attn(value, shapes, loc, w)

    def theirs() -> torch.Tensor:
        return ref(value, shape_t, shapes, start_idx, loc, w, 64)

    rates = []
    for fn in (ours, theirs):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        rates.append(repeats / (time.perf_counter() - start))
    assert torch.allclose(ours(), theirs(), atol=1e-5), "attention cores disagree"
    return rates[0], rates[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1, choices=(1, 2), help="real photos per teacher (default 1)")
    parser.add_argument("--min-size", type=int, default=1000, help="DPText-DETR test shorter side (official 1000)")
    parser.add_argument("--max-tokens", type=int, default=50, help="VisionGPT2 caption length cap (official 50)")
    parser.add_argument("--device", default="cpu")
    a = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    photos = [data.astronaut(), data.coffee()][:a.images]  # 512x512 and 400x600 real photos
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _full_dptext(tmp)
        dptext = create_teacher("dptext-detr", checkpoint=ckpt, min_size=a.min_size, device=a.device,
                                batch_size=1)
        rates["dptext-detr"] = _rate(dptext, photos)
        del dptext
        weights, tok_dir = _full_visiongpt2(tmp)
        caption = create_teacher("visiongpt2", checkpoint=weights, tokenizer=tok_dir, max_tokens=a.max_tokens,
                                 device=a.device, batch_size=1)
        rates["visiongpt2"] = _rate(caption, photos)
        # the cache's gain at a fixed length: no end token, so both runs generate exactly max_tokens
        images = caption.preprocess(photos[:1])
        for use_cache in (True, False):
            gen = dict(bos_id=caption.bos_id, eos_id=-1, max_tokens=a.max_tokens, use_cache=use_cache)
            caption.model.generate(images, **gen)
            start = time.perf_counter()
            caption.model.generate(images, **gen)
            rates["visiongpt2-fixed-len" if use_cache else "visiongpt2-fixed-len-no-cache"] = (
                1.0 / (time.perf_counter() - start))
    ours, theirs = _attention_rates(a.device)
    kv_speedup = rates["visiongpt2-fixed-len"] / rates["visiongpt2-fixed-len-no-cache"]
    attn_ratio = ours / theirs
    print(f"device {a.device}, batch 1, full size, random weights, {torch.get_num_threads()} threads")
    print(f"{'teacher':24s} {'images/s':>9s}")
    for name, r in rates.items():
        print(f"{name:24s} {r:9.3f}")
    print(f"\nVisionGPT2 KV cache speed-up = {kv_speedup:.2f} (target >= {TARGET_KV_SPEEDUP}); "
          f"deformable attention ours / transformers = {attn_ratio:.2f} (target >= {TARGET_ATTN_VS_TRANSFORMERS}; "
          f"{ours:.2f} vs {theirs:.2f} calls/s)")
    print(json.dumps({"device": a.device, "dptext_detr_ips": round(rates["dptext-detr"], 4),
                      "dptext_detr_min_size": a.min_size, "visiongpt2_ips": round(rates["visiongpt2"], 4),
                      "visiongpt2_fixed_len_ips": round(rates["visiongpt2-fixed-len"], 4),
                      "visiongpt2_fixed_len_no_cache_ips": round(rates["visiongpt2-fixed-len-no-cache"], 4),
                      "visiongpt2_max_tokens": a.max_tokens, "kv_cache_speedup": round(kv_speedup, 3),
                      "target_kv_cache_speedup": TARGET_KV_SPEEDUP, "attn_calls_per_s": round(ours, 3),
                      "transformers_attn_calls_per_s": round(theirs, 3), "attn_vs_transformers": round(attn_ratio, 3),
                      "target_attn_vs_transformers": TARGET_ATTN_VS_TRANSFORMERS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
