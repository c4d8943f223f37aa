"""Cassandra reads on the API's event loop: the driver's own asynchronous requests, no worker thread.

The online store's ``read_many_views`` is synchronous (it waits on the driver's futures), so the API would
need a worker thread per lookup: a thread hop and GIL hand-offs between the event loop, the worker and the
driver's I/O thread, ~1 ms of CPU per request on two busy cores. Here the same prepared statements are sent
with ``execute_async`` and their callbacks resolve asyncio futures (``call_soon_threadsafe``), so the loop
never blocks and no extra thread is involved. It reuses the store's codec and statements (same validation,
decoding and TTL/age rules as ``read``); anything unexpected raises, and the caller falls back to the store's
synchronous path in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pipelines.stores.online.base import ReadResult, now_micros

__all__ = ["read_many_views_async", "supports_async"]


def supports_async(store: Any) -> bool:
    return all(hasattr(store, a) for a in ("_codec", "_statements_for", "_read_requests", "_session", "_sess"))


async def read_many_views_async(store: Any, requests: Mapping[str, Sequence[tuple]], now: datetime
                                ) -> dict[str, list[ReadResult]]:
    """``store.read_many_views(requests, now)`` without blocking the event loop (Cassandra store)."""
    loop = asyncio.get_running_loop()
    now_us = now_micros(now)
    session = store._session()
    plans, pending = [], []
    for name, keys in requests.items():
        codec = store._codec(name)
        normalized = codec.keys(keys)
        found: dict = {}
        plans.append((name, codec, keys, normalized, found))
        pending += store._read_requests(store._statements_for(codec), normalized, found)
    waits = []
    for statement, key, st, found in pending:
        future = loop.create_future()

        def done(rows: Any, future: asyncio.Future = future) -> None:
            if not future.done():
                future.set_result(rows)

        def failed(exc: BaseException, future: asyncio.Future = future) -> None:
            if not future.done():
                future.set_exception(exc)

        response = session.execute_async(statement)
        response.add_callbacks(lambda rows, f=done: loop.call_soon_threadsafe(f, rows),
                               errback=lambda exc, f=failed: loop.call_soon_threadsafe(f, exc))
        waits.append((future, key, st, found))
    for future, key, st, found in waits:
        rows = await future
        if key is not None:
            if rows:
                found[key] = st.decode(rows[0])
        else:
            for row in rows:
                found[(row[0],)] = st.decode(row[1:])
    return {name: [codec.result(k, found.get(n), now_us) for k, n in zip(keys, normalized, strict=True)]
            for name, codec, keys, normalized, found in plans}
