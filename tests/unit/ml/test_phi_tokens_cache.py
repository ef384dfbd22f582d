"""Identifier tokens of many headers: a study-wide cache gives what each header gives alone."""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset

from ml.io.headers import phi_tokens, read_header


def _header(name: bytes, charset: str | None) -> Dataset:
    """A header without preamble or file meta (read as DICOM because it has an SOP Class UID)."""
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.PatientName, ds.PatientID = name.decode("latin-1"), "ID-12345"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True)
    out = read_header(buf.getvalue())
    assert out is not None
    return out


def test_cached_tokens_are_each_headers_own() -> None:
    cache: dict = {}
    for name, charset in [
        (b"M\xfcller^Hans", "ISO_IR 100"),
        (b"M\xfcller^Hans", None),  # the same bytes in another character set
        (b"M\xfcller^Hans", "ISO_IR 100"),
        (b"Other^Person", "ISO_IR 100"),
    ]:
        alone = phi_tokens(_header(name, charset))
        assert phi_tokens(_header(name, charset), cache) == alone
        assert "ID-12345" in alone
    assert len(cache) >= 4  # raw values were cached (names in two character sets, the ID)
    assert phi_tokens(_header(b"M\xfcller^Hans", "ISO_IR 100")) >= {"Müller^Hans", "Müller", "Hans"}
