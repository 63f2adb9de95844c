"""Parsing: files and uploads -> ParsedDocument (a title and sections with heading paths).

Plain text, Markdown, HTML and PDF. Every way a single file can be unusable (empty, too
large, binary, not UTF-8, encrypted or broken PDF, a symlink out of the ingested folder)
ends in `SkipFile` with a reason code, so a batch reports that file and goes on.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from conduit.rag.document import (
    ParsedDocument,
    Section,
    SectionBuilder,
    SkipFile,
    SkipReason,
)

__all__ = [
    "DEFAULT_MAX_BYTES", "FoundFile", "ParsedDocument", "Section", "SkipFile", "SkipReason",
    "SkippedFile", "discover", "media_type_for", "parse_bytes", "parse_file", "parse_paths",
]

TEXT = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
PDF = "application/pdf"

EXTENSIONS = {
    ".txt": TEXT, ".text": TEXT,
    ".md": MARKDOWN, ".markdown": MARKDOWN,
    ".html": HTML, ".htm": HTML, ".xhtml": HTML,
    ".pdf": PDF,
}
_MEDIA_TYPE_ALIASES = {
    TEXT: TEXT, MARKDOWN: MARKDOWN, "text/x-markdown": MARKDOWN, HTML: HTML,
    "application/xhtml+xml": HTML, PDF: PDF, "application/x-pdf": PDF,
}

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_SNIFF_BYTES = 8192


@dataclass(frozen=True, slots=True)
class FoundFile:
    path: Path
    root: Path | None  # the folder it was found in; None for a file named directly


@dataclass(frozen=True, slots=True)
class SkippedFile:
    path: Path
    reason: SkipReason
    message: str


def media_type_for(filename: str, declared: str | None = None) -> str | None:
    """The extension decides (browsers send .md as octet-stream); a declared type fills in."""
    by_extension = EXTENSIONS.get(Path(filename).suffix.lower())
    if by_extension:
        return by_extension
    if declared:
        return _MEDIA_TYPE_ALIASES.get(declared.split(";")[0].strip().lower())
    return None


def discover(paths: Iterable[Path]) -> Iterator[FoundFile | SkippedFile]:
    """Files to ingest under the given files and folders, in a stable order.

    In folders only supported extensions are taken and hidden entries are passed over;
    symlinks that resolve outside the folder come back as `outside_root` skips.
    """
    for given in map(Path, paths):
        if given.is_dir():
            yield from _walk(given, given.resolve())
        elif given.is_file():
            if media_type_for(given.name) is None:
                yield SkippedFile(given, SkipReason.UNSUPPORTED_TYPE, _unsupported_message(given.name))
            else:
                yield FoundFile(given, None)
        else:
            yield SkippedFile(given, SkipReason.NOT_FOUND, "no such file or folder")


def _walk(top: Path, root: Path) -> Iterator[FoundFile | SkippedFile]:
    errors: list[OSError] = []  # folders os.walk could not list (permissions)
    for dirpath, dirnames, filenames in os.walk(top, onerror=errors.append):
        yield from _unlistable(errors)
        here = Path(dirpath)
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        for name in dirnames:
            # os.walk does not descend into linked folders; one pointing inside the root is
            # walked anyway under its real path, one pointing outside is reported.
            link = here / name
            if link.is_symlink() and not _is_within(link.resolve(), root):
                yield SkippedFile(link, SkipReason.OUTSIDE_ROOT, _outside_message(link, root))
        for name in sorted(filenames):
            if name.startswith(".") or media_type_for(name) is None:
                continue
            path = here / name
            if path.is_symlink():
                target = path.resolve()
                if not _is_within(target, root):
                    yield SkippedFile(path, SkipReason.OUTSIDE_ROOT, _outside_message(path, root))
                    continue
                if not target.exists():
                    yield SkippedFile(path, SkipReason.NOT_FOUND, "broken symbolic link")
                    continue
            yield FoundFile(path, root)
    yield from _unlistable(errors)


def _unlistable(errors: list[OSError]) -> Iterator[SkippedFile]:
    while errors:
        error = errors.pop(0)
        yield SkippedFile(Path(error.filename or ""), SkipReason.UNREADABLE,
                          f"cannot list the folder: {error.strerror or error}")


def parse_paths(
    paths: Iterable[Path], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[ParsedDocument | SkippedFile]:
    """discover + parse_file: one result per file, a skip record where a file is unusable."""
    for found in discover(paths):
        if isinstance(found, SkippedFile):
            yield found
            continue
        try:
            yield parse_file(found.path, root=found.root, max_bytes=max_bytes)
        except SkipFile as skip:
            yield SkippedFile(found.path, skip.reason, skip.message)


def parse_file(path: Path, *, root: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> ParsedDocument:
    """Parse one file; `root` confines it (after resolving symlinks) to an ingested folder."""
    path = Path(path)
    try:
        real = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):  # RuntimeError: a symlink loop
        raise SkipFile(SkipReason.NOT_FOUND, "no such file (or a broken symbolic link)") from None
    if root is not None and not _is_within(real, root.resolve()):
        raise SkipFile(SkipReason.OUTSIDE_ROOT, _outside_message(path, root))
    if not real.is_file():
        raise SkipFile(SkipReason.UNSUPPORTED_TYPE, "not a regular file")
    if media_type_for(path.name) is None:
        raise SkipFile(SkipReason.UNSUPPORTED_TYPE, _unsupported_message(path.name))
    try:
        size = real.stat().st_size
        _check_size(size, max_bytes)
        with real.open("rb") as file:
            data = file.read(max_bytes + 1)  # the file may have grown since stat
    except OSError as exc:
        raise SkipFile(SkipReason.UNREADABLE, f"cannot read the file: {exc.strerror or exc}") from None
    return parse_bytes(data, str(path), max_bytes=max_bytes)


def parse_bytes(
    data: bytes, filename: str, media_type: str | None = None, *, max_bytes: int | None = None
) -> ParsedDocument:
    """Parse an upload (or a file's bytes); `filename` gives the extension and fallback title."""
    kind = media_type_for(filename, media_type)
    if kind is None:
        raise SkipFile(SkipReason.UNSUPPORTED_TYPE, _unsupported_message(filename))
    if max_bytes is not None:
        _check_size(len(data), max_bytes)
    if not data:
        raise SkipFile(SkipReason.EMPTY, "the file is empty (0 bytes)")
    fallback_title = Path(filename).stem or filename
    if kind == PDF:
        from conduit.rag.parse_pdf import parse_pdf  # pypdf is imported only when a PDF comes

        title, sections = parse_pdf(data, fallback_title)
    else:
        text = decode_text(data, declared_charset=_declared_charset(data) if kind == HTML else None)
        if kind == HTML:
            from conduit.rag.parse_html import parse_html

            title, sections = parse_html(text, fallback_title)
        elif kind == MARKDOWN:
            title, sections = parse_markdown(text, fallback_title)
        else:
            title, sections = fallback_title, [Section(text.strip(), (fallback_title,))]
    sections = [section for section in sections if section.text.strip()]
    if not sections:
        raise SkipFile(SkipReason.NO_TEXT, "no text found in the file" + (
            " (a scanned PDF without a text layer? OCR is not supported)" if kind == PDF else ""))
    return ParsedDocument(title, kind, hashlib.sha256(data).hexdigest(), sections, filename)


def decode_text(data: bytes, declared_charset: str | None = None) -> str:
    """UTF-8 (a BOM allowed), UTF-16 with a BOM, or an HTML page's declared charset."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return _normalise_newlines(data.decode("utf-16"))
        except UnicodeDecodeError:
            raise SkipFile(SkipReason.BINARY, "not text: invalid UTF-16 after a byte-order mark") from None
    kind = _binary_kind(data[:_SNIFF_BYTES])
    if kind:
        raise SkipFile(SkipReason.BINARY, f"the file holds binary data ({kind}), not text")
    try:
        return _normalise_newlines(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        if declared_charset and declared_charset.replace("-", "").lower() != "utf8":
            try:
                return _normalise_newlines(data.decode(declared_charset))
            except (LookupError, UnicodeDecodeError):
                pass
        raise SkipFile(SkipReason.INVALID_UTF8, (
            f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8 and try again")) from None


_MAGIC_NUMBERS = {
    b"%PDF-": "a PDF; give it a .pdf name", b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image", b"PK\x03\x04": "a ZIP archive, .docx or .xlsx", b"\x1f\x8b": "gzip data",
    b"\x7fELF": "a program",
}


def _binary_kind(sample: bytes) -> str | None:
    for magic, kind in _MAGIC_NUMBERS.items():
        if sample.startswith(magic):
            return kind
    if b"\x00" in sample:
        return "it contains NUL bytes"
    # Control bytes other than whitespace/backspace/escape hardly occur in text; undecodable
    # bytes in bulk mean compressed or image data (a Latin-1 text has only a few).
    controls = sum(1 for byte in sample if byte < 32 and byte not in b"\t\n\r\f\b\x1b")
    if controls > len(sample) * 0.05:
        return "it contains control bytes"
    undecodable = sample.decode("utf-8", errors="replace").count("\ufffd")
    if len(sample) >= 64 and undecodable > len(sample) * 0.3:
        return "most bytes are not characters"
    return None


_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)|<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def _declared_charset(data: bytes) -> str | None:
    match = _CHARSET.search(data[:4096])
    return (match.group(1) or match.group(2)).decode("ascii") if match else None


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_FRONT_MATTER_TITLE = re.compile(r"""^title:\s*["']?(.*?)["']?\s*$""", re.MULTILINE)


def parse_markdown(text: str, fallback_title: str) -> tuple[str, list[Section]]:
    """ATX (`## x`) and setext (`x` over `===`) headings; nothing inside code fences is one."""
    front_title, text = _split_front_matter(text)
    lines = text.split("\n")
    builder = SectionBuilder(separator="\n")
    fence: str | None = None
    skip_next = False
    for number, line in enumerate(lines):
        if skip_next:
            skip_next = False
            continue
        fence_match = _FENCE.match(line)
        if fence is not None:
            if fence_match and fence_match.group(1).startswith(fence):
                fence = None
            builder.add(line)
            continue
        if fence_match:
            fence = fence_match.group(1)
            builder.add(line)
            continue
        atx = _ATX_HEADING.match(line)
        if atx:
            builder.heading(len(atx.group(1)), atx.group(2) or "")
            continue
        next_line = lines[number + 1] if number + 1 < len(lines) else ""
        underline = _SETEXT_UNDERLINE.match(next_line)
        # Only a one-line paragraph makes a setext heading here; `---` under a list item or
        # after a blank line stays a rule.
        if (underline and line.strip() and (number == 0 or not lines[number - 1].strip())
                and not re.match(r"^\s*([-*+]|\d+[.)])\s", line)):
            builder.heading(1 if underline.group(1).startswith("=") else 2, line.strip())
            skip_next = True
            continue
        builder.add(line)
    title = front_title or builder.first_h1 or fallback_title
    return title, builder.sections(title)


def _split_front_matter(text: str) -> tuple[str | None, str]:
    """YAML front matter (`---` ... `---`) is metadata, not content; its title is kept."""
    text = text.removeprefix("\ufeff")
    if not text.startswith("---\n"):
        return None, text
    end = re.search(r"^(---|\.\.\.)[ \t]*$", text[4:], re.MULTILINE)
    if end is None:
        return None, text
    header = text[4 : 4 + end.start()]
    title = _FRONT_MATTER_TITLE.search(header)
    return (title.group(1).strip() or None) if title else None, text[4 + end.end() :]


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise SkipFile(SkipReason.TOO_LARGE, (
            f"{size:,} bytes is over the limit of {max_bytes:,} bytes; split the file or raise the limit"))
    if size == 0:
        raise SkipFile(SkipReason.EMPTY, "the file is empty (0 bytes)")


def _is_within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _outside_message(path: Path, root: Path) -> str:
    return f"{path} resolves outside the ingested folder {root}; symbolic links out of it are not followed"


def _unsupported_message(filename: str) -> str:
    supported = ", ".join(sorted(EXTENSIONS))
    return f"unsupported file type {Path(filename).suffix or '(no extension)'!r}; supported: {supported}"
