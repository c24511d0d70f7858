"""The objective interface: checked terms in, a loss out, and a step buffer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from typing_extensions import override

from rdloss._checks import in_functorch
from rdloss.functional import batch_mean, global_batch_mean
from rdloss.latents import RateTerms
from rdloss.objectives._hyperparameters import HyperparameterAttribute, HyperparameterCache
from rdloss.schedules import Schedule

__all__ = ["Objective", "ObjectiveOutput", "check_terms", "numbers_repr"]

_FULL = (torch.float32, torch.float64)


class _CallState:
    """The calling loss's ``sync_dist`` and the batch means it computed, for one call."""

    __slots__ = ("means", "sync", "weight")

    def __init__(self) -> None:
        self.sync: bool | None = None
        # (values, mean) pairs taken with `weight`: `Objective.mean` reuses them.
        self.means: tuple[tuple[Tensor, Tensor], ...] = ()
        self.weight: Tensor | None = None


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


def numbers_repr(**values: float | Tensor | Schedule) -> str:
    """``extra_repr`` text for the constant hyperparameters (schedules print as children)."""
    return ", ".join(f"{k}={float(v)}" for k, v in values.items() if isinstance(v, (float, Tensor)))


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

    Subclasses implement `compute` on per-example terms, reducing with `mean` (so that
    ``sync_dist`` applies); `forward` checks the terms first and calls `advance` last.
    Every objective owns a ``step`` buffer (int64, 0-dim): the number of forward calls
    made while `advancing`. Schedules are evaluated at the current step, so the first
    training step sees step 0. Keep any further state in registered buffers as well: then
    ``state_dict()`` / ``load_state_dict()`` resume training exactly.

    Declare each numeric hyperparameter as a `HyperparameterAttribute` class attribute and
    assign it in ``__init__`` (``beta = HyperparameterAttribute()`` ... ``self.beta = beta``):
    every assignment, also after construction, is validated, and numbers live in float64
    buffers that a compiled loss reads without recompiling. Name settings checked against
    each other in ``_fixed``: assigning them after construction raises ``AttributeError``.
    Casting the module to a lower precision (``.half()``, ``.to(torch.bfloat16)``) leaves
    every floating buffer at its precision: state and hyperparameters never narrow.

    Attributes:
        step: 0-dim int64 buffer, the number of training steps taken.
        sync_dist: while training, reduce over the batches of all processes
            (`global_batch_mean`) rather than this process's batch, when the objective is
            called on its own; a `RateDistortionLoss` passes its own ``sync_dist`` with every
            call instead, so an objective shared by two losses follows each of them.
    """

    step: Tensor
    _fixed: ClassVar[frozenset[str]] = frozenset()
    """Attributes set once by the constructor; assigning them later raises ``AttributeError``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.sync_dist = False
        # The flag of the call in progress: the loss's, so that a shared objective follows
        # each loss it serves (set by `forward` for the call, never left set).
        # What the call in progress brings: set by `forward`, cleared after (a plain object,
        # so these per-call updates skip nn.Module.__setattr__, ~15 us each).
        self._call = _CallState()
        self._hyperparameter_cache = HyperparameterCache()

    @override
    def __setattr__(self, name: str, value: Any) -> None:
        attribute = getattr(type(self), name, None)
        if isinstance(attribute, HyperparameterAttribute):
            # nn.Module.__setattr__ would register a Schedule before the descriptor sees it.
            attribute.__set__(self, value)
            return
        if name in self._fixed and name in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}.{name} is fixed at construction (it is checked "
                f"against the other arguments); build a new {type(self).__name__} instead"
            )
        super().__setattr__(name, value)

    @override
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Objective:
        # State and hyperparameters keep their precision whatever the module's dtype
        # (``.half()``, ``.to(torch.bfloat16)``, Lightning's "bf16-true"), as torchmetrics
        # keeps its states: in bfloat16 a multiplier of 1.0 cannot move by exp(1e-3), and
        # float16 overflows above 65504. Devices still move.
        before = {k: b for k, b in self._buffers.items() if b is not None and b.is_floating_point()}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if new is not None and torch.finfo(new.dtype).bits < torch.finfo(old.dtype).bits:
                self._buffers[name] = old.to(device=new.device)
        return self

    @property
    def advancing(self) -> bool:
        """True when state should advance: ``train()`` mode and gradients enabled."""
        return self.training and torch.is_grad_enabled()

    def advance(self) -> None:
        """Count one step if `advancing` (in place, so it compiles)."""
        if self.advancing:
            self.step.add_(1)

    def mean(self, values: Tensor, weight: Tensor | None) -> Tensor:
        """Weighted batch mean over dim 0: of this process's batch, or of all (`sync_dist`).

        Subclasses reduce with it (not `functional.batch_mean`) so that ``sync_dist`` applies.
        The all-reduce happens only while `advancing`: evaluation stays local, so one
        process may evaluate alone without waiting for the others.
        """
        call = self._call
        sync = self.sync_dist if call.sync is None else call.sync
        if sync and self.advancing:
            return global_batch_mean(values, weight)
        if weight is call.weight:
            for known, mean in call.means:
                if values is known:
                    return mean
        return batch_mean(values, weight)

    def hyperparameter(self, value: float | Tensor | Schedule, like: Tensor) -> Tensor:
        """Evaluate a hyperparameter at the current step.

        Args:
            value: a number, a 0-dim tensor (a `HyperparameterAttribute`'s buffer) or a
                schedule.
            like: tensor whose device (and dtype, raised to at least float32) the result takes.

        Returns:
            0-dim tensor (a new one: later assignments do not change it).
        """
        # promote_types is an operator call; the common dtypes need none.
        dtype = like.dtype
        if dtype not in _FULL:
            dtype = torch.promote_types(dtype, torch.float32)
        if isinstance(value, Schedule):
            scheduled: Tensor = value(self.step.to(dtype))
            return scheduled.to(dtype)
        if isinstance(value, Tensor):
            return self._hyperparameter_cache.copy(value, dtype, like.device)
        return torch.tensor(value, dtype=dtype, device=like.device)

    def forward(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
        terms: RateTerms | None = None,
        sync_dist: bool | None = None,
        means: tuple[Tensor, Tensor] | None = None,
    ) -> ObjectiveOutput:
        """Check the per-example terms, compute the loss, then count the step.

        Args:
            rate: ``(B,)`` per-example rate in nats (the total over groups and steps).
            distortion: ``(B,)`` per-example distortion in nats.
            rate_per_dimension: ``(B, D)`` per-dimension rate, where the KL factorises.
            weight: ``(B,)`` non-negative per-example weights (normalised).
            terms: the rate at every level of a structured model (groups, steps), as the
                loss computes it; ``None`` for one latent (``RateTerms.single``).
            sync_dist: reduce over all processes while training (the calling loss's flag);
                ``None``: this objective's ``sync_dist`` attribute.
            means: the batch means of ``rate`` and ``distortion`` under ``weight``, if the
                caller has them (the loss reports them): `mean` then reuses them.

        Returns:
            `ObjectiveOutput`.

        Raises:
            TypeError: a term is not a tensor.
            ValueError: ``rate`` is not ``(B,)`` or another term does not match it.
        """
        check_terms(rate, distortion, rate_per_dimension, weight)
        if self.advancing and in_functorch():
            raise RuntimeError(
                f"{type(self).__name__} cannot update its state (step counter, multipliers) "
                "inside a torch.func transform, which forbids in-place updates of buffers: "
                "call the loss in eval() mode inside the transform (the same loss, no state "
                "update) and count the step outside with loss_fn.objective.advance() in "
                "train() mode; feedback objectives (GECO, RateController) need a plain "
                "backward()"
            )
        if terms is None:
            terms = RateTerms.single(rate, rate_per_dimension)
        elif not isinstance(terms, RateTerms):
            raise TypeError(f"terms must be an rdloss RateTerms, got {type(terms).__name__}")
        call = self._call
        call.sync = sync_dist
        if means is not None:
            call.means, call.weight = ((rate, means[0]), (distortion, means[1])), weight
        try:
            output = self.compute_terms(terms, distortion, weight=weight)
        finally:
            call.sync, call.means, call.weight = None, (), None
        self.advance()
        return output

    def compute_terms(
        self, terms: RateTerms, distortion: Tensor, *, weight: Tensor | None = None
    ) -> ObjectiveOutput:
        """The loss from the rate at every level; by default `compute` on the total.

        Objectives over groups or steps (`FreeBits`, NVAE's balancing in `Beta`) override
        it; every other objective sees the total rate and the per-dimension rate.

        Args:
            terms: `RateTerms` (total, per group, per step, per dimension).
            distortion: ``(B,)`` per-example distortion in nats.
            weight: ``(B,)`` non-negative per-example weights (normalised).
        """
        return self.compute(
            terms.per_example,
            distortion,
            rate_per_dimension=terms.per_dimension,
            weight=weight,
        )

    @abstractmethod
    def compute(
        self,
        rate: Tensor,
        distortion: Tensor,
        *,
        rate_per_dimension: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> ObjectiveOutput:
        """The loss from checked terms, at the current `step` (the subclass's formula).

        Reduce with `mean` so that ``sync_dist`` applies; update feedback state only while
        `advancing`. `forward` checks the terms before and advances the step after.

        Args:
            rate: ``(B,)`` per-example rate in nats.
            distortion: ``(B,)`` per-example distortion in nats.
            rate_per_dimension: ``(B, D)`` per-dimension rate, where the KL factorises.
            weight: ``(B,)`` non-negative per-example weights (normalised).

        Returns:
            `ObjectiveOutput`.
        """
