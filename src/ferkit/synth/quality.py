"""How good are a generator's faces? ``ferkit gan evaluate GAN_RUN --real DIR [--classifier MODEL]``.

Three measures, written as ``quality.json`` and one figure (``quality.png``):

(a) expression accuracy: a classifier trained on real faces (the bundled FER2013 model by default)
    reads the target expression of generated faces how often, beside its accuracy on the real
    faces themselves (its ceiling). Only the generator's classes compete.
(b) KID, the kernel inception distance (Binkowski et al. 2018) between generated and real faces,
    on the classifier's penultimate features (its input to the last linear layer): the unbiased
    squared MMD with the cubic polynomial kernel, averaged over random subsets. KID rather than
    FID because FID is biased at the few thousand faces a small dataset has, KID is not; 0 means
    the same distribution. The KID between two halves of the real faces is reported beside it.
(c) identity: mean absolute difference (pixels in [0, 1]) between a real face and its cycle
    reconstruction G(G(x, t), y), and between the face and its edit (how much the edit changed).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..console import log
from ..data import load_dataset, preprocess_gray
from ..errors import FerkitError
from ..files import make_dir, new_figure, save_figure, write_json
from ..models import load_checkpoint
from ..runtime import select_device
from .gan import generate, load_generator, plan_edits, source_classes


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


def _predict(model, faces, spec, device, columns) -> np.ndarray:
    """Argmax over the given classifier columns only (the generator's classes)."""
    with torch.no_grad():
        logits = torch.cat([model(spec.to_tensor(faces[s:s + 256], device)).float().cpu()
                            for s in range(0, len(faces), 256)])
    return logits[:, columns].argmax(1).numpy()


def evaluate_gan(gan_run, real, classifier=None, out=None, per_class: int = 200, seed: int = 0,
                 device: str = "auto", progress: bool = True, classes=None) -> dict:
    """The quality report of a GAN run against real faces (of ``classes`` only, when given);
    written to ``out`` (default ``<run>/quality``) as quality.json and quality.png. Returns the report."""
    from ..bundled import resolve_model_path

    dev = select_device(device)
    G, grec, gpath = load_generator(gan_run, dev)
    clf, crec = load_checkpoint(resolve_model_path(classifier), dev, kind="classifier")
    missing = [c for c in grec.classes if c not in crec.classes]
    if missing:
        raise FerkitError(f"the classifier does not know {', '.join(missing)}; it has {', '.join(crec.classes)}")
    classes = source_classes(real, grec, classes, option="--classes")
    data = load_dataset(real, classes, grec.image_size, progress=progress, role="real data")
    to_gen = np.asarray([grec.classes.index(c) for c in data.classes])
    labels = to_gen[data.labels]
    plan = plan_edits(labels, len(grec.classes), [grec.classes.index(c) for c in classes], per_class, seed)
    src = np.concatenate(list(plan.values()))
    targets = np.concatenate([np.full(len(v), t) for t, v in plan.items()])
    edited = generate(G, grec, data.images[src], targets, dev)
    cycled = generate(G, grec, edited, labels[src], dev)

    def for_classifier(faces):   # the classifier's own input size
        if crec.image_size == grec.image_size:
            return faces
        return np.stack([preprocess_gray(f, crec.image_size) for f in faces])
    columns = [crec.classes.index(c) for c in grec.classes]
    real_pred = _predict(clf.eval(), for_classifier(data.images), crec.input, dev, columns)
    gen_pred = _predict(clf, for_classifier(edited), crec.input, dev, columns)
    f_real = penultimate_features(clf, for_classifier(data.images), crec.input, dev)
    f_gen = penultimate_features(clf, for_classifier(edited), crec.input, dev)
    half = np.random.default_rng(seed).permutation(len(f_real))
    report = {
        "generator": str(gpath), "iteration": grec.epoch, "classifier": str(resolve_model_path(classifier)),
        "real": str(real), "real_faces": int(len(data)), "generated_faces": int(len(edited)), "seed": seed,
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
        "identity": {"cycle_l1": float(np.abs(cycled.astype(float) - data.images[src]).mean() / 255),
                     "edit_l1": float(np.abs(edited.astype(float) - data.images[src]).mean() / 255)},
        "measures": "expression accuracy: argmax of the classifier over the generator's classes; KID: unbiased MMD^2, "
                    "cubic polynomial kernel, classifier penultimate features, 50 subsets; identity: mean |x - y| "
                    "in [0, 1] pixel units",
    }
    out = make_dir(Path(out) if out else Path(gpath).parent / "quality", "quality report folder")
    write_json(out / "quality.json", report)
    _plot(report, out / "quality.png")
    log(f"quality report: {out / 'quality.json'}")
    return report


def _plot(r: dict, path: Path) -> None:
    acc = r["expression_accuracy"]
    classes = list(acc["per_class_generated"])
    fig = new_figure(figsize=(9, 4))
    ax = fig.subplots()
    x = np.arange(len(classes))
    ax.bar(x - 0.2, [acc["per_class_real"].get(c, np.nan) for c in classes], 0.4, label=f"real ({acc['real']:.2f})")
    ax.bar(x + 0.2, [acc["per_class_generated"][c] for c in classes], 0.4,
           label=f"generated, read as the target ({acc['generated']:.2f}; "
                 f"as the source face's: {acc['generated_read_as_source']:.2f})")
    ax.set_xticks(x, classes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("classifier accuracy")
    ax.legend(loc="upper right", fontsize=8)
    k, kh, ident = r["kid"], r["kid_real_halves"], r["identity"]
    ax.set_title(f"KID gen-real {k['mean']:.4f} +- {k['std']:.4f} (real-real {kh['mean']:.4f}); "
                 f"cycle L1 {ident['cycle_l1']:.3f}, edit L1 {ident['edit_l1']:.3f}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
