"""mp4 writing / reading through PyAV: round trip, audio trimming, atomicity, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlib.io import InputError
from mtlib.media.video import frame_strip, read_mp4, to_uint8_frames, write_mp4

SR = 16000


def smooth_video(n=41, h=48, w=64) -> torch.Tensor:
    """A moving gradient in [-1, 1], [3, N, H, W]: compresses well, so decoded ≈ input."""
    t = torch.arange(n)[:, None, None] / n
    yy = torch.linspace(-1, 1, h)[None, :, None]
    xx = torch.linspace(-1, 1, w)[None, None, :]
    r = torch.sin(3 * xx + 2 * t) * 0.8 + 0 * yy
    g = torch.cos(2 * yy - t) * 0.8 + 0 * xx
    b = (xx * yy).expand(n, h, w) * 0.8
    return torch.stack([r.expand(n, h, w), g.expand(n, h, w), b])


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_uint8_conversion_truncates_like_the_reference():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.5, 1.0, 2.0]).view(3, 1, 1, 2)
    out = to_uint8_frames(x)  # [1, 1, 2, 3]
    # (x+1)/2*255: -> clip 0, 0, 127.5 -> 127, 191.25 -> 191, 255, clip 255
    assert out.dtype == np.uint8
    assert out[0, 0, :, :].T.tolist() == [[0, 0], [127, 191], [255, 255]]


def test_round_trip_frames_fps_audio_and_metadata(tmp_path):
    video = smooth_video()
    path = tmp_path / "out.mp4"
    meta = {"seed": 7, "config": {"generation": {"frame_num": 25}}}
    assert write_mp4(video, path, fps=25, audio=(tone(3.0), SR), metadata=meta) == path
    frames, audio, info = read_mp4(path)
    assert frames.shape == (41, 48, 64, 3) and frames.dtype == np.uint8
    assert info["fps"] == 25.0 and info["n_frames"] == 41
    assert info["video_codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["metadata"] == meta
    # lossy, but close to the input on a smooth video
    err = np.abs(frames.astype(int) - to_uint8_frames(video).astype(int))
    assert err.mean() < 3.0
    # the 3 s tone is cut to the video's 41 / 25 s
    samples, sr = audio
    assert sr == SR and info["audio_codec"] == "aac"
    assert info["audio_duration_s"] == pytest.approx(41 / 25, abs=1 / SR)
    assert abs(samples.shape[0] - 41 * SR // 25) <= 1
    assert 0.15 < np.sqrt(np.mean(samples[2000:-2000] ** 2)) < 0.25  # the tone is there (rms 0.21)


def test_audio_from_file_and_uint8_input(tmp_path):
    import soundfile as sf

    wav = tmp_path / "speech.wav"
    sf.write(str(wav), np.stack([tone(0.5), tone(0.5)], axis=1), SR)  # stereo, shorter than video
    frames_in = to_uint8_frames(smooth_video(n=25))
    path = write_mp4(frames_in, tmp_path / "v.mp4", audio=wav)
    frames, (samples, sr), info = read_mp4(path)
    assert frames.shape == (25, 48, 64, 3)
    assert info["audio_duration_s"] == pytest.approx(1.0, abs=1 / SR)  # padded with silence to 1 s
    assert np.abs(samples[-2000:]).max() < 0.05


def test_no_audio_no_audio_stream(tmp_path):
    frames, audio, info = read_mp4(write_mp4(smooth_video(n=5), tmp_path / "a.mp4"))
    assert frames.shape[0] == 5 and audio is None and info["metadata"] == {}


def test_same_input_same_decoded_frames(tmp_path):
    video = smooth_video(n=9)
    a = read_mp4(write_mp4(video, tmp_path / "a.mp4"))[0]
    b = read_mp4(write_mp4(video, tmp_path / "b.mp4"))[0]
    assert np.array_equal(a, b)


def test_failure_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import av

    path = tmp_path / "out.mp4"
    path.write_bytes(b"previous")
    real = av.VideoFrame.from_ndarray
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_mp4(smooth_video(n=9), path)
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no temp file left
    monkeypatch.undo()
    new = tmp_path / "new.mp4"
    with pytest.raises(InputError, match="even height and width"):
        write_mp4(torch.zeros(3, 2, 47, 64), new)
    assert not new.exists()


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(2, 4, 8, 8), r"\[3, N, H, W\]"),
        (np.zeros((4, 8, 8), np.uint8), r"\[N, H, W, 3\]"),
    ],
)
def test_bad_frames_are_refused(tmp_path, bad, message):
    with pytest.raises(InputError, match=message):
        write_mp4(bad, tmp_path / "x.mp4")
    assert not (tmp_path / "x.mp4").exists()


def test_frame_strip_figure():
    import matplotlib

    matplotlib.use("Agg")
    fig = frame_strip(smooth_video(n=20), n=4, title="tiny")
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == ["frame 0", "frame 6", "frame 13", "frame 19"]
