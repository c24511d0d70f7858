"""rdloss.callbacks: the Lightning callback with CSV and TensorBoard loggers, and the
SummaryWriter helper. Logged numbers are compared with a direct evaluation of the model."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import rdloss
from rdloss import helpers, marginals
from rdloss.callbacks import RateDistortionCallback, log_to_tensorboard, rd_figure

L = pytest.importorskip("lightning")
pytest.importorskip("tensorboard")
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),
]

DATA = torch.Generator().manual_seed(0)
TRAIN = torch.randint(0, 2, (96, 12), generator=DATA).float()
VAL = torch.randint(0, 2, (40, 12), generator=DATA).float()


class TinyVAE(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(12, 2 * 3)
        self.net = nn.Linear(3, 12)
        self.loss_fn = rdloss.RateDistortionLoss(marginals.StandardNormal(3))

    def _step(self, x: torch.Tensor) -> tuple[rdloss.RDOutput, torch.distributions.Distribution]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        q = helpers.normal(mu, logvar=logvar)
        return self.loss_fn(
            x, posterior=q, decoder=lambda z: helpers.bernoulli(logits=self.net(z))
        ), q

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch[0])[0].loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> dict[str, object]:
        out, q = self._step(batch[0])
        return {"rd": out, "posterior": q}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _fit(logger: object, tmp_path: Path) -> tuple[TinyVAE, RateDistortionCallback]:
    torch.manual_seed(0)
    model, callback = TinyVAE(), RateDistortionCallback()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(TRAIN), batch_size=32)
    # One validation batch: the decoder's sample is then the one the check below redraws.
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(VAL), batch_size=40)
    trainer = L.Trainer(
        max_epochs=2,
        logger=logger,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        deterministic=True,
    )
    trainer.fit(model, loader, val)
    return model, callback


def _direct(model: TinyVAE) -> tuple[float, int]:
    """R (closed form) and active units of the final model on VAL, without rdloss."""
    model.eval()
    with torch.no_grad():
        mu, logvar = model.encoder(VAL).chunk(2, dim=-1)
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)  # KL(N(mu, s) || N(0, I))
        active = int((mu.var(0, unbiased=False) > 0.01).sum())
    return float(kl.mean()), active


def test_csv_logger_gets_the_numbers_and_one_figure_per_epoch(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    model, callback = _fit(logger, tmp_path)
    rows = list(csv.DictReader((Path(logger.log_dir) / "metrics.csv").open()))
    logged = [r for r in rows if r.get("val/rate")]
    assert len(logged) == 2  # two validation epochs; the sanity check is not one
    rate, active = _direct(model)
    last = logged[-1]
    assert float(last["val/rate"]) == pytest.approx(rate, rel=1e-5)
    assert float(last["val/elbo"]) == pytest.approx(
        -(float(last["val/rate"]) + float(last["val/distortion"])), rel=1e-6
    )
    assert float(last["val/active_units"]) == active
    assert [p[0] for p in callback.history] == pytest.approx([float(r["val/rate"]) for r in logged])
    pngs = sorted(p.name for p in (Path(logger.log_dir) / "rd_plane").iterdir())
    assert pngs == ["epoch=0.png", "epoch=1.png"]
    assert (Path(logger.log_dir) / "rd_plane" / "epoch=1.png").read_bytes()[:4] == b"\x89PNG"


def test_tensorboard_logger_gets_scalars_and_images(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    model, _ = _fit(logger, tmp_path)
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert {"val/rate", "val/distortion", "val/elbo", "val/active_units"} <= set(
        events.Tags()["scalars"]
    )
    assert events.Tags()["images"] == ["val/rd_plane"]
    assert len(events.Images("val/rd_plane")) == 2
    rate, _ = _direct(model)
    assert events.Scalars("val/rate")[-1].value == pytest.approx(rate, rel=1e-5)


def test_callback_state_resumes_the_figure_path() -> None:
    callback = RateDistortionCallback(figure=False)
    callback.history = [(1.0, 5.0), (1.5, 4.0)]
    fresh = RateDistortionCallback()
    fresh.load_state_dict(callback.state_dict())
    assert fresh.history == [(1.0, 5.0), (1.5, 4.0)]


def test_callback_refuses_a_validation_step_without_an_rdoutput() -> None:
    callback = RateDistortionCallback()
    with pytest.raises(TypeError, match="validation_step must return an RDOutput"):
        callback.on_validation_batch_end(None, None, {"loss": torch.tensor(1.0)}, None, 0)


def test_summary_writer_helper(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    x = torch.randint(0, 2, (8, 4)).float()
    out = rdloss.RateDistortionLoss()(
        x,
        posterior=helpers.normal(torch.zeros(8, 2), logvar=torch.zeros(8, 2)),
        likelihood=helpers.bernoulli(logits=torch.zeros(8, 4)),
    )
    writer = SummaryWriter(tmp_path)
    for step in range(3):
        log_to_tensorboard(writer, out, step, prefix="train/", history=[(0.0, 5.0)] * (step + 1))
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(out.metrics()) == {t.removeprefix("train/") for t in events.Tags()["scalars"]}
    assert [e.step for e in events.Scalars("train/distortion")] == [0, 1, 2]
    assert events.Scalars("train/distortion")[0].value == pytest.approx(4 * math.log(2), rel=1e-6)
    assert len(events.Images("train/rd_plane")) == 3


def test_rd_figure_needs_a_point() -> None:
    with pytest.raises(ValueError, match="at least one"):
        rd_figure([])
    figure = rd_figure([(1.0, 3.0), (2.0, 2.0)])
    assert figure.axes[0].get_title() == "epoch 1: R = 2, D = 2 nats"
