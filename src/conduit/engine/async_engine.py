"""The engine core in its own process, with an asyncio front that streams each request's outputs.

The event loop only pickles small messages: model work never holds the server's GIL, so a busy
engine does not slow /healthz. One duplex pipe: commands go down (add, abort, shutdown), and
after every step the outputs and a stats snapshot come up. A reader thread dispatches them to
per-request asyncio queues. If the process dies, the pipe closes and every request in flight
gets an `EngineDeadError` at once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from conduit.engine.core import EngineConfig, EngineStats, RequestOutput
from conduit.engine.sampling import SamplingParams


class EngineDeadError(RuntimeError):
    pass


@dataclass
class EngineArgs:
    source: str = "smollm2"
    dtype: str = "auto"
    max_model_len: int | None = None
    load_format: str = "gguf"
    quantization: str = "auto"
    config: EngineConfig = field(default_factory=EngineConfig)
    num_threads: int | None = None
    device: str = "cpu"  # "cpu", "cuda" or "auto"


@dataclass
class LatencyHistogram:
    """Cumulative buckets like Prometheus's, kept without any metrics library."""

    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self):
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0)


def _engine_main(conn, args: EngineArgs) -> None:
    """The engine process: load, report ready, then loop: read commands, step, send outputs."""
    import torch

    from conduit.engine.core import EngineCore
    from conduit.engine.loader import load_model

    try:
        if args.num_threads:
            torch.set_num_threads(args.num_threads)
        loaded = load_model(args.source, args.dtype, args.max_model_len, args.quantization,
                            args.load_format, args.device)
        core = EngineCore(loaded, args.config)
    except Exception as exc:  # noqa: BLE001 - reported to the front, which raises it
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", {"max_model_len": core.max_model_len, "model_name": core.model_name}))
    while True:
        # Idle: block on the pipe. Busy: take whatever commands arrived, then step.
        while not core.has_unfinished() or conn.poll():
            try:
                command, *payload = conn.recv()
            except EOFError:  # the front is gone: nobody to serve
                return
            if command == "shutdown":
                return
            if command == "add":
                request_id, prompt_ids, params, priority = payload
                try:
                    core.add_request(request_id, prompt_ids, params, priority)
                except Exception as exc:  # noqa: BLE001 - a bad request fails alone
                    conn.send(("request_failed", request_id, f"{type(exc).__name__}: {exc}"))
            elif command == "abort":
                core.abort(payload[0])
        try:
            outputs = core.step()
        except Exception as exc:  # noqa: BLE001 - fail what was running, keep serving
            message = f"{type(exc).__name__}: {exc}"
            for request_id in list(core.requests):
                core.abort(request_id)
                conn.send(("request_failed", request_id, message))
            continue
        conn.send(("outputs", outputs, core.stats()))


class AsyncEngine:
    def __init__(self, args: EngineArgs):
        self.args = args
        self.max_model_len = 0
        self.model_name = ""
        self.stats = EngineStats()
        self.ttft = LatencyHistogram(_LATENCY_BUCKETS)
        self.itl = LatencyHistogram(_LATENCY_BUCKETS)
        self.e2e = LatencyHistogram(_LATENCY_BUCKETS)
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._send_lock = threading.Lock()
        self._dead: str | None = None
        self._process = None
        self._conn = None
        self._reader: threading.Thread | None = None

    @property
    def process(self):
        return self._process

    async def start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_engine_main, args=(child, self.args),
                                    name="conduit-engine", daemon=True)
        self._process.start()
        child.close()  # only the engine holds it now: its death closes the pipe
        self._conn = parent
        try:
            kind, info = await asyncio.to_thread(parent.recv)
        except EOFError:
            raise EngineDeadError("The engine process exited while loading.") from None
        if kind == "failed":
            self._process.join(5)
            raise RuntimeError(f"The engine failed to load: {info}")
        self.max_model_len, self.model_name = info["max_model_len"], info["model_name"]
        self._reader = threading.Thread(target=self._read, name="engine-reader", daemon=True)
        self._reader.start()

    async def close(self) -> None:
        if self._process is None:
            return
        if self._dead is None:
            self._send(("shutdown",))
        await asyncio.to_thread(self._process.join, 10)
        if self._process.is_alive():
            self._process.kill()
            await asyncio.to_thread(self._process.join, 5)
        self._fail_all("The engine was shut down.")

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams, priority: int = 0,
        request_id: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Outputs of all choices, in order, until every choice has finished. Closing the
        iterator early aborts the request in the engine."""
        request_id = request_id or uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = (asyncio.get_running_loop(), queue)
        start = last = time.monotonic()
        remaining = params.n
        finished = False
        try:
            if self._dead is not None:
                raise EngineDeadError(self._dead)
            self._send(("add", request_id, list(prompt_ids), params, priority))
            while remaining:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                now = time.monotonic()
                (self.ttft if last == start else self.itl).observe(now - last)
                last = now
                remaining -= item.finish_reason is not None
                yield item
            finished = True
            self.e2e.observe(time.monotonic() - start)
        finally:
            self._queues.pop(request_id, None)
            if not finished and self._dead is None:
                self._send(("abort", request_id))

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            try:
                self._conn.send(message)
            except (OSError, EOFError) as exc:
                raise EngineDeadError(f"The engine process is gone: {exc}") from exc

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                code = self._process.exitcode if self._process else None
                self._fail_all(f"The engine process exited (code {code}).")
                return
            if message[0] == "outputs":
                _, outputs, self.stats = message
                for out in outputs:
                    self._deliver(out.request_id, out)
            elif message[0] == "request_failed":
                _, request_id, text = message
                self._deliver(request_id, RuntimeError(f"Engine error: {text}"))

    def _deliver(self, request_id: str, item) -> None:
        target = self._queues.get(request_id)
        if target is not None:  # else the consumer already left (its abort is on the way)
            loop, queue = target
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # that event loop has closed
                pass

    def _fail_all(self, reason: str) -> None:
        self._dead = reason
        for request_id in list(self._queues):
            self._deliver(request_id, EngineDeadError(reason))
