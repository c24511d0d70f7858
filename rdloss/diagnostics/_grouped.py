"""The base of per-unit metrics: ``(B, units)`` values, concatenated over latent groups.

A latent (or each group of a grouped latent) is flattened to units (conv latents
``(B, C, H, W)`` give ``C*H*W``); groups are concatenated in the order given at
construction, and their sizes are a state (``dist_reduce_fx="max"``) so that
``state_dict``, ``reset``, ``merge_state`` and DDP synchronisation work as for one latent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import einops
import torch
from torch import Tensor
from torch.distributions import Distribution
from torchmetrics import Metric
from typing_extensions import override

from rdloss._checks import check_tensor
from rdloss.diagnostics._metric import _Diagnostic, check_groups, match_groups
from rdloss.latents import as_latent

__all__ = ["_Grouped", "check_mask", "flat_units", "mean_units", "step_rows"]


def flat_units(name: str, value: Tensor, steps: bool = False) -> Tensor:
    """``(B, ...)`` per-unit values as ``(B, units)``: ``b ... -> b (...)``.

    With ``steps``, ``(B, T, ...)`` values as ``(B, T, units)``: a step's latent is the
    unit set.
    """
    if steps:
        check_tensor(name, value)
        if value.ndim < 3:
            raise ValueError(
                f"{name} must have shape (B, T, ...) with a step axis T (steps=True), got "
                f"{tuple(value.shape)}"
            )
        if value.shape[2:].numel() == 0:
            raise ValueError(f"{name} has no latent units per step (shape {tuple(value.shape)})")
        return einops.rearrange(value, "b t ... -> b t (...)")
    check_tensor(name, value, min_ndim=2)
    if value[0].numel() == 0:
        raise ValueError(f"{name} has no latent units (shape {tuple(value.shape)})")
    return einops.rearrange(value, "b ... -> b (...)")


def check_mask(mask: object, shape: tuple[int, ...]) -> Tensor:
    """A ``(B, T)`` bool step mask (``True``: a real step, ``False``: padding)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a (B, T) bool tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be a bool tensor (True for real steps), got dtype {mask.dtype}; "
            "pass mask.bool() for a 0/1 mask"
        )
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask must have shape (B, T) = {shape}, got {tuple(mask.shape)}")
    return mask


