"""Property-based tests (hypothesis) of rdloss' invariants.

Every property runs with ``@settings(max_examples=200, deadline=None, derandomize=True)``:
200 examples each, the same examples on every run, so a failure reproduces exactly.
Hypothesis draws the shapes, the regime (e.g. the share of parameters near the collapsed
point ``loc = logvar = 0``, where a KL is a difference of nearly equal numbers) and a seed;
a seeded ``torch.Generator`` draws the tensor values (drawing each float through hypothesis
costs ~25 ms per example per hundred values).

Properties (one test function each; 10 properties, 2000 examples in all):

1. ``rate >= 0`` for exact KLs: `rdloss.functional.rate` with ``estimator="analytic"`` of
   diagonal-Gaussian posteriors (``Independent(Normal)`` from `rdloss.helpers.normal`, and a
   plain ``Normal`` with batch ``(B, D)``) against the default ``N(0, I)`` (a) and against a
   `rdloss.marginals.DiagonalGaussian` (b), and of a ``Categorical`` posterior against a
   `rdloss.marginals.Categorical` marginal (c); loc in ``[-1e3, 1e3]``, log-variances in
   ``[-30, 30]``, logits in ``[-50, 50]``, float64. Each value also equals an independent
   closed form written out here.
2. Analytic = Monte Carlo (d): the ``"mc"`` rate over 4096 posterior samples (drawn with a
   ``torch.Generator`` seeded from the hypothesis data) agrees with the analytic rate within
   6 standard errors of the sample mean, for ``N(0, I)``, ``DiagonalGaussian`` and
   ``Categorical`` marginals, float64.
3. Fast mixture = reference mixture: `rdloss.distributions.DiagonalGaussianMixture` equals
   ``MixtureSameFamily(Categorical, Independent(Normal))`` in value and gradients in
   float64 (e), within the documented ``1e-4`` relative in float32 (f), and the
   `rdloss.marginals.GaussianMixture` marginal's ``log_prob`` equals it too (g).
4. Streaming metric = full pass (h): `RateDistortion`, `MutualInformationBounds`,
   `ActiveUnits` (lazily sized and pre-sized), `RatePerDimension` and `MutualInformation`
   give the same ``compute()`` for a dataset fed in chunks at hypothesis-chosen cut points,
   in one update, and from `rdloss.diagnostics.functional`.
5. Schedules: every schedule's value lies in ``[min(start, end), max(start, end)]`` at any
   step (including far beyond ``steps``), is monotone where it should be, hits its end
   points exactly (i), and an objective's ``state_dict`` round trip mid-run reproduces the
   same subsequent values bit for bit (j).

Tolerances: KLs ``>= -1e-12`` (float64 rounding of O(1) terms) and equal to the written-out
closed forms within ``rtol=1e-9``; mixtures ``rtol=1e-10, atol=1e-9`` in float64 (gradients
``1e-8``) and ``rtol=1e-4, atol=1e-3`` in float32; metrics ``1e-9`` in float64, active-unit
variances ``rtol=1e-7`` against ``torch.var`` (``1e-4`` with float32 states).

Plain tests next to the properties: a dense grid around the collapsed point in float32 and
float64 (``rate >= 0``), and ``test_per_unit_metrics_keep_shape``, the regression test of a
bug this file found (torchmetrics squeezed per-unit metric results to 0-dim for D = 1).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as tnf
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal
from torchmetrics import Metric

from rdloss import functional as F
from rdloss import helpers, marginals
from rdloss.diagnostics import (
    ActiveUnits,
    MutualInformation,
    MutualInformationBounds,
    RateDistortion,
    RatePerDimension,
)
from rdloss.diagnostics import functional as dfn
from rdloss.distributions import DiagonalGaussianMixture
from rdloss.objectives import Beta
from rdloss.schedules import Constant, Cosine, Cyclical, Linear, Schedule, Sigmoid

pytestmark = pytest.mark.usefixtures("one_thread")


PROPERTY = settings(max_examples=200, deadline=None, derandomize=True)
F64 = torch.float64

# A KL is a sum of terms of size O(1) when it is near zero; float64 rounding then leaves at
# most a few ulps of them, far below this slack.
NEGATIVE_SLACK = 1e-12


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def _close(actual: Tensor, expected: Tensor, *, rtol: float, atol: float) -> None:
    """``torch.testing.assert_close`` behind a cheap first check (it costs ms per call)."""
    if not actual.is_floating_point():
        assert torch.equal(actual, expected), (actual, expected)
        return
    if actual.shape == expected.shape and actual.dtype == expected.dtype:
        gap = (actual - expected).abs()
        if bool((gap <= atol + rtol * expected.abs()).all()):
            return
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def _uniform(
    gen: torch.Generator, shape: tuple[int, ...], low: float, high: float, near: float = 0.0
) -> Tensor:
    """Uniform values in ``[low, high]``; a share ``near`` of them within 1e-4 of 0, a few 0.

    Drawing every float through hypothesis costs ~25 ms per example for a hundred values,
    so hypothesis picks the seed, the shapes and the regime, and torch draws the values.
    """
    u = torch.rand(shape, generator=gen, dtype=F64)
    wide = low + (high - low) * u
    small = 1e-4 * (2 * u - 1)
    pick = torch.rand(shape, generator=gen, dtype=F64)
    values = torch.where(pick < near, small, wide)
    return torch.where(pick < 0.05 * near, torch.zeros_like(values), values)


NEAR = st.sampled_from([0.0, 0.5, 1.0])
SEED = st.integers(0, 2**32 - 1)


def _diagonal_gaussian(loc: Tensor, logvar: Tensor) -> marginals.DiagonalGaussian:
    """A float64 `DiagonalGaussian` marginal with the given mean and log-variance."""
    m = marginals.DiagonalGaussian(loc.shape[0]).to(F64)
    scale = torch.exp(0.5 * logvar)
    with torch.no_grad():
        m.loc.copy_(loc)
        # softplus^{-1}(s) = s + log(-expm1(-s)), stable for tiny and huge s.
        m.raw_scale.copy_(scale + torch.log(-torch.expm1(-scale)))
    return m


def _gauss_kl(mu: Tensor, logvar: Tensor, m_mu: Tensor, m_logvar: Tensor) -> Tensor:
    """Independent closed form KL(N(mu, e^lv) || N(m_mu, e^m_lv)) per dimension."""
    return 0.5 * (
        (logvar - m_logvar).exp() + (mu - m_mu).square() / m_logvar.exp() - 1 + m_logvar - logvar
    )


@PROPERTY
@given(seed=SEED, near=NEAR, batch=st.integers(1, 4), dim=st.integers(1, 8), plain=st.booleans())
def test_rate_nonnegative_standard_normal(
    seed: int, near: float, batch: int, dim: int, plain: bool
) -> None:
    """(a) KL(e || N(0, I)) >= 0 and equals the closed form, per example and per dimension."""
    gen = torch.Generator().manual_seed(seed)
    mu = _uniform(gen, (batch, dim), -1e3, 1e3, near)
    logvar = _uniform(gen, (batch, dim), -30.0, 30.0, near)
    q = Normal(mu, torch.exp(0.5 * logvar)) if plain else helpers.normal(mu, logvar=logvar)
    out = F.rate(q, estimator="analytic")
    assert out.estimator == "analytic"
    assert out.per_dimension is not None
    assert bool((out.per_example >= -NEGATIVE_SLACK).all()), out.per_example
    assert bool((out.per_dimension >= -NEGATIVE_SLACK).all()), out.per_dimension
    zero = torch.zeros_like(mu)
    _close(out.per_dimension, _gauss_kl(mu, logvar, zero, zero), rtol=1e-9, atol=1e-12)


@PROPERTY
@given(seed=SEED, near=NEAR, batch=st.integers(1, 4), dim=st.integers(1, 6), plain=st.booleans())
def test_rate_nonnegative_diagonal_gaussian(
    seed: int, near: float, batch: int, dim: int, plain: bool
) -> None:
    """(b) KL(e || DiagonalGaussian) >= 0 and equals the closed form."""
    gen = torch.Generator().manual_seed(seed)
    mu = _uniform(gen, (batch, dim), -1e3, 1e3, near)
    logvar = _uniform(gen, (batch, dim), -30.0, 30.0, near)
    m_mu = _uniform(gen, (dim,), -1e3, 1e3, near)
    m_logvar = _uniform(gen, (dim,), -30.0, 30.0, near)
    q = Normal(mu, torch.exp(0.5 * logvar)) if plain else helpers.normal(mu, logvar=logvar)
    marginal = _diagonal_gaussian(m_mu, m_logvar)
    with torch.no_grad():
        out = F.rate(q, marginal(), estimator="analytic")
        # The marginal's scale went through softplus: use its actual log-variance.
        actual_m_logvar = 2 * marginal().base_dist.scale.log()
    assert out.per_dimension is not None
    assert bool((out.per_example >= -NEGATIVE_SLACK).all()), out.per_example
    assert bool((out.per_dimension >= -NEGATIVE_SLACK).all()), out.per_dimension
    expected = _gauss_kl(mu, logvar, m_mu, actual_m_logvar)
    _close(out.per_dimension, expected, rtol=1e-9, atol=1e-12)


@PROPERTY
@given(seed=SEED, batch=st.integers(1, 4), k=st.integers(1, 8), width=st.sampled_from([1.0, 50.0]))
def test_rate_nonnegative_categorical(seed: int, batch: int, k: int, width: float) -> None:
    """(c) KL(Categorical || Categorical marginal) >= 0 and equals sum p (log p - log m)."""
    gen = torch.Generator().manual_seed(seed)
    logits = _uniform(gen, (batch, k), -width, width)
    m_logits = _uniform(gen, (k,), -width, width)
    marginal = marginals.Categorical(k).to(F64)
    with torch.no_grad():
        marginal.logits.copy_(m_logits)
        out = F.rate(Categorical(logits=logits), marginal(), estimator="analytic")
    assert bool((out.per_example >= -NEGATIVE_SLACK).all()), out.per_example
    log_p, log_m = logits.log_softmax(-1), m_logits.log_softmax(-1)
    expected = (log_p.exp() * (log_p - log_m)).sum(-1)
    _close(out.per_example, expected, rtol=1e-9, atol=1e-12)


MC_SAMPLES = 4096


@PROPERTY
@given(
    seed=SEED,
    batch=st.integers(1, 3),
    dim=st.integers(1, 4),
    kind=st.sampled_from(["standard", "diagonal", "categorical"]),
)
def test_analytic_matches_monte_carlo(seed: int, batch: int, dim: int, kind: str) -> None:
    """(d) |MC - analytic| <= 6 standard errors (+ 1e-9) for every example."""
    gen = torch.Generator().manual_seed(seed)
    marginal: torch.distributions.Distribution | None
    if kind == "categorical":
        logits = _uniform(gen, (batch, dim + 1), -8.0, 8.0)
        q: torch.distributions.Distribution = Categorical(logits=logits)
        m = marginals.Categorical(dim + 1).to(F64)
        with torch.no_grad():
            m.logits.copy_(_uniform(gen, (dim + 1,), -8.0, 8.0))
        marginal = m()
        z = torch.multinomial(q.probs, MC_SAMPLES, replacement=True, generator=gen).T  # (S, B)
    else:
        mu = _uniform(gen, (batch, dim), -100.0, 100.0)
        logvar = _uniform(gen, (batch, dim), -20.0, 20.0)
        q = helpers.normal(mu, logvar=logvar)
        if kind == "standard":
            marginal = None
        else:
            m_mu = _uniform(gen, (dim,), -100.0, 100.0)
            marginal = _diagonal_gaussian(m_mu, _uniform(gen, (dim,), -20.0, 20.0))()
        eps = torch.randn((MC_SAMPLES, batch, dim), generator=gen, dtype=F64)
        z = mu + torch.exp(0.5 * logvar) * eps
    with torch.no_grad():
        analytic = F.rate(q, marginal, estimator="analytic").per_example
        mc = F.rate(q, marginal, z=z, estimator="mc")
        # Per-sample log-ratios from torch.distributions directly, for the error bar.
        reference = F.standard_normal(q) if marginal is None else marginal
        log_ratio = q.log_prob(z) - reference.log_prob(z)  # (S, B)
    assert mc.estimator == "mc"
    _close(mc.per_example, log_ratio.mean(0), rtol=1e-9, atol=1e-9)
    if kind == "categorical":
        # Exact spread of the log-ratio under e: a near-deterministic posterior may draw one
        # category only, and a sample std of 0 would promise an exact mean.
        support = torch.arange(dim + 1)[:, None].expand(dim + 1, batch)
        with torch.no_grad():
            terms = (q.log_prob(support) - reference.log_prob(support)).T  # (B, K)
        spread = (q.probs * (terms - analytic[:, None]).square()).sum(-1).sqrt()
    else:
        spread = log_ratio.std(0)
    stderr = spread / math.sqrt(MC_SAMPLES)
    gap = (mc.per_example - analytic).abs()
    assert bool((gap <= 6 * stderr + 1e-9 * (1 + analytic.abs())).all()), (gap, stderr)


def _reference_mixture(logits: Tensor, loc: Tensor, scale: Tensor) -> MixtureSameFamily:
    return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, scale), 1))


MIXTURE = {
    "seed": SEED,
    "k": st.integers(1, 8),
    "dim": st.integers(1, 6),
    "n": st.integers(1, 10),
    "near": NEAR,
    # Mixture and points far from the origin: the expanded square cancels in float32.
    "offset": st.sampled_from([0.0, 1e3]),
}


def _mixture_case(
    seed: int, k: int, dim: int, n: int, near: float, offset: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Weights, means, scales over four decades, and points near components or anywhere."""
    gen = torch.Generator().manual_seed(seed)
    logits = _uniform(gen, (k,), -10.0, 10.0)
    loc = offset + _uniform(gen, (k, dim), -20.0, 20.0)
    scale = 10 ** _uniform(gen, (k, dim), -2.0, 2.0)
    # Share `near` of the points within 3 scales of a component (the refined regime).
    owner = torch.randint(0, k, (n,), generator=gen)
    close = loc[owner] + _uniform(gen, (n, dim), -3.0, 3.0) * scale[owner]
    anywhere = offset + _uniform(gen, (n, dim), -40.0, 40.0)
    pick = torch.rand((n, 1), generator=gen, dtype=F64) < near
    return logits, loc, scale, torch.where(pick, close, anywhere)


