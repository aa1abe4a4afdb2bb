"""Guards: what a run checks before compute, and the cheap checks it keeps making during it.

Where it sits: called by `mtlib.run.generation` (prepare_run, load_models, the write step), the
loop in `mtlib.run.loop` (one isfinite per step), the checkpoint readers in
`mtlib.models.*` and the `plan`, `setup` and `run` commands. Each guard raises ONE error
naming the input, the rule and the fix, or returns warning lines the CLI prints.

- outputs: `check_output_file` (--out: not a directory, an .mp4, a writable place with room)
  and `check_output_dir` (--trace, --runs-dir: local directories only, writable, room);
  remote `scheme://` files go through `mtlib.io.open_output` (fsspec, atomic).
- non-finite values: moved to `mtlib.finite` (a base module: models and the loop use it).
- the run's notices: `plan_warnings` (frames beyond training, what a clip / the streaming cap
  cuts off), `run_notices` (the random tiny model, settings it ignores).
- late failures: `save_rescue` keeps the computed frames when the mp4 cannot be written;
  `mtlib finish` (mtlib/cli/finish.py) writes the mp4 from them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlib.frames import SAMPLE_RATE, latent_frames
from mtlib.io import OutputError, _fs_and_path, is_output_url

if TYPE_CHECKING:
    import torch

VIDEO_SUFFIXES = (".mp4",)  # what mtlib.media.video.write_mp4 writes (H.264 + AAC in MP4)
TRAINED_FRAMES = 81  # frames per clip MultiTalk was trained on
MAX_RECOMMENDED_FRAMES = 201  # the reference's advice for one clip
CUT_TOLERANCE_FRAMES = 4  # 4n+1 snapping alone may drop up to 3 frames: not worth a warning
RUN_HEADROOM_BYTES = 64 * 2**20  # trace meta/index, shards at level stats, temp files


# ------------------------------------------------------------------------------ outputs


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(directory: Path, what: str, target: str) -> None:
    """Create and remove a file in `directory` (os.access lies for root and read-only mounts)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mtlib-write-check.", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(
            f"{what} {target!r}: cannot write into {str(directory)!r} ({e.strerror or e}). "
            "Fix: choose a writable location (checked before any compute)."
        ) from None


def _probe_remote(url: str, what: str) -> None:
    """Write and delete an empty temporary object beside `url` (driver, credentials, bucket)."""
    import uuid

    fs, rpath = _fs_and_path(url, what)
    parent = rpath.rstrip("/").rsplit("/", 1)[0] if "/" in rpath.strip("/") else ""
    probe = (
        f"{parent}/.mtlib-write-check.{uuid.uuid4().hex[:12]}" if parent else ".mtlib-write-check"
    )
    try:
        fs.pipe_file(probe, b"")
        fs.rm(probe)
    except Exception as e:
        raise OutputError(
            f"{what} {url!r}: cannot write there ({type(e).__name__}: {e}). Fix: check the "
            "bucket / credentials, or write to a local path (checked before any compute)."
        ) from None


def check_free_space(path: str | os.PathLike, need_bytes: int, what: str, target: str) -> int:
    """Refuse when the filesystem holding `path` has less than `need_bytes` free; returns free."""
    free = shutil.disk_usage(_nearest_existing(Path(path))).free
    if need_bytes > free:
        raise OutputError(
            f"{what} {target!r}: {_mb(need_bytes)} needed for the planned outputs but only "
            f"{_mb(free)} free on that disk. Fix: free space or write elsewhere."
        )
    return free


def check_output_file(
    out: str | os.PathLike, what: str = "--out", need_bytes: int = 0,
    suffixes: tuple[str, ...] = VIDEO_SUFFIXES,
) -> None:  # fmt: skip
    """An output file, before compute: the container its name says is one mtlib writes, it
    does not name a directory, its folder can be created and written, and the disk has room.
    A `scheme://` URL needs its fsspec driver (it is written by mtlib.io.open_output)."""
    s = str(out)
    if not is_output_url(s) and Path(s).expanduser().is_dir():
        raise OutputError(
            f"{what} {s!r}: is an existing directory; give a file name. "
            f"Fix: {what} {Path(s) / ('video' + suffixes[0])}."
        )
    suffix = Path(s.split("?")[0]).suffix.lower()
    if suffix not in suffixes:
        raise OutputError(
            f"{what} {s!r}: mtlib writes {' / '.join(suffixes)} only (H.264 video + AAC audio); "
            f"the name's extension {suffix or '(none)'!r} names another container. "
            f"Fix: --out {Path(s).stem or 'video'}{suffixes[0]}."
        )
    if is_output_url(s):
        _probe_remote(s, what)
        return
    p = Path(s).expanduser()
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        raise OutputError(
            f"{what} {s!r}: {str(base)!r} is a file, so the folder cannot be created. "
            "Fix: choose another output path."
        )
    _probe_writable(base, what, s)
    check_free_space(base, need_bytes, what, s)


