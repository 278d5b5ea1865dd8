"""`student train`: one readable training loop for Y-MAP-Net on the store (DESIGN 6), by a recipe
(``student.recipe``; the paper's by default).

Adam with a linear learning-rate decay, a fixed number of steps per epoch over an endless resampled
stream, validation on the val split every epoch with the target sizes of that epoch, early stopping,
checkpoints with everything needed to resume exactly (model, optimiser, config and recipe, epoch, step, loader
position, metrics, target sizes), TensorBoard, a progress bar, optional bf16 autocast and single-node multi-GPU
with torchrun (DDP; ranks read different shards).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from shards.atomic import atomic_write_bytes, out_folder_problem
from shards.manifest import StoreError
from shards.streams import is_url
from shards.taxonomy import VOCAB_SIZE
from student.checkpoint import (CheckpointError, check_fits, load_problem, load_weights, read_checkpoint,
                                save_checkpoint, saved_model_config)
from student.cli import resolve_device
from student.config import MODELS, ModelConfig, TrainConfig
from student.data import (DeviceFeed, StudentDataset, close_loader, error_line, exit_code, make_loader, open_mixed,
                          open_split, parse_mix, skip_remainder, to_device)
from student.loss import compute_loss, paper_loss
from student.metrics import MetricSums, image_panel
from student.model import YMapNet
from student.recipe import Recipe, dump_recipe, load_recipe

#: what a run writes into its --out folder; a new run refuses a folder holding any of them (see --overwrite)
RUN_FILES = ("last.pt", "best.pt", "train_config.json", "tb")


class _HardStop(KeyboardInterrupt):
    """A second Ctrl-C inside a training step: stop at once and save nothing (the step is half done)."""


#: the signals that stop a run as Ctrl-C does (finish the step, save last.pt, exit 128 + signal): SIGINT, SIGTERM
#: (``timeout``, ``docker stop``, Slurm, Kubernetes) and SIGUSR1 (Slurm's ``--signal`` warning before the end)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class _StepGuard:
    """Holds a stop signal (:data:`STOP_SIGNALS`) that arrives during a training step until the step has finished,
    so that the checkpoint it leads to never holds a half-done step (BatchNorm statistics updated but the step not
    counted, or weights partly updated). Outside a step a signal interrupts at once (as KeyboardInterrupt); a
    second one inside a step stops without saving. With ``hold_always`` (several ranks) every signal outside a
    step is held too: the ranks stop together after a step they agree on (see ``_agree``), none waiting in a
    collective for one that left. ``received`` is the last signal taken (by any guard). Only the main thread can
    take signals: elsewhere it does nothing."""

    received: int | None = None

    def __init__(self, hold_always: bool = False) -> None:
        self.hold_always = hold_always
        self.in_step = hold_always
        self.pending = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StepGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, previous in self._previous.items():  # None: a handler installed from C; the default stands then
            default = signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL
            signal.signal(s, previous if previous is not None else default)

    def _on_signal(self, signum: int, frame: Any) -> None:
        _StepGuard.received = signum
        if self.in_step and not self.pending:
            self.pending = True  # the loop stops after this step
            return
        raise _HardStop if self.in_step else KeyboardInterrupt


def _agree(stop: bool, diverged: bool, world: int, device: torch.device) -> tuple[bool, bool]:
    """(stop, diverged) as any rank has them: every rank acts alike or a collective would wait forever."""
    if world == 1:
        return stop, diverged
    flags = torch.tensor([float(stop), float(diverged)], device=device)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return bool(flags[0]), bool(flags[1])


def lr_at(recipe: Recipe, epoch: float) -> float:
    """Learning rate at a (fractional) epoch: linear from ``lr`` to ``lr_final`` over ``lr_decay_epochs``."""
    frac = min(1.0, epoch / recipe.lr_decay_epochs) if recipe.lr_decay_epochs > 0 else 1.0
    return recipe.lr + (recipe.lr_final - recipe.lr) * frac


def setup_device(name: str) -> tuple[torch.device, int, int]:
    """(device, rank, world size); starts the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    device = torch.device(resolve_device(name))
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def model_config(cfg: TrainConfig, store_size: int) -> ModelConfig:
    """The network for ``cfg.model`` at the store's image size, with the recipe's dropout, token residual and,
    when the recipe asks for it, a multi-hot head over the vocabulary (VOCAB_SIZE words)."""
    if cfg.model not in MODELS:
        raise ValueError(f"unknown model {cfg.model!r}; use {', '.join(MODELS)}")
    base = getattr(ModelConfig, cfg.model)(store_size) if cfg.model != "paper" else \
        replace(ModelConfig.paper(), image_size=store_size)
    r = cfg.recipe
    return replace(base, encoder_dropout=r.encoder_dropout, token_dropout=r.token_dropout,
                   token_residual=r.token_residual, multihot_vocab=VOCAB_SIZE if r.multihot else 0)


