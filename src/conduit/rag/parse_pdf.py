"""PDF -> sections: the text layer page by page, cut further where the outline starts a heading.

A section never spans pages, so every chunk can cite its page. The outline (bookmarks)
gives the heading path; a heading is placed where its title appears in the page's text,
or at the top of its page when the title is not found there.
"""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from dataclasses import dataclass

import pypdf
from pypdf.errors import DependencyError, FileNotDecryptedError

from conduit.rag.document import Section, SkipFile, SkipReason, path_under_title

# pypdf logs a warning for every malformed object it recovers from; the outcome (a skip
# record or a document) is what the user needs, not the parser's chatter.
logging.getLogger("pypdf").setLevel(logging.ERROR)


@dataclass(frozen=True, slots=True)
class _OutlineEntry:
    page_index: int
    depth: int
    title: str


def parse_pdf(data: bytes, fallback_title: str) -> tuple[str, list[Section]]:
    # pypdf raises many exception types on damaged files; all mean the same to the user.
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        _unlock(reader)
        page_texts = [page.extract_text() or "" for page in reader.pages]
    except SkipFile:
        raise
    except FileNotDecryptedError:
        raise SkipFile(SkipReason.ENCRYPTED_PDF, "the PDF is password-protected") from None
    except Exception as exc:  # noqa: BLE001
        raise SkipFile(SkipReason.UNREADABLE_PDF, f"the PDF cannot be read: {_describe(exc)}") from None
    title = _metadata_title(reader) or fallback_title
    return title, _sections(page_texts, _outline(reader), title)


def _unlock(reader: pypdf.PdfReader) -> None:
    if not reader.is_encrypted:
        return
    # Many PDFs are "encrypted" only to set permissions, with an empty password to open them.
    try:
        opened = reader.decrypt("")
    except DependencyError:
        raise SkipFile(SkipReason.ENCRYPTED_PDF, (
            "the PDF is encrypted with AES, which needs the 'cryptography' package to open")) from None
    if not opened:
        raise SkipFile(SkipReason.ENCRYPTED_PDF, "the PDF is password-protected; remove the password and try again")


def _metadata_title(reader: pypdf.PdfReader) -> str | None:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:  # noqa: BLE001 - a broken info dictionary only costs the title
        return None
    if not title:
        return None
    return " ".join(str(title).split()) or None


def _outline(reader: pypdf.PdfReader) -> list[_OutlineEntry]:
    entries: list[_OutlineEntry] = []

    def visit(items: list, depth: int) -> None:
        for item in items:
            if isinstance(item, list):
                visit(item, depth + 1)
                continue
            page_index = reader.get_destination_page_number(item)
            title = " ".join(str(item.title or "").split())
            if page_index is not None and page_index >= 0 and title:
                entries.append(_OutlineEntry(page_index, depth, title))

    try:
        visit(reader.outline, 1)
    except Exception:  # noqa: BLE001 - a broken outline only costs the heading paths
        return []
    # Reading order; a stable sort keeps the outline's order within a page.
    return sorted(entries, key=lambda entry: entry.page_index)


def _sections(page_texts: list[str], outline: list[_OutlineEntry], title: str) -> list[Section]:
    sections: list[Section] = []
    stack: list[_OutlineEntry] = []
    next_entry = 0
    for page_index, text in enumerate(_without_running_lines([_clean_page(t) for t in page_texts])):
        cursor = 0
        while next_entry < len(outline) and outline[next_entry].page_index <= page_index:
            entry = outline[next_entry]
            next_entry += 1
            start = _find_heading(text, entry.title, cursor) if entry.page_index == page_index else cursor
            _append(sections, text[cursor:start], stack, title, page_index)
            cursor = start
            while stack and stack[-1].depth >= entry.depth:
                stack.pop()
            stack.append(entry)
        _append(sections, text[cursor:], stack, title, page_index)
    return sections


def _append(sections: list[Section], text: str, stack: list[_OutlineEntry], title: str, page_index: int) -> None:
    text = text.strip()
    if text:
        headings = tuple(entry.title for entry in stack)
        sections.append(Section(text, path_under_title(title, headings), page=page_index + 1))


def _find_heading(text: str, heading: str, cursor: int) -> int:
    position = text.find(heading, cursor)
    if position < 0:
        # The text layer may break a long heading over lines.
        pattern = r"\s+".join(map(re.escape, heading.split()))
        match = re.search(pattern, text[cursor:])
        position = cursor + match.start() if match else cursor
    # Start the section at the beginning of the heading's line ("1.8 R commands", not "R commands").
    line_start = text.rfind("\n", cursor, position) + 1
    return max(line_start, cursor)


_BARE_PAGE_NUMBER = re.compile(r"^(?:\d+|[ivxlc]+|page \d+( of \d+)?)$", re.IGNORECASE)


def _without_running_lines(pages: list[str]) -> list[str]:
    """Drop running headers and footers: a page's first or last line that recurs with only its
    numbers changed ("Chapter 5: Arrays and matrices 21"), or a bare page number. Left in,
    they split sections mid-sentence and become chunks of their own."""
    def shape(line: str) -> str:
        return re.sub(r"\d+", "#", line.strip())

    edges: Counter[str] = Counter()
    for text in pages:
        lines = text.strip().split("\n")
        edges.update({shape(lines[0]), shape(lines[-1])})
    running = {line for line, pages_with_it in edges.items() if "#" in line and pages_with_it >= 3}

    def is_running(line: str) -> bool:
        return shape(line) in running or bool(_BARE_PAGE_NUMBER.match(line.strip()))

    cleaned = []
    for text in pages:
        lines = text.strip().split("\n")
        if lines and is_running(lines[0]):
            lines = lines[1:]
        if lines and is_running(lines[-1]):
            lines = lines[:-1]
        cleaned.append("\n".join(lines))
    return cleaned


def _clean_page(text: str) -> str:
    text = text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
