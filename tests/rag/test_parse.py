"""Parsing: each format, its section paths and pages, and every way a file is refused."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pypdf
import pytest

from conduit.rag.parse import (
    FoundFile,
    SkipFile,
    SkippedFile,
    SkipReason,
    discover,
    parse_bytes,
    parse_file,
    parse_paths,
)
from tests.rag.pdf_maker import make_pdf

SPHINX_PAGE = """<!DOCTYPE html>
<html><head>
  <meta charset="utf-8" />
  <title>Caching &#8212; Acme 2.0 documentation</title>
  <script>var SEARCH_INDEX = "script text";</script>
  <style>body { color: red; }</style>
</head><body>
  <div class="related" role="navigation"><h3>Navigation</h3>
    <ul><li><a href="genindex.html">index</a></li><li><a href="next.html">next page</a> |</li></ul>
  </div>
  <div id="hd"><h1><a href="index.html">Acme 2.0 documentation</a></h1>
    <div class="nav">&laquo; <a href="prev.html">previous</a> | <a href="next.html">next</a></div>
  </div>
  <div class="document"><div class="body" role="main">
    <section id="caching">
      <h1>Caching<a class="headerlink" href="#caching" title="Permalink">¶</a></h1>
      <p>Acme caches rendered pages in memory.</p>
      <div class="contents local topic" id="contents">
        <ul><li><a href="#backends">Local TOC entry: Backends</a></li></ul>
      </div>
      <div class="toctree-wrapper compound"><ul><li>Toctree entry: Deployment</li></ul></div>
      <section id="backends">
        <h2>Backends<a class="headerlink" href="#backends">¶</a></h2>
        <p>A backend stores entries.   It may   expire them.</p>
        <section id="redis">
          <h3>Redis</h3>
          <p>Redis keeps entries across restarts.</p>
          <div class="highlight"><pre><span class="n">cache</span> <span class="o">=</span> <span class="n">Redis</span>()
    <span class="n">cache</span>.<span class="n">set</span>(<span class="s2">"k"</span>, 1)</pre></div>
        </section>
      </section>
      <section id="keys"><h2>Keys</h2>
        <ul><li>Short keys</li><li>Versioned keys</li></ul>
        <table><tr><th>Name</th><th>Size</th></tr><tr><td>key</td><td>250</td></tr></table>
      </section>
    </section>
  </div></div>
  <div class="sphinxsidebar" role="navigation" aria-label="main navigation">
    <div class="sphinxsidebarwrapper"><h3>Table of Contents</h3>
      <ul><li><a href="#">Sidebar TOC: Caching</a></li></ul>
      <div id="searchbox"><h3>Quick search</h3><form><input type="text" name="q" /></form></div>
    </div>
  </div>
  <div id="ft"><div class="nav"><a href="prev.html">Footer previous</a></div></div>
  <footer>Copyright Acme footer.</footer>
