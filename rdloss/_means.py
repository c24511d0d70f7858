"""Weighted batch means, of one process's batch or of all processes' (differentiably)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["batch_mean", "global_batch_mean"]


def batch_mean(values: Tensor, weight: Tensor | None = None) -> Tensor:
    r"""Batch mean of per-example values, optionally weighted: $\sum_i w_i v_i / \sum_i w_i$.

    Args:
        values: ``(B, ...)`` per-example values, reduced over the first dimension.
        weight: ``(B,)`` non-negative weights; they are normalised, so only their ratios
            matter.

    Returns:
        ``values.shape[1:]``.
    """
    if weight is None:
        # A (B,) batch: the full mean, the same value as mean(0) with a lighter backward node.
        return values.mean() if values.ndim == 1 else values.mean(0)
    column = weight.reshape(-1, *([1] * (values.ndim - 1)))
    return (column * values).sum(0) / weight.sum()


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward sums the gradients of every process's loss."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def global_batch_mean(values: Tensor, weight: Tensor | None = None) -> Tensor:
    r"""`batch_mean` over the batches of all processes, differentiably.

    $\sum_{r,i} w_{ri} v_{ri} / \sum_{r,i} w_{ri}$ over processes $r$ of the default
    ``torch.distributed`` group; the plain `batch_mean` when none is initialised. Every
    process then computes the same loss, and the backward all-reduces its gradient, so
    after DDP divides by the world size each process holds exactly the single-process
    gradient on the union of the batches, even through nonlinear functions of the mean
    (``|sigma - mean R|``) and for unequal per-process weight totals.

    Args:
        values: ``(B, ...)`` per-example values, reduced over the first dimension.
        weight: ``(B,)`` non-negative weights.

    Returns:
        ``values.shape[1:]``, the same on every process.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return batch_mean(values, weight)
    w = values.new_ones(values.shape[0]) if weight is None else weight.to(values.dtype)
    column = w.reshape(-1, *([1] * (values.ndim - 1)))
    sums = torch.cat([(column * values).sum(0).reshape(-1), w.sum().reshape(1)])
    total: Tensor = _AllReduceSum.apply(sums)
    return (total[:-1] / total[-1]).reshape(values.shape[1:])
