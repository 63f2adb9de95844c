"""PII detection and reversible redaction, built on Presidio's pattern recognizers.

Everything here is pattern + checksum based and works offline: no spaCy model is loaded,
tldextract uses its bundled suffix-list snapshot and phonenumbers its bundled metadata.
Importing presidio costs seconds (it imports spaCy, and transformers/torch when installed),
so it happens on the first scanner build, not on import of this module.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from presidio_analyzer import EntityRecognizer

ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "IP_ADDRESS",
    "SECRET",
)
# bench/guards_pii.py: 0.1-0.4 tie for the best F1; 0.4 is the highest value that still keeps
# phone numbers with no context word (presidio scores them 0.4) and it needs a context word for
# presidio's "very weak" SSN shapes (any 9 digits, ZIP+4: 0.05 + 0.35). 0.05 costs 4 points of
# precision, 0.5 costs 11 points of recall (phone numbers).
DEFAULT_MIN_SCORE = 0.4
PHONE_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR", "IN")

# Presidio's LemmaContextAwareEnhancer defaults, applied to plain words: no NLP model needed.
_CONTEXT_WINDOW_WORDS = 5
_CONTEXT_BOOST = 0.35
_MIN_SCORE_WITH_CONTEXT = 0.4
_WORD = re.compile(r"\w+")
_PHONE_CANDIDATE = re.compile(r"(?P<number>[+(]?\d[\d \t().\-/]*\d)(?:\s?(?:x|ext\.?)\s?\d{1,6})?")
# Shapes phonenumbers accepts as (German, Indian...) phone numbers that are something else.
_NOT_A_PHONE = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2})?|\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?"  # dates, times
    r"|\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}"  # card-shaped groups of four
    r"|\b0\.\d+"  # decimal fractions
    r"|\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b"  # IPv4 addresses and netmasks
)
_PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]*)_(\d+)>")
# What a text must contain for an entity's patterns to match at all (a necessary condition of
# every pattern, presidio's or ours): one C-speed search skips a recognizer's patterns, which
# cost 5-40 us per text each; most prose has no '@', no run of three digits, no key name.
_NEEDS: dict[str, re.Pattern[str]] = {
    "EMAIL_ADDRESS": re.compile("@"),
    "PHONE_NUMBER": re.compile(r"\d"),
    "CREDIT_CARD": re.compile(r"\d{4}[- ]?\d{3}"),  # 4 digits, then groups of 3 to 5
    "IBAN_CODE": re.compile(r"[A-Z]{2}\d{2}", re.IGNORECASE),  # country code, check digits (presidio ignores case)
    "US_SSN": re.compile(r"\d{3}"),
    # IPv4: a digit, a dot, a digit; every IPv6 form has two colons with only hex digits between.
    "IP_ADDRESS": re.compile(r"\d\.\d|:[0-9A-Fa-f]{0,4}:"),
}

_SECRET_KEY_NAMES = (
    r"password|passwd|pwd|passphrase|secret|client[_-]?secret|secret[_-]?key|"
    r"api[_-]?key|apikey|access[_-]?key|access[_-]?token|auth[_-]?token|token|private[_-]?key"
)
_BARE = r"[^\s\"',;()\[\]{}<>.=]"  # a bare value ends where code syntax starts
# Template variables and environment lookups stand for a secret, they are not one.
_NOT_A_REFERENCE = r"(?!\$\{|\{\{|%\(|<|os\.environ|getenv)"
# (name, regex, score). Prefixed vendor formats are distinctive enough to stand alone.
_SECRET_PATTERNS: tuple[tuple[str, str, float], ...] = (
    ("openai key", r"\bsk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}", 0.9),
    ("aws access key id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", 0.9),
    ("github token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,})\b", 0.9),
    ("slack token", r"\bxox[baprs]-[A-Za-z0-9-]{10,}", 0.9),
    ("google api key", r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])", 0.9),
    ("stripe secret key", r"\b[sr]k_(?:live|test)_[0-9A-Za-z]{16,}\b", 0.9),
    ("bearer token", r"\bBearer\s+\K[A-Za-z0-9._~+/-]{20,}=*", 0.6),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", 0.8),
    (
        "pem private key",
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.+?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----",
        1.0,
    ),
    # `password = "..."` / `api_key: ...` / `password is ...`: only the value is the span (\K,
    # which is also ~8x faster than a lookbehind tried at every position). Values
    # need a digit or a symbol (quoted) or a digit and a letter (bare), so `token = "percent"`,
    # `password = auth[1]`, `token = None` or prose stay clean.
    (
        "quoted assignment",
        (
            rf"(?i:\b(?:{_SECRET_KEY_NAMES}))[\"']?\s*(?:[:=]|\bis\b:?)\s*([\"'])\K"
            rf"{_NOT_A_REFERENCE}(?=[^\s\"']*(?:[\d_]|[^\w\s\"']))[^\s\"'<>]{{6,}}(?=\1)"
        ),
        0.7,
    ),
    (
        "bare assignment",
        (
            rf"(?i:\b(?:{_SECRET_KEY_NAMES}))\s*(?:[:=]|\bis\b:?)\s*\K"
            rf"{_NOT_A_REFERENCE}(?={_BARE}*\d)(?={_BARE}*[A-Za-z])"
            rf"{_BARE}{{7,}}(?<![!?:])(?![\w(\[.])"
        ),
        0.6,
    ),
)
# Every secret pattern starts with a vendor prefix or a key name (case as the patterns have it).
_NEEDS["SECRET"] = re.compile(
    r"sk-|AKIA|ASIA|gh[pousr]_|github_pat_|xox[baprs]-|AIza|[sr]k_(?:live|test)_|Bearer|eyJ|-----BEGIN"
    rf"|(?i:{_SECRET_KEY_NAMES})"
)
_SECRET_CONTEXT = ["key", "token", "secret", "password", "credential"]
# Documentation stand-ins are not secrets.
_SECRET_PLACEHOLDER_HINTS = ("your", "example", "xxxx", "****", "....", "changeme", "redacted")


@dataclass(frozen=True)
class PiiSpan:
    entity: str
    start: int
    end: int
    score: float


class PiiScanner:
    """Finds PII spans; immutable after construction and safe to share between threads."""

    def __init__(
        self, entities: Sequence[str] = ENTITIES, min_score: float = DEFAULT_MIN_SCORE
    ) -> None:
        unknown = set(entities) - set(ENTITIES)
        if unknown:
            raise ValueError(f"unknown PII entities: {sorted(unknown)}")
        self.entities = tuple(entities)
        self.min_score = min_score
        self._recognizers = [_recognizer(entity) for entity in self.entities]

    def find(self, text: str) -> list[PiiSpan]:
        """Non-overlapping spans sorted by start; on overlap the higher score, then longer wins."""
        candidates: list[PiiSpan] = []
        for entity, recognizer in zip(self.entities, self._recognizers, strict=True):
            needs = _NEEDS.get(entity)
            if needs is not None and not needs.search(text):
                continue
            for result in recognizer.analyze(text, [entity], None):
                score = _with_context(text, result.start, result.score, recognizer.context)
                if score >= self.min_score:
                    candidates.append(PiiSpan(entity, result.start, result.end, score))
        candidates.sort(key=lambda s: (-s.score, s.start - s.end, s.start))
        chosen: list[PiiSpan] = []  # kept sorted by start, so a bisect finds the neighbours
        starts: list[int] = []
        for span in candidates:
            i = bisect.bisect_right(starts, span.start)
            if (i == 0 or chosen[i - 1].end <= span.start) and (
                i == len(chosen) or span.end <= chosen[i].start
            ):
                chosen.insert(i, span)
                starts.insert(i, span.start)
        return chosen

    def redact(self, text: str, vault: Vault | None = None) -> tuple[str, list[PiiSpan]]:
        """Replace every span with a placeholder. With a vault the placeholders are numbered and
        reversible (<EMAIL_ADDRESS_1>, the same value gets the same placeholder within one vault);
        without one they are plain (<EMAIL_ADDRESS>)."""
        spans = self.find(text)
        if vault is not None:
            vault.reserve(text)
        pieces: list[str] = []
        cursor = 0
        for span in spans:
            value = text[span.start : span.end]
            pieces += [
                text[cursor : span.start],
                vault.placeholder(span.entity, value) if vault is not None else f"<{span.entity}>",
            ]
            cursor = span.end
        pieces.append(text[cursor:])
        return "".join(pieces), spans


class Vault:
    """Per-request mapping placeholder <-> original value."""

    def __init__(self) -> None:
        self._placeholder_by_value: dict[tuple[str, str], str] = {}
        self._value_by_placeholder: dict[str, str] = {}
        self._next_number: dict[str, int] = {}
        # Look-alikes the user wrote themselves: never issued, so never "restored".
        self._reserved: set[str] = set()

    def reserve(self, text: str) -> None:
        """Keep placeholders already present in user text from being issued by this vault."""
        self._reserved.update(m.group(0) for m in _PLACEHOLDER.finditer(text))

    def placeholder(self, entity: str, value: str) -> str:
        key = (entity, value)
        if key not in self._placeholder_by_value:
            number = self._next_number.get(entity, 1)
            while f"<{entity}_{number}>" in self._reserved:
                number += 1
            self._next_number[entity] = number + 1
            placeholder = f"<{entity}_{number}>"
            self._placeholder_by_value[key] = placeholder
            self._value_by_placeholder[placeholder] = value
        return self._placeholder_by_value[key]

    def restore(self, text: str) -> str:
        if not self._value_by_placeholder:
            return text
        return _PLACEHOLDER.sub(
            lambda m: self._value_by_placeholder.get(m.group(0), m.group(0)), text
        )

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(self._value_by_placeholder)

    def __len__(self) -> int:
        return len(self._value_by_placeholder)

    def __repr__(self) -> str:  # the values are PII: keep them out of logs and tracebacks
        return f"Vault({len(self)} placeholders)"


class StreamRestorer:
    """Restores placeholders in a stream of text pieces where a placeholder may be split across
    pieces ("<EMAIL_AD" + "DRESS_1> is"): holds back only a possible placeholder prefix."""

    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._pending = ""

    def feed(self, piece: str) -> str:
        text = self._pending + piece
        cut = self._held_back_from(text)
        self._pending = text[cut:]
        return self._vault.restore(text[:cut])

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return self._vault.restore(text)

    def _held_back_from(self, text: str) -> int:
        # A placeholder has a single "<", so only the tail from the last "<" can be a prefix.
        start = text.rfind("<")
        if start < 0:
            return len(text)
        tail = text[start:]
        placeholders = self._vault.placeholders
        if any(p.startswith(tail) and p != tail for p in placeholders):
            return start
        return len(text)


_default_scanner: PiiScanner | None = None
_build_lock = threading.Lock()


def default_scanner() -> PiiScanner:
    """The process-wide scanner with default settings, built on first use."""
    global _default_scanner
    if _default_scanner is None:
        with _build_lock:
            if _default_scanner is None:
                _default_scanner = PiiScanner()
    return _default_scanner


def _phone_runs(text: str) -> Iterator[tuple[int, int, bool]]:
    """(start, end, written with "+") of each digit run that can be a phone number: 7+ digits;
    at most 15 (E.164) unless dialled with an 00/011 exit code, which rules out card numbers."""
    for run in _PHONE_CANDIDATE.finditer(text):
        number = run.group("number")
        digits = sum(c.isdigit() for c in number)
        longest = 18 if re.match(r"\(?0(?:0|11)", number) else 15
        if 7 <= digits <= longest:
            yield max(0, run.start() - 1), min(len(text), run.end() + 1), number[0] == "+"


def _with_context(text: str, start: int, score: float, context: list[str] | None) -> float:
    """Presidio's context rule: a context word among the 5 words before a match adds 0.35."""
    if not context or score >= 1.0:
        return score
    before = [w.lower() for w in _WORD.findall(text, max(0, start - 80), start)]
    window = before[-_CONTEXT_WINDOW_WORDS:]
    if any(word in token for word in context for token in window):
        return min(1.0, max(score + _CONTEXT_BOOST, _MIN_SCORE_WITH_CONTEXT))
    return score


