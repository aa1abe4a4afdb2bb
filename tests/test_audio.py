"""Audio front-end: golden equality (load, loudness, wav2vec2, two speakers), formats,
validation messages, short-audio padding and the embedding cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from mtlib import trace
from mtlib.io import InputError
from mtlib.media import audio
from mtlib.models.wav2vec import Wav2VecGeometry, load_wav2vec
from tests.golden import SINGLE_STAGE_TOL, assert_close, get_case, golden_cases


def _tiny_encoder(golden):
    cfg = golden.tiny_configs["wav2vec2"]["tiny"]
    geometry = Wav2VecGeometry(cfg["num_hidden_layers"], cfg["hidden_size"])
    return load_wav2vec(golden.weights / "wav2vec2", expected=geometry)


@pytest.fixture(scope="module")
def tiny_encoder(golden):
    return _tiny_encoder(golden)


# ---------------------------------------------------------------------------------------
# golden


def _single_wav(case) -> str:
    wavs = [f for f in case.meta.get("files", []) if f.endswith(".wav")]
    assert len(wavs) == 1, f"{case.name}: expected one wav file, got {wavs}"
    return str(case.file(wavs[0]))


@pytest.mark.golden
@pytest.mark.parametrize("case_name", golden_cases("audio"), ids=str)
def test_golden_audio(golden, tiny_encoder, case_name):
    case = get_case(golden, case_name)
    inputs = case.params.get("inputs")
    if inputs is None:  # one speaker: every trace point of the case
        rec = trace.MemoryRecorder()
        with trace.recording(rec):
            x = audio.prepare_speech(_single_wav(case))
            audio.embed_audio(x, tiny_encoder)
        for name in case.tensor_index:
            assert name in rec, f"trace point {name} not recorded"
            assert_close(rec[name], case[name], name, SINGLE_STAGE_TOL)
            assert str(rec[name].dtype).endswith(case.tensor_index[name]["dtype"]), name
        raw = audio.load_audio(_single_wav(case))
        lufs = audio.integrated_loudness(raw)
        assert abs(lufs - case.params["integrated_loudness_lufs"]) <= 1e-6
        assert len(raw) == case.params["n_samples_16k"]
    else:  # two speakers from the single cases' wavs
        a = audio.prepare_speech(_single_wav(get_case(golden, inputs["person1"])))
        b = audio.prepare_speech(_single_wav(get_case(golden, inputs["person2"])))
        tracks = audio.combine_speakers(a, b, inputs["audio_type"])
        got = {
            "audio.person1": tracks.person1,
            "audio.person2": tracks.person2,
            "audio.sum": tracks.sum,
            "audio.embedding1": audio.embed_audio(tracks.person1, tiny_encoder),
            "audio.embedding2": audio.embed_audio(tracks.person2, tiny_encoder),
        }
        assert set(got) == set(case.tensor_index)
        for name, value in got.items():
            value = torch.as_tensor(value)
            assert str(value.dtype) == f"torch.{case.tensor_index[name]['dtype']}", name
            assert_close(value, case[name], name, SINGLE_STAGE_TOL)


@pytest.mark.golden
def test_golden_load_audio_matches_librosa(golden):
    """Our decoder + soxr path against librosa itself on a golden 44.1 kHz stereo wav."""
    import librosa

    case = next(c for c in golden.cases("audio") if c.meta.get("files"))
    path = _single_wav(case)
    expected, sr = librosa.load(path, sr=16000)
    got = audio.load_audio(path)
    assert sr == 16000 and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------------
# formats


def _speech_like(sr: int, seconds: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    mono = (
        0.3 * envelope * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.shape)
    ).astype(np.float32)
    if channels == 1:
        return mono
    return np.stack([mono, 0.8 * mono], axis=1)  # [N, C]


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_soundfile_formats_equal_librosa(tmp_path, fmt):
    import librosa

    path = tmp_path / f"a.{fmt}"
    sf.write(path, _speech_like(22050, 1.0, channels=2), 22050)
    expected, _ = librosa.load(str(path), sr=16000)
    got = audio.load_audio(path)
    np.testing.assert_array_equal(got, expected)
    assert len(got) == math.ceil(22050 * 16000 / 22050 * 1.0)


def _encode_pyav(path, container_fmt, codec, sr, x):
    import av

    with av.open(str(path), "w", format=container_fmt) as out:
        stream = out.add_stream(codec, rate=sr)
        stream.layout = "mono"
        fmt = stream.codec_context.format.name
        frame_len = 1024
        for i in range(0, len(x), frame_len):
            chunk = x[i : i + frame_len][None]
            frame = av.AudioFrame.from_ndarray(
                chunk.astype(np.float32)
                if fmt.startswith("flt")
                else (chunk * 32767).astype(np.int16),
                format="fltp" if fmt == "fltp" else ("flt" if fmt == "flt" else "s16"),
                layout="mono",
            )
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.mark.parametrize(
    "ext,container,codec",
    [
        ("mp3", "mp3", "mp3"),
        ("m4a", "ipod", "aac"),
        ("mp4", "mp4", "aac"),
        ("webm", "webm", "libopus"),
    ],
)
def test_pyav_formats(tmp_path, ext, container, codec):
    sr = 48000 if codec == "libopus" else 16000
    x = _speech_like(sr, 1.0)
    path = tmp_path / f"a.{ext}"
    _encode_pyav(path, container, codec, sr, x)
    got = audio.load_audio(path)
    assert got.dtype == np.float32 and got.ndim == 1
    # lossy codecs add encoder delay / padding of a few milliseconds
    assert abs(len(got) - 16000) < 0.1 * 16000
    assert 0.05 < np.abs(got).max() < 1.0


# ---------------------------------------------------------------------------------------
# validation: one clear error each


def _wav(tmp_path, name, x, sr=16000, subtype=None):
    p = tmp_path / name
    sf.write(p, x, sr, subtype=subtype)
    return p


def test_empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(audio.AudioInputError) as e:
        audio.prepare_speech(p)
    assert str(e.value) == (
        f"audio {str(p)!r}: the file is empty (0 bytes). Fix: pass a speech recording "
        "(wav, flac, ogg, mp3, m4a, or a video with an audio track)."
    )


def test_zero_samples(tmp_path):
    p = _wav(tmp_path, "zero.wav", np.zeros(0, np.float32))
    with pytest.raises(audio.AudioInputError) as e:
        audio.prepare_speech(p)
    assert (
        str(e.value)
        == f"audio {str(p)!r}: the file decodes to zero samples. Fix: pass a recording with speech."
    )


def test_digital_silence_refused(tmp_path):
    p = _wav(tmp_path, "silence.wav", np.zeros(16000, np.float32))
    with pytest.raises(audio.AudioInputError) as e:
        audio.prepare_speech(p)
    assert str(e.value) == (
        f"audio {str(p)!r}: is digital silence (every sample is 0); a speaker track must contain "
        "speech. Fix: check the file/channel, or pass None for a silent second person."
    )


def test_loudness_norm_passes_silence_through_like_reference():
    x = np.zeros(16000, np.float32)
    assert audio.loudness_norm(x) is x


def test_too_short_for_loudness(tmp_path):
    p = _wav(tmp_path, "short.wav", _speech_like(16000, 0.2))
    with pytest.raises(audio.AudioInputError) as e:
        audio.prepare_speech(p)
    assert str(e.value) == (
        f"audio {str(p)!r}: 0.200 s long (3200 samples at 16000 Hz); loudness normalisation "
        "(BS.1770) needs at least 0.4 s (6400 samples). Fix: use a longer clip (the video also "
        "needs more audio frames than frame_num)."
    )


def test_corrupt_header(tmp_path):
    good = _wav(tmp_path, "good.wav", _speech_like(16000, 1.0), subtype="PCM_16").read_bytes()
    p = tmp_path / "corrupt.wav"
    p.write_bytes(b"RIFX" + good[4:8] + b"JUNKJUNK" + good[16:])
    with pytest.raises(audio.AudioInputError) as e:
        audio.prepare_speech(p)
    msg = str(e.value)
    assert msg.startswith(f"audio {str(p)!r}: cannot be decoded as wav: it is corrupt (")
    assert msg.endswith("). Fix: re-export the recording as a valid wav/flac/ogg file.")


def test_text_file_named_wav(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("this is not audio\n")
    with pytest.raises(audio.AudioInputError) as e:
        audio.prepare_speech(p)
    assert str(e.value) == (
        f"audio {str(p)!r}: cannot be decoded as wav: it is a text file, not audio. "
        "Fix: re-export the recording as a valid wav/flac/ogg file."
    )


def test_unsupported_container(tmp_path):
    p = tmp_path / "speech.xyz"
    p.write_bytes(b"\x00\x01\x02")
    with pytest.raises(audio.AudioInputError) as e:
        audio.prepare_speech(p)
    assert str(e.value) == (
        f"audio {str(p)!r}: unsupported format '.xyz'. Supported: .wav, .flac, .ogg, .oga, .mp3, "
        ".m4a, .aac, .opus, .mp4, .mov, .m4v, .webm, .mkv, .avi. Fix: convert it to wav (16 kHz "
        "mono is ideal)."
    )


def test_nan_samples(tmp_path):
    x = _speech_like(16000, 1.0)
    x[100] = np.nan
    p = _wav(tmp_path, "nan.wav", x, subtype="FLOAT")
    with pytest.raises(audio.AudioInputError) as e:
        audio.prepare_speech(p)
    assert str(e.value) == (
        f"audio {str(p)!r}: contains NaN or infinite samples. Fix: re-export the recording "
        "(a float wav with invalid values)."
    )


def test_missing_file(tmp_path):
    p = tmp_path / "nope.wav"
    with pytest.raises(InputError) as e:
        audio.prepare_speech(p)
    assert str(e.value) == f"audio {str(p)!r}: file not found. Fix: pass an existing path."


def test_unreadable_url():
    url = "https://127.0.0.1:9/speech.wav"
    with pytest.raises(InputError) as e:
        audio.load_audio(url)
    msg = str(e.value)
    assert msg.startswith(f"audio {url!r}: cannot be read (")
    assert msg.endswith(
        "Fix: check the URL and your network / credentials, or download the file and pass a local path."
    )


@pytest.mark.golden
def test_golden_nothing_written_on_error(tmp_path, golden):
    encoder = _tiny_encoder(golden)
    cache = tmp_path / "cache"
    cache.mkdir()
    bad = _speech_like(16000, 1.0)
    bad[5] = np.inf
    with pytest.raises(audio.AudioInputError) as e:
        audio.embed_audio(bad, encoder, cache_dir=cache)
    assert (
        str(e.value)
        == "embed_audio: waveform contains NaN or infinite samples. Fix: check the input file."
    )
    p = _wav(tmp_path, "silence.wav", np.zeros(16000, np.float32))
    with pytest.raises(audio.AudioInputError):
        audio.embed_audio(audio.prepare_speech(p), encoder, cache_dir=cache)
    assert list(cache.iterdir()) == []


# ---------------------------------------------------------------------------------------
# two speakers, padding, cache


def test_para_unequal_lengths_refused_like_the_plan():
    a = np.ones(10, np.float32)
    b = 2 * np.ones(6, np.float32)
    with pytest.raises(audio.AudioInputError) as e:
        audio.combine_speakers(a, b, "para")
    assert str(e.value) == (
        "audio_type 'para' (both speak at once): the two tracks have 10 and 6 samples at 16 kHz; "
        "'para' sums them sample by sample for the soundtrack, so they must be equally long (the "
        "reference fails with 'operands could not be broadcast'). Fix: trim or pad the two "
        "recordings to the same length, or use audio_type 'add' if they speak one after the other."
    )
    t = audio.combine_speakers(a, 2 * a, "para")  # equal lengths: the tracks as they are
    np.testing.assert_array_equal(t.sum, 3 * np.ones(10))
    assert t.real_samples == (10, 10)


def test_add_is_sequential_float64():
    a = np.ones(3, np.float32)
    b = 2 * np.ones(2, np.float32)
    t = audio.combine_speakers(a, b, "add")
    np.testing.assert_array_equal(t.person1, [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(t.person2, [0, 0, 0, 2, 2])
    assert t.person1.dtype == np.float64 and t.sum.dtype == np.float64


def test_silent_second_person_is_zeros():
    a = np.ones(4, np.float32)
    t = audio.combine_speakers(a, None, "para")
    np.testing.assert_array_equal(t.person2, np.zeros(4))


def test_combine_bad_mode():
    with pytest.raises(audio.AudioInputError) as e:
        audio.combine_speakers(np.ones(2), np.ones(2), "mix")
    assert str(e.value) == "audio_type 'mix': allowed 'para' (simultaneous) or 'add' (turns)."


@pytest.mark.parametrize("n,needed", [(28640, 46), (28640, 44), (16000, 26), (1, 81), (83200, 131)])
def test_pad_waveform_for_frames(n, needed):
    x = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    p = audio.pad_waveform_for_frames(x, 16000, needed)
    assert int(len(p.waveform) / 16000 * 25) >= needed
    assert p.frames == int(len(p.waveform) / 16000 * 25)
    assert p.real_samples == n
    np.testing.assert_array_equal(p.waveform[:n], x)
    assert not p.waveform[n:].any()
    if int(n / 16000 * 25) >= needed:
        assert p.waveform is x
    else:  # half a frame of margin, not more
        assert len(p.waveform) == math.ceil((needed + 0.5) * 640)


@pytest.mark.golden
def test_golden_embedding_cache_hit_and_metadata(tmp_path, golden):
    encoder = _tiny_encoder(golden)
    x = _speech_like(16000, 1.0)
    first = audio.embed_audio(x, encoder, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"
    meta = audio.read_embedding_metadata(files[0])
    assert meta["sample_rate"] == "16000"
    assert meta["frames"] == "25" and first.shape[0] == 25
    assert float(meta["duration_s"]) == 1.0
    assert meta["model_id"] == str(golden.weights / "wav2vec2")

    def refuse(_):
        raise AssertionError("cache miss: wav2vec2 ran again")

    encoder.embed = refuse
    second = audio.embed_audio(x, encoder, cache_dir=tmp_path)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    # another waveform is another key
    with pytest.raises(AssertionError, match="cache miss"):
        audio.embed_audio(x * 0.5, encoder, cache_dir=tmp_path)


def test_plot_loudness_and_embedding_figures():
    import matplotlib

    matplotlib.use("Agg")
    x = _speech_like(16000, 1.0)
    fig = audio.plot_loudness(x, audio.loudness_norm(x))
    assert len(fig.axes) == 4
    assert fig.axes[1].get_title().startswith("loudness-normalised: -23.00 LUFS")
    fig = audio.plot_embedding(torch.zeros(25, 3, 48) + 1.0)
    assert fig.axes[0].get_title() == "audio_embedding [25, 3, 48]: per-frame L2 norm by layer"


def _encode_video(path, with_audio: bool, seconds: float = 1.0):
    import av

    sr = 16000
    x = _speech_like(sr, seconds)
    with av.open(str(path), "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("aac", rate=sr) if with_audio else None
        if a is not None:
            a.layout = "mono"
        for i in range(int(25 * seconds)):
            img = np.full((48, 64, 3), (i * 9) % 255, np.uint8)
            for packet in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in v.encode(None):
            out.mux(packet)
        if a is not None:
            for i in range(0, len(x), 1024):
                frame = av.AudioFrame.from_ndarray(
                    x[i : i + 1024][None], format="fltp", layout="mono"
                )
                frame.sample_rate = sr
                for packet in a.encode(frame):
                    out.mux(packet)
            for packet in a.encode(None):
                out.mux(packet)


def test_audio_track_of_video(tmp_path):
    p = tmp_path / "talk.mp4"
    _encode_video(p, with_audio=True)
    got = audio.load_audio(p)
    assert abs(len(got) - 16000) < 1600 and np.abs(got).max() > 0.05


def test_video_without_audio_track(tmp_path):
    p = tmp_path / "mute.mp4"
    _encode_video(p, with_audio=False)
    with pytest.raises(audio.AudioInputError) as e:
        audio.load_audio(p)
    assert str(e.value) == (
        f"audio {str(p)!r}: the container has no audio track. Fix: pass a file with speech audio."
    )


def test_misnamed_mp3_as_wav_still_decodes(tmp_path):
    mp3 = tmp_path / "a.mp3"
    _encode_pyav(mp3, "mp3", "mp3", 16000, _speech_like(16000, 1.0))
    wav = tmp_path / "a.wav"
    wav.write_bytes(mp3.read_bytes())
    # libsndfile (mpg123) or FFmpeg decode it; the two mp3 decoders agree to float rounding
    np.testing.assert_allclose(audio.load_audio(wav), audio.load_audio(mp3), rtol=0, atol=1e-5)
