"""The training configuration and the named recipes that fill it.

A recipe is a set of field values; anything given explicitly overrides it, and the resolved
values are what a run folder's ``config.json`` records::

    cfg = resolve_config("fer2013", train_dir="fer/train", val_dir="fer/validation", out="runs/f", epochs=30)

``reference`` is the reference implementation's behaviour (and TrainConfig's defaults, so a plain
``TrainConfig(...)`` trains exactly as ferkit 0.1 did); ``fer2013`` is the recipe ferkit's bundled
model was trained with (see docs/model-card.md).
"""
from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import ClassVar, Protocol

from ..choices import DEVICE_HELP, LABEL_MODES, PRECISIONS, check_choice, check_device_name
from ..errors import FerkitError
from ..labels import parse_classes

# Metric that picks the best epoch -> True when higher is better. val_loss is the reference's; val_acc
# suits very small training sets, where any model more confident than the untrained one raises the
# validation loss long before it stops improving accuracy.
MONITORS = {"val_loss": False, "val_acc": True}
OPTIMIZERS = ("adam", "adamw", "sgd")
#: time_decay: the reference's Keras lr / (1 + decay * step); cosine: warm-up then cosine to 0;
#: onecycle: warm-up from lr/25 over 30% of the steps, then cosine to lr/1e4; plateau: x0.5 after
#: `plateau_patience` epochs without a better monitored metric; constant.
SCHEDULES = ("time_decay", "cosine", "onecycle", "plateau", "constant")


class RunConfig(Protocol):
    """What a run folder needs of a config (TrainConfig, GanConfig) to resume and continue runs."""

    unit: ClassVar[str]        # "epochs" or "iterations": what --epochs / --iterations count

    def identity(self) -> dict: ...
    def matches(self, saved: dict) -> bool: ...
    def differences(self, saved: dict) -> list[str]: ...
    def progress_of(self, saved: dict) -> tuple[int, int, str | None]: ...


class ResumableConfig:
    """identity / matches / differences for a config dataclass; ``_not_identity`` names the fields
    that may change between invocations of one run (where output goes, length, cosmetics)."""

    _not_identity: ClassVar[tuple[str, ...]] = ()

    def identity(self) -> dict:
        """The fields that must agree for a resume, JSON-shaped (tuples as lists)."""
        d = asdict(self)
        for k in self._not_identity:
            d.pop(k)
        return json.loads(json.dumps(d))

    def matches(self, saved: dict) -> bool:
        """Does a saved identity describe this config? Fields added since the run was saved count
        as their defaults, so older interrupted runs stay resumable."""
        current = self.identity()
        defaults = {f.name: f.default for f in fields(self) if f.name in current and f.default is not MISSING}
        defaults.update({f.name: json.loads(json.dumps(f.default_factory())) for f in fields(self)
                         if f.name in current and f.default_factory is not MISSING})
        return json.loads(json.dumps({**defaults, **saved})) == current

    def differences(self, saved: dict) -> list[str]:
        """Names of the identity fields that differ from a saved identity (for the error message)."""
        current = self.identity()
        return [k for k in current if k in saved and saved[k] != current[k]]


