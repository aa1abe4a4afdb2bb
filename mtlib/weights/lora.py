"""LoRA files merged into the DiT weights at load time, as the reference's WanLoraWrapper does.

Where it sits: `generation.load_models` merges `config.model.loras` right after the DiT's
state dict is loaded and BEFORE anything else touches the weights (fp8 quantisation, block
offload pinning, torch.compile), so every later stage sees merged weights. The plan
(`mtlib.plan`) checks the files first, from their safetensors headers only: a file that
does not fit the DiT is refused before any weight is read.

The reference's semantics (golden README "LoRA", facts §11.5), kept exactly for its format:

    diffusion_model.<module>.lora_down.weight [r, in], .lora_up.weight [out, r]
                                        W    += (lora_up @ lora_down) · scale
    diffusion_model.<module>.diff       W    += diff · scale        (a full-weight delta)
    diffusion_model.<module>.diff_b     bias += diff_b · scale
    .alpha scalars                      ignored (no alpha / rank factor in this format)

The LoRA tensors are first cast to the parameter's dtype (the reference's `param_dtype`),
then the product runs in float32 (the reference on a CPU; on a GPU it runs in bf16 — see
docs/lora.md for the measured difference) and the sum W + delta is rounded once to the
parameter's dtype. Several files are merged one after the other, each with its own scale.

Other formats people download (their own alpha convention, see docs/lora.md):
PEFT / diffusers `lora_A.weight` / `lora_B.weight` under `transformer.` or `diffusion_model.`
(original Wan module names or diffusers' WanTransformer3DModel names), and kohya
`lora_unet_<module with _>.lora_down.weight` / `.lora_up.weight` (+ `.diff`, `.diff_b`).
For those, a `.alpha` scalar multiplies the delta by alpha / rank.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlib.io import InputError, resolve_local

FORMATS = ("reference", "peft", "kohya")
REFERENCE_PREFIX = "diffusion_model."
PEFT_PREFIXES = ("diffusion_model.", "transformer.")
KOHYA_PREFIX = "lora_unet_"
# suffix -> role; longest first so ".diff_b" wins over ".diff"
_SUFFIXES = (
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".diff_b", "diff_b"),
    (".diff", "diff"),
    (".alpha", "alpha"),
)
_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip
# diffusers' WanTransformer3DModel names -> the original Wan names (the reference's and
# mtlib's parameter names); block-level entries apply inside `blocks.<i>.`
_DIFFUSERS_TOP = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
}
_DIFFUSERS_BLOCK = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k", "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img", "attn2.norm_added_k": "cross_attn.norm_k_img",
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
    "norm2": "norm3",  # diffusers numbers the norms in call order: its norm2 is Wan's norm3
}  # fmt: skip
# model widths -> the Wan model they belong to (to name the model a wrong-size LoRA was made for)
_KNOWN_DIMS = {
    5120: "Wan2.1-14B (dim 5120)",
    13824: "Wan2.1-14B (ffn 13824)",
    1536: "Wan2.1-1.3B (dim 1536)",
    8960: "Wan2.1-1.3B (ffn 8960)",
    3072: "Wan2.2-TI2V-5B (dim 3072)",
    14336: "Wan2.2-TI2V-5B (ffn 14336)",
}


class LoraError(InputError):
    """A LoRA file mtlib refuses: names the file, what is wrong and the fix."""


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file and its strength (the reference's --lora_dir / --lora_scale pair)."""

    path: str
    scale: float
    allow_unmatched: bool = False  # merge the matching modules of a partly matching file

    @classmethod
    def from_config(cls, entry: Any) -> LoraSpec:
        if isinstance(entry, LoraSpec):
            return entry
        if isinstance(entry, dict):
            return cls(
                str(entry["path"]), float(entry["scale"]), bool(entry.get("allow_unmatched", False))
            )
        return cls(
            str(entry.path), float(entry.scale), bool(getattr(entry, "allow_unmatched", False))
        )


def parse_lora_arg(text: str) -> LoraSpec:
    """`PATH:SCALE` of `mtlib generate --lora` (the scale is required, like in the config)."""
    path, sep, scale = str(text).rpartition(":")
    try:
        value = float(scale)
    except ValueError:
        value = float("nan")
    if not sep or not path or not math.isfinite(value):
        raise LoraError(
            f"--lora {text!r}: expected PATH:SCALE with SCALE a number, e.g. "
            "--lora lightx2v_rank32.safetensors:1.0 (the reference's --lora_scale; it has no "
            "implicit default here)."
        )
    return LoraSpec(path, value)


