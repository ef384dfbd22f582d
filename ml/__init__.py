"""Service4CT machine-learning library.

A pure library: it never imports ``app`` and never reads the environment. Every
setting arrives as an argument (usually a config dataclass filled from the
weights manifest). Units are stated in names and docstrings: millimetres (mm),
Hounsfield units (HU) and voxels.
"""

__all__: list[str] = []
