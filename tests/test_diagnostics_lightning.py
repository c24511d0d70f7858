"""rdloss' metrics logged by ``self.log`` under both package names of Lightning 2.x."""

from __future__ import annotations

import csv
import importlib.util
import math

import pytest
import torch
from torch import nn

from rdloss import RateDistortionLoss, helpers
from rdloss.diagnostics import (
    ActiveUnits,
    MutualInformation,
    MutualInformationBounds,
    RateDistortion,
)
from rdloss.marginals import StandardNormal

pytest.importorskip("lightning")

LATENT, DATA = 3, 8


class _TinyVAE:
    """The module's body; `_module` mixes it into a package's ``LightningModule``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(DATA, 2 * LATENT)
        self.decoder = nn.Linear(LATENT, DATA)
        self.loss_fn = RateDistortionLoss(StandardNormal(LATENT))
        # One field each, so that self.log(name, metric) gets a tensor.
        self.rate = RateDistortion(output="rate")
        self.elbo = RateDistortion(output="elbo", data_dims=DATA)
        self.upper = MutualInformationBounds(output="entropy_upper")
        self.active = ActiveUnits(output="num_active")
        self.mi = MutualInformation(
            StandardNormal(LATENT), tc_samples=16, output="mutual_information"
        )

    def training_step(self, batch, batch_idx):
        (x,) = batch
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        posterior = helpers.normal(mu, logvar=logvar)
        out = self.loss_fn(
            x, posterior=posterior, decoder=lambda z: helpers.bernoulli(logits=self.decoder(z))
        )
        for metric in (self.rate, self.elbo, self.upper):
            metric.update(out)
        self.active.update(mu)
        self.mi.update(posterior)
        for name in ("rate", "elbo", "upper", "active", "mi"):
            self.log(f"train/{name}", getattr(self, name), on_step=False, on_epoch=True)
        return out.loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _module(package):
    return type("TinyVAE", (_TinyVAE, package.LightningModule), {})()


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated")
@pytest.mark.parametrize("name", ["lightning.pytorch", "pytorch_lightning"])
def test_lightning_logs_the_metrics(tmp_path, name):
    if importlib.util.find_spec(name.split(".")[0]) is None:
        pytest.skip(f"{name} is not installed")
    pl = importlib.import_module(name)
    torch.manual_seed(0)
    x = torch.randint(0, 2, (64, DATA)).float()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=16)
    model = _module(pl)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=pl.loggers.CSVLogger(tmp_path, name="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, loader)
    logged = trainer.callback_metrics
    for name in ("rate", "elbo", "upper", "active", "mi"):
        value = logged[f"train/{name}"]
        assert torch.isfinite(value).all(), name
    assert 0.0 <= logged["train/mi"].item() <= math.log(64) + 1e-5
    assert logged["train/rate"].item() >= 0.0
    csv_files = sorted(tmp_path.rglob("metrics.csv"))
    with open(csv_files[0]) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/rate")]
    assert len(rows) == 2  # one value per epoch, the metric reset in between
    assert all(math.isfinite(float(r["train/elbo"])) for r in rows)
