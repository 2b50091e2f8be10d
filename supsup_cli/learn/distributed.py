"""One task trained by several processes started by torchrun: PyTorch's own process group and
DistributedDataParallel, with the few decisions supsup adds (who writes, how a batch is shared).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address); a process started
that way with WORLD_SIZE > 1 joins the group. Only rank 0 reads and writes the store: it plans
the task, sends the plan to the others, and commits after training, so a rank that dies leaves
the store as it was.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError, SupsupError, one_line

TIMEOUT_ENV: Final = "SUPSUP_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S: Final = 60.0
# Test hook, not a feature: SUPSUP_FAULT_RANK_BATCH=<rank>:<batch> makes that rank SIGKILL itself
# once it has finished that many batches, <rank>:<batch>:stop makes it stall there (SIGSTOP), so
# that only the timeout can tell (tests/test_distributed.py).
RANK_FAULT_ENV: Final = "SUPSUP_FAULT_RANK_BATCH"


class DistributedError(SupsupError):
    """Another rank failed, died or timed out; this rank stops and writes nothing."""


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int


def rank_from_env(environ: dict[str, str] | None = None) -> RankInfo | None:
    """The torchrun rank of this process, or None when it runs alone (no WORLD_SIZE, or 1)."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        info = RankInfo(int(env["RANK"]), world, int(env.get("LOCAL_RANK", env["RANK"])))
    except (KeyError, ValueError) as error:
        raise ConfigError(
            f"torchrun's RANK, WORLD_SIZE or LOCAL_RANK is malformed ({error})"
        ) from None
    if not 0 <= info.rank < world:
        raise ConfigError(f"RANK {info.rank} is outside WORLD_SIZE {world}")
    return info


def group_timeout() -> timedelta:
    """How long a collective waits for a silent rank before it fails (SUPSUP_DIST_TIMEOUT)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not seconds > 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be > 0, got {raw!r}")
    return timedelta(seconds=seconds)


class RankGroup:
    """This rank's part of one training run: its device, its shard of each batch, the collectives.

    Every rank draws the same global batch (same seed, same order) and keeps its contiguous
    slice; the loss is scaled so that DDP's average of the ranks' gradients is the gradient of
    the global batch's mean loss, whatever the world size.
    """

    def __init__(self, info: RankInfo, device: torch.device) -> None:
        self.rank, self.world_size, self.device = info.rank, info.world_size, device

    @property
    def writes(self) -> bool:
        """Rank 0 alone reads and writes the store, reports progress and prints results."""
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP around the module that holds the trained parameters (the scores); rank 0's
        initial values are broadcast to all ranks here."""
        ids = [self.device] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous part of a global batch's row indices (sizes differ by <= 1)."""
        if len(index) < self.world_size:
            raise ConfigError(
                f"a batch of {len(index)} cannot be shared among {self.world_size} ranks"
            )
        return index.tensor_split(self.world_size)[self.rank]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, global_batch: int) -> torch.Tensor:
        """This shard's summed loss scaled so that the ranks' mean is the global batch's mean."""
        return F.cross_entropy(logits, labels, reduction="sum") * (self.world_size / global_batch)

    def average(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over the ranks (per-task BatchNorm statistics before the commit)."""
        total = tensor.detach().to(self.device, torch.float32).clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return (total / self.world_size).cpu()

    def share(self, payload: Any) -> Any:
        """Rank 0's payload, on every rank (the task's plan: network, rule, seeds)."""
        box = [payload if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def after_batch(self, done: int) -> None:
        """Test hook: kill or stall this rank after `done` batches if RANK_FAULT_ENV says so."""
        fault = os.environ.get(RANK_FAULT_ENV, "").split(":")
        if fault[:2] == [str(self.rank), str(done)]:
            os.kill(os.getpid(), signal.SIGSTOP if fault[2:] == ["stop"] else signal.SIGKILL)


@dataclass(frozen=True)
class Planned:
    """What rank 0 sends before training: its plan, or the one-line error that stopped it."""

    plan: Any = None
    error: str | None = None


def share_plan(group: RankGroup, make_plan: Any) -> Any:
    """Rank 0 makes the plan (reading the store) and sends it; the others receive it. An error on
    rank 0 is raised there and sent, so every rank stops with it instead of waiting."""
    if not group.writes:
        received: Planned = group.share(None)
        if received.error is not None:
            raise DistributedError(f"rank 0 stopped: {received.error}")
        return received.plan
    try:
        plan = make_plan()
    except SupsupError as error:
        group.share(Planned(error=one_line(error)))
        raise
    group.share(Planned(plan=plan))
    return plan


@contextmanager
def process_group(info: RankInfo, device: torch.device) -> Iterator[RankGroup]:
    """Join torchrun's group (nccl on CUDA, gloo on the CPU) for the body, and leave it after.
    A failed collective (a dead rank, a timeout) becomes one DistributedError line; nothing is
    written, since rank 0 commits only after the last collective."""
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, rank=info.rank, world_size=info.world_size, timeout=group_timeout()
    )
    try:
        yield RankGroup(info, device)
    except RuntimeError as error:  # DistError is one; gloo reports a dead peer as a plain one
        raise DistributedError(
            f"rank {info.rank} of {info.world_size} stopped: {one_line(error)[:300]} "
            f"(a rank that dies, or stalls past {TIMEOUT_ENV}, stops them all)"
        ) from error
    finally:
        dist.destroy_process_group()
