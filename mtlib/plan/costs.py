"""Parameter, memory and FLOP estimates of a plan (per DiT pass, per step, per clip)."""

from __future__ import annotations

from mtlib.plan.records import WEIGHT_BYTES, ModelSizes, ShapePlan


def _pass_flops(m: ModelSizes, T: int, S: int, persons: int) -> dict[str, float]:
    """FLOPs of one DiT forward, 2 per multiply-add. With L = T*S tokens, D width, F_ffn,
    C = 257 + 512 context rows, A = 32*P audio tokens per latent frame, per block:
      linear          2*L*D*(8*D + 2*F_ffn)        self q,k,v,o + cross q,o + audio q,proj + FFN
                    + 2*C*D*2*D + 2*T*A*768*2*D    cross k,v (text + image), audio kv
      self_attention  4*L^2*D                      Q.K^T and A.V over all L keys
      other_attention 2*L*S*D + 4*L*C*D + 4*L*A*D  reference-frame map, cross, audio
    times num_layers, plus patch embedding, head and text embedding (embed_head).
    14B, 448x896, 81 frames (L = 32,928): 0.929 + 0.888 + 0.043 PFLOP per pass."""
    D, Fd, nl = m.dim, m.ffn_dim, m.num_layers
    L = T * S
    ctx = m.clip_tokens + m.text_len
    A = m.context_tokens * persons
    linear_tok = (
        2 * L * D * (4 * D + 2 * D + 2 * D + 2 * Fd)
    )  # self qkvo, cross q/o, audio q/proj, FFN
    linear_ctx = (
        2 * ctx * D * 2 * D + 2 * T * A * m.output_dim * 2 * D
    )  # cross k/v (+img), audio kv
    self_attn = 4 * L * L * D
    other_attn = 2 * L * S * D + 4 * L * ctx * D + 4 * L * A * D  # ref map, cross, audio
    pv = m.patch[0] * m.patch[1] * m.patch[2]
    outer = (
        2 * L * m.in_dim * pv * D
        + 2 * L * D * pv * m.z_dim
        + 2 * m.text_len * (m.text_dim * D + D * D)
    )
    return {
        "linear": float(nl * (linear_tok + linear_ctx)),
        "self_attention": float(nl * self_attn),
        "other_attention": float(nl * other_attn),
        "embed_head": float(outer),
    }


def _costs(p: ShapePlan, m: ModelSizes, P: int) -> None:
    T, nh, nw = p.token_grid
    S = nh * nw
    p.params = {"dit": m.dit_params, **dict(m.param_counts)}
    bpp = WEIGHT_BYTES["fp32" if p.precision == "fp32" else "reference"]
    p.weight_bytes = {k: n * bpp[k] for k, n in p.params.items()}
    cond = _pass_flops(m, T, S, P)
    p.flops_per_pass = cond
    per = sum(cond.values())
    null = sum(_pass_flops(m, T, S, 1).values())
    # cond (+ drop_text) passes carry all persons; the uncond / drop_audio pass one zero person
    p.flops_per_step = per * (p.passes_per_step - 1) + null
    L, D = p.seq_len, m.dim
    a = 2 if p.precision != "fp32" else 4
    p.activation_bytes = int(
        L
        * D
        * (4 * a + 2 * 4 + 2 * 4)  # x, norm out, v, attn out + fp32 q, k + fp32 residual temps
        + L * m.ffn_dim * a * 2  # FFN hidden + GELU out
        + (m.num_heads // 2) * L * S * a * 2  # x_ref_attn_map chunk: logits + softmax
    )
