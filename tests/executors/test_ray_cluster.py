"""The Ray executor on a multi-node cluster (a head and two worker nodes of one CPU each, all on this machine): the
workers never open the ledger, they call the build's ledger service; the release equals the local executor's."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'fea20k[ray]')")
pytest.importorskip("aiohttp", reason="the loopback server needs aiohttp (dev extra)")

from ray.cluster_utils import Cluster  # noqa: E402 - needs ray

from fea20k import ledger_service  # noqa: E402
from fea20k.engine import build_round  # noqa: E402
from fea20k.ledger import LedgerOwnerError  # noqa: E402
from tests.executors.test_ray import _release_files, write_loopback, write_loopback_demo  # noqa: E402


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(2):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@ray.remote(num_cpus=0)
def _open_ledger_in_a_worker(root: str) -> str:
    """What a stage in a Ray worker gets when it opens the ledger without the service."""
    from fea20k.executors.ray import _worker_setup
    from fea20k.workspace import Workspace

    _worker_setup()
    try:
        Workspace(Path(root)).ledger  # noqa: B018 - the open is what is tested
    except LedgerOwnerError as e:
        return str(e)
    return "opened"


def test_multi_node_build_reaches_the_ledger_through_the_service(tmp_path: Path, cluster: Cluster,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from fea20k.testing.openai_server import OpenAIServer

    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    served: list[tuple[int, dict[str, int]]] = []
    stop = ledger_service.LedgerService.stop

    def counting_stop(self: ledger_service.LedgerService) -> None:
        served.append((self.connections, dict(self.calls)))
        stop(self)

    monkeypatch.setattr(ledger_service.LedgerService, "stop", counting_stop)
    demo = tmp_path / "demo"
    write_loopback_demo(demo, n=16, seed=3, chunk_size=4)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    with OpenAIServer(latency=0.005, lifetime=120) as server:
        write_loopback(demo, server.base_url)
        shutil.copytree(demo, local)
        shutil.copytree(demo, on_ray)
        build_round(local, 0)
        first = build_round(on_ray, 0, executor="ray", address=cluster.address)
        assert "annotate.draft" in first.ran
        sent = server.total
        served.clear()
        # annotate again on the cluster: every request is answered from the cache, through the service
        again = build_round(on_ray, 0, from_stage="annotate.draft", executor="ray",
                            address=cluster.address)
        assert server.total == sent  # no request reached the server twice
    draft = {s.key: s.stats for s in again.stages}["annotate.draft"]
    assert draft.counters["cache_hits"] > 0 and "calls" not in draft.counters
    workers, remote = served[0]  # annotate.draft's service: the workers' cache look-ups and budget checks
    assert workers == 3  # one actor of one CPU per node of one CPU: every node reached the service
    assert remote.get("lookup", 0) == draft.counters["cache_hits"]  # one look-up per request, all answered
    assert remote.get("budget", 0) > 0
    ray_release, local_release = _release_files(on_ray), _release_files(local)
    assert ray_release.keys() == local_release.keys() and any(k.endswith(".parquet") for k in ray_release)
    for name in ray_release:
        assert ray_release[name] == local_release[name], name
    refused = ray.get(_open_ledger_in_a_worker.remote(str(on_ray)))
    assert "worker process (FEA20K_NO_LEDGER is set)" in refused


def test_one_budget_cap_for_every_actor(tmp_path: Path, cluster: Cluster) -> None:
    """The budget is the build's, not each actor's: three actors on three nodes stop at one cap together."""
    import sqlite3

    from fea20k.errors import BudgetExceededError
    from fea20k.testing.openai_server import OpenAIServer

    cap = 0.5
    ws = tmp_path / "ws"
    write_loopback_demo(ws, n=24, seed=4, chunk_size=4)
    with OpenAIServer(latency=0.01, lifetime=120) as server:
        write_loopback(ws, server.base_url, f"price_in = 100.0\nprice_out = 100.0\nbudget_usd = {cap}\n")
        with pytest.raises(BudgetExceededError, match=r"budget cap \$0.5000 reached"):
            build_round(ws, 0, executor="ray", address=cluster.address)
    with sqlite3.connect(ws / ".fea20k" / "ledger.sqlite") as conn:
        costs = [c for (c,) in conn.execute("SELECT cost FROM calls WHERE stage = 'annotate.draft'")]
    assert costs and 0 < sum(costs) <= cap  # each actor alone would have spent up to the cap
