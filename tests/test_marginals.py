from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from _builders import EXACT, B, D, _gen, _q, _x
from _catalogue import Entry, expect_named_error
from torch import Tensor, nn
from torch.distributions import Categorical as TorchCategorical
from torch.distributions import (
    Distribution,
    Independent,
    Laplace,
    MixtureSameFamily,
    Normal,
    OneHotCategorical,
    kl_divergence,
)
from torch.testing import assert_close

import rdloss
from rdloss import RateDistortionLoss, helpers, marginals, objectives, schedules
from rdloss.distributions import DiagonalGaussianMixture
from rdloss.marginals import (
    Categorical,
    DiagonalGaussian,
    GaussianMixture,
    Marginal,
    StandardNormal,
    VampPrior,
)

zuko = pytest.importorskip("zuko")

F64 = torch.float64


class Encoder(nn.Module):
    """A small VAE encoder returning ``Independent(Normal)`` (or another family)."""

    def __init__(self, n_in: int, latent_dim: int, *, family: str = "normal", bn: bool = False):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(n_in, 16)]
        if bn:
            layers.append(nn.BatchNorm1d(16))
        layers += [nn.Tanh(), nn.Linear(16, 2 * latent_dim)]
        self.net = nn.Sequential(*layers)
        self.family = family

    def forward(self, x: torch.Tensor) -> Distribution:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        if self.family == "laplace":
            return Independent(Laplace(mu, (0.5 * logvar).exp()), 1)
        if self.family == "raw":
            return Normal(mu, (0.5 * logvar).exp())
        return helpers.normal(mu, logvar=logvar)


def _vamp(d: int) -> VampPrior:
    return VampPrior(Encoder(5, d), torch.randn(6, 5))


FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "standard_normal": StandardNormal,
    "diagonal_gaussian": DiagonalGaussian,
    "gaussian_mixture": lambda d: GaussianMixture(d, n_components=5),
    "vamp_prior": _vamp,
    "categorical": lambda d: Categorical(7),
    "zuko_maf": lambda d: zuko.flows.MAF(features=d, hidden_features=(16,)),
}
NAMES = list(FACTORIES)


def _build(name: str, d: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    module = FACTORIES[name](d)
    with torch.no_grad():  # move learned parameters off their symmetric initial values
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def _points(name: str, shape: tuple[int, ...], d: int) -> torch.Tensor:
    if name == "categorical":
        return torch.randint(0, 7, shape)
    return torch.randn(*shape, d)


def _event(name: str, d: int) -> tuple[int, ...]:
    return () if name == "categorical" else (d,)


@pytest.mark.parametrize("name", NAMES)
def test_contract_shapes(name):
    d = 3
    module = _build(name, d)
    dist = module()
    assert isinstance(dist, Distribution)
    assert dist.batch_shape == ()
    assert dist.event_shape == _event(name, d)
    assert dist.log_prob(_points(name, (5,), d)).shape == (5,)
    assert dist.log_prob(_points(name, (2, 5), d)).shape == (2, 5)
    assert dist.sample((4, 2)).shape == (4, 2, *_event(name, d))
    if isinstance(module, Marginal):
        assert module.log_prob(_points(name, (5,), d)).shape == (5,)
        assert module.sample((4,)).shape == (4, *_event(name, d))


@pytest.mark.parametrize("name", NAMES)
def test_contract_gradients_reach_every_parameter(name):
    module = _build(name, 3)
    params = dict(module.named_parameters())
    if name == "standard_normal":
        assert params == {}
        return
    assert params
    torch.manual_seed(1)
    (-module().log_prob(_points(name, (32,), 3)).mean()).backward()
    for pname, p in params.items():
        assert p.grad is not None, pname
        assert p.grad.abs().sum() > 0, pname


def _trapezoid_mass(module: nn.Module, d: int, half_width: float, n: int) -> float:
    axis = torch.linspace(-half_width, half_width, n, dtype=F64)
    grid = torch.stack(torch.meshgrid(*[axis] * d, indexing="ij"), dim=-1)
    with torch.no_grad():
        density = module.to(F64)().log_prob(grid.reshape(-1, d)).exp().reshape(grid.shape[:-1])
    for _ in range(d):
        density = torch.trapezoid(density, axis, dim=0)
    return float(density)


# Trapezoid on [-10, 10] (1-D, 2001 points) and [-8, 8]^2 (2-D, 321^2 points): the tails
# outside hold far less than 1e-6 and the rule's own error is below 1e-4 for these
# densities, so |mass - 1| < 2e-3 (1-D) / 5e-3 (2-D) leaves room only for a wrong density.
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("d", "half_width", "n", "tol"), [(1, 10.0, 2001, 2e-3), (2, 8.0, 321, 5e-3)]
)
def test_contract_density_integrates_to_one(name, d, half_width, n, tol):
    module = _build(name, d)
    if name == "categorical":
        with torch.no_grad():
            total = module().log_prob(torch.arange(7)).exp().sum()
        assert_close(total, torch.tensor(1.0), atol=1e-6, rtol=0)
        return
    assert abs(_trapezoid_mass(module, d, half_width, n) - 1.0) < tol


