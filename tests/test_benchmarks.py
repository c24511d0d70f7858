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


def test_step_phases_quick_prints_every_phase() -> None:
    # The script asserts that the three losses agree before timing them.
    rows = _table(_run("step_phases.py", "--quick").splitlines(), "phase")
    assert [r[0] for r in rows] == [
        "model",
        "loss",
        "backward",
        "optimizer",
        "sum of medians",
        "loss forward, tight loop",
    ]
    assert all(float(r[1].removesuffix(" us")) > 0 for r in rows)


def test_host_syncs_table_has_every_case() -> None:
    from benchmarks.host_syncs import CASES

    lines = _run("host_syncs.py").splitlines()
    assert [line[:32].strip() for line in lines[3:]] == list(CASES)


def _table(lines: list[str], first_cell: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts with ``first_cell``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_per_call_quick_prints_every_side_and_ratio() -> None:
    # The script asserts that the six sides compute the same loss before timing them.
    lines = _run("per_call.py", "--quick").splitlines()
    sides = _table(lines, "side")
    assert [r[0] for r in sides] == [
        "hand-written",
        "torch.distributions",
        "rdloss default",
        "rdloss validate_args=False",
        "hand-written + R, D, ELBO",
        "torch.distributions + R, D, ELBO",
    ]
    assert all(float(r[1].removesuffix(" us")) > 0 and int(r[2]) > 0 for r in sides)
    # validate_args=False on the loss and the helpers: no host synchronisation.
    assert [int(r[3]) for r in sides] == [0, 0, 1, 0, 0, 0]
    # Reporting R, D and the ELBO costs the baselines forward operators (two means, the
    # ELBO's add and neg, beta's mul) beyond the loss alone.
    ops = {r[0]: int(r[2]) for r in sides}
    assert ops["hand-written + R, D, ELBO"] >= ops["hand-written"] + 4
    assert ops["torch.distributions + R, D, ELBO"] >= ops["torch.distributions"] + 4
    ratios = _table(lines, "rdloss")
    assert [(r[0], r[1]) for r in ratios] == [
        (side, base)
        for side in ("rdloss default", "rdloss validate_args=False")
        for base in (
            "hand-written",
            "torch.distributions",
            "hand-written + R, D, ELBO",
            "torch.distributions + R, D, ELBO",
        )
    ]
    assert all(float(r[2]) > 0 for r in ratios)


def test_many_groups_quick_prints_every_side() -> None:
    # The script asserts that every side computes VDVAE's rate (plus the same distortion
    # for the loss) before timing them; --groups 4 keeps the smoke run short.
    lines = _run("many_groups.py", "--quick", "--groups", "4").splitlines()
    rows = _table(lines, "rdloss side")
    assert [r[0] for r in rows] == [
        "rate(), default",
        "rate(), validate_args=False",
        "loss, default",
        "loss, validate_args=False",
    ]
    assert all(float(r[4]) > 0 for r in rows)
    # validate_args=False on the loss and the helpers: no host synchronisation.
    assert [int(r[7]) for r in rows if r[0].endswith("validate_args=False")] == [0, 0]
