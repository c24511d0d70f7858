"""Gloo process groups for the multi-process tests: a bounded wait, and a joint teardown.

A rank that destroys its group while the other still completes the last collective can
abort ("terminate called without an active exception", torch 2.15), so the teardown waits
at a barrier first. Then it destroys the group: on torch 2.15 a process that exits with its
gloo group alive aborts the same way (4 runs in 16 of the DDP tests). Torch 2.3's gloo
``destroy_process_group`` hangs now and then even after the barrier (1 run in 15;
pytorch/pytorch#75097), and there a process that exits with its group alive passed 20 runs
of 20, so on 2.3 the teardown is the barrier alone. The timeout turns any other wait for a
rank that failed into an error after two minutes instead of gloo's thirty.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["TIMEOUT", "close_group", "open_group"]

TIMEOUT = timedelta(seconds=120)


def open_group(rank: int, world_size: int, port: int | None = None) -> None:
    """``init_process_group("gloo")`` on ``127.0.0.1:port`` (or the environment's address)."""
    where = {} if port is None else {"init_method": f"tcp://127.0.0.1:{port}"}
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=TIMEOUT, **where)


def close_group() -> None:
    """Wait for every rank, then destroy the group (not on torch 2.3: see the module doc)."""
    dist.barrier()
    if torch.__version__ >= "2.4":
        dist.destroy_process_group()
