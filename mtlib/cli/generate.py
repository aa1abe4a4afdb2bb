"""`mtlib generate`: a talking video from the command line (argparse; the run is
`mtlib.run.generation.generate_video`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from mtlib.cli.overrides import add_override_argument, cli_overrides
from mtlib.config import ConfigError, load_config
from mtlib.io import InputError
from mtlib.run.generation import generate_video, summary
from mtlib.run.prepare import PlanError

if TYPE_CHECKING:
    pass


def add_arguments_generate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="reference image (path or URL); default: the config's")
    parser.add_argument(
        "--audio", action="append", help="speech of one speaker; twice for two speakers"
    )
    parser.add_argument("--prompt", help="text prompt; default: the config's")
    parser.add_argument(
        "--config", default="tiny", help="preset (tiny, multitalk-480, ...) or YAML file"
    )
    add_override_argument(
        parser, "config override, e.g. -p generation.sampling_steps=8 (repeatable)"
    )
    parser.add_argument("--frame-num", help="frames per clip (4n+1) or 'auto'")
    parser.add_argument("--seed", type=int, help="noise seed")
    parser.add_argument("--out", required=True, help="output .mp4")
    parser.add_argument("--trace", metavar="DIR", help="record the trace into DIR")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the DiT blocks (CUDA)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--lora", action="append", default=[], metavar="PATH:SCALE",
        help="LoRA file merged into the DiT with this scale, e.g. lightx2v.safetensors:1.0 "
        "(repeatable, merged in order; replaces the config's model.loras)",
    )  # fmt: skip
    parser.add_argument(
        "--lora-allow-unmatched", action="store_true",
        help="merge the matching part of a LoRA whose modules match the DiT only partly",
    )  # fmt: skip
    parser.add_argument(
        "--from-official", metavar="ARGS",
        help="the generate_multitalk.py arguments as one quoted string: the config is translated "
             "from them (mtlib config from-official; replaces --config)",
    )  # fmt: skip


def _cli_overrides(args: argparse.Namespace) -> list[str] | dict:
    over: dict[str, Any] = cli_overrides(args.overrides)  # validates key=value syntax
    if args.image:
        over["inputs.image"] = args.image
    if args.audio:
        over["inputs.audio"] = list(args.audio)
    if args.prompt is not None:
        over["inputs.prompt"] = args.prompt
    if args.frame_num is not None:
        fn = args.frame_num
        over["generation.frame_num"] = fn if fn == "auto" else _int(fn, "--frame-num")
    if args.seed is not None:
        over["generation.seed"] = args.seed
    if getattr(args, "lora", None):
        from mtlib.weights.lora import parse_lora_arg

        specs = [parse_lora_arg(text) for text in args.lora]
        over["model.loras"] = [
            {"path": sp.path, "scale": sp.scale, "allow_unmatched": args.lora_allow_unmatched}
            for sp in specs
        ]
    return over


def _int(s: str, what: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise ConfigError(f"{what} {s!r}: expected an integer (4n+1, e.g. 81) or 'auto'.") from None


def run_generate(args: argparse.Namespace) -> int:
    """`mtlib generate`: 0 and the summary on success; 2 (nothing written) when the plan,
    an input, an output or the config is refused (also: the mp4 could not be written after
    the compute; the frames are then kept for `mtlib finish`); 1 when the checkpoints are
    missing or damaged, or NaN / inf appear during the run."""
    from mtlib.finite import NonFiniteError
    from mtlib.weights import WeightsError

    # under torchrun every rank gets every agreed error: rank 0 alone prints it
    err = sys.stderr if os.environ.get("RANK", "0") == "0" else open(os.devnull, "w")  # noqa: SIM115
    try:
        base = args.config
        if getattr(args, "from_official", None):
            from mtlib.reference.command import from_official

            base = from_official(args.from_official).config
        cfg = load_config(base, _cli_overrides(args))
        result = generate_video(
            cfg, args.out, trace_dir=args.trace, progress=not args.no_progress, compile=args.compile
        )
    except PlanError as e:
        print(f"mtlib generate: {e}", file=err)
        return 2
    except (InputError, ConfigError) as e:
        print(f"mtlib generate: {e}", file=err)
        return 2
    except WeightsError as e:  # missing / damaged checkpoints: the message names the fix
        print(f"mtlib generate: {e}", file=err)
        return 1
    except NonFiniteError as e:  # NaN / inf in a checkpoint, a latent or the frames
        print(f"mtlib generate: {e}", file=err)
        return 1
    if result.rank != 0:  # torchrun: rank 0 reports for the run
        return 0
    print(summary(result))
    if result.trace_dir is not None:
        print(f"trace: {result.trace_dir}")
    return 0
