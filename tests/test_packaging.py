"""Packaging promises: version, typing marker, public names, and CI running the README."""

from __future__ import annotations

import importlib
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
        "import rdloss\n"
        "assert torch.distributions.Distribution._validate_args == before\n"
        "added = set(_KL_REGISTRY) - known\n"
        "foreign = [k for k in added if not any(c.__module__.startswith('rdloss') for c in k)]\n"
        "assert not foreign, foreign\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one() -> None:
    commands = _readme_commands()
    assert len(commands) >= 2
    main_job, test_command = commands[0], commands[1]
    assert "pytest" in test_command
    assert "pytest" not in main_job
    assert test_command in (ROOT / ".ci" / "run").read_text()
