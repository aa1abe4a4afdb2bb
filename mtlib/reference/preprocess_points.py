"""Trace points of the official run outside MultiTalkPipeline.generate(): the audio
preprocessing of generate_multitalk.py, and (on request) the DiT blocks' internals.

Audio (names as mtlib's own run trace records them, mtlib.media.audio / mtlib.models.wav2vec;
golden README §2.1). generate_multitalk.py runs as `__main__`, so its own functions cannot be
wrapped; the library calls they make are, and only calls made from the official script
(a file named like `OfficialTracer.script_names`) are recorded:

    librosa.load(path, sr=16000)                     audio.raw16k           (per speaker)
    (two speakers) the feature extractor's input     audio.person1 / 2      (audio_prepare_multi's
      tracks), soundfile.write(sum.wav, ...)         audio.sum              tracks and their sum)
    pyloudnorm.normalize.loudness(x, loudness, -23)  audio.loudnorm         (per speaker; the
      or Meter.integrated_loudness(x) with |LUFS| > 100: x unchanged, as loudness_norm returns it)
    Wav2Vec2FeatureExtractor(x, sampling_rate=...)   audio.input_values     (per track)
    audio_encoder(features, seq_len=..., ...)       audio.embedding        (per track: get_embedding's
      stack(hidden_states[1:]) -> [T, layers, hidden], what it torch.save()s for generate())

A name offered again gets `#1`, `#2` (mtlib.trace.TraceWriter), as in mtlib's run: speaker 2's
raw audio is `audio.raw16k#1` on both sides. With these, `mtlib compare` names a
preprocessing divergence (another file, a skipped loudness normalisation, another feature
extractor) at its `audio.*` point instead of at the first DiT call.

DiT blocks: forward hooks on `pipe.model.blocks[k]` and its `self_attn` (first output),
`cross_attn`, `audio_cross_attn` record `e2e.clip<c>.step<i>.dit.block<k>.{out, self_attn,
cross_attn, audio_cross_attn}` (mtlib.models.dit's names; one per DiT pass: cond, then
`#1`, `#2` for the guidance passes), only for names matching a `keep` pattern that contains
"dit." (a real-size step has 40 blocks x 3 passes of [1, 32760, 5120] activations: never
all by default).
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import sys
from typing import Any

BLOCK_PARTS = ("self_attn", "cross_attn", "audio_cross_attn")


def from_script(tracer: Any, depth: int = 2) -> bool:
    """Is the caller of the wrapped function (depth frames up) the official script?"""
    f = sys._getframe(depth)
    return os.path.basename(f.f_code.co_filename) in tracer.script_names


def install_audio(tracer: Any, patches: Any) -> None:
    """Wrap the library calls of generate_multitalk.py's audio preprocessing (module doc)."""
    import numpy as np
    import torch

    rec = tracer.writer.record

    def as_tensor(x: Any) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(x)))

    def wrap(orig, on_result):
        def wrapper(*args, **kwargs):
            out = orig(*args, **kwargs)
            if from_script(tracer):
                on_result(args, kwargs, out)
            return out

        wrapper.__wrapped__ = orig
        return wrapper

    def optional(import_it):
        """The library, or None: a missing or unimportable one has nothing to trace, and
        tracing must not fail because of it (the official script then fails on its own)."""
        try:
            return import_it()
        except Exception:
            return None

    counts = {"loads": 0, "tracks": 0}  # two speakers: audio_prepare_multi's tracks follow

    def on_load(a, k, out):
        counts["loads"] += 1
        rec("audio.raw16k", as_tensor(out[0]))

    librosa = optional(lambda: __import__("librosa"))
    if librosa is not None:
        patches.set(librosa, "load", wrap(librosa.load, on_load))
    sf = optional(lambda: __import__("soundfile"))
    if sf is not None:

        def on_write(a, k, out):  # generate(): sf.write(sum.wav, sum_human_speechs, 16000)
            if counts["loads"] >= 2:
                rec("audio.sum", as_tensor(a[1] if len(a) > 1 else k["data"]))

        patches.set(sf, "write", wrap(sf.write, on_write))
    pyloudnorm = optional(lambda: __import__("pyloudnorm"))
    if pyloudnorm is not None:

        def on_loudness(a, k, out):
            if abs(out) > 100:  # loudness_norm returns its input unchanged (silence)
                rec("audio.loudnorm", as_tensor(a[1] if len(a) > 1 else k["data"]))

        patches.set(
            pyloudnorm.Meter,
            "integrated_loudness",
            wrap(pyloudnorm.Meter.integrated_loudness, on_loudness),
        )
        patches.set(
            pyloudnorm.normalize,
            "loudness",
            wrap(
                pyloudnorm.normalize.loudness,
                lambda a, k, out: rec("audio.loudnorm", as_tensor(out)),
            ),
        )
    FE = optional(lambda: __import__("transformers").Wav2Vec2FeatureExtractor)
    if FE is not None:

        def on_features(a, k, out):  # generate_multitalk.get_embedding: np.squeeze(...).float()
            if counts["loads"] >= 2:  # two speakers: the input is audio_prepare_multi's track
                counts["tracks"] += 1
                track = a[1] if len(a) > 1 else k["raw_speech"]
                rec(f"audio.person{counts['tracks']}", as_tensor(track))
            rec("audio.input_values", as_tensor(np.squeeze(out.input_values)).float())

        patches.set(FE, "__call__", wrap(FE.__call__, on_features))
    # the official checkout's encoder class (src/ beside generate_multitalk.py)
    W2V = optional(lambda: importlib.import_module("src.audio_analysis.wav2vec2").Wav2Vec2Model)
    if W2V is None:
        return

    def on_encoder(a, k, out):  # get_embedding's own ops on the encoder's output, bit for bit
        hidden = out.hidden_states if hasattr(out, "hidden_states") else None
        if hidden:  # stack(hidden_states[1:], dim=1).squeeze(0), "b s d -> s b d", .cpu()
            rec("audio.embedding", torch.stack(hidden[1:], dim=1).squeeze(0).permute(1, 0, 2).cpu())

    patches.set(W2V, "__call__", wrap(W2V.__call__, on_encoder))


def block_patterns(keep: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The keep patterns that ask for DiT internals (module doc; level "full" alone does not
    add them: the patterns choose)."""
    return tuple(k for k in keep if "dit." in k)


def hook_blocks(run: Any, model: Any, patterns: tuple[str, ...]) -> list[Any]:
    """Forward hooks recording the chosen block points of the DiT pass `run` is in."""
    blocks = getattr(model, "blocks", None)
    if not patterns or blocks is None:
        return []

    def recorder(k: int, part: str):
        def hook(_module, _inputs, output):
            step = run.calls // len(run.passes)
            name = run.clip_name(f"step{step}.dit.block{k}.{part}")
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                value = output[0] if isinstance(output, tuple | list) else output
                run.rec(name, value)

        return hook

    handles = []
    for k, block in enumerate(blocks):
        for part in BLOCK_PARTS:
            sub = getattr(block, part, None)
            if sub is not None:
                handles.append(sub.register_forward_hook(recorder(k, part)))
        handles.append(block.register_forward_hook(recorder(k, "out")))
    return handles
