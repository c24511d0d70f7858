r"""Schedules: hyperparameters as pure functions of the training step.

A schedule maps the step ``t`` (a 0-dim tensor) to a 0-dim floating tensor. Schedules are
stateless ``nn.Module`` subclasses: they have no parameters and no buffers; their
``state_dict`` records only their settings (``_extra_state``), so that a checkpoint of a
differently configured schedule is refused on load. The step itself is a buffer of the
objective that uses them (`rdloss.objectives.Objective.step`), which is what makes
checkpoint and resume exact. Because the step enters as a tensor, a compiled loss
does not recompile as it changes.

Every objective hyperparameter that takes a number also takes a schedule, e.g.
``Beta(Linear(0.0, 1.0, steps=10_000))`` for KL warm-up. Write your own by subclassing
`Schedule` and implementing `Schedule.forward` with tensor operations only; implement
`Schedule.value_range` as well if objectives should check its values when they are built
(the built-in schedules do, so ``Beta(Linear(-1.0, 1.0, steps=T))`` is rejected at once).

The step is evaluated in float64 (float32 cannot count past 2**24) and the output takes the
step's dtype if it is floating, else the default dtype (objectives pass a float64 step).
"""

from __future__ import annotations

import json
import math
import numbers
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from typing_extensions import override

from rdloss._checks import check_positive_int

__all__ = ["Constant", "Cosine", "Cyclical", "Linear", "Schedule", "Sigmoid"]


def config_state(config: dict[str, Any]) -> Tensor:
    """Settings as a module's ``_extra_state``: JSON in a uint8 tensor.

    A tensor keeps every ``state_dict`` value a tensor (safetensors, ``torch.testing``,
    utilities that ``.clone()`` or ``.to()`` every entry); JSON keeps it loadable with
    ``torch.load(weights_only=True)`` and readable by `check_config_state`.
    """
    text = json.dumps(config, sort_keys=True).encode()
    return torch.tensor(list(text), dtype=torch.uint8)


def check_config_state(owner: str, saved: object, current: Tensor) -> None:
    """Refuse a saved ``_extra_state`` whose settings differ from ``current``'s.

    Raises:
        ValueError: a setting differs (naming it, the saved and the current value), or
            ``saved`` is not a `config_state`.
    """
    now = json.loads(bytes(current.tolist()))
    then: object = None
    if isinstance(saved, Tensor) and saved.dtype == torch.uint8 and saved.ndim == 1:
        try:
            then = json.loads(bytes(saved.tolist()))
        except ValueError:
            then = None
    if not isinstance(then, dict):
        raise ValueError(
            f"{owner}: the checkpoint's _extra_state is not a record of its settings "
            f"(a uint8 tensor of JSON), got {type(saved).__name__}"
        )
    for key in sorted(set(then) | set(now)):
        if then.get(key) != now.get(key):
            raise ValueError(
                f"{owner} was saved with {key}={then.get(key)!r} but this one has "
                f"{key}={now.get(key)!r}: build it with the checkpoint's settings"
            )


def _real(name: str, value: object) -> float:
    """Return ``value`` as a finite float or raise naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def _as_float(step: Tensor) -> Tensor:
    """``step`` in float64: float32 cannot count past 2**24."""
    # A type check is free at trace time, so it also runs under torch.compile.
    if not isinstance(step, Tensor):
        raise TypeError(
            f"step must be a torch.Tensor (0-dim, the objective's step), got {type(step).__name__}"
        )
    return step.to(torch.float64)


def _out(value: Tensor, step: Tensor) -> Tensor:
    """``value`` in the step's floating dtype, else the default dtype."""
    return value.to(step.dtype if step.is_floating_point() else torch.get_default_dtype())


def _lerp(start: float, end: float, weight: Tensor) -> Tensor:
    # torch.lerp is exact at both ends (weight 0 gives start, weight 1 gives end).
    return torch.lerp(torch.full_like(weight, start), torch.full_like(weight, end), weight)


