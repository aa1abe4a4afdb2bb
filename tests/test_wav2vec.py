"""wav2vec2 loading: geometry check before any weight is read, local dir / hub cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mtlib.models import wav2vec
from mtlib.models.wav2vec import REAL_GEOMETRY, Wav2VecError, Wav2VecGeometry, load_wav2vec


def _config_dir(tmp_path, layers, hidden):
    d = tmp_path / "wav2vec2-large"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps({"model_type": "wav2vec2", "num_hidden_layers": layers, "hidden_size": hidden})
    )
    return d


def test_refuses_large_model_before_loading(tmp_path):
    d = _config_dir(tmp_path, 24, 1024)  # no weight file: the check must come first
    with pytest.raises(Wav2VecError) as e:
        load_wav2vec(d)
    assert str(e.value) == (
        f"wav2vec2 model {str(d)!r}: 24 layers x 1024 wide, but the DiT audio adapter needs 12 x 768 "
        "(embedding [T, 12, 768]). Fix: use TencentGameMate/chinese-wav2vec2-base (wav2vec2-base "
        "geometry), not a large or other-sized model."
    )


def test_refuses_other_model_type(tmp_path):
    d = tmp_path / "hubert"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps({"model_type": "hubert", "num_hidden_layers": 12, "hidden_size": 768})
    )
    with pytest.raises(Wav2VecError) as e:
        load_wav2vec(d)
    assert str(e.value) == (
        f"wav2vec2 model {str(d)!r}: config model_type is 'hubert', not 'wav2vec2'. "
        "Fix: use TencentGameMate/chinese-wav2vec2-base."
    )


def test_missing_local_dir(tmp_path):
    d = tmp_path / "absent"
    with pytest.raises(Wav2VecError) as e:
        load_wav2vec(d)
    assert str(e.value).startswith(f"wav2vec2 model {str(d)!r}: no such directory.")


def test_repo_not_in_offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(Wav2VecError) as e:
        wav2vec.resolve_model_dir("nobody/no-such-wav2vec2")
    assert str(e.value) == (
        "wav2vec2 model 'nobody/no-such-wav2vec2': not in the local Hugging Face cache (HF_HUB_OFFLINE "
        "is set). Fix: download it first (huggingface-cli download nobody/no-such-wav2vec2) or pass a "
        "local directory."
    )


@pytest.mark.golden
def test_golden_tiny_loads_with_its_geometry(golden):
    cfg = golden.tiny_configs["wav2vec2"]["tiny"]
    geometry = Wav2VecGeometry(cfg["num_hidden_layers"], cfg["hidden_size"])
    enc = load_wav2vec(golden.weights / "wav2vec2", expected=geometry)
    assert (enc.num_layers, enc.hidden_size) == (cfg["num_hidden_layers"], cfg["hidden_size"])
    x = np.sin(np.arange(28640) / 16000 * 2 * np.pi * 200).astype(np.float32)
    emb = enc.embed(x)
    assert (
        emb.shape == (44, cfg["num_hidden_layers"], cfg["hidden_size"])
        and emb.dtype == torch.float32
    )
    # the same tiny model is refused where the real DiT geometry is required
    with pytest.raises(Wav2VecError, match=r"needs 12 x 768"):
        load_wav2vec(golden.weights / "wav2vec2", expected=REAL_GEOMETRY)


@pytest.mark.golden
def test_golden_real_manifest_geometry_is_accepted(golden):
    """The real chinese-wav2vec2-base config (from the golden real configs) passes the check."""
    wav2vec.check_geometry(golden.tiny_configs["wav2vec2"]["real"], REAL_GEOMETRY, "real")