@pytest.mark.parametrize("name", NAMES)
def test_contract_state_dict_round_trip(name):
    source, target = _build(name, 3, seed=0), _build(name, 3, seed=1)
    z = _points(name, (8,), 3)
    with torch.no_grad():
        assert not torch.allclose(source().log_prob(z), target().log_prob(z)) or name == (
            "standard_normal"
        )
        target.load_state_dict(source.state_dict())
        assert_close(target().log_prob(z), source().log_prob(z))


@pytest.mark.parametrize("name", NAMES)
def test_contract_to_float64(name):
    module = _build(name, 3)
    z = _points(name, (8,), 3)
    with torch.no_grad():
        single = module().log_prob(z)
        double = module.to(F64)().log_prob(z if name == "categorical" else z.double())
    assert double.dtype == F64
    assert_close(double.float(), single, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_contract_repr(name):
    text = repr(_build(name, 3))
    assert type(_build(name, 3)).__name__ in text
    if name in ("gaussian_mixture", "vamp_prior"):
        assert "n_components=" in text
    if name == "categorical":
        assert "n_categories=7" in text


# --- GaussianMixture -------------------------------------------------------------------


def test_gaussian_mixture_equals_mixture_same_family_with_gradients():
    m = _build("gaussian_mixture", 4).to(F64)
    z = torch.randn(10, 4, dtype=F64, requires_grad=True)
    ours = m().log_prob(z)
    ref_dist = MixtureSameFamily(
        TorchCategorical(logits=m.logits), Independent(Normal(m.loc, m.scale), 1)
    )
    ref = ref_dist.log_prob(z)
    assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    inputs = [z, *m.parameters()]
    for got, want in zip(
        torch.autograd.grad(ours.sum(), inputs), torch.autograd.grad(ref.sum(), inputs), strict=True
    ):
        assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_gaussian_mixture_initialisation_is_close_to_standard_normal():
    torch.manual_seed(0)
    m = GaussianMixture(16, n_components=400)
    assert_close(m().mean, torch.zeros(16), atol=0.1, rtol=0)
    assert_close(m().variance, torch.ones(16), atol=0.15, rtol=0)
    assert_close(m.scale, torch.full((400, 16), math.sqrt(0.5)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"latent_dim": 0}, ValueError, "latent_dim"),
        ({"latent_dim": 2.0}, TypeError, "latent_dim"),
        ({"latent_dim": 2, "n_components": 0}, ValueError, "n_components"),
        ({"latent_dim": 2, "n_components": True}, TypeError, "n_components"),
    ],
)
def test_gaussian_mixture_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        GaussianMixture(**kwargs)


# --- VampPrior -------------------------------------------------------------------------


