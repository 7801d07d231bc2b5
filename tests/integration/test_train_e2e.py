"""Entry points end to end on a tiny synthetic benchmark (real generator, real MiniLM)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fair_lightning.cli.train import main
from fair_lightning.config import load_config
from fair_lightning.experiment import run
from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    # one tiny benchmark for the whole module: generation is the slow part
    return tmp_path_factory.mktemp("cache")


def _cfg(tmp_path, cache, exp="baseline", **extra):
    ov = dict(tiny_overrides(tmp_path, **extra))
    ov["data.cache_dir"] = str(cache)
    return load_config(exp, list(ov.items()))


def test_adversarial_train_writes_a_complete_run_dir(tmp_path, shared_cache, capsys):
    ov = dict(tiny_overrides(tmp_path, **{"trainer.max_epochs": "2",
                                          "adversary.warmup_epochs": "1",
                                          "model.face_pretrain_epochs": "2"}))
    ov["data.cache_dir"] = str(shared_cache)
    assert main(["experiment=adversarial", *[f"{k}={v}" for k, v in ov.items()]]) == 0
    run_dir = Path(ov["output_dir"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"run dir: {run_dir.resolve()}"
    for f in ("config.yaml", "summary.json", "report.md", "csv/metrics.csv",
              "checkpoints/best.ckpt", "checkpoints/last.ckpt", "plots/probe_leakage.png",
              "plots/test_scores_by_group.png"):
        assert (run_dir / f).is_file(), f
    s = json.loads((run_dir / "summary.json").read_text())
    for k in ("test/pearson", "test/mae", "test/r2", "test/pearson_merit",
              "probe/fused/gender/kernel/bal_acc", "probe/fused/ethnicity/linear/bal_acc_ci_low",
              "probe/video/gender/person_vote_linear/cv_bal_acc",
              "probe/fused/gender/person_mean_kernel/bal_acc", "leak/fused/gender/clip/bal_acc",
              "leak/fused/ethnicity/person/bal_acc_ci_high", "fit_leak/fused/gender/clip/bal_acc",
              "probe/video/gender/linear/chance", "fair/gender/dp_diff", "fair/gender/eo_diff",
              "fair/ethnicity/mae_gap", "adv/test_d_auc", "adv/test_dependence"):
        assert k in s and isinstance(s[k], float), k
    assert s["probe/fused/gender/linear/chance"] == 0.5
    assert math.isclose(s["leak/fused/ethnicity/clip/chance"], 1 / 3)
    # the suite fitted at the end of fit served the test audit: same weights, same h
    # text, audio, video, fused, erased, head, score, proxy
    assert s["probe/suites_reused"] == 8 * 2
    assert s["probe/fit_representations_reused"] == 1.0  # the training split extracted once
    assert isinstance(s["leak/fused/gender/person/attacker"], str)
    k = load_config("adversarial", []).adversary.k_disc
    assert s["train/optimizer_steps"] == (k + 1) * s["train/batches"]  # k D steps + main step
    assert all("/" in k for k in s)
    assert all(isinstance(v, float) or k.endswith("/attacker") for k, v in s.items()
               if k.startswith(("probe/", "leak/")))
    # last.ckpt is the final epoch (Lightning's save_last alone would keep the best epoch's)
    import torch

    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    assert last["epoch"] == 1
    saved = load_config("adversarial", [])
    assert (run_dir / "config.yaml").read_text().count("method: indirect") == 1
    assert saved.adversary.method == "indirect"
    report = (run_dir / "report.md").read_text()
    assert "Leakage" in report and "| fused |" in report and "| erased |" in report
    assert "| head |" in report and "| proxy |" in report and "face proxy: held-out" in report
    assert "erasure stage: proxy `face`, LEACE rank 0" in report
    # the erasure stage: fitted on the final weights, written into the tested checkpoint,
    # and what the run scores with
    assert last["state_dict"]["erased_head.eraser.fitted"].item() is True
    assert last["state_dict"]["erased_head.basis"].shape == (32, 4)
    assert 0.0 < s["erase/kept_variance"] <= 1.0
    assert s["leak/erased/gender/clip/bal_acc"] >= 0.0
    # removal is judged on the erased h at full width, apart from what the head reads
    assert s["probe/erased/gender/linear/n_fit"] == s["probe/fused/gender/linear/n_fit"]
    assert s["leak/head/gender/clip/bal_acc"] >= 0.0 and s["leak/proxy/gender/clip/bal_acc"] >= 0
    assert 0.0 <= s["proxy/setting_retrieval"] <= 1.0 and 0.0 <= s["proxy/retrieval"] <= 1.0
    assert s["leak/score/gender/person/n_eval"] > 0
    assert s["select/val_task"] == s["erase/val_pearson_after"]
    # which proxy and settings produced the run, in words
    assert s["setup/face_proxy"] == "identity-pretrained encoder"
    assert s["setup/erasure"].startswith("proxy face, LEACE rank 0, residual off")
    import torch

    assert s["setup/threads"] == torch.get_num_threads()  # in-process: the test's own count
    assert f"{s['setup/threads']} CPU threads" in (run_dir / "report.md").read_text()
    assert s["setup/code"].startswith(("git ", "fair_lightning "))  # a checkout, or a wheel
    # the identity-pretrained face encoder: cached next to the data, frozen through training,
    # and restored from the checkpoint
    from fair_lightning.lightning.module import FairScorerModule

    assert 0.0 <= s["face_pretrain/heldout_retrieval_acc"] <= 1.0
    # derived from the data, kept apart from it: the data cache may be a read-only copy
    assert not list(Path(ov["data.cache_dir"]).rglob("*face_encoder*"))
    cached = list(Path(ov["data.derived_cache_dir"]).glob("synthetic-*/face_encoder-*.pt"))
    assert len(cached) == 1
    pre = torch.load(cached[0], weights_only=True)["state_dict"]
    restored = FairScorerModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt",
                                                     map_location="cpu").adversary.face_encoder
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in pre.items())
    assert not any(p.requires_grad for p in restored.parameters())


def check_proxy_share(run_dir: Path, s: dict, width: int) -> None:
    """The proxy's share of the task (read-outs of the label and of the synthetic merit) in
    the summary and the report, and proxy.csv: each audited clip's proxy, fit split and test."""
    from fair_lightning.audit.proxy_audit import read_proxy_csv
    from fair_lightning.config import load_config_file

    assert -1.0 <= s["proxy/label_r"] <= 1.0 and -1.0 <= s["proxy/merit_r"] <= 1.0
    assert s["proxy/explains_merit"] == float(s["proxy/merit_r"] > 0.2)
    assert f"r {s['proxy/merit_r']:.2f} with the true merit" in (run_dir / "report.md").read_text()
    saved = read_proxy_csv(run_dir / "proxy.csv")
    fit_split = load_config_file(run_dir / "config.yaml").probe.fit_split
    assert set(saved) == {fit_split, "test"} and saved["test"]["proxy"].shape[1] == width
    tested = {r.split(",")[0] for r in (run_dir / "predictions.csv").read_text().split()[1:]}
    assert set(saved["test"]["clip_id"]) == tested


