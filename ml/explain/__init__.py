"""Saliency for a :class:`~ml.inference.Predictor` (Captum), mapped back to the source series.

Three steps, usable on their own or together
(:func:`ml.explain.save.save_explanation`):

1. :func:`ml.explain.methods.explain` computes a model-space map, float32
   [D, H, W], for one preprocessed volume with one of :data:`METHODS`, masked
   to the patient's body (:mod:`ml.body`; the share of attribution outside it
   goes to ``stats.json`` as ``outside_body_fraction``);
2. :func:`ml.explain.source_grid.to_source` maps it onto the source series grid;
3. :func:`ml.explain.files.write_saliency` writes ``saliency.nii.gz``, PNG
   overlays (:mod:`ml.explain.render`), the viewer layers and ``stats.json``
   (:mod:`ml.explain.stats`).

This package's top level is torch-free: it holds the table of methods and their
parameter limits (:mod:`ml.explain.params`), which the API validates requests
against. The steps above import torch (or the imaging libraries): import them
from their modules.
"""

from ml.explain import params
from ml.explain.params import *  # noqa: F403  (the table is the package's top level)

__all__ = params.__all__
