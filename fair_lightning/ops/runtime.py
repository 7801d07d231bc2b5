"""Process-level set-up shared by the entry points: offline env, run dir, ranks, data."""

from __future__ import annotations

import logging
import netrc
import os
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

OFFLINE_ENV = {
    # no hub access, ever: the text model ships inside a package
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
RUN_DIR_ENV = "FAIR_LIGHTNING_RUN_DIR"


def set_offline_env() -> None:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def start_cli(argv: list[str] | None, help_text: str) -> list[str] | None:
    """An entry point's arguments, or None once the help is printed; log lines are plain
    messages (litdata's chatter only on errors)."""
    import logging
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(help_text)
        return None
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("litdata").setLevel(logging.ERROR)
    # the `lightning` package gives its logger a console handler of its own when imported,
    # and lets records reach the root one too: every Lightning message was printed twice
    logging.getLogger("lightning").propagate = False
    return argv


def global_rank() -> int:
    """This process's rank among all processes of the run, from the launcher's environment:
    torchrun (RANK), SLURM (SLURM_PROCID), or Lightning's own launcher, which sets
    LOCAL_RANK and NODE_RANK (a node index, not a rank): NODE_RANK x processes per node +
    LOCAL_RANK. Lightning gives a node's children WORLD_SIZE only when it starts them; a
    node's first process, before that, knows that it is not rank 0 and is given its node's
    first rank counted with one process a node (callers only ask whether it is zero)."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    per_node = os.environ.get("LOCAL_WORLD_SIZE")
    if per_node is None and "WORLD_SIZE" in os.environ and "NUM_NODES" in os.environ:
        per_node = int(os.environ["WORLD_SIZE"]) // max(1, int(os.environ["NUM_NODES"]))
    return node * int(per_node or 1) + local


def resolve_run_dir(output_dir: str | None, experiment: str, root: str = "runs") -> Path:
    """One run dir shared by every process of a run.

    DDP children inherit it through RUN_DIR_ENV; SLURM tasks agree on the job id.
    """
    if global_rank() > 0 and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])  # a DDP child: the launcher's choice
    if output_dir:
        path = Path(output_dir)
    elif os.environ.get("SLURM_JOB_ID"):
        path = Path(root) / experiment / f"slurm-{os.environ['SLURM_JOB_ID']}"
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(root) / experiment / stamp
        n = 1
        while path.exists():
            path = Path(root) / experiment / f"{stamp}-{n}"
            n += 1
    path = path.resolve()
    os.environ[RUN_DIR_ENV] = str(path)
    return path


def wait_for(path: Path, what: str, timeout_s: float, poll_s: float = 2.0) -> None:
    """Block until `path` exists: rank 0 writes it (atomically) once `what` is complete.
    A TimeoutError names the file and points at rank 0's log."""
    deadline = time.time() + timeout_s
    while not Path(path).exists():
        if time.time() > deadline:
            raise TimeoutError(f"rank {global_rank()} waited {timeout_s:.0f}s for {what} "
                               f"({path}); rank 0 did not finish it: see rank 0's log")
        time.sleep(poll_s)


def ensure_data(datamodule, timeout_s: float = 3600) -> None:
    """Rank 0 builds the shards; the other ranks wait for the cache's meta.json, which is
    renamed into place with the complete cache. Any error reading it afterwards is real,
    and raised."""
    if global_rank() == 0:
        datamodule.prepare_data()
        return
    wait_for(datamodule.split_dir("train").parent / "meta.json", "the data", timeout_s)


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (collective: all ranks must call it); `[obj]`
    when not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def quiet_warnings() -> None:
    """Warnings that say nothing a user can act on in this framework's runs."""
    import warnings

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    # fairness metrics are synced by torchmetrics before rank 0 logs them
    warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed.*")
    warnings.filterwarnings("ignore", ".*overridden `transfer_batch_to_device`.*")
    warnings.filterwarnings("ignore", ".*`IterableDataset` has `__len__` defined.*")
    # the frozen face encoder stays in eval mode on purpose (its BatchNorm statistics)
    warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode at the start of training.*")
    # periodic checkpoints are meant to hold the state after the batch's updates: the
    # resume point the next batch continues from
    warnings.filterwarnings("ignore", ".*ModelCheckpoint with manual optimization.*")
    # an advertisement Lightning logs when a Trainer has no logger (scoring, the bench)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage())


def has_wandb_credentials() -> bool:
    """True when W&B could log in without asking: an API key in the env or in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_command() -> str:
    """The `wandb` executable installed beside this interpreter (a virtualenv's bin/, which
    make and sbatch do not put on PATH), else the one on PATH."""
    import shutil
    import sys

    own = Path(sys.executable).parent / "wandb"
    if own.is_file() and os.access(own, os.X_OK):
        return str(own)
    found = shutil.which("wandb")
    if found is None:
        raise ValueError(f"no `wandb` command beside {sys.executable} or on PATH: install "
                         "wandb into this environment (pip install wandb)")
    return found
