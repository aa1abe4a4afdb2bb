"""mtlib.models.clip_fastpath: the lean forward of transformers' CLIP vision tower computes what
transformers' own forward computes (the golden CLIP cases in test_encoders.py run through the
fast path; these tests pin the pieces: equality, the fused q/k/v block, fewer ops, fallbacks)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from mtlib.models import clip_fastpath
from mtlib.models.clip import CLIPConfig, XLMRobertaCLIP

# 2 of 3 blocks run (use_31_block), 4 heads of 16, 4 x 4 patches + cls = 17 tokens
CFG = CLIPConfig(
    image_size=28, patch_size=7, vision_dim=64, vision_heads=4, vision_layers=3,
    embed_dim=16, vocab_size=50, text_dim=16, text_heads=2, text_layers=1,
)  # fmt: skip
RUN_LAYERS = CFG.vision_layers - 1


def _weights(model, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=g) * 0.2 + (1.0 if "norm" in k and v.ndim == 1 else 0.0)
        for k, v in model.state_dict().items()
    }


def _pair(seed: int = 0):
    """The same random weights in the fast tower and in transformers' tower as shipped."""
    fast = XLMRobertaCLIP(CFG, with_text_tower=False).eval().requires_grad_(False)
    plain = XLMRobertaCLIP(CFG, with_text_tower=False, fast=False).eval().requires_grad_(False)
    sd = _weights(fast, seed)
    fast.load_state_dict(sd)
    plain.load_state_dict(sd)
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(seed + 1))
    return fast, plain, pixels


def _layers(model):
    return clip_fastpath.inner_model(model.visual.hf).encoder.layers


_block_of = clip_fastpath.block_of


@torch.no_grad()
def test_fast_tower_equals_transformers_fp32():
    fast, plain, pixels = _pair()
    assert type(fast.visual.hf) is type(plain.visual.hf)  # transformers' class, not a copy
    a, b = fast.visual(pixels), plain.visual(pixels)
    assert a.shape == (2, CFG.num_tokens, CFG.vision_dim) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@torch.no_grad()
def test_fast_tower_equals_transformers_half_on_cpu(dtype):
    """Half weights, no autocast (the CPU runs every op in the weights' dtype either way):
    within one rounding of the half type."""
    fast, plain, pixels = _pair()
    fast, plain = fast.to(dtype), plain.to(dtype)
    a, b = fast.visual(pixels), plain.visual(pixels)
    assert a.dtype == dtype
    torch.testing.assert_close(a.float(), b.float(), atol=0, rtol=torch.finfo(dtype).eps)


@torch.no_grad()
def test_encode_image_equals_transformers_and_official_keys_unchanged():
    fast, plain, _ = _pair()
    cond = torch.rand(1, 3, 2, 40, 36, generator=torch.Generator().manual_seed(3)) * 2 - 1
    torch.testing.assert_close(fast.encode_image(cond), plain.encode_image(cond), atol=1e-5, rtol=0)
    # the fused block changes no key and no value of the official layout (to_qkv rows q|k|v)
    a, b = fast.state_dict(), plain.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@torch.no_grad()
def test_qkv_parameters_are_views_into_one_block():
    fast, plain, pixels = _pair()
    assert all(_block_of(layer.self_attn) is None for layer in _layers(fast))  # built lazily
    fast.visual(pixels)
    c = CFG.vision_dim
    for mine, theirs in zip(_layers(fast), _layers(plain), strict=True):
        attn, ref = mine.self_attn, theirs.self_attn
        w, b = _block_of(attn)
        assert w.shape == (3 * c, c) and b.shape == (3 * c,)
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            proj = getattr(attn, name)
            assert proj.weight.data_ptr() == w[i * c].data_ptr()  # same memory, no copy
            assert proj.bias.data_ptr() == b[i * c :].data_ptr()
            assert torch.equal(proj.weight, getattr(ref, name).weight)
            assert torch.equal(proj.bias, getattr(ref, name).bias)
    first = [_block_of(layer.self_attn)[0] for layer in _layers(fast)]
    fast.visual(pixels)  # the second call reuses the blocks
    assert all(
        _block_of(layer.self_attn)[0] is w for layer, w in zip(_layers(fast), first, strict=True)
    )


