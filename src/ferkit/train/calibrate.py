"""Temperature scaling: probabilities that mean what they say.

A network trained with cross-entropy is usually over-confident: its top probability averages more
than its accuracy. Temperature scaling (Guo et al. 2017, "On calibration of modern neural
networks") divides every logit by one scalar ``T > 0``, fitted on held-out validation data by
minimising the negative log-likelihood (NLL). The argmax, so the accuracy, does not change; only the
probabilities do. ``T`` is stored in the checkpoint record (:attr:`CheckpointRecord.temperature`)
and applied wherever ferkit produces probabilities: ``ferkit evaluate``, ``ferkit predict``, the
Recognizer (both backends) and ONNX export (inside the graph).

Example::

    ferkit calibrate runs/exp1 --val-dir data/val     # writes runs/exp1/best.calibrated.safetensors

    from ferkit.train.calibrate import fit_temperature, expected_calibration_error
    T = fit_temperature(val_logits, val_labels)       # labels (N,) or vote distributions (N, C)

The fit is deterministic: NLL(1/T) is convex, so its derivative is bisected on log(1/T) within
:data:`TEMPERATURE_RANGE`. ECE uses :data:`ECE_BINS` equal-width bins of the top probability.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import __version__
from ..console import log
from ..errors import FerkitError

#: Equal-width confidence bins of the expected calibration error (the usual 15).
ECE_BINS = 15
#: Where a fitted temperature may lie; a fit that ends on a bound says so.
TEMPERATURE_RANGE = (0.05, 20.0)
#: Suffix of the calibrated copy written beside its checkpoint by default.
CALIBRATED_SUFFIX = ".calibrated.safetensors"


# ----------------------------------------------------------------------------- metrics
def _as_logits(logits) -> np.ndarray:
    z = np.asarray(logits.detach().cpu().numpy() if hasattr(logits, "detach") else logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise FerkitError(f"logits must be (N, classes >= 2), got shape {z.shape}")
    if np.isnan(z).any() or np.isposinf(z).any():
        raise FerkitError("the model's outputs are not finite (NaN or infinite logits): its weights are damaged")
    return z


def _as_targets(targets, n: int, c: int) -> np.ndarray:
    """Labels (N,) or distributions (N, C) -> (N, C) float64 distributions."""
    t = np.asarray(targets)
    if t.ndim == 1:
        if len(t) != n or (n and (t.min() < 0 or t.max() >= c)):
            raise FerkitError(f"labels must be {n} class indices in 0..{c - 1}")
        out = np.zeros((n, c))
        out[np.arange(n), t.astype(np.int64)] = 1.0
        return out
    t = t.astype(np.float64)
    if t.shape != (n, c) or not np.isfinite(t).all() or (t < 0).any() or (t.sum(1) <= 0).any():
        raise FerkitError(f"target distributions must be (N={n}, C={c}), finite, non-negative, each summing above 0")
    return t / t.sum(1, keepdims=True)


def log_softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """float64 log-probabilities of ``logits / temperature`` (masked ``-inf`` classes stay ``-inf``)."""
    z = _as_logits(logits) / temperature
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def negative_log_likelihood(logits, targets, temperature: float = 1.0) -> float:
    """Mean cross-entropy of softmax(logits / T) against labels (N,) or distributions (N, C), nats."""
    lp = log_softmax(logits, temperature)
    q = _as_targets(targets, *lp.shape)
    if not len(lp):
        return float("nan")
    with np.errstate(invalid="ignore"):   # 0 x log 0 (a masked class) counts as 0
        return float(-np.where(q > 0, q * lp, 0.0).sum(1).mean())


def reliability_table(probs, labels, bins: int = ECE_BINS) -> dict:
    """Per equal-width bin of the top probability (bin b holds confidences in (b/B, (b+1)/B]):
    count, mean confidence and accuracy (None for empty bins), and the ECE over all of them."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    conf, pred = p.max(1), p.argmax(1)
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    hit_sum = np.bincount(which, weights=(pred == y).astype(np.float64), minlength=bins)
    n = max(len(y), 1)
    ece = float(np.abs(hit_sum - conf_sum).sum() / n)   # sum_b (n_b / N) |acc_b - conf_b|
    nonzero = count > 0
    return {"bins": bins, "edges": [i / bins for i in range(bins + 1)], "count": count.tolist(),
            "confidence": [float(v) if k else None for v, k in zip(conf_sum / np.maximum(count, 1), nonzero)],
            "accuracy": [float(v) if k else None for v, k in zip(hit_sum / np.maximum(count, 1), nonzero)],
            "ece": ece, "mean_confidence": float(conf.mean()) if len(y) else float("nan"),
            "accuracy_overall": float((pred == y).mean()) if len(y) else float("nan")}


