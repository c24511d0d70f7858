"""End-to-end tests of the ``rdloss`` command in a reduced setting."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _catalogue import Entry, expect_named_error

import rdloss
from rdloss.cli import main
from rdloss.cli import main as cli_main


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
    # Provenance: what produced the numbers.

    import rdloss

    origin = loaded["provenance"]
    assert (origin["rdloss"], origin["torch"]) == (rdloss.__version__, torch.__version__)
    assert origin["arguments"]["seed"] == 0 and origin["arguments"]["out"] == str(out)
    assert origin["started_utc"].endswith("Z")
    # H is exact for the toy rows and only estimated for the digits rows: two columns.
    assert [bool(r["entropy"]) for r in rows] == [True] * 2 + [False] * 6
    assert [bool(r["entropy_upper"]) for r in rows] == [False] * 2 + [True] * 6
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


def test_version_and_bare_command_print_and_exit_0(capsys: pytest.CaptureFixture[str]) -> None:

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rdloss {rdloss.__version__}"
    assert main([]) == 0
    assert capsys.readouterr().out.startswith("usage: rdloss [-h] [--version] COMMAND")


def test_unknown_option_of_a_command_shows_that_commands_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: rdloss demo [-h]") and "--toy-steps" in err
    assert err.rstrip().endswith("rdloss demo: error: unrecognized arguments: --bogus")


def test_help_and_version_do_not_import_torch() -> None:
    code = (
        "import contextlib, io, sys\n"
        "from rdloss.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    codes = [main(['--help']), main(['--version']), main([]), main(['demo', '--help'])]\n"
        "print(codes, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[0,", "0,", "0,", "0]", "False"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "meta"], "rdloss: error: --device meta holds no data"),
        (["--device", "mps"], "rdloss: error: --device mps is not available here: "),
        (["--device", "cuda:0"], "rdloss: error: --device cuda:0 is not available here: "),
    ],
)
def test_devices_that_cannot_train_are_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    if argv[1].startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["sweep", *argv, "--epochs", "1", "--beta", "1", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_diverging_learning_rate_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["toy", "--lr", "1e308", "--steps", "5", "--no-plot", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == (
        "rdloss: error: training diverged at step 1 of 5: non-finite parameters with "
        "lr=1e+308; try a smaller --lr\n"
    )


def test_threads_beyond_the_cpu_count_are_capped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    from rdloss.cli import _cpu_count

    before = torch.get_num_threads()
    argv = ["toy", "--threads", "100000", "--steps", "2", "--no-plot", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"--threads 100000 capped at {_cpu_count()}, the CPU count" in out
    assert (
        json.loads((tmp_path / "results.json").read_text())["provenance"]["arguments"]["threads"]
        == _cpu_count()
    )
    assert torch.get_num_threads() == before


def test_each_command_has_its_own_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["toy", "--steps", "2", "--no-plot"]) == 0
    assert main(["sweep", "--beta", "1", "--epochs", "1", "--no-plot"]) == 0
    assert sorted(p.name for p in (tmp_path / "rdloss-output").iterdir()) == ["sweep", "toy"]
    assert (tmp_path / "rdloss-output" / "toy" / "results.json").exists()


def _toy(out: Path, *extra: str) -> int:
    return main(["toy", "--steps", "3", "--no-progress", "--out", str(out), *extra])


def test_interrupted_plotting_leaves_the_previous_run_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rdloss.demo import figures

    assert _toy(tmp_path) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"results.csv", "results.json", "rd_plane.png", "trajectory.png"}

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while matplotlib draws

    monkeypatch.setattr(figures, "save_figures", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _toy(tmp_path, "--seed", "1", "--overwrite")
    # Not the new numbers beside the old plots: the old files, byte for byte, and no debris.
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_run_without_plots_removes_the_previous_plots(tmp_path: Path) -> None:
    assert _toy(tmp_path) == 0
    assert (tmp_path / "rd_plane.png").exists()
    assert _toy(tmp_path, "--no-plot") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.json"]


def test_no_escape_codes_outside_a_terminal(tmp_path: Path) -> None:
    argv = ["demo", "--quick", "--no-plot", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "rdloss", *argv], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\x1b[" not in done.stderr + done.stdout and "\r" not in done.stderr


def test_every_no_says_why_and_where_to_read_more(capsys: pytest.CaptureFixture[str]) -> None:
    from rdloss.demo import results

    found = [
        results.Finding("a claim", True, "numbers"),
        results.Finding("b claim", False, "numbers", "it is too small here", "mnist"),
        results.Finding("c claim", False, "numbers", "the runs were short"),
    ]
    lines = results.format_findings(found).splitlines()
    assert lines[0] == "[yes] a claim: numbers"
    assert lines[2] == (
        "      why: it is too small here; see https://rdloss.github.io/rdloss/reproducing/#mnist"
    )
    assert lines[4].endswith(
        "the runs were short; see https://rdloss.github.io/rdloss/reproducing/"
    )
    # Every claim the demo can make has its reason written in advance.
    assert all(f.why_not for f in results.findings(_all_rows()))


def _all_rows() -> list:
    from rdloss.demo import results

    nan = math.nan
    toy = [
        results.Row(
            "toy", "table", "elbo", 1.0, 0.0, 3.0, -3.0, 0.0, 0.0, 3.0, nan, 1, 1.0, nan, 1
        ),
        results.Row(
            "toy", "table", "target_rate", 0.5, 0.5, 2.5, -3.0, 0.5, 0.5, 3.0, nan, 2, nan, 0.5, 2
        ),
    ]
    digits = [
        results.Row("digits", m, o, v, 1.0, 9.0, -10.0, nan, nan, nan, 10.0, 4, nan, nan, None)
        for m, o, v in [
            ("factorized", "beta", 1.0),
            ("factorized", "beta", 0.1),
            ("autoregressive", "beta", 1.0),
            ("autoregressive", "target_rate", 6.0),
        ]
    ]
    return toy + digits


# --- bad inputs: command line (exit code and the message on stderr) -----------------------
# The catalogue's part for this module (tests/_catalogue.py); docs/errors.md lists its keys.


class CommandError(Exception):
    """The ``rdloss`` command exited non-zero: ``exit <code>: <last stderr line>``."""


def _cli(*argv: str) -> int:
    """Run the command in-process; raise `CommandError` unless it exits 0."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(list(argv))
    if code != 0:
        lines = err.getvalue().strip().splitlines() or [""]
        raise CommandError(f"exit {code}: {lines[-1]}")
    return code


