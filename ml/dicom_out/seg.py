"""The saliency as a DICOM Segmentation in the source frame of reference.

One binary segment: the voxels where the saliency map reaches ``fraction`` of its maximum
(the ``regions`` of the explanation's statistics, 50 % by default), on the source series'
own grid, one frame per source slice that holds any of it (empty slices are left out), each
frame referencing its source slice. Small (bit-packed frames) and displayed as an overlay on
the CT by any viewer that reads DICOM SEG; the full float map stays the explanation's NIfTI.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ml.dicom_out.content import SCHEME, Finding, quiet
from ml.dicom_out.source import SourceReference, SourceUIDError, invalid_uids, reference_dataset
from ml.dicom_out.sr import MANUFACTURER

__all__ = ["build_seg"]

SEG_SERIES_NUMBER = 9903


def _source_image(source: SourceReference, z: int) -> Dataset:
    """Slice ``z`` as highdicom needs a source image: UIDs, patient and study, plane geometry."""
    ds = reference_dataset(source, z)
    ds.Rows, ds.Columns = source.rows, source.columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelSpacing = list(source.pixel_spacing_mm)
    ds.ImageOrientationPatient = list(source.orientation)
    ds.ImagePositionPatient = list(source.positions_mm[z])
    ds.SliceThickness = source.slice_thickness_mm or 1.0
    return ds


@quiet
def build_seg(
    finding: Finding, source: SourceReference, source_map: npt.NDArray[np.float32], *, fraction: float = 0.5
) -> Dataset | None:
    """The Segmentation of the salient region, or None (no positive saliency, or a multi-frame source).

    Args:
        source_map: the saliency on the source grid, (z, y, x) = (slices in series order, rows, columns).
        fraction: the segment is ``source_map >= fraction · max`` (0 < fraction ≤ 1).

    Raises:
        SourceUIDError: the source's UIDs are not valid DICOM UIDs.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    bad = invalid_uids(source)
    if bad:
        raise SourceUIDError(bad)
    shape = (len(source.instances), source.rows, source.columns)
    if source_map.shape != shape:
        raise ValueError(f"source_map shape {source_map.shape} != source grid {shape} (z, y, x)")
    vmax = float(source_map.max())
    if source.multiframe or not vmax > 0.0:
        return None
    mask = source_map >= np.float32(fraction * vmax)
    keep = np.flatnonzero(mask.any(axis=(1, 2)))
    algorithm = hd.AlgorithmIdentificationSequence(
        name=finding.model_name[:64],
        family=hd.sr.CodedConcept("S4CT-SALIENCY", SCHEME, "Saliency of a classification model"),
        version=finding.model_version[:64],
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=f"salient region (>= {fraction:.0%} of max)",
        segmented_property_category=hd.sr.CodedConcept("S4CT-AI", SCHEME, "AI model attention"),
        segmented_property_type=hd.sr.CodedConcept("S4CT-SALIENT", SCHEME, "Salient region"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=generate_uid(),
        tracking_id="saliency",
    )
    seg = hd.seg.Segmentation(
        source_images=[_source_image(source, int(z)) for z in keep],
        pixel_array=mask[keep].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"{finding.model_name} {finding.model_version}"[:64],
        software_versions=finding.model_version[:64] or "unknown",
        device_serial_number=(finding.model_sha256 or "unknown")[:64],
        content_label="SALIENCY",
        content_description=("AI saliency" + ("" if finding.clinical_use else " - not for clinical use"))[
            :64
        ],
    )
    seg.SeriesDescription = (
        "AI saliency region" + ("" if finding.clinical_use else " - not for clinical use")
    )[:64]
    return seg