@torch.no_grad()
def test_block_follows_loads_and_casts():
    fast, plain, pixels = _pair()
    fast.visual(pixels)
    # an in-place load writes into the block: no rebuild, new values used
    sd = _weights(fast, 7)
    fast.load_state_dict(sd)
    plain.load_state_dict(sd)
    torch.testing.assert_close(fast.visual(pixels), plain.visual(pixels), atol=1e-5, rtol=0)
    # a cast replaces the parameters: the stale block is dropped at once and rebuilt on use
    fast.to(torch.float64)
    assert all(_block_of(layer.self_attn) is None for layer in _layers(fast))
    out = fast.visual(pixels)
    assert (
        out.dtype == torch.float64
        and _block_of(_layers(fast)[0].self_attn)[0].dtype == torch.float64
    )
    torch.testing.assert_close(out, plain.to(torch.float64).visual(pixels), atol=1e-12, rtol=0)
    # parameters replaced behind the model's back (here one projection): detected on the call
    attn = _layers(fast)[1].self_attn
    attn.k_proj.weight = torch.nn.Parameter(
        attn.k_proj.weight.detach().clone() * 2, requires_grad=False
    )
    _layers(plain)[1].self_attn.k_proj.weight.mul_(2)
    torch.testing.assert_close(fast.visual(pixels), plain.visual(pixels), atol=1e-12, rtol=0)
    assert attn.k_proj.weight.data_ptr() == _block_of(attn)[0][CFG.vision_dim].data_ptr()


def _op_counts(model, pixels) -> dict:
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model.visual(pixels)
    return {e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")}


def test_fewer_ops_than_transformers():
    """One projection for q, k and v (4 linears a layer instead of 6); no LayerNorm for the
    pooled token nobody reads; no position-id gather."""
    fast, plain, pixels = _pair()
    fast.visual(pixels)  # build the blocks outside the count
    mine, theirs = _op_counts(fast, pixels), _op_counts(plain, pixels)
    assert mine["aten::linear"] == 4 * RUN_LAYERS
    assert theirs["aten::linear"] == 6 * RUN_LAYERS
    assert mine["aten::layer_norm"] == 1 + 2 * RUN_LAYERS
    assert theirs["aten::layer_norm"] == 2 + 2 * RUN_LAYERS
    assert mine["aten::scaled_dot_product_attention"] == RUN_LAYERS
    assert "aten::embedding" not in mine and theirs["aten::embedding"] == 1
    assert "aten::cat" in mine and mine["aten::cat"] == 1  # the cls token only: no block rebuilt
    assert sum(mine.values()) < sum(theirs.values())


def test_falls_back_to_transformers_where_not_exact(monkeypatch):
    fast, _, pixels = _pair()
    calls = []
    hf = fast.visual.hf
    real = type(hf).forward

    def spy(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(hf), "forward", spy)
    with torch.no_grad():
        fast.visual(pixels)
        assert calls == []  # fast path
        with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast: LayerNorm upcast there
            assert not clip_fastpath.applies(hf, pixels)
            fast.visual(pixels)
        assert calls == [1]
    fast.requires_grad_(True)  # training: the fused block would carry no gradient to q/k/v
    out = fast.visual(pixels)
    assert calls == [1, 1] and out.requires_grad


@torch.no_grad()
def test_fast_tower_pickles_and_deep_copies():
    """A clone starts without a fused block and builds its own on first use, never sharing the
    original's. The pre_layrnorm dtype hook (a module-level function) pickles."""
    fast, _, pixels = _pair()
    want = fast.visual(pixels)
    for clone in (pickle.loads(pickle.dumps(fast)), copy.deepcopy(fast)):
        assert all(_block_of(layer.self_attn) is None for layer in _layers(clone))
        assert torch.equal(clone.visual(pixels), want)
        for mine, theirs in zip(_layers(clone), _layers(fast), strict=True):
            w, _ = _block_of(mine.self_attn)
            assert mine.self_attn.v_proj.weight.data_ptr() == w[2 * CFG.vision_dim].data_ptr()
            assert w.data_ptr() != _block_of(theirs.self_attn)[0].data_ptr()
