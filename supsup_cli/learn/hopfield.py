"""Masks kept in a Hopfield energy matrix Psi, and recovered for an unlabelled batch by descent.

Encoding folds each task's +-1 pattern x = 2M - 1 into Psi with a Storkey-style rule, so every
stored pattern is a local minimum of E(s) = -1/2 s^T Psi s. Recovery descends on the scores of a
mask, trading the output entropy H of the batch (which finds the task) for the energy E (which
pulls the mask onto a stored pattern) as the steps go on; the mask is the sign of the scores,
settled by single-bit flips into the local minimum of E it lies next to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..format.bits import pack_mask, unpack_mask
from ..format.header import MAX_HOPFIELD_BITS, mask_checksum
from ..model.nets import PerTaskStats, build_net
from ..model.supermask import scores_to_mask, split_flat
from ..progress import Progress
from ..store import MaskStore
from .choices import DEFAULT_GAMMA, DEFAULT_STARTS, DEFAULT_STEPS, MAX_STARTS
from .data import load_task
from .score_optimizers import ScoreOptimizer

DEFAULT_LR: Final = 500.0
DEFAULT_MOMENTUM: Final = 0.9
DEFAULT_BATCH_SIZE: Final = 128
# Random starts whose minima of E become candidate masks (0: the descent's mask alone).
SYNC_SWEEPS: Final = 20  # whole-pattern sign updates that bring a random start near a minimum
MAX_STEPS: Final = 100_000
MIN_BATCH_SIZE: Final = 2  # batch statistics need two images

StepCallback = Callable[[int, torch.Tensor], None]


# -- the energy --------------------------------------------------------------------------------
def storkey_update(psi: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Psi + (1/d)(x x^T - I - x h^T - h x^T) with h = Psi x, for one +-1 pattern x (d,).

    Computed in float64 and returned in Psi's dtype, so that encoding tasks one call at a time
    or all at once gives the same bytes; x h^T + h x^T is summed first, so Psi stays exactly
    symmetric.
    """
    d = pattern.numel()
    x = pattern.double()  # (d,)
    h = psi.double() @ x  # (d,)
    cross = torch.outer(x, h) + torch.outer(h, x)  # (d, d), symmetric to the last bit
    update = torch.outer(x, x) - torch.eye(d, dtype=torch.float64, device=x.device) - cross
    return (psi.double() + update / d).to(psi.dtype)


