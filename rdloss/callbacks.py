r"""Log R, D, the ELBO, the active units and the rate-distortion figure while training.

* `RateDistortionCallback`: a Lightning callback. The ``validation_step`` returns the
  batch's `rdloss.RDOutput` (or a dict with it under ``"rd"`` and the posterior means
  ``(B, D)`` or the posterior under ``"posterior"``); at the end of each validation epoch
  the callback logs ``val/rate``, ``val/distortion``, ``val/elbo`` (nats) and
  ``val/active_units`` through ``LightningModule.log`` (so every logger gets them, DDP
  synchronised by torchmetrics), and one figure: the epochs' path in the (R, D) plane.
  TensorBoard gets the figure as an image, a logger that writes to a folder (CSV) gets
  ``rd_plane/epoch=N.png`` in it. Several validation dataloaders are logged apart, with
  Lightning's ``/dataloader_idx_N`` suffix; ``groups=`` adds each latent group's rate and
  active units. Without matplotlib it logs the numbers only, after one warning.
* `log_to_tensorboard`: the same numbers and figure for a plain
  ``torch.utils.tensorboard.SummaryWriter`` loop.

Lightning and matplotlib are optional and never imported by ``import rdloss``; this module
imports Lightning when it is installed (``lightning``, else ``pytorch_lightning``, for the
callback's base class), matplotlib when the callback is made with a figure or a figure is
drawn.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rdloss._checks import check_nonnegative_number
from rdloss.diagnostics import ActiveUnits, RateDistortion
from rdloss.diagnostics._metric import check_groups
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


_LIGHTNING_PACKAGES = ("lightning.pytorch", "pytorch_lightning")  # the 2.x names, either


def _lightning() -> str | None:
    """The importable Lightning package, ``lightning`` preferred; ``None`` without one."""
    for name in _LIGHTNING_PACKAGES:
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except ModuleNotFoundError:  # "lightning.pytorch" when "lightning" is absent
            continue
    return None


_LIGHTNING = _lightning()


def _callback_base() -> type:
    if _LIGHTNING is None:
        return object  # the callback then refuses to be created, with the install line
    base: type = importlib.import_module(_LIGHTNING).Callback
    return base


def _has_matplotlib() -> bool:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


def _suffixed(name: str, dataloader_idx: int, several: bool) -> str:
    """Lightning's name for a value of one of several dataloaders: ``name/dataloader_idx_N``."""
    return f"{name}/dataloader_idx_{dataloader_idx}" if several else name


