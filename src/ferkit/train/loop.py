"""Training: the canonical loop (train_one_epoch / validate / fit) over uint8 data in memory.

Example::

    ferkit train --recipe fer2013 --train-dir fer/train --val-dir fer/validation --classes all7 --out runs/f

    from ferkit.train import resolve_config, train
    result = train(resolve_config("fer2013", train_dir=..., val_dir=..., out="runs/f"))

The data stay uint8 on the training device (CPU or GPU); each batch is scaled, augmented in torch,
normalised by the model's input contract and fed to the model, with autocast and channels_last.
The run folder and resuming are :mod:`ferkit.train.run_folder`'s job.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..console import log, progress_bar
from ..data import ImageSet, load_dataset
from ..errors import FerkitError, Interrupted
from ..models import CheckpointRecord, InputSpec, count_parameters, create_model, init_from_checkpoint
from ..runtime import autocast, global_rng_state, predict_logits, resolve_precision, set_global_rng_state
from . import augment as A
from .config import MONITORS, TrainConfig, parse_oversample
from .consistency import consistency_loss
from .distill import Teacher, load_teacher
from .distributed import Dist, check_world, launch
from .domains import epoch_order, epoch_size, load_sources
from .run_folder import RunFolder


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

    def text(self) -> str:
        """The lines ``ferkit train`` prints."""
        return (f"best epoch {self.best_epoch}: val_loss {self.best_val_loss:.4f}, val_acc {self.best_val_acc:.4f} "
                f"({self.epochs_run} epochs, {self.seconds:.0f}s of training; this invocation "
                f"{self.wall_seconds:.0f}s)\n"
                f"run folder: {self.run_dir}  (best.safetensors, last.safetensors, history.csv, curves.png)")


# ----------------------------------------------------------------------------- learning rate
class LRSchedule:
    """Learning-rate factor per optimiser step (a pure function of the step, so resuming is exact),
    plus the reduce-on-plateau state that changes once per epoch."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int):
        self.cfg = cfg
        self.total = max(1, cfg.epochs * steps_per_epoch)
        self.warmup = cfg.warmup_epochs * steps_per_epoch
        self.plateau_factor, self.plateau_bad = 1.0, 0

    def factor(self, step: int) -> float:
        kind = self.cfg.schedule
        if kind == "time_decay":
            return 1.0 / (1.0 + self.cfg.lr_decay * step)
        if kind == "plateau":
            return self.plateau_factor
        if kind == "constant":
            return 1.0
        if kind == "onecycle":
            up = 0.3 * self.total
            if step < up:
                return 1 / 25 + (1 - 1 / 25) * step / up
            t = min(1.0, (step - up) / max(1.0, self.total - up))
            return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t))
        if step < self.warmup:  # cosine
            return (step + 1) / (self.warmup + 1)
        t = min(1.0, (step - self.warmup) / max(1.0, self.total - self.warmup))
        return 0.5 * (1 + math.cos(math.pi * t))

    def epoch_end(self, improved: bool) -> None:
        if self.cfg.schedule != "plateau":
            return
        self.plateau_bad = 0 if improved else self.plateau_bad + 1
        if self.plateau_bad >= self.cfg.plateau_patience:
            self.plateau_factor, self.plateau_bad = self.plateau_factor * 0.5, 0


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def batch_norms(model: torch.nn.Module):
    """The model's batch-norm layers (what --freeze-bn keeps as --init left them)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


# ----------------------------------------------------------------------------- one epoch
@dataclass
class Trainer:
    """The pieces of a run that change as it trains (and are saved to resume it)."""

    cfg: TrainConfig
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    schedule: LRSchedule
    spec: InputSpec
    device: torch.device
    amp_dtype: torch.dtype | None
    gen: torch.Generator
    class_weight: torch.Tensor | None = None
    teacher: Teacher | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None
    step: int = 0
    dist: Dist = field(default_factory=Dist)
    domain: np.ndarray | None = None            # several training sources: each face's source
    domain_weights: tuple[float, ...] = ()      # and each source's sampling weight

    def __post_init__(self):
        # fp16 autocast (CUDA without bf16) needs loss scaling; everywhere else this is a no-op
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda")
        # one process: one generator for everything (exactly ferkit 0.1's draws); several: the shared
        # generator orders the epoch identically on every rank, each rank augments with its own
        self.aug_gen = self.gen
        self.net = self.model                       # what is trained: the model, or its DDP wrapper
        if self.dist.active:
            self.aug_gen = torch.Generator().manual_seed(self.cfg.seed + 1_000_003 * (self.dist.rank + 1))
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and saved: the EMA average when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def batch_input(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> augmented, normalised float model input (channels_last)."""
        cfg = self.cfg
        x = images_u8.unsqueeze(1).float().div_(self.spec.pixel_max)
        if cfg.augment:
            x = A.geometric(x, self.aug_gen, cfg.rotate, cfg.shift, cfg.zoom, cfg.aspect)
        if cfg.photo > 0:
            x = A.photo_conditions(x, self.aug_gen, cfg.photo)
        x = self.spec.normalize(x)
        if cfg.erase > 0:
            x = A.random_erase(x, self.aug_gen, cfg.erase)
        return x.contiguous(memory_format=torch.channels_last)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against label distributions (N, C): hard labels one-hot, vote labels their
        distribution, a mixed batch the mix (:mod:`ferkit.votes`). With class weights the mean is
        weighted by each target's weight, which for one-hot targets is exactly the class-index form."""
        loss = F.cross_entropy(logits.float(), targets, weight=self.class_weight,
                               label_smoothing=self.cfg.label_smoothing, reduction="sum")
        norm = targets.shape[0] if self.class_weight is None else (targets @ self.class_weight).sum()
        return loss / norm

    def train_one_epoch(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> dict:
        """One pass over (a random subset of) the training set. Returns its loss and accuracy.

        With several processes each global batch of ``batch_size`` images is split evenly across
        the ranks, and a last batch smaller than ``batch_size`` is dropped (so every rank takes the
        same number of steps); the returned figures are over all ranks."""
        cfg, model, dist = self.cfg, self.net, self.dist
        model.train()
        if cfg.freeze_bn:   # running statistics stay as --init left them (eval mode); weights have no grad
            for m in batch_norms(model):
                m.eval()
        if self.domain is not None:   # several sources: each drawn by its weight (ferkit.train.domains)
            order = epoch_order(self.domain, self.domain_weights, self.gen)
        else:
            order = torch.randperm(len(labels), generator=self.gen)
        n = len(order) if cfg.train_limit is None else min(cfg.train_limit, len(order))
        order = order[:n].to(images.device)
        if dist.active:
            n -= n % cfg.batch_size
        share = cfg.batch_size // dist.world
        total_loss, correct, seen, diverged = 0.0, 0, 0, float("nan")
        bar = progress_bar(total=n, enabled=cfg.progress and dist.main, desc=f"epoch {epoch}/{cfg.epochs}",
                           unit="img", leave=False)
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if dist.active:
                idx = idx[dist.rank * share:(dist.rank + 1) * share]
            y = labels[idx]
            x = self.batch_input(images[idx])
            x, y_a, y_b, lam = A.mix(x, y, self.aug_gen, cfg.mixup, cfg.cutmix)
            if lam != 1.0:   # one target: the mix of the two distributions (linear in the loss, as torchvision's)
                y = lam * y_a + (1 - lam) * y_b
            for g in self.opt.param_groups:
                g["lr"] = cfg.lr * self.schedule.factor(self.step)
            consistent = cfg.consistency > 0
            if consistent:   # a second view, slightly moved: both go through the model in one pass
                x2 = A.small_change(x, self.aug_gen, cfg.consistency_shift)
                x_in = torch.cat([x, x2]).contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.amp_dtype):
                logits = model(x_in if consistent else x)
            if consistent:
                logits, logits2 = logits[:len(x)], logits[len(x):]
            loss = self.loss(logits, y)
            if self.teacher is not None:   # the teacher sees the batch as mixed: its output is the target
                a = self.teacher.alpha
                with autocast(self.device, self.amp_dtype):
                    soft = self.teacher.targets(x, self.spec)
                loss = (1 - a) * loss + a * self.teacher.loss(logits, soft)
            if consistent:   # the first view's answer (detached) is the target of the second's
                loss = loss + cfg.consistency * consistency_loss(logits, logits2)
            value = loss.item()
            if not math.isfinite(value):
                if not dist.active:
                    _diverged(value, epoch, cfg)
                diverged = value   # several processes: all must step on, then stop together
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            total_loss += value * len(idx)
            correct += (logits.argmax(1) == y_a.argmax(1)).sum().item()
            seen += len(idx)
            bar.update(len(idx) * dist.world)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
        bar.close()
        if dist.active:
            bad = 0.0 if math.isnan(diverged) else 1.0
            total_loss, correct, seen, bad = dist.sum([total_loss, correct, seen, bad], self.device)
            if bad:
                _diverged(diverged if not math.isnan(diverged) else float("nan"), epoch, cfg)
        return {"train_loss": total_loss / seen, "train_acc": correct / seen}

    def validate(self, images, labels) -> dict:
        """Validation metrics. With several processes rank 0 validates and the others receive its
        loss and accuracy, so every rank takes the same early-stopping decision."""
        if self.dist.active:
            out = self._validate(images, labels) if self.dist.main else {"val_loss": 0.0, "val_acc": 0.0}
            out["val_loss"], out["val_acc"] = self.dist.broadcast([out["val_loss"], out["val_acc"]], self.device)
            return out
        return self._validate(images, labels)

    def _validate(self, images, labels) -> dict:
        logits = predict_logits(self.eval_model, images, self.spec, self.device, self.amp_dtype)
        labels = torch.as_tensor(labels)
        return {"val_loss": F.cross_entropy(logits, labels).item(),
                "val_acc": (logits.argmax(1) == labels).float().mean().item(),
                "val_pred": logits.argmax(1).numpy()}

    # ------------------------------------------------------------------ resume state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        t = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt = self.opt.state_dict()
        for i, st in opt["state"].items():
            for k, v in st.items():
                t[f"opt.{i}.{k}"] = torch.as_tensor(v).reshape(-1) if not torch.is_tensor(v) or v.dim() == 0 \
                    else v
        if self.ema is not None:
            t.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        t["rng.gen"] = self.gen.get_state()
        t.update(global_rng_state(self.device))
        if self.dist.active:   # every rank's augmentation generator (a collective: all ranks call it)
            for r, state in enumerate(self.dist.gather_tensor(self.aug_gen.get_state())):
                t[f"rng.aug.{r}"] = state
        return t

    def load_state_tensors(self, t: dict[str, torch.Tensor], progress: dict) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        opt = self.opt.state_dict()
        state: dict = {}
        for key, v in t.items():
            if key.startswith("opt."):
                _, i, name = key.split(".", 2)
                state.setdefault(int(i), {})[name] = v.reshape(()) if name == "step" else v
        opt["state"] = state
        self.opt.load_state_dict(opt)
        if self.ema is not None:
            self.ema.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
        self.gen.set_state(t["rng.gen"])
        set_global_rng_state(t, self.device)
        if self.dist.active:
            self.aug_gen.set_state(t[f"rng.aug.{self.dist.rank}"])
        self.step = progress["step"]
        self.schedule.plateau_factor, self.schedule.plateau_bad = progress.get("plateau", [1.0, 0])


