"""The objective interface, its step buffer, and hyperparameters that may be schedules."""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import NamedTuple, TypeAlias

import torch
from torch import Tensor, nn

from rdloss._validation import check_nonnegative_number
from rdloss.schedules import Schedule

__all__ = [
    "Hyperparameter",
    "Objective",
    "ObjectiveOutput",
    "as_hyperparameter",
    "numbers_repr",
]

Hyperparameter: TypeAlias = float | Schedule
"""A number (constant) or a `Schedule` of the objective's step."""


def as_hyperparameter(name: str, value: object, *, positive: bool = False) -> float | Schedule:
    """Validate a hyperparameter: a schedule is kept, a number becomes a float.

    Args:
        name: argument name used in error messages.
        value: a `Schedule` or a real number (or 0-dim tensor).
        positive: require a number ``> 0`` rather than ``>= 0``.

    Returns:
        The schedule, or the number as a float.
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, Tensor)):
        raise TypeError(
            f"{name} must be a real number or an rdloss.schedules.Schedule, "
            f"got {type(value).__name__}"
        )
    return check_nonnegative_number(name, value, positive=positive)


def numbers_repr(**values: float | Schedule) -> str:
    """``extra_repr`` text for the constant hyperparameters (schedules print as children)."""
    return ", ".join(f"{k}={v}" for k, v in values.items() if isinstance(v, float))


class ObjectiveOutput(NamedTuple):
    """What an objective returns.

    Attributes:
        loss: 0-dim training loss.
        hyper: the objective's current named scalars (e.g. ``{"beta": ...}``), 0-dim tensors.
    """

    loss: Tensor
    hyper: dict[str, Tensor]


class Objective(nn.Module, ABC):
    """Base class of objectives.

    Subclasses implement `forward` on per-example terms. Every objective owns a
    ``step`` buffer (int64, 0-dim): the number of forward calls made while
    `advancing`. Schedules are evaluated at the current step, and a subclass's
    `forward` ends with `advance`, so the first training step sees step 0. Keep
    any further state in registered buffers as well: then ``state_dict()`` /
    ``load_state_dict()`` resume training exactly.

    Attributes:
        step: 0-dim int64 buffer, the number of training steps taken.
    """

    step: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._constants: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}

    @property
    def advancing(self) -> bool:
        """True when state should advance: ``train()`` mode and gradients enabled."""
        return self.training and torch.is_grad_enabled()

    def advance(self) -> None:
        """Count one step if `advancing` (in place, so it compiles)."""
        if self.advancing:
            self.step.add_(1)

    def hyperparameter(self, value: float | Schedule, like: Tensor) -> Tensor:
        """Evaluate a hyperparameter at the current step.

        Args:
            value: a number or a schedule.
            like: tensor whose device (and dtype, raised to at least float32) the result takes.

        Returns:
            0-dim tensor.
        """
        dtype = torch.promote_types(like.dtype, torch.float32)
        if isinstance(value, Schedule):
            scheduled: Tensor = value(self.step.to(dtype))
            return scheduled.to(dtype)
        if torch.compiler.is_compiling() or torch.is_inference_mode_enabled():
            # A graph constant needs no cache; an inference tensor must not be cached, as
            # autograd cannot save it for a later training step.
            return torch.tensor(value, dtype=dtype, device=like.device)
        # Eager: one tensor per constant, dtype and device, not a new one every step.
        key = (value, dtype, like.device)
        constant = self._constants.get(key)
        if constant is None:
            constant = self._constants[key] = torch.tensor(value, dtype=dtype, device=like.device)
        return constant

    @abstractmethod
    def forward(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        """Compute the loss.

        Args:
            rate: ``(B,)`` per-example rate in nats.
            distortion: ``(B,)`` per-example distortion in nats.
            rate_per_dimension: ``(B, D)`` per-dimension rate, where the KL factorises.
            weight: ``(B,)`` non-negative per-example weights (normalised).

        Returns:
            `ObjectiveOutput`.
        """