def evaluate(model: torch.nn.Module, dataset: StudentDataset, cfg: TrainConfig, device: torch.device,
             world: int) -> tuple[dict[str, float], torch.Tensor | None]:
    """One pass over the validation split (at most ``cfg.val_steps`` batches); returns (metrics, image panel)."""
    model.eval()
    sums, panel = MetricSums(device), None
    batches = iter(make_loader(dataset, cfg.workers, pin_memory=device.type == "cuda"))
    gains, multihot = cfg.recipe.gains(), torch.zeros(2, dtype=torch.float64, device=device)
    try:
        with torch.no_grad():
            for i, host in enumerate(batches):
                if cfg.val_steps and i >= cfg.val_steps:
                    break
                batch = to_device(host, device, cfg.channels_last)
                with torch.autocast(device.type, torch.bfloat16, enabled=cfg.amp == "bf16"):
                    out = model(batch["images"])
                _, parts = compute_loss(out, batch["targets"], batch["pose_mask"], batch["glove"],
                                        batch.get("multihot"), gains, cfg.recipe.pose_foreground_weight)
                loss = paper_loss(parts, gains)  # the seven terms: the multi-hot head does not pick best.pt
                if "multihot" in parts:
                    multihot += torch.stack([parts["multihot"].double(), multihot.new_ones(())])
                sums.update(out["maps"], batch["targets"], out["tokens"], batch["glove"], loss, batch["pose_mask"])
                if panel is None:
                    panel = image_panel(batch["images"], out["maps"], batch["targets"])
                dataset.release(host)
    finally:
        close_loader(batches)  # now, also after an error or Ctrl-C (see close_loader)
    if world > 1:
        torch.distributed.all_reduce(sums.sums)
        torch.distributed.all_reduce(multihot)
    metrics = sums.compute()
    if multihot[1] > 0:
        metrics["multihot/bce"] = float(multihot[0] / multihot[1])
    return metrics, panel


