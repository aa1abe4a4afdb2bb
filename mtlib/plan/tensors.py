"""Every tensor of the run in the plan (names like the golden trace points, shapes, dtypes),
the clip schedule as `ClipPlan`s, and the DiT options line.
"""

from __future__ import annotations

from mtlib.frames import (
    clip_schedule,
    max_frames_of,
    streaming_clip_count,
)
from mtlib.plan.records import MAX_CLIPS, ClipPlan, PlanError, PlannedTensor, ShapePlan
from mtlib.spec import PRECISION, ModelSpec


def _schedule(
    p: ShapePlan, g, F: int, eff: list[int], lat_h: int, lat_w: int, m: ModelSpec
) -> None:
    """The clip schedule (mtlib.frames.clip_schedule, the engine's too) as ClipPlan records."""
    max_frames = max_frames_of(g.mode, F, g.max_frames_num)
    motion = g.motion_frame
    if max_frames > F:  # streaming: refuse schedules no machine would run (and loops that long)
        n_clips = streaming_clip_count(F, motion, max_frames, eff[0])
        if n_clips > MAX_CLIPS:
            horizon = min(max_frames, eff[0])
            raise PlanError(
                f"streaming would need about {n_clips} clips of {F} frames ({horizon} audio frames, "
                f"max_frames_num {max_frames}); mtlib plans at most {MAX_CLIPS}. Fix: lower "
                "generation.max_frames_num or split the audio."
            )
    sched = clip_schedule(F, motion, max_frames, eff, m.audio_window)
    seq = p.seq_len
    for c in sched.clips:
        p.clips.append(ClipPlan(
            c.index, c.is_first, c.n_cond, c.audio_start, c.audio_end, F, lat_h, lat_w, seq,
            c.kept, c.audio_len, c.window_range,
        ))  # fmt: skip
    miss = sched.miss
    out = sched.video_frames
    if max_frames > F and miss[0] == 0 and sum(miss) > 0:
        out = 0  # the reference cuts person 1's padding with video[:-0]: empty (empty_output rule)
    total = sum(c.kept for c in sched.clips)
    if max_frames > F and sum(miss) > 0 and total > max_frames:
        p.notes.append(
            "the 1000-frame cap and the tail padding both apply: the reference output is shorter than the audio - 3"
        )
    p.miss = miss
    p.video_frames = out


def _dit_options(cfg) -> dict | None:
    """What the loader will build (mtlib.accel.options: one home); a device "auto" plans the GPU for
    the real model. An option the device cannot take is the prepare step's error, not the plan's."""
    from mtlib.accel.options import resolve_dit_options
    from mtlib.config import ConfigError

    dev = cfg.model.device
    cuda = dev.startswith("cuda") or (dev == "auto" and cfg.model.name != "tiny")
    try:
        return resolve_dit_options(cfg, cuda=cuda).to_dict()
    except ConfigError:
        return None


def _dtypes(precision: str) -> dict[str, str]:
    """Planned dtype per tensor kind, from the one precision table (mtlib.spec.PRECISION)."""
    comp = PRECISION["fp32" if precision == "fp32" else "reference"]
    return {"lat": "float32", "img": "float32", "aud": comp["wav2vec2"], "dit": comp["dit"],
            "clip": comp["clip"], "t5": comp["t5"], "vae": comp["vae"]}  # fmt: skip


