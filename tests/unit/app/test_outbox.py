"""The decision after a failed outbox attempt, and the polling loop both outboxes run."""

from __future__ import annotations

import random
import threading

from app.outbox import Retries, poll


def test_retry_delays_grow_are_capped_and_end_at_the_last_attempt() -> None:
    retries = Retries(max_attempts=8, backoff_s=2.0, backoff_max_s=30.0)
    rng = random.Random(0)
    delays = [retries.delay(n, rng=rng) for n in range(1, 8)]
    for n, d in enumerate(delays, start=1):
        assert d is not None
        nominal = min(30.0, 2.0 * 2 ** (n - 1))
        assert 0.8 * nominal <= d <= 1.2 * nominal
    assert delays[0] is not None and delays[3] is not None and delays[3] > 4 * delays[0]  # 2 s, then 16 s
    assert all(d is not None and d <= 1.2 * 30.0 for d in delays[4:])  # capped
    assert retries.delay(8) is None and retries.delay(9) is None  # the last attempt: given up


def test_a_final_error_gives_up_at_once() -> None:
    retries = Retries(max_attempts=10, backoff_s=1.0, backoff_max_s=60.0)
    assert retries.delay(1, final=True) is None
    assert retries.delay(1) is not None
    assert Retries(max_attempts=1, backoff_s=1.0, backoff_max_s=60.0).delay(1) is None


def test_poll_idles_after_an_empty_or_failed_round_and_stops() -> None:
    stop = threading.Event()
    rounds = iter([2, 0, -1, 1, 0])
    idled: list[int] = []
    ran = 0

    def one_round() -> int:
        nonlocal ran
        ran += 1
        n = next(rounds)
        if n < 0:
            raise RuntimeError("a failed round")
        return n

    def idle() -> None:
        idled.append(ran)
        if len(idled) == 3:
            stop.set()

    poll(stop, one_round, idle, "test round error")
    assert ran == 5 and idled == [2, 3, 5]  # no wait after a round that started rows
