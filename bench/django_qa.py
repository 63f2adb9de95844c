"""A retrieval QA set from Django's FAQ pages, and a corpus copy that does not leak it.

Source: Debian's `python-django-doc` (Sphinx HTML under /usr/share/doc/python-django-doc/html).

Questions. On every FAQ page (faq/*.html but the FAQ index), each *leaf* section below the
page title (an h2..h6 `div.section` with no section inside it) is one QA pair: its heading is
the query, the text under the heading is the answer. Parent headings such as
"Miscellaneous" hold no answer of their own and are not queries.

The cleaned corpus (`build_corpus`) is every HTML page of the documentation except the pages
that only list titles (contents.html, genindex.html, search.html, py-modindex.html) and the
highlighted source listings under _modules/, with these removed:

- on FAQ pages: the question headings, the ids of question sections and their anchor spans
  (Sphinx's ids are slugs of the questions);
- on every page: the sidebar (`div.sphinxsidebar`, whose "Table of Contents" lists the page's
  headings, questions included), local tables of contents (`div.contents`, `div.toctree-wrapper`),
  heading permalinks, and URL fragments of links that point at a question's slug.

`leakage_report` checks the result: no question slug anywhere in the cleaned HTML, and every
place a question's text still appears (whitespace and quotes normalised, case-insensitive) in
the indexed text or in a section heading, listed so a reader can see it is ordinary prose.

Relevance. The answer is located as a character span [a0, a1) in the cleaned FAQ page's parsed
text (`ParsedDocument.text`, the string chunk offsets point into). A chunk [c0, c1) is relevant
to a question iff it comes from the same page and

    overlap = |[c0, c1) ∩ [a0, a1)| >= 0.5 * (c1 - c0)   (mostly answer)
                                or >= 0.5 * (a1 - a0)   (holds most of a short answer)

Gains are binary. Only the FAQ answer counts: a chunk elsewhere in the docs that also answers
the question is scored as irrelevant, so the figures are a lower bound.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree, html

from conduit.rag.document import ParsedDocument
from conduit.rag.parse import parse_file
from conduit.rag.parse_html import parse_html

DJANGO_PACKAGE = "python-django-doc"
DJANGO_HTML = Path("/usr/share/doc/python-django-doc/html")
# Pages that only repeat titles (every question among them), and generated source listings.
EXCLUDED_PAGES = frozenset({"contents.html", "genindex.html", "search.html", "py-modindex.html"})
EXCLUDED_DIRS = frozenset({"_modules", "_static", "_images", "_sources", "_downloads"})
MIN_SHARE = 0.5


def ensure_debian_package(package: str, path: Path) -> None:
    """apt-get install `package` unless `path` exists already (needs root)."""
    if path.exists():
        return
    print(f"{path} is missing: installing Debian's {package}")
    subprocess.run(["apt-get", "update", "-q"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package], check=True)
    if not path.exists():
        raise SystemExit(f"{package} is installed but {path} is still missing")


@dataclass
class Question:
    qid: str  # page-relative id, e.g. "faq/admin.html#3"
    page: str  # path relative to the corpus root
    text: str  # the heading, the query
    slug: str  # the section id Sphinx made from the heading
    answer: str  # the answer's text as the HTML parser renders it
    span: tuple[int, int] = (0, 0)  # the answer in the parsed page's text


@dataclass
class Corpus:
    root: Path
    files: list[Path]  # cleaned copies, sorted
    questions: list[Question]
    removed: dict[str, int] = field(default_factory=dict)  # what cleaning took out, by kind


def _classes(element: etree._Element) -> set[str]:
    return set((element.get("class") or "").split())


def _is_section(element: etree._Element) -> bool:
    return element.tag in ("div", "section") and (
        "section" in _classes(element) or element.tag == "section")


def _heading(section: etree._Element) -> etree._Element | None:
    for child in section:
        if child.tag in ("h2", "h3", "h4", "h5", "h6"):
            return child
    return None


def _text(element: etree._Element) -> str:
    return " ".join("".join(element.itertext()).split())


def _drop(element: etree._Element) -> None:
    element.drop_tree()  # lxml.html: keeps the tail text


def _question_sections(page: etree._Element) -> list[etree._Element]:
    """Leaf sections with an h2..h6 heading: one per question."""
    return [section for section in page.iter() if _is_section(section)
            and _heading(section) is not None
            and not any(_is_section(inner) for inner in section.iterdescendants())]


def _chrome_kind(element: etree._Element) -> str | None:
    names = _classes(element)
    if "sphinxsidebar" in names or element.get("id") == "sidebar":
        return "sidebar"
    if "contents" in names and ("topic" in names or "local" in names):
        return "local toc"
    if "toctree-wrapper" in names:
        return "toctree"
    if "headerlink" in names:
        return "permalink"
    return None


def _remove_chrome(page: etree._Element, counts: dict[str, int]) -> None:
    """Drop sidebars, tables of contents and permalinks (the outermost one of nested ones)."""
    walker = etree.iterwalk(page, events=("start",))
    found = []
    for _, element in walker:
        kind = _chrome_kind(element) if isinstance(element.tag, str) else None
        if kind:
            found.append(element)
            counts[kind] = counts.get(kind, 0) + 1
            walker.skip_subtree()
    for element in found:
        _drop(element)


def _clean_faq_page(page: etree._Element, relative: str, counts: dict[str, int]) -> list[Question]:
    questions = []
    for number, section in enumerate(_question_sections(page)):
        heading = _heading(section)
        assert heading is not None
        for link in heading.findall(".//a"):
            if "headerlink" in _classes(link):
                _drop(link)
        text = _text(heading)
        slug = section.get("id", "").removeprefix("s-")
        _drop(heading)
        counts["question heading"] = counts.get("question heading", 0) + 1
        # The section's ids and its anchor spans (<span id="slug"></span>) are all slugs.
        for element in [section, *section.iterdescendants()]:
            if element.get("id") is not None and (element is section or element.tag == "span"):
                del element.attrib["id"]
                counts["section id"] = counts.get("section id", 0) + 1
        for span in section.findall("span"):
            if not span.attrib and not _text(span) and len(span) == 0:
                _drop(span)
        answer = _render(section)
        if answer:
            questions.append(Question(f"{relative}#{number}", relative, text, slug, answer))
    return questions


def _render(fragment: etree._Element) -> str:
    """The fragment's text exactly as the corpus parser renders it (same whitespace rules)."""
    markup = "<html><body>" + etree.tostring(fragment, encoding="unicode", method="html") + "</body></html>"
    _, sections = parse_html(markup, "answer")
    return "\n\n".join(section.text for section in sections)


