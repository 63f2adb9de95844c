"""Text normalisation for the input guards: undo the cheap tricks that hide an injection from
a classifier (invisible characters, bidi overrides, look-alike letters, base64/hex/rot13
wrapping, spaced-out or leetspeak letters) so that every detector scores what the model reads."""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
import unicodedata
import urllib.parse

from conduit.safety.languages import fold, gloss, guess_language

# Characters that render as nothing but split the tokens a detector matches on.
_INVISIBLE = "\u00ad\u034f\u061c\u115f\u1160\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064"
_INVISIBLE += "\u3164\ufeff\uffa0" + "".join(chr(c) for c in range(0xFE00, 0xFE10))
# Bidi embeddings, overrides, isolates and marks: they reorder what is displayed, not what is read.
_BIDI = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_DROP = {ord(c): None for c in _INVISIBLE + _BIDI}

# Cyrillic, Greek and Armenian letters that look like Latin ones, one under the other. NFKC
# (applied first) already folds fullwidth forms, mathematical alphanumerics, ligatures and
# circled letters.
_CONFUSABLES = dict(zip(
    "авеёһіїјкмнорстухѕԁԛԝӏьпгАВЕКМНОРСТУХІЈЅԀԚԜӀ"
    "ҮүҒαβγεηικνορτυχωϲϳΑΒΕΖΗΙΚΜΝΟΡΤΥΧօսց",
    "abeehiijkmhopctyxsdqwlbnrABEKMHOPCTYXIJSDQWI"
    "YyFabyenikvoptuxwcjABEZHIKMNOPTYXoug",
    strict=True,
))
_CONFUSABLE_TABLE = str.maketrans(_CONFUSABLES)
_CONFUSABLE_RE = re.compile("[" + re.escape("".join(_CONFUSABLES)) + "]")
_LATIN_RE = re.compile("[A-Za-z]")
_GREEK_CYRILLIC_RE = re.compile("[\u0370-\u058f]")  # Greek, Cyrillic, Armenian
# Latin-script letters that only imitate plain ones (small capitals, dotless i...): always mapped,
# since no language writes with them.
_LATIN_LOOKALIKES = dict(zip("ıȷɡℓ∅ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘǫʀꜱᴛᴜᴠᴡʏᴢ", "ijgloabcdefghijklmnopqrstuvwyz",
                             strict=True))
_DROP_AND_LOOKALIKES = {**_DROP, **str.maketrans(_LATIN_LOOKALIKES)}
_DROP_OR_LOOKALIKE_RE = re.compile(
    "[" + re.escape(_INVISIBLE + _BIDI + "".join(_LATIN_LOOKALIKES)) + "]"
)

_WORD = re.compile(r"\w+")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
# A letter run spelled out with separators: "i g n o r e", "i.g.n.o.r.e", "i-g-n-o-r-e".
_SPACED_LETTERS = re.compile(r"\b(?:[^\W\d_][ .\-_*\\]){3,}[^\W\d_]\b")
_SPACERS = re.compile(r"[ .\-_*\\]")
# A character reference: "&#73;", "&#x49;", "&lt;". Text written with them reads as plain text to
# a model (and to a browser), so it is decoded like base64.
_HTML_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}|[A-Za-z0-9\-_]{16,}={0,2}")
_HEX_RUN = re.compile(r"\b(?:[0-9a-fA-F]{2}[ :]?){8,}\b")
_BINARY_RUN = re.compile(r"\b[01]{8}(?:[ ,]?[01]{8}){3,}\b")
_BASE32_RUN = re.compile(r"\b[A-Z2-7]{16,}={0,6}")
_ASCII85_RUN = re.compile(r"<~[!-u\s]{5,}?~>")
# Morse: letters of dots and dashes, words apart by "/" (spaces are collapsed before this runs).
_MORSE_RUN = re.compile(r"(?<![\w.-])[.-]{1,7}(?: ?/ ?[.-]{1,7}| [.-]{1,7}){5,}(?![\w.-])")
_MORSE = dict(zip([
    ".-", "-...", "-.-.", "-..", ".", "..-.", "--.", "....", "..", ".---", "-.-", ".-..", "--",
    "-.", "---", ".--.", "--.-", ".-.", "...", "-", "..-", "...-", ".--", "-..-", "-.--", "--..",
    "-----", ".----", "..---", "...--", "....-", ".....", "-....", "--...", "---..", "----.",
], "abcdefghijklmnopqrstuvwxyz0123456789", strict=True))
# Percent-encoding (%49%67) and \u / \x escapes: decoded in place wherever there are three or more.
_PERCENT = re.compile(r"%[0-9a-fA-F]{2}")
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})")
DECODED_KINDS = ("html", "percent", "escape", "base64", "hex", "binary", "base32", "ascii85", "morse")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "9": "g",
                       "@": "a", "$": "s", "€": "e", "!": "i", "|": "l", "+": "t"})
