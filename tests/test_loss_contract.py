"""Hostile contract tests of `rdloss.RateDistortionLoss`'s rewritten core (issue 20).

Part 1 fuzzes the loss against an independent reference: rate and distortion per example,
per group and per step, the loss, and the gradients of every input, computed here from
plain ``torch.distributions`` objects (``kl_divergence`` of ``Normal`` s, ``log_prob``),
never through rdloss. Part 2 looks for silent wrong numbers and bad errors at the edges
of the new code: dtypes, meta and empty tensors, broadcasting traps, categoricals, KL
balancing of every rebuildable family, host synchronisations, ``torch.compile``,
``torch.func``, ``state_dict`` and module dtype conversions.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Distribution,
    Independent,
    Normal,
    kl_divergence,
)
from torch.testing import assert_close

from rdloss import RateDistortionLoss, helpers, marginals
from rdloss.objectives import Beta

F64 = torch.float64

RTOL, ATOL = 1e-10, 1e-12
N_FUZZ = 240

# ----------------------------------------------------------------------------------------
# Part 1: a fuzz against an independent reference
# ----------------------------------------------------------------------------------------


@dataclass
class Group:
    """One latent group of a fuzz case and what the reference needs of it."""

    name: str
    pshape: tuple[int, ...]  # parameter shape after the batch axis
    steps: bool  # whether the posterior has a step axis (batch (B, T))
    event: tuple[int, ...]  # the canonical event shape (per step)
    mu: Tensor
    raw: Tensor  # logvar, log_scale or scale as given
    style: str
    posterior: Distribution
    against: str  # "prior_batch", "prior_shared" or "marginal"
    prior: Distribution | None = None
    prior_params: tuple[Tensor, Tensor] | None = None
    marginal: Any = None  # None, a module or a Distribution
    marginal_kind: str = "none"
    inputs: list[Tensor] = field(default_factory=list)

    def sigma(self) -> Tensor:
        """The posterior's standard deviation, by the reference's own formula."""
        if self.style == "logvar":
            return torch.exp(0.5 * self.raw)
        if self.style == "log_scale":
            return torch.exp(self.raw)
        return self.raw.expand_as(self.mu)

    def q(self) -> Normal:
        return Normal(self.mu, self.sigma())

    def p(self) -> Normal:
        """The distribution the rate is taken against, elementwise over ``event``."""
        if self.prior_params is not None:
            return Normal(*self.prior_params)
        kind = self.marginal_kind
        zeros = torch.zeros(self.event, dtype=torch.float64)
        if kind in ("none", "standard"):
            return Normal(zeros, torch.ones_like(zeros))
        if kind == "diagonal":
            return Normal(self.marginal.loc, F.softplus(self.marginal.raw_scale))
        assert kind == "fixed"
        return Normal(self.marginal.base_dist.loc, self.marginal.base_dist.scale)


def _positive(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    return (0.4 + torch.rand(shape, generator=gen, dtype=torch.float64)).requires_grad_()


def _randn(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()


def _make_group(name: str, b: int, rng: random.Random, gen: torch.Generator) -> Group:
    kind = rng.choice(["vector", "conv", "steps"])
    if kind == "vector":
        pshape: tuple[int, ...] = (rng.randint(1, 5),)
    elif kind == "conv":
        pshape = (rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 3))
    else:
        pshape = (rng.randint(1, 4), rng.randint(1, 4))
    style = rng.choice(["logvar", "log_scale", "scale", "scale_vec", "torch"])
    mu = _randn((b, *pshape), gen)
    if style in ("logvar", "log_scale"):
        raw = (0.5 * torch.randn((b, *pshape), generator=gen, dtype=torch.float64)).requires_grad_()
    elif style == "scale_vec":
        raw = _positive(pshape[-1:], gen)  # a (D,) scale broadcast over the batch
    else:
        raw = _positive((b, *pshape), gen)
    # Event dims of the posterior as built; steps exactly when its batch is (B, T).
    if kind == "steps":
        n_event = 1
    elif kind == "conv":
        n_event = rng.choice([None, 3, 2, 1]) if style != "torch" else rng.choice([0, 3, 2])
    else:
        n_event = 1 if style != "torch" else rng.choice([0, 1])
    if style == "torch":
        sigma = raw
        base = Normal(mu, sigma)
        posterior: Distribution = Independent(base, n_event) if n_event else base
    else:
        kwargs: dict[str, Any] = {
            "logvar": {"logvar": raw},
            "log_scale": {"log_scale": raw},
            "scale": {"scale": raw},
            "scale_vec": {"scale": raw},
        }[style]
        posterior = helpers.normal(mu, event_dims=n_event, **kwargs)
    full = len(pshape) if n_event is None else n_event
    steps = 1 + len(pshape) - full == 2 and full > 0
    event = pshape[1:] if steps else pshape
    group = Group(name, pshape, steps, event, mu, raw, style, posterior, "marginal")
    group.inputs = [mu, raw]
    group.against = rng.choice(["prior_batch", "prior_shared", "marginal", "marginal"])
    if group.against == "prior_batch":
        loc, scale = _randn((b, *pshape), gen), _positive((b, *pshape), gen)
        group.prior = Normal(loc, scale)
        if steps:
            group.prior = Independent(group.prior, 1) if rng.random() < 0.5 else group.prior
        group.prior_params = (loc, scale)
        group.inputs += [loc, scale]
    elif group.against == "prior_shared":
        loc, scale = _randn(event, gen), _positive(event, gen)
        group.prior = Normal(loc, scale)
        group.prior_params = (loc, scale)
        group.inputs += [loc, scale]
    else:
        kinds = ["none", "fixed"] + (["standard", "diagonal"] if len(event) == 1 else [])
        group.marginal_kind = rng.choice(kinds)
        if group.marginal_kind == "standard":
            group.marginal = marginals.StandardNormal(event[0]).double()
        elif group.marginal_kind == "diagonal":
            module = marginals.DiagonalGaussian(event[0]).double()
            with torch.no_grad():
                module.loc.copy_(torch.randn(event, generator=gen, dtype=torch.float64))
                module.raw_scale.copy_(torch.randn(event, generator=gen, dtype=torch.float64))
            group.marginal = module
            group.inputs += [module.loc, module.raw_scale]
        elif group.marginal_kind == "fixed":
            loc, scale = _randn(event, gen), _positive(event, gen)
            group.marginal = Independent(Normal(loc, scale), len(event))
            group.inputs += [loc, scale]
    return group


def _sum_event(t: Tensor, group: Group, lead: int) -> Tensor:
    """Sum ``(*lead dims, B, *pshape)`` values to ``(*lead, B)`` or per step ``(*lead, B, T)``."""
    keep = lead + 1 + (1 if group.steps else 0)
    dims = tuple(range(keep, t.ndim))
    return t.sum(dims) if dims else t


@dataclass
class Case:
    seed: int
    b: int
    groups: list[Group]
    grouped: bool
    binary: bool
    x: Tensor
    weights: Tensor  # per-group decoder weights (B, F_g) -> P stacked
    w: list[Tensor]
    bias: Tensor
    log_sigma_x: Tensor
    lik_style: str
    call: str  # "likelihood" or "decoder"
    samples: int | None  # None: z without a sample axis
    estimator: str
    balance: float | None
    beta: float
    weight: Tensor | None


def _decode(case: Case, zs: list[Tensor], lead: int) -> Tensor:
    """The decoder's mean: a linear map of the flattened latents, ``(*lead, B, P)``."""
    h = case.bias
    for z, w in zip(zs, case.w, strict=True):
        h = h + z.flatten(lead + 1) @ w if lead else h + z.flatten(1) @ w
    return h


