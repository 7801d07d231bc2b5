"""Which process is rank 0, on every launcher the framework meets."""

import pytest

from fair_lightning.ops.runtime import global_rank

LAUNCH_VARS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
               "LOCAL_WORLD_SIZE", "WORLD_SIZE", "NUM_NODES")


@pytest.fixture
def env(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)

    def set_(**values):
        for k, v in values.items():
            monkeypatch.setenv(k, str(v))
    return set_


@pytest.mark.parametrize("values, rank", [
    ({}, 0),  # one process
    ({"RANK": 5, "LOCAL_RANK": 1, "NODE_RANK": 2}, 5),  # torchrun: RANK is global
    ({"SLURM_PROCID": 3, "LOCAL_RANK": 1, "NODE_RANK": 1}, 3),  # SLURM
    ({"LOCAL_RANK": 1}, 1),  # Lightning's launcher on one node
    # Lightning's launcher on the second of two nodes, 4 processes each: NODE_RANK is a
    # node index, not a rank
    ({"NODE_RANK": 1, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": 4}, 4),
    ({"NODE_RANK": 1, "LOCAL_RANK": 3, "WORLD_SIZE": 8, "NUM_NODES": 2}, 7),
    ({"GROUP_RANK": 2, "LOCAL_RANK": 1, "LOCAL_WORLD_SIZE": 2}, 5),
])
def test_global_rank(env, values, rank):
    env(**values)
    assert global_rank() == rank


def test_a_later_nodes_first_process_is_not_rank_zero_before_its_children_start(env):
    """Before the Trainer starts a node's children, its first process has NODE_RANK alone;
    before, it read LOCAL_RANK (unset: 0) and thought it was rank 0 on every node."""
    env(NODE_RANK=1)
    assert global_rank() > 0
    env(NODE_RANK=0)
    assert global_rank() == 0


def test_a_lightning_message_is_printed_once():
    import subprocess
    import sys

    code = ("from fair_lightning.ops.runtime import start_cli; start_cli([], '');"
            "import lightning.pytorch as pl, logging;"
            "from lightning.pytorch.utilities import rank_zero_info;"
            "rank_zero_info('one line please');"
            "logging.getLogger('fair_lightning').info('ours too')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    text = out.stdout + out.stderr
    assert text.count("one line please") == 1, text
    assert text.count("ours too") == 1, text