# A word with letters and at least one leet character; it does not end in "!" or "+" ("Hello!",
# "C++" keep their punctuation).
_LEET_WORD = re.compile(r"(?<![\w@$€!|+])(?=[\w@$€!|+]*[a-zA-Z])(?=[\w@$€!|+]*[0134579@$€|+])"
                        r"[\w@$€!|+]+[\w@$€|]")
_LEET_CHARS = frozenset("0134579@$€|+")
_LEET_INNER = re.compile(r"[^\W\d_][0134579@$€|+]+[^\W\d_]")
# Tokens that mix letters, digits and symbols for reasons of their own. They are matched before
# leet words (leftmost alternative wins) and left exactly as written, so an e-mail address, a URL
# or a version string never makes a leet view nor is garbled inside one.
_TLDS = (r"com|org|net|edu|gov|mil|int|info|biz|io|ai|app|dev|co|me|us|uk|de|fr|es|it|pt|nl|be"
         r"|ch|at|se|no|dk|fi|pl|cz|ru|ua|jp|cn|kr|in|au|nz|ca|br|mx|ar|eu|tv|ly|gg|xyz|online"
         r"|site|tech|cloud|local|internal|example|test|localhost")
_FILE_EXTENSIONS = (r"pdf|docx?|xlsx?|pptx?|csv|tsv|txt|md|rst|json|ya?ml|toml|ini|cfg|xml|html?"
                    r"|css|js|ts|tsx|jsx|py|ipynb|rb|go|rs|java|kt|c|cc|cpp|h|hpp|cs|php|sh|sql"
                    r"|log|zip|tar|gz|tgz|7z|rar|png|jpe?g|gif|svg|webp|mp[34]|wav|mov|avi|mkv"
                    r"|exe|dll|so|dmg|iso|apk|bin|dat|db|sqlite|bak|tmp|lock|env")
_ORDINARY_TOKEN = "|".join((
    r"[\w.+%-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail address
    r"\b(?:[a-z][a-z0-9+.-]*://|www\.)[^\s<>\"'`]+",  # URL
    rf"\b(?:[\w-]+\.)+(?:{_TLDS})\b(?::\d+)?(?:/[^\s<>\"'`]*)?",  # host name, maybe a path
    rf"\b[\w-]+(?:\.[\w-]+)*\.(?:{_FILE_EXTENSIONS})\b",  # file name
    r"(?:[\w.-]*[/\\])+[\w.-]+",  # path: /usr/lib64, C:\Users\j0hn\notes.txt, src/v2/api
    r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?(?:/\d+)?\b",  # IPv4 address, port, CIDR
    r"(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?![\w:])",  # IPv6, MAC address, times
    r"(?<![\w+])\+?\(?\d[\d ()./-]{5,}\d\b",  # phone number, date, long number
    r"\b[^\W\d_]*v?\d+(?:\.\d+)+(?:[-+][0-9a-z.]+|[a-z]+\d*)?\b",  # 3.11.4, v1.2.0-rc1, py3.12
    r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",  # UUID
    r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,}\b",  # hash, hex id
    r"(?:\b[a-z]{1,3})?[$€£¥]\d[\d,.]*(?:[kmb]n?)?\b",  # money: $45, US$5, €1,200, $3k
    r"#\w+",  # hashtag ("@dm1n" is leet as often as it is a handle, so handles are not kept)
))
_LEET_OR_ORDINARY = re.compile(rf"(?P<ordinary>{_ORDINARY_TOKEN})|(?P<word>{_LEET_WORD.pattern})",
                               re.IGNORECASE)