def _brute_force_vamp(prior: VampPrior, z: torch.Tensor, *, per_dimension: bool = False):
    """log sum_k w_k e(z|u_k) from the encoder's (mu, sigma), one component at a time."""
    mu, logvar = prior.encoder.net(prior.pseudo_inputs).chunk(2, dim=-1)
    sigma = (0.5 * logvar).exp()
    log_w = prior.logits.log_softmax(-1)
    if per_dimension:  # the bug: log-sum-exp per latent dimension, then the sum
        per_dim = [
            torch.logsumexp(
                torch.stack(
                    [
                        log_w[k] + Normal(mu[k, j], sigma[k, j]).log_prob(z[:, j])
                        for k in range(len(mu))
                    ]
                ),
                0,
            )
            for j in range(z.shape[1])
        ]
        return torch.stack(per_dim, -1).sum(-1)
    terms = []
    for k in range(len(mu)):
        quad = (((z - mu[k]) / sigma[k]) ** 2).sum(-1)
        log_norm = -torch.log(sigma[k]).sum() - 0.5 * z.shape[1] * math.log(2 * math.pi)
        terms.append(log_w[k] + log_norm - 0.5 * quad)
    return torch.logsumexp(torch.stack(terms), 0)


def test_vamp_prior_equals_joint_log_sum_exp_with_gradients():
    torch.manual_seed(0)
    prior = VampPrior(Encoder(5, 3), torch.randn(8, 5)).to(F64)
    with torch.no_grad():
        prior.logits.copy_(torch.randn(8, dtype=F64))
    z = torch.randn(6, 3, dtype=F64, requires_grad=True)
    assert isinstance(prior(), DiagonalGaussianMixture)
    ours, brute = prior.log_prob(z), _brute_force_vamp(prior, z)
    assert_close(ours, brute, rtol=1e-12, atol=1e-12)
    # Regression: the per-dimension log-sum-exp is a different (wrong) number.
    assert (ours - _brute_force_vamp(prior, z, per_dimension=True)).abs().min() > 1e-3
    inputs = [z, *prior.parameters()]
    assert len(inputs) == 1 + 2 + 4  # pseudo-inputs, logits, two Linear layers
    for got, want in zip(
        torch.autograd.grad(ours.sum(), inputs),
        torch.autograd.grad(brute.sum(), inputs),
        strict=True,
    ):
        assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", ["laplace", "raw"])
def test_vamp_prior_any_encoder_family(family):
    torch.manual_seed(0)
    encoder = Encoder(5, 3, family=family).double()
    prior = VampPrior(encoder, torch.randn(4, 5, dtype=F64))
    z = torch.randn(7, 3, dtype=F64)
    components = encoder(prior.pseudo_inputs)
    if family == "raw":  # batch (K, D): the D dims become the event
        components = Independent(components, 1)
    joint = components.log_prob(z.unsqueeze(1)) + prior.logits.log_softmax(-1)
    assert_close(prior.log_prob(z), joint.logsumexp(-1))
    assert isinstance(
        prior(), MixtureSameFamily if family == "laplace" else DiagonalGaussianMixture
    )


def test_vamp_prior_uniform_weights_option():
    prior = VampPrior(Encoder(5, 3), torch.randn(4, 5), learn_weights=False)
    assert "logits" not in dict(prior.named_parameters())
    assert "logits" not in prior.state_dict()
    assert_close(prior().mixture_distribution.probs, torch.full((4,), 0.25))
    assert "learn_weights=False" in repr(prior)


def test_vamp_prior_copies_pseudo_inputs_and_accepts_a_plain_callable():
    data = torch.randn(4, 5)
    encoder = Encoder(5, 3)
    prior = VampPrior(lambda u: encoder(u), data)
    with torch.no_grad():
        prior.pseudo_inputs.add_(1.0)
    assert not torch.equal(prior.pseudo_inputs, data)
    assert prior.log_prob(torch.zeros(2, 3)).shape == (2,)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_vamp_prior_batch_norm_uses_current_mode_without_updating_running_stats(mode):
    torch.manual_seed(0)
    encoder = Encoder(5, 3, bn=True).double()
    encoder(torch.randn(32, 5, dtype=F64) + 2.0)  # give the running statistics some value
    getattr(encoder, mode)()
    prior = VampPrior(encoder, torch.randn(6, 5, dtype=F64))
    z = torch.randn(4, 3, dtype=F64)
    before = copy.deepcopy(encoder.state_dict())
    reference = copy.deepcopy(encoder)  # a plain call, same mode
    joint = reference(prior.pseudo_inputs).log_prob(z.unsqueeze(1)) + prior.logits.log_softmax(-1)
    assert_close(prior.log_prob(z), joint.logsumexp(-1))
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key
    if mode == "train":  # the plain call did update its copy's running statistics
        assert not torch.equal(reference.net[1].running_mean, before["net.1.running_mean"])


