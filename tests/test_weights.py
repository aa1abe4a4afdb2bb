"""mtlib.weights: layout resolution, header-only verification, offline cache, download plan, CLI.

No network anywhere: the hub is a fake API object / a fake cache directory, and socket
connections are refused where offline behaviour is asserted.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import types
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mtlib import weights as W
from mtlib.weights import fetch as weights_download
from mtlib.weights.tiny import write_tiny_checkpoints
from mtlib.weights.verify import _Verifier
from tests.weights_expected import golden_expected


@pytest.fixture(autouse=True)
def _hub_online_unless_the_test_says(monkeypatch):
    # the official code fixture (reference tests, same pytest process) sets HF_HUB_OFFLINE=1
    # for the rest of the process; these tests set it themselves where they mean it
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


SHARD1 = "diffusion_pytorch_model-00001-of-00002.safetensors"


@pytest.fixture(scope="module")
def expected(golden):
    return golden_expected(golden.weights)


@pytest.fixture
def tiny_root(tmp_path, expected):
    write_tiny_checkpoints(tmp_path / "w", seed=0, expected=expected)
    return tmp_path / "w"


def _layout(root: Path) -> W.WeightsLayout:
    return W.resolve_layout(root=root)


def _verify_error(root: Path, expected) -> W.WeightsError:
    with pytest.raises(W.WeightsError) as e:
        W.verify_layout(_layout(root), "tiny", expected=expected)
    return e.value


def _rewrite(path: Path, fn) -> None:
    state = load_file(str(path))
    fn(state)
    save_file(state, str(path), metadata={"format": "pt"})


def _shard_of(root: Path, key: str) -> Path:
    wan = root / "Wan2.1-I2V-14B-480P"
    index = json.loads((wan / "diffusion_pytorch_model.safetensors.index.json").read_text())
    return wan / index["weight_map"][key]


# ------------------------------------------------------------------------------ header readers


def test_safetensors_header_matches_the_library(golden):
    from safetensors import safe_open

    path = golden.weights / "dit/diffusion_pytorch_model.safetensors"
    h = W.read_safetensors_header(path)
    with safe_open(str(path), "pt") as f:
        ref = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert {k: t.shape for k, t in h.tensors.items()} == ref
    assert h.dtypes == ["F32"] and h.problem is None
    assert h.expected_bytes == h.file_bytes == path.stat().st_size


def test_pth_header_reads_keys_shapes_dtypes_of_views(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {"a.weight": torch.zeros(3, 5, dtype=torch.bfloat16), "b.bias": torch.ones(7, dtype=torch.float16),
             "view": base[1:3, ::2], "nested": {"x": torch.zeros(2, dtype=torch.float64)}}  # fmt: skip
    p = tmp_path / "m.pth"
    torch.save(state, p)
    h = W.read_pth_header(p)
    assert h.problem is None
    assert {k: (t.shape, t.dtype) for k, t in h.tensors.items()} == {
        "a.weight": ((3, 5), "BF16"), "b.bias": ((7,), "F16"), "view": ((2, 3), "F32"), "nested.x": ((2,), "F64")}  # fmt: skip


def test_pth_header_never_reads_tensor_data(tmp_path):
    """Storage bytes overwritten with garbage: keys and shapes still come out of data.pkl."""
    p = tmp_path / "m.pth"
    torch.save({"w": torch.zeros(1000, 250), "b": torch.zeros(1000)}, p)
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data/0"))
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + 100 : start + 900_000] = b"\xde\xad\xbe\xef" * 224_975
    p.write_bytes(bytes(raw))
    with pytest.raises(
        zipfile.BadZipFile, match="CRC"
    ):  # the data really is damaged: a real load fails the CRC
        with zipfile.ZipFile(p) as z:
            z.read(info.filename)
    h = W.read_pth_header(p)
    assert h.problem is None
    assert {k: t.shape for k, t in h.tensors.items()} == {"w": (1000, 250), "b": (1000,)}


def test_pth_header_refuses_code_in_the_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(3)}, good)
    p = tmp_path / "evil.pth"  # a real torch archive whose pickle calls os.system
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(p, "w") as zout:
        for i in zin.infolist():
            evil = pickle.dumps({"w": Evil()}, protocol=2)
            zout.writestr(
                i.filename, evil if i.filename.endswith("data.pkl") else zin.read(i.filename)
            )
    h = W.read_pth_header(p)
    assert h.problem is not None and h.problem.kind == "corrupt"
    assert "posix.system" in h.problem.message or "os.system" in h.problem.message
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------ verification


def test_missing_shard_is_named_with_the_fix(tiny_root, expected):
    shard = tiny_root / "Wan2.1-I2V-14B-480P" / "diffusion_pytorch_model-00002-of-00002.safetensors"
    shard.unlink()
    lay = W.resolve_layout(root=tiny_root, check_files=False)
    with pytest.raises(W.WeightsError) as e:
        W.verify_layout(lay, "tiny", expected=expected)
    msg = str(e.value)
    assert msg.startswith(
        f"missing file: {shard} (DiT base shard). Fix: `mtlib setup --download --root {tiny_root}`."
    )
    assert [p.kind for p in e.value.problems] == ["missing"]


def test_truncated_safetensors_reports_expected_and_actual_bytes(tiny_root, expected):
    mt = tiny_root / "MeiGen-MultiTalk" / "multitalk.safetensors"
    size = mt.stat().st_size
    with open(mt, "r+b") as f:
        f.truncate(size - 1000)
    err = _verify_error(tiny_root, expected)
    assert str(err).startswith(
        f"{mt}: truncated: expected {size} bytes (header + tensors), found {size - 1000} (1000 missing"
    )
    assert err.problems[0].kind == "truncated"


def test_truncated_pth_is_named(tiny_root, expected):
    vae = tiny_root / "Wan2.1-I2V-14B-480P" / "Wan2.1_VAE.pth"
    size = vae.stat().st_size
    with open(vae, "r+b") as f:
        f.truncate(size - 5000)
    err = _verify_error(tiny_root, expected)
    assert str(err).startswith(f"{vae}: truncated: a torch zip archive whose end-of-archive record is missing "
                               f"(the file stops at {size - 5000} bytes")  # fmt: skip
    assert "mtlib setup --download" in str(err)


def test_pth_storage_shorter_than_its_tensor_is_caught(tmp_path):
    """A rewritten archive whose storage member is too short for the pickled tensor."""
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(10, 10)}, good)
    bad = tmp_path / "bad.pth"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for i in zin.infolist():
            data = zin.read(i.filename)
            zout.writestr(i.filename, data[:200] if i.filename.endswith("data/0") else data)
    h = W.read_pth_header(bad)
    assert h.problem.kind == "truncated"
    assert "storage 'good/data/0' holds 200 bytes, expected 400 (100 x F32)" in h.problem.message


def test_wrong_shapes_list_first_keys_expected_vs_actual(tiny_root, expected):
    mt = tiny_root / "MeiGen-MultiTalk" / "multitalk.safetensors"
    _rewrite(mt, lambda s: s.update({"audio_proj.proj1.weight": torch.zeros(25, 600)}))
    want = expected["dit"]["audio_proj.proj1.weight"][0]
    err = _verify_error(tiny_root, expected)
    assert str(err).startswith(
        "DiT (Wan shards + multitalk.safetensors): 1 tensor(s) with the wrong shape: "
        f"audio_proj.proj1.weight: expected [{want[0]}, {want[1]}], found [25, 600]."
    )
    assert err.problems[0].kind == "shape"


def test_missing_and_unexpected_keys_are_separate_errors(tiny_root, expected):
    mt = tiny_root / "MeiGen-MultiTalk" / "multitalk.safetensors"

    def edit(s):
        del s["audio_proj.norm.bias"]
        s["audio_proj.extra.weight"] = torch.zeros(2)

    _rewrite(mt, edit)
    report = W.verify_layout(_layout(tiny_root), "tiny", expected=expected, strict=False)
    msgs = [p.message for p in report.problems]
    assert msgs[0].startswith(
        "DiT (Wan shards + multitalk.safetensors): 1 expected key(s) missing, e.g. audio_proj.norm.bias."
    )
    assert msgs[1].startswith(
        "DiT (Wan shards + multitalk.safetensors): 1 unexpected key(s), e.g. audio_proj.extra.weight."
    )
    assert [p.kind for p in report.problems] == ["keys", "keys"]


def test_t2v_dit_is_named(tiny_root, expected):
    shard = _shard_of(tiny_root, "patch_embedding.weight")
    _rewrite(shard, lambda s: s.update({"patch_embedding.weight": torch.zeros(64, 16, 1, 2, 2)}))
    err = _verify_error(tiny_root, expected)
    assert "this is Wan2.1-T2V" in str(err)
    assert "MultiTalk needs Wan-AI/Wan2.1-I2V-14B-480P" in str(err)
    assert err.problems[0].kind == "wrong_model"


def test_t2v_config_json_is_named(tiny_root, expected):
    cfg_path = tiny_root / "Wan2.1-I2V-14B-480P" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(model_type="t2v", in_dim=16)
    cfg_path.write_text(json.dumps(cfg))
    err = _verify_error(tiny_root, expected)
    assert "this is Wan2.1-T2V" in str(err)


def test_wav2vec2_large_config_is_named(tiny_root, expected):
    cfg_path = tiny_root / "chinese-wav2vec2-base" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    )
    cfg_path.write_text(json.dumps(cfg))
    err = _verify_error(tiny_root, expected)
    assert str(err).startswith(f"{cfg_path}: this is wav2vec2-large (24 layers x 1024 wide); this configuration "
                               "needs 3 layers x 48 wide")  # fmt: skip
    assert err.problems[0].kind == "wrong_model"


def test_wav2vec2_large_weights_are_named_for_the_real_config(tmp_path):
    """Real-size expectation (12 x 768) against a 24 x 1024 header: named wav2vec2-large."""
    d = tmp_path / "w2v"
    d.mkdir()
    fake = {
        f"wav2vec2.encoder.layers.{i}.final_layer_norm.weight": torch.zeros(1) for i in range(24)
    }
    fake["wav2vec2.encoder.layer_norm.weight"] = torch.zeros(1024)
    save_file(fake, str(d / "model.safetensors"))
    exp = {
        f"wav2vec2.encoder.layers.{i}.final_layer_norm.weight": ((768,), None) for i in range(12)
    }
    exp["wav2vec2.encoder.layer_norm.weight"] = ((768,), None)
    v = _Verifier(W.WeightsLayout(tmp_path, tmp_path, d), "multitalk-14b", {"wav2vec2": exp})
    v.check_wav2vec()
    kinds = [(p.kind, p.message) for p in v.report.problems]
    assert any(k == "wrong_model" and "this is wav2vec2-large (24 layers x 1024 wide); this configuration needs "
               "12 layers x 768 wide" in m for k, m in kinds)  # fmt: skip


def test_wan22_vae_is_named(tiny_root, expected):
    vae = tiny_root / "Wan2.1-I2V-14B-480P" / "Wan2.1_VAE.pth"
    state = torch.load(vae, weights_only=True)
    state["conv1.weight"] = torch.zeros(96, 96, 1, 1, 1)
    torch.save(state, vae)
    err = _verify_error(tiny_root, expected)
    assert str(err).startswith(f"{vae}: this is the Wan2.2 VAE (48 latent channels")
    assert "MultiTalk needs Wan2.1_VAE.pth" in str(err)


def test_t5_dtype_mismatch_is_reported(tiny_root, expected):
    t5 = tiny_root / "Wan2.1-I2V-14B-480P" / "models_t5_umt5-xxl-enc-bf16.pth"
    state = torch.load(t5, weights_only=True)
    torch.save({k: v.float() for k, v in state.items()}, t5)
    err = _verify_error(tiny_root, expected)
    assert "tensor(s) stored as F32, expected BF16" in str(err)
    assert err.problems[0].kind == "dtype"


def test_report_table_lists_every_file_with_its_status(tiny_root, expected):
    (tiny_root / "Wan2.1-I2V-14B-480P" / "Wan2.1_VAE.pth").unlink()
    report = W.verify_layout(W.resolve_layout(root=tiny_root, check_files=False), "tiny",
                             expected=expected, strict=False)  # fmt: skip
    assert not report.ok
    rows = {Path(r.file).name: r.status for r in report.rows}
    assert rows["Wan2.1_VAE.pth"] == "missing"
    assert rows["multitalk.safetensors"] == "ok" and rows["model.safetensors"] == "ok"
    table = report.table()
    assert "missing  Wan2.1-I2V-14B-480P/Wan2.1_VAE.pth" in table
    vae = tiny_root / "Wan2.1-I2V-14B-480P" / "Wan2.1_VAE.pth"
    assert table.endswith(
        f"1 problem(s):\n  - missing file: {vae} (VAE). Fix: `mtlib setup --download --root {tiny_root}`."
    )
    assert report.to_json()["ok"] is False


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(root.rglob("*"))}  # fmt: skip


def test_verify_writes_nothing_into_checkpoint_dirs(tiny_root, expected):
    before = _snapshot(tiny_root)
    W.verify_layout(_layout(tiny_root), "tiny", expected=expected)
    W.verify_layout(_layout(tiny_root), "tiny", expected=expected, strict=False).table()
    assert _snapshot(tiny_root) == before


# ------------------------------------------------------------------------------ layouts


def test_linked_wan_dir_is_accepted(tiny_root, expected):
    """The official README's linking: MultiTalk's index + multitalk.safetensors inside the Wan dir,
    Wan's own index renamed *.json_old."""
    wan = tiny_root / "Wan2.1-I2V-14B-480P"
    idx = "diffusion_pytorch_model.safetensors.index.json"
    os.replace(wan / idx, wan / (idx + "_old"))
    shutil.copy(tiny_root / "MeiGen-MultiTalk" / idx, wan / idx)
    shutil.copy(
        tiny_root / "MeiGen-MultiTalk" / "multitalk.safetensors", wan / "multitalk.safetensors"
    )
    shutil.rmtree(tiny_root / "MeiGen-MultiTalk")
    lay = W.resolve_layout(wan_dir=wan, wav2vec_dir=tiny_root / "chinese-wav2vec2-base")
    assert lay.linked and lay.multitalk_dir == wan and lay.wan_index.name == idx + "_old"
    before = _snapshot(tiny_root)
    report = W.verify_layout(lay, "tiny", expected=expected)
    assert report.ok
    assert _snapshot(tiny_root) == before


