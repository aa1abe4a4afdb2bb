"""mtlib.models.official_keys: the official umT5 / CLIP key layouts written from the configs
(what `mtlib setup --verify` expects without importing transformers) equal the modules' own
state_dict() and the golden set's manifests of the real checkpoints."""

from __future__ import annotations

import pytest
import torch

from mtlib.models import clip as clip_mod
from mtlib.models import t5 as t5_mod
from mtlib.models.official_keys import clip_shapes, t5_shapes


def _shapes(module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", ["tiny", "multitalk-14b"])
def test_t5_shapes_equal_the_module(name):
    with torch.device("meta"):
        model = t5_mod.T5Encoder(name)
    ours = t5_shapes(t5_mod.get_config(name))
    assert ours == _shapes(model)


@pytest.mark.parametrize("name", ["tiny", "multitalk-14b"])
def test_clip_shapes_equal_the_module(name):
    with torch.device("meta"):
        model = clip_mod.XLMRobertaCLIP(name, with_text_tower=True)
    assert clip_shapes(clip_mod.get_config(name)) == _shapes(model)


@pytest.mark.golden
def test_shapes_equal_the_real_checkpoint_manifests(golden):
    t5 = {k: tuple(s) for k, s in golden.manifest("t5")["keys"].items()}
    assert t5_shapes(t5_mod.CONFIGS["multitalk-14b"]) == t5
    clip = {k: tuple(s) for k, s in golden.manifest("clip")["keys"].items()}
    assert clip_shapes(clip_mod.CONFIGS["multitalk-14b"]) == clip


def test_verify_expectations_do_not_import_transformers():
    """The expected maps of setup --verify are built without transformers (a fresh process)."""
    import subprocess
    import sys

    code = ("import sys; from mtlib import weights as W; "
            "[W.expected_map(n, 'multitalk-14b') for n in ('t5', 'clip', 'wav2vec2')]; "
            "print('transformers' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