def test_proxy_components_are_fitted_and_checkpointed(tmp_path, shared_cache):
    """`model.face_proxy_components`: fitted at the start of fit on the training split,
    written into the checkpoint, and what the audit's `proxy` layer and the summary
    describe."""
    import torch

    extra = {"model.face_proxy_components": "2", "model.face_pretrain_epochs": "1",
             "probe.layers": "[fused,proxy]", "probe.attackers": "[linear]",
             "probe.person_level": "false", "fairness.enabled": "false"}
    run_dir = run(_cfg(tmp_path, shared_cache, "adversarial", **extra))
    s = json.loads((run_dir / "summary.json").read_text())
    assert 0.0 < s["proxy/components_variance_share"] <= 1.0
    assert s["setup/face_proxy"] == ("identity-pretrained encoder, its 2 leading directions "
                                     "across people")
    assert s["probe/proxy/gender/linear/n_fit"] > 0
    check_proxy_share(run_dir, s, width=2)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)["state_dict"]
    assert state["adversary.components.is_fitted"].item() is True
    basis = state["adversary.components.basis"]
    assert basis.shape == (2, 32)
    # D matches h to the 2 numbers: [P z, f, P z * f] has 3 x 2 inputs
    assert state["adversary.discriminator.heads.0.mlp.0.weight"].shape[1] == 3 * 2


def test_a_cross_modal_proxy_is_fitted_on_face_and_voice_and_checkpointed(tmp_path, shared_cache):
    """`model.face_proxy=both`: the leading directions and those shared with voice and text
    are fitted at the start of fit, reported, checkpointed, and are what the dependence term
    and the audit's `proxy` layer read."""
    import torch

    extra = {"model.face_proxy": "both", "model.face_proxy_components": "1",
             "model.face_proxy_partners": "[voice,text]",
             "model.face_pretrain_epochs": "1", "probe.layers": "[fused,proxy]",
             "probe.attackers": "[linear]", "probe.person_level": "false",
             "fairness.enabled": "false"}
    run_dir = run(_cfg(tmp_path, shared_cache, "adversarial", **extra))
    s = json.loads((run_dir / "summary.json").read_text())
    assert 0.0 < s["proxy/components_variance_share"] <= 1.0
    assert 0.0 < s["proxy/canonical_correlation_1"] <= 1.0
    assert s["setup/face_proxy"].endswith("its 1 leading direction and 1 shared with the "
                                          "voice and text")
    report = (run_dir / "report.md").read_text()
    assert (f"shared with the voice and text across the training people, canonical "
            f"correlations {s['proxy/canonical_correlation_1']:.2f}" in report)
    assert s["probe/proxy/gender/linear/n_fit"] > 0
    check_proxy_share(run_dir, s, width=2)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)["state_dict"]
    assert state["adversary.components.basis"].shape == (2, 32)
    # erasure.rank auto: the proxy's whole width, 2 directions
    from fair_lightning.config import load_config_file

    assert load_config_file(run_dir / "config.yaml").erasure.rank == 2