def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """ECE: sum over equal-width confidence bins of (share of faces) x |accuracy - mean confidence|."""
    return reliability_table(probs, labels, bins)["ece"]


def calibration_metrics(logits, labels, temperature: float = 1.0, bins: int = ECE_BINS) -> dict:
    """NLL, ECE, accuracy and mean confidence of softmax(logits / T) against integer labels."""
    lp = log_softmax(logits, temperature)
    table = reliability_table(np.exp(lp), labels, bins)
    return {"nll": negative_log_likelihood(lp, labels), "ece": table["ece"], "accuracy": table["accuracy_overall"],
            "mean_confidence": table["mean_confidence"], "temperature": float(temperature)}


def plot_reliability(probs, labels, path, title: str = "", bins: int = ECE_BINS) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal (gaps shaded), and
    how many faces fall in each bin below it."""
    from ..files import new_figure, save_figure

    t = reliability_table(probs, labels, bins)
    width = 1.0 / bins
    centres = np.asarray(t["edges"][:-1]) + width / 2
    acc = np.asarray([np.nan if a is None else a for a in t["accuracy"]])
    conf = np.asarray([np.nan if c is None else c for c in t["confidence"]])
    fig = new_figure(figsize=(5.5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1)})
    top.bar(centres, np.nan_to_num(acc), width=width, edgecolor="black", color="#4c72b0", label="accuracy")
    gap_lo, gap_hi = np.fmin(acc, conf), np.fmax(acc, conf)
    top.bar(centres, np.nan_to_num(gap_hi - gap_lo), bottom=np.nan_to_num(gap_lo), width=width,
            color="#dd8452", alpha=0.5, edgecolor="#dd8452", label="gap to mean confidence")
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title or f"ECE {t['ece']:.4f} ({bins} bins)", fontsize=10)
    bottom.bar(centres, t["count"], width=width, edgecolor="black", color="#8c8c8c")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("faces")
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- fitting
def fit_temperature(logits, targets, bounds: tuple[float, float] = TEMPERATURE_RANGE, weights=None) -> float:
    """The T in ``bounds`` minimising NLL of softmax(logits / T) against labels (N,) or vote
    distributions (N, C). Deterministic: NLL is convex in b = 1/T with derivative
    mean(E_softmax(b z)[z] - E_target[z]), bisected on log b. ``weights`` (N,): each face's weight in
    that mean (e.g. 1/size of its domain, so that every domain counts the same; see
    :func:`domain_weights`)."""
    z = _as_logits(logits)
    if not len(z):
        raise FerkitError("cannot fit a temperature on no faces")
    q = _as_targets(targets, *z.shape)
    z = np.where(np.isneginf(z), -1e30, z)   # a masked class: probability 0 at every temperature
    target_z = (q * z).sum(1)

    def slope(log_b: float) -> float:
        s = z * math.exp(log_b)
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return float(np.average((p * z).sum(1) - target_z, weights=weights))

    lo, hi = -math.log(bounds[1]), -math.log(bounds[0])     # log b; b = 1/T
    s_lo, s_hi = slope(lo), slope(hi)
    if abs(s_lo) < 1e-12 and abs(s_hi) < 1e-12:    # logits that do not depend on the face: any T will do
        return 1.0
    if s_lo >= 0:
        log(f"note: the fitted temperature reached its upper bound {bounds[1]:g} (the model's ranking is "
            "barely better than chance on this data)")
        return float(bounds[1])
    if s_hi <= 0:
        log(f"note: the fitted temperature reached its lower bound {bounds[0]:g} (the model separates this "
            "data perfectly: sharper is always better)")
        return float(bounds[0])
    for _ in range(100):
        mid = (lo + hi) / 2
        if slope(mid) < 0:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return float(math.exp(-(lo + hi) / 2))


def domain_weights(domains) -> np.ndarray:
    """Per-face weights 1/(faces of its domain), normalised to mean 1: every domain counts the same
    in :func:`fit_temperature` however many faces it has. ``domains``: one label per face."""
    _, inverse, counts = np.unique(np.asarray(domains), return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    return w * (len(w) / w.sum())


# ----------------------------------------------------------------------------- checkpoints
@dataclass
class CalibrationResult:
    """What ``ferkit calibrate`` did: the temperature, figures before/after, and the file written."""

    temperature: float
    previous_temperature: float
    fitted: bool                       # False: set by hand (--temperature)
    out: Path
    source: Path
    n: int = 0                         # validation faces (0 without --val-dir)
    classes: tuple[str, ...] = ()
    before: dict = field(default_factory=dict)   # nll, ece, accuracy, mean_confidence, temperature
    after: dict = field(default_factory=dict)
    domains: list = field(default_factory=list)  # several validation sets: val_data, n, before, after of each
    per_domain: dict = field(default_factory=dict)   # the record's domain_temperature, when fitted


def default_output(ckpt: Path) -> Path:
    """``<name>.calibrated.safetensors`` beside the checkpoint; for a bundled model (inside the
    installed package) in the working folder instead."""
    from ..bundled import WEIGHTS_DIR

    name = ckpt.name[:-len(".safetensors")] if ckpt.name.endswith(".safetensors") else ckpt.stem
    folder = Path(".") if ckpt.resolve().parent == WEIGHTS_DIR.resolve() else ckpt.parent
    return folder / f"{name}{CALIBRATED_SUFFIX}"


def _check_output(out: Path, ckpt: Path, overwrite: bool) -> Path:
    from ..bundled import WEIGHTS_DIR
    from ..files import make_dir

    if out.suffix.lower() != ".safetensors":
        raise FerkitError(f"--out {out} must end in .safetensors")
    if out.is_dir():
        raise FerkitError(f"--out {out} is a folder; give a file name such as {out / ckpt.name}")
    if out.exists() and out.resolve() == ckpt.resolve():
        raise FerkitError(f"--out {out} is the checkpoint being calibrated; ferkit never overwrites the original "
                          "(write the calibrated copy elsewhere)")
    if out.resolve().parent == WEIGHTS_DIR.resolve():
        raise FerkitError(f"--out {out} is inside the installed ferkit package; write it elsewhere")
    if out.exists() and not overwrite:
        raise FerkitError(f"{out} exists; pass --overwrite to replace it")
    make_dir(out.parent)
    return out


def _val_logits(model_path: Path, val_dir, batch_size: int, precision: str, device: str, strict: bool,
                progress: bool, embed: bool = False):
    """(raw logits, labels in model order, record, embeddings or None) of a checkpoint on a labelled
    folder; raw = T 1. Data with fewer classes than the model (SFEW has no contempt) is scored among
    the classes it has: the others' logits are -inf, so they take no probability at any temperature.
    ``embed``: also the faces' embeddings (:func:`ferkit.models.domain_temperature.face_embeddings`)."""
    from ..data import load_dataset, scan_source
    from ..models import open_model

    opened = open_model(model_path, device=device, precision=precision, backend="torch")
    record = opened.record
    found = scan_source(val_dir, None, "validation data").found_classes
    classes = tuple(c for c in record.classes if c in found)
    if not classes:
        raise FerkitError(f"validation data {val_dir} has none of the model's classes ({', '.join(record.classes)})")
    data = load_dataset(val_dir, classes, record.image_size, strict, progress=progress, role="validation data")
    to_model = np.asarray([record.classes.index(c) for c in data.classes])
    logits = opened.logits(data.images, batch_size=batch_size, calibrated=False)
    absent = [i for i, c in enumerate(record.classes) if c not in classes]
    if absent:
        logits = np.array(logits, dtype=np.float32)
        logits[:, absent] = -np.inf
    emb = None
    if embed:
        from ..models.domain_temperature import face_embeddings

        emb = face_embeddings(opened, data.images, batch_size)
    return logits, to_model[data.labels], record, emb


