"""``rdloss multirate`` end to end (``--quick``), its checks, its folder, and a closed pipe."""

from __future__ import annotations

import csv
import fcntl
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rdloss.cli import main
from rdloss.demo import mnist_multirate_report as report
from rdloss.demo.mnist_multirate import SWEEP, beta_grid

ROOT = Path(__file__).resolve().parents[1]
NAMES = [
    "deconv β=0.1",
    "deconv β=0.3",
    "deconv β=1",
    "deconv β=3",
    "deconv Multi-Rate (R, D at β=1)",
    "pixelcnn Multi-Rate (R, D at β=1)",
]


@pytest.mark.slow
def test_quick_run_writes_every_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    # A full run's results in the default folder stay: --quick writes beside them.
    full = tmp_path / "rdloss-output" / "multirate"
    full.mkdir(parents=True)
    (full / "multirate_results.json").write_text("{}")
    # No --no-progress: capsys' streams are not terminals, so one line per model, no bars.
    assert main(["multirate", "--quick", "--seed", "3"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "--quick writes to rdloss-output/multirate-quick/" in printed
    assert [p.name for p in full.iterdir()] == ["multirate_results.json"]
    out = tmp_path / "rdloss-output" / "multirate-quick"
    lines = [line for line in printed.splitlines() if line.startswith("rdloss multirate [")]
    assert [line.split(": ")[0] for line in lines] == [
        f"rdloss multirate [{i}/6] {name}" for i, name in enumerate(NAMES, 1)
    ]
    assert "\x1b[" not in captured.err
    block = printed.split("The Multi-Rate VAE's findings at this scale (--quick: meaningless)\n")
    assert len(block) == 2
    found = [line for line in block[1].splitlines() if line.startswith(("[yes]", "[NO]"))]
    assert [line.split(" ", 2)[1] for line in [f.replace("[NO] ", "[NO]") for f in found]] == [
        "1.",
        "2.",
        "3.",
        "4.",
        "5.",
    ]
    assert {p.name for p in out.iterdir()} == {
        "multirate_results.csv",
        "multirate_results.json",
        "multirate_rd_curve.png",
    }
    rows = list(csv.DictReader((out / "multirate_results.csv").open()))
    grid = list(beta_grid())
    kinds = [(r["decoder"], r["kind"]) for r in rows]
    assert (
        kinds
        == [("deconv", "separate")] * 4 + [("deconv", "curve")] * 16 + [("pixelcnn", "curve")] * 16
    )
    assert [float(r["beta"]) for r in rows] == [*SWEEP, *grid, *grid]
    for r in rows:
        torch.testing.assert_close(
            float(r["elbo"]), -(float(r["rate"]) + float(r["distortion"])), atol=1e-6, rtol=0
        )
    saved = json.loads((out / "multirate_results.json").read_text())
    origin = saved["provenance"]
    import rdloss

    assert (origin["rdloss"], origin["torch"]) == (rdloss.__version__, torch.__version__)
    assert origin["arguments"]["quick"] is True and origin["started_utc"].endswith("Z")
    assert saved["seed"] == 3 and saved["command"] == "multirate"
    assert "--seed 3" in saved["command_line"] and saved["command_line"].endswith("--quick")
    assert saved["train_images"] == 200 and saved["test_images"] == 50
    assert saved["beta_grid"] == grid and "LeCun" in saved["attribution"]
    assert [f["claim"][:2] for f in saved["findings"]] == ["1.", "2.", "3.", "4.", "5."]
    # One IWAE NLL, the PixelCNN's at its best β, and Ĥ is no larger.
    iwae = [r for r in saved["rows"] if r["iwae_nll"] is not None]
    pixel = [r for r in saved["rows"] if r["decoder"] == "pixelcnn"]
    assert len(iwae) == 1 and iwae[0]["elbo"] == max(r["elbo"] for r in pixel)
    assert saved["entropy_estimate"] <= iwae[0]["iwae_nll"]
    assert (out / "multirate_rd_curve.png").read_bytes()[:4] == b"\x89PNG"
    # Each line's R and D are the held-out ones of the table (the curves' at β = 1).
    shown = [*saved["rows"][:4], *(r for r in saved["rows"][4:] if r["beta"] == 1.0)]
    for line, row in zip(lines, shown, strict=True):
        assert f"R = {row['rate']:.4g}, D = {row['distortion']:.4g} nats" in line


def test_a_run_keeps_another_configurations_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = {"command": "multirate", "quick": False, "seed": 0, "epochs": 8, "data": None}
    (tmp_path / "multirate_results.json").write_text(
        json.dumps({"provenance": {"arguments": saved}})
    )
    # Refused at once, before any training, and the file is left as it was.
    assert main(["multirate", "--quick", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rdloss: error: kept the results of a run with other ")
    assert "--quick" in err and "--overwrite" in err and err.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["multirate_results.json"]


def _row(
    decoder: str, kind: str, beta: float, rate: float, d: float, seconds: float = 10.0
) -> report.Row:
    return report.Row(decoder, kind, beta, rate, d, -(rate + d), 1, 0.0, math.nan, seconds)


def _run(deconv_worse: float = 5.0, seconds: float = 10.0) -> list[report.Row]:
    rows = [_row("deconv", "separate", b, 50.0 / b, 60.0 + 10 * b) for b in SWEEP]
    rows += [
        _row("deconv", "curve", b, 50.0 / b, 60.0 + 10 * b + deconv_worse, seconds)
        for b in beta_grid()
    ]
    # PixelCNN: R from 30 nats down to 0.2 at β >= 1; ELBO -99.95 collapsed, -101.75 at R = 12.
    rates = {0.01: 30.0, 0.1: 20.0, 0.3: 12.0, 1.0: 0.2}
    for b in beta_grid():
        rate = next(v for k, v in sorted(rates.items(), reverse=True) if b >= k)
        rows.append(
            _row(
                "pixelcnn", "curve", b, rate, {30.0: 80.0, 20.0: 84.0, 12.0: 89.75}.get(rate, 99.75)
            )
        )
    return rows


def test_findings_thresholds() -> None:
    found = report.findings(_run(), separate_seconds=20.0)
    assert [f.holds for f in found] == [True, True, True, True, True]
    assert "R < 1 nat from β = 1 on" in found[2].detail
    assert "β=0.3, R 12.0, ELBO -101.75, 1.80 nats (1.8%) below the best" in found[3].detail
    # 5.1 nats worse at every β, a run of more than half the four's time: both fail.
    found = report.findings(_run(deconv_worse=5.1, seconds=10.1), separate_seconds=20.0)
    assert [f.holds for f in found] == [False, False, True, True, True]
    # Being better than the β-VAEs is no failure of check 1.
    assert report.findings(_run(deconv_worse=-9.0), separate_seconds=20.0)[0].holds


def test_findings_collapse_same_elbo_and_order() -> None:
    rows = _run()
    grid = beta_grid()
    # No collapse at the top of the range: check 3 fails and names it.
    top = next(
        i
        for i, r in enumerate(rows)
        if (r.decoder, r.kind, r.beta) == ("pixelcnn", "curve", grid[-1])
    )
    rows[top] = _row("pixelcnn", "curve", grid[-1], 1.0, 99.75)
    found = report.findings(rows, separate_seconds=20.0)
    assert found[2].holds is False and "R >= 1 nat up to β = 10" in found[2].detail
    assert found[4].holds is False  # R rose by 0.8 nats from the previous β
    # The point at R >= 10 pays more than 2% of ELBO: check 4 fails.
    rows = [
        r._replace(distortion=r.distortion + 1.0, elbo=r.elbo - 1.0) if r.rate == 12.0 else r
        for r in _run()
    ]
    assert report.findings(rows, separate_seconds=20.0)[3].holds is False
    # D falls by 0.5 nats between neighbouring β: within the tolerance.
    rows = _run()
    rows[-1] = rows[-1]._replace(distortion=99.25)
    assert report.findings(rows, separate_seconds=20.0)[4].holds is True
    rows[-1] = rows[-1]._replace(distortion=99.125)
    found = report.findings(rows, separate_seconds=20.0)[4]
    assert found.holds is False
    # The detail names where: the last step of the PixelCNN curve, β 5.34 to 10.
    assert found.detail == (
        "deconv: R never rises, D never falls; "
        "pixelcnn: R never rises, largest fall of D 0.62 (β 5.34 to 10)"
    )


def test_collapse_point() -> None:
    curve = [
        _row("pixelcnn", "curve", b, r, 90.0)
        for b, r in [(0.1, 5.0), (1.0, 0.5), (3.0, 2.0), (10.0, 0.1)]
    ]
    assert report.collapse_point(curve) == curve[3]  # R rises again at β = 3
    assert report.collapse_point(curve[:2]) == curve[1]
    assert report.collapse_point(curve[:1]) is None


def test_help_names_the_command_and_its_options() -> None:
    top = subprocess.run(
        [sys.executable, "-m", "rdloss", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert top.returncode == 0 and "multirate" in top.stdout
    done = subprocess.run(
        [sys.executable, "-m", "rdloss", "multirate", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0
    for option in ("--epochs", "--quick", "--data", "--device", "--overwrite", "--iwae-samples"):
        assert option in done.stdout


def test_a_pipe_closed_early_ends_without_a_traceback(tmp_path: Path) -> None:
    # `rdloss demo --quick | head -3`: the reader takes three lines and leaves.
    command = [sys.executable, "-m", "rdloss", "demo", "--quick", "--no-plot"]
    with subprocess.Popen(
        [*command, "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        head = [process.stdout.readline() for _ in range(3)]
        process.stdout.close()
        err = process.stderr.read().decode()
        code = process.wait(timeout=300)
    assert all(line.startswith(b"rdloss demo [") for line in head)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception" not in err
    assert code == 1


@pytest.mark.slow
def test_a_pipe_closed_at_the_table_keeps_the_results(tmp_path: Path) -> None:
    # `rdloss multirate | head -40`: the reader leaves once the table starts; the run's
    # files are written before anything of the table is printed.
    out = tmp_path / "out"
    command = [sys.executable, "-m", "rdloss", "multirate", "--quick", "--no-plot"]
    with subprocess.Popen(
        [*command, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        # The smallest pipe Linux allows: the table (several kB) cannot all be buffered
        # before this reader leaves, so the run meets the closed pipe while printing it.
        if hasattr(fcntl, "F_SETPIPE_SZ"):
            fcntl.fcntl(process.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
        line = process.stdout.readline()
        while line.startswith(b"rdloss multirate ["):  # one line per trained model
            line = process.stdout.readline()
        process.stdout.close()
        err = process.stderr.read().decode()
        code = process.wait(timeout=600)
    assert line.strip(), "the table's first line"
    # 1 when the pipe closed under the printing, 0 if it all fitted in the pipe first.
    assert "Traceback" not in err and code in (0, 1)
    saved = json.loads((out / "multirate_results.json").read_text(encoding="utf-8"))
    assert saved["command"] == "multirate" and len(saved["rows"]) > 0
    assert (out / "multirate_results.csv").exists()


def test_the_findings_link_a_section_of_the_multirate_page() -> None:
    # PAGE's anchor is the slug mkdocs gives a heading of docs/multirate_mnist.md.
    page, anchor = report.PAGE.split("#")
    assert page == "https://rdloss.github.io/rdloss/multirate_mnist/"
    text = (ROOT / "docs" / "multirate_mnist.md").read_text(encoding="utf-8")
    slugs = {
        "-".join(line.lstrip("#").strip().lower().split())
        for line in text.splitlines()
        if line.startswith("## ")
    }
    assert anchor in slugs
    found = report.findings(_run(deconv_worse=6.0), separate_seconds=20.0)
    assert f"see {report.PAGE}" in report.format_findings(found)


def test_figure_labels_few_points_and_ties_each_beta_vae_to_the_curve() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rdloss.plot import rd_curve

    rows = _run()
    for decoder, expected in [
        ("deconv", {"β=0.01", "β=10", *(f"β={b:g}" for b in SWEEP)}),
        ("pixelcnn", {"β=0.01", "β=0.1", "β=1", "β=10"}),
    ]:
        curve = [(r.beta, r.rate, r.distortion) for r in rows if r[:2] == (decoder, "curve")]
        separate = [(r.beta, r.rate, r.distortion) for r in rows if r[:2] == (decoder, "separate")]
        ax = rd_curve(curve, separate=separate or None, entropy=100.0)
        report._tidy_labels(ax, curve, separate)
        labels = [t.get_text() for t in ax.texts if t.get_text().startswith("β=")]
        assert sorted(labels) == sorted(expected)
        ties = [line.get_xydata().tolist() for line in ax.lines if line.get_linestyle() == ":"]
        at = {b: [r, d] for b, r, d in curve}
        assert ties == [[[r, d], at[b]] for b, r, d in separate]
        plt.close(ax.figure)


def test_figure_is_one_column_at_the_docs_width(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    report.save_figure(_run(), 99.0, lambda name: tmp_path / name)
    with Image.open(tmp_path / "multirate_rd_curve.png") as image:
        # Shown about 1:1 in the docs' content column (~700 px), so 8.5-pt labels stay legible.
        assert image.size == (720, 1000)
