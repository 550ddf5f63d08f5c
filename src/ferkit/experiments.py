"""Generated-data experiments: how much do synthetic faces help, and where does it stop?

Two tools, both thin over the same selection rules:

``build_mix`` / ``ferkit mix``
    A training set of the real images plus ``k x (number of real images)`` generated ones, drawn
    per class so the real class balance is kept (or, with ``balance``, so that the classes of the
    mixed set come out as equal as the budget allows). Nothing is copied: the result is a
    manifest CSV (``path,class,source``, absolute paths) that ``ferkit train`` accepts wherever it
    accepts a folder.

``run_study`` / ``ferkit study``
    The reference paper's experiment on the user's own data: for every real-data size, train on
    real only (k = 0), real with classic augmentation (the baseline generated data must beat),
    generated only, and real + k x generated for every k; every setting with every seed;
    evaluate on the real test set; tabulate mean +- sd over seeds and the difference to
    real-only with a 95% confidence interval (paired by seed); plot accuracy versus k; name the
    best k and the k beyond which more generated data stops helping.

Each source is decoded once (``load_dataset`` with its cache) and every run's training set is
built by indexing the in-memory arrays; each run still gets a manifest for traceability.

Study folder (``out``)::

    study.json                 the study's settings (a re-run must match them)
    manifests/<run>.csv        the exact training images of each run
    runs/<run>/                a normal ferkit run folder (+ eval-test/metrics.json)
    logs/<run>.log             training log of runs executed in worker processes (--jobs > 1)
    runs.csv                   one row per run: setting, seed, images used, accuracy, macro-F1
    table.csv, table.md        per setting: mean/sd over seeds, difference to real-only, 95% CI
    accuracy_vs_k.png          accuracy versus k, one line per real-data size, error bars
    summary.md                 the table plus the best k per real-data size

Run names are ``n<per-class|all>_<setting>_s<seed>``, settings ``k0`` (real only), ``k<K>``
(real + K x generated), ``aug`` (real + augmentation), ``synth`` (generated only). Re-running the
same study skips finished runs and resumes interrupted ones.

Example::

    from ferkit.experiments import StudyConfig, run_study, build_mix
    build_mix("data/train", ["data/synth"], ratio=2, out="mix/train_k2.csv")
    res = run_study(StudyConfig(real_train="data/train", val="data/val", test="data/test",
                                synthetic=["data/synth"], out="study", ratios="0,1,2,4", seeds=3))
    res.best_k   # {real-per-class: best k}
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .console import log, progress_bar
from .data import ImageSet, default_classes, load_dataset, scan_source
from .errors import FerkitError
from .files import atomic_path, make_dir, save_figure, write_json, write_text
from .labels import parse_classes

MANIFEST_FIELDS = ("path", "class", "source")


# ----------------------------------------------------------------------------- parsing
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
        w = csv.writer(fh)
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


UNNAMED_SOURCE = "generated"


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """ "2/4" -> (2, 4); None -> None. One clear error for anything else."""
    if spec is None:
        return None
    i, sep, n = str(spec).partition("/")
    if not sep or not i.strip().isdigit() or not n.strip().isdigit():
        raise FerkitError(f"--shard {spec!r} is not I/N (e.g. 1/4: the first of four shares)")
    i, n = int(i), int(n)
    if n < 1 or not 1 <= i <= n:
        raise FerkitError(f"--shard {spec}: I must be between 1 and N (N >= 1)")
    return i, n


def shard_runs(run_ids: list[str], shard: tuple[int, int] | None) -> set[str]:
    """The runs of share I of N: every N-th run of the study's (deterministic) plan, starting at
    the I-th, so N machines or the N tasks of a job array cover every run exactly once."""
    if shard is None:
        return set(run_ids)
    i, n = shard
    return {r for k, r in enumerate(run_ids) if k % n == i - 1}


def parse_sources(specs: list[str]) -> dict[str, list[str]]:
    """``["gan=data/gan", "procedural=data/synth", "more/dir"]`` -> {name: [folders]}. A spec without a
    name joins the source "generated"; folders given the same name are pooled."""
    import re

    sources: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or os.path.exists(spec):
            name, path = UNNAMED_SOURCE, spec
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name):
            raise FerkitError(f"--synthetic {spec!r}: a source name is letters, digits, _ . - (e.g. gan=data/gan)")
        sources.setdefault(name, []).append(path)
    return sources


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


# ----------------------------------------------------------------------------- study config
@dataclass(frozen=True)
class Arm:
    """One experimental setting, as data: what the training set is made of."""

    name: str                 # run-name part: k0, k0.5, aug, synth
    label: str                # for tables: "real only", "real + 2x generated", ...
    real: bool = True         # include the real subset
    k: float = 0.0            # generated images per real image (synth: generated count / real count)
    augment: bool = False     # classic augmentation (flip, shifts, rotations)
    source: str = ""          # the generated-data source the arm draws from ("" for real only / augmentation)


def study_arms(ratios, synthetic_only_k: float, augment_arm: bool = True, synthetic_arm: bool = True,
               sources=(UNNAMED_SOURCE,)) -> list[Arm]:
    """Real only, augmentation, and for each generated-data source: generated only and real + k x
    generated for every k > 0. With one source the names are k2, synth (as in earlier studies);
    with several, k2-<source>, synth-<source>."""
    arms = [Arm("k0", "real only")]
    if augment_arm:
        arms.append(Arm("aug", "real + augmentation", augment=True))
    single = len(sources) == 1
    for src in sources:
        suffix, word = ("", "generated") if single else (f"-{src}", src)
        if synthetic_arm:
            arms.append(Arm(f"synth{suffix}", f"{word} only ({_fmt_k(synthetic_only_k)}x real count)", real=False,
                            k=synthetic_only_k, source=src))
        arms += [Arm(f"k{_fmt_k(k)}{suffix}", f"real + {_fmt_k(k)}x {word}", k=k, source=src)
                 for k in sorted(ratios) if k > 0]
    return arms


#: TrainConfig fields a study sets for all its runs (None = the recipe's), besides train_options.
STUDY_TRAIN_FIELDS = ("arch", "epochs", "batch_size", "patience", "monitor", "lr", "image_size", "precision",
                      "device")


@dataclass
class StudyConfig:
    """Everything that defines a study (saved as study.json)."""

    real_train: str
    val: str
    test: str
    synthetic: list[str]
    out: str
    ratios: tuple[float, ...] = (0, 0.5, 1, 2, 3, 5, 8)
    seeds: int = 3                                  # seeds 0 .. seeds-1
    real_per_class: tuple[int | None, ...] = (None,)  # None = all real images
    recipe: str = "reference"        # the training recipe of every run (ferkit.train.RECIPES)
    # None: the recipe's value (filled in when the config is built)
    arch: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    patience: int | None = None
    monitor: str | None = None       # one of ferkit.train.MONITORS
    lr: float | None = None
    image_size: int | None = None
    train_options: dict = field(default_factory=dict)   # any other TrainConfig value, e.g. {"model_args": ...}
    classes: tuple[str, ...] | None = None
    balance: bool = False            # equalise classes of the mixed sets
    replace: bool = False            # sample generated images with replacement when short
    synthetic_only_ratio: float | None = None  # generated-only size / real size; None = max ratio (>= 1)
    augment_arm: bool = True
    synthetic_arm: bool = True
    subset_seed: int = 0             # which real images form each real-data size
    jobs: int = 1
    shard: str | None = None         # "I/N": run only the I-th of N shares of the runs (see shard_runs)
    report_only: bool = False        # train nothing; assemble the table from the finished runs
    precision: str = "auto"
    device: str = "auto"
    progress: bool = True

    def __post_init__(self):
        self.ratios = parse_ratios(self.ratios, "ratio")
        self.real_per_class = parse_sizes(self.real_per_class)
        self.synthetic = _as_list(self.synthetic)
        if not self.synthetic:
            raise FerkitError("give at least one --synthetic source")
        parse_sources(self.synthetic)   # checks the names
        if self.classes is not None:
            self.classes = parse_classes(self.classes)
        for name in ("seeds", "jobs"):
            try:
                value = int(getattr(self, name))
            except (TypeError, ValueError):
                raise FerkitError(f"{name.replace('_', '-')} must be a whole number") from None
            if value < 1:
                raise FerkitError(f"{name.replace('_', '-')} must be at least 1 (got {value})")
            setattr(self, name, value)
        parse_shard(self.shard)
        base = self.train_config(train_dir="-", val_dir="-", out="-")   # checks every training value
        for name in STUDY_TRAIN_FIELDS:
            setattr(self, name, getattr(base, name))
        if self.synthetic_only_ratio is None:
            self.synthetic_only_ratio = max(1.0, max(self.ratios))
        else:
            (self.synthetic_only_ratio,) = parse_ratios([self.synthetic_only_ratio], "synthetic-only ratio")
            if self.synthetic_only_ratio == 0:
                raise FerkitError("synthetic-only ratio must be positive")

    def identity(self) -> dict:
        """Settings every run of the study shares; a re-run into the same folder must match."""
        d = asdict(self)
        for k in ("out", "ratios", "seeds", "real_per_class", "jobs", "progress", "device",
                  "augment_arm", "synthetic_arm", "shard", "report_only"):
            d.pop(k)
        for k in ("real_train", "val", "test"):
            d[k] = os.path.abspath(d[k])
        d["synthetic"] = [s if name == UNNAMED_SOURCE else f"{name}={s}" for name, dirs in self.sources().items()
                          for s in (os.path.abspath(x) for x in dirs)]
        d["classes"] = list(d["classes"]) if d["classes"] else None
        return json.loads(json.dumps(d))   # as it reads back from study.json

    def sources(self) -> dict[str, list[str]]:
        return parse_sources(self.synthetic)

    def train_config(self, **run):
        """The TrainConfig of one run: the recipe, this study's training values, then ``run``'s."""
        from .train import resolve_config

        given = {name: getattr(self, name) for name in STUDY_TRAIN_FIELDS}
        return resolve_config(self.recipe, **{**given, **self.train_options, **run})


@dataclass
class RunSpec:
    """One training run: a setting at one real-data size with one seed, and its exact data."""

    run_id: str
    real_per_class: int | None
    arm: Arm
    seed: int
    real_idx: np.ndarray
    synth_idx: np.ndarray
    duplicates: int = 0


@dataclass
class StudyResult:
    out: Path
    runs: list[dict]                  # one row per run (runs.csv)
    table: list[dict]                 # one row per setting (table.csv)
    best_k: dict                      # real-per-class ('all' or int) -> best k
    plateau_k: dict                   # real-per-class -> smallest k not significantly below the best
    trained: int = 0
    skipped: int = 0
    files: dict = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)  # best k per real size, as printed
    pending: list[str] = field(default_factory=list)  # runs not finished yet (other shards)


# ----------------------------------------------------------------------------- statistics
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t_quantile(df: float, q: float = 0.975) -> float:
    """Student-t quantile (scipy when importable; else a table for the 95% two-sided case)."""
    try:
        from scipy.stats import t
        return float(t.ppf(q, df))
    except ImportError:
        if q != 0.975:
            raise
        keys = sorted(_T975)
        below = [k for k in keys if k <= df]
        return _T975[below[-1]] if below else _T975[1] if df >= 1 else float("nan")


def diff_ci(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, float, str]:
    """Mean difference a - b with a 95% t-interval: paired by seed when >= 2 seeds match, else Welch."""
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        d = np.asarray([a[s] - b[s] for s in shared])
        half = t_quantile(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        return float(d.mean()), float(d.mean() - half), float(d.mean() + half), "paired"
    x, y = np.asarray(list(a.values())), np.asarray(list(b.values()))
    if len(x) == 0 or len(y) == 0:
        return float("nan"), float("nan"), float("nan"), "none"
    mean = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return mean, float("nan"), float("nan"), "none"
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return mean, mean, mean, "welch"
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    half = t_quantile(df) * se
    return mean, mean - half, mean + half, "welch"


# ----------------------------------------------------------------------------- planning
def _concat(sets: list[ImageSet], classes) -> ImageSet:
    if len(sets) == 1:
        return sets[0]
    return ImageSet(np.concatenate([s.images for s in sets]), np.concatenate([s.labels for s in sets]),
                    [p for s in sets for p in s.paths], tuple(classes), [x for s in sets for x in s.skipped])


def _load_sources(cfg: StudyConfig):
    """Decode every source once: real train, val, test and one pool per generated-data source."""
    if cfg.classes is None:
        classes = default_classes(scan_source(cfg.real_train, None, "real training data").found_classes)
    else:
        classes = cfg.classes
    sources = cfg.sources()
    found = {name: {d: scan_source(d, None, f"synthetic data {name}").found_classes for d in dirs}
             for name, dirs in sources.items()}
    for by_dir in found.values():
        _check_synthetic_classes(by_dir, classes, "generate them or restrict with --classes")
    kw = dict(image_size=cfg.image_size, progress=cfg.progress)
    real = load_dataset(cfg.real_train, classes, role="real training data", **kw)
    val = load_dataset(cfg.val, classes, role="validation data", **kw)
    test = load_dataset(cfg.test, classes, role="test data", **kw)
    pools = {}
    for name, by_dir in found.items():
        parts = []
        for d, have in by_dir.items():
            sub = tuple(c for c in classes if c in have)
            if not sub:
                continue
            s = load_dataset(d, sub, role=f"synthetic data {name}", **kw)
            remap = np.asarray([classes.index(c) for c in sub])
            parts.append(ImageSet(s.images, remap[s.labels], s.paths, tuple(classes), s.skipped))
        pools[name] = _concat(parts, classes)
    return tuple(classes), real, val, test, pools


def plan_study(cfg: StudyConfig, real: ImageSet, pools: dict[str, ImageSet]) -> list[RunSpec]:
    """Every run of the study with its exact images; raises before any training if a draw is impossible."""
    classes = real.classes
    arms = study_arms(cfg.ratios, cfg.synthetic_only_ratio, cfg.augment_arm, cfg.synthetic_arm, tuple(pools))
    specs = []
    for n in cfg.real_per_class:
        sub = real_subset(real.labels, n, len(classes), cfg.subset_seed)
        counts = np.bincount(real.labels[sub], minlength=len(classes))
        if n is not None and (counts < n).any():
            short = [f"{c} ({k})" for c, k in zip(classes, counts) if k < n]
            log(f"note: real data has fewer than {n} images of {', '.join(short)}; using all of them")
        for arm in arms:
            want = allocate(counts, math.floor(arm.k * len(sub) + 0.5), cfg.balance)
            for seed in range(cfg.seeds):
                pool = pools[arm.source].labels if arm.source else np.zeros(0, np.int64)
                idx, dup = draw_per_class(pool, want, seed, classes, cfg.replace,
                                          where=f"generated data for n={_size_name(n)} {arm.label}")
                specs.append(RunSpec(f"n{_size_name(n)}_{arm.name}_s{seed}", n, arm, seed,
                                     sub if arm.real else np.zeros(0, np.int64), idx, dup))
    return specs


def _training_set(spec: RunSpec, real: ImageSet, pools: dict[str, ImageSet]) -> ImageSet:
    synth = pools[spec.arm.source] if spec.arm.source else _empty_pool(real)
    return ImageSet(np.concatenate([real.images[spec.real_idx], synth.images[spec.synth_idx]]),
                    np.concatenate([real.labels[spec.real_idx], synth.labels[spec.synth_idx]]),
                    [real.paths[i] for i in spec.real_idx] + [synth.paths[i] for i in spec.synth_idx],
                    real.classes)


def _empty_pool(real: ImageSet) -> ImageSet:
    return ImageSet(real.images[:0], real.labels[:0], [], real.classes)


# ----------------------------------------------------------------------------- execution
_WORKER: dict = {}


def _init_worker(val: ImageSet, test: ImageSet, threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    _WORKER.update(val=val, test=test)


def _finished(run_dir: Path) -> dict | None:
    """Metrics of a finished and evaluated run, else None."""
    try:
        if not (run_dir / "summary.json").exists():
            return None
        return json.loads((run_dir / "eval-test" / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def _execute(job: dict, train_set: ImageSet, val: ImageSet | None = None, test: ImageSet | None = None,
             log_path: str | None = None) -> dict:
    """Train (or resume) one run, then evaluate it on the test set. Runs in-process or in a worker."""
    from .evaluate import evaluate
    from .train import TrainConfig, train

    val = val if val is not None else _WORKER["val"]
    test = test if test is not None else _WORKER["test"]
    run_dir = Path(job["train"]["out"])
    t0 = time.time()
    old = sys.stderr
    fh = open(log_path, "a") if log_path else None
    try:
        if fh:
            sys.stderr = fh
        if not (run_dir / "summary.json").exists():
            # An interrupted run (state/) resumes; a run folder without summary and without state
            # (e.g. its summary was deleted) cannot resume and is trained again from scratch.
            resumable = (run_dir / "state" / "state.json").exists()
            train(TrainConfig(**job["train"]), overwrite=not resumable, data=(train_set, val), keep_state=False)
        ev = evaluate(run_dir, job["test_path"], out_dir=run_dir / "eval-test", data=test,
                      precision=job["train"]["precision"], device=job["train"]["device"], progress=False)
    finally:
        sys.stderr = old
        if fh:
            fh.close()
    return {"run_id": job["run_id"], "accuracy": ev.accuracy, "macro_f1": ev.macro_f1,
            "seconds": round(time.time() - t0, 1)}


def _check_study_dir(out: Path, cfg: StudyConfig) -> None:
    make_dir(out, "study folder")
    record = out / "study.json"
    ident = cfg.identity()
    if record.exists():
        try:
            saved = json.loads(record.read_text()).get("identity")
        except ValueError:
            saved = None
        if saved is not None and saved != ident:
            diff = sorted(k for k in set(saved) | set(ident) if saved.get(k) != ident.get(k))
            raise FerkitError(f"{out} holds a study with different settings ({', '.join(diff)}); "
                              "use another --out or the same settings")
    elif any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise FerkitError(f"{out} is not empty and is not a ferkit study; choose another --out")
    write_json(record, {"identity": ident, "config": asdict(cfg)})


def run_study(cfg: StudyConfig) -> StudyResult:
    """Run (or resume) every setting x real-data size x seed, then write table, plot and summary."""
    out = Path(cfg.out)
    classes, real, val, test, pools = _load_sources(cfg)
    specs = plan_study(cfg, real, pools)
    _check_study_dir(out, cfg)   # before any training
    threads = max(1, (os.cpu_count() or 1) // cfg.jobs) if cfg.jobs > 1 else None
    jobs, rows, done = {}, {}, {}
    for spec in specs:
        run_dir = out / "runs" / spec.run_id
        manifest = out / "manifests" / f"{spec.run_id}.csv"
        n_real, n_syn = len(spec.real_idx), len(spec.synth_idx)
        rows[spec.run_id] = {"run_id": spec.run_id, "real_per_class": _size_name(spec.real_per_class),
                             "setting": spec.arm.name, "label": spec.arm.label, "source": spec.arm.source,
                             "k": spec.arm.k if spec.arm.real and not spec.arm.augment else "",
                             "gen_per_real": spec.arm.k, "seed": spec.seed, "n_real": n_real,
                             "n_synthetic": n_syn, "n_train": n_real + n_syn, "duplicates": spec.duplicates}
        metrics = _finished(run_dir)
        if metrics is not None:
            done[spec.run_id] = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
            if manifest.exists():
                continue
        synth = pools[spec.arm.source] if spec.arm.source else _empty_pool(real)
        write_manifest(manifest, [real.paths[i] for i in spec.real_idx] + [synth.paths[i] for i in spec.synth_idx],
                       [classes[real.labels[i]] for i in spec.real_idx]
                       + [classes[synth.labels[i]] for i in spec.synth_idx],
                       ["real"] * n_real + [_manifest_source(spec.arm.source, len(pools))] * n_syn)
        if metrics is not None:
            continue
        # augmentation (flips, shifts, random erasing) only in the augmentation arm, with the recipe's values
        aug = {} if spec.arm.augment else {"augment": False, "erase": 0.0}
        train_cfg = cfg.train_config(train_dir=str(manifest), val_dir=str(cfg.val), out=str(run_dir),
                                     classes=classes, seed=spec.seed, num_threads=threads,
                                     progress=cfg.progress and cfg.jobs == 1, **aug)
        if spec.arm.augment and not train_cfg.augment:
            train_cfg.augment = True    # the reference recipe: its --augment (flip, +-10 deg, +-8% shift/zoom)
        jobs[spec.run_id] = (spec, {"run_id": spec.run_id, "test_path": str(cfg.test), "train": asdict(train_cfg)})
    mine = set() if cfg.report_only else shard_runs([spec.run_id for spec in specs], parse_shard(cfg.shard))
    jobs = {k: v for k, v in jobs.items() if k in mine}
    if done:
        log(f"study {out}: {len(done)} of {len(specs)} runs already finished, skipping them")
    results = dict(done)
    bar = progress_bar(total=len(mine), initial=len(mine) - len(jobs), desc="study", unit="run",
                       enabled=cfg.progress, position=0)
    try:
        if cfg.jobs == 1 or len(jobs) <= 1:
            for run_id, (spec, job) in jobs.items():
                bar.set_postfix_str(run_id)
                r = _execute(job, _training_set(spec, real, pools), val, test)
                results[run_id] = r
                bar.update(1)
        else:
            _run_parallel(cfg, jobs, real, pools, val, test, threads, out, results, bar)
    finally:
        bar.close()
    for run_id, r in results.items():
        rows[run_id].update(accuracy=r["accuracy"], macro_f1=r["macro_f1"])
    for run_id in rows:
        summary = out / "runs" / run_id / "summary.json"
        try:
            s = json.loads(summary.read_text())
            rows[run_id].update(best_epoch=s.get("best_epoch"), epochs_run=s.get("epochs_run"),
                                train_seconds=s.get("seconds"))
        except (OSError, ValueError):
            pass
    missing = [run_id for run_id in rows if run_id not in results]
    if missing:   # a shard finished its share, others are still to come: no table yet
        log(f"study {out}: {len(rows) - len(missing)} of {len(rows)} runs finished; the table is written once every "
            f"shard is done (re-run any shard, or --report)")
        return StudyResult(out, list(rows.values()), [], {}, {}, trained=len(jobs), skipped=len(done),
                           pending=missing)
    result = summarise(out, list(rows.values()), cfg)
    result.trained, result.skipped = len(jobs), len(done)
    return result


def _manifest_source(name: str, n_sources: int) -> str:
    return "synthetic" if n_sources == 1 else name   # one source: the column reads as in earlier studies


def _run_parallel(cfg, jobs, real, pools, val, test, threads, out, results, bar) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    (out / "logs").mkdir(exist_ok=True)
    log(f"running {len(jobs)} runs in {cfg.jobs} processes ({threads} torch thread(s) each); "
        f"training logs in {out / 'logs'}")
    pending = list(jobs.items())
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(val, test, threads)) as pool:
        running = {}
        try:
            while pending or running:
                while pending and len(running) < cfg.jobs + 1:  # build training sets lazily
                    run_id, (spec, job) = pending.pop(0)
                    fut = pool.submit(_execute, job, _training_set(spec, real, pools), None, None,
                                      str(out / "logs" / f"{run_id}.log"))
                    running[fut] = run_id
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    run_id = running.pop(fut)
                    results[run_id] = fut.result()
                    bar.set_postfix_str(f"done {run_id}")
                    bar.update(1)
        except BaseException:
            for fut in running:
                fut.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            raise


# ----------------------------------------------------------------------------- reporting
TABLE_FIELDS = ("real_per_class", "setting", "label", "source", "k", "gen_per_real", "seeds", "n_real", "n_synthetic",
                "n_train",
                "acc_mean", "acc_std", "f1_mean", "f1_std", "acc_diff", "acc_diff_ci_low", "acc_diff_ci_high",
                "f1_diff", "f1_diff_ci_low", "f1_diff_ci_high", "ci_method")
RUN_FIELDS = ("run_id", "real_per_class", "setting", "label", "source", "k", "gen_per_real", "seed", "n_real",
              "n_synthetic", "n_train", "duplicates", "accuracy", "macro_f1", "best_epoch", "epochs_run",
              "train_seconds")


def _write_csv(path: Path, fields, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (v if not isinstance(v, float) else f"{v:g}" if k in ("k", "gen_per_real")
                            else f"{v:.6f}") for k, v in r.items()})


def aggregate(runs: list[dict]) -> list[dict]:
    """Per (real size, setting): mean/sd over seeds and the difference to real only (95% CI)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if "accuracy" in r:
            groups.setdefault((r["real_per_class"], r["setting"]), []).append(r)
    table = []
    for (n, setting), rs in groups.items():
        ref = groups.get((n, "k0"), [])
        row = {"real_per_class": n, "setting": setting, "label": rs[0]["label"], "source": rs[0].get("source", ""),
               "k": rs[0]["k"],
               "gen_per_real": rs[0]["gen_per_real"],
               "seeds": len(rs), "n_real": rs[0]["n_real"], "n_synthetic": rs[0]["n_synthetic"],
               "n_train": rs[0]["n_train"]}
        for m, key in (("acc", "accuracy"), ("f1", "macro_f1")):
            vals = np.asarray([r[key] for r in rs], float)
            row[f"{m}_mean"] = float(vals.mean())
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            if setting == "k0" or not ref:
                row.update({f"{m}_diff": 0.0 if setting == "k0" else float("nan"),
                            f"{m}_diff_ci_low": float("nan"), f"{m}_diff_ci_high": float("nan")})
                method = ""
            else:
                d, lo, hi, method = diff_ci({r["seed"]: r[key] for r in rs}, {r["seed"]: r[key] for r in ref})
                row.update({f"{m}_diff": d, f"{m}_diff_ci_low": lo, f"{m}_diff_ci_high": hi})
        row["ci_method"] = method
        table.append(row)
    return table


