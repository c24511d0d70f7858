"""The rate module: the Gaussian fast path against independent formulas, and the bugs of
issue 20 that lived in the old core (each reproduced before the fix)."""

from __future__ import annotations

import ast
import pathlib

import pytest
import torch
from torch.distributions import (
    Categorical,
    Independent,
    Normal,
    TransformedDistribution,
    kl_divergence,
)
from torch.distributions.transforms import AffineTransform
from torch.testing import assert_close

import rdloss
from rdloss import functional as F
from rdloss import helpers, marginals

F64 = torch.float64
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _vdvae_kl(mu1: torch.Tensor, mu2: torch.Tensor, ls1: torch.Tensor, ls2: torch.Tensor):
    # openai/vdvae, vae_helpers.py, gaussian_analytical_kl (written from the formula).
    return -0.5 + ls2 - ls1 + 0.5 * (ls1.exp() ** 2 + (mu1 - mu2) ** 2) / (ls2.exp() ** 2)


def _pair(seed: int = 0, shape: tuple[int, ...] = (5, 7)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=F64) for _ in range(4)]


def test_gaussian_fast_path_equals_vdvae_and_torch_in_float64() -> None:
    mu1, mu2, lv1, lv2 = _pair()
    q = helpers.normal(mu1, logvar=lv1)
    p = helpers.normal(mu2, logvar=lv2)
    got = F.rate(q, prior=p)
    reference = _vdvae_kl(mu1, mu2, 0.5 * lv1, 0.5 * lv2)
    assert_close(got.per_dimension, reference, rtol=1e-14, atol=1e-14)
    torch_kl = kl_divergence(
        Independent(Normal(mu1, (0.5 * lv1).exp()), 1),
        Independent(Normal(mu2, (0.5 * lv2).exp()), 1),
    )
    assert_close(got.per_example, torch_kl, rtol=1e-14, atol=1e-14)


def test_standard_normal_fast_path_equals_closed_form_and_is_nonnegative() -> None:
    mu, _, lv, _ = _pair(1)
    got = F.rate(helpers.normal(mu, logvar=lv)).per_dimension
    assert_close(got, 0.5 * (mu**2 + lv.exp() - 1 - lv), rtol=1e-14, atol=1e-14)
    # At the collapsed point the expm1 form stays >= 0 to the last bit, in float32 too.
    tiny = torch.linspace(-1e-6, 1e-6, 1001)
    q = helpers.normal(torch.zeros(1001, 1), logvar=tiny.reshape(-1, 1))
    assert bool((F.rate(q).per_example >= 0).all())


@pytest.mark.parametrize("against", ["standard", "gaussian", "plain"])
def test_fast_path_gradients_pass_gradcheck(against: str) -> None:
    mu1, mu2, lv1, lv2 = (t.requires_grad_() for t in _pair(2, (3, 2)))

    def rate(a, b, c, d):
        q = helpers.normal(a, logvar=c)
        if against == "standard":
            return F.rate(q).per_example
        if against == "gaussian":
            return F.rate(q, prior=helpers.normal(b, logvar=d)).per_example
        return F.rate(q, prior=Independent(Normal(b, (0.5 * d).exp()), 1)).per_example

    assert torch.autograd.gradcheck(rate, (mu1, mu2, lv1, lv2))


def test_monte_carlo_agrees_with_fast_path() -> None:
    torch.manual_seed(0)
    mu1, mu2, lv1, lv2 = _pair(3, (2, 3))
    q = helpers.normal(mu1, logvar=lv1)
    p = helpers.normal(mu2, logvar=lv2)
    z = q.sample((200_000,))
    mc = F.rate(q, prior=p, z=z, estimator="mc").per_example
    assert_close(mc, F.rate(q, prior=p).per_example, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("event_dims", [0, 1])
def test_logvar_check_survives_the_loss_rewrapping(event_dims: int) -> None:
    # Before: the helper's deferred check was an attribute of the object the loss re-wrapped
    # in Independent, so it was lost: a finite rate with infinite gradients, checks on.
    loc = torch.zeros(2, 3, 4)
    q = helpers.normal(loc, logvar=torch.full((2, 3, 4), -200.0), event_dims=event_dims)
    x = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"logvar must lie in"):
        rdloss.RateDistortionLoss()(x, posterior=q, likelihood=helpers.bernoulli(logits=x))


@pytest.mark.parametrize("k_marginal", [1, 3])
def test_categorical_marginal_over_other_categories_is_refused(k_marginal: int) -> None:
    # Before: K' = 1 gave a negative rate silently, K' = 3 a deep broadcast error.
    q = Categorical(logits=torch.randn(4, 5))
    loss = rdloss.RateDistortionLoss(marginals.Categorical(k_marginal))
    x = torch.zeros(4, 2)
    with pytest.raises(
        ValueError, match=rf"marginal has {k_marginal} categories but the posterior has 5"
    ):
        loss(x, posterior=q, likelihood=helpers.bernoulli(logits=x))
    with pytest.raises(ValueError, match=r"prior has 2 categories"):
        F.rate(q, prior=Categorical(logits=torch.zeros(2)))


