"""Seeded synthetic chest-CT phantoms with ground-truth lesions, written as real DICOM.

The anatomy is an analytic function of DICOM LPS patient coordinates in mm
(x → patient Left, y → Posterior, z → Superior), so one phantom can be sampled on
any grid: any pixel/slice spacing, axial or coronal planes, or gantry-tilted planes.
Intensities are Hounsfield units (HU). Everything is derived from ``PhantomSpec.seed``
through NumPy ``Generator`` streams, so the same spec gives bit-identical voxels,
masks and DICOM UIDs.

Three random streams keep the parts independent: ``[seed, 0]`` draws the anatomy and
the lesions, ``[seed, 1]`` the sampling grid defaults, ``[seed, 2]`` the voxel noise.
Two specs that differ only in their grid therefore describe the *same* patient
(``make_study(variant="multi_series")`` relies on it).

Modules: ``spec`` (what to generate, lesion records), ``anatomy`` (the analytic
patient), ``lesions`` (drawing, placing and measuring lesions), ``generate`` (spec →
sampled :class:`Phantom`), ``options`` (series options, fake identifiers, UIDs),
``encode`` (DICOM attributes, stored values, transfer syntaxes), ``writer`` (series,
multi-frame, localizer), ``archive`` (ZIP packing), ``study`` (hostile/realistic ZIP
study variants), ``corpus`` (labelled corpora on disk), ``families`` (out-of-distribution
studies: abdomen, head, water cylinder, unit fault, noisy/sharp, partial chest) and
``regions`` (the analytic bodies other than the chest they use).

Typical use::

    ph = generate_phantom(PhantomSpec(seed=3, label=1, rows=96, cols=96, pixel_spacing_mm=4.5))
    files = write_series(ph, out_dir, SeriesOptions(transfer_syntax="jpeg_lossless"))
    info = make_study(tmp / "study.zip", seed=3, variant="shuffled")
"""

from ml.phantom.archive import write_study_zip
from ml.phantom.corpus import corpus_plan, write_corpus
from ml.phantom.families import CHEST_FAMILIES, OOD_FAMILIES, FamilyCase, make_family, write_family_study
from ml.phantom.generate import Phantom, generate_phantom
from ml.phantom.options import PHI_IDENTIFIERS, TRANSFER_SYNTAX_UIDS, FakeIdentifiers, SeriesOptions
from ml.phantom.spec import LESION_KINDS, Lesion, PhantomSpec
from ml.phantom.study import STUDY_VARIANTS, SeriesInfo, StudyInfo, make_study
from ml.phantom.writer import phantom_volume, write_localizer, write_series

__all__ = [
    "CHEST_FAMILIES",
    "LESION_KINDS",
    "OOD_FAMILIES",
    "PHI_IDENTIFIERS",
    "STUDY_VARIANTS",
    "TRANSFER_SYNTAX_UIDS",
    "FakeIdentifiers",
    "FamilyCase",
    "Lesion",
    "Phantom",
    "PhantomSpec",
    "SeriesInfo",
    "SeriesOptions",
    "StudyInfo",
    "corpus_plan",
    "generate_phantom",
    "make_family",
    "make_study",
    "phantom_volume",
    "write_corpus",
    "write_family_study",
    "write_localizer",
    "write_series",
    "write_study_zip",
]
