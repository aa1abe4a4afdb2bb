"""Checkpoints: download, locate and verify the published MultiTalk weights, without surprises.

Where it sits: first step of every run (notebook 00, `mtlib setup`). The loaders in
mtlib.models.* take a `WeightsLayout` from here, so by the time a network is built every
file is known to be present, complete, and of the right model.

Three published repositories make a MultiTalk checkpoint:
  Wan-AI/Wan2.1-I2V-14B-480P            DiT base shards, VAE, T5, CLIP, tokenizer, config.json
  MeiGen-AI/MeiGen-MultiTalk            multitalk.safetensors (audio adapter) + its shard index
  TencentGameMate/chinese-wav2vec2-base audio encoder (HF Wav2Vec2ForPreTraining layout)

The official README "links" MultiTalk into the Wan directory (renames Wan's index to
*.json_old, symlinks MultiTalk's index and multitalk.safetensors beside the shards). mtlib
does none of that: it reads the three directories where they are, writes nothing into
them, and also accepts a directory that was already linked the official way.

Verification never loads tensor data: safetensors headers (8-byte length + JSON) and the
pickle of `.pth` zip archives (torch's weights-only loader onto the meta device) give
every key, shape and dtype; file sizes are checked against what those headers promise.
The expected key -> shape maps come from the networks themselves (`EXPECTED`, models built
on the meta device), so a checkpoint and the code that loads it cannot silently disagree.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import struct
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlib.spec import WAV2VEC2_CONFIG

# ------------------------------------------------------------------------------------------
# Repositories, revisions, file names

WAN_REPO = "Wan-AI/Wan2.1-I2V-14B-480P"
MULTITALK_REPO = "MeiGen-AI/MeiGen-MultiTalk"
WAV2VEC_REPO = "TencentGameMate/chinese-wav2vec2-base"

# Standard folder names (the official README's download targets); a "root" holds all three.
WAN_FOLDER = "Wan2.1-I2V-14B-480P"
MULTITALK_FOLDER = "MeiGen-MultiTalk"
WAV2VEC_FOLDER = "chinese-wav2vec2-base"

# Pinned revisions. The commit hashes cannot be looked up offline, so these are the branch
# names the official README downloads ("main"; wav2vec2's safetensors conversion lives on
# the PR branch "refs/pr/1"). Pin a commit by setting the environment variables below (or
# passing `revisions=`); a 40-hex commit makes downloads and cache lookups reproducible.
DEFAULT_REVISIONS: dict[str, str] = {
    "wan": "main",  # MTLIB_WAN_REVISION
    "multitalk": "main",  # MTLIB_MULTITALK_REVISION
    "wav2vec": "refs/pr/1",  # MTLIB_WAV2VEC_REVISION: has model.safetensors
    "wav2vec_fallback": "main",  # MTLIB_WAV2VEC_FALLBACK_REVISION: pytorch_model.bin only
}

DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIT_INDEX_OLD = DIT_INDEX + "_old"  # Wan's own index after the official "linking"
DIT_SHARD_RE = re.compile(r"^diffusion_pytorch_model-(\d{5})-of-(\d{5})\.safetensors$")
REAL_DIT_SHARDS = tuple(
    f"diffusion_pytorch_model-{i:05d}-of-00007.safetensors" for i in range(1, 8)
)
MULTITALK_FILE = "multitalk.safetensors"
VAE_FILE = "Wan2.1_VAE.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER_DIR = "google/umt5-xxl"
CLIP_TOKENIZER_DIR = "xlm-roberta-large"
# Written by mtlib.models.tiny into google/umt5-xxl/: the real umT5 tokenizer cannot be
# shipped with random weights, so the text encoder uses mtlib.models.t5.StandInTokenizer.
STAND_IN_TOKENIZER_MARKER = "mtlib-stand-in-tokenizer.json"
WAV2VEC_FILES = ("config.json", "preprocessor_config.json")

# Files fetched per repository (globs over the repo's file list).
DOWNLOAD_PATTERNS: dict[str, tuple[str, ...]] = {
    "wan": ("config.json", DIT_INDEX, "diffusion_pytorch_model-*-of-00007.safetensors", T5_FILE,
            f"{T5_TOKENIZER_DIR}/*", CLIP_FILE, VAE_FILE),
    "multitalk": (MULTITALK_FILE, DIT_INDEX),
    "wav2vec": ("config.json", "preprocessor_config.json", "model.safetensors"),
    "wav2vec_fallback": ("config.json", "preprocessor_config.json", "pytorch_model.bin"),
}  # fmt: skip
# Only the official code needs it (its CLIP wrapper builds the XLM-R tokenizer in __init__
# although I2V never tokenizes text for CLIP); mtlib runs the visual tower only.
OPTIONAL_PATTERNS: dict[str, tuple[str, ...]] = {"wan": (f"{CLIP_TOKENIZER_DIR}/*",)}
REPO_IDS = {"wan": WAN_REPO, "multitalk": MULTITALK_REPO, "wav2vec": WAV2VEC_REPO,
            "wav2vec_fallback": WAV2VEC_REPO}  # fmt: skip
FOLDERS = {"wan": WAN_FOLDER, "multitalk": MULTITALK_FOLDER, "wav2vec": WAV2VEC_FOLDER,
           "wav2vec_fallback": WAV2VEC_FOLDER}  # fmt: skip

AUDIO_KEY_RE = re.compile(r"^(audio_proj\.|blocks\.\d+\.(audio_cross_attn|norm_x)\.)")
FIX_DOWNLOAD = "mtlib setup --download"
GB = 1e9


def revisions(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The revision per repository: DEFAULT_REVISIONS, then MTLIB_<KEY>_REVISION, then overrides."""
    out = {}
    for key, default in DEFAULT_REVISIONS.items():
        out[key] = os.environ.get(f"MTLIB_{key.upper()}_REVISION", default)
    out.update(overrides or {})
    return out


