"""`mtlib run`: papermill execution into runs/<id>/, parameters injected, failures named."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _mtlib(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "mtlib", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _notebook(path: Path, *sources: str, params: str = 'config = "tiny"\nrun_dir = ""'):
    cells = [nbformat.v4.new_code_cell(params)]
    cells[0].metadata["tags"] = ["parameters"]
    cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "not-installed-kernel",
        "display_name": "x",
        "language": "python",
    }
    nbformat.write(nb, path)


def test_run_injects_parameters_and_writes_artefacts(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(
        nbs / "00_write.ipynb",
        "from pathlib import Path\nfrom mtlib.config import load_config\n"
        "cfg = load_config(config)\n"
        "Path(run_dir, 'seed.txt').write_text(str(cfg.generation.seed))",
    )
    r = _mtlib(
        "run",
        "--notebooks",
        str(nbs),
        "--runs-dir",
        str(tmp_path / "runs"),
        "-p",
        "generation.seed=123",
    )
    assert r.returncode == 0, r.stderr
    (run,) = list((tmp_path / "runs").iterdir())
    assert run.name.endswith("-tiny")
    assert (run / "seed.txt").read_text() == "123"
    assert yaml.safe_load((run / "config.yaml").read_text())["generation"]["seed"] == 123
    assert json.loads((run / "env.json").read_text())["torch"]
    executed = nbformat.read(run / "00_write.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and f'run_dir = "{run}"' in injected[0].source
    assert not any(
        c.get("outputs") for c in nbformat.read(nbs / "00_write.ipynb", as_version=4).cells
    )
    assert f"results: {run}" in r.stdout


def test_failing_cell_stops_the_run_and_is_named(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "00_ok.ipynb", "x = 1")
    _notebook(nbs / "01_bad.ipynb", "y = 2", "raise ValueError('deliberate failure')")
    _notebook(nbs / "02_never.ipynb", "open(run_dir + '/never.txt', 'w').write('x')")
    r = _mtlib("run", "--notebooks", str(nbs), "--runs-dir", str(tmp_path / "runs"))
    assert r.returncode == 1
    assert "notebook 01_bad.ipynb, cell 3 (`raise ValueError('deliberate failure')`)" in r.stderr
    assert "raised ValueError: deliberate failure" in r.stderr
    (run,) = list((tmp_path / "runs").iterdir())
    assert (run / "01_bad.ipynb").exists()  # the executed notebook is kept
    assert not (run / "never.txt").exists()  # and nothing after it ran


def test_bad_config_refused_before_any_run_dir(tmp_path):
    r = _mtlib("run", "--runs-dir", str(tmp_path / "runs"), "-p", "generation.sampling_steps=-1")
    assert r.returncode == 2
    assert "generation.sampling_steps: must be >= 1, got -1 (int)." in r.stderr
    assert not (tmp_path / "runs").exists()


def test_only_selects_notebooks_and_rejects_unknown(tmp_path):
    r = _mtlib("run", "--only", "99", "--runs-dir", str(tmp_path / "runs"))
    assert r.returncode == 2 and "no notebook starts with 99" in r.stderr


def test_env_command_reports_torch():
    r = _mtlib("env", "--json")
    assert r.returncode == 0
    report = json.loads(r.stdout)
    assert (
        report["torch"] and "dependencies" in report and report["mtlib_imports_accelerators"] == []
    )


def test_official_dir_goes_to_notebook_05_only(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    checkout = tmp_path / "MultiTalk"
    checkout.mkdir()
    (checkout / "generate_multitalk.py").write_text("")
    params = 'config = "tiny"\nrun_dir = ""\nofficial_dir = ""\nofficial_args = ""'
    _notebook(nbs / "00_other.ipynb", "x = 1")
    _notebook(
        nbs / "05_reference.ipynb",
        "from pathlib import Path\nPath(run_dir, 'official.txt').write_text(official_dir + '|' + official_args)",
        params=params,
    )
    r = _mtlib(
        "run",
        "--notebooks",
        str(nbs),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--official-dir",
        str(checkout),
        "--official-args",
        "--sample_steps 20",
    )
    assert r.returncode == 0, r.stderr
    (run,) = list((tmp_path / "runs").iterdir())
    assert (run / "official.txt").read_text() == f"{checkout.resolve()}|--sample_steps 20"
    other = nbformat.read(run / "00_other.ipynb", as_version=4)
    injected = [c for c in other.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert "official_dir = " not in injected[0].source and "config = " in injected[0].source


def test_official_dir_without_script_refused_before_any_run_dir(tmp_path):
    r = _mtlib("run", "--runs-dir", str(tmp_path / "runs"), "--official-dir", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr == (
        f"mtlib run: --official-dir {str(tmp_path)!r}: no generate_multitalk.py there. Fix: give "
        "the root of the MeiGen-AI/MultiTalk checkout (the folder the Colab runs the command in).\n"
    )
    assert not (tmp_path / "runs").exists()
