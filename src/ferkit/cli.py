"""The ``ferkit`` command line: a thin layer that parses arguments and calls the Python API.

Every command is one ``_cmd_*`` function plus one ``_add_*`` parser builder, listed in COMMANDS.
User errors (FerkitError) end as one line on stderr and exit status 1; Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import FerkitError


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


# ----------------------------------------------------------------------------- train
def _add_train(sub):
    p = sub.add_parser("train", help="train an expression classifier on class folders",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a classifier on a folder with one sub-folder per class "
                                   "(or a manifest CSV from `ferkit mix`).",
                       epilog="The run folder (--out) receives:\n"
                              "  config.json        config, classes, image size, data counts, skipped files\n"
                              "  history.csv        per-epoch train/val loss and accuracy\n"
                              "  curves.png         training curves (accuracy and loss, train vs validation)\n"
                              "  best.safetensors   weights with the lowest validation loss (+ JSON metadata)\n"
                              "  last.safetensors   weights after the last epoch\n"
                              "  summary.json       best epoch and its validation metrics\n"
                              "Re-running the same command resumes an interrupted run.")
    p.add_argument("--train-dir", required=True, help="training data: class folders or manifest CSV")
    p.add_argument("--val-dir", required=True, help="validation data (same classes)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--arch", default="seed", help="architecture (default: seed, the reference CNN; also: tiny)")
    p.add_argument("--epochs", type=_positive_int, default=50, help="maximum epochs (default 50)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--image-size", type=_positive_int, default=64, help="square input side in pixels (default 64)")
    p.add_argument("--classes", default=None,
                   help="comma-separated classes, in model order (default: the reference six "
                        "angry,disgusted,fearful,happy,sad,surprised that the data has; 'all7' adds neutral)")
    p.add_argument("--patience", type=_nonneg_int, default=5,
                   help="stop after N epochs without validation-loss improvement; 0 disables (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--augment", action="store_true", help="flip, shift, rotate and zoom training images")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast where the CPU/GPU supports it natively, else fp32")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    p.add_argument("--strict", action="store_true", help="fail on undecodable images instead of skipping them")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)


def _cmd_train(a) -> int:
    from .train import TrainConfig, train

    cfg = TrainConfig(train_dir=a.train_dir, val_dir=a.val_dir, out=a.out, arch=a.arch, image_size=a.image_size,
                      classes=a.classes, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, patience=a.patience,
                      seed=a.seed, augment=a.augment, precision=a.precision, device=a.device, strict=a.strict,
                      progress=not a.no_progress)
    r = train(cfg, overwrite=a.overwrite)
    print(f"best epoch {r.best_epoch}: val_loss {r.best_val_loss:.4f}, val_acc {r.best_val_acc:.4f} "
          f"({r.epochs_run} epochs, {r.seconds:.0f}s)")
    print(f"run folder: {r.run_dir}  (best.safetensors, last.safetensors, history.csv, curves.png)")
    return 0


# ----------------------------------------------------------------------------- evaluate
def _add_evaluate(sub):
    p = sub.add_parser("evaluate", help="evaluate a trained model on a labelled folder",
                       description="Evaluate a checkpoint on labelled data. Prints 'accuracy: X' and writes "
                                   "metrics.json, report.txt, confusion_matrix.png and predictions.csv.")
    p.add_argument("model", help="run folder (uses best.safetensors) or checkpoint file")
    p.add_argument("--test-dir", required=True, help="labelled data: class folders or manifest CSV")
    p.add_argument("--out", default=None, help="report folder (default: <run folder>/eval-<test folder name>)")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--shared-classes", action="store_true",
                   help="if the test data lacks some of the model's classes, evaluate on the shared ones")
    p.add_argument("--strict", action="store_true", help="fail on undecodable images instead of skipping them")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(a) -> int:
    from .evaluate import evaluate

    r = evaluate(a.model, a.test_dir, a.out, batch_size=a.batch_size, shared_only=a.shared_classes,
                 strict=a.strict, precision=a.precision, device=a.device)
    print(r.report_text)
    print(f"macro_f1: {r.macro_f1:.4f}")
    print(f"reports: {r.out_dir}")
    print(f"accuracy: {r.accuracy:.4f}")
    return 0


# ----------------------------------------------------------------------------- main
COMMANDS = [_add_train, _add_evaluate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferkit", description="Facial expression recognition toolkit.")
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
    try:
        return args.func(args) or 0
    except FerkitError as exc:
        print(f"ferkit: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ferkit: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    except MemoryError:
        print("ferkit: error: out of memory (try a smaller --batch-size)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
