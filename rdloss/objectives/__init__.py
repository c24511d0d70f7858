r"""Objectives: turn per-example rate and distortion into the scalar training loss.

Each objective reduces per-example terms by the batch mean (weighted when the loss is given
per-example weights) and returns `ObjectiveOutput`: the loss and the named scalars
that steer it (``beta``, targets, multipliers), which the loss output exposes as
``out.hyper`` and in ``out.metrics()``. Every piece of state (the step, multipliers, moving
averages, integrators) lives in registered buffers, so ``state_dict()`` /
``load_state_dict()`` resume training exactly, and state advances only in ``train()`` mode
while gradients are being computed (`Objective.advancing`). Every hyperparameter that
takes a number also takes a `Schedule` of the step.

* `Beta`: $\bar D + \beta \bar R$ (β-VAE; KL warm-up and cyclical annealing with
  a schedule; β per latent group, e.g. scvi-tools' warm-up of ``z`` alone).
* `TargetRate`: $\bar D + w|\sigma - \bar R|$ (Alemi et al., 2018).
* `TargetDistortion`: $\bar R + w|\delta - \bar D|$.
* `FreeBits`: $\bar D + \sum_u \max(\lambda, \overline{R_u})$ (Kingma et al., 2016) over
  latent dimensions, groups, steps or the total, on batch means or per example.
* `Capacity`: $\bar D + \gamma|\bar R - C(t)|$ (Burgess et al., 2018).
* `GECO`: $\min \bar R$ s.t. $\bar D \le \kappa$ (Rezende & Viola, 2018).
* `RateController`: PI control of β to hold a rate (Shao et al., 2020).
* `MultiRate`: a log-uniform β per example, for one run over the whole RD curve.
"""

from rdloss.objectives._base import Objective, ObjectiveOutput
from rdloss.objectives._beta import Beta
from rdloss.objectives._controllers import GECO, RateController
from rdloss.objectives._groups import PerGroup
from rdloss.objectives._hyperparameters import Hyperparameter
from rdloss.objectives._multirate import MultiRate
from rdloss.objectives._penalties import Capacity, TargetDistortion, TargetRate
from rdloss.objectives._structured import FreeBits, nvae_balanced_rate

__all__ = [
    "GECO",
    "Beta",
    "Capacity",
    "FreeBits",
    "Hyperparameter",
    "MultiRate",
    "Objective",
    "ObjectiveOutput",
    "PerGroup",
    "RateController",
    "TargetDistortion",
    "TargetRate",
    "nvae_balanced_rate",
]
