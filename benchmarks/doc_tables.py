"""`make results`: the docs' generated tables, from run directories to committed figures to
markdown.

Each table in `TABLES` names the runs it shows, the command that made them, and where
they are read from: a benchmark's output (`results.json`) or run directories
(`<dir>/<run>-s<seed>/summary.json`, as `make seeds` writes them). `make results`:

1. reads those runs' figures (the keys the tables use, nothing else) into
   `docs/results/<table>.json`, which is committed, for each table whose runs are present;
2. renders every table from its committed figures with the code that renders the
   benchmarks' own tables (`fair_lightning.audit.tables`, `benchmarks.realface.run`), and
   writes it into the docs between `<!-- generated: <table> -->` and
   `<!-- /generated: <table> -->`.

`--check` renders from the committed figures and fails where a doc's table differs: the
unit suite runs it, so prose and data cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "docs" / "results"
PROXY_RUNS = ("baseline", "adversarial", "adversarial-cross-modal", "adversarial-both-proxies",
              "adversarial-cross-modal-text", "adversarial-branches",
              "adversarial-cross-modal-branches",
              "adversarial-cross-modal-voice-text-branches",
              "adversarial-cross-modal-branches-rank0", "label_dependence",
              "label_dependence-branches", "label_erasure")


@dataclass(frozen=True)
class Row:
    """A row of a seeds table: the runs named `run`, read on one layer (`h`: h at full width,
    the erased h where the run has an erasure stage)."""

    label: str
    run: str
    layer: str = "h"


@dataclass(frozen=True)
class Table:
    doc: str  # the doc holding the table, relative to the checkout
    results: str  # a benchmark's results.json, or run directories: `<dir>/{run}-s*`
    runs: tuple[str, ...]  # the runs shown, in order
    command: str  # what made the runs
    one_photo: bool = False  # each person shows one photograph (retrieval says nothing)
    rows: tuple[Row, ...] = ()  # a seeds table's rows (a benchmark table shows every run)
    score_only: bool = False  # a seeds table's score-only columns

    @property
    def from_run_dirs(self) -> bool:
        return "{run}" in self.results


HARDER_RUNS = ("baseline", "adversarial", "label_erasure", "label_adversary",
               "label_dependence")
LABEL_RUNS = ("baseline", "label_dependence", "label_dependence-audio",
              "label_dependence-branches", "adversarial", "adversarial-audio",
              "adversarial-branches")


def realface_table(pop: str, runs: tuple[str, ...]) -> Table:
    """A real-face (or synthetic) benchmark table: the benchmark's results.json, its runs."""
    out = "synthetic-proxy" if pop == "synthetic" else f"realface-{pop}"
    return Table("docs/results.md", f"runs/{out}/results.json", runs,
                 f"make realface POP={pop} RUNS=\"{' '.join(runs)}\""
                 + (" REALFACE_OUT=runs/synthetic-proxy" if pop == "synthetic" else ""),
                 one_photo=pop == "fairface")


TABLES = {
    **{f"harder-{pop}": realface_table(pop, HARDER_RUNS) for pop in ("fairface", "lfw")},
    **{f"labels-{pop}": realface_table(pop, LABEL_RUNS) for pop in ("fairface", "lfw")},
    **{f"proxies-{pop}": realface_table(pop, PROXY_RUNS)
       for pop in ("fairface", "lfw", "synthetic")},
}
SEEDS_COMMAND = ("make seeds SEEDS=\"0 1 2 3 4\" EXPS=\"baseline adversarial\" "
                 "SEED_THREADS=2")
HEADLINE_ROWS = (
    Row("baseline (no adversary)", "baseline"),
    Row("`adversarial`, h at full width", "adversarial"),
    Row("`adversarial`, the directions the head reads (output fairness, not removal from h)",
        "adversarial", "head"))
TABLES["headline"] = Table("README.md", "runs/seeds/{run}-s*", ("baseline", "adversarial"),
                           SEEDS_COMMAND, rows=HEADLINE_ROWS)
TABLES["method"] = Table(
    "docs/results.md", "runs/seeds/{run}-s*",
    ("baseline", "adversarial", "baseline_erasure", "baseline_label_erasure"),
    SEEDS_COMMAND + "; then for each seed S: make audit CKPT=runs/seeds/baseline-sS/"
    "checkpoints/last.ckpt ARGS=\"erasure.enabled=true output_dir=runs/seeds/"
    "baseline_erasure-sS\" and ARGS=\"erasure.enabled=true erasure.proxy=labels "
    "erasure.rank=5 erasure.head_dims=0 output_dir=runs/seeds/baseline_label_erasure-sS\"",
    rows=(*HEADLINE_ROWS,
          Row("baseline + erasure stage (no adversary), what the head reads",
              "baseline_erasure", "head"),
          Row("LEACE of the true labels on the baseline (label reference), h at full width",
              "baseline_label_erasure")),
    score_only=True)
