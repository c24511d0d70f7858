r"""Streaming diagnostics as `torchmetrics.Metric` classes.

``update`` per batch, ``compute`` at the end of an epoch, ``reset`` between epochs; states
are synchronised across processes by torchmetrics and saved by ``state_dict`` (they are
registered ``persistent``). States use torchmetrics' default float32; call
``metric.set_dtype(torch.float64)`` for float64 accumulation. Shapes are always checked;
NaN/inf in an update raise ``ValueError`` unless the metric was built with
``validate_args=False`` (the check costs one host synchronisation per update).

Fed an `RDOutput`, metrics use its per-example ``weight`` (weighted sums in their states, so
they stay sum-reducible under DDP): the streamed rate equals the loss's ``out.rate``. Grouped
outputs (``rate_per_group``, from a loss called with a mapping of posteriors) are reported per
group by metrics built with ``groups=[...]``; the group names are fixed at construction (so
``state_dict``, ``reset`` and DDP synchronisation see the same states on every process), and an
update whose groups differ raises ``ValueError``. Without ``groups=``, a grouped output counts
through its total rate.

Metrics whose ``compute`` returns a named tuple take ``output=`` to return one field
instead, so that Lightning's ``self.log(name, metric)`` (which needs a tensor) works::

    self.rate = RateDistortion(output="rate")
    ...
    self.rate.update(out)                      # in training_step
    self.log("train/rate", self.rate, on_epoch=True)

(Alemi et al., 2018, "Fixing a Broken ELBO"; Burda et al., 2015, for active units.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from rdloss._checks import (
    check_nonnegative_number,
    check_positive_int,
)
from rdloss.diagnostics._metric import _Diagnostic, check_groups
from rdloss.diagnostics._units import ActiveUnits, RatePerDimension
from rdloss.diagnostics.functional import (
    MIBounds,
    RateDistortionResult,
    _bounds,
    _rd_result,
)
from rdloss.output import RDOutput

__all__ = ["ActiveUnits", "MutualInformationBounds", "RateDistortion", "RatePerDimension"]


class RateDistortion(_Diagnostic):
    """Running dataset means of rate ``R``, distortion ``D`` and the ELBO ``-(D + R)``.

    ``compute`` returns a `RateDistortionResult` (nats
    and bits; bits per dimension when ``data_dims`` is given), or one field with ``output=``.

    An `RDOutput`'s ``weight`` weights the means (as the loss's ``out.rate``); so does
    ``weight=`` with tensors. With ``groups=``, ``rate_per_group`` holds each group's mean.

    Args:
        data_dims: data dimensions per example (784 for MNIST) for ``bits_per_dim``.
        groups: names of the latent groups to report (the loss's posterior keys, in order),
            or ``None``; updates must then be `RDOutput` s with these groups.
        output: return only this field, e.g. ``"rate"``, for ``self.log`` in Lightning.
        **kwargs: ``validate_args`` (default ``True``: NaN/inf in an update raise
            ``ValueError``, at one host synchronisation per update) and the options of
            `torchmetrics.Metric`.

    Examples:
        >>> import torch
        >>> m = RateDistortion()
        >>> m.update(torch.tensor([1.0, 3.0]), torch.tensor([10.0, 12.0]))
        >>> m.update(torch.tensor([2.0]), torch.tensor([8.0]))
        >>> m.compute().elbo
        tensor(-12.)
    """

    _fields = RateDistortionResult._fields

    def __init__(
        self,
        *,
        data_dims: int | None = None,
        groups: Sequence[str] | None = None,
        output: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(output=output, **kwargs)
        self.data_dims = None if data_dims is None else check_positive_int("data_dims", data_dims)
        self._require(("bits_per_dim",), data_dims is not None, "data_dims")
        self.groups = check_groups(groups)
        self._require(("rate_per_group",), self.groups is not None, "groups")
        self._add_sums(len(self.groups or ()))

    @override
    def update(
        self,
        rate: Tensor | RDOutput,
        distortion: Tensor | None = None,
        *,
        weight: Tensor | None = None,
    ) -> None:
        """Add a batch: an `RDOutput`, or ``(B,)`` rate and distortion (and ``weight``)."""
        self._update_sums(rate, distortion, weight, self.groups)

    @override
    def compute(self) -> Any:
        """Return the `RateDistortionResult` (or the ``output`` field)."""
        means = self.sums / self.sums[2]
        result = _rd_result(means[0], means[1], self.data_dims)
        if self.groups is not None:
            per_group = dict(zip(self.groups, means[3:].unbind(), strict=True))
            result = result._replace(rate_per_group=per_group)
        return self._select(result)


class MutualInformationBounds(_Diagnostic):
    r"""The sandwich $H - D \le I(X;Z) \le R$ (Alemi et al., 2018, Eq. 2).

    ``compute`` returns `MIBounds`: ``lower = H - D``
    (``None`` without ``data_entropy``), ``upper = R`` and ``entropy_upper``, the best (lowest)
    dataset-level ``-ELBO = D + R`` over the epochs, an upper estimate of ``H``. R is the total
    rate (summed over latent groups) and the means use an `RDOutput`'s ``weight``.

    An epoch is what lies between two ``reset`` calls: ``reset`` folds the epoch's value
    into the best, if that epoch was computed (``compute()`` after its last update, the value
    Lightning logs; synchronised across processes). A ``compute()`` that later updates follow
    is a mid-epoch look and is never folded, nor is ``forward``'s per-batch value. The best
    is a state (``dist_reduce_fx="min"``), saved by ``state_dict`` together with a computed,
    not yet reset epoch, and ``merge_state`` keeps the lower best of the two metrics.

    A ``data_entropy`` above the epoch's ``R + D`` (the ``-ELBO``, which upper-bounds the
    data entropy) gives ``lower > upper``: ``compute`` returns the values and warns
    (``UserWarning``, rank zero) rather than raising, since a memorised training set or
    Monte Carlo noise can bring a measured ``-ELBO`` below the true ``H`` mid-run.

    Args:
        data_entropy: ``H`` in nats, if known.
        output: return only this field (``"upper"``, ``"lower"``, ``"entropy_upper"``).
        **kwargs: ``validate_args`` (default ``True``: NaN/inf in an update raise
            ``ValueError``, at one host synchronisation per update) and the options of
            `torchmetrics.Metric`.

    Examples:
        >>> import torch
        >>> m = MutualInformationBounds(data_entropy=6.0)
        >>> m.update(torch.tensor([2.0]), torch.tensor([5.0]))
        >>> b = m.compute()
        >>> b.lower.item(), b.upper.item(), b.entropy_upper.item()
        (1.0, 2.0, 7.0)
    """

    _fields = MIBounds._fields
    best_entropy_upper: Tensor
    computed: Tensor

    def __init__(
        self, data_entropy: float | None = None, *, output: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(output=output, **kwargs)
        self.data_entropy = (
            None if data_entropy is None else check_nonnegative_number("data_entropy", data_entropy)
        )
        self._require(("lower",), data_entropy is not None, "data_entropy")
        self._add_sums()
        self.add_state(
            "best_entropy_upper",
            torch.tensor(float("inf")),
            dist_reduce_fx="min",
            persistent=True,
        )
        # The epoch's -ELBO as the last compute() saw it, synchronised (inf: not computed
        # since the last update). A buffer, not a state: torchmetrics swaps states for their
        # synchronised copies during compute and back after it.
        self.register_buffer("computed", torch.tensor(float("inf")))
        self._in_forward = False

    @override
    def update(
        self,
        rate: Tensor | RDOutput,
        distortion: Tensor | None = None,
        *,
        weight: Tensor | None = None,
    ) -> None:
        """Add a batch: an `RDOutput`, or ``(B,)`` rate and distortion (and ``weight``)."""
        self._update_sums(rate, distortion, weight)
        self.computed.fill_(float("inf"))  # the epoch goes on: no computed value is final

    @override
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Update and return the batch's value, which is not an epoch's ``-ELBO``."""
        # torchmetrics' forward resets, updates and computes on the batch alone, then
        # restores the accumulated states: none of that is an epoch's end.
        self._in_forward = True
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._in_forward = False
            self.computed.fill_(float("inf"))

    @override
    def compute(self) -> Any:
        """Return the `MIBounds` (or the ``output`` field)."""
        rate, distortion = self.sums[0] / self.sums[2], self.sums[1] / self.sums[2]
        current = (rate + distortion).detach()
        if not self._in_forward:
            self.computed.copy_(current)
        best = torch.minimum(self.best_entropy_upper.to(current), current)
        bounds = _bounds(rate, distortion, self.data_entropy, best, validate=self.validate_args)
        return self._select(bounds)

    @override
    def state_dict(  # type: ignore[override]  # torchmetrics' signature
        self, destination: dict[str, Any] | None = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        """The states; a computed, not yet reset epoch is saved folded into the best."""
        state: dict[str, Any] = super().state_dict(
            destination=destination, prefix=prefix, keep_vars=keep_vars
        )
        key = prefix + "best_entropy_upper"
        state[key] = torch.minimum(state[key], state[prefix + "computed"].to(state[key]))
        return state

    @override
    def merge_state(self, incoming_state: Any) -> None:
        """Merge another metric's (or state dict's) sums; keep the lower best of both."""
        other = incoming_state
        state = dict(other.state_dict()) if isinstance(other, Metric) else dict(other)
        inf = torch.tensor(float("inf"))
        best = torch.stack(
            [
                self.best_entropy_upper,
                self.computed.to(self.best_entropy_upper),
                state.get("best_entropy_upper", inf).to(self.best_entropy_upper),
                state.get("computed", inf).to(self.best_entropy_upper),
            ]
        ).amin()
        super().merge_state(incoming_state)
        self.best_entropy_upper = best
        self.computed.fill_(float("inf"))  # the merged epoch goes on

    @override
    def reset(self) -> None:
        """Clear the sums; keep the best ``-ELBO`` of every epoch that was computed."""
        best = self.best_entropy_upper
        if not self._in_forward:
            best = torch.minimum(best, self.computed.to(best))
            self.computed.fill_(float("inf"))
        super().reset()
        self.best_entropy_upper = best
