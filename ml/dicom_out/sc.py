"""The Secondary Capture of a result: the saliency peak slice with its heat overlay and a banner.

The image is the RGB overlay the explanation rendered for the peak slice
(:func:`ml.explain.render.write_peak_png`: CT in the lung window, heatmap where the map
exceeds a fraction of its maximum, a ring at the peak) with a black band above it
carrying the burned-in banner (:meth:`Finding.banner`: "NOT FOR CLINICAL USE" unless
the model is cleared, the label, the probability and the model; never patient data).
It references the source slice it shows and sits in the source study.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ml.dicom_out.content import Finding, quiet
from ml.dicom_out.source import SourceReference, SourceUIDError, invalid_uids, reference_dataset
from ml.dicom_out.sr import MANUFACTURER

__all__ = ["build_sc", "with_banner"]

SC_SERIES_NUMBER = 9902
U8Array = npt.NDArray[np.uint8]


def with_banner(rgb: U8Array, text: str) -> U8Array:
    """``rgb`` (rows, columns, 3) below a black band with ``text`` in white (and a red edge).

    The text is wrapped at ``" | "`` into as many lines as the width needs.
    """
    from PIL import Image, ImageDraw, ImageFont

    h, w = rgb.shape[:2]
    size = max(10, min(28, w // 36))
    font = ImageFont.load_default(size=size)
    lines = [text]
    if font.getlength(text) > w - size:
        lines = text.split(" | ")
    band = size * (len(lines) + 1)
    img = Image.new("RGB", (w, h + band), (0, 0, 0))
    img.paste(Image.fromarray(np.ascontiguousarray(rgb), mode="RGB"), (0, band))
    draw = ImageDraw.Draw(img)
    for k, line in enumerate(lines):
        draw.text((size // 2, size // 2 + k * size), line, fill=(255, 255, 255), font=font)
    draw.line((0, band - 2, w, band - 2), fill=(220, 30, 30), width=2)
    return np.asarray(img, dtype=np.uint8)


@quiet
def build_sc(
    finding: Finding,
    source: SourceReference,
    overlay: U8Array | str | Path,
    *,
    series_uid: str | None = None,
) -> Dataset:
    """The Secondary Capture (a highdicom ``SCImage``) of the peak slice in the source study.

    Args:
        finding: the result (its ``peak_slice`` is the source slice referenced).
        source: the source series.
        overlay: the rendered peak slice, an RGB uint8 array (rows, columns, 3) or a PNG file.

    Raises:
        SourceUIDError: the source's UIDs are not valid DICOM UIDs.
    """
    bad = invalid_uids(source)
    if bad:
        raise SourceUIDError(bad)
    if not isinstance(overlay, np.ndarray):
        from PIL import Image

        with Image.open(overlay) as im:
            overlay = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if overlay.ndim != 3 or overlay.shape[2] != 3 or overlay.dtype != np.uint8:
        raise ValueError(f"overlay must be RGB uint8 (rows, columns, 3), got {overlay.shape} {overlay.dtype}")
    pixels = with_banner(overlay, finding.banner())
    peak = finding.peak_slice if finding.peak_slice is not None else 0
    peak = min(max(peak, 0), len(source.instances) - 1)
    ref = reference_dataset(source, peak)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid or generate_uid(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=source.patient_orientation(),
    )
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = "CHEST"  # an unpaired part: Laterality (type 2C) stays absent
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ConversionType = "WSD"
    sc.SeriesDescription = (
        "AI saliency key image" + ("" if finding.clinical_use else " - not for clinical use")
    )[:64]
    sc.DerivationDescription = f"Saliency peak slice overlay; {finding.banner()}"[:1024]
    item = Dataset()
    item.ReferencedSOPClassUID = ref.SOPClassUID
    item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    sc.SourceImageSequence = [item]
    return sc
