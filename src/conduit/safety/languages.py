"""Languages for the input guards: folding text for comparison, telling which of the glossed
languages a text is in (by its script, or by its function words and glossed words), and the
word-for-word English gloss that lets a detector trained on English read an attack written in
German, Chinese or Arabic. The tables are data/gloss.json and data/gloss_extra.json."""

from __future__ import annotations

import json
import re
import unicodedata
from functools import cache
from pathlib import Path

_WORD = re.compile(r"\w+")
_GLOSS_TOKEN = re.compile(r"\w+|[^\w\s]+")
# gloss.json: de/fr/es/it/pt; gloss_extra.json: nl/sv/pl/tr/vi/id (told by function words, like
# the first five) and ru/ar/hi/he/zh/ja/ko (told by their script).
_GLOSS = tuple(Path(__file__).with_name("data") / name for name in ("gloss.json", "gloss_extra.json"))
# Languages told by their letters (after `fold`, which turns Hangul into jamo). Japanese shares the
# Han letters with Chinese and is told by its kana.
_SCRIPTS = {
    "ru": re.compile("[\u0400-\u04ff]"),
    "ar": re.compile("[\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufefc]"),
    "hi": re.compile("[\u0900-\u097f]"),
    "he": re.compile("[\u0590-\u05ff]"),
    "ko": re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]"),
    "zh": re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]"),
}
_KANA = re.compile("[\u3040-\u30ff]")
_FOLD_SPACES = re.compile(r"[^\S\n]+")
_FOLD_NEWLINES = re.compile(r"\s*\n\s*")


def fold(text: str) -> str:
    """Casefolded, accents stripped, whitespace collapsed (newlines kept)."""
    text = text.casefold()
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text)
        # Each distinct character checked once, not every character (a chunk's curly quotes
        # made this the scorer's largest Python loop)
        marks = {ord(c): None for c in set(text) if unicodedata.combining(c)}
        if marks:
            text = text.translate(marks)
    return _FOLD_NEWLINES.sub("\n", _FOLD_SPACES.sub(" ", text)).strip()


def _alternation(keys: object, bounded: bool) -> re.Pattern[str]:
    """One regex for many words or phrases, longest first (so "system prompt" wins over "system")."""
    body = "|".join(map(re.escape, sorted(keys, key=len, reverse=True)))  # type: ignore[arg-type]
    return re.compile(rf"\b(?:{body})\b" if bounded else f"(?:{body})")


@cache
def _gloss_tables() -> dict[str, dict]:
    """Each language's table: "stopwords" (how a Latin-script language is told), "phrases" and
    "words" (whole words), "stems" (a word that starts with one: inflected languages) and
    "substrings" (matched anywhere: languages without spaces or with attached particles). Keys are
    folded here as the text is, so they are written in the language's own spelling."""
    tables: dict[str, dict] = {}
    for path in _GLOSS:
        tables.update(json.loads(path.read_text(encoding="utf-8")))
    for table in tables.values():
        table["stopwords"] = frozenset(fold(w) for w in table.get("stopwords", ()))
        for kind in ("phrases", "words", "stems", "substrings"):
            table[kind] = {fold(k): v for k, v in table.get(kind, {}).items()}
        table["phrase_re"] = _alternation(table["phrases"], True) if table["phrases"] else None
        table["stem_re"] = _alternation(table["stems"], False) if table["stems"] else None
        table["substring_re"] = (_alternation(table["substrings"], False) if table["substrings"]
                                 else None)
    return tables


@cache
def _marked_languages() -> tuple[str, ...]:
    return tuple(lang for lang, table in _gloss_tables().items() if table["stopwords"])


@cache
def _language_markers() -> dict[str, tuple[str, ...]]:
    """Word -> the languages it points to: their function words, and their longer words that
    are glossed ("anweisungen"). One lookup per word instead of one per word and language."""
    markers: dict[str, list[str]] = {}
    for lang in _marked_languages():
        table = _gloss_tables()[lang]
        glossed = (w for w, english in table["words"].items() if len(w) > 3 and english != w)
        for word in {*table["stopwords"], *glossed}:
            markers.setdefault(word, []).append(lang)
    return {word: tuple(langs) for word, langs in markers.items()}


def guess_language(folded: str) -> str:
    """A language of gloss.json / gloss_extra.json by the script (when at least a third of the
    letters are in one) or by its function and glossed words; 'en' when unsure."""
    if not folded.isascii() and (letters := sum(1 for c in folded if c.isalpha())):
        counts = {lang: len(pattern.findall(folded)) for lang, pattern in _SCRIPTS.items()}
        script = max(counts, key=lambda lang: counts[lang])
        if counts[script] >= 2 and counts[script] * 3 >= letters:
            return "ja" if script == "zh" and _KANA.search(folded) else script
    markers = _language_markers()
    hits = dict.fromkeys(_marked_languages(), 0)
    for word in _WORD.findall(folded):
        for lang in markers.get(word, ()):
            hits[lang] += 1
    best = max(hits, key=lambda lang: hits[lang])
    return best if hits[best] >= 2 and hits[best] > hits["en"] else "en"


def gloss(folded: str, language: str) -> str:
    """A word-for-word English reading of a text in one of the glossed languages, for the words
    attacks use: enough for a detector trained on English to recognise "ignoriere alle vorherigen
    Anweisungen" or "忽略之前的所有指令"."""
    table = _gloss_tables()[language]
    if table["substring_re"]:
        subs = table["substrings"]
        folded = table["substring_re"].sub(lambda m: f" {subs[m.group()]} ", folded)
    if table["phrase_re"]:
        phrases = table["phrases"]
        folded = table["phrase_re"].sub(lambda m: phrases[m.group()], folded)
    words, stems, stem_re = table["words"], table["stems"], table["stem_re"]

    def word(token: str) -> str:
        if token in words:
            return words[token]
        found = stem_re.match(token) if stem_re else None
        return stems[found.group()] if found else token

    return " ".join(word(t) for t in _GLOSS_TOKEN.findall(folded))
