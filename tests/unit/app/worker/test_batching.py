"""Batch forming (app/worker/batching.py): wait for more studies only while one is being prepared."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from app.queue import JobMessage
from app.repository import Job
from app.worker.batching import Inference
from app.worker.context import HeldJobs, InFlight


class CountingQueue(queue.Queue[Any]):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        self.gets += 1
        return super().get(block, timeout)


def _inference(held: HeldJobs, max_wait_ms: int) -> tuple[Inference, CountingQueue]:
    inf = Inference.__new__(Inference)
    ready = CountingQueue()
    inf.ctx = SimpleNamespace(held=held)  # type: ignore[assignment]
    inf.s = SimpleNamespace(max_wait_ms=max_wait_ms, max_batch=4)  # type: ignore[assignment]
    inf.intake = SimpleNamespace(ready=ready)  # type: ignore[assignment]
    return inf, ready


def _items(n: int, tmp_path: Path, job_row: Callable[..., dict[str, Any]]) -> list[InFlight]:
    return [
        InFlight(Job.from_row(job_row(state="running")), JobMessage(f"{k}-0", None), tmp_path)
        for k in range(n)
    ]


def test_a_lone_study_is_not_held_back(tmp_path: Path, job_row: Callable[..., dict[str, Any]]) -> None:
    """Nothing else is held: the batch goes at once, whatever max_wait_ms says."""
    held = HeldJobs()
    (item,) = _items(1, tmp_path, job_row)
    held.add(item)
    inf, ready = _inference(held, max_wait_ms=2000)
    ready.put((item, object()))
    batch = inf._next_batch()
    assert [i for i, _ in batch] == [item]
    assert ready.gets == 1  # no wait for a second study


def test_a_study_being_prepared_joins_the_batch(
    tmp_path: Path, job_row: Callable[..., dict[str, Any]]
) -> None:
    held = HeldJobs()
    first, second = _items(2, tmp_path, job_row)
    held.add(first)
    held.add(second)  # claimed, still in preprocessing
    inf, ready = _inference(held, max_wait_ms=600_000)
    ready.put((first, object()))
    threading.Timer(0.05, lambda: ready.put((second, object()))).start()
    batch = inf._next_batch()
    assert [i for i, _ in batch] == [first, second]


def test_the_wait_ends_at_max_wait_ms(tmp_path: Path, job_row: Callable[..., dict[str, Any]]) -> None:
    held = HeldJobs()
    first, second = _items(2, tmp_path, job_row)
    held.add(first)
    held.add(second)  # never ready in time
    inf, ready = _inference(held, max_wait_ms=20)
    ready.put((first, object()))
    batch = inf._next_batch()
    assert [i for i, _ in batch] == [first]
    assert ready.gets == 2  # it did wait for the second one
