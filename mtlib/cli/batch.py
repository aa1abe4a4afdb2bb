"""`mtlib batch JOBS --out URL`: run a jobs file (YAML list or CSV) with the models loaded once.

Exit status: 0 every job done or skipped, 1 some job failed (the summary names each failure),
2 the jobs file, the config or the output location is refused (nothing ran), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from mtlib.cli.overrides import add_override_argument


def add_arguments_batch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("jobs", help="jobs file: YAML list or CSV (local path, https:// or s3://)")
    parser.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    parser.add_argument(
        "--config", default="tiny", help="preset (tiny, multitalk-480, ...) or YAML file"
    )
    add_override_argument(
        parser,
        "config override for every job, e.g. -p generation.sampling_steps=8 (repeatable)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rerun jobs even when their results are up to date"
    )
    parser.add_argument(
        "--notebooks", action="store_true",
        help="run each job through notebook 03 with papermill (a kernel per job: the models "
        "load again for every job)",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the DiT blocks (CUDA)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_batch(args: argparse.Namespace) -> int:
    from mtlib.batch import JobsFileError, StorageError
    from mtlib.batch import run_batch as run
    from mtlib.batch.summary import to_text
    from mtlib.config import ConfigError

    try:
        result = run(
            args.jobs, args.out, config=args.config, overrides=list(args.overrides),
            force=args.force, notebooks=args.notebooks, compile=args.compile,
            progress=not args.no_progress,
        )  # fmt: skip
    except (JobsFileError, ConfigError, StorageError) as e:
        print(f"mtlib batch: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "mtlib batch: interrupted; the running job left nothing behind (rerun to resume).",
            file=sys.stderr,
        )
        return 130
    print(to_text(result.rows))
    n = len(result.rows)
    print(
        f"{n - len(result.failed)}/{n} job(s) ok, {len(result.failed)} failed, models loaded "
        f"{result.model_loads}x; summary: {result.summary_urls['html']}"
    )
    return result.exit_code
