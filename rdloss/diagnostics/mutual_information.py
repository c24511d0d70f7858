r"""``MutualInformation``: aggregate-posterior estimates over a whole dataset.

Stores every diagonal-Gaussian posterior seen by ``update`` (list states, concatenated
across processes) and, at ``compute``, runs
`aggregate_posterior` on all of them: $I(n;z)$,
the marginal gap $\mathrm{KL}(q(z)\,\|\,m(z)) = R - I$, total correlation and
dimension-wise KL (Hoffman & Johnson, 2016; Chen et al., 2018).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from typing_extensions import override

from rdloss._checks import check_positive_int, check_tensor, should_validate
from rdloss.diagnostics._metric import _Diagnostic
from rdloss.diagnostics.aggregate import (
    AggregatePosterior,
    aggregate_posterior,
    check_gaussian_parameters,
)
from rdloss.latents import as_latent

__all__ = ["MutualInformation"]


def _normal_parameters(posterior: Distribution) -> tuple[Tensor, Tensor]:
    dist = as_latent(posterior)
    base = dist.base_dist if isinstance(dist, Independent) else dist
    if not isinstance(base, Normal):
        raise TypeError(
            "MutualInformation needs diagonal-Gaussian posteriors (Normal or "
            f"Independent(Normal)), got {type(posterior).__name__} over "
            f"{type(base).__name__}"
        )
    batch = dist.batch_shape[0]
    loc = base.loc.expand(base.batch_shape).reshape(batch, -1)
    return loc, base.scale.expand(base.batch_shape).reshape(batch, -1)


class MutualInformation(_Diagnostic):
    r"""Whole-dataset $I(n;z)$, marginal gap, total correlation, dimension-wise KL.

    ``update`` stores posterior means and scales (``O(N D)`` memory); ``compute`` evaluates
    the aggregate posterior $q(z) = \frac1N\sum_n e(z|x_n)$ exactly over all ``N``
    stored posteriors in chunks (memory ``O(chunk * N)``, one matrix product per chunk) and
    returns `AggregatePosterior`, which states the
    saturation ``log N``, the Monte Carlo standard error and the samples used. The
    samples are drawn from a generator seeded with ``seed`` so every process (and every
    call) gets the same estimate.

    Called as ``metric(...)`` (``forward``) it also returns the minibatch estimate of the
    current batch, which saturates at ``log B``.

    Args:
        marginal: ``m(z)``: a marginal module or ``Distribution`` for the gap, the rate and
            the dimension-wise KL; ``None`` reports ``I`` and the total correlation only.
        tc_samples: points (of the ``N``) for total correlation and dimension-wise KL.
        chunk_size: rows per chunk; default keeps each block near 32 MiB.
        seed: seed of the sampling generator.
        progress: tqdm progress bars during ``compute`` (off by default).
        output: return only this field, e.g. ``"mutual_information"``.
        **kwargs: ``validate_args`` (default ``True``: NaN/inf in an update raise
            ``ValueError``, at one host synchronisation per update) and the options of
            `torchmetrics.Metric`.

    Examples:
        >>> import torch
        >>> from rdloss import helpers
        >>> from rdloss.marginals import StandardNormal
        >>> metric = MutualInformation(StandardNormal(2), tc_samples=64)
        >>> for _ in range(3):
        ...     metric.update(helpers.normal(torch.randn(100, 2), scale=0.3))
        >>> out = metric.compute()
        >>> out.num_points, round(out.saturation, 3)
        (300, 5.704)
    """

    _fields = AggregatePosterior._fields
    loc: list[Tensor]
    scale: list[Tensor]

    def __init__(
        self,
        marginal: Distribution | nn.Module | None = None,
        *,
        tc_samples: int = 256,
        chunk_size: int | None = None,
        seed: int = 0,
        progress: bool = False,
        output: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(output=output, **kwargs)
        if marginal is not None and not isinstance(marginal, (nn.Module, Distribution)):
            raise TypeError(
                "marginal must be a marginal module, a Distribution or None, got "
                f"{type(marginal).__name__}"
            )
        if isinstance(tc_samples, bool) or not isinstance(tc_samples, int) or tc_samples < 0:
            raise ValueError(f"tc_samples must be a non-negative int, got {tc_samples!r}")
        # Checked here, not first at compute() after a whole epoch of updates.
        if chunk_size is not None:
            check_positive_int("chunk_size", chunk_size)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
        self._require(
            ("marginal_gap", "rate", "dimensionwise_kl"), marginal is not None, "a marginal"
        )
        self._require(("total_correlation",), tc_samples > 0, "tc_samples > 0")
        self.marginal = marginal
        self.tc_samples = tc_samples
        self.chunk_size = chunk_size
        self.seed = seed
        self.progress = progress
        self.add_state("loc", [], dist_reduce_fx="cat", persistent=True)
        self.add_state("scale", [], dist_reduce_fx="cat", persistent=True)

    @override
    def update(
        self,
        posterior: Distribution | Tensor,
        scale: Tensor | None = None,
        *,
        logvar: Tensor | None = None,
    ) -> None:
        """Store a batch of posteriors.

        Args:
            posterior: ``e(z|x)`` as ``Normal``/``Independent(Normal)`` with batch ``(B,)``,
                or the ``(B, D)`` means with ``scale`` or ``logvar``.
            scale: ``(B, D)`` standard deviations when ``posterior`` is a tensor.
            logvar: ``(B, D)`` log-variances when ``posterior`` is a tensor.
        """
        if isinstance(posterior, Distribution):
            if scale is not None or logvar is not None:
                raise ValueError("scale/logvar are given by the posterior distribution")
            loc, scale = _normal_parameters(posterior)
        else:
            loc = check_tensor("posterior", posterior, min_ndim=2)
            if (scale is None) == (logvar is None):
                raise ValueError("with tensor means, give exactly one of scale= or logvar=")
            if scale is None:
                assert logvar is not None  # narrowed by the exactly-one check above
                scale = torch.exp(0.5 * check_tensor("logvar", logvar))
            check_tensor("scale", scale)
            if loc.ndim != 2 or scale.shape != loc.shape or loc.shape[1] == 0:
                raise ValueError(
                    f"means and scales must both have shape (B, D) with D >= 1, got "
                    f"{tuple(loc.shape)} "
                    f"and {tuple(scale.shape)}"
                )
        stored = self.loc[0] if isinstance(self.loc, list) and self.loc else None
        if stored is not None and stored.shape[1:] != loc.shape[1:]:
            raise ValueError(
                f"posterior has {loc.shape[1]} latent dimensions but earlier batches had "
                f"{stored.shape[1]} (one latent per metric; reset() between models)"
            )
        if should_validate(self.validate_args):
            check_gaussian_parameters(loc, scale)
        self.loc.append(loc.detach())
        self.scale.append(scale.detach())

    @override
    def _merge_incoming(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Keep this metric's posteriors first, then the incoming ones.

        torchmetrics puts the incoming rows first; the total-correlation draw depends on
        the order of the rows, and one metric over both streams has this one's first.
        """
        own = {"loc": list(self.loc), "scale": list(self.scale)}
        super()._merge_incoming(incoming_state)
        incoming = len(self.loc) - len(own["loc"])
        self.loc = own["loc"] + list(self.loc[:incoming])
        self.scale = own["scale"] + list(self.scale[:incoming])

    @override
    def compute(self) -> Any:
        """Return the `AggregatePosterior` (or the ``output`` field)."""
        if isinstance(self.loc, list) and not self.loc:
            raise RuntimeError("MutualInformation.compute() called before any update()")
        loc, scale = dim_zero_cat(self.loc), dim_zero_cat(self.scale)
        generator = torch.Generator(device=loc.device).manual_seed(self.seed)
        result = aggregate_posterior(
            loc,
            scale=scale,
            marginal=self.marginal,
            tc_samples=self.tc_samples,
            chunk_size=self.chunk_size,
            generator=generator,
            progress=self.progress,
        )
        return self._select(result)
