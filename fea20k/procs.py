"""Helpers for the worker processes fea20k starts (stage pools, ingest pools, annotate client processes)."""

from __future__ import annotations

import os
import signal
import threading


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
