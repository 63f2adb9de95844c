"""The embedded engine's two bundled models side by side: load time, single-stream decode and
batched decode, SmolLM2-135M (Q4_1) against Gemma 3 270M (Q4_K_M), in the same run.

    python bench/engine_models.py [--reps 3] [--prompt-tokens 128] [--new-tokens 64] [--batch 8]

Runs alternate between the models (A B A B ...) so that a noisy machine hurts both alike; the
table gives medians. Each model loads with dtype 'auto' (what serving uses). Also measured: the
bytes of weights one decode step reads, and the copy bandwidth of this machine, whose ratio is
the decode roofline for one stream (tokens/s <= BW / W). Writes bench/results/engine_models.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from conduit.engine import LLM, SamplingParams
from conduit.engine.core import EngineConfig, EngineCore
from conduit.engine.model import DenseLinear, Int4Linear

MODELS = ("smollm2", "gemma3-270m")
TEXT = (
    "The history of computing is a story of abstraction. Early machines were programmed by "
    "rewiring panels; then came stored programs, assemblers, compilers and operating systems. "
)


def decode_weight_bytes(model) -> int:
    """Bytes of weights one single-row forward reads (the int4 path when a linear has one)."""
    total = 0
    linears = [model.lm_head] + [v for layer in model.layers for v in vars(layer).values()]
    for linear in linears:
        if isinstance(linear, Int4Linear):
            total += linear.packed.nbytes + linear.scales_and_zeros.nbytes
        elif isinstance(linear, DenseLinear):
            total += linear.weight.numel() * linear.weight.element_size()
    return total


def copy_bandwidth() -> float:
    """GB/s of a 512 MiB tensor copy (read + write counted)."""
    src = torch.empty(2**27, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / min(times) / 1e9


def single_stream(llm: LLM, ids: list[int], new_tokens: int) -> tuple[float, float]:
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    first = None
    for _ in llm.stream(ids, params):
        first = first or time.perf_counter()
    return first - start, (new_tokens - 1) / (time.perf_counter() - first)


def batched(llm: LLM, ids: list[int], new_tokens: int, batch: int) -> float:
    """Generated tokens/s of `batch` concurrent requests through the engine core (paged cache,
    continuous batching), prompts distinct so that the prefix cache does not share them."""
    core = EngineCore(llm.loaded, EngineConfig(num_blocks=batch * 16 + 16, max_num_seqs=batch))
    rng = random.Random(0)
    for i in range(batch):
        prompt = [ids[0], *rng.sample(ids[1:], len(ids) - 1)]
        core.add_request(
            str(i), prompt, SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
        )
    while core.scheduler.waiting:  # prefill first: the figure is decode throughput
        core.step()
    start, tokens = time.perf_counter(), 0
    while core.has_unfinished():
        tokens += len(core.step())
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, prompt {args.prompt_tokens}, new {args.new_tokens}",
        flush=True,
    )
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth:.1f} GB/s", flush=True)

    runs: dict[str, dict[str, list[float]]] = {m: {} for m in MODELS}
    info: dict[str, dict] = {}
    for rep in range(args.reps):
        for name in MODELS:
            start = time.perf_counter()
            llm = LLM(name)
            load_s = time.perf_counter() - start
            ids = [llm.tokenizer.bos_token_id] if llm.tokenizer.add_bos_token else []
            while len(ids) < args.prompt_tokens:
                ids += llm.tokenizer.encode(TEXT)
            ids = ids[: args.prompt_tokens]
            single_stream(llm, ids, 8)  # warm-up: first-call kernel setup
            ttft, decode = single_stream(llm, ids, args.new_tokens)
            throughput = batched(llm, ids, args.new_tokens, args.batch)
            for key, value in (
                ("load_s", load_s),
                ("ttft_s", ttft),
                ("decode_tok_s", decode),
                ("batched_tok_s", throughput),
            ):
                runs[name].setdefault(key, []).append(value)
            info[name] = {
                "file": llm.model_name,
                "dtype": llm.dtype,
                "quantization": llm.quantization,
                "decode_weight_mb": decode_weight_bytes(llm.model) / 1e6,
            }
            print(
                f"  rep {rep} {name:<12} load {load_s:5.1f} s  ttft {ttft * 1e3:6.0f} ms  "
                f"decode {decode:6.1f} tok/s  batch {args.batch}: {throughput:6.1f} tok/s",
                flush=True,
            )
            del llm

    rows = []
    for name in MODELS:
        med = {k: statistics.median(v) for k, v in runs[name].items()}
        roofline = bandwidth * 1e9 / (info[name]["decode_weight_mb"] * 1e6)
        rows.append(
            {
                "model": name,
                **info[name],
                **med,
                "roofline_tok_s": roofline,
                "runs": {k: [round(x, 3) for x in v] for k, v in runs[name].items()},
            }
        )
    print(
        "\n| model | weights | dtype / quantization | load (s) | TTFT (ms) | decode tok/s "
        f"| roofline tok/s | batch {args.batch} tok/s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['decode_weight_mb']:.0f} MB read per token | {r['dtype']} / "
            f"{r['quantization']} | {r['load_s']:.1f} | {r['ttft_s'] * 1e3:.0f} | "
            f"{r['decode_tok_s']:.1f} | {r['roofline_tok_s']:.0f} | {r['batched_tok_s']:.1f} |"
        )
    a, b = rows
    print(
        f"\n{b['model']} / {a['model']}: decode {b['decode_tok_s'] / a['decode_tok_s']:.2f}x, "
        f"batched {b['batched_tok_s'] / a['batched_tok_s']:.2f}x, "
        f"load {b['load_s'] / a['load_s']:.2f}x"
    )

    out = Path(__file__).resolve().parent / "results" / "engine_models.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "prompt_tokens": args.prompt_tokens,
                "new_tokens": args.new_tokens,
                "batch": args.batch,
                "reps": args.reps,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "copy_bandwidth_gb_s": bandwidth,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