def test_layout_from_three_dirs_from_a_root_and_from_config(tiny_root):
    from mtlib.config import load_config

    dirs = dict(wan_dir=tiny_root / "Wan2.1-I2V-14B-480P", multitalk_dir=tiny_root / "MeiGen-MultiTalk",
                wav2vec_dir=tiny_root / "chinese-wav2vec2-base")  # fmt: skip
    by_dirs = W.resolve_layout(**dirs)
    by_root = W.resolve_layout(root=tiny_root)
    cfg = load_config("tiny", {f"model.weights.{k}": str(v) for k, v in dirs.items()})
    by_cfg = W.resolve_layout(cfg)
    # one folder given as wan_dir that holds the three standard folders counts as the root
    by_root_in_cfg = W.resolve_layout(
        load_config("tiny", {"model.weights.wan_dir": str(tiny_root)})
    )
    assert by_dirs.source == "dirs" and by_root.source == "root" and by_root_in_cfg.source == "root"
    for lay in (by_root, by_cfg, by_root_in_cfg):
        assert (lay.wan_dir, lay.multitalk_dir, lay.wav2vec_dir) == tuple(dirs.values())


def test_layout_with_a_missing_dir_says_so(tmp_path):
    with pytest.raises(W.WeightsError, match=r"weights wan_dir '.*nope': not a directory\. Fix:"):
        W.resolve_layout(wan_dir=tmp_path / "nope", multitalk_dir=tmp_path, wav2vec_dir=tmp_path)


