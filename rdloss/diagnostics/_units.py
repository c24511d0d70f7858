r"""Per-unit diagnostics: active units (Burda et al., 2015) and the rate per latent unit.

Both accept grouped latents (a mapping from group name to the group's posterior, means or
per-unit rates, as the loss takes them) when built with ``groups=[...]``: every group's
units are flattened (conv latents ``(B, C, H, W)`` give ``C*H*W`` units), concatenated in
group order into one state, and split back per group by ``compute``. The group sizes are a
state too (learnt at the first update, ``dist_reduce_fx="max"``), so ``state_dict``,
``reset`` and DDP synchronisation work as for one latent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution
from typing_extensions import override

from rdloss._checks import check_nonnegative_number, check_positive_int, check_tensor
from rdloss.diagnostics._grouped import _Grouped, flat_units, mean_units
from rdloss.diagnostics.functional import ActiveUnitsResult
from rdloss.output import RDOutput

__all__ = ["ActiveUnits", "RatePerDimension"]


def _merge_moments(stacked: Tensor) -> Tensor:
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


class ActiveUnits(_Grouped):
    r"""Active units (Burda et al., 2015): unit ``u`` is active if $A_u > \text{threshold}$.

    $A_u = \mathrm{Var}_x\,\mathbb E_{e(z|x)}[z_u]$ is accumulated as shifted sums
    (count, and sums of ``x - shift`` and its square, with ``shift`` a data row) that are
    merged exactly across processes (Chan, Golub & LeVeque), so large offsets such as
    means of 1e4 with variance 1e-2 lose no precision in float32. ``compute`` returns
    `ActiveUnitsResult` (count, per-unit variances
    with ``correction=1``, mask) or one field with ``output=``.

    Args:
        threshold: activity threshold on the variance (Burda et al.: 0.01).
        latent_dim: number of units ``D`` (all groups together); ``None`` sizes the state at
            the first update (then every process must see at least one batch before
            ``compute``).
        groups: names of the latent groups (the loss's posterior keys, in order), or
            ``None``; updates then take a mapping with these keys and ``compute`` adds
            ``per_group``.
        output: return only this field, e.g. ``"num_active"``.
        **kwargs: ``validate_args`` (default ``True``: NaN/inf in an update raise
            ``ValueError``, at one host synchronisation per update) and the options of
            `torchmetrics.Metric`.

    Examples:
        >>> import torch
        >>> m = ActiveUnits()
        >>> m.update(torch.tensor([[0.0, 1.0], [1.0, 1.0]]))
        >>> m.update(torch.tensor([[2.0, 1.0]]))
        >>> m.compute().num_active, m.compute().variances
        (tensor(1), tensor([1., 0.]))
    """

    _fields = ActiveUnitsResult._fields
    full_state_update = True  # the state may be sized lazily; forward must not stack sizes
    moments: Tensor

    def __init__(
        self,
        threshold: float = 0.01,
        *,
        latent_dim: int | None = None,
        groups: Sequence[str] | None = None,
        output: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(output=output, **kwargs)
        self._add_group_sizes(groups)
        self.threshold = check_nonnegative_number("threshold", threshold)
        if latent_dim is not None:
            check_positive_int("latent_dim", latent_dim)
        self.latent_dim = latent_dim
        size = 0 if latent_dim is None else 1 + 3 * latent_dim
        self.add_state("moments", torch.zeros(size), dist_reduce_fx=_merge_moments, persistent=True)

    @override
    def update(
        self,
        posterior_mean: Tensor | Distribution | Mapping[str, Tensor | Distribution],
    ) -> None:
        """Add a batch of posterior means ``(B, ...)`` (or the posterior, whose mean is used).

        Units are the flattened non-batch dimensions (``(B, C, H, W)`` conv means give
        ``C*H*W`` units); with ``groups=``, a mapping from group name to means or posterior.
        """
        posterior_mean = self._join("posterior_mean", posterior_mean, mean_units)
        self._check_finite(posterior_mean=posterior_mean)
        values = posterior_mean.detach().to(self.moments.dtype)
        dim = values.shape[1]
        if self.moments.numel() not in (0, 1 + 3 * dim):
            raise ValueError(
                f"posterior_mean has {dim} units but earlier batches had "
                f"{(self.moments.numel() - 1) // 3}"
            )
        # The first batch's first row becomes the reference; later batches use the state's.
        if self.moments.numel() == 0:  # lazily sized, first update since reset
            self.moments = torch.cat([values.new_zeros(1 + 2 * dim), values[0]])
        state = self.moments
        shift = state[1 + 2 * dim :]
        if self.latent_dim is not None:  # pre-sized state: is it still empty? (no host sync)
            shift.copy_(torch.where(state[0] == 0, values[0], shift))
        centred = values - shift
        ones = torch.ones_like(centred[:, :1])
        # In place (no attribute assignment): one add of [count, S1, S2] per batch.
        state[: 1 + 2 * dim].add_(torch.cat([ones, centred, centred.square()], dim=1).sum(0))

    @override
    def _merge_units(self, incoming: dict[str, Any]) -> None:
        other = incoming["moments"].to(self.moments)
        if self._merged_size(self.moments[1:], other[1:], 3):
            self.moments = _merge_moments(torch.stack([self.moments, other]))
        elif other.numel():
            self.moments = other.clone()

    @override
    def compute(self) -> Any:
        """Return the `ActiveUnitsResult` (or the ``output`` field).

        With a single example in total the variances are NaN (undefined) and no unit is
        active; ``forward`` on a batch of one row returns that as the batch value.

        Raises:
            RuntimeError: no update since the last reset.
        """
        if self.moments.numel() == 0:
            raise RuntimeError("ActiveUnits.compute() called before any update()")
        dim = (self.moments.numel() - 1) // 3
        count, s1, s2, _ = self.moments.split([1, dim, dim, dim])
        variances = (s2 - s1.square() / count) / (count - 1.0)
        active = variances > self.threshold
        result = ActiveUnitsResult(active.sum(), variances, active)
        if self.groups is not None:
            parts = zip(self._split(variances), self._split(active), strict=True)
            result = result._replace(
                per_group={
                    g: ActiveUnitsResult(a.sum(), v, a)
                    for g, (v, a) in zip(self.groups, parts, strict=True)
                }
            )
        return self._select(result)

    @override
    def _restore_shapes(self, value: Any) -> Any:
        if isinstance(value, ActiveUnitsResult):
            per_group = value.per_group and {
                k: self._restore_shapes(v) for k, v in value.per_group.items()
            }
            return value._replace(
                variances=value.variances.reshape(-1),
                active=value.active.reshape(-1),
                per_group=per_group,
            )
        return value.reshape(-1) if self.output in ("variances", "active") else value

    @override
    def extra_repr(self) -> str:
        extra = f"threshold={self.threshold}"
        return extra if self.output is None else f"{extra}, output={self.output!r}"


class RatePerDimension(_Grouped):
    """Mean rate (KL) per latent unit over the dataset; ``compute`` returns ``(D,)`` nats.

    Units whose KL is near zero carry no information (posterior collapse of that unit);
    the sum over units is the mean rate. Fed an `RDOutput`, the mean uses its ``weight``
    (as the loss's ``out.rate``); with ``groups=``, it reads ``rate_per_group_dimension``
    and ``compute`` returns a dict of ``(D_g,)`` per group.

    Args:
        latent_dim: number of units ``D`` (all groups together); ``None`` sizes the state
            at the first update.
        groups: names of the latent groups (the loss's posterior keys, in order), or
            ``None``.
        **kwargs: ``validate_args`` (default ``True``: NaN/inf in an update raise
            ``ValueError``, at one host synchronisation per update) and the options of
            `torchmetrics.Metric`.

    Examples:
        >>> import torch
        >>> m = RatePerDimension()
        >>> m.update(torch.tensor([[0.5, 0.0], [1.5, 0.0]]))
        >>> m.compute()
        tensor([1., 0.])
    """

    full_state_update = True  # lazily sized state
    rate_sum: Tensor
    count: Tensor

    def __init__(
        self,
        *,
        latent_dim: int | None = None,
        groups: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._add_group_sizes(groups)
        if latent_dim is not None:
            check_positive_int("latent_dim", latent_dim)
        self.latent_dim = latent_dim
        size = 0 if latent_dim is None else latent_dim
        self.add_state("rate_sum", torch.zeros(size), dist_reduce_fx="sum", persistent=True)
        self.add_state("count", torch.tensor(0.0), dist_reduce_fx="sum", persistent=True)

    @override
    def update(
        self,
        rate_per_dimension: Tensor | RDOutput | Mapping[str, Tensor],
        *,
        weight: Tensor | None = None,
    ) -> None:
        """Add ``(B, ...)`` per-unit rates, or an `RDOutput` that has them.

        With ``groups=``, a mapping from group name to rates; an `RDOutput`'s ``weight``
        weights the mean.
        """
        if isinstance(rate_per_dimension, RDOutput):
            if weight is not None:
                raise ValueError("an RDOutput carries its own weight: do not pass weight=")
            output = rate_per_dimension
            weight = output.weight
            if self.groups is not None:
                per_group = output.rate_per_group_dimension
                if per_group is None:
                    raise ValueError(
                        f"this metric was built with groups={list(self.groups)} but the "
                        "RDOutput has no rate_per_group_dimension (an ungrouped call)"
                    )
                missing = [g for g, v in per_group.items() if v is None]
                if missing:
                    raise ValueError(
                        f"the KL of group(s) {missing} does not factorise over latent "
                        "dimensions: no per-dimension rate to report"
                    )
                rate_per_dimension = {g: v for g, v in per_group.items() if v is not None}
            elif output.rate_per_dimension is None:
                raise ValueError(
                    "this RDOutput has no rate_per_dimension (the KL does not factorise over "
                    "latent dimensions for this posterior/marginal pair)"
                )
            else:
                rate_per_dimension = output.rate_per_dimension
        values = self._join(
            "rate_per_dimension", rate_per_dimension, lambda n, v: flat_units(n, check_tensor(n, v))
        )
        if weight is not None:
            check_tensor("weight", weight)
            if tuple(weight.shape) != (values.shape[0],):
                raise ValueError(
                    f"weight must have shape (B,) = ({values.shape[0]},), got {tuple(weight.shape)}"
                )
        self._check_finite(weight, rate_per_dimension=values)
        values = values.detach().to(self.rate_sum.dtype)
        if self.rate_sum.numel() == 0:
            self.rate_sum = values.new_zeros(values.shape[1])
        if self.rate_sum.numel() != values.shape[1]:
            raise ValueError(
                f"rate_per_dimension has {values.shape[1]} units but earlier batches had "
                f"{self.rate_sum.numel()}"
            )
        w = values.new_ones(values.shape[0]) if weight is None else weight.detach().to(values)
        self.rate_sum.add_(w @ values)
        self.count.add_(w.sum())

    @override
    def _merge_units(self, incoming: dict[str, Any]) -> None:
        other = incoming["rate_sum"].to(self.rate_sum)
        if self._merged_size(self.rate_sum, other, 1):
            self.rate_sum = self.rate_sum + other
        elif other.numel():
            self.rate_sum = other.clone()
        self.count = self.count + incoming["count"].to(self.count)

    @override
    def compute(self) -> Any:
        """Return the ``(D,)`` mean KL per unit (a dict of ``(D_g,)`` with ``groups=``)."""
        means = self.rate_sum / self.count
        if self.groups is None:
            return means
        return dict(zip(self.groups, self._split(means), strict=True))

    @override
    def _restore_shapes(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v.reshape(-1) for k, v in value.items()}
        return value.reshape(-1)
