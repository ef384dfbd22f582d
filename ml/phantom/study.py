"""ZIP studies in hostile and realistic variants (``STUDY_VARIANTS``): :func:`make_study`."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal

from ml.geometry import VolumeGeometry
from ml.phantom.archive import write_study_zip
from ml.phantom.generate import Phantom, generate_phantom
from ml.phantom.options import (
    PHI_IDENTIFIERS,
    TRANSFER_SYNTAX_UIDS,
    FakeIdentifiers,
    SeriesOptions,
    series_uid_for,
    study_uid_for,
)
from ml.phantom.spec import Lesion, PhantomSpec
from ml.phantom.writer import write_localizer, write_series

STUDY_VARIANTS: Final[tuple[str, ...]] = (
    "standard",
    "shuffled",
    "multiframe",
    "jpeg_lossless",
    "jpeg_ls",
    "jpeg2000",
    "rle",
    "multi_series",
    "gantry_tilt",
    "missing_slice",
    "duplicate_slice",
    "non_ct",
    "coronal",
    "mixed_sizes",
    "thick",
    "few_slices",
    "phi",
    "real_like",
)


@dataclass(frozen=True)
class SeriesInfo:
    """One series written by :func:`make_study`."""

    series_uid: str
    series_number: int
    description: str
    modality: str
    n_files: int
    role: str  # "primary", "thick", "scout"
    transfer_syntax: str
    geometry: VolumeGeometry | None


@dataclass
class StudyInfo:
    """What :func:`make_study` wrote.

    Attributes:
        zip_path: the archive.
        variant, seed, label, lesions: as generated (lesions in LPS mm).
        study_uid: StudyInstanceUID of every series.
        series: per-series UIDs/roles; ``primary_series_uid`` is the diagnostic one.
        identifiers: the fake identifiers written (tags, and file names for "phi").
        phantom: the primary series' phantom (arrays, geometry, lesion mask).
    """

    zip_path: Path
    variant: str
    seed: int
    label: int
    lesions: list[Lesion]
    study_uid: str
    series: list[SeriesInfo]
    identifiers: FakeIdentifiers
    phantom: Phantom

    @property
    def primary_series_uid(self) -> str:
        return next(s.series_uid for s in self.series if s.role == "primary")


def make_study(
    zip_path: str | Path,
    *,
    seed: int,
    variant: str = "standard",
    label: int | None = None,
    kinds: tuple[str, ...] | None = None,
    difficulty: tuple[float, float] = (0.5, 1.0),
    rows: int | None = None,
    cols: int | None = None,
    pixel_spacing_mm: float | None = None,
    slice_spacing_mm: float | None = None,
    n_slices: int | None = None,
    identifiers: FakeIdentifiers | None = None,
    layout: Literal["flat", "nested"] = "nested",
    macosx_junk: bool = False,
    dicomdir: bool = False,
    readme: bool = False,
) -> StudyInfo:
    """Generate a phantom and write it as a ZIP study in one of ``STUDY_VARIANTS``.

    Defaults are small and cheap (64×64 pixels of 6 mm, 5 mm slices ≈ 60 slices)
    except for "real_like" (150 slices of 512² at 0.7 mm, 2 mm, JPEG Lossless,
    SIEMENS-like). ``label`` defaults to ``seed % 2``. Variants:
    standard, shuffled, multiframe, jpeg_lossless, jpeg_ls, jpeg2000, rle,
    multi_series (1 mm + 5 mm of the same phantom + a scout), gantry_tilt (15°),
    missing_slice, duplicate_slice, non_ct (MR), coronal, mixed_sizes,
    thick (7 mm), few_slices (12), phi (conspicuous fake identifiers in tags and
    file names), real_like.
    """
    if variant not in STUDY_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {STUDY_VARIANTS}")
    real = variant == "real_like"
    lab = (seed % 2) if label is None else label
    ids = identifiers or (PHI_IDENTIFIERS if variant == "phi" else FakeIdentifiers())
    base = PhantomSpec(
        seed=seed,
        label=lab,
        kinds=kinds if lab == 1 else None,
        difficulty=difficulty,
        rows=rows or (512 if real else 64),
        cols=cols or (512 if real else 64),
        pixel_spacing_mm=pixel_spacing_mm or (0.7 if real else 6.0),
        slice_spacing_mm=slice_spacing_mm or (2.0 if real else 5.0),
        n_slices=n_slices or (150 if real else None),
    )
    opts = SeriesOptions(identifiers=ids, series_number=2, series_description="CHEST 5.0 B")
    spec = base
    extra: list[tuple[str, PhantomSpec, SeriesOptions]] = []
    scout = False
    if variant == "shuffled":
        opts = replace(opts, shuffle=True, instance_numbers="shuffled")
    elif variant == "multiframe":
        opts = replace(opts, multiframe=True)
    elif variant in ("jpeg_lossless", "jpeg_ls", "jpeg2000", "rle"):
        opts = replace(opts, transfer_syntax=variant)  # type: ignore[arg-type]
    elif variant == "multi_series":
        spec = replace(base, slice_spacing_mm=slice_spacing_mm or 1.0, n_slices=None)
        opts = replace(opts, series_number=3, series_description="CHEST 1.0 B")
        thick = replace(base, slice_spacing_mm=5.0, slice_thickness_mm=5.0, n_slices=None)
        extra.append(("thick", thick, replace(opts, series_number=2, series_description="CHEST 5.0 B")))
        scout = True
    elif variant == "gantry_tilt":
        spec = replace(base, gantry_tilt_deg=15.0)
    elif variant == "non_ct":
        opts = replace(opts, modality="MR", series_description="T1 CHEST")
    elif variant == "coronal":
        spec = replace(base, orientation="coronal")
        opts = replace(opts, series_description="CHEST COR 5.0")
    elif variant == "thick":
        spec = replace(base, slice_spacing_mm=7.0, slice_thickness_mm=7.0)
        opts = replace(opts, series_description="CHEST 7.0")
    elif variant == "few_slices":
        spec = replace(base, n_slices=n_slices or 12)
    elif variant == "phi":
        opts = replace(opts, filename_pattern="{patient_id}_{n:04d}.dcm")
    elif real:
        opts = replace(
            opts,
            transfer_syntax="jpeg_lossless",
            manufacturer="SIEMENS",
            model_name="SOMATOM Definition AS+",
            convolution_kernel="D40s",
            bits_stored=12,
            series_description="Thorax 2.0 D40s",
            filename_pattern="{n:08d}",
        )

    ph = generate_phantom(spec)
    nz = ph.geometry.size[2]
    if variant == "missing_slice":
        opts = replace(opts, drop_slices=(nz // 2,))
    elif variant == "duplicate_slice":
        opts = replace(opts, duplicate_slices=(nz // 3,))
    elif variant == "mixed_sizes":
        opts = replace(opts, mixed_size_slices=(nz // 4, nz // 2), crop_px=max(2, spec.rows // 8))

    zp = Path(zip_path)
    series: list[SeriesInfo] = []
    with tempfile.TemporaryDirectory(prefix="s4ct-phantom-") as td:
        sources: list[Path] = []
        folder = (
            f"{ids.patient_id}_SER{opts.series_number}"
            if variant == "phi"
            else f"SER{opts.series_number:03d}"
        )
        files = write_series(ph, Path(td) / folder, opts)
        sources.append(Path(td) / folder)
        series.append(series_info(ph, opts, "primary", len(files)))
        for role, sp, so in extra:
            ph2 = generate_phantom(sp)
            f2 = write_series(ph2, Path(td) / f"SER{so.series_number:03d}", so)
            sources.append(Path(td) / f"SER{so.series_number:03d}")
            series.append(series_info(ph2, so, role, len(f2)))
        if scout:
            so = replace(opts, series_number=1, series_description="TOPOGRAM", image_type=None)
            write_localizer(ph, Path(td) / "SER001", so)
            # same seed and options as write_series used, so the UID matches the file's
            series.append(replace(series_info(ph, so, "scout", 1), geometry=None))
            sources.append(Path(td) / "SER001")
        write_study_zip(
            zp,
            sources,
            layout=layout,
            root=f"{ids.patient_name.replace('^', '_')}" if variant == "phi" else "STUDY",
            macosx_junk=macosx_junk,
            dicomdir=dicomdir,
            readme=readme,
        )
    return StudyInfo(
        zip_path=zp,
        variant=variant,
        seed=seed,
        label=lab,
        lesions=ph.lesions,
        study_uid=opts.study_uid or study_uid_for(seed, opts.uid_salt),
        series=series,
        identifiers=ids,
        phantom=ph,
    )


def series_info(ph: Phantom | None, o: SeriesOptions, role: str, n_files: int) -> SeriesInfo:
    """The :class:`SeriesInfo` of ``ph`` written with ``o`` in ``n_files`` files, in ``role``."""
    seed = ph.spec.seed if ph is not None else 0
    return SeriesInfo(
        series_uid=series_uid_for(seed, o) if ph is not None else "",
        series_number=o.series_number,
        description=o.series_description,
        modality=o.modality,
        n_files=n_files,
        role=role,
        transfer_syntax=TRANSFER_SYNTAX_UIDS[o.transfer_syntax],
        geometry=ph.geometry if ph is not None else None,
    )