def _likelihood(case: Case, h: Tensor, reference: bool) -> Distribution:
    n_event = 1  # data are (..., P): every leading axis is a batch axis
    if case.binary:
        if reference:
            return Independent(Bernoulli(logits=h), n_event)
        if case.lik_style == "helper":
            return helpers.bernoulli(logits=h, event_dims=n_event)
        return Independent(Bernoulli(logits=h), n_event)
    sigma = torch.exp(case.log_sigma_x).expand_as(h)
    if reference or case.lik_style == "torch":
        return Independent(Normal(h, sigma), n_event)
    return helpers.normal(h, log_scale=case.log_sigma_x.expand_as(h), event_dims=n_event)


def make_case(seed: int) -> Case:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    b = rng.randint(1, 5)
    n_groups = rng.randint(1, 4)
    grouped = n_groups > 1 or rng.random() < 0.3
    groups = [_make_group(f"g{i}", b, rng, gen) for i in range(n_groups)]
    p = rng.randint(1, 4)
    binary = rng.random() < 0.4
    if binary:
        x = torch.randint(0, 2, (b, p), generator=gen).double()
    else:
        x = torch.randn((b, p), generator=gen, dtype=torch.float64)
    w = [_randn((int(torch.Size(g.pshape).numel()), p), gen) for g in groups]
    bias = _randn((p,), gen)
    log_sigma_x = (0.3 * torch.randn((p,), generator=gen, dtype=torch.float64)).requires_grad_()
    call = rng.choice(["likelihood", "decoder"])
    samples = rng.choice([None, 3]) if call == "likelihood" else rng.choice([1, 3])
    weight = _positive((b,), gen) if rng.random() < 0.4 else None
    return Case(
        seed,
        b,
        groups,
        grouped,
        binary,
        x,
        torch.empty(0),
        w,
        bias,
        log_sigma_x,
        rng.choice(["helper", "torch"]),
        call,
        samples,
        rng.choice(["analytic", "mc"]),
        rng.choice([None, 0.3]),
        rng.uniform(0.1, 2.0),
        weight,
    )


def _draw(case: Case) -> list[Tensor]:
    """The latents the loss draws (decoder=) or the caller passes (likelihood=)."""
    shape = torch.Size() if case.samples in (None, 1) else torch.Size([case.samples])
    return [g.q().rsample(shape) for g in case.groups]


def run_rdloss(case: Case) -> Any:
    groups = case.groups
    marg = {g.name: g.marginal for g in groups if g.marginal is not None}
    if case.grouped:
        marginal: Any = marg or None
        posterior: Any = {g.name: g.posterior for g in groups}
        prior: Any = {g.name: g.prior for g in groups if g.prior is not None} or None
    else:
        (g,) = groups
        marginal, posterior, prior = g.marginal, g.posterior, g.prior
    loss_fn = RateDistortionLoss(
        marginal,
        Beta(case.beta),
        rate_estimator=case.estimator,  # type: ignore[arg-type]
        kl_balance=case.balance,
    )
    torch.manual_seed(case.seed)
    lead = 1 if case.samples == 3 else 0
    if case.call == "decoder":

        def decoder(z: Any) -> Distribution:
            zs = [z[g.name] for g in groups] if case.grouped else [z]
            h = case.bias
            for zz, w in zip(zs, case.w, strict=True):
                h = h + zz.flatten(1) @ w
            return _likelihood(case, h, reference=False)

        return loss_fn(
            case.x,
            posterior=posterior,
            prior=prior,
            decoder=decoder,
            samples=case.samples,
            weight=case.weight,
        )
    zs = _draw(case)
    likelihood = _likelihood(case, _decode(case, zs, lead), reference=False)
    z: Any = None
    if case.estimator == "mc" or random.Random(case.seed + 1).random() < 0.5:
        z = {g.name: zz for g, zz in zip(groups, zs, strict=True)} if case.grouped else zs[0]
    return loss_fn(
        case.x, posterior=posterior, prior=prior, likelihood=likelihood, z=z, weight=case.weight
    )


def _sg(d: Normal) -> Normal:
    return Normal(d.loc.detach(), d.scale.detach())


def reference(case: Case) -> dict[str, Any]:
    """R, D (per example, group, step), the loss, and the scalar whose gradient is compared."""
    torch.manual_seed(case.seed)
    lead = 1 if case.samples == 3 else 0
    zs = _draw(case)
    likelihood = _likelihood(case, _decode(case, zs, lead), reference=True)
    target = case.x.expand(case.samples, *case.x.shape) if lead else case.x
    d_draws = -likelihood.log_prob(target)
    distortion = d_draws.mean(0) if lead else d_draws
    a = case.balance
    per_group, per_step, for_grad = {}, {}, {}
    for g, z in zip(case.groups, zs, strict=True):
        q, p = g.q(), g.p()

        def rate(q: Normal, p: Normal, z: Tensor, g: Group = g) -> Tensor:
            if case.estimator == "analytic":
                return _sum_event(kl_divergence(q, p), g, 0)
            values = _sum_event(q.log_prob(z) - p.log_prob(z), g, lead)
            return values.mean(0) if lead else values

        value = rate(q, p, z)
        if a is None:
            grad_term = value
        else:
            grad_term = a * rate(_sg(q), p, z.detach()) + (1 - a) * rate(q, _sg(p), z)
        if g.steps:
            per_step[g.name] = value
            value, grad_term = value.sum(-1), grad_term.sum(-1)
        per_group[g.name] = value
        for_grad[g.name] = grad_term
    rate_total = torch.stack(list(per_group.values())).sum(0)
    grad_total = torch.stack(list(for_grad.values())).sum(0)

    def mean(v: Tensor) -> Tensor:
        return v.mean() if case.weight is None else (case.weight * v).sum() / case.weight.sum()

    return {
        "rate": rate_total,
        "distortion": distortion,
        "per_group": per_group,
        "per_step": per_step,
        "loss": mean(distortion) + case.beta * mean(rate_total),
        "loss_for_grad": mean(distortion) + case.beta * mean(grad_total),
        "per_group_for_grad": for_grad,
    }


def _inputs(case: Case) -> list[Tensor]:
    out = [t for g in case.groups for t in g.inputs] + [*case.w, case.bias]
    out += [case.log_sigma_x] if not case.binary else []
    return out + ([case.weight] if case.weight is not None else [])


def _grads(scalar: Tensor, inputs: list[Tensor]) -> list[Tensor]:
    grads = torch.autograd.grad(scalar, inputs, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads, strict=True)]


@pytest.mark.parametrize("seed", range(N_FUZZ))
def test_fuzz_against_reference(seed: int) -> None:
    case = make_case(seed)
    out = run_rdloss(case)
    ref = reference(case)
    assert_close(out.rate_per_example, ref["rate"], rtol=RTOL, atol=ATOL)
    assert_close(out.distortion_per_example, ref["distortion"], rtol=RTOL, atol=ATOL)
    assert_close(out.loss, ref["loss"], rtol=RTOL, atol=ATOL)
    if case.grouped:
        assert list(out.rate_per_group) == [g.name for g in case.groups]
        for name, value in ref["per_group"].items():
            assert_close(out.rate_per_group[name], value, rtol=RTOL, atol=ATOL)
    else:
        assert out.rate_per_group is None
    steps = {("z" if not case.grouped else k): v for k, v in ref["per_step"].items()}
    if steps:
        assert out.rate_per_step is not None and set(out.rate_per_step) == set(steps)
        for name, value in steps.items():
            assert_close(out.rate_per_step[name], value, rtol=RTOL, atol=ATOL)
    else:
        assert out.rate_per_step is None
    # Gradients of every input, of the loss and of random projections of the per-example
    # outputs (so R and D are checked separately, not only through the objective).
    gen = torch.Generator().manual_seed(seed + 10_000)
    c_r, c_d = torch.randn(2, case.b, generator=gen, dtype=torch.float64)
    inputs = _inputs(case)
    ours = out.loss + (c_r * out.rate_per_example).sum() + (c_d * out.distortion_per_example).sum()
    grad_rate = torch.stack(list(ref["per_group_for_grad"].values())).sum(0)
    theirs = ref["loss_for_grad"] + (c_r * grad_rate).sum() + (c_d * ref["distortion"]).sum()
    for mine, expected in zip(_grads(ours, inputs), _grads(theirs, inputs), strict=True):
        assert_close(mine, expected, rtol=RTOL, atol=ATOL)


