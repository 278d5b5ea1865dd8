"""Student benchmark: loader samples/s per core (decode + augmentation + target rendering) on a synthetic
256x256 store, and forward / forward+backward time per batch of the tiny and the paper network.

Usage: python bench/student.py [--device cuda] [--paper-batch 32] [--amp bf16] [--samples 320]
    [--variants plain,channels_last,channels_last+compile]
Ends with one JSON line. Loader target: 250 samples/s per core at 256x256 (DESIGN 6 / issue 7); the
reader-only rate (decoding the joined columns, no student work) is the baseline measured in the same run.
On a GPU, each variant of the paper network (the speed options of ``student train``) is timed per dtype, with its
model FLOP utilisation: 3 x the forward FLOPs (counted by torch's FlopCounterMode) per sample, times samples/s,
over the card's dense peak for the dtype (``PEAK_TFLOPS``; FP32 against the plain FP32 peak, though cuDNN may run
FP32 convolutions as TF32). Targets (issue 23): bf16 training >= 600 samples/s on one H100-class GPU; FP32 not
slower than the plain variant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shards.reader import StoreReader  # noqa: E402
from shards.synthetic import write_synthetic_store  # noqa: E402
from student.config import ModelConfig, TrainConfig  # noqa: E402
from student.recipe import Recipe  # noqa: E402
from student.data import REQUIRED_COLUMNS, make_loader, open_split  # noqa: E402
from student.targets import allocate_batch  # noqa: E402
from student.model import YMapNet  # noqa: E402
from student.train import train  # noqa: E402

LOADER_TARGET = 250.0
BF16_TARGET = 600.0  # samples/s of paper-network training at batch 32 on one H100-class GPU
#: dense peak TFLOP/s (FP32 without tensor cores, BF16 tensor cores) by a substring of the device name
PEAK_TFLOPS = {"H200 NVL": {"fp32": 60.0, "bf16": 835.0}, "H100 NVL": {"fp32": 60.0, "bf16": 835.0},
               "H200": {"fp32": 67.0, "bf16": 989.0}, "H100 PCIe": {"fp32": 51.0, "bf16": 756.0},
               "H100": {"fp32": 67.0, "bf16": 989.0}, "A100": {"fp32": 19.5, "bf16": 312.0},
               "L40S": {"fp32": 91.6, "bf16": 362.0}, "RTX 4090": {"fp32": 82.6, "bf16": 165.0}}
VARIANTS = ("plain", "channels_last", "channels_last+compile")


def peak_tflops(device_name: str, tag: str) -> float | None:
    """The card's dense peak for ``tag`` (fp32 | bf16), None for a card not in the table."""
    return next((peaks[tag] for name, peaks in PEAK_TFLOPS.items() if name in device_name), None)


