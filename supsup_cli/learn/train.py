"""Learning one task's supermask by edge-popup (weights fixed), and evaluating a mask."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, StoreMismatchError
from ..format.architectures import CONV_KINDS, NetConfig
from ..format.header import TaskRecord
from ..format.rules import check_er_scale, check_rule, site_densities
from ..model.nets import PerTaskStats, build_net
from ..model.supermask import ScoreMasks, bits_to_masks, kaiming_uniform_scores, split_flat
from ..progress import Progress
from ..store import MaskStore
from .choices import (
    DATA_SET_DEFAULTS,
    DEFAULT_ARCH,
    DEFAULT_OUTPUTS,
    DEFAULT_PRECISION,
    DEFAULT_TRAINING,
)
from .data import (
    TaskData,
    canonical_spec,
    load_eval_data,
    load_task,
    merge_parents,
    source_specs,
)
from .image_data import augment
from .score_optimizers import OPTIMIZERS, SCHEDULES, score_optimizer

if TYPE_CHECKING:  # types only: distributed.py loads torch.distributed, needed with torchrun alone
    from .distributed import RankGroup

DEFAULT_DENSITY: Final = 0.5
SCORES_TAG: Final = 0x53434F52  # "SCOR": keeps score-init seeds apart from other streams
MAX_BATCHES: Final = 10_000_000
MAX_BATCH_SIZE: Final = 65_536
SGD_MOMENTUM: Final = 0.9
# The dtype each --precision autocasts the forward pass to (None: no autocast).
AUTOCAST_DTYPES: Final = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class TrainConfig:
    """How one mask is trained (recorded with the task, so the store says how it was made)."""

    lr: float | None = None  # None: the network's default (DEFAULT_TRAINING), as optimizer
    batch_size: int = 128
    batches: int = 1000
    transfer: bool = False
    init_seed: int = 0
    optimizer: str | None = None
    epochs: int | None = None  # passes over the training split; replaces `batches` when given
    schedule: str = "constant"  # learning rate: constant, or cosine decay to 0 over the steps
    precision: str = DEFAULT_PRECISION  # fp32, or bf16 autocast of the forward pass

    def __post_init__(self) -> None:
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ConfigError(f"batch size must be in [1, {MAX_BATCH_SIZE}], got {self.batch_size}")
        if not 1 <= self.batches <= MAX_BATCHES:
            raise ConfigError(f"batches must be in [1, {MAX_BATCHES}], got {self.batches}")
        if self.epochs is not None and not 1 <= self.epochs <= MAX_BATCHES:
            raise ConfigError(f"epochs must be in [1, {MAX_BATCHES}], got {self.epochs}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if self.precision not in AUTOCAST_DTYPES:
            raise ConfigError(
                f"unknown precision {self.precision!r}; valid: {', '.join(AUTOCAST_DTYPES)}"
            )
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}"
            )

    def for_network(self, conv: bool) -> TrainConfig:
        """This config with an optimizer or learning rate not given set to the reference's for
        the network: Adam 1e-3 for conv nets, RMSprop 1e-4 for the others."""
        optimizer, lr = DEFAULT_TRAINING["conv" if conv else "mlp"]
        return replace(
            self,
            optimizer=optimizer if self.optimizer is None else self.optimizer,
            lr=lr if self.lr is None else self.lr,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def steps(self, examples: int) -> int:
        """Training steps: `batches`, or `epochs` passes of whole batches over `examples`."""
        if self.epochs is None:
            return self.batches
        return self.epochs * max(1, examples // min(self.batch_size, examples))


def is_conv_net(net: nn.Module) -> bool:
    """Whether a net is one of the registry's convolutional networks (for its defaults)."""
    config = getattr(net, "config", None)
    return isinstance(config, NetConfig) and config.architecture.kind in CONV_KINDS


def autocast(precision: str, device: torch.device | str) -> AbstractContextManager:
    """The forward pass's autocast for a precision (nothing for fp32); torch autocasts
    convolutions and matrix products, and keeps reductions such as BatchNorm in float32."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def set_training_layout(net: nn.Module, precision: str, device: torch.device | str) -> None:
    """Conv nets on CUDA with a reduced precision run channels_last (NHWC), the layout of the
    tensor cores' convolutions; elsewhere (and for evaluation) the default layout."""
    if hasattr(net, "channels_last"):
        reduced = AUTOCAST_DTYPES[precision] is not None
        net.channels_last = reduced and torch.device(device).type == "cuda"


@dataclass(frozen=True)
class TrainResult:
    """A learned mask (flat bits, network order), its raw scores and its test accuracy."""

    mask_bits: np.ndarray
    flat_scores: torch.Tensor
    accuracy: float
    final_loss: float
    seconds: float
    task_stats: torch.Tensor | None = None  # per-task BatchNorm statistics, for nets that keep them


