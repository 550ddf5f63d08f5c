"""Grouped k-fold plans: no person (or any other group) in both the training and the test part.

A small lab dataset has few people, each in several classes, and near-identical frames of one
sequence; split by image, a model is tested on faces it trained on. Here every image gets a
group (a regular expression on its file name, the first capture group, e.g. ``^(S\\d+)_`` for
CK+'s subjects, or a column of a manifest CSV), the groups are dealt into K folds, each with
every class as far as the groups allow (scikit-learn's StratifiedGroupKFold), and for fold i:

- test: the groups of fold i;
- validation (early stopping, choice of the best epoch): about ``val_fraction`` of the other
  groups, drawn by group and class in the same way, so selection never sees a test person;
- train: the remaining groups.

The folds may also be given as a CSV of ``group,fold`` rows (fold 1..K), e.g. the
``folds/groups.csv`` a study wrote, to rerun exactly the same split.

Example::

    from ferkit.experiments.folds import load_folds, write_fold_plan
    data, plan = load_folds("ckplus48/", 5, r"^(S\\d+)_", image_size=48)
    write_fold_plan("folds/", data, plan)    # folds/fold1/{train,val,test}.csv, folds/groups.csv
"""
from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import ImageSet, load_dataset
from ..errors import FerkitError
from ..files import atomic_path, csv_uncell, csv_writer, make_dir, refuse_non_regular

#: Columns of the fold manifests (readable as training data: path and class, plus the group).
FOLD_MANIFEST_FIELDS = ("path", "class", "source", "group")
DEFAULT_VAL_FRACTION = 0.2


@dataclass
class Fold:
    """One fold: indices of the dataset's images in its training, validation and test parts."""

    index: int            # 1-based
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class FoldPlan:
    """K folds over a dataset, and the group of every image."""

    groups: list[str]                 # one per image of the dataset
    folds: list[Fold]
    group_by: str
    assigned_from: str = ""           # a group,fold CSV the folds came from ("" = drawn)

    @property
    def k(self) -> int:
        return len(self.folds)

    def test_fold(self) -> dict[str, int]:
        """group -> the fold whose test part holds it."""
        return {self.groups[i]: f.index for f in self.folds for i in f.test}

    def parts(self, fold: Fold) -> dict[str, set[str]]:
        return {name: {self.groups[i] for i in getattr(fold, name)} for name in ("train", "val", "test")}


