"""Tests of the synthetic chest-CT phantoms and their DICOM/ZIP/corpus writers."""

from __future__ import annotations

import csv
import zipfile
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from ml.phantom import (
    LESION_KINDS,
    PHI_IDENTIFIERS,
    TRANSFER_SYNTAX_UIDS,
    Phantom,
    PhantomSpec,
    SeriesOptions,
    generate_phantom,
    make_study,
    write_corpus,
    write_localizer,
    write_series,
    write_study_zip,
)

SMALL = {"rows": 64, "cols": 64, "pixel_spacing_mm": 6.0, "slice_spacing_mm": 5.0}


@pytest.fixture(scope="module")
def sick() -> Phantom:
    return generate_phantom(PhantomSpec(seed=11, label=1, kinds=LESION_KINDS, difficulty=(0.6, 1.0), **SMALL))


@pytest.fixture(scope="module")
def normal() -> Phantom:
    return generate_phantom(PhantomSpec(seed=12, label=0, **SMALL))


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _read_dir(files: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f) for f in files]


# ----------------------------------------------------------------------------- generation


def test_determinism_and_seed_sensitivity() -> None:
    a = generate_phantom(PhantomSpec(seed=3, **SMALL))
    b = generate_phantom(PhantomSpec(seed=3, **SMALL))
    c = generate_phantom(PhantomSpec(seed=4, **SMALL))
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.mask, b.mask)
    assert a.geometry == b.geometry and a.lesions == b.lesions
    assert a.hu.dtype == np.int16 and a.mask.dtype == np.uint8
    assert a.hu.shape == a.geometry.shape_zyx
    assert c.hu.shape != a.hu.shape or not np.array_equal(a.hu, c.hu)


