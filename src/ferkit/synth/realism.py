"""Can edited faces be told from real ones? Measures for ``ferkit gan evaluate`` beside its read rates.

A generator trained to please a classifier can learn textures that every classifier of its
training data reads as the target (stamped teeth, checkerboards, smeared skin) rather than an
expression a person would see: "read as the target" alone is gameable. Two measures need no
classifier of expressions at all:

- :func:`two_sample_auc`: a small classifier (scikit-learn's logistic regression on standardised
  :func:`realism_features`: the face shrunk to 12x12 pixels, plus a histogram of its Laplacian
  response) is trained to tell real faces from edited ones, with K-fold cross-validation that keeps
  each group (a source face and its edits) on one side, so it cannot learn a person. ROC AUC on the
  held-out folds: 0.5 = the two sets cannot be told apart by it, 1.0 = trivially told apart.
- :func:`hf_ratio`: the edits' mean high-frequency energy (the variance of the Laplacian response,
  per face) divided by the real faces'. 1.0 = the same texture; > 1 = added high frequencies
  (checkerboards, stamped patterns); < 1 = smeared.

Example::

    from ferkit.synth.realism import two_sample_auc, hf_ratio
    auc = two_sample_auc(real, edited, groups_real, groups_edited)   # {"mean": ..., "std": ..., "folds": [...]}
    hf_ratio(edited, real)                                            # 1.0: same texture
"""
from __future__ import annotations

import numpy as np

from ..errors import FerkitError

#: The shrunk face's side (pixels), and the Laplacian histogram's bin edges (in [0, 1] pixel units,
#: values beyond them counted in the end bins).
THUMB = 12
LAPLACIAN_EDGES = np.linspace(-0.5, 0.5, 21)
#: Folds of the two-sample test.
FOLDS = 5

#: What the report's realism figures are, as the report states it.
REALISM_MEASURES = (f"realism_auc: ROC AUC of a logistic regression telling real from edited faces ({FOLDS}-fold, "
                    "grouped by source face; each source face once as itself and once as one of its edits), on "
                    f"{THUMB}x{THUMB} pixels + a {len(LAPLACIAN_EDGES) - 1}-bin histogram of the 3x3 Laplacian "
                    "response, standardised; 0.5 = cannot tell; hf_ratio: mean per-face variance of the Laplacian "
                    "response of the edits / of their source faces (1 = same texture, > 1 sharper or patterned, < 1 "
                    "smeared)")


def _as_unit(faces: np.ndarray) -> np.ndarray:
    faces = np.asarray(faces)
    if faces.ndim != 3 or not len(faces):
        raise FerkitError(f"expected gray faces (N, H, W), got an array of shape {faces.shape}")
    return faces.astype(np.float32) / 255 if faces.dtype == np.uint8 else faces.astype(np.float32)


def laplacian(faces: np.ndarray) -> np.ndarray:
    """The 3x3 Laplacian (4-neighbour) response of gray faces, float32 (N, H, W), pixels in [0, 1]
    (uint8 input is divided by 255); borders reflected."""
    import cv2

    return np.stack([cv2.Laplacian(f, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT_101)
                     for f in _as_unit(faces)])


def hf_energy(faces: np.ndarray) -> np.ndarray:
    """Each face's high-frequency energy: the variance of its Laplacian response, float64 (N,)."""
    return laplacian(faces).reshape(len(faces), -1).astype(np.float64).var(axis=1)


def hf_ratio(edited: np.ndarray, real: np.ndarray) -> float:
    """Mean :func:`hf_energy` of ``edited`` over that of ``real`` (1 = same texture)."""
    denominator = float(hf_energy(real).mean())
    if denominator <= 0:
        raise FerkitError("the real faces are flat (no high-frequency energy): the ratio is undefined")
    return float(hf_energy(edited).mean()) / denominator


def realism_features(faces: np.ndarray) -> np.ndarray:
    """What the two-sample classifier sees: each face shrunk to THUMB x THUMB (area average), then
    the fraction of its Laplacian responses in each bin of LAPLACIAN_EDGES; float64 (N, 144 + 20)."""
    import cv2

    unit = _as_unit(faces)
    thumbs = np.stack([cv2.resize(f, (THUMB, THUMB), interpolation=cv2.INTER_AREA) for f in unit])
    lap = np.clip(laplacian(unit), LAPLACIAN_EDGES[0], LAPLACIAN_EDGES[-1])
    hist = np.stack([np.histogram(v, LAPLACIAN_EDGES)[0] for v in lap.reshape(len(lap), -1)]) / lap[0].size
    return np.hstack([thumbs.reshape(len(unit), -1), hist]).astype(np.float64)