def train(cfg: TrainConfig, resume: str | None = None, stop_at_step: int | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume) a student; the Python API behind ``student train``.

    A stop signal (Ctrl-C, SIGTERM, SIGUSR1: :data:`STOP_SIGNALS`) ends the run as an interruption: the step it
    arrives in is finished, ``last.pt`` saved, and the result's ``"signal"`` names it (None for another end).

    Nothing is written into ``cfg.out`` before the first training step has finished (or a checkpoint is
    saved): a run that fails before that leaves the folder as it was.

    Args:
        cfg: the run's configuration; a local ``shards`` path is made absolute (the saved configs then work
            from any folder).
        resume: a checkpoint of an earlier run to continue from (its loader position included).
        stop_at_step: save a checkpoint and return once this global step is reached (as an interrupt does).
        overwrite: replace the run ``cfg.out`` holds (its ``RUN_FILES``) instead of refusing; a run resumed
            in its own checkpoint's folder goes on there without it.

    Returns:
        ``{"losses": [train loss of every step run here], "epoch_losses": [mean train loss of each epoch
        finished here], "epochs": epochs completed, "best": best val loss, "val": last validation metrics,
        "checkpoint": path of the last checkpoint, "interrupted": bool, "stopped": why the run ended early
        ("max_steps", "max_minutes", "early_stopping") or None, "samples_per_s": training samples per second
        over the steps after each epoch's first, "signal": the stop signal that interrupted it, or None}``.

    Raises:
        StoreError: the store lacks a split or a needed column, or a split's image size does not fit the model.
        CheckpointError: ``resume`` cannot be loaded, or its weights or optimiser state do not fit its config.
        ValueError: ``cfg.out`` holds another run and ``overwrite`` is not set, is a file, or cannot be written.
    """
    _StepGuard.received = None
    with _StepGuard():  # outside the steps (setup, loader start, validation) a stop signal interrupts at once
        result = _train(cfg, resume, stop_at_step, overwrite)
    result["signal"] = _StepGuard.received if result["interrupted"] else None
    return result


def _train(cfg: TrainConfig, resume: str | None, stop_at_step: int | None, overwrite: bool) -> dict[str, Any]:
    """:func:`train` under its signal guard."""
    cfg = replace(cfg, shards=absolute_store(cfg.shards))
    out_dir = Path(cfg.out)
    replacing = _check_out(out_dir, resume, overwrite)  # before anything is written, on every rank alike
    device, rank, world = setup_device(cfg.device)
    main = rank == 0
    torch.manual_seed(cfg.seed)
    recipe = cfg.recipe
    sizes = recipe.target_sizes()
    mix = parse_mix(cfg.train_split)
    if len(mix) > 1:  # several splits drawn by weight: an endless stream, so epochs are counted in steps
        if not cfg.steps_per_epoch:
            raise ValueError(f"--train-split {cfg.train_split}: mixed splits are drawn, not passed over; give "
                             "--steps-per-epoch N")
        train_ds = open_mixed(cfg.shards, mix, batch_size=recipe.batch_size, seed=cfg.seed,
                              shuffle_buffer=cfg.shuffle_buffer, sizes=sizes,
                              augment=recipe.augmentation if recipe.augment else None)
    else:
        train_ds = open_split(cfg.shards, next(iter(mix)), train=True, batch_size=recipe.batch_size, seed=cfg.seed,
                              shuffle_buffer=cfg.shuffle_buffer, sizes=sizes,
                              augment=recipe.augmentation if recipe.augment else None,
                              one_pass=not cfg.steps_per_epoch)  # --steps-per-epoch N: N draws per epoch instead
    val_ds = open_split(cfg.shards, cfg.val_split, train=False, batch_size=recipe.batch_size, sizes=sizes)
    for split, ds in ((cfg.train_split, train_ds), (cfg.val_split, val_ds)):
        if ds.manifest.num_samples == 0:  # the loaders would wait forever for a first batch
            raise StoreError(f"split {split!r} of store {cfg.shards} has no samples ({ds.manifest.rejected} images "
                             f"rejected: see {Path(cfg.shards) / split / 'rejected.jsonl'})")
    state: dict[str, Any] = {"epoch": 0, "step": 0, "position": {"epoch": 0, "batch": 0}, "best": math.inf,
                             "stale": 0, "metrics": {}, "epoch_loss": [0.0, 0]}
    if resume:
        payload = _load_resume(resume, device)
        model_cfg = saved_model_config(payload["model_cfg"], resume)
        check_fits(model_cfg, payload["model"], resume)
        if bool(model_cfg.multihot_vocab) != recipe.multihot:  # the head is part of the saved network
            raise ValueError(f"{resume} has {'a' if model_cfg.multihot_vocab else 'no'} multi-hot head but the "
                             f"recipe asks for {'one' if recipe.multihot else 'none'}; a resumed run keeps its "
                             "network (start a new run for another)")
        model_cfg = replace(model_cfg, encoder_dropout=recipe.encoder_dropout, token_dropout=recipe.token_dropout,
                            token_residual=recipe.token_residual)  # recipe knobs: no weights depend on them
        state.update({k: payload[k] for k in state if k in payload})
    else:
        model_cfg = model_config(cfg, train_ds.manifest.size)
    for split, ds in ((cfg.train_split, train_ds), (cfg.val_split, val_ds)):  # before an epoch is spent
        if ds.manifest.size != model_cfg.image_size:
            expects = f"the checkpoint {resume} expects" if resume else \
                f"the model (made for split {cfg.train_split}) expects"
            raise StoreError(f"store {cfg.shards}/{split} has {ds.manifest.size}-pixel samples but {expects} "
                             f"{model_cfg.image_size}")
    if model_cfg.multihot_vocab:
        train_ds.transform.multihot_vocab = val_ds.transform.multihot_vocab = model_cfg.multihot_vocab
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = YMapNet(model_cfg).to(device, memory_format=layout)
    fused = True if device.type == "cuda" else None  # one kernel for every tensor's Adam step (same arithmetic)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, eps=recipe.adam_eps, fused=fused)
    if resume:
        load_weights(model, payload["model"], resume)
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"{resume}: its optimiser state does not fit the model ({load_problem(e)})") \
                from None
        for group in optimizer.param_groups:  # the saved groups carry the saving run's choice: this device's
            group["fused"] = fused
        for param, st in optimizer.state.items():  # the moments in the parameter's memory layout (a fused step
            for key, value in st.items():          # refuses, or on the CPU misreads, moments of another layout)
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    st[key] = torch.empty_like(param).copy_(value)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if cfg.compile:  # the training steps only; validation and checkpoints use the module itself
        from torch._inductor import config as inductor

        inductor.fallback_random = True  # dropout masks from eager's generator: the same curve
        net = torch.compile(net)
    feed = DeviceFeed(device, cfg.channels_last, cfg.prefetch)
    gains = recipe.gains()
    if cfg.steps_per_epoch:  # draws from the endless resampled stream
        steps_per_epoch = cfg.steps_per_epoch
    else:  # one pass: every loader worker of every rank gives the same whole number of batches (padded)
        slots = world * max(1, cfg.workers)
        steps_per_epoch = max(1, cfg.workers) * max(1, -(-train_ds.manifest.num_samples // (slots * recipe.batch_size)))

    writer = None
    opened = False

    def open_outputs() -> None:
        """Write train_config.json and open TensorBoard (rank 0, once): after the first finished step or
        validation, or at the first save, so that a run failing before leaves an existing folder untouched."""
        nonlocal writer, opened
        if opened or not main:
            return
        opened = True
        out_dir.mkdir(parents=True, exist_ok=True)
        if replacing:  # --overwrite: the earlier run's files go only now
            _remove_run(out_dir)
        atomic_write_bytes(out_dir / "train_config.json", json.dumps(
            {"train": cfg.to_dict(), "model": model_cfg.to_dict(), "parameters": model.parameter_counts()},
            indent=1).encode())
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / "tb"))

    losses: list[float] = []

    def checkpoint(name: str) -> Path:
        path = out_dir / name
        if main:
            open_outputs()
            position = state["position"]  # the sizes of the epoch the weights last trained on
            radius, width = sizes.at(position["epoch"] if position["batch"] else max(0, state["epoch"] - 1))
            save_checkpoint(path, model, model_cfg, optimizer=optimizer.state_dict(), train_cfg=cfg.to_dict(),
                            target_sizes={"heatmap_radius": radius, "paf_width": width}, **state)
        return path

    last = out_dir / "last.pt"
    timed = [0, 0.0]  # samples and seconds of the steps after each epoch's first

    epoch_losses: list[float] = []
    started = time.monotonic()

    def result(epochs: int, saved: Any, interrupted: bool, stopped: str | None) -> dict[str, Any]:
        return {"losses": losses, "epoch_losses": epoch_losses, "epochs": epochs, "best": state["best"],
                "val": state["metrics"], "checkpoint": None if saved is None else str(saved),
                "interrupted": interrupted, "stopped": stopped, "samples_per_s": _rate(timed)}

    def interrupted(epoch: int, stopped: str | None = None) -> dict[str, Any]:
        """Save ``last.pt`` at the last finished step: an interruption (Ctrl-C, ``stop_at_step``) or, with
        ``stopped``, a normal end inside an epoch (``--max-steps``, ``--max-minutes``). Before this run finished
        a step or a validation it saves nothing: ``--out`` stays as it was (an earlier run there whole, even
        with ``--overwrite``), and the checkpoint to go on from is the one resumed, if any."""
        if not (losses or opened):
            return result(epoch, resume, stopped is None, stopped)
        saved = checkpoint("last.pt")
        if writer is not None:
            writer.close()
        return result(epoch, saved, stopped is None, stopped)

    def limit_reached() -> str | None:
        """Which of --max-steps / --max-minutes this run has reached (every rank agrees), or None."""
        if cfg.max_steps and state["step"] >= cfg.max_steps:
            return "max_steps"
        if cfg.max_minutes > 0:
            over = time.monotonic() - started >= cfg.max_minutes * 60
            if _agree(over, False, world, device)[0]:
                return "max_minutes"
        return None

    stopped: str | None = None
    for epoch in range(state["epoch"], recipe.epochs):
        skip = state["position"]["batch"] if state["position"]["epoch"] == epoch else 0  # resumed inside it
        batches = None
        if skip < steps_per_epoch:  # else the run stopped in this epoch's validation: that comes next
            train_ds.set_epoch(epoch, skip)
            batches = iter(make_loader(train_ds, cfg.workers, pin_memory=device.type == "cuda"))
            for _ in range(skip_remainder(skip, cfg.workers)):
                train_ds.release(next(batches))
        net.train()
        ahead = None  # (host batch, its device copy in flight) of the next step
        bar = _progress(cfg, main, steps_per_epoch, skip, epoch)
        tick = time.perf_counter()
        try:
            with _StepGuard(hold_always=world > 1) as guard:
                for b in range(skip, steps_per_epoch):
                    if stop_at_step is not None and state["step"] >= stop_at_step:
                        raise KeyboardInterrupt
                    if ahead is None:
                        host = next(batches)
                        sent = feed.send(host)
                    else:
                        (host, sent), ahead = ahead, None
                    batch = feed.receive(sent)
                    if feed.stream is not None and b + 1 < steps_per_epoch:  # the next batch travels during this
                        upcoming = next(batches, None)  # step (none left: the next step's own next() says so)
                        ahead = None if upcoming is None else (upcoming, feed.send(upcoming))
                    guard.in_step = True  # (waits for the loader stay outside the step: a signal stops at once)
                    lr = lr_at(recipe, state["step"] / steps_per_epoch)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    torch.manual_seed(cfg.seed * 1_000_003 + state["step"] * world + rank)  # dropout, resumable
                    with torch.autocast(device.type, torch.bfloat16, enabled=cfg.amp == "bf16"):
                        out = net(batch["images"])
                    loss, parts = compute_loss(out, batch["targets"], batch["pose_mask"], batch["glove"],
                                               batch.get("multihot"), gains, recipe.pose_foreground_weight)
                    stop, diverged = _agree(guard.pending, not bool(torch.isfinite(loss)), world, device)
                    if diverged:  # nothing sensible can come of the steps after it
                        raise FloatingPointError(
                            f"the training loss is {loss.item()} at step {state['step'] + 1}; lower --lr (or use "
                            f"--amp none), and check the store with `shards verify`; {last} holds the last "
                            "finished epoch, if one finished")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if recipe.clip_value > 0:  # as Keras's clipvalue: each gradient value into [-c, c]
                        torch.nn.utils.clip_grad_value_(model.parameters(), recipe.clip_value)
                    optimizer.step()
                    train_ds.release(host)  # its buffers are refilled from now on
                    state["step"] += 1
                    state["position"] = {"epoch": epoch, "batch": b + 1}
                    losses.append(loss.item())
                    state["epoch_loss"] = [state["epoch_loss"][0] + losses[-1], state["epoch_loss"][1] + 1]
                    now = time.perf_counter()
                    rate = batch["images"].shape[0] * world / max(now - tick, 1e-9)
                    if b > skip:  # an epoch's first step also waits for the loader workers to start
                        timed[0] += batch["images"].shape[0] * world
                        timed[1] += now - tick
                    tick = now
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", samples_s=f"{rate:.1f}")
                    bar.update(1)
                    open_outputs()
                    if writer is not None:
                        writer.add_scalar("train/loss", losses[-1], state["step"])
                        writer.add_scalar("train/lr", lr, state["step"])
                        writer.add_scalar("train/samples_per_s", rate, state["step"])
                        for name, value in parts.items():
                            writer.add_scalar(f"train/{name}", value.item(), state["step"])
                    guard.in_step = guard.hold_always
                    if stop or (world == 1 and guard.pending):  # the step is done: save it and stop
                        raise KeyboardInterrupt
                    stopped = limit_reached()
                    if stopped and b + 1 < steps_per_epoch:  # inside the epoch: save it as it stands
                        bar.close()
                        done = interrupted(epoch, stopped)
                        _close_group(world)
                        return done  # (at the epoch's end the run stops after its validation)
                if _agree(guard.pending, False, world, device)[0]:  # Ctrl-C during the epoch's last step
                    raise KeyboardInterrupt
        except _HardStop:
            bar.close()
            if writer is not None:
                writer.close()
            raise
        except KeyboardInterrupt:
            bar.close()
            return interrupted(epoch)
        finally:
            close_loader(batches)  # the epoch's stream is done: its workers end now, also after an error
        bar.close()

        try:  # a Ctrl-C here loses no training: resuming runs this validation again, then goes on
            val_ds.transform.epoch = epoch  # judged on the targets of the sizes it trained toward this epoch
            metrics, panel = evaluate(model, val_ds, cfg, device, world)  # unwrapped: ranks differ in counts
        except KeyboardInterrupt:
            return interrupted(epoch)
        total, count = state["epoch_loss"]
        train_loss = total / count if count else math.nan
        epoch_losses.append(train_loss)
        state.update(epoch=epoch + 1, position={"epoch": epoch + 1, "batch": 0}, metrics=metrics,
                     epoch_loss=[0.0, 0])
        val_loss = metrics.get("loss", math.inf)  # no loss: the val split gave no batch
        # better by more than min_delta, as Keras's EarlyStopping; stale epochs count from early_stop_start_epoch on
        # (Keras's start_from_epoch; the best value is tracked from the first epoch, so that best.pt exists)
        improved = val_loss < state["best"] - recipe.early_stop_min_delta
        if improved:
            state["best"], state["stale"] = val_loss, 0
        elif epoch >= recipe.early_stop_start_epoch:
            state["stale"] += 1
        open_outputs()
        if writer is not None:
            writer.add_scalar("train/epoch_loss", train_loss, epoch + 1)
            for name, value in metrics.items():
                writer.add_scalar(f"val/{name}", value, epoch + 1)
            if panel is not None:
                writer.add_image("val/panel", panel, epoch + 1)
        if main:
            print(epoch_line(epoch + 1, train_loss, val_loss, state["best"], metrics, sizes.at(epoch)),
                  file=sys.stderr, flush=True)
        last = checkpoint("last.pt")
        if improved:
            checkpoint("best.pt")
        if state["stale"] >= recipe.patience:  # `patience` epochs without improvement
            stopped = "early_stopping"
        if stopped:
            break
    if writer is not None:
        writer.close()
    _close_group(world)
    return result(state["epoch"], last, False, stopped)


def _close_group(world: int) -> None:
    """End the process group of a run on several ranks."""
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def epoch_line(epoch: int, train_loss: float, val_loss: float, best: float, metrics: dict[str, float],
               sizes: tuple[int, int]) -> str:
    """The plain line printed after each epoch (also with --no-progress): losses and figures an all-background
    output cannot pass (foreground IoU of joints, text and groups), the token cosine and the target sizes."""
    def f(key: str) -> str:
        value = metrics.get(key, math.nan)
        return "-" if math.isnan(value) else f"{value:.3f}"

    return (f"epoch {epoch}: train loss {train_loss:.4f}, val loss {val_loss:.4f} (best {best:.4f}); "
            f"IoU joints {f('joints/iou')} text {f('text/iou')} groups {f('groups/iou')}; tokens cos "
            f"{f('tokens/cos')} (non-empty {f('tokens/cos_nonempty')}); heatmap radius {sizes[0]}, PAF width "
            f"{sizes[1]}")


def absolute_store(root: str) -> str:
    """A local store path made absolute (a resumed run, or predict finding the vocabulary, may start in another
    folder); URLs and ``pipe:`` commands unchanged."""
    if is_url(root) or str(root).startswith("file://"):
        return str(root)
    return os.path.abspath(root)


def _check_out(out_dir: Path, resume: str | None, overwrite: bool) -> bool:
    """Whether this run replaces another one in ``out_dir``; without ``overwrite`` that is a ValueError.

    A run resumed from a checkpoint in ``out_dir`` itself is that folder's own run going on: nothing to replace.
    A folder the run could not write is an error now too (ValueError), not after the first step (when the run
    first writes).
    """
    problem = out_folder_problem(out_dir)
    if problem:
        raise ValueError(f"--out {problem}")
    if resume is not None and Path(resume).resolve().parent == out_dir.resolve():
        return False
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if not found:
        return False
    if overwrite:
        return True
    if resume is not None:
        hint = "choose another --out"
    elif "last.pt" in found:
        hint = f"continue it with --resume {out_dir / 'last.pt'}, choose a new --out"
    else:
        hint = "choose a new --out"
    raise ValueError(f"--out {out_dir} already holds a run ({', '.join(found)}); {hint}, or pass --overwrite to "
                     "replace it")


def _remove_run(out_dir: Path) -> None:
    """Delete the ``RUN_FILES`` of an earlier run in ``out_dir`` (``--overwrite``)."""
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _rate(timed: list[float]) -> float | None:
    """Training samples per second (all ranks) over the timed steps, None when no step was timed."""
    return timed[0] / timed[1] if timed[1] > 0 else None


def _load_resume(path: str, device: torch.device) -> dict[str, Any]:
    payload = read_checkpoint(path, device)
    needed = ("model", "model_cfg", "optimizer", "train_cfg", "epoch", "step", "position", "best", "stale", "metrics")
    missing = [k for k in needed if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
    position = payload["position"]
    counts = [payload["epoch"], payload["step"], payload["stale"]]
    if isinstance(position, dict):
        counts += [position.get("epoch"), position.get("batch")]
    if (not isinstance(position, dict) or not all(isinstance(c, int) and c >= 0 for c in counts)
            or not isinstance(payload["best"], (int, float)) or not isinstance(payload["metrics"], dict)
            or not isinstance(payload["train_cfg"], dict)):
        raise CheckpointError(f"{path}: its training state (epoch, step, position, best, stale, metrics, train_cfg) "
                              "is malformed")
    return payload


def _progress(cfg: TrainConfig, main: bool, total: int, initial: int, epoch: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{cfg.recipe.epochs}", unit="batch",
                disable=not (cfg.progress and main), dynamic_ncols=True, file=sys.stderr)


#: flags that set a recipe field (flag dest -> field); every other field is set with --set FIELD=VALUE
RECIPE_FLAGS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "lr_final": "lr_final",
                "lr_decay_epochs": "lr_decay_epochs", "patience": "patience", "augment": "augment",
                "multihot": "multihot"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``student train``; each overrides the recipe and the defaults (or, with ``--resume``, the saved
    config)."""
    s = argparse.SUPPRESS
    parser.add_argument("--shards", default=s, help="store root (default shards)")
    parser.add_argument("--train-split", default=s,
                        help="training split (default train2017), or several with weights, SPLIT:W,SPLIT:W (e.g. "
                             "train2017:3,unlabeled2017:1: three draws in four from train2017; needs "
                             "--steps-per-epoch; the splits must share vocab.json)")
    parser.add_argument("--val-split", default=s, help="validation split (default val2017)")
    parser.add_argument("--out", default=s, help="run folder for checkpoints and TensorBoard (default runs/student)")
    parser.add_argument("--model", choices=MODELS, default=s,
                        help="network size: paper (default), small (learns in minutes on a CPU) or tiny (tests)")
    parser.add_argument("--recipe", default=s, help="training recipe: a preset (paper, the default) or a JSON / YAML "
                                                    "file of recipe fields over the paper recipe")
    parser.add_argument("--set", dest="settings", action="append", default=s, metavar="FIELD=VALUE",
                        help="set one recipe field (repeatable; augmentation.FIELD for augmentation), e.g. "
                             "--set gain_joints=5 --set heatmap_radius=[23,8]")
    parser.add_argument("--print-recipe", action="store_true",
                        help="print the resolved recipe as JSON (write it to a file for --recipe) and exit")
    parser.add_argument("--epochs", type=int, default=s, help="maximum epochs (recipe; paper 250)")
    parser.add_argument("--steps-per-epoch", type=int, default=s,
                        help="batches per epoch drawn from the endless resampled stream (default 0: one pass over the "
                             "train split, every sample at least once, padded to whole batches per loader worker)")
    parser.add_argument("--val-steps", type=int, default=s, help="validation batches per epoch (default: all)")
    parser.add_argument("--max-steps", type=int, default=s,
                        help="end the run normally after this many training steps in all (default: no limit)")
    parser.add_argument("--max-minutes", type=float, default=s,
                        help="end the run normally after the step that passes this many minutes (default: none)")
    parser.add_argument("--batch-size", type=int, default=s, help="batch size per process (recipe; paper 32)")
    parser.add_argument("--lr", type=float, default=s, help="initial learning rate (recipe; paper 2.4e-4)")
    parser.add_argument("--lr-final", type=float, default=s, help="learning rate after the decay (recipe; paper 1e-4)")
    parser.add_argument("--lr-decay-epochs", type=int, default=s, help="epochs of linear decay (recipe; paper 100)")
    parser.add_argument("--patience", type=int, default=s, help="early-stopping patience in epochs (recipe; paper 65)")
    parser.add_argument("--multihot", action="store_true", default=s,
                        help="add the multi-hot word head (recipe; off in the paper recipe)")
    parser.add_argument("--workers", type=int, default=s, help="DataLoader workers (default 4)")
    parser.add_argument("--seed", type=int, default=s, help="seed of shuffling, augmentation and init (default 0)")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=s,
                        help="disable augmentation (recipe)")
    parser.add_argument("--amp", choices=("none", "bf16"), default=s, help="autocast dtype (default none)")
    parser.add_argument("--channels-last", dest="channels_last", action="store_true", default=s,
                        help="NHWC memory layout for weights and activations (speed; results to float tolerance)")
    parser.add_argument("--compile", action="store_true", default=s,
                        help="torch.compile the network for the training steps (speed; the first steps compile)")
    parser.add_argument("--no-prefetch", dest="prefetch", action="store_false", default=s,
                        help="copy each batch to the GPU when its step begins (default: the next batch travels on a "
                             "side stream while the current step computes)")
    parser.add_argument("--device", default=s, help="cpu, cuda, cuda:1, ... (default auto)")
    parser.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=s,
                        help="do not write TensorBoard logs")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=s,
                        help="no progress bar")
    parser.add_argument("--resume", help="checkpoint to continue from (its config and recipe are the base of this "
                                         "run's; the run goes on in the checkpoint's folder unless --out is given)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run --out already holds (its last.pt, best.pt, train_config.json and tb/, "
                             "removed once the first step has trained) instead of refusing to start")


