"""Build ``torch.distributions`` objects from the tensors existing VAE code already has.

Each helper returns a distribution whose batch shape is ``(B,)`` and whose event shape is
everything else (``event_dims`` defaults to all dimensions but the first), so rate and
distortion are summed over latent and data dimensions, never averaged per pixel. Half
precision inputs are computed in float32 (``exp(logvar)`` overflows float16).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Categorical, Distribution, Independent

from rdloss._checks import check_tensor, run_checks, widen_half
from rdloss.families import CheckedBernoulli, CheckedLaplace, Gaussian, value_checks

__all__ = ["bernoulli", "categorical", "laplace", "normal"]


def _floating(name: str, t: Tensor) -> Tensor:
    """Reject integer parameters: ``full_like`` and ``exp`` would silently round them."""
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _event_dims(name: str, t: Tensor, event_dims: int | None, extra: int = 0) -> int:
    """Resolve ``event_dims`` against a parameter tensor with ``extra`` trailing non-event dims."""
    available = t.ndim - extra - 1
    if event_dims is None:
        return available
    if isinstance(event_dims, bool) or not isinstance(event_dims, int):
        raise TypeError(f"event_dims must be an int or None, got {type(event_dims).__name__}")
    if not 0 <= event_dims <= available:
        raise ValueError(
            f"event_dims must be in [0, {available}] for {name} of shape {tuple(t.shape)} "
            f"(the first dimension is the batch), got {event_dims}"
        )
    return event_dims


def _independent(dist: Distribution, event_dims: int) -> Distribution:
    return Independent(dist, event_dims) if event_dims > 0 else dist


def normal(
    loc: Tensor,
    *,
    scale: Tensor | float | None = None,
    logvar: Tensor | None = None,
    log_scale: Tensor | None = None,
    event_dims: int | None = None,
    validate_args: bool | None = None,
) -> Distribution:
    r"""Diagonal Gaussian from ``(mu, logvar)``, ``(mu, log_scale)`` or ``(mu, scale)``.

    Use it for encoders (``loc`` of shape ``(B, D)``) and for Gaussian decoders with a
    fixed (``scale=0.1``) or learned (a tensor broadcastable to ``loc``) standard deviation.

    Args:
        loc: ``(B, ...)`` means.
        scale: standard deviation, a float or a tensor broadcastable to ``loc``'s shape.
        logvar: log-variance, same shape as ``loc``;
            $\sigma = \exp(\tfrac12 \mathrm{logvar})$.
        log_scale: $\log\sigma$, same shape as ``loc`` (VDVAE's and NVAE's
            parameterisation); the same as ``logvar=2 * log_scale``.
        event_dims: trailing dims summed over; default all but the batch dim.
        validate_args: ``None`` (default): a ``logvar`` whose variance ``exp(logvar)``
            leaves the dtype's normal range (float32: ``[-87.3, 88.7]``), or a non-positive
            ``scale`` tensor, raises ``ValueError`` when a `RateDistortionLoss` uses the
            distribution (the loss fuses it with its own value checks into one host sync;
            skipped while compiling); ``True``: checked now, and by
            ``torch.distributions.Normal``; ``False``: no value checks.

    Returns:
        ``Independent(Gaussian(loc, sigma), event_dims)``: a
        `rdloss.families.Gaussian` (a ``Normal``) that keeps ``logvar`` or ``log_scale`` as
        given, so the rate's closed form reads it instead of ``sigma.log()``.

    Examples:
        >>> import torch
        >>> q = normal(torch.zeros(8, 32), logvar=torch.zeros(8, 32))
        >>> q.batch_shape, q.event_shape
        (torch.Size([8]), torch.Size([32]))
    """
    _floating("loc", check_tensor("loc", loc, min_ndim=1))
    if sum(v is not None for v in (scale, logvar, log_scale)) != 1:
        raise ValueError("give exactly one of scale=, logvar= or log_scale=")
    loc = widen_half(loc)
    given = logvar if logvar is not None else log_scale
    if given is not None:
        name = "logvar" if logvar is not None else "log_scale"
        _floating(name, check_tensor(name, given))
        if given.shape != loc.shape:
            raise ValueError(
                f"{name} must have loc's shape {tuple(loc.shape)}, got {tuple(given.shape)}"
            )
        # sigma is derived where it is read (`Gaussian`): the rate's closed form reads the
        # log parameter only, as given.
        sigma: Tensor | None = None
        logvar = None if logvar is None else widen_half(logvar)
        log_scale = None if log_scale is None else widen_half(log_scale)
    else:
        sigma = _scale(loc, scale)
    dims = _event_dims("loc", loc, event_dims)
    # The loss checks the variance's range (or scale > 0) in its one value check; a float
    # scale was checked above.
    checked = validate_args is not False and (given is not None or isinstance(scale, Tensor))
    base = Gaussian(
        loc,
        sigma,
        logvar=logvar,
        log_scale=log_scale,
        checked=checked,
        validate_args=validate_args or False,
    )
    return _now(_independent(base, dims), validate_args)


def _now(dist: Distribution, validate_args: bool | None) -> Distribution:
    """Run the distribution's value checks now with ``validate_args=True``, else leave them."""
    if validate_args:
        with torch.no_grad():
            run_checks(value_checks(dist))
    return dist


