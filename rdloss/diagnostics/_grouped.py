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

__all__ = ["_Grouped", "flat_units", "mean_units"]


def flat_units(name: str, value: Tensor) -> Tensor:
    """``(B, ...)`` per-unit values as ``(B, units)``: ``b ... -> b (...)``."""
    check_tensor(name, value, min_ndim=2)
    if value[0].numel() == 0:
        raise ValueError(f"{name} has no latent units (shape {tuple(value.shape)})")
    return einops.rearrange(value, "b ... -> b (...)")


def mean_units(name: str, value: object) -> Tensor:
    """A posterior's mean (event dims flattened) or a tensor of means, as ``(B, units)``."""
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
        return flat_units(name, mean)
    return flat_units(name, check_tensor(name, value))


class _Grouped(_Diagnostic):
    """Per-unit states concatenated over groups, with the group sizes as a state."""

    group_sizes: Tensor

    def _add_group_sizes(self, groups: Sequence[str] | None) -> None:
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
        batch = {p.shape[0] for p in parts}
        if len(batch) != 1:
            raise ValueError(f"{name}'s groups have different batch sizes {sorted(batch)}")
        sizes = torch.tensor([p.shape[1] for p in parts])
        known = self.group_sizes
        if bool((known > 0).any()) and not torch.equal(known.cpu().long(), sizes):
            raise ValueError(
                f"{name} has group sizes {sizes.tolist()} but earlier batches had "
                f"{[int(n) for n in known.tolist()]}"
            )
        self.group_sizes.copy_(sizes)
        return torch.cat(parts, dim=1)

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