def setting(default=MISSING, help: str = "", *, factory=MISSING):
    """A config field described once: ``help`` is its ``--help`` text (and the docs' wording) for
    every command that offers it (``ferkit train``, ``ferkit study``, ``ferkit gan train``)."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def setting_help(f) -> str:
    """The help text of a config field made with :func:`setting`."""
    return f.metadata.get("help", "")


@dataclass(kw_only=True)
class Machine:
    """Where and how a run executes (not what it learns): the part shared by every training config
    (:class:`TrainConfig`, :class:`ferkit.train.gan.GanConfig`). Keyword-only, so a config's own
    required fields come first; ``config.json`` keeps these fields flat, as before the part existed."""

    precision: str = setting("auto", "auto: bf16/fp16 autocast where the CPU/GPU supports it natively, else fp32")
    device: str = setting("auto", DEVICE_HELP)
    strict: bool = setting(False, "fail on undecodable images instead of skipping them")
    num_threads: int | None = setting(None, "torch CPU threads (default: torch's choice)")
    progress: bool = setting(True, "progress bars on a terminal")

    def check_machine(self) -> None:
        """One line for a bad precision or device name; the device name normalised."""
        check_choice("precision", self.precision, PRECISIONS)
        self.device = check_device_name(self.device)
        if self.num_threads is not None and int(self.num_threads) < 1:
            raise FerkitError(f"num-threads must be at least 1 (got {self.num_threads})")


@dataclass
class TrainConfig(ResumableConfig, Machine):
    """Everything that defines a training run (saved in config.json; a resume must match it).

    The defaults are the ``reference`` recipe: the reference implementation's CNN and optimiser.
    """

    unit: ClassVar[str] = "epochs"
    _not_identity: ClassVar[tuple[str, ...]] = ("out", "progress", "num_threads", "epochs", "patience", "recipe")

    train_dir: str = setting(help="training data: class folders or manifest CSV")
    val_dir: str = setting(help="validation data (same classes)")
    out: str = setting(help="run folder to create (or resume)")
    recipe: str = setting("reference", "the named recipe whose values fill the fields not given")
    # several training sources (ferkit.train.domains): train_dir's sampling weight, and more sources
    # written PATH[:W]; one source at weight 1 is a plain run
    train_weight: float = setting(1.0, "sampling weight of --train-dir's first source (see --train-dir PATH[:W])")
    extra_train_dirs: tuple[str, ...] = setting((), "more training sources, each PATH[:W] (see --train-dir)")
    # model and data
    arch: str = setting("seed", "architecture (see `ferkit models`)")
    model_args: dict = setting(factory=dict, help="architecture arguments beyond classes and image size (width, "
                                                  "depths, ...); `ferkit models` lists each architecture's")
    image_size: int = setting(64, "square input side in pixels")
    classes: tuple[str, ...] | None = setting(None, "comma-separated classes, in model order ('all7' = the reference "
                                                    "six + neutral; default: the reference six the data has)")
    init: str | None = setting(None, "start from these weights instead of random ones (fine-tuning): a checkpoint, run"
                                     " folder or bundled model name such as fer2013-vgg. Architecture, its arguments, "
                                     "image size, input scaling and (unless given) classes come from it; a class it "
                                     "knows keeps its output weights")
    input_mean: float = setting(0.0, "model input = (pixel/255 - mean) / std")
    input_std: float = setting(1.0, "see --input-mean")
    # schedule of the run
    epochs: int = setting(50, "maximum epochs (a larger value continues a finished run)")
    batch_size: int = setting(64, "images per optimiser step")
    patience: int = setting(5, "stop after N epochs without a better --monitor; 0 = never")
    monitor: str = setting("val_loss", "validation metric that picks best.safetensors (and drives early stopping)")
    seed: int = setting(0, "random seed (same seed, same run)")
    train_limit: int | None = setting(None, "images per epoch (a random subset each epoch; default all)")
    val_limit: int | None = setting(None, "validation images (a fixed random subset; default all)")
    # optimiser
    optimizer: str = setting("adam", "adam (the reference's), adamw, or sgd (Nesterov momentum)")
    lr: float = setting(1e-4, "learning rate (peak rate for cosine/onecycle)")
    momentum: float = setting(0.9, "sgd momentum")
    weight_decay: float = setting(0.0, "weight decay (L2 for adam/sgd, decoupled for adamw)")
    schedule: str = setting("time_decay", "time_decay (reference), cosine (after --warmup-epochs), onecycle, plateau "
                                          "(x0.5), constant")
    lr_decay: float = setting(1e-6, "time_decay: lr / (1 + decay x step)")
    warmup_epochs: float = setting(0.0, "cosine: linear warm-up epochs")
    plateau_patience: int = setting(3, "plateau: epochs without improvement before the rate halves")
    grad_clip: float = setting(0.0, "clip the gradient norm to this; 0 = off")
    ema: float = setting(0.0, "keep an exponential moving average of the weights with this decay (e.g. 0.999) and "
                              "validate/save it; 0 = off")
    freeze_bn: bool = setting(False, "keep the batch-norm layers' running statistics (and their affine weights) as "
                                     "--init left them, so fine-tuning on other data does not move the statistics the"
                                     " model's first domain relies on; the rest of the network still learns")
    # loss
    label_smoothing: float = setting(0.0, "label smoothing of the cross-entropy")
    class_weights: bool = setting(False, "weight the loss by inverse class frequency (for rare classes such as "
                                         "disgust)")
    oversample: str | None = setting(None, "CLASS=N[,CLASS=N...]: every training face of CLASS is seen N more times "
                                           "per epoch (e.g. disgusted=5,fearful=5,contempt=5); with --labels soft, the"
                                           " faces whose FER+ majority-protocol label is CLASS")
    labels: str = setting("majority", "vote-label data (a FER+ folder with label.csv, or a manifest with one vote "
                                      "column per class): majority = the FER+ protocol (single votes dropped, faces "
                                      "without a majority dropped, hard labels); soft = train against the vote "
                                      "distribution (keeps the rare expressions' votes). Validation always uses the "
                                      "majority protocol")
    teacher: str | None = setting(None, "distil from this classifier (run folder, checkpoint or bundled name; "
                                        "comma-separated = an ensemble averaged in probability): its softened outputs "
                                        "on each augmented batch join the loss")
    distill_alpha: float = setting(0.5, "weight of the teacher's term: loss = (1-a) CE(labels) + a T^2 CE(student/T, "
                                        "teacher/T)")
    distill_temperature: float = setting(2.0, "temperature T that softens teacher and student outputs in that term")
    consistency: float = setting(0.0, "weight W of a consistency term: each batch is also seen slightly moved (shift, "
                                      "zoom 0.9-1.1, flip) and W x KL(answer on the batch || answer on the moved "
                                      "batch) joins the loss (the first answer is the target), aiming at steadier "
                                      "labels; about twice a step's time; 0 = off")
    consistency_shift: float = setting(4.0, "max shift of that moved view in each direction, pixels at 48 px (scaled "
                                            "to --image-size)")
    # augmentation (in torch, on whole batches)
    augment: bool = setting(False, "random flip, rotation, shift, zoom and aspect change")
    rotate: float = setting(10.0, "max rotation, degrees")
    shift: float = setting(0.08, "max shift, fraction of the half-side")
    zoom: float = setting(0.08, "max zoom in/out, fraction")
    aspect: float = setting(0.0, "max aspect-ratio change, fraction")
    erase: float = setting(0.0, "probability of random erasing per image")
    mixup: float = setting(0.0, "mixup Beta alpha (e.g. 0.2); 0 = off")
    cutmix: float = setting(0.0, "cutmix Beta alpha (e.g. 1.0); 0 = off; with --mixup one of the two per batch")
    photo: float = setting(0.0, "probability P of each real-photo condition per image: an occluder (a patch, or "
                                "dark glasses), low light or gamma, blur, low resolution, sensor noise and JPEG "
                                "compression, each drawn independently with probability P (e.g. 0.15); 0 = off. "
                                "Independent of --augment")

    def __post_init__(self):
        if self.classes is not None and not isinstance(self.classes, tuple):
            self.classes = parse_classes(self.classes)
        self.model_args = dict(self.model_args or {})
        from .domains import MAX_WEIGHT, check_sources

        self.extra_train_dirs = check_sources(self.extra_train_dirs or ())
        if not (math.isfinite(self.train_weight) and 0 < self.train_weight <= MAX_WEIGHT):
            raise FerkitError(f"the weight of --train-dir {self.train_dir} must be in (0, {MAX_WEIGHT:g}] "
                              f"(got {self.train_weight})")
        for name in ("epochs", "batch_size", "image_size"):
            if int(getattr(self, name)) < 1:
                raise FerkitError(f"{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        from ..models.record import MAX_IMAGE_SIZE

        if self.image_size > MAX_IMAGE_SIZE:   # what a checkpoint may hold: refused now, not after training
            raise FerkitError(f"image-size must be at most {MAX_IMAGE_SIZE} (got {self.image_size})")
        check_choice("recipe", self.recipe, RECIPES)
        check_choice("monitor", self.monitor, MONITORS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("labels", self.labels, LABEL_MODES)
        self.check_machine()
        from .distill import check_distill

        check_distill(self.distill_alpha, self.distill_temperature)
        from .consistency import check_consistency

        check_consistency(self.consistency, self.consistency_shift)
        if self.oversample is not None:
            self.oversample = ",".join(f"{c}={n}" for c, n in parse_oversample(self.oversample).items())
        if self.patience < 0:
            raise FerkitError("patience must be 0 (off) or positive")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise FerkitError(f"learning rate must be a positive number (got {self.lr})")
        for name, lo, hi in (("label_smoothing", 0, 1), ("erase", 0, 1),  ("ema", 0, 1), ("momentum", 0, 1),
                             ("zoom", 0, 0.9), ("aspect", 0, 0.9), ("shift", 0, 1)):
            value = getattr(self, name)
            if not (math.isfinite(value) and lo <= value < hi):
                raise FerkitError(f"{name.replace('_', '-')} must be in [{lo}, {hi}) (got {value})")
        for name in ("weight_decay", "grad_clip", "mixup", "cutmix", "warmup_epochs", "lr_decay", "rotate",
                     "plateau_patience"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise FerkitError(f"{name.replace('_', '-')} must be 0 or positive (got {getattr(self, name)})")
        if not (math.isfinite(self.photo) and 0 <= self.photo <= 1):
            raise FerkitError(f"photo must be a probability in [0, 1] (got {self.photo})")
        if self.warmup_epochs > self.epochs and self.warmup_epochs != RECIPES[self.recipe].get("warmup_epochs"):
            # a warm-up longer than the run trains at a fraction of --lr throughout (1e308: at ~0); a
            # recipe's own warm-up with a shortened --epochs is kept as it was (runs resume)
            raise FerkitError(f"warmup-epochs ({self.warmup_epochs:g}) must be at most epochs ({self.epochs})")
        if not (math.isfinite(self.input_std) and self.input_std > 0):
            raise FerkitError(f"input-std must be positive (got {self.input_std})")
        from ..models import resolve_model_args  # checks the architecture, its arguments and the image size

        self.model_args = resolve_model_args(self.arch, self.image_size, self.model_args)

    def sources(self) -> list:
        """Every training source with its weight (:class:`ferkit.train.domains.TrainSource`)."""
        from .domains import TrainSource, parse_source

        return [TrainSource(self.train_dir, self.train_weight), *map(parse_source, self.extra_train_dirs)]

    def progress_of(self, saved: dict) -> tuple[int, int, str | None]:
        """(epochs done, epochs planned, why it stopped early or None) of a saved run state."""
        done = len(saved["history"])
        stopped = bool(self.patience) and saved["bad_epochs"] >= self.patience
        why = f"no better {self.monitor} for {saved['bad_epochs']} epochs" if stopped else None
        return done, self.epochs, why


#: Named recipes: field values over TrainConfig's defaults. Any explicitly given value wins.
RECIPES: dict[str, dict] = {
    # The reference implementation: its CNN at 64 px, Adam 1e-4 with Keras time decay, plain
    # cross-entropy, early stopping on validation loss. TrainConfig's defaults, spelled out.
    "reference": {},
    # What reaches the literature's accuracy on FER2013 within hours on a 2-core CPU: a VGG-style
    # CNN with batch norm at the native 48 px, SGD with Nesterov momentum and weight decay, warm-up +
    # cosine, label smoothing, batched geometric augmentation with random erasing; the epoch is
    # picked by validation accuracy and nothing stops early (the schedule needs its last epochs).
    "fer2013": dict(arch="vgg", model_args={"width": 48}, image_size=48, input_mean=0.5, input_std=0.25,
                    epochs=60, batch_size=64, patience=0, monitor="val_acc",
                    optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                    warmup_epochs=3, grad_clip=5.0, label_smoothing=0.1,
                    augment=True, rotate=12.0, shift=0.2, zoom=0.15, aspect=0.1, erase=0.5),
}


def resolve_config(recipe: str = "reference", **values) -> TrainConfig:
    """A TrainConfig from a named recipe, with ``values`` (those not None) overriding it."""
    check_choice("recipe", recipe, RECIPES)
    given = {k: v for k, v in values.items() if v is not None}
    unknown = sorted(set(given) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise FerkitError(f"unknown training option(s): {', '.join(unknown)}")
    merged = {**RECIPES[recipe], **given, "recipe": recipe}
    if "arch" in given and given["arch"] != RECIPES[recipe].get("arch", "seed") and "model_args" not in given:
        merged["model_args"] = {}  # another architecture: the recipe's arguments were for its own
    if given.get("init"):
        merged.update(_model_of_init(str(given["init"]), given))
    return TrainConfig(**merged)


def _model_of_init(init: str, given: dict) -> dict:
    """The model fields of a run that starts from checkpoint ``init``: the checkpoint's architecture,
    arguments, image size, input scaling and (unless given) classes. A given value that differs is
    an error, since the weights would not fit (classes may differ: the output layer is matched by name)."""
    from ..bundled import BUNDLED, resolve_model_path
    from ..models.opened import find_model
    from ..models.registry import resolve_model_args

    if not resolve_model_path(init).exists():
        raise FerkitError(f"--init {init}: no such checkpoint or run folder, and not a bundled model "
                          f"({', '.join(BUNDLED)})")
    try:
        _, record = find_model(init, onnx_advice="training starts from the ferkit checkpoint it was exported from "
                                                 "(a run folder or .safetensors)")
    except FerkitError as exc:
        raise FerkitError(f"--init {init}: {exc}") from None
    spec = record.input
    if spec.channels != 1 or spec.pixel_max != 255.0 or len(set(spec.mean)) != 1 or len(set(spec.std)) != 1:
        raise FerkitError(f"--init {init}: its input contract ({spec.to_json()}) is not one ferkit train can "
                          "reproduce (gray, pixel/255, one mean and std)")
    model = {"arch": record.arch, "model_args": dict(record.model_args), "image_size": record.image_size,
             "input_mean": spec.mean[0], "input_std": spec.std[0]}
    for name, value in model.items():
        if name not in given:
            continue
        mine = given[name]
        if name == "model_args":
            mine = resolve_model_args(record.arch, record.image_size, {**record.model_args, **given[name]})
            value = resolve_model_args(record.arch, record.image_size, value)
        if mine != value:
            flag = "--model-arg" if name == "model_args" else "--" + name.replace("_", "-")
            raise FerkitError(f"{flag} {_plain(given[name])} differs from the initial weights' {_plain(value)} "
                              f"(--init {init}); leave it out to take the checkpoint's")
    if "classes" not in given:
        model["classes"] = tuple(record.classes)
    return model


def _plain(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def config_fields() -> list:
    """TrainConfig's fields (for building CLI options and study configs from one place)."""
    return list(fields(TrainConfig))


