"""CLIP image encoder and umT5 text encoder: golden equality, manifests, tokenizer, loaders."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mtlib import trace
from mtlib.io import InputError
from mtlib.models import clip as clip_mod
from mtlib.models import t5 as t5_mod
from mtlib.models.checkpoint import CheckpointError
from mtlib.models.clip import CLIPConfig, XLMRobertaCLIP, load_clip
from mtlib.models.t5 import (
    DEFAULT_NEGATIVE_PROMPT,
    StandInTokenizer,
    T5Config,
    T5Encoder,
    T5TextEncoder,
    clean_text,
    load_t5,
)
from tests.golden import SINGLE_STAGE_TOL, assert_close, get_case, golden_cases

# ----------------------------------------------------------------------------- helpers


def _tiny_clip_config(golden) -> CLIPConfig:
    return CLIPConfig.from_official(golden.tiny_configs["clip"]["tiny"])


def _tiny_t5_config(golden) -> T5Config:
    t5 = golden.tiny_configs["t5"]
    return T5Config.from_official(
        t5["tiny"], text_len=t5["text_len"], pad_id=t5["pad_id"], eos_id=t5["eos_id"]
    )


def _cond_from_u8_png(path) -> torch.Tensor:
    """The README's bit-exact formula: (u8 / 255 - 0.5) * 2 in float32, [1, 3, 1, H, W]."""
    u8 = torch.from_numpy(np.array(Image.open(path).convert("RGB")))  # [H, W, 3]
    x = u8.permute(2, 0, 1).float() / 255
    return ((x - 0.5) * 2)[None, :, None].contiguous()


def _clip_input(golden, case) -> torch.Tensor:
    if "clip.input" in case.tensors:
        return case["clip.input"]
    src = case.params["input_from"]
    image_case = golden.case(src["image_case"])
    png = image_case.params[src["bucket"]]["cond_u8_png"]
    cond = _cond_from_u8_png(image_case.file(png))
    digest = hashlib.sha256(cond.numpy().tobytes()).hexdigest()
    assert digest == case.params["input_sha256_float32"], (
        "rebuilt CLIP input differs from the golden one"
    )
    return cond


# ------------------------------------------------------------------------- golden: CLIP


@pytest.mark.golden
def test_golden_tiny_configs_match_mtlib_copies(golden):
    assert _tiny_clip_config(golden) == clip_mod.CONFIGS["tiny"]
    assert (
        CLIPConfig.from_official(golden.tiny_configs["clip"]["real"])
        == clip_mod.CONFIGS["multitalk-14b"]
    )
    assert _tiny_t5_config(golden) == t5_mod.CONFIGS["tiny"]
    assert (
        T5Config.from_official(golden.tiny_configs["t5"]["real"]) == t5_mod.CONFIGS["multitalk-14b"]
    )


@pytest.mark.golden
@pytest.mark.parametrize("name", golden_cases("clip"), ids=str)
def test_golden_clip(golden, name):
    case = get_case(golden, name)
    model = load_clip(golden.weights / "clip.safetensors", _tiny_clip_config(golden))
    rec = trace.MemoryRecorder(["clip.*"])
    with trace.recording(rec):
        out = model.encode_image(_clip_input(golden, case))
    assert out.dtype == torch.float32
    for point in ("clip.pixels", "clip.out"):
        assert_close(rec[point], case[point], f"{name}:{point}", SINGLE_STAGE_TOL)
    assert_close(out, case["clip.out"], f"{name}:return", SINGLE_STAGE_TOL)


@pytest.mark.golden
def test_golden_clip_visual_only_and_pth(golden, tmp_path):
    """visual_only loads and computes the same; the .pth path (torch.save) loads strictly."""
    case = golden.cases("clip")[0]
    cond = _clip_input(golden, case)
    cfg = _tiny_clip_config(golden)
    sd = load_file(str(golden.weights / "clip.safetensors"))
    torch.save(sd, tmp_path / "clip.pth")
    full = load_clip(tmp_path / "clip.pth", cfg)
    visual = load_clip(golden.weights / "clip.safetensors", cfg, visual_only=True)
    assert not any(k.startswith("textual.") or k == "log_scale" for k in visual.state_dict())
    assert set(full.state_dict()) == set(sd)
    assert_close(visual.encode_image(cond), case["clip.out"], "visual_only", SINGLE_STAGE_TOL)
    assert_close(full.encode_image(cond), case["clip.out"], "pth", SINGLE_STAGE_TOL)


