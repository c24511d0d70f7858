"""Hyperparameters of objectives: numbers in float64 buffers, or schedules of the step."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeAlias, overload

import torch
from torch import Tensor

from rdloss._validation import check_nonnegative_number
from rdloss.schedules import Schedule

if TYPE_CHECKING:
    from rdloss.objectives._base import Objective

__all__ = ["CastCache", "Hyperparameter", "HyperparameterAttribute", "as_hyperparameter"]

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
        if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
            return buffer.view(())  # nothing kept that a later autograd call would trip on
        return _view(obj, self.name, buffer)

    def __set__(self, obj: Objective, value: Hyperparameter | Tensor) -> None:
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


def _view(obj: Objective, name: str, buffer: Tensor) -> Tensor:
    """The 0-dim view of ``buffer``, made once: a view costs an operator call per read."""
    views: dict[str, Tensor] = obj.__dict__.setdefault("_hyperparameter_views", {})
    view = views.get(name)
    if view is None or view._base is not buffer:
        view = views[name] = buffer.view(())
    return view


class CastCache:
    """The float32 (or the model's dtype) copies of an objective's float64 hyperparameters.

    `Objective.hyperparameter` turns a float64 buffer into the dtype and device of the rate
    on every call; this keeps the copy until the buffer changes (an assignment, a
    controller's update or ``load_state_dict`` bumps its version counter; ``.to()``
    replaces it), which saves an operator call, and on a GPU a device copy, per call.
    """

    __slots__ = ("_copies",)

    def __init__(self) -> None:
        self._copies: dict[tuple[int, torch.dtype, torch.device], tuple[Tensor, int, Tensor]] = {}

    def get(
        self,
        value: Tensor,
        dtype: torch.dtype,
        device: torch.device,
        buffers: Iterable[Tensor | None],
    ) -> Tensor:
        """``value`` (a buffer or a view of one) in ``dtype`` on ``device``, as a new tensor.

        Only views of ``buffers`` are kept (anything else is copied anew): the key is the
        buffer itself, so the cache cannot grow with the calls.
        """
        base = value if value._base is None else value._base
        cacheable = (
            not torch.compiler.is_compiling()
            # A copy made in inference mode cannot be saved for a later backward, and
            # inference tensors have no version counter.
            and not torch.is_inference_mode_enabled()
            and not base.is_inference()
            and any(base is b for b in buffers)
        )
        if not cacheable:
            return value.to(device=device, dtype=dtype, copy=True)
        key = (id(base), dtype, device)
        hit = self._copies.get(key)
        if hit is not None and hit[0] is base and hit[1] == base._version:
            return hit[2]
        copy = value.to(device=device, dtype=dtype, copy=True)
        self._copies[key] = (base, base._version, copy)
        return copy
