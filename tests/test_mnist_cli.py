"""``rdloss mnist`` end to end: ``--quick`` on the shipped digits, ``--data`` and its errors."""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rdloss.cli import main
from rdloss.demo import mnist_report
from rdloss.demo.mnist import MNISTSpec, default_specs
from rdloss.demo.results import format_findings

FAMILIES = [
    ("deconv", "normal", "beta", 1.0),
    ("deconv", "vamp", "beta", 1.0),
    ("deconv", "maf", "beta", 1.0),
    ("pixelcnn", "normal", "beta", 1.0),
    ("pixelcnn", "vamp", "beta", 1.0),
    ("pixelcnn", "maf", "beta", 1.0),
    ("pixelcnn", "normal", "target_rate", 10.0),
    ("pixelcnn", "normal", "beta", 0.5),
    ("deconv", "normal", "beta", 0.1),
    ("deconv", "normal", "beta", 0.3),
    ("deconv", "normal", "beta", 3.0),
]


@pytest.mark.slow
def test_quick_run_writes_every_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    # No --no-progress: capsys' streams are not terminals, so one line per model, no bars.
    assert main(["mnist", "--quick", "--seed", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    lines = [line for line in printed.splitlines() if line.startswith("rdloss mnist [")]
    names = [MNISTSpec(*family).name for family in FAMILIES]
    assert [line.split(": ")[0] for line in lines] == [
        f"rdloss mnist [{i}/11] {name}" for i, name in enumerate(names, 1)
    ]
    assert "\x1b[" not in captured.err
    assert "The paper's findings at this scale (--quick: meaningless)" in printed
    assert printed.count("[yes]") + printed.count("[NO]") == 6
    assert {p.name for p in out.iterdir()} == {
        "mnist_results.csv",
        "mnist_results.json",
        "mnist_rd_plane.png",
        "mnist_trajectory.png",
    }
    rows = list(csv.DictReader((out / "mnist_results.csv").open()))
    got = [(r["decoder"], r["marginal"], r["objective"], float(r["value"])) for r in rows]
    assert got == FAMILIES
    for r in rows:
        torch.testing.assert_close(
            float(r["elbo"]), -(float(r["rate"]) + float(r["distortion"])), atol=1e-6, rtol=0
        )
    report = json.loads((out / "mnist_results.json").read_text())
    assert report["seed"] == 3 and report["arguments"]["quick"] is True
    assert set(report["versions"]) >= {"rdloss", "torch", "python"}
    assert report["train_images"] == 200 and report["test_images"] == 50
    assert "LeCun" in report["attribution"] and len(report["findings"]) == 6
    # One IWAE NLL, for the model with the best ELBO, and it defines the entropy estimate.
    iwae = [r for r in report["rows"] if r["iwae_nll"] is not None]
    assert len(iwae) == 1 and iwae[0]["elbo"] == max(r["elbo"] for r in report["rows"])
    assert report["entropy_estimate"] <= iwae[0]["iwae_nll"]
    assert (out / "mnist_rd_plane.png").read_bytes()[:4] == b"\x89PNG"
    # Each line's R and D are the held-out ones of the table.
    for line, row in zip(lines, report["rows"], strict=True):
        assert f"R = {row['rate']:.4g}, D = {row['distortion']:.4g} nats" in line


def _idx_folder(root: Path, n_train: int, n_test: int) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for name, n in (("train-images-idx3-ubyte", n_train), ("t10k-images-idx3-ubyte", n_test)):
        pixels = torch.randint(0, 256, (n, 784), generator=gen, dtype=torch.uint8)
        (raw / name).write_bytes(
            struct.pack(">IIII", 0x803, n, 28, 28) + bytes(pixels.flatten().tolist())
        )


@pytest.mark.slow
def test_data_option_reads_torchvision_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _idx_folder(tmp_path / "tv", 8, 4)
    out = tmp_path / "run"
    out.mkdir()
    # A previous run's plot and another command's file share the folder.
    (out / "mnist_rd_plane.png").write_bytes(b"old")
    (out / "results.csv").write_text("rdloss demo's\n")
    args = ["mnist", "--data", str(tmp_path / "tv"), "--epochs", "1", "--iwae-samples", "2"]
    assert main([*args, "--latent-dim", "2", "--no-progress", "--no-plot", "--out", str(out)]) == 0
    report = json.loads((out / "mnist_results.json").read_text())
    assert report["train_images"] == 8 and report["test_images"] == 4
    assert "IDX" in report["data"] and "8 train / 4 test" in capsys.readouterr().out
    # --no-plot removes the stale plot, keeps the other command's file, leaves no partials.
    assert sorted(p.name for p in out.iterdir()) == [
        "mnist_results.csv",
        "mnist_results.json",
        "results.csv",
    ]


def _bad_amat(folder: Path) -> None:
    (folder / "binarized_mnist_train.amat").write_text("0 1\n")
    (folder / "binarized_mnist_test.amat").write_text("0 1\n")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: None, "found neither binarized_mnist_train.amat"),
        (_bad_amat, "line 1 has 2 values"),
    ],
)
def test_bad_data_is_one_line_exit_1(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], None],
    message: str,
) -> None:
    make(tmp_path)
    code = main(["mnist", "--data", str(tmp_path), "--no-progress", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("rdloss: error: ") and message in err
    assert err.count("\n") == 1


def test_python_m_rdloss_mnist_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rdloss", "mnist", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "--target-rate" in done.stdout and "--data" in done.stdout


def test_default_specs_cover_the_grid() -> None:
    specs = default_specs(target_rate=10.0, betas=(0.1, 0.3, 1.0, 3.0))
    assert [tuple(s) for s in specs] == FAMILIES
    assert MNISTSpec("pixelcnn", "vamp", "beta", 1.0).code == "-+v"


def _row(
    decoder: str, marginal: str, objective: str, value: float, rate: float, d: float
) -> mnist_report.Row:
    return mnist_report.Row(
        "", decoder, marginal, objective, value, rate, d, -(rate + d), 0.0, 1, float("nan"), 0.0
    )


def test_findings_thresholds() -> None:
    rows = [
        _row("deconv", "normal", "beta", 1.0, 20.0, 100.0),
        _row("pixelcnn", "normal", "beta", 1.0, 4.9, 100.0),  # 24.5% of 20: collapsed
        _row("pixelcnn", "normal", "target_rate", 10.0, 10.9, 96.0),  # within 10%, ELBO 2% worse
        _row("pixelcnn", "normal", "beta", 0.5, 5.0, 101.0),  # ELBO -106.0: within 2%
        _row("deconv", "normal", "beta", 0.1, 80.0, 60.0),
        _row("deconv", "normal", "beta", 3.0, 5.0, 130.0),
    ]
    found = mnist_report.findings(rows)
    assert [f.holds for f in found] == [True, True, True, True]
    rows[1] = _row("pixelcnn", "normal", "beta", 1.0, 5.1, 100.0)  # 25.5%: not collapsed
    rows[2] = _row("pixelcnn", "normal", "target_rate", 10.0, 11.1, 96.0)  # off target
    rows[5] = _row("deconv", "normal", "beta", 3.0, 5.0, 90.0)  # D falls: not monotone
    assert [f.holds for f in mnist_report.findings(rows)] == [False, False, True, False]


def test_a_run_keeps_a_longer_runs_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    full = tmp_path / "rdloss-output" / "mnist"
    full.mkdir(parents=True)
    saved = {"command": "mnist", "epochs": 8, "quick": False, "seed": 0, "data": None}
    (full / "mnist_results.json").write_text(json.dumps({"arguments": saved}))
    # Into the full run's folder: refused at once, before any training.
    assert main(["mnist", "--quick", "--out", str(full)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rdloss: error: kept the results of a run with other --iwae-samples")
    assert "--quick" in err and "--overwrite" in err and err.count("\n") == 1
    assert [p.name for p in full.iterdir()] == ["mnist_results.json"]


def test_without_zuko_the_maf_models_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    from rdloss.demo.mnist_cli import runnable

    specs = default_specs(target_rate=10.0, betas=(0.1, 0.3, 1.0, 3.0))
    assert runnable(specs) == (specs, [])  # zuko is installed with the test extra
    monkeypatch.setitem(sys.modules, "zuko", None)  # as if it were not installed
    ok, skipped = runnable(specs)
    assert [tuple(s) for s in ok] == [f for f in FAMILIES if f[1] != "maf"]
    assert skipped == [
        mnist_report.Skipped("--+ β=1", "zuko"),
        mnist_report.Skipped("-++ β=1", "zuko"),
    ]


def test_findings_say_which_models_did_not_run() -> None:
    pairs = [
        _row("deconv", "normal", "beta", 1.0, 20.0, 100.0),
        _row("pixelcnn", "normal", "beta", 1.0, 1.0, 110.0),
        _row("deconv", "vamp", "beta", 1.0, 22.0, 98.0),
        _row("pixelcnn", "vamp", "beta", 1.0, 2.0, 108.0),
    ]
    skipped = [mnist_report.Skipped("--+ β=1", "zuko"), mnist_report.Skipped("-++ β=1", "zuko")]
    found = mnist_report.findings(pairs, skipped=skipped)
    assert [f.claim for f in found] == [
        "every model of the grid ran",
        "1. β = 1, N(0, I): the PixelCNN's rate collapses (< 25% of the deconv's, which keeps "
        ">= 10 nats)",
        "1. β = 1, every marginal: PixelCNN R < 25% of the deconv's",
    ]
    # Both present marginals collapse, but "every marginal" is not shown with one missing.
    assert [f.holds for f in found] == [False, True, None]
    assert found[0].detail == "2 of 6 not run (--+ β=1, -++ β=1): zuko missing"
    assert found[2].detail.startswith("2/3: ") and found[2].detail.endswith("; not run: maf")
    text = format_findings(found)
    assert text.splitlines()[1].startswith('      why: pip install "rdloss[demo]" installs')
    assert "[n/a] 1. β = 1, every marginal" in text
    # A present marginal that breaks the claim still makes it [NO].
    pairs[3] = _row("pixelcnn", "vamp", "beta", 1.0, 6.0, 104.0)
    assert [f.holds for f in mnist_report.findings(pairs, skipped=skipped)] == [False, True, False]
    # All three marginals present and nothing skipped: no "grid" finding, and the claim holds.
    full = [
        *pairs[:3],
        _row("pixelcnn", "vamp", "beta", 1.0, 2.0, 108.0),
        _row("deconv", "maf", "beta", 1.0, 21.0, 99.0),
        _row("pixelcnn", "maf", "beta", 1.0, 0.5, 111.0),
    ]
    found = mnist_report.findings(full)
    assert [f.holds for f in found] == [True, True]
    assert found[1].detail.startswith("3/3: ") and "not run" not in found[1].detail
    with pytest.raises(TypeError, match="skipped: expected Skipped entries, got tuple"):
        mnist_report.findings(full, skipped=[("--+ β=1", "zuko")])  # type: ignore[list-item]


def test_a_run_without_zuko_says_so_in_its_findings_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rdloss.demo import mnist

    # Two models of the grid, the second needing zuko, on 8 random IDX images: seconds.
    grid = [MNISTSpec("deconv", "normal", "beta", 1.0), MNISTSpec("deconv", "maf", "beta", 1.0)]
    monkeypatch.setattr(mnist, "default_specs", lambda **_: grid)
    monkeypatch.setitem(sys.modules, "zuko", None)
    _idx_folder(tmp_path / "tv", 8, 4)
    out = tmp_path / "run"
    args = ["mnist", "--data", str(tmp_path / "tv"), "--epochs", "1", "--iwae-samples", "2"]
    assert main([*args, "--latent-dim", "2", "--no-progress", "--no-plot", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith('(skipped --+ β=1: zuko missing; pip install "rdloss[demo]")\n')
    assert "[NO]  every model of the grid ran: 1 of 2 not run (--+ β=1): zuko missing" in printed
    assert 'why: pip install "rdloss[demo]" installs what they need' in printed
    report = json.loads((out / "mnist_results.json").read_text())
    assert report["skipped"] == [{"model": "--+ β=1", "package": "zuko"}]
    assert report["findings"][0]["claim"] == "every model of the grid ran"
    assert report["findings"][0]["holds"] is False
    assert [r["marginal"] for r in report["rows"]] == ["normal"]
