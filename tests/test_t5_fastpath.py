"""mtlib.models.t5_fastpath: transformers' umT5 encoder with mtlib's speed settings computes
what transformers' own encoder computes (the golden T5 cases in test_encoders.py run through
the fast path; these tests pin the pieces)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtlib.models import t5 as t5_mod
from mtlib.models import t5_fastpath
from mtlib.models.t5 import StandInTokenizer, T5Config

CFG = T5Config(
    vocab_size=300, dim=64, dim_attn=64, dim_ffn=96, num_heads=4, num_layers=2, text_len=40
)


def _pair():
    """The same random weights in the fast encoder and in transformers' encoder as shipped."""
    torch.manual_seed(0)
    fast = t5_mod.T5Encoder(CFG).eval()
    plain = t5_mod.T5Encoder(CFG, fast=False).eval()
    plain.load_state_dict(fast.state_dict())
    ids, mask = StandInTokenizer(CFG.vocab_size, CFG.text_len)(["a b c d e", "f g"])
    return fast, plain, ids, mask


def test_position_bias_equals_transformers_and_is_head_major():
    fast, _, _, _ = _pair()
    for block in fast.blocks:
        attn = block.layer[0].SelfAttention
        ours = attn.compute_bias(40, 40)  # the installed method
        theirs = type(attn).compute_bias(attn, 40, 40)  # transformers' own
        assert ours.shape == (1, CFG.num_heads, 40, 40)
        assert torch.equal(ours, theirs)
        assert ours.is_contiguous() and not theirs.is_contiguous()
    # one bucket grid shared by every layer, computed once
    caches = {id(b.layer[0].SelfAttention._mtlib_buckets) for b in fast.blocks}
    assert len(caches) == 1
    assert list(fast.blocks[0].layer[0].SelfAttention._mtlib_buckets) == [(40, 40, "cpu")]


def test_fast_encoder_equals_transformers_encoder_fp32():
    fast, plain, ids, mask = _pair()
    assert type(fast.hf) is type(plain.hf)  # transformers' class, not a copy
    assert fast.hf.config.dense_act_fn == "gelu_pytorch_tanh"
    assert plain.hf.config.dense_act_fn == "gelu_new"
    a, b = fast(ids, mask), plain(ids, mask)
    assert a.shape == (2, 40, CFG.dim)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


def test_sdpa_mask_is_contiguous_where_transformers_uses_sdpa(monkeypatch):
    """transformers >= 5 runs UMT5 attention through SDPA: the additive mask it receives is
    laid out head-major (transformers' own bias gives a heads-last one). transformers 4.x
    hard-codes eager attention: the fast path then only changes the bias and the GELU."""
    fast, plain, ids, mask = _pair()
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    fast(ids, mask)
    if t5_fastpath.uses_attention_interface(fast.hf):
        assert len(seen) == CFG.num_layers
        for m in seen:
            assert m.shape == (2, CFG.num_heads, 40, 40) and m.is_contiguous()
            # padded keys of row 1 (2 words + EOS = 3 tokens) filled with the dtype minimum
            assert (m[1, :, :, 3:] == torch.finfo(m.dtype).min).all()
            assert (m[1, :, :, :3] > torch.finfo(m.dtype).min).all()
    else:
        assert seen == []


def test_attention_mask_4d():
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = t5_fastpath.attention_mask_4d(m)
    assert out.shape == (2, 1, 1, 3) and out.dtype == torch.bool
    assert out[:, 0, 0].tolist() == [[True, True, False], [True, False, False]]


def test_reference_precision_is_bf16_everywhere(tmp_path):
    """transformers' `_keep_in_fp32_modules = ["wo"]` is not applied: the reference runs the
    whole encoder in bf16, FFN output projection included."""
    from safetensors.torch import save_file

    fast, _, ids, mask = _pair()
    path = tmp_path / "t5.safetensors"
    save_file({k: v.contiguous() for k, v in fast.state_dict().items()}, str(path))
    model = t5_mod.load_t5(path, CFG, precision="reference")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.blocks[0].layer[1].DenseReluDense.wo.weight.dtype == torch.bfloat16
    assert model(ids, mask).dtype == torch.bfloat16


def test_fast_encoder_pickles_and_deep_copies():
    """The installed bias method survives pickle (spawned workers) and deepcopy, bound to the
    copy's own attention modules, with one shared bucket cache."""
    import copy
    import pickle

    fast, _, ids, mask = _pair()
    want = fast(ids, mask)
    for clone in (pickle.loads(pickle.dumps(fast)), copy.deepcopy(fast)):
        attns = [b.layer[0].SelfAttention for b in clone.blocks]
        assert all(a.compute_bias.args[0] is a for a in attns)
        assert len({id(a._mtlib_buckets) for a in attns}) == 1
        assert torch.equal(clone(ids, mask), want)
