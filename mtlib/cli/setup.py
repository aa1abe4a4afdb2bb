"""`mtlib setup`: download, lay out and verify the checkpoints (argparse; the work is in
`mtlib.weights`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtlib.weights.fetch import check_disk_space, download, plan_download
from mtlib.weights.files import WeightsError
from mtlib.weights.layout import resolve_layout
from mtlib.weights.verify import verify_layout


def add_arguments_setup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        help="one folder holding Wan2.1-I2V-14B-480P/, MeiGen-MultiTalk/, chinese-wav2vec2-base/",
    )
    parser.add_argument("--wan-dir", help="the Wan2.1-I2V-14B-480P folder")
    parser.add_argument("--multitalk-dir", help="the MeiGen-MultiTalk folder")
    parser.add_argument("--wav2vec-dir", help="the chinese-wav2vec2-base folder")
    parser.add_argument(
        "--download",
        action="store_true",
        help="fetch what is missing (into --root, else the hub cache)",
    )
    parser.add_argument(
        "--with-optional",
        action="store_true",
        help="also fetch xlm-roberta-large/ (official code only)",
    )
    parser.add_argument(
        "--verify", action="store_true", help="check every file (default when not downloading)"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="with --verify: also read every tensor and find NaN / inf (one read of all files)",
    )
    parser.add_argument(
        "--tiny",
        metavar="DIR",
        help="write (if missing) and verify the tiny random checkpoints in DIR",
    )
    parser.add_argument("--config", default="multitalk-14b", choices=("multitalk-14b", "tiny"),
                        help="which model's shapes to verify against")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--lora", choices=("lightx2v", "fusionx"),
                        help="download a distillation recipe's LoRA (the repo the README links) into --root")  # fmt: skip


def run_setup(args: argparse.Namespace) -> int:
    """Exit 0: ready. 1: problems (each printed with its fix). 2: usage error."""
    dirs = (args.wan_dir, args.multitalk_dir, args.wav2vec_dir)
    if args.root and any(dirs):
        print(
            "mtlib setup: give --root OR --wan-dir/--multitalk-dir/--wav2vec-dir, not both.",
            file=sys.stderr,
        )
        return 2
    if (
        any(dirs)
        and not all(dirs)
        and not (args.wan_dir and not args.wav2vec_dir and not args.multitalk_dir)
    ):
        print("mtlib setup: --multitalk-dir and --wav2vec-dir need --wan-dir (give all three, or only "
              "--wan-dir for a root or a linked folder).", file=sys.stderr)  # fmt: skip
        return 2
    if args.download and any(dirs):
        print("mtlib setup: --download fetches into --root DIR or the hub cache; it does not take "
              "--wan-dir/--multitalk-dir/--wav2vec-dir.", file=sys.stderr)  # fmt: skip
        return 2
    if args.tiny and (args.download or args.root or any(dirs)):
        print(
            "mtlib setup: --tiny DIR stands alone (it writes random checkpoints).", file=sys.stderr
        )
        return 2
    if getattr(args, "lora", None):
        from mtlib.weights.recipe_files import download_lora

        try:
            path = download_lora(args.lora, args.root)
        except ValueError as e:
            print(f"mtlib setup: {e}", file=sys.stderr)
            return 1
        print(
            f"{args.lora} LoRA: {path}\nuse it: mtlib generate --config multitalk-480-{args.lora} --lora {path}:1.0 ..."
        )
        return 0
    try:
        if args.tiny:
            from mtlib.weights.tiny import write_tiny_checkpoints

            layout = write_tiny_checkpoints(Path(args.tiny))
            config_name = "tiny"
        else:
            config_name = args.config
            if args.download:
                plan = plan_download(args.root, include_optional=args.with_optional)
                print(plan.table())
                check_disk_space(plan)
                download(plan)
            layout = resolve_layout(root=args.root, wan_dir=args.wan_dir, multitalk_dir=args.multitalk_dir,
                                    wav2vec_dir=args.wav2vec_dir, check_files=False)  # fmt: skip
        report = verify_layout(layout, config_name, strict=False)
        if getattr(args, "full", False) and report.ok:  # data check only on sound headers
            from mtlib.weights.datacheck import check_layout_finite

            cost = check_layout_finite(layout, report, progress=not args.json)
            if not args.json:
                print(f"full data check: {cost['bytes'] / 1e9:.2f} GB in {cost['seconds']:.1f} s",
                      file=sys.stderr)  # fmt: skip
    except WeightsError as e:
        if args.json:
            print(json.dumps({"ok": False, "error": str(e)}))
        else:
            print(str(e), file=sys.stderr)
        return 1
    from mtlib.weights.recipe_files import find_quant_files

    quant = [] if args.tiny else find_quant_files(layout.multitalk_dir)
    if args.json:
        rec = report.to_json()
        rec["quant_files"] = [{"path": str(q.path), "ok": q.ok, "detail": q.detail} for q in quant]
        print(json.dumps(rec, indent=1))
    else:
        print(report.table())
        for q in quant:
            print(q.line())
    return 0 if report.ok and all(q.ok for q in quant) else 1
