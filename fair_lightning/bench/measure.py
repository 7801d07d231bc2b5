"""`make bench`: what the framework, the adversary, the loader and the audit cost, as ratios
measured side by side in one run (these machines are shared and noisy: absolute times are
reported, never asserted), and memory against data size.

* overhead: samples/s of a module trained through the Trainer (its logging included, no
  validation or checkpoint) over a plain PyTorch loop doing the same steps on the same
  batches (`plain_epoch`); goal >= 0.90 for `adversarial`.
* adversary cost: each experiment's training epoch over `baseline`'s; goal <= 1.5.
* loader headroom: batches/s of the training loader alone (collation included) over the
  batches/s `adversarial` consumes, with 0 and 2 workers; goal >= 3.
* memory: peak RSS of building the shards and of a training run (1 epoch of
  `memory_batches` batches, then the full audits and test) at 1x and `memory_scale`x the
  benchmark, each in a fresh process; goal 10x / 1x <= 1.2 for training.
* audit: the audits of a default `adversarial` run (end of fit and test) over its training
  time, at 1x and each of `audit_scales` (10x: a full default run at 4,000 people);
  `fraction_of_training` counts both audits, `fit_end_fraction` the end-of-fit audit alone;
  goal <= 0.25. Also per epoch.
* growth: a training epoch and an end-of-fit audit at 1x, 2x, 4x the benchmark (with the
  face encoder trained alongside, `cnn`, so no size pays identity pretraining); the
  exponent of a power-law fit (1 = linear).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOALS = {"overhead/adversarial": (">=", 0.90), "adversary_cost/adversarial": ("<=", 1.5),
         "loader_headroom/workers_0": (">=", 3.0), "loader_headroom/workers_2": (">=", 3.0),
         "memory/train_ratio": ("<=", 1.2), "audit/fraction_of_training": ("<=", 0.25),
         "audit/fit_end_fraction": ("<=", 0.25), "audit/fraction_of_training_10x": ("<=", 0.25),
         "audit/fit_end_fraction_10x": ("<=", 0.25), "growth/audit_exponent": ("<=", 1.2),
         "erasure/fraction_of_training": ("<=", 0.05)}
ADVERSARIES = {"adversarial": [], "face_discriminator": [],
               "face_discriminator_k1": [("adversary.k_disc", "1")], "label_adversary": []}


def _overrides(cache: str, people: int, extra=()) -> list[tuple[str, str]]:
    return [("data.cache_dir", cache), ("data.synthetic.num_identities", str(people)),
            ("logger.wandb.mode", "disabled"), *extra]


def _prepare(exp: str, overrides):
    """Config, data and module as `fair_lightning.experiment.run` builds them (identity face encoder included)."""
    import lightning as L

    from fair_lightning.config import load_config
    from fair_lightning.experiment import build_datamodule, build_module, prepare_face_encoder
    from fair_lightning.ops.runtime import ensure_data

    cfg = load_config(exp, list(overrides))
    dm = build_datamodule(cfg)
    ensure_data(dm)
    dm.setup("fit")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(cfg, dm.feature_dims())
    prepare_face_encoder(cfg, dm, module)
    return cfg, dm, module


def trainer_epochs(cfg, dm, module, epochs: int) -> list[float]:
    """Seconds of each training epoch through Lightning's Trainer: our step, its loop, its
    logging (CSV), no validation, no checkpoint."""
    import lightning as L

    from fair_lightning.experiment import build_timing_trainer

    times: list[float] = []

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            self.t = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_timing_trainer(cfg, Path(tmp), epochs, [EpochTimer()])
        trainer.fit(module, train_dataloaders=dm.train_dataloader())
    return times


def plain_epochs(module, loader, epochs: int, parts: dict | None = None) -> list[float]:
    """Seconds of each epoch of the same computation without Lightning (`plain_epoch`), on
    one loader, timed like the Trainer's epochs."""
    opts = module.configure_optimizers()
    opts = opts[0] if isinstance(opts, tuple) else opts
    return [plain_epoch(module, loader, opts, parts) for _ in range(epochs)]


