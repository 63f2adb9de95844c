"""Serving throughput of the engine (paged KV cache, continuous batching, own process) against
transformers' generate() one request at a time, plus /healthz latency under load.

    python bench/engine.py [--requests 16] [--prompt-tokens 256] [--output-tokens 128]
                           [--hf-requests 2] [--no-hf] [--no-server] [--streams 32]
    # the GPU path: the Llama-3-8B shape with random bf16 weights
    python bench/engine.py --device cuda --load-format dummy --model llama3-8b --requests 64 \
        --prompt-tokens 512 --batched-tokens 8192 --prefix-tokens 2048 --no-server

Prompts are random token ids of a fixed length and every request generates exactly
--output-tokens (EOS ignored), like vLLM's random dataset. `--prefix-tokens N` also times the
first token of a prompt sharing an N-token prefix with an earlier one against a cold prompt.
Prints a table and writes bench/results/engine.json (or --out).
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
from conduit.engine.gguf_loader import GGUFModelFile, ModelConfig, resolve_model_path
from conduit.engine.loader import DummyModelFile, resolve_device
from conduit.engine.sampling import SamplingParams


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab) for _ in range(length)] for _ in range(n)]


def model_config(args) -> ModelConfig:
    if args.load_format == "dummy":  # shapes only: nothing is allocated
        tokens = GGUFModelFile(resolve_model_path("smollm2")).get("tokenizer.ggml.tokens")
        return DummyModelFile(args.model, vocab_size=len(tokens)).config
    return GGUFModelFile(resolve_model_path(args.model)).config


async def run_engine(args, prompts) -> dict:
    engine = AsyncEngine(EngineArgs(
        source=args.model, load_format=args.load_format, device=args.device,
        config=EngineConfig(max_num_seqs=args.max_num_seqs or max(32, args.requests),
                            max_num_batched_tokens=args.batched_tokens,
                            cuda_graphs=not args.no_cuda_graphs, fused_kernels=not args.no_fused)))
    started = time.perf_counter()
    await engine.start()
    load_s = time.perf_counter() - started
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
        prefix = await prefix_ttft(engine, args) if args.prefix_tokens else None
    finally:
        await engine.close()
    ttft = [s[0] - t0 for t0, s in results]
    tpot = [(s[-1] - s[0]) / (len(s) - 1) for _, s in results]
    total = sum(len(s) for _, s in results)
    decode_rate = statistics.mean(len(prompts) / t for t in tpot)
    return {"output_tokens_per_s": total / elapsed, "elapsed_s": elapsed, "load_s": load_s,
            "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
            "tpot_p50_s": percentile(tpot, 50), "tpot_p99_s": percentile(tpot, 99),
            "decode_tokens_per_s": decode_rate, "prefix_cache": prefix}


async def prefix_ttft(engine: AsyncEngine, args) -> dict:
    """Time to first token of prompts that share a --prefix-tokens prefix: the first computes
    it (cold), the next find its blocks in the prefix cache. Medians of a few, one at a time."""
    vocab = model_config(args).vocab_size
    prefixes = random_prompts(3, args.prefix_tokens, vocab, seed=7)
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)

    async def ttft(prompt: list[int]) -> float:
        start = time.perf_counter()
        async for _ in engine.generate(prompt, params):
            return time.perf_counter() - start
        raise RuntimeError("no token")

    cold, hit = [], []
    for i, prefix in enumerate(prefixes):
        cold.append(await ttft(prefix + random_prompts(1, 16, vocab, seed=100 + i)[0]))
        for j in range(2):
            hit.append(await ttft(prefix + random_prompts(1, 16, vocab, seed=200 + 10 * i + j)[0]))
    cold_s, hit_s = statistics.median(cold), statistics.median(hit)
    return {"prefix_tokens": args.prefix_tokens, "cold_ttft_s": cold_s, "hit_ttft_s": hit_s,
            "hit_over_cold": hit_s / cold_s}


def hf_model(args):
    """The same model in transformers: the GGUF in float32 on the CPU, or for a dummy shape a
    randomly initialised LlamaForCausalLM in bfloat16 on the device (the engine has exited)."""
    import transformers

    if args.load_format != "dummy":
        path = resolve_model_path(args.model)
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    c = model_config(args)
    config = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim, rope_theta=c.rope_theta,
        rms_norm_eps=c.rms_norm_eps, max_position_embeddings=c.context_length,
        tie_word_embeddings=c.tie_word_embeddings)
    device, default = resolve_device(args.device), torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # made in bfloat16: an 8B model in float32 is 32 GB
    try:
        with torch.device(device):
            model = transformers.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def run_hf(args, prompts) -> dict:
    model = hf_model(args)
    device = next(model.parameters()).device
    tokens, elapsed = 0, 0.0
    for prompt in prompts[: args.hf_requests]:
        ids = torch.tensor([prompt], device=device)
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=args.output_tokens,
                                 min_new_tokens=args.output_tokens)
        _sync(device)
        took = time.perf_counter() - start
        tokens += out.shape[1] - ids.shape[1]
        elapsed += took
    return {"output_tokens_per_s": tokens / elapsed, "requests": args.hf_requests}


def roofline(args) -> dict:
    """Decode tokens/s bound: B / max((W + B*L*kv)/BW, 2*P*B/F), measured BW and F on the
    device the engine ran on."""
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    bw = _copy_bandwidth(device)
    n = 8192 if gpu else 2048
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    flops = 2 * n**3 / min(_timed(lambda: a @ b, device) for _ in range(5))
    c = model_config(args)
    params = c.vocab_size * c.hidden_size + c.num_layers * (
        c.hidden_size * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        + c.num_heads * c.head_dim * c.hidden_size + 3 * c.hidden_size * c.intermediate_size)
    # On the CPU batched decode (>= 12 rows) reads the dense bfloat16 copy; the GPU's weights
    # are bfloat16 too. The KV cache is float32 on the CPU, bfloat16 on the GPU.
    weight_bytes = 2 * params
    kv = 2 * c.num_layers * c.num_kv_heads * c.head_dim * (2 if gpu else 4)
    batch, context = args.requests, args.prompt_tokens + args.output_tokens / 2
    bound = batch / max((weight_bytes + batch * context * kv) / bw, 2 * params * batch / flops)
    return {"bandwidth_GBps": bw / 1e9, "bf16_TFLOPs": flops / 1e12, "params": params,
            "weight_bytes": weight_bytes, "kv_bytes_per_token": kv,
            "decode_bound_tokens_per_s": bound}


def _copy_bandwidth(device: torch.device) -> float:
    """Bytes read plus written per second by a 1 GiB copy (random bytes, not zeros)."""
    src = torch.randint(0, 255, (2**30,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / min(_timed(lambda: dst.copy_(src), device) for _ in range(5))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device | None = None) -> float:
    device = device or torch.device("cpu")
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
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
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--load-format", default="gguf", choices=["gguf", "dummy"],
                   help="dummy: --model names a preset shape (llama3-8b...) with random weights")
    p.add_argument("--max-num-seqs", type=int, default=0, help="default: max(32, --requests)")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--no-fused", action="store_true", help="CUDA: plain torch ops, not the fused kernels")
    p.add_argument("--prefix-tokens", type=int, default=0,
                   help="also time TTFT on a prefix-cache hit of this many tokens against cold")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "engine.json")
    args = p.parse_args()
    vocab = model_config(args).vocab_size
    prompts = random_prompts(args.requests, args.prompt_tokens, vocab)
    device = resolve_device(args.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    result = {"machine": f"{where}, torch {torch.__version__}",
              "workload": {k: str(v) for k, v in vars(args).items()}}
    result["engine"] = asyncio.run(run_engine(args, prompts))
    if not args.no_hf:
        try:
            result["transformers"] = run_hf(args, prompts)
            result["speedup"] = (result["engine"]["output_tokens_per_s"]
                                 / result["transformers"]["output_tokens_per_s"])
        except Exception as exc:  # noqa: BLE001 - the peer failing must not lose the engine's figures
            print(f"transformers peer failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            result["transformers_error"] = f"{type(exc).__name__}: {exc}"
    result["roofline"] = roofline(args)
    result["roofline_fraction"] = (result["engine"]["decode_tokens_per_s"]
                                   / result["roofline"]["decode_bound_tokens_per_s"])
    if not args.no_server:
        result["healthz"] = healthz_under_load(args)

    e = result["engine"]
    rows = [("engine output tok/s", f"{e['output_tokens_per_s']:.1f}"),
            ("engine start (load, KV cache, graphs) s", f"{e['load_s']:.1f}"),
            ("engine TTFT p50 / p99 (s)", f"{e['ttft_p50_s']:.2f} / {e['ttft_p99_s']:.2f}"),
            ("engine TPOT p50 / p99 (ms)",
             f"{1000 * e['tpot_p50_s']:.1f} / {1000 * e['tpot_p99_s']:.1f}"),
            ("engine decode tok/s (batch)", f"{e['decode_tokens_per_s']:.1f}")]
    if "transformers" in result:
        rows += [("transformers generate() tok/s (1 at a time)",
                  f"{result['transformers']['output_tokens_per_s']:.1f}"),
                 ("speedup", f"{result['speedup']:.1f}x")]
    if e["prefix_cache"]:
        pc = e["prefix_cache"]
        rows.append((f"TTFT {pc['prefix_tokens']}-token prefix: cold / hit (ms), hit/cold",
                     f"{1000 * pc['cold_ttft_s']:.1f} / {1000 * pc['hit_ttft_s']:.1f}, {pc['hit_over_cold']:.2f}"))
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
