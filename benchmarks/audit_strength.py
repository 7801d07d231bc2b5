"""Is a changed audit as strong as the one it replaces? The same frozen representations,
audited by two versions of the code, side by side.

    python benchmarks/audit_strength.py dump runs/<run>/checkpoints/last.ckpt reps.npz
    PYTHONPATH=<old checkout> python benchmarks/audit_strength.py audit reps.npz old.json
    python benchmarks/audit_strength.py audit reps.npz new.json
    python benchmarks/audit_strength.py compare old.json new.json

`dump` extracts every representation of the run's training split (the attackers' fit
split) and validation split (what the end-of-fit audit scores), in float32, as the run's
own audit does. `audit` runs the end-of-fit audit (every layer, both attributes, both
levels, the run's attacker families) with whichever `fair_lightning` is importable, so an
older checkout on PYTHONPATH audits with its code; it writes the selected attacker at each
layer x attribute x level with its balanced accuracy and 95% interval, and the wall time.
`compare` prints the markdown table: the reference's selection and interval, the new
one's, and whether the new balanced accuracy lies inside the reference interval.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def dump(ckpt: Path, out: Path) -> None:
    import numpy as np

    from fair_lightning.experiment import build_datamodule, load_checkpoint, load_config_file
    from fair_lightning.lightning.collect import extract_representations

    cfg = load_config_file(ckpt.resolve().parent.parent / "config.yaml", [])
    module = load_checkpoint(ckpt).eval()
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("test")
    arrays = {}
    for split in (cfg.probe.fit_split, "val"):
        for name, rows in extract_representations(module, dm.eval_dataloader(split)).items():
            arrays[f"{split}/{name}"] = np.asarray(rows)
    np.savez(out, fit_split=cfg.probe.fit_split, config=str(ckpt.resolve().parent.parent /
                                                               "config.yaml"), **arrays)
    print(f"written: {out} ({len(arrays)} arrays)")


def audit(reps: Path, out: Path, workers: int) -> None:
    import numpy as np
    from omegaconf import OmegaConf

    import fair_lightning
    from fair_lightning.audit.engine import AttackAudit
    from fair_lightning.models import REPRESENTATIONS

    d = np.load(reps, allow_pickle=True)
    split = str(d["fit_split"])
    fit = {k.split("/", 1)[1]: d[k] for k in d.files if k.startswith(f"{split}/")}
    ev = {k.split("/", 1)[1]: d[k] for k in d.files if k.startswith("val/")}
    # the run's saved config as it is: an older checkout's schema may not know newer keys
    cfg = OmegaConf.load(str(d["config"]))
    probe = cfg.probe
    if workers:
        probe.workers = workers
    layers = [n for n in REPRESENTATIONS if n in fit and n in probe.layers]
    t = time.perf_counter()
    rows = AttackAudit(probe, cfg.seed).run(fit, ev, layers)
    wall = time.perf_counter() - t
    selected = {f"{r['layer']}/{r['attr']}/{r['level']}": {
        "attacker": r["attacker"], "params": r["params"], "bal_acc": r["bal_acc"],
        "ci": [r["bal_acc_ci_low"], r["bal_acc_ci_high"]]} for r in rows if r["selected"]}
    out.write_text(json.dumps({"code": str(Path(fair_lightning.__file__).parent),
                               "wall_s": wall, "workers": probe.get("workers", 1),
                               "selected": selected}, indent=1) + "\n")
    print(f"audit: {wall:.1f} s, {len(selected)} selections -> {out}")


def compare(ref: dict, new: dict) -> tuple[str, int]:
    """The markdown table, and how many new balanced accuracies fall outside the
    reference's interval."""
    lines = ["| layer / attribute / level | reference: attacker | reference: bal. acc. [95% CI] "
             "| new: attacker | new: bal. acc. | inside |", "|---|---|---|---|---|---|"]
    outside = 0
    for key, a in ref["selected"].items():
        b = new["selected"].get(key)
        if b is None:
            lines.append(f"| {key} | {a['attacker']} | {a['bal_acc']:.3f} | missing | | no |")
            outside += 1
            continue
        inside = a["ci"][0] <= b["bal_acc"] <= a["ci"][1]
        outside += not inside
        lines.append(f"| {key} | {a['attacker']} | {a['bal_acc']:.3f} [{a['ci'][0]:.3f}, "
                     f"{a['ci'][1]:.3f}] | {b['attacker']} | {b['bal_acc']:.3f} | "
                     f"{'yes' if inside else '**no**'} |")
    same = sum(ref["selected"][k]["attacker"] == new["selected"].get(k, {}).get("attacker")
               for k in ref["selected"])
    lines += ["", f"audit wall time: reference {ref['wall_s']:.1f} s, new {new['wall_s']:.1f} s; "
              f"the same attacker selected in {same} of {len(ref['selected'])}; outside the "
              f"reference interval: {outside}"]
    return "\n".join(lines), outside


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("dump")
    d.add_argument("ckpt", type=Path)
    d.add_argument("out", type=Path)
    a = sub.add_parser("audit")
    a.add_argument("reps", type=Path)
    a.add_argument("out", type=Path)
    a.add_argument("--workers", type=int, default=0, help="probe.workers (0: the run's)")
    c = sub.add_parser("compare")
    c.add_argument("ref", type=Path)
    c.add_argument("new", type=Path)
    args = p.parse_args(argv)
    if args.what == "dump":
        dump(args.ckpt, args.out)
    elif args.what == "audit":
        audit(args.reps, args.out, args.workers)
    else:
        table, _ = compare(json.loads(args.ref.read_text()), json.loads(args.new.read_text()))
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
