"""The study's outputs: runs.csv, table.csv/.md, accuracy_vs_k.png and summary.md."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..files import CsvDictWriter, atomic_path, save_figure, write_text
from .mix import _fmt_k
from .stats import diff_ci, format_ci

if TYPE_CHECKING:
    from .study import StudyConfig


@dataclass
class StudyResult:
    out: Path
    runs: list[dict]                  # one row per run (runs.csv)
    table: list[dict]                 # one row per setting (table.csv)
    best_k: dict                      # real-per-class ('all' or int) -> best k
    plateau_k: dict                   # real-per-class -> smallest k not significantly below the best
    trained: int = 0
    skipped: int = 0
    files: dict = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)  # best k per real size, as printed
    pending: list[str] = field(default_factory=list)  # runs not finished yet (other shards)

    def text(self, shard: str | None = None) -> str:
        """What ``ferkit study`` prints: the table and its summary, or, while runs of other shards
        are pending, what this shard (``shard``, "I/N") did."""
        if self.pending:
            return (f"shard {shard or '1/1'}: its runs are done ({self.trained} trained, {self.skipped} already "
                    f"finished); {len(self.pending)} run(s) of other shards remain")
        return "".join([self.files["table_md"].read_text(), *(line + "\n" for line in self.summary),
                        f"runs: {self.trained} trained, {self.skipped} already finished; results in {self.out} "
                        f"(summary.md, table.csv, table.md, accuracy_vs_k.png)"])


TABLE_FIELDS = ("real_per_class", "setting", "label", "source", "k", "gen_per_real", "seeds", "folds", "n_real",
                "n_synthetic", "n_train",
                "acc_mean", "acc_std", "f1_mean", "f1_std", "acc_diff", "acc_diff_ci_low", "acc_diff_ci_high",
                "f1_diff", "f1_diff_ci_low", "f1_diff_ci_high", "ci_method")
RUN_FIELDS = ("run_id", "fold", "real_per_class", "setting", "label", "source", "k", "gen_per_real", "seed", "n_real",
              "n_synthetic", "n_train", "duplicates", "accuracy", "macro_f1", "epochs", "best_epoch", "epochs_run",
              "train_seconds")


def _write_csv(path: Path, fields, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = CsvDictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (v if not isinstance(v, float) else f"{v:g}" if k in ("k", "gen_per_real")
                            else f"{v:.6f}") for k, v in r.items()})


def pair_key(run: dict) -> tuple:
    """What pairs two runs in the intervals: the seed, and the fold in a grouped study (else "")."""
    return (str(run.get("fold", "") or ""), int(run["seed"]))


def by_pair(runs: list[dict], setting: str, metric: str = "accuracy", real_per_class=None) -> dict[tuple, float]:
    """(fold, seed) -> ``metric`` of one setting's finished runs (at one real size, when given)."""
    return {pair_key(r): float(r[metric]) for r in runs
            if r["setting"] == setting and r.get(metric) not in (None, "")
            and (real_per_class is None or str(r["real_per_class"]) == str(real_per_class))}


def compare_settings(runs: list[dict], a: str, b: str, metric: str = "accuracy",
                     real_per_class=None) -> tuple[float, float, float, str]:
    """Mean difference ``a - b`` of two settings with its 95% interval, paired by (fold, seed): e.g.
    fine-tuning with generated faces against fine-tuning alone, which the table (against real only)
    does not show."""
    return diff_ci(by_pair(runs, a, metric, real_per_class), by_pair(runs, b, metric, real_per_class))


