"""``ferkit mix``: a manifest of the real images plus k x generated ones, and the selection rules
the study shares (ratio parsing, per-class allocation and draws, real subsets, manifests).

A mixed training set keeps the real class balance (or, with ``balance``, equalises the classes
as far as the budget allows). Nothing is copied: the result is a manifest CSV
(``path,class,source``, absolute paths) that ``ferkit train`` accepts wherever it takes a folder.

Example::

    from ferkit.experiments import build_mix
    build_mix("data/train", ["data/synth"], ratio=2, out="mix/train_k2.csv")
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import scan_source
from ..errors import FerkitError
from ..files import atomic_path, csv_writer, make_dir, refuse_output_over_input, same_path
from ..labels import parse_classes

MANIFEST_FIELDS = ("path", "class", "source")


# ----------------------------------------------------------------------------- parsing
#: The largest k (generated images per real image) a mix or study accepts.
MAX_RATIO = 1000


def refuse_synthetic_as_real(synthetic, real) -> None:
    """One line when a generated-data source is one of the real-data sources (the same file or
    folder): a mix of the real data with itself is not what anyone means."""
    reals = [str(r) for r in (real if isinstance(real, (list, tuple)) else [real]) if r is not None]
    for s in _as_list(synthetic):
        for r in reals:
            if same_path(s, r):
                raise FerkitError(f"--synthetic {s} is the real data ({r}): give the generated faces, "
                                  "e.g. from `ferkit synth faces` or `ferkit synth edit`")


def parse_ratios(spec, what: str = "ratio") -> tuple[float, ...]:
    """``"0,0.5,1"`` (or a number, or a list) -> distinct non-negative floats, in the given order."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        items = [spec]
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    elif spec is None:
        items = []
    else:
        items = list(spec)
    if not items:
        raise FerkitError(f"{what}: give at least one number, e.g. 0,0.5,1,2")
    out: list[float] = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise FerkitError(f"{what} {item!r} is not a number (expected e.g. 0,0.5,1,2)") from None
        if not math.isfinite(value) or value < 0:
            raise FerkitError(f"{what} {item!r} must be a number >= 0")
        if value > MAX_RATIO:
            raise FerkitError(f"{what} {item!r} is above {MAX_RATIO}: at most {MAX_RATIO} generated images per real "
                              "image")
        if value not in out:
            out.append(value)
    return tuple(out)


def parse_sizes(spec) -> tuple[int | None, ...]:
    """``"25,50,all"`` -> (25, 50, None): real images per class; None = all of them."""
    if spec is None:
        return (None,)
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    out: list[int | None] = []
    for item in items:
        if item is None or str(item).strip().lower() == "all":
            value = None
        else:
            try:
                value = int(str(item))
            except ValueError:
                raise FerkitError(f"real images per class {item!r}: expected a whole number >= 1 or 'all'") from None
            if value < 1:
                raise FerkitError(f"real images per class must be at least 1 (got {value})")
        if value not in out:
            out.append(value)
    if not out:
        raise FerkitError("real images per class: give at least one size, e.g. 50,200,all")
    return tuple(out)


def _fmt_k(k: float) -> str:
    return f"{k:g}"


def _size_name(n: int | None) -> str:
    return "all" if n is None else str(n)


# ----------------------------------------------------------------------------- selection rules
def allocate(real_counts, total: int, balance: bool = False) -> np.ndarray:
    """How many generated images each class gets, summing to ``total``.

    Proportional (default): in the real set's class proportions (largest remainder rounding).
    ``balance``: water-filling — the smallest classes are topped up first, so the mixed set's
    classes come out equal when the budget allows (and as equal as possible when it does not).
    """
    r = np.asarray(real_counts, dtype=np.int64)
    total = int(total)
    if total <= 0 or len(r) == 0:
        return np.zeros(len(r), np.int64)
    if balance:
        lo, hi = int(r.min()), int(r.max()) + total
        while lo < hi:  # the highest level L with need(L) <= total
            mid = (lo + hi + 1) // 2
            if np.maximum(0, mid - r).sum() <= total:
                lo = mid
            else:
                hi = mid - 1
        alloc = np.maximum(0, lo - r)
        rest = total - int(alloc.sum())
        for c in np.flatnonzero(r <= lo)[:rest]:  # fewer than the classes at the level
            alloc[c] += 1
        return alloc
    if r.sum() == 0:
        raise FerkitError("the real data has no images")
    exact = total * r / r.sum()
    alloc = np.floor(exact).astype(np.int64)
    rest = total - int(alloc.sum())
    order = np.argsort(-(exact - alloc), kind="stable")
    alloc[order[:rest]] += 1
    return alloc


def draw_per_class(labels: np.ndarray, want, seed: int, classes, replace: bool = False,
                   where: str = "generated data") -> tuple[np.ndarray, int]:
    """Pick ``want[c]`` indices of class c from ``labels``; returns (sorted indices, duplicates).

    The order of candidates depends only on (seed, class), so smaller draws are subsets of larger
    ones (k = 1 is contained in k = 2, a 50-per-class subset in the 200-per-class one). Asking for
    more than exist is a FerkitError unless ``replace``: then every image is used as evenly as
    possible (each available image repeats before any repeats twice) and the repeats are counted.
    """
    picks, duplicates = [], 0
    for c, m in enumerate(np.asarray(want, dtype=np.int64)):
        if m <= 0:
            continue
        avail = np.flatnonzero(labels == c)
        perm = np.random.default_rng([int(seed), c, 0x5EED]).permutation(avail)
        if m <= len(avail):
            picks.append(perm[:m])
        elif not replace or len(avail) == 0:
            raise FerkitError(f"{where}: asked for {m} {classes[c]!r} images but only {len(avail)} exist; "
                              "lower the ratio, generate more images, or pass --replace to sample with replacement")
        else:
            reps, rem = divmod(int(m), len(avail))
            picks += [perm] * reps + [perm[:rem]]
            duplicates += int(m) - len(avail)
    if not picks:
        return np.zeros(0, np.int64), 0
    return np.sort(np.concatenate(picks)), duplicates