@PROPERTY
@given(**MIXTURE)
def test_fast_mixture_matches_reference_float64(
    seed: int, k: int, dim: int, n: int, near: float, offset: float
) -> None:
    """(e) DiagonalGaussianMixture.log_prob and its gradients equal MixtureSameFamily's."""
    case = _mixture_case(seed, k, dim, n, near, offset)
    params = [t.clone().requires_grad_() for t in case]
    fast = DiagonalGaussianMixture(*params[:3]).log_prob(params[3])
    ref_params = [t.clone().requires_grad_() for t in case]
    ref = _reference_mixture(*ref_params[:3]).log_prob(ref_params[3])
    _close(fast.detach(), ref.detach(), rtol=1e-10, atol=1e-9)
    grads = torch.autograd.grad(fast.sum(), params)
    ref_grads = torch.autograd.grad(ref.sum(), ref_params)
    for g, r in zip(grads, ref_grads, strict=True):
        _close(g, r, rtol=1e-8, atol=1e-8)


@PROPERTY
@given(**MIXTURE)
def test_fast_mixture_float32_within_documented_tolerance(
    seed: int, k: int, dim: int, n: int, near: float, offset: float
) -> None:
    """(f) float32 log_prob within 1e-4 relative (+1e-3 absolute) of the float64 reference."""
    # The same float32 inputs for both: the tolerance is about the arithmetic, not about
    # rounding the inputs (z and loc near 1e3 move by ulp(1e3) = 6e-5, i.e. 6e-3 scales).
    logits, loc, scale, z = (t.float() for t in _mixture_case(seed, k, dim, n, near, offset))
    ref = _reference_mixture(logits.double(), loc.double(), scale.double()).log_prob(z.double())
    fast = DiagonalGaussianMixture(logits, loc, scale).log_prob(z)
    assert fast.dtype == torch.float32
    _close(fast.double(), ref, rtol=1e-4, atol=1e-3)


