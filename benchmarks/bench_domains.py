"""How well does a model hold across domains? One table: FER+ valid, CK+ dev, SFEW train.

For each domain: accuracy, macro-F1, ECE (15 bins) and label stability (the share of faces that keep
their label under each of 11 small changes of the crop, averaged: bench_stability.py's changes).
The model predicts among the classes each set has (FER+: 8; CK+: the six basic ones; SFEW: the seven
of FER2013), with its own calibration temperature.

Two ways to use it:

    # models that never saw CK+ or SFEW: evaluate on the whole sets
    python benchmarks/bench_domains.py eval --model ferplus-vgg16 --model fer2013-vgg

    # a recipe that trains on CK+ and SFEW too: K models, each without one fold of SFEW's films and
    # CK+'s subjects, each scored on the faces it never saw (out-of-fold); FER+ valid scored by all K
    python benchmarks/bench_domains.py folds --work ~/runs/domains-a --folds 5 -- \\
        --init ferplus-vgg16 --labels soft --epochs 8 \\
        --train-dir {ferplus}:0.25 --train-dir {sfew}:6 --train-dir {ckplus}:3 --val-dir {ferplus_valid}

    # the same folds scored with their weights moved 25% back towards the model they started from
    python benchmarks/bench_domains.py folds --work ~/runs/domains-a --blend-with ferplus-vgg16:0.75 -- ...
    python benchmarks/bench_domains.py folds --work ~/runs/domains-a --ensemble-with ferplus-vgg24:0.3 -- ...

In ``folds`` mode every argument after ``--`` goes to ``ferkit train`` (``{ferplus}``, ``{ferplus_valid}``,
``{sfew}``, ``{ckplus}`` become this fold's paths, ``{run}`` its run name, ``fold0`` ... or ``final``,
so that ``--teacher ~/runs/domains-g/{run}`` distils each fold from a teacher that never saw its
held-out faces; ``--out`` is set per fold). Each fold is an ordinary
run folder, so an interrupted benchmark resumes where it stopped: run the same command again. The
table gives each domain's out-of-fold figures, and the calibration temperature fitted on the
out-of-fold logits of the other folds (cross-fitted: no face is scored with a temperature fitted on
itself; every domain weighs the same). ``--final`` then trains the same recipe on everything and
writes the temperature to use with ``ferkit calibrate --temperature``.

Data: ``--data`` holds ``ferplus/{train,valid}``, ``ckplus48-dev`` and ``sfew-train`` (as extracted
from ../shared/data; default /tmp/ferkit-data). Selection and calibration use only the given dev sets,
by held-out folds, as the evaluation protocol asks.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

BASIC6 = ("angry", "disgusted", "fearful", "happy", "sad", "surprised")
FER7 = (*BASIC6, "neutral")
FERPLUS8 = (*FER7, "contempt")


@dataclass
class Domain:
    name: str
    folder: str                 # under --data
    classes: tuple[str, ...]
    group_by: str | None        # folds by this group (film, subject); None = never trained on by folds


DOMAINS = (Domain("FER+ valid", "ferplus/valid", FERPLUS8, None),
           Domain("CK+ dev", "ckplus48-dev", BASIC6, r"^(S\d+)_"),
           Domain("SFEW train", "sfew-train", FER7, r"^([^_]+)_"))


def load(data_root: Path, d: Domain, image_size: int = 48):
    from ferkit.data import load_dataset

    return load_dataset(data_root / d.folder, d.classes, image_size, progress=False, role=d.name)


def scores(model, images: np.ndarray, classes: tuple[str, ...], calibrated: bool = True) -> np.ndarray:
    """Logits of ``model`` (an OpenedModel) over ``classes`` only (in that order)."""
    z = model.logits(images, calibrated=calibrated)
    return z[:, [model.classes.index(c) for c in classes]]


def stability(model, images: np.ndarray, classes: tuple[str, ...]) -> float:
    """Mean over bench_stability's 11 changes of the share of faces that keep their label."""
    import cv2

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_stability import perturbations

    base = scores(model, images, classes).argmax(1)
    size = images.shape[1]
    kept = []
    for m in perturbations(size).values():
        moved = np.stack([cv2.warpAffine(f, m, (size, size), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REPLICATE) for f in images])
        kept.append(float((scores(model, moved, classes).argmax(1) == base).mean()))
    return float(np.mean(kept))


