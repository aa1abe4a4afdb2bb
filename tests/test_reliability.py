"""Nothing silent, nothing after compute (issue #16): every bad input, output and fault gets
one clear error before compute (or keeps what was computed), and nothing is left on disk.

Each case asserts the exact first line of the message and the files left behind. The tiny
model runs on the CPU; the networks are loaded once per module.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from mtlib import cli, finite
from mtlib.config import ConfigError, load_config
from mtlib.io import OutputError, atomic_write_url, open_output
from mtlib.media.video import read_mp4
from mtlib.plan import guards, plan
from mtlib.run import generation

DATA = Path(__file__).resolve().parent.parent / "data"


def _files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    mp = pytest.MonkeyPatch()
    mp.setenv("MTLIB_CACHE", str(root / "cache"))
    base = load_config("tiny", {"model.weights.tiny_dir": str(root / "weights"),
                                "generation.sampling_steps": 1, "generation.frame_num": 5,
                                "trace.level": "off"})  # fmt: skip
    models = generation.load_models(base)
    yield base, models, root
    mp.undo()


# ------------------------------------------------------------------------------ io primitive


def test_open_output_local_is_complete_or_nothing(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    with pytest.raises(RuntimeError):
        with open_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert _files(tmp_path) == ["sub"]  # the folder, no partial file, no temp file
    assert atomic_write_url(target, "whole") == str(target)
    assert target.read_text() == "whole" and _files(tmp_path) == ["sub", "sub/a.txt"]


def test_open_output_fsspec_url_uploads_whole_objects_only():
    fs = fsspec.filesystem("memory")
    fs.rm("/reliab", recursive=True) if fs.exists("/reliab") else None
    with pytest.raises(RuntimeError):
        with open_output("memory://reliab/x/a.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not fs.exists("/reliab/x/a.bin") and fs.find("/reliab") == []
    atomic_write_url("memory://reliab/x/a.bin", b"\x00\x01")
    assert fs.cat("/reliab/x/a.bin") == b"\x00\x01"
    assert fs.find("/reliab") == ["/reliab/x/a.bin"]  # no temporary key left


def test_publish_file_moves_a_temporary_key_where_no_atomic_put(tmp_path, monkeypatch):
    """A filesystem that is no object store gets a temporary key moved into place; a failed move
    leaves neither the target nor the temporary key."""
    from mtlib.io import publish_file

    fs = fsspec.filesystem("file")
    src = tmp_path / "src.bin"
    src.write_bytes(b"whole")
    target = (tmp_path / "remote" / "a.bin").as_posix()
    moves = []
    real_mv = fs.mv
    monkeypatch.setattr(fs, "mv", lambda a, b, **k: (moves.append((a, b)), real_mv(a, b, **k)))
    publish_file(fs, src, target)
    assert [Path(a).name.startswith(".a.bin.") and a.endswith(".tmp") for a, _ in moves] == [True]
    assert _files(tmp_path / "remote") == ["a.bin"]

    def broken_mv(a, b, **k):
        raise OSError("disk went away")

    monkeypatch.setattr(fs, "mv", broken_mv)
    with pytest.raises(OSError, match="disk went away"):
        publish_file(fs, src, (tmp_path / "remote" / "b.bin").as_posix())
    assert _files(tmp_path / "remote") == ["a.bin"]  # no b.bin, no temporary key


def test_output_url_without_a_driver_is_refused():
    with pytest.raises(OutputError) as e:
        guards.check_output_file("nosuchfs://bucket/v.mp4")
    assert str(e.value).startswith(
        "--out 'nosuchfs://bucket/v.mp4': cannot write there (ValueError: "
    )


# ------------------------------------------------------------------------------ outputs, before compute


@pytest.mark.parametrize("out,first", [
    ("x.avi", "--out 'x.avi': mtlib writes .mp4 only (H.264 video + AAC audio); the name's "
              "extension '.avi' names another container. Fix: --out x.mp4."),
    ("{dir}", "--out '{dir}': is an existing directory; give a file name. Fix: --out {dir}/video.mp4."),
    ("{dir}/f.txt/v.mp4", "--out '{dir}/f.txt/v.mp4': '{dir}/f.txt' is a file, so the folder "
                          "cannot be created. Fix: choose another output path."),
    ("/proc/mtlib-test/v.mp4", "--out '/proc/mtlib-test/v.mp4': cannot write into '/proc' ("),
])  # fmt: skip
def test_cli_generate_refuses_bad_outputs_before_loading(tmp_path, monkeypatch, capsys, out, first):
    (tmp_path / "f.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(generation, "load_models", lambda *a, **k: pytest.fail("loaded"))
    out = out.format(dir=tmp_path)
    code, stdout, err = _cli(capsys, "generate", "--out", out, "--no-progress")
    assert code == 2 and stdout == ""
    assert err.startswith("mtlib generate: " + first.format(dir=tmp_path))
    assert _files(tmp_path) == ["f.txt"]


def test_cli_remote_trace_and_runs_dir_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(generation, "load_models", lambda *a, **k: pytest.fail("loaded"))
    code, _, err = _cli(
        capsys, "generate", "--out", "v.mp4", "--trace", "s3://b/t", "--no-progress"
    )
    assert code == 2
    assert err.startswith("mtlib generate: --trace 's3://b/t': a remote directory is not supported")
    code, _, err = _cli(capsys, "run", "--runs-dir", "s3://b/runs")
    assert code == 2
    assert err.startswith(
        "mtlib run: --runs-dir 's3://b/runs': a remote directory is not supported"
    )
    assert _files(tmp_path) == []


def test_free_space_is_checked_against_the_planned_outputs(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(OutputError) as e:
        guards.check_output_file(tmp_path / "v.mp4", need_bytes=free + 2**40)
    assert str(e.value).startswith(f"--out '{tmp_path}/v.mp4': ")
    assert "needed for the planned outputs but only" in str(e.value)
    assert _files(tmp_path) == []
    assert guards.video_bytes_estimate(81, 448, 896) > 81 * 448 * 896 * 3 // 8


# ------------------------------------------------------------------------------ configs


def test_empty_or_modelless_yaml_is_refused(tmp_path):
    empty, nobase = tmp_path / "empty.yaml", tmp_path / "nobase.yaml"
    empty.write_text("")
    nobase.write_text("generation:\n  sampling_steps: 2\n")
    for path, what in ((empty, "the file is empty"), (nobase, "names no model")):
        with pytest.raises(ConfigError) as e:
            load_config(path)
        assert str(e.value) == (
            f"{path}: {what}: a config must start from a preset (`base: tiny`, `base: "
            "multitalk-480`, `base: multitalk-720`) or set model.name. Fix: add `base: tiny` as "
            "its first line."
        )


def test_fps_other_than_25_is_refused():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", {"generation.fps": 30})
    assert str(e.value).startswith(
        "preset 'tiny': generation.fps: must be 25: MultiTalk's audio adapter is trained on 25 "
        "video frames per second of speech"
    )
    assert str(e.value).endswith("got 30 (int).")


def test_tiny_model_and_ignored_weight_dirs_are_named():
    cfg = load_config("tiny", {"model.weights.wan_dir": "/w"})
    lines = guards.run_notices(cfg)
    assert lines[0].startswith("model tiny: the random tiny CPU model")
    assert lines[1].startswith("WARNING model.weights.wan_dir ignored: model.name is 'tiny'")
    assert guards.run_notices(load_config("multitalk-480")) == []


def test_bbox_for_one_speaker_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "load_models", lambda *a, **k: pytest.fail("loaded"))
    cfg = load_config("tiny", {"inputs.bbox": [[0, 0, 10, 10]]})
    with pytest.raises(ConfigError) as e:
        generation.generate_video(cfg, tmp_path / "v.mp4", progress=False)
    assert str(e.value).startswith(
        "inputs.bbox: given for 1 speaker, but boxes only separate two speakers"
    )
    assert _files(tmp_path) == []


# ------------------------------------------------------------------------------ inputs


def _png_header(path: Path, w: int, h: int) -> None:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_huge_image_gets_mtlibs_guard_in_plan_and_generate(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generation, "load_models", lambda *a, **k: pytest.fail("loaded"))
    img = tmp_path / "huge.png"
    _png_header(img, 20000, 20000)
    first = (f"image '{img}': 20000x20000 = 400000000 pixels exceeds the 144000000-pixel limit "
             "(decompression-bomb guard). Fix: downscale the picture first.")  # fmt: skip
    code, _, err = _cli(
        capsys, "plan", "--image", str(img), "--audio", str(DATA / "speech_1p79s.wav")
    )
    assert code == 2 and err.splitlines()[0] == "mtlib plan: " + first
    code, _, err = _cli(capsys, "generate", "--image", str(img), "--out", str(tmp_path / "v.mp4"))
    assert code == 2 and err.splitlines()[0] == "mtlib generate: " + first
    assert _files(tmp_path) == ["huge.png"]


def _mp3(path: Path, seconds: float) -> None:
    import av
    import soundfile as sf

    x, sr = sf.read(str(DATA / "speech_5s.wav"), dtype="float32")
    x = x[: int(seconds * sr)]
    with av.open(str(path), "w") as c:
        s = c.add_stream("mp3", rate=sr)
        s.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
        frame.sample_rate = sr
        for p in [*s.encode(frame), *s.encode()]:
            c.mux(p)


def test_truncated_mp3_is_named_before_loading(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generation, "load_models", lambda *a, **k: pytest.fail("loaded"))
    whole, cut = tmp_path / "whole.mp3", tmp_path / "cut.mp3"
    _mp3(whole, 5.0)
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    code, _, err = _cli(capsys, "generate", "--audio", str(cut), "--out", str(tmp_path / "v.mp4"))
    assert code == 2
    first = err.splitlines()[0]
    assert first.startswith(
        f"mtlib generate: speaker 1 audio '{cut}': truncated: its header promises 5.00 s but only "
    )
    assert first.endswith(" s decode (an interrupted download or copy). Fix: re-export or re-download "
                          "the file, or re-encode what remains (e.g. ffmpeg -i IN -c:a libmp3lame "
                          "OUT.mp3) to plan on its real length.")  # fmt: skip
    guards.check_audio_complete([str(whole)])  # the whole file passes
    assert _files(tmp_path) == ["cut.mp3", "whole.mp3"]


# ------------------------------------------------------------------------------ the plan says what it costs and cuts


def test_plan_warns_about_clips_beyond_training_with_their_cost():
    p = plan(
        load_config("tiny", {"generation.frame_num": 241, "inputs.audio": ["data/speech_5s.wav"]})
    )
    warn = [n for n in p.notes if n.startswith("WARNING frame_num")]
    assert len(warn) == 1
    assert warn[0].startswith(
        f"WARNING frame_num 241: beyond the 201 frames per clip the reference recommends (trained "
        f"on 81): {p.seq_len} tokens per DiT pass, "
    )
    ratio = float(warn[0].split("pass, ")[1].split("x the compute")[0])
    assert ratio > (61 / 21)  # at least linear in the latent frames (61 vs 21), attention more


def test_clip_mode_and_streaming_cap_cuts_are_announced(capsys):
    audio = ["data/speech_5s.wav"]
    clip = plan(load_config("tiny", {"generation.frame_num": 81, "inputs.audio": audio}))
    assert [n for n in clip.notes if n.startswith("WARNING")] == [
        "WARNING the video covers 81 frames (3.24 s) of 125 frames (5.00 s) of audio: clip mode "
        "makes one clip of frame_num=81 frames. To get all of it: -p generation.mode=streaming."
    ]
    cap = plan(load_config("tiny", {"generation.mode": "streaming", "generation.frame_num": 33,
                                          "generation.max_frames_num": 60, "inputs.audio": audio}))  # fmt: skip
    warn = [n for n in cap.notes if n.startswith("WARNING")]
    assert len(warn) == 1 and warn[0].startswith(
        f"WARNING the video covers {cap.output_frames} frames ({cap.output_frames / 25:.2f} s) of 125 "
        "frames (5.00 s) of audio: streaming stops at generation.max_frames_num=60 (the reference's "
        "cap). To get all of it: -p generation.max_frames_num=158."
    )
    code = cli.main(["plan", "--audio", "data/speech_5s.wav", "--frame-num", "81"])
    assert (
        code == 0 and "note: WARNING the video covers 81 frames (3.24 s)" in capsys.readouterr().out
    )


def test_gpu_memory_refusal_from_the_plan():
    p = plan(load_config("multitalk-480", {"generation.frame_num": 1001}))
    reason = guards.memory_refusal(p, 80 * 2**30)
    assert reason is not None and reason.startswith(
        f"frame_num 1001: one DiT pass needs ~{p.activation_bytes / 2**30:.1f} GB"
    )
    p81 = plan(load_config("multitalk-480"))
    assert guards.memory_refusal(p81, 80 * 2**30) is None


# ------------------------------------------------------------------------------ non-finite values


def _poison_first_f32(path: Path) -> str:
    """Overwrite the first element of the first F32 tensor of a .safetensors with a NaN."""
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    key = sorted(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")[0]
    start = 8 + n + header[key]["data_offsets"][0]
    raw[start : start + 4] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(raw))
    return key


def test_nan_in_a_checkpoint_is_an_error_at_verify_and_load(
    tiny_env, tmp_path, monkeypatch, capsys
):
    base, _, root = tiny_env
    bad = tmp_path / "weights"
    shutil.copytree(root / "weights", bad)
    shard = sorted((bad / "Wan2.1-I2V-14B-480P").glob("diffusion_pytorch_model-*.safetensors"))[0]
    key = _poison_first_f32(shard)
    code, out, _ = _cli(capsys, "setup", "--verify", "--tiny", str(bad))
    assert code == 0 and "ready:" in out  # headers alone cannot see a data byte
    code, out, err = _cli(capsys, "setup", "--verify", "--full", "--tiny", str(bad))
    assert code == 1
    assert (f"  - {shard.name}: tensor {key!r} holds 1 NaN and 0 inf values: the file is damaged "
            "(a corrupted download or disk)") in out  # fmt: skip
    assert err.splitlines()[-1].startswith("full data check: ")
    monkeypatch.chdir(tmp_path)
    code, stdout, err = _cli(capsys, "generate", "-p", f"model.weights.tiny_dir={bad}",
                             "-p", "generation.sampling_steps=1", "--out", "v.mp4", "--no-progress")  # fmt: skip
    assert code == 1 and stdout == ""
    assert err.splitlines()[-1].startswith(
        f"mtlib generate: DiT checkpoint '{shard}': tensor {key!r} "
    )
    assert "holds 1 NaN and 0 inf values: the file is damaged" in err
    assert not (tmp_path / "v.mp4").exists() and not list(tmp_path.glob(".*tmp*"))
    code, _, _ = _cli(capsys, "setup", "--verify", "--full", "--tiny", str(root / "weights"))
    assert code == 0


@pytest.mark.slow
def test_nan_during_the_run_names_the_first_stage_and_tensor(tiny_env, tmp_path):
    base, models, _ = tiny_env
    p = next(models.dit.parameters())
    keep = p.detach().clone()
    with torch.no_grad():
        p.fill_(float("nan"))
    try:
        with pytest.raises(finite.NonFiniteError) as e:
            cfg = base.replace(**{"trace.level": "stats"})
            generation.generate_video(cfg, tmp_path / "v.mp4", trace_dir=tmp_path / "t",
                                      progress=False, models=models)  # fmt: skip
    finally:
        with torch.no_grad():
            p.copy_(keep)
    assert str(e.value).startswith(
        "non-finite values at clip 0 step 0: DiT output 'cond' (before the latent update) [16, 2, 12, 6] holds 2304 NaN and 0 inf of 2304 values; the video would be black or noise."
    )
    assert not (tmp_path / "v.mp4").exists()
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    assert meta["status"] == "failed: NonFiniteError"


def test_finite_checks_on_tensors():
    finite.check_finite(torch.ones(3), "s", "x")
    with pytest.raises(finite.NonFiniteError) as e:
        finite.check_finite(
            torch.tensor([1.0, float("inf"), float("nan")]), "clip 0 VAE decode", "decoded frames"
        )
    assert str(e.value).startswith(
        "non-finite values at clip 0 VAE decode: decoded frames [3] holds 1 NaN and 1 inf of 3 values"
    )
    with pytest.raises(
        finite.NonFiniteError, match="^non-finite values at s: latent after the step"
    ):
        finite.check_step(
            "s", torch.tensor([float("nan")]), {"cond": torch.ones(1), "uncond": None}
        )


# ------------------------------------------------------------------------------ late failures keep the work


def test_write_failure_after_compute_keeps_the_frames_and_finish_writes_them(
    tmp_path, monkeypatch, capsys
):
    from mtlib.media.video import write_mp4

    monkeypatch.chdir(tmp_path)
    (tmp_path / "gone").write_text("a file where the output folder was")
    video = torch.rand(3, 5, 16, 16) * 2 - 1
    sound = np.zeros(3200, dtype=np.float32)
    out = tmp_path / "gone" / "v.mp4"
    with pytest.raises(OutputError) as e:
        generation._write_or_rescue(write_mp4, video, out, 25, sound, {"seed": 1})
    rescue = tmp_path / "v.rescue.safetensors"
    assert str(e.value).startswith(
        f"--out '{out}': the video was computed but could not be written ("
    )
    assert str(e.value).endswith(
        f"The frames are kept in '{rescue}'; finish with: mtlib finish {rescue} --out {out}"
    )
    assert _files(tmp_path) == ["gone", "v.rescue.safetensors"]
    code, stdout, _ = _cli(capsys, "finish", str(rescue), "--out", str(tmp_path / "v.mp4"))
    assert code == 0 and stdout.strip() == str(tmp_path / "v.mp4")
    frames, _, meta = read_mp4(tmp_path / "v.mp4")
    assert frames.shape == (5, 16, 16, 3) and meta["metadata"]["seed"] == 1
    assert _files(tmp_path) == ["gone", "v.mp4"]


# ------------------------------------------------------------------------------ compare passes only what it checked


def _stats_trace(d: Path, points: dict[str, torch.Tensor], close: bool = True):
    from mtlib import trace

    tw = trace.TraceWriter(d, level="stats")
    with trace.recording(tw):
        for n, x in points.items():
            trace.point(n, x)
    if close:
        tw.close()
    else:
        tw.wait()
        tw._index.flush()
    return d


def test_stats_only_rows_never_pass(tmp_path):
    from mtlib.inspect.compare import STATUS_DIFFERS_STATS, STATUS_UNVERIFIED, compare

    x = torch.linspace(-1, 1, 64)
    a = _stats_trace(tmp_path / "a", {"same": x, "perm": x.flip(0), "far": x})
    b = _stats_trace(tmp_path / "b", {"same": x, "perm": x, "far": x + 1})
    res = compare(a, b)
    assert res["same"].passed and res["same"].mode == "hash"
    # a permutation: equal statistics, different tensors (colour correction does the same)
    assert res["perm"].status == STATUS_UNVERIFIED and "bytes differ (hash)" in res["perm"].note
    assert res["far"].status == STATUS_DIFFERS_STATS and res["far"].failed
    assert not res.passed and res.first_divergence == "far"
    assert res.summary().startswith(
        "3 points compared: 1 pass, 1 fail, 1 unverified (stats only). FIRST DIVERGENCE: far (differs (stats only): max stat diff 1 > bound 0.0002"
    )
    only_unverified = compare(a, b, points=["same", "perm"])
    assert not only_unverified.passed and only_unverified.first_divergence is None
    assert "No divergence found, but NOT verified" in only_unverified.summary()


def test_compare_refuses_a_trace_left_recording(tmp_path, capsys):
    x = torch.ones(4)
    done = _stats_trace(tmp_path / "done", {"a": x})
    killed = _stats_trace(tmp_path / "killed", {"a": x}, close=False)
    assert json.loads((killed / "meta.json").read_text())["status"] == "recording"
    code, _, err = _cli(capsys, "compare", str(killed), str(done))
    assert code == 2
    assert err.startswith(
        f"mtlib compare: trace {str(killed)!r}: incomplete (status 'recording': the run was killed "
        "or failed while recording)"
    )
    code, out, _ = _cli(capsys, "compare", str(killed), str(done), "--allow-incomplete")
    assert code == 1 and "Trace A is INCOMPLETE (status 'recording')" in out


# ------------------------------------------------------------------------------ the wav2vec2 cache follows the weights' content


def test_wav2vec_fingerprint_changes_with_same_size_weights(tiny_env, tmp_path):
    from mtlib.models.wav2vec import _fingerprint

    _, _, root = tiny_env
    d = tmp_path / "w2v"
    shutil.copytree(root / "weights" / "chinese-wav2vec2-base", d)
    config = json.loads((d / "config.json").read_text())
    before = _fingerprint(d, config)
    assert _fingerprint(d, config) == before
    size = (d / "model.safetensors").stat().st_size
    _poison_first_f32(d / "model.safetensors")  # one value changed, same size
    assert (d / "model.safetensors").stat().st_size == size
    assert _fingerprint(d, config) != before


def test_generate_verifies_checkpoint_headers_before_loading(tiny_env, tmp_path, capsys):
    """Real-model run on files that are not the 14B ones (and a truncated shard): refused by
    mtlib.weights' header verification before any tensor is read, nothing written."""
    _, _, root = tiny_env
    w = tmp_path / "w"
    shutil.copytree(root / "weights", w)
    shard = w / "Wan2.1-I2V-14B-480P" / "diffusion_pytorch_model-00001-of-00002.safetensors"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 100)
    dirs = {"wan_dir": "Wan2.1-I2V-14B-480P", "multitalk_dir": "MeiGen-MultiTalk",
            "wav2vec_dir": "chinese-wav2vec2-base"}  # fmt: skip
    sets = [a for k, v in dirs.items() for a in ("-p", f"model.weights.{k}={w / v}")]
    out = tmp_path / "o" / "v.mp4"
    code, stdout, err = _cli(capsys, "generate", "--config", "multitalk-480", "-p", "model.device=cpu",
                             *sets, "--out", str(out), "--no-progress")  # fmt: skip
    assert code == 1 and stdout == ""
    assert err.splitlines()[0] == (
        f"mtlib generate: {w}/Wan2.1-I2V-14B-480P/config.json: dim 64 (expected 5120), num_layers "
        "2 (expected 40): this config.json is not the multitalk-14b DiT's. Fix: re-download it "
        "with `mtlib setup --download`."
    )
    assert err.splitlines()[1].endswith("more problem(s); `mtlib setup --verify` prints them all)")
    assert not (tmp_path / "o").exists()
