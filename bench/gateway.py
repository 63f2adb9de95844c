"""Gateway benchmark: what Conduit adds on top of an upstream, against LiteLLM's proxy in the same run.

    python bench/gateway.py                   # upstream direct vs through Conduit
    python bench/gateway.py --peer litellm    # ... and through LiteLLM's proxy (installed on first use)
    python bench/gateway.py --profile         # ... then py-spy Conduit while it is saturated
    python bench/gateway.py --conduit-ref HEAD~1           # another commit's src/, to compare
    python bench/gateway.py --conduit-src /tmp/patched/src  # a patched copy (PYTHONPATH)
    python bench/gateway.py --conduit-config 'guards: {injection: {action: allow}}'  # YAML added to Conduit's

A fast fake OpenAI-compatible upstream (bench/fast_upstream.py) runs in its own process. The same
chat requests go (a) straight to it, (b) through `conduit serve` (an `openai` deployment pointing
at it; a tenant key, so auth looks the key up, with request, token and concurrency limits far
above the load, so every request takes its share of each; each request deterministic, temperature 0, and
unique, a counter in the prompt, so the exact-cache lookup runs and misses; the request log on;
the default log level) and (c) with --peer litellm, through LiteLLM's proxy for the same upstream.

Per target, from load generators in other processes:
- saturation: wrk, 32 keep-alive connections (closed loop): requests per second;
- latency at fixed rates (open loop, bench/loadgen.py): p50/p99. Conduit's *added* latency is its
  figure minus the direct one at the same rate. A target whose saturation throughput is below
  1.1x a rate is not run at that rate (it could only queue) and shows as overloaded;
- the server's CPU time per request (all its processes and threads), which a shared, noisy
  machine disturbs far less than throughput, and how many upstream connections it opened per
  request (the fake upstream counts them).

Everything listens on loopback. Every process started here is stopped at the end, on Ctrl-C and
on failure. Prints a table; writes bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from loadgen import word_tag  # bench/loadgen.py, next to this file
from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results" / "gateway.json"
LITELLM_VENV = BENCH / ".venv-litellm"
MODEL = "bench-model"
PATH = "/v1/chat/completions"
console = Console(width=None if sys.stdout.isatty() else 150)  # a wide table also in logs


# ---------------------------------------------------------------- processes


class Processes:
    """Children started in their own process groups, so stopping one stops what it spawned."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        with log.open("wb") as handle:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                       env=env, cwd=cwd, start_new_session=True)
        self._running.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout_s: float = 15.0) -> None:
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        _signal_group(process, signal.SIGKILL)  # anything it left behind in its group
        self._running.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self._running)):
            self.stop(process)


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)  # the group id is the child's pid (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every live process in a process group, threads included."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # after the name: state, ppid, pgrp, ...; utime, stime at 11, 12
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_quiet(pgid: int, busy_share: float = 0.05, timeout_s: float = 1800.0) -> float:
    """Wait until a process group uses less than `busy_share` of a core over a second (the request
    log's writer has caught up after a fill, say); returns the seconds waited."""
    started = time.perf_counter()
    before = group_cpu_seconds(pgid)
    while time.perf_counter() - started < timeout_s:
        time.sleep(1.0)
        now = group_cpu_seconds(pgid)
        if now - before < busy_share:
            break
        before = now
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}; its log:\n"
                               + log.read_text(errors="replace")[-2000:])
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:.0f} s; see {log}")


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _post(url: str, body: dict[str, Any], key: str | None) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), {"error": exc.read().decode(errors="replace")}


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    base_url: str  # e.g. http://127.0.0.1:9000; the chat endpoint is base_url + PATH
    key: str | None
    pid: int  # its process group: CPU time is counted over the whole group
    notes: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.base_url + PATH


def _body(prompt: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 16}


def _check(target: Target) -> dict[str, str]:
    """One request must work and carry a usage block. Returns the response headers."""
    prompt = f"Write a one-line greeting for the check of batch {word_tag()}."
    status, headers, body = _post(target.url, _body(prompt), target.key)
    if status != 200 or "usage" not in body:
        raise RuntimeError(f"{target.name}: a test request answered {status}: {body}")
    return headers


def start_upstream(procs: Processes, workdir: Path, chunks: int) -> Target:
    port = _free_port()
    log = workdir / "upstream.log"
    argv = [sys.executable, str(BENCH / "fast_upstream.py"), "--port", str(port), "--chunks", str(chunks)]
    process = procs.start(argv, log)
    _wait_http(f"http://127.0.0.1:{port}/v1/models", process, log)
    target = Target("upstream (direct)", f"http://127.0.0.1:{port}", None, process.pid,
                    [f"bench/fast_upstream.py: raw asyncio HTTP/1.1, {chunks} content event(s) per stream"])
    _check(target)
    return target


