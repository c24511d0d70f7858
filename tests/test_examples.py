"""Every recipe under ``examples/`` runs in a reduced setting and reports correct numbers.

The scripts are loaded with ``runpy`` (imports shared, ``main(argv)`` called in-process);
the DDP recipe runs under ``torchrun`` with two gloo processes on the loopback address.
Each check compares a script's numbers with an independent computation.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from rdloss.demo.data import load_digits

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@cache
def _script(name: str) -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")


def test_after_loss_is_the_classic_batch_sum_divided_by_the_batch_size() -> None:
    before, after = _script("pytorch_examples_before"), _script("pytorch_examples_after")
    model = before["VAE"]()
    train_set, _ = before["mnist_like"](n_train=128)
    x = train_set.tensors[0]
    recon, mu, logvar = model(x)
    classic = before["loss_function"](recon, x, mu, logvar)
    out = after["loss_function"](recon, x, mu, logvar)
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    bce = F.binary_cross_entropy(recon, x.view(-1, 784), reduction="sum")
    assert_close(out.loss * len(x), classic, rtol=1e-5, atol=0.0)
    assert_close(out.rate * len(x), kld, rtol=1e-5, atol=0.0)
    assert_close(out.distortion * len(x), bce, rtol=1e-5, atol=0.0)


def test_before_and_after_train_to_the_same_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--epochs", "1", "--n-train", "256"]
    before = _script("pytorch_examples_before")["main"](argv)
    after = _script("pytorch_examples_after")["main"](argv)
    # Adam is invariant to the loss scale (sum vs mean) up to its eps.
    assert_close(torch.tensor(after), torch.tensor(before), rtol=2e-3, atol=0.0)
    assert "R " in capsys.readouterr().out


def test_docs_show_the_current_before_after_diff() -> None:
    names = ["examples/pytorch_examples_before.py", "examples/pytorch_examples_after.py"]
    old, new = ((ROOT / n).read_text().splitlines(keepends=True) for n in names)
    diff = "".join(difflib.unified_diff(old, new, *names))
    assert diff in (ROOT / "docs" / "recipes.md").read_text()


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated")
@pytest.mark.filterwarnings("ignore:.*does not have many workers")
@pytest.mark.filterwarnings("ignore:The number of training batches")
def test_lightning_module_logs_rate_distortion_and_diagnostics(tmp_path: Path) -> None:
    script = _script("lightning_module")
    final = script["main"](["--epochs", "1", "--limit-batches", "3", "--log-dir", str(tmp_path)])
    rows = script["read_metrics"](tmp_path)
    columns = set(rows[0])
    assert {"train/rate_epoch", "train/distortion_epoch", "train/elbo_epoch"} <= columns
    expected = {"val/rate", "val/distortion", "val/bits_per_dim", "val/entropy_upper"}
    assert expected | {"val/active_units"} <= set(final)
    # One epoch: the best -ELBO is this epoch's D + R, and bits/dim is (D + R) / (64 ln 2).
    total = final["val/rate"] + final["val/distortion"]
    assert final["val/entropy_upper"] == pytest.approx(total, rel=1e-5)
    assert final["val/bits_per_dim"] == pytest.approx(total / (64 * math.log(2)), rel=1e-5)
    (epoch_row,) = (r for r in rows if r["train/rate_epoch"])
    assert math.isfinite(float(epoch_row["train/rate_epoch"]))


def test_ddp_torchrun_two_processes_sync_the_diagnostics(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun)] if torchrun.exists() else [shutil.which("torchrun") or "torchrun"]
    command += [
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(EXAMPLES / "ddp_torchrun.py"),
        "--steps",
        "3",
        "--out",
        str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for key in ("rate", "distortion", "active_units"):
        assert ranks[0][key] == ranks[1][key]
        # Sums synced over the two shards equal one process on the union of the data.
        assert ranks[0][key] == pytest.approx(ranks[0][f"single_{key}"], rel=1e-6)
    assert "eval over 2 processes (synced)" in done.stdout


def test_tensorboard_event_file_holds_scalars_and_trajectory(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    history = _script("tensorboard_logging")["main"](["--epochs", "2", "--log-dir", str(tmp_path)])
    assert list(tmp_path.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/rate", "train/distortion", "train/elbo", "train/loss"} <= scalars
    assert {"test/rate", "test/distortion", "test/elbo", "test/rate_bits"} <= scalars
    assert events.Tags()["images"] == ["rd/trajectory"]
    logged = [e.value for e in events.Scalars("test/rate")]
    assert logged == pytest.approx(history["rate"], rel=1e-6)
    bits = [e.value for e in events.Scalars("test/rate_bits")]
    assert bits == pytest.approx([r / math.log(2) for r in history["rate"]], rel=1e-5)


def test_flow_marginal_uses_the_monte_carlo_rate() -> None:
    pytest.importorskip("zuko")
    standard, flow = _script("flow_marginal")["main"](["--epochs", "1"])
    assert (standard.estimator, flow.estimator) == ("analytic", "mc")
    for r in (standard, flow):
        assert r.rate > 0 and math.isfinite(r.distortion)
        assert r.elbo == pytest.approx(-(r.rate + r.distortion), rel=1e-6)


def test_discrete_enumeration_is_exact() -> None:
    result = _script("discrete_enumeration")["main"](["--epochs", "1", "--clusters", "5"])
    x = load_digits().images[1500:]
    with torch.no_grad():
        log_q = result.encoder(x).log_softmax(-1)
        log_m = result.loss_fn.marginal.logits.log_softmax(-1)
        # Brute force: decode every one of the K codes for every example.
        d_k = torch.stack(
            [
                F.binary_cross_entropy_with_logits(
                    result.decoder(F.one_hot(torch.tensor(k), 5).float()).expand_as(x),
                    x,
                    reduction="none",
                ).sum(-1)
                for k in range(5)
            ],
            dim=-1,
        )
    q = log_q.exp()
    assert result.distortion == pytest.approx(float((q * d_k).sum(-1).mean()), rel=1e-5)
    assert result.rate == pytest.approx(float((q * (log_q - log_m)).sum(-1).mean()), rel=1e-4)
    assert 0.0 <= result.rate <= math.log(5)
    assert sum(result.cluster_usage) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("lmbda", [0.0018, 0.18])
def test_compressai_objective_maps_to_beta_one_over_lambda(lmbda: float) -> None:
    r = _script("from_compressai")["main"](["--lmbda", str(lmbda), "--size", "16"])
    assert r.beta == pytest.approx(1 / lmbda, rel=1e-12)
    assert r.rdloss_rate_bpp == pytest.approx(r.bpp, rel=1e-10)
    assert r.rdloss_loss - r.constant == pytest.approx(r.compressai_loss_in_nats, rel=1e-10)
    assert r.gradient_cosine == pytest.approx(1.0, abs=1e-10)


def test_scripts_run_as_commands() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "from_compressai.py"), "--size", "8", "--batch", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cosine of the two gradients" in done.stdout


def test_dreamerv3_world_model_kl_term_is_dreamers_and_the_heads_train() -> None:
    result = _script("dreamerv3_world_model")["main"](["--quick", "--steps", "8"])
    assert result.max_rel_diff <= 1e-10  # the script's own float64 check against DreamerV3
    assert set(result.last_terms) == {"kl", "rec", "rew", "con"}
    assert all(math.isfinite(v) and v >= 0 for v in result.last_terms.values())
    # The world-model loss is the KL term plus the three scaled heads, nothing else.
    assert result.last_loss == pytest.approx(sum(result.last_terms.values()), rel=1e-6)
