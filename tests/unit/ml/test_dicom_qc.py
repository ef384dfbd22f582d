"""Series discovery, pixel decoding, geometry and every QC code, on generated phantom studies."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomcraft import edit_dicom, merge_zips, rezip

from ml.errors import InputError
from ml.io import assess_series, load_volume, open_study, rank_series, read_study
from ml.phantom import StudyInfo, make_study

MakeStudy = Callable[..., StudyInfo]


@pytest.fixture(scope="module")
def study_factory(tmp_path_factory: pytest.TempPathFactory) -> MakeStudy:
    cache: dict[tuple[object, ...], StudyInfo] = {}
    root = tmp_path_factory.mktemp("studies")

    def make(variant: str, seed: int = 3, **kw: object) -> StudyInfo:
        key = (variant, seed, *sorted(kw.items()))
        if key not in cache:
            cache[key] = make_study(
                root / f"{variant}-{seed}-{len(cache)}.zip", seed=seed, variant=variant, **kw
            )  # type: ignore[arg-type]
        return cache[key]

    return make


def _hu(zip_path: Path, series_uid: str | None = None) -> np.ndarray:
    vol = read_study(zip_path, series_uid=series_uid).volume
    assert vol is not None
    return vol.hu()


LOSSLESS = ["standard", "shuffled", "multiframe", "jpeg_lossless", "jpeg_ls", "jpeg2000", "rle"]


@pytest.mark.parametrize("variant", LOSSLESS)
def test_volume_round_trips_bit_exact(study_factory: MakeStudy, variant: str) -> None:
    info = study_factory(variant)
    with open_study(info.zip_path) as st:
        rep = rank_series(st)
        series = rep.selected.series
        assert series.series_uid == info.primary_series_uid
        assert rep.selected.reasons == []
        vol = load_volume(series)
        if variant == "jpeg_lossless":
            assert series.transfer_syntaxes == ("1.2.840.10008.1.2.4.70",)
        assert series.multiframe == (variant == "multiframe")
    ph = info.phantom
    np.testing.assert_array_equal(vol.hu(), ph.hu.astype(np.float32))
    g, pg = vol.geometry, ph.geometry
    assert g.size == pg.size
    np.testing.assert_allclose(g.spacing_mm, pg.spacing_mm, atol=1e-4)
    np.testing.assert_allclose(g.origin_mm, pg.origin_mm, atol=1e-3)
    np.testing.assert_allclose(g.direction, pg.direction, atol=1e-6)


def test_shuffled_files_sorted_by_position_not_name_or_instance(study_factory: MakeStudy) -> None:
    info = study_factory("shuffled")
    with open_study(info.zip_path) as st:
        s = st.get(info.primary_series_uid)
        assert s is not None
        offsets = s.slice_offsets_mm()
        assert np.all(np.diff(offsets) > 0)
        insts = [x.instance_number for x in s.slices]
        assert insts != sorted(insts)  # instance numbers were shuffled, yet the volume is right


def test_multi_series_ranking_prefers_thin_and_rejects_scout(study_factory: MakeStudy) -> None:
    info = study_factory("multi_series")
    roles = {s.series_uid: s.role for s in info.series}
    with open_study(info.zip_path) as st:
        assert len(st.series) == 3
        rep = rank_series(st)
        assert roles[rep.selected.series.series_uid] == "primary"
        by_role = {roles[q.series.series_uid]: q for q in rep.series}
        assert "localizer" in by_role["scout"].reject_codes
        assert by_role["thick"].usable and by_role["thick"].rank == 2
        assert by_role["primary"].score > by_role["thick"].score
        d = rep.to_dict()
        assert d["selected_by"] == "ranking" and len(d["series"]) == 3
        # explicit override
        thick_uid = next(u for u, r in roles.items() if r == "thick")
        rep2 = rank_series(st, series_uid=thick_uid)
        assert rep2.selected.series.series_uid == thick_uid and rep2.override
        with pytest.raises(InputError) as ei:
            rank_series(st, series_uid="1.2.3.4.5.6")
        assert ei.value.code == "series_not_found"
        scout_uid = next(u for u, r in roles.items() if r == "scout")
        with pytest.raises(InputError) as ei:
            rank_series(st, series_uid=scout_uid)
        assert ei.value.code == "localizer"


@pytest.mark.parametrize(
    ("variant", "code"),
    [
        ("non_ct", "not_ct"),
        ("few_slices", "too_few_slices"),
        ("thick", "slice_thickness_too_large"),
        ("missing_slice", "inconsistent_spacing"),
        ("coronal", "non_axial"),
        ("mixed_sizes", "mixed_image_sizes"),
    ],
)
def test_rejection_codes(study_factory: MakeStudy, variant: str, code: str) -> None:
    info = study_factory(variant)
    with open_study(info.zip_path) as st:
        q = assess_series(st.series[0])
        assert code in q.reject_codes, q.reasons
        with pytest.raises(InputError) as ei:
            rank_series(st)
        assert ei.value.code == code


@pytest.mark.parametrize(
    ("variant", "code"), [("duplicate_slice", "duplicate_slices"), ("gantry_tilt", "gantry_tilt")]
)
def test_warning_codes_keep_series_usable(study_factory: MakeStudy, variant: str, code: str) -> None:
    info = study_factory(variant)
    with open_study(info.zip_path) as st:
        rep = rank_series(st)
        assert code in rep.selected.warning_codes
        assert rep.to_dict()["warnings"][0]["code"] == code
        vol = load_volume(rep.selected.series)
    if variant == "duplicate_slice":
        assert rep.selected.series.duplicates == 1
        np.testing.assert_array_equal(vol.hu(), info.phantom.hu.astype(np.float32))
    else:
        assert rep.selected.series.tilt_deg() == pytest.approx(15.0, abs=0.2)


def test_missing_slice_detail_mentions_gap(study_factory: MakeStudy) -> None:
    info = study_factory("missing_slice")
    with open_study(info.zip_path) as st:
        q = assess_series(st.series[0])
    r = next(r for r in q.reasons if r.code == "inconsistent_spacing")
    assert "missing" in r.detail


def test_nested_layout_junk_and_readme_skipped(study_factory: MakeStudy) -> None:
    info = study_factory("standard", seed=5, macosx_junk=True, dicomdir=True, readme=True)
    with open_study(info.zip_path) as st:
        assert st.skipped["macosx_metadata"] >= 1
        assert st.skipped["dicomdir_or_system_file"] >= 1
        assert st.skipped["not_dicom"] >= 1
        assert len(st.series) == 1


def test_nested_zip_one_level(study_factory: MakeStudy, tmp_path: Path) -> None:
    info = study_factory("standard")
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(info.zip_path, "inner/study.zip")
    np.testing.assert_array_equal(_hu(info.zip_path), _hu(outer))


def test_truncated_slice_is_dicom_invalid(study_factory: MakeStudy, tmp_path: Path) -> None:
    info = study_factory("standard")
    bad = tmp_path / "trunc.zip"
    rezip(info.zip_path, bad, lambda i, d: d[: len(d) - 3000] if i == 7 else d)
    with pytest.raises(InputError) as ei:
        _hu(bad)
    assert ei.value.code == "dicom_invalid"


def test_missing_pixel_data_is_dicom_invalid(study_factory: MakeStudy, tmp_path: Path) -> None:
    info = study_factory("standard")
    bad = tmp_path / "nopix.zip"

    def strip(ds: pydicom.Dataset) -> None:
        del ds.PixelData

    rezip(info.zip_path, bad, lambda i, d: edit_dicom(d, strip) if i == 4 else d)
    with pytest.raises(InputError) as ei:
        _hu(bad)
    assert ei.value.code == "dicom_invalid"


def test_unsupported_transfer_syntax(study_factory: MakeStudy, tmp_path: Path) -> None:
    info = study_factory("jpeg2000")
    bad = tmp_path / "ts.zip"

    def relabel(i: int, d: bytes) -> bytes:
        # same-length swap of the JPEG 2000 UID for one no decoder knows
        assert b"1.2.840.10008.1.2.4.90" in d
        return d.replace(b"1.2.840.10008.1.2.4.90", b"1.2.840.10008.1.2.4.99", 1)

    rezip(info.zip_path, bad, relabel)
    with pytest.raises(InputError) as ei:
        _hu(bad)
    assert ei.value.code == "unsupported_transfer_syntax"


def test_deeply_nested_sequences_do_not_crash(study_factory: MakeStudy, tmp_path: Path) -> None:
    info = study_factory("standard")
    bad = tmp_path / "deep.zip"

    def nest(i: int, d: bytes) -> bytes:
        if i != 0:
            return d
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(d))
        inner = pydicom.Dataset()
        inner.CodeValue = "X"
        for _ in range(3000):
            outer = pydicom.Dataset()
            outer.ReferencedImageSequence = [inner]
            inner = outer
        ds.ReferencedImageSequence = [inner]
        buf = pydicom.filebase.DicomBytesIO()
        try:
            ds.save_as(buf)
        except RecursionError:
            return b"\0" * 128 + b"DICM" + b"\xff" * 64  # unwritable: garbage with a DICOM preamble
        return buf.getvalue()

    rezip(info.zip_path, bad, nest)
    with open_study(bad) as st:
        # the hostile file is skipped or rejected, never a crash; the rest still forms a series
        assert st.series
        rep = rank_series(st) if st.series[0].n_slices >= 20 else None
        assert rep is None or rep.selected.series.n_slices >= 20


def test_undecodable_header_elements_do_not_crash(study_factory: MakeStudy, tmp_path: Path) -> None:
    """An unknown VR raises only when pydicom decodes the element (found by the header fuzz test)."""
    info = study_factory("standard")
    with zipfile.ZipFile(info.zip_path) as zf:
        first = next(n for n in sorted(zf.namelist()) if not n.endswith("/"))
        name = str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(zf.read(first))).PatientName)
    bad = tmp_path / "vr.zip"
    tags = {
        b"\x10\x00\x10\x00PN": b"\x10\x00\x10\x00AN",  # PatientName
        b"\x08\x00\x90\x00PN": b"\x08\x00\x90\x00AN",  # ReferringPhysicianName
        b"\x20\x00\x0e\x00UI": b"\x20\x00\x0e\x00QQ",  # SeriesInstanceUID
        b"\x18\x00\x10\x12SH": b"\x18\x00\x10\x12ZZ",  # ConvolutionKernel
    }

    def mangle(i: int, d: bytes) -> bytes:
        for old, new in tags.items():
            assert d.count(old) == 1, old
            d = d.replace(old, new)
        return d

    rezip(info.zip_path, bad, mangle)
    with open_study(bad) as st:
        assert len(st.series) == 1 and st.series[0].series_uid == "unknown-series"
        # the undecodable PatientName still reaches the log scrubber, from its raw bytes
        assert len(name) >= 3 and name in st.phi_tokens
        vol = load_volume(rank_series(st).selected.series)
    with open_study(info.zip_path) as st:
        ref = load_volume(rank_series(st).selected.series)
    np.testing.assert_array_equal(vol.stored, ref.stored)  # the same volume as the intact study


@pytest.mark.parametrize("field", ["RescaleSlope", "Rows", "RowsMismatch"])
def test_absurd_header_values(study_factory: MakeStudy, tmp_path: Path, field: str) -> None:
    info = study_factory("standard")
    bad = tmp_path / f"absurd-{field}.zip"

    def poison(ds: pydicom.Dataset) -> None:
        if field == "RescaleSlope":
            ds.RescaleSlope = "NaN"
        elif field == "Rows":
            ds.Rows = ds.Columns = 60000
        else:
            ds.Rows = ds.Rows * 2  # pixel data too short for the declared size

    rezip(info.zip_path, bad, lambda i, d: edit_dicom(d, poison))
    with pytest.raises(InputError) as ei:
        _hu(bad)
    assert ei.value.code in {"too_few_slices", "no_usable_series", "dicom_invalid"}


def test_varying_rescale_converts_to_hu(tmp_path: Path) -> None:
    from ml.phantom import PhantomSpec, SeriesOptions, generate_phantom, write_series

    ph = generate_phantom(
        PhantomSpec(
            seed=1, label=0, rows=48, cols=48, pixel_spacing_mm=8.0, slice_spacing_mm=5.0, n_slices=24
        )
    )
    files = write_series(
        ph,
        tmp_path / "s",
        SeriesOptions(vary_intercept=True, rescale_slope=0.5, pixel_representation="int16"),
    )
    from ml.io import discover_series

    st = discover_series(files)
    vol = load_volume(st.series[0])
    assert vol.stored.dtype == np.float32 and vol.slope == 1.0 and vol.intercept == 0.0
    # slope 0.5 quantises HU to 0.5 steps; the written values are the phantom's
    np.testing.assert_allclose(vol.hu(), ph.hu.astype(np.float32), atol=0.5)


def test_mixed_reasons_give_no_usable_series(study_factory: MakeStudy, tmp_path: Path) -> None:
    merged = merge_zips(
        [study_factory("non_ct").zip_path, study_factory("few_slices", seed=4).zip_path], tmp_path / "m.zip"
    )
    with open_study(merged) as st, pytest.raises(InputError) as ei:
        rank_series(st)
    assert ei.value.code == "no_usable_series"
    assert "not_ct" in ei.value.detail and "too_few_slices" in ei.value.detail


def test_usable_series_wins_over_rejected_ones(study_factory: MakeStudy, tmp_path: Path) -> None:
    good = study_factory("standard", seed=8)
    merged = merge_zips(
        [study_factory("non_ct").zip_path, good.zip_path, study_factory("thick").zip_path], tmp_path / "m.zip"
    )
    with open_study(merged) as st:
        rep = rank_series(st)
    assert rep.selected.series.series_uid == good.primary_series_uid
    assert [q.usable for q in rep.series] == [True, False, False]


def test_derived_and_not_chest_warnings(study_factory: MakeStudy, tmp_path: Path) -> None:
    info = study_factory("standard")
    bad = tmp_path / "head.zip"

    def relabel(ds: pydicom.Dataset) -> None:
        ds.BodyPartExamined = "HEAD"
        ds.SeriesDescription = "BRAIN"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]

    rezip(info.zip_path, bad, lambda i, d: edit_dicom(d, relabel))
    with open_study(bad) as st:
        rep = rank_series(st)
    assert {"derived_images", "not_chest"} <= set(rep.selected.warning_codes)


def test_jpeg_baseline_8bit_decodes(study_factory: MakeStudy, tmp_path: Path) -> None:
    """Lossy JPEG baseline (8-bit, rescale slope 8) through the pylibjpeg/GDCM decoders."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    info = study_factory("standard")
    bad = tmp_path / "baseline.zip"

    def to_baseline(ds: pydicom.Dataset) -> None:
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        stored8 = np.clip(np.rint((hu + 1024.0) / 8.0), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(stored8).save(buf, format="JPEG", quality=95)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.RescaleSlope, ds.RescaleIntercept = 8, -1024
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"

    rezip(info.zip_path, bad, lambda i, d: edit_dicom(d, to_baseline))
    with open_study(bad) as st:
        series = rank_series(st).selected.series
        assert series.transfer_syntaxes == (str(JPEGBaseline8Bit),)
        vol = load_volume(series)
    ref = info.phantom.hu.astype(np.float32)
    ok = ref < 1000  # 8-bit storage clips bone above ~1016 HU
    err = np.abs(vol.hu() - ref)[ok]
    assert float(np.median(err)) <= 8.0 and float(np.percentile(err, 99)) <= 64.0
