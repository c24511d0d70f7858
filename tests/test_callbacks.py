"""rdloss.callbacks: the Lightning callback with CSV and TensorBoard loggers, and the
SummaryWriter helper. Logged numbers are compared with a direct evaluation of the model.
Installs without matplotlib or with ``pytorch_lightning`` only are run in a subprocess whose
``sys.path`` is the venv's site-packages minus those packages (their code and metadata)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import sysconfig
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
    """Latent of 3 units; ``grouped`` splits it into groups "a" (2 units) and "b" (1)."""

    def __init__(self, grouped: bool = False) -> None:
        super().__init__()
        self.grouped = grouped
        self.encoder = nn.Linear(12, 2 * 3)
        self.net = nn.Linear(3, 12)
        marginal = {"a": marginals.StandardNormal(2), "b": marginals.StandardNormal(1)}
        self.loss_fn = rdloss.RateDistortionLoss(
            marginal if grouped else marginals.StandardNormal(3)
        )

    def _step(self, x: torch.Tensor) -> tuple[rdloss.RDOutput, object]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        if not self.grouped:
            q = helpers.normal(mu, logvar=logvar)
            out = self.loss_fn(
                x, posterior=q, decoder=lambda z: helpers.bernoulli(logits=self.net(z))
            )
            return out, q
        groups = {"a": helpers.normal(mu[:, :2], logvar=logvar[:, :2])}
        groups["b"] = helpers.normal(mu[:, 2:], logvar=logvar[:, 2:])

        def decoder(z: dict[str, torch.Tensor]) -> torch.distributions.Distribution:
            return helpers.bernoulli(logits=self.net(torch.cat([z["a"], z["b"]], -1)))

        return self.loss_fn(x, posterior=groups, decoder=decoder), groups

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch[0])[0].loss

    def validation_step(
        self, batch: list[torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, object]:
        out, q = self._step(batch[0])
        return {"rd": out, "posterior": q}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _loader(x: torch.Tensor, batch_size: int) -> torch.utils.data.DataLoader[tuple[torch.Tensor]]:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=batch_size)


def _fit(
    logger: object,
    tmp_path: Path,
    *,
    val: list[torch.Tensor] | None = None,
    callback: RateDistortionCallback | None = None,
    grouped: bool = False,
) -> tuple[TinyVAE, RateDistortionCallback]:
    torch.manual_seed(0)
    model, callback = TinyVAE(grouped), callback or RateDistortionCallback()
    # One validation batch per loader: the decoder's sample is then the one redrawn below.
    vals = [_loader(v, len(v)) for v in (val or [VAL])]
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
    trainer.fit(model, _loader(TRAIN, 32), vals if val else vals[0])
    return model, callback


def _direct(model: TinyVAE, x: torch.Tensor = VAL) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit R (closed form) and activity of the final model on ``x``, without rdloss."""
    model.eval()
    with torch.no_grad():
        mu, logvar = model.encoder(x).chunk(2, dim=-1)
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar)  # KL(N(mu, s) || N(0, 1)) per unit
        active = mu.var(0, unbiased=True) > 0.01
    return kl.mean(0), active


