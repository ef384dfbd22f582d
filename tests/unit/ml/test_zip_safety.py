"""Every refusal of ml.io.safe_extract and ml.io.members.read_members (the same), generated archives."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from zipcraft import many_members, raw_zip, symlink_zip, wide_central_directory

from ml.errors import InputError, ZipError
from ml.io import ZipLimits, discover_series, precheck_zip, safe_extract
from ml.io.members import read_members


def _zip(
    tmp_path: Path, members: dict[str, bytes], name: str = "a.zip", compression: int = zipfile.ZIP_DEFLATED
) -> Path:
    p = tmp_path / name
    with zipfile.ZipFile(p, "w", compression) as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return p


def _code(zip_path: Path, tmp_path: Path, limits: ZipLimits | None = None) -> str:
    """The refusal code of extraction to disk, checked to be that of reading into memory too."""
    out = tmp_path / "out"
    with pytest.raises(InputError) as ei:
        safe_extract(zip_path, out, limits)
    # nothing half-extracted may remain usable: refusals happen before writing, or raise mid-way
    with pytest.raises(InputError) as in_memory:
        read_members(zip_path, limits)
    assert in_memory.value.code == ei.value.code
    return ei.value.code


def test_not_a_zip(tmp_path: Path) -> None:
    p = tmp_path / "x.zip"
    p.write_bytes(b"this is not a zip file at all" * 100)
    assert _code(p, tmp_path) == "zip_invalid"


def test_truncated_zip(tmp_path: Path) -> None:
    p = _zip(tmp_path, {f"f{i}.dcm": bytes(range(256)) * 400 for i in range(5)})
    data = p.read_bytes()
    t = tmp_path / "trunc.zip"
    t.write_bytes(data[: len(data) // 2])
    assert _code(t, tmp_path) == "zip_invalid"


def test_corrupt_member_data(tmp_path: Path) -> None:
    p = _zip(tmp_path, {"f.dcm": b"DICM" * 50_000})
    data = bytearray(p.read_bytes())
    # flip bytes inside the deflate stream (after the 30-byte local header + name)
    for i in range(60, 200):
        data[i] ^= 0xFF
    c = tmp_path / "corrupt.zip"
    c.write_bytes(bytes(data))
    assert _code(c, tmp_path) == "zip_invalid"


def test_empty_zip_has_no_dicom(tmp_path: Path) -> None:
    p = _zip(tmp_path, {})
    rep = safe_extract(p, tmp_path / "out")
    assert rep.files == []
    with pytest.raises(InputError) as ei:
        discover_series(rep.files)
    assert ei.value.code == "no_dicom"


def test_encrypted_zip(tmp_path: Path) -> None:
    p = tmp_path / "enc.zip"
    p.write_bytes(raw_zip([("secret.dcm", b"x" * 100)], flags=0x1))
    with zipfile.ZipFile(p) as zf:
        assert zf.infolist()[0].flag_bits & 0x1
    assert _code(p, tmp_path) == "zip_invalid"


@pytest.mark.parametrize(
    "name", ["../evil.dcm", "a/../../evil.dcm", "/etc/passwd", "C:\\windows\\x.dcm", "..\\..\\evil.dcm"]
)
def test_unsafe_paths(tmp_path: Path, name: str) -> None:
    p = tmp_path / "slip.zip"
    p.write_bytes(raw_zip([(name, b"data")]))
    assert _code(p, tmp_path) == "zip_unsafe_path"
    assert not (tmp_path / "evil.dcm").exists()


def test_symlink_member(tmp_path: Path) -> None:
    p = tmp_path / "link.zip"
    p.write_bytes(symlink_zip("link.dcm", "/etc/passwd"))
    assert _code(p, tmp_path) == "zip_unsafe_path"


def test_too_many_members(tmp_path: Path) -> None:
    p = _zip(tmp_path, {f"{i}.dcm": b"x" for i in range(21)}, compression=zipfile.ZIP_STORED)
    assert _code(p, tmp_path, ZipLimits(max_members=20)) == "zip_too_large"


def test_default_member_limit_100k(tmp_path: Path) -> None:
    p = tmp_path / "many.zip"
    p.write_bytes(many_members(ZipLimits().max_members + 1))
    assert _code(p, tmp_path) == "zip_too_large"


def test_member_count_read_from_the_end_record_first(tmp_path: Path) -> None:
    """Refused from the (Zip64) end record count before parsing entries; odd valid archives still open."""
    wide = tmp_path / "wide.zip"
    wide.write_bytes(wide_central_directory(ZipLimits().max_members + 1))
    assert _code(wide, tmp_path) == "zip_too_large"
    prefixed = tmp_path / "sfx.zip"  # self-extractor style: bytes before the archive
    prefixed.write_bytes(b"MZ" + bytes(5000) + many_members(3))
    assert precheck_zip(io.BytesIO(prefixed.read_bytes())).members == 3
    assert len(safe_extract(prefixed, tmp_path / "o1").files) == 3
    data = bytearray(many_members(3))  # a count of 0xFFFF without a Zip64 record: zipfile counts
    data[-14:-10] = b"\xff\xff\xff\xff"
    assert precheck_zip(io.BytesIO(bytes(data))).members == 3


def test_member_and_total_size_limits(tmp_path: Path) -> None:
    p = _zip(tmp_path, {"a.dcm": b"a" * 5000, "b.dcm": b"b" * 5000}, compression=zipfile.ZIP_STORED)
    assert _code(p, tmp_path, ZipLimits(max_member_uncompressed=4000)) == "zip_too_large"
    assert _code(p, tmp_path, ZipLimits(max_total_uncompressed=8000)) == "zip_too_large"


def test_compression_ratio_bomb(tmp_path: Path) -> None:
    p = _zip(tmp_path, {"zeros.dcm": b"\0" * (20 << 20)})
    assert _code(p, tmp_path) == "zip_bomb"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_overlapping_members(tmp_path: Path) -> None:
    p = tmp_path / "overlap.zip"
    p.write_bytes(raw_zip([("a.dcm", b"A" * 1000)], central=[("a.dcm", 0), ("b.dcm", 0), ("c.dcm", 0)]))
    assert _code(p, tmp_path) == "zip_bomb"


def test_overlapping_members_refused_from_the_central_directory() -> None:
    data = raw_zip([("a.dcm", b"A" * 1000)], central=[("a.dcm", 0), ("b.dcm", 0), ("c.dcm", 0)])
    with pytest.raises(ZipError) as e:
        precheck_zip(io.BytesIO(data))
    assert e.value.code == "zip_bomb"
    ok = raw_zip([("a.dcm", b"A" * 1000), ("b.dcm", b"B" * 10)])  # adjacent members are fine
    assert precheck_zip(io.BytesIO(ok)).files == 2


def test_lying_declared_size(tmp_path: Path) -> None:
    p = tmp_path / "lie.zip"
    p.write_bytes(raw_zip([("a.dcm", b"A" * 5000)], declared_sizes={"a.dcm": 10}))
    assert _code(p, tmp_path) in {"zip_bomb", "zip_invalid"}


def test_nesting_one_level_ok_two_refused(tmp_path: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("inner/x.bin", b"payload")
    outer = _zip(tmp_path, {"nested.zip": inner.getvalue(), "top.bin": b"top"}, name="outer.zip")
    rep = safe_extract(outer, tmp_path / "o1")
    contents = sorted(f.read_bytes() for f in rep.files)
    assert contents == [b"payload", b"top"]
    deeper = _zip(tmp_path, {"level1.zip": outer.read_bytes()}, name="deeper.zip")
    assert _code(deeper, tmp_path) == "zip_bomb"


def test_junk_skipped_and_names_not_reused(tmp_path: Path) -> None:
    p = _zip(
        tmp_path,
        {
            "__MACOSX/._IM0001": b"junk",
            "folder/._IM0002": b"junk",
            "DICOMDIR": b"dir",
            ".DS_Store": b"x",
            "PATIENT-ID-123/IM0001.dcm": b"content",
            "sub/": b"",
        },
    )
    rep = safe_extract(p, tmp_path / "out")
    assert len(rep.files) == 1
    assert rep.skipped["macosx_metadata"] == 2
    assert rep.skipped["dicomdir_or_system_file"] == 2
    # extracted under generated names: the identifier-bearing member name is not on disk
    assert "PATIENT" not in rep.files[0].name
    assert all(p.parent == tmp_path / "out" for p in rep.files)


def test_non_dicom_files_skipped(tmp_path: Path) -> None:
    p = _zip(tmp_path, {"readme.txt": b"hello " * 100, "image.png": b"\x89PNG" + b"0" * 200})
    rep = safe_extract(p, tmp_path / "out")
    with pytest.raises(InputError) as ei:
        discover_series(rep.files)
    assert ei.value.code == "no_dicom"


def test_errors_survive_pickling() -> None:
    """Refusals cross the worker's process pool: code, detail and status must survive."""
    import pickle

    from ml.errors import DicomError, ModelUnavailable, QCError, ZipError

    for err in (ZipError("zip_bomb", "x"), DicomError("dicom_invalid", "y"), QCError("not_ct", "z")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and (back.code, back.detail) == (err.code, err.detail)
    big = ZipError("zip_too_large", "big", http_status=413)
    assert pickle.loads(pickle.dumps(big)).http_status == 413
    m = pickle.loads(pickle.dumps(ModelUnavailable("gone")))
    assert m.code == "model_unavailable" and m.detail == "gone"