def step_rows(
    name: str, values: Tensor, mask: Tensor | None, steps: bool
) -> tuple[Tensor, Tensor | None]:
    """``(B, units)`` as is, or ``(B, T, units)`` steps as ``(B*T, units)`` rows.

    Returns the rows and the ``(B*T,)`` float mask of real steps (``None``: every row
    counts). Padded rows are zeroed, so whatever they held (NaN included) counts nothing.
    """
    if not steps:
        if mask is not None:
            raise ValueError(
                f"mask= masks steps: build the metric with steps=True to read {name} as "
                "(B, T, ...) steps"
            )
        return values, None
    if mask is None:
        return values.flatten(0, 1), None
    keep = check_mask(mask, tuple(values.shape[:2])).reshape(-1)
    rows = values.flatten(0, 1)
    rows = torch.where(keep[:, None], rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
    return rows, keep.to(rows.dtype)


def mean_units(name: str, value: object, steps: bool = False) -> Tensor:
    """A posterior's mean (event dims flattened) or a tensor of means, as ``(B, units)``.

    With ``steps``, ``(B, T, units)`` from ``(B, T, ...)`` means or a posterior of batch
    shape ``(B, T)``.
    """
    if isinstance(value, Distribution):
        latent = as_latent(value, name)
        if not latent.event_shape:
            raise ValueError(
                f"{name} must have latent units (an event_shape such as (D,)), got a posterior "
                f"with batch_shape {tuple(latent.batch_shape)} and event_shape (): pass the "
                "(B, D) means, or a posterior of batch_shape (B, D)"
            )
        try:
            mean = latent.mean
        except NotImplementedError:
            raise TypeError(
                f"{name} ({type(value).__name__}) has no closed-form mean: pass its mean "
                "estimated by sampling, e.g. posterior.sample((64,)).mean(0)"
            ) from None
        return flat_units(name, mean, steps)
    return flat_units(name, check_tensor(name, value), steps)


class _Grouped(_Diagnostic):
    """Per-unit states concatenated over groups, with the group sizes as a state."""

    group_sizes: Tensor

    def _add_group_sizes(self, groups: Sequence[str] | None, steps: bool = False) -> None:
        if not isinstance(steps, bool):
            raise TypeError(f"steps must be a bool, got {type(steps).__name__}")
        self.steps = steps
        self.groups = check_groups(groups)
        size = len(self.groups or ())
        self.add_state(
            "group_sizes",
            torch.zeros(size, dtype=torch.long),
            dist_reduce_fx="max",
            persistent=True,
        )

    def _join(self, name: str, values: object, to_units: Any) -> Tensor:
        """``(B, units)``: one latent, or every group's units concatenated in order."""
        if self.groups is None:
            if isinstance(values, Mapping):
                raise ValueError(
                    f"{name} is a mapping of groups {list(values)}: build the metric with "
                    f"groups={list(values)} to report them"
                )
            flat: Tensor = to_units(name, values)
            return flat
        parts = [
            to_units(f"{name}[{g!r}]", v)
            for g, v in zip(self.groups, match_groups(name, values, self.groups), strict=True)
        ]
        batch = {tuple(p.shape[:-1]) for p in parts}
        if len(batch) != 1:
            what = "batch and step sizes (B, T)" if self.steps else "batch sizes"
            raise ValueError(f"{name}'s groups have different {what} {sorted(batch)}")
        sizes = torch.tensor([p.shape[-1] for p in parts])
        known = self.group_sizes
        if bool((known > 0).any()) and not torch.equal(known.cpu().long(), sizes):
            raise ValueError(
                f"{name} has group sizes {sizes.tolist()} but earlier batches had "
                f"{[int(n) for n in known.tolist()]}"
            )
        self.group_sizes.copy_(sizes)
        return torch.cat(parts, dim=-1)

    @override
    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Merge another metric of this class (or its ``state_dict()``) into this one.

        The result equals one metric updated with both streams. Lazily sized states take
        the incoming size; sizes that differ raise ``ValueError``.
        """
        super().merge_state(incoming_state)

    @override
    def _merge_incoming(self, incoming_state: dict[str, Any] | Metric) -> None:
        if not isinstance(incoming_state, (dict, Metric)):
            raise ValueError(
                "merge_state expects a dict of states or a metric, got "
                f"{type(incoming_state).__name__}"
            )
        if isinstance(incoming_state, Metric):
            if not isinstance(incoming_state, type(self)):
                raise ValueError(
                    f"merge_state expects a {type(self).__name__}, got "
                    f"{type(incoming_state).__name__}"
                )
            if incoming_state.groups != self.groups:
                raise ValueError(
                    f"merge_state: the incoming metric has groups "
                    f"{incoming_state.groups}, this one {self.groups}"
                )
            if incoming_state.steps != self.steps:
                raise ValueError(
                    f"merge_state: the incoming metric has steps={incoming_state.steps}, "
                    f"this one steps={self.steps}"
                )
            incoming_state = incoming_state.metric_state
        missing = [k for k in self._defaults if k not in incoming_state]
        if missing:
            raise ValueError(f"merge_state: the incoming state has no {missing}")
        sizes = torch.as_tensor(incoming_state["group_sizes"]).to(self.group_sizes)
        if sizes.shape != self.group_sizes.shape or (
            bool((sizes > 0).any() & (self.group_sizes > 0).any())
            and not torch.equal(sizes, self.group_sizes)
        ):
            raise ValueError(
                f"merge_state: the incoming group sizes {sizes.tolist()} differ from this "
                f"metric's {self.group_sizes.tolist()}"
            )
        self._merge_units(incoming_state)
        self.group_sizes = torch.maximum(self.group_sizes, sizes)

    def _merge_units(self, incoming: dict[str, Any]) -> None:
        raise NotImplementedError

    def _merged_size(self, own: Tensor, other: Tensor, per_unit: int) -> bool:
        """Whether ``own`` and ``other`` both hold units (then of the same number)."""
        if own.numel() and other.numel() and own.numel() != other.numel():
            raise ValueError(
                f"merge_state: the incoming state has {other.numel() // per_unit} units but "
                f"this metric has {own.numel() // per_unit}"
            )
        return bool(own.numel() and other.numel())

    def _split(self, values: Tensor) -> list[Tensor]:
        # int(): set_dtype() casts every state, the integer sizes included.
        return list(values.split([int(n) for n in self.group_sizes.tolist()]))
