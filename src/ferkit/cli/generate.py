"""`ferkit synth`, `ferkit gan` and `ferkit mix`: making faces, and mixing them with real ones."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..choices import DEVICE_HELP, show_value
from ..labels import EXPRESSIONS
from .options import config_option, nonneg_int, positive_int, random_seed


# ----------------------------------------------------------------------------- synth
def _intensity(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI such as 0.5,1.0, got {text!r}") from None
    if not 0 <= lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"need 0 <= LO <= HI <= 1, got {text!r}")
    return lo, hi


def add_synth(sub):
    p = sub.add_parser("synth", help="generate expression faces: procedural (built-in) or edited by a trained GAN",
                       description="faces/preview: the procedural face generator (random identities, expressions "
                                   "built from FACS action units, pose/lighting/noise variation; no weights). edit: "
                                   "real faces moved to other expressions by a GAN from `ferkit gan train`.")
    ss = p.add_subparsers(dest="synth_command", metavar="SUBCOMMAND")
    for name, helptext in (("faces", "write a dataset: one folder per class plus metadata.csv"),
                           ("preview", "write a contact sheet PNG (rows = classes, columns = identities)")):
        q = ss.add_parser(name, help=helptext, description=helptext)
        q.add_argument("--out", required=True,
                       help="output folder (faces) or PNG file (preview)")
        q.add_argument("--classes", default=None,
                       help=f"comma-separated classes (default: {','.join(EXPRESSIONS[:7])})")
        q.add_argument("--size", type=positive_int, default=64, help="image side in pixels (default 64)")
        q.add_argument("--seed", type=random_seed, default=0, help="random seed; same seed, same images (default 0)")
        q.add_argument("--color", action="store_true", help="colour images instead of grayscale")
        q.add_argument("--intensity", type=_intensity, default=(0.5, 1.0), metavar="LO,HI",
                       help="expression (action unit) intensity range; lower is harder (default 0.5,1.0)")
        if name == "faces":
            q.add_argument("--per-class", type=int, required=True, help="faces per class")
            q.add_argument("--identities", type=int, default=None,
                           help="draw faces from K identities (each shows several expressions); "
                                "default: every face a new identity")
            q.add_argument("--identity-offset", type=nonneg_int, default=0,
                           help="first identity id (use disjoint ranges for identity-disjoint splits)")
            q.add_argument("--occluders", action="store_true", help="occlude ~30%% of faces (hand, bar, blob)")
            q.add_argument("--workers", type=positive_int, default=None, help="processes (default: all cores)")
            q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
            q.add_argument("--no-progress", action="store_true")
        else:
            q.add_argument("--per-class", type=positive_int, default=8, help="faces per row (default 8)")
        q.set_defaults(func=_cmd_synth_faces if name == "faces" else _cmd_synth_preview)
    e = ss.add_parser("edit", help="write real faces moved to each target expression by a trained GAN",
                      description="Each written face is a real source face of another expression, edited by the "
                                  "generator to the target class. Layout of `synth faces` (<class>/*.png plus "
                                  "metadata.csv: file, class, source file and class, generator and its SHA-256, "
                                  "seed), so `mix` and `study` take it unchanged. Same seed, same faces.")
    e.add_argument("gan_run", help="GAN run folder (`ferkit gan train --out`), generator checkpoint, or a bundled "
                                   "generator's name (see `ferkit models`)")
    e.add_argument("--source", required=True, help="real faces to edit: class folders or manifest CSV")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--per-class", type=positive_int, required=True, help="faces per target class")
    e.add_argument("--classes", default=None, help="target classes (default: every class the generator knows)")
    e.add_argument("--from-classes", default=None,
                   help="source classes to edit, others ignored (default: every class of --source; each must be "
                        "one the generator knows), e.g. the six of a seven-class FER2013 folder")
    e.add_argument("--seed", type=random_seed, default=0, help="which source faces are drawn (default 0)")
    e.add_argument("--batch-size", type=positive_int, default=64, help="faces per generator call (default 64)")
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty --out dataset")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_cmd_synth_edit)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _cmd_synth_edit(a) -> int:
    from ..synth.gan import edit_faces

    out = edit_faces(a.gan_run, a.source, a.out, a.per_class, seed=a.seed, classes=a.classes,
                     batch_size=a.batch_size, device=a.device, overwrite=a.overwrite, progress=not a.no_progress,
                     from_classes=a.from_classes)
    print(f"edited faces written to {out} (metadata: {Path(out) / 'metadata.csv'})")
    return 0


def _cmd_synth_faces(a) -> int:
    from ..synth import generate_faces

    out = generate_faces(a.out, a.per_class, classes=a.classes, size=a.size, seed=a.seed, color=a.color,
                         identities=a.identities, identity_offset=a.identity_offset, intensity=a.intensity,
                         workers=a.workers, overwrite=a.overwrite, progress=not a.no_progress,
                         occluders=a.occluders)
    print(f"faces written to {out} (metadata: {Path(out) / 'metadata.csv'})")
    return 0


def _cmd_synth_preview(a) -> int:
    from ..synth import write_preview

    out = write_preview(a.out, classes=a.classes, per_class=a.per_class, size=a.size, seed=a.seed,
                        color=a.color, intensity=a.intensity)
    print(f"preview written to {out}")
    return 0


# ----------------------------------------------------------------------------- gan
#: GanConfig fields offered as `ferkit gan train` options (type and default from the dataclass), then
#: MACHINE_OPTIONS, whose help the shared Machine part holds.
GAN_OPTIONS = {
    "classes": "comma-separated classes, in model order (default: the reference six the data has)",
    "image_size": "face side in pixels (divisible by 16: 48 or 64)",
    "iterations": "discriminator + generator steps (a larger value continues a finished run)",
    "batch_size": "faces per step",
    "g_lr": "generator learning rate (Adam)",
    "d_lr": "discriminator learning rate (Adam)",
    "decay_from": "learning rates fall linearly to 0 from this fraction of the iterations",
    "lambda_cls": "weight of the expression-classification losses",
    "lambda_rec": "weight of the cycle-reconstruction loss (keeps the identity)",
    "lambda_id": "weight of the identity loss, L1 between G(x, own class) and x (0 = off)",
    "guide": "frozen classifier (run folder, checkpoint or bundled name such as fer2013-vgg) whose cross-entropy "
             "on G(x, t) towards t joins the generator's loss; it must know every GAN class (default: none)",
    "init": "start the generator from these weights (a GAN run folder, generator checkpoint or bundled generator "
            "such as fer2013-editor): fine-tune an editor on new faces; it must have the run's classes, size and "
            "architecture; the discriminator starts afresh (default: random weights)",
    "lambda_guide": "weight of the guide's cross-entropy",
    "guide_views": "augmented views (random flip and shift) of each edit that the guide reads",
    "mask": "attention-mask generator (GANimation): output = mask * change + (1 - mask) * input",
    "lambda_mask": "weight of the mask's mean (sparsity: change little)",
    "lambda_tv": "weight of the mask's total variation (smoothness)",
    "mask_warmup": "iterations N of a mask warm-up: the mask is held fully open at first (a plain generator, "
                   "so the change branch learns to edit before the mask can shut it out), then released "
                   "linearly until iteration N; 0 = off",
    "residual": "residual generator: its output is a change added to the input, clamp(x + 2 tanh(.)), so the "
                "face's detail passes through where nothing changes (not with --mask)",
    "g_width": "generator base width",
    "g_res_blocks": "generator residual blocks",
    "d_width": "discriminator base width",
    "d_layers": "discriminator stride-2 layers",
    "flip": "random horizontal flips of the real faces",
    "held_out": "real faces kept out of training and shown in the sample grids (0: none; the grids then show "
                "training faces)",
    "log_every": "iterations per history row",
    "sample_every": "iterations per sample grid (samples/iter_NNNNNN.png)",
    "checkpoint_every": "iterations per saved state and generator.safetensors (a multiple of --log-every)",
    "seed": "random seed (same seed, same run)",
}
MACHINE_OPTIONS = ("precision", "device", "num_threads", "strict")


def add_gan(sub):
    from dataclasses import MISSING, fields

    from ..train.config import setting_help
    from ..train.gan import GanConfig

    p = sub.add_parser("gan", help="train and evaluate an expression-editing GAN (StarGAN-style) on real faces",
                       description="A conditional GAN that moves a real face to a target expression. Train it on "
                                   "your faces, write edited faces with `ferkit synth edit`, measure them with "
                                   "`ferkit gan evaluate`. Nothing is downloaded.")
    ss = p.add_subparsers(dest="gan_command", metavar="SUBCOMMAND")
    t = ss.add_parser("train", help="train the generator and discriminator",
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      description="  ferkit gan train --data real/ --out runs/gan --iterations 20000\n\n"
                                  "Hinge loss with spectral norm in the discriminator, expression classification, "
                                  "cycle reconstruction (see ferkit.train.gan).",
                      epilog="The run folder (--out) receives config.json, history.csv, curves.png,\n"
                             "samples/iter_NNNNNN.png (rows: held-out real faces; columns: the input, then each\n"
                             "target expression), generator.safetensors, summary.json and state/. Re-running the\n"
                             "same command resumes an interrupted run; a larger --iterations continues a finished one.")
    t.add_argument("--data", required=True, help="real faces: class folders or manifest CSV")
    t.add_argument("--out", required=True, help="run folder to create (or resume)")
    by_name = {f.name: f for f in fields(GanConfig)}
    for name, text in {**GAN_OPTIONS, **{m: setting_help(by_name[m]) for m in MACHINE_OPTIONS}}.items():
        f = by_name[name]
        default = f.default if f.default is not MISSING else None
        if name == "seed":
            t.add_argument("--seed", type=random_seed, default=None, help=f"{text} (default {default})")
        else:
            config_option(t, f, text, "" if default is None else f"default {show_value(default)}")
    t.add_argument("--overwrite", action="store_true", help="replace what --out holds and start over")
    t.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    t.set_defaults(func=_cmd_gan_train)
    e = ss.add_parser("evaluate", help="expression accuracy, KID, identity and realism of a generator's faces",
                      description="Moves real faces to every other expression and reports, overall and per target "
                                  "class, (a) how often a classifier trained on real faces, the judge (the bundled "
                                  "model by default), reads the target and how often still the source face's "
                                  "expression, beside its accuracy on the real faces; (b) KID between generated and "
                                  "real faces on the judge's penultimate features; (c) L1 between a face and its cycle "
                                  "reconstruction and its own-class edit G(x, y); (d) realism: the cross-validated "
                                  "AUC of a classifier telling real faces from their edits (0.5 = cannot tell) and "
                                  "the edits' high-frequency energy over the real faces' (1 = same texture). With "
                                  "several --real sources, each is a domain with its own figures. A judge that is "
                                  "the generator's --guide is refused. Writes quality.json, quality.png and "
                                  "edits-<domain>.png (real faces and their edits: keep it with the data).")
    e.add_argument("gan_run", help="GAN run folder, generator checkpoint or bundled generator name")
    e.add_argument("--real", required=True, action="append",
                   help="real faces (class folders or manifest), ideally not trained on; repeat for several "
                        "domains (e.g. lab faces and film faces), each edited and measured on its own too")
    e.add_argument("--judge", "--classifier", dest="judge", default=None,
                   help="the classifier that reads the edits: run folder, checkpoint or bundled name (default: the "
                        "bundled model); not the generator's --guide (refused), ideally one trained on other data")
    e.add_argument("--per-class", type=positive_int, default=200, help="generated faces per class (default 200)")
    e.add_argument("--classes", default=None,
                   help="classes of --real to use, others ignored (default: all; each must be one the generator knows)")
    e.add_argument("--out", default=None, help="report folder (default: <run>/quality)")
    e.add_argument("--seed", type=random_seed, default=0)
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_cmd_gan_evaluate)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _cmd_gan_train(a) -> int:
    from ..train.distributed import from_env
    from ..train.gan import GanConfig, train_gan

    given = {name: getattr(a, name) for name in (*GAN_OPTIONS, *MACHINE_OPTIONS) if getattr(a, name) is not None}
    r = train_gan(GanConfig(data=a.data, out=a.out, progress=not a.no_progress, **given), overwrite=a.overwrite)
    if from_env().main:     # torchrun: rank 0 reports
        print(r.text())
    return 0


def _cmd_gan_evaluate(a) -> int:
    from ..synth.quality import evaluate_gan, quality_text

    r = evaluate_gan(a.gan_run, a.real, a.judge, a.out, a.per_class, a.seed, a.device, not a.no_progress,
                     classes=a.classes)
    print(quality_text(r))
    return 0


# ----------------------------------------------------------------------------- mix
def add_mix(sub):
    p = sub.add_parser("mix", help="build a real + k x generated training manifest (no copying)",
                       description="Write a manifest CSV (path,class,source) of the real images plus K x (number "
                                   "of real images) generated images, drawn per class so the real class balance is "
                                   "kept (or --balance to equalise classes). `ferkit train --train-dir` accepts it.")
    p.add_argument("--real", required=True, help="real data: class folders or manifest CSV")
    p.add_argument("--synthetic", required=True, action="append",
                   help="generated data (class folders or manifest); repeat for several sources")
    p.add_argument("--ratio", required=True, help="K: generated images per real image (e.g. 2 or 0.5)")
    p.add_argument("--out", required=True, help="manifest to write (.csv; written atomically)")
    p.add_argument("--balance", action="store_true", help="equalise the classes of the mixed set")
    p.add_argument("--replace", action="store_true",
                   help="sample generated images with replacement when a class has too few")
    p.add_argument("--seed", type=random_seed, default=0, help="which generated images are drawn (default 0)")
    p.add_argument("--classes", default=None, help="comma-separated classes (default: those of the real data)")
    p.set_defaults(func=_cmd_mix)


def _cmd_mix(a) -> int:
    from ..experiments import build_mix

    r = build_mix(a.real, a.synthetic, a.ratio, a.out, balance=a.balance, replace=a.replace, seed=a.seed,
                  classes=a.classes)
    print(r.text())
    return 0