@dataclass(frozen=True)
class TensorHeader:
    dtype: str
    shape: tuple[int, ...]


def read_header(path: str | os.PathLike, what: str = "LoRA file") -> dict[str, TensorHeader]:
    """Tensor names, dtypes and shapes of a safetensors file from its header only (no tensor
    data read); refuses a missing, non-safetensors or truncated file naming what is wrong."""
    p = resolve_local(path)
    if not p.is_file():
        raise LoraError(
            f"{what} {str(path)!r}: not found. Fix: check the path (a .safetensors file)."
        )
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LoraError(
                f"{what} {str(path)!r}: truncated: {size} bytes, too short for a safetensors "
                "header. Fix: download the file again."
            )
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise LoraError(
                f"{what} {str(path)!r}: truncated or not a safetensors file: the header length "
                f"field says {n} bytes but the file has {size - 8} after it. Fix: download the "
                "file again (a .safetensors file, not .ckpt / .pt)."
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LoraError(
            f"{what} {str(path)!r}: not a safetensors file (its header is not JSON). Fix: use a "
            ".safetensors LoRA file."
        ) from None
    out: dict[str, TensorHeader] = {}
    data_end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        shape = tuple(int(s) for s in info["shape"])
        begin, end = info["data_offsets"]
        data_end = max(data_end, end)
        nbytes = _DTYPE_BYTES.get(info["dtype"], 0) * math.prod(shape)
        if _DTYPE_BYTES.get(info["dtype"]) and end - begin != nbytes:
            raise LoraError(
                f"{what} {str(path)!r}: damaged: tensor {name!r} {info['dtype']}{list(shape)} "
                f"needs {nbytes} bytes but its header entry spans {end - begin}. Fix: download "
                "the file again."
            )
        out[name] = TensorHeader(info["dtype"], shape)
    if 8 + n + data_end > size:
        raise LoraError(
            f"{what} {str(path)!r}: truncated: the header describes {data_end} bytes of tensor "
            f"data but the file holds {size - 8 - n}. Fix: download the file again."
        )
    return out


# --------------------------------------------------------------------------------------------
# Key mapping
# --------------------------------------------------------------------------------------------


@dataclass
class _Module:
    """The LoRA tensors of one module of the file."""

    key_stem: str  # the file's name for the module, prefix included, suffix excluded
    fmt: str
    path: str | None = None  # mtlib / reference module path, None when it matches nothing
    keys: dict[str, str] = field(default_factory=dict)  # role -> tensor key


def _split(key: str) -> tuple[str, str, str, str] | None:
    """(family, module name in the file without its prefix, role, suffix) of a tensor key;
    family: kohya, diffusion_model, transformer or bare. None when it is no LoRA key."""
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix):
            return (*_family(key[: -len(suffix)]), role, suffix)
    return None


def _family(stem: str) -> tuple[str, str]:
    if stem.startswith(KOHYA_PREFIX):
        return "kohya", stem[len(KOHYA_PREFIX) :]
    for prefix in PEFT_PREFIXES:
        if stem.startswith(prefix):
            return prefix[:-1], stem[len(prefix) :]
    return "bare", stem


def _formats(keys: Iterable[str]) -> set[str]:
    """Formats of the low-rank / delta keys (alpha scalars say nothing about the format)."""
    found = set()
    for key in keys:
        s = _split(key)
        if s is None or s[2] == "alpha":
            continue
        family, name, _, suffix = s
        if family == "kohya":
            found.add("kohya")
        elif family == "bare" and name.startswith("lora_"):
            found.add(f"kohya-style for another network ({name.split('_')[1]!r}, not 'lora_unet_')")
        elif family == "bare":
            found.add("no diffusion_model. / transformer. / lora_unet_ prefix")
        elif suffix in (".lora_A.weight", ".lora_B.weight") or family == "transformer":
            found.add("peft")
        else:  # lora_down / lora_up / diff / diff_b under diffusion_model. (or no prefix)
            found.add("reference")
    return found


