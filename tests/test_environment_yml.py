"""environment.yml (conda + pip) stays in step with pyproject.toml: it pins one Python that
pyproject supports, takes every Python package from pyproject through pip, and names only
extras pyproject defines. (conda itself is not reachable from CI: docs/install.md.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_pins_a_supported_python_and_installs_pyproject_extras():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = _pyproject()["project"]
    assert env["channels"] == ["conda-forge"]
    deps = env["dependencies"]
    pythons = [d for d in deps if isinstance(d, str) and d.startswith("python")]
    assert len(pythons) == 1
    m = re.fullmatch(r"python=3\.(\d+)", pythons[0])
    assert m, pythons[0]
    minor = int(m.group(1))
    assert project["requires-python"] == ">=3.10" and 10 <= minor <= 13
    assert f"Programming Language :: Python :: 3.{minor}" in project["classifiers"]
    # the comment says which Python it pins, and it is the pinned one
    assert f"Pins Python 3.{minor}" in (ROOT / "environment.yml").read_text()
    conda_pkgs = [d for d in deps if isinstance(d, str)]
    assert conda_pkgs == [pythons[0], "pip"]  # every Python package comes from pyproject
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert len(pip) == 1
    m = re.fullmatch(r"-e \.\[([a-z0-9,]+)\]", pip[0])
    assert m, pip[0]
    extras = m.group(1).split(",")
    assert set(extras) <= set(project["optional-dependencies"])
    assert extras == ["notebooks", "s3"]  # what `make demo` users get, plus s3:// paths
