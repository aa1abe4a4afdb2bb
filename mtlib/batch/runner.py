"""`run_batch`: many jobs, models loaded once, every job leaving a complete record or nothing.

For each job, in order:

    stage      read its inputs (local / https:// / s3://) into a local work folder and hash them
               (sha256); a missing or unreadable input fails the job, naming the URL and cause
    skip?      <out>/<id>/record.json says `done` with the same input and config hashes and
               video.mp4 is there: skipped (unless force)
    plan       mtlib.run.prepare.prepare_run on the staged copies: an invalid plan fails the job
               with the diagnosis (rule, the reference's error, the fixes) before any compute
    generate   in this process with the batch's loaded models (loaded on the first job that
               needs them, reloaded only when a job's `model` section differs), or, with
               notebooks=True, by executing notebook 03 with papermill (a kernel per job)
    record     <out>/<id>/: config.yaml (resolved, with the input URLs), plan.json, env.json,
               trace/ (stats-level), log.txt [, 03_inference.ipynb], then video.mp4, then
               record.json LAST: the record is the commit mark a rerun trusts

Every file goes up complete or not at all (mtlib.batch.storage), and a job's old files are
removed before it reruns (record.json first), so an interruption leaves the job "not done". The
summary (summary.json / .csv / .html) is rewritten after every job.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mtlib.batch import storage
from mtlib.batch import summary as summary_mod
from mtlib.batch.jobs import Job, load_jobs
from mtlib.config import ConfigError, RunConfig, dump_config, load_config, to_dict
from mtlib.io import InputError

RECORD = "record.json"
VIDEO = "video.mp4"
NOTEBOOK = "03_inference"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class JobLog:
    """The job's log.txt: timestamped lines (the batch's steps, warnings, the traceback)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
        self.lines += [f"{stamp} {ln}" for ln in str(text).splitlines() or [""]]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class JobFailed(Exception):
    """A job's failure: a one-line `error` for the summary and the full `detail`."""

    def __init__(self, error: str, detail: str | None = None, plan: dict | None = None):
        super().__init__(error)
        self.error = error
        self.detail = detail or error
        self.plan = plan


@dataclass
class ModelCache:
    """The batch's loaded networks: kept across jobs, reloaded only for another `model` section."""

    compile: bool = False
    key: str | None = None
    models: Any = None
    loads: int = 0

    def get(self, cfg: RunConfig, run: Any, log: JobLog) -> Any:
        from mtlib.run.load import load_models

        key = json.dumps([to_dict(cfg.model), run.device, run.precision, self.compile])
        if key != self.key:
            self.models, self.key = None, None
            gc.collect()  # the old networks go before the new ones arrive
            self.models = load_models(cfg, run.device, run.precision, compile=self.compile)
            self.key, self.loads = key, self.loads + 1
            log(f"models loaded in {self.models.seconds:.1f} s ({run.device}, {run.precision})")
        else:
            log("models reused (loaded by an earlier job of this batch)")
        return self.models


@dataclass
class BatchResult:
    out: str
    rows: list[dict[str, Any]]
    model_loads: int = 0
    interrupted: bool = False
    summary_urls: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else (1 if self.failed else 0)


def _plan_error(e: Exception) -> JobFailed:
    """A one-line summary of a refused plan; the full diagnosis stays in the record."""
    violations = getattr(e, "violations", None)
    plan = getattr(e, "plan", None)
    if not violations:  # an unreadable input found by the planner: its message is one line
        return JobFailed(str(e).splitlines()[0], str(e))
    v = violations[0]
    raises = f" (the reference raises {v.reference_message})" if v.reference_message else ""
    fix = f"; fix: {v.fixes[0]}" if v.fixes else ""
    more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
    return JobFailed(
        f"invalid plan [{v.rule}]{raises}{fix}{more}",
        str(e),
        plan.to_dict() if plan is not None else None,
    )


def _unstage(text: str, staged: dict[str, tuple[Path, str]]) -> str:
    """Name the URLs, not the local staged copies, in messages."""
    for local, url in staged.values():
        text = text.replace(str(local), url)
    return text


