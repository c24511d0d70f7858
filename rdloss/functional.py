"""Pure functions behind `rdloss.RateDistortionLoss`.

Conventions (Alemi et al., 2018, "Fixing a Broken ELBO", arXiv:1711.00464):

* posterior ``e(z|x)``: a ``Distribution`` with ``batch_shape == (B,)`` and the latent
  ``event_shape``;
* marginal ``m(z)``: a ``Distribution`` with ``batch_shape == ()`` and the same event shape;
* likelihood ``d(x|z)``: a ``Distribution`` whose ``batch_shape + event_shape`` equals
  ``x.shape`` (one latent sample) or ``(S,) + x.shape`` (``S`` samples per example).

Rate ``R = E_e[log e(z|x) - log m(z)]`` is summed over latent dimensions and distortion
``D = E_e[-log d(x|z)]`` over data dimensions, both per example and in nats.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    Normal,
    OneHotCategorical,
)
from torch.distributions.kl import _KL_MEMOIZE, _KL_REGISTRY, _dispatch_kl

from rdloss._validation import check_distribution, check_tensor, widen_half

__all__ = [
    "Rate",
    "RateEstimator",
    "as_latent",
    "as_marginal",
    "batch_mean",
    "distortion",
    "elbo",
    "enumerate_posterior",
    "enumerated_rate",
    "global_batch_mean",
    "rate",
    "sample_mean",
    "standard_normal",
]

RateEstimator = Literal["analytic", "mc", "auto"]
UsedEstimator = Literal["analytic", "mc", "enumerate"]


class Rate(NamedTuple):
    """Per-example rate and how it was computed.

    Attributes:
        per_example: ``(B,)`` rate in nats, summed over latent dimensions.
        per_dimension: ``(B, D)`` rate per flattened latent dimension where the KL factorises
            (both posterior and marginal are products over dimensions), else ``None``.
        estimator: ``"analytic"`` (closed-form KL), ``"mc"`` (Monte Carlo) or
            ``"enumerate"`` (exact sum over a discrete support).
    """

    per_example: Tensor
    per_dimension: Tensor | None
    estimator: UsedEstimator


def as_latent(posterior: object, name: str = "posterior") -> Distribution:
    """Return ``posterior`` with ``batch_shape == (B,)``.

    Batch dimensions after the first are reinterpreted as latent (event) dimensions, so
    ``Normal(mu, sigma)`` with ``mu`` of shape ``(B, D)`` becomes a distribution over
    ``D``-vectors, as ``Independent(Normal(mu, sigma), 1)`` would.

    Raises:
        TypeError: ``posterior`` is not a ``Distribution``.
        ValueError: ``posterior`` has no batch dimension.
    """
    dist = check_distribution(name, posterior)
    if len(dist.batch_shape) == 0:
        raise ValueError(
            f"{name} must have a batch dimension (batch_shape (B,)), got batch_shape () "
            f"and event_shape {tuple(dist.event_shape)}"
        )
    if len(dist.batch_shape) > 1:
        dist = Independent(dist, len(dist.batch_shape) - 1)
    if dist.batch_shape[0] == 0:
        raise ValueError(f"{name} has an empty batch (batch_shape {tuple(dist.batch_shape)})")
    return dist


def as_marginal(marginal: object, event_shape: torch.Size) -> Distribution:
    """Return ``marginal`` with ``batch_shape == ()`` and the given latent event shape.

    Trailing batch dimensions that spell out ``event_shape`` are reinterpreted, so
    ``Normal(zeros(D), ones(D))`` is accepted for ``D``-dimensional latents.

    Raises:
        TypeError: ``marginal`` is not a ``Distribution``.
        ValueError: its shape does not match the posterior's event shape.
    """
    dist = check_distribution("marginal", marginal)
    if dist.batch_shape + dist.event_shape != event_shape:
        raise ValueError(
            "marginal must describe one latent of the posterior's event_shape "
            f"{tuple(event_shape)} (batch_shape ()), got batch_shape "
            f"{tuple(dist.batch_shape)} and event_shape {tuple(dist.event_shape)}"
        )
    if len(dist.batch_shape) > 0:
        dist = Independent(dist, len(dist.batch_shape))
    return dist


def _sample_dims(z: Tensor, posterior: Distribution) -> int:
    """Number of leading sample dimensions of ``z`` (0 or 1), validated against the posterior."""
    batch, event = posterior.batch_shape, posterior.event_shape
    n_event = len(event)
    if z.ndim in (1 + n_event, 2 + n_event) and z.shape[z.ndim - n_event :] == event:
        lead = z.shape[: z.ndim - n_event]
        if lead[-1] == batch[0]:
            return len(lead) - 1
    raise ValueError(
        f"z must have shape (B, *event) = {(batch[0], *event)} or (S, B, *event), "
        f"got {tuple(z.shape)}"
    )


def _flat_latents(values: Tensor, batch: int) -> Tensor:
    """``(B, D)`` view of per-dimension values (no call when already flat)."""
    return values if values.ndim == 2 else values.reshape(batch, -1)


def _factorised_parts(
    posterior: Distribution, marginal: Distribution
) -> tuple[Distribution, Distribution] | None:
    """The elementwise base distributions of two products over dimensions, if both are."""
    if (
        isinstance(posterior, Independent)
        and isinstance(marginal, Independent)
        and posterior.reinterpreted_batch_ndims == marginal.reinterpreted_batch_ndims
        and len(posterior.base_dist.event_shape) == 0
        and len(marginal.base_dist.event_shape) == 0
    ):
        return posterior.base_dist, marginal.base_dist
    return None


def _closed_form_kl(p: Distribution, q: Distribution) -> Tensor | None:
    """``kl_divergence(p, q)``, or ``None`` where torch.distributions registers no closed form."""
    # Not kl_divergence itself: it memoises into a global dict, and that write inside a
    # compiled region fails the guard dynamo keeps on the dict, so the next call recompiles
    # (pairs without a KL, e.g. mixtures and flows, are never memoised before). The exact
    # registry, then torch's memo (warm for inexact pairs, whose dispatch ranks matches with
    # min() over a generator that fullgraph=True cannot trace), then the dispatch, unmemoised.
    key = (type(p), type(q))
    fun = _KL_REGISTRY.get(key)
    if fun is None:
        fun = _KL_MEMOIZE.get(key)
    if fun is None:  # NotImplemented (no closed form) has no truth value: compare with is
        fun = _dispatch_kl(*key)
    if fun is NotImplemented:
        return None
    try:
        kl: Tensor = fun(p, q)
        return kl
    except NotImplementedError:  # also raised by pairs like Independent over a missing base KL
        return None


def _analytic_rate(posterior: Distribution, marginal: Distribution) -> Rate | None:
    parts = _factorised_parts(posterior, marginal)
    if parts is not None:
        per_dimension = _closed_form_kl(*parts)
        if per_dimension is not None:
            per_dimension = _flat_latents(widen_half(per_dimension), posterior.batch_shape[0])
            return Rate(per_dimension.sum(-1), per_dimension, "analytic")
    per_example = _closed_form_kl(posterior, marginal)
    return None if per_example is None else Rate(widen_half(per_example), None, "analytic")


def _mc_rate(posterior: Distribution, marginal: Distribution, z: Tensor) -> Rate:
    batch = posterior.batch_shape[0]
    n_sample = _sample_dims(z, posterior)
    parts = _factorised_parts(posterior, marginal)
    if parts is not None:
        log_ratio = widen_half(parts[0].log_prob(z)) - widen_half(parts[1].log_prob(z))
        per_dimension = log_ratio.mean(0) if n_sample else log_ratio
        per_dimension = _flat_latents(per_dimension, batch)
        return Rate(per_dimension.sum(-1), per_dimension, "mc")
    log_ratio = widen_half(posterior.log_prob(z)) - widen_half(marginal.log_prob(z))
    return Rate(log_ratio.mean(0) if n_sample else log_ratio, None, "mc")


def standard_normal(posterior: Distribution) -> Distribution:
    """``N(0, I)`` over the posterior's event shape, in its dtype and on its device."""
    loc = posterior.mean.new_zeros(posterior.event_shape).detach()
    # Known-valid parameters: skip torch's argument checks (a host sync each).
    unit = Normal(loc, torch.ones_like(loc), validate_args=False)
    if len(posterior.event_shape) == 0:
        # A scalar latent: torch registers no KL for Independent(Normal, 0).
        return unit
    return Independent(unit, len(posterior.event_shape), validate_args=False)


