"""The shared base of rdloss' metrics: ``output=`` selection, checks, weighted sums, groups."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from rdloss._checks import check_tensor, should_validate
from rdloss.output import RDOutput

__all__ = ["check_groups", "match_groups", "merge_moments"]


def check_groups(groups: object) -> tuple[str, ...] | None:
    """``groups=`` of a metric: ``None`` or a non-empty sequence of distinct names."""
    if groups is None:
        return None
    if isinstance(groups, str) or not isinstance(groups, Sequence):
        raise TypeError(
            f"groups must be a sequence of group names (e.g. ['z1', 'z2']) or None, "
            f"got {type(groups).__name__}"
        )
    names = tuple(groups)
    if not names or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError(f"groups must be distinct non-empty strings, got {list(names)}")
    return names


def match_groups(name: str, values: object, groups: tuple[str, ...]) -> list[Any]:
    """The entries of a per-group mapping in the order of ``groups``, or a clear error."""
    if not isinstance(values, Mapping):
        raise TypeError(
            f"{name} must be a mapping from group name to value with groups {list(groups)}, "
            f"got {type(values).__name__}"
        )
    if tuple(values) != groups:
        raise ValueError(
            f"{name} has groups {list(values)}, but this metric was built with groups="
            f"{list(groups)} (same names, same order)"
        )
    return [values[g] for g in groups]


def merge_moments(stacked: Tensor) -> Tensor:
    """Merge packed ``[count, sum(x - shift), sum((x - shift)^2), shift]`` rows.

    Sums are kept around a reference point (``shift``, a data row), so they hold small
    numbers and the variance ``(S2 - S1^2 / n) / (n - 1)`` does not cancel a large common
    offset, even in float32. Rows with different shifts are moved exactly to the shift of
    the first non-empty row (Chan, Golub & LeVeque's pairwise update).

    Args:
        stacked: ``(W, 1 + 3D)`` summaries, e.g. one per process.

    Returns:
        ``(1 + 3D,)`` the summary of the union.
    """
    dim = (stacked.shape[1] - 1) // 3
    count, s1, s2, shift = stacked.split([1, dim, dim, dim], dim=1)
    ref = shift[(count[:, 0] > 0).int().argmax()]
    # Empty rows have all-zero sums; mask their (arbitrary) shifts out.
    delta = torch.where(count > 0, shift - ref, torch.zeros_like(shift))
    s2 = s2 + 2 * delta * s1 + count * delta.square()
    s1 = s1 + count * delta
    return torch.cat([count.sum(0), s1.sum(0), s2.sum(0), ref])


class _Diagnostic(Metric):
    """Shared ``output=`` selection of one field of the named-tuple result."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False
    _fields: ClassVar[tuple[str, ...]] = ()
    sums: Tensor

    def __init__(
        self, *, output: str | None = None, validate_args: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if output is not None and output not in self._fields:
            raise ValueError(f"output must be None or one of {self._fields}, got {output!r}")
        if not isinstance(validate_args, bool):
            raise TypeError(f"validate_args must be a bool, got {type(validate_args).__name__}")
        self.output = output
        self.validate_args = validate_args

    def _check_finite(self, weight: Tensor | None = None, **tensors: Tensor) -> None:
        """NaN/inf in an update's inputs, or a negative ``weight``, raise ``ValueError``.

        One host synchronisation for all of them, if ``validate_args``.
        """
        if not should_validate(self.validate_args):
            return
        named = dict(tensors) if weight is None else {**tensors, "weight": weight}
        flags = [torch.isfinite(t).all() for t in named.values()]
        if weight is not None:
            flags.append((weight >= 0).all())
        ok = torch.stack(flags).tolist()
        bad = [n for n, good in zip(named, ok, strict=False) if not good]
        if bad:
            raise ValueError(f"non-finite values (NaN or inf) in {', '.join(bad)}")
        if not ok[-1]:
            raise ValueError("weight must be non-negative")

    @override
    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Merge another metric of this class (or its states) into this one.

        ``compute`` then returns the merged value: torchmetrics caches ``compute`` and
        would otherwise keep returning the value cached before the merge.
        """
        self._merge_incoming(incoming_state)
        self._invalidate()

    def _merge_incoming(self, incoming_state: dict[str, Any] | Metric) -> None:
        super().merge_state(incoming_state)

    @override
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._invalidate()

    def _invalidate(self) -> None:
        """Drop torchmetrics' cached ``compute`` after the states were replaced or merged."""
        self._computed = None
        # The states hold data now: compute() must not warn that no update came first.
        self._update_count += 1

    @override
    def _wrap_update(self, update: Callable[..., Any]) -> Callable[..., Any]:
        wrapped = super()._wrap_update(update)

        @functools.wraps(wrapped)
        def with_normal_states(*args: Any, **kwargs: Any) -> Any:
            if not torch.is_inference_mode_enabled():
                self._leave_inference_mode()
            return wrapped(*args, **kwargs)

        return with_normal_states

    def _leave_inference_mode(self) -> None:
        """Copy states made under ``torch.inference_mode()`` into normal tensors.

        A metric built, reset or run through ``forward`` under inference mode (an
        evaluation loop) holds inference tensors, which an update outside it could not
        change in place ("Inplace update to inference tensor outside InferenceMode").
        """
        for name in self._defaults:
            value = getattr(self, name)
            if isinstance(value, Tensor) and value.is_inference():
                setattr(self, name, value.clone())

    @override
    def _wrap_compute(self, compute: Callable[..., Any]) -> Callable[..., Any]:
        # torchmetrics squeezes every one-element tensor that compute returns, which would
        # turn a (D,) per-unit result into a 0-dim tensor when D = 1.
        wrapped = super()._wrap_compute(compute)

        @functools.wraps(wrapped)
        def keep_shapes(*args: Any, **kwargs: Any) -> Any:
            return self._restore_shapes(wrapped(*args, **kwargs))

        return keep_shapes

    def _restore_shapes(self, value: Any) -> Any:
        """Undo torchmetrics' squeeze of one-element results that have a shape."""
        return value

    def _require(self, fields: tuple[str, ...], condition: bool, needs: str) -> None:
        """Reject an ``output`` field that would always be ``None`` (Lightning needs a tensor)."""
        if self.output in fields and not condition:
            raise ValueError(f"output={self.output!r} needs {needs}")

    def _select(self, result: tuple[Any, ...]) -> Any:
        return result if self.output is None else getattr(result, self.output)

    def _add_sums(self, groups: int = 0) -> None:
        # [sum w R, sum w D, sum w, sum w R_g per group] in one state: one in-place add per
        # update, and weighted sums stay sum-reducible across processes.
        self.add_state("sums", torch.zeros(3 + groups), dist_reduce_fx="sum", persistent=True)

    def _update_sums(
        self,
        rate: Tensor | RDOutput,
        distortion: Tensor | None,
        weight: Tensor | None,
        groups: tuple[str, ...] | None = None,
    ) -> None:
        per_group: list[Tensor] = []
        if isinstance(rate, RDOutput):
            if distortion is not None or weight is not None:
                raise ValueError(
                    "pass either an RDOutput or rate and distortion tensors (an RDOutput "
                    "carries its weight)"
                )
            output = rate
            rate, distortion = output.rate_per_example, output.distortion_per_example
            weight = output.weight
            if groups is not None:
                if output.rate_per_group is None:
                    raise ValueError(
                        f"this metric was built with groups={list(groups)} but the RDOutput "
                        "has no rate_per_group (an ungrouped call)"
                    )
                per_group = match_groups("rate_per_group", output.rate_per_group, groups)
        elif groups is not None:
            raise ValueError(
                f"this metric was built with groups={list(groups)}: update it with the loss's "
                "RDOutput, which carries rate_per_group"
            )
        check_tensor("rate", rate, min_ndim=1)
        if distortion is None:
            raise ValueError("distortion is required when rate is a tensor")
        check_tensor("distortion", distortion, min_ndim=1)
        if rate.ndim != 1 or rate.shape != distortion.shape:
            raise ValueError(
                "rate and distortion must be per-example tensors of the same shape (B,), got "
                f"{tuple(rate.shape)} and {tuple(distortion.shape)}"
            )
        if weight is not None:
            check_tensor("weight", weight)
            if weight.shape != rate.shape:
                raise ValueError(
                    f"weight must have rate's shape (B,) = {tuple(rate.shape)}, "
                    f"got {tuple(weight.shape)}"
                )
        for name, value in zip(groups or (), per_group, strict=True):
            if not isinstance(value, Tensor) or value.shape != rate.shape:
                raise ValueError(
                    f"rate_per_group[{name!r}] must be a (B,) = {tuple(rate.shape)} tensor, got "
                    f"{tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__}"
                )
        self._check_finite(weight, rate=rate, distortion=distortion)
        w = torch.ones_like(rate) if weight is None else weight.detach().to(rate.dtype)
        rows = torch.stack([rate.detach(), distortion.detach(), *(g.detach() for g in per_group)])
        weighted = (rows * w).sum(1).to(self.sums.dtype)
        self.sums.add_(torch.cat([weighted[:2], w.sum().reshape(1).to(self.sums), weighted[2:]]))

    @override
    def extra_repr(self) -> str:
        return "" if self.output is None else f"output={self.output!r}"
