"""Checkpointing VAE training run for the crash-and-resume test (`tests/test_resume.py`).

Run as ``python tests/resume_train.py RUN_DIR --steps T --every N``. Side by side on the
same batches, one small float64 MLP VAE per objective is trained with
`rdloss.RateDistortionLoss` and a learnable `GaussianMixture` marginal (so the rate is a
Monte Carlo estimate that consumes the global torch RNG): a `RateController` (set point on a
`Cyclical` schedule, ``kp`` on a `Linear` one), `GECO` (`Cosine` bound, `Linear` step
size) and a `Beta` warm-up (`Linear`). Each run updates `RateDistortion` and
`MutualInformationBounds` (computed and reset every epoch) and `ActiveUnits` (never reset)
every step. Training several objectives in one process keeps the test to two interpreters.

Every ``N`` steps the complete state is written atomically (bytes to ``ckpt.pt.tmp``, then
``os.replace``): models, losses (marginal parameters and objective buffers), Adam states,
metric states, the torch, python ``random`` and data-order generator states, the epoch
permutation and the position in it. A run directory that holds ``ckpt.pt`` resumes from it;
a left-over ``ckpt.pt.tmp`` is ignored. One JSON line per step goes to ``log.jsonl`` with
every float as ``float.hex`` (exact); ``final.pt`` holds the end state.

``--stall-at S`` makes the write of the step-``S`` checkpoint stop halfway through the
temporary file, print ``STALL S`` and block on stdin, so a test can kill the process
mid-write at a known point instead of guessing with sleeps. Progress lines
(``CHECKPOINT k``, ``RESUMED k``, ``DONE``) go to stdout, flushed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rdloss import RateDistortionLoss, helpers
from rdloss.diagnostics import ActiveUnits, MutualInformationBounds, RateDistortion
from rdloss.marginals import GaussianMixture
from rdloss.objectives import GECO, Beta, Objective, RateController
from rdloss.schedules import Cosine, Cyclical, Linear

__all__ = ["build", "main"]

N_DATA, DIM, LATENT, HIDDEN, BATCH = 96, 12, 3, 16, 16


def _data() -> Tensor:
    """``(N_DATA, DIM)`` binary patterns: 6 prototypes with 5% bit flips."""
    g = torch.Generator().manual_seed(1234)
    protos = torch.randint(0, 2, (6, DIM), generator=g).double()
    index = torch.randint(0, 6, (N_DATA,), generator=g)
    noise = (torch.rand(N_DATA, DIM, generator=g) < 0.05).double()
    return (protos[index] + noise) % 2


class VAE(nn.Module):
    """MLP encoder ``x -> (mu, logvar)`` and Bernoulli decoder ``z -> logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 2 * LATENT)
        )
        self.decoder = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, DIM))

    def posterior(self, x: Tensor) -> torch.distributions.Distribution:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return helpers.normal(mu, logvar=logvar)

    def likelihood(self, z: Tensor) -> torch.distributions.Distribution:
        return helpers.bernoulli(logits=self.decoder(z))


