"""Reading a study ZIP into memory (ml.io.members) gives what extraction to disk gives."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ml.errors import InputError
from ml.io import discover_series, load_volume, safe_extract
from ml.io.members import read_members
from ml.io.study import open_study, read_study
from ml.phantom import make_study

# every transfer syntax the phantoms write, a multi-frame object, several series and a shuffled order
VARIANTS = (
    "standard",
    "jpeg_lossless",
    "jpeg_ls",
    "jpeg2000",
    "rle",
    "multiframe",
    "multi_series",
    "shuffled",
)


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_series_and_volume_as_extraction(tmp_path: Path, variant: str) -> None:
    archive = tmp_path / "study.zip"
    make_study(archive, seed=5, variant=variant, rows=48, cols=48, n_slices=24, macosx_junk=True, readme=True)
    disk = safe_extract(archive, tmp_path / "out")
    on_disk = discover_series(disk.files)
    report, store = read_members(archive)
    in_memory = discover_series(report.files, store)
    assert report.skipped == disk.skipped and report.total_bytes == disk.total_bytes
    assert [s.summary() for s in in_memory.series] == [s.summary() for s in on_disk.series]
    assert in_memory.phi_tokens == on_disk.phi_tokens
    for a, b in zip(in_memory.series, on_disk.series, strict=True):
        if not a.slices:
            continue
        va, vb = load_volume(a), load_volume(b)
        assert va.stored.dtype == vb.stored.dtype
        np.testing.assert_array_equal(va.stored, vb.stored)
        assert (va.slope, va.intercept, va.geometry) == (vb.slope, vb.intercept, vb.geometry)


def test_bytes_source_nesting_and_generated_names(tmp_path: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("PATIENT-ID-123/x.bin", b"payload")
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("nested.zip", inner.getvalue())
        zf.writestr("top.bin", b"top" * 1000)
        zf.writestr("stored.bin", b"s" * 10, compress_type=zipfile.ZIP_STORED)
        zf.writestr("packed.bin", b"b" * 5000, compress_type=zipfile.ZIP_BZIP2)
    report, store = read_members(outer.getvalue())
    assert sorted(store.get(n) for n in report.files) == sorted(
        [b"payload", b"top" * 1000, b"s" * 10, b"b" * 5000]
    )
    assert not any("PATIENT" in str(n) for n in report.files)
    store.release()
    with pytest.raises(InputError) as e:
        store.get(report.files[0])
    assert e.value.code == "dicom_invalid"


def test_bad_crc_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.dcm", b"A" * 100)
    data = bytearray(buf.getvalue())
    data[30 + len("a.dcm") + 5] ^= 0xFF  # one byte of the stored member's data
    with pytest.raises(InputError) as e:
        read_members(bytes(data))
    assert e.value.code == "zip_invalid"


@pytest.mark.parametrize("variant", ["jpeg_lossless", "standard"])
@pytest.mark.parametrize("in_memory", [True, False])
def test_read_study_either_way(tmp_path: Path, in_memory: bool, variant: str) -> None:
    archive = tmp_path / "study.zip"
    make_study(archive, seed=2, variant=variant, rows=40, cols=40, n_slices=20)
    reference = read_study(archive)  # in memory: the other way is compared with it
    limit = 1 << 40 if in_memory else 0
    with open_study(archive.read_bytes(), in_memory_max_bytes=limit, workdir=tmp_path) as study:
        assert (study.series[0].slices[0].store is not None) is in_memory
        # uncompressed slices in memory are copied from their bytes without a second parse
        native = in_memory and variant == "standard"
        assert all((s.native is not None) is native for s in study.series[0].slices)
        volume = load_volume(study.series[0])
    assert reference.volume is not None
    np.testing.assert_array_equal(volume.stored, reference.volume.stored)
    assert list(tmp_path.glob("s4ct-study-*")) == []  # the temporary directory is removed


def test_codes_of_open_study_unchanged_for_empty_and_junk_archives(tmp_path: Path) -> None:
    """An archive without DICOM is ``no_dicom`` (not ``zip_invalid``) whichever way it is read."""
    for i, members in enumerate([{}, {"readme.txt": b"hello " * 100}]):
        archive = tmp_path / f"a{i}.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        for limit in (0, 1 << 30):
            with (
                pytest.raises(InputError) as e,
                open_study(archive, in_memory_max_bytes=limit, workdir=tmp_path),
            ):
                pass
            assert e.value.code == "no_dicom"


def test_plain_zlib_reads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ISA-L (the API image) members inflate through zlib to the same bytes; damage is refused."""
    import zlib

    from ml.io import members

    archive = tmp_path / "study.zip"
    make_study(archive, seed=3, rows=32, cols=32, n_slices=8)
    fast_report, fast = read_members(archive)
    expected = {str(n): fast.get(n) for n in fast_report.files}
    monkeypatch.setattr(members, "isal_zlib", zlib)
    report, store = read_members(archive)
    assert {str(n): store.get(n) for n in report.files} == expected
    data = bytearray(archive.read_bytes())
    first = zipfile.ZipFile(archive).infolist()[0]
    data[first.header_offset + 30 + len(first.filename.encode()) + 2] ^= 0xFF
    with pytest.raises(InputError) as e:
        read_members(bytes(data))
    assert e.value.code == "zip_invalid"


def test_cycle_collector_paused_during_the_scan_and_restored() -> None:
    import gc

    from ml.io.reading import cycle_collection_paused

    assert gc.isenabled()
    with cycle_collection_paused():
        assert not gc.isenabled()
        with cycle_collection_paused():  # nested: the inner exit leaves it paused
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with cycle_collection_paused():
            pass
        assert not gc.isenabled()  # never turned on when it was off on entry
    finally:
        gc.enable()
    with pytest.raises(RuntimeError), cycle_collection_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()
