"""`mtlib plan`: the shape plan of a run from file metadata, printed (argparse; the planner is
`mtlib.plan`).
"""

from __future__ import annotations

import argparse
from typing import Any

from mtlib.cli.overrides import add_override_argument, cli_overrides
from mtlib.io import InputError
from mtlib.plan.planner import plan
from mtlib.plan.records import MODEL_SIZES, PLAN_DEFAULT_CONFIG, PlanError, ShapePlan, explain
from mtlib.plan.render import plan_table


def add_arguments_plan(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="reference image (path or URL); only its header is read")
    parser.add_argument(
        "--audio", action="append", default=None, help="speech track (repeat for 2 speakers)"
    )
    parser.add_argument("--frame-num", default=None, help="frames per clip: 4n+1 or 'auto'")
    parser.add_argument("--size", choices=["multitalk-480", "multitalk-720"], default=None)
    parser.add_argument("--buckets", choices=["official", "tiny"], default=None)
    parser.add_argument("--mode", choices=["clip", "streaming"], default=None)
    parser.add_argument("--short-audio", choices=["pad", "snap", "error"], default=None)
    parser.add_argument("--audio-type", choices=["para", "add"], default=None)
    parser.add_argument("--model", choices=sorted(MODEL_SIZES), default=None)
    parser.add_argument(
        "--config",
        default=None,
        help="preset name or YAML file (default: multitalk-480, the real model; tiny: the test model)",
    )
    parser.add_argument(
        "--gpus", type=int, default=None, help="ranks of a sequence-parallel run (parallel.gpus)"
    )
    add_override_argument(
        parser,
        "config override as in generate, e.g. -p model.precision=fp8 (repeatable; the flags "
        "above win)",
    )
    parser.add_argument("--json", action="store_true", help="print ShapePlan.to_dict() as JSON")


def run_plan(args: argparse.Namespace) -> int:
    """Exit 0 for a valid plan, 2 (with the diagnosis) for an invalid one or bad input."""
    import sys

    from mtlib.config import ConfigError, load_config

    try:  # key=value syntax checked here, values against the schema by load_config
        overrides: dict[str, Any] = cli_overrides(args.overrides)
    except ConfigError as e:
        print(f"mtlib plan: {e}", file=sys.stderr)
        return 2
    if args.frame_num is not None:
        fn = args.frame_num
        overrides["generation.frame_num"] = fn if fn == "auto" else _int_arg(fn)
    for key, val in (
        ("model.size", args.size),
        ("model.buckets", args.buckets),
        ("generation.mode", args.mode),
        ("generation.short_audio", args.short_audio),
        ("inputs.audio_type", args.audio_type),
        ("model.name", args.model),
        ("parallel.gpus", args.gpus),
    ):
        if val is not None:
            overrides[key] = val
    if args.image is not None:
        overrides["inputs.image"] = args.image
    if args.audio:
        overrides["inputs.audio"] = list(args.audio)
    try:
        cfg = load_config(args.config or PLAN_DEFAULT_CONFIG, overrides)
        p = plan(cfg)
    except (PlanError, ConfigError, InputError) as e:
        print(f"mtlib plan: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(p.to_json())
    else:
        _print_rich(p)
    return 0 if p.valid else 2


def _int_arg(s: str) -> int | str:
    try:
        return int(s)
    except ValueError:
        return s  # load_config reports it with the allowed values


def _print_rich(p: ShapePlan) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but the plain table is always enough
        print(plan_table(p))
        return
    con = Console(soft_wrap=True)  # long messages stay on one line (copyable, greppable)
    text = plan_table(p).split("\n\n")[0]
    con.print(text, markup=False, highlight=False)
    if p.tensors:
        t = Table(title="planned tensors", show_lines=False)
        t.add_column("tensor")
        t.add_column("shape")
        t.add_column("dtype")
        for x in p.tensors:
            t.add_row(x.name, "[" + ", ".join(map(str, x.shape)) + "]", x.dtype)
        con.print(t)
    if p.valid:
        con.print(
            f"VALID: seq_len {p.seq_len}, {len(p.clips)} clip(s), {p.output_frames} frames, "
            f"{p.flops_per_step / 1e15:.3f} PFLOP per step",
            markup=False,
            style="bold green",
        )
        from mtlib.plan.parallel import parallel_lines

        for line in parallel_lines(p):
            con.print(line, markup=False, highlight=False)
    else:
        con.print(f"INVALID: {len(p.violations)} violation(s)", style="bold red")
        for v in p.violations:
            con.print(explain(v), markup=False, highlight=False)