def test_vamp_prior_errors_name_the_argument():
    with pytest.raises(TypeError, match="encoder"):
        VampPrior(3, torch.randn(4, 5))
    with pytest.raises(TypeError, match="pseudo_inputs"):
        VampPrior(Encoder(5, 3), torch.zeros(4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="pseudo_inputs"):
        VampPrior(Encoder(5, 3), torch.zeros(0, 5))
    with pytest.raises(TypeError, match="learn_weights"):
        VampPrior(Encoder(5, 3), torch.zeros(4, 5), learn_weights=1)
    with pytest.raises(TypeError, match="Distribution"):
        VampPrior(nn.Linear(5, 3), torch.zeros(4, 5))()
    with pytest.raises(ValueError, match="batch_shape"):
        VampPrior(lambda u: Normal(torch.zeros(3), 1.0), torch.zeros(4, 5))()


# --- Categorical -----------------------------------------------------------------------


def test_categorical_marginal_and_one_hot():
    m = _build("categorical", 1)
    assert_close(m().probs, m.probs)
    assert isinstance(Categorical(4, one_hot=True)(), OneHotCategorical)
    with pytest.raises(TypeError, match="one_hot"):
        Categorical(4, one_hot=1)
    with pytest.raises(ValueError, match="n_categories"):
        Categorical(0)


@pytest.mark.parametrize("one_hot", [False, True])
def test_categorical_rate_is_exact_with_enumeration(one_hot):
    torch.manual_seed(0)
    k, b = 5, 3
    marginal = Categorical(k, one_hot=one_hot)
    with torch.no_grad():
        marginal.logits.copy_(torch.randn(k))
    logits = torch.randn(b, k)
    posterior = (OneHotCategorical if one_hot else TorchCategorical)(logits=logits)
    table = nn.Parameter(torch.randn(k, 2))

    def decoder(z):
        index = z.argmax(-1) if one_hot else z
        return Independent(Normal(table[index], 1.0), 1)

    x = torch.randn(b, 2)
    out = RateDistortionLoss(marginal)(x, posterior=posterior, decoder=decoder, samples="enumerate")
    q, m = logits.softmax(-1), marginal.probs
    assert_close(out.rate_per_example, (q * (q.log() - m.log())).sum(-1))
    assert out.estimator == "analytic"
    out.loss.backward()
    assert marginal.logits.grad.abs().sum() > 0


# --- with the loss ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gaussian_mixture", "vamp_prior"])
def test_loss_reports_monte_carlo_rate_for_mixtures(name):
    torch.manual_seed(0)
    marginal = _build(name, 3).to(F64)
    posterior = Independent(
        Normal(torch.randn(4, 3, dtype=F64), 0.5 + torch.rand(4, 3, dtype=F64)), 1
    )
    x = torch.randint(0, 2, (4, 6)).double()
    net = nn.Linear(3, 6).double()
    loss_fn = RateDistortionLoss(marginal)
    out = loss_fn(x, posterior=posterior, decoder=lambda z: helpers.bernoulli(logits=net(z)))
    assert out.estimator == "mc"
    # With the likelihood given, the rate is log e(z|x) - log m(z) at the same z.
    z = posterior.rsample()
    out = loss_fn(x, posterior=posterior, likelihood=helpers.bernoulli(logits=net(z)), z=z)
    assert out.estimator == "mc"
    assert_close(out.rate_per_example, posterior.log_prob(z) - marginal().log_prob(z))
    out.loss.backward()
    for pname, p in marginal.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_zuko_flow_as_marginal_end_to_end():
    torch.manual_seed(0)
    d = 3
    flow = zuko.flows.MAF(features=d, hidden_features=(16,))
    loss_fn = RateDistortionLoss(flow)
    assert any(p is next(iter(flow.parameters())) for p in loss_fn.parameters())
    encoder, decoder_net = nn.Linear(6, 2 * d), nn.Linear(d, 6)
    x = torch.randint(0, 2, (8, 6)).float()
    mu, logvar = encoder(x).chunk(2, -1)
    out = loss_fn(
        x,
        posterior=helpers.normal(mu, logvar=logvar),
        decoder=lambda z: helpers.bernoulli(logits=decoder_net(z)),
        samples=2,
    )
    assert out.estimator == "mc" and torch.isfinite(out.loss)
    out.loss.backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert encoder.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["gaussian_mixture", "vamp_prior"])
