"""`mtlib plan`: exit codes, diagnosis text and JSON, from real files' metadata."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mtlib.cli import main
from mtlib.media.probe import probe_audio, probe_image

USER_ERROR = "RuntimeError: shape '[1, 11, 4, 56, 112]' is invalid for input of size 288512"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan_inputs")
    Image.new("RGB", (1280, 720), (90, 120, 150)).save(d / "wide.png")
    Image.new("RGB", (110, 80), (90, 120, 150)).save(d / "small.png")
    rng = np.random.default_rng(0)
    sf.write(
        d / "speech.wav",
        (0.1 * rng.standard_normal((78939, 2))).astype(np.float32),
        44100,
        subtype="PCM_16",
    )
    (d / "broken.wav").write_bytes(b"RIFF....not a wave file")
    return d


def _run(capsys, *argv):
    code = main(["plan", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _run_user(capsys, files, frame_num, *extra):
    """`mtlib plan` on the user's case: the real model, a 1280x720 image, 1.79 s of speech."""
    return _run(capsys, "--config", "multitalk-480", "--image", files / "wide.png",
                "--audio", files / "speech.wav", "--frame-num", frame_num, *extra)  # fmt: skip


def test_probe_reads_headers(files):
    a = probe_audio(files / "speech.wav")
    assert (a.sample_rate, a.channels, a.frames, a.samples_16k, a.embedding_frames) == (
        44100,
        2,
        78939,
        28640,
        44,
    )
    assert a.duration_s == pytest.approx(1.79)
    i = probe_image(files / "wide.png")
    assert (i.width, i.height, i.mode, i.format) == (1280, 720, "RGB", "PNG")


def test_probe_exif_rotation(tmp_path):
    im = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "rot.jpg", exif=exif)
    i = probe_image(tmp_path / "rot.jpg")
    assert (i.width, i.height, i.stored_width, i.stored_height, i.orientation) == (
        20,
        40,
        40,
        20,
        6,
    )


def test_user_case_exit_2_with_the_reference_error(files, capsys):
    code, out, _ = _run_user(capsys, files, "43")
    assert code == 2
    assert USER_ERROR in out
    assert "set frame_num to 41" in out and "1.84 s" in out


def test_audio_assertion_exit_2(files, capsys):
    code, out, _ = _run_user(capsys, files, "81", "--short-audio", "error")
    assert code == 2 and "Aduio file not exists or length not satisfies frame nums." in out


def test_auto_is_valid_and_prints_the_table(files, capsys):
    code, out, _ = _run_user(capsys, files, "auto")
    assert code == 0
    assert "VALID" in out and "seq_len 18816" in out and "e2e.clip0.mask" in out


def test_json_output(files, capsys):
    code, out, _ = _run(
        capsys,
        "--image",
        files / "small.png",
        "--audio",
        files / "speech.wav",
        "--buckets",
        "tiny",
        "--mode",
        "streaming",
        "--frame-num",
        "auto",
        "--json",
    )
    d = json.loads(out)
    assert code == 0 and d["valid"] and d["target_hw"] == [48, 64] and d["frame_num"] == 81
    assert d["pad_to_samples"] == [52480] and d["padded_audio_frames"] == [82]
    assert [(c["audio_start_idx"], c["audio_end_idx"]) for c in d["clips"]] == [(0, 81), (56, 137)]
    assert (d["video_frames"], d["output_frames"]) == (79, 45)


def test_two_speakers_json(files, capsys):
    code, out, _ = _run(
        capsys,
        "--image",
        files / "small.png",
        "--audio",
        files / "speech.wav",
        "--audio",
        files / "speech.wav",
        "--frame-num",
        "41",
        "--json",
    )
    d = json.loads(out)
    assert code == 0 and d["persons"] == 2 and d["audio_frames"] == [44, 44]


