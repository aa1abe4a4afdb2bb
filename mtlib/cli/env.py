"""`mtlib env`: print the environment report (argparse; the report is `mtlib.env`)."""

from __future__ import annotations

import json

from mtlib.env import environment_report, format_report


def add_arguments_env(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_env(args) -> int:
    report = environment_report()
    print(json.dumps(report, indent=1, default=str) if args.json else format_report(report))
    return 0