def conduit_source(ref: str, workdir: Path) -> str:
    """The `src` folder of a commit of this repository, for --conduit-ref (compare before/after)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], capture_output=True, check=True)
    dest = workdir / f"conduit-{re.sub(r'[^A-Za-z0-9._-]', '_', ref)}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return str(dest / "src")


def conduit_supports_workers(env: dict[str, str]) -> bool:
    help_text = subprocess.run([sys.executable, "-m", "conduit.cli", "serve", "--help"], check=False,
                               capture_output=True, text=True, env={**env, "COLUMNS": "200"}).stdout
    return "--workers" in help_text


BENCH_KEY_LIMITS = ["--rpm", "100000000", "--tpm", "10000000000", "--max-concurrent", "4096"]


def start_conduit(procs: Processes, workdir: Path, upstream: Target, workers: int, source: str | None,
                  extra_config: str = "") -> Target:
    port = _free_port()
    home = workdir / "conduit"
    home.mkdir()
    config = home / "conduit.yaml"
    config.write_text(
        f"data_dir: {home / 'data'}\n"
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        "models:\n"
        f"  - name: {MODEL}\n"
        "    deployments:\n"
        f"      - {{backend: openai, id: fake-0, base_url: '{upstream.base_url}/v1', upstream_model: fake}}\n"
        + extra_config
    )
    # Only this configuration: no CONDUIT_* variable of the calling shell leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
    env["CONDUIT_CONFIG"] = str(config)
    if source is not None:
        env["PYTHONPATH"] = source
    command = [sys.executable, "-m", "conduit.cli"]
    # Limits far above what the benchmark sends: every request takes its share of each (a request
    # bucket, a token bucket charged with the prompt's tokens, a concurrency slot) and none refuses.
    created = subprocess.run([*command, "keys", "create", "--tenant", "bench", *BENCH_KEY_LIMITS], env=env,
                             cwd=home, capture_output=True, text=True, check=True)
    key = created.stdout.strip().splitlines()[-1]
    argv = [*command, "serve"]
    notes = ["tenant key (auth looks it up)", "key limits on: requests, tokens (prompt counted first), concurrency",
             "exact cache on, every lookup misses", "request log on (SQLite)",
             "log level info, access log off (the defaults)"]
    if extra_config:
        notes.append(f"configuration added: {extra_config.strip()}")
    if source is not None:
        notes.append(f"source: {source}")
    if workers > 1:
        if conduit_supports_workers(env):
            argv += ["--workers", str(workers)]
            notes.append(f"{workers} workers")
        else:
            notes.append(f"--workers {workers} asked, but `conduit serve` has no --workers option: 1 process")
    log = home / "serve.log"
    process = procs.start(argv, log, env=env, cwd=home)
    _wait_http(f"http://127.0.0.1:{port}/readyz", process, log)
    target = Target("Conduit", f"http://127.0.0.1:{port}", key, process.pid, notes)
    _check(target)
    # The cache lookup really runs: the same deterministic request a second time is a hit.
    probe = _body(f"Write a one-line greeting for the cache probe of batch {word_tag()}.")
    verdicts = [_post(target.url, probe, key)[1].get("x-conduit-cache") for _ in range(2)]
    if verdicts != ["miss", "hit"]:
        raise RuntimeError(f"Conduit's exact cache did not answer miss then hit: {verdicts}")
    return target


def ensure_litellm(reinstall: bool) -> Path:
    """LiteLLM's proxy in its own virtual environment under bench/ (installed on first use)."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists() and not reinstall:
        return binary
    console.print(f"Installing litellm[proxy] into {LITELLM_VENV} (a minute or two)...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)], check=True)
    (LITELLM_VENV / ".gitignore").write_text("*\n")  # keep git status clean
    subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"], check=True)
    return binary


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                         check=False, capture_output=True, text=True)
    return out.stdout.strip() or None


