"""Speed of the two ported models' own parts against their baselines, at full size with random weights.

Teacher throughput (images/s through the teacher) is in ``bench/teachers.py``
(``--full --teachers dptext-detr,visiongpt2``). This one times, in the same run:

- VisionGPT2 generation of ``--max-tokens`` tokens at batch 1 with the KV cache against the official
  loop's strategy of recomputing the whole prefix every step (no end token, so both make exactly as many);
- the deformable-attention core (``ms_deform_attn``) against the pure-PyTorch one of ``transformers``, at the
  encoder size of a 1000x1333 DPText-DETR input (8 heads, 4 levels, 4 points).

    .venv/bin/python bench/teachers_ports.py [--max-tokens 50] [--rounds 2] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

# Run as a script, this file's folder comes first on sys.path; keep the project root importable instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from teachers.deformable_attention import ms_deform_attn  # noqa: E402
from teachers.visiongpt2_model import VisionGPT2, VisionGPT2Config  # noqa: E402

TARGET_KV_SPEEDUP = 1.5  # cached generation at least this much faster than recomputing the prefix
TARGET_ATTN_VS_TRANSFORMERS = 0.9  # our core at least 0.9x the speed of transformers' pure-PyTorch one


def _best_per_s(fns: dict[str, Callable[[], Any]], device: str, rounds: int) -> dict[str, float]:
    """Calls per second of each function: one warm-up each, then ``rounds`` alternating timed calls, best kept
    (alternating and keeping the best make the ratio robust to a shared, noisy machine)."""
    best = {k: float("inf") for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return {k: 1.0 / v for k, v in best.items()}


def bench_generation(device: str, max_tokens: int, rounds: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = VisionGPT2(VisionGPT2Config()).eval().to(device)
    image = torch.rand(1, 3, 224, 224, device=device) * 2 - 1

    def run(use_cache: bool) -> Callable[[], list[list[int]]]:
        return lambda: model.generate(image, bos_id=50256, eos_id=-1, max_tokens=max_tokens, use_cache=use_cache)

    return _best_per_s({"cached": run(True), "recompute": run(False)}, device, rounds)


def bench_attention(device: str, rounds: int) -> dict[str, float]:
    from transformers.models.deformable_detr.modeling_deformable_detr import MultiScaleDeformableAttention

    shapes = [(125, 167), (63, 84), (32, 42), (16, 21)]
    s = sum(h * w for h, w in shapes)
    g = torch.Generator().manual_seed(0)
    value = torch.randn(1, s, 8, 32, generator=g).to(device)
    loc = torch.rand(1, s, 8, 4, 4, 2, generator=g).to(device)
    weights = torch.rand(1, s, 8, 4, 4, generator=g).to(device)
    shape_t = torch.tensor(shapes, device=device)
    start = torch.cat([shape_t.new_zeros(1), shape_t.prod(1).cumsum(0)[:-1]])
    ref = MultiScaleDeformableAttention()
    if not torch.allclose(ms_deform_attn(value, shapes, loc, weights),
                          ref(value, shape_t, shapes, start, loc, weights, 64), atol=1e-4):
        raise SystemExit("the two attention cores disagree")
    return _best_per_s({"ours": lambda: ms_deform_attn(value, shapes, loc, weights),
                        "transformers": lambda: ref(value, shape_t, shapes, start, loc, weights, 64)},
                       device, rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=50, help="generated tokens (official default 50)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed calls per variant (best kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    a = parser.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    gen = bench_generation(a.device, a.max_tokens, a.rounds)
    attn = bench_attention(a.device, a.rounds)
    kv = gen["cached"] / gen["recompute"]
    ratio = attn["ours"] / attn["transformers"]
    print(f"device {a.device}, {torch.get_num_threads()} threads, full size, random weights, batch 1")
    print(f"{'what':44s} {'calls/s':>9s}")
    print(f"{f'VisionGPT2 {a.max_tokens} tokens, KV cache':44s} {gen['cached']:9.3f}")
    print(f"{f'VisionGPT2 {a.max_tokens} tokens, recompute prefix':44s} {gen['recompute']:9.3f}")
    print(f"{'deformable attention core, ours':44s} {attn['ours']:9.3f}")
    print(f"{'deformable attention core, transformers':44s} {attn['transformers']:9.3f}")
    print(f"\nKV cache speed-up {kv:.2f} (target >= {TARGET_KV_SPEEDUP}); "
          f"attention ours / transformers {ratio:.2f} (target >= {TARGET_ATTN_VS_TRANSFORMERS})")
    print(json.dumps({"bench": "teachers_ports", "device": a.device, "threads": torch.get_num_threads(),
                      "max_tokens": a.max_tokens,
                      "generate_cached_per_s": round(gen["cached"], 4),
                      "generate_recompute_per_s": round(gen["recompute"], 4),
                      "kv_cache_speedup": round(kv, 3), "target_kv_cache_speedup": TARGET_KV_SPEEDUP,
                      "attn_ours_per_s": round(attn["ours"], 4),
                      "attn_transformers_per_s": round(attn["transformers"], 4),
                      "attn_vs_transformers": round(ratio, 3),
                      "target_attn_vs_transformers": TARGET_ATTN_VS_TRANSFORMERS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