def test_fuzz_covers_the_grid() -> None:
    """The generated cases reach every option the fuzz claims to cover."""
    seen: dict[str, set[object]] = {}
    for seed in range(N_FUZZ):
        case = make_case(seed)
        for key, value in {
            "call": (case.call, case.samples),
            "estimator": case.estimator,
            "balance": case.balance,
            "groups": len(case.groups),
            "weight": case.weight is None,
            "binary": case.binary,
        }.items():
            seen.setdefault(key, set()).add(value)
        for g in case.groups:
            seen.setdefault("style", set()).add(g.style)
            seen.setdefault("against", set()).add((g.against, g.marginal_kind))
            seen.setdefault("steps", set()).add((len(g.pshape), g.steps))
    assert seen["call"] == {("likelihood", None), ("likelihood", 3), ("decoder", 1), ("decoder", 3)}
    assert seen["estimator"] == {"analytic", "mc"} and seen["balance"] == {None, 0.3}
    assert seen["groups"] == {1, 2, 3, 4}
    assert seen["style"] == {"logvar", "log_scale", "scale", "scale_vec", "torch"}
    assert {k for _, k in seen["against"]} == {"none", "standard", "diagonal", "fixed"}
    assert {a for a, _ in seen["against"]} == {"prior_batch", "prior_shared", "marginal"}
    assert (3, True) in seen["steps"] and (2, True) in seen["steps"]


# ----------------------------------------------------------------------------------------
# Part 2: hostile cases
# ----------------------------------------------------------------------------------------

B, D, P, K = 4, 3, 5, 6
HALF = [torch.float16, torch.bfloat16]


def _lik(b: int = B, p: int = P, dtype: torch.dtype = torch.float32) -> Distribution:
    return helpers.normal(torch.randn(b, p, dtype=dtype), scale=1.0)


def _q(b: int = B, d: int = D, dtype: torch.dtype = torch.float32) -> Distribution:
    return helpers.normal(torch.randn(b, d, dtype=dtype), logvar=torch.randn(b, d, dtype=dtype))


# --- dtypes ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("where", ["torch posterior", "helper posterior", "half prior"])
def test_half_precision_rate_is_computed_in_float32(dtype: torch.dtype, where: str) -> None:
    mu, sigma = torch.randn(B, D).to(dtype), torch.rand(B, D).add(0.5).to(dtype)
    loc, scale = torch.randn(B, D).to(dtype), torch.rand(B, D).add(0.5).to(dtype)
    posterior: Distribution = Normal(mu, sigma)
    prior: Distribution | None = None
    if where == "helper posterior":
        posterior = helpers.normal(mu, scale=sigma)
    if where == "half prior":
        prior = Normal(loc, scale)
    out = RateDistortionLoss()(
        torch.randn(B, P), posterior=posterior, prior=prior, likelihood=_lik()
    )
    against = Normal(loc.double(), scale.double()) if prior is not None else Normal(0.0, 1.0)
    expected = kl_divergence(Normal(mu.double(), sigma.double()), against).sum(-1)
    assert out.rate_per_example.dtype == torch.float32
    assert_close(out.rate_per_example.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_helper_likelihood_is_computed_in_float32(dtype: torch.dtype) -> None:
    h, x = torch.randn(B, P).to(dtype), torch.randn(B, P)
    out = RateDistortionLoss()(x, posterior=_q(), likelihood=helpers.normal(h, scale=0.1))
    expected = -Independent(Normal(h.double(), 0.1), 1).log_prob(x.double())
    assert_close(out.distortion_per_example.double(), expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("family", ["Normal", "Laplace"])
def test_half_precision_torch_likelihood_is_computed_in_float32(
    dtype: torch.dtype, family: str
) -> None:
    h, x = torch.randn(B, P).to(dtype), torch.randn(B, P)
    scale = torch.full((B, P), 0.1).to(dtype)
    cls = Normal if family == "Normal" else torch.distributions.Laplace
    out = RateDistortionLoss()(x, posterior=_q(), likelihood=Independent(cls(h, scale), 1))
    expected = -Independent(cls(h.double(), scale.double()), 1).log_prob(x.double())
    assert_close(out.distortion_per_example.double(), expected, rtol=1e-5, atol=1e-5)


_INT_DTYPES = [torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool]


@pytest.mark.parametrize("dtype", _INT_DTYPES)
@pytest.mark.parametrize("family", ["bernoulli", "torch bernoulli", "normal", "laplace"])
def test_integer_x(dtype: torch.dtype, family: str) -> None:
    x = torch.randint(0, 2, (B, P))
    h = torch.randn(B, P)
    lik, reference = {
        "bernoulli": (helpers.bernoulli(logits=h), Bernoulli(logits=h)),
        "torch bernoulli": (Independent(Bernoulli(logits=h), 1), Bernoulli(logits=h)),
        "normal": (helpers.normal(h, scale=0.7), Normal(h, 0.7)),
        "laplace": (helpers.laplace(h, scale=0.7), torch.distributions.Laplace(h, 0.7)),
    }[family]
    loss_fn = RateDistortionLoss()
    if dtype == torch.bool and family in ("normal", "laplace"):
        with pytest.raises(TypeError, match=r"x has dtype torch.bool .* pass x.float\(\)"):
            loss_fn(x.to(dtype), posterior=_q(), likelihood=lik)
        return
    out = loss_fn(x.to(dtype), posterior=_q(), likelihood=lik)
    assert out.distortion_per_example.dtype == torch.float32
    assert_close(out.distortion_per_example, -reference.log_prob(x.float()).sum(-1))


@pytest.mark.parametrize(
    "x",
    [torch.full((B, P), 2), torch.full((B, P), 255, dtype=torch.uint8), torch.full((B, P), -1)],
    ids=["int 2", "uint8 255", "int -1"],
)
@pytest.mark.parametrize("style", ["logits", "probs", "torch"])
def test_integer_x_outside_bernoulli_support_raises(x: Tensor, style: str) -> None:
    h = torch.randn(B, P)
    lik = {
        "logits": helpers.bernoulli(logits=h),
        "probs": helpers.bernoulli(probs=h.sigmoid()),
        "torch": Independent(Bernoulli(logits=h, validate_args=True), 1),
    }[style]
    with pytest.raises(ValueError, match=r"x must lie in the support \{0, 1\}"):
        RateDistortionLoss()(x, posterior=_q(), likelihood=lik)


def test_float64_x_with_float32_model() -> None:
    x = torch.randn(B, P, dtype=torch.float64)
    h = torch.randn(B, P)
    out = RateDistortionLoss()(x, posterior=_q(), likelihood=helpers.normal(h, scale=0.5))
    assert out.distortion_per_example.dtype == torch.float64
    assert_close(out.distortion_per_example, -Normal(h.double(), 0.5).log_prob(x).sum(-1))
    xb = torch.randint(0, 2, (B, P)).double()
    out = RateDistortionLoss()(xb, posterior=_q(), likelihood=helpers.bernoulli(logits=h))
    assert_close(out.distortion_per_example, -Bernoulli(logits=h).log_prob(xb.float()).sum(-1))


# --- meta and zero-size tensors ----------------------------------------------------------

META = torch.device("meta")


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"kl_balance": 0.5}, {"rate_estimator": "mc"}, {"validate_args": False}],
    ids=["default", "balanced", "mc", "unvalidated"],
)
@pytest.mark.parametrize("call", ["likelihood", "decoder"])
def test_meta_tensors_give_meta_outputs(kwargs: dict[str, Any], call: str) -> None:
    x = torch.empty(B, P, device=META)
    q = helpers.normal(torch.empty(B, D, device=META), logvar=torch.empty(B, D, device=META))
    prior = Normal(torch.empty(D, device=META), torch.empty(D, device=META), validate_args=False)
    loss_fn = RateDistortionLoss(**kwargs)
    if call == "decoder":
        w = torch.empty(D, P, device=META)
        out = loss_fn(
            x, posterior=q, prior=prior, decoder=lambda z: helpers.normal(z @ w, scale=1.0)
        )
    else:
        lik = helpers.bernoulli(logits=torch.empty(B, P, device=META))
        z = torch.empty(B, D, device=META)
        out = loss_fn(x, posterior=q, prior=prior, likelihood=lik, z=z)
    assert out.loss.device == META and out.rate_per_example.shape == (B,)