def fit_domain_temperature(names, embeddings, logits, labels, temperatures=None) -> dict:
    """A record's ``domain_temperature`` (see :mod:`ferkit.models.domain_temperature`) from several
    labelled domains, one entry of each list per domain: a temperature per domain (fitted on its
    logits, or ``temperatures`` given, e.g. fitted on out-of-fold logits elsewhere), and a logistic
    regression that reads the domain from the embedding, every domain weighing the same."""
    from sklearn.linear_model import LogisticRegression

    from ..models.record import check_domain_temperature

    if len(names) < 2:
        raise FerkitError("a per-domain temperature needs two or more --val-dir sets (one per domain)")
    if temperatures is None:
        temperatures = [fit_temperature(z, y) for z, y in zip(logits, labels)]
    elif len(temperatures) != len(names):
        raise FerkitError(f"{len(temperatures)} domain temperatures for {len(names)} --val-dir sets")
    x = np.concatenate(embeddings).astype(np.float64)
    domain = np.concatenate([np.full(len(e), i) for i, e in enumerate(embeddings)])
    reader = LogisticRegression(max_iter=5000).fit(x, domain, sample_weight=domain_weights(domain))
    weight, bias = reader.coef_, reader.intercept_
    if len(names) == 2:   # scikit-learn's binary form: one row; softmax([-a/2, a/2]) = sigmoid(a)
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.concatenate([-bias / 2, bias / 2])
    return check_domain_temperature({"domains": list(names), "temperatures": [float(t) for t in temperatures],
                                     "weight": weight.tolist(), "bias": bias.tolist(),
                                     "reader_accuracy": float(reader.score(x, domain))})


