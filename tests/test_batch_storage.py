"""mtlib.batch.storage and the jobs file against a real S3 server (moto, 127.0.0.1).

One error per S3 failure, each naming the URL and the cause; writes that appear whole or not at
all; the jobs file read as YAML or CSV, its own problems refused before anything runs.
"""

from __future__ import annotations

import json

import pytest

from mtlib.batch import JobsFileError, StorageError, parse_jobs, storage
from tests import s3_server


@pytest.fixture(scope="module")
def s3():
    server = s3_server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch, tmp_path):
    for k, v in s3_server.aws_env(s3.endpoint, tmp_path).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    c = s3.client()
    if "inbox" not in [b["Name"] for b in c.list_buckets()["Buckets"]]:
        c.create_bucket(Bucket="inbox")
    c.put_object(Bucket="inbox", Key="a.txt", Body=b"hello")
    return s3


def test_read_write_roundtrip_and_only_final_keys(s3_env, tmp_path):
    local = tmp_path / "v.bin"
    local.write_bytes(b"x" * 300_000)
    storage.put_file(local, "s3://inbox/out/v.bin")
    storage.put_bytes("text", "s3://inbox/out/t.txt")
    assert storage.read_bytes("s3://inbox/out/v.bin") == b"x" * 300_000
    assert storage.read_bytes("s3://inbox/out/t.txt") == b"text"
    assert s3_env.keys("inbox", "out/") == ["out/t.txt", "out/v.bin"]  # no temporary keys
    assert storage.exists("s3://inbox/out/v.bin") and not storage.exists("s3://inbox/out/nope")
    storage.remove("s3://inbox/out/v.bin")
    assert s3_env.keys("inbox", "out/") == ["out/t.txt"]


def test_missing_object(s3_env):
    with pytest.raises(StorageError) as e:
        storage.read_bytes("s3://inbox/nope.wav", what="audio")
    assert str(e.value) == (
        "s3://inbox/nope.wav: cannot read the audio: no object with the key 'nope.wav' in the "
        "bucket 'inbox' (NoSuchKey). Fix: upload it, or correct the key (keys are case-sensitive)."
    )


def test_missing_bucket_read_and_write(s3_env, tmp_path):
    ep = s3_env.endpoint
    with pytest.raises(StorageError) as e:
        storage.read_bytes("s3://nobucket/a.png", what="image")
    assert str(e.value) == (
        f"s3://nobucket/a.png: cannot read the image: the bucket 'nobucket' does not exist at "
        f"{ep} (NoSuchBucket). Fix: create the bucket, or correct the bucket name / AWS_ENDPOINT_URL."
    )
    with pytest.raises(
        StorageError,
        match=r"^s3://nobucket/o/summary.json: cannot write: the bucket 'nobucket' does not exist",
    ):
        storage.put_bytes("{}", "s3://nobucket/o/summary.json")


def test_access_denied(s3_env):
    c = s3_env.client()
    c.create_bucket(Bucket="locked")
    c.put_object(Bucket="locked", Key="k.png", Body=b"x")
    deny = {"Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": ["arn:aws:s3:::locked", "arn:aws:s3:::locked/*"]}  # fmt: skip
    c.put_bucket_policy(
        Bucket="locked", Policy=json.dumps({"Version": "2012-10-17", "Statement": [deny]})
    )
    msg = (
        "cannot {}: access denied (403) for the credentials in use. Fix: grant s3:GetObject / "
        "s3:PutObject on the bucket 'locked' to them, or use other credentials "
        "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)."
    )
    try:
        with pytest.raises(StorageError) as e:
            storage.read_bytes("s3://locked/k.png", what="image")
        assert str(e.value) == "s3://locked/k.png: " + msg.format("read the image")
        with pytest.raises(StorageError) as e:
            storage.put_bytes(b"x", "s3://locked/out/record.json")
        assert str(e.value) == "s3://locked/out/record.json: " + msg.format("write")
    finally:
        c.delete_bucket_policy(Bucket="locked")


def test_wrong_endpoint(s3_env, monkeypatch):
    ep = f"http://127.0.0.1:{s3_server.closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", ep)
    with pytest.raises(StorageError) as e:
        storage.read_bytes("s3://inbox/a.txt", what="image")
    assert str(e.value).startswith(
        f"s3://inbox/a.txt: cannot read the image: the S3 endpoint {ep} cannot be reached "
        f'(EndpointConnectionError: Could not connect to the endpoint URL: "{ep}/inbox/a.txt").'
    )
    assert str(e.value).endswith(
        "Fix: check AWS_ENDPOINT_URL (S3-compatible stores) and the network."
    )


def test_local_atomic_write_leaves_no_temporary_file(tmp_path):
    storage.put_bytes(b"abc", str(tmp_path / "d" / "f.json"))
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["f.json"]
    with pytest.raises(StorageError, match="file not found"):
        storage.read_bytes(str(tmp_path / "nope.png"), what="image")