def start_litellm(procs: Processes, workdir: Path, upstream: Target, reinstall: bool) -> Target:
    binary = ensure_litellm(reinstall)
    port = _free_port()
    home = workdir / "litellm"
    home.mkdir()
    key = f"sk-bench-{secrets.token_hex(8)}"
    config = home / "config.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        "      model: openai/fake\n"
        f"      api_base: {upstream.base_url}/v1\n"
        "      api_key: sk-fake\n"
        "general_settings:\n"
        f"  master_key: {key}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    # Offline: the bundled cost map instead of a download; no telemetry; no database.
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "DO_NOT_TRACK": "1"}
    env.pop("DATABASE_URL", None)
    log = home / "litellm.log"
    argv = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    process = procs.start(argv, log, env=env, cwd=home)
    _wait_http(f"http://127.0.0.1:{port}/health/liveliness", process, log, timeout_s=180)
    notes = ["master key (its virtual keys need Postgres)", "no cache, no database", "1 worker, default logging"]
    target = Target(f"LiteLLM {litellm_version() or ''}".strip(), f"http://127.0.0.1:{port}", key, process.pid,
                    notes)
    _check(target)
    return target


# ---------------------------------------------------------------- load


WRK_SCRIPT = """-- POST a unique, deterministic chat request each time (a counter in the prompt).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{auth}
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local counter = 0
local head = '{{"model":"{model}","messages":[{{"role":"user","content":"Write a one-line greeting for order '
local tail = ' in batch {tag}."}}],"temperature":0,"max_tokens":16}}'
function request()
  counter = counter + 1
  return wrk.format(nil, nil, nil, head .. (tid or 0) .. "-" .. counter .. tail)
end
"""


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        console.print("Installing wrk with apt-get...")
        quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run(["apt-get", "update"], check=False, **quiet)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, **quiet)
    return shutil.which("wrk")


def find_py_spy() -> str | None:
    sibling = Path(sys.executable).parent / "py-spy"
    return str(sibling) if sibling.exists() else shutil.which("py-spy")