#: The most extra copies ``--oversample`` may ask for of one class's faces.
MAX_OVERSAMPLE = 100


def parse_oversample(spec: str) -> dict[str, int]:
    """``"disgusted=5,fearful=5"`` -> {class: extra copies}: canonical class names (aliases such as
    "fear" accepted), whole numbers >= 1. Raises FerkitError with the bad part named."""
    from ..labels import canonical_class

    out: dict[str, int] = {}
    for part in (p.strip() for p in str(spec).split(",")):
        name, sep, count = part.partition("=")
        canon = canonical_class(name) if sep else None
        if canon is None or not count.strip().isdecimal() or int(count) < 1:
            raise FerkitError(f"--oversample: expected CLASS=N pairs with N >= 1 extra copies, e.g. "
                              f"disgusted=5,fearful=5 (got {part!r})")
        if int(count) > MAX_OVERSAMPLE:   # each copy is held in memory: 1e8 copies asked for terabytes
            raise FerkitError(f"--oversample {canon}={int(count)}: at most {MAX_OVERSAMPLE} extra copies of a class "
                              "(5 already makes a rare class as frequent as a common one in FER2013)")
        if canon in out:
            raise FerkitError(f"--oversample lists class {canon!r} twice")
        out[canon] = int(count)
    return out