def _strip_fragments(page: etree._Element, slugs: set[str], counts: dict[str, int]) -> None:
    for link in page.iter("a"):
        href = link.get("href") or ""
        base, _, fragment = href.partition("#")
        if fragment and fragment in slugs:
            link.set("href", base)
            counts["link fragment"] = counts.get("link fragment", 0) + 1


def _source_pages(source: Path) -> list[Path]:
    pages = []
    for path in sorted(source.rglob("*.html")):
        relative = path.relative_to(source)
        if relative.parts[0] in EXCLUDED_DIRS or str(relative) in EXCLUDED_PAGES:
            continue
        pages.append(path)
    return pages


def _is_faq(relative: str) -> bool:
    return relative.startswith("faq/") and relative != "faq/index.html"


def build_corpus(source: Path, destination: Path, max_pages: int | None = None) -> Corpus:
    """Write the cleaned copy under `destination` (replaced) and return it with its questions.

    With `max_pages`, every FAQ page is kept and the other pages are an evenly spaced sample.
    """
    pages = _source_pages(source)
    faq = [p for p in pages if _is_faq(str(p.relative_to(source)))]
    others = [p for p in pages if p not in faq]
    if max_pages is not None and len(pages) > max_pages:
        room = max(max_pages - len(faq), 0)
        step = len(others) / room if room else 0
        others = [others[int(i * step)] for i in range(room)]
    if destination.exists():
        shutil.rmtree(destination)
    every_page = [p for p in source.rglob("*.html") if p.relative_to(source).parts[0] != "_static"]
    counts: dict[str, int] = {"pages excluded": len(every_page) - len(pages)}
    questions: list[Question] = []
    trees: dict[Path, etree._Element] = {}
    for path in sorted(faq + others):
        trees[path] = html.parse(str(path)).getroot()
    for path in faq:
        relative = str(path.relative_to(source))
        _remove_chrome(trees[path], counts)
        questions += _clean_faq_page(trees[path], relative, counts)
    slugs = {q.slug for q in questions if q.slug}
    files = []
    for path, tree in trees.items():
        relative = path.relative_to(source)
        if not _is_faq(str(relative)):
            _remove_chrome(tree, counts)
        _strip_fragments(tree, slugs, counts)
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(etree.tostring(tree, encoding="utf-8", method="html", doctype="<!DOCTYPE html>"))
        files.append(target)
    corpus = Corpus(destination, sorted(files), questions, counts)
    _locate_answers(corpus)
    return corpus


