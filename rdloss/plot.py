r"""Plots of the rate-distortion plane (Alemi et al., 2018, Fig. 1) from your own numbers.

matplotlib is an optional extra (``pip install "rdloss[plot]"``); it is imported inside the
functions, so ``import rdloss.plot`` works without it.

* `rd_plane`: models as points in the (R, D) plane, labelled and coloured by
  objective, with ELBO iso-lines $D + R = c$, the line $D = H - R$ and the
  infeasible region below it when the data entropy ``H`` (or an estimate) is given.
* `trajectory`: the path a model takes through the plane while it trains.
* `rd_curve`: a rate-distortion curve, a line through (R, D) evaluated at many β (e.g. of
  one Multi-Rate model), with separately trained points for comparison; `curve_table`
  gives the same numbers as rows for CSV or JSON.

Examples:
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from rdloss.plot import RDPoint, rd_plane
    >>> ax = rd_plane([RDPoint(0.0, 3.0, "ELBO", "elbo"), RDPoint(0.5, 2.5, "sigma=0.5", "target")],
    ...               entropy=3.0)
    >>> ax.get_xlabel()
    'rate R (nats)'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["CurvePoint", "RDPoint", "curve_table", "rd_curve", "rd_plane", "trajectory"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# Sides of a point's label: right/left (x sign) and above/below (y sign), per group in turn.
_LABEL_SIDES = ((1, 1), (-1, 1), (1, -1), (-1, -1))


class RDPoint(NamedTuple):
    """One model in the rate-distortion plane.

    Attributes:
        rate: R in nats.
        distortion: D in nats.
        label: text written next to the point (e.g. ``"β=0.3"``).
        group: points of a group share colour and marker and one legend entry (e.g. the
            objective or the decoder).
    """

    rate: float
    distortion: float
    label: str = ""
    group: str = ""


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


def _as_point(point: RDPoint | tuple[float, float], index: int) -> RDPoint:
    if isinstance(point, RDPoint):
        given = point
    elif isinstance(point, tuple) and len(point) == 2:
        given = RDPoint(point[0], point[1])
    else:
        raise TypeError(
            f"points[{index}] must be an RDPoint or a (rate, distortion) pair, got {point!r}"
        )
    return given._replace(
        rate=_number(f"points[{index}].rate", given.rate),
        distortion=_number(f"points[{index}].distortion", given.distortion),
    )


def rd_plane(
    points: Sequence[RDPoint | tuple[float, float]],
    *,
    entropy: float | None = None,
    entropy_is_estimate: bool = False,
    elbo_levels: Sequence[float] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    r"""Draw models in the rate-distortion plane.

    Every point on the diagonal $D = H - R$ has the same ELBO $-H$, the best
    possible; no model lies below it (the sandwich $H - D \le I \le R$), so with an exact
    $H$ that region is shaded as infeasible, and the diagonal's ends are marked: the
    auto-decoding limit $(R = 0, D = H)$ and the auto-encoding limit $(R = H, D = 0)$.
    With an estimate of $H$ (e.g. the best $-\mathrm{ELBO}$ seen, which the best model
    meets by construction) the diagonal is drawn dashed and nothing is shaded. Dashed grey
    lines are ELBO iso-lines $D + R = c$: models on one line are indistinguishable by their
    ELBO however different their rates.

    Args:
        points: `RDPoint` s or plain ``(rate, distortion)`` pairs, nats.
        entropy: the data entropy ``H`` in nats, or an estimate of it; ``None`` draws no
            diagonal and no infeasible region.
        entropy_is_estimate: ``entropy`` is an estimate (e.g. the best ``-ELBO`` seen, an
            upper estimate of ``H``): it is labelled ``Ĥ`` and no region is shaded.
        elbo_levels: values ``c`` of ``D + R`` for the iso-lines; default the lowest and
            highest ``D + R`` among the points.
        ax: matplotlib axes to draw on; default a new figure.
        title: axes title.

    Returns:
        The matplotlib ``Axes``.

    Raises:
        TypeError: a point is neither an ``RDPoint`` nor a pair, a value is not a number,
            or ``ax`` is not an ``Axes``.
        ValueError: ``points`` or ``elbo_levels`` is empty, or a value is NaN/inf.
        ImportError: matplotlib is not installed.
    """
    pts = [_as_point(p, i) for i, p in enumerate(points)]
    if not pts:
        raise ValueError("points must contain at least one (rate, distortion) point")
    entropy = None if entropy is None else _number("entropy", entropy)
    totals = [p.rate + p.distortion for p in pts]
    if elbo_levels is None:
        levels = [min(totals), max(totals)]
    else:
        levels = _numbers("elbo_levels", elbo_levels)
        if not levels:
            raise ValueError("elbo_levels must contain at least one value, or be None")
    ax = _axes(ax)
    reach = max(max(levels), entropy or 0.0, 1e-3) * 1.08
    labelled = -math.inf
    for c in sorted(set(levels)):
        ax.plot([0, c], [c, 0], ls="--", lw=0.8, color="0.6", zorder=1)
        if c - labelled > 0.03 * reach:  # a label per line, unless two lines nearly coincide
            ax.annotate(f"ELBO = {-c:.3g}", (0.8 * c, 0.2 * c), xytext=(4, 4), fontsize=7,
                        textcoords="offset points", color="0.4")  # fmt: skip
            labelled = c
    if entropy is not None:
        _landmarks(ax, entropy, estimate=entropy_is_estimate)
    from matplotlib.collections import PathCollection
    from matplotlib.colors import to_rgba

    xmax = max(reach, max(p.rate for p in pts) * 1.1)
    ymax = max(reach, max(p.distortion for p in pts) * 1.1)
    groups = list(dict.fromkeys(p.group for p in pts))
    rank = {group: index for index, group in enumerate(groups)}
    for index, group in enumerate(groups):
        members = [p for p in pts if p.group == group]
        colour = f"C{index % 10}"
        # Points of several groups can coincide (models that all collapse to R = 0): a point
        # is drawn larger the more later groups' points lie on it, and faces are translucent
        # under solid edges, so they show as nested outlines instead of one hiding the rest.
        covering = {
            p: sum(
                rank[q.group] > index
                and abs(q.rate - p.rate) < 0.015 * xmax
                and abs(q.distortion - p.distortion) < 0.015 * ymax
                for q in pts
            )
            for p in members
        }
        size = {p: 36.0 * (1.0 + 0.7 * k) ** 2 for p, k in covering.items()}
        ax.scatter(
            [p.rate for p in members],
            [p.distortion for p in members],
            s=[size[p] for p in members],
            zorder=3 + 0.01 * index,
            marker=_MARKERS[index % len(_MARKERS)],
            facecolors=to_rgba(colour, 0.3),
            edgecolors=colour,
            linewidths=1.3,
            label=group or None,
            clip_on=False,
        )
        # Each group writes its labels on another side, so coinciding points stay legible,
        # clear of the marker and above-right near the left edge (inside the axes); labels
        # of one group's points closer than 4% of the axes are joined into one.
        side = _LABEL_SIDES[index % len(_LABEL_SIDES)]
        for first, text in _merged_labels(members, xmax, ymax):
            sx, sy = (1, 1) if first.rate < 0.1 * xmax else side
            radius = math.sqrt(size[first]) / 2
            offset = (sx * (2 + radius), 1 + 0.6 * radius if sy > 0 else -(8 + 0.6 * radius))
            ax.annotate(text, (first.rate, first.distortion), xytext=offset, fontsize=8,
                        ha="left" if sx > 0 else "right", textcoords="offset points",
                        zorder=20)  # fmt: skip
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.set_xlabel("rate R (nats)")
    ax.set_ylabel("distortion D (nats)")
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        legend = ax.legend(fontsize=7, loc="upper right")
        for handle in legend.legend_handles:  # one size in the legend, whatever the points'
            if isinstance(handle, PathCollection):
                handle.set_sizes([36.0])
    return ax


def _merged_labels(
    points: Sequence[RDPoint], xmax: float, ymax: float
) -> list[tuple[RDPoint, str]]:
    """``(point, text)`` per label, nearby points' labels joined with commas.

    Two points are nearby when both coordinates differ by less than 4% of the axis; the
    joined label goes with the first point of the cluster, in the order given.

    Examples:
        >>> pts = [RDPoint(0.5, 98.7, "β=1"), RDPoint(1.7, 97.5, "β=0.5"), RDPoint(33, 83, "β=1")]
        >>> [(p.rate, text) for p, text in _merged_labels(pts, 150.0, 150.0)]
        [(0.5, 'β=1, β=0.5'), (33, 'β=1')]
    """
    clusters: list[list[RDPoint]] = []
    for p in (p for p in points if p.label):
        near = next(
            (
                c
                for c in clusters
                if abs(c[0].rate - p.rate) < 0.04 * xmax
                and abs(c[0].distortion - p.distortion) < 0.04 * ymax
            ),
            None,
        )
        if near is None:
            clusters.append([p])
        else:
            near.append(p)
    return [(c[0], ", ".join(p.label for p in c)) for c in clusters]


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


def trajectory(
    rate: Sequence[float],
    distortion: Sequence[float],
    *,
    label: str = "",
    entropy: float | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Draw a training trajectory in the rate-distortion plane (start ○, end ●).

    Args:
        rate: R at each logged step, nats (any sequence of numbers, e.g. a 1-D tensor).
        distortion: D at the same steps.
        label: legend entry.
        entropy: ``H`` or an estimate; draws the diagonal ``D = H - R`` for reference.
        ax: axes to draw on; default a new figure. Call again with the same ``ax`` to
            overlay several runs.

    Returns:
        The matplotlib ``Axes``.

    Raises:
        TypeError: a value is not a number, or ``ax`` is not an ``Axes``.
        ValueError: the sequences are empty or of different lengths, or a value is NaN/inf.
        ImportError: matplotlib is not installed.

    Examples:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> ax = trajectory([0.0, 0.3, 0.5], [3.0, 2.8, 2.5], label="sigma = 0.5")
        >>> len(ax.lines)
        1
    """
    rates, distortions = _numbers("rate", rate), _numbers("distortion", distortion)
    entropy = None if entropy is None else _number("entropy", entropy)
    if not rates or len(rates) != len(distortions):
        raise ValueError(
            "rate and distortion must be non-empty and of equal length, got "
            f"{len(rates)} and {len(distortions)}"
        )
    ax = _axes(ax)
    (line,) = ax.plot(rates, distortions, lw=1.2, label=label or None)
    ax.scatter(rates[:1], distortions[:1], s=30, facecolors="none", edgecolors=line.get_color())
    ax.scatter(rates[-1:], distortions[-1:], s=30, color=line.get_color(), zorder=3)
    if entropy is not None:
        ax.axline((0.0, entropy), slope=-1.0, color="k", lw=0.8, ls=":")
    ax.set_xlabel("rate R (nats)")
    ax.set_ylabel("distortion D (nats)")
    if label:
        ax.legend(fontsize=7)
    return ax


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
