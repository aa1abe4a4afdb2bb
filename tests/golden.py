"""Access to the golden reference set (inputs/outputs of the official implementation).

The directory comes from MTLIB_GOLDEN_DIR (default ../shared/golden, beside the checkout).
Everything is data-driven from its `index.json`: cases, tensors, params, weights and tiny
configs. Under CI=true a missing directory is a failure, never a skip.

Use in a test module:

    from tests.golden import golden_cases, assert_close
    @pytest.mark.golden
    @pytest.mark.parametrize("case", golden_cases("vae"), ids=str)
    def test_golden_vae(golden, case): ...
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def golden_dir() -> Path:
    return Path(os.environ.get("MTLIB_GOLDEN_DIR", ROOT.parent / "shared" / "golden")).resolve()


def _missing(msg: str):
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{msg} (CI=true: the golden suite must run, not skip)")
    pytest.skip(msg)


@dataclass
class GoldenCase:
    stage: str
    name: str
    dir: Path
    meta: dict

    def __str__(self) -> str:  # pytest ids
        return self.name

    @property
    def params(self) -> dict:
        return self.meta.get("params", {})

    @property
    def tensor_index(self) -> dict:
        return self.meta.get("tensors", {})

    def file(self, name: str) -> Path:
        return self.dir / name

    @cached_property
    def tensors(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        tf = self.meta.get("tensor_file")
        return load_file(str(self.dir / tf)) if tf else {}

    def __getitem__(self, key: str):
        return self.tensors[key]


class GoldenSet:
    def __init__(self, root: Path):
        self.root = root
        self.index = json.loads((root / "index.json").read_text())

    @classmethod
    def open_or_skip(cls, root: Path) -> GoldenSet:
        if not (root / "index.json").exists():
            _missing(f"golden directory {root} not found (set MTLIB_GOLDEN_DIR)")
        return cls(root)

    def cases(self, stage: str | None = None) -> list[GoldenCase]:
        out = []
        for meta in self.index["cases"]:
            if stage is None or meta["stage"] == stage:
                out.append(
                    GoldenCase(
                        meta["stage"], meta["case"], self.root / "cases" / meta["stage"], meta
                    )
                )
        return out

    def case(self, name: str) -> GoldenCase:
        for c in self.cases():
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    @cached_property
    def tiny_configs(self) -> dict:
        return json.loads((self.weights / "tiny_configs.json").read_text())

    def manifest(self, network: str) -> dict:
        return json.loads((self.root / "manifest" / f"real_{network}.json").read_text())


def golden_cases(stage: str) -> list:
    """Case names of one stage, for parametrize (collected at import; empty list if absent,
    in which case a single placeholder makes the missing directory visible as a fail/skip)."""
    root = golden_dir()
    if not (root / "index.json").exists():
        return ["<golden-missing>"]
    index = json.loads((root / "index.json").read_text())
    names = [c["case"] for c in index["cases"] if c["stage"] == stage]
    return names or [f"<no-{stage}-cases>"]


def get_case(golden: GoldenSet, name: str) -> GoldenCase:
    if name.startswith("<"):
        _missing(f"golden case {name}")
    return golden.case(name)


def assert_close(actual, expected, name: str, rtol_of_max: float = 1e-4) -> None:
    """The golden README's acceptance: max|a - b| <= tol * max(1, max|ref|), exact shapes."""
    import torch

    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected)
    assert tuple(actual.shape) == tuple(expected.shape), (
        f"{name}: shape {tuple(actual.shape)} != golden {tuple(expected.shape)}"
    )
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    err = (a - e).abs().max().item() if e.numel() else 0.0
    bound = rtol_of_max * max(1.0, e.abs().max().item() if e.numel() else 0.0)
    assert err <= bound, f"{name}: max|a-b| = {err:.3g} > {bound:.3g}"


SINGLE_STAGE_TOL = 1e-4  # audio, clip, t5, vae, dit (golden README §5)
E2E_TOL = 1e-3


# ------------------------------------------------------------------------------------------
# What an e2e case asks for, read from the case itself (never from the public set's values)
# ------------------------------------------------------------------------------------------

# generate() kwargs (and extra_args) of the reference that the suite replays; a case holding any
# other key fails naming it, rather than being run without it
REPLAYED_KWARGS = frozenset({
    "mode", "frame_num", "motion_frame", "max_frames_num", "sampling_steps", "shift",
    "text_guide_scale", "audio_guide_scale", "color_correction_strength", "use_apg",
    "apg_momentum", "apg_norm_threshold", "seed", "size_buckget", "face_scale", "n_prompt",
})  # fmt: skip
# kwargs that do not change the math (memory management, notes)
INERT_KWARGS = frozenset({"offload_model", "n_prompt_note"})
# the DiT passes of one step, by the reference's rule (math.isclose(text_guide_scale, 1))
PASS_LAYOUTS = (("cond", "drop_text", "uncond"), ("cond", "drop_audio"))


