"""Single-stream decode speed and time to first token: our engine against transformers.

    python bench/model.py [--reps 3] [--prompt-tokens 256] [--new-tokens 128] [--no-hf]

Same GGUF, same prompt, same process; exactly --new-tokens are generated (EOS ignored).
Prints a table of medians and writes bench/results/model.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from conduit.engine import LLM, SamplingParams, resolve_model_path

TEXT = (
    "The history of computing is a story of abstraction. Early machines were programmed by "
    "rewiring panels; then came stored programs, assemblers, compilers and operating systems. "
    "Each layer hid the one below it and let more people build more ambitious things. "
)


def prompt_ids(llm: LLM, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += llm.tokenizer.encode(TEXT)
    return ids[:n]


def run_ours(llm: LLM, ids: list[int], new_tokens: int) -> tuple[float, float]:
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    first = None
    count = 0
    for delta in llm.stream(ids, params):
        count += len(delta.token_ids)
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert count == new_tokens, count
    return first - start, (new_tokens - 1) / (end - first)


def run_hf(model, ids: list[int], new_tokens: int) -> tuple[float, float]:
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.stamps = []

        def put(self, value):  # first call: the prompt; then one call per new token
            self.stamps.append(time.perf_counter())

        def end(self):
            pass

    clock = Clock()
    input_ids = torch.tensor([ids])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            streamer=clock,
        )
    end = time.perf_counter()
    assert out.shape[1] - len(ids) == new_tokens
    first = clock.stamps[1]
    return first - start, (new_tokens - 1) / (end - first)


def measure(name: str, run, reps: int) -> dict:
    run()  # warm-up: first-call allocations and kernel setup are not what we compare
    ttfts, speeds = zip(*(run() for _ in range(reps)))
    row = {
        "engine": name,
        "ttft_ms": statistics.median(ttfts) * 1e3,
        "decode_tok_s": statistics.median(speeds),
        "runs_decode_tok_s": [round(s, 1) for s in speeds],
    }
    print(
        f"  {name:<50} ttft {row['ttft_ms']:7.0f} ms   decode {row['decode_tok_s']:6.1f} tok/s",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--no-hf", action="store_true", help="skip transformers")
    args = parser.parse_args()

    path = resolve_model_path("smollm2")
    print(
        f"{path.name}: prompt {args.prompt_tokens} tokens, {args.new_tokens} new, "
        f"{args.reps} reps, torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    rows = []
    ids = None
    for label, kwargs in [
        ("conduit auto (bf16, 4-bit decode + dense prefill)", {}),
        ("conduit bfloat16, 4-bit weights only", {"quantization": "int4"}),
        ("conduit bfloat16 (dequantized weights)", {"dtype": "bfloat16", "quantization": "none"}),
        ("conduit float32", {"dtype": "float32"}),
    ]:
        t0 = time.perf_counter()
        llm = LLM(**kwargs)
        load_s = time.perf_counter() - t0
        ids = ids or prompt_ids(llm, args.prompt_tokens)
        row = measure(
            label, lambda llm=llm, ids=ids: run_ours(llm, ids, args.new_tokens), args.reps
        )
        rows.append({**row, "load_s": round(load_s, 2)})
        del llm

    if not args.no_hf:
        from transformers import AutoModelForCausalLM

        for dtype in (torch.float32, torch.bfloat16):
            label = f"transformers generate() {str(dtype).removeprefix('torch.')}"
            try:
                t0 = time.perf_counter()
                model = AutoModelForCausalLM.from_pretrained(
                    str(path.parent), gguf_file=path.name, dtype=dtype
                ).eval()
                load_s = time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001 - report and keep going
                print(f"  {label}: failed to load ({exc})")
                continue
            row = measure(label, lambda model=model: run_hf(model, ids, args.new_tokens), args.reps)
            rows.append({**row, "load_s": round(load_s, 2)})
            del model

    base = next((r for r in rows if r["engine"] == "transformers generate() float32"), None)
    print(f"\n| engine | TTFT (ms) | decode tok/s |{' vs transformers fp32 |' if base else ''}")
    print(f"|---|---:|---:|{'---:|' if base else ''}")
    for r in rows:
        ratio = f" {r['decode_tok_s'] / base['decode_tok_s']:.2f}x |" if base else ""
        print(f"| {r['engine']} | {r['ttft_ms']:.0f} | {r['decode_tok_s']:.1f} |{ratio}")

    out = Path(__file__).resolve().parent / "results" / "model.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "model": path.name,
                "prompt_tokens": args.prompt_tokens,
                "new_tokens": args.new_tokens,
                "reps": args.reps,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpu": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