class WeightsError(ValueError):
    """A checkpoint problem: names the file, what is wrong, and the fix. `.problems` holds all."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


@dataclass(frozen=True)
class Problem:
    kind: str  # missing | truncated | corrupt | wrong_model | shape | keys | dtype | config | index
    file: str  # the file (or directory) concerned
    message: str  # one self-contained sentence or two: what, expected vs actual, fix


# ------------------------------------------------------------------------------------------
# Expected state: key -> (shape, dtype or None) per network, from the networks themselves

ExpectedMap = dict[str, tuple[tuple[int, ...], "str | None"]]
NETWORKS = ("dit", "vae", "clip", "t5", "wav2vec2")


def _state_map(module, dtype: str | None = None) -> ExpectedMap:
    return {k: (tuple(v.shape), dtype) for k, v in module.state_dict().items()}


def _expected_dit(name: str) -> ExpectedMap:
    from mtlib.models.dit import build_dit

    return _state_map(build_dit(name, device="meta"))


def _expected_vae(name: str) -> ExpectedMap:
    import torch

    from mtlib.models.vae import CONFIGS, CausalVAE

    with torch.device("meta"):
        return _state_map(CausalVAE(CONFIGS[name]))


def _expected_clip(name: str) -> ExpectedMap:
    from mtlib.models.clip import get_config
    from mtlib.models.official_keys import clip_shapes

    # The .pth holds the whole CLIP (text tower too) and the official load is strict. Written
    # from the config: building the transformers-backed module would import transformers.
    return {k: (s, None) for k, s in clip_shapes(get_config(name)).items()}


def _expected_t5(name: str) -> ExpectedMap:
    from mtlib.models.official_keys import t5_shapes
    from mtlib.models.t5 import get_config

    # the published file is bf16 (its name says so); shapes from the config (no transformers)
    return {k: (s, "BF16") for k, s in t5_shapes(get_config(name)).items()}


# Geometry of the wav2vec2 checkpoints (HF Wav2Vec2Config fields that shape the state dict):
# the spec registry's (mtlib.spec.WAV2VEC2_CONFIG).
WAV2VEC2_GEOMETRY: dict[str, dict[str, Any]] = WAV2VEC2_CONFIG


def _expected_wav2vec2(name: str) -> ExpectedMap:
    """Keys of the published Wav2Vec2ForPreTraining checkpoint (legacy weight_g / weight_v).

    Written out from the geometry instead of instantiating transformers' model: importing
    transformers costs seconds, and this layout (group-norm feature extractor, post-norm
    encoder, no conv bias) is fixed by the checkpoint. tests/test_weights.py checks it
    against transformers-derived key lists (the golden manifest and tiny weights).
    """
    g = WAV2VEC2_GEOMETRY[name]
    h, ffn, conv = g["hidden_size"], g["intermediate_size"], g["conv_dim"]
    groups, per_group = g["num_codevector_groups"], g["num_codevectors_per_group"]
    out: dict[str, tuple[int, ...]] = {"wav2vec2.masked_spec_embed": (h,)}
    fe = "wav2vec2.feature_extractor.conv_layers"
    for i, (c, k) in enumerate(zip(conv, g["conv_kernel"], strict=True)):
        out[f"{fe}.{i}.conv.weight"] = (c, conv[i - 1] if i else 1, k)
        if i == 0 and g["feat_extract_norm"] == "group":  # GroupNorm on the first conv only
            out[f"{fe}.0.layer_norm.weight"] = out[f"{fe}.0.layer_norm.bias"] = (c,)
    fp = "wav2vec2.feature_projection"
    out[f"{fp}.layer_norm.weight"] = out[f"{fp}.layer_norm.bias"] = (conv[-1],)
    out[f"{fp}.projection.weight"], out[f"{fp}.projection.bias"] = (h, conv[-1]), (h,)
    pc, kpos = "wav2vec2.encoder.pos_conv_embed.conv", g["num_conv_pos_embeddings"]
    out[f"{pc}.bias"] = (h,)
    out[f"{pc}.weight_g"] = (1, 1, kpos)  # weight_norm(dim=2)
    out[f"{pc}.weight_v"] = (h, h // g["num_conv_pos_embedding_groups"], kpos)
    out["wav2vec2.encoder.layer_norm.weight"] = out["wav2vec2.encoder.layer_norm.bias"] = (h,)
    for i in range(g["num_hidden_layers"]):
        lp = f"wav2vec2.encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out[f"{lp}.attention.{proj}.weight"], out[f"{lp}.attention.{proj}.bias"] = (h, h), (h,)
        out[f"{lp}.layer_norm.weight"] = out[f"{lp}.layer_norm.bias"] = (h,)
        out[f"{lp}.feed_forward.intermediate_dense.weight"] = (ffn, h)
        out[f"{lp}.feed_forward.intermediate_dense.bias"] = (ffn,)
        out[f"{lp}.feed_forward.output_dense.weight"] = (h, ffn)
        out[f"{lp}.feed_forward.output_dense.bias"] = (h,)
        out[f"{lp}.final_layer_norm.weight"] = out[f"{lp}.final_layer_norm.bias"] = (h,)
    # pre-training heads: in the published file, unused by MultiTalk
    out["quantizer.codevectors"] = (1, groups * per_group, g["codevector_dim"] // groups)
    out["quantizer.weight_proj.weight"] = (groups * per_group, conv[-1])
    out["quantizer.weight_proj.bias"] = (groups * per_group,)
    proj = g["proj_codevector_dim"]
    out["project_hid.weight"], out["project_hid.bias"] = (proj, h), (proj,)
    out["project_q.weight"], out["project_q.bias"] = (proj, g["codevector_dim"]), (proj,)
    return {k: (s, None) for k, s in out.items()}


def _legacy_weight_norm(key: str) -> str:
    return key.replace("parametrizations.weight.original0", "weight_g").replace(
        "parametrizations.weight.original1", "weight_v"
    )


# network -> (config name -> expected map). The lead may repoint entries after merging.
EXPECTED: dict[str, Callable[[str], ExpectedMap]] = {
    "dit": _expected_dit,
    "vae": _expected_vae,
    "clip": _expected_clip,
    "t5": _expected_t5,
    "wav2vec2": _expected_wav2vec2,
}

# Keys a checkpoint may lack without harm (pre-training heads nobody runs).
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {
    "wav2vec2": ("wav2vec2.masked_spec_embed", "quantizer.*", "project_hid.*", "project_q.*"),
}


def expected_map(network: str, config_name: str) -> ExpectedMap:
    """EXPECTED[network](config_name), with one clear error when the model code is absent."""
    try:
        return EXPECTED[network](config_name)
    except ImportError as e:
        raise WeightsError(
            f"cannot build the expected {network} state: its model module is not importable ({e})."
        ) from None
    except KeyError:
        raise WeightsError(f"{network}: no model config named {config_name!r}.") from None


def expected_maps(config_name: str, networks: Iterable[str] = NETWORKS) -> dict[str, ExpectedMap]:
    return {net: expected_map(net, config_name) for net in networks}


def expected_digest(expected: dict[str, ExpectedMap]) -> str:
    import hashlib

    canon = {
        net: sorted((k, list(s), d) for k, (s, d) in m.items())
        for net, m in sorted(expected.items())
    }
    return hashlib.sha256(json.dumps(canon).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------
# Header readers (no tensor data is ever read)

SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2,
                        "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2,
                        "U32": 4, "U64": 8}  # fmt: skip
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling: F32, BF16, ...

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class FileHeader:
    """What a checkpoint file declares, read without its tensor data."""

    path: Path
    tensors: dict[str, TensorInfo]
    file_bytes: int  # actual size on disk
    expected_bytes: int | None  # size the header promises (safetensors); None when unknown
    problem: Problem | None = None  # truncated / corrupt; tensors may still be usable

    @property
    def dtypes(self) -> list[str]:
        return sorted({t.dtype for t in self.tensors.values()})


def read_safetensors_header(path: str | os.PathLike) -> FileHeader:
    """Keys, shapes and dtypes of a .safetensors file from its JSON header only.

    The file must be exactly 8 + header length + the end of the last tensor's bytes long:
    anything shorter was cut off (an interrupted download), anything longer is not a
    safetensors file written by the library.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return FileHeader(path, {}, size, None, Problem(
                "truncated", str(path), f"{path}: truncated: {size} bytes, shorter than the 8-byte "
                f"safetensors header length. Fix: run `{FIX_DOWNLOAD}` (it replaces damaged files)."))  # fmt: skip
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            return FileHeader(path, {}, size, None, Problem(
                "corrupt", str(path), f"{path}: not a safetensors file (declared header length "
                f"{n} bytes is implausible). Fix: run `{FIX_DOWNLOAD}` (it replaces damaged files)."))  # fmt: skip
        if 8 + n > size:
            return FileHeader(path, {}, size, None, Problem(
                "truncated", str(path), f"{path}: truncated: the JSON header alone needs {8 + n} "
                f"bytes, the file has {size}. Fix: run `{FIX_DOWNLOAD}` (it replaces damaged files)."))  # fmt: skip
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError as e:
        return FileHeader(path, {}, size, None, Problem(
            "corrupt", str(path), f"{path}: the safetensors JSON header does not parse ({e}). "
            f"Fix: run `{FIX_DOWNLOAD}` (it replaces damaged files)."))  # fmt: skip
    tensors: dict[str, TensorInfo] = {}
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        tensors[key] = TensorInfo(tuple(entry["shape"]), entry["dtype"])
        end = max(end, entry["data_offsets"][1])
    expected = 8 + n + end
    problem = None
    if size < expected:
        problem = Problem("truncated", str(path), (
            f"{path}: truncated: expected {expected} bytes (header + tensors), found {size} "
            f"({expected - size} missing; an interrupted download?). Fix: delete it and run "
            f"`{FIX_DOWNLOAD}` (downloads resume)."))  # fmt: skip
    elif size > expected:
        problem = Problem("corrupt", str(path), (
            f"{path}: {size - expected} bytes beyond the last tensor (expected {expected} bytes, "
            f"found {size}); not a file written by safetensors. Fix: delete it and run "
            f"`{FIX_DOWNLOAD}`."))  # fmt: skip
    return FileHeader(path, tensors, size, expected, problem)


_TORCH_DTYPES = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
                 "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
                 "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
                 "uint16": "U16", "uint32": "U32", "uint64": "U64"}  # fmt: skip


def _flatten_state(obj, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in obj.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_state(v, name + "."))
        else:
            out[name] = v
    return out


def _member_data_offsets(path: Path, zf: zipfile.ZipFile) -> dict[int, zipfile.ZipInfo]:
    """File offset of each archive member's data -> its ZipInfo (from the 30-byte local headers,
    whose extra field may differ from the central directory's: torch pads it for alignment)."""
    out = {}
    with open(path, "rb") as f:
        for info in zf.infolist():
            f.seek(info.header_offset + 26)
            n_name, n_extra = struct.unpack("<HH", f.read(4))
            out[info.header_offset + 30 + n_name + n_extra] = info
    return out


