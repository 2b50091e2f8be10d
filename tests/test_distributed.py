"""train-task started by torchrun on the CPU (gloo): two ranks learn what one process learns, rank
0 alone writes, and a rank that dies stops the others and leaves the store as it was."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from supsup_cli.errors import ConfigError
from supsup_cli.learn.distributed import RANK_FAULT_ENV, RankGroup, RankInfo, rank_from_env
from supsup_cli.learn.train import CreationOptions, TrainConfig, train_task
from supsup_cli.store import MaskStore

BATCHES = 150
# Generous safety nets for a loaded 2-core machine; no test asserts on elapsed time.
RUN_TIMEOUT = 300


def supsup_env(**extra: str) -> dict[str, str]:
    """This checkout on the path of every rank, one thread each."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", **extra)


def test_rank_from_env() -> None:
    assert rank_from_env({}) is None and rank_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    info = rank_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert info == RankInfo(rank=3, world_size=4, local_rank=1)
    with pytest.raises(ConfigError, match="outside"):
        rank_from_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(ConfigError, match="malformed"):
        rank_from_env({"WORLD_SIZE": "2"})


def test_shards_cover_the_global_batch_and_the_loss_is_its_mean() -> None:
    index = torch.arange(10, 23)  # 13 rows among 3 ranks: 5, 4, 4
    groups = [RankGroup(RankInfo(r, 3, r), torch.device("cpu")) for r in range(3)]
    shards = [g.shard(index) for g in groups]
    assert torch.equal(torch.cat(shards), index) and [len(s) for s in shards] == [5, 4, 4]
    logits, labels = torch.randn(13, 10), torch.randint(0, 10, (13,))
    parts = [
        g.loss(logits[s - 10], labels[s - 10], len(index))
        for g, s in zip(groups, shards, strict=True)
    ]
    mean = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(sum(parts) / 3, mean)  # DDP averages the ranks' gradients
    with pytest.raises(ConfigError, match="cannot be shared"):
        groups[0].shard(index[:2])


def test_two_ranks_under_torchrun_learn_what_one_process_learns(tmp_path: Path) -> None:
    shared = tmp_path / "ddp.zarr"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "supsup_cli", "train-task", str(shared), "--data", "permuted:1",
         "--batches", str(BATCHES), "--json", "--quiet"],
        env=supsup_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone reports
    payload = json.loads(lines[0])
    assert payload["world_size"] == 2 and payload["index"] == 0
    store = MaskStore.open(shared)
    assert store.verify() == [] and store.task_count == 1
    alone = train_task(
        tmp_path / "one.zarr", "permuted:1", CreationOptions(), TrainConfig(batches=BATCHES)
    )
    record = store.task(0)
    assert record.train == alone.record.train  # same seeds, same global batch
    assert abs(record.accuracy - alone.record.accuracy) <= 0.015


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_dead_or_stalled_rank_stops_the_writer_and_the_store_stays(
    tmp_path: Path, fault: str
) -> None:
    """Rank 1 is SIGKILLed (its peer sees the connection close) or SIGSTOPped (only the process
    group's timeout can tell) after 20 batches; rank 0, the writer, must fail and not commit."""
    path = tmp_path / "s.zarr"
    train_task(path, "permuted:1", CreationOptions(), TrainConfig(batches=5))
    before = snapshot(path)
    env = supsup_env(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        WORLD_SIZE="2",
        SUPSUP_DIST_TIMEOUT="5",
        **{RANK_FAULT_ENV: "1:20" + (":stop" if fault == "stop" else "")},
    )
    command = [sys.executable, "-m", "supsup_cli", "train-task", str(path), "--data", "permuted:2",
               "--batches", str(BATCHES), "--quiet"]  # fmt: skip
    ranks = [
        subprocess.Popen(
            command,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    _, writer_err = ranks[0].communicate(timeout=RUN_TIMEOUT)
    if fault == "stop":
        assert ranks[1].poll() is None  # still there, stalled: rank 0 gave up on the timeout
        ranks[1].kill()  # what torchrun's agent does to the others once one rank failed
    ranks[1].communicate(timeout=RUN_TIMEOUT)
    assert ranks[1].returncode == -9
    assert ranks[0].returncode == 2, writer_err[-2000:]
    message = writer_err.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("error: rank 0 of 2 stopped")
    assert snapshot(path) == before
    assert MaskStore.open(path).verify() == []


COLLECTIVES = """
import json, sys, torch
from supsup_cli.errors import ConfigError, SupsupError
from supsup_cli.learn.distributed import process_group, rank_from_env, share_plan

def refuse():
    raise ConfigError("the store says no")

info = rank_from_env()
with process_group(info, torch.device("cpu")) as group:
    mean = group.average(torch.tensor([float(group.rank), 10.0 * group.rank]))
    plan = share_plan(group, lambda: {"first_index": 7})
    try:
        share_plan(group, refuse)
        stopped = None
    except SupsupError as error:
        stopped = f"{type(error).__name__}: {error}"
print(json.dumps({"mean": mean.tolist(), "plan": plan, "stopped": stopped}))
"""


def test_ranks_average_statistics_and_share_rank_0s_plan_or_its_error() -> None:
    env = supsup_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", COLLECTIVES],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [rank.communicate(timeout=RUN_TIMEOUT) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], [err[-2000:] for _, err in outputs]
    zero, one = (json.loads(out) for out, _ in outputs)
    assert zero["mean"] == one["mean"] == [0.5, 5.0]  # per-task BatchNorm statistics, averaged
    assert zero["plan"] == one["plan"] == {"first_index": 7}
    assert zero["stopped"] == "ConfigError: the store says no"  # rank 0's own error
    assert one["stopped"] == "DistributedError: rank 0 stopped: the store says no"
