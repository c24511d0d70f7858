"""RateDistortionLoss: drop-in equality, call styles, enumeration, weights, gradients."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as tnf
from _catalogue import B, D, Entry, P, _loss, _p, _q, _x, expect_named_error
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical
from torch.testing import assert_close

import rdloss
from rdloss import helpers, marginals, objectives


def classic_pytorch_examples_loss(recon_x, x, mu, logvar):
    """The loss of the PyTorch-examples VAE, verbatim apart from names."""
    bce = tnf.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


class TinyVAE(nn.Module):
    def __init__(self, data_dim: int = 784, latent_dim: int = 8) -> None:
        super().__init__()
        self.enc = nn.Linear(data_dim, 2 * latent_dim)
        self.dec = nn.Linear(latent_dim, data_dim)

    def encode(self, x):
        return self.enc(x).chunk(2, -1)


def test_drop_in_equality_with_pytorch_examples_vae() -> None:
    model = TinyVAE().double()
    x = torch.rand(16, 1, 28, 28, dtype=torch.float64)  # grey levels, as in the example
    eps = torch.randn(16, 8, dtype=torch.float64)

    def forward():
        mu, logvar = model.encode(x.view(-1, 784))
        z = mu + eps * torch.exp(0.5 * logvar)
        return mu, logvar, z, model.dec(z)

    mu, logvar, _, logits = forward()
    classic = classic_pytorch_examples_loss(torch.sigmoid(logits), x, mu, logvar)
    classic_grads = torch.autograd.grad(classic, list(model.parameters()))

    mu, logvar, z, logits = forward()
    out = rdloss.RateDistortionLoss()(
        x.view(-1, 784),
        posterior=helpers.normal(mu, logvar=logvar),
        likelihood=helpers.bernoulli(logits=logits, validate_args=False),
        z=z,
    )
    grads = torch.autograd.grad(out.loss, list(model.parameters()))

    # rdloss reduces by the batch mean; the example sums over the batch.
    assert_close(16 * out.loss, classic)
    assert_close(out.loss, -out.elbo)
    for ours, theirs in zip(grads, classic_grads, strict=True):
        assert_close(16 * ours, theirs)


def test_decoder_style_equals_likelihood_style_with_same_z() -> None:
    model = TinyVAE(data_dim=10, latent_dim=3).double()
    x = torch.randint(0, 2, (6, 10)).double()
    mu, logvar = model.encode(x)
    q = helpers.normal(mu, logvar=logvar)
    loss_fn = rdloss.RateDistortionLoss(rate_estimator="mc")

    def decoder(z):
        return helpers.bernoulli(logits=model.dec(z), event_dims=1)

    torch.manual_seed(1)
    by_decoder = loss_fn(x, posterior=q, decoder=decoder, samples=4)
    torch.manual_seed(1)
    z = q.rsample((4,))
    by_likelihood = loss_fn(x, posterior=q, likelihood=decoder(z), z=z)
    assert by_decoder.estimator == by_likelihood.estimator == "mc"
    assert_close(by_decoder.distortion_per_example, by_likelihood.distortion_per_example)
    assert_close(by_decoder.rate_per_example, by_likelihood.rate_per_example)
    # The S-sample distortion is the mean of the per-sample distortions.
    manual = torch.stack(
        [-decoder(z[s]).log_prob(x) for s in range(4)],
    ).mean(0)
    assert_close(by_decoder.distortion_per_example, manual)


def test_decoder_sees_flat_batch_for_convolutional_decoders() -> None:
    seen = []

    def decoder(z):
        seen.append(tuple(z.shape))
        return helpers.bernoulli(logits=torch.zeros(z.shape[0], 1, 4, 4))

    x = torch.randint(0, 2, (5, 1, 4, 4)).float()
    q = helpers.normal(torch.zeros(5, 2), scale=1.0)
    rdloss.RateDistortionLoss()(x, posterior=q, decoder=decoder, samples=3)
    assert seen == [(15, 2)]


def test_enumeration_equals_brute_force() -> None:
    torch.manual_seed(3)
    batch, k, data_dim = 4, 5, 6
    logits_q = torch.randn(batch, k, dtype=torch.float64)
    table = torch.randn(k, data_dim, dtype=torch.float64)  # decoder logits per latent state
    prior = torch.softmax(torch.randn(k, dtype=torch.float64), -1)
    x = torch.randint(0, 2, (batch, data_dim)).double()

    def decoder(z):
        return helpers.bernoulli(logits=table[z])

    loss_fn = rdloss.RateDistortionLoss(marginal=Categorical(probs=prior))
    out = loss_fn(x, posterior=Categorical(logits=logits_q), decoder=decoder, samples="enumerate")

    q = torch.softmax(logits_q, -1)
    d_brute = torch.zeros(batch, dtype=torch.float64)
    r_brute = torch.zeros(batch, dtype=torch.float64)
    for b in range(batch):
        for j in range(k):
            nll = tnf.binary_cross_entropy_with_logits(table[j], x[b], reduction="sum")
            d_brute[b] += q[b, j] * nll
            r_brute[b] += q[b, j] * (q[b, j].log() - prior[j].log())
    assert_close(out.distortion_per_example, d_brute)
    assert_close(out.rate_per_example, r_brute)

    # One-hot posteriors enumerate the same support.
    def one_hot_decoder(z):
        return helpers.bernoulli(logits=z @ table)

    out_oh = rdloss.RateDistortionLoss(marginal=OneHotCategorical(probs=prior))(
        x,
        posterior=OneHotCategorical(logits=logits_q),
        decoder=one_hot_decoder,
        samples="enumerate",
    )
    assert_close(out_oh.distortion_per_example, d_brute)
    assert_close(out_oh.rate_per_example, r_brute)


def test_integer_weights_equal_repeated_examples() -> None:
    x = torch.randint(0, 2, (3, 5)).double()
    mu = torch.randn(3, 2, dtype=torch.float64)
    logits = torch.randn(3, 5, dtype=torch.float64)
    loss_fn = rdloss.RateDistortionLoss(objective=objectives.Beta(0.5))
    weighted = loss_fn(
        x,
        posterior=helpers.normal(mu, scale=0.5),
        likelihood=helpers.bernoulli(logits=logits),
        weight=torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
    )
    index = torch.tensor([0, 1, 1, 2, 2, 2])
    repeated = loss_fn(
        x[index],
        posterior=helpers.normal(mu[index], scale=0.5),
        likelihood=helpers.bernoulli(logits=logits[index]),
    )
    for name in ("loss", "rate", "distortion", "elbo"):
        assert_close(getattr(weighted, name), getattr(repeated, name))
    # Only the ratios of the weights matter.
    scaled = loss_fn(
        x,
        posterior=helpers.normal(mu, scale=0.5),
        likelihood=helpers.bernoulli(logits=logits),
        weight=torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64),
    )
    assert_close(scaled.loss, weighted.loss)


def test_loss_gradcheck_float64() -> None:
    x = torch.randint(0, 2, (3, 4)).double()
    w_dec = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    loss_fn = rdloss.RateDistortionLoss(
        marginal=marginals.DiagonalGaussian(2).double(), objective=objectives.TargetRate(1.0)
    )

    def loss(mu, logvar, w_dec):
        torch.manual_seed(0)  # the same z on every evaluation
        q = helpers.normal(mu, logvar=logvar)
        return loss_fn(x, posterior=q, decoder=lambda z: helpers.bernoulli(logits=z @ w_dec)).loss

    assert torch.autograd.gradcheck(loss, (mu, logvar, w_dec))


def test_default_marginal_is_standard_normal_of_posterior_size() -> None:
    q = helpers.normal(torch.randn(4, 3), scale=torch.rand(4, 3) + 0.5)
    p = helpers.bernoulli(logits=torch.randn(4, 7))
    x = torch.randint(0, 2, (4, 7)).float()
    default = rdloss.RateDistortionLoss()(x, posterior=q, likelihood=p)
    explicit = rdloss.RateDistortionLoss(marginal=marginals.StandardNormal(3))(
        x, posterior=q, likelihood=p
    )
    assert_close(default.rate_per_example, explicit.rate_per_example)
    assert default.rate_per_dimension is not None
    assert default.rate_per_dimension.shape == (4, 3)


def test_distribution_marginal_is_accepted() -> None:
    q = Normal(torch.randn(4, 3), torch.ones(4, 3))
    m = Normal(torch.zeros(3), 2 * torch.ones(3))
    p = helpers.bernoulli(logits=torch.randn(4, 7))
    x = torch.randint(0, 2, (4, 7)).float()
    out = rdloss.RateDistortionLoss(marginal=m)(x, posterior=q, likelihood=p)
    expected = torch.distributions.kl_divergence(Independent(q, 1), Independent(m, 1))
    assert_close(out.rate_per_example, expected)


def test_target_rate_uses_batch_mean_by_default() -> None:
    # Regression: |sigma - mean R| (the paper) differs from mean |sigma - R_i|.
    rate = torch.tensor([0.0, 10.0])
    distortion = torch.zeros(2)
    assert_close(objectives.TargetRate(5.0)(rate, distortion).loss, torch.tensor(0.0))
    per_example = objectives.TargetRate(5.0, reduction="example")(rate, distortion).loss
    assert_close(per_example, torch.tensor(5.0))


def test_beta_objective_and_metrics() -> None:
    q = helpers.normal(torch.randn(4, 3), scale=0.5)
    p = helpers.bernoulli(logits=torch.randn(4, 7))
    x = torch.randint(0, 2, (4, 7)).float()
    out = rdloss.RateDistortionLoss(objective=objectives.Beta(0.25))(x, posterior=q, likelihood=p)
    assert_close(out.loss, out.distortion + 0.25 * out.rate)
    assert_close(out.elbo, -(out.distortion + out.rate))
    metrics = out.metrics(prefix="train/")
    assert set(metrics) == {
        "train/loss",
        "train/rate",
        "train/distortion",
        "train/elbo",
        "train/rate_bits",
        "train/distortion_bits",
        "train/beta",
    }
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["train/beta"] == 0.25
    assert metrics["train/rate_bits"] == pytest.approx(out.rate.item() / 0.6931471805599453)


def test_mc_rate_needs_z_and_reports_estimator() -> None:
    q = helpers.normal(torch.randn(4, 3), scale=0.5)
    p = helpers.bernoulli(logits=torch.randn(4, 7))
    x = torch.randint(0, 2, (4, 7)).float()
    z = q.sample()
    out = rdloss.RateDistortionLoss(rate_estimator="mc")(x, posterior=q, likelihood=p, z=z)
    assert out.estimator == "mc"
    assert_close(out.rate_per_example, q.log_prob(z) - marginals.StandardNormal(3).log_prob(z))


def test_compile_fullgraph_matches_eager() -> None:
    model = TinyVAE(data_dim=12, latent_dim=3)
    loss_fn = rdloss.RateDistortionLoss(objective=objectives.Beta(0.5))

    def step(x, eps):
        mu, logvar = model.encode(x)
        q = helpers.normal(mu, logvar=logvar)
        z = mu + eps * torch.exp(0.5 * logvar)
        out = loss_fn(x, posterior=q, likelihood=helpers.bernoulli(logits=model.dec(z)), z=z)
        return out.loss, out.rate, out.distortion

    compiled = torch.compile(step, fullgraph=True)
    for _ in range(2):
        x = torch.randint(0, 2, (8, 12)).float()
        eps = torch.randn(8, 3)
        for ours, ref in zip(compiled(x, eps), step(x, eps), strict=True):
            assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_compile_fullgraph_on_a_cold_kl_cache() -> None:
    # Regression: torch's KL dispatch cannot be traced before its cache is warm, so a
    # fresh process is needed (this test suite warms the cache everywhere else).
    code = (
        "import torch, rdloss\n"
        "from rdloss import helpers\n"
        "loss_fn = rdloss.RateDistortionLoss()\n"
        "mu = torch.randn(8, 4, requires_grad=True)\n"
        "x = torch.randint(0, 2, (8, 12)).float()\n"
        "step = lambda: loss_fn(x, posterior=helpers.normal(mu, logvar=torch.zeros(8, 4)),\n"
        "    likelihood=helpers.bernoulli(logits=torch.zeros(8, 12))).loss\n"
        "compiled = torch.compile(step, fullgraph=True, backend='aot_eager')\n"
        "torch.testing.assert_close(compiled(), step())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_value_checks_survive_libraries_that_turn_torch_validation_off() -> None:
    # zuko sets Distribution._validate_args = False at import; rdloss' own checks stay on.
    # A subprocess, because flipping torch's global back and forth confuses dynamo.
    code = (
        "import torch, rdloss, zuko\n"
        "from rdloss import helpers\n"
        "assert not torch.distributions.Distribution._validate_args\n"
        "x = torch.zeros(2, 3); x[0, 0] = float('nan')\n"
        "try:\n"
        "    q = helpers.normal(torch.zeros(2, 1), scale=1.0)\n"
        "    p = helpers.bernoulli(logits=torch.zeros(2, 3))\n"
        "    rdloss.RateDistortionLoss()(x, posterior=q, likelihood=p)\n"
        "except ValueError as e:\n"
        "    assert 'in x' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('NaN in x was not reported')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- issue 13: integer data, torch.func; issue 16: a short repr -----------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_binarised_data_of_integer_dtype_gives_the_float_distortion(dtype: torch.dtype) -> None:
    x = torch.randint(0, 2, (4, 6), generator=torch.Generator().manual_seed(0))
    q = helpers.normal(torch.zeros(4, 3), logvar=torch.zeros(4, 3))
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    loss_fn = rdloss.RateDistortionLoss()
    want = loss_fn(x.float(), posterior=q, likelihood=helpers.bernoulli(logits=logits))
    got = loss_fn(x.to(dtype), posterior=q, likelihood=helpers.bernoulli(logits=logits))
    torch.testing.assert_close(got.distortion_per_example, want.distortion_per_example)
    with pytest.raises(ValueError, match=r"x must lie in the support \{0, 1\} of the Bernoulli"):
        loss_fn(2 * x.long(), posterior=q, likelihood=helpers.bernoulli(logits=logits))


def _functional_loss(loss_fn: rdloss.RateDistortionLoss) -> Callable[..., torch.Tensor]:
    encoder = torch.nn.Linear(6, 6)

    def f(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        mu, logvar = torch.func.functional_call(encoder, params, (x,)).chunk(2, -1)
        logits = torch.zeros(x.shape[0], 6)
        likelihood = helpers.bernoulli(logits=logits, validate_args=False)
        out = loss_fn(x, posterior=helpers.normal(mu, logvar=logvar), likelihood=likelihood)
        return out.loss

    f.params = dict(encoder.named_parameters())  # type: ignore[attr-defined]
    return f


def test_torch_func_in_train_mode_refuses_to_update_state_in_place() -> None:
    loss_fn = rdloss.RateDistortionLoss()
    f = _functional_loss(loss_fn)
    x = torch.randint(0, 2, (4, 6)).float()
    with pytest.raises(RuntimeError, match=r"cannot update its state .* inside a torch.func"):
        torch.func.grad(f)(f.params, x)  # type: ignore[attr-defined]
    assert int(loss_fn.objective.step) == 0


def test_torch_func_per_example_gradients_in_eval_mode_equal_a_loop() -> None:
    loss_fn = rdloss.RateDistortionLoss().eval()
    f = _functional_loss(loss_fn)
    params = f.params  # type: ignore[attr-defined]
    x = torch.randint(0, 2, (4, 6), generator=torch.Generator().manual_seed(2)).float()
    per_example = torch.func.vmap(torch.func.grad(f), in_dims=(None, 0))(params, x.unsqueeze(1))
    for i in range(4):
        single = torch.func.grad(f)(params, x[i : i + 1])
        for name in params:
            torch.testing.assert_close(per_example[name][i], single[name])


def test_rdoutput_repr_is_short() -> None:
    q = helpers.normal(torch.zeros(128, 3), logvar=torch.zeros(128, 3))
    out = rdloss.RateDistortionLoss()(
        torch.ones(128, 6),
        posterior={"a": q},
        likelihood=helpers.bernoulli(logits=torch.zeros(128, 6)),
    )
    text = repr(out)
    assert text.startswith("RDOutput(loss=4.15888, rate=0, distortion=4.15888, elbo=-4.15888")
    assert "batch=128" in text and "groups=['a']" in text and "hyper={beta=1}" in text
    assert len(text) < 200


# --- bad inputs: the loss call ------------------------------------------------------------
# The catalogue's part for this module (tests/_catalogue.py); docs/errors.md lists its keys.


def _nan_x() -> torch.Tensor:
    x = _x()
    x[1, 2] = float("nan")
    return x


BAD_INPUTS: dict[str, Entry] = {
    "flat likelihood vs image x (silent-broadcast trap)": (
        lambda: _loss()(
            torch.rand(B, 1, 28, 28),
            posterior=_q(),
            likelihood=helpers.bernoulli(logits=torch.zeros(B, 784), validate_args=False),
        ),
        ValueError,
        r"likelihood must cover x exactly.*\(4, 1, 28, 28\).*\(4,\).*\(784,\)",
    ),
    "likelihood with a different data size": (
        lambda: _loss()(
            _x(), posterior=_q(), likelihood=helpers.bernoulli(logits=torch.zeros(B, 5))
        ),
        ValueError,
        r"likelihood must cover x exactly",
    ),
    "likelihood whose event swallows the batch": (
        lambda: _loss()(
            _x(),
            posterior=_q(),
            likelihood=Independent(Bernoulli(logits=torch.zeros(B, P)), 2),
        ),
        ValueError,
        r"event_shape \(4, 6\) swallows the batch dimension",
    ),
    "posterior batch differs from x": (
        lambda: _loss()(_x(), posterior=_q(batch=3), likelihood=_p()),
        ValueError,
        r"posterior batch size 3 does not match x's batch size 4",
    ),
    "x is not a tensor": (
        lambda: _loss()(_x().tolist(), posterior=_q(), likelihood=_p()),
        TypeError,
        r"x must be a torch.Tensor, got list",
    ),
    "posterior given as (mu, logvar) tuple": (
        lambda: _loss()(_x(), posterior=(torch.zeros(B, D), torch.zeros(B, D)), likelihood=_p()),
        TypeError,
        r"posterior must be a torch.distributions.Distribution, got tuple",
    ),
    "likelihood given as logits tensor": (
        lambda: _loss()(_x(), posterior=_q(), likelihood=torch.zeros(B, P)),
        TypeError,
        r"likelihood must be a torch.distributions.Distribution, got Tensor",
    ),
    "NaN in x": (
        lambda: _loss()(_nan_x(), posterior=_q(), likelihood=_p()),
        ValueError,
        r"non-finite values \(NaN or inf\) in x",
    ),
    "inf in posterior parameters": (
        lambda: _loss()(
            _x(),
            posterior=helpers.normal(torch.full((B, D), float("inf")), scale=1.0),
            likelihood=_p(),
        ),
        ValueError,
        r"rate is NaN/inf for 4 of 4 examples: check the posterior",
    ),
    "NaN in likelihood parameters": (
        lambda: _loss()(
            _x(),
            posterior=_q(),
            likelihood=helpers.bernoulli(
                logits=torch.full((B, P), float("nan")), validate_args=False
            ),
        ),
        ValueError,
        r"distortion is NaN/inf for 4 of 4 examples: check the likelihood",
    ),
    "empty batch": (
        lambda: _loss()(torch.zeros(0, P), posterior=_q(), likelihood=_p()),
        ValueError,
        r"x has an empty batch \(shape \(0, 6\)\)",
    ),
    "Monte Carlo rate without z": (
        lambda: _loss(rate_estimator="mc")(_x(), posterior=_q(), likelihood=_p()),
        ValueError,
        r"z is required for the Monte Carlo rate",
    ),
    "negative beta": (lambda: objectives.Beta(-0.5), ValueError, r"beta must be >= 0, got -0.5"),
    "beta as a string": (
        lambda: objectives.Beta("1"),  # type: ignore[arg-type]
        TypeError,
        r"beta must be a real number or an rdloss.schedules.Schedule, got str",
    ),
    "negative sigma": (
        lambda: objectives.TargetRate(-1.0),
        ValueError,
        r"sigma must be >= 0, got -1.0",
    ),
    "zero target-rate weight": (
        lambda: objectives.TargetRate(1.0, weight=0.0),
        ValueError,
        r"weight must be > 0, got 0.0",
    ),
    "both likelihood and decoder": (
        lambda: _loss()(_x(), posterior=_q(), likelihood=_p(), decoder=lambda z: _p()),
        ValueError,
        r"pass exactly one of likelihood= or decoder=",
    ),
    "neither likelihood nor decoder": (
        lambda: _loss()(_x(), posterior=_q()),
        ValueError,
        r"pass exactly one of likelihood= or decoder=",
    ),
    "weight of the wrong shape": (
        lambda: _loss()(_x(), posterior=_q(), likelihood=_p(), weight=torch.ones(B, 1)),
        ValueError,
        r"weight must have shape \(B,\) = \(4,\), got \(4, 1\)",
    ),
    "negative weight": (
        lambda: _loss()(
            _x(), posterior=_q(), likelihood=_p(), weight=torch.tensor([1.0, -1.0, 1.0, 1.0])
        ),
        ValueError,
        r"weight must be non-negative",
    ),
    "zero samples": (
        lambda: _loss()(_x(), posterior=_q(), decoder=lambda z: _p(), samples=0),
        ValueError,
        r"samples must be an int >= 1 or 'enumerate', got 0",
    ),
    "samples with a likelihood": (
        lambda: _loss()(_x(), posterior=_q(), likelihood=_p(), samples=2),
        ValueError,
        r"samples=2 declares 2 samples per example your model drew, but the likelihood covers",
    ),
    "enumerate a continuous posterior": (
        lambda: _loss()(_x(), posterior=_q(), decoder=lambda z: _p(), samples="enumerate"),
        TypeError,
        r"samples='enumerate' needs a Categorical or OneHotCategorical posterior, got Independent",
    ),
    "sample a posterior without rsample": (
        lambda: _loss()(
            _x(), posterior=Categorical(logits=torch.zeros(B, 5)), decoder=lambda z: _p()
        ),
        ValueError,
        r"Categorical has no rsample",
    ),
    "enumerate with the default continuous marginal": (
        lambda: _loss()(
            _x(),
            posterior=Categorical(logits=torch.zeros(B, 5)),
            decoder=lambda z: _p(),
            samples="enumerate",
        ),
        ValueError,
        r"samples='enumerate' needs a discrete marginal",
    ),
    "unknown rate estimator": (
        lambda: _loss(rate_estimator="exact"),
        ValueError,
        r"rate_estimator must be 'analytic', 'mc' or 'auto', got 'exact'",
    ),
    "sync_dist that is not a bool": (
        lambda: _loss(sync_dist="yes"),
        TypeError,
        r"sync_dist must be a bool, got str",
    ),
    "marginal of the wrong latent size": (
        lambda: _loss(marginal=marginals.StandardNormal(4))(_x(), posterior=_q(), likelihood=_p()),
        ValueError,
        r"marginal must describe one latent of the posterior's event_shape \(3,\)",
    ),
    "marginal of the wrong type": (
        lambda: _loss(marginal="normal"),
        TypeError,
        r"marginal must be an nn.Module returning a Distribution, a Distribution, a mapping "
        r".*got str",
    ),
    "objective of the wrong type": (
        lambda: _loss(objective=lambda r, d: r + d),
        TypeError,
        r"objective must be an rdloss.objectives.Objective, got function",
    ),
    "z of the wrong shape": (
        lambda: _loss(rate_estimator="mc")(
            _x(), posterior=_q(), likelihood=_p(), z=torch.zeros(B, D + 1)
        ),
        ValueError,
        r"z must have shape \(B, \*event\) = \(4, 3\) or \(S, B, \*event\), got \(4, 4\)",
    ),
    "z with samples the likelihood lacks": (
        lambda: _loss()(_x(), posterior=_q(), likelihood=_p(), z=torch.zeros(2, B, D)),
        ValueError,
        r"z has sample dims \(2,\) but the likelihood has \(\)",
    ),
    "decoder returning logits": (
        lambda: _loss()(_x(), posterior=_q(), decoder=lambda z: torch.zeros(B, P)),
        TypeError,
        r"decoder must return a torch.distributions.Distribution, got Tensor",
    ),
    "posterior without a batch dimension": (
        lambda: _loss()(_x(), posterior=Normal(torch.tensor(0.0), 1.0), likelihood=_p()),
        ValueError,
        r"posterior must have a batch dimension",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_named_error(case: str) -> None:
    expect_named_error(BAD_INPUTS[case])
