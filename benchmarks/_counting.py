"""Count the aten ops, host synchronisations and tensor constructions of a piece of code.

A host synchronisation is a read of a tensor's value on the host: ``.item()``,
``bool(tensor)``, ``float(tensor)`` and ``int(tensor)`` dispatch to
``aten._local_scalar_dense``, which a ``TorchDispatchMode`` sees on any device. ``.tolist()``
reads a CPU tensor's memory without dispatching anything (on a GPU it dispatches a copy to
the host), so it is counted separately at the Python level with a ``TorchFunctionMode``. A
tensor built from Python data (``torch.tensor(0.5, device=...)``) is a host-to-device copy
on a GPU, which waits for the stream; those are counted too.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["Counts", "count"]

_SCALAR = torch.ops.aten._local_scalar_dense.default
_READS = {torch.Tensor.tolist}
_BUILDS = {torch.tensor, torch.as_tensor, torch.scalar_tensor}


def _site() -> str:
    """``file:line function`` of the innermost frame outside torch and this module."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = frame.filename
        if "/torch/" not in name and not name.endswith("_counting.py"):
            return f"{name.rsplit('/work/', 1)[-1].split('/', 1)[-1]}:{frame.lineno} {frame.name}"
    return "?"


def _chain() -> list[str]:
    """The call chain (innermost last), trimmed to rdloss and torch.distributions frames."""
    keep = []
    for frame in traceback.extract_stack()[:-2]:
        name = frame.filename
        if "rdloss/" in name or "torch/distributions/" in name:
            short = name[name.index("rdloss/") :] if "rdloss/" in name else name.split("torch/")[-1]
            keep.append(f"{short}:{frame.lineno} {frame.name}")
    return keep


class Counts:
    """What one `count` block saw.

    Attributes:
        ops: aten op name -> number of calls.
        syncs: one call chain per host synchronisation (``_local_scalar_dense`` or
            ``tolist``), innermost frame last.
        builds: one call chain per tensor constructed from Python data.
    """

    def __init__(self) -> None:
        self.ops: Counter[str] = Counter()
        self.syncs: list[list[str]] = []
        self.builds: list[list[str]] = []

    @property
    def n_ops(self) -> int:
        """Number of aten ops dispatched."""
        return sum(self.ops.values())

    @property
    def n_syncs(self) -> int:
        """Number of host synchronisations."""
        return len(self.syncs)


class _Dispatch(TorchDispatchMode):
    def __init__(self, counts: Counts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.counts.ops[str(func.overloadpacket.__name__)] += 1
        if func is _SCALAR:
            self.counts.syncs.append(_chain() or [_site()])
        return func(*args, **(kwargs or {}))


class _Function(TorchFunctionMode):
    def __init__(self, counts: Counts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func in _READS:
            self.counts.syncs.append(_chain() or [_site()])
        elif func in _BUILDS:
            self.counts.builds.append(_chain() or [_site()])
        return func(*args, **(kwargs or {}))


def count(fn: Callable[[], object]) -> Counts:
    """Run ``fn()`` once and count its aten ops, host synchronisations and constructions."""
    counts = Counts()
    with _Function(counts), _Dispatch(counts):
        fn()
    return counts