def figures(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict:
    from sklearn.metrics import f1_score

    from ferkit.train.calibrate import expected_calibration_error, negative_log_likelihood

    z = logits / temperature
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pred = p.argmax(1)
    return {"n": int(len(labels)), "accuracy": float((pred == labels).mean()),
            "macro_f1": float(f1_score(labels, pred, average="macro", labels=np.arange(logits.shape[1]))),
            "ece": float(expected_calibration_error(p, labels)),
            "nll": float(negative_log_likelihood(logits, labels, temperature)),
            "confidence": float(p.max(1).mean()),
            "recall": [float((pred[labels == c] == c).mean()) if (labels == c).any() else None
                       for c in range(logits.shape[1])]}


def table(rows: dict[str, dict[str, dict]]) -> str:
    """Markdown table: one row per figure, one column per (model, domain)."""
    out = ["| model | domain | faces | accuracy | macro-F1 | ECE | mean confidence | stability |",
           "|---|---|---|---|---|---|---|---|"]
    for model, domains in rows.items():
        for name, r in domains.items():
            stab = f"{r['stability']:.3f}" if r.get("stability") is not None else "–"
            out.append(f"| {model} | {name} | {r['n']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} | "
                       f"{r['ece']:.3f} | {r['confidence']:.3f} | {stab} |")
    return "\n".join(out)


# ----------------------------------------------------------------------------- eval
def cmd_eval(a) -> dict:
    from ferkit.models import open_model

    data = {d.name: load(a.data, d) for d in DOMAINS}
    rows = {}
    for name in a.model:
        model = open_model(name, precision="fp32")
        rows[name] = {}
        for d in DOMAINS:
            ds = data[d.name]
            r = figures(scores(model, ds.images, d.classes), ds.labels)
            r["stability"] = None if a.no_stability else stability(model, ds.images, d.classes)
            rows[name][d.name] = r
            print(f"{name} {d.name}: {r['accuracy']:.4f} acc, {r['macro_f1']:.4f} F1, ECE {r['ece']:.4f}",
                  flush=True)
    return rows


# ----------------------------------------------------------------------------- folds
def plan(a, data: dict) -> dict:
    """Fold of each face of each grouped domain (groups never split; stratified by class)."""
    from ferkit.experiments.folds import image_groups, plan_folds

    out = {}
    for d in DOMAINS:
        if d.group_by is None:
            continue
        ds = data[d.name]
        names = [Path(p).name for p in ds.paths]
        groups = image_groups(names, d.group_by)
        fp = plan_folds(ds.labels, groups, a.folds, ds.classes, seed=a.seed)
        fold_of = np.full(len(ds), -1)
        for k, fold in enumerate(fp.folds):
            fold_of[fold.test] = k
        out[d.name] = fold_of
    return out


def write_manifest(path: Path, paths, labels, classes) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "class"])
        for p, y in zip(paths, labels):
            w.writerow([str(Path(p).resolve()), classes[y]])
    tmp.replace(path)
    return path


def train_args(a, fold: int | None, work: Path, data: dict, folds: dict) -> list[str]:
    """``ferkit train`` arguments for one fold (None: the final run on everything)."""
    paths = {"ferplus": str(a.data / "ferplus/train"), "ferplus_valid": str(a.data / "ferplus/valid")}
    for key, d in (("ckplus", DOMAINS[1]), ("sfew", DOMAINS[2])):
        ds = data[d.name]
        keep = np.ones(len(ds), bool) if fold is None else folds[d.name] != fold
        tag = "all" if fold is None else f"fold{fold}"
        paths[key] = str(write_manifest(work / "manifests" / f"{key}-train-{tag}.csv",
                                        [ds.paths[i] for i in np.flatnonzero(keep)], ds.labels[keep], ds.classes))
    paths["run"] = "final" if fold is None else f"fold{fold}"
    run = work / paths["run"]
    return [arg.format(**paths) for arg in a.train] + ["--out", str(run), "--no-progress"]


def run_fold(args: list[str]) -> None:
    t0 = time.time()
    print("ferkit train " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "ferkit", "train", *args])
    if done.returncode:
        raise SystemExit(f"bench_domains: ferkit train failed (exit {done.returncode}); re-run to resume")
    print(f"  {time.time() - t0:.0f} s", flush=True)


def blend_spec(text: str) -> tuple[str, float]:
    """``MODEL:ALPHA`` -> (MODEL, ALPHA); argparse turns a ValueError into one usage line."""
    name, _, alpha = text.rpartition(":")
    if not name or not 0 <= float(alpha) <= 1:
        raise ValueError(text)
    return name, float(alpha)


