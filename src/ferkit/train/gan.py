"""Training the expression editor (a StarGAN): ``ferkit gan train --data DIR --out RUN``.

Losses (Choi et al. 2018, with a hinge adversarial loss): the discriminator D scores real faces
and generated ones per patch, and classifies real faces' expressions; the generator G moves a
face x of expression y to a target t != y so that D scores it real and classifies it as t, and
so that G(G(x, t), y) gives x back (cycle reconstruction, which keeps the identity).

Additions (all off by default; see docs/generator.md):

- ``--guide MODEL`` (weight ``--lambda-guide``): a frozen ferkit classifier reads G(x, t) through
  its own input contract (size, scaling) in ``--guide-views`` augmented views (random flip and
  shift, so that a pixel pattern that fools it in one position does not pay) and its
  cross-entropy towards t joins G's loss. D's expression head memorises a small training set; a
  classifier trained on many faces does not, so G keeps being pushed towards the target.
- ``--mask`` (weights ``--lambda-mask``, ``--lambda-tv``): an attention-mask generator
  (GANimation): output = mask * change + (1 - mask) * input, with the mask's mean (sparsity) and
  total variation (smoothness) added to G's loss, so what the edit does not need stays untouched.
- ``--lambda-id``: an identity loss, L1 between G(x, y) and x for the face's own class y.

Why hinge with spectral norm, not WGAN-GP: both are stable, but the gradient penalty needs a
second backward pass through D on every step, which on a 2-core CPU costs about a third of the
iteration; spectral normalisation bounds D's Lipschitz constant for the price of one power
iteration per layer (Miyato et al. 2018).

Run folder (like ``ferkit train``'s)::

    config.json               written first: the resolved config, classes, per-class counts, held-out files
    history.csv               every log_every iterations: mean losses, D's accuracy on real faces, seconds
    curves.png                the losses
    samples/iter_NNNNNN.png   every sample_every iterations: rows = held-out real faces; columns = the
                              input, then each target expression (with --mask, each face's row is
                              followed by a row of its masks: white = changed)
    generator.safetensors     the generator, with its JSON record (kind "generator", arguments, classes,
                              input contract, iteration)
    summary.json              iterations, seconds (written last)
    state/                    generator, discriminator, optimisers, random generators: resume state

Re-running the same command resumes from the last saved state and ends in the same weights as an
uninterrupted run; a larger --iterations continues a finished run (its learning rates then decay to 0
from --decay-from (half) of the new total; config.json names the new total, each change listed under "continued").
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

from ..console import log, progress_bar
from ..data import ImageSet, load_dataset
from ..errors import FerkitError, Interrupted
from ..files import atomic_path, file_sha256, make_dir
from ..labels import parse_classes
from ..models import CheckpointRecord, InputSpec, count_parameters
from ..models.gan import MIN_IMAGE_SIZE, create_discriminator, create_generator, resolve_gan_args, to_uint8
from ..runtime import autocast, global_rng_state, resolve_precision, set_global_rng_state
from ..synth.gan import load_generator, open_classifier
from .config import Machine, ResumableConfig
from .distributed import Dist, check_world, launch
from .run_folder import RunFolder

GAN_HISTORY_FIELDS = ("iteration", "d_adv", "d_cls", "d_real_acc", "g_adv", "g_cls", "g_rec", "lr", "seconds")
#: History columns of the optional losses: the guide's cross-entropy and how often it reads the
#: target, the identity loss, the mask's mean and total variation.
GUIDE_FIELDS, ID_FIELDS, MASK_FIELDS = ("g_guide", "guide_acc"), ("g_id",), ("mask_mean", "mask_tv")
#: The guide's augmented views shift an edit by up to this fraction of its side (3 px at 48 px).
GUIDE_SHIFT = 0.0625
#: Below this batch size a GPU mostly waits for the CPU to launch kernels (48 px faces), and the
#: command says so; the batch size is not changed behind the user's back, since it is part of
#: the run's identity and of its dynamics.
GPU_BATCH = 64
#: Fewer real faces per class than this cannot train an expression editor (and leave faces to sample).
MIN_PER_CLASS = 10
#: The most augmented views of each edit the guide may read (each is a copy of the batch; 100000
#: filled 24 GB before the kernel stopped it)
MAX_GUIDE_VIEWS = 16
#: The generator's input contract: gray faces scaled to [-1, 1] (tanh's range).
GAN_INPUT = dict(channels=1, pixel_max=255.0, mean=(0.5,), std=(0.5,))


@dataclass
class GanConfig(ResumableConfig, Machine):
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
    lambda_id: float = 0.0          # identity loss: L1 between G(x, own class) and x
    guide: str | None = None        # frozen classifier (run folder, checkpoint, bundled name) read on G(x, t)
    lambda_guide: float = 1.0       # weight of the guide's cross-entropy towards the target
    guide_views: int = 2            # augmented views (random flip and shift) of each edit the guide reads
    guide_sha256: str | None = None  # set from the guide's weights file: a changed guide does not resume
    init: str | None = None         # generator to start from (run folder, checkpoint, bundled name): fine-tuning
    init_sha256: str | None = None  # set from its weights file: a changed start does not resume
    mask: bool = False              # attention-mask generator: mask * change + (1 - mask) * input
    lambda_mask: float = 0.1        # weight of the mask's mean (sparsity)
    lambda_tv: float = 1.0          # weight of the mask's total variation (smoothness)
    mask_warmup: int = 0            # iterations over which the mask goes from held open (plain) to free
    residual: bool = False          # the generator outputs a change added to the input
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
        for name in ("lambda_cls", "lambda_rec", "lambda_id", "lambda_guide", "lambda_mask", "lambda_tv",
                     "g_res_blocks", "held_out"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise FerkitError(f"{name.replace('_', '-')} must be 0 or positive (got {value})")
        if self.mask and self.residual:
            raise FerkitError("--mask and --residual are two ways to keep the input: choose one")
        if int(self.mask_warmup) < 0:
            raise FerkitError(f"mask-warmup must be 0 or positive (got {self.mask_warmup})")
        if not 1 <= int(self.guide_views) <= MAX_GUIDE_VIEWS:   # each view is a batch in memory
            raise FerkitError(f"guide-views must be 1 to {MAX_GUIDE_VIEWS} (got {self.guide_views})")
        if self.guide is not None and not str(self.guide).strip():
            raise FerkitError("--guide is empty: give a classifier (run folder, checkpoint or bundled name)")
        if self.init is not None and not str(self.init).strip():
            raise FerkitError("--init is empty: give a generator (run folder, checkpoint or bundled name)")
        for name, needs, on in (("lambda_guide", "--guide MODEL", self.guide is not None),
                                ("guide_views", "--guide MODEL", self.guide is not None),
                                ("lambda_mask", "--mask", self.mask), ("lambda_tv", "--mask", self.mask),
                                ("mask_warmup", "--mask", self.mask)):
            if not on and getattr(self, name) != getattr(type(self), name):
                raise FerkitError(f"--{name.replace('_', '-')} weighs what {needs} adds: give {needs} too")
        if not (0 <= self.decay_from <= 1 and 0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise FerkitError("decay-from must be in [0, 1] and the Adam betas in [0, 1)")
        if self.image_size < MIN_IMAGE_SIZE or self.image_size % 2 ** max(self.d_layers, 2):
            raise FerkitError(f"GAN image size {self.image_size} must be at least {MIN_IMAGE_SIZE} and divisible by "
                              f"{2 ** max(self.d_layers, 2)} (48 and 64 work)")
        from ..models.record import MAX_IMAGE_SIZE

        if self.image_size > MAX_IMAGE_SIZE:
            raise FerkitError(f"GAN image size {self.image_size} is above the {MAX_IMAGE_SIZE} a checkpoint may hold")
        self.check_machine()

    def progress_of(self, saved: dict) -> tuple[int, int, str | None]:
        return saved["iteration"], self.iterations, None

    def generator_args(self) -> dict:
        return resolve_gan_args("stargan", {"width": self.g_width, "res_blocks": self.g_res_blocks,
                                            "mask": bool(self.mask), "residual": bool(self.residual)}, None)[0]

    def history_fields(self) -> tuple[str, ...]:
        extra = ((GUIDE_FIELDS if self.guide is not None else ()) + (ID_FIELDS if self.lambda_id > 0 else ())
                 + (MASK_FIELDS if self.mask else ()))
        return GAN_HISTORY_FIELDS[:-2] + extra + GAN_HISTORY_FIELDS[-2:]

    def discriminator_args(self) -> dict:
        return resolve_gan_args("stargan", None, {"width": self.d_width, "layers": self.d_layers})[1]


@dataclass
class GanResult:
    run_dir: Path
    classes: tuple[str, ...]
    iterations: int
    history: list[dict]
    seconds: float

    def text(self) -> str:
        """The lines ``ferkit gan train`` prints."""
        last = self.history[-1] if self.history else {}
        return (f"{self.iterations} iterations, {self.seconds:.0f}s of training; last losses: "
                + ", ".join(f"{k} {last[k]:.3f}" for k in ("d_adv", "g_adv", "g_cls", "g_rec") if k in last)
                + f"\nrun folder: {self.run_dir}  (generator.safetensors, samples/, history.csv, curves.png)")


# ----------------------------------------------------------------------------- data
def split_held_out(data: ImageSet, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices): ``n`` faces spread over the classes, never trained on."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(data.labels == c)) for c in range(len(data.classes))]
    for c, faces in enumerate(per_class):   # --held-out no larger than the data: every class keeps enough
        taken = len(range(c, n, len(per_class)))
        if len(faces) - taken < MIN_PER_CLASS:
            raise FerkitError(f"--held-out {n} is too many for this data: {data.classes[c]} has {len(faces)} faces "
                              f"and would keep {max(len(faces) - taken, 0)} to train on (at least {MIN_PER_CLASS} "
                              f"needed); hold out at most {max_held_out(data)}"
                              + (" (--held-out 0 trains on every face; the sample grids then show training faces)"
                                 if max_held_out(data) == 0 else ""))
    held = [per_class[i % len(per_class)][i // len(per_class)] for i in range(n)]
    mask = np.ones(len(data), bool)
    mask[held] = False
    return np.flatnonzero(mask), np.asarray(held, np.int64)


def max_held_out(data: ImageSet) -> int:
    """The largest --held-out that leaves every class MIN_PER_CLASS faces to train on."""
    k = len(data.classes)
    counts = [int((data.labels == c).sum()) for c in range(k)]
    best = 0
    for n in range(0, sum(counts) + 1):
        if all(counts[c] - len(range(c, n, k)) >= MIN_PER_CLASS for c in range(k)):
            best = n
        else:
            break
    return best


def check_gan_data(data: ImageSet) -> None:
    counts = data.class_counts()
    short = {c: n for c, n in counts.items() if n < MIN_PER_CLASS}
    if short:
        raise FerkitError(f"too few images to train a GAN: {', '.join(f'{c} has {n}' for c, n in short.items())}; "
                          f"need at least {MIN_PER_CLASS} per class")
    if len(counts) < 2:
        raise FerkitError("a GAN moves faces between expressions: it needs at least two classes")


# ----------------------------------------------------------------------------- the guide
class Guide:
    """A frozen classifier that reads generated faces (``--guide``): G's output in [-1, 1] at the
    GAN's size becomes the classifier's input (its size, its scaling), in ``views`` augmented views.
    ``columns`` are the classifier's outputs for the GAN's classes, in the GAN's order."""

    def __init__(self, model: torch.nn.Module, record: CheckpointRecord, columns: list[int], views: int,
                 gen: torch.Generator):
        self.model, self.record, self.views, self.gen = model, record, views, gen
        self.columns = torch.as_tensor(columns)
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()

    def views_of(self, fake: torch.Tensor, rows: slice | None = None, n_global: int | None = None) -> torch.Tensor:
        """(views * N, C, S', S') classifier inputs: each view flips each face with probability 1/2
        and shifts it by up to GUIDE_SHIFT of its side (bilinear, border pixels repeated). The random
        numbers are drawn for the global batch of ``n_global`` faces, of which ``fake`` are ``rows``
        (with torchrun; by default the whole batch), so every process draws the same numbers."""
        x01 = (fake.float() + 1) / 2
        size = self.record.image_size
        if x01.shape[-1] != size:
            x01 = F.interpolate(x01, size=(size, size), mode="bilinear", antialias=x01.shape[-1] > size,
                                align_corners=False)
        rows = slice(0, len(x01)) if rows is None else rows
        n_global = len(x01) if n_global is None else n_global
        out = []
        for _ in range(self.views):
            flip = (torch.rand(n_global, generator=self.gen) < 0.5)[rows]
            shift = ((torch.rand(n_global, 2, generator=self.gen) * 2 - 1) * (2 * GUIDE_SHIFT))[rows]
            theta = torch.zeros(len(x01), 2, 3)
            theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)
            theta[:, 1, 1] = 1.0
            theta[:, :, 2] = shift            # in [-1, 1] coordinates, where the side is 2
            grid = F.affine_grid(theta.to(x01.device), list(x01.shape), align_corners=False)
            out.append(F.grid_sample(x01, grid, mode="bilinear", padding_mode="border", align_corners=False))
        return self.record.input.normalize(torch.cat(out))

    def loss(self, fake: torch.Tensor, target: torch.Tensor, rows: slice | None = None,
             n_global: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy towards ``target`` over the views, fraction of views read as the target)."""
        logits = self.model(self.views_of(fake, rows, n_global)).float()[:, self.columns.to(fake.device)]
        t = target.repeat(self.views)
        return F.cross_entropy(logits, t), (logits.argmax(1) == t).float().mean()


def total_variation(m: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, down plus across."""
    return (m[..., 1:, :] - m[..., :-1, :]).abs().mean() + (m[..., :, 1:] - m[..., :, :-1]).abs().mean()


