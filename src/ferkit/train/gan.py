"""Training the expression editor (a StarGAN): ``ferkit gan train --data DIR --out RUN``.

Losses (Choi et al. 2018, with a hinge adversarial loss): the discriminator D scores real faces
and generated ones per patch, and classifies real faces' expressions; the generator G moves a
face x of expression y to a target t != y so that D scores it real and classifies it as t, and
so that G(G(x, t), y) gives x back (cycle reconstruction, which keeps the identity).

Why hinge with spectral norm, not WGAN-GP: both are stable, but the gradient penalty needs a
second backward pass through D on every step, which on a 2-core CPU costs about a third of the
iteration; spectral normalisation bounds D's Lipschitz constant for the price of one power
iteration per layer (Miyato et al. 2018).

Run folder (like ``ferkit train``'s)::

    config.json               written first: the resolved config, classes, per-class counts
    history.csv               every log_every iterations: mean losses, D's accuracy on real faces, seconds
    curves.png                the losses
    samples/iter_NNNNNN.png   every sample_every iterations: rows = held-out real faces; columns = the
                              input, then each target expression
    generator.safetensors     the generator, with its JSON record (kind "generator", arguments, classes,
                              input contract, iteration)
    summary.json              iterations, seconds (written last)
    state/                    generator, discriminator, optimisers, random generators: resume state

Re-running the same command resumes from the last saved state and ends in the same weights as an
uninterrupted run; a larger --iterations continues a finished run.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..choices import PRECISIONS, check_choice, check_device_name
from ..console import log, progress_bar
from ..data import ImageSet, load_dataset
from ..errors import FerkitError, Interrupted
from ..files import atomic_path, make_dir
from ..labels import parse_classes
from ..models import CheckpointRecord, InputSpec, count_parameters
from ..models.gan import MIN_IMAGE_SIZE, create_discriminator, create_generator, resolve_gan_args
from ..runtime import autocast, global_rng_state, resolve_precision, set_global_rng_state
from .config import ResumableConfig
from .distributed import Dist, check_world, launch
from .run_folder import RunFolder

GAN_HISTORY_FIELDS = ("iteration", "d_adv", "d_cls", "d_real_acc", "g_adv", "g_cls", "g_rec", "lr", "seconds")
#: Fewer real faces per class than this cannot train an expression editor (and leave faces to sample).
MIN_PER_CLASS = 10
#: The generator's input contract: gray faces scaled to [-1, 1] (tanh's range).
GAN_INPUT = dict(channels=1, pixel_max=255.0, mean=(0.5,), std=(0.5,))


@dataclass
class GanConfig(ResumableConfig):
    """Everything that defines a GAN training run (config.json; a resume must match it)."""

    unit: ClassVar[str] = "iterations"
    _not_identity: ClassVar[tuple[str, ...]] = ("out", "progress", "num_threads", "iterations", "sample_every",
                                                "checkpoint_every")

    data: str
    out: str
    classes: tuple[str, ...] | None = None   # None: the reference six present in the data
    image_size: int = 48
    iterations: int = 20000
    batch_size: int = 16
    g_lr: float = 1e-4
    d_lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay_from: float = 0.5         # learning rates fall linearly to 0 from this fraction of the iterations
    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    g_width: int = 32
    g_res_blocks: int = 4
    d_width: int = 32
    d_layers: int = 4
    flip: bool = True               # random horizontal flips of the real faces
    held_out: int = 8               # real faces kept out of training, shown in the sample grids
    log_every: int = 100
    sample_every: int = 1000
    checkpoint_every: int = 500     # resume state and generator.safetensors; a multiple of log_every
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    strict: bool = False
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self):
        if self.classes is not None and not isinstance(self.classes, tuple):
            self.classes = parse_classes(self.classes)
        for name in ("iterations", "batch_size", "log_every", "sample_every", "checkpoint_every", "g_width",
                     "d_width", "d_layers"):
            if int(getattr(self, name)) < 1:
                raise FerkitError(f"{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.checkpoint_every % self.log_every:
            raise FerkitError(f"checkpoint-every ({self.checkpoint_every}) must be a multiple of log-every "
                              f"({self.log_every})")
        for name in ("g_lr", "d_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise FerkitError(f"{name.replace('_', '-')} must be a positive number (got {getattr(self, name)})")
        for name in ("lambda_cls", "lambda_rec", "g_res_blocks", "held_out"):
            if not getattr(self, name) >= 0:
                raise FerkitError(f"{name.replace('_', '-')} must be 0 or positive (got {getattr(self, name)})")
        if not (0 <= self.decay_from <= 1 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise FerkitError("decay-from must be in [0, 1] and the Adam betas in [0, 1)")
        if self.image_size < MIN_IMAGE_SIZE or self.image_size % 2 ** max(self.d_layers, 2):
            raise FerkitError(f"GAN image size {self.image_size} must be at least {MIN_IMAGE_SIZE} and divisible by "
                              f"{2 ** max(self.d_layers, 2)} (48 and 64 work)")
        check_choice("precision", self.precision, PRECISIONS)
        self.device = check_device_name(self.device)

    def progress_of(self, saved: dict) -> tuple[int, int, str | None]:
        return saved["iteration"], self.iterations, None

    def generator_args(self) -> dict:
        return resolve_gan_args("stargan", {"width": self.g_width, "res_blocks": self.g_res_blocks}, None)[0]

    def discriminator_args(self) -> dict:
        return resolve_gan_args("stargan", None, {"width": self.d_width, "layers": self.d_layers})[1]


@dataclass
class GanResult:
    run_dir: Path
    classes: tuple[str, ...]
    iterations: int
    history: list[dict]
    seconds: float


# ----------------------------------------------------------------------------- data
def split_held_out(data: ImageSet, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices): ``n`` faces spread over the classes, never trained on."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(data.labels == c)) for c in range(len(data.classes))]
    held = [per_class[i % len(per_class)][i // len(per_class)] for i in range(n)]
    mask = np.ones(len(data), bool)
    mask[held] = False
    return np.flatnonzero(mask), np.asarray(held, np.int64)


def check_gan_data(data: ImageSet) -> None:
    counts = data.class_counts()
    short = {c: n for c, n in counts.items() if n < MIN_PER_CLASS}
    if short:
        raise FerkitError(f"too few images to train a GAN: {', '.join(f'{c} has {n}' for c, n in short.items())}; "
                          f"need at least {MIN_PER_CLASS} per class")
    if len(counts) < 2:
        raise FerkitError("a GAN moves faces between expressions: it needs at least two classes")


# ----------------------------------------------------------------------------- one iteration
class GanTrainer:
    """One discriminator + generator step at a time. With several processes (torchrun) every rank
    draws the same global batch, trains on its slice, and the gradients are averaged across ranks
    before each optimiser step, so N processes take the steps one process would."""

    def __init__(self, cfg: GanConfig, n_classes: int, device: torch.device, dist: Dist | None = None):
        self.cfg, self.device, self.n_classes = cfg, device, n_classes
        self.dist = dist or Dist()
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.G = create_generator(n_classes, cfg.image_size, **cfg.generator_args()).to(device)
        self.D = create_discriminator(n_classes, cfg.image_size, **cfg.discriminator_args()).to(device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.g_lr, betas=(cfg.beta1, cfg.beta2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.d_lr, betas=(cfg.beta1, cfg.beta2))
        self.spec = InputSpec(cfg.image_size, **GAN_INPUT)
        self.amp = resolve_precision(cfg.precision, device)
        self.iteration = 0

    def lr_factor(self) -> float:
        start = self.cfg.decay_from * self.cfg.iterations
        if self.iteration < start:
            return 1.0
        return max(0.0, 1 - (self.iteration - start) / max(1.0, self.cfg.iterations - start))

    def batch(self, images: torch.Tensor, labels: torch.Tensor):
        cfg, d = self.cfg, self.dist
        idx = torch.randint(0, len(labels), (cfg.batch_size,), generator=self.gen)
        flip = torch.rand(cfg.batch_size, generator=self.gen) < 0.5
        shift = torch.randint(1, self.n_classes, (cfg.batch_size,), generator=self.gen)
        if d.active:   # this rank's slice of the global batch
            share = cfg.batch_size // d.world
            idx, flip, shift = (t[d.rank * share:(d.rank + 1) * share] for t in (idx, flip, shift))
        idx = idx.to(images.device)
        x = self.spec.to_tensor(images[idx])
        if cfg.flip:
            x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        y = labels[idx]
        return x, y, (y + shift.to(y.device)) % self.n_classes   # a target expression other than the face's own

    def _average_gradients(self, module: torch.nn.Module) -> None:
        if not self.dist.active:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.dist.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def step(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> dict:
        cfg = self.cfg
        for opt, lr in ((self.opt_g, cfg.g_lr), (self.opt_d, cfg.d_lr)):
            for g in opt.param_groups:
                g["lr"] = lr * self.lr_factor()
        # discriminator: real faces real and correctly classified, generated faces fake
        with autocast(self.device, self.amp):
            with torch.no_grad():
                fake = self.G(x, t)
            src_real, cls_real = self.D(x)
            src_fake, _ = self.D(fake)
        d_adv = F.relu(1 - src_real.float()).mean() + F.relu(1 + src_fake.float()).mean()
        d_cls = F.cross_entropy(cls_real.float(), y)
        self.opt_d.zero_grad(set_to_none=True)
        (d_adv + cfg.lambda_cls * d_cls).backward()
        self._average_gradients(self.D)
        self.opt_d.step()
        # generator: fool D, be classified as the target, and give the input back from the output
        with autocast(self.device, self.amp):
            fake = self.G(x, t)
            src_fake, cls_fake = self.D(fake)
            rec = self.G(fake, y)
        g_adv = -src_fake.float().mean()
        g_cls = F.cross_entropy(cls_fake.float(), t)
        g_rec = (rec.float() - x).abs().mean()
        self.opt_g.zero_grad(set_to_none=True)
        (g_adv + cfg.lambda_cls * g_cls + cfg.lambda_rec * g_rec).backward()
        self._average_gradients(self.G)
        self.opt_g.step()
        self.iteration += 1
        names = ("d_adv", "d_cls", "g_adv", "g_cls", "g_rec", "d_real_acc")
        values = [d_adv.item(), d_cls.item(), g_adv.item(), g_cls.item(), g_rec.item(),
                  (cls_real.argmax(1) == y).float().mean().item()]
        out = dict(zip(names, (v / self.dist.world for v in self.dist.sum(values, self.device))))
        bad = [k for k, v in out.items() if not math.isfinite(v)]
        if bad:
            raise FerkitError(f"GAN training diverged at iteration {self.iteration} ({', '.join(bad)} not finite); "
                              "nothing from it was saved: lower --g-lr/--d-lr, with --overwrite")
        return out

    # ------------------------------------------------------------------ resume state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        t = {f"G.{k}": v for k, v in self.G.state_dict().items()}
        t.update({f"D.{k}": v for k, v in self.D.state_dict().items()})
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            for i, st in opt.state_dict()["state"].items():
                for k, v in st.items():
                    t[f"{name}.{i}.{k}"] = torch.as_tensor(v).reshape(-1) if v.dim() == 0 else v
        t["rng.gen"] = self.gen.get_state()
        t.update(global_rng_state(self.device))
        return t

    def load_state_tensors(self, t: dict[str, torch.Tensor], iteration: int) -> None:
        self.G.load_state_dict({k[2:]: v for k, v in t.items() if k.startswith("G.")})
        self.D.load_state_dict({k[2:]: v for k, v in t.items() if k.startswith("D.")})
        for name, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            sd = opt.state_dict()
            state: dict = {}
            for key, v in t.items():
                if key.startswith(name + "."):
                    _, i, k = key.split(".", 2)
                    state.setdefault(int(i), {})[k] = v.reshape(()) if k == "step" else v
            sd["state"] = state
            opt.load_state_dict(sd)
        self.gen.set_state(t["rng.gen"])
        set_global_rng_state(t, self.device)
        self.iteration = iteration


# ----------------------------------------------------------------------------- outputs
def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1] (N, 1, S, S) -> uint8 faces (N, S, S)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].cpu().numpy()


@torch.no_grad()
def sample_grid(G, faces: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], spec: InputSpec,
                device: torch.device) -> np.ndarray:
    """Rows: the faces; columns: the input, then the face moved to each class. A BGR image with labels."""
    import cv2

    G.eval()
    x = spec.to_tensor(faces, device)
    cols = [faces] + [to_uint8(G(x, torch.full((len(faces),), c, device=device))) for c in range(len(classes))]
    G.train()
    s = faces.shape[-1]
    cell, head = max(64, s), 22
    grid = np.full((head + cell * len(faces), cell * len(cols)), 255, np.uint8)
    for j, name in enumerate(["input", *classes]):
        cv2.putText(grid, name[:9], (j * cell + 3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.38, 0, 1, cv2.LINE_AA)
        for i in range(len(faces)):
            grid[head + i * cell:head + (i + 1) * cell, j * cell:(j + 1) * cell] = cv2.resize(
                cols[j][i], (cell, cell), interpolation=cv2.INTER_NEAREST)
    for i, lab in enumerate(labels):   # the input's own expression, under its picture
        cv2.putText(grid, classes[lab][:9], (3, head + (i + 1) * cell - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.32, 255, 1)
    return grid


def _write_png(path: Path, img: np.ndarray) -> None:
    import cv2

    ok, data = cv2.imencode(".png", img)
    if not ok:
        raise FerkitError(f"cannot encode {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def plot_gan_curves(history: list[dict], path: Path) -> None:
    from ..files import new_figure, save_figure

    it = [h["iteration"] for h in history]
    fig = new_figure(figsize=(11, 4))
    a, b = fig.subplots(1, 2)
    for key in ("d_adv", "g_adv"):
        a.plot(it, [h[key] for h in history], label=key)
    for key in ("d_cls", "g_cls", "g_rec"):
        b.plot(it, [h[key] for h in history], label=key)
    for ax, title in ((a, "adversarial (hinge)"), (b, "classification and cycle reconstruction (L1)")):
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------- the run
def train_gan(cfg: GanConfig, overwrite: bool = False) -> GanResult:
    """Train (or resume, or continue) a StarGAN-style expression editor and write its run folder."""
    return launch(lambda dist, device: _train_gan(cfg, overwrite, dist, device), cfg.batch_size, cfg.device,
                  cfg.num_threads)


def _train_gan(cfg: GanConfig, overwrite: bool, dist: Dist, device: torch.device) -> GanResult:
    t0 = time.time()
    data = load_dataset(cfg.data, cfg.classes, cfg.image_size, cfg.strict, progress=cfg.progress,
                        role="GAN training data")
    check_gan_data(data)
    cfg.classes = data.classes
    folder = RunFolder(cfg.out, writer=dist.main)
    saved = folder.prepare(cfg, overwrite)
    dist.barrier()
    check_world(saved, dist, folder.path)
    train_idx, held = split_held_out(data, cfg.held_out, cfg.seed)
    images = torch.from_numpy(data.images[train_idx]).to(device)
    labels = torch.from_numpy(data.labels[train_idx]).to(device)
    tr = GanTrainer(cfg, len(cfg.classes), device, dist)
    record = {**asdict(cfg), "classes": list(cfg.classes), "device": str(device),
              "precision_used": str(tr.amp or "float32"), "counts": data.class_counts(),
              "held_out": [data.paths[i] for i in held], "skipped_files": data.skipped,
              "generator_parameters": count_parameters(tr.G), "discriminator_parameters": count_parameters(tr.D)}
    history: list[dict] = []
    if saved is not None:
        tr.load_state_tensors(folder.load_state(saved), saved["iteration"])
        history = saved["history"]
    else:
        folder.write_config(record)
    if dist.main:
        make_dir(folder.path / "samples", "samples folder")
    log(f"training a GAN (generator {count_parameters(tr.G):,}, discriminator {count_parameters(tr.D):,} "
        f"parameters) on {len(labels)} faces of {', '.join(cfg.classes)}; device {device}, "
        f"{'autocast ' + str(tr.amp).split('.')[-1] if tr.amp else 'fp32'}")

    checkpointed = [tr.iteration]

    def save() -> None:
        folder.write_history(history, GAN_HISTORY_FIELDS)
        folder.save_state(tr.state_tensors(), {"config": cfg.identity(), "history": history,
                                               "iteration": tr.iteration, "sums": sums, "world_size": dist.world,
                                               "window_seconds": round(time.time() - t_log, 2)})
        checkpointed[0] = tr.iteration
        rec = CheckpointRecord("stargan", tuple(cfg.classes), tr.spec, cfg.generator_args(), tr.iteration,
                               {"g_rec": history[-1]["g_rec"]} if history else {}, record, kind="generator")
        folder.save_checkpoint("generator.safetensors", tr.G, rec)
        if history and folder.writer:
            plot_gan_curves(history, folder.path / "curves.png")

    sums: dict[str, float] = dict(saved.get("sums", {})) if saved else {}   # a partly logged window
    t_log = time.time() - (saved.get("window_seconds", 0.0) if saved else 0.0)
    bar = progress_bar(total=cfg.iterations, initial=tr.iteration, enabled=cfg.progress and dist.main, desc="gan",
                       unit="it")
    try:
        while tr.iteration < cfg.iterations:
            losses = tr.step(*tr.batch(images, labels))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            if tr.iteration % cfg.log_every == 0:
                row = {"iteration": tr.iteration, **{k: v / cfg.log_every for k, v in sums.items()},
                       "lr": cfg.g_lr * tr.lr_factor(), "seconds": round(time.time() - t_log, 2)}
                history.append(row)
                sums, t_log = {}, time.time()
                bar.set_postfix(d=f"{row['d_adv']:.3f}", g=f"{row['g_adv']:.3f}", rec=f"{row['g_rec']:.3f}",
                                refresh=False)
                if bar.disable and dist.main:   # no terminal: one plain line per logged interval
                    log(f"iteration {tr.iteration:6d}/{cfg.iterations}  d_adv {row['d_adv']:.3f}  d_cls "
                        f"{row['d_cls']:.3f}  g_adv {row['g_adv']:.3f}  g_cls {row['g_cls']:.3f}  "
                        f"g_rec {row['g_rec']:.3f}  {row['seconds']:.1f}s")
            if dist.main and (tr.iteration % cfg.sample_every == 0 or tr.iteration == cfg.iterations):
                _write_png(folder.path / "samples" / f"iter_{tr.iteration:06d}.png",
                           sample_grid(tr.G, data.images[held], data.labels[held], cfg.classes, tr.spec, device))
            if tr.iteration % cfg.checkpoint_every == 0 or tr.iteration == cfg.iterations:
                save()
    except KeyboardInterrupt:
        raise Interrupted(f"GAN training stopped at iteration {tr.iteration}; {folder.path} keeps the state of "
                          f"iteration {checkpointed[0]}: re-run the same command to resume") from None
    finally:
        bar.close()
    seconds = round(sum(float(h["seconds"]) for h in history), 1)
    folder.write_summary({"iterations": tr.iteration, "seconds": seconds, "wall_seconds": round(time.time() - t0, 1),
                          "classes": list(cfg.classes), "final": history[-1] if history else {},
                          "world_size": dist.world})
    dist.barrier()
    return GanResult(folder.path, tuple(cfg.classes), tr.iteration, history, seconds)
