"""End-to-end tests of the ``rdloss`` command in a reduced setting."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rdloss.cli import main


def test_demo_quick_writes_every_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["demo", "--quick", "--no-progress", "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "findings" in printed and str(out) in printed
    assert {p.name for p in out.iterdir()} == {
        "results.csv",
        "results.json",
        "rd_plane.png",
        "trajectory.png",
    }
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["dataset"], r["model"], r["objective"]) for r in rows] == [
        ("toy", "table", "elbo"),
        ("toy", "table", "target_rate"),
        *[("digits", "factorized", "beta")] * 4,
        ("digits", "autoregressive", "beta"),
        ("digits", "autoregressive", "target_rate"),
    ]
    for r in rows:
        assert abs(float(r["elbo"]) + float(r["rate"]) + float(r["distortion"])) < 1e-3
    loaded = json.loads((out / "results.json").read_text())
    assert len(loaded["rows"]) == 8 and loaded["command"] == "demo"
    assert "CC BY 4.0" in loaded["attribution"]
    assert (out / "rd_plane.png").read_bytes()[:4] == b"\x89PNG"


def test_toy_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "toy",
            "--steps",
            "30",
            "--target-rate",
            "0.3",
            "--no-progress",
            "--no-plot",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["value"] for r in rows] == [1.0, 0.3]
    assert "cluster masses" in capsys.readouterr().out
    assert not (tmp_path / "rd_plane.png").exists()


def test_sweep_command(tmp_path: Path) -> None:
    code = main(
        [
            "sweep",
            "--beta",
            "0.5",
            "--target-rate",
            "2",
            "--decoder",
            "autoregressive",
            "--marginal",
            "mixture",
            "--epochs",
            "1",
            "--no-progress",
            "--no-plot",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["model"], r["objective"], float(r["value"])) for r in rows] == [
        ("autoregressive", "beta", 0.5),
        ("autoregressive", "target_rate", 2.0),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sweep", "--marginal", "flow"], "invalid choice: 'flow'"),
        (["sweep", "--beta", "-1"], "expected a finite number >= 0"),
        (["sweep", "--epochs", "0"], "expected an integer >= 1"),
        (["toy", "--target-rate", "x"], "expected a number"),
        (["fly"], "invalid choice: 'fly'"),
        ([], "required: COMMAND"),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unwritable_folder_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["toy", "--steps", "1", "--no-progress", "--out", str(blocker / "sub")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rdloss: error: cannot write to output folder") and err.count("\n") == 1


def test_empty_sweep_and_bad_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "--beta", "--out", str(tmp_path), "--no-progress"]) == 1
    assert "nothing to run" in capsys.readouterr().err
    assert main(["sweep", "--device", "tpu9", "--out", str(tmp_path)]) == 1
    assert "--device" in capsys.readouterr().err


def test_help_reads_well(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(word in text for word in ("demo", "toy", "sweep", "Fixing a Broken ELBO"))
    assert main(["sweep", "--help"]) == 0
    assert "--marginal {normal,mixture,vamp}" in capsys.readouterr().out


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "rdloss", "sweep", "--marginal", "nope"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
