"""mtlib.inspect.widgets: each view driven programmatically, interactive (ipywidgets objects without a
frontend) and headless (no widget built, content equal to render(state))."""

from __future__ import annotations

import datetime
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from mtlib.inspect import widgets as W  # noqa: E402
from mtlib.io import InputError, project_root  # noqa: E402

DATA = project_root() / "data"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


# ------------------------------------------------------------------------------ headless rule


def test_is_interactive_rule(monkeypatch):
    for var in ("MTLIB_HEADLESS", "PAPERMILL_EXECUTION", "MTLIB_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    assert W.is_interactive(True) is True
    assert W.is_interactive(False) is False
    # plain python (pytest): no IPython kernel, no frontend
    assert W.is_interactive(None) is False
    monkeypatch.setenv("MTLIB_INTERACTIVE", "1")
    assert W.is_interactive(None) is True
    monkeypatch.setenv("PAPERMILL_EXECUTION", "1")
    assert W.is_interactive(None) is False  # batch wins over the opt-in
    monkeypatch.delenv("PAPERMILL_EXECUTION")
    monkeypatch.setenv("MTLIB_HEADLESS", "0")
    assert W.is_interactive(None) is True  # "0" means unset


def test_is_interactive_follows_the_kernels_stdin(monkeypatch):
    import IPython

    for var in ("MTLIB_HEADLESS", "PAPERMILL_EXECUTION", "MTLIB_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    kernel = SimpleNamespace(_allow_stdin=False)  # nbclient / nbval execute without stdin
    monkeypatch.setattr(IPython, "get_ipython", lambda: SimpleNamespace(kernel=kernel))
    assert W.is_interactive(None) is False
    kernel._allow_stdin = True  # JupyterLab offers stdin
    assert W.is_interactive(None) is True


# ------------------------------------------------------------------------------ 02 plan


def test_plan_view_slider_shows_violation_and_fix_button_repairs_it():
    v = W.plan_view(
        "tiny", image_size=(480, 832), audio_seconds=1.79, frame_num=41, interactive=True
    )
    assert v.interactive and v.widget is not None
    assert v.rendered.data["valid"] is True
    assert v.rendered.data["violations"] == []
    assert v.fix_buttons == []

    v.controls["frame_num"].value = 43
    r = v.rendered
    assert r.data["valid"] is False
    assert r.data["violations"] == ["frame_num_4n_plus_1"]
    assert "<span class='mtl-rule hit'>frame_num_4n_plus_1</span>" in r.html
    assert "<span class='mtl-rule'>audio_longer_than_frame_num</span>" in r.html
    assert (
        "RuntimeError: shape &#x27;[1, 11, 4, 12, 6]&#x27; is invalid for input of size 3312"
        in r.html
    )
    labels = [b.description for b in v.fix_buttons]
    assert labels == ["apply fix: frame_num = 41", "apply fix: frame_num auto + pad audio"]

    v.fix_buttons[0].click()
    assert v.controls["frame_num"].value == 41
    assert v.state["frame_num"] == 41
    assert v.rendered.data["violations"] == []
    assert v.rendered.data["frame_num"] == 41
    assert "mtl-rule hit" not in v.rendered.html
    assert v.fix_buttons == []


def test_plan_view_second_fix_switches_to_auto_and_pad():
    v = W.plan_view(
        "tiny", image_size=(480, 832), audio_seconds=1.79, frame_num=43, interactive=True
    )
    before = v.renders
    v.fix_buttons[1].click()
    assert v.renders == before + 1  # two controls changed, one render
    assert v.controls["frame_num_auto"].value is True
    assert v.rendered.data["valid"] is True
    assert v.rendered.data["frame_num"] == 45  # smallest 4n+1 covering 1.79 s (45 frames)
    assert "short_audio=pad" in v.rendered.data["policy_actions"]


def test_plan_view_audio_and_motion_rules():
    v = W.plan_view(
        "tiny",
        image_size=(480, 832),
        audio_seconds=1.79,
        frame_num=45,
        short_audio="error",
        interactive=True,
    )
    assert v.rendered.data["violations"] == ["audio_longer_than_frame_num"]
    assert [f.changes for f in v.rendered.data["fixes"]] == [
        {"frame_num": 41, "frame_num_auto": False},
        {"short_audio": "pad"},
        {"frame_num_auto": True, "short_audio": "pad"},
    ]
    v.set(frame_num=41)
    assert v.rendered.data["valid"] is True

    v.set(mode="streaming", motion_frame=10)
    assert v.rendered.data["violations"] == ["motion_frame_4n_plus_1"]
    v.fix_buttons[0].click()
    assert v.controls["motion_frame"].value == 9
    assert v.rendered.data["valid"] is True

    v.controls["audio_seconds_b"].value = 1.5  # second speaker, 'para' needs equal lengths
    assert "para_equal_length" in v.rendered.data["violations"]
    fix = [b for b in v.fix_buttons if b.description == "apply fix: speaker 2 = 1.79 s"]
    assert len(fix) == 1
    fix[0].click()
    assert v.controls["audio_seconds_b"].value == pytest.approx(1.79)
    assert "para_equal_length" not in v.rendered.data["violations"]


def test_plan_view_headless_equals_render_and_builds_no_widget():
    v = W.plan_view(
        "tiny", image_size=(480, 832), audio_seconds=1.79, frame_num=43, interactive=False
    )
    assert v.widget is None and v.controls == {}
    again = W.render_plan(v.state)
    assert v.rendered.text == again.text
    assert v.rendered.html == again.html
    assert v.rendered.data["violations"] == ["frame_num_4n_plus_1"]
    assert "INVALID: 1 violation(s)" in v.rendered.text


def test_plan_view_reads_image_header_and_config_audio():
    v = W.plan_view("tiny", image_size=str(DATA / "landscape_16x9.png"), interactive=False)
    assert (v.state["image_w"], v.state["image_h"]) == (640, 360)
    assert v.state["audio_seconds"] == pytest.approx(1.79)  # the tiny preset's speech_1p79s.wav
    assert v.rendered.data["valid"] is True


def test_plan_view_audio_files_give_the_durations():
    v = W.plan_view(
        "tiny", image_size=(640, 360), audio=[str(DATA / "speech_5s.wav")], interactive=False
    )
    assert v.state["audio_seconds"] == pytest.approx(5.0) and v.state["audio_seconds_b"] == 0.0
    assert v.rendered.data["frame_num"] == 81  # clip mode, auto: capped at one 81-frame clip


def test_plan_view_headless_shows_static_content(capsys, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj, **kw: shown.append(obj))
    v = W.plan_view(
        "tiny", image_size=(480, 832), audio_seconds=1.79, frame_num=41, interactive=False
    )
    v._ipython_display_()
    # the HTML with the plain-text plan beside it (for logs), then the frame-grouping figure
    assert shown[0] == {"text/html": v.rendered.html, "text/plain": v.rendered.text}
    assert len(shown) == 2 and shown[1] is v.rendered.figures[0]


# ------------------------------------------------------------------------------ 01 preprocessing


def test_preprocessing_view_redraws_on_bucket_and_speakers():
    v = W.preprocessing_view(
        str(DATA / "portrait.png"), str(DATA / "speech_1p79s.wav"), buckets="tiny", interactive=True
    )
    d = v.rendered.data
    assert d["bucket"] == "2.00" and d["target_hw"] == (96, 48)
    assert d["persons"] == 1 and d["track_samples"] == [28640] and d["embedding_frames"] == [44]
    assert d["mask_shape"] == (3, 12, 6)
    assert len(v.rendered.figures) == 2  # crop + masks, waveform (no encoder: no embedding)

    v.controls["buckets"].value = "official"
    assert v.rendered.data["bucket"] == "1.86" and v.rendered.data["target_hw"] == (832, 448)

    v.set(image=str(DATA / "two_person_16x9.png"), audio_b=str(DATA / "speech_b_1p79s.wav"))
    d = v.rendered.data
    assert d["persons"] == 2 and d["track_samples"] == [28640, 28640]
    assert d["mask_pixels"][0] > 0 and d["mask_pixels"][1] > 0  # left / right halves

    v.controls["audio_type"].value = "add"  # turns: each track is a + b long
    assert v.rendered.data["track_samples"] == [57280, 57280]


def test_preprocessing_view_bad_path_shows_the_error_in_place():
    v = W.preprocessing_view(
        str(DATA / "portrait.png"), str(DATA / "speech_1p79s.wav"), interactive=True
    )
    v.controls["image"].value = "no/such/image.png"
    assert v.rendered.data["error"] == (
        "InputError: image 'no/such/image.png': file not found. Fix: pass an existing path."
    )
    assert v.rendered.figures == []


def test_preprocessing_upload_writes_a_file_and_selects_it():
    v = W.preprocessing_view(
        str(DATA / "portrait.png"), str(DATA / "speech_1p79s.wav"), interactive=True
    )
    content = (DATA / "landscape_16x9.png").read_bytes()
    up = v.uploads[0]
    up.value = (
        {
            "name": "mine.png",
            "type": "image/png",
            "size": len(content),
            "content": memoryview(content),
            "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        },
    )
    assert v.controls["image"].value.endswith("mine.png")
    assert v.rendered.data["src_hw"] == (360, 640)


def test_preprocessing_headless_equals_render():
    v = W.preprocessing_view(
        str(DATA / "portrait.png"), str(DATA / "speech_1p79s.wav"), interactive=False
    )
    again = W.render_preprocessing(v.state)
    assert v.widget is None
    assert v.rendered.text == again.text and v.rendered.data == again.data


def test_preprocessing_embedding_with_an_encoder():
    class FakeEncoder:  # the AudioEncoder surface embed_audio uses
        model_id, fingerprint = "fake", "0"

        def embed(self, x):
            import torch

            n = int(len(x) / 16000 * 25)
            return torch.arange(n * 2 * 3, dtype=torch.float32).reshape(n, 2, 3)

    v = W.preprocessing_view(
        str(DATA / "portrait.png"),
        str(DATA / "speech_1p79s.wav"),
        audio_encoder=FakeEncoder(),
        interactive=False,
    )
    assert v.rendered.data["embedding_shapes"] == [(44, 2, 3)]
    assert len(v.rendered.figures) == 3


# ------------------------------------------------------------------------------ 03 video


def _write_run(tmp_path, steps=3):
    """A run dir: a 9-frame mp4 (frame i has gray level 20 * i) and a trace whose latent_in
    of step s has channel mean s (latent frame t adds 10 * t)."""
    import torch
    from safetensors.torch import save_file

    from mtlib.media.video import write_mp4

    run = tmp_path / "run"
    frames = np.stack([np.full((32, 16, 3), 20 * i, np.uint8) for i in range(9)])
    write_mp4(frames, run / "video.mp4", audio=(np.zeros(16000, np.float32), 16000))
    tdir = run / "trace"
    tdir.mkdir()
    tensors, lines = {}, []
    for s in range(steps):
        lat = torch.full((1, 4, 3, 2, 2), float(s)) + 10 * torch.arange(3.0).reshape(1, 1, 3, 1, 1)
        name = f"e2e.clip0.step{s}.latent_in"
        tensors[name] = lat
        lines.append(
            {
                "i": s,
                "name": name,
                "base": name,
                "call": 0,
                "shape": list(lat.shape),
                "dtype": "float32",
                "shard": "tensors-00000.safetensors",
            }
        )
    save_file(tensors, str(tdir / "tensors-00000.safetensors"))
    (tdir / "index.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return run


def test_video_view_scrubs_frames_and_latents(tmp_path):
    run = _write_run(tmp_path)
    v = W.video_view(run, interactive=True)
    d = v.rendered.data
    assert d["n_frames"] == 9 and d["frame"] == 0
    assert d["steps"] == [f"e2e.clip0.step{s}.latent_in" for s in range(3)]
    assert v.controls["frame"].max == 8 and v.controls["step"].max == 2
    assert v.controls["latent_frame"].max == 2

    v.controls["frame"].value = 5
    assert v.rendered.data["frame"] == 5
    assert abs(v.rendered.data["frame_mean"] - 100) < 3  # H.264 is lossy

    v.controls["step"].value = 2
    v.controls["latent_frame"].value = 1
    assert v.rendered.data["step_point"] == "e2e.clip0.step2.latent_in"
    assert v.rendered.data["latent_mean"] == pytest.approx(12.0)
    assert type(v.player).__name__ == "Video" and v.player.format == "mp4"


def test_video_view_headless_from_mp4_path(tmp_path):
    run = _write_run(tmp_path)
    v = W.video_view(run / "video.mp4", frame=3, interactive=False)
    assert v.widget is None
    assert v.rendered.data["frame"] == 3 and v.rendered.data["steps"] == []
    assert v.rendered.text == W.render_video(v.state).text
    assert len(v.rendered.media) == 1  # the player, linked (not embedded) by default


def test_video_view_missing_video(tmp_path):
    with pytest.raises(InputError, match="no .mp4 in"):
        W.video_view(tmp_path, interactive=False)


# ------------------------------------------------------------------------------ 04 compare


class _Row(SimpleNamespace):
    pass


class FakeComparison:
    """The Comparison surface compare_view uses (rows, compared, failures, first_divergence,
    summary, table, plot_pipeline, plot_heatmap), for when mtlib.inspect.compare is absent."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        bad = "b" in str(b)
        self.rows = [
            _Row(name="x", mode="tensor", failed=False),
            _Row(name="y", mode="tensor", failed=bad),
            _Row(name="z", mode="tensor", failed=False),
        ]
        self.plotted = []

    @property
    def compared(self):
        return self.rows

    @property
    def failures(self):
        return [r for r in self.rows if r.failed]

    @property
    def first_divergence(self):
        return next((r.name for r in self.rows if r.failed), None)

    def summary(self):
        return f"{self.a} vs {self.b}: first divergence {self.first_divergence}"

    def table(self):
        return "\n".join(f"{r.name} {'fail' if r.failed else 'pass'}" for r in self.rows)

    def plot_pipeline(self):
        import matplotlib.pyplot as plt

        return plt.figure()

    def plot_heatmap(self, name):
        import matplotlib.pyplot as plt

        fig = plt.figure()
        fig.suptitle(name)
        return fig


def test_compare_view_with_a_fake_comparison(tmp_path):
    made = []

    def comparer(a, b):
        made.append((a, b))
        return FakeComparison(a, b)

    v = W.compare_view(
        str(tmp_path / "a"), str(tmp_path / "a2"), comparer=comparer, interactive=True
    )
    assert v.rendered.data["first_divergence"] is None
    assert v.rendered.data["point"] == "z"  # no divergence: the last tensor point
    v.controls["run_b"].value = str(tmp_path / "b")
    assert v.rendered.data["first_divergence"] == "y" and v.rendered.data["point"] == "y"
    assert v.rendered.figures[1]._suptitle.get_text() == "y"
    assert [o[1] for o in v.controls["point"].options] == ["", "x", "y", "z"]
    v.controls["point"].value = "x"
    assert v.rendered.data["point"] == "x"
    assert len(made) == 2  # a point change re-uses the comparison
    h = W.compare_view(
        str(tmp_path / "a"), str(tmp_path / "b"), comparer=comparer, interactive=False
    )
    assert h.rendered.text == W.render_compare(h.state).text
    assert "first divergence y" in h.rendered.text


def test_compare_view_reuses_a_given_comparison():
    made = []
    given = FakeComparison("a", "b")
    v = W.compare_view(
        "a", "b", comparison=given, comparer=lambda a, b: made.append(1), interactive=False
    )
    assert made == [] and v.rendered.data["first_divergence"] == "y"


def test_compare_view_needs_two_runs():
    v = W.compare_view("", "", comparer=FakeComparison, interactive=True)
    assert v.rendered.data["error"].startswith("InputError: compare: pick two runs")


def test_compare_view_with_mtlib_compare(tmp_path):
    from mtlib.inspect import compare

    a, b = compare.demo_traces(tmp_path)
    v = W.compare_view(str(a), str(b), interactive=True)
    want = compare.compare(str(a), str(b))
    assert v.rendered.data["first_divergence"] == want.first_divergence
    assert v.rendered.data["points"] == [r.name for r in want.rows]
    assert len(v.rendered.figures) == 2
