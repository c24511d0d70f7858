r"""Objectives: turn per-example rate and distortion into the scalar training loss.

Each objective reduces per-example terms by the batch mean (weighted when the loss is given
per-example weights) and returns :class:`ObjectiveOutput`: the loss and the named scalars
that steer it (``beta``, targets, multipliers), which the loss output exposes as
``out.hyper`` and in ``out.metrics()``. Every piece of state (the step, multipliers, moving
averages, integrators) lives in registered buffers, so ``state_dict()`` /
``load_state_dict()`` resume training exactly, and state advances only in ``train()`` mode
while gradients are being computed (:attr:`Objective.advancing`). Every hyperparameter that
takes a number also takes a :class:`~rdloss.schedules.Schedule` of the step.

* :class:`Beta`: :math:`\bar D + \beta \bar R` (β-VAE; KL warm-up and cyclical annealing with
  a schedule).
* :class:`TargetRate`: :math:`\bar D + w|\sigma - \bar R|` (Alemi et al., 2018).
* :class:`TargetDistortion`: :math:`\bar R + w|\delta - \bar D|`.
* :class:`FreeBits`: :math:`\bar D + \sum_j \max(\lambda, \overline{R_j})` (Kingma et al., 2016).
* :class:`Capacity`: :math:`\bar D + \gamma|\bar R - C(t)|` (Burgess et al., 2018).
* :class:`GECO`: :math:`\min \bar R` s.t. :math:`\bar D \le \kappa` (Rezende & Viola, 2018).
* :class:`RateController`: PI control of β to hold a rate (Shao et al., 2020).
"""

from rdloss.objectives._base import Hyperparameter, Objective, ObjectiveOutput
from rdloss.objectives._controllers import GECO, RateController
from rdloss.objectives._penalties import Beta, Capacity, FreeBits, TargetDistortion, TargetRate

__all__ = [
    "GECO",
    "Beta",
    "Capacity",
    "FreeBits",
    "Hyperparameter",
    "Objective",
    "ObjectiveOutput",
    "RateController",
    "TargetDistortion",
    "TargetRate",
]
