"""What the plots share: matplotlib on demand, checked numbers, the H landmarks."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__: list[str] = []


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            'rdloss.plot needs matplotlib: pip install "rdloss[plot]" (or pip install matplotlib)'
        ) from error
    return plt


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        from matplotlib.axes import Axes

        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
        return ax
    _, new = _pyplot().subplots(figsize=(6.0, 4.5))
    axes: Axes = new
    return axes


def _number(name: str, value: object) -> float:
    """``value`` as a finite float (numbers and 0-dim tensors), else raise naming it."""
    if isinstance(value, (str, bytes, bool)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def _numbers(name: str, values: object) -> list[float]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    return [_number(f"{name}[{i}]", v) for i, v in enumerate(values)]


def _landmarks(ax: Axes, entropy: float, *, estimate: bool, limits: bool = True) -> None:
    """The diagonal ``D = H - R``, its two limits and, for an exact ``H``, the region below."""
    name = "Ĥ" if estimate else "H"
    if estimate:
        ax.plot([0, entropy], [entropy, 0], color="k", lw=1.0, ls="-.",
                label="D = Ĥ \u2212 R (Ĥ: an estimate of H)")  # fmt: skip
    else:
        ax.fill_between([0, entropy], [entropy, 0], 0, color="0.85", hatch="//", lw=0,
                        label="infeasible: D < H \u2212 R", zorder=0)  # fmt: skip
        ax.plot([0, entropy], [entropy, 0], color="k", lw=1.2, label="D = H \u2212 R")
    if not limits:
        return
    ax.scatter([0, entropy], [entropy, 0], marker="x", color="k", s=30, zorder=2, clip_on=False)
    # Both labels sit below the diagonal, where no model can be, so they never cover a point
    # or a curve; a thin line ties each to its limit.
    tie = {"arrowstyle": "-", "color": "0.6", "lw": 0.6}
    ax.annotate(f"auto-decoding\n(R = 0, D = {name})", (0, entropy), xytext=(0.03 * entropy,
                0.62 * entropy), fontsize=7, color="0.25", arrowprops=tie)  # fmt: skip
    ax.annotate(f"auto-encoding\n(R = {name}, D = 0)", (entropy, 0), xytext=(0.62 * entropy,
                0.04 * entropy), fontsize=7, color="0.25", arrowprops=tie)  # fmt: skip