class _Batch:
    def __init__(self, base, out, env, force, notebooks, models, work, say):
        self.base, self.out, self.env = base, out, env
        self.force, self.notebooks, self.models = force, notebooks, models
        self.work, self.say = work, say

    # ---------------------------------------------------------------- one job

    def run(self, job: Job) -> dict[str, Any]:
        t0 = time.perf_counter()
        log = JobLog()
        url = storage.join(self.out, job.id)
        row: dict[str, Any] = {"id": job.id, "status": "running", "seconds": None, "frames": None,
                               "error": None, "video": None}  # fmt: skip
        jobdir = self.work / job.id
        outdir = jobdir / "record"
        outdir.mkdir(parents=True)
        staged: dict[str, tuple[Path, str]] = {}
        record: dict[str, Any] = {"id": job.id, "started": _now(), "mode": self._mode()}
        try:
            if job.problem:
                raise JobFailed(f"job {job.id!r}: {job.problem}")
            record["inputs"] = self._stage(job, jobdir, staged, log)
            cfg_urls = job.config(self.base)
            (outdir / "config.yaml").write_text(dump_config(cfg_urls))  # resolved after the plan
            record["config_sha256"] = storage.sha256(
                json.dumps(to_dict(cfg_urls), sort_keys=True).encode()
            )
            key = {"config_sha256": record["config_sha256"], "inputs": record["inputs"]}
            if not self.force:
                done = self._done_record(url, key)
                if done is not None:
                    return dict(row, status="skipped", seconds=done.get("seconds"),
                                frames=done.get("frames"), video=storage.join(url, VIDEO))  # fmt: skip
            # from here on the job reruns: its old result stops counting first
            storage.remove(storage.join(url, RECORD))  # the commit mark first
            for old in storage.list_files(url):  # then what an earlier run left (video, trace)
                storage.remove(old)
            cfg = job.config(self.base, {k: str(p) for k, (p, _) in staged.items()})
            result = self._generate(job, cfg, cfg_urls, outdir, log, record)
            row.update(status="done", frames=result["frames"], video=storage.join(url, VIDEO))
            record.update(status="done", **result)
        except JobFailed as e:
            if _SIGINT.hit:  # e.g. an audio probe cut short by Ctrl-C
                raise KeyboardInterrupt from e
            row.update(status="failed", error=_unstage(e.error, staged))
            record.update(status="failed", error=row["error"], diagnosis=_unstage(e.detail, staged))
            if e.plan is not None:
                storage_local_json(outdir / "plan.json", e.plan)
            log(f"FAILED: {record['diagnosis']}")
        except Exception as e:  # one bad job never stops the others: any error is its failure
            if _SIGINT.hit:  # Ctrl-C that a library turned into its own error (PyAV: ExitError)
                raise KeyboardInterrupt from e
            msg = _unstage(str(e), staged)
            named = isinstance(e, InputError | ConfigError)  # these name the input themselves
            first = msg.splitlines()[0] if msg else ""
            row.update(status="failed", error=first if named else f"{type(e).__name__}: {first}")
            record.update(status="failed", error=row["error"], diagnosis=msg)
            log(f"FAILED: {type(e).__name__}: {msg}\n{_unstage(traceback.format_exc(), staged)}")
        row["seconds"] = round(time.perf_counter() - t0, 2)
        record.update(seconds=row["seconds"], finished=_now(), error=row["error"])
        record["frames"] = row["frames"]
        try:
            self._write_record(url, outdir, record, log)
        except storage.StorageError as e:  # the job's own output could not be written
            row.update(status="failed", error=str(e).splitlines()[0], video=None)
        return row

    def _mode(self) -> str:
        return "notebook" if self.notebooks else "in-process"

    def _stage(self, job: Job, jobdir: Path, staged: dict, log: JobLog) -> dict[str, Any]:
        """Copy every input into the work folder; {name: {url, sha256, bytes}}."""
        hashes = {}
        for name, url in job.inputs().items():
            data = storage.read_bytes(url, what=name.rstrip("12") if name != "image" else name)
            local = jobdir / "inputs" / name / (Path(url.split("?")[0]).name or name)
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            staged[name] = (local, url)
            hashes[name] = {"url": url, "sha256": storage.sha256(data), "bytes": len(data)}
            log(f"input {name}: {url} ({len(data)} bytes, sha256 {hashes[name]['sha256'][:12]})")
        return hashes

    def _done_record(self, url: str, key: dict) -> dict | None:
        try:
            old = json.loads(storage.read_bytes(storage.join(url, RECORD), what="record"))
        except storage.StorageError:
            return None
        except ValueError:  # unreadable record: rerun
            return None
        same = old.get("status") == "done" and old.get("config_sha256") == key["config_sha256"]
        same = same and old.get("inputs") == key["inputs"]
        return old if same and storage.exists(storage.join(url, VIDEO)) else None

    def _generate(self, job, cfg, cfg_urls, outdir: Path, log: JobLog, record: dict) -> dict:
        from mtlib.plan import PlanError
        from mtlib.run import generation

        try:
            run = generation.prepare_run(cfg, progress=False)
        except (PlanError, ConfigError) as e:  # before any compute
            raise _plan_error(e) from None
        plan = run.plan.to_dict()
        storage_local_json(outdir / "plan.json", plan)
        urls = {"inputs.image": cfg_urls.inputs.image, "inputs.audio": list(cfg_urls.inputs.audio)}
        (outdir / "config.yaml").write_text(dump_config(run.config.replace(**urls)))
        log(f"plan: frame_num {run.plan.frame_num}, {len(run.plan.clips)} clip(s), "
            f"output {run.output_frames} frames, bucket {run.plan.bucket_key}")  # fmt: skip
        if self.notebooks:
            return self._generate_notebook(cfg, outdir, log)
        models = self.models.get(run.config, run, log)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            out = generation.generate_video(
                cfg, outdir / VIDEO, trace_dir=outdir / "trace", progress=False, models=models
            )
        for w in caught:
            log(f"warning: {w.category.__name__}: {w.message}")
        log(generation.summary(out).replace(str(outdir / VIDEO), VIDEO))
        return {"frames": out.frames, "timings": out.timings, "seed": out.seed,
                "size": [out.height, out.width], "dit_calls": out.dit_calls}  # fmt: skip

    def _generate_notebook(self, cfg: RunConfig, outdir: Path, log: JobLog) -> dict:
        import papermill as pm

        from mtlib.io import project_root
        from mtlib.media.video import read_mp4
        from mtlib.run.notebooks import resolve_kernel

        nb = project_root() / "notebooks" / f"{NOTEBOOK}.ipynb"
        local_cfg = outdir.parent / "config.local.yaml"  # the staged paths, for the kernel
        local_cfg.write_text(dump_config(cfg))
        executed = outdir / f"{NOTEBOOK}.ipynb"
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb), str(executed),
                parameters={"config": str(local_cfg), "run_dir": str(outdir)},
                kernel_name=resolve_kernel(None, nb), cwd=str(project_root()),
                progress_bar=False, log_output=False,
            )  # fmt: skip
        except pm.PapermillExecutionError as e:
            raise JobFailed(
                f"notebook {NOTEBOOK} raised {e.ename}: {str(e.evalue).splitlines()[0]}",
                f"notebook {NOTEBOOK}, cell {e.cell_index}: {e.ename}: {e.evalue}",
            ) from None
        (outdir / "summary.txt").unlink(missing_ok=True)  # the notebook's headline: in log.txt
        info = read_mp4(outdir / VIDEO)[2]
        log(f"notebook {NOTEBOOK} executed in {time.perf_counter() - t0:.1f} s (own kernel)")
        return {"frames": int(info["n_frames"]), "notebook": f"{NOTEBOOK}.ipynb"}

    def _write_record(self, url: str, outdir: Path, record: dict, log: JobLog) -> None:
        """Everything but the video and record.json, then the video, then record.json."""
        storage_local_json(outdir / "env.json", self.env)
        video = outdir / VIDEO
        record["files"] = sorted(
            p.relative_to(outdir).as_posix() for p in outdir.rglob("*") if p.is_file()
        ) + ["log.txt", RECORD]
        log(f"record: {len(record['files'])} file(s) -> {url}")
        (outdir / "log.txt").write_text(log.text())
        for p in sorted(q for q in outdir.rglob("*") if q.is_file() and q != video):
            storage.put_file(p, storage.join(url, p.relative_to(outdir).as_posix()))
        if record.get("status") == "done":
            storage.put_file(video, storage.join(url, VIDEO))
        storage.put_bytes(json.dumps(record, indent=1, default=str), storage.join(url, RECORD))


