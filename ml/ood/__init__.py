"""Out-of-distribution detection and chest-CT plausibility.

Torch-free; the one torch part (logits and pooled features) is :mod:`ml.ood.features`.
"""

from ml.ood.plausibility import (
    PLAUSIBILITY_REASONS,
    PlausibilityConfig,
    PlausibilityReport,
    check_plausibility,
    check_plausibility_hu,
)
from ml.ood.scores import OOD_METHODS, GaussianFeatureModel, energy_score, msp_score, threshold_keeping
from ml.ood.stats import OODStats, fit_ood, held_out_split

__all__ = [
    "OOD_METHODS",
    "PLAUSIBILITY_REASONS",
    "GaussianFeatureModel",
    "OODStats",
    "PlausibilityConfig",
    "PlausibilityReport",
    "check_plausibility",
    "check_plausibility_hu",
    "energy_score",
    "fit_ood",
    "held_out_split",
    "msp_score",
    "threshold_keeping",
]
