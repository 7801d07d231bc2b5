"""`make realface`: build the real-face corpus once, then train on it the way a user does.

Every run is `make train EXP=<experiment> ARGS="data.source=chalearn
data.chalearn.root=<corpus> seed=<s> output_dir=runs/realface/<run>-s<s> ..."`, so the
benchmark measures the product's own path (preprocessing, splits, training, erasure, audit).
Then it scores each run's `predictions.csv` against the corpus's `truth.csv` (the merit the
biased label hides) and writes, under the output folder:

* `results.json`: {"<run>-s<seed>": the run's flat summary.json + `run_dir`,
  `realface/pearson_merit` (test clips: r(score, the clip's true merit)), ...};
* `table.md`: per run, mean ± std over seeds with the worst seed, of gender at clip and
  person level on every audited layer, DP ratio, r(score, merit); and the label's own row.

* a proxy table (what each run's face proxy singles out, carries of each attribute, and
  explains of the label and of the true merit, joined from the run's `proxy.csv`), and a
  validation table (the end-of-fit audit on the validation people: what a default is
  chosen on).

`--population synthetic` trains the same runs on the embedded synthetic data (no corpus;
r(score, merit) is the run's own `test/pearson_merit`).

A finished run (summary.json present) is read, not rerun; an interrupted one resumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.realface.build import (
    BuildError,
    add_population_arguments,
    build,
    population_settings,
)
from data_modules.files import atomic_write, json_text
from data_modules.schema import SENSITIVE
from fair_lightning.audit.probes import pearson
from fair_lightning.audit.proxy_audit import MERIT_R_WARN
from fair_lightning.audit.tables import LEVELS, leakage_tables, stat, table_notes
from fair_lightning.models.proxy import proxy_width

# name -> (experiment, extra overrides): what RUNS may name
RUNS = {
    "baseline": ("baseline", []),
    "adversarial": ("adversarial", []),
    # the descriptor whole as the face proxy (the default before its leading directions)
    "adversarial-whole-proxy": ("adversarial", ["model.face_proxy_components=0"]),
    # the earlier proxy: the identity-pretrained encoder on Haar crops
    "adversarial-identity": ("adversarial", ["data.preprocess.detector=haar",
                                             "data.preprocess.face_embedding=none",
                                             "model.face_encoder=identity"]),
    # the upper references: they read the TRUE gender and ethnicity while training
    "label_adversary": ("label_adversary", []),
    "label_erasure": ("label_erasure", []),
    # the default's dependence objective and weight (read from adversarial.yaml, see
    # run_overrides), on the one-hot labels instead of the face
    "label_dependence": ("label_adversary", []),
    # the same term on the voice branch's output too, or on every branch: pressure where
    # gender enters h
    "label_dependence-audio": ("label_adversary",
                               ["adversary.dependence_layers=[fused,audio]"]),
    "label_dependence-branches": ("label_adversary",
                                  ["adversary.dependence_layers=[fused,text,audio,video]"]),
    # the proxy from what face and voice share across people (label-free), alone or beside
    # the face's leading directions
    "adversarial-cross-modal": ("adversarial", ["model.face_proxy=cross_modal"]),
    "adversarial-both-proxies": ("adversarial", ["model.face_proxy=both"]),
    "adversarial-cross-modal-branches": ("adversarial", [
        "model.face_proxy=cross_modal", "adversary.dependence_layers=[fused,text,audio,video]"]),
    # the same without LEACE after training (the head still refitted on h): what the
    # erasure stage costs merit, and whether the trained h alone removes as much
    "adversarial-cross-modal-branches-rank0": ("adversarial", [
        "model.face_proxy=cross_modal", "adversary.dependence_layers=[fused,text,audio,video]",
        "erasure.rank=0"]),
    # the face's directions shared with the words, or with voice and words joined
    "adversarial-cross-modal-text": ("adversarial", [
        "model.face_proxy=cross_modal", "model.face_proxy_partners=[text]"]),
    "adversarial-cross-modal-voice-text-branches": ("adversarial", [
        "model.face_proxy=cross_modal", "model.face_proxy_partners=[voice,text]",
        "adversary.dependence_layers=[fused,text,audio,video]"]),
    # the label-free default with the same pressure on the branches (face proxy target)
    "adversarial-audio": ("adversarial", ["adversary.dependence_layers=[fused,audio]"]),
    "adversarial-branches": ("adversarial",
                             ["adversary.dependence_layers=[fused,text,audio,video]"]),
    # the voice standardised per candidate over their own clips (label-free)
    "baseline-speaker-norm": ("baseline", ["data.speaker_norm=person"]),
    "adversarial-speaker-norm": ("adversarial", ["data.speaker_norm=person"]),
}
# the embedded synthetic data through the same runs (no corpus, no photographs): the third
# population a default is chosen on
SYNTHETIC = "synthetic"
DEFAULT_RUNS = ("baseline", "adversarial", "label_adversary", "label_erasure", "label_dependence")


def read_truth(root: Path) -> dict[str, dict]:
    with open(root / "truth.csv", newline="", encoding="utf-8") as f:
        return {r["clip"]: r for r in csv.DictReader(f)}


def read_predictions(run_dir: Path) -> dict[str, float]:
    path = run_dir / "predictions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run wrote no test predictions")
    with open(path, newline="", encoding="utf-8") as f:
        return {r["clip_id"]: float(r["score"]) for r in csv.DictReader(f)}


def merit_figures(pred: dict[str, float], truth: dict[str, dict]) -> dict[str, float]:
    """r(score, merit) on the run's test clips: the clip's true merit, and the person's."""
    missing = sorted(set(pred) - set(truth))
    if missing:
        raise ValueError(f"{len(missing)} predicted clips are not in truth.csv "
                         f"(e.g. {missing[0]}): predictions from another corpus?")
    clips = sorted(pred)
    score = [pred[c] for c in clips]
    return {"realface/pearson_merit": pearson(score, [float(truth[c]["merit_clip"])
                                                      for c in clips]),
            "realface/pearson_person_merit": pearson(score, [float(truth[c]["merit"])
                                                             for c in clips]),
            "realface/test_clips": len(clips)}