def test_bernoulli_probs_outside_unit_interval_are_refused() -> None:
    x = torch.ones(3, 4)
    q = helpers.normal(torch.zeros(3, 2), logvar=torch.zeros(3, 2))
    likelihood = helpers.bernoulli(probs=torch.full((3, 4), 1.5))  # a decoder without sigmoid
    with pytest.raises(ValueError, match=r"probs must lie in \[0, 1\]"):
        rdloss.RateDistortionLoss()(x, posterior=q, likelihood=likelihood)
    off = rdloss.RateDistortionLoss(validate_args=False)
    off(x, posterior=q, likelihood=helpers.bernoulli(probs=torch.full((3, 4), 0.5)))


def test_clear_errors_where_torch_failed_deep() -> None:
    q = helpers.normal(torch.zeros(3, 2), logvar=torch.zeros(3, 2))
    x = torch.ones(3, 4, dtype=torch.bool)
    with pytest.raises(TypeError, match=r"x has dtype torch.bool but the likelihood is a"):
        rdloss.RateDistortionLoss()(x, posterior=q, likelihood=Normal(torch.zeros(3, 4), 1.0))
    with pytest.raises(ValueError, match=r"scale must be finite in loc's dtype torch.float32"):
        helpers.normal(torch.zeros(3, 2), scale=1e39)
    with pytest.raises(ValueError, match=r"groups must be a non-empty tuple"):
        F.rate_terms((), grouped=False)


def test_flow_posterior_with_an_explicit_standard_normal() -> None:
    # Before: told to pass StandardNormal(latent_dim), which it had.
    base = Independent(Normal(torch.zeros(4, 2), torch.ones(4, 2)), 1)
    q = TransformedDistribution(base, [AffineTransform(1.0, 2.0)])  # a flow-like posterior
    z = q.rsample()
    out = F.rate(q, marginals.StandardNormal(2)(), z=z)
    assert out.estimator == "mc" and out.per_example.shape == (4,)


def test_loss_records_its_settings_in_state_dict() -> None:
    saved = rdloss.RateDistortionLoss(kl_balance=0.8).state_dict()
    with pytest.raises(
        ValueError, match=r"saved with kl_balance=0.8 but this one has kl_balance=0.5"
    ):
        rdloss.RateDistortionLoss(kl_balance=0.5).load_state_dict(saved)
    rdloss.RateDistortionLoss(kl_balance=0.8).load_state_dict(saved)


def _imports() -> dict[str, set[str]]:
    modules = {}
    for path in (ROOT / "rdloss").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    deps.add(full if full in modules else base)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        edges[name] = {d for d in deps if d in modules and d != name}
    return edges


def test_the_import_graph_has_no_cycles() -> None:
    edges = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_log_scale_equals_logvar_twice() -> None:
    mu, _, ls, _ = _pair(4)
    a = F.rate(helpers.normal(mu, log_scale=ls)).per_example
    b = F.rate(helpers.normal(mu, logvar=2 * ls)).per_example
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"give exactly one of scale=, logvar= or log_scale="):
        helpers.normal(mu, logvar=ls, log_scale=ls)


