"""`conduit ingest` and `conduit index rebuild`: collections from the command line.

Both work on the database and index folder of the configuration directly, so they run with or
without a server; a running server sees the new chunks at its next search (indexes catch up with
the store's version).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

index_app = typer.Typer(help="Maintain the retrieval indexes.", no_args_is_help=True)
console = Console(stderr=True)


@dataclass
class _Tally:
    ingested: int = 0
    unchanged: int = 0
    chunks: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, message)


def _collections(settings):  # noqa: ANN001, ANN202 - Settings -> (Collections, KeyStore)
    from conduit.backends.embeddings import make_embedder
    from conduit.rag.service import Collections
    from conduit.store.collections import CollectionStore
    from conduit.store.db import Database
    from conduit.store.keys import KeyStore

    db = Database(settings.resolved_database_url)
    db.migrate()
    store = CollectionStore(db, settings.data_dir / "files")
    from conduit.safety.injection import DOCUMENTS_ARTIFACT, InjectionDetector

    scorer = InjectionDetector.load(DOCUMENTS_ARTIFACT).score  # indirect prompt injection, at ingestion
    return (Collections(store, make_embedder(settings.embeddings), settings.data_dir / "indexes",
                        injection_scorer=scorer), KeyStore(db))


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (walked recursively).")],
    collection: Annotated[str, typer.Option(help="The vector store's name (created if new).")],
    tenant: Annotated[str | None, typer.Option(help="The tenant that owns it (default: the admin's).")] = None,
    chunk_size: Annotated[int, typer.Option(help="Tokens per chunk (new collections).", min=16, max=254)] = 200,
    chunk_overlap: Annotated[int, typer.Option(help="Tokens of overlap (new collections).", min=0)] = 30,
    max_file_mb: Annotated[float, typer.Option(help="Larger files are skipped.")] = 50.0,
) -> None:
    """Ingest documents into a collection. Unchanged files are skipped, so an interrupted run
    resumes where it stopped; a changed file replaces its old chunks at once."""
    from conduit.cli import _settings
    from conduit.rag.chunk import ChunkingOptions
    from conduit.rag.parse import FoundFile, SkipFile, discover, parse_file

    settings = _settings()
    collections, keys = _collections(settings)
    store = collections.store
    tenant_id = keys.tenant_id(tenant) if tenant else None
    if tenant and tenant_id is None:
        console.print(f"[red]error:[/red] no tenant named '{tenant}' (create a key for it first)")
        raise typer.Exit(2)
    vector_store = store.store_by_name(tenant_id, collection)
    if vector_store is None:
        options = ChunkingOptions(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
        vector_store = store.create_store(tenant_id, collection, options.model_dump(), None)
    chunking = ChunkingOptions.model_validate_json(vector_store.chunking)
    found = list(discover(paths))
    tally = _Tally()
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[chunks]} chunks"),
               TextColumn("{task.fields[rate]:.0f} chunks/s"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("files", total=len(found), chunks=0, rate=0.0)
        for item in found:
            if not isinstance(item, FoundFile):
                tally.skipped.append((str(item.path), item.reason.value, item.message))
            else:
                try:
                    _ingest_one(collections, vector_store.id, tenant_id, item, chunking, int(max_file_mb * 2**20), tally,
                                parse_file)
                except SkipFile as exc:
                    tally.skipped.append((str(item.path), exc.reason.value, exc.message))
            rate = tally.chunks / max(time.perf_counter() - started, 1e-9)
            progress.update(task, advance=1, chunks=tally.chunks, rate=rate)
    if tally.ingested:  # nothing new: leave the saved index as it is, unread
        with console.status("indexing the new chunks..."):
            collections.refresh(vector_store.id)
            collections.save()
    _summary(collection, vector_store.id, tally, time.perf_counter() - started)


def _ingest_one(collections, store_id, tenant_id, item, chunking, max_bytes, tally, parse_file) -> None:  # noqa: ANN001
    store = collections.store
    source = str(item.path.resolve())
    known = store.file_by_source(store_id, source)
    if known is not None and known.status == "completed" and known.content_hash == _sha256(item.path):
        tally.unchanged += 1
        return
    document = parse_file(item.path, root=item.root, max_bytes=max_bytes)  # raises SkipFile
    data = item.path.read_bytes()
    if known is None:
        file_id = store.save_file(tenant_id, item.path.name, data, "assistants", hashlib.sha256(data).hexdigest()).id
    else:
        file_id = known.file_id
        store.replace_bytes(file_id, data, hashlib.sha256(data).hexdigest())
    store.attach(store_id, file_id, None, source=source)
    # The server catches its own index up from the database; this process's copy is caught up
    # and saved once at the end.
    tally.chunks += collections.ingest_document(store_id, file_id, document, chunking, refresh=False)
    tally.ingested += 1


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _summary(collection: str, store_id: str, tally: _Tally, seconds: float) -> None:
    console.print(f"[bold]{collection}[/bold] ({store_id}): {tally.ingested} file(s) ingested, {tally.chunks} chunks "
                  f"in {seconds:.1f}s ({tally.chunks / max(seconds, 1e-9):.0f} chunks/s); "
                  f"{tally.unchanged} unchanged; {len(tally.skipped)} skipped.")
    if tally.skipped:
        reasons = Counter(reason for _, reason, _ in tally.skipped)
        console.print("Skipped: " + ", ".join(f"{count} {reason}" for reason, count in reasons.most_common()))
        table = Table("file", "reason", "detail")
        for path, reason, message in tally.skipped[:50]:
            table.add_row(path, reason, message)
        console.print(table)
        if len(tally.skipped) > 50:
            console.print(f"... and {len(tally.skipped) - 50} more")


@index_app.command("rescan")
def rescan(
    collection: Annotated[str | None, typer.Option(help="Only this collection (default: all).")] = None,
    everything: Annotated[bool, typer.Option("--all", help="Score every chunk again, not only those "
                                                           "stored without a score.")] = False,
) -> None:
    """Score stored chunks for prompt injection with the document detector: chunks stored before
    it existed (migration 0009 cleared their scores), or with --all every chunk (after retraining)."""
    from rich.progress import track

    from conduit.cli import _settings

    collections, _ = _collections(_settings())
    scorer = collections.injection_scorer
    assert scorer is not None
    for store_id, name in collections.store.all_stores():
        if collection is not None and name != collection:
            continue
        chunks = collections.store.chunk_texts(store_id, unscored_only=not everything)
        scores = {chunk_id: scorer(text) for chunk_id, text in
                  track(chunks, description=f"{name or store_id}", console=console, transient=True)}
        collections.store.set_injection_scores(scores)
        console.print(f"{name or store_id}: {len(scores)} chunks scored")


@index_app.command("rebuild")
def rebuild(
    collection: Annotated[str | None, typer.Option(help="Only this collection (default: all).")] = None,
) -> None:
    """Recreate the indexes from the chunk store (no embedding model runs)."""
    from conduit.cli import _settings

    collections, _ = _collections(_settings())
    for store_id, name in collections.store.all_stores():
        if collection is None or name == collection:
            count = collections.rebuild(store_id)
            console.print(f"{name or store_id}: {count} chunks indexed")
    collections.save()
