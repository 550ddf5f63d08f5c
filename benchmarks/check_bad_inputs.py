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
    ap.add_argument("--only-issue21", action="store_true",
                    help="only the rows of issue 21's causes (state on disk, one line, safe outputs)")
    ap.add_argument("--only-issue33", action="store_true",
                    help="only the rows of issue 33's CLI cases (hangs, unbounded values, small things)")
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
    if a.only_issue21:
        issue21_rows(work, run, data, val, env_cache)
        return
    if a.only_issue33:
        issue33_rows(work, run, data, val, env_cache)
        return

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

    issue21_rows(work, run, data, val, env_cache)
    issue33_rows(work, run, data, val, env_cache)


# ----------------------------------------------------------------------------- issue 21
def one_line(p: subprocess.CompletedProcess) -> str:
    """Exit status, how many lines stderr has (notes aside) and the last one."""
    lines = [x for x in p.stderr.strip().splitlines() if x.strip() and not x.startswith(("note:", "warning:"))]
    tb = " (TRACEBACK)" if "Traceback" in p.stderr else ""
    return f"exit {p.returncode}, {len(lines)} line(s): {lines[-1][:170] if lines else '(nothing)'}{tb}"


def damaged_checkpoint(src: Path, dst: Path, record_edit=None, tensor_edit=None) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), framework="pt") as fh:
        record = json.loads(fh.metadata()["ferkit"])
    state = load_file(str(src))
    if record_edit:
        record_edit(record)
    if tensor_edit:
        tensor_edit(state)
    save_file(state, str(dst), metadata={"ferkit": json.dumps(record)})
    return dst


