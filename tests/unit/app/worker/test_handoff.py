"""Prepared studies' large arrays through shared memory (app/worker/handoff.py)."""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from app.worker import handoff
from app.worker.handoff import SharedArray, pack, put, sweep, take, unpack, usable_dir
from app.worker.pipeline import Prepared
from ml.geometry import CTVolume, VolumeGeometry


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_an_array_goes_through_a_file_that_is_gone_once_taken(tmp_path: Path) -> None:
    arr = np.arange(2 * 300 * 1024, dtype=np.float32).reshape(2, 300, 1024)[:, ::2, :]  # strided
    ref = put(arr, str(tmp_path), os.getpid())
    assert isinstance(ref, SharedArray) and ref.nbytes == arr.nbytes
    (name,) = _files(tmp_path)
    assert name.startswith(f"s4ct-{os.getpid()}-") and (tmp_path / name).stat().st_mode & 0o077 == 0
    back = take(ref)
    assert _files(tmp_path) == []  # unlinked as soon as it is mapped
    assert back.dtype == arr.dtype and back.shape == arr.shape and np.array_equal(back, arr)
    back[0, 0, 0] = -1.0  # writable, private to this job
    with pytest.raises(RuntimeError, match="gone"):
        take(ref)


def test_small_arrays_and_no_directory_go_through_the_pipe(tmp_path: Path) -> None:
    small = np.zeros(16, dtype=np.int16)
    assert put(small, str(tmp_path), 1) is small
    big = np.zeros(handoff.MIN_BYTES, dtype=np.uint8)
    assert put(big, None, 1) is big
    assert _files(tmp_path) == []


def test_a_full_file_system_falls_back_to_the_pipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """posix_fallocate's ENOSPC (a 64 MiB container /dev/shm): no file left, the array itself back."""

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(handoff.os, "posix_fallocate", no_space)
    big = np.ones(handoff.MIN_BYTES, dtype=np.uint8)
    assert put(big, str(tmp_path), os.getpid()) is big
    assert _files(tmp_path) == []


def _prepared(shape_zyx: tuple[int, int, int]) -> Prepared:
    rng = np.random.default_rng(0)
    geometry = VolumeGeometry(size=shape_zyx[::-1], spacing_mm=(0.7, 0.7, 1.0), origin_mm=(0.0, 0.0, 0.0))
    volume = CTVolume(rng.integers(0, 4000, shape_zyx, dtype=np.uint16), 1.0, -1024.0, geometry)
    return Prepared(
        job_id=uuid.uuid4(),
        attempt=1,
        tensor=rng.random((1, 1, 64, 64, 64), dtype=np.float32),
        geometry=None,  # type: ignore[arg-type]
        qc={},
        timings={"reading": 0.1},
        volume=volume,
    )


def test_a_prepared_study_round_trips(tmp_path: Path) -> None:
    prep = _prepared((20, 128, 256))
    tensor, stored = prep.tensor.copy(), prep.volume.stored.copy()  # type: ignore[union-attr]
    packed = pack(prep, str(tmp_path), os.getpid())
    assert isinstance(packed, handoff.Packed) and len(_files(tmp_path)) == 2
    back = unpack(pickle.loads(pickle.dumps(packed)))  # as through the pipe
    assert _files(tmp_path) == []
    assert np.array_equal(back.tensor, tensor) and np.array_equal(back.volume.stored, stored)
    assert back.timings == {"reading": 0.1}
    assert unpack(back) is back  # a plain Prepared passes through
    assert pack(back, None, os.getpid()) is back


def test_sweep_removes_what_dead_workers_left(tmp_path: Path) -> None:
    child = [sys.executable, "-c", "import os; print(os.getpid())"]
    dead = int(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
    me, live = os.getpid(), os.getppid()
    for name in (f"s4ct-{dead}-aa", f"s4ct-{me}-bb", f"s4ct-{live}-cc", "other", "s4ct-x-dd"):
        (tmp_path / name).write_bytes(b"x")
    assert sweep(tmp_path) == 1  # the dead worker's; this one's and a live one's stay
    assert _files(tmp_path) == sorted(["other", "s4ct-x-dd", f"s4ct-{me}-bb", f"s4ct-{live}-cc"])
    assert sweep(tmp_path, own=True) == 1  # after a pool died: this worker's own too
    assert f"s4ct-{me}-bb" not in _files(tmp_path)
    assert sweep(None) == 0


def test_usable_dir(tmp_path: Path) -> None:
    assert usable_dir("") is None
    assert usable_dir(str(tmp_path)) == str(tmp_path)
    assert usable_dir(str(tmp_path / "missing")) is None
