"""rdloss: rate-distortion losses and diagnostics for existing PyTorch VAEs.

Built on Alemi et al., "Fixing a Broken ELBO" (ICML 2018): report rate and distortion
separately, bound the mutual information by them, and train at a chosen point of the
rate-distortion curve.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rdloss._version import __version__

if TYPE_CHECKING:
    from rdloss import (
        diagnostics,
        distributions,
        functional,
        helpers,
        latents,
        marginals,
        objectives,
        schedules,
    )
    from rdloss.diagnostics import Evaluation, evaluate
    from rdloss.loss import RateDistortionLoss, RDOutput

__all__ = [
    "Evaluation",
    "RDOutput",
    "RateDistortionLoss",
    "__version__",
    "diagnostics",
    "distributions",
    "evaluate",
    "functional",
    "helpers",
    "latents",
    "marginals",
    "objectives",
    "schedules",
]

# Names are imported on first use (PEP 562) so that `rdloss --help` and `rdloss --version`
# answer without importing torch, which takes seconds.
_FROM_LOSS = ("RDOutput", "RateDistortionLoss")
_FROM_DIAGNOSTICS = ("Evaluation", "evaluate")


def __getattr__(name: str) -> Any:
    if name in _FROM_LOSS:
        return getattr(importlib.import_module("rdloss.loss"), name)
    if name in _FROM_DIAGNOSTICS:
        return getattr(importlib.import_module("rdloss.diagnostics"), name)
    if name in __all__:
        return importlib.import_module(f"rdloss.{name}")
    raise AttributeError(f"module 'rdloss' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