def proxy_merit_figures(run_dir: Path, truth: dict[str, dict]) -> dict[str, float]:
    """The run's face proxy against the corpus's true merit (`proxy.csv`, written by the
    run's test audit): the held-out r of its best linear read-out of a clip's merit, fitted on
    the audit's fit split, scored on the test people. Empty for a run with no proxy."""
    from fair_lightning.audit.proxy_audit import read_proxy_csv, task_readout

    path = run_dir / "proxy.csv"
    if not path.is_file():
        return {}
    splits = list(read_proxy_csv(path).values())
    fit, ev = splits[0], splits[-1]
    missing = sorted(c for part in (fit, ev) for c in part["clip_id"] if c not in truth)
    if missing:
        raise ValueError(f"{path}: {len(missing)} clips are not in truth.csv (e.g. {missing[0]})")

    def merit(part):
        return [float(truth[c]["merit_clip"]) for c in part["clip_id"]]

    r = task_readout(fit["proxy"], merit(fit), fit["identity"], ev["proxy"], merit(ev))
    return {"proxy/merit_r": r, "proxy/explains_merit": float(r > MERIT_R_WARN)}


def label_reference(test_clips: list[str], truth: dict[str, dict], seed: int = 0) -> dict:
    """The biased label itself, on the same test clips: r(label, merit) and gender read from
    the label alone (a linear attacker fitted on every other person's clips, scored on the
    test people): the floor a score that copies the label would sit at."""
    from fair_lightning.audit.probes import AttackSuite

    ev = sorted(test_clips)
    # fit on the other people (a test person's clip skipped at preprocessing stays out too)
    test_people = {truth[c]["person"] for c in ev}
    fit = [c for c in truth if truth[c]["person"] not in test_people]

    def arrays(clips):
        return (np.array([[float(truth[c]["label"])] for c in clips]),
                np.array([int(truth[c]["gender"]) for c in clips]),
                np.array([truth[c]["person"] for c in clips]))

    suite = AttackSuite(2, families=("linear",), person_level=True, cv_folds=4,
                        seed=seed).fit(*arrays(fit))
    res = suite.evaluate(*arrays(ev), bootstrap=0)
    out = {f"label/gender/{lv}/bal_acc": res.leak[lv].bal_acc for lv in LEVELS if lv in res.leak}
    out["label/pearson_merit"] = pearson([float(truth[c]["label"]) for c in ev],
                                         [float(truth[c]["merit_clip"]) for c in ev])
    # what the invite decision's DP ratio is when the true merit (or the label) is the score:
    # a score faithful to merit cannot do better on these few people
    from fair_lightning.audit.fairness import output_fairness

    gender = np.array([int(truth[c]["gender"]) for c in ev])
    labels = np.array([float(truth[c]["label"]) for c in ev])
    for name in ("merit_clip", "label"):
        score = np.array([float(truth[c][name]) for c in ev])
        fair = output_fairness(score, labels, gender, top_q=0.3, num_groups=2)
        out[f"{name.split('_')[0]}/gender_dp_ratio"] = fair["dp_ratio"]
    return out


