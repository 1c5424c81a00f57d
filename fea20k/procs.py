"""Helpers for the worker processes fea20k starts (stage pools, ingest pools, annotate client processes)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from concurrent.futures import Future, ProcessPoolExecutor


def exit_with_parent() -> None:
    """Worker side (a ``multiprocessing`` child): end this process as soon as its parent is gone (kill -9, OOM
    kill), so no orphan keeps working on a stage nobody will finish, or holds the build's output pipes open."""
    import multiprocessing
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None:  # not a multiprocessing child: nothing to watch
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="fea20k-exit-with-parent", daemon=True).start()


def quiet_on_interrupt() -> None:
    """Worker side: on Ctrl-C (SIGINT reaches the whole process group) end at once, without a traceback. The build
    process reports the interruption; the worker's chunk in progress is redone by the next build."""
    signal.signal(signal.SIGINT, _exit_quietly)


def _exit_quietly(signum: int, frame: object) -> None:
    os._exit(128 + signum)


def worker_pool(workers: int, initializer: Callable[..., None] | None = None,
                initargs: tuple[Any, ...] = ()) -> ProcessPoolExecutor:
    """The one way fea20k starts worker processes: a "spawn" ``ProcessPoolExecutor`` whose workers end as soon as
    this process dies (no orphans after a kill -9), end quietly on Ctrl-C (the build reports it once), may not open
    the workspace ledger (:data:`NO_LEDGER_ENV`: the build process owns it), and then run ``initializer(*initargs)``.

    spawn, not fork: the workers are children of the build process itself (not of a fork server), so they can
    watch it, and no lock or thread of the parent is copied into them half-held."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(initializer, initargs))
    if threading.current_thread() is threading.main_thread():
        # start the workers now with SIGINT ignored (kept across exec): a Ctrl-C while one is still importing would
        # otherwise print its traceback; quiet_on_interrupt takes over once it runs
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for _ in range(workers):  # a spawn pool starts a worker per submit while none is idle: all of them here
                pool.submit(_started)
        finally:
            signal.signal(signal.SIGINT, previous)
    return pool


def _started() -> None:
    """The no-op job that starts a pool's workers."""


class Completions:
    """Futures, as they finish, through a queue. ``concurrent.futures.wait()`` takes every future's lock at once, and
    a Ctrl-C in the middle of that leaves some held: the pool's manager thread then blocks on them for ever and the
    pool never shuts down (seen as a build that hung after Ctrl-C). ``next()`` holds no future's lock."""

    def __init__(self) -> None:
        self._done: SimpleQueue[Future[Any]] = SimpleQueue()

    def watch(self, future: Future[Any]) -> Future[Any]:
        future.add_done_callback(self._done.put)
        return future

    def next(self, timeout: float | None = None) -> Future[Any] | None:
        """The next future to finish, waiting up to ``timeout`` seconds (None: for ever); None when none did."""
        try:
            return self._done.get(timeout=timeout)
        except Empty:
            return None


# Set in every worker process: fea20k.ledger.Ledger refuses to open the SQLite file there (issue 17: one owner).
NO_LEDGER_ENV = "FEA20K_NO_LEDGER"


def _init_worker(initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    os.environ[NO_LEDGER_ENV] = "1"
    exit_with_parent()
    quiet_on_interrupt()
    if initializer is not None:
        initializer(*initargs)
