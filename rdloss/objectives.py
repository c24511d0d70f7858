"""Objectives: turn per-example rate and distortion into the scalar training loss.

Each objective reduces per-example terms by the batch mean (weighted when the loss is given
per-example weights) and returns :class:`ObjectiveOutput`: the loss and the named scalars
that steer it (``beta``, targets, multipliers), which the loss output exposes for logging.
Every piece of state lives in registered buffers, and state advances only in ``train()``
mode while gradients are being computed (:attr:`Objective.advancing`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from typing_extensions import override

from rdloss._validation import check_nonnegative_number
from rdloss.functional import batch_mean

__all__ = ["Beta", "Objective", "ObjectiveOutput", "TargetRate"]


class ObjectiveOutput(NamedTuple):
    """What an objective returns.

    Attributes:
        loss: 0-dim training loss.
        hyper: the objective's current named scalars (e.g. ``{"beta": ...}``), 0-dim tensors.
    """

    loss: Tensor
    hyper: dict[str, Tensor]


class Objective(nn.Module, ABC):
    """Base class of objectives.

    Subclasses implement :meth:`forward` on per-example terms.
    """

    @property
    def advancing(self) -> bool:
        """True when state should advance: ``train()`` mode and gradients enabled."""
        return self.training and torch.is_grad_enabled()

    @abstractmethod
    def forward(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        """Compute the loss.

        Args:
            rate: ``(B,)`` per-example rate in nats.
            distortion: ``(B,)`` per-example distortion in nats.
            rate_per_dimension: ``(B, D)`` per-dimension rate, where the KL factorises.
            weight: ``(B,)`` non-negative per-example weights (normalised).

        Returns:
            :class:`ObjectiveOutput`.
        """


class Beta(Objective):
    r"""The β-VAE objective :math:`\bar D + \beta \bar R` (Higgins et al., 2017).

    ``beta = 1`` is the negative ELBO; ``beta < 1`` moves towards the auto-encoding limit
    (more rate, less distortion), which the paper recommends with powerful decoders. The
    slope of the rate-distortion frontier at the optimum is ``-beta``. CompressAI's
    ``lambda * D + R`` corresponds to ``beta = 1 / lambda`` (and uses bits per pixel).
    See Alemi et al. (2018), Eq. 6.

    Args:
        beta: non-negative weight of the rate.

    Example:
        >>> import torch
        >>> Beta(0.5)(torch.tensor([2.0]), torch.tensor([10.0])).loss
        tensor(11.)
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = check_nonnegative_number("beta", beta)

    def forward(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        r""":math:`\bar D + \beta \bar R`; see :meth:`Objective.forward`."""
        beta = torch.tensor(self.beta, dtype=rate.dtype, device=rate.device)
        loss = batch_mean(distortion, weight) + beta * batch_mean(rate, weight)
        return ObjectiveOutput(loss, {"beta": beta})

    @override
    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class TargetRate(Objective):
    r"""The paper's fix: :math:`\bar D + w\,|\sigma - \bar R|` (Alemi et al., 2018, Sec. 4).

    The rate is held near the target ``sigma`` whatever the decoder's power. By default the
    absolute value applies to the *batch-mean* rate, as in the paper; ``reduction="example"``
    gives the different objective :math:`\overline{D_i + w|\sigma - R_i|}` that some public
    implementations use, which pushes every example to the same rate.

    Args:
        sigma: target rate in nats per example, ``>= 0``.
        weight: weight ``w`` of the penalty, ``> 0``.
        reduction: ``"batch"`` (the paper's) or ``"example"``.

    Example:
        >>> import torch
        >>> TargetRate(5.0)(torch.tensor([2.0, 4.0]), torch.tensor([10.0, 10.0])).loss
        tensor(12.)
    """

    def __init__(
        self,
        sigma: float,
        weight: float = 1.0,
        *,
        reduction: Literal["batch", "example"] = "batch",
    ) -> None:
        super().__init__()
        self.sigma = check_nonnegative_number("sigma", sigma)
        self.weight = check_nonnegative_number("weight", weight, positive=True)
        if reduction not in ("batch", "example"):
            raise ValueError(f"reduction must be 'batch' or 'example', got {reduction!r}")
        self.reduction = reduction

    def forward(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        r""":math:`\bar D + w|\sigma - \bar R|`; see :meth:`Objective.forward`."""
        sigma = torch.tensor(self.sigma, dtype=rate.dtype, device=rate.device)
        if self.reduction == "batch":
            penalty = (sigma - batch_mean(rate, weight)).abs()
        else:
            penalty = batch_mean((sigma - rate).abs(), weight)
        loss = batch_mean(distortion, weight) + self.weight * penalty
        return ObjectiveOutput(loss, {"target_rate": sigma})

    @override
    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, weight={self.weight}, reduction={self.reduction!r}"
