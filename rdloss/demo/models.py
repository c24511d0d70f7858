r"""Small reference models for the demo: an MLP encoder and two Bernoulli decoders.

They show how an existing VAE plugs into `rdloss.RateDistortionLoss`; they are not
part of the core API. Both decoders map ``(z, x)`` to ``d(x|z)``: the factorised one ignores
``x``, the autoregressive one (MADE, Germain et al., 2015) reads the pixels before each
pixel, as a PixelCNN does, which lets it model the data without the latent code: the
paper's "powerful decoder" (Alemi et al., 2018, Sec. 4).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from rdloss import helpers

__all__ = ["FactorizedDecoder", "MADEDecoder", "MLPEncoder"]


class MLPEncoder(nn.Module):
    """Diagonal-Gaussian encoder ``e(z|x)`` with one hidden layer.

    Args:
        data_dim: input size (64 for the 8x8 digits).
        latent_dim: latent size.
        hidden: hidden units.

    Examples:
        >>> enc = MLPEncoder(64, 4)
        >>> enc(torch.zeros(3, 64)).batch_shape, enc(torch.zeros(3, 64)).event_shape
        (torch.Size([3]), torch.Size([4]))
    """

    def __init__(self, data_dim: int, latent_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(data_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim)
        )

    def forward(self, x: Tensor) -> Distribution:
        """``(B, data_dim)`` -> ``Independent(Normal)`` with batch ``(B,)``, event ``(latent,)``."""
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return helpers.normal(mu, logvar=logvar.clamp(-12.0, 8.0))


class FactorizedDecoder(nn.Module):
    r"""Factorised Bernoulli decoder $d(x|z) = \prod_i \mathrm{Ber}(x_i; f_i(z))$.

    Args:
        latent_dim: latent size.
        data_dim: number of pixels.
        hidden: hidden units.

    Examples:
        >>> dec = FactorizedDecoder(4, 64)
        >>> dec(torch.zeros(3, 4), torch.zeros(3, 64)).event_shape
        torch.Size([64])
    """

    def __init__(self, latent_dim: int, data_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, data_dim)
        )

    def forward(self, z: Tensor, x: Tensor) -> Distribution:
        """``d(x|z)`` over ``(B, data_dim)``; ``x`` is unused (no autoregression)."""
        del x
        return helpers.bernoulli(logits=self.net(z))


class _MaskedLinear(nn.Linear):
    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADEDecoder(nn.Module):
    r"""Autoregressive Bernoulli decoder $d(x|z) = \prod_i \mathrm{Ber}(x_i; f_i(x_{<i}, z))$.

    A one-hidden-layer MADE (Germain et al., 2015) over the pixels in raster order; the latent
    enters every hidden unit and every output unconstrained. Given ``x`` (teacher forcing) one
    pass yields all conditionals, so the log-likelihood is exact.

    Args:
        latent_dim: latent size.
        data_dim: number of pixels.
        hidden: hidden units.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> dec = MADEDecoder(2, 5, hidden=8)
        >>> x, z = torch.zeros(1, 5), torch.zeros(1, 2)
        >>> x2 = x.clone(); x2[0, 2] = 1.0  # changing pixel 2 leaves pixels 0..2 unchanged
        >>> a, b = dec(z, x).base_dist.logits, dec(z, x2).base_dist.logits
        >>> torch.equal(a[:, :3], b[:, :3]), torch.equal(a[:, 3:], b[:, 3:])
        (True, False)
    """

    def __init__(self, latent_dim: int, data_dim: int, hidden: int = 256) -> None:
        super().__init__()
        degree_in = torch.arange(1, data_dim + 1)
        # Hidden degrees cycle over 1..data_dim-1, so every conditional gets units.
        degree_hidden = torch.arange(hidden) % max(data_dim - 1, 1) + 1
        self.hidden = _MaskedLinear((degree_hidden[:, None] >= degree_in[None, :]).float())
        self.out = _MaskedLinear((degree_in[:, None] > degree_hidden[None, :]).float())
        # Direct pixel-to-pixel connections (x_j -> x_i for j < i).
        self.direct = _MaskedLinear((degree_in[:, None] > degree_in[None, :]).float())
        self.latent_hidden = nn.Linear(latent_dim, hidden, bias=False)
        self.latent_out = nn.Linear(latent_dim, data_dim, bias=False)

    def forward(self, z: Tensor, x: Tensor) -> Distribution:
        """``d(x|z)`` over ``(B, data_dim)`` with the conditionals evaluated at ``x``."""
        h = torch.relu(self.hidden(x) + self.latent_hidden(z))
        return helpers.bernoulli(logits=self.out(h) + self.direct(x) + self.latent_out(z))
