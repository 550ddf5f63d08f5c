"""``ferkit study``: how much do generated faces help, and where does it stop?

The reference paper's experiment on the user's own data: for every real-data size, train on
real only (k = 0), real with classic augmentation (the baseline generated data must beat),
generated only, and real + k x generated for every k and every generated-data source; every
setting with every seed; evaluate on the real test set; tabulate mean +- sd over seeds and the
difference to real-only with a 95% confidence interval (paired by seed); plot accuracy versus
k; name the best k and the k beyond which more generated data stops helping.

Each source is decoded once (``load_dataset`` with its cache) and every run's training set is
built by indexing the in-memory arrays; each run still gets a manifest for traceability.

Study folder (``out``)::

    study.json                 the study's settings (a re-run must match them)
    manifests/<run>.csv        the exact training images of each run
    runs/<run>/                a ferkit run folder (+ eval-test/metrics.json); without curves.png and
                               eval-test's figures unless run_figures (history.csv and metrics.json
                               hold what they show; ferkit.train.plot_curves draws the curves later)
    logs/<run>.log             training log of runs executed in worker processes (--jobs > 1)
    runs.csv                   one row per run: setting, seed, images used, accuracy, macro-F1
    table.csv, table.md        per setting: mean/sd over seeds, difference to real-only, 95% CI
    accuracy_vs_k.png          accuracy versus k, one line per real-data size, error bars
    summary.md                 the table plus the best k per real-data size

Every run trains for the same number of epochs, so real + k x generated also gets k+1 times the
optimiser steps of real only; ``steps=N`` (``--steps N``) gives every run about N steps instead
(its epochs in runs.csv), which separates what the images add from what longer training adds.

Run names are ``n<per-class|all>_<setting>_s<seed>``, settings ``k0`` (real only), ``k<K>``
(real + K x generated), ``aug`` (real + augmentation), ``synth`` (generated only), and any arm
named with ``arms`` (``--arm``), e.g. fine-tuning from a model alone and with generated faces.
Re-running the same study skips finished runs and resumes interrupted ones.

Grouped cross-validation (``real`` with ``folds`` and ``group_by``; ``--real``, ``--folds``,
``--group-by``) replaces the fixed train/val/test folders by K folds of one dataset in which no
group (person) is in two parts (:mod:`ferkit.experiments.folds`): every setting is trained once
per fold and seed (runs ``f<fold>_n..._s<seed>``), tested on that fold's test part, and the table
gives the mean over folds and seeds with 95% intervals paired by (fold, seed). A generated-data
folder may hold ``{fold}``, replaced by the fold's number (e.g. GAN edits of each fold's own
training faces); the fold manifests are in ``folds/fold<i>/{train,val,test}.csv`` and
``folds/groups.csv``.

Example::

    from ferkit.experiments import StudyConfig, run_study, build_mix
    build_mix("data/train", ["data/synth"], ratio=2, out="mix/train_k2.csv")
    res = run_study(StudyConfig(real_train="data/train", val="data/val", test="data/test",
                                synthetic=["data/synth"], out="study", ratios="0,1,2,4", seeds=3))
    res.best_k   # {real-per-class: best k}
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..choices import check_choice
from ..console import log, progress_bar
from ..data import ImageSet, default_classes, load_dataset, scan_source
from ..errors import FerkitError
from ..files import make_dir, output_lock, write_json
from ..labels import parse_classes
from .folds import DEFAULT_VAL_FRACTION, describe, fold_manifest_paths, load_folds, parse_folds, subset, write_fold_plan
from .mix import (
    _as_list,
    _check_synthetic_classes,
    _fmt_k,
    _size_name,
    allocate,
    draw_per_class,
    parse_ratios,
    parse_sizes,
    real_subset,
    refuse_synthetic_as_real,
    write_manifest,
)
from .report import StudyResult, summarise

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


# ----------------------------------------------------------------------------- arms
#: TrainConfig fields the study sets for each run: not a base setting, not an arm override (its data
#: plan decides the training faces, so the training sources and their weights too).
PER_RUN_FIELDS = ("train_dir", "val_dir", "out", "seed", "classes", "progress", "num_threads", "train_weight",
                  "extra_train_dirs")
#: The keys of an arm's data mix (and ``seeds``, how many seeds it runs); every other key is a
#: TrainConfig field (an override).
MIX_KEYS = ("source", "k", "only", "seeds")
_KEY_ALIASES = {"synthetic": "source"}
_FOLD = "{fold}"
_ARM_NAME = r"[A-Za-z][A-Za-z0-9_.+-]*"
_TRUE, _FALSE = ("", "1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Arm:
    """One experimental setting, as data: a data mix (real faces, k x a generated-data source,
    optionally for some classes only) and the TrainConfig values it changes (``train``)."""

    name: str                 # run-name part: k0, k0.5, aug, synth, or a --arm name
    label: str                # for tables: "real only", "real + 2x generated", ...
    real: bool = True         # include the real subset
    k: float = 0.0            # generated images per real image (synth: generated count / real count)
    source: str = ""          # the generated-data source the arm draws from ("" for none)
    only: tuple[str, ...] = ()  # generated images only for these classes (k x each one's real count)
    train: dict = field(default_factory=dict, hash=False)   # TrainConfig overrides, e.g. {"oversample": ...}
    custom: bool = False      # named with --arm (not on the real + k x generated lines)
    seeds: int = 0            # seeds 0..seeds-1 of this arm (0: the study's --seeds); not part of its definition

    @property
    def augment(self) -> bool:
        return bool(self.train.get("augment"))

    @property
    def init(self) -> str:
        return self.train.get("init") or ""

    @property
    def lr(self) -> float | None:
        return self.train.get("lr")

    def definition(self) -> dict:
        """What the arm does (not what it is called in tables), JSON-shaped: a study folder keeps it."""
        return json.loads(json.dumps({"real": self.real, "k": self.k, "source": self.source, "only": list(self.only),
                                      "train": self.train}))


def arm_definition(saved: dict) -> dict:
    """:meth:`Arm.definition` of an arm as a study.json records it, also in the form ferkit wrote
    before arms took any training setting (keys augment, init, lr beside the data mix)."""
    if "train" in saved:
        return {k: saved.get(k, d) for k, d in (("real", True), ("k", 0.0), ("source", ""), ("only", []),
                                                ("train", {}))}
    train = {"augment": True} if saved.get("augment") else {}
    train.update({k: saved[k] for k in ("init", "lr") if saved.get(k) not in (None, "")})
    return {"real": saved.get("real", True), "k": saved.get("k", 0.0), "source": saved.get("source", ""),
            "only": [], "train": train}


def parse_setting(name: str, text: str | None, where: str):
    """One TrainConfig value from text, by the field's type: ``"5"`` -> 5 for an int, ``"none"`` ->
    None where the field may be None, no text -> True for a flag. One line naming ``where`` if not."""
    from ..models import parse_model_args
    from ..train.config import config_fields

    by_name = {f.name: f for f in config_fields()}
    if name not in by_name:
        raise FerkitError(f"{where}: unknown key {name!r} (keys: {', '.join(MIX_KEYS)} or any `ferkit train` "
                          f"setting, e.g. oversample, labels, lr, augment, init)")
    if name in PER_RUN_FIELDS:
        raise FerkitError(f"{where}: {name} is set by the study for each run, not per arm")
    kind = str(by_name[name].type)
    value = "" if text is None else text.strip()
    if kind == "bool":
        if value.lower() not in _TRUE + _FALSE:
            raise FerkitError(f"{where}: {name} takes no value, or true/false (got {value!r})")
        return value.lower() in _TRUE
    if text is None or not value:
        raise FerkitError(f"{where}: {name} needs a value ({name}=...)")
    if "None" in kind and value.lower() == "none":
        return None
    if kind == "dict":
        items = []
        for part in value.split(","):     # width=16,depths=2,2,2,2: a part without = continues a value
            items.append(part) if "=" in part or not items else items.__setitem__(-1, f"{items[-1]},{part}")
        return parse_model_args(items)
    for cast in (int, float):
        if kind.startswith(cast.__name__):
            try:
                number = cast(value)
            except ValueError:
                raise FerkitError(f"{where}: {name} {value!r} is not a "
                                  f"{'whole number' if cast is int else 'number'}") from None
            if not math.isfinite(number):
                raise FerkitError(f"{where}: {name} must be a finite number (got {value})")
            return number
    return value


def _arm_items(rest: str, where: str) -> list[tuple[str, str | None]]:
    """``"source=gan,k=2,oversample=disgusted=5,fearful=5"`` -> [(key, value or None)]: a part whose
    name is no key continues the value before it (so values may hold commas)."""
    from ..train.config import config_fields

    keys = set(MIX_KEYS) | set(_KEY_ALIASES) | {f.name for f in config_fields()}
    items: list[list] = []
    for part in (p.strip() for p in rest.split(",")):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = key.strip().replace("-", "_")    # class-weights as the option reads, class_weights as the field
        if key in keys:
            items.append([key, value if eq else None])
        elif items and items[-1][1] is not None:
            items[-1][1] += "," + part
        else:
            raise FerkitError(f"{where}: unknown key {key!r} (keys: {', '.join(MIX_KEYS)} or any "
                              "`ferkit train` setting, e.g. oversample, labels, lr, augment, init)")
    return [(_KEY_ALIASES.get(k, k), v) for k, v in items]


def parse_arm(spec: str, sources=(UNNAMED_SOURCE,)) -> Arm:
    """``"NAME:key=value,..."`` -> an Arm: a data mix (``source=NAME`` or ``synthetic=NAME``, ``k=K``:
    real + K x that source, K defaults to 1 and the source to the only one; ``only=CLASS,...``: the
    generated faces for those classes only, K x each one's real count) and any TrainConfig setting
    (``oversample=disgusted=5,fearful=5``, ``labels=soft``, ``init=fer2013-vgg``, ``lr=0.01``,
    ``augment``, ...). A value may hold commas: a part that names no key continues it."""
    import re

    from ..labels import parse_classes

    name, sep, rest = str(spec).partition(":")
    name = name.strip()
    if not re.fullmatch(_ARM_NAME, name) or not sep:
        raise FerkitError(f"--arm {spec!r}: expected NAME:key=value,... (e.g. over5:oversample=disgusted=5,fearful=5 "
                          "or ft-gan:init=fer2013-vgg,source=gan,k=2); a name is letters, digits, _ . + -")
    if re.fullmatch(r"(k[0-9.]+|aug|synth)(-.*)?", name):
        raise FerkitError(f"--arm {name}: k<number>, aug and synth name the built-in arms; choose another name")
    where = f"--arm {name}"
    mix: dict = {}
    train: dict = {}
    for key, value in _arm_items(rest, where):
        if key in (*mix, *train):
            raise FerkitError(f"{where}: {key} is given twice")
        if key == "k":
            if not (value or "").strip():
                raise FerkitError(f"{where}: k needs a value (k=...)")
            (mix["k"],) = parse_ratios([value.strip()], f"{where}: k")
        elif key == "source":
            mix["source"] = (value or "").strip()
        elif key == "only":
            mix["only"] = parse_classes(value or "")
        elif key == "seeds":
            try:
                mix["seeds"] = int((value or "").strip())
            except ValueError:
                raise FerkitError(f"{where}: seeds {value!r} is not a whole number") from None
            if not 1 <= mix["seeds"] <= 1000:
                raise FerkitError(f"{where}: seeds must be 1 to 1000 (got {mix['seeds']})")
        else:
            train[key] = parse_setting(key, value, where)
    sources = tuple(sources)
    if "source" in mix and mix["source"] not in sources:
        raise FerkitError(f"{where}: no generated-data source named {mix['source']!r} "
                          f"(sources: {', '.join(sources)}; name one with --synthetic NAME=DIR)")
    k = mix.get("k", 1.0 if "source" in mix or "only" in mix else 0.0)
    source = mix.get("source", "")
    if k > 0 and not source:
        if len(sources) != 1:
            raise FerkitError(f"{where}: k={k:g} needs source=NAME (sources: {', '.join(sources)})")
        source = sources[0]
    if k == 0:
        source = ""
        if "only" in mix:
            raise FerkitError(f"{where}: only= picks the classes of the generated faces; give k > 0 too")
    if not (train or k > 0):
        raise FerkitError(f"{where}: give a data mix (source=NAME, k=K) or a training setting to change "
                          "(e.g. oversample=disgusted=5, labels=soft, init=MODEL, augment, lr=0.01)")
    parts = [f"fine-tune {train['init']}"] if train.get("init") else ["real"]
    if train.get("augment"):
        parts.append("augmentation")
    if k > 0:
        parts.append(f"{_fmt_k(k)}x {source}" + (f" ({', '.join(mix['only'])})" if mix.get("only") else ""))
    parts += [f"lr {v:g}" if key == "lr" else (key if v is True else f"no {key}") if isinstance(v, bool)
              else f"{key} {_plain(v)}" for key, v in train.items() if key not in ("init", "augment")]
    return Arm(name, f"{name}: " + " + ".join(parts), k=k, source=source, only=tuple(mix.get("only", ())),
               train=train, custom=True, seeds=mix.get("seeds", 0))


def _plain(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={_plain(v)}" for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


# ----------------------------------------------------------------------------- study config
def study_arms(ratios, synthetic_only_k: float, augment_arm: bool = True, synthetic_arm: bool = True,
               sources=(UNNAMED_SOURCE,)) -> list[Arm]:
    """Real only, augmentation, and for each generated-data source: generated only and real + k x
    generated for every k > 0. With one source the names are k2, synth (as in earlier studies);
    with several, k2-<source>, synth-<source>."""
    arms = [Arm("k0", "real only")]
    if augment_arm:
        arms.append(Arm("aug", "real + augmentation", train={"augment": True}))
    single = len(sources) == 1
    for src in sources:
        suffix, word = ("", "generated") if single else (f"-{src}", src)
        if synthetic_arm:
            arms.append(Arm(f"synth{suffix}", f"{word} only ({_fmt_k(synthetic_only_k)}x real count)", real=False,
                            k=synthetic_only_k, source=src))
        arms += [Arm(f"k{_fmt_k(k)}{suffix}", f"real + {_fmt_k(k)}x {word}", k=k, source=src)
                 for k in sorted(ratios) if k > 0]
    return arms


#: The TrainConfig fields a study.json written before studies took any training setting named at
#: its top level (with ``train_options`` for the rest); read as the study's base settings.
_OLD_TRAIN_KEYS = ("arch", "epochs", "batch_size", "patience", "monitor", "lr", "image_size", "precision")
#: Which weights of each run are tested.
CHECKPOINTS = ("best", "last")


@dataclass
class StudyConfig:
    """Everything that defines a study (saved as study.json): a data plan, base training settings
    (a recipe and TrainConfig values over it, ``train``) and arms (data mixes and overrides)."""

    real_train: str | None = None    # fixed splits: real training, validation and test data
    val: str | None = None
    test: str | None = None
    synthetic: list[str] = field(default_factory=list)
    out: str = ""
    ratios: tuple[float, ...] = (0, 0.5, 1, 2, 3, 5, 8)
    seeds: int = 3                                  # seeds 0 .. seeds-1
    real_per_class: tuple[int | None, ...] = (None,)  # None = all real images
    recipe: str = "reference"        # the training recipe of every run (ferkit.train.RECIPES)
    # the base training settings: TrainConfig values over the recipe, e.g. {"arch": "vgg", "epochs": 10},
    # for every run (an arm may change them); not the fields the study sets per run (PER_RUN_FIELDS)
    train: dict = field(default_factory=dict)
    # Instead of epochs: about this many optimiser steps per run (epochs = steps / batches per epoch,
    # rounded), so a larger mixed set does not also get more updates than real only.
    steps: int | None = None
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
    progress: bool = True
    # grouped cross-validation instead of real_train/val/test: one dataset, K group-disjoint folds
    real: str | None = None
    folds: int | str | None = None   # K, or a group,fold CSV
    group_by: str | None = None      # regex on the file name (first capture group) or a manifest column
    fold_seed: int = 0               # which groups form each fold
    val_fraction: float = DEFAULT_VAL_FRACTION   # validation groups, as a fraction of each fold's training groups
    arms: list[str] = field(default_factory=list)  # extra named arms ("NAME:source=gan,k=2,oversample=..."; parse_arm)
    run_figures: bool = False        # each run's curves.png, confusion_matrix.png and reliability.png (seconds a run)
    checkpoint: str = "best"         # the weights each run is tested with: best (by monitor) or last

    @property
    def grouped(self) -> bool:
        return self.folds is not None

    def __post_init__(self):
        self._check_data_options()
        self.ratios = parse_ratios(self.ratios, "ratio")
        self.real_per_class = parse_sizes(self.real_per_class)
        self.synthetic = _as_list(self.synthetic)
        if not self.synthetic and (self.synthetic_arm or any(k > 0 for k in self.ratios)):
            raise FerkitError("give at least one --synthetic source (a study of training settings alone: --ratios 0 "
                              "--no-synthetic-arm)")
        for folders in parse_sources(self.synthetic).values():   # checks the names
            refuse_synthetic_as_real(folders, [self.real_train, self.val, self.test, self.real])
        if self.classes is not None:
            self.classes = parse_classes(self.classes)
        for name in ("seeds", "jobs") + (("steps",) if self.steps is not None else ()):
            try:
                value = int(getattr(self, name))
            except (TypeError, ValueError):
                raise FerkitError(f"{name.replace('_', '-')} must be a whole number") from None
            if value < 1:
                raise FerkitError(f"{name.replace('_', '-')} must be at least 1 (got {value})")
            if name == "seeds" and value > 1000:     # each seed trains every setting once: bounded
                raise FerkitError(f"seeds must be at most 1000 (got {value}); each seed trains every setting once")
            setattr(self, name, value)
        parse_shard(self.shard)
        check_choice("checkpoint", self.checkpoint, CHECKPOINTS)
        self.train = {k: v for k, v in dict(self.train or {}).items() if v is not None}
        for name in self.train:
            if name in PER_RUN_FIELDS:
                raise FerkitError(f"{name} is set by the study for each run; it is not a base training setting")
        if self.steps is not None and "epochs" in self.train:
            raise FerkitError("give --epochs or --steps, not both (--steps sets every run's epochs)")
        self.base = self.train_config(train_dir="-", val_dir="-", out="-")   # checks every training value
        if self.synthetic_only_ratio is None:
            self.synthetic_only_ratio = max(1.0, max(self.ratios))
        else:
            (self.synthetic_only_ratio,) = parse_ratios([self.synthetic_only_ratio], "synthetic-only ratio")
            if self.synthetic_only_ratio == 0:
                raise FerkitError("synthetic-only ratio must be positive")
        self.arms = _as_list(self.arms)
        names = [a.name for a in self.custom_arms()]   # checks every spec
        if self.grouped and "soft" in self.label_modes():
            raise FerkitError("labels=soft is not offered with --folds yet (the folds are drawn from hard labels)")
        if len(set(names)) != len(names):
            raise FerkitError(f"--arm: two arms are named {next(n for n in names if names.count(n) > 1)}")
        for arm in self.custom_arms():
            self.train_config(arm, train_dir="-", val_dir="-", out="-")   # checks the arm's settings
            if arm.only and not set(arm.only) <= set(self.classes or arm.only):
                raise FerkitError(f"--arm {arm.name}: only= names classes the study does not train "
                                  f"({', '.join(c for c in arm.only if c not in self.classes)})")

    @property
    def image_size(self) -> int:
        """The side every source is decoded at (the base settings')."""
        return self.base.image_size

    @property
    def batch_size(self) -> int:
        return self.base.batch_size

    @property
    def epochs(self) -> int | None:
        """Every run's epochs (None with ``steps``: each run's own, :meth:`run_epochs`)."""
        return None if self.steps is not None else self.base.epochs

    def _check_data_options(self) -> None:
        fixed = {"--real-train": self.real_train, "--val": self.val, "--test": self.test}
        grouped = {"--real": self.real, "--folds": self.folds, "--group-by": self.group_by}
        if any(v is not None for v in grouped.values()):
            given = [k for k, v in fixed.items() if v is not None]
            if given:
                raise FerkitError(f"--folds takes one dataset (--real) and splits it; leave out {', '.join(given)}")
            absent = [k for k, v in grouped.items() if v is None]
            if absent:
                raise FerkitError(f"grouped cross-validation needs --real, --folds and --group-by (missing: "
                                  f"{', '.join(absent)})")
            spec = parse_folds(self.folds)
            self.folds = spec if isinstance(spec, int) else str(spec)
            try:
                self.fold_seed = int(self.fold_seed)
                self.val_fraction = float(self.val_fraction)
            except (TypeError, ValueError):
                raise FerkitError("fold seed must be a whole number and validation fraction a number") from None
            if not (0 < self.val_fraction <= 0.5):
                raise FerkitError(f"validation fraction must be in (0, 0.5] (got {self.val_fraction:g})")
        else:
            absent = [k for k, v in fixed.items() if v is None]
            if absent:
                raise FerkitError(f"give --real-train, --val and --test (missing: {', '.join(absent)}), or one "
                                  "dataset with --real, --folds K and --group-by for grouped cross-validation")
            if any(_FOLD in s for s in _as_list(self.synthetic)):
                raise FerkitError(f"a --synthetic folder with {_FOLD} needs --folds (it names each fold's own data)")
        if not str(self.out or "").strip():
            raise FerkitError("give the study folder (--out)")

    def custom_arms(self) -> list[Arm]:
        return [parse_arm(spec, tuple(self.sources())) for spec in self.arms]

    def drawn_classes(self, classes) -> dict[str, tuple[str, ...]]:
        """Per generated-data source, the classes some arm draws from it: every class for the
        built-in arms (real + k x, generated only) and for a named arm without ``only=``, else its
        ``only`` classes. A source needs images of these classes only."""
        builtin = self.synthetic_arm or any(k > 0 for k in self.ratios)
        drawn = {name: set(classes) if builtin else set() for name in self.sources()}
        for arm in self.custom_arms():
            if arm.source:
                drawn[arm.source] |= set(arm.only or classes)
        return {name: tuple(c for c in classes if c in need) for name, need in drawn.items()}

    def labels_of(self, arm: Arm) -> str:
        """How an arm's runs read vote labels (majority or soft): the arm's setting, else the base's."""
        return arm.train.get("labels", self.base.labels)

    def label_modes(self) -> set[str]:
        return {self.base.labels} | {self.labels_of(a) for a in self.custom_arms()}

    def identity(self) -> dict:
        """Settings every run of the study shares; a re-run into the same folder must match."""
        d = asdict(self)
        for k in ("out", "ratios", "seeds", "real_per_class", "jobs", "progress", "augment_arm", "synthetic_arm",
                  "shard", "report_only", "arms", "run_figures", "train"):
            d.pop(k)
        if d["steps"] is None:
            d.pop("steps")   # as studies recorded it before --steps existed
        if d["checkpoint"] == "best":
            d.pop("checkpoint")   # as studies recorded it before --checkpoint existed
        unused = ("real_train", "val", "test") if self.grouped else ("real", "folds", "group_by", "fold_seed",
                                                                      "val_fraction")
        for k in unused:
            d.pop(k)   # a study without folds records what it did before folds existed
        for k in ("real_train", "val", "test", "real") + (() if isinstance(self.folds, int) else ("folds",)):
            if d.get(k) is not None:
                d[k] = os.path.abspath(d[k])
        d["synthetic"] = [s if name == UNNAMED_SOURCE else f"{name}={s}" for name, dirs in self.sources().items()
                          for s in (os.path.abspath(x) for x in dirs)]
        d["classes"] = list(d["classes"]) if d["classes"] else None
        d["train"] = base_identity(self.base, self.steps is not None)
        return json.loads(json.dumps(d))   # as it reads back from study.json

    def sources(self) -> dict[str, list[str]]:
        return parse_sources(self.synthetic)

    def run_epochs(self, n_train: int) -> int:
        """Epochs of a run on ``n_train`` images: --epochs, or with --steps the epochs closest to that
        many optimiser steps (one step per batch, the last batch of an epoch may be short)."""
        if self.steps is None:
            return self.epochs
        return max(1, math.floor(self.steps / math.ceil(n_train / self.batch_size) + 0.5))

    def train_config(self, arm: Arm | None = None, **run):
        """The TrainConfig of one run: the recipe, this study's base settings, the arm's (a model to
        fine-tune brings its own architecture and input scaling), then ``run``'s. Without a setting
        that turns ``augment`` on (base or arm), a study trains without the recipe's augmentation
        (flip, shifts, random erasing): that is what the real + augmentation arm adds."""
        from ..train import resolve_config

        values = dict(self.train)
        where = "" if arm is None else f"--arm {arm.name}: "
        if arm is not None and arm.train.get("init"):
            for name in ("arch", "image_size", "model_args", "input_mean", "input_std"):
                values.pop(name, None)   # the initial weights' own
        if arm is not None:
            values.update(arm.train)
        if not values.get("augment"):
            values.update(augment=False, erase=values.get("erase", 0.0))
        recipe = values.pop("recipe", self.recipe)
        try:
            cfg = resolve_config(recipe, **{**values, **run})
        except FerkitError as exc:
            raise FerkitError(f"{where}{exc}") from None
        if arm is not None and cfg.image_size != self.image_size:   # every source is decoded once
            if arm.init:
                raise FerkitError(f"{where}{arm.init} takes {cfg.image_size} px faces and the study "
                                  f"{self.image_size} px; pass --image-size {cfg.image_size}")
            raise FerkitError(f"{where}image size {cfg.image_size} differs from the study's {self.image_size} px "
                              "(every source is decoded once, at the study's --image-size)")
        return cfg


def base_identity(base, steps: bool = False) -> dict:
    """The resolved base training settings that every run shares (JSON-shaped): a TrainConfig less
    what the study sets per run, the device (a study may move machines) and, with --steps, epochs."""
    d = asdict(base)
    for k in (*PER_RUN_FIELDS, "device", "recipe") + (("epochs",) if steps else ()):
        d.pop(k, None)
    return json.loads(json.dumps(d))


def migrate_identity(saved: dict) -> dict:
    """A study.json identity as this ferkit writes it: one written before studies took any training
    setting (``arch``, ``epochs``, ... and ``train_options`` at its top level) gets its base settings
    resolved into ``train``, as :meth:`StudyConfig.identity` records them."""
    if "train" in saved:
        return _with_new_settings(saved)
    if "recipe" not in saved:
        return saved
    from ..train import resolve_config

    saved = dict(saved)
    given = {k: saved.pop(k) for k in _OLD_TRAIN_KEYS if k in saved}
    given.update(saved.pop("train_options", None) or {})
    given = {k: v for k, v in given.items() if v is not None}
    given.setdefault("augment", False)
    given.setdefault("erase", 0.0)
    base = resolve_config(saved["recipe"], train_dir="-", val_dir="-", out="-", **given)
    saved["train"] = base_identity(base, saved.get("steps") is not None)
    return saved


@dataclass
class RunSpec:
    """One training run: a setting at one real-data size with one seed (in one fold), and its exact data."""

    run_id: str
    real_per_class: int | None
    arm: Arm
    seed: int
    real_idx: np.ndarray
    synth_idx: np.ndarray
    duplicates: int = 0
    fold: int | None = None
    labels: str = "majority"    # how the real faces' votes are read (vote-label data): majority | soft


@dataclass
class Partition:
    """The data of one split: real training images, validation, test and the generated-data pools
    (the fixed folders, or one fold of a grouped cross-validation)."""

    fold: int | None
    real: ImageSet
    val: ImageSet
    test: ImageSet
    pools: dict[str, ImageSet]
    val_path: str
    test_path: str
    soft: ImageSet | None = None     # the real training faces read with labels=soft, when an arm asks for it

    def real_for(self, labels: str) -> ImageSet:
        return self.soft if labels == "soft" else self.real


# ----------------------------------------------------------------------------- planning
def _concat(sets: list[ImageSet], classes) -> ImageSet:
    if len(sets) == 1:
        return sets[0]
    return ImageSet(np.concatenate([s.images for s in sets]), np.concatenate([s.labels for s in sets]),
                    [p for s in sets for p in s.paths], tuple(classes), [x for s in sets for x in s.skipped])


def _check_pools(sources: dict[str, list[str]], classes, drawn=None) -> dict[str, dict[str, list[str]]]:
    """Every generated-data folder exists and its source has the classes the arms draw from it
    (``drawn``: source -> classes, default every class; one line if not); its classes by folder."""
    found = {name: {d: scan_source(d, None, f"synthetic data {name}").found_classes for d in dirs}
             for name, dirs in sources.items()}
    for name, by_dir in found.items():
        need = classes if drawn is None else drawn.get(name, ())
        _check_synthetic_classes(by_dir, need, "generate them, restrict with --classes, or draw from the "
                                 "source with arms that name its classes (only=...)")
    return found


def _load_pools(sources: dict[str, list[str]], classes, kw: dict, cache: dict, drawn=None) -> dict[str, ImageSet]:
    """One pool per generated-data source (its folders pooled), decoding each folder once (``cache``)."""
    found = _check_pools(sources, classes, drawn)
    pools = {}
    for name, by_dir in found.items():
        parts = []
        for d, have in by_dir.items():
            sub = tuple(c for c in classes if c in have)
            if not sub:
                continue
            if (d, sub) not in cache:
                s = load_dataset(d, sub, role=f"synthetic data {name}", **kw)
                remap = np.asarray([classes.index(c) for c in sub])
                cache[(d, sub)] = ImageSet(s.images, remap[s.labels], s.paths, tuple(classes), s.skipped)
            parts.append(cache[(d, sub)])
        pools[name] = _concat(parts, classes)
    return pools


def _load_sources(cfg: StudyConfig):
    """Decode every source once: real train, val, test and one pool per generated-data source."""
    if cfg.classes is None:
        classes = default_classes(scan_source(cfg.real_train, None, "real training data").found_classes)
    else:
        classes = cfg.classes
    kw = dict(image_size=cfg.image_size, progress=cfg.progress)
    drawn = cfg.drawn_classes(classes)
    _check_pools(cfg.sources(), classes, drawn)   # before decoding anything: a missing class is one line
    real = load_dataset(cfg.real_train, classes, role="real training data", **kw)
    soft = None
    if "soft" in cfg.label_modes():
        soft = load_dataset(cfg.real_train, classes, role="real training data", labels="soft", **kw)
    val = load_dataset(cfg.val, classes, role="validation data", **kw)
    test = load_dataset(cfg.test, classes, role="test data", **kw)
    pools = _load_pools(cfg.sources(), classes, kw, {}, drawn)
    return tuple(classes), real, val, test, pools, soft


def _fold_sources(cfg: StudyConfig, fold: int) -> dict[str, list[str]]:
    return {name: [d.replace(_FOLD, str(fold)) for d in dirs] for name, dirs in cfg.sources().items()}


def _load_partitions(cfg: StudyConfig, out: Path):
    """(classes, partitions, fold plan or None): the fixed folders as one partition, or one per fold."""
    if not cfg.grouped:
        classes, real, val, test, pools, soft = _load_sources(cfg)
        return classes, [Partition(None, real, val, test, pools, str(cfg.val), str(cfg.test), soft)], None
    kw = dict(image_size=cfg.image_size, progress=cfg.progress)
    data, plan = load_folds(cfg.real, cfg.folds, cfg.group_by, cfg.classes, cfg.image_size, cfg.fold_seed,
                            cfg.val_fraction, cfg.progress)
    classes = data.classes
    drawn = cfg.drawn_classes(classes)
    for fold in plan.folds:   # every fold's folders exist and have the classes, before decoding any
        _check_pools(_fold_sources(cfg, fold.index), classes, drawn)
    parts, cache = [], {}
    for fold in plan.folds:
        paths = fold_manifest_paths(out / "folds", fold.index)
        parts.append(Partition(fold.index, subset(data, fold.train), subset(data, fold.val), subset(data, fold.test),
                               _load_pools(_fold_sources(cfg, fold.index), classes, kw, cache, drawn),
                               str(paths["val"]), str(paths["test"])))
    return classes, parts, (data, plan)


def plan_study(cfg: StudyConfig, real: ImageSet, pools: dict[str, ImageSet], fold: int | None = None,
               soft: ImageSet | None = None) -> list[RunSpec]:
    """Every run of the study (of one fold) with its exact images; raises before any training if a
    draw is impossible. ``soft``: the real faces read with labels=soft, for the arms that train so."""
    classes = real.classes
    arms = study_arms(cfg.ratios, cfg.synthetic_only_ratio, cfg.augment_arm, cfg.synthetic_arm, tuple(pools))
    arms += cfg.custom_arms()
    prefix = "" if fold is None else f"f{fold}_"
    where = "" if fold is None else f"fold {fold}: "
    specs = []
    for n in cfg.real_per_class:
        subsets = {}
        for mode, faces in (("majority", real), ("soft", soft)):
            if faces is None:
                continue
            sub = real_subset(faces.labels, n, len(classes), cfg.subset_seed)
            subsets[mode] = sub, np.bincount(faces.labels[sub], minlength=len(classes))
        counts = subsets["majority"][1]
        if n is not None and (counts < n).any():
            short = [f"{c} ({k})" for c, k in zip(classes, counts) if k < n]
            log(f"note: {where}real data has fewer than {n} images of {', '.join(short)}; using all of them")
        for arm in arms:
            labels = cfg.labels_of(arm)
            sub, counts = subsets[labels]
            if arm.only:   # k x each named class's real count, none of the others
                want = np.asarray([math.floor(arm.k * n + 0.5) if c in arm.only else 0
                                   for c, n in zip(classes, counts)], np.int64)
            else:
                want = allocate(counts, math.floor(arm.k * len(sub) + 0.5), cfg.balance)
            for seed in range(arm.seeds or cfg.seeds):
                pool = pools[arm.source].labels if arm.source else np.zeros(0, np.int64)
                idx, dup = draw_per_class(pool, want, seed, classes, cfg.replace,
                                          where=f"{where}generated data for n={_size_name(n)} {arm.label}")
                specs.append(RunSpec(f"{prefix}n{_size_name(n)}_{arm.name}_s{seed}", n, arm, seed,
                                     sub if arm.real else np.zeros(0, np.int64), idx, dup, fold, labels))
    return specs


def _training_set(spec: RunSpec, real: ImageSet, pools: dict[str, ImageSet]) -> ImageSet:
    """The run's real faces (as its labels read them) and generated faces, in one set."""
    synth = pools[spec.arm.source] if spec.arm.source else _empty_pool(real)
    labels = np.concatenate([real.labels[spec.real_idx], synth.labels[spec.synth_idx]])
    targets = majority = None
    if real.targets is not None:   # labels=soft: the real faces' vote distributions, a generated face's one-hot
        targets = np.concatenate([real.targets[spec.real_idx],
                                  np.eye(len(real.classes), dtype=np.float32)[synth.labels[spec.synth_idx]]])
        majority = np.concatenate([real.majority[spec.real_idx], synth.labels[spec.synth_idx]])
    return ImageSet(np.concatenate([real.images[spec.real_idx], synth.images[spec.synth_idx]]), labels,
                    [real.paths[i] for i in spec.real_idx] + [synth.paths[i] for i in spec.synth_idx],
                    real.classes, targets=targets, protocol=real.protocol, majority=majority)


def _empty_pool(real: ImageSet) -> ImageSet:
    return ImageSet(real.images[:0], real.labels[:0], [], real.classes)


# ----------------------------------------------------------------------------- execution
_WORKER: dict = {}
#: A study run writes its resume state at most this often (and when it improves, and at its end):
#: an interrupted run then replays at most this much; writing it after each short epoch costs more.
STATE_EVERY_S = 60.0


def _init_worker(evals: dict, threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    _WORKER.update(evals=evals)


def _run_summary(run_dir: Path) -> dict:
    """The table's columns from a run's summary.json (none when it has no summary yet)."""
    try:
        s = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return {"best_epoch": s.get("best_epoch"), "epochs_run": s.get("epochs_run"), "train_seconds": s.get("seconds")}


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
    from ..evaluate import evaluate
    from ..train import TrainConfig, train

    if val is None or test is None:
        val, test = _WORKER["evals"][job.get("fold")]
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
            train(TrainConfig(**job["train"]), overwrite=not resumable, data=(train_set, val), keep_state=False,
                  figures=job.get("figures", False), state_every=STATE_EVERY_S)
        tested = run_dir / "last.safetensors" if job.get("checkpoint") == "last" else run_dir
        ev = evaluate(tested, job["test_path"], out_dir=run_dir / "eval-test", data=test,
                      precision=job["train"]["precision"], device=job["train"]["device"], progress=False,
                      figures=job.get("figures", False))
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
    arms = {a.name: json.loads(json.dumps(asdict(a))) for a in cfg.custom_arms()}
    if record.exists():
        try:
            saved_all = json.loads(record.read_text())
        except ValueError:
            saved_all = {}
        saved = saved_all.get("identity")
        if saved is not None:
            saved = _migrated(saved, out)
        if saved is not None and saved != ident:
            diff = sorted(k for k in set(saved) | set(ident) if saved.get(k) != ident.get(k))
            if diff == ["train"]:   # name the training settings that differ
                mine, theirs = ident["train"], saved["train"]
                diff = sorted(f"train.{k}" for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise FerkitError(f"{out} holds a study with different settings ({', '.join(diff)}); "
                              "use another --out or the same settings")
        before = {n: json.loads(json.dumps(a)) for n, a in (saved_all.get("arms") or {}).items()}
        changed = [n for n in arms if n in before and arm_definition(before[n]) != arm_definition(arms[n])]
        if changed:   # its finished runs would be counted under the new definition
            raise FerkitError(f"{out}: arm {changed[0]} was defined differently before; give the new definition "
                              "another name")
        arms = {**before, **arms}
    elif any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise FerkitError(f"{out} is not empty and is not a ferkit study; choose another --out")
    write_json(record, {"identity": ident, "config": asdict(cfg), "arms": arms})


def _with_new_settings(saved: dict) -> dict:
    """A saved identity whose ``train`` lacks a setting that TrainConfig gained since (``freeze_bn``,
    ...) gets that setting's default: the study's runs trained as the default does, since before the
    setting existed its behaviour was the only one. A study resumed with the setting changed from its
    default still differs, and says so."""
    from dataclasses import MISSING, fields

    from ..train import TrainConfig

    skip = {*PER_RUN_FIELDS, "device", "recipe", "epochs"}
    train = dict(saved["train"])
    for f in fields(TrainConfig):
        if f.name not in train and f.name not in skip and f.default is not MISSING:
            train[f.name] = json.loads(json.dumps(f.default))
    return {**saved, "train": train}


def _migrated(saved: dict, out: Path) -> dict:
    """A saved identity in today's form (see :func:`migrate_identity`); one line when an old one's
    training settings no longer resolve."""
    try:
        return migrate_identity(saved)
    except FerkitError as exc:
        raise FerkitError(f"{out}/study.json was written by an older ferkit (training settings at its top level) "
                          f"and they no longer make a training config ({exc}); use another --out") from None


def run_study(cfg: StudyConfig) -> StudyResult:
    """Run (or resume) every setting x real-data size x seed (x fold), then write table, plot and summary.
    While runs of other shards are missing the result lists them as ``pending`` (no table yet); with
    ``report_only`` that is a FerkitError."""
    out = Path(cfg.out)
    classes, parts, folds = _load_partitions(cfg, out)
    plans = [(part, plan_study(cfg, part.real, part.pools, part.fold, part.soft)) for part in parts]
    specs = [spec for _, ss in plans for spec in ss]
    _check_study_dir(out, cfg)   # before any training
    if folds is not None:
        data, plan = folds
        write_fold_plan(out / "folds", data, plan)
        log(f"{plan.k} folds grouped by {cfg.group_by!r}: " + "; ".join(describe(plan, data)))
    threads = max(1, (os.cpu_count() or 1) // cfg.jobs) if cfg.jobs > 1 else None
    jobs, rows, done = _prepare_runs(cfg, out, plans, classes, threads)
    if cfg.steps is not None:
        steps_plan = sorted({(r["n_train"], r["epochs"]) for r in rows.values()})
        log(f"--steps {cfg.steps}: " + ", ".join(f"{e} epochs of {n} images" for n, e in steps_plan))
    mine = set() if cfg.report_only else shard_runs([spec.run_id for spec in specs], parse_shard(cfg.shard))
    jobs = {k: v for k, v in jobs.items() if k in mine}
    if done:
        log(f"study {out}: {len(done)} of {len(specs)} runs already finished, skipping them")
    results = dict(done)
    _train_runs(cfg, out, jobs, parts, threads, results, len(mine))
    return _tabulate(cfg, out, rows, results, trained=len(jobs), skipped=len(done))


def _seen_per_epoch(cfg: StudyConfig, spec: RunSpec, labels: np.ndarray, classes) -> int:
    """How many faces one epoch of the run shows: its training faces (class indices ``labels``) and the
    copies its ``oversample`` setting adds, so that ``--steps`` gives an oversampling arm the same
    number of updates as the others, not more."""
    from ..train.config import parse_oversample

    over = spec.arm.train["oversample"] if "oversample" in spec.arm.train else cfg.base.oversample
    if not over:
        return len(labels)
    counts = np.bincount(labels, minlength=len(classes))
    return len(labels) + sum(n * int(counts[classes.index(c)]) for c, n in parse_oversample(over).items()
                             if c in classes)


def _run_row(cfg: StudyConfig, spec: RunSpec, seen: int | None = None) -> dict:
    """runs.csv's row of a run, before its results (``seen``: faces an epoch shows, default its faces)."""
    n_real, n_syn = len(spec.real_idx), len(spec.synth_idx)
    on_line = spec.arm.real and not spec.arm.augment and not spec.arm.custom
    return {"run_id": spec.run_id, "fold": "" if spec.fold is None else spec.fold,
            "real_per_class": _size_name(spec.real_per_class),
            "setting": spec.arm.name, "label": spec.arm.label, "source": spec.arm.source,
            "k": spec.arm.k if on_line else "",
            "gen_per_real": spec.arm.k, "seed": spec.seed, "n_real": n_real,
            "n_synthetic": n_syn, "n_train": n_real + n_syn, "duplicates": spec.duplicates,
            "epochs": cfg.run_epochs(seen or n_real + n_syn)}


def _prepare_runs(cfg: StudyConfig, out: Path, plans, classes, threads) -> tuple[dict, dict, dict]:
    """(jobs to train: run id -> (spec, partition, job), runs.csv rows, finished runs' results); every
    run's manifest written."""
    n_sources = len(plans[0][0].pools)
    jobs, rows, done = {}, {}, {}
    for part, part_specs in plans:
        for spec in part_specs:
            real, pools = part.real_for(spec.labels), part.pools
            run_dir = out / "runs" / spec.run_id
            manifest = out / "manifests" / f"{spec.run_id}.csv"
            hard = real.majority if real.majority is not None else real.labels   # as --oversample counts them
            labels = np.concatenate([hard[spec.real_idx], pools[spec.arm.source].labels[spec.synth_idx]
                                     if spec.arm.source else np.zeros(0, np.int64)])
            rows[spec.run_id] = _run_row(cfg, spec, _seen_per_epoch(cfg, spec, labels, classes))
            metrics = _finished(run_dir)
            if metrics is not None:
                done[spec.run_id] = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
                if manifest.exists():
                    continue
            synth = pools[spec.arm.source] if spec.arm.source else _empty_pool(real)
            n_real, n_syn = len(spec.real_idx), len(spec.synth_idx)
            write_manifest(manifest,
                           [real.paths[i] for i in spec.real_idx] + [synth.paths[i] for i in spec.synth_idx],
                           [classes[real.labels[i]] for i in spec.real_idx]
                           + [classes[synth.labels[i]] for i in spec.synth_idx],
                           ["real"] * n_real + [_manifest_source(spec.arm.source, n_sources)] * n_syn)
            if metrics is not None:
                continue
            train_cfg = cfg.train_config(spec.arm, train_dir=str(manifest), val_dir=part.val_path, out=str(run_dir),
                                         classes=classes, seed=spec.seed, num_threads=threads,
                                         epochs=rows[spec.run_id]["epochs"], progress=cfg.progress and cfg.jobs == 1)
            jobs[spec.run_id] = (spec, part, {"run_id": spec.run_id, "fold": part.fold, "test_path": part.test_path,
                                              "train": asdict(train_cfg), "figures": cfg.run_figures,
                                              "checkpoint": cfg.checkpoint})
    return jobs, rows, done


def _train_runs(cfg: StudyConfig, out: Path, jobs: dict, parts, threads, results: dict, n_mine: int) -> None:
    """Train and test ``jobs`` (in this process, or ``cfg.jobs`` worker processes) into ``results``."""
    bar = progress_bar(total=n_mine, initial=n_mine - len(jobs), desc="study", unit="run",
                       enabled=cfg.progress, position=0)
    try:
        if cfg.jobs == 1 or len(jobs) <= 1:
            for run_id, (spec, part, job) in jobs.items():
                bar.set_postfix_str(run_id)
                r = _execute(job, _training_set(spec, part.real_for(spec.labels), part.pools), part.val, part.test)
                results[run_id] = r
                bar.update(1)
        else:
            evals = {part.fold: (part.val, part.test) for part in parts}
            _run_parallel(cfg, jobs, evals, threads, out, results, bar)
    finally:
        bar.close()


def _tabulate(cfg: StudyConfig, out: Path, rows: dict, results: dict, trained: int, skipped: int) -> StudyResult:
    """The table, plot and summary once every run is finished (of every shard), else the pending runs."""
    for run_id in rows:
        rows[run_id].update(_run_summary(out / "runs" / run_id))
    # Shards run side by side: the runs another shard finished while this one trained are read from disk,
    # under a lock, so that the last shard to finish (even two finishing together) writes the table once.
    with output_lock(out, "study folder", wait=True):
        for run_id in rows:
            if run_id not in results and (metrics := _finished(out / "runs" / run_id)) is not None:
                results[run_id] = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
                rows[run_id].update(_run_summary(out / "runs" / run_id))
        for run_id, r in results.items():
            rows[run_id].update(accuracy=r["accuracy"], macro_f1=r["macro_f1"])
        missing = [run_id for run_id in rows if run_id not in results]
        if missing and cfg.report_only:
            raise FerkitError(f"{len(missing)} run(s) are not finished yet (e.g. {missing[0]}): run their "
                              "shards first")
        if missing:   # a shard finished its share, others are still to come: no table yet
            log(f"study {out}: {len(rows) - len(missing)} of {len(rows)} runs finished; the table is written once "
                f"every shard is done (re-run any shard, or --report)")
            return StudyResult(out, list(rows.values()), [], {}, {}, trained=trained, skipped=skipped,
                               pending=missing)
        result = summarise(out, list(rows.values()), cfg)
    result.trained, result.skipped = trained, skipped
    return result


def _manifest_source(name: str, n_sources: int) -> str:
    return "synthetic" if n_sources == 1 else name   # one source: the column reads as in earlier studies


def _run_parallel(cfg, jobs, evals, threads, out, results, bar) -> None:
    make_dir(out / "logs", "log folder")
    log(f"running {len(jobs)} runs in {cfg.jobs} processes ({threads} torch thread(s) each); "
        f"training logs in {out / 'logs'}")
    # multiprocessing's resource tracker (a process of its own, started with the pool) warns about
    # "leaked semaphores" when a worker was killed: chatter after ferkit's own line, kept out
    quiet = "ignore:resource_tracker:UserWarning"
    old_warnings = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(w for w in (old_warnings, quiet) if w)
    try:
        _run_pool(cfg, jobs, evals, threads, out, results, bar)
    finally:
        if old_warnings is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = old_warnings


def _run_pool(cfg, jobs, evals, threads, out, results, bar) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    pending = list(jobs.items())
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(evals, threads)) as pool:
        running = {}
        try:
            while pending or running:
                while pending and len(running) < cfg.jobs + 1:  # build training sets lazily
                    run_id, (spec, part, job) = pending.pop(0)
                    train_set = _training_set(spec, part.real_for(spec.labels), part.pools)
                    fut = pool.submit(_execute, job, train_set, None, None, str(out / "logs" / f"{run_id}.log"))
                    running[fut] = run_id
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    run_id = running.pop(fut)
                    try:
                        results[run_id] = fut.result()
                    except BrokenProcessPool:   # a worker died without a word: SIGKILL, the OOM killer
                        raise FerkitError(f"a study worker process died while training {run_id} (killed from "
                                          f"outside, e.g. by the system for lack of memory); finished runs are "
                                          f"kept: re-run the same command to resume (fewer --jobs need less "
                                          f"memory)") from None
                    bar.set_postfix_str(f"done {run_id}")
                    bar.update(1)
        except BaseException as exc:
            for fut in running:
                fut.cancel()
            if isinstance(exc, KeyboardInterrupt):   # Ctrl-C or a SIGTERM sent to this process alone: the
                for proc in list((getattr(pool, "_processes", None) or {}).values()):   # workers stop too,
                    proc.terminate()                 # as a terminal's Ctrl-C stops them (their runs resume)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
