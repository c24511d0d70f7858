r"""CPU-sized versions of the paper's MNIST encoder and decoders (Alemi et al., 2018, Sec. 5).

* `ConvEncoder`: two stride-2 convolutions to a diagonal Gaussian $e(z|x)$ (the paper's
  ``-`` encoder, smaller).
* `DeconvDecoder`: a linear layer and two transposed convolutions to a factorised
  Bernoulli $d(x|z) = \prod_i \mathrm{Ber}(x_i; f_i(z))$ (the paper's ``-`` decoder).
* `PixelCNNDecoder`: a gated PixelCNN (van den Oord et al., 2016, "Conditional Image
  Generation with PixelCNN Decoders") whose every gate is biased by $z$:
  $d(x|z) = \prod_i \mathrm{Ber}(x_i; f_i(x_{<i}, z))$ in raster order, the paper's
  ``+`` decoder (it used PixelCNN++), strong enough to model the digits without $z$.

Images are ``(B, 1, 28, 28)`` floats in ``{0, 1}``; every decoder maps ``(z, x)`` to a
``Distribution`` with event shape ``(1, 28, 28)``, ``x`` being read only by the PixelCNN
(teacher forcing: one pass gives every conditional, so the log-likelihood is exact).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from rdloss import helpers

__all__ = ["ConvEncoder", "DeconvDecoder", "MaskedConv2d", "PixelCNNDecoder"]

SIDE = 28


class ConvEncoder(nn.Module):
    """Diagonal-Gaussian encoder: conv 5x5 stride 2 (14x14), conv 5x5 stride 2 (7x7), linear.

    Args:
        latent_dim: latent size.
        channels: channels of the first convolution (the second has twice as many).

    Examples:
        >>> enc = ConvEncoder(8)
        >>> q = enc(torch.zeros(3, 1, 28, 28))
        >>> q.batch_shape, q.event_shape
        (torch.Size([3]), torch.Size([8]))
    """

    def __init__(self, latent_dim: int, channels: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 5, stride=2, padding=2),
            nn.ELU(),
            nn.Conv2d(channels, 2 * channels, 5, stride=2, padding=2),
            nn.ELU(),
            nn.Flatten(),
            nn.Linear(2 * channels * 7 * 7, 2 * latent_dim),
        )

    def forward(self, x: Tensor) -> Distribution:
        """``(B, 1, 28, 28)`` -> ``Independent(Normal)``, batch ``(B,)``, event ``(latent,)``."""
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return helpers.normal(mu, logvar=logvar.clamp(-12.0, 8.0))


class DeconvDecoder(nn.Module):
    """Factorised Bernoulli decoder: linear to 7x7, two stride-2 transposed convolutions.

    Args:
        latent_dim: latent size.
        channels: channels at 14x14 (twice as many at 7x7).

    Examples:
        >>> dec = DeconvDecoder(8)
        >>> dec(torch.zeros(3, 8), torch.zeros(3, 1, 28, 28)).event_shape
        torch.Size([1, 28, 28])
    """

    def __init__(self, latent_dim: int, channels: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 2 * channels * 7 * 7),
            nn.ELU(),
            nn.Unflatten(1, (2 * channels, 7, 7)),
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),
            nn.ELU(),
            nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1),
        )

    def forward(self, z: Tensor, x: Tensor) -> Distribution:
        """``d(x|z)`` over ``(B, 1, 28, 28)``; ``x`` is unused (no autoregression)."""
        del x
        return helpers.bernoulli(logits=self.net(z), event_dims=3)


class MaskedConv2d(nn.Conv2d):
    """Convolution that sees only the pixels before the centre in raster order.

    Mask ``"A"`` (first layer) hides the centre too, so output ``i`` depends on inputs
    ``< i`` only; mask ``"B"`` (later layers) keeps the centre, whose features already
    depend on earlier pixels only (van den Oord et al., 2016, "Pixel Recurrent Neural
    Networks", Sec. 3.4).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd square kernel size.
        mask: ``"A"`` or ``"B"``.

    Examples:
        >>> MaskedConv2d(1, 1, 3, mask="A").mask[0, 0]
        tensor([[1., 1., 1.],
                [1., 0., 0.],
                [0., 0., 0.]])
    """

    mask: Tensor

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, mask: Literal["A", "B"]
    ) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        centre = kernel_size // 2
        keep = torch.ones(kernel_size, kernel_size)
        keep[centre, centre + (mask == "B") :] = 0.0
        keep[centre + 1 :] = 0.0
        self.register_buffer("mask", keep.expand_as(self.weight).clone())

    def forward(self, x: Tensor) -> Tensor:
        """Masked convolution of ``(B, in, H, W)`` to ``(B, out, H, W)``."""
        out: Tensor = self._conv_forward(x, self.weight * self.mask, self.bias)
        return out


class _GatedBlock(nn.Module):
    """Residual gated layer ``x + W(tanh(a + V_a z) * sigmoid(b + V_b z))``."""

    def __init__(self, channels: int, latent_dim: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = MaskedConv2d(channels, 2 * channels, kernel_size, mask="B")
        self.latent = nn.Linear(latent_dim, 2 * channels)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, h: Tensor, z: Tensor) -> Tensor:
        a, b = (self.conv(h) + self.latent(z)[:, :, None, None]).chunk(2, dim=1)
        gated: Tensor = self.out(torch.tanh(a) * torch.sigmoid(b))
        return h + gated


class PixelCNNDecoder(nn.Module):
    r"""Gated PixelCNN Bernoulli decoder conditioned on ``z`` through every gate.

    A 7x7 mask-A convolution, ``layers`` residual gated mask-B blocks, and two 1x1
    convolutions to the logits. Logit ``i`` depends on pixels ``< i`` in raster order (and on
    ``z``), so ``log d(x|z) = sum_i log Ber(x_i; f_i(x_{<i}, z))`` is an exact density.

    Args:
        latent_dim: latent size.
        channels: feature channels.
        layers: gated blocks.
        kernel_size: kernel of the gated blocks.

    Examples:
        >>> dec = PixelCNNDecoder(8, channels=8, layers=2)
        >>> dec(torch.zeros(3, 8), torch.zeros(3, 1, 28, 28)).event_shape
        torch.Size([1, 28, 28])
    """

    def __init__(
        self, latent_dim: int, channels: int = 16, layers: int = 3, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.first = MaskedConv2d(1, channels, 7, mask="A")
        self.blocks = nn.ModuleList(
            _GatedBlock(channels, latent_dim, kernel_size) for _ in range(layers)
        )
        self.head = nn.Sequential(
            nn.ELU(), nn.Conv2d(channels, channels, 1), nn.ELU(), nn.Conv2d(channels, 1, 1)
        )

    def logits(self, z: Tensor, x: Tensor) -> Tensor:
        """``(B, 1, 28, 28)`` logits of every pixel given the pixels before it and ``z``."""
        h = self.first(2.0 * x - 1.0)  # centred input: a zero (unseen) pixel means "unknown"
        for block in self.blocks:
            h = block(h, z)
        out: Tensor = self.head(h)
        return out

    def forward(self, z: Tensor, x: Tensor) -> Distribution:
        """``d(x|z)`` over ``(B, 1, 28, 28)`` with the conditionals evaluated at ``x``."""
        return helpers.bernoulli(logits=self.logits(z, x), event_dims=3)