def test_default_grid_is_plausible() -> None:
    spec = PhantomSpec(seed=8, rows=32, cols=32)
    ph = generate_phantom(spec)
    sx, sy, sz = ph.geometry.spacing_mm
    assert 0.6 <= sx <= 0.9 and sx == sy
    assert sz in (0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
    assert 275 <= ph.geometry.extent_mm()[2] <= 325


def test_tissue_hu_ranges(sick: Phantom, normal: Phantom) -> None:
    for ph in (sick, normal):
        hu = ph.hu
        lung = ph.lung_mask & (ph.mask == 0)
        assert lung.mean() > 0.05
        assert -900 < hu[lung].mean() < -790
        # air outside the body is at or below -1000 HU, so "HU > -1000" isolates objects
        corners = hu[:, :3, :3]
        assert corners.max() <= -1000
        assert (hu <= -1000).mean() > 0.2
        # bones exist (spine, ribs) and soft tissue dominates the body
        assert (hu > 300).sum() > 50
        body = (hu > -200) & (hu < 100)
        assert body.mean() > 0.15
    assert not normal.mask.any() and normal.lesions == [] and normal.label == 0


def test_table_is_separated_from_body_by_air(normal: Phantom) -> None:
    # the middle column of the middle slice, from posterior end upwards: table, air gap, body
    k = normal.hu.shape[0] // 2
    col = normal.hu[k, :, normal.hu.shape[2] // 2]
    dense = col > -500
    idx = np.flatnonzero(dense)
    runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)
    assert len(runs) >= 2, "expected body and table as separate objects"
    assert 100 < float(col[runs[-1]].mean()) < 300  # the table slab, posterior-most


def test_lesions_inside_lungs_with_kind_hu(sick: Phantom) -> None:
    assert sick.label == 1 and {les.kind for les in sick.lesions} == set(LESION_KINDS)
    assert set(np.unique(sick.mask)) - {0} <= {les.mask_value for les in sick.lesions}
    assert not (sick.mask.astype(bool) & ~sick.lung_mask).any()
    expected = {"ggo": (-760, -250), "consolidation": (-300, 80), "nodule": (-300, 80), "effusion": (-40, 60)}
    for les in sick.lesions:
        sel = sick.mask == les.mask_value
        assert sel.sum() > 0, les
        lo, hi = expected[les.kind]
        assert lo < sick.hu[sel].mean() < hi, (les.kind, sick.hu[sel].mean())
        # recorded centre lies within the mask's bounding box (LPS mm)
        zyx = np.argwhere(sel)
        pts = sick.geometry.index_to_lps(zyx[:, ::-1].astype(float))
        lo_b, hi_b = pts.min(axis=0) - 6.0, pts.max(axis=0) + 6.0
        assert np.all(np.asarray(les.centre_lps_mm) >= lo_b) and np.all(np.asarray(les.centre_lps_mm) <= hi_b)
    effusion = next(les for les in sick.lesions if les.kind == "effusion")
    eff = np.argwhere(sick.mask == effusion.mask_value)
    lung_idx = np.argwhere(sick.lung_mask)
    assert eff[:, 1].mean() > lung_idx[:, 1].mean()  # dependent: posterior (larger y rows)


def test_nodule_size_follows_difficulty() -> None:
    small = generate_phantom(
        PhantomSpec(seed=5, kinds=("nodule",), n_lesions=1, difficulty=(0.0, 0.0), **SMALL)
    )
    big = generate_phantom(
        PhantomSpec(seed=5, kinds=("nodule",), n_lesions=1, difficulty=(1.0, 1.0), **SMALL)
    )
    assert 3.0 < max(small.lesions[0].size_mm) < 7.0
    assert 25.0 < max(big.lesions[0].size_mm) < 36.0


def test_same_seed_other_grid_is_same_patient() -> None:
    a = generate_phantom(PhantomSpec(seed=21, **SMALL))
    b = generate_phantom(PhantomSpec(seed=21, **{**SMALL, "slice_spacing_mm": 2.0}))
    assert a.lesions == b.lesions
    assert a.geometry.spacing_mm[2] == 5.0 and b.geometry.spacing_mm[2] == 2.0


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        PhantomSpec(label=0, kinds=("nodule",))
    with pytest.raises(ValueError):
        PhantomSpec(kinds=("tumour",))
    with pytest.raises(ValueError):
        PhantomSpec(difficulty=(0.8, 0.2))


# ----------------------------------------------------------------------------- DICOM


def test_series_geometry_roundtrip(sick: Phantom, tmp_path: Path) -> None:
    files = write_series(sick, tmp_path)
    dss = sorted(_read_dir(files), key=lambda d: int(d.InstanceNumber))
    assert len(dss) == sick.hu.shape[0]
    g = sick.geometry
    s0 = dss[0]
    assert s0.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and s0.Modality == "CT"
    assert list(s0.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert s0.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert [float(v) for v in s0.PixelSpacing] == [g.spacing_mm[1], g.spacing_mm[0]]
    assert np.allclose([float(v) for v in s0.ImageOrientationPatient], [1, 0, 0, 0, 1, 0])
    assert float(s0.RescaleIntercept) == -1024 and s0.PixelRepresentation == 0
    assert s0.BodyPartExamined == "CHEST" and float(s0.SliceThickness) == sick.slice_thickness_mm
    ipps = np.array([[float(v) for v in d.ImagePositionPatient] for d in dss])
    expected = g.index_to_lps(np.stack([np.zeros(len(dss)), np.zeros(len(dss)), np.arange(len(dss))], 1))
    assert np.allclose(ipps, expected, atol=1e-3)
    assert np.allclose([float(d.SliceLocation) for d in dss], expected[:, 2], atol=1e-3)
    vol = np.stack([_hu(d) for d in dss])
    assert np.array_equal(vol, sick.hu)
    assert len({d.SOPInstanceUID for d in dss}) == len(dss)
    assert len({(d.StudyInstanceUID, d.SeriesInstanceUID, d.FrameOfReferenceUID) for d in dss}) == 1


def test_uids_deterministic(normal: Phantom, tmp_path: Path) -> None:
    a = _read_dir(write_series(normal, tmp_path / "a"))
    b = _read_dir(write_series(normal, tmp_path / "b"))
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    other = generate_phantom(replace(normal.spec, seed=13))
    c = _read_dir(write_series(other, tmp_path / "c"))
    assert a[0].StudyInstanceUID != c[0].StudyInstanceUID
    assert a[0].SeriesInstanceUID != c[0].SeriesInstanceUID


@pytest.mark.parametrize("ts", list(TRANSFER_SYNTAX_UIDS))
def test_transfer_syntax_roundtrip_bit_exact(ts: str, tmp_path: Path) -> None:
    ph = generate_phantom(PhantomSpec(seed=2, n_slices=4, **SMALL))
    files = write_series(ph, tmp_path, SeriesOptions(transfer_syntax=ts))  # type: ignore[arg-type]
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAX_UIDS[ts]
        k = int(ds.InstanceNumber) - 1
        assert np.array_equal(ds.pixel_array, (ph.hu[k].astype(np.int32) + 1024).astype(np.uint16))


def test_multiframe_enhanced_ct(sick: Phantom, tmp_path: Path) -> None:
    (f,) = write_series(sick, tmp_path, SeriesOptions(multiframe=True, transfer_syntax="jpeg_lossless"))
    ds = pydicom.dcmread(f)
    n = sick.hu.shape[0]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.1" and int(ds.NumberOfFrames) == n
    shared = ds.SharedFunctionalGroupsSequence[0]
    pm = shared.PixelMeasuresSequence[0]
    assert float(pm.SpacingBetweenSlices) == pytest.approx(sick.geometry.spacing_mm[2])
    assert float(shared.PixelValueTransformationSequence[0].RescaleIntercept) == -1024
    assert len(shared.PlaneOrientationSequence[0].ImageOrientationPatient) == 6
    pos = np.array(
        [
            [float(v) for v in it.PlanePositionSequence[0].ImagePositionPatient]
            for it in ds.PerFrameFunctionalGroupsSequence
        ]
    )
    expected = sick.geometry.index_to_lps(np.stack([np.zeros(n), np.zeros(n), np.arange(n)], 1))
    assert np.allclose(pos, expected, atol=1e-3)
    assert np.array_equal(ds.pixel_array.astype(np.int32) - 1024, sick.hu)


def test_shuffled_names_and_instance_numbers(normal: Phantom, tmp_path: Path) -> None:
    files = write_series(normal, tmp_path, SeriesOptions(shuffle=True, instance_numbers="shuffled"))
    dss = [pydicom.dcmread(f) for f in sorted(files)]
    z_by_name = [float(d.ImagePositionPatient[2]) for d in dss]
    assert z_by_name != sorted(z_by_name) and z_by_name != sorted(z_by_name, reverse=True)
    inst = [int(d.InstanceNumber) for d in sorted(dss, key=lambda d: float(d.ImagePositionPatient[2]))]
    assert sorted(inst) == list(range(1, len(dss) + 1)) and inst != sorted(inst)
    absent = write_series(normal, tmp_path / "absent", SeriesOptions(instance_numbers="absent"))
    assert "InstanceNumber" not in pydicom.dcmread(absent[0])


def test_gantry_tilt(tmp_path: Path) -> None:
    ph = generate_phantom(PhantomSpec(seed=9, gantry_tilt_deg=20.0, n_slices=10, **SMALL))
    dss = sorted(_read_dir(write_series(ph, tmp_path)), key=lambda d: int(d.InstanceNumber))
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    t = np.radians(20.0)
    assert np.allclose(iop, [1, 0, 0, 0, np.cos(t), np.sin(t)], atol=1e-6)
    ipp = np.array([[float(v) for v in d.ImagePositionPatient] for d in dss])
    step = np.diff(ipp, axis=0)
    assert np.allclose(step[:, :2], 0, atol=1e-4) and np.allclose(step[:, 2], 5.0, atol=1e-4)
    assert float(dss[0].GantryDetectorTilt) == 20.0


def test_missing_duplicate_and_mixed_sizes(normal: Phantom, tmp_path: Path) -> None:
    n = normal.hu.shape[0]
    miss = _read_dir(write_series(normal, tmp_path / "m", SeriesOptions(drop_slices=(n // 2,))))
    assert len(miss) == n - 1
    z = np.sort([float(d.ImagePositionPatient[2]) for d in miss])
    assert np.isclose(np.diff(z).max(), 10.0) and np.isclose(np.diff(z).min(), 5.0)
    dup = _read_dir(write_series(normal, tmp_path / "d", SeriesOptions(duplicate_slices=(3,))))
    assert len(dup) == n + 1 and len({d.SOPInstanceUID for d in dup}) == n + 1
    assert len({tuple(d.ImagePositionPatient) for d in dup}) == n
    mixed = _read_dir(
        write_series(normal, tmp_path / "x", SeriesOptions(mixed_size_slices=(1, 4), crop_px=8))
    )
    sizes = {(d.Rows, d.Columns) for d in mixed}
    assert sizes == {(64, 64), (56, 56)}


def test_rescale_variants(normal: Phantom, tmp_path: Path) -> None:
    opts = SeriesOptions(rescale_slope=0.5, vary_intercept=True)
    dss = _read_dir(write_series(normal, tmp_path / "s", opts))
    assert {float(d.RescaleSlope) for d in dss} == {0.5}
    assert len({float(d.RescaleIntercept) for d in dss}) == 3
    for d in dss:
        assert np.array_equal(_hu(d), normal.hu[int(d.InstanceNumber) - 1])
    signed = _read_dir(
        write_series(normal, tmp_path / "i", SeriesOptions(pixel_representation="int16", rescale_intercept=0))
    )
    assert signed[0].PixelRepresentation == 1 and signed[0].pixel_array.dtype == np.int16
    assert np.array_equal(_hu(signed[0]), normal.hu[int(signed[0].InstanceNumber) - 1])


def test_non_ct_coronal_and_localizer(tmp_path: Path) -> None:
    ph = generate_phantom(PhantomSpec(seed=4, n_slices=6, **SMALL))
    mr = pydicom.dcmread(write_series(ph, tmp_path / "mr", SeriesOptions(modality="MR"))[0])
    assert mr.Modality == "MR" and mr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"
    cor = generate_phantom(PhantomSpec(seed=4, orientation="coronal", n_slices=6, **SMALL))
    d = pydicom.dcmread(write_series(cor, tmp_path / "cor")[0])
    assert np.allclose([float(v) for v in d.ImageOrientationPatient], [1, 0, 0, 0, 0, -1])
    scout = pydicom.dcmread(write_localizer(ph, tmp_path / "scout"))
    assert list(scout.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert scout.SeriesInstanceUID != mr.SeriesInstanceUID
    assert scout.Rows == ph.hu.shape[0] and scout.Columns == ph.hu.shape[2]


def test_fake_identifiers_in_tags_and_names(tmp_path: Path) -> None:
    info = make_study(tmp_path / "phi.zip", seed=7, variant="phi")
    ids = PHI_IDENTIFIERS
    with zipfile.ZipFile(info.zip_path) as zf:
        names = zf.namelist()
        assert all(ids.patient_id in n for n in names)
        ds = pydicom.dcmread(zf.open(names[0]))
    assert ds.PatientName == ids.patient_name and ds.PatientID == ids.patient_id
    assert ds.PatientBirthDate == ids.birth_date and ds.AccessionNumber == ids.accession_number
    assert info.identifiers == ids


# ----------------------------------------------------------------------------- ZIP + corpus


def test_make_study_variants(tmp_path: Path) -> None:
    expectations = {
        "standard": 1,
        "multi_series": 3,
        "few_slices": 1,
        "thick": 1,
        "jpeg_ls": 1,
    }
    for variant, n_series in expectations.items():
        info = make_study(tmp_path / f"{variant}.zip", seed=1, variant=variant, label=1)
        with zipfile.ZipFile(info.zip_path) as zf:
            dss = [pydicom.dcmread(zf.open(n), stop_before_pixels=True) for n in zf.namelist()]
        uids = {d.SeriesInstanceUID for d in dss}
        assert len(uids) == n_series == len(info.series), variant
        assert {d.StudyInstanceUID for d in dss} == {info.study_uid}
        assert info.primary_series_uid in uids
        assert info.label == 1 and info.lesions
        if variant == "few_slices":
            assert len(dss) < 20
        if variant == "thick":
            assert float(dss[0].SliceThickness) > 5.0
        if variant == "multi_series":
            scouts = [d for d in dss if "LOCALIZER" in d.ImageType]
            assert len(scouts) == 1
            thick = {float(d.SliceThickness) for d in dss if "LOCALIZER" not in d.ImageType}
            assert thick == {1.0, 5.0}


def test_write_study_zip_junk(normal: Phantom, tmp_path: Path) -> None:
    files = write_series(normal, tmp_path / "S1", SeriesOptions())
    zp = write_study_zip(
        tmp_path / "x.zip", [tmp_path / "S1"], layout="flat", macosx_junk=True, dicomdir=True, readme=True
    )
    with zipfile.ZipFile(zp) as zf:
        names = zf.namelist()
    assert any(n.startswith("__MACOSX/") for n in names)
    assert "DICOMDIR" in names and "README.txt" in names
    assert sum(1 for n in names if n.endswith(".dcm") and "/" not in n) == len(files)


def test_write_corpus(tmp_path: Path) -> None:
    csv_path = write_corpus(
        tmp_path / "c", 4, seed=3, rows=48, cols=48, pixel_spacing_mm=8.0, slice_spacing_mm=6.0
    )
    rows = list(csv.DictReader(csv_path.open()))
    assert [int(r["label"]) for r in rows].count(1) == 2 and len(rows) == 4
    for r in rows:
        zp = csv_path.parent / r["zip"]
        assert zp.exists()
        mask = nib.load(csv_path.parent / "masks" / f"{r['study_id']}.nii.gz")
        data = np.asarray(mask.dataobj)
        assert (data.max() > 0) == (r["label"] == "1")
        assert bool(r["lesion_kinds"]) == (r["label"] == "1")
        with zipfile.ZipFile(zp) as zf:
            dss = sorted(
                (pydicom.dcmread(zf.open(n), stop_before_pixels=True) for n in zf.namelist()),
                key=lambda d: float(d.ImagePositionPatient[2]),
            )
        # NIfTI affine (RAS) = LPS→RAS flip of the DICOM geometry
        ipp0 = np.array([float(v) for v in dss[0].ImagePositionPatient])
        ipp1 = np.array([float(v) for v in dss[1].ImagePositionPatient])
        row, col = np.array([float(v) for v in dss[0].ImageOrientationPatient]).reshape(2, 3)
        ps_r, ps_c = (float(v) for v in dss[0].PixelSpacing)
        lps = np.eye(4)
        lps[:3, 0] = row * ps_c
        lps[:3, 1] = col * ps_r
        lps[:3, 2] = ipp1 - ipp0
        lps[:3, 3] = ipp0
        ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
        assert np.allclose(mask.affine, ras, atol=1e-3)
        assert data.shape == (dss[0].Columns, dss[0].Rows, len(dss))