def best_and_plateau(runs: list[dict], table: list[dict]) -> tuple[dict, dict, dict]:
    """Per real size (and generated-data source, when there are several: keys "n:source"): the k
    with the best mean accuracy (k0 and mixes), the smallest k whose accuracy is not significantly
    below the best (paired 95% CI of the difference reaches 0), and the best k versus augmentation
    (difference and CI)."""
    best, plateau, vs_aug = {}, {}, {}
    by_run = {}
    for r in runs:
        if "accuracy" in r:
            by_run.setdefault((r["real_per_class"], r["setting"]), {})[r["seed"]] = r["accuracy"]
    sources = list(dict.fromkeys(t.get("source", "") for t in table if t.get("source")))
    groups = [(n, src) for n in dict.fromkeys(t["real_per_class"] for t in table) for src in (sources or [""])]
    for n, src in groups:
        key = n if len(sources) <= 1 else f"{n}:{src}"
        mixes = sorted((t for t in table if t["real_per_class"] == n and t["k"] != ""
                        and t.get("source", "") in ("", src)), key=lambda t: t["k"])
        if not mixes:
            continue
        top = max(mixes, key=lambda t: t["acc_mean"])
        n_key, n = n, key
        best[n] = top["k"]
        plateau[n] = top["k"]
        for t in mixes:
            if t["k"] >= top["k"]:
                break
            d, lo, hi, _ = diff_ci(by_run[(n_key, t["setting"])], by_run[(n_key, top["setting"])])
            if not math.isnan(hi) and hi >= 0:
                plateau[n] = t["k"]
                break
        if (n_key, "aug") in by_run:
            vs_aug[n] = diff_ci(by_run[(n_key, top["setting"])], by_run[(n_key, "aug")])
    return best, plateau, vs_aug


