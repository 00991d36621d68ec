"""Fresh post-hoc probes that decide whether a feature still encodes an attribute.

Each probe is fitted on one set of identities (probe-train) and scored on others (probe-test),
never on what an eraser was fitted on: an adversary that was trained alongside a method tells
little (Elazar & Goldberg 2018). Scores are balanced accuracy, whose chance level is 1 / classes
whatever the imbalance, with a 95 % bootstrap interval that resamples identities, not images.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

LINEAR_C = (0.01, 0.1, 1.0, 10.0)
MLP_SEEDS = (0, 1, 2)
BOOTSTRAP = 1000


@dataclass(frozen=True)
class ProbeSet:
    """Features, attribute classes and identities of one side of a probe (train or test)."""

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.features) == len(self.labels) == len(self.groups):
            raise ValueError("features, labels and groups must have one row per image")


@dataclass(frozen=True)
class ProbeScore:
    """A probe's balanced accuracy on probe-test and its 95 % interval over identities."""

    balanced_accuracy: float
    low: float
    high: float
    chance: float

    def to_dict(self) -> dict[str, float]:
        """Plain form for JSON."""
        return asdict(self)


@contextmanager
def _absent_classes() -> Iterator[None]:
    """Silence sklearn's note that a scored subset (a bootstrap resample, a grouped CV fold,
    a small probe-test) lacks a class the probe predicts: balanced accuracy handles it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        yield


def identity_interval(
    labels: np.ndarray, predicted: np.ndarray, groups: np.ndarray, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile interval of balanced accuracy, resampling identities with replacement."""
    names, inverse = np.unique(groups, return_inverse=True)
    rows = [np.flatnonzero(inverse == k) for k in range(len(names))]
    rng = np.random.default_rng(seed)
    scores = []
    with _absent_classes():
        for _ in range(BOOTSTRAP):
            picked = np.concatenate([rows[k] for k in rng.integers(0, len(names), len(names))])
            if len(np.unique(labels[picked])) > 1:
                scores.append(balanced_accuracy_score(labels[picked], predicted[picked]))
    low, high = np.percentile(scores, [2.5, 97.5]) if scores else (np.nan, np.nan)
    return float(low), float(high)


def _score(model: object, test: ProbeSet, classes: int) -> ProbeScore:
    predicted = model.predict(test.features)  # type: ignore[attr-defined]
    low, high = identity_interval(test.labels, predicted, test.groups)
    with _absent_classes():
        score = float(balanced_accuracy_score(test.labels, predicted))
    return ProbeScore(score, low, high, 1.0 / classes)


def _classes(train: ProbeSet, test: ProbeSet) -> int:
    """The attribute's class count; ValueError when probe-train has nothing to tell apart."""
    if len(np.unique(train.labels)) < 2:
        raise ValueError("probe-train holds a single class of the attribute")
    return len(np.unique(np.concatenate([train.labels, test.labels])))


def linear_probe(train: ProbeSet, test: ProbeSet) -> ProbeScore:
    """Standardized logistic regression (balanced classes), C chosen by 5-fold grouped CV."""
    classes = _classes(train, test)
    pipeline = make_pipeline(
        StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000)
    )
    folds = min(5, len(np.unique(train.groups)))
    search = GridSearchCV(
        pipeline,
        {"logisticregression__C": list(LINEAR_C)},
        cv=GroupKFold(folds),
        scoring="balanced_accuracy",
    )
    with _absent_classes():
        search.fit(train.features, train.labels, groups=train.groups)
    return _score(search.best_estimator_, test, classes)


def mlp_probe(train: ProbeSet, test: ProbeSet) -> ProbeScore:
    """One hidden layer of 256, early stopping on 15 % of probe-train; of three seeds, the one
    with the best validation score is scored."""
    classes = _classes(train, test)
    best: tuple[float, Pipeline] | None = None
    for seed in MLP_SEEDS:
        mlp = MLPClassifier(
            hidden_layer_sizes=(256,),
            early_stopping=True,
            validation_fraction=0.15,
            max_iter=200,
            random_state=seed,
        )
        pipeline = make_pipeline(StandardScaler(), mlp).fit(train.features, train.labels)
        validation = float(mlp.best_validation_score_)
        if best is None or validation > best[0]:
            best = (validation, pipeline)
    assert best is not None
    return _score(best[1], test, classes)


def shuffled(side: ProbeSet, seed: int = 0) -> ProbeSet:
    """`side` with its labels permuted. A probe fitted and scored on permuted labels (a control
    task) must score at chance: a probe that beats it there manufactures its signal."""
    labels = np.random.default_rng(seed).permutation(side.labels)
    return ProbeSet(side.features, labels, side.groups)
