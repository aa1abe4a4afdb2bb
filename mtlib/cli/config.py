"""`mtlib config from-official -- <generate_multitalk.py arguments>`: the official command
line as an mtlib run config (YAML), with one line per official flag saying where it went
(mtlib.reference.command; table in docs/colab-bridge.md).

    mtlib config from-official --out run.yaml -- python3 generate_multitalk.py \\
        --ckpt_dir weights/Wan2.1-I2V-14B-480P --wav2vec_dir weights/chinese-wav2vec2-base \\
        --input_json input.json --sample_steps 20 --mode streaming --use_teacache --save_file out
    mtlib generate --config run.yaml --out out.mp4
"""

from __future__ import annotations

import argparse
import sys

import yaml

from mtlib.io import InputError, atomic_write


def add_arguments_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["from-official"], help="what to make the config from")
    parser.add_argument("--out", metavar="YAML", help="write the config here (default: print it)")
    parser.add_argument(
        "--base-dir",
        default=".",
        help="the official script's working directory "
        "(relative paths of the command and of input.json start there)",
    )
    parser.add_argument("--quiet", action="store_true", help="no flag-by-flag notes on stderr")
    parser.add_argument(
        "official", nargs=argparse.REMAINDER, help="-- then the generate_multitalk.py arguments"
    )


def run_config(args: argparse.Namespace) -> int:
    """0: config written / printed; 2: an official flag or input is refused (the message says
    which and why)."""
    from mtlib.reference.command import from_official

    argv = list(args.official)
    # options given after the action land in the remainder: take them back up to "--"
    while argv and argv[0] != "--" and argv[0] in ("--out", "--base-dir", "--quiet"):
        opt = argv.pop(0)
        if opt == "--quiet":
            args.quiet = True
        elif not argv:
            print(f"mtlib config: {opt} needs a value.", file=sys.stderr)
            return 2
        else:
            setattr(args, opt[2:].replace("-", "_"), argv.pop(0))
    if argv and argv[0] == "--":
        argv = argv[1:]
    try:
        tr = from_official(argv, args.base_dir)
    except InputError as e:
        print(f"mtlib config from-official: {e}", file=sys.stderr)
        return 2
    text = "# mtlib run config translated from generate_multitalk.py\n"
    text += "# " + " ".join(argv) + "\n"
    if tr.out:
        text += f"# output video of the official command: {tr.out}\n"
    text += yaml.safe_dump(tr.config, sort_keys=False)
    if not args.quiet:
        print(tr.table(), file=sys.stderr)
    unknown = _unknown_keys(tr.config)
    if unknown:
        print(
            f"note: this mtlib build does not know {', '.join(unknown)} yet; "
            "`mtlib generate` refuses the config until it does.",
            file=sys.stderr,
        )
    if args.out:
        atomic_write(args.out, text)
        print(f"config: {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def _unknown_keys(cfg: dict) -> list[str]:
    """Dotted keys of `cfg` that this build's RunConfig does not have."""
    import dataclasses

    from mtlib.config import RunConfig

    out: list[str] = []

    def walk(node: dict, cls: type, prefix: str) -> None:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for k, v in node.items():
            if k not in fields:
                out.append(prefix + k)
                continue
            sub = (
                fields[k].default_factory
                if fields[k].default_factory is not dataclasses.MISSING
                else None
            )
            if isinstance(v, dict) and sub is not None and dataclasses.is_dataclass(sub):
                walk(v, sub, prefix + k + ".")

    walk(cfg, RunConfig, "")
    return out
