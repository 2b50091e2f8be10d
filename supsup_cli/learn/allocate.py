"""NNs: learn a stream of labelled batches with no task identity, allocating masks when needed.

Every `check_every` batches the one-shot gradient g = ∂H/∂α over the candidate masks decides:
p = max softmax(-g); if p < (1 + ε)/k' a new mask is allocated, otherwise the best known mask goes
on training. The candidates are the k known masks padded with fresh, untrained masks up to
k' = max(k, 5), as in the paper, whose masks were all preallocated from random scores: with one
known mask and nothing to compare it with, p would be 1 whatever the data. A fresh mask that fits
better than every known one also means "new task".

This module is the run loop. The rule is in allocate_rule.py, the run's view of the known masks
in allocate_masks.py, its configuration and report in allocate_config.py.

The store is written when the mask being trained changes (another mask wins, a mask is allocated,
the budget stops the run), when the stream ends, and every `commit_every` checks in between: an
append for a new mask or an atomic replace of a known one, with the audit rows of the decisions
since the last commit. (A commit costs about 15 training steps of lenet-300-100: committing at
every check would add ~15% to training; every 10 checks adds ~1.5% and loses at most 1,000 batches
to a crash.) Raw scores of the masks trained in this run stay in memory (4·D bytes per mask); a
mask made before the run is resumed from its bits (`resumed_scores`), since the store keeps masks,
not scores.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, StoreChangedError, StoreError
from ..format.architectures import NetConfig
from ..format.header import StoreHeader
from ..model.nets import build_net
from ..model.supermask import ScoreMasks, bits_to_masks, split_flat
from ..progress import Progress
from ..store import MaskStore
from ..store import location as storage
from .allocate_config import (
    AllocateConfig,
    AuditRow,
    SpecResult,
    StreamOutcome,
    allocate_creation,
    parse_stream,
)
from .allocate_masks import KnownMasks, MaskInfo, fresh_scores, resumed_scores
from .allocate_rule import (
    ALLOCATE,
    BUDGET,
    CONTINUE,
    FIRST_CHOICE,
    REUSE,
    action,
    candidate_count,
    decide,
)
from .data import TaskData, load_task
from .score_optimizers import ScoreOptimizer
from .taskid import alpha_gradient
from .train import CreationOptions, check_classes, evaluate, score_init_seed

STREAM_TAG: Final = 0x5354524D  # "STRM": keeps batch-order seeds apart from other streams
ALLOCATE_METHOD: Final = "allocate"
# Commits tried when other writers keep committing in between (each retry first takes their tasks).
COMMIT_ATTEMPTS: Final = 20

# -- the stream ---------------------------------------------------------------------------------


def segment_batches(
    data: TaskData, count: int, batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`count` shuffled batches (x (b, 784), y (b,)) of a segment's training split, per epoch."""
    generator = torch.Generator().manual_seed(seed)
    size = min(batch_size, len(data.train_x))
    order, cursor = torch.randperm(len(data.train_x), generator=generator), 0
    for _ in range(count):
        if cursor + size > len(order):
            order, cursor = torch.randperm(len(data.train_x), generator=generator), 0
        index = order[cursor : cursor + size]
        cursor += size
        yield data.train_x[index], data.train_y[index]