def test_mixture_marginals_compile_fullgraph(name):
    marginal = _build(name, 3)
    z = torch.randn(5, 3)
    compiled = torch.compile(lambda t: marginal().log_prob(t), fullgraph=True, backend="aot_eager")
    assert_close(compiled(z), marginal.log_prob(z))


def test_kl_against_standard_normal_still_analytic():
    posterior = Independent(Normal(torch.zeros(2, 3), torch.ones(2, 3)), 1)
    kl_divergence(posterior, StandardNormal(3)())  # registered by torch


def test_loss_with_gaussian_mixture_compiles_fullgraph():
    torch.manual_seed(0)
    loss_fn = RateDistortionLoss(GaussianMixture(3, n_components=10))
    net = nn.Linear(3, 6)
    x = torch.randint(0, 2, (8, 6)).float()

    def step(x, mu):
        posterior = helpers.normal(mu, logvar=torch.zeros_like(mu))
        return loss_fn(x, posterior=posterior, decoder=lambda z: helpers.bernoulli(logits=net(z)))

    mu = torch.randn(8, 3)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    got = compiled(x, mu)
    torch.manual_seed(1)
    want = step(x, mu)
    assert got.estimator == "mc"
    assert_close(got.loss, want.loss)


# --- checkpoints, compile, torch.func ------------------------------------------------------


def _mapped_loss(objective: Any = None) -> rdloss.RateDistortionLoss:
    fixed = Independent(Normal(torch.zeros(2, dtype=torch.float64), 2.0), 1)
    return rdloss.RateDistortionLoss(
        marginal={"a": marginals.DiagonalGaussian(D).double(), "b": fixed}, objective=objective
    )


def test_state_dict_round_trip_of_a_marginal_mapping() -> None:
    src = _mapped_loss(objectives.FreeBits(schedules.Linear(0.0, 1.0, steps=10), per="group"))
    with torch.no_grad():
        src.marginal["a"].loc.copy_(torch.tensor([0.1, -0.2, 0.3]))  # type: ignore[index]
    post = {"a": _q(B, D, seed=1), "b": _q(B, 2, seed=2), "c": _q(B, 1, seed=3)}
    x, lik = _x()
    for _ in range(3):
        src(x, posterior=post, likelihood=lik)
    dst = _mapped_loss(objectives.FreeBits(schedules.Linear(0.0, 1.0, steps=10), per="group"))
    dst.load_state_dict(src.state_dict())
    a = src(x, posterior=post, likelihood=lik)
    b = dst(x, posterior=post, likelihood=lik)
    assert torch.equal(a.loss, b.loss)
    assert a.rate_per_group is not None and b.rate_per_group is not None
    for k in post:
        assert torch.equal(a.rate_per_group[k], b.rate_per_group[k])
    assert int(dst.objective.step) == 4


def test_state_dict_of_a_mapping_does_not_load_into_a_loss_without_it() -> None:
    state = _mapped_loss().state_dict()
    with pytest.raises(RuntimeError, match=r"marginal\.a\.loc"):
        rdloss.RateDistortionLoss().load_state_dict(state)


def test_state_dict_of_a_mapping_does_not_load_into_other_group_names() -> None:
    state = _mapped_loss().state_dict()
    other = rdloss.RateDistortionLoss(marginal={"z1": marginals.DiagonalGaussian(D)})
    with pytest.raises(RuntimeError, match="Missing key"):
        other.load_state_dict(state)


