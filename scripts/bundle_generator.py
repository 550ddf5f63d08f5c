"""Copy a trained GAN run's generator into the package as a bundled generator (fp16 safetensors).

    .venv/bin/python scripts/bundle_generator.py ~/ferkit-bench/gan-fer2013 [--name fer2013-editor] \
        [--quality RUN/quality-judge/quality.json] [--command "ferkit gan train ..."] [--out-dir DIR]

Writes ``<out-dir>/<file>`` (default ``src/ferkit/weights/``, the name's entry in
``ferkit.bundled.BUNDLED``) with the generator's record, adding the model card's fields under
``bundled``: where it came from, the data (classes and per-class counts), the losses and their
weights, the iterations, the training command(s), the quality figures of a ``ferkit gan
evaluate`` report (by default ``RUN/quality/quality.json`` when present) and the weight type.
After it, ``ferkit synth edit <name> ...`` works by name and ``ferkit models`` lists it.

A classifier, a run with no generator yet, a damaged quality report, or weights over 8 MB stop
with one line (exit 1) and nothing written.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import torch

from ferkit.bundled import BUNDLED, WEIGHTS_DIR, bundled_names
from ferkit.errors import FerkitError
from ferkit.files import read_json
from ferkit.models import load_checkpoint, save_checkpoint
from ferkit.synth.gan import file_sha256, generator_path
from ferkit.train.gan import GanConfig

MAX_MB = 8.0
#: GanConfig fields that are not options of the training command (or are given separately).
_NOT_OPTIONS = ("data", "out", "progress", "num_threads", "guide_sha256", "init_sha256", "classes", "strict")


def training_command(cfg: dict, run_name: str) -> str:
    """The `ferkit gan train` command that made a run, from its recorded config: every option whose
    value differs from GanConfig's default (the data folder as its last path part)."""
    words = ["ferkit gan train", f"--data {Path(str(cfg.get('data', 'DATA'))).name}", f"--out {run_name}"]
    if cfg.get("classes"):
        words.append(f"--classes {','.join(cfg['classes'])}")
    for f in fields(GanConfig):
        if f.name in _NOT_OPTIONS or f.name not in cfg or f.default is MISSING:
            continue
        value, flag = cfg[f.name], "--" + f.name.replace("_", "-")
        if f.name == "held_out" and isinstance(value, list):   # runs before 2026-12-07 kept the files here
            value = len(value)
        if value == f.default:
            continue
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif f.name in ("guide", "init"):
            words.append(f"{flag} {Path(str(value)).name if Path(str(value)).exists() else value}")
        else:
            words.append(f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}")
    return " ".join(words)


def losses_of(cfg: dict) -> dict:
    """The generator's losses and their weights, as the card states them."""
    d = {f.name: f.default for f in fields(GanConfig) if f.default is not MISSING}
    get = lambda k: cfg.get(k, d.get(k))  # noqa: E731
    out = {"adversarial": "hinge, spectral-norm PatchGAN discriminator",
           "classification (D's head)": get("lambda_cls"), "cycle reconstruction (L1)": get("lambda_rec")}
    if get("lambda_id"):
        out["identity (L1, G(x, own class) vs x)"] = get("lambda_id")
    if get("guide"):
        out["guide cross-entropy"] = {"weight": get("lambda_guide"), "guide": Path(str(get("guide"))).name,
                                      "guide_sha256": get("guide_sha256"), "views": get("guide_views")}
    if get("mask"):
        out["attention mask"] = {"sparsity (mean)": get("lambda_mask"),
                                 "smoothness (total variation)": get("lambda_tv")}
    return out


def quality_card(path: Path) -> dict:
    """The figures of a `ferkit gan evaluate` report that the card keeps."""
    try:
        q = read_json(path)
        acc, real = q["expression_accuracy"], q["real"]
        card = {"judge": "/".join(Path(q["classifier"]).parts[-2:]),
                "judge_sha256": (q.get("judge") or {}).get("sha256"),
                "real": ", ".join(Path(str(r)).name for r in (real if isinstance(real, list) else [real])),
                "generated_faces": q["generated_faces"],
                "target_read": acc["generated"], "source_kept": acc["generated_read_as_source"],
                "judge_on_real_faces": acc["real"], "kid": q["kid"]["mean"],
                "kid_real_halves": q["kid_real_halves"]["mean"],
                "cycle_l1": q["identity"]["cycle_l1"], "identity_l1": q["identity"].get("identity_l1")}
        if q.get("realism"):      # reports since issue 34
            card["realism_auc"] = (q["realism"]["auc"] or {}).get("mean")
            card["hf_ratio"] = q["realism"]["hf_ratio"]
        if q.get("per_class"):
            card["per_class"] = {c: {k: r[k] for k in ("target_read", "source_kept")}
                                 for c, r in q["per_class"].items()}
        return card
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise FerkitError(f"{path} is not a readable `ferkit gan evaluate` report ({exc.__class__.__name__}: {exc})") \
            from None


def bundle_generator(run, name: str, out_dir: Path, quality: Path | None = None, command: str | None = None) -> Path:
    """Write the fp16 bundled file of a GAN run's generator with its card fields; returns its path."""
    src = generator_path(run)
    model, record = load_checkpoint(src, "cpu", kind="generator")
    cfg = record.train_config
    run_dir = src.parent
    if quality is None and (run_dir / "quality" / "quality.json").is_file():
        quality = run_dir / "quality" / "quality.json"
    size = sum(t.numel() * (2 if t.is_floating_point() else t.element_size()) for t in model.state_dict().values())
    if size / 1e6 > MAX_MB:
        raise FerkitError(f"the generator's weights take {size / 1e6:.2f} MB in float16, over the {MAX_MB} MB limit "
                          "for bundled weights: train a narrower one (--g-width)")
    card = {"name": name, "source": f"{run_dir.name}/{src.name}", "source_sha256": file_sha256(src),
            "iterations": record.epoch, "classes": list(record.classes), "image_size": record.image_size,
            "data": {"folder": Path(str(cfg.get("data", "?"))).name, "counts": cfg.get("counts", {})},
            "losses": losses_of(cfg), "mask": bool(record.model_args.get("mask", False)),
            "batch_size": cfg.get("batch_size"), "device": cfg.get("device"),
            "command": command or training_command(cfg, run_dir.name),
            "quality": quality_card(Path(quality)) if quality else None,
            "weights": "float16 (computed in float32)"}
    record.extra["bundled"] = card
    target = Path(out_dir) / BUNDLED[name].file
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, target, record, dtype=torch.float16)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="GAN run folder (its generator.safetensors) or generator checkpoint")
    names = bundled_names("generator")
    ap.add_argument("--name", default=names[0], choices=names, help=f"bundled generator (default {names[0]})")
    ap.add_argument("--quality", default=None,
                    help="quality.json of `ferkit gan evaluate --judge ...` (default: RUN/quality/quality.json if any)")
    ap.add_argument("--command", default=None,
                    help="the training command(s) to record instead of the one rebuilt from the run's config")
    ap.add_argument("--out-dir", default=str(WEIGHTS_DIR), help=f"where to write (default {WEIGHTS_DIR})")
    a = ap.parse_args(argv)
    try:
        target = bundle_generator(a.run, a.name, Path(a.out_dir), Path(a.quality) if a.quality else None, a.command)
    except FerkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB, {a.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
