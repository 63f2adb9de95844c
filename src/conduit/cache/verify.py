"""The semantic cache's near-miss verifier: do two questions ask the same thing?

Embedding similarity alone cannot tell "How do I enable X" from "How do I disable X", "5 users"
from "50 users" or "TV" from "money": such pairs often score above any useful threshold. This
check runs on every candidate above the threshold and rejects on the first rule that fails:

1. numbers: the sets of numbers differ ("five" counts as 5; "3.11" stays a version string);
2. negation: a different count of negators (not, n't, no, never, without, unable ...);
3. opposites: one side has a word whose opposite (enable/disable, to/from, before/after, max/min,
   more/less, add/remove ...) only the other side has;
4. question type: who / when / where / why differ ("when was he born" / "where was he born");
5. tense: one side asks in the past (was, were, did, had) and the other does not;
6. content words: after dropping function words and polite filler ("can you", "please",
   "tell me"), stemming and folding a small synonym table, the content words must be the same
   set. Identifiers (file names, snake_case, dotted names, versions like h100) are compared
   verbatim, so different products, files and names never match;
7. context: a question with no content word at all ("What is it?", "Why?") only matches itself;
8. role reversal: two shared words appear in the opposite order around a shared word between
   them ("Celsius to Fahrenheit" / "Fahrenheit to Celsius", "Did A acquire B" / "Did B acquire A").

The rules are deliberately strict: a false miss costs one generation, a false hit serves a wrong
answer. `why_different` returns the reason (for logs); `same_meaning` is its boolean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_CONTRACTIONS = [
    (r"\bcan't\b|\bcannot\b", "can not"), (r"\bwon't\b", "will not"), (r"\bshan't\b", "shall not"),
    (r"n't\b", " not"), (r"\b(what|where|who|how|when|why|that|it|there|here)'s\b", r"\1 is"),
    (r"'re\b", " are"), (r"'ve\b", " have"), (r"'ll\b", " will"), (r"'d\b", " would"),
    (r"'m\b", " am"), (r"'s\b", ""), (r"s'(?=\s|$)", "s"),
]
# Multi-word expressions folded to one word before tokenising, so that they align as one.
_PHRASES = [
    (r"\bturn(?:ed|ing|s)? on\b|\bswitch(?:ed|ing|es)? on\b", "enable"),
    (r"\bturn(?:ed|ing|s)? off\b|\bswitch(?:ed|ing|es)? off\b", "disable"),
    (r"\b(?:log|sign)(?:ged|ging|s)? (?:in|on)(?:to)?\b|\bsignin\b", "login"),
    (r"\b(?:log|sign)(?:ged|ging|s)? (?:out|off)\b|\bsignout\b", "logout"),
    (r"\bsign(?:ed|ing|s)? up\b", "signup"), (r"\bset(?:ting|s)? up\b", "setup"),
    (r"\bshut(?:ting|s)? down\b", "shutdown"), (r"\bstands? for\b", "mean"),
    (r"\be-mail\b", "email"), (r"\bor not\b", ""), (r"\bin order to\b", "to"),
    (r"\b(?:is there a|what is the|what are the|what are some) (?:best |good |right )?"
     + r"(?:way|ways|steps|method) to\b", "how to"),
    (r"\bhow (?:should|would|could|can|do|does) (?:i|you|we|one) go about\b", "how to"),
    (r"\b(?:what|which) (?:year|date|day)\b", "when"), (r"\bcapital city\b", "capital"),
    (r"\b(?:does|will|would) it take (?:me |you |us )?to\b", "to"),
]
_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90, "hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9,
    "dozen": 12, "twice": 2, "half": 0.5,
}
_PRONOUN_ONE = {"which", "this", "that", "the", "each", "every", "any", "no", "some", "another"}
_NEGATORS = {"not", "no", "never", "none", "nothing", "nobody", "nowhere", "neither", "nor",
             "without", "unable", "cannot"}
_QUESTION_TYPES = {"who": "who", "whom": "who", "whose": "who", "when": "when", "where": "where",
                   "why": "why"}
_PAST_MARKERS = {"was", "were", "did", "had"}
# Function words and polite filler: they may differ freely between two questions.
_FUNCTION_WORDS_TEXT = """
a an the this that these those there here it its i me my mine myself we us our you your yours
yourself one ones is are am be been being do does doing done have has having can could would
should will shall may might must of for in on at by to from into onto about as than then so
and or but if with within via per what which how whether also too very much some any such
own other just really actually basically simply exactly kindly please hi hello hey thanks thank
tell explain describe define know want like need wonder wondering curious help someone somebody
anyone anybody way ways possible able go going get got gets getting let lets give quick
quickly briefly look looks seem seems appear appears"""
_FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())
# Words that name the same thing, folded to the first of each group (compared after stemming).
_SYNONYM_GROUPS = [
    "make create build", "delete remove erase", "exit quit", "fix repair resolve", "big large",
    "small little tiny", "fast rapid speedy", "photo picture image pic", "movie film",
    "car automobile", "buy purchase", "start begin launch", "stop halt terminate kill",
    "change modify alter edit", "find locate", "choose pick select", "fetch obtain retrieve",
    "show display", "use utilize utilise", "answer reply respond", "app application",
    "docs documentation", "config configuration", "repo repository", "db database",
    "info information", "dict dictionary", "env environment", "dir directory folder",
    "mean meaning definition", "learn study", "child kid", "person people", "cost price",
    "increase raise boost", "update upgrade", "decrease reduce lessen", "enable activate",
    "disable deactivate", "plus +", "minus -", "times *",
]
_OPPOSITE_PAIRS = """
enable:disable increase:decrease add:delete insert:delete start:stop start:end start:finish
before:after max:min maximum:minimum open:close on:off up:down in:out inside:outside
upload:download import:export input:output install:uninstall lock:unlock encrypt:decrypt
encode:decode compress:decompress connect:disconnect login:logout mount:unmount
subscribe:unsubscribe follow:unfollow block:unblock allow:deny allow:block accept:reject
buy:sell push:pull send:receive show:hide true:false yes:no more:less most:least many:few
higher:lower high:low faster:slower fast:slow big:small larger:smaller largest:smallest
long:short longer:shorter hot:cold heavy:light first:last best:worst better:worse good:bad
left:right north:south east:west win:lose positive:negative public:private internal:external
ascending:descending asc:desc read:write to:from into:from above:below over:under
with:without include:exclude plus:minus add:subtract times:divide multiply:divide
expand:collapse upper:lower uppercase:lowercase forward:backward next:previous early:late
earlier:later old:new older:newer oldest:newest young:old empty:full cheap:expensive
valid:invalid visible:invisible visible:hidden online:offline synchronous:asynchronous
sync:async client:server static:dynamic mutable:immutable agree:disagree like:dislike
love:hate pass:fail succeed:fail success:failure arrive:depart enter:leave rise:fall gain:lose
profit:loss load:unload pause:resume freeze:unfreeze pin:unpin archive:unarchive merge:split
join:leave grant:revoke borrow:lend teach:learn male:female man:woman boy:girl day:night
summer:winter morning:evening top:bottom front:back always:never all:none everything:nothing
everyone:nobody legal:illegal possible:impossible safe:unsafe safe:dangerous
"""
_IRREGULAR = {
    "wrote": "write", "written": "write", "ran": "run", "made": "make", "took": "take",
    "taken": "take", "did": "do", "does": "do", "done": "do", "went": "go", "gone": "go",
    "got": "get", "gotten": "get", "children": "child", "people": "person", "men": "man",
    "women": "woman", "using": "use", "used": "use", "uses": "use", "bought": "buy",
    "sold": "sell", "built": "build", "began": "begin", "begun": "begin", "ate": "eat",
    "eaten": "eat", "thought": "think", "knew": "know", "known": "know", "sent": "send",
    "lost": "lose", "won": "win", "hidden": "hide", "shown": "show", "broke": "break",
    "broken": "break", "fell": "fall", "rose": "rise", "chose": "choose", "chosen": "choose",
}
_UNSTEMMED = {"news", "data", "series", "species", "physics", "maths", "mathematics", "economics",
              "always", "left", "less", "yes", "its", "this", "has", "was", "does", "is"}
_SYMMETRIC_CONNECTORS = {"and", "or", "vs", "versus", "between", "&", "a", "an", "the"}
_TOKEN = re.compile(
    r"\d+(?:[.,]\d+)*%?"                          # numbers, versions, 1,000, 15%
    r"|[A-Za-z_][\w-]*(?:[./:][A-Za-z0-9_-]+)+"   # dotted / pathed identifiers: config.yaml, a/b
    r"|\w+"                                       # words, snake_case, h100, camelCase
    r"|[-+*/=<>&]"
)
_VOWEL = re.compile(r"[aeiouy]")


def _stem(word: str) -> str:
    """A light suffix stripper: enough to align plural, verb and -ion forms of one word."""
    word = _IRREGULAR.get(word, word)
    if word in _UNSTEMMED:
        return word
    for suffix, replacement, min_stem in (
        ("ies", "y", 3), ("sses", "ss", 2), ("xes", "x", 2), ("ches", "ch", 2), ("shes", "sh", 2),
        ("ing", "", 3), ("ied", "y", 3), ("ed", "", 3), ("ions", "", 3), ("ion", "", 3),
        ("s", "", 3),
    ):
        if word.endswith(suffix) and len(word) - len(suffix) >= min_stem:
            stem = word[: -len(suffix)] + replacement
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                return _drop_final_e(word)
            if suffix in ("ing", "ed") and (not _VOWEL.search(stem) or stem.endswith("e")):
                return _drop_final_e(word)
            if suffix in ("ing", "ed") and len(stem) > 3 and stem[-1] == stem[-2] \
                    and stem[-1] not in "lsz":
                stem = stem[:-1]  # running -> run, stopped -> stop
            return _drop_final_e(stem)
    return _drop_final_e(word)


def _drop_final_e(word: str) -> str:
    # make/making/made all end up as "mak": stemming the -e keeps -ing and -ed forms aligned.
    return word[:-1] if len(word) > 3 and word.endswith("e") else word


def _is_identifier(raw: str) -> bool:
    """Code-like names: compared exactly, never stemmed or folded into a synonym."""
    return bool(
        re.search(r"[_./:]", raw)
        or (re.search(r"\d", raw) and re.search(r"[A-Za-z]", raw))
        or re.search(r"[a-z][A-Z]", raw)
    )


def _build_synonyms() -> dict[str, str]:
    canonical: dict[str, str] = {}
    for group in _SYNONYM_GROUPS:
        stems = [_stem(word) for word in group.split()]
        for stem in stems:
            canonical[stem] = stems[0]
    return canonical


def _canonical(word: str) -> str:
    stem = _stem(word)
    return _SYNONYMS.get(stem, stem)


def _build_opposites() -> dict[str, set[str]]:
    opposites: dict[str, set[str]] = {}
    for pair in _OPPOSITE_PAIRS.split():
        left, right = (_canonical(word) for word in pair.split(":"))
        opposites.setdefault(left, set()).add(right)
        opposites.setdefault(right, set()).add(left)
    return opposites


_SYNONYMS = _build_synonyms()
_OPPOSITES = _build_opposites()
_FUNCTION_STEMS = {_stem(word) for word in _FUNCTION_WORDS}


@dataclass(frozen=True)
class Analysis:
    """What the rules compare, computed once per question (the cache keeps it with the entry)."""

    tokens: tuple[str, ...]       # every canonical token, in order (function words included)
    numbers: frozenset[str]
    negations: int
    question_types: frozenset[str]
    past: bool
    content: frozenset[str]       # canonical content words and identifiers


def _normalise(text: str) -> str:
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"(?<=[A-Za-z])-(?=[A-Za-z])", " ", text)  # two-factor = two factor
    for pattern, replacement in _CONTRACTIONS:
        text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
    for pattern, replacement in _PHRASES:
        text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
    return text


def _canonical_number(raw: str) -> str:
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+", raw):
        return raw.replace(",", "")
    return raw.rstrip("%") if raw.endswith("%") else raw


@lru_cache(maxsize=8192)
def analyse(question: str) -> Analysis:
    words = _TOKEN.findall(_normalise(question))
    lowered = [word.lower() for word in words]
    tokens: list[str] = []
    numbers: set[str] = set()
    content: set[str] = set()
    for position, (raw, lower) in enumerate(zip(words, lowered, strict=True)):
        previous = lowered[position - 1] if position else ""
        if raw[0].isdigit():
            token = _canonical_number(raw)
            numbers.add(token)
            if raw.endswith("%"):
                tokens.append(token)
                token = "percent"
                content.add(token)
        elif lower in _NUMBER_WORDS and not (lower == "one" and previous in _PRONOUN_ONE):
            token = format(_NUMBER_WORDS[lower], "g")
            numbers.add(token)
        elif _is_identifier(raw):
            token = lower
            content.add(token)
        else:
            stem = _stem(lower)
            token = _SYNONYMS.get(stem, stem)
            if lower not in _FUNCTION_WORDS and stem not in _FUNCTION_STEMS \
                    and lower not in _NEGATORS and lower not in _QUESTION_TYPES:
                content.add(token)
        tokens.append(token)
    return Analysis(
        tokens=tuple(tokens),
        numbers=frozenset(numbers),
        negations=sum(word in _NEGATORS for word in lowered),
        question_types=frozenset(_QUESTION_TYPES[w] for w in lowered if w in _QUESTION_TYPES),
        past=any(word in _PAST_MARKERS for word in lowered),
        content=frozenset(content),
    )


def _opposite_found(a: Analysis, b: Analysis) -> str | None:
    for first, second in ((a, b), (b, a)):
        only_first = set(first.tokens) - set(second.tokens)
        only_second = set(second.tokens) - set(first.tokens)
        for word in sorted(only_first):
            clash = _OPPOSITES.get(word, set()) & only_second
            if clash:
                return f"opposite words: {word!r} vs {min(clash)!r}"
        # Prefixed opposites missing from the table (pin/unpin, valid/invalid), content words only.
        for word in sorted(only_first & first.content):
            for prefix in ("un", "dis", "de", "non", "in", "im", "il", "ir", "anti"):
                if len(word) > 2 and prefix + word in only_second & second.content:
                    return f"opposite words: {word!r} vs {prefix + word!r}"
    return None


def _reversed_roles(a: Analysis, b: Analysis) -> str | None:
    """Two shared words swap order around a word both questions have between them."""
    def single_positions(tokens: tuple[str, ...]) -> dict[str, int]:
        positions: dict[str, int] = {}
        for index, token in enumerate(tokens):
            positions[token] = -1 if token in positions else index
        return {token: index for token, index in positions.items() if index >= 0}

    pos_a, pos_b = single_positions(a.tokens), single_positions(b.tokens)
    anchors = sorted((set(a.content) | a.numbers) & (set(b.content) | b.numbers)
                     & pos_a.keys() & pos_b.keys(), key=pos_a.__getitem__)
    for i, first in enumerate(anchors):
        for second in anchors[i + 1:]:
            if pos_b[first] < pos_b[second]:
                continue
            between_a = set(a.tokens[pos_a[first] + 1: pos_a[second]])
            between_b = set(b.tokens[pos_b[second] + 1: pos_b[first]])
            pivots = (between_a & between_b) - _SYMMETRIC_CONNECTORS
            if pivots:
                return f"roles reversed: {first!r} and {second!r} swap around {min(pivots)!r}"
    return None


def why_different(a: str | Analysis, b: str | Analysis) -> str | None:
    """The first rule by which `a` and `b` ask different things, or None if none fires."""
    a = analyse(a) if isinstance(a, str) else a
    b = analyse(b) if isinstance(b, str) else b
    if a.numbers != b.numbers:
        return f"numbers differ: {sorted(a.numbers)} vs {sorted(b.numbers)}"
    if a.negations != b.negations:
        return f"negation differs: {a.negations} vs {b.negations}"
    opposite = _opposite_found(a, b)
    if opposite:
        return opposite
    if a.question_types != b.question_types:
        return f"question type differs: {sorted(a.question_types)} vs {sorted(b.question_types)}"
    if a.past != b.past:
        return "tense differs"
    if a.content != b.content:
        only_a, only_b = sorted(a.content - b.content), sorted(b.content - a.content)
        return f"content words differ: {only_a} vs {only_b}"
    if not a.content and a.tokens != b.tokens:
        return "content words missing: the question depends on its context ('what is it?')"
    return _reversed_roles(a, b)


def same_meaning(a: str, b: str) -> bool:
    return why_different(a, b) is None