def test_state_dict_of_an_unmapped_learned_marginal_into_a_mapping_is_refused() -> None:
    state = rdloss.RateDistortionLoss(marginal=marginals.DiagonalGaussian(D)).state_dict()
    with pytest.raises(RuntimeError):
        _mapped_loss().load_state_dict(state)


def test_fixed_group_marginals_stay_put_under_to() -> None:
    # documented: a Distribution marginal is not moved by .to(); the learned one is
    loss = _mapped_loss().float()
    assert loss.marginal["a"].loc.dtype == torch.float32  # type: ignore[index]
    dist = loss.marginal_distribution(_q(B, 2), group="b")
    assert dist.mean.dtype == torch.float64


def test_marginal_distribution_per_group() -> None:
    loss = _mapped_loss()
    got = loss.marginal_distribution(_q(B, 2), group="b")
    assert_close(got.stddev, torch.full((2,), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="name the group"):
        loss.marginal_distribution(_q(B, 2))


@pytest.mark.slow
def test_compile_fullgraph_steps_groups_free_bits_and_balance_compile_once() -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    loss = rdloss.RateDistortionLoss(
        objective=objectives.FreeBits(1.0, per="step", reduction="example", beta=0.6),
        kl_balance=0.5 / 0.6,
    )

    def step(mu: Tensor, pm: Tensor, x: Tensor) -> Tensor:
        post = {"s": Independent(Normal(mu, 1.0), 1), "t": Independent(Normal(mu[:, :2], 1.0), 1)}
        prior = {"s": Independent(Normal(pm, 1.0), 1)}
        out = loss(x, posterior=post, prior=prior, likelihood=Normal(x * 0, 1.0))
        return out.loss

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter, fullgraph=True)
    g = _gen(0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            mu = torch.randn(B, 3, 2, generator=g, requires_grad=True)
            pm = torch.randn(B, 3, 2, generator=g)
            x = torch.zeros(B, 2)
            got = compiled(mu, pm, x)
            assert_close(got, step(mu, pm, x))
    assert counter.frame_count == 1


def test_torch_func_grad_and_vmap_in_eval_mode_over_groups() -> None:
    from torch.func import grad, vmap

    loss = rdloss.RateDistortionLoss(objective=objectives.FreeBits(0.3, per="group")).eval()
    x, lik = _x()
    lp = torch.full((B, D), 0.1, dtype=torch.float64)

    def fn(mu: Tensor) -> Tensor:
        post = {"a": Independent(Normal(mu, 1.0), 1), "b": Independent(Normal(2 * mu, 1.0), 1)}
        prior = {"a": Independent(Normal(lp, 1.0), 1)}
        return loss(x, posterior=post, prior=prior, likelihood=lik).loss

    mu = torch.randn(B, D, generator=_gen(1), dtype=torch.float64)
    # reference: plain autograd on the same function
    leaf = mu.clone().requires_grad_()
    (ref,) = torch.autograd.grad(fn(leaf), [leaf])
    assert_close(grad(fn)(mu), ref, **EXACT)
    batch = torch.randn(5, B, D, generator=_gen(2), dtype=torch.float64)
    assert_close(vmap(fn)(batch), torch.stack([fn(m) for m in batch]), **EXACT)


def test_torch_func_in_train_mode_refuses_clearly() -> None:
    from torch.func import grad

    loss = rdloss.RateDistortionLoss(objective=objectives.FreeBits(0.3, per="group"))
    x, lik = _x()

    def fn(mu: Tensor) -> Tensor:
        post = {"a": Independent(Normal(mu, 1.0), 1)}
        return loss(x, posterior=post, likelihood=lik).loss

    with pytest.raises(RuntimeError, match="eval"):
        grad(fn)(torch.zeros(B, D, dtype=torch.float64))


def test_deepcopy_and_torch_save_keep_every_group_marginal() -> None:
    import copy

    loss = _mapped_loss()
    buffer = io.BytesIO()
    torch.save(loss, buffer)
    buffer.seek(0)
    restored = [copy.deepcopy(loss), torch.load(buffer, weights_only=False)]
    post = {"a": _q(B, D, seed=1), "b": _q(B, 2, seed=2)}
    x, lik = _x()
    ref = loss(x, posterior=post, likelihood=lik)
    for other in restored:
        out = other(x, posterior=post, likelihood=lik)
        assert out.rate_per_group is not None and ref.rate_per_group is not None
        for k in post:
            assert torch.equal(out.rate_per_group[k], ref.rate_per_group[k])


def test_repr_names_every_group_marginal() -> None:
    assert "'b'" in repr(_mapped_loss()) or "(b)" in repr(_mapped_loss())


# --- bad inputs: marginals ----------------------------------------------------------------
# The catalogue's part for this module (tests/_catalogue.py); docs/errors.md lists its keys.


def _encoder(u: torch.Tensor) -> torch.distributions.Distribution:
    return helpers.normal(u, scale=1.0)


BAD_INPUTS: dict[str, Entry] = {
    "marginal latent_dim zero": (
        lambda: marginals.StandardNormal(0),
        ValueError,
        r"latent_dim must be >= 1, got 0",
    ),
    "marginal: fractional latent_dim": (
        lambda: marginals.DiagonalGaussian(2.5),  # type: ignore[arg-type]
        TypeError,
        r"latent_dim must be an int, got float",
    ),
    "marginal: zero mixture components": (
        lambda: marginals.GaussianMixture(2, n_components=0),
        ValueError,
        r"n_components must be >= 1, got 0",
    ),
    "marginal: categorical one_hot given as 1": (
        lambda: marginals.Categorical(3, one_hot=1),  # type: ignore[arg-type]
        TypeError,
        r"one_hot must be a bool, got int",
    ),
    "marginal: log_prob of a z with one column": (
        lambda: marginals.StandardNormal(3).log_prob(torch.zeros(4, 1)),
        ValueError,
        r"z must have shape \(\.\.\., \*event_shape\) = \(\.\.\., 3\) for this marginal, "
        r"got \(4, 1\)",
    ),
    "marginal: mixture log_prob of a list": (
        lambda: marginals.GaussianMixture(3, 5).log_prob([0.0, 0.0, 0.0]),  # type: ignore[arg-type]
        TypeError,
        r"z must be a torch.Tensor, got list",
    ),
    "marginal: sample shape given as an int": (
        lambda: marginals.StandardNormal(3).sample(16),  # type: ignore[arg-type]
        TypeError,
        r"shape must be a tuple of non-negative ints or a torch.Size .*got 16",
    ),
    "marginal: VampPrior encoder that is not callable": (
        lambda: marginals.VampPrior("encoder", torch.zeros(5, D)),  # type: ignore[arg-type]
        TypeError,
        r"encoder must be an nn.Module or a callable returning a Distribution, got str",
    ),
    "marginal: VampPrior integer pseudo-inputs": (
        lambda: marginals.VampPrior(_encoder, torch.zeros(5, D, dtype=torch.long)),
        TypeError,
        r"pseudo_inputs must be a floating-point tensor .*got dtype torch.int64",
    ),
    "marginal: VampPrior without pseudo-inputs": (
        lambda: marginals.VampPrior(_encoder, torch.zeros(0, D)),
        ValueError,
        r"pseudo_inputs has an empty batch \(shape \(0, 3\)\)",
    ),
    "marginal: VampPrior encoder returning a tensor": (
        lambda: marginals.VampPrior(lambda u: u, torch.zeros(5, D))(),  # type: ignore[arg-type, return-value]
        TypeError,
        r"encoder\(pseudo_inputs\) must be a torch.distributions.Distribution, got Parameter",
    ),
    "marginal: VampPrior encoder that drops pseudo-inputs": (
        lambda: marginals.VampPrior(lambda u: _encoder(u[:2]), torch.zeros(5, D))(),
        ValueError,
        r"encoder\(pseudo_inputs\) must have batch_shape \(K,\) = \(5,\), got \(2,\)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_named_error(case: str) -> None:
    expect_named_error(BAD_INPUTS[case])