def _load_meta(path: Path):
    """torch's safe loader on the meta device: the weights-only unpickler (no code runs), no
    tensor data read; each storage remembers where its bytes start in the file."""
    import torch

    return torch.load(str(path), map_location="meta", weights_only=True, mmap=True)


def read_pth_header(path: str | os.PathLike) -> FileHeader:
    """Keys, shapes and dtypes of a torch zip checkpoint (.pth/.bin) without its tensor data.

    torch.load(map_location="meta", weights_only=True) reads the pickle (refusing anything but
    tensors and containers). Integrity without reading tensor data: the zip's end-of-archive
    record must be there (a cut-off file loses it), every storage must be an archive member of
    exactly numel x itemsize bytes, and every tensor view must fit in its storage.
    """
    path = Path(path)
    size = path.stat().st_size
    fix = f"Fix: run `{FIX_DOWNLOAD}` (it replaces damaged files)."
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic[:1] == b"\x80" and path.suffix == ".bin":
            # torch's pre-1.6 format: one pickle stream with the storages inline; its keys
            # cannot be listed without reading the data, so it is only reported.
            return FileHeader(path, {}, size, None, None)
        if magic == b"PK\x03\x04":
            msg = (f"{path}: truncated: a torch zip archive whose end-of-archive record is missing "
                   f"(the file stops at {size} bytes; an interrupted download?). {fix}")  # fmt: skip
            return FileHeader(path, {}, size, None, Problem("truncated", str(path), msg))
        msg = (f"{path}: not a torch zip checkpoint (legacy pickle or another format; "
               f"starts with {magic!r}). {fix}")  # fmt: skip
        return FileHeader(path, {}, size, None, Problem("corrupt", str(path), msg))
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pkl:
            msg = f"{path}: zip archive without <name>/data.pkl; not a torch checkpoint. {fix}"
            return FileHeader(path, {}, size, None, Problem("corrupt", str(path), msg))
        try:
            obj = _load_meta(path)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a corrupt file
            msg = f"{path}: data.pkl cannot be read as a state dict ({e}). {fix}"
            return FileHeader(path, {}, size, None, Problem("corrupt", str(path), msg))
        if not isinstance(obj, dict):
            msg = f"{path}: holds a {type(obj).__name__}, not a state dict of tensors. {fix}"
            return FileHeader(path, {}, size, None, Problem("corrupt", str(path), msg))
        members = _member_data_offsets(path, zf)
        tensors: dict[str, TensorInfo] = {}
        problem = None
        for key, t in _flatten_state(obj).items():
            if not hasattr(t, "untyped_storage"):
                continue  # a non-tensor entry (an int, a string): not a weight
            dtype = _TORCH_DTYPES.get(str(t.dtype).removeprefix("torch."), "?")
            tensors[key] = TensorInfo(tuple(t.shape), dtype)
            if problem is not None:
                continue
            storage = t.untyped_storage()
            itemsize = t.element_size()
            numel = storage.nbytes() // itemsize
            offset = getattr(storage, "_checkpoint_offset", None)  # torch >= 2.5
            info = members.get(offset)
            if offset is None:
                continue
            if info is None:
                problem = Problem("corrupt", str(path), f"{path}: tensor {key!r}: its storage "
                                  f"is not a member of the archive. {fix}")  # fmt: skip
            elif info.file_size != storage.nbytes():
                problem = Problem("truncated", str(path), (
                    f"{path}: tensor {key!r}: storage {info.filename!r} holds {info.file_size} "
                    f"bytes, expected {storage.nbytes()} ({numel} x {dtype}). {fix}"))  # fmt: skip
            else:
                extent = 0 if t.numel() == 0 else t.storage_offset() + 1 + sum(
                    (n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True))
                if extent > numel:
                    problem = Problem("corrupt", str(path), (
                        f"{path}: tensor {key!r} {list(t.shape)} reaches element {extent} of a "
                        f"storage of {numel}. {fix}"))  # fmt: skip
        # Members must not overlap each other or the central directory: a file rewritten
        # in place with fewer bytes would show up here.
        ordered = sorted(zf.infolist(), key=lambda i: i.header_offset)
        limit = getattr(zf, "start_dir", size)
        for a, b in zip(ordered, [*ordered[1:], None], strict=True):
            stop = b.header_offset if b is not None else limit
            if problem is None and a.header_offset + a.compress_size > stop:
                problem = Problem("corrupt", str(path), (
                    f"{path}: archive member {a.filename!r} overruns the next one; the archive is "
                    f"damaged. {fix}"))  # fmt: skip
    header = FileHeader(path, tensors, size, None, problem)
    header.expected_bytes = None  # a zip has no single promised size; members were checked
    return header


def read_header(path: str | os.PathLike) -> FileHeader:
    p = Path(path)
    if p.suffix == ".safetensors":
        return read_safetensors_header(p)
    return read_pth_header(p)


# ------------------------------------------------------------------------------------------
# Layout: where the three checkpoints are


@dataclass(frozen=True)
class WeightsLayout:
    """The three checkpoint directories. Nothing here is ever written by mtlib (except the
    tiny checkpoints, which mtlib.models.tiny creates itself)."""

    wan_dir: Path  # Wan2.1-I2V-14B-480P: shards, VAE, T5, CLIP, tokenizer, config.json
    multitalk_dir: Path  # MeiGen-MultiTalk: multitalk.safetensors + index (= wan_dir if linked)
    wav2vec_dir: Path  # chinese-wav2vec2-base (HF layout)
    source: str = "dirs"  # dirs | root | hub-cache | tiny: how it was found (for the report)

    @property
    def linked(self) -> bool:
        """True for a Wan directory "linked" the official README's way."""
        return (self.wan_dir / MULTITALK_FILE).exists() and self.multitalk_dir == self.wan_dir

    @property
    def dit_config(self) -> Path:
        return self.wan_dir / "config.json"

    @property
    def multitalk_file(self) -> Path:
        return self.multitalk_dir / MULTITALK_FILE

    @property
    def multitalk_index(self) -> Path:
        return self.multitalk_dir / DIT_INDEX

    @property
    def wan_index(self) -> Path:
        """Wan's own shard index (renamed *.json_old in a linked directory)."""
        old = self.wan_dir / DIT_INDEX_OLD
        return old if old.exists() else self.wan_dir / DIT_INDEX

    @property
    def vae_file(self) -> Path:
        return self.wan_dir / VAE_FILE

    @property
    def clip_file(self) -> Path:
        return self.wan_dir / CLIP_FILE

    @property
    def t5_file(self) -> Path:
        return self.wan_dir / T5_FILE

    @property
    def t5_tokenizer(self) -> str:
        """The tokenizer argument for mtlib.models.t5.build_text_encoder: "stand-in" for the
        tiny checkpoints (marker file), else the umt5-xxl tokenizer directory."""
        d = self.wan_dir / T5_TOKENIZER_DIR
        return "stand-in" if (d / STAND_IN_TOKENIZER_MARKER).exists() else str(d)

    @property
    def wav2vec_weights(self) -> Path:
        st = self.wav2vec_dir / "model.safetensors"
        bin_ = self.wav2vec_dir / "pytorch_model.bin"
        return bin_ if (not st.exists() and bin_.exists()) else st

    def dit_shards(self) -> list[Path]:
        """The DiT base shards named by the index (Wan's, else MultiTalk's), in order."""
        names: set[str] = set()
        for idx in (self.wan_index, self.multitalk_index):
            if idx.exists():
                try:
                    names |= set(json.loads(idx.read_text())["weight_map"].values())
                except (ValueError, KeyError):
                    continue
        names.discard(MULTITALK_FILE)
        if not names:
            names = {
                p.name for p in self.wan_dir.glob("diffusion_pytorch_model-*-of-*.safetensors")
            }
        if not names:
            names = set(REAL_DIT_SHARDS)
        return [self.wan_dir / n for n in sorted(names)]

    def dit_files(self) -> list[Path]:
        return [*self.dit_shards(), self.multitalk_file]

    def to_dict(self) -> dict[str, str]:
        return {"wan_dir": str(self.wan_dir), "multitalk_dir": str(self.multitalk_dir),
                "wav2vec_dir": str(self.wav2vec_dir), "source": self.source}  # fmt: skip


@dataclass(frozen=True)
class RequiredFile:
    component: str  # wan | multitalk | wav2vec
    path: Path
    what: str  # one phrase for the report
    required: bool = True


