"""What a new user installs and runs: the README's two commands (the demo without test tools,
the tests exactly as CI runs them) and the thread count training picks on a busy machine."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from supsup_cli import threads

ROOT = Path(__file__).resolve().parent.parent
TEST_TOOLS = {"pytest", "pytest-xdist", "hypothesis", "ruff", "moto", "matplotlib", "s3fs"}


def readme_commands() -> list[str]:
    """The bash blocks of the README's set-up section, in order."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_demo_command_installs_no_extras() -> None:
    demo = readme_commands()[0]
    assert "pip install -e . &&" in demo and "[" not in demo.split("&&")[1]
    assert demo.endswith("examples/permuted-mnist.sh")
    base = {Requirement(text).name for text in project()["dependencies"]}
    assert not base & TEST_TOOLS


def test_the_test_command_is_what_ci_runs_and_brings_what_tests_import() -> None:
    tests = readme_commands()[1]
    assert tests == '.venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest -q -n 2'
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()
    extras = project()["optional-dependencies"]
    wanted = {Requirement(text) for text in extras["test"]}
    names = {r.name for r in wanted}
    for requirement in wanted:
        if requirement.name == project()["name"]:  # the extras it names, one level down
            names |= {Requirement(t).name for e in requirement.extras for t in extras[e]}
    assert TEST_TOOLS <= names


def test_training_threads_leave_busy_cores_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.5, 3.0, 3.0))
    assert threads.training_threads(2) == 1  # two cores, both busy: one thread
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert threads.training_threads(2) == 2
    assert threads.training_threads(8) == 2  # never more than the CPUs it may use
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert threads.training_threads(2) is None  # the user's word: torch already follows it


def test_train_task_sets_the_threads_it_picked(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import torch
    from typer.testing import CliRunner

    from supsup_cli.cli import app

    asked: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)  # the test process keeps its own
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    argv = ["train-task", str(tmp_path / "s.zarr"), "--data", "permuted:1", "--batches", "2", "-q"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert asked == [1]