def _tensors(p, m, H, W, F, T, lat_h, lat_w, P, raw, tracks, pad_to, eff, inputs, g) -> None:
    dt = _dtypes(p.precision)
    out: list[PlannedTensor] = []

    def add(name, shape, kind="lat", note=""):
        out.append(PlannedTensor(name, tuple(int(s) for s in shape), dt.get(kind, kind), note))

    lay, aw = m.audio_layers, m.audio_width
    # audio front-end (golden stage "audio"). The short-audio policy appends its silence
    # AFTER loudness normalisation (and after combining two speakers): raw16k, loudnorm and
    # person1/2/sum keep the real lengths, wav2vec2 sees the padded track.
    if tracks[0] is not None:
        n = [pad_to[i] if pad_to[i] is not None else tracks[i] for i in range(P)]
        w2v = []
        for i in range(P):
            n50 = max(0, (n[i] - 400) // 320 + 1)  # conv feature frames at 50 Hz
            w2v.append(
                [
                    (
                        "audio.input_values",
                        (n[i],),
                        "aud",
                        "the 16 kHz track given to wav2vec2"
                        + (" (+ silence)" if pad_to[i] else ""),
                    ),
                    ("audio.w2v.conv_features", (1, m.w2v_conv_dim, n50), "aud", ""),
                    ("audio.w2v.interp_features", (1, eff[i], m.w2v_conv_dim), "aud", ""),
                    ("audio.w2v.hidden0", (1, eff[i], aw), "aud", ""),
                    ("audio.embedding", (eff[i], lay, aw), "aud", ""),
                ]
            )
        if P == 1:
            add("audio.raw16k", (raw[0],), "aud", "librosa.load(sr=16000)")
            add("audio.loudnorm", (raw[0],), "aud")
            for name, shape, kind, note in w2v[0]:
                add(name, shape, kind, note)
        else:
            # a name offered again is `<name>#1` (the trace format): speaker 2's file / person 2
            for i in range(P):
                tag = "" if i == 0 else f"#{i}"
                add(f"audio.raw16k{tag}", (raw[i],), "aud", f"speaker {i + 1}'s file at 16 kHz")
                add(f"audio.loudnorm{tag}", (raw[i],), "aud")
            wide = "float64" if p.audio_type == "add" else dt["aud"]
            add("audio.person1", (tracks[0],), wide)
            add("audio.person2", (tracks[1],), wide)
            add("audio.sum", (max(tracks),), wide, "the soundtrack of the video")
            for i in range(P):
                tag = "" if i == 0 else f"#{i}"
                for name, shape, kind, note in w2v[i]:
                    add(name + tag, shape, kind, note or f"person {i + 1}")
            add("audio.embedding1", (eff[0], lay, aw), "aud", "golden name of person 1's embedding")
            add("audio.embedding2", (eff[1], lay, aw), "aud", "golden name of person 2's embedding")
    b = "b720" if p.size == "multitalk-720" else "b480"
    add(f"image.{b}.cond", (1, 3, 1, H, W), "img", "bucket + resize + centre crop, [-1, 1]")
    add("clip.input", (1, 3, 1, H, W), "img")
    add("clip.pixels", (1, 3, m.clip_image_size, m.clip_image_size), "img")
    add("clip.out", (1, m.clip_tokens, m.clip_dim), "clip", "clip_fea")
    add(
        "ref_target_masks",
        (3, lat_h, lat_w),
        "lat",
        "person 1, person 2, background on the latent grid",
    )
    add("t5.out_full", (2, m.text_len, m.text_dim), "t5", "T5 output with the padding rows")
    add("e2e.t5.call0.ids", (2, m.text_len), "int64", "[prompt, negative prompt]")
    add("e2e.t5.call0.mask", (2, m.text_len), "int64")
    add("e2e.t5.call0.out", (2, m.text_len, m.text_dim), "t5")
    Tm = 1 + (g.motion_frame - 1) // 4
    steps = g.sampling_steps
    lat = (m.z_dim, T, lat_h, lat_w)
    preds = ("cond", "drop_audio") if p.passes_per_step == 2 else ("cond", "drop_text", "uncond")
    for c in p.clips:
        k = f"e2e.clip{c.clip}"
        ncond = c.cur_motion_frames_num
        add(f"{k}.rand.noise", lat, "lat", "torch.randn, fresh per clip")
        add(f"{k}.cond_image", (1, 3, ncond, H, W), "img")
        add(f"{k}.clip_in", (1, 3, 1, H, W), "img")
        add(f"{k}.clip_fea", (1, m.clip_tokens, m.clip_dim), "clip")
        add(
            f"{k}.vae_latent",
            (1, m.z_dim, T, lat_h, lat_w),
            "vae",
            f"VAE encode of {ncond} cond + {F - ncond} zero frames",
        )
        add(
            f"{k}.mask",
            (1, 4, T, lat_h, lat_w),
            "dit",
            f"ones for {ncond} frames, frame 0 x4, view(1, {T}, 4, {lat_h}, {lat_w})",
        )
        add(f"{k}.y", (1, 4 + m.z_dim, T, lat_h, lat_w), "dit")
        add(
            f"{k}.audio",
            (P, F, m.audio_window, lay, aw),
            "dit",
            f"audio frames {c.audio_start_idx}..{c.audio_end_idx - 1} +-2, clamped",
        )
        add(f"{k}.ref_target_masks", (3, lat_h, lat_w), "lat")
        if inputs.text_tokens is not None:
            add(f"{k}.context", (inputs.text_tokens[0], m.text_dim), "t5")
            add(f"{k}.context_null", (inputs.text_tokens[1], m.text_dim), "t5")
        add(f"{k}.timesteps", (steps + 1,), "lat")
        if not c.is_first_clip:
            add(f"{k}.latent_motion_frames", (m.z_dim, Tm, lat_h, lat_w), "vae")
            add(f"{k}.rand.motion_init", (m.z_dim, Tm, lat_h, lat_w), "lat")
            add(f"{k}.add_noise_init.t", (1,), "lat")
            add(f"{k}.add_noise_init.out", (m.z_dim, Tm, lat_h, lat_w), "lat")
        add(f"{k}.step*.t", (1,), "lat")
        add(f"{k}.step*.latent_in", lat, "lat")
        for name in preds:
            add(f"{k}.step*.{name}", lat, "lat", "DiT prediction")
        add(f"{k}.step*.noise_pred", lat, "lat")
        if not c.is_first_clip:
            add(f"{k}.step*.latent_updated", lat, "lat")
            add(f"{k}.rand.motion_step*", (m.z_dim, Tm, lat_h, lat_w), "lat")
            add(f"{k}.add_noise_step*.t", (1,), "lat")
            add(f"{k}.add_noise_step*.out", (m.z_dim, Tm, lat_h, lat_w), "lat")
        add(f"{k}.x0", (1,) + lat, "lat")
        add(f"{k}.decoded", (1, 3, F, H, W), "vae")
        if g.color_correction_strength > 0:  # strength 0 skips the colour matching
            add(f"{k}.color_ref", (1, 3, 1, H, W), "img")
            add(f"{k}.color_corrected", (1, 3, F, H, W), "img")
    # the VAE of every clip (inside e2e.clip<k>.): causal chunks of 1, 4, 4, ... frames
    add("vae.encode.in", (1, 3, F, H, W), "vae", "cond frames + zero frames")
    add(
        "vae.encode.encoder_chunk*",
        (1, 2 * m.z_dim, 1, lat_h, lat_w),
        "vae",
        "mean and log-variance of one latent frame",
    )
    add("vae.y", (1, m.z_dim, T, lat_h, lat_w), "vae")
    add("vae.decode.in", (1, m.z_dim, T, lat_h, lat_w), "vae")
    add("vae.decode.decoder_chunk0", (1, 3, 1, H, W), "vae", "latent frame 0 -> 1 pixel frame")
    add(
        "vae.decode.decoder_chunk*",
        (1, 3, m.vae_stride[0], H, W),
        "vae",
        "later latent frames -> 4 pixel frames each",
    )
    add("vae.decode.out", (1, 3, F, H, W), "vae")
    add("e2e.video", (3, p.video_frames, H, W), "vae", "generate() output")
    add("output.video", (3, p.output_frames, H, W), "vae", "after trimming to the real audio")
    # one DiT call (golden stage "dit"); P is the number of persons of the cond pass
    D, nh, nw = m.dim, lat_h // m.patch[1], lat_w // m.patch[2]
    L, S, hd = p.seq_len, nh * nw, m.head_dim
    add("dit.in.x", lat, "lat")
    add("dit.in.t", (1,), "lat")
    add(
        "dit.in.clip_fea",
        (1, m.clip_tokens, m.clip_dim),
        "dit",
        "CLIP output cast to the DiT dtype",
    )
    add("dit.in.y", (1, 4 + m.z_dim, T, lat_h, lat_w), "dit")
    add("dit.in.audio", (P, F, m.audio_window, lay, aw), "dit", "uncond passes: 1 person of zeros")
    add("dit.in.ref_target_masks", (3, lat_h, lat_w), "lat")
    add("dit.patch_embedding", (1, D, T, nh, nw), "dit")
    add("dit.e", (1, D), "lat")
    add("dit.e0", (1, 6 * D), "lat")
    add("dit.text_embedding", (1, m.text_len, D), "dit")
    add("dit.img_emb", (1, m.clip_tokens, D), "dit")
    add("dit.audio_proj", (P, T, m.context_tokens, m.output_dim), "dit")
    add("dit.audio_embedding", (1, T, m.context_tokens * P, m.output_dim), "dit")
    add("dit.token_ref_target_masks", (3, S), "dit")
    add(
        "dit.seq_len",
        (),
        "int64",
        f"a Python int, not a tensor: seq_len = T*N_h*N_w = {T}*{nh}*{nw} = {L}",
    )
    add("dit.block*.self_attn.q", (1, m.num_heads, L, hd), "lat", "q, k after RoPE (fp32); v alike")
    add("dit.block*.self_attn.k", (1, m.num_heads, L, hd), "lat")
    add("dit.block*.self_attn.v", (1, m.num_heads, L, hd), "dit")
    add("dit.block*.self_attn", (1, L, D), "dit")
    add(
        "dit.block*.self_attn.x_ref_attn_map",
        (3, L),
        "dit",
        f"softmax over the {S} reference-frame keys",
    )
    add("dit.block*.cross_attn.q", (1, m.num_heads, L, hd), "dit")
    add(
        "dit.block*.cross_attn.k",
        (1, m.num_heads, m.text_len, hd),
        "dit",
        "text keys (v alike); summed with the image attention",
    )
    add(
        "dit.block*.cross_attn.k_img",
        (1, m.num_heads, m.clip_tokens, hd),
        "dit",
        "CLIP image keys (v_img alike)",
    )
    add("dit.block*.cross_attn", (1, L, D), "dit")
    add(
        "dit.block*.audio_cross_attn.q",
        (T, m.num_heads, S, hd),
        "dit",
        "one batch item per latent frame",
    )
    add("dit.block*.audio_cross_attn.kv", (T, m.num_heads, m.context_tokens * P, hd), "dit")
    add("dit.block*.audio_cross_attn", (1, L, D), "dit")
    add("dit.block*.out", (1, L, D), "dit")
    add("dit.head", (1, L, m.patch[0] * m.patch[1] * m.patch[2] * m.z_dim), "lat")
    add("dit.out", lat, "lat")
    p.tensors = out