# ------------------------------------------------------------------------------ hub cache, offline


def _fake_cache(cache: Path, tiny_root: Path) -> dict:
    """The standard hub cache layout (models--org--name/refs + snapshots/<commit>/) filled
    with the tiny files; wav2vec2 under its safetensors PR ref like the real download."""
    commits = {}
    for repo, folder, ref in ((W.WAN_REPO, W.WAN_FOLDER, "main"), (W.MULTITALK_REPO, W.MULTITALK_FOLDER, "main"),
                              (W.WAV2VEC_REPO, W.WAV2VEC_FOLDER, "refs/pr/1")):  # fmt: skip
        repo_dir = cache / ("models--" + repo.replace("/", "--"))
        commit = f"{len(commits) + 1:040x}"
        shutil.copytree(tiny_root / folder, repo_dir / "snapshots" / commit)
        (repo_dir / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
        commits[repo] = repo_dir / "snapshots" / commit
    return commits


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_offline_cache_resolves_without_network(
    tmp_path, tiny_root, expected, monkeypatch, no_network
):
    snaps = _fake_cache(tmp_path / "hub", tiny_root)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lay = W.resolve_layout()
    assert lay.source == "hub-cache"
    assert lay.wan_dir == snaps[W.WAN_REPO]
    assert lay.multitalk_dir == snaps[W.MULTITALK_REPO]
    assert lay.wav2vec_dir == snaps[W.WAV2VEC_REPO]
    assert W.verify_layout(lay, "tiny", expected=expected).ok


def test_offline_cache_missing_files_names_them_and_the_command(
    tmp_path, tiny_root, monkeypatch, no_network
):
    snaps = _fake_cache(tmp_path / "hub", tiny_root)
    (snaps[W.WAN_REPO] / "Wan2.1_VAE.pth").unlink()
    (snaps[W.WAV2VEC_REPO] / "preprocessor_config.json").unlink()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(W.WeightsError) as e:
        W.resolve_layout()
    msg = str(e.value)
    assert msg.startswith("2 checkpoint file(s) missing:\n")
    assert f"  {snaps[W.WAN_REPO] / 'Wan2.1_VAE.pth'}  (VAE)\n" in msg
    assert (
        f"  {snaps[W.WAV2VEC_REPO] / 'preprocessor_config.json'}  (wav2vec2 feature extractor)\n"
        in msg
    )
    assert msg.endswith("Fix: `mtlib setup --download` fetches exactly these (downloads resume).")


def test_empty_cache_names_the_repos_and_the_command(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(W.WeightsError) as e:
        W.resolve_layout()
    msg = str(e.value)
    for repo in (W.WAN_REPO, W.MULTITALK_REPO, W.WAV2VEC_REPO):
        assert repo in msg
    assert "Fix: `mtlib setup --download`" in msg
    assert [p.kind for p in e.value.problems] == ["missing"] * 3


# ------------------------------------------------------------------------------ download plan


class FakeApi:
    """HfApi.model_info stand-in: repo listings with sizes, per (repo, revision)."""

    def __init__(self, listings: dict):
        self.listings = listings
        self.calls = []

    def model_info(self, repo_id, revision=None, files_metadata=False, token=None):
        self.calls.append((repo_id, revision, files_metadata))
        sib = [
            types.SimpleNamespace(rfilename=n, size=s)
            for n, s in self.listings[(repo_id, revision)].items()
        ]
        return types.SimpleNamespace(siblings=sib)


def _listings(with_pr_safetensors: bool = True) -> dict:
    wan = {"config.json": 250, "diffusion_pytorch_model.safetensors.index.json": 90_000,
           **{f"diffusion_pytorch_model-{i:05d}-of-00007.safetensors": 10_000_000_000 for i in range(1, 8)},
           "models_t5_umt5-xxl-enc-bf16.pth": 11_000_000_000, "google/umt5-xxl/spiece.model": 4_500_000,
           "google/umt5-xxl/tokenizer_config.json": 60_000, "google/umt5-xxl/tokenizer.json": 16_000_000,
           "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth": 4_700_000_000,
           "xlm-roberta-large/tokenizer.json": 9_000_000, "Wan2.1_VAE.pth": 500_000_000,
           "assets/i2v_res.png": 900_000, "examples/i2v_input.JPG": 250_000, "README.md": 20_000}  # fmt: skip
    mt = {"multitalk.safetensors": 9_947_889_040, "diffusion_pytorch_model.safetensors.index.json": 120_000,
          "quant_models/dit_model_int8.safetensors": 19_000_000_000, "README.md": 9_000}  # fmt: skip
    w2v_main = {
        "config.json": 1900,
        "preprocessor_config.json": 200,
        "pytorch_model.bin": 380_000_000,
    }
    w2v_pr = (
        {**w2v_main, "model.safetensors": 378_000_000} if with_pr_safetensors else dict(w2v_main)
    )
    return {(W.WAN_REPO, "main"): wan, (W.MULTITALK_REPO, "main"): mt,
            (W.WAV2VEC_REPO, "refs/pr/1"): w2v_pr, (W.WAV2VEC_REPO, "main"): w2v_main}  # fmt: skip


def test_plan_fetches_only_the_files_multitalk_uses(tmp_path, no_network):
    api = FakeApi(_listings())
    plan = W.plan_download(tmp_path / "root", api=api, cache_dir=tmp_path / "hub")
    names = sorted((f.repo_id, f.revision, f.filename) for f in plan.files)
    wan = sorted([(W.WAN_REPO, "main", n) for n in (
        "config.json", "diffusion_pytorch_model.safetensors.index.json",
        *[f"diffusion_pytorch_model-{i:05d}-of-00007.safetensors" for i in range(1, 8)],
        "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl/spiece.model",
        "google/umt5-xxl/tokenizer_config.json", "google/umt5-xxl/tokenizer.json",
        "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "Wan2.1_VAE.pth")])  # fmt: skip
    mt = [(W.MULTITALK_REPO, "main", "diffusion_pytorch_model.safetensors.index.json"),
          (W.MULTITALK_REPO, "main", "multitalk.safetensors")]  # fmt: skip
    w2v = [
        (W.WAV2VEC_REPO, "refs/pr/1", n)
        for n in ("config.json", "model.safetensors", "preprocessor_config.json")
    ]
    assert names == sorted(wan + mt + w2v)
    assert all(files_metadata for _, _, files_metadata in api.calls)
    assert plan.bytes_needed == sum(
        _listings()[(f.repo_id, f.revision)][f.filename] for f in plan.files
    )
    with_opt = W.plan_download(tmp_path / "root", api=FakeApi(_listings()), include_optional=True)
    extra = [f for f in with_opt.files if f.optional]
    assert [(f.filename, f.size) for f in extra] == [
        ("xlm-roberta-large/tokenizer.json", 9_000_000)
    ]


def test_plan_falls_back_to_pytorch_model_bin(tmp_path, no_network):
    plan = W.plan_download(tmp_path / "root", api=FakeApi(_listings(with_pr_safetensors=False)))
    w2v = [(f.revision, f.filename) for f in plan.files if f.repo_id == W.WAV2VEC_REPO]
    assert sorted(w2v) == [
        ("main", "config.json"),
        ("main", "preprocessor_config.json"),
        ("main", "pytorch_model.bin"),
    ]


def test_plan_skips_complete_files_and_counts_only_the_rest(tmp_path, no_network):
    root = tmp_path / "root"
    (root / W.WAN_FOLDER).mkdir(parents=True)
    (root / W.WAN_FOLDER / "config.json").write_bytes(b"x" * 250)  # complete
    (root / W.WAN_FOLDER / "Wan2.1_VAE.pth").write_bytes(b"x" * 1000)  # damaged: fetched again
    plan = W.plan_download(root, api=FakeApi(_listings()))
    present = {f.filename for f in plan.files if f.present}
    assert present == {"config.json"}
    assert {f.filename for f in plan.files if f.stale} == {"Wan2.1_VAE.pth"}
    total = sum(f.size for f in plan.files)
    assert plan.bytes_needed == total - 250
    assert "have  Wan-AI/Wan2.1-I2V-14B-480P@main  config.json" in plan.table()


def test_plan_sees_files_already_in_the_hub_cache(tmp_path, tiny_root, no_network):
    _fake_cache(tmp_path / "hub", tiny_root)
    listing = _listings()
    size = (tiny_root / W.WAN_FOLDER / "Wan2.1_VAE.pth").stat().st_size
    listing[(W.WAN_REPO, "main")]["Wan2.1_VAE.pth"] = size
    plan = W.plan_download(None, api=FakeApi(listing), cache_dir=tmp_path / "hub")
    assert plan.local_dir is None and plan.destination == tmp_path / "hub"
    assert {f.filename for f in plan.files if f.present and f.repo_id == W.WAN_REPO} == {
        "Wan2.1_VAE.pth"
    }


def test_disk_space_is_checked_before_downloading(tmp_path, no_network):
    plan = W.plan_download(tmp_path / "new" / "root", api=FakeApi(_listings()))
    need = plan.bytes_needed
    seen = []

    def small_disk(path):
        seen.append(Path(path))
        return types.SimpleNamespace(free=50_000_000_000, total=10**12, used=0)

    with pytest.raises(W.WeightsError) as e:
        W.check_disk_space(plan, disk_usage=small_disk)
    assert seen == [tmp_path]  # nearest existing parent of the destination
    assert str(e.value).startswith(f"not enough disk space at {tmp_path / 'new' / 'root'}: the download needs "
                                   f"{need / 1e9:.2f} GB (+2% margin), 50.00 GB are free.")  # fmt: skip
    big = W.check_disk_space(plan, disk_usage=lambda p: types.SimpleNamespace(free=need * 2))
    assert big == need * 2


def test_download_fetches_missing_files_with_resume_semantics(
    tmp_path, tiny_root, monkeypatch, no_network
):
    """Each missing file goes through the hub downloader (resumable), into <root>/<folder>/."""
    root = tmp_path / "root"
    listing = _listings()
    plan = W.plan_download(root, api=FakeApi(listing))
    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename, kw["revision"], Path(kw["local_dir"]).name))
        assert kw["force_download"] is False
        folder = {
            W.WAN_REPO: W.WAN_FOLDER,
            W.MULTITALK_REPO: W.MULTITALK_FOLDER,
            W.WAV2VEC_REPO: W.WAV2VEC_FOLDER,
        }
        src = tiny_root / folder[repo_id] / filename
        dst = Path(kw["local_dir"]) / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst) if src.exists() else dst.write_bytes(b"")
        return str(dst)

    monkeypatch.setattr(weights_download, "check_disk_space", lambda plan, **k: 10**15)
    shutil.copytree(
        tiny_root / W.WAN_FOLDER / "google", root / W.WAN_FOLDER / "google"
    )  # stand-in marker
    for name in (
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ):
        shutil.copy(tiny_root / W.WAN_FOLDER / name, root / W.WAN_FOLDER / name)
    lay = W.download(plan, downloader=fake_download)
    assert len(calls) == len(plan.files)
    assert (W.WAV2VEC_REPO, "model.safetensors", "refs/pr/1", W.WAV2VEC_FOLDER) in calls
    assert (W.WAN_REPO, "Wan2.1_VAE.pth", "main", W.WAN_FOLDER) in calls
    assert lay.wan_dir == root / W.WAN_FOLDER and lay.source == "root"


# ------------------------------------------------------------------------------ registry


def test_wav2vec2_expected_map_matches_tiny_weights_and_manifest(golden):
    from safetensors import safe_open

    tiny = W.EXPECTED["wav2vec2"]("tiny")
    with safe_open(str(golden.weights / "wav2vec2/model.safetensors"), "pt") as f:
        ref = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert {k: s for k, (s, _) in tiny.items()} == ref
    real = W.EXPECTED["wav2vec2"]("multitalk-14b")
    manifest = golden.manifest("wav2vec2")["keys_for_pretraining_checkpoint"]
    assert {k: list(s) for k, (s, _) in real.items()} == manifest


# ------------------------------------------------------------------------------ CLI and notebook


def test_setup_cli_tiny_ok_and_exit_codes(tmp_path, expected, monkeypatch, capsys):
    from mtlib.cli import main

    for net, m in expected.items():
        monkeypatch.setitem(W.EXPECTED, net, lambda name, m=m: m)
    assert main(["setup", "--tiny", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert "ready: every checkpoint file is present" in out
    assert main(["setup", "--tiny", str(tmp_path / "t"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    (tmp_path / "t" / W.WAN_FOLDER / "Wan2.1_VAE.pth").unlink()
    assert main(["setup", "--root", str(tmp_path / "t"), "--config", "tiny"]) == 1
    out = capsys.readouterr().out
    assert "missing  Wan2.1-I2V-14B-480P/Wan2.1_VAE.pth" in out
    assert f"Fix: `mtlib setup --download --root {tmp_path / 't'}`" in out
    assert main(["setup", "--root", str(tmp_path / "t"), "--wan-dir", str(tmp_path)]) == 2


def test_setup_cli_without_checkpoints_exits_1_with_the_fix(
    tmp_path, monkeypatch, capsys, no_network
):
    from mtlib.cli import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    assert main(["setup"]) == 1
    err = capsys.readouterr().err
    assert "MultiTalk checkpoints not found" in err and "Fix: `mtlib setup --download`" in err


def test_weights_status_for_tiny_writes_and_verifies(tmp_path, expected, monkeypatch):
    from mtlib.config import load_config

    for net, m in expected.items():
        monkeypatch.setitem(W.EXPECTED, net, lambda name, m=m: m)
    cfg = load_config("tiny", {"model.weights.tiny_dir": str(tmp_path / "tiny")})
    text = W.weights_status(cfg)
    assert "ready: every checkpoint file is present" in text
    assert (tmp_path / "tiny" / W.WAN_FOLDER / "Wan2.1_VAE.pth").exists()


def test_weights_status_for_real_config_says_what_to_do(tmp_path, monkeypatch, no_network):
    from mtlib.config import load_config

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    text = W.weights_status(load_config("multitalk-480"))
    assert "MultiTalk checkpoints not found" in text
    assert "Next: run `mtlib setup --download` in a terminal" in text


def test_wav2vec2_expected_map_matches_transformers():
    """The hand-written template equals what transformers instantiates (legacy names)."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

    for name in ("tiny", "multitalk-14b"):
        with torch.device("meta"):
            model = Wav2Vec2ForPreTraining(Wav2Vec2Config(**W.WAV2VEC2_GEOMETRY[name]))
        ref = {
            k.replace("parametrizations.weight.original0", "weight_g").replace(
                "parametrizations.weight.original1", "weight_v"
            ): tuple(v.shape)
            for k, v in model.state_dict().items()
        }
        assert {k: s for k, (s, _) in W.EXPECTED["wav2vec2"](name).items()} == ref


def test_legacy_bin_is_reported_not_parsed(tiny_root, expected):
    """A pre-1.6 torch pickle (pytorch_model.bin fallback) cannot be listed without reading it:
    reported as a warning, not a false error."""
    a2v = tiny_root / "chinese-wav2vec2-base"
    state = load_file(str(a2v / "model.safetensors"))
    (a2v / "model.safetensors").unlink()
    torch.save(state, a2v / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    report = W.verify_layout(_layout(tiny_root), "tiny", expected=expected)
    row = next(r for r in report.rows if r.file.endswith("pytorch_model.bin"))
    assert (row.status, row.detail) == (
        "warn",
        "wav2vec2 weights: legacy (pre-zip) torch format; keys not checked",
    )


def test_zip_pytorch_model_bin_is_verified(tiny_root, expected):
    a2v = tiny_root / "chinese-wav2vec2-base"
    state = load_file(str(a2v / "model.safetensors"))
    (a2v / "model.safetensors").unlink()
    del state["wav2vec2.encoder.layer_norm.bias"]
    torch.save(state, a2v / "pytorch_model.bin")
    err = _verify_error(tiny_root, expected)
    assert str(err).startswith(
        "wav2vec2 (pytorch_model.bin): 1 expected key(s) missing, e.g. wav2vec2.encoder.layer_norm.bias."
    )


def test_plan_refuses_to_run_offline(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        W.WeightsError, match=r"^HF_HUB_OFFLINE is set: a download cannot be planned"
    ):
        W.plan_download(tmp_path, api=FakeApi(_listings()))


def test_setup_cli_usage_errors_exit_2(tmp_path, capsys):
    from mtlib.cli import main

    assert main(["setup", "--download", "--wan-dir", str(tmp_path)]) == 2
    assert "--download fetches into --root DIR or the hub cache" in capsys.readouterr().err
    assert main(["setup", "--tiny", str(tmp_path), "--root", str(tmp_path)]) == 2
    assert main(["setup", "--multitalk-dir", str(tmp_path)]) == 2


def test_layout_for_config_tiny_writes_on_first_use(tmp_path, expected, monkeypatch):
    from mtlib.config import load_config

    for net, m in expected.items():
        monkeypatch.setitem(W.EXPECTED, net, lambda name, m=m: m)
    cfg = load_config(
        "tiny", {"model.weights.tiny_dir": str(tmp_path / "t"), "model.weights.tiny_seed": 5}
    )
    lay = W.layout_for_config(cfg)
    assert lay.wan_dir == tmp_path / "t" / W.WAN_FOLDER and lay.source == "tiny"
    assert json.loads((tmp_path / "t" / ".mtlib-tiny-stamp.json").read_text())["seed"] == 5


def test_download_refetches_a_damaged_file_from_scratch(tmp_path, monkeypatch, no_network):
    root = tmp_path / "root"
    (root / W.WAN_FOLDER).mkdir(parents=True)
    (root / W.WAN_FOLDER / "Wan2.1_VAE.pth").write_bytes(b"x" * 1000)  # hub says 500 MB
    plan = W.plan_download(root, api=FakeApi(_listings()))
    forced = {}
    monkeypatch.setattr(weights_download, "check_disk_space", lambda plan, **k: 10**15)

    def record(repo_id, filename, **kw):
        forced[(repo_id, filename)] = kw["force_download"]

    with pytest.raises(W.WeightsError, match="checkpoints not found under"):  # nothing was written
        W.download(plan, downloader=record)
    assert forced.pop((W.WAN_REPO, "Wan2.1_VAE.pth")) is True
    assert set(forced.values()) == {False} and len(forced) == len(plan.files) - 1
    assert "again Wan-AI/Wan2.1-I2V-14B-480P@main  Wan2.1_VAE.pth" in plan.table()