def _seconds(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    def find(pattern: str) -> re.Match | None:
        return re.search(pattern, output, re.MULTILINE)

    result: dict[str, Any] = {}
    if m := find(r"^\s*(\d+) requests in ([\d.]+)(\w+)"):
        result["requests"], result["seconds"] = int(m[1]), round(_seconds(m[2], m[3]), 2)
    if m := find(r"^Requests/sec:\s+([\d.]+)"):
        result["rps"] = float(m[1])
    for p in ("50", "99"):
        if m := find(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\b"):
            result[f"p{p}_ms"] = round(_seconds(m[1], m[2]) * 1000, 3)
    m = find(r"Non-2xx or 3xx responses:\s+(\d+)")
    result["non_2xx"] = int(m[1]) if m else 0
    m = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    result["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    return result


class Meter:
    """Server CPU time and upstream connections over one measurement."""

    def __init__(self, target: Target, upstream: Target) -> None:
        self._target, self._stats_url = target, upstream.base_url + "/stats"

    def __enter__(self) -> Self:
        self._cpu = group_cpu_seconds(self._target.pid)
        self._stats = _get_json(self._stats_url)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_s = group_cpu_seconds(self._target.pid) - self._cpu
        stats = _get_json(self._stats_url)
        self.upstream_connections = stats["connections"] - self._stats["connections"]
        self.upstream_requests = stats["requests"] - self._stats["requests"]

    def annotate(self, result: dict[str, Any], requests: int) -> None:
        result["server_cpu_ms_per_request"] = round(1000 * self.cpu_s / requests, 3) if requests else None
        if self.upstream_requests:
            result["upstream_connections_per_request"] = round(self.upstream_connections / self.upstream_requests, 3)


def saturate(target: Target, upstream: Target, wrk: str | None, workdir: Path, args: argparse.Namespace,
             profile_to: Path | None = None) -> dict[str, Any]:
    """Closed loop: `connections` keep-alive connections, each sending as soon as answered."""
    if wrk is None:  # the Python generator is far slower than wrk: the results say which was used
        _loadgen(target, "closed", args.warmup_s, 0, connections=args.connections)
        with Meter(target, upstream) as meter:
            result = _loadgen(target, "closed", args.saturation_s, 0, connections=args.connections)
        meter.annotate(result, result["requests"])
        result["tool"] = "bench/loadgen.py closed loop (wrk missing)"
        return result
    script = workdir / f"wrk-{secrets.token_hex(3)}.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {target.key}"' if target.key else ""

    def wrk_run(seconds: float, tag: str) -> str:
        script.write_text(WRK_SCRIPT.format(auth=auth, model=MODEL, tag=f"{tag} {word_tag()}"))
        argv = [wrk, "-t", str(args.wrk_threads), "-c", str(args.connections), "-d", f"{seconds:g}s", "--latency",
                "--timeout", "30s", "-s", str(script), target.url]
        run = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=seconds + 120)
        if run.returncode != 0:
            raise RuntimeError(f"wrk failed on {target.name}: {run.stderr or run.stdout}")
        return run.stdout

    wrk_run(args.warmup_s, "warmup")
    spy = None
    if profile_to is not None:
        spy = subprocess.Popen([find_py_spy() or "py-spy", "record", "--pid", str(target.pid), "--rate", "100",
                                "--duration", f"{max(1, int(args.saturation_s) - 1)}", "--gil", "--threads",
                                "--format", "raw", "--output", str(profile_to)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with Meter(target, upstream) as meter:
            result = parse_wrk(wrk_run(args.saturation_s, "measured"))
    finally:
        if spy is not None:
            _, spy_errors = spy.communicate(timeout=60)
            if spy.returncode != 0:  # say why, rather than a run without its profile
                console.print(f"[yellow]py-spy failed ({spy.returncode}):[/yellow] {spy_errors.strip()[-500:]}")
    meter.annotate(result, result.get("requests", 0))
    result.update(tool=f"wrk -t{args.wrk_threads} -c{args.connections}", connections=args.connections)
    time.sleep(args.pause_s)  # let request-log batches and connection teardown settle
    return result


def _loadgen(target: Target, mode: str, seconds: float, warmup_s: float, **options: Any) -> dict[str, Any]:
    argv = [sys.executable, str(BENCH / "loadgen.py"), mode, "--url", target.url, "--model", MODEL,
            "--seconds", str(seconds), "--warmup", str(warmup_s)]
    if target.key:
        argv += ["--key", target.key]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    run = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=seconds + warmup_s + 300)
    if run.returncode != 0:
        raise RuntimeError(f"load generator failed on {target.name}: {run.stderr[-2000:]}")
    return json.loads(run.stdout)


def latency(target: Target, upstream: Target, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    with Meter(target, upstream) as meter:
        result = _loadgen(target, "open", args.latency_s, args.warmup_s, rate=rate, connections=args.connections)
    meter.annotate(result, round(rate * (args.latency_s + args.warmup_s)))  # CPU covers the warm-up too
    time.sleep(args.pause_s)
    return result


# ---------------------------------------------------------------- profile


def summarise_profile(path: Path, top: int = 15) -> list[tuple[str, float]]:
    """Inclusive share of GIL-holding samples per Conduit function (py-spy raw format)."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        names = {re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")[1:]}
        for name in names:
            if "conduit/" in name and "cli.py" not in name:
                inclusive[name] += int(count)
    return [(name, 100 * n / total) for name, n in inclusive.most_common(top)] if total else []


# ---------------------------------------------------------------- report


@dataclass
class TargetResult:
    name: str
    notes: list[str]
    saturation: dict[str, Any]
    latency: dict[str, dict[str, Any] | None]  # by rate; None: overloaded, not run


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def report(results: list[TargetResult], rates: list[float], meta: dict[str, Any]) -> dict[str, Any]:
    direct = results[0]
    summary: dict[str, Any] = {"saturation_rps": {}, "server_cpu_ms_per_request": {}, "added_latency_ms": {}}
    saturation = Table(title=f"Saturation: wrk, {meta['connections']} connections — {meta['machine']}",
                       title_justify="left")
    for column in ("target", "req/s", "p50 / p99 ms", "server CPU ms / req", "upstream conn / req"):
        saturation.add_column(column, justify="left" if column == "target" else "right")
    for result in results:
        sat = result.saturation
        summary["saturation_rps"][result.name] = sat.get("rps")
        summary["server_cpu_ms_per_request"][result.name] = sat.get("server_cpu_ms_per_request")
        conns = "" if result is direct else _fmt(sat.get("upstream_connections_per_request"))
        latency_text = f"{_fmt(sat.get('p50_ms'))} / {_fmt(sat.get('p99_ms'))}"
        saturation.add_row(result.name, _fmt(sat.get("rps"), 0), latency_text,
                           _fmt(sat.get("server_cpu_ms_per_request")), conns)
    console.print(saturation)
    fixed = Table(title="Latency at fixed rates: open loop (bench/loadgen.py)", title_justify="left")
    for column in ("rate req/s", "target", "p50 / p99 ms", "added p50 / p99 ms", "server CPU ms / req"):
        fixed.add_column(column, justify="left" if column == "target" else "right")
    for rate in rates:
        base = direct.latency.get(str(rate))
        for result in results:
            mine = result.latency.get(str(rate))
            if mine is None:
                fixed.add_row(f"{rate:g}", result.name, "overloaded: not run", "", "")
                continue
            added = ""
            if result is not direct and base is not None:
                delta = {"p50": round(mine["p50_ms"] - base["p50_ms"], 3),
                         "p99": round(mine["p99_ms"] - base["p99_ms"], 3)}
                summary["added_latency_ms"].setdefault(result.name, {})[str(rate)] = delta
                added = f"{_fmt(delta['p50'])} / {_fmt(delta['p99'])}"
            fixed.add_row(f"{rate:g}", result.name, f"{_fmt(mine['p50_ms'])} / {_fmt(mine['p99_ms'])}", added,
                          _fmt(mine.get("server_cpu_ms_per_request")))
        fixed.add_section()
    console.print(fixed)
    for result in results:
        runs = [run for run in result.latency.values() if run]
        bad = (result.saturation.get("non_2xx", 0) + result.saturation.get("socket_errors", 0)
               + sum(run["failures"] + run["requests"] - run["ok"] for run in runs))
        if bad:
            console.print(f"[yellow]{result.name}: {bad} failed or non-200 responses[/yellow]")
        console.print(f"{result.name}: {'; '.join(result.notes)}", highlight=False)
    conduit = next(r for r in results if r.name == "Conduit")
    peer = next((r for r in results if r.name.startswith("LiteLLM")), None)
    if peer is not None and peer.saturation.get("rps") and conduit.saturation.get("rps"):
        ratio = conduit.saturation["rps"] / peer.saturation["rps"]
        summary["saturation_ratio_conduit_over_litellm"] = round(ratio, 2)
        console.print(f"Saturation, Conduit / {peer.name}: [bold]{ratio:.1f}x[/bold] (target: at least 15x)")
        mine, theirs = (conduit.saturation.get("server_cpu_ms_per_request"),
                        peer.saturation.get("server_cpu_ms_per_request"))
        if mine and theirs:
            summary["cpu_per_request_ratio_litellm_over_conduit"] = round(theirs / mine, 2)
            console.print(f"CPU per request, {peer.name} / Conduit: {theirs / mine:.1f}x")
        for rate in rates:
            a, b = conduit.latency.get(str(rate)), peer.latency.get(str(rate))
            if a and b:
                console.print(f"Latency @ {rate:g} req/s, {peer.name} / Conduit: p50 {b['p50_ms'] / a['p50_ms']:.1f}x,"
                              f" p99 {b['p99_ms'] / a['p99_ms']:.1f}x")
    for rate in rates:
        added = summary["added_latency_ms"].get("Conduit", {}).get(str(rate))
        if added is None:
            console.print(f"Conduit @ {rate:g} req/s: overloaded, added latency not measured (target missed)")
            continue
        verdict = "met" if added["p50"] < 1 and added["p99"] < 5 else "missed"
        console.print(f"Conduit added latency @ {rate:g} req/s: p50 {added['p50']:.2f} ms, p99 {added['p99']:.2f} ms "
                      f"(targets < 1 / < 5 ms: {verdict})")
    return summary


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {model}, Python {platform.python_version()}"


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", choices=["none", "litellm"], default="none")
    parser.add_argument("--rates", default="20,50,200", help="Comma-separated fixed rates (req/s) for latency.")
    parser.add_argument("--connections", type=int, default=32, help="Saturation: concurrent connections.")
    parser.add_argument("--saturation-s", type=float, default=15.0)
    parser.add_argument("--latency-s", type=float, default=20.0, help="Measured seconds per rate.")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="Unrecorded load before each measurement.")
    parser.add_argument("--pause-s", type=float, default=2.0, help="Idle seconds between measurements.")
    parser.add_argument("--chunks", type=int, default=1,
                        help="Content events per streamed upstream answer (Conduit always streams from upstreams).")
    parser.add_argument("--wrk-threads", type=int, default=1, help="1 leaves the servers the other cores.")
    parser.add_argument("--workers", type=int, default=1,
                        help="Conduit's worker processes, if `conduit serve` has a --workers option.")
    parser.add_argument("--conduit-ref", default=None,
                        help="Benchmark this commit's src/ (git archive) instead of the working tree.")
    parser.add_argument("--conduit-src", default=None,
                        help="PYTHONPATH for the Conduit server instead (e.g. a patched copy's src).")
    parser.add_argument("--conduit-config", default="",
                        help="YAML appended to Conduit's configuration, e.g. 'guards: {injection: {action: allow}}'.")
    parser.add_argument("--profile", action="store_true",
                        help="Last, saturate Conduit once more under py-spy (--gil); raw stacks next to the JSON.")
    parser.add_argument("--reinstall-litellm", action="store_true")
    parser.add_argument("--keep-dir", action="store_true", help="Keep the temporary directory (logs, databases).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


def run(args: argparse.Namespace, procs: Processes, workdir: Path) -> None:
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    wrk = ensure_wrk()
    if wrk is None:
        console.print("[yellow]wrk is not available: saturation uses bench/loadgen.py (a slower client)[/yellow]")
    if args.profile and find_py_spy() is None:
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    if args.conduit_ref and args.conduit_src:
        raise SystemExit("give --conduit-ref or --conduit-src, not both")
    source = conduit_source(args.conduit_ref, workdir) if args.conduit_ref else args.conduit_src
    meta: dict[str, Any] = {
        "machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_at_start": os.getloadavg(), "rates": rates, "connections": args.connections,
        "saturation_s": args.saturation_s, "latency_s": args.latency_s, "warmup_s": args.warmup_s, "wrk": wrk,
        "upstream_chunks": args.chunks,
        "conduit": args.conduit_ref or args.conduit_src or "working tree", "workers": args.workers,
        "conduit_serve_has_workers": conduit_supports_workers(
            {**os.environ, **({"PYTHONPATH": str(source)} if source else {})}),
    }
    upstream = start_upstream(procs, workdir, args.chunks)
    extra = args.conduit_config.strip()
    if extra:
        meta["conduit_config"] = extra
    targets = [upstream, start_conduit(procs, workdir, upstream, args.workers, source,
                                       extra + "\n" if extra else "")]
    if args.peer == "litellm":
        targets.append(start_litellm(procs, workdir, upstream, args.reinstall_litellm))
        meta["litellm_version"] = litellm_version()
    profile_path = args.out.with_name(args.out.stem + "-profile.txt")
    results: list[TargetResult] = []
    for target in targets:
        console.print(f"[bold]{target.name}[/bold]: saturation, {args.connections} connections...")
        sat = saturate(target, upstream, wrk, workdir, args)
        console.print(f"  {_fmt(sat.get('rps'), 0)} req/s, p50 {_fmt(sat.get('p50_ms'))} ms, "
                      f"{_fmt(sat.get('server_cpu_ms_per_request'))} ms CPU / request")
        # Work the saturation left queued (request-log rows and traces) must not land in the latency runs.
        sat["settled_after_s"] = round(wait_quiet(target.pid), 1)
        by_rate: dict[str, dict[str, Any] | None] = {}
        for rate in rates:
            if sat.get("rps") and sat["rps"] < 1.1 * rate:
                console.print(f"  {rate:g} req/s: skipped, above what it sustains")
                by_rate[str(rate)] = None
                continue
            console.print(f"  latency at {rate:g} req/s...")
            by_rate[str(rate)] = latency(target, upstream, rate, args)
        results.append(TargetResult(target.name, target.notes, sat, by_rate))
    if args.profile:  # last, in a run of its own: py-spy pauses the process and would skew the figures
        console.print("[bold]Conduit[/bold]: saturation again, under py-spy...")
        profiled = saturate(targets[1], upstream, wrk, workdir, args, profile_path)
        meta["profiled_run"] = {k: profiled.get(k) for k in ("rps", "server_cpu_ms_per_request")}
    meta["load_average_at_end"] = os.getloadavg()
    summary = report(results, rates, meta)
    if args.profile and profile_path.exists():
        shares = summarise_profile(profile_path)
        summary["profile_inclusive_percent"] = {name: round(share, 1) for name, share in shares}
        console.print(f"Conduit under saturation, share of GIL-holding samples (inclusive; {profile_path}):")
        for name, share in shares:
            console.print(f"  {share:5.1f}%  {name}", highlight=False)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "summary": summary,
                                    "targets": [asdict(r) for r in results]}, indent=2) + "\n")
    console.print(f"Wrote {args.out}")


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM behaves like Ctrl-C: unwind through `finally`, which stops the children."""
    raise KeyboardInterrupt


def main() -> None:
    args = parse_args()
    procs = Processes()
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="conduit-bench-gw-"))
    try:
        run(args, procs, workdir)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    finally:
        procs.stop_all()
        if args.keep_dir:
            console.print(f"Logs and databases kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
