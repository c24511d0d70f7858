"""Diagnostics: rate, distortion, MI bounds, active units, ELBO surgery, codebooks, steps.

Each diagnostic exists as a pure function in `rdloss.diagnostics.functional` and as a
`torchmetrics.Metric` that streams over batches, synchronises across processes and
logs from Lightning (Alemi et al., 2018, "Fixing a Broken ELBO").
"""

from rdloss.diagnostics import functional
from rdloss.diagnostics.codebook import CodebookUsage
from rdloss.diagnostics.evaluate import Evaluation, evaluate
from rdloss.diagnostics.iwae import importance_weighted_bound
from rdloss.diagnostics.metrics import (
    ActiveUnits,
    MutualInformationBounds,
    RateDistortion,
    RatePerDimension,
)
from rdloss.diagnostics.mutual_information import MutualInformation
from rdloss.diagnostics.steps import StepRate

__all__ = [
    "ActiveUnits",
    "CodebookUsage",
    "Evaluation",
    "MutualInformation",
    "MutualInformationBounds",
    "RateDistortion",
    "RatePerDimension",
    "StepRate",
    "evaluate",
    "functional",
    "importance_weighted_bound",
]
