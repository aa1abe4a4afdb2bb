"""Batch runs: many jobs from local / https:// / s3:// inputs to a local folder or an S3 prefix.

    mtlib batch jobs.yaml --out s3://bucket/outputs [--config tiny] [-p key=value] [--force]

`load_jobs` / `parse_jobs` (mtlib.batch.jobs) read the jobs file, `run_batch`
(mtlib.batch.runner) runs them with the models loaded once and writes one record per job plus
the summary, `mtlib.batch.storage` reads and writes URLs (atomically, with one clear error per
S3 failure). See docs/batch.md.
"""

from mtlib.batch.jobs import Job, JobsFileError, load_jobs, parse_jobs
from mtlib.batch.runner import BatchResult, ModelCache, run_batch
from mtlib.batch.storage import StorageError

__all__ = [
    "BatchResult", "Job", "ModelCache", "JobsFileError", "StorageError", "load_jobs", "parse_jobs", "run_batch",
]  # fmt: skip