@PROPERTY
@given(**MIXTURE)
def test_gaussian_mixture_marginal_matches_reference(
    seed: int, k: int, dim: int, n: int, near: float, offset: float
) -> None:
    """(g) GaussianMixture.log_prob = MixtureSameFamily with softplus(raw_scale) scales."""
    logits, loc, scale, z = _mixture_case(seed, k, dim, n, near, offset)
    m = marginals.GaussianMixture(dim, n_components=k).to(F64)
    with torch.no_grad():
        m.logits.copy_(logits)
        m.loc.copy_(loc)
        m.raw_scale.copy_(scale + torch.log(-torch.expm1(-scale)))
        ref = _reference_mixture(logits, loc, tnf.softplus(m.raw_scale)).log_prob(z)
        _close(m.log_prob(z), ref, rtol=1e-10, atol=1e-9)
        _close(m().log_prob(z), ref, rtol=1e-10, atol=1e-9)


_METRIC_POOL: dict[tuple[int, str], dict[str, Metric]] = {}


def _cuts(data: st.DataObject, n: int) -> list[tuple[int, int]]:
    """Chunks ``[(0, c1), (c1, c2), ...]`` at hypothesis-chosen cut points (no empty chunk)."""
    points = data.draw(st.sets(st.integers(1, n - 1), max_size=min(n - 1, 8))) if n > 1 else set()
    bounds = [0, *sorted(points), n]
    return list(itertools.pairwise(bounds))


