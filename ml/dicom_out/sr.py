"""The Comprehensive SR of a result: a TID 1500 Measurement Report in the patient's study.

One measurement group holds the finding (DCM ``Finding`` = pathology / normal /
indeterminate), the calibrated probability with the algorithm (model name, version,
sha256), the operating point and its threshold, the intended use ("not for clinical
use" unless the model is cleared) and any reasons for an indeterminate result. Every
slice of the source series is listed as evidence; the slice through the saliency peak,
when there is one, is the group's source image. The document is complete, preliminary
and unverified: a machine result for a reader to confirm.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ml.dicom_out import content as c
from ml.dicom_out.content import quiet
from ml.dicom_out.source import SourceReference, SourceUIDError, invalid_uids, reference_dataset

__all__ = ["MANUFACTURER", "build_sr", "device_uid"]

MANUFACTURER = "Service4CT"
SR_SERIES_NUMBER = 9901


def device_uid(finding: c.Finding) -> str:
    """A UID of the model (the same for the same weights), identifying the SR's device observer."""
    return str(generate_uid(entropy_srcs=[finding.model_name, finding.model_version, finding.model_sha256]))


def _group(finding: c.Finding, peak: Dataset | None) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    algorithm = hd.sr.AlgorithmIdentification(
        name=finding.model_name[:64],
        version=finding.model_version[:64],
        parameters=[f"sha256:{finding.model_sha256}"] if finding.model_sha256 else None,
        manufacturer=MANUFACTURER,
    )
    measurements = [
        hd.sr.Measurement(
            name=c.PROBABILITY, value=float(finding.probability), unit=c.UNITLESS, algorithm_id=algorithm
        ),
        hd.sr.Measurement(
            name=c.THRESHOLD, value=float(finding.threshold), unit=c.UNITLESS, algorithm_id=algorithm
        ),
    ]
    op = finding.operating_point[:40]
    evaluations = [
        hd.sr.QualitativeEvaluation(c.FINDING, c.LABEL_CODES[finding.label]),
        hd.sr.QualitativeEvaluation(c.OPERATING_POINT, hd.sr.CodedConcept(f"S4CT-OP-{op[:8]}", c.SCHEME, op)),
        hd.sr.QualitativeEvaluation(c.INTENDED_USE, c.use_code(finding.clinical_use)),
        *(
            hd.sr.QualitativeEvaluation(c.INDETERMINATE_REASON, c.reason_code(r))
            for r in finding.indeterminate_reasons
        ),
    ]
    sources = None
    if peak is not None:
        sources = [hd.sr.SourceImageForMeasurementGroup(peak.SOPClassUID, peak.SOPInstanceUID)]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="chest CT triage"),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=sources,
    )


@quiet
def build_sr(finding: c.Finding, source: SourceReference, *, series_uid: str | None = None) -> Dataset:
    """The SR document (a highdicom ``ComprehensiveSR``) of ``finding`` in the source study.

    Raises:
        SourceUIDError: the source's UIDs are not valid DICOM UIDs (nothing can reference them).
    """
    bad = invalid_uids(source)
    if bad:
        raise SourceUIDError(bad)
    evidence = [reference_dataset(source, i) for i in source.first_indices()]
    peak = None
    if finding.peak_slice is not None and 0 <= finding.peak_slice < len(source.instances):
        peak = reference_dataset(source, finding.peak_slice)
    observer = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(finding),
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=f"{finding.model_name} {finding.model_version}"[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=c.PROCEDURE,
        imaging_measurements=[_group(finding, peak)],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_uid or generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.CodingSchemeIdentificationSequence = [c.scheme_identification()]
    sr.SeriesDescription = ("AI triage report" + ("" if finding.clinical_use else " - not for clinical use"))[
        :64
    ]
    return sr
