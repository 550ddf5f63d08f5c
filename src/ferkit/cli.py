"""The ``ferkit`` command line: a thin layer that parses arguments and calls the Python API.

Every command is one ``_cmd_*`` function plus one ``_add_*`` parser builder, listed in COMMANDS.
User errors (FerkitError) end as one line on stderr and exit status 1; Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .choices import DEVICE_HELP, LABEL_MODES, PRECISIONS, TTA_MODES
from .errors import FerkitError, Interrupted
from .labels import EXPRESSIONS
from .train.config import MONITORS

MONITOR_CHOICES = tuple(MONITORS)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


MAX_SEED = 2 ** 32 - 1


def _seed(text: str) -> int:
    """A random seed: a whole number 0 .. 2^32-1 (what every generator ferkit seeds accepts)."""
    value = int(text) if text.strip().isdigit() else None
    if value is None or value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must be a whole number from 0 to {MAX_SEED}, got {text!r}")
    return value


def _open_fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    value = _finite_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _add_face_options(p) -> None:
    """Face finding and cropping options shared by `predict` and `evaluate --detect`."""
    p.add_argument("--detector", choices=("haar", "dlib"), default="haar",
                   help="face detector: haar (OpenCV's bundled cascade, default) or dlib (HOG; needs "
                        "pip install 'ferkit[dlib]')")
    p.add_argument("--no-align", action="store_true",
                   help="do not turn face crops so the eyes are level (OpenCV's bundled eye cascades)")
    p.add_argument("--fallback", choices=("none", "whole"), default="none",
                   help="a photo where no face is found (after padded, upscaled and turned retries): none "
                        "(default: no row, listed) or whole (classify the whole image)")


# ----------------------------------------------------------------------------- train
#: TrainConfig fields offered as `ferkit train` options, by group, with their help text. Type,
#: choices and the recipes' values come from ferkit.train.config, so a new option is one line here.
TRAIN_OPTIONS = {
    "model and data": {
        "arch": "architecture (see `ferkit models`)",
        "init": "start from these weights instead of random ones (fine-tuning): a checkpoint, run folder or "
                "bundled model name such as fer2013-vgg. Architecture, its arguments, image size, input "
                "scaling and (unless given) classes come from it; a class it knows keeps its output weights",
        "image_size": "square input side in pixels",
        "classes": "comma-separated classes, in model order ('all7' = the reference six + neutral; "
                   "default: the reference six the data has)",
        "input_mean": "model input = (pixel/255 - mean) / std",
        "input_std": "see --input-mean",
    },
    "schedule of the run": {
        "epochs": "maximum epochs (a larger value continues a finished run)",
        "batch_size": "images per optimiser step",
        "patience": "stop after N epochs without a better --monitor; 0 = never",
        "monitor": "validation metric that picks best.safetensors (and drives early stopping)",
        "seed": "random seed (same seed, same run)",
        "train_limit": "images per epoch (a random subset each epoch; default all)",
        "val_limit": "validation images (a fixed random subset; default all)",
    },
    "optimiser": {
        "optimizer": "adam (the reference's), adamw, or sgd (Nesterov momentum)",
        "lr": "learning rate (peak rate for cosine/onecycle)",
        "momentum": "sgd momentum",
        "weight_decay": "weight decay (L2 for adam/sgd, decoupled for adamw)",
        "schedule": "time_decay (reference), cosine (after --warmup-epochs), onecycle, plateau (x0.5), constant",
        "lr_decay": "time_decay: lr / (1 + decay x step)",
        "warmup_epochs": "cosine: linear warm-up epochs",
        "plateau_patience": "plateau: epochs without improvement before the rate halves",
        "grad_clip": "clip the gradient norm to this; 0 = off",
        "ema": "keep an exponential moving average of the weights with this decay (e.g. 0.999) and "
               "validate/save it; 0 = off",
    },
    "loss": {
        "label_smoothing": "label smoothing of the cross-entropy",
        "class_weights": "weight the loss by inverse class frequency (for rare classes such as disgust)",
        "labels": "vote-label data (a FER+ folder with label.csv, or a manifest with one vote column per class): "
                  "majority = the FER+ protocol (single votes dropped, faces without a majority dropped, hard "
                  "labels); soft = train against the vote distribution (keeps the rare expressions' votes). "
                  "Validation always uses the majority protocol",
        "teacher": "distil from this classifier (run folder, checkpoint or bundled name; comma-separated = an "
                   "ensemble averaged in probability): its softened outputs on each augmented batch join the loss",
        "distill_alpha": "weight of the teacher's term: loss = (1-a) CE(labels) + a T^2 CE(student/T, teacher/T)",
        "distill_temperature": "temperature T that softens teacher and student outputs in that term",
    },
    "augmentation (in torch, on whole batches)": {
        "augment": "random flip, rotation, shift, zoom and aspect change",
        "rotate": "max rotation, degrees",
        "shift": "max shift, fraction of the half-side",
        "zoom": "max zoom in/out, fraction",
        "aspect": "max aspect-ratio change, fraction",
        "erase": "probability of random erasing per image",
        "mixup": "mixup Beta alpha (e.g. 0.2); 0 = off",
        "cutmix": "cutmix Beta alpha (e.g. 1.0); 0 = off; with --mixup one of the two per batch",
    },
    "machine": {
        "precision": "auto: bf16/fp16 autocast where the CPU/GPU supports it natively, else fp32",
        "device": DEVICE_HELP,
        "num_threads": "torch CPU threads (default: torch's choice)",
        "strict": "fail on undecodable images instead of skipping them",
    },
}


def _train_option(group, f, text: str) -> None:
    """One `ferkit train` option from a TrainConfig field; its default is None (= the recipe's value)."""
    from .train.config import RECIPES

    values = {name: recipe.get(f.name, f.default) for name, recipe in RECIPES.items()}
    shown = "" if all(v is None for v in values.values()) else ", ".join(f"{name} {_show(v)}"
                                                                       for name, v in values.items())
    _config_option(group, f, text, shown)


def _config_option(group, f, text: str, shown: str) -> None:
    """One option from a config dataclass field (type and choices from the field); default None
    means "the config's (or recipe's) value", which ``shown`` spells out in the help."""
    from .train.config import MONITORS, OPTIMIZERS, SCHEDULES

    flag = "--" + f.name.replace("_", "-")
    text = f"{text} ({shown})" if shown else text
    kinds = {"int": _positive_int, "int | None": _positive_int, "float": _finite_float}
    choices = {"monitor": tuple(MONITORS), "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
               "precision": PRECISIONS, "labels": LABEL_MODES}.get(f.name)
    if f.type == "bool":
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
    elif f.name in ("seed", "patience"):
        group.add_argument(flag, type=_seed if f.name == "seed" else _nonneg_int, default=None,
                           help=text)
    else:
        group.add_argument(flag, type=kinds.get(f.type, str), choices=choices, default=None,
                           help=text)


def _show(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "default" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _add_train(sub):
    from .train.config import RECIPES, config_fields

    p = sub.add_parser("train", help="train an expression classifier on class folders",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a classifier on a folder with one sub-folder per class (or a manifest "
                                   "CSV from `ferkit mix`). A recipe sets every option below; any option you give "
                                   "overrides it, and the run's config.json records the resolved values.\n\n"
                                   "  ferkit train --train-dir data/train --val-dir data/val --out runs/ref\n"
                                   "  ferkit train --recipe fer2013 --train-dir fer/train --val-dir fer/validation "
                                   "--classes all7 --out runs/fer",
                       epilog="The run folder (--out) receives:\n"
                              "  config.json        resolved config, classes, image size, data counts, skipped files\n"
                              "  history.csv        per-epoch train/val loss and accuracy, learning rate, seconds\n"
                              "  curves.png         training curves (accuracy and loss, train vs validation)\n"
                              "  best.safetensors   weights of the best epoch by --monitor (+ JSON record)\n"
                              "  last.safetensors   weights after the last epoch\n"
                              "  summary.json       best epoch, its validation metrics, training time\n"
                              "  state/             resume state\n"
                              "Re-running the same command resumes an interrupted run; a larger --epochs\n"
                              "continues a finished one. Progress bars show only on a terminal.")
    p.add_argument("--train-dir", required=True, help="training data: class folders or manifest CSV")
    p.add_argument("--val-dir", required=True, help="validation data (same classes)")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.add_argument("--recipe", choices=tuple(RECIPES), default="reference",
                   help="reference: the reference CNN and optimiser (default); fer2013: the recipe of the "
                        "bundled model (VGG-style CNN, SGD + cosine, label smoothing, augmentation)")
    p.add_argument("--model-arg", action="append", metavar="NAME=VALUE", default=None,
                   help="architecture argument, repeatable (e.g. --model-arg width=64 --model-arg depths=2,2,2,2); "
                        "`ferkit models` lists each architecture's arguments")
    by_name = {f.name: f for f in config_fields()}
    for title, options in TRAIN_OPTIONS.items():
        group = p.add_argument_group(title)
        for name, text in options.items():
            _train_option(group, by_name[name], text)
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, even on a terminal")
    p.set_defaults(func=_cmd_train)


def train_config_from_args(a, **fixed):
    """The TrainConfig that `ferkit train` arguments describe: the recipe, then every given option."""
    from .models import parse_model_args
    from .train import resolve_config

    given = {name: getattr(a, name) for options in TRAIN_OPTIONS.values() for name in options}
    if a.model_arg:
        given["model_args"] = parse_model_args(a.model_arg)
        base = {} if given.get("arch") or given.get("init") else _recipe_model_args(a.recipe)
        given["model_args"] = {**base, **given["model_args"]}
    return resolve_config(a.recipe, train_dir=a.train_dir, val_dir=a.val_dir, out=a.out,
                          progress=not a.no_progress, **given, **fixed)


def _recipe_model_args(recipe: str) -> dict:
    from .train.config import RECIPES

    return dict(RECIPES[recipe].get("model_args", {}))


def _cmd_train(a) -> int:
    from .train import train
    from .train.distributed import from_env

    cfg = train_config_from_args(a)
    r = train(cfg, overwrite=a.overwrite)
    if not from_env().main:     # torchrun: rank 0 reports
        return 0
    print(f"best epoch {r.best_epoch}: val_loss {r.best_val_loss:.4f}, val_acc {r.best_val_acc:.4f} "
          f"({r.epochs_run} epochs, {r.seconds:.0f}s of training; this invocation {r.wall_seconds:.0f}s)")
    print(f"run folder: {r.run_dir}  (best.safetensors, last.safetensors, history.csv, curves.png)")
    return 0


# ----------------------------------------------------------------------------- evaluate
def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="evaluate a trained model on a labelled folder",
                       description="Evaluate a checkpoint on labelled data. Prints 'accuracy: X' and writes "
                                   "metrics.json, report.txt, confusion_matrix.png and predictions.csv.")
    p.add_argument("model", help="run folder (uses best.safetensors), checkpoint file, or a bundled model's name "
                                 "(see `ferkit models`)")
    p.add_argument("--test-dir", required=True, help="labelled data: class folders or manifest CSV")
    p.add_argument("--out", default=None, help="report folder (default: <run folder>/eval-<test folder name>; "
                                               "for a bundled model ./eval-<model>-<test folder name>)")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--shared-classes", action="store_true",
                   help="if the test data lacks some of the model's classes, evaluate on the shared ones")
    p.add_argument("--strict", action="store_true", help="fail on undecodable images instead of skipping them")
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: none; flip (average with the mirror image); crops (5 shifted "
                        "crops x mirror); the metrics record which (default none)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("whole pipeline (--detect)")
    g.add_argument("--detect", action="store_true",
                   help="score detection + crop + classification on photos, as `predict` runs them: the largest "
                        "face per photo; a photo without a face counts as wrong and is listed (reports go to "
                        "eval-detect-<test folder name>)")
    _add_face_options(g)
    g.add_argument("--min-face", type=float, default=0.1,
                   help="smallest face side as a fraction of the photo's shorter side (default 0.1)")
    g.add_argument("--cascade", default="alt2", help="OpenCV Haar cascade: alt2, default, alt, or a path to a "
                                                     "cascade XML (default: alt2)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate_detect(a) -> int:
    from .predict.pipeline import evaluate_pipeline, result_text

    if not 0 < a.min_face < 1:
        raise FerkitError(f"--min-face must be between 0 and 1, got {a.min_face}")
    r = evaluate_pipeline(a.model, a.test_dir, a.out, shared_only=a.shared_classes, batch_size=a.batch_size,
                          device=a.device, tta=a.tta, progress=not a.no_progress, align=not a.no_align,
                          fallback=a.fallback, detector=a.detector, min_face=a.min_face, cascade=a.cascade)
    print(r.report_text)
    print(result_text(r))
    print(f"reports: {r.out_dir}")
    print(f"accuracy: {r.accuracy:.4f}")
    return 0


def _cmd_evaluate(a) -> int:
    from .evaluate import evaluate

    if a.detect:
        return _cmd_evaluate_detect(a)
    r = evaluate(a.model, a.test_dir, a.out, batch_size=a.batch_size, shared_only=a.shared_classes,
                 strict=a.strict, precision=a.precision, device=a.device, progress=not a.no_progress, tta=a.tta)
    from .evaluate import calibration_line

    print(r.report_text)
    print(f"macro_f1: {r.macro_f1:.4f}")
    print(calibration_line(r))
    print(f"reports: {r.out_dir}")
    print(f"accuracy: {r.accuracy:.4f}")
    return 0


# ----------------------------------------------------------------------------- calibrate
def _add_calibrate(sub):
    p = sub.add_parser("calibrate", help="fit a model's temperature so its probabilities match its accuracy",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Temperature scaling: fit one number T on labelled validation data (minimising "
                                   "the negative log-likelihood) and write a copy of the checkpoint whose record "
                                   "carries it; evaluate, predict, the Recognizer and export then report "
                                   "softmax(logits / T). Predicted labels and accuracy do not change. Prints NLL "
                                   "and ECE (15 bins) before and after.\n\n"
                                   "  ferkit calibrate runs/exp1 --val-dir data/val\n"
                                   "  ferkit calibrate fer2013-vgg --val-dir fer/validation --out vgg.cal.safetensors",
                       epilog="The original checkpoint is never modified: the calibrated copy goes to --out, by\n"
                              "default <name>.calibrated.safetensors beside it (for a bundled model, in the\n"
                              "current folder). Use validation data the model was not trained on.")
    p.add_argument("model", help="run folder (uses best.safetensors), checkpoint file, or a bundled model's name")
    p.add_argument("--val-dir", default=None, help="labelled validation data (class folders or manifest CSV) with "
                                                   "the model's classes")
    p.add_argument("--out", default=None, help="calibrated checkpoint to write (default: <name>.calibrated."
                                               "safetensors beside the input)")
    p.add_argument("--temperature", type=float, default=None,
                   help="set this temperature instead of fitting one (> 0; 1 = uncalibrated); with --val-dir "
                        "the figures are still measured")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--strict", action="store_true", help="fail on undecodable images instead of skipping them")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="(default fp32)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(a) -> int:
    from .train.calibrate import calibrate_checkpoint, describe

    r = calibrate_checkpoint(a.model, a.val_dir, a.out, temperature=a.temperature, overwrite=a.overwrite,
                             batch_size=a.batch_size, precision=a.precision, device=a.device, strict=a.strict,
                             progress=not a.no_progress)
    print("\n".join(describe(r)))
    return 0


# ----------------------------------------------------------------------------- synth
def _intensity(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI such as 0.5,1.0, got {text!r}") from None
    if not 0 <= lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"need 0 <= LO <= HI <= 1, got {text!r}")
    return lo, hi


def _add_synth(sub):
    p = sub.add_parser("synth", help="generate expression faces: procedural (built-in) or edited by a trained GAN",
                       description="faces/preview: the procedural face generator (random identities, expressions "
                                   "built from FACS action units, pose/lighting/noise variation; no weights). edit: "
                                   "real faces moved to other expressions by a GAN from `ferkit gan train`.")
    ss = p.add_subparsers(dest="synth_command", metavar="SUBCOMMAND")
    for name, helptext in (("faces", "write a dataset: one folder per class plus metadata.csv"),
                           ("preview", "write a contact sheet PNG (rows = classes, columns = identities)")):
        q = ss.add_parser(name, help=helptext, description=helptext)
        q.add_argument("--out", required=True,
                       help="output folder (faces) or PNG file (preview)")
        q.add_argument("--classes", default=None,
                       help=f"comma-separated classes (default: {','.join(EXPRESSIONS[:7])})")
        q.add_argument("--size", type=_positive_int, default=64, help="image side in pixels (default 64)")
        q.add_argument("--seed", type=_seed, default=0, help="random seed; same seed, same images (default 0)")
        q.add_argument("--color", action="store_true", help="colour images instead of grayscale")
        q.add_argument("--intensity", type=_intensity, default=(0.5, 1.0), metavar="LO,HI",
                       help="expression (action unit) intensity range; lower is harder (default 0.5,1.0)")
        if name == "faces":
            q.add_argument("--per-class", type=int, required=True, help="faces per class")
            q.add_argument("--identities", type=int, default=None,
                           help="draw faces from K identities (each shows several expressions); "
                                "default: every face a new identity")
            q.add_argument("--identity-offset", type=_nonneg_int, default=0,
                           help="first identity id (use disjoint ranges for identity-disjoint splits)")
            q.add_argument("--occluders", action="store_true", help="occlude ~30%% of faces (hand, bar, blob)")
            q.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all cores)")
            q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
            q.add_argument("--no-progress", action="store_true")
        else:
            q.add_argument("--per-class", type=_positive_int, default=8, help="faces per row (default 8)")
        q.set_defaults(func=_cmd_synth_faces if name == "faces" else _cmd_synth_preview)
    e = ss.add_parser("edit", help="write real faces moved to each target expression by a trained GAN",
                      description="Each written face is a real source face of another expression, edited by the "
                                  "generator to the target class. Layout of `synth faces` (<class>/*.png plus "
                                  "metadata.csv: file, class, source file and class, generator and its SHA-256, "
                                  "seed), so `mix` and `study` take it unchanged. Same seed, same faces.")
    e.add_argument("gan_run", help="GAN run folder (`ferkit gan train --out`), generator checkpoint, or a bundled "
                                   "generator's name (see `ferkit models`)")
    e.add_argument("--source", required=True, help="real faces to edit: class folders or manifest CSV")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--per-class", type=_positive_int, required=True, help="faces per target class")
    e.add_argument("--classes", default=None, help="target classes (default: every class the generator knows)")
    e.add_argument("--from-classes", default=None,
                   help="source classes to edit, others ignored (default: every class of --source; each must be "
                        "one the generator knows), e.g. the six of a seven-class FER2013 folder")
    e.add_argument("--seed", type=_seed, default=0, help="which source faces are drawn (default 0)")
    e.add_argument("--batch-size", type=_positive_int, default=64, help="faces per generator call (default 64)")
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty --out dataset")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_cmd_synth_edit)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _cmd_synth_edit(a) -> int:
    from .synth.gan import edit_faces

    out = edit_faces(a.gan_run, a.source, a.out, a.per_class, seed=a.seed, classes=a.classes,
                     batch_size=a.batch_size, device=a.device, overwrite=a.overwrite, progress=not a.no_progress,
                     from_classes=a.from_classes)
    print(f"edited faces written to {out} (metadata: {Path(out) / 'metadata.csv'})")
    return 0


def _cmd_synth_faces(a) -> int:
    from .synth import generate_faces

    out = generate_faces(a.out, a.per_class, classes=a.classes, size=a.size, seed=a.seed, color=a.color,
                         identities=a.identities, identity_offset=a.identity_offset, intensity=a.intensity,
                         workers=a.workers, overwrite=a.overwrite, progress=not a.no_progress,
                         occluders=a.occluders)
    print(f"faces written to {out} (metadata: {Path(out) / 'metadata.csv'})")
    return 0


def _cmd_synth_preview(a) -> int:
    from .synth import write_preview

    out = write_preview(a.out, classes=a.classes, per_class=a.per_class, size=a.size, seed=a.seed,
                        color=a.color, intensity=a.intensity)
    print(f"preview written to {out}")
    return 0


# ----------------------------------------------------------------------------- demo
def _add_demo(sub):
    from .demo import DemoConfig

    d = DemoConfig()
    p = sub.add_parser("demo", help="built-in demo: generate faces, train the seed CNN, evaluate, read a photo",
                       description="Generate identity-disjoint train/val/test faces with `ferkit synth`, train "
                                   "the reference (seed) CNN, evaluate it on the test identities, then apply the "
                                   "default bundled model to a real photo (matplotlib's sample portrait). A few "
                                   "minutes on a 2-core CPU. Writes <out>/data, <out>/run (checkpoint, curves), "
                                   "<out>/run/eval-test (report, confusion matrix, predictions), <out>/photo "
                                   "(predictions.csv, annotated/) and "
                                   "<out>/demo.json. Re-running reuses data and a finished run.")
    p.add_argument("--out", default=d.out, help=f"output folder (default: {d.out})")
    p.add_argument("--per-class", type=_positive_int, default=d.per_class,
                   help=f"training faces per class; val gets 1/4, test 1/2 (default {d.per_class})")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs, help=f"maximum epochs (default {d.epochs})")
    p.add_argument("--arch", default=d.arch, help=f"architecture (default {d.arch})")
    p.add_argument("--seed", type=_seed, default=d.seed)
    p.add_argument("--overwrite", action="store_true", help="regenerate data and retrain")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(a) -> int:
    from .demo import DemoConfig, run_demo
    from .labels import REFERENCE_CLASSES

    s = run_demo(DemoConfig(out=a.out, per_class=a.per_class, epochs=a.epochs, arch=a.arch, seed=a.seed,
                            progress=not a.no_progress), overwrite=a.overwrite)
    paths = s["paths"]
    print(f"demo finished in {s['seconds']['total']:.0f}s "
          f"(data {s['seconds']['data']:.0f}s, training {s['seconds']['train']:.0f}s)")
    for key in ("data", "checkpoint", "curves", "reports", "confusion_matrix", "photo"):
        if key in paths:
            print(f"  {key:17s} {paths[key]}")
    print(f"test accuracy on unseen identities: {s['test_accuracy']:.4f} (macro-F1 {s['test_macro_f1']:.4f}, "
          f"{s['test_images']} faces, chance {1 / len(REFERENCE_CLASSES):.3f})")
    if s.get("photo"):
        read = ", ".join(f"{f['label']} {f['confidence']:.2f}" for f in s["photo"]["faces"]) or "no face found"
        print(f"bundled {s['photo']['model']} model on a real photo ({Path(s['photo']['photo']).name}, "
              f"matplotlib's sample): {read}")
    print(f"accuracy: {s['test_accuracy']:.4f}")
    return 0


# ----------------------------------------------------------------------------- predict
def _add_predict(sub):
    p = sub.add_parser("predict", help="find faces in photos, folders, videos or a webcam and classify them",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Detect faces (OpenCV's bundled Haar cascade, offline) and classify their "
                                   "expression. INPUT is any mix of image files, folders (searched recursively) "
                                   "and video files (.mp4 .avi .mov .mkv .webm .m4v). With no model, the bundled "
                                   "model (FER+, eight classes) is used (see `ferkit models`):\n\n"
                                   "  ferkit predict photo.jpg --annotate\n"
                                   "  ferkit predict runs/exp1 photos/ clip.mp4\n"
                                   "  ferkit predict model.onnx photos/ --format json",
                       epilog="Output (--out DIR, default ./predictions):\n"
                              "  predictions.csv    one row per face: source, frame, time_s, track (empty for\n"
                              "                     images), x, y, w, h (box), label, confidence, p_<class>...\n"
                              "  predictions.json   with --format json: a list of objects with the same fields\n"
                              "                     (box as [x, y, w, h])\n"
                              "                     Both are written as predictions.partial.csv/.jsonl while the run\n"
                              "                     goes (flushed after every batch) and renamed when it completes;\n"
                              "                     after Ctrl-C the .partial file stays and summary.json says\n"
                              "                     complete: false\n"
                              "  summary.json       counts, images without faces, skipped inputs, complete\n"
                              "  videos/<stem>/     per video: summary.json (per track: first/last time, share of\n"
                              "                     time per expression, dominant expression) and timeline.png\n"
                              "  annotated/         with --annotate: <name> copies of images, <stem>.mp4 videos\n"
                              "Video rows carry a track id (the same face across frames) and probabilities\n"
                              "smoothed per track (--smooth); a frame without a face is one row with an empty label.\n"
                              "--out - prints the predictions to stdout instead (the summary goes to stderr).\n"
                              "Unreadable files are skipped and listed; the exit status is 1 only when nothing\n"
                              "could be processed or the model/output is unusable, 130 after Ctrl-C.")
    p.add_argument("inputs", nargs="*", metavar="[MODEL] INPUT",
                   help="optionally first a model (run folder, .safetensors, .onnx, or a bundled model's name), "
                        "then image files, folders, video files")
    p.add_argument("--model", default=None, help="the model, as an option instead of the first word")
    p.add_argument("--out", default="predictions", help="output folder (default: ./predictions); '-' = stdout")
    p.add_argument("--format", choices=("csv", "json"), default="csv", help="predictions file format (default csv)")
    p.add_argument("--annotate", action="store_true", help="write copies with boxes and labels to <out>/annotated/")
    p.add_argument("--no-detect", action="store_true",
                   help="no face detection: each image (or video frame) is one already-cropped face")
    p.add_argument("--every", type=_positive_int, default=1, help="video: classify every N-th frame (default 1)")
    p.add_argument("--camera", type=_nonneg_int, default=None, metavar="IDX",
                   help="also read webcam IDX until Ctrl-C (or --max-frames)")
    p.add_argument("--max-frames", type=_positive_int, default=None, help="camera: stop after N frames")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                   help="auto (default: onnxruntime for .onnx files and for a checkpoint with its export beside "
                        "it, <stem>.onnx from `ferkit export`, when onnxruntime is installed; else PyTorch), torch, "
                        "or onnx")
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: none (default), flip, crops (10 views; slower)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="faces per classification batch (default 64)")
    p.add_argument("--min-face", type=float, default=0.1,
                   help="smallest face side as a fraction of the image's shorter side (default 0.1)")
    p.add_argument("--cascade", default="alt2",
                   help="OpenCV Haar cascade: alt2, default, alt, or a path to a cascade XML (default: alt2)")
    _add_face_options(p)
    p.add_argument("--largest", action="store_true", help="keep only the largest face of each image or frame")
    p.add_argument("--smooth", type=_seconds, default=None, metavar="SECONDS",
                   help="video and webcam: smooth each track's probabilities over this many seconds "
                        "(exponential; default 0.5; 0 = raw per-frame values). Photos are never smoothed")
    p.add_argument("--device", default="auto", help=f"torch backend: {DEVICE_HELP}")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(a) -> int:
    from .predict import predict_inputs

    if not 0 < a.min_face < 1:
        raise FerkitError(f"--min-face must be between 0 and 1, got {a.min_face}")
    from .bundled import is_model_path

    model, inputs = a.model, list(a.inputs)
    if model is None and inputs and is_model_path(inputs[0]):
        model, inputs = inputs[0], inputs[1:]
    to_stdout = a.out == "-"
    s = predict_inputs(model, inputs, None if to_stdout else a.out, a.format, annotate=a.annotate, tta=a.tta,
                       detect=not a.no_detect, every=a.every, camera=a.camera, backend=a.backend,
                       batch_size=a.batch_size, device=a.device, progress=not a.no_progress,
                       max_frames=a.max_frames, min_face=a.min_face, cascade=a.cascade, smooth=a.smooth,
                       align=not a.no_align, fallback=a.fallback, largest=a.largest, detector=a.detector)
    print(s.text(), file=sys.stderr if to_stdout else sys.stdout)
    return 0


# ----------------------------------------------------------------------------- export
def _add_export(sub):
    p = sub.add_parser("export", help="export a trained model to ONNX",
                       description="Write an ONNX model: input 'input' float32 (batch, 1, S, S) = gray face / 255, "
                                   "outputs 'logits' and 'probabilities'; dynamic batch axis. Class names, image "
                                   "size and preprocessing are stored in the file's metadata (key 'ferkit', JSON). "
                                   "Checks onnxruntime against PyTorch after writing.")
    p.add_argument("model", help="run folder (uses best.safetensors), checkpoint file, or a bundled model's name")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default onnx)")
    p.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    p.add_argument("--opset", type=_positive_int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--int8", action="store_true",
                   help="write an int8 model (onnxruntime static quantisation, per-channel weights), calibrated on "
                        "faces, and report its agreement with the fp32 graph on other faces")
    p.add_argument("--calib-dir", default=None, metavar="DIR",
                   help="--int8: folder of face images to calibrate on (searched recursively; default: the run's "
                        "validation folder when it exists, else procedurally generated faces)")
    p.add_argument("--calib-faces", type=_positive_int, default=None,
                   help="--int8: faces to calibrate on (default 300; as many again check the agreement)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(a) -> int:
    from .export import export_onnx

    if not a.int8 and (a.calib_dir is not None or a.calib_faces is not None):
        raise FerkitError("--calib-dir and --calib-faces go with --int8")
    if a.int8:
        from .quantize import DEFAULT_CALIB_FACES, export_int8

        info = export_int8(a.model, a.out, calib_dir=a.calib_dir, calib_faces=a.calib_faces or DEFAULT_CALIB_FACES,
                           opset=a.opset)
        c = info["check"]
        print(f"wrote {info['path']} (int8, {info['int8_bytes'] / 1e6:.2f} MB; fp32 {info['fp32_bytes'] / 1e6:.2f} MB; "
              f"{info['arch']}, {info['image_size']}x{info['image_size']}, classes: {', '.join(info['classes'])})")
        print(f"int8 ranges from {info['calibration']['n']} of {info['calibration']['source']}")
        print(f"int8 vs fp32: same top class on {c['top1_agreement']:.1%} of {c['n']} "
              + ("other faces (not used for calibration)" if c["held_out"] else "faces (the calibration faces: too "
                 "few to hold any out)")
              + f"; largest probability difference {c['max_probability_difference']:.3f}")
        return 0
    info = export_onnx(a.model, a.out, opset=a.opset)
    diff = info.get("max_abs_diff")
    print(f"wrote {info['path']} ({info['arch']}, {info['image_size']}x{info['image_size']}, "
          f"classes: {', '.join(info['classes'])})")
    if diff is not None:
        print(f"onnxruntime vs PyTorch max |logit difference| on random inputs: {diff:.2e}")
    return 0


# ----------------------------------------------------------------------------- mix / study
def _add_mix(sub):
    p = sub.add_parser("mix", help="build a real + k x generated training manifest (no copying)",
                       description="Write a manifest CSV (path,class,source) of the real images plus K x (number "
                                   "of real images) generated images, drawn per class so the real class balance is "
                                   "kept (or --balance to equalise classes). `ferkit train --train-dir` accepts it.")
    p.add_argument("--real", required=True, help="real data: class folders or manifest CSV")
    p.add_argument("--synthetic", required=True, action="append",
                   help="generated data (class folders or manifest); repeat for several sources")
    p.add_argument("--ratio", required=True, help="K: generated images per real image (e.g. 2 or 0.5)")
    p.add_argument("--out", required=True, help="manifest to write (.csv; written atomically)")
    p.add_argument("--balance", action="store_true", help="equalise the classes of the mixed set")
    p.add_argument("--replace", action="store_true",
                   help="sample generated images with replacement when a class has too few")
    p.add_argument("--seed", type=_seed, default=0, help="which generated images are drawn (default 0)")
    p.add_argument("--classes", default=None, help="comma-separated classes (default: those of the real data)")
    p.set_defaults(func=_cmd_mix)


def _cmd_mix(a) -> int:
    from .experiments import build_mix

    r = build_mix(a.real, a.synthetic, a.ratio, a.out, balance=a.balance, replace=a.replace, seed=a.seed,
                  classes=a.classes)
    for c in r.classes:
        print(f"{c:>10}: {r.real_counts[c]:6d} real + {r.synthetic_counts[c]:6d} generated")
    if r.duplicates:
        print(f"note: sampled with replacement: {r.duplicates} generated image(s) are repeats")
    print(f"manifest: {r.manifest}  ({r.n_real} real + {r.n_synthetic} generated, k = {r.ratio:g})")
    return 0


#: help of the TrainConfig options that other commands offer too
TRAIN_HELP = {name: text for options in TRAIN_OPTIONS.values() for name, text in options.items()}


def _add_study(sub):
    from .train.config import config_fields

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
    p.add_argument("--val-fraction", type=_open_fraction, default=0.2,
                   help="with --folds: validation groups as a fraction of each fold's training groups (default 0.2)")
    p.add_argument("--fold-seed", type=_seed, default=0, help="with --folds: which groups form each fold (default 0)")
    p.add_argument("--arm", action="append", default=None, metavar="NAME:KEY=VALUE,...",
                   help="an extra named arm; keys: init=MODEL (fine-tune from that model), source=NAME and k=K "
                        "(real + K x that source), augment, lr=LR. E.g. ft:init=fer2013-vgg and "
                        "ft-gan2:init=fer2013-vgg,source=gan,k=2; repeatable")
    p.add_argument("--synthetic", required=True, action="append", metavar="[NAME=]DIR",
                   help="generated data; repeat for several sources. NAME=DIR gives each named source its own arms "
                        "(real + k x NAME, NAME only), so generators are compared in one table and plot; folders "
                        "without a name are pooled as one source. With --folds, {fold} in DIR is the fold's number "
                        "(e.g. edits of each fold's own training faces)")
    p.add_argument("--ratios", default="0,0.5,1,2,3,5,8", help="k values, comma-separated (default 0,0.5,1,2,3,5,8)")
    p.add_argument("--seeds", default="3", help="number of seeds per setting (default 3)")
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--real-per-class", default="all",
                   help="real-data sizes: images per class, comma-separated, 'all' for all (default all)")
    from .train.config import RECIPES

    p.add_argument("--recipe", choices=tuple(RECIPES), default="reference",
                   help="training recipe of every run (default reference; see `ferkit train --help`). "
                        "Augmentation is on only in the real + augmentation arm")
    p.add_argument("--model-arg", action="append", metavar="NAME=VALUE", default=None,
                   help="architecture argument, repeatable (see `ferkit models`)")
    by_name = {f.name: f for f in config_fields()}
    for name in ("arch", "batch_size", "lr", "patience", "monitor", "image_size"):
        _train_option(p, by_name[name], TRAIN_HELP[name])
    length = p.add_mutually_exclusive_group()
    _train_option(length, by_name["epochs"], "maximum epochs of every run")
    length.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                        help="instead of --epochs: about N optimiser steps for every run (its epochs = N / batches "
                             "per epoch, in runs.csv), so real + k x generated does not also get k+1 times the "
                             "updates of real only; separates what the images add from what longer training adds")
    p.add_argument("--classes", default=None, help="comma-separated classes (default: reference six in the real data)")
    p.add_argument("--jobs", default="1", help="runs in parallel processes (torch threads are divided; default 1)")
    p.add_argument("--balance", action="store_true", help="equalise classes of the mixed sets")
    p.add_argument("--replace", action="store_true", help="sample generated images with replacement when short")
    p.add_argument("--synthetic-only-ratio", default=None,
                   help="size of the generated-only set relative to the real set (default: the largest k, >= 1)")
    p.add_argument("--no-augment-arm", action="store_true", help="skip the real + augmentation baseline")
    p.add_argument("--no-synthetic-arm", action="store_true", help="skip the generated-only setting")
    p.add_argument("--subset-seed", type=_seed, default=0, help="seed choosing the real subsets (default 0)")
    _train_option(p, by_name["precision"], TRAIN_HELP["precision"])
    _train_option(p, by_name["device"], TRAIN_HELP["device"])
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only the I-th of N shares of the runs (1-based), for N machines or a job array "
                        "sharing --out; the table appears once every share is done")
    p.add_argument("--report", action="store_true",
                   help="train nothing: assemble table, plot and summary from the finished runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_study)


def _cmd_study(a) -> int:
    from .experiments import StudyConfig, run_study
    from .models import parse_model_args

    options = {"model_args": parse_model_args(a.model_arg)} if a.model_arg else {}
    cfg = StudyConfig(real_train=a.real_train, val=a.val, test=a.test, synthetic=a.synthetic, out=a.out,
                      real=a.real, folds=a.folds, group_by=a.group_by, val_fraction=a.val_fraction,
                      fold_seed=a.fold_seed, arms=a.arm or [],
                      ratios=a.ratios, seeds=a.seeds, real_per_class=a.real_per_class, recipe=a.recipe, arch=a.arch,
                      epochs=a.epochs, steps=a.steps, batch_size=a.batch_size, patience=a.patience,
                      monitor=a.monitor, lr=a.lr, image_size=a.image_size, train_options=options, classes=a.classes,
                      balance=a.balance, replace=a.replace,
                      synthetic_only_ratio=a.synthetic_only_ratio, augment_arm=not a.no_augment_arm,
                      synthetic_arm=not a.no_synthetic_arm, subset_seed=a.subset_seed, jobs=a.jobs,
                      precision=a.precision, device=a.device, progress=not a.no_progress, shard=a.shard,
                      report_only=a.report)
    r = run_study(cfg)
    if r.pending:
        if a.report:
            raise FerkitError(f"{len(r.pending)} run(s) are not finished yet (e.g. {r.pending[0]}): run their "
                              "shards first")
        print(f"shard {a.shard or '1/1'}: its runs are done ({r.trained} trained, {r.skipped} already finished); "
              f"{len(r.pending)} run(s) of other shards remain")
        return 0
    print(r.files["table_md"].read_text(), end="")
    for line in r.summary:
        print(line)
    print(f"runs: {r.trained} trained, {r.skipped} already finished; results in {r.out} "
          f"(summary.md, table.csv, table.md, accuracy_vs_k.png)")
    return 0


# ----------------------------------------------------------------------------- gan
#: GanConfig fields offered as `ferkit gan train` options (type and default from the dataclass).
GAN_OPTIONS = {
    "classes": "comma-separated classes, in model order (default: the reference six the data has)",
    "image_size": "face side in pixels (divisible by 16: 48 or 64)",
    "iterations": "discriminator + generator steps (a larger value continues a finished run)",
    "batch_size": "faces per step",
    "g_lr": "generator learning rate (Adam)",
    "d_lr": "discriminator learning rate (Adam)",
    "decay_from": "learning rates fall linearly to 0 from this fraction of the iterations",
    "lambda_cls": "weight of the expression-classification losses",
    "lambda_rec": "weight of the cycle-reconstruction loss (keeps the identity)",
    "lambda_id": "weight of the identity loss, L1 between G(x, own class) and x (0 = off)",
    "guide": "frozen classifier (run folder, checkpoint or bundled name such as fer2013-vgg) whose cross-entropy "
             "on G(x, t) towards t joins the generator's loss; it must know every GAN class (default: none)",
    "lambda_guide": "weight of the guide's cross-entropy",
    "guide_views": "augmented views (random flip and shift) of each edit that the guide reads",
    "mask": "attention-mask generator (GANimation): output = mask * change + (1 - mask) * input",
    "lambda_mask": "weight of the mask's mean (sparsity: change little)",
    "lambda_tv": "weight of the mask's total variation (smoothness)",
    "g_width": "generator base width",
    "g_res_blocks": "generator residual blocks",
    "d_width": "discriminator base width",
    "d_layers": "discriminator stride-2 layers",
    "flip": "random horizontal flips of the real faces",
    "held_out": "real faces kept out of training and shown in the sample grids",
    "log_every": "iterations per history row",
    "sample_every": "iterations per sample grid (samples/iter_NNNNNN.png)",
    "checkpoint_every": "iterations per saved state and generator.safetensors (a multiple of --log-every)",
    "seed": "random seed (same seed, same run)",
    "precision": "auto: bf16/fp16 autocast where the CPU/GPU supports it natively, else fp32",
    "device": DEVICE_HELP,
    "num_threads": "torch CPU threads",
    "strict": "fail on undecodable images instead of skipping them",
}


def _add_gan(sub):
    from dataclasses import MISSING, fields

    from .train.gan import GanConfig

    p = sub.add_parser("gan", help="train and evaluate an expression-editing GAN (StarGAN-style) on real faces",
                       description="A conditional GAN that moves a real face to a target expression. Train it on "
                                   "your faces, write edited faces with `ferkit synth edit`, measure them with "
                                   "`ferkit gan evaluate`. Nothing is downloaded.")
    ss = p.add_subparsers(dest="gan_command", metavar="SUBCOMMAND")
    t = ss.add_parser("train", help="train the generator and discriminator",
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      description="  ferkit gan train --data real/ --out runs/gan --iterations 20000\n\n"
                                  "Hinge loss with spectral norm in the discriminator, expression classification, "
                                  "cycle reconstruction (see ferkit.train.gan).",
                      epilog="The run folder (--out) receives config.json, history.csv, curves.png,\n"
                             "samples/iter_NNNNNN.png (rows: held-out real faces; columns: the input, then each\n"
                             "target expression), generator.safetensors, summary.json and state/. Re-running the\n"
                             "same command resumes an interrupted run; a larger --iterations continues a finished one.")
    t.add_argument("--data", required=True, help="real faces: class folders or manifest CSV")
    t.add_argument("--out", required=True, help="run folder to create (or resume)")
    by_name = {f.name: f for f in fields(GanConfig)}
    for name, text in GAN_OPTIONS.items():
        f = by_name[name]
        default = f.default if f.default is not MISSING else None
        if name == "seed":
            t.add_argument("--seed", type=_seed, default=None, help=f"{text} (default {default})")
        else:
            _config_option(t, f, text, "" if default is None else f"default {_show(default)}")
    t.add_argument("--overwrite", action="store_true", help="replace what --out holds and start over")
    t.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    t.set_defaults(func=_cmd_gan_train)
    e = ss.add_parser("evaluate", help="expression accuracy, KID and identity of a generator's faces",
                      description="Moves real faces to every other expression and reports, overall and per target "
                                  "class, (a) how often a classifier trained on real faces, the judge (the bundled "
                                  "model by default), reads the target and how often still the source face's "
                                  "expression, beside its accuracy on the real faces; (b) KID between generated and "
                                  "real faces on the judge's penultimate features; (c) L1 between a face and its cycle "
                                  "reconstruction and its own-class edit G(x, y). A judge that is the generator's "
                                  "--guide is refused. Writes quality.json and quality.png.")
    e.add_argument("gan_run", help="GAN run folder, generator checkpoint or bundled generator name")
    e.add_argument("--real", required=True, help="real faces (class folders or manifest), ideally not trained on")
    e.add_argument("--judge", "--classifier", dest="judge", default=None,
                   help="the classifier that reads the edits: run folder, checkpoint or bundled name (default: the "
                        "bundled model); not the generator's --guide (refused), ideally one trained on other data")
    e.add_argument("--per-class", type=_positive_int, default=200, help="generated faces per class (default 200)")
    e.add_argument("--classes", default=None,
                   help="classes of --real to use, others ignored (default: all; each must be one the generator knows)")
    e.add_argument("--out", default=None, help="report folder (default: <run>/quality)")
    e.add_argument("--seed", type=_seed, default=0)
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_cmd_gan_evaluate)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _cmd_gan_train(a) -> int:
    from .train.distributed import from_env
    from .train.gan import GanConfig, train_gan

    given = {name: getattr(a, name) for name in GAN_OPTIONS if getattr(a, name) is not None}
    r = train_gan(GanConfig(data=a.data, out=a.out, progress=not a.no_progress, **given), overwrite=a.overwrite)
    if not from_env().main:     # torchrun: rank 0 reports
        return 0
    last = r.history[-1] if r.history else {}
    print(f"{r.iterations} iterations, {r.seconds:.0f}s of training; last losses: "
          + ", ".join(f"{k} {last[k]:.3f}" for k in ("d_adv", "g_adv", "g_cls", "g_rec") if k in last))
    print(f"run folder: {r.run_dir}  (generator.safetensors, samples/, history.csv, curves.png)")
    return 0


