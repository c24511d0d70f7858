r"""Distributions owned by rdloss.

`DiagonalGaussianMixture` is the mixture behind
`GaussianMixture` and `VampPrior`
(Tomczak & Welling, 2018), the learned marginals of "Fixing a Broken ELBO" (Alemi et al.,
2018). Its ``log_prob`` never builds the ``(N, K, D)`` tensor of differences
$z_n - \mu_k$ that ``MixtureSameFamily(Categorical, Independent(Normal))`` builds: it
expands the square,

$$
\sum_d \frac{(z_d - \mu_{kd})^2}{\sigma_{kd}^2}
= (z^2)\,{\sigma_k^{-2}}^\top - 2\, z\,(\mu_k \sigma_k^{-2})^\top
+ \sum_d \mu_{kd}^2 \sigma_{kd}^{-2},
$$

and evaluates every (point, component) pair with one matrix product of shapes
``(N, 2D + 1) x (2D + 1, K)``: ``O(N K)`` memory. No KL is registered for it (the rate against a
mixture has no closed form), so the loss falls back to Monte Carlo.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    Laplace,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    OneHotCategorical,
    OneHotCategoricalStraightThrough,
    constraints,
)
from typing_extensions import override

from rdloss._checks import ValueCheck, check_finite

__all__ = [
    "CheckedBernoulli",
    "CheckedLaplace",
    "DiagonalGaussianMixture",
    "Gaussian",
    "log_scale_of",
    "normal_kl",
    "rebuild",
    "standard_normal",
    "standard_normal_kl",
    "value_checks",
]

_Shape = torch.Size | list[int] | tuple[int, ...]

# Terms below exp(-64) of the largest are dropped from the log-sum-exp: a relative change
# under K * 1.6e-28 (far below float64's eps for any practical K), and it avoids the slow
# path of exp on numbers near underflow.
_LSE_FLOOR = -64.0

# Components recomputed directly per point (those with the largest approximate density).
_REFINED = 4


class DiagonalGaussianMixture(Distribution):
    r"""Mixture of ``K`` diagonal Gaussians with a memory-light ``log_prob``.

    $$
    m(z) = \sum_{k=1}^K \pi_k \prod_d \mathcal N(z_d;\, \mu_{kd},\, \sigma_{kd}^2),
    \qquad \pi = \operatorname{softmax}(\text{logits}).
    $$

    The log-sum-exp runs over components of the **joint** log-density (summed over all
    latent dimensions), never per dimension. Equal to
    ``MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, scale), n))``
    with ``n = loc.ndim - 1``, but ``log_prob`` of ``N`` points costs one
    ``(N, 2D + 1) x (2D + 1, K)`` matrix product (features $[z^2, z, 1]$) and
    ``O(N K)`` memory instead of ``O(N K D)``; ``D`` is the flattened event size.

    Precision: the expanded square cancels catastrophically in float32 when
    $|z - c|$ is large against the scales. Three measures keep ``log_prob`` at float32's
    own accuracy: (1) ``z`` and the means are shifted by the (detached, hence
    gradient-neutral) mean of the component means ``c`` before expanding; (2) the matrix
    product runs in float64, where each entry errs by about
    $\sqrt{2D+1}\,\epsilon_{64} \sum_d (z_d - c_d)^2/\sigma_{kd}^2$, below float32's
    rounding of the result for $|z - c| / \sigma$ up to about ``1e4`` (many near-duplicate
    narrow components far from ``c`` included); (3) for each point the ``min(K, 4)``
    components with the largest approximate density are recomputed directly from
    $z - \mu_k$ (an ``(N, 4, D)`` gather). No step depends on the data's values, so
    ``log_prob`` costs no host synchronisation and compiles to one graph.

    Args:
        logits: ``(K,)`` unnormalised log mixture weights.
        loc: ``(K, *event)`` component means.
        scale: ``(K, *event)`` positive component standard deviations.
        validate_args: check parameter values (and ``log_prob`` inputs), following
            ``torch.distributions``; ``None`` uses its default. Off while compiling.

    Raises:
        TypeError: a parameter is not a floating-point tensor.
        ValueError: shapes disagree, or (with validation) values are out of range.

    Examples:
        >>> import torch
        >>> m = DiagonalGaussianMixture(torch.zeros(3), torch.zeros(3, 2), torch.ones(3, 2))
        >>> m.batch_shape, m.event_shape
        (torch.Size([]), torch.Size([2]))
        >>> m.log_prob(torch.zeros(5, 2)).shape
        torch.Size([5])
        >>> round(m.log_prob(torch.zeros(2)).item(), 4)  # -log(2 pi)
        -1.8379
    """

    arg_constraints = {  # noqa: RUF012 (class attribute of torch's Distribution API)
        "logits": constraints.real_vector,
        "loc": constraints.real,
        "scale": constraints.positive,
    }
    has_rsample = False

    def __init__(
        self,
        logits: Tensor,
        loc: Tensor,
        scale: Tensor,
        *,
        validate_args: bool | None = None,
    ) -> None:
        for name, value in (("logits", logits), ("loc", loc), ("scale", scale)):
            if not isinstance(value, Tensor) or not value.is_floating_point():
                got = value.dtype if isinstance(value, Tensor) else type(value).__name__
                raise TypeError(f"{name} must be a floating-point tensor, got {got}")
        if logits.ndim != 1 or logits.shape[0] == 0:
            raise ValueError(f"logits must have shape (K,) with K >= 1, got {tuple(logits.shape)}")
        if loc.ndim < 2 or loc.shape[0] != logits.shape[0]:
            raise ValueError(
                f"loc must have shape (K, *event) = ({logits.shape[0]}, ...) with a "
                f"non-empty event, got {tuple(loc.shape)}"
            )
        if scale.shape != loc.shape:
            raise ValueError(
                f"scale must have loc's shape {tuple(loc.shape)}, got {tuple(scale.shape)}"
            )
        self.logits = logits
        self.loc = loc
        self.scale = scale
        if torch.compiler.is_compiling():
            validate_args = False
        super().__init__(torch.Size(), loc.shape[1:], validate_args=validate_args)

    @constraints.dependent_property
    @override
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def n_components(self) -> int:
        """Number of components ``K``."""
        return self.logits.shape[0]

    @property
    def mixture_distribution(self) -> Categorical:
        """The component weights as ``Categorical(logits=logits)``."""
        return Categorical(logits=self.logits, validate_args=False)

    @property
    @override
    def mean(self) -> Tensor:
        """``sum_k pi_k mu_k``, shape ``event_shape``."""
        weights = self.logits.softmax(-1)
        mean: Tensor = torch.tensordot(weights, self.loc, dims=1)
        return mean

    @property
    @override
    def variance(self) -> Tensor:
        """``sum_k pi_k (sigma_k^2 + (mu_k - mean)^2)``, the law of total variance."""
        weights = self.logits.softmax(-1)
        spread = self.scale.square() + (self.loc - self.mean).square()
        variance: Tensor = torch.tensordot(weights, spread, dims=1)
        return variance

    @override
    def sample(self, sample_shape: _Shape = ()) -> Tensor:
        """Draw ``sample_shape + event_shape`` points (a component, then its Gaussian)."""
        shape = torch.Size(sample_shape)
        with torch.no_grad():
            index = self.mixture_distribution.sample(shape)
            noise = torch.randn(
                shape + self.event_shape, dtype=self.loc.dtype, device=self.loc.device
            )
            return self.loc[index] + self.scale[index] * noise

    @override
    def log_prob(self, value: Tensor) -> Tensor:
        """``log m(z)`` for ``value`` of shape ``(..., *event)``; returns shape ``(...)``.

        Computed in float32 or wider (half-precision inputs are upcast).
        """
        if self._validate_args:
            self._validate_sample(value)
        n_event = len(self.event_shape)
        if value.shape[value.ndim - n_event :] != self.event_shape:
            raise ValueError(
                f"value must end with the event shape {tuple(self.event_shape)}, got "
                f"{tuple(value.shape)}"
            )
        dtype = torch.promote_types(torch.promote_types(value.dtype, self.loc.dtype), torch.float32)
        lead = value.shape[: value.ndim - n_event]
        # Autocast would run the matrix product in half precision: keep float32 or wider.
        with torch.autocast(device_type=value.device.type, enabled=False):
            out = _mixture_log_prob(
                value.to(dtype).reshape(-1, math.prod(self.event_shape)),
                self.logits.to(dtype),
                self.loc.to(dtype).flatten(1),
                self.scale.to(dtype).flatten(1),
            )
        return out.reshape(lead)

    @override
    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_components: {self.n_components}, "
            f"event_shape: {tuple(self.event_shape)})"
        )


def _mixture_log_prob(z: Tensor, logits: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """``(N,)`` log-density of ``(N, D)`` points under ``K`` components ``(K,), (K, D), (K, D)``."""
    # In float64: expanding the square cancels terms of size (z / s)^2, so each entry of the
    # product errs by about sqrt(2D + 1) eps times that size (Higham). In float32 that
    # reaches nats far from the centre; in float64 it stays below float32's own rounding of
    # the result for |z| / s up to about 1e4, with no data-dependent number of exact
    # components (which would cost a host synchronisation per call).
    dtype = z.dtype
    wide = torch.promote_types(dtype, torch.float64)
    z, logits, loc, scale = (t.to(wide) for t in (z, logits, loc, scale))
    inv_scale = scale.reciprocal()
    precision = inv_scale.square()
    bias = logits.log_softmax(-1) - scale.log().sum(-1) - 0.5 * loc.shape[1] * math.log(2 * math.pi)
    # A shared shift leaves the square unchanged; detached, it adds no gradient path.
    centre = loc.detach().mean(0)
    zc, mc = z - centre, loc - centre
    # joint[n, k] = bias_k - 0.5 sum_d (zc - mc)^2 / s^2 as ONE product (N, 2D+1)(2D+1, K).
    features = torch.cat([zc.square(), zc, torch.ones_like(zc[:, :1])], dim=-1)
    offset = bias - 0.5 * (mc.square() * precision).sum(-1)
    weights = torch.cat([-0.5 * precision, mc * precision, offset.unsqueeze(-1)], dim=-1)
    joint = features @ weights.T  # (N, K)
    table = torch.cat([loc, inv_scale, bias.unsqueeze(-1)], dim=-1)
    return _refine(z, joint, table, min(_REFINED, loc.shape[0])).to(dtype)


def _refine(z: Tensor, joint: Tensor, table: Tensor, refined: int) -> Tensor:
    """Log-sum-exp over ``joint`` with the ``refined`` largest components computed directly.

    The components that dominate the sum get their density from ``(z - mu) / s`` itself,
    exact to the working precision; the others keep the product's float64 value.
    """
    top = joint.detach().topk(refined, dim=-1).indices  # (N, r)
    rows = F.embedding(top, table)  # (N, r, 2D+1)
    d = z.shape[1]
    diff = (z.unsqueeze(1) - rows[..., :d]) * rows[..., d : 2 * d]
    exact = rows[..., -1] - 0.5 * diff.square().sum(-1)
    return _logsumexp(joint.scatter(-1, top, exact))


def _logsumexp(x: Tensor) -> Tensor:
    """``logsumexp`` over the last dim whose backward reuses the forward's ``exp``."""
    top = x.detach().amax(-1, keepdim=True)
    total = (x - top).clamp_min(_LSE_FLOOR).exp().sum(-1)
    return total.log() + top.squeeze(-1)


