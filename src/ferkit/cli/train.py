"""`ferkit train`, `ferkit calibrate` and `ferkit export`."""
from __future__ import annotations

import argparse

from ..choices import DEVICE_HELP, PRECISIONS, show_value
from ..errors import FerkitError
from .options import config_option, positive_int

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
        "oversample": "CLASS=N[,CLASS=N...]: every training face of CLASS is seen N more times per epoch "
                      "(e.g. disgusted=5,fearful=5,contempt=5); with --labels soft, the faces whose FER+ "
                      "majority-protocol label is CLASS",
        "labels": "vote-label data (a FER+ folder with label.csv, or a manifest with one vote column per class): "
                  "majority = the FER+ protocol (single votes dropped, faces without a majority dropped, hard "
                  "labels); soft = train against the vote distribution (keeps the rare expressions' votes). "
                  "Validation always uses the majority protocol",
        "teacher": "distil from this classifier (run folder, checkpoint or bundled name; comma-separated = an "
                   "ensemble averaged in probability): its softened outputs on each augmented batch join the loss",
        "distill_alpha": "weight of the teacher's term: loss = (1-a) CE(labels) + a T^2 CE(student/T, teacher/T)",
        "distill_temperature": "temperature T that softens teacher and student outputs in that term",
        "consistency": "weight W of a consistency term: each batch is also seen slightly moved (shift, zoom 0.9-1.1, "
                       "flip) and W x KL(answer on the batch || answer on the moved batch) joins the loss (the "
                       "first answer is the target), aiming at steadier labels; about twice a step's time; 0 = off",
        "consistency_shift": "max shift of that moved view in each direction, pixels at 48 px (scaled to "
                             "--image-size)",
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
        "photo": "probability P of each real-photo condition per image: an occluder (a patch, or dark glasses), "
                 "low light or gamma, blur, low resolution, sensor noise and JPEG compression, each drawn "
                 "independently with probability P (e.g. 0.15); 0 = off. Independent of --augment",
    },
    "machine": {
        "precision": "auto: bf16/fp16 autocast where the CPU/GPU supports it natively, else fp32",
        "device": DEVICE_HELP,
        "num_threads": "torch CPU threads (default: torch's choice)",
        "strict": "fail on undecodable images instead of skipping them",
    },
}


#: help of the TrainConfig options that other commands offer too
TRAIN_HELP = {name: text for options in TRAIN_OPTIONS.values() for name, text in options.items()}


def train_option(group, f, text: str) -> None:
    """One `ferkit train` option from a TrainConfig field; its default is None (= the recipe's value)."""
    from ..train.config import RECIPES

    values = {name: recipe.get(f.name, f.default) for name, recipe in RECIPES.items()}
    shown = "" if all(v is None for v in values.values()) else ", ".join(f"{name} {show_value(v)}"
                                                                       for name, v in values.items())
    config_option(group, f, text, shown)


def add_train(sub):
    from ..train.config import RECIPES, config_fields

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
    p.add_argument("--train-dir", required=True, action="append", metavar="PATH[:W]",
                   help="training data: class folders, a FER+ folder or a manifest CSV. Repeat it to train on "
                        "several sources (domains) at once; ':W' after a path is its sampling weight, how often "
                        "each of its faces is drawn per epoch on average (default 1; e.g. --train-dir "
                        "ferplus/train:0.25 --train-dir sfew/train:6). The classes are --classes or the first "
                        "source's; other sources give the faces of those classes they have")
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
            train_option(group, by_name[name], text)
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, even on a terminal")
    p.set_defaults(func=_cmd_train)


