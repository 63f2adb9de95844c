"""Operator events (budget warnings, guard flags for review): logged, and POSTed to a webhook in
the background when one is configured. A failing webhook is logged, never the request's problem."""

from __future__ import annotations

import asyncio
import logging

import httpx

log = logging.getLogger("conduit.events")


class EventSink:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client
        self._posts: set[asyncio.Task] = set()

    def emit(self, event: dict, webhook_url: str | None) -> None:
        log.warning("%s %s", event.get("event"), event)
        if webhook_url:
            task = asyncio.create_task(self._post(webhook_url, event))
            self._posts.add(task)
            task.add_done_callback(self._posts.discard)

    async def _post(self, url: str, event: dict) -> None:
        try:
            (await self._client.post(url, json=event, timeout=10.0)).raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("webhook %s failed for %s: %s", url, event.get("event"), exc)

    async def close(self) -> None:
        """Wait for the posts under way (shutdown: nothing lost)."""
        await asyncio.gather(*self._posts, return_exceptions=True)
