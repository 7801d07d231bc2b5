"""The docs' generated tables agree with the committed figures they are rendered from."""

from __future__ import annotations

import json

import pytest

from benchmarks import doc_tables


def test_every_generated_table_matches_its_committed_figures(capsys):
    assert doc_tables.main(["--check"]) == 0, capsys.readouterr().err


def test_a_table_that_drifts_from_its_figures_is_caught(tmp_path, monkeypatch):
    """A figure changed in the data (or a cell edited by hand) fails the check; `make
    results` writes the block back."""
    doc = tmp_path / "docs" / "results.md"
    doc.parent.mkdir()
    (tmp_path / "docs" / "results").mkdir()
    figures = {f"adversarial-s{s}": {"leak/fused/gender/clip/bal_acc": 0.6 + 0.1 * s,
                                     "leak/fused/gender/person/bal_acc": 0.7,
                                     "setup/threads": 2} for s in range(2)}
    (tmp_path / "docs" / "results" / "t.json").write_text(json.dumps(figures))
    table = doc_tables.Table("docs/results.md", "runs/none/results.json", ("adversarial",),
                             "make realface RUNS=adversarial")
    monkeypatch.setattr(doc_tables, "ROOT", tmp_path)
    monkeypatch.setattr(doc_tables, "DATA", tmp_path / "docs" / "results")
    monkeypatch.setattr(doc_tables, "TABLES", {"t": table})
    doc.write_text("before\n<!-- generated: t -->\nold\n<!-- /generated: t -->\nafter\n")
    assert doc_tables.main(["--check"]) == 1
    assert doc_tables.main([]) == 0  # no runs here: rendered from the committed figures
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n")
    assert "0.650 ± 0.071 (0.700) / 0.700 ± 0.000 (0.700)" in text
    assert "make realface RUNS=adversarial" in text
    assert doc_tables.main(["--check"]) == 0
    doc.write_text(text.replace("0.650 ± 0.071", "0.600 ± 0.071"))
    assert doc_tables.main(["--check"]) == 1
    doc.write_text("no block\n")
    assert doc_tables.main(["--check"]) == 1


def test_extract_keeps_the_figures_the_tables_read_only():
    results = {"adversarial-s0": {"leak/fused/gender/clip/bal_acc": 0.6, "run_dir": "/x",
                                  "probe/fused/gender/linear/bal_acc": 0.5,
                                  "fit_leak/erased/gender/person/bal_acc": 0.7,
                                  "proxy/merit_r": 0.1, "setup/code": "git abc"},
               "other-s0": {"leak/fused/gender/clip/bal_acc": 0.9}}
    table = doc_tables.Table("d.md", "r.json", ("adversarial",), "cmd")
    assert doc_tables.extract(table, results) == {"adversarial-s0": {
        "fit_leak/erased/gender/person/bal_acc": 0.7, "leak/fused/gender/clip/bal_acc": 0.6,
        "proxy/merit_r": 0.1, "setup/code": "git abc"}}


@pytest.mark.parametrize("name", sorted(doc_tables.TABLES))
def test_each_table_names_the_command_that_makes_its_runs(name):
    t = doc_tables.TABLES[name]
    assert t.command.startswith(("make realface POP=", "make seeds"))
    assert all(r in t.command for r in t.runs)


def test_the_choice_table_reads_validation_on_every_population():
    """Gender in h at full width on validation (the erased h where the run has one), mean
    over seeds, per population; the synthetic validation merit of the tested head."""
    def run(clip, person, merit=None, erased=True):
        layer = "erased" if erased else "fused"
        out = {f"fit_leak/{layer}/gender/clip/bal_acc": clip,
               f"fit_leak/{layer}/gender/person/bal_acc": person}
        if merit is not None:
            out["erase/val_pearson_merit_after"] = merit
        return out

    figures = {"proxies-fairface": {"adversarial-s0": run(0.8, 0.9), "adversarial-s1": run(0.6, 0.7)},
               "proxies-lfw": {"adversarial-s0": run(0.7, 0.75, erased=False)},
               "proxies-synthetic": {"adversarial-s0": run(0.5, 0.6, merit=0.7),
                                     "adversarial-s1": run(0.7, 0.6, merit=0.8)}}
    md = doc_tables.render_choice(figures)
    row = next(line for line in md.splitlines() if line.startswith("| `adversarial` |"))
    assert row == "| `adversarial` | 0.700 / 0.800 | 0.700 / 0.750 | 0.600 / 0.600 | 0.750 |"
    missing = next(line for line in md.splitlines() if line.startswith("| `adversarial-branches`"))
    assert missing.endswith("| – / – | – / – | – / – | – |")
