"""The bundled model against its targets: PublicTest accuracy (with and without test-time
augmentation), speed on pre-cropped faces, and ONNX parity.

    .venv/bin/python benchmarks/bench_bundled.py [--model NAME_OR_PATH] [--out FOLDER]

Prints one line per figure (the machine line first) and writes the evaluation reports under
--out (default ~/ferkit-bench/bundled-eval). FER2013 comes from ../shared/data (see common.py).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import fer2013_dir, machine  # noqa: E402

from ferkit.data import load_dataset  # noqa: E402
from ferkit.evaluate import evaluate  # noqa: E402
from ferkit.export import export_onnx, parity  # noqa: E402
from ferkit.models import open_model  # noqa: E402
from ferkit.runtime import fuse_for_inference, predict_logits, resolve_precision  # noqa: E402


def speed(model, spec, faces: np.ndarray, precision: str, batch: int = 256, reps: int = 3) -> float:
    device = torch.device("cpu")
    amp = resolve_precision(precision, device)
    model = fuse_for_inference(model).to(memory_format=torch.channels_last)
    predict_logits(model, faces[:batch], spec, device, amp, batch)
    t = time.perf_counter()
    for _ in range(reps):
        predict_logits(model, faces, spec, device, amp, batch)
    return reps * len(faces) / (time.perf_counter() - t)


def onnx_speed(path: Path, faces: np.ndarray, batch: int = 256, reps: int = 3) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = faces.astype(np.float32)[:, None] / np.float32(255)
    sess.run(None, {"input": x[:batch]})
    t = time.perf_counter()
    for _ in range(reps):
        for s in range(0, len(x), batch):
            sess.run(["logits"], {"input": x[s:s + batch]})
    return reps * len(x) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="bundled model name or checkpoint (default: the bundled default)")
    ap.add_argument("--out", default=str(Path.home() / "ferkit-bench" / "bundled-eval"))
    ap.add_argument("--tta", default="none,flip,crops")
    a = ap.parse_args()
    print("machine:", machine())
    opened = open_model(a.model, device="cpu", backend="torch")
    path, model, rec = opened.path, opened.module, opened.record
    print(f"model: {path} ({path.stat().st_size / 1e6:.2f} MB), {rec.arch} {rec.model_args}, epoch {rec.epoch}")
    root = fer2013_dir()
    if root is None:
        sys.exit("FER2013 archive not found")
    test = load_dataset(root / "validation", rec.classes, rec.image_size, progress=False, role="PublicTest")
    for tta in a.tta.split(","):
        r = evaluate(path, root / "validation", Path(a.out) / f"tta-{tta}", data=test, tta=tta, progress=False,
                     precision="fp32")
        recall = ", ".join(f"{c} {r.report[c]['recall']:.2f}" for c in rec.classes)
        print(f"PublicTest ({r.n} faces), fp32, TTA {tta}: accuracy {r.accuracy:.4f}, macro-F1 {r.macro_f1:.4f}; "
              f"recall: {recall}")
    faces = test.images[:2048]
    for precision in ("fp32", "auto"):
        used = resolve_precision(precision, torch.device("cpu")) or "fp32"
        print(f"classify pre-cropped faces, PyTorch ({precision} -> {used}), batch 256, no TTA: "
              f"{speed(model, rec.input, faces, precision):.0f} faces/s")
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "m.onnx"
        info = export_onnx(path, onnx)
        real = test.images[:512].astype(np.float32)[:, None] / np.float32(255)
        gap = parity(model, onnx, rec.input, inputs=real, temperature=rec.temperature,
                     per_domain=rec.domain_temperature)
        print(f"ONNX export: max |logit difference| vs PyTorch: {info['max_abs_diff']:.2e} on random inputs, "
              f"{gap:.2e} on 512 PublicTest faces")
        print(f"classify pre-cropped faces, onnxruntime (fp32), batch 256, no TTA: {onnx_speed(onnx, faces):.0f} "
              "faces/s")


if __name__ == "__main__":
    main()
