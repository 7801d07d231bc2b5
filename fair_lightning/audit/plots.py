"""Matplotlib figures for run and comparison reports (Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data_modules.files import atomic_write  # noqa: E402

ATTR_NAMES = {"gender": ("women", "men"), "ethnicity": ("group 0", "group 1", "group 2")}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=Path(path).suffix[1:]))
    plt.close(fig)
    return path


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, title and legend of a task-against-leakage plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


def plot_probe_results(rows: list[dict], path: Path, title: str = "") -> Path:
    """Leakage per layer, one panel per attribute: for each level (clip, person) a bar for
    the attacker that cross-validation selected, with its 95% interval, and a dot for every
    other attacker of that level, so a reader sees how far the attackers disagree.

    rows: dicts with layer, attr, attacker, level, selected, bal_acc, bal_acc_ci_low,
    bal_acc_ci_high, chance (see `fair_lightning.audit.engine.AttackAudit`).
    """
    attrs = sorted({r["attr"] for r in rows}, key=["gender", "ethnicity"].index)
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    levels = [lv for lv in ("clip", "person") if any(r["level"] == lv for r in rows)]
    fig, axes = plt.subplots(1, len(attrs), figsize=(5.6 * len(attrs), 4.0), squeeze=False)
    width = 0.8 / max(len(levels), 1)
    colors = {"clip": "tab:blue", "person": "tab:orange"}
    for ax, attr in zip(axes[0], attrs, strict=True):
        for j, level in enumerate(levels):
            offset = (j - (len(levels) - 1) / 2) * width
            for i, layer in enumerate(layers):
                here = [r for r in rows if r["attr"] == attr and r["layer"] == layer
                        and r["level"] == level]
                sel = next((r for r in here if r["selected"]), None)
                if sel is None:
                    continue
                x = i + offset
                y = sel["bal_acc"]
                ax.bar(x, y, width, color=colors[level], alpha=0.85,
                       label=f"{level} level (selected attacker)" if i == 0 else None)
                if np.isfinite(sel["bal_acc_ci_low"]):
                    ax.errorbar(x, y, yerr=[[y - sel["bal_acc_ci_low"]],
                                            [sel["bal_acc_ci_high"] - y]],
                                fmt="none", ecolor="black", capsize=3)
                others = [r["bal_acc"] for r in here if not r["selected"]]
                # beside the interval, not on it
                ax.scatter(np.full(len(others), x + 0.3 * width), others, s=12, marker="D",
                           color="dimgray", zorder=3,
                           label="other attackers" if i == 0 and j == 0 else None)
        chance = next(r["chance"] for r in rows if r["attr"] == attr)
        ax.axhline(chance, color="red", linestyle="--", linewidth=1, label=f"chance {chance:.2f}")
        ax.set_xticks(np.arange(len(layers)), layers)
        ax.set_ylim(0, 1.25)  # headroom so the legend never hides a bar
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel("balanced accuracy (95% CI)")
        ax.set_title(f"{attr}: recoverable from each representation")
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_scores_by_group(scores: np.ndarray, groups: dict[str, np.ndarray], path: Path,
                         cutoff: float | None = None, cutoff_label: str = "invite cut-off"
                         ) -> Path:
    """Distribution of predicted scores for each group of each attribute (aggregates only):
    one outlined histogram per group, so three groups stay readable where filled bars
    would blend, its mean as a dashed line of its colour, and the invite cut-off."""
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.6), squeeze=False)
    lo, hi = (float(np.min(scores)), float(np.max(scores))) if len(scores) else (0.0, 1.0)
    pad = 0.05 * (hi - lo or 1.0)
    bins = np.linspace(min(lo - pad, 0.0), max(hi + pad, 1.0), 26)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (attr, g) in zip(axes[0], groups.items(), strict=True):
        names = ATTR_NAMES.get(attr, ())
        for v in sorted(set(g.tolist()) - {-1}):
            s = scores[g == v]
            label = names[v] if v < len(names) else str(v)
            color = colors[v % len(colors)]
            ax.hist(s, bins=bins, density=True, histtype="step", linewidth=1.8, color=color,
                    label=f"{label} (n={len(s)}, mean {s.mean():.3f})")
            ax.axvline(s.mean(), color=color, linestyle="--", linewidth=1)
        if cutoff is not None:
            ax.axvline(cutoff, color="black", linestyle=":", linewidth=1.5,
                       label=f"{cutoff_label} ({cutoff:.3f})")
        ax.set_xlabel("predicted hireability score")
        ax.set_ylabel("density")
        ax.set_title(f"test scores by {attr}")
        if any(v != -1 for v in set(g.tolist())):
            ax.legend(fontsize=7, loc="upper left")
        else:  # every group was unknown or too small to show (fairness.min_group_size)
            ax.text(0.5, 0.5, "no group large enough to show", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
    return _save(fig, path)


LAYER_WORDS = {"fused": "h", "erased": "erased h", "head": "the head's directions",
               "score": "the score", "proxy": "the face proxy",
               "h": "h at full width (erased where erased)"}


def describe_metric(key: str) -> str:
    """Words for a summary key on an axis: `leak/fused/gender/clip/bal_acc` -> `gender read
    from h, clip level (test balanced accuracy)`; unknown keys stay as they are."""
    parts = key.split("/")
    if len(parts) == 5 and parts[0] in ("leak", "fit_leak") and parts[4] == "bal_acc":
        split = "test" if parts[0] == "leak" else "val"
        where = LAYER_WORDS.get(parts[1], parts[1])
        return f"{parts[2]} read from {where}, {parts[3]} level ({split} balanced accuracy)"
    words = {"test/pearson": "test Pearson r with the label",
             "test/pearson_merit": "test Pearson r with the true merit",
             "test/mae": "test mean absolute error", "test/r2": "test R²"}
    if key in words:
        return words[key]
    if len(parts) == 3 and parts[0] == "fair":
        return f"{parts[2].replace('_', ' ')} of the invite decision by {parts[1]} (test)"
    return key


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
        for r, xi, yi in zip(rs, x, y, strict=True):
            ax.annotate(r["_name"].split("/")[-1], (xi, yi), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=colors[i % len(colors)])
    chance = next((r.get(leakage.replace("/bal_acc", "/chance")) for r in runs
                   if leakage.replace("/bal_acc", "/chance") in r), None)
    if chance is not None:
        ax.axvline(chance, color="red", linestyle="--", linewidth=1, label=f"chance {chance:.2f}")
    _label(ax, f"{describe_metric(leakage)}\n(lower is better)",
           f"{describe_metric(metric)}\n(higher is better)",
           "task against leakage, one point per run (95% interval)")
    return _save(fig, path)


def plot_pareto(points: list[dict], front: list[int], selected: list[int], metric: str,
                path: Path) -> Path:
    """Every trial (worst leakage above chance, task metric), the non-dominated front joined
    by a line, and the trials (seeds) of the configuration selection on validation picked."""
    fig, ax = plt.subplots(figsize=(6, 4.4))
    x = np.array([p["leak"] for p in points])
    y = np.array([p["task"] for p in points])
    ax.scatter(x, y, color="gray", alpha=0.7, label="trial")
    order = sorted(front, key=lambda i: x[i])
    ax.plot(x[order], y[order], "o-", color="tab:blue", label="front (test)")
    if selected:
        ax.scatter(x[selected], y[selected], marker="*", s=260, color="tab:orange",
                   zorder=3, label="selected on validation (its seeds)")
    for p, xi, yi in zip(points, x, y, strict=True):  # the trial number, as in pareto.md
        ax.annotate(p["name"].removeprefix("trial-").lstrip("0") or "0", (xi, yi),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    _label(ax, "worst leakage above chance on h, test (lower is better)",
           f"{describe_metric(metric)} (higher is better)",
           "sweep: task against leakage, each point a trial")
    return _save(fig, path)
