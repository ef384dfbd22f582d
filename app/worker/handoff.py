"""A prepared study's large arrays, from the preprocessing process to the worker through shared memory.

The pool returns :class:`~app.worker.pipeline.Prepared` by pickling it through its result pipe.
For a 512² series that is the 64 MiB model input plus the source volume (kept for the saliency
overlay), about 136 MB and 0.27 s of a job that otherwise takes 1.3 s. Instead, the
preprocessing process writes each large array into a file of a memory file system (by default
``/dev/shm``) and only a small reference travels in the pipe; the worker maps the file and
unlinks it at once (:func:`unpack`), so the memory is freed as soon as the job lets the array go
and nothing is left behind when the worker dies later.

Safety:

- the file's size is reserved with ``posix_fallocate`` before anything is written: a full memory
  file system (a container's default ``/dev/shm`` is 64 MiB) is an ``ENOSPC`` here, and the
  array then travels in the pipe as before, never a ``SIGBUS`` while writing;
- files are named ``s4ct-<worker pid>-<random>``, private to the worker's user (0600); a worker
  removes those of workers that are no longer alive when it starts, and its own ones after a
  preprocessing process died (:func:`sweep`); an unreadable or vanished file fails the job
  with an internal error, never with a wrong array.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from app.logs import logger
from app.pids import alive

if TYPE_CHECKING:
    from app.worker.pipeline import Prepared

__all__ = ["MIN_BYTES", "Packed", "SharedArray", "pack", "put", "sweep", "take", "unpack", "usable_dir"]

#: arrays smaller than this travel in the pipe (a file and a mapping cost more than they save)
MIN_BYTES = 1 << 20
_PREFIX = "s4ct-"
_EMPTY = np.empty(0, dtype=np.float32)


@dataclass(frozen=True)
class SharedArray:
    """Where an array was written: a file holding it in C order."""

    path: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * math.prod(self.shape))


def usable_dir(setting: str) -> str | None:
    """The configured directory (``S4CT_HANDOFF_DIR``) if it is a writable directory, else None."""
    if not setting:
        return None
    path = Path(setting)
    if path.is_dir() and os.access(path, os.W_OK | os.X_OK):
        return str(path)
    logger.warning("S4CT_HANDOFF_DIR is not a writable directory; prepared studies go through the pipe")
    return None


def put(arr: npt.NDArray[Any], directory: str | None, owner: int) -> npt.NDArray[Any] | SharedArray:
    """Write ``arr`` into a new file of ``directory`` for worker ``owner`` (a pid), or return it as is.

    Small arrays, no directory, and any failure to create, reserve or map the file (a full file
    system included) return the array itself, which then travels in the pipe.
    """
    if directory is None or arr.nbytes < MIN_BYTES:
        return arr
    path = os.path.join(directory, f"{_PREFIX}{owner}-{secrets.token_hex(8)}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return arr
    try:
        os.posix_fallocate(fd, 0, arr.nbytes)  # ENOSPC now rather than SIGBUS while writing
        with mmap.mmap(fd, arr.nbytes) as m:
            view = np.frombuffer(m, dtype=arr.dtype, count=arr.size).reshape(arr.shape)
            view[...] = arr
            del view  # the mapping closes only once no array uses it
    except (OSError, ValueError, BufferError):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return arr
    finally:
        os.close(fd)
    return SharedArray(path, arr.dtype.str, tuple(arr.shape))


def take(ref: npt.NDArray[Any] | SharedArray) -> npt.NDArray[Any]:
    """The array of a reference (mapped, and its file unlinked at once), or the array itself."""
    if not isinstance(ref, SharedArray):
        return ref
    try:
        fd = os.open(ref.path, os.O_RDWR)
    except OSError as e:
        raise RuntimeError("a prepared study's shared array is gone") from e
    try:
        if os.fstat(fd).st_size != ref.nbytes:
            raise RuntimeError("a prepared study's shared array has the wrong size")
        m = mmap.mmap(fd, ref.nbytes)
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(ref.path)
    return np.frombuffer(m, dtype=np.dtype(ref.dtype)).reshape(ref.shape)


@dataclass
class Packed:
    """A prepared study whose large arrays wait in shared memory (see :func:`unpack`)."""

    prepared: Prepared  # with empty placeholders for the arrays below
    tensor: npt.NDArray[Any] | SharedArray
    volume: npt.NDArray[Any] | SharedArray | None


def pack(prepared: Prepared, directory: str | None, owner: int) -> Prepared | Packed:
    """In the preprocessing process: move ``prepared``'s tensor and volume into shared memory."""
    if directory is None:
        return prepared
    tensor = put(prepared.tensor, directory, owner)
    volume = put(prepared.volume.stored, directory, owner) if prepared.volume is not None else None
    if not isinstance(tensor, SharedArray) and not isinstance(volume, SharedArray):
        return prepared
    prepared.tensor = _EMPTY
    if prepared.volume is not None:
        prepared.volume.stored = _EMPTY  # restored by unpack (no re-validation on assignment)
    return Packed(prepared, tensor, volume)


def unpack(result: Prepared | Packed) -> Prepared:
    """In the worker: the prepared study with its arrays back (mapped from shared memory)."""
    if not isinstance(result, Packed):
        return result
    prepared = result.prepared
    try:
        prepared.tensor = take(result.tensor)
    finally:
        if result.volume is not None and prepared.volume is not None:
            prepared.volume.stored = take(result.volume)
    return prepared


def sweep(directory: str | Path | None, *, own: bool = False) -> int:
    """Remove the files of workers that are gone (and, with ``own``, this process's); how many.

    Run when a worker starts (``own=False``: another live worker's files are in use) and after a
    preprocessing process died (``own=True``: what it was writing can no longer be claimed).
    """
    if directory is None:
        return 0
    me, removed = os.getpid(), 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        name = entry.name
        if not name.startswith(_PREFIX):
            continue
        pid_text = name[len(_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if (pid == me and not own) or (pid != me and alive(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed += 1
    if removed:
        logger.info("removed {} leftover shared array file(s)", removed)
    return removed
