"""The ramps and the constant: `Constant`, `Linear`, `Cyclical`, `Sigmoid`, `Cosine`."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from typing_extensions import override

from rdloss._checks import check_positive_int
from rdloss.schedules._base import (
    Schedule,
    check_ramp_length,
    check_real,
    check_steps,
    float64_step,
    in_step_dtype,
)

__all__ = ["Constant", "Cosine", "Cyclical", "Linear", "Sigmoid"]


def _lerp(start: float, end: float, weight: Tensor) -> Tensor:
    # torch.lerp is exact at both ends (weight 0 gives start, weight 1 gives end).
    return torch.lerp(torch.full_like(weight, start), torch.full_like(weight, end), weight)


class Constant(Schedule):
    """The same value at every step.

    Args:
        value: the value.

    Examples:
        >>> import torch
        >>> Constant(0.5)(torch.tensor(7))
        tensor(0.5000)
    """

    _config = ("value",)

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = check_real("value", value)

    def forward(self, step: Tensor) -> Tensor:
        """``value``; see `Schedule.forward`."""
        return in_step_dtype(torch.full_like(float64_step(step), self.value), step)

    @override
    def value_range(self) -> tuple[float, float]:
        return (self.value, self.value)

    @override
    def extra_repr(self) -> str:
        return f"value={self.value}"


class _Ramp(Schedule):
    """Shared by ramps from ``start`` to ``end`` over ``steps`` steps."""

    _config = ("start", "end", "steps")

    def __init__(self, start: float, end: float, *, steps: int | float) -> None:
        super().__init__()
        self.start = check_real("start", start)
        self.end = check_real("end", end)
        self.steps = check_ramp_length(steps)

    def _progress(self, step: Tensor) -> Tensor:
        """Fraction of the ramp done at ``step``, in ``[0, 1]``."""
        return (float64_step(step) / self.steps).clamp(0.0, 1.0)

    @override
    def value_range(self) -> tuple[float, float]:
        return (min(self.start, self.end), max(self.start, self.end))

    @override
    def extra_repr(self) -> str:
        return f"start={self.start}, end={self.end}, steps={self.steps}"


class Linear(_Ramp):
    r"""Linear ramp from ``start`` to ``end`` over ``steps`` steps, then ``end``.

    $$
    v(t) = \mathrm{start} + (\mathrm{end} - \mathrm{start})\,\min(t / T, 1)
    $$

    KL warm-up (Bowman et al., 2016; Sønderby et al., 2016) is ``Linear(0.0, 1.0, steps=T)``
    for ``beta``; Burgess et al. (2018) raise the capacity with ``Linear(0.0, 25.0,
    steps=100_000)``.

    Args:
        start: value at step 0.
        end: value from step ``steps`` on.
        steps: length ``T`` of the ramp: a step count ``>= 1`` (an integer-valued float such
            as ``1e5``, as configs written for AntixK's PyTorch-VAE give it, is one), or a
            fractional length ``> 0`` (NVAE ramps over ``0.3 n`` steps).

    Examples:
        >>> import torch
        >>> Linear(0.0, 1.0, steps=10)(torch.tensor(5))
        tensor(0.5000)
    """

    def forward(self, step: Tensor) -> Tensor:
        """Linear ramp; see `Schedule.forward`."""
        return in_step_dtype(_lerp(self.start, self.end, self._progress(step)), step)


class Cyclical(Schedule):
    r"""Cyclical annealing (Fu et al., 2019): ``cycles`` linear ramps over ``steps`` steps.

    The run of ``T = steps`` steps is split into ``M = cycles`` cycles of length ``T / M``.
    Within each cycle the value rises linearly from ``start`` to ``end`` over the first
    fraction ``R = ratio`` of the cycle and then holds ``end``:

    $$
    \tau = \frac{t \bmod (T/M)}{T/M}, \qquad
    v(t) = \mathrm{start} + (\mathrm{end} - \mathrm{start})\,\min(\tau / R, 1),
    $$

    and ``v(t) = end`` from step ``T`` on. The defaults ``M = 4``, ``R = 0.5`` are the paper's.

    Args:
        start: value at the beginning of each cycle.
        end: value held for the rest of each cycle.
        steps: total number of steps ``T`` covered by the cycles.
        cycles: number of cycles ``M``, from 1 to ``steps`` (a cycle lasts at least a step).
        ratio: fraction ``R`` of each cycle spent ramping, in ``(0, 1]``.

    Examples:
        >>> import torch
        >>> schedule = Cyclical(steps=80)  # 4 cycles of 20 steps, ramps of 10 steps
        >>> [round(schedule(torch.tensor(t)).item(), 2) for t in (0, 5, 10, 19, 20, 25)]
        [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    """

    _config = ("start", "end", "steps", "cycles", "ratio")

    def __init__(
        self,
        start: float = 0.0,
        end: float = 1.0,
        *,
        steps: int | float,
        cycles: int = 4,
        ratio: float = 0.5,
    ) -> None:
        super().__init__()
        self.start = check_real("start", start)
        self.end = check_real("end", end)
        self.steps = check_steps(steps)
        self.cycles = check_positive_int("cycles", cycles)
        self.ratio = check_real("ratio", ratio)
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.cycles > self.steps:
            raise ValueError(
                f"cycles must be <= steps (each cycle lasts at least one step), got "
                f"cycles={self.cycles} and steps={self.steps}"
            )

    def forward(self, step: Tensor) -> Tensor:
        """Cyclical ramp; see `Schedule.forward`."""
        t = float64_step(step)
        period = self.steps / self.cycles
        tau = torch.remainder(t, period) / period
        weight = (tau / self.ratio).clamp(max=1.0)
        weight = torch.where(t >= self.steps, torch.ones_like(weight), weight)
        return in_step_dtype(_lerp(self.start, self.end, weight), step)

    @override
    def value_range(self) -> tuple[float, float]:
        return (min(self.start, self.end), max(self.start, self.end))

    @override
    def extra_repr(self) -> str:
        return (
            f"start={self.start}, end={self.end}, steps={self.steps}, cycles={self.cycles}, "
            f"ratio={self.ratio}"
        )


class Sigmoid(Schedule):
    r"""Logistic ramp from ``start`` to ``end`` centred at ``steps / 2``.

    $$
    v(t) = \mathrm{start} + (\mathrm{end} - \mathrm{start})\,
    \mathrm{sigmoid}\big(s\,(t / T - \tfrac12)\big)
    $$

    with ``T = steps`` and ``s = steepness``; with the default ``s = 10`` the value is within
    0.7% of the range of ``start`` at step 0 and of ``end`` at step ``T``. Bowman et al.
    (2016) used the logistic KL weight $1/(1 + e^{-k(t - t_0)})$: that is ``T = 2 t_0``,
    ``s = k T``.

    Args:
        start: value approached before the ramp.
        end: value approached after it.
        steps: width ``T`` of the ramp, ``>= 1``.
        steepness: ``s > 0``.

    Examples:
        >>> import torch
        >>> Sigmoid(0.0, 1.0, steps=100)(torch.tensor(50))
        tensor(0.5000)
    """

    _config = ("start", "end", "steps", "steepness")

    def __init__(
        self, start: float, end: float, *, steps: int | float, steepness: float = 10.0
    ) -> None:
        super().__init__()
        self.start = check_real("start", start)
        self.end = check_real("end", end)
        self.steps = check_steps(steps)
        self.steepness = check_real("steepness", steepness)
        if self.steepness <= 0:
            raise ValueError(f"steepness must be > 0, got {self.steepness}")

    def forward(self, step: Tensor) -> Tensor:
        """Logistic ramp; see `Schedule.forward`."""
        weight = torch.sigmoid(self.steepness * (float64_step(step) / self.steps - 0.5))
        return in_step_dtype(_lerp(self.start, self.end, weight), step)

    @override
    def value_range(self) -> tuple[float, float]:
        # From v(0) towards ``end``, which is approached but never passed.
        tail = math.exp(-0.5 * self.steepness)  # sigmoid(-s / 2), without overflow
        first = self.start + (self.end - self.start) * tail / (1.0 + tail)
        return (min(first, self.end), max(first, self.end))

    @override
    def extra_repr(self) -> str:
        return f"start={self.start}, end={self.end}, steps={self.steps}, steepness={self.steepness}"


class Cosine(_Ramp):
    r"""Half-cosine ramp from ``start`` to ``end`` over ``steps`` steps, then ``end``.

    $$
    v(t) = \mathrm{start} + (\mathrm{end} - \mathrm{start})\,
    \tfrac12\big(1 - \cos(\pi \min(t / T, 1))\big)
    $$

    Args:
        start: value at step 0.
        end: value from step ``steps`` on.
        steps: length ``T`` of the ramp: a step count ``>= 1`` (an integer-valued float such
            as ``1e5``, as configs written for AntixK's PyTorch-VAE give it, is one), or a
            fractional length ``> 0`` (NVAE ramps over ``0.3 n`` steps).

    Examples:
        >>> import torch
        >>> Cosine(0.0, 1.0, steps=10)(torch.tensor(5))
        tensor(0.5000)
    """

    def forward(self, step: Tensor) -> Tensor:
        """Half-cosine ramp; see `Schedule.forward`."""
        progress = self._progress(step)
        return in_step_dtype(
            _lerp(self.start, self.end, 0.5 * (1.0 - torch.cos(math.pi * progress))), step
        )