def segment_seed(shuffle_seed: int, segment: int) -> int:
    state = np.random.SeedSequence([shuffle_seed, segment, STREAM_TAG]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


DecisionCallback = Callable[[AuditRow], None]


@dataclass
class _Stretch:
    """The mask being trained now, from the decision that chose it until the next commit."""

    index: int
    masks: ScoreMasks
    optimizer: ScoreOptimizer
    start_scores: torch.Tensor  # (D,) flat scores when the stretch began (for the score sum)
    new: bool  # not yet in the store
    batches: int = 0
    seconds: float = 0.0


@dataclass
class _Run:
    """State of one allocate run (library internal; allocate_stream is the entry point)."""

    path: str
    config: AllocateConfig
    net: nn.Module
    device: torch.device
    store: MaskStore | None
    masks: KnownMasks
    on_decision: DecisionCallback | None
    scores: dict[int, torch.Tensor] = field(default_factory=dict)  # flat (D,) of touched masks
    stretch: _Stretch | None = None
    last_data: TaskData | None = None  # the segment of the last batch trained
    pending: list[AuditRow] = field(default_factory=list)
    decisions: list[AuditRow] = field(default_factory=list)
    trained: Counter = field(default_factory=Counter)  # (spec, mask) -> batches
    masks_before: int = 0
    created_store: bool = False
    checks: int = 0  # checks since the last commit
    taken_in: list[int] = field(default_factory=list)  # tasks other writers appended meanwhile

    @property
    def known(self) -> int:
        return self.masks.known

    @property
    def net_config(self) -> NetConfig:
        return self.masks.config

    @property
    def rule(self) -> str:
        return self.masks.rule

    @property
    def density(self) -> float | None:
        return self.masks.density

    # -- decisions ------------------------------------------------------------------------
    def check(self, batch: int, segment: int, data: TaskData, x: torch.Tensor) -> bool:
        """Decide which mask trains from this batch on, committing first what the last batches
        taught if the mask changes or a commit is due; False if the budget stops the run."""
        self._refresh_active()
        first = self.known == 0
        if first:
            choice = FIRST_CHOICE
        else:
            choice = decide(self._gradient(x), self.known, self.config.epsilon)
        row = AuditRow(
            batch=batch,
            segment=segment,
            data=data.spec,
            decision=CONTINUE,
            mask=choice.candidate,
            p=None if first else round(choice.p, 6),
            threshold=None if first else round(choice.threshold, 6),
            candidates=0 if first else candidate_count(self.known),
            reason=choice.reason,
            time=_now(),
        )
        active = None if self.stretch is None else self.stretch.index
        self.checks += 1
        if choice.allocate or choice.candidate != active or self.checks >= self.config.commit_every:
            self.commit()
        active = None if self.stretch is None else self.stretch.index  # a commit may move it
        decision = action(choice, active, self.known, self.config.budget)
        if decision == BUDGET:
            self._record(replace(row, decision=BUDGET, mask=None))
            self.stretch = None
            self.commit()
            return False
        if decision == ALLOCATE:
            index = self.known
            self._record(replace(row, decision=ALLOCATE, mask=index))
            self._add_mask(index, data)
            self._start(index, new=True)
        elif decision == CONTINUE:
            self._record(row)
        else:
            self._record(replace(row, decision=REUSE))
            self._start(choice.candidate, new=False)
        return True

    def _gradient(self, x: torch.Tensor) -> torch.Tensor:
        """∂H/∂α over the known masks and the untrained ones that pad them to k'."""
        packed, counts, classes = self.masks.candidates()
        return alpha_gradient(
            self.net,
            packed,
            x,
            objective=self.config.objective,
            classes=classes,
            counts=counts,
            device=self.device,
        )

    def _record(self, row: AuditRow) -> None:
        self.pending.append(row)
        self.decisions.append(row)
        if self.on_decision is not None:
            self.on_decision(row)

    # -- training -------------------------------------------------------------------------
    def _add_mask(self, index: int, data: TaskData) -> None:
        train = {
            "method": ALLOCATE_METHOD,
            "optimizer": "rmsprop",
            "lr": self.config.lr,
            "batch_size": self.config.batch_size,
            "init_seed": score_init_seed(self.net_config.seed, index),
            "transfer": False,
            "objective": self.config.objective,
            "epsilon": self.config.epsilon,
            "check_every": self.config.check_every,
            "batches": 0,
        }
        self.masks.add(MaskInfo(data.spec, data.classes, train))

    def _start(self, index: int, new: bool) -> None:
        shapes = self.net_config.mask_shapes
        if index in self.scores:
            scores = split_flat(self.scores[index], shapes)
        elif new:
            scores = fresh_scores(self.net_config, index)
        else:
            scores = resumed_scores(self.masks.bits(index), shapes)
        masks = ScoreMasks(scores, self.rule, self.density).to(self.device)
        optimizer = ScoreOptimizer(list(masks.parameters()), "rmsprop", self.config.lr)
        self.stretch = _Stretch(index, masks, optimizer, masks.flat_scores(), new)

    def train_step(self, data: TaskData, x: torch.Tensor, y: torch.Tensor) -> None:
        stretch = self.stretch
        started = time.perf_counter()
        loss = F.cross_entropy(self.net(x.to(self.device), stretch.masks()), y.to(self.device))
        stretch.optimizer.zero_grad()
        loss.backward()
        stretch.optimizer.step()
        stretch.batches += 1
        stretch.seconds += time.perf_counter() - started
        self.trained[(data.spec, stretch.index)] += 1
        self.last_data = data

    def _refresh_active(self) -> None:
        """Bring the trained mask's row and the counts up to date with its scores."""
        if self.stretch is None:
            return
        self.masks.update(self.stretch.index, self.stretch.masks.mask_bits())

    # -- writing --------------------------------------------------------------------------
    def commit(self) -> None:
        """Write the trained mask (append if new, else replace) with the pending audit rows, in
        one commit; with no mask trained since the last commit, just the rows."""
        stretch, self.checks = self.stretch, 0
        if stretch is None or (stretch.batches == 0 and not stretch.new):
            if self.pending and self.store is not None:
                self._until_written(
                    lambda: self.store.append_log(
                        [r.to_dict() for r in self.pending], expect=self._expect()
                    )
                )
                self.pending.clear()
            return
        self._refresh_active()
        data, flat = self.last_data, stretch.masks.flat_scores()
        bits = self.masks.bits(stretch.index)
        masks = bits_to_masks(bits, self.net_config.mask_shapes, self.device)
        accuracy = evaluate(self.net, masks, data.test_x, data.test_y, data.classes, self.device)

        def write() -> None:  # reads the index and rows afresh: a retry may have moved them
            info = self.masks.info[stretch.index]
            train = {**info.train, "batches": info.train.get("batches", 0) + stretch.batches}
            rows = [r.to_dict() for r in self.pending]
            seconds = round(info.seconds + stretch.seconds, 3)
            store = self._writable_store()
            if stretch.new:
                store.append_task(
                    bits,
                    flat.numpy(),
                    data=info.data,
                    classes=info.classes,
                    accuracy=accuracy,
                    train=train,
                    created=_now(),
                    seconds=seconds,
                    log=rows,
                    expect=self._expect(),
                )
            else:
                store.replace_task(
                    stretch.index,
                    bits,
                    (flat - stretch.start_scores).numpy(),
                    accuracy=accuracy,
                    train=train,
                    seconds=seconds,
                    log=rows,
                    expect=self._expect(),
                )
            info.train, info.seconds = train, info.seconds + stretch.seconds

        self._until_written(write)
        self.pending.clear()
        self.scores[stretch.index] = flat
        self.masks.mark_stored(stretch.index)
        stretch.start_scores, stretch.new, stretch.batches, stretch.seconds = flat, False, 0, 0.0

    def _until_written(self, write: Callable[[], None]) -> None:
        """Run a write; when another writer committed first, take its tasks in and try again."""
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                return write()
            except StoreChangedError:
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
                self._rebase()

    def _rebase(self) -> None:
        """Another writer committed since this run last did. The tasks it appended become known
        masks (as if loaded at the start: the next decisions weigh them) and this run's unwritten
        new mask moves after them. A change to a task this run already knew is refused."""
        fresh = MaskStore.open(self.path, writable=True)
        fresh.check_compatible(
            self.net_config.arch,
            self.net_config.outputs,
            self.net_config.seed,
            self.rule,
            self.density,
        )
        records, known = fresh.tasks(), self.masks.stored
        if not self.masks.matches(records):
            raise StoreError(
                f"{self.path}: another writer changed masks this run was training "
                "meanwhile; nothing more was written (run allocate again)"
            )
        self.store = fresh
        appended = list(range(known, len(records)))
        if not appended:
            return
        extra = fresh.read_packed(appended)
        moving = self.stretch if self.stretch is not None and self.stretch.new else None
        self.masks.take_in(extra, records[known:])
        self.taken_in += appended
        if moving is not None:
            self._move_mask(moving, moving.index + len(appended))

    def _move_mask(self, stretch: _Stretch, index: int) -> None:
        """Renumber this run's unwritten mask everywhere the run refers to it."""
        old = stretch.index
        stretch.index = index
        if old in self.scores:
            self.scores[index] = self.scores.pop(old)
        self.trained = Counter(
            {(spec, index if mask == old else mask): n for (spec, mask), n in self.trained.items()}
        )
        self.pending = [replace(r, mask=index) if r.mask == old else r for r in self.pending]
        self.decisions = [replace(r, mask=index) if r.mask == old else r for r in self.decisions]

    def _writable_store(self) -> MaskStore:
        if self.store is None:
            store, created = MaskStore.open_or_create(
                self.path, self.net_config, self.rule, self.density
            )
            self.store, self.created_store = store, created
            if store.task_count:  # made by another writer meanwhile, who also added tasks
                self.created_store = False
                raise StoreChangedError(f"{self.path}: another writer made this store meanwhile")
        return self.store

    def _expect(self) -> StoreHeader | None:
        """The header this run last saw: a commit fails if another writer changed the store."""
        return None if self.store is None else self.store.header


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _open_run(
    path: str,
    config: AllocateConfig,
    options: CreationOptions,
    on_decision: DecisionCallback | None,
    device: torch.device,
) -> _Run:
    """Open (or plan) the store and load its masks, counts and records into the run's memory."""
    if MaskStore.exists(path):
        store = MaskStore.open(path)
        store.check_compatible(**asdict(options))
        _check_net(store.net)
        masks = KnownMasks.of_store(store)
    else:
        if storage.is_file(storage.normalise(path)):
            raise StoreError(f"{path}: exists and is not a directory")
        store = None
        net_config, rule, density = allocate_creation(options).new_store_settings()
        _check_net(net_config)
        masks = KnownMasks.empty(net_config, rule, density)
    return _Run(
        path=path,
        config=config,
        net=build_net(masks.config, device),
        device=device,
        store=store,
        masks=masks,
        on_decision=on_decision,
        masks_before=masks.known,
    )


def _check_net(config: NetConfig) -> None:
    if config.stats_size:
        raise ConfigError(
            f"allocate needs a network without per-task statistics; {config.arch} keeps "
            "BatchNorm statistics per task (use lenet-300-100 or fc-1024-1024)"
        )


def allocate_stream(
    store_path: str | Path,
    stream: str | Sequence[str],
    config: AllocateConfig,
    options: CreationOptions | None = None,
    data_root: Path | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    on_decision: DecisionCallback | None = None,
) -> StreamOutcome:
    """Learn a stream of data segments without task identity (NNs), writing masks as it goes.

    The store is made (sign rule, 100 outputs unless the options say otherwise) at the first
    commit if absent. Every spec is loaded and checked before anything is written.
    """
    started = time.perf_counter()
    specs = parse_stream(stream if isinstance(stream, str) else ",".join(stream))
    device = torch.device(device)
    run = _open_run(str(store_path), config, options or CreationOptions(), on_decision, device)
    datas = {spec: load_task(spec, data_root) for spec in dict.fromkeys(specs)}
    for data in datas.values():
        check_classes(data.classes, run.net_config)
    batch, stopped, total = 0, False, len(specs) * config.batches_per_segment
    for segment, spec in enumerate(specs):
        data = datas[spec]
        seed = segment_seed(config.shuffle_seed, segment)
        for x, y in segment_batches(data, config.batches_per_segment, config.batch_size, seed):
            if batch % config.check_every == 0 and not run.check(batch, segment, data, x):
                stopped = True
                break
            run.train_step(data, x, y)
            batch += 1
            if progress is not None:
                progress(batch, total, f"{run.known} masks")
        if stopped:
            break
    run.commit()
    return _outcome(run, specs, datas, batch, stopped, time.perf_counter() - started)


def _outcome(
    run: _Run,
    specs: list[str],
    datas: dict[str, TaskData],
    batches: int,
    stopped: bool,
    seconds: float,
) -> StreamOutcome:
    """Purity and per-spec accuracy of the masks as they are at the end of the run."""
    by_spec: dict[str, Counter] = defaultdict(Counter)
    by_mask: dict[int, Counter] = defaultdict(Counter)
    for (spec, mask), count in run.trained.items():
        by_spec[spec][mask] += count
        by_mask[mask][spec] += count
    trained = sum(run.trained.values())
    purity = sum(max(c.values()) for c in by_mask.values()) / trained if trained else 1.0
    inverse = sum(max(c.values()) for c in by_spec.values()) / trained if trained else 1.0
    results = []
    for spec in dict.fromkeys(specs):
        if spec not in by_spec:
            continue
        mask = by_spec[spec].most_common(1)[0][0]
        bits = run.masks.bits(mask)
        data = datas[spec]
        masks = bits_to_masks(bits, run.net_config.mask_shapes, run.device)
        accuracy = evaluate(run.net, masks, data.test_x, data.test_y, data.classes, run.device)
        results.append(SpecResult(spec, mask, tuple(sorted(by_spec[spec])), accuracy))
    allocated = tuple(r.mask for r in run.decisions if r.decision == ALLOCATE)
    return StreamOutcome(
        store=str(run.path),
        created_store=run.created_store,
        segments=tuple(specs),
        masks_before=run.masks_before,
        masks_after=run.known,
        allocated=allocated,
        decisions=tuple(run.decisions),
        batches_trained=batches,
        budget_stopped=stopped,
        purity=purity,
        inverse_purity=inverse,
        specs=tuple(results),
        seconds=seconds,
        taken_in=tuple(run.taken_in),
    )