def aggregate(runs: list[dict]) -> list[dict]:
    """Per (real size, setting): mean/sd over seeds (and folds) and the difference to real only
    (95% CI, paired by seed, and fold in a grouped study)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if "accuracy" in r:
            groups.setdefault((r["real_per_class"], r["setting"]), []).append(r)
    table = []
    for (n, setting), rs in groups.items():
        ref = groups.get((n, "k0"), [])
        folds = {r.get("fold", "") for r in rs} - {"", None}
        row = {"real_per_class": n, "setting": setting, "label": rs[0]["label"], "source": rs[0].get("source", ""),
               "k": rs[0]["k"],
               "gen_per_real": rs[0]["gen_per_real"],
               "seeds": len({r["seed"] for r in rs}), "folds": len(folds) if folds else ""}
        for name in ("n_real", "n_synthetic", "n_train"):   # per run; the mean over folds, whose sizes differ
            row[name] = int(round(float(np.mean([r[name] for r in rs]))))
        for m, key in (("acc", "accuracy"), ("f1", "macro_f1")):
            vals = np.asarray([r[key] for r in rs], float)
            row[f"{m}_mean"] = float(vals.mean())
            row[f"{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            if setting == "k0" or not ref:
                row.update({f"{m}_diff": 0.0 if setting == "k0" else float("nan"),
                            f"{m}_diff_ci_low": float("nan"), f"{m}_diff_ci_high": float("nan")})
                method = ""
            else:
                d, lo, hi, method = diff_ci({pair_key(r): r[key] for r in rs}, {pair_key(r): r[key] for r in ref})
                row.update({f"{m}_diff": d, f"{m}_diff_ci_low": lo, f"{m}_diff_ci_high": hi})
        row["ci_method"] = method
        table.append(row)
    return table


def best_and_plateau(runs: list[dict], table: list[dict]) -> tuple[dict, dict, dict]:
    """Per real size (and generated-data source, when there are several: keys "n:source"): the k
    with the best mean accuracy (k0 and mixes), the smallest k whose accuracy is not significantly
    below the best (paired 95% CI of the difference reaches 0), and the best k versus augmentation
    (difference and CI)."""
    best, plateau, vs_aug = {}, {}, {}
    by_run = {}
    for r in runs:
        if "accuracy" in r:
            by_run.setdefault((r["real_per_class"], r["setting"]), {})[pair_key(r)] = r["accuracy"]
    sources = list(dict.fromkeys(t.get("source", "") for t in table if t.get("source")))
    groups = [(n, src) for n in dict.fromkeys(t["real_per_class"] for t in table) for src in (sources or [""])]
    for n, src in groups:
        key = n if len(sources) <= 1 else f"{n}:{src}"
        mixes = sorted((t for t in table if t["real_per_class"] == n and t["k"] != ""
                        and t.get("source", "") in ("", src)), key=lambda t: t["k"])
        if not mixes:
            continue
        top = max(mixes, key=lambda t: t["acc_mean"])
        n_key, n = n, key
        best[n] = top["k"]
        plateau[n] = top["k"]
        for t in mixes:
            if t["k"] >= top["k"]:
                break
            d, lo, hi, _ = diff_ci(by_run[(n_key, t["setting"])], by_run[(n_key, top["setting"])])
            if not math.isnan(hi) and hi >= 0:
                plateau[n] = t["k"]
                break
        if (n_key, "aug") in by_run:
            vs_aug[n] = diff_ci(by_run[(n_key, top["setting"])], by_run[(n_key, "aug")])
    return best, plateau, vs_aug


def _pm(mean, sd) -> str:
    return f"{mean:.4f} ± {sd:.4f}"


def _diff_cell(t: dict, metric: str) -> str:
    if t["setting"] == "k0":
        return "(reference)"
    return format_ci(t[f"{metric}_diff"], t[f"{metric}_diff_ci_low"], t[f"{metric}_diff_ci_high"])


def markdown_table(table: list[dict]) -> str:
    grouped = any(t.get("folds") for t in table)
    lines = ["| real/class | setting | images (real + gen) | accuracy | macro-F1 | Δ accuracy vs real only [95% CI] "
             f"| Δ macro-F1 [95% CI] | {'seeds x folds' if grouped else 'seeds'} |",
             "|---|---|---|---|---|---|---|---|"]
    for t in table:
        runs = f"{t['seeds']} x {t['folds']}" if t.get("folds") else f"{t['seeds']}"
        lines.append(f"| {t['real_per_class']} | {t['label']} | {t['n_real']} + {t['n_synthetic']} "
                     f"| {_pm(t['acc_mean'], t['acc_std'])} | {_pm(t['f1_mean'], t['f1_std'])} "
                     f"| {_diff_cell(t, 'acc')} | {_diff_cell(t, 'f1')} "
                     f"| {runs} |")
    return "\n".join(lines) + "\n"


def plot_study(table: list[dict], path: Path) -> None:
    """Accuracy vs k, one line per real size and source (error bars: sd over seeds); augmentation
    and generated-only as reference markers (a thin line: the augmentation baseline). With several
    sources, colour is the source and line style the real size."""
    from ..files import new_figure, prepare_matplotlib

    prepare_matplotlib()
    from matplotlib import rcParams

    fig = new_figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    sizes = list(dict.fromkeys(t["real_per_class"] for t in table))
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    sources = list(dict.fromkeys(t.get("source", "") for t in table if t.get("source")))
    styles = ["-", "--", ":", "-."]
    several = len(sources) > 1     # then colour tells the sources apart and line style the sizes
    named = list(dict.fromkeys(t["setting"] for t in table if t["k"] == "" and t["setting"] != "aug"
                               and not t["setting"].startswith("synth")))
    for i, n in enumerate(sizes):
        col = colors[i % len(colors)]
        ref_col = "0.3" if several else col
        rows = [t for t in table if t["real_per_class"] == n]
        for j, src in enumerate(sources or [""]):
            mixes = sorted((t for t in rows if t["k"] != "" and t.get("source", "") in ("", src)),
                           key=lambda t: t["k"])
            if mixes:
                ax.errorbar([t["k"] for t in mixes], [t["acc_mean"] for t in mixes],
                            yerr=[t["acc_std"] for t in mixes], marker="o", capsize=3,
                            color=colors[j % len(colors)] if several else col,
                            ls=styles[(i if several else j) % len(styles)],
                            label=f"real {n}/class + k x {src if several else 'generated'}")
        for t in rows:
            if t["setting"] == "aug":
                ax.errorbar([0], [t["acc_mean"]], yerr=[t["acc_std"]], marker="s", mfc="none", ms=9, capsize=3,
                            color=ref_col, ls="none", label=f"real {n}/class + augmentation")
                ax.axhline(t["acc_mean"], color=ref_col, ls=styles[i % len(styles)] if several else "--", lw=0.8,
                           alpha=0.6)
            elif t["k"] == "" and not t["setting"].startswith("synth"):   # a named arm (--arm)
                j = len(sources) + named.index(t["setting"])       # colours after the sources'
                ax.errorbar([t["gen_per_real"]], [t["acc_mean"]], yerr=[t["acc_std"]], marker="D", ms=7, capsize=3,
                            ls="none", color=colors[j % len(colors)], label=f"{t['label']} (n={n})")
            elif t["setting"].startswith("synth"):
                j = sources.index(t.get("source")) if several and t.get("source") in sources else 0
                ax.errorbar([t["gen_per_real"]], [t["acc_mean"]], yerr=[t["acc_std"]], marker="^", ms=8, capsize=3,
                            color=colors[j % len(colors)] if several else col, ls="none",
                            label=f"{t.get('source') if several else 'generated'} only "
                                  f"({t['n_synthetic']} images, n={n})")
    ax.set_xlabel("k (generated images per real image)")
    ax.set_ylabel("test accuracy")
    grouped = any(t.get("folds") for t in table)
    ax.set_title(f"Accuracy versus amount of generated data (mean ± sd over {'folds and ' if grouped else ''}seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def summarise(out: Path, runs: list[dict], cfg: StudyConfig | None = None) -> StudyResult:
    """Write runs.csv, table.csv/.md, accuracy_vs_k.png and summary.md from per-run results."""
    out = Path(out)
    table = aggregate(runs)
    best, plateau, vs_aug = best_and_plateau(runs, table)
    files = {"runs": out / "runs.csv", "table_csv": out / "table.csv", "table_md": out / "table.md",
             "plot": out / "accuracy_vs_k.png", "summary": out / "summary.md"}
    _write_csv(files["runs"], RUN_FIELDS, runs)
    _write_csv(files["table_csv"], TABLE_FIELDS, table)
    md = markdown_table(table)
    write_text(files["table_md"], md)
    if table:
        plot_study(table, files["plot"])
    lines = ["# Generated-data study", ""]
    if cfg is not None:
        data = (f"real: `{cfg.real_train}`, generated: {', '.join(f'`{s}`' for s in cfg.synthetic)}, "
                f"test: `{cfg.test}`") if not cfg.grouped else (
                f"real: `{cfg.real}` in "
                + (f"{cfg.folds} folds" if isinstance(cfg.folds, int) else f"the folds of `{cfg.folds}`")
                + f" with no group in two parts (groups: `{cfg.group_by}`; "
                f"validation: {cfg.val_fraction:g} of each fold's training groups), generated: "
                f"{', '.join(f'`{s}`' for s in cfg.synthetic)}; each fold tested on its own test groups")
        base = cfg.base
        lines += [f"{data}; recipe {cfg.recipe}, arch {base.arch}, lr {base.lr:g}, "
                  + (f"up to {base.epochs} epochs " if cfg.steps is None else
                     f"about {cfg.steps} optimiser steps per run (its epochs in runs.csv) ")
                  + "(patience "
                  f"{base.patience} on {base.monitor}), {cfg.seeds} seed(s); "
                  + ("accuracy on the real test set, mean ± sd over seeds; differences paired by seed."
                     if not cfg.grouped else "accuracy on each fold's test part, mean ± sd over folds and seeds; "
                     "differences paired by (fold, seed)."), ""]
    lines += [md, "## Best k", ""]
    best_lines = summary_lines(best, plateau, vs_aug)
    lines += best_lines
    write_text(files["summary"], "\n".join(lines) + "\n")
    return StudyResult(out, runs, table, best, plateau, files=files, summary=best_lines)


def summary_lines(best: dict, plateau: dict, vs_aug: dict) -> list[str]:
    lines = []
    for n, k in best.items():
        size, _, src = str(n).partition(":")
        s = f"- real {size}/class{', ' + src if src else ''}: best k = {_fmt_k(k)}"
        if plateau.get(n) == 0 and k != 0:
            s += ", but no k is significantly better than real only (k = 0)"
        elif plateau.get(n) is not None and plateau[n] != k:
            s += f"; beyond k = {_fmt_k(plateau[n])} more generated data gives no significant gain"
        elif k == 0:
            s += " (generated data did not help)"
        if n in vs_aug:
            d, lo, hi, _ = vs_aug[n]
            s += f"; versus augmentation: {format_ci(d, lo, hi)}"
        lines.append(s)
    return lines
