r"""Objectives whose only state is the step: fixed or scheduled weights and targets.

``Beta``, ``TargetRate``, ``TargetDistortion`` and ``Capacity``. Every
hyperparameter takes a number or a `Schedule` of the step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor
from typing_extensions import override

from rdloss.latents import RateTerms
from rdloss.objectives._base import (
    Hyperparameter,
    Objective,
    ObjectiveOutput,
    as_hyperparameter,
    numbers_repr,
)
from rdloss.objectives._structured import check_alpha, nvae_balanced_rate

__all__ = ["Beta", "Capacity", "TargetDistortion", "TargetRate"]

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
    ``Beta(Cyclical(steps=T))``). With named latent groups, ``group_balance=True`` adds
    NVAE's balancing (`nvae_balanced_rate`) while the warm-up keeps ``beta < 1``.

    Args:
        beta: non-negative weight of the rate, a number or a schedule.
        group_balance: NVAE's KL balancing over named groups while ``beta < 1``.
        alpha: NVAE's per-group divisor ``alpha_g`` (its ``kl_balancer_coeff``); default
            each group's number of latent dimensions.

    Examples:
        >>> import torch
        >>> Beta(0.5)(torch.tensor([2.0]), torch.tensor([10.0])).loss
        tensor(11.)
    """

    def __init__(
        self,
        beta: Hyperparameter = 1.0,
        *,
        group_balance: bool = False,
        alpha: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.beta = as_hyperparameter("beta", beta)
        if not isinstance(group_balance, bool):
            raise TypeError(f"group_balance must be a bool, got {type(group_balance).__name__}")
        if alpha is not None and not group_balance:
            raise ValueError("alpha weights NVAE's group balancing: pass group_balance=True")
        self.group_balance = group_balance
        self.alpha = check_alpha(alpha)

    @override
    def compute_terms(
        self, terms: RateTerms, distortion: Tensor, *, weight: Tensor | None = None
    ) -> ObjectiveOutput:
        r"""$\bar D + \beta \bar R$, with NVAE's group balancing while $\beta < 1$."""
        if not self.group_balance:
            return super().compute_terms(terms, distortion, weight=weight)
        beta = self.hyperparameter(self.beta, terms.per_example)
        balanced = nvae_balanced_rate(self, terms, self.alpha, weight)
        # NVAE balances only during warm-up (kl_coeff < 1); torch.where keeps it sync-free.
        rate = torch.where(beta < 1.0, balanced, terms.per_example)
        loss = self.mean(distortion, weight) + beta * self.mean(rate, weight)
        return ObjectiveOutput(loss, {"beta": beta})

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
        balance = ", group_balance=True" if self.group_balance else ""
        return numbers_repr(beta=self.beta) + balance


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