def storage_local_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))


def run_batch(
    jobs: str | list[Job],
    out: str,
    config: str | RunConfig | None = "tiny",
    overrides: list[str] | dict | None = None,
    force: bool = False,
    notebooks: bool = False,
    compile: bool = False,
    progress: bool = True,
    say=print,
    models: ModelCache | None = None,
) -> BatchResult:
    """Run every job of `jobs` (a jobs file URL or Jobs) into `out` (a folder or s3:// prefix).

    Raises JobsFileError / ConfigError / StorageError before any job runs when the jobs file, the
    base config or the output location is refused; otherwise every job's outcome is in the
    returned rows (and in <out>/summary.*). KeyboardInterrupt: the running job is marked
    `interrupted` in the summary, nothing partial of it is left, and the interrupt propagates.
    models: a ModelCache that keeps the networks loaded across batches (a notebook, a warm
    Modal container); by default the batch loads them on its first job and drops them after.
    """
    from mtlib.env import environment_report

    source = jobs if isinstance(jobs, str) else "<jobs>"
    jobs = load_jobs(jobs) if isinstance(jobs, str) else list(jobs)
    base = load_config(config, overrides)
    out = str(out).rstrip("/")
    rows = [{"id": j.id, "status": "pending", "seconds": None, "frames": None, "error": None,
             "video": None} for j in jobs]  # fmt: skip
    meta = {"jobs": source, "out": out, "config": base.name, "force": force,
            "mode": "notebook" if notebooks else "in-process", "started": _now()}  # fmt: skip
    result = BatchResult(out, rows)
    urls = {k: storage.join(out, f"summary.{k}") for k in ("json", "csv", "html")}
    result.summary_urls = urls

    def write_summary() -> None:
        meta["updated"] = _now()
        storage.put_bytes(summary_mod.to_json(meta, rows), urls["json"])
        storage.put_bytes(summary_mod.to_csv(rows), urls["csv"])
        storage.put_bytes(summary_mod.to_html(meta, rows), urls["html"])

    write_summary()  # the output location is checked (and writable) before any job runs
    env = environment_report()
    cache = models if models is not None else ModelCache(compile=compile)
    loads_before = cache.loads
    bar = _progress(len(jobs), progress, say)
    _SIGINT.install()
    try:
        with tempfile.TemporaryDirectory(prefix="mtlib-batch-") as work:
            batch = _Batch(base, out, env, force, notebooks, cache, Path(work), say)
            for i, job in enumerate(jobs):
                rows[i]["status"] = "running"
                bar.set_postfix_str(job.id)
                write_summary()
                try:
                    rows[i] = batch.run(job)
                except KeyboardInterrupt:
                    rows[i]["status"] = "interrupted"
                    result.interrupted = True
                    write_summary()
                    raise
                write_summary()
                r = rows[i]
                line = f"{r['status']:<8} {r['id']}"
                if r["status"] in ("done", "skipped"):
                    line += f"  {r['frames']} frames  {r['seconds']} s"
                else:
                    line += f"  {r['error']}"
                bar.write(line)
                bar.update(1)
    finally:
        _SIGINT.restore()
        bar.close()
        result.model_loads = cache.loads - loads_before
    return result


class _SigintFlag:
    """Remembers that Ctrl-C came, so that a KeyboardInterrupt converted by a library (PyAV
    raises ExitError from inside FFmpeg) still stops the batch instead of failing the job."""

    def __init__(self) -> None:
        self.hit = False
        self._previous = None

    def _handler(self, signum, frame):
        self.hit = True
        raise KeyboardInterrupt

    def install(self) -> None:
        self.hit = False
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self._previous = signal.signal(signal.SIGINT, self._handler)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


_SIGINT = _SigintFlag()


class _NoBar:
    def __init__(self, say) -> None:
        self.write = say

    def set_postfix_str(self, s: str) -> None: ...
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, enabled: bool, say=print):
    if not enabled:
        return _NoBar(say)
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="job", desc="batch", file=sys.stderr, dynamic_ncols=True)