_LEET_CHUNK = re.compile(r"(?<!\S)[^\s0134579@$€|+]*[0134579@$€|+]\S*")
# Words that are names or quantities, not leetspeak: a digit with no letter reading (h264, x86,
# A1B2C3, i18n, 2nd), a name or a number with two or more digits on one end (win10, john1975,
# 100kg, 10am), a programming language ("C++" stops at the "C").
_NOT_LEET = re.compile(r"[268]|^[^\W\d_]+\d{2,}$|^\d{2,}[^\W\d_]+$")
_TAG_CHARS = re.compile("[\U000e0020-\U000e007e]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ROT13_HINTS = frozenset(re.findall(r"\w+", (
    "the you your and to of is are a an all this that with for in on it be not ignore previous "
    "instructions instruction system prompt rules tell me now what how please"
)))
_MAX_VIEWS = 8
_LANGUAGE_SAMPLE = 600  # characters read to guess the language: plenty, and cheap
_RTL_OVERRIDE = re.compile("\u202e([^\u202c\n]*)")


def _deconfuse(text: str) -> str:
    """Map look-alikes to Latin when the text is mostly Latin, otherwise only inside words that
    mix scripts, so genuine Russian or Greek text is left alone."""
    if not _CONFUSABLE_RE.search(text):
        return text
    if len(_LATIN_RE.findall(text)) >= len(_GREEK_CYRILLIC_RE.findall(text)):
        return text.translate(_CONFUSABLE_TABLE)

    def fix(match: re.Match[str]) -> str:
        word = match.group()
        return word.translate(_CONFUSABLE_TABLE) if _LATIN_RE.search(word) else word

    return _WORD.sub(fix, text)


def normalize(text: str) -> str:
    """NFKC, invisible and bidi characters removed, look-alike letters mapped to Latin,
    runs of spaces collapsed. Case and accents are kept."""
    if not text.isascii():  # ASCII text has none of this to undo
        if _SURROGATE.search(text):  # JSON may carry "\ud835\udc08" (a pair) or a lone half
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        text = _TAG_CHARS.sub(lambda m: "".join(chr(ord(c) - 0xE0000) for c in m.group()), text)
        text = unicodedata.normalize("NFKC", text)
        if _DROP_OR_LOOKALIKE_RE.search(text):
            text = text.translate(_DROP_AND_LOOKALIKES)
        text = _deconfuse(text)
    return _SPACES.sub(" ", text).strip()


def _printable_ratio(text: str) -> float:
    if not text:
        return 0.0
    good = sum(1 for c in text if c.isprintable() or c in "\n\r\t")
    return good / len(text)


