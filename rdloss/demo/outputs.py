"""All-or-nothing output files: stage under temporary names, rename together at the end.

An interrupted run (Ctrl-C while plotting, a full disk) leaves the folder as it was; a run
that writes fewer files than the previous one (``--no-plot``) removes the previous run's
leftovers, so the folder never mixes the numbers of one run with the plots of another.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from rdloss._version import __version__

__all__ = ["ARTEFACTS", "Staging", "provenance"]

# Every file `rdloss demo` may write into its output folder.
ARTEFACTS = ("results.csv", "results.json", "rd_plane.png", "trajectory.png")


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