def test_meta_x_with_cpu_model_is_an_error_not_a_number() -> None:
    with pytest.raises((RuntimeError, ValueError)):
        RateDistortionLoss()(torch.empty(B, P, device=META), posterior=_q(), likelihood=_lik())


@pytest.mark.parametrize("balance", [None, 0.5])
@pytest.mark.parametrize("estimator", ["analytic", "mc"])
def test_zero_size_latent_has_zero_rate(balance: float | None, estimator: str) -> None:
    q = helpers.normal(torch.zeros(B, 0), logvar=torch.zeros(B, 0))
    lik = helpers.normal(torch.zeros(B, P), scale=1.0)
    loss_fn = RateDistortionLoss(rate_estimator=estimator, kl_balance=balance)  # type: ignore[arg-type]
    out = loss_fn(torch.zeros(B, P), posterior=q, likelihood=lik, z=torch.zeros(B, 0))
    assert torch.equal(out.rate_per_example, torch.zeros(B))
    assert out.rate_per_dimension is not None and out.rate_per_dimension.shape == (B, 0)


@pytest.mark.parametrize("family", ["helper bernoulli", "torch bernoulli", "normal"])
def test_zero_size_data_has_zero_distortion(family: str) -> None:
    lik = {
        "helper bernoulli": helpers.bernoulli(logits=torch.zeros(B, 0)),
        "torch bernoulli": Independent(Bernoulli(logits=torch.zeros(B, 0)), 1),
        "normal": helpers.normal(torch.zeros(B, 0), scale=1.0),
    }[family]
    out = RateDistortionLoss()(torch.zeros(B, 0), posterior=_q(), likelihood=lik)
    assert torch.equal(out.distortion_per_example.abs(), torch.zeros(B))


def test_zero_steps_is_a_named_error() -> None:
    q = helpers.normal(torch.zeros(B, 0, D), logvar=torch.zeros(B, 0, D), event_dims=1)
    with pytest.raises(ValueError, match=r"posterior has an empty batch \(batch_shape \(4, 0\)\)"):
        RateDistortionLoss()(torch.zeros(B, P), posterior=q, likelihood=_lik())


# --- event_dims=0 and broadcasting traps -------------------------------------------------


def test_scalar_latent_event_dims_zero() -> None:
    mu, lv = torch.randn(B, dtype=torch.float64), torch.randn(B, dtype=torch.float64)
    q = helpers.normal(mu, logvar=lv, event_dims=0)
    assert q.batch_shape == (B,) and q.event_shape == ()
    x, lik = torch.randn(B, P), _lik()
    expected = kl_divergence(Normal(mu, (0.5 * lv).exp()), Normal(0.0, 1.0))
    out = RateDistortionLoss()(x, posterior=q, likelihood=lik)
    assert_close(out.rate_per_example, expected, rtol=RTOL, atol=ATOL)
    assert out.rate_per_dimension is not None and out.rate_per_dimension.shape == (B, 1)
    z = torch.randn(B, dtype=torch.float64)
    mc = RateDistortionLoss(rate_estimator="mc")(x, posterior=q, likelihood=lik, z=z)
    q_ref = Normal(mu, (0.5 * lv).exp())
    assert_close(mc.rate_per_example, q_ref.log_prob(z) - Normal(0.0, 1.0).log_prob(z))
    with pytest.raises(ValueError, match=r"z must have shape \(B, \*event\) = \(4,\)"):
        RateDistortionLoss(rate_estimator="mc")(x, posterior=q, likelihood=lik, z=z[:, None])
    with pytest.raises(ValueError, match=r"posterior's event_shape \(\)"):
        RateDistortionLoss(marginals.StandardNormal(1))(x, posterior=q, likelihood=lik)


def test_event_dims_zero_on_b_by_1_is_one_vector_latent() -> None:
    mu, lv = torch.randn(B, 1, dtype=torch.float64), torch.randn(B, 1, dtype=torch.float64)
    q0 = helpers.normal(mu, logvar=lv, event_dims=0)
    q1 = helpers.normal(mu, logvar=lv)
    x, lik = torch.randn(B, P), _lik()
    loss_fn = RateDistortionLoss(marginals.StandardNormal(1).double())
    a = loss_fn(x, posterior=q0, likelihood=lik)
    b = loss_fn(x, posterior=q1, likelihood=lik)
    assert torch.equal(a.rate_per_example, b.rate_per_example)
    with pytest.raises(ValueError, match=r"z must have shape \(B, \*event\) = \(4, 1\)"):
        RateDistortionLoss(rate_estimator="mc")(x, posterior=q0, likelihood=lik, z=mu[:, 0])


@pytest.mark.parametrize(
    "prior",
    [
        lambda: Normal(torch.zeros(1, D), torch.ones(1, D)),
        lambda: Independent(Normal(torch.zeros(1, D), torch.ones(1, D)), 1),
        lambda: Normal(torch.tensor(0.0), torch.tensor(1.0)),
        lambda: Normal(torch.zeros(B, 1), torch.ones(B, 1)),
        lambda: Normal(torch.zeros(D, 1), torch.ones(D, 1)),
    ],
    ids=["(1, D)", "Independent (1,)", "scalar", "(B, 1)", "(D, 1)"],
)
def test_prior_is_never_broadcast(prior: Any) -> None:
    with pytest.raises(ValueError, match="prior must have batch_shape"):
        RateDistortionLoss()(torch.randn(B, P), posterior=_q(), prior=prior(), likelihood=_lik())


