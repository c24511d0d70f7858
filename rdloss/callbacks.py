r"""Log R, D, the ELBO, the active units and the rate-distortion figure while training.

* `RateDistortionCallback`: a Lightning callback. The ``validation_step`` returns the
  batch's `rdloss.RDOutput` (or a dict with it under ``"rd"`` and the posterior means
  ``(B, D)`` or the posterior under ``"posterior"``); at the end of each validation epoch
  the callback logs ``val/rate``, ``val/distortion``, ``val/elbo`` (nats) and
  ``val/active_units`` through ``LightningModule.log`` (so every logger gets them, DDP
  synchronised by torchmetrics), and one figure: the epochs' path in the (R, D) plane.
  TensorBoard gets the figure as an image, a logger that writes to a folder (CSV) gets
  ``rd_plane/epoch=N.png`` in it.
* `log_to_tensorboard`: the same numbers and figure for a plain
  ``torch.utils.tensorboard.SummaryWriter`` loop.

Lightning and matplotlib are optional and never imported by ``import rdloss``; this module
imports Lightning when it is installed (for the callback's base class), matplotlib only
when a figure is drawn.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rdloss.diagnostics import ActiveUnits, RateDistortion
from rdloss.output import RDOutput

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["RateDistortionCallback", "log_to_tensorboard", "rd_figure"]


def rd_figure(history: Sequence[tuple[float, float]], *, title: str = "") -> Figure:
    """The path of ``(rate, distortion)`` over epochs (start ○, latest ●), nats.

    Args:
        history: one ``(R, D)`` pair per epoch, oldest first.
        title: axes title; default the latest epoch's numbers.

    Returns:
        A matplotlib ``Figure`` (not shown; close it when done).

    Raises:
        ValueError: ``history`` is empty.
        ImportError: matplotlib is missing (``pip install "rdloss[plot]"``).
    """
    from matplotlib.figure import Figure

    from rdloss.plot import trajectory

    if not history:
        raise ValueError("history must hold at least one (rate, distortion) pair")
    figure = Figure(figsize=(4.8, 3.8), dpi=100)  # no pyplot: no global state, no GUI
    ax = figure.add_subplot()
    rates, distortions = zip(*history, strict=True)
    trajectory(list(rates), list(distortions), ax=ax)
    rate, distortion = history[-1]
    ax.set_title(
        title or f"epoch {len(history) - 1}: R = {rate:.3g}, D = {distortion:.3g} nats",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


def log_to_tensorboard(
    writer: Any,
    scalars: RDOutput | Mapping[str, float],
    step: int,
    *,
    prefix: str = "val/",
    history: Sequence[tuple[float, float]] | None = None,
) -> None:
    """Log each number under its own tag, and the (R, D) path as an image.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter``.
        scalars: an `RDOutput` (its ``metrics()``), or a mapping of names to floats.
        step: the global step (or epoch) of these values.
        prefix: prepended to every tag (``"val/rate"``).
        history: ``(R, D)`` per epoch so far; draws `rd_figure` as ``{prefix}rd_plane``.

    Examples:
        >>> import tempfile
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> writer = SummaryWriter(tempfile.mkdtemp())
        >>> log_to_tensorboard(writer, {"rate": 2.0, "distortion": 9.0}, 0,
        ...                    history=[(2.0, 9.0)])
        >>> writer.close()
    """
    values = scalars.metrics() if isinstance(scalars, RDOutput) else dict(scalars)
    for key, value in values.items():
        writer.add_scalar(f"{prefix}{key}", float(value), step)
    if history:
        writer.add_figure(f"{prefix}rd_plane", rd_figure(history), step, close=True)


_LIGHTNING = importlib.util.find_spec("lightning") is not None


def _callback_base() -> type:
    if not _LIGHTNING:
        return object  # the callback then refuses to be created, with the install line
    from lightning.pytorch import Callback

    return Callback


class RateDistortionCallback(_callback_base()):  # type: ignore[misc]
    """Lightning callback: validation R, D, ELBO, active units and the (R, D) figure.

    Args:
        prefix: prepended to every logged name (default ``"val/"``).
        threshold: variance threshold of `rdloss.diagnostics.ActiveUnits`.
        figure: log the figure each validation epoch (needs matplotlib).

    Raises:
        ImportError: Lightning is not installed (``pip install lightning``).

    Examples:
        A ``validation_step`` for it::

            def validation_step(self, batch, batch_idx):
                q = self.encoder(batch)
                out = self.loss_fn(batch, posterior=q, decoder=self.decoder)
                return {"rd": out, "posterior": q}

            trainer = Trainer(callbacks=[RateDistortionCallback()])
    """

    def __init__(self, *, prefix: str = "val/", threshold: float = 0.01, figure: bool = True):
        if not _LIGHTNING:
            raise ImportError("RateDistortionCallback needs Lightning: pip install lightning")
        super().__init__()
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        self.prefix, self.figure = prefix, bool(figure)
        self.rd = RateDistortion()
        self.active = ActiveUnits(threshold=threshold)
        self.history: list[tuple[float, float]] = []

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Start the epoch's sums on the module's device."""
        self.rd, self.active = self.rd.to(pl_module.device), self.active.to(pl_module.device)
        self.rd.reset()
        self.active.reset()

    def on_validation_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Add the batch that ``validation_step`` returned."""
        out, posterior = outputs, None
        if isinstance(outputs, Mapping):
            out, posterior = outputs.get("rd"), outputs.get("posterior")
        if not isinstance(out, RDOutput):
            raise TypeError(
                "RateDistortionCallback: validation_step must return an RDOutput or a dict "
                f"with one under 'rd', got {type(out).__name__}"
            )
        self.rd.update(out)
        if posterior is not None:
            self.active.update(posterior)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Log the epoch's numbers and figure."""
        if trainer.sanity_checking:  # Lightning's two warm-up batches are not an epoch
            return
        result = self.rd.compute()
        values = {"rate": result.rate, "distortion": result.distortion, "elbo": result.elbo}
        if self.active.moments.numel():
            values["active_units"] = self.active.compute().num_active.float()
        pl_module.log_dict({f"{self.prefix}{k}": v for k, v in values.items()}, sync_dist=False)
        self.history.append((float(result.rate), float(result.distortion)))
        if self.figure and trainer.is_global_zero:
            self._log_figure(trainer)

    def _log_figure(self, trainer: Any) -> None:
        figure, epoch = rd_figure(self.history), trainer.current_epoch
        tag = f"{self.prefix}rd_plane"
        for logger in trainer.loggers:
            experiment: Any = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):  # TensorBoard
                experiment.add_figure(tag, figure, trainer.global_step, close=False)
            elif getattr(logger, "log_dir", None):  # CSV and other file loggers
                folder = Path(logger.log_dir) / "rd_plane"
                folder.mkdir(parents=True, exist_ok=True)
                figure.savefig(folder / f"epoch={epoch}.png")

    def state_dict(self) -> dict[str, Any]:
        """The figure's history, so a resumed run continues its path."""
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history saved by `state_dict`."""
        self.history = [(float(r), float(d)) for r, d in state_dict["history"]]
