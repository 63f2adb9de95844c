"""Serving throughput of the engine (paged KV cache, continuous batching, own process) against
transformers' generate() one request at a time, plus /healthz latency under load.

    python bench/engine.py [--requests 16] [--prompt-tokens 256] [--output-tokens 128]
                           [--hf-requests 2] [--no-hf] [--no-server] [--streams 32]

Prompts are random token ids of a fixed length and every request generates exactly
--output-tokens (EOS ignored), like vLLM's random dataset. Prints a table and writes
bench/results/engine.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from conduit.engine.async_engine import AsyncEngine, EngineArgs
from conduit.engine.core import EngineConfig
from conduit.engine.gguf_loader import GGUFModelFile, resolve_model_path
from conduit.engine.sampling import SamplingParams


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab) for _ in range(length)] for _ in range(n)]


async def run_engine(args, prompts) -> dict:
    engine = AsyncEngine(EngineArgs(source=args.model, config=EngineConfig(
        max_num_seqs=max(32, args.requests), max_num_batched_tokens=args.batched_tokens)))
    await engine.start()
    params = SamplingParams(temperature=0, max_tokens=args.output_tokens, ignore_eos=True)
    try:
        # Warm-up: a short request pays the first-call costs.
        async for _ in engine.generate(prompts[0][:16], SamplingParams(max_tokens=4)):
            pass

        async def one(prompt):
            start = time.perf_counter()
            stamps = []
            async for out in engine.generate(prompt, params):
                stamps += [time.perf_counter()] * len(out.token_ids)
            return start, stamps

        start = time.perf_counter()
        results = await asyncio.gather(*(one(p) for p in prompts))
        elapsed = time.perf_counter() - start
    finally:
        await engine.close()
    ttft = [s[0] - t0 for t0, s in results]
    tpot = [(s[-1] - s[0]) / (len(s) - 1) for _, s in results]
    total = sum(len(s) for _, s in results)
    decode_rate = statistics.mean(len(prompts) / t for t in tpot)
    return {"output_tokens_per_s": total / elapsed, "elapsed_s": elapsed,
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "tpot_p50_s": percentile(tpot, 50), "tpot_p99_s": percentile(tpot, 99),
            "decode_tokens_per_s": decode_rate}


def run_hf(args, prompts) -> dict:
    import transformers

    path = resolve_model_path(args.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tokens, elapsed = 0, 0.0
    for prompt in prompts[: args.hf_requests]:
        ids = torch.tensor([prompt])
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=args.output_tokens,
                                 min_new_tokens=args.output_tokens)
        took = time.perf_counter() - start
        tokens += out.shape[1] - ids.shape[1]
        elapsed += took
    return {"output_tokens_per_s": tokens / elapsed, "requests": args.hf_requests}


def roofline(args) -> dict:
    """Decode tokens/s bound: B / max((W + B*L*kv)/BW, 2*P*B/F), measured BW and F."""
    big = torch.empty(2**28 // 4 * 4, dtype=torch.uint8)  # 1 GiB
    big.fill_(1)
    dst = torch.empty_like(big)
    best = min(_timed(lambda: dst.copy_(big)) for _ in range(3))
    bw = 2 * big.numel() / best  # read + write
    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    b = torch.randn(2048, 2048, dtype=torch.bfloat16)
    flops = 2 * 2048**3 / min(_timed(lambda: a @ b) for _ in range(3))
    c = GGUFModelFile(resolve_model_path(args.model)).config
    params = c.vocab_size * c.hidden_size + c.num_layers * (
        c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        + c.num_heads * c.head_dim * c.hidden_size + 3 * c.hidden_size * c.intermediate_size)
    weight_bytes = 2 * params  # batched decode (>= 12 rows) reads the dense bfloat16 copy
    kv = 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4  # float32 cache
    batch, context = args.requests, args.prompt_tokens + args.output_tokens / 2
    bound = batch / max((weight_bytes + batch * context * kv) / bw, 2 * params * batch / flops)
    return {"bandwidth_GBps": bw / 1e9, "bf16_TFLOPs": flops / 1e12, "params": params,
            "weight_bytes": weight_bytes, "kv_bytes_per_token": kv,
            "decode_bound_tokens_per_s": bound}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def healthz_under_load(args) -> dict:
    """A real `conduit serve`; `--streams` streaming chats; /healthz polled meanwhile."""
    import httpx

    data = Path(tempfile.mkdtemp(prefix="conduit-bench-"))
    port = 18000 + random.randrange(1000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
    env.update(CONDUIT_DATA_DIR=str(data), CONDUIT_SERVER__PORT=str(port),
               CONDUIT_ADMIN_KEY="cdk-bench-admin-secret-key-0123456789")
    with open(data / "server.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "conduit.cli", "serve"], env=env,
                                cwd=data, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {env['CONDUIT_ADMIN_KEY']}"}
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        model = httpx.get(f"{url}/v1/models", headers=headers).json()["data"][0]["id"]

        async def main():
            async with httpx.AsyncClient(timeout=600) as client:
                async def stream(i):
                    body = {"model": model, "max_tokens": args.output_tokens, "stream": True,
                            "messages": [{"role": "user", "content": f"Tell story number {i}."}]}
                    async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                                             headers=headers) as r:
                        async for _ in r.aiter_lines():
                            pass

                tasks = [asyncio.create_task(stream(i)) for i in range(args.streams)]
                await asyncio.sleep(1.0)
                latencies = []
                while not all(t.done() for t in tasks):
                    start = time.perf_counter()
                    assert (await client.get(f"{url}/healthz")).status_code == 200
                    latencies.append(time.perf_counter() - start)
                    await asyncio.sleep(0.05)
                await asyncio.gather(*tasks)
                return latencies

        latencies = asyncio.run(main())
    finally:
        proc.terminate()
        proc.wait(30)
    return {"streams": args.streams, "probes": len(latencies),
            "healthz_p50_ms": 1000 * percentile(latencies, 50),
            "healthz_p99_ms": 1000 * percentile(latencies, 99)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--batched-tokens", type=int, default=512)
    p.add_argument("--hf-requests", type=int, default=2)
    p.add_argument("--no-hf", action="store_true")
    p.add_argument("--no-server", action="store_true")
    p.add_argument("--streams", type=int, default=32)
    args = p.parse_args()
    vocab = GGUFModelFile(resolve_model_path(args.model)).config.vocab_size
    prompts = random_prompts(args.requests, args.prompt_tokens, vocab)
    result = {"machine": f"{platform.processor() or platform.machine()}, "
                         f"{torch.get_num_threads()} threads, torch {torch.__version__}",
              "workload": vars(args)}
    result["engine"] = asyncio.run(run_engine(args, prompts))
    if not args.no_hf:
        result["transformers"] = run_hf(args, prompts)
        result["speedup"] = (result["engine"]["output_tokens_per_s"]
                             / result["transformers"]["output_tokens_per_s"])
    result["roofline"] = roofline(args)
    result["roofline_fraction"] = (result["engine"]["decode_tokens_per_s"]
                                   / result["roofline"]["decode_bound_tokens_per_s"])
    if not args.no_server:
        result["healthz"] = healthz_under_load(args)

    e = result["engine"]
    rows = [("engine output tok/s", f"{e['output_tokens_per_s']:.1f}"),
            ("engine TTFT p50 / p99 (s)", f"{e['ttft_p50_s']:.2f} / {e['ttft_p99_s']:.2f}"),
            ("engine TPOT p50 / p99 (ms)",
             f"{1000 * e['tpot_p50_s']:.1f} / {1000 * e['tpot_p99_s']:.1f}"),
            ("engine decode tok/s (batch)", f"{e['decode_tokens_per_s']:.1f}")]
    if "transformers" in result:
        rows += [("transformers generate() tok/s (1 at a time)",
                  f"{result['transformers']['output_tokens_per_s']:.1f}"),
                 ("speedup", f"{result['speedup']:.1f}x")]
    r = result["roofline"]
    rows += [("measured copy BW (GB/s) / bf16 matmul (TFLOP/s)",
              f"{r['bandwidth_GBps']:.1f} / {r['bf16_TFLOPs']:.2f}"),
             ("decode roofline bound tok/s", f"{r['decode_bound_tokens_per_s']:.0f}"),
             ("roofline fraction", f"{result['roofline_fraction']:.2f}")]
    if "healthz" in result:
        h = result["healthz"]
        rows.append((f"/healthz p50 / p99 under {h['streams']} streams (ms)",
                     f"{h['healthz_p50_ms']:.1f} / {h['healthz_p99_ms']:.1f}"))
    print(f"\n{result['machine']}; {args.requests} requests x {args.prompt_tokens} prompt / "
          f"{args.output_tokens} output tokens, {args.model}")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    out = Path(__file__).parent / "results" / "engine.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
