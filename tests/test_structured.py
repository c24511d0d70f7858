"""Structured latents against the model families' own formulas, written here from their source.

Each reference is the published formula of the code users port from (cited per test), on
identical float64 tensors, never a call into rdloss: VDVAE's per-layer Gaussian KL, NVAE's
``kl_balancer``, DreamerV3's world-model KL with free bits and balancing, and a conditional
VAE's ``kl_divergence(q(z|x,y), p(z|y))``. Values and gradients agree to ``rtol=1e-10``.
"""

from __future__ import annotations

import math

import pytest
import torch
from _builders import _unimix
from torch import Tensor
from torch.distributions import Independent, Normal, OneHotCategorical, kl_divergence
from torch.testing import assert_close

import rdloss
from rdloss import functional as F
from rdloss import helpers, marginals, objectives, schedules

EXACT = {"rtol": 1e-10, "atol": 1e-12}
B = 5


def _leaf(*shape: int, scale: float = 1.0, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()


def _bernoulli(x_shape: tuple[int, ...], seed: int = 9) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(*x_shape, generator=g) < 0.5).double()
    logits = torch.randn(*x_shape, generator=g, dtype=torch.float64).requires_grad_()
    return x, logits


def _bce(x: Tensor, logits: Tensor) -> Tensor:
    """Per-example Bernoulli NLL summed over data dims, written out (not rdloss)."""
    per = torch.clamp(logits, min=0) - logits * x + torch.log1p(torch.exp(-logits.abs()))
    return per.flatten(1).sum(1)


def _grads(value: Tensor, leaves: list[Tensor]) -> tuple[Tensor, ...]:
    return torch.autograd.grad(value, leaves, retain_graph=True)


# --- VDVAE: gaussian_analytical_kl per layer (openai/vdvae, vae_helpers.py) ----------------


def _vdvae_kl(mu1: Tensor, mu2: Tensor, logsigma1: Tensor, logsigma2: Tensor) -> Tensor:
    # vae_helpers.gaussian_analytical_kl: q = N(mu1, exp(logsigma1)), p = N(mu2, exp(logsigma2))
    return (
        -0.5
        + logsigma2
        - logsigma1
        + 0.5 * (logsigma1.exp() ** 2 + (mu1 - mu2) ** 2) / (logsigma2.exp() ** 2)
    )


def test_two_conv_groups_with_top_down_priors_equal_vdvae_kl_summed_per_group() -> None:
    shapes = {"z2": (B, 4, 2, 2), "z1": (B, 2, 4, 4)}  # VDVAE order: top layer first
    q_mu = {k: _leaf(*s, seed=i) for i, (k, s) in enumerate(shapes.items())}
    q_ls = {k: _leaf(*s, scale=0.3, seed=10 + i) for i, (k, s) in enumerate(shapes.items())}
    p_mu = {k: _leaf(*s, seed=20 + i) for i, (k, s) in enumerate(shapes.items())}
    p_ls = {k: _leaf(*s, scale=0.3, seed=30 + i) for i, (k, s) in enumerate(shapes.items())}
    x, logits = _bernoulli((B, 1, 6, 6))

    out = rdloss.RateDistortionLoss()(
        x,
        posterior={k: helpers.normal(q_mu[k], scale=q_ls[k].exp()) for k in shapes},
        prior={k: helpers.normal(p_mu[k], scale=p_ls[k].exp()) for k in shapes},
        likelihood=helpers.bernoulli(logits=logits),
    )

    want = {k: _vdvae_kl(q_mu[k], p_mu[k], q_ls[k], p_ls[k]).flatten(1).sum(1) for k in shapes}
    assert out.rate_per_group is not None and list(out.rate_per_group) == list(shapes)
    for k in shapes:
        assert_close(out.rate_per_group[k], want[k], **EXACT)
    total = sum(want.values())
    assert_close(out.rate_per_example, total, **EXACT)
    # VDVAE reports the rate per data dimension: nats/dim = rate / ndims.
    assert_close(out.rate / x[0].numel(), total.mean() / 36, **EXACT)
    leaves = [*q_mu.values(), *q_ls.values(), *p_mu.values(), *p_ls.values()]
    ref_loss = (_bce(x, logits) + total).mean()
    for got, ref in zip(_grads(out.loss, leaves), _grads(ref_loss, leaves), strict=True):
        assert_close(got, ref, **EXACT)
    assert_close(out.loss, ref_loss, **EXACT)


