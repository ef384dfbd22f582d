"""The fixed preprocessing pipeline of the model input, and the geometry record that inverts it.

- :mod:`ml.preprocess.config`: :class:`PreprocessConfig`, the pipeline's settings (kept in the
  weights manifest).
- :mod:`ml.preprocess.geometry`: the intermediate 1 mm grid (:func:`output_grid`), the crop box
  and :class:`PreprocessGeometry`, which maps model voxels back to the source series and LPS.
- :mod:`ml.preprocess.pipeline`: :func:`preprocess` (CT volume → float32 [1, 1, D, H, W] in [-1, 1]).

Importing this package does not load torch (``preprocess`` imports it when called).
"""

from ml.preprocess.config import PreprocessConfig
from ml.preprocess.geometry import CropBox, PreprocessGeometry, output_grid
from ml.preprocess.pipeline import MAX_GRID_VOXELS, MAX_REGION_VOXELS, PreprocessResult, preprocess

__all__ = [
    "MAX_GRID_VOXELS",
    "MAX_REGION_VOXELS",
    "CropBox",
    "PreprocessConfig",
    "PreprocessGeometry",
    "PreprocessResult",
    "output_grid",
    "preprocess",
]
