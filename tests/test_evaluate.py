"""``rdloss.evaluate`` equals the metrics and the IWAE bound composed by hand."""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _ddp import close_group, open_group
from torch import nn
from torch.testing import assert_close

import rdloss
from rdloss import helpers, marginals
from rdloss.diagnostics import (
    ActiveUnits,
    MutualInformation,
    MutualInformationBounds,
    RateDistortion,
    importance_weighted_bound,
)

pytestmark = pytest.mark.usefixtures("one_thread")

X_DIM, Z_DIM, K = 6, 3, 20
SIZES = (10, 7, 15, 8)  # uneven batches on purpose


class Model(nn.Module):
    """A fixed float64 VAE: linear encoder (mu, logvar), linear Gaussian decoder."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.enc = nn.Linear(X_DIM, 2 * Z_DIM).double()
        self.dec = nn.Sequential(nn.Linear(Z_DIM, X_DIM), nn.Dropout(0.5)).double()

    def decode(self, z: torch.Tensor) -> Any:
        return helpers.normal(self.dec(z), scale=0.7)

    def inputs(self, x: torch.Tensor) -> dict[str, Any]:
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        return {"x": x, "posterior": helpers.normal(mu, logvar=logvar), "decoder": self.decode}


def _data(n: int = sum(SIZES)) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, X_DIM, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2, X_DIM)


def _batches() -> list[torch.Tensor]:
    return list(_data().split(list(SIZES)))


def _loss() -> rdloss.RateDistortionLoss:
    return rdloss.RateDistortionLoss(marginals.StandardNormal(Z_DIM)).double()


def test_evaluate_equals_the_manual_composition() -> None:
    model, loss = Model(), _loss()
    # The manual composition (the 19 lines the docs needed before evaluate).
    model.eval()
    torch.manual_seed(7)
    rd, bounds, active = RateDistortion(data_dims=X_DIM), MutualInformationBounds(), ActiveUnits()
    mi = MutualInformation(loss.marginal, tc_samples=0)
    for m in (rd, bounds, active, mi):
        m.set_dtype(torch.float64)
    bound = []
    with torch.no_grad():
        for x in _batches():
            inputs = model.inputs(x)
            out = loss(**inputs)
            rd.update(out)
            bounds.update(out)
            active.update(inputs["posterior"])
            mi.update(inputs["posterior"])
            bound.append(importance_weighted_bound(x, inputs["posterior"], model.decode, k=K))
    want_rd, want_b, want_au, want_mi = (
        rd.compute(),
        bounds.compute(),
        active.compute(),
        mi.compute(),
    )
    iw = torch.cat(bound)
    nll, stderr = -iw.mean(), iw.std() / math.sqrt(iw.numel())

    model.train()
    torch.manual_seed(7)
    ev = rdloss.evaluate(_batches(), model.inputs, loss=loss, modules=model, iwae_samples=K,
                         progress=False)  # fmt: skip

    exact = {"rtol": 1e-12, "atol": 1e-12}
    for name in ("rate", "distortion", "elbo", "rate_bits", "distortion_bits", "bits_per_dim"):
        assert_close(getattr(ev, name), getattr(want_rd, name), **exact)
    assert_close(ev.mi_upper, want_b.upper, **exact)
    assert_close(ev.active_units.variances, want_au.variances, **exact)
    assert torch.equal(ev.active_units.active, want_au.active)
    assert ev.aggregate is not None and want_mi.marginal_gap is not None
    assert_close(ev.aggregate.mutual_information, want_mi.mutual_information, **exact)
    assert_close(ev.aggregate.marginal_gap, want_mi.marginal_gap, **exact)
    assert ev.aggregate.num_points == sum(SIZES)
    assert_close(ev.nll, nll, **exact)
    assert_close(ev.nll_stderr, stderr, **exact)
    assert_close(ev.nll_bits_per_dim, nll / (math.log(2) * X_DIM), **exact)
    # H is estimated by the IWAE NLL, and the lower bound is labelled as an estimate.
    assert ev.entropy_source == "iwae estimate"
    assert_close(ev.entropy, nll, **exact)
    assert_close(ev.entropy_stderr, stderr, **exact)
    assert_close(ev.mi_lower, nll - want_rd.distortion, **exact)
    assert ev.iwae_samples == K and ev.num_examples == sum(SIZES) and ev.data_dims == X_DIM
    assert ev.rate_per_group is None and ev.rate_per_step is None and ev.notes == ()
    # The sandwich on this model: the estimated lower bound is below the upper bound.
    assert ev.mi_lower < ev.mi_upper
    metrics = ev.metrics("val/")
    assert metrics["val/rate"] == float(ev.rate) and "val/nll" in metrics


def test_modes_restored_and_eval_during_the_call() -> None:
    model, loss = Model(), _loss()
    model.train()
    model.dec[1].eval()  # a mixed state must come back as it was
    seen = []

    def fn(x: torch.Tensor) -> dict[str, Any]:
        seen.append((model.training, model.dec[1].training, loss.training, torch.is_grad_enabled()))
        return model.inputs(x)

    rdloss.evaluate(_batches(), fn, loss=loss, modules=[model], iwae_samples=2, progress=False)
    assert set(seen) == {(False, False, False, False)}
    assert model.training and model.enc.training and not model.dec[1].training
    assert loss.training


def test_modes_restored_after_an_error() -> None:
    model = Model()
    model.train()

    def fn(x: torch.Tensor) -> dict[str, Any]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        rdloss.evaluate(_batches(), fn, modules=model, progress=False)
    assert all(m.training for m in model.modules())


def test_likelihood_only_given_entropy() -> None:
    model = Model().eval()

    def fn(x: torch.Tensor) -> dict[str, Any]:
        inputs = model.inputs(x)
        q = inputs["posterior"]
        return {"x": x, "posterior": q, "likelihood": model.decode(q.mean)}

    ev = rdloss.evaluate(_batches(), fn, loss=_loss(), data_entropy=12.0, progress=False)
    assert ev.nll is None and ev.iwae_samples == 0 and ev.entropy_source == "given"
    assert any("IWAE" in note and "decoder=" in note for note in ev.notes)
    assert_close(ev.mi_lower, torch.tensor(12.0, dtype=torch.float64) - ev.distortion)
    ev = rdloss.evaluate(_batches(), fn, loss=_loss(), progress=False)
    assert ev.mi_lower is None and ev.entropy is None and ev.entropy_source == "none"


def test_groups_and_steps_are_reported() -> None:
    torch.manual_seed(0)
    b, t = 5, 4
    data = [torch.randn(b, X_DIM, dtype=torch.float64) for _ in range(3)]

    def grouped(x: torch.Tensor) -> dict[str, Any]:
        top = helpers.normal(x[:, :2], scale=0.5)
        bottom = helpers.normal(x[:, 2:], scale=0.9)
        return {"x": x, "posterior": {"top": top, "bottom": bottom},
                "decoder": lambda z: helpers.normal(torch.cat([z["top"], z["bottom"]], 1),
                                                    scale=1.0)}  # fmt: skip

    ev = rdloss.evaluate(data, grouped, progress=False)
    assert ev.rate_per_group is not None and list(ev.rate_per_group) == ["top", "bottom"]
    assert_close(sum(ev.rate_per_group.values()), ev.rate)
    assert ev.active_units.per_group is not None
    assert ev.active_units.per_group["top"].variances.shape == (2,)
    assert ev.nll is None and ev.aggregate is None and ev.mi_lower is None
    assert [n.split(":")[0] for n in ev.notes] == ["IWAE NLL", "I(n;z)", "mi_lower"]

    def stepped(x: torch.Tensor) -> dict[str, Any]:
        mu = torch.cat([x, x[:, :2]], dim=1).reshape(b, t, 2)  # T = 4 steps of 2 units
        q = helpers.normal(mu, scale=0.5, event_dims=1)
        return {"x": x, "posterior": q, "likelihood": helpers.normal(x, scale=1.0)}

    rates = []
    loss = rdloss.RateDistortionLoss()
    for x in data:
        rates.append(loss(**stepped(x)).rate_per_step["z"])
    ev = rdloss.evaluate(data, stepped, progress=False)
    assert ev.rate_per_step is not None
    assert_close(ev.rate_per_step["z"], torch.cat(rates).mean(0))
    assert_close(ev.rate_per_step["z"].sum(), ev.rate)


def test_progress_lines_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    model = Model()
    batches = list(_data(200).split(10))  # 20 batches: a line every 2
    rdloss.evaluate(batches, model.inputs, loss=_loss(), iwae_samples=2)
    err = capsys.readouterr().err.splitlines()
    steps = [line for line in err if "batches" in line]
    assert len(steps) == 10 and steps[4].startswith("evaluate: 10/20 batches (50%), 100 examples")
    assert any("aggregate posterior over 200 points" in line for line in err)
    # Without len(): every 25 batches.
    rdloss.evaluate(iter(list(_data(300).split(10))), model.inputs, iwae_samples=0)
    assert [ln.split(",")[0] for ln in capsys.readouterr().err.splitlines() if "batches" in ln] == [
        "evaluate: 25 batches"
    ]
    rdloss.evaluate(batches, model.inputs, iwae_samples=0, progress=False)
    assert capsys.readouterr() == ("", "")


def test_bad_arguments() -> None:
    model = Model()
    with pytest.raises(ValueError, match="empty"):
        rdloss.evaluate([], model.inputs, progress=False)
    with pytest.raises(TypeError, match="mapping"):
        rdloss.evaluate(_batches(), lambda x: (x, None), progress=False)
    with pytest.raises(ValueError, match="missing keys \\['posterior'\\]"):
        rdloss.evaluate(_batches(), lambda x: {"x": x}, progress=False)
    with pytest.raises(ValueError, match="weight"):
        rdloss.evaluate(_batches(), lambda x: {**model.inputs(x), "weight": None}, progress=False)
    with pytest.raises(ValueError, match="iwae_samples"):
        rdloss.evaluate(_batches(), model.inputs, iwae_samples=-1)
    with pytest.raises(TypeError, match="loss"):
        rdloss.evaluate(_batches(), model.inputs, loss=nn.Linear(1, 1))  # type: ignore[arg-type]


def test_device_moves_nested_batches() -> None:
    model = Model()
    batches = [{"x": x, "meta": [x[:1]]} for x in _batches()]
    ev = rdloss.evaluate(batches, lambda b: model.inputs(b["x"]), device="cpu", progress=False)
    assert ev.num_examples == sum(SIZES)


# --- two processes equal one process on the union -------------------------------------------

RANKS = {0: [0, 1, 2], 1: [3]}  # indices into SIZES: uneven shards


def _shard(indices: list[int]) -> rdloss.Evaluation:
    model, batches = Model(), _batches()

    def fn(batch: tuple[int, torch.Tensor]) -> dict[str, Any]:
        index, x = batch
        torch.manual_seed(100 + index)  # the same draws for a batch, whichever process has it
        return model.inputs(x)

    return rdloss.evaluate([(i, batches[i]) for i in indices], fn, loss=_loss(), iwae_samples=K,
                           progress=False)  # fmt: skip


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    open_group(rank, 2, port)
    try:
        torch.save(_shard(RANKS[rank])._asdict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        close_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")
def test_two_processes_equal_one_process_on_the_union(tmp_path: Any, free_port: Any) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _shard(RANKS[0] + RANKS[1])._asdict()
    half = _shard(RANKS[0])
    assert not torch.allclose(half.rate, single["rate"])  # the union differs from a shard
    for rank in (0, 1):
        synced = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert synced["num_examples"] == sum(SIZES)
        for name in ("rate", "distortion", "elbo", "bits_per_dim", "mi_lower", "mi_upper",
                     "nll", "nll_stderr", "entropy"):  # fmt: skip
            assert_close(synced[name], single[name], msg=lambda m, n=name: f"{n}: {m}")
        assert_close(synced["active_units"].variances, single["active_units"].variances)
        assert_close(synced["aggregate"].mutual_information, single["aggregate"].mutual_information)
        assert_close(synced["aggregate"].marginal_gap, single["aggregate"].marginal_gap)


def test_iwae_nll_with_the_exact_posterior_is_the_closed_form() -> None:
    # x ~ N(0, 2 I) from z ~ N(0, I), x | z ~ N(z, I): the exact posterior is N(x/2, I/2),
    # with which every importance weight equals p(x), whatever k and the draws.
    x = torch.randn(30, 3, dtype=torch.float64)

    def fn(x: torch.Tensor) -> dict[str, Any]:
        q = helpers.normal(x / 2, scale=torch.full_like(x, 0.5**0.5))
        return {"x": x, "posterior": q, "decoder": lambda z: helpers.normal(z, scale=1.0)}

    ev = rdloss.evaluate(x.split(7), fn, iwae_samples=3, progress=False)
    log_p = torch.distributions.Normal(0.0, 2.0**0.5).log_prob(x).sum(1)
    assert_close(ev.nll, -log_p.mean())
    assert_close(ev.nll_stderr, log_p.std() / math.sqrt(30))
    assert_close(ev.mi_lower, -log_p.mean() - ev.distortion)
