"""Training/evaluation speed of the `seed` model, and FER2013 start-up time and memory.

    .venv/bin/python benchmarks/bench_train.py            # everything (FER2013 parts skip if absent)
    .venv/bin/python benchmarks/bench_train.py --quick    # throughput only

Prints one line per figure; numbers go into the README with the machine line printed first.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import fer2013_dir, machine  # noqa: E402

from ferkit.models import create_model  # noqa: E402
from ferkit.train import TrainConfig, predict_logits, resolve_precision, train_one_epoch  # noqa: E402


def eager_fp32_loop(images: torch.Tensor, labels: torch.Tensor, batch: int, steps: int) -> float:
    """The plain PyTorch loop a user would write: fp32, NCHW, no tricks. Returns images/s."""
    torch.manual_seed(0)
    model = create_model("seed", 6, 64).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for step in range(steps + 2):
        if step == 2:
            t = time.perf_counter()
        i = torch.randint(0, len(labels), (batch,))
        loss = F.cross_entropy(model(images[i].unsqueeze(1).float() / 255), labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t)


def ferkit_loop(images: torch.Tensor, labels: torch.Tensor, batch: int, n: int, precision: str = "auto") -> float:
    """ferkit's own train_one_epoch over n images. Returns images/s (after one warm-up batch)."""
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = create_model("seed", 6, 64).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cfg = TrainConfig("-", "-", "-", batch_size=batch, progress=False, precision=precision)
    gen = torch.Generator().manual_seed(0)
    amp = resolve_precision(precision, device)
    train_one_epoch(model, opt, sched, images[:batch], labels[:batch], cfg, gen, device, amp, "warm-up")
    t = time.perf_counter()
    train_one_epoch(model, opt, sched, images[:n], labels[:n], cfg, gen, device, amp, "bench")
    return n / (time.perf_counter() - t)


def eval_speed(images: torch.Tensor) -> float:
    model = create_model("seed", 6, 64).eval().to(memory_format=torch.channels_last)
    predict_logits(model, images[:256], torch.device("cpu"))
    t = time.perf_counter()
    predict_logits(model, images, torch.device("cpu"), resolve_precision("auto", torch.device("cpu")))
    return len(images) / (time.perf_counter() - t)


def fer2013_startup(root) -> None:
    """Second run on FER2013 train: time from process start to the first training step, and peak RSS."""
    code = (
        "import time, resource, torch; t0=time.time()\n"
        "from ferkit.train import TrainConfig, load_train_val\n"
        f"cfg=TrainConfig(r'{root}/train', r'{root}/validation', '-', classes='all7', progress=False)\n"
        "tr, va = load_train_val(cfg)\n"
        "from ferkit.models import create_model; import torch.nn.functional as F\n"
        "m=create_model('seed', 7, 64).to(memory_format=torch.channels_last); opt=torch.optim.Adam(m.parameters())\n"
        "x=torch.from_numpy(tr.images[:64]).unsqueeze(1).float().div(255).contiguous(memory_format=torch.channels_last)\n"
        "F.cross_entropy(m(x), torch.from_numpy(tr.labels[:64])).backward(); opt.step()\n"
        "print(f'{time.time()-t0:.2f} {len(tr)} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024:.0f}')\n"
    )
    for label in ("first run (decode + cache write)", "second run (cache hit)"):
        t = time.time()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        print(f"FER2013 train ({out[1]} images), {label}: first step after {float(out[0]):.2f} s in-process, "
              f"{time.time() - t:.2f} s including interpreter start; peak RSS {out[2]} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=1280, help="images per throughput measurement")
    a = ap.parse_args()
    print("machine:", machine())
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (max(a.n, 4096), 64, 64), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 6, len(images)))
    eager = eager_fp32_loop(images, labels, 64, steps=a.n // 64)
    print(f"train, plain fp32 eager PyTorch loop (NCHW), batch 64: {eager:.1f} images/s")
    fk = ferkit_loop(images, labels, 64, a.n)
    print(f"train, ferkit default path ({resolve_precision('auto', torch.device('cpu')) or 'fp32'}, channels_last), "
          f"batch 64: {fk:.1f} images/s ({fk / eager:.2f}x the eager loop)")
    print(f"evaluate, in-memory, batch 256: {eval_speed(images[:4096]):.1f} images/s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MB")
    if a.quick:
        return
    root = fer2013_dir()
    if root is None:
        print("FER2013 archive not found: skipping start-up/memory figures")
        return
    fer2013_startup(root)


if __name__ == "__main__":
    main()
