"""The objective interface: checked terms in, a loss out; hyperparameters and state in buffers.

Every number an objective keeps is a registered buffer, read where it is used and never
copied aside: a hyperparameter given as a number is a ``(1,)`` float64 buffer (read as a
0-dim view), one given as a `Schedule` a submodule; the step and the feedback state are
buffers of their own. Whatever writes a buffer (an assignment, ``load_state_dict``, an EMA
utility writing ``.data``) is what the next call uses.
"""

from __future__ import annotations

import math
from abc import ABC
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from typing_extensions import override

from rdloss._checks import ValueCheck, in_functorch
from rdloss._means import batch_mean, global_batch_mean
from rdloss.latents import RateTerms
from rdloss.objectives._groups import (
    MISSING_GROUP,
    PerGroup,
    assign_per_group,
    keep_precision,
    unknown_groups,
)
from rdloss.objectives._hyperparameters import (
    Hyperparameter,
    as_hyperparameter,
    check_loaded,
    new_state,
    store_hyperparameter,
)
from rdloss.objectives._terms import ObjectiveOutput, check_terms, numbers_repr
from rdloss.schedules import Schedule, check_config_state, config_state

_FULL = (torch.float32, torch.float64)

__all__ = ["Hyperparameter", "Objective", "ObjectiveOutput", "check_terms", "numbers_repr"]

_INF = math.inf


