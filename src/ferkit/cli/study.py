"""`ferkit study`: how much do generated faces help?"""
from __future__ import annotations

import argparse

from .options import config_from_args, open_fraction, positive_int, random_seed
from .train import TRAIN_OPTIONS, add_train_options

#: The arm syntax, for --arm's help and docs/study.md.
ARM_HELP = ("an extra arm: NAME:KEY=VALUE,... where the keys are a data mix (source=NAME or synthetic=NAME and "
            "k=K: real + K x that generated source, K defaulting to 1; only=CLASS,...: generated faces for those "
            "classes only, K x each one's real count) and any `ferkit train` setting this arm changes (e.g. "
            "oversample=disgusted=5,fearful=5, labels=soft, init=fer2013-vgg, lr=0.01, augment, "
            "class-weights). A value may hold commas: a part that names no key continues it. E.g. "
            "over5:oversample=disgusted=5,fearful=5; soft:labels=soft; gan+over:synthetic=gan,k=1,only=disgusted,"
            "oversample=disgusted=5; ft:init=fer2013-vgg. Repeatable")


def add_study(sub):
    p = sub.add_parser("study", help="how much do generated faces help? real vs real + k x generated, with error bars",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train on real only (k=0), real + augmentation, generated only and real + k x "
                                   "generated for every k, per real-data size and seed; evaluate on the real test "
                                   "data; tabulate mean +- sd and the difference to real only with a 95% CI.",
                       epilog="--out receives runs/<run>/ (one run folder each), manifests/, runs.csv, table.csv,\n"
                              "table.md, accuracy_vs_k.png and summary.md. Re-running the same command skips\n"
                              "finished runs and resumes an interrupted one.\n\n"
                              "Grouped cross-validation (a small dataset with few people): give one dataset with\n"
                              "--real, --folds K and --group-by instead of --real-train/--val/--test:\n"
                              "  ferkit study --real ckplus/ --folds 5 --group-by '^(S\\d+)_' \\\n"
                              "      --synthetic gan=edits/fold{fold} ...\n"
                              "No group is in two of a fold's train/val/test parts; folds/fold<i>/*.csv and\n"
                              "folds/groups.csv record the split, and every table row is a mean over folds and seeds.")
    p.add_argument("--real-train", default=None, help="real training data (class folders or manifest)")
    p.add_argument("--val", default=None, help="validation data for early stopping (real, disjoint from training)")
    p.add_argument("--test", default=None, help="real test data")
    p.add_argument("--real", default=None,
                   help="with --folds: the one real dataset (class folders or manifest) that is split into folds")
    p.add_argument("--folds", default=None, metavar="K|CSV",
                   help="grouped cross-validation: K folds with no group in two parts (or a CSV of group,fold rows, "
                        "e.g. a study's folds/groups.csv); each setting is trained per fold and seed")
    p.add_argument("--group-by", default=None, metavar="REGEX|COLUMN",
                   help="the group (person) of each face: a regular expression on the file name (its first capture "
                        "group, e.g. '^(S\\d+)_') or a column of the --real manifest")
    p.add_argument("--val-fraction", type=open_fraction, default=0.2,
                   help="with --folds: validation groups as a fraction of each fold's training groups (default 0.2)")
    p.add_argument("--fold-seed", type=random_seed, default=0,
                   help="with --folds: which groups form each fold (default 0)")
    p.add_argument("--arm", action="append", default=None, metavar="NAME:KEY=VALUE,...", help=ARM_HELP)
    p.add_argument("--synthetic", action="append", default=None, metavar="[NAME=]DIR",
                   help="generated data; repeat for several sources. NAME=DIR gives each named source its own arms "
                        "(real + k x NAME, NAME only), so generators are compared in one table and plot; folders "
                        "without a name are pooled as one source. With --folds, {fold} in DIR is the fold's number "
                        "(e.g. edits of each fold's own training faces). Needed unless --ratios 0 "
                        "--no-synthetic-arm and no arm draws generated faces")
    p.add_argument("--ratios", default="0,0.5,1,2,3,5,8", help="k values, comma-separated (default 0,0.5,1,2,3,5,8)")
    p.add_argument("--seeds", default="3", help="number of seeds per setting (default 3)")
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--real-per-class", default="all",
                   help="real-data sizes: images per class, comma-separated, 'all' for all (default all)")
    from ..train.config import RECIPES

    p.add_argument("--recipe", choices=tuple(RECIPES), default="reference",
                   help="training recipe of every run (default reference; see `ferkit train --help`). "
                        "Augmentation is on only in the real + augmentation arm and the arms that set augment, "
                        "unless --augment turns it on for every run")
    p.add_argument("--model-arg", action="append", metavar="NAME=VALUE", default=None,
                   help="architecture argument, repeatable (see `ferkit models`)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="instead of --epochs: about N optimiser steps for every run (its epochs = N / batches "
                        "per epoch, in runs.csv), so real + k x generated does not also get k+1 times the "
                        "updates of real only; separates what the images add from what longer training adds")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="the weights each run is tested with: best (the epoch --monitor picked; default) or last "
                        "(nothing selected on validation)")
    p.add_argument("--classes", default=None, help="comma-separated classes (default: reference six in the real data)")
    p.add_argument("--jobs", default="1", help="runs in parallel processes (torch threads are divided; default 1)")
    p.add_argument("--balance", action="store_true", help="equalise classes of the mixed sets")
    p.add_argument("--replace", action="store_true", help="sample generated images with replacement when short")
    p.add_argument("--synthetic-only-ratio", default=None,
                   help="size of the generated-only set relative to the real set (default: the largest k, >= 1)")
    p.add_argument("--no-augment-arm", action="store_true", help="skip the real + augmentation baseline")
    p.add_argument("--no-synthetic-arm", action="store_true", help="skip the generated-only setting")
    p.add_argument("--subset-seed", type=random_seed, default=0, help="seed choosing the real subsets (default 0)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only the I-th of N shares of the runs (1-based), for N machines or a job array "
                        "sharing --out; the table appears once every share is done")
    p.add_argument("--report", action="store_true",
                   help="train nothing: assemble table, plot and summary from the finished runs")
    p.add_argument("--run-figures", action="store_true",
                   help="draw each run's curves.png, confusion matrix and reliability diagram (off: the study's "
                        "many short runs skip them; the table and plot are always drawn)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    # the base training settings of every run: `ferkit train`'s options (an --arm may change them) but
    # those the study sets per run
    add_train_options(p, {f"training ({title})": names for title, names in TRAIN_OPTIONS.items()},
                      skip=("seed", "classes", "num_threads"))
    p.set_defaults(func=_cmd_study)


def _cmd_study(a) -> int:
    from ..experiments import StudyConfig, run_study
    from ..models import parse_model_args

    train = {name: getattr(a, name) for names in TRAIN_OPTIONS.values() for name in names
             if name not in ("seed", "classes", "num_threads") and getattr(a, name) is not None}
    if a.model_arg:
        train["model_args"] = parse_model_args(a.model_arg)
    cfg = config_from_args(StudyConfig, a, arms=a.arm or [], synthetic=a.synthetic or [],
                           augment_arm=not a.no_augment_arm, synthetic_arm=not a.no_synthetic_arm,
                           report_only=a.report, progress=not a.no_progress,
                           train=train)
    print(run_study(cfg).text(a.shard))
    return 0