def test_unreadable_input_exit_2(files, capsys):
    code, _, err = _run(capsys, "--image", files / "wide.png", "--audio", files / "broken.wav")
    assert code == 2 and "broken.wav" in err and "not a readable audio file" in err
    code, _, err = _run(capsys, "--image", files / "missing.png", "--audio", files / "speech.wav")
    assert code == 2 and "file not found" in err


def test_bad_frame_num_value_exit_2(files, capsys):
    code, _, err = _run(
        capsys, "--image", files / "wide.png", "--audio", files / "speech.wav", "--frame-num", "x"
    )
    assert code == 2 and "frame_num" in err


def test_module_entry_point(files):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtlib",
            "plan",
            "--config",
            "multitalk-480",
            "--image",
            str(files / "wide.png"),
            "--audio",
            str(files / "speech.wav"),
            "--frame-num",
            "43",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert json.loads(r.stdout)["reference_error"] == USER_ERROR


@pytest.fixture
def http_root(files):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(files))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_urls_are_probed(http_root, capsys):
    a = probe_audio(f"{http_root}/speech.wav")
    assert (a.sample_rate, a.frames, a.samples_16k) == (44100, 78939, 28640)
    assert (
        probe_image(f"{http_root}/wide.png").width,
        probe_image(f"{http_root}/wide.png").height,
    ) == (1280, 720)
    code, out, _ = _run(
        capsys,
        "--config",
        "multitalk-480",
        "--image",
        f"{http_root}/wide.png",
        "--audio",
        f"{http_root}/speech.wav",
        "--frame-num",
        "43",
        "--json",
    )
    assert code == 2 and json.loads(out)["reference_error"] == USER_ERROR
    code, _, err = _run(
        capsys, "--image", f"{http_root}/nope.png", "--audio", f"{http_root}/speech.wav"
    )
    assert code == 2 and "nope.png" in err


def test_compressed_audio_from_container_metadata(tmp_path):
    import av

    path = tmp_path / "speech.m4a"
    sr, seconds = 44100, 2.0
    with av.open(str(path), "w") as out:
        st = out.add_stream("aac", rate=sr)
        st.layout = "mono"
        samples = (0.1 * np.sin(np.arange(int(sr * seconds)) * 0.05)).astype(np.float32)
        for i in range(0, len(samples), 1024):
            frame = av.AudioFrame.from_ndarray(
                samples[None, i : i + 1024], format="fltp", layout="mono"
            )
            frame.sample_rate = sr
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)
    a = probe_audio(path)
    assert a.sample_rate == sr and a.channels == 1 and not a.exact
    assert a.duration_s == pytest.approx(seconds, abs=0.05)
    assert a.embedding_frames in (49, 50, 51)


def test_plan_takes_config_overrides_like_generate(files, capsys):
    """-p KEY=VALUE as in generate: a preset's plan in fp8 names the DiT's options and the
    precision of every weight group; the explicit flags win over -p; a malformed one exits 2."""
    code, out, err = _run(
        capsys, "--config", "multitalk-480-fusionx", "--image", files / "wide.png",
        "--audio", files / "speech.wav", "--frame-num", "45", "-p", "model.precision=fp8",
        "-p", "model.device=cuda", "-p", "model.compile=true", "-p", "generation.frame_num=81",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].endswith("| precision fp8")
    assert "frame_num 45 -> 45" in lines[2]  # --frame-num beats -p generation.frame_num
    assert lines[3].endswith("| 8 steps x 2 DiT passes")
    assert lines[4] == (
        "DiT: precision fp8 | weights all on the GPU | self-attention triton-fp8 | compile on | "
        "RoPE float32 | recipe fusionx"
    )
    assert lines[5].startswith(
        "weights: dit.blocks linears float8 e4m3 (per-output-channel scale; activations per "
        "token; fast accumulation) [checkpoint]; dit other weights bfloat16 [checkpoint]"
    )
    code, out, err = _run(capsys, "-p", "model.precision")
    assert code == 2 and out == ""
    assert err == (
        "mtlib plan: override 'model.precision': expected key.path=value, e.g. generation.seed=3.\n"
    )
