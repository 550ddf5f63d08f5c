"""Architecture table: parameters, MFLOPs, CPU training and inference speed per registered model;
FER2013 start-up time and memory.

    .venv/bin/python benchmarks/bench_train.py            # everything (FER2013 parts skip if absent)
    .venv/bin/python benchmarks/bench_train.py --quick    # the architecture table only
    .venv/bin/python benchmarks/bench_train.py --quick --precision fp32   # fp32 only (the CI machine's path)

Training speed is ferkit's own loop (Trainer.train_one_epoch: uint8 batches, the recipe's batched
augmentation, channels_last, autocast when the CPU has native bf16), inference is batched
``runtime.predict_logits`` (batch 256) and onnxruntime on the exported graph. Prints the machine
line first; the README's architecture table is this script's output.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import fer2013_dir, machine  # noqa: E402

from ferkit.data import ImageSet  # noqa: E402
from ferkit.models import CheckpointRecord, InputSpec, count_parameters, create_model, save_checkpoint  # noqa: E402
from ferkit.runtime import predict_logits, resolve_precision  # noqa: E402
from ferkit.train import resolve_config  # noqa: E402
from ferkit.train.loop import build_trainer  # noqa: E402

#: (label, recipe, overrides): the rows of the README's architecture table.
ROWS = [
    ("seed (reference)", "reference", {}),
    ("tiny", "fer2013", {"arch": "tiny"}),
    ("vgg width 32", "fer2013", {"model_args": {"width": 32}}),
    ("vgg width 48 (fer2013 recipe)", "fer2013", {}),
    ("resnet width 32", "fer2013", {"arch": "resnet", "model_args": {"width": 32}}),
]


def _mflops(model, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(torch.rand(1, 1, size, size))
    return fc.get_total_flops() / 1e6


def train_speed(cfg, n: int) -> float:
    """Images/s of ferkit's training loop for ``cfg`` (after one warm-up batch)."""
    rng = np.random.default_rng(0)
    s = cfg.image_size
    data = ImageSet(rng.integers(0, 256, (n, s, s), dtype=np.uint8), rng.integers(0, 7, n), [], cfg.classes)
    tr = build_trainer(cfg, data, torch.device("cpu"))
    images, labels = torch.from_numpy(data.images), torch.from_numpy(data.label_distributions())
    tr.train_one_epoch(images[:cfg.batch_size], labels[:cfg.batch_size], 0)
    t = time.perf_counter()
    tr.train_one_epoch(images, labels, 1)
    return n / (time.perf_counter() - t)


def infer_speed(model, spec, precision: str, n: int = 2048) -> float:
    device = torch.device("cpu")
    amp = resolve_precision(precision, device)
    faces = torch.randint(0, 256, (n, spec.image_size, spec.image_size), dtype=torch.uint8)
    model = model.eval().to(memory_format=torch.channels_last)
    predict_logits(model, faces[:256], spec, device, amp)
    t = time.perf_counter()
    predict_logits(model, faces, spec, device, amp)
    return n / (time.perf_counter() - t)


def onnx_speed(model, cfg, spec, n: int = 2048) -> float:
    """Faces/s of onnxruntime on the graph `ferkit export` writes (fp32, batch 256)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return float("nan")
    from ferkit.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/m.onnx"
        save_checkpoint(model, f"{tmp}/m.safetensors", CheckpointRecord(cfg.arch, tuple(cfg.classes), spec,
                                                                        model_args=cfg.model_args))
        export_onnx(f"{tmp}/m.safetensors", path, check=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((256, 1, spec.image_size, spec.image_size), dtype=np.float32)
    sess.run(None, {"input": x})
    t = time.perf_counter()
    for _ in range(n // 256):
        sess.run(None, {"input": x})
    return (n // 256) * 256 / (time.perf_counter() - t)


def architecture_table(n: int, precisions: list[str]) -> None:
    auto = resolve_precision("auto", torch.device("cpu"))
    print(f"precision 'auto' on this CPU: {'bf16 autocast (native bf16)' if auto else 'fp32'}")
    for label, recipe, over in ROWS:
        cfg = resolve_config(recipe, train_dir="-", val_dir="-", out="-", classes="all7", progress=False, **over)
        model = create_model(cfg.arch, 7, cfg.image_size, **cfg.model_args)
        spec = InputSpec(cfg.image_size, 1, 255.0, (cfg.input_mean,), (cfg.input_std,))   # as training builds it
        cells = [f"{label}: {count_parameters(model) / 1e6:.2f} M parameters",
                 f"{_mflops(model, cfg.image_size):.0f} MFLOP/image at {cfg.image_size} px"]
        for precision in precisions:
            cfg.precision = precision
            cells.append(f"train {train_speed(cfg, n):.0f} img/s ({precision})")
            cells.append(f"classify {infer_speed(model, spec, precision):.0f} faces/s ({precision})")
        cells.append(f"onnxruntime {onnx_speed(model, cfg, spec):.0f} faces/s (fp32)")
        print("; ".join(cells), flush=True)


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
        "from ferkit.train import loop as L\n"
        "def first_step(*a, **k):\n"
        "    print(f'{time.time()-t0:.2f}'); sys.exit(0)\n"
        "L.Trainer.train_one_epoch = first_step\n"
        f"L.train(L.TrainConfig(r'{root}/train', r'{root}/validation', tempfile.mkdtemp() + '/run', classes='all7', "
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the architecture table only")
    ap.add_argument("--n", type=int, default=1024, help="images per training-speed measurement")
    ap.add_argument("--precision", action="append", choices=("fp32", "auto"),
                    help="precision(s) to time (default: fp32 and auto)")
    a = ap.parse_args()
    print("machine:", machine())
    architecture_table(a.n, a.precision or ["fp32", "auto"])
    print(f"peak RSS of this process: {_peak_rss_mb():.0f} MB")
    if a.quick:
        return
    root = fer2013_dir()
    if root is None:
        print("FER2013 archive not found: skipping start-up/memory figures")
        return
    fer2013_startup(root)


if __name__ == "__main__":
    main()
