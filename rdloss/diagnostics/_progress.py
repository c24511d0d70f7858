"""Progress of a pass over batches: a tqdm bar on a terminal, plain lines on stderr otherwise."""

from __future__ import annotations

import math
import sys
import time

import torch
from tqdm.auto import tqdm

__all__ = ["Progress"]

_LINES_UNSIZED = 25  # progress lines every this many batches when the total is unknown


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class Progress:
    """A tqdm bar on a terminal, plain lines on stderr otherwise, nothing when disabled."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        rank = torch.distributed.get_rank() if _distributed() else 0
        self.enabled = enabled and rank == 0
        self.total = total
        self.every = _LINES_UNSIZED if not total else max(1, math.ceil(total / 10))
        self.start = time.perf_counter()
        tty = self.enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc="evaluate", unit="batch", leave=False) if tty else None

    def step(self, batches: int, examples: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled and (batches % self.every == 0 or batches == self.total):
            done = f"{batches} batches"
            if self.total:
                done = f"{batches}/{self.total} batches ({100 * batches // self.total}%)"
            self.say(f"{done}, {examples} examples")

    def say(self, text: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.start
            line = f"evaluate: {text}, {elapsed:.1f} s"
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