def blended(checkpoint: Path, blend: tuple[str, float] | None, work: Path) -> Path:
    """``checkpoint`` itself, or with ``--blend-with MODEL:ALPHA`` its weights interpolated towards
    MODEL's (ALPHA x checkpoint + (1 - ALPHA) x MODEL, batch-norm statistics too: WiSE-FT, Wortsman
    et al. 2022), written beside the fold's run as ``<fold>-blend-<ALPHA>.safetensors``."""
    if not blend:
        return checkpoint
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ferkit.models import model_file

    name, alpha = blend
    out = work / f"{checkpoint.parent.name}-blend-{name.replace('/', '_')}-{alpha:g}.safetensors"
    mixed = {}
    with safe_open(str(checkpoint), "pt") as tuned, safe_open(str(model_file(name)), "pt") as base:
        for k in tuned.keys():
            t = tuned.get_tensor(k)
            mixed[k] = alpha * t + (1 - alpha) * base.get_tensor(k).to(t.dtype) if t.is_floating_point() else t
        save_file(mixed, str(out), metadata=tuned.metadata())
    return out


def domain_temperatures(a, work: Path, data: dict, folds: dict) -> dict:
    """Does a temperature that knows the domain calibrate every domain? Cross-fitted over the K folds:
    for fold k, a logistic regression reads the domain from the face embedding and one temperature
    per domain is fitted, both on the other folds' out-of-fold faces (FER+ valid split K ways by face,
    scored by the other fold models); fold k's own faces are then scored by fold k's model with
    softmax(z / sum_d P(d | face) T_d). Against it: one pooled temperature, and each domain's own
    temperature (an oracle: the domain given, not read)."""
    import torch

    from ferkit.models import open_model
    from ferkit.models.domain_temperature import DomainTemperature, face_embeddings
    from ferkit.train.calibrate import (
        domain_weights,
        expected_calibration_error,
        fit_domain_temperature,
        fit_temperature,
    )

    emb: dict[tuple[str, int], np.ndarray] = {}
    z: dict[tuple[str, int], np.ndarray] = {}
    for k in range(a.folds):
        model = open_model(work / f"fold{k}" / a.checkpoint, precision="fp32", device="cpu", backend="torch")
        for d in DOMAINS:
            images = data[d.name].images
            emb[d.name, k], z[d.name, k] = face_embeddings(model, images), scores(model, images, d.classes, False)
    face_fold = {d.name: folds[d.name] if d.group_by else np.arange(len(data[d.name])) % a.folds
                 for d in DOMAINS}

    def faces(name: str, k: int, held: bool):
        """(embeddings, logits, labels): fold k's faces by fold k's model, or the other folds' faces
        by every other fold model (grouped domains: by the model that never saw them)."""
        y, ff = data[name].labels, face_fold[name]
        if held:
            m = ff == k
            return emb[name, k][m], z[name, k][m], y[m]
        grouped = next(d for d in DOMAINS if d.name == name).group_by is not None
        models = [[j] if grouped else [i for i in range(a.folds) if i != k] for j in range(a.folds)]
        parts = [(emb[name, i][ff == j], z[name, i][ff == j], y[ff == j])
                 for j in range(a.folds) if j != k for i in models[j]]
        return tuple(np.concatenate(x) for x in zip(*parts))

    got = {m: {d.name: [] for d in DOMAINS} for m in ("pooled", "own domain's (oracle)", "read from the face")}
    for k in range(a.folds):
        train = {d.name: faces(d.name, k, False) for d in DOMAINS}
        # ferkit calibrate --per-domain's own fit: a temperature per domain, the reader on the embeddings
        emb_, z_, y_ = ([train[d.name][i] for d in DOMAINS] for i in range(3))
        spec = fit_domain_temperature([d.name for d in DOMAINS], emb_, z_, y_)
        reader, own = DomainTemperature(spec), np.asarray(spec["temperatures"])
        pooled = fit_temperature(np.concatenate([np.pad(z, ((0, 0), (0, 8 - z.shape[1])), constant_values=-np.inf)
                                                 for z in z_]), np.concatenate(y_),
                                 weights=domain_weights(np.concatenate([np.full(len(y), j) for j, y in enumerate(y_)])))
        for j, d in enumerate(DOMAINS):
            e, zz, y = faces(d.name, k, True)
            with torch.no_grad():
                read = reader(torch.from_numpy(e)).numpy()
            for m, t in (("pooled", pooled), ("own domain's (oracle)", own[j]), ("read from the face", read)):
                got[m][d.name].append((zz / np.reshape(t, (-1, 1)), y))
    # for a model trained on everything: each domain's temperature on all its out-of-fold faces
    final = [fit_temperature(np.concatenate([faces(d.name, k, True)[1] for k in range(a.folds)]),
                             np.concatenate([faces(d.name, k, True)[2] for k in range(a.folds)])) for d in DOMAINS]
    print("per-domain temperatures for the final model (ferkit calibrate ... --per-domain --domain-temperatures): "
          + ",".join(f"{t:.4f}" for t in final))
    out = {"_final_temperatures": dict(zip([d.name for d in DOMAINS], final))}
    for m, per in got.items():
        out[m] = {}
        for name, parts in per.items():
            zz, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            p_ = np.exp(zz - zz.max(1, keepdims=True))
            out[m][name] = float(expected_calibration_error(p_ / p_.sum(1, keepdims=True), y))
        print(f"ECE, {m} temperature: " + ", ".join(f"{n} {v:.3f}" for n, v in out[m].items()))
    return out