def test_scale_of_shape_d_is_broadcast_over_the_batch_exactly() -> None:
    mu, s = torch.randn(B, D, dtype=torch.float64), torch.rand(D, dtype=torch.float64) + 0.5
    x, lik = torch.randn(B, P), _lik(dtype=torch.float64)
    a = RateDistortionLoss()(x, posterior=helpers.normal(mu, scale=s), likelihood=lik)
    b = RateDistortionLoss()(x, posterior=Normal(mu, s.expand(B, D)), likelihood=lik)
    assert_close(a.rate_per_example, b.rate_per_example, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("helper", ["normal", "laplace"])
def test_scale_that_does_not_broadcast_is_a_named_error(helper: str) -> None:
    build = helpers.normal if helper == "normal" else helpers.laplace
    with pytest.raises(ValueError, match=r"scale of shape .* must broadcast to loc's shape"):
        build(torch.zeros(B, D), scale=torch.ones(B + 1))


def test_likelihood_with_samples_against_z_without() -> None:
    z = torch.randn(B, D)
    lik = helpers.normal(torch.randn(3, B, P), scale=1.0, event_dims=1)
    with pytest.raises(ValueError, match=r"z has sample dims \(\) but the likelihood has \(3,\)"):
        RateDistortionLoss()(torch.randn(B, P), posterior=_q(), likelihood=lik, z=z)
    with pytest.raises(ValueError, match=r"z has sample dims \(3,\) but the likelihood has \(\)"):
        RateDistortionLoss()(
            torch.randn(B, P), posterior=_q(), likelihood=_lik(), z=torch.randn(3, B, D)
        )


def test_likelihood_with_samples_where_s_equals_b() -> None:
    # (S, B, P) with S == B: the sample axis must still be averaged, not taken as the batch.
    x = torch.randn(B, P, dtype=torch.float64)
    h = torch.randn(B, B, P, dtype=torch.float64)
    lik = helpers.normal(h, scale=1.0, event_dims=1)
    out = RateDistortionLoss()(x, posterior=_q(dtype=torch.float64), likelihood=lik)
    expected = -Normal(h, 1.0).log_prob(x).sum(-1).mean(0)
    assert_close(out.distortion_per_example, expected, rtol=RTOL, atol=ATOL)


# --- StandardGaussian / StandardNormal ---------------------------------------------------


@pytest.mark.parametrize("d", [1, D + 1])
@pytest.mark.parametrize("how", ["marginal", "prior"])
def test_standard_normal_of_the_wrong_size(d: int, how: str) -> None:
    loss_fn = RateDistortionLoss(marginals.StandardNormal(d) if how == "marginal" else None)
    prior = marginals.StandardNormal(d)() if how == "prior" else None
    with pytest.raises(ValueError, match=rf"{how} must .*event_shape \({D},\)"):
        loss_fn(torch.randn(B, P), posterior=_q(), prior=prior, likelihood=_lik())


@pytest.mark.parametrize("estimator", ["analytic", "mc"])
def test_standard_normal_marginal_equals_default(estimator: str) -> None:
    q, x, lik = _q(dtype=torch.float64), torch.randn(B, P), _lik()
    z = torch.randn(B, D, dtype=torch.float64)
    sn = RateDistortionLoss(marginals.StandardNormal(D).double(), rate_estimator=estimator)  # type: ignore[arg-type]
    plain = RateDistortionLoss(rate_estimator=estimator)  # type: ignore[arg-type]
    a = sn(x, posterior=q, likelihood=lik, z=z).rate_per_example
    b = plain(x, posterior=q, likelihood=lik, z=z).rate_per_example
    assert torch.equal(a, b)


def test_standard_gaussian_has_no_parameters_to_get_wrong() -> None:
    # It once took loc and scale, which the N(0, I) closed form never read.
    from rdloss.families import StandardGaussian

    prior = StandardGaussian((D,), like=torch.ones(1, dtype=torch.float64))
    assert prior.loc.dtype == torch.float64
    assert torch.equal(prior.loc, torch.zeros(D, dtype=torch.float64))
    assert torch.equal(prior.scale, torch.ones(D, dtype=torch.float64))
    q = helpers.normal(torch.randn(B, D, dtype=torch.float64), logvar=torch.randn(B, D).double())
    x = torch.randn(B, P, dtype=torch.float64)
    lik = Independent(Normal(torch.zeros(B, P, dtype=torch.float64), 1.0), 1)
    out = RateDistortionLoss()(x, posterior=q, prior=Independent(prior, 1), likelihood=lik)
    expected = kl_divergence(
        Independent(Normal(q.mean, q.stddev), 1),
        Independent(Normal(0.0, torch.ones(D, dtype=torch.float64)), 1),
    )
    assert_close(out.rate_per_example, expected, rtol=1e-12, atol=1e-12)


# --- categoricals ------------------------------------------------------------------------

_CATEGORY_TRAPS: dict[str, Any] = {
    "prior K-1": lambda ql: {
        "prior": torch.distributions.Categorical(logits=torch.randn(B, K - 1))
    },
    "shared prior K+1": lambda ql: {
        "prior": torch.distributions.Categorical(logits=torch.randn(K + 1))
    },
    "prior K=1": lambda ql: {"prior": torch.distributions.Categorical(logits=torch.randn(B, 1))},
    "marginal K-1": lambda ql: {"marginal": marginals.Categorical(K - 1)},
    "group prior K-1": lambda ql: {
        "posterior": {"a": torch.distributions.Categorical(logits=ql), "b": _q()},
        "prior": {"a": torch.distributions.Categorical(logits=torch.randn(B, K - 1))},
    },
    "group marginal K-1": lambda ql: {
        "posterior": {"a": torch.distributions.Categorical(logits=ql), "b": _q()},
        "marginal": {"a": marginals.Categorical(K - 1)},
    },
    "Independent prior K-1": lambda ql: {
        "posterior": Independent(torch.distributions.Categorical(logits=torch.randn(B, 2, K)), 1),
        "prior": Independent(torch.distributions.Categorical(logits=torch.randn(B, 2, K - 1)), 1),
    },
    "one-hot prior K-1": lambda ql: {
        "posterior": torch.distributions.OneHotCategorical(logits=ql),
        "prior": torch.distributions.OneHotCategorical(logits=torch.randn(B, K - 1)),
    },
    "one-hot posterior, index marginal": lambda ql: {
        "posterior": torch.distributions.OneHotCategorical(logits=ql),
        "marginal": marginals.Categorical(K),
    },
    "index posterior, one-hot marginal": lambda ql: {
        "marginal": marginals.Categorical(K, one_hot=True)
    },
    "balanced prior K-1": lambda ql: {
        "prior": torch.distributions.Categorical(logits=torch.randn(B, K - 1)),
        "kl_balance": 0.5,
    },
    "mc prior K+2": lambda ql: {
        "prior": torch.distributions.Categorical(logits=torch.randn(K + 2)),
        "rate_estimator": "mc",
        "z": torch.zeros(B, dtype=torch.long),
    },
}


@pytest.mark.parametrize("name", list(_CATEGORY_TRAPS))
def test_categories_never_broadcast(name: str) -> None:
    ql = torch.randn(B, K)
    kwargs = {"posterior": torch.distributions.Categorical(logits=ql), **_CATEGORY_TRAPS[name](ql)}
    init = {k: kwargs.pop(k) for k in ("marginal", "kl_balance", "rate_estimator") if k in kwargs}
    with pytest.raises(ValueError, match=r"categories but the posterior has|event_shape"):
        RateDistortionLoss(**init)(torch.randn(B, P), likelihood=_lik(), **kwargs)


@pytest.mark.parametrize("prior_shape", [(B, 2), ()], ids=["per step", "shared"])
@pytest.mark.parametrize("balance", [None, 0.8])
def test_dreamer_latents_per_step(prior_shape: tuple[int, ...], balance: float | None) -> None:
    # DreamerV3: (B, T, 32, 32) logits; 32 one-hot variables of 32 classes per step.
    t, n = 2, 32
    ql = torch.randn(B, t, n, n, dtype=torch.float64)
    pl = torch.randn(*prior_shape, n, n, dtype=torch.float64)
    post = Independent(torch.distributions.OneHotCategoricalStraightThrough(logits=ql), 1)
    prior = Independent(torch.distributions.OneHotCategorical(logits=pl), 1)
    x = torch.randn(B, t, P, dtype=torch.float64)
    lik = helpers.normal(torch.randn(B, t, P, dtype=torch.float64), scale=1.0)
    out = RateDistortionLoss(kl_balance=balance)(x, posterior=post, prior=prior, likelihood=lik)
    expected = kl_divergence(
        torch.distributions.OneHotCategorical(logits=ql),
        torch.distributions.OneHotCategorical(logits=pl),
    ).sum(-1)
    assert out.rate_per_step is not None
    assert_close(out.rate_per_step["z"], expected, rtol=1e-12, atol=1e-12)
    assert_close(out.rate_per_example, expected.sum(-1), rtol=1e-12, atol=1e-12)


def test_dreamer_prior_without_its_step_axis() -> None:
    post = Independent(torch.distributions.OneHotCategorical(logits=torch.randn(B, 2, 8, 8)), 1)
    prior = Independent(torch.distributions.OneHotCategorical(logits=torch.randn(B, 8, 8)), 1)
    with pytest.raises(ValueError, match="the step axis differs: posterior T = 2, prior none"):
        RateDistortionLoss()(torch.randn(B, P), posterior=post, prior=prior, likelihood=_lik())


# --- KL balancing of every rebuildable family --------------------------------------------


def _tril(a: Tensor) -> Tensor:
    return torch.tril(a, -1) + torch.diag_embed(a.diagonal(dim1=-2, dim2=-1).exp())


def _leaf(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64).requires_grad_()


# name -> (build(q params, p params) -> (posterior, prior, z), q shapes, p shapes, exact)
_FAMILIES: dict[str, Any] = {
    "Normal": (
        lambda q, p: (Normal(q[0], q[1].exp()), Normal(p[0], p[1].exp()), None),
        [(B, D), (B, D)],
        [(B, D), (B, D)],
        True,
    ),
    "helpers.normal": (
        lambda q, p: (
            helpers.normal(q[0], logvar=q[1]),
            helpers.normal(p[0], log_scale=p[1]),
            None,
        ),
        [(B, D), (B, D)],
        [(B, D), (B, D)],
        True,
    ),
    "Laplace": (
        lambda q, p: (
            torch.distributions.Laplace(q[0], q[1].exp()),
            torch.distributions.Laplace(p[0], p[1].exp()),
            None,
        ),
        [(B, D), (B, D)],
        [(B, D), (B, D)],
        True,
    ),
    "MultivariateNormal": (
        lambda q, p: (
            torch.distributions.MultivariateNormal(q[0], scale_tril=_tril(q[1])),
            torch.distributions.MultivariateNormal(
                p[0], covariance_matrix=_tril(p[1]) @ _tril(p[1]).mT
            ),
            None,
        ),
        [(B, D), (B, D, D)],
        [(B, D), (B, D, D)],
        True,
    ),
    "Categorical logits": (
        lambda q, p: (
            torch.distributions.Categorical(logits=q[0]),
            torch.distributions.Categorical(logits=p[0]),
            None,
        ),
        [(B, K)],
        [(B, K)],
        False,
    ),
    "Categorical probs": (
        lambda q, p: (
            torch.distributions.Categorical(probs=q[0].softmax(-1)),
            torch.distributions.Categorical(probs=p[0].softmax(-1)),
            None,
        ),
        [(B, K)],
        [(B, K)],
        False,
    ),
    "OneHotCategoricalStraightThrough": (
        lambda q, p: (
            Independent(torch.distributions.OneHotCategoricalStraightThrough(logits=q[0]), 1),
            Independent(torch.distributions.OneHotCategorical(logits=p[0]), 1),
            None,
        ),
        [(B, 2, 3, K)],
        [(B, 2, 3, K)],
        False,
    ),
    "MixtureSameFamily prior (mc)": (
        lambda q, p: (
            Normal(q[0], q[1].exp()),
            torch.distributions.MixtureSameFamily(
                torch.distributions.Categorical(logits=p[0]),
                Independent(Normal(p[1], p[2].exp()), 1),
            ),
            q[0] + q[1].exp() * 0.5,
        ),
        [(B, D), (B, D)],
        [(K,), (K, D), (K, D)],
        False,  # the mixture weights' Categorical is normalised again
    ),
    "DiagonalGaussianMixture prior (mc)": (
        lambda q, p: (
            Normal(q[0], q[1].exp()),
            __import__("rdloss.distributions").distributions.DiagonalGaussianMixture(
                p[0], p[1], p[2].exp()
            ),
            q[0] - q[1].exp() * 0.5,
        ),
        [(B, D), (B, D)],
        [(K,), (K, D), (K, D)],
        True,
    ),
}


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.3])
@pytest.mark.parametrize("family", list(_FAMILIES))
def test_kl_balancing_of_each_family(family: str, alpha: float) -> None:
    build, q_shapes, p_shapes, exact = _FAMILIES[family]
    q_params = [_leaf(*s) for s in q_shapes]
    p_params = [_leaf(*s) for s in p_shapes]
    params = q_params + p_params
    x, lik = torch.randn(B, P, dtype=torch.float64), _lik(dtype=torch.float64)

    def rate(balance: float | None) -> tuple[Tensor, list[Tensor]]:
        posterior, prior, z = build(q_params, p_params)
        loss_fn = RateDistortionLoss(kl_balance=balance)
        out = loss_fn(x, posterior=posterior, prior=prior, likelihood=lik, z=z)
        return out.rate_per_example, _grads(out.rate_per_example.sum(), params)

    plain, grads = rate(None)
    balanced, split = rate(alpha)
    # The value is the KL's: to the bit where the stop-gradient rebuild is exact.
    if exact:
        assert torch.equal(balanced, plain)
    else:
        assert_close(balanced, plain, rtol=1e-14, atol=1e-14)
    n = len(q_params)
    for i, (mine, full) in enumerate(zip(split, grads, strict=True)):
        share = (1 - alpha) if i < n else alpha
        if share == 0:
            assert torch.equal(mine, torch.zeros_like(mine))  # sg really detaches
        else:
            assert_close(mine, share * full, rtol=1e-10, atol=1e-12)