YAML_JOBS = """
- id: a
  image: s3://inbox/a.png
  audio: s3://inbox/a.wav
  prompt: A person talking.
- id: b
  image: s3://inbox/b.png
  audio: [s3://inbox/b1.wav, s3://inbox/b2.wav]
  audio_type: add
  bbox: [[0, 0, 10, 10], [0, 10, 10, 20]]
  overrides: {generation.seed: 3, generation.frame_num: 41}
"""

CSV_JOBS = """id,image,audio,prompt,bbox,audio_type,overrides
a,s3://inbox/a.png,s3://inbox/a.wav,A person talking.,,,
b,s3://inbox/b.png,s3://inbox/b1.wav;s3://inbox/b2.wav,,"[[0, 0, 10, 10], [0, 10, 10, 20]]",add,generation.seed=3; generation.frame_num=41
"""


def test_yaml_and_csv_jobs_are_the_same():
    y, c = parse_jobs(YAML_JOBS, "jobs.yaml"), parse_jobs(CSV_JOBS, "jobs.csv")
    assert y == c
    assert y[1].audio == ("s3://inbox/b1.wav", "s3://inbox/b2.wav")
    assert y[1].overrides == {"generation.seed": 3, "generation.frame_num": 41}
    assert y[1].inputs() == {
        "image": "s3://inbox/b.png",
        "audio1": "s3://inbox/b1.wav",
        "audio2": "s3://inbox/b2.wav",
    }


def test_job_config_layers_inputs_and_overrides():
    from mtlib.config import load_config

    cfg = parse_jobs(YAML_JOBS, "jobs.yaml")[1].config(load_config("tiny"))
    assert cfg.name == "b" and cfg.inputs.image == "s3://inbox/b.png"
    assert (
        cfg.inputs.audio == ("s3://inbox/b1.wav", "s3://inbox/b2.wav")
        and cfg.inputs.audio_type == "add"
    )
    assert cfg.generation.seed == 3 and cfg.generation.frame_num == 41
    assert cfg.inputs.bbox == ((0, 0, 10, 10), (0, 10, 10, 20))


def test_jobs_file_problems_refuse_the_batch_job_problems_fail_the_job():
    with pytest.raises(JobsFileError) as e:
        parse_jobs(
            "- {id: a, image: x.png, audio: a.wav}\n- {id: a, image: y.png, audio: b.wav}", "j.yaml"
        )
    assert str(e.value) == "j.yaml: the id 'a' is used twice. Fix: ids must be unique."
    with pytest.raises(JobsFileError) as e:
        parse_jobs("- {image: x.png, audio: a.wav}", "j.yaml")
    assert str(e.value) == (
        "j.yaml: job 1: id None is missing or unusable as a folder name. Fix: an id of letters, "
        "digits, '-', '_' or '.' (at most 128), unique in the file."
    )
    with pytest.raises(JobsFileError, match=r"^j.yaml: expected a non-empty list of jobs"):
        parse_jobs("{a: 1}", "j.yaml")
    (job,) = parse_jobs(
        "- {id: a, image: x.png, audio: [a.wav, b.wav, c.wav], colour: red}", "j.yaml"
    )
    assert job.problem == (
        "unknown field(s) ['colour']; allowed: id, image, audio, prompt, bbox, audio_type, "
        "overrides; `audio` must be one URL or a list of two, got ['a.wav', 'b.wav', 'c.wav']"
    )


UPLOAD = (
    "import sys; from mtlib.batch import storage; storage.s3_filesystem().ls('inbox'); "
    "print('start', flush=True); storage.put_file(sys.argv[1], 's3://inbox/up/video.mp4')"
)


@pytest.mark.slow
def test_upload_interrupted_by_sigint_leaves_no_partial_object(s3_env, tmp_path):
    """A 90 MB single-PUT upload in another process, SIGINT 0.02 s and 0.5 s after it starts:
    the key is then absent or holds every byte (it can land complete after the interrupt when
    the body had already been sent, or the upload may finish before a late signal on a fast
    machine), never a part. The early signal must interrupt it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(90 * 2**20))
    c = s3_env.client()
    interrupted = []
    for delay in (0.02, 0.5):
        p = subprocess.Popen([sys.executable, "-c", UPLOAD, str(big)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=s3_server.default_sigint)  # fmt: skip
        assert p.stdout.readline().strip() == "start"
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        if p.returncode != 0:
            assert "KeyboardInterrupt" in err, err
            interrupted.append(delay)
        else:  # the upload was complete before the signal came
            assert s3_env.keys("inbox", "up/") == ["up/video.mp4"]
        time.sleep(3.0)  # what the server was still receiving has landed
        keys = s3_env.keys("inbox", "up/")
        sizes = [c.head_object(Bucket="inbox", Key=k)["ContentLength"] for k in keys]
        assert keys in ([], ["up/video.mp4"]) and sizes in ([], [90 * 2**20])
        assert s3_env.multipart_uploads("inbox") == []
        for k in keys:
            c.delete_object(Bucket="inbox", Key=k)
    assert 0.02 in interrupted
