"""Log rate, distortion, ELBO and the rate-distortion trajectory figure to TensorBoard.

A small VAE on the 8x8 digits that ship with rdloss, trained with ``TargetRate`` (the
paper's fix: ``D + |sigma - R|``) so the trajectory visibly moves towards ``R = sigma``.
Needs ``pip install tensorboard``. Run ``python examples/tensorboard_logging.py`` and then
``tensorboard --logdir runs``.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

import rdloss
from rdloss import helpers, marginals, objectives
from rdloss.demo.data import load_digits
from rdloss.diagnostics import RateDistortion
from rdloss.plot import trajectory


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--target-rate", type=float, default=8.0, help="sigma, nats")
    parser.add_argument("--log-dir", default="runs/rdloss")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    images = load_digits().images
    train, test = images[:1500], images[1500:]
    encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 16))
    decoder = nn.Sequential(nn.Linear(8, 128), nn.ReLU(), nn.Linear(128, 64))
    loss_fn = rdloss.RateDistortionLoss(
        marginal=marginals.StandardNormal(8), objective=objectives.TargetRate(args.target_rate)
    )
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)

    def run(x: torch.Tensor) -> rdloss.RDOutput:
        mu, logvar = encoder(x).chunk(2, dim=-1)
        return loss_fn(
            x,
            posterior=helpers.normal(mu, logvar=logvar),
            decoder=lambda z: helpers.bernoulli(logits=decoder(z)),
        )

    history: dict[str, list[float]] = {"rate": [], "distortion": [], "elbo": []}
    with SummaryWriter(args.log_dir) as writer:
        step = 0
        for _ in range(args.epochs):
            for x in train[torch.randperm(len(train))].split(64):
                out = run(x)
                optimizer.zero_grad()
                out.loss.backward()
                optimizer.step()
                step += 1
                if step % 10 == 0:  # out.metrics() syncs once for all numbers
                    for key, value in out.metrics().items():
                        writer.add_scalar(f"train/{key}", value, step)
            test_rd = RateDistortion()
            with torch.no_grad():
                for x in test.split(100):
                    test_rd.update(run(x))
            result = test_rd.compute()
            for key in history:
                history[key].append(float(getattr(result, key)))
                writer.add_scalar(f"test/{key}", history[key][-1], step)
            writer.add_scalar("test/rate_bits", float(result.rate_bits), step)
        ax = trajectory(history["rate"], history["distortion"], label=f"sigma = {args.target_rate}")
        ax.set_title("test-set R and D after each epoch")
        writer.add_figure("rd/trajectory", ax.figure, global_step=step)
        plt.close(ax.figure)
    print(
        f"after {args.epochs} epochs: test R {history['rate'][-1]:.3f}  "
        f"D {history['distortion'][-1]:.3f}  ELBO {history['elbo'][-1]:.3f} nats; "
        f"logged to {args.log_dir}"
    )
    return history


if __name__ == "__main__":
    main()
