"""The callbacks' plain helpers: reading every clip's rows for the proxy fits, the erasure
stage and the audit."""

import numpy as np
import torch

from fair_lightning.lightning.collect import collect_rows


class _Batch:
    def __init__(self, x, ids, clips):
        self.x, self.identity, self.clip_id = x, ids, clips

    def to(self, device):
        return self

    def __len__(self):
        return len(self.x)


def test_rows_are_read_in_float32_outside_autocast():
    """Under bf16 autocast (as a bf16-mixed trainer's step runs) a Linear computes in bf16;
    what the audit and the erasure stage read must not."""
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Linear(32, 32)
    x = torch.randn(64, 32, generator=g)
    loader = [_Batch(x[i:i + 16], torch.arange(i, i + 16), [f"c{k:03d}" for k in range(i, i + 16)])
              for i in range(0, 64, 16)]

    def rows(batch):
        return {"h": net(batch.x).cpu().numpy()}

    net.device = torch.device("cpu")
    want = collect_rows(net, loader, rows)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(x).dtype == torch.bfloat16  # what the step itself would compute
        got = collect_rows(net, loader, rows, max_clips=48)
    assert got["h"].dtype == np.float32 and len(got["h"]) == 48
    np.testing.assert_array_equal(got["h"], want["h"][:48])
    assert list(got["clip_id"]) == [f"c{k:03d}" for k in range(48)]
    assert net.training  # the module's mode is restored


def _audit_rows(n_people=40, clips=3, seed=0):
    rng = np.random.default_rng(seed)
    person = np.repeat(np.arange(n_people), clips)
    gender = person % 2
    ethnicity = person % 3
    fused = rng.normal(size=(person.size, 5)) + gender[:, None]
    video = rng.normal(size=(person.size, 4)) + 0.5 * ethnicity[:, None]
    split = person < n_people * 3 // 4
    rows = {"fused": fused, "erased": fused.copy(), "video": video, "gender": gender,
            "ethnicity": ethnicity, "identity": person}
    return ({k: v[split] for k, v in rows.items()}, {k: v[~split] for k, v in rows.items()})


def test_the_audit_fits_each_distinct_suite_once_and_its_workers_change_nothing():
    """Layers with the same bytes (`erased` when the erasure stage erased nothing) share one
    fitted suite; suites fitted on two workers read exactly as on one; the process's
    thread count is left as it was."""
    from fair_lightning.audit.engine import AttackAudit
    from fair_lightning.config import load_config

    fit, ev = _audit_rows()
    results = {}
    for workers in (1, 2):
        cfg = load_config("baseline", [("probe.attackers", "[linear,mlp]"),
                                       ("probe.bootstrap", "50"),
                                       ("probe.workers", str(workers))]).probe
        audit = AttackAudit(cfg)
        before = torch.get_num_threads()
        results[workers] = audit.run(fit, ev, ["video", "fused", "erased"])
        assert torch.get_num_threads() == before
        assert audit.workers() == workers
        assert (audit.shared, audit.reused) == (2, 0)  # erased x 2 attributes
        again = audit.run(fit, ev, ["video", "fused", "erased"])
        assert (audit.shared, audit.reused) == (2, 6) and again == results[workers]
    assert results[1] == results[2]
    # 0: the process's torch threads, read before the pool's own thread limit is set
    cfg = load_config("baseline", [("probe.attackers", "[linear]"), ("probe.bootstrap", "0"),
                                   ("probe.workers", "0")]).probe
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        audit = AttackAudit(cfg)
        audit.run(fit, ev, ["video", "fused"])
        assert audit.pool_size == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    by_layer = {}
    for r in results[1]:
        by_layer.setdefault(r["layer"], []).append({k: v for k, v in r.items() if k != "layer"})
    assert by_layer["erased"] == by_layer["fused"] != by_layer["video"]


def test_two_attributes_with_the_same_bytes_are_not_one_suite():
    """Gender and ethnicity may hold equal labels; a 2-class and a 3-class suite still
    differ (chance 1/2 against 1/3)."""
    from fair_lightning.audit.engine import AttackAudit
    from fair_lightning.config import load_config

    fit, ev = _audit_rows()
    fit, ev = dict(fit, ethnicity=fit["gender"]), dict(ev, ethnicity=ev["gender"])
    cfg = load_config("baseline", [("probe.attackers", "[linear]"),
                                   ("probe.bootstrap", "0")]).probe
    audit = AttackAudit(cfg)
    rows = audit.run(fit, ev, ["video"])
    assert audit.shared == 0
    assert {r["attr"]: r["chance"] for r in rows} == {"gender": 0.5, "ethnicity": 1 / 3}


def test_a_changed_layer_is_fitted_again_and_stale_suites_are_dropped():
    from fair_lightning.audit.engine import AttackAudit
    from fair_lightning.config import load_config

    fit, ev = _audit_rows()
    cfg = load_config("baseline", [("probe.attackers", "[linear]"),
                                   ("probe.bootstrap", "0")]).probe
    audit = AttackAudit(cfg)
    audit.run(fit, ev, ["video", "fused"])
    fit = dict(fit, fused=fit["fused"] + 1e-3)  # another epoch's h
    audit.run(fit, ev, ["video", "fused"])
    assert audit.reused == 2 and len(audit._suites) == 4  # video kept; fused's old suites gone
