"""The job's rank as each launcher gives it (src.utils.launch), before any process group exists."""

import pytest

from src.utils.launch import is_run_writer, launch_rank

LAUNCHER_VARS = (
    "RANK",
    "LOCAL_RANK",
    "GROUP_RANK",
    "NODE_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_NODE_RANK",
)


@pytest.fixture
def env(monkeypatch):
    for k in LAUNCHER_VARS:
        monkeypatch.delenv(k, raising=False)

    def set_(**kw):
        for k, v in kw.items():
            monkeypatch.setenv(k, str(v))

    return set_


def test_no_launcher_is_rank_zero(env):
    r = launch_rank()
    assert (r.global_rank, r.local_rank, r.node_rank, r.is_global_zero) == (0, 0, 0, True) and is_run_writer()


@pytest.mark.parametrize("rank, writer", [(0, True), (1, False), (3, False)])
def test_torchrun_second_node_is_not_a_writer(env, rank, writer):
    # torchrun --nnodes 2 --nproc-per-node 1: LOCAL_RANK is 0 on both nodes and NODE_RANK is not set
    env(RANK=rank, LOCAL_RANK=0, GROUP_RANK=rank, WORLD_SIZE=4, LOCAL_WORLD_SIZE=1, TORCHELASTIC_RUN_ID="x")
    r = launch_rank()
    assert (r.launcher, r.global_rank, r.node_rank, is_run_writer()) == ("torchrun", rank, rank, writer)


def test_torchrun_inside_slurm_trusts_torchrun(env):
    # one srun task per node, torchrun inside: SLURM_PROCID numbers the nodes, RANK the processes
    env(SLURM_PROCID=0, SLURM_NTASKS=2, SLURM_NODEID=0, RANK=1, LOCAL_RANK=1, GROUP_RANK=0, LOCAL_WORLD_SIZE=2)
    assert launch_rank().global_rank == 1 and not is_run_writer()


@pytest.mark.parametrize("procid, writer", [(0, True), (5, False)])
def test_slurm(env, procid, writer):
    env(SLURM_PROCID=procid, SLURM_LOCALID=procid % 4, SLURM_NODEID=procid // 4, SLURM_NTASKS=8)
    r = launch_rank()
    assert (r.launcher, r.global_rank, r.node_rank, is_run_writer()) == ("slurm", procid, procid // 4, writer)


def test_slurm_single_task_allocation_is_rank_zero(env):
    env(SLURM_PROCID=0, SLURM_NTASKS=1, LOCAL_RANK=2)  # salloc shell running Lightning's own launcher
    assert launch_rank().launcher == "lightning" and not is_run_writer()


@pytest.mark.parametrize(
    "local, node, writer", [(0, 0, True), (1, 0, False), (0, 1, False), (7, 0, False)]
)  # Lightning's launcher sets NODE_RANK and LOCAL_RANK (also NODE_RANK by hand on multi-node)
def test_lightning_launcher(env, local, node, writer):
    env(LOCAL_RANK=local, NODE_RANK=node, WORLD_SIZE=8)
    assert is_run_writer() is writer and launch_rank().global_rank == (0 if writer else None)


def test_mpi(env):
    env(OMPI_COMM_WORLD_RANK=2, OMPI_COMM_WORLD_LOCAL_RANK=0, OMPI_COMM_WORLD_NODE_RANK=1)
    assert launch_rank().global_rank == 2 and not is_run_writer()