def group_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold index per row: the distinct groups in a seeded random order, dealt to the folds in
    turn, so every row of a group lands in the same fold."""
    names, inverse = np.unique(np.asarray(groups), return_inverse=True)
    fold_of_group = np.empty(len(names), np.int64)
    fold_of_group[np.random.default_rng(seed).permutation(len(names))] = np.arange(len(names)) % folds
    return fold_of_group[inverse]


def two_sample_auc(real: np.ndarray, edited: np.ndarray, groups_real=None, groups_edited=None,
                   folds: int = FOLDS, seed: int = 0) -> dict:
    """Cross-validated ROC AUC of a logistic regression that tells ``edited`` faces from ``real`` ones.

    Args:
        real, edited: gray faces (N, H, W), uint8 or float in [0, 1], of one size.
        groups_real, groups_edited: a group id per face (e.g. the source face's index): a group's
            faces, real and edited, are always in the same fold. None: each face is its own group.
        folds: K of the K-fold cross-validation (each fold must hold both kinds of face).
        seed: which groups go to which fold.

    Returns:
        ``{"mean", "std", "folds": [AUC per fold], "real", "edited"}`` (the last two: face counts).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_real, n_edit = len(real), len(edited)
    if groups_real is None:
        groups_real, groups_edited = np.arange(n_real), np.arange(n_real, n_real + n_edit)
    elif groups_edited is None or len(groups_real) != n_real or len(groups_edited) != n_edit:
        raise FerkitError("two_sample_auc: one group id per face, on both sides")
    features = realism_features(np.concatenate([np.asarray(real), np.asarray(edited)]))
    is_edit = np.r_[np.zeros(n_real, int), np.ones(n_edit, int)]
    fold = group_folds(np.r_[np.asarray(groups_real), np.asarray(groups_edited)], folds, seed)
    aucs = []
    for k in range(folds):
        test = fold == k
        if len(set(is_edit[test])) < 2 or len(set(is_edit[~test])) < 2:
            raise FerkitError(f"the realism test needs real and edited faces in each of its {folds} folds "
                              f"(got {n_real} real, {n_edit} edited faces in {len(set(fold))} groups' folds); "
                              "give more faces")
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(features[~test], is_edit[~test])
        aucs.append(float(roc_auc_score(is_edit[test], clf.predict_proba(features[test])[:, 1])))
    return {"mean": float(np.mean(aucs)), "std": float(np.std(aucs)), "folds": aucs, "real": int(n_real),
            "edited": int(n_edit)}


def paired_realism(sources: np.ndarray, source_index: np.ndarray, edited: np.ndarray, folds: int = FOLDS,
                   seed: int = 0) -> dict | None:
    """The realism figures of edits ``edited[i]`` made from ``sources[source_index[i]]``:

    - ``auc``: :func:`two_sample_auc` on pairs, each source face that was edited once as itself
      and once as one of its edits (drawn with ``seed``), grouped by source face. Both sides then
      hold the same people, domains and source expressions, and only the edit differs. None when
      fewer than 2 x ``folds`` faces were edited.
    - ``hf_ratio``: :func:`hf_ratio` of every edit against its own source face (a face edited
      three times counts three times on both sides); ``hf_real`` and ``hf_edited`` its two means.
    """
    source_index = np.asarray(source_index)
    rng = np.random.default_rng([seed, 2])
    order = rng.permutation(len(source_index))
    _, first = np.unique(source_index[order], return_index=True)   # one random edit per source face
    pick = order[first]
    auc = None
    if len(pick) >= 2 * folds:
        auc = two_sample_auc(sources[source_index[pick]], edited[pick], source_index[pick], source_index[pick],
                             folds, seed)
    hf_real, hf_edit = hf_energy(sources[source_index]).mean(), hf_energy(edited).mean()
    return {"auc": auc, "pairs": int(len(pick)), "hf_ratio": float(hf_edit / hf_real) if hf_real > 0 else None,
            "hf_real": float(hf_real), "hf_edited": float(hf_edit)}