def _assert_same(a: object, b: object) -> None:
    """Equal named tuples / tensors / numbers, field by field (float64 rounding only)."""
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, Tensor):
        assert isinstance(b, Tensor)
        _close(a, b.to(a.dtype), rtol=1e-9, atol=1e-9)
    else:
        assert a == b


@PROPERTY
@given(
    data=st.data(),
    n=st.integers(2, 40),
    dim=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
    offset=_floats(-1e4, 1e4),
    spread=st.sampled_from([1e-3, 0.1, 1.0, 10.0]),
    entropy=_floats(0.0, 1e4),
)
def test_streaming_metrics_equal_full_pass(
    data: st.DataObject,
    n: int,
    dim: int,
    seed: int,
    offset: float,
    spread: float,
    entropy: float,
) -> None:
    """(h) chunked updates = one update = the functional computation, for every metric.

    Also ActiveUnits with its default float32 states, within 1e-4 relative."""
    chunks = _cuts(data, n)
    # The values come from a seeded generator (hypothesis picks the seed and the regime:
    # a large common offset of the means with a small or large spread, around threshold).
    gen = torch.Generator().manual_seed(seed)
    rate = 1e3 * torch.rand(n, generator=gen, dtype=F64)
    distortion = 1e4 * torch.rand(n, generator=gen, dtype=F64)
    means = offset + spread * torch.randn(n, dim, generator=gen, dtype=F64)
    per_dim = 10 * torch.rand(n, dim, generator=gen, dtype=F64)
    scales = 10 ** (1.5 * torch.rand(n, dim, generator=gen, dtype=F64) - 1)

    def metrics(role: str) -> dict[str, Metric]:
        # Built once per (latent size, role) and reset: construction costs ~1 ms a metric,
        # and reusing them also checks that reset() leaves nothing behind.
        made = _METRIC_POOL.get((dim, role))
        if made is None:
            made = {
                "rd": RateDistortion(data_dims=7),
                "au": ActiveUnits(),
                "au_sized": ActiveUnits(latent_dim=dim),
                "rpd": RatePerDimension(),
                "mi": MutualInformation(marginals.StandardNormal(dim).to(F64), tc_samples=16),
            }
            _METRIC_POOL[dim, role] = made
        # Fresh: it keeps its best -ELBO across reset (and entropy varies per example).
        made["bounds"] = MutualInformationBounds(data_entropy=entropy)
        for metric in made.values():
            metric.reset()
            metric.set_dtype(F64)
        return made

    def feed(made: dict[str, Metric], start: int, stop: int) -> None:
        made["rd"].update(rate[start:stop], distortion[start:stop])
        made["bounds"].update(rate[start:stop], distortion[start:stop])
        made["au"].update(means[start:stop])
        made["au_sized"].update(means[start:stop])
        made["rpd"].update(per_dim[start:stop])
        made["mi"].update(means[start:stop], scales[start:stop])

    streamed, whole = metrics("streamed"), metrics("whole")
    for start, stop in chunks:
        feed(streamed, start, stop)
    feed(whole, 0, n)
    results = {name: metric.compute() for name, metric in streamed.items()}
    for name, metric in whole.items():
        _assert_same(results[name], metric.compute())

    _assert_same(results["rd"], dfn.rate_distortion(rate, distortion, data_dims=7))
    _assert_same(results["bounds"], dfn.mutual_information_bounds(rate, distortion, entropy))
    expected_au = dfn.active_units(means)
    for name in ("au", "au_sized"):
        # Shifted sums against torch.var: equal up to rounding of the spread (not the offset).
        # reshape(-1): values only; the (D,) shape at D = 1 is test_per_unit_metrics_keep_shape.
        variances = results[name].variances.reshape(-1)
        _close(variances, expected_au.variances, rtol=1e-7, atol=1e-12)
        clear = (expected_au.variances - 0.01).abs() > 1e-9
        assert bool((results[name].active.reshape(-1) == expected_au.active)[clear].all())
    _assert_same(results["rpd"].reshape(-1), dfn.rate_per_dimension(per_dim))
    # Default float32 states on float32 data: the shifted sums keep the spread's digits
    # under a common offset of up to 1e4 (against float64 on the same rounded data).
    au32 = ActiveUnits()
    for start, stop in chunks:
        au32.update(means[start:stop].float())
    expected32 = dfn.active_units(means.float().double()).variances
    _close(au32.compute().variances.reshape(-1).double(), expected32, rtol=1e-4, atol=1e-12)
    expected_mi = dfn.aggregate_posterior(
        means,
        scale=scales,
        marginal=marginals.StandardNormal(dim).to(F64),
        tc_samples=16,
        generator=torch.Generator().manual_seed(0),
    )
    _assert_same(results["mi"], expected_mi)