def test_log_scale_pair_equals_vdvae_and_torch_in_float64() -> None:
    # Both sides hold log sigma (VDVAE's layer KL): the gap of log-variances is taken as
    # 2 (ls_p - ls_q); against VDVAE's formula and torch.distributions on exp(ls).
    mu1, mu2, ls1, ls2 = _pair(5)
    got = F.rate(helpers.normal(mu1, log_scale=ls1), prior=helpers.normal(mu2, log_scale=ls2))
    assert_close(got.per_dimension, _vdvae_kl(mu1, mu2, ls1, ls2), rtol=1e-14, atol=1e-14)
    torch_kl = kl_divergence(
        Independent(Normal(mu1, ls1.exp()), 1), Independent(Normal(mu2, ls2.exp()), 1)
    )
    assert_close(got.per_example, torch_kl, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("sides", ["both", "posterior", "prior"])
@pytest.mark.parametrize("balance", [None, 0.8])
def test_log_scale_is_bit_identical_to_logvar_twice(
    dtype: torch.dtype, sides: str, balance: float | None
) -> None:
    # Doubling is exact, so 2 (a - b) has the bits of 2a - 2b and exp(ls) those of
    # exp(0.5 * 2 ls): a side built from log_scale gives the same rate and gradients, to
    # the bit, as one built from logvar = 2 * log_scale, alone or mixed with the other.
    def run(as_log_scale: set[str]) -> tuple[torch.Tensor, ...]:
        leaves = [t.to(dtype).requires_grad_() for t in _pair(6, (4, 3, 5))]
        mu1, mu2, ls1, ls2 = leaves

        def side(name: str, mu: torch.Tensor, ls: torch.Tensor) -> torch.distributions.Distribution:
            if name in as_log_scale:
                return helpers.normal(mu, log_scale=ls)
            return helpers.normal(mu, logvar=2 * ls)

        loss_fn = rdloss.RateDistortionLoss(kl_balance=balance)
        out = loss_fn(posterior=side("posterior", mu1, ls1), prior=side("prior", mu2, ls2))
        out.loss.backward()
        grads = [t.grad for t in leaves]
        assert all(g is not None for g in grads)
        return (out.rate_per_example, out.rate_per_dimension, *grads)  # type: ignore[return-value]

    chosen = {"posterior", "prior"} if sides == "both" else {sides}
    for got, want in zip(run(chosen), run(set()), strict=True):
        assert got is not None and want is not None
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_log_scale_fast_path_passes_gradcheck() -> None:
    mu1, mu2, ls1, ls2 = (t.requires_grad_() for t in _pair(7, (3, 2)))

    def rate(a, b, c, d):
        q = helpers.normal(a, log_scale=c)
        return F.rate(q, prior=helpers.normal(b, log_scale=d)).per_example

    assert torch.autograd.gradcheck(rate, (mu1, mu2, ls1, ls2))


def test_log_scale_gaussian_reads_its_log_variance_and_scale() -> None:
    mu, _, ls, _ = _pair(8)
    q = helpers.normal(mu, log_scale=ls).base_dist
    assert torch.equal(q.logvar, 2 * ls) and torch.equal(q.scale, ls.exp())
    assert q.log_scale is ls
    expanded = q.expand(torch.Size([2, *ls.shape]))
    assert torch.equal(expanded.log_scale, ls.expand(2, *ls.shape))
    with pytest.raises(ValueError, match="logvar or log_scale, not both"):
        type(q)(mu, logvar=ls, log_scale=ls)


@pytest.mark.slow  # compiles
def test_dreamer_style_one_hot_latents_compile_on_a_cold_kl_memo() -> None:
    # torch looks a KL pair up with Python dynamo cannot trace until its memo is warm; the
    # families rdloss serves (here Independent(OneHotCategoricalStraightThrough), DreamerV3)
    # are computed by rdloss itself, so a first compiled call needs no eager call before.
    from torch.distributions import OneHotCategoricalStraightThrough as OneHot
    from torch.distributions.kl import _KL_MEMOIZE

    loss = rdloss.RateDistortionLoss(kl_balance=0.8, validate_args=False)

    def step(q_logits, p_logits, logits, x):
        q = Independent(OneHot(logits=q_logits), 1)
        p = Independent(OneHot(logits=p_logits), 1)
        likelihood = helpers.bernoulli(logits=logits, validate_args=False)
        return loss(x, posterior=q, prior=p, likelihood=likelihood).loss

    saved = dict(_KL_MEMOIZE)
    _KL_MEMOIZE.clear()  # what any register_kl does
    try:
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        x = torch.randint(0, 2, (4, 6)).float()
        for seed in range(2):
            g = torch.Generator().manual_seed(seed)
            args = [torch.randn(4, 5, 8, 8, generator=g) for _ in range(2)]
            logits = torch.randn(4, 6, generator=g)
            assert_close(compiled(*args, logits, x), step(*args, logits, x))
    finally:
        _KL_MEMOIZE.clear()
        _KL_MEMOIZE.update(saved)


def test_independent_one_hot_kl_equals_torch_to_the_bit() -> None:
    from torch.distributions import OneHotCategorical

    g = torch.Generator().manual_seed(5)
    q_logits, p_logits = (torch.randn(3, 4, 6, 6, generator=g, dtype=F64) for _ in range(2))
    q = Independent(OneHotCategorical(logits=q_logits), 1)
    p = Independent(OneHotCategorical(logits=p_logits), 1)
    got = F.rate(q, prior=p).per_step
    assert got is not None
    assert torch.equal(got, kl_divergence(q, p))


def test_a_wrapper_that_holds_a_distribution_is_named() -> None:
    # DreamerV3 (a PyTorch port) wraps its continuous latent as ContDist(dist) in ``_dist``.
    class ContDist:
        def __init__(self, dist: object) -> None:
            self._dist = dist

    q = ContDist(helpers.normal(torch.zeros(2, 3), logvar=torch.zeros(2, 3)))
    x = torch.zeros(2, 4)
    with pytest.raises(TypeError, match=r"got ContDist; it holds one as \._dist: pass that"):
        rdloss.RateDistortionLoss()(x, posterior=q, likelihood=helpers.bernoulli(logits=x))
