"""Notebook 01's view: crop, person masks, waveforms, embedding (`preprocessing_view`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from mtlib.extras import require
from mtlib.inspect.widgets.view import RenderedView, View, _pyplot, is_interactive
from mtlib.io import InputError


def _audio_list(audio: Any) -> list[str]:
    if audio is None or audio == "":
        return []
    if isinstance(audio, str | os.PathLike):
        return [str(audio)]
    return [str(a) for a in audio if a]


def _local(path: str) -> str:
    from mtlib.io import is_remote, resolve_local

    return path if is_remote(path) else str(resolve_local(path))


def render_preprocessing(state: dict) -> RenderedView:
    """01: crop + person masks on the bucket, per-person waveforms (loudness-normalised),
    and the wav2vec2 embedding heatmap when an encoder was given."""
    import numpy as np

    from mtlib.media import audio as A
    from mtlib.media import image as I

    image = state["image"]
    tracks_in = [a for a in (state["audio"], state.get("audio_b", "")) if a]
    if not tracks_in:
        raise InputError("audio: give one speech file (or two for two speakers).")
    persons = len(tracks_in)
    src = _local(image)
    prepared = I.prepare_image(src, state["size"], state["buckets"])
    g = prepared.geometry
    H, W = prepared.target_hw
    masks = I.ref_target_masks(g.src_h, g.src_w, H, W, persons)  # [3, H/8, W/8]
    _pyplot()
    crop_fig = I.plot_crop(src, prepared, masks)

    normed, lufs_raw, lufs = [], [], []
    for i, a in enumerate(tracks_in):
        x = A.load_audio(_local(a), what=f"speaker {i + 1} audio")
        y = A.prepare_speech(_local(a), what=f"speaker {i + 1} audio")
        normed.append(y)
        lufs_raw.append(A.integrated_loudness(x, what=f"speaker {i + 1} audio"))
        lufs.append(A.integrated_loudness(y))
    if persons == 2:
        sp = A.combine_speakers(normed[0], normed[1], state["audio_type"])
        person_tracks = [sp.person1, sp.person2]
    else:
        person_tracks = [normed[0]]
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(person_tracks), 1, figsize=(10, 1.8 * len(person_tracks) + 0.6), squeeze=False
    )
    for i, (ax, t) in enumerate(zip(axes[:, 0], person_tracks, strict=True)):
        t = np.asarray(t, dtype=np.float32)
        ax.plot(np.arange(len(t)) / A.SAMPLE_RATE, t, lw=0.5, color=("tab:red", "tab:blue")[i])
        ax.set_ylabel(f"person {i + 1}")
        ax.set_title(
            f"person {i + 1}: {len(t)} samples ({len(t) / A.SAMPLE_RATE:.2f} s), "
            f"{A.audio_frames(len(t))} embedding frames; speaker {i + 1} loudness "
            f"{lufs_raw[i]:.1f} -> {lufs[i]:.1f} LUFS",
            fontsize=9,
        )
    axes[-1, 0].set_xlabel(f"s ({state['audio_type']})" if persons == 2 else "s")
    fig.tight_layout()
    figures = [crop_fig, fig]
    emb_shapes = []
    encoder = state.get("audio_encoder")
    if encoder is not None:
        for i, t in enumerate(person_tracks):
            emb = A.embed_audio(np.asarray(t, dtype=np.float32), encoder)
            emb_shapes.append(tuple(emb.shape))
            figures.append(A.plot_embedding(emb, title=f"person {i + 1} audio_embedding"))
    lines = [
        f"image {src}: {g.src_w}x{g.src_h} (w x h) -> bucket {prepared.bucket} ({state['size']}, "
        f"{state['buckets']} table) -> {W}x{H}, resized {g.resized_w}x{g.resized_h}, crop at (top {g.top}, left {g.left})",
        f"ref_target_masks {list(masks.shape)}: person pixels {[int(m.sum()) for m in masks[:2]]}, "
        f"background {int(masks[2].sum())}",
    ]
    for i, t in enumerate(person_tracks):
        lines.append(
            f"person {i + 1} track: {len(t)} samples at 16 kHz = {len(t) / A.SAMPLE_RATE:.3f} s, "
            f"{A.audio_frames(len(t))} embedding frames"
        )
    if encoder is None:
        lines.append(
            "audio_embedding: no audio_encoder given (pass audio_encoder=load_wav2vec(...) to draw it)"
        )
    else:
        lines += [f"person {i + 1} audio_embedding {list(s)}" for i, s in enumerate(emb_shapes)]
    data = {
        "bucket": prepared.bucket,
        "target_hw": (H, W),
        "src_hw": (g.src_h, g.src_w),
        "mask_shape": tuple(masks.shape),
        "mask_pixels": [int(m.sum()) for m in masks],
        "persons": persons,
        "track_samples": [len(t) for t in person_tracks],
        "embedding_frames": [A.audio_frames(len(t)) for t in person_tracks],
        "lufs_raw": lufs_raw,
        "lufs": lufs,
        "embedding_shapes": emb_shapes,
    }
    return RenderedView("01 preprocessing", text="\n".join(lines), figures=figures, data=data)


def _upload_into(text_widget, upload) -> None:
    """Write a FileUpload's file to a temporary path and put that path in the text field."""

    def on_upload(change: dict) -> None:
        files = change["new"]
        if not files:
            return
        f = files[0]
        d = Path(tempfile.mkdtemp(prefix="mtlib-upload-"))
        path = d / Path(f["name"]).name
        path.write_bytes(bytes(f["content"]))
        text_widget.value = str(path)

    upload.observe(on_upload, names="value")