def cmd_folds(a) -> dict:
    from ferkit.models import open_model
    from ferkit.train.calibrate import domain_weights, fit_temperature

    work = Path(a.work).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    data = {d.name: load(a.data, d) for d in DOMAINS}
    folds = plan(a, data)
    (work / "folds.json").write_text(json.dumps({k: v.tolist() for k, v in folds.items()}))
    # the fold of each face by its file, for scripts that judge these faces with the fold that never saw them
    (work / "fold_of_path.json").write_text(json.dumps(
        {str(Path(p).resolve()): int(k) for name, f in folds.items() for p, k in zip(data[name].paths, f)}))
    for k in range(a.folds):
        if not (work / f"fold{k}" / "summary.json").is_file():
            run_fold(train_args(a, k, work, data, folds))
    # out-of-fold logits (uncalibrated) of every domain; FER+ valid from every fold model
    oof = {d.name: None for d in DOMAINS}
    fer = []
    stab = {d.name: [] for d in DOMAINS}
    partner = open_model(a.ensemble_with[0], precision="fp32") if a.ensemble_with else None
    for k in range(a.folds):
        model = open_model(blended(work / f"fold{k}" / a.checkpoint, a.blend_with, work), precision="fp32")
        for d in DOMAINS:
            ds = data[d.name]
            pick = np.arange(len(ds)) if d.group_by is None else np.flatnonzero(folds[d.name] == k)
            z = scores(model, ds.images[pick], d.classes, calibrated=False)
            if partner is not None:    # two networks' logits averaged: both run on every face
                w = a.ensemble_with[1]
                z = (1 - w) * z + w * scores(partner, ds.images[pick], d.classes, calibrated=False)
            if d.group_by is None:
                fer.append(z)
            else:
                if oof[d.name] is None:
                    oof[d.name] = np.zeros((len(ds), len(d.classes)), np.float32)
                oof[d.name][pick] = z
            if not a.no_stability:
                stab[d.name].append((len(pick), stability(model, ds.images[pick], d.classes)))
    def pooled_temperature(skip: int | None = None) -> float:
        """The temperature fitted on every domain's out-of-fold logits (without fold ``skip``'s faces:
        FER+ valid's logits of the other fold models), every domain weighing the same."""
        zs, ys, doms = [], [], []
        for j, d in enumerate(DOMAINS):
            ds = data[d.name]
            if d.group_by is None:
                used = [z for i, z in enumerate(fer) if i != skip] or fer
                z, y = np.concatenate(used), np.tile(ds.labels, len(used))
            else:
                other = folds[d.name] != skip
                z, y = oof[d.name][other], ds.labels[other]
            zs.append(np.pad(z, ((0, 0), (0, 8 - z.shape[1])), constant_values=-np.inf))   # absent classes
            ys.append(y)
            doms.append(np.full(len(y), j))
        return fit_temperature(np.concatenate(zs), np.concatenate(ys), weights=domain_weights(np.concatenate(doms)))

    temps = [pooled_temperature(skip=k) for k in range(a.folds)]   # fold k: fitted on the other folds' faces
    rows = {"uncalibrated": {}, "cross-fitted temperature": {}}
    for d in DOMAINS:
        ds = data[d.name]
        if d.group_by is None:
            z = np.concatenate(fer)
            y = np.tile(ds.labels, a.folds)
            t = np.repeat(np.asarray(temps), len(ds))
        else:
            z, y = oof[d.name], ds.labels
            t = np.asarray(temps)[folds[d.name]]
        rows["uncalibrated"][d.name] = figures(z, y)
        rows["cross-fitted temperature"][d.name] = figures(z / t[:, None], y)
        s = stab[d.name]
        mean_stab = float(sum(n * v for n, v in s) / sum(n for n, _ in s)) if s else None
        for r in rows.values():
            r[d.name]["stability"] = mean_stab
    if a.domain_temperature:
        rows["_domain_temperature_ece"] = domain_temperatures(a, work, data, folds)
    final_t = pooled_temperature()   # for a model trained on everything: all out-of-fold logits
    rows["_temperatures"] = {"per_fold": temps, "final": final_t}
    print(f"temperatures: per fold {', '.join(f'{t:.3f}' for t in temps)}; for the final model {final_t:.4f}")
    if a.final and not (work / "final" / "summary.json").is_file():
        run_fold(train_args(a, None, work, data, folds))
    if a.final:
        print(f"final model: {work / 'final' / a.checkpoint}; calibrate it with\n  ferkit calibrate "
              f"{work / 'final'} --temperature {final_t:.4f} --out {work / 'final' / 'calibrated.safetensors'}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("eval", "folds"):
        p = sub.add_parser(name)
        p.add_argument("--data", type=Path, default=Path("/tmp/ferkit-data"),
                       help="folder with ferplus/, ckplus48-dev/ and sfew-train/ (default /tmp/ferkit-data)")
        p.add_argument("--json", type=Path, help="also write the figures here")
        p.add_argument("--no-stability", action="store_true", help="skip the stability figure (faster)")
        p.add_argument("--classes", help="score only these classes (comma-separated); faces of the others are left "
                                         "out (for a model that lacks some of a set's classes, e.g. FER+'s contempt)")
    sub.choices["eval"].add_argument("--model", action="append", required=True,
                                     help="bundled name, run folder or checkpoint (repeatable)")
    f = sub.choices["folds"]
    f.add_argument("--work", required=True, help="folder for the fold manifests and run folders (resumable)")
    f.add_argument("--folds", type=int, default=5)
    f.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    f.add_argument("--checkpoint", default="best.safetensors", help="which checkpoint of each run to score")
    f.add_argument("--final", action="store_true", help="then train the recipe on everything (work/final)")
    f.add_argument("--blend-with", metavar="MODEL:ALPHA", type=blend_spec,
                   help="score each fold model with its weights interpolated towards MODEL's (the model it was "
                        "fine-tuned from): ALPHA x fold + (1 - ALPHA) x MODEL; the runs themselves are untouched")
    f.add_argument("--ensemble-with", metavar="MODEL:WEIGHT", type=blend_spec,
                   help="score each fold model's logits averaged with MODEL's: (1 - WEIGHT) x fold + WEIGHT x "
                        "MODEL (an ensemble of two networks, twice the cost per face; no stability figure)")
    f.add_argument("--domain-temperature", action="store_true",
                   help="also: cross-fitted ECE with a temperature per domain, the domain read from the face "
                        "embedding by a logistic regression (against one pooled temperature and the domain given)")
    f.add_argument("train", nargs=argparse.REMAINDER, help="after --: the ferkit train arguments")
    a = ap.parse_args(argv)
    if a.classes:
        global DOMAINS
        keep = {c.strip() for c in a.classes.split(",")}
        DOMAINS = tuple(replace(d, classes=tuple(c for c in d.classes if c in keep)) for d in DOMAINS)
    if a.cmd == "folds":
        a.train = [x for x in a.train if x != "--"]
        if a.ensemble_with and a.blend_with:
            ap.error("--ensemble-with and --blend-with: one at a time")
        a.no_stability = a.no_stability or bool(a.ensemble_with)   # stability() sees one model only
    for d in DOMAINS:
        if not (a.data / d.folder).exists():
            print(f"bench_domains: {a.data / d.folder} not found (extract ../shared/data's archives into --data)",
                  file=sys.stderr)
            return 1
    t0 = time.time()
    rows = cmd_eval(a) if a.cmd == "eval" else cmd_folds(a)
    print(table({k: v for k, v in rows.items() if not k.startswith("_")}))
    print(f"({time.time() - t0:.0f} s)")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
