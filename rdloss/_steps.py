r"""Ragged sequences: a ``(B, T)`` step mask applied to the rate of every group with steps.

Sequence models train on padded batches; Pyro's deep Markov model masks each step's
``log q - log p`` (``Distribution.mask``), so a padded step adds nothing to the ELBO. Here
the mask zeroes a padded step's rate at every level `rdloss.latents.RateTerms` has (per
step, per flattened dimension, per group, the total) with ``torch.where``, so whatever a
padded step holds (a finite value of the model run on padding) reaches neither the value
nor the gradient; objectives that clamp single units (`rdloss.objectives.FreeBits` per
step or dimension) read the unit masks carried in the terms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rdloss.latents import LatentGroup, RateTerms

__all__ = ["check_mask", "masked_terms"]


def check_mask(mask: object, groups: tuple[LatentGroup, ...], grouped: bool) -> Tensor:
    """Return ``mask`` if it is a ``(B, T)`` bool tensor matching every group with steps.

    Shape and dtype only (free: no host synchronisation). Groups without a step axis
    (a sequence's global latent) are not masked.

    Raises:
        TypeError: ``mask`` is not a bool tensor.
        ValueError: no group has a step axis, or the shape is not ``(B, T)``.
    """
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"mask must be a torch.Tensor of dtype torch.bool, got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must have dtype torch.bool (True = a real step, False = padding), got "
            f"{mask.dtype}; pass e.g. lengths[:, None] > torch.arange(T)"
        )
    stepped = [g for g in groups if g.steps is not None]
    if not stepped:
        raise ValueError(
            "mask masks steps, but no latent has a step axis (a posterior of batch_shape "
            "(B, T) over non-scalar latents has steps)"
        )
    for g in stepped:
        if mask.shape != g.posterior.batch_shape:
            name = f"posterior[{g.name!r}]" if grouped else "posterior"
            raise ValueError(
                f"mask must have shape (B, T) = {tuple(g.posterior.batch_shape)} of "
                f"{name}'s batch_shape, got {tuple(mask.shape)}"
            )
    return mask


def masked_terms(terms: RateTerms, mask: Tensor) -> RateTerms:
    """``terms`` with every padded step's rate set to 0 at every level, and the unit masks.

    Args:
        terms: the unmasked rate (`rdloss.rate.rate_terms`).
        mask: ``(B, T)`` bool, checked by `check_mask`.

    Returns:
        `RateTerms` whose per-step, per-dimension, per-group and total rates count the
        real steps only, with ``step_mask`` aligned with the concatenated per-step rates
        and ``dimension_mask`` with ``per_dimension``.
    """
    per_step = {k: torch.where(mask, v, 0.0) for k, v in terms.per_step.items()}
    per_group = dict(terms.per_group)
    per_group_dimension = dict(terms.per_group_dimension)
    dim_masks = []
    for name, dims in terms.per_group_dimension.items():
        if name not in per_step:  # no step axis: not masked
            per_group_dimension[name] = dims
            if dims is not None:
                dim_masks.append(torch.ones_like(dims, dtype=torch.bool))
            continue
        per_group[name] = per_step[name].sum(1)
        if dims is None:
            continue
        # Flattened row-major over (T, D_step): step t owns D_step consecutive columns.
        unit = mask.repeat_interleave(dims.shape[1] // mask.shape[1], dim=1)
        per_group_dimension[name] = torch.where(unit, dims, 0.0)
        dim_masks.append(unit)
    values = list(per_group.values())
    total = values[0] if len(values) == 1 else torch.stack(values).sum(0)
    ready = [d for d in per_group_dimension.values() if d is not None]
    per_dimension = None
    dimension_mask = None
    if terms.per_dimension is not None and len(ready) == len(per_group_dimension):
        per_dimension = ready[0] if len(ready) == 1 else torch.cat(ready, dim=1)
        dimension_mask = dim_masks[0] if len(dim_masks) == 1 else torch.cat(dim_masks, dim=1)
    return terms._replace(
        per_example=total,
        per_dimension=per_dimension,
        per_group=per_group,
        per_group_dimension=per_group_dimension,
        per_step=per_step,
        step_mask=torch.cat([mask] * len(per_step), dim=1) if len(per_step) > 1 else mask,
        dimension_mask=dimension_mask,
    )
