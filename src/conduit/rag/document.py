"""What parsing produces and chunking consumes: a document as a list of titled sections."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SkipReason(StrEnum):
    """Why a file was not ingested; stable codes that the API and CLI report per file."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    BINARY = "binary"
    INVALID_UTF8 = "invalid_utf8"
    ENCRYPTED_PDF = "encrypted_pdf"
    UNREADABLE_PDF = "unreadable_pdf"
    OUTSIDE_ROOT = "outside_root"
    UNSUPPORTED_TYPE = "unsupported_type"
    NO_TEXT = "no_text"
    NOT_FOUND = "not_found"
    UNREADABLE = "unreadable"


class SkipFile(Exception):
    """One file cannot be ingested; a batch reports it and goes on with the next file."""

    def __init__(self, reason: SkipReason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Section:
    """A run of text under one heading trail (title > heading > subheading), on one PDF page."""

    text: str
    section_path: tuple[str, ...]
    page: int | None = None  # 1-based, PDFs only


SECTION_SEPARATOR = "\n\n"


@dataclass(slots=True)
class ParsedDocument:
    title: str
    media_type: str
    content_hash: str  # sha256 of the original bytes: an unchanged file need not be re-ingested
    sections: list[Section]
    source: str = ""  # the path or the uploaded file's name

    @property
    def text(self) -> str:
        """The whole document; chunk offsets point into this string."""
        return SECTION_SEPARATOR.join(section.text for section in self.sections)

    def section_starts(self) -> list[int]:
        """Where each section's text begins in `text`."""
        starts, offset = [], 0
        for section in self.sections:
            starts.append(offset)
            offset += len(section.text) + len(SECTION_SEPARATOR)
        return starts


def path_under_title(title: str, headings: tuple[str, ...]) -> tuple[str, ...]:
    """Every section path starts with the document title; a top heading equal to it is not repeated."""
    if headings and headings[0] == title:
        return headings
    return (title, *headings)


class SectionBuilder:
    """Collects text in reading order under a stack of headings (Markdown and HTML parsers)."""

    def __init__(self, separator: str) -> None:
        self._separator = separator
        self._stack: list[tuple[int, str]] = []
        self._parts: list[str] = []
        self._has_body = False
        self._done: list[tuple[tuple[str, ...], str]] = []
        self.first_h1: str | None = None

    def heading(self, level: int, text: str) -> None:
        text = " ".join(text.split())
        if not text:
            return
        # A heading with nothing under it yet leads into its subsection ("Guide" then "Install"):
        # its line joins the subsection's text rather than becoming a chunk of two words.
        leads_in = not self._has_body and bool(self._stack) and level > self._stack[-1][0]
        if not leads_in:
            self._flush()
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, text))
        self._parts.append(text)
        if level == 1 and self.first_h1 is None:
            self.first_h1 = text

    def add(self, text: str) -> None:
        if text.strip():
            self._has_body = True
            self._parts.append(text)

    def sections(self, title: str) -> list[Section]:
        self._flush()
        return [Section(text, path_under_title(title, headings)) for headings, text in self._done]

    def _flush(self) -> None:
        text = self._separator.join(self._parts).strip()
        if text:
            self._done.append((tuple(heading for _, heading in self._stack), text))
        self._parts = []
        self._has_body = False