def test_grouped_call_reports_per_group_dimensions_and_metrics() -> None:
    q1 = helpers.normal(_leaf(B, 3), logvar=_leaf(B, 3, scale=0.2, seed=1))
    q2 = helpers.normal(_leaf(B, 2, 2, seed=2), logvar=_leaf(B, 2, 2, scale=0.2, seed=3))
    x, logits = _bernoulli((B, 4))
    out = rdloss.RateDistortionLoss()(
        x, posterior={"a": q1, "b": q2}, likelihood=helpers.bernoulli(logits=logits)
    )
    assert out.rate_per_group_dimension is not None
    assert out.rate_per_group_dimension["a"].shape == (B, 3)
    assert out.rate_per_group_dimension["b"].shape == (B, 4)
    assert out.rate_per_dimension is not None and out.rate_per_dimension.shape == (B, 7)
    assert_close(
        out.rate_per_dimension,
        torch.cat([out.rate_per_group_dimension["a"], out.rate_per_group_dimension["b"]], 1),
    )
    metrics = out.metrics()
    assert metrics["rate/a"] == pytest.approx(float(out.rate_per_group["a"].detach().mean()))
    assert metrics["rate/b"] == pytest.approx(float(out.rate_per_group["b"].detach().mean()))
    assert metrics["rate"] == pytest.approx(metrics["rate/a"] + metrics["rate/b"])


# --- NVAE: kl_balancer and kl_balancer_coeff (NVlabs/NVAE, utils.py) ------------------------


def _nvae_kl_balancer(kl_all: list[Tensor], kl_coeff: float, alpha_i: Tensor) -> Tensor:
    # utils.kl_balancer(kl_all, kl_coeff, kl_balance=True, alpha_i) and utils.kl_per_group
    if kl_coeff < 1.0:
        alpha_i = alpha_i.unsqueeze(0)
        stacked = torch.stack(kl_all, dim=1)
        kl_coeff_i = torch.mean(torch.abs(stacked), dim=0, keepdim=True) + 0.01
        total_kl = torch.sum(kl_coeff_i)
        kl_coeff_i = kl_coeff_i / alpha_i * total_kl
        kl_coeff_i = kl_coeff_i / torch.mean(kl_coeff_i, dim=1, keepdim=True)
        kl = torch.sum(stacked * kl_coeff_i.detach(), dim=1)
    else:
        kl = torch.sum(torch.stack(kl_all, dim=1), dim=1)
    return kl_coeff * kl


def _nvae_square_coeff(num_scales: int, groups_per_scale: list[int]) -> Tensor:
    # utils.kl_balancer_coeff(num_scales, groups_per_scale, fun='square')
    coeff = torch.cat(
        [
            (2**i) ** 2 / groups_per_scale[num_scales - i - 1] * torch.ones(groups_per_scale[i])
            for i in range(num_scales)
        ]
    ).double()
    return coeff / coeff.min()


@pytest.mark.parametrize("kl_coeff", [0.3, 1.0])
@pytest.mark.parametrize("alpha_rule", ["square", "size"])
def test_beta_group_balance_equals_nvae_kl_balancer(kl_coeff: float, alpha_rule: str) -> None:
    # Two scales of two groups each, top (2x2) first, then 4x4: NVAE's order.
    shapes = {
        "s0g0": (B, 3, 2, 2),
        "s0g1": (B, 3, 2, 2),
        "s1g0": (B, 3, 4, 4),
        "s1g1": (B, 3, 4, 4),
    }
    mus = {k: _leaf(*s, scale=1.0 + i, seed=i) for i, (k, s) in enumerate(shapes.items())}
    lvs = {k: _leaf(*s, scale=0.3, seed=10 + i) for i, (k, s) in enumerate(shapes.items())}
    x, logits = _bernoulli((B, 8))
    alpha_i = _nvae_square_coeff(2, [2, 2])
    alpha = dict(zip(shapes, alpha_i.tolist(), strict=True)) if alpha_rule == "square" else None
    loss_fn = rdloss.RateDistortionLoss(
        objective=objectives.Beta(kl_coeff, group_balance=True, alpha=alpha)
    )
    out = loss_fn(
        x,
        posterior={k: helpers.normal(mus[k], logvar=lvs[k]) for k in shapes},
        likelihood=helpers.bernoulli(logits=logits),
    )

    # NVAE's KL of a group against N(0, I): log q - log p summed over (C, H, W), analytic here.
    kl_all = [(0.5 * (mus[k] ** 2 + lvs[k].exp() - 1.0 - lvs[k])).flatten(1).sum(1) for k in shapes]
    ref = (_bce(x, logits) + _nvae_kl_balancer(kl_all, kl_coeff, alpha_i)).mean()
    assert_close(out.loss, ref, **EXACT)
    leaves = [*mus.values(), *lvs.values(), logits]
    for got, want in zip(_grads(out.loss, leaves), _grads(ref, leaves), strict=True):
        assert_close(got, want, **EXACT)
    # The reported rate stays the plain KL.
    assert_close(out.rate_per_example, sum(kl_all), **EXACT)


