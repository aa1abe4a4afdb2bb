"""The reference's int8 checkpoints (optimum-quanto's format), read without optimum-quanto.

MeiGen publishes `quant_models/dit_model_int8.safetensors` + `dit_model_map_int8.json`, the
FusionX-merged `quant_model_int8_FusionX.safetensors` + `quantization_map_int8_FusionX.json`,
and `t5_int8.safetensors` + `t5_map_int8.json` (facts §1.1, §11.4). They were written by
optimum-quanto: `quantize(model, weights=qint8)`, `freeze(model)`,
`safetensors.torch.save_file(model.state_dict())` and `json.dump(quantization_map(model))`.
In that format a quantised nn.Linear `<m>` stores

    <m>.weight._data   [out, in]  int8 (qint8) or float8 (qfloat8*), symmetric, no zero point
    <m>.weight._scale  [out, 1]   the float dtype the model had when quantised
    <m>.bias, <m>.input_scale, <m>.output_scale (scalars; 1 unless activations are quantised)

and the map names every quantised module: {"<m>": {"weights": "qint8", "activations": "none"}}.
Every other tensor is stored as usual. quanto computes such a layer (weights only, on a GPU)
as `matmul(x.to(scale.dtype), (scale * data).t()) + bias`: the weight dequantised per call.

`QuantLinear` does the same: the int8 data and the scale stay on the device (1 byte per
weight), each call dequantises its weight and runs one bf16 (or fp32) matmul. The extra
traffic is ~3 bytes per weight per call, about 1% of a 480p pass. Like the reference's
`to_param_dtype_fp32only`, fp32 scales become bf16 under the reference precision.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mtlib.io import InputError

# quanto's qtype names (optimum.quanto.tensor.qtype) -> storage dtype of `_data`
QTYPES = {
    "qint8": torch.int8,
    "qfloat8": torch.float8_e4m3fn,
    "qfloat8_e4m3fn": torch.float8_e4m3fn,
    "qfloat8_e5m2": torch.float8_e5m2,
}


class QuantError(InputError):
    """A quantised checkpoint or map mtlib cannot use (names the file, the rule, the fix)."""


class QuantLinear(nn.Module):
    """nn.Linear with 8-bit weights and one scale per output channel, dequantised per call:
    y = x W^T + b with W = scale * data, as quanto computes it (weights-only quantisation)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, qdtype=torch.int8,
                 scale_dtype=torch.bfloat16, device=None):  # fmt: skip
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # Parameters (not buffers) so block offload streams them like any weight
        self.weight_q = nn.Parameter(
            torch.empty(out_features, in_features, dtype=qdtype, device=device), requires_grad=False
        )
        self.weight_scale = nn.Parameter(
            torch.empty(out_features, 1, dtype=scale_dtype, device=device), requires_grad=False
        )
        self.bias = (nn.Parameter(torch.empty(out_features, dtype=scale_dtype, device=device), requires_grad=False)
                     if bias else None)  # fmt: skip

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight [out, in] in the scale's dtype (what quanto's matmul sees)."""
        return self.weight_scale * self.weight_q.to(self.weight_scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        return F.linear(x.to(w.dtype), w, None if self.bias is None else self.bias.to(w.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={self.weight_q.dtype}"


def read_map(path: str | Path) -> dict[str, dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise QuantError(f"quantisation map {p}: not found. It sits next to the int8 checkpoint "
                         "(quant_models/); fix: re-download MeiGen-AI/MeiGen-MultiTalk's quant_models/.")  # fmt: skip
    try:
        qmap = json.loads(p.read_text())
    except ValueError as e:
        raise QuantError(
            f"quantisation map {p}: not valid JSON ({e}); the file is damaged, re-download it."
        ) from None
    if not isinstance(qmap, dict) or not all(
        isinstance(v, dict) and "weights" in v for v in qmap.values()
    ):
        raise QuantError(f"quantisation map {p}: expected {{module: {{weights, activations}}}} (optimum-quanto's "
                         "quantization_map), got something else.")  # fmt: skip
    return qmap


def quantize_modules(model: nn.Module, qmap: dict[str, dict[str, str]], scale_dtype: torch.dtype,
                     where: str = "quantisation map") -> list[str]:  # fmt: skip
    """Swap the Linear modules the map names for QuantLinear (on the model's device, meta
    included). Returns their names. Refuses what mtlib cannot compute faithfully."""
    modules = dict(model.named_modules())
    done = []
    for name, q in qmap.items():
        weights, acts = q.get("weights", "none"), q.get("activations", "none")
        if weights == "none":
            continue
        if acts != "none":
            raise QuantError(f"{where}: module {name!r} has quantised activations ({acts}); mtlib computes "
                             "weights-only checkpoints (the reference's are). Fix: use MeiGen's int8 files.")  # fmt: skip
        if weights not in QTYPES:
            raise QuantError(f"{where}: module {name!r} has weights {weights!r}; mtlib reads 8-bit weights "
                             f"({', '.join(QTYPES)}), not 2/4-bit ones.")  # fmt: skip
        m = modules.get(name)
        if not isinstance(m, nn.Linear):
            raise QuantError(f"{where}: names {name!r}, which is not a Linear layer of this model "
                             f"({type(m).__name__ if m is not None else 'absent'}): a map for another model?")  # fmt: skip
        ql = QuantLinear(m.in_features, m.out_features, m.bias is not None, QTYPES[weights], scale_dtype,
                         device=m.weight.device)  # fmt: skip
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, ql)
        done.append(name)
    return done


def checkpoint_key(model_key: str, quantised: set[str]) -> str:
    """The file key of a model state-dict key (QuantLinear's weight_q / weight_scale are
    quanto's <m>.weight._data / <m>.weight._scale)."""
    mod, _, leaf = model_key.rpartition(".")
    if mod in quantised and leaf in ("weight_q", "weight_scale"):
        return f"{mod}.weight.{'_data' if leaf == 'weight_q' else '_scale'}"
    return model_key


def ignored_file_keys(file_keys, quantised: set[str]) -> set[str]:
    """quanto's per-layer activation scales: stored, unused with weights-only quantisation."""
    return {
        k
        for k in file_keys
        if k.rpartition(".")[0] in quantised and k.endswith(("input_scale", "output_scale"))
    }