@pytest.mark.golden
def test_golden_clip_manifest(golden):
    man = golden.manifest("clip")
    cfg = CLIPConfig.from_official(man["config"])
    with torch.device("meta"):
        model = XLMRobertaCLIP(cfg)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == man["keys"]
    assert sum(p.numel() for p in model.parameters()) == man["num_params"]
    assert sum(p.numel() for p in model.visual.parameters()) == man["num_params_visual"]
    assert cfg.num_tokens == 257


# --------------------------------------------------------------------------- golden: T5


@pytest.mark.golden
@pytest.mark.parametrize("name", golden_cases("t5"), ids=str)
def test_golden_t5(golden, name):
    case = get_case(golden, name)
    model = load_t5(golden.weights / "t5_encoder.safetensors", _tiny_t5_config(golden))
    ids, mask = case["t5.ids"], case["t5.mask"]
    out = model(ids, mask)
    assert_close(out, case["t5.out_full"], f"{name}:t5.out_full", SINGLE_STAGE_TOL)
    contexts = sorted(k for k in case.tensors if k.startswith("t5.context."))
    assert contexts, "case has no t5.context.<i> tensors"
    for key in contexts:
        i = int(key.rsplit(".", 1)[1])
        n = int(mask[i].gt(0).sum())
        assert_close(out[i, :n], case[key], f"{name}:{key}", SINGLE_STAGE_TOL)


@pytest.mark.golden
@pytest.mark.parametrize("name", golden_cases("t5"), ids=str)
def test_golden_t5_text_encoder_from_texts(golden, name):
    """texts -> stand-in ids -> trimmed contexts, with the trace points of the case."""
    case = get_case(golden, name)
    cfg = _tiny_t5_config(golden)
    encoder = T5TextEncoder(
        load_t5(golden.weights / "t5_encoder.safetensors", cfg),
        StandInTokenizer(cfg.vocab_size, cfg.text_len, cfg.pad_id, cfg.eos_id),
    )
    rec = trace.MemoryRecorder(["t5.*"])
    with trace.recording(rec):
        contexts = encoder(case.params["texts"])
    assert torch.equal(rec["t5.ids"], case["t5.ids"])
    assert torch.equal(rec["t5.mask"], case["t5.mask"])
    assert [c.shape[0] for c in contexts] == case.params["seq_lens"]
    for key in case.tensors:
        if key.startswith("t5.") and case[key].is_floating_point():
            assert_close(rec[key], case[key], f"{name}:{key}", SINGLE_STAGE_TOL)


@pytest.mark.golden
@pytest.mark.parametrize("name", golden_cases("e2e"), ids=str)
def test_golden_t5_standin_tokenizer(golden, name):
    case = get_case(golden, name)
    cfg = _tiny_t5_config(golden)
    prompt = case.params["input_data"]["prompt"]
    n_prompt = case.params["generate_kwargs"]["n_prompt"] or DEFAULT_NEGATIVE_PROMPT
    encoder = T5TextEncoder(
        None, StandInTokenizer(cfg.vocab_size, cfg.text_len, cfg.pad_id, cfg.eos_id)
    )
    ids, mask = encoder.tokenize([prompt, n_prompt])
    assert ids.dtype == case["e2e.t5.call0.ids"].dtype
    assert torch.equal(ids, case["e2e.t5.call0.ids"])
    assert torch.equal(mask, case["e2e.t5.call0.mask"])


@pytest.mark.golden
def test_golden_t5_negative_prompt_is_the_recorded_one(golden):
    """The t5 case encodes the reference's negative prompt as its second text."""
    texts = [t for c in golden.cases("t5") for t in c.params.get("texts", [])]
    assert DEFAULT_NEGATIVE_PROMPT in texts
    assert len(DEFAULT_NEGATIVE_PROMPT) == 392 and len(DEFAULT_NEGATIVE_PROMPT.split(", ")) == 28


