"""The base class of schedules, the record of their settings, and shared argument checks."""

from __future__ import annotations

import json
import math
import numbers
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rdloss._checks import check_positive_int

__all__ = [
    "Schedule",
    "check_config_state",
    "check_real",
    "check_steps",
    "config_state",
    "float64_step",
    "in_step_dtype",
]


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
    # A schedule's class first: a Clamp of a Linear loaded into a Clamp of a Shifted is told
    # so, rather than that the Linear has no ``end``.
    for key in sorted(set(then) | set(now), key=lambda key: (key != "schedule", key)):
        if then.get(key) != now.get(key):
            if key == "schedule":
                raise ValueError(
                    f"the checkpoint holds a {then.get(key)} schedule where this one has a "
                    f"{now.get(key)}: build the schedule as the checkpoint's"
                )
            raise ValueError(
                f"{owner} was saved with {key}={then.get(key)!r} but this one has "
                f"{key}={now.get(key)!r}: build it with the checkpoint's settings"
            )


def check_real(name: str, value: object) -> float:
    """Return ``value`` as a finite float or raise naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def float64_step(step: Tensor) -> Tensor:
    """``step`` in float64: float32 cannot count past 2**24."""
    # A type check is free at trace time, so it also runs under torch.compile.
    if not isinstance(step, Tensor):
        raise TypeError(
            f"step must be a torch.Tensor (0-dim, the objective's step), got {type(step).__name__}"
        )
    return step.to(torch.float64)


def in_step_dtype(value: Tensor, step: Tensor) -> Tensor:
    """``value`` in the step's floating dtype, else the default dtype."""
    return value.to(step.dtype if step.is_floating_point() else torch.get_default_dtype())


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


def check_ramp_length(value: object) -> int | float:
    """A ramp's length: a step count, or a real number ``> 0``.

    A fractional length is a published schedule's own (NVAE ramps over ``0.3 n`` steps of an
    ``n``-step run); an integer-valued float stays an int, as in `check_steps`.
    """
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        if value <= 0:
            raise ValueError(f"steps must be > 0, got {value}")
        return value
    return check_steps(value)


def check_steps(value: object) -> int:
    """A step count; a float with an integer value (``1e5`` in a YAML config) is accepted."""
    if isinstance(value, float):
        if not value.is_integer():
            raise TypeError(
                f"steps must be an int (or a float with an integer value, e.g. 1e5), got {value}"
            )
        value = int(value)
    return check_positive_int("steps", value)
