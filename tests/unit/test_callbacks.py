"""The callbacks' plain helpers: reading every clip's rows for the proxy fits, the erasure
stage and the audit."""

import numpy as np
import torch

from fair_lightning.lightning.callbacks import collect_rows


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
