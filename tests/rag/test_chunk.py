"""Chunking: token budgets in the embedder's own word pieces, overlap, and section boundaries."""

from __future__ import annotations

import itertools
import random

import pytest
from pydantic import ValidationError

from conduit.rag.chunk import Chunk, Chunker, ChunkingOptions, embedding_tokenizer
from conduit.rag.document import ParsedDocument, Section
from conduit.rag.parse import parse_bytes
from tests.rag.pdf_maker import make_pdf

WORDS = [
    "cache", "backend", "entries", "expire", "quickly", "when", "memory", "pressure", "rises;",
    "the", "server", "evicts", "least-recently-used", "keys,", "écrit", "en", "français,",
    "tokenization", "internationalization", "configuration", "12345", "e.g.", "version", "2.0.1",
    "(beta)", "x=y+z",
]


def prose(seed: int, paragraphs: int, sentences: int = 6) -> str:
    rng = random.Random(seed)
    return "\n\n".join(
        " ".join(" ".join(rng.choices(WORDS, k=rng.randint(4, 18))).capitalize() + "."
                 for _ in range(sentences))
        for _ in range(paragraphs))


def document(*sections: Section, title: str = "Doc") -> ParsedDocument:
    return ParsedDocument(title, "text/markdown", "0" * 64, list(sections), "doc.md")


def count(text: str) -> int:
    return len(embedding_tokenizer().encode(text, add_special_tokens=False).ids)


def assert_chunks_are_faithful(doc: ParsedDocument, chunks: list[Chunk], chunk_size: int) -> None:
    full_text = doc.text
    for index, chunk in enumerate(chunks):
        assert chunk.index == index
        assert chunk.text == full_text[chunk.start_char : chunk.end_char]
        assert chunk.text == chunk.text.strip() and chunk.text
        assert chunk.embedding_text.endswith(chunk.text)
        # The count is what the embedder will see, and never over the budget.
        assert chunk.token_count == count(chunk.embedding_text) <= chunk_size


def test_the_tokenizer_is_the_embedders_without_truncation() -> None:
    tokenizer = embedding_tokenizer()
    assert tokenizer.encode("Tokenization", add_special_tokens=False).tokens == ["token", "##ization"]
    assert count("word " * 1000) == 1000  # tokenizer.json truncates to 128 unless told not to


@pytest.mark.parametrize("chunk_size,chunk_overlap", [(200, 30), (64, 0), (32, 16), (254, 100)])
def test_no_chunk_exceeds_its_size(chunk_size: int, chunk_overlap: int) -> None:
    doc = document(Section(prose(1, 30), ("Doc",)), Section(prose(2, 1, sentences=40), ("Doc", "Long")))
    for prefix in (True, False):
        options = ChunkingOptions(chunk_size=chunk_size, chunk_overlap=chunk_overlap, prefix_section_path=prefix)
        chunks = Chunker(options).chunk(doc)
        assert len(chunks) > 2
        assert_chunks_are_faithful(doc, chunks, chunk_size)


def test_text_without_spaces_is_still_cut_to_size() -> None:
    rng = random.Random(0)
    long_words = " ".join("".join(rng.choices("bcdfghjklmnpqrstvwxz", k=100)) for _ in range(3))
    doc = document(
        Section("x" * 3000, ("Doc", "Over 100 characters: one [UNK]")),
        Section("東京都は日本の首都です。" * 80, ("Doc", "No spaces")),
        Section(long_words, ("Doc", "Words longer than a chunk")),
    )
    assert count(long_words.split()[0]) > 16  # one word, more pieces than a chunk holds
    chunks = Chunker(ChunkingOptions(chunk_size=16, chunk_overlap=4, prefix_section_path=False)).chunk(doc)
    assert_chunks_are_faithful(doc, chunks, 16)
    for heading in ("No spaces", "Words longer than a chunk"):
        pieces = [chunk.text for chunk in chunks if chunk.section_path[-1] == heading]
        assert len(pieces) > 3
    assert "首都" in "".join(chunk.text for chunk in chunks)


def test_consecutive_chunks_overlap_by_at_most_the_overlap() -> None:
    doc = document(Section(prose(3, 12), ("Doc",)))
    chunks = Chunker(ChunkingOptions(chunk_size=100, chunk_overlap=30, prefix_section_path=False)).chunk(doc)
    assert len(chunks) >= 4
    for before, after in itertools.pairwise(chunks):
        assert before.start_char < after.start_char < before.end_char  # overlapping, moving on
        shared = doc.text[after.start_char : before.end_char]
        assert 0 < count(shared) <= 30
        assert doc.text[after.start_char - 1].isspace()  # the overlap starts at a word

    chunks = Chunker(ChunkingOptions(chunk_size=100, chunk_overlap=0, prefix_section_path=False)).chunk(doc)
    for before, after in itertools.pairwise(chunks):
        assert after.start_char >= before.end_char


def test_cuts_prefer_paragraphs_then_sentences() -> None:
    paragraphs = prose(4, 10, sentences=3).split("\n\n")
    doc = document(Section("\n\n".join(paragraphs), ("Doc",)))
    size = max(count(p) for p in paragraphs) * 2 + 4
    chunks = Chunker(ChunkingOptions(chunk_size=size, chunk_overlap=0, prefix_section_path=False)).chunk(doc)
    # Every paragraph fits in a chunk, so every chunk ends where a paragraph ends.
    assert all(chunk.text.endswith(tuple(paragraphs)) for chunk in chunks)

    one_paragraph = document(Section(prose(5, 1, sentences=30), ("Doc",)))
    chunks = Chunker(ChunkingOptions(chunk_size=60, chunk_overlap=0, prefix_section_path=False)).chunk(one_paragraph)
    assert all(chunk.text.endswith(".") for chunk in chunks)  # sentence ends, not mid-sentence


