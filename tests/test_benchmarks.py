"""Smoke runs of the benchmark scripts: they run, check both sides agree, and print a row each.

Only that: timings are never asserted (the machine's load decides them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return out.stdout


@pytest.mark.slow
def test_training_step_quick_prints_every_model_and_setting() -> None:
    # --quick: B = 32, one thread, eager only; the script asserts that the rdloss and the
    # hand-written steps compute the same loss before timing them.
    lines = _run("training_step.py", "--quick").splitlines()
    rows = [line.split() for line in lines[2:-1]]
    assert {(r[0], r[1]) for r in rows} == {
        (model, setting)
        for model in ("mlp", "conv", "hierarchical")
        for setting in ("default", "validate_args=False")
    }
    assert all(float(r[-2]) > 0 for r in rows)


def test_host_syncs_table_has_every_case() -> None:
    from benchmarks.host_syncs import CASES

    lines = _run("host_syncs.py").splitlines()
    assert [line[:32].strip() for line in lines[3:]] == list(CASES)
