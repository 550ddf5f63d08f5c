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

from ..choices import LABEL_MODES, PRECISIONS, check_choice, check_device_name
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


@dataclass
class TrainConfig(ResumableConfig):
    """Everything that defines a training run (saved in config.json; a resume must match it).

    The defaults are the ``reference`` recipe: the reference implementation's CNN and optimiser.
    """

    unit: ClassVar[str] = "epochs"
    _not_identity: ClassVar[tuple[str, ...]] = ("out", "progress", "num_threads", "epochs", "patience", "recipe")

    train_dir: str
    val_dir: str
    out: str
    recipe: str = "reference"
    # model and data
    arch: str = "seed"
    model_args: dict = field(default_factory=dict)  # builder arguments beyond classes/size (width, depths, ...)
    image_size: int = 64
    classes: tuple[str, ...] | None = None   # None: the reference six present in train_dir
    init: str | None = None         # start from these weights (checkpoint, run folder, bundled model name)
    input_mean: float = 0.0         # model input = (pixel / 255 - mean) / std
    input_std: float = 1.0
    # schedule of the run
    epochs: int = 50
    batch_size: int = 64
    patience: int = 5               # early stopping on the monitored metric; 0 disables
    monitor: str = "val_loss"       # what picks the best epoch and drives early stopping: val_loss | val_acc
    seed: int = 0
    train_limit: int | None = None  # images per epoch (the reference's --num_train); None = all
    val_limit: int | None = None    # validation images (the reference's --num_val); None = all
    # optimiser
    optimizer: str = "adam"
    lr: float = 1e-4
    momentum: float = 0.9           # sgd: Nesterov momentum
    weight_decay: float = 0.0
    schedule: str = "time_decay"
    lr_decay: float = 1e-6          # time_decay: lr / (1 + decay * step)
    warmup_epochs: float = 0.0      # cosine: linear warm-up from 0
    plateau_patience: int = 3       # plateau: epochs without improvement before the lr halves
    grad_clip: float = 0.0          # max global gradient norm; 0 = off
    ema: float = 0.0                # decay of an exponential moving average of weights (e.g. 0.999); 0 = off
    # loss
    label_smoothing: float = 0.0
    class_weights: bool = False     # weight the loss by inverse class frequency
    oversample: str | None = None   # "disgusted=5,fearful=5": that many more copies of each face of those classes
    labels: str = "majority"        # vote-label data (FER+): majority (the FER+ protocol) | soft (vote distributions)
    teacher: str | None = None      # distil from this classifier (comma-separated: an ensemble)
    distill_alpha: float = 0.5      # weight of the teacher's term in the loss
    distill_temperature: float = 2.0  # softening of teacher and student outputs in that term
    consistency: float = 0.0        # weight of KL(first view || slightly shifted/zoomed/flipped view); 0 = off
    consistency_shift: float = 4.0  # max shift of that second view, pixels at 48 px (scaled to image_size)
    # augmentation (in torch, on whole batches)
    augment: bool = False           # random flip, rotation, shift, zoom, aspect
    rotate: float = 10.0            # degrees, +-
    shift: float = 0.08             # fraction of the half-side, +-
    zoom: float = 0.08              # +- fraction
    aspect: float = 0.0             # +- fraction of the aspect ratio
    erase: float = 0.0              # probability of random erasing per image
    mixup: float = 0.0              # Beta(alpha, alpha) of mixup; 0 = off
    cutmix: float = 0.0             # Beta(alpha, alpha) of cutmix; 0 = off (with mixup: one of the two per batch)
    # machine
    precision: str = "auto"         # auto | fp32 | bf16
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    strict: bool = False            # undecodable images are fatal instead of skipped
    num_threads: int | None = None  # torch CPU threads; None = torch default
    progress: bool = True

    def __post_init__(self):
        if self.classes is not None and not isinstance(self.classes, tuple):
            self.classes = parse_classes(self.classes)
        self.model_args = dict(self.model_args or {})
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
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("labels", self.labels, LABEL_MODES)
        from .distill import check_distill

        check_distill(self.distill_alpha, self.distill_temperature)
        from .consistency import check_consistency

        check_consistency(self.consistency, self.consistency_shift)
        if self.oversample is not None:
            self.oversample = ",".join(f"{c}={n}" for c, n in parse_oversample(self.oversample).items())
        self.device = check_device_name(self.device)
        if self.patience < 0:
            raise FerkitError("patience must be 0 (off) or positive")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise FerkitError(f"learning rate must be a positive number (got {self.lr})")
        for name, lo, hi in (("label_smoothing", 0, 1), ("erase", 0, 1), ("ema", 0, 1), ("momentum", 0, 1),
                             ("zoom", 0, 0.9), ("aspect", 0, 0.9), ("shift", 0, 1)):
            value = getattr(self, name)
            if not (math.isfinite(value) and lo <= value < hi):
                raise FerkitError(f"{name.replace('_', '-')} must be in [{lo}, {hi}) (got {value})")
        for name in ("weight_decay", "grad_clip", "mixup", "cutmix", "warmup_epochs", "lr_decay", "rotate",
                     "plateau_patience"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise FerkitError(f"{name.replace('_', '-')} must be 0 or positive (got {getattr(self, name)})")
        if self.warmup_epochs > self.epochs and self.warmup_epochs != RECIPES[self.recipe].get("warmup_epochs"):
            # a warm-up longer than the run trains at a fraction of --lr throughout (1e308: at ~0); a
            # recipe's own warm-up with a shortened --epochs is kept as it was (runs resume)
            raise FerkitError(f"warmup-epochs ({self.warmup_epochs:g}) must be at most epochs ({self.epochs})")
        if not (math.isfinite(self.input_std) and self.input_std > 0):
            raise FerkitError(f"input-std must be positive (got {self.input_std})")
        from ..models import resolve_model_args  # checks the architecture, its arguments and the image size

        self.model_args = resolve_model_args(self.arch, self.image_size, self.model_args)

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
