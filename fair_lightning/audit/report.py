"""Human-readable reports: one run (report.md + plots), a comparison of several runs
(comparison.md, comparison.csv, tradeoff.png) and a sweep's Pareto front; the command line
is `fair_lightning.cli.report`."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np

from data_modules.files import atomic_write
from data_modules.schema import SENSITIVE
from fair_lightning.audit.fairness import ScoreGroups
from fair_lightning.models.scorer import REPRESENTATIONS

LAYERS = REPRESENTATIONS  # the audited layers, in the report's order
TASK_KEYS = ("test/pearson", "test/pearson_merit", "test/mae", "test/r2")


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _ci(s: dict, base: str) -> str:
    v = s.get(f"{base}/bal_acc")
    if v is None:
        return "–"
    return f"{v:.3f} [{s[f'{base}/bal_acc_ci_low']:.3f}, {s[f'{base}/bal_acc_ci_high']:.3f}]"


FAMILY_NAMES = {"linear": "ridge (linear)", "kernel": "RBF kernel ridge", "mlp": "MLP",
                "svm": "RBF SVM"}


def leakage_section(s: dict, families=("linear", "kernel")) -> list[str]:
    """The attacker-suite tables of a summary: selected leakage per layer, then every
    attacker on h."""
    names = ", ".join(FAMILY_NAMES.get(f, f) for f in families)
    lines = ["", "## Leakage: the strongest selected attacker",
             "", "Balanced accuracy on the identity-disjoint test split, with a 95% bootstrap "
             "interval over people. At each level the attacker is the one that grouped "
             "cross-validation on the training split ranked best among the attackers of the "
             f"families {names}, each with its hyperparameters tuned the same way; *person* "
             "attacks pool a person's clips (`person_vote_*`: the clip attacker's scores "
             "averaged over the person's clips; `person_mean_*`: trained on each person's mean "
             "representation). Chance is 0.500 for gender and 0.333 for ethnicity.", "",
             "| layer | gender, clip | gender, person | ethnicity, clip | ethnicity, person |",
             "|---|---|---|---|---|"]
    for layer in LAYERS:
        if f"leak/{layer}/gender/clip/bal_acc" not in s:
            continue
        cells = []
        for a in SENSITIVE:
            for level in ("clip", "person"):
                base = f"leak/{layer}/{a}/{level}"
                name = str(s.get(f"{base}/attacker", "")).split(" (")[0]
                cells.append(f"{_ci(s, base)} {name}".strip())
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    attackers = sorted({k.split("/")[3] for k in s if k.startswith("probe/fused/gender/")
                        and k.endswith("/cv_bal_acc")}, key=_attacker_order)
    if attackers:
        lines += ["", "### Every attacker on h (fused)", "",
                  "CV: balanced accuracy of grouped cross-validation on the training split, "
                  "which selects; test: the score on the test split, which is reported. "
                  "Hyperparameters: `leak/.../attacker` keys and the W&B table.", "",
                  "| attacker | gender CV | gender test | ethnicity CV | ethnicity test |",
                  "|---|---|---|---|---|"]
        for att in attackers:
            cells = []
            for a in SENSITIVE:
                base = f"probe/fused/{a}/{att}"
                cells += [_fmt(s.get(f"{base}/cv_bal_acc")), _ci(s, base)]
            lines.append(f"| {att} | " + " | ".join(cells) + " |")
    return lines


def _attacker_order(name: str) -> tuple[int, str]:
    return (name.startswith("person_") + name.startswith("person_mean_"), name)


def _data_lines(s: dict) -> list[str]:
    if "data/clips/train" not in s:  # runs made before these keys existed
        return []
    split = "/".join(str(s.get(f"data/clips/{x}")) for x in ("train", "val", "test"))
    people = "/".join(str(s.get(f"data/people/{x}")) for x in ("train", "val", "test"))
    lines = [f"- clips train/val/test: {split} (people {people}); skipped at preprocessing: "
             f"{s.get('data/skipped_clips', 0)}"]
    if s.get("data/shared_people"):
        lines.append(f"- **warning**: {s['data/shared_people']} people appear in more than one "
                     "split (ChaLearn's official splits), so test scores are partly on people "
                     "seen in training; the attackers left out "
                     f"{s.get('probe/shared_people_dropped', 0)} test people also in their fit "
                     "split")
    return lines


def _erasure_lines(cfg, s: dict) -> list[str]:
    e = cfg.get("erasure")
    if not e or not e.enabled:
        return []
    reads = (f"{e.head_dims} directions of the erased h (layer `head` below; `erased` is the "
             "erased h at full width)" if e.head_dims else
             "all of the erased h (layer `erased` below)")
    return [f"- erasure stage: proxy `{e.proxy}`, LEACE rank {e.rank}, residual "
            f"{'on' if e.residual else 'off'}, fitted on {e.fit_on}; the head reads {reads}; "
            f"kept {_fmt(s.get('erase/kept_variance'))} of h's variance; val Pearson "
            f"{_fmt(s.get('erase/val_pearson_before'))} -> "
            f"{_fmt(s.get('erase/val_pearson_after'))}"]


def _proxy_lines(cfg, s: dict) -> list[str]:
    """The face proxy's retrieval against the setting alone, what it carries of gender, and
    the attributes the audit could not score."""
    from fair_lightning.audit.proxy_audit import proxy_line, readout_line

    lines = []
    if "setup/face_proxy" in s:
        lines.append(f"- setup: face proxy `{s['setup/face_proxy']}`, face detector "
                     f"`{s['setup/detector']}`, speaker normalisation "
                     f"`{s['setup/speaker_norm']}`"
                     + (f", {s['setup/threads']} CPU threads" if "setup/threads" in s else "")
                     + (f", code {s['setup/code']}" if "setup/code" in s else ""))
    corr = [s[k] for k in sorted(s) if k.startswith("proxy/canonical_correlation_")]
    if corr:
        partners = " and ".join(cfg.model.get("face_proxy_partners", ["voice"]))
        lines.append(f"- face proxy: its directions shared with the {partners} across the "
                     f"training people, canonical correlations {', '.join(f'{c:.2f}' for c in corr)}")
    if "proxy/retrieval" in s:
        lines.append(f"- {proxy_line(s)}; gender read "
                     f"from it {_fmt(s.get('leak/proxy/gender/clip/bal_acc'))} per clip, "
                     f"{_fmt(s.get('leak/proxy/gender/person/bal_acc'))} per person")
    if line := readout_line(s):
        lines.append(f"- {'**warning**: ' if s.get('proxy/explains_merit') else ''}{line}")
    skipped = [k.rsplit("/", 1)[1] for k in s if k.startswith("leak/skipped/")]
    if skipped:
        lines.append(f"- **not scored**: {', '.join(skipped)} (too few annotated groups or "
                     "people in a split; see the run log)")
    refused = [k.rsplit("/", 1)[1] for k in s if k.startswith("leak/refused/")]
    if refused:
        lines.append(f"- **not scored**: layer(s) {', '.join(refused)}: constant up to "
                     "round-off (nothing left to read; an attacker would read rescaled noise)")
    return lines


def write_run_report(run_dir: Path, cfg, summary: dict, scores: ScoreGroups | None = None
                     ) -> Path:
    """report.md for one run, plus a scores-by-group plot of the test split's scores."""
    from fair_lightning.audit.plots import plot_scores_by_group

    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(exist_ok=True)
    if scores is not None:
        plot_scores_by_group(scores.score, scores.groups,
                             run_dir / "plots" / "test_scores_by_group.png",
                             cutoff=scores.cutoff, cutoff_label=scores.cutoff_label)
    plots = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    s = summary
    lines = [
        f"# Run report: {cfg.experiment}",
        "",
        f"{cfg.description}".strip() or "",
        "",
        f"- adversary: `{cfg.adversary.method}`"
        + (f" (objective `{cfg.adversary.objective}`, weight {cfg.adversary.weight}, "
           f"schedule `{cfg.adversary.weight_schedule}`, k_disc {cfg.adversary.k_disc})"
           if cfg.adversary.method != "none" else ""),
        *_erasure_lines(cfg, s),
        *_proxy_lines(cfg, s),
        f"- data: `{cfg.data.source}`, seed {cfg.seed}; epochs {s.get('train/epochs')}, "
        f"batches {s.get('train/batches')}, optimizer steps {s.get('train/optimizer_steps')}",
        f"- wall time: data {_fmt(s.get('time/data_s'), 1)} s, fit {_fmt(s.get('time/fit_s'), 1)} s, "
        f"total {_fmt(s.get('time/total_s'), 1)} s",
        *_data_lines(s),
        "",
        "## Task (test split)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    names = {"test/pearson": "Pearson r (label)", "test/pearson_merit": "Pearson r (merit, synthetic truth)",
             "test/mae": "MAE", "test/r2": "R²"}
    for k in TASK_KEYS:
        if k in s:
            lines.append(f"| {names[k]} | {_fmt(s[k])} |")
    if "test/mae" in s:
        lines.append(f"| 1 − MAE (ChaLearn mean accuracy) | {_fmt(1 - s['test/mae'])} |")
    if any(k.startswith("leak/") for k in s):
        lines += leakage_section(s, cfg.probe.attackers)
        people = [v for k, v in s.items() if k.startswith("leak/") and k.endswith("/person/n_eval")]
        if people and min(people) < cfg.probe.min_people:
            lines += ["", f"**Warning**: leakage was measured on {int(min(people))} people "
                      f"(fewer than probe.min_people = {cfg.probe.min_people}); one person moves "
                      f"balanced accuracy by about {100 / min(people):.0f} points, and the "
                      "intervals are wide."]
    if any(k.startswith("fair/") for k in s):
        lines += ["", "## Output fairness (test split)", "",
                  "Gaps are max − min over groups. DP: demographic-parity difference of the invite "
                  "decision; EO: equal-opportunity difference (TPR gap among qualified candidates)."
                  + (f" Invited: a score of at least {s['fair/invite_cutoff']:.6f} "
                     "(`fair/invite_cutoff`, the cut-off `make predict` applies to new clips)."
                     if "fair/invite_cutoff" in s else ""),
                  "", "| attribute | DP diff | DP ratio | EO diff | MAE gap | mean-score gap | score–gender r |",
                  "|---|---|---|---|---|---|---|"]
        for a in SENSITIVE:
            lines.append(f"| {a} | {_fmt(s.get(f'fair/{a}/dp_diff'))} | {_fmt(s.get(f'fair/{a}/dp_ratio'))} | "
                         f"{_fmt(s.get(f'fair/{a}/eo_diff'))} | {_fmt(s.get(f'fair/{a}/mae_gap'))} | "
                         f"{_fmt(s.get(f'fair/{a}/mean_score_gap'))} | "
                         f"{_fmt(s.get(f'fair/{a}/score_corr')) if a == 'gender' else '–'} |")
        hidden = {a: int(s.get(f"fair/{a}/groups_suppressed") or 0) for a in SENSITIVE}
        if any(hidden.values()):
            lines += ["", "Suppressed: " + ", ".join(f"{n} {a} group(s)" for a, n in
                                                      hidden.items() if n)
                      + f" with fewer than fairness.min_group_size = "
                      f"{cfg.fairness.min_group_size} people (their figures would describe "
                      "individuals; they are left out of the gaps and the plot)."]
    if "adv/test_d_acc" in s:
        lines += ["", "## Face discriminator (test split)", "",
                  f"accuracy {_fmt(s['adv/test_d_acc'])}, AUC {_fmt(s.get('adv/test_d_auc'))} "
                  "(positives: own faces; negatives: faces of other people). A low value is not "
                  "proof of removal; the probes above are the measure."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}](plots/{p})" for p in plots]
    path = run_dir / "report.md"
    atomic_write(path, "\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- comparison
def load_run(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no summary.json (did the run finish?)")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    name = run_dir.name
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(cfg_path)
        name = f"{cfg.get('experiment', name)}/s{cfg.get('seed', '?')}"
        summary["_experiment"] = str(cfg.get("experiment", name))
        summary["_attackers"] = list(OmegaConf.select(cfg, "probe.attackers") or [])
    else:
        summary["_experiment"] = name
    summary["_name"] = name
    summary["_dir"] = str(run_dir)
    return summary


# keys that say where or how fast, not what: runs that differ only in these saw the same data
_DATA_KEYS_IGNORED = ("data.batch_size", "data.num_workers", "data.cache_dir",
                      "data.derived_cache_dir", "data.preprocess.workers")
# how fast or where, not what: left out of a group's name
_SPEED_KEYS = ("probe.workers", "probe.device", "resume", "trainer.enable_progress_bar",
               "logger")
# keys that differ between the runs of any comparison by design
_RUN_KEYS_IGNORED = ("seed", "output_dir", "experiment", "description")


def runs_config_differences(run_dirs: list[Path]) -> tuple[list[str], list[str]]:
    """(data keys, other keys) whose values differ between the runs' config.yaml files."""
    from omegaconf import OmegaConf

    from fair_lightning.config import differing_keys

    differ = differing_keys([OmegaConf.to_container(OmegaConf.load(Path(d) / "config.yaml"))
                                 for d in run_dirs if (Path(d) / "config.yaml").is_file()])
    data = [k for k in differ if k.startswith("data.") and k not in _DATA_KEYS_IGNORED]
    other = [k for k in differ if not k.startswith("data.") and k not in _RUN_KEYS_IGNORED]
    return data, other


def group_labels(run_dirs: list[Path], runs: list[dict]) -> list[str]:
    """Each run's group: its experiment plus `key=value` for each setting whose values
    differ between that experiment's runs (seeds, output folders and how fast aside), so
    `adversarial` runs with two proxies form two groups."""
    from omegaconf import OmegaConf

    from fair_lightning.config import ConfigError, differing_keys, flat_config, load_config_file

    def settings(d: Path) -> dict:
        """The run's config, keys added since it was made at today's defaults."""
        path = Path(d) / "config.yaml"
        if not path.is_file():
            return {}
        try:
            return OmegaConf.to_container(load_config_file(path), resolve=True)
        except ConfigError:
            return OmegaConf.to_container(OmegaConf.load(path))

    configs = [settings(d) for d in run_dirs]
    flats = [flat_config(c) for c in configs]
    labels = []
    for r, flat in zip(runs, flats, strict=True):
        same = [c for c, rr in zip(configs, runs, strict=True)
                if rr["_experiment"] == r["_experiment"]]
        keys = differing_keys(same, _RUN_KEYS_IGNORED + _DATA_KEYS_IGNORED + _SPEED_KEYS)
        labels.append(" ".join([r["_experiment"], *(f"{k}={flat.get(k)}" for k in keys)]))
    return labels


def _csv_columns(runs: list[dict]) -> list[str]:
    """Every figure the tables read, for each run: leakage with its interval on every
    layer, the DP ratio and the task figures."""
    from fair_lightning.audit.tables import LAYERS, LEVELS

    cols = ["test/pearson", "test/pearson_merit", "realface/pearson_merit", "test/mae",
            "erase/kept_variance", "setup/threads", "setup/code"]
    for a in SENSITIVE:
        cols += [f"leak/{la}/{a}/{lv}/{k}" for la in LAYERS for lv in LEVELS
                 for k in ("bal_acc", "bal_acc_ci_low", "bal_acc_ci_high")]
        cols += [f"fair/{a}/{k}" for k in ("dp_ratio", "dp_diff", "eo_diff", "mae_gap")]
    cols.append("fair/gender/score_corr")
    return [c for c in cols if any(c in r for r in runs)]


def compare(run_dirs: list[Path], out_dir: Path, metric: str = "test/pearson_merit",
            leakage: str = "h", *, allow_mixed_data: bool = False) -> dict[str, Path]:
    """comparison.md (the leakage tables by group of runs, then by run), comparison.csv
    (every run's figures) and tradeoff.png (task against leakage; `leakage="h"`: gender in
    h at full width, clip level, the erased h where the run has an erasure stage)."""
    from fair_lightning.audit.plots import plot_tradeoff
    from fair_lightning.audit.tables import leakage_tables, table_notes

    unique = list(dict.fromkeys(Path(d).resolve() for d in run_dirs))
    if len(unique) < len(run_dirs):
        print(f"warning: {len(run_dirs) - len(unique)} run director(ies) given more than once; "
              "each run counts once", file=sys.stderr)
    data_keys, other_keys = runs_config_differences(unique)
    if data_keys and not allow_mixed_data:
        raise ValueError(f"the runs were made on different data ({', '.join(data_keys)} "
                         "differ); their numbers are not comparable. Pass --allow-mixed-data "
                         "to compare them anyway")
    runs = [load_run(d) for d in unique]
    for r, label in zip(runs, group_labels(unique, runs), strict=True):
        r["_group"] = label
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["_group"], []).append(r)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols = _csv_columns(runs)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "group", "dir", *cols])
    for r in runs:
        w.writerow([r["_name"], r["_group"], r["_dir"], *[r.get(c, "") for c in cols]])
    atomic_write(out_dir / "comparison.csv", buf.getvalue())
    families = list(dict.fromkeys(f for r in runs for f in r.get("_attackers", [])))
    among = (f"among the families {', '.join(FAMILY_NAMES.get(f, f) for f in families)}"
             if families else "among the run's attacker families")
    lines = ["# Comparison", "",
             "The attacker is the one grouped cross-validation on the fit split selected "
             f"{among}, at clip level and at person level (pooling a person's clips); the DP "
             "ratio is the invite decision's (lowest group rate over highest).", "",
             *([f"**Warning**: the runs were made on different data ({', '.join(data_keys)}).",
                ""] if data_keys else []),
             *([f"Settings that differ between the runs (besides seed and experiment): "
                f"{', '.join(other_keys)}.", ""] if other_keys else []),
             "## By group", "", leakage_tables(groups), table_notes(),
             "## Runs", "", leakage_tables({r["_name"]: [r] for r in runs}),
             "![trade-off](tradeoff.png)", ""]
    atomic_write(out_dir / "comparison.md", "\n".join(lines))
    if leakage == "h":
        for r in runs:  # each run's h at full width: the erased h where there is one
            base = f"leak/{claim_layer(r)}/gender/clip"
            r.update({f"leak/h/gender/clip/{k}": r[f"{base}/{k}"] for k in
                      ("bal_acc", "bal_acc_ci_low", "bal_acc_ci_high", "chance")
                      if f"{base}/{k}" in r})
        leakage = "leak/h/gender/clip/bal_acc"
    plot_tradeoff([{**r, "_experiment": r["_group"]} for r in runs], metric, leakage,
                  out_dir / "tradeoff.png")
    return {"markdown": out_dir / "comparison.md", "csv": out_dir / "comparison.csv",
            "plot": out_dir / "tradeoff.png"}