def real_subset(labels: np.ndarray, per_class: int | None, n_classes: int, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` images of every class (all when None or when a class has fewer)."""
    if per_class is None:
        return np.arange(len(labels))
    counts = np.bincount(labels, minlength=n_classes)
    want = np.minimum(counts, per_class)
    idx, _ = draw_per_class(labels, want, seed, [str(c) for c in range(n_classes)])
    return idx


def write_manifest(path: Path, paths, class_names, sources) -> Path:
    """Write ``path,class,source`` rows (absolute paths) atomically."""
    path = Path(path)
    make_dir(path.parent)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv_writer(fh)
        w.writerow(MANIFEST_FIELDS)
        for p, c, s in zip(paths, class_names, sources):
            w.writerow([os.path.abspath(p), c, s])
    return path


def _check_synthetic_classes(found_by_dir: dict[str, list[str]], classes, hint: str) -> None:
    covered = {c for found in found_by_dir.values() for c in found}
    missing = [c for c in classes if c not in covered]
    if missing:
        dirs = ", ".join(found_by_dir)
        have = sorted(covered)
        raise FerkitError(f"synthetic data ({dirs}) has no images of class {', '.join(missing)} that the real data "
                          f"has (synthetic classes: {', '.join(have) or 'none'}); {hint}")


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [str(value)]
    return [str(v) for v in value]


# ----------------------------------------------------------------------------- mix
@dataclass
class MixResult:
    manifest: Path
    classes: tuple[str, ...]
    ratio: float
    real_counts: dict[str, int]
    synthetic_counts: dict[str, int]
    duplicates: int = 0           # generated images drawn more than once (``replace`` only)

    @property
    def n_real(self) -> int:
        return sum(self.real_counts.values())

    @property
    def n_synthetic(self) -> int:
        return sum(self.synthetic_counts.values())

    def text(self) -> str:
        """The lines ``ferkit mix`` prints: per class, then the manifest."""
        lines = [f"{c:>10}: {self.real_counts[c]:6d} real + {self.synthetic_counts[c]:6d} generated"
                 for c in self.classes]
        if self.duplicates:
            lines.append(f"note: sampled with replacement: {self.duplicates} generated image(s) are repeats")
        lines.append(f"manifest: {self.manifest}  ({self.n_real} real + {self.n_synthetic} generated, "
                     f"k = {self.ratio:g})")
        return "\n".join(lines)


def build_mix(real, synthetic, ratio: float, out, balance: bool = False, replace: bool = False,
              seed: int = 0, classes=None) -> MixResult:
    """Write a manifest of the real images plus ``ratio x len(real)`` generated images.

    Args:
        real: real data (class folders or manifest).
        synthetic: one or more generated-data sources (class folders or manifests).
        ratio: generated images per real image (k).
        out: manifest path (.csv), written atomically.
        balance: equalise the mixed set's classes instead of keeping the real class balance.
        replace: sample generated images with replacement when a class has too few.
        seed: which generated images are drawn.
        classes: restrict to these classes (default: every class of the real data).
    """
    if isinstance(ratio, str) and "," in ratio:
        raise FerkitError(f"ratio {ratio!r}: give one number")
    k = parse_ratios([ratio], "ratio")[0]
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise FerkitError(f"--out {out}: the manifest must be a .csv file")
    if out.is_dir():
        raise FerkitError(f"--out {out} is a folder; give a .csv path")
    syn_dirs = _as_list(synthetic)
    if not syn_dirs:
        raise FerkitError("give at least one --synthetic source")
    refuse_synthetic_as_real(syn_dirs, real)
    refuse_output_over_input(out, [real, *syn_dirs], input_option="input")
    wanted = parse_classes(classes) if classes is not None else None
    real_src = scan_source(real, wanted, "real data")
    classes = wanted or tuple(real_src.found_classes)
    index = {c: i for i, c in enumerate(classes)}
    real_labels = np.asarray([index[c] for c in real_src.labels], np.int64)

    found_by_dir, syn_files, syn_labels = {}, [], []
    for d in syn_dirs:
        src = scan_source(d, None, "synthetic data")
        found_by_dir[d] = src.found_classes
        for f, c in zip(src.files, src.labels):
            if c in index:
                syn_files.append(f)
                syn_labels.append(index[c])
    _check_synthetic_classes(found_by_dir, classes, "generate them or restrict with --classes")
    syn_labels = np.asarray(syn_labels, np.int64)

    real_counts = np.bincount(real_labels, minlength=len(classes))
    want = allocate(real_counts, math.floor(k * len(real_labels) + 0.5), balance)
    pick, dup = draw_per_class(syn_labels, want, seed, classes, replace, where="synthetic data")
    write_manifest(out, [*real_src.files, *(syn_files[i] for i in pick)],
                   [*real_src.labels, *(classes[syn_labels[i]] for i in pick)],
                   ["real"] * len(real_labels) + ["synthetic"] * len(pick))
    return MixResult(out, classes, k, {c: int(n) for c, n in zip(classes, real_counts)},
                     {c: int(n) for c, n in zip(classes, want)}, dup)


