"""The demo's figures, drawn with `rdloss.plot` from the result rows and histories."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from rdloss.demo.results import Row
from rdloss.demo.sweep import DigitsResult
from rdloss.demo.toy import ToyResult
from rdloss.plot import RDPoint, rd_plane, trajectory

__all__ = ["save_figures"]


_SYMBOL = {"beta": "\u03b2", "target_rate": "\u03c3", "elbo": ""}
_OBJECTIVE = {"beta": "\u03b2", "target_rate": "target rate \u03c3", "elbo": "ELBO, \u03b2"}
_DECODER = {"factorized": "factorised decoder", "autoregressive": "autoregressive decoder"}


def _point(row: Row) -> RDPoint:
    """A sweep's points share a legend entry and carry their β; others have their own entry."""
    if (row.dataset, row.model, row.objective) == ("digits", "factorized", "beta"):
        return RDPoint(
            row.rate, row.distortion, f"\u03b2={row.value:g}", "factorised decoder, β sweep"
        )
    model = f"{_DECODER[row.model]}, " if row.dataset == "digits" else ""
    group = f"{model}{_OBJECTIVE.get(row.objective, row.objective)} = {row.value:g}"
    return RDPoint(row.rate, row.distortion, "", group)


def save_figures(
    rows: Sequence[Row],
    toy: Sequence[ToyResult],
    digits: Sequence[DigitsResult],
    path: Callable[[str], Path],
) -> list[Path]:
    """Write ``rd_plane.png`` (toy and digits planes) and ``trajectory.png``.

    Args:
        rows: all result rows.
        toy: the toy runs (for their training histories).
        digits: the digits runs (for their training histories).
        path: where to write a file of the given name, e.g. ``folder.joinpath`` or a
            `rdloss.demo.outputs.Staging`'s ``path``.

    Returns:
        The paths written.

    Raises:
        ImportError: matplotlib is missing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    panels = [
        ("toy", "toy model (exact H)"),
        ("digits", "8x8 digits, held out"),
    ]
    present = [(name, title) for name, title in panels if any(r.dataset == name for r in rows)]
    # Panels are stacked, each 6.4 inches wide: the docs show a figure about 700 pixels wide,
    # where side-by-side panels would shrink the labels to about 6 pixels.
    if present:
        fig, axes = plt.subplots(len(present), 1, figsize=(6.4, 4.6 * len(present)), squeeze=False)
        for ax, (name, title) in zip(axes[:, 0], present, strict=True):
            chosen = [r for r in rows if r.dataset == name]
            rd_plane(
                [_point(r) for r in chosen],
                entropy=chosen[0].entropy if name == "toy" else chosen[0].entropy_upper,
                entropy_is_estimate=name == "digits",
                ax=ax,
                title=title,
            )
        fig.tight_layout()
        target = path("rd_plane.png")
        fig.savefig(target, dpi=150)
        plt.close(fig)
        written.append(target)
    runs = [(f"toy {t.objective}", t.history) for t in toy]
    runs += [
        (f"{d.spec.decoder}, {_SYMBOL[d.spec.objective]}={d.spec.value:g}", d.history)
        for d in digits
        if d.spec.decoder == "autoregressive" or d.spec.value == 1.0
    ]
    if runs:
        stacked = 2 if digits and toy else 1
        fig, axes = plt.subplots(stacked, 1, figsize=(6.4, 4.0 * stacked), squeeze=False)
        for label, history in runs:
            ax = axes[-1][0] if not label.startswith("toy") else axes[0][0]
            trajectory(history[:, 0].tolist(), history[:, 1].tolist(), label=label, ax=ax)
        if toy:
            axes[0][0].set_title("toy: exact R, D per Adam step (start \u25cb, end \u25cf)")
        if digits:
            axes[-1][0].set_title("digits: training-set R, D per epoch (start \u25cb, end \u25cf)")
        fig.tight_layout()
        target = path("trajectory.png")
        fig.savefig(target, dpi=150)
        plt.close(fig)
        written.append(target)
    return written