def run_settings(run_dir: Path) -> dict[str, str]:
    """What a run resolved (its config.yaml): the face proxy and the real-data settings."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    return {"config/face_encoder": str(cfg.model.face_encoder),
            "config/face_proxy": str(cfg.model.get("face_proxy", "leading")),
            "config/face_proxy_components": int(cfg.model.get("face_proxy_components", 0)),
            "config/detector": str(cfg.data.preprocess.detector),
            "config/speaker_norm": str(cfg.data.get("speaker_norm", "none")),
            "config/erasure": (f"rank {cfg.erasure.rank}, residual {cfg.erasure.residual}, "
                               f"head_dims {cfg.erasure.head_dims}"
                               if cfg.erasure.enabled else "off")}




def table(results: dict[str, dict], reference: dict | None, corpus: dict | None = None,
          one_photo: bool = False) -> str:
    """Markdown: per attribute audited, one row per run (seeds pooled); the label's row;
    the corpus and how long its build and each run took."""
    by_run: dict[str, list[dict]] = {}
    for name, r in results.items():
        by_run.setdefault(name.rsplit("-s", 1)[0], []).append(r)
    out = leakage_tables(by_run)
    if reference:
        out += ("\nThe label itself on the same test clips: gender read from the label "
                f"{reference.get('label/gender/clip/bal_acc', math.nan):.3f} (clip) / "
                f"{reference.get('label/gender/person/bal_acc', math.nan):.3f} (person), "
                f"r(label, merit) {reference['label/pearson_merit']:.3f}. Gender DP ratio of "
                f"the invite decision (top 30 %) with the true merit as the score "
                f"{reference.get('merit/gender_dp_ratio', math.nan):.3f}, with the label "
                f"{reference.get('label/gender_dp_ratio', math.nan):.3f}.\n")
    out += proxy_table(by_run, one_photo)
    out += validation_table(by_run)
    out += "\n" + table_notes({"gender": 0.5, "ethnicity": 1 / 3}).replace(
        "ethnicity 0.333.", "ethnicity 0.333 (ChaLearn's three groups).")
    if corpus:
        st = corpus["settings"]
        out += (f"\nCorpus: {corpus['people']} people ({st['strata']}), {corpus['clips']} clips, "
                f"{corpus['audio_seconds']:.0f} s of audio, built in "
                f"{corpus['build_seconds']:.0f} s.")
    times = [r["realface/run_seconds"] for r in results.values() if "realface/run_seconds" in r]
    if times:
        out += (f" Runs: {len(times)} timed, {np.mean(times):.0f} s each on average "
                f"({min(times):.0f}-{max(times):.0f} s), through `make train`.")
    fits = [r["time/fit_s"] for r in results.values() if "time/fit_s" in r]
    if fits:
        out += (f" Training with the end-of-fit audit: {np.mean(fits):.0f} s a run on average "
                f"(`time/fit_s`).")
    return out + ("\n" if corpus or results else "")


def validation_table(by_run: dict[str, list[dict]]) -> str:
    """What a default is chosen on: the end-of-fit audit of the validation people
    (`fit_leak/...`), the head's validation r with the label (`select/val_task`) and, where
    the data has it, with the true merit; mean ± std over seeds (worst seed)."""
    layers = [la for la in ("erased", "fused")
              if any(f"fit_leak/{la}/gender/clip/bal_acc" in r for rs in by_run.values()
                     for r in rs)]
    attrs = [a for a in SENSITIVE if any(f"fit_leak/fused/{a}/clip/bal_acc" in r
                                          for rs in by_run.values() for r in rs)]
    if not layers:
        return ""
    cols = [(la, a) for a in attrs for la in layers]
    head = ["run", "seeds", *(f"val {a} `{la}` clip / person" for la, a in cols),
            "val r(head, label)", "val r(head, merit)"]
    out = ["", "Validation (the end-of-fit audit on the validation people; what a default is "
           "chosen on):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, rs in by_run.items():
        row = [run, str(len(rs))]
        row += [" / ".join(stat([r.get(f"fit_leak/{la}/{a}/{lv}/bal_acc", math.nan)
                                  for r in rs]) for lv in LEVELS) for la, a in cols]
        row += [stat([r.get("select/val_task", math.nan) for r in rs], min),
                stat([r.get("erase/val_pearson_merit_after", r.get("val/pearson_merit",
                                                                      math.nan)) for r in rs],
                      min)]
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


PROXY_COLUMNS = (("proxy/retrieval", "retrieval"), ("proxy/setting_retrieval", "setting only"),
                 ("leak/proxy/gender/clip/bal_acc", "gender clip"),
                 ("leak/proxy/gender/person/bal_acc", "gender person"),
                 ("leak/proxy/ethnicity/clip/bal_acc", "ethnicity clip"),
                 ("proxy/label_r", "r(read-out, label)"), ("proxy/merit_r", "r(read-out, merit)"))


def one_photo_each(truth: dict[str, dict]) -> bool:
    """Whether every person's clips show one photograph (fairface-dev)."""
    photos: dict[str, set] = {}
    for r in truth.values():
        photos.setdefault(r["person"], set()).add(r["photo"])
    return all(len(p) == 1 for p in photos.values())


