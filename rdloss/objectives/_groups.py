r"""Hyperparameters with a value per named latent group (scvi-tools' warm-up of one group).

scvi-tools warms up the KL of the cell latent ``z`` and leaves the library-size latent ``l``
at weight 1; a single β would weight both. `PerGroup` holds such a value: a number or a
`Schedule` per group name, evaluated at the objective's step like any hyperparameter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import override

from rdloss.latents import RateTerms
from rdloss.objectives._hyperparameters import as_hyperparameter, new_state
from rdloss.schedules import Schedule

__all__ = ["MISSING_GROUP", "PerGroup", "assign_per_group", "keep_precision", "unknown_groups"]

MISSING_GROUP = 1.0
"""The value of a group the mapping does not name: the ELBO's weight."""


def keep_precision(module: nn.Module, apply: Callable[[], object]) -> None:
    """Run ``apply`` (a cast or move) and put back each own floating buffer it narrowed.

    In bfloat16 a multiplier of 1.0 cannot move by exp(1e-3) and float16 overflows above
    65504, so state and hyperparameters keep their precision whatever the module's dtype
    (``.half()``, Lightning's "bf16-true"), as torchmetrics keeps its states. Devices move.
    """
    before = {k: b for k, b in module.named_buffers(recurse=False) if b.is_floating_point()}
    apply()
    for name, old in before.items():
        new = module.get_buffer(name)
        if torch.finfo(new.dtype).bits < torch.finfo(old.dtype).bits:
            # nn.Module's own setattr: an objective's would re-check it as a hyperparameter.
            nn.Module.__setattr__(module, name, old.to(device=new.device))


class PerGroup(nn.Module):
    """A hyperparameter given per named latent group: a number or a schedule for each.

    Entries are kept in sorted group order under their index (``"0"``, ``"1"``, ...), so
    any group name works (a module attribute could hold neither ``"a.b"`` nor
    ``"training"``) and two mappings with the same entries give the same ``state_dict``:
    a number is a ``(1,)`` float64 buffer, a schedule a submodule. The objective records
    the group names in its ``_extra_state``. A group the mapping does not name takes
    `MISSING_GROUP` (1.0).

    Args:
        name: the hyperparameter's name, for messages (``"beta"``).
        values: group name -> number or `Schedule`; at least one group.
        positive: each number must be ``> 0`` (else ``>= 0``).

    Raises:
        TypeError: a key is not a string, or a value neither a number nor a schedule.
        ValueError: the mapping is empty, or a value is out of range.
    """

    def __init__(self, name: str, values: Mapping[Any, object], *, positive: bool) -> None:
        super().__init__()
        for key in values:
            if not isinstance(key, str):
                raise TypeError(
                    f"{name} per group must map group names (str) to values, got a key of "
                    f"type {type(key).__name__}: {key!r}"
                )
        if not values:
            raise ValueError(f"{name} per group must name at least one group, got {{}}")
        self.name = name
        self.positive = positive
        self.groups: tuple[str, ...] = tuple(sorted(values))
        for index, group in enumerate(self.groups):
            self._store(str(index), self._check(group, values[group]))

    def _check(self, group: str, value: object) -> float | Schedule:
        return as_hyperparameter(f"{self.name}[{group!r}]", value, positive=self.positive)

    def _store(self, key: str, value: float | Schedule) -> None:
        buffer = self._buffers.get(key)
        if not isinstance(value, Schedule) and buffer is not None and not buffer.is_meta:
            with torch.no_grad():  # in place: the same tensor, so compiled code reads it
                buffer.fill_(value)
            return
        if key in self._buffers:
            del self._buffers[key]
        if key in self._modules:
            del self._modules[key]
        if isinstance(value, Schedule):
            self.add_module(key, value)
        else:
            device = buffer.device if buffer is not None and not buffer.is_meta else None
            self.register_buffer(key, new_state([value], torch.float64).to(device))

    def assign(self, values: Mapping[Any, object]) -> bool:
        """Take new values for the same groups in place; ``False`` if the groups differ.

        Numbers replacing numbers are written into the existing buffers, so a compiled
        loss reads them without recompiling. Every value is checked before any is written.
        """
        if set(values) != set(self.groups):
            return False
        checked = [self._check(group, values[group]) for group in self.groups]
        for index, value in enumerate(checked):
            self._store(str(index), value)
        return True

    def entries(self) -> dict[str, Tensor | Schedule]:
        """Group name -> its number (a 0-dim view of the buffer) or schedule."""
        out: dict[str, Tensor | Schedule] = {}
        for index, group in enumerate(self.groups):
            key = str(index)
            buffer = self._buffers.get(key)
            out[group] = buffer.view(()) if buffer is not None else self._modules[key]  # type: ignore[assignment]
        return out

    @override
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> PerGroup:
        keep_precision(self, lambda: super(PerGroup, self)._apply(fn, recurse))
        return self

    @override
    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Checked like an assignment, before anything is copied.
        for index, group in enumerate(self.groups):
            value = state_dict.get(prefix + str(index))
            number = isinstance(value, Tensor) and value.numel() == 1 and not value.is_meta
            if str(index) in self._buffers and number:
                as_hyperparameter(
                    f"state_dict[{prefix + str(index)!r}] ({self.name}[{group!r}])",
                    value,
                    positive=self.positive,
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @override
    def extra_repr(self) -> str:
        shown = []
        for index, (group, value) in enumerate(self.entries().items()):
            text = f"{float(value)}" if isinstance(value, Tensor) else f"({index})"
            shown.append(f"{group!r}: {text}")
        return "{" + ", ".join(shown) + "}"


def assign_per_group(
    owner: nn.Module, name: str, values: Mapping[Any, object], *, positive: bool
) -> None:
    """Set ``owner.<name>`` from a mapping: in place for the same groups, else a new `PerGroup`.

    Every value is checked before anything changes; a number or schedule held under
    ``name`` before is removed.
    """
    current = owner._modules.get(name)
    if isinstance(current, PerGroup) and current.assign(values):
        return
    per_group = PerGroup(name, values, positive=positive)
    owner._buffers.pop(name, None)
    owner._modules.pop(name, None)
    owner.add_module(name, per_group)


def unknown_groups(owner: str, value: PerGroup, terms: RateTerms) -> None:
    """Refuse a per-group value on a call without those groups, naming the call's groups.

    Raises:
        ValueError: the call has one ungrouped latent, or the mapping names a group the
            call does not have (a typo would otherwise leave that group at 1.0 silently).
    """
    if not terms.grouped:
        raise ValueError(
            f"{owner}: {value.name} is given per group {list(value.groups)}, but the call has "
            f"one ungrouped latent; pass the posterior as a mapping of named groups, or give "
            f"{value.name} one number or schedule"
        )
    unknown = [group for group in value.groups if group not in terms.per_group]
    if unknown:
        raise ValueError(
            f"{owner}: {value.name} names groups {unknown} that the call does not have; the "
            f"call's groups are {list(terms.per_group)}"
        )