def _cmd_gan_evaluate(a) -> int:
    from .synth.quality import evaluate_gan

    r = evaluate_gan(a.gan_run, a.real, a.judge, a.out, a.per_class, a.seed, a.device, not a.no_progress,
                     classes=a.classes)
    acc, k, ident = r["expression_accuracy"], r["kid"], r["identity"]
    print(f"judge: {r['judge']['path']}")
    print(f"expression accuracy: generated {acc['generated']:.4f} (real {acc['real']:.4f}); generated faces read "
          f"as their source face's expression: {acc['generated_read_as_source']:.4f}")
    print(f"KID generated vs real: {k['mean']:.4f} +- {k['std']:.4f} "
          f"(real vs real: {r['kid_real_halves']['mean']:.4f})")
    print(f"identity: cycle L1 {ident['cycle_l1']:.4f}, edit L1 {ident['edit_l1']:.4f}, "
          f"identity L1 {ident['identity_l1']:.4f}")
    print(f"{'target class':>12}  {'edits':>5}  {'target read':>11}  {'source kept':>11}  {'KID':>7}  {'cycle L1':>8}  "
          f"{'identity L1':>11}")

    def num(v, width, fmt=".4f"):
        return f"{'-' if v is None else format(v, fmt):>{width}}"
    for c, row in r["per_class"].items():
        print(f"{c:>12}  {row['edits']:>5}  {num(row['target_read'], 11, '.3f')}  {num(row['source_kept'], 11, '.3f')}"
              f"  {num((row['kid'] or {}).get('mean'), 7)}  {num(row['cycle_l1'], 8)}  {num(row['identity_l1'], 11)}")
    return 0


