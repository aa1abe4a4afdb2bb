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
                out.append(GoldenCase(meta["stage"], meta["case"], self.root / "cases" / meta["stage"], meta))
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
