"""Hostile DICOM header values through the worker's whole study preparation (slow, Hypothesis).

test_dicom_fuzz.py flips random bytes: most examples become unparseable files that are
skipped, and it stops at decoding. This one writes well-formed files whose *values*
are hostile (geometry, pixel module, rescale, identity; on one slice or on all of them,
so the study stays one consistent series) and runs the worker's whole preparation,
preprocessing included: that is where absurd PixelSpacing or positions asked SimpleITK
for a multi-GB grid. It runs in a spawned process capped at 4 GiB of address space, as
the worker's pool would, so a runaway allocation fails the test instead of the machine.
Before the fixes it found PixelSpacing [0, 0] (ValueError: the job was retried, then
failed with internal_error) and PixelSpacing [66, 66] (a 1.5 GiB array; [100, 100] on the 64²
phantom asks for ~49 GB) within 40 examples about every other run.
"""

from __future__ import annotations

import functools
import resource
import struct
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
import pytest
from dicomcraft import edit_dicom, study_members
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from zipcraft import zip_of

from app.config import DEFAULT_MANIFEST
from app.worker.pipeline import Prepared, mp_context, prepare_study
from ml.errors import ERROR_CODES, InputError
from ml.model import Manifest
from ml.phantom import make_study

_US = st.integers(min_value=0, max_value=65535)
_DS = st.one_of(
    st.floats(-1e3, 1e3),  # plausible magnitudes, wrong signs and ratios
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-9, -1.0, 60.0, 1e4, 1e9, 1e300]),
)


def _ds_list(n: int) -> st.SearchStrategy[list[float]]:
    exact = st.lists(_DS, min_size=n, max_size=n)
    return st.one_of(exact, exact, exact, st.lists(_DS, min_size=0, max_size=n + 2))


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "Rows": _US,
    "Columns": _US,
    "BitsAllocated": st.sampled_from([0, 1, 8, 12, 16, 32, 64]),
    "BitsStored": st.integers(0, 64),
    "HighBit": st.integers(0, 64),
    "PixelRepresentation": st.integers(0, 2),
    "SamplesPerPixel": st.integers(0, 4),
    "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", ""]),
    "NumberOfFrames": st.integers(0, 1000),
    "PixelSpacing": _ds_list(2),
    "ImagePositionPatient": _ds_list(3),
    "ImageOrientationPatient": _ds_list(6),
    "SliceThickness": _DS,
    "RescaleSlope": _DS,
    "RescaleIntercept": _DS,
    "Modality": st.sampled_from(["MR", "", "ct", "OT"]),
    "SeriesInstanceUID": st.sampled_from(["", "1.2.3", "x" * 64]),
}

#: drawn three times as often: the values the volume's grid and memory are computed from
GEOMETRY = [
    "PixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceThickness",
    "Rows",
    "Columns",
]

Mutation = tuple[str, Any, int | None]  # field, value (None: delete), slice index (None: all slices)

# mostly on every slice: a value on one slice only makes that slice the odd one out of its series
_WHERE = st.sampled_from([None, None, None, 0, 11, 23])
mutations = st.lists(
    st.sampled_from(sorted(FIELDS) + 2 * GEOMETRY).flatmap(
        lambda f: st.tuples(st.just(f), st.none() | FIELDS[f], _WHERE)
    ),
    min_size=1,
    max_size=3,
)


@pytest.fixture(scope="module")
def capped_pool() -> Iterator[ProcessPoolExecutor]:
    # a partial of a builtin: the spawned process never imports this module (nor its conftest)
    cap = functools.partial(resource.setrlimit, resource.RLIMIT_AS, (4 << 30, 4 << 30))
    with ProcessPoolExecutor(1, mp_context=mp_context(), initializer=cap) as pool:
        yield pool


@dataclass(frozen=True)
class SmallStudy:
    """The (name, bytes) files of a 24-slice 32² phantom (a short repr for hypothesis' reports)."""

    members: list[tuple[str, bytes]]

    def __repr__(self) -> str:
        return f"SmallStudy({len(self.members)} files)"


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> SmallStudy:
    zp = tmp_path_factory.mktemp("fuzz") / "s.zip"
    make_study(zp, seed=65, n_slices=24, rows=32, cols=32, pixel_spacing_mm=12.0)
    return SmallStudy(study_members(zp))


def _apply(members: list[tuple[str, bytes]], muts: list[Mutation]) -> list[tuple[str, bytes]] | None:
    files = [bytearray(d) for _, d in members]
    for field, value, index in muts:
        targets = range(len(files)) if index is None else [index % len(files)]
        for i in targets:

            def change(ds: pydicom.Dataset, field: str = field, value: Any = value) -> None:
                if value is None:
                    if field in ds:
                        delattr(ds, field)
                else:
                    setattr(ds, field, value)

            try:
                files[i] = bytearray(edit_dicom(bytes(files[i]), change))
            except (ValueError, TypeError, OverflowError, struct.error):
                return None  # pydicom cannot encode this value: not a file a client could send
    return [(n, bytes(d)) for (n, _), d in zip(members, files, strict=True)]


@pytest.mark.slow
@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(muts=mutations)
def test_hostile_header_values_prepare_or_refuse_with_a_code(
    capped_pool: ProcessPoolExecutor,
    small_study: SmallStudy,
    tmp_path_factory: pytest.TempPathFactory,
    muts: list[Mutation],
) -> None:
    files = _apply(small_study.members, muts)
    if files is None:
        event("not encodable")
        return
    zp = tmp_path_factory.getbasetemp() / f"fuzz-{uuid.uuid4().hex}.zip"
    zp.write_bytes(zip_of(files))
    config = Manifest.load(DEFAULT_MANIFEST).get(None).preprocess  # the default model's preprocessing
    try:
        fut = capped_pool.submit(prepare_study, uuid.uuid4(), 1, str(zp), None, config, False)
        prepared: Prepared = fut.result(timeout=300)
    except InputError as e:
        event(f"refused: {e.code}")
        assert e.code in ERROR_CODES, e
    else:
        event("prepared")
        assert prepared.tensor.shape == (1, 1, *config.target_size)
        assert np.isfinite(prepared.tensor).all()
    finally:
        zp.unlink()
