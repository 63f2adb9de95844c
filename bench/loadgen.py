"""A small HTTP/1.1 load generator for bench/gateway.py: open loop at a fixed rate, or closed loop.

    python bench/loadgen.py open   --url http://127.0.0.1:8000/v1/chat/completions --rate 200 --seconds 20
    python bench/loadgen.py closed --url ... --connections 32 --seconds 15

`open`: requests leave on a fixed schedule (rate per second) whatever the server does, over a pool
of keep-alive connections (pre-opened; more are opened when all are busy, up to a limit, after which
requests wait for a free one). A slow server never delays the schedule (no coordinated omission):
a request's latency runs from the moment it is sent, waiting for a free connection or opening a new
one included, to the last byte of the response. The event loop's timer wakes up to ~1 ms late;
that slop is the generator's, not the server's, so it is left out and reported apart as
`send_lateness_p99_ms`. `closed`: N connections, each sending its next request as soon as the last
one answered (the fallback for saturation when wrk is missing).

Every request body is unique (a counter in the prompt) and deterministic (temperature 0), so a
gateway's exact-cache lookup runs and misses. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import string
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    path: str
    model: str
    key: str | None

    @classmethod
    def parse(cls, url: str, model: str, key: str | None) -> Target:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/", model, key)


# `--questions asked|reworded`: question number n as a user might ask it, or the same question in
# other words (a semantic-cache hit). 40 x 50 x 60 = 120,000 distinct questions.
_VERBS = ["export", "import", "archive", "rename", "share", "print", "download", "upload", "sort", "filter",
          "merge", "split", "copy", "move", "tag", "sign", "scan", "back up", "restore", "translate",
          "encrypt", "compress", "preview", "search", "label", "schedule", "approve", "review", "publish",
          "sync", "convert", "duplicate", "annotate", "bookmark", "pin", "group", "rotate", "crop", "flag", "clean up"]
_OBJECTS = ["invoices", "receipts", "contracts", "photos", "videos", "playlists", "spreadsheets", "slides",
            "notes", "calendars", "contacts", "emails", "chat logs", "recipes", "maps", "tickets", "reports",
            "budgets", "timesheets", "résumés", "certificates", "passwords", "bookmarks", "podcasts",
            "audiobooks", "course notes", "lab results", "tax forms", "pay slips", "floor plans", "sketches",
            "diagrams", "meeting minutes", "project plans", "support cases", "shipping labels", "warranties",
            "manuals", "subtitles", "fonts", "icons", "logos", "templates", "surveys", "quizzes", "forms",
            "newsletters", "blog drafts", "price lists", "inventory sheets"]
_PLACES = ["on the mobile app", "on the website", "in the desktop client", "from my tablet",
           "on a Chromebook", "on Linux", "on macOS", "on Windows", "from the command line", "through the API",
           "in offline mode", "while travelling", "on a shared account", "for my whole team", "for one client",
           "every Monday", "at the end of the month", "before the deadline", "in bulk", "one at a time",
           "without losing comments", "with their history", "into a single folder", "by date", "by size",
           "by owner", "in the old layout", "in dark mode", "with a screen reader", "on a slow connection",
           "from an archive", "after a reinstall", "in a new workspace", "for an auditor", "for a new hire",
           "in another language", "as PDF", "as CSV", "as a zip file", "to cloud storage", "to a USB stick",
           "to my printer", "to a colleague", "to a shared drive", "with a password", "with watermarks",
           "in high resolution", "in grayscale", "on a schedule", "automatically", "by hand", "in a browser",
           "inside a team channel", "from an email", "in a sandbox", "for a trial account",
           "for a closed project", "for last year", "for this quarter", "for a deleted user"]


def word_tag() -> str:
    """A random tag of letters: hex strings in a prompt raise the injection detector's score (it
    has seen many encoded attacks), and a benchmark's traffic should look like ordinary chat."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(6))


