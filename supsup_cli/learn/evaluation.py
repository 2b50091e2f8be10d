"""Evaluating a store over many tasks: accuracy with the task given (GG) or inferred (GNu),
task-id accuracy and confusion, forgetting, and bytes per task, as one reproducible report.

Forgetting is measured, not assumed: each task's accuracy now is compared with the accuracy
recorded when it was trained (GG), and with checkpoints the store is re-evaluated as it stood
after its first k tasks (GNu: task inference among those k only), which gives the accuracy matrix
behind "accuracy vs number of tasks" curves.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from ..errors import ConfigError
from ..format.bits import unpack_mask
from ..format.header import TaskRecord
from ..model.nets import PerTaskStats
from ..progress import Progress
from ..store import MaskStore
from .choices import SCENARIOS
from .data import DISK_KINDS, image_source, load_eval_data, source_specs
from .mask_banks import MaskBank
from .objectives import get_objective
from .taskid import get_method, infer_task
from .train import check_classes, evaluate

SCHEMA: Final = "supsup-eval"
SCHEMA_VERSION: Final = 1
MAX_CHECKPOINTS: Final = 1_000
CSV_COLUMNS: Final = (
    "tasks_learned",
    "task",
    "data",
    "tested_on",
    "examples",
    "accuracy",
    "accuracy_gg",
    "taskid_accuracy",
    "accuracy_at_training",
    "forgetting",
    "scenario",
    "method",
    "objective",
    "batch",
    "mask_bytes_per_task",
    "store",
    "store_tasks_sha256",
    "command",
)

# (bank of the first k tasks, images (n, 784)) -> (inferred task (n,), predicted class (n,))
InferFunction = Callable[[MaskBank, torch.Tensor], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation measures (recorded in its report)."""

    scenario: str = "GG"
    method: str = "one-shot"
    objective: str = "H"
    batch: int = 128
    images: int | None = None
    checkpoints: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ConfigError(f"unknown scenario {self.scenario!r}; valid: {', '.join(SCENARIOS)}")
        if self.scenario == "GNu":
            get_method(self.method)
            get_objective(self.objective)
        if self.batch < 1:
            raise ConfigError(
                f"--batch must be >= 1 (1 infers the task of each image), got {self.batch}"
            )
        if self.images is not None and self.images < 1:
            raise ConfigError(f"--images must be >= 1, got {self.images}")
        if len(self.checkpoints) > MAX_CHECKPOINTS or any(k < 1 for k in self.checkpoints):
            raise ConfigError(f"checkpoints must be at most {MAX_CHECKPOINTS} task counts >= 1")

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded; inference settings are null in GG, where none happens."""
        settings = asdict(self)
        settings["checkpoints"] = list(self.checkpoints)
        settings["image_selection"] = (
            "all" if self.images is None else "task t: test images t*N .. t*N+N-1 (mod n)"
        )
        if self.scenario == "GG":
            settings.update(method=None, objective=None, batch=None)
        return settings


@dataclass(frozen=True)
class TaskScore:
    """One task evaluated with the first `tasks_learned` tasks of the store (a cell of the
    accuracy matrix). `accuracy` is in the report's scenario; GG is measured beside it.
    `tested_on` names the test images: `data`'s own, or for a merged task (`merge:0,1:and`)
    those of the tasks it came from (`permuted:1+permuted:2`)."""

    tasks_learned: int
    task: int
    data: str
    tested_on: str
    examples: int
    accuracy: float
    accuracy_gg: float
    taskid_accuracy: float | None = None
    accuracy_at_training: float | None = None
    forgetting: float | None = None


@dataclass(frozen=True)
class CurvePoint:
    """Mean accuracy over the evaluated tasks among the first `tasks_learned` (one curve point)."""

    tasks_learned: int
    tasks: int
    accuracy: float
    accuracy_gg: float
    taskid_accuracy: float | None
    seconds: float


@dataclass(frozen=True)
class EvalReport:
    """Everything an evaluation measured, with the store's identity and the command that ran it."""

    command: str
    created: str
    store: dict[str, Any]
    settings: dict[str, Any]
    scores: list[TaskScore]
    curve: list[CurvePoint]
    confusion: list[list[int]] | None = None
    confusion_rows: list[int] = field(default_factory=list)

    @property
    def final(self) -> list[TaskScore]:
        """The scores with every stored task learned (the report's main table)."""
        last = self.store["task_count"]
        return [s for s in self.scores if s.tasks_learned == last]

    def summary(self) -> dict[str, Any]:
        final = self.final
        identified = [s.taskid_accuracy for s in final if s.taskid_accuracy is not None]
        compared = [s.forgetting for s in final if s.forgetting is not None]
        count = self.store["task_count"]
        return {
            "tasks_evaluated": len(final),
            "tasks_in_store": count,
            "examples": sum(s.examples for s in final),
            "accuracy": _mean([s.accuracy for s in final]),
            "accuracy_gg": _mean([s.accuracy_gg for s in final]),
            "taskid_accuracy": _mean(identified) if identified else None,
            "forgetting_vs_training": {
                "tasks_compared": len(compared),
                "mean": _mean(compared) if compared else None,
                "max": max(compared) if compared else None,
                "backward_transfer": 0.0 - _mean(compared) if compared else None,
            },
            "forgetting_across_checkpoints": self._checkpoint_forgetting(),
            "mask_bytes_per_task": self.store["mask_bytes_per_task"],
            "stored_bytes": self.store["stored_bytes"],
            "stored_bytes_per_task": self.store["stored_bytes"] / count,
            "float32_bytes_per_task": 4 * self.store["mask_bits"],
            "entropy_bytes_per_task": self.store["entropy_bytes_per_task"],
        }

    def _checkpoint_forgetting(self) -> dict[str, Any] | None:
        """Per task: its accuracy at the first checkpoint that held it minus its final accuracy."""
        if len(self.curve) < 2:
            return None
        by_task: dict[int, list[TaskScore]] = {}
        for score in self.scores:
            by_task.setdefault(score.task, []).append(score)
        drops = [
            min(cells, key=lambda s: s.tasks_learned).accuracy
            - max(cells, key=lambda s: s.tasks_learned).accuracy
            for cells in by_task.values()
            if len(cells) > 1
        ]
        if not drops:
            return None
        return {
            "tasks_compared": len(drops),
            "mean": _mean(drops),
            "max": max(drops),
            "backward_transfer": 0.0 - _mean(drops),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "command": self.command,
            "created": self.created,
            "store": self.store,
            "settings": self.settings,
            "summary": self.summary(),
            "tasks": [asdict(s) for s in self.final],
            "curve": [asdict(p) for p in self.curve],
            "matrix": [
                asdict(s) for s in self.scores if s.tasks_learned != self.store["task_count"]
            ],
            "confusion": None
            if self.confusion is None
            else {"rows": self.confusion_rows, "counts": self.confusion},
        }

    def to_csv(self) -> str:
        """One row per cell of the accuracy matrix, each carrying the store identity and command."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        shared = {
            "scenario": self.settings["scenario"],
            "method": self.settings["method"],
            "objective": self.settings["objective"],
            "batch": self.settings["batch"],
            "mask_bytes_per_task": self.store["mask_bytes_per_task"],
            "store": self.store["path"],
            "store_tasks_sha256": self.store["tasks_sha256"],
            "command": self.command,
        }
        for score in sorted(self.scores, key=lambda s: (s.tasks_learned, s.task)):
            row = {**asdict(score), **shared}
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        return buffer.getvalue()


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def tasks_digest(records: Sequence[TaskRecord]) -> str:
    """sha256 over the tasks' mask checksums and data specs, in order: equal digests mean the
    same masks learned on the same data."""
    lines = (f"{r.sha256} {r.data}" for r in records)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def store_identity(store: MaskStore) -> dict[str, Any]:
    """Which store, exactly: its path, settings and a digest of its tasks (masks and data)."""
    records = store.tasks()
    digest = tasks_digest(records)
    return {
        "path": str(Path(store.path).resolve()),
        "format_version": store.header.version,  # the store's own, not the newest readable
        "task_count": store.task_count,
        "network": store.net.to_dict(),
        "mask_rule": store.header.mask_rule,
        "density": store.header.density,
        "mask_bits": store.header.mask_bits,
        "mask_bytes_per_task": store.header.mask_bytes,
        "stored_bytes": store.stored_bytes(),
        "tasks_sha256": digest,
    }


def entropy_bytes_per_task(packed: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> float:
    """Mean over the masks of Σ_layers n·H2(ones/n)/8: the bytes a coder that models each layer's
    density needs at least (what `supsup pack` approaches); sparse top-k masks need far fewer
    than their bit-packed D/8, 50%-dense sign masks about as many."""
    if len(packed) == 0:
        return 0.0
    sizes = [int(np.prod(shape)) for shape in shapes]
    bounds = np.cumsum([0, *sizes])
    total = 0.0
    for row in packed:
        bits = unpack_mask(row, int(bounds[-1]))  # (D,) bool
        ones = np.add.reduceat(bits.astype(np.int64), bounds[:-1])  # (sites,)
        p = ones / np.asarray(sizes, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            h2 = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
        total += float(np.nansum(h2 * sizes)) / 8
    return total / len(packed)


def parse_counts(text: str) -> tuple[int, ...]:
    """Task counts like `1,5,10..250:10` (inclusive ranges, optional step) -> sorted, unique."""
    counts: set[int] = set()
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\.\.(\d+)(?::(\d+))?)?\s*", item)
        if match is None:
            raise ConfigError(f"invalid task counts {text!r}; e.g. 1,5,10 or 10..250:10")
        start = int(match[1])
        stop, step = int(match[2] or start), int(match[3] or 1)
        if step < 1 or stop < start or (stop - start) // step + len(counts) >= MAX_CHECKPOINTS:
            raise ConfigError(
                f"invalid task counts {text!r}: ranges go up, steps >= 1, "
                f"at most {MAX_CHECKPOINTS} counts"
            )
        counts.update(range(start, stop + 1, step))
    return tuple(sorted(counts))


def resolve_targets(
    records: Sequence[TaskRecord], specs: Sequence[str] | None, task: int | None
) -> list[tuple[int, str]]:
    """(stored task, data spec) pairs to evaluate: every task on its own data by default; a spec
    names the one task trained on it; `task` pairs one stored task with one spec (or its own)."""
    if task is not None:
        if not 0 <= task < len(records):
            raise ConfigError(
                f"task {task} is out of range: the store holds {len(records)} task(s)"
            )
        if specs is not None and len(specs) != 1:
            raise ConfigError("--task goes with one data spec, not a list")
        return [(task, specs[0] if specs else records[task].data)]
    if specs is None:
        return [(r.index, r.data) for r in records]
    trained_on: dict[str, list[int]] = {}
    for record in records:
        trained_on.setdefault(record.data, []).append(record.index)
    targets = []
    for spec in dict.fromkeys(specs):  # each spec once, in the order given
        matches = trained_on.get(spec, [])
        if len(matches) != 1:
            found = "no task" if not matches else f"{len(matches)} tasks ({matches})"
            raise ConfigError(f"{found} in the store trained on {spec}; evaluate it with --task")
        targets.append((matches[0], spec))
    return targets


def taskid_inference(settings: EvalSettings, device: torch.device | str = "cpu") -> InferFunction:
    """Task inference as the settings ask: one query per `batch` images (1: each image alone)."""

    def infer(bank: MaskBank, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        options = {"method": settings.method, "objective": settings.objective, "device": device}
        if settings.batch == 1:
            result = infer_task(bank, x, per="image", **options)
            return result.tasks, result.predictions
        parts = [
            infer_task(bank, chunk, per="batch", **options) for chunk in x.split(settings.batch)
        ]
        return (
            np.concatenate([p.tasks for p in parts]),
            np.concatenate([p.predictions for p in parts]),
        )

    return infer


def evaluate_store(
    store_path: Path,
    specs: Sequence[str] | None,
    settings: EvalSettings,
    *,
    task: int | None = None,
    data_root: Path | None = None,
    device: torch.device | str = "cpu",
    command: str = "",
    progress: Progress | None = None,
    infer: InferFunction | None = None,
) -> EvalReport:
    """Evaluate stored tasks on their test data (the first `settings.images` of each).

    GG: each task's own mask. GNu: the task of each query is inferred among the first k stored
    tasks, for every checkpoint k (and for k = all), and the inferred task's mask classifies.
    `infer` replaces task inference (tests use it to build cases with known answers).
    """
    store = MaskStore.open(store_path)
    records = store.tasks()
    if not records:
        raise ConfigError(f"{store_path}: the store holds no tasks; train one first")
    targets = resolve_targets(records, specs, task)
    count = len(records)
    checkpoints = sorted({k for k in settings.checkpoints if k < count} | {count})
    if settings.scenario == "GG":
        checkpoints = [k for k in checkpoints if any(t < k for t, _ in targets)]
    stored = [r.data for r in records]
    # A merged task's own spec names no data: it is tested on the tasks it came from.
    tested = [source_specs(stored, t) if spec == stored[t] else (spec,) for t, spec in targets]
    infer = infer or taskid_inference(settings, device)
    full_bank = MaskBank.from_store(store, device)
    packed = full_bank.packed
    units = sum(1 for k in checkpoints for t, _ in targets if t < k)
    done, scores, curve = 0, [], []
    gg: dict[int, float] = {}
    confusion = np.zeros((len(targets), count), dtype=np.int64)
    for k in checkpoints:
        started = time.perf_counter()
        bank = full_bank if k == count else _prefix_bank(full_bank, packed, k, device)
        cells = []
        for row, (index, spec) in enumerate(targets):
            if index >= k:
                continue
            data = load_eval_data(tested[row], data_root, store.net.shape)
            check_classes(data.classes, store.net)
            x, y = _test_split(data.x, data.y, settings.images, index)
            if index not in gg:  # the same computation as the accuracy recorded at training
                masks = bank.masks_of(index)
                if isinstance(bank.net, PerTaskStats):
                    bank.net.load_task_stats(store.read_task_stats(index))
                gg[index] = evaluate(bank.net, masks, x, y, records[index].classes, device)
            accuracy, taskid = gg[index], None
            if settings.scenario == "GNu":
                inferred, predicted = infer(bank, x)
                accuracy = _accuracy(torch.as_tensor(predicted), y)
                taskid = float(np.mean(inferred == index))
                if k == count:
                    confusion[row] += np.bincount(inferred, minlength=count)[:count]
            # Training recorded the accuracy on the whole test split of the task's own data. The
            # record does not name the digits' source (embedded or --data-root), so digits are
            # compared from the default source only; data sets on disk have one source.
            comparable = (
                k == count
                and spec == records[index].data
                and settings.images is None
                and (data_root is None or spec.split(":", 1)[0] in DISK_KINDS)
            )
            recorded = records[index].accuracy if comparable else None
            cells.append(
                TaskScore(
                    k,
                    index,
                    data.spec if tested[row] == (spec,) else spec,
                    data.spec,
                    len(y),
                    accuracy,
                    gg[index],
                    taskid,
                    recorded,
                    None if recorded is None else recorded - gg[index],
                )
            )
            done += 1
            if progress is not None:
                progress(done, units)
        scores.extend(cells)
        curve.append(_curve_point(k, cells, time.perf_counter() - started))
    identity = store_identity(store)
    identity["entropy_bytes_per_task"] = entropy_bytes_per_task(packed, store.net.mask_shapes)
    return EvalReport(
        command=command,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        store=identity,
        settings={**settings.to_dict(), "data_source": data_source(targets, data_root)},
        scores=scores,
        curve=curve,
        confusion=confusion.tolist() if settings.scenario == "GNu" else None,
        confusion_rows=[t for t, _ in targets] if settings.scenario == "GNu" else [],
    )


def data_source(targets: Sequence[tuple[int, str]], data_root: Path | None) -> str:
    """Where the test images came from: the digits' source (embedded, or torchvision's MNIST),
    or for data sets on disk alone (splitcifar100, folder, ...) their root; the digits are not
    loaded for a report on those."""
    if targets and all(spec.split(":", 1)[0] in DISK_KINDS for _, spec in targets):
        return f"disk:{Path(data_root).resolve()}" if data_root is not None else "disk"
    return image_source(data_root).name


def _prefix_bank(
    full: MaskBank, packed: np.ndarray, k: int, device: torch.device | str
) -> MaskBank:
    """The store as it stood after its first k tasks (counts summed from those k masks)."""
    return MaskBank.from_packed(full.config, packed[:k], full.task_classes[:k], device=device)


def image_slice(total: int, images: int | None, task: int) -> torch.Tensor:
    """Indices of the test images a task is evaluated on: all, or `images` of them starting at
    task·images (wrapping), so that tasks of one split (the permutations of the same digits)
    are tested on different digits and together cover the split."""
    if images is None or images >= total:
        return torch.arange(total)
    return (task * images + torch.arange(images)) % total


def _test_split(
    x: torch.Tensor, y: torch.Tensor, images: int | None, task: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if len(y) == 0:
        raise ConfigError("no test examples to evaluate")
    index = image_slice(len(y), images, task)
    return x[index], y[index]


def _accuracy(predicted: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction correct, computed in float32 as train.evaluate does (so GG values compare)."""
    return (predicted.cpu() == y.cpu()).float().mean().item()


def _curve_point(k: int, cells: Sequence[TaskScore], seconds: float) -> CurvePoint:
    identified = [c.taskid_accuracy for c in cells if c.taskid_accuracy is not None]
    return CurvePoint(
        k,
        len(cells),
        _mean([c.accuracy for c in cells]),
        _mean([c.accuracy_gg for c in cells]),
        _mean(identified) if identified else None,
        round(seconds, 3),
    )
