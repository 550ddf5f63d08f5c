"""``ferkit evaluate --detect``: score the whole pipeline on labelled photos, as ``predict`` runs it.

Each photo goes through detection (with the padded/upscaled/turned retries), the crop (eye-level
unless ``align=False``) and classification, and its largest face is its answer, exactly as
``ferkit predict --largest``. A photo where no face is found counts as wrong and is listed, so
the accuracy is what a user gets on such photos, not what the classifier gets on ideal crops.

Example::

    ferkit evaluate fer2013-vgg --test-dir my_photos/ --detect      # class folders of ordinary photos

Output folder (default ``<run folder>/eval-detect-<test folder name>``)::

    metrics.json          accuracy (no face = wrong), detection rate (faces the detector found; a
                          photo classified whole by ``--fallback whole`` is not one), accuracy on the
                          photos with a detected face, the fallback's count and accuracy, macro-F1,
                          per-class report, confusion matrix (photos with a detected face), the
                          photos without a face and why, the skipped files, the pipeline's settings
                          (detector, min_face, align, fallback, tta)
    report.txt            the same in words, and scikit-learn's report
    confusion_matrix.png  counts and row-normalised (photos with a detected face)
    predictions.csv       file, true, predicted (empty: no face), confidence, x, y, w, h, face (detected,
                          whole or none), reason (why no face was found), p_<class>...
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundled import WEIGHTS_DIR
from ..console import log, progress_bar
from ..data import decode_image, scan_source
from ..errors import FerkitError
from ..evaluate import compute_metrics, plot_confusion, shared_classes
from ..files import atomic_path, csv_writer, make_dir, write_json, write_text
from .detect import DEFAULT_DETECTOR
from .recognizer import Recognizer
from .runner import check_min_face

#: The smallest face side (px) the detectors look for.
MIN_DETECTABLE = 24


@dataclass
class PipelineResult:
    accuracy: float             # photos whose largest face got the true label / all photos
    macro_f1: float
    detection_rate: float       # photos where the detector found a face (not the --fallback whole guesses)
    accuracy_detected: float    # among the photos with a detected face
    n: int
    classes: tuple[str, ...]
    confusion: np.ndarray       # photos with a face; rows true, columns predicted
    report_text: str
    no_face: list[str]
    skipped: list[tuple[str, str]]
    out_dir: Path | None
    fallback: int = 0                        # photos without a face classified whole (--fallback whole)
    accuracy_fallback: float | None = None   # among those

    def text(self) -> str:
        """What ``ferkit evaluate --detect`` prints: the per-class report, the summary lines, where the
        reports are, and last the accuracy."""
        return "\n".join([self.report_text, result_text(self), f"reports: {self.out_dir}",
                          f"accuracy: {self.accuracy:.4f}"])


def evaluate_pipeline(model, test_dir, out_dir=None, shared_only: bool = False, batch_size: int = 64,
                      device: str = "auto", tta: str = "none", progress: bool = True, backend: str = "auto",
                      align: bool = True, fallback: str = "none", **detector_args) -> PipelineResult:
    """Score detection + crop + classification on a labelled folder (or manifest) of photos.

    Args:
        model: None (the bundled model), a bundled model's name, a run folder, ``.safetensors`` or ``.onnx``.
        test_dir: class folders (or a manifest CSV) of photos of any size.
        out_dir: report folder; default ``<run folder>/eval-detect-<test name>`` (``./eval-detect-<model>-<test
            name>`` for a bundled model); False = write nothing.
        shared_only: test data that lacks some of the model's classes is scored among the shared ones.
        align, fallback, detector_args: as for :meth:`ferkit.Recognizer.load` (``detector="dlib"``,
            ``min_face``, ``cascade`` ...). With ``fallback="whole"`` a photo without a face is classified whole.
    """
    check_min_face(detector_args.get("min_face"))
    rec = Recognizer.load(model, backend=backend, device=device, batch_size=batch_size, tta=tta, align=align,
                          fallback=fallback, largest=True, **detector_args)
    source = scan_source(test_dir, None, "test data")
    classes = shared_classes(rec.classes, source.found_classes, shared_only)
    keep = [i for i, c in enumerate(source.labels) if c in classes]
    files = [source.files[i] for i in keep]
    y_true = np.array([rec.classes.index(source.labels[i]) for i in keep], np.int64)
    mask = np.array([0.0 if c in classes else -np.inf for c in rec.classes])   # predict among shared classes
    probs, boxes, ok, skipped, no_face, whole, reasons = _read_photos(rec, files, mask, batch_size, progress)
    if not ok.any():
        raise FerkitError(f"none of the {len(files)} test photos could be decoded (first: {skipped[0][0]}: "
                          f"{skipped[0][1]})" if skipped else f"{test_dir} has no photos of the model's classes")
    files, y_true, probs, whole = [f for f, k in zip(files, ok) if k], y_true[ok], probs[ok], whole[ok]
    boxes = [b for b, k in zip(boxes, ok) if k]
    reasons = [r for r, k in zip(reasons, ok) if k]
    answered = np.array([b is not None for b in boxes])   # a detected face, or the whole photo (--fallback)
    found = answered & ~whole                               # what the detector found
    y_pred = np.where(answered, np.nan_to_num(probs, nan=-1.0).argmax(1), -1)

    # score in the space of the evaluated classes (model order); a photo without a face is -1: wrong
    order = [rec.classes.index(c) for c in rec.classes if c in classes]
    position = np.full(len(rec.classes) + 1, -1)   # the extra last slot: position[-1] (no face) stays -1
    position[order] = np.arange(len(order))
    eval_classes = tuple(rec.classes[i] for i in order)
    m = compute_metrics(position[y_true], position[y_pred], eval_classes)
    confusion = compute_metrics(position[y_true], position[np.where(found, y_pred, -1)], eval_classes)["confusion"]
    correct = y_pred == y_true
    result = PipelineResult(m["accuracy"], m["macro_f1"], float(found.mean()),
                            float(correct[found].mean()) if found.any() else 0.0, len(files), eval_classes,
                            confusion, m["report_text"], no_face, skipped, None, int(whole.sum()),
                            float(correct[whole].mean()) if whole.any() else None)
    if skipped:
        log(f"note: {len(skipped)} file(s) could not be decoded and are left out (listed in metrics.json)")
    if out_dir is False:
        return result
    settings = {"detector": detector_args.get("detector") or DEFAULT_DETECTOR,
                "min_face": getattr(rec.detector, "min_face", detector_args.get("min_face")),
                "align": align, "fallback": fallback, "tta": tta, "largest_face": True}
    result.out_dir = _write_reports(result, m, rec, out_dir, test_dir, files, y_true, y_pred, probs, boxes,
                                    whole, reasons, settings)
    return result


def _read_photos(rec, files, mask: np.ndarray, batch_size: int, progress: bool):
    """Detect, crop and classify each photo (its largest face), in batches: (probabilities among the
    unmasked classes, NaN where no face; box or None; decoded?; undecodable (file, why); no-face files)."""
    probs = np.full((len(files), len(rec.classes)), np.nan, np.float32)
    boxes: list[tuple | None] = [None] * len(files)
    skipped, no_face, ok = [], [], np.zeros(len(files), bool)
    whole, reasons = np.zeros(len(files), bool), [""] * len(files)
    chunk: list[tuple[int, np.ndarray]] = []

    def classify() -> None:
        if chunk:
            p = rec.probabilities(np.stack([face for _, face in chunk]))
            p = np.exp(np.log(np.maximum(p, 1e-30)) + mask)
            probs[[i for i, _ in chunk]] = p / p.sum(1, keepdims=True)
            chunk.clear()

    for i, path in enumerate(progress_bar(files, enabled=progress, desc="photos", unit="img", leave=False)):
        try:
            gray = decode_image(path)
        except (ValueError, OSError) as exc:
            skipped.append((str(path), str(exc) or type(exc).__name__))
            continue
        ok[i] = True
        prepared = rec.prepare(gray)
        if not prepared.boxes or prepared.whole:
            no_face.append(str(path))
            whole[i], reasons[i] = prepared.whole, miss_reason(rec, gray)
        if prepared.boxes:
            boxes[i] = prepared.boxes[0]
            chunk.append((i, prepared.faces[0]))
        if len(chunk) >= batch_size:
            classify()
    classify()
    return probs, boxes, ok, skipped, no_face, whole, reasons


def _write_reports(result: PipelineResult, m: dict, rec, out_dir, test_dir, files, y_true, y_pred, probs, boxes,
                   whole, reasons, settings: dict) -> Path:
    """metrics.json, report.txt, confusion_matrix.png and predictions.csv; returns their folder."""
    path = Path(getattr(rec.backend, "path", "model"))
    default = (Path(f"eval-detect-{path.stem}-{Path(test_dir).stem}") if path.parent == WEIGHTS_DIR
               else (path if path.is_dir() else path.parent) / f"eval-detect-{Path(test_dir).stem}")
    out = make_dir(Path(out_dir) if out_dir else default)
    eval_classes, no_face, skipped = result.classes, result.no_face, result.skipped
    write_json(out / "metrics.json", {
        "accuracy": result.accuracy, "macro_f1": result.macro_f1, "detection_rate": result.detection_rate,
        "accuracy_on_detected": result.accuracy_detected, "n": result.n, "no_face_count": len(no_face),
        "fallback_count": result.fallback, "accuracy_on_fallback": result.accuracy_fallback,
        "classes": list(eval_classes), "model": str(path), "test_data": str(test_dir), "pipeline": settings,
        "per_class": m["report"], "confusion_matrix_detected": result.confusion.tolist(),
        "no_face": no_face, "no_face_reasons": {str(f): r for f, r in zip(files, reasons) if r},
        "skipped": skipped})
    write_text(out / "report.txt", result_text(result) + f"\npipeline: {settings}\n\n{m['report_text']}")
    plot_confusion(result.confusion, eval_classes, out / "confusion_matrix.png",
                   title=f"{Path(test_dir).name}, detect + classify: accuracy {result.accuracy:.4f} "
                         f"(faces found in {result.detection_rate:.1%})")
    with atomic_path(out / "predictions.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv_writer(fh)
        w.writerow(["file", "true", "predicted", "confidence", "x", "y", "w", "h", "face", "reason",
                    *[f"p_{c}" for c in rec.classes]])
        for f, t, p, row, b, is_whole, why in zip(files, y_true, y_pred, probs, boxes, whole, reasons):
            if b is None:
                w.writerow([str(f), rec.classes[t], "", "", "", "", "", "", "none", why, *[""] * len(rec.classes)])
            else:
                w.writerow([str(f), rec.classes[t], rec.classes[p], f"{row[p]:.6f}", *b,
                            "whole" if is_whole else "detected", why, *[f"{v:.6f}" for v in row]])
    return out


def miss_reason(rec, gray: np.ndarray) -> str:
    """Why no face was found in ``gray``: too small an image for any face, a face smaller than
    ``--min-face`` (searched for again without that limit), or none at all."""
    h, w = gray.shape[:2]
    if min(h, w) < MIN_DETECTABLE:
        return f"image smaller than the smallest face the detector finds ({MIN_DETECTABLE} px)"
    min_face = getattr(rec.detector, "min_face", None)
    if min_face is not None and min_face * min(h, w) > MIN_DETECTABLE:
        small = rec.detector.detect(gray, min_size=MIN_DETECTABLE)
        if small:
            side = max(max(b[2], b[3]) for b in small)
            return (f"a face of {side} px, below --min-face {min_face:g} ({round(min_face * min(h, w))} px in "
                    "this photo)")
    return "no face found (also in padded, upscaled and turned copies)"


def result_text(r: PipelineResult) -> str:
    """The summary lines ``ferkit evaluate --detect`` prints."""
    lines = [f"photos: {r.n}; a face found in {r.n - len(r.no_face)} ({r.detection_rate:.1%}); "
             f"accuracy on those: {r.accuracy_detected:.4f}"]
    if r.fallback:
        lines.append(f"classified whole (--fallback whole, no face found): {r.fallback}; accuracy on those: "
                     f"{r.accuracy_fallback:.4f}")
    lines += [f"accuracy (no face = wrong{', whole-photo guesses included' if r.fallback else ''}): "
              f"{r.accuracy:.4f}", f"macro_f1: {r.macro_f1:.4f}"]
    if r.no_face:
        lines.append(f"no face found in: {', '.join(r.no_face[:10])}{' ...' if len(r.no_face) > 10 else ''}")
    return "\n".join(lines)