def _standard_normal_rate(posterior: Distribution) -> Rate | None:
    r"""Closed-form KL to $\mathcal N(0, I)$ of a product of Normals, else ``None``.

    $\tfrac12(\mu^2 + \sigma^2 - 1) - \log\sigma$ per dimension: the same value as torch's
    Normal-Normal KL, without building the marginal or dividing by its unit scale.
    """
    # A bare Normal here is a scalar latent (as_latent wraps extra batch dims).
    base = posterior.base_dist if isinstance(posterior, Independent) else posterior
    if type(base) is not Normal:
        return None
    loc, scale = widen_half(base.loc), widen_half(base.scale)
    # The same sum in four fused ops (addcmul: a + v * b * c): this runs every step.
    per_dimension = torch.addcmul(-0.5 - scale.log(), loc, loc, value=0.5)
    per_dimension = torch.addcmul(per_dimension, scale, scale, value=0.5)
    per_dimension = _flat_latents(per_dimension, posterior.batch_shape[0])
    return Rate(per_dimension.sum(-1), per_dimension, "analytic")


def rate(
    posterior: Distribution,
    marginal: Distribution | None = None,
    *,
    z: Tensor | None = None,
    estimator: RateEstimator = "auto",
) -> Rate:
    r"""Per-example rate $R = \mathrm{KL}(e(z|x) \,\|\, m(z))$ in nats.

    Args:
        posterior: ``e(z|x)`` with ``batch_shape (B,)`` (extra batch dims become event dims).
        marginal: ``m(z)`` with ``batch_shape ()`` and the posterior's event shape;
            ``None`` for $\mathcal N(0, I)$ (closed form for diagonal-Gaussian posteriors
            without building the marginal).
        z: ``(B, *event)`` or ``(S, B, *event)`` samples from the posterior, the same ones
            that fed the decoder. Required for ``"mc"`` and for ``"auto"`` when no closed
            form is registered.
        estimator: ``"analytic"`` uses ``torch.distributions.kl_divergence``; ``"mc"`` the
            single-sample estimate $\frac1S\sum_s \log e(z_s|x) - \log m(z_s)$;
            ``"auto"`` the closed form where one is registered, else Monte Carlo.

    Returns:
        `Rate` with ``per_example (B,)``, ``per_dimension (B, D)`` or ``None``, and
        the estimator used.

    Raises:
        ValueError: unknown estimator, shape mismatch, or no way to compute the rate.
        NotImplementedError: ``"analytic"`` asked for a pair without a registered KL.

    Examples:
        >>> import torch
        >>> from torch.distributions import Normal
        >>> q = Normal(torch.zeros(2, 3), torch.ones(2, 3))
        >>> m = Normal(torch.zeros(3), torch.ones(3))
        >>> rate(q, m).per_example
        tensor([0., 0.])
    """
    if estimator not in ("analytic", "mc", "auto"):
        raise ValueError(f"estimator must be 'analytic', 'mc' or 'auto', got {estimator!r}")
    posterior = as_latent(posterior)
    if marginal is None:
        if estimator != "mc":
            closed = _standard_normal_rate(posterior)
            if closed is not None:
                return closed
        marginal = standard_normal(posterior)
    marginal = as_marginal(marginal, posterior.event_shape)
    if z is not None:
        check_tensor("z", z)
    if estimator != "mc":
        result = _analytic_rate(posterior, marginal)
        if result is not None:
            return result
        if estimator == "analytic":
            raise NotImplementedError(
                "estimator='analytic' but torch.distributions has no KL registered for "
                f"({type(posterior).__name__}, {type(marginal).__name__}); use 'mc' or 'auto'"
            )
    if z is None:
        raise ValueError(
            f"z is required for the Monte Carlo rate (estimator={estimator!r}, no closed-form "
            f"KL for ({type(posterior).__name__}, {type(marginal).__name__})); pass the z "
            "that fed the decoder, or a decoder so the loss draws it"
        )
    return _mc_rate(posterior, marginal, z)


