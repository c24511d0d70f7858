"""`CodebookUsage` and `codebook_usage`: codebook usage over an epoch, any batching, any split.

Every report is checked against a direct ``torch.bincount`` of the whole epoch's codes and
an entropy written out here (``-sum p log p`` over the used codes), not against the
module's own helpers. Batchings of 1, 7 and the whole epoch, and two gloo processes, must
give the same report bit for bit (the counts are an int64 sum state).
"""

from __future__ import annotations

import math
import os
import runpy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _ddp import close_group, open_group
from torch.testing import assert_close

from benchmarks._counting import count
from rdloss.diagnostics import CodebookUsage
from rdloss.diagnostics.functional import CodebookReport, codebook_usage

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
N, L, G, K = 45, 5, 3, 16  # examples, positions per example, codebooks, codes per codebook
EXACT = {"rtol": 0.0, "atol": 0.0}


def _epoch(seed: int = 0) -> torch.Tensor:
    """``(N, L, G)`` int64 codes: skewed per codebook, codes 12..15 of codebook 0 unused."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.stack(
        [
            torch.cat([1.0 / torch.arange(1.0, 13.0), torch.zeros(4)]),  # Zipf, 4 dead
            torch.rand(K, generator=g),
            torch.ones(K),
        ]
    )
    draws = torch.multinomial(weights, N * L, replacement=True, generator=g)  # (G, N*L)
    return draws.T.reshape(N, L, G)


def _direct(codes: torch.Tensor, size: int, threshold: int = 0) -> dict[str, torch.Tensor]:
    """The expected report from a bincount of the whole epoch, one codebook at a time."""
    rows = {"counts": [], "entropy": [], "dead": []}
    for g in range(codes.shape[-1]):
        hist = torch.bincount(codes[..., g].reshape(-1), minlength=size)
        p = hist[hist > 0].double() / hist.sum()
        rows["counts"].append(hist)
        rows["entropy"].append(-(p * p.log()).sum())
        rows["dead"].append((hist <= threshold).sum())
    counts, entropy = torch.stack(rows["counts"]), torch.stack(rows["entropy"])
    return {
        "counts": counts,
        "entropy": entropy,
        "perplexity": entropy.exp(),
        "slack": math.log(size) - entropy,
        "dead_codes": torch.stack(rows["dead"]),
        "positions": torch.tensor(codes[..., 0].numel()),
    }


def _stream(codes: torch.Tensor, batch: int, **kwargs: Any) -> CodebookReport:
    metric = CodebookUsage(K, codebooks=codes.shape[-1], **kwargs)
    for chunk in codes.split(batch):
        metric.update(chunk)
    return metric.compute()


def _assert_same(got: CodebookReport, want: CodebookReport) -> None:
    for name, g, w in zip(want._fields, got, want, strict=True):
        if w is None:
            assert g is None, name
        else:
            assert_close(g, w, **EXACT, msg=lambda m, n=name: f"{n}: {m}")


# --- against the direct count --------------------------------------------------------------


def test_report_equals_a_direct_bincount_of_the_epoch() -> None:
    codes = _epoch()
    want = _direct(codes, K)
    got = _stream(codes, 7, data_dims=20)
    assert_close(got.counts, want["counts"], **EXACT)
    assert got.counts.dtype == torch.int64
    assert_close(got.entropy, want["entropy"])
    assert_close(got.perplexity, want["perplexity"])
    assert_close(got.slack, want["slack"])
    assert_close(got.entropy_bits, want["entropy"] / math.log(2))
    assert_close(got.slack_bits, want["slack"] / math.log(2))
    assert_close(got.dead_codes, want["dead_codes"], **EXACT)
    assert got.dead_codes.tolist()[0] == 4  # the four zero-weight codes of codebook 0
    assert_close(got.dead_fraction, want["dead_codes"].double() / K)
    assert_close(got.positions, want["positions"], **EXACT)
    assert int(got.positions) == N * L and int(got.examples) == N
    assert_close(got.nominal_rate, torch.tensor(G * math.log(K), dtype=torch.float64))
    assert_close(got.nominal_rate_bits, torch.tensor(G * 4.0, dtype=torch.float64))
    # 5 positions x 3 codes x 4 bits over 20 data dimensions
    assert_close(got.nominal_bits_per_dim, torch.tensor(3.0, dtype=torch.float64))
    assert got.entropy.dtype == got.perplexity.dtype == torch.float64


def test_batch_sizes_one_seven_and_the_whole_epoch_agree_bit_for_bit() -> None:
    codes = _epoch()
    whole = _stream(codes, N, data_dims=20)
    for batch in (1, 7):
        _assert_same(_stream(codes, batch, data_dims=20), whole)
    _assert_same(codebook_usage(codes, K, codebooks=G, data_dims=20), whole)


def _lengths_mask(seed: int = 1) -> torch.Tensor:
    """``(N, L)``: sequences padded after a random length in 0..L (0: padding only)."""
    lengths = torch.randint(0, L + 1, (N, 1), generator=torch.Generator().manual_seed(seed))
    mask = torch.arange(L) < lengths
    assert mask.any() and (~mask).any()
    return mask


def test_masked_positions_are_not_counted_for_any_batching() -> None:
    codes, mask = _epoch(), _lengths_mask()
    padded = torch.where(mask[..., None], codes, torch.full_like(codes, -1))  # pad id -1
    want = _direct(codes[mask], K)  # (real positions, G): only the real positions
    reports = []
    for batch in (1, 7, N):
        metric = CodebookUsage(K, codebooks=G, data_dims=20)
        for chunk, m in zip(padded.split(batch), mask.split(batch), strict=True):
            metric.update(chunk, mask=m)
        reports.append(metric.compute())
    reports.append(codebook_usage(padded, K, codebooks=G, data_dims=20, mask=mask))
    for got in reports:
        _assert_same(got, reports[0])
    got = reports[0]
    assert_close(got.counts, want["counts"], **EXACT)
    assert_close(got.entropy, want["entropy"])
    assert_close(got.dead_codes, want["dead_codes"], **EXACT)
    assert int(got.positions) == int(mask.sum()) and int(got.examples) == N
    # mean real positions per example x 3 codes x 4 bits over 20 data dimensions
    expected_bpd = mask.sum().double() / N * G * 4.0 / 20
    assert_close(got.nominal_bits_per_dim, expected_bpd)


def test_a_mask_of_one_codebooks_positions_has_the_indices_shape() -> None:
    codes = _epoch()[..., 0]  # (N, L) tokens of one codebook
    mask = _lengths_mask(2)
    metric = CodebookUsage(K)
    metric.update(torch.where(mask, codes, torch.full_like(codes, K + 3)), mask=mask)
    assert_close(metric.compute().counts[0], torch.bincount(codes[mask], minlength=K), **EXACT)


def test_bad_masks_are_refused() -> None:
    codes = _epoch()
    metric = CodebookUsage(K, codebooks=G)
    with pytest.raises(TypeError, match=r"mask\.bool\(\)"):
        metric.update(codes, mask=torch.ones(N, L))
    with pytest.raises(ValueError, match=r"positions' shape \(B, \.\.\.\) = \(45, 5\)"):
        metric.update(codes, mask=torch.ones(N, L, G, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        metric.update(codes, mask=[True] * N)
    assert int(metric.counts.sum()) == 0  # nothing was counted


def test_masked_update_without_validation_never_syncs() -> None:
    codes, mask = _epoch(), _lengths_mask()
    metric = CodebookUsage(K, codebooks=G, validate_args=False)
    metric.update(codes, mask=mask)
    assert count(lambda: metric.update(codes, mask=mask)).n_syncs == 0


def test_per_batch_perplexity_depends_on_the_batch_size_and_the_epoch_report_does_not() -> None:
    # The motivating bug (vector-quantize-pytorch #63): exp(H) of each batch's histogram.
    codes = _epoch()[..., 2:]  # the uniform codebook: epoch perplexity close to K
    batch_means = [
        torch.stack([codebook_usage(c, K).perplexity for c in codes.split(b)]).mean()
        for b in (1, 7, N)
    ]
    assert batch_means[0] < batch_means[1] < batch_means[2]
    assert_close(batch_means[2], codebook_usage(codes, K).perplexity[0])


def test_each_codebook_is_counted_on_its_own() -> None:
    codes = _epoch()
    together = _stream(codes, 7)
    for g in range(G):
        alone = _stream(codes[..., g : g + 1], 7)  # (B, L, 1)
        flat = codebook_usage(codes[..., g], K)  # one codebook: (B, L), no codebook axis
        for single in (alone, flat):
            assert_close(single.counts[0], together.counts[g], **EXACT)
            assert_close(single.entropy[0], together.entropy[g], **EXACT)
            assert_close(single.dead_codes[0], together.dead_codes[g], **EXACT)
    assert len(set(together.entropy.tolist())) == G  # the codebooks do differ


def test_uniform_use_has_no_slack_and_perplexity_k() -> None:
    codes = torch.arange(K).repeat(3)[torch.randperm(3 * K)].reshape(4, -1)
    report = codebook_usage(codes, K)
    assert_close(report.slack, torch.zeros(1, dtype=torch.float64), rtol=0, atol=1e-12)
    assert_close(report.perplexity, torch.full((1,), float(K), dtype=torch.float64))
    assert_close(report.entropy_bits, torch.full((1,), 4.0, dtype=torch.float64))
    assert int(report.dead_codes) == 0
    one = codebook_usage(torch.full((5, 2), 3), K)  # a single code: collapsed
    assert_close(one.entropy, torch.zeros(1, dtype=torch.float64), **EXACT)
    assert_close(one.perplexity, torch.ones(1, dtype=torch.float64), **EXACT)
    assert_close(one.slack, torch.full((1,), math.log(K), dtype=torch.float64))
    assert int(one.dead_codes) == K - 1


@pytest.mark.parametrize("threshold", [0, 1, 2, 3])
def test_dead_codes_are_those_used_at_most_threshold_times(threshold: int) -> None:
    # code k is used k times (k = 0..4), codes 5..7 never
    codes = torch.repeat_interleave(torch.arange(5), torch.arange(5)).reshape(-1, 1)
    report = codebook_usage(codes, 8, dead_threshold=threshold)
    want = 3 + (threshold + 1)  # the never-used codes and codes 0..threshold
    assert report.dead_codes.tolist() == [want]
    assert_close(report.dead_fraction, torch.tensor([want / 8], dtype=torch.float64))
    streamed = CodebookUsage(8, dead_threshold=threshold)
    streamed.update(codes)
    assert streamed.compute().dead_codes.tolist() == [want]


def test_an_empty_epoch_reports_nan_usage_and_all_codes_dead() -> None:
    with pytest.warns(UserWarning, match="before the ``update``"):
        report = CodebookUsage(4, codebooks=2).compute()
    assert torch.isnan(report.entropy).all() and torch.isnan(report.perplexity).all()
    assert report.dead_codes.tolist() == [4, 4] and int(report.positions) == 0


# --- shapes, forward, output= and metrics() ------------------------------------------------


def test_shapes_are_kept_for_one_codebook_of_one_code() -> None:
    metric = CodebookUsage(1)
    metric.update(torch.zeros(3, dtype=torch.long))  # (B,): one position per example
    report = metric.compute()
    assert report.entropy.shape == (1,) and report.counts.shape == (1, 1)
    assert report.nominal_rate.shape == () and float(report.nominal_rate) == 0.0
    counts = CodebookUsage(1, output="counts")
    assert counts(torch.zeros(2, dtype=torch.long)).shape == (1, 1)


def test_forward_returns_the_batch_and_accumulates_the_epoch() -> None:
    codes, metric = _epoch(), CodebookUsage(K, codebooks=G)
    first = metric(codes[:10])
    _assert_same(first, codebook_usage(codes[:10], K, codebooks=G))
    metric(codes[10:])
    _assert_same(metric.compute(), codebook_usage(codes, K, codebooks=G))


def test_output_selects_one_field_with_its_shape() -> None:
    codes = _epoch()
    metric = CodebookUsage(K, codebooks=G, output="perplexity")
    metric.update(codes)
    assert_close(metric.compute(), codebook_usage(codes, K, codebooks=G).perplexity, **EXACT)
    single = CodebookUsage(K, output="slack_bits")
    single.update(codes[..., 0])
    assert single.compute().shape == (1,)
    with pytest.raises(ValueError, match="needs data_dims"):
        CodebookUsage(K, output="nominal_bits_per_dim")
    with pytest.raises(ValueError, match="output must be None or one of"):
        CodebookUsage(K, output="usage")


def test_metrics_gives_floats_per_codebook() -> None:
    codes = _epoch()
    several = codebook_usage(codes, K, codebooks=G).metrics("cb/")
    assert several["cb/entropy/2"] == pytest.approx(float(_direct(codes, K)["entropy"][2]))
    assert several["cb/dead_codes/0"] == 4.0 and several["cb/positions"] == N * L
    assert "cb/nominal_bits_per_dim" not in several and "cb/counts" not in several
    one = codebook_usage(codes[..., 0], K, data_dims=20).metrics()
    assert set(one) >= {"entropy", "perplexity", "slack", "dead_fraction", "nominal_rate"}
    assert one["nominal_bits_per_dim"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in (*several.values(), *one.values()))


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("indices", "error", "match"),
    [
        (torch.zeros(4, 5, 3), TypeError, r"indices must be an integer tensor.*torch\.float32"),
        (torch.zeros(4, 5, 3, dtype=torch.bool), TypeError, "torch.bool"),
        ([[0, 1, 2]], TypeError, "indices must be a torch.Tensor, got list"),
        (torch.zeros(4, 5, 2, dtype=torch.long), ValueError, r"\(B, \.\.\., 3\).*\(4, 5, 2\)"),
        (torch.zeros(12, dtype=torch.long), ValueError, r"\(B, \.\.\., 3\).*\(12,\)"),
        (torch.zeros(0, 3, dtype=torch.long), ValueError, "empty batch"),
        (torch.tensor([[0, 1, 16]]), ValueError, r"\[0, 16\), got values from 0 to 16"),
        (torch.tensor([[0, -1, 2]]), ValueError, r"\[0, 16\), got values from -1 to 2"),
    ],
)
def test_bad_indices_are_refused_and_leave_the_state(
    indices: Any, error: type[Exception], match: str
) -> None:
    metric = CodebookUsage(K, codebooks=3)
    metric.update(_epoch()[:2])
    before = {k: v.clone() for k, v in metric.state_dict().items()}
    with pytest.raises(error, match=match):
        metric.update(indices)
    for key, value in metric.state_dict().items():
        assert_close(value, before[key], **EXACT)
    with pytest.raises(error, match=match):
        codebook_usage(indices, K, codebooks=3)


def test_a_zero_dim_index_has_no_batch() -> None:
    with pytest.raises(ValueError, match=r"indices must have at least 1 dimension"):
        CodebookUsage(K).update(torch.tensor(3))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"codebook_size": 0}, ValueError, "codebook_size must be >= 1, got 0"),
        ({"codebook_size": 4.0}, TypeError, "codebook_size must be an int, got float"),
        ({"codebook_size": True}, TypeError, "codebook_size must be an int, got bool"),
        ({"codebook_size": 4, "codebooks": 0}, ValueError, "codebooks must be >= 1, got 0"),
        ({"codebook_size": 4, "dead_threshold": -1}, ValueError, "dead_threshold must be >= 0"),
        ({"codebook_size": 4, "dead_threshold": 0.5}, TypeError, "dead_threshold must be an int"),
        ({"codebook_size": 4, "data_dims": 0}, ValueError, "data_dims must be >= 1, got 0"),
        ({"codebook_size": 4, "validate_args": 1}, TypeError, "validate_args must be a bool"),
    ],
)
def test_bad_hyperparameters_are_refused(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        CodebookUsage(**kwargs)
    if "validate_args" not in kwargs:
        size = kwargs.pop("codebook_size")
        with pytest.raises(error, match=match):
            codebook_usage(torch.zeros(2, 1, dtype=torch.long), size, **kwargs)


def test_without_validation_update_never_syncs_with_the_host() -> None:
    codes, metric = _epoch(), CodebookUsage(K, codebooks=G, validate_args=False)
    assert count(lambda: metric.update(codes[:7])).n_syncs == 0
    assert count(lambda: CodebookUsage(K, codebooks=G).update(codes[:7])).n_syncs == 1
    _assert_same(metric.compute(), codebook_usage(codes[:7], K, codebooks=G))


def test_narrow_integer_dtypes_count_the_same() -> None:
    codes = _epoch()
    want = codebook_usage(codes, K, codebooks=G)
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
        _assert_same(codebook_usage(codes.to(dtype), K, codebooks=G), want)


# --- state: state_dict, reset, merge_state, dtype casts ------------------------------------


def test_state_dict_round_trip_reset_and_merge_state() -> None:
    codes = _epoch()
    whole = codebook_usage(codes, K, codebooks=G)
    first = CodebookUsage(K, codebooks=G)
    first.update(codes[:20])
    restored = CodebookUsage(K, codebooks=G)
    restored.load_state_dict(first.state_dict())
    restored.update(codes[20:])
    _assert_same(restored.compute(), whole)

    second = CodebookUsage(K, codebooks=G)
    second.update(codes[20:])
    merged = CodebookUsage(K, codebooks=G)
    merged.load_state_dict(first.state_dict())
    merged.merge_state(second)
    _assert_same(merged.compute(), whole)
    from_dict = CodebookUsage(K, codebooks=G)
    from_dict.merge_state(first.state_dict())
    from_dict.merge_state(second.state_dict())
    _assert_same(from_dict.compute(), whole)

    # a value computed before a merge or a load is not served from torchmetrics' cache
    stale = CodebookUsage(K, codebooks=G)
    stale.update(codes[:20])
    stale.compute()
    stale.merge_state(second)
    _assert_same(stale.compute(), whole)
    stale.load_state_dict(first.state_dict())
    _assert_same(stale.compute(), codebook_usage(codes[:20], K, codebooks=G))

    restored.reset()
    assert int(restored.counts.sum()) == 0 and int(restored.examples) == 0
    restored.update(codes)
    _assert_same(restored.compute(), whole)


def test_a_state_of_another_size_is_refused() -> None:
    metric, other = CodebookUsage(K, codebooks=G), CodebookUsage(K + 1, codebooks=G)
    other.update(_epoch()[:2])
    with pytest.raises(ValueError, match=r"counts of shape \(3, 17\).*= \(3, 16\)"):
        metric.merge_state(other)
    with pytest.raises(ValueError, match=r"counts of shape \(3, 17\)"):
        metric.merge_state(other.state_dict())
    with pytest.raises(ValueError, match=r"the state dict has counts of shape \(3, 17\)"):
        metric.load_state_dict(other.state_dict())
    assert metric.counts.shape == (G, K)


@pytest.mark.parametrize(
    ("counts", "error", "match"),
    [
        (torch.full((G, K), 1.5, dtype=torch.float64), TypeError, r"dtype torch.float64"),
        (torch.ones(G, K, dtype=torch.int32), TypeError, r"dtype torch.int32, expected"),
        (-torch.ones(G, K, dtype=torch.long), ValueError, r"negative counts \(smallest -1\)"),
    ],
)
def test_counts_that_are_not_int64_sums_are_refused(
    counts: torch.Tensor, error: type[Exception], match: str
) -> None:
    # A float or negative count would silently leave the exact int64 contract (and give
    # entropy -inf for a negative one); merging and loading refuse it before any change.
    metric = CodebookUsage(K, codebooks=G)
    metric.update(_epoch()[:2])
    before = metric.counts.clone()
    state = {**metric.state_dict(), "counts": counts}
    with pytest.raises(error, match=match):
        metric.load_state_dict(state)
    with pytest.raises(error, match=match):
        metric.merge_state(state)
    assert torch.equal(metric.counts, before) and metric.counts.dtype == torch.int64


def test_a_state_dict_without_counts_is_refused() -> None:
    metric = CodebookUsage(K, codebooks=G)
    state = CodebookUsage(K, codebooks=G).state_dict()
    del state["counts"]
    with pytest.raises(ValueError, match=r"no counts beside this metric's other states"):
        metric.load_state_dict(state)


@pytest.mark.parametrize("where", ["construction", "reset", "forward"])
def test_states_made_under_inference_mode_update_outside_it(where: str) -> None:
    # An evaluation loop under torch.inference_mode() leaves inference tensors as states;
    # the next update outside it must still count (torchmetrics' own metrics raise here).
    codes = _epoch()
    if where == "construction":
        with torch.inference_mode():
            metric = CodebookUsage(K, codebooks=G)
    else:
        metric = CodebookUsage(K, codebooks=G)
        with torch.inference_mode():
            metric.reset() if where == "reset" else metric(codes[:3])
    metric.update(codes[3:])
    first = codes[:3] if where == "forward" else codes[:0]
    _assert_same(metric.compute(), codebook_usage(torch.cat([first, codes[3:]]), K, codebooks=G))


@pytest.mark.parametrize("cast", ["double", "half", "float", "bfloat16", "set_dtype"])
def test_module_casts_keep_exact_int64_counts(cast: str) -> None:
    # 3001 uses of one code: float16 would round the count (to 3000)
    codes = torch.cat([torch.zeros(3001, dtype=torch.long), torch.arange(K)]).reshape(-1, 1)
    want = codebook_usage(codes, K)
    metric = CodebookUsage(K)
    metric.update(codes[:100])
    metric = metric.set_dtype(torch.float16) if cast == "set_dtype" else getattr(metric, cast)()
    metric.update(codes[100:])
    assert metric.counts.dtype == torch.int64 and metric.examples.dtype == torch.int64
    report = metric.compute()
    assert int(report.counts[0, 0]) == 3002
    _assert_same(report, want)
    metric.reset()
    assert metric.counts.dtype == torch.int64  # the default state is int64 too


def test_repr_names_the_hyperparameters() -> None:
    text = repr(CodebookUsage(8, codebooks=2, dead_threshold=1, output="perplexity"))
    assert "codebook_size=8, codebooks=2, dead_threshold=1, output='perplexity'" in text


# --- two processes -------------------------------------------------------------------------

# Uneven on purpose: rank 0 holds examples 0..29 in batches of 1, 7 and 22, rank 1 the rest.
RANK_BATCHES = {0: [(0, 1), (1, 8), (8, 30)], 1: [(30, 45)]}


def _run(batches: list[tuple[int, int]]) -> list[torch.Tensor]:
    codes, metric = _epoch(), CodebookUsage(K, codebooks=G, data_dims=20)
    for lo, hi in batches:
        metric.update(codes[lo:hi])
    return [v for v in metric.compute() if v is not None]


def _worker(rank: int, port: int, out_dir: str) -> None:
    open_group(rank, 2, port)
    try:
        torch.save(_run(RANK_BATCHES[rank]), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        close_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed missing")
def test_two_processes_equal_one_process_on_the_union(tmp_path: Path, free_port: Any) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _run(RANK_BATCHES[0] + RANK_BATCHES[1])
    for rank in (0, 1):
        synced = torch.load(tmp_path / f"rank{rank}.pt")
        assert len(synced) == len(single)
        for got, want in zip(synced, single, strict=True):
            assert_close(got, want, **EXACT)
    assert int(single[-3]) == N * L  # positions
    half = _run(RANK_BATCHES[0])
    assert not torch.equal(half[-1], single[-1])  # the union differs from a shard


# --- the recipe ----------------------------------------------------------------------------


def test_vq_recipe_reports_the_usage_of_its_own_codes() -> None:
    script = runpy.run_path(str(ROOT / "examples" / "vq_codebook.py"), run_name="example_vq")
    out = script["main"](["--iterations", "3", "--codebook-size", "32"])
    codes = out.codes
    assert codes.shape == (297, 4, 2)  # the held-out digits, 4 positions, 2 codebooks
    want = _direct(codes, 32)
    assert_close(out.report.counts, want["counts"], **EXACT)
    assert_close(out.report.entropy, want["entropy"])
    assert_close(out.report.dead_codes, want["dead_codes"], **EXACT)
    # the codes are the nearest code vectors of each half
    halves = script["halves"](script["load_digits"]().images[1500:])
    distances = ((halves.unsqueeze(-2) - out.codebooks) ** 2).sum(-1)  # (N, 4, 2, K)
    chosen = distances.gather(-1, codes.unsqueeze(-1)).squeeze(-1)
    assert_close(chosen, distances.amin(-1))
    # the per-batch perplexity the script prints understates the epoch's
    assert (out.batch_perplexity < out.report.perplexity).all()
    _assert_same(codebook_usage(codes, 32, codebooks=2, data_dims=64), out.report)
