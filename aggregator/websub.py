"""WebSub publishing: tell the hub that an output changed, so subscribers get it at once.

Feeds advertise the hub with ``rel="hub"`` (see ``publish``). After an output's bytes
change, the hub is pinged with ``hub.mode=publish`` for each changed feed URL
(WebSub §7 lets a publisher notify the hub however it likes; this form-encoded POST is
what the common hubs accept). Pings run beside publishing, never in its way: a hub that
is down costs a few retries with exponential backoff and a log line, nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import aiohttp

log = logging.getLogger("aggregator")

PING_ATTEMPTS = 5
PING_BACKOFF_SECONDS = 2.0
PING_TIMEOUT_SECONDS = 10.0


async def ping_hub(
    hub: str,
    feed_urls: Iterable[str],
    *,
    user_agent: str,
    attempts: int = PING_ATTEMPTS,
    backoff: float = PING_BACKOFF_SECONDS,
) -> bool:
    """POST one publish notification per URL; True when the hub accepted them all."""
    urls = sorted(set(feed_urls))
    if not urls:
        return True
    timeout = aiohttp.ClientTimeout(total=PING_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": user_agent}, trust_env=False) as client:
        results = await asyncio.gather(*(_ping_one(client, hub, url, attempts, backoff) for url in urls))
    return all(results)


async def _ping_one(client: aiohttp.ClientSession, hub: str, url: str, attempts: int, backoff: float) -> bool:
    problem = ""
    for attempt in range(attempts):
        try:
            async with client.post(hub, data={"hub.mode": "publish", "hub.url": url}) as response:
                status = response.status
            if 200 <= status < 300:
                return True
            problem = f"HTTP {status}"
            if 400 <= status < 500 and status != 429:
                break  # the hub refuses this request; retrying will not change its mind
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if attempt < attempts - 1:
            await asyncio.sleep(backoff * 2**attempt)
    log.warning("WebSub hub %s did not take the ping for %s: %s", hub, url, problem)
    return False