def energy(psi: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """E(s) = -1/2 s^T Psi s (a scalar tensor; differentiable in s)."""
    return -0.5 * (s @ (psi @ s))


def settle(psi: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """The local minimum of E reached from a +-1 pattern (d,) by flipping, one at a time, the
    bit that lowers E most (flipping bit i changes E by 2 z_i (Psi z)_i - 2 Psi_ii).

    E falls with every flip, so this ends, on a pattern no single flip improves: a stored
    pattern when the start lies in its basin.
    """
    z = pattern.clone().to(psi.dtype)  # (d,)
    field = psi @ z  # (d,)
    diagonal = psi.diagonal()
    for _ in range(z.numel() * 4):  # a safeguard: E falls with each flip, flips ~ wrong bits
        change = 2 * z * field - 2 * diagonal  # (d,): E after flipping bit i, minus E now
        best = int(torch.argmin(change))
        if change[best] >= 0:
            break
        field -= 2 * z[best] * psi[best]  # Psi is symmetric: its row is the column
        z[best] = -z[best]
    return z


def attractors(psi: torch.Tensor, starts: int, keep: int, seed: int = 0) -> torch.Tensor:
    """The `keep` lowest-energy distinct minima of E reached from `starts` random +-1 patterns,
    (c, d) bool, lowest first.

    A stored pattern and its negation are minima of equal energy, far below the spurious mixture
    minima that random starts also reach (benchmarks/RESULTS.md measures the gap), so keeping
    twice the number of stored patterns keeps the stored ones that were reached. This reads Psi
    only: it works after --drop-masks.
    """
    generator = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 2, (starts, psi.shape[0]), generator=generator).to(psi) * 2 - 1
    for _ in range(SYNC_SWEEPS):
        z = torch.where(z @ psi >= 0, 1.0, -1.0).to(psi)  # Psi is symmetric
    found: dict[bytes, tuple[float, torch.Tensor]] = {}
    for row in z:
        minimum = settle(psi, row)
        bits = (minimum > 0).cpu().numpy()
        found.setdefault(pack_mask(bits).tobytes(), (energy(psi, minimum).item(), minimum > 0))
    ranked = sorted(found.values(), key=lambda item: item[0])[:keep]
    if not ranked:
        return torch.zeros((0, psi.shape[0]), dtype=torch.bool, device=psi.device)
    return torch.stack([mask for _, mask in ranked])


def check_encodable(mask_bits: int, arch: str) -> None:
    """Psi is d x d: refuse networks whose masks are too long to square."""
    if mask_bits > MAX_HOPFIELD_BITS:
        raise ConfigError(
            f"Hopfield encoding needs masks of at most {MAX_HOPFIELD_BITS:,} bits (Psi is d x d); "
            f"{arch} has {mask_bits:,}: use a network with masks on channels, e.g. bn-2048-2048"
        )


@dataclass(frozen=True)
class EncodeOutcome:
    """What hopfield-encode did, and what the store now holds."""

    encoded: tuple[int, ...]  # tasks folded in by this call, in order
    tasks: tuple[int, ...]  # every encoded task, in encoding order
    dropped: tuple[int, ...]  # tasks whose masks are dropped
    mask_bits: int
    psi_bytes: int


def encode_tasks(
    store_path: Path, tasks: Sequence[int] | None = None, drop_masks: bool = False
) -> EncodeOutcome:
    """Fold tasks (default: every task not yet encoded) into Psi, in task order; optionally
    drop the masks of all encoded tasks. Encoding a task twice is refused."""
    store = MaskStore.open(store_path)
    check_encodable(store.header.mask_bits, store.net.arch)
    state = store.header.hopfield
    done = () if state is None else state.tasks
    if tasks is None:
        new = [t for t in range(store.task_count) if t not in done]
    else:
        for task in tasks:
            store.task(task)  # range check
        again = sorted(set(tasks) & set(done))
        if again:
            raise ConfigError(
                f"task(s) {again} are already Hopfield-encoded; encoding a task twice is refused"
            )
        new = sorted(set(tasks))
    if not new and not drop_masks:
        raise ConfigError(
            "nothing to encode: "
            + (f"all {store.task_count} task(s) are already encoded" if done else "no tasks")
        )
    d = store.header.mask_bits
    if new:
        if state is None:
            psi, pattern_sum = np.zeros((d, d), np.float32), np.zeros(d, np.int32)
        else:
            psi, pattern_sum = store.read_hopfield()
        psi_t = torch.from_numpy(psi)  # (d, d) float32
        patterns = unpack_mask(store.read_packed(new), d)  # (n, d) bool, checksums checked
        for bits in patterns:
            x = torch.from_numpy(bits.astype(np.float32) * 2 - 1)  # (d,) +-1
            psi_t = storkey_update(psi_t, x)
            pattern_sum = pattern_sum + x.numpy().astype(np.int32)
        store.commit_hopfield(
            psi_t.numpy(), pattern_sum, (*done, *new), 0 if state is None else state.generation
        )
    if drop_masks:
        store.drop_masks(store.header.hopfield.tasks)
    final = store.header.hopfield
    return EncodeOutcome(tuple(new), final.tasks, final.dropped, d, d * d * 4)


# -- recovery ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecoveryConfig:
    """Descent on `(1 - t/T) H + gamma (t/T) E(2m - 1)`, t = 1..T, SGD with momentum; then
    (settle) single-bit flips down E to its local minimum, which the last, energy-only steps
    of the descent head for but often do not reach in T steps."""

    steps: int = DEFAULT_STEPS
    gamma: float = DEFAULT_GAMMA
    lr: float = DEFAULT_LR
    momentum: float = DEFAULT_MOMENTUM
    settle: bool = True
    starts: int = DEFAULT_STARTS  # random starts for candidate minima of E (0: descent only)

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= MAX_STEPS:
            raise ConfigError(f"steps must be in [1, {MAX_STEPS}], got {self.steps}")
        if not (self.gamma >= 0 and np.isfinite(self.gamma)):
            raise ConfigError(f"gamma must be a finite number >= 0, got {self.gamma}")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.starts <= MAX_STARTS:
            raise ConfigError(f"starts must be in [0, {MAX_STARTS}], got {self.starts}")


def recover_mask(
    net: nn.Module,
    psi: torch.Tensor,
    start: torch.Tensor,
    x: torch.Tensor,
    shapes: Sequence[tuple[int, ...]],
    config: RecoveryConfig = RecoveryConfig(),
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """A mask (d,) bool for the batch x (n, 784), by descent from the scores `start` (d,).

    The mask in the forward pass is 1[score >= 0] with a straight-through gradient, and the
    energy is taken on its +-1 pattern, so E pulls the scores towards a stored pattern at a rate
    that does not grow with them. Nets with per-task statistics normalise by the batch's own
    (the task is unknown). `on_step(t, mask)` sees the mask after each step (before settling).
    """
    if len(x) < MIN_BATCH_SIZE:
        raise InputError(f"Hopfield recovery needs at least {MIN_BATCH_SIZE} images per batch")
    scores = start.detach().clone().float().requires_grad_(True)  # (d,)
    optimizer = ScoreOptimizer([scores], "sgd", config.lr, momentum=config.momentum)
    batch_stats = net.batch_statistics() if isinstance(net, PerTaskStats) else None
    with batch_stats or contextlib.nullcontext():
        for t in range(1, config.steps + 1):
            mask = scores_to_mask(scores, "sign", None)  # (d,) 0/1, straight-through
            weight_h, weight_e = 1 - t / config.steps, config.gamma * t / config.steps
            loss = weight_e * energy(psi, 2 * mask - 1)
            if weight_h > 0:  # the last step is all energy: no need for the network
                log_p = net(x, split_flat(mask, shapes)).log_softmax(dim=1)  # (n, outputs)
                loss = loss + weight_h * -(log_p.exp() * log_p).sum(dim=1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(t, scores.detach() >= 0)
    mask = scores.detach() >= 0  # (d,)
    if config.settle:
        mask = settle(psi, mask.to(psi.dtype) * 2 - 1) > 0
    return mask


@dataclass(frozen=True)
class HopfieldMemory:
    """What recovery reads from a store, loaded once: the net, Psi, the starting scores, and per
    encoded task its classes, statistics, mask fingerprint and (unless dropped) its mask."""

    net: nn.Module
    shapes: tuple[tuple[int, ...], ...]
    psi: torch.Tensor  # (d, d) float32 on the device
    start: torch.Tensor  # (d,): the mean of the encoded +-1 patterns
    tasks: tuple[int, ...]
    classes: dict[int, tuple[int, ...]]
    specs: dict[int, str]  # the data spec each encoded task was trained on
    stats: dict[int, torch.Tensor]
    fingerprints: dict[str, int]  # sha256 of a packed mask -> task
    patterns: dict[int, np.ndarray]  # task -> mask bits (d,) bool, for kept masks only
    candidates: torch.Tensor | None = None  # (c, d) bool: low minima of E found from Psi alone


def load_memory(
    store: MaskStore, device: torch.device | str = "cpu", starts: int = 0
) -> HopfieldMemory:
    """Read Psi and what recovery needs; works as well after --drop-masks. With `starts`, also
    the candidate masks: the low minima of E reached from that many random patterns."""
    if store.header.hopfield is None:
        raise ConfigError(f"{store.path}: no task is Hopfield-encoded (run hopfield-encode first)")
    state = store.header.hopfield
    psi, pattern_sum = store.read_hopfield()
    net = build_net(store.net, device)
    records = {t: store.task(t) for t in state.tasks}
    kept = [t for t in state.tasks if t not in state.dropped]
    patterns = dict(zip(kept, unpack_mask(store.read_packed(kept), psi.shape[0]), strict=True))
    stats = (
        {t: store.read_task_stats(t) for t in state.tasks} if isinstance(net, PerTaskStats) else {}
    )
    psi_t = torch.from_numpy(psi).to(device)
    return HopfieldMemory(
        net=net,
        shapes=tuple(store.net.mask_shapes),
        psi=psi_t,
        start=torch.from_numpy(pattern_sum.astype(np.float32) / len(state.tasks)).to(device),
        tasks=state.tasks,
        classes={t: records[t].classes for t in state.tasks},
        specs={t: records[t].data for t in state.tasks},
        stats=stats,
        fingerprints={records[t].sha256: t for t in state.tasks},
        patterns=patterns,
        candidates=attractors(psi_t, starts, 2 * len(state.tasks)) if starts else None,
    )


@dataclass(frozen=True)
class BatchRecovery:
    """One batch's recovered mask, the task it equals (if any) and the predicted classes."""

    first: int  # index of the batch's first input row
    mask_bits: np.ndarray  # (d,) bool
    chosen_from: str  # "descent", or "minimum" (a minimum of E from a random start had lower H)
    matched: int | None  # the encoded task whose mask the recovered one equals bit for bit
    distances: dict[int, int]  # Hamming distance to each encoded task whose mask is kept
    energy: float  # E of the recovered +-1 pattern
    predictions: torch.Tensor  # (batch,) int64 classes


@torch.no_grad()
def classify(
    memory: HopfieldMemory, mask: torch.Tensor, x: torch.Tensor, matched: int | None
) -> torch.Tensor:
    """Predicted classes of x (n, 784) under a recovered mask (d,) bool.

    A mask that equals a stored task's is that task: its statistics and its classes. Any other
    mask is classified with the batch's own statistics over the classes of all encoded tasks.
    """
    net, masks = memory.net, split_flat(mask.float(), memory.shapes)
    if matched is not None:
        classes = memory.classes[matched]
        if matched in memory.stats:
            net.load_task_stats(memory.stats[matched])
        logits = net(x, masks)  # (n, outputs)
    else:
        classes = tuple(sorted({c for t in memory.tasks for c in memory.classes[t]}))
        batch_stats = net.batch_statistics() if isinstance(net, PerTaskStats) else None
        with batch_stats or contextlib.nullcontext():
            logits = net(x, masks)  # (n, outputs)
    allowed = torch.as_tensor(classes, device=logits.device)
    return allowed[logits[:, allowed].argmax(dim=1)].cpu()


@torch.no_grad()
def batch_entropy(memory: HopfieldMemory, x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean output entropy H of the batch under a mask, with the batch's own statistics (the
    task is unknown), as in the descent."""
    net = memory.net
    batch_stats = net.batch_statistics() if isinstance(net, PerTaskStats) else None
    with batch_stats or contextlib.nullcontext():
        log_p = net(x, split_flat(mask.float(), memory.shapes)).log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).mean().item()


def lowest_entropy_mask(
    memory: HopfieldMemory, x: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, str]:
    """The descent's mask, or the memory's candidate minimum of E under which the batch's
    entropy is lower (the lowest); with where it came from: "descent" or "minimum"."""
    if memory.candidates is None or not len(memory.candidates):
        return mask, "descent"
    values = [batch_entropy(memory, x, m) for m in (mask, *memory.candidates)]
    if min(values[1:]) < values[0]:
        return memory.candidates[int(np.argmin(values[1:]))], "minimum"
    return mask, "descent"


def recover_batch(
    memory: HopfieldMemory,
    x: torch.Tensor,
    first: int = 0,
    config: RecoveryConfig = RecoveryConfig(),
    on_step: StepCallback | None = None,
) -> BatchRecovery:
    """Recover a mask for one batch, name the task it equals, and classify the batch.

    The descent's settled mask competes with the memory's candidate minima of E (if loaded):
    the mask under which the batch's entropy H is lowest wins.
    """
    x = x.to(memory.psi.device)
    mask = recover_mask(memory.net, memory.psi, memory.start, x, memory.shapes, config, on_step)
    mask, chosen_from = lowest_entropy_mask(memory, x, mask)
    bits = mask.cpu().numpy()
    matched = memory.fingerprints.get(mask_checksum(pack_mask(bits)))
    distances = {t: int(np.count_nonzero(p != bits)) for t, p in memory.patterns.items()}
    pattern = 2 * mask.float() - 1  # (d,)
    return BatchRecovery(
        first=first,
        mask_bits=bits,
        chosen_from=chosen_from,
        matched=matched,
        distances=distances,
        energy=energy(memory.psi, pattern).item(),
        predictions=classify(memory, mask, x, matched),
    )


def batch_bounds(count: int, batch_size: int) -> list[tuple[int, int]]:
    """Consecutive (first, end) row ranges of `batch_size`; a last batch too small for batch
    statistics joins the one before."""
    if batch_size < MIN_BATCH_SIZE:
        raise ConfigError(f"batch size must be at least {MIN_BATCH_SIZE} for Hopfield recovery")
    if count < MIN_BATCH_SIZE:
        raise InputError(f"Hopfield recovery needs at least {MIN_BATCH_SIZE} images")
    starts = list(range(0, count, batch_size))
    if count - starts[-1] < MIN_BATCH_SIZE:
        starts.pop()
    return list(zip(starts, [*starts[1:], count], strict=True))


def recover_batches(
    store_path: Path,
    x: torch.Tensor,
    batch_size: int = DEFAULT_BATCH_SIZE,
    config: RecoveryConfig = RecoveryConfig(),
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> list[BatchRecovery]:
    """Hopfield task inference on x (n, 784): one recovered mask per batch of `batch_size` rows
    (a last batch shorter than two rows joins the one before). `progress(rows done, rows)`."""
    bounds = batch_bounds(len(x), batch_size)
    memory = load_memory(MaskStore.open(store_path), device, config.starts)
    results = []
    for first, end in bounds:
        results.append(recover_batch(memory, x[first:end], first, config))
        if progress is not None:
            progress(end, len(x))
    return results


@dataclass(frozen=True)
class SpecRecovery:
    """Hopfield inference on one data spec's test split, in consecutive batches."""

    data: str
    true_tasks: tuple[int, ...]  # encoded tasks trained on this spec (empty: none)
    batches: tuple[BatchRecovery, ...]
    correct: tuple[int, ...]  # images classified right, per batch
    sizes: tuple[int, ...]  # images per batch

    @property
    def task_accuracy(self) -> float | None:
        """Fraction of batches whose recovered mask is one of the true tasks' masks exactly."""
        if not self.true_tasks:
            return None
        return sum(b.matched in self.true_tasks for b in self.batches) / len(self.batches)

    @property
    def class_accuracy(self) -> float:
        return sum(self.correct) / sum(self.sizes)


def recover_specs(
    store_path: Path,
    specs: Sequence[str],
    batch_size: int = DEFAULT_BATCH_SIZE,
    config: RecoveryConfig = RecoveryConfig(),
    data_root: Path | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> list[SpecRecovery]:
    """Recover a mask per test batch of each spec and score it against the task trained there.
    `progress(batches_done, batches_total)`."""
    memory = load_memory(MaskStore.open(store_path), device, config.starts)
    tasks = [load_task(spec, data_root) for spec in specs]
    plans = [batch_bounds(len(t.test_y), batch_size) for t in tasks]
    total, done, results = sum(len(p) for p in plans), 0, []
    for data, plan in zip(tasks, plans, strict=True):
        batches, correct = [], []
        for first, end in plan:
            found = recover_batch(memory, data.test_x[first:end], first, config)
            batches.append(found)
            correct.append(int((found.predictions == data.test_y[first:end]).sum()))
            done += 1
            if progress is not None:
                progress(done, total)
        true = tuple(t for t in memory.tasks if memory.specs[t] == data.spec)
        sizes = tuple(end - first for first, end in plan)
        results.append(SpecRecovery(data.spec, true, tuple(batches), tuple(correct), sizes))
    return results