def test_kl_balancing_keeps_an_infinite_kl_infinite() -> None:
    qp = torch.tensor([0.5, 0.5, 0.0]).expand(B, 3)
    pp = torch.tensor([0.5, 0.0, 0.5]).expand(B, 3)

    def rate(balance: float | None) -> Tensor:
        loss_fn = RateDistortionLoss(kl_balance=balance, validate_args=False)
        post, prior = (
            torch.distributions.Categorical(probs=qp),
            torch.distributions.Categorical(probs=pp),
        )
        return loss_fn(
            torch.randn(B, P), posterior=post, prior=prior, likelihood=_lik()
        ).rate_per_example

    assert torch.equal(rate(None), torch.full((B,), float("inf")))
    assert torch.equal(rate(0.5), rate(None))


def test_kl_balancing_keeps_an_infinite_kl_infinite_after_expand() -> None:
    # torch's expand keeps logits as the parameter once they were read: the stop-gradient
    # copy must still hold the exact zero of the probabilities.
    prior = torch.distributions.Categorical(probs=torch.tensor([0.5, 0.5, 0.0, 0.0]))
    prior.logits  # noqa: B018 (read, as a KL or a log_prob would)
    prior = prior.expand((B,))
    post = torch.distributions.Categorical(probs=torch.tensor([0.25] * 4).expand(B, 4))
    loss_fn = RateDistortionLoss(kl_balance=0.5, validate_args=False)
    out = loss_fn(torch.randn(B, P), posterior=post, prior=prior, likelihood=_lik())
    assert torch.equal(out.rate_per_example, torch.full((B,), float("inf")))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