def train_config_from_args(a, **fixed):
    """The TrainConfig that `ferkit train` arguments describe: the recipe, then every given option."""
    from ..models import parse_model_args
    from ..train import resolve_config

    given = {name: getattr(a, name) for options in TRAIN_OPTIONS.values() for name in options}
    if a.model_arg:
        given["model_args"] = parse_model_args(a.model_arg)
        base = {} if given.get("arch") or given.get("init") else _recipe_model_args(a.recipe)
        given["model_args"] = {**base, **given["model_args"]}
    from ..train.domains import parse_source

    first = parse_source(a.train_dir[0])
    given.update(train_weight=first.weight, extra_train_dirs=tuple(a.train_dir[1:]) or None)
    return resolve_config(a.recipe, train_dir=first.path, val_dir=a.val_dir, out=a.out,
                          progress=not a.no_progress, **given, **fixed)


def _recipe_model_args(recipe: str) -> dict:
    from ..train.config import RECIPES

    return dict(RECIPES[recipe].get("model_args", {}))


def _cmd_train(a) -> int:
    from ..train import train
    from ..train.distributed import from_env

    r = train(train_config_from_args(a), overwrite=a.overwrite)
    if from_env().main:     # torchrun: rank 0 reports
        print(r.text())
    return 0


# ----------------------------------------------------------------------------- calibrate
def add_calibrate(sub):
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
    p.add_argument("--val-dir", default=None, action="append",
                   help="labelled validation data (class folders, FER+ folder or manifest CSV); repeat it for "
                        "several domains (e.g. FER+ valid, your film faces, your lab faces): one temperature is "
                        "fitted with every domain weighing the same, and ECE is reported per domain. A set with "
                        "fewer classes than the model is scored among the classes it has")
    p.add_argument("--out", default=None, help="calibrated checkpoint to write (default: <name>.calibrated."
                                               "safetensors beside the input)")
    p.add_argument("--temperature", type=float, default=None,
                   help="set this temperature instead of fitting one (> 0; 1 = uncalibrated); with --val-dir "
                        "the figures are still measured")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--strict", action="store_true", help="fail on undecodable images instead of skipping them")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="(default fp32)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(a) -> int:
    from ..train.calibrate import calibrate_checkpoint, describe

    r = calibrate_checkpoint(a.model, a.val_dir, a.out, temperature=a.temperature, overwrite=a.overwrite,
                             batch_size=a.batch_size, precision=a.precision, device=a.device, strict=a.strict,
                             progress=not a.no_progress)
    print("\n".join(describe(r)))
    return 0


# ----------------------------------------------------------------------------- export
def add_export(sub):
    p = sub.add_parser("export", help="export a trained model to ONNX",
                       description="Write an ONNX model: input 'input' float32 (batch, 1, S, S) = gray face / 255, "
                                   "outputs 'logits' and 'probabilities'; dynamic batch axis. Class names, image "
                                   "size and preprocessing are stored in the file's metadata (key 'ferkit', JSON). "
                                   "Checks onnxruntime against PyTorch after writing.")
    p.add_argument("model", help="run folder (uses best.safetensors), checkpoint file, or a bundled model's name")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default onnx)")
    p.add_argument("--out", required=True, help="file to write, e.g. model.onnx")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--int8", action="store_true",
                   help="write an int8 model (onnxruntime static quantisation, per-channel weights), calibrated on "
                        "faces, and report its agreement with the fp32 graph on other faces")
    p.add_argument("--calib-dir", default=None, metavar="DIR",
                   help="--int8: folder of face images to calibrate on (searched recursively; default: the run's "
                        "validation folder when it exists, else procedurally generated faces)")
    p.add_argument("--calib-faces", type=positive_int, default=None,
                   help="--int8: faces to calibrate on (default 300; as many again check the agreement)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(a) -> int:
    if not a.int8 and (a.calib_dir is not None or a.calib_faces is not None):
        raise FerkitError("--calib-dir and --calib-faces go with --int8")
    if a.int8:
        from ..quantize import DEFAULT_CALIB_FACES, export_int8, int8_text

        print(int8_text(export_int8(a.model, a.out, calib_dir=a.calib_dir,
                                    calib_faces=a.calib_faces or DEFAULT_CALIB_FACES, opset=a.opset)))
    else:
        from ..export import export_onnx, export_text

        print(export_text(export_onnx(a.model, a.out, opset=a.opset)))
    return 0
