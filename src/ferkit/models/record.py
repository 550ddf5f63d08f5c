"""Self-describing checkpoints: safetensors weights + one typed JSON record, never unpickled.

The record is read once, when a checkpoint is opened, into a :class:`CheckpointRecord`; its
:class:`InputSpec` is the model's input contract, from which evaluation, prediction and ONNX export
build their preprocessing (timm's ``resolve_data_config`` idea)::

    model, record = load_checkpoint("runs/exp1")       # run folder, .safetensors file
    x = record.input.to_tensor(faces_uint8)            # (N, H, W) uint8 -> (N, C, H, W) float, normalised
    model(x)

Format versions: 1 (ferkit 0.1: no model arguments, fixed [0, 1] scaling) and 2 (model arguments,
input mean/std). Version 1 files keep loading; a file from a newer format is refused with one line.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..errors import FerkitError
from ..files import refuse_non_regular, write_safetensors
from .registry import create_model

FORMAT_VERSION = 2
_FORMAT_PREFIX = "ferkit-checkpoint-"
CHECKPOINT_FORMAT = f"{_FORMAT_PREFIX}{FORMAT_VERSION}"

#: How files become gray uint8 faces (ferkit.data.decode_image + resize_face); stored for the record.
DECODING = {"color": "gray", "gray_weights": "ITU-R 601-2 luma", "alpha": "composited on black",
            "orientation": "EXIF applied", "resize": "area (down) / linear (up)"}


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: square gray faces of ``image_size``, divided by ``pixel_max`` (to
    [0, 1]) then normalised with ``mean``/``std`` per channel (the gray repeated when ``channels`` is 3)."""

    image_size: int
    channels: int = 1
    pixel_max: float = 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise FerkitError(f"input channels must be 1 or 3 (got {self.channels})")
        for name in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) == 1:
                value = value * self.channels
            if len(value) != self.channels:
                raise FerkitError(f"input {name} needs 1 or {self.channels} values (got {len(value)})")
            object.__setattr__(self, name, value)
        if min(self.std) <= 0:
            raise FerkitError("input std must be positive")
        check_input_numbers(self)

    def to_tensor(self, faces, device: torch.device | str | None = None) -> torch.Tensor:
        """uint8 faces (N, H, W) -> float32 (N, C, H, W), scaled and normalised (on ``device``)."""
        x = torch.as_tensor(faces)
        if device is not None:
            x = x.to(device, non_blocking=True)
        return self.normalize(x.unsqueeze(1).float().div_(self.pixel_max))

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Scaled float faces (N, 1, H, W) -> normalised model input (N, C, H, W)."""
        if self.channels != 1:
            x01 = x01.expand(-1, self.channels, -1, -1)
        if self.mean == (0.0,) * self.channels and self.std == (1.0,) * self.channels:
            return x01
        mean = torch.tensor(self.mean, device=x01.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x01.device).view(1, -1, 1, 1)
        return (x01 - mean) / std

    def to_json(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "decoding": DECODING}

    @classmethod
    def from_json(cls, d: dict) -> InputSpec:
        return cls(int(d["image_size"]), int(d.get("channels", 1)), float(d.get("pixel_max", 255.0)),
                   tuple(d.get("mean", (0.0,))), tuple(d.get("std", (1.0,))))


@dataclass
class CheckpointRecord:
    """Everything a checkpoint says about itself, typed. ``extra`` keeps fields this version
    does not interpret (they are written back unchanged)."""

    arch: str
    classes: tuple[str, ...]
    input: InputSpec
    model_args: dict = field(default_factory=dict)
    epoch: int | None = None
    val_metrics: dict = field(default_factory=dict)
    train_config: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    ferkit_version: str = __version__
    extra: dict = field(default_factory=dict)
    kind: str = "classifier"        # classifier | generator (an expression editor from `ferkit gan train`)
    #: Temperature scaling (``ferkit calibrate``): probabilities are softmax(logits / temperature)
    #: wherever ferkit produces them; 1.0 = uncalibrated (every checkpoint written before it existed).
    temperature: float = 1.0
    calibration: dict = field(default_factory=dict)   # how the temperature was fitted (data, n, NLL/ECE)
    #: A temperature per domain, the domain read from the face (``ferkit calibrate --per-domain``; see
    #: :mod:`ferkit.models.domain_temperature`); {} = none. It replaces ``temperature`` where set.
    domain_temperature: dict = field(default_factory=dict)

    def __post_init__(self):
        self.temperature = check_temperature(self.temperature)
        self.domain_temperature = check_domain_temperature(self.domain_temperature)

    @property
    def image_size(self) -> int:
        return self.input.image_size

    def build_model(self) -> nn.Module:
        if self.kind == "generator":
            from .gan import create_generator

            return create_generator(len(self.classes), self.image_size, **self.model_args)
        return create_model(self.arch, len(self.classes), self.image_size, **self.model_args)

    def to_json(self) -> dict:
        return {**self.extra, "format": CHECKPOINT_FORMAT, "kind": self.kind, "ferkit_version": __version__,
                "arch": self.arch,
                "model_args": _jsonable(self.model_args), "classes": list(self.classes),
                "image_size": self.image_size, "input": self.input.to_json(), "epoch": self.epoch,
                "val_metrics": self.val_metrics, "train_config": self.train_config,
                "temperature": self.temperature, "calibration": self.calibration,
                **({"domain_temperature": self.domain_temperature} if self.domain_temperature else {})}

    @classmethod
    def from_json(cls, d: dict, where: str = "checkpoint") -> CheckpointRecord:
        version = _format_version(d.get("format"), where)
        known = {"format", "ferkit_version", "arch", "model_args", "classes", "image_size", "input", "epoch",
                 "val_metrics", "train_config", "channels", "preprocessing", "kind", "temperature", "calibration",
                 "domain_temperature"}
        temperature = check_temperature(d.get("temperature", 1.0), f"{where}: the record's temperature")
        try:
            if version == 1:  # ferkit 0.1: fixed architectures, [0, 1] scaling, no mean/std
                spec = InputSpec(int(d["image_size"]), int(d.get("channels", 1)))
                model_args = {}
            else:
                spec = InputSpec.from_json(d["input"])
                model_args = {k: tuple(v) if isinstance(v, list) else v for k, v in d.get("model_args", {}).items()}
            return cls(arch=str(d["arch"]), classes=check_record_classes(d["classes"]), input=spec,
                       model_args=model_args,
                       epoch=d.get("epoch"), val_metrics=d.get("val_metrics") or {},
                       train_config=d.get("train_config") or {}, format_version=version,
                       ferkit_version=str(d.get("ferkit_version", "?")),
                       extra={k: v for k, v in d.items() if k not in known}, kind=str(d.get("kind", "classifier")),
                       temperature=temperature,
                       calibration=d["calibration"] if isinstance(d.get("calibration"), dict) else {},
                       domain_temperature=d.get("domain_temperature") or {})
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            raise FerkitError(f"{where}: ferkit metadata is damaged") from None
        except FerkitError as exc:   # a class list or input contract that fails its check
            raise FerkitError(f"{where}: {exc}") from None


#: The temperatures a checkpoint may carry (a fitted one lies in 0.05-20). Far outside, the logits
#: divided by it are all ~0 (every probability 1/classes, the first class always "wins") or one-hot.
TEMPERATURE_LIMITS = (0.01, 100.0)


def check_temperature(value, what: str = "temperature") -> float:
    """A softmax temperature as a float; anything but a finite number within
    :data:`TEMPERATURE_LIMITS` is one clear error."""
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = float("nan")
    lo, hi = TEMPERATURE_LIMITS
    if isinstance(value, bool) or not math.isfinite(t) or not lo <= t <= hi:
        raise FerkitError(f"{what} must be a number from {lo:g} to {hi:g} (1 = uncalibrated; got {value!r})")
    return t


#: The largest face side a checkpoint may ask for (ferkit's models use 48-64 px).
MAX_IMAGE_SIZE = 1024


def check_input_numbers(spec: InputSpec) -> None:
    """The input contract's numbers, checked where a record is made or read: a whole image size
    of 1-MAX_IMAGE_SIZE, a positive finite pixel maximum, finite means and positive finite stds."""
    size = spec.image_size
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
        raise FerkitError(f"input image size must be a whole number of 1-{MAX_IMAGE_SIZE} pixels (got {size!r})")
    if not (math.isfinite(spec.pixel_max) and spec.pixel_max > 0):
        raise FerkitError(f"input pixel_max must be a positive finite number (got {spec.pixel_max!r})")
    if not all(math.isfinite(v) for v in (*spec.mean, *spec.std)):
        raise FerkitError(f"input mean and std must be finite numbers (got {spec.mean}, {spec.std})")


def check_record_classes(classes) -> tuple[str, ...]:
    """A record's classes: a list of at least two distinct known expression names (canonical spelling)."""
    from ..labels import EXPRESSIONS

    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise FerkitError("ferkit metadata is damaged (its classes are not a list of names)")
    unknown = [c for c in classes if c not in EXPRESSIONS]
    if unknown:
        raise FerkitError(f"unknown class {unknown[0][:40]!r} in its record (known: {', '.join(EXPRESSIONS)})")
    if len(set(classes)) != len(classes):
        twice = next(c for c in classes if list(classes).count(c) > 1)
        raise FerkitError(f"class {twice!r} appears twice in its record")
    if len(classes) < 2:
        raise FerkitError(f"its record has {len(classes)} class(es); a model needs at least two")
    return tuple(classes)


