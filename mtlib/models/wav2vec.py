"""wav2vec2 speech encoder (chinese-wav2vec2-base) with MultiTalk's modified forward.

Where it sits: `mtlib.media.audio.embed_audio` calls `AudioEncoder.embed(waveform)` to turn a
16 kHz waveform into `audio_embedding` [T, layers, hidden] at 25 frames per second, which
the DiT's audio adapter (AudioProjModel) windows and projects.

The network is transformers' `Wav2Vec2Model` loaded as published (the checkpoint is a
Wav2Vec2ForPreTraining dict; transformers strips the `wav2vec2.` prefix, renames the
weight-norm keys and drops the pre-training heads). Only the forward differs from the
stock one, exactly as in the reference (src/audio_analysis/wav2vec2.py):

    input_values [1, N]
      -> conv stem                                  audio.w2v.conv_features   [1, C, N_50Hz]
      -> transpose, F.interpolate(linear, align_corners=True) to seq_len = int(N/16000*25)
                                                    audio.w2v.interp_features [1, T, C]
      -> feature projection (LayerNorm + Linear)
      -> encoder: + positional conv, LayerNorm       audio.w2v.hidden0         [1, T, hidden]
         -> layers, keeping every hidden state
      -> stack(hidden_states[1:], dim=1)             audio.embedding           [T, layers, hidden]

The feature extractor (`Wav2Vec2FeatureExtractor`, preprocessor_config.json) gives
audio.input_values; with do_normalize it is (x - mean) / sqrt(var + 1e-7).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtlib import io, trace
from mtlib.frames import SAMPLE_RATE, VIDEO_FPS, embedding_frames  # noqa: F401 (VIDEO_FPS re-exported)
from mtlib.spec import SPECS

DEFAULT_REPO = "TencentGameMate/chinese-wav2vec2-base"


class Wav2VecError(io.InputError):
    """A wav2vec2 model directory / repo that cannot be used for MultiTalk."""


@dataclass(frozen=True)
class Wav2VecGeometry:
    """What the DiT audio adapter expects from the encoder's hidden states."""

    num_layers: int = 12  # AudioProjModel `blocks`: one hidden state per transformer layer
    hidden_size: int = 768  # AudioProjModel `channels`: wav2vec2-base width


# what each DiT spec consumes (mtlib.spec): audio_layers x audio_width
REAL_GEOMETRY = Wav2VecGeometry(
    SPECS["multitalk-14b"].audio_layers, SPECS["multitalk-14b"].audio_width
)
TINY_GEOMETRY = Wav2VecGeometry(SPECS["tiny"].audio_layers, SPECS["tiny"].audio_width)


def resolve_model_dir(path_or_repo: str | os.PathLike) -> Path:
    """A local directory, or a Hugging Face repo id found in the local hub cache (no
    network when HF_HUB_OFFLINE=1 or when the cache already holds it)."""
    p = io.resolve_local(path_or_repo)
    if p.is_dir():
        return p
    s = str(path_or_repo)
    if os.path.isabs(s) or s.startswith((".", "~")) or s.count("/") != 1:
        raise Wav2VecError(
            f"wav2vec2 model {s!r}: no such directory. Fix: pass the chinese-wav2vec2-base "
            f"directory (config.json, preprocessor_config.json, weights) or a hub repo id such as "
            f"{DEFAULT_REPO!r}."
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(s, local_files_only=True))
    except Exception:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if not offline:
        try:
            return Path(snapshot_download(s))
        except Exception as e:
            raise Wav2VecError(
                f"wav2vec2 model {s!r}: not in the local Hugging Face cache and the download failed "
                f"({type(e).__name__}). Fix: `mtlib setup` / huggingface-cli download {s}, or pass a local directory."
            ) from None
    raise Wav2VecError(
        f"wav2vec2 model {s!r}: not in the local Hugging Face cache (HF_HUB_OFFLINE is set). "
        f"Fix: download it first (huggingface-cli download {s}) or pass a local directory."
    )


def check_geometry(config: dict, expected: Wav2VecGeometry, name: str) -> None:
    """Refuse, before loading any weight, an encoder the DiT adapter cannot consume."""
    mtype = config.get("model_type")
    if mtype != "wav2vec2":
        raise Wav2VecError(
            f"wav2vec2 model {name!r}: config model_type is {mtype!r}, not 'wav2vec2'. "
            f"Fix: use {DEFAULT_REPO}."
        )
    layers, hidden = config.get("num_hidden_layers"), config.get("hidden_size")
    if (layers, hidden) != (expected.num_layers, expected.hidden_size):
        raise Wav2VecError(
            f"wav2vec2 model {name!r}: {layers} layers x {hidden} wide, but the DiT audio adapter "
            f"needs {expected.num_layers} x {expected.hidden_size} (embedding [T, {expected.num_layers}, "
            f"{expected.hidden_size}]). Fix: use {DEFAULT_REPO} (wav2vec2-base geometry), not a "
            "large or other-sized model."
        )


def _fingerprint(model_dir: Path, config: dict) -> str:
    """Identity of the weights + config for the embedding cache: the config JSON, the other
    JSON files' bytes and the weight files' CONTENT digests (mtlib.filehash: hashed once,
    remembered by path + size + mtime), so different weights of the same size miss the cache."""
    from mtlib.filehash import content_digest

    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for f in sorted(model_dir.iterdir()):
        if f.suffix in (".bin", ".safetensors", ".pt"):
            h.update(f"{f.name}:{content_digest(f)}".encode())
        elif f.suffix == ".json":
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