def _pm(mean, sd) -> str:
    return f"{mean:.4f} ± {sd:.4f}"


def _diff_cell(t: dict, metric: str) -> str:
    if t["setting"] == "k0":
        return "(reference)"
    return _ci(t[f"{metric}_diff"], t[f"{metric}_diff_ci_low"], t[f"{metric}_diff_ci_high"])


def _ci(d, lo, hi) -> str:
    if isinstance(d, float) and math.isnan(d):
        return "–"
    if math.isnan(lo):
        return f"{d:+.4f}"
    return f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def markdown_table(table: list[dict]) -> str:
    lines = ["| real/class | setting | images (real + gen) | accuracy | macro-F1 | Δ accuracy vs real only [95% CI] "
             "| Δ macro-F1 [95% CI] | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for t in table:
        lines.append(f"| {t['real_per_class']} | {t['label']} | {t['n_real']} + {t['n_synthetic']} "
                     f"| {_pm(t['acc_mean'], t['acc_std'])} | {_pm(t['f1_mean'], t['f1_std'])} "
                     f"| {_diff_cell(t, 'acc')} | {_diff_cell(t, 'f1')} "
                     f"| {t['seeds']} |")
    return "\n".join(lines) + "\n"


def plot_study(table: list[dict], path: Path) -> None:
    """Accuracy vs k, one line per real size (error bars: sd over seeds); augmentation and
    generated-only as reference markers (dashed line: the augmentation baseline)."""
    from matplotlib import rcParams

    from .files import new_figure

    fig = new_figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    sizes = list(dict.fromkeys(t["real_per_class"] for t in table))
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    sources = list(dict.fromkeys(t.get("source", "") for t in table if t.get("source")))
    styles = ["-", "--", ":", "-."]
    for i, n in enumerate(sizes):
        col = colors[i % len(colors)]
        rows = [t for t in table if t["real_per_class"] == n]
        for j, src in enumerate(sources or [""]):
            mixes = sorted((t for t in rows if t["k"] != "" and t.get("source", "") in ("", src)),
                           key=lambda t: t["k"])
            if mixes:
                ax.errorbar([t["k"] for t in mixes], [t["acc_mean"] for t in mixes],
                            yerr=[t["acc_std"] for t in mixes], marker="o", capsize=3, color=col,
                            ls=styles[j % len(styles)],
                            label=f"real {n}/class + k x {src if len(sources) > 1 else 'generated'}")
        for t in rows:
            if t["setting"] == "aug":
                ax.errorbar([0], [t["acc_mean"]], yerr=[t["acc_std"]], marker="s", mfc="none", ms=9, capsize=3,
                            color=col, ls="none", label=f"real {n}/class + augmentation")
                ax.axhline(t["acc_mean"], color=col, ls="--", lw=0.8, alpha=0.6)
            elif t["setting"].startswith("synth"):
                ax.errorbar([t["gen_per_real"]], [t["acc_mean"]], yerr=[t["acc_std"]], marker="^", ms=8, capsize=3,
                            color=col, ls="none",
                            label=f"{t.get('source') if len(sources) > 1 else 'generated'} only "
                                  f"({t['n_synthetic']} images, n={n})")
    ax.set_xlabel("k (generated images per real image)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy versus amount of generated data (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def summarise(out: Path, runs: list[dict], cfg: StudyConfig | None = None) -> StudyResult:
    """Write runs.csv, table.csv/.md, accuracy_vs_k.png and summary.md from per-run results."""
    out = Path(out)
    table = aggregate(runs)
    best, plateau, vs_aug = best_and_plateau(runs, table)
    files = {"runs": out / "runs.csv", "table_csv": out / "table.csv", "table_md": out / "table.md",
             "plot": out / "accuracy_vs_k.png", "summary": out / "summary.md"}
    _write_csv(files["runs"], RUN_FIELDS, runs)
    _write_csv(files["table_csv"], TABLE_FIELDS, table)
    md = markdown_table(table)
    write_text(files["table_md"], md)
    if table:
        plot_study(table, files["plot"])
    lines = ["# Generated-data study", ""]
    if cfg is not None:
        lines += [f"real: `{cfg.real_train}`, generated: {', '.join(f'`{s}`' for s in cfg.synthetic)}, "
                  f"test: `{cfg.test}`; recipe {cfg.recipe}, arch {cfg.arch}, lr {cfg.lr:g}, up to {cfg.epochs} epochs "
                  "(patience "
                  f"{cfg.patience} on {cfg.monitor}), {cfg.seeds} seed(s); "
                  f"accuracy on the real test set, mean ± sd over seeds; differences paired by seed.", ""]
    lines += [md, "## Best k", ""]
    best_lines = summary_lines(best, plateau, vs_aug)
    lines += best_lines
    write_text(files["summary"], "\n".join(lines) + "\n")
    return StudyResult(out, runs, table, best, plateau, files=files, summary=best_lines)


def summary_lines(best: dict, plateau: dict, vs_aug: dict) -> list[str]:
    lines = []
    for n, k in best.items():
        size, _, src = str(n).partition(":")
        s = f"- real {size}/class{', ' + src if src else ''}: best k = {_fmt_k(k)}"
        if plateau.get(n) == 0 and k != 0:
            s += ", but no k is significantly better than real only (k = 0)"
        elif plateau.get(n) is not None and plateau[n] != k:
            s += f"; beyond k = {_fmt_k(plateau[n])} more generated data gives no significant gain"
        elif k == 0:
            s += " (generated data did not help)"
        if n in vs_aug:
            d, lo, hi, _ = vs_aug[n]
            s += f"; versus augmentation: {_ci(d, lo, hi)}"
        lines.append(s)
    return lines