def _diverged(value: float, epoch: int, cfg: TrainConfig):
    raise FerkitError(f"training diverged: the loss became {value} in epoch {epoch} (lr {cfg.lr:g}); "
                      "nothing from this epoch was saved. Lower --lr or set --grad-clip, with --overwrite")


# ----------------------------------------------------------------------------- the run
def _better(row: dict, best: dict, monitor: str) -> bool:
    """Is this epoch better than the best so far on the monitored metric (ties: the loss decides)?"""
    if best["epoch"] == 0:
        return True
    if MONITORS[monitor]:
        return (row[monitor], -row["val_loss"]) > (best[monitor], -best["val_loss"])
    return row[monitor] < best[monitor]


def load_train_val(cfg: TrainConfig) -> tuple[ImageSet, ImageSet]:
    """Decode training and validation data with one class list (from the training data)."""
    hint = f"with --init the classes default to those of {cfg.init}; --classes picks them" if cfg.init else ""
    sources = cfg.sources()
    train = load_sources(sources, cfg.classes, cfg.image_size, cfg.strict, progress=cfg.progress,
                         labels=cfg.labels, hint=hint)
    if train.domain is not None:
        counts = np.bincount(train.domain, minlength=len(sources))
        log("training data: " + "; ".join(f"{s.path}: {n} faces x {s.weight:g}" for s, n in zip(sources, counts))
            + f" = {epoch_size(train.domain, train.domain_weights)} draws per epoch")
    train = oversampled(cfg, train)
    # validation (and so the selection of the best epoch) always uses the majority protocol
    val = load_dataset(cfg.val_dir, train.classes, cfg.image_size, cfg.strict, progress=cfg.progress,
                       role="validation data")
    return train, val


