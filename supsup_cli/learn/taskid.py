"""Task inference: which stored mask fits an unlabelled batch (or image)?

The superposition is W ⊙ Σ αᵢ Mᵢ with α = 1/k over the k stored tasks. Its mean mask comes from
the store's per-weight counts, so k float masks are never built: the mean-mask sites are leaf
tensors, one backward gives g = ∂H/∂mask = ∂H/∂W_eff ⊙ W (a D-vector, objectives.py), and
∂H/∂αᵢ = ⟨g, Mᵢ⟩ is one product of the packed k × D bit matrix with g (mask_banks.py).
Methods (one-shot, binary, exhaustive) and objectives (H, G) live in name registries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..model.nets import PerTaskStats
from ..store import MaskStore
from .choices import CONFIDENCE_TEMPERATURE, PER_MODES
from .choices import METHODS as METHOD_HELP
from .data import load_task
from .mask_banks import MaskBank, host_products, mask_counts_of
from .objectives import (
    Objective,
    as_input,
    checked_superfluous,
    get_objective,
    mask_gradient,
    per_example_gradient_blocks,
)
from .train import predict

MAX_QUERY_BATCH: Final = 65_536
MAX_TRIALS: Final = 1_000_000
# Images answered by one pass over the masks (their gradients are built in blocks of D).
PER_IMAGE_CHUNK: Final = 512


# -- the one-shot score over packed masks, without a bank ------------------------------------


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
        superfluous = checked_superfluous(net.config.outputs, classes).to(device)
    mean = torch.from_numpy(np.asarray(counts, dtype=np.float32) / k).to(device)  # (D,)
    grad = mask_gradient(
        net, mean, as_input(x, device, net.config.inputs), chosen, superfluous
    )  # (D,)
    return host_products(packed, grad, device, mask_bits)


# -- methods ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """The bank row chosen for a batch or an image (the store's task index unless masks were
    dropped; see MaskBank.task_id), its confidence (softmax of -score / T, CONFIDENCE_TEMPERATURE)
    and its margin: the runner-up's score minus the winner's (None with one candidate)."""

    task: int
    confidence: float
    margin: float | None = None


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
    """Lowest score wins; confidence is its softmax(-scores / T) probability, margin the gap to
    the runner-up in the objective's own units."""
    scores = scores.double().cpu()
    probabilities = torch.softmax(-scores / CONFIDENCE_TEMPERATURE, dim=0)  # (r,)
    best = int(torch.argmin(scores))
    task = best if tasks is None else int(tasks[best])
    margin = None
    if len(scores) > 1:
        lowest_two = torch.topk(scores, 2, largest=False).values
        margin = float(lowest_two[1] - lowest_two[0])
    return Decision(task, float(probabilities[best]), margin)


def one_shot_batch(query: Query) -> Decision:
    """argmax of -∂H/∂α over the stored tasks: one forward, one backward, one packed product."""
    bank = query.bank
    grad = mask_gradient(bank.net, bank.mean_mask(), query.x, query.objective, query.superfluous)
    return _decide(bank.products(grad))


def one_shot_images(query: Query) -> list[Decision]:
    """One-shot per image: one forward and one backward give every image's mask gradient (outer
    products, objectives.py), streamed block by block of D into one n-column product."""
    bank, mean = query.bank, query.bank.mean_mask()
    decisions = []
    for part in query.x.split(PER_IMAGE_CHUNK):
        blocks = per_example_gradient_blocks(
            bank.net, mean, part, query.objective, query.superfluous
        )
        scores = bank.block_products(blocks, len(part))  # (k, c)
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
    return Decision(int(alive[0]), decision.confidence, decision.margin)


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
        METHOD_HELP["one-shot"],
        one_shot_batch,
        one_shot_images,
    )
)
register_method(
    Method(
        "binary",
        METHOD_HELP["binary"],
        binary_batch,
    )
)
register_method(
    Method(
        "exhaustive",
        METHOD_HELP["exhaustive"],
        exhaustive_batch,
        exhaustive_images,
    )
)


# -- the one entry point --------------------------------------------------------------------------


@dataclass(frozen=True)
class Inference:
    """Per image: the inferred task, its confidence, its margin (NaN with one stored task) and the
    class predicted with that task's mask (argmax over the task's classes). In batch mode every
    image carries the batch's task."""

    method: str
    objective: str
    per: str
    tasks: np.ndarray  # (n,) int64
    confidences: np.ndarray  # (n,) float64
    predictions: np.ndarray  # (n,) int64
    margins: np.ndarray | None = None  # (n,) float64

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
    """Infer the task of a batch (or of each image) of normalised images (n, inputs), then classify.

    Pass a MaskBank to reuse loaded masks across calls (its device wins over `device`).
    """
    chosen_method, chosen_objective = get_method(method), get_objective(objective)
    if per not in PER_MODES:
        raise ConfigError(f"unknown --per {per!r}; valid: {', '.join(PER_MODES)}")
    bank = store if isinstance(store, MaskBank) else MaskBank.from_store(store, device)
    superfluous = None
    if chosen_objective.needs_superfluous:
        superfluous = checked_superfluous(
            bank.config.outputs, [c for cs in bank.task_classes for c in cs]
        ).to(bank.device)
    x = as_input(x, bank.device, bank.config.inputs)
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
    margins = np.array([np.nan if d.margin is None else d.margin for d in decisions])
    predictions = classify(bank, x, rows).numpy()
    tasks = np.array([bank.task_id(int(r)) for r in rows], dtype=np.int64)
    return Inference(method, objective, per, tasks, confidences, predictions, margins)


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
    tasks = [load_task(spec, data_root, bank.config.shape) for spec in specs]
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
