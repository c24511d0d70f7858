"""Tests of rdloss.plot: the rate-distortion plane and trajectories."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from _catalogue import Entry, expect_named_error

from rdloss import plot

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from rdloss.plot import CurvePoint, RDPoint, curve_table, rd_curve, rd_plane, trajectory


def test_rd_plane_draws_points_lines_and_region() -> None:
    points = [
        RDPoint(0.0, 3.0, "ELBO", "elbo"),
        RDPoint(0.5, 2.5, "sigma=0.5", "target"),
        (1.0, 2.4),
    ]
    ax = rd_plane(points, entropy=3.0, title="toy")
    offsets = [c.get_offsets().tolist() for c in ax.collections if hasattr(c, "get_offsets")]
    scattered = sorted(p for block in offsets for p in block if len(block) and len(p) == 2)
    assert [0.0, 3.0] in scattered and [1.0, 2.4] in scattered
    # The diagonal D = H - R runs from (0, H) to (H, 0).
    diag = [ln for ln in ax.lines if ln.get_label() == "D = H \u2212 R"]
    assert len(diag) == 1 and diag[0].get_xydata().tolist() == [[0.0, 3.0], [3.0, 0.0]]
    # ELBO iso-lines at the lowest and highest D + R of the points: 3.0 and 3.4.
    iso = sorted(ln.get_xydata()[0, 1] for ln in ax.lines if ln.get_linestyle() == "--")
    assert iso == pytest.approx([3.0, 3.4])
    labels = ax.get_legend_handles_labels()[1]
    assert "elbo" in labels and "target" in labels and any("infeasible" in t for t in labels)
    assert ax.get_title() == "toy"
    plt.close("all")


def test_rd_plane_estimate_and_custom_levels() -> None:
    fig, ax = plt.subplots()
    out = rd_plane(
        [(5.0, 10.0)], entropy=14.0, entropy_is_estimate=True, elbo_levels=[15, 20], ax=ax
    )
    assert out is ax
    assert any("estimate" in t for t in ax.get_legend_handles_labels()[1])
    assert len([ln for ln in ax.lines if ln.get_linestyle() == "--"]) == 2
    plt.close(fig)


def test_rd_plane_rejects_bad_points() -> None:
    with pytest.raises(ValueError, match="at least one"):
        rd_plane([])
    with pytest.raises(TypeError, match=r"points\[0\]"):
        rd_plane([(1.0, 2.0, 3.0)])  # type: ignore[list-item]


def test_trajectory_accepts_tensors_and_overlays() -> None:
    history = torch.tensor([[0.0, 3.0], [0.2, 2.8], [0.5, 2.5]])
    ax = trajectory(history[:, 0], history[:, 1], label="a")
    trajectory([0.0, 1.0], [3.0, 2.0], label="b", entropy=3.0, ax=ax)
    paths = [torch.from_numpy(ln.get_xydata()) for ln in ax.lines if ln.get_label() in ("a", "b")]
    torch.testing.assert_close(paths[0], history.double())
    assert len(paths) == 2
    with pytest.raises(ValueError, match="equal length"):
        trajectory([0.0], [1.0, 2.0])
    plt.close("all")


def test_import_without_matplotlib_is_lazy() -> None:
    import subprocess
    import sys

    # rdloss itself (through torchmetrics, which probes for matplotlib) is imported first;
    # then matplotlib is made unimportable, as it is where it is not installed.
    code = (
        "import sys, rdloss\n"
        "sys.modules['matplotlib'] = None; sys.modules['matplotlib.pyplot'] = None\n"
        "import rdloss.plot as p\n"
        "try:\n    p.rd_plane([(0.0, 1.0)])\nexcept ImportError as e:\n    print(e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "rdloss[plot]"' in proc.stdout


# --- bad inputs: plots --------------------------------------------------------------------
# The catalogue's part for this module (tests/_catalogue.py); docs/errors.md lists its keys.


BAD_INPUTS: dict[str, Entry] = {
    "plot: no points": (
        lambda: plot.rd_plane([]),
        ValueError,
        r"points must contain at least one \(rate, distortion\) point",
    ),
    "plot: point given as a triple": (
        lambda: plot.rd_plane([(1.0, 2.0, 3.0)]),  # type: ignore[list-item]
        TypeError,
        r"points\[0\] must be an RDPoint or a \(rate, distortion\) pair, got \(1.0, 2.0, 3.0\)",
    ),
    "plot: rate given as text": (
        lambda: plot.rd_plane([plot.RDPoint("0.5", 2.0)]),  # type: ignore[arg-type]
        TypeError,
        r"points\[0\].rate must be a real number, got str '0.5'",
    ),
    "plot: NaN distortion": (
        lambda: plot.rd_plane([(1.0, 2.0), (0.5, float("nan"))]),
        ValueError,
        r"points\[1\].distortion must be finite, got nan",
    ),
    "plot: empty ELBO levels": (
        lambda: plot.rd_plane([(1.0, 2.0)], elbo_levels=[]),
        ValueError,
        r"elbo_levels must contain at least one value, or be None",
    ),
    "plot: NaN entropy": (
        lambda: plot.rd_plane([(1.0, 2.0)], entropy=float("nan")),
        ValueError,
        r"entropy must be finite, got nan",
    ),
    "plot: axes that are not matplotlib Axes": (
        lambda: plot.rd_plane([(1.0, 2.0)], ax="left"),  # type: ignore[arg-type]
        TypeError,
        r"ax must be a matplotlib Axes or None, got str",
    ),
    "plot: trajectory of unequal lengths": (
        lambda: plot.trajectory([0.0, 1.0], [3.0]),
        ValueError,
        r"rate and distortion must be non-empty and of equal length, got 2 and 1",
    ),
    "plot: trajectory of a 2-D tensor": (
        lambda: plot.trajectory(torch.ones(2, 2), torch.ones(2, 2)),  # type: ignore[arg-type]
        TypeError,
        r"rate\[0\] must be a real number, got Tensor",
    ),
    "plot: trajectory given as text": (
        lambda: plot.trajectory("0.1 0.2", [1.0, 2.0]),  # type: ignore[arg-type]
        TypeError,
        r"rate must be a sequence of numbers, got str",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_named_error(case: str) -> None:
    try:
        expect_named_error(BAD_INPUTS[case])
    finally:
        plt.close("all")


CURVE = [
    CurvePoint(1.0, 17.0, 73.5),
    (0.1, 40.0, 53.8),
    (10.0, torch.tensor(1.4, dtype=torch.float64), 81.6),
]
SEPARATE = [(0.1, 42.0, 57.0), (1.0, 18.0, 76.7)]


def test_rd_curve_draws_the_line_in_beta_order_with_estimate_and_limits(tmp_path) -> None:
    ax = rd_curve(CURVE, separate=SEPARATE, entropy=80.0, label="Multi-Rate (one run)")
    curve = [ln for ln in ax.lines if ln.get_label() == "Multi-Rate (one run)"]
    assert len(curve) == 1  # a line through the points sorted by beta, not by rate
    assert curve[0].get_xydata().tolist() == [[40.0, 53.8], [17.0, 73.5], [1.4, 81.6]]
    assert curve[0].get_marker() == "o"
    labels = ax.get_legend_handles_labels()[1]
    assert "D = Ĥ \u2212 R (Ĥ: an estimate of H)" in labels  # the estimate is labelled as one
    assert "separately trained (one model per \u03b2)" in labels
    assert not any("infeasible" in t for t in labels)  # nothing shaded for an estimate
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("\u03b2=0.1") == 2 and "\u03b2=10" in texts
    assert any(t.startswith("auto-decoding") for t in texts)
    assert any(t.startswith("auto-encoding") for t in texts)
    assert ax.get_xlabel() == "rate R (nats)" and ax.get_ylabel() == "distortion D (nats)"
    ax.figure.savefig(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 10_000
    plt.close("all")


def test_rd_curve_options() -> None:
    fig, ax = plt.subplots()
    assert rd_curve(CURVE, ax=ax, entropy=80.0, limits=False) is ax
    assert not any(t.get_text().startswith("auto-") for t in ax.texts)
    rd_curve(CURVE, ax=ax, entropy=80.0, entropy_is_estimate=False, title="t")
    assert any("infeasible" in t for t in ax.get_legend_handles_labels()[1])
    assert "curve (evaluated at each \u03b2)" in ax.get_legend_handles_labels()[1]
    plt.close(fig)
    ax = rd_curve(CURVE)  # no entropy: no diagonal, no limits
    assert len(ax.lines) == 1 and not any(t.get_text().startswith("auto-") for t in ax.texts)
    plt.close("all")


def test_rd_curve_rejects_bad_points() -> None:
    with pytest.raises(ValueError, match="at least one"):
        rd_curve([])
    with pytest.raises(TypeError, match=r"points\[0\]"):
        rd_curve([(1.0, 2.0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"points\[0\].beta must be positive"):
        rd_curve([(0.0, 2.0, 3.0)])
    with pytest.raises(ValueError, match=r"separate\[0\].rate must be finite"):
        rd_curve(CURVE, separate=[(1.0, float("nan"), 3.0)])


def test_curve_table_rows_match_the_plot() -> None:
    rows = curve_table(CURVE, SEPARATE)
    assert [r["kind"] for r in rows] == ["curve"] * 3 + ["separate"] * 2
    assert [r["beta"] for r in rows] == [0.1, 1.0, 10.0, 0.1, 1.0]
    assert rows[2] == {
        "kind": "curve", "beta": 10.0, "rate": pytest.approx(1.4), "distortion": 81.6,
        "elbo": pytest.approx(-83.0),
    }  # fmt: skip
    assert all(isinstance(v, (str, float)) for r in rows for v in r.values())  # JSON-ready


def _scatters(ax) -> dict[str, object]:
    """The points' scatter collections of an ``rd_plane`` by legend label."""
    return {c.get_label(): c for c in ax.collections if not c.get_label().startswith("_")}