@pytest.mark.parametrize("built_from", ["logits", "probs"])
def test_kl_balancing_leaves_the_categorical_kl_value_unchanged(
    dtype: torch.dtype, built_from: str
) -> None:
    # DreamerV3's 32x32 one-hot latents: balancing changes the gradient, never the value,
    # in every dtype (the stop-gradient copies hold the very logits and probs).
    g = torch.Generator().manual_seed(0)
    logits_q, logits_p = torch.randn(2, B, 32, 32, generator=g, dtype=dtype).unbind(0)

    def dist(logits: Tensor) -> Distribution:
        kw = (
            {"logits": logits}
            if built_from == "logits"
            else {"probs": logits.float().softmax(-1).to(dtype)}
        )
        return Independent(torch.distributions.OneHotCategorical(**kw, validate_args=False), 1)

    def rate(balance: float | None) -> Tensor:
        loss_fn = RateDistortionLoss(kl_balance=balance, validate_args=False)
        x = torch.randn(B, P)
        return loss_fn(
            x, posterior=dist(logits_q), prior=dist(logits_p), likelihood=_lik()
        ).rate_per_example

    assert torch.equal(rate(0.8), rate(None))


def test_a_masked_category_gives_finite_gradients() -> None:
    # A categorical posterior with a -inf logit (an impossible, masked category): the KL
    # term of that category is 0 in value and must be 0 in gradient too, not 0 * -inf.
    logits = torch.randn(B, 5, dtype=F64)
    logits[:, 2] = -math.inf
    logits.requires_grad_()
    prior_logits = torch.randn(B, 5, dtype=F64, requires_grad=True)
    post = torch.distributions.Categorical(logits=logits)
    prior = torch.distributions.Categorical(logits=prior_logits)
    out = RateDistortionLoss()(
        torch.randn(B, P, dtype=F64), posterior=post, prior=prior, likelihood=_lik(dtype=F64)
    )
    out.rate.backward()
    assert logits.grad is not None and prior_logits.grad is not None
    assert torch.isfinite(logits.grad).all() and torch.isfinite(prior_logits.grad).all()
    # The same KL over the four possible categories, written out.
    keep = [0, 1, 3, 4]
    lq, lp = logits.detach()[:, keep], prior_logits.detach()
    lq = lq - lq.logsumexp(-1, keepdim=True)
    lp = lp.log_softmax(-1)[:, keep]
    want = (lq.exp() * (lq - lp)).sum(-1)
    assert_close(out.rate_per_example.detach(), want, rtol=1e-12, atol=1e-12)


# --- host synchronisations ---------------------------------------------------------------


@pytest.fixture
def torch_validation_on() -> Any:
    """torch.distributions' global default as most users have it: on."""
    before = Distribution._validate_args
    Distribution.set_default_validate_args(True)
    yield
    Distribution.set_default_validate_args(before)


def _syncs(fn: Any) -> int:
    from benchmarks._counting import count

    fn()  # warm torch's KL memo
    return count(fn).n_syncs


def _sync_case(family: str, validate: bool) -> Any:
    """A loss call with distributions built without torch's own (syncing) checks."""
    nv: dict[str, Any] = {"validate_args": False}
    cat = torch.distributions
    if family == "helpers.normal":
        flag = None if validate else False
        post = helpers.normal(torch.randn(B, D), logvar=torch.randn(B, D), validate_args=flag)
        prior: Any = helpers.normal(
            torch.randn(B, D), log_scale=torch.randn(B, D), validate_args=flag
        )
        z = None
    elif family == "steps":
        post = helpers.normal(torch.randn(B, 2, D), logvar=torch.randn(B, 2, D), event_dims=1)
        prior = Independent(Normal(torch.zeros(B, 2, D), torch.ones(B, 2, D), **nv), 1, **nv)
        z = None
    elif family == "MultivariateNormal":
        post = cat.MultivariateNormal(
            torch.randn(B, D), scale_tril=torch.eye(D).expand(B, D, D), **nv
        )
        prior = cat.MultivariateNormal(
            torch.zeros(B, D), scale_tril=torch.eye(D).expand(B, D, D), **nv
        )
        z = None
    elif family == "Categorical probs":
        post = cat.Categorical(probs=torch.rand(B, K).softmax(-1), **nv)
        prior = cat.Categorical(probs=torch.rand(B, K).softmax(-1), **nv)
        z = None
    elif family == "DiagonalGaussianMixture (mc)":
        from rdloss.distributions import DiagonalGaussianMixture

        post = Normal(torch.randn(B, D), torch.ones(B, D), **nv)
        prior = DiagonalGaussianMixture(torch.zeros(K), torch.randn(K, D), torch.ones(K, D), **nv)
        z = torch.randn(B, D)
    elif family == "half helper":
        post = helpers.normal(torch.randn(B, D).half(), logvar=torch.randn(B, D).half())
        prior, z = None, None
    else:
        assert family == "Independent(OneHotCategoricalStraightThrough)"
        post = Independent(
            cat.OneHotCategoricalStraightThrough(logits=torch.randn(B, 2, 4, K), **nv), 1, **nv
        )
        prior = Independent(cat.OneHotCategorical(logits=torch.randn(B, 2, 4, K), **nv), 1, **nv)
        z = None
    lik = helpers.bernoulli(logits=torch.randn(B, P), validate_args=None if validate else False)
    x = torch.randint(0, 2, (B, P)).float()
    return lambda loss_fn: loss_fn(x, posterior=post, prior=prior, likelihood=lik, z=z)


_SYNC_FAMILIES = [
    "helpers.normal",
    "steps",
    "MultivariateNormal",
    "Categorical probs",
    "DiagonalGaussianMixture (mc)",
    "half helper",
]
# torch's OneHotCategorical.__init__ checks its inner Categorical whatever validate_args
# says (a host sync of the user's own construction), so the cases are built before counting.
_ONE_HOT = "Independent(OneHotCategoricalStraightThrough)"


@pytest.mark.usefixtures("torch_validation_on")
@pytest.mark.parametrize("balance", [None, 0.3])
@pytest.mark.parametrize("family", [*_SYNC_FAMILIES, _ONE_HOT])
def test_host_syncs(family: str, balance: float | None) -> None:
    off = RateDistortionLoss(kl_balance=balance, validate_args=False)
    on = RateDistortionLoss(kl_balance=balance)
    unchecked, checked = _sync_case(family, False), _sync_case(family, True)
    assert _syncs(lambda: unchecked(off)) == 0
    assert _syncs(lambda: checked(on)) <= 1


# --- torch.compile -----------------------------------------------------------------------


def _compile_marginal(name: str) -> Any:
    return {
        "default": lambda: None,
        "StandardNormal": lambda: marginals.StandardNormal(D),
        "DiagonalGaussian": lambda: marginals.DiagonalGaussian(D),
        "GaussianMixture": lambda: marginals.GaussianMixture(D, 4),
        "fixed Normal": lambda: Independent(
            Normal(torch.zeros(D), 2 * torch.ones(D), validate_args=False), 1, validate_args=False
        ),
    }[name]()


@pytest.fixture
def cold_kl_memo() -> Any:
    from torch.distributions.kl import _KL_MEMOIZE

    saved = dict(_KL_MEMOIZE)
    _KL_MEMOIZE.clear()  # what torch.distributions.register_kl does
    yield
    _KL_MEMOIZE.clear()
    _KL_MEMOIZE.update(saved)


def _compiled_frames(loss_fn: RateDistortionLoss, make_args: Any, step: Any) -> int:
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    for i in range(3):
        args = make_args(i)
        torch.manual_seed(i)
        got = compiled(*args)
        torch.manual_seed(i)
        assert_close(got, step(*args))
    return int(counter.frame_count)


