"""`mtlib batch` end to end against a real S3 server (moto on 127.0.0.1): inputs, jobs file and
outputs on S3, the tiny model on the CPU (1 step, 5 frames).

Fast: jobs that fail before compute (bad audio, frame_num 43, a missing object, an unknown
config key) are recorded with their diagnosis, no model loads. Slow: a real job's video and
record, the rerun skipping it, --force, a SIGINT mid-job leaving nothing, the resume.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mtlib import cli
from mtlib.batch import ModelCache, run_batch, storage
from mtlib.media.video import read_mp4
from tests import s3_server

ROOT = Path(__file__).resolve().parent.parent
FAST = ["generation.sampling_steps=1", "generation.frame_num=5"]
FRAME_43 = (
    "invalid plan [frame_num_4n_plus_1] (the reference raises RuntimeError: shape "
    "'[1, 11, 4, 12, 6]' is invalid for input of size 3312); fix: set frame_num to 41 (snap: "
    "the largest 4n+1 <= 43 the audio can feed)"
)


@pytest.fixture(scope="module")
def s3():
    server = s3_server.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3, monkeypatch, tmp_path):
    """A fresh bucket holding the inputs: portrait.png, speech.wav and a broken bad.wav."""
    env = s3_server.aws_env(s3.endpoint, tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    name = f"b{time.time_ns()}"
    c = s3.client()
    c.create_bucket(Bucket=name)
    c.put_object(Bucket=name, Key="in/portrait.png", Body=(ROOT / "data/portrait.png").read_bytes())
    c.put_object(
        Bucket=name, Key="in/speech.wav", Body=(ROOT / "data/speech_1p79s.wav").read_bytes()
    )
    c.put_object(Bucket=name, Key="in/bad.wav", Body=b"RIFF....WAVEnot really audio")
    return name, env


def _jobs(bucket: str, jobs: list[dict]) -> str:
    url = f"s3://{bucket}/jobs.yaml"
    storage.put_bytes(yaml.safe_dump(jobs), url)
    return url


def _job(bucket: str, jid: str, audio: str = "speech.wav", **extra) -> dict:
    return {"id": jid, "image": f"s3://{bucket}/in/portrait.png",
            "audio": f"s3://{bucket}/in/{audio}", "prompt": "A person talking.", **extra}  # fmt: skip


def _summary(bucket: str) -> dict:
    return json.loads(storage.read_bytes(f"s3://{bucket}/out/summary.json"))


def test_jobs_refused_before_compute_are_recorded_and_no_model_loads(bucket, s3):
    b, _ = bucket
    jobs = _jobs(b, [
        _job(b, "bad-audio", audio="bad.wav"),
        _job(b, "f43", overrides={"generation.frame_num": 43}),
        _job(b, "no-object", audio="missing.wav"),
        _job(b, "bad-key", overrides={"generation.colour": 1}),
    ])  # fmt: skip
    result = run_batch(jobs, f"s3://{b}/out", "tiny", FAST, progress=False, say=lambda s: None)
    assert result.exit_code == 1 and result.model_loads == 0
    errors = {r["id"]: r["error"] for r in _summary(b)["jobs"]}
    assert [r["status"] for r in _summary(b)["jobs"]] == ["failed"] * 4
    assert errors["bad-audio"].startswith(f"audio 's3://{b}/in/bad.wav': not a readable audio file")
    assert errors["f43"] == FRAME_43
    assert errors["no-object"] == (
        f"s3://{b}/in/missing.wav: cannot read the audio: no object with the key "
        f"'in/missing.wav' in the bucket '{b}' (NoSuchKey). Fix: upload it, or correct the key "
        "(keys are case-sensitive)."
    )
    assert errors["bad-key"].startswith(
        "job 'bad-key': generation.colour: unknown key. Allowed keys here: mode,"
    )
    keys = s3.keys(b, "out/")
    assert "out/f43/plan.json" in keys and not [k for k in keys if k.endswith("video.mp4")]
    for jid in errors:
        rec = json.loads(storage.read_bytes(f"s3://{b}/out/{jid}/record.json"))
        assert rec["status"] == "failed" and rec["error"] == errors[jid]
    rec = json.loads(storage.read_bytes(f"s3://{b}/out/f43/record.json"))
    assert (
        "fix: set frame_num to 41" in rec["diagnosis"]
        and "[frame_num_4n_plus_1]" in rec["diagnosis"]
    )
    csv = storage.read_bytes(f"s3://{b}/out/summary.csv").decode().splitlines()
    assert csv[0] == "id,status,seconds,frames,error,video" and csv[2].startswith("f43,failed,")


@pytest.mark.slow
def test_batch_writes_video_and_record_then_resumes_and_forces(bucket, s3, capsys):
    b, _ = bucket
    jobs = _jobs(b, [_job(b, "ok"), _job(b, "f43", overrides={"generation.frame_num": 43})])
    out = f"s3://{b}/out"
    cache = ModelCache()  # one load for the three in-process batches below

    def batch(**kw):
        return run_batch(
            jobs, out, "tiny", FAST, progress=False, say=lambda s: None, models=cache, **kw
        )

    first = batch()
    assert [r["status"] for r in first.rows] == ["done", "failed"] and first.model_loads == 1
    keys = s3.keys(b, "out/ok/")
    assert keys == [f"out/ok/{f}" for f in ("config.yaml", "env.json", "log.txt", "plan.json",
                    "record.json", "trace/index.jsonl", "trace/meta.json", "video.mp4")]  # fmt: skip
    local = Path(os.environ["AWS_CONFIG_FILE"]).parent / "ok.mp4"
    local.write_bytes(storage.read_bytes(f"{out}/ok/video.mp4"))
    frames, sound, info = read_mp4(local)
    assert frames.shape[0] == 5 and sound is not None
    rec = json.loads(storage.read_bytes(f"{out}/ok/record.json"))
    assert rec["status"] == "done" and rec["frames"] == 5
    assert rec["inputs"]["audio1"]["url"] == f"s3://{b}/in/speech.wav"
    assert len(rec["inputs"]["image"]["sha256"]) == 64
    cfg = yaml.safe_load(storage.read_bytes(f"{out}/ok/config.yaml"))
    assert cfg["inputs"]["image"] == f"s3://{b}/in/portrait.png"
    assert cfg["generation"]["frame_num"] == 5 and cfg["name"] == "ok"
    log = storage.read_bytes(f"{out}/ok/log.txt").decode()
    assert "models loaded in" in log and "5 frames" in log

    again = batch()
    assert [r["status"] for r in again.rows] == ["skipped", "failed"]
    assert again.rows[0]["frames"] == 5 and again.model_loads == 0

    # another input content -> the job reruns without --force, with the loaded models
    s3.client().put_object(
        Bucket=b, Key="in/portrait.png", Body=(ROOT / "data/landscape_16x9.png").read_bytes()
    )
    third = batch()
    assert [r["status"] for r in third.rows] == ["done", "failed"] and third.model_loads == 0
    assert "models reused" in storage.read_bytes(f"{out}/ok/log.txt").decode()

    storage.put_bytes("{}", f"{out}/ok/trace/stale.json")  # an earlier run's leftover
    fast = sum((["-p", o] for o in FAST), [])
    code = cli.main(["batch", jobs, "--out", out, "--force", "--no-progress", *fast])
    assert code == 1  # f43 still fails
    text = capsys.readouterr().out
    assert "1/2 job(s) ok, 1 failed, models loaded 1x" in text
    assert [r["status"] for r in _summary(b)["jobs"]] == ["done", "failed"]
    assert s3.keys(b, "out/ok/") == keys  # the leftover went with the rerun


@pytest.mark.slow
def test_sigint_mid_job_leaves_no_partial_object_then_resumes(bucket, s3, tmp_path):
    b, env = bucket
    jobs = _jobs(b, [_job(b, "a"), _job(b, "b", overrides={"generation.frame_num": 43})])
    out = f"s3://{b}/out"
    argv = [sys.executable, "-m", "mtlib", "batch", jobs, "--out", out, "--no-progress",
            *sum((["-p", o] for o in FAST), [])]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=s3_server.default_sigint)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for job "a" to be running (model load / generation)
        try:
            if _summary(b)["jobs"][0]["status"] == "running":
                break
        except storage.StorageError:
            pass
        time.sleep(0.2)
    time.sleep(2.0)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted; the running job left nothing behind" in err
    assert s3.keys(b, "out/") == ["out/summary.csv", "out/summary.html", "out/summary.json"]
    assert s3.multipart_uploads(b) == []
    assert [r["status"] for r in _summary(b)["jobs"]] == ["interrupted", "pending"]

    resumed = run_batch(jobs, out, "tiny", FAST, progress=False, say=lambda s: None)
    assert [r["status"] for r in resumed.rows] == ["done", "failed"] and resumed.model_loads == 1
    assert "out/a/video.mp4" in s3.keys(b, "out/a/")


@pytest.mark.slow
def test_notebooks_mode_keeps_one_executed_notebook_per_job(tmp_path):
    """--notebooks: local inputs and output folder; the invalid job fails in the batch process
    (plan first, no kernel), the valid one runs notebook 03 in its own kernel."""
    import nbformat

    jobs = [
        {"id": "nb", "image": "data/portrait.png", "audio": "data/speech_1p79s.wav"},
        {"id": "f43", "image": "data/portrait.png", "audio": "data/speech_1p79s.wav",
         "overrides": {"generation.frame_num": 43}},
    ]  # fmt: skip
    (tmp_path / "jobs.yaml").write_text(yaml.safe_dump(jobs))
    out = tmp_path / "out"
    fast = sum((["-p", o] for o in FAST), [])
    code = cli.main(["batch", str(tmp_path / "jobs.yaml"), "--out", str(out), "--notebooks",
                     "--no-progress", *fast])  # fmt: skip
    assert code == 1
    rec = json.loads((out / "nb" / "record.json").read_text())
    assert rec["status"] == "done" and rec["mode"] == "notebook" and rec["frames"] == 5
    assert rec["notebook"] == "03_inference.ipynb" and "03_inference.ipynb" in rec["files"]
    executed = nbformat.read(out / "nb" / "03_inference.ipynb", as_version=4)
    assert any("5 frames" in str(c.get("outputs")) for c in executed.cells if c.cell_type == "code")
    assert read_mp4(out / "nb" / "video.mp4")[2]["n_frames"] == 5
    assert json.loads((out / "f43" / "record.json").read_text())["error"] == FRAME_43
    assert not (out / "f43" / "03_inference.ipynb").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "f43",
        "nb",
        "summary.csv",
        "summary.html",
        "summary.json",
    ]
