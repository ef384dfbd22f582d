"""Series discovery from DICOM headers only (``stop_before_pixels``).

Files are grouped by SeriesInstanceUID, each image's plane geometry and rescale
are checked, and each series is sorted along its slice normal. Pixels are decoded
later by :func:`ml.io.decode.load_volume`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ml.errors import DicomError
from ml.io.flatheader import FlatHeader, read_flat_header
from ml.io.headers import (
    Header,
    functional_item,
    header_int,
    header_str,
    header_value,
    native_pixel_span,
    phi_tokens,
    read_header,
    read_header_at,
    to_float,
    to_floats,
)
from ml.io.members import MemberStore
from ml.io.series import SeriesInfo, SliceRef, Study

__all__ = ["discover_series"]

_MAX_PIXELS_PER_SLICE = 4096 * 4096
#: ImageOrientationPatient cosines: |norm - 1| and |row · column| allowed (real headers round to ~1e-6)
_COSINE_TOLERANCE = 0.01


def _check_pixel_header(ds: Header, idx: int) -> tuple[int, int]:
    rows = header_int(ds, "Rows", 0)
    cols = header_int(ds, "Columns", 0)
    if rows <= 0 or cols <= 0 or rows * cols > _MAX_PIXELS_PER_SLICE:
        raise DicomError("dicom_invalid", f"image #{idx} has absurd Rows/Columns ({rows}×{cols})")
    spp = header_int(ds, "SamplesPerPixel", 1)
    bits = header_int(ds, "BitsAllocated", 16)
    if spp != 1 or bits not in (8, 16, 32):
        raise DicomError("dicom_invalid", f"image #{idx} is not a single-channel 8/16/32-bit image")
    return rows, cols


def _slices_of(
    ds: Header,
    path: Path,
    idx: int,
    store: MemberStore | None = None,
    native: tuple[int, str] | None = None,
) -> list[SliceRef]:
    """SliceRefs of one file: one for classic images, one per frame for multi-frame objects."""
    rows, cols = _check_pixel_header(ds, idx)
    nframes = header_int(ds, "NumberOfFrames", 1)
    inst_n = header_int(ds, "InstanceNumber", None)
    sop_uid = header_str(ds, "SOPInstanceUID")[:64]

    def ref(
        frame: int | None, plane: Header, orientation: Header, measures: Header, values: Header
    ) -> SliceRef | None:
        """The slice from the items holding its position, orientation, pixel measures and rescale."""
        pos_v, ori_v = plane.get("ImagePositionPatient"), orientation.get("ImageOrientationPatient")
        ps_v, slope = measures.get("PixelSpacing"), values.get("RescaleSlope", 1.0)
        icpt, th = values.get("RescaleIntercept", 0.0), measures.get("SliceThickness")
        pos, ori, ps = to_floats(pos_v, 3), to_floats(ori_v, 6), to_floats(ps_v, 2)
        if pos is None or ori is None or ps is None:
            return None
        _check_plane(ori, ps, idx)
        return SliceRef(
            path,
            frame,
            (pos[0], pos[1], pos[2]),
            inst_n,
            _rescale(to_float(slope), idx),
            _icpt(to_float(icpt), idx),
            rows,
            cols,
            (ps[0], ps[1]),
            ori,
            to_float(th),
            sop_uid,
            store,
            native if frame is None else None,
        )

    if "PerFrameFunctionalGroupsSequence" not in ds and nframes == 1:
        r = ref(None, ds, ds, ds, ds)
        return [] if r is None else [r]  # no plane geometry: not part of a volume (e.g. a secondary capture)
    assert isinstance(ds, Dataset)  # the fast reader leaves multi-frame objects to pydicom
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    out: list[SliceRef] = []
    for k in range(nframes):
        pf = per[k] if k < len(per) else None
        r = ref(
            k,
            functional_item(ds, pf, "PlanePositionSequence") or Dataset(),
            functional_item(ds, pf, "PlaneOrientationSequence") or Dataset(),
            functional_item(ds, pf, "PixelMeasuresSequence") or Dataset(),
            functional_item(ds, pf, "PixelValueTransformationSequence") or ds,
        )
        if r is None:
            raise DicomError("dicom_invalid", f"multi-frame image #{idx} frame {k} lacks plane geometry")
        out.append(r)
    return out


def _check_plane(ori: tuple[float, ...], ps: tuple[float, ...], idx: int) -> None:
    """Refuse impossible plane geometry (DICOM requires unit, orthogonal cosines and positive spacing)."""
    if min(ps) <= 0:
        raise DicomError("dicom_invalid", f"image #{idx} has a non-positive PixelSpacing")
    r, c = np.asarray(ori[:3]), np.asarray(ori[3:])
    norms_ok = abs(float(np.linalg.norm(r)) - 1.0) <= _COSINE_TOLERANCE and (
        abs(float(np.linalg.norm(c)) - 1.0) <= _COSINE_TOLERANCE
    )
    if not norms_ok or abs(float(r @ c)) > _COSINE_TOLERANCE:
        raise DicomError("dicom_invalid", f"image #{idx} has non-orthonormal ImageOrientationPatient")


def _rescale(slope: float | None, idx: int) -> float:
    if slope is None or slope == 0 or abs(slope) > 1e4:
        raise DicomError("dicom_invalid", f"image #{idx} has an invalid RescaleSlope")
    return slope


def _icpt(icpt: float | None, idx: int) -> float:
    if icpt is None or abs(icpt) > 1e6:
        raise DicomError("dicom_invalid", f"image #{idx} has an invalid RescaleIntercept")
    return icpt


def discover_series(files: Sequence[Path], store: MemberStore | None = None) -> Study:
    """Group DICOM files into series and sort each series along its slice normal.

    ``store``: the files are members read into memory (:func:`ml.io.members.read_members`),
    ``files`` their names in it.

    Non-DICOM files are skipped and counted. Raises ``no_dicom`` when nothing
    readable is found.
    """
    groups: dict[str, list[tuple[Header, Path, int, tuple[int, str] | None]]] = defaultdict(list)
    skipped: Counter[str] = Counter()
    phi: set[str] = set()
    phi_seen: dict[tuple[Any, ...], set[str]] = {}
    for idx, p in enumerate(files):
        native = None
        ds: Header | None
        if store is None:
            ds = read_header(p)
        else:
            data = store.get(p)
            flat = read_flat_header(data)  # the plain case, fast; anything else through pydicom
            ds, stop = (flat, flat.pixel_offset) if flat is not None else read_header_at(data)
            native = None if ds is None else native_pixel_span(ds, data, stop)
        if ds is None:
            skipped["not_dicom"] += 1
            continue
        if "Rows" not in ds and "NumberOfFrames" not in ds:
            skipped["no_image"] += 1
            continue
        phi |= _phi_tokens(ds, phi_seen)
        uid = header_str(ds, "SeriesInstanceUID") or "unknown-series"
        groups[uid].append((ds, p, idx, native))
    if not groups:
        raise DicomError("no_dicom", "the archive contains no DICOM image")
    series: list[SeriesInfo] = []
    for uid, items in groups.items():
        series.append(_build_series(uid, items, skipped, store))
    if skipped["invalid_header"] and not any(s.slices for s in series):
        # every image was refused for its header values: say so, not 'too few slices'
        raise DicomError(
            "dicom_invalid", f"no image has valid header values ({skipped['invalid_header']} invalid)"
        )
    series.sort(key=lambda s: (-s.n_slices, s.series_uid))
    return Study(series=series, skipped=skipped, files=len(files), phi_tokens=frozenset(phi))


def _phi_tokens(ds: Header, cache: dict[tuple[Any, ...], set[str]]) -> set[str]:
    """The identifier tokens of one file (the fast reader's decoded once per distinct raw identifiers)."""
    if not isinstance(ds, FlatHeader):
        return phi_tokens(ds, cache)
    key = ds.phi_key
    tokens = cache.get(key)
    if tokens is None:
        tokens = cache[key] = phi_tokens(ds.phi_dataset(), cache)
    return tokens


def _build_series(
    uid: str,
    items: list[tuple[Header, Path, int, tuple[int, str] | None]],
    skipped: Counter[str],
    store: MemberStore | None,
) -> SeriesInfo:
    ds0 = items[0][0]
    slices: list[SliceRef] = []
    issues: list[str] = []
    tsyntaxes: set[str] = set()
    multiframe = False
    tilt_tag = 0.0
    for ds, p, idx, native in items:
        try:
            refs = _slices_of(ds, p, idx, store, native)
        except DicomError as e:
            issues.append(e.code)
            skipped["invalid_header"] += 1
            continue
        except Exception:  # hostile headers: one bad file never breaks discovery
            issues.append("dicom_invalid")
            skipped["invalid_header"] += 1
            continue
        if not refs:
            skipped["no_geometry"] += 1
            continue
        multiframe = multiframe or refs[0].frame is not None
        slices.extend(refs)
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if ts is not None:
            tsyntaxes.add(str(ts))
        tilt_tag = max(tilt_tag, abs(to_float(header_value(ds, "GantryDetectorTilt"), 0.0) or 0.0))
    # consistency of in-plane geometry
    keys = Counter(
        (
            s.rows,
            s.columns,
            tuple(round(v, 4) for v in s.pixel_spacing_mm),
            tuple(round(v, 3) for v in s.orientation),
        )
        for s in slices
    )
    if len(keys) > 1:
        issues.append("mixed_image_sizes")
        main_key = keys.most_common(1)[0][0]
        slices = [
            s
            for s in slices
            if (
                s.rows,
                s.columns,
                tuple(round(v, 4) for v in s.pixel_spacing_mm),
                tuple(round(v, 3) for v in s.orientation),
            )
            == main_key
        ]
    info = SeriesInfo(
        series_uid=uid,
        study_uid=header_str(ds0, "StudyInstanceUID"),
        modality=header_str(ds0, "Modality").upper(),
        sop_class_uid=header_str(ds0, "SOPClassUID"),
        image_type=tuple(x.strip().upper() for x in header_str(ds0, "ImageType").split("\\") if x.strip()),
        description=header_str(ds0, "SeriesDescription")[:64],
        kernel=header_str(ds0, "ConvolutionKernel"),
        manufacturer=header_str(ds0, "Manufacturer"),
        body_part=header_str(ds0, "BodyPartExamined").upper(),
        transfer_syntaxes=tuple(sorted(tsyntaxes)),
        multiframe=multiframe,
        slices=slices,
        issues=issues,
        gantry_tilt_tag_deg=tilt_tag,
    )
    if slices:
        n = info.normal()
        slices.sort(key=lambda s: (float(np.dot(s.position_mm, n)), s.instance_number or 0))
        # drop slices that share a position with the previous one (keep the first)
        kept: list[SliceRef] = [slices[0]]
        for s in slices[1:]:
            if abs(float(np.dot(np.subtract(s.position_mm, kept[-1].position_mm), n))) < 1e-3:
                info.duplicates += 1
                continue
            kept.append(s)
        info.slices = kept
    return info
