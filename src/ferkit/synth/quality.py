"""How good are a generator's faces? ``ferkit gan evaluate GAN_RUN --real DIR [--judge MODEL]``.

Four measures, written as ``quality.json`` and one figure (``quality.png``), overall, per
target class and per domain (each ``--real`` source is one: lab faces, film faces, ...), and
one grid of edits of real faces per domain (``edits-<domain>.png``):

(a) expression accuracy: a classifier trained on real faces, the *judge* (the bundled FER2013
    model by default), reads the target expression of generated faces how often (target-read
    rate), and how often it still reads the source face's expression (source-kept rate: an edit
    that changed nothing), beside its accuracy on the real faces themselves (its ceiling). Only
    the generator's classes compete. A generator trained with ``--guide`` learnt to satisfy that
    classifier, so the guide itself is refused as the judge (same weights file or same SHA-256).
(b) KID, the kernel inception distance (Binkowski et al. 2018) between generated and real faces,
    on the classifier's penultimate features (its input to the last linear layer): the unbiased
    squared MMD with the cubic polynomial kernel, averaged over random subsets. KID rather than
    FID because FID is biased at the few thousand faces a small dataset has, KID is not; 0 means
    the same distribution. The KID between two halves of the real faces is reported beside it.
(c) identity: mean absolute difference (pixels in [0, 1]) between a real face and its cycle
    reconstruction G(G(x, t), y), between the face and its edit (how much the edit changed), and
    between the face and G(x, y), the face "edited" to its own expression (identity distance).
(d) realism (:mod:`ferkit.synth.realism`): the cross-validated AUC of a small classifier that
    tells real faces from their edits (0.5 = cannot tell), and the edits' high-frequency energy
    over their source faces' (1 = same texture). Read (a) beside it: a generator can teach
    itself textures that classifiers read as the target but no person would.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..console import log
from ..data import load_dataset, preprocess_gray
from ..errors import FerkitError
from ..files import make_dir, new_figure, save_figure, write_json
from ..runtime import require_finite, select_device
from .gan import generate, load_generator, open_classifier, plan_edits, source_classes
from .realism import REALISM_MEASURES, paired_realism


def penultimate_features(model, faces: np.ndarray, spec, device, batch_size: int = 256) -> np.ndarray:
    """The input of the model's last linear layer for uint8 faces (N, S, S), float64 (N, D)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise FerkitError("the classifier has no final linear layer to take features from")
    feats = []
    hook = linears[-1].register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach().float().cpu()))
    try:
        with torch.no_grad():
            for s in range(0, len(faces), batch_size):
                model(spec.to_tensor(faces[s:s + batch_size], device))
    finally:
        hook.remove()
    return torch.cat(feats).double().numpy()


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 50, subset_size: int = 500, seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance: mean and standard deviation over subsets of the unbiased MMD^2
    with k(a, b) = (a.b / d + 1)^3. A side with no more than ``subset_size`` faces is drawn in
    halves (subsets of half the smaller side), since subsets of the whole of both sides would all be
    equal and the standard deviation 0."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(x), len(y))
    if m == min(len(x), len(y)):
        m //= 2
    if m < 2:
        raise FerkitError("KID needs at least 4 faces on each side")
    d = x.shape[1]
    values = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        kxx, kyy, kxy = ((a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3)
        values.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                      - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def predict_columns(model, faces, spec, device, columns) -> np.ndarray:
    """Argmax over the given classifier columns only (the generator's classes)."""
    with torch.no_grad():
        logits = torch.cat([model(spec.to_tensor(faces[s:s + 256], device)).float().cpu()
                            for s in range(0, len(faces), 256)])
    require_finite(logits, "the classifier")
    return logits[:, columns].argmax(1).numpy()


def check_judge_is_not_guide(judge_path: Path, judge_sha256: str, train_config: dict) -> None:
    """A generator trained with ``--guide`` learnt to please that classifier: its read rate by the
    same classifier says little. The same weights file, or a file with the same SHA-256, is refused."""
    from ..models import model_file

    guide, guide_sha = train_config.get("guide"), train_config.get("guide_sha256")
    if guide is None:
        return
    same = guide_sha is not None and guide_sha == judge_sha256
    if not same:
        try:
            same = model_file(guide).resolve() == Path(judge_path).resolve()
        except (FerkitError, OSError):   # the guide is no longer where training found it
            pass
    if same:
        raise FerkitError(f"the judge {judge_path} is the classifier this generator was trained to please (its "
                          f"--guide {guide}); pass --judge a classifier not used in training (e.g. one trained on "
                          "another split or on FER+ labels)")


def _mean(x) -> float | None:
    return float(np.mean(x)) if len(x) else None


#: What quality.json's figures are, as the report states it.
MEASURES = ("expression accuracy: argmax of the judge over the generator's classes (target_read: read as the target; "
            "source_kept: read as the source face's expression); KID: unbiased MMD^2, cubic polynomial kernel, judge's "
            "penultimate features, 50 subsets (per class: edits into the class against real faces of it); identity: "
            "mean |x - y| in [0, 1] pixel units (cycle: x against G(G(x, t), y); edit: x against G(x, t); identity: "
            "x against G(x, y))")


def _domain_names(sources: list) -> list[str]:
    """A name per real-face source: its folder or file name (without .csv), numbered when two agree."""
    names = [Path(str(s)).stem if str(s).lower().endswith(".csv") else Path(str(s)).name or str(s) for s in sources]
    return [f"{n}-{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


@dataclass
class RealFaces:
    """The real faces of every ``--real`` source, one after another: uint8 images, labels as the
    generator's class indices, each face's domain (index into ``names``), each domain's classes and each face's file."""

    images: np.ndarray
    labels: np.ndarray
    domain: np.ndarray
    names: list[str]
    classes: list[tuple[str, ...]]
    sources: list[str]
    paths: list[str] = field(default_factory=list)


def load_real_faces(real, grec, classes=None, progress: bool = True) -> RealFaces:
    """Load each real source (a path, or a list of paths: one domain each) at the generator's size,
    with its classes (``classes`` only, when given), each of which the generator must know."""
    sources = [real] if isinstance(real, (str, os.PathLike)) else list(real)
    if not sources:
        raise FerkitError("--real: give at least one source of real faces")
    images, labels, domain, domain_classes, paths = [], [], [], [], []
    for d, source in enumerate(sources):
        cls = source_classes(source, grec, classes, option="--classes")
        data = load_dataset(source, cls, grec.image_size, progress=progress, role="real data")
        to_gen = np.asarray([grec.classes.index(c) for c in data.classes])
        images.append(data.images)
        labels.append(to_gen[data.labels])
        domain.append(np.full(len(data), d))
        domain_classes.append(tuple(cls))
        paths += data.paths
    return RealFaces(np.concatenate(images), np.concatenate(labels), np.concatenate(domain), _domain_names(sources),
                     domain_classes, [str(s) for s in sources], paths)


def plan_domain_edits(real: RealFaces, grec, per_class: int, seed: int) -> dict[int, np.ndarray]:
    """:func:`plan_edits` in each domain (``per_class`` edits into each of its classes, from its own
    faces), as indices into all the real faces; one domain plans exactly as :func:`plan_edits`."""
    plan: dict[int, list] = {}
    for d, cls in enumerate(real.classes):
        where = np.flatnonzero(real.domain == d)
        for t, idx in plan_edits(real.labels[where], len(grec.classes), [grec.classes.index(c) for c in cls],
                                 per_class, seed).items():
            plan.setdefault(t, []).append(where[idx])
    return {t: np.concatenate(v) for t, v in sorted(plan.items())}


def _edit_sets(G, grec, images, labels, plan: dict, classes, per_class: int, seed: int, dev):
    """The faces a quality report reads: (source indices, targets, the edits, their cycle back to
    the source class, indices of up to ``per_class`` real faces of each class, those faces edited
    to their own class)."""
    src = np.concatenate(list(plan.values()))
    targets = np.concatenate([np.full(len(v), t) for t, v in plan.items()])
    edited = generate(G, grec, images[src], targets, dev)
    cycled = generate(G, grec, edited, labels[src], dev)
    rng = np.random.default_rng([seed, 1])   # up to per_class real faces of each class, edited to their own
    own = np.concatenate([rng.permutation(np.flatnonzero(labels == grec.classes.index(c)))[:per_class]
                          for c in classes])
    same = generate(G, grec, images[own], labels[own], dev)
    return src, targets, edited, cycled, own, same


def _kid_or_none(a: np.ndarray, b: np.ndarray, seed: int) -> dict | None:
    """KID of feature sets ``a`` and ``b``, when both have enough faces (4)."""
    if min(len(a), len(b)) < 4:
        return None
    return dict(zip(("mean", "std"), kid(a, b, seed=seed)))


def _domain_reports(grec, real: RealFaces, src, targets, edited, gen_pred, real_pred, f_gen, f_real, distances,
                    seed: int) -> dict:
    """Per domain (``--real`` source): its faces and edits, target read (overall and per target),
    source kept, the judge's accuracy on its real faces, cycle and edit L1, KID of its edits
    against its real faces (and of two halves of its real faces), and its realism figures."""
    reports = {}
    for d, name in enumerate(real.names):
        sel, mine = real.domain[src] == d, real.domain == d
        half = np.random.default_rng([seed, d]).permutation(np.flatnonzero(mine))
        reports[name] = {
            "real": real.sources[d], "classes": list(real.classes[d]), "real_faces": int(mine.sum()),
            "generated_faces": int(sel.sum()), "target_read": _mean(gen_pred[sel] == targets[sel]),
            "source_kept": _mean(gen_pred[sel] == real.labels[src][sel]),
            "per_class_target_read": {grec.classes[t]: _mean(gen_pred[sel & (targets == t)] == t)
                                      for t in np.unique(targets[sel])},
            "real_read": _mean(real_pred[mine] == real.labels[mine]),
            "cycle_l1": _mean(distances[0][sel]), "edit_l1": _mean(distances[1][sel]),
            "kid": _kid_or_none(f_gen[sel], f_real[mine], seed),
            "kid_real_halves": _kid_or_none(f_real[half[:len(half) // 2]], f_real[half[len(half) // 2:]], seed),
            "realism": paired_realism(real.images, src[sel], edited[sel], seed=seed)}
    return reports


def _class_reports(grec, plan, real: RealFaces, src, targets, gen_pred, real_pred, f_gen, f_real, distances,
                   own, seed: int) -> dict:
    """Per target class: edits, target read, source kept, KID, cycle, edit and identity L1, real read."""
    cycle_d, edit_d, same_d = distances
    labels, reports = real.labels, {}
    for t in plan:
        sel = targets == t
        reports[grec.classes[t]] = {
            "edits": int(sel.sum()), "target_read": _mean(gen_pred[sel] == t),
            "source_kept": _mean(gen_pred[sel] == labels[src][sel]),
            "kid": _kid_or_none(f_gen[sel], f_real[labels == t], seed),
            "cycle_l1": _mean(cycle_d[sel]), "edit_l1": _mean(edit_d[sel]),
            "identity_l1": _mean(same_d[labels[own] == t]),
            "real_read": _mean(real_pred[labels == t] == t)}
    return reports


def _grids(G, grec, real: RealFaces, out: Path, seed: int, dev) -> list[Path]:
    """``edits-<domain>.png`` per domain: a real face of each of its classes (rows; drawn with
    ``seed``), then the face moved to each expression the generator knows. These grids show the
    real faces given, so they belong with the report, not in a repository."""
    from ..train.gan import sample_grid, write_png

    paths = []
    for d, name in enumerate(real.names):
        rng = np.random.default_rng([seed, 3, d])
        pools = [np.flatnonzero((real.domain == d) & (real.labels == grec.classes.index(c))) for c in real.classes[d]]
        rows = [rng.choice(pool) for pool in pools if len(pool)]
        grid = sample_grid(G, real.images[rows], real.labels[rows], tuple(grec.classes), grec.input, dev)
        paths.append(out / f"edits-{''.join(ch if ch.isalnum() or ch in '-_.' else '_' for ch in name)}.png")
        write_png(paths[-1], grid)
    return paths


def evaluate_gan(gan_run, real, judge=None, out=None, per_class: int = 200, seed: int = 0,
                 device: str = "auto", progress: bool = True, classes=None, classifier=None) -> dict:
    """The quality report of a GAN run against real faces (of ``classes`` only, when given), read
    by ``judge`` (a classifier run, checkpoint or bundled name; None: the bundled default;
    ``classifier`` is its older name); written to ``out`` (default ``<run>/quality``) as
    quality.json, quality.png and one grid of edits per domain (``edits-<domain>.png``). Returns
    the report.

    ``real`` is one source of real faces (class folders or manifest) or a list of them, one
    domain each (e.g. lab faces and film faces): each domain's faces are edited ``per_class``
    times into each of its classes, and the report adds, per domain, its read rates, KID and
    realism figures (:mod:`ferkit.synth.realism`).

    Raises FerkitError, before anything is written, for a judge that is a generator, lacks one of
    the generator's classes, or is the classifier the generator was trained with (``--guide``).
    """
    judge = classifier if judge is None else judge
    dev = select_device(device)
    G, grec, gpath = load_generator(gan_run, dev)
    clf, crec, cpath, columns, csha = open_classifier(judge, grec.classes, "--judge", dev)
    check_judge_is_not_guide(cpath, csha, grec.train_config)
    real_faces = load_real_faces(real, grec, classes, progress)
    classes = tuple(c for c in grec.classes if any(c in cls for cls in real_faces.classes))
    images, labels = real_faces.images, real_faces.labels
    plan = plan_domain_edits(real_faces, grec, per_class, seed)
    src, targets, edited, cycled, own, same = _edit_sets(G, grec, images, labels, plan, classes, per_class,
                                                         seed, dev)

    def for_classifier(faces):   # the classifier's own input size
        if crec.image_size == grec.image_size:
            return faces
        return np.stack([preprocess_gray(f, crec.image_size) for f in faces])
    real_pred = predict_columns(clf.eval(), for_classifier(images), crec.input, dev, columns)
    gen_pred = predict_columns(clf, for_classifier(edited), crec.input, dev, columns)
    f_real = penultimate_features(clf, for_classifier(images), crec.input, dev)
    f_gen = penultimate_features(clf, for_classifier(edited), crec.input, dev)
    half = np.random.default_rng(seed).permutation(len(f_real))
    x_src = images[src].astype(float)
    distances = (np.abs(cycled.astype(float) - x_src).mean(axis=(1, 2)) / 255,
                 np.abs(edited.astype(float) - x_src).mean(axis=(1, 2)) / 255,
                 np.abs(same.astype(float) - images[own]).mean(axis=(1, 2)) / 255)
    guide = grec.train_config.get("guide")
    report = {
        "generator": str(gpath), "iteration": grec.epoch, "classifier": str(cpath),
        "judge": {"path": str(cpath), "sha256": csha, "arch": crec.arch, "classes": list(crec.classes)},
        "guide": {"model": guide, "sha256": grec.train_config.get("guide_sha256")} if guide else None,
        "real": real_faces.sources[0] if len(real_faces.sources) == 1 else real_faces.sources,
        "real_faces": int(len(images)), "generated_faces": int(len(edited)), "seed": seed,
        "classes": list(classes),
        "expression_accuracy": {
            "generated": float((gen_pred == targets).mean()), "real": float((real_pred == labels).mean()),
            # an edit that did not change the expression is still read as its source's
            "generated_read_as_source": float((gen_pred == labels[src]).mean()),
            "per_class_generated": {grec.classes[t]: float((gen_pred[targets == t] == t).mean()) for t in plan},
            "per_class_real": {c: float((real_pred[labels == grec.classes.index(c)] == grec.classes.index(c)).mean())
                               for c in classes}},
        "kid": dict(zip(("mean", "std"), kid(f_gen, f_real, seed=seed))),
        "kid_real_halves": dict(zip(("mean", "std"), kid(f_real[half[:len(half) // 2]], f_real[half[len(half) // 2:]],
                                                         seed=seed))),
        "identity": {"cycle_l1": float(distances[0].mean()), "edit_l1": float(distances[1].mean()),
                     "identity_l1": float(distances[2].mean())},
        "realism": paired_realism(images, src, edited, seed=seed),
        "per_class": _class_reports(grec, plan, real_faces, src, targets, gen_pred, real_pred, f_gen, f_real,
                                    distances, own, seed),
        "domains": _domain_reports(grec, real_faces, src, targets, edited, gen_pred, real_pred, f_gen, f_real,
                                   distances, seed),
        "measures": f"{MEASURES}; {REALISM_MEASURES}",
    }
    out = make_dir(Path(out) if out else Path(gpath).parent / "quality", "quality report folder")
    report["grids"] = [p.name for p in _grids(G, grec, real_faces, out, seed, dev)]
    write_json(out / "quality.json", report)
    _plot(report, out / "quality.png")
    log(f"quality report: {out / 'quality.json'}")
    return report


def quality_text(report: dict) -> str:
    """What ``ferkit gan evaluate`` prints about :func:`evaluate_gan`'s report: overall, then per target class."""
    acc, k, ident = report["expression_accuracy"], report["kid"], report["identity"]
    lines = [f"judge: {report['judge']['path']}",
             f"expression accuracy: generated {acc['generated']:.4f} (real {acc['real']:.4f}); generated faces read "
             f"as their source face's expression: {acc['generated_read_as_source']:.4f}",
             f"KID generated vs real: {k['mean']:.4f} +- {k['std']:.4f} "
             f"(real vs real: {report['kid_real_halves']['mean']:.4f})",
             f"identity: cycle L1 {ident['cycle_l1']:.4f}, edit L1 {ident['edit_l1']:.4f}, "
             f"identity L1 {ident['identity_l1']:.4f}",
             realism_line(report.get("realism")),
             f"{'target class':>12}  {'edits':>5}  {'target read':>11}  {'source kept':>11}  {'KID':>7}  "
             f"{'cycle L1':>8}  {'identity L1':>11}"]

    def num(v, width, fmt=".4f"):
        return f"{'-' if v is None else format(v, fmt):>{width}}"
    for c, row in report["per_class"].items():
        lines.append(f"{c:>12}  {row['edits']:>5}  {num(row['target_read'], 11, '.3f')}  "
                     f"{num(row['source_kept'], 11, '.3f')}  {num((row['kid'] or {}).get('mean'), 7)}  "
                     f"{num(row['cycle_l1'], 8)}  {num(row['identity_l1'], 11)}")
    domains = report.get("domains") or {}
    if len(domains) > 1:
        lines.append(f"{'domain':>12}  {'real':>5}  {'edits':>5}  {'target read':>11}  {'source kept':>11}  "
                     f"{'KID':>7}  {'real-real':>9}  {'AUC real/edit':>13}  {'HF ratio':>8}")
        for name, row in domains.items():
            auc, hf = (row["realism"] or {}).get("auc"), (row["realism"] or {}).get("hf_ratio")
            lines.append(f"{name[:12]:>12}  {row['real_faces']:>5}  {row['generated_faces']:>5}  "
                         f"{num(row['target_read'], 11, '.3f')}  {num(row['source_kept'], 11, '.3f')}  "
                         f"{num((row['kid'] or {}).get('mean'), 7)}  "
                         f"{num((row['kid_real_halves'] or {}).get('mean'), 9)}  "
                         f"{num((auc or {}).get('mean'), 13, '.3f')}  {num(hf, 8, '.3f')}")
    return "\n".join(lines)


def realism_line(realism: dict | None) -> str:
    """One line of :func:`ferkit.synth.realism.paired_realism`'s figures."""
    if not realism:
        return "realism: not measured"
    auc = realism["auc"]
    told = ("too few edited faces for the real-vs-edit test" if auc is None else
            f"real-vs-edit AUC {auc['mean']:.3f} +- {auc['std']:.3f} over {len(auc['folds'])} folds "
            f"({realism['pairs']} faces and one edit of each; 0.5 = cannot tell)")
    hf = "-" if realism["hf_ratio"] is None else f"{realism['hf_ratio']:.3f}"
    return f"realism: {told}; high-frequency energy edits/real {hf} (1 = same texture)"


def _plot(r: dict, path: Path) -> None:
    acc = r["expression_accuracy"]
    classes = list(acc["per_class_generated"])
    fig = new_figure(figsize=(9, 4))
    ax = fig.subplots()
    x = np.arange(len(classes))
    ax.bar(x - 0.27, [acc["per_class_real"].get(c, np.nan) for c in classes], 0.27, label=f"real ({acc['real']:.2f})")
    ax.bar(x, [acc["per_class_generated"][c] for c in classes], 0.27,
           label=f"generated, read as the target ({acc['generated']:.2f})")
    per = r.get("per_class", {})
    ax.bar(x + 0.27, [(per.get(c) or {}).get("source_kept") or 0 for c in classes], 0.27,
           label=f"generated, still read as the source face's ({acc['generated_read_as_source']:.2f})")
    ax.set_xticks(x, classes)
    ax.set_ylim(0, 1.22)   # headroom for the legend above bars that reach 1
    ax.set_yticks(np.linspace(0, 1, 6))
    judge = Path(r["classifier"])
    judge_name = f"{judge.parent.name}/{judge.name}" if judge.name in ("best.safetensors", "last.safetensors") \
        else judge.name   # a run folder's checkpoint is named by its run
    ax.set_ylabel(f"read by the judge ({judge_name})")
    ax.legend(loc="upper center", ncol=3, fontsize=8)
    k, kh, ident = r["kid"], r["kid_real_halves"], r["identity"]
    realism = r.get("realism") or {}
    auc = (realism.get("auc") or {}).get("mean")
    told = "" if auc is None else f"\nreal-vs-edit AUC {auc:.3f} (0.5 = cannot tell)"
    hf = "" if realism.get("hf_ratio") is None else f", high-frequency energy edits/real {realism['hf_ratio']:.2f}"
    ax.set_title(f"KID gen-real {k['mean']:.4f} +- {k['std']:.4f} (real-real {kh['mean']:.4f}); "
                 f"cycle L1 {ident['cycle_l1']:.3f}, edit L1 {ident['edit_l1']:.3f}{told}{hf}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
