"""Builders shared by several test modules: seeded Gaussians, torch's KL, fuzzing settings.

Every builder returns plain ``torch.distributions`` objects or tensors, so the tests that use
them compare rdloss against an independent computation, never against another rdloss call.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from hypothesis import settings
from torch import Tensor
from torch.distributions import Independent, Normal, kl_divergence

import rdloss

FUZZ = settings(max_examples=40, deadline=None)
F64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-12}
B, D = 4, 3


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normal(
    *shape: int, seed: int = 0, dtype: torch.dtype = torch.float64, grad: bool = False
) -> tuple[Tensor, Tensor]:
    """Random ``(loc, scale)`` of a given shape (scale in [0.5, 1.5])."""
    g = _gen(seed)
    loc = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    scale = (torch.rand(*shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    if grad:
        loc.requires_grad_()
        scale.requires_grad_()
    return loc, scale


def _q(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Independent:
    """A diagonal Gaussian over the trailing dims of ``shape`` after the batch."""
    loc, scale = _normal(*shape, seed=seed, dtype=dtype)
    return Independent(Normal(loc, scale), len(shape) - 1)


def _qs(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Independent:
    """A stepped diagonal Gaussian: batch ``shape[:2]`` (B, T), event ``shape[2:]``."""
    loc, scale = _normal(*shape, seed=seed, dtype=dtype)
    return Independent(Normal(loc, scale), len(shape) - 2)


def _kl(q: Any, p: Any) -> Tensor:
    """Per-example KL summed over every non-batch dim, torch's closed form (not rdloss)."""
    kl = kl_divergence(q, p)
    return kl.flatten(1).sum(1) if kl.ndim > 1 else kl


def _gaussian_kl(mq: Tensor, sq: Tensor, mp: Tensor, sp: Tensor) -> Tensor:
    """KL(N(mq, sq) || N(mp, sp)) elementwise, written out."""
    return torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5


def _x(dtype: torch.dtype = torch.float64) -> tuple[Tensor, Normal]:
    x = torch.zeros(B, 2, dtype=dtype)
    return x, Normal(torch.zeros(B, 2, dtype=dtype), torch.ones(B, 2, dtype=dtype))


def _nll(x: Tensor) -> Tensor:
    """Distortion of ``_x``: -log N(0 | 0, 1) summed over 2 dims."""
    return torch.full((x.shape[0],), math.log(2 * math.pi), dtype=x.dtype)


def _unimix(logits: Tensor, mix: float = 0.01) -> Tensor:
    """DreamerV3's 1% unimix: (1 - mix) softmax + mix / K."""
    # rssm.py: probs = (1 - unimix) * softmax(logits) + unimix / classes
    return (1.0 - mix) * logits.softmax(-1) + mix / logits.shape[-1]


def _call(**kwargs: Any) -> Any:
    x, lik = _x()
    loss = kwargs.pop("loss", None) or rdloss.RateDistortionLoss()
    return loss(x, likelihood=lik, **kwargs)