# ----------------------------------------------------------------------------- one iteration
class GanTrainer:
    """One discriminator + generator step at a time. With several processes (torchrun) every rank
    draws the same global batch, trains on its slice, and the gradients are averaged across ranks
    before each optimiser step, so N processes take the steps one process would."""

    def __init__(self, cfg: GanConfig, n_classes: int, device: torch.device, dist: Dist | None = None,
                 guide: tuple[torch.nn.Module, CheckpointRecord, list[int]] | None = None,
                 init: dict[str, torch.Tensor] | None = None):
        self.cfg, self.device, self.n_classes = cfg, device, n_classes
        self.dist = dist or Dist()
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        if (guide is None) != (cfg.guide is None):
            raise FerkitError("GanTrainer: pass the opened guide exactly when the config names one")
        # the guide's views draw from their own generator (saved with the state), so that the
        # batches of a guided run are those of the same run without a guide
        self.guide_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.guide = Guide(guide[0].to(device), guide[1], guide[2], cfg.guide_views, self.guide_gen) if guide \
            else None
        self.G = create_generator(n_classes, cfg.image_size, **cfg.generator_args()).to(device)
        if init is not None:    # --init: the generator starts from these weights, the discriminator afresh
            self.G.load_state_dict(init)
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

    def mask_open(self) -> float:
        """How far training holds the mask open at this iteration: 1 at the start of
        ``--mask-warmup``, falling linearly to 0 at its end (0 without a warm-up)."""
        w = self.cfg.mask_warmup
        return max(0.0, 1.0 - self.iteration / w) if w > 0 else 0.0

    def _rows(self, n: int) -> tuple[slice, int]:
        """(this process's rows of the global batch, the global batch's size) for a local batch of n."""
        if not self.dist.active:
            return slice(0, n), n
        return slice(self.dist.rank * n, (self.dist.rank + 1) * n), n * self.dist.world

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
        # generator: fool D, be classified as the target (by D and the guide), give the input back
        # from the output, leave a face of the target's own class as it is; a sparse, smooth mask
        if cfg.mask:   # the warm-up holds the mask open, then lets it go linearly
            self.G.mask_open = self.mask_open()
        with autocast(self.device, self.amp):
            fake, mask = self.G(x, t, return_mask=True)
            src_fake, cls_fake = self.D(fake)
            rec, mask_rec = self.G(fake, y, return_mask=True)
            same = self.G(x, y) if cfg.lambda_id > 0 else None
            guided = self.guide.loss(fake, t, *self._rows(len(x))) if self.guide is not None else None
        g_adv = -src_fake.float().mean()
        g_cls = F.cross_entropy(cls_fake.float(), t)
        g_rec = (rec.float() - x).abs().mean()
        loss = g_adv + cfg.lambda_cls * g_cls + cfg.lambda_rec * g_rec
        logged = {"d_adv": d_adv, "d_cls": d_cls, "g_adv": g_adv, "g_cls": g_cls, "g_rec": g_rec,
                  "d_real_acc": (cls_real.argmax(1) == y).float().mean()}
        if guided is not None:
            loss = loss + cfg.lambda_guide * guided[0]
            logged.update(g_guide=guided[0], guide_acc=guided[1])
        if same is not None:
            g_id = (same.float() - x).abs().mean()
            loss = loss + cfg.lambda_id * g_id
            logged["g_id"] = g_id
        if cfg.mask:
            masks = torch.cat([mask, mask_rec]).float()
            mask_mean, mask_tv = masks.mean(), total_variation(masks)
            loss = loss + cfg.lambda_mask * mask_mean + cfg.lambda_tv * mask_tv
            logged.update(mask_mean=mask_mean, mask_tv=mask_tv)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self._average_gradients(self.G)
        self.opt_g.step()
        self.iteration += 1
        values = torch.stack([v.detach().float() for v in logged.values()]).tolist()   # one device sync
        out = dict(zip(logged, (v / self.dist.world for v in self.dist.sum(values, self.device))))
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
        t["rng.guide"] = self.guide_gen.get_state()
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
        if "rng.guide" in t:
            self.guide_gen.set_state(t["rng.guide"])
        set_global_rng_state(t, self.device)
        self.iteration = iteration


