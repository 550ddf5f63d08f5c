"""Where votes become a loss: FER+'s crowd votes -> label distributions (the FER+ protocols).

Every training label is a distribution over the classes. Vote-label data (a FER+ folder with
``label.csv``, or a manifest with one vote column per class; read by :mod:`ferkit.data`) becomes
targets here, by :func:`vote_targets` (``majority``: the FER+ protocol, one-hot; ``soft``: the vote
distribution); a class-folder label is the one-hot distribution :func:`one_hot` makes. The
training loop (:meth:`ferkit.train.loop.Trainer.loss`) takes the cross-entropy against those
distributions, one path for hard and soft labels, as torchvision's mixup does::

    keep, targets, dropped = vote_targets(votes, ("happy", "sad", "neutral"), "soft")
    ImageSet.targets             # the distributions of a decoded set (load_dataset(..., labels=...))
    ImageSet.label_distributions()   # targets, or one-hot labels: what the loop trains against
"""
from __future__ import annotations

import numpy as np

from .choices import LABEL_MODES
from .errors import FerkitError

#: The columns of a FER+ ``label.csv`` after the file name and face box, in Microsoft's order.
FERPLUS_COLUMNS = ("neutral", "happy", "surprised", "sad", "angry", "disgusted", "fearful", "contempt",
                   "unknown", "not-a-face")
#: The expression classes a vote vector covers (FER+'s eight, canonical names).
VOTE_CLASSES = FERPLUS_COLUMNS[:8]


def check_votes(cells, where: str, face: str) -> list[float]:
    """One face's vote counts (or probabilities), checked: numbers, finite, >= 0, not all zero."""
    try:
        counts = [float(c) for c in cells]
    except ValueError:
        raise FerkitError(f"{where}: vote counts must be numbers, got {list(cells)}") from None
    if any(not np.isfinite(c) or c < 0 for c in counts):
        raise FerkitError(f"{where}: vote counts must be finite and >= 0, got {list(cells)}")
    if sum(counts) <= 0:
        raise FerkitError(f"{where}: {face} has no votes")
    return counts


def vote_targets(votes: np.ndarray, classes: tuple[str, ...], mode: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Turn vote counts (N, 10: FER+'s eight emotions, unknown, not-a-face) into targets over ``classes``.

    ``majority`` is the FER+ protocol: single votes are dropped as outliers, and a face is kept only
    where one emotion has more than half of the remaining votes (unknown and not-a-face count in the
    total; a face whose top is one of them is dropped), with a one-hot target. ``soft`` keeps the
    distribution of the remaining emotion votes (the rare expressions' minority votes with them);
    faces with no emotion votes left, or more unknown/not-a-face votes than emotion votes, are dropped.
    Votes for emotions outside ``classes`` are dropped in both modes (majority: a face whose majority
    class is not selected is dropped).

    Returns (kept indices, float32 targets (kept, len(classes)), {reason: count} of dropped faces).
    """
    if mode not in LABEL_MODES:
        raise FerkitError(f"unknown label mode {mode!r}; choose from {', '.join(LABEL_MODES)}")
    v = np.where(votes > 1.0 + 1e-9, votes, 0.0) if votes.max() > 1.0 + 1e-9 else votes.copy()
    if v[:, :8].sum(1).min() <= 0:   # single votes were all a face had: keep its raw votes
        bare = v[:, :8].sum(1) <= 0
        v[bare] = votes[bare]
    cols = [VOTE_CLASSES.index(c) for c in classes]
    total, emo = v.sum(1), v[:, :8]
    top = v.argmax(1)
    dropped: dict[str, int] = {}
    if mode == "majority":
        ok = (v.max(1) > 0.5 * total) & (top < 8)
        dropped["no majority"] = int((~ok).sum())
        chosen = np.isin(top, cols)
        dropped["majority class not selected"] = int((ok & ~chosen).sum())
        keep = np.flatnonzero(ok & chosen)
        targets = np.zeros((len(keep), len(classes)), np.float32)
        targets[np.arange(len(keep)), [cols.index(t) for t in top[keep]]] = 1.0
    else:
        sel = emo[:, cols]
        ok = (sel.sum(1) > 0) & (emo.sum(1) >= v[:, 8:].sum(1))
        dropped["mostly unknown or not a face"] = int((~ok).sum())
        keep = np.flatnonzero(ok)
        targets = (sel[keep] / sel[keep].sum(1, keepdims=True)).astype(np.float32)
    return keep, targets, {k: n for k, n in dropped.items() if n}


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Hard labels (int indices) as distributions: float32 (N, n_classes), one 1 per row."""
    return np.eye(n_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]
