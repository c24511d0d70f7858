"""A LightningModule that trains with rdloss and logs rate, distortion and diagnostics.

The loss's per-batch numbers go through ``self.log(name, float)``; the dataset-level
diagnostics are torchmetrics objects logged with ``self.log(name, metric)``, so Lightning
calls ``compute``/``reset`` at epoch end (and syncs them across processes under DDP).
Data: the 8x8 binarised digits that ship with rdloss. Run:
``python examples/lightning_module.py`` (metrics go to ``lightning_logs/`` as CSV).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rdloss
from rdloss import helpers, marginals, objectives
from rdloss.demo.data import load_digits
from rdloss.diagnostics import ActiveUnits, MutualInformationBounds, RateDistortion


class LitVAE(L.LightningModule):
    def __init__(self, latent_dim: int = 8, hidden: int = 128, beta: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 64)
        )
        self.loss_fn = rdloss.RateDistortionLoss(
            marginal=marginals.StandardNormal(latent_dim), objective=objectives.Beta(beta)
        )
        # One field per metric object, so that self.log gets a tensor from compute().
        self.val_rate = RateDistortion(output="rate")
        self.val_distortion = RateDistortion(output="distortion")
        self.val_bits_per_dim = RateDistortion(output="bits_per_dim", data_dims=64)
        self.val_entropy_upper = MutualInformationBounds(output="entropy_upper")
        self.val_active_units = ActiveUnits(output="num_active")

    def _step(self, x: torch.Tensor) -> tuple[rdloss.RDOutput, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        out = self.loss_fn(
            x,
            posterior=helpers.normal(mu, logvar=logvar),
            decoder=lambda z: helpers.bernoulli(logits=self.decoder(z)),
        )
        return out, mu

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        out, _ = self._step(batch[0])
        # out.metrics() is one host sync for all numbers; on_epoch averages them per epoch.
        self.log_dict(out.metrics(prefix="train/"), on_step=True, on_epoch=True)
        return out.loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        out, mu = self._step(batch[0])
        for metric in (self.val_rate, self.val_distortion, self.val_bits_per_dim):
            metric.update(out)
        self.val_entropy_upper.update(out)
        self.val_active_units.update(mu)
        self.log("val/rate", self.val_rate)
        self.log("val/distortion", self.val_distortion)
        self.log("val/bits_per_dim", self.val_bits_per_dim)
        self.log("val/entropy_upper", self.val_entropy_upper)
        self.log("val/active_units", self.val_active_units)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--limit-batches", type=int, default=None, help="batches per epoch")
    parser.add_argument("--log-dir", default="lightning_logs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    L.seed_everything(args.seed, verbose=False)
    images = load_digits().images
    train = DataLoader(TensorDataset(images[:1500]), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(images[1500:]), batch_size=100)
    logger = CSVLogger(args.log_dir, name="rdloss")
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
        limit_train_batches=args.limit_batches,
        limit_val_batches=args.limit_batches,
    )
    trainer.fit(LitVAE(), train, val)
    final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    print("  ".join(f"{k} {v:.3f}" for k, v in sorted(final.items())))
    print(f"metrics written to {Path(logger.log_dir) / 'metrics.csv'}")
    return final


def read_metrics(log_dir: str | Path) -> list[dict[str, str]]:
    """Rows of the CSV a run wrote (for checking what was logged)."""
    (path,) = Path(log_dir).glob("rdloss/version_*/metrics.csv")
    with path.open() as f:
        return list(csv.DictReader(f))


if __name__ == "__main__":
    main()
