"""Notebook 03's view: frame scrubber, latent scrubber, player (`video_view`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from mtlib.extras import require
from mtlib.inspect.widgets.preprocessing import _local
from mtlib.inspect.widgets.view import RenderedView, View, _pyplot, is_interactive
from mtlib.io import InputError


def _find_mp4(source: str | os.PathLike) -> Path:
    p = Path(_local(str(source)))
    if p.is_dir():
        found = sorted(p.glob("*.mp4")) or sorted(p.glob("**/*.mp4"))
        preferred = [f for f in found if f.name == "video.mp4"]
        if not found:
            raise InputError(
                f"video: no .mp4 in {str(p)!r}. Fix: pass the run directory of a finished "
                "03_inference run, or the mp4 path."
            )
        return (preferred or found)[0]
    if not p.exists():
        raise InputError(
            f"video {str(source)!r}: not found. Fix: pass a run directory or an mp4 path."
        )
    return p


class _ShardTrace:
    """Minimal reader of an mtlib trace directory's full tensors (tensors-*.safetensors keyed
    by point name), used when mtlib.trace has no load_trace yet."""

    def __init__(self, directory: Path):
        from safetensors import safe_open

        self.path = directory
        self._where: dict[str, Path] = {}
        for shard in sorted(directory.glob("tensors-*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                for k in f.keys():
                    self._where[k] = shard
        self.names = list(self._where)

    def has_tensor(self, name: str) -> bool:
        return name in self._where

    def tensor(self, name: str):
        from safetensors import safe_open

        with safe_open(str(self._where[name]), framework="pt") as f:
            return f.get_tensor(name)


def _open_trace(path: Path):
    from mtlib import trace as T

    if hasattr(T, "load_trace"):
        return T.load_trace(path)
    if not (path / "tensors-00000.safetensors").exists() and (path / "trace").is_dir():
        path = path / "trace"
    return _ShardTrace(path)


def latent_steps(tr, point: str = "latent_in") -> list[str]:
    """Names of the per-step latent points stored in full, in (clip, step) order."""
    import re

    pat = re.compile(rf"(?:^|\.)clip(\d+)\.step(\d+)\.{re.escape(point)}$")
    found = []
    for n in tr.names:
        m = pat.search(n)
        if m and tr.has_tensor(n):
            found.append(((int(m.group(1)), int(m.group(2))), n))
    return [n for _, n in sorted(found)]


def latent_image(latent) -> Any:
    """[.., C, T, h, w] latent -> [T, h, w] numpy: the mean over channels per latent frame."""
    import numpy as np

    x = (
        latent.detach().float().cpu().numpy()
        if hasattr(latent, "detach")
        else np.asarray(latent, np.float32)
    )
    while x.ndim > 4:
        x = x[0]
    if x.ndim != 4:
        raise InputError(
            f"latent of shape {list(x.shape)}: expected [C, T, h, w] (or with a batch dim)."
        )
    return x.mean(axis=0)


def render_video(state: dict) -> RenderedView:
    """03: one video frame (`frame`), the channel mean of one latent (`step`, `latent_frame`)
    when a trace with full latents is present, and the player with sound."""
    import numpy as np

    from mtlib.media.video import read_mp4

    mp4 = state["_mp4"]
    frames = state.get("_frames")
    if frames is None:
        frames, _audio, info = read_mp4(mp4)
        state["_frames"], state["_info"] = frames, info
    info = state["_info"]
    n = int(frames.shape[0])
    if n == 0:
        raise InputError(f"video {str(mp4)!r}: has no frames.")
    i = min(max(int(state["frame"]), 0), n - 1)
    plt = _pyplot()
    steps = state.get("_steps") or []
    ncols = 2 if steps else 1
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 4.2), squeeze=False)
    axes[0, 0].imshow(frames[i])
    axes[0, 0].set_title(
        f"frame {i} / {n - 1}  (t = {i / (info.get('fps') or 25):.2f} s)", fontsize=9
    )
    axes[0, 0].axis("off")
    data = {
        "frame": i,
        "n_frames": n,
        "frame_mean": float(frames[i].mean()),
        "fps": info.get("fps"),
        "mp4": str(mp4),
        "steps": list(steps),
    }
    lines = [
        f"{mp4}: {n} frames {info.get('width')}x{info.get('height')} at {info.get('fps')} fps, "
        f"audio {info.get('audio_codec') or 'none'}; showing frame {i}"
    ]
    if steps:
        s = min(max(int(state.get("step", 0)), 0), len(steps) - 1)
        lat = latent_image(state["_trace"].tensor(steps[s]))  # [T, h, w]
        t = min(max(int(state.get("latent_frame", 0)), 0), lat.shape[0] - 1)
        img = lat[t]
        lim = float(np.abs(lat).max()) or 1.0
        im = axes[0, 1].imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        axes[0, 1].set_title(
            f"{steps[s]}\nchannel mean, latent frame {t} / {lat.shape[0] - 1}", fontsize=8
        )
        axes[0, 1].axis("off")
        fig.colorbar(im, ax=axes[0, 1], fraction=0.046)
        data.update(
            step=s,
            step_point=steps[s],
            latent_frame=t,
            latent_frames=int(lat.shape[0]),
            latent_mean=float(img.mean()),
        )
        lines.append(
            f"latent {steps[s]}: latent frame {t} of {lat.shape[0]}, channel mean {img.mean():.4f}"
        )
    elif state.get("_trace_note"):
        lines.append(state["_trace_note"])
    fig.tight_layout()
    media = []
    if state.get("player", True):
        from IPython.display import Video

        src = Path(mp4).resolve()
        with contextlib.suppress(
            ValueError
        ):  # a path below the cwd stays valid beside the notebook
            src = src.relative_to(Path.cwd().resolve())
        media.append(
            Video(str(src), embed=bool(state.get("embed", False)), html_attributes="controls")
        )
    return RenderedView("03 video", text="\n".join(lines), figures=[fig], data=data, media=media)


def video_view(
    source: str | os.PathLike,
    trace_dir: str | os.PathLike | None = None,
    frame: int = 0,
    step: int = 0,
    point: str = "latent_in",
    embed: bool = False,
    interactive: bool | None = None,
) -> View:
    """03: scrub the frames of a generated video (a run directory or an mp4) and, when a
    trace with full per-step latents exists (`trace_dir`, or `<run_dir>/trace`), the
    channel mean of `e2e.clip<c>.step<i>.<point>`; plus the player with sound.
    embed=True inlines the mp4 in the notebook (large); default links the file."""
    mp4 = _find_mp4(source)
    state: dict[str, Any] = {
        "_mp4": mp4,
        "frame": int(frame),
        "step": int(step),
        "latent_frame": 0,
        "embed": embed,
    }
    tdir = Path(_local(str(trace_dir))) if trace_dir else None
    if (
        tdir is None
        and Path(_local(str(source))).is_dir()
        and (Path(_local(str(source))) / "trace").is_dir()
    ):
        tdir = Path(_local(str(source))) / "trace"
    if tdir is not None:
        tr = _open_trace(tdir)
        state["_trace"], state["_steps"] = tr, latent_steps(tr, point)
        if not state["_steps"]:
            state["_trace_note"] = (
                f"trace {tdir}: no full '{point}' latents (record them with "
                f"trace.full: ['e2e.*.{point}'] or level full)"
            )
    # decode once so the sliders know their ranges
    from mtlib.media.video import read_mp4

    state["_frames"], _a, state["_info"] = read_mp4(mp4)

    def controls() -> dict:
        w = require("ipywidgets", "notebooks", "mtlib.inspect.widgets")

        n = int(state["_frames"].shape[0])
        lay = {"style": {"description_width": "90px"}, "layout": w.Layout(width="520px")}
        out = {
            "frame": lambda: w.IntSlider(min=0, max=max(0, n - 1), description="video frame", **lay)
        }
        if state.get("_steps"):
            T = latent_image(state["_trace"].tensor(state["_steps"][0])).shape[0]
            out["step"] = lambda: w.IntSlider(
                min=0, max=len(state["_steps"]) - 1, description="step", **lay
            )
            out["latent_frame"] = lambda: w.IntSlider(
                min=0, max=T - 1, description="latent frame", **lay
            )
        return out

    def player(view: View) -> None:
        # the Output widget is re-drawn on each change: keep one player outside it
        w = require("ipywidgets", "notebooks", "mtlib.inspect.widgets")

        if view.extra_box.children:
            return
        view.player = w.Video.from_file(
            str(mp4), autoplay=False, loop=False, controls=True, layout=w.Layout(width="360px")
        )
        view.extra_box.children = (view.player,)

    interactive_now = is_interactive(interactive)
    if interactive_now:
        state["player"] = False
    return View(
        "03 video",
        render_video,
        state,
        controls() if interactive_now else None,
        interactive,
        after_render=player,
    )