def enumerate_posterior(posterior: Distribution) -> tuple[Tensor, Tensor]:
    """Support and probabilities of a discrete posterior, for exact expectations.

    Args:
        posterior: ``Categorical`` (``z`` are indices) or ``OneHotCategorical`` (``z`` are
            one-hot vectors) with ``batch_shape (B,)`` and ``K`` categories.

    Returns:
        ``(z, probs)``: ``z`` of shape ``(K, B)`` or ``(K, B, K)``, ``probs`` of shape
        ``(K, B)`` with ``probs[k, b] = e(z_k | x_b)``.

    Raises:
        TypeError: the posterior is not one of the two enumerable types.
        ValueError: its batch shape is not ``(B,)``.
    """
    check_distribution("posterior", posterior)
    if not isinstance(posterior, (Categorical, OneHotCategorical)):
        raise TypeError(
            "samples='enumerate' needs a Categorical or OneHotCategorical posterior, got "
            f"{type(posterior).__name__}"
        )
    if len(posterior.batch_shape) != 1:
        raise ValueError(
            "an enumerated posterior must have batch_shape (B,) (one discrete latent per "
            f"example), got {tuple(posterior.batch_shape)}"
        )
    return posterior.enumerate_support(expand=True), posterior.probs.transpose(0, 1)


