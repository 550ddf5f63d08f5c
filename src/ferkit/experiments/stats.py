"""The study's statistics: a t quantile and 95% intervals of differences, paired by seed."""
from __future__ import annotations

import math

import numpy as np

_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t_quantile(df: float, q: float = 0.975) -> float:
    """Student-t quantile (scipy when importable; else a table for the 95% two-sided case)."""
    try:
        from scipy.stats import t
        return float(t.ppf(q, df))
    except ImportError:
        if q != 0.975:
            raise
        keys = sorted(_T975)
        below = [k for k in keys if k <= df]
        return _T975[below[-1]] if below else _T975[1] if df >= 1 else float("nan")


def diff_ci(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, float, str]:
    """Mean difference a - b with a 95% t-interval: paired by seed when >= 2 seeds match, else Welch."""
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        d = np.asarray([a[s] - b[s] for s in shared])
        half = t_quantile(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        return float(d.mean()), float(d.mean() - half), float(d.mean() + half), "paired"
    x, y = np.asarray(list(a.values())), np.asarray(list(b.values()))
    if len(x) == 0 or len(y) == 0:
        return float("nan"), float("nan"), float("nan"), "none"
    mean = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return mean, float("nan"), float("nan"), "none"
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        return mean, mean, mean, "welch"
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    half = t_quantile(df) * se
    return mean, mean - half, mean + half, "welch"


def format_ci(d: float, lo: float, hi: float) -> str:
    """A difference and its interval as the tables print it: "+0.0500 [+0.0100, +0.0900]"."""
    if isinstance(d, float) and math.isnan(d):
        return "–"
    if math.isnan(lo):
        return f"{d:+.4f}"
    return f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