class Schedule(nn.Module, ABC):
    """Base class: a hyperparameter as a pure function of the step.

    The settings named in ``_config`` (and the class name) are recorded in ``state_dict``;
    loading a checkpoint whose settings differ raises ``ValueError``.
    """

    _config: ClassVar[tuple[str, ...]] = ()

    def get_extra_state(self) -> Tensor:
        """The class name and ``_config`` settings (see `config_state`)."""
        config = {name: getattr(self, name) for name in self._config}
        return config_state({"schedule": type(self).__name__, **config})

    def set_extra_state(self, state: Any) -> None:
        """Refuse a checkpoint of a different schedule; see `check_config_state`."""
        check_config_state(type(self).__name__, state, self.get_extra_state())

    @abstractmethod
    def forward(self, step: Tensor) -> Tensor:
        """Value at ``step``.

        Args:
            step: 0-dim integer or floating tensor, the number of training steps taken.

        Returns:
            0-dim floating tensor.
        """

    def value_range(self) -> tuple[float, float] | None:
        """Smallest and largest value taken over the steps ``t >= 0``, if known.

        Objectives use it to reject, when they are built, a schedule that would give a
        hyperparameter a forbidden value (e.g. a negative ``beta``) at some step.

        Returns:
            ``(low, high)``, or ``None`` for a schedule that does not know its range (the
            default for subclasses written by users).
        """
        return None


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
        self.value = _real("value", value)

    def forward(self, step: Tensor) -> Tensor:
        """``value``; see `Schedule.forward`."""
        return _out(torch.full_like(_as_float(step), self.value), step)

    @override
    def value_range(self) -> tuple[float, float]:
        return (self.value, self.value)

    @override
    def extra_repr(self) -> str:
        return f"value={self.value}"


def _steps(value: object) -> int:
    """A step count; a float with an integer value (``1e5`` in a YAML config) is accepted."""
    if isinstance(value, float):
        if not value.is_integer():
            raise TypeError(
                f"steps must be an int (or a float with an integer value, e.g. 1e5), got {value}"
            )
        value = int(value)
    return check_positive_int("steps", value)


class _Ramp(Schedule):
    """Shared by ramps from ``start`` to ``end`` over ``steps`` steps."""

    _config = ("start", "end", "steps")

    def __init__(self, start: float, end: float, *, steps: int | float) -> None:
        super().__init__()
        self.start = _real("start", start)
        self.end = _real("end", end)
        self.steps = _steps(steps)

    def _progress(self, step: Tensor) -> Tensor:
        """Fraction of the ramp done at ``step``, in ``[0, 1]``."""
        return (_as_float(step) / self.steps).clamp(0.0, 1.0)

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
        steps: length ``T`` of the ramp, ``>= 1``; an integer-valued float such as ``1e5``
            (as configs written for AntixK's PyTorch-VAE give it) is accepted.

    Examples:
        >>> import torch
        >>> Linear(0.0, 1.0, steps=10)(torch.tensor(5))
        tensor(0.5000)
    """

    def forward(self, step: Tensor) -> Tensor:
        """Linear ramp; see `Schedule.forward`."""
        return _out(_lerp(self.start, self.end, self._progress(step)), step)


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
        self.start = _real("start", start)
        self.end = _real("end", end)
        self.steps = _steps(steps)
        self.cycles = check_positive_int("cycles", cycles)
        self.ratio = _real("ratio", ratio)
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if self.cycles > self.steps:
            raise ValueError(
                f"cycles must be <= steps (each cycle lasts at least one step), got "
                f"cycles={self.cycles} and steps={self.steps}"
            )

    def forward(self, step: Tensor) -> Tensor:
        """Cyclical ramp; see `Schedule.forward`."""
        t = _as_float(step)
        period = self.steps / self.cycles
        tau = torch.remainder(t, period) / period
        weight = (tau / self.ratio).clamp(max=1.0)
        weight = torch.where(t >= self.steps, torch.ones_like(weight), weight)
        return _out(_lerp(self.start, self.end, weight), step)

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
        self.start = _real("start", start)
        self.end = _real("end", end)
        self.steps = _steps(steps)
        self.steepness = _real("steepness", steepness)
        if self.steepness <= 0:
            raise ValueError(f"steepness must be > 0, got {self.steepness}")

    def forward(self, step: Tensor) -> Tensor:
        """Logistic ramp; see `Schedule.forward`."""
        weight = torch.sigmoid(self.steepness * (_as_float(step) / self.steps - 0.5))
        return _out(_lerp(self.start, self.end, weight), step)

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
        steps: length ``T`` of the ramp, ``>= 1``; an integer-valued float such as ``1e5``
            (as configs written for AntixK's PyTorch-VAE give it) is accepted.

    Examples:
        >>> import torch
        >>> Cosine(0.0, 1.0, steps=10)(torch.tensor(5))
        tensor(0.5000)
    """

    def forward(self, step: Tensor) -> Tensor:
        """Half-cosine ramp; see `Schedule.forward`."""
        progress = self._progress(step)
        return _out(_lerp(self.start, self.end, 0.5 * (1.0 - torch.cos(math.pi * progress))), step)
