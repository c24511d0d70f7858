"""What a long run shows while it works: tqdm bars on a terminal, one line per model elsewhere.

Bars need a terminal to redraw (elsewhere they leave escape codes behind), so a run whose
output goes to a file, a pipe, ``nohup`` or a CI log prints instead one line per trained
model, flushed at once: what it was, how long it took, its R and D.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["model_line", "modes"]


def modes(
    no_progress: bool, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> tuple[bool, bool]:
    """Whether to show tqdm bars (on stderr) and whether to print one line per model.

    Args:
        no_progress: the ``--no-progress`` flag: neither.
        stdout: where the lines and the results go (default ``sys.stdout``).
        stderr: where the bars go (default ``sys.stderr``).

    Returns:
        ``(bars, lines)``: bars when stderr is a terminal; lines when it is not, or when
        stdout is not (``rdloss mnist > log``: the bars on the screen, the lines in the log).
    """
    if no_progress:
        return False, False
    bars = (stderr or sys.stderr).isatty()
    return bars, not bars or not (stdout or sys.stdout).isatty()


def model_line(
    command: str,
    index: int,
    total: int,
    what: str,
    seconds: float,
    rate: float,
    distortion: float,
) -> str:
    """One finished model, e.g. ``rdloss mnist [3/11] -+- β=1: 94 s, R = 12.3, D = 85.1 nats``.

    Args:
        command: the subcommand.
        index: this model's number, from 1.
        total: the number of models in the run.
        what: the model's name.
        seconds: its training and evaluation time.
        rate: its R in nats.
        distortion: its D in nats.
    """
    return (
        f"rdloss {command} [{index}/{total}] {what}: {seconds:.0f} s, "
        f"R = {rate:.4g}, D = {distortion:.4g} nats"
    )