def _normalised(text: str) -> tuple[str, list[int]]:
    """Whitespace runs collapsed to one space; positions[i] is where char i came from."""
    out, positions = [], []
    for match in re.finditer(r"\S+", text):
        if out:
            out.append(" ")
            positions.append(match.start() - 1)
        out.append(match.group())
        positions.extend(range(match.start(), match.end()))
    return "".join(out), positions


def _locate_answers(corpus: Corpus) -> None:
    documents = {page: parse_file(corpus.root / page) for page in {q.page for q in corpus.questions}}
    for question in corpus.questions:
        text, positions = _normalised(documents[question.page].text)
        needle, _ = _normalised(question.answer)
        at = text.find(needle)
        if at < 0:
            raise AssertionError(f"{question.qid}: answer text not found in the parsed page")
        question.span = (positions[at], positions[at + len(needle) - 1] + 1)


def is_relevant(question: Question, page: str, start: int, end: int) -> bool:
    """The relevance rule of the module docstring, for a chunk of `page` at [start, end)."""
    if page != question.page or end <= start:
        return False
    a0, a1 = question.span
    overlap = max(0, min(end, a1) - max(start, a0))
    return overlap >= MIN_SHARE * (end - start) or overlap >= MIN_SHARE * (a1 - a0)


# ------------------------------------------------------------------- leakage check

_QUOTES = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "–": "-", "—": "-"})


def _plain(text: str) -> str:
    return " ".join(text.translate(_QUOTES).lower().split())


@dataclass
class Occurrence:
    question: str
    page: str
    where: str  # "heading" (a section path) or "text"
    context: str


@dataclass
class LeakageReport:
    slug_hits: list[tuple[str, str]]  # (slug, page) left in the cleaned HTML
    occurrences: list[Occurrence]

    @property
    def questions_found(self) -> int:
        return len({o.question for o in self.occurrences})


def leakage_report(corpus: Corpus, documents: Iterable[tuple[str, ParsedDocument]]) -> LeakageReport:
    """Where questions (or their slugs) are still in the cleaned corpus; see the module doc."""
    # A slug as an id or a URL fragment (a bare "is-django-stable" could be ordinary text).
    patterns = {q.slug: re.compile(rf'(?:id="(?:s-)?|#){re.escape(q.slug)}"') for q in corpus.questions if q.slug}
    slug_hits = []
    for path in corpus.files:
        raw = path.read_text(encoding="utf-8", errors="replace")
        slug_hits += [(slug, str(path.relative_to(corpus.root)))
                      for slug, pattern in patterns.items() if pattern.search(raw)]
    wanted = {_plain(q.text): q.text for q in corpus.questions}
    occurrences = []
    for page, document in documents:
        headings = {_plain(h) for section in document.sections for h in section.section_path}
        for plain, question in wanted.items():
            if plain in headings:
                occurrences.append(Occurrence(question, page, "heading", plain))
        body = _plain(document.text)
        for plain, question in wanted.items():
            for match in re.finditer(re.escape(plain), body):
                lo, hi = max(0, match.start() - 60), min(len(body), match.end() + 60)
                occurrences.append(Occurrence(question, page, "text", body[lo:hi]))
    return LeakageReport(sorted(slug_hits), occurrences)
