"""DICOM result objects of a prediction (highdicom): SR, Secondary Capture, saliency map.

A library like the rest of ``ml/``: every input is an argument (the finding, the source
series' reference, the rendered overlay, the map). The objects go into the patient's
study: new SOP Instance and Series UIDs, the source's StudyInstanceUID, the patient and
study modules copied from the source. A source whose UIDs are not valid DICOM UIDs is
refused (:class:`~ml.dicom_out.source.SourceUIDError`) instead of writing an invalid object.

``ml.dicom_out.source`` and ``ml.dicom_out.content`` need pydicom only; the builders
(``sr``, ``sc``, ``seg``) import highdicom.
"""

from ml.dicom_out.content import Finding
from ml.dicom_out.source import SourceReference, SourceUIDError, invalid_uids, read_source

__all__ = ["Finding", "SourceReference", "SourceUIDError", "invalid_uids", "read_source"]
