"""Replay networks for the generation loop: they return the golden e2e tensors in call order.

A golden e2e case records every input and output of the DiT, VAE and CLIP calls of the
reference's generate(). These stand-ins check the inputs the loop gives them against the
recording and answer with the recorded outputs, so that generate() can be tested on its own
bookkeeping (guidance, Euler, re-noising, clip chaining) without the networks.
"""

from __future__ import annotations

import torch

from tests.golden import E2E_TOL, GoldenCase, assert_close


def golden_audio_embs(golden, case: GoldenCase) -> list[torch.Tensor]:
    """The per-person audio embeddings the case was run with (params.input_refs.audio_cases)."""
    embs = []
    for name in case.params["input_refs"]["audio_cases"]:
        audio = golden.case(name)
        keys = sorted(k for k in audio.tensors if k.startswith("audio.embedding"))
        embs += [audio[k] for k in keys]  # audio.embedding, or audio.embedding1/2
    return embs


def golden_contexts(case: GoldenCase) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, context_null) of the run: the recorded ones, else the T5 call's rows trimmed
    to their token counts (a text-scale-1 run never uses context_null, so it is not recorded)."""
    out, mask = case["e2e.t5.call0.out"], case["e2e.t5.call0.mask"]  # [2, text_len, dim], [2, L]
    trimmed = [out[i, : int(mask[i].gt(0).sum())] for i in range(2)]
    names = ("e2e.clip0.context", "e2e.clip0.context_null")
    return tuple(case[n] if n in case.tensors else t for n, t in zip(names, trimmed, strict=True))


def n_clips(case: GoldenCase) -> int:
    return len(case.params["clips"])


class ReplayDiT:
    """Answers each call with the golden prediction of the pass the loop is expected to make."""

    def __init__(self, case: GoldenCase):
        self.case = case
        self.calls: list[str] = []
        passes = case.params["dit_passes_per_step"]
        steps = case.params["generate_kwargs"]["sampling_steps"]
        self.expected = [
            f"e2e.clip{c}.step{i}.{p}"
            for c in range(n_clips(case))
            for i in range(steps)
            for p in passes
        ]

    def __call__(self, x, t, context, clip_fea, y, audio, ref_target_masks, seq_len):
        g = self.case
        name = self.expected[len(self.calls)]
        self.calls.append(name)
        prefix = name.rsplit(".", 1)[0]  # e2e.clip<c>.step<i>
        clip = ".".join(name.split(".")[:2])  # e2e.clip<c>
        kind = name.rsplit(".", 1)[1]
        assert_close(x, g[f"{prefix}.latent_in"], f"{name}: x", E2E_TOL)
        assert_close(t, g[f"{prefix}.t"], f"{name}: t", E2E_TOL)
        ctx = g[f"{clip}.context"] if kind in ("cond", "drop_audio") else g[f"{clip}.context_null"]
        assert torch.equal(context, ctx), f"{name}: wrong context"
        if kind in ("cond", "drop_text"):
            assert_close(audio, g[f"{clip}.audio"], f"{name}: audio", E2E_TOL)
        else:
            shape = (1,) + tuple(g[f"{clip}.audio"].shape[1:])
            assert tuple(audio.shape) == shape and not audio.any(), (
                f"{name}: expected one silent person"
            )
        assert_close(clip_fea, g[f"{clip}.clip_fea"], f"{name}: clip_fea", E2E_TOL)
        assert_close(y, g[f"{clip}.y"], f"{name}: y", E2E_TOL)
        assert torch.equal(ref_target_masks, g[f"{clip}.ref_target_masks"])
        assert seq_len == g.params["clips"][int(clip[len("e2e.clip") :])]["max_seq_len"]
        return g[name].clone()


class ReplayVAE:
    def __init__(self, case: GoldenCase):
        self.case = case
        self.n_encode = 0
        self.n_decode = 0

    def encode(self, video):
        g, c = self.case, self.n_encode
        self.n_encode += 1
        cond = g[f"e2e.clip{c}.cond_image"]
        n = cond.shape[2]
        assert tuple(video.shape) == tuple(g.params["vae_input_shapes"][c])
        assert_close(video[:, :, :n], cond, f"clip{c}: VAE input cond frames", E2E_TOL)
        assert not video[:, :, n:].any(), f"clip{c}: VAE input must be zero after the cond frames"
        return g[f"e2e.clip{c}.vae_latent"].clone()

    def decode(self, z):
        g, c = self.case, self.n_decode
        self.n_decode += 1
        assert_close(z, g[f"e2e.clip{c}.x0"], f"clip{c}: VAE decode input", E2E_TOL)
        return g[f"e2e.clip{c}.decoded"].clone()


class ReplayCLIP:
    def __init__(self, case: GoldenCase):
        self.case = case
        self.n = 0

    def encode_image(self, cond):
        g, c = self.case, self.n
        self.n += 1
        assert_close(cond, g[f"e2e.clip{c}.clip_in"], f"clip{c}: CLIP input", E2E_TOL)
        return g[f"e2e.clip{c}.clip_fea"].clone()