def _jsonable(args: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}


def _format_version(fmt, where) -> int:
    if not isinstance(fmt, str) or not fmt.startswith(_FORMAT_PREFIX) or not fmt[len(_FORMAT_PREFIX):].isdigit():
        raise FerkitError(f"{where}: unknown checkpoint format {fmt!r}")
    version = int(fmt[len(_FORMAT_PREFIX):])
    if version > FORMAT_VERSION:
        raise FerkitError(f"{where} was written by a newer ferkit (format {version}; this ferkit {__version__} "
                          f"reads formats 1-{FORMAT_VERSION}): upgrade ferkit to load it")
    return version


# ----------------------------------------------------------------------------- files
def save_checkpoint(model: nn.Module, path: str | os.PathLike, record: CheckpointRecord,
                    dtype: torch.dtype | None = None) -> Path:
    """Write weights + JSON record atomically. ``dtype`` (e.g. torch.float16) stores floating
    weights in that type (they are loaded back as float32)."""
    path = Path(path)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.contiguous()
    return write_safetensors(path, state, {"ferkit": json.dumps(record.to_json())})


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder means its best checkpoint; a file is taken as is."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return p / name
        if (p / "generator.safetensors").is_file():
            raise FerkitError(f"{p} is a GAN run (an expression generator): `ferkit gan evaluate` and `ferkit synth "
                              "edit` take it; this command needs a classifier")
        if (p / "config.json").is_file():
            raise FerkitError(f"{p} is a run folder without a checkpoint yet (none is written before its first "
                              "epoch ends): resume the run, or give another model")
        raise FerkitError(f"{p} is a folder without best.safetensors or last.safetensors: not a ferkit run folder")
    if not p.exists():
        raise FerkitError(f"checkpoint {p} does not exist")
    refuse_non_regular(p, "checkpoint")   # a FIFO would block the read forever
    if p.suffix.lower() in (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"):
        raise FerkitError(f"{p} is a pickled PyTorch file: ferkit never unpickles files (loading one can run any "
                          "code); it reads ferkit checkpoints (.safetensors), run folders and .onnx files")
    return p


def read_checkpoint_record(path: str | os.PathLike) -> CheckpointRecord:
    """Read only the record of a checkpoint (cheap: the header, not the weights)."""
    from safetensors import safe_open

    p = resolve_checkpoint(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for non-safetensors files
        raise FerkitError(f"{p} is not a safetensors checkpoint ({str(exc).splitlines()[0][:120]})") from None
    if "ferkit" not in meta:
        raise FerkitError(f"{p} is a safetensors file but not a ferkit checkpoint (no ferkit metadata)")
    try:
        raw = json.loads(meta["ferkit"])
    except ValueError:
        raise FerkitError(f"{p}: ferkit metadata is damaged") from None
    if not isinstance(raw, dict):
        raise FerkitError(f"{p}: ferkit metadata is damaged")
    return CheckpointRecord.from_json(raw, where=str(p))


_KIND_HINT = {"classifier": "a classifier (from `ferkit train`)",
              "generator": "an expression generator (from `ferkit gan train`)"}


def kind_mismatch(has: str, needs: str, where) -> FerkitError:
    """The one line for a model of kind ``has`` given where one of kind ``needs`` is needed."""
    return FerkitError(f"{where} is {_KIND_HINT.get(has, has)}, but {_KIND_HINT.get(needs, needs)} is needed here")


def check_kind(record: CheckpointRecord, kind: str, where) -> None:
    """A generator given where a classifier is needed (or the reverse) is one clear error."""
    if record.kind != kind:
        raise kind_mismatch(record.kind, kind, where)


def _read_weights(path, kind: str) -> tuple[Path, CheckpointRecord, dict]:
    """(file, record, tensors) of a checkpoint of ``kind``, with one clear error for a damaged file."""
    from safetensors.torch import load_file

    p = resolve_checkpoint(path)
    record = read_checkpoint_record(p)
    check_kind(record, kind, p)
    try:
        state = load_file(str(p), device="cpu")
    except Exception as exc:  # safetensors' own error type: a truncated or damaged file
        raise FerkitError(f"{p}: cannot read weights ({str(exc).splitlines()[0][:120]})") from None
    check_weights(p, record, state)
    return p, record, state


class _TooBig(Exception):
    pass


def _shapes_of_record(record: CheckpointRecord, budget: int) -> dict[str, tuple[tuple, torch.dtype]]:
    """Name -> (shape, dtype) of the model a record describes, worked out on torch's meta device
    (no memory is allocated). A build that registers more than ``budget`` elements is stopped
    as soon as it does (a record asking for a terabyte model costs nothing)."""
    from torch.nn.modules import module as module_hooks

    count = [0]

    def hook(_module, _name, tensor):
        if tensor is not None:
            count[0] += tensor.numel()
            if count[0] > budget:
                raise _TooBig
    handles = [module_hooks.register_module_parameter_registration_hook(hook),
               module_hooks.register_module_buffer_registration_hook(hook)]
    try:
        with torch.device("meta"):
            model = record.build_model()
    finally:
        for h in handles:
            h.remove()
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def check_weights(p, record: CheckpointRecord, state: dict) -> None:
    """The weights a file holds against the model its record describes, before that model is
    built: the model's size (computed from its arguments on torch's meta device) must be the
    file's, tensor for tensor; floating-point tensors must be floating point and finite."""
    held = sum(t.numel() for t in state.values())
    args = ", ".join(f"{k}={v}" for k, v in record.model_args.items())
    what = f"{record.arch}{f' ({args})' if args else ''}, {record.image_size} px"
    try:
        shapes = _shapes_of_record(record, budget=2 * held + 1_000_000)   # slack: buffers not saved
    except _TooBig:
        raise FerkitError(f"{p}: its record describes a model ({what}) larger than the {held:,} weights the file "
                          "holds: the record is damaged or not ferkit's") from None
    except FerkitError:
        raise
    except Exception:  # noqa: BLE001 - an architecture that cannot be built on the meta device: checked below
        shapes = None
    if shapes is not None:
        missing = [k for k in shapes if k not in state]
        extra = [k for k in state if k not in shapes]
        wrong = [k for k in shapes if k in state and tuple(state[k].shape) != shapes[k][0]]
        if missing or extra or wrong:
            first = (f"tensor {wrong[0]!r} is {tuple(state[wrong[0]].shape)}, expected {shapes[wrong[0]][0]}" if wrong
                     else f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {extra[0]!r}")
            raise FerkitError(f"{p}: weights do not match architecture {what}: {first}")
    for k, t in state.items():
        floating = shapes[k][1].is_floating_point if shapes is not None else t.is_floating_point()
        if floating and not t.is_floating_point():
            raise FerkitError(f"{p}: tensor {k!r} is {str(t.dtype).replace('torch.', '')}; weights must be "
                              "floating point")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise FerkitError(f"{p}: tensor {k!r} holds NaN or infinite values; the checkpoint is damaged (a run that "
                              "diverged, or a broken file)")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu",
                    kind: str = "classifier") -> tuple[nn.Module, CheckpointRecord]:
    """Rebuild the model a checkpoint names, with its arguments, and load its weights (eval mode).

    Raises FerkitError if the file is not a ferkit checkpoint, is of another ``kind`` (a GAN
    generator given where a classifier is expected, or the reverse) or its weights do not fit.
    """
    p, record, state = _read_weights(path, kind)
    model = record.build_model()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise FerkitError(f"{p}: weights do not match architecture {record.arch!r}: {first[:160]}") from None
    return model.to(device).eval(), record


def init_from_checkpoint(model: nn.Module, path: str | os.PathLike, classes: tuple[str, ...]) -> str:
    """Start ``model`` from a checkpoint's weights (fine-tuning); returns a line saying what was kept.

    Every tensor but the output layer must match by name and shape (same architecture, arguments
    and image size). The output layer is matched by class name: a class the checkpoint knows keeps
    its row of weights wherever it sits in ``classes``; a new class keeps its fresh initialisation.
    """
    p, record, state = _read_weights(path, "classifier")
    head = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    own = model.state_dict()
    body = {k: v for k, v in own.items() if not k.startswith(head + ".")}
    mismatch = sorted(k for k in body if k not in state or state[k].shape != body[k].shape)
    if mismatch or any(k not in own for k in state if not k.startswith(head + ".")):
        raise FerkitError(f"initial weights {p} ({record.arch} {record.model_args}, {record.image_size} px) do not "
                          f"fit this model: first difference at {(mismatch or ['extra tensors'])[0]!r}; "
                          "the architecture, its arguments and the image size must be the checkpoint's")
    new = {k: state[k].to(v.dtype) for k, v in body.items()}
    known = {c: i for i, c in enumerate(record.classes)}
    kept = [c for c in classes if c in known]
    for suffix in ("weight", "bias"):
        key = f"{head}.{suffix}"
        if key in own:
            rows = own[key].clone()
            for i, c in enumerate(classes):
                if c in known:
                    rows[i] = state[key][known[c]].to(rows.dtype)
            new[key] = rows
    model.load_state_dict({**own, **new}, strict=True)
    fresh = [c for c in classes if c not in known]
    return (f"initial weights: {p} (epoch {record.epoch}); output weights kept for {len(kept)} of {len(classes)} "
            "classes" + (f", new: {', '.join(fresh)}" if fresh else ""))


#: The keys of a record's ``domain_temperature`` (see :mod:`ferkit.models.domain_temperature`)
DOMAIN_TEMPERATURE_KEYS = ("domains", "temperatures", "weight", "bias")


def check_domain_temperature(spec, what: str = "domain temperature") -> dict:
    """``spec`` as a record keeps it ({} = none), checked: D >= 2 domain names, D temperatures within
    the record's limits, a D x F reader weight and D biases, every number finite."""
    if not spec:
        return {}
    try:
        domains = [str(d) for d in spec["domains"]]
        temps = [check_temperature(t, f"{what}: the temperature of {d}") for d, t in zip(domains, spec["temperatures"])]
        weight = [[float(v) for v in row] for row in spec["weight"]]
        bias = [float(v) for v in spec["bias"]]
    except (KeyError, TypeError, ValueError):
        raise FerkitError(f"{what} is damaged (needs {', '.join(DOMAIN_TEMPERATURE_KEYS)})") from None
    n = len(domains)
    if n < 2 or len(temps) != n or len(weight) != n or len(bias) != n or len({len(r) for r in weight}) != 1:
        raise FerkitError(f"{what} is damaged: {n} domains, {len(temps)} temperatures, {len(weight)} x "
                          f"{len(weight[0]) if weight else 0} reader weights, {len(bias)} biases")
    if not all(math.isfinite(v) for row in weight for v in row) or not all(math.isfinite(v) for v in bias):
        raise FerkitError(f"{what}: the reader's weights must be finite numbers")
    return {"domains": domains, "temperatures": temps, "weight": weight, "bias": bias,
            **{k: v for k, v in spec.items() if k not in DOMAIN_TEMPERATURE_KEYS}}