def _a_file() -> Path:
    """A plain file in the working directory (the test runs in its own tmp_path)."""
    blocker = Path("not-a-folder")
    blocker.write_text("")
    return blocker


BAD_INPUTS: dict[str, Entry] = {
    "cli: unknown command": (
        lambda: _cli("fly"),
        CommandError,
        r"exit 2: .*argument COMMAND: invalid choice: 'fly'",
    ),
    "cli: unknown marginal": (
        lambda: _cli("sweep", "--marginal", "flow"),
        CommandError,
        r"exit 2: .*argument --marginal: invalid choice: 'flow'",
    ),
    "cli: unknown decoder": (
        lambda: _cli("sweep", "--decoder", "pixelcnn"),
        CommandError,
        r"exit 2: .*argument --decoder: invalid choice: 'pixelcnn'",
    ),
    "cli: negative beta": (
        lambda: _cli("sweep", "--beta", "-1"),
        CommandError,
        r"exit 2: .*argument --beta: expected a finite number >= 0, got '-1'",
    ),
    "cli: zero epochs": (
        lambda: _cli("sweep", "--epochs", "0"),
        CommandError,
        r"exit 2: .*argument --epochs: expected an integer >= 1, got '0'",
    ),
    "cli: fractional latent size": (
        lambda: _cli("demo", "--latent-dim", "1.5"),
        CommandError,
        r"exit 2: .*argument --latent-dim: expected an integer, got '1.5'",
    ),
    "cli: zero threads": (
        lambda: _cli("demo", "--threads", "0"),
        CommandError,
        r"exit 2: .*argument --threads: expected an integer >= 1, got '0'",
    ),
    "cli: target rate given as text": (
        lambda: _cli("toy", "--target-rate", "x"),
        CommandError,
        r"exit 2: .*argument --target-rate: expected a number, got 'x'",
    ),
    "cli: negative learning rate": (
        lambda: _cli("toy", "--lr", "-1"),
        CommandError,
        r"exit 2: .*argument --lr: expected a finite number > 0, got '-1'",
    ),
    "cli: NaN learning rate": (
        lambda: _cli("toy", "--lr", "nan"),
        CommandError,
        r"exit 2: .*argument --lr: expected a finite number > 0, got 'nan'",
    ),
    "cli: seed beyond 64 bits": (
        lambda: _cli("toy", "--seed", str(2**64)),
        CommandError,
        r"exit 2: .*argument --seed: expected an integer in \[0, 2\*\*64\), "
        r"got '18446744073709551616'",
    ),
    "cli: unknown device": (
        lambda: _cli("sweep", "--device", "tpu9"),
        CommandError,
        r"exit 1: rdloss: error: unknown --device 'tpu9'; try cpu or cuda",
    ),
    "cli: meta device": (
        lambda: _cli("sweep", "--device", "meta"),
        CommandError,
        r"exit 1: rdloss: error: --device meta holds no data; use a device that computes",
    ),
    "cli: device torch was built without": (
        lambda: _cli("sweep", "--device", "mps"),
        CommandError,
        r"exit 1: rdloss: error: --device mps is not available here: ",
    ),
    "cli: learning rate that diverges": (
        lambda: _cli("toy", "--lr", "1e308", "--steps", "5"),
        CommandError,
        r"exit 1: rdloss: error: training diverged at step 1 of 5: non-finite parameters "
        r"with lr=1e\+308; try a smaller --lr",
    ),
    "cli: output folder inside a file": (
        lambda: _cli("toy", "--out", str(_a_file() / "sub")),
        CommandError,
        r"exit 1: rdloss: error: cannot write to output folder .*sub",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_named_error(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the command's output folder, if it ever got that far
    expect_named_error(BAD_INPUTS[case])


# --- outputs are never lost -----------------------------------------------------------------


def test_a_quick_run_keeps_the_full_runs_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    full = tmp_path / "rdloss-output" / "demo"
    full.mkdir(parents=True)
    (full / "results.json").write_text('{"provenance": {"arguments": {"command": "demo"}}}')
    assert main(["demo", "--quick", "--no-progress", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "rdloss: note: --quick writes to rdloss-output/demo-quick/; the full run's results "
        "in rdloss-output/demo/ stay\n"
    )
    assert "to rdloss-output/demo-quick/ in" in out
    assert [p.name for p in full.iterdir()] == ["results.json"]  # untouched
    assert (tmp_path / "rdloss-output" / "demo-quick" / "results.csv").exists()
    # A smoke run's numbers mean nothing: another one replaces them without --overwrite.
    assert main(["demo", "--quick", "--no-progress", "--no-plot", "--seed", "1"]) == 0


def test_a_run_with_other_arguments_keeps_the_results_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _toy(tmp_path, "--no-plot") == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    # Other numbers-deciding arguments (or another command): refused before any training.
    for extra in (["--seed", "1"], ["--target-rate", "0.3", "--lr", "0.02"]):
        assert _toy(tmp_path, *extra) == 1
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    argv = ["sweep", "--beta", "1", "--epochs", "1", "--no-progress", "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    tail = f" in {tmp_path}/: pass --overwrite to replace them, or --out DIR to write elsewhere"
    assert err == [
        "rdloss: error: kept the results of a run with other --seed" + tail,
        "rdloss: error: kept the results of a run with other --lr, --target-rate" + tail,
        "rdloss: error: kept the results of rdloss toy" + tail,
    ]
    # What only changes how the run reports may differ; --overwrite replaces.
    assert _toy(tmp_path, "--threads", "2") == 0
    assert _toy(tmp_path, "--seed", "1", "--overwrite") == 0
    saved = json.loads((tmp_path / "results.json").read_text())["provenance"]["arguments"]
    assert saved["seed"] == 1
    (tmp_path / "results.json").write_text("not json")
    assert _toy(tmp_path) == 1
    assert "kept a results.json that is not rdloss's in" in capsys.readouterr().err


# --- progress everywhere --------------------------------------------------------------------


class _Stream:
    """A text stream that is not a terminal (a log file, a pipe)."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_modes() -> None:
    from rdloss.demo.progress import modes

    term, log = _Stream(True), _Stream(False)
    assert modes(False, stdout=term, stderr=term) == (True, False)  # bars only
    assert modes(False, stdout=log, stderr=term) == (True, True)  # rdloss mnist > log
    assert modes(False, stdout=log, stderr=log) == (False, True)  # nohup, CI
    assert modes(True, stdout=log, stderr=log) == (False, False)  # --no-progress


def test_off_a_terminal_each_model_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # capsys' streams are not terminals, as in `rdloss demo > log`.
    assert not sys.stdout.isatty() and not sys.stderr.isatty()
    assert main(["demo", "--quick", "--no-plot", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if line.startswith("rdloss demo [")]
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(lines) == len(rows) == 8
    names = [
        "toy elbo",
        "toy target_rate sigma=0.5",
        *[f"digits factorized beta={b}" for b in ("0.1", "0.3", "1", "3")],
        "digits autoregressive beta=1",
        "digits autoregressive target_rate=6",
    ]
    for index, (line, name, row) in enumerate(zip(lines, names, rows, strict=True), 1):
        head, numbers = line.split(": ", 1)
        assert head == f"rdloss demo [{index}/8] {name}"
        seconds, rate, distortion = numbers.split(", ")
        assert seconds.endswith(" s") and int(seconds[:-2]) >= 0
        assert float(rate.removeprefix("R = ")) == pytest.approx(float(row["rate"]), rel=1e-3)
        assert distortion.endswith(" nats")
        got = float(distortion.removeprefix("D = ").removesuffix(" nats"))
        assert got == pytest.approx(float(row["distortion"]), rel=1e-3)
    assert "\x1b[" not in captured.err and "\r" not in captured.err  # and no bars
    assert main(["demo", "--quick", "--no-plot", "--no-progress", "--out", str(tmp_path)]) == 0
    assert "rdloss demo [" not in capsys.readouterr().out


def test_mnist_help_agrees_on_threads_and_hints_are_quoted() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rdloss", "mnist", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "Uses 2 threads" in done.stdout and "(default: 2)" in done.stdout
    from rdloss.demo import demo_cli, mnist_cli

    for module in (demo_cli, mnist_cli):
        source = Path(module.__file__ or "").read_text()
        assert "pip install rdloss[" not in source and 'pip install "rdloss[' in source
