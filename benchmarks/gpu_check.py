"""The GPU path in one short run: a bf16 `adversarial` fit and its audit on the GPU, then
the CPU audit of the same checkpoint; one JSON.

    python benchmarks/gpu_check.py [--epochs 3] [--people 400] [--out runs/gpu-check]
    python benchmarks/gpu_check.py --device cpu      # the same path on the CPU (a test)

Run from a source checkout (it imports `fair_lightning` from here). It needs the project's
own dependencies (lightning, omegaconf, ...) but none of their exact versions: a machine with
its own Python and torch is fine. Without a CUDA device (and without `--device cpu`) it
writes `{"skipped": "..."}` and exits 0.

The JSON (`<out>/gpu_check.json`, also printed):
* `fit`: training clips per second (epochs x training clips / training seconds, audits
  excluded), the end-of-fit and test audit seconds, the torch attackers' device, and the
  peak memory the device allocated (`torch.cuda.max_memory_allocated`, MB);
* `cpu_audit`: the same checkpoint's test audit on the CPU (float32, one process), seconds;
* `agreement`: for every `leak/<layer>/<attr>/<level>/bal_acc` of the test audit, the GPU
  and CPU values, their largest difference, and how many selected attackers differ.
  Differences come from the representations (a GPU's float32 matmuls are not the CPU's,
  bit for bit), never from bf16: extraction, the dependence term and the audit compute in
  float32 outside autocast.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _leaks(summary: dict) -> dict:
    return {k: v for k, v in summary.items()
            if k.startswith("leak/") and (k.endswith("/bal_acc") or k.endswith("/attacker"))}


def _fit(args, out: Path) -> dict:
    import torch

    from fair_lightning.config import load_config
    from fair_lightning.experiment import run

    on_gpu = args.device == "cuda"
    overrides = [("trainer.accelerator", "gpu" if on_gpu else "cpu"),
                 ("trainer.precision", args.precision), ("trainer.max_epochs", str(args.epochs)),
                 ("data.synthetic.num_identities", str(args.people)),
                 ("logger.wandb.mode", "disabled"), ("output_dir", str(out / "run"))]
    if args.cache:
        overrides.append(("data.cache_dir", args.cache))
    cfg = load_config("adversarial", overrides)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    run_dir = run(cfg)
    s = json.loads((run_dir / "summary.json").read_text())
    training = s["time/fit_s"] - s["time/fit_probe_audit_s"]  # fit includes its end audit
    return {"run_dir": str(run_dir), "precision": args.precision, "epochs": s["train/epochs"],
            "train_clips": s.get("data/clips/train"),
            "clips_per_s": s["train/epochs"] * s["data/clips/train"] / training,
            "training_s": training, "fit_end_audit_s": s["time/fit_probe_audit_s"],
            "test_audit_s": s["time/probe_audit_s"], "audit_workers": s.get("probe/workers"),
            "test_pearson": s.get("test/pearson"),
            "peak_device_memory_mb": (torch.cuda.max_memory_allocated() / 2**20
                                      if on_gpu else None),
            "device_name": torch.cuda.get_device_name() if on_gpu else "cpu",
            "leaks": _leaks(s)}


def _cpu_audit(run_dir: Path, out: Path) -> dict:
    """The last checkpoint's test audit in a fresh process that sees no GPU."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "fair_lightning.cli.audit",
                        f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}",
                        "trainer.accelerator=cpu", "trainer.precision=32-true",
                        "probe.device=cpu", "logger.wandb.mode=disabled",
                        f"output_dir={out / 'cpu-audit'}"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode:
        raise RuntimeError(f"the CPU audit failed:\n{r.stderr[-3000:]}")
    s = json.loads((out / "cpu-audit" / "summary.json").read_text())
    return {"wall_s": time.perf_counter() - t, "audit_s": s["time/probe_audit_s"],
            "leaks": _leaks(s)}


def agreement(device: dict, cpu: dict) -> dict:
    keys = sorted(k for k in device if k.endswith("/bal_acc") and k in cpu)
    diffs = {k: abs(device[k] - cpu[k]) for k in keys}
    names = [k for k in device if k.endswith("/attacker") and k in cpu]
    return {"scores": len(keys), "max_abs_diff": max(diffs.values(), default=float("nan")),
            "largest": max(diffs, key=diffs.get) if diffs else None,
            "attackers_differ": sum(device[k] != cpu[k] for k in names),
            "attackers": len(names)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--people", type=int, default=400)
    p.add_argument("--cache", default="", help="data cache (default: the project's)")
    p.add_argument("--out", default="runs/gpu-check")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    import torch

    result: dict = {"torch": torch.__version__, "python": sys.version.split()[0],
                    "device": args.device}
    if args.device == "cuda" and not torch.cuda.is_available():
        result["skipped"] = "no CUDA device: nothing run (--device cpu runs the CPU path)"
    else:
        t = time.perf_counter()
        fit = _fit(args, out)
        cpu = _cpu_audit(Path(fit["run_dir"]), out)
        result.update(fit=fit, cpu_audit=cpu, agreement=agreement(fit["leaks"], cpu["leaks"]),
                      wall_s=time.perf_counter() - t)
    text = json.dumps(result, indent=1, sort_keys=True, default=str)
    (out / "gpu_check.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
