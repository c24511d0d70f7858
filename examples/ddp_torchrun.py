"""Multi-process training on CPU with ``torchrun`` (gloo) and diagnostics synced across ranks.

Each rank trains a DistributedDataParallel VAE on its shard of the 8x8 digits that ship with
rdloss. The torchmetrics diagnostics are updated with each rank's own examples; their
``compute()`` all-reduces the sums, so every rank gets the value over the whole dataset.
At the end rank 0 also evaluates the (identical) model on the full evaluation set alone and
prints both numbers: they agree. Run:

    torchrun --nproc_per_node=2 examples/ddp_torchrun.py

Without ``torchrun`` the script runs as a single process (world size 1).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import rdloss
from rdloss import helpers, marginals
from rdloss.demo.data import load_digits
from rdloss.diagnostics import ActiveUnits, RateDistortion


class VAE(nn.Module):
    def __init__(self, latent_dim: int = 8, hidden: int = 128) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 64)
        )

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.distributions.Distribution, torch.distributions.Distribution, torch.Tensor]:
        # DDP syncs gradients of what forward() computes, so encode and decode here.
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        posterior = helpers.normal(mu, logvar=logvar)
        z = mu + noise * (0.5 * logvar).exp()
        return posterior, helpers.bernoulli(logits=self.decoder(z)), mu


def evaluate(
    model: nn.Module,
    loss_fn: rdloss.RateDistortionLoss,
    x: torch.Tensor,
    noise: torch.Tensor,
    *,
    sync: bool = True,
) -> tuple[RateDistortion, ActiveUnits]:
    """Update fresh metrics with this process's examples (noise fixed per example)."""
    rd, active = RateDistortion(sync_on_compute=sync), ActiveUnits(sync_on_compute=sync)
    with torch.no_grad():
        for xb, nb in zip(x.split(100), noise.split(100), strict=True):
            posterior, likelihood, mu = model(xb, nb)
            out = loss_fn(xb, posterior=posterior, likelihood=likelihood)
            rd.update(out)
            active.update(mu)
    return rd, active


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="directory for rank<r>.json results")
    args = parser.parse_args(argv)

    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1

    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP also broadcasts)
    images = load_digits().images
    train, test = images[:1500], images[1500:]
    vae = VAE()
    model = DistributedDataParallel(vae) if distributed else vae
    loss_fn = rdloss.RateDistortionLoss(marginal=marginals.StandardNormal(8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dataset = TensorDataset(train)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, seed=args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    noise_gen = torch.Generator().manual_seed(args.seed + 1 + rank)

    step, epoch = 0, 0
    while step < args.steps:
        sampler.set_epoch(epoch)
        train_rd = RateDistortion()  # synced over ranks at compute()
        for (x,) in loader:
            posterior, likelihood, _ = model(x, torch.randn(x.shape[0], 8, generator=noise_gen))
            out = loss_fn(x, posterior=posterior, likelihood=likelihood)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            train_rd.update(out)
            step += 1
            if step == args.steps:
                break
        synced = train_rd.compute()  # collective: every rank must call it
        if rank == 0 and (epoch % 10 == 0 or step == args.steps):
            print(
                f"epoch {epoch:3d} step {step:5d}  "
                f"train R {synced.rate:.3f}  D {synced.distortion:.3f}"
            )
        epoch += 1

    # Evaluation: each rank takes every world-th example; the noise is fixed per example.
    eval_noise = torch.randn(test.shape[0], 8, generator=torch.Generator().manual_seed(123))
    rd, active = evaluate(vae, loss_fn, test[rank::world], eval_noise[rank::world])
    synced_rd, synced_active = rd.compute(), active.compute()
    result = {
        "rank": rank,
        "world_size": world,
        "rate": float(synced_rd.rate),
        "distortion": float(synced_rd.distortion),
        "active_units": int(synced_active.num_active),
    }
    if rank == 0:
        # The same metrics without syncing, on the whole evaluation set in this process.
        local_rd, local_active = evaluate(vae, loss_fn, test, eval_noise, sync=False)
        single = local_rd.compute()
        result |= {
            "single_rate": float(single.rate),
            "single_distortion": float(single.distortion),
            "single_active_units": int(local_active.compute().num_active),
        }
        print(
            f"eval over {world} processes (synced): R {result['rate']:.4f}  "
            f"D {result['distortion']:.4f}  active units {result['active_units']}\n"
            f"eval in one process (all data):  R {result['single_rate']:.4f}  "
            f"D {result['single_distortion']:.4f}  active units {result['single_active_units']}"
        )
    if args.out is not None:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(result))
    if distributed:
        # Rank 0 evaluates once more on its own: wait for it, so that no rank tears the
        # group down while another still uses it (gloo then aborts the process).
        dist.barrier()
        # Torch 2.3's gloo destroy_process_group can hang even after the barrier (1 run in 12
        # here; pytorch/pytorch#75097); there the process's exit closes the group. Later
        # releases abort at exit if the group is still alive, so they destroy it.
        if torch.__version__ >= "2.4":
            dist.destroy_process_group()
    return result


if __name__ == "__main__":
    main()
