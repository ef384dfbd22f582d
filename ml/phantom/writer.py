"""Writing a phantom as a DICOM series (one file per slice or one multi-frame object), a
localizer, and the volume a written series reads back as (without the files)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from ml.geometry import CTVolume, VolumeGeometry
from ml.phantom.encode import base_dataset, save_dataset, sop_class_for, stored_values, to_ds
from ml.phantom.generate import Phantom
from ml.phantom.options import TRANSFER_SYNTAX_UIDS, SeriesOptions, phantom_uid, series_uid_for, study_uid_for
from ml.phantom.spec import HU_MAX, HU_MIN


def _slice_normal(geom: VolumeGeometry) -> npt.NDArray[np.float64]:
    d = geom.direction_matrix
    n = np.cross(d[:, 0], d[:, 1])
    out: npt.NDArray[np.float64] = n / np.linalg.norm(n)
    return out


def write_series(phantom: Phantom, out_dir: str | Path, options: SeriesOptions | None = None) -> list[Path]:
    """Write ``phantom`` as one DICOM series into ``out_dir`` (created); returns the files written.

    Slice k of the arrays is placed at ``geometry.index_to_lps((0, 0, k))``;
    ImageOrientationPatient is the first two direction columns; PixelSpacing is
    [row pitch, column pitch] in mm. Deterministic in (phantom spec, options).
    """
    o = options or SeriesOptions()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geom = phantom.geometry
    seed = phantom.spec.seed
    ts = TRANSFER_SYNTAX_UIDS[o.transfer_syntax]
    study_uid = o.study_uid or study_uid_for(seed, o.uid_salt)
    series_uid = series_uid_for(seed, o)
    sop_class = sop_class_for(o.modality, o.multiframe)
    rng = np.random.default_rng([seed, 3, o.series_number])
    nz = geom.size[2]
    entries: list[tuple[int, int]] = []  # (slice index, copy number)
    for k in range(nz):
        if k in o.drop_slices:
            continue
        entries.append((k, 0))
        if k in o.duplicate_slices:
            entries.append((k, 1))
    if not entries:
        raise ValueError("no slice left to write")
    d = geom.direction_matrix
    iop = [*d[:, 0], *d[:, 1]]
    normal = _slice_normal(geom)
    pix_spacing = [geom.spacing_mm[1], geom.spacing_mm[0]]
    if o.image_type is not None:
        image_type = list(o.image_type)
    elif phantom.spec.orientation == "coronal":
        image_type = ["DERIVED", "SECONDARY", "REFORMATTED"]
    else:
        image_type = (
            ["ORIGINAL", "PRIMARY", "AXIAL"] if o.modality == "CT" else ["ORIGINAL", "PRIMARY", "OTHER"]
        )
    intercepts = [o.rescale_intercept - (100.0 * (k % 3) if o.vary_intercept else 0.0) for k in range(nz)]
    if o.multiframe:
        return [_write_multiframe(phantom, out, o, entries, study_uid, series_uid, sop_class, ts, intercepts)]

    n_files = len(entries)
    file_ord = rng.permutation(n_files) if o.shuffle else np.arange(n_files)
    inst = rng.permutation(n_files) + 1 if o.instance_numbers == "shuffled" else np.arange(1, n_files + 1)
    write_order = rng.permutation(n_files) if o.shuffle else np.arange(n_files)
    paths: list[Path] = []
    for e in write_order:
        k, copy = entries[int(e)]
        ds = base_dataset(phantom, o, sop_class, study_uid, series_uid)
        sop_uid = phantom_uid("sop", series_uid, str(k), str(copy))
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = image_type
        if o.instance_numbers != "absent":
            ds.InstanceNumber = int(inst[int(e)])
        ipp = geom.index_to_lps([0.0, 0.0, float(k)])
        ds.ImagePositionPatient = to_ds(ipp)
        ds.ImageOrientationPatient = to_ds(iop)
        ds.SliceLocation = to_ds(float(ipp @ normal) if not phantom.spec.gantry_tilt_deg else float(ipp[2]))
        ds.PixelSpacing = to_ds(pix_spacing)
        img = phantom.hu[k]
        if k in o.mixed_size_slices:
            img = img[: max(1, img.shape[0] - o.crop_px), : max(1, img.shape[1] - o.crop_px)]
        ds.Rows, ds.Columns = int(img.shape[0]), int(img.shape[1])
        if o.modality == "MR":
            arr = stored_values(img, 1.0, o.rescale_intercept, o)
        else:
            ds.RescaleIntercept = to_ds(intercepts[k])
            ds.RescaleSlope = to_ds(o.rescale_slope)
            ds.RescaleType = "HU" if o.modality == "CT" else "US"
            arr = stored_values(img, o.rescale_slope, intercepts[k], o)
        ds.WindowCenter = to_ds(o.window_center)
        ds.WindowWidth = to_ds(o.window_width)
        path = _file_path(
            out, o, sop_uid, n=int(file_ord[int(e)]) + 1, instance=int(inst[int(e)]), slice_index=k
        )
        save_dataset(ds, path, ts, arr)
        paths.append(path)
    return paths


def _file_path(out: Path, o: SeriesOptions, sop_uid: str, *, n: int, instance: int, slice_index: int) -> Path:
    """Where the object ``sop_uid`` goes: ``o.filename_pattern`` under ``out`` (parents created)."""
    name = o.filename_pattern.format(
        n=n,
        instance=instance,
        slice=slice_index,
        series=o.series_number,
        patient_id=o.identifiers.patient_id,
        sop=sop_uid,
        hash=hashlib.sha1(sop_uid.encode()).hexdigest()[:12],
    )
    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _item(**kw: Any) -> Dataset:
    it = Dataset()
    for k, v in kw.items():
        setattr(it, k, v)
    return it


def _write_multiframe(
    ph: Phantom,
    out: Path,
    o: SeriesOptions,
    entries: list[tuple[int, int]],
    study_uid: str,
    series_uid: str,
    sop_class: str,
    ts: str,
    intercepts: list[float],
) -> Path:
    geom = ph.geometry
    if o.mixed_size_slices:
        raise ValueError("a multi-frame object cannot hold frames of different sizes")
    ds = base_dataset(ph, o, sop_class, study_uid, series_uid)
    sop_uid = phantom_uid("sop-mf", series_uid)
    ds.SOPInstanceUID = sop_uid
    it = list(o.image_type) if o.image_type else ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    if len(it) < 4:
        it = [*it, "NONE"][:4] if len(it) == 3 else it
    ds.ImageType = it
    ds.InstanceNumber = 1
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.AcquisitionDateTime = "20240115093100"
    ds.NumberOfFrames = len(entries)
    ds.Rows, ds.Columns = geom.size[1], geom.size[0]
    d = geom.direction_matrix
    thick = ph.slice_thickness_mm
    spacing_between = abs(float(geom.spacing_mm[2] * (d[:, 2] @ _slice_normal(geom))))
    shared = _item(
        PixelMeasuresSequence=DicomSequence(
            [
                _item(
                    PixelSpacing=to_ds([geom.spacing_mm[1], geom.spacing_mm[0]]),
                    SliceThickness=to_ds(thick),
                    SpacingBetweenSlices=to_ds(spacing_between),
                )
            ]
        ),
        PlaneOrientationSequence=DicomSequence([_item(ImageOrientationPatient=to_ds([*d[:, 0], *d[:, 1]]))]),
        CTImageFrameTypeSequence=DicomSequence([_item(FrameType=it)]),
        FrameVOILUTSequence=DicomSequence(
            [_item(WindowCenter=to_ds(o.window_center), WindowWidth=to_ds(o.window_width))]
        ),
    )
    if not o.vary_intercept:
        shared.PixelValueTransformationSequence = DicomSequence(
            [
                _item(
                    RescaleIntercept=to_ds(o.rescale_intercept),
                    RescaleSlope=to_ds(o.rescale_slope),
                    RescaleType="HU",
                )
            ]
        )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    dim_uid = phantom_uid("dim-org", series_uid)
    ds.DimensionOrganizationSequence = DicomSequence([_item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionIndexSequence = DicomSequence(
        [
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00209056,
                FunctionalGroupPointer=0x00209111,
                DimensionDescriptionLabel="Stack ID",
            ),
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00209057,
                FunctionalGroupPointer=0x00209111,
                DimensionDescriptionLabel="In-Stack Position Number",
            ),
        ]
    )
    per_frame = []
    frames = []
    for i, (k, _copy) in enumerate(entries):
        ipp = geom.index_to_lps([0.0, 0.0, float(k)])
        item = _item(
            PlanePositionSequence=DicomSequence([_item(ImagePositionPatient=to_ds(ipp))]),
            FrameContentSequence=DicomSequence(
                [
                    _item(
                        FrameAcquisitionNumber=1,
                        StackID="1",
                        InStackPositionNumber=i + 1,
                        DimensionIndexValues=[1, i + 1],
                    )
                ]
            ),
        )
        if o.vary_intercept:
            item.PixelValueTransformationSequence = DicomSequence(
                [
                    _item(
                        RescaleIntercept=to_ds(intercepts[k]),
                        RescaleSlope=to_ds(o.rescale_slope),
                        RescaleType="HU",
                    )
                ]
            )
        per_frame.append(item)
        frames.append(stored_values(ph.hu[k], o.rescale_slope, intercepts[k], o))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    path = _file_path(out, o, sop_uid, n=1, instance=1, slice_index=0)
    save_dataset(ds, path, ts, np.stack(frames))
    return path


def write_localizer(phantom: Phantom, out_dir: str | Path, options: SeriesOptions | None = None) -> Path:
    """Write a single-image localizer (scout) of ``phantom``: an A-P projection in its own series.

    The image is the mean HU along the patient's y axis (rows = superior → inferior,
    columns = x), ImageType ORIGINAL\\PRIMARY\\LOCALIZER, on the coronal plane
    through the body centre. Defaults: series number 99, description "TOPOGRAM".
    """
    o = options or SeriesOptions(series_number=99, series_description="TOPOGRAM")
    o = replace(o, multiframe=False, drop_slices=(), duplicate_slices=(), mixed_size_slices=(), shuffle=False)
    geom = phantom.geometry
    d = geom.direction_matrix
    hu = phantom.hu.astype(np.float32)
    if phantom.spec.orientation == "coronal":
        proj = hu.mean(axis=0)  # rows already superior → inferior
        row_sp, col_sp = geom.spacing_mm[1], geom.spacing_mm[0]
        ipp = geom.index_to_lps([0.0, 0.0, (geom.size[2] - 1) / 2.0])
    else:
        proj = hu.mean(axis=1)[::-1]  # (z, x), flipped so that row 0 is superior
        row_sp, col_sp = geom.spacing_mm[2], geom.spacing_mm[0]
        ipp = geom.index_to_lps([0.0, (geom.size[1] - 1) / 2.0, float(geom.size[2] - 1)])
    img = np.clip(np.rint(proj), HU_MIN, HU_MAX).astype(np.int16)
    scout_geom = VolumeGeometry(
        size=(img.shape[1], img.shape[0], 1),
        spacing_mm=(col_sp, row_sp, 1.0),
        origin_mm=(float(ipp[0]), float(ipp[1]), float(ipp[2])),
        direction=(float(d[0, 0]), 0.0, 0.0, float(d[1, 0]), 0.0, 1.0, float(d[2, 0]), -1.0, 0.0),
    )
    scout = replace(
        phantom,
        hu=img[None],
        mask=np.zeros((1, *img.shape), dtype=np.uint8),
        lung_mask=np.zeros((1, *img.shape), dtype=bool),
        geometry=scout_geom,
        spec=replace(phantom.spec, orientation="axial", gantry_tilt_deg=0.0),
    )
    it = o.image_type or ("ORIGINAL", "PRIMARY", "LOCALIZER")
    return write_series(scout, out_dir, replace(o, image_type=it))[0]


def phantom_volume(phantom: Phantom, options: SeriesOptions | None = None) -> CTVolume:
    """The volume ``load_volume`` reads back from ``write_series(phantom, ..., options)``.

    Stored values, RescaleSlope/Intercept, grid and series UID are the ones the DICOM
    files carry, without writing or parsing them (about 3 s of a 128² study's 4 s).
    Only plain series qualify: one rescale for all slices, none dropped, duplicated,
    cropped or in another modality; anything else raises ``ValueError``.
    """
    o = options or SeriesOptions()
    if o.vary_intercept or o.drop_slices or o.duplicate_slices or o.mixed_size_slices or o.modality != "CT":
        raise ValueError("phantom_volume needs a plain CT series (write it with write_series instead)")
    stored = stored_values(phantom.hu, o.rescale_slope, o.rescale_intercept, o)
    return CTVolume(
        stored=stored,
        slope=float(o.rescale_slope),
        intercept=float(o.rescale_intercept),
        geometry=phantom.geometry,
        series_uid=series_uid_for(phantom.spec.seed, o),
    )
