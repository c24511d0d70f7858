r"""Data that ships with rdloss: the paper's toy distribution and binarised 8x8 digits.

Nothing here downloads. The toy distribution is computed exactly; the digits are read from
``rdloss/demo/data/digits.bin.gz`` (regenerate it with ``make_digits.py`` beside it).

Digits attribution: UCI "Optical Recognition of Handwritten Digits" (optdigits),
E. Alpaydin and C. Kaynak (1998), https://doi.org/10.24432/C50P49, licence CC BY 4.0, in the
copy scikit-learn bundles (1,797 images); pixels binarised as ``intensity >= 8`` of 16.
"""

from __future__ import annotations

import gzip
import math
import struct
from importlib import resources
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "DIGITS_ATTRIBUTION",
    "Digits",
    "ToyData",
    "load_digits",
    "toy_data",
]

DIGITS_ATTRIBUTION = (
    "8x8 digits: UCI optdigits (Alpaydin & Kaynak, 1998, doi:10.24432/C50P49), CC BY 4.0, "
    "as bundled by scikit-learn; binarised at intensity >= 8 of 16"
)
_HEADER = b"RDLOSSDIGITS"
_SQRT2 = math.sqrt(2.0)


class Digits(NamedTuple):
    """The embedded binarised digits.

    Attributes:
        images: ``(N, 64)`` float32 pixels in ``{0, 1}``, row-major 8x8, ``N = 1797``.
        labels: ``(N,)`` int64 digit classes 0..9.
    """

    images: Tensor
    labels: Tensor


class ToyData(NamedTuple):
    r"""The exact data distribution of the paper's toy model (Alemi et al., 2018, Sec. 4).

    $z^* \sim \mathrm{Ber}(0.7)$, $h \sim N(\mu_{z^*}, s^2)$, and ``x`` is the
    index of ``h``'s bin among ``n_bins`` equal bins on ``[lo, hi]``; the tails beyond the
    range fold into the two edge bins.

    Attributes:
        probs: ``(n_bins,)`` float64 $p^*(x)$.
        joint: ``(2, n_bins)`` float64 $p(z^*, x)$.
        means: ``(mu_0, mu_1)``, the component means (``-mu, +mu``).
        scale: the common standard deviation ``s`` solved for.
        entropy: $H = -\sum_x p^*(x) \log p^*(x)$ in nats.
        mutual_information: $I(x; z^*)$ in nats (the target, to ~1e-10).
        edges: ``(n_bins + 1,)`` bin edges.
    """

    probs: Tensor
    joint: Tensor
    means: tuple[float, float]
    scale: float
    entropy: float
    mutual_information: float
    edges: Tensor


def load_digits() -> Digits:
    """Load the embedded binarised 8x8 digits (torch and the standard library only).

    Returns:
        `Digits` with 1,797 images; see `DIGITS_ATTRIBUTION` for the source.

    Examples:
        >>> d = load_digits()
        >>> d.images.shape, d.labels.shape, sorted(d.images.unique().tolist())
        (torch.Size([1797, 64]), torch.Size([1797]), [0.0, 1.0])
    """
    blob = resources.files("rdloss.demo").joinpath("data").joinpath("digits.bin.gz").read_bytes()
    raw = gzip.decompress(blob)
    if not raw.startswith(_HEADER):
        raise ValueError("digits.bin.gz is corrupt: bad header; rerun make_digits.py")
    (n,) = struct.unpack_from("<I", raw, len(_HEADER))
    start = len(_HEADER) + 4
    body = torch.frombuffer(bytearray(raw[start:]), dtype=torch.uint8)
    if body.numel() != 9 * n:
        raise ValueError(f"digits.bin.gz is corrupt: expected {9 * n} bytes, got {body.numel()}")
    packed = body[: 8 * n].reshape(n, 8, 1)
    # Most significant bit first, as numpy.packbits writes.
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8)
    bits = (packed >> shifts) & 1
    return Digits(bits.reshape(n, 64).float(), body[8 * n :].long())


def _normal_cdf(t: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(t / _SQRT2))


def _entropy(p: Tensor) -> Tensor:
    terms: Tensor = torch.special.xlogy(p, p)
    return -terms.sum()


def _toy_joint(scale: float, mu: float, prior: float, edges: Tensor) -> Tensor:
    inner = edges[1:-1]
    rows = []
    for mean in (-mu, mu):
        cdf = _normal_cdf((inner - mean) / scale)
        # Folding the tails: the first bin takes (-inf, e_1), the last (e_{n-1}, inf).
        cdf = torch.cat([cdf.new_zeros(1), cdf, cdf.new_ones(1)])
        rows.append(cdf.diff())
    weights = torch.tensor([1.0 - prior, prior], dtype=torch.float64)
    return weights[:, None] * torch.stack(rows)


def _mutual_information(joint: Tensor) -> float:
    return float(_entropy(joint.sum(0)) + _entropy(joint.sum(1)) - _entropy(joint.flatten()))


def toy_data(
    *,
    n_bins: int = 30,
    prior: float = 0.7,
    mu: float = 1.0,
    lo: float = -3.0,
    hi: float = 3.0,
    target: float = 0.5,
) -> ToyData:
    r"""Solve the toy model's common scale so that $I(x; z^*)$ equals ``target``.

    The components sit at $\pm$ ``mu`` with one standard deviation ``s``; ``I`` falls
    monotonically as ``s`` grows, so bisection on ``s`` (100 halvings) finds the scale to
    machine precision. The paper gives only ``I = 0.5`` nats, not the parameters.

    Args:
        n_bins: number of equal bins (the paper's 30).
        prior: $P(z^* = 1)$ (the paper's 0.7).
        mu: half the distance between the component means.
        lo: left end of the binned range (mass below folds into the first bin).
        hi: right end (mass above folds into the last bin).
        target: $I(x; z^*)$ in nats, below $H(z^*)$.

    Returns:
        `ToyData`.

    Raises:
        ValueError: an argument is out of range or the target cannot be reached.

    Examples:
        >>> toy = toy_data()
        >>> round(toy.mutual_information, 6), round(toy.scale, 4), round(toy.entropy, 4)
        (0.5, 0.5984, 3.0184)
    """
    if n_bins < 2 or not 0.0 < prior < 1.0 or not lo < hi or mu <= 0.0:
        raise ValueError(
            f"need n_bins >= 2, 0 < prior < 1, lo < hi and mu > 0, got n_bins={n_bins}, "
            f"prior={prior}, lo={lo}, hi={hi}, mu={mu}"
        )
    edges = torch.linspace(lo, hi, n_bins + 1, dtype=torch.float64)
    ceiling = -(prior * math.log(prior) + (1 - prior) * math.log(1 - prior))
    if not 0.0 < target < ceiling:
        raise ValueError(f"target must lie in (0, H(z*) = {ceiling:.4f}) nats, got {target}")
    small, large = 1e-3 * (hi - lo), 10.0 * (hi - lo)
    for _ in range(100):
        mid = 0.5 * (small + large)
        if _mutual_information(_toy_joint(mid, mu, prior, edges)) > target:
            small = mid
        else:
            large = mid
    scale = 0.5 * (small + large)
    joint = _toy_joint(scale, mu, prior, edges)
    probs = joint.sum(0)
    return ToyData(
        probs=probs,
        joint=joint,
        means=(-mu, mu),
        scale=scale,
        entropy=float(_entropy(probs)),
        mutual_information=_mutual_information(joint),
        edges=edges,
    )
