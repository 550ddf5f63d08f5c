"""Training/evaluation speed of the `seed` model, and FER2013 start-up time and memory.

    .venv/bin/python benchmarks/bench_train.py            # everything (FER2013 parts skip if absent)
    .venv/bin/python benchmarks/bench_train.py --quick    # throughput only
    .venv/bin/python benchmarks/bench_train.py --quick --bf16   # and forced bf16 autocast

Prints one line per figure; numbers go into the README with the machine line printed first.
"""
from __future__ import annotations

import argparse
import os
import tempfile
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


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fer2013_startup(root) -> None:
    """Runs on FER2013 train in fresh processes: seconds from process start until the first
    training step can start (data decoded or read from the cache, model and optimizer built) and
    until it is done; then peak memory of a short training run on the full split."""
    # The real `train()` path, stopped where the first training step would begin.
    code = (
        "import time; t0=time.time()\n"
        "import sys, tempfile\n"
        "from ferkit import train as T\n"
        "def first_step(*a, **k):\n"
        "    print(f'{time.time()-t0:.2f}'); sys.exit(0)\n"
        "T.train_one_epoch = first_step\n"
        f"T.train(T.TrainConfig(r'{root}/train', r'{root}/validation', tempfile.mkdtemp() + '/run', classes='all7', "
        "progress=False))\n"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "FERKIT_CACHE": cache}
        for label in ("first run (decodes, writes the cache)", "second run (cache hit)"):
            t = time.time()
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 env=env).stdout.split()
            print(f"FER2013 train (28,709 images) + validation (3,589), {label}: first training step starts "
                  f"{float(out[0]):.2f} s after interpreter start ({time.time() - t:.2f} s wall for the process)")
    code = (
        "from ferkit.train import TrainConfig, train\n"
        f"train(TrainConfig(r'{root}/train', r'{root}/validation', '/tmp/ferkit-bench-mem', classes='all7', "
        "epochs=1, train_limit=640, progress=False), overwrite=True)\n"
        "for line in open('/proc/self/status'):\n"
        "    line.startswith('VmHWM:') and print(int(line.split()[1]) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    print(f"FER2013 train, peak memory of `train` (28,709 images in memory, 640 steps' worth of training, "
          f"validation on 3,589): {out[-1]} MB")


def compute_ceiling(batch: int = 64) -> tuple[float, float, float]:
    """What this CPU can do at best: (sgemm GFLOP/s, training GFLOP per image, inference GFLOP per image).

    FLOPs are counted by torch's FlopCounterMode on the `seed` model at 64x64, six classes; the
    sgemm rate is a large fp32 matrix product on every thread torch uses, the best case for oneDNN.
    """
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model("seed", num_classes=6, image_size=64)
    x = torch.rand(batch, 1, 64, 64)
    y = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        model.eval()(x)
    model.train()
    with FlopCounterMode(display=False) as step:
        F.cross_entropy(model(x), y).backward()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    reps, t = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    gflops = 2 * 2048**3 * reps / (time.perf_counter() - t) / 1e9
    return gflops, step.get_total_flops() / batch / 1e9, fwd.get_total_flops() / batch / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=1280, help="images per throughput measurement")
    ap.add_argument("--bf16", action="store_true",
                    help="also time bf16 autocast training (slow where the CPU emulates bf16)")
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
    if a.bf16:
        bf = ferkit_loop(images, labels, 64, 256, precision="bf16")
        print(f"train, bf16 autocast forced (--precision bf16), channels_last, batch 64, 256 images: {bf:.1f} images/s")
    print(f"evaluate, in-memory, batch 256: {eval_speed(images[:4096]):.1f} images/s")
    print(f"peak RSS of this process: {_peak_rss_mb():.0f} MB")
    gflops, train_gf, infer_gf = compute_ceiling()
    print(f"ceiling: fp32 sgemm (2048x2048) runs at {gflops:.1f} GFLOP/s; the seed model costs "
          f"{train_gf:.3f} GFLOP per image trained and {infer_gf:.3f} per image classified, so at sgemm "
          f"speed at most {gflops / train_gf:.0f} images/s training and {gflops / infer_gf:.0f} images/s inference; "
          f"ferkit's training loop reaches {fk * train_gf:.1f} GFLOP/s")
    if a.quick:
        return
    root = fer2013_dir()
    if root is None:
        print("FER2013 archive not found: skipping start-up/memory figures")
        return
    fer2013_startup(root)


if __name__ == "__main__":
    main()