def _key_format(split: tuple[str, str, str, str], file_fmt: str) -> str:
    family, _, role, suffix = split
    if family == "kohya":
        return "kohya"
    if suffix in (".lora_A.weight", ".lora_B.weight") or family == "transformer":
        return "peft"
    if role in ("diff", "diff_b", "alpha") and file_fmt == "peft":
        return "peft"  # a PEFT file's full deltas / alphas under diffusion_model.
    return "reference"


def _diffusers_to_wan(name: str) -> str | None:
    if name in _DIFFUSERS_TOP:
        return _DIFFUSERS_TOP[name]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m and m.group(2) in _DIFFUSERS_BLOCK:
        return f"blocks.{m.group(1)}.{_DIFFUSERS_BLOCK[m.group(2)]}"
    return None


def _resolve(fmt: str, family: str, name: str, modules: set[str],
             underscored: dict[str, str]) -> str | None:  # fmt: skip
    if fmt == "kohya":
        return underscored.get(name)
    if family == "bare":
        return None  # the reference only reads keys under diffusion_model.
    if name in modules:
        return name
    if fmt == "peft":
        alt = _diffusers_to_wan(name)
        if alt in modules:
            return alt
    return None


def file_format(keys: Iterable[str]) -> str:
    """The format a file's keys are in: reference, peft, kohya, mixed (...) or unknown (...)."""
    found = _formats(keys)
    if not found:
        return "unknown (no .lora_down/.lora_up/.lora_A/.lora_B/.diff/.diff_b keys)"
    return found.pop() if len(found) == 1 else "mixed (" + ", ".join(sorted(found)) + ")"


# --------------------------------------------------------------------------------------------
# Checking a file against the DiT (headers only)
# --------------------------------------------------------------------------------------------


@dataclass
class LoraDelta:
    """One parameter update: param += factor · scale · (up @ down | full)."""

    param: str
    kind: str  # "lowrank" | "full"
    keys: tuple[str, ...]  # (up, down) or (full,)
    alpha_key: str | None = None  # non-reference formats: delta · alpha / rank


@dataclass
class LoraCheck:
    """A LoRA file checked against the DiT: what it will change, by how much."""

    spec: LoraSpec
    path: Path
    format: str
    n_tensors: int
    deltas: list[LoraDelta]
    unmatched: list[str]  # the file's module names that match no DiT parameter
    ignored: list[str]  # keys read and deliberately not applied (.alpha of the reference format)

    @property
    def params(self) -> list[str]:
        return sorted({d.param for d in self.deltas})

    def describe(self) -> str:
        """One line for the plan summary."""
        if self.ignored:
            alpha = f"{len(self.ignored)} .alpha ignored (reference format)"
        elif any(d.alpha_key for d in self.deltas):
            alpha = "alpha/rank applied"
        else:
            alpha = "no alpha"
        return (
            f"{self.path.name}: scale {self.spec.scale:g}, {self.format} format, "
            f"{len(self.params)} parameters touched, {alpha}"
            + (f", {len(self.unmatched)} unmatched modules skipped" if self.unmatched else "")
        )


def likely_model(shape: Sequence[int], own: Sequence[int]) -> str:
    """The Wan model whose widths appear in `shape` (a LoRA tensor) and not in the DiT's own."""
    for d in shape:
        if d in _KNOWN_DIMS and d not in own:
            return _KNOWN_DIMS[d]
    return f"a model with other widths (the LoRA's: {sorted(set(shape) - set(own))})"


