"""`ferkit train`, `ferkit calibrate` and `ferkit export`."""
from __future__ import annotations

import argparse

from ..choices import DEVICE_HELP, PRECISIONS, show_value
from ..errors import FerkitError
from .options import config_option, positive_int

# ----------------------------------------------------------------------------- train
#: TrainConfig fields offered as `ferkit train` options, by group. Help, type, choices and the
#: recipes' values come from ferkit.train.config (each field's help is written once, there), so a
#: new option is its field there and its name here.
TRAIN_OPTIONS = {
    "model and data": ("arch", "init", "image_size", "classes", "input_mean", "input_std"),
    "schedule of the run": ("epochs", "batch_size", "patience", "monitor", "seed", "train_limit", "val_limit"),
    "optimiser": ("optimizer", "lr", "momentum", "weight_decay", "schedule", "lr_decay", "warmup_epochs",
                  "plateau_patience", "grad_clip", "ema", "freeze_bn"),
    "loss": ("label_smoothing", "class_weights", "oversample", "labels", "teacher", "distill_alpha",
             "distill_temperature", "consistency", "consistency_shift"),
    "augmentation (in torch, on whole batches)": ("augment", "rotate", "shift", "zoom", "aspect", "erase", "mixup",
                                                  "cutmix", "photo"),
    "machine": ("precision", "device", "num_threads", "strict"),
}


def train_help() -> dict[str, str]:
    """Each TrainConfig field's help text (from the field), by name."""
    from ..train.config import config_fields, setting_help

    return {f.name: setting_help(f) for f in config_fields()}


def train_option(group, f, text: str) -> None:
    """One `ferkit train` option from a TrainConfig field; its default is None (= the recipe's value)."""
    from ..train.config import RECIPES

    values = {name: recipe.get(f.name, f.default) for name, recipe in RECIPES.items()}
    shown = "" if all(v is None for v in values.values()) else ", ".join(f"{name} {show_value(v)}"
                                                                       for name, v in values.items())
    config_option(group, f, text, shown)


def add_train_options(p, groups: dict[str, tuple[str, ...]], skip: tuple[str, ...] = ()) -> None:
    """The TrainConfig options of ``groups`` (title -> field names), but ``skip``, as argument groups of ``p``."""
    from ..train.config import config_fields, setting_help

    by_name = {f.name: f for f in config_fields()}
    for title, names in groups.items():
        group = p.add_argument_group(title)
        for name in names:
            if name not in skip:
                train_option(group, by_name[name], setting_help(by_name[name]))


def add_train(sub):
    from ..train.config import RECIPES

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
    add_train_options(p, TRAIN_OPTIONS)
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bars, even on a terminal")
    p.set_defaults(func=_cmd_train)


def train_config_from_args(a, **fixed):
    """The TrainConfig that `ferkit train` arguments describe: the recipe, then every given option."""
    from ..models import parse_model_args
    from ..train import resolve_config

    given = {name: getattr(a, name) for names in TRAIN_OPTIONS.values() for name in names}
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
                                   "  ferkit calibrate fer2013-vgg --val-dir fer/validation --out vgg.cal.safetensors\n"
                                   "  ferkit calibrate runs/mixed --val-dir fer/valid --val-dir films --val-dir lab "
                                   "--per-domain   # a temperature per domain",
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
    p.add_argument("--per-domain", action="store_true",
                   help="with two or more --val-dir sets (domains): a temperature per domain, and a logistic "
                        "regression that reads each face's domain from the network's embedding; a face's logits "
                        "are divided by the temperatures weighted by how sure the reader is of each domain")
    p.add_argument("--domain-temperatures", type=_temperature_list, default=None, metavar="T1,T2,...",
                   help="with --per-domain: these temperatures, one per --val-dir in order (e.g. fitted on "
                        "out-of-fold logits), instead of fitting them on the sets (the reader is still fitted)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--strict", action="store_true", help="fail on undecodable images instead of skipping them")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="(default fp32)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_calibrate)


def _temperature_list(text: str) -> list[float]:
    """``T1,T2,...`` -> floats; anything else is argparse's one error line, naming the form."""
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers separated by commas, e.g. 0.78,0.69,1.37") from None


def _cmd_calibrate(a) -> int:
    from ..train.calibrate import calibrate_checkpoint, describe

    if a.domain_temperatures is not None and not a.per_domain:
        raise FerkitError("--domain-temperatures needs --per-domain")
    r = calibrate_checkpoint(a.model, a.val_dir, a.out, temperature=a.temperature, overwrite=a.overwrite,
                             batch_size=a.batch_size, precision=a.precision, device=a.device, strict=a.strict,
                             progress=not a.no_progress, per_domain=a.per_domain,
                             domain_temperatures=a.domain_temperatures)
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
