"""Which process this is, as every supported launcher says it, before any process group exists.

Everything that writes into the run folder (the run lock, ``run_config.yaml`` and ``run_history.jsonl``, the
start-up header) must run on exactly one process of the whole job. Before ``trainer.fit`` there is no
process group to ask, so the answer comes from the environment each launcher sets:

* torchrun / torch elastic: ``RANK`` (global), ``LOCAL_RANK``, ``GROUP_RANK`` (the node);
* SLURM (``srun``): ``SLURM_PROCID`` (global), ``SLURM_LOCALID``, ``SLURM_NODEID``;
* Open MPI (``mpirun``): ``OMPI_COMM_WORLD_RANK`` / ``OMPI_COMM_WORLD_LOCAL_RANK``;
* Lightning's own launcher (``trainer.devices=N``; its children, and ``NODE_RANK`` on multi-node set by hand):
  ``NODE_RANK`` and ``LOCAL_RANK``; the global rank is ``NODE_RANK * devices + LOCAL_RANK``, so only
  "is it zero" is known, which is all a writer needs.

torchrun is asked first: run under SLURM (one ``srun`` task per node, torchrun inside) its ``RANK`` is the
process's real rank while ``SLURM_PROCID`` numbers the nodes. ``NODE_RANK`` alone is not enough: torchrun does
not set it, so with two torchrun nodes both processes used to believe they were node 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchRank:
    """``global_rank`` is ``None`` where the launcher does not say it (Lightning's launcher, ranks > 0)."""

    global_rank: int | None
    local_rank: int
    node_rank: int
    launcher: str

    @property
    def is_global_zero(self) -> bool:
        if self.global_rank is not None:
            return self.global_rank == 0
        return self.local_rank == 0 and self.node_rank == 0


def _int(name: str, default: int = 0) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def launch_rank() -> LaunchRank:
    """This process's rank as its launcher set it (see the module docstring); rank 0 of 1 when none did."""
    env = os.environ
    if "RANK" in env and ("GROUP_RANK" in env or "TORCHELASTIC_RUN_ID" in env or "LOCAL_WORLD_SIZE" in env):
        return LaunchRank(_int("RANK"), _int("LOCAL_RANK"), _int("GROUP_RANK"), "torchrun")
    if "SLURM_PROCID" in env and _int("SLURM_NTASKS", 1) > 1:
        return LaunchRank(_int("SLURM_PROCID"), _int("SLURM_LOCALID"), _int("SLURM_NODEID"), "slurm")
    if "OMPI_COMM_WORLD_RANK" in env:
        return LaunchRank(
            _int("OMPI_COMM_WORLD_RANK"), _int("OMPI_COMM_WORLD_LOCAL_RANK"), _int("OMPI_COMM_WORLD_NODE_RANK"), "mpi"
        )
    local, node = _int("LOCAL_RANK"), _int("NODE_RANK")
    return LaunchRank(0 if local == 0 and node == 0 else None, local, node, "lightning")


def is_run_writer() -> bool:
    """True on the one process of the job that writes the run folder's own files."""
    return launch_rank().is_global_zero