@st.composite
def _cyclical(draw: st.DrawFn, value: st.SearchStrategy[float]) -> Cyclical:
    steps = draw(st.integers(1, 10_000))
    return Cyclical(
        draw(value),
        draw(value),
        steps=steps,
        cycles=draw(st.integers(1, min(steps, 10))),
        ratio=draw(st.one_of(st.just(1.0), _floats(1e-3, 1.0))),
    )


def _schedules(low: float = -1e6) -> st.SearchStrategy[Schedule]:
    value = st.one_of(_floats(low, 1e6), st.sampled_from([max(low, -1.0), 0.0, 0.1, 1.0]))
    steps = st.integers(1, 10_000)
    return st.one_of(
        st.builds(Constant, value),
        st.builds(Linear, value, value, steps=steps),
        st.builds(Cosine, value, value, steps=steps),
        _cyclical(value),
        st.builds(Sigmoid, value, value, steps=steps, steepness=_floats(1e-3, 100.0)),
    )


def _bounds(schedule: Schedule) -> tuple[float, float]:
    if isinstance(schedule, Constant):
        return schedule.value, schedule.value
    start, end = float(getattr(schedule, "start")), float(getattr(schedule, "end"))  # noqa: B009
    return min(start, end), max(start, end)


@PROPERTY
@given(
    schedule=_schedules(),
    points=st.lists(st.integers(0, 10**7), min_size=1, max_size=20),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.int64]),
)
def test_schedule_within_bounds_and_monotone(
    schedule: Schedule, points: list[int], dtype: torch.dtype
) -> None:
    """(i) lo <= v(t) <= hi at any step, monotone ramps, exact end points."""
    total = getattr(schedule, "steps", 1)
    # Hypothesis-chosen steps plus the landmarks: 0, the end of the ramp, beyond it.
    ts = sorted({*points, 0, total, total + 1, 3 * total})
    values = torch.stack([schedule(torch.tensor(t, dtype=dtype)) for t in ts])
    assert values.is_floating_point() and bool(torch.isfinite(values).all())
    # Bounds rounded to the output dtype, as the schedule holds them.
    lo, hi = (torch.tensor(b, dtype=values.dtype) for b in _bounds(schedule))
    assert bool(((values >= lo) & (values <= hi)).all()), (values, lo, hi)
    value_range = getattr(schedule, "value_range", lambda: None)()
    if value_range is not None:
        # The declared range (objectives reject e.g. a negative beta by it) holds every
        # value, up to the rounding of the output dtype.
        slack = 4 * torch.finfo(values.dtype).eps * max(map(abs, value_range))
        assert bool((values >= value_range[0] - slack).all()), (values, value_range)
        assert bool((values <= value_range[1] + slack).all()), (values, value_range)

    start = getattr(schedule, "start", None)
    end = getattr(schedule, "end", None)
    if isinstance(schedule, (Linear, Cosine, Sigmoid)):
        assert start is not None and end is not None
        step_values = values if end >= start else -values
        # Monotone up to rounding of lerp: a few ulps of the range.
        slack = 8 * torch.finfo(values.dtype).eps * max(abs(start), abs(end))
        assert bool((step_values.diff() >= -slack).all()), values
    if isinstance(schedule, (Linear, Cosine, Cyclical)):
        # Exactly start at step 0 and end from `steps` on.
        assert values[0] == torch.tensor(start, dtype=values.dtype)
        at_end = torch.tensor([t >= total for t in ts])
        assert bool((values[at_end] == torch.tensor(end, dtype=values.dtype)).all())
    if isinstance(schedule, Cyclical):
        # Monotone within each cycle: between consecutive landmarks of one cycle.
        period = schedule.steps / schedule.cycles
        cycle = torch.tensor([min(t, schedule.steps) // period for t in ts])
        same = cycle[1:] == cycle[:-1]
        step_values = values if end >= start else -values
        slack = 8 * torch.finfo(values.dtype).eps * max(abs(start), abs(end))
        assert bool((step_values.diff()[same] >= -slack).all()), values
    if isinstance(schedule, Constant):
        assert bool((values == torch.tensor(schedule.value, dtype=values.dtype)).all())


@PROPERTY
# Beta accepts only schedules that stay >= 0.
@given(
    schedule=_schedules(low=0.0),
    jump=st.integers(0, 30_000),
    before=st.integers(0, 5),
    after=st.integers(1, 8),
)
def test_schedule_state_dict_round_trip(
    schedule: Schedule, jump: int, before: int, after: int
) -> None:
    """(j) Beta(schedule) resumed from state_dict continues with the same values exactly."""
    rate = torch.ones(2, dtype=F64, requires_grad=True)
    distortion = torch.ones(2, dtype=F64)
    run = Beta(schedule).train()
    # Mid-run anywhere, including past the end of the ramp: set the step, then train a bit.
    run.step.fill_(jump)
    for _ in range(before):
        run(rate, distortion)
    resumed = Beta(schedule).train()
    resumed.load_state_dict(run.state_dict())
    assert int(resumed.step) == jump + before
    for _ in range(after):
        expected = run(rate, distortion).hyper["beta"]
        got = resumed(rate, distortion).hyper["beta"]
        assert got.dtype == expected.dtype
        assert torch.equal(got, expected)
        # An independent value: the schedule evaluated at the step directly.
        direct = schedule(torch.tensor(int(resumed.step) - 1, dtype=F64))
        assert torch.equal(got, direct)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rate_nonnegative_near_collapse_dense(dtype: torch.dtype) -> None:
    """Dense grid at the collapsed point, where the KL is a difference of equal numbers."""
    grid = torch.linspace(-1e-3, 1e-3, 2001, dtype=dtype)
    mu, logvar = torch.meshgrid(grid, grid, indexing="ij")
    q = helpers.normal(mu.reshape(-1, 1), logvar=logvar.reshape(-1, 1))
    assert bool((F.rate(q, estimator="analytic").per_example >= 0).all())
    unit = marginals.DiagonalGaussian(1).to(dtype)()
    assert bool((F.rate(q, unit, estimator="analytic").per_example >= -NEGATIVE_SLACK).all())


@pytest.mark.parametrize("dim", [1, 3])
def test_per_unit_metrics_keep_shape(dim: int) -> None:
    """Per-unit results are (D,) for every D, as the functional ones (also D = 1).

    Regression: torchmetrics squeezes every one-element tensor that ``compute`` returns, so
    D = 1 gave 0-dim tensors.
    """
    means = torch.randn(5, dim, dtype=F64)
    rates = torch.rand(5, dim, dtype=F64)
    for au in (ActiveUnits(), ActiveUnits(latent_dim=dim)):
        au.update(means)
        result = au.compute()
        assert result.variances.shape == result.active.shape == (dim,)
        assert result.num_active.shape == ()
        assert dfn.active_units(means).variances.shape == (dim,)
    rpd = RatePerDimension()
    rpd.update(rates)
    assert rpd.compute().shape == dfn.rate_per_dimension(rates).shape == (dim,)