# --- Distributions built by `rdloss.helpers`: the parameters they hold, the checks they need.


def _range_check(t: Tensor, low: float, high: float, message: str) -> ValueCheck:
    """``low <= t <= high`` everywhere (NaN fails), as a device flag and its exact message.

    ``message`` is formatted with ``low``, ``high`` and the values' ``smallest``/``largest``.
    """
    smallest, largest = torch.aminmax(t.detach())

    def explain() -> None:
        lo, hi = torch.stack(torch.aminmax(t.detach())).tolist()
        if not low <= lo <= hi <= high:  # NaN fails every comparison
            raise ValueError(message.format(low=low, high=high, smallest=lo, largest=hi))

    return ValueCheck((smallest >= low) & (largest <= high), explain)


class Gaussian(Normal):
    r"""A ``Normal`` that also holds $\log\sigma$ exactly, as `rdloss.helpers.normal` builds it.

    The same distribution as ``Normal(loc, scale)``; what it adds is for the loss:

    * the closed-form KL between two of them (and against $\mathcal N(0, I)$) reads
      ``log_scale`` instead of taking ``scale.log()`` again (VDVAE's form: no
      ``exp`` then ``log`` round trip, one backward node less);
    * with ``checked=True`` a `RateDistortionLoss` checks, in its one value check, that
      the variance $\sigma^2$ is a finite normal number of the dtype (``log_scale`` given)
      or that ``scale > 0`` (otherwise): below that range the rate's gradient is infinite
      while its value looks fine.

    Args:
        loc: means.
        scale: standard deviations, ``loc``'s shape.
        log_scale: $\log\sigma$ exactly as the caller has it (``0.5 * logvar``), or ``None``.
        checked: whether the loss checks the parameters' values (see above).
        validate_args: passed to ``Normal``.
    """

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor,
        *,
        log_scale: Tensor | None = None,
        checked: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(loc, scale, validate_args=validate_args)
        self.log_scale = log_scale
        self.checked = checked

    @override
    def expand(self, batch_shape: _Shape, _instance: Distribution | None = None) -> Gaussian:
        shape = torch.Size(batch_shape)
        log_scale = None if self.log_scale is None else self.log_scale.expand(shape)
        return Gaussian(
            self.loc.expand(shape),
            self.scale.expand(shape),
            log_scale=log_scale,
            checked=self.checked,
            validate_args=False,
        )

    def value_checks(self, value: Tensor | None = None) -> list[ValueCheck]:
        """The parameter checks the loss runs when ``checked`` (``value`` is unused)."""
        if not self.checked or self.loc.numel() == 0:
            return []
        if self.log_scale is not None:
            finfo = torch.finfo(self.scale.dtype)
            low, high = math.log(finfo.tiny), math.log(finfo.max)
            message = (
                "logvar must lie in [{low:.1f}, {high:.1f}] for "
                f"{self.scale.dtype} (the variance exp(logvar) must be a finite normal "
                "number), got values in [{smallest}, {largest}]; clamp the encoder's "
                "log-variance"
            )
            return [_range_check(2.0 * self.log_scale, low, high, message)]
        return [_positive("scale", self.scale)]