# the validation figures the default is chosen on, across the three populations' tables
CHOICE = "proxy-choice"
CHOICE_RUNS = ("adversarial", "adversarial-branches", "adversarial-cross-modal",
               "adversarial-both-proxies", "adversarial-cross-modal-text",
               "adversarial-cross-modal-branches",
               "adversarial-cross-modal-voice-text-branches",
               "adversarial-cross-modal-branches-rank0")
CHOICE_FROM = ("proxies-fairface", "proxies-lfw", "proxies-synthetic")
# what a table reads of a run's summary
KEEP = re.compile(r"^(leak/[a-z]+/[a-z]+/(clip|person)/bal_acc|fit_leak/(erased|fused)/[a-z]+/"
                  r"(clip|person)/bal_acc|fair/[a-z]+/dp_ratio|realface/pearson_merit|"
                  r"test/pearson|test/pearson_merit|erase/kept_variance|"
                  r"erase/val_pearson_merit_after|select/val_task|setup/threads|setup/code|"
                  r"proxy/(retrieval|setting_retrieval|label_r|merit_r)|"
                  r"config/(face_encoder|face_proxy|face_proxy_components))$")


def extract(table: Table, results: dict) -> dict[str, dict]:
    """`<run>-s<seed>` -> the figures the table reads, for the table's runs, in its order."""
    out = {}
    for run in table.runs:
        for name in sorted(k for k in results if k.rsplit("-s", 1)[0] == run):
            out[name] = {k: v for k, v in sorted(results[name].items()) if KEEP.match(k)}
    return out


def run_dir_figures(table: Table) -> dict[str, dict]:
    """`<run>-s<seed>` -> the figures the table reads, from each run directory's summary."""
    out = {}
    for run in table.runs:
        for summary in sorted(ROOT.glob(table.results.format(run=run) + "/summary.json")):
            name = summary.parent.name
            if name.rsplit("-s", 1)[0] == run:
                out[name] = {k: v for k, v in sorted(json.loads(summary.read_text()).items())
                             if KEEP.match(k)}
    return out


def render_rows(name: str, table: Table, figures: dict[str, dict]) -> str:
    """A seeds table: per row, merit r, gender and ethnicity on the row's layer at clip /
    person level (score alone too, where asked), the gender DP ratio; mean ± std over
    seeds with the worst seed; then the seeds, threads and code of the runs."""
    from fair_lightning.audit.tables import merit_r, provenance, stat

    def runs_of(run):
        return [f for k, f in sorted(figures.items()) if k.rsplit("-s", 1)[0] == run]

    def leak(rs, layer, attr):
        cells = []
        for lv in ("clip", "person"):
            vals = []
            for r in rs:
                la = layer
                if layer == "h":
                    la = "erased" if f"leak/erased/{attr}/{lv}/bal_acc" in r else "fused"
                vals.append(r.get(f"leak/{la}/{attr}/{lv}/bal_acc"))
            cells.append(stat(vals))
        return " / ".join(cells)

    head = ["run", "merit r", "gender, clip / person", "ethnicity, clip / person"]
    if table.score_only:
        head.append("score alone: gender, clip / person")
    head.append("gender DP ratio")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    every = []
    for row in table.rows:
        rs = runs_of(row.run)
        every += rs
        cells = [row.label, stat([merit_r(r) for r in rs], min), leak(rs, row.layer, "gender"),
                 leak(rs, row.layer, "ethnicity")]
        if table.score_only:
            cells.append(leak(rs, "score", "gender"))
        cells.append(stat([r.get("fair/gender/dp_ratio") for r in rs], min))
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({int(k.rsplit("-s", 1)[1]) for k in figures})
    threads, code = provenance(every)
    return (f"Made by `{table.command}`; figures in `docs/results/{name}.json`, rendered by "
            "`make results`.\n\n" + "\n".join(lines) + "\n\n"
            f"Seeds {', '.join(map(str, seeds))}; mean ± std (worst seed); threads: {threads}; "
            f"code: {code}.\n")