def _objective(kind: str, steps: int) -> Objective:
    if kind == "controller":
        return RateController(
            Cyclical(0.3, 0.9, steps=steps, cycles=2),
            kp=Linear(1.0, 0.2, steps=steps),
            ki=0.05,
            beta_max=2.0,
        )
    if kind == "geco":
        return GECO(Cosine(6.0, 4.0, steps=steps), alpha=0.9, lr=Linear(0.05, 0.01, steps=steps))
    return Beta(Linear(0.0, 1.0, steps=steps // 2))


def _run(kind: str, steps: int) -> dict[str, Any]:
    """Model, loss, optimizer and metrics of one objective."""
    model = VAE().double()
    marginal = GaussianMixture(LATENT, n_components=4)
    # "mc" explicitly: the same estimator whatever KLs another module may have registered
    loss_fn = RateDistortionLoss(marginal, _objective(kind, steps), rate_estimator="mc").double()
    metrics = {"rd": RateDistortion(), "bounds": MutualInformationBounds(), "active": ActiveUnits()}
    for metric in metrics.values():
        metric.set_dtype(torch.float64)
    params = [*model.parameters(), *loss_fn.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    return {"model": model, "loss_fn": loss_fn, "optimizer": optimizer, "metrics": metrics}


def build(kinds: list[str], steps: int) -> dict[str, Any]:
    """Fresh seeded runs (one per objective, trained side by side on the same batches)."""
    torch.manual_seed(0)
    random.seed(0)
    order = torch.Generator().manual_seed(99)
    return {
        "runs": {kind: _run(kind, steps) for kind in kinds},
        "order": order,
        "perm": torch.randperm(N_DATA, generator=order),
        "pos": 0,
        "step": 0,
    }


def _state(trainer: dict[str, Any]) -> dict[str, Any]:
    runs = {
        kind: {
            "model": run["model"].state_dict(),
            "loss_fn": run["loss_fn"].state_dict(),
            "optimizer": run["optimizer"].state_dict(),
            "metrics": {k: m.state_dict() for k, m in run["metrics"].items()},
        }
        for kind, run in trainer["runs"].items()
    }
    return {
        "runs": runs,
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "order_rng": trainer["order"].get_state(),
        "perm": trainer["perm"].clone(),
        "pos": trainer["pos"],
        "step": trainer["step"],
    }


def _restore(trainer: dict[str, Any], state: dict[str, Any]) -> None:
    for kind, run in trainer["runs"].items():
        saved = state["runs"][kind]
        run["model"].load_state_dict(saved["model"])
        run["loss_fn"].load_state_dict(saved["loss_fn"])
        run["optimizer"].load_state_dict(saved["optimizer"])
        for key, metric in run["metrics"].items():
            metric.load_state_dict(saved["metrics"][key])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    trainer["order"].set_state(state["order_rng"])
    trainer["perm"], trainer["pos"], trainer["step"] = state["perm"], state["pos"], state["step"]


def save_atomic(obj: object, path: Path, *, stall: bool = False) -> None:
    """Write ``obj`` to ``path`` via a temporary file and ``os.replace`` (never half a file)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data[: len(data) // 2])
        if stall:  # the test kills us here, with half the bytes on disk
            f.flush()
            os.fsync(f.fileno())
            print(f"STALL {obj['step']}", flush=True)  # type: ignore[index]
            sys.stdin.read()
        f.write(data[len(data) // 2 :])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _hex(t: Tensor) -> list[str]:
    return [float(v).hex() for v in t.detach().reshape(-1).tolist()]


def _train_step(run: dict[str, Any], x: Tensor, end_of_epoch: bool) -> dict[str, Any]:
    model, loss_fn, metrics = run["model"], run["loss_fn"], run["metrics"]
    posterior = model.posterior(x)
    out = loss_fn(x, posterior=posterior, decoder=model.likelihood)
    run["optimizer"].zero_grad()
    out.loss.backward()
    run["optimizer"].step()
    metrics["rd"].update(out)
    metrics["bounds"].update(out)
    metrics["active"].update(posterior)
    record: dict[str, Any] = {
        "loss": _hex(out.loss),
        "hyper": {k: _hex(v) for k, v in out.hyper.items()},
        "objective": {k: _hex(v) for k, v in loss_fn.objective.state_dict().items()},
        "metrics": {k: {n: _hex(v) for n, v in m.state_dict().items()} for k, m in metrics.items()},
    }
    if end_of_epoch:  # compute, then reset the per-epoch metrics (ActiveUnits runs on)
        record["epoch_elbo"] = _hex(metrics["rd"].compute().elbo)
        record["entropy_upper"] = _hex(metrics["bounds"].compute().entropy_upper)
        metrics["rd"].reset()
        metrics["bounds"].reset()
    return record


def _step(trainer: dict[str, Any], data: Tensor) -> dict[str, Any]:
    """One step of every run on the same batch; returns the log record."""
    x = data[trainer["perm"][trainer["pos"] : trainer["pos"] + BATCH]]
    # python's random picks the corruption level, torch's global RNG the flips (and z).
    flip = torch.rand(x.shape, dtype=x.dtype) < random.uniform(0.0, 0.05)
    x = torch.where(flip, 1.0 - x, x)
    trainer["step"] += 1
    trainer["pos"] += BATCH
    end_of_epoch = trainer["pos"] >= N_DATA
    record = {kind: _train_step(run, x, end_of_epoch) for kind, run in trainer["runs"].items()}
    if end_of_epoch:
        trainer["perm"], trainer["pos"] = torch.randperm(N_DATA, generator=trainer["order"]), 0
    return {"step": trainer["step"], **record}


def main(argv: list[str] | None = None) -> None:
    """Train (or resume) to ``--steps``, checkpointing every ``--every`` steps."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=8)
    parser.add_argument("--objectives", default="controller,geco,beta", help="comma-separated")
    parser.add_argument("--stall-at", type=int, default=None)
    args = parser.parse_args(argv)
    # One thread on CPU makes every kernel here bitwise reproducible. Not
    # torch.use_deterministic_algorithms: it only concerns CUDA/scatter kernels we do not
    # use, and imports torch._inductor (seconds per process).
    torch.set_num_threads(1)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = args.run_dir / "ckpt.pt"
    trainer = build(args.objectives.split(","), args.steps)
    if ckpt.exists():
        _restore(trainer, torch.load(ckpt, weights_only=False))
        print(f"RESUMED {trainer['step']}", flush=True)
    data = _data()
    with open(args.run_dir / "log.jsonl", "a") as log:
        while trainer["step"] < args.steps:
            log.write(json.dumps(_step(trainer, data)) + "\n")
            log.flush()
            step = trainer["step"]
            if step % args.every == 0:
                save_atomic(_state(trainer), ckpt, stall=step == args.stall_at)
                print(f"CHECKPOINT {step}", flush=True)
    save_atomic(_state(trainer), args.run_dir / "final.pt")
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