@pytest.mark.usefixtures("cold_kl_memo")
@pytest.mark.parametrize("balance", [None, 0.3])
@pytest.mark.parametrize(
    "marginal", ["default", "StandardNormal", "DiagonalGaussian", "GaussianMixture", "fixed Normal"]
)
def test_compiles_once_on_a_cold_kl_memo(marginal: str, balance: float | None) -> None:
    loss_fn = RateDistortionLoss(_compile_marginal(marginal), kl_balance=balance)
    w = torch.randn(D, P)

    def step(x: Tensor, mu: Tensor, lv: Tensor) -> Tensor:
        out = loss_fn(
            x,
            posterior=helpers.normal(mu, logvar=lv),
            decoder=lambda z: helpers.bernoulli(logits=z @ w),
        )
        return torch.stack([out.loss, *out.rate_per_example])

    def make_args(i: int) -> tuple[Tensor, ...]:
        gen = torch.Generator().manual_seed(i)
        x = torch.randint(0, 2, (B, P), generator=gen).float()
        return x, torch.randn(B, D, generator=gen), torch.randn(B, D, generator=gen)

    assert _compiled_frames(loss_fn, make_args, step) == 1


@pytest.mark.usefixtures("cold_kl_memo")
@pytest.mark.parametrize("balance", [None, 0.8])
def test_dreamer_latents_compile_once_on_a_cold_kl_memo(balance: float | None) -> None:
    loss_fn = RateDistortionLoss(kl_balance=balance)
    cat = torch.distributions
    w = torch.randn(4 * K, P)

    def step(x: Tensor, ql: Tensor, pl: Tensor) -> Tensor:
        post = Independent(cat.OneHotCategoricalStraightThrough(logits=ql, validate_args=False), 1)
        prior = Independent(cat.OneHotCategorical(logits=pl, validate_args=False), 1)
        z = post.rsample()
        lik = helpers.normal(z.flatten(2) @ w, scale=1.0, event_dims=2)
        return loss_fn(x, posterior=post, prior=prior, likelihood=lik, z=z).loss

    def make_args(i: int) -> tuple[Tensor, ...]:
        gen = torch.Generator().manual_seed(i)
        shape = (B, 2, 4, K)
        return (
            torch.randn(B, 2, P, generator=gen),
            torch.randn(shape, generator=gen),
            torch.randn(shape, generator=gen),
        )

    assert _compiled_frames(loss_fn, make_args, step) == 1


# --- torch.func, state_dict, module dtypes, a NaN batch ---------------------------------


def test_func_grad_in_eval_mode_equals_autograd() -> None:
    loss_fn = RateDistortionLoss(marginals.DiagonalGaussian(D).double()).eval()
    x = torch.randn(B, P, dtype=torch.float64)
    w = torch.randn(D, P, dtype=torch.float64)

    def loss(mu: Tensor, lv: Tensor) -> Tensor:
        q = helpers.normal(mu, logvar=lv)
        out: Tensor = loss_fn(x, posterior=q, likelihood=helpers.normal(mu @ w, scale=1.0)).loss
        return out

    mu, lv = torch.randn(B, D, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64)
    functional = torch.func.grad(loss, argnums=(0, 1))(mu, lv)
    leaves = mu.clone().requires_grad_(), lv.clone().requires_grad_()
    eager = torch.autograd.grad(loss(*leaves), leaves)
    for a, b in zip(functional, eager, strict=True):
        assert_close(a, b, rtol=RTOL, atol=ATOL)
    batched = torch.func.vmap(lambda m: loss(m, lv))(torch.stack([mu, 2 * mu]))
    assert_close(batched, torch.stack([loss(mu, lv), loss(2 * mu, lv)]), rtol=RTOL, atol=ATOL)


_SETTINGS = [
    {"kl_balance": 0.3, "rate_estimator": "mc"},
    {"kl_balance": None, "rate_estimator": "auto"},
    {"kl_balance": 1.0, "rate_estimator": "analytic"},
]


@pytest.mark.parametrize("saved", range(len(_SETTINGS)))
@pytest.mark.parametrize("loaded", range(len(_SETTINGS)))
def test_state_dict_round_trip_and_mismatch(saved: int, loaded: int) -> None:
    import io

    source = RateDistortionLoss(marginals.DiagonalGaussian(D), **_SETTINGS[saved])
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    target = RateDistortionLoss(marginals.DiagonalGaussian(D), **_SETTINGS[loaded])
    if saved == loaded:
        target.load_state_dict(state)
        assert_close(target.state_dict(), source.state_dict())
    else:
        with pytest.raises(ValueError, match=r"RateDistortionLoss was saved with \w+="):
            target.load_state_dict(state)


@pytest.mark.parametrize("convert", ["double", "half"])
def test_module_dtype_conversion(convert: str) -> None:
    loss_fn = getattr(RateDistortionLoss(marginals.DiagonalGaussian(D), kl_balance=0.3), convert)()
    marginal = loss_fn.marginal
    with torch.no_grad():
        marginal.loc.copy_(torch.randn(D))
        marginal.raw_scale.copy_(torch.randn(D))
    dtype = torch.float64 if convert == "double" else torch.float32
    mu, lv = torch.randn(B, D, dtype=dtype), torch.randn(B, D, dtype=dtype)
    x = torch.randn(B, P, dtype=dtype)
    out = loss_fn(x, posterior=helpers.normal(mu, logvar=lv), likelihood=_lik(dtype=dtype))
    assert out.rate_per_example.dtype == dtype and out.loss.dtype == dtype
    m = Normal(marginal.loc.double(), F.softplus(marginal.raw_scale).double())
    expected = kl_divergence(Normal(mu.double(), (0.5 * lv.double()).exp()), m).sum(-1)
    tol = 1e-12 if convert == "double" else 1e-5
    assert_close(out.rate_per_example.double(), expected, rtol=tol, atol=tol)
    # the settings survive the conversion and load back into a float32 loss
    fresh = RateDistortionLoss(marginals.DiagonalGaussian(D), kl_balance=0.3)
    fresh.load_state_dict(loss_fn.state_dict())
    assert fresh.marginal.loc.dtype == torch.float32


@pytest.mark.parametrize(
    "objective",
    [
        lambda: Beta(1.0),
        lambda: __import__("rdloss.objectives").objectives.GECO(5.0),
        lambda: __import__("rdloss.objectives").objectives.RateController(2.0),
        lambda: __import__("rdloss.objectives").objectives.FreeBits(0.5),
    ],
    ids=["Beta", "GECO", "RateController", "FreeBits"],
)
@pytest.mark.parametrize("bad", ["posterior", "x", "likelihood", "weight"])
def test_a_nan_batch_then_a_good_one(objective: Any, bad: str) -> None:
    loss_fn = RateDistortionLoss(marginals.DiagonalGaussian(D), objective())
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    mu, x, h = torch.randn(B, D), torch.randn(B, P), torch.randn(B, P)
    weight = torch.ones(B)
    nan = float("nan")
    if bad == "posterior":
        mu[1, 0] = nan
    elif bad == "x":
        x[2, 3] = nan
    elif bad == "likelihood":
        h[0, 0] = nan
    else:
        weight[0] = nan
    q = helpers.normal(mu, logvar=torch.zeros(B, D))
    with pytest.raises(ValueError, match=r"NaN|non-finite|weight"):
        loss_fn(x, posterior=q, likelihood=helpers.normal(h, scale=1.0), weight=weight)
    after = loss_fn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a failed call moved state"
    good = loss_fn(torch.randn(B, P), posterior=_q(), likelihood=_lik(), weight=torch.ones(B))
    assert torch.isfinite(good.loss)
    good.loss.backward()