def _scale(loc: Tensor, scale: Tensor | float | None) -> Tensor:
    """``scale`` as a tensor of ``loc``'s shape, from a float or a broadcastable tensor."""
    if isinstance(scale, Tensor):
        sigma = widen_half(_floating("scale", scale))
        try:
            shape = torch.broadcast_shapes(loc.shape, sigma.shape)
        except RuntimeError:
            shape = None
        if shape != loc.shape:
            raise ValueError(
                f"scale of shape {tuple(sigma.shape)} must broadcast to loc's shape "
                f"{tuple(loc.shape)} without enlarging it"
            )
        return sigma.expand_as(loc)
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        if not 0 < scale < math.inf:
            raise ValueError(f"scale must be > 0 and finite, got {scale}")
        if scale > torch.finfo(loc.dtype).max:
            raise ValueError(
                f"scale must be finite in loc's dtype {loc.dtype} (at most "
                f"{torch.finfo(loc.dtype).max:.4g}), got {scale}"
            )
        return torch.full_like(loc, float(scale))
    raise TypeError(f"scale must be a float or a Tensor, got {type(scale).__name__}")


def laplace(
    loc: Tensor,
    *,
    scale: Tensor | float | None = None,
    log_scale: Tensor | None = None,
    event_dims: int | None = None,
    validate_args: bool | None = None,
) -> Distribution:
    r"""Factorised Laplace decoder: the likelihood behind an L1 reconstruction loss.

    $-\log d(x|z) = \sum_i |x_i - \mu_i| / b_i + \log(2 b_i)$, so with a fixed scale
    $b$ the distortion is ``l1_loss(mu, x, reduction="sum") / b`` plus a constant.
    Latent-diffusion autoencoders (Stable Diffusion's ``AutoencoderKL`` loss) write
    ``|x - x_hat| / exp(logvar) + logvar`` with a learned scalar ``logvar``: that is this
    density with ``log_scale=logvar``, less ``log 2`` per pixel.

    Args:
        loc: ``(B, ...)`` reconstructions $\mu$.
        scale: $b > 0$, a float or a tensor broadcastable to ``loc``'s shape.
        log_scale: $\log b$, a tensor broadcastable to ``loc``'s shape (e.g. a learned
            scalar parameter); give exactly one of ``scale``/``log_scale``.
        event_dims: trailing dims summed over; default all but the batch dim.
        validate_args: as in `normal`: ``None`` (default) leaves the check of ``b > 0``
            to the loss that uses the distribution, ``True`` checks now (and
            ``torch.distributions.Laplace``'s checks), ``False`` turns it off.

    Returns:
        ``Independent(Laplace(loc, b), event_dims)``.

    Examples:
        >>> import torch
        >>> p = laplace(torch.zeros(2, 3, 8, 8), scale=1.0)
        >>> p.event_shape, round(float(-p.log_prob(torch.ones(2, 3, 8, 8))[0]), 3)
        (torch.Size([3, 8, 8]), 325.084)
    """
    _floating("loc", check_tensor("loc", loc, min_ndim=1))
    if (scale is None) == (log_scale is None):
        raise ValueError("give exactly one of scale= or log_scale=")
    loc = widen_half(loc)
    if log_scale is not None:
        b = _scale(loc, torch.exp(widen_half(_floating("log_scale", log_scale))))
    else:
        b = _scale(loc, scale)
    dims = _event_dims("loc", loc, event_dims)
    base = CheckedLaplace(
        loc, b, checked=validate_args is not False, validate_args=validate_args or False
    )
    return _now(_independent(base, dims), validate_args)


