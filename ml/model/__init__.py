"""The model: its architecture, the weights manifest, and where its weight file is.

Torch-free, so that the API process can read the manifest without loading torch:

- :mod:`ml.model.spec`: :class:`ModelSpec`, the architecture to rebuild before loading weights;
- :mod:`ml.model.manifest`: :class:`Manifest`, :class:`ModelEntry`, :class:`OperatingPoint`,
  reading and validating ``weights/manifest.json``;
- :mod:`ml.model.weights`: :func:`resolve_weights`, the weight file's local path and sha256 check.

The torch parts are imported from their submodules:

- :mod:`ml.model.network`: the 3-D ResNets (MedicalNet layout), ``build_model``, stage freezing;
- :mod:`ml.model.checkpoint`: the one checkpoint loader, ``load_model``, ``save_weights``.
"""

from ml.model.manifest import SCHEMA_VERSION, Manifest, ModelEntry, OODRef, OperatingPoint, StoredDtype
from ml.model.spec import BLOCKS, Arch, ModelSpec, ShortcutType
from ml.model.weights import resolve_weights

__all__ = [
    "BLOCKS",
    "SCHEMA_VERSION",
    "Arch",
    "Manifest",
    "ModelEntry",
    "ModelSpec",
    "OODRef",
    "OperatingPoint",
    "ShortcutType",
    "StoredDtype",
    "resolve_weights",
]
