"""Preprocessing the inputs as planned: speech -> loudness -> speakers -> padding -> wav2vec2
embeddings (cached); image -> bucket crop -> person masks (`preprocess_inputs` ->
`PreprocessedInputs`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlib.config import RunConfig
from mtlib.frames import SAMPLE_RATE, VIDEO_FPS  # every waveform in mtlib is at 16 kHz
from mtlib.io import atomic_path, project_root
from mtlib.run.load import load_audio_encoder
from mtlib.run.prepare import PreparedRun, prepare_run

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass
class PreprocessedInputs:
    """Everything generate() takes from the user's files, plus what the notebook plots."""

    cond_image: torch.Tensor  # [1, 3, 1, H, W] in [-1, 1]
    prepared_image: Any  # mtlib.media.image.PreparedImage (crop, bucket, geometry)
    ref_target_masks: torch.Tensor  # [3, H/8, W/8] person 1, person 2, background
    audio_embs: list  # per person [L_a, layers, width] (after the planned padding)
    raw_waveforms: list  # per input file: 16 kHz waveform before loudness normalisation
    speech: list  # per input file: loudness-normalised waveform
    tracks: list  # per person: the waveform given to wav2vec2 (padded as planned)
    soundtrack: np.ndarray  # [N] float32 unpadded (sum of) speech: the video's audio track
    real_samples: int  # samples of the soundtrack (the video is trimmed to this)
    run: PreparedRun | None = None  # the plan these inputs were prepared for

    def describe(self) -> str:
        """A few lines for notebooks: image geometry, loudness, padding, embedding shapes."""
        from mtlib.media.audio import AudioInputError, integrated_loudness

        g = self.prepared_image.geometry
        H, W = self.prepared_image.target_hw
        lines = [
            f"image {g.src_w}x{g.src_h} (w x h) -> bucket {self.prepared_image.bucket}: resized "
            f"{g.resized_w}x{g.resized_h}, centre crop {W}x{H} at (top {g.top}, left {g.left})",
            f"cond_image {list(self.cond_image.shape)}, ref_target_masks "
            f"{list(self.ref_target_masks.shape)} (person pixels on the latent grid: "
            f"{[int(m.sum()) for m in self.ref_target_masks[:2]]})",
        ]
        for i, (raw, normed) in enumerate(zip(self.raw_waveforms, self.speech, strict=True)):
            try:
                before, after = (f"{integrated_loudness(x):.2f}" for x in (raw, normed))
            except AudioInputError:
                before = after = "n/a"
            lines.append(
                f"speaker {i + 1}: {len(raw) / SAMPLE_RATE:.3f} s, loudness {before} -> {after} LUFS"
            )
        for i, (track, emb) in enumerate(zip(self.tracks, self.audio_embs, strict=True)):
            pad = len(track) - (len(self.speech[i]) if len(self.speech) > i else len(track))
            lines.append(
                f"person {i + 1}: wav2vec2 input {len(track)} samples"
                + (f" (+{pad} silence, planned)" if pad > 0 else "")
                + f" -> audio_embedding {list(emb.shape)}"
            )
        lines.append(f"soundtrack {self.real_samples / SAMPLE_RATE:.3f} s (muxed into the video)")
        return "\n".join(lines)


def embedding_cache_dir() -> Path:
    """Where wav2vec2 embeddings are cached: $MTLIB_CACHE/audio-embeddings, else
    <project>/.cache/audio-embeddings (git-ignored)."""
    root = os.environ.get("MTLIB_CACHE")
    base = Path(root).expanduser() if root else project_root() / ".cache"
    return base / "audio-embeddings"


def _pad_to(x: np.ndarray, n: int | None) -> np.ndarray:
    import numpy as np

    if n is None or n <= x.shape[0]:
        return x
    return np.concatenate([x, np.zeros(n - x.shape[0], dtype=x.dtype)])