# ----------------------------------------------------------------------------- serve
def _add_serve(sub):
    p = sub.add_parser("serve", help="a local web page and HTTP API (needs ferkit[serve])",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Serve a model over HTTP on this machine: a page at / (drop a photo, or use the "
                                   "webcam), POST /v1/predict (an image -> faces as JSON), GET /v1/models, GET "
                                   "/healthz, WebSocket /v1/stream, API docs at /docs. Needs "
                                   "pip install 'ferkit[serve]'.\n\n"
                                   "  ferkit serve                       # the bundled model on http://127.0.0.1:8000\n"
                                   "  ferkit serve runs/exp1 --port 9000\n"
                                   "  ferkit serve --host 0.0.0.0 --token \"$(openssl rand -hex 16)\"",
                       epilog="Safe by default: it listens on 127.0.0.1 only; --host 0.0.0.0 opens it to the "
                              "network (then\nuse --token). Requests above --max-mb get 413, non-images 415, "
                              "broken images 400, a full\nqueue 503 (Retry-After), a slow request 504. No "
                              "request can make the server read a file or URL.")
    p.add_argument("model", nargs="?", default=None,
                   help="run folder, .safetensors, .onnx, or a bundled model's name (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_nonneg_int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--token", default=os.environ.get("FERKIT_TOKEN") or None,
                   help="require 'Authorization: Bearer TOKEN' on /v1/* (default: $FERKIT_TOKEN, else none)")
    p.add_argument("--cors", action="append", default=None, metavar="ORIGIN",
                   help="allow this web origin (e.g. http://localhost:3000) to call the API from a browser; "
                        "repeatable; default none")
    p.add_argument("--max-mb", type=_finite_float, default=10.0, help="largest request in MB (default 10)")
    p.add_argument("--max-queue", type=_positive_int, default=64,
                   help="requests in progress at once; more get 503 (default 64)")
    p.add_argument("--timeout", type=_finite_float, default=30.0, help="seconds per request before 504 (default 30)")
    p.add_argument("--max-batch", type=_positive_int, default=64, help="faces per model call (default 64)")
    p.add_argument("--batch-wait-ms", type=_finite_float, default=5.0,
                   help="how long a request waits for others to share its model call (default 5)")
    p.add_argument("--workers", type=_nonneg_int, default=0,
                   help="threads decoding images and finding faces (default 0: one per core, at most 4)")
    p.add_argument("--tta", choices=TTA_MODES, default="none", help="default test-time augmentation (default none)")
    p.add_argument("--min-face", type=float, default=0.1,
                   help="default smallest face side as a fraction of the image's shorter side (default 0.1)")
    p.add_argument("--cascade", default="alt2", help="OpenCV Haar cascade: alt2, default, alt (default alt2)")
    _add_face_options(p)
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto", help="as for `ferkit predict`")
    p.add_argument("--device", default="auto", help=f"torch backend: {DEVICE_HELP}")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info",
                   help="server log (default info: one line per request)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(a) -> int:
    from .serve.server import is_loopback, require_serve_dependencies

    require_serve_dependencies()
    from .serve import ServeConfig, serve

    config = ServeConfig(token=a.token, cors=tuple(a.cors or ()), max_mb=a.max_mb, max_queue=a.max_queue,
                         timeout_s=a.timeout, max_batch=a.max_batch, max_wait_ms=a.batch_wait_ms, workers=a.workers,
                         tta=a.tta, min_face=a.min_face)

    def ready(url: str) -> None:
        print(f"ferkit serve: {url}/  (API docs {url}/docs; Ctrl-C stops)", flush=True)
        if not is_loopback(a.host) and not a.token:
            print("ferkit serve: warning: listening beyond this machine without --token: anyone who can reach "
                  "it can use it", file=sys.stderr, flush=True)

    serve(a.model, a.host, a.port, config, backend=a.backend, device=a.device, cascade=a.cascade,
          log_level=a.log_level, on_ready=ready, detector=a.detector, align=not a.no_align, fallback=a.fallback)
    return 0


# ----------------------------------------------------------------------------- models
def _add_models(sub):
    p = sub.add_parser("models", help="list the architectures and the bundled pretrained models",
                       description="Registered architectures (for `ferkit train --arch`, with their arguments "
                                   "for --model-arg) and the models bundled inside ferkit (for `ferkit predict`, "
                                   "`ferkit evaluate` and Recognizer.load()). Nothing is downloaded.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)


def _cmd_models(a) -> int:
    import json

    from .models import list_models_info

    info = list_models_info()
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    print("architectures (ferkit train --arch NAME [--model-arg NAME=VALUE ...]):")
    for m in info["architectures"]:
        args = ", ".join(f"{k}={_show(v)}" for k, v in m["arguments"].items()) or "no arguments"
        print(f"  {m['name']:8s} {m['summary']}\n"
              f"           arguments: {args}; minimum image size {m['min_image_size']}")
    heads = {"classifier": "bundled models (ferkit predict [--model NAME], ferkit train --init NAME; the first is "
                           "the default):",
             "generator": "bundled generators (ferkit synth edit NAME --source DIR --out DIR --per-class N):"}
    for kind, head in heads.items():
        print(head)
        for b in (b for b in info["bundled"] if b.get("kind", "classifier") == kind):
            status = (f"{b['arch']}, {len(b['classes'])} classes ({', '.join(b['classes'])}), {b['image_size']} px, "
                      f"{b['size_mb']:.1f} MB" if b["available"] else "not in this installation")
            if b["available"] and b.get("bundled", {}).get("iterations"):
                status += f", {b['bundled']['iterations']:,} iterations"
            print(f"  {b['name']}: {b['summary']}\n           {status}; card: {b['card']}")
    return 0


# ----------------------------------------------------------------------------- main
COMMANDS = [_add_train, _add_evaluate, _add_calibrate, _add_predict, _add_models, _add_export, _add_synth, _add_gan,
            _add_demo, _add_mix, _add_study, _add_serve]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (plus where to look), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="ferkit", description="Facial expression recognition toolkit.")
    parser.add_argument("--version", action="version", version=f"ferkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def run(argv: list[str] | None, parser: argparse.ArgumentParser | None = None) -> int:
    """Parse ``argv`` and run the command; user errors become one line and exit status 1."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return report_errors(lambda: args.func(args), command=args.command)


def report_errors(fn, prog: str = "ferkit", command: str | None = None) -> int:
    """Run ``fn()``; a user error becomes one line on stderr and exit status 1, Ctrl-C 130 and SIGTERM
    (handled like Ctrl-C while ``fn`` runs) 143; running out of memory and an unexpected exception
    are one line too, the latter naming a crash report with the traceback (ferkit.failures)."""
    import signal

    from . import failures

    previous = signal.getsignal(signal.SIGTERM)
    failures.handle_sigterm()
    try:
        return fn() or 0
    except FerkitError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(f"{prog}: {failures.interrupt_name()}: {exc}", file=sys.stderr)
        return failures.interrupt_status()
    except KeyboardInterrupt:
        print(f"{prog}: {failures.interrupt_name()}", file=sys.stderr)
        return failures.interrupt_status()
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stderr = open(os.devnull, "w")
        sys.stdout = open(os.devnull, "w")
        return 141
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, the traceback in a file
        if failures.environment_error(exc):   # a full disk, a read-only folder, too many open files ...
            print(f"{prog}: error: {failures.environment_error(exc)}", file=sys.stderr)
        elif failures.is_out_of_memory(exc):
            print(f"{prog}: error: {failures.out_of_memory_line(exc, command)}", file=sys.stderr)
        else:
            print(failures.crash_line(exc, prog), file=sys.stderr)
        return 1
    finally:
        try:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        except (ValueError, OSError, TypeError):
            pass


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
