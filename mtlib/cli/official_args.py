"""The command line of the official generate_multitalk.py (commit c1ad840), re-declared so
that `mtlib config from-official` reads exactly what the official script would: the same
flags, types, `nargs` and defaults (its `_parse_args`; `_validate_args` fills sample_steps
and sample_shift). Only the parsing lives here (argparse belongs to mtlib.cli); the meaning
of each flag is mtlib.reference.command's table.
"""

from __future__ import annotations

import argparse
from typing import Any

from mtlib.io import InputError

# (flag, argparse keywords); defaults as in generate_multitalk.py
OFFICIAL_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--task", dict(type=str, default="multitalk-14B")),
    ("--size", dict(type=str, default="multitalk-480")),
    ("--frame_num", dict(type=int, default=81)),
    ("--ckpt_dir", dict(type=str, default=None)),
    ("--quant_dir", dict(type=str, default=None)),
    ("--wav2vec_dir", dict(type=str, default=None)),
    ("--lora_dir", dict(type=str, nargs="+", default=None)),
    ("--lora_scale", dict(type=float, nargs="+", default=[1.2])),
    ("--offload_model", dict(type=str, default=None)),  # str2bool in the official script
    ("--ulysses_size", dict(type=int, default=1)),
    ("--ring_size", dict(type=int, default=1)),
    ("--t5_fsdp", dict(action="store_true", default=False)),
    ("--t5_cpu", dict(action="store_true", default=False)),
    ("--dit_fsdp", dict(action="store_true", default=False)),
    ("--save_file", dict(type=str, default=None)),
    ("--audio_save_dir", dict(type=str, default="save_audio")),
    ("--base_seed", dict(type=int, default=42)),
    ("--input_json", dict(type=str, default="examples.json")),
    ("--motion_frame", dict(type=int, default=25)),
    ("--mode", dict(type=str, default="clip", choices=["clip", "streaming"])),
    ("--sample_steps", dict(type=int, default=None)),
    ("--sample_shift", dict(type=float, default=None)),
    ("--sample_text_guide_scale", dict(type=float, default=5.0)),
    ("--sample_audio_guide_scale", dict(type=float, default=4.0)),
    ("--num_persistent_param_in_dit", dict(type=int, default=None)),
    ("--audio_mode", dict(type=str, default="localfile", choices=["localfile", "tts"])),
    ("--use_teacache", dict(action="store_true", default=False)),
    ("--teacache_thresh", dict(type=float, default=0.2)),
    ("--use_apg", dict(action="store_true", default=False)),
    ("--apg_momentum", dict(type=float, default=-0.75)),
    ("--apg_norm_threshold", dict(type=float, default=55)),
    ("--color_correction_strength", dict(type=float, default=1.0)),
    ("--quant", dict(type=str, default=None)),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one InputError instead of SystemExit
        raise InputError(f"generate_multitalk.py arguments: {message}.")


def official_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="generate_multitalk.py", add_help=False, allow_abbrev=False)
    for flag, kw in OFFICIAL_FLAGS:
        parser.add_argument(flag, **kw)
    return parser


def parse_official_args(argv: list[str]) -> dict[str, Any]:
    """The official script's args namespace as a dict (after its _validate_args defaults).
    A leading script path (generate_multitalk.py / python3) is skipped; an unknown flag is
    refused by name."""
    argv = list(argv)
    while argv and not argv[0].startswith("-"):
        if argv[0].endswith(".py") or argv[0].split("/")[-1].startswith("python"):
            argv = argv[1:]
        else:
            raise InputError(
                f"generate_multitalk.py arguments: unexpected {argv[0]!r} before the flags."
            )
    args, unknown = official_parser().parse_known_args(argv)
    if unknown:
        raise InputError(
            f"generate_multitalk.py arguments: {unknown[0]!r} is not a flag of the official "
            "generate_multitalk.py (commit c1ad840). Fix: remove it, or check its spelling."
        )
    values = vars(args)
    if values["offload_model"] is not None:
        v = values["offload_model"].lower()
        if v not in ("yes", "true", "t", "y", "1", "no", "false", "f", "n", "0"):
            raise InputError(
                f"--offload_model {values['offload_model']!r}: expected a boolean (true / false)."
            )
        values["offload_model"] = v in ("yes", "true", "t", "y", "1")
    if values["sample_steps"] is None:  # _validate_args
        values["sample_steps"] = 40
    return values
