"""Size of a stats-level reference trace archive for an 81-frame 480p clip, part by part.

    .venv/bin/python benchmarks/bench_trace_size.py [--steps 20] [--json benchmarks/results/trace_size_81f.json]

Writes what `mtlib.reference.tracing(level="stats")` writes for one generate() call of the
Colab command (clip mode, 1 person, multitalk-480 bucket 448 x 896, frame_num 81), with the
real shapes of every tensor it stores in full, through the same TraceWriter and the same
full patterns (mtlib.reference.tracer.full_patterns), in three variants:

    before      compact=False (every stored tensor as recorded: the previous archive)
    after       compact=True  (mtlib.trace.codec: u8-unit image, byte planes, duplicates once)
    no draws    compact=True, draws=False (--no-draws: replay needs generation.noise=cuda)

Contents (only sizes matter; content decides what deflate can do, so the worst case is used
where the real content is unknown): the draws are torch.randn float32 (what the reference
draws); the conditioning image is uniformly random uint8 pixels through the official
normalisation (a photo deflates better); the audio embedding is Gaussian float32 (wav2vec2
activations: similar exponent spread); the contexts are Gaussian bf16 (the reference holds
T5 outputs in bf16): a 60-token prompt, a 120-token negative prompt. Points recorded as
statistics only use small stand-in tensors (an index line's size does not depend on the
tensor's). CPU only, ~30 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtlib.reference.archive import pack  # noqa: E402
from mtlib.reference.sizes import format_sizes, part_sizes  # noqa: E402
from mtlib.reference.tracer import full_patterns  # noqa: E402
from mtlib.trace import TraceWriter, load_trace  # noqa: E402

LAT = (16, 21, 56, 112)  # 81 frames -> 21 latent frames; 448 x 896 -> 56 x 112
H, W = 448, 896
AUDIO_FRAMES, LAYERS, HIDDEN = 81, 12, 768
PROMPT_TOKENS, NEG_TOKENS = 60, 120


def record_run(w: TraceWriter, steps: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """The points of one clip-mode generate() call, in the tracer's order; returns the stored ones."""
    small = torch.randn(4, 4, generator=g)
    kept: dict[str, torch.Tensor] = {}

    def rec(name: str, t: torch.Tensor | None = None) -> None:
        t = small if t is None else t
        w.record(name, t)
        if w.wants_full(name):
            kept[name] = t

    for call, n in ((0, PROMPT_TOKENS), (1, NEG_TOKENS)):
        ids = torch.zeros(1, 512, dtype=torch.int64)
        ids[0, :n] = torch.randint(1, 250000, (n,), generator=g)
        rec(f"e2e.t5.call{call}.ids", ids)
        rec(f"e2e.t5.call{call}.mask", (ids > 0).long())
        rec(f"e2e.t5.call{call}.out")
    emb = torch.randn(AUDIO_FRAMES, LAYERS, HIDDEN, generator=g)
    rec("e2e.input.audio_embedding.person1", emb)
    rec("e2e.clip0.rand.noise", torch.randn(*LAT, generator=g))
    pixels = torch.randint(0, 256, (1, 3, 1, H, W), dtype=torch.uint8, generator=g)
    cond_image = (pixels / 255 - 0.5) * 2  # the official normalisation (wan/multitalk.py)
    for p in ("clip_in", "clip_fea", "vae_latent", "timesteps", "mask", "y", "audio"):
        rec(f"e2e.clip0.{p}")
    rec("e2e.clip0.ref_target_masks", (torch.rand(3, 56, 112, generator=g) > 0.5).float())
    rec("e2e.clip0.context", torch.randn(PROMPT_TOKENS, 4096, generator=g).bfloat16())
    rec("e2e.clip0.cond_image", cond_image)
    for i in range(steps):
        rec(f"e2e.clip0.step{i}.t")
        rec(f"e2e.clip0.step{i}.latent_in")
        rec(f"e2e.clip0.step{i}.cond")
        if i == 0:
            rec("e2e.clip0.context_null", torch.randn(NEG_TOKENS, 4096, generator=g).bfloat16())
        rec(f"e2e.clip0.step{i}.drop_text")
        rec(f"e2e.clip0.step{i}.uncond")
        rec(f"e2e.clip0.step{i}.noise_pred")
    for p in ("x0", "decoded", "color_ref", "color_corrected"):
        rec(f"e2e.clip0.{p}")
    rec("e2e.video")
    return kept


def variant(root: Path, name: str, steps: int, compact: bool, draws: bool) -> dict:
    out = root / name.replace(" ", "_")
    g = torch.Generator().manual_seed(0)  # same contents in every variant
    with TraceWriter(out, "stats", full_patterns("stats", (), draws), compact=compact) as w:
        kept = record_run(w, steps, g)
    # exact replay: every stored tensor reads back bit for bit
    tr = load_trace(out)
    for n, t in kept.items():
        assert torch.equal(tr.tensor(n), t) and tr.tensor(n).dtype == t.dtype, n
    archive = pack(out)
    rows = part_sizes(out)
    print(f"== {name} (compact={compact}, draws={'stored' if draws else 'left out'})")
    print(format_sizes(rows, archive.stat().st_size))
    print()
    return {
        "parts": {part: {"stored_mb": raw / 1e6, "deflated_mb": d / 1e6} for part, raw, d in rows},
        "archive_mb": archive.stat().st_size / 1e6,
        "trace_dir_mb": sum(p.stat().st_size for p in out.iterdir()) / 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="sampling steps (the Colab command: 20)")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, compact, draws in (
            ("before", False, True),
            ("after", True, True),
            ("after, no draws", True, False),
        ):
            results[name] = variant(Path(tmp), name, args.steps, compact, draws)
    print("archive MB: " + ", ".join(f"{k} {v['archive_mb']:.2f}" for k, v in results.items()))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "layout": {
                        "latent": LAT,
                        "image": [H, W],
                        "audio_embedding": [AUDIO_FRAMES, LAYERS, HIDDEN],
                        "steps": args.steps,
                    },
                    "results": results,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
