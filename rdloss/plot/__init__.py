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

from rdloss.plot._curve import CurvePoint, curve_table, rd_curve
from rdloss.plot._plane import RDPoint, rd_plane, trajectory

__all__ = ["CurvePoint", "RDPoint", "curve_table", "rd_curve", "rd_plane", "trajectory"]
