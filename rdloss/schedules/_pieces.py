r"""Pieces that build a schedule from another: `Shifted` moves it in time, `Clamp` bounds it.

Published schedules are often a ramp moved in time and held between bounds. With these two
pieces they are one line, and exact: each piece applies one floating-point operation
(``t - s``, ``max``/``min``) in float64, the operation the published code applies.

* NVAE's ``kl_coeff`` (Vahdat & Kautz, 2020): a constant ``1e-4`` for the first
  ``0.0001 n`` of ``n`` steps, a linear ramp over the next ``0.3 n``, then 1:
  ``Clamp(Shifted(Linear(0.0, 1.0, steps=0.3 * n), steps=0.0001 * n), min=1e-4)``.
* Pyro's deep Markov model example: a linear ramp from ``0.2`` evaluated one step ahead:
  ``Shifted(Linear(0.2, 1.0, steps=epochs * batches), steps=-1)``.
"""

from __future__ import annotations

from torch import Tensor
from typing_extensions import override

from rdloss.schedules._base import Schedule, check_real, float64_step, in_step_dtype

__all__ = ["Clamp", "Shifted"]


def _check_schedule(schedule: object) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"schedule must be an rdloss.schedules.Schedule (e.g. Linear(0.0, 1.0, "
            f"steps=T)), got {type(schedule).__name__}"
        )
    return schedule


def _bound(name: str, value: object) -> float | None:
    return None if value is None else check_real(name, value)


class Shifted(Schedule):
    r"""``schedule`` moved ``steps`` steps later in time (earlier if ``steps < 0``).

    $$
    v(t) = u\big(\max(t - s,\, 0)\big)
    $$

    for the inner schedule $u$ and $s$ = ``steps``. A delay ($s > 0$) holds $u(0)$ for the
    first $s$ steps, then runs $u$ from its start; a negative $s$ runs $u$ $|s|$ steps
    ahead, e.g. ``steps=-1`` for code that counts the current step from 1 (Pyro's deep
    Markov model example anneals with $(t + 1)/T$ where `Linear` uses $t/T$). The
    difference $t - s$ is taken in float64, as the published formulas take it, so a
    fractional $s$ (NVAE's delay is $0.0001\,n$ for a run of $n$ steps) is reproduced
    exactly.

    Args:
        schedule: the inner schedule $u$.
        steps: the shift $s$, a finite real number: positive delays, negative advances.

    Examples:
        >>> import torch
        >>> from rdloss.schedules import Linear
        >>> ramp = Linear(0.0, 1.0, steps=10)
        >>> [Shifted(ramp, steps=5)(torch.tensor(t)).item() for t in (0, 5, 10)]
        [0.0, 0.0, 0.5]
        >>> Shifted(ramp, steps=-1)(torch.tensor(0))
        tensor(0.1000)
    """

    _config = ("steps",)

    def __init__(self, schedule: Schedule, *, steps: float) -> None:
        super().__init__()
        self.schedule = _check_schedule(schedule)
        self.steps = check_real("steps", steps)

    def forward(self, step: Tensor) -> Tensor:
        """The inner schedule at ``max(step - steps, 0)``; see `Schedule.forward`."""
        inner = (float64_step(step) - self.steps).clamp(min=0.0)
        return in_step_dtype(self.schedule(inner), step)

    @override
    def value_range(self) -> tuple[float, float] | None:
        """The inner schedule's range.

        Exact for ``steps >= 0`` (the inner schedule sees every step ``>= 0``); for
        ``steps < 0`` it bounds the values, as the first ``|steps|`` steps are skipped.
        """
        return self.schedule.value_range()

    @override
    def extra_repr(self) -> str:
        return f"steps={self.steps}"


class Clamp(Schedule):
    r"""``schedule`` held between ``min`` and ``max``: a floor, a ceiling or both.

    $$
    v(t) = \min\big(\max(u(t),\, \mathrm{min}),\, \mathrm{max}\big)
    $$

    for the inner schedule $u$, as `torch.clamp` computes it (a bound left ``None`` is not
    applied). NVAE's KL coefficient never goes below ``1e-4``: ``Clamp(..., min=1e-4)``.

    Args:
        schedule: the inner schedule $u$.
        min: the floor, a finite real number, or ``None`` for none.
        max: the ceiling, a finite real number ``>= min``, or ``None`` for none.

    Examples:
        >>> import torch
        >>> from rdloss.schedules import Linear
        >>> floored = Clamp(Linear(0.0, 1.0, steps=10), min=0.25)
        >>> [floored(torch.tensor(t)).item() for t in (0, 5, 10)]
        [0.25, 0.5, 1.0]
    """

    _config = ("min", "max")

    def __init__(
        self, schedule: Schedule, *, min: float | None = None, max: float | None = None
    ) -> None:
        super().__init__()
        self.schedule = _check_schedule(schedule)
        self.min = _bound("min", min)
        self.max = _bound("max", max)
        if self.min is None and self.max is None:
            raise ValueError("Clamp needs min or max (or both), got neither")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min must be <= max, got min={self.min} and max={self.max}")

    def forward(self, step: Tensor) -> Tensor:
        """The inner schedule, clamped; see `Schedule.forward`."""
        inner = self.schedule(float64_step(step))
        return in_step_dtype(inner.clamp(min=self.min, max=self.max), step)

    def _clip(self, value: float) -> float:
        if self.min is not None and value < self.min:
            value = self.min
        if self.max is not None and value > self.max:
            value = self.max
        return value

    @override
    def value_range(self) -> tuple[float, float] | None:
        """The inner range clamped; ``(min, max)`` for an inner schedule without one."""
        inner = self.schedule.value_range()
        if inner is not None:
            return (self._clip(inner[0]), self._clip(inner[1]))
        if self.min is not None and self.max is not None:
            return (self.min, self.max)
        return None

    @override
    def extra_repr(self) -> str:
        bounds = {"min": self.min, "max": self.max}
        return ", ".join(f"{name}={value}" for name, value in bounds.items() if value is not None)