def check_output_dir(path: str | os.PathLike, what: str, need_bytes: int = 0) -> None:
    """An output directory (--trace, --runs-dir): local only, not a file, writable, room.

    Remote directories are refused: a directory of many files written while a run goes on
    cannot be made to appear on S3 complete-or-not. Write locally and copy it when complete."""
    s = str(path)
    if is_output_url(s):
        raise OutputError(
            f"{what} {s!r}: a remote directory is not supported (it holds many files written "
            "during the run, which cannot appear there atomically). Fix: give a local directory "
            "and copy it when the run is complete (e.g. `aws s3 sync DIR s3://...`)."
        )
    p = Path(s).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputError(
            f"{what} {s!r}: is an existing file, not a directory. Fix: give a directory."
        )
    base = _nearest_existing(p)
    if not base.is_dir():
        raise OutputError(
            f"{what} {s!r}: {str(base)!r} is a file, so the directory cannot be created."
        )
    _probe_writable(base, what, s)
    check_free_space(base, need_bytes, what, s)


def video_bytes_estimate(frames: int, height: int, width: int) -> int:
    """A generous bound of the mp4 (H.264 crf 18 stays far below 1/8 of raw RGB) + AAC."""
    return frames * height * width * 3 // 8 + frames * 8000 + 2**20


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.2f} GB"


# ------------------------------------------------------------------------------ notices


def _frames_s(n: int, fps: int = 25) -> str:
    return f"{n} frames ({n / fps:.2f} s)"


def plan_warnings(plan: Any, generation: Any) -> list[str]:
    """Warning lines for a valid plan: a clip far beyond the trained length (with its cost),
    and audio the video will not cover (clip mode, the streaming cap), with the fix."""
    out = []
    F = plan.frame_num
    if F is not None and F > MAX_RECOMMENDED_FRAMES and plan.seq_len:
        ratio = _cost_ratio(plan, TRAINED_FRAMES)
        act = (
            f", ~{plan.activation_bytes / 2**30:.1f} GB of activations per DiT pass"
            if plan.activation_bytes
            else ""
        )
        out.append(
            f"WARNING frame_num {F}: beyond the {MAX_RECOMMENDED_FRAMES} frames per clip the "
            f"reference recommends (trained on {TRAINED_FRAMES}): {plan.seq_len} tokens per DiT "
            f"pass, {ratio:.1f}x the compute of an {TRAINED_FRAMES}-frame clip{act}; expect "
            f"degraded motion. Fix: generation.mode=streaming with frame_num={TRAINED_FRAMES}."
        )
    audio_frames = plan.audio_video_frames
    kept = plan.output_frames
    if audio_frames and kept is not None and audio_frames - kept >= CUT_TOLERANCE_FRAMES:
        cut = f"the video covers {_frames_s(kept)} of {_frames_s(audio_frames)} of audio"
        if plan.mode == "clip":
            out.append(
                f"WARNING {cut}: clip mode makes one clip of frame_num={F} frames. To get all of "
                "it: -p generation.mode=streaming."
            )
        elif audio_frames > generation.max_frames_num:
            out.append(
                f"WARNING {cut}: streaming stops at generation.max_frames_num="
                f"{generation.max_frames_num} (the reference's cap). To get all of it: "
                f"-p generation.max_frames_num={audio_frames + plan.frame_num}."
            )
        else:
            out.append(f"WARNING {cut} (the reference's tail handling in streaming mode).")
    return out


def _cost_ratio(plan: Any, frames: int) -> float:
    """FLOPs of this clip over a `frames` clip at the same size: linear terms scale with the
    token count, self-attention with its square."""
    T = plan.token_grid[0]
    t_ref = latent_frames(frames)
    r = t_ref / T
    f = plan.flops_per_pass or {}
    total = sum(f.values())
    if not total:
        return 1 / r
    ref = sum(v * (r * r if k == "self_attention" else r) for k, v in f.items())
    return total / ref