def _check_numbers(cfg: TrainConfig) -> None:
    """Raise ValueError (one line naming the flag) for counts and rates that cannot train."""
    for flag, value, least in (("--seed", cfg.seed, 0), ("--steps-per-epoch", cfg.steps_per_epoch, 0),
                               ("--val-steps", cfg.val_steps, 0), ("--workers", cfg.workers, 0),
                               ("--max-steps", cfg.max_steps, 0)):
        if value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    if not (cfg.max_minutes >= 0 and math.isfinite(cfg.max_minutes)):
        raise ValueError(f"--max-minutes must be a finite number >= 0, got {cfg.max_minutes}")


def resolve_config(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    """``base`` with ``--recipe``, then the recipe flags and ``--set``, then the other flags applied.

    Raises:
        ValueError: a bad recipe file, field or value (one line naming it).
    """
    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and k != "recipe"}
    recipe = load_recipe(args.recipe) if getattr(args, "recipe", None) else base.recipe
    changes = {RECIPE_FLAGS[k]: v for k, v in vars(args).items() if k in RECIPE_FLAGS}
    if changes:
        try:
            recipe = Recipe.from_dict(changes, recipe)
        except ValueError as e:  # "recipe lr must be ..." -> "--lr must be ...": the user typed the flag
            message = str(e)
            for name in changes:
                message = message.replace(f"recipe {name} ", f"--{name.replace('_', '-')} ")
            raise ValueError(message) from None
    for assignment in getattr(args, "settings", None) or []:
        recipe = recipe.with_setting(assignment)
    return replace(base, recipe=recipe, **flags)