def check_lora(spec: LoraSpec, dit_shapes: dict[str, tuple[int, ...]],
               model: str = "MultiTalk") -> LoraCheck:  # fmt: skip
    """Match one file's keys to the DiT's parameters from its header; refuse what cannot merge.

    dit_shapes: parameter name -> shape of the DiT (e.g. `dit_param_shapes(config)`).
    Raises LoraError: missing / truncated file, no key matching, unmatched modules (unless
    spec.allow_unmatched), a shape that does not fit."""
    spec = LoraSpec.from_config(spec)
    header = read_header(spec.path)
    path = resolve_local(spec.path)
    where = f"LoRA file {str(spec.path)!r}"
    modules = {k.rsplit(".", 1)[0] for k in dit_shapes}
    underscored = {m.replace(".", "_"): m for m in modules}
    fmt_found = file_format(header)
    file_fmts = _formats(header)
    file_fmt = file_fmts.pop() if len(file_fmts) == 1 else "reference"
    groups: dict[tuple[str, str, str], _Module] = {}
    not_lora: list[str] = []
    for key in header:
        split = _split(key)
        if split is None:
            not_lora.append(key)
            continue
        family, name, role, suffix = split
        fmt = _key_format(split, file_fmt)
        g = groups.setdefault((fmt, family, name), _Module(key[: -len(suffix)], fmt))
        g.keys[role] = key
        g.path = _resolve(fmt, family, name, modules, underscored)
    matched = [g for g in groups.values() if g.path is not None and set(g.keys) - {"alpha"}]
    if not matched:
        examples = ", ".join(repr(k) for k in list(header)[:4])
        raise LoraError(
            f"{where}: none of its {len(header)} tensors matches a parameter of the {model} DiT "
            f"(format found: {fmt_found}; example keys: {examples}). mtlib reads the reference's "
            "'diffusion_model.<module>.lora_down.weight' / '.lora_up.weight' / '.diff' / "
            "'.diff_b', PEFT/diffusers '<transformer.|diffusion_model.><module>.lora_A.weight' / "
            "'.lora_B.weight' and kohya 'lora_unet_<module>.lora_down.weight'. Fix: use a LoRA "
            "made for Wan2.1-14B (I2V or T2V)."
        )
    unmatched = sorted(g.key_stem for g in groups.values() if g.path is None) + sorted(not_lora)
    deltas: list[LoraDelta] = []
    ignored: list[str] = []
    for g in matched:
        roles = set(g.keys)
        if ("up" in roles) != ("down" in roles):
            have, lack = ("down", "up") if "down" in roles else ("up", "down")
            unmatched.append(f"{g.key_stem} (lora_{have} without its lora_{lack})")
        alpha_key = None
        if "alpha" in roles:
            if g.fmt == "reference":
                ignored.append(g.keys["alpha"])  # the reference never applies alpha
            else:
                alpha_key = g.keys["alpha"]
                if math.prod(header[alpha_key].shape) != 1:
                    raise LoraError(
                        f"{where}: {alpha_key!r} must be a scalar, got shape "
                        f"{list(header[alpha_key].shape)}. Fix: download the file again."
                    )
        if "down" in roles and "up" in roles:
            deltas.append(LoraDelta(f"{g.path}.weight", "lowrank", (g.keys["up"], g.keys["down"]),
                                    alpha_key))  # fmt: skip
        if "diff" in roles:
            deltas.append(LoraDelta(f"{g.path}.weight", "full", (g.keys["diff"],)))
        if "diff_b" in roles:
            deltas.append(LoraDelta(f"{g.path}.bias", "full", (g.keys["diff_b"],)))
    if unmatched and not spec.allow_unmatched:
        shown = ", ".join(repr(u) for u in unmatched[:12]) + (" ..." if len(unmatched) > 12 else "")
        raise LoraError(
            f"{where}: {len(unmatched)} of its modules match no parameter of the {model} DiT: "
            f"{shown} ({len(deltas)} parameter updates would match). Fix: use a LoRA made for "
            "this model, or set allow_unmatched: true on this model.loras entry to merge only "
            "the matching ones."
        )
    for d in deltas:
        _check_shape(where, d, header, dit_shapes)
    return LoraCheck(spec, path, fmt_found, len(header), deltas, unmatched, ignored)


def _check_shape(where: str, d: LoraDelta, header: dict, dit_shapes: dict) -> None:
    if d.param not in dit_shapes:
        raise LoraError(
            f"{where}: {d.keys[0]!r} updates {d.param!r}, which the DiT does not have "
            "(that module has no bias). Fix: use a LoRA made for this model."
        )
    own = tuple(dit_shapes[d.param])
    if d.kind == "full":
        got = header[d.keys[0]].shape
        ok = got == own
    else:
        up, down = header[d.keys[0]].shape, header[d.keys[1]].shape
        got = (up[0], *down[1:]) if len(up) >= 2 and len(down) >= 2 else up + down
        ok = (len(up) >= 2 and len(down) >= 2 and up[1] == down[0] and up[0] == own[0]
              and math.prod(down[1:]) == math.prod(own[1:]) and math.prod(up[2:]) == 1)  # fmt: skip
        if len(up) >= 2 and len(down) >= 2 and up[1] != down[0]:
            raise LoraError(f"{where}: {d.keys[0]!r} {list(up)} and {d.keys[1]!r} {list(down)} "
                            "have different ranks. Fix: download the file again.")  # fmt: skip
    if not ok:
        raise LoraError(
            f"{where}: shape mismatch at parameter {d.param!r}: the DiT has {list(own)}, the LoRA "
            f"gives {list(got)} ({', '.join(d.keys)}); it looks made for {likely_model(got, own)}. "
            "Fix: use a LoRA made for Wan2.1-14B (MultiTalk's DiT; T2V-14B LoRAs fit too)."
        )


