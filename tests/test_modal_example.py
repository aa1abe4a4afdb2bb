"""examples/modal/app.py: the Modal app imports, and its job function, run locally with
`.local()`, runs a tiny batch from the local S3 server (moto, 127.0.0.1) to it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from mtlib.batch import storage
from tests import s3_server

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("modal", reason="modal is in the dev extras")


@pytest.fixture(scope="module")
def app():
    spec = importlib.util.spec_from_file_location("mtlib_modal_app", ROOT / "examples/modal/app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_knobs_follow_the_gpu_memory(app):
    assert app.gpu_overrides(None) == []
    assert app.gpu_overrides(85_899_345_920) == []  # H100 / A100-80GB: all resident
    assert app.gpu_overrides(42_505_273_344) == [  # A100-40GB
        "model.offload.mode=blocks",
        "model.offload.resident_params=6252636672",
    ]
    assert app.gpu_overrides(24_000_000_000)[1] == "model.offload.resident_params=0"
    assert app.weights_overrides("tiny") == []
    assert app.weights_overrides("multitalk-480", "/w") == [
        "model.weights.wan_dir=/w/Wan2.1-I2V-14B-480P",
        "model.weights.multitalk_dir=/w/MeiGen-MultiTalk",
        "model.weights.wav2vec_dir=/w/chinese-wav2vec2-base",
    ]
    assert app.app.name == "mtlib-batch"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The run_batch function is executing locally")  # no Volume here
def test_job_function_runs_locally_from_s3_to_s3(app, monkeypatch, tmp_path):
    server = s3_server.start()
    try:
        for k, v in s3_server.aws_env(server.endpoint, tmp_path).items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        c = server.client()
        c.create_bucket(Bucket="modal-jobs")
        c.put_object(
            Bucket="modal-jobs", Key="in/p.png", Body=(ROOT / "data/portrait.png").read_bytes()
        )
        c.put_object(
            Bucket="modal-jobs", Key="in/s.wav", Body=(ROOT / "data/speech_1p79s.wav").read_bytes()
        )
        jobs = [{"id": "multi1", "image": "s3://modal-jobs/in/p.png", "audio": "s3://modal-jobs/in/s.wav",
                 "prompt": "A person talking."}]  # fmt: skip
        storage.put_bytes(yaml.safe_dump(jobs), "s3://modal-jobs/jobs.yaml")
        res = app.run_batch.local(
            "s3://modal-jobs/jobs.yaml", "s3://modal-jobs/outputs", config="tiny",
            overrides=["generation.sampling_steps=1", "generation.frame_num=5"],
        )  # fmt: skip
        assert res["exit_code"] == 0 and res["model_loads"] == 1
        assert res["overrides"] == ["generation.sampling_steps=1", "generation.frame_num=5"]
        assert [(r["id"], r["status"], r["frames"]) for r in res["rows"]] == [("multi1", "done", 5)]
        assert res["summary"] == "s3://modal-jobs/outputs/summary.html"
        assert "outputs/multi1/video.mp4" in server.keys("modal-jobs", "outputs/")
        rec = json.loads(storage.read_bytes("s3://modal-jobs/outputs/multi1/record.json"))
        assert (
            rec["status"] == "done" and rec["inputs"]["image"]["url"] == "s3://modal-jobs/in/p.png"
        )
    finally:
        server.stop()
