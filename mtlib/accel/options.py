"""The DiT's speed options, resolved once from the config: what the plan prints, what the
loader builds, and what the run record keeps.

`resolve_dit_options(cfg, cuda)` turns model.{precision, attention, compile, rope_precision,
offload, weights.quant, weights.random, loras} into one `DiTOptions`: the effective choice of
each (e.g. attention "auto" -> "triton-fp8" under precision fp8 at real size), plus a
per-weight-group precision table (`weight_precisions`) and one line for the plan. The loader
(mtlib.accel.dit_load) reads only this object, so the plan and the run cannot disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mtlib.config import ConfigError

# DiT head dims where the Triton kernels run (mtlib.kernels.attention.head_dim_ok): a power
# of two in 16..256 (bf16) / 32..256 (fp8). The real model's is 128, the tiny one's 16.
_HEAD_DIMS = {"multitalk-14b": 128, "tiny": 16}


@dataclass(frozen=True)
class DiTOptions:
    precision: str  # fp32 | reference | fp8 (effective on this device)
    attention: str  # sdpa | triton | triton-fp8
    compile: bool
    rope_dtype: str  # float64 | float32
    offload: str  # none | blocks
    resident_params: int | None  # with offload blocks: parameters kept on the GPU
    quant: str  # none | int8
    random: bool  # real-size architecture, random weights
    loras: tuple = ()  # ((path, scale), ...)
    recipe: str = "none"
    notes: tuple[str, ...] = field(default=())

    def weight_precisions(self) -> dict[str, str]:
        """Which weights run in which precision (plan, run record, video metadata)."""
        from mtlib.spec import component_dtype  # the one precision table

        lin = other = component_dtype(self.precision, "dit")
        if self.quant == "int8":
            lin = "int8 (per-output-channel scale, dequantised to bfloat16 per layer)"
        if self.precision == "fp8":
            lin = (
                "float8 e4m3 (per-output-channel scale; activations per token; fast accumulation)"
                + (", from the int8 checkpoint" if self.quant == "int8" else "")
            )
        src = "RANDOM (no checkpoint)" if self.random else "checkpoint"
        out = {
            "dit.blocks linears": f"{lin} [{src}]",
            "dit other weights": f"{other} [{src}]",
            **{
                c: f"{component_dtype(self.precision, c)} [{src}]"
                for c in ("t5", "clip", "vae", "wav2vec2")
            },
        }
        if self.loras:
            out["loras"] = (
                ", ".join(f"{p} x{s}" for p, s in self.loras) + " (merged into the DiT at load)"
            )
        return out

    def line(self) -> str:
        """One line for the plan: where the DiT's weights live and how it computes."""
        where = (
            "all on the GPU"
            if self.offload == "none"
            else (
                "blocks streamed from pinned host memory"
                + (f", {self.resident_params:,} params resident" if self.resident_params else "")
            )
        )
        return (
            f"DiT: {'RANDOM WEIGHTS, ' if self.random else ''}precision {self.precision}"
            f"{', int8 checkpoint' if self.quant == 'int8' else ''} | weights {where} | "
            f"self-attention {self.attention} | compile {'on' if self.compile else 'off'} | "
            f"RoPE {self.rope_dtype}"
            + (f" | recipe {self.recipe}" if self.recipe != "none" else "")
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weight_precisions"] = self.weight_precisions()
        return d


def effective_precision(device: str, precision: str) -> str:
    """fp32 on the CPU (bf16 matmuls there are slow and the golden parity is fp32). fp8 is a
    GPU speed option: asked for elsewhere, it is refused rather than silently dropped."""
    if str(device).startswith("cuda"):
        return precision
    if precision == "fp8":
        raise ConfigError(
            f"model.precision: 'fp8' needs a CUDA GPU (fp8 tensor cores), but the run's device "
            f"is {device}. Use model.precision=reference, or model.device=cuda on a Hopper-class GPU."
        )
    return "fp32"


def resolve_dit_options(cfg, cuda: bool) -> DiTOptions:
    """The effective DiT options of `cfg` on a CUDA (cuda=True) or CPU device."""
    m = cfg.model
    notes: list[str] = []
    precision = effective_precision(m.device if not cuda else "cuda", m.precision)
    head_dim = _HEAD_DIMS.get(m.name, 128)
    attention = m.attention
    if attention == "auto":
        attention = "triton-fp8" if precision == "fp8" and head_dim >= 32 else "sdpa"
    if attention != "sdpa" and not cuda:
        raise ConfigError(f"model.attention: {attention!r} needs Triton on a CUDA GPU; this run is on "
                          f"{m.device}. Fix: model.attention=sdpa (or auto).")  # fmt: skip
    compile_ = bool(m.compile and cuda)
    if m.compile and not cuda:
        notes.append("model.compile ignored on the CPU")
    rope = m.rope_precision
    if rope == "auto":
        rope = "float32" if compile_ else "float64"
    if m.offload.mode == "blocks" and not cuda:
        raise ConfigError("model.offload.mode: 'blocks' streams weights to a CUDA GPU; this run is on "
                          f"{m.device}. Fix: model.offload.mode=none.")  # fmt: skip
    if m.offload.mode == "none" and m.offload.resident_params is not None:
        raise ConfigError(
            "model.offload.resident_params is set but model.offload.mode is 'none' (every weight is "
            "resident anyway). Fix: model.offload.mode=blocks, or drop resident_params."
        )
    if m.weights.quant != "none" and m.name == "tiny":
        notes.append(
            "the tiny model has no published int8 checkpoint: quant reads model.weights.quant_dir"
        )
    if m.weights.random and m.name == "tiny":
        raise ConfigError("model.weights.random: the tiny model already has random weights (written in "
                          "the real formats); random is for model multitalk-14b.")  # fmt: skip
    if m.weights.random and m.weights.quant != "none":
        raise ConfigError("model.weights.random with model.weights.quant=int8: random weights have no "
                          "checkpoint to quantise. Fix: pick one.")  # fmt: skip
    return DiTOptions(
        precision=precision, attention=attention, compile=compile_, rope_dtype=rope,
        offload=m.offload.mode, resident_params=m.offload.resident_params, quant=m.weights.quant,
        random=m.weights.random, loras=tuple((lo.path, lo.scale) for lo in m.loras),
        recipe=m.recipe, notes=tuple(notes),
    )  # fmt: skip
