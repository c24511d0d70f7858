"""Hyperparameters of objectives: numbers in float64 buffers, or schedules of the step."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, TypeAlias, overload

import torch
from torch import Tensor

from rdloss._checks import check_nonnegative_number
from rdloss.schedules import Schedule

if TYPE_CHECKING:
    from rdloss.objectives._base import Objective

__all__ = [
    "Hyperparameter",
    "HyperparameterAttribute",
    "HyperparameterCache",
    "as_hyperparameter",
]

Hyperparameter: TypeAlias = float | Schedule
"""A number (constant) or a `Schedule` of the objective's step."""


def as_hyperparameter(name: str, value: object, *, positive: bool = False) -> float | Schedule:
    """Validate a hyperparameter: a schedule is kept, a number becomes a float.

    A built-in schedule whose range (`Schedule.value_range`) goes below 0 is rejected; a
    user schedule without a known range is trusted.

    Args:
        name: argument name used in error messages.
        value: a `Schedule` or a real number (or 0-dim tensor).
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
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise TypeError(
            f"{name} must be a real number or an rdloss.schedules.Schedule, "
            f"got {type(value).__name__}"
        )
    return check_nonnegative_number(name, value, positive=positive)


class HyperparameterAttribute:
    """A hyperparameter attribute of an `Objective` that validates every assignment.

    Assigning a number stores it in a float64 buffer of the same name (one element, updated
    in place by later assignments), so a compiled loss reads it as a tensor and does not
    recompile when the value changes; assigning a `Schedule` registers it as a submodule.
    Reading gives the number as a 0-dim view of the buffer, or the schedule. (Shape
    ``(1,)`` rather than ``()``: torch.compile turns a 0-dim float64 input into a Python
    float and re-traces the graph once.) Both the constructor and later assignments
    (``objective.beta = 0.3``, e.g. annealing by hand) go through `as_hyperparameter`.

    Args:
        positive: require a number ``> 0`` rather than ``>= 0``.

    Examples:
        >>> from rdloss.objectives import Beta
        >>> objective = Beta(0.5)
        >>> objective.beta = 0.25
        >>> objective.beta
        tensor(0.2500, dtype=torch.float64)
        >>> objective.beta = -1.0
        Traceback (most recent call last):
        ...
        ValueError: beta must be >= 0, got -1.0
    """

    def __init__(self, *, positive: bool = False) -> None:
        self.positive = positive
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> HyperparameterAttribute: ...
    @overload
    def __get__(self, obj: Objective, owner: type | None = None) -> Tensor | Schedule: ...
    def __get__(
        self, obj: Objective | None, owner: type | None = None
    ) -> HyperparameterAttribute | Tensor | Schedule:
        if obj is None:
            return self
        schedule = obj._modules.get(self.name)
        if isinstance(schedule, Schedule):
            return schedule
        buffer = obj._buffers.get(self.name)
        if buffer is None:
            raise AttributeError(f"{type(obj).__name__}.{self.name} has not been set")
        return obj._hyperparameter_cache.view(self.name, buffer)

    def __set__(self, obj: Objective, value: Hyperparameter | Tensor) -> None:
        if isinstance(value, Tensor) and value.shape == (1,):
            # The buffer itself, as load_state_dict(assign=True) assigns it.
            value = value.reshape(())
        checked = as_hyperparameter(self.name, value, positive=self.positive)
        if isinstance(checked, Schedule):
            obj._buffers.pop(self.name, None)
            obj._modules[self.name] = checked
            return
        obj._modules.pop(self.name, None)
        buffer = obj._buffers.get(self.name)
        if buffer is None:
            obj.register_buffer(self.name, torch.tensor([checked], dtype=torch.float64))
        else:
            with torch.no_grad():  # in place: the same tensor, so compiled code reads it
                buffer.fill_(checked)


class HyperparameterCache:
    """Tensors derived from an objective's hyperparameter buffers, kept between calls.

    Reading ``objective.beta`` gives a 0-dim view of its ``(1,)`` float64 buffer, and
    `Objective.hyperparameter` turns that into the dtype and device of the rate: an
    operator call each (and on a GPU a device copy) on every loss call. The view is made
    once per buffer, and the copy is kept until the buffer changes (an assignment, a
    controller's update or ``load_state_dict`` bumps its version counter; ``.to()``
    replaces it). Nothing is kept while compiling or in inference mode (a copy made there
    could not be saved for a later backward).
    """

    __slots__ = ("_copies", "_views")

    def __init__(self) -> None:
        self._views: dict[str, Tensor] = {}
        # (buffer, its version, the copy): a replaced buffer may restart at the same version.
        self._copies: dict[tuple[str, torch.dtype, torch.device], tuple[Tensor, int, Tensor]] = {}

    @staticmethod
    def _keeps() -> bool:
        return not torch.compiler.is_compiling() and not torch.is_inference_mode_enabled()

    def view(self, name: str, buffer: Tensor) -> Tensor:
        """The 0-dim view of the hyperparameter ``name``'s ``buffer``."""
        if not self._keeps():
            return buffer.view(())
        view = self._views.get(name)
        if view is None or view._base is not buffer:
            view = self._views[name] = buffer.view(())
        return view

    def copy(self, value: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``value`` in ``dtype`` on ``device``, as a tensor later assignments do not change.

        Kept only for the views this cache made (one per hyperparameter, so the cache
        cannot grow with the calls); any other tensor is copied anew.
        """
        if not self._keeps():  # first: nothing of the cache is traced while compiling
            return value.to(device=device, dtype=dtype, copy=True)
        name = next((k for k, v in self._views.items() if v is value), None)
        base = value._base
        if name is None or base is None or base.is_inference():
            return value.to(device=device, dtype=dtype, copy=True)
        key = (name, dtype, device)
        hit = self._copies.get(key)
        if hit is not None and hit[0] is base and hit[1] == base._version:
            return hit[2]
        copy = value.to(device=device, dtype=dtype, copy=True)
        self._copies[key] = (base, base._version, copy)
        return copy
