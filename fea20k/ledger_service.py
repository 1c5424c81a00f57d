"""One owner of the ledger: the build process serves it; worker processes call it over a socket.

SQLite's WAL mode needs every writer on one host, so on a multi-node cluster with a shared filesystem workers may not
open ``.fea20k/ledger.sqlite`` themselves (and :class:`~fea20k.ledger.Ledger` refuses to, where
:data:`~fea20k.procs.NO_LEDGER_ENV` is set). Instead, while a stage runs, the build process runs a
:class:`LedgerService`: a ``multiprocessing.connection.Listener`` (authenticated with a key made for this service)
whose threads run a whitelist of :class:`Ledger` methods (:data:`SERVED`) on the build's own connection, one call at
a time. Its :class:`LedgerAddress` travels to the workers in the pickled
:class:`~fea20k.stage.StageContext`; there ``ctx.workspace.ledger`` is a :class:`RemoteLedger` with the same method
names, and in the build process the real ``Ledger`` (:func:`open_ledger` decides).

The service also keeps the annotate stages' spending caps (:class:`Budget`): the dollars spent and reserved must be
one figure for every process calling a paid endpoint (client processes, Ray actors on other nodes), and they are the
ledger's figures to begin with.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from fea20k.errors import Fea20kError
from fea20k.ledger import Ledger


logger = logging.getLogger(__name__)

# The Ledger methods a worker may call: the request cache, call accounting, batches and checkpoint look-ups. Not
# ``conn`` or ``transaction`` (raw SQL cannot travel), nor runs and stage states (the engine's, in the build).
SERVED = frozenset({
    "cache_get", "cache_put", "record_call", "record_replies", "spent", "cost_summary", "cost_by_stage",
    "record_batch", "open_batches", "adopt_batch", "drop_batch", "close_batch", "batch_for_keys",
    "record_checkpoint", "checkpoint", "checkpoint_identity", "record_release", "releases", "stage_state",
})
# The Budget operations a worker may call (see LedgerService.budget)
BUDGET_OPS = frozenset({"try_reserve", "settle", "release", "charge", "spent", "hit"})
CONNECT_TIMEOUT = 30.0  # seconds a worker keeps trying to reach the service (a busy build accepts late)
STOP_TIMEOUT = 5.0  # seconds stop() waits for the service threads


class LedgerServiceError(Fea20kError, ConnectionError):
    """A worker could not reach the build process's ledger service, or the service could not answer."""


def _owner_token() -> str:
    """This process, across hosts: a pid alone may repeat on another node."""
    return f"{socket.gethostname()}/{os.getpid()}"


@dataclass(frozen=True)
class LedgerAddress:
    """Where a worker reaches the ledger service (pickled into every worker with the stage context)."""

    host: str
    port: int
    authkey: bytes = field(repr=False)  # a secret of this build: kept out of logs and reprs
    owner: str  # the serving process (see _owner_token): there the real Ledger is used

    def owned_here(self) -> bool:
        return self.owner == _owner_token()

    def reachable_at(self, host: str) -> LedgerAddress:
        """The same service, as other nodes reach it (a service bound to every interface advertises one)."""
        return replace(self, host=host)


class Budget:
    """Spending against a cap: ``spent`` (before this run and in it), ``reserved`` (the estimated cost of calls in
    flight) and ``hit`` once a call was refused. Thread-safe; kept in one process (the ledger's owner) and reached
    from others through :class:`RemoteBudget`."""

    def __init__(self, cap: float | None, spent: float = 0.0) -> None:
        self.cap = cap
        self._spent, self._reserved, self._hit = spent, 0.0, False
        self._lock = threading.Lock()

    def spent(self) -> float:
        return self._spent

    def hit(self) -> bool:
        """Whether a call was refused (in any process sharing this budget)."""
        return self._hit

    def try_reserve(self, est: float) -> bool:
        with self._lock:
            # once a call is refused every later one is too, in every process: the stage stops at the cap instead
            # of slipping calls in as the reservations of finished calls free up
            if self._hit or (self.cap is not None and self._spent + self._reserved + est > self.cap):
                self._hit = True
                return False
            self._reserved += est
            return True

    def release(self, est: float) -> None:
        with self._lock:
            self._reserved -= est

    def charge(self, cost: float) -> None:
        with self._lock:
            self._spent += cost

    def settle(self, est: float, cost: float) -> None:
        """A call ended: free its reservation ``est`` and charge what it cost (one round trip from a worker)."""
        with self._lock:
            self._reserved -= est
            self._spent += cost