def plain_epoch(module, loader, opts, parts: dict | None = None) -> float:
    """One epoch without Lightning: the module's own training step strategy
    (`fair_lightning.steps`) driven by a plain PyTorch engine (backward, clipping,
    toggling, a constant lambda, no logging); `parts` adds up seconds by part of the step."""
    from fair_lightning.bench.plain import PlainEngine

    module.train()
    params = [list(module.scorer.parameters())]
    if module.adversary is not None:
        params.append(module.adversary_parameters())
    engine = PlainEngine(opts, params, module.optim_cfg.grad_clip, module.adv_cfg.weight, parts)
    t = time.perf_counter()
    for batch in loader:
        engine.lap("loading")
        module.step_strategy(module, batch, engine)
    return time.perf_counter() - t


def loader_rate(cfg, workers: int) -> float:
    """Batches/s of the training loader alone, after one warm-up pass (worker start-up)."""
    from omegaconf import OmegaConf

    from data_modules.datamodule import InterviewDataModule

    data = OmegaConf.merge(cfg.data, {"num_workers": workers})
    dm = InterviewDataModule(data, seed=cfg.seed, label_free=True)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    for _ in loader:
        pass
    t, n = time.perf_counter(), 0
    for _ in loader:
        n += 1
    return n / (time.perf_counter() - t)


def _median_rest(times: list[float]) -> float:
    """The median epoch after the first (which pays start-up: data, threads, caches)."""
    return float(np.median(times[1:] if len(times) > 1 else times))


def bench_speed(cache: str, epochs: int, people: int) -> dict:
    from fair_lightning.experiment import data_summary

    out: dict = {"epoch_s": {}, "samples_per_s": {}, "plain_samples_per_s": {}}
    for exp in ("baseline", "adversarial"):
        cfg, dm, module = _prepare(exp, _overrides(cache, people))
        clips = data_summary(dm)["data/clips/train"]
        # interleaved, so that a busy moment of the machine hits both alike
        trainer_s, plain_s, parts = [], [], {}
        for _ in range(epochs):
            plain_s.append(_median_rest(plain_epochs(module, dm.train_dataloader(), 2, parts)))
            trainer_s.append(_median_rest(trainer_epochs(cfg, dm, module, 2)))
        t, p = float(np.median(trainer_s)), float(np.median(plain_s))
        out["epoch_s"][exp] = t
        out["samples_per_s"][exp] = clips / t
        out["plain_samples_per_s"][exp] = clips / p
        out[f"overhead/{exp}"] = p / t
        total = sum(parts.values())
        out[f"step_share/{exp}"] = {k: v / total for k, v in parts.items()}
        print(f"  {exp}: Trainer {clips / t:.0f} clips/s, plain loop {clips / p:.0f} clips/s",
              flush=True)
        if exp == "adversarial":
            batches = sum(1 for _ in dm.train_dataloader())
            out["train_batches_per_s"] = batches / t
            for w in (0, 2):
                rate = loader_rate(cfg, w)
                out[f"loader_batches_per_s/workers_{w}"] = rate
                out[f"loader_headroom/workers_{w}"] = rate / out["train_batches_per_s"]
    for name, extra in ADVERSARIES.items():
        if name == "adversarial":
            continue
        exp = name.removesuffix("_k1")
        cfg, dm, module = _prepare(exp, _overrides(cache, people, extra))
        out["epoch_s"][name] = _median_rest(trainer_epochs(cfg, dm, module, epochs + 1))
        print(f"  {name}: {out['epoch_s'][name]:.2f} s an epoch", flush=True)
    for name in ADVERSARIES:
        out[f"adversary_cost/{name}"] = out["epoch_s"][name] / out["epoch_s"]["baseline"]
    return out


