"""Live replay against several router replicas at once: `nexussched eval --live URL1,URL2`.

Requests go to the replicas in turn, each at its own arrival time (the same schedule a single
endpoint would see), and the outcomes come back in trace order.
"""

from __future__ import annotations

import asyncio

from ..traces.types import Trace
from .live import replay_live
from .metrics import RequestOutcome


async def replay_replicas(urls: str | list[str], trace: Trace, **kw) -> list[RequestOutcome]:
    """replay_live over the comma-separated (or listed) base URLs; one URL is replay_live."""
    if isinstance(urls, str):
        urls = [u.strip() for u in urls.split(",") if u.strip()]
    if not urls:
        raise ValueError("no live endpoint URL given")
    if len(urls) == 1 or len(trace.requests) < 2:
        return await replay_live(urls[0], trace, **kw)
    reqs = trace.requests
    parts = [reqs[i :: len(urls)] for i in range(len(urls))]
    scale = kw.get("time_scale", 1.0)
    kw.pop("rate", None)  # the schedule is the trace's (rescale it before calling)

    async def one(url: str, part: list) -> list[RequestOutcome]:
        if not part:
            return []
        # replay_live times a trace from its first request: start this part's clock that late
        await asyncio.sleep((part[0].arrival - reqs[0].arrival) * scale)
        return await replay_live(url, Trace(trace.name, part, dict(trace.meta)), **kw)

    done = await asyncio.gather(*(one(u, p) for u, p in zip(urls, parts, strict=True)))
    order = {r.id: k for k, r in enumerate(reqs)}
    return sorted((o for part in done for o in part), key=lambda o: order[o.id])
