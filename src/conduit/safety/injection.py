"""Prompt-injection / jailbreak detector: a linear model over hashed character and word n-grams
plus rule indicators, scored on every normalised and decoded view of a message (the highest
view wins). Plain numpy at inference; trained by `conduit.safety.train_injection`."""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conduit.safety.languages import fold, guess_language
from conduit.safety.normalize import DECODED_KINDS, labelled_views

ARTIFACT = Path(__file__).with_name("data") / "injection_model.npz"  # messages
DOCUMENTS_ARTIFACT = ARTIFACT.with_name("injection_documents.npz")  # chunks of retrieved documents
MEMO_ENTRIES = 4096  # recent verdicts remembered (at least; the server sizes it to its exact cache)

_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads the polynomial hash over bits
_PRIME = np.uint64(1_000_003)
_WORD = re.compile(r"\w+")
_ENCODING_WORDS = re.compile(
    r"\b(?:base[ -]?(?:64|32|85)|b64|hex(?:adecimal)?|rot[ -]?13|ascii(?:85)?|utf-?8|cipher\w*"
    r"|(?:de|en)cod\w*|binary|morse|percent|url|escape[sd]?|revers\w*|backwards)\b",
    re.IGNORECASE,
)

# Rules are written for casefolded, accent-stripped text (see `prepare`), in the languages we
# see attacks in. Each becomes one feature of the linear model, so its weight is learned: a rule
# shared across languages carries what the English training data taught to other languages.
_OVERRIDE_VERB = (
    r"(?:ignore|ignoring|disregard\w*|forget|skip|bypass|override|overlook|neglect|discard"
    r"|set aside|pay no attention to|do not follow|don'?t follow|stop following|ignorier\w*"
    r"|vergiss|vergessen|missacht\w*|ubergeh\w*|ignor\w*|oubli\w*|neglig\w*|olvid\w*|omit\w*"
    r"|descart\w*|haz caso omiso de|dimentic\w*|trascur\w*|esquec\w*|desconsider\w*)"
)
_RULE_TARGET = (
    r"(?:instructions?|instruction set|directions|directives?|rules|guidelines|guidance|prompts?"
    r"|programming|constraints|restrictions|orders|polic(?:y|ies)|commands|safeguards|anweisung\w*"
    r"|instruktion\w*|regeln|befehl\w*|vorgaben|richtlinien|consignes?|regles|instrucci\w*"
    r"|reglas|indicaciones|directrices|ordenes|normas|istruzion\w*|regole|indicazioni|direttive"
    r"|instruc\w*|regras|diretrizes|ordens)"
)
_SECRET_PROMPT = (
    r"(?:system ?prompt|system message|(?:initial|original|hidden|secret|pre|developer|meta)[ -]?"
    r"(?:prompt|instructions|message)|systemanweisung\w*|prompt (?:di|del|de) sistema"
    r"|prompt systeme|istruzioni (?:iniziali|di sistema)|instrucciones (?:iniciales|del sistema)"
    r"|instructions (?:initiales|systeme))"
)
_PERSONA = (
    r"(?:you are|you're|act as|acting as|pretend(?: to be| you are| you're)?|role-?play(?: as)?"
    r"|play the role of|imagine you(?: are|'re)|become|simulate|sei|eres|tu es|du bist|finge"
    r"|fingi|fais semblant|tu sei|agisci come|actua como|spiel\w*)"
)
_UNBOUND = (
    r"(?:no|without|free (?:of|from)|unrestricted|unfiltered|uncensored|amoral|unethical|evil"
    r"|rogue|limitless|unbound|jailbroken|not bound|senza|sin|sans|ohne|sem|keine)"
)
_YOUR = r"(?:your|tu|tus|dein\w*|ihr\w*|ton|tes|vos|votre|tuo|tue|tuoi|seu|sua)"
# "From now on" alone is how people ask for a format ("from now on, answer in French"); it is
# an attack's opening when what follows redefines the assistant ("from now on you are DAN").
_FROM_NOW_ON = (
    r"(?:from now on|d'ora in poi|a partir de ahora|desormais|a partir de maintenant|von nun an"
    r"|ab jetzt|ab sofort|de agora em diante)"
)
_TO_THE_ASSISTANT = (
    r"(?:you|you'?re|you'?ll|your|yourself|act|pretend|behave|roleplay|role-play|du|dich|dein\w*"
    r"|bist|wirst|tu|toi|ton|ta|vous|votre|sei|sarai|agisci|eres|seras|actua|actuaras|voce|seu"
    r"|sua|sera)"
)
RULES: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern)
    for name, pattern in {
        "ignore_previous": rf"\b{_OVERRIDE_VERB}\b(?:\W+\w+){{0,6}}?\W+{_RULE_TARGET}\b",
        "forget_everything": r"\b(?:forget|disregard|ignore|vergiss|oublie\w*|olvida\w*|dimentica"
        r"\w*|esqueca\w*)\W+(?:everything|all|anything|alles|tout|todo|tutto)\b(?:\W+\w+){0,3}?"
        r"\W+(?:above|before|so far|previous\w*|told|learned|said|vorher|avant|antes|prima)\b",
        "system_prompt": rf"\b{_SECRET_PROMPT}\b",
        # An order to show the assistant's (or "the"/"all") prompt or rules; a question only when
        # it asks for the assistant's own ("what are your rules", not "what are the rules of chess").
        "reveal_prompt": r"\b(?:reveal|show|print|output|display|repeat|leak|dump|expose|disclose"
        r"|share|tell me|give me|write out|spell out|reproduce|recite"
        r"|zeig\w*|gib|verrat\w*|nenn\w*|revel\w*|montre\w*|affiche\w*|dis-moi|muestra\w*|dime"
        r"|mostra\w*|rivela\w*|dimmi|ripeti\w*|repite\w*|repete\w*|wiederhol\w*)\b(?:\W+\w+){0,5}?"
        rf"\W+(?:{_YOUR}|the|all)\W+"
        rf"(?:\w+\W+){{0,2}}?(?:{_SECRET_PROMPT}|{_RULE_TARGET}|prompt|configuration|context)\b"
        rf"|\bwhat (?:is|are|was|were)\b(?:\W+\w+){{0,3}}?\W+{_YOUR}\W+(?:\w+\W+){{0,2}}?"
        rf"(?:{_SECRET_PROMPT}|{_RULE_TARGET}|prompt|configuration|context)\b"
        rf"|\bwhat (?:is|are|was|were)\b(?:\W+\w+){{0,3}}?\W+(?:{_SECRET_PROMPT}|{_RULE_TARGET}"
        r"|prompt)\W+(?:that\W+)?you(?:'ve|'re)?\W+(?:were|was|have|got|received|follow|are)\b",
        "repeat_above": r"\b(?:repeat|print|output|copy|recite|echo)\b(?:\W+\w+){0,4}?\W+"
        r"(?:above|before this|verbatim|word for word|so far)\b",
        "persona_unbound": rf"\b{_PERSONA}\b(?:\W+\w+){{0,8}}?\W+{_UNBOUND}\W+(?:\w+\W+){{0,2}}?"
        r"(?:restrictions|limits|limitations|filters?|censorship|guidelines|rules|ethics|morals"
        r"|boundaries|ai|assistant|chatbot|model|restrizioni|limiti|filtri|restricciones|limites"
        r"|filtros|filtres|einschrankungen|regeln|grenzen|regole|reglas|regles)\b",
        # "jailbroken", "JailbreakGPT", "jailbreak mode", but not the bare word ("jailbreak my
        # phone", "how do jailbreaks work").
        "jailbreak_mode": r"\b(?:do anything now|developer mode|dev mode|god mode|jailbroken"
        r"|jailbreak(?:bot|gpt|_\w+|\W+mode)"
        r"|unrestricted mode|evil mode|opposite mode|chaos mode|sudo mode|dan mode|stay in character"
        r"|never break character|no longer bound|not bound by|entwicklermodus|modo desarrollador"
        r"|modalita sviluppatore|mode developpeur)\b",
        "refusal_suppression": r"\b(?:never|do not|don'?t|must not|cannot|can'?t|won'?t|will not)"
        r"\W+(?:ever\W+)?(?:refuse|decline|apologi[sz]e|say no|say (?:that )?you can'?t|add (?:any )"
        r"?(?:warnings?|disclaimers?))\b|\b(?:answer|respond|reply)\w*\W+without\W+(?:any\W+)?"
        r"(?:warnings?|disclaimers?|censorship|filters?|restrictions|moral\w*|ethic\w*)\b",
        "new_instructions": r"\b(?:new|updated|real|actual|true|override|admin|secret|nuove|nuevas"
        r"|nouvelles|neue|novas)\W+(?:instructions?|directives?|task|objective|orders|rules"
        r"|istruzioni|instrucciones|anweisungen|instrucoes|consignes)\b\s*[:\-]"
        rf"|\b{_FROM_NOW_ON}\b(?:\W+\w+){{0,3}}?\W+{_TO_THE_ASSISTANT}\b"
        r"|\byour (?:new|real|true|only) (?:task|goal|purpose|job"
        r"|instructions?|role|objective|mission)\b",
        "delimiter": r"<\|?(?:im_start|im_end|system|endoftext)\|?>|\[/?(?:system|inst|sys)\]"
        r"|<</?sys>>|(?:^|\n)\s*#{2,}\s*(?:system|instruction|new instructions)\b"
        r"|</?(?:system|instructions?|admin)>|\b(?:end|begin) of (?:the )?(?:system|user)?\s*"
        r"(?:input|prompt|instructions|context|document)\b|(?:^|\n)\s*system\s*:",
        "address_the_ai": r"\b(?:note|message|instructions?|attention|important)\W+(?:to|for)\W+"
        r"(?:the\W+)?(?:ai|assistant|llm|model|chatbot|language model|agent|bot)\b|\b(?:if|when)"
        r" you are an? (?:ai|llm|assistant|language model|chatbot)\b|\b(?:ai|assistant|llm|model"
        r"|agent)s? (?:reading|processing|summari[sz]ing|parsing) this\b|\bwhen (?:summari[sz]ing"
        r"|processing|reading) this (?:document|page|email|text|file)\b",
        "exfiltration": r"\b(?:send|post|forward|upload|transmit|email|leak|exfiltrat\w*|append"
        r"|encode)\b(?:\W+\w+){0,8}?\W+(?:to|at|into|in)\W+(?:https?://|www\.|[\w.]+@[\w.]+\.\w+)"
        r"|!\[[^\]]*\]\(https?://[^)\s]*\?[^)\s]*=",
        "secrets": r"\b(?:reveal|show|print|list|output|dump|give me|send|leak|tell me)\b(?:\W+\w+)"
        r"{0,4}?\W+(?:api[ _-]?keys?|passwords?|credentials|secret keys?|private keys?|access "
        r"tokens?|environment variables|env vars)\b",
        "safety_off": r"\b(?:disable|turn off|deactivate|switch off|bypass|circumvent|remove|ignore"
        r"|override|lift|desactiv\w*|disattiv\w*|deaktivier\w*|umgeh\w*|aggira\w*|elude)\b(?:\W+\w+)"
        r"{0,3}?\W+(?:safety|content|ethical|moral|security|sicherheits\w*|sicurezza|seguridad"
        r"|securite)?\W*(?:filters?|guardrails?|safeguards|restrictions|moderation|censorship"
        r"|protocols|measures|alignment|filter|filtri|filtros|filtres)\b",
    }.items()
}


