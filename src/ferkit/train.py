"""Training: the canonical loop, early stopping, and a self-contained run folder.

Example::

    ferkit train --train-dir data/train --val-dir data/val --out runs/exp1 --epochs 30

Run folder (RUN_DIR)::

    config.json        the training config, classes, image size, data counts, skipped files
    history.csv        per epoch: train/val loss and accuracy, learning rate, seconds
    curves.png         accuracy and loss per epoch, train vs validation
    best.safetensors   weights of the best epoch by cfg.monitor (+ JSON record in the header)
    last.safetensors   weights after the last epoch
    summary.json       best epoch, its validation loss/accuracy/macro-F1; seconds (all epochs, across
                       resumes) and wall_seconds (the last invocation, decoding included)
    state/             resume state while training runs (removed when the run completes)

An interrupted run resumes from its last finished epoch when the same command is run again.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import PREPROCESSING, ImageSet, load_dataset, log, to_float
from .errors import FerkitError
from .files import atomic_path, make_dir, save_figure, write_json
from .labels import parse_classes
from .models import count_parameters, create_model, save_checkpoint

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
# Metric that picks the best epoch -> True when higher is better. val_loss is the reference's; val_acc
# suits very small training sets, where any model more confident than the untrained one raises the
# validation loss long before it stops improving accuracy.
MONITORS = {"val_loss": False, "val_acc": True}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as config.json; a resume must match it)."""

    train_dir: str
    val_dir: str
    out: str
    arch: str = "seed"
    image_size: int = 64
    classes: tuple[str, ...] | None = None   # None: the reference six present in train_dir
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-4
    lr_decay: float = 1e-6          # Keras-style time decay: lr / (1 + decay * step)
    patience: int = 5               # early stopping on the monitored metric; 0 disables
    monitor: str = "val_loss"       # what picks the best epoch and drives early stopping: val_loss | val_acc
    seed: int = 0
    augment: bool = False           # flips, small shifts and rotations
    precision: str = "auto"         # auto | fp32 | bf16
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    train_limit: int | None = None  # images per epoch (the reference's --num_train); None = all
    val_limit: int | None = None    # validation images (the reference's --num_val); None = all
    strict: bool = False            # undecodable images are fatal instead of skipped
    num_threads: int | None = None  # torch CPU threads; None = torch default
    progress: bool = True

    def __post_init__(self):
        if self.classes is not None and not isinstance(self.classes, tuple):
            self.classes = parse_classes(self.classes)
        for name in ("epochs", "batch_size", "image_size"):
            if int(getattr(self, name)) < 1:
                raise FerkitError(f"{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.patience < 0:
            raise FerkitError("patience must be 0 (off) or positive")
        if not self.lr > 0:
            raise FerkitError("learning rate must be positive")
        if self.monitor not in MONITORS:
            raise FerkitError(f"monitor must be one of {', '.join(MONITORS)} (got {self.monitor!r})")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise FerkitError(f"precision must be auto, fp32 or bf16 (got {self.precision!r})")

    def identity(self) -> dict:
        """The fields that must agree for a resume (not where output goes, not cosmetics)."""
        d = asdict(self)
        for k in ("out", "progress", "num_threads", "epochs", "patience"):
            d.pop(k)
        d["classes"] = list(d["classes"]) if d["classes"] else None
        return d

    def matches(self, saved: dict) -> bool:
        """Does a saved identity describe this config? Fields added to TrainConfig since the run was
        saved count as their defaults, so older interrupted runs stay resumable."""
        current = self.identity()
        defaults = {f.name: f.default for f in fields(self) if f.name in current and f.default is not MISSING}
        return {**defaults, **saved} == current


@dataclass
class RunResult:
    run_dir: Path
    classes: tuple[str, ...]
    best_epoch: int
    best_val_loss: float
    best_val_acc: float
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0            # training + validation time of every epoch, across resumed invocations
    wall_seconds: float = 0.0       # this invocation, decoding included


# ----------------------------------------------------------------------------- hardware
def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FerkitError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels here (AVX512-BF16/AMX); emulated bf16 is slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype to use, or None for plain fp32."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" or cpu_supports_bf16():
        return torch.bfloat16
    return None


# ----------------------------------------------------------------------------- augmentation
def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Classic augmentation on a float batch: horizontal flip, +-10 deg rotation, +-8% shift, +-8% zoom."""
    n = x.shape[0]
    r = torch.rand(n, 4, generator=gen, device="cpu").to(x.device)
    angle = (r[:, 0] - 0.5) * math.radians(20)
    scale = 1 + (r[:, 1] - 0.5) * 0.16
    flip = torch.where(torch.rand(n, generator=gen).to(x.device) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, (r[:, 2] - 0.5) * 0.16], 1),
                         torch.stack([sin * flip, cos, (r[:, 3] - 0.5) * 0.16], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ----------------------------------------------------------------------------- loops
def _batches(n: int, batch_size: int, order: torch.Tensor | None = None):
    idx = order if order is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        yield idx[start:start + batch_size]


def train_one_epoch(model, opt, sched, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                    gen: torch.Generator, device, amp_dtype, desc: str) -> dict:
    """One pass over (a random subset of) the training set. Returns loss and accuracy."""
    from tqdm import tqdm

    model.train()
    n = len(labels) if cfg.train_limit is None else min(cfg.train_limit, len(labels))
    order = torch.randperm(len(labels), generator=gen)[:n]
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(total=n, desc=desc, unit="img", leave=False, disable=not cfg.progress, dynamic_ncols=True)
    for idx in _batches(n, cfg.batch_size, order):
        x = to_float(images[idx]).to(device, non_blocking=True)
        y = labels[idx].to(device, non_blocking=True)
        if cfg.augment:
            x = augment_batch(x, gen)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total_loss += loss.item() * len(idx)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(idx)
        bar.update(len(idx))
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
    bar.close()
    return {"train_loss": total_loss / seen, "train_acc": correct / seen}


@torch.inference_mode()
def predict_logits(model, images, device, amp_dtype=None, batch_size: int = 256) -> torch.Tensor:
    """Logits (float32, on CPU) for a uint8 image tensor/array (N, H, W), in batches."""
    model.eval()
    images = torch.as_tensor(images)
    out = []
    for idx in _batches(len(images), batch_size):
        x = to_float(images[idx]).to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def validate(model, images, labels, device, amp_dtype) -> dict:
    logits = predict_logits(model, images, device, amp_dtype)
    labels = torch.as_tensor(labels)
    return {"val_loss": F.cross_entropy(logits, labels).item(),
            "val_acc": (logits.argmax(1) == labels).float().mean().item(),
            "val_pred": logits.argmax(1).numpy()}


# ----------------------------------------------------------------------------- run folder
def write_history(path: Path, history: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Accuracy and loss per epoch, train vs validation (the reference's plot.png)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, name in ((axes[0], "acc", "accuracy"), (axes[1], "loss", "loss")):
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        ax.plot(ep, [h[f"val_{key}"] for h in history], "o-", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"model {name}")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def _check_run_dir(run_dir: Path, cfg: TrainConfig, overwrite: bool) -> bool:
    """Prepare the run folder. Returns True when an interrupted run should be resumed."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FerkitError(f"output {run_dir} exists and is not a folder")
    is_run = (run_dir / "config.json").exists() or (run_dir / "best.safetensors").exists()
    if run_dir.exists() and any(run_dir.iterdir()):
        if overwrite and is_run:
            shutil.rmtree(run_dir)
        elif (run_dir / "summary.json").exists():
            raise FerkitError(f"{run_dir} already holds a finished run; pass --overwrite to replace it")
        elif (run_dir / "state" / "state.json").exists():
            saved = json.loads((run_dir / "state" / "state.json").read_text())
            if not cfg.matches(saved.get("config") or {}):
                raise FerkitError(f"{run_dir} holds an interrupted run with a different config; "
                                  "pass --overwrite to start over")
            return True
        elif is_run and not (run_dir / "best.safetensors").exists():
            shutil.rmtree(run_dir)  # interrupted before its first epoch: nothing to keep
        else:
            raise FerkitError(f"{run_dir} is not empty and is not a ferkit run folder; choose another --out")
    make_dir(run_dir, "run folder")
    return False


def _save_state(run_dir: Path, model, opt, gen: torch.Generator, cfg: TrainConfig, progress: dict) -> None:
    """Everything needed to continue after the finished epoch (weights, Adam moments, RNG)."""
    from safetensors.torch import save_file

    state_dir = run_dir / "state"
    state_dir.mkdir(exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for i, p in enumerate(opt.param_groups[0]["params"]):
        st = opt.state.get(p, {})
        for k in ("exp_avg", "exp_avg_sq", "step"):
            if k in st:
                tensors[f"opt.{i}.{k}"] = torch.as_tensor(st[k]).detach().cpu().reshape(-1) if k == "step" \
                    else st[k].detach().cpu().contiguous()
    tensors["rng.gen"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    with atomic_path(state_dir / "state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(state_dir / "state.json", {"config": cfg.identity(), **progress})


def _load_state(run_dir: Path, model, opt, gen: torch.Generator) -> dict:
    from safetensors.torch import load_file

    tensors = load_file(str(run_dir / "state" / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for i, p in enumerate(opt.param_groups[0]["params"]):
        if f"opt.{i}.exp_avg" in tensors:
            opt.state[p] = {"step": tensors[f"opt.{i}.step"].reshape(()),
                            "exp_avg": tensors[f"opt.{i}.exp_avg"], "exp_avg_sq": tensors[f"opt.{i}.exp_avg_sq"]}
    gen.set_state(tensors["rng.gen"])
    torch.set_rng_state(tensors["rng.torch"])
    return json.loads((run_dir / "state" / "state.json").read_text())


# ----------------------------------------------------------------------------- main entry
def _better(row: dict, best: dict, monitor: str) -> bool:
    """Is this epoch better than the best so far on the monitored metric (ties: the loss decides)?"""
    if best["epoch"] == 0:
        return True
    if MONITORS[monitor]:
        return (row[monitor], -row["val_loss"]) > (best[monitor], -best["val_loss"])
    return row[monitor] < best[monitor]


def load_train_val(cfg: TrainConfig) -> tuple[ImageSet, ImageSet]:
    """Decode training and validation data with one class list (from the training data)."""
    train = load_dataset(cfg.train_dir, cfg.classes, cfg.image_size, cfg.strict, progress=cfg.progress,
                         role="training data")
    val = load_dataset(cfg.val_dir, train.classes, cfg.image_size, cfg.strict, progress=cfg.progress,
                       role="validation data")
    return train, val


def train(cfg: TrainConfig, overwrite: bool = False, data: tuple[ImageSet, ImageSet] | None = None) -> RunResult:
    """Train a model as configured and write the run folder. Returns the run's summary.

    Args:
        cfg: the run's configuration.
        overwrite: replace a finished run in ``cfg.out`` (an interrupted one is resumed).
        data: already-decoded (train, val) sets, to skip decoding (used by ``ferkit study``).
    """
    t0 = time.time()
    run_dir = Path(cfg.out)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    train_set, val_set = data if data is not None else load_train_val(cfg)
    cfg.classes = train_set.classes
    resume = _check_run_dir(run_dir, cfg, overwrite)
    device = select_device(cfg.device)
    amp_dtype = resolve_precision(cfg.precision, device)

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = create_model(cfg.arch, len(cfg.classes), cfg.image_size).to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + cfg.lr_decay * step))

    val_images, val_labels = val_set.images, val_set.labels
    if cfg.val_limit is not None and cfg.val_limit < len(val_labels):
        pick = np.random.default_rng(cfg.seed).permutation(len(val_labels))[:cfg.val_limit]
        val_images, val_labels = val_images[np.sort(pick)], val_labels[np.sort(pick)]
    images, labels = torch.from_numpy(train_set.images), torch.from_numpy(train_set.labels)

    config_record = {**asdict(cfg), "classes": list(cfg.classes), "device": str(device),
                     "precision_used": str(amp_dtype or "float32"), "parameters": count_parameters(model),
                     "train_counts": train_set.class_counts(), "val_counts": val_set.class_counts(),
                     "skipped_files": train_set.skipped + val_set.skipped,
                     "preprocessing": PREPROCESSING}
    history, best = [], {"val_loss": math.inf, "epoch": 0, "val_acc": 0.0}
    start_epoch, bad_epochs = 1, 0
    if resume:
        progress = _load_state(run_dir, model, opt, gen)
        history, best, bad_epochs = progress["history"], progress["best"], progress["bad_epochs"]
        start_epoch = len(history) + 1
        sched.last_epoch = progress["step"]
        opt.param_groups[0]["lr"] = cfg.lr / (1.0 + cfg.lr_decay * progress["step"])
        log(f"resuming {run_dir} after epoch {len(history)}")
    else:
        write_json(run_dir / "config.json", config_record)
    log(f"training {cfg.arch} ({count_parameters(model):,} parameters) on {len(images)} images, "
        f"validating on {len(val_labels)}; classes: {', '.join(cfg.classes)}; device {device}, "
        f"{'autocast ' + str(amp_dtype).split('.')[-1] if amp_dtype else 'fp32'}")

    record = {"arch": cfg.arch, "classes": list(cfg.classes), "image_size": cfg.image_size,
              "channels": 1, "preprocessing": PREPROCESSING, "train_config": config_record}
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs + 1):
        if cfg.patience and bad_epochs >= cfg.patience:
            stopped_early = True
            break
        t_ep = time.time()
        row = {"epoch": epoch, "lr": opt.param_groups[0]["lr"]}
        row.update(train_one_epoch(model, opt, sched, images, labels, cfg, gen, device, amp_dtype,
                                   desc=f"epoch {epoch}/{cfg.epochs}"))
        val = validate(model, val_images, val_labels, device, amp_dtype)
        row.update(val_loss=val["val_loss"], val_acc=val["val_acc"], seconds=round(time.time() - t_ep, 2))
        history.append(row)
        improved = _better(row, best, cfg.monitor)
        if improved:
            from sklearn.metrics import f1_score
            best = {"val_loss": row["val_loss"], "val_acc": row["val_acc"], "epoch": epoch,
                    "val_macro_f1": float(f1_score(val_labels, val["val_pred"], average="macro",
                                                   labels=list(range(len(cfg.classes))), zero_division=0))}
            save_checkpoint(model, run_dir / "best.safetensors", {**record, "epoch": epoch, "val_metrics": best})
        bad_epochs = 0 if improved else bad_epochs + 1
        log(f"epoch {epoch:3d}/{cfg.epochs}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}  {row['seconds']:.1f}s"
            f"{'  *best' if improved else ''}")
        write_history(run_dir / "history.csv", history)
        _save_state(run_dir, model, opt, gen, cfg,
                    {"history": history, "best": best, "bad_epochs": bad_epochs, "step": sched.last_epoch})
    if stopped_early:
        log(f"early stop: {cfg.monitor.replace('val_', 'validation ')} has not improved for {cfg.patience} epochs")

    save_checkpoint(model, run_dir / "last.safetensors",
                    {**record, "epoch": len(history), "val_metrics": {k: history[-1][k] for k in ("val_loss", "val_acc")}})
    plot_curves(history, run_dir / "curves.png", title=f"{cfg.arch} on {Path(cfg.train_dir).name}")
    result = RunResult(run_dir, tuple(cfg.classes), best["epoch"], best["val_loss"], best["val_acc"],
                       len(history), history, seconds=round(sum(float(h["seconds"]) for h in history), 1),
                       wall_seconds=round(time.time() - t0, 1))
    write_json(run_dir / "summary.json", {"best_epoch": best["epoch"], "best_val": best,
                                           "epochs_run": len(history), "stopped_early": stopped_early,
                                           "seconds": result.seconds, "wall_seconds": result.wall_seconds,
                                           "classes": list(cfg.classes)})
    shutil.rmtree(run_dir / "state", ignore_errors=True)
    return result