def oversampled(cfg: TrainConfig, train: ImageSet) -> ImageSet:
    """The training set with ``cfg.oversample``'s extra copies (itself when there are none)."""
    if not cfg.oversample:
        return train
    before = len(train)
    train = train.oversampled(parse_oversample(cfg.oversample))
    log(f"training data: {len(train) - before} copies added by --oversample {cfg.oversample} "
        f"({before} -> {len(train)} faces per epoch)")
    return train


def _val_subset(cfg: TrainConfig, val_set: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    images, labels = val_set.images, val_set.labels
    if cfg.val_limit is not None and cfg.val_limit < len(labels):
        pick = np.sort(np.random.default_rng(cfg.seed).permutation(len(labels))[:cfg.val_limit])
        images, labels = images[pick], labels[pick]
    return images, labels


def build_trainer(cfg: TrainConfig, train_set: ImageSet, device: torch.device, dist: Dist | None = None,
                   fresh: bool = True) -> Trainer:
    """The model, optimiser, schedule and augmentation of a run; ``fresh``: a new run (not resumed),
    which starts from ``cfg.init``'s weights when given."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = create_model(cfg.arch, len(cfg.classes), cfg.image_size, **cfg.model_args)
    if cfg.init and fresh:
        from ..models import model_file

        note = init_from_checkpoint(model, model_file(cfg.init), tuple(cfg.classes))
        if dist is None or dist.main:
            log(note)
    model = model.to(device)
    model = model.to(memory_format=torch.channels_last)
    if cfg.freeze_bn:   # their affine weights get no gradient; train_one_epoch keeps them in eval mode
        for m in batch_norms(model):
            m.requires_grad_(False)
    n = epoch_size(train_set.domain, train_set.domain_weights) or len(train_set)
    n = n if cfg.train_limit is None else min(cfg.train_limit, n)
    weight = None
    if cfg.class_weights:
        counts = np.maximum(train_set.label_distributions().sum(0, dtype=np.float64), 1)
        weight = torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32, device=device)
    ema = None
    if cfg.ema > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    spec = InputSpec(cfg.image_size, 1, 255.0, (cfg.input_mean,), (cfg.input_std,))
    dist = dist or Dist()
    steps = math.ceil(n / cfg.batch_size) if not dist.active else n // cfg.batch_size
    teacher = None
    if cfg.teacher:
        teacher = load_teacher(cfg.teacher, tuple(cfg.classes), device, cfg.distill_alpha, cfg.distill_temperature)
    return Trainer(cfg, model, make_optimizer(cfg, model), LRSchedule(cfg, max(1, steps)), spec,
                   device, resolve_precision(cfg.precision, device), gen, weight, teacher, ema, dist=dist,
                   domain=train_set.domain, domain_weights=train_set.domain_weights)


def train(cfg: TrainConfig, overwrite: bool = False, data: tuple[ImageSet, ImageSet] | None = None,
          keep_state: bool = True, figures: bool = True, state_every: float = 0.0) -> RunResult:
    """Train a model as configured and write the run folder. Returns the run's summary.

    Under torchrun (several processes) the same call trains with DistributedDataParallel, and
    only rank 0 writes the run folder (see :mod:`ferkit.train.distributed`).

    Args:
        cfg: the run's configuration (see :func:`ferkit.train.resolve_config` for recipes).
        overwrite: replace what ``cfg.out`` holds (an interrupted run is otherwise resumed, and a
            finished one continued when ``cfg.epochs`` is larger).
        data: already-decoded (train, val) sets, to skip decoding (used by ``ferkit study``); the
            training set as ``cfg.labels`` reads it, before ``cfg.oversample`` (applied here).
        keep_state: keep ``state/`` after the run finishes, so a larger ``epochs`` can continue it
            (``ferkit study`` drops it: many small runs, never extended).
        figures: draw curves.png at the end (False: history.csv only; ``plot_curves`` draws it later).
        state_every: write the resume state after an epoch only when this many seconds have passed
            since the last write, the epoch improved on the best, or it is the run's last; 0 (the
            default): after every epoch. An interrupted run resumes from the last state written
            (replaying the epochs after it gives the same results: resuming is exact). Many short
            runs (``ferkit study``) save most of the writes; several processes write every epoch.
    """
    return launch(lambda dist, device: _fit(cfg, overwrite, data, keep_state, dist, device, figures, state_every),
                  cfg.batch_size, cfg.device, cfg.num_threads, dist=None if data is None else Dist())


@dataclass
class _Progress:
    """Where a run stands: its history, best epoch so far and epochs without improvement (and the
    last epoch whose resume state is on disk, and when it was written)."""

    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_loss": math.inf, "epoch": 0, "val_acc": 0.0})
    bad_epochs: int = 0
    saved_epoch: int = 0
    saved_at: float = field(default_factory=time.time)


def _fit(cfg: TrainConfig, overwrite: bool, data, keep_state: bool, dist: Dist, device: torch.device,
         figures: bool = True, state_every: float = 0.0) -> RunResult:
    folder = RunFolder(cfg.out, writer=dist.main)
    try:
        return _fit_in(folder, cfg, overwrite, data, keep_state, dist, device, figures, state_every)
    finally:
        folder.release()


def _fit_in(folder: RunFolder, cfg: TrainConfig, overwrite: bool, data, keep_state: bool, dist: Dist,
            device: torch.device, figures: bool = True, state_every: float = 0.0) -> RunResult:
    t0 = time.time()
    if data is not None and cfg.labels == "soft" and data[0].targets is None:
        raise FerkitError("labels soft: the training set given has no vote distributions (load it with labels='soft')")
    train_set, val_set = (oversampled(cfg, data[0]), data[1]) if data is not None else load_train_val(cfg)
    cfg.classes = train_set.classes
    saved = folder.prepare(cfg, overwrite)
    dist.barrier()                      # rank 0 has prepared the folder (cleared it, or kept a state)
    check_world(saved, dist, folder.path)
    tr = build_trainer(cfg, train_set, device, dist, fresh=saved is None)
    val_images, val_labels = _val_subset(cfg, val_set)
    images = torch.from_numpy(train_set.images).to(device)   # uint8, resident on the training device
    labels = torch.from_numpy(train_set.label_distributions()).to(device)   # one label path: distributions
    config_record = {**asdict(cfg), "classes": list(cfg.classes), "device": str(device), "world_size": dist.world,
                     "precision_used": str(tr.amp_dtype or "float32"), "parameters": count_parameters(tr.model),
                     "train_counts": train_set.class_counts(), "val_counts": val_set.class_counts(),
                     "skipped_files": train_set.skipped + val_set.skipped, "input": tr.spec.to_json()}
    p = _Progress()
    if saved is not None:
        tr.load_state_tensors(folder.load_state(saved), saved)
        p = _Progress(saved["history"], saved["best"], saved["bad_epochs"], len(saved["history"]))
    else:
        folder.write_config(config_record)
    log(f"training {cfg.arch} ({count_parameters(tr.model):,} parameters) on {len(images)} images, "
        f"validating on {len(val_labels)}; classes: {', '.join(cfg.classes)}; recipe {cfg.recipe}; device {device}, "
        f"{'autocast ' + str(tr.amp_dtype).split('.')[-1] if tr.amp_dtype else 'fp32'}"
        + (f"; {dist.world} processes" if dist.active else ""))

    def record(epoch: int, metrics: dict) -> CheckpointRecord:
        return CheckpointRecord(cfg.arch, tuple(cfg.classes), tr.spec, dict(cfg.model_args), epoch, metrics,
                                config_record)

    stopped_early = False
    for epoch in range(len(p.history) + 1, cfg.epochs + 1):
        if cfg.patience and p.bad_epochs >= cfg.patience:
            stopped_early = True
            break
        try:
            _epoch(tr, folder, cfg, p, epoch, images, labels, val_images, val_labels, record,
                   0.0 if dist.active else state_every)   # ranks must agree: the state is a collective
        except KeyboardInterrupt:   # while the epoch's files were written (each one whole, or not at all)
            kept = {0: "no finished epoch", 1: "epoch 1"}.get(p.saved_epoch, f"epochs 1-{p.saved_epoch}")
            raise Interrupted(f"training stopped after epoch {epoch}; {folder.path} keeps {kept}: re-run the "
                              "same command to resume") from None
    if stopped_early:
        log(f"early stop: {cfg.monitor.replace('val_', 'validation ')} has not improved for {cfg.patience} epochs")

    last = p.history[-1]
    folder.save_checkpoint("last.safetensors", tr.eval_model,
                           record(len(p.history), {k: last[k] for k in ("val_loss", "val_acc")}))
    if figures:
        folder.plot_curves(p.history, title=f"{cfg.arch} on {Path(cfg.train_dir).name}")
    result = RunResult(folder.path, tuple(cfg.classes), p.best["epoch"], p.best["val_loss"], p.best["val_acc"],
                       len(p.history), p.history, seconds=round(sum(float(h["seconds"]) for h in p.history), 1),
                       wall_seconds=round(time.time() - t0, 1))
    folder.write_summary({"best_epoch": p.best["epoch"], "best_val": p.best, "epochs_run": len(p.history),
                          "stopped_early": stopped_early, "seconds": result.seconds,
                          "wall_seconds": result.wall_seconds, "classes": list(cfg.classes), "recipe": cfg.recipe,
                          "world_size": dist.world})
    if not keep_state:
        folder.drop_state()
    dist.barrier()                      # nobody leaves before rank 0 has written the last file
    return result


def _epoch(tr: Trainer, folder: RunFolder, cfg: TrainConfig, p: _Progress, epoch: int, images, labels,
           val_images, val_labels, record, state_every: float = 0.0) -> None:
    """Train one epoch, validate, and save what it changed (history, best checkpoint, and the resume
    state: every epoch, or see ``train``'s ``state_every``)."""
    t_ep = time.time()
    row = {"epoch": epoch, "lr": cfg.lr * tr.schedule.factor(tr.step)}
    try:
        row.update(tr.train_one_epoch(images, labels, epoch))
        val = tr.validate(val_images, val_labels)
    except KeyboardInterrupt:
        kept = {0: "no finished epoch", 1: "epoch 1"}.get(p.saved_epoch, f"epochs 1-{p.saved_epoch}")
        raise Interrupted(f"training stopped during epoch {epoch}; {folder.path} keeps {kept}: re-run the same "
                          "command to resume") from None
    if not math.isfinite(val["val_loss"]):
        raise FerkitError(f"training diverged: validation loss is {val['val_loss']} after epoch {epoch}; "
                          "nothing from this epoch was saved. Lower --lr, with --overwrite")
    row.update(val_loss=val["val_loss"], val_acc=val["val_acc"], seconds=round(time.time() - t_ep, 2))
    p.history.append(row)
    improved = _better(row, p.best, cfg.monitor)
    if improved:
        p.best = {"val_loss": row["val_loss"], "val_acc": row["val_acc"], "epoch": epoch}
        if folder.writer:
            from sklearn.metrics import f1_score
            p.best["val_macro_f1"] = float(f1_score(val_labels, val["val_pred"], average="macro",
                                                    labels=list(range(len(cfg.classes))), zero_division=0))
        folder.save_checkpoint("best.safetensors", tr.eval_model, record(epoch, p.best))
    p.bad_epochs = 0 if improved else p.bad_epochs + 1
    tr.schedule.epoch_end(improved)
    if folder.writer:
        log(f"epoch {epoch:3d}/{cfg.epochs}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}  lr {row['lr']:.3g}  {row['seconds']:.1f}s"
            f"{'  *best' if improved else ''}")
    folder.write_history(p.history)
    last = epoch == cfg.epochs or bool(cfg.patience and p.bad_epochs >= cfg.patience)
    # best.safetensors never runs ahead of the state: a resume replays no epoch that wrote it
    if not (improved or last or time.time() - p.saved_at >= state_every):
        return
    p.saved_epoch, p.saved_at = epoch, time.time()
    folder.save_state(tr.state_tensors(), {"config": cfg.identity(), "history": p.history, "best": p.best,
                                           "bad_epochs": p.bad_epochs, "step": tr.step, "world_size": tr.dist.world,
                                           "plateau": [tr.schedule.plateau_factor, tr.schedule.plateau_bad]})
