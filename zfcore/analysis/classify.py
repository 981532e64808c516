"""Classification summaries: logits over a dataset (in threads), confusion matrices, per-class accuracy,
the most confused pairs. (The strongest features of one image: ``Record.top_features``.)

numpy only. Axis letters: N images, F features.
"""
from __future__ import annotations

import numpy as np

from zfcore.analysis import parallel
from zfcore.errors import ArgumentError, check_count


# --- classification -----------------------------------------------------------------------------------
def predict(net, images, batch_size: int = 500, threads=None) -> np.ndarray:
    """Logits (N, classes) of ``images`` (N, C, H, W), computed in batches of ``batch_size``, each batch
    split over ``threads`` threads (``zfcore.analysis.parallel``; None: every core)."""
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ArgumentError(f"images must be a non-empty (N, C, H, W) array, got shape {images.shape}")
    batch_size = check_count(batch_size, "batch_size", 1)
    threads = parallel.resolve(threads)
    out = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        out += parallel.map_parts(lambda lo, hi: net.infer(batch[lo:hi])[0], len(batch), threads)
    return np.concatenate(out)


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts: row = true class, column = predicted class."""
    n_classes = check_count(n_classes, "n_classes", 1)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and y.dtype.kind not in "iu":
            raise ArgumentError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y_true.shape != y_pred.shape:
        raise ArgumentError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ArgumentError(f"{name} holds labels outside 0..{n_classes - 1}")
    return np.bincount((y_true * n_classes + y_pred).astype(np.int64).ravel(), minlength=n_classes ** 2).reshape(n_classes, n_classes)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class from a confusion matrix: diagonal / row sums."""
    return np.diag(cm) / np.maximum(cm.sum(axis=1), 1)


def most_confused_pairs(cm: np.ndarray, k: int = 5) -> list[tuple[int, int, int]]:
    """The k largest off-diagonal entries as (true, predicted, count), largest first."""
    k = check_count(k, "k", 0)
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ArgumentError(f"cm must be a square (classes, classes) confusion matrix, got shape {cm.shape}")
    off = cm.astype(np.int64).copy()
    np.fill_diagonal(off, -1)
    flat = np.argsort(off, axis=None)[::-1][:k]
    return [(int(i), int(j), int(off[i, j])) for i, j in zip(*np.unravel_index(flat, off.shape))]