def proxy_table(by_run: dict[str, list[dict]], one_photo: bool = False) -> str:
    """What each run's face proxy stands for: whom it singles out, what the attacker suite
    reads of each attribute from it, and its share of the task (the held-out r of its best
    linear read-out of the label and of the true merit)."""
    rows = {run: rs for run, rs in by_run.items() if any("proxy/retrieval" in r for r in rs)}
    if not rows:
        return ""
    head = ["run", "proxy", "directions", *(name for _, name in PROXY_COLUMNS)]
    out = ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, rs in rows.items():
        k = rs[0].get("config/face_proxy_components", 0)
        kind = rs[0].get("config/face_proxy", "leading")
        cells = [run, f"{rs[0].get('config/face_encoder', '?')}, {kind}",
                 str(proxy_width(k, kind) if k else "all")]
        cells += [stat([r.get(key, math.nan) for r in rs]) for key, _ in PROXY_COLUMNS]
        out.append("| " + " | ".join(cells) + " |")
    note = ("\nThe face proxy on test people: `retrieval` is the share of clips whose nearest "
            "other clip shows the same person (`setting only`: the same from the colours "
            "around the face); gender and ethnicity are what the attacker suite reads from "
            "the proxy; the r columns are the held-out r of the proxy's best linear read-out "
            f"(above {MERIT_R_WARN} with merit a warning is due: such a proxy removes merit).")
    if one_photo:
        note += (" Each person here has one photograph, shown in all their clips, so any "
                 "face descriptor finds a person's other clips: retrieval says nothing here.")
    return "\n".join(out) + "\n" + note + "\n"


# what label_dependence takes from the label-free default, so the two stay one objective
DEFAULT_OBJECTIVE_KEYS = ("objective", "dependence_measure", "weight", "weight_schedule")


def run_overrides(run: str) -> list[str]:
    """A run's own keys; the label_dependence runs add the default experiment's objective
    settings."""
    args = list(RUNS[run][1])
    if run.startswith("label_dependence"):
        from fair_lightning.config import load_config

        adv = load_config("adversarial").adversary
        args += [f"adversary.{k}={adv[k]}" for k in DEFAULT_OBJECTIVE_KEYS]
    return args


def train_keys(run: str, seed: int, root: Path | None, out: Path, extra: list[str]) -> list[str]:
    """The run's keys on the corpus at `root`, or on the synthetic data (root None)."""
    args = run_overrides(run)
    data = [] if root is None else ["data.source=chalearn", f"data.chalearn.root={root}"]
    return [*data, f"seed={seed}", f"output_dir={out / f'{run}-s{seed}'}", "resume=auto",
            *args, *extra]


