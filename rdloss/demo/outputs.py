"""Outputs that are never lost: all-or-nothing files, and no silent replacement of a run.

An interrupted run (Ctrl-C while plotting, a full disk) leaves the folder as it was; a run
that writes fewer files than the previous one (``--no-plot``) removes the previous run's
leftovers, so the folder never mixes the numbers of one run with the plots of another.
`replaced_run` tells, before any training, that a folder holds the results of a run with
other arguments (a 17-minute run under a 23-second ``--quick`` one), which a command then
keeps unless ``--overwrite`` is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from rdloss._version import __version__

__all__ = ["ARTEFACTS", "PRESENTATION", "Staging", "configuration", "provenance", "replaced_run"]

# Every file `rdloss demo` may write into its output folder.
ARTEFACTS = ("results.csv", "results.json", "rd_plane.png", "trajectory.png")
# Arguments that change where a run reports or how fast, not its numbers.
PRESENTATION = frozenset({"out", "no_progress", "no_plot", "threads", "overwrite", "device"})


class Staging:
    """Context manager that publishes the staged files only if its block completes.

    Args:
        folder: the output folder (must exist).
        artefacts: every file the command may write there; those this run did not write
            are removed at the end.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with Staging(folder) as staged:
        ...     _ = staged.path("results.csv").write_text("rate")
        >>> sorted(p.name for p in folder.iterdir()), staged.written
        (['results.csv'], ['results.csv'])
    """

    def __init__(self, folder: Path, artefacts: tuple[str, ...] = ARTEFACTS) -> None:
        self.folder = folder
        self.artefacts = artefacts
        self.written: list[str] = []
        self._staged: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        """A temporary path for the file ``name``; it keeps the suffix (matplotlib reads it)."""
        final = Path(name)
        temporary = self.folder / f".{final.stem}.partial-{os.getpid()}{final.suffix}"
        self._staged[name] = temporary
        return temporary

    def __enter__(self) -> Staging:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is not None:  # leave the previous files untouched, drop the partial ones
            for temporary in self._staged.values():
                with contextlib.suppress(FileNotFoundError):
                    temporary.unlink()
            return
        for name, temporary in self._staged.items():
            if temporary.exists():  # a writer may decline (e.g. no rows for a figure)
                os.replace(temporary, self.folder / name)
                self.written.append(name)
        for name in self.artefacts:
            if name not in self.written:
                with contextlib.suppress(FileNotFoundError):
                    (self.folder / name).unlink()


def provenance(arguments: Mapping[str, object], started: float) -> dict[str, object]:
    """What produced a run's files: versions, the parsed arguments, the start time (UTC).

    Args:
        arguments: the command's parsed arguments (paths are written as text).
        started: ``time.time()`` at the start of the run.

    Returns:
        A JSON-ready dict for ``results.json``.
    """
    import torch

    return {
        "rdloss": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in arguments.items()},
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }


def configuration(arguments: Mapping[str, object]) -> dict[str, object]:
    """The arguments that decide a run's numbers, JSON-ready (paths as text).

    Args:
        arguments: a command's parsed arguments, or those saved in its JSON file.
    """
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in arguments.items()
        if key not in PRESENTATION
    }


def replaced_run(report: Path, arguments: Mapping[str, object]) -> str | None:
    """What a run with ``arguments`` would lose by replacing ``report``, if anything.

    Args:
        report: the JSON file of results the run would replace (``results.json``).
        arguments: the new run's parsed arguments.

    Returns:
        ``None`` when there is no such file, it holds a ``--quick`` run, or a run of the
        same configuration (same command and numbers-deciding arguments); else
        what it holds, e.g. ``"the results of a run with other --quick, --seed"``.
    """
    if not report.exists():
        return None
    try:
        saved = json.loads(report.read_text())
        previous = saved.get("provenance", saved)["arguments"]
        if not isinstance(previous, Mapping):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"a {report.name} that is not rdloss's"
    old, new = configuration(previous), configuration(arguments)
    if old.get("quick") is True:  # a smoke run's numbers mean nothing: nothing is lost
        return None
    if old.get("command") != new.get("command"):
        return f"the results of rdloss {old.get('command')}"
    differ = sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))
    if not differ:
        return None
    return "the results of a run with other " + ", ".join(
        f"--{key.replace('_', '-')}" for key in differ
    )
