"""What two runs were told to do and where they ran, side by side: `mtlib compare` prints
the differences BEFORE the tensors (a different seed, steps, dtype, GPU or attention
backend explains a divergence before any tensor is looked at).

Every trace kind is brought to one vocabulary (`run_settings(meta)`):

    settings     seed, size, mode, frame_num, motion_frame, sampling_steps, shift,
                 text_guide_scale, audio_guide_scale, color_correction_strength, face_scale,
                 use_apg, apg_momentum, apg_norm_threshold, teacache, teacache_thresh,
                 dit_dtype, device, noise, loras, offload, quant
    environment  python, torch, cuda, gpu, tf32, attention, official (the checkout's version)

from a reference trace (meta "official_runs" + "reference", written by
mtlib.reference.tracing), an mtlib run trace (meta "config" + "environment") or a golden
case (params.generate_kwargs). Keys one side does not know are left out of the comparison.
"""

from __future__ import annotations

from typing import Any

SETTINGS = (
    "seed", "size", "mode", "frame_num", "motion_frame", "sampling_steps", "shift",
    "text_guide_scale", "audio_guide_scale", "color_correction_strength", "face_scale",
    "use_apg", "apg_momentum", "apg_norm_threshold", "teacache", "teacache_thresh",
    "dit_dtype", "device", "noise", "loras", "offload", "quant",
)  # fmt: skip
ENVIRONMENT = ("python", "torch", "cuda", "gpu", "tf32", "attention", "official")
_PRECISION_DTYPE = {"fp32": "float32", "reference": "bfloat16", "fp8": "float8_e4m3fn"}


def _tf32(env: dict, on_gpu: bool) -> str | None:
    """Where TF32 may replace float32 math on a GPU: "matmul on/off, cudnn on/off", or "off" when
    NVIDIA_TF32_OVERRIDE=0 turns it off in the libraries. None on a CPU or when not recorded
    (older traces): not compared."""
    if not on_gpu or env.get("tf32_matmul") is None or env.get("tf32_cudnn") is None:
        return None
    if env.get("nvidia_tf32_override") == "0":
        return "off (NVIDIA_TF32_OVERRIDE=0)"
    onoff = {True: "on", False: "off"}
    return f"matmul {onoff[bool(env['tf32_matmul'])]}, cudnn {onoff[bool(env['tf32_cudnn'])]}"


def _official(meta: dict) -> dict[str, Any]:
    run = (meta.get("official_runs") or [{}])[0]
    g, flags, pipe = run.get("generate", {}), run.get("flags", {}), run.get("pipeline", {})
    frame_num, cap = g.get("frame_num"), g.get("max_frames_num")
    device = pipe.get("device")
    out = {
        "seed": g.get("seed"), "size": g.get("size_buckget"), "frame_num": frame_num,
        "mode": None if cap is None or frame_num is None else ("clip" if cap <= frame_num else "streaming"),
        "motion_frame": g.get("motion_frame"), "sampling_steps": g.get("sampling_steps"),
        "shift": g.get("shift"), "text_guide_scale": g.get("text_guide_scale"),
        "audio_guide_scale": g.get("audio_guide_scale"),
        "color_correction_strength": g.get("color_correction_strength"),
        "face_scale": g.get("face_scale"), "use_apg": flags.get("use_apg"),
        "apg_momentum": flags.get("apg_momentum"), "apg_norm_threshold": flags.get("apg_norm_threshold"),
        "teacache": flags.get("use_teacache"), "teacache_thresh": flags.get("teacache_thresh"),
        "dit_dtype": pipe.get("dit_dtype"), "device": device,
        "noise": None if device is None else ("cuda" if str(device).startswith("cuda") else "cpu"),
        # the reference zips files and scales (the shorter list wins)
        "loras": [{"path": p, "scale": s}
                  for p, s in zip(flags.get("lora_dir") or [], flags.get("lora_scale") or [], strict=False)],
        "offload": flags.get("num_persistent_param_in_dit"), "quant": flags.get("quant"),
    }  # fmt: skip
    if not out["use_apg"]:  # APG parameters only matter with APG
        out["apg_momentum"] = out["apg_norm_threshold"] = None
    if not out["teacache"]:
        out["teacache_thresh"] = None
    ref = meta.get("reference", {})
    gpu = ref.get("gpu") or {}
    att = ref.get("attention") or {}
    official = ref.get("official") or {}
    env = {
        "python": ref.get("python"), "torch": (ref.get("packages") or {}).get("torch"),
        "cuda": ref.get("cuda"), "gpu": gpu.get("name") if gpu else "cpu",
        "tf32": _tf32(ref, on_gpu=bool(gpu) and str(device or "cuda").startswith("cuda")),
        "attention": att.get("flash_attention_fn"),
        "official": None if not official else (
            "c1ad840" if official.get("matches_golden_commit") else official.get("version")),
    }  # fmt: skip
    return {"settings": out, "environment": env}


