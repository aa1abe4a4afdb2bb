"""`python -m mtlib.reference --trace DIR -- SCRIPT ARGS` runs a script in-process under the
tracer and packs the trace; the archive is read back by `mtlib compare`.

The real generate_multitalk.py needs the 14B checkpoints; here SCRIPT is a stand-in that
builds the OFFICIAL pipeline on the golden tiny weights (official_cpu fixture) and calls its
generate() the way generate_multitalk.py does, taking its seed from the command line."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from mtlib.cli import main as mtlib_main
from mtlib.cli.reference_trace import main
from mtlib.inspect.compare import compare
from mtlib.reference.archive import resolve
from mtlib.trace import load_trace
from tests import official_ref as R

SCRIPT = textwrap.dedent("""
    import argparse, json, sys, tempfile
    sys.path[:0] = {paths!r}
    import official_cpu as oc
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt_dir")
    parser.add_argument("--input_json")
    parser.add_argument("--base_seed", type=int, default=42)
    args = parser.parse_args()
    pipe = oc.tiny_pipeline(args.ckpt_dir, tempfile.mkdtemp())
    with open(args.input_json) as f:
        data = json.load(f)
    with oc.tiny_buckets():
        video = oc.generate(pipe, data, "multitalk-480", frame_num=13, sampling_steps=3, seed=args.base_seed)
    print("video", tuple(video.shape))
""")


@pytest.mark.golden
@pytest.mark.slow
def test_prefixed_command_traces_and_archives(golden, tmp_path, capsys):
    R.official_cpu()  # the fixture must exist (CI=true: fail, not skip)
    case = golden.case("e2e_clip_1p")
    data = R.input_data(golden, case, tmp_path)
    (tmp_path / "input.json").write_text(json.dumps(data))
    script = tmp_path / "generate_tiny.py"
    script.write_text(SCRIPT.format(paths=R.official_paths()))
    argv_before = list(sys.argv)
    out = tmp_path / "colab_trace"
    rc = main(
        [
            "--trace",
            str(out),
            "--",
            "python3",
            str(script),
            "--ckpt_dir",
            str(golden.weights),
            "--input_json",
            str(tmp_path / "input.json"),
            "--base_seed",
            "42",
        ]
    )
    assert rc == 0
    assert sys.argv == argv_before
    captured = capsys.readouterr()
    assert "video (3, 13, 48, 64)" in captured.out
    archive = tmp_path / "colab_trace.tar.gz"
    assert f"archive: {archive} (" in captured.err
    # the size of each part of the download, then the archive's
    parts = [ln.split("  ")[0] for ln in captured.err.splitlines()]
    for part in (
        "random draws",
        "conditioning image",
        "audio embeddings",
        "person masks",
        "text (contexts, ids, masks)",
        "statistics (index.jsonl)",
        "total",
    ):
        assert part in parts, captured.err
    (archive_line,) = [ln for ln in captured.err.splitlines() if ln.startswith("archive (.tar.gz)")]
    assert archive_line.split()[-1] == f"{archive.stat().st_size / 1e6:.3f}"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["command"][1:] == [
        str(script),
        "--ckpt_dir",
        str(golden.weights),
        "--input_json",
        str(tmp_path / "input.json"),
        "--base_seed",
        "42",
    ]
    # the downloaded archive, unpacked elsewhere, is the same trace
    moved = tmp_path / "download" / "colab_trace.tar.gz"
    moved.parent.mkdir()
    moved.write_bytes(archive.read_bytes())
    unpacked = resolve(moved)
    assert unpacked == tmp_path / "download" / "colab_trace"
    cmp = compare(load_trace(unpacked), case.dir / "e2e_clip_1p.json", points="e2e.*")
    assert cmp.passed and cmp.only_in_b == [], cmp.summary()
    assert mtlib_main(["compare", str(moved), str(case.dir / "e2e_clip_1p.json")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("settings and environment: no difference in what both traces record")


def test_missing_script_and_no_script(tmp_path, capsys):
    assert main(["--trace", str(tmp_path / "t"), "--", "nowhere/generate_multitalk.py"]) == 2
    assert "'nowhere/generate_multitalk.py': no such file" in capsys.readouterr().err
    assert main(["--trace", str(tmp_path / "t")]) == 2
    assert "give the official script after --" in capsys.readouterr().err
