r"""Objectives whose only state is the step: fixed or scheduled weights and targets.

``Beta``, ``TargetRate``, ``TargetDistortion``, ``FreeBits`` and ``Capacity``. Every
hyperparameter takes a number or a `Schedule` of the step.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from typing_extensions import override

from rdloss.objectives._base import (
    Hyperparameter,
    Objective,
    ObjectiveOutput,
    as_hyperparameter,
    numbers_repr,
)

__all__ = ["Beta", "Capacity", "FreeBits", "TargetDistortion", "TargetRate"]

Reduction = Literal["batch", "example"]


def _check_reduction(reduction: object) -> Reduction:
    if reduction == "batch":
        return "batch"
    if reduction == "example":
        return "example"
    raise ValueError(f"reduction must be 'batch' or 'example', got {reduction!r}")


def _target_penalty(
    objective: Objective,
    values: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: Reduction,
) -> Tensor:
    """``|target - mean v|`` (``"batch"``) or ``mean |target - v|`` (``"example"``)."""
    if reduction == "batch":
        return (target - objective.mean(values, weight)).abs()
    return objective.mean((target - values).abs(), weight)


class Beta(Objective):
    r"""The β-VAE objective $\bar D + \beta \bar R$ (Higgins et al., 2017).

    ``beta = 1`` is the negative ELBO; ``beta < 1`` moves towards the auto-encoding limit
    (more rate, less distortion), which the paper recommends with powerful decoders. The
    slope of the rate-distortion frontier at the optimum is ``-beta``. CompressAI's
    ``lambda * D + R`` corresponds to ``beta = 1 / lambda`` (and uses bits per pixel).
    See Alemi et al. (2018), Eq. 6. A schedule gives KL warm-up (Bowman et al., 2016:
    ``Beta(Linear(0.0, 1.0, steps=T))``) or cyclical annealing (Fu et al., 2019:
    ``Beta(Cyclical(steps=T))``).

    Args:
        beta: non-negative weight of the rate, a number or a schedule.

    Examples:
        >>> import torch
        >>> Beta(0.5)(torch.tensor([2.0]), torch.tensor([10.0])).loss
        tensor(11.)
    """

    def __init__(self, beta: Hyperparameter = 1.0) -> None:
        super().__init__()
        self.beta = as_hyperparameter("beta", beta)

    def compute(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        r"""$\bar D + \beta \bar R$; see `Objective.compute`."""
        beta = self.hyperparameter(self.beta, rate)
        loss = self.mean(distortion, weight) + beta * self.mean(rate, weight)
        return ObjectiveOutput(loss, {"beta": beta})

    @override
    def extra_repr(self) -> str:
        return numbers_repr(beta=self.beta)


class TargetRate(Objective):
    r"""The paper's fix: $\bar D + w\,|\sigma - \bar R|$ (Alemi et al., 2018, Sec. 4).

    The rate is held near the target ``sigma`` whatever the decoder's power. By default the
    absolute value applies to the *batch-mean* rate, as in the paper; ``reduction="example"``
    gives the different objective $\overline{D_i + w|\sigma - R_i|}$ that some public
    implementations use, which pushes every example to the same rate.

    Args:
        sigma: target rate in nats per example, ``>= 0``, a number or a schedule.
        weight: weight ``w`` of the penalty, ``> 0``, a number or a schedule.
        reduction: ``"batch"`` (the paper's) or ``"example"``.

    Examples:
        >>> import torch
        >>> TargetRate(5.0)(torch.tensor([2.0, 4.0]), torch.tensor([10.0, 10.0])).loss
        tensor(12.)
    """

    def __init__(
        self,
        sigma: Hyperparameter,
        weight: Hyperparameter = 1.0,
        *,
        reduction: Reduction = "batch",
    ) -> None:
        super().__init__()
        self.sigma = as_hyperparameter("sigma", sigma)
        self.weight = as_hyperparameter("weight", weight, positive=True)
        self.reduction = _check_reduction(reduction)

    def compute(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        r"""$\bar D + w|\sigma - \bar R|$; see `Objective.compute`."""
        sigma = self.hyperparameter(self.sigma, rate)
        penalty = _target_penalty(self, rate, sigma, weight, self.reduction)
        loss = self.mean(distortion, weight) + self.hyperparameter(self.weight, rate) * penalty
        return ObjectiveOutput(loss, {"target_rate": sigma})

    @override
    def extra_repr(self) -> str:
        numbers = numbers_repr(sigma=self.sigma, weight=self.weight)
        return ", ".join(filter(None, (numbers, f"reduction={self.reduction!r}")))


class TargetDistortion(Objective):
    r"""Rate at a fixed distortion: $\bar R + w\,|\delta - \bar D|$.

    The mirror image of `TargetRate` (Alemi et al., 2018, Sec. 4): the distortion is
    held near ``delta`` and the rate is minimised, i.e. the point of the frontier at
    ``D = delta``. Reduction options as for `TargetRate`. Because $\bar D$ is
    typically much larger than $\bar R$, a weight ``w > 1`` keeps the constraint
    tight; `GECO` adapts that weight instead.

    Args:
        delta: target distortion in nats per example, ``>= 0``, a number or a schedule.
        weight: weight ``w`` of the penalty, ``> 0``, a number or a schedule.
        reduction: ``"batch"`` (absolute value of the batch mean) or ``"example"``.

    Examples:
        >>> import torch
        >>> TargetDistortion(5.0)(torch.tensor([2.0, 4.0]), torch.tensor([6.0, 8.0])).loss
        tensor(5.)
    """

    def __init__(
        self,
        delta: Hyperparameter,
        weight: Hyperparameter = 1.0,
        *,
        reduction: Reduction = "batch",
    ) -> None:
        super().__init__()
        self.delta = as_hyperparameter("delta", delta)
        self.weight = as_hyperparameter("weight", weight, positive=True)
        self.reduction = _check_reduction(reduction)

    def compute(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        r"""$\bar R + w|\delta - \bar D|$; see `Objective.compute`."""
        delta = self.hyperparameter(self.delta, rate)
        penalty = _target_penalty(self, distortion, delta, weight, self.reduction)
        loss = self.mean(rate, weight) + self.hyperparameter(self.weight, rate) * penalty
        return ObjectiveOutput(loss, {"target_distortion": delta})

    @override
    def extra_repr(self) -> str:
        numbers = numbers_repr(delta=self.delta, weight=self.weight)
        return ", ".join(filter(None, (numbers, f"reduction={self.reduction!r}")))


class FreeBits(Objective):
    r"""Free bits (Kingma et al., 2016): rate below ``lam`` nats costs nothing.

    With ``per="dimension"`` (the paper's, one group per latent dimension ``j``)

    $$
    \bar D + \sum_j \max\big(\lambda, \overline{R_j}\big),
    $$

    where $\overline{R_j}$ is the batch mean of dimension ``j``'s rate; it needs the
    per-dimension rate, which the loss provides where the KL factorises over latent
    dimensions (not for mixture or flow marginals). ``per="total"`` clamps the total rate
    instead: $\bar D + \max(\lambda, \bar R)$. Dimensions below ``lam`` receive no
    gradient from the rate term. The loss's reported ``rate`` stays unclamped; the hyper
    entry ``clamped_rate`` is the clamped rate term that enters the loss.

    Args:
        lam: free nats per dimension (or in total), ``>= 0``, a number or a schedule.
        per: ``"dimension"`` or ``"total"``.

    Examples:
        >>> import torch
        >>> objective = FreeBits(0.5)
        >>> r = torch.tensor([[0.1, 2.0], [0.3, 4.0]])  # dimension 0 has mean 0.2 < 0.5
        >>> objective(r.sum(1), torch.tensor([1.0, 1.0]), rate_per_dimension=r).loss
        tensor(4.5000)
    """

    def __init__(
        self, lam: Hyperparameter = 0.25, *, per: Literal["dimension", "total"] = "dimension"
    ) -> None:
        super().__init__()
        self.lam = as_hyperparameter("lam", lam)
        if per not in ("dimension", "total"):
            raise ValueError(f"per must be 'dimension' or 'total', got {per!r}")
        self.per = per

    def compute(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        r"""$\bar D + \sum_j \max(\lambda, \overline{R_j})$; see `Objective.compute`.

        Raises:
            ValueError: ``per="dimension"`` and ``rate_per_dimension`` is None.
        """
        lam = self.hyperparameter(self.lam, rate)
        if self.per == "dimension":
            if rate_per_dimension is None:
                raise ValueError(
                    "FreeBits(per='dimension') needs rate_per_dimension, which is None: the "
                    "rate does not factorise over latent dimensions (e.g. a mixture or flow "
                    "marginal); use FreeBits(per='total')"
                )
            per_dimension = self.mean(rate_per_dimension, weight)
            clamped = torch.maximum(per_dimension, lam).sum()
        else:
            clamped = torch.maximum(self.mean(rate, weight), lam)
        loss = self.mean(distortion, weight) + clamped
        return ObjectiveOutput(loss, {"free_bits": lam, "clamped_rate": clamped.detach()})

    @override
    def extra_repr(self) -> str:
        numbers = numbers_repr(lam=self.lam)
        return ", ".join(filter(None, (numbers, f"per={self.per!r}")))


class Capacity(Objective):
    r"""Controlled capacity increase (Burgess et al., 2018): $\bar D + \gamma|\bar R - C(t)|$.

    The rate is pulled towards a capacity ``C(t)`` that usually grows during training, so
    the model spends its nats gradually. The paper's setting is
    ``Capacity(Linear(0.0, 25.0, steps=100_000), gamma=1000.0)``.

    Args:
        capacity: ``C(t)`` in nats per example, ``>= 0``, a number or a schedule.
        gamma: weight of the penalty, ``> 0``, a number or a schedule.

    Examples:
        >>> import torch
        >>> Capacity(3.0, gamma=10.0)(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 3.0])).loss
        tensor(12.)
    """

    def __init__(self, capacity: Hyperparameter, gamma: Hyperparameter = 1000.0) -> None:
        super().__init__()
        self.capacity = as_hyperparameter("capacity", capacity)
        self.gamma = as_hyperparameter("gamma", gamma, positive=True)

    def compute(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        r"""$\bar D + \gamma|\bar R - C(t)|$; see `Objective.compute`."""
        capacity = self.hyperparameter(self.capacity, rate)
        gamma = self.hyperparameter(self.gamma, rate)
        penalty = (self.mean(rate, weight) - capacity).abs()
        loss = self.mean(distortion, weight) + gamma * penalty
        return ObjectiveOutput(loss, {"capacity": capacity, "gamma": gamma})

    @override
    def extra_repr(self) -> str:
        return numbers_repr(capacity=self.capacity, gamma=self.gamma)
