"""The workspace lock: one writing command at a time per workspace, and the clean-up of what a killed one left.

The lock is an OS file lock (``flock``) on ``.fea20k/lock``, whose body names the holder (pid, command, start time,
boot id) so that a second writer can say who holds it. The kernel drops the lock when its holder dies, however it
dies (kill -9, OOM, reboot), so a lock left by a killed process is simply taken over; a non-empty body found on
acquiring says that the previous holder did not release it, and the taker logs so.

Under the lock nothing else writes the workspace, which makes the leftovers of dead processes safe to clear
(:func:`clear_leftovers`): ``running`` rows of the ledger become ``interrupted``, and temp files and folders
(``.NAME.tmp-PID``, ``.NAME.old-PID``) whose process is gone are removed.

Read-only commands (status, audit, sources, annotators, eval of a predictions file) never take it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from fea20k.errors import Fea20kUserError


logger = logging.getLogger(__name__)

STATE_DIR = ".fea20k"
LOCK_FILE = "lock"
WAIT_POLL_SECONDS = 0.2
# temp names of the atomic writers: fea20k.io (files), publish.local.building_dir / replace_dir (folders)
_TEMP_NAME = re.compile(r"^\..+\.(?:tmp|old)-(\d+)$")
# workspace folders fea20k writes temp names into (corpora, which may sit in the workspace, are never walked)
_TEMP_FOLDERS = (STATE_DIR, "releases", "exports", "evals")


class WorkspaceLockedError(Fea20kUserError):
    """Another process holds the workspace lock (the CLI exits 2)."""


@dataclass
class Holder:
    """Who holds (or held) a workspace lock."""

    pid: int
    command: str
    started: float
    boot_id: str | None = None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} (`{self.command}`, since {since})"


def boot_id() -> str | None:
    """This boot's id (Linux), so a lock body written before a reboot is recognised as such."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists (a zombie counts as gone)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) exists but will never run again
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_holder(path: Path) -> Holder | None:
    """The holder named in lock file ``path`` (None when it is empty, missing or unreadable)."""
    try:
        body = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not body:
        return None
    try:
        data = json.loads(body)
        return Holder(int(data["pid"]), str(data["command"]), float(data["started"]), data.get("boot_id"))
    except (ValueError, KeyError, TypeError):
        return None


class WorkspaceLock:
    """The lock of the workspace whose state folder is ``state_dir``; not re-entrant (see :func:`workspace_lock`)."""

    def __init__(self, state_dir: Path, command: str) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self.command = command
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> Holder | None:
        """Take the lock; return the holder it was taken over from when that one did not release it (killed).

        Raises :class:`WorkspaceLockedError` naming the holder when the lock is held and ``wait`` is false; with
        ``wait`` polls until it is free (logging once whom it waits for).
        """
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        waited = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = read_holder(self.path)
                    if not wait:
                        raise WorkspaceLockedError(self._busy_message(holder)) from None
                    if not waited:
                        logger.warning("waiting for the workspace lock: held by %s",
                                       holder.describe() if holder else "another process")
                        waited = True
                    time.sleep(WAIT_POLL_SECONDS)
            previous = read_holder(self.path)
            me = Holder(os.getpid(), self.command, time.time(), boot_id())
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(asdict(me)).encode("utf-8"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if previous is not None and previous.pid != os.getpid():
            how = "before a reboot" if previous.boot_id and previous.boot_id != me.boot_id else "killed?"
            logger.warning("took over the workspace lock of %s: that process is gone without releasing it (%s)",
                           previous.describe(), how)
            return previous
        return None

    def _busy_message(self, holder: Holder | None) -> str:
        where = self.path.parent.parent
        if holder is None:
            who = "another process"
        elif pid_alive(holder.pid):
            who = holder.describe()
        else:  # flock is held by a process that inherited the file (a child of the holder that outlived it)
            who = f"{holder.describe()}, which has exited; a process it started still holds the lock"
        return (f"workspace {where} is locked by {who}; wait for it to finish, or pass --wait to start when it "
                "does")

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty body: released cleanly (a body left behind means its holder died)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


_held: dict[tuple[Path, int, int], int] = {}
_held_guard = threading.Lock()


@contextmanager
def workspace_lock(root: Path, command: str, *, wait: bool = False) -> Iterator[None]:
    """Hold the lock of workspace ``root`` for the block; re-entrant within one thread of one process (``fea20k
    build`` takes it, then :func:`fea20k.engine.build_round` again). The outermost acquisition clears the leftovers
    of dead processes (:func:`clear_leftovers`)."""
    state_dir = Path(root).resolve() / STATE_DIR
    key = (state_dir, os.getpid(), threading.get_ident())
    with _held_guard:
        depth = _held.get(key, 0)
        if depth:
            _held[key] = depth + 1
    if depth:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    lock = WorkspaceLock(state_dir, command)
    lock.acquire(wait=wait)
    with _held_guard:
        _held[key] = 1
    try:
        clear_leftovers(state_dir.parent)
        yield
    finally:
        with _held_guard:
            _held.pop(key, None)
        lock.release()


def clear_leftovers(root: Path) -> None:
    """Under the lock: mark the ledger's ``running`` rows of other processes ``interrupted`` and remove the temp
    files and folders of dead processes."""
    from fea20k.ledger import Ledger

    ledger_path = Path(root) / STATE_DIR / "ledger.sqlite"
    if ledger_path.is_file():
        ledger = Ledger(ledger_path)
        try:
            # no other writer runs under the lock: a running row of another pid is stale even if its pid was reused
            runs, stages = ledger.mark_interrupted(lambda pid: pid != os.getpid())
        finally:
            ledger.close()
        if runs or stages:
            logger.warning("marked %d run(s) and %d stage(s) of a process that is gone as interrupted", runs, stages)
    removed = remove_dead_temps(root)
    if removed:
        logger.warning("removed %d temp file(s)/folder(s) left by processes that are gone: %s", len(removed),
                       ", ".join(str(p.relative_to(root)) for p in removed[:5]) + (" ..." if len(removed) > 5 else ""))


def remove_dead_temps(root: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID`` / ``.NAME.old-PID`` files and folders under the workspace's state, releases,
    exports and evals folders whose PID is not running; return what was removed."""
    removed: list[Path] = []
    for folder in _TEMP_FOLDERS:
        top = Path(root) / folder
        if not top.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [*dirnames, *filenames]:
                m = _TEMP_NAME.match(name)
                if m is None or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
                    continue
                p = Path(dirpath) / name
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                    dirnames.remove(name)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def enclosing_workspace(path: Path) -> Path | None:
    """The workspace (a folder with ``fea20k.toml`` and ``.fea20k/``) that ``path`` lies in, if any."""
    p = Path(path).resolve()
    for candidate in (p, *p.parents):
        if (candidate / "fea20k.toml").is_file() and (candidate / STATE_DIR).is_dir():
            return candidate
    return None
