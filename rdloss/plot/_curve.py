"""A rate-distortion curve through points evaluated at many β, and its numbers as rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from rdloss.plot._common import _axes, _landmarks, _number

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["CurvePoint", "curve_table", "rd_curve"]


class CurvePoint(NamedTuple):
    """One point of a rate-distortion curve: a model evaluated at ``beta``.

    Attributes:
        beta: the β the model was trained or evaluated at.
        rate: R in nats (a float or a 0-dim tensor, e.g. ``rdloss.evaluate(...).rate``).
        distortion: D in nats.
    """

    beta: float
    rate: float
    distortion: float


def _curve(name: str, points: object) -> list[CurvePoint]:
    """``points`` as `CurvePoint` s sorted by β, each value checked."""
    if isinstance(points, (str, bytes)) or not hasattr(points, "__iter__"):
        raise TypeError(f"{name} must be a sequence of (beta, rate, distortion), got {points!r}")
    checked = []
    for i, p in enumerate(points):
        if not isinstance(p, tuple) or len(p) != 3:
            raise TypeError(
                f"{name}[{i}] must be a CurvePoint or a (beta, rate, distortion) triple, got {p!r}"
            )
        beta, rate, distortion = (
            _number(f"{name}[{i}].{f}", v) for f, v in zip(CurvePoint._fields, p, strict=True)
        )
        if beta <= 0:
            raise ValueError(f"{name}[{i}].beta must be positive, got {beta}")
        checked.append(CurvePoint(beta, rate, distortion))
    return sorted(checked, key=lambda p: p.beta)


def curve_table(
    points: Sequence[CurvePoint | tuple[float, float, float]],
    separate: Sequence[CurvePoint | tuple[float, float, float]] = (),
) -> list[dict[str, float | str]]:
    """The numbers `rd_curve` draws, one row per point (for ``csv.DictWriter`` or ``json``).

    Args:
        points: the curve's ``(beta, rate, distortion)`` points, nats.
        separate: separately trained models' points.

    Returns:
        Rows ``{"kind": "curve" | "separate", "beta", "rate", "distortion", "elbo"}`` sorted
        by β within each kind, with ``elbo = -(rate + distortion)``.

    Examples:
        >>> curve_table([(1.0, 2.0, 5.0), (0.1, 9.0, 1.0)])[0]
        {'kind': 'curve', 'beta': 0.1, 'rate': 9.0, 'distortion': 1.0, 'elbo': -10.0}
    """
    return [
        {"kind": kind, **p._asdict(), "elbo": -(p.rate + p.distortion)}
        for kind, pts in (
            ("curve", _curve("points", points)),
            ("separate", _curve("separate", separate)),
        )
        for p in pts
    ]


def rd_curve(
    points: Sequence[CurvePoint | tuple[float, float, float]],
    *,
    ax: Axes | None = None,
    label: str | None = None,
    separate: Sequence[CurvePoint | tuple[float, float, float]] | None = None,
    entropy: float | None = None,
    entropy_is_estimate: bool = True,
    limits: bool = True,
    title: str | None = None,
) -> Axes:
    r"""Draw a rate-distortion curve: a line through (R, D) points in order of β.

    Typical points come from one Multi-Rate model evaluated at many β (`rdloss.evaluate`
    at each); the line joins the measured points only (nothing is interpolated or
    smoothed), each marked and annotated with its β. Separately trained models
    (``separate``) are drawn as unconnected points with their β, so the curve can be read
    against them. With ``entropy``, the line $D = \hat H - R$ of constant ELBO
    $-\hat H$ (no model lies below it if $\hat H = H$) is drawn dashed and labelled as an
    estimate (e.g. the IWAE NLL, ``Evaluation.entropy``), with the auto-decoding
    $(R = 0, D = \hat H)$ and auto-encoding $(R = \hat H, D = 0)$ limits when ``limits``.

    Args:
        points: `CurvePoint` s or ``(beta, rate, distortion)`` triples, nats.
        ax: axes to draw on; default a new figure. Call again with it to overlay curves.
        label: legend entry of the curve; default ``"curve (evaluated at each β)"``.
        separate: separately trained models' points, or ``None``.
        entropy: $\hat H$ in nats, or ``None`` for no diagonal and no limits.
        entropy_is_estimate: ``entropy`` is an estimate (the default); ``False`` for an
            exact ``H`` also shades the infeasible region below the diagonal.
        limits: mark the auto-encoding and auto-decoding limits (needs ``entropy``).
        title: axes title.

    Returns:
        The matplotlib ``Axes``.

    Raises:
        TypeError: a point is not a triple of numbers, or ``ax`` is not an ``Axes``.
        ValueError: ``points`` is empty, a value is NaN/inf, or a β is not positive.
        ImportError: matplotlib is not installed.

    Examples:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> ax = rd_curve([(0.1, 9.0, 1.0), (1.0, 2.0, 5.0), (3.0, 0.5, 7.5)], entropy=8.0)
        >>> ax.lines[-1].get_xydata().tolist()
        [[9.0, 1.0], [2.0, 5.0], [0.5, 7.5]]
    """
    pts = _curve("points", points)
    if not pts:
        raise ValueError("points must contain at least one (beta, rate, distortion) point")
    others = _curve("separate", separate or ())
    entropy = None if entropy is None else _number("entropy", entropy)
    ax = _axes(ax)
    if entropy is not None:
        _landmarks(ax, entropy, estimate=entropy_is_estimate, limits=limits)
    everything = pts + others
    reach = max(entropy or 0.0, 1e-3) * 1.08
    right = max(reach, max(p.rate for p in everything) * 1.1)
    ax.set_xlim(0, right)
    ax.set_ylim(0, max(reach, max(p.distortion for p in everything) * 1.15))
    name = label or "curve (evaluated at each \u03b2)"
    (line,) = ax.plot([p.rate for p in pts], [p.distortion for p in pts], marker="o", ms=4,
                      lw=1.5, zorder=3, label=name)  # fmt: skip
    for p in pts:
        # Below-left, under a convex decreasing curve where separately trained (worse) models
        # do not sit; below-right near R = 0, where the text would cross the axis.
        near_axis = p.rate < 0.12 * right
        ax.annotate(f"\u03b2={p.beta:.3g}", (p.rate, p.distortion), fontsize=7,
                    xytext=(5 if near_axis else -4, -10), ha="left" if near_axis else "right",
                    textcoords="offset points", color=line.get_color())  # fmt: skip
    if others:
        ax.scatter([p.rate for p in others], [p.distortion for p in others], marker="s", s=34,
                   facecolors="none", edgecolors="k", zorder=4,
                   label="separately trained (one model per \u03b2)")  # fmt: skip
        for p in others:
            ax.annotate(f"\u03b2={p.beta:.3g}", (p.rate, p.distortion), xytext=(5, 3),
                        textcoords="offset points", fontsize=7)  # fmt: skip
    ax.set_xlabel("rate R (nats)")
    ax.set_ylabel("distortion D (nats)")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right")
    return ax
