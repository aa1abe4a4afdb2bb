"""The reference's int8 checkpoints (optimum-quanto format) loaded by mtlib.accel.quant without
optimum-quanto, against optimum-quanto itself (a dev dependency, used by this test only)."""

import copy
import dataclasses
import json

import optimum.quanto as quanto
import pytest
import torch

from mtlib.accel.bench import DitShape, denoise_step, dit_inputs, random_init_
from mtlib.accel.dit_load import load_run_dit
from mtlib.accel.options import resolve_dit_options
from mtlib.accel.quant import QuantError, QuantLinear
from mtlib.config import load_config
from mtlib.models.dit import CONFIGS, build_dit


def _quantised_files(tmp_path, model, dtype=torch.float32):
    """What MeiGen did: quantize(qint8) + freeze, save_file(state_dict()), json.dump(quantization_map())."""
    from safetensors.torch import save_file

    q = copy.deepcopy(model).to(dtype)
    quanto.quantize(q, weights=quanto.qint8)
    quanto.freeze(q)
    save_file(
        {k: v.contiguous() for k, v in q.state_dict().items()},
        str(tmp_path / "dit_model_int8.safetensors"),
    )
    (tmp_path / "dit_model_map_int8.json").write_text(json.dumps(quanto.quantization_map(q)))
    return q, (tmp_path / "dit_model_int8.safetensors", tmp_path / "dit_model_map_int8.json")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    m = build_dit(CONFIGS["tiny"], device="cpu")
    random_init_(m)
    return m.eval()


@pytest.mark.slow
def test_int8_checkpoint_matches_optimum_quanto_fp32(tmp_path, tiny_model):
    q, files = _quantised_files(tmp_path, tiny_model)
    opts = resolve_dit_options(load_config("tiny"), cuda=False)
    mine = load_run_dit(CONFIGS["tiny"], "cpu", opts, quant=files)
    # every Linear quanto quantised is an int8 QuantLinear here, with quanto's own bytes
    qmap = json.loads(files[1].read_text())
    # 15 per block (self 4, cross 6, audio 3, FFN 2) x 2 blocks + 12 outside the blocks
    assert len(qmap) == 42 and all(
        v == {"weights": "qint8", "activations": "none"} for v in qmap.values()
    )
    layer = mine.get_submodule("blocks.1.ffn.0")
    assert isinstance(layer, QuantLinear) and layer.weight_q.dtype == torch.int8
    assert torch.equal(layer.weight_q, q.get_submodule("blocks.1.ffn.0").weight._data)
    inp = dit_inputs(CONFIGS["tiny"], DitShape(5, 32, 32), "cpu", torch.float32)
    with torch.inference_mode():
        ref, out, plain = (
            denoise_step(q, inp),
            denoise_step(mine, inp),
            denoise_step(tiny_model, inp),
        )
    assert torch.equal(out, ref)  # the same dequantised fp32 matmuls as quanto's
    assert (plain - ref).abs().max() > 1e-2  # and int8 really differs from the float model
    # `mtlib setup --verify` recognises the pair from headers only
    from mtlib.weights.recipe_files import find_quant_files

    (found,) = find_quant_files(tmp_path)
    assert found.ok and found.line().startswith(
        "ok  dit_model_int8.safetensors: DiT int8 (model.weights.quant=int8): 42 quantised linears "
        "(I8 data, activations none), "
    )


@pytest.mark.slow
def test_int8_checkpoint_matches_optimum_quanto_bf16(tmp_path, tiny_model):
    """Under the reference precision (bf16 scales and activations). quanto's CPU kernel for
    bf16 x int8 is _weight_int8pack_mm, so the two agree to bf16 rounding, not bits: mtlib's
    bf16 path must be as close to the checkpoint's exact math (the fp32 dequantised path,
    bit-identical to quanto's in the test above) as quanto's own bf16 path is."""
    q, files = _quantised_files(tmp_path, tiny_model, torch.bfloat16)
    fp32 = resolve_dit_options(load_config("tiny"), cuda=False)
    mine = load_run_dit(
        CONFIGS["tiny"], "cpu", dataclasses.replace(fp32, precision="reference"), quant=files
    )
    exact_model = load_run_dit(CONFIGS["tiny"], "cpu", fp32, quant=files)
    assert mine.get_submodule("blocks.0.self_attn.q").weight_scale.dtype == torch.bfloat16
    shape = DitShape(5, 32, 32)
    inp16 = dit_inputs(CONFIGS["tiny"], shape, "cpu", torch.bfloat16)
    inp32 = dit_inputs(CONFIGS["tiny"], shape, "cpu", torch.float32)
    with torch.inference_mode():
        ref, out = denoise_step(q, inp16).float(), denoise_step(mine, inp16).float()
        exact = denoise_step(exact_model, inp32)

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    # measured: mtlib vs quanto 1.8%, mtlib vs exact 1.3%, quanto vs exact 1.4%
    assert rel(out, ref) < 0.03
    assert rel(out, exact) <= 1.1 * rel(ref, exact)


def test_quant_map_errors_name_the_file_and_rule(tmp_path, tiny_model):
    _, (st, mp) = _quantised_files(tmp_path, tiny_model)
    opts = resolve_dit_options(load_config("tiny"), cuda=False)
    qmap = json.loads(mp.read_text())
    qmap["blocks.0.self_attn.q"]["activations"] = "qint8"
    mp.write_text(json.dumps(qmap))
    with pytest.raises(QuantError) as err:
        load_run_dit(CONFIGS["tiny"], "cpu", opts, quant=(st, mp))
    assert str(err.value) == (
        f"{mp}: module 'blocks.0.self_attn.q' has quantised activations (qint8); mtlib computes "
        "weights-only checkpoints (the reference's are). Fix: use MeiGen's int8 files."
    )
    mp.write_text(json.dumps({"blocks.0.norm1": {"weights": "qint8", "activations": "none"}}))
    with pytest.raises(
        QuantError, match=r"names 'blocks.0.norm1', which is not a Linear layer of this model"
    ):
        load_run_dit(CONFIGS["tiny"], "cpu", opts, quant=(st, mp))
    with pytest.raises(QuantError, match=r"quantisation map .*missing.json: not found"):
        load_run_dit(CONFIGS["tiny"], "cpu", opts, quant=(st, tmp_path / "missing.json"))