def test_group_balance_follows_a_warm_up_schedule_and_stops_at_one() -> None:
    q = {
        "a": helpers.normal(_leaf(B, 2) * 3, logvar=_leaf(B, 2)),
        "b": helpers.normal(_leaf(B, 6, seed=1), logvar=_leaf(B, 6, seed=2)),
    }
    x, logits = _bernoulli((B, 3))
    likelihood = helpers.bernoulli(logits=logits)
    balanced = rdloss.RateDistortionLoss(
        objective=objectives.Beta(schedules.Linear(0.5, 1.0, steps=1), group_balance=True)
    )
    plain = rdloss.RateDistortionLoss(
        objective=objectives.Beta(schedules.Linear(0.5, 1.0, steps=1))
    )
    first = [f(x, posterior=q, likelihood=likelihood).loss for f in (balanced, plain)]
    assert not torch.allclose(first[0], first[1])  # balanced while beta < 1
    second = [f(x, posterior=q, likelihood=likelihood).loss for f in (balanced, plain)]
    assert_close(second[0], second[1], **EXACT)  # beta = 1: the plain ELBO


# --- DreamerV3: world-model KL (danijar/dreamerv3, rssm.py) ---------------------------------


def _categorical_kl(p: Tensor, q: Tensor) -> Tensor:
    """KL of products of categoricals over (..., latents, classes), summed over latents."""
    return (p * (p.log() - q.log())).sum((-2, -1))


@pytest.mark.parametrize(("dyn_scale", "rep_scale"), [(0.5, 0.1), (1.0, 0.1)])
def test_free_bits_per_step_and_kl_balance_equal_dreamerv3(
    dyn_scale: float, rep_scale: float
) -> None:
    steps, latents, classes, pixels = 6, 4, 5, 7
    post_logits = _leaf(B, steps, latents, classes, scale=0.8, seed=1)
    prior_logits = _leaf(B, steps, latents, classes, scale=0.8, seed=2)
    x, logits = _bernoulli((B, steps, pixels))
    post_probs, prior_probs = _unimix(post_logits), _unimix(prior_logits)

    # Reference: dyn = max(1, KL(sg(post) || prior)), rep = max(1, KL(post || sg(prior))),
    # the KL summed over the latents of a step before the clamp; the mean over (B, steps).
    dyn = _categorical_kl(post_probs.detach(), prior_probs).clamp(min=1.0)
    rep = _categorical_kl(post_probs, prior_probs.detach()).clamp(min=1.0)
    prediction = _bce(x.reshape(B * steps, pixels), logits.reshape(B * steps, pixels)).reshape(
        B, steps
    )
    ref = (prediction + dyn_scale * dyn + rep_scale * rep).mean()
    some_clamped = _categorical_kl(post_probs, prior_probs) < 1.0
    assert some_clamped.any() and not some_clamped.all()  # free bits active on some steps

    loss_fn = rdloss.RateDistortionLoss(
        objective=objectives.FreeBits(
            1.0, per="step", reduction="example", beta=dyn_scale + rep_scale
        ),
        kl_balance=dyn_scale / (dyn_scale + rep_scale),
    )
    out = loss_fn(
        x,
        posterior=Independent(OneHotCategorical(probs=post_probs), 1),
        prior=Independent(OneHotCategorical(probs=prior_probs), 1),
        likelihood=helpers.bernoulli(logits=logits),
    )
    # rdloss sums over steps per example; DreamerV3 averages over steps.
    assert_close(out.loss, steps * ref, **EXACT)
    leaves = [post_logits, prior_logits, logits]
    for got, want in zip(_grads(out.loss, leaves), _grads(steps * ref, leaves), strict=True):
        assert_close(got, want, **EXACT)
    assert out.rate_per_step is not None
    assert_close(out.rate_per_step["z"], _categorical_kl(post_probs, prior_probs), **EXACT)
    assert_close(out.rate_per_example, out.rate_per_step["z"].sum(1), **EXACT)


