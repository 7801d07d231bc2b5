"""One flat `summary.json` for a run and for an audit, built in one place.

Each callback with figures of its own declares them through `SummaryPart.summary()`; the
trainer's test metrics and the caller's parts (timings, setup, data) are added here, and
`finish` writes summary.json, the report and the W&B summary for both commands.
"""

from __future__ import annotations

import math
from pathlib import Path

SUMMARY_PREFIXES = ("test/", "probe/", "leak/", "fit_leak/", "fair/", "adv/test_", "time/",
                    "erase/", "proxy/")


class SummaryPart:
    """A callback that contributes figures to the summary: numbers (kept when their names
    start with one of `SUMMARY_PREFIXES`) and names (strings, e.g. the selected attacker)."""

    def summary(self) -> dict[str, float | str]:
        raise NotImplementedError


def flat_metrics(metrics: dict, prefixes: tuple[str, ...]) -> dict[str, float]:
    """Scalar metrics whose names start with one of `prefixes`, as plain floats."""
    out = {}
    for k, v in metrics.items():
        if not k.startswith(prefixes):
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        out[k] = f if math.isfinite(f) else float("nan")
    return dict(sorted(out.items()))


def collect_summary(trainer, test_results: list[dict], callbacks, *parts: dict
                    ) -> dict[str, float | str]:
    """The trainer's logged and test metrics, each `SummaryPart` callback's figures, then
    `parts` (the caller's own keys, taken as they are, later ones winning)."""
    metrics = dict(trainer.callback_metrics)
    for d in test_results or []:
        metrics.update(d)
    names = {}
    for cb in callbacks:
        if isinstance(cb, SummaryPart):
            for k, v in cb.summary().items():
                (names if isinstance(v, str) else metrics)[k] = v
    out = {**flat_metrics(metrics, SUMMARY_PREFIXES), **dict(sorted(names.items()))}
    for part in parts:
        out.update(part)
    return out


def finish(out_dir: Path, cfg, summary: dict, trainer, callbacks) -> None:
    """What a run and an audit both end with: summary.json, report.md (with the test scores
    by group from the fairness callback), and the W&B run closed with the summary."""
    from data_modules.files import atomic_write, json_text
    from fair_lightning.audit.report import write_run_report
    from fair_lightning.lightning.fairness import OutputFairnessCallback
    from fair_lightning.lightning.tracking import finish_wandb

    atomic_write(Path(out_dir) / "summary.json", json_text(summary))
    scores = next((cb.test_score_groups() for cb in callbacks
                   if isinstance(cb, OutputFairnessCallback)), None)
    write_run_report(out_dir, cfg, summary, scores)
    finish_wandb(trainer, summary, out_dir)