def fail_case(case: GoldenCase, reason: str):
    """A case the suite cannot run is a failure with the reason, never a skip."""
    pytest.fail(f"golden case {case.name}: cannot be run by this test: {reason}")


def generate_kwargs(case: GoldenCase) -> dict:
    kw = case.params.get("generate_kwargs")
    if kw is None:
        fail_case(case, "no params.generate_kwargs")
    unknown = sorted(set(kw) - REPLAYED_KWARGS - INERT_KWARGS)
    if unknown:
        fail_case(case, f"generate_kwargs {unknown} are not replayed by the suite")
    if kw.get("use_apg") and not {"apg_momentum", "apg_norm_threshold"} <= set(kw):
        fail_case(case, "use_apg without apg_momentum / apg_norm_threshold")
    return kw


def dit_passes(case: GoldenCase) -> tuple[str, ...]:
    """The case's DiT passes per step, checked against the reference's rule."""
    import math

    kw = generate_kwargs(case)
    passes = tuple(case.params.get("dit_passes_per_step", ()))
    if passes not in PASS_LAYOUTS:
        fail_case(case, f"dit_passes_per_step {list(passes)} is none of {PASS_LAYOUTS}")
    rule = PASS_LAYOUTS[1] if math.isclose(kw["text_guide_scale"], 1.0) else PASS_LAYOUTS[0]
    if passes != rule:
        fail_case(case, f"dit_passes_per_step {list(passes)} but text_guide_scale "
                        f"{kw['text_guide_scale']} gives {list(rule)} in the reference")  # fmt: skip
    return passes


def case_settings(case: GoldenCase, **overrides):
    """mtlib's GenerationSettings of an e2e case: every guidance / schedule / streaming value
    from its generate_kwargs (APG momentum and threshold included)."""
    from mtlib.run.loop_plan import GenerationSettings

    kw = generate_kwargs(case)
    values = dict(
        mode=kw["mode"],
        frame_num=kw["frame_num"],
        motion_frame=kw["motion_frame"],
        max_frames_num=kw["max_frames_num"],
        sampling_steps=kw["sampling_steps"],
        shift=float(kw["shift"]),
        text_guide_scale=float(kw["text_guide_scale"]),
        audio_guide_scale=float(kw["audio_guide_scale"]),
        color_correction_strength=float(kw["color_correction_strength"]),
        use_apg=bool(kw.get("use_apg", False)),
        seed=kw["seed"],
        progress=False,
    )
    if values["use_apg"]:
        values.update(apg_momentum=float(kw["apg_momentum"]),
                      apg_norm_threshold=float(kw["apg_norm_threshold"]))  # fmt: skip
    values.update(overrides)
    return GenerationSettings(**values)


def size_of(case: GoldenCase) -> str:
    return generate_kwargs(case)["size_buckget"]  # (sic) the reference's kwarg name


def image_case_of(golden: GoldenSet, case: GoldenCase) -> GoldenCase:
    return golden.case(case.params["input_refs"]["image_case"])


def cond_image_key(image_case: GoldenCase, size: str) -> str:
    """`image.<tag>.cond` of the image case for bucket `size` (tag from its cond_u8 png name,
    `<case>.<tag>.cond_u8.png`: b480 / b720)."""
    entry = image_case.params.get(size)
    if entry is None:
        fail_case(image_case, f"no entry for size bucket {size!r}")
    tag = entry["cond_u8_png"][len(image_case.name) + 1 :].split(".")[0]
    key = f"image.{tag}.cond"
    if key not in image_case.tensor_index:
        fail_case(image_case, f"no tensor {key!r} for size bucket {size!r}")
    return key


def negative_prompt(case: GoldenCase) -> str:
    """The reference replaces an empty n_prompt by its default negative prompt."""
    from mtlib.models.t5 import DEFAULT_NEGATIVE_PROMPT

    return generate_kwargs(case)["n_prompt"] or DEFAULT_NEGATIVE_PROMPT


def case_lora(case: GoldenCase) -> dict | None:
    """{file: Path, scale: float, ...} of the LoRA merged before the run, or None."""
    lora = case.params.get("lora")
    if lora is None:
        return None
    path = case.dir / lora["file"]
    if not path.exists():
        fail_case(case, f"LoRA file {path} not found")
    return {**lora, "path": path}
