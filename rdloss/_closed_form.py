r"""Closed-form KLs of the families rdloss serves most; any other pair through torch.

* diagonal Gaussians (`normal_kl`, `standard_normal_kl`): from the log-variance or the log
  standard deviation a `rdloss.families.Gaussian` holds (VDVAE's form through ``expm1``:
  no ``exp`` then ``log`` round trip, no cancellation near $p = q$), else torch's own
  expression to the bit;
* categoricals (``Categorical``, ``OneHotCategorical`` and its straight-through variant);
* ``Independent`` over those, summed over the reinterpreted dims as torch sums them;
* any other pair: the public ``torch.distributions.kl_divergence``.

`rdloss.rate` chooses between these, Monte Carlo and enumeration.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
    OneHotCategorical,
    OneHotCategoricalStraightThrough,
    kl_divergence,
)

from rdloss.distributions import DiagonalGaussianMixture
from rdloss.families import Gaussian

__all__ = ["closed_form", "logvar_of", "normal_kl", "standard_normal_kl"]


def logvar_of(dist: Normal) -> Tensor:
    r"""$\log\sigma^2$ of a ``Normal``: from what a `Gaussian` holds, else ``2 * scale.log()``."""
    if isinstance(dist, Gaussian) and dist.holds_log_parameter:
        logvar = dist.logvar
        assert logvar is not None  # it holds logvar or log_scale
        return logvar
    return 2.0 * dist.scale.log()


def _log_scale_of(dist: Normal) -> Tensor | None:
    return dist.log_scale if isinstance(dist, Gaussian) else None


def standard_normal_kl(loc: Tensor, scale: Tensor | None, logvar: Tensor | None) -> Tensor:
    r"""Elementwise $\mathrm{KL}(\mathcal N(\mu, \sigma^2) \,\|\, \mathcal N(0, 1))$.

    With $v = \log\sigma^2$ known (a `Gaussian`): $\tfrac12(\mu^2 + \operatorname{expm1}(v) -
    v)$, which stays $\ge 0$ to the last bit near the collapsed point ($\sigma^2 - 1$ would
    cancel). Else $\tfrac12(\mu^2 + \sigma^2 - 1) - \log\sigma$ in two fused ``addcmul`` s,
    torch.distributions' value.
    """
    if logvar is not None:
        return 0.5 * torch.addcmul(torch.expm1(logvar) - logvar, loc, loc)
    if scale is None:
        raise ValueError("standard_normal_kl needs scale or logvar")
    per_element = torch.addcmul(-0.5 - scale.log(), loc, loc, value=0.5)
    return torch.addcmul(per_element, scale, scale, value=0.5)


def normal_kl(p: Normal, q: Normal) -> Tensor:
    r"""Elementwise $\mathrm{KL}(p \,\|\, q)$ of two ``Normal`` s.

    Where either side is a `Gaussian` holding its log-variance: VDVAE's
    $\log\sigma_q - \log\sigma_p + \frac{\sigma_p^2 + (\mu_p - \mu_q)^2}{2\sigma_q^2}
    - \frac12$, written as $\tfrac12(\operatorname{expm1}(d) - d + ((\mu_p - \mu_q)/\sigma_q)^2)$
    with $d = \log\sigma_p^2 - \log\sigma_q^2$ from each side's log-variance as it holds it
    (no ``log`` of a scale ratio, no cancellation near $p = q$). Otherwise
    torch.distributions' own expression, to the bit.
    """
    gap = (p.loc - q.loc) / q.scale
    holds_log = (isinstance(p, Gaussian) and p.holds_log_parameter) or (
        isinstance(q, Gaussian) and q.holds_log_parameter
    )
    if holds_log:
        ls_p, ls_q = _log_scale_of(p), _log_scale_of(q)
        if ls_p is not None and ls_q is not None:
            # 2 (a - b) has the bits of 2a - 2b (doubling is exact), in one operator less.
            d = 2.0 * (ls_p - ls_q)
        else:
            d = logvar_of(p) - logvar_of(q)
        return 0.5 * torch.addcmul(torch.expm1(d) - d, gap, gap)
    var_ratio = (p.scale / q.scale).pow(2)
    return 0.5 * (var_ratio + gap.pow(2) - 1 - var_ratio.log())


def _categorical_kl(p: Categorical | OneHotCategorical, q: Distribution) -> Tensor:
    """KL of two categoricals over the last axis (torch.distributions' expression)."""
    empty = p.probs == 0
    # The log-ratio is zeroed where p has no mass before the product: a logit of -inf (a
    # masked category) would make 0 * -inf, NaN in the backward even where the value is
    # masked afterwards.
    log_ratio = torch.where(empty, 0.0, p.logits - q.logits)  # type: ignore[attr-defined]
    t = p.probs * log_ratio
    t = torch.where(q.probs == 0, math.inf, t)  # type: ignore[attr-defined]
    return torch.where(empty, 0.0, t).sum(-1)


# Families with no closed-form KL to anything: asked of kl_divergence, they would only
# write "none" into torch's memo (which a compiled region cannot do).
_NO_CLOSED_FORM = (DiagonalGaussianMixture, MixtureSameFamily)


def closed_form(p: Distribution, q: Distribution) -> Tensor | None:
    """``KL(p || q)`` in closed form, or ``None`` where torch.distributions has none.

    The families rdloss serves most (Normal, Categorical, OneHotCategorical, and
    ``Independent`` over them) are computed here; any other pair goes to
    ``torch.distributions.kl_divergence``. (Under
    ``torch.compile(fullgraph=True)`` such a pair must have been computed once before:
    torch looks its function up with Python dynamo cannot trace on a cold memo.)
    """
    kinds = (type(p), type(q))
    if all(k in (Normal, Gaussian) for k in kinds):
        return normal_kl(p, q)  # type: ignore[arg-type]
    if kinds == (Categorical, Categorical) or all(
        k in (OneHotCategorical, OneHotCategoricalStraightThrough) for k in kinds
    ):
        return _categorical_kl(p, q)  # type: ignore[arg-type]
    if kinds == (Independent, Independent):
        n = p.reinterpreted_batch_ndims  # type: ignore[attr-defined]
        if n == q.reinterpreted_batch_ndims:  # type: ignore[attr-defined]
            base = closed_form(p.base_dist, q.base_dist)  # type: ignore[attr-defined]
            # Summed over the reinterpreted dims as torch's Independent KL sums them.
            return None if base is None else base.reshape(*base.shape[: base.ndim - n], -1).sum(-1)
    if isinstance(p, _NO_CLOSED_FORM) or isinstance(q, _NO_CLOSED_FORM):
        return None
    try:
        return kl_divergence(p, q)
    except NotImplementedError:  # no pair registered, or an Independent over a missing base KL
        return None