@pytest.mark.golden
@pytest.mark.parametrize("name", golden_cases("e2e"), ids=str)
def test_golden_e2e_encoder_outputs(golden, name):
    """Inside the e2e runs: T5 output of call 0 and the CLIP features of every clip."""
    case = get_case(golden, name)
    t5 = load_t5(golden.weights / "t5_encoder.safetensors", _tiny_t5_config(golden))
    out = t5(case["e2e.t5.call0.ids"], case["e2e.t5.call0.mask"])
    assert_close(out, case["e2e.t5.call0.out"], f"{name}:t5.call0.out", SINGLE_STAGE_TOL)
    clip = load_clip(
        golden.weights / "clip.safetensors", _tiny_clip_config(golden), visual_only=True
    )
    clip_keys = sorted(k for k in case.tensors if re.fullmatch(r"e2e\.clip\d+\.clip_in", k))
    assert clip_keys
    for key in clip_keys:
        fea = key.replace(".clip_in", ".clip_fea")
        assert_close(clip.encode_image(case[key]), case[fea], f"{name}:{fea}", SINGLE_STAGE_TOL)


@pytest.mark.golden
def test_golden_t5_manifest(golden):
    man = golden.manifest("t5")
    cfg = T5Config.from_official(man["config"])
    with torch.device("meta"):
        model = T5Encoder(cfg)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == man["keys"]
    assert sum(p.numel() for p in model.parameters()) == man["num_params"]


# ------------------------------------------------------------ behaviour (no golden data)


def test_standin_tokenizer_truncates_keeping_eos():
    tok = StandInTokenizer(vocab_size=384, text_len=8)
    ids, mask = tok(["a b c d e f g h i j", "", "x  y"])
    assert ids.shape == (3, 8) and mask.dtype == torch.long
    assert ids[0, -1].item() == 1 and mask[0].sum().item() == 8
    assert ids[1].tolist() == [1, 0, 0, 0, 0, 0, 0, 0] and mask[1].sum().item() == 1
    assert mask[2].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert (ids[0, :7] >= 2).all() and (ids[0, :7] < 384).all()


def test_clean_text():
    assert clean_text("  a &amp;amp; b\n\t c  ") == "a & b c"


def _tiny_clip_checkpoint(tmp_path, edit=None):
    torch.manual_seed(0)
    sd = {k: v.clone() for k, v in XLMRobertaCLIP("tiny").state_dict().items()}
    if edit:
        edit(sd)
    path = tmp_path / "clip.safetensors"
    save_file(sd, str(path))
    return path


def _tiny_t5_checkpoint(tmp_path, config="tiny", edit=None):
    torch.manual_seed(0)
    sd = {k: v.clone() for k, v in T5Encoder(config).state_dict().items()}
    if edit:
        edit(sd)
    path = tmp_path / "t5.safetensors"
    save_file(sd, str(path))
    return path


def test_clip_loader_names_missing_and_unexpected_keys(tmp_path):
    def edit(sd):
        del sd["visual.pre_norm.bias"]
        sd["visual.extra"] = torch.zeros(1)

    path = _tiny_clip_checkpoint(tmp_path, edit)
    with pytest.raises(CheckpointError) as err:
        load_clip(path, "tiny")
    assert str(err.value) == (
        f"CLIP checkpoint {str(path)!r}: does not match config 'tiny'; "
        "1 missing: visual.pre_norm.bias; 1 unexpected: visual.extra. "
        "Fix: pass the config the checkpoint was made for, or the right checkpoint file."
    )


def test_clip_loader_refuses_real_config_for_tiny_file(tmp_path):
    path = _tiny_clip_checkpoint(tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"config 'multitalk-14b'; 716 missing: visual\.transformer\.3\..*; 67 mis-shaped: ",
    ):
        load_clip(path)  # default config = the real ViT-H/14: text layers missing, shapes differ


