"""`make bench BENCH=predict`: scoring throughput of `fair-predict`, preprocessing apart.

The clips are the run's own cached shards (the synthetic benchmark unless the checkpoint's
run read other data), so the time is loading, batching and the model (erasure stage and
refitted head included), on the run's device. Without `--ckpt`, the default experiment is
trained first (its default size and epochs) so the model is the one a user scores with.
Each setting is scored `--repeats` times through `fair_lightning.predict.predict`, the
command's own path; the median is reported.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path


def trained_checkpoint(out: Path) -> Path:
    from fair_lightning.config import DEFAULT_EXPERIMENT, load_config
    from fair_lightning.experiment import run

    run_dir = out / "predict-run"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if (run_dir / "summary.json").is_file():
        return ckpt
    print(f"training {DEFAULT_EXPERIMENT} for the checkpoint to score ({run_dir}) ...", flush=True)
    run(load_config(DEFAULT_EXPERIMENT, [("output_dir", str(run_dir)),
                                         ("logger.wandb.mode", "disabled")]))
    return ckpt


def bench_predict(args) -> dict:
    import torch

    from fair_lightning.predict import predict

    out = Path(args.out)
    ckpt = Path(args.ckpt) if args.ckpt else trained_checkpoint(out)
    result = {"checkpoint": str(ckpt), "threads": torch.get_num_threads(),
              "repeats": args.repeats, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for split in args.splits:
            for bs in args.batch_sizes:
                rates, clips, device = [], 0, ""
                for i in range(args.repeats):
                    csv = Path(tmp) / f"{split}-{bs}-{i}.csv"
                    t = time.perf_counter()
                    predict(ckpt, None, split, str(csv), [("data.batch_size", str(bs))])
                    wall = time.perf_counter() - t
                    side = json.loads(csv.with_suffix(".json").read_text())
                    rates.append(side["clips_per_s"])
                    clips, device = side["data"]["scored"], side["device"]
                result["runs"].append({
                    "split": split, "batch_size": bs, "clips": clips, "device": device,
                    "clips_per_s": statistics.median(rates), "clips_per_s_all": rates,
                    "command_wall_s_last": round(wall, 2)})
                print(f"  {split}, batch {bs}: {clips} clips, "
                      f"{statistics.median(rates):.0f} clips/s", flush=True)
    return result


def markdown(r: dict) -> str:
    lines = [f"Scoring throughput (`fair-predict` on the run's cached clips; {r['threads']} "
             f"threads; median of {r['repeats']})", "",
             "| split | batch | clips | device | clips/s (scoring) | whole command, s |",
             "|---|---:|---:|---|---:|---:|"]
    for x in r["runs"]:
        lines.append(f"| {x['split']} | {x['batch_size']} | {x['clips']} | {x['device']} | "
                     f"{x['clips_per_s']:.0f} | {x['command_wall_s_last']:.1f} |")
    lines += ["", "clips/s: clips over the seconds of Lightning's predict loop (reading the "
              "shards, batching, the model); the whole command adds loading the checkpoint, "
              "checking the data and writing the files."]
    return "\n".join(lines) + "\n"
