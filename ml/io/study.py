"""One study archive → its series → QC and ranking → the selected volume (→ the model input).

:func:`open_study` reads an archive safely (into memory, or a very large one into a private
temporary directory) and discovers its series (the members are released when the context
exits). :func:`read_study` is the
one way the service, the batch report, the CLI, training and the benches read a study:
open, rank and select a series, decode it, remove the extracted files and, when asked,
run the preprocessing. It reports each stage to optional callbacks and hands the PHI
tokens seen in the headers to the caller as soon as discovery has found them, so that
they are scrubbed from a log even when a later stage refuses the study.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ml.dicom_out.source import SourceReference, read_source
from ml.geometry import CTVolume
from ml.io.decode import load_volume
from ml.io.qc import QCConfig, QCReport, rank_series
from ml.io.reading import IN_MEMORY_MAX_BYTES, open_study
from ml.io.series import SeriesInfo, Study
from ml.io.zipsafe import ZipLimits
from ml.preprocess import PreprocessConfig, PreprocessResult
from ml.preprocess import preprocess as run_preprocess

__all__ = ["IN_MEMORY_MAX_BYTES", "STAGES", "StudyRead", "open_study", "read_study"]

#: the stages of :func:`read_study`, in the order they run. ``reading``: safe reading of the
#: archive (in memory, or extraction) and header scan; ``qc``: assessment, ranking and
#: selection; ``decoding``: the selected series' pixels; ``cleanup``: release of the members
#: (removal of the extracted files); ``preprocessing``: the model input.
STAGES = ("reading", "qc", "decoding", "cleanup", "preprocessing")


@dataclass
class StudyRead:
    """What :func:`read_study` read from one study archive.

    Attributes:
        study: every discovered series, the skipped-file counts and the PHI tokens (the
            extracted files its slices point to are already removed).
        qc: the QC verdicts and ranking of every series, and the selected one.
        volume: the selected series decoded (stored values, rescale, geometry); None when
            the study was not decoded, or was preprocessed without ``keep_volume``.
        preprocessed: the model input and its geometry record, when preprocessing was asked for.
        timings: wall seconds of each stage that ran (names from :data:`STAGES`, in that order).
        source: the selected series' patient and study modules and UIDs, for DICOM results
            (with ``keep_source``; identifiers: never log it).
    """

    study: Study
    qc: QCReport
    volume: CTVolume | None = None
    preprocessed: PreprocessResult | None = None
    timings: dict[str, float] = field(default_factory=dict)
    source: SourceReference | None = None

    @property
    def series(self) -> SeriesInfo:
        """The selected series."""
        return self.qc.selected.series

    @property
    def phi_tokens(self) -> frozenset[str]:
        """Identifier values seen in the headers, for log scrubbing (never serialise them)."""
        return self.study.phi_tokens


class _Stages:
    """Times each stage into ``timings`` and tells the callbacks."""

    def __init__(
        self,
        on_start: Callable[[str], None] | None,
        on_done: Callable[[str, float], None] | None,
    ) -> None:
        self.timings: dict[str, float] = {}
        self._on_start = on_start
        self._on_done = on_done

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self._on_start is not None:
            self._on_start(name)
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        self.timings[name] = seconds
        if self._on_done is not None:
            self._on_done(name, seconds)


def read_study(
    source: str | Path | bytes,
    *,
    series_uid: str | None = None,
    limits: ZipLimits | None = None,
    qc_config: QCConfig | None = None,
    decode: bool = True,
    preprocess: PreprocessConfig | None = None,
    keep_volume: bool = False,
    keep_source: bool = False,
    workdir: str | Path | None = None,
    on_stage_start: Callable[[str], None] | None = None,
    on_stage: Callable[[str, float], None] | None = None,
    on_phi_tokens: Callable[[frozenset[str]], None] | None = None,
) -> StudyRead:
    """Read one study ZIP: extract, discover, rank and select a series, decode it, preprocess it.

    Args:
        source: the study ZIP, as a path or as its bytes.
        series_uid: select this series instead of the best-ranked one.
        limits: archive limits (default :class:`~ml.io.zipsafe.ZipLimits`).
        qc_config: QC thresholds and ranking preference (default :class:`~ml.io.qc.QCConfig`).
        decode: False stops after QC (no ``decoding`` stage, no volume).
        preprocess: run the preprocessing with this configuration after the extracted
            files are removed (needs ``decode``).
        keep_volume: with ``preprocess``, keep the decoded volume in the record; otherwise it
            is released as soon as the model input exists.
        keep_source: read the selected series' reference for DICOM results
            (:func:`ml.dicom_out.source.read_source`) before the extracted files are removed.
        workdir: where the private temporary directory is created (default: the system's).
        on_stage_start: called with a stage's name (see :data:`STAGES`) when it starts.
        on_stage: called with a stage's name and its wall seconds when it has finished.
        on_phi_tokens: called with the PHI tokens of the headers as soon as discovery has
            read them (before QC, so a refused study's identifiers are known too).

    Raises:
        ml.errors.InputError: the stable code of the stage that refused the study
            (``zip_*``, ``no_dicom``, ``dicom_invalid``, a QC reject code,
            ``series_not_found``, ``unsupported_transfer_syntax``, ...).
    """
    if preprocess is not None and not decode:
        raise ValueError("preprocessing needs the decoded volume (decode=True)")
    stage = _Stages(on_stage_start, on_stage)
    volume: CTVolume | None = None
    with contextlib.ExitStack() as extracted:
        with stage("reading"):
            study = extracted.enter_context(open_study(source, limits, workdir))
        if on_phi_tokens is not None:
            on_phi_tokens(study.phi_tokens)
        with stage("qc"):
            report = rank_series(study, qc_config, series_uid)
            reference = read_source(report.selected.series) if keep_source else None
        if decode:
            with stage("decoding"):
                volume = load_volume(report.selected.series)
        with stage("cleanup"):
            extracted.close()
    result: PreprocessResult | None = None
    if preprocess is not None:
        assert volume is not None  # decode is True
        with stage("preprocessing"):
            result = run_preprocess(volume, preprocess)
        if not keep_volume:
            volume = None
    return StudyRead(
        study=study, qc=report, volume=volume, preprocessed=result, timings=stage.timings, source=reference
    )
