"""The studies a run reads: its training corpora, a guard against studies repeated across
corpora, and filling the preprocessed-tensor cache with a progress bar."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ml.data import StudyRecord, TensorCache, phantom_records, read_labels_csv
from ml.train.config import TrainConfig


def fill_cache_with_progress(
    cache: TensorCache, records: Sequence[StudyRecord], workers: int
) -> dict[str, str]:
    """Preprocess uncached studies with a progress bar on stderr; returns failures by study id."""
    from tqdm import tqdm

    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc="preprocessing", unit="study")
        bar.update(done - bar.n)

    try:
        return cache.fill(records, workers=workers, progress=progress)
    finally:
        if bar is not None:
            bar.close()


def refuse_repeated_studies(records: Sequence[StudyRecord], where: str) -> None:
    """Raise ``ValueError`` when a study id occurs more than once in ``records`` (``where`` names them)."""
    dup = sorted(k for k, v in Counter(r.study_id for r in records).items() if v > 1)
    if dup:
        raise ValueError(f"study ids repeat across {where}: {dup[:5]}")


def training_records(cfg: TrainConfig) -> list[StudyRecord]:
    """The training/validation studies of ``cfg``: its labels CSVs, then its phantom corpora."""
    records = [r for csv_path in cfg.labels_csvs() for r in read_labels_csv(csv_path)]
    return records + [r for corpus in cfg.phantom_corpora for r in phantom_records(corpus)]