class AudioEncoder:
    """Feature extractor + Wav2Vec2Model running the reference's modified forward."""

    def __init__(self, model, feature_extractor, model_id: str, fingerprint: str):
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.model_id = model_id
        self.fingerprint = fingerprint

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike = DEFAULT_REPO,
        expected: Wav2VecGeometry | None = REAL_GEOMETRY,
        device: str | torch.device = "cpu",
    ) -> AudioEncoder:
        """Load from a local dir or the HF hub cache; `expected=None` skips the geometry check
        (only for experiments: the DiT needs REAL_GEOMETRY, the tiny DiT TINY_GEOMETRY)."""
        model_dir = resolve_model_dir(path_or_repo)
        cfg_path = model_dir / "config.json"
        if not cfg_path.exists():
            raise Wav2VecError(
                f"wav2vec2 model {str(path_or_repo)!r}: {cfg_path} missing. Fix: pass a complete model directory."
            )
        config = json.loads(cfg_path.read_text())
        if expected is not None:
            check_geometry(config, expected, str(path_or_repo))
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # pre-training heads are "unused weights" by design
        try:
            model = Wav2Vec2Model.from_pretrained(str(model_dir), local_files_only=True)
            if (model_dir / "preprocessor_config.json").exists():
                fe = Wav2Vec2FeatureExtractor.from_pretrained(str(model_dir), local_files_only=True)
            else:  # the published repo's extractor settings (facts §7.3)
                fe = Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=False)
        finally:
            hf_logging.set_verbosity(verbosity)
        model.to(device=device, dtype=torch.float32)
        from mtlib.finite import check_state_finite

        check_state_finite(model.state_dict(), "wav2vec2", repr(str(model_dir)))
        return cls(model, fe, str(path_or_repo), _fingerprint(model_dir, config))

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def input_values(self, waveform: np.ndarray) -> torch.Tensor:
        """Waveform [N] -> extractor output [N] float32 (normalised if do_normalize)."""
        values = np.squeeze(
            self.feature_extractor(waveform, sampling_rate=SAMPLE_RATE).input_values
        )
        x = torch.from_numpy(np.asarray(values)).float()
        if trace.active():
            trace.point("audio.input_values", x)
        return x

    @torch.no_grad()
    def forward(self, input_values: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, ...]:
        """input_values [1, N], seq_len video frames -> all hidden states, each [1, seq_len, hidden]
        (index 0 = encoder input after positional conv + LayerNorm, 1.. = layer outputs)."""
        m = self.model
        device = next(m.parameters()).device
        conv = m.feature_extractor(input_values.to(device))  # [1, C, N_50Hz]
        if trace.active():
            trace.point("audio.w2v.conv_features", conv)
        # resample the 50 Hz conv frames to the video frame rate
        feats = F.interpolate(conv, size=seq_len, mode="linear", align_corners=True).transpose(
            1, 2
        )  # [1, T, C]
        if trace.active():
            trace.point("audio.w2v.interp_features", feats)
        hidden, _ = m.feature_projection(feats)  # [1, T, hidden]
        hidden_states = self._encoder_states(hidden)
        if trace.active():
            trace.point("audio.w2v.hidden0", hidden_states[0])
        return hidden_states

    def _encoder_states(self, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The post-LN wav2vec2 encoder run layer by layer (positional conv, LayerNorm, layers),
        keeping every layer's input and the last output, as `output_hidden_states=True` does in
        transformers 4.x. Written out because transformers 5 collects hidden states only at the
        top-level model, not when the encoder submodule is called on its own."""
        if getattr(self.model.config, "do_stable_layer_norm", False):
            raise Wav2VecError(
                f"wav2vec2 {self.model_id}: a pre-LN (do_stable_layer_norm) model; MultiTalk's "
                "audio adapter was trained on chinese-wav2vec2-base (post-LN). Fix: load that model."
            )
        enc = self.model.encoder
        hidden = enc.layer_norm(hidden + enc.pos_conv_embed(hidden))
        hidden = enc.dropout(hidden)  # identity in eval mode
        states = [hidden]
        for layer in enc.layers:
            out = layer(hidden, attention_mask=None)
            hidden = out[0] if isinstance(out, tuple) else out
            states.append(hidden)
        return tuple(states)

    def embed(self, waveform: np.ndarray) -> torch.Tensor:
        """Waveform [N] at 16 kHz -> audio_embedding [T, layers, hidden] float32 on the CPU,
        T = int(N / 16000 * 25)."""
        seq_len = embedding_frames(len(waveform))  # int(N / 16000 * 25)
        x = self.input_values(waveform)
        hidden_states = self.forward(x[None], seq_len)
        emb = (
            torch.stack(hidden_states[1:], dim=1)[0].transpose(0, 1).contiguous()
        )  # [T, layers, hidden]
        emb = emb.float().cpu()
        if trace.active():
            trace.point("audio.embedding", emb)
        return emb


def load_wav2vec(
    path_or_repo: str | os.PathLike = DEFAULT_REPO,
    expected: Wav2VecGeometry | None = REAL_GEOMETRY,
    device: str | torch.device = "cpu",
) -> AudioEncoder:
    return AudioEncoder.from_pretrained(path_or_repo, expected, device)