def render(name: str, table: Table, figures: dict[str, dict]) -> str:
    """The markdown block: the leakage tables, the proxy table, the validation table."""
    if table.rows:
        return render_rows(name, table, figures)
    from benchmarks.realface.run import proxy_table, validation_table
    from fair_lightning.audit.tables import leakage_tables, table_notes

    by_run: dict[str, list[dict]] = {run: [] for run in table.runs}  # the table's order
    for run_seed, figs in sorted(figures.items()):
        by_run.setdefault(run_seed.rsplit("-s", 1)[0], []).append(figs)
    by_run = {run: rs for run, rs in by_run.items() if rs}
    return (f"Made by `{table.command}`; figures in `docs/results/{name}.json`, rendered by "
            "`make results`.\n\n" + leakage_tables(by_run) + "\n" + table_notes()
            + proxy_table(by_run, table.one_photo) + validation_table(by_run))


def render_choice(figures: dict[str, dict[str, dict]]) -> str:
    """Per candidate: gender in h at full width on validation people (clip / person, mean
    over seeds) on each population, and the synthetic validation merit r of the score the
    run tests with (the erasure stage's refitted head)."""
    import math

    import numpy as np

    def mean(values) -> str:
        v = [x for x in values if x is not None and not math.isnan(x)]
        return f"{np.mean(v):.3f}" if v else "–"

    pops = [n.removeprefix("proxies-") for n in CHOICE_FROM]
    head = ["candidate", *(f"val gender in h, {p}" for p in pops), "synthetic val merit r"]
    lines = [f"Rendered by `make results` from `docs/results/{{{','.join(CHOICE_FROM)}}}.json` "
             "(validation people; h at full width: the erased h, clip / person; mean of the "
             "seeds).", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in CHOICE_RUNS:
        row = [f"`{run}`"]
        for name in CHOICE_FROM:
            rs = [f for k, f in figures.get(name, {}).items() if k.rsplit("-s", 1)[0] == run]
            layer = "erased" if any("fit_leak/erased/gender/clip/bal_acc" in r for r in rs) \
                else "fused"
            row.append(" / ".join(mean([r.get(f"fit_leak/{layer}/gender/{lv}/bal_acc")
                                        for r in rs]) for lv in ("clip", "person")))
        synthetic = [f for k, f in figures.get(CHOICE_FROM[-1], {}).items()
                     if k.rsplit("-s", 1)[0] == run]
        row.append(mean([r.get("erase/val_pearson_merit_after") for r in synthetic]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def block(name: str, body: str) -> str:
    return f"<!-- generated: {name} -->\n{body.strip()}\n<!-- /generated: {name} -->"


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"<!-- generated: {re.escape(name)} -->\n.*?<!-- /generated: "
                      rf"{re.escape(name)} -->", re.S)


def doc_block(text: str, name: str) -> str | None:
    m = _pattern(name).search(text)
    return m.group(0) if m else None


def _put(doc_name: str, name: str, body: str, check: bool) -> list[str]:
    """Write (or, checking, compare) one block of a doc; the problems found."""
    from data_modules.files import atomic_write

    doc = ROOT / doc_name
    text = doc.read_text()
    want, have = block(name, body), doc_block(text, name)
    if have is None:
        return [f"{doc_name} has no block `<!-- generated: {name} -->`"]
    if have != want:
        if check:
            return [f"{doc_name}: the table `{name}` differs from its figures in "
                    "docs/results/: run `make results`"]
        atomic_write(doc, text.replace(have, want))
        print(f"results: {doc_name}: `{name}` rewritten")
    return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="render from the committed figures only; exit 1 where a doc differs")
    a = ap.parse_args(argv)
    from data_modules.files import atomic_write, json_text

    bad = []
    for name, table in TABLES.items():
        data = DATA / f"{name}.json"
        source = ROOT / table.results
        figures = {}
        if not a.check and table.from_run_dirs:
            figures = run_dir_figures(table)
        elif not a.check and source.is_file():
            figures = extract(table, json.loads(source.read_text()))
        if figures:
            DATA.mkdir(parents=True, exist_ok=True)
            atomic_write(data, json_text(figures))
            print(f"results: {name}: {len(figures)} runs from {table.results}")
        if not data.is_file():
            print(f"results: {name}: no figures ({data.relative_to(ROOT)}): skipped")
            continue
        bad += _put(table.doc, name, render(name, table, json.loads(data.read_text())),
                    a.check)
    if all((DATA / f"{n}.json").is_file() for n in CHOICE_FROM):
        figures = {n: json.loads((DATA / f"{n}.json").read_text()) for n in CHOICE_FROM}
        bad += _put(TABLES[CHOICE_FROM[0]].doc, CHOICE, render_choice(figures), a.check)
    for line in bad:
        print(f"error: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