class RemoteBudget:
    """A worker's handle on a :class:`Budget` the ledger service keeps (same methods)."""

    def __init__(self, ledger: RemoteLedger, key: tuple[int, str, str], cap: float | None) -> None:
        self.cap, self.ledger, self.key = cap, ledger, key

    def _op(self, op: str, *args: Any) -> Any:
        return self.ledger.call("budget", self.key, self.cap, op, *args)

    def spent(self) -> float:
        return float(self._op("spent"))

    def hit(self) -> bool:
        return bool(self._op("hit"))

    def try_reserve(self, est: float) -> bool:
        return bool(self._op("try_reserve", est))

    def release(self, est: float) -> None:
        self._op("release", est)

    def charge(self, cost: float) -> None:
        self._op("charge", cost)

    def settle(self, est: float, cost: float) -> None:
        self._op("settle", est, cost)


class LedgerService:
    """Serves :data:`SERVED` methods of the ledger at ``path`` to worker processes (see the module docstring).

    ``bind``: the interface to listen on: ``127.0.0.1`` for workers on this host, ``0.0.0.0`` for other nodes (then
    give them :meth:`LedgerAddress.reachable_at` this node's address). ``calls`` counts the calls served by method,
    ``connections`` the worker connections accepted (one per worker process)."""

    def __init__(self, path: Path, bind: str = "127.0.0.1") -> None:
        self.ledger = Ledger(path)  # its own connection: the build's other connections are used by other threads
        self.calls: Counter[str] = Counter()
        self.connections = 0
        self._authkey = secrets.token_bytes(32)
        self._listener = Listener((bind, 0), authkey=self._authkey)
        host, port = self._listener.address
        self._bound = ("127.0.0.1" if host in ("0.0.0.0", "") else host), port  # where stop() wakes accept()
        self.address = LedgerAddress(host, port, self._authkey, _owner_token())
        self._lock = threading.Lock()  # one call at a time on the one connection
        self._budgets: dict[tuple[int, str, str], Budget] = {}
        self._conns: list[Connection] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._accepter = threading.Thread(target=self._accept, name="fea20k-ledger-service", daemon=True)
        self._accepter.start()
        _SERVICES[port] = self

    def budget(self, key: tuple[int, str, str], cap: float | None) -> Budget:
        """The budget of ``(round, stage key, annotator)``, made on first use from what the ledger says was spent."""
        with self._lock:
            if key not in self._budgets:
                self._budgets[key] = Budget(cap, self.ledger.spent(*key))
            return self._budgets[key]

    def stop(self) -> None:
        """Stop serving: close the listener and the workers' connections, then the ledger connection."""
        if self._stopping:
            return
        self._stopping = True
        _SERVICES.pop(self.address.port, None)
        try:  # accept() does not return when its socket is closed from another thread: wake it with a connection
            socket.create_connection(self._bound, timeout=STOP_TIMEOUT).close()
        except OSError:
            pass
        self._accepter.join(STOP_TIMEOUT)
        self._listener.close()
        for conn in list(self._conns):
            _shutdown(conn)
        for t in list(self._threads):
            t.join(STOP_TIMEOUT)
        self.ledger.close()
        if self.calls:
            logger.debug("ledger service: served %d call(s) to %d worker(s): %s", sum(self.calls.values()),
                         self.connections, dict(self.calls))

    def __enter__(self) -> LedgerService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn = self._listener.accept()
            except (OSError, EOFError, AuthenticationError) as e:  # a failed handshake ends that connection only
                if self._stopping:
                    return
                logger.debug("ledger service: refused a connection (%s)", type(e).__name__)
                continue
            if self._stopping:
                conn.close()
                return
            self._conns.append(conn)
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), name="fea20k-ledger-client", daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: Connection) -> None:
        try:
            while True:
                try:
                    method, args, kwargs = conn.recv()
                except (EOFError, OSError):
                    return
                try:
                    reply: tuple[bool, Any] = (True, self._dispatch(method, args, kwargs))
                except Exception as e:  # noqa: BLE001 - sent to the caller, which raises it there
                    reply = (False, _portable(e))
                try:
                    conn.send(reply)
                except (OSError, ValueError):
                    return
        finally:
            conn.close()

    def _dispatch(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.calls[method] += 1
        if method == "ping":
            return True
        if method in COMBINED:
            return COMBINED[method](self, *args)
        if method == "budget":
            key, cap, op, *rest = args
            if op not in BUDGET_OPS:
                raise LedgerServiceError(f"ledger service: {op!r} is not a budget operation ({sorted(BUDGET_OPS)})")
            return getattr(self.budget(tuple(key), cap), op)(*rest)
        if method not in SERVED:
            raise LedgerServiceError(f"ledger service: {method!r} is not served to workers; served: {sorted(SERVED)}")
        with self._lock:
            return getattr(self.ledger, method)(*args, **kwargs)


def _shutdown(conn: Connection) -> None:
    """Wake a thread blocked reading ``conn`` (closing the descriptor alone does not)."""
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def _portable(e: Exception) -> Exception:
    """``e`` if it survives pickling to the worker, else a LedgerServiceError naming it."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any pickling failure
        return LedgerServiceError(f"ledger service: {type(e).__name__}: {e}")


# the services this process runs, by port: the owner finds its Budget objects here
_SERVICES: dict[int, LedgerService] = {}


def service_at(address: LedgerAddress | None) -> LedgerService | None:
    """The service this process runs at ``address`` (None: another process's, or none)."""
    if address is None or not address.owned_here():
        return None
    return _SERVICES.get(address.port)


class RemoteLedger:
    """A worker's ledger: the methods of :data:`SERVED`, run by the build process's :class:`LedgerService`.

    One connection per process (opened on the first call, again after a fork), one call at a time."""

    def __init__(self, address: LedgerAddress) -> None:
        self.address = address
        self._conn: Connection | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name in SERVED:
            return lambda *args, **kwargs: self.call(name, *args, **kwargs)
        raise AttributeError(
            f"RemoteLedger has no {name!r}: a worker reaches the build's ledger only through the methods "
            f"{sorted(SERVED)} (fea20k.ledger_service.SERVED); add a Ledger method doing what you need in one call")

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            conn = self._connect()
            try:
                conn.send((method, args, kwargs))
                ok, value = conn.recv()
            except (EOFError, OSError) as e:
                self.close()
                where = f"{self.address.host}:{self.address.port}"
                raise LedgerServiceError(
                    f"the ledger service of the build at {where} went away during {method}() "
                    f"({type(e).__name__}); the build process ended or was killed: re-run the build") from None
        if not ok:
            raise value
        return value

    def ping(self) -> None:
        """Reach the service now (a worker starting up), so a node that cannot fails at once, naming the address."""
        self.call("ping")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def _connect(self) -> Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        try:
            self._conn = Client((self.address.host, self.address.port), authkey=self.address.authkey)
        except AuthenticationError:
            raise LedgerServiceError(
                f"the ledger service at {self.address.host}:{self.address.port} refused this worker's key: it serves "
                "another build (a stale stage context?); re-run the build") from None
        except (OSError, EOFError) as e:
            raise LedgerServiceError(
                f"cannot reach the build's ledger service at {self.address.host}:{self.address.port} "
                f"({type(e).__name__}: {e}); on a cluster every node must reach the build node on that port "
                "(a firewall or another network interface?)") from None
        self._pid = os.getpid()
        return self._conn


# One round trip instead of two for the annotate path's two steps per request (a client process makes hundreds of
# requests a second, each hop through the build process costs it and the build CPU time): see lookup and settle.
def _served_lookup(service: LedgerService, key: str, budget_key: tuple[int, str, str], cap: float | None,
                   est: float | None) -> tuple[dict[str, Any] | None, bool]:
    with service._lock:  # noqa: SLF001 - the service's own helper
        hit = service.ledger.cache_get(key)
    if hit is not None or est is None:
        return hit, False
    return None, service.budget(tuple(budget_key), cap).try_reserve(est)  # type: ignore[arg-type]


def _served_settle(service: LedgerService, cached: list[dict[str, Any]], calls: list[dict[str, Any]],
                   budget_key: tuple[int, str, str], cap: float | None, est: float, cost: float) -> None:
    service.budget(tuple(budget_key), cap).settle(est, cost)  # type: ignore[arg-type]
    with service._lock:  # noqa: SLF001
        service.ledger.record_replies(cached, calls)


COMBINED = {"lookup": _served_lookup, "settle": _served_settle}


def lookup(ledger: Ledger | RemoteLedger, budget: Budget | RemoteBudget, key: str,
           est: float | None) -> tuple[dict[str, Any] | None, bool]:
    """The cached reply of request ``key``; on a miss, when ``est`` is given, whether the budget reserved it (the
    request may go out). One round trip from a worker."""
    if isinstance(budget, RemoteBudget):
        return budget.ledger.call("lookup", key, budget.key, budget.cap, est)
    hit = ledger.cache_get(key)
    if hit is not None or est is None:
        return hit, False
    return None, budget.try_reserve(est)


def settle(ledger: Ledger | RemoteLedger, budget: Budget | RemoteBudget, cached: list[dict[str, Any]],
           calls: list[dict[str, Any]], est: float, cost: float) -> None:
    """A call ended: free its reservation ``est``, charge its ``cost``, then cache its reply and account its calls
    (:meth:`Ledger.record_replies`). One round trip from a worker."""
    if isinstance(budget, RemoteBudget):
        budget.ledger.call("settle", cached, calls, budget.key, budget.cap, est, cost)
        return
    budget.settle(est, cost)
    ledger.record_replies(cached, calls)


def open_ledger(path: Path, address: LedgerAddress | None) -> Ledger | RemoteLedger:
    """The ledger a process uses: the real one in the process that serves it (or with no service), the service's
    client anywhere else."""
    if address is not None and not address.owned_here():
        return RemoteLedger(address)
    return Ledger(path)


def budget_for(ledger: Ledger | RemoteLedger, address: LedgerAddress | None, key: tuple[int, str, str],
               cap: float | None) -> Budget | RemoteBudget:
    """The spending cap of ``(round, stage key, annotator)``: the service's, shared by every process reaching it,
    or (with no service) one for this process alone, starting from what the ledger says was spent."""
    if isinstance(ledger, RemoteLedger):
        return RemoteBudget(ledger, key, cap)
    service = service_at(address)
    if service is not None:
        return service.budget(key, cap)
    return Budget(cap, ledger.spent(*key))


def public_host() -> str:
    """This node's address as other nodes reach it: Ray's view when Ray runs here, else the interface the default
    route leaves by (no packet is sent), else the host name."""
    try:
        import ray

        if ray.is_initialized():
            return str(ray.util.get_node_ip_address())
    except ImportError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed; only picks the outgoing interface
            return str(s.getsockname()[0])
        except OSError:
            return socket.gethostname()


def start_service(path: Path, public: bool = False) -> LedgerService:
    """Serve the ledger at ``path``: on this host only, or (``public``) to every node, its address then the one
    other nodes reach this node at."""
    service = LedgerService(path, bind="0.0.0.0" if public else "127.0.0.1")
    if public:
        service.address = service.address.reachable_at(public_host())
    return service
