"""Mixture marginals: a learned Gaussian mixture and the VampPrior."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
)
from typing_extensions import override

from rdloss._checks import check_distribution, check_positive_int, check_tensor
from rdloss.distributions import DiagonalGaussianMixture
from rdloss.functional import as_latent
from rdloss.marginals._base import Marginal

__all__ = ["GaussianMixture", "VampPrior"]

Encoder = nn.Module | Callable[[Tensor], Distribution]


class GaussianMixture(Marginal):
    r"""Learned mixture of diagonal Gaussians.

    $$
    m(z) = \sum_{k=1}^K \pi_k\, \mathcal N(z;\, \mu_k,\, \operatorname{diag}\sigma_k^2),
    \qquad \pi = \operatorname{softmax}(\text{logits}),\quad
    \sigma = \operatorname{softplus}(\rho).
    $$

    A richer marginal lowers the rate at every point of the frontier, since the rate pays
    the gap $\mathrm{KL}(p_e(z)\,\|\,m(z))$ (Alemi et al., 2018). The density is a
    `DiagonalGaussianMixture`, whose ``log_prob`` costs
    ``O(B K)`` memory; there is no closed-form KL, so the loss estimates the rate by Monte
    Carlo (``out.estimator == "mc"``).

    Initialisation: uniform weights, means drawn from $\mathcal N(0, \tfrac12 I)$ and
    scales $\sqrt{1/2}$, so the mixture's covariance is about ``I`` (close to
    ``N(0, I)``) while the components start apart and do not move in lockstep.

    Args:
        latent_dim: number of latent dimensions ``D``.
        n_components: number of components ``K``.

    Examples:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> m = GaussianMixture(8, n_components=10)
        >>> m().event_shape, m.log_prob(torch.zeros(5, 8)).shape
        (torch.Size([8]), torch.Size([5]))
    """

    def __init__(self, latent_dim: int, n_components: int = 100) -> None:
        super().__init__()
        self.latent_dim = check_positive_int("latent_dim", latent_dim)
        self.n_components = check_positive_int("n_components", n_components)
        half = math.sqrt(0.5)
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.loc = nn.Parameter(half * torch.randn(n_components, latent_dim))
        # softplus^{-1}(s) = log(exp(s) - 1)
        self.raw_scale = nn.Parameter(
            torch.full((n_components, latent_dim), math.log(math.expm1(half)))
        )

    @property
    def scale(self) -> Tensor:
        """``(K, D)`` component standard deviations ``softplus(raw_scale)``."""
        return F.softplus(self.raw_scale)

    def forward(self) -> Distribution:
        """Return the mixture as a ``DiagonalGaussianMixture`` (batch ``()``, event ``(D,)``)."""
        return DiagonalGaussianMixture(self.logits, self.loc, self.scale, validate_args=False)

    @override
    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, n_components={self.n_components}"


class VampPrior(Marginal):
    r"""VampPrior: the mixture of the encoder's posteriors at learned pseudo-inputs.

    $$
    m(z) = \sum_{k=1}^K w_k\, e(z \mid u_k),
    \qquad w = \operatorname{softmax}(\text{logits})
    $$

    (Tomczak & Welling, 2018), with learned mixture weights as in Alemi et al. (2018), or
    uniform weights $1/K$ (the original) with ``learn_weights=False``. The
    pseudo-inputs $u_k$ start from the tensor given (e.g. a random subset of the
    training data, or noise) and are learned.

    The components are recomputed on every call, so gradients reach the pseudo-inputs and
    the encoder. When the encoder returns independent Normals (``Independent(Normal)`` or a
    ``Normal`` with batch ``(K, *event)``) the result is a
    `DiagonalGaussianMixture` (``O(B K)`` memory); any other
    posterior family gives ``MixtureSameFamily(Categorical(logits), posterior)``. Either way
    the log-sum-exp runs over the *joint* log-density of each component (summed over latent
    dimensions), never per dimension.

    The encoder is used as it is: an ``nn.Module`` (registered as a submodule, so
    ``.to()`` moves it and its parameters are the prior's too; a module tree holding both
    the VAE and the loss lists them once) or any callable, mapping ``(K, *input)`` to a
    distribution with batch ``(K,)`` and the latent event shape. Wrap an encoder that
    returns ``(mu, logvar)`` in a small module that calls `rdloss.helpers.normal`.

    Layers with batch statistics (BatchNorm): the pseudo-inputs pass through the encoder in
    its current mode, but they never update its running statistics. In ``train()`` the K
    pseudo-inputs are normalised by their own batch statistics, as any training batch is;
    in ``eval()`` by the running statistics, as data are. The running statistics describe
    the data the encoder sees at evaluation, and pseudo-inputs are parameters rather than
    data: letting every prior evaluation add a step of K pseudo-inputs would bias those
    averages (one extra update per call). Technically, an ``nn.Module`` encoder is called
    through ``torch.func.functional_call`` with copies of its buffers, which is
    ``torch.compile``-friendly. A plain callable encoder is called as it is.

    Args:
        encoder: the VAE's encoder as described above.
        pseudo_inputs: ``(K, *input)`` floating-point initial pseudo-inputs (copied).
        learn_weights: learn the mixture weights (default) or keep them uniform.

    Raises:
        TypeError: ``encoder`` is not callable or ``pseudo_inputs`` not a float tensor.
        ValueError: ``pseudo_inputs`` has no rows.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from rdloss import helpers
        >>> class Encoder(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Linear(6, 2 * 3)
        ...     def forward(self, x):
        ...         mu, logvar = self.net(x).chunk(2, dim=-1)
        ...         return helpers.normal(mu, logvar=logvar)
        >>> _ = torch.manual_seed(0)
        >>> prior = VampPrior(Encoder(), torch.randn(10, 6))
        >>> prior().event_shape, prior.log_prob(torch.zeros(4, 3)).shape
        (torch.Size([3]), torch.Size([4]))
    """

    def __init__(
        self,
        encoder: Encoder,
        pseudo_inputs: Tensor,
        *,
        learn_weights: bool = True,
    ) -> None:
        super().__init__()
        if not callable(encoder):
            raise TypeError(
                "encoder must be an nn.Module or a callable returning a Distribution, got "
                f"{type(encoder).__name__}"
            )
        check_tensor("pseudo_inputs", pseudo_inputs, min_ndim=1)
        if not pseudo_inputs.is_floating_point():
            raise TypeError(
                "pseudo_inputs must be a floating-point tensor (they are learned), got dtype "
                f"{pseudo_inputs.dtype}"
            )
        if not isinstance(learn_weights, bool):
            raise TypeError(f"learn_weights must be a bool, got {type(learn_weights).__name__}")
        self.encoder = encoder
        self.learn_weights = learn_weights
        self.pseudo_inputs = nn.Parameter(pseudo_inputs.detach().clone())
        logits = torch.zeros(pseudo_inputs.shape[0], dtype=pseudo_inputs.dtype)
        if learn_weights:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits, persistent=False)

    @property
    def n_components(self) -> int:
        """Number of pseudo-inputs ``K``."""
        return self.pseudo_inputs.shape[0]

    def components(self) -> Distribution:
        """The posteriors ``e(z|u_k)``: batch ``(K,)``, the latent event shape.

        Running statistics of the encoder's normalisation layers are left untouched.
        """
        encoder = self.encoder
        if isinstance(encoder, nn.Module):
            buffers = {name: b.clone() for name, b in encoder.named_buffers()}
            out = torch.func.functional_call(encoder, buffers, (self.pseudo_inputs,))
        else:
            out = encoder(self.pseudo_inputs)
        posterior = as_latent(check_distribution("encoder(pseudo_inputs)", out), "encoder output")
        if posterior.batch_shape[0] != self.n_components:
            raise ValueError(
                f"encoder(pseudo_inputs) must have batch_shape (K,) = ({self.n_components},), "
                f"got {tuple(posterior.batch_shape)}"
            )
        return posterior

    def forward(self) -> Distribution:
        """Return ``m(z)`` (batch ``()``, the encoder's latent event shape)."""
        posterior = self.components()
        if isinstance(posterior, Independent) and isinstance(posterior.base_dist, Normal):
            base = posterior.base_dist
            # Normal broadcasts loc and scale to its batch shape (K, *event).
            return DiagonalGaussianMixture(self.logits, base.loc, base.scale, validate_args=False)
        weights = Categorical(logits=self.logits, validate_args=False)
        return MixtureSameFamily(weights, posterior, validate_args=False)

    @override
    def extra_repr(self) -> str:
        return f"n_components={self.n_components}, learn_weights={self.learn_weights}"