def test_coinciding_points_of_several_groups_stay_visible() -> None:
    # Three collapsed models of three groups within 0.3 nats of each other, one apart.
    points = [
        RDPoint(0.49, 98.67, "β=1", "PixelCNN, β"),
        RDPoint(33.3, 82.9, "β=1", "PixelCNN, β"),
        RDPoint(0.71, 98.91, "", "PixelCNN, vamp"),
        RDPoint(0.67, 98.73, "", "PixelCNN, maf"),
    ]
    ax = rd_plane(points, entropy=98.5, entropy_is_estimate=True)
    groups = _scatters(ax)
    sizes = [
        groups[g].get_sizes().tolist() for g in ("PixelCNN, β", "PixelCNN, vamp", "PixelCNN, maf")
    ]
    # Drawn in order, each covered point larger than the points covering it: nested outlines.
    assert sizes[0][0] > sizes[1][0] > sizes[2][0]
    # A point that nothing covers keeps the base size, whatever its group.
    assert sizes[0][1] == sizes[2][0]
    # Faces are translucent, edges opaque: a covering marker does not hide the outline below.
    face, edge = (
        groups["PixelCNN, vamp"].get_facecolor()[0],
        groups["PixelCNN, vamp"].get_edgecolor()[0],
    )
    assert face[3] < 1.0 and edge[3] == 1.0
    # The legend shows one marker size, not the largest point's.
    legend_sizes = {
        h.get_sizes()[0] for h in ax.get_legend().legend_handles if hasattr(h, "get_sizes")
    }
    assert legend_sizes == {36.0}
    plt.close("all")


def test_nearby_labels_are_joined_and_stay_inside_the_axes() -> None:
    points = [
        RDPoint(0.49, 98.67, "β=1", "PixelCNN, β"),
        RDPoint(1.69, 97.52, "β=0.5", "PixelCNN, β"),
        RDPoint(40.0, 60.0, "β=3", "PixelCNN, β"),
    ]
    # The fourth group writes its labels below left, which near R = 0 would leave the axes.
    groups = [RDPoint(50.0, 50.0 + i, "", f"g{i}") for i in range(3)]
    ax = rd_plane(groups + points, entropy=98.5, entropy_is_estimate=True)
    texts = {t.get_text(): t for t in ax.texts}
    assert "β=1, β=0.5" in texts and "β=0.5" not in texts and "β=1" not in texts
    joined = texts["β=1, β=0.5"]
    assert joined.xy == (0.49, 98.67)
    # Near the left edge a label goes above right of its point, inside the axes.
    assert joined.get_ha() == "left" and joined.xyann[0] > 0 and joined.xyann[1] > 0
    # Elsewhere the fourth group's side (below left) is kept.
    assert texts["β=3"].get_ha() == "right" and texts["β=3"].xyann[1] < 0
    plt.close("all")
