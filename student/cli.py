"""`student` command line: a table of subcommands, each module imported only when its command runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: subcommand -> module exposing ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS = {"train": "student.train", "eval": "student.eval", "predict": "student.predict",
            "export": "student.export"}
HELP = {"train": "train the student on the store", "eval": "evaluate a checkpoint on a split",
        "predict": "run a checkpoint on images or videos", "export": "export a checkpoint to ONNX"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``student``; returns the exit code (2 for usage errors)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="student", description="Y-MAP-Net student: train, eval, predict, export")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS:
        sub.add_parser(name, help=HELP[name], add_help=False)
    if not argv or argv[0] not in COMMANDS:
        try:
            parser.parse_args(argv[:1] or ["--help"])  # prints the help or the usage error
        except SystemExit as e:
            return int(e.code or 0) if argv else 2
        return 2
    command = argv[0]
    try:
        module = importlib.import_module(COMMANDS[command])
    except ModuleNotFoundError as e:
        if e.name != COMMANDS[command]:
            raise
        print(f"student {command}: this installation has no {COMMANDS[command]} module", file=sys.stderr)
        return 2
    cmd_parser = argparse.ArgumentParser(prog=f"student {command}", description=HELP[command])
    module.add_arguments(cmd_parser)
    try:
        args = cmd_parser.parse_args(argv[1:])
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)
    problem = check_device(getattr(args, "device", None))
    if problem:
        print(f"student {command}: error: {problem}", file=sys.stderr)
        return 2
    if getattr(args, "device", None) == "auto":
        args.device = resolve_device("auto")
    try:
        return int(module.run(args))
    except KeyboardInterrupt:
        print(f"student {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as e:  # e.g. a read-only --out
        where = f" {e.filename}:" if e.filename else ""
        print(f"student {command}: error:{where} {e.strerror or e}", file=sys.stderr)
        return 1


def check_device(name: str | None) -> str | None:
    """Why ``--device name`` cannot be used here, or None when it can (None and "auto" always can)."""
    if name is None or name == "auto":
        return None
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"unknown device {name!r} (--device); use cpu, cuda, cuda:N, mps or auto"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"--device {name}: no CUDA GPU is visible on this machine; use --device cpu"
        if device.index is not None and device.index >= count:
            return f"--device {name}: only {count} CUDA GPU(s) visible (cuda:0..cuda:{count - 1})"
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            return f"--device {name}: no Apple MPS device on this machine; use --device cpu"
    elif device.type != "cpu":
        return f"--device {name}: {device.type!r} devices are not supported; use cpu, cuda, cuda:N, mps or auto"
    return None


def resolve_device(name: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a CUDA GPU is visible, else ``"cpu"``; other names pass through."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    sys.exit(main())