def memory_refusal(plan: Any, gpu_bytes: int) -> str | None:
    """A reason to refuse the run on a GPU of `gpu_bytes`: one DiT pass's activations alone
    exceed it (weights can be offloaded, activations cannot). None: it may fit."""
    act = plan.activation_bytes
    if act is None or act <= gpu_bytes:
        return None
    return (
        f"frame_num {plan.frame_num}: one DiT pass needs ~{act / 2**30:.1f} GB of activations "
        f"({plan.seq_len} tokens) but the GPU has {gpu_bytes / 2**30:.1f} GB. Fix: "
        f"generation.mode=streaming with frame_num={TRAINED_FRAMES}."
    )


def run_notices(cfg: Any) -> list[str]:
    """Lines `generate` prints before compute: which model runs and what it ignores."""
    out = []
    if cfg.model.name == "tiny":
        out.append(
            "model tiny: the random tiny CPU model (checkpoints of random weights in the real "
            "formats): the video is noise by design. For a real video: --config multitalk-480 "
            "with the published checkpoints (`mtlib setup --download`)."
        )
        w = cfg.model.weights
        given = [k for k in ("wan_dir", "multitalk_dir", "wav2vec_dir") if getattr(w, k)]
        if given:
            out.append(
                f"WARNING model.weights.{', model.weights.'.join(given)} ignored: model.name is "
                "'tiny', which uses its own random checkpoints. Fix: base: multitalk-480 (or "
                "-p model.name=multitalk-14b) to run the real model from those directories."
            )
    return out


def check_bbox_persons(cfg: Any, persons: int) -> None:
    """inputs.bbox only separates two speakers; with one it would be ignored: refuse."""
    from mtlib.config import ConfigError

    if cfg.inputs.bbox is not None and persons == 1:
        raise ConfigError(
            "inputs.bbox: given for 1 speaker, but boxes only separate two speakers (with one, "
            "the whole frame is the person's and the box would be ignored). Fix: remove "
            "inputs.bbox, or pass a second --audio."
        )


def check_audio_complete(files: list[str]) -> None:
    """Compressed audio (mp3, m4a ...) whose header promises more than decodes: truncated.
    Decoding is cheap next to a run; the plan itself reads headers only."""
    from mtlib.media import audio as audio_mod
    from mtlib.media.audio import AudioInputError
    from mtlib.media.probe import probe_audio

    for i, f in enumerate(files):
        info = probe_audio(f)
        if info.exact:
            continue
        n = len(audio_mod.load_audio(f, what=f"speaker {i + 1} audio"))
        promised = info.samples_16k
        if promised - n > max(1600, promised // 50):  # > 0.1 s and > 2 %: not codec padding
            raise AudioInputError(
                f"speaker {i + 1} audio {str(f)!r}: truncated: its header promises "
                f"{promised / SAMPLE_RATE:.2f} s but only {n / SAMPLE_RATE:.2f} s decode (an interrupted "
                "download or copy). Fix: re-export or re-download the file, or re-encode what "
                "remains (e.g. ffmpeg -i IN -c:a libmp3lame OUT.mp3) to plan on its real length."
            )


# ------------------------------------------------------------------------------ late failures


def rescue_dirs(out: str | os.PathLike) -> list[Path]:
    """Where the frames of a run whose mp4 could not be written are kept, in order: beside
    `out` (a local path), the current directory, the temp directory."""
    dirs = [] if is_output_url(out) else [Path(out).expanduser().absolute().parent]
    return dirs + [Path.cwd(), Path(tempfile.gettempdir())]


def save_rescue(video: torch.Tensor, soundtrack: Any, fps: int, meta: dict, out: str) -> Path:
    """Keep the computed frames (uint8) and soundtrack so `mtlib finish` can write the mp4:
    in the first of `rescue_dirs` where the whole file can be written (a full disk moves on)."""
    import json

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from mtlib.io import atomic_path
    from mtlib.media.video import to_uint8_frames

    frames = torch.from_numpy(np.ascontiguousarray(to_uint8_frames(video)))  # [N, H, W, 3]
    sound = torch.from_numpy(np.ascontiguousarray(soundtrack, dtype=np.float32))
    name = Path(str(out).rstrip("/")).stem + ".rescue.safetensors"
    meta_s = {"fps": str(fps), "out": str(out), "meta": json.dumps(meta, default=str)}
    error: Exception | None = None
    for d in rescue_dirs(out):
        try:
            with atomic_path(d / name) as tmp:
                save_file({"frames": frames, "soundtrack": sound}, str(tmp), metadata=meta_s)
                os.chmod(tmp, 0o644)  # safetensors re-creates the file owner-only
            return d / name
        except Exception as e:  # not a folder, read-only, full (safetensors' own error): next
            error = e
    raise OutputError(f"the computed frames could not be kept anywhere ({error}).")
