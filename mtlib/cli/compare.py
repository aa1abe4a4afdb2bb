"""`mtlib compare A B`: two traces / run directories tensor by tensor (argparse; the comparison
is `mtlib.inspect.compare`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable

from mtlib.inspect.compare.report import _describe, compare, trace_incomplete, trace_status
from mtlib.io import InputError
from mtlib.trace import load_trace


def add_arguments_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "a",
        help="trace dir (or its .tar.gz), run dir (with trace/), golden case .json, golden dir, "
        "or <golden dir>/<case>",
    )
    parser.add_argument("b", help="the reference, same kinds as A")
    parser.add_argument("--report", metavar="HTML", help="write a self-contained HTML report here")
    parser.add_argument(
        "--tol",
        action="append",
        default=[],
        metavar="PATTERN=VALUE",
        help="tolerance override for points matching a glob (repeatable; last match wins), "
        "e.g. --tol 'e2e.*=1e-3'",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="compare only points matching this glob (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="compare a trace whose run did not complete (killed / failed)",
    )


def parse_tolerances(items: Iterable[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        pattern, sep, value = item.rpartition("=")
        try:
            tol = float(value)
        except ValueError:
            tol = -1.0
        if not sep or not pattern or not (tol >= 0):
            raise InputError(
                f"--tol {item!r}: expected PATTERN=VALUE with VALUE a number >= 0, "
                "e.g. --tol 'vae.*=1e-3'."
            )
        out[pattern] = tol
    return out


def run_compare(args: argparse.Namespace) -> int:
    """0: every compared point was checked and passes; 1: something diverges, is unverified
    (stats only) or nothing is in common; 2: usage, unreadable or incomplete trace."""
    from mtlib.reference.archive import resolve

    try:
        tols = parse_tolerances(args.tol)
        a = load_trace(resolve(args.a))  # a trace archive (.tar.gz) is unpacked beside itself
        b = load_trace(resolve(args.b))
        if not args.allow_incomplete:
            for src, t in ((args.a, a), (args.b, b)):
                if trace_incomplete(t):
                    raise InputError(
                        f"trace {src!r}: incomplete (status {trace_status(t)!r}: the run was "
                        "killed or failed while recording), so points are missing and its last "
                        "tensors were never written. Fix: re-run it, or --allow-incomplete to "
                        "compare what was recorded."
                    )
    except InputError as e:
        print(f"mtlib compare: {e}", file=sys.stderr)
        return 2
    from mtlib.reference.settings import format_settings_diff, settings_diff

    cmp = compare(a, b, tols, args.only or None)
    if args.json:
        doc = cmp.to_dict()
        doc["settings_diff"] = [
            dict(section=s, key=k, a=va, b=vb) for s, k, va, vb in settings_diff(a.meta, b.meta)
        ]
        print(json.dumps(doc, indent=1, default=str))
    else:
        # what the runs were told to do, and where they ran, before any tensor
        block = format_settings_diff(a.meta, b.meta)
        if block:
            print(block)
        print(cmp.table(), end="")
        fd = cmp.first_divergence
        if fd is not None:
            print(f"\n>>> FIRST DIVERGENCE: {fd}\n    {_describe(cmp[fd])}")
        print(f"\n{cmp.summary()}")
    if args.report:
        path = cmp.to_html(args.report)
        print(f"report: {path}", file=sys.stderr)
    return 0 if cmp.passed else 1
