"""Models as points in the rate-distortion plane, and a training run's path through it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from rdloss.plot._common import _axes, _landmarks, _number, _numbers

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["RDPoint", "rd_plane", "trajectory"]

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
