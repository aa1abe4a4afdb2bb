"""`mtlib finish RESCUE --out V.mp4`: write the mp4 of a run whose computed frames were kept.

When `mtlib generate` has computed every frame but cannot write the video (disk full, the
folder removed, an upload refused), it keeps the frames and soundtrack in
`<name>.rescue.safetensors` (mtlib.plan.guards.save_rescue) and prints this command.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments_finish(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rescue", help="the .rescue.safetensors file generate kept")
    parser.add_argument("--out", help="output .mp4 (path or URL); default: the run's --out")


def run_finish(args: argparse.Namespace) -> int:
    """0: written (the rescue file is removed); 2: refused or unreadable (nothing written)."""
    from pathlib import Path

    from safetensors import safe_open

    from mtlib.frames import SAMPLE_RATE, VIDEO_FPS
    from mtlib.io import InputError, open_output
    from mtlib.media.video import write_mp4
    from mtlib.plan import guards

    try:
        with safe_open(args.rescue, framework="np") as f:
            meta = f.metadata() or {}
            frames, sound = f.get_tensor("frames"), f.get_tensor("soundtrack")
    except Exception as e:
        print(f"mtlib finish: {args.rescue!r}: not a rescue file ({type(e).__name__}: {e}).",
              file=sys.stderr)  # fmt: skip
        return 2
    out = args.out or meta.get("out")
    try:
        n, h, w, _ = frames.shape
        guards.check_output_file(out, need_bytes=guards.video_bytes_estimate(n, h, w))
        with open_output(out) as tmp:
            write_mp4(frames, tmp, fps=int(meta.get("fps", VIDEO_FPS)), audio=(sound, SAMPLE_RATE),
                      metadata=json.loads(meta.get("meta", "{}")))  # fmt: skip
    except InputError as e:
        print(f"mtlib finish: {e}", file=sys.stderr)
        return 2
    Path(args.rescue).unlink()
    print(out)
    return 0