def _positive(name: str, t: Tensor) -> ValueCheck:
    def explain() -> None:
        bad = ~(t.detach() > 0)
        if bool(bad.any()):
            raise ValueError(
                f"{name} must be > 0 everywhere, got {int(bad.sum())} of {t.numel()} values "
                f"that are not (min {float(t.detach().min())})"
            )

    return ValueCheck(t.detach().amin() > 0, explain)


class CheckedLaplace(Laplace):
    """A ``Laplace`` whose ``scale > 0`` the loss checks (`rdloss.helpers.laplace`).

    Args:
        loc: locations.
        scale: positive scales, ``loc``'s shape.
        checked: whether the loss checks ``scale > 0`` in its one value check.
        validate_args: passed to ``Laplace``.
    """

    def __init__(
        self,
        loc: Tensor,
        scale: Tensor,
        *,
        checked: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(loc, scale, validate_args=validate_args)
        self.checked = checked

    @override
    def expand(self, batch_shape: _Shape, _instance: Distribution | None = None) -> CheckedLaplace:
        shape = torch.Size(batch_shape)
        return CheckedLaplace(
            self.loc.expand(shape),
            self.scale.expand(shape),
            checked=self.checked,
            validate_args=False,
        )

    def value_checks(self, value: Tensor | None = None) -> list[ValueCheck]:
        """``scale > 0`` when ``checked`` (``value`` is unused)."""
        return [_positive("scale", self.scale)] if self.checked and self.scale.numel() else []


class CheckedBernoulli(Bernoulli):
    """A ``Bernoulli`` whose data (and ``probs``) the loss checks (`rdloss.helpers.bernoulli`).

    With ``checked=True`` a `RateDistortionLoss` checks in its one value check that ``x``
    lies in the support ``{0, 1}`` and, for a distribution built from ``probs``, that they
    lie in ``[0, 1]`` (a decoder without its sigmoid).

    Args:
        probs: probabilities, or
        logits: log-odds (give exactly one).
        checked: whether the loss checks the values (see above).
        validate_args: passed to ``Bernoulli``.
    """

    def __init__(
        self,
        probs: Tensor | None = None,
        logits: Tensor | None = None,
        *,
        checked: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(probs=probs, logits=logits, validate_args=validate_args)
        self.checked = checked
        self.given_probs = probs

    @override
    def expand(
        self, batch_shape: _Shape, _instance: Distribution | None = None
    ) -> CheckedBernoulli:
        shape = torch.Size(batch_shape)
        if self.given_probs is not None:
            return CheckedBernoulli(
                probs=self.given_probs.expand(shape), checked=self.checked, validate_args=False
            )
        return CheckedBernoulli(
            logits=self.logits.expand(shape), checked=self.checked, validate_args=False
        )

    def value_checks(self, value: Tensor | None = None) -> list[ValueCheck]:
        """``probs`` in ``[0, 1]`` (when given as probs) and ``value`` in ``{0, 1}``."""
        if not self.checked:
            return []
        checks = []
        if self.given_probs is not None and self.given_probs.numel():
            checks.append(
                _range_check(
                    self.given_probs,
                    0.0,
                    1.0,
                    "probs must lie in [0, 1], got values in [{smallest}, {largest}]: did "
                    "the decoder miss its sigmoid? (pass logits= instead)",
                )
            )
        if value is not None and value.numel():
            checks.append(binary_support_check(value))
        return checks


def binary_support_check(x: Tensor) -> ValueCheck:
    """``x`` in ``{0, 1}``, the Bernoulli's support, as a device flag and its message."""

    def explain() -> None:
        if x.is_floating_point():
            check_finite(x=x)  # NaN and inf fail this check too: name them as such
        bad = (x != 0) & (x != 1)
        if bool(bad.any()):
            raise ValueError(
                f"x must lie in the support {{0, 1}} of the Bernoulli likelihood, got "
                f"{int(bad.sum())} of {x.numel()} values that do not, e.g. "
                f"{x[bad][:3].tolist()}; for grey levels in [0, 1] build the likelihood with "
                "helpers.bernoulli(..., validate_args=False) (the cross-entropy) or use "
                "ContinuousBernoulli"
            )

    t = x if x.is_floating_point() else x.to(torch.float32)
    # x (1 - x) is 0 exactly at 0 and 1, NaN or non-zero elsewhere: one fused pass and its
    # extremes (aminmax propagates NaN) instead of three boolean passes over the pixels.
    low, high = torch.aminmax(torch.addcmul(t, t, t, value=-1))
    return ValueCheck((low == 0) & (high == 0), explain)


def value_checks(dist: Distribution, value: Tensor | None = None) -> list[ValueCheck]:
    """The checks the loss runs for ``dist`` (through ``Independent`` layers): rdloss's own."""
    while isinstance(dist, Independent):
        dist = dist.base_dist
    if isinstance(dist, (Gaussian, CheckedLaplace, CheckedBernoulli)):
        return dist.value_checks(value)
    return []


def log_scale_of(dist: Normal) -> Tensor:
    r"""$\log\sigma$ of a ``Normal``: as a `Gaussian` holds it, else ``scale.log()``."""
    if isinstance(dist, Gaussian) and dist.log_scale is not None:
        return dist.log_scale
    return dist.scale.log()


def standard_normal_kl(loc: Tensor, scale: Tensor, log_scale: Tensor) -> Tensor:
    r"""Elementwise $\mathrm{KL}(\mathcal N(\mu, \sigma^2) \,\|\, \mathcal N(0, 1))$.

    $\tfrac12(\mu^2 + \sigma^2 - 1) - \log\sigma$, in two fused ``addcmul`` s.
    """
    per_element = torch.addcmul(-0.5 - log_scale, loc, loc, value=0.5)
    return torch.addcmul(per_element, scale, scale, value=0.5)


def normal_kl(p: Normal, q: Normal) -> Tensor:
    r"""Elementwise $\mathrm{KL}(p \,\|\, q)$ of two ``Normal`` s.

    Where either side is a `Gaussian` holding $\log\sigma$: VDVAE's form
    $\log\sigma_q - \log\sigma_p + \frac{\sigma_p^2 + (\mu_p - \mu_q)^2}{2\sigma_q^2}
    - \frac12$ with each side's $\log\sigma$ as it holds it (no ``log`` of the squared
    scale ratio). Otherwise torch.distributions' own expression, to the bit.
    """
    ratio = p.scale / q.scale
    gap = (p.loc - q.loc) / q.scale
    holds_log_scale = (isinstance(p, Gaussian) and p.log_scale is not None) or (
        isinstance(q, Gaussian) and q.log_scale is not None
    )
    if holds_log_scale:
        return 0.5 * (ratio * ratio + gap * gap - 1.0) + (log_scale_of(q) - log_scale_of(p))
    var_ratio = ratio.pow(2)
    return 0.5 * (var_ratio + gap.pow(2) - 1 - var_ratio.log())


def standard_normal(posterior: Distribution) -> Distribution:
    """``N(0, I)`` over the posterior's event shape, in its dtype and on its device."""
    try:
        loc = posterior.mean.new_zeros(posterior.event_shape).detach()
    except NotImplementedError:  # flows and transformed posteriors have no closed-form mean
        raise ValueError(
            f"the default marginal N(0, I) needs the posterior's dtype and device from its "
            f"mean, which {type(posterior).__name__} does not implement; pass a marginal "
            "(e.g. rdloss.marginals.StandardNormal(latent_dim)) or a prior"
        ) from None
    # Known-valid parameters: skip torch's argument checks (a host sync each).
    unit = Normal(loc, torch.ones_like(loc), validate_args=False)
    if len(posterior.event_shape) == 0:
        # A scalar latent: torch registers no KL for Independent(Normal, 0).
        return unit
    return Independent(unit, len(posterior.event_shape), validate_args=False)


def parameters(dist: Distribution) -> list[Tensor] | None:
    """The tensors `rebuild` would map, or ``None`` where it cannot rebuild ``dist``.

    Reads them without building anything (categoricals' ``logits`` are computed once and
    kept by torch, as their KL needs them anyway).
    """
    if type(dist) not in _REBUILT:
        return None
    if isinstance(dist, Independent):
        return parameters(dist.base_dist)
    if isinstance(dist, (Normal, Laplace)):
        extra = (
            [dist.log_scale] if isinstance(dist, Gaussian) and dist.log_scale is not None else []
        )
        return [dist.loc, dist.scale, *extra]
    if isinstance(dist, (Bernoulli, Categorical, OneHotCategorical)):
        return [dist.logits]
    if isinstance(dist, MultivariateNormal):
        return [dist.loc, dist.scale_tril]
    if isinstance(dist, MixtureSameFamily):
        mixture = parameters(dist.mixture_distribution)
        components = parameters(dist.component_distribution)
        return None if mixture is None or components is None else mixture + components
    assert isinstance(dist, DiagonalGaussianMixture)
    return [dist.logits, dist.loc, dist.scale]


_REBUILT = (
    Independent,
    MultivariateNormal,
    Gaussian,
    Normal,
    Laplace,
    CheckedLaplace,
    Bernoulli,
    CheckedBernoulli,
    Categorical,
    OneHotCategorical,
    OneHotCategoricalStraightThrough,
    MixtureSameFamily,
    DiagonalGaussianMixture,
)


def rebuild(dist: Distribution, fn: Callable[[Tensor], Tensor]) -> Distribution | None:
    """``dist`` built again through its public constructor from ``fn`` of its parameters.

    Known families only (``Normal``, `Gaussian`, ``MultivariateNormal``, ``Laplace``, ``Bernoulli``,
    ``Categorical``, ``OneHotCategorical`` and its straight-through variant,
    ``MixtureSameFamily``, `DiagonalGaussianMixture`, ``Independent`` over those); ``None``
    for any other (a subclass included), whose parameters (e.g. a flow's transforms) rdloss
    cannot reach. Categoricals are rebuilt from their logits, which they normalise again (to
    the last bit or so); the rdloss subclasses come back without their value checks.
    """
    if type(dist) not in _REBUILT:
        return None
    if isinstance(dist, Independent):
        base = rebuild(dist.base_dist, fn)
        if base is None:
            return None
        return Independent(base, dist.reinterpreted_batch_ndims, validate_args=False)
    if isinstance(dist, MultivariateNormal):
        return MultivariateNormal(fn(dist.loc), scale_tril=fn(dist.scale_tril), validate_args=False)
    if isinstance(dist, Gaussian):
        ls = None if dist.log_scale is None else fn(dist.log_scale)
        return Gaussian(fn(dist.loc), fn(dist.scale), log_scale=ls, validate_args=False)
    if isinstance(dist, Normal):
        return Normal(fn(dist.loc), fn(dist.scale), validate_args=False)
    if isinstance(dist, Laplace):
        return Laplace(fn(dist.loc), fn(dist.scale), validate_args=False)
    if isinstance(dist, Bernoulli):
        return Bernoulli(logits=fn(dist.logits), validate_args=False)
    if isinstance(dist, (Categorical, OneHotCategorical)):
        return type(dist)(logits=fn(dist.logits), validate_args=False)
    if isinstance(dist, MixtureSameFamily):
        mixture = rebuild(dist.mixture_distribution, fn)
        components = rebuild(dist.component_distribution, fn)
        if not isinstance(mixture, Categorical) or components is None:
            return None
        return MixtureSameFamily(mixture, components, validate_args=False)
    assert isinstance(dist, DiagonalGaussianMixture)
    return DiagonalGaussianMixture(
        fn(dist.logits), fn(dist.loc), fn(dist.scale), validate_args=False
    )
