r"""Feedback objectives: a Lagrange multiplier (GECO) and a PI controller on β (ControlVAE).

Their state (multiplier, moving average, integrator, current β) lives in float32 buffers next
to the step, so ``state_dict()`` / ``load_state_dict()`` resume them exactly; they stay
float32 when the module is cast to a half dtype (`Objective`). State is updated with in-place
tensor operations and no host synchronisation, so a compiled loss does not recompile as it
changes, and only from a finite batch: a NaN or inf rate or distortion leaves the state as
it was and is counted in the ``skipped`` buffer, so training recovers after a bad batch.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from torch import Tensor
from typing_extensions import override

from rdloss._checks import check_nonnegative_number
from rdloss.objectives._base import (
    Objective,
    ObjectiveOutput,
    numbers_repr,
)
from rdloss.objectives._hyperparameters import Hyperparameter, new_state

__all__ = ["GECO", "RateController"]


def _bounds(low_name: str, low: float, high_name: str, high: float, *, positive: bool) -> None:
    check_nonnegative_number(low_name, low, positive=positive)
    check_nonnegative_number(high_name, high, positive=True)
    if not low < high:
        raise ValueError(f"{low_name} must be < {high_name}, got {low} and {high}")


class GECO(Objective):
    r"""Minimise the rate subject to a distortion bound (Rezende & Viola, 2018, "Taming VAEs").

    GECO (generalised ELBO with constrained optimisation) solves
    $\min \bar R \;\text{s.t.}\; \bar D \le \kappa$ with the Lagrangian

    $$
    \mathcal{L} = \bar R + \lambda\, C, \qquad C = \bar D - \kappa,
    $$

    and updates the multiplier from a moving average of the constraint:

    $$
    C^{ma}_t = \alpha\, C^{ma}_{t-1} + (1 - \alpha)\, C_t \;(C^{ma}_0 = C_0), \qquad
    \lambda_{t+1} = \lambda_t \exp(\nu\, C^{ma}_t).
    $$

    The loss uses $C_t + \mathrm{sg}(C^{ma}_t - C_t)$: its value is $\lambda C^{ma}$
    but its gradient is that of the current batch's constraint. λ rises while the distortion
    is above ``kappa`` and falls once it is below; it is clamped to ``[min_multiplier,
    max_multiplier]`` so it stays positive and finite. Dividing by λ shows the equivalent
    β-VAE weight, $\beta = 1/\lambda$. Outside training (``eval()`` or no gradients)
    nothing updates and the loss uses the batch's own constraint.

    Choose ``lr`` ($\nu$) for the scale of your distortion: λ changes by a factor
    $e^{\nu C^{ma}}$ per step, so $\nu |C|$ should stay well below 1.

    Args:
        target_distortion: bound κ on the batch-mean distortion, nats per example; a number
            or a schedule.
        alpha: decay of the moving average, in ``[0, 1)`` (paper: 0.99).
        lr: step size $\nu$ of the multiplier update, ``> 0``; a number or a schedule.
        multiplier: initial λ₀ ``> 0`` (paper: 1, i.e. the ELBO).
        min_multiplier: lower clamp of λ, ``> 0``.
        max_multiplier: upper clamp of λ.

    Attributes:
        multiplier: 0-dim float32 buffer, the current λ.
        constraint_ma: 0-dim float32 buffer, the moving average $C^{ma}$ of ``D - kappa``.
        seeded: 0-dim bool buffer, whether $C^{ma}$ holds a constraint yet (the first
            finite one sets it, at whatever step).
        skipped: 0-dim int64 buffer, training steps whose non-finite constraint left the
            state unchanged.

    Examples:
        >>> import torch
        >>> geco = GECO(10.0, lr=0.1)
        >>> with torch.no_grad():  # without gradients nothing advances
        ...     out = geco(torch.tensor([2.0]), torch.tensor([12.0]))
        >>> out.loss, geco.multiplier  # C = 12 - 10 = 2: loss = 2 + 1 * 2
        (tensor(4.), tensor(1.))
        >>> out = geco(torch.tensor([2.0]), torch.tensor([12.0]))  # a training step
        >>> geco.multiplier, geco.step  # exp(0.1 * 2)
        (tensor(1.2214), tensor(1))
    """

    multiplier: Tensor
    constraint_ma: Tensor
    seeded: Tensor
    skipped: Tensor
    _hyperparameters: ClassVar[dict[str, bool]] = {"target_distortion": False, "lr": True}
    _config = ("alpha", "min_multiplier", "max_multiplier")

    def __init__(
        self,
        target_distortion: Hyperparameter,
        *,
        alpha: float = 0.99,
        lr: Hyperparameter = 1e-3,
        multiplier: float = 1.0,
        min_multiplier: float = 1e-6,
        max_multiplier: float = 1e6,
    ) -> None:
        super().__init__()
        self.target_distortion = target_distortion
        self.alpha = check_nonnegative_number("alpha", alpha)
        if not self.alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {self.alpha}")
        self.lr = lr
        _bounds("min_multiplier", min_multiplier, "max_multiplier", max_multiplier, positive=True)
        initial = check_nonnegative_number("multiplier", multiplier, positive=True)
        if not min_multiplier <= initial <= max_multiplier:
            raise ValueError(
                f"multiplier must lie in [min_multiplier, max_multiplier] = "
                f"[{min_multiplier}, {max_multiplier}], got {initial}"
            )
        self.min_multiplier = float(min_multiplier)
        self.max_multiplier = float(max_multiplier)
        self.register_buffer("multiplier", new_state(initial, torch.float32))
        self.register_buffer("constraint_ma", new_state(0.0, torch.float32))
        # Whether the moving average holds a constraint yet (its first finite one seeds it,
        # whatever the step: a loaded or carried-over step does not blend with the 0).
        self.register_buffer("seeded", new_state(False, torch.bool))
        self.register_buffer("skipped", new_state(0, torch.long))

    @override
    def state_ranges(self) -> dict[str, tuple[float, float]]:
        ranges = super().state_ranges()
        ranges["multiplier"] = (self.min_multiplier, self.max_multiplier)
        ranges["constraint_ma"] = (-math.inf, math.inf)
        return ranges

    def compute(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        r"""$\bar R + \lambda (\bar D - \kappa)$; see `Objective.compute`."""
        target = self.hyperparameter(self.target_distortion, rate)
        constraint = self.mean(distortion, weight) - target
        # Clone: the buffers are updated in place below, after the loss has used them.
        multiplier = self.multiplier.clone()
        if self.advancing:
            observed = constraint.detach()
            finite = torch.isfinite(observed)
            blended = self.alpha * self.constraint_ma + (1.0 - self.alpha) * observed
            # The average starts at the first finite constraint (no update before it).
            moving = torch.where(self.seeded, blended, observed)
            moving = torch.where(finite, moving, self.constraint_ma)
            used = constraint + (moving - constraint).detach()
            lr = self.hyperparameter(self.lr, rate)
            updated = (multiplier * torch.exp(lr * moving)).clamp(
                self.min_multiplier, self.max_multiplier
            )
            self.constraint_ma.copy_(moving)
            self.seeded.logical_or_(finite)
            self.multiplier.copy_(torch.where(finite, updated, multiplier))
            self.skipped.add_((~finite).long())
        else:
            moving = self.constraint_ma.clone()
            used = constraint
        loss = self.mean(rate, weight) + multiplier.to(constraint.dtype) * used
        return ObjectiveOutput(
            loss,
            {"multiplier": multiplier, "constraint_ma": moving, "target_distortion": target},
        )

    @override
    def extra_repr(self) -> str:
        numbers = numbers_repr(target_distortion=self.target_distortion, lr=self.lr)
        rest = (
            f"alpha={self.alpha}, min_multiplier={self.min_multiplier}, "
            f"max_multiplier={self.max_multiplier}"
        )
        return ", ".join(filter(None, (numbers, rest)))


class RateController(Objective):
    r"""Hold the rate at a set point with a PI controller on β (Shao et al., 2020, ControlVAE).

    Trains on $\bar D + \beta_t \bar R$ with β set every step from the error of the
    detached batch-mean rate, by default relative to the set point (scale-free gains):

    $$
    e_t = \frac{R_{set} - \bar R_t}{\max(R_{set}, 10^{-3})}, \qquad
    \beta_t = \frac{K_p}{1 + e^{e_t}} + I_t + \beta_{min}, \qquad
    I_t = I_{t-1} - K_i\, e_t.
    $$

    ``error="absolute"`` uses the paper's $e_t = R_{set} - \bar R_t$ in nats. A rate above
    the set point ($e_t < 0$) raises β, one below lowers it. Anti-windup by integrator
    clamping: $I_t$ is limited to the range that keeps the unclamped β in
    ``[beta_min, beta_max]``, so the integrator never accumulates beyond saturation and β
    leaves a bound as soon as the error changes sign. (The paper instead freezes the
    integrator whenever the previous β was out of bounds, which can lock β at a bound.)
    Outside training nothing updates and the last β is used; a non-finite batch rate
    leaves the state unchanged and is counted in ``skipped``.

    The defaults ($K_p = 1$, $K_i = 0.05$ on the relative error, β in ``[0, 10]``) reach
    set points both below the ELBO-trained rate (β > 1) and above it (β < 1) within a few
    hundred steps. The paper's values, ``kp=0.01, ki=1e-4, beta_max=1.0,
    error="absolute"`` (its language-modelling setting), move β by about $10^{-4}$ per
    nat of error per step: they need tens of thousands of steps, and with ``beta_max=1``
    cannot hold a rate below the ELBO-trained one.

    Args:
        target_rate: set point $R_{set}$, nats per example; a number or a schedule.
        kp: proportional gain $K_p \ge 0$; a number or a schedule.
        ki: integral gain $K_i \ge 0$; a number or a schedule.
        beta_min: lower bound of β, ``>= 0``.
        beta_max: upper bound of β, ``> beta_min``.
        error: ``"relative"`` (divided by the set point) or ``"absolute"`` (nats).

    Attributes:
        beta: 0-dim float32 buffer, the β of the last training step (``beta_min`` initially).
        integral: 0-dim float32 buffer, the integrator $I_t$.
        skipped: 0-dim int64 buffer, training steps whose non-finite rate left the state
            unchanged.

    Examples:
        >>> import torch
        >>> controller = RateController(5.0, kp=0.01, ki=0.1, error="absolute")
        >>> out = controller(torch.tensor([6.0]), torch.tensor([1.0]))  # e = 5 - 6 = -1
        >>> out.hyper["beta"]  # 0.01 * sigmoid(1) + 0.1 * 1
        tensor(0.1073)
    """

    beta: Tensor
    integral: Tensor
    skipped: Tensor
    _hyperparameters: ClassVar[dict[str, bool]] = {"target_rate": False, "kp": False, "ki": False}
    _config = ("beta_min", "beta_max", "error")

    def __init__(
        self,
        target_rate: Hyperparameter,
        kp: Hyperparameter = 1.0,
        ki: Hyperparameter = 0.05,
        *,
        beta_min: float = 0.0,
        beta_max: float = 10.0,
        error: Literal["relative", "absolute"] = "relative",
    ) -> None:
        super().__init__()
        self.target_rate = target_rate
        self.kp = kp
        self.ki = ki
        _bounds("beta_min", beta_min, "beta_max", beta_max, positive=False)
        if error not in ("relative", "absolute"):
            raise ValueError(f"error must be 'relative' or 'absolute', got {error!r}")
        self.error = error
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        self.register_buffer("beta", new_state(self.beta_min, torch.float32))
        self.register_buffer("integral", new_state(0.0, torch.float32))
        self.register_buffer("skipped", new_state(0, torch.long))

    @property
    def span(self) -> float:
        """``beta_max - beta_min``."""
        return self.beta_max - self.beta_min

    @override
    def state_ranges(self) -> dict[str, tuple[float, float]]:
        ranges = super().state_ranges()
        ranges["beta"] = (self.beta_min, self.beta_max)
        ranges["integral"] = (-math.inf, math.inf)
        return ranges

    def compute(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        r"""$\bar D + \beta_t \bar R$ with a controlled β; see `Objective.compute`."""
        target = self.hyperparameter(self.target_rate, rate)
        mean_rate = self.mean(rate, weight)
        beta = self.beta.clone()  # the buffers are updated in place below
        if self.advancing:
            error = target - mean_rate.detach()
            if self.error == "relative":
                error = error / target.clamp_min(1e-3)
            finite = torch.isfinite(error)
            # K_p / (1 + exp(e)) = K_p * sigmoid(-e), which cannot overflow.
            proportional = self.hyperparameter(self.kp, rate) * torch.sigmoid(-error)
            candidate = self.integral - self.hyperparameter(self.ki, rate) * error
            # Anti-windup: the integrator only goes as far as it takes to reach a bound.
            low = -proportional
            integral = torch.minimum(torch.maximum(candidate, low), low + self.span)
            updated = (proportional + integral + self.beta_min).clamp(self.beta_min, self.beta_max)
            beta = torch.where(finite, updated, beta)
            self.integral.copy_(torch.where(finite, integral, self.integral))
            self.beta.copy_(beta)
            self.skipped.add_((~finite).long())
        loss = self.mean(distortion, weight) + beta.to(mean_rate.dtype) * mean_rate
        return ObjectiveOutput(loss, {"beta": beta, "target_rate": target})

    @override
    def extra_repr(self) -> str:
        numbers = numbers_repr(target_rate=self.target_rate, kp=self.kp, ki=self.ki)
        rest = f"beta_min={self.beta_min}, beta_max={self.beta_max}, error={self.error!r}"
        return ", ".join(filter(None, (numbers, rest)))
