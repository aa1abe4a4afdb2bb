"""`mtlib run`: execute the notebooks headless (papermill) into runs/<id>/ (argparse; the runner is
`mtlib.run.notebooks`).
"""

from __future__ import annotations

import sys

from mtlib.config import ConfigError
from mtlib.run.notebooks import RunError, describe_run, run_notebooks


def add_arguments_run(parser) -> None:
    parser.add_argument(
        "--config",
        default="configs/tiny.yaml",
        help="preset name (tiny, multitalk-480, multitalk-720) or YAML file",
    )
    parser.add_argument("--only", help="comma-separated notebook prefixes, e.g. 02,03")
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. -p generation.seed=3 (repeatable)",
    )
    parser.add_argument(
        "--kernel", help="Jupyter kernel name (default: the notebook's, else this Python)"
    )
    parser.add_argument(
        "--notebooks", help="notebook directory (default: the project's notebooks/)"
    )
    parser.add_argument("--runs-dir", help="where run directories go (default: runs/)")
    parser.add_argument(
        "--official-dir",
        help="05_reference: an official MultiTalk checkout (with weights) "
        "to trace; without it 05 runs its demo reference (said in summary.txt)",
    )
    parser.add_argument("--official-args", help="05_reference: the generate_multitalk.py arguments")


def run_run(args) -> int:
    try:
        if args.runs_dir:  # refused up front (e.g. s3://): not after the first notebook ran
            from mtlib.plan.guards import check_output_dir

            check_output_dir(args.runs_dir, "--runs-dir")
        extra = {}
        official_dir = getattr(args, "official_dir", None)
        if official_dir or getattr(args, "official_args", None):
            from mtlib.reference.workflow import notebook_parameters

            extra["05_reference"] = notebook_parameters(official_dir, args.official_args)
        result = run_notebooks(
            args.config,
            args.param,
            args.only,
            args.kernel,
            args.notebooks,
            args.runs_dir,
            notebook_parameters=extra,
        )
    except (ConfigError, ValueError) as e:
        print(f"mtlib run: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"mtlib run: FAILED: {e}", file=sys.stderr)
        return 1
    total = sum(result.seconds.values())
    print(f"done in {total:.1f} s")
    print(describe_run(result))
    return 0