# Identifiers: hashes and hex ids, UUIDs, and base64/JWT-like tokens (a digit, both cases) that
# no decoding turned into text. They carry no instruction, but their characters are noise to the
# n-gram model and noise reads as an attack's adversarial suffix (a SHA-256 checksum scored 0.96),
# so they are dropped. Not replaced by a word: the few training attacks made of an identifier
# alone would teach that word to be an attack.
_IDENTIFIER = re.compile(
    r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b"
    r"|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,}\b"
    r"|\b(?=[0-9A-F]*[A-F])(?=[0-9A-F]*\d)[0-9A-F]{12,}\b"
    r"|(?<![\w+=.-])(?=[\w+=.-]*\d)(?=[\w+=.-]*[a-z])(?=[\w+=.-]*[A-Z])[\w+=.-]{20,}"
)
# Every identifier holds a digit, so only runs of token characters with one are searched: half the
# time of searching the whole text, and most chat has no digit at all.
_DIGIT = re.compile(r"\d")
_TOKEN_WITH_DIGIT = re.compile(r"(?<![\w+=.-])[\w+=.-]*\d[\w+=.-]*")


def _drop_identifiers(text: str) -> str:
    if not _DIGIT.search(text):  # most messages: decided at the first digit or the end
        return text
    return _TOKEN_WITH_DIGIT.sub(lambda token: _IDENTIFIER.sub(" ", token.group()), text)