def required_files(layout: WeightsLayout) -> list[RequiredFile]:
    """Every file a MultiTalk run opens (plus the optional CLIP tokenizer), by component."""
    w, m, a = layout.wan_dir, layout.multitalk_dir, layout.wav2vec_dir
    files = [RequiredFile("wan", w / "config.json", "DiT config (Wan I2V)")]
    files.append(RequiredFile("wan", layout.wan_index, "Wan shard index"))
    files += [RequiredFile("wan", p, "DiT base shard") for p in layout.dit_shards()]
    files += [
        RequiredFile("wan", w / VAE_FILE, "VAE"),
        RequiredFile("wan", w / T5_FILE, "T5 text encoder (bf16)"),
        RequiredFile("wan", w / T5_TOKENIZER_DIR, "umT5 tokenizer"),
        RequiredFile("wan", w / CLIP_FILE, "CLIP image encoder"),
        RequiredFile("wan", w / CLIP_TOKENIZER_DIR, "XLM-R tokenizer (official code only)", False),
        RequiredFile("multitalk", m / MULTITALK_FILE, "audio adapter"),
        RequiredFile("multitalk", m / DIT_INDEX, "MultiTalk shard index"),
        RequiredFile("wav2vec", a / "config.json", "wav2vec2 config"),
        RequiredFile("wav2vec", a / "preprocessor_config.json", "wav2vec2 feature extractor"),
        RequiredFile("wav2vec", layout.wav2vec_weights, "wav2vec2 weights"),
    ]
    if layout.linked:  # Wan's index was renamed; the index in wan_dir is MultiTalk's
        files = [f for f in files if not (f.component == "multitalk" and f.path.name == DIT_INDEX)]
        files.append(RequiredFile("multitalk", w / DIT_INDEX, "MultiTalk shard index (linked)"))
    return files


def missing_files(layout: WeightsLayout, include_optional: bool = False) -> list[RequiredFile]:
    out = []
    for f in required_files(layout):
        if not (f.required or include_optional):
            continue
        if f.path.name == T5_TOKENIZER_DIR.rsplit("/", 1)[-1]:
            if not _tokenizer_ok(f.path):
                out.append(f)
        elif not f.path.exists():
            out.append(f)
    return out


def _tokenizer_ok(d: Path) -> bool:
    if (d / STAND_IN_TOKENIZER_MARKER).exists():
        return True
    return (d / "tokenizer_config.json").exists() and (
        (d / "spiece.model").exists() or (d / "tokenizer.json").exists()
    )