def _store_hint(error: BaseException, args: argparse.Namespace, flags: dict[str, Any], base: TrainConfig) -> str:
    """For a resumed run whose saved store is not there (a relative --shards saved by an older version, read
    from another folder; or a store that moved): how to name it."""
    if not (isinstance(error, StoreError) and args.resume and "shards" not in flags) or is_url(base.shards):
        return ""
    if Path(base.shards).is_dir():
        return ""
    return (f" (the store path {base.shards} comes from {args.resume}; pass --shards to say where the store is "
            "now)")


def run(args: argparse.Namespace) -> int:
    """Run ``student train``; user errors end in one line and exit code 2."""
    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    base = TrainConfig()
    try:
        if args.resume:
            try:
                base = TrainConfig.from_dict(_load_resume(args.resume, torch.device("cpu"))["train_cfg"])
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"{args.resume}: its train_cfg is not a valid training config ({e})") from None
            if "model" in flags and flags["model"] != base.model:
                raise ValueError(f"--model {flags['model']}: {args.resume} is a {base.model} model; a resumed run "
                                 "keeps its network (start a new run for another)")
            # limits and speed options of an earlier invocation: give them again (a checkpoint never turns on a
            # code generator, torch.compile, for the run that resumes it)
            base = replace(base, max_steps=0, max_minutes=0.0, compile=False, channels_last=False, prefetch=True)
            if "shards" not in flags and is_url(base.shards):  # data never picks a command or a remote store
                raise ValueError(f"{args.resume} was trained on the store {base.shards[:80]!r}, a pipe: command or "
                                 "URL, which is taken from the command line only: pass --shards")
            # the run goes on where its checkpoint is, not in the folder it was first written to (a copy of a run
            # must not overwrite the original); --out sends it elsewhere
            if "out" not in flags:
                args.out = str(Path(args.resume).resolve().parent)
        cfg = resolve_config(args, base)
        if getattr(args, "print_recipe", False):
            print(dump_recipe(cfg.recipe))
            return 0
        _check_numbers(cfg)
        result = train(cfg, resume=args.resume, overwrite=getattr(args, "overwrite", False))
    except (StoreError, CheckpointError, ValueError) as e:
        print(f"student train: error: {error_line(e)}{_store_hint(e, args, flags, base)}", file=sys.stderr)
        return exit_code(e)
    except FloatingPointError as e:  # a diverged run
        print(f"student train: error: {e}", file=sys.stderr)
        return 1
    except _HardStop:
        print("student train: stopped at once by a second Ctrl-C; the half-done step is not saved (last.pt, if "
              "any, holds the last save)", file=sys.stderr)
        return 130
    state = "interrupted" if result["interrupted"] else "done"
    best = result["best"] if math.isfinite(result["best"]) else None  # no validation ran: JSON has no Infinity
    if int(os.environ.get("RANK", 0)) == 0:
        epoch_losses = [None if math.isnan(v) else round(v, 6) for v in result["epoch_losses"]]
        print(json.dumps({"state": state, "stopped": result["stopped"], "epochs": result["epochs"],
                          "steps": len(result["losses"]), "train_loss": epoch_losses[-1] if epoch_losses else None,
                          "epoch_train_losses": epoch_losses, "best_val_loss": best,
                          "checkpoint": result["checkpoint"], "samples_per_s": result["samples_per_s"]}))
    if result["interrupted"]:  # 128 + the signal, as a shell reports it: 130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1
        return 128 + int(result["signal"] or signal.SIGINT)
    return 0
