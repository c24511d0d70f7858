"""Crash and resume: SIGKILL a checkpointing run mid-write, resume it, get bitwise the same run.

The training script is `tests/resume_train.py` (float64, CPU, one thread; a learnable
`GaussianMixture` marginal; `RateController`, `GECO` and `Beta` objectives driven by
schedules, trained side by side; torchmetrics diagnostics updated every step). The
uninterrupted reference runs in this process; the killed run and the resumed run are fresh
interpreters, so nothing survives the crash except the files on disk.
"""

from __future__ import annotations

import importlib.util
import io
import json
import pickle
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from rdloss.diagnostics import MutualInformationBounds

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

SCRIPT = Path(__file__).with_name("resume_train.py")
STEPS, EVERY, STALL = 40, 8, 16  # the kill comes while writing the step-16 checkpoint
LAST_GOOD = STALL - EVERY
TIMEOUT = 300.0  # a watchdog for a hung child, not a performance threshold


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_rdloss_resume_train", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def _restore_globals() -> Iterator[None]:
    # The in-process reference run sets one thread and reseeds python's random.
    threads, state = torch.get_num_threads(), random.getstate()
    yield
    torch.set_num_threads(threads)
    random.setstate(state)


OBJECTIVES = ("controller", "geco", "beta")


def _args(run_dir: Path, *extra: str) -> list[str]:
    return [str(run_dir), f"--steps={STEPS}", f"--every={EVERY}", *extra]


def _command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *_args(run_dir, *extra)]


def _kill_mid_checkpoint(run_dir: Path) -> list[str]:
    """Start a run that stalls halfway through writing a checkpoint; SIGKILL it there."""
    proc = subprocess.Popen(
        _command(run_dir, f"--stall-at={STALL}"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(TIMEOUT, proc.kill)  # a hung child ends the readline loop
    watchdog.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip())
            if lines[-1] == f"STALL {STALL}":
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait()
    finally:
        watchdog.cancel()
        proc.kill()  # no-op if it already exited
        proc.wait()
    assert lines[-1:] == [f"STALL {STALL}"], f"the run never reached the stall point: {lines}"
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    return lines


def _log(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _assert_identical(got: object, want: object, where: str = "state") -> None:
    """Exact equality of nested checkpoints: tensors by dtype and ``torch.equal``."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), where
        assert got.dtype == want.dtype and torch.equal(got, want), where
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            _assert_identical(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_identical(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


@pytest.mark.slow
@pytest.mark.usefixtures("_restore_globals")
def test_sigkill_mid_checkpoint_then_resume_equals_uninterrupted_run(tmp_path):
    # (a) the uninterrupted reference, in this process
    reference_dir, crash_dir = tmp_path / "reference", tmp_path / "crash"
    _script().main(_args(reference_dir))
    reference = _log(reference_dir)
    assert [r["step"] for r in reference] == list(range(1, STEPS + 1))
    assert all(kind in reference[0] for kind in OBJECTIVES)

    # (b) kill -9 with half of the step-16 checkpoint in the temporary file
    assert _kill_mid_checkpoint(crash_dir) == [f"CHECKPOINT {LAST_GOOD}", f"STALL {STALL}"]
    partial = crash_dir / "ckpt.pt.tmp"
    assert partial.exists() and partial.stat().st_size > 0
    with pytest.raises((RuntimeError, OSError, EOFError, pickle.UnpicklingError)):
        torch.load(partial, weights_only=False)  # half a zip: which error depends on the cut
    checkpoint = torch.load(crash_dir / "ckpt.pt", weights_only=False)
    assert checkpoint["step"] == LAST_GOOD
    at_checkpoint = reference[LAST_GOOD - 1]
    for kind in OBJECTIVES:
        # the checkpoint holds the objective state the reference had at that step
        saved = checkpoint["runs"][kind]["loss_fn"]
        assert int(saved["objective.step"]) == LAST_GOOD
        for name, value in saved.items():
            if name.startswith("objective."):
                want = at_checkpoint[kind]["objective"][name.removeprefix("objective.")]
                assert [float(v).hex() for v in value.reshape(-1).tolist()] == want, name

    # (c) resume in a fresh process: steps 9..16 are recomputed, then 17..40 are new
    done = subprocess.run(
        _command(crash_dir), capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert done.stdout.split("\n")[:2] == [f"RESUMED {LAST_GOOD}", f"CHECKPOINT {STALL}"]
    assert done.stdout.strip().endswith("DONE")
    resumed = _log(crash_dir)
    steps = [r["step"] for r in resumed]
    assert steps == [*range(1, STALL + 1), *range(LAST_GOOD + 1, STEPS + 1)]
    # Every logged value (loss, hyperparameters, objective buffers, metric states and epoch
    # results, as float.hex) of the crashed and of the resumed process equals the reference.
    for record in resumed:
        assert record == reference[record["step"] - 1], f"step {record['step']} differs"
    _assert_identical(
        torch.load(crash_dir / "final.pt", weights_only=False),
        torch.load(reference_dir / "final.pt", weights_only=False),
    )

    # Not vacuous: the state the resume had to restore keeps changing after the checkpoint,
    # and the controller is off its bounds there (a saturated integrator forgets its value).
    for record in reference[LAST_GOOD - 1 : LAST_GOOD + 1]:
        assert 0.0 < float.fromhex(record["controller"]["hyper"]["beta"][0]) < 2.0
    final = reference[-1]
    for kind in OBJECTIVES:
        assert final[kind]["objective"] != at_checkpoint[kind]["objective"], kind
        assert final[kind]["metrics"]["active"] != at_checkpoint[kind]["metrics"]["active"]
        losses = {r[kind]["loss"][0] for r in reference[LAST_GOOD:]}
        assert len(losses) == STEPS - LAST_GOOD, kind
    for name in ("integral", "beta"):
        assert (
            final["controller"]["objective"][name] != at_checkpoint["controller"]["objective"][name]
        )
    for name in ("multiplier", "constraint_ma"):
        assert final["geco"]["objective"][name] != at_checkpoint["geco"]["objective"][name]
    # an epoch ended after the checkpoint, so the shuffled order had to be restored too
    assert any("epoch_elbo" in r["controller"] for r in reference[LAST_GOOD:])


def test_mi_bounds_checkpoint_between_compute_and_reset_resumes():
    # A checkpoint written after the epoch's compute() (logging) and before its reset().
    uninterrupted = MutualInformationBounds()
    uninterrupted.update(torch.tensor([1.0, 2.0]), torch.tensor([5.0, 6.0]))
    assert uninterrupted.compute().entropy_upper == 7.0  # -ELBO = 1.5 + 5.5
    buffer = io.BytesIO()
    torch.save(uninterrupted.state_dict(), buffer)
    resumed = MutualInformationBounds()
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    for metric in (uninterrupted, resumed):
        metric.reset()
        metric.update(torch.tensor([9.0]), torch.tensor([9.0]))  # a worse epoch: -ELBO 18
    assert uninterrupted.compute().entropy_upper == 7.0  # the best epoch is kept
    assert_close(resumed.compute().entropy_upper, uninterrupted.compute().entropy_upper)
