"""Matplotlib figures for run and comparison reports (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ATTR_NAMES = {"gender": ("women", "men"), "ethnicity": ("group 0", "group 1", "group 2")}


def plot_probe_results(rows: list[dict], path: Path, title: str = "") -> Path:
    """Balanced accuracy per layer, one panel per attribute, with 95% intervals and chance.

    rows: dicts with layer, attr, probe, bal_acc, bal_acc_ci_low, bal_acc_ci_high, chance.
    """
    attrs = sorted({r["attr"] for r in rows}, key=["gender", "ethnicity"].index)
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    probes = list(dict.fromkeys(r["probe"] for r in rows))
    fig, axes = plt.subplots(1, len(attrs), figsize=(5.2 * len(attrs), 3.8), squeeze=False)
    width = 0.8 / max(len(probes), 1)
    for ax, attr in zip(axes[0], attrs, strict=True):
        for j, probe in enumerate(probes):
            sel = {r["layer"]: r for r in rows if r["attr"] == attr and r["probe"] == probe}
            x = np.arange(len(layers)) + (j - (len(probes) - 1) / 2) * width
            y = np.array([sel[lay]["bal_acc"] if lay in sel else np.nan for lay in layers])
            lo = np.array([sel[lay]["bal_acc_ci_low"] if lay in sel else np.nan for lay in layers])
            hi = np.array([sel[lay]["bal_acc_ci_high"] if lay in sel else np.nan for lay in layers])
            ax.bar(x, y, width, label=f"{probe} probe", alpha=0.85)
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="none", ecolor="black", capsize=3)
        chance = next(r["chance"] for r in rows if r["attr"] == attr)
        ax.axhline(chance, color="red", linestyle="--", linewidth=1, label=f"chance {chance:.2f}")
        ax.set_xticks(np.arange(len(layers)), layers)
        ax.set_ylim(0, 1.2)  # headroom so the legend never hides a bar
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel("balanced accuracy (95% CI)")
        ax.set_title(f"{attr}: recoverable from each representation")
        ax.legend(fontsize=8, loc="upper center", ncol=3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scores_by_group(scores: np.ndarray, groups: dict[str, np.ndarray], path: Path,
                         threshold: float | None = None) -> Path:
    """Histogram of predicted scores for each group of each attribute (aggregates only)."""
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.4), squeeze=False)
    bins = np.linspace(0, 1, 26)
    for ax, (attr, g) in zip(axes[0], groups.items(), strict=True):
        names = ATTR_NAMES.get(attr, ())
        for v in sorted(set(g.tolist()) - {-1}):
            s = scores[g == v]
            label = names[v] if v < len(names) else str(v)
            ax.hist(s, bins=bins, alpha=0.5, density=True,
                    label=f"{label} (n={len(s)}, mean={s.mean():.3f})")
        if threshold is not None:
            ax.axvline(threshold, color="black", linestyle=":", label="invite threshold")
        ax.set_xlabel("predicted hireability")
        ax.set_title(f"test scores by {attr}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_tradeoff(runs: list[dict], metric: str, leakage: str, path: Path) -> Path:
    """One point per run: task metric (y) against leakage (x), with the probe's interval."""
    fig, ax = plt.subplots(figsize=(6, 4.4))
    exps = list(dict.fromkeys(r["_experiment"] for r in runs))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, exp in enumerate(exps):
        rs = [r for r in runs if r["_experiment"] == exp and metric in r and leakage in r]
        if not rs:
            continue
        x = np.array([r[leakage] for r in rs])
        y = np.array([r[metric] for r in rs])
        lo_key = leakage.replace("/bal_acc", "/bal_acc_ci_low")
        hi_key = leakage.replace("/bal_acc", "/bal_acc_ci_high")
        if all(lo_key in r and hi_key in r for r in rs) and lo_key != leakage:
            xerr = [x - np.array([r[lo_key] for r in rs]), np.array([r[hi_key] for r in rs]) - x]
        else:
            xerr = None
        ax.errorbar(x, y, xerr=xerr, fmt="o", color=colors[i % len(colors)], label=exp,
                    capsize=3, alpha=0.85)
    chance = next((r.get(leakage.replace("/bal_acc", "/chance")) for r in runs
                   if leakage.replace("/bal_acc", "/chance") in r), None)
    if chance is not None:
        ax.axvline(chance, color="red", linestyle="--", linewidth=1, label=f"chance {chance:.2f}")
    ax.set_xlabel(f"leakage: {leakage}  (lower is better)")
    ax.set_ylabel(f"task: {metric}  (higher is better)")
    ax.set_title("task metric against leakage, one point per run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