def head_layer(summary: dict, prefix: str = "leak") -> str:
    """The representation the head reads: `head` (its few directions) when it reads a few,
    else all of h at full width (`claim_layer`)."""
    if f"{prefix}/head/gender/clip/bal_acc" in summary:
        return "head"
    return claim_layer(summary, prefix)


def worst_leak(summary: dict, prefix: str = "leak") -> float:
    """The largest balanced accuracy above chance on the representation the head reads,
    over attributes and levels."""
    layer = head_layer(summary, prefix)
    gaps = [summary[f"{prefix}/{layer}/{a}/{lv}/bal_acc"] - summary[f"{prefix}/{layer}/{a}/{lv}/chance"]
            for a in SENSITIVE for lv in ("clip", "person")
            if f"{prefix}/{layer}/{a}/{lv}/bal_acc" in summary]
    return max(gaps) if gaps else math.nan


def claim_layer(summary: dict, prefix: str = "leak") -> str:
    """h at full width, where removal is judged: the erased h after an erasure stage,
    else h as trained."""
    return "erased" if f"{prefix}/erased/gender/clip/bal_acc" in summary else "fused"


def leak_excess(summary: dict, prefix: str = "leak") -> float:
    r"""Graded leakage of h at full width (`claim_layer`), in [0, 1]:

    .. math:: \frac{1}{|C|} \sum_{(a, \ell) \in C} \max\Big(0, \frac{b_{a,\ell} - c_a}{1 - c_a}\Big)

    over the cells C = {gender, ethnicity} x {clip, person} that were scored, b the selected
    attacker's balanced accuracy and c its chance level. 0: chance everywhere; 1: read
    perfectly everywhere. Unlike the worst cell it still ranks runs whose person level reads
    1.0: every cell moves it."""
    layer = claim_layer(summary, prefix)
    shares = []
    for a in SENSITIVE:
        for lv in ("clip", "person"):
            bal = summary.get(f"{prefix}/{layer}/{a}/{lv}/bal_acc")
            if bal is None or math.isnan(bal):
                continue
            chance = summary[f"{prefix}/{layer}/{a}/{lv}/chance"]
            shares.append(max(0.0, (bal - chance) / (1.0 - chance)))
    return sum(shares) / len(shares) if shares else math.nan


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (leak, task) points no other point beats on both (lower leak, higher
    task), ties included."""
    front = []
    for i, (li, ti) in enumerate(points):
        if not any((lj <= li and tj >= ti) and (lj < li or tj > ti)
                   for j, (lj, tj) in enumerate(points) if j != i):
            front.append(i)
    return front


def pareto_report(sweep_dir: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """A sweep's trials: the test front of task against leakage, every trial with its
    hyperparameters, and the configuration whose mean `select/score` over its seeds
    (validation only) is best, with its test numbers."""
    from fair_lightning.audit.plots import plot_pareto

    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir or sweep_dir / "pareto")
    trials = []
    for t in sorted(sweep_dir.glob("trial-*/trial.json")):
        info = json.loads(t.read_text())
        summary = t.parent / "summary.json"
        if info.get("state") == "finished" and summary.is_file():
            trials.append((info, json.loads(summary.read_text())))
    if not trials:
        raise FileNotFoundError(f"{sweep_dir}: no finished trial (trial-*/summary.json)")
    metric = ("test/pearson_merit" if all("test/pearson_merit" in s and
                                          not math.isnan(s["test/pearson_merit"])
                                          for _, s in trials) else "test/pearson")
    points = [{"name": i["name"], "task": s.get(metric, math.nan), "leak": worst_leak(s),
               "select": s.get("select/score", math.nan),
               "params": {k: v["value"] for k, v in i["config"].items()}, "summary": s}
              for i, s in trials]
    front = pareto_front([(p["leak"], p["task"]) for p in points])
    # selection is of a configuration, not of a seed: mean select/score over its seeds
    configs: dict[str, list[int]] = {}
    for i, p in enumerate(points):
        key = json.dumps({k: v for k, v in p["params"].items() if k != "seed"}, sort_keys=True)
        configs.setdefault(key, []).append(i)
    scored = {k: float(np.mean([points[i]["select"] for i in idx])) for k, idx in configs.items()
              if not any(math.isnan(points[i]["select"]) for i in idx)}
    best = max(scored, key=scored.get) if scored else None
    chosen = configs[best] if best else []
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_pareto(points, front, chosen, metric, out_dir / "pareto.png")
    keys = sorted({k for p in points for k in p["params"]})
    lines = [f"# Sweep {sweep_dir.name}: task against leakage", "",
             f"{len(points)} finished trial(s). Task: `{metric}` on test. Leakage: the worst "
             "balanced accuracy above chance on h (gender, ethnicity; clip and person level; "
             "the attacker suite's selected attacker) on test. The front holds the trials no "
             "other trial beats on both. Selection uses `select/score`, computed on validation "
             "data only.", ""]
    if chosen:
        mean = {k: float(np.mean([points[i][k] for i in chosen])) for k in ("task", "leak")}
        worst = max(points[i]["leak"] for i in chosen)
        lines += [f"**Selected on validation**: {best} (mean select/score {scored[best]:.3f} "
                  f"over {len(chosen)} seed(s): {', '.join(points[i]['name'] for i in chosen)})."
                  f" On test: {metric} {mean['task']:.3f}, worst leakage above chance "
                  f"{mean['leak']:.3f} on average and {worst:.3f} for its worst seed; on the "
                  f"front: {sum(i in front for i in chosen)} of its {len(chosen)} trial(s).", ""]
    lines += ["| trial | " + " | ".join(keys) + f" | {metric} | worst leak | select/score | "
              "front | selected |", "|---|" + "---|" * (len(keys) + 5)]
    for i, p in sorted(enumerate(points), key=lambda ip: ip[1]["leak"]):
        lines.append(f"| {p['name']} | " + " | ".join(str(p["params"].get(k, "")) for k in keys)
                     + f" | {_fmt(p['task'])} | {_fmt(p['leak'])} | {_fmt(p['select'])} | "
                     + ("yes" if i in front else "") + " | " + ("yes" if i in chosen else "")
                     + " |")
    lines += ["", "![pareto](pareto.png)", ""]
    atomic_write(out_dir / "pareto.md", "\n".join(lines))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial", *keys, metric, "worst_leak", "select_score", "front", "selected"])
    for i, p in enumerate(points):
        w.writerow([p["name"], *[p["params"].get(k, "") for k in keys], p["task"],
                    p["leak"], p["select"], i in front, i in chosen])
    atomic_write(out_dir / "pareto.csv", buf.getvalue())
    return {"markdown": out_dir / "pareto.md", "csv": out_dir / "pareto.csv", "plot": plot}