# ----------------------------------------------------------------------------- outputs
@torch.no_grad()
def sample_grid(G, faces: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], spec: InputSpec,
                device: torch.device) -> np.ndarray:
    """Rows: the faces; columns: the input, then the face moved to each class. A gray image with
    labels. A generator with a mask adds, under each face's row, a row of its masks (white: the
    pixels the edit replaced; black: the input kept)."""
    import cv2

    was_training = G.training
    G.eval()
    x = spec.to_tensor(faces, device)
    outs = [G(x, torch.full((len(faces),), c, device=device), return_mask=True) for c in range(len(classes))]
    G.train(was_training)
    cols = [faces] + [to_uint8(o) for o, _ in outs]
    with_masks = bool(getattr(G, "has_mask", False))
    mask_cols = [None] + [(m.float().clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].cpu().numpy() for _, m in outs]
    per_face = 2 if with_masks else 1
    s = faces.shape[-1]
    cell, head = max(64, s), 22
    grid = np.full((head + cell * per_face * len(faces), cell * len(cols)), 255, np.uint8)

    def put(img, i, j):
        grid[head + i * cell:head + (i + 1) * cell, j * cell:(j + 1) * cell] = cv2.resize(
            img, (cell, cell), interpolation=cv2.INTER_NEAREST)
    for j, name in enumerate(["input", *classes]):
        cv2.putText(grid, name[:9], (j * cell + 3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.38, 0, 1, cv2.LINE_AA)
        for i in range(len(faces)):
            put(cols[j][i], i * per_face, j)
            if with_masks and j:
                put(mask_cols[j][i], i * per_face + 1, j)
    for i, lab in enumerate(labels):   # the input's own expression, under its picture
        row = i * per_face
        cv2.putText(grid, classes[lab][:9], (3, head + (row + 1) * cell - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.32, 255, 1)
        if with_masks:
            cv2.putText(grid, "mask", (3, head + (row + 1) * cell + cell // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.38, 0,
                        1, cv2.LINE_AA)
    return grid


def write_png(path: Path, img: np.ndarray) -> None:
    """Write a gray or BGR uint8 image as a PNG, atomically (a sample grid, for one)."""
    import cv2

    ok, data = cv2.imencode(".png", img)
    if not ok:
        raise FerkitError(f"cannot encode {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def plot_gan_curves(history: list[dict], path: Path) -> None:
    from ..files import new_figure, save_figure

    it = [h["iteration"] for h in history]
    with_mask = all("mask_mean" in h for h in history)
    fig = new_figure(figsize=(16 if with_mask else 11, 4))
    axes = fig.subplots(1, 3 if with_mask else 2)
    a, b = axes[0], axes[1]
    for key in ("d_adv", "g_adv"):
        a.plot(it, [h[key] for h in history], label=key)
    for key in ("d_cls", "g_cls", "g_rec", *GUIDE_FIELDS[:1], *ID_FIELDS):
        if all(key in h for h in history):
            b.plot(it, [h[key] for h in history], label=key)
    panels = [(a, "adversarial (hinge)"), (b, "classification, guide, reconstruction and identity (L1)")]
    if with_mask:
        for key in MASK_FIELDS:
            axes[2].plot(it, [h[key] for h in history], label=key)
        panels.append((axes[2], "mask: mean (sparsity) and total variation"))
    for ax, title in panels:
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
    split_held_out(data, cfg.held_out, cfg.seed)   # --held-out against the data, before anything is written
    cfg.classes = data.classes
    guide = None
    if cfg.guide is not None:   # before the run folder exists: a bad guide leaves nothing behind
        model, grec, gpath, columns, cfg.guide_sha256 = open_classifier(cfg.guide, cfg.classes, "--guide", device)
        guide = (model, grec, columns)
        log(f"guide: {gpath} ({grec.arch}, {grec.image_size} px, classes {', '.join(grec.classes)}), "
            f"{cfg.guide_views} augmented view(s) per edit, weight {cfg.lambda_guide:g}")
    init = _init_weights(cfg) if cfg.init is not None else None
    if device.type == "cuda" and cfg.batch_size < GPU_BATCH:
        log(f"note: a batch of {cfg.batch_size} leaves most of a GPU idle; --batch-size {GPU_BATCH} (with the same "
            "iterations) trains on more faces per second of GPU time. A run keeps its batch size: it is part of its "
            "config")
    folder = RunFolder(cfg.out, writer=dist.main)
    try:
        return _train_gan_in(folder, cfg, overwrite, data, dist, device, t0, guide, init)
    finally:
        folder.release()


def _init_weights(cfg: GanConfig) -> dict[str, torch.Tensor]:
    """--init: the generator's weights (fp32, CPU), which must have the run's classes, size and
    architecture; sets ``cfg.init_sha256``. A mismatch is one line naming what to give."""
    gen, rec, path = load_generator(cfg.init, "cpu")
    if tuple(rec.classes) != tuple(cfg.classes):
        raise FerkitError(f"--init {cfg.init}: its classes are {', '.join(rec.classes)} and the data's "
                          f"{', '.join(cfg.classes)}: give --classes {','.join(rec.classes)} (the same, in that order)")
    want = {"image size": rec.image_size, **rec.model_args}
    have = {"image size": cfg.image_size, **cfg.generator_args()}
    differ = [k for k in want if want[k] != have.get(k)]
    if differ:
        options = {"image size": "--image-size", "width": "--g-width", "res_blocks": "--g-res-blocks",
                   "mask": "--mask", "residual": "--residual"}
        raise FerkitError(f"--init {cfg.init} is a generator with " + ", ".join(f"{k} {want[k]}" for k in differ)
                          + " (this run: " + ", ".join(f"{have.get(k)}" for k in differ) + "): give "
                          + " ".join(options.get(k, k) for k in differ) + " to match")
    cfg.init_sha256 = file_sha256(path)
    log(f"init: the generator starts from {path} ({rec.epoch:,} iterations); the discriminator starts afresh")
    return {k: v.float() for k, v in gen.state_dict().items()}


def _config_record(cfg: GanConfig, tr: GanTrainer, data: ImageSet, held, device: torch.device) -> dict:
    """config.json of a GAN run: the resolved config, the device and precision used, the data's
    counts, held-out and skipped files, the networks' sizes."""
    return {**asdict(cfg), "classes": list(cfg.classes), "device": str(device),
            "precision_used": str(tr.amp or "float32"), "counts": data.class_counts(),
            "held_out_files": [data.paths[i] for i in held], "skipped_files": data.skipped,
            "generator_parameters": count_parameters(tr.G), "discriminator_parameters": count_parameters(tr.D)}


def _history_line(row: dict, iterations: int) -> str:
    """One logged interval as a plain line (no terminal, no progress bar)."""
    return (f"iteration {row['iteration']:6d}/{iterations}  d_adv {row['d_adv']:.3f}  d_cls {row['d_cls']:.3f}  "
            f"g_adv {row['g_adv']:.3f}  g_cls {row['g_cls']:.3f}  g_rec {row['g_rec']:.3f}"
            + "".join(f"  {k} {row[k]:.3f}" for k in GUIDE_FIELDS + ID_FIELDS + MASK_FIELDS if k in row)
            + f"  {row['seconds']:.1f}s")


def _train_gan_in(folder: RunFolder, cfg: GanConfig, overwrite: bool, data, dist: Dist, device: torch.device,
                  t0: float, guide=None, init=None) -> GanResult:
    saved = folder.prepare(cfg, overwrite)
    dist.barrier()
    check_world(saved, dist, folder.path)
    train_idx, held = split_held_out(data, cfg.held_out, cfg.seed)
    # the sample grids' rows: the held-out faces, or with --held-out 0 the first training face of each class
    shown = held if len(held) else np.asarray([train_idx[np.flatnonzero(data.labels[train_idx] == c)[0]]
                                               for c in range(len(cfg.classes))], np.int64)
    images = torch.from_numpy(data.images[train_idx]).to(device)
    labels = torch.from_numpy(data.labels[train_idx]).to(device)
    tr = GanTrainer(cfg, len(cfg.classes), device, dist, guide, init)
    record = _config_record(cfg, tr, data, held, device)
    history: list[dict] = []
    if saved is not None:
        tr.load_state_tensors(folder.load_state(saved), saved["iteration"])
        history = saved["history"]
    else:
        folder.write_config(record)
    if dist.main:
        make_dir(folder.path / "samples", "samples folder")
    extras = [name for name, on in (("guide", cfg.guide is not None), ("identity loss", cfg.lambda_id > 0),
                                    ("attention mask", cfg.mask)) if on]
    log(f"training a GAN (generator {count_parameters(tr.G):,}, discriminator {count_parameters(tr.D):,} "
        f"parameters) on {len(labels)} faces of {', '.join(cfg.classes)}; device {device}, "
        f"{'autocast ' + str(tr.amp).split('.')[-1] if tr.amp else 'fp32'}, batch {cfg.batch_size}"
        + (f"; with {', '.join(extras)}" if extras else ""))

    checkpointed = [tr.iteration]

    def save() -> None:
        folder.write_history(history, cfg.history_fields())
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
                    log(_history_line(row, cfg.iterations))
            if dist.main and (tr.iteration % cfg.sample_every == 0 or tr.iteration == cfg.iterations):
                write_png(folder.path / "samples" / f"iter_{tr.iteration:06d}.png",
                           sample_grid(tr.G, data.images[shown], data.labels[shown], cfg.classes, tr.spec, device))
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
