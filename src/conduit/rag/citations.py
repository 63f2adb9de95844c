"""Citation checking: does each sentence of an answer follow from the passages it cites?

The model was asked to cite passages as [n] (see `conduit.rag.context`). Here the answer is
read back:

- markers are `[1]`, `[1, 2]` and chains `[1][2]`; a bracket right after a word, `)` or `]`
  (`items[2]`), or inside `code`, is not a marker;
- markers of passages that do not exist (`[7]` of 3, `[0]`) are removed from the text;
- the answer is split into sentences, and each sentence that cites passages gets a support
  score against them; one below the threshold is flagged unsupported. A sentence with no
  marker is reported as uncited (informational: greetings and connecting sentences are fine).

The support score (0..1):

- lexical, always: the share of the sentence's content words that occur in the cited
  passages (all of them together: one sentence may join facts of two). Content words are
  those of the sparse index's tokenizer: lowercased, stop words removed, Snowball-stemmed,
  so "configured" matches "configuration". A sentence is compared as a set of words.
- with an embedder: the mean of the lexical share and the best cosine similarity between
  the sentence and one sentence of the cited passages, which credits paraphrase.

Thresholds were chosen on the table of supported and unsupported sentences in
tests/rag/test_citations.py (see there for the scores). Known blind spots of both measures:
negation ("not" is a stop word) and a changed number among otherwise copied words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from conduit.rag.context import Passage
from conduit.rag.rerank import sentences as passage_sentences
from conduit.rag.sparse import Tokenizer

LEXICAL_THRESHOLD = 0.65
EMBEDDING_THRESHOLD = 0.7  # for the mean of the lexical share and the cosine

Embed = Callable[[list[str]], np.ndarray]  # texts -> L2-normalised rows

_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.DOTALL)
_CHAIN = re.compile(r"(?<![\w)\]])(?:\[\s*\d+(?:\s*,\s*\d+)*\s*\])+")
_GROUP = re.compile(r"\[([\d,\s]+)\]")
_NUMBER = re.compile(r"\d+")
# A sentence ends at a newline, or at . ! ? (with closing quotes and the markers that cite
# it) before whitespace and a word that does not start in lower case ("e.g. the" goes on).
_END = re.compile(r"\n|[.!?]+[\"'”’)]*(?:[ \t]*\[[\d,\s]+\])*(?=\s+[^a-z\s]|\s*\Z)")
_ENUMERATOR = re.compile(r"(?:\d+|[A-Za-z])[.)]")  # "2." opening a list item is no sentence
_tokenizer = Tokenizer()


@dataclass(frozen=True)
class SentenceCheck:
    text: str  # as in the cleaned answer, markers included
    start: int  # offsets into the cleaned answer
    end: int
    citations: tuple[int, ...]  # passage numbers, in order of first mention
    support: float | None  # None: nothing cited, or no content word to check
    supported: bool | None

    def to_dict(self) -> dict:
        return {"text": self.text, "citations": list(self.citations), "support": self.support,
                "supported": self.supported}


@dataclass(frozen=True)
class CitationReport:
    text: str  # the answer without invalid markers
    citations: list[dict]  # one per passage cited, by number: the API's citation objects
    sentences: list[SentenceCheck]
    removed_markers: list[int]  # numbers that named no passage, in order of appearance

    @property
    def unsupported(self) -> list[SentenceCheck]:
        return [s for s in self.sentences if s.supported is False]

    @property
    def uncited(self) -> list[SentenceCheck]:
        return [s for s in self.sentences if not s.citations]


def check_citations(answer: str, passages: Sequence[Passage], *, embed: Embed | None = None,
                    threshold: float | None = None) -> CitationReport:
    """Clean the markers of `answer`, score each citing sentence, and list what was cited."""
    by_number = {passage.number: passage for passage in passages}
    text, removed = _remove_invalid_markers(answer, by_number)
    checks = _sentences(text)
    if threshold is None:
        threshold = EMBEDDING_THRESHOLD if embed is not None else LEXICAL_THRESHOLD
    supports = _supports(checks, by_number, embed)
    sentences = [
        SentenceCheck(text=s.text, start=s.start, end=s.end, citations=s.cited, support=support,
                      supported=None if support is None else support >= threshold)
        for s, support in zip(checks, supports)
    ]
    cited_numbers = sorted({n for s in sentences for n in s.citations})
    return CitationReport(text=text, citations=[citation(by_number[n]) for n in cited_numbers],
                          sentences=sentences, removed_markers=removed)


def check_streamed_answer(deltas: Iterable[str], passages: Sequence[Passage], *,
                          embed: Embed | None = None,
                          threshold: float | None = None) -> CitationReport:
    """The same check on a streamed answer, once it has ended.

    The client has already received the raw text, invalid markers included: send the
    report's citations (and, if wanted, its cleaned text) in the final event.
    """
    return check_citations("".join(deltas), passages, embed=embed, threshold=threshold)


def citation(passage: Passage) -> dict:
    """A passage as the API reports it in a response's `citations`."""
    return {"index": passage.number, "file_id": passage.file_id, "chunk_id": passage.chunk_ids[0],
            "chunk_ids": passage.chunk_ids, "title": passage.title, "section": passage.section,
            "page": passage.page, "score": passage.score, "text": passage.text}


