"""Object-store calls of a running job, retried while the store is unreachable."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from app.logs import logger
from app.storage import ObjectNotFoundError, StorageError
from app.worker.context import JobRefusedError

__all__ = ["storage_retry"]

T = TypeVar("T")


def storage_retry(what: str, call: Callable[[], T], *, retry_s: float, stop: threading.Event) -> T:
    """``call()``, retried with backoff while the object store is unreachable.

    After ``retry_s`` the job fails with ``storage_unavailable`` (its attempt is
    kept: an outage does not use up ``max_attempts``); a missing object is not retried,
    and a worker that is stopping (``stop`` set) gives the attempt back instead of waiting.
    """
    deadline = time.monotonic() + retry_s
    delay = 0.5
    while True:
        try:
            return call()
        except ObjectNotFoundError:
            raise
        except StorageError as e:
            left = deadline - time.monotonic()
            if stop.is_set():
                raise
            if left <= 0:
                raise JobRefusedError(
                    "storage_unavailable",
                    f"could not {what}: the object store stayed unreachable for {retry_s:.0f} s ({e.code})",
                ) from e
            logger.warning("object store unreachable ({}): {} retried in {:.1f} s", e.code, what, delay)
            stop.wait(min(delay, left))
            delay = min(delay * 2, 10.0)
