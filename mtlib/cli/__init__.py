"""`mtlib` console entry point: one subcommand per capability, dispatched lazily.

Module `M` in COMMANDS defines `add_arguments_<cmd>(parser)` and `run_<cmd>(args) -> int`.
Every command lives in this package (`mtlib/cli/<cmd>.py`): argparse belongs here only, the
library below takes plain arguments (tests/test_layers.py checks both). Only the chosen module is
imported, so `mtlib plan` starts fast and never loads torch models.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("mtlib.cli.run", "execute the notebooks headless (papermill) into runs/<id>/"),
    "env": (
        "mtlib.cli.env",
        "print the environment report (python, torch, GPU, attention backend)",
    ),
    "plan": (
        "mtlib.cli.plan",
        "plan every tensor shape of a run from file metadata; diagnose errors",
    ),
    "generate": ("mtlib.cli.generate", "generate a talking video (mp4 with sound)"),
    "compare": ("mtlib.cli.compare", "compare two traces / run directories tensor by tensor"),
    "setup": ("mtlib.cli.setup", "download, lay out and verify the checkpoints"),
    "bench": ("mtlib.cli.bench", "GPU benchmark of the real-size model with random weights"),
    "finish": ("mtlib.cli.finish", "write the mp4 of a run whose frames were kept (.rescue)"),
    "batch": ("mtlib.cli.batch", "run a jobs file (local / https / s3 inputs) into a folder or S3"),
    "config": (
        "mtlib.cli.config",
        "make a run config (from-official: from a generate_multitalk.py command)",
    ),
}


def _usage() -> str:
    lines = ["usage: mtlib <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`mtlib <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from mtlib import __version__

        print(f"mtlib {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"mtlib: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[cmd]
    try:
        module = importlib.import_module(module_name)
        add_arguments = getattr(module, f"add_arguments_{cmd}")
        run = getattr(module, f"run_{cmd}")
    except (ImportError, AttributeError) as e:
        print(f"mtlib {cmd}: not available in this build ({e}).", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"mtlib {cmd}", description=help_)
    add_arguments(parser)
    args = parser.parse_args(rest)
    return int(run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
