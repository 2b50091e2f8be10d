"""Task inference: which stored mask fits an unlabelled batch (or image)?

The superposition is W ⊙ Σ αᵢ Mᵢ with α = 1/k over the k stored tasks. Its mean mask comes from
the store's per-weight counts, so k float masks are never built: the mean-mask sites are leaf
tensors, one backward gives g = ∂H/∂mask = ∂H/∂W_eff ⊙ W (a D-vector), and
∂H/∂αᵢ = ⟨g, Mᵢ⟩ is one product of the packed k × D bit matrix with g (bits.packed_matmul).
Methods (one-shot, binary, exhaustive) and objectives (H, G) live in name registries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..format.architectures import NetConfig
from ..format.bits import unpack_mask
from ..kernels.products import packed_matmul, packed_rmatvec
from ..kernels.torch_products import packed_matmul_torch, packed_rmatvec_torch
from ..model.nets import PerTaskStats, build_net
from ..model.supermask import bits_to_masks, split_flat
from ..store import MaskStore
from .data import load_task
from .train import predict

PER_MODES: Final = ("batch", "image")
MAX_QUERY_BATCH: Final = 65_536
MAX_TRIALS: Final = 1_000_000
# Images whose per-example gradients (chunk x D floats) are held at once.
PER_IMAGE_CHUNK: Final = 64


# -- objectives ---------------------------------------------------------------------------------


def entropy(logits: torch.Tensor, superfluous: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG001
    """H per example: entropy of softmax(logits) (n, s) -> (n,)."""
    log_p = F.log_softmax(logits, dim=1)  # (n, s)
    return -(log_p.exp() * log_p).sum(dim=1)


def superfluous_logsumexp(logits: torch.Tensor, superfluous: torch.Tensor | None) -> torch.Tensor:
    """G per example: logsumexp over the superfluous outputs only, so only they carry gradient.

    Training pushes unused outputs down under the right mask; other masks leave them high.
    """
    if superfluous is None or superfluous.numel() == 0:
        raise ConfigError("the G objective needs superfluous outputs")
    return logits[:, superfluous].logsumexp(dim=1)  # (n,)


@dataclass(frozen=True)
class Objective:
    """A per-example score of the logits whose batch mean task inference minimises."""

    name: str
    help: str
    per_example: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    needs_superfluous: bool = False


OBJECTIVES: Final[dict[str, Objective]] = {
    o.name: o
    for o in (
        Objective("H", "entropy of the softmax outputs (low when the mask fits)", entropy),
        Objective(
            "G",
            "logsumexp of the superfluous outputs (needs a store made with more outputs than "
            "classes, e.g. --outputs 100)",
            superfluous_logsumexp,
            needs_superfluous=True,
        ),
    )
}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def superfluous_outputs(outputs: int, classes: Sequence[int]) -> torch.Tensor:
    """Output indices that no task uses as a class (int64, possibly empty)."""
    used = set(int(c) for c in classes)
    return torch.tensor([o for o in range(outputs) if o not in used], dtype=torch.int64)


# -- the mask bank: what inference needs from a store, loaded once --------------------------------


@dataclass(frozen=True, eq=False)
class MaskBank:
    """Packed masks, their counts, classes and the fixed network, on one device.

    A long-running process keeps one bank and queries it many times (the warm path).
    """

    config: NetConfig
    net: nn.Module
    packed: np.ndarray  # (k, ceil(D/8)) uint8, CPU
    counts: np.ndarray  # (D,) uint32: how many tasks keep each weight
    task_classes: tuple[tuple[int, ...], ...]
    device: torch.device
    # (k, ceil(D/8)) uint8 where the torch products run (set for non-CPU devices; None: numpy).
    packed_on_device: torch.Tensor | None = None
    task_specs: tuple[str, ...] = ()  # the data spec each task was trained on, when known
    # The store's task index of each row (rows skip tasks whose masks were dropped); () = 0..k-1.
    task_ids: tuple[int, ...] = ()
    task_stats: np.ndarray | None = None  # (k, S) float32 per-task statistics (BatchNorm nets)
    # Set: the masks stay in this store and every product reads them in blocks (`packed` is
    # empty), so memory does not grow with the number of tasks; each query re-reads them.
    source: MaskStore | None = None

    @property
    def task_count(self) -> int:
        return len(self.task_ids) if self.source is not None else self.packed.shape[0]

    @property
    def mask_bits(self) -> int:
        return self.config.mask_bits

    @classmethod
    def from_store(
        cls, store: MaskStore, device: torch.device | str = "cpu", stream: bool = False
    ) -> MaskBank:
        """Load the committed tasks whose masks the store keeps (checksums checked by the store);
        with `stream`, leave the masks in the store and read them for each product instead.

        Tasks whose masks were dropped after Hopfield encoding cannot take part: their bits are
        gone, so the bank skips them and sums its counts from the kept masks.
        """
        if store.task_count == 0:
            raise ConfigError(f"{store.path}: the store holds no tasks; train one first")
        dropped = set(store.dropped_tasks())
        kept = [i for i in range(store.task_count) if i not in dropped]
        if not kept:
            raise ConfigError(
                f"{store.path}: every task's mask was dropped after Hopfield encoding; "
                "only Hopfield recovery can infer its tasks"
            )
        records = store.tasks()
        stats = None
        if store.net.stats_size:
            stats = np.stack([store.read_task_stats(i) for i in kept])
        if stream:
            counts = store.mask_counts()
            if dropped:  # the stored counts include the dropped masks: sum the kept ones
                counts = np.zeros(store.net.mask_bits, dtype=np.uint32)
                for block in store.iter_packed(kept):
                    counts += mask_counts_of(block, store.net.mask_bits)
            device = torch.device(device)
            return cls(
                store.net,
                build_net(store.net, device),
                np.zeros((0, store.header.mask_bytes), dtype=np.uint8),
                counts,
                tuple(tuple(records[i].classes) for i in kept),
                device,
                task_specs=tuple(records[i].data for i in kept),
                task_ids=tuple(kept),
                task_stats=stats,
                source=store,
            )
        return cls.from_packed(
            store.net,
            store.read_packed(kept),
            [records[i].classes for i in kept],
            counts=None if dropped else store.mask_counts(),
            device=device,
            task_specs=[records[i].data for i in kept],
            task_ids=kept,
            task_stats=stats,
        )

    @classmethod
    def from_packed(
        cls,
        config: NetConfig,
        packed: np.ndarray,
        task_classes: Sequence[Sequence[int]],
        *,
        counts: np.ndarray | None = None,
        device: torch.device | str = "cpu",
        task_specs: Sequence[str] = (),
        task_ids: Sequence[int] = (),
        task_stats: np.ndarray | None = None,
    ) -> MaskBank:
        """A bank from packed masks in memory; counts are summed from the bits when not given."""
        device = torch.device(device)
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        if len(task_classes) != packed.shape[0]:
            raise ValueError(f"{len(task_classes)} class lists for {packed.shape[0]} masks")
        if counts is None:
            counts = mask_counts_of(packed, config.mask_bits)
        on_device = None if device.type == "cpu" else torch.from_numpy(packed).to(device)
        return cls(
            config,
            build_net(config, device),
            packed,
            np.asarray(counts),
            tuple(tuple(int(c) for c in classes) for classes in task_classes),
            device,
            on_device,
            tuple(task_specs),
            tuple(int(i) for i in task_ids),
            task_stats,
        )

    def superfluous(self) -> torch.Tensor:
        """Outputs that no stored task uses (on the bank's device)."""
        used = [c for classes in self.task_classes for c in classes]
        return superfluous_outputs(self.config.outputs, used).to(self.device)

    def products(self, matrix: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        """⟨Mᵢ, matrix⟩ for the masks `rows` (all by default): (D,) or (D, m) -> (r,) or (r, m)."""
        if self.source is not None:
            parts = [self._block_products(b, matrix) for b in self._stored_blocks(rows)]
            return torch.cat(parts) if parts else torch.zeros((0, *matrix.shape[1:]))
        if self.packed_on_device is None:  # a CPU bank
            return self._block_products(self.packed if rows is None else self.packed[rows], matrix)
        packed_t = self.packed_on_device
        if rows is not None:
            packed_t = packed_t[torch.as_tensor(rows, device=self.device)]
        return packed_matmul_torch(packed_t, matrix.detach(), self.mask_bits)

    def mean_mask(self, rows: np.ndarray | None = None) -> torch.Tensor:
        """The superposition's mask Σ αᵢ Mᵢ with α = 1/|rows|, float32 (D,) on the device."""
        if rows is None:
            total = torch.from_numpy(self.counts.astype(np.float32))
            return (total / self.task_count).to(self.device)
        if self.source is not None:
            total = torch.zeros(self.mask_bits)
            for block in self._stored_blocks(rows):
                ones = np.ones(len(block), dtype=np.float32)
                total += torch.from_numpy(packed_rmatvec(block, ones, self.mask_bits))
            return (total / len(rows)).to(self.device)
        if self.packed_on_device is None:
            ones = np.ones(len(rows), dtype=np.float32)
            total = torch.from_numpy(packed_rmatvec(self.packed[rows], ones, self.mask_bits))
        else:
            picked = self.packed_on_device[torch.as_tensor(rows, device=self.device)]
            ones = torch.ones(len(rows), device=self.device)
            total = packed_rmatvec_torch(picked, ones, self.mask_bits)
        return (total / len(rows)).to(self.device)

    def masks_of(self, row: int) -> list[torch.Tensor]:
        """One row's float 0/1 masks, one per site, on the device."""
        packed = (
            self.packed[row]
            if self.source is None
            else self.source.read_packed([self.task_id(row)])[0]
        )
        bits = unpack_mask(packed, self.mask_bits)
        return bits_to_masks(bits, self.config.mask_shapes, self.device)

    def use_task_stats(self, row: int) -> None:
        """Load one row's normalisation statistics into the net (nets that keep them)."""
        if self.task_stats is not None:
            self.net.load_task_stats(torch.from_numpy(self.task_stats[row]).to(self.device))

    def task_id(self, row: int) -> int:
        """The store's index of the task in a row."""
        return self.task_ids[row] if self.task_ids else row

    def _stored_blocks(self, rows: np.ndarray | None) -> Iterator[np.ndarray]:
        """The masks of `rows` (all by default) read from the store, in blocks, in order."""
        wanted = self.task_ids if rows is None else [self.task_ids[int(r)] for r in rows]
        return self.source.iter_packed(wanted)

    def _block_products(self, block: np.ndarray, matrix: torch.Tensor) -> torch.Tensor:
        """⟨Mᵢ, matrix⟩ for packed masks in host memory, computed on the bank's device."""
        if self.device.type == "cpu":
            return torch.from_numpy(packed_matmul(block, matrix.detach().numpy(), self.mask_bits))
        packed_t = torch.from_numpy(block).to(self.device)
        return packed_matmul_torch(packed_t, matrix.detach(), self.mask_bits)


def mask_counts_of(packed: np.ndarray, mask_bits: int) -> np.ndarray:
    """Per-weight counts Σᵢ Mᵢ of packed masks (uint32 (D,)), without unpacking all at once."""
    ones = np.ones(packed.shape[0], dtype=np.float32)
    return np.rint(packed_rmatvec(packed, ones, mask_bits)).astype(np.uint32)


# -- gradients of the objective with respect to the mask -----------------------------------------


def mask_gradient(
    net: nn.Module,
    mean_mask: torch.Tensor,
    x: torch.Tensor,
    objective: Objective,
    superfluous: torch.Tensor | None = None,
) -> torch.Tensor:
    """g = ∂(batch mean objective)/∂mask at a fractional mask (D,): ∂/∂W_eff ⊙ W, flat (D,)."""
    leaf = mean_mask.detach().clone().requires_grad_(True)  # (D,)
    masks = split_flat(leaf, net.config.mask_shapes)
    with _task_unknown(net):
        value = objective.per_example(net(x, masks), superfluous).mean()
    (grad,) = torch.autograd.grad(value, leaf)
    return grad  # (D,)


def _task_unknown(net: nn.Module) -> AbstractContextManager:
    """Nets with per-task normalisation statistics normalise by the batch's own statistics while
    the task is unknown (the superposition has no statistics of its own)."""
    return net.batch_statistics() if isinstance(net, PerTaskStats) else nullcontext()


def per_example_mask_gradients(
    net: nn.Module,
    mean_mask: torch.Tensor,
    x: torch.Tensor,
    objective: Objective,
    superfluous: torch.Tensor | None = None,
) -> torch.Tensor:
    """One gradient per image, (n, D): vmap of the per-example objective's mask gradient."""
    shapes = net.config.mask_shapes

    def one(flat: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        logits = net(image.unsqueeze(0), split_flat(flat, shapes))  # (1, s)
        return objective.per_example(logits, superfluous)[0]

    gradient = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0))
    return gradient(mean_mask.detach(), x)  # (n, D)


def alpha_gradient(
    net: nn.Module,
    packed: np.ndarray,
    x: torch.Tensor,
    *,
    objective: str = "H",
    classes: Sequence[int] | None = None,
    counts: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """∂objective/∂αᵢ at α = 1/k for the k packed masks (k,): the one-shot score, lower fits better.

    `net` is a built network on `device`; `classes` are the outputs tasks use (needed for G: the
    rest are superfluous); `counts` (D,) are the per-weight mask counts when already known.
    """
    device = torch.device(device)
    chosen = get_objective(objective)
    mask_bits = net.config.mask_bits
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    k = packed.shape[0]
    if k == 0:
        raise ConfigError("no masks to infer a task from")
    if counts is None:
        counts = mask_counts_of(packed, mask_bits)
    superfluous = None
    if chosen.needs_superfluous:
        if classes is None:
            raise ConfigError("the G objective needs the classes the tasks use")
        superfluous = _checked_superfluous(net.config.outputs, classes).to(device)
    mean = torch.from_numpy(np.asarray(counts, dtype=np.float32) / k).to(device)  # (D,)
    grad = mask_gradient(net, mean, _as_input(x, device), chosen, superfluous)  # (D,)
    if device.type == "cpu":
        return torch.from_numpy(packed_matmul(packed, grad.numpy(), mask_bits))
    return packed_matmul_torch(torch.from_numpy(packed).to(device), grad, mask_bits)


def _checked_superfluous(outputs: int, classes: Sequence[int]) -> torch.Tensor:
    superfluous = superfluous_outputs(outputs, classes)
    if superfluous.numel() == 0:
        raise ConfigError(
            f"the G objective needs superfluous outputs, but the tasks use all {outputs} outputs; "
            "make the store with more outputs than classes (e.g. --outputs 100) or use H"
        )
    return superfluous


def _as_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.ndim != 2 or x.shape[1] != 784 or x.shape[0] == 0:
        raise ConfigError(f"expected images as a (n >= 1, 784) tensor, got {tuple(x.shape)}")
    return x.to(device)


# -- methods ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The bank row chosen for a batch or an image (the store's task index unless masks were
    dropped; see MaskBank.task_id) and its confidence (softmax of -score)."""

    task: int
    confidence: float


@dataclass(frozen=True)
class Query:
    """What a method is asked: the bank, the images (n, 784) on its device, the objective."""

    bank: MaskBank
    x: torch.Tensor
    objective: Objective
    superfluous: torch.Tensor | None


@dataclass(frozen=True)
class Method:
    """An inference method: one decision for a whole batch, and optionally a vectorised
    per-image form (otherwise each image is a batch of one)."""

    name: str
    help: str
    batch: Callable[[Query], Decision]
    images: Callable[[Query], list[Decision]] | None = None


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method to the registry `--method` picks from (names must be new)."""
    if method.name in METHODS:
        raise ValueError(f"inference method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown inference method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]


def _decide(scores: torch.Tensor, tasks: np.ndarray | None = None) -> Decision:
    """Lowest score wins; confidence is its softmax(-scores) probability."""
    probabilities = torch.softmax(-scores.double().cpu(), dim=0)  # (r,)
    best = int(torch.argmin(scores.cpu()))
    task = best if tasks is None else int(tasks[best])
    return Decision(task, float(probabilities[best]))


def one_shot_batch(query: Query) -> Decision:
    """argmax of -∂H/∂α over the stored tasks: one forward, one backward, one packed product."""
    bank = query.bank
    grad = mask_gradient(bank.net, bank.mean_mask(), query.x, query.objective, query.superfluous)
    return _decide(bank.products(grad))


def one_shot_images(query: Query) -> list[Decision]:
    """One-shot per image: the (n, D) per-example gradients times the packed masks, blocked."""
    bank, mean = query.bank, query.bank.mean_mask()
    decisions = []
    for part in query.x.split(PER_IMAGE_CHUNK):
        grads = per_example_mask_gradients(
            bank.net, mean, part, query.objective, query.superfluous
        )  # (c, D)
        scores = bank.products(grads.T.contiguous())  # (k, c)
        decisions.extend(_decide(column) for column in scores.T)
    return decisions


def binary_batch(query: Query) -> Decision:
    """Halve the candidates each step (keep the ceil(m/2) lowest gradients), re-forming the
    superposition of the survivors; ceil(log2 k) steps for any k."""
    bank = query.bank
    alive = np.arange(bank.task_count)
    decision = Decision(0, 1.0)
    while len(alive) > 1:
        rows = None if len(alive) == bank.task_count else alive
        mean = bank.mean_mask(rows)
        grad = mask_gradient(bank.net, mean, query.x, query.objective, query.superfluous)
        scores = bank.products(grad, rows)  # (m,)
        decision = _decide(scores, alive)
        order = np.argsort(scores.cpu().numpy(), kind="stable")
        alive = np.sort(alive[order[: (len(alive) + 1) // 2]])
    # The last step compares two candidates and keeps the one _decide picked.
    return Decision(int(alive[0]), decision.confidence)


def exhaustive_values(query: Query) -> torch.Tensor:
    """The objective of every image under every stored mask alone: (n, k) (k forward passes)."""
    bank = query.bank
    columns = []
    with torch.no_grad():
        for row in range(bank.task_count):
            bank.use_task_stats(row)
            logits = bank.net(query.x, bank.masks_of(row))  # (n, s)
            columns.append(query.objective.per_example(logits, query.superfluous))
    return torch.stack(columns, dim=1)  # (n, k)


def exhaustive_batch(query: Query) -> Decision:
    """A forward pass per mask; the lowest batch-mean objective wins (the slow, honest baseline)."""
    return _decide(exhaustive_values(query).mean(dim=0))


def exhaustive_images(query: Query) -> list[Decision]:
    return [_decide(row) for row in exhaustive_values(query)]


register_method(
    Method(
        "one-shot",
        "one gradient of the objective at the uniform superposition (fast)",
        one_shot_batch,
        one_shot_images,
    )
)
register_method(
    Method(
        "binary",
        "halve the candidate tasks log2(k) times by the superposition's gradient",
        binary_batch,
    )
)
register_method(
    Method(
        "exhaustive",
        "one forward pass per stored mask, lowest objective wins (slow baseline)",
        exhaustive_batch,
        exhaustive_images,
    )
)


# -- the one entry point --------------------------------------------------------------------------


@dataclass(frozen=True)
class Inference:
    """Per image: the inferred task, its confidence and the class predicted with that task's mask
    (argmax over the task's classes). In batch mode every image carries the batch's task."""

    method: str
    objective: str
    per: str
    tasks: np.ndarray  # (n,) int64
    confidences: np.ndarray  # (n,) float64
    predictions: np.ndarray  # (n,) int64

    @property
    def task(self) -> int:
        """The batch's task (batch mode; in image mode, the most frequent one)."""
        return int(np.bincount(self.tasks).argmax())


def infer_task(
    store: MaskStore | MaskBank,
    x: torch.Tensor,
    *,
    method: str = "one-shot",
    objective: str = "H",
    per: str = "batch",
    device: torch.device | str = "cpu",
) -> Inference:
    """Infer the task of a batch (or of each image) of normalised images (n, 784), then classify.

    Pass a MaskBank to reuse loaded masks across calls (its device wins over `device`).
    """
    chosen_method, chosen_objective = get_method(method), get_objective(objective)
    if per not in PER_MODES:
        raise ConfigError(f"unknown --per {per!r}; valid: {', '.join(PER_MODES)}")
    bank = store if isinstance(store, MaskBank) else MaskBank.from_store(store, device)
    superfluous = None
    if chosen_objective.needs_superfluous:
        superfluous = _checked_superfluous(
            bank.config.outputs, [c for cs in bank.task_classes for c in cs]
        ).to(bank.device)
    x = _as_input(x, bank.device)
    if isinstance(bank.net, PerTaskStats) and (per == "image" or len(x) < 2):
        raise ConfigError(
            f"{bank.config.arch} normalises by batch statistics while the task is unknown: "
            "infer per batch, with at least 2 images"
        )
    if per == "batch":
        decision = chosen_method.batch(Query(bank, x, chosen_objective, superfluous))
        decisions = [decision] * len(x)
    elif chosen_method.images is not None:
        decisions = chosen_method.images(Query(bank, x, chosen_objective, superfluous))
    else:
        decisions = [
            chosen_method.batch(Query(bank, image, chosen_objective, superfluous))
            for image in x.split(1)
        ]
    rows = np.array([d.task for d in decisions], dtype=np.int64)
    confidences = np.array([d.confidence for d in decisions], dtype=np.float64)
    predictions = classify(bank, x, rows).numpy()
    tasks = np.array([bank.task_id(int(r)) for r in rows], dtype=np.int64)
    return Inference(method, objective, per, tasks, confidences, predictions)


def classify(bank: MaskBank, x: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """Each image's class under its bank row's mask, argmax restricted to that task's classes."""
    predictions = torch.empty(len(x), dtype=torch.int64)
    for row in np.unique(rows):
        images = torch.from_numpy(np.flatnonzero(rows == row))
        bank.use_task_stats(int(row))
        predictions[images] = predict(
            bank.net,
            bank.masks_of(int(row)),
            x[images.to(x.device)],
            bank.task_classes[row],
            bank.device,
        )
    return predictions


# -- scoring inference on labelled data specs ------------------------------------------------------


@dataclass(frozen=True)
class SpecScore:
    """How inference did on one data spec's test split, task unknown (scenario GNu)."""

    data: str
    true_tasks: tuple[int, ...]  # stored tasks trained on this spec (empty: none)
    decisions: int  # batches (per batch) or images (per image) decided
    correct_decisions: int  # decisions naming one of the true tasks
    images: int
    correct_classes: int  # images classified right with the inferred task's mask

    @property
    def task_accuracy(self) -> float | None:
        return self.correct_decisions / self.decisions if self.true_tasks else None

    @property
    def class_accuracy(self) -> float:
        return self.correct_classes / self.images


ProgressCallback = Callable[[int, int], None]  # (batches done, batches in all)


def score_specs(
    bank: MaskBank,
    specs: Sequence[str],
    *,
    batch: int = 128,
    trials: int = 0,
    seed: int = 0,
    method: str = "one-shot",
    objective: str = "H",
    per: str = "batch",
    data_root: Path | None = None,
    progress: ProgressCallback | None = None,
) -> list[SpecScore]:
    """Infer the task of test batches of each spec and compare with the task trained on it.

    trials = 0 walks the test split in consecutive batches; trials > 0 draws that many random
    batches of `batch` distinct images (seeded, so runs repeat).
    """
    if not 1 <= batch <= MAX_QUERY_BATCH:
        raise ConfigError(f"batch must be in [1, {MAX_QUERY_BATCH}], got {batch}")
    if not 0 <= trials <= MAX_TRIALS:
        raise ConfigError(f"trials must be in [0, {MAX_TRIALS}], got {trials}")
    tasks = [load_task(spec, data_root) for spec in specs]
    plans = [_batches(len(t.test_y), batch, trials, seed + i) for i, t in enumerate(tasks)]
    total, done = sum(len(p) for p in plans), 0
    scores = []
    for data, plan in zip(tasks, plans, strict=True):
        true = tuple(bank.task_id(r) for r, spec in enumerate(bank.task_specs) if spec == data.spec)
        decisions = correct_decisions = images = correct_classes = 0
        for index in plan:
            result = infer_task(
                bank, data.test_x[index], method=method, objective=objective, per=per
            )
            picked = result.tasks[:1] if per == "batch" else result.tasks
            decisions += len(picked)
            correct_decisions += int(np.isin(picked, true).sum())
            images += len(index)
            correct_classes += int((result.predictions == data.test_y[index].numpy()).sum())
            done += 1
            if progress is not None:
                progress(done, total)
        scores.append(
            SpecScore(data.spec, true, decisions, correct_decisions, images, correct_classes)
        )
    return scores


def _batches(count: int, batch: int, trials: int, seed: int) -> list[torch.Tensor]:
    if count == 0:
        raise ConfigError("the data spec has no test images")
    if trials == 0:
        return list(torch.arange(count).split(batch))
    generator = np.random.Generator(np.random.PCG64(seed))
    size = min(batch, count)
    return [torch.from_numpy(generator.choice(count, size, replace=False)) for _ in range(trials)]
