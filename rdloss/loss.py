"""``RateDistortionLoss``: report rate and distortion separately and train on an objective."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from typing_extensions import override

from rdloss import functional as F
from rdloss._validation import check_distribution, check_finite, check_tensor, should_validate
from rdloss.marginals import StandardNormal
from rdloss.objectives import Beta, Objective

__all__ = ["RDOutput", "RateDistortionLoss"]

_LN2 = math.log(2.0)

MarginalLike = nn.Module | Distribution


class RDOutput(NamedTuple):
    """Result of `RateDistortionLoss`.

    Attributes:
        loss: 0-dim training loss from the objective.
        rate: 0-dim batch-mean rate ``R`` in nats.
        distortion: 0-dim batch-mean distortion ``D`` in nats.
        elbo: 0-dim batch-mean ``-(D + R)``.
        rate_per_example: ``(B,)``.
        distortion_per_example: ``(B,)``.
        rate_per_dimension: ``(B, D)`` where the KL factorises over latent dims, else None.
        estimator: how the rate was computed: ``"analytic"``, ``"mc"`` or ``"enumerate"``.
        hyper: the objective's current scalars (``beta``, targets, multipliers).
        rate_per_group: ``(B,)`` rate per named latent group, in the posterior's key
            order; ``None`` for an ungrouped call.
        rate_per_step: ``(B, T)`` rate per step of each group with a step axis (an
            ungrouped call's latent is named ``"z"``); ``None`` when no group has steps.
        rate_per_group_dimension: ``(B, D_g)`` rate per flattened latent dimension of each
            group (steps included), ``None`` for a group whose KL does not factorise;
            ``None`` for an ungrouped call (see ``rate_per_dimension``).
        weight: the ``(B,)`` per-example weights the call was given, or ``None``.
    """

    loss: Tensor
    rate: Tensor
    distortion: Tensor
    elbo: Tensor
    rate_per_example: Tensor
    distortion_per_example: Tensor
    rate_per_dimension: Tensor | None
    estimator: str
    hyper: dict[str, Tensor]
    rate_per_group: dict[str, Tensor] | None = None
    rate_per_step: dict[str, Tensor] | None = None
    rate_per_group_dimension: dict[str, Tensor | None] | None = None
    weight: Tensor | None = None

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Plain floats for any logger (one host synchronisation).

        Args:
            prefix: prepended to every key, e.g. ``"train/"``.

        Returns:
            ``loss``, ``rate``, ``distortion``, ``elbo`` in nats, ``rate_bits`` and
            ``distortion_bits``, and the objective's scalars.
        """
        named = {
            "loss": self.loss,
            "rate": self.rate,
            "distortion": self.distortion,
            "elbo": self.elbo,
            "rate_bits": self.rate / _LN2,
            "distortion_bits": self.distortion / _LN2,
            **self.hyper,
        }
        values = torch.stack([v.detach().float().reshape(()) for v in named.values()]).tolist()
        return {prefix + k: v for k, v in zip(named, values, strict=True)}


class RateDistortionLoss(nn.Module):
    r"""Rate-distortion loss for an existing VAE (Alemi et al., 2018, "Fixing a Broken ELBO").

    Computes per example the rate $R = \mathrm{KL}(e(z|x)\,\|\,m(z))$ (summed over
    latent dims) and the distortion $D = -\mathbb{E}_e \log d(x|z)$ (summed over data
    dims), reports their batch means and the ELBO $-(D + R)$, and trains on the
    objective (default `Beta` ``(1.0)``: the negative ELBO).

    Note the reduction: ``loss`` is a **batch mean** of per-example sums. The classic
    ``recon_sum + kld_sum`` over a batch equals ``B * loss``.

    Args:
        marginal: ``m(z)``: a `Marginal`, any module whose
            ``forward()`` returns a ``Distribution`` (e.g. a zuko flow), a ``Distribution``
            (not moved by ``.to()``), or ``None`` for ``N(0, I)`` sized from the posterior.
        objective: an `Objective`; default ``Beta(1.0)``.
        rate_estimator: ``"analytic"``, ``"mc"`` or ``"auto"`` (closed form where
            ``torch.distributions`` registers one, else Monte Carlo with the decoder's z).
        sync_dist: under ``torch.distributed`` (e.g. DDP), while training (``train()`` mode
            with gradients) the objective reduces by the batch mean over *all* processes,
            all-reduced differentiably, instead of this process's batch. DDP's averaged
            gradients then equal the single-process gradients on the union of the batches
            for every built-in objective (also ``TargetRate``'s $|\sigma - \bar R|$ and
            unequal weight totals), and feedback state (`GECO`, `RateController`) is the
            same on every process. One small all-reduce per mean, so every process must
            call the loss while training; evaluation stays local. The reported ``rate``
            and ``distortion`` stay local.
        validate_args: value checks (NaN/inf in ``x`` and ``weight``, negative weights,
            non-finite rate or distortion), which cost a host synchronisation per call. On by
            default and always off while compiling. Independent of
            ``torch.distributions``' global default, which some libraries turn off at import.

    Examples:
        >>> import torch
        >>> from rdloss import RateDistortionLoss, helpers
        >>> loss_fn = RateDistortionLoss()
        >>> x = torch.randint(0, 2, (8, 784)).float()
        >>> q = helpers.normal(torch.zeros(8, 16), logvar=torch.zeros(8, 16))
        >>> p = helpers.bernoulli(logits=torch.zeros(8, 784))
        >>> out = loss_fn(x, posterior=q, likelihood=p)
        >>> round(out.distortion.item(), 1), out.rate.item(), out.estimator
        (543.4, 0.0, 'analytic')
    """

    if TYPE_CHECKING:  # nn.Module.__call__ is typed Any; keep RDOutput for type checkers
        __call__: Callable[..., RDOutput]

    def __init__(
        self,
        marginal: MarginalLike | None = None,
        objective: Objective | None = None,
        *,
        rate_estimator: F.RateEstimator = "auto",
        sync_dist: bool = False,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        if marginal is not None and not isinstance(marginal, (nn.Module, Distribution)):
            raise TypeError(
                "marginal must be an nn.Module returning a Distribution, a Distribution, or "
                f"None, got {type(marginal).__name__}"
            )
        if objective is None:
            objective = Beta(1.0)
        if not isinstance(objective, Objective):
            raise TypeError(
                f"objective must be an rdloss.objectives.Objective, got {type(objective).__name__}"
            )
        if rate_estimator not in ("analytic", "mc", "auto"):
            raise ValueError(
                f"rate_estimator must be 'analytic', 'mc' or 'auto', got {rate_estimator!r}"
            )
        if not isinstance(sync_dist, bool):
            raise TypeError(f"sync_dist must be a bool, got {type(sync_dist).__name__}")
        self.marginal = marginal
        self.objective = objective
        objective.sync_dist = sync_dist
        self.rate_estimator: F.RateEstimator = rate_estimator
        if not isinstance(validate_args, bool):
            raise TypeError(f"validate_args must be a bool, got {type(validate_args).__name__}")
        self.validate_args = validate_args

    def marginal_distribution(self, posterior: Distribution) -> Distribution:
        """Resolve ``m(z)`` for a posterior (``batch_shape (B,)``): call the module if needed."""
        marginal = self._marginal(posterior)
        return F.standard_normal(posterior) if marginal is None else marginal

    def _marginal(self, posterior: Distribution) -> Distribution | None:
        """``m(z)``, or ``None`` for ``N(0, I)``, whose rate has a cheaper closed form."""
        marginal = self.marginal
        if marginal is None:
            return None
        if type(marginal) is StandardNormal and posterior.event_shape == (marginal.latent_dim,):
            return None
        if isinstance(marginal, nn.Module):
            dist = marginal()
            if not isinstance(dist, Distribution):
                raise TypeError(
                    "marginal() must return a torch.distributions.Distribution, got "
                    f"{type(dist).__name__}"
                )
            return dist
        return marginal

    def forward(
        self,
        x: Tensor,
        *,
        posterior: Distribution,
        likelihood: Distribution | None = None,
        z: Tensor | None = None,
        decoder: Callable[[Tensor], Distribution] | None = None,
        samples: int | Literal["enumerate"] = 1,
        weight: Tensor | None = None,
    ) -> RDOutput:
        """Compute rate, distortion and the objective's loss.

        Two call styles: pass the ``likelihood`` you already computed (and the ``z`` that
        fed it, needed when the rate is estimated by Monte Carlo), or pass a ``decoder`` and
        the loss draws ``samples`` reparameterised latents. ``samples="enumerate"`` with a
        ``Categorical``/``OneHotCategorical`` posterior computes D as the exact expectation
        over the support and R exactly.

        Args:
            x: ``(B, ...)`` data.
            posterior: ``e(z|x)``, ``batch_shape (B,)`` (further batch dims become latent dims).
            likelihood: ``d(x|z)`` covering ``x`` (``batch_shape + event_shape`` equal to
                ``x.shape``, or ``(S, *x.shape)`` for ``S`` samples).
            z: ``(B, *event)`` or ``(S, B, *event)`` latents that produced ``likelihood``.
            decoder: callable mapping ``(N, *event)`` latents to a likelihood over
                ``(N, *x.shape[1:])``; the loss calls it once on ``N = samples * B`` rows.
            samples: latents per example with ``decoder``, or ``"enumerate"``.
            weight: ``(B,)`` non-negative per-example weights, normalised over the batch.

        Returns:
            `RDOutput`.

        Raises:
            TypeError: an argument has the wrong type.
            ValueError: shapes disagree, values are NaN/inf, or arguments conflict.
        """
        check_tensor("x", x, min_ndim=1)
        posterior = F.as_latent(posterior)
        batch = x.shape[0]
        if posterior.batch_shape[0] != batch:
            raise ValueError(
                f"posterior batch size {posterior.batch_shape[0]} does not match x's batch "
                f"size {batch} (x.shape {tuple(x.shape)})"
            )
        if weight is not None:
            check_tensor("weight", weight)
            if weight.shape != (batch,):
                raise ValueError(
                    f"weight must have shape (B,) = ({batch},), got {tuple(weight.shape)}"
                )
        validate = should_validate(self.validate_args)
        if validate:
            check_finite(x=x, **({} if weight is None else {"weight": weight}))
            if weight is not None and not bool((weight >= 0).all() and weight.sum() > 0):
                raise ValueError("weight must be non-negative with a positive sum")
        marginal = self._marginal(posterior)

        if (likelihood is None) == (decoder is None):
            raise ValueError("pass exactly one of likelihood= or decoder=")
        if decoder is not None:
            if z is not None:
                raise ValueError("z is drawn by the loss when decoder= is given; do not pass z")
            distortion, rate = self._decode(x, posterior, marginal, decoder, samples)
        else:
            if samples != 1:
                raise ValueError(
                    f"samples={samples!r} needs decoder=; with likelihood= the samples are "
                    "whatever produced it"
                )
            assert likelihood is not None  # narrowed by the exactly-one check above
            distortion = self._distortion_given(x, likelihood, z, posterior)
            rate = F.rate(posterior, marginal, z=z, estimator=self.rate_estimator)

        if validate:
            self._check_outputs(rate.per_example, distortion)
        objective = self.objective(
            rate.per_example,
            distortion,
            rate_per_dimension=rate.per_dimension,
            weight=weight,
        )
        mean_rate = F.batch_mean(rate.per_example, weight)
        mean_distortion = F.batch_mean(distortion, weight)
        return RDOutput(
            loss=objective.loss,
            rate=mean_rate,
            distortion=mean_distortion,
            elbo=F.elbo(mean_rate, mean_distortion),
            rate_per_example=rate.per_example,
            distortion_per_example=distortion,
            rate_per_dimension=rate.per_dimension,
            estimator=rate.estimator,
            hyper=objective.hyper,
            weight=weight,
        )

    def _decode(
        self,
        x: Tensor,
        posterior: Distribution,
        marginal: Distribution | None,
        decoder: Callable[[Tensor], Distribution],
        samples: int | Literal["enumerate"],
    ) -> tuple[Tensor, F.Rate]:
        """Draw or enumerate latents, decode them in one call, and compute D and R."""
        if not callable(decoder):
            raise TypeError(f"decoder must be callable, got {type(decoder).__name__}")
        probs: Tensor | None = None
        if samples == "enumerate":
            z, probs = F.enumerate_posterior(posterior)
            if marginal is None:
                raise ValueError(
                    "samples='enumerate' needs a discrete marginal such as "
                    "rdloss.marginals.Categorical(K); the default N(0, I) is continuous"
                )
            rate = F.enumerated_rate(posterior, marginal)
        elif isinstance(samples, int) and not isinstance(samples, bool) and samples >= 1:
            if not posterior.has_rsample:
                raise ValueError(
                    f"{type(posterior).__name__} has no rsample; use samples='enumerate' for "
                    "discrete latents or pass likelihood= with your own (relaxed) samples"
                )
            z = posterior.rsample((samples,))
        else:
            raise ValueError(f"samples must be an int >= 1 or 'enumerate', got {samples!r}")
        n_draws = z.shape[0]
        rows = x.expand(n_draws, *x.shape).reshape(n_draws * x.shape[0], *x.shape[1:])
        likelihood = decoder(z.reshape(n_draws * x.shape[0], *z.shape[2:]))
        if not isinstance(likelihood, Distribution):
            raise TypeError(
                f"decoder must return a torch.distributions.Distribution, got "
                f"{type(likelihood).__name__}"
            )
        per_draw = F.distortion(rows, likelihood).reshape(n_draws, x.shape[0])
        if probs is None:
            rate = F.rate(posterior, marginal, z=z, estimator=self.rate_estimator)
        return F.sample_mean(per_draw, probs), rate

    @staticmethod
    def _distortion_given(
        x: Tensor, likelihood: Distribution, z: Tensor | None, posterior: Distribution
    ) -> Tensor:
        check_distribution("likelihood", likelihood)
        per_draw = F.distortion(x, likelihood)
        if z is not None:
            check_tensor("z", z)
            n_event = len(posterior.event_shape)
            z_draws = z.shape[: z.ndim - n_event - 1]
            if z_draws != per_draw.shape[:-1]:
                raise ValueError(
                    f"z has sample dims {tuple(z_draws)} but the likelihood has "
                    f"{tuple(per_draw.shape[:-1])}: they must come from the same latents"
                )
        return per_draw.mean(0) if per_draw.ndim == 2 else per_draw

    @staticmethod
    def _check_outputs(rate: Tensor, distortion: Tensor) -> None:
        flags = torch.stack([torch.isfinite(rate).all(), torch.isfinite(distortion).all()])
        rate_ok, distortion_ok = flags.tolist()
        if not rate_ok:
            raise ValueError(
                f"rate is NaN/inf for {int((~torch.isfinite(rate)).sum())} of {rate.numel()} "
                "examples: check the posterior and marginal parameters"
            )
        if not distortion_ok:
            raise ValueError(
                f"distortion is NaN/inf for {int((~torch.isfinite(distortion)).sum())} of "
                f"{distortion.numel()} examples: check the likelihood parameters, and that x "
                "lies in the likelihood's support"
            )

    @override
    def extra_repr(self) -> str:
        marginal = "" if isinstance(self.marginal, nn.Module) else f"marginal={self.marginal}, "
        sync = ", sync_dist=True" if self.objective.sync_dist else ""
        return f"{marginal}rate_estimator={self.rate_estimator!r}{sync}"