def _mtlib(meta: dict) -> dict[str, Any]:
    cfg = meta.get("config") or {}
    g, m = cfg.get("generation", {}), cfg.get("model", {})
    size = m.get("size")
    shift = g.get("shift")
    if shift == "auto" and size:
        from mtlib.config import auto_shift

        shift = auto_shift(size)
    out = {
        k: g.get(k)
        for k in (
            "seed",
            "mode",
            "frame_num",
            "motion_frame",
            "sampling_steps",
            "text_guide_scale",
            "audio_guide_scale",
            "color_correction_strength",
            "face_scale",
            "use_apg",
            "apg_momentum",
            "apg_norm_threshold",
            "teacache",
            "teacache_thresh",
            "noise",
        )
    }
    if meta.get("frames") is not None and g.get("frame_num") == "auto":
        out["frame_num"] = (meta.get("plan") or {}).get("frame_num")
    device = m.get("device")
    precision = m.get("precision")
    out.update(
        size=size,
        shift=shift,
        device=device,
        loras=m.get("loras"),
        dit_dtype="float32" if device == "cpu" else _PRECISION_DTYPE.get(precision, precision),
        offload=(m.get("offload") or {}).get("resident_params")
        if isinstance(m.get("offload"), dict)
        else None,
        quant=(m.get("weights") or {}).get("quant"),
    )
    if not out["use_apg"]:
        out["apg_momentum"] = out["apg_norm_threshold"] = None
    if not out["teacache"]:
        out["teacache_thresh"] = None
    env = meta.get("environment") or {}
    dev = env.get("device")
    environment = {
        "python": env.get("python"),
        "torch": env.get("torch"),
        "cuda": env.get("cuda"),
        "gpu": dev.split(": ", 1)[1] if isinstance(dev, str) and ": " in dev else dev,
        "tf32": _tf32(env, on_gpu=str(device or "").startswith("cuda")),
        "attention": m.get("attention"),
        "official": None,
    }
    return {"settings": out, "environment": environment}


def _golden(meta: dict) -> dict[str, Any]:
    kw = (meta.get("params") or {}).get("generate_kwargs") or {}
    out = {
        k: kw.get(k)
        for k in (
            "seed",
            "mode",
            "frame_num",
            "motion_frame",
            "sampling_steps",
            "shift",
            "text_guide_scale",
            "audio_guide_scale",
            "color_correction_strength",
            "face_scale",
            "use_apg",
        )
    }
    out["size"] = kw.get("size_buckget")
    if out["use_apg"]:
        out.update(
            apg_momentum=kw.get("apg_momentum"), apg_norm_threshold=kw.get("apg_norm_threshold")
        )
    out.update(dit_dtype="float32", device="cpu", noise="cpu")
    return {"settings": out, "environment": {"official": "c1ad840"}}


def run_settings(meta: dict) -> dict[str, dict[str, Any]]:
    """{"settings": {...}, "environment": {...}} of a trace's meta (see module docstring)."""
    if meta.get("official_runs"):
        return _official(meta)
    if meta.get("config"):
        return _mtlib(meta)
    if (meta.get("params") or {}).get("generate_kwargs"):
        return _golden(meta)
    return {"settings": {}, "environment": {}}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str) and a.startswith("cuda") and b.startswith("cuda"):
        return a.removesuffix(":0") == b.removesuffix(":0")  # cuda is cuda:0
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def settings_diff(meta_a: dict, meta_b: dict) -> list[tuple[str, str, Any, Any]]:
    """[(section, key, value in A, value in B)] for every key both sides know and disagree
    on (None on one side = unknown there: not compared)."""
    a, b = run_settings(meta_a), run_settings(meta_b)
    out = []
    for section, keys in (("settings", SETTINGS), ("environment", ENVIRONMENT)):
        for k in keys:
            va, vb = a[section].get(k), b[section].get(k)
            if va is None or vb is None or _same(va, vb):
                continue
            if k == "loras" and not va and not vb:
                continue
            out.append((section, k, va, vb))
    return out


def format_settings_diff(meta_a: dict, meta_b: dict) -> str:
    """The block `mtlib compare` prints first ('' when there is nothing to say)."""
    diff = settings_diff(meta_a, meta_b)
    if not diff:
        a, b = run_settings(meta_a), run_settings(meta_b)
        if a["settings"] and b["settings"]:
            return "settings and environment: no difference in what both traces record\n"
        return ""
    lines = []
    for section in ("settings", "environment"):
        rows = [(k, va, vb) for s, k, va, vb in diff if s == section]
        if rows:
            lines.append(f"{section} that differ (A | B):")
            lines += [f"  {k:<26} {va!s} | {vb!s}" for k, va, vb in rows]
    return "\n".join(lines) + "\n"