def calibrate_checkpoint(model, val_dir=None, out=None, temperature: float | None = None, overwrite: bool = False,
                         batch_size: int = 256, precision: str = "fp32", device: str = "auto", strict: bool = False,
                         progress: bool = True, per_domain: bool = False,
                         domain_temperatures=None) -> CalibrationResult:
    """Fit (or set) a checkpoint's temperature and write a calibrated copy; the original is never touched.

    Args:
        model: run folder (its best.safetensors), ``.safetensors`` checkpoint, or a bundled model's name.
        val_dir: labelled validation data (class folders or manifest): the temperature is fitted
            there, and NLL/ECE before and after are measured there. A list of several sets (domains:
            e.g. FER+ valid, held-out film faces, held-out lab faces) fits one temperature with every
            domain weighing the same, and reports NLL/ECE per domain (``result.domains``). A set with
            fewer classes than the model is scored among the classes it has.
        out: the calibrated checkpoint (default: :func:`default_output`); never the input itself.
        temperature: set this temperature instead of fitting one (``val_dir`` then only measures).
        overwrite: replace an existing ``out``.
        per_domain: also a temperature per ``val_dir`` set, the domain read from the face
            (:func:`fit_domain_temperature`); it then replaces the one temperature wherever ferkit
            computes probabilities. ``domain_temperatures``: those temperatures given, one per set
            (e.g. fitted on out-of-fold logits), instead of fitted on the sets themselves.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..files import write_safetensors
    from ..models import find_model
    from ..models.record import check_temperature

    if temperature is not None:
        temperature = check_temperature(temperature, "--temperature")
    if val_dir is None and temperature is None:
        raise FerkitError("give --val-dir to fit the temperature on validation data, or --temperature to set it")
    ckpt, record = find_model(model, onnx_advice="calibrate its checkpoint, then export that (the temperature goes "
                                                 "into the ONNX graph)")
    out = _check_output(Path(out) if out is not None else default_output(ckpt), ckpt, overwrite)

    result = CalibrationResult(temperature if temperature is not None else 1.0, record.temperature,
                               temperature is None, out, ckpt, classes=record.classes)
    sets = [] if val_dir is None else [val_dir] if isinstance(val_dir, (str, os.PathLike)) else list(val_dir)
    if (per_domain or domain_temperatures is not None) and len(sets) < 2:
        raise FerkitError("--per-domain needs two or more --val-dir sets, one per domain")
    if sets:
        parts = [_val_logits(ckpt, v, batch_size, precision, device, strict, progress, embed=per_domain)
                 for v in sets]
        _fit_and_measure(result, record, sets, parts, temperature is None, per_domain, domain_temperatures)
    calibration = {"method": ("temperature scaling, NLL minimised on validation data"
                              + (f" ({len(sets)} domains weighing the same)" if len(sets) > 1 else ""))
                   if result.fitted else "temperature set by hand", "source_checkpoint": ckpt.name,
                   "ferkit_version": __version__}
    if result.per_domain:
        calibration["per_domain"] = (f"a temperature per domain ({', '.join(result.per_domain['domains'])}), "
                                     + ("given" if domain_temperatures is not None else "fitted on each set")
                                     + "; each face's domain read from its embedding by a logistic regression "
                                     "fitted on these sets; it replaces the one temperature")
    if sets:
        calibration.update(val_data=str(sets[0]) if len(sets) == 1 else [str(v) for v in sets], n=result.n,
                           ece_bins=ECE_BINS, before=result.before, after=result.after)
        if result.domains:
            calibration["domains"] = result.domains
    new_record = replace(record, temperature=result.temperature, calibration=calibration,
                         domain_temperature=result.per_domain)   # a new calibration replaces an old per-domain one
    # The weights are copied as stored (dtype and all); only the record changes.
    try:
        with safe_open(str(ckpt), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        tensors = load_file(str(ckpt), device="cpu")
    except Exception as exc:  # safetensors' own error types: a truncated or damaged file
        raise FerkitError(f"{ckpt}: cannot read weights ({str(exc).splitlines()[0][:120]})") from None
    meta["ferkit"] = json.dumps(new_record.to_json())
    write_safetensors(out, tensors, meta)
    return result


def _fit_and_measure(result: CalibrationResult, record, sets, parts, fit: bool, per_domain: bool,
                     domain_temperatures) -> None:
    """Fill ``result`` from each set's (logits, labels, record, embeddings): the temperature (fitted
    when ``fit``, every set weighing the same), the per-domain one, and the figures before/after."""
    logits = np.concatenate([z for z, *_ in parts])
    labels = np.concatenate([y for _, y, *_ in parts])
    weights = domain_weights(np.concatenate([np.full(len(y), i) for i, (_, y, *_) in enumerate(parts)]))
    result.n = len(labels)
    result.before = calibration_metrics(logits, labels, record.temperature)
    if fit:
        result.temperature = fit_temperature(logits, labels, weights=None if len(sets) == 1 else weights)
    result.after = calibration_metrics(logits, labels, result.temperature)
    if per_domain:
        result.per_domain = fit_domain_temperature([_domain_name(v) for v in sets], [e for *_, e in parts],
                                                   [z for z, *_ in parts], [y for _, y, *_ in parts],
                                                   domain_temperatures)
    if len(sets) > 1:
        result.domains = [{"val_data": str(v), "n": len(y), "before": calibration_metrics(z, y, record.temperature),
                           "after": _after(z, y, e, result)} for v, (z, y, _, e) in zip(sets, parts)]


def _domain_name(path) -> str:
    """A domain's name from its folder: ``sfew-train``, or ``ferplus/valid`` where the last part is a split."""
    p = Path(path)
    name = p.stem if p.suffix.lower() == ".csv" else p.name
    return f"{p.parent.name}/{name}" if name.lower() in ("train", "valid", "validation", "val", "test") else name


