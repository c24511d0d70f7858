"""rdloss: rate-distortion losses and diagnostics for existing PyTorch VAEs.

Built on Alemi et al., "Fixing a Broken ELBO" (ICML 2018): report rate and distortion
separately, bound the mutual information by them, and train at a chosen point of the
rate-distortion curve.
"""

from rdloss import diagnostics, distributions, functional, helpers, marginals, objectives, schedules
from rdloss._version import __version__
from rdloss.loss import RateDistortionLoss, RDOutput

__all__ = [
    "RDOutput",
    "RateDistortionLoss",
    "__version__",
    "diagnostics",
    "distributions",
    "functional",
    "helpers",
    "marginals",
    "objectives",
    "schedules",
]
