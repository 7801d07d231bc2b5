"""What the figures show: read back from the matplotlib figure before it is saved."""

import json

import numpy as np
import pytest

from fair_lightning.audit import plots


@pytest.fixture
def figures(monkeypatch):
    """Every figure a plot function saves, kept open for the test to read."""
    kept = []

    def keep(fig, path):
        kept.append(fig)
        fig.savefig(path)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    yield kept
    for fig in kept:
        plots.plt.close(fig)


def test_score_plot_outlines_each_group_and_draws_the_invite_cut_off(figures, tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.2, 0.8, 300)
    groups = {"gender": rng.integers(0, 2, 300), "ethnicity": rng.integers(0, 3, 300)}
    plots.plot_scores_by_group(scores, groups, tmp_path / "s.png", cutoff=0.61,
                               cutoff_label="invite cut-off: top 30%")
    eth = figures[0].axes[1]
    # three outlined histograms, not filled bars that blend where they overlap
    outlines = [p for p in eth.patches if p.get_fill() is False]
    assert len(outlines) == 3 and not [p for p in eth.patches if p.get_fill()]
    assert len({tuple(p.get_edgecolor()) for p in outlines}) == 3
    texts = [t.get_text() for t in eth.get_legend().get_texts()]
    assert "invite cut-off: top 30% (0.610)" in texts
    cut = [ln for ln in eth.lines if ln.get_label().startswith("invite cut-off")]
    assert cut and cut[0].get_xdata()[0] == pytest.approx(0.61)
    # each group's mean as a line of its colour
    means = [ln for ln in eth.lines if ln.get_linestyle() == "--"]
    assert sorted(ln.get_xdata()[0] for ln in means) == pytest.approx(
        sorted(scores[groups["ethnicity"] == g].mean() for g in range(3)))


def test_axes_are_described_in_words():
    assert plots.describe_metric("leak/fused/gender/clip/bal_acc") == (
        "gender read from h, clip level (test balanced accuracy)")
    assert plots.describe_metric("fit_leak/erased/ethnicity/person/bal_acc") == (
        "ethnicity read from erased h, person level (val balanced accuracy)")
    assert plots.describe_metric("test/pearson_merit") == "test Pearson r with the true merit"
    assert plots.describe_metric("fair/gender/dp_ratio") == (
        "dp ratio of the invite decision by gender (test)")
    assert plots.describe_metric("custom/key") == "custom/key"


def test_tradeoff_and_pareto_points_are_named(figures, tmp_path):
    runs = [{"_experiment": e, "_name": f"{e}/s{s}", "test/pearson": 0.5 + 0.1 * s,
             "leak/fused/gender/clip/bal_acc": 0.6 + 0.05 * s}
            for e in ("baseline", "adversarial") for s in range(3)]
    plots.plot_tradeoff(runs, "test/pearson", "leak/fused/gender/clip/bal_acc",
                        tmp_path / "t.png")
    ax = figures[0].axes[0]
    assert "leak/" not in ax.get_xlabel() and "gender read from h" in ax.get_xlabel()
    assert "test Pearson r with the label" in ax.get_ylabel()
    assert sorted(t.get_text() for t in ax.texts) == sorted(["s0", "s1", "s2"] * 2)

    points = [{"name": f"trial-{i:03d}", "leak": 0.1 * i, "task": 0.3 + 0.05 * i}
              for i in range(1, 5)]
    plots.plot_pareto(points, [0, 3], [2], "test/pearson_merit", tmp_path / "p.png")
    ax = figures[1].axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "3", "4"]
    assert "true merit" in ax.get_ylabel()


def test_comparison_names_the_families_the_runs_used(tmp_path):
    from fair_lightning.audit.report import compare

    dirs = []
    for seed in (0, 1):
        d = tmp_path / f"r{seed}"
        d.mkdir()
        (d / "config.yaml").write_text(
            f"experiment: baseline\nseed: {seed}\nprobe:\n  attackers: [linear, svm]\n")
        (d / "summary.json").write_text(json.dumps(
            {"test/pearson": 0.5, "leak/fused/gender/clip/bal_acc": 0.7,
             "leak/fused/gender/clip/bal_acc_ci_low": 0.6,
             "leak/fused/gender/clip/bal_acc_ci_high": 0.8}))
        dirs.append(d)
    md = compare(dirs, tmp_path / "out", metric="test/pearson")["markdown"].read_text()
    assert "among the families ridge (linear), RBF SVM" in md
    assert "MLP" not in md
