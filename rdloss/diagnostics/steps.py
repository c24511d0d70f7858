r"""Per-step diagnostics of sequence models (DreamerV3's RSSM, a VRNN, a DMM).

A sequence model's latent has a step axis: posterior and prior of batch shape ``(B, T)``,
and the loss reports ``rate_per_step`` ``(B, T)``. Counted per sequence, a step axis makes
the diagnostics grow with ``T`` (``T x 32 x 32`` "units" for DreamerV3); here, and in
``ActiveUnits(steps=True)`` / ``RatePerDimension(steps=True)``, **steps are samples**: a
step's latent is the unit set, and every real step of every sequence counts once. A
``(B, T)`` bool ``mask=`` (``False`` for padding) leaves padded steps out.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, kl_divergence
from typing_extensions import override

from rdloss._checks import check_distribution, check_nonnegative_number, check_tensor
from rdloss.diagnostics._grouped import check_mask
from rdloss.diagnostics._metric import _Diagnostic, merge_moments
from rdloss.output import RDOutput

__all__ = ["StepRate", "StepRateResult", "rate_per_variable"]


class StepRateResult(NamedTuple):
    r"""The rate per step over an epoch's steps ``(b, t)`` (nats; weights ``w_{bt}``).

    Attributes:
        mean: 0-dim $\bar R = \sum w_{bt} R_{bt} / \sum w_{bt}$, the mean rate of a step.
        std: 0-dim spread of the step rates over steps,
            $\sqrt{\sum w_{bt} (R_{bt} - \bar R)^2 / \sum w_{bt}}$ (``correction=0``).
        clamped_fraction: 0-dim fraction of steps whose rate is below ``free_bits``, where
            a per-step free-bits clamp $\max(R_{bt}, \lambda)$ (DreamerV3's
            ``jnp.maximum(kl, free_nats)``) replaces the rate by the constant and passes no
            gradient; ``None`` without ``free_bits``.
        steps: 0-dim $\sum w_{bt}$: the real steps counted (weighted by the examples'
            weights, if any).
    """

    mean: Tensor
    std: Tensor
    clamped_fraction: Tensor | None
    steps: Tensor


def _unwrap(dist: Distribution) -> tuple[Distribution, int]:
    """The innermost base of nested ``Independent`` s and the dims they reinterpret."""
    dims = 0
    while isinstance(dist, Independent):
        dims += dist.reinterpreted_batch_ndims
        dist = dist.base_dist
    return dist, dims


def rate_per_variable(posterior: Distribution, prior: Distribution) -> Tensor:
    r"""KL per latent variable of a latent that is a product of variables.

    ``posterior`` and ``prior`` are ``Independent`` over the same base family, e.g.
    DreamerV3's ``Independent(OneHotCategorical(logits), 1)`` with ``(B, T, 32, 32)``
    logits: 32 categorical variables of 32 classes per step. The KL of the bases,
    $\mathrm{KL}(e_v \| p_v)$ for each variable $v$, sums to the latent's KL. Feed it to
    `RatePerDimension` (``steps=True`` for a step axis), which cannot read it from the
    loss: the KL of a one-hot latent does not factorise over the one-hot entries.

    Args:
        posterior: ``Independent`` over a base with batch shape ``(*batch, *variables)``.
        prior: the same structure and shapes (expand a shared prior to the posterior's
            shape: nothing is broadcast).

    Returns:
        ``(*batch, *variables)`` KL per variable in nats, e.g. ``(B, T, 32)``.

    Raises:
        TypeError: an argument is not a ``Distribution``, or the pair has no KL registered
            in ``torch.distributions``.
        ValueError: ``posterior`` is not ``Independent`` over variables, or the two differ
            in structure or shape.

    Examples:
        >>> import torch
        >>> from torch.distributions import Independent, OneHotCategorical
        >>> q = Independent(OneHotCategorical(logits=torch.zeros(2, 5, 3, 4)), 1)
        >>> rate_per_variable(q, q).shape  # (B, T, variables)
        torch.Size([2, 5, 3])
    """
    q, n_q = _unwrap(check_distribution("posterior", posterior))
    p, n_p = _unwrap(check_distribution("prior", prior))
    if n_q == 0:
        raise ValueError(
            f"posterior must be Independent over its variables, e.g. "
            f"Independent(OneHotCategorical(logits), 1) for (B, T, 32, 32) logits, got "
            f"{type(posterior).__name__} with batch_shape {tuple(posterior.batch_shape)}"
        )
    if (n_q, q.batch_shape, q.event_shape) != (n_p, p.batch_shape, p.event_shape):
        raise ValueError(
            "posterior and prior must have the same structure and shapes (nothing is "
            f"broadcast): posterior {type(q).__name__} over batch {tuple(q.batch_shape)}, "
            f"event {tuple(q.event_shape)}, {n_q} reinterpreted dims; prior "
            f"{type(p).__name__} over batch {tuple(p.batch_shape)}, event "
            f"{tuple(p.event_shape)}, {n_p} reinterpreted dims"
        )
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        raise TypeError(
            f"torch.distributions has no KL registered for ({type(q).__name__}, "
            f"{type(p).__name__}): no per-variable rate"
        ) from None


class StepRate(_Diagnostic):
    r"""The rate per step of a sequence model: mean, spread, free-bits clamp fraction.

    Streams the per-step rates $R_{bt}$ (``(B, T)`` tensors, or an `RDOutput`'s
    ``rate_per_step``) over an epoch: every real step of every sequence is one sample.
    Mean and spread are kept as shifted sums merged exactly across processes (Chan, Golub
    & LeVeque), so they do not depend on the batching or the number of processes.
    ``compute`` returns a `StepRateResult`, or one field with ``output=``.

    With ``free_bits=λ``, it also counts the steps whose rate is below λ: where a per-step
    clamp $\max(R_{bt}, \lambda)$ (DreamerV3's free nats, ``FreeBits(per="step")``) is
    active, the step's rate passes no gradient.

    Args:
        free_bits: the per-step free-bits level λ in nats (DreamerV3: 1.0), or ``None``.
        group: the stepped group to read from an `RDOutput` (``None``: its only one; an
            ungrouped call's latent is ``"z"``).
        output: return only this field, e.g. ``"clamped_fraction"``, for ``self.log``.
        **kwargs: ``validate_args`` (default ``True``: NaN/inf in an update raise
            ``ValueError``, at one host synchronisation per update) and the options of
            `torchmetrics.Metric`.

    Examples:
        >>> import torch
        >>> m = StepRate(free_bits=1.0)
        >>> mask = torch.tensor([[True, True], [True, False]])  # the last step is padding
        >>> m.update(torch.tensor([[0.5, 2.0], [3.0, 9.0]]), mask=mask)
        >>> r = m.compute()
        >>> r.mean, r.clamped_fraction, r.steps
        (tensor(1.8333), tensor(0.3333), tensor(3.))
    """

    _fields = StepRateResult._fields
    moments: Tensor
    clamped: Tensor

    def __init__(
        self,
        *,
        free_bits: float | None = None,
        group: str | None = None,
        output: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(output=output, **kwargs)
        if group is not None and (not isinstance(group, str) or not group):
            raise TypeError(f"group must be a non-empty str or None, got {group!r}")
        self.free_bits = (
            None if free_bits is None else check_nonnegative_number("free_bits", free_bits)
        )
        self.group = group
        self._require(("clamped_fraction",), free_bits is not None, "free_bits")
        # [count, sum(R - shift), sum((R - shift)^2), shift], merged as ActiveUnits' moments.
        self.add_state("moments", torch.zeros(4), dist_reduce_fx=merge_moments, persistent=True)
        self.add_state("clamped", torch.tensor(0.0), dist_reduce_fx="sum", persistent=True)

    def _from_output(self, output: RDOutput) -> Tensor:
        per_step = output.rate_per_step
        if per_step is None:
            raise ValueError(
                "this RDOutput has no rate_per_step: no latent has a step axis (a posterior "
                "of batch_shape (B, T) with an event shape)"
            )
        if self.group is None:
            if len(per_step) != 1:
                raise ValueError(
                    f"this RDOutput has steps in groups {list(per_step)}: build "
                    "StepRate(group=...) to pick one"
                )
            return next(iter(per_step.values()))
        if self.group not in per_step:
            raise ValueError(
                f"group={self.group!r} is not among this RDOutput's stepped groups {list(per_step)}"
            )
        return per_step[self.group]

    @override
    def update(
        self,
        rate_per_step: Tensor | RDOutput,
        *,
        weight: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> None:
        """Add a batch of ``(B, T)`` per-step rates (or an `RDOutput`'s ``rate_per_step``).

        Args:
            rate_per_step: ``(B, T)`` rates in nats, or an `RDOutput` (which carries its
                ``weight``).
            weight: ``(B,)`` per-example weights, each applied to every step of its example.
            mask: ``(B, T)`` bool, ``False`` for padded steps, which count nothing.
        """
        if isinstance(rate_per_step, RDOutput):
            if weight is not None:
                raise ValueError("an RDOutput carries its own weight: do not pass weight=")
            weight = rate_per_step.weight
            rate_per_step = self._from_output(rate_per_step)
        rate = check_tensor("rate_per_step", rate_per_step)
        if rate.ndim != 2 or rate.shape[1] == 0 or not rate.is_floating_point():
            raise ValueError(
                f"rate_per_step must be a floating (B, T) tensor with T >= 1, got "
                f"{tuple(rate.shape)} of dtype {rate.dtype}"
            )
        if weight is not None:
            check_tensor("weight", weight)
            if tuple(weight.shape) != (rate.shape[0],):
                raise ValueError(
                    f"weight must have shape (B,) = ({rate.shape[0]},), got {tuple(weight.shape)}"
                )
        keep = None if mask is None else check_mask(mask, tuple(rate.shape))
        if keep is not None:  # padding may hold anything, NaN included
            rate = torch.where(keep, rate, torch.zeros((), dtype=rate.dtype, device=rate.device))
        self._check_finite(weight, rate_per_step=rate)
        r = rate.detach().to(self.moments.dtype)
        w = torch.ones_like(r) if weight is None else weight.detach().to(r)[:, None].expand_as(r)
        if keep is not None:
            w = w * keep
        r, w = r.reshape(-1), w.reshape(-1)
        state = self.moments
        # The first counted step becomes the reference while nothing was counted (no sync).
        first = r.index_select(0, w.argmax()[None])
        state[3:].copy_(torch.where(state[0] == 0, first, state[3:]))
        weighted = w * (r - state[3])
        state[:3].add_(torch.stack([w.sum(), weighted.sum(), (weighted * (r - state[3])).sum()]))
        if self.free_bits is not None:
            self.clamped.add_((w * (r < self.free_bits)).sum().to(self.clamped))

    @override
    def compute(self) -> Any:
        """Return the `StepRateResult` (or the ``output`` field); NaN before any step."""
        count, s1, s2, shift = self.moments.unbind()
        variance = (s2 - s1.square() / count) / count
        fraction = None if self.free_bits is None else self.clamped / count
        result = StepRateResult(shift + s1 / count, variance.clamp_min(0).sqrt(), fraction, count)
        return self._select(result)

    @override
    def extra_repr(self) -> str:
        extra = f"free_bits={self.free_bits}, group={self.group!r}"
        return extra if self.output is None else f"{extra}, output={self.output!r}"
