"""`ferkit predict` and `ferkit evaluate`."""
from __future__ import annotations

import argparse
import sys

from ..choices import DEVICE_HELP, PRECISIONS, TTA_MODES
from .options import add_face_options, nonneg_int, nonneg_seconds, positive_int


# ----------------------------------------------------------------------------- predict
def add_predict(sub):
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
    p.add_argument("--every", type=positive_int, default=1, help="video: classify every N-th frame (default 1)")
    p.add_argument("--camera", type=nonneg_int, default=None, metavar="IDX",
                   help="also read webcam IDX until Ctrl-C (or --max-frames)")
    p.add_argument("--max-frames", type=positive_int, default=None, help="camera: stop after N frames")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                   help="auto (default: onnxruntime for .onnx files and for a checkpoint with its export beside "
                        "it, <stem>.onnx from `ferkit export`, when onnxruntime is installed; else PyTorch), torch, "
                        "or onnx")
    p.add_argument("--tta", choices=TTA_MODES, default="none",
                   help="test-time augmentation: none (default), flip, crops (10 views; slower)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="faces per classification batch (default 64)")
    p.add_argument("--min-face", type=float, default=0.1,
                   help="smallest face side as a fraction of the image's shorter side (default 0.1)")
    p.add_argument("--cascade", default="alt2",
                   help="OpenCV Haar cascade: alt2, default, alt, or a path to a cascade XML (default: alt2)")
    add_face_options(p)
    p.add_argument("--largest", action="store_true", help="keep only the largest face of each image or frame")
    p.add_argument("--landmarks", action="store_true",
                   help="the 468-point face mesh and head pose (yaw, pitch, roll in degrees) of each face "
                        "(the bundled MediaPipe face mesh; adds the mesh to JSON and keypoint columns to the CSV)")
    p.add_argument("--smooth", type=nonneg_seconds, default=None, metavar="SECONDS",
                   help="video and webcam: smooth each track's probabilities over this many seconds "
                        "(exponential; default 0.5; 0 = raw per-frame values). Photos are never smoothed")
    p.add_argument("--device", default="auto", help=f"torch backend: {DEVICE_HELP}")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(a) -> int:
    from ..bundled import is_model_path
    from ..predict import predict_inputs

    model, inputs = a.model, list(a.inputs)
    if model is None and inputs and is_model_path(inputs[0]):
        model, inputs = inputs[0], inputs[1:]
    to_stdout = a.out == "-"
    s = predict_inputs(model, inputs, None if to_stdout else a.out, a.format, annotate=a.annotate, tta=a.tta,
                       detect=not a.no_detect, every=a.every, camera=a.camera, backend=a.backend,
                       batch_size=a.batch_size, device=a.device, progress=not a.no_progress,
                       max_frames=a.max_frames, min_face=a.min_face, cascade=a.cascade, smooth=a.smooth,
                       align=not a.no_align, fallback=a.fallback, largest=a.largest, detector=a.detector,
                       landmarks=a.landmarks)
    print(s.text(), file=sys.stderr if to_stdout else sys.stdout)
    return 0


# ----------------------------------------------------------------------------- evaluate
def add_evaluate(sub):
    p = sub.add_parser("evaluate", help="evaluate a trained model on a labelled folder",
                       description="Evaluate a checkpoint on labelled data. Prints 'accuracy: X' and writes "
                                   "metrics.json, report.txt, confusion_matrix.png and predictions.csv.")
    p.add_argument("model", help="run folder (uses best.safetensors), checkpoint file, or a bundled model's name "
                                 "(see `ferkit models`)")
    p.add_argument("--test-dir", required=True, help="labelled data: class folders or manifest CSV")
    p.add_argument("--out", default=None, help="report folder (default: <run folder>/eval-<test folder name>; "
                                               "for a bundled model ./eval-<model>-<test folder name>)")
    p.add_argument("--batch-size", type=positive_int, default=256)
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
    add_face_options(g)
    g.add_argument("--min-face", type=float, default=0.1,
                   help="smallest face side as a fraction of the photo's shorter side (default 0.1)")
    g.add_argument("--cascade", default="alt2", help="OpenCV Haar cascade: alt2, default, alt, or a path to a "
                                                     "cascade XML (default: alt2)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(a) -> int:
    if a.detect:
        from ..predict.pipeline import evaluate_pipeline

        r = evaluate_pipeline(a.model, a.test_dir, a.out, shared_only=a.shared_classes, batch_size=a.batch_size,
                              device=a.device, tta=a.tta, progress=not a.no_progress, align=not a.no_align,
                              fallback=a.fallback, detector=a.detector, min_face=a.min_face, cascade=a.cascade)
    else:
        from ..evaluate import evaluate

        r = evaluate(a.model, a.test_dir, a.out, batch_size=a.batch_size, shared_only=a.shared_classes,
                     strict=a.strict, precision=a.precision, device=a.device, progress=not a.no_progress, tta=a.tta)
    print(r.text())
    return 0
