"""Evaluation of a checkpoint on a labelled folder (or manifest).

Example::

    ferkit evaluate runs/exp1 --test-dir data/test          # writes runs/exp1/eval-test/

Output folder::

    metrics.json             accuracy, macro-F1, per-class precision/recall/F1/support, NLL, ECE (15 bins),
                             the temperature applied and the reliability table
    report.txt               scikit-learn's classification report, with class names
    confusion_matrix.png     counts and row-normalised, side by side
    reliability.png          reliability diagram: accuracy per confidence bin against the diagonal
    predictions.csv          file, true, predicted, confidence, one probability column per class
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .console import log
from .data import ImageSet, load_dataset
from .errors import FerkitError
from .files import atomic_path, csv_writer, make_dir, refuse_output_over_input, save_figure, write_json, write_text
from .models import open_model
from .runtime import check_tta


@dataclass
class EvalResult:
    accuracy: float
    macro_f1: float
    report: dict            # scikit-learn classification_report(output_dict=True)
    report_text: str
    confusion: np.ndarray   # rows: true class, columns: predicted class
    classes: tuple[str, ...]
    out_dir: Path | None
    n: int
    tta: str = "none"
    nll: float = float("nan")        # mean negative log-likelihood of the true class (nats)
    ece: float = float("nan")        # expected calibration error, 15 equal-width bins of the top probability
    temperature: float = 1.0         # the checkpoint's temperature (ferkit calibrate), applied to the logits
    reliability: dict | None = None  # per-bin counts, confidence, accuracy (ferkit.train.calibrate)
    labels: str = "one class per image"  # or, for vote-label test data, the protocol that made the labels
    domains: tuple[str, ...] = ()    # a temperature per domain read from the face (it replaces ``temperature``)

    def text(self) -> str:
        """What ``ferkit evaluate`` prints: the per-class report, macro-F1, calibration, where the
        reports are, and last the accuracy."""
        return "\n".join([self.report_text, f"macro_f1: {self.macro_f1:.4f}", calibration_line(self),
                          f"reports: {self.out_dir}", f"accuracy: {self.accuracy:.4f}"])


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Accuracy, macro-F1, per-class report and confusion matrix over ``classes`` (scikit-learn)."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    labels = list(range(len(classes)))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "report": classification_report(y_true, y_pred, labels=labels, target_names=list(classes),
                                        output_dict=True, zero_division=0),
        "report_text": classification_report(y_true, y_pred, labels=labels, target_names=list(classes),
                                             digits=4, zero_division=0),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels),
    }


def plot_confusion(cm: np.ndarray, classes, path: Path, title: str = "") -> None:
    """Confusion matrix as counts and row-normalised (recall per true class), side by side."""
    from .files import new_figure

    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig = new_figure(figsize=(4 + 2.2 * n, 1.5 + 0.9 * n))
    axes = fig.subplots(1, 2)
    for ax, data, fmt, name in ((axes[0], cm, "d", "counts"), (axes[1], norm, ".2f", "row-normalised")):
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def _write_predictions(path: Path, paths, y_true, probs: np.ndarray, classes) -> None:
    pred = probs.argmax(1)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv_writer(fh)
        w.writerow(["file", "true", "predicted", "confidence", *[f"p_{c}" for c in classes]])
        for f, t, p, row in zip(paths, y_true, pred, probs):
            w.writerow([f, classes[t], classes[p], f"{row[p]:.6f}", *[f"{v:.6f}" for v in row]])


def shared_classes(model_classes, found, shared_only: bool) -> tuple[str, ...]:
    """The classes to score on, in model order: all the model's when the test data (classes
    ``found``) has exactly them; else, with ``shared_only``, those both have; else one FerkitError
    saying what differs (``evaluate`` and ``evaluate --detect`` alike)."""
    missing = [c for c in model_classes if c not in found]
    extra = [c for c in found if c not in model_classes]
    if not missing and not extra:
        return tuple(model_classes)
    if not shared_only:
        what = "; ".join(x for x in (f"the test data lacks {', '.join(missing)}" if missing else "",
                                     f"the model does not know {', '.join(extra)}" if extra else "") if x)
        raise FerkitError(f"test data classes ({', '.join(found)}) differ from the model's "
                          f"({', '.join(model_classes)}): {what}; pass --shared-classes to evaluate on the "
                          "classes both have")
    shared = tuple(c for c in model_classes if c in found)
    if not shared:
        raise FerkitError(f"test data shares no class with the model ({', '.join(model_classes)})")
    return shared


def _match_classes(model_classes: tuple[str, ...], test_source, shared_only: bool) -> tuple[str, ...]:
    """The classes to evaluate on; the test data must have every model class unless shared_only."""
    from .data import scan_source

    found = scan_source(test_source, None, "test data").found_classes
    shared = shared_classes(model_classes, found, shared_only)
    missing = [c for c in model_classes if c not in found]
    extra = [c for c in found if c not in model_classes]
    if not missing and not extra:
        return shared
    log(f"note: evaluating on shared classes only: {', '.join(shared)}"
        + (f" (model also predicts {', '.join(missing)})" if missing else "")
        + (f" (test images of {', '.join(extra)} left out)" if extra else ""))
    return shared


def evaluate(model_path, test_dir, out_dir=None, batch_size: int = 256, shared_only: bool = False,
             strict: bool = False, precision: str = "auto", device: str = "auto",
             cm_path: Path | None = None, progress: bool = True, data: ImageSet | None = None,
             tta: str = "none", figures: bool = True) -> EvalResult:
    """Evaluate a checkpoint (or run folder) on labelled test data and write the reports.

    Args:
        model_path: checkpoint file, run folder, a bundled model's name, or an ``.onnx`` export (run on
            onnxruntime; a checkpoint always runs on PyTorch here, even with its export beside it).
        test_dir: class-folder tree or manifest CSV.
        out_dir: where reports go; default ``<run folder>/eval-<test folder name>``; False = write nothing.
        shared_only: evaluate on the classes that model and test data share (else mismatch is an error).
        cm_path: also write the confusion matrix here (``main.py``'s confusion_matrix_<name>.jpg).
        data: an already-decoded test set (its classes must be the model's).
        tta: test-time augmentation, ``none``, ``flip`` or ``crops`` (see :mod:`ferkit.runtime`).
        figures: draw confusion_matrix.png and reliability.png (False: the numbers and predictions
            only, as ``ferkit study`` does for each of its many runs; drawing takes longer than the rest).
    """
    from .bundled import WEIGHTS_DIR

    check_tta(tta)
    if out_dir:
        refuse_output_over_input(out_dir, [test_dir], input_option="test data")   # before any work
    opened = open_model(model_path, device=device, precision=precision, beside=False)
    ckpt, record = opened.path, opened.record
    model_classes = record.classes
    if data is None:
        eval_classes = _match_classes(model_classes, test_dir, shared_only)
        data = load_dataset(test_dir, eval_classes, record.image_size, strict, progress=progress,
                            role="test data")
    # Labels in the model's index space, so shared-class evaluation compares like with like.
    to_model = np.asarray([model_classes.index(c) for c in data.classes])
    y_true = to_model[data.labels]
    logits = torch.from_numpy(opened.logits(data.images, tta=tta, batch_size=batch_size))
    if len(data.classes) < len(model_classes):  # shared classes: predict among them only
        mask = torch.full((len(model_classes),), float("-inf"))
        mask[torch.as_tensor(to_model)] = 0
        logits = logits + mask
    probs = torch.softmax(logits, 1).numpy()
    keep = sorted(int(i) for i in to_model)   # evaluated classes, in model order
    position = np.full(len(model_classes), -1)
    position[keep] = np.arange(len(keep))
    eval_classes = tuple(model_classes[i] for i in keep)
    m = compute_metrics(position[y_true], position[probs.argmax(1)], eval_classes)
    from .train.calibrate import negative_log_likelihood, reliability_table

    table = reliability_table(probs, y_true)
    result = EvalResult(m["accuracy"], m["macro_f1"], m["report"], m["report_text"], m["confusion"],
                        eval_classes, None, len(y_true), tta, negative_log_likelihood(logits, y_true), table["ece"],
                        record.temperature, table,
                        f"vote labels, {data.protocol} protocol" if data.protocol else "one class per image",
                        tuple(record.domain_temperature.get("domains", ())))
    if out_dir is not False:
        name = f"eval-{Path(test_dir).stem}"
        # never write reports into the installed package: a bundled model's go to the working folder
        default = Path(f"eval-{ckpt.stem}-{Path(test_dir).stem}") if ckpt.parent == WEIGHTS_DIR else ckpt.parent / name
        out = Path(out_dir) if out_dir else default
        refuse_output_over_input(out, [test_dir], input_option="test data")   # its PNGs would become test images
        make_dir(out)
        _write_outputs(out, result, data.paths, y_true, probs, model_classes, ckpt, test_dir, figures)
        result.out_dir = out
    if cm_path is not None:
        plot_confusion(result.confusion, result.classes, Path(cm_path), title=f"accuracy {result.accuracy:.4f}")
    return result


def _write_outputs(out: Path, r: EvalResult, paths, y_true, probs, model_classes, ckpt, test_dir,
                   figures: bool = True) -> None:
    metrics = {"accuracy": r.accuracy, "macro_f1": r.macro_f1, "n": r.n, "tta": r.tta, "classes": list(r.classes),
               "checkpoint": str(ckpt), "test_data": str(test_dir), "labels": r.labels, "per_class": r.report,
               "confusion_matrix": r.confusion.tolist(), "nll": r.nll, "ece": r.ece, "ece_bins": r.reliability["bins"],
               # the temperature applied: one number, or null where a temperature per domain replaces it
               "temperature": None if r.domains else r.temperature, "temperature_per_domain": list(r.domains),
               "mean_confidence": r.reliability["mean_confidence"],
               "reliability": {k: r.reliability[k] for k in ("edges", "count", "confidence", "accuracy")}}
    write_json(out / "metrics.json", metrics)
    write_text(out / "report.txt", f"accuracy: {r.accuracy:.4f}\nmacro-F1: {r.macro_f1:.4f}\nlabels: {r.labels}\n"
                                   f"test-time augmentation: {r.tta}\n{calibration_line(r)}\n\n{r.report_text}")
    _write_predictions(out / "predictions.csv", paths, y_true, probs, model_classes)
    if not figures:
        return
    plot_confusion(r.confusion, r.classes, out / "confusion_matrix.png",
                   title=f"{Path(test_dir).name}: accuracy {r.accuracy:.4f}, macro-F1 {r.macro_f1:.4f}"
                         + (f" (TTA {r.tta})" if r.tta != "none" else ""))
    from .train.calibrate import plot_reliability

    plot_reliability(probs, y_true, out / "reliability.png",
                     title=f"{Path(test_dir).name}: ECE {r.ece:.4f} ({r.reliability['bins']} bins), NLL {r.nll:.4f}, "
                           + ("a temperature per domain" if r.domains else f"temperature {r.temperature:.3g}"))


def calibration_line(r: EvalResult) -> str:
    """One line on how far the probabilities are from what they say (printed and in report.txt)."""
    bins = r.reliability["bins"] if r.reliability else 15
    conf = f", mean confidence {r.reliability['mean_confidence']:.4f}" if r.reliability else ""
    if r.domains:
        return (f"calibration: ECE {r.ece:.4f} ({bins} bins), NLL {r.nll:.4f}{conf}, a temperature per domain "
                f"({', '.join(r.domains)}), the domain read from each face")
    return (f"calibration: ECE {r.ece:.4f} ({bins} bins), NLL {r.nll:.4f}{conf}, temperature {r.temperature:.4g}"
            + ("" if r.temperature != 1.0 else " (uncalibrated: see `ferkit calibrate`)"))
