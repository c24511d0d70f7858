"""Packaging promises: version, typing marker, public names, and CI running the README."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rdloss

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_single_sourced() -> None:
    from rdloss._version import __version__

    assert rdloss.__version__ == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+|a\d+|b\d+|rc\d+)?", __version__)


def test_py_typed_marker_ships() -> None:
    assert (Path(rdloss.__file__).parent / "py.typed").exists()


@pytest.mark.parametrize(
    "module",
    [
        "rdloss",
        "rdloss.functional",
        "rdloss.helpers",
        "rdloss.loss",
        "rdloss.marginals",
        "rdloss.objectives",
    ],
)
def test_all_names_exist(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__all__, f"{module} has an empty __all__"
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.__all__ lists missing {name}"


def test_import_has_no_global_side_effects() -> None:
    code = (
        "import torch\n"
        "from torch.distributions.kl import _KL_REGISTRY\n"
        "before, known = torch.distributions.Distribution._validate_args, set(_KL_REGISTRY)\n"
        "import rdloss, rdloss.loss, rdloss.distributions, rdloss.callbacks\n"
        "assert torch.distributions.Distribution._validate_args == before\n"
        "added = set(_KL_REGISTRY) - known\n"
        "foreign = [k for k in added if not any(c.__module__.startswith('rdloss') for c in k)]\n"
        "assert not foreign, foreign\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _readme_commands() -> list[str]:
    """The README's one-line ``bash`` blocks: the two commands for a clone."""
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme_has_two_clone_commands_and_ci_runs_the_test_one() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    main_job, test_command = commands
    assert main_job.startswith("pip install -e ") and "pytest" not in main_job
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text()


def _readme_pypi_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Install\n.*?```bash\n(.+?)\n```", text, re.DOTALL)
    assert block, "README's Install section has no bash block"
    return [line for line in block[1].splitlines() if line and not line.startswith("#")]


def test_readme_pypi_path_installs_from_the_index_not_from_a_checkout() -> None:
    lines = _readme_pypi_block()
    assert lines == [
        "pip install torch --index-url https://download.pytorch.org/whl/cpu",
        'pip install "rdloss[demo]"',
        "rdloss demo",
    ]
    # PyPI renders the README without the repository: every link must be absolute.
    text = (ROOT / "README.md").read_text()
    relative = [t for t in re.findall(r"\]\(([^)]+)\)", text) if not t.startswith("https://")]
    assert relative == []


@pytest.mark.slow
def test_readme_pypi_path_from_a_built_wheel(tmp_path: Path) -> None:
    """The wheel in a fresh venv, used from outside the repository: version, demo, quickstart.

    torch comes from this machine's local 2.13.0 build (the README's CPU-index line does the
    same for a user); everything else is the wheel and its declared dependencies.
    """
    dist, env, elsewhere = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Nothing of the checkout may leak in: no PYTHONPATH (it would also make pip think
    # rdloss is installed already), and the commands run from an unrelated folder.
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = lambda *cmd, **kw: subprocess.run(  # noqa: E731
        [str(c) for c in cmd],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
        **{"env": clean, **kw},
    )
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, ROOT)
    (wheel,) = dist.glob("rdloss-*.whl")
    run(sys.executable, "-m", "venv", env)
    python, rdloss_cmd = env / "bin" / "python", env / "bin" / "rdloss"
    run(python, "-m", "pip", "install", "--quiet", "torch==2.13.0")
    run(python, "-m", "pip", "install", "--quiet", f"{wheel}[plot]")
    assert (
        run(rdloss_cmd, "--version", cwd=elsewhere).stdout.strip() == f"rdloss {rdloss.__version__}"
    )
    demo = run(rdloss_cmd, "demo", "--quick", "--no-plot", cwd=elsewhere)
    assert "wrote results.csv, results.json" in demo.stdout
    assert (elsewhere / "rdloss-output" / "demo-quick" / "results.json").exists()
    quickstart = re.search(
        r"## Quickstart\n.*?```python\n(.+?)\n```", (ROOT / "README.md").read_text(), re.DOTALL
    )
    assert quickstart
    (elsewhere / "quickstart.py").write_text(quickstart[1])
    done = run(python, "quickstart.py", cwd=elsewhere)
    assert "'rate':" in done.stdout and "'distortion':" in done.stdout
    origin = run(python, "-c", "import rdloss; print(rdloss.__file__)", cwd=elsewhere).stdout
    assert str(env) in origin


def test_declared_python_versions_are_the_ones_ci_tests() -> None:
    """pyproject's floor and classifiers span exactly the Pythons that .ci/run's matrix runs.

    The matrix runs the oldest and the newest (3.11, CI's own interpreter, is in between);
    the classifiers must be every minor version from the floor to the newest, no more.
    """
    pyproject = _pyproject()
    floor = re.search(r'^requires-python = ">=3\.(\d+)"$', pyproject, re.MULTILINE)
    assert floor, "requires-python is not of the form >=3.N"
    classifiers = sorted(
        int(m) for m in re.findall(r'"Programming Language :: Python :: 3\.(\d+)"', pyproject)
    )
    matrix = re.findall(r"^bash scripts/python_matrix\.sh ([\d. ]+)$", _ci(), re.MULTILINE)
    assert len(matrix) == 1, f".ci/run should run scripts/python_matrix.sh once: {matrix}"
    tested = sorted(int(v.split(".")[1]) for v in matrix[0].split())
    assert tested[0] == int(floor[1]) == classifiers[0]
    assert tested[-1] == classifiers[-1]
    assert classifiers == list(range(classifiers[0], classifiers[-1] + 1))
    # ruff and mypy check against the floor, so code that needs a newer Python is flagged.
    assert f'target-version = "py3{tested[0]}"' in pyproject
    assert f'python_version = "3.{tested[0]}"' in pyproject


def _ci() -> str:
    return (ROOT / ".ci" / "run").read_text()


def _extras() -> dict[str, set[str]]:
    """pyproject's optional dependencies: extra -> the distribution names it installs."""
    block = re.search(
        r"^\[project\.optional-dependencies\]\n(.*?)^\[", _pyproject(), re.DOTALL | re.MULTILINE
    )
    assert block
    return {
        name: {re.split(r"[<>=\[;]", req)[0] for req in re.findall(r'"([^"]+)"', reqs)}
        for name, reqs in re.findall(r"^(\w+) = \[(.*?)\]$", block[1], re.MULTILINE)
    }


def _pyproject() -> str:
    return (ROOT / "pyproject.toml").read_text()


def test_the_commands_extra_installs_what_the_commands_import() -> None:
    from rdloss.demo import mnist_report

    extras = _extras()
    # matplotlib for every command's figures, zuko for rdloss mnist's MAF models; tqdm is a
    # core dependency.
    assert extras["demo"] == {"matplotlib", "zuko"}
    assert extras["demo"] == extras["plot"] | extras["flows"]
    assert mnist_report.INSTALL_HINT == 'pip install "rdloss[demo]"'
    # Every extra named anywhere in the package exists.
    named = {
        extra
        for path in Path(rdloss.__file__).parent.rglob("*.py")
        for extra in re.findall(r"rdloss\[(\w+)\]", path.read_text())
    }
    assert named and named <= set(extras), named - set(extras)