def hub_cache_dir() -> Path:
    """The hub cache, read from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cached_snapshot(
    repo_key: str, probe: str, cache_dir: Path, revs: dict[str, str]
) -> Path | None:
    """The snapshot folder of a cached repo revision holding `probe`, without network."""
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(
        REPO_IDS[repo_key], probe, cache_dir=str(cache_dir), revision=revs[repo_key]
    )
    if isinstance(hit, str):
        return Path(hit).parent  # not resolved: the snapshot folder, not the blob store
    return None


def _weights_config(config) -> Any:
    """A WeightsConfig from a RunConfig / ModelConfig / WeightsConfig / None."""
    for attr in ("model", "weights"):
        if config is not None and hasattr(config, attr) and not isinstance(config, str | Path):
            config = getattr(config, attr)
    return config


def resolve_layout(
    config=None,
    *,
    root: str | os.PathLike | None = None,
    wan_dir: str | os.PathLike | None = None,
    multitalk_dir: str | os.PathLike | None = None,
    wav2vec_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    revisions_: dict[str, str] | None = None,
    check_files: bool = True,
) -> WeightsLayout:
    """Find the three checkpoint directories, without network and without writing anything.

    Per component, the first that applies: an explicit directory (argument, else
    config.model.weights.*_dir), `<root>/<standard folder>`, else (no root given) the hub
    cache (HF_HUB_CACHE layout models--org--name/snapshots/<rev>/, revision from refs/).
    A single directory given as wan_dir that contains the three standard folders is taken
    as the root. A Wan
    directory holding multitalk.safetensors (the official "linking") serves as the
    MultiTalk directory too. With check_files, missing files raise one WeightsError that
    lists them and the command that fetches them.
    """
    wcfg = _weights_config(config)
    explicit = {
        "wan": wan_dir or getattr(wcfg, "wan_dir", None),
        "multitalk": multitalk_dir or getattr(wcfg, "multitalk_dir", None),
        "wav2vec": wav2vec_dir or getattr(wcfg, "wav2vec_dir", None),
    }
    if root is None and explicit["wan"] and not explicit["multitalk"] and not explicit["wav2vec"]:
        cand = Path(explicit["wan"]).expanduser()
        if (cand / WAN_FOLDER).is_dir():
            root, explicit["wan"] = cand, None
    revs = revisions(revisions_)
    cache = Path(cache_dir).expanduser() if cache_dir else hub_cache_dir()
    found: dict[str, Path] = {}
    sources: set[str] = set()
    for key, given in explicit.items():
        if given:
            p = Path(given).expanduser()
            if not p.is_dir():
                raise WeightsError(
                    f"weights {key}_dir {str(p)!r}: not a directory. Fix: point "
                    f"model.weights.{key}_dir at the downloaded {FOLDERS[key]} folder, or run "
                    f"`{FIX_DOWNLOAD} --root DIR`."
                )
            found[key] = p
            sources.add("dirs")
        elif root is not None and (Path(root).expanduser() / FOLDERS[key]).is_dir():
            found[key] = Path(root).expanduser() / FOLDERS[key]
            sources.add("root")
    if "multitalk" not in found and "wan" in found and (found["wan"] / MULTITALK_FILE).exists():
        found["multitalk"] = found["wan"]  # linked the official way
    probes = {"wan": [("wan", "config.json")], "multitalk": [("multitalk", MULTITALK_FILE)],
              "wav2vec": [("wav2vec", "model.safetensors"), ("wav2vec_fallback", "pytorch_model.bin"),
                          ("wav2vec_fallback", "config.json")]}  # fmt: skip
    for key, tries in probes.items():
        if key in found or root is not None:  # an explicit root is not mixed with the cache
            continue
        for repo_key, probe in tries:
            snap = _cached_snapshot(repo_key, probe, cache, revs)
            if snap is not None:
                found[key] = snap
                sources.add("hub-cache")
                break
    absent = [k for k in ("wan", "multitalk", "wav2vec") if k not in found]
    if absent:
        where = f"under {root}" if root is not None else f"in the hub cache {cache}"
        lines = [f"  {REPO_IDS[k]}  (folder {FOLDERS[k]}/)" for k in absent]
        raise WeightsError(
            "MultiTalk checkpoints not found " + where + ":\n" + "\n".join(lines)
            + f"\nFix: `{_download_command(root)}` (or set model.weights.wan_dir / multitalk_dir / "
            "wav2vec_dir to existing folders).",
            [Problem("missing", FOLDERS[k], f"{REPO_IDS[k]} not found {where}") for k in absent],
        )  # fmt: skip
    source = "root" if sources == {"root"} else "hub-cache" if sources == {"hub-cache"} else "dirs"
    layout = WeightsLayout(found["wan"], found["multitalk"], found["wav2vec"], source)
    if check_files:
        gone = missing_files(layout)
        if gone:
            raise WeightsError(
                _missing_message(gone, root), [_missing_problem(f, root) for f in gone]
            )
    return layout


def fix_command(layout: WeightsLayout) -> str:
    """The one command that repairs `layout`: re-download into its root, or rewrite the tiny set."""
    if layout.source == "tiny":
        return f"mtlib setup --tiny {layout.wan_dir.parent}"
    if layout.source == "root":
        return _download_command(layout.wan_dir.parent)
    return FIX_DOWNLOAD


def _download_command(root) -> str:
    return FIX_DOWNLOAD + (f" --root {root}" if root is not None else "")


def _missing_message(gone: list[RequiredFile], root=None) -> str:
    lines = [f"  {f.path}  ({f.what})" for f in gone]
    return (f"{len(gone)} checkpoint file(s) missing:\n" + "\n".join(lines)
            + f"\nFix: `{_download_command(root)}` fetches exactly these (downloads resume).")  # fmt: skip


def _missing_problem(f: RequiredFile, root=None) -> Problem:
    return Problem("missing", str(f.path), (
        f"missing file: {f.path} ({f.what}). Fix: `{_download_command(root)}`."))  # fmt: skip


# ------------------------------------------------------------------------------------------
# Verification


@dataclass
class ReportRow:
    file: str
    status: str  # ok | missing | error | warn | absent (optional)
    detail: str


@dataclass
class VerifyReport:
    layout: WeightsLayout
    config_name: str
    rows: list[ReportRow] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file: str, status: str, detail: str) -> None:
        self.rows.append(ReportRow(file, status, detail))

    def fail(self, problem: Problem, file: str | None = None, status: str = "error") -> None:
        fix = fix_command(self.layout)
        if fix != FIX_DOWNLOAD:  # name the folder the user actually has
            problem = Problem(
                problem.kind, problem.file, problem.message.replace(f"`{FIX_DOWNLOAD}`", f"`{fix}`")
            )
        self.problems.append(problem)
        self.add(file or problem.file, status, problem.message)

    def table(self, width: int = 100) -> str:
        """Plain-text table, one row per file: status, file (relative to its folder), detail."""
        lines = [f"checkpoints ({self.config_name}, {self.layout.source}):",
                 f"  wan_dir       {self.layout.wan_dir}",
                 f"  multitalk_dir {self.layout.multitalk_dir}" + ("  (linked into wan_dir)" if self.layout.linked else ""),
                 f"  wav2vec_dir   {self.layout.wav2vec_dir}", ""]  # fmt: skip
        roots = sorted({str(self.layout.wan_dir), str(self.layout.multitalk_dir), str(self.layout.wav2vec_dir)},
                       key=len, reverse=True)  # fmt: skip
        names = []
        for r in self.rows:
            name = r.file
            for base in roots:
                if name.startswith(base + os.sep):
                    name = Path(base).name + "/" + name[len(base) + 1 :]
                    break
            names.append(name)
        w = min(max((len(n) for n in names), default=4), 70)
        lines.append(f"{'status':<8} {'file':<{w}}  detail")
        for r, n in zip(self.rows, names, strict=True):
            detail = r.detail if len(r.detail) <= width else r.detail[: width - 3] + "..."
            lines.append(f"{r.status:<8} {n:<{w}}  {detail}")
        lines.append("")
        if self.ok:
            lines.append(
                "ready: every checkpoint file is present, complete and of the right model."
            )
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  - {p.message}" for p in self.problems]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"ok": self.ok, "config": self.config_name, "layout": self.layout.to_dict(),
                "rows": [r.__dict__ for r in self.rows],
                "problems": [p.__dict__ for p in self.problems]}  # fmt: skip

    def raise_first(self) -> None:
        if self.problems:
            more = len(self.problems) - 1
            tail = (
                f"\n(and {more} more problem(s); `mtlib setup --verify` prints them all)"
                if more
                else ""
            )
            raise WeightsError(self.problems[0].message + tail, list(self.problems))


def _shape_str(s) -> str:
    return "[" + ", ".join(str(x) for x in s) + "]"


def _fmt_bytes(n: int) -> str:
    return f"{n / GB:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} B"


def _fmt_count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else str(n)


def compare_state(
    actual: dict[str, TensorInfo],
    expected: ExpectedMap,
    what: str,
    file: str,
    optional: Iterable[str] = (),
    limit: int = 4,
) -> list[Problem]:
    """Missing / unexpected keys, wrong shapes and wrong dtypes, each its own Problem."""
    optional = tuple(optional)

    def is_optional(k: str) -> bool:
        return any(fnmatch.fnmatchcase(k, p) for p in optional)

    problems = []
    missing = [k for k in expected if k not in actual and not is_optional(k)]
    unexpected = [k for k in actual if k not in expected and not is_optional(k)]
    if missing:
        problems.append(Problem("keys", file, (
            f"{what}: {len(missing)} expected key(s) missing, e.g. {', '.join(missing[:limit])}. "
            "The file is from another model or release. Fix: re-download it with "
            f"`{FIX_DOWNLOAD}`.")))  # fmt: skip
    if unexpected:
        problems.append(Problem("keys", file, (
            f"{what}: {len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:limit])}. "
            "The file is from another model or release. Fix: re-download it with "
            f"`{FIX_DOWNLOAD}`.")))  # fmt: skip
    wrong = [(k, expected[k][0], actual[k].shape) for k in expected
             if k in actual and tuple(expected[k][0]) != tuple(actual[k].shape)]  # fmt: skip
    if wrong:
        shown = "; ".join(
            f"{k}: expected {_shape_str(e)}, found {_shape_str(a)}" for k, e, a in wrong[:limit]
        )
        problems.append(Problem("shape", file, (
            f"{what}: {len(wrong)} tensor(s) with the wrong shape: {shown}. The file is from a "
            f"model of another size. Fix: re-download it with `{FIX_DOWNLOAD}`.")))  # fmt: skip
    bad_dtype = [(k, expected[k][1], actual[k].dtype) for k in expected
                 if k in actual and expected[k][1] and expected[k][1] != actual[k].dtype]  # fmt: skip
    non_float = [(k, a) for k, a in ((k, t.dtype) for k, t in actual.items()) if a not in FLOAT_DTYPES
                 and k in expected]  # fmt: skip
    if non_float:
        problems.append(Problem("dtype", file, (
            f"{what}: {len(non_float)} tensor(s) are not floating point (e.g. {non_float[0][0]}: "
            f"{non_float[0][1]}); a quantised checkpoint? mtlib loads the published float "
            f"weights. Fix: re-download with `{FIX_DOWNLOAD}`.")))  # fmt: skip
    elif bad_dtype:
        k, e, a = bad_dtype[0]
        problems.append(Problem("dtype", file, (
            f"{what}: {len(bad_dtype)} tensor(s) stored as {a}, expected {e} (e.g. {k}). "
            f"Fix: re-download it with `{FIX_DOWNLOAD}`.")))  # fmt: skip
    return problems


def _count_layers(keys: Iterable[str], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := pat.match(k))})


def _dit_wrong_model(
    actual: dict[str, TensorInfo], expected: ExpectedMap, cfg: dict | None
) -> str | None:
    pe = actual.get("patch_embedding.weight")
    exp_pe = expected.get("patch_embedding.weight")
    model_type = (cfg or {}).get("model_type")
    if (
        pe is not None and exp_pe is not None and pe.shape[1:2] == (16,) and exp_pe[0][1] == 36
    ) or (model_type == "t2v"):
        return (f"this is Wan2.1-T2V (text-to-video: patch_embedding.weight takes 16 input channels, "
                f"I2V takes 36 = noise 16 + mask 4 + image latent 16); MultiTalk needs "
                f"{WAN_REPO}. Fix: `{FIX_DOWNLOAD}` and point wan_dir at {WAN_FOLDER}.")  # fmt: skip
    if pe is not None and exp_pe is not None and pe.shape[1] == 48 and exp_pe[0][1] == 36:
        return (f"this is a Wan2.2 DiT (patch_embedding.weight takes 48 input channels); MultiTalk "
                f"needs {WAN_REPO} (36). Fix: `{FIX_DOWNLOAD}`.")  # fmt: skip
    if pe is not None and exp_pe is not None and pe.shape[0] != exp_pe[0][0]:
        size = {1536: "Wan2.1 1.3B", 5120: "Wan2.1 14B", 3072: "Wan2.2 5B"}.get(
            pe.shape[0], "another size"
        )
        return (f"the DiT is {pe.shape[0]} wide ({size}); this configuration needs {exp_pe[0][0]} "
                f"({'the tiny test model' if exp_pe[0][0] < 1000 else WAN_REPO}). "
                f"Fix: point wan_dir at the right checkpoint or pick the matching model config.")  # fmt: skip
    return None


def _vae_wrong_model(actual: dict[str, TensorInfo], expected: ExpectedMap) -> str | None:
    c1 = actual.get("conv1.weight")
    exp = expected.get("conv1.weight")
    enc = actual.get("encoder.conv1.weight")
    if (c1 is not None and exp is not None and c1.shape[0] == 96 and exp[0][0] == 32) or (
        enc is not None and len(enc.shape) > 1 and enc.shape[1] == 12
    ):
        return (f"this is the Wan2.2 VAE (48 latent channels, 16x spatial compression); MultiTalk "
                f"needs {VAE_FILE} (16 latent channels) from {WAN_REPO}. Fix: `{FIX_DOWNLOAD}`.")  # fmt: skip
    return None


def _wav2vec_geometry(keys: dict, prefix: str = "wav2vec2.") -> tuple[int, int | None]:
    layers = _count_layers(keys, prefix + "encoder.layers.")
    ln = keys.get(prefix + "encoder.layer_norm.weight")
    width = None
    if ln is not None:
        width = (ln.shape if isinstance(ln, TensorInfo) else ln[0])[0]
    return layers, width


def _wav2vec_name(layers, width) -> str:
    if (layers, width) == (24, 1024):
        return "wav2vec2-large (24 layers x 1024 wide)"
    if (layers, width) == (12, 768):
        return "a wav2vec2-base model (12 layers x 768 wide)"
    return f"a wav2vec2 of {layers} layers x {width} wide"


class _Verifier:
    def __init__(
        self, layout: WeightsLayout, config_name: str, expected: dict[str, ExpectedMap] | None
    ):
        self.layout = layout
        self.config_name = config_name
        self._expected = dict(expected or {})
        self.report = VerifyReport(layout, config_name)

    def expected(self, net: str) -> ExpectedMap:
        if net not in self._expected:
            self._expected[net] = expected_map(net, self.config_name)
        return self._expected[net]

    def header(self, path: Path, what: str) -> FileHeader | None:
        """Header of one file, with its own report row; None when missing or unreadable."""
        if not path.exists():
            self.report.fail(_missing_problem(RequiredFile("", path, what)), str(path), "missing")
            return None
        h = read_header(path)
        if h.problem is not None:
            self.report.fail(h.problem, str(path))
            return None
        if not h.tensors and path.suffix == ".bin":
            self.report.add(
                str(path), "warn", f"{what}: legacy (pre-zip) torch format; keys not checked"
            )
            return None
        self.report.add(str(path), "ok", f"{what}: {len(h.tensors)} tensors, {_fmt_bytes(h.file_bytes)}, "
                        f"{'/'.join(h.dtypes) or '-'}")  # fmt: skip
        return h

    def run(self) -> VerifyReport:
        self.check_dit()
        self.check_single("vae", self.layout.vae_file, "VAE", _vae_wrong_model)
        self.check_single("t5", self.layout.t5_file, "T5 encoder")
        self.check_tokenizer()
        self.check_single("clip", self.layout.clip_file, "CLIP")
        d = self.layout.wan_dir / CLIP_TOKENIZER_DIR
        self.report.add(str(d), "ok" if d.is_dir() else "absent",
                        "XLM-R tokenizer: optional (only the official CLIP wrapper's __init__ needs it)")  # fmt: skip
        self.check_wav2vec()
        return self.report

    # ---- DiT: Wan shards + multitalk.safetensors, through the indexes
    def check_dit(self) -> None:
        lay = self.layout
        cfg = self.check_dit_config()
        index_map: dict[str, str] = {}
        idx_files = [(lay.wan_index, "Wan shard index")]
        mt_index = lay.wan_dir / DIT_INDEX if lay.linked else lay.multitalk_index
        if mt_index != lay.wan_index:
            idx_files.append((mt_index, "MultiTalk shard index"))
        for idx, what in idx_files:
            if not idx.exists():
                self.report.fail(_missing_problem(RequiredFile("", idx, what)), str(idx), "missing")
                continue
            try:
                wm = json.loads(idx.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                self.report.fail(Problem("corrupt", str(idx), f"{idx}: not a shard index json ({e}). "
                                         f"Fix: re-download it with `{FIX_DOWNLOAD}`."))  # fmt: skip
                continue
            index_map.update(wm)
            self.report.add(
                str(idx), "ok", f"{what}: {len(wm)} keys -> {len(set(wm.values()))} files"
            )
        actual: dict[str, TensorInfo] = {}
        where: dict[str, str] = {}
        complete = True
        for path in lay.dit_files():
            what = "audio adapter" if path.name == MULTITALK_FILE else "DiT base shard"
            h = self.header(path, what)
            if h is None:
                complete = False
                continue
            for k, t in h.tensors.items():
                actual[k] = t
                where[k] = path.name
        if not complete:
            return
        exp = self.expected("dit")
        file = str(lay.wan_dir)
        wrong = _dit_wrong_model(actual, exp, cfg)
        if wrong:
            self.report.fail(
                Problem("wrong_model", file, f"DiT in {lay.wan_dir}: {wrong}"), "DiT (all shards)"
            )
            return
        audio_in_base = sorted(
            k for k, f in where.items() if AUDIO_KEY_RE.match(k) and f != MULTITALK_FILE
        )
        problems = compare_state(actual, exp, "DiT (Wan shards + multitalk.safetensors)", file)
        for k, f in index_map.items():
            if k in where and where[k] != f:
                problems.append(Problem("index", f, (
                    f"shard index says {k!r} is in {f}, but it is in {where[k]}. Fix: re-download the "
                    f"index json with `{FIX_DOWNLOAD}`.")))  # fmt: skip
                break
        if audio_in_base:
            self.report.add("DiT (all shards)", "warn",
                            f"{len(audio_in_base)} audio-adapter keys found in the base shards (multitalk.safetensors wins)")  # fmt: skip
        for p in problems:
            self.report.fail(p, "DiT (all shards)")
        if not problems:
            n = sum(t.numel for t in actual.values())
            self.report.add("DiT (all shards)", "ok",
                            f"{len(actual)} keys = expected, {_fmt_count(n)} params, shapes match")  # fmt: skip

    def check_dit_config(self) -> dict | None:
        path = self.layout.dit_config
        if not path.exists():
            self.report.fail(
                _missing_problem(RequiredFile("", path, "DiT config")), str(path), "missing"
            )
            return None
        try:
            cfg = json.loads(path.read_text())
        except ValueError as e:
            self.report.fail(Problem("corrupt", str(path), f"{path}: not valid JSON ({e})."))
            return None
        exp = self.expected("dit")
        problems = []
        if cfg.get("model_type") not in (None, "i2v"):
            return cfg  # reported as a wrong model with the weights
        pe = exp.get("patch_embedding.weight")
        if pe is not None:
            for key, want in (("dim", pe[0][0]), ("in_dim", pe[0][1])):
                if key in cfg and cfg[key] != want:
                    problems.append(f"{key} {cfg[key]} (expected {want})")
        layers = _count_layers(exp, "blocks.")
        if "num_layers" in cfg and layers and cfg["num_layers"] != layers:
            problems.append(f"num_layers {cfg['num_layers']} (expected {layers})")
        if problems:
            self.report.fail(Problem("config", str(path), (
                f"{path}: {', '.join(problems)}: this config.json is not the {self.config_name} DiT's. "
                f"Fix: re-download it with `{FIX_DOWNLOAD}`.")))  # fmt: skip
        else:
            self.report.add(str(path), "ok", f"DiT config: model_type {cfg.get('model_type')}, "
                            f"dim {cfg.get('dim')}, {cfg.get('num_layers')} layers")  # fmt: skip
        return cfg

    def check_single(self, net: str, path: Path, what: str, wrong_model=None) -> None:
        h = self.header(path, what)
        if h is None:
            return
        exp = self.expected(net)
        if wrong_model is not None:
            msg = wrong_model(h.tensors, exp)
            if msg:
                self.report.fail(Problem("wrong_model", str(path), f"{path}: {msg}"))
                return
        for p in compare_state(
            h.tensors, exp, f"{what} ({path.name})", str(path), OPTIONAL_KEYS.get(net, ())
        ):
            self.report.fail(p)

    def check_tokenizer(self) -> None:
        d = self.layout.wan_dir / T5_TOKENIZER_DIR
        if (d / STAND_IN_TOKENIZER_MARKER).exists():
            self.report.add(
                str(d), "ok", "umT5 tokenizer: stand-in marker (tiny random weights only)"
            )
        elif _tokenizer_ok(d):
            self.report.add(str(d), "ok", "umT5 tokenizer files present")
        else:
            self.report.fail(_missing_problem(RequiredFile("", d, "umT5 tokenizer (tokenizer_config.json + "
                                                           "spiece.model or tokenizer.json)")), str(d), "missing")  # fmt: skip

    def check_wav2vec(self) -> None:
        lay = self.layout
        exp = self.expected("wav2vec2")
        exp_layers, exp_width = _wav2vec_geometry(exp)
        for name in WAV2VEC_FILES:
            p = lay.wav2vec_dir / name
            if not p.exists():
                self.report.fail(
                    _missing_problem(RequiredFile("", p, f"wav2vec2 {name}")), str(p), "missing"
                )
        cfg_path = lay.wav2vec_dir / "config.json"
        if cfg_path.exists():
            try:
                cfg = json.loads(cfg_path.read_text())
            except ValueError as e:
                self.report.fail(
                    Problem("corrupt", str(cfg_path), f"{cfg_path}: not valid JSON ({e}).")
                )
                cfg = None
            if cfg is not None:
                layers, width = cfg.get("num_hidden_layers"), cfg.get("hidden_size")
                if cfg.get("model_type", "wav2vec2") != "wav2vec2":
                    self.report.fail(Problem("wrong_model", str(cfg_path), (
                        f"{cfg_path}: model_type {cfg.get('model_type')!r}; MultiTalk needs "
                        f"{WAV2VEC_REPO} (wav2vec2). Fix: `{FIX_DOWNLOAD}`.")))  # fmt: skip
                elif (layers, width) != (exp_layers, exp_width):
                    self.report.fail(Problem("wrong_model", str(cfg_path), (
                        f"{cfg_path}: this is {_wav2vec_name(layers, width)}; this configuration needs "
                        f"{exp_layers} layers x {exp_width} wide"
                        + (f" ({WAV2VEC_REPO})" if exp_width == 768 else " (the tiny test model)")
                        + f". Fix: point wav2vec_dir at {WAV2VEC_FOLDER} (`{FIX_DOWNLOAD}`).")))  # fmt: skip
                else:
                    self.report.add(
                        str(cfg_path), "ok", f"wav2vec2 config: {layers} layers x {width}"
                    )
        h = self.header(lay.wav2vec_weights, "wav2vec2 weights")
        if h is None:
            return
        tensors = {_legacy_weight_norm(k): t for k, t in h.tensors.items()}
        if not any(k.startswith("wav2vec2.") for k in tensors):  # a bare Wav2Vec2Model dump
            tensors = {f"wav2vec2.{k}": t for k, t in tensors.items()}
        layers, width = _wav2vec_geometry(tensors)
        if (layers, width) != (exp_layers, exp_width):
            self.report.fail(Problem("wrong_model", str(h.path), (
                f"{h.path}: this is {_wav2vec_name(layers, width)}; this configuration needs "
                f"{exp_layers} layers x {exp_width} wide. Fix: point wav2vec_dir at {WAV2VEC_FOLDER} "
                f"(`{FIX_DOWNLOAD}`).")))  # fmt: skip
            return
        for p in compare_state(
            tensors, exp, f"wav2vec2 ({h.path.name})", str(h.path), OPTIONAL_KEYS["wav2vec2"]
        ):
            self.report.fail(p)


def verify_layout(
    layout: WeightsLayout,
    config_name: str = "multitalk-14b",
    *,
    expected: dict[str, ExpectedMap] | None = None,
    strict: bool = True,
) -> VerifyReport:
    """Check every file of `layout` against the expected state of `config_name`'s networks.

    Reads headers only (never tensor data) and writes nothing. strict: raise WeightsError
    with the first problem (all of them in `.problems`); else return the report.
    expected: per-network maps overriding EXPECTED (tests; or a caller that has models).
    """
    report = _Verifier(layout, config_name, expected).run()
    if strict:
        report.raise_first()
    return report


# ------------------------------------------------------------------------------------------
# Download planning and download


@dataclass(frozen=True)
class PlannedFile:
    repo_key: str  # wan | multitalk | wav2vec | wav2vec_fallback
    repo_id: str
    revision: str
    filename: str
    size: int | None  # bytes, as the hub reports
    present: bool  # already complete at the destination
    optional: bool = False
    stale: bool = False  # there, but not the size the hub reports: fetched again from scratch


@dataclass
class DownloadPlan:
    files: list[PlannedFile]
    local_dir: Path | None  # None: the hub cache
    cache_dir: Path

    @property
    def to_fetch(self) -> list[PlannedFile]:
        return [f for f in self.files if not f.present]

    @property
    def bytes_needed(self) -> int:
        return sum(f.size or 0 for f in self.to_fetch)

    @property
    def destination(self) -> Path:
        return self.local_dir if self.local_dir is not None else self.cache_dir

    def table(self) -> str:
        lines = [f"download plan -> {self.destination}"]
        for f in self.files:
            state = "have" if f.present else "again" if f.stale else "get"
            size = _fmt_bytes(f.size) if f.size is not None else "?"
            opt = "  (optional)" if f.optional else ""
            lines.append(f"  {state:<5} {f.repo_id}@{f.revision}  {f.filename}  {size}{opt}")
        lines.append(f"to download: {len(self.to_fetch)} file(s), {_fmt_bytes(self.bytes_needed)}")
        return "\n".join(lines)


def _repo_files(api, repo_id: str, revision: str, token) -> dict[str, int | None]:
    info = api.model_info(repo_id, revision=revision, files_metadata=True, token=token)
    return {s.rfilename: getattr(s, "size", None) for s in (info.siblings or [])}


def _local_state(
    repo_key: str, filename: str, size: int | None, revision: str, local_dir, cache_dir
) -> str:
    """absent | complete | stale (there with another size than the hub's: damaged).

    Interrupted downloads never sit at the final path (huggingface_hub keeps them as
    *.incomplete and resumes them), so a wrong-sized final file is damaged, not partial.
    """
    if local_dir is not None:
        p = Path(local_dir) / FOLDERS[repo_key] / filename
    else:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(
            REPO_IDS[repo_key], filename, cache_dir=str(cache_dir), revision=revision
        )
        if not isinstance(hit, str):
            return "absent"
        p = Path(hit)
    if not p.exists():
        return "absent"
    return "complete" if size is None or p.stat().st_size == size else "stale"


def plan_download(
    local_dir: str | os.PathLike | None = None,
    *,
    api=None,
    include_optional: bool = False,
    revisions_: dict[str, str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
) -> DownloadPlan:
    """The files MultiTalk uses, their sizes from the hub, and which are already there.

    local_dir: download into <local_dir>/<standard folder>/ (a "root"); None: the hub cache.
    api: an object with `model_info(repo_id, revision=, files_metadata=True, token=)` (HfApi).
    wav2vec2 comes from its safetensors PR branch; when that lacks model.safetensors the
    plan falls back to pytorch_model.bin on main.
    """
    if hub_offline():
        raise WeightsError(
            "HF_HUB_OFFLINE is set: a download cannot be planned without the hub. Fix: unset "
            "HF_HUB_OFFLINE for `mtlib setup --download`, or copy the three folders here and pass "
            "--root DIR."
        )
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    token = token or os.environ.get("HF_TOKEN") or None
    revs = revisions(revisions_)
    cache = Path(cache_dir).expanduser() if cache_dir else hub_cache_dir()
    files: list[PlannedFile] = []
    for repo_key in ("wan", "multitalk", "wav2vec"):
        rev = revs[repo_key]
        listing = _repo_files(api, REPO_IDS[repo_key], rev, token)
        patterns = DOWNLOAD_PATTERNS[repo_key]
        if repo_key == "wav2vec" and "model.safetensors" not in listing:
            repo_key, rev = "wav2vec_fallback", revs["wav2vec_fallback"]
            listing = _repo_files(api, WAV2VEC_REPO, rev, token)
            patterns = DOWNLOAD_PATTERNS[repo_key]
        groups = [(patterns, False)]
        if include_optional:
            groups.append((OPTIONAL_PATTERNS.get(repo_key, ()), True))
        for pats, optional in groups:
            for pat in pats:
                hits = sorted(n for n in listing if fnmatch.fnmatchcase(n, pat))
                if not hits:
                    raise WeightsError(
                        f"{REPO_IDS[repo_key]}@{rev}: no file matches {pat!r}; the repository changed "
                        "or the revision is wrong. Fix: set MTLIB_<REPO>_REVISION to a revision that has it."
                    )
                for name in hits:
                    size = listing[name]
                    state = _local_state(repo_key, name, size, rev, local_dir, cache)
                    files.append(
                        PlannedFile(
                            repo_key, REPO_IDS[repo_key], rev, name, size,
                            state == "complete", optional, state == "stale",
                        )
                    )  # fmt: skip
    return DownloadPlan(
        files, Path(local_dir).expanduser() if local_dir is not None else None, cache
    )


def check_disk_space(plan: DownloadPlan, margin: float = 1.02, disk_usage=shutil.disk_usage) -> int:
    """Raise WeightsError before any download when the destination's free space is short.

    Returns the free bytes. The destination may not exist yet: its nearest existing parent
    tells the file system.
    """
    dest = plan.destination
    probe = dest
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = disk_usage(probe).free
    need = int(plan.bytes_needed * margin)
    if need > free:
        raise WeightsError(
            f"not enough disk space at {dest}: the download needs {_fmt_bytes(plan.bytes_needed)} "
            f"(+{(margin - 1) * 100:.0f}% margin), {_fmt_bytes(free)} are free. Fix: free space, or "
            f"download elsewhere with `{FIX_DOWNLOAD} --root DIR` (or set HF_HUB_CACHE).",
            [Problem("disk", str(dest), f"need {plan.bytes_needed} bytes, free {free}")],
        )
    return free


def download(plan: DownloadPlan, *, token: str | None = None, downloader=None) -> WeightsLayout:
    """Fetch every file of the plan that is not there yet (resumable: an interrupted
    download continues where it stopped), then return the layout. Progress bars come from
    huggingface_hub. Nothing is renamed or linked afterwards."""
    if downloader is None:
        from huggingface_hub import hf_hub_download as downloader
    token = token or os.environ.get("HF_TOKEN") or None
    check_disk_space(plan)
    for f in plan.to_fetch:
        # force_download replaces a damaged file (else the hub client would keep it)
        kwargs: dict[str, Any] = {"revision": f.revision, "token": token, "force_download": f.stale}
        if plan.local_dir is not None:
            kwargs["local_dir"] = str(plan.local_dir / FOLDERS[f.repo_key])
        else:
            kwargs["cache_dir"] = str(plan.cache_dir)
        print(
            f"downloading {f.repo_id}@{f.revision} {f.filename} ({_fmt_bytes(f.size or 0)})",
            flush=True,
        )
        downloader(f.repo_id, f.filename, **kwargs)
    if plan.local_dir is not None:
        return resolve_layout(root=plan.local_dir, revisions_=_plan_revisions(plan))
    return resolve_layout(cache_dir=plan.cache_dir, revisions_=_plan_revisions(plan))


def _plan_revisions(plan: DownloadPlan) -> dict[str, str]:
    out = {}
    for f in plan.files:
        out[f.repo_key] = f.revision
    if "wav2vec_fallback" in out:  # the fallback was taken: look for the .bin snapshot
        out["wav2vec"] = out["wav2vec_fallback"]
    return out


# ------------------------------------------------------------------------------------------
# Notebook 00 and `mtlib setup`


def default_tiny_dir() -> Path:
    from mtlib.io import project_root

    return project_root() / ".cache" / "tiny-weights"


def weights_status(config) -> str:
    """The table notebook 00 prints. Tiny: write the tiny checkpoints when missing, verify
    them. Real: verify what is there and say what to do next (never downloads)."""
    model = getattr(config, "model", config)
    wcfg = model.weights
    if model.name == "tiny":
        return verify_layout(layout_for_config(config), "tiny", strict=False).table()
    if wcfg.random:
        from mtlib.random_weights import RANDOM_WEIGHTS_NOTE

        return f"*** {RANDOM_WEIGHTS_NOTE} ***\nNo checkpoint is read (model.weights.random: true)."
    try:
        layout = resolve_layout(wcfg, check_files=False)
    except WeightsError as e:
        return f"{e}\n\nNext: run `{FIX_DOWNLOAD}` in a terminal (about 100 GB), then re-run this cell."
    report = verify_layout(layout, "multitalk-14b", strict=False)
    nxt = ("\n\nNext: run notebook 01." if report.ok
           else f"\n\nNext: fix the problems above (`{FIX_DOWNLOAD}` re-fetches missing or damaged files), then re-run this cell.")  # fmt: skip
    return report.table() + nxt


def layout_for_config(config) -> WeightsLayout:
    """The checkpoints a run uses: the tiny set (written on first use) for model "tiny",
    else the real ones found by resolve_layout (missing files raise, naming them)."""
    model = getattr(config, "model", config)
    wcfg = model.weights
    if model.name == "tiny":
        from mtlib.models.tiny import write_tiny_checkpoints

        root = Path(wcfg.tiny_dir).expanduser() if wcfg.tiny_dir else default_tiny_dir()
        return write_tiny_checkpoints(root, seed=wcfg.tiny_seed)
    return resolve_layout(wcfg)


def add_arguments_setup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        help="one folder holding Wan2.1-I2V-14B-480P/, MeiGen-MultiTalk/, chinese-wav2vec2-base/",
    )
    parser.add_argument("--wan-dir", help="the Wan2.1-I2V-14B-480P folder")
    parser.add_argument("--multitalk-dir", help="the MeiGen-MultiTalk folder")
    parser.add_argument("--wav2vec-dir", help="the chinese-wav2vec2-base folder")
    parser.add_argument(
        "--download",
        action="store_true",
        help="fetch what is missing (into --root, else the hub cache)",
    )
    parser.add_argument(
        "--with-optional",
        action="store_true",
        help="also fetch xlm-roberta-large/ (official code only)",
    )
    parser.add_argument(
        "--verify", action="store_true", help="check every file (default when not downloading)"
    )
    parser.add_argument(
        "--full", action="store_true",
        help="with --verify: also read every tensor and find NaN / inf (one read of all files)",
    )
    parser.add_argument(
        "--tiny",
        metavar="DIR",
        help="write (if missing) and verify the tiny random checkpoints in DIR",
    )
    parser.add_argument("--config", default="multitalk-14b", choices=("multitalk-14b", "tiny"),
                        help="which model's shapes to verify against")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--lora", choices=("lightx2v", "fusionx"),
                        help="download a distillation recipe's LoRA (the repo the README links) into --root")  # fmt: skip


def run_setup(args: argparse.Namespace) -> int:
    """Exit 0: ready. 1: problems (each printed with its fix). 2: usage error."""
    dirs = (args.wan_dir, args.multitalk_dir, args.wav2vec_dir)
    if args.root and any(dirs):
        print(
            "mtlib setup: give --root OR --wan-dir/--multitalk-dir/--wav2vec-dir, not both.",
            file=sys.stderr,
        )
        return 2
    if (
        any(dirs)
        and not all(dirs)
        and not (args.wan_dir and not args.wav2vec_dir and not args.multitalk_dir)
    ):
        print("mtlib setup: --multitalk-dir and --wav2vec-dir need --wan-dir (give all three, or only "
              "--wan-dir for a root or a linked folder).", file=sys.stderr)  # fmt: skip
        return 2
    if args.download and any(dirs):
        print("mtlib setup: --download fetches into --root DIR or the hub cache; it does not take "
              "--wan-dir/--multitalk-dir/--wav2vec-dir.", file=sys.stderr)  # fmt: skip
        return 2
    if args.tiny and (args.download or args.root or any(dirs)):
        print(
            "mtlib setup: --tiny DIR stands alone (it writes random checkpoints).", file=sys.stderr
        )
        return 2
    if getattr(args, "lora", None):
        from mtlib.setup_extras import download_lora

        try:
            path = download_lora(args.lora, args.root)
        except ValueError as e:
            print(f"mtlib setup: {e}", file=sys.stderr)
            return 1
        print(f"{args.lora} LoRA: {path}\nuse it: mtlib generate --config multitalk-480-{args.lora} --lora {path}:1.0 ...")
        return 0
    try:
        if args.tiny:
            from mtlib.models.tiny import write_tiny_checkpoints

            layout = write_tiny_checkpoints(Path(args.tiny))
            config_name = "tiny"
        else:
            config_name = args.config
            if args.download:
                plan = plan_download(args.root, include_optional=args.with_optional)
                print(plan.table())
                check_disk_space(plan)
                download(plan)
            layout = resolve_layout(root=args.root, wan_dir=args.wan_dir, multitalk_dir=args.multitalk_dir,
                                    wav2vec_dir=args.wav2vec_dir, check_files=False)  # fmt: skip
        report = verify_layout(layout, config_name, strict=False)
        if getattr(args, "full", False) and report.ok:  # data check only on sound headers
            from mtlib.datacheck import check_layout_finite

            cost = check_layout_finite(layout, report, progress=not args.json)
            if not args.json:
                print(f"full data check: {cost['bytes'] / 1e9:.2f} GB in {cost['seconds']:.1f} s",
                      file=sys.stderr)  # fmt: skip
    except WeightsError as e:
        if args.json:
            print(json.dumps({"ok": False, "error": str(e)}))
        else:
            print(str(e), file=sys.stderr)
        return 1
    from mtlib.setup_extras import find_quant_files

    quant = [] if args.tiny else find_quant_files(layout.multitalk_dir)
    if args.json:
        rec = report.to_json()
        rec["quant_files"] = [{"path": str(q.path), "ok": q.ok, "detail": q.detail} for q in quant]
        print(json.dumps(rec, indent=1))
    else:
        print(report.table())
        for q in quant:
            print(q.line())
    return 0 if report.ok and all(q.ok for q in quant) else 1