def _after(logits, labels, emb, result: CalibrationResult) -> dict:
    """A domain's figures after calibration: with the per-domain temperature where there is one."""
    if not result.per_domain:
        return calibration_metrics(logits, labels, result.temperature)
    import torch

    from ..models.domain_temperature import DomainTemperature

    with torch.no_grad():
        t = DomainTemperature(result.per_domain)(torch.from_numpy(emb)).numpy()
    return {**calibration_metrics(logits / t[:, None], labels), "temperature": float(t.mean())}


def describe(r: CalibrationResult) -> list[str]:
    """The lines ``ferkit calibrate`` prints."""
    lines = []
    how = (f"fitted on {r.n} faces" if r.fitted else "set by hand") + f": temperature {r.temperature:.4f}"
    lines.append(how + (f" (was {r.previous_temperature:.4g})" if r.previous_temperature != 1.0 else ""))
    if r.before:
        lines.append(f"{'':8s}{'NLL':>8s}{'ECE':>8s}{'mean conf':>11s}{'accuracy':>10s}   ({ECE_BINS} bins)")
        for name, m in (("before", r.before), ("after", r.after)):
            lines.append(f"{name:8s}{m['nll']:8.4f}{m['ece']:8.4f}{m['mean_confidence']:11.4f}{m['accuracy']:10.4f}"
                         f"   (temperature {m['temperature']:.4g})")
    if r.per_domain:
        pd = r.per_domain
        lines.append("per-domain temperatures (the domain read from the face; they replace the one above): "
                     + ", ".join(f"{d} {t:.4f}" for d, t in zip(pd["domains"], pd["temperatures"]))
                     + f"; the reader names the right domain for {pd['reader_accuracy']:.1%} of these faces")
    for d in r.domains:
        lines.append(f"  {d['val_data']} ({d['n']} faces): ECE {d['before']['ece']:.4f} -> {d['after']['ece']:.4f}, "
                     f"NLL {d['before']['nll']:.4f} -> {d['after']['nll']:.4f}")
    lines.append(f"wrote {r.out} (weights as in {r.source}, which is unchanged)")
    return lines


__all__ = ["CALIBRATED_SUFFIX", "ECE_BINS", "TEMPERATURE_RANGE", "CalibrationResult", "calibrate_checkpoint",
           "calibration_metrics", "default_output", "describe", "domain_weights", "expected_calibration_error",
           "fit_domain_temperature", "fit_temperature",
           "log_softmax", "negative_log_likelihood", "plot_reliability", "reliability_table"]
