"""The DICOM results of a held predict job: SR, Secondary Capture and saliency Segmentation.

They go under attempt-scoped keys (``jobs/{job}/attempt-{n}/dicom/``) before the row
that lists them (architecture rule 3). A source whose UIDs cannot be referenced is
recorded as refused with its code (the job still succeeds: its result stands); so is
a source whose headers highdicom cannot copy into a valid object. Nothing of the
patient reaches the log: only codes and exception type names.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from app.logs import logger
from app.repository.dicom import DicomObject, DicomOutputs
from app.storage import Storage
from app.worker.context import InFlight
from app.worker.explaining import Saliency
from app.worker.pipeline import Prepared
from app.worker.retry import storage_retry
from ml.dicom_out import Finding, SourceUIDError
from ml.inference import Prediction
from ml.model import ModelEntry

__all__ = ["DICOM_CONTENT_TYPE", "finding_of", "write_dicom"]

DICOM_CONTENT_TYPE = "application/dicom"


def finding_of(pred: Prediction, entry: ModelEntry, saliency: Saliency | None) -> Finding:
    """The finding the DICOM objects report (the peak slice from the explanation, if any)."""
    op = entry.default_operating_point
    peak = None
    if saliency is not None:
        index = saliency.record.stats.get("peak", {}).get("index_zyx")
        peak = int(index[0]) if index else None
    return Finding(
        probability=float(pred.probability),
        label=pred.label,
        operating_point=op,
        threshold=float(entry.operating_points[op].threshold),
        model_name=entry.name,
        model_version=entry.version,
        model_sha256=entry.sha256 or "",
        clinical_use=entry.clinical_use,
        indeterminate_reasons=tuple(pred.indeterminate_reasons),
        peak_slice=peak,
    )


def _build(finding: Finding, prep: Prepared, saliency: Saliency | None) -> dict[str, Dataset]:
    from ml.dicom_out.sc import build_sc
    from ml.dicom_out.seg import build_seg
    from ml.dicom_out.sr import build_sr

    assert prep.source is not None
    objects = {"sr": build_sr(finding, prep.source)}
    peak_png = saliency.files.get("peak_png") if saliency is not None else None
    if peak_png is not None and finding.peak_slice is not None:
        objects["sc"] = build_sc(finding, prep.source, peak_png[1])
    if saliency is not None and saliency.source_map is not None:
        seg = build_seg(finding, prep.source, saliency.source_map)
        if seg is not None:
            objects["seg"] = seg
    return objects


def write_dicom(
    item: InFlight,
    prep: Prepared,
    finding: Finding,
    saliency: Saliency | None,
    storage: Storage,
    *,
    retry_s: float,
    stop: threading.Event,
) -> DicomOutputs:
    """Build, write and upload the job's DICOM results (or record why they were refused)."""

    def refused(code: str, detail: str) -> DicomOutputs:
        logger.info("job {}: DICOM results refused ({})", item.job_id, code)
        return DicomOutputs(item.job_id, item.attempt, "refused", error_code=code, error_detail=detail)

    try:
        built = _build(finding, prep, saliency)
    except SourceUIDError as e:
        return refused(e.code, e.detail)
    except Exception as e:  # hostile source headers highdicom cannot copy: never fail the job for it
        return refused(
            "dicom_source_invalid",
            f"the source headers cannot be copied into a valid DICOM object ({type(e).__name__})",
        )
    out_dir = Path(item.workdir) / "dicom"
    out_dir.mkdir(parents=True, exist_ok=True)
    objects = []
    for kind, ds in built.items():
        path = out_dir / f"{kind}.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        key = f"jobs/{item.job_id}/attempt-{item.attempt}/dicom/{kind}.dcm"
        storage_retry(
            "write the DICOM results",
            functools.partial(storage.put_file, key, path, DICOM_CONTENT_TYPE),
            retry_s=retry_s,
            stop=stop,
        )
        objects.append(
            DicomObject(
                kind=kind,
                key=key,
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                size_bytes=path.stat().st_size,
            )
        )
    return DicomOutputs(item.job_id, item.attempt, "written", objects=tuple(objects))
