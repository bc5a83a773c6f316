"""Differences between methods over seeds, with 95% confidence intervals.

Every method of an experiment sees the same labeled draw for a given seed (the
same `--seed`, the same images), so the honest test of "A beats B" is paired:
the per-seed difference A - B over the seeds both have, its mean and a Student
t interval (n - 1 degrees of freedom). When fewer than two seeds are shared, the
difference of the means gets a Welch interval instead, labelled unpaired.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # the t quantile, as stats.t.ppf (scipy.stats takes a second to import)

LEVEL = 0.95


def difference(a: pd.Series, b: pd.Series) -> dict:
    """Mean difference a - b and its 95% interval; `a` and `b` map seed -> value.

    Returns {"diff", "low", "high", "seeds", "kind"}: kind is "paired" (over the
    `seeds` shared seeds) or "unpaired" (Welch, when fewer than 2 seeds are shared);
    low/high are NaN when there is no spread to estimate (one run on a side).
    """
    a, b = a.dropna(), b.dropna()
    shared = a.index.intersection(b.index)
    if len(shared) >= 2:
        d = (a[shared] - b[shared]).to_numpy(dtype=float)
        half = stdtrit(len(d) - 1, 0.5 + LEVEL / 2) * d.std(ddof=1) / math.sqrt(len(d))
        return {"diff": float(d.mean()), "low": float(d.mean() - half), "high": float(d.mean() + half),
                "seeds": len(d), "kind": "paired"}
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "low": math.nan, "high": math.nan, "seeds": len(shared), "kind": "unpaired"}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "low": diff, "high": diff, "seeds": len(shared), "kind": "unpaired"}
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    half = stdtrit(dof, 0.5 + LEVEL / 2) * se
    return {"diff": diff, "low": diff - half, "high": diff + half, "seeds": len(shared), "kind": "unpaired"}


def best_of(diff: float, low: float, high: float, seeds, candidates: int) -> tuple[float, float]:
    """The interval of a paired difference whose side was picked as the best of `candidates` by
    its mean, widened so that all the candidates' intervals hold together (Bonferroni: each at
    level 1 - (1 - LEVEL) / candidates, the same t with `seeds` - 1 degrees of freedom): the
    picking cannot make a chance winner look sure. One candidate, or no interval: as it is."""
    if candidates <= 1 or not (np.isfinite(low) and np.isfinite(high)) or seeds is None or seeds < 2:
        return low, high
    dof = int(seeds) - 1
    widen = stdtrit(dof, 1 - (1 - LEVEL) / candidates / 2) / stdtrit(dof, 0.5 + LEVEL / 2)
    return diff - (diff - low) * widen, diff + (high - diff) * widen


def bound(value: float, scale: float = 1.0, digits: int = 1) -> str:
    """A signed number with enough decimals to show its sign: -0.04 is "-0.04", not "-0.0"."""
    v = value * scale
    while digits < 4 and v != 0 and round(abs(v), digits) == 0:
        digits += 1
    return f"{v:+.{digits}f}"


def excludes_zero(low: float, high: float) -> bool:
    return bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))