# --- conditional VAE: kl_divergence(q(z|x,y), p(z|y)) -----------------------------------------


def _cvae_tensors() -> dict[str, Tensor]:
    return {
        "q_mu": _leaf(B, 3, seed=1),
        "q_lv": _leaf(B, 3, scale=0.3, seed=2),
        "p_mu": _leaf(B, 3, seed=3),
        "p_lv": _leaf(B, 3, scale=0.3, seed=4),
    }


def _cvae_ref(t: dict[str, Tensor]) -> Tensor:
    q = Independent(Normal(t["q_mu"], (0.5 * t["q_lv"]).exp()), 1)
    p = Independent(Normal(t["p_mu"], (0.5 * t["p_lv"]).exp()), 1)
    return kl_divergence(q, p)


def test_conditional_prior_equals_kl_between_two_learned_normals_values_and_gradients() -> None:
    t = _cvae_tensors()
    x, logits = _bernoulli((B, 4))
    out = rdloss.RateDistortionLoss()(
        x,
        posterior=helpers.normal(t["q_mu"], logvar=t["q_lv"]),
        prior=helpers.normal(t["p_mu"], logvar=t["p_lv"]),
        likelihood=helpers.bernoulli(logits=logits),
    )
    assert out.estimator == "analytic" and out.rate_per_group is None
    ref = _cvae_ref(t)
    assert_close(out.rate_per_example, ref, **EXACT)
    leaves = list(t.values())
    got = _grads(out.loss, leaves)
    want = _grads((_bce(x, logits) + ref).mean(), leaves)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, **EXACT)
    assert all(bool(g.abs().sum() > 0) for g in got[2:])  # gradients reach the prior


def test_conditional_prior_monte_carlo_uses_the_decoders_z() -> None:
    t = _cvae_tensors()
    q = helpers.normal(t["q_mu"], logvar=t["q_lv"])
    p = helpers.normal(t["p_mu"], logvar=t["p_lv"])
    z = q.rsample((3,))
    x, logits = _bernoulli((B, 4))
    out = rdloss.RateDistortionLoss(rate_estimator="mc")(
        x,
        posterior=q,
        prior=p,
        likelihood=helpers.bernoulli(logits=logits.expand(3, B, 4), event_dims=1),
        z=z,
    )
    assert out.estimator == "mc"
    assert_close(out.rate_per_example, (q.log_prob(z) - p.log_prob(z)).mean(0), **EXACT)


def test_conditional_prior_with_the_decoder_call_style_and_monte_carlo_close_to_analytic() -> None:
    torch.manual_seed(0)
    t = {k: v.detach() for k, v in _cvae_tensors().items()}
    q = helpers.normal(t["q_mu"], logvar=t["q_lv"])
    p = helpers.normal(t["p_mu"], logvar=t["p_lv"])
    x = torch.ones(B, 2, dtype=torch.float64)
    decoder = lambda z: helpers.bernoulli(logits=z[:, :2])  # noqa: E731
    mc = rdloss.RateDistortionLoss(rate_estimator="mc")(
        x, posterior=q, prior=p, decoder=decoder, samples=20_000
    )
    exact = _cvae_ref(t)
    # Monte Carlo within 6 standard errors of the closed form.
    z = q.sample((20_000,))
    stderr = (q.log_prob(z) - p.log_prob(z)).std(0) / math.sqrt(20_000)
    assert bool(((mc.rate_per_example - exact).abs() < 6 * stderr).all())


