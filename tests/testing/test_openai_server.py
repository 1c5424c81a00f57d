"""The loopback server's own service model: fixed latency, at most ``max_concurrent`` requests served at once."""

from __future__ import annotations

import asyncio
import json
import time

from fea20k.testing.openai_server import OpenAIServer


def _body(i: int) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": f"request {i}"}]}).encode()


async def _post_all(url: str, n: int) -> list[int]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> int:
            async with session.post(url, data=_body(i), headers={"Content-Type": "application/json"}) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*[one(i) for i in range(n)]))


def test_at_most_max_concurrent_served_at_once_first_come_first_served() -> None:
    with OpenAIServer(latency=0.1, max_concurrent=4) as srv:
        t0 = time.monotonic()
        statuses = asyncio.run(_post_all(f"{srv.base_url}/chat/completions", 12))
        wall = time.monotonic() - t0
        log = sorted(srv.log, key=lambda e: e["t_served"])
    assert statuses == [200] * 12
    assert 0.3 <= wall < 1.0  # three rounds of four
    starts = [e["t_served"] for e in log]
    for s in starts:  # never more than four in service at any moment
        assert sum(1 for t in starts if t <= s < t + 0.1 - 1e-9) <= 4
    # a queued request starts exactly when a slot frees (latency after the start it waited on), whatever the
    # server's own event-loop lag in writing the earlier reply
    for k in range(4, 12):
        assert abs(starts[k] - (starts[k - 4] + 0.1)) < 1e-6
    by_arrival = sorted(log, key=lambda e: e["t"])
    assert [e["ordinal"] for e in by_arrival] == sorted(e["ordinal"] for e in log)
    assert all(e["t_served"] >= e["t"] - 1e-9 for e in log)
