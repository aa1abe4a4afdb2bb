"""A plan for people: `plan_table` (the tensors, the schedule, each violation explained) and
`plot_frame_grouping` (how frames map to latent frames and audio windows).
"""

from __future__ import annotations

from mtlib.extras import require
from mtlib.frames import (
    is_valid_frame_num,
    latent_frames,
    snap_frame_num_up,
)
from mtlib.plan.records import PlanError, ShapePlan, explain


def plan_table(plan: ShapePlan, max_rows: int | None = None) -> str:
    """The plan as a plain-text table (no rich / pandas needed), then the diagnosis."""
    head = [
        f"model {plan.model} | mode {plan.mode} | size {plan.size} ({plan.buckets} buckets) | precision {plan.precision}",
        f"image {plan.src_hw[1]}x{plan.src_hw[0]} (w x h)"
        if plan.src_hw
        else "image: explicit target size",
    ]
    if plan.target_hw:
        head[-1] += (
            f" -> bucket {plan.bucket_key} {plan.target_hw[0]}x{plan.target_hw[1]} (H x W), latent {plan.lat_hw[0]}x{plan.lat_hw[1]}"
        )
    head.append(
        f"persons {plan.persons} ({plan.audio_type}) | audio frames {list(plan.audio_frames)} "
        f"| frame_num {plan.frame_num_requested} -> {plan.frame_num}"
    )
    if plan.valid:
        head.append(
            f"latent grid T x N_h x N_w = {' x '.join(map(str, plan.token_grid))}, seq_len {plan.seq_len} | "
            f"clips {len(plan.clips)} | video {plan.video_frames} frames -> output {plan.output_frames}"
            f" | {plan.sampling_steps} steps x {plan.passes_per_step} DiT passes"
        )
    for lo in plan.loras:
        head.append(f"LoRA {lo['summary']}")
    if plan.dit_options is not None and plan.valid:  # what would run (an invalid plan runs nothing)
        from mtlib.accel.options import DiTOptions

        o = dict(plan.dit_options)
        o.pop("weight_precisions", None)
        opts = DiTOptions(**{k: tuple(map(tuple, v)) if k == "loras" else (tuple(v) if k == "notes" else v)
                             for k, v in o.items()})  # fmt: skip
        head.append(opts.line())
        head.append(
            "weights: " + "; ".join(f"{k} {v}" for k, v in opts.weight_precisions().items())
        )
    for a in plan.policy_actions:
        head.append(f"policy {a.policy}: {a.what}")
    for n in plan.notes:
        head.append(f"note: {n}")
    rows = [(t.name, "[" + ", ".join(map(str, t.shape)) + "]", t.dtype) for t in plan.tensors]
    if max_rows is not None and len(rows) > max_rows:
        rows = rows[:max_rows] + [(f"... {len(plan.tensors) - max_rows} more", "", "")]
    body = []
    if rows:
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        body.append(f"{'tensor':<{w0}}  {'shape':<{w1}}  dtype")
        body.append("-" * (w0 + w1 + 11))
        body += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    if plan.clips and plan.mode == "streaming":
        body.append("")
        body.append(
            f"{'clip':>4}  {'audio [start, end)':<20}  {'windows read':<14}  {'motion':>6}  {'kept':>4}"
        )
        for c in plan.clips:
            rng = f"[{c.audio_start_idx}, {c.audio_end_idx})"
            win = f"{c.audio_index_range[0]}..{c.audio_index_range[1]}"
            body.append(
                f"{c.clip:>4}  {rng:<20}  {win:<14}  {c.cur_motion_frames_num:>6}  {c.kept_frames:>4}"
            )
        body.append(f"reflection padding (miss) per person: {list(plan.miss)}")
    if plan.valid and plan.flops_per_step:
        body.append("")
        body.append(
            f"DiT params {plan.params['dit']:,} | weights {sum(plan.weight_bytes.values()) / 1e9:.2f} GB "
            f"| activations/pass ~{plan.activation_bytes / 1e9:.2f} GB | {plan.flops_per_step / 1e15:.3f} PFLOP/step "
            f"({plan.passes_per_step} passes)"
        )
        from mtlib.plan.parallel import parallel_lines

        body += parallel_lines(plan)
    tail = ["VALID" if plan.valid else f"INVALID: {len(plan.violations)} violation(s)"]
    tail += [explain(v) for v in plan.violations]
    sections = [head, body, tail]
    return "\n\n".join("\n".join(x) for x in sections if x)


def plot_frame_grouping(
    frame_num: int = 13, audio_start: int = 0, audio_frames: int | None = None, ax=None
):
    """A matplotlib figure: pixel frames -> latent frames (frame 0 repeated x4, then groups of
    4) and the audio frames feeding each latent frame (latent 0: 5 window slots; latent k >= 1:
    8 slots = audio frames 4k-5 .. 4k+2, clamped to the track)."""
    plt = require("matplotlib.pyplot", "notebooks", "the shape-plan figure")
    from matplotlib.patches import Rectangle

    F = int(frame_num)
    if not is_valid_frame_num(F):
        raise PlanError(
            f"frame_num {F}: the grouping is defined for 4n+1 >= 5 only (snap: {snap_frame_num_up(F)})."
        )
    T = latent_frames(F)
    last = audio_frames - 1 if audio_frames else None
    if ax is None:
        fig, ax = plt.subplots(figsize=(min(16, 2 + 0.5 * (F + 3)), 3.6))
    else:
        fig = ax.figure
    colors = plt.get_cmap("tab10")
    # row 2: mask frames (frame 0 x4, then 1..F-1) grouped per latent frame
    seq = [0, 0, 0, 0] + list(range(1, F))
    for i, f in enumerate(seq):
        k = i // 4
        ax.add_patch(Rectangle((i, 2), 0.9, 0.8, color=colors(k % 10), alpha=0.6))
        ax.text(i + 0.45, 2.4, str(f), ha="center", va="center", fontsize=7)
    for k in range(T):
        ax.text(4 * k + 1.8, 3.05, f"latent {k}", ha="center", fontsize=8)
        if k == 0:
            idx = [audio_start + j - 2 for j in range(5)]
        else:
            idx = [audio_start + 4 * k - 5 + j for j in range(8)]
        idx = [max(0, i if last is None else min(i, last)) for i in idx]
        x0 = 4 * k + 2 - len(idx) * 0.25  # centred under the latent frame's 4 mask slots
        for j, a in enumerate(idx):
            ax.add_patch(
                Rectangle((x0 + j * 0.5, 0.6), 0.45, 0.8, color=colors(k % 10), alpha=0.35)
            )
            ax.text(
                x0 + j * 0.5 + 0.22, 1.0, str(a), ha="center", va="center", fontsize=6, rotation=90
            )
    ax.text(-0.5, 2.4, "pixel frame", ha="right", va="center", fontsize=8)
    ax.text(-0.5, 1.0, "audio frames", ha="right", va="center", fontsize=8)
    ax.set_xlim(-6, F + 4)
    ax.set_ylim(0.3, 3.4)
    ax.axis("off")
    ax.set_title(
        f"frame_num {F}: {F}+3 mask frames -> {T} latent frames of 4; audio windows per latent frame"
    )
    return fig