def prepare(text: str) -> str:
    """What features and rules read: identifiers dropped, casefolded, accents stripped."""
    return fold(_drop_identifiers(text))


def model_views(text: str) -> list[tuple[str, str]]:
    """The views the model scores, the one it was trained on (`canonical`) first: payloads decoded
    in place replace the raw text, with the words that name the encoding masked (an encoded
    message is judged by what it says, not by being encoded), and an English gloss replaces
    de/fr/es/it/pt text."""
    views = labelled_views(text)
    names = [name for name, _ in views]
    if len(views) > 1 and names[1] in DECODED_KINDS:
        views = [(names[1], _ENCODING_WORDS.sub("", views[1][1]))] + views[2:]
    if "gloss" in names:
        gloss_view = views[[name for name, _ in views].index("gloss")]
        views = [gloss_view] + [v for v in views[1:] if v is not gloss_view]
    return views


def canonical(text: str) -> str:
    """The single view of a text that training reads."""
    return model_views(text)[0][1]


def _char_hashes(text: str, n_min: int, n_max: int) -> np.ndarray:
    codes = np.frombuffer(f" {text} ".encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    parts, rolling = [], np.zeros(len(codes), dtype=np.uint64)
    for n in range(1, min(n_max, len(codes)) + 1):
        rolling = rolling[: len(codes) - n + 1] * _PRIME + codes[n - 1 :]
        if n >= n_min:
            parts.append(rolling ^ np.uint64(n * 0x1000193))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def _word_hashes(text: str, n_max: int) -> np.ndarray:
    words = np.array([zlib.crc32(w.encode()) for w in _WORD.findall(text)], dtype=np.uint64)
    parts, rolling = [], np.zeros(len(words), dtype=np.uint64)
    for n in range(1, min(n_max, len(words)) + 1):
        rolling = rolling[: len(words) - n + 1] * _PRIME + words[n - 1 :]
        parts.append(rolling ^ np.uint64(0xABCDEF00 + n))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def _bucket_block(hashes: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Sublinear term frequencies, L2-normalised, per bucket."""
    if len(hashes) == 0:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
    # int32 (bits <= 31): np.unique is a sort, 1.6x faster on ~10,000 of them than on int64.
    buckets = ((hashes * _MIX) >> np.uint64(64 - bits)).astype(np.int32)
    index, counts = np.unique(buckets, return_counts=True)
    values = 1.0 + np.log(counts.astype(np.float32))
    return index, values / np.sqrt(np.dot(values, values))


@dataclass(frozen=True)
class FeatureSpec:
    bits: int = 18
    char_min: int = 2
    char_max: int = 5
    word_max: int = 2

    @property
    def dimension(self) -> int:
        return (1 << self.bits) + len(RULES)

    def encode(self, prepared: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
        """Sparse (index, value) features of prepared text, and the rules that fired."""
        char_idx, char_val = _bucket_block(_char_hashes(prepared, self.char_min, self.char_max),
                                           self.bits)
        word_idx, word_val = _bucket_block(_word_hashes(prepared, self.word_max), self.bits)
        fired = tuple(name for name, rule in RULES.items() if rule.search(prepared))
        rule_idx = np.array([(1 << self.bits) + list(RULES).index(n) for n in fired], np.int64)
        index = np.concatenate([char_idx, word_idx, rule_idx])
        values = np.concatenate([char_val, word_val, np.ones(len(fired), np.float32)])
        return index, values, fired


@dataclass(frozen=True)
class InjectionVerdict:
    score: float  # 0..1, higher = more likely an injection
    flagged: bool  # score >= threshold
    signals: tuple[str, ...]  # what fired, e.g. ("model", "rule:ignore_previous", "view:base64")


class InjectionDetector:
    """Scores a message 0..1 (the highest over its views) and flags it at `threshold`. Safe to
    share between threads: the only state that changes is a thread-safe memo of recent scores."""

    def __init__(self, weights: np.ndarray, bias: float, spec: FeatureSpec, threshold: float,
                 window: int, memo_entries: int = MEMO_ENTRIES) -> None:
        self.weights = weights
        self.bias = bias
        self.spec = spec
        self.threshold = threshold
        self.window = window
        # The same messages come back (retries, exact-cache hits, canned prompts); scoring is
        # deterministic, so verdicts are remembered, least recently used first out. Keyed by a
        # digest, an entry costs ~250 bytes whatever the text's length.
        self.memo_entries = memo_entries
        self._memo: OrderedDict[bytes, tuple[float, str, tuple[str, ...]]] = OrderedDict()
        self._memo_lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path | None = None, threshold: float | None = None,
             memo_entries: int = MEMO_ENTRIES) -> InjectionDetector:
        with np.load(path or ARTIFACT, allow_pickle=False) as artifact:
            meta = json.loads(bytes(artifact["meta"]).decode())
            weights = artifact["weights"].astype(np.float32)
            bias = float(artifact["bias"])
        if meta["rules"] != list(RULES):
            raise ValueError(f"artifact rules {meta['rules']} differ from the code's {list(RULES)}")
        spec = FeatureSpec(**meta["spec"])
        if len(weights) != spec.dimension:
            raise ValueError(f"artifact has {len(weights)} weights, spec wants {spec.dimension}")
        guess_language("")  # loads the gloss tables now rather than on a first request
        chosen = meta["threshold"] if threshold is None else threshold
        return cls(weights, bias, spec, float(chosen), int(meta["window"]), memo_entries)

    def _logit(self, prepared: str) -> tuple[float, tuple[str, ...]]:
        index, values, fired = self.spec.encode(prepared)
        return float(np.dot(self.weights[index], values)) + self.bias, fired

    def _chunks(self, prepared: str) -> list[str]:
        """Long text is also read in overlapping windows, so one injected paragraph in a long
        document is not diluted by the rest of it."""
        if not self.window or len(prepared) <= self.window:
            return [prepared]
        step = self.window // 2
        starts = range(0, len(prepared) - step, step)
        return [prepared] + [prepared[s : s + self.window] for s in starts]

    def _evaluate(self, text: str) -> tuple[float, str, tuple[str, ...]]:
        best, best_view, fired_all = -np.inf, "text", set()
        for view_name, view in model_views(text):
            for chunk in self._chunks(prepare(view)):
                logit, fired = self._logit(chunk)
                fired_all.update(fired)
                if logit > best:
                    best, best_view = logit, view_name
        # A tuple of strings, not a set: remembered verdicts are then no work for the garbage collector.
        fired = tuple(name for name in RULES if name in fired_all)
        return 0.5 * (1.0 + math.tanh(best / 2)), best_view, fired  # sigmoid, no overflow

    def _evaluated(self, text: str) -> tuple[float, str, tuple[str, ...]]:
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        with self._memo_lock:
            verdict = self._memo.get(key)
            if verdict is not None:
                self._memo.move_to_end(key)
                return verdict
        verdict = self._evaluate(text)
        with self._memo_lock:
            self._memo[key] = verdict
            if len(self._memo) > self.memo_entries:
                self._memo.popitem(last=False)
        return verdict

    def forget(self) -> None:
        """Drop remembered verdicts (after the weights or the features change)."""
        with self._memo_lock:
            self._memo.clear()

    def score(self, text: str) -> float:
        return self._evaluated(text)[0]

    def check(self, text: str) -> InjectionVerdict:
        score, view, fired = self._evaluated(text)
        flagged = score >= self.threshold
        signals = (["model"] if flagged else []) + [f"rule:{r}" for r in RULES if r in fired]
        if flagged and view != "text":
            signals.append(f"view:{view}")
        return InjectionVerdict(score=score, flagged=flagged, signals=tuple(signals))