def test_same_seed_same_result(tmp_path):
    """The first run generates the data (drawing from global RNGs), the second reads it."""
    cache = tmp_path / "own_cache"
    a = run(_cfg(tmp_path / "a", cache, **{"probe.enabled": "false"}))
    b = run(_cfg(tmp_path / "b", cache, **{"probe.enabled": "false"}))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["test/pearson"] == sb["test/pearson"] and sa["test/mae"] == sb["test/mae"]


def _wandb_inspect(run_dir: Path) -> tuple[dict, list[dict]]:
    """A W&B offline run as W&B itself reads it back: its summary view, and its records."""
    wandb = Path(sys.executable).parent / "wandb"
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, offline
    view = json.loads(subprocess.run([str(wandb), "leet", "inspect", "--summary", "--json",
                                      str(offline[0])], capture_output=True, text=True,
                                     check=True, timeout=120).stdout)
    out = subprocess.run([str(wandb), "leet", "inspect", "--json", str(offline[0])],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return view, [json.loads(line) for line in out.splitlines() if line.strip()]


def test_wandb_offline_without_credentials(tmp_path, shared_cache, monkeypatch):
    """No key, no netrc, no network: W&B writes an offline run and never prompts. What it
    holds: the run in its experiment's group, the data's cache key in its config, headline
    scalars (not one per attacker: those are in its leakage table), summary.json as a
    file, and with `log_model` the checkpoints as a model artifact. An audit of the run is
    a run of job type `audit` in the same group."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    cfg = _cfg(tmp_path, shared_cache, **{"logger.wandb.mode": "auto",
                                          "logger.wandb.log_model": "true"})
    run_dir = run(cfg)
    view, records = _wandb_inspect(run_dir)
    run_rec = next(r["run"] for r in records if r["type"] == "run")
    assert run_rec["job_type"] == "train" and run_rec["run_group"] == "baseline"
    assert run_rec["display_name"] == "baseline-run"
    assert view["config"]["data"]["cache_key"].startswith("synthetic-")
    assert (shared_cache / view["config"]["data"]["cache_key"] / "meta.json").is_file()
    charted = set(view["summary"])
    assert "leak/fused/gender/clip/bal_acc" in charted and "test/pearson" in charted
    assert {"fair/gender/score_corr", "val_fair/gender/dp_ratio"} <= charted
    assert {"probe/table", "probe/leakage_plot", "fit_probe/table"} <= charted
    assert not [k for k in charted if k.startswith(("probe/", "fit_probe/"))
                and not k.endswith(("/table", "/leakage_plot"))]
    assert not [k for k in charted if k.endswith(("_ci_low", "/chance", "/attacker"))]
    assert "fair/gender/mae/0" not in charted
    assert len(charted) < 150, len(charted)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "probe/fused/gender/linear/bal_acc" in summary  # the full figures stay here
    assert len(summary) > 3 * len(charted)
    assert "summary.json" in "\n".join(json.dumps(r) for r in records if r["type"] == "files")
    artifacts = [r["artifact"] for r in records if r["type"] == "artifact"]
    model = [a for a in artifacts if a.get("type") == "model"]
    assert model and any("last.ckpt" in json.dumps(a) or "model.ckpt" in json.dumps(a)
                         for a in model), artifacts

    from fair_lightning.experiment import audit

    out = audit(run_dir / "checkpoints" / "last.ckpt",
                [("logger.wandb.mode", "offline"), ("output_dir", str(tmp_path / "audit"))])
    _, records = _wandb_inspect(out)
    run_rec = next(r["run"] for r in records if r["type"] == "run")
    assert run_rec["job_type"] == "audit" and run_rec["run_group"] == "baseline"


def test_cli_errors_are_clear(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "fair_lightning.cli.train", *args],
                              capture_output=True, text=True, cwd=tmp_path, env=env)

    r = cli("experiment=nope")
    assert r.returncode == 2 and "available: adversarial, adversarial_cross_modal, baseline, face_discriminator, label_adversary" in r.stderr
    r = cli("trainer.max_epochs")
    assert r.returncode == 2 and "malformed override 'trainer.max_epochs'" in r.stderr
    r = cli("--help")
    assert r.returncode == 0 and "experiment=NAME" in r.stdout


def test_identity_face_encoder_needs_two_clips_per_person(tmp_path, capsys):
    ov = dict(tiny_overrides(tmp_path, **{"data.synthetic.clips_per_identity": "1"}))
    assert main(["experiment=adversarial", *[f"{k}={v}" for k, v in ov.items()]]) == 2
    err = capsys.readouterr().err
    assert "model.face_encoder=identity" in err and "at least two clips" in err


def test_corrupt_cached_shards_name_the_path(tmp_path, shared_cache, capsys):
    cfg = _cfg(tmp_path, shared_cache, **{"probe.enabled": "false"})
    run(cfg)  # make sure the cache exists
    from data_modules.datamodule import InterviewDataModule

    index = InterviewDataModule(cfg.data).split_dir("val") / "index.json"
    saved = index.read_text()
    args = ["experiment=baseline", *[f"{k}={v}" for k, v in tiny_overrides(tmp_path / "x")
                                     if k != "data.cache_dir"], f"data.cache_dir={shared_cache}"]
    try:
        index.write_text("garbage")
        capsys.readouterr()
        assert main(args) == 2
        assert f"corrupt shard index {index}" in capsys.readouterr().err
        index.unlink()
        assert main(args) == 2
        assert str(index.parent) in capsys.readouterr().err
    finally:
        index.write_text(saved)


def test_run_dir_resolution(tmp_path, monkeypatch):
    from fair_lightning.ops.runtime import RUN_DIR_ENV, resolve_run_dir

    monkeypatch.chdir(tmp_path)
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "SLURM_JOB_ID", RUN_DIR_ENV):
        monkeypatch.delenv(var, raising=False)
    a = resolve_run_dir(None, "exp")
    a.mkdir(parents=True)
    b = resolve_run_dir(None, "exp")
    assert a != b and a.parent == b.parent == (tmp_path / "runs" / "exp").resolve()
    assert resolve_run_dir("mine", "exp") == (tmp_path / "mine").resolve()
    # a DDP child takes the parent's directory; SLURM tasks agree on the job id
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_run_dir(None, "exp") == Path(os.environ[RUN_DIR_ENV])
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert resolve_run_dir(None, "exp").name == "slurm-77"


def test_a_bf16_mixed_run_completes_on_cpu(tmp_path, shared_cache):
    """The cluster files' precision, on CPU autocast (which casts matmul to bf16 as CUDA
    does): the adversarial step, the dependence term, the erasure stage and the audit."""
    cfg = _cfg(tmp_path, shared_cache, "adversarial", **{
        "trainer.precision": "bf16-mixed", "trainer.max_epochs": "2",
        "adversary.warmup_epochs": "1", "model.face_pretrain_epochs": "2"})
    run_dir = run(cfg)
    s = json.loads((run_dir / "summary.json").read_text())
    assert math.isfinite(s["test/pearson"])
    for layer in ("fused", "erased"):
        assert 0.0 <= s[f"leak/{layer}/gender/clip/bal_acc"] <= 1.0
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    col = rows[0].split(",").index("adv/val_dependence")
    vals = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert vals and all(math.isfinite(v) for v in vals)


def test_a_label_dependence_run_on_h_and_the_branches_logs_each_layer(tmp_path, shared_cache):
    """adversary.dependence_layers through the user's path: the label reference with the
    dependence objective on h and the voice branch trains, and each layer's value is logged
    beside their sum."""
    cfg = _cfg(tmp_path, shared_cache, "label_adversary", **{
        "adversary.objective": "dependence", "adversary.dependence_measure": "nocco",
        "adversary.dependence_layers": "[fused,audio]", "trainer.max_epochs": "2",
        "adversary.warmup_epochs": "1"})
    run_dir = run(cfg)
    s = json.loads((run_dir / "summary.json").read_text())
    assert math.isfinite(s["test/pearson"])
    header, *rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    cols = header.split(",")
    last = {}
    for r in rows:
        for name, v in zip(cols, r.split(","), strict=False):
            if v:
                last[name] = float(v)
    assert {"adv/val_dependence", "adv/val_dependence_fused", "adv/val_dependence_audio"} <= set(last)
    assert math.isclose(last["adv/val_dependence"],
                        last["adv/val_dependence_fused"] + last["adv/val_dependence_audio"],
                        rel_tol=1e-4)
