"""Host synchronisations per call: at most one with the default checks, none without.

A host synchronisation stalls a GPU pipeline. They are counted on CPU (see
``benchmarks/_counting.py``): ``aten._local_scalar_dense`` (``.item()``, ``bool(t)``) with a
dispatch mode and ``Tensor.tolist()`` (which dispatches nothing on CPU) with a function
mode. A case is one call as a user's training step makes it: the `rdloss.helpers` that build
the distributions and the loss, sharing one ``validate_args`` flag.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch.distributions import Distribution

from benchmarks._counting import count
from benchmarks.host_syncs import LOSS_CASES, METRIC_CASES, measure


@pytest.fixture(autouse=True)
def _torch_validation_on() -> Iterator[None]:
    """torch.distributions' global default as a user has it: on (zuko turns it off at import)."""
    before = Distribution._validate_args
    Distribution.set_default_validate_args(True)
    yield
    Distribution.set_default_validate_args(before)


def test_counter_sees_every_kind_of_host_read() -> None:
    # The counter itself: each way of reading a value on the host counts once, and a
    # computation that stays on the device counts none.
    t = torch.arange(4.0)
    assert count(lambda: t.sum().item()).n_syncs == 1
    assert count(lambda: bool(t.all())).n_syncs == 1
    assert count(lambda: t.tolist()).n_syncs == 1
    assert count(lambda: float(t[0])).n_syncs == 1
    quiet = count(lambda: torch.stack([t.isfinite().all(), t.sum() > 0]).all())
    assert quiet.n_syncs == 0
    assert quiet.n_ops >= 4
    assert len(count(lambda: torch.tensor(0.5)).builds) == 1


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_default_checks_sync_at_most_once(name: str) -> None:
    assert measure(LOSS_CASES[name], True).n_syncs <= 1


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_no_sync_without_checks(name: str) -> None:
    counts = measure(LOSS_CASES[name], False)
    assert counts.n_syncs == 0, counts.syncs


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_no_tensor_built_from_python_numbers_per_call(name: str) -> None:
    # On a GPU each is a host-to-device copy that waits for the stream.
    counts = measure(LOSS_CASES[name], False)
    assert not counts.builds, counts.builds


@pytest.mark.parametrize("name", list(METRIC_CASES))
def test_diagnostic_update_syncs(name: str) -> None:
    # Without checks an update never syncs; with them (the default) it syncs once.
    assert measure(METRIC_CASES[name], False).n_syncs == 0
    assert measure(METRIC_CASES[name], True).n_syncs == 1


def test_checks_off_runs_fewer_ops() -> None:
    # The value checks are real work: turning them off must remove ops, not only syncs.
    on, off = measure(LOSS_CASES["Beta"], True), measure(LOSS_CASES["Beta"], False)
    assert off.n_ops < on.n_ops


@pytest.mark.parametrize("style", ["likelihood", "decoder"])
def test_loss_without_checks_runs_none_of_the_helpers_deferred_checks(style: str) -> None:
    # The helpers' default (validate_args=None) leaves their checks to the loss; a loss
    # with validate_args=False must then run none of them (the Bernoulli support of x too).
    import rdloss
    from rdloss import helpers

    torch.manual_seed(0)
    x = torch.randint(0, 2, (16, 20)).float()
    mu, logvar, weights = torch.randn(16, 4), torch.randn(16, 4), torch.randn(4, 20)
    loss_fn = rdloss.RateDistortionLoss(validate_args=False)

    def call() -> object:
        q = helpers.normal(mu, logvar=logvar)
        if style == "decoder":
            return loss_fn(x, posterior=q, decoder=lambda z: helpers.bernoulli(logits=z @ weights))
        z = q.rsample()
        return loss_fn(x, posterior=q, likelihood=helpers.bernoulli(logits=z @ weights), z=z)

    assert count(call).n_syncs == 0


def test_unchecked_call_does_no_more_work_than_torch_distributions() -> None:
    # The per-call benchmark's case: rdloss without checks runs no more forward ops than
    # the same loss written with torch.distributions objects, and never turns the
    # helpers' Bernoulli logits into probabilities (nothing in the call reads them).
    from benchmarks.per_call import make_distributions, make_rdloss

    torch.manual_seed(0)
    x = torch.randint(0, 2, (8, 64)).float()
    mu, logvar, logits = torch.randn(8, 16), torch.randn(8, 16), torch.randn(8, 64)
    ours, theirs = make_rdloss(False), make_distributions(16)
    ours(x, mu, logvar, logits)  # a first call may build lazily
    mine = count(lambda: ours(x, mu, logvar, logits))
    reference = count(lambda: theirs(x, mu, logvar, logits))
    assert mine.n_ops <= reference.n_ops, (mine.ops, reference.ops)
    assert mine.ops["sigmoid"] == 0, mine.ops


def test_rate_between_log_scale_gaussians_takes_one_exp() -> None:
    # VDVAE's layer KL between two helpers.normal(mu, log_scale=...) sides: the closed form
    # reads both log-variances and the prior's scale once (one exp); nothing else (a dtype
    # check, say) may compute a derived scale again.
    from rdloss import functional, helpers

    torch.manual_seed(0)
    mu, log_scale, prior_mu, prior_log_scale = torch.randn(4, 8, 16, 4, 4).unbind(0)

    def rate() -> object:
        q = helpers.normal(mu, log_scale=log_scale, event_dims=3)
        p = helpers.normal(prior_mu, log_scale=prior_log_scale, event_dims=3)
        return functional.rate(q, prior=p).per_example

    rate()
    counts = count(rate)
    assert counts.ops["exp"] == 1, counts.ops
    assert counts.n_syncs == 0


def _grouped_call(groups: int, validate: bool) -> object:
    import rdloss
    from rdloss import helpers

    torch.manual_seed(0)
    tensors = torch.randn(groups, 4, 8, 3)
    x = torch.randint(0, 2, (8, 5)).float()
    loss_fn = rdloss.RateDistortionLoss(validate_args=validate)
    flag = None if validate else False

    def call() -> object:
        posterior = {
            f"z{i}": helpers.normal(t[0], logvar=t[1], validate_args=flag)
            for i, t in enumerate(tensors)
        }
        prior = {
            f"z{i}": helpers.normal(t[2], log_scale=t[3], validate_args=flag)
            for i, t in enumerate(tensors)
        }
        likelihood = helpers.bernoulli(logits=torch.zeros(8, 5), validate_args=flag)
        return loss_fn(x, posterior=posterior, prior=prior, likelihood=likelihood)

    return call


def test_range_checks_of_many_groups_cost_one_reduction_per_tensor() -> None:
    # The value check compares the extremes of every log-variance together: per group its
    # two distributions' aminmax, and a constant number of kernels for the whole call.
    def check_ops(groups: int) -> int:
        on = count(_grouped_call(groups, True))
        off = count(_grouped_call(groups, False))
        assert on.n_syncs == 1 and off.n_syncs == 0
        assert on.ops["aminmax"] == 2 * groups, on.ops
        return on.n_ops - off.n_ops

    assert check_ops(12) - check_ops(4) == 2 * (12 - 4)
