"""What an objective takes and returns: the checks of its terms, its output, its repr."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["ObjectiveOutput", "check_terms", "numbers_repr"]


def check_terms(
    rate: object, distortion: object, rate_per_dimension: object, weight: object
) -> None:
    """Shape and type checks of an objective's inputs (free: no host synchronisation).

    `Objective.forward` calls it before `Objective.compute`.

    Raises:
        TypeError: an input is not a tensor.
        ValueError: ``rate`` is not ``(B,)``, or another input does not match it.
    """
    # One compound test on the hot path (a few hundred ns); messages only on failure.
    if (
        isinstance(rate, Tensor)
        and rate.ndim == 1
        and isinstance(distortion, Tensor)
        and distortion.shape == rate.shape
        and (weight is None or (isinstance(weight, Tensor) and weight.shape == rate.shape))
        and (
            rate_per_dimension is None
            or (
                isinstance(rate_per_dimension, Tensor)
                and rate_per_dimension.ndim == 2
                and rate_per_dimension.shape[0] == rate.shape[0]
            )
        )
    ):
        return
    if not isinstance(rate, Tensor):
        raise TypeError(f"rate must be a torch.Tensor of shape (B,), got {type(rate).__name__}")
    if rate.ndim != 1:
        raise ValueError(f"rate must have shape (B,), got {tuple(rate.shape)}")
    batch = tuple(rate.shape)
    for name, value in (("distortion", distortion), ("weight", weight)):
        if value is None and name == "weight":
            continue
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if tuple(value.shape) != batch:
            raise ValueError(
                f"{name} must have rate's shape (B,) = {batch}, got {tuple(value.shape)}"
            )
    if not isinstance(rate_per_dimension, Tensor):
        raise TypeError(
            f"rate_per_dimension must be a torch.Tensor or None, got "
            f"{type(rate_per_dimension).__name__}"
        )
    raise ValueError(
        f"rate_per_dimension must have shape (B, D) with B = {batch[0]}, "
        f"got {tuple(rate_per_dimension.shape)}"
    )


def numbers_repr(**values: object) -> str:
    """``extra_repr`` text for the constant hyperparameters (schedules print as children)."""
    return ", ".join(f"{k}={float(v)}" for k, v in values.items() if isinstance(v, (float, Tensor)))


class ObjectiveOutput(NamedTuple):
    """What an objective returns.

    Attributes:
        loss: 0-dim training loss.
        hyper: the coefficients the objective applied, 0-dim tensors: ``{"beta": ...}``,
            targets, multipliers, and per group ``"<name>/<group>"`` where it weights
            groups (``"beta/z"``, NVAE's balancing ``"balance/<group>"``).
    """

    loss: Tensor
    hyper: dict[str, Tensor]
