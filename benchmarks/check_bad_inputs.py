"""Re-run the reliability issue's table of bad and unusual inputs and print what each now gets.

    .venv/bin/python benchmarks/check_bad_inputs.py [--work /tmp/ferkit-bad-inputs]

Each row runs the real `ferkit` / `main.py` command in a subprocess and reports its exit status
and the last line it printed on stderr (or what it wrote). The full-disk rows mount a 1 MB tmpfs
(needs root; skipped otherwise). The EXIF row uses 40 FER2013 PublicTest faces and the bundled
model when both are present. Not a test: the test suite covers the same behaviour with its own
small data (tests/test_hostile.py); this is the table for a person to read.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import fer2013_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ROWS: list[tuple[str, str]] = []


def ferkit(*args, timeout=600, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "ferkit", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def last_line(p: subprocess.CompletedProcess) -> str:
    lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
    tb = " (TRACEBACK)" if "Traceback" in p.stderr else ""
    return f"exit {p.returncode}: {lines[-1][:150] if lines else '(nothing on stderr)'}{tb}"


def row(name: str, outcome: str) -> None:
    ROWS.append((name, outcome))
    print(f"| {name} | {outcome} |", flush=True)


def bomb_png(path: Path, w: int, h: int) -> None:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))


def make_folder(root: Path, classes, n: int, seed: int, size: int = 40) -> Path:
    rng = np.random.default_rng(seed)
    for i, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            img = (rng.random((size, size)) * 90).astype(np.uint8)
            img[(i * 7) % (size - 5):(i * 7) % (size - 5) + 5] += 150
            Image.fromarray(img).save(root / c / f"{c}_{j:03d}.png")
    return root


def mounted_full_disk(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True).returncode
    if ok != 0:
        return False
    (path / "filler").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))   # leave 64 KB
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/ferkit-bad-inputs")
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env_cache = {"FERKIT_CACHE": str(work / "cache")}
    six = ["angry", "disgusted", "fearful", "happy", "sad", "surprised"]
    data = make_folder(work / "data", six, 12, 1)
    val = make_folder(work / "val", six, 4, 2)
    run = work / "run"
    p = ferkit("train", "--train-dir", data, "--val-dir", val, "--out", run, "--arch", "tiny", "--image-size", "32",
               "--epochs", "2", env=env_cache)
    assert p.returncode == 0, p.stderr
    print("| input | what happens now |\n|---|---|")

    # 1-2: huge images in train / evaluate / predict folders
    big = make_folder(work / "big", six, 4, 3)
    bomb_png(big / "happy" / "bomb.png", 20000, 20000)
    Image.new("L", (10000, 10000), 128).save(big / "sad" / "hundred-mp.png")
    p = ferkit("train", "--train-dir", big, "--val-dir", val, "--out", work / "run-big", "--arch", "tiny",
               "--image-size", "32", "--epochs", "1", env=env_cache)
    warn = next((line for line in p.stderr.splitlines() if "skipped" in line), "")
    row("400-megapixel image (bomb header) + 100-megapixel image in a train folder",
        f"exit {p.returncode}; {warn[:160]}; Python warnings printed: {'Warning' in p.stderr}")
    p = ferkit("evaluate", run, "--test-dir", big, "--out", work / "eval-big", env=env_cache)
    row("the same folder through evaluate", last_line(p) + f"; skipped line: {'too large' in p.stderr}")
    p = ferkit("predict", run, big, "--no-detect", "--out", work / "pred-big")
    summary = work / "pred-big" / "summary.json"
    s = json.loads(summary.read_text()) if summary.exists() else {}
    row("the same folder through predict", f"exit {p.returncode}; {s.get('images')} images classified, skipped: "
        f"{[(Path(b[0]).name, b[1][:60]) for b in s.get('bad', [])]}; predictions.csv: "
        f"{(work / 'pred-big' / 'predictions.csv').exists()}")

    # 3: full disk
    disk = work / "full"
    if mounted_full_disk(disk):
        try:
            p = ferkit("train", "--train-dir", data, "--val-dir", val, "--out", disk / "run", "--image-size", "32",
                       "--epochs", "1", env=env_cache)
            left = sorted(x.name for x in (disk / "run").iterdir()) if (disk / "run").exists() else []
            row("full disk during train", last_line(p) + f"; left in the run folder: {left}")
            p = ferkit("evaluate", run, "--test-dir", val, "--out", disk / "eval")
            row("full disk during evaluate", last_line(p))
            p = ferkit("synth", "faces", "--out", disk / "faces", "--per-class", "400", "--no-progress")
            row("full disk during synth faces", last_line(p) + f"; output folder exists: {(disk / 'faces').exists()}")
        finally:
            subprocess.run(["umount", str(disk)])
    else:
        row("full disk", "skipped (cannot mount a tmpfs here)")

    # 4: SIGKILL during the first checkpoint write, then the same command
    kill = ("import os, signal, sys\nimport safetensors.torch as st\nreal = st.save_file\n"
            "def die(t, f, metadata=None):\n    real(t, f, metadata)\n    if '.best.' in f:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\nst.save_file = die\n"
            "from ferkit.cli import main\nsys.argv = ['ferkit'] + sys.argv[1:]\nmain()\n")
    args = ["train", "--train-dir", data, "--val-dir", val, "--out", work / "killed", "--arch", "tiny",
            "--image-size", "32", "--epochs", "2"]
    k = subprocess.run([PY, "-c", kill, *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, **env_cache})
    p = ferkit(*args, env=env_cache)
    row("SIGKILL while epoch 1's checkpoint is written, then the same command",
        f"killed (exit {k.returncode}); re-run: {last_line(p)}; "
        f"summary.json: {(work / 'killed' / 'summary.json').exists()}")

    # 5: EXIF-rotated faces: evaluate vs predict
    fer = fer2013_dir()
    if fer is not None:
        rot = work / "rotated"
        n = 0
        for c in ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]:
            (rot / c).mkdir(parents=True)
            for f in sorted((fer / "validation" / c).glob("*.jpg"))[:6]:
                exif = Image.Exif()
                exif[0x0112] = 6
                Image.fromarray(np.rot90(np.asarray(Image.open(f)), 1).copy()).save(rot / c / f.name, exif=exif)
                n += 1
        ev = ferkit("evaluate", "fer2013-vgg", "--test-dir", rot, "--out", work / "eval-rot", "--precision", "fp32")
        pr = ferkit("predict", "fer2013-vgg", rot, "--no-detect", "--out", work / "pred-rot")   # fp32 by default
        if ev.returncode == 0 and pr.returncode == 0:
            import csv
            with open(work / "eval-rot" / "predictions.csv") as fh:
                e = {Path(r["file"]).name: r["predicted"] for r in csv.DictReader(fh)}
            with open(work / "pred-rot" / "predictions.csv") as fh:
                q = {Path(r["source"]).name: r["label"] for r in csv.DictReader(fh)}
            agree = sum(e[k] == q.get(k) for k in e)
            acc = json.loads((work / "eval-rot" / "metrics.json").read_text())["accuracy"]
            row(f"{n} EXIF-rotated (orientation 6) FER2013 faces: evaluate vs predict",
                f"agree on {agree} of {len(e)}; evaluate accuracy {acc:.3f} (bundled model, fp32)")
        else:
            row("EXIF-rotated faces", f"evaluate {last_line(ev)}; predict {last_line(pr)}")

    # 6: Ctrl-C during predict
    from ferkit.bundled import sample_photo
    many = work / "many"
    many.mkdir()
    for i in range(2000):   # a real photo each: decoding, face detection and annotation take a while
        (many / f"{i:05d}.jpg").symlink_to(sample_photo())
    proc = subprocess.Popen([PY, "-m", "ferkit", "predict", str(many), "--format", "json", "--annotate",
                             "--out", str(work / "pred-int")], stderr=subprocess.PIPE, text=True)
    partial = work / "pred-int" / "predictions.partial.jsonl"
    while proc.poll() is None and not (partial.exists() and partial.stat().st_size > 0):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate()[1].strip().splitlines()
    s = json.loads((work / "pred-int" / "summary.json").read_text())
    row("Ctrl-C during predict (2,000 photos, --format json, --annotate)",
        f"exit {proc.returncode}: {err[-1][:170] if err else ''}; files: "
        f"{sorted(x.name for x in (work / 'pred-int').iterdir())}; summary complete={s['complete']}")

    # 7: main.py with an unwritable result folder
    p = subprocess.run([PY, str(ROOT / "main.py"), "--mode=train", f"--train_dir={data}", f"--val_dir={val}",
                        f"--model_save_dir={work / 'mainrun'}", "--result_save_dir=/proc/ferkit-results",
                        "--num_epoch=1", "--image_size=32", "--cnum=6"], capture_output=True, text=True)
    row("main.py --mode=train with an unwritable --result_save_dir (/proc/...)",
        last_line(p) + f"; trained first: {(work / 'mainrun' / 'history.csv').exists()}")

    # 8: argument errors
    base = ["train", "--train-dir", data, "--val-dir", val, "--out", work / "o"]
    for name, argv in [("--device gpu", [*base, "--device", "gpu"]),
                       ("--arch tiny --image-size 7", [*base, "--arch", "tiny", "--image-size", "7"]),
                       ("synth preview --out folder", ["synth", "preview", "--out", work]),
                       ("synth preview --out no_extension", ["synth", "preview", "--out", work / "sheet"]),
                       ("export --opset 1", ["export", run, "--out", work / "m.onnx", "--opset", "1"]),
                       ("export --opset 99", ["export", run, "--out", work / "m.onnx", "--opset", "99"]),
                       ("train --lr inf", [*base, "--lr", "inf"]),
                       ("train --lr 1e30 (diverges)", [*base, "--lr", "1e30", "--epochs", "2", "--image-size", "32"])]:
        p = ferkit(*argv, env=env_cache)
        row(name, last_line(p) + (f"; stderr lines: {len(p.stderr.strip().splitlines())}"))
    row("... and after --lr 1e30", f"best.safetensors written: {(work / 'o' / 'best.safetensors').exists()}")

    # 9: 16-bit PNG annotated
    face = np.asarray(Image.open(next(iter(sorted((data / 'sad').glob('*.png')))))).astype(np.uint16) * 257
    (work / "p16").mkdir()
    Image.fromarray(np.kron(face, np.ones((4, 4), np.uint16))).save(work / "p16" / "sixteen.png")
    p = ferkit("predict", run, work / "p16", "--no-detect", "--annotate", "--out", work / "pred16")
    ann = np.asarray(Image.open(work / "pred16" / "annotated" / "sixteen.png").convert("L"))
    row("predict --annotate on a 16-bit PNG", f"exit {p.returncode}; annotated copy mean gray {ann.mean():.0f} "
        f"(all white would be 255), original mean {face.mean() / 257:.0f}")

    # 10: evaluate on a folder with a class the model lacks
    seven = make_folder(work / "seven", six + ["neutral"], 4, 4)
    row("evaluate a six-class model on a folder that also has neutral",
        last_line(ferkit("evaluate", run, "--test-dir", seven, "--out", work / "e7")))
    p = ferkit("evaluate", run, "--test-dir", seven, "--out", work / "e7s", "--shared-classes")
    row("... with --shared-classes", last_line(p))

    # 11: predict model.onnx photo.jpg
    ferkit("export", run, "--out", work / "m.onnx")
    p = ferkit("predict", work / "m.onnx", data / "happy", "--no-detect", "--out", work / "pred-onnx")
    row("ferkit predict model.onnx photos/ (no --backend)", f"exit {p.returncode}; "
        f"{json.loads((work / 'pred-onnx' / 'summary.json').read_text())['backend']} backend")

    # 12: a finished run, same command with more --epochs
    p = ferkit("train", "--train-dir", data, "--val-dir", val, "--out", run, "--arch", "tiny", "--image-size", "32",
               "--epochs", "4", env=env_cache)
    hist = (run / "history.csv").read_text().count("\n") - 1
    row("a finished 2-epoch run, same command with --epochs 4", f"exit {p.returncode}: "
        f"{next((x for x in p.stderr.splitlines() if 'continuing' in x), '')}; history now {hist} epochs")

    # 13: logs to a file
    log = work / "demo.log"
    with open(log, "w") as fh:
        subprocess.run([PY, "-m", "ferkit", "demo", "--out", str(work / "demo"), "--per-class", "40", "--epochs", "2"],
                       stdout=fh, stderr=subprocess.STDOUT)
    text = log.read_text()
    row("demo with output to a file", f"log {len(text.encode())} bytes, {text.count(chr(13))} carriage returns")


if __name__ == "__main__":
    main()
