"""The leakage tables the docs show, built from run summaries in one place.

`make compare` (`fair_lightning.audit.report.compare`) and the real-face benchmark both
render them: per attribute, one row per group of runs (seeds pooled), every audited layer
at clip and person level, the invite decision's DP ratio and, for gender, r(score, merit)
where the data has a merit, the test r with the label and the variance of h the erasure
stage kept; then the CPU threads and the code of the runs ("unknown" for runs made before
those were recorded). Cells are mean ± std over runs with the worst run in brackets:
the highest leakage, the lowest DP ratio, r or kept variance.
"""

from __future__ import annotations

import math

import numpy as np

from data_modules.schema import SENSITIVE
from fair_lightning.models.scorer import BRANCHES, REPRESENTATIONS

LEVELS = ("clip", "person")
# h and what is read from it first, the modality branches last
LAYERS = (*(la for la in REPRESENTATIONS if la not in BRANCHES), *BRANCHES)
LAYER_WORDS = ("`fused`: h as trained, full width; `erased`: the erasure stage's output at h's "
               "width; `head`: the directions the refitted head reads; `score`: the score "
               "alone; `proxy`: the face embedding the adversary uses; `text`, `audio`, "
               "`video`: the branch outputs")


def stat(values, worst=max) -> str:
    """`mean ± std (worst)` over the finite values; one value alone; `–` for none."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f} ({worst(v):.3f})"


def merit_r(s: dict) -> float:
    """r(score, merit) on test clips: a benchmark's join with its truth, else the run's own
    (synthetic data); NaN where the data has no merit."""
    return s.get("realface/pearson_merit", s.get("test/pearson_merit", math.nan))


def audited_layers(runs, attr: str) -> list[str]:
    return [la for la in LAYERS if any(f"leak/{la}/{attr}/clip/bal_acc" in r for r in runs)]


def provenance(rs: list[dict]) -> tuple[str, str]:
    """The CPU threads and the code versions of a group's runs."""
    threads = sorted({str(r.get("setup/threads", "unknown")) for r in rs})
    code = sorted({str(r.get("setup/code", "unknown")).removeprefix("git ")[:12]
                   for r in rs})
    return ", ".join(threads), ", ".join(code)


def leakage_tables(groups: dict[str, list[dict]]) -> str:
    """Markdown: one table per attribute audited (gender always), rows = groups."""
    every = [r for rs in groups.values() for r in rs]
    out = []
    for attr in SENSITIVE:
        layers = audited_layers(every, attr)
        if attr != "gender" and not layers:
            continue
        head = ["run", "runs", *(f"{attr} `{la}` clip / person" for la in layers),
                f"{attr} DP ratio"]
        if attr == "gender":
            head += ["r(score, merit)", "test r(label)", "kept variance of h", "threads",
                     "code"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, rs in groups.items():
            row = [name, str(len(rs))]
            row += [" / ".join(stat([r.get(f"leak/{la}/{attr}/{lv}/bal_acc", math.nan)
                                     for r in rs]) for lv in LEVELS) for la in layers]
            row.append(stat([r.get(f"fair/{attr}/dp_ratio", math.nan) for r in rs], min))
            if attr == "gender":
                row += [stat([merit_r(r) for r in rs], min),
                        stat([r.get("test/pearson", math.nan) for r in rs], min),
                        stat([r.get("erase/kept_variance", math.nan) for r in rs], min),
                        *provenance(rs)]
            lines.append("| " + " | ".join(row) + " |")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def table_notes(chance: dict[str, float] | None = None) -> str:
    """What the cells are, under the tables."""
    chance = chance or {a: 1 / k for a, k in SENSITIVE.items()}
    return ("Balanced accuracy of the strongest attacker the audit selects, on test people "
            "(mean ± std over runs, worst run in brackets; for DP ratio, r and kept variance "
            f"the worst is the lowest). {LAYER_WORDS}. Chance: "
            + ", ".join(f"{a} {c:.3f}" for a, c in chance.items()) + ".\n")
