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

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Categorical, Distribution, constraints
from typing_extensions import override

__all__ = ["DiagonalGaussianMixture"]

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
    bias = logits.log_softmax(-1) + _gaussian_log_normaliser(scale)
    # A shared shift leaves the square unchanged; detached, it adds no gradient path.
    centre = loc.detach().mean(0)
    joint = _expanded_square(z, _component_weights(loc, scale, bias, centre), centre)  # (N, K)
    table = torch.cat([loc, scale.reciprocal(), bias.unsqueeze(-1)], dim=-1)
    return _refine(z, joint, table, min(_REFINED, loc.shape[0])).to(dtype)


def _gaussian_log_normaliser(scale: Tensor) -> Tensor:
    r"""``(K,)`` $-\sum_d \log s_{kd} - \tfrac D2 \log 2\pi$ of ``(K, D)`` scales."""
    return -scale.log().sum(-1) - 0.5 * scale.shape[-1] * math.log(2 * math.pi)


def _component_weights(loc: Tensor, scale: Tensor, bias: Tensor, centre: Tensor) -> Tensor:
    r"""``(2D + 1, K)`` weights of the expanded square of ``K`` diagonal Gaussians.

    With $c$ = ``centre`` (any ``(D,)`` point; the mean of ``loc`` keeps the square
    accurate), column ``k`` is $[-\tfrac{1}{2 s_k^2},\ \tfrac{\mu_k - c}{s_k^2},\
    b_k - \sum_d \tfrac{(\mu_{kd} - c_d)^2}{2 s_{kd}^2}]$, so that `_expanded_square`
    gives $b_k - \sum_d (z_d - \mu_{kd})^2 / (2 s_{kd}^2)$: the log-densities for
    ``bias = _gaussian_log_normaliser(scale)``, plus log-weights for a mixture. Stored
    ``(2D + 1, K)``-contiguous: the product is faster than on a transpose.

    Args:
        loc: ``(K, D)`` means.
        scale: ``(K, D)`` standard deviations.
        bias: ``(K,)`` added to each component's log-density (log-weights + normaliser).
        centre: ``(D,)`` shift subtracted from the points and the means.
    """
    precision = scale.reciprocal().square()
    shifted = loc - centre
    offset = bias - 0.5 * (shifted.square() * precision).sum(-1)
    return torch.cat([-0.5 * precision.T, (shifted * precision).T, offset.unsqueeze(0)], dim=0)


def _expanded_square(z: Tensor, weights: Tensor, centre: Tensor) -> Tensor:
    """``(N, K)``: ``[(z - c)^2, z - c, 1] @ weights``, one matrix product, no ``(N, K, D)``.

    Args:
        z: ``(N, D)`` points.
        weights: ``(2D + 1, K)`` from `_component_weights` with the same ``centre``.
        centre: ``(D,)``.
    """
    shifted = z - centre
    features = torch.cat([shifted.square(), shifted, torch.ones_like(shifted[:, :1])], dim=-1)
    return features @ weights


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


def _logsumexp(x: Tensor, dim: int = -1) -> Tensor:
    """Log-sum-exp over ``dim`` with one temporary, whose backward reuses the forward's ``exp``.

    Terms below ``exp(-64)`` of the largest are raised to it: far components give shifted
    log-densities of -1e4 and less, on which CPU ``exp`` takes a slow path. A row of
    ``-inf`` only gives ``-inf`` (as ``torch.logsumexp``).
    """
    peak = x.detach().amax(dim, keepdim=True)
    finite = torch.isfinite(peak)
    top = torch.where(finite, peak, torch.zeros_like(peak))
    total = (x - top).clamp_min_(_LSE_FLOOR).exp_().sum(dim)
    return torch.where(finite.squeeze(dim), total.log() + top.squeeze(dim), peak.squeeze(dim))