def train_command(run: str, seed: int, root: Path | None, out: Path,
                  extra: list[str]) -> list[str]:
    return [os.environ.get("MAKE", "make"), "--no-print-directory", "train",
            f"EXP={RUNS[run][0]}", f"ARGS={shlex.join(train_keys(run, seed, root, out, extra))}"]


# how a run is executed, not what it computes: a finished run made with other values is reused
RUN_ONLY_KEYS = ("data.preprocess.workers", "data.num_workers")
# what names a run's settings, not the settings: an experiment file renamed or re-described
# (the default moved into a file of its own) leaves its finished runs reusable
LABEL_KEYS = ("experiment", "description")


def stale_settings(run: str, run_dir: Path, keys: list[str]) -> list[str]:
    """The settings in which a finished run differs from what this command asks for."""
    from omegaconf import OmegaConf

    from fair_lightning.config import (
        config_differences,
        load_config,
        load_config_file,
        parse_overrides,
    )
    from fair_lightning.lightning.resume import MAY_CHANGE

    _, pairs = parse_overrides(keys)
    wanted = OmegaConf.to_container(load_config(RUNS[run][0], pairs), resolve=True)
    # a key added since the run takes today's default, as when the product reads it
    saved = OmegaConf.to_container(load_config_file(run_dir / "config.yaml"), resolve=True)
    return config_differences(saved, wanted, MAY_CHANGE + RUN_ONLY_KEYS + LABEL_KEYS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Real-face development benchmark: build the "
                                 "corpus, train through `make train`, tabulate.")
    ap.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), choices=sorted(RUNS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add_population_arguments(ap, more=(SYNTHETIC,))
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default runs/realface-<population>)")
    ap.add_argument("--args", default="", help="more key=value overrides for every run")
    a = ap.parse_args(argv)
    a.out = a.out or Path(f"runs/realface-{a.population}")
    root = truth = corpus = None
    if a.population != SYNTHETIC:
        photos, settings = population_settings(a)
        try:
            root = build(settings, photos, a.cache).resolve()
        except BuildError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        truth = read_truth(root)
        corpus = json.loads((root / "corpus.json").read_text())
    a.out.mkdir(parents=True, exist_ok=True)
    results_path = a.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    reference = None
    failed = []
    for run in a.runs:
        for seed in a.seeds:
            name = f"{run}-s{seed}"
            run_dir = a.out / name
            keys = train_keys(run, seed, root, a.out, shlex.split(a.args))
            took = results.get(name, {}).get("realface/run_seconds")
            if (run_dir / "summary.json").is_file():
                differ = stale_settings(run, run_dir, keys)
                if differ:
                    print(f"error: {run_dir} is a finished run made with other settings "
                          f"({'; '.join(differ[:4])}): remove it or choose another --out",
                          file=sys.stderr)
                    return 2
            else:
                cmd = train_command(run, seed, root, a.out, shlex.split(a.args))
                print(f"realface: {name}: {shlex.join(cmd)}", flush=True)
                t0 = time.time()
                with open(a.out / f"{name}.log", "w") as log:
                    rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
                if rc != 0:
                    print(f"realface: {name} failed (exit {rc}); see {a.out / f'{name}.log'}",
                          file=sys.stderr)
                    failed.append(name)
                    continue
                took = time.time() - t0
                print(f"realface: {name} done in {took:.0f} s", flush=True)
            summary = json.loads((run_dir / "summary.json").read_text())
            if took is not None:  # a run read again keeps the time it took when it ran
                summary["realface/run_seconds"] = round(took, 1)
            summary["run_dir"] = str(run_dir)
            summary.update(run_settings(run_dir))
            if truth is not None:  # synthetic runs score merit themselves (test/pearson_merit)
                pred = read_predictions(run_dir)
                summary.update(merit_figures(pred, truth))
                summary.update(proxy_merit_figures(run_dir, truth))
                if reference is None:
                    reference = label_reference(sorted(pred), truth)
            results[name] = summary
            atomic_write(results_path, json_text(results))
    chosen = {k: v for k, v in results.items() if k.rsplit("-s", 1)[0] in a.runs}
    atomic_write(a.out / "table.md", table(chosen, reference, corpus,
                                           truth is not None and one_photo_each(truth)))
    print((a.out / "table.md").read_text())
    print(f"realface: {results_path}, {a.out / 'table.md'}")
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
