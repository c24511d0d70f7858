r"""Objectives that hold a target: ``TargetRate``, ``TargetDistortion`` and ``Capacity``.

Every hyperparameter takes a number or a `Schedule` of the step (``Beta`` is in ``_beta``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from typing_extensions import override

from rdloss._checks import check_nonnegative_number
from rdloss.objectives._base import (
    Objective,
    ObjectiveOutput,
    numbers_repr,
)
from rdloss.objectives._hyperparameters import Hyperparameter, as_hyperparameter, new_state
from rdloss.objectives._structured import Reduction
from rdloss.schedules import Schedule

__all__ = ["Capacity", "TargetDistortion", "TargetRate"]


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


class TargetRate(Objective):
    r"""The paper's fix: $\bar D + w\,|\sigma - \bar R|$ (Alemi et al., 2018, Sec. 4).

    By default the absolute value applies to the *batch-mean* rate, as in the paper;
    ``reduction="example"`` gives the different objective $\overline{D_i + w|\sigma - R_i|}$
    that some public implementations use, which pushes every example to the same rate.

    **When the target holds.** On a convex, decreasing frontier $D(R)$, the rate $\sigma$
    minimises $D(R) + w|\sigma - R|$ exactly when some subgradient of the frontier at
    $\sigma$ has magnitude at most $w$: $|D'_+(\sigma)| \le w$. Since $|D'|$ falls as R
    grows and $|D'(R_w)| = w$ at the rate $R_w$ that ``Beta(w)`` trains to, the fixed-weight
    objective lands at $\max(\sigma, R_w)$: it holds every $\sigma \ge R_w$ (with ``w = 1``:
    every target at or above the ELBO-trained rate) and, below $R_w$, stops at $R_w$. To
    hold a lower $\sigma$, raise ``weight`` above the frontier's slope magnitude there, or
    set ``adaptive=True``: the weight then follows dual ascent on the constraint
    $\bar R = \sigma$,

    $$
    w_{t+1} = \mathrm{clip}\big(w_t\, e^{\eta(\bar R_t - \sigma)},\,
    w_{min},\, w_{max}\big),
    $$

    which raises $w$ while the rate is above the target and lowers it while below, so it
    settles near the smallest weight that holds $\sigma$, $|D'(\sigma)|$. The weight is a
    float32 buffer, updated only in training and only from a finite batch (a non-finite
    one is counted in ``skipped`` and changes nothing).

    Args:
        sigma: target rate in nats per example, ``>= 0``, a number or a schedule.
        weight: weight ``w`` of the penalty, ``> 0``, a number or a schedule; with
            ``adaptive=True`` the initial weight (a number).
        reduction: ``"batch"`` (the paper's) or ``"example"``.
        adaptive: adapt the weight by dual ascent, as above.
        lr: step size $\eta$ of the adaptive weight, per nat of $\bar R - \sigma$, ``> 0``.
        max_weight: upper clamp $w_{max}$ of the adaptive weight (``w_min = 1e-3``).

    Attributes:
        adaptive_weight: 0-dim float32 buffer, the current adaptive weight (with
            ``adaptive=True``).
        skipped: 0-dim int64 buffer, training steps whose non-finite rate left the weight
            unchanged (with ``adaptive=True``).

    Examples:
        >>> import torch
        >>> TargetRate(5.0)(torch.tensor([2.0, 4.0]), torch.tensor([10.0, 10.0])).loss
        tensor(12.)
        >>> held = TargetRate(1.0, adaptive=True, lr=0.5)
        >>> out = held(torch.tensor([3.0]), torch.tensor([10.0]))  # R - sigma = 2
        >>> held.adaptive_weight  # exp(0.5 * 2)
        tensor(2.7183)
    """

    adaptive_weight: Tensor
    skipped: Tensor
    _hyperparameters: ClassVar[dict[str, bool]] = {"sigma": False, "weight": True, "lr": True}
    _config = ("reduction", "adaptive", "max_weight")
    min_weight = 1e-3

    def __init__(
        self,
        sigma: Hyperparameter,
        weight: Hyperparameter = 1.0,
        *,
        reduction: Reduction = "batch",
        adaptive: bool = False,
        lr: Hyperparameter = 0.05,
        max_weight: float = 1e4,
    ) -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {type(adaptive).__name__}")
        self.adaptive = adaptive
        self.max_weight = check_nonnegative_number("max_weight", max_weight, positive=True)
        self.sigma = sigma
        self.weight = weight
        self.lr = lr
        if adaptive:
            self.register_buffer("skipped", new_state(0, torch.long))

    @override
    def _set_hyperparameter(self, name: str, value: object) -> None:
        # With adaptive=True, assigning the weight restarts the adaptation from it: the
        # constructor's checks, then the adaptive weight takes the value.
        if name != "weight" or not self.adaptive:
            super()._set_hyperparameter(name, value)
            return
        initial = as_hyperparameter(name, value, positive=True)
        if isinstance(initial, Schedule):
            raise TypeError(
                "weight must be a number with adaptive=True (the initial weight), got a "
                f"{type(initial).__name__} schedule"
            )
        if not self.min_weight <= initial <= self.max_weight:
            raise ValueError(
                f"weight must lie in [{self.min_weight}, max_weight] = "
                f"[{self.min_weight}, {self.max_weight}] with adaptive=True, got {initial}"
            )
        super()._set_hyperparameter(name, initial)
        if "adaptive_weight" in dict(self.named_buffers(recurse=False)):
            with torch.no_grad():
                self.adaptive_weight.fill_(initial)
        else:
            self.register_buffer("adaptive_weight", new_state(initial, torch.float32))

    @override
    def state_ranges(self) -> dict[str, tuple[float, float]]:
        ranges = super().state_ranges()
        if self.adaptive:
            ranges["adaptive_weight"] = (self.min_weight, self.max_weight)
        return ranges

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
        hyper = {"target_rate": sigma}
        if not self.adaptive:
            w = self.hyperparameter(self.weight, rate)
        else:
            w = self.adaptive_weight.clone()  # the buffer is updated in place below
            hyper["rate_weight"] = w
            if self.advancing:
                excess = self.mean(rate, weight).detach() - sigma
                lr = self.hyperparameter(self.lr, rate)
                updated = (w * torch.exp(lr * excess)).clamp(self.min_weight, self.max_weight)
                finite = torch.isfinite(excess)
                self.adaptive_weight.copy_(torch.where(finite, updated, w))
                self.skipped.add_((~finite).long())
        loss = self.mean(distortion, weight) + w.to(penalty.dtype) * penalty
        return ObjectiveOutput(loss, hyper)

    @override
    def extra_repr(self) -> str:
        extra = [
            numbers_repr(sigma=self.sigma, weight=self.weight),
            f"reduction={self.reduction!r}",
        ]
        if self.adaptive:
            extra += ["adaptive=True", numbers_repr(lr=self.lr), f"max_weight={self.max_weight}"]
        return ", ".join(filter(None, extra))


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

    _hyperparameters: ClassVar[dict[str, bool]] = {"delta": False, "weight": True}
    _config = ("reduction",)

    def __init__(
        self,
        delta: Hyperparameter,
        weight: Hyperparameter = 1.0,
        *,
        reduction: Reduction = "batch",
    ) -> None:
        super().__init__()
        self.delta = delta
        self.weight = weight
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

    _hyperparameters: ClassVar[dict[str, bool]] = {"capacity": False, "gamma": True}

    def __init__(self, capacity: Hyperparameter, gamma: Hyperparameter = 1000.0) -> None:
        super().__init__()
        self.capacity = capacity
        self.gamma = gamma

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
