"""How a phantom is written as DICOM: series options, fake identifiers, deterministic UIDs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

TransferSyntaxName = Literal["explicit_le", "implicit_le", "jpeg_lossless", "jpeg_ls", "jpeg2000", "rle"]
InstanceNumbering = Literal["ordered", "shuffled", "absent"]

TRANSFER_SYNTAX_UIDS: Final[dict[str, str]] = {
    "explicit_le": str(ExplicitVRLittleEndian),
    "implicit_le": str(ImplicitVRLittleEndian),
    "jpeg_lossless": str(JPEGLosslessSV1),
    "jpeg_ls": str(JPEGLSLossless),
    "jpeg2000": str(JPEG2000Lossless),
    "rle": str(RLELossless),
}

_UID_ROOT: Final[str] = "1.2.826.0.1.3680043.8.498."  # pydicom's root: generated UIDs, never real ones


def phantom_uid(*parts: str) -> str:
    """A deterministic UID under pydicom's root, from ``parts``."""
    return str(generate_uid(prefix=_UID_ROOT, entropy_srcs=["s4ct-phantom", *parts]))


@dataclass(frozen=True)
class FakeIdentifiers:
    """Patient/study identifiers written into the DICOM (all fake, obviously so by default)."""

    patient_name: str = "PHANTOM^TEST"
    patient_id: str = "S4CT-PHANTOM-0001"
    birth_date: str = "19700101"
    accession_number: str = "S4CTACC0001"
    sex: str = "O"
    institution_name: str = "S4CT PHANTOM LAB"
    referring_physician: str = "REFERRER^FAKE"
    study_id: str = "1"


PHI_IDENTIFIERS: Final[FakeIdentifiers] = FakeIdentifiers(
    patient_name="ZZFAKE^PHIPATIENT^CONSPICUOUS",
    patient_id="PHI-ID-7F3K9Q",
    birth_date="19450704",
    accession_number="ACC-PHI-55321",
    sex="F",
    institution_name="PHI GENERAL HOSPITAL ZZFAKE",
    referring_physician="PHIREFERRER^ZZFAKE",
    study_id="PHISTUDY77",
)


@dataclass(frozen=True)
class SeriesOptions:
    """How to write a phantom as a DICOM series (see :func:`write_series`).

    Attributes:
        transfer_syntax: "explicit_le", "implicit_le", "jpeg_lossless" (Process 14
            SV1, via GDCM), "jpeg_ls", "jpeg2000" (lossless), "rle".
        series_number, series_description: SeriesNumber / SeriesDescription.
        modality: "CT" (default), or e.g. "MR" (MR Image Storage) / "PT" (PET).
        image_type: ImageType override; default ORIGINAL\\PRIMARY\\AXIAL (axial) or
            DERIVED\\SECONDARY\\REFORMATTED (coronal).
        identifiers: fake patient/study identifiers.
        study_uid, series_uid, frame_of_reference_uid: explicit UIDs; ``None`` →
            derived deterministically from the phantom seed (+ ``uid_salt``).
        filename_pattern: ``str.format`` pattern with fields ``n`` (file ordinal, in
            shuffled order when ``shuffle``), ``instance``, ``slice`` (array index),
            ``series`` (number), ``patient_id``, ``sop`` and ``hash`` (12 hex chars).
        shuffle: write files in a seeded random order under non-matching names.
        instance_numbers: "ordered", "shuffled" (random permutation) or "absent".
        multiframe: one Enhanced CT Image Storage object instead of one file per slice.
        drop_slices: array slice indices not written (a missing slice).
        duplicate_slices: slice indices written twice (same position, new SOP UID).
        mixed_size_slices: slice indices written cropped by ``crop_px`` rows/columns.
        rescale_slope, rescale_intercept: HU = stored * slope + intercept.
        vary_intercept: per-slice intercept ``rescale_intercept - 100 * (k % 3)``.
        pixel_representation: "uint16" (0) or "int16" (1) stored values.
        bits_stored: BitsStored (12 or 16); stored values are clipped to it.
        window_center, window_width: display window (HU).
        convolution_kernel, manufacturer, model_name, kvp: scanner attributes.
    """

    transfer_syntax: TransferSyntaxName = "explicit_le"
    series_number: int = 1
    series_description: str = "PHANTOM CHEST"
    modality: str = "CT"
    image_type: tuple[str, ...] | None = None
    identifiers: FakeIdentifiers = field(default_factory=FakeIdentifiers)
    study_uid: str | None = None
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    uid_salt: str = ""
    filename_pattern: str = "IM{n:04d}.dcm"
    shuffle: bool = False
    instance_numbers: InstanceNumbering = "ordered"
    multiframe: bool = False
    drop_slices: tuple[int, ...] = ()
    duplicate_slices: tuple[int, ...] = ()
    mixed_size_slices: tuple[int, ...] = ()
    crop_px: int = 16
    rescale_slope: float = 1.0
    rescale_intercept: float = -1024.0
    vary_intercept: bool = False
    pixel_representation: Literal["uint16", "int16"] = "uint16"
    bits_stored: int = 16
    window_center: float = 40.0
    window_width: float = 400.0
    convolution_kernel: str = "STANDARD"
    manufacturer: str = "S4CT PHANTOM"
    model_name: str = "SYNTHETIC CHEST"
    kvp: float = 120.0

    def __post_init__(self) -> None:
        if self.transfer_syntax not in TRANSFER_SYNTAX_UIDS:
            raise ValueError(f"unknown transfer syntax {self.transfer_syntax!r}")
        if self.rescale_slope == 0:
            raise ValueError("rescale_slope must be non-zero")
        if self.bits_stored not in (12, 16):
            raise ValueError("bits_stored must be 12 or 16")


def study_uid_for(seed: int, salt: str = "") -> str:
    """Deterministic StudyInstanceUID of a phantom seed."""
    return phantom_uid("study", str(seed), salt)


def frame_of_reference_uid_for(seed: int, salt: str = "") -> str:
    """Deterministic FrameOfReferenceUID shared by all series of a phantom seed."""
    return phantom_uid("for", str(seed), salt)


def series_uid_for(seed: int, options: SeriesOptions) -> str:
    """The SeriesInstanceUID :func:`write_series` uses for ``options``."""
    if options.series_uid:
        return options.series_uid
    return phantom_uid(
        "series", str(seed), str(options.series_number), options.series_description, options.uid_salt
    )