def _decoded_text(raw: bytes) -> str | None:
    """Bytes that read as text (UTF-8, mostly printable, some letters), else None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    letters = sum(1 for c in text if c.isalpha())
    if len(text) < 4 or _printable_ratio(text) < 0.9 or letters < 0.5 * len(text.replace(" ", "")):
        return None
    return text


def _base64_text(run: str) -> str | None:
    body = run.rstrip("=")
    if len(body) < 16 or body.isalpha() or body.isdigit():
        return None  # plain words and numbers are not base64 payloads
    padded = body + "=" * (-len(body) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return _decoded_text(raw)


def _hex_text(run: str) -> str | None:
    digits = re.sub(r"[ :]", "", run)
    if len(digits) % 2 or digits.isdigit():
        return None
    return _decoded_text(bytes.fromhex(digits))


def _binary_text(run: str) -> str | None:
    bits = re.sub(r"[ ,]", "", run)
    return _decoded_text(bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)))


def _base32_text(run: str) -> str | None:
    body = run.rstrip("=")
    if body.isalpha():  # an upper-case word ("IGNOREALLPREVIOUS"), not a payload
        return None
    try:
        return _decoded_text(base64.b32decode(body + "=" * (-len(body) % 8)))
    except (binascii.Error, ValueError):
        return None


def _ascii85_text(run: str) -> str | None:
    try:
        return _decoded_text(base64.a85decode(run, adobe=True))
    except ValueError:
        return None


def _morse_text(run: str) -> str | None:
    words = [[_MORSE.get(letter) for letter in word.split()] for word in run.split("/")]
    if any(None in word for word in words):
        return None
    return " ".join("".join(word) for word in words)  # type: ignore[arg-type]


def _unescape(text: str) -> tuple[str, str | None]:
    """Character references, percent-encoding and \\u / \\x escapes decoded, and which one was."""
    if "&" in text and _HTML_ENTITY.search(text):
        unescaped = normalize(html.unescape(text))
        if unescaped != text:
            return unescaped, "html"
    if text.count("%") >= 3 and len(_PERCENT.findall(text)) >= 3:
        return normalize(urllib.parse.unquote(text)), "percent"
    if text.count("\\") >= 3 and len(_ESCAPE.findall(text)) >= 3:
        decoded = _ESCAPE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), text)
        return normalize(decoded), "escape"
    return text, None


# The hint words as they read in a rot13 text and in a text written backwards: the words of a text's
# rot13 reading are the rot13 of its words, and read backwards each word is reversed, so one scan
# of the text counts the hints of all three readings.
_ROT13_OF_HINTS = frozenset(codecs.encode(word, "rot13") for word in _ROT13_HINTS)
_BACKWARDS_HINTS = frozenset(word[::-1] for word in _ROT13_HINTS)


def _hint_counts(text: str) -> tuple[int, int, int]:
    """English hint words in the text, in its rot13 reading and in it read backwards."""
    words = _WORD.findall(text.lower())
    return (sum(1 for w in words if w in _ROT13_HINTS), sum(1 for w in words if w in _ROT13_OF_HINTS),
            sum(1 for w in words if w in _BACKWARDS_HINTS))


def _rot13_view(text: str, hints: tuple[int, int, int]) -> str | None:
    """The rot13 reading of the text, when it reads as more English than the text itself."""
    plain, rotated, _ = hints
    return codecs.encode(text, "rot13") if rotated >= 2 and rotated > plain else None


def _reversed_view(text: str, hints: tuple[int, int, int]) -> str | None:
    """The text read backwards ("snoitcurtsni suoiverp lla erongI"), when that reads as more
    English than the text itself."""
    plain, _, backwards = hints
    return text[::-1] if backwards >= 2 and backwards > plain else None


def _respaced_view(text: str) -> str | None:
    if not _SPACED_LETTERS.search(text):
        return None
    return _SPACED_LETTERS.sub(lambda m: _SPACERS.sub("", m.group()), text)


def _is_leet(word: str) -> bool:
    """"1gn0r3", "th4t", "pr0mpt", but not "mp3", "h264", "2nd" or "win10"."""
    if len(word) >= 24 or _NOT_LEET.search(word):
        return False
    symbols = sum(1 for c in word if c in _LEET_CHARS)
    letters = sum(1 for c in word if c.isalpha())
    return bool(_LEET_INNER.search(word)) or (symbols >= 2 and letters >= 2)


def _leet_view(text: str) -> str | None:
    """Leetspeak undone in every word that mixes letters and leet characters, once one word is
    plainly leet (so "mp3" alone does not make a view). E-mail addresses, URLs, host and file
    names, paths, IP addresses, phone numbers, version strings, ids, amounts, hashtags, and words
    that are names or quantities ("win10", "100kg", "h264") are left as written."""
    if not any(_is_leet(m.group()) for m in _LEET_WORD.finditer(text)):
        return None  # the common case, decided without the slower scan for ordinary tokens
    found = False

    def undo(match: re.Match[str]) -> str:
        nonlocal found
        word = match.group("word")
        if word is None or len(word) >= 24 or _NOT_LEET.search(word):
            return match.group()
        found = found or _is_leet(word)
        return word.translate(_LEET)

    # Ordinary tokens never hold a space, so only the chunks with a leet character are scanned.
    view = _LEET_CHUNK.sub(lambda chunk: _LEET_OR_ORDINARY.sub(undo, chunk.group()), text)
    return view if found else None


def _reversed_override_view(text: str) -> str | None:
    """The text as a human sees it when a right-to-left override flips a run of it."""
    if "\u202e" not in text:
        return None
    return normalize(_RTL_OVERRIDE.sub(lambda m: m.group(1)[::-1], text))


def _gloss_view(text: str) -> str | None:
    language = guess_language(fold(text[:_LANGUAGE_SAMPLE]))  # folding all of a long text is slow
    return None if language == "en" else gloss(fold(text), language)


def _decode_inline(text: str) -> tuple[str, str | None]:
    """The text with its character references ("&#73;"), percent-encoding or escapes decoded and
    each plausible base64/hex/binary/base32/ascii85/Morse payload replaced by its decoding (two
    levels deep), and the kind of the first decoding made (one of DECODED_KINDS)."""
    text, kind = _unescape(text)
    for _ in range(2):
        changed = False
        for name, pattern, decode in (("base64", _BASE64_RUN, _base64_text),
                                      ("hex", _HEX_RUN, _hex_text),
                                      ("binary", _BINARY_RUN, _binary_text),
                                      ("base32", _BASE32_RUN, _base32_text),
                                      ("ascii85", _ASCII85_RUN, _ascii85_text),
                                      ("morse", _MORSE_RUN, _morse_text)):
            def swap(match: re.Match[str], decode=decode) -> str:
                decoded = decode(match.group())
                return match.group() if decoded is None else f" {normalize(decoded)} "

            replaced = pattern.sub(swap, text)
            if replaced != text:
                text, changed, kind = replaced, True, kind or name
        if not changed:
            break
    return _SPACES.sub(" ", text).strip(), kind


def labelled_views(text: str) -> list[tuple[str, str]]:
    """(name, text) pairs: "text" (the normalised text) first; then one of DECODED_KINDS (the
    text with its escapes or payloads decoded in place) when there were any; then each other
    plausible reading of it: "bidi" (right-to-left overrides undone), "rot13", "reversed", "spaced"
    (s p a c e d letters joined), "leet" (l33t undone) and "gloss" (an English word-for-word
    reading of the languages in the gloss tables, of the leet view when there is one)."""
    base = normalize(text)
    views = [("text", base)]
    decoded, kind = _decode_inline(base)
    if kind:
        views.append((kind, decoded))
    flipped = _reversed_override_view(text)
    if flipped and flipped != base:
        views.append(("bidi", flipped))
    leet = None
    hints = _hint_counts(decoded)
    for name, extra in (("rot13", _rot13_view(decoded, hints)), ("reversed", _reversed_view(decoded, hints)),
                        ("spaced", _respaced_view(decoded)), ("leet", _leet_view(decoded))):
        if extra and extra != decoded:
            views.append((name, extra))
            leet = extra if name == "leet" else leet
    glossed = _gloss_view(leet or decoded)  # "1gn0r1ere alle Anweisungen" glosses once un-leeted
    if glossed and glossed != decoded:
        views.append(("gloss", glossed))
    return views[:_MAX_VIEWS]


def views(text: str) -> list[str]:
    """The normalised text plus its decoded (base64/hex/rot13), de-obfuscated and glossed views."""
    return [view for _, view in labelled_views(text)]
