"""Out-of-distribution detection and chest-CT plausibility.

* :mod:`ml.ood.scores`: the scores (MSP, energy, class-conditional Mahalanobis), NumPy only;
* :mod:`ml.ood.stats`: fitted statistics (threshold on held-out studies) and their file;
* :mod:`ml.ood.plausibility`: is the study plausibly a chest CT, from the pixels (SimpleITK);
* :mod:`ml.ood.features`: logits and pooled features in one forward pass (torch).

This package re-exports the NumPy-only parts, so that the API process (which reads
the manifest's ``ood`` block) loads neither SimpleITK nor torch through it.
"""

from ml.ood.scores import OOD_METHODS, GaussianFeatureModel, energy_score, msp_score, threshold_keeping
from ml.ood.stats import OODStats, fit_ood, held_out_split

__all__ = [
    "OOD_METHODS",
    "GaussianFeatureModel",
    "OODStats",
    "energy_score",
    "fit_ood",
    "held_out_split",
    "msp_score",
    "threshold_keeping",
]
