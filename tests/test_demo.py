"""Tests of rdloss.demo: embedded data, the exact toy model, reference models, result rows."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rdloss.demo import data, results, toy
from rdloss.demo.models import FactorizedDecoder, MADEDecoder, MLPEncoder
from rdloss.demo.sweep import RunSpec, train_digits


@pytest.fixture(scope="module")
def toy_dist() -> data.ToyData:
    return data.toy_data()


@pytest.fixture(scope="module")
def toy_runs(toy_dist: data.ToyData) -> tuple[toy.ToyResult, toy.ToyResult]:
    torch.set_num_threads(1)
    elbo = toy.train_toy(toy_dist, steps=1500, seed=0)
    target = toy.train_toy(toy_dist, target_rate=0.5, steps=1500, seed=0)
    return elbo, target


def test_digits_match_the_source_statistics() -> None:
    digits = data.load_digits()
    assert digits.images.shape == (1797, 64)
    assert digits.images.dtype == torch.float32
    assert set(digits.images.unique().tolist()) == {0.0, 1.0}
    # optdigits class counts (sklearn's load_digits): 178, 182, 177, ...
    counts = torch.bincount(digits.labels, minlength=10).tolist()
    assert counts == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    # The border columns of the 8x8 digits are almost always blank.
    assert digits.images.reshape(-1, 8, 8)[:, :, 0].mean() < 0.05


def test_toy_distribution_by_monte_carlo(toy_dist: data.ToyData) -> None:
    assert_close(toy_dist.probs.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert abs(toy_dist.mutual_information - 0.5) < 1e-8
    # Independent check: sample the generative process and bin it.
    g = torch.Generator().manual_seed(0)
    n = 400_000
    z = torch.rand(n, generator=g, dtype=torch.float64) < 0.7
    mean = torch.where(z, toy_dist.means[1], toy_dist.means[0])
    h = mean + toy_dist.scale * torch.randn(n, generator=g, dtype=torch.float64)
    inner = toy_dist.edges[1:-1].contiguous()
    bins = torch.bucketize(h, inner, right=True)
    freq = torch.bincount(bins, minlength=30).double() / n
    assert_close(freq, toy_dist.probs, atol=3e-3, rtol=0)
    # I(x; z*) from the sampled joint, through the plug-in estimate.
    joint = (
        torch.stack(
            [torch.bincount(bins[~z], minlength=30), torch.bincount(bins[z], minlength=30)]
        ).double()
        / n
    )
    px, pz = joint.sum(0), joint.sum(1)
    ratio = joint / (pz[:, None] * px[None, :])
    mi = torch.where(joint > 0, joint * ratio.log(), torch.zeros_like(joint)).sum()
    assert abs(float(mi) - 0.5) < 5e-3


def test_toy_rejects_unreachable_target() -> None:
    with pytest.raises(ValueError, match="target"):
        data.toy_data(target=0.7)  # above H(z*) = 0.611 nats


def test_toy_sandwich_and_target_rate(
    toy_runs: tuple[toy.ToyResult, toy.ToyResult], toy_dist: data.ToyData
) -> None:
    elbo, target = toy_runs
    for run in toy_runs:
        assert run.entropy - run.distortion <= run.mutual_information + 1e-9
        assert run.mutual_information <= run.rate + 1e-9
        assert abs(run.elbo + toy_dist.entropy) < 0.01
        assert_close(run.elbo, -(run.rate + run.distortion))
        assert math.isclose(sum(run.cluster_masses), 1.0, abs_tol=1e-9)
    assert abs(target.rate - 0.5) < 0.03
    assert target.rate - elbo.rate > 0.3


def test_toy_exact_terms_by_brute_force(toy_dist: data.ToyData) -> None:
    model = toy.ToyModel(30, 30, init_scale=1.0, generator=torch.Generator().manual_seed(1))
    x = torch.arange(30)
    e = model.posterior(x).probs  # (x, z)
    d = model.decoder_logits.log_softmax(-1)  # (z, x)
    p = toy_dist.probs
    distortion = -(p[:, None] * e * d.T).sum()
    q = p @ e
    info = (p[:, None] * e * (e / q).log()).sum()
    # The loss with a marginal equal to the aggregate gives R = I exactly.
    from rdloss import RateDistortionLoss

    loss_fn = RateDistortionLoss(torch.distributions.Categorical(probs=q))
    out = loss_fn(
        x, posterior=model.posterior(x), decoder=model.decoder, samples="enumerate", weight=p
    )
    assert_close(out.distortion, distortion)
    assert_close(out.rate, info)


def test_cluster_masses_of_an_uninformative_encoder(toy_dist: data.ToyData) -> None:
    model = toy.ToyModel(30, 30, init_scale=0.0)
    with torch.no_grad():
        model.decoder_logits.copy_(toy_dist.probs.log().expand(30, 30))
    masses = toy.cluster_masses(toy_dist, model, torch.full((30, 30), 1 / 30, dtype=torch.float64))
    assert masses == pytest.approx((0.0, 1.0))


def test_made_is_autoregressive() -> None:
    torch.manual_seed(0)
    dec = MADEDecoder(3, 16, hidden=32)
    x = torch.bernoulli(torch.full((1, 16), 0.5)).requires_grad_(True)
    logits = dec(torch.randn(1, 3), x).base_dist.logits
    for i in range(16):
        (grad,) = torch.autograd.grad(logits[0, i], x, retain_graph=True)
        assert torch.all(grad[0, i:] == 0), f"output {i} depends on pixels >= {i}"
        if i > 0:
            assert grad[0, :i].abs().sum() > 0


def test_reference_models_shapes() -> None:
    q = MLPEncoder(64, 5)(torch.zeros(7, 64))
    assert q.batch_shape == (7,) and q.event_shape == (5,)
    p = FactorizedDecoder(5, 64)(q.rsample(), torch.zeros(7, 64))
    assert p.batch_shape == (7,) and p.event_shape == (64,)


@pytest.mark.parametrize("marginal", ["normal", "mixture", "vamp"])
def test_train_digits_runs_with_every_marginal(marginal: str) -> None:
    digits = data.load_digits()
    res = train_digits(
        RunSpec("autoregressive", "beta", 1.0), digits, marginal=marginal, epochs=1, eval_samples=2
    )
    assert res.history.shape == (1, 2)
    assert math.isclose(res.elbo, -(res.rate + res.distortion), rel_tol=1e-6)
    assert 0 <= res.active_units <= 8
    assert res.rate >= -1e-3 or marginal != "normal"


def _rows() -> list[results.Row]:
    """Hand-made rows of a demo whose every finding holds."""
    nan = math.nan

    def digits(model: str, objective: str, value: float, r: float, d: float, units: int):
        beta, target = (nan, value) if objective == "target_rate" else (value, nan)
        return results.Row(
            "digits",
            model,
            objective,
            value,
            r,
            d,
            -(r + d),
            nan,
            nan,
            nan,
            12.0,
            units,
            beta,
            target,
            None,
        )

    return [
        results.Row(
            "toy", "table", "elbo", 1.0, 0.0, 3.0, -3.0, 0.0, 0.0, 3.0, nan, 1, 1.0, nan, 1
        ),
        results.Row(
            "toy",
            "table",
            "target_rate",
            0.5,
            0.5,
            2.5,
            -3.0,
            0.5,
            0.5,
            3.0,
            nan,
            2,
            nan,
            0.5,
            2,
        ),
        digits("factorized", "beta", 0.1, 9.0, 5.0, 8),
        digits("factorized", "beta", 1.0, 4.0, 8.0, 8),
        digits("autoregressive", "beta", 1.0, 0.5, 11.6, 0),
        digits("autoregressive", "target_rate", 4.0, 4.1, 8.2, 5),
    ]


def test_findings_and_files(tmp_path) -> None:
    rows = _rows()
    found = results.findings(rows)
    assert [f.holds for f in found] == [True, True, True, True, True, True]
    broken = [*rows[:3], rows[3]._replace(distortion=4.0)]
    assert [f.holds for f in results.findings(broken)][3] is False
    results.write_csv(rows, tmp_path / "r.csv")
    results.write_json(rows, tmp_path / "r.json", command="test")
    import csv
    import json

    table = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert float(table[1]["rate"]) == 0.5 and table[2]["mi_lower"] == ""
    loaded = json.loads((tmp_path / "r.json").read_text())
    assert loaded["rows"][2]["mi_lower"] is None and loaded["command"] == "test"


def test_csv_and_json_split_the_objective_setting(tmp_path) -> None:
    import csv
    import json

    rows = _rows()
    results.write_csv(rows, tmp_path / "r.csv")
    results.write_json(rows, tmp_path / "r.json")
    table = list(csv.DictReader((tmp_path / "r.csv").open()))
    # value keeps its old meaning (β or sigma); beta / target_rate hold one of them each.
    assert [r["value"] for r in table] == ["1.0", "0.5", "0.1", "1.0", "1.0", "4.0"]
    assert [r["beta"] for r in table] == ["1.0", "", "0.1", "1.0", "1.0", ""]
    assert [r["target_rate"] for r in table] == ["", "0.5", "", "", "", "4.0"]
    assert [r["latent_states"] for r in table] == ["1", "2", "", "", "", ""]
    loaded = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["latent_states"] for r in loaded] == [1, 2, None, None, None, None]
    assert [r["target_rate"] for r in loaded] == [None, 0.5, None, None, None, 4.0]


def test_printed_table_has_one_meaning_per_column() -> None:
    text = results.format_results(_rows())
    head, table = text.split("\n\n")
    lines = table.splitlines()
    assert lines[0].split() == list(results.TABLE_COLUMNS)
    assert "entropy" not in lines[0] and "value" not in lines[0]
    cells = [dict(zip(results.TABLE_COLUMNS, line.split(), strict=True)) for line in lines[1:]]
    assert [c["beta"] for c in cells] == ["1.0000", "-", "0.1000", "1.0000", "1.0000", "-"]
    assert [c["target_rate"] for c in cells] == ["-", "0.5000", "-", "-", "-", "4.0000"]
    # The toy latent is one 30-state variable: no units to count.
    assert [c["active_units"] for c in cells] == ["-", "-", "8", "8", "0", "5"]
    # The entropy is stated once per dataset, in the header, with the units and the data.
    assert head.count("H = 3.0000") == 1 and head.count("H <= 12.0000") == 1
    assert "nats per example" in head and "297 held-out" in head


def test_quick_findings_do_not_give_full_run_advice() -> None:
    rows = _rows()
    bad = [*rows[:2], rows[2], rows[3]._replace(distortion=4.0), *rows[4:]]
    bad[0] = bad[0]._replace(mutual_information=0.5)  # breaks the exact sandwich bound too
    found = results.findings(bad)
    holds = [f.holds for f in found]
    assert holds[0] is False and holds[3] is False
    full = results.format_findings(found)
    quick = results.format_findings(found, quick=True)
    assert "train longer (--epochs)" in full and "train longer" not in quick
    assert quick.count(results.QUICK_WHY) == 1
    # A bound holds for any model: a quick run still reports its violation as a bug.
    assert "please report it" in quick and "please report it" in full


def _png_size(path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (bytes 16-24, big-endian)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_figures_stack_their_panels_for_the_docs_column(tmp_path) -> None:
    """The docs show each PNG about 700 pixels wide: panels one above the other, 6.4 in each."""
    pytest.importorskip("matplotlib")
    from rdloss.demo.figures import save_figures

    toy_runs = [
        toy.train_toy(data.toy_data(), steps=5),
        toy.train_toy(data.toy_data(), target_rate=0.5, steps=5),
    ]
    digit_runs = [
        train_digits(
            RunSpec("factorized", "beta", 1.0), data.load_digits(), epochs=1, eval_samples=1
        )
    ]
    rows = [results.from_toy(t) for t in toy_runs] + results.from_digits(digit_runs)
    written = save_figures(rows, toy_runs, digit_runs, tmp_path.joinpath)
    assert [p.name for p in written] == ["rd_plane.png", "trajectory.png"]
    for path in written:
        width, height = _png_size(path)
        assert width == 960 and height > width  # 6.4 in at 150 dpi; two panels stacked
    # One panel only (no toy runs): as wide, no longer taller than wide.
    alone = tmp_path / "digits-only"
    alone.mkdir()
    save_figures(rows[2:], [], digit_runs, alone.joinpath)
    width, height = _png_size(alone / "rd_plane.png")
    assert width == 960 and height < width
