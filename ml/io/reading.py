"""Opening a study archive: safe reading (in memory, or extraction for a very large one) and discovery.

No pixel is decoded and nothing heavy is imported here: the series picker uses it too.
"""

from __future__ import annotations

import contextlib
import gc
import io
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ml.io.discovery import discover_series
from ml.io.members import read_members
from ml.io.series import Study
from ml.io.zipsafe import ZipLimits, safe_extract, summarize_zip

__all__ = ["IN_MEMORY_MAX_BYTES", "open_study"]

#: archives that expand to at most this many bytes are read in memory (one pass, no temp files);
#: larger ones are extracted to a private temporary directory
IN_MEMORY_MAX_BYTES = 2 << 30


@contextlib.contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a burst of allocations, then restore it.

    The header scan allocates tens of thousands of small containers (a parsed header per
    file, a pydicom dataset where the fast reader declines), which triggers full collections
    that walk every object of the process (in a worker, all of torch's): 0.03-0.04 s of a
    300-file study. Reference counting still frees everything meanwhile; only reference
    cycles wait for the next collection. The collector is re-enabled only if it was enabled
    on entry (nested or concurrent uses leave it on).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def open_study(
    source: str | Path | bytes,
    limits: ZipLimits | None = None,
    workdir: str | Path | None = None,
    *,
    in_memory_max_bytes: int = IN_MEMORY_MAX_BYTES,
) -> Iterator[Study]:
    """Read a study ZIP (a path, or its bytes) safely and discover its series.

    An archive whose members declare at most ``in_memory_max_bytes`` is inflated into
    memory (:func:`ml.io.members.read_members`); a larger one is extracted into a private
    temporary directory (:func:`ml.io.zipsafe.safe_extract`). Either way the members are
    released (the directory removed) when the context exits; decode volumes with
    :func:`~ml.io.decode.load_volume` inside the context.
    """
    if isinstance(source, bytes):
        summary = summarize_zip(io.BytesIO(source), limits)
    else:
        with Path(source).open("rb") as fp:
            summary = summarize_zip(fp, limits)
    if summary.uncompressed_bytes <= in_memory_max_bytes:
        with cycle_collection_paused():
            report, store = read_members(source, limits)
        try:
            with cycle_collection_paused():
                study = discover_series(report.files, store)
            study.skipped.update(report.skipped)
            yield study
        finally:
            store.release()
        return
    tmp = Path(tempfile.mkdtemp(prefix="s4ct-study-", dir=workdir))
    try:
        if isinstance(source, bytes):
            archive = tmp / "study.zip"
            archive.write_bytes(source)
            report = safe_extract(archive, tmp / "members", limits)
        else:
            report = safe_extract(source, tmp, limits)
        with cycle_collection_paused():
            study = discover_series(report.files)
        study.skipped.update(report.skipped)
        yield study
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