def enumerated_rate(posterior: Distribution, marginal: Distribution) -> Rate:
    r"""Exact rate of a discrete posterior.

    The closed-form KL where one is registered, else $\sum_k q_k \log(q_k/m_k)$.

    Args:
        posterior: ``Categorical`` or ``OneHotCategorical`` with ``batch_shape (B,)``.
        marginal: a distribution over the same support, ``batch_shape ()``.

    Returns:
        `Rate` with ``estimator`` ``"analytic"`` or ``"enumerate"``.
    """
    z, probs = enumerate_posterior(posterior)
    marginal = as_marginal(marginal, posterior.event_shape)
    result = _analytic_rate(posterior, marginal)
    if result is not None:
        return result
    log_ratio = posterior.log_prob(z) - marginal.log_prob(z)
    # 0 * log 0 = 0: categories the posterior never visits contribute nothing.
    terms = torch.where(probs > 0, probs * log_ratio, torch.zeros_like(log_ratio))
    return Rate(terms.sum(0), None, "enumerate")


def distortion(x: Tensor, likelihood: Distribution) -> Tensor:
    r"""Per-sample distortion $-\log d(x|z)$ summed over data dimensions.

    The likelihood must cover ``x`` exactly: ``batch_shape + event_shape == x.shape``, or
    ``(S,) + x.shape`` for ``S`` latent samples per example. Nothing else is broadcast, so a
    ``(B, 784)`` likelihood against ``(B, 1, 28, 28)`` images is an error, not a
    ``(B, B, ...)`` tensor.

    Args:
        x: ``(B, ...)`` data.
        likelihood: ``d(x|z)`` as above; any split between batch and event dims is fine.

    Returns:
        ``(B,)`` or ``(S, B)`` distortion in nats.

    Raises:
        TypeError: wrong argument types.
        ValueError: the likelihood's shape does not cover ``x``.

    Examples:
        >>> import torch
        >>> from torch.distributions import Bernoulli
        >>> x = torch.ones(2, 3)
        >>> distortion(x, Bernoulli(probs=torch.full((2, 3), 0.5)))
        tensor([2.0794, 2.0794])
    """
    check_tensor("x", x, min_ndim=1)
    check_distribution("likelihood", likelihood)
    shape = likelihood.batch_shape + likelihood.event_shape
    if shape == x.shape:
        n_lead = 1
    elif len(shape) == x.ndim + 1 and shape[1:] == x.shape:
        n_lead = 2
    else:
        raise ValueError(
            "likelihood must cover x exactly: batch_shape + event_shape must equal x.shape "
            f"{tuple(x.shape)} (or (S, *x.shape) for S samples), got batch_shape "
            f"{tuple(likelihood.batch_shape)} + event_shape {tuple(likelihood.event_shape)}; "
            "reshape the decoder output to x's shape (no broadcasting is done)"
        )
    if len(likelihood.batch_shape) < n_lead:
        raise ValueError(
            f"likelihood's event_shape {tuple(likelihood.event_shape)} swallows the "
            f"{'sample and ' if n_lead == 2 else ''}batch dimension: its batch_shape must "
            f"start with {tuple(shape[:n_lead])}, got {tuple(likelihood.batch_shape)} "
            "(build it with event_dims counting data dims only)"
        )
    per_element = widen_half(_negative_log_prob(likelihood, x))
    data_dims = tuple(range(n_lead, per_element.ndim))
    return per_element.sum(data_dims) if data_dims else per_element


