"""Hyperparameters of objectives: checks of numbers and schedules, and new state tensors."""

from __future__ import annotations

import math
import numbers
from typing import TypeAlias

import torch
from torch import Tensor, nn

from rdloss._checks import check_nonnegative_number
from rdloss.schedules import Schedule

__all__ = [
    "Hyperparameter",
    "as_hyperparameter",
    "check_loaded",
    "new_state",
    "store_hyperparameter",
]

Hyperparameter: TypeAlias = float | Schedule
"""A number (constant) or a `Schedule` of the objective's step."""


def new_state(value: float | list[float], dtype: torch.dtype) -> Tensor:
    """A buffer's initial tensor: a normal tensor even when built under inference mode.

    (A tensor made under ``torch.inference_mode()`` cannot be updated in place outside it,
    which every training step does.)
    """
    with torch.inference_mode(False):
        return torch.tensor(value, dtype=dtype)


def as_hyperparameter(name: str, value: object, *, positive: bool = False) -> float | Schedule:
    """Validate a hyperparameter: a schedule is kept, a number becomes a float.

    A built-in schedule whose range (`Schedule.value_range`) goes below 0 is rejected; a
    user schedule without a known range is trusted.

    Args:
        name: argument name used in error messages.
        value: a `Schedule`, a real number, or a one-element tensor.
        positive: require a number ``> 0`` rather than ``>= 0``.

    Returns:
        The schedule, or the number as a float.
    """
    if isinstance(value, Schedule):
        # A schedule may touch 0 where a number must be > 0 (a warm-up such as
        # lr=Linear(0.0, 0.1, steps=T)), but never go negative.
        bounds = value.value_range()
        if bounds is not None and bounds[0] < 0:
            raise ValueError(
                f"{name} must be >= 0 at every step, got a {type(value).__name__} schedule "
                f"whose values reach {bounds[0]}"
            )
        if positive and bounds is not None and bounds[1] <= 0:
            raise ValueError(
                f"{name} must be > 0 at some step, got a {type(value).__name__} schedule "
                "that stays at 0"
            )
        return value
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.reshape(())  # a (1,) buffer, as load_state_dict(assign=True) hands it
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise TypeError(
            f"{name} must be a real number or an rdloss.schedules.Schedule, "
            f"got {type(value).__name__}"
        )
    return check_nonnegative_number(name, value, positive=positive)


def check_loaded(key: str, value: object, low: float, high: float) -> None:
    """Refuse a loaded one-element state value outside ``[low, high]`` (or not finite)."""
    if not isinstance(value, Tensor) or value.numel() != 1 or value.is_meta:
        return  # a wrong type or shape is load_state_dict's own error
    number = value.item()
    if not (math.isfinite(number) and low <= number <= high):
        raise ValueError(f"state_dict[{key!r}] must be finite and in [{low}, {high}], got {number}")


def store_hyperparameter(
    module: nn.Module, name: str, value: float | Schedule, device: torch.device | None
) -> None:
    """Store a checked hyperparameter (`as_hyperparameter`) on ``module`` under ``name``.

    A number goes into a ``(1,)`` float64 buffer: written in place once it exists (the same
    tensor, so compiled code reads the new value without recompiling), registered on
    ``device`` otherwise. A `Schedule` becomes a submodule. Whichever form was there before
    is removed first.
    """
    buffer = dict(module.named_buffers(recurse=False)).get(name)
    if isinstance(value, Schedule):
        if buffer is not None:
            delattr(module, name)
        nn.Module.__setattr__(module, name, value)
        return
    if name in dict(module.named_children()):
        delattr(module, name)
    if buffer is not None and not buffer.is_meta:
        with torch.no_grad():  # in place: the same tensor, so compiled code reads it
            buffer.fill_(value)
        return
    tensor = new_state([value], torch.float64).to(device)
    if buffer is None:
        module.register_buffer(name, tensor)
    else:  # a meta buffer, replaced as load_state_dict(assign=True) expects
        nn.Module.__setattr__(module, name, tensor)