def initial_scores(
    shapes: Sequence[tuple[int, ...]], init_seed: int, transfer_mean: np.ndarray | None
) -> list[torch.Tensor]:
    """Kaiming-uniform scores, or (transfer) the mean raw scores of the earlier tasks."""
    if transfer_mean is not None:
        mean = torch.from_numpy(np.asarray(transfer_mean, dtype=np.float32))
        return [s.clone() for s in split_flat(mean, shapes)]
    generator = torch.Generator().manual_seed(init_seed)
    return [kaiming_uniform_scores(shape, generator) for shape in shapes]


def train_mask(
    net: nn.Module,
    data: TaskData,
    rule: str,
    density: float | None,
    config: TrainConfig,
    scores: Sequence[torch.Tensor],
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    group: RankGroup | None = None,
    densities: Sequence[float | None] | None = None,
) -> TrainResult:
    """Edge-popup: RMSprop or SGD on the scores, cross-entropy through the straight-through mask.

    Nets with per-task statistics (BatchNorm) start them afresh, train on batch statistics, and
    return the running statistics with the mask; the net is left in eval mode either way.
    `densities`: one top-k density per mask site (an Erdos-Renyi budget) instead of `density`.
    In a torchrun group each rank trains on its shard of every batch through DDP, and the
    statistics returned are the ranks' mean.
    """
    started = time.perf_counter()
    config = config.for_network(is_conv_net(net))
    masks = ScoreMasks(scores, rule, density, densities).to(device)
    trained = masks if group is None else group.wrap(masks)
    steps = config.steps(len(data.train_x))
    per_epoch = max(1, len(data.train_x) // min(config.batch_size, len(data.train_x)))
    optimizer = score_optimizer(
        list(masks.parameters()), config.optimizer, config.lr, SGD_MOMENTUM, config.schedule, steps
    )
    per_task = isinstance(net, PerTaskStats)
    set_training_layout(net, config.precision, device)
    if per_task:
        net.reset_task_stats()
        net.train()
    train_x, train_y = data.train_x.to(device), data.train_y.to(device)
    generator = torch.Generator().manual_seed(config.init_seed)
    order, cursor, loss_value = torch.randperm(len(train_x), generator=generator), 0, float("nan")
    tally = torch.zeros(3)  # this epoch's summed loss, correct predictions, examples
    for step in range(steps):
        if cursor + config.batch_size > len(order):  # new epoch: reshuffle
            order, cursor = torch.randperm(len(train_x), generator=generator), 0
        index = order[cursor : cursor + config.batch_size]
        cursor += config.batch_size
        index = index.to(device)
        batch, labels = train_x[index], train_y[index]
        if data.augment:  # the whole global batch, so that every rank draws the same numbers
            batch = augment(batch, data.shape, generator).to(device)
        if group is not None:
            batch, labels = group.shard(batch), group.shard(labels)
        with autocast(config.precision, device):
            logits = net(batch, trained())
            loss = (
                F.cross_entropy(logits, labels)
                if group is None
                else group.loss(logits, labels, len(index))
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if group is not None:
            group.after_batch(step + 1)
        if progress is not None:
            loss_value = loss.item()
            correct = (logits.argmax(1) == labels).sum().item()
            tally += torch.tensor([loss_value * len(labels), correct, len(labels)])
            status = f"loss {loss_value:.3f}"
            if config.epochs is not None:
                mean_loss, accuracy = tally[0] / tally[2], tally[1] / tally[2]
                epoch = step // per_epoch + 1
                status = f"epoch {epoch}: loss {mean_loss:.3f}, train accuracy {accuracy:.1%}"
                if (step + 1) % per_epoch == 0:
                    tally.zero_()
            progress(step + 1, steps, status)
    if progress is None:
        loss_value = loss.item()
    net.eval()
    set_training_layout(net, DEFAULT_PRECISION, device)
    with torch.no_grad():
        final = [m.detach() for m in masks()]
    stats = net.task_stats() if per_task else None
    if stats is not None and group is not None:
        stats = group.average(stats)
        net.load_task_stats(stats)
    accuracy = evaluate(net, final, data.test_x, data.test_y, data.classes, device)
    return TrainResult(
        masks.mask_bits(),
        masks.flat_scores(),
        accuracy,
        loss_value,
        time.perf_counter() - started,
        stats,
    )


@torch.no_grad()
def predict(
    net: nn.Module,
    masks: Sequence[torch.Tensor],
    x: torch.Tensor,
    classes: Sequence[int],
    device: torch.device | str = "cpu",
    chunk: int = 2048,
) -> torch.Tensor:
    """Predicted class of each row of x (n, inputs), argmax restricted to the task's classes."""
    allowed = torch.as_tensor(list(classes), device=device)
    predictions = [
        allowed[net(part.to(device), masks)[:, allowed].argmax(dim=1)].cpu()
        for part in x.split(chunk)
    ]
    return torch.cat(predictions) if predictions else torch.empty(0, dtype=torch.int64)


def evaluate(
    net: nn.Module,
    masks: Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    classes: Sequence[int],
    device: torch.device | str = "cpu",
) -> float:
    """Accuracy (0..1) of a mask on labelled data with the task given (scenario GG)."""
    if len(y) == 0:
        raise ConfigError("no test examples to evaluate")
    return (predict(net, masks, x, classes, device) == y.cpu()).float().mean().item()


@dataclass(frozen=True)
class CreationOptions:
    """Options that make a new store; None means 'not given' (keep the store's, or the default)."""

    arch: str | None = None
    outputs: int | None = None
    seed: int | None = None
    mask_rule: str | None = None
    density: float | None = None
    er_scale: float | None = None  # topk: an Erdos-Renyi budget instead of a uniform density

    def new_store_settings(self, spec: str | None = None) -> tuple[NetConfig, str, float | None]:
        """The network, mask rule and density of a store made with these options for a first
        task on `spec`: what the options leave open comes from the spec's data set, if it has
        defaults (DATA_SET_DEFAULTS), else from DEFAULT_ARCH and DEFAULT_OUTPUTS."""
        rule = "topk" if self.mask_rule is None else self.mask_rule
        if rule == "sign" and self.density is not None:
            raise ConfigError("--density applies to the topk rule only (sign keeps score >= 0)")
        density = (
            (DEFAULT_DENSITY if self.density is None else self.density) if rule == "topk" else None
        )
        check_rule(rule, density)
        check_er_scale(rule, self.er_scale)
        kind = None if spec is None else canonical_spec(spec)[0]
        arch, outputs = DATA_SET_DEFAULTS.get(kind, (DEFAULT_ARCH, DEFAULT_OUTPUTS))
        net = NetConfig(
            arch if self.arch is None else self.arch,
            outputs if self.outputs is None else self.outputs,
            0 if self.seed is None else self.seed,
        )
        return net, rule, density


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C while a mask was being learned, before anything was written: the store is as it
    was (or was not made). An interrupt while the task is written stays a KeyboardInterrupt."""

    def __init__(self, spec: str, store_existed: bool) -> None:
        super().__init__(spec)
        self.spec = spec
        self.store_existed = store_existed


@dataclass(frozen=True)
class TaskOutcome:
    """What train-task did: the task record, the training result, whether it made the store."""

    record: TaskRecord
    result: TrainResult
    created_store: bool
    mask_bytes: int
    skipped: tuple[str, ...] = ()  # unreadable images left out of the training data


def score_init_seed(store_seed: int, task_index: int) -> int:
    """A reproducible, per-task seed for the initial scores (kept in the task's training record)."""
    state = np.random.SeedSequence([store_seed, task_index, SCORES_TAG]).generate_state(
        1, np.uint64
    )
    return int(state[0] >> np.uint64(1))


@dataclass(frozen=True)
class TaskPlan:
    """What the store (or the options, for a new store) decide before a task is trained."""

    net: NetConfig
    rule: str
    density: float | None
    first_index: int
    transfer_mean: np.ndarray | None
    existed: bool  # whether a store was there (an interrupted run then says it is as it was)
    er_scale: float | None = None  # Erdos-Renyi budget of the sites' densities (top-k only)


def plan_task(
    store_path: Path,
    options: CreationOptions,
    spec: str,
    again: bool = False,
    transfer: bool = False,
) -> TaskPlan:
    """Read the store (or check that one can be made there) without writing anything; a spec
    the store already holds is refused unless `again`, and `transfer` needs a store that keeps
    its tasks' score sums."""
    if MaskStore.exists(store_path):
        store = MaskStore.open(store_path, writable=False)
        store.check_compatible(**asdict(options))
        if not again:
            check_new_spec(store, spec)
        if transfer and not store.keeps_scores:
            raise ConfigError(
                f"{store_path}: the store keeps no score sums, which --transfer starts from; "
                "make stores for it with `supsup init --keep-scores` or a first "
                "`train-task --transfer`"
            )
        header = store.header
        return TaskPlan(
            store.net,
            header.mask_rule,
            header.density,
            store.task_count,
            store.score_mean(),
            True,
            header.er_scale,
        )
    MaskStore.check_creatable(store_path)
    return TaskPlan(*options.new_store_settings(spec), 0, None, False, options.er_scale)


def train_task(
    store_path: Path,
    spec: str,
    options: CreationOptions,
    config: TrainConfig,
    data_root: Path | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    group: RankGroup | None = None,
    again: bool = False,
    skip_bad: bool = False,
) -> TaskOutcome | None:
    """Learn one mask on a data spec and append it, creating the store first if absent.

    Everything is validated before training, and the store is written only after training, so a
    bad option or an interrupted run leaves the store as it was. A spec the store already holds
    is refused unless `again` (a second task on the same data is rarely meant, and makes
    `eval --data` ambiguous). In a torchrun group only rank 0 touches the store (plan, then
    commit); the other ranks train their shards and return None.
    """
    if group is None:
        plan = plan_task(store_path, options, spec, again, config.transfer)
    else:
        from .distributed import share_plan

        plan = share_plan(
            group, lambda: plan_task(store_path, options, spec, again, config.transfer)
        )
    data = load_task(spec, data_root, plan.net.shape, skip_bad)
    check_classes(data.classes, plan.net)
    net = build_net(plan.net, device)
    config = replace(
        config.for_network(is_conv_net(net)),  # as train_mask would, for the task's record
        init_seed=score_init_seed(plan.net.seed, plan.first_index),
    )
    scores = initial_scores(
        plan.net.mask_shapes, config.init_seed, plan.transfer_mean if config.transfer else None
    )
    try:
        densities = site_densities(plan.net.mask_shapes, plan.density, plan.er_scale)
        result = train_mask(
            net, data, plan.rule, plan.density, config, scores, device, progress, group, densities
        )
    except KeyboardInterrupt as interrupt:
        raise TrainingInterrupted(data.spec, store_existed=plan.existed) from interrupt
    if group is not None and not group.writes:
        return None
    store, created = MaskStore.open_or_create(
        store_path,
        plan.net,
        plan.rule,
        plan.density,
        er_scale=plan.er_scale,
        keep_scores=config.transfer,
    )
    record = store.append_task(
        result.mask_bits,
        result.flat_scores.numpy(),
        data=data.spec,
        classes=data.classes,
        accuracy=result.accuracy,
        train=config.to_dict()
        | ({"class_names": list(data.class_names)} if data.class_names else {}),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=round(result.seconds, 3),
        task_stats=None if result.task_stats is None else result.task_stats.numpy(),
    )
    return TaskOutcome(record, result, created, store.header.mask_bytes, data.skipped)


def check_new_spec(store: MaskStore, spec: str) -> None:
    """Refuse a data spec some stored task was already trained on."""
    wanted = "{}:{}".format(*canonical_spec(spec))
    held = [r.index for r in store.tasks() if r.data == wanted]
    if held:
        raise ConfigError(
            f"{store.path} already holds a task trained on {wanted} (task {held[0]}); "
            "pass --again to train another"
        )


def check_classes(classes: Sequence[int], net: NetConfig) -> None:
    """A task's classes must be outputs of the network."""
    if max(classes) >= net.outputs:
        raise StoreMismatchError(
            f"the data has classes up to {max(classes)} but the network has {net.outputs} "
            f"outputs, fixed when the store was made (make one with --outputs {max(classes) + 1} "
            "or more)"
        )


def find_task(store: MaskStore, spec: str | None, task: int | None) -> int:
    """The task to use: given by index, or the single task trained on the data spec."""
    if task is not None:
        store.task(task)  # range check
        return task
    if spec is None:
        raise ConfigError("give --task or --data")
    matches = [r.index for r in store.tasks() if r.data == spec]
    if len(matches) != 1:
        found = "no task" if not matches else f"{len(matches)} tasks ({matches})"
        raise ConfigError(f"{found} in the store trained on {spec}; choose one with --task")
    return matches[0]


@dataclass(frozen=True)
class Evaluation:
    """Accuracy of one stored mask on one data spec's test split, task given (GG); `tested_on`
    names the test images (for a merged task, those of the tasks it came from)."""

    task: int
    data: str
    tested_on: str
    accuracy: float
    examples: int


def evaluate_task(
    store_path: Path,
    spec: str | None,
    task: int | None,
    data_root: Path | None = None,
    device: torch.device | str = "cpu",
) -> Evaluation:
    """Test accuracy of a stored task's mask (by index, or found by data spec)."""
    store = MaskStore.open(store_path)
    index = find_task(store, spec, task)
    record = store.task(index)
    wanted = spec or record.data
    merged = wanted == record.data and merge_parents(wanted) is not None
    sources = source_specs([r.data for r in store.tasks()], index) if merged else (wanted,)
    data = load_eval_data(sources, data_root, store.net.shape)
    net = build_net(store.net, device)
    if isinstance(net, PerTaskStats):
        net.load_task_stats(store.read_task_stats(index))
    masks = bits_to_masks(store.read_mask(index), store.net.mask_shapes, device)
    classes = record.classes
    accuracy = evaluate(net, masks, data.x, data.y, classes, device)
    return Evaluation(index, wanted if merged else data.spec, data.spec, accuracy, len(data.y))
