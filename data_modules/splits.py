"""Identity-disjoint, stratified, seeded splits: every source assigns people with this."""

from __future__ import annotations

import numpy as np


def exact_counts(n: int, shares) -> np.ndarray:
    """Largest-remainder rounding of n * shares, summing exactly to n."""
    raw = np.asarray(shares, dtype=float) * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def stratified_split(gender, ethnicity, fractions, rng: np.random.Generator) -> np.ndarray:
    """Split index (0/1/2) per identity: exact sizes, each (g, e) stratum spread evenly.

    Unknown attributes (-1) form strata of their own.
    """
    gender, ethnicity = np.asarray(gender), np.asarray(ethnicity)
    n = len(gender)
    target = exact_counts(n, fractions)
    # An evenly interleaved label sequence with exactly `target` of each split ...
    seq = np.empty(n, dtype=int)
    taken = np.zeros(3, dtype=int)
    for r in range(n):
        deficit = (r + 1) * target / n - taken
        deficit[taken >= target] = -np.inf
        s = int(np.argmax(deficit))
        seq[r] = s
        taken[s] += 1
    # ... laid over identities shuffled, then grouped by stratum, so strata share splits.
    order = rng.permutation(n)
    stratum = (gender[order] + 1) * 4 + (ethnicity[order] + 1)
    order = order[np.argsort(stratum, kind="stable")]
    split = np.empty(n, dtype=int)
    split[order] = seq
    return split
