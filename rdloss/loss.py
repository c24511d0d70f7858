"""``RateDistortionLoss``: report rate and distortion separately and train on an objective."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from typing_extensions import override

from rdloss._call import call_style, declared_samples, decoder_draws, value_checks
from rdloss._checks import check_fraction, check_tensor, run_checks, should_validate
from rdloss._means import batch_mean
from rdloss._steps import check_mask, masked_terms
from rdloss.distortion import Decoder, decode, given
from rdloss.families import standard_normal
from rdloss.latents import (
    MarginalLike,
    RateTerms,
    as_stepped_latent,
    resolve,
    resolve_marginal,
    split_marginals,
)
from rdloss.objectives import Beta, Objective
from rdloss.output import RDOutput
from rdloss.rate import RateEstimator, enumerated, rate_terms
from rdloss.schedules import check_config_state, config_state

__all__ = ["RDOutput", "RateDistortionLoss"]


Posterior = Distribution | Mapping[str, Distribution]


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
            (not moved by ``.to()``), or ``None`` for ``N(0, I)`` sized from the posterior;
            for named latent groups a mapping from group name to those (a group without an
            entry uses ``N(0, I)``).
        objective: an `Objective`; default ``Beta(1.0)``.
        rate_estimator: ``"analytic"``, ``"mc"`` or ``"auto"`` (closed form where
            ``torch.distributions`` registers one, else Monte Carlo with the decoder's z).
        kl_balance: KL balancing (DreamerV3): the fraction of the rate's gradient that goes
            to the prior (or marginal), the rest to the posterior; the rate's value is
            unchanged. DreamerV3's ``dyn_scale * KL(sg(q)||p) + rep_scale * KL(q||sg(p))``
            is ``kl_balance = dyn / (dyn + rep)`` with the rate weighted by ``dyn + rep``.
            ``None`` (default): the plain KL.
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
        marginal: MarginalLike | Mapping[str, MarginalLike] | None = None,
        objective: Objective | None = None,
        *,
        rate_estimator: RateEstimator = "auto",
        kl_balance: float | None = None,
        sync_dist: bool = False,
        validate_args: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(marginal, Objective) or (
            isinstance(marginal, Mapping)
            and any(isinstance(v, Objective) for v in marginal.values())
        ):
            raise TypeError(
                "marginal is an rdloss Objective: pass it as objective= (the first positional "
                "argument is the marginal)"
            )
        if isinstance(marginal, Mapping):
            self._fixed_marginals = split_marginals(marginal)
            self.marginal: nn.Module | Distribution | None = nn.ModuleDict(
                {k: v for k, v in marginal.items() if isinstance(v, nn.Module)}
            )
            self._marginal_keys: tuple[str, ...] | None = tuple(marginal)
        elif marginal is not None and not isinstance(marginal, (nn.Module, Distribution)):
            raise TypeError(
                "marginal must be an nn.Module returning a Distribution, a Distribution, a "
                f"mapping of group names to those, or None, got {type(marginal).__name__}"
            )
        else:
            self.marginal = marginal
            self._marginal_keys = None
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
        if not isinstance(validate_args, bool):
            raise TypeError(f"validate_args must be a bool, got {type(validate_args).__name__}")
        self.objective = objective
        # The flag every call passes it: the first call then changes nothing (no recompile).
        objective._call_sync_dist = sync_dist
        self.rate_estimator: RateEstimator = rate_estimator
        self.kl_balance = None if kl_balance is None else check_fraction("kl_balance", kl_balance)
        self.sync_dist = sync_dist
        self.validate_args = validate_args

    def _marginals(self) -> MarginalLike | dict[str, MarginalLike] | None:
        """The constructor's marginal, or its mapping in the given key order."""
        if self._marginal_keys is None:
            return self.marginal
        modules = cast(nn.ModuleDict, self.marginal)  # set together with _marginal_keys
        return {
            k: modules[k] if k in modules else self._fixed_marginals[k] for k in self._marginal_keys
        }

    def marginal_distribution(
        self, posterior: Distribution, group: str | None = None
    ) -> Distribution:
        """Resolve ``m(z)`` for a posterior (of ``group``, with a mapping of marginals)."""
        marginals = self._marginals()
        if isinstance(marginals, dict):
            if group is None:
                raise ValueError(f"the marginals are per group {list(marginals)}: name the group")
            marginal = marginals.get(group)
        else:
            marginal = marginals
        posterior = as_stepped_latent(posterior)
        dist = resolve_marginal(marginal, posterior)
        return standard_normal(posterior) if dist is None else dist

    def forward(
        self,
        x: Tensor | None = None,
        *,
        posterior: Posterior,
        prior: Distribution | Mapping[str, Distribution | None] | None = None,
        likelihood: Distribution | None = None,
        z: Tensor | Mapping[str, Tensor] | None = None,
        decoder: Decoder | None = None,
        samples: int | Literal["enumerate"] = 1,
        weight: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> RDOutput:
        """Compute rate, distortion and the objective's loss (or the rate alone).

        Three call styles: pass the ``likelihood`` you already computed (and the ``z`` that
        fed it, needed when the rate is estimated by Monte Carlo); pass a ``decoder`` and
        the loss draws ``samples`` reparameterised latents (``samples="enumerate"`` with a
        ``Categorical``/``OneHotCategorical`` posterior computes D as the exact expectation
        over the support and R exactly); or pass neither, and no ``x``, for **the rate
        alone**: a world model whose prediction heads (decoder, reward, continue) are the
        user's own, each with its own scale, takes its KL term from
        ``loss_fn(posterior=q, prior=p).loss`` and adds the heads' losses. The rate alone
        is the same call with a distortion of 0: the same groups, priors, steps, mask,
        balancing, objective (and its schedules, controllers, state and ``sync_dist``) and
        `RDOutput`, whose ``distortion`` and ``distortion_per_example`` are zeros and whose
        ``elbo`` is ``-rate`` (the rate's share of it). One call with one output keeps every
        rate feature in one place; a separate method would need its own copy of each.
        Objectives that read the distortion (`TargetDistortion`, `GECO`) are refused.

        Structured latents (see the "Hierarchical, conditional and sequential models" page):
        ``prior`` is the prior your model computed for this batch (a conditional VAE's
        ``p(z|y)``; it replaces the marginal); ``posterior``, ``prior`` and ``z`` may be
        mappings from group name to the group's object (a hierarchical VAE), and a
        posterior of ``batch_shape (B, T)`` over non-scalar latents has a step axis (a
        sequence model). The rate per example sums over groups and steps. ``mask`` marks
        the real steps of padded sequences: a padded step's rate is 0 at every level
        (per step, per dimension, per group, total) and no free-bits unit, and a
        ``likelihood`` with the step axis in its batch leaves them out of the distortion.

        Args:
            x: ``(B, ...)`` data; ``None`` (with neither ``likelihood`` nor ``decoder``) for
                the rate alone.
            posterior: ``e(z|x)``, ``batch_shape (B,)`` (further batch dims become latent
                dims) or ``(B, T)`` with steps; or a mapping from group name to those.
            prior: ``p(z|...)`` per call, ``batch_shape ()`` or the posterior's; for groups a
                mapping (a missing key or ``None`` uses the group's marginal).
            likelihood: ``d(x|z)`` covering ``x`` (``batch_shape + event_shape`` equal to
                ``x.shape``, or ``(S, *x.shape)`` for ``S`` samples).
            z: ``(*batch, *event)`` or ``(S, *batch, *event)`` latents that produced
                ``likelihood`` (a mapping for groups).
            decoder: callable mapping ``(N, *event)`` latents (a dict of them for groups) to a
                likelihood over ``(N, *x.shape[1:])``; the loss calls it once on
                ``N = samples * B`` rows.
            samples: latents per example with ``decoder``, or ``"enumerate"``. With
                ``likelihood=`` or the rate alone, the ``S`` samples per example your model
                drew, declared when a group is computed once per sample of a sampled parent
                (a hierarchical VAE's ``q(z1 | x, z2)`` and ``p(z1 | z2)`` for ``S`` draws of
                ``z2``): such a group's posterior has ``batch_shape (S, B, ...)``, its rate
                per example is the mean over the samples, and the likelihood covers
                ``(S, *x.shape)``. Undeclared, ``(S, B)`` would read as ``(B, T)`` steps: the
                loss refuses the reading it cannot tell apart (``S == B == T``).
            weight: ``(B,)`` non-negative per-example weights, normalised over the batch.
            mask: ``(B, T)`` bool, ``True`` at real steps and ``False`` at padding, for
                every group with a step axis (groups without steps are not masked). With
                ``likelihood=`` the padded steps are left out of the distortion too (its
                ``batch_shape`` must keep the step axis, ``(B, T, ...)``); for the rate
                alone mask your own distortion with the same tensor; ``decoder=`` is
                refused. Padded steps must still hold finite parameters and valid data
                (the value check screens them).

        Returns:
            `RDOutput`.

        Raises:
            TypeError: an argument has the wrong type.
            ValueError: shapes disagree, values are NaN/inf, or arguments conflict.
        """
        # 1. Resolve: every type, shape and argument error of the call is raised here.
        style = call_style(x, likelihood, decoder, self.objective)
        if x is not None:
            check_tensor("x", x, min_ndim=1)
        per_sample = declared_samples(style, samples)
        groups, grouped = resolve(
            posterior,
            prior=prior,
            z=z,
            marginal=self._marginals(),
            samples=per_sample,
            batch=None if x is None else x.shape[0],
        )
        batch = groups[0].batch if x is None else x.shape[0]
        for g in groups:
            if x is not None and g.batch != batch:
                where = f"posterior[{g.name!r}]" if grouped else "posterior"
                shape = g.posterior.batch_shape
                hint = (
                    f"; if its first axis holds samples, pass samples={shape[0]}"
                    if len(shape) == 2 and shape[1] == batch
                    else ""
                )
                raise ValueError(
                    f"{where} batch size {g.batch} does not match x's batch "
                    f"size {batch} (x.shape {tuple(x.shape)}){hint}"
                )
        if weight is not None:
            check_tensor("weight", weight)
            if weight.shape != (batch,):
                raise ValueError(
                    f"weight must have shape (B,) = ({batch},), got {tuple(weight.shape)}"
                )
        if mask is not None:
            mask = check_mask(mask, groups, grouped)
            if style == "decoder":
                raise ValueError(
                    "mask= with decoder= is not supported: pass likelihood= (its padded steps "
                    "are left out of the distortion) or call the rate alone"
                )
        support = None
        if style == "decoder":
            if z is not None:
                raise ValueError("z is drawn by the loss when decoder= is given; do not pass z")
            support = decoder_draws(decoder, samples, groups, grouped)

        # 2. Draw or decode, 3. rate and distortion.
        if style == "decoder":
            assert x is not None and decoder is not None  # narrowed by call_style
            distortion, likelihood, groups = decode(x, groups, grouped, decoder, samples, support)
        elif style == "likelihood":
            assert x is not None and likelihood is not None  # narrowed by call_style
            distortion = given(x, likelihood, groups, grouped, per_sample, mask)
        if support is not None:
            (group,) = groups
            against = group.prior if group.prior is not None else group.marginal
            assert against is not None  # enumerable refused N(0, I)
            rate = enumerated(group.posterior, against, self.kl_balance)
            terms = RateTerms.single(rate.per_example, rate.per_dimension)
            estimator: str = rate.estimator
        else:
            terms, estimator = rate_terms(
                groups, grouped=grouped, estimator=self.rate_estimator, balance=self.kl_balance
            )
        if mask is not None:
            terms = masked_terms(terms, mask)
        if style == "rate":  # the rate alone: no distortion term
            distortion = torch.zeros_like(terms.per_example)
        mean_rate = batch_mean(terms.per_example, weight)
        mean_distortion = batch_mean(distortion, weight)
        elbo = -(mean_distortion + mean_rate)

        # 4. One value check: everything the call saw, one host synchronisation.
        device = terms.per_example.device if x is None else x.device
        if should_validate(self.validate_args) and device.type != "meta":
            # The objective's own checks first: it asks whether it is training (with grad).
            own = self.objective.value_checks(terms.per_example)
            with torch.no_grad():  # screens of values, never part of the graph
                checks, places = value_checks(
                    x,
                    likelihood,
                    groups,
                    weight,
                    terms.per_example,
                    distortion,
                    elbo,
                    own,
                    grouped=grouped,
                )
                run_checks(checks, places)

        # 5. The objective.
        objective = self.objective(
            terms.per_example,
            distortion,
            rate_per_dimension=terms.per_dimension,
            weight=weight,
            terms=terms,
            sync_dist=self.sync_dist,
        )
        return RDOutput(
            loss=objective.loss,
            rate=mean_rate,
            distortion=mean_distortion,
            elbo=elbo,
            rate_per_example=terms.per_example,
            distortion_per_example=distortion,
            rate_per_dimension=terms.per_dimension,
            estimator=estimator,
            hyper=objective.hyper,
            rate_per_group=terms.per_group if grouped else None,
            rate_per_step=terms.per_step or None,
            rate_per_group_dimension=terms.per_group_dimension if grouped else None,
            weight=weight,
            mask=mask,
        )

    @override
    def get_extra_state(self) -> Tensor:
        """The loss's settings a checkpoint depends on (``kl_balance``, ``rate_estimator``)."""
        return config_state({"kl_balance": self.kl_balance, "rate_estimator": self.rate_estimator})

    @override
    def set_extra_state(self, state: Any) -> None:
        """Refuse a checkpoint saved with another ``kl_balance`` or ``rate_estimator``.

        Raises:
            ValueError: a setting differs, naming the saved and the current value.
        """
        check_config_state(type(self).__name__, state, self.get_extra_state())

    @override
    def extra_repr(self) -> str:
        if self._marginal_keys is not None:  # the learned ones print as children
            fixed = ", ".join(f"{k!r}: {v}" for k, v in self._fixed_marginals.items())
            marginal = f"marginal={{{fixed}}}, " if fixed else ""
        elif isinstance(self.marginal, nn.Module):
            marginal = ""
        else:
            marginal = f"marginal={self.marginal}, "
        balance = "" if self.kl_balance is None else f", kl_balance={self.kl_balance}"
        sync = ", sync_dist=True" if self.sync_dist else ""
        return f"{marginal}rate_estimator={self.rate_estimator!r}{balance}{sync}"
