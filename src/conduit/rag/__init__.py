"""Retrieval-augmented generation: ingest -> parse -> chunk -> embed -> index -> retrieve.

Each stage is its own module (`parse`, `chunk`, ...); this package imports none of them, so
importing `conduit.rag` stays cheap for code that needs only one stage.
"""
