"""The objective interface: checked terms in, a loss out; hyperparameters and state in buffers.

Every number an objective keeps is a registered buffer, read where it is used and never
copied aside: a hyperparameter given as a number is a ``(1,)`` float64 buffer (read as a
0-dim view), one given as a `Schedule` a submodule; the step and the feedback state are
buffers of their own. Whatever writes a buffer (an assignment, ``load_state_dict``, an EMA
utility writing ``.data``) is what the next call uses.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from typing_extensions import override

from rdloss._checks import ValueCheck, in_functorch
from rdloss._means import batch_mean, global_batch_mean
from rdloss.latents import RateTerms
from rdloss.objectives._hyperparameters import (
    Hyperparameter,
    as_hyperparameter,
    check_loaded,
    new_state,
)
from rdloss.schedules import Schedule, check_config_state, config_state

_FULL = (torch.float32, torch.float64)

__all__ = ["Hyperparameter", "Objective", "ObjectiveOutput", "check_terms", "numbers_repr"]

_INF = math.inf


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

    Name each numeric hyperparameter in ``_hyperparameters`` (name -> must it be ``> 0``)
    and assign it in ``__init__`` (``self.beta = beta``): every assignment, also after
    construction, is validated by `as_hyperparameter`; a number is written into a ``(1,)``
    float64 buffer of that name (in place once it exists, so a compiled loss reads the new
    value without recompiling), and reading the attribute gives a 0-dim view of it; a
    `Schedule` becomes a submodule of that name. Name the settings fixed at construction in
    ``_config``: they are recorded in ``state_dict`` (`get_extra_state`), a checkpoint of a
    differently configured objective is refused, and assigning them later raises
    ``AttributeError``. Loaded state is range-checked (`state_ranges`). Casting the module
    to a lower precision (``.half()``, ``.to(torch.bfloat16)``) leaves every floating
    buffer at its precision: state and hyperparameters never narrow.

    Attributes:
        step: 0-dim int64 buffer, the number of training steps taken.
        sync_dist: while training, reduce over the batches of all processes
            (`global_batch_mean`) rather than this process's batch, when the objective is
            called on its own; a `RateDistortionLoss` passes its own ``sync_dist`` with every
            call instead, so an objective shared by two losses follows each of them.
    """

    step: Tensor
    _hyperparameters: ClassVar[dict[str, bool]] = {}
    """Hyperparameter names, each with whether it must be ``> 0`` (else ``>= 0``)."""
    _config: ClassVar[tuple[str, ...]] = ()
    """Settings fixed at construction and recorded in ``state_dict``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("step", new_state(0, torch.long))
        self.sync_dist = False
        # The calling loss's sync_dist for the call in progress (None: `sync_dist`).
        self._call_sync_dist: bool | None = None

    @override
    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._hyperparameters:
            self._set_hyperparameter(name, value)
            return
        if name in self._config and name in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}.{name} is fixed at construction (it is checked "
                f"against the other arguments); build a new {type(self).__name__} instead"
            )
        super().__setattr__(name, value)

    @override
    def __getattr__(self, name: str) -> Any:
        value = super().__getattr__(name)
        if name in self._hyperparameters and isinstance(value, Tensor):
            # 0-dim where it is read. (The buffer is (1,): torch.compile turns a 0-dim
            # float64 input into a Python float and traces the graph a second time.)
            return value.view(())
        return value

    def _set_hyperparameter(self, name: str, value: object) -> None:
        """Validate ``value`` like the constructor and store it (see the class docstring)."""
        checked = as_hyperparameter(name, value, positive=self._hyperparameters[name])
        buffer = dict(self.named_buffers(recurse=False)).get(name)
        if isinstance(checked, Schedule):
            if buffer is not None:
                delattr(self, name)
            super().__setattr__(name, checked)
            return
        if name in dict(self.named_children()):
            delattr(self, name)
        if buffer is not None and not buffer.is_meta:
            with torch.no_grad():  # in place: the same tensor, so compiled code reads it
                buffer.fill_(checked)
            return
        device = value.device if isinstance(value, Tensor) else None
        tensor = new_state([checked], torch.float64).to(device)
        if buffer is None:
            self.register_buffer(name, tensor)
        else:  # a meta buffer, replaced as load_state_dict(assign=True) expects
            super().__setattr__(name, tensor)

    @override
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Objective:
        # State and hyperparameters keep their precision whatever the module's dtype
        # (``.half()``, ``.to(torch.bfloat16)``, Lightning's "bf16-true"), as torchmetrics
        # keeps its states: in bfloat16 a multiplier of 1.0 cannot move by exp(1e-3), and
        # float16 overflows above 65504. Devices still move.
        before = {k: b for k, b in self.named_buffers(recurse=False) if b.is_floating_point()}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self.get_buffer(name)
            if torch.finfo(new.dtype).bits < torch.finfo(old.dtype).bits:
                super().__setattr__(name, old.to(device=new.device))  # unchecked: as it was
        return self

    def get_extra_state(self) -> Tensor:
        """The ``_config`` settings, recorded in ``state_dict`` (see `config_state`)."""
        return config_state({name: getattr(self, name) for name in self._config})

    def set_extra_state(self, state: Any) -> None:
        """Refuse a checkpoint of a differently configured objective.

        Raises:
            ValueError: a setting differs, naming the saved and the current value.
        """
        check_config_state(type(self).__name__, state, self.get_extra_state())

    def value_checks(self, rate: Tensor) -> list[ValueCheck]:
        """Checks of the objective's own state for the coming call, as device flags.

        A `RateDistortionLoss` runs them in its one value check (one host synchronisation
        for the whole call); the default has none.

        Args:
            rate: ``(B,)`` the call's per-example rate (for its batch size and device).
        """
        return []

    def state_ranges(self) -> dict[str, tuple[float, float]]:
        """The range of each state buffer that `load_state_dict` accepts.

        Subclasses add their feedback state; numeric hyperparameters are checked like an
        assignment.
        """
        ranges = {"step": (0.0, _INF)}
        if "skipped" in dict(self.named_buffers(recurse=False)):
            ranges["skipped"] = (0.0, _INF)
        return ranges

    @override
    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Checked before anything is copied, so a refused checkpoint changes nothing here.
        extra = state_dict.get(prefix + "_extra_state")
        if extra is not None:
            self.set_extra_state(extra)
        for name, (low, high) in self.state_ranges().items():
            check_loaded(prefix + name, state_dict.get(prefix + name), low, high)
        for name, positive in self._hyperparameters.items():
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and value.numel() == 1 and not value.is_meta:
                as_hyperparameter(f"state_dict[{prefix + name!r}]", value, positive=positive)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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

        Subclasses reduce with it (not `batch_mean`) so that ``sync_dist`` applies. The
        all-reduce happens only while `advancing`: evaluation stays local, so one process
        may evaluate alone without waiting for the others.
        """
        sync = self.sync_dist if self._call_sync_dist is None else self._call_sync_dist
        if sync and self.advancing:
            return global_batch_mean(values, weight)
        return batch_mean(values, weight)

    def hyperparameter(self, value: float | Tensor | Schedule, like: Tensor) -> Tensor:
        """Evaluate a hyperparameter at the current step.

        Args:
            value: a number, a one-element tensor (a hyperparameter's buffer) or a schedule.
            like: tensor whose device (and dtype, raised to at least float32) the result takes.

        Returns:
            0-dim tensor, a new one every call: it never aliases the buffer, so neither a
            later assignment nor an in-place change of ``out.hyper`` reaches the other.
        """
        dtype = like.dtype
        if dtype not in _FULL:  # promote_types is an operator call: skip it where it can't matter
            dtype = torch.promote_types(dtype, torch.float32)
        if isinstance(value, Schedule):
            # The step in float64: float32 cannot count past 2**24.
            scheduled: Tensor = value(self.step.to(device=like.device, dtype=torch.float64))
            return scheduled.to(dtype)
        if isinstance(value, Tensor):
            scalar = value if value.ndim == 0 else value.reshape(())
            return scalar.to(device=like.device, dtype=dtype, copy=True)
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
        # For `mean` in this call: the call's own flag, always (a loss passes its own, a
        # direct call None). Written only when it changes: nn.Module.__setattr__ costs
        # ~10 us, and dynamo traces a plain attribute write on every torch release.
        if self._call_sync_dist is not sync_dist:
            self._call_sync_dist = sync_dist
        output = self.compute_terms(terms, distortion, weight=weight)
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