# --- the grouped path on one group is the ungrouped path ----------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: objectives.Beta(0.7),
        lambda: objectives.TargetRate(2.0),
        lambda: objectives.FreeBits(0.3),
        lambda: objectives.FreeBits(0.3, per="total", reduction="example"),
        lambda: objectives.Capacity(1.0, gamma=3.0),
        lambda: objectives.GECO(5.0),
        lambda: objectives.RateController(2.0),
    ],
)
def test_one_group_gives_the_ungrouped_numbers(make) -> None:  # type: ignore[no-untyped-def]
    t = _cvae_tensors()
    x, logits = _bernoulli((B, 4))

    def run(grouped: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
        q = helpers.normal(t["q_mu"], logvar=t["q_lv"])
        p = helpers.normal(t["p_mu"], logvar=t["p_lv"])
        loss_fn = rdloss.RateDistortionLoss(objective=make()).double()
        kwargs = (
            {"posterior": {"z": q}, "prior": {"z": p}} if grouped else {"posterior": q, "prior": p}
        )
        out = loss_fn(x, likelihood=helpers.bernoulli(logits=logits), **kwargs)
        return out.loss, _grads(out.loss, [*t.values(), logits])

    (ungrouped_loss, ungrouped_grads), (grouped_loss, grouped_grads) = run(False), run(True)
    assert_close(grouped_loss, ungrouped_loss, rtol=0, atol=0)
    for a, b in zip(grouped_grads, ungrouped_grads, strict=True):
        assert_close(a, b, rtol=0, atol=0)


# --- steps ------------------------------------------------------------------------------------


def test_a_step_axis_reports_per_step_rates_and_changes_no_total() -> None:
    steps, dim = 4, 3
    mu, lv = _leaf(B, steps, dim), _leaf(B, steps, dim, scale=0.2, seed=1)
    stepped = F.rate(Independent(Normal(mu, (0.5 * lv).exp()), 1))
    folded = F.rate(Independent(Normal(mu, (0.5 * lv).exp()), 2))
    assert stepped.per_step is not None and stepped.per_step.shape == (B, steps)
    assert folded.per_step is None
    assert_close(stepped.per_example, folded.per_example, **EXACT)
    assert stepped.per_dimension is not None and folded.per_dimension is not None
    assert_close(stepped.per_dimension, folded.per_dimension, **EXACT)
    want = (0.5 * (mu**2 + lv.exp() - 1 - lv)).sum(-1)
    assert_close(stepped.per_step, want, **EXACT)


def test_monte_carlo_rate_with_steps_and_samples() -> None:
    steps, dim = 3, 2
    q = Independent(Normal(_leaf(B, steps, dim), torch.ones(B, steps, dim, dtype=torch.float64)), 1)
    p = Independent(
        Normal(_leaf(B, steps, dim, seed=4), torch.ones(B, steps, dim, dtype=torch.float64)), 1
    )
    z = q.rsample((2,))
    got = F.rate(q, prior=p, z=z, estimator="mc")
    want = (q.base_dist.log_prob(z) - p.base_dist.log_prob(z)).mean(0)
    assert got.per_step is not None
    assert_close(got.per_step, want.sum(-1), **EXACT)
    assert got.per_dimension is not None
    assert_close(got.per_dimension, want.reshape(B, steps * dim), **EXACT)


# --- KL balancing: the value is the KL, the gradient is split ---------------------------------


@pytest.mark.parametrize("estimator", ["analytic", "mc"])
@pytest.mark.parametrize("alpha", [0.0, 0.8, 1.0])
def test_kl_balance_keeps_the_value_and_splits_the_gradient(estimator: str, alpha: float) -> None:
    t = _cvae_tensors()
    q = helpers.normal(t["q_mu"], logvar=t["q_lv"])
    p = helpers.normal(t["p_mu"], logvar=t["p_lv"])
    z = q.rsample()
    plain = F.rate(q, prior=p, z=z, estimator=estimator)  # type: ignore[arg-type]
    balanced = F.rate(q, prior=p, z=z, estimator=estimator, balance=alpha)  # type: ignore[arg-type]
    assert_close(balanced.per_example, plain.per_example, rtol=0, atol=0)
    post, prior = [t["q_mu"], t["q_lv"]], [t["p_mu"], t["p_lv"]]
    g_post = _grads(plain.per_example.sum(), post)
    g_prior = _grads(plain.per_example.sum(), prior)
    b_post = _grads(balanced.per_example.sum(), post)
    b_prior = _grads(balanced.per_example.sum(), prior)
    if estimator == "analytic":  # z's path to the posterior makes the MC split inexact
        for got, want in zip(b_post, g_post, strict=True):
            assert_close(got, (1 - alpha) * want, **EXACT)
    for got, want in zip(b_prior, g_prior, strict=True):
        assert_close(got, alpha * want, **EXACT)


def test_kl_balance_refuses_a_distribution_it_cannot_detach() -> None:
    flow = torch.distributions.TransformedDistribution(
        Normal(torch.zeros(B, 2), torch.ones(B, 2)),
        [torch.distributions.transforms.AffineTransform(torch.zeros(2), torch.ones(2))],
    )
    with pytest.raises(TypeError, match=r"KL balancing needs a stop-gradient copy of"):
        F.rate(
            flow,
            prior=Normal(torch.zeros(B, 2), torch.ones(B, 2)),
            z=torch.zeros(B, 2),
            balance=0.5,
        )


# --- per-group marginals ----------------------------------------------------------------------


def test_marginals_per_group_learned_fixed_and_default() -> None:
    learned = marginals.DiagonalGaussian(3)
    fixed = Independent(Normal(torch.ones(2), torch.ones(2)), 1)
    loss_fn = rdloss.RateDistortionLoss(marginal={"a": learned, "b": fixed})
    assert "marginal.a.loc" in dict(loss_fn.named_parameters()) or any(
        n.startswith("marginal.a.") for n, _ in loss_fn.named_parameters()
    )
    qa = helpers.normal(torch.randn(B, 3), logvar=torch.zeros(B, 3))
    qb = helpers.normal(torch.randn(B, 2), logvar=torch.zeros(B, 2))
    qc = helpers.normal(torch.randn(B, 4), logvar=torch.zeros(B, 4))
    x = torch.ones(B, 2)
    out = loss_fn(
        x,
        posterior={"a": qa, "b": qb, "c": qc},
        likelihood=helpers.bernoulli(logits=torch.zeros(B, 2)),
    )
    assert out.rate_per_group is not None
    assert_close(out.rate_per_group["a"], kl_divergence(qa, learned()))
    assert_close(out.rate_per_group["b"], kl_divergence(qb, fixed))
    standard = Independent(Normal(torch.zeros(4), torch.ones(4)), 1)
    assert_close(out.rate_per_group["c"], kl_divergence(qc, standard))
    out.loss.backward()
    assert all(p.grad is not None for p in learned.parameters())


# --- free bits at every level, against the formulas ---------------------------------------------


def _grouped_terms() -> tuple[dict[str, Tensor], Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "a": torch.rand(B, 3, generator=g, dtype=torch.float64) * 2,
        "b": torch.rand(B, 2, generator=g, dtype=torch.float64),
    }, torch.rand(B, generator=g, dtype=torch.float64) * 10


@pytest.mark.parametrize("per", ["dimension", "group", "total"])
@pytest.mark.parametrize("reduction", ["batch", "example"])
def test_free_bits_levels_equal_their_formulas(per: str, reduction: str) -> None:
    dims, distortion = _grouped_terms()
    per_group = {k: v.sum(1) for k, v in dims.items()}
    terms = rdloss.latents.RateTerms(
        per_example=sum(per_group.values()),  # type: ignore[arg-type]
        per_dimension=torch.cat(list(dims.values()), 1),
        per_group=per_group,
        per_group_dimension=dims,  # type: ignore[arg-type]
        per_step={},
        group_size={"a": 3, "b": 2},
        grouped=True,
    )
    lam = 0.9
    units = {
        "dimension": torch.cat(list(dims.values()), 1),
        "group": torch.stack(list(per_group.values()), 1),
        "total": terms.per_example.unsqueeze(1),
    }[per]
    if reduction == "batch":
        clamped = torch.clamp(units.mean(0), min=lam).sum()
    else:
        clamped = torch.clamp(units, min=lam).sum(1).mean()
    objective = objectives.FreeBits(lam, per=per, reduction=reduction, beta=0.5)  # type: ignore[arg-type]
    out = objective(terms.per_example, distortion, terms=terms)
    assert_close(out.loss, distortion.mean() + 0.5 * clamped, **EXACT)


def test_free_bits_asked_at_a_level_the_model_does_not_have() -> None:
    x, logits = _bernoulli((B, 4))
    q = helpers.normal(_leaf(B, 3), logvar=_leaf(B, 3, seed=1))
    likelihood = helpers.bernoulli(logits=logits)
    with pytest.raises(ValueError, match=r"per='step'\) needs a step axis in every group"):
        rdloss.RateDistortionLoss(objective=objectives.FreeBits(per="step"))(
            x, posterior={"a": q}, likelihood=likelihood
        )
    with pytest.raises(ValueError, match=r"per='group'\) needs named latent groups"):
        rdloss.RateDistortionLoss(objective=objectives.FreeBits(per="group"))(
            x, posterior=q, likelihood=likelihood
        )
