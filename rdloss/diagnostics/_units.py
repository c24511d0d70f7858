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
from rdloss.diagnostics._grouped import _Grouped, flat_units, mean_units, step_rows
from rdloss.diagnostics._metric import merge_moments
from rdloss.diagnostics.functional import ActiveUnitsResult
from rdloss.output import RDOutput

__all__ = ["ActiveUnits", "RatePerDimension"]

_VARIABLES_HINT = (
    "; for Independent(OneHotCategorical) latents pass "
    "rdloss.diagnostics.functional.rate_per_variable(posterior, prior) instead"
)


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
        steps: read ``(B, T, ...)`` means (or posteriors of batch shape ``(B, T)``) of a
            sequence model as ``B*T`` samples of one step's latent: units are counted per
            step (DreamerV3's 32 x 32 one-hot latent has 1,024 units, not ``T * 1,024``),
            and ``update`` takes ``mask=``.
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
        steps: bool = False,
        output: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(output=output, **kwargs)
        self._add_group_sizes(groups, steps)
        self.threshold = check_nonnegative_number("threshold", threshold)
        if latent_dim is not None:
            check_positive_int("latent_dim", latent_dim)
        self.latent_dim = latent_dim
        size = 0 if latent_dim is None else 1 + 3 * latent_dim
        self.add_state("moments", torch.zeros(size), dist_reduce_fx=merge_moments, persistent=True)

    @override
    def update(
        self,
        posterior_mean: Tensor | Distribution | Mapping[str, Tensor | Distribution],
        *,
        mask: Tensor | None = None,
    ) -> None:
        """Add a batch of posterior means ``(B, ...)`` (or the posterior, whose mean is used).

        Units are the flattened non-batch dimensions (``(B, C, H, W)`` conv means give
        ``C*H*W`` units); with ``groups=``, a mapping from group name to means or posterior.
        With ``steps=True``, means are ``(B, T, ...)`` and ``mask`` (``(B, T)`` bool,
        ``False`` for padded steps) leaves padded steps out.
        """
        joined = self._join(
            "posterior_mean", posterior_mean, lambda n, v: mean_units(n, v, self.steps)
        )
        rows, keep = step_rows("posterior_mean", joined, mask, self.steps)
        self._check_finite(posterior_mean=rows)
        values = rows.detach().to(self.moments.dtype)
        dim = values.shape[1]
        if self.moments.numel() not in (0, 1 + 3 * dim):
            raise ValueError(
                f"posterior_mean has {dim} units but earlier batches had "
                f"{(self.moments.numel() - 1) // 3}"
            )
        # The first (real) row seen becomes the reference; later batches use the state's.
        # index_select, not values[tensor]: a tensor index would be read on the host.
        first = values[0] if keep is None else values.index_select(0, keep.argmax()[None])[0]
        if self.moments.numel() == 0:  # lazily sized, first update since reset
            self.moments = torch.cat([values.new_zeros(1 + 2 * dim), first])
        state = self.moments
        shift = state[1 + 2 * dim :]
        # Still empty (pre-sized, or every step so far was padding)? No host sync.
        shift.copy_(torch.where(state[0] == 0, first, shift))
        centred = values - shift
        w = torch.ones_like(centred[:, :1]) if keep is None else keep[:, None].to(centred)
        if keep is not None:
            centred = centred * w  # padded rows add nothing to the sums
        # In place (no attribute assignment): one add of [count, S1, S2] per batch.
        state[: 1 + 2 * dim].add_(torch.cat([w, centred, centred.square()], dim=1).sum(0))

    @override
    def _merge_units(self, incoming: dict[str, Any]) -> None:
        other = incoming["moments"].to(self.moments)
        if self._merged_size(self.moments[1:], other[1:], 3):
            self.moments = merge_moments(torch.stack([self.moments, other]))
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
        steps: read ``(B, T, ...)`` rates of a sequence model as ``B*T`` samples of one
            step's latent: ``compute`` gives the mean rate per unit of a step (summing to the
            mean rate per step), and ``update`` takes ``mask=``. For
            ``Independent(OneHotCategorical)`` latents, whose KL the loss cannot split per
            dimension, pass `rate_per_variable` (DreamerV3's 32 x 32 latent: 32
            categorical variables per step).
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
        steps: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._add_group_sizes(groups, steps)
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
        mask: Tensor | None = None,
    ) -> None:
        """Add ``(B, ...)`` per-unit rates, or an `RDOutput` that has them.

        With ``groups=``, a mapping from group name to rates; an `RDOutput`'s ``weight``
        weights the mean. With ``steps=True``, ``(B, T, ...)`` rates (an `RDOutput`'s are
        split into steps by its ``rate_per_step``), and ``mask`` (``(B, T)`` bool,
        ``False`` for padded steps) leaves padded steps out.
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
                        f"dimensions: no per-dimension rate to report{_VARIABLES_HINT}"
                    )
                rate_per_dimension = {
                    g: self._output_steps(output, g, v)
                    for g, v in per_group.items()
                    if v is not None
                }
            elif output.rate_per_dimension is None:
                raise ValueError(
                    "this RDOutput has no rate_per_dimension (the KL does not factorise over "
                    f"latent dimensions for this posterior/marginal pair){_VARIABLES_HINT}"
                )
            else:
                rate_per_dimension = self._output_steps(output, "z", output.rate_per_dimension)
        joined = self._join(
            "rate_per_dimension",
            rate_per_dimension,
            lambda n, v: flat_units(n, check_tensor(n, v), self.steps),
        )
        if weight is not None:
            check_tensor("weight", weight)
            if tuple(weight.shape) != (joined.shape[0],):
                raise ValueError(
                    f"weight must have shape (B,) = ({joined.shape[0]},), got {tuple(weight.shape)}"
                )
        rows, keep = step_rows("rate_per_dimension", joined, mask, self.steps)
        self._check_finite(weight, rate_per_dimension=rows)
        if weight is not None and self.steps:  # each step of an example has its weight
            weight = weight[:, None].expand(joined.shape[:2]).reshape(-1)
        if keep is not None:
            weight = keep if weight is None else weight.to(keep) * keep
        values = rows.detach().to(self.rate_sum.dtype)
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

    def _output_steps(self, output: RDOutput, group: str, value: Tensor) -> Tensor:
        """An `RDOutput`'s ``(B, T*D)`` rates as ``(B, T, D)`` when ``steps=True``."""
        if not self.steps:
            return value
        per_step = (output.rate_per_step or {}).get(group)
        if per_step is None:
            raise ValueError(
                f"steps=True but the latent {group!r} of this RDOutput has no step axis "
                "(no rate_per_step)"
            )
        return value.reshape(*per_step.shape, -1)

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
