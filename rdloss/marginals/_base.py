"""The marginal base class and the Gaussian marginals with a closed-form KL."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal
from typing_extensions import override

from rdloss._checks import check_positive_int
from rdloss.families import StandardGaussian

__all__ = ["DiagonalGaussian", "Marginal", "StandardNormal", "check_shape"]


def check_shape(name: str, value: object) -> torch.Size:
    """Return ``value`` as a ``torch.Size`` if it is a tuple (or list) of ints >= 0."""
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value
    ):
        raise TypeError(
            f"{name} must be a tuple of non-negative ints or a torch.Size (e.g. (16,)), "
            f"got {value!r}"
        )
    return torch.Size(value)


class Marginal(nn.Module, ABC):
    """Base class: a learnable (or fixed) distribution over latents.

    Subclasses implement `forward`; `log_prob`, `sample` and
    `rsample` are shortcuts through it.
    """

    @abstractmethod
    def forward(self) -> Distribution:
        """Return ``m(z)`` with ``batch_shape ()`` and the latent event shape."""

    def log_prob(self, z: Tensor) -> Tensor:
        """``log m(z)`` for ``z`` of shape ``(..., *event)``; returns shape ``(...)``.

        Raises:
            TypeError: ``z`` is not a tensor.
            ValueError: ``z``'s trailing dimensions are not the event shape (no silent
                broadcasting of, e.g., ``(B, 1)`` against a ``(D,)`` event).
        """
        dist: Distribution = self()
        if not isinstance(z, Tensor):
            raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
        event = tuple(dist.event_shape)
        if z.ndim < len(event) or tuple(z.shape[z.ndim - len(event) :]) != event:
            raise ValueError(
                f"z must have shape (..., *event_shape) = (..., {', '.join(map(str, event))}) "
                f"for this marginal, got {tuple(z.shape)}"
            )
        return dist.log_prob(z)

    def sample(self, shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Draw ``shape + event_shape`` samples without gradients."""
        dist: Distribution = self()
        return dist.sample(check_shape("shape", shape))

    def rsample(self, shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Draw reparameterised samples where the distribution supports it."""
        dist: Distribution = self()
        return dist.rsample(check_shape("shape", shape))


class StandardNormal(Marginal):
    """Fixed ``N(0, I)`` over ``latent_dim`` dimensions; analytic KL against Normals.

    Args:
        latent_dim: number of latent dimensions ``D``.

    Examples:
        >>> m = StandardNormal(4)
        >>> m().event_shape
        torch.Size([4])
    """

    loc: Tensor
    scale: Tensor

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        # Non-persistent buffers: they follow .to(device/dtype) but are not state.
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self) -> Distribution:
        r"""Return ``Independent(Normal(0, 1), 1)`` over ``D`` dimensions.

        The Normal is an `rdloss.distributions.StandardGaussian`: the rate against it is
        the closed form of the KL to N(0, I), as with the loss's default marginal.
        """
        return Independent(StandardGaussian(self.loc.shape, like=self.loc), 1, validate_args=False)

    @override
    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


class DiagonalGaussian(Marginal):
    """Learned ``N(mu, diag(sigma^2))``; ``sigma = softplus(rho)``, initialised to ``N(0, I)``.

    Args:
        latent_dim: number of latent dimensions ``D``.

    Examples:
        >>> m = DiagonalGaussian(4)
        >>> m.rsample((2,)).shape
        torch.Size([2, 4])
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        # softplus(log(e - 1)) == 1
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), math.log(math.e - 1.0)))

    def forward(self) -> Distribution:
        """Return ``Independent(Normal(mu, sigma), 1)``."""
        # Its own parameters, valid by construction (softplus > 0; a NaN shows in the rate).
        scale = F.softplus(self.raw_scale)
        return Independent(Normal(self.loc, scale, validate_args=False), 1, validate_args=False)

    @override
    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"