def bernoulli(
    *,
    logits: Tensor | None = None,
    probs: Tensor | None = None,
    event_dims: int | None = None,
    validate_args: bool | None = None,
) -> Distribution:
    """Factorised Bernoulli decoder from logits (preferred, stable) or probabilities.

    ``-log_prob(x)`` equals ``binary_cross_entropy_with_logits(logits, x, reduction="none")``
    summed over the event dims. For grey-level targets in ``[0, 1]`` (as in the classic
    PyTorch-examples VAE) pass ``validate_args=False``: the Bernoulli density is then used as
    the cross-entropy it reduces to (or use ``ContinuousBernoulli`` for a proper density).

    Args:
        logits: ``(B, ...)`` logits.
        probs: ``(B, ...)`` probabilities; give exactly one of ``logits``/``probs``.
        event_dims: trailing dims summed over; default all but the batch dim.
        validate_args: ``None`` (default): a `RateDistortionLoss` checks that ``x`` lies
            in ``{0, 1}`` (the support), fused with its other value checks; ``True``:
            ``torch.distributions.Bernoulli``'s own checks; ``False``: none.

    Returns:
        ``Independent(Bernoulli(...), event_dims)``.

    Examples:
        >>> import torch
        >>> p = bernoulli(logits=torch.zeros(4, 1, 28, 28))
        >>> p.event_shape
        torch.Size([1, 28, 28])
    """
    if logits is not None and probs is None:
        name, param = "logits", logits
    elif probs is not None and logits is None:
        name, param = "probs", probs
    else:
        raise ValueError("give exactly one of logits= or probs=")
    _floating(name, check_tensor(name, param, min_ndim=1))
    param = widen_half(param)
    dims = _event_dims(name, param, event_dims)
    # The loss checks that x lies in {0, 1} (and probs in [0, 1]) in its one value check.
    base = CheckedBernoulli(
        **{name: param}, checked=validate_args is None, validate_args=validate_args or False
    )
    return _independent(base, dims)


def categorical(
    logits: Tensor,
    *,
    category_dim: int = -1,
    event_dims: int | None = None,
    validate_args: bool | None = None,
) -> Distribution:
    """Per-pixel categorical decoder, e.g. 256-way pixel intensities.

    Args:
        logits: ``(B, ..., K)`` logits, or with the category axis elsewhere (PixelCNN's
            ``(B, K, C, H, W)``) given by ``category_dim``.
        category_dim: the axis of the ``K`` categories.
        event_dims: trailing data dims summed over; default all but batch and category.
        validate_args: passed to ``torch.distributions.Categorical``.

    Returns:
        ``Independent(Categorical(logits), event_dims)``; ``x`` holds integer values in
        ``[0, K)`` and has ``logits``' shape without the category axis.

    Examples:
        >>> import torch
        >>> p = categorical(torch.zeros(2, 256, 3, 8, 8), category_dim=1)
        >>> p.event_shape
        torch.Size([3, 8, 8])
    """
    _floating("logits", check_tensor("logits", logits, min_ndim=2))
    if isinstance(category_dim, bool) or not isinstance(category_dim, int):
        raise TypeError(f"category_dim must be an int, got {type(category_dim).__name__}")
    if not -logits.ndim <= category_dim < logits.ndim:
        raise ValueError(
            f"category_dim must index logits of shape {tuple(logits.shape)}, got {category_dim}"
        )
    if category_dim % logits.ndim == 0:
        raise ValueError("category_dim must not be the batch dimension 0")
    logits = widen_half(logits).movedim(category_dim, -1)
    dims = _event_dims("logits", logits, event_dims, extra=1)
    return _independent(Categorical(logits=logits, validate_args=validate_args), dims)