# ----------------------------------------------------------------------------- groups
def parse_folds(spec) -> int | Path:
    """``5`` or ``"5"`` -> 5 (at least 2); a path to a ``group,fold`` CSV -> that path."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        k = spec
    else:
        text = str(spec).strip()
        if not text.isdigit():
            if text.lower().endswith(".csv") or os.path.exists(text):
                path = Path(text)
                if not path.is_file():
                    raise FerkitError(f"--folds {text}: no such group,fold CSV file")
                return path
            raise FerkitError(f"--folds {text!r}: give a number of folds (e.g. 5) or a CSV of group,fold rows")
        k = int(text)
    if k < 2:
        raise FerkitError(f"--folds must be at least 2 (got {k})")
    return k


def _manifest_columns(source) -> tuple[list[str], list[dict]] | None:
    path = Path(source)
    if not (path.is_file() and path.suffix.lower() == ".csv"):
        return None
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [{k: csv_uncell(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FerkitError(f"cannot read manifest {path}: {exc}") from None
    return (list(rows[0]) if rows else []), rows


#: Seconds that matching --group-by against all the file names may take. A pattern with nested
#: repetition (``^(a+)+$`` on a name of 40 a's) backtracks exponentially in Python's ``re``, which
#: neither stops nor hears Ctrl-C while it runs; so the matching runs in a child process, stopped at
#: this limit (or at Ctrl-C). Ordinary patterns match 100,000 names in well under a second.
GROUP_BY_SECONDS = 5.0

_MATCH_NAMES = ("import json, re, sys\n"
                "job = json.load(sys.stdin)\n"
                "rx = re.compile(job['pattern'])\n"
                "out = []\n"
                "for name in job['names']:\n"
                "    m = rx.search(name)\n"
                "    out.append('' if m is None else (m.group(1) if rx.groups else m.group(0)) or '')\n"
                "json.dump(out, sys.stdout)\n")


def _match_groups(pattern: str, names: list[str], seconds: float = GROUP_BY_SECONDS) -> list[str]:
    """The first capture group (or the whole match; "" for none) of ``pattern`` in each name,
    computed in a child process that is killed after ``seconds`` or on Ctrl-C."""
    import json
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-I", "-c", _MATCH_NAMES], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, encoding="utf-8")
    try:
        out, _ = proc.communicate(json.dumps({"pattern": pattern, "names": names}), timeout=seconds)
    except subprocess.TimeoutExpired:
        raise FerkitError(f"--group-by '{pattern}' took more than {seconds:g} s to match {len(names)} file names "
                          "and was stopped: a pattern with nested repetition such as (a+)+ backtracks "
                          "exponentially; write it without (e.g. '^(S\\d+)_')") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        groups = json.loads(out) if proc.returncode == 0 else None
    except ValueError:
        groups = None
    if not isinstance(groups, list) or len(groups) != len(names):
        raise FerkitError(f"--group-by '{pattern}': matching the file names failed (exit {proc.returncode})")
    return groups


def image_groups(paths: list[str], group_by: str, source=None) -> list[str]:
    """The group of every image: ``group_by`` is a column of the manifest ``source`` (when it is
    one), else a regular expression searched in each file name (its first capture group, or the
    whole match when it has none). Raises a one-line FerkitError when it matches no file, misses
    some, or puts every image in one group."""
    group_by = str(group_by or "")
    if not group_by.strip():
        raise FerkitError("--group-by is empty: give a regular expression on the file name (e.g. '^(S\\d+)_') "
                          "or a manifest column")
    manifest = _manifest_columns(source) if source is not None else None
    if manifest is not None and group_by in manifest[0]:
        base = Path(source).parent
        by_path = {}
        for row in manifest[1]:
            p = Path(row["path"])
            by_path[os.path.abspath(p if p.is_absolute() else base / p)] = (row.get(group_by) or "").strip()
        groups = [by_path.get(os.path.abspath(p), "") for p in paths]
        empty = [p for p, g in zip(paths, groups) if not g]
        if empty:
            raise FerkitError(f"--group-by {group_by}: {len(empty)} of {len(paths)} rows of {source} have no "
                              f"{group_by} (e.g. {Path(empty[0]).name})")
        what = f"column {group_by}"
    else:
        try:
            re.compile(group_by)   # its error, in one line; matching runs in a child (_match_groups)
        except re.error as exc:
            what = f"neither a column of {source} nor" if manifest is not None else "not"
            raise FerkitError(f"--group-by '{group_by}' is {what} a valid regular expression ({exc})") from None
        groups = _match_groups(group_by, [Path(p).name for p in paths])
        unmatched = [p for p, g in zip(paths, groups) if not g]
        if len(unmatched) == len(paths):
            raise FerkitError(f"--group-by '{group_by}' matches no file name (e.g. {Path(paths[0]).name}); give a "
                              "regular expression whose first group is the person, e.g. '^(S\\d+)_'"
                              + (", or a manifest column" if manifest is not None else ""))
        if unmatched:
            raise FerkitError(f"--group-by '{group_by}' matches no group in {len(unmatched)} of {len(paths)} file "
                              f"names (e.g. {Path(unmatched[0]).name}); every face needs a group")
        what = f"'{group_by}'"
    distinct = sorted(set(groups))
    if len(distinct) == 1:
        raise FerkitError(f"--group-by {what} puts all {len(paths)} faces in one group ({distinct[0]}); folds need "
                          "several groups (a regex's first capture group is the group)")
    return groups


def _read_assignment(path: Path) -> dict[str, int]:
    refuse_non_regular(path, "--folds")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FerkitError(f"cannot read --folds {path}: {exc}") from None
    if not rows or not {"group", "fold"} <= set(rows[0]):
        raise FerkitError(f"--folds {path} needs a header with 'group' and 'fold' columns and at least one row")
    out = {}
    for i, row in enumerate(rows, start=2):
        fold = (row["fold"] or "").strip()
        if not fold.isdigit() or int(fold) < 1:
            raise FerkitError(f"--folds {path} line {i}: fold {row['fold']!r} is not a whole number >= 1")
        out[csv_uncell((row["group"] or "").strip())] = int(fold)
    return out


# ----------------------------------------------------------------------------- plans
def _stratified_group_split(labels: np.ndarray, groups: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """K parts (indices) with disjoint groups, each with the class balance of the whole as far as the
    groups allow (scikit-learn's StratifiedGroupKFold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "the least populated class has only N members": checked below
        return [np.sort(test) for _, test in splitter.split(np.zeros(len(labels)), labels, groups)]


def plan_folds(labels, groups: list[str], folds, classes, seed: int = 0,
               val_fraction: float = DEFAULT_VAL_FRACTION, group_by: str = "") -> FoldPlan:
    """K group-disjoint folds of a labelled dataset (``folds``: K, or a ``group,fold`` CSV path), each
    with a validation part drawn by group from its training folds.

    Raises a one-line FerkitError for fewer groups than folds, or a fold whose test or training
    part lacks a class.
    """
    labels = np.asarray(labels, np.int64)
    garr = np.asarray(groups, dtype=object)
    distinct = sorted(set(groups))
    spec = parse_folds(folds)
    if not (0 < float(val_fraction) <= 0.5):
        raise FerkitError(f"validation fraction must be in (0, 0.5] (got {val_fraction})")
    assigned_from = ""
    if isinstance(spec, Path):
        table = _read_assignment(spec)
        missing = [g for g in distinct if g not in table]
        if missing:
            raise FerkitError(f"--folds {spec} has no fold for group {missing[0]}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        k = max(table[g] for g in distinct)
        fold_of = np.asarray([table[g] for g in groups])
        empty = [i for i in range(1, k + 1) if not (fold_of == i).any()]
        if k < 2 or empty:
            raise FerkitError(f"--folds {spec}: folds must be numbered 1..K (K >= 2) and each must hold a group "
                              f"of this data" + (f" (fold {empty[0]} holds none)" if empty else ""))
        tests = [np.flatnonzero(fold_of == i) for i in range(1, k + 1)]
        assigned_from = str(spec)
    else:
        k = spec
        if len(distinct) < k:
            raise FerkitError(f"--folds {k} needs at least {k} groups, but --group-by {group_by or '?'} finds "
                              f"{len(distinct)} ({', '.join(distinct[:6])}{' ...' if len(distinct) > 6 else ''})")
        tests = _stratified_group_split(labels, garr, k, seed)
    n_val_splits = max(2, int(round(1 / float(val_fraction))))
    out = []
    for i, test in enumerate(tests, start=1):
        rest = np.setdiff1d(np.arange(len(labels)), test)
        _need_every_class(labels[test], classes, f"fold {i}'s test part", k, len(distinct))
        rest_groups = sorted(set(garr[rest]))
        if len(rest_groups) < 2:
            raise FerkitError(f"fold {i}'s training part has {len(rest_groups)} group: a validation part cannot be "
                              "drawn from it; use more groups or fewer --folds")
        parts = _stratified_group_split(labels[rest], garr[rest], min(n_val_splits, len(rest_groups)), seed + i)
        val = rest[parts[0]]
        train = np.setdiff1d(rest, val)
        _need_every_class(labels[train], classes, f"fold {i}'s training part (without its validation groups)", k,
                          len(distinct))
        out.append(Fold(i, train, val, test))
    return FoldPlan(list(groups), out, group_by, assigned_from)


def _need_every_class(labels: np.ndarray, classes, where: str, k: int, n_groups: int) -> None:
    counts = np.bincount(labels, minlength=len(classes))
    absent = [c for c, n in zip(classes, counts) if n == 0]
    if absent:
        raise FerkitError(f"{where} has no {', '.join(absent)} faces ({k} folds of {n_groups} groups): use fewer "
                          "--folds, more groups, or leave that class out with --classes")


def load_folds(source, folds, group_by: str, classes=None, image_size: int = 48, seed: int = 0,
               val_fraction: float = DEFAULT_VAL_FRACTION, progress: bool = False) -> tuple[ImageSet, FoldPlan]:
    """Decode ``source`` (class folders or manifest) and plan its folds: what ``ferkit study --folds``
    does first, so a script can prepare per-fold data (e.g. GAN edits of each fold's training
    faces) that the study then finds under ``--synthetic NAME=dir/fold{fold}``."""
    data = load_dataset(source, classes, image_size, role="real data", progress=progress)
    groups = image_groups(data.paths, group_by, source)
    return data, plan_folds(data.labels, groups, folds, data.classes, seed, val_fraction, group_by)


def subset(data: ImageSet, idx: np.ndarray) -> ImageSet:
    """The images ``idx`` of ``data`` as an ImageSet of their own."""
    return ImageSet(data.images[idx], data.labels[idx], [data.paths[i] for i in idx], data.classes)


def fold_manifest_paths(out, fold: int) -> dict[str, Path]:
    base = Path(out) / f"fold{fold}"
    return {name: base / f"{name}.csv" for name in ("train", "val", "test")}


def write_fold_plan(out, data: ImageSet, plan: FoldPlan) -> dict[int, dict[str, Path]]:
    """Write ``out/fold<i>/{train,val,test}.csv`` (manifests with a group column, readable as data by
    every ferkit command) and ``out/groups.csv`` (group,fold: pass it as ``--folds`` to rerun the
    same split). Returns fold -> part -> manifest path."""
    out = Path(out)
    make_dir(out, "fold folder")
    written = {}
    for fold in plan.folds:
        paths = fold_manifest_paths(out, fold.index)
        make_dir(paths["train"].parent, "fold folder")
        for name, path in paths.items():
            idx = getattr(fold, name)
            _write_rows(path, FOLD_MANIFEST_FIELDS,
                        ([os.path.abspath(data.paths[i]), data.classes[data.labels[i]], "real", plan.groups[i]]
                         for i in idx))
        written[fold.index] = paths
    test_fold = plan.test_fold()
    _write_rows(out / "groups.csv", ("group", "fold"), ([g, test_fold[g]] for g in sorted(test_fold)))
    return written


def _write_rows(path: Path, header, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv_writer(fh)      # group names are text from file names: escaped for spreadsheets
        w.writerow(header)
        w.writerows(rows)


def describe(plan: FoldPlan, data: ImageSet) -> list[str]:
    """One line per fold: groups and images of its parts."""
    lines = []
    for f in plan.folds:
        parts = plan.parts(f)
        lines.append(f"fold {f.index}: train {len(parts['train'])} groups / {len(f.train)} faces, "
                     f"val {len(parts['val'])} / {len(f.val)}, test {len(parts['test'])} / {len(f.test)}")
    return lines