def preprocess_inputs(
    run: PreparedRun, audio_encoder, cache_dir: str | os.PathLike | None = "default"
) -> PreprocessedInputs:
    """Speech and image of the run's config -> the loop's conditioning tensors.

    Speech: load (16 kHz mono) -> loudness -> two speakers combined ('para' / 'add') ->
    silence appended to the plan's pad_to_samples -> wav2vec2 (cached under cache_dir;
    None: no cache). Image: bucket + resize + centre crop; person masks from bbox or
    face_scale on the same geometry.
    """
    import numpy as np

    from mtlib.media import audio as audio_mod
    from mtlib.media import image as image_mod

    cfg = run.config
    cache = embedding_cache_dir() if cache_dir == "default" else cache_dir
    files = list(cfg.inputs.audio)
    raw = [audio_mod.load_audio(f, what=f"speaker {i + 1} audio") for i, f in enumerate(files)]
    speech = []
    for i, (f, x) in enumerate(zip(files, raw, strict=True)):
        what = f"speaker {i + 1} audio {str(f)!r}"
        audio_mod.check_loudness_length(x, SAMPLE_RATE, what)
        if not np.any(x):
            raise audio_mod.AudioInputError(
                f"{what}: is digital silence (every sample is 0); a speaker track must contain "
                "speech. Fix: check the file / channel."
            )
        speech.append(audio_mod.loudness_norm(x, SAMPLE_RATE, what=what))
    if len(speech) == 1:
        person_tracks = [speech[0]]
        soundtrack = speech[0]
    else:
        combined = audio_mod.combine_speakers(speech[0], speech[1], cfg.inputs.audio_type)
        person_tracks = [combined.person1, combined.person2]
        soundtrack = combined.sum
    tracks = [_pad_to(x, n) for x, n in zip(person_tracks, run.pad_to_samples, strict=True)]
    embs = [audio_mod.embed_audio(x, audio_encoder, cache) for x in tracks]

    prepared = image_mod.prepare_image(cfg.inputs.image, cfg.model.size, cfg.model.buckets)
    H, W = prepared.target_hw
    g = prepared.geometry
    masks = image_mod.ref_target_masks(
        g.src_h, g.src_w, H, W, run.persons, cfg.inputs.bbox, cfg.generation.face_scale
    )
    return PreprocessedInputs(
        cond_image=prepared.cond,
        prepared_image=prepared,
        ref_target_masks=masks,
        audio_embs=embs,
        raw_waveforms=raw,
        speech=speech,
        tracks=tracks,
        soundtrack=np.asarray(soundtrack, dtype=np.float32),
        real_samples=int(len(soundtrack)),
        run=run,
    )


def preprocess(cfg: RunConfig | str | os.PathLike | dict | None = "tiny") -> PreprocessedInputs:
    """Plan, then preprocess the config's inputs with wav2vec2 only (notebook 01)."""
    run = prepare_run(cfg, progress=False)
    return preprocess_inputs(run, load_audio_encoder(run.config, run.device))


def save_preprocessed(pre: PreprocessedInputs, run_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the conditioning of a run for inspection / reuse, atomically:
    audio_embedding.safetensors (person1, person2 ...), cond_image.png (the crop) and
    cond_image.safetensors (cond_image + ref_target_masks)."""
    from PIL import Image
    from safetensors.torch import save_file

    d = Path(run_dir)
    paths = {
        "audio_embedding": d / "audio_embedding.safetensors",
        "cond_png": d / "cond_image.png",
        "cond": d / "cond_image.safetensors",
    }
    embs = {f"person{i + 1}": e.contiguous() for i, e in enumerate(pre.audio_embs)}
    with atomic_path(paths["audio_embedding"]) as tmp:
        save_file(embs, str(tmp), metadata={"fps": str(VIDEO_FPS), "sample_rate": str(SAMPLE_RATE)})
        _readable(tmp)
    with atomic_path(paths["cond_png"]) as tmp:
        Image.fromarray(pre.prepared_image.crop_u8).save(tmp, format="PNG")
    tensors = {"cond_image": pre.cond_image.contiguous(), "ref_target_masks": pre.ref_target_masks}
    with atomic_path(paths["cond"]) as tmp:
        save_file(tensors, str(tmp), metadata={"bucket": pre.prepared_image.bucket})
        _readable(tmp)
    return paths


def _readable(path: Path) -> None:
    """safetensors re-creates the file owner-only: give it the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