class Objective(nn.Module, ABC):
    """Base class of objectives.

    Subclasses implement `compute` on per-example terms, or `compute_terms` on the rate at
    every level (groups, steps) — either one suffices, and a class that defines neither is
    refused when instantiated — reducing with `mean` (so that ``sync_dist`` applies);
    `forward` checks the terms first and calls `advance` last.
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
    ``AttributeError``. A hyperparameter named in ``_per_group`` also takes a mapping from
    group name to number or schedule (a `PerGroup` submodule; `group_values` evaluates it,
    a group not named weighs 1.0); its group names are recorded in ``state_dict`` too.
    Loaded state is range-checked (`state_ranges`). Casting the module to a lower precision
    (``.half()``, ``.to(torch.bfloat16)``) leaves every floating buffer at its precision:
    state and hyperparameters never narrow.

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
    _per_group: ClassVar[frozenset[str]] = frozenset()
    """Hyperparameters that also take a value per latent group (a mapping)."""

    def __init__(self) -> None:
        cls = type(self)
        if cls.compute is Objective.compute and cls.compute_terms is Objective.compute_terms:
            # Each default calls the other: refuse here rather than recurse at the first call.
            raise TypeError(
                f"{cls.__name__} defines neither compute nor compute_terms: override one of "
                "them (compute(rate, distortion, *, rate_per_dimension=None, weight=None) on "
                "the total rate, or compute_terms(terms, distortion, *, weight=None) on the "
                "rate per group and step)"
            )
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
        positive = self._hyperparameters[name]
        if isinstance(value, Mapping):
            if name not in self._per_group:
                raise TypeError(
                    f"{type(self).__name__}.{name} takes one number or schedule for all "
                    "groups, got a mapping; per-group values are taken where each group's "
                    "rate enters the loss on its own (Beta's and FreeBits' beta)"
                )
            assign_per_group(self, name, value, positive=positive)
            return
        device = value.device if isinstance(value, Tensor) else None
        store_hyperparameter(self, name, as_hyperparameter(name, value, positive=positive), device)

    @override
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Objective:
        # State and hyperparameters never narrow (see `keep_precision`); devices move.
        keep_precision(self, lambda: super(Objective, self)._apply(fn, recurse))
        return self

    def get_extra_state(self) -> Tensor:
        """The ``_config`` settings and per-group names, recorded in ``state_dict``.

        See `config_state`. A hyperparameter given per group adds ``"<name>_groups"``; a
        number or schedule adds nothing (so their checkpoints are as before).
        """
        config = {name: getattr(self, name) for name in self._config}
        for name in self._per_group:
            value = self._modules.get(name)
            if isinstance(value, PerGroup):
                config[f"{name}_groups"] = list(value.groups)
        return config_state(config)

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
        # The schedules inside too: torch loads them after this module's own state, so a
        # schedule refusing its settings there would come after ``step`` was copied.
        for name, module in self.named_modules():
            saved = state_dict.get(f"{prefix}{name}._extra_state")
            if name and isinstance(module, Schedule) and saved is not None:
                module.set_extra_state(saved)
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

    def hyperparameter(
        self,
        value: float | Tensor | Schedule | PerGroup | Mapping[str, Hyperparameter],
        like: Tensor,
    ) -> Tensor:
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
        if isinstance(value, Tensor):  # a number's buffer, the common case: tested first
            scalar = value if value.ndim == 0 else value.reshape(())
            return scalar.to(device=like.device, dtype=dtype, copy=True)
        if isinstance(value, Schedule):
            # The step in float64: float32 cannot count past 2**24.
            scheduled: Tensor = value(self.step.to(device=like.device, dtype=torch.float64))
            return scheduled.to(dtype)
        if isinstance(value, (PerGroup, Mapping)):
            groups = list(value.groups if isinstance(value, PerGroup) else value)
            raise ValueError(
                f"{type(self).__name__}: a hyperparameter given per group {groups} takes the "
                "call's groups: evaluate it with group_values in compute_terms"
            )
        return torch.tensor(value, dtype=dtype, device=like.device)

    def group_values(
        self, value: float | Tensor | Schedule | PerGroup, terms: RateTerms, like: Tensor
    ) -> dict[str, Tensor]:
        """Evaluate a hyperparameter for each of the call's groups, in their order.

        A `PerGroup` gives each group its entry, and a group it does not name 1.0 (the
        ELBO's weight); a number or schedule gives every group its value.

        Args:
            value: the hyperparameter (e.g. ``self.beta``).
            terms: the call's `RateTerms`.
            like: as for `hyperparameter`.

        Returns:
            Group name -> 0-dim tensor.

        Raises:
            ValueError: the call has no named groups, or the mapping names a group the call
                does not have (naming the call's groups).
        """
        if not isinstance(value, PerGroup):
            same = self.hyperparameter(value, like)
            return dict.fromkeys(terms.per_group, same)
        unknown_groups(type(self).__name__, value, terms)
        entries = value.entries()
        return {
            group: self.hyperparameter(entries.get(group, MISSING_GROUP), like)
            for group in terms.per_group
        }

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

        Objectives over groups or steps (`FreeBits`, NVAE's balancing and per-group β in
        `Beta`) override it; every other objective sees the total rate and the
        per-dimension rate. A custom objective may override only this method.

        Args:
            terms: `RateTerms` (total, per group, per step, per dimension).
            distortion: ``(B,)`` per-example distortion in nats.
            weight: ``(B,)`` non-negative per-example weights (normalised).

        Raises:
            TypeError: the class defines only ``compute_terms`` and it called this default,
                which would call it back through the default `compute`.
        """
        if type(self).compute is Objective.compute:  # an identity test: no tensor op
            raise TypeError(
                f"{type(self).__name__}.compute_terms called Objective.compute_terms, whose "
                f"default is compute on the total rate, which {type(self).__name__} does not "
                "define: define compute as well, or do not call super().compute_terms"
            )
        return self.compute(
            terms.per_example,
            distortion,
            rate_per_dimension=terms.per_dimension,
            weight=weight,
        )

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
        `advancing`. `forward` checks the terms before and advances the step after. By
        default `compute_terms` on the terms of one ungrouped latent, for an objective
        that overrides only that.

        Args:
            rate: ``(B,)`` per-example rate in nats.
            distortion: ``(B,)`` per-example distortion in nats.
            rate_per_dimension: ``(B, D)`` per-dimension rate, where the KL factorises.
            weight: ``(B,)`` non-negative per-example weights (normalised).

        Returns:
            `ObjectiveOutput`.
        """
        return self.compute_terms(
            RateTerms.single(rate, rate_per_dimension), distortion, weight=weight
        )