def preprocessing_view(
    image: str = "data/portrait.png",
    audio: str | list[str] = "data/speech_1p79s.wav",
    size: str = "multitalk-480",
    buckets: str = "tiny",
    audio_type: str = "para",
    audio_encoder: Any = None,
    interactive: bool | None = None,
) -> View:
    """01: pick the image and one or two speech files (path / URL, or upload), the size
    bucket table and the two-speaker mode; crop, masks, waveforms (and the embedding when
    `audio_encoder` is an mtlib.models.wav2vec.AudioEncoder) redraw on change."""
    files = _audio_list(audio)
    if len(files) > 2:
        raise InputError(f"audio: {len(files)} files; MultiTalk takes one or two speakers.")
    state = {
        "image": str(image),
        "audio": files[0] if files else "",
        "audio_b": files[1] if len(files) > 1 else "",
        "size": size,
        "buckets": buckets,
        "audio_type": audio_type,
        "audio_encoder": audio_encoder,
    }

    def controls() -> dict:
        w = require("ipywidgets", "notebooks", "mtlib.inspect.widgets")

        lay = {"style": {"description_width": "110px"}, "layout": w.Layout(width="520px")}
        return {
            "image": lambda: w.Text(description="image", continuous_update=False, **lay),
            "audio": lambda: w.Text(description="speaker 1 audio", continuous_update=False, **lay),
            "audio_b": lambda: w.Text(
                description="speaker 2 audio",
                placeholder="(empty: one speaker)",
                continuous_update=False,
                **lay,
            ),
            "size": lambda: w.Dropdown(
                options=["multitalk-480", "multitalk-720"], description="size"
            ),
            "buckets": lambda: w.ToggleButtons(options=["official", "tiny"], description="buckets"),
            "audio_type": lambda: w.ToggleButtons(
                options=["para", "add"], description="two speakers"
            ),
        }

    def uploads(view: View) -> None:
        w = require("ipywidgets", "notebooks", "mtlib.inspect.widgets")

        if view.extra_box.children:
            return
        ups = []
        for key, accept in (
            ("image", "image/*"),
            ("audio", "audio/*,video/*"),
            ("audio_b", "audio/*,video/*"),
        ):
            up = w.FileUpload(
                accept=accept,
                multiple=False,
                description=f"upload {key.replace('_b', ' 2')}",
                layout=w.Layout(width="auto"),
            )
            _upload_into(view.controls[key], up)
            ups.append(up)
        view.uploads = ups
        view.extra_box.children = (w.HBox(ups),)

    return View(
        "01 preprocessing",
        render_preprocessing,
        state,
        controls() if is_interactive(interactive) else None,
        interactive,
        after_render=uploads,
    )
