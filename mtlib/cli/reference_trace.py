"""`python -m mtlib.reference --trace DIR [--level stats|full] [--keep GLOB] -- SCRIPT ARGS`:
the Colab's own command, prefixed. SCRIPT (generate_multitalk.py of an official checkout)
runs in this process, unchanged, as `__main__` with sys.argv = [SCRIPT, *ARGS], under
mtlib.reference.tracing; then the trace is packed into DIR.tar.gz for download.

    python -m mtlib.reference --trace colab_trace -- generate_multitalk.py \\
        --ckpt_dir weights/Wan2.1-I2V-14B-480P --wav2vec_dir weights/chinese-wav2vec2-base \\
        --input_json input.json --sample_steps 20 --mode streaming --use_teacache --save_file output
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mtlib.reference",
        description="run the official generate_multitalk.py in-process under the mtlib tracer",
    )
    parser.add_argument("--trace", required=True, metavar="DIR", help="trace directory to write")
    parser.add_argument(
        "--level",
        choices=["stats", "full"],
        default="stats",
        help="stats: statistics + hash of every point (draws and conditioning in "
        "full); full: every tensor",
    )
    parser.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="GLOB",
        help="also store these points in full (repeatable), e.g. 'e2e.clip0.step0.*'",
    )
    parser.add_argument(
        "--no-draws",
        action="store_true",
        help="leave the random draws out (statistics only; 8.4 MB per 81-frame 480p clip): "
        "replay then needs generation.noise=cuda on the same GPU type",
    )
    parser.add_argument("--no-archive", action="store_true", help="do not write DIR.tar.gz")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing trace in DIR")
    parser.add_argument(
        "script", nargs=argparse.REMAINDER, help="-- generate_multitalk.py and its arguments"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    from mtlib.io import InputError
    from mtlib.reference.archive import pack
    from mtlib.reference.tracer import tracing

    args = build_parser().parse_args(argv)
    cmd = list(args.script)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if cmd and Path(cmd[0]).name.startswith("python"):
        cmd = cmd[1:]  # "python3 generate_multitalk.py ..." pasted whole
    if not cmd or not cmd[0].endswith(".py"):
        print(
            "python -m mtlib.reference: give the official script after --, e.g. "
            "-- generate_multitalk.py --input_json input.json ...",
            file=sys.stderr,
        )
        return 2
    script = Path(cmd[0]).resolve()
    if not script.is_file():
        print(
            f"python -m mtlib.reference: {cmd[0]!r}: no such file. Fix: run from the root of the "
            "MultiTalk checkout, or give the script's path.",
            file=sys.stderr,
        )
        return 2
    # what `python SCRIPT` would do: the script's folder first on sys.path (import wan, src)
    if str(script.parent) not in sys.path:
        sys.path.insert(0, str(script.parent))
    os.environ.setdefault("MTLIB_OFFICIAL_DIR", str(script.parent))
    saved_argv = sys.argv
    sys.argv = [str(script), *cmd[1:]]
    code = 0
    try:
        with tracing(
            args.trace,
            level=args.level,
            keep=args.keep,
            overwrite=args.overwrite,
            draws=not args.no_draws,
            script=str(script),
            meta={"command": ["python", cmd[0], *cmd[1:]]},
        ):
            try:
                runpy.run_path(str(script), run_name="__main__")
            except SystemExit as e:  # the script's own exit (argparse errors, asserts)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if code:
                    raise
    except InputError as e:
        print(f"python -m mtlib.reference: {e}", file=sys.stderr)
        return 2
    except SystemExit:
        print(
            f"python -m mtlib.reference: the official script exited with {code}; the trace "
            f"so far is in {args.trace} (status failed).",
            file=sys.stderr,
        )
        return code
    finally:
        sys.argv = saved_argv
    from mtlib.reference.sizes import format_sizes, part_sizes

    print(f"trace: {args.trace}", file=sys.stderr)
    archive = None if args.no_archive else pack(args.trace)
    size = archive.stat().st_size if archive is not None else None
    print(format_sizes(part_sizes(args.trace), size), file=sys.stderr)
    if archive is not None:
        print(f"archive: {archive} ({size / 1e6:.1f} MB)", file=sys.stderr)
    return code
