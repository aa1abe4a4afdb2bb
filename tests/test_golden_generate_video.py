"""The user's path against the reference: `generate_video` on a golden e2e case's FILES.

The case's source image (PNG) and speech (44.1 kHz WAV, one per speaker, combined 'para' /
'add' as its audio case says) go through the whole of mtlib as a user run does: plan ->
preprocessing (resampling, loudness, wav2vec2 on the golden tiny weights, bucket crop, person
masks) -> T5 -> generate() with the case's random draws injected -> the video trimmed to the
real audio -> an mp4 written. Everything the run takes comes from the case's JSON
(generate_kwargs, input_refs, lora); the video must match the golden e2e.video within E2E_TOL.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from mtlib.buckets import bucket_table, table_from_json
from mtlib.config import load_config
from mtlib.media.video import read_mp4
from mtlib.models.wav2vec import Wav2VecGeometry, load_wav2vec
from mtlib.run.generation import generate_video
from mtlib.run.load import LoadedModels
from mtlib.run.noise import InjectedNoise
from tests.golden import (
    E2E_TOL,
    assert_close,
    case_lora,
    case_settings,
    dit_passes,
    fail_case,
    generate_kwargs,
    get_case,
    golden_cases,
    image_case_of,
    size_of,
)
from tests.test_golden_e2e import dit_for_case, golden_models  # noqa: F401


def case_input_files(golden, case) -> tuple[str, list[str], str]:
    """(image file, speech files, audio_type) of an e2e case, from its input_refs."""
    refs = case.params["input_refs"]
    image_case = image_case_of(golden, case)
    image = image_case.file(image_case.params["source"]["file"])
    audio_type, speakers = "para", []
    for name in refs["audio_cases"]:
        audio = golden.case(name)
        if "inputs" in audio.params:  # a two-speaker case: its persons' own cases
            audio_type = audio.params["inputs"]["audio_type"]
            speakers += [golden.case(audio.params["inputs"][k]) for k in ("person1", "person2")]
        else:
            speakers.append(audio)
    wavs = []
    for sp in speakers:
        src = sp.params.get("source_wav")
        if src is None or not sp.file(src["file"]).exists():
            fail_case(case, f"audio case {sp.name} has no source WAV file")
        wavs.append(str(sp.file(src["file"])))
    if not image.exists():
        fail_case(case, f"image case {image_case.name} has no source image file {image}")
    return str(image), wavs, audio_type


def case_config(golden, case, tmp_path):
    """The run config of an e2e case: every value from its generate_kwargs / input_refs / lora."""
    kw = generate_kwargs(case)
    s = case_settings(case)
    size = size_of(case)
    golden_table = table_from_json(golden.tiny_configs["buckets_tiny"][size])
    if bucket_table(size, "tiny") != golden_table:
        fail_case(case, f"mtlib's tiny {size} bucket table differs from the set's buckets_tiny")
    image, wavs, audio_type = case_input_files(golden, case)
    over = {
        "model.size": size, "model.buckets": "tiny", "model.device": "cpu",
        "model.precision": "fp32",
        "inputs.image": image, "inputs.audio": wavs, "inputs.audio_type": audio_type,
        "inputs.bbox": case.params["input_refs"]["bbox"],
        "inputs.prompt": case.params["input_data"]["prompt"],
        "inputs.negative_prompt": kw["n_prompt"] or None,
        "generation.mode": s.mode, "generation.frame_num": s.frame_num,
        "generation.short_audio": "error", "generation.motion_frame": s.motion_frame,
        "generation.max_frames_num": s.max_frames_num, "generation.sampling_steps": s.sampling_steps,
        "generation.shift": s.shift, "generation.text_guide_scale": s.text_guide_scale,
        "generation.audio_guide_scale": s.audio_guide_scale,
        "generation.color_correction_strength": s.color_correction_strength,
        "generation.use_apg": s.use_apg, "generation.apg_momentum": s.apg_momentum,
        "generation.apg_norm_threshold": s.apg_norm_threshold, "generation.seed": s.seed,
        "generation.face_scale": kw["face_scale"], "trace.level": "off",
    }  # fmt: skip
    lora = case_lora(case)
    if lora is not None:
        over["model.loras"] = [{"path": str(lora["path"]), "scale": float(lora["scale"])}]
    return load_config("tiny", over)


@pytest.mark.golden
@pytest.mark.slow
@pytest.mark.parametrize("case_name", golden_cases("e2e"), ids=str)
def test_golden_generate_video_from_the_case_files(
    golden,
    golden_models,  # noqa: F811
    tmp_path,
    monkeypatch,
    case_name,  # noqa: F811
):
    case = get_case(golden, case_name)
    dit_passes(case)
    monkeypatch.setenv("MTLIB_CACHE", str(tmp_path / "cache"))  # no embedding from another run
    cfg = case_config(golden, case, tmp_path)
    w2v = golden.tiny_configs["wav2vec2"]["tiny"]
    audio_encoder = load_wav2vec(
        golden.weights / "wav2vec2",
        expected=Wav2VecGeometry(w2v["num_hidden_layers"], w2v["hidden_size"]),
    )
    lora_checks = []
    if cfg.model.loras:
        from mtlib.weights.lora import check_loras

        lora_checks = check_loras(cfg.model.loras, {
            k: tuple(v.shape) for k, v in golden_models["dit"].state_dict().items()
        })  # fmt: skip
    models = LoadedModels(
        dit=dit_for_case(golden_models, case), vae=golden_models["vae"],
        clip=golden_models["clip"], text_encoder=golden_models["text"],
        audio_encoder=audio_encoder, loras=lora_checks,
    )  # fmt: skip
    noise = InjectedNoise({k: v for k, v in case.tensors.items() if ".rand." in k})
    out = generate_video(
        cfg, tmp_path / "video.mp4", progress=False, models=models, noise=noise,
        trace_dir=None,
    )  # fmt: skip

    golden_video = case["e2e.video"]  # [3, F, H, W]
    assert out.path.exists() and out.path.stat().st_size > 0
    assert (out.height, out.width) == tuple(golden_video.shape[2:])
    assert out.frames == out.plan.output_frames <= golden_video.shape[1]
    assert out.video.dtype == torch.float32
    assert_close(out.video, golden_video[:, : out.frames], "e2e.video (trimmed)", E2E_TOL)
    # the run record: the merged LoRA files by content
    meta = read_mp4(out.path)[2]["metadata"]
    expected = []
    lora = case_lora(case)
    if lora is not None:
        digest = hashlib.sha256(lora["path"].read_bytes()).hexdigest()
        expected = [(str(lora["path"]), float(lora["scale"]), digest, lora["changed_params"])]
    assert [
        (r["path"], r["scale"], r["sha256"], r["params_touched"]) for r in meta.get("loras", [])
    ] == expected