def grounded_share(report: CitationReport, passages: Sequence[Passage], threshold: float | None = None) -> float | None:
    """The share of the answer's sentences that the sources support: a citing sentence by its
    check; an uncited one by its words against all passages (it cited nothing, but may still
    state what they say). Sentences without content words ("Sure!") do not count. None: the
    answer has no sentence to judge."""
    threshold = LEXICAL_THRESHOLD if threshold is None else threshold
    everything = set().union(*(set(_tokenizer(p.text)) for p in passages)) if passages else set()
    verdicts = [
        s.supported if s.citations else _at_least(lexical_support(_CHAIN.sub("", s.text), everything), threshold)
        for s in report.sentences
    ]
    judged = [v for v in verdicts if v is not None]
    return sum(judged) / len(judged) if judged else None


def _at_least(score: float | None, threshold: float) -> bool | None:
    return None if score is None else score >= threshold


def lexical_support(sentence: str, passage_words: set[str]) -> float | None:
    """The share of the sentence's content words found in the passages; None if it has none."""
    words = set(_tokenizer(sentence))
    return len(words & passage_words) / len(words) if words else None


def _remove_invalid_markers(answer: str, by_number: dict[int, Passage]) -> tuple[str, list[int]]:
    removed: list[int] = []
    pieces: list[str] = []
    last = 0
    for match in _CHAIN.finditer(_mask_code(answer)):
        groups = [[int(n) for n in _NUMBER.findall(group)]
                  for group in _GROUP.findall(match.group())]
        bad = [n for group in groups for n in group if n not in by_number]
        if not bad:
            continue
        removed.extend(bad)
        good = [[n for n in group if n in by_number] for group in groups]
        good = [group for group in good if group]
        start, end = match.start(), match.end()
        if good:
            replacement = "".join("[" + ", ".join(map(str, group)) + "]" for group in good)
        else:  # drop the marker with the space before it: "word [7]." -> "word."
            replacement = ""
            while start > last and answer[start - 1] in " \t":
                start -= 1
            if start == 0 or answer[start - 1] == "\n":  # or after it, at a line's start
                while end < len(answer) and answer[end] in " \t":
                    end += 1
        pieces += [answer[last:start], replacement]
        last = end
    pieces.append(answer[last:])
    return "".join(pieces), removed


class _Sentence(NamedTuple):
    text: str
    start: int
    end: int
    cited: tuple[int, ...]


def _sentences(text: str) -> list[_Sentence]:
    """The answer's sentences and what each cites; code blocks are not sentences.

    A piece that is nothing but markers (a citation put on the next line) cites for the
    sentence before it.
    """
    masked = _mask_code(text, fence="\n")
    result: list[_Sentence] = []
    start, carried = 0, None
    for end in [m.end() for m in _END.finditer(masked)] + [len(text)]:
        piece = masked[start:end]
        lead = len(piece) - len(piece.lstrip())
        span_start, span_end = start + lead, start + len(piece.rstrip())
        start = end
        if span_end <= span_start:
            continue
        if _ENUMERATOR.fullmatch(masked[span_start:span_end]):
            carried = span_start if carried is None else carried
            continue
        span_start, carried = (span_start if carried is None else carried), None
        markers = list(_CHAIN.finditer(masked, span_start, span_end))
        cited = tuple(dict.fromkeys(int(n) for m in markers for n in _NUMBER.findall(m.group())))
        if not _CHAIN.sub("", masked[span_start:span_end]).strip(" \t.,;:!?") and result:
            previous = result.pop()
            span_start, cited = previous.start, tuple(dict.fromkeys(previous.cited + cited))
        result.append(_Sentence(text[span_start:span_end], span_start, span_end, cited))
    return result


def _supports(checks: list[_Sentence], by_number: dict[int, Passage],
              embed: Embed | None) -> list[float | None]:
    vocabulary = {n: set(_tokenizer(p.text)) for n, p in by_number.items()}
    claims = [_CHAIN.sub("", check.text) for check in checks]
    lexical = [
        lexical_support(claim, set().union(*(vocabulary[n] for n in check.cited)))
        if check.cited else None
        for claim, check in zip(claims, checks)
    ]
    if embed is None:
        return lexical
    to_embed = [i for i, score in enumerate(lexical) if score is not None]
    if not to_embed:
        return lexical
    # One batch: the claims, then every sentence of every cited passage.
    cited = sorted({n for i in to_embed for n in checks[i].cited})
    evidence = {n: passage_sentences(by_number[n].text) or [by_number[n].text] for n in cited}
    texts = [claims[i] for i in to_embed] + [s for n in cited for s in evidence[n]]
    vectors = np.asarray(embed(texts))
    bounds = np.cumsum([len(evidence[n]) for n in cited])[:-1]
    rows = dict(zip(cited, np.split(vectors[len(to_embed):], bounds)))
    combined = list(lexical)
    for vector, i in zip(vectors[:len(to_embed)], to_embed):
        evidence_rows = np.concatenate([rows[n] for n in checks[i].cited])
        cosine = float(np.clip((evidence_rows @ vector).max(), 0.0, 1.0))
        combined[i] = (lexical[i] + cosine) / 2
    return combined


def _mask_code(text: str, fence: str = "_") -> str:
    """`text` with code blanked out, offsets unchanged: inline code as "_", fences as `fence`."""
    def blank(match: re.Match) -> str:
        code = match.group()
        return (fence if code.startswith("```") else "_") * len(code)

    return _CODE.sub(blank, text)