def test_clip_visual_only_ignores_text_tower_damage(tmp_path):
    path = _tiny_clip_checkpoint(tmp_path, lambda sd: sd.pop("textual.norm.bias"))
    model = load_clip(path, "tiny", visual_only=True)
    assert model.visual.head.device.type == "cpu"
    with pytest.raises(CheckpointError, match="1 missing: textual.norm.bias"):
        load_clip(path, "tiny")


def test_t5_loader_refuses_token_embedding_width(tmp_path):
    path = _tiny_t5_checkpoint(
        tmp_path, edit=lambda sd: sd.update({"token_embedding.weight": torch.zeros(384, 16)})
    )
    with pytest.raises(CheckpointError) as err:
        load_t5(path, "tiny")
    assert str(err.value) == (
        f"T5 checkpoint {str(path)!r}: does not match config 'tiny'; "
        "1 mis-shaped: token_embedding.weight [384, 16] (model [384, 32]). "
        "Fix: pass the config the checkpoint was made for, or the right checkpoint file."
    )


def test_t5_layer_count_follows_config(tmp_path):
    one_layer = T5Config(vocab_size=384, dim=32, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=1)
    path = _tiny_t5_checkpoint(tmp_path, config=one_layer)
    model = load_t5(path, one_layer)
    assert len(model.blocks) == 1
    with pytest.raises(CheckpointError, match=r"config 'tiny'; 10 missing: blocks\.1\."):
        load_t5(path, "tiny")


def test_loader_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_t5(tmp_path / "nope.pth", "tiny")


def test_t5_pth_and_reference_precision(tmp_path):
    torch.manual_seed(0)
    ref = T5Encoder("tiny").eval()
    torch.save(ref.state_dict(), tmp_path / "t5.pth")
    model = load_t5(tmp_path / "t5.pth", "tiny")
    ids, mask = StandInTokenizer(384, 16)(["one two three"])
    assert torch.equal(model(ids, mask), ref(ids, mask))
    bf16 = load_t5(tmp_path / "t5.pth", "tiny", precision="reference")
    assert bf16.state_dict()["token_embedding.weight"].dtype == torch.bfloat16
    assert bf16(ids, mask).dtype == torch.bfloat16


def test_clip_input_shape_error():
    model = XLMRobertaCLIP("tiny", with_text_tower=False).eval()
    with pytest.raises(
        InputError, match=r"CLIP input cond: shape \(1, 3, 48, 64\) is not \[B, 3, F, H, W\]"
    ):
        model.encode_image(torch.zeros(1, 3, 48, 64))


def test_clip_reference_precision_is_fp32_on_cpu(tmp_path):
    path = _tiny_clip_checkpoint(tmp_path)
    model = load_clip(path, "tiny", precision="reference")
    out = model.encode_image(torch.zeros(1, 3, 1, 20, 30))
    assert out.dtype == torch.float32 and out.shape == (1, 257, 80)


def test_from_official_refuses_other_architectures():
    with pytest.raises(ValueError, match="only activation='gelu' is supported"):
        CLIPConfig.from_official({"activation": "quick_gelu"})
    with pytest.raises(ValueError, match=r"unknown keys \['bogus'\]"):
        T5Config.from_official({"bogus": 1})
    assert json.loads(json.dumps(T5Config().__dict__))["num_layers"] == 24


def test_hf_tokenizer_pads_truncates_and_appends_eos(tmp_path):
    """The AutoTokenizer wrapper on a small local tokenizer with umT5's conventions
    (<pad> = 0, </s> = 1 appended): right padding to text_len, truncation keeps EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from mtlib.models.t5 import HFTokenizer

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "b": 4, "c": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(tmp_path)
    encoder = T5TextEncoder(None, HFTokenizer(tmp_path, text_len=6))
    ids, mask = encoder.tokenize(["  a &amp;amp;\n b zz ", "a b c a b c a b"])
    assert ids.tolist() == [[3, 2, 4, 2, 1, 0], [3, 4, 5, 3, 4, 1]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]


def test_hf_tokenizer_missing_dir(tmp_path):
    from mtlib.models.t5 import HFTokenizer

    with pytest.raises(InputError, match="T5 tokenizer .*: directory not found"):
        HFTokenizer(tmp_path / "google" / "umt5-xxl")
