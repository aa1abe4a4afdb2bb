"""The OFFICIAL MultiTalk pipeline on the golden tiny weights, for the reference-bridge tests.

Imported only through ../shared/reference/official/official_cpu (the test fixture: the
official tree, unmodified, with CPU stand-ins for its CUDA-only imports), like the golden
data. Under CI=true a missing ../shared is a failure, never a skip (tests.golden._missing).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from tests.golden import ROOT, GoldenCase, _missing

OFFICIAL_DIR = Path(
    os.environ.get("MTLIB_OFFICIAL_FIXTURE", ROOT.parent / "shared" / "reference" / "official")
)


# torchvision for the official code only (the Makefile installs it here, outside the venv's
# site-packages: next to the CPU torch build it would break transformers' imports elsewhere)
REFERENCE_SITE = Path(sys.prefix) / "reference-site"


def official_paths() -> list[str]:
    """What the official code needs first on sys.path: the fixture and its torchvision."""
    return [str(OFFICIAL_DIR)] + ([str(REFERENCE_SITE)] if REFERENCE_SITE.is_dir() else [])


def official_cpu():
    """The fixture package (puts the official tree and its shims on sys.path)."""
    if not (OFFICIAL_DIR / "official_cpu" / "__init__.py").exists():
        _missing(f"official code fixture {OFFICIAL_DIR} not found (set MTLIB_OFFICIAL_FIXTURE)")
    for path in reversed(official_paths()):
        if path not in sys.path:
            sys.path.insert(0, path)
    import official_cpu as oc

    return oc


def input_data(golden, case: GoldenCase, tmpdir: Path) -> dict[str, Any]:
    """The official input dict of a golden e2e case: its prompt, the image case's source PNG
    and the audio cases' embeddings torch.save()d as generate_multitalk.py does."""
    p = case.params
    image_case = golden.case(p["input_refs"]["image_case"])
    data: dict[str, Any] = {
        "prompt": p["input_data"]["prompt"],
        "cond_image": str(image_case.file(image_case.params["source"]["file"])),
        "cond_audio": {},
    }
    embs = []
    for name in p["input_refs"]["audio_cases"]:
        audio = golden.case(name)
        embs += [
            audio[k] for k in sorted(k for k in audio.tensors if k.startswith("audio.embedding"))
        ]
    for i, emb in enumerate(embs):
        path = Path(tmpdir) / f"{case.name}_person{i + 1}.pt"
        torch.save(emb.clone(), path)
        data["cond_audio"][f"person{i + 1}"] = str(path)
    if "audio_type" in p["input_data"]:
        data["audio_type"] = p["input_data"]["audio_type"]
    if p["input_refs"].get("bbox"):
        data["bbox"] = p["input_refs"]["bbox"]
    return data


def generate_kwargs(case: GoldenCase, **change) -> dict[str, Any]:
    """official_cpu.generate() keywords from the case's recorded generate_kwargs."""
    kw = dict(case.params["generate_kwargs"])
    out = dict(
        size_bucket=kw["size_buckget"], frame_num=kw["frame_num"], mode=kw["mode"],
        motion_frame=kw["motion_frame"], sampling_steps=kw["sampling_steps"], shift=kw["shift"],
        text_guide_scale=kw["text_guide_scale"], audio_guide_scale=kw["audio_guide_scale"],
        seed=kw["seed"], color_correction_strength=kw["color_correction_strength"],
        use_apg=kw["use_apg"], face_scale=kw["face_scale"],
    )  # fmt: skip
    if kw["use_apg"]:
        out.update(apg_momentum=kw["apg_momentum"], apg_norm_threshold=kw["apg_norm_threshold"])
    out.update(change)
    return out


def merged_lora(pipe, case: GoldenCase):
    """A context applying the case's merged LoRA parameters (`lora.merged.<param>`) to the
    official DiT and restoring the originals after (the reference merges at load time)."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        merged = {
            k[len("lora.merged.") :]: v
            for k, v in case.tensors.items()
            if k.startswith("lora.merged.")
        }
        params = dict(pipe.model.named_parameters())
        saved = {k: params[k].detach().clone() for k in merged}
        with torch.no_grad():
            for k, v in merged.items():
                params[k].copy_(v)
        try:
            yield merged
        finally:
            with torch.no_grad():
                for k, v in saved.items():
                    params[k].copy_(v)

    return ctx()


def run_official(oc, pipe, golden, case: GoldenCase, tmpdir: Path, **change) -> torch.Tensor:
    """The official generate() for the case (tiny buckets, its LoRA merged when it has one)."""
    import contextlib

    data = input_data(golden, case, tmpdir)
    lora = merged_lora(pipe, case) if "lora" in case.params else contextlib.nullcontext()
    with oc.tiny_buckets(), lora:
        return oc.generate(pipe, data, **generate_kwargs(case, **change))