def test_csv_logger_gets_the_numbers_and_one_figure_per_epoch(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    model, callback = _fit(logger, tmp_path)
    rows = list(csv.DictReader((Path(logger.log_dir) / "metrics.csv").open()))
    logged = [r for r in rows if r.get("val/rate")]
    assert len(logged) == 2  # two validation epochs; the sanity check is not one
    rate, active = _direct(model)
    last = logged[-1]
    assert float(last["val/rate"]) == pytest.approx(float(rate.sum()), rel=1e-5)
    assert float(last["val/elbo"]) == pytest.approx(
        -(float(last["val/rate"]) + float(last["val/distortion"])), rel=1e-6
    )
    assert float(last["val/active_units"]) == int(active.sum())
    assert list(callback.history) == [0]
    assert [p[0] for p in callback.history[0]] == pytest.approx(
        [float(r["val/rate"]) for r in logged]
    )
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
    assert events.Scalars("val/rate")[-1].value == pytest.approx(float(rate.sum()), rel=1e-5)
    # Each epoch's figure is logged at the step of that epoch's scalars.
    steps = [e.step for e in events.Scalars("val/rate")]
    assert [e.step for e in events.Images("val/rd_plane")] == steps == [2, 5]


def test_each_validation_dataloader_is_logged_apart(tmp_path: Path) -> None:
    other = torch.randint(0, 2, (24, 12), generator=torch.Generator().manual_seed(1)).float()
    logger = CSVLogger(tmp_path, name="csv")
    model, callback = _fit(logger, tmp_path, val=[VAL, other])
    rows = [r for r in csv.DictReader((Path(logger.log_dir) / "metrics.csv").open())]
    last = [r for r in rows if r.get("val/rate/dataloader_idx_1")][-1]
    assert "val/rate" not in last  # never pooled into one name
    for index, x in enumerate([VAL, other]):
        rate, active = _direct(model, x)
        assert float(last[f"val/rate/dataloader_idx_{index}"]) == pytest.approx(
            float(rate.sum()), rel=1e-5
        )
        assert float(last[f"val/active_units/dataloader_idx_{index}"]) == int(active.sum())
        assert len(callback.history[index]) == 2
        folder = Path(logger.log_dir) / f"rd_plane/dataloader_idx_{index}"
        assert sorted(p.name for p in folder.iterdir()) == ["epoch=0.png", "epoch=1.png"]
    assert callback.history[0] != callback.history[1]


def test_groups_log_each_groups_rate_and_active_units(tmp_path: Path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    callback = RateDistortionCallback(groups=["a", "b"], figure=False)
    model, _ = _fit(logger, tmp_path, callback=callback, grouped=True)
    rows = list(csv.DictReader((Path(logger.log_dir) / "metrics.csv").open()))
    last = [r for r in rows if r.get("val/rate")][-1]
    rate, active = _direct(model)
    assert float(last["val/rate/a"]) == pytest.approx(float(rate[:2].sum()), rel=1e-5)
    assert float(last["val/rate/b"]) == pytest.approx(float(rate[2:].sum()), rel=1e-5)
    assert float(last["val/rate"]) == pytest.approx(float(rate.sum()), rel=1e-5)
    assert float(last["val/active_units/a"]) == int(active[:2].sum())
    assert float(last["val/active_units/b"]) == int(active[2:].sum())
    assert not (Path(logger.log_dir) / "rd_plane").exists()


def test_callback_checks_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(TypeError, match="groups must be a sequence"):
        RateDistortionCallback(groups="a")
    with pytest.raises(ValueError, match="threshold"):
        RateDistortionCallback(threshold=-1.0)
    with pytest.raises(TypeError, match="figure must be None, True or False"):
        RateDistortionCallback(figure="yes")  # type: ignore[arg-type]
    # figure=True asks for matplotlib: told at construction, before any training.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "rdloss\[plot\]"'):
        RateDistortionCallback(figure=True)
    with pytest.warns(UserWarning, match="matplotlib is missing"):
        assert RateDistortionCallback().figure is False


def test_callback_state_resumes_the_figure_path() -> None:
    callback = RateDistortionCallback(figure=False)
    callback.history = {0: [(1.0, 5.0), (1.5, 4.0)], 1: [(2.0, 3.0)]}
    fresh = RateDistortionCallback()
    fresh.load_state_dict(callback.state_dict())
    assert fresh.history == {0: [(1.0, 5.0), (1.5, 4.0)], 1: [(2.0, 3.0)]}
    fresh.load_state_dict({"history": [(1.0, 5.0)]})  # one path: an earlier checkpoint's
    assert fresh.history == {0: [(1.0, 5.0)]}


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


# --- installs without matplotlib, or with pytorch_lightning only ----------------------------

_HIDDEN = {"lightning": ("lightning",), "matplotlib": ("matplotlib", "mpl_toolkits", "pylab.py")}

_FIT_SCRIPT = """
import csv, importlib, json, pathlib, sys, warnings
import torch
from torch import nn
import rdloss
from rdloss import helpers
from rdloss.callbacks import RateDistortionCallback

package = importlib.import_module(sys.argv[1])
root = pathlib.Path(sys.argv[2])


class VAE(package.LightningModule):
    def __init__(self):
        super().__init__()
        self.encoder, self.net = nn.Linear(12, 6), nn.Linear(3, 12)
        self.loss_fn = rdloss.RateDistortionLoss()

    def step(self, x):
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        q = helpers.normal(mu, logvar=logvar)
        decoder = lambda z: helpers.bernoulli(logits=self.net(z))
        return self.loss_fn(x, posterior=q, decoder=decoder), q

    def training_step(self, batch, batch_idx):
        return self.step(batch[0])[0].loss

    def validation_step(self, batch, batch_idx):
        out, q = self.step(batch[0])
        return {"rd": out, "posterior": q}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


torch.manual_seed(0)
data = torch.utils.data.TensorDataset(torch.randint(0, 2, (64, 12)).float())
loader = torch.utils.data.DataLoader(data, batch_size=32)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    callback = RateDistortionCallback()
    trainer = package.Trainer(
        max_epochs=2, callbacks=[callback], default_root_dir=root, accelerator="cpu",
        logger=package.loggers.CSVLogger(root, name="csv"),
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(VAE(), loader, loader)
rows = list(csv.DictReader((pathlib.Path(trainer.logger.log_dir) / "metrics.csv").open()))
print(json.dumps({
    "base": type(callback).__mro__[1].__module__,
    "imported": [m for m in sys.argv[3].split(",") if m in sys.modules],
    "figure": callback.figure,
    "warnings": [str(w.message) for w in caught if "matplotlib" in str(w.message)],
    "rates": [float(r["val/rate"]) for r in rows if r.get("val/rate")],
    "checkpoints": sorted(p.name for p in root.rglob("*.ckpt")),
}))
"""


def _fit_without(tmp_path: Path, hidden: tuple[str, ...], package: str) -> dict[str, object]:
    """Run ``_FIT_SCRIPT`` where ``hidden`` packages are not installed: ``python -S`` with a
    ``sys.path`` of links to every site-packages entry but theirs (code and metadata)."""
    site, links = Path(sysconfig.get_paths()["purelib"]), tmp_path / "site"
    links.mkdir()
    drop = [entry for name in hidden for entry in _HIDDEN[name]]
    for entry in os.listdir(site):
        if entry.endswith(".pth") or any(entry == d or entry.startswith(d + "-") for d in drop):
            continue  # .pth: the editable rdloss install points at another checkout
        (links / entry).symlink_to(site / entry)
    repo = Path(rdloss.__file__).parents[1]
    done = subprocess.run(
        [sys.executable, "-S", "-c", _FIT_SCRIPT, package, str(tmp_path / "run"), ",".join(hidden)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(links)])},
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize(
    ("hidden", "package"),
    [
        (("matplotlib",), "lightning.pytorch"),  # pip install rdloss lightning
        (("lightning", "matplotlib"), "pytorch_lightning"),  # pip install rdloss pytorch_lightning
    ],
)
def test_fit_without_matplotlib_logs_the_numbers_and_checkpoints(
    tmp_path: Path, hidden: tuple[str, ...], package: str
) -> None:
    report = _fit_without(tmp_path, hidden, package)
    assert report["imported"] == []  # the hidden packages were not importable
    assert report["base"].startswith(package)  # type: ignore[attr-defined]
    assert report["figure"] is False
    assert len(report["warnings"]) == 1  # type: ignore[arg-type]
    assert 'pip install "rdloss[plot]"' in report["warnings"][0]  # type: ignore[index]
    assert len(report["rates"]) == 2  # type: ignore[arg-type]
    assert report["checkpoints"] == ["epoch=1-step=4.ckpt"]
    assert not list(tmp_path.rglob("rd_plane"))