_recognizers: dict[str, EntityRecognizer] = {}
_recognizers_lock = threading.Lock()


def _recognizer(entity: str) -> EntityRecognizer:
    """One shared recognizer per entity, warmed up so lazy regex compilation never races."""
    with _recognizers_lock:
        if entity not in _recognizers:
            recognizer = _build_recognizer(entity)
            recognizer.analyze("a@b.com +1 212 555 0100 1.2.3.4 password='x1y2z3w4'", [entity])
            _recognizers[entity] = recognizer
        return _recognizers[entity]


def _build_recognizer(entity: str) -> EntityRecognizer:
    import regex
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    class OfflineEmailRecognizer(EmailRecognizer):
        # tldextract.extract() would fetch the public suffix list (no timeout) and write a
        # cache under $HOME; the bundled snapshot is enough to tell a real domain suffix.
        def validate_result(self, pattern_text: str) -> bool:
            return _offline_tld_extract()(pattern_text).fqdn != ""

    class PrefilteredPhoneRecognizer(PhoneRecognizer):
        # phonenumbers parses and validates every digit group once per region (~2 ms per region
        # on a number-heavy 2,000-char text), so the matcher only sees runs that can be a phone
        # number, with one character of margin for its letter-boundary checks, and numbers
        # written with "+" (the same in every region) are matched once, not once per region.
        def __init__(self, regions: Sequence[str]) -> None:
            super().__init__(supported_regions=regions)
            self.international = PhoneRecognizer(supported_regions=regions[:1])

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list:
            results = []
            for lo, hi, international in _phone_runs(text):
                run = text[lo:hi]
                found = self.international.analyze(run, entities) if international else []
                # An invalid "+" number can still hold a valid national one ("+44 (0)20 ...").
                for result in found or super().analyze(run, entities, nlp_artifacts):
                    result.start += lo
                    result.end += lo
                    results.append(result)
            if not results:
                return results
            lookalikes = [m.span() for m in _NOT_A_PHONE.finditer(text)]
            return [r for r in results if all(r.end <= s or r.start >= e for s, e in lookalikes)]

    class PublicIpRecognizer(IpRecognizer):
        # Loopback, "::", netmasks are no one's address; "::2", "a::b" are Python slices, C++ scopes.
        def invalidate_result(self, pattern_text: str) -> bool:
            if super().invalidate_result(pattern_text):
                return True
            address = ipaddress.ip_interface(pattern_text).ip
            if (
                address.is_loopback
                or address.is_unspecified
                or (address.version == 4 and address.is_reserved)
            ):
                return True
            return address.version == 6 and len([g for g in pattern_text.split(":") if g]) < 3

    class SecretRecognizer(PatternRecognizer):
        def invalidate_result(self, pattern_text: str) -> bool:
            lowered = pattern_text.lower()
            return any(hint in lowered for hint in _SECRET_PLACEHOLDER_HINTS)

    if entity == "EMAIL_ADDRESS":
        return OfflineEmailRecognizer()
    if entity == "PHONE_NUMBER":
        return PrefilteredPhoneRecognizer(PHONE_REGIONS)
    if entity == "CREDIT_CARD":
        # Presidio's pattern predates Mastercard's 2221-2720 range (issued since 2017).
        mastercard_2 = Pattern(
            "Mastercard 2-series", r"\b2[2-7]\d{2}([- ]?)\d{4}\1\d{4}\1\d{4}\b", 0.3
        )
        return CreditCardRecognizer(patterns=[*CreditCardRecognizer.PATTERNS, mastercard_2])
    if entity == "IBAN_CODE":
        return IbanRecognizer()
    if entity == "US_SSN":
        return UsSsnRecognizer()
    if entity == "IP_ADDRESS":
        return PublicIpRecognizer()
    return SecretRecognizer(
        supported_entity="SECRET",
        patterns=[Pattern(name, pattern, score) for name, pattern, score in _SECRET_PATTERNS],
        context=_SECRET_CONTEXT,
        global_regex_flags=regex.DOTALL | regex.MULTILINE,  # case matters: AKIA..., sk_live_...
    )


@cache
def _offline_tld_extract() -> Any:
    import tldextract

    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)