</body></html>
"""


def test_plain_text_is_one_section_titled_by_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "release-notes.txt"
    path.write_bytes(b"First paragraph.\r\n\r\nSecond paragraph.\n")
    document = parse_file(path)
    assert document.title == "release-notes"
    assert document.media_type == "text/plain"
    assert document.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [(s.section_path, s.page, s.text) for s in document.sections] == [
        (("release-notes",), None, "First paragraph.\n\nSecond paragraph."),
    ]


def test_markdown_headings_become_section_paths(tmp_path: Path) -> None:
    path = tmp_path / "guide.md"
    path.write_text(
        "---\ntitle: The Guide\nauthor: someone\n---\n"
        "Intro before any heading.\n\n"
        "# Install\n## From PyPI\nRun pip.\n\n"
        "```sh\n# a comment, not a heading\npip install acme\n```\n\n"
        "Configure\n---------\n\nEdit the file.\n\n"
        "### Options ###\nSome options.\n\n"
        "# Usage\nCall it.\n",
        encoding="utf-8",
    )
    document = parse_file(path)
    assert document.title == "The Guide"  # front matter wins over the first heading
    assert document.media_type == "text/markdown"
    paths = [section.section_path for section in document.sections]
    assert paths == [
        ("The Guide",),
        ("The Guide", "Install", "From PyPI"),
        ("The Guide", "Install", "Configure"),
        ("The Guide", "Install", "Configure", "Options"),
        ("The Guide", "Usage"),
    ]
    # "Install" has no text of its own: its line leads into its first subsection.
    assert document.sections[1].text.startswith("Install\nFrom PyPI\nRun pip.")
    assert "# a comment, not a heading\npip install acme" in document.sections[1].text
    assert "author" not in document.text


def test_markdown_title_is_the_first_top_heading() -> None:
    document = parse_bytes(b"# Acme\n\nText.\n\n## Part\n\nMore.\n", "README.md")
    assert document.title == "Acme"
    assert [s.section_path for s in document.sections] == [("Acme",), ("Acme", "Part")]


def test_sphinx_page_loses_navigation_sidebar_and_tables_of_contents() -> None:
    document = parse_bytes(SPHINX_PAGE.encode(), "caching.html")
    text = document.text
    assert document.title == "Caching"
    assert document.media_type == "text/html"
    for chrome in ("script text", "color: red", "Navigation", "next page", "previous",
                   "Acme 2.0 documentation", "Local TOC entry", "Toctree entry", "Table of Contents",
                   "Sidebar TOC", "Quick search", "Footer previous", "footer", "¶"):
        assert chrome not in text, chrome
    assert [s.section_path for s in document.sections] == [
        ("Caching",),
        ("Caching", "Backends"),
        ("Caching", "Backends", "Redis"),
        ("Caching", "Keys"),
    ]
    backends, redis, keys = document.sections[1:]
    assert backends.text == "Backends\n\nA backend stores entries. It may expire them."
    # Code keeps its lines and indentation; list items and table rows keep theirs.
    assert 'cache = Redis()\n    cache.set("k", 1)' in redis.text
    assert "Short keys\nVersioned keys" in keys.text
    assert "Name Size\nkey 250" in keys.text


def test_html_in_a_declared_legacy_charset_is_decoded() -> None:
    page = '<html><head><meta charset="iso-8859-1"><title>Caf\xe9</title></head><body><p>Cr\xe8me br\xfbl\xe9e.</p></body></html>'
    document = parse_bytes(page.encode("latin-1"), "menu.htm")
    assert document.title == "Café"
    assert document.text == "Crème brûlée."


def test_pdf_pages_are_numbered_and_the_outline_gives_section_paths() -> None:
    plain = make_pdf([
        ["1 Introduction", "Acme is a cache."],
        ["It is fast.", "2 Usage", "Call get and set."],
        ["More usage notes."],
    ])
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(plain)))
    writer.add_metadata({"/Title": "Acme Manual"})
    writer.add_outline_item(title="Introduction", page_number=0)
    usage = writer.add_outline_item(title="Usage", page_number=1)
    writer.add_outline_item(title="Notes", page_number=2, parent=usage)
    buffer = io.BytesIO()
    writer.write(buffer)

    document = parse_bytes(buffer.getvalue(), "acme.pdf")
    assert document.title == "Acme Manual"
    assert document.media_type == "application/pdf"
    assert [(s.page, s.section_path, s.text) for s in document.sections] == [
        (1, ("Acme Manual", "Introduction"), "1 Introduction\nAcme is a cache."),
        (2, ("Acme Manual", "Introduction"), "It is fast."),  # cut where "Usage" starts
        (2, ("Acme Manual", "Usage"), "2 Usage\nCall get and set."),
        (3, ("Acme Manual", "Usage", "Notes"), "More usage notes."),  # title not on the page
    ]


def test_pdf_without_outline_has_one_section_per_page(tmp_path: Path) -> None:
    path = tmp_path / "notes.pdf"
    path.write_bytes(make_pdf([["Page one."], [], ["Page three."]]))
    document = parse_file(path)
    assert [(s.page, s.section_path, s.text) for s in document.sections] == [
        (1, ("notes",), "Page one."), (3, ("notes",), "Page three."),
    ]


def test_pdf_running_headers_and_page_numbers_are_dropped() -> None:
    pages = [[f"Chapter 2: Usage {n}", f"Body text of page {n}.", "It goes on.", str(n)] for n in range(1, 5)]
    document = parse_bytes(make_pdf(pages), "manual.pdf")
    assert [s.text for s in document.sections] == [f"Body text of page {n}.\nIt goes on." for n in range(1, 5)]


def test_an_upload_without_extension_uses_its_declared_media_type() -> None:
    document = parse_bytes(b"# Title\n\nBody.", "upload", "text/markdown; charset=utf-8")
    assert document.media_type == "text/markdown"
    assert document.title == "Title"
    with pytest.raises(SkipFile) as refused:
        parse_bytes(b"MZ\x90\x00", "setup.exe", "application/octet-stream")
    assert refused.value.reason == SkipReason.UNSUPPORTED_TYPE


def test_content_hash_tells_an_unchanged_file_from_an_edited_one(tmp_path: Path) -> None:
    path = tmp_path / "a.md"
    path.write_text("# A\n\ntext\n")
    first, again = parse_file(path), parse_file(path)
    path.write_text("# A\n\ntext, edited\n")
    assert first.content_hash == again.content_hash != parse_file(path).content_hash


def _encrypted_pdf(password: str) -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(make_pdf([["Secret text."]]))))
    writer.encrypt(user_password=password, owner_password="owner", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


BAD_FILES: dict[str, tuple[str, bytes, SkipReason]] = {
    "zero bytes": ("empty.txt", b"", SkipReason.EMPTY),
    "over the size limit": ("big.md", b"word " * 300, SkipReason.TOO_LARGE),
    "binary with a text extension": ("logo.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), SkipReason.BINARY),
    "a PDF named .txt": ("report.txt", make_pdf([["hello"]]), SkipReason.BINARY),
    "Latin-1 text": ("latin1.txt", "Crème brûlée à la carte\n".encode("latin-1"), SkipReason.INVALID_UTF8),
    "random bytes": ("noise.md", bytes((i * 7919 + 13) % 256 for i in range(800)), SkipReason.BINARY),
    "password-protected PDF": ("locked.pdf", _encrypted_pdf("secret"), SkipReason.ENCRYPTED_PDF),
    "truncated PDF": ("broken.pdf", make_pdf([["hello"]])[:60], SkipReason.UNREADABLE_PDF),
    "not a PDF at all": ("fake.pdf", b"this is plain text pretending to be a PDF", SkipReason.UNREADABLE_PDF),
    "scanned PDF without a text layer": ("scan.pdf", make_pdf([[], []]), SkipReason.NO_TEXT),
    "whitespace only": ("blank.md", b"  \n\n\t\n", SkipReason.NO_TEXT),
    "HTML that is all navigation": ("nav.html", b"<html><body><nav>Home | Next</nav></body></html>", SkipReason.NO_TEXT),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_each_bad_file_is_refused_with_its_reason(tmp_path: Path, case: str) -> None:
    name, data, reason = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SkipFile) as refused:
        parse_file(path, root=tmp_path, max_bytes=1000)
    assert refused.value.reason == reason
    assert refused.value.message  # something to show the user
    if case != "over the size limit":  # uploads take the same checks
        with pytest.raises(SkipFile) as refused:
            parse_bytes(data, name, max_bytes=1000)
        assert refused.value.reason == reason


def test_an_encrypted_pdf_with_an_empty_password_is_read() -> None:
    document = parse_bytes(_encrypted_pdf(""), "permissions-only.pdf")
    assert document.text == "Secret text."


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("private")
    root = tmp_path / "docs"
    root.mkdir()
    (root / "link.txt").symlink_to(outside)
    with pytest.raises(SkipFile) as refused:
        parse_file(root / "link.txt", root=root)
    assert refused.value.reason == SkipReason.OUTSIDE_ROOT
    assert parse_file(root / "link.txt").text == "private"  # named directly, no root: allowed


def test_unsupported_and_missing_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(SkipFile) as refused:
        parse_file(tmp_path / "sheet.xlsx")
    assert refused.value.reason == SkipReason.UNSUPPORTED_TYPE
    assert ".md" in refused.value.message  # says what is supported
    with pytest.raises(SkipFile) as refused:
        parse_file(tmp_path / "missing.md")
    assert refused.value.reason == SkipReason.NOT_FOUND


def _make_tree(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "secrets").mkdir(parents=True)
    (outside / "secret.md").write_text("# Secret")
    (outside / "secrets" / "key.txt").write_text("key")
    root = tmp_path / "docs"
    (root / "guide" / "deep").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "index.md").write_text("# Index\n\nWelcome.")
    (root / "guide" / "install.html").write_text("<h1>Install</h1><p>Run it.</p>")
    (root / "guide" / "deep" / "notes.txt").write_text("Deep notes.")
    (root / "guide" / "image.png").write_bytes(b"\x89PNG")
    (root / ".git" / "HEAD.txt").write_text("hidden")
    (root / "empty.txt").write_bytes(b"")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "linked-secret.md").symlink_to(outside / "secret.md")
    (root / "linked-dir").symlink_to(outside / "secrets", target_is_directory=True)
    (root / "alias.md").symlink_to(root / "index.md")  # inside the root: fine
    (root / "dangling.md").symlink_to(root / "gone.md")
    return root


def test_discover_walks_folders_and_reports_links_out(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    results = list(discover([root, tmp_path / "nowhere", root / "guide" / "image.png"]))
    found = {str(r.path.relative_to(root)) for r in results if isinstance(r, FoundFile)}
    assert found == {"alias.md", "empty.txt", "index.md", "latin1.txt", "guide/install.html",
                     "guide/deep/notes.txt"}
    assert all(r.root == root.resolve() for r in results if isinstance(r, FoundFile))
    skipped = {r.path.name: r.reason for r in results if isinstance(r, SkippedFile)}
    assert skipped == {
        "linked-secret.md": SkipReason.OUTSIDE_ROOT,
        "linked-dir": SkipReason.OUTSIDE_ROOT,
        "dangling.md": SkipReason.NOT_FOUND,
        "nowhere": SkipReason.NOT_FOUND,
        "image.png": SkipReason.UNSUPPORTED_TYPE,  # named directly, so reported
    }


def test_a_batch_reports_bad_files_and_parses_the_rest(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    results = {Path(r.source).name if hasattr(r, "source") else r.path.name: r
               for r in parse_paths([root])}
    parsed = {name for name, r in results.items() if not isinstance(r, SkippedFile)}
    assert parsed == {"index.md", "alias.md", "install.html", "notes.txt"}
    reasons = {name: r.reason for name, r in results.items() if isinstance(r, SkippedFile)}
    assert reasons == {
        "empty.txt": SkipReason.EMPTY, "latin1.txt": SkipReason.INVALID_UTF8,
        "linked-secret.md": SkipReason.OUTSIDE_ROOT, "linked-dir": SkipReason.OUTSIDE_ROOT,
        "dangling.md": SkipReason.NOT_FOUND,
    }


def test_a_symlink_swapped_after_discovery_is_still_refused(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    [found] = [r for r in discover([root]) if isinstance(r, FoundFile) and r.path.name == "index.md"]
    os.remove(found.path)
    found.path.symlink_to(tmp_path / "outside" / "secret.md")
    with pytest.raises(SkipFile) as refused:
        parse_file(found.path, root=found.root)
    assert refused.value.reason == SkipReason.OUTSIDE_ROOT


DJANGO_FAQ = Path("/usr/share/doc/python-django-doc/html/faq/general.html")


@pytest.mark.skipif(not DJANGO_FAQ.exists(), reason="python-django-doc is not installed")
def test_a_real_sphinx_page_keeps_only_its_content() -> None:
    document = parse_file(DJANGO_FAQ)
    assert document.title == "FAQ: General"
    assert ("FAQ: General", "Is Django stable?") in [s.section_path for s in document.sections]
    for chrome in ("Quick search", "Table of Contents", "Last update", "Previous topic", "¶", "Django 3.2"):
        assert chrome not in document.text, chrome
