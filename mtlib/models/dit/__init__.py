"""MultiTalk's diffusion transformer: Wan2.1-I2V-14B (WanModel) plus the audio adapter.

Where it sits: the sampler calls `MultiTalkDiT.forward` three times per step (cond,
drop_text, uncond) with the noisy latent, the timestep, the T5 context, the CLIP features
(`clip_fea`), the VAE conditioning `y`, the wav2vec2 audio windows and the person masks;
it returns the velocity prediction for the latent.

The module keeps the official state-dict key layout exactly (patch_embedding.*,
text_embedding.0/2, ..., blocks.{i}.audio_cross_attn.*, norm_x), so the published
Wan2.1-I2V-14B shards plus MeiGen's multitalk.safetensors load without renaming
(`load_dit`). Semantics follow the official code (MeiGen-AI/MultiTalk, see
../shared/reference/multitalk-facts.md §3):

- no text mask: the context is zero-padded to text_len rows and every row is attended;
- sinusoidal time features cos-then-sin in float64;
- 3-D RoPE (t:h:w split of the head dim) on interleaved pairs, float64 rotation;
- every block computes `x_ref_attn_map` (how much each token attends to each person's
  region of latent frame 0) from its own post-RoPE q/k; with two persons it places the
  visual queries on a 1-D RoPE line (person 1 in [0, 4], person 2 in [20, 24],
  background 12) against audio keys at 2 and 22 (L-RoPE);
- audio windows grouped per latent frame (first: 5 slots; later: 3+1+1+3 = 8), projected
  by AudioProjModel to context_tokens tokens per person and frame.

Precision (`set_precision`): "fp32" runs everything in float32 (golden parity on CPU);
"reference" is the official policy: bf16 parameters and activations with the fp32 islands
of facts §3.9 (time MLPs, modulation arithmetic, norms' statistics, head, RoPE).

Attention goes through `F.scaled_dot_product_attention` in [B, heads, L, head_dim] layout;
no per-token Python loops and no host syncs in forward (TeaCache excepted, which needs a
scalar decision per call, like the official).

Files: `config.py` (DiTConfig, CONFIGS), `layers.py` (norms, RoPE), `attention.py` (self-,
cross- and audio attention), `blocks.py` (Block, Head, MLPProj), `audio.py` (the audio
adapter), `teacache.py`, `model.py` (MultiTalkDiT), `load.py` (build_dit, load_dit). The
speed options applied to a built model (`compile_blocks`, `set_attention_kernel`) live in
`mtlib.accel.compile`. Every public name is re-exported here (`mtlib.models.dit.<name>`).
"""

from __future__ import annotations

from mtlib.models.checkpoint import CheckpointError  # noqa: F401 (re-exported)
from mtlib.models.dit.attention import (  # noqa: F401
    ATTENTION_KERNELS,
    AudioCrossAttention,
    CrossAttention,
    SelfAttention,
    lrope_positions,
    x_ref_attn_map,
)
from mtlib.models.dit.audio import (  # noqa: F401
    AudioProjModel,
    group_audio_windows,
)
from mtlib.models.dit.blocks import (  # noqa: F401
    Block,
    Head,
    MLPProj,
)
from mtlib.models.dit.config import (  # noqa: F401
    BACKGROUND_POS,
    CONFIGS,
    IMAGE_TOKENS,
    PERSON1_RANGE,
    PERSON2_RANGE,
    PRECISION_DTYPES,
    REF_MAP_HEAD_CHUNKS,
    ROPE_MAX_POSITIONS,
    ROPE_THETA,
    DiTConfig,
    Precision,
)
from mtlib.models.dit.layers import (  # noqa: F401
    LayerNormF32,
    RMSNorm,
    linear_fp32,
    rope1d_apply,
    rope3d_apply,
    rope3d_table,
    sinusoid_cos_sin,
)
from mtlib.models.dit.load import (  # noqa: F401
    MULTITALK_FILE,
    WAN_SHARD_GLOB,
    build_dit,
    check_checkpoint_keys,
    load_dit,
)
from mtlib.models.dit.model import (  # noqa: F401
    MultiTalkDiT,
)
from mtlib.models.dit.teacache import (  # noqa: F401
    TEACACHE_COEFFICIENTS,
    TeaCacheState,
)

__all__ = [
    "CONFIGS",
    "CheckpointError",
    "DiTConfig",
    "MultiTalkDiT",
    "TeaCacheState",
    "build_dit",
    "load_dit",
]
