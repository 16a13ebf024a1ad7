"""Classification metrics with names shared by every recipe (lower_snake_case)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import metrics as skm


def classification(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """test_accuracy, balanced_accuracy and macro_f1 of integer predictions."""
    labels = list(range(num_classes))
    with warnings.catch_warnings():  # predictions of classes absent from the test set are
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")  # errors
        balanced = skm.balanced_accuracy_score(y_true, y_pred)
    return {
        "test_accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro",
                                       zero_division=0)),
    }


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    return skm.recall_score(y_true, y_pred, labels=list(range(num_classes)), average=None,
                            zero_division=0)
