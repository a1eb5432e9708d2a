"""Multi-node through torchrun into one run folder (two "nodes" on this machine, as two nodes on a shared
filesystem are): both processes start, exactly one of them writes the folder's own files, and the training
loss at every step is the single-process loss with the same global batch."""

import csv
import json
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.helpers.cli import cli_env, run_script

ARGS = [
    "data.generator.num_examples=40",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "data.global_batch_size=8",
    "data.eval_batch_size=4",
    "validate_before_fit=false",
    "export=false",
    "callbacks.sample_table=null",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "+module.optimizer.eps=1e-6",  # see tests/test_ddp.py: keeps the comparison about the launcher
]


def _losses(run_dir):
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_into_one_folder_equal_one_process(tmp_path):
    single = tmp_path / "single"
    r = run_script("train.py", [*ARGS, f"hydra.run.dir={single}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    run, port = tmp_path / "two_nodes", _free_port()
    # what torchrun sets and Lightning's own launcher does not: RANK / GROUP_RANK, no NODE_RANK
    env = {k: v for k, v in cli_env(tmp_path).items() if k not in ("NODE_RANK", "LOCAL_RANK", "RANK", "WORLD_SIZE")}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                str(ROOT / "train.py"),
                "trainer.strategy=ddp",
                "trainer.devices=1",
                "trainer.num_nodes=2",
                *ARGS,
                f"hydra.run.dir={run}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=600)[0] for p in nodes]
    for rank, (p, out) in enumerate(zip(nodes, outs)):
        assert p.returncode == 0, f"node {rank}:\n{out[-3000:]}"
        assert "another run is using" not in out
    # one writer: one start recorded, the summary printed once (by node 0)
    history = [json.loads(line) for line in (run / "run_history.jsonl").read_text().splitlines()]
    assert [h["kind"] for h in history] == ["start"]
    assert "val/loss" in outs[0] and "val/loss " not in outs[1]
    l1, l2 = _losses(single), _losses(run)
    assert sorted(l1) == sorted(l2) == [0, 1, 2]
    for step in l1:
        assert l2[step] == pytest.approx(l1[step], abs=1e-5, rel=1e-5), (step, l1[step], l2[step])
