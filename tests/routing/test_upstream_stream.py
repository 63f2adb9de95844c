"""The upstream event-stream reader: events whatever way the body is cut into network reads."""

from __future__ import annotations

import asyncio
import time

from conduit.backends.openai_compat import _sse_events


class _Content:
    """Stands in for aiohttp's StreamReader: `arrived` chunks are buffered, `later` ones come one
    per awaited read."""

    def __init__(self, arrived: list[bytes], later: list[bytes]) -> None:
        self.arrived, self.later = list(arrived), list(later)

    def read_nowait(self) -> bytes:
        return self.arrived.pop(0) if self.arrived else b""

    async def readany(self) -> bytes:
        await asyncio.sleep(0)
        return self.later.pop(0) if self.later else b""


class _Response:
    def __init__(self, content: _Content) -> None:
        self.content = content


async def _events(arrived: list[bytes], later: list[bytes]) -> list[str]:
    response = _Response(_Content(arrived, later))
    return [e async for e in _sse_events(response, 5.0, 5.0, time.monotonic() + 5)]  # type: ignore[arg-type]


BODY = 'data: {"a": "héllo"}\n\n: a comment\ndata: {"b": 2}\r\n\r\ndata: [DONE]\n\n'.encode()


def test_events_are_the_same_however_the_body_is_cut() -> None:
    whole = asyncio.run(_events([], [BODY]))
    assert whole == ['{"a": "héllo"}', '{"b": 2}', "[DONE]"]
    for cut in range(1, len(BODY)):  # every split point, multi-byte characters included
        head, tail = BODY[:cut], BODY[cut:]
        assert asyncio.run(_events([head], [tail])) == whole
        assert asyncio.run(_events([], [head, tail])) == whole
    one_byte_a_read = [BODY[i : i + 1] for i in range(len(BODY))]
    assert asyncio.run(_events(one_byte_a_read[:7], one_byte_a_read[7:])) == whole


def test_a_last_line_without_its_newline_still_counts() -> None:
    assert asyncio.run(_events([b"data: x\n", b"data: y"], [])) == ["x", "y"]


def test_a_silent_upstream_times_out() -> None:
    class _Silent(_Content):
        async def readany(self) -> bytes:
            await asyncio.sleep(10)
            return b""

    async def scenario() -> None:
        response = _Response(_Silent([b"data: x\n"], []))
        events = _sse_events(response, 0.05, 0.05, time.monotonic() + 5)  # type: ignore[arg-type]
        assert await anext(events) == "x"
        try:
            await anext(events)
        except TimeoutError:
            return
        raise AssertionError("no timeout")

    asyncio.run(scenario())