def _negative_log_prob(likelihood: Distribution, x: Tensor) -> Tensor:
    """``-likelihood.log_prob(x)``, elementwise over a factorised Bernoulli's pixels.

    ``Bernoulli.log_prob`` negates the binary cross-entropy, and with the negation in the
    backward pass that is two extra passes over every pixel (about 1.4x the loss's cost on
    CPU); the cross-entropy itself is the negative log-likelihood, so it is used directly.
    """
    base = likelihood.base_dist if isinstance(likelihood, Independent) else likelihood
    if type(base) is Bernoulli:
        if base._validate_args:
            base._validate_sample(x)
        # logits already span the full (S?, B, *data) shape; x broadcasts over S only.
        logits = base.logits
        target = x if x.shape == logits.shape else x.expand_as(logits)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return -likelihood.log_prob(x)


def sample_mean(values: Tensor, probs: Tensor | None = None) -> Tensor:
    """Reduce ``(S, B)`` per-sample values to ``(B,)``: plain mean, or exact expectation.

    Args:
        values: ``(S, B)`` values, one row per latent sample (or support point).
        probs: ``(S, B)`` probabilities of each support point, for enumeration.
    """
    if probs is None:
        return values.mean(0)
    # Points of zero probability may carry inf distortion; they must contribute 0.
    return torch.where(probs > 0, probs * values, torch.zeros_like(values)).sum(0)


def batch_mean(values: Tensor, weight: Tensor | None = None) -> Tensor:
    r"""Batch mean of per-example values, optionally weighted: $\sum_i w_i v_i / \sum_i w_i$.

    Args:
        values: ``(B, ...)`` per-example values, reduced over the first dimension.
        weight: ``(B,)`` non-negative weights; they are normalised, so only their ratios
            matter.

    Returns:
        ``values.shape[1:]``.
    """
    if weight is None:
        return values.mean(0)
    column = weight.reshape(-1, *([1] * (values.ndim - 1)))
    return (column * values).sum(0) / weight.sum()


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward sums the gradients of every process's loss."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def global_batch_mean(values: Tensor, weight: Tensor | None = None) -> Tensor:
    r"""`batch_mean` over the batches of all processes, differentiably.

    $\sum_{r,i} w_{ri} v_{ri} / \sum_{r,i} w_{ri}$ over processes $r$ of the default
    ``torch.distributed`` group; the plain `batch_mean` when none is initialised. Every
    process then computes the same loss, and the backward all-reduces its gradient, so
    after DDP divides by the world size each process holds exactly the single-process
    gradient on the union of the batches, even through nonlinear functions of the mean
    (``|sigma - mean R|``) and for unequal per-process weight totals.

    Args:
        values: ``(B, ...)`` per-example values, reduced over the first dimension.
        weight: ``(B,)`` non-negative weights.

    Returns:
        ``values.shape[1:]``, the same on every process.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return batch_mean(values, weight)
    w = values.new_ones(values.shape[0]) if weight is None else weight.to(values.dtype)
    column = w.reshape(-1, *([1] * (values.ndim - 1)))
    sums = torch.cat([(column * values).sum(0).reshape(-1), w.sum().reshape(1)])
    total: Tensor = _AllReduceSum.apply(sums)
    return (total[:-1] / total[-1]).reshape(values.shape[1:])


def elbo(rate: Tensor, distortion: Tensor) -> Tensor:
    """ELBO ``-(D + R)`` from tensors of matching shape (per example or batch means)."""
    return -(distortion + rate)
