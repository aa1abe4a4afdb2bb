"""The official command line as an mtlib run: `mtlib config from-official ARGS`.

`from_official(argv)` reads the arguments of generate_multitalk.py (parsed like the official
script: mtlib.cli.official_args) and its --input_json, and returns a `Translation`: the mtlib
run config as a plain dict, the output path, and one note per official flag saying where it
went. Every flag is MAPPED (to a config key), ACCEPTED (no effect on the result in mtlib,
said why) or REFUSED (InputError naming the flag and the reason): nothing is dropped
silently. The table is docs/colab-bridge.md's.

The config asks for the reference's numerics: model.precision "reference", the reference's
CUDA noise (generation.noise "cuda": same seed + GPU type = the Colab's draws), and
generation.short_audio "error" (the reference refuses audio not longer than frame_num).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlib.io import InputError

MAPPED, ACCEPTED = "mapped", "accepted"


@dataclass
class Translation:
    config: dict[str, Any]  # mtlib run config (plain dict, dotted sections)
    out: str | None  # the video path --save_file names (+ .mp4), None: the official default name
    notes: list[tuple[str, str, str]] = field(default_factory=list)  # (flag, status, where / why)
    args: dict[str, Any] = field(default_factory=dict)  # the parsed official args

    def table(self) -> str:
        w = max(len(f) for f, _, _ in self.notes)
        return "\n".join(f"{f:<{w}}  {s:<8}  {n}" for f, s, n in self.notes)


def _set(cfg: dict, dotted: str, value: Any) -> None:
    node = cfg
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _path(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p))


def read_input_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(
            f"--input_json {str(path)!r}: cannot be read ({e.strerror}). Fix: give the "
            "path of the input.json the official command uses."
        ) from None
    except json.JSONDecodeError as e:
        raise InputError(f"--input_json {str(path)!r}: not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise InputError(f"--input_json {str(path)!r}: the top level must be an object.")
    return data


def translate_input(data: dict[str, Any], base: Path, where: str) -> tuple[dict[str, Any], list]:
    """input.json (prompt, cond_image, cond_audio person1/person2, audio_type, bbox) ->
    the `inputs` section and its notes."""
    notes = []
    known = {"prompt", "cond_image", "cond_audio", "audio_type", "bbox", "tts_audio", "video_audio"}
    for key in data:
        if key not in known:
            raise InputError(
                f"{where}: key {key!r} is not read by the official code (it reads "
                f"{', '.join(sorted(known - {'video_audio'}))}). Fix: remove it."
            )
    for key in ("prompt", "cond_image", "cond_audio"):
        if key not in data:
            raise InputError(
                f"{where}: no {key!r}; the official generate() needs prompt, "
                "cond_image and cond_audio {person1: ...}."
            )
    audio = data["cond_audio"]
    if not isinstance(audio, dict) or list(audio) not in (["person1"], ["person1", "person2"]):
        raise InputError(
            f'{where}: cond_audio must be {{"person1": wav}} or {{"person1": wav, '
            f'"person2": wav}}, got {audio!r}.'
        )
    if "None" in audio.values():
        raise InputError(
            f"{where}: cond_audio 'None' (one silent speaker) is not supported by "
            "mtlib. Fix: give a real speech file for both persons."
        )
    inputs: dict[str, Any] = {
        "prompt": data["prompt"],
        "image": _path(data["cond_image"], base),
        "audio": [_path(audio[k], base) for k in ("person1", "person2") if k in audio],
    }
    notes.append(("input.json prompt", MAPPED, "inputs.prompt"))
    notes.append(("input.json cond_image", MAPPED, "inputs.image"))
    notes.append(("input.json cond_audio", MAPPED, "inputs.audio (person1, person2 in order)"))
    if "audio_type" in data:
        if data["audio_type"] not in ("para", "add"):
            raise InputError(
                f"{where}: audio_type {data['audio_type']!r}: the official code knows "
                "'para' and 'add'."
            )
        inputs["audio_type"] = data["audio_type"]
        notes.append(("input.json audio_type", MAPPED, "inputs.audio_type"))
    if "bbox" in data:
        bbox = data["bbox"]
        if not isinstance(bbox, dict) or len(bbox) != len(audio):
            raise InputError(
                f"{where}: bbox must give one [x_min, y_min, x_max, y_max] per person "
                f"of cond_audio ({len(audio)}), got {bbox!r}."
            )
        # the reference iterates the dict's values in order; its x indexes rows
        inputs["bbox"] = [[int(v) for v in box] for box in bbox.values()]
        notes.append(("input.json bbox", MAPPED, "inputs.bbox (dict values in order; x = rows)"))
    if "tts_audio" in data:
        notes.append(("input.json tts_audio", ACCEPTED, "unused with --audio_mode localfile"))
    return inputs, notes


def translate(
    args: dict[str, Any], base_dir: str | Path = ".", input_data: dict | None = None
) -> Translation:
    """Parsed official args (+ the input.json content, else read from --input_json) ->
    Translation. Refusals raise InputError naming the flag."""
    base = Path(base_dir)
    cfg: dict[str, Any] = {
        "model": {
            "name": "multitalk-14b",
            "device": "cuda",
            "precision": "reference",
            "buckets": "official",
        },
        "generation": {"noise": "cuda", "short_audio": "error"},
    }
    notes: list[tuple[str, str, str]] = []

    def mapped(flag: str, key: str, value: Any, note: str = "") -> None:
        _set(cfg, key, value)
        notes.append((flag, MAPPED, key + (f" ({note})" if note else "")))

    def accepted(flag: str, why: str) -> None:
        notes.append((flag, ACCEPTED, why))

    def refuse(flag: str, why: str) -> None:
        raise InputError(f"{flag}: {why}")

    a = args
    if a["task"] != "multitalk-14B":
        refuse(
            f"--task {a['task']}",
            "generate_multitalk.py only runs 'multitalk-14B' (it asserts "
            "so); mtlib is MultiTalk only.",
        )
    mapped("--task", "model.name", "multitalk-14b")
    if a["size"] not in ("multitalk-480", "multitalk-720"):
        refuse(f"--size {a['size']}", "MultiTalk supports multitalk-480 and multitalk-720.")
    mapped("--size", "model.size", a["size"])
    mapped("--frame_num", "generation.frame_num", a["frame_num"])
    mapped(
        "--ckpt_dir",
        "model.weights.wan_dir",
        _path(a["ckpt_dir"], base),
        "the MultiTalk weights are linked into it by the official setup: mtlib reads them from there",
    )
    _set(cfg, "model.weights.multitalk_dir", _path(a["ckpt_dir"], base))
    mapped("--wav2vec_dir", "model.weights.wav2vec_dir", _path(a["wav2vec_dir"], base))
    quant = a["quant"]
    if quant is not None and quant != "int8":
        refuse(
            f"--quant {quant}",
            "mtlib reads the reference's int8 checkpoints only "
            "(model.weights.quant: int8); the official 'fp8' path has no published checkpoint.",
        )
    if quant == "int8":
        if a["lora_dir"]:
            refuse(
                "--lora_dir with --quant",
                "the reference then loads lora_dir[0] as a pre-merged, "
                "pre-quantised checkpoint (FusionX) and applies no LoRA; mtlib does not read "
                "those files. Fix: drop --quant (LoRA merged at load) or drop --lora_dir.",
            )
        mapped("--quant", "model.weights.quant", "int8")
        mapped("--quant_dir", "model.weights.quant_dir", _path(a["quant_dir"], base))
    else:
        mapped("--quant", "model.weights.quant", "none")
        if a["quant_dir"] is not None:
            accepted("--quant_dir", "ignored by the reference without --quant; ignored here too")
        else:
            accepted("--quant_dir", "not given")
    loras, scales = a["lora_dir"] or [], a["lora_scale"]
    if loras:
        if len(scales) != len(loras):
            refuse(
                "--lora_scale",
                f"{len(loras)} LoRA file(s) but {len(scales)} scale(s): the reference "
                f"zips them and silently applies only the first {min(len(loras), len(scales))}. "
                "Fix: give one --lora_scale per --lora_dir file.",
            )
        mapped(
            "--lora_dir/--lora_scale",
            "model.loras",
            [
                {"path": _path(p, base), "scale": float(s)}
                for p, s in zip(loras, scales, strict=True)
            ],
        )
    else:
        accepted("--lora_dir/--lora_scale", "no LoRA given (the scale default 1.2 applies to none)")
    accepted("--offload_model", "memory placement between stages only; the result is the same")
    par = a["ulysses_size"] * a["ring_size"]
    if par > 1:
        mapped("--ulysses_size/--ring_size", "parallel.gpus", par, "sequence parallel over GPUs")
    else:
        accepted("--ulysses_size/--ring_size", "1: one GPU")
    for flag in ("t5_fsdp", "dit_fsdp"):
        if a[flag]:
            refuse(
                f"--{flag}",
                "FSDP weight sharding is not implemented in mtlib (memory only). "
                "Fix: drop it; use model.offload or parallel.gpus for memory.",
            )
        accepted(f"--{flag}", "off")
    accepted(
        "--t5_cpu",
        "T5 on the CPU (bf16 there) in the reference: placement; mtlib runs T5 on "
        "model.device, so the text contexts may differ in the last bf16 bits"
        if a["t5_cpu"]
        else "off",
    )
    out = None if a["save_file"] is None else _path(a["save_file"] + ".mp4", base)
    accepted("--save_file", f"the output video: {out}" if out else "the official default file name")
    accepted("--audio_save_dir", "where the reference caches embeddings; mtlib caches its own")
    if a["base_seed"] < 0:
        refuse(
            f"--base_seed {a['base_seed']}",
            "a negative seed makes the reference draw a random "
            "one (printed in its log line 'Generation job args: ... base_seed=N'). Fix: pass that N.",
        )
    mapped("--base_seed", "generation.seed", a["base_seed"])
    mapped("--motion_frame", "generation.motion_frame", a["motion_frame"])
    mapped("--mode", "generation.mode", a["mode"])
    _set(cfg, "generation.max_frames_num", 1000)  # the reference: frame_num (clip) or 1000
    mapped("--sample_steps", "generation.sampling_steps", a["sample_steps"])
    mapped(
        "--sample_shift",
        "generation.shift",
        "auto" if a["sample_shift"] is None else a["sample_shift"],
        "auto = 7 (480) / 11 (720), the official defaults",
    )
    mapped("--sample_text_guide_scale", "generation.text_guide_scale", a["sample_text_guide_scale"])
    mapped(
        "--sample_audio_guide_scale", "generation.audio_guide_scale", a["sample_audio_guide_scale"]
    )
    if a["num_persistent_param_in_dit"] is not None:
        mapped(
            "--num_persistent_param_in_dit",
            "model.offload",
            {"mode": "blocks", "resident_params": a["num_persistent_param_in_dit"]},
        )
    else:
        mapped(
            "--num_persistent_param_in_dit",
            "model.offload",
            {"mode": "none", "resident_params": None},
        )
    if a["audio_mode"] == "tts":
        refuse(
            "--audio_mode tts",
            "the Kokoro text-to-speech front end is not part of mtlib. Fix: "
            "make the speech with the official TTS once and pass the wav files (localfile).",
        )
    accepted("--audio_mode", "localfile: speech files from input.json")
    mapped("--use_teacache", "generation.teacache", bool(a["use_teacache"]))
    mapped("--teacache_thresh", "generation.teacache_thresh", a["teacache_thresh"])
    mapped("--use_apg", "generation.use_apg", bool(a["use_apg"]))
    mapped("--apg_momentum", "generation.apg_momentum", a["apg_momentum"])
    mapped("--apg_norm_threshold", "generation.apg_norm_threshold", float(a["apg_norm_threshold"]))
    mapped(
        "--color_correction_strength",
        "generation.color_correction_strength",
        a["color_correction_strength"],
    )
    json_path = Path(_path(a["input_json"], base))
    data = input_data if input_data is not None else read_input_json(json_path)
    # the official script opens the input.json paths relative to its working directory
    inputs, input_notes = translate_input(data, base, f"--input_json {a['input_json']}")
    cfg["inputs"] = inputs
    notes.append(("--input_json", MAPPED, "inputs (see the input.json rows)"))
    notes += input_notes
    cfg["name"] = "from-official"
    return Translation(cfg, out, notes, dict(a))


def from_official(
    argv: list[str] | str, base_dir: str | Path = ".", input_data: dict | None = None
) -> Translation:
    """`generate_multitalk.py` arguments (a list, or one shell-quoted string) -> Translation."""
    import shlex

    from mtlib.cli.official_args import parse_official_args

    if isinstance(argv, str):
        argv = shlex.split(argv)
    return translate(parse_official_args(argv), base_dir, input_data)
