"""Index files on disk: written atomically, checked on load.

A saved index is a directory of data files plus `manifest.json`, written last. The manifest
names every data file with its size and CRC-32, so a crash in the middle of a save (or a file
changed by anyone else) is caught on load as `IndexCorrupt`, never read as a valid index.
Indexes are derived data: the caller's answer to `IndexCorrupt` (or a missing directory) is
to rebuild from the chunk store, which is the source of truth.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class IndexCorrupt(Exception):
    """A saved index is missing, half-written, of another kind or format: rebuild it."""


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def write_files(directory: Path, writers: dict[str, Callable[[Path], None]],
                meta: dict[str, Any]) -> None:
    """Write each data file through `writers[name](temp_path)`, then the manifest.

    Old files stay valid until their replacement is complete; the manifest, replaced last,
    is what makes the new set current.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)  # a crash from here on leaves "no index"
    files = {}
    for name, write in writers.items():
        temp = directory / f".{name}.tmp"
        write(temp)
        os.replace(temp, directory / name)
        path = directory / name
        files[name] = {"bytes": path.stat().st_size, "crc32": _crc32(path)}
    manifest = {**meta, "files": files}
    temp = directory / f".{MANIFEST}.tmp"
    temp.write_text(json.dumps(manifest, indent=1))
    os.replace(temp, directory / MANIFEST)


def read_manifest(directory: Path, kind: str, format_version: int) -> dict[str, Any]:
    """The manifest of a complete, unchanged index of this kind, else `IndexCorrupt`."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise IndexCorrupt(f"{directory}: no readable {MANIFEST} ({e})") from e
    if manifest.get("kind") != kind or manifest.get("format") != format_version:
        raise IndexCorrupt(f"{directory}: holds {manifest.get('kind')!r} format "
                           f"{manifest.get('format')!r}, expected {kind!r} format {format_version}")
    for name, expected in manifest.get("files", {}).items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != expected["bytes"] \
                or _crc32(path) != expected["crc32"]:
            raise IndexCorrupt(f"{path}: missing or changed since the manifest was written")
    return manifest