def forward_flops(cfg: ModelConfig) -> float:
    """FLOPs of one forward pass of one image (a multiply-add counts 2), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = YMapNet(cfg).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros((1, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8))
    return float(counter.get_total_flops())


def loader_rates(root: Path, samples: int, rounds: int) -> dict[str, float]:
    """Rates of one process: the store reader decoding every member (baseline), the reader without decoding,
    the student's work alone (decode its members + augment + render + pack into batch buffers), and the full
    loader (DataLoader over batches of 32, no workers); as samples per wall second and per CPU second of the
    process. Then the loader as training runs it: one worker process filling shared-memory batches
    (``worker``, wall clock; needs a second core free). Each figure is the best of ``rounds`` interleaved
    rounds: other jobs on the machine only ever slow a round down."""
    best: dict[str, float] = {}
    for r in range(rounds):
        for name, rate in _loader_round(root, samples, epoch=r).items():
            best[name] = max(best.get(name, 0.0), rate)
    return best


def _loader_round(root: Path, samples: int, epoch: int) -> dict[str, float]:
    rates = {}
    for decode in (True, False):
        # no warm-up call: the decoding reader works in chunks, a first next() would decode a whole chunk
        reader = StoreReader(root, "train2017", REQUIRED_COLUMNS, resampled=True, shuffle=True, seed=0,
                             decode=decode)
        reader.set_epoch(epoch)
        it = iter(reader)
        wall, cpu = time.perf_counter(), time.process_time()
        raws = [next(it) for _ in range(samples)]
        name = "reader" if decode else "raw"
        rates.update({name: samples / (time.perf_counter() - wall),
                      f"{name}_cpu": samples / (time.process_time() - cpu)})

    dataset = open_split(root, "train2017", train=True, batch_size=32, seed=0, one_pass=False)  # endless
    buffers = allocate_batch(32, dataset.manifest.size)
    wall, cpu = time.perf_counter(), time.process_time()
    for i, raw in enumerate(raws):
        dataset.transform.pack(dataset.transform(raw), buffers, i % 32)
    rates.update(transform=samples / (time.perf_counter() - wall), transform_cpu=samples / (time.process_time() - cpu))

    dataset.set_epoch(2 * epoch + 1)
    batches = iter(make_loader(dataset, workers=0))
    dataset.release(next(batches))
    wall, cpu = time.perf_counter(), time.process_time()
    n = 0
    while n < samples:
        batch = next(batches)
        n += len(batch["key"])
        dataset.release(batch)
    rates.update(loader=n / (time.perf_counter() - wall), loader_cpu=n / (time.process_time() - cpu))

    # as in training: one DataLoader worker process (its own core) renders into shared memory
    dataset.set_epoch(2 * epoch + 2)
    batches = iter(make_loader(dataset, workers=1))
    for _ in range(6):  # the worker's start, and more batches than it prefetches: the timing starts in step
        dataset.release(next(batches))
    wall, n = time.perf_counter(), 0
    while n < samples:
        batch = next(batches)
        n += len(batch["key"])
        dataset.release(batch)
    rates.update(worker=n / (time.perf_counter() - wall))
    return rates


def step_times(cfg: ModelConfig, batch: int, iters: int, device: torch.device, amp: str,
               warmup: bool = True, variant: str = "plain") -> dict[str, float]:
    """Mean seconds per forward and per forward+backward (after a warm-up; with ``compile``, two: the compilation
    of each mode) and peak GPU memory (GiB)."""
    torch.manual_seed(0)
    layout = torch.channels_last if "channels_last" in variant else torch.contiguous_format
    model = YMapNet(cfg).to(device, memory_format=layout)
    if "compile" in variant:
        from torch._inductor import config as inductor

        inductor.fallback_random = True  # as student train: eager's random numbers
    net = torch.compile(model) if "compile" in variant else model
    images = torch.randint(0, 256, (batch, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8, device=device)
    images = images.contiguous(memory_format=layout)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(backward: bool) -> None:
        with torch.autocast(device.type, torch.bfloat16, enabled=amp == "bf16"):
            out = net(images)
        if backward:
            (out["maps"].float().square().mean() + out["tokens"].float().square().mean()).backward()
            model.zero_grad(set_to_none=True)
        sync()

    out: dict[str, float] = {}
    for name, backward in (("fwd", False), ("fwdbwd", True)):
        model.train(backward)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.set_grad_enabled(backward):
            for _ in range((2 if "compile" in variant else 1) if warmup else 0):
                run(backward)
            t = time.perf_counter()
            for _ in range(iters):
                run(backward)
            out[f"{name}_s"] = (time.perf_counter() - t) / iters
        if device.type == "cuda":
            out[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    out["params_m"] = model.parameter_counts()["total"] / 1e6
    return out


def trainer_rate(root: Path, out: Path, steps: int, batch: int, workers: int, device: torch.device,
                 amp: str, variant: str = "plain") -> float:
    """Samples/s of ``student train`` (paper network, augmentation, loader workers) over ``steps`` steps, as the
    trainer itself measures them (each epoch's first step, which waits for the workers, is left out)."""
    recipe = Recipe.from_dict({"epochs": 1, "batch_size": batch})
    cfg = TrainConfig(shards=str(root), out=str(out), model="paper", recipe=recipe, steps_per_epoch=steps,
                      val_steps=1, workers=workers, amp=amp, device=str(device), tensorboard=False, progress=False,
                      channels_last="channels_last" in variant, compile="compile" in variant)
    return train(cfg)["samples_per_s"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--samples", type=int, default=320,
                   help="samples timed in each loader measurement (a multiple of the reader's 64-sample chunks)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved loader rounds; the best of each figure counts")
    p.add_argument("--tiny-batch", type=int, default=None, help="default 32 on a GPU, 4 on the CPU")
    p.add_argument("--paper-batch", type=int, default=None, help="default 32 on a GPU, 1 on the CPU")
    p.add_argument("--iters", type=int, default=None,
                   help="timed iterations (default 10 on a GPU; on the CPU 2 for tiny, 1 without warm-up for paper)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="steps of a real `student train` run of the paper network per dtype (default 40 on a GPU, "
                        "0 = skip, on the CPU)")
    p.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 2)),
                   help="loader workers of that run (default: cores - 2, at most 8)")
    p.add_argument("--amp", choices=("none", "bf16", "both"), default=None,
                   help="paper-network dtype(s) (default both on a GPU, none on the CPU)")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated speed options of the paper network, of {', '.join(VARIANTS)} (default all "
                        "on a GPU, plain on the CPU); the trainer runs take the first and the last")
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    paper_batch = args.paper_batch or (32 if gpu else 1)
    tiny_batch = args.tiny_batch or (32 if gpu else 4)
    iters = args.iters or (10 if gpu else 1)
    amps = {"none": ["none"], "bf16": ["bf16"], "both": ["none", "bf16"]}[args.amp or ("both" if gpu else "none")]
    variants = [v for v in (args.variants or (",".join(VARIANTS) if gpu else "plain")).split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"--variants: unknown {', '.join(sorted(unknown))}; use {', '.join(VARIANTS)}")

    train_steps = args.train_steps if args.train_steps is not None else (40 if gpu else 0)
    tmp_dir = tempfile.TemporaryDirectory()
    tmp = Path(tmp_dir.name)
    write_synthetic_store(tmp, "train2017", 128, 64, size=256, seed=0)
    rates = loader_rates(tmp, args.samples, args.rounds)
    print(f"loader, one process (= one core), 256x256 synthetic store, best of {args.rounds} rounds"
          "    samples/s (wall)   samples/s (CPU time)")
    for name, label in (("reader", "baseline: reader decoding all members"),
                        ("raw", "reader without decoding"),
                        ("transform", "student work (decode+augment+render)"),
                        ("loader", "full loader (batches of 32)")):
        print(f"  {label:40s} {rates[name]:10.1f}   {rates[name + '_cpu']:10.1f}")
    print(f"  {'full loader, 1 worker process':40s} {rates['worker']:10.1f}")
    print(f"  target {LOADER_TARGET:.0f} samples/s per core: {rates['loader_cpu'] / LOADER_TARGET:.2f}x (CPU time); "
          f"{rates['loader_cpu'] / rates['reader_cpu']:.2f}x the decoding reader alone")

    tiny = step_times(ModelConfig.tiny(256), tiny_batch, max(iters, 2), device, "none")
    print(f"\nnetwork on {device} ({torch.cuda.get_device_name(device) if gpu else 'CPU'}, "
          f"{torch.get_num_threads()} threads)")
    print(f"  tiny  256x256 batch {tiny_batch:3d} fp32: fwd {tiny['fwd_s'] * 1e3:8.1f} ms, "
          f"fwd+bwd {tiny['fwdbwd_s'] * 1e3:8.1f} ms  ({tiny['params_m']:.2f}M params)")
    result = {"device": str(device), "loader_samples_per_s_per_core": round(rates["loader_cpu"], 1),
              "loader_samples_per_s_wall": round(rates["loader"], 1),
              "loader_one_worker_samples_per_s": round(rates["worker"], 1), "loader_target": LOADER_TARGET,
              "loader_ratio": round(rates["loader_cpu"] / LOADER_TARGET, 3),
              "loader_vs_decoding_reader": round(rates["loader_cpu"] / rates["reader_cpu"], 3),
              "baseline_reader_decoding_samples_per_s_per_core": round(rates["reader_cpu"], 1),
              "raw_reader_samples_per_s_per_core": round(rates["raw_cpu"], 1),
              "student_work_samples_per_s_per_core": round(rates["transform_cpu"], 1),
              "tiny_batch": tiny_batch, "tiny_fwd_ms": round(tiny["fwd_s"] * 1e3, 2),
              "tiny_fwdbwd_ms": round(tiny["fwdbwd_s"] * 1e3, 2), "paper_batch": paper_batch}
    flops = forward_flops(ModelConfig.paper())
    name = torch.cuda.get_device_name(device) if gpu else "CPU"
    result.update(paper_forward_gflops=round(flops / 1e9, 2), device_name=name)

    def utilisation(samples_per_s: float, tag: str) -> float | None:
        peak = peak_tflops(name, tag)
        return round(samples_per_s * 3 * flops / (peak * 1e12), 4) if peak else None

    for amp in amps:
        tag = "fp32" if amp == "none" else "bf16"
        for variant in variants:
            paper = step_times(ModelConfig.paper(), paper_batch, iters, device, amp, warmup=gpu, variant=variant)
            rate = paper_batch / paper["fwdbwd_s"]
            mfu = utilisation(rate, tag)
            line = (f"  paper 256x256 batch {paper_batch:3d} {tag} {variant:<22}: fwd {paper['fwd_s'] * 1e3:8.1f} ms, "
                    f"fwd+bwd {paper['fwdbwd_s'] * 1e3:8.1f} ms = {rate:7.1f} samples/s"
                    + (f", MFU {100 * mfu:.1f}%" if mfu is not None else "")
                    + f"; inference {paper_batch / paper['fwd_s']:.1f} images/s")
            if gpu:
                line += f", peak {paper['fwd_peak_gib']:.1f} / {paper['fwdbwd_peak_gib']:.1f} GiB"
            print(line)
            key = f"paper_{tag}" if variant == "plain" else f"paper_{tag}_{variant.replace('+', '_')}"
            result.update({f"{key}_fwd_ms": round(paper["fwd_s"] * 1e3, 1),
                           f"{key}_fwdbwd_ms": round(paper["fwdbwd_s"] * 1e3, 1),
                           f"{key}_fwdbwd_samples_per_s": round(rate, 1), f"{key}_mfu": mfu,
                           f"{key}_images_per_s": round(paper_batch / paper["fwd_s"], 2),
                           "paper_params_m": round(paper["params_m"], 1)})
            if gpu:
                result[f"{key}_peak_gib"] = round(paper["fwdbwd_peak_gib"], 2)
    if train_steps:
        write_synthetic_store(tmp, "val2017", 32, 32, size=256, seed=1)
        for variant in dict.fromkeys((variants[0], variants[-1])):
            for amp in amps:
                tag = "fp32" if amp == "none" else "bf16"
                rate = trainer_rate(tmp, tmp / f"run_{tag}_{variant}", train_steps, paper_batch, args.workers, device,
                                    amp, variant)
                mfu = utilisation(rate, tag)
                print(f"  student train, paper {tag} {variant}, batch {paper_batch}, {args.workers} loader workers, "
                      f"{train_steps} steps: {rate:.1f} samples/s" + (f", MFU {100 * mfu:.1f}%" if mfu is not None
                                                                       else ""))
                key = f"train_paper_{tag}" if variant == "plain" else f"train_paper_{tag}_{variant.replace('+', '_')}"
                result[f"{key}_samples_per_s"] = round(rate, 1)
                result[f"{key}_mfu"] = mfu
        result.update(train_workers=args.workers, target_train_paper_bf16_samples_per_s=BF16_TARGET)
        best = max((v for k, v in result.items() if k.startswith("train_paper_bf16") and k.endswith("samples_per_s")),
                   default=None)
        if best is not None:
            result["train_paper_bf16_best_vs_target"] = round(best / BF16_TARGET, 3)
    tmp_dir.cleanup()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