def question(number: int, reworded: bool) -> str:
    verb = _VERBS[number % len(_VERBS)]
    rest, number = _OBJECTS[number // len(_VERBS) % len(_OBJECTS)], number // (len(_VERBS) * len(_OBJECTS))
    place = _PLACES[number % len(_PLACES)]
    return f"How {'can' if reworded else 'do'} I {verb} my {rest} {place}?"


class Requests:
    """Pre-rendered request bytes; only the counter in the prompt changes."""

    def __init__(self, target: Target, tag: str, distinct: int | None = None, questions: str = "plain",
                 offset: int = 0) -> None:
        auth = f"authorization: Bearer {target.key}\r\n" if target.key else ""
        self._head = (f"POST {target.path} HTTP/1.1\r\nhost: {target.host}:{target.port}\r\n"
                      f"content-type: application/json\r\n{auth}content-length: ").encode()
        self._model = json.dumps(target.model)
        self._tag = tag
        self._distinct = distinct  # prompts repeat after this many (cache hits), else never
        self._questions = questions
        self._counter = offset

    def next(self) -> bytes:
        self._counter += 1
        number = (self._counter - 1) % self._distinct + 1 if self._distinct else self._counter  # from 1
        if self._questions == "plain":
            content = f"Write a one-line greeting for order {number} in batch {self._tag}."
        else:
            content = question(number, self._questions == "reworded")
        body = (f'{{"model":{self._model},"messages":[{{"role":"user","content":{json.dumps(content)}}}],'
                f'"temperature":0,"max_tokens":16}}').encode()
        return self._head + str(len(body)).encode() + b"\r\n\r\n" + body


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, target: Target) -> Connection:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> tuple[int, str | None]:
        """Send one request, read the whole response; returns the status code and the
        `x-conduit-cache` header, if any."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if "content-length" in headers:
            await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:  # no length: the body runs to the end of the connection
            await self.reader.read()
            raise ConnectionResetError("response without a length")
        if headers.get("connection") == "close":
            raise ConnectionResetError("server closed the connection")
        return status, headers.get("x-conduit-cache")

    def close(self) -> None:
        self.writer.close()


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    lateness_ms: list[float] = field(default_factory=list)  # how late the generator itself sent
    statuses: dict[int, int] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)  # x-conduit-cache value -> answers
    failures: int = 0
    connections_opened: int = 0

    def summary(self, seconds: float) -> dict[str, object]:
        ordered = sorted(self.latencies_ms)
        ok = self.statuses.get(200, 0)
        return {
            "requests": len(ordered), "ok": ok, "statuses": {str(k): v for k, v in self.statuses.items()},
            "cache": dict(self.cache),
            "failures": self.failures, "seconds": round(seconds, 3), "rps": round(ok / seconds, 1) if seconds else 0,
            "connections_opened": self.connections_opened,
            "send_lateness_p99_ms": _percentile(sorted(self.lateness_ms), 99),
            "p50_ms": _percentile(ordered, 50), "p90_ms": _percentile(ordered, 90),
            "p99_ms": _percentile(ordered, 99), "max_ms": ordered[-1] if ordered else None,
            "mean_ms": sum(ordered) / len(ordered) if ordered else None,
        }


def _percentile(ordered: list[float], p: float) -> float | None:
    if not ordered:
        return None
    rank = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return round(ordered[rank], 3)


class Pool:
    """Keep-alive connections: idle ones are reused, new ones opened up to `limit`, then requests
    wait (and the wait counts in their latency)."""

    def __init__(self, target: Target, tally: Tally, limit: int) -> None:
        self._target, self._tally, self._limit = target, tally, limit
        self._idle: asyncio.Queue[Connection] = asyncio.Queue()
        self._opened = 0

    async def fill(self, size: int) -> None:
        for connection in await asyncio.gather(*(self._open() for _ in range(size))):
            self._idle.put_nowait(connection)

    async def _open(self) -> Connection:
        self._opened += 1
        self._tally.connections_opened += 1
        return await Connection.open(self._target)

    async def _acquire(self) -> Connection:
        if not self._idle.empty() or self._opened >= self._limit:
            return await self._idle.get()
        return await self._open()

    async def send(self, request: bytes, scheduled: float, record: bool) -> None:
        since = time.perf_counter()
        if record:
            self._tally.lateness_ms.append((since - scheduled) * 1000)
        connection = await self._acquire()
        try:
            status, cache = await connection.exchange(request)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            connection.close()
            self._opened -= 1
            if record:
                self._tally.failures += 1
            return
        self._idle.put_nowait(connection)
        if record:
            self._tally.latencies_ms.append((time.perf_counter() - since) * 1000)
            self._tally.statuses[status] = self._tally.statuses.get(status, 0) + 1
            if cache is not None:
                self._tally.cache[cache] = self._tally.cache.get(cache, 0) + 1

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()


async def open_loop(target: Target, rate: float, seconds: float, warmup_s: float, connections: int,
                    max_connections: int, requests: Requests) -> dict:
    tally = Tally()
    pool = Pool(target, tally, max(connections, max_connections))
    await pool.fill(connections)
    total = int((warmup_s + seconds) * rate)
    warm = int(warmup_s * rate)
    tasks: set[asyncio.Task] = set()
    start = time.perf_counter() + 0.05
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(pool.send(requests.next(), scheduled, record=i >= warm))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    pool.close()
    result = tally.summary(seconds)
    result.update(mode="open", target_rate=rate)
    return result


async def closed_loop(target: Target, connections: int, seconds: float, warmup_s: float, requests: Requests,
                      count: int | None = None) -> dict:
    """`count`: stop after that many requests (a cache's prefill) instead of after `seconds`."""
    tally = Tally()
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + seconds
    sent = 0

    async def worker() -> None:
        nonlocal sent
        pool = Pool(target, tally, 1)
        await pool.fill(1)
        while (now := time.perf_counter()) < stop_at and (count is None or sent < count):
            sent += 1
            await pool.send(requests.next(), now, record=now >= measure_from)
        pool.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    result = tally.summary(seconds)
    result.update(mode="closed", connections=connections)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["open", "closed"])
    parser.add_argument("--url", required=True, help="Full URL of the endpoint, e.g. .../v1/chat/completions")
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--key", default=None, help="Bearer key, if the target needs one.")
    parser.add_argument("--rate", type=float, default=200.0, help="open: requests per second.")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0, help="Seconds sent but not recorded first.")
    parser.add_argument("--connections", type=int, default=32, help="Opened up front (closed: the load).")
    parser.add_argument("--max-connections", type=int, default=256, help="open: most connections at once.")
    parser.add_argument("--distinct", type=int, default=None,
                        help="Cycle over this many prompts (repeats: cache hits) instead of all unique ones.")
    parser.add_argument("--tag", default=None, help="The prompts' tag: the same tag, the same prompts.")
    parser.add_argument("--count", type=int, default=None, help="closed: stop after this many requests.")
    parser.add_argument("--questions", choices=["plain", "asked", "reworded"], default="plain",
                        help="plain: 'Write a one-line greeting for order <n> in batch <tag>.'; "
                             "asked: a generated question n; reworded: question n in other words "
                             "(a semantic-cache hit).")
    parser.add_argument("--offset", type=int, default=0, help="Number the prompts from offset + 1.")
    args = parser.parse_args()
    target = Target.parse(args.url, args.model, args.key)
    requests = Requests(target, args.tag or word_tag(), args.distinct, args.questions, args.offset)
    if args.mode == "open":
        result = asyncio.run(open_loop(target, args.rate, args.seconds, args.warmup, args.connections,
                                       args.max_connections, requests))
    else:
        result = asyncio.run(closed_loop(target, args.connections, args.seconds, args.warmup, requests, args.count))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
