"""Feature extraction shared by every source: audio, text and faces."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def torch_threads(n: int):
    """Our tensors are small: extra intra-op threads only add sync cost, and on a busy
    2-core machine they made feature extraction ~20x and encoding ~2x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