def _parent(proc_dir: Path) -> int:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def run_py(code: str, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """``ferkit`` with ``code`` run first in the same process (to stage a bug or a failure)."""
    main_code = f"{code}\nimport sys\nfrom ferkit.cli import main\nsys.argv = ['ferkit'] + sys.argv[1:]\nmain()\n"
    return subprocess.run([PY, "-c", main_code, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def issue21_rows(work: Path, run: Path, data: Path, val: Path, env_cache: dict) -> None:
    """One row per cause of issue 21 that is not about run folders: what each gets now."""
    import csv

    ckpt = run / "best.safetensors"
    w = work / "i21"
    w.mkdir()
    # state on disk: the dataset cache
    cache = {"FERKIT_CACHE": str(w / "cache")}
    first = ferkit("evaluate", run, "--test-dir", val, "--out", w / "ev1", env=cache)
    npy = next((w / "cache" / "datasets").glob("*.npy"))
    np.save(npy, 255 - np.load(npy))
    again = ferkit("evaluate", run, "--test-dir", val, "--out", w / "ev2", env=cache)
    acc = [json.loads((w / e / "metrics.json").read_text())["accuracy"] for e in ("ev1", "ev2")]
    note = next((x for x in again.stderr.splitlines() if "cache" in x), "no note")
    row("dataset cache inverted (255 - pixels) between two evaluations",
        f"accuracy {acc[0]:.3f} then {acc[1]:.3f}; {note[:150]}")
    # state on disk: checkpoint records and weights
    cases = {
        "checkpoint whose record asks for a terabyte model (vgg width 10^7)":
            dict(record_edit=lambda r: r.update(arch="vgg", model_args={"width": 10 ** 7})),
        "checkpoint with a class listed twice": dict(record_edit=lambda r: r.update(classes=["happy"] * 6)),
        "checkpoint with an unknown class name ('=cmd')":
            dict(record_edit=lambda r: r.update(classes=r["classes"][:-1] + ["=cmd"])),
        "checkpoint with input std 0 / mean NaN":
            dict(record_edit=lambda r: r["input"].update(mean=[float("nan")])),
        "checkpoint with a NaN weight": dict(tensor_edit=lambda s: s["0.weight"].view(-1)[:1].fill_(float("nan"))),
        "checkpoint with integer weights": dict(tensor_edit=lambda s: s.update({"0.weight": s["0.weight"].int()})),
    }
    for i, (name, kw) in enumerate(cases.items()):
        bad = damaged_checkpoint(ckpt, w / f"bad{i}.safetensors", **kw)
        row(name, "evaluate: " + one_line(ferkit("evaluate", bad, "--test-dir", val, "--out", w / f"evb{i}")))

    def overflow(s):
        s["0.bias"].fill_(1e30)
        last = [k for k in s if k.endswith(".weight") and s[k].ndim == 2][-1]
        s[last].fill_(3e38)
    inf = damaged_checkpoint(ckpt, w / "inf.safetensors", tensor_edit=overflow)
    for cmd in (["evaluate", inf, "--test-dir", val, "--out", w / "evinf"],
                ["predict", inf, val, "--no-detect", "--out", w / "pinf"],
                ["export", inf, "--out", w / "inf.onnx"]):
        row(f"finite weights whose outputs overflow: {cmd[0]}", one_line(ferkit(*cmd)))
    # one line everywhere: parse-time values
    base = ["train", "--train-dir", data, "--val-dir", val, "--out", w / "o", "--arch", "tiny", "--image-size", "32"]
    for name, argv in [("train --seed -1", [*base, "--seed", "-1"]),
                       ("train --image-size 5000", [*base[:-2], "--image-size", "5000"]),
                       ("mix --ratio 1e6", ["mix", "--real", data, "--synthetic", val, "--ratio", "1e6", "--out",
                                            w / "m.csv"]),
                       ("gan train --held-out 1000 on 12 faces a class",
                        ["gan", "train", "--data", data, "--out", w / "g", "--held-out", "1000"])]:
        row(name, one_line(ferkit(*argv, env=env_cache)) + f"; output made: {(w / 'o').exists()}")
    # FIFOs, deep folders
    fifo_data = w / "fifo"
    shutil.copytree(val, fifo_data)
    os.mkfifo(fifo_data / "happy" / "pipe.png")
    try:
        p = ferkit("evaluate", run, "--test-dir", fifo_data, "--out", w / "evf", timeout=120)
        note = next((x for x in p.stderr.splitlines() if "pipe.png" in x), "")
        row("a FIFO named pipe.png in a test folder", f"exit {p.returncode}; {note[:150]}")
    except subprocess.TimeoutExpired:
        row("a FIFO named pipe.png in a test folder", "HANGS (killed after 120 s)")
    deep = here = w / "deep"
    deep.mkdir()
    for _ in range(1200):        # one by one: os.makedirs recurses as deep
        here = here / "d"
        here.mkdir()
    shutil.copy(next(iter(sorted((val / "happy").glob("*.png")))), here / "face.png")
    p = ferkit("predict", run, deep, "--no-detect", "--out", w / "pdeep")
    row("a face 1,200 folders deep, through predict", one_line(p) if p.returncode else
        f"exit 0; {json.loads((w / 'pdeep' / 'summary.json').read_text())['images']} image(s) classified")
    (here / "face.png").unlink()
    while here != w:             # bottom up: shutil.rmtree would recurse as deep
        here.rmdir()
        here = here.parent
    # full disk during predict
    disk = w / "full"
    if mounted_full_disk(disk):
        try:
            many = w / "many"
            shutil.copytree(data, many)
            st = os.statvfs(disk)
            (disk / "filler2").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - 4096))   # leave 4 KB
            p = ferkit("predict", run, many, "--no-detect", "--out", disk / "p")
            left = sorted(x.name for x in (disk / "p").iterdir()) if (disk / "p").exists() else []
            row("full disk during predict", one_line(p) + f"; left: {left}")
        finally:
            subprocess.run(["umount", str(disk)])
    else:
        row("full disk during predict", "skipped (cannot mount a tmpfs here)")
    # SIGTERM
    cmd = [PY, "-m", "ferkit", "train", "--train-dir", str(data), "--val-dir", str(val), "--out", str(w / "term"),
           "--arch", "tiny", "--image-size", "32", "--epochs", "500", "--patience", "0", "--no-progress"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, **env_cache})
    while proc.poll() is None and not (w / "term" / "history.csv").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1].strip().splitlines()
    resumed = subprocess.run(cmd[:cmd.index("500")] + ["2"] + cmd[cmd.index("500") + 1:], capture_output=True,
                             text=True, env={**os.environ, **env_cache})
    row("SIGTERM during train, then the same command with --epochs 2",
        f"exit {proc.returncode}: {err[-1][:150] if err else ''}; re-run exit {resumed.returncode}")
    # stale temporary folders of a killed dataset build
    cmd = [PY, "-m", "ferkit", "synth", "faces", "--out", str(w / "faces"), "--per-class", "400", "--workers", "1",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    while proc.poll() is None and not any(w.glob(".faces.tmp-*/*/*.png")):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    before = len(list(w.glob(".faces.tmp-*")))
    cmd[cmd.index("400")] = "2"
    p = subprocess.run(cmd, capture_output=True, text=True)
    row("synth faces killed (SIGKILL) mid-build, then run again",
        f"{before} hidden .faces.tmp-* folder(s) after the kill; re-run exit {p.returncode}, "
        f"{len(list(w.glob('.faces.tmp-*')))} left")
    # studies: a --jobs worker killed by the OS; two shards running side by side
    ferkit("synth", "faces", "--out", w / "gen", "--per-class", "12", "--size", "16", "--workers", "1", "--no-progress")
    study = [PY, "-m", "ferkit", "study", "--real-train", str(data), "--val", str(val), "--test", str(val),
             "--synthetic", str(w / "gen"), "--ratios", "0,1", "--seeds", "1", "--no-augment-arm", "--no-synthetic-arm",
             "--arch", "tiny", "--epochs", "300", "--patience", "0", "--image-size", "16", "--batch-size", "16",
             "--no-progress", "--out"]
    env = {**os.environ, **cache, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(study + [str(w / "killed"), "--jobs", "2"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not any(w.glob("killed/runs/*/history.csv")):
        time.sleep(0.05)
    workers = [int(d.name) for d in Path("/proc").glob("[0-9]*") if d.name != str(proc.pid)
               and _parent(d) == proc.pid and b"spawn_main" in _cmdline(d)]
    for pid in workers[:1]:
        os.kill(pid, signal.SIGKILL)
    err = proc.communicate(timeout=300)[1].strip().splitlines()
    again = subprocess.run(study + [str(w / "killed"), "--jobs", "2"], capture_output=True, text=True, env=env)
    row("a study --jobs worker killed (SIGKILL, as the OOM killer does), then the same command",
        f"exit {proc.returncode}, {len(err)} line(s): {err[-1][:150] if err else ''}; re-run exit {again.returncode}, "
        f"table: {(w / 'killed' / 'table.csv').exists()}")
    shards = [subprocess.Popen(study + [str(w / "shards"), "--shard", f"{i}/2"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env) for i in (1, 2)]
    codes = [sh.wait(timeout=600) for sh in shards]
    row("two study shards started together on one --out", f"exits {codes}; table written: "
        f"{(w / 'shards' / 'table.csv').exists()}")
    # an unexpected exception; running out of memory
    p = run_py("import ferkit.models\ndef boom(): raise ZeroDivisionError('a bug')\n"
               "ferkit.models.list_models_info = boom", "models", env=cache)
    row("a bug (ZeroDivisionError inside `ferkit models`)", one_line(p))
    p = run_py("import ferkit.evaluate\ndef oom(*a, **k): raise RuntimeError(\"DefaultCPUAllocator: can't allocate "
               "memory: you tried to allocate 1099511627776 bytes.\")\nferkit.evaluate.evaluate = oom",
               "evaluate", run, "--test-dir", val, env=cache)
    row("torch cannot allocate 1 TB during evaluate", one_line(p))
    # outputs over inputs
    ferkit("mix", "--real", data, "--synthetic", val, "--ratio", "0.5", "--out", w / "mix.csv")
    for name, argv in [("mix --out equal to its --real manifest",
                        ["mix", "--real", w / "mix.csv", "--synthetic", val, "--ratio", "0.5", "--out", w / "mix.csv"]),
                       ("mix --synthetic equal to --real",
                        ["mix", "--real", data, "--synthetic", data, "--ratio", "1", "--out", w / "self.csv"]),
                       ("evaluate --out inside the test folder",
                        ["evaluate", run, "--test-dir", val, "--out", val / "happy" / "report"])]:
        row(name, one_line(ferkit(*argv, env=env_cache)))
    # the right model, the right hint
    (w / "model.pt").write_bytes(b"\x80\x04junk")
    (w / "norun").mkdir()
    (w / "norun" / "config.json").write_text("{}")
    for name, first in (("predict model.pt photos/", w / "model.pt"),
                        ("predict RUN_WITHOUT_CHECKPOINT photos/", w / "norun")):
        row(name, one_line(ferkit("predict", first, val, "--no-detect", "--out", w / "pp")))
    row("synth edit given a classifier run", one_line(ferkit("synth", "edit", run, "--source", val, "--out",
                                                             w / "edit", "--per-class", "1")))
    # safe outputs
    formula = w / "=HYPERLINK(1).png"
    shutil.copy(next(iter(sorted((val / "sad").glob("*.png")))), formula)
    p = subprocess.run([PY, "-m", "ferkit", "predict", str(run), formula.name, "--no-detect", "--out", "pcsv"],
                       cwd=w, capture_output=True, text=True)
    with open(w / "pcsv" / "predictions.csv", newline="") as fh:
        cell = next(csv.DictReader(fh))["source"] if p.returncode == 0 else "(failed)"
    row("predict on a file named =HYPERLINK(1).png", f"source cell in predictions.csv: {cell!r}")
    row("permissions of best.safetensors vs config.json (umask 022)",
        f"{oct(ckpt.stat().st_mode & 0o777)} vs {oct((run / 'config.json').stat().st_mode & 0o777)}")
    import cv2
    vw = cv2.VideoWriter(str(w / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (32, 32))
    for i in range(10):
        vw.write(np.full((32, 32, 3), i * 20, np.uint8))
    vw.release()
    (w / "cut.mp4").write_bytes((w / "v.mp4").read_bytes()[:1000])
    p = ferkit("predict", run, w / "cut.mp4", val / "happy", "--no-detect", "--out", w / "pv")
    row("predict on a truncated .mp4 beside photos", f"exit {p.returncode}; stderr lines not from ferkit: "
        f"{[x[:60] for x in p.stderr.splitlines() if not x.startswith(('ferkit', 'note', 'warning'))][:2]}")
    (w / "afile").write_text("")
    p = ferkit("evaluate", run, "--test-dir", val, "--out", w / "evm", env={"MPLCONFIGDIR": str(w / "afile" / "m")})
    row("evaluate with an unusable MPLCONFIGDIR", f"exit {p.returncode}; stderr lines about matplotlib: "
        f"{sum('atplotlib' in x for x in p.stderr.splitlines())}")



# ----------------------------------------------------------------------------- issue 33
def timed(*args, timeout=300, env=None) -> tuple[subprocess.CompletedProcess | None, float]:
    """``ferkit *args`` and its wall time; None when it ran past ``timeout`` (a hang)."""
    t0 = time.perf_counter()
    try:
        return ferkit(*args, timeout=timeout, env=env), time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0


def hidden_and_lines(p: subprocess.CompletedProcess | None, seconds: float, timeout: int = 300) -> str:
    return f"HANGS (killed after {timeout} s)" if p is None else f"{one_line(p)} ({seconds:.1f} s)"


def _ferplus(root: Path, rows: list[str]) -> Path:
    """A FER+ style folder: two faces and a label.csv of ``rows`` (file names), with a UTF-8 BOM."""
    root.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((48, 48), 60 * i, np.uint8)).save(root / f"f{i}.png")
    votes = ',"(0, 0, 48, 48)",10,0,0,0,0,0,0,0,0,0'
    (root / "label.csv").write_bytes(b"\xef\xbb\xbf" + "".join(r + votes + "\n" for r in rows).encode())
    return root


def issue33_rows(work: Path, run: Path, data: Path, val: Path, env_cache: dict) -> None:
    """One row per CLI case of issue 33: what each gets now (exit status, lines, seconds)."""
    import csv

    from ferkit.bundled import sample_photo

    w = work / "i33"
    w.mkdir()
    # hangs first
    fifo = w / "model.safetensors"
    os.mkfifo(fifo)
    p, t = timed("evaluate", fifo, "--test-dir", val, "--out", w / "evf", timeout=60)
    row("a checkpoint path that is a FIFO (evaluate)", hidden_and_lines(p, t, 60))
    grp = w / "grp"
    for c in ("angry", "happy", "sad"):
        (grp / c).mkdir(parents=True)
        for i in range(4):
            shutil.copy(next(iter(sorted((val / c).glob("*.png")))), grp / c / f"{'a' * 40}{c}{i}.png")
    ferkit("synth", "faces", "--out", w / "gen", "--per-class", "4", "--size", "16", "--workers", "1",
           "--classes", "angry,happy,sad", "--no-progress")
    p, t = timed("study", "--real", grp, "--folds", "2", "--group-by", "^(a+)+$", "--synthetic", w / "gen",
                 "--ratios", "0", "--seeds", "1", "--arch", "tiny", "--epochs", "1", "--image-size", "16",
                 "--no-progress", "--out", w / "study", timeout=600, env=env_cache)
    row("study --group-by '^(a+)+$' on file names of 40 a's", hidden_and_lines(p, t, 600))
    p, t = timed("gan", "train", "--data", data, "--out", w / "g1", "--guide", run, "--guide-views", "100000")
    row("gan train --guide-views 100000", hidden_and_lines(p, t) + f"; run folder made: {(w / 'g1').exists()}")
    for name, shape in (("100000x1", (1, 100000)), ("1x100000", (100000, 1))):
        Image.fromarray(np.full(shape, 128, np.uint8)).save(w / f"{name}.png")
        p, t = timed("predict", w / f"{name}.png", "--out", w / f"p{name}")
        s = json.loads((w / f"p{name}" / "summary.json").read_text()) if p and p.returncode == 0 else {}
        row(f"predict on a {name} image (detection on)", f"exit {p.returncode if p else 'HANG'}; "
            f"{len(s.get('no_face', []))} image(s) with no face ({t:.1f} s)")
    # values without a bound, and what they did
    p = ferkit("calibrate", run, "--temperature", "1e308", "--out", w / "hot.safetensors")
    row("calibrate --temperature 1e308", one_line(p) + f"; file written: {(w / 'hot.safetensors').exists()}")
    base = ["train", "--train-dir", data, "--val-dir", val, "--arch", "tiny", "--image-size", "32"]
    p = ferkit(*base, "--out", w / "warm", "--schedule", "cosine", "--warmup-epochs", "1e308", env=env_cache)
    row("train --warmup-epochs 1e308", one_line(p) + f"; run folder made: {(w / 'warm').exists()}")
    p = ferkit(*base, "--out", w / "over", "--oversample", "happy=100000000", env=env_cache)
    row("train --oversample happy=100000000", one_line(p) + f"; run folder made: {(w / 'over').exists()}")
    p = run_py("import ferkit.train.gan as g\ndef oom(*a, **k): raise MemoryError()\ng._train_gan = oom",
               "gan", "train", "--data", data, "--out", w / "goom", env=env_cache)
    row("out of memory in gan train (staged): the hint", one_line(p))
    p = ferkit("predict", "", "--no-detect", "--out", w / "pempty")
    row("predict ''", one_line(p) + f"; output made: {(w / 'pempty').exists()}")
    # manifests and label.csv
    m = w / "bom.csv"
    m.write_bytes(b"\xef\xbb\xbfpath,class\n" + "".join(f"{f},{f.parent.name}\n" for f in sorted(val.rglob("*.png")))
                  .encode())
    p = ferkit("evaluate", run, "--test-dir", m, "--out", w / "evbom")
    row("a manifest with a UTF-8 BOM (evaluate)", one_line(p) if p.returncode else
        f"exit 0; n = {json.loads((w / 'evbom' / 'metrics.json').read_text())['n']}")
    for name, rows in (("label.csv with a BOM", ["f0.png", "f1.png"]),
                       ("label.csv with a row ../test/x.png", ["f0.png", "../test/x.png"]),
                       ("label.csv with a row listed twice", ["f0.png", "f1.png", "f0.png"])):
        folder = _ferplus(w / name.replace(" ", "_").replace("/", "_").replace(".", "_"), rows)
        p = ferkit("evaluate", "ferplus-vgg16", "--test-dir", folder, "--out", w / f"ev-{folder.name}",
                   "--shared-classes")
        row(f"evaluate on a FER+ folder: {name}", one_line(p) if p.returncode else
            f"exit 0; n = {json.loads((w / f'ev-{folder.name}' / 'metrics.json').read_text())['n']}")
    # GAN hold-out with 10 faces a class
    ten = make_folder(w / "ten", ["angry", "happy", "sad"], 10, 5, size=32)
    p = ferkit("gan", "train", "--data", ten, "--out", w / "g10", "--iterations", "2", env=env_cache)
    row("gan train on 10 faces a class (default --held-out 8)", one_line(p))
    p = ferkit("gan", "train", "--data", ten, "--out", w / "g10", "--iterations", "2", "--held-out", "0",
               "--image-size", "32", "--g-width", "8", "--d-width", "8", "--d-layers", "3", "--log-every", "1",
               "--checkpoint-every", "2", "--no-progress", env=env_cache)
    row("... the same with --held-out 0", f"exit {p.returncode}; samples: "
        f"{sorted(x.name for x in (w / 'g10' / 'samples').glob('*.png')) if p.returncode == 0 else one_line(p)}")
    # SIGKILL of synth faces --workers 2
    cmd = [PY, "-m", "ferkit", "synth", "faces", "--out", str(w / "faces"), "--per-class", "3000", "--workers", "2",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not any(w.glob(".faces.tmp-*/*/*.png")):
        time.sleep(0.05)
    time.sleep(1)
    proc.kill()
    proc.wait()
    time.sleep(3)
    err = proc.stderr.read().strip().splitlines()
    row("SIGKILL of synth faces --workers 2", f"{len(err)} line(s) on stderr afterwards"
        + (f", e.g. {err[-1][:100]!r}" if err else ""))
    # evaluate --detect --fallback whole: a face, two blank photos, a noise image
    photos = w / "photos"
    for c in ("happy", "sad", "angry"):
        (photos / c).mkdir(parents=True)
    shutil.copy(sample_photo(), photos / "happy" / "hopper.jpg")
    Image.new("L", (320, 240), 128).save(photos / "sad" / "blank1.png")
    Image.new("L", (320, 240), 200).save(photos / "sad" / "blank2.png")
    Image.fromarray((np.random.default_rng(0).random((240, 320)) * 255).astype(np.uint8)).save(
        photos / "angry" / "noise.png")
    small = np.full((900, 900), 90, np.uint8)
    small[400:520, 400:520] = np.asarray(Image.open(sample_photo()).convert("L").resize((120, 120)))
    Image.fromarray(small).save(photos / "happy" / "small-face.png")
    p = ferkit("evaluate", "fer2013-vgg", "--test-dir", photos, "--detect", "--fallback", "whole", "--min-face",
               "0.3", "--shared-classes", "--out", w / "evd", "--no-progress")
    if p.returncode == 0:
        mj = json.loads((w / "evd" / "metrics.json").read_text())
        with open(w / "evd" / "predictions.csv", newline="") as fh:
            reasons = {Path(r["file"]).name: (r["face"], r["reason"][:45]) for r in csv.DictReader(fh)}
        row("evaluate --detect --fallback whole --min-face 0.3 (a face, a small face, 2 blank photos, noise)",
            f"detection rate {mj['detection_rate']:.2f}, fallback {mj['fallback_count']}, min_face in metrics.json "
            f"{mj['pipeline'].get('min_face')}; {reasons}")
    else:
        row("evaluate --detect --fallback whole", one_line(p))
    # small things: predict's lock, the annotated video's codec
    p = ferkit("predict", run, val / "happy", "--no-detect", "--out", w / "plock")
    row("files predict leaves in its output folder", f"exit {p.returncode}: "
        f"{sorted(x.name for x in (w / 'plock').iterdir())}")
    import cv2
    vw = cv2.VideoWriter(str(w / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for i in range(10):
        vw.write(np.full((120, 160, 3), 20 * i, np.uint8))
    vw.release()
    p = ferkit("predict", run, w / "clip.avi", "--annotate", "--out", w / "pvid", "--no-progress")
    try:
        import imageio_ffmpeg
        info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i",
                               str(w / "pvid" / "annotated" / "clip.mp4")], capture_output=True, text=True).stderr
        codec = next((x.split("Video: ")[1].split(",")[0] for x in info.splitlines() if "Video: " in x), "?")
    except ImportError:
        codec = "(imageio-ffmpeg not installed: cannot read the codec; the cv2 writer made mp4v)"
    row("predict --annotate on a video: the MP4's codec", f"exit {p.returncode}; {codec}; stderr lines not from "
        f"ferkit: {[x[:60] for x in p.stderr.splitlines() if not x.startswith(('ferkit', 'note', 'warning'))][:2]}")


if __name__ == "__main__":
    main()