class RateDistortionCallback(_callback_base()):  # type: ignore[misc]
    """Lightning callback: validation R, D, ELBO, active units and the (R, D) figure.

    Works with either package name of Lightning 2.x, ``lightning`` (``lightning.pytorch``)
    or ``pytorch_lightning``. With several validation dataloaders, each gets its own
    numbers and figure under Lightning's suffix (``val/rate/dataloader_idx_1``). The
    figure is logged at the step of the epoch's scalars.

    Args:
        prefix: prepended to every logged name (default ``"val/"``).
        threshold: variance threshold of `rdloss.diagnostics.ActiveUnits`.
        figure: log the figure each validation epoch. ``None`` (default): when matplotlib
            is installed, else warn once here and log the numbers only. ``True``: raise
            here if matplotlib is missing, before any training.
        groups: the latent groups' names (the loss's posterior keys, in order) for a
            grouped posterior; adds ``{prefix}rate/<group>`` and, with a posterior,
            ``{prefix}active_units/<group>``.

    Raises:
        ImportError: Lightning is not installed (``pip install lightning``), or
            ``figure=True`` without matplotlib (``pip install "rdloss[plot]"``).

    Examples:
        A ``validation_step`` for it::

            def validation_step(self, batch, batch_idx):
                q = self.encoder(batch)
                out = self.loss_fn(batch, posterior=q, decoder=self.decoder)
                return {"rd": out, "posterior": q}

            trainer = Trainer(callbacks=[RateDistortionCallback()])
    """

    def __init__(
        self,
        *,
        prefix: str = "val/",
        threshold: float = 0.01,
        figure: bool | None = None,
        groups: Sequence[str] | None = None,
    ):
        if _LIGHTNING is None:
            raise ImportError(
                "RateDistortionCallback needs Lightning: pip install lightning "
                "(or pytorch_lightning)"
            )
        super().__init__()
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        if figure is not None and not isinstance(figure, bool):
            raise TypeError(f"figure must be None, True or False, got {figure!r}")
        self.groups = check_groups(groups)
        self.threshold = check_nonnegative_number("threshold", threshold)
        if figure is None:
            figure = _has_matplotlib()
            if not figure:
                warnings.warn(
                    "RateDistortionCallback: matplotlib is missing, so the (R, D) figure is "
                    'not logged (the numbers are); pip install "rdloss[plot]" to get it',
                    UserWarning,
                    stacklevel=2,
                )
        elif figure and not _has_matplotlib():
            raise ImportError(
                'RateDistortionCallback(figure=True) needs matplotlib: pip install "rdloss[plot]"'
                " (or figure=False)"
            )
        self.prefix, self.figure = prefix, figure
        # This epoch's sums per dataloader index, made at each one's first batch.
        self.metrics: dict[int, tuple[RateDistortion, ActiveUnits]] = {}
        # (R, D) per validation epoch, oldest first, per dataloader index.
        self.history: dict[int, list[tuple[float, float]]] = {}

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Start the epoch's sums."""
        self.metrics = {}

    def on_validation_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Add the batch that ``validation_step`` returned to its dataloader's sums."""
        out, posterior = outputs, None
        if isinstance(outputs, Mapping):
            out, posterior = outputs.get("rd"), outputs.get("posterior")
        if not isinstance(out, RDOutput):
            raise TypeError(
                "RateDistortionCallback: validation_step must return an RDOutput or a dict "
                f"with one under 'rd', got {type(out).__name__}"
            )
        if dataloader_idx not in self.metrics:
            self.metrics[dataloader_idx] = (
                RateDistortion(groups=self.groups).to(out.rate.device),
                ActiveUnits(threshold=self.threshold, groups=self.groups).to(out.rate.device),
            )
        rd, active = self.metrics[dataloader_idx]
        rd.update(out)
        if posterior is not None:
            active.update(posterior)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Log the epoch's numbers and figures, per dataloader."""
        if trainer.sanity_checking:  # Lightning's two warm-up batches are not an epoch
            return
        # Lightning suffixes the names when there are several loaders, batches or not.
        several = len(getattr(trainer, "num_val_batches", ())) > 1 or any(self.metrics)
        for index in sorted(self.metrics):
            values = self._values(*self.metrics[index])
            pl_module.log_dict(
                {_suffixed(f"{self.prefix}{k}", index, several): v for k, v in values.items()},
                sync_dist=False,  # the metrics synchronise themselves
                add_dataloader_idx=False,
            )
            path = self.history.setdefault(index, [])
            path.append((float(values["rate"]), float(values["distortion"])))
            if self.figure and trainer.is_global_zero:
                self._log_figure(trainer, path, _suffixed("", index, several))

    def _values(self, rd: RateDistortion, active: ActiveUnits) -> dict[str, Any]:
        result = rd.compute()
        values = {"rate": result.rate, "distortion": result.distortion, "elbo": result.elbo}
        for group, rate in (result.rate_per_group or {}).items():
            values[f"rate/{group}"] = rate
        if active.moments.numel():
            units = active.compute()
            values["active_units"] = units.num_active.float()
            for group, part in (units.per_group or {}).items():
                values[f"active_units/{group}"] = part.num_active.float()
        return values

    def _log_figure(self, trainer: Any, path: list[tuple[float, float]], suffix: str) -> None:
        figure, epoch = rd_figure(path), trainer.current_epoch
        tag = f"{self.prefix}rd_plane{suffix}"
        # The step Lightning logs the epoch's scalars at (LoggerConnector.log_metrics);
        # global_step is one ahead of it at the end of a training epoch.
        loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
        step = getattr(loop, "_batches_that_stepped", trainer.global_step)
        for logger in trainer.loggers:
            experiment: Any = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):  # TensorBoard
                experiment.add_figure(tag, figure, step, close=False)
            elif getattr(logger, "log_dir", None):  # CSV and other file loggers
                folder = Path(logger.log_dir) / f"rd_plane{suffix}"
                folder.mkdir(parents=True, exist_ok=True)
                figure.savefig(folder / f"epoch={epoch}.png")

    def state_dict(self) -> dict[str, Any]:
        """The figures' history, so a resumed run continues their paths."""
        return {"history": {index: list(path) for index, path in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history saved by `state_dict` (a plain list is dataloader 0's)."""
        saved = state_dict["history"]
        if not isinstance(saved, Mapping):  # checkpoints of earlier versions: one path
            saved = {0: saved}
        self.history = {
            int(index): [(float(r), float(d)) for r, d in path] for index, path in saved.items()
        }