def _in_fresh_process(code: str) -> dict:
    """Run `code` (which prints one JSON line) in a new interpreter; add its peak RSS."""
    wrapper = ("import json, subprocess, sys, resource\n"
               "r = subprocess.run([sys.executable, '-c', sys.argv[1]], capture_output=True, "
               "text=True)\n"
               "if r.returncode: sys.stderr.write(r.stderr[-3000:]); sys.exit(1)\n"
               "out = json.loads(r.stdout.strip().splitlines()[-1])\n"
               "out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024\n"
               "print(json.dumps(out))\n")
    r = subprocess.run([sys.executable, "-c", wrapper, code], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"benchmark process failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_memory(scale: int, batches: int, base: int) -> dict:
    """Peak RSS of generation and of a short training run, at 1x and `scale`x, each in a
    fresh process (generation into a temporary cache, so it is measured, not reused)."""
    out: dict = {}
    for mult in (1, scale):
        people = base * mult
        with tempfile.TemporaryDirectory() as tmp:
            gen = _in_fresh_process(
                "import json, time\n"
                "from fair_lightning.config import load_config\n"
                "from data_modules.sources import build_shards\n"
                f"cfg = load_config('adversarial', {_overrides(tmp, people)!r})\n"
                "t = time.perf_counter(); build_shards(cfg.data)\n"
                "print(json.dumps({'s': time.perf_counter() - t}))\n")
            print(f"  generation {mult}x: {gen['peak_rss_mb']:.0f} MB, {gen['s']:.0f} s",
                  flush=True)
            args = [f"{k}={v}" for k, v in _overrides(tmp, people)] + [
                "experiment=adversarial", "trainer.max_epochs=1",
                f"trainer.limit_train_batches={batches}", f"output_dir={tmp}/run"]
            train = _in_fresh_process(
                "import json, time, sys\n"
                "from fair_lightning.cli.train import main\n"
                f"t = time.perf_counter(); rc = main({args!r})\n"
                "print(json.dumps({'rc': rc, 's': time.perf_counter() - t}))\n")
            print(f"  training {mult}x: {train['peak_rss_mb']:.0f} MB, {train['s']:.0f} s",
                  flush=True)
        out[f"{mult}x"] = {"people": people, "generation_peak_rss_mb": gen["peak_rss_mb"],
                           "generation_s": gen["s"], "train_peak_rss_mb": train["peak_rss_mb"],
                           "train_s": train["s"]}
    big, small = out[f"{scale}x"], out["1x"]
    out["train_ratio"] = big["train_peak_rss_mb"] / small["train_peak_rss_mb"]
    out["generation_ratio"] = big["generation_peak_rss_mb"] / small["generation_peak_rss_mb"]
    return out


def bench_audit(cache: str, people: int, run_dir: Path) -> dict:
    """A default adversarial run (kept in `run_dir`, replaced each time, to read its probe
    table): its audits against its training."""
    import shutil

    from fair_lightning.config import load_config
    from fair_lightning.experiment import run

    shutil.rmtree(run_dir, ignore_errors=True)
    run(load_config("adversarial", [*_overrides(cache, people), ("output_dir", str(run_dir))]))
    s = json.loads((run_dir / "summary.json").read_text())
    audits = s["time/fit_probe_audit_s"] + s["time/probe_audit_s"]
    training = s["time/fit_s"] - s["time/fit_probe_audit_s"]  # fit includes its end audit
    return {"people": people, "fit_end_s": s["time/fit_probe_audit_s"],
            "test_s": s["time/probe_audit_s"], "training_s": training,
            "epochs": s["train/epochs"], "fraction_of_training": audits / training,
            "fit_end_fraction": s["time/fit_probe_audit_s"] / training,
            "audit_workers": s.get("probe/workers", math.nan),
            # the erasure stage runs inside fit, after the last epoch, before the audit
            "erasure_s": s.get("time/erasure_s", math.nan),
            "erasure_fraction": s.get("time/erasure_s", math.nan) / (training - s.get("time/erasure_s", 0.0)),
            "per_epoch": audits / (training / s["train/epochs"]),
            "suites_reused": s["probe/suites_reused"],
            "suites_shared": s.get("probe/suites_shared", 0),
            "fit_representations_reused": s["probe/fit_representations_reused"],
            "run_dir": str(run_dir)}


def audit_once(cfg, dm, module) -> float:
    """One end-of-fit audit (train -> val, every layer and attribute), extraction included."""
    from fair_lightning.audit.engine import AttackAudit
    from fair_lightning.lightning.collect import extract_representations
    from fair_lightning.models import REPRESENTATIONS

    t = time.perf_counter()
    fit = extract_representations(module, dm.eval_dataloader(cfg.probe.fit_split))
    ev = extract_representations(module, dm.eval_dataloader("val"))
    layers = [n for n in REPRESENTATIONS if n in fit and n in cfg.probe.layers]
    AttackAudit(cfg.probe, cfg.seed).run(fit, ev, layers)
    return time.perf_counter() - t


def bench_growth(cache: str, mults: list[int], base: int) -> dict:
    out: dict = {"people": [], "epoch_s": [], "audit_s": []}
    for m in mults:
        # the trained face encoder: no identity pretraining per size (it is cached per data)
        cfg, dm, module = _prepare("adversarial", _overrides(
            cache, base * m, [("model.face_encoder", "cnn")]))
        epoch = _median_rest(trainer_epochs(cfg, dm, module, 3))
        audit = audit_once(cfg, dm, module)
        print(f"  {m}x: {epoch:.2f} s an epoch, {audit:.1f} s an audit", flush=True)
        out["people"].append(base * m)
        out["epoch_s"].append(epoch)
        out["audit_s"].append(audit)
    x = np.log(out["people"])
    out["epoch_exponent"] = float(np.polyfit(x, np.log(out["epoch_s"]), 1)[0])
    out["audit_exponent"] = float(np.polyfit(x, np.log(out["audit_s"]), 1)[0])
    return out


def flat_ratios(r: dict) -> dict[str, float]:
    """The figures with goals, of the parts that ran."""
    flat = {k: v for k, v in r.get("speed", {}).items() if "/" in k and not isinstance(v, dict)}
    if "memory" in r:
        flat["memory/train_ratio"] = r["memory"]["train_ratio"]
        flat["memory/generation_ratio"] = r["memory"]["generation_ratio"]
    for scale, a in r.get("audit", {}).items():
        tag = "" if scale == "1x" else f"_{scale}"
        flat[f"audit/fraction_of_training{tag}"] = a["fraction_of_training"]
        flat[f"audit/fit_end_fraction{tag}"] = a["fit_end_fraction"]
        if scale == "1x":
            flat["erasure/fraction_of_training"] = a["erasure_fraction"]
    if "growth" in r:
        flat["growth/epoch_exponent"] = r["growth"]["epoch_exponent"]
        flat["growth/audit_exponent"] = r["growth"]["audit_exponent"]
    return flat


def verdict(key: str, value: float) -> str:
    if key not in GOALS or not math.isfinite(value):
        return ""
    op, goal = GOALS[key]
    ok = value >= goal if op == ">=" else value <= goal
    return f"{op} {goal:g}: {'met' if ok else 'NOT met'}"


def markdown(r: dict) -> str:
    lines = [f"threads: {r['threads']}, CPUs: {r['cpu_count']}, accelerator: "
             f"{r['accelerator']}", "", "| figure | value | goal |", "|---|---:|---|"]
    for k, v in r["ratios"].items():
        lines.append(f"| `{k}` | {v:.2f} | {verdict(k, v)} |")
    s = r.get("speed", {"epoch_s": {}})
    if s["epoch_s"]:
        lines += ["", "| experiment | s per training epoch | clips/s (Trainer) | clips/s (plain) |",
                  "|---|---:|---:|---:|"]
    for exp, t in s["epoch_s"].items():
        plain = s["plain_samples_per_s"].get(exp)
        lines.append(f"| {exp} | {t:.2f} | {s['samples_per_s'].get(exp, float('nan')):.0f} | "
                     + (f"{plain:.0f} |" if plain else " |"))
    for exp in ("baseline", "adversarial") if s["epoch_s"] else ():
        shares = s.get(f"step_share/{exp}", {})
        lines += ["", f"where a {exp} epoch goes (plain loop): " + ", ".join(
            f"{k} {v:.0%}" for k, v in shares.items())]
    m = r.get("memory", {})
    lines += [] if not m else ["", "| data | people | generation peak RSS (MB) | generation s | training peak "
              "RSS (MB) | training s |", "|---|---:|---:|---:|---:|---:|"]
    for k, v in m.items():
        if isinstance(v, dict):
            lines.append(f"| {k} | {v['people']} | {v['generation_peak_rss_mb']:.0f} | "
                         f"{v['generation_s']:.0f} | {v['train_peak_rss_mb']:.0f} | "
                         f"{v['train_s']:.0f} |")
    for scale, a in r.get("audit", {}).items():
        lines += ["", f"audits of a default run at {scale} ({a['people']} people): end of fit "
                  f"{a['fit_end_s']:.1f} s, test {a['test_s']:.1f} s ({a['suites_reused']} suites "
                  f"reused, {a['suites_shared']} shared between layers), training "
                  f"{a['training_s']:.1f} s over {a['epochs']} epochs: {a['per_epoch']:.2f} "
                  f"epochs' worth of time; the erasure stage {a['erasure_s']:.2f} s"]
    g = r.get("growth")
    if g:
        lines += ["", "| people | s per epoch | s per audit |", "|---:|---:|---:|"]
        lines += [f"| {p} | {e:.2f} | {au:.1f} |" for p, e, au in
                  zip(g["people"], g["epoch_s"], g["audit_s"], strict=True)]
        lines += ["", f"exponents: epoch {g['epoch_exponent']:.2f}, audit "
                  f"{g['audit_exponent']:.2f}"]
    return "\n".join(lines) + "\n"


PARTS = ("speed", "audit", "growth", "memory")


def run(args, on_part=None) -> dict:
    """Every part asked for; `on_part(result so far)` after each (a long sitting keeps what
    it measured)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    parts = getattr(args, "parts", None) or PARTS
    t0 = time.time()
    r = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
         "accelerator": "cpu", "people": args.people, "parts": list(parts), "parts_done": []}

    def done(part):
        r["parts_done"].append(part)
        r["ratios"] = flat_ratios(r)
        r["wall_s"] = time.time() - t0
        if on_part:
            on_part(r)

    if "speed" in parts:
        print("speed: Trainer against a plain loop, adversaries, loader ...", flush=True)
        r["speed"] = bench_speed(args.cache, args.epochs, args.people)
        done("speed")
    if "audit" in parts:
        r["audit"] = {}
        for scale in getattr(args, "audit_scales", None) or [1]:
            print(f"audit: a default adversarial run at {scale}x ...", flush=True)
            r["audit"][f"{scale}x"] = bench_audit(
                args.cache, args.people * scale,
                Path(args.out) / ("audit-run" if scale == 1 else f"audit-run-{scale}x"))
            done(f"audit {scale}x")
    if "growth" in parts:
        print("growth ...", flush=True)
        r["growth"] = bench_growth(args.cache, args.growth, args.people)
        done("growth")
    if "memory" in parts:
        print(f"memory: 1x and {args.memory_scale}x ...", flush=True)
        r["memory"] = bench_memory(args.memory_scale, args.memory_batches, args.people)
        done("memory")
    r["ratios"] = flat_ratios(r)
    r["wall_s"] = time.time() - t0
    return r