def test_structure_mode_never_crosses_a_section_and_carries_its_path_and_page() -> None:
    pdf = make_pdf([
        [f"Page one line {n}: the cache stores entries and evicts them." for n in range(30)],
        ["Page two is short."],
        [f"Page three line {n}: replicas copy entries across servers." for n in range(30)],
    ])
    doc = parse_bytes(pdf, "manual.pdf")
    chunks = Chunker(ChunkingOptions(chunk_size=80, chunk_overlap=20)).chunk(doc)
    assert_chunks_are_faithful(doc, chunks, 80)
    section_spans = [(start, start + len(s.text), s) for start, s in zip(doc.section_starts(), doc.sections)]
    for chunk in chunks:
        [(_, end, section)] = [span for span in section_spans if span[0] <= chunk.start_char < span[1]]
        assert chunk.end_char <= end
        assert (chunk.page, chunk.section_path) == (section.page, section.section_path)
    assert {chunk.page for chunk in chunks} == {1, 2, 3}
    assert [c.text for c in chunks if c.page == 2] == ["Page two is short."]
    assert chunks[0].embedding_text.startswith("manual\n\n")


def test_markdown_sections_stay_apart_in_structure_mode_and_merge_in_recursive_mode() -> None:
    markdown = "# Guide\n\nIntro.\n\n## Install\n\nRun pip.\n\n## Usage\n\nCall it.\n\n### Options\n\nSet them.\n"
    doc = parse_bytes(markdown.encode(), "guide.md")
    structure = Chunker(ChunkingOptions(strategy="structure")).chunk(doc)
    assert [(c.section_path, c.text) for c in structure] == [
        (("Guide",), "Guide\nIntro."),
        (("Guide", "Install"), "Install\nRun pip."),
        (("Guide", "Usage"), "Usage\nCall it."),
        (("Guide", "Usage", "Options"), "Options\nSet them."),
    ]
    assert structure[3].embedding_text == "Guide > Usage > Options\n\nOptions\nSet them."

    recursive = Chunker(ChunkingOptions(strategy="recursive")).chunk(doc)
    assert len(recursive) == 1  # small sections share a chunk when structure is ignored
    assert recursive[0].text == doc.text
    assert recursive[0].embedding_text == "Guide\n\n" + doc.text  # only the title is sure to apply
    assert_chunks_are_faithful(doc, recursive, 200)


def test_recursive_chunks_report_the_section_they_start_in() -> None:
    doc = document(Section(prose(6, 4), ("Doc", "A")), Section(prose(7, 4), ("Doc", "B")), Section("End.", ("Doc", "C")))
    chunks = Chunker(ChunkingOptions(strategy="recursive", chunk_size=120, chunk_overlap=0)).chunk(doc)
    assert_chunks_are_faithful(doc, chunks, 120)
    starts = doc.section_starts()
    for chunk in chunks:
        [section] = [s for s, start, end in zip(doc.sections, starts, [*starts[1:], len(doc.text)])
                     if start <= chunk.start_char < end]
        assert chunk.section_path == section.section_path
    assert {chunk.section_path for chunk in chunks} >= {("Doc", "A"), ("Doc", "B")}
    assert any(c.start_char < starts[1] < c.end_char for c in chunks)  # one spans A and B
    assert chunks[-1].text.endswith("End.")


def test_the_prefix_is_optional_and_a_long_path_keeps_its_deepest_headings() -> None:
    body = prose(8, 3)
    path = ("Doc", *(f"Heading number {n} about caching configuration" for n in range(8)), "Deepest")
    doc = document(Section(body, path))
    plain = Chunker(ChunkingOptions(prefix_section_path=False)).chunk(doc)
    assert all(chunk.embedding_text == chunk.text for chunk in plain)

    chunks = Chunker(ChunkingOptions(chunk_size=100, chunk_overlap=10)).chunk(doc)
    assert_chunks_are_faithful(doc, chunks, 100)
    prefix = chunks[0].embedding_text.split("\n\n")[0]
    assert prefix.startswith("… ") and prefix.endswith("Heading number 7 about caching configuration > Deepest")
    assert count(prefix) <= 100 // 4 + 2
    assert all(chunk.section_path == path for chunk in chunks)


def test_many_documents_chunk_like_one_at_a_time() -> None:
    docs = [document(Section(prose(seed, 5), ("Doc", str(seed))), title=f"T{seed}") for seed in range(6)]
    chunker = Chunker(ChunkingOptions(chunk_size=90, chunk_overlap=15))
    assert chunker.chunk_many(docs) == [chunker.chunk(doc) for doc in docs]
    assert chunker.chunk_many([]) == []


def test_options_are_validated() -> None:
    assert ChunkingOptions() == ChunkingOptions(strategy="structure", chunk_size=200, chunk_overlap=30,
                                                prefix_section_path=True)
    with pytest.raises(ValidationError):
        ChunkingOptions(chunk_size=255)  # 254 + [CLS] + [SEP] is the model's 256
    with pytest.raises(ValidationError):
        ChunkingOptions(chunk_size=100, chunk_overlap=51)
    with pytest.raises(ValidationError):
        ChunkingOptions(strategy="semantic")
    stored = ChunkingOptions(chunk_size=128, chunk_overlap=16).model_dump_json()
    assert ChunkingOptions.model_validate_json(stored).chunk_size == 128