def dit_param_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the DiT of `config` (a DiTConfig or CONFIGS name), from a
    meta-device build: no memory, no weights."""
    from mtlib.models.dit import CONFIGS, build_dit

    cfg = CONFIGS[config] if isinstance(config, str) else config
    model = build_dit(cfg, device="meta")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_loras(specs: Iterable[Any], dit_shapes: dict[str, tuple[int, ...]],
                model: str = "MultiTalk") -> list[LoraCheck]:  # fmt: skip
    return [check_lora(LoraSpec.from_config(s), dit_shapes, model) for s in specs]


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------


def _param(model: Any, name: str):
    module = model
    for part in name.split(".")[:-1]:
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return getattr(module, name.split(".")[-1])


def merge_checked(model: Any, check: LoraCheck, compute_device: Any = None,
                  arithmetic: str = "fp32") -> list[str]:  # fmt: skip
    """Merge one checked file into `model`'s parameters in place; returns the parameters changed.

    The LoRA tensors are cast to the parameter's dtype (the reference's first step), then
    arithmetic "fp32": delta = (up @ down)·scale·factor in float32 and the parameter set to
    round(W + delta) (one rounding); "reference-gpu": the reference's GPU arithmetic, the
    product and the scale in the parameter's dtype, added into the parameter. compute_device:
    where the products run (default: where the parameter is)."""
    import torch
    from safetensors import safe_open

    if arithmetic not in ("fp32", "reference-gpu"):
        raise ValueError(f"arithmetic must be 'fp32' or 'reference-gpu', got {arithmetic!r}")
    scale = float(check.spec.scale)
    changed = []
    with torch.no_grad(), safe_open(str(check.path), framework="pt") as f:
        for d in check.deltas:
            p = _param(model, d.param)
            dev = torch.device(compute_device) if compute_device is not None else p.device
            work = torch.float32 if arithmetic == "fp32" else p.dtype
            tensors = [f.get_tensor(k).to(dev).to(p.dtype).to(work) for k in d.keys]
            factor = 1.0
            if d.alpha_key is not None:  # non-reference formats: alpha / rank
                alpha = float(f.get_tensor(d.alpha_key).float().reshape(-1)[0])
                factor = alpha / tensors[1].shape[0]
            if d.kind == "lowrank":
                up, down = tensors
                delta = up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)
                delta = delta.reshape(p.shape)
            else:
                delta = tensors[0]
            delta = delta * (scale * factor)
            if arithmetic == "fp32":
                merged = p.detach().to(dev, torch.float32) + delta
                p.data.copy_(merged.to(p.dtype))
            else:
                p.data.add_(delta.to(p.device, p.dtype))
            changed.append(d.param)
    return changed


def merge_loras(model: Any, specs: Iterable[Any], compute_device: Any = None,
                arithmetic: str = "fp32", progress: bool = False) -> list[LoraCheck]:  # fmt: skip
    """Check every file against `model`'s own parameters (all before the first merge), then
    merge them one after the other, each with its scale. Returns the checks (what changed)."""
    specs = [LoraSpec.from_config(s) for s in specs]
    if not specs:
        return []
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    checks = check_loras(specs, shapes)
    from tqdm.auto import tqdm

    for check in tqdm(checks, desc="LoRA merge", unit="file", disable=not progress):
        merge_checked(model, check, compute_device, arithmetic)
    return checks


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(resolve_local(path), "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def record(checks: Sequence[LoraCheck]) -> list[dict]:
    """The run record of the merged files: path, scale, format, sha256, parameters touched."""
    return [
        {"path": str(c.spec.path), "scale": c.spec.scale, "format": c.format,
         "sha256": file_sha256(c.path), "params_touched": len(c.params),
         "unmatched": list(c.unmatched)}
        for c in checks
    ]  # fmt: skip
