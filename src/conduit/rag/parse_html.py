"""HTML -> sections: page chrome removed, headings kept as the section path.

Navigation, headers, footers, sidebars and tables of contents repeat text from other pages
(or other sections of the same page); indexed, they crowd the real answer out of the top
results, so they are dropped before any text is taken.
"""

from __future__ import annotations

import re

from lxml import etree

from conduit.rag.document import Section, SectionBuilder, SkipFile, SkipReason

_DROPPED_TAGS = frozenset({
    "script", "style", "noscript", "template", "nav", "aside", "form", "iframe", "svg",
    "button", "select", "textarea", "object", "embed", "canvas", "dialog", "menu",
})
_DROPPED_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar"})
_DROPPED_CLASSES = frozenset({
    # Sphinx (classic, alabaster, Django's theme): sidebars, prev/next bars, tables of contents
    "sphinxsidebar", "sphinxsidebarwrapper", "related", "toctree-wrapper", "headerlink",
    "searchbox", "rst-footer-buttons", "wy-nav-side", "wy-breadcrumbs", "prev-next-area",
    # common site chrome
    "sidebar", "nav", "navbar", "navigation", "menu", "breadcrumb", "breadcrumbs", "toc",
    "table-of-contents", "skip-link", "skiplink", "header", "footer", "site-header", "site-footer",
    "cookie-banner", "visually-hidden", "sr-only",
})
_DROPPED_IDS = frozenset({
    "hd", "ft", "header", "footer", "sidebar", "nav", "navigation", "global-nav", "menu",
    "toc", "searchbox", "breadcrumbs",
})
# docutils' local table of contents is <div class="contents local topic">; "contents" alone
# is too common a name for a page's main column to drop.
_LOCAL_TOC_MARKERS = frozenset({"topic", "local"})


def _chrome(document: etree._Element) -> list[etree._Element]:
    found = []
    walker = etree.iterwalk(document, events=("start",))
    for _, element in walker:
        tag = element.tag
        if not isinstance(tag, str):  # an entity or a leftover comment
            continue
        if tag in _DROPPED_TAGS or _is_chrome(element):
            found.append(element)
            walker.skip_subtree()
        elif tag == "pre" or tag in _INLINE_UNITS:
            # No chrome inside code or inline markup, only thousands of highlighting spans.
            walker.skip_subtree()
    return found


def _is_chrome(element: etree._Element) -> bool:
    if element.tag in ("header", "footer"):
        # A page-level <header>/<footer> is chrome; one inside an article or main holds its title.
        return not any(ancestor.tag in ("article", "main") for ancestor in element.iterancestors())
    get = element.get
    if get("role") in _DROPPED_ROLES or get("id") in _DROPPED_IDS:
        return True
    if get("hidden") is not None or get("aria-hidden") == "true":
        return True
    classes = get("class")
    if not classes:
        return False
    names = set(classes.split())
    return bool(names & _DROPPED_CLASSES) or ("contents" in names and bool(names & _LOCAL_TOC_MARKERS))


_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
# Elements taken whole (one itertext) rather than walked: no headings or blocks inside them.
_PARAGRAPH_UNITS = frozenset({"p", "pre", "caption", "figcaption", "summary", "address"})
_INLINE_UNITS = frozenset({
    "a", "abbr", "b", "bdi", "bdo", "big", "cite", "code", "data", "del", "dfn", "em", "font",
    "i", "img", "ins", "kbd", "label", "mark", "q", "s", "samp", "small", "span", "strong",
    "sub", "sup", "time", "tt", "u", "var", "wbr", "br",
})
# Everything else is a container and is walked; these end a line rather than a paragraph.
_LINE_CONTAINERS = frozenset({"li", "dt", "dd", "tr"})
_CELL_CONTAINERS = frozenset({"td", "th"})

# Break markers between pieces, resolved after the walk (private-use characters, never in text).
_PARAGRAPH = "\ue000"
_LINE = "\ue001"
_SPACES = re.compile(r"[ \t\n\r\f\v]+")


def parse_html(text: str, fallback_title: str) -> tuple[str, list[Section]]:
    parser = etree.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
    document = etree.fromstring(text.encode("utf-8"), parser=parser)
    if document is None:
        raise SkipFile(SkipReason.NO_TEXT, "no HTML content found in the file")
    page_title = " ".join((document.findtext(".//title") or "").split())
    for element in _chrome(document):
        _remove_keeping_tail(element)
    for line_break in document.iter("br"):
        line_break.tail = "\n" + (line_break.tail or "")
    builder = _SectionWalker().walk(_main_content(document))
    title = builder.first_h1 or page_title or fallback_title
    return title, builder.sections(title)


def _remove_keeping_tail(element: etree._Element) -> None:
    parent = element.getparent()
    if parent is None:
        return
    if element.tail:  # the text after the element belongs to its parent
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


def _main_content(document: etree._Element) -> etree._Element:
    """<main> or role=main when the page marks one; otherwise what is left of <body>."""
    for candidate in document.iter("main"):
        return candidate
    for candidate in document.iterfind('.//*[@role="main"]'):
        return candidate
    body = document.find("body")
    return body if body is not None else document


class _SectionWalker:
    """Walks the tree once in document order, cutting a section at each heading."""

    def __init__(self) -> None:
        self.builder = SectionBuilder(separator="\n\n")
        self.pieces: list[str] = []

    def walk(self, root: etree._Element) -> SectionBuilder:
        walker = etree.iterwalk(root, events=("start", "end"))
        for event, element in walker:
            tag = element.tag
            if not isinstance(tag, str):
                continue
            if event == "start":
                if tag in _HEADINGS:
                    self._flush_body()
                    self.builder.heading(_HEADINGS[tag], "".join(element.itertext()))
                    walker.skip_subtree()
                elif tag in _INLINE_UNITS:
                    self.pieces.append(_SPACES.sub(" ", "".join(element.itertext())))
                    walker.skip_subtree()
                elif tag in _PARAGRAPH_UNITS:
                    text = "".join(element.itertext())
                    self.pieces += (_PARAGRAPH, text if tag == "pre" else _SPACES.sub(" ", text), _PARAGRAPH)
                    walker.skip_subtree()
                else:
                    if tag not in _CELL_CONTAINERS:
                        self.pieces.append(_LINE if tag in _LINE_CONTAINERS else _PARAGRAPH)
                    if element.text:
                        self.pieces.append(_SPACES.sub(" ", element.text))
            else:
                if tag in _CELL_CONTAINERS:
                    self.pieces.append(" ")
                elif tag not in _HEADINGS and tag not in _INLINE_UNITS and tag not in _PARAGRAPH_UNITS:
                    self.pieces.append(_LINE if tag in _LINE_CONTAINERS else _PARAGRAPH)
                if element.tail and element is not root:
                    self.pieces.append(_SPACES.sub(" ", element.tail))
        self._flush_body()
        return self.builder

    def _flush_body(self) -> None:
        if self.pieces:
            self.builder.add(_resolve_markers("".join(self.pieces)))
            self.pieces = []


_MARKER_RUN = re.compile("[ \t]*(?:[\ue000\ue001][ \t]*)+")


def _resolve_markers(text: str) -> str:
    """A run of break markers becomes one blank line if any asked for a paragraph, else a newline."""
    text = _MARKER_RUN.sub(lambda run: "\n\n" if _PARAGRAPH in run.group() else "\n", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
