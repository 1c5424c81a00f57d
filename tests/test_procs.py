"""fea20k.procs: the worker pool starts every worker at once (inside its SIGINT-ignored window), and Completions
hands futures over as they finish, holding no future's lock while it waits."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

from fea20k.procs import Completions, worker_pool


def _pid() -> int:
    import os

    return os.getpid()


def test_worker_pool_starts_every_worker_when_made() -> None:
    with worker_pool(2) as pool:
        assert len(pool._processes) == 2  # noqa: SLF001 - what the pool started before any job of ours
        assert pool.submit(_pid).result() in pool._processes  # noqa: SLF001


def test_completions_in_finishing_order_and_none_on_timeout() -> None:
    ended = Completions()
    with ThreadPoolExecutor(2) as pool:
        slow = ended.watch(pool.submit(time.sleep, 0.3))
        fast = ended.watch(pool.submit(time.sleep, 0.01))
        assert ended.next() is fast
        assert ended.next(timeout=0.01) is None  # the slow one is still running
        assert ended.next() is slow
    already: Future[int] = Future()
    already.set_result(1)
    assert ended.watch(already) is already and ended.next(timeout=0) is already
